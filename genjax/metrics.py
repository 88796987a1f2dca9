r"""Sample-quality metrics for generative models: IS, FID, KID, precision/recall, LPIPS.

Every metric reads a classifier's outputs, not pixels: the class probabilities
:math:`p(y \mid x)` for the Inception score, penultimate features :math:`\phi(x)` for FID, KID
and precision/recall, and several layers of feature maps for the LPIPS-style distance. Without a
download, the classifier is the digits CNN of :mod:`genjax.classifier`.

Two layers:

* the **jit-able core** takes arrays (features, probabilities, feature maps) and returns JAX
  arrays in the inputs' float dtype (at least float32), so it runs inside ``jax.jit`` and
  ``vmap``: :func:`frechet_distance`, :func:`kid`, :func:`precision_recall`,
  :func:`inception_score`, :func:`mmd2_unbiased`, :func:`polynomial_kernel`,
  :func:`lpips_from_features`, :func:`lpips`, :func:`bits_per_dim`;
* the **host wrappers** take NumPy or JAX arrays (or images and a feature extractor) and return
  Python floats for reports: :func:`fid` and :func:`fid_from_statistics` (float64 statistics
  and ``eigh`` with one BLAS thread), :func:`feature_statistics`, :func:`sample_quality`,
  :func:`image_quality`.

Derivation: derivations/14-metrics.md
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from genjax._checks import int_at_least, is_concrete, positive_int
from genjax.divergences import gaussian_w2

__all__ = [
    "LPIPS_EPS",
    "PROB_ATOL",
    "bits_per_dim",
    "feature_statistics",
    "fid",
    "fid_from_statistics",
    "frechet_distance",
    "image_quality",
    "inception_score",
    "kid",
    "lpips",
    "lpips_from_features",
    "mmd2_unbiased",
    "polynomial_kernel",
    "precision_recall",
    "sample_quality",
]

PROB_ATOL = 1e-3  #: rows of ``probs`` must sum to 1 within this (float32 softmax round-off)
LPIPS_EPS = 1e-10  #: added to the channel norm in :func:`lpips` (the reference code's value)


def _float(x) -> Array:
    """``x`` as a JAX array of its float dtype, at least float32 (the core's working dtype)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# ----------------------------------------------------------------------------- likelihood


def bits_per_dim(
    log_prob: Float[Array, "*batch"], num_dims: int, levels: int | None = None
) -> Float[Array, "*batch"]:
    r"""Negative log-likelihood in bits per dimension (jit-able core).

    With :math:`\log p` = ``log_prob`` in nats for :math:`D` = ``num_dims`` values,

    .. math:: \mathrm{bpd} = -\frac{\log p}{D \ln 2} \quad\text{(continuous data)}, \qquad
       \mathrm{bpd} = -\frac{\log p - D \ln L}{D \ln 2} = -\frac{\log p}{D\ln 2} + \log_2 L

    for data with :math:`L` = ``levels`` values per dimension, where :math:`\log p` is the
    density of the dequantised data :math:`y = (k + u)/L` on the unit cube (each discrete value
    owns a cell of volume :math:`L^{-D}`, so :math:`\log P(k) \ge E_u \log p(y) - D \ln L`).
    A density of logit-transformed data must already include the logit's log-det
    (:func:`genjax.flows.logit_forward`; :class:`genjax.flows.RealNVP` does).

    Args:
      log_prob: ``[*batch]`` log-density in nats.
      num_dims: :math:`D`, e.g. ``H * W * C``.
      levels: :math:`L` (17 for digits, 256 for 8-bit images), or ``None`` for continuous data.

    Returns:
      ``[*batch]`` bits per dimension (an upper bound on the discrete model's when ``levels``).

    Derivation: derivations/10-realnvp.md
    """
    positive_int("num_dims", num_dims)
    if levels is not None:
        int_at_least("levels", levels, 2)
    bpd = -log_prob / (num_dims * math.log(2.0))
    return bpd if levels is None else bpd + math.log2(levels)


# ----------------------------------------------------------------------------- Inception score


def inception_score(
    probs: Float[Array, "n classes"], splits: int = 10
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""Inception score from probabilities: mean and std over ``splits`` parts (jit-able core).

    .. math:: \mathrm{IS} = \exp\Big(\frac1n \sum_{i=1}^n
              \mathrm{KL}\big(p(y \mid x_i) \,\|\, \hat p(y)\big)\Big),
              \qquad \hat p(y) = \frac1n \sum_{i=1}^n p(y \mid x_i),

    where row :math:`i` of ``probs`` is :math:`p(y \mid x_i)` and :math:`n` is the size of one
    part. :math:`1 \le \mathrm{IS} \le K` (the number of classes): 1 when every sample gets the
    same prediction, :math:`K` when every prediction is one-hot and the classes are used equally.

    Args:
      probs: ``[N, K]`` class probabilities of ``N`` generated samples (rows sum to 1; checked
        outside ``jit``, within ``PROB_ATOL``, so that logits passed by mistake are an error).
      splits: number of parts; as in the reference code, part :math:`s` is rows
        ``[s * (N // splits), (s + 1) * (N // splits))`` and the last ``N % splits`` rows are
        dropped. The parts are contiguous, so samples drawn grouped by class (a conditional
        sampler's label order) must be shuffled first: a part holding one class scores about 1.

    Returns:
      ``(mean, std)`` of the per-part scores, scalar arrays (``std`` with ``ddof=0``, as the
      reference code).

    Note:
      IS never looks at real data: it rewards confident, diverse predictions and is blind to
      diversity within a class (derivations/14-metrics.md, "limits").

    References:
      Salimans et al., *Improved Techniques for Training GANs*, 2016,
      https://arxiv.org/abs/1606.03498; Barratt & Sharma, *A Note on the Inception Score*, 2018,
      https://arxiv.org/abs/1801.01973

    Derivation: derivations/14-metrics.md
    """
    p = _float(probs)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must have shape [N, classes], got {p.shape}")
    if is_concrete(probs):
        _check_probabilities(np.asarray(probs, np.float64))
    if not isinstance(splits, int) or not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be an int in [1, N={p.shape[0]}], got {splits!r}")
    size = p.shape[0] // splits
    parts = p[: splits * size].reshape(splits, size, p.shape[1])  # [splits, size, K]
    scores = _inception_scores(parts)  # [splits]
    return jnp.mean(scores), jnp.std(scores)


def _check_probabilities(p: np.ndarray) -> None:
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative")
    sums = p.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > PROB_ATOL):
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(
            f"probs rows must sum to 1 (within {PROB_ATOL}); a row sums to {worst:.6g}: "
            "pass softmax probabilities, not logits"
        )


@jax.jit
def _inception_scores(parts: Array) -> Array:
    marginal = jnp.mean(parts, axis=1, keepdims=True)  # [splits, 1, K]
    # xlogy: 0 log 0 = 0; where p > 0 the marginal is > 0 too.
    kl = jnp.sum(
        jax.scipy.special.xlogy(parts, parts) - jax.scipy.special.xlogy(parts, marginal), -1
    )  # [splits, size]
    return jnp.exp(jnp.mean(kl, axis=1))  # [splits]


# ----------------------------------------------------------------------------- FID


def _check_features(name: str, x) -> None:
    """``[N, dim]`` with ``N, dim > 0``; finite when the values are concrete (outside ``jit``)."""
    shape = jnp.shape(x)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, dim], got {shape}")
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} must be finite")


def _check_feature_pair(x, y, names: tuple[str, str] = ("features1", "features2")) -> None:
    for name, f in zip(names, (x, y), strict=True):
        _check_features(name, f)
    if jnp.shape(x)[1] != jnp.shape(y)[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same width, got {jnp.shape(x)[1]} and "
            f"{jnp.shape(y)[1]}: were they computed by the same extractor?"
        )


def _check_covariance_samples(features1, features2) -> None:
    for name, f in (("features1", features1), ("features2", features2)):
        if jnp.shape(f)[0] < 2:
            raise ValueError(
                f"{name} needs at least 2 samples for a covariance, got {jnp.shape(f)[0]}"
            )


def frechet_distance(
    features1: Float[Array, "n1 dim"], features2: Float[Array, "n2 dim"]
) -> Float[Array, ""]:
    r"""Fréchet distance between the Gaussians fitted to two feature sets (jit-able core of FID).

    .. math:: d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Big(\Sigma_1 + \Sigma_2
              - 2\big(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}\big)^{1/2}\Big)

    where :math:`(\mu_j, \Sigma_j)` are the mean and the unbiased covariance of ``features{j}``,
    combined by :func:`genjax.divergences.gaussian_w2` (symmetric ``eigh`` square roots).

    Args:
      features1: ``[N1, dim]`` features of one sample set, ``N1 >= 2``.
      features2: ``[N2, dim]`` features of the other, ``N2 >= 2``.

    Returns:
      Scalar :math:`d^2 \ge 0` in the inputs' float dtype (at least float32).

    Note:
      This path runs in the inputs' dtype, inside ``jit``. FID is a difference of traces of
      size :math:`10^2`–:math:`10^3`, so float32 leaves relative errors near :math:`10^{-4}`
      (``tests/test_metrics.py::test_frechet_distance_in_float32``); pass float64 features
      under ``jax.enable_x64`` for the host path's accuracy, or call :func:`fid`.

    References:
      Heusel et al., *GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
      Equilibrium*, 2017, https://arxiv.org/abs/1706.08500; Dowson & Landau, *The Fréchet
      distance between multivariate normal distributions*, 1982.

    Derivation: derivations/14-metrics.md
    """
    _check_feature_pair(features1, features2)
    _check_covariance_samples(features1, features2)
    dtype = jnp.promote_types(jnp.result_type(features1, features2), jnp.float32)
    return _frechet_distance(jnp.asarray(features1, dtype), jnp.asarray(features2, dtype))


@jax.jit
def _frechet_distance(f1: Array, f2: Array) -> Array:
    def statistics(f):
        mean = jnp.mean(f, axis=0, keepdims=True)  # [1, dim]
        centred = f - mean  # [N, dim]
        return mean[0], centred.T @ centred / (f.shape[0] - 1)  # [dim], [dim, dim]

    return gaussian_w2(*statistics(f1), *statistics(f2))


def feature_statistics(
    features: Float[np.ndarray | Array, "n dim"],
) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean and unbiased covariance of a feature set, in float64 (host wrapper).

    .. math:: \mu = \frac1n \sum_i \phi_i, \qquad
              \Sigma = \frac1{n-1} \sum_i (\phi_i - \mu)(\phi_i - \mu)^\top

    Args:
      features: ``[N, dim]`` features :math:`\phi_i`, ``N >= 2``.

    Returns:
      ``(mean [dim], cov [dim, dim])`` float64 NumPy arrays (cache the real data's pair for
      :func:`fid_from_statistics`).

    Warns:
      UserWarning: ``N <= dim``: the covariance has rank at most ``N - 1`` and is singular. The
      Fréchet distance stays well defined but is biased upwards by the few samples.

    Derivation: derivations/14-metrics.md
    """
    _check_features("features", features)
    f = np.asarray(features, np.float64)
    n, dim = f.shape
    if n < 2:
        raise ValueError(f"features needs at least 2 samples for a covariance, got {n}")
    if n <= dim:
        warnings.warn(
            f"features has {n} samples for {dim} dimensions: the covariance is singular "
            "(rank <= N - 1) and FID is biased upwards; use N > dim samples",
            UserWarning,
            stacklevel=2,
        )
    mean = f.mean(axis=0)  # [dim]
    centred = f - mean  # [N, dim]
    cov = centred.T @ centred / (n - 1)  # [dim, dim]
    return mean, cov


def fid_from_statistics(
    mean1: Float[Array, " dim"],
    cov1: Float[Array, "dim dim"],
    mean2: Float[Array, " dim"],
    cov2: Float[Array, "dim dim"],
) -> float:
    r"""Fréchet distance between :math:`\mathcal N(\mu_1, \Sigma_1)` and
    :math:`\mathcal N(\mu_2, \Sigma_2)` in float64 (host wrapper).

    .. math:: d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Big(\Sigma_1 + \Sigma_2
              - 2\big(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}\big)^{1/2}\Big)

    with :math:`\mu_1` = ``mean1``, :math:`\Sigma_1` = ``cov1``, :math:`\mu_2` = ``mean2``,
    :math:`\Sigma_2` = ``cov2``: :func:`genjax.divergences.gaussian_w2` run in float64
    (``jax.enable_x64``) with one BLAS thread, so that XLA's ``eigh`` (LAPACK) does not contend
    with XLA's own threads.

    Args:
      mean1: ``[dim]`` mean :math:`\mu_1`.
      cov1: ``[dim, dim]`` symmetric PSD covariance :math:`\Sigma_1`.
      mean2: ``[dim]`` mean :math:`\mu_2`.
      cov2: ``[dim, dim]`` symmetric PSD covariance :math:`\Sigma_2`.

    Returns:
      :math:`d^2 \ge 0` as a Python float.

    Note:
      The reference code (``pytorch-fid``) takes ``scipy.linalg.sqrtm(S1 @ S2)`` of a
      non-symmetric product, which fails or turns complex when a covariance is singular and is
      patched by adding :math:`10^{-6} I` to both. Here both square roots are of symmetric PSD
      matrices, taken by ``eigh`` with round-off negative eigenvalues clipped to 0, so a
      singular covariance needs no offset; the value equals pytorch-fid's whenever that one is
      finite (``tests/test_metrics.py::test_fid_matches_scipy_sqrtm``).

    References:
      Heusel et al., 2017, https://arxiv.org/abs/1706.08500

    Derivation: derivations/14-metrics.md
    """
    arrays = [np.asarray(a, np.float64) for a in (mean1, cov1, mean2, cov2)]
    with jax.enable_x64(True), threadpool_limits(limits=1, user_api="blas"):
        return float(gaussian_w2(*arrays))


def fid(
    features1: Float[np.ndarray | Array, "n1 dim"], features2: Float[np.ndarray | Array, "n2 dim"]
) -> float:
    r"""Fréchet Inception Distance between two feature sets, in float64 (host wrapper).

    .. math:: \mathrm{FID} = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Big(\Sigma_1 + \Sigma_2
              - 2\big(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}\big)^{1/2}\Big)

    where :math:`(\mu_j, \Sigma_j)` are the float64 mean and unbiased covariance of
    ``features{j}`` (:func:`feature_statistics`), combined by :func:`fid_from_statistics`. The
    jit-able form in the inputs' dtype is :func:`frechet_distance`.

    Args:
      features1: ``[N1, dim]`` features of one sample set (e.g. the real test images).
      features2: ``[N2, dim]`` features of the other (e.g. generated images).

    Returns:
      FID :math:`\ge 0` as a Python float; 0 for identical sets, symmetric, invariant to the
      order of samples and to an orthogonal rotation of both sets.

    Warns:
      UserWarning: fewer samples than feature dimensions (see :func:`feature_statistics`).

    Note:
      FID is biased: its expectation over finite samples exceeds the population value by a
      term of order :math:`\operatorname{tr}\Sigma / N`; compare values at the same ``N`` only
      (Bińkowski et al. 2018).

    References:
      Heusel et al., 2017, https://arxiv.org/abs/1706.08500

    Derivation: derivations/14-metrics.md
    """
    _check_feature_pair(features1, features2)
    _check_covariance_samples(features1, features2)
    return fid_from_statistics(*feature_statistics(features1), *feature_statistics(features2))


# ----------------------------------------------------------------------------- KID


def polynomial_kernel(
    x: Float[Array, "n dim"],
    y: Float[Array, "m dim"],
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> Float[Array, "n m"]:
    r"""Polynomial kernel :math:`k(x, y) = (\gamma\, x^\top y + c)^p` (jit-able core).

    Args:
      x: ``[n, dim]``.
      y: ``[m, dim]``.
      degree: :math:`p` (3 for KID).
      gamma: :math:`\gamma`; ``None`` means :math:`1/\text{dim}` (KID's choice).
      coef0: :math:`c` (1 for KID).

    Returns:
      ``[n, m]`` Gram matrix.

    Derivation: derivations/14-metrics.md
    """
    gamma = 1.0 / x.shape[-1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree  # [n, m]


def mmd2_unbiased(
    x: Float[Array, "n dim"],
    y: Float[Array, "m dim"],
    kernel: Callable[[Array, Array], Array] = polynomial_kernel,
) -> Float[Array, ""]:
    r"""Unbiased estimate of the squared maximum mean discrepancy (jit-able core).

    .. math:: \widehat{\mathrm{MMD}}^2_u = \frac{1}{n(n-1)}\sum_{i \ne j} k(x_i, x_j)
              + \frac{1}{m(m-1)}\sum_{i \ne j} k(y_i, y_j)
              - \frac{2}{nm}\sum_{i, j} k(x_i, y_j)

    with :math:`k` = ``kernel``. Its expectation is exactly :math:`\mathrm{MMD}^2(P, Q)`, 0 when
    both samples come from one distribution, so single estimates can be negative.

    Args:
      x: ``[n, dim]`` samples of :math:`P`, ``n >= 2``.
      y: ``[m, dim]`` samples of :math:`Q`, ``m >= 2``.
      kernel: ``kernel(a, b) -> [len(a), len(b)]`` Gram matrix.

    Returns:
      Scalar estimate.

    References:
      Gretton et al., *A Kernel Two-Sample Test*, 2012, JMLR 13.

    Derivation: derivations/14-metrics.md
    """
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)  # [n, n], [m, m], [n, m]
    sum_xx = jnp.sum(kxx) - jnp.trace(kxx)
    sum_yy = jnp.sum(kyy) - jnp.trace(kyy)
    return sum_xx / (n * (n - 1)) + sum_yy / (m * (m - 1)) - 2.0 * jnp.mean(kxy)


def kid(
    key: jax.Array,
    features1: Float[Array, "n1 dim"],
    features2: Float[Array, "n2 dim"],
    num_subsets: int = 100,
    subset_size: int = 1000,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""Kernel Inception Distance: unbiased MMD² with a cubic kernel over random subsets
    (jit-able core).

    .. math:: \mathrm{KID} = \frac1S \sum_{s=1}^S \widehat{\mathrm{MMD}}^2_u
              \big(X^{(s)}, Y^{(s)}\big), \qquad
              k(x, y) = \Big(\frac{x^\top y}{d} + 1\Big)^3,

    where :math:`X^{(s)}, Y^{(s)}` are ``subset_size`` rows of ``features1`` and ``features2``
    drawn without replacement (independently for each of the :math:`S` = ``num_subsets``
    subsets), :math:`d` = dim, and :math:`\widehat{\mathrm{MMD}}^2_u` is :func:`mmd2_unbiased`.

    Args:
      key: PRNG key for the subsets.
      features1: ``[N1, dim]`` features, e.g. of real images.
      features2: ``[N2, dim]`` features, e.g. of generated images.
      num_subsets: :math:`S` (a Python int: static under ``jit``).
      subset_size: rows per subset; capped at ``min(N1, N2)``, so with small sets each subset
        is a permutation of the smaller set.

    Returns:
      ``(mean, std)`` over the subsets, scalar arrays in the inputs' float dtype (at least
      float32). Unlike FID, the mean is an unbiased estimate of the population value (0 for one
      distribution) at any sample size.

    References:
      Bińkowski et al., *Demystifying MMD GANs*, 2018, https://arxiv.org/abs/1801.01401

    Derivation: derivations/14-metrics.md
    """
    _check_feature_pair(features1, features2)
    positive_int("num_subsets", num_subsets)
    positive_int("subset_size", subset_size)
    n1, n2 = jnp.shape(features1)[0], jnp.shape(features2)[0]
    size = min(subset_size, n1, n2)
    if size < 2:
        raise ValueError(f"kid needs at least 2 samples in each set, got {n1} and {n2}")
    values = _kid_subsets(key, _float(features1), _float(features2), num_subsets, size)
    return jnp.mean(values), jnp.std(values)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _kid_subsets(key: Array, f1: Array, f2: Array, num_subsets: int, size: int) -> Array:
    def one(k):
        k1, k2 = jax.random.split(k)
        x = f1[jax.random.permutation(k1, f1.shape[0])[:size]]  # [size, dim]
        y = f2[jax.random.permutation(k2, f2.shape[0])[:size]]  # [size, dim]
        return mmd2_unbiased(x, y)

    return jax.lax.map(one, jax.random.split(key, num_subsets))  # [num_subsets]


# ----------------------------------------------------------------------------- precision/recall


def _pairwise_sq_dists(a: Array, b: Array) -> Array:
    # ||a_i - b_j||^2 = |a_i|^2 + |b_j|^2 - 2 a_i.b_j, clipped at 0 against round-off.
    sq = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * (a @ b.T)  # [n, m]
    return jnp.maximum(sq, 0.0)


@functools.partial(jax.jit, static_argnums=1)
def _knn_radii(x: Array, k: int) -> Array:
    # squared distance to the k-th nearest other point; the point itself is the 0th (distance 0).
    d = _pairwise_sq_dists(x, x)  # [n, n]
    return -jax.lax.top_k(-d, k + 1)[0][:, k]  # [n]


@jax.jit
def _coverage(queries: Array, support: Array, radii: Array) -> Array:
    d = _pairwise_sq_dists(queries, support)  # [q, s]
    return jnp.mean(jnp.any(d <= radii[None, :], axis=1).astype(queries.dtype))


def precision_recall(
    real: Float[Array, "n dim"], fake: Float[Array, "m dim"], k: int = 3
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""Improved precision and recall of a generative model, from k-NN manifolds (jit-able core).

    Each set :math:`\Phi` defines a manifold, the union of balls around its points with radius
    the distance to the point's :math:`k`-th nearest neighbour in :math:`\Phi`:

    .. math:: f(\phi, \Phi) = \mathbb 1\big[\exists \phi' \in \Phi:\
              \|\phi - \phi'\| \le \|\phi' - \mathrm{NN}_k(\phi', \Phi)\|\big],

    .. math:: \text{precision} = \frac1{|\Phi_g|}\sum_{\phi \in \Phi_g} f(\phi, \Phi_r),
              \qquad
              \text{recall} = \frac1{|\Phi_r|}\sum_{\phi \in \Phi_r} f(\phi, \Phi_g),

    with :math:`\Phi_r` = ``real`` and :math:`\Phi_g` = ``fake``. Precision is the share of
    samples that look real (quality); recall is the share of the real data the model covers
    (diversity).

    Args:
      real: ``[N, dim]`` features of real images.
      fake: ``[M, dim]`` features of generated images.
      k: neighbourhood size (3 in the paper); needs ``k < min(N, M)``.

    Returns:
      ``(precision, recall)``, scalar arrays in ``[0, 1]``.

    Note:
      Uses all pairwise distances, :math:`O((N + M)^2)` memory: fine up to ~10 000 samples.

    References:
      Kynkäänniemi et al., *Improved Precision and Recall Metric for Assessing Generative
      Models*, 2019, https://arxiv.org/abs/1904.06991

    Derivation: derivations/14-metrics.md
    """
    _check_feature_pair(real, fake, ("real", "fake"))
    smaller = min(jnp.shape(real)[0], jnp.shape(fake)[0])
    if not isinstance(k, int) or not 1 <= k < smaller:
        raise ValueError(f"k must be an int in [1, min(N, M) - 1 = {smaller - 1}], got {k!r}")
    dtype = jnp.promote_types(jnp.result_type(real, fake), jnp.float32)
    r, f = jnp.asarray(real, dtype), jnp.asarray(fake, dtype)
    return _coverage(f, r, _knn_radii(r, k)), _coverage(r, f, _knn_radii(f, k))


# ----------------------------------------------------------------------------- LPIPS


def lpips_from_features(
    layers1: Sequence[Float[Array, "n h w c"]],
    layers2: Sequence[Float[Array, "n h w c"]],
    weights: Sequence[Float[Array, " c"]] | None = None,
) -> Float[Array, " n"]:
    r"""LPIPS-style distance from precomputed feature maps (jit-able core).

    .. math:: d(x, y) = \sum_l \frac{1}{H_l W_l} \sum_{h, w} \sum_c w_{l,c}
              \big(\hat\phi^l_{hwc}(x) - \hat\phi^l_{hwc}(y)\big)^2,
              \qquad \hat\phi^l_{hw} = \frac{\phi^l_{hw}}{\|\phi^l_{hw}\|_2 + \epsilon},

    each feature vector unit-normalised along channels at every position (:math:`\epsilon` =
    ``LPIPS_EPS``), then squared differences weighted per channel and averaged over space.

    Args:
      layers1: per layer :math:`l`, ``[N, H_l, W_l, C_l]`` feature maps :math:`\phi^l(x)`.
      layers2: the same layers for ``y``.
      weights: per layer, ``[C_l]`` non-negative weights :math:`w_l`; ``None`` means all ones
        (the untrained "baseline" variant of the paper; its learned weights need the BAPPS
        human-judgement data).

    Returns:
      ``[N]`` distances; 0 for identical inputs and symmetric in ``x, y``.

    References:
      Zhang et al., *The Unreasonable Effectiveness of Deep Features as a Perceptual Metric*,
      2018, https://arxiv.org/abs/1801.03924

    Derivation: derivations/14-metrics.md
    """
    if len(layers1) != len(layers2) or len(layers1) == 0:
        raise ValueError(
            f"layers1 and layers2 must be equally long non-empty lists, got {len(layers1)} and "
            f"{len(layers2)}"
        )
    if weights is not None and len(weights) != len(layers1):
        raise ValueError(
            f"weights must have one entry per layer ({len(layers1)}), got {len(weights)}"
        )
    total = 0.0
    for i, (a, b) in enumerate(zip(layers1, layers2, strict=True)):
        a, b = jnp.asarray(a), jnp.asarray(b)
        if a.ndim != 4 or a.shape != b.shape:
            raise ValueError(
                f"layer {i} must be [N, H, W, C] in both lists, got {a.shape} and {b.shape}"
            )
        w = jnp.ones(a.shape[-1], a.dtype) if weights is None else jnp.asarray(weights[i])
        if w.shape != (a.shape[-1],):
            raise ValueError(f"weights[{i}] must have shape ({a.shape[-1]},), got {w.shape}")
        total = total + _lpips_layer(a, b, w)
    return total


@jax.jit
def _lpips_layer(a: Array, b: Array, w: Array) -> Array:
    a_hat = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + LPIPS_EPS)  # [N, H, W, C]
    b_hat = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + LPIPS_EPS)  # [N, H, W, C]
    per_position = jnp.sum(w.reshape(1, 1, 1, -1) * jnp.square(a_hat - b_hat), axis=-1)  # [N, H, W]
    return jnp.mean(per_position, axis=(1, 2))  # [N]


def lpips(
    x: Float[Array, "n H W C"],
    y: Float[Array, "n H W C"],
    layers_fn: Callable[[Array], Sequence[Array]],
    weights: Sequence[Float[Array, " c"]] | None = None,
) -> Float[Array, " n"]:
    r"""LPIPS-style perceptual distance between images ``x`` and ``y``, pair by pair (jit-able
    core).

    :func:`lpips_from_features` applied to ``layers_fn(x)`` and ``layers_fn(y)``; with the
    digits CNN, ``layers_fn`` is :meth:`genjax.classifier.CNNClassifier.layers` (its ReLU
    feature maps).

    Args:
      x: ``[N, H, W, C]`` images.
      y: ``[N, H, W, C]`` images, compared with ``x`` row by row.
      layers_fn: ``images -> [maps [N, H_l, W_l, C_l], ...]``.
      weights: per-layer channel weights (see :func:`lpips_from_features`).

    Returns:
      ``[N]`` distances.

    Derivation: derivations/14-metrics.md
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"x and y must be [N, H, W, C] of one shape, got {x.shape} and {y.shape}")
    return lpips_from_features(layers_fn(x), layers_fn(y), weights)


# ----------------------------------------------------------------------------- report


def sample_quality(
    key: jax.Array,
    real_features: Float[np.ndarray | Array, "n dim"],
    fake_features: Float[np.ndarray | Array, "m dim"],
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
) -> dict[str, float]:
    r"""FID, KID (mean, std), precision and recall of ``fake_features`` against
    ``real_features``, as Python floats (host wrapper).

    :func:`fid` (float64), :func:`kid` (``num_subsets`` subsets of ``subset_size``) and
    :func:`precision_recall` (:math:`k = 3`) on the same two feature sets: the figures a recipe
    puts in ``Report.extra`` so that the tour ranks every family with one metric.

    Args:
      key: PRNG key for KID's subsets.
      real_features: ``[N, dim]`` reference features.
      fake_features: ``[M, dim]`` features to judge.
      num_subsets: KID's number of subsets.
      subset_size: KID's rows per subset.

    Returns:
      ``{"fid", "kid", "kid_std", "precision", "recall"}`` as Python floats.

    Derivation: derivations/14-metrics.md
    """
    kid_mean, kid_std = kid(
        key, real_features, fake_features, num_subsets=num_subsets, subset_size=subset_size
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fid_value = fid(real_features, fake_features)
    precision, recall = precision_recall(real_features, fake_features)
    return {
        "fid": fid_value,
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "precision": float(precision),
        "recall": float(recall),
    }


def image_quality(
    key: jax.Array,
    extractor,
    real_images: Float[Array, "n H W C"],
    fake_images: Float[Array, "m H W C"],
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
) -> dict[str, float]:
    """:func:`sample_quality` and the Inception score of images through one extractor, as
    Python floats (host wrapper).

    Args:
      key: PRNG key for KID's subsets.
      extractor: an object with ``features(images) -> [N, dim]`` and
        ``probs(images) -> [N, classes]``, e.g. :func:`genjax.classifier.digits_cnn`.
      real_images: ``[N, H, W, C]`` reference images (the training split, for a model's
        samples; the floor is the test split against it).
      fake_images: ``[M, H, W, C]`` images to judge.
      num_subsets: KID's number of subsets.
      subset_size: KID's rows per subset.

    Returns:
      ``{"fid", "kid", "kid_std", "precision", "recall", "inception_score"}``: the
      ``Report.extra`` a recipe adds so that every family is ranked with the same numbers
      (the Inception score over ``min(10, M)`` splits).

    Derivation: derivations/14-metrics.md
    """
    out = sample_quality(
        key,
        extractor.features(real_images),
        extractor.features(fake_images),
        num_subsets=num_subsets,
        subset_size=subset_size,
    )
    splits = min(10, len(fake_images))
    out["inception_score"] = float(inception_score(extractor.probs(fake_images), splits)[0])
    return out
