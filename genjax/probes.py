r"""What a learned code is good for: views, interpolations, probes, anomaly scores, stability.

Every probe takes codes (or an ``encode`` function) as arrays, so it applies to any encoder in
genjax (autoencoder, VAE mean, CVAE, a GAN's discriminator features):

* :func:`pca_2d`: a 2-D linear view of codes; :func:`latent_grid` decodes a grid of a 2-D latent
  space at Gaussian quantiles (Kingma & Welling's manifold figure);
* :func:`interpolate`: linear or spherical paths between two codes;
* :func:`linear_probe_accuracy`, :func:`knn_accuracy`: how much label information the code holds
  in a linearly (or locally) readable form, compared with the same probe on raw pixels;
* :func:`auroc`: area under the ROC curve of an anomaly score (e.g. negative ELBO, reconstruction
  error) separating a held-out class from the rest;
* :func:`noise_stability`: how far codes move under input noise, relative to how far apart the
  codes of different inputs are.

Derivation: derivations/05-vae.md (section "What the code is good for")
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from genjax import _checks

__all__ = [
    "INTERPOLATIONS",
    "auroc",
    "interpolate",
    "knn_accuracy",
    "latent_grid",
    "linear_probe_accuracy",
    "noise_stability",
    "pca_2d",
]

INTERPOLATIONS = ("linear", "slerp")


def pca_2d(codes: Float[Array, "n d"]) -> Float[Array, "n 2"]:
    r"""Project codes on their first two principal axes.

    .. math:: Y = (Z - \bar z)\,V_{:, :2}, \qquad Z - \bar z = U \Sigma V^\top

    with :math:`Z` = ``codes``. Each axis's sign is fixed so that the entry of largest magnitude
    of :math:`V_{:, j}` is positive (as scikit-learn's ``svd_flip``), so the view is
    deterministic.

    Args:
      codes: ``[n, d]`` with ``d >= 2``.

    Returns:
      ``[n, 2]`` coordinates, in decreasing order of variance.

    Derivation: derivations/05-vae.md
    """
    _checks.matrix("codes", codes)
    if codes.shape[1] < 2:
        raise ValueError(f"codes must have at least 2 columns, got shape {codes.shape}")
    centred = codes - jnp.mean(codes, axis=0, keepdims=True)  # [n, d]
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)  # vt [min(n, d), d]
    axes = vt[:2].T  # [d, 2]
    signs = jnp.sign(axes[jnp.argmax(jnp.abs(axes), axis=0), jnp.arange(2)])  # [2]
    return centred @ (axes * signs[None, :])  # [n, 2]


def latent_grid(
    decode: Callable[[jax.Array], jax.Array], num_per_side: int = 10, epsilon: float = 0.05
) -> jax.Array:
    r"""Decode a regular grid of a 2-D latent space at standard-normal quantiles.

    .. math:: z_{ij} = \big(\Phi^{-1}(u_i), \Phi^{-1}(u_j)\big), \qquad
       u = \operatorname{linspace}(\epsilon, 1-\epsilon, n)

    so equal areas of the grid hold equal prior mass (Kingma & Welling's figure 4).
    :math:`n` = ``num_per_side``.

    Args:
      decode: ``decode(z [n^2, 2]) -> images [n^2, ...]``.
      num_per_side: :math:`n`.
      epsilon: quantile margin in (0, 0.5).

    Returns:
      ``decode`` of the grid, rows varying the first latent, ``[n^2, ...]``.

    References:
      Kingma & Welling, *Auto-Encoding Variational Bayes*, 2013,
      https://arxiv.org/abs/1312.6114

    Derivation: derivations/05-vae.md
    """
    _checks.int_at_least("num_per_side", num_per_side, 2)
    if not 0.0 < epsilon < 0.5:
        raise ValueError(f"epsilon must lie in (0, 0.5), got {epsilon}")
    q = jax.scipy.special.ndtri(jnp.linspace(epsilon, 1.0 - epsilon, num_per_side))  # [n]
    g1, g2 = jnp.meshgrid(q, q, indexing="ij")  # [n, n] each
    z = jnp.stack([g1.ravel(), g2.ravel()], axis=1)  # [n^2, 2]
    return decode(z)


def interpolate(
    z0: Float[Array, " d"], z1: Float[Array, " d"], num_steps: int, method: str = "linear"
) -> Float[Array, "num_steps d"]:
    r"""Points on a path from ``z0`` to ``z1`` at :math:`t = 0, \frac{1}{n-1}, \dots, 1`.

    .. math:: \text{linear:}\ z_t = (1-t)\,z_0 + t\,z_1, \qquad
       \text{slerp:}\ z_t = \frac{\sin((1-t)\Omega)}{\sin\Omega}\,z_0
       + \frac{\sin(t\Omega)}{\sin\Omega}\,z_1, \quad
       \cos\Omega = \frac{z_0\cdot z_1}{\lVert z_0\rVert\lVert z_1\rVert}

    with :math:`n` = ``num_steps``. For Gaussian codes in :math:`d` dimensions the norm
    concentrates near :math:`\sqrt d`; the midpoint of a linear path between two independent
    draws has norm about :math:`\sqrt{d/2}`, a point the prior almost never produces, while
    slerp between equal-norm endpoints keeps the norm (White, 2016). Slerp falls back to the
    linear path when :math:`\sin\Omega` is below 1e-6 (parallel codes).

    Args:
      z0: ``[d]`` start.
      z1: ``[d]`` end.
      num_steps: :math:`n \ge 2`.
      method: ``"linear"`` or ``"slerp"``.

    Returns:
      ``[n, d]``; the first row is ``z0`` and the last ``z1``.

    References:
      White, *Sampling Generative Networks*, 2016, https://arxiv.org/abs/1609.04468

    Derivation: derivations/05-vae.md
    """
    _checks.one_of("method", method, INTERPOLATIONS)
    _checks.int_at_least("num_steps", num_steps, 2)
    if jnp.ndim(z0) != 1 or jnp.shape(z0) != jnp.shape(z1):
        raise ValueError(
            f"z0 and z1 must be vectors [d] of one shape, got {jnp.shape(z0)} and {jnp.shape(z1)}"
        )
    t = jnp.linspace(0.0, 1.0, num_steps)[:, None]  # [n, 1]
    linear = (1.0 - t) * z0[None, :] + t * z1[None, :]  # [n, d]
    if method == "linear":
        return linear
    norms = jnp.linalg.norm(z0) * jnp.linalg.norm(z1)
    cos = jnp.clip(jnp.dot(z0, z1) / jnp.maximum(norms, 1e-30), -1.0, 1.0)
    omega = jnp.arccos(cos)
    sin = jnp.sin(omega)
    safe = jnp.where(sin > 1e-6, sin, 1.0)
    slerp = (jnp.sin((1.0 - t) * omega) * z0[None, :] + jnp.sin(t * omega) * z1[None, :]) / safe
    return jnp.where(sin > 1e-6, slerp, linear)


def linear_probe_accuracy(
    train_codes, train_labels, test_codes, test_labels, *, max_iter: int = 2000
) -> float:
    r"""Test accuracy of a multinomial logistic regression fitted on ``train_codes``.

    Features are standardised with the training mean and standard deviation first, so codes of
    different scales are compared fairly; the regulariser is scikit-learn's default
    (:math:`C = 1`). Run on raw pixels for the baseline.

    Args:
      train_codes: ``[n, d]``; train_labels: ``[n]`` ints.
      test_codes: ``[m, d]``; test_labels: ``[m]`` ints.
      max_iter: L-BFGS iterations.

    Returns:
      Accuracy in [0, 1].

    References:
      Alain & Bengio, *Understanding intermediate layers using linear classifier probes*, 2016,
      https://arxiv.org/abs/1610.01644

    Derivation: derivations/05-vae.md
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, yte = _probe_inputs(train_codes, train_labels, test_codes, test_labels)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    return float(clf.fit(xtr, ytr).score(xte, yte))


def knn_accuracy(train_codes, train_labels, test_codes, test_labels, *, k: int = 5) -> float:
    r"""Test accuracy of a :math:`k`-nearest-neighbour classifier (Euclidean distance, majority
    vote) on codes; run on raw pixels for the baseline.

    Args:
      train_codes: ``[n, d]``; train_labels: ``[n]`` ints.
      test_codes: ``[m, d]``; test_labels: ``[m]`` ints.
      k: neighbours.

    Returns:
      Accuracy in [0, 1].

    Derivation: derivations/05-vae.md
    """
    from sklearn.neighbors import KNeighborsClassifier

    _checks.positive_int("k", k)
    xtr, ytr, xte, yte = _probe_inputs(train_codes, train_labels, test_codes, test_labels)
    return float(KNeighborsClassifier(n_neighbors=k).fit(xtr, ytr).score(xte, yte))


def _probe_inputs(train_codes, train_labels, test_codes, test_labels):
    xtr, xte = np.asarray(train_codes, np.float64), np.asarray(test_codes, np.float64)
    ytr, yte = np.asarray(train_labels), np.asarray(test_labels)
    _checks.matrix("train_codes", xtr)
    _checks.matrix("test_codes", xte)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"train_codes and test_codes must have the same width, got {xtr.shape[1]} and "
            f"{xte.shape[1]}"
        )
    for codes, labels, name in ((xtr, ytr, "train"), (xte, yte, "test")):
        if labels.shape != codes.shape[:1]:
            raise ValueError(
                f"{name}_labels must be [n] with n = {name}_codes.shape[0] = {len(codes)}, "
                f"got shape {labels.shape}"
            )
    return xtr, ytr, xte, yte


def auroc(normal_scores, anomalous_scores) -> float:
    r"""Area under the ROC curve of an anomaly score (higher = more anomalous).

    .. math:: \mathrm{AUROC} = P(s_a > s_n) + \tfrac12 P(s_a = s_n)

    for a random anomalous score :math:`s_a` (``anomalous_scores``) and normal one :math:`s_n`
    (``normal_scores``): the Mann-Whitney statistic, computed from ranks in
    :math:`O((n+m)\log(n+m))`. 1 separates perfectly, 0.5 is chance.

    Args:
      normal_scores: ``[n]`` scores of in-distribution examples.
      anomalous_scores: ``[m]`` scores of anomalies.

    Returns:
      AUROC in [0, 1].

    Derivation: derivations/05-vae.md
    """
    from scipy.stats import rankdata

    normal = np.asarray(normal_scores, np.float64).ravel()
    anomalous = np.asarray(anomalous_scores, np.float64).ravel()
    if normal.size == 0 or anomalous.size == 0:
        raise ValueError("normal_scores and anomalous_scores must both be non-empty")
    if not (np.all(np.isfinite(normal)) and np.all(np.isfinite(anomalous))):
        raise ValueError("scores must be finite")
    ranks = rankdata(np.concatenate([normal, anomalous]))  # average ranks for ties
    n, m = normal.size, anomalous.size
    u = ranks[n:].sum() - m * (m + 1) / 2.0  # pairs (normal, anomalous) with s_a > s_n
    return float(u / (n * m))


def noise_stability(
    key: jax.Array,
    encode: Callable[[jax.Array], jax.Array],
    x: Float[Array, " n *event"],
    noise_std: float,
    num_draws: int = 1,
) -> float:
    r"""Mean squared movement of codes under input noise, relative to the spread of codes.

    .. math:: S = \frac{E_{x,\varepsilon}\lVert f(x + s\varepsilon) - f(x)\rVert^2}
       {E_{x, x'}\lVert f(x) - f(x')\rVert^2}, \qquad
       E_{x, x'}\lVert f(x) - f(x')\rVert^2 = 2\operatorname{tr}\operatorname{Cov}[f(x)]

    with :math:`f` = ``encode``, :math:`s` = ``noise_std`` and :math:`x, x'` independent
    examples. 0: codes ignore the noise; 1: the noise moves a code as far as a typical other
    input's code is. For a linear :math:`f(x) = Ax`, :math:`S = s^2\lVert A\rVert_F^2 /
    (2\operatorname{tr}(A\Sigma_x A^\top))`.

    Args:
      key: PRNG key for the noise.
      encode: ``encode(x [n, *event]) -> codes [n, d]``.
      x: ``[n, *event]`` with ``n >= 2``.
      noise_std: :math:`s \ge 0`.
      num_draws: noise draws per example.

    Returns:
      :math:`S` as a float.

    Derivation: derivations/05-vae.md
    """
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if jnp.ndim(x) < 2 or jnp.shape(x)[0] < 2:
        raise ValueError(f"x must be [n, ...] with n >= 2, got shape {jnp.shape(x)}")
    clean = encode(x)  # [n, d]
    _checks.matrix("encode(x)", clean)
    spread = 2.0 * jnp.sum(jnp.var(clean, axis=0, ddof=1))
    moves = []
    for k in jax.random.split(key, num_draws):
        noisy = encode(x + noise_std * jax.random.normal(k, x.shape, x.dtype))  # [n, d]
        moves.append(jnp.mean(jnp.sum(jnp.square(noisy - clean), axis=1)))
    return float(jnp.mean(jnp.stack(moves)) / spread)
