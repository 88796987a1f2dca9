r"""Generative adversarial networks: the losses, the optimal discriminator, Wasserstein critics,
gradient penalty and weight clipping, DCGAN and MLP players, and mode-coverage evaluation.

A generator :math:`G` maps noise :math:`z \sim N(0, I)` to samples with law :math:`q`; a
discriminator :math:`D = \sigma(\ell)` with logit :math:`\ell(x)` separates them from data with
law :math:`p`. The minimax game is

.. math:: \min_G \max_D\ V(D, G) = E_{x\sim p}[\log D(x)] + E_{z}[\log(1 - D(G(z)))],

whose inner maximum is :math:`-\log 4 + 2\,\mathrm{JS}(p, q)` (derivations/08-gans.md). A
Wasserstein critic :math:`f` (an unbounded score) instead estimates
:math:`W_1(p, q) = \sup_{\|f\|_L \le 1} E_p f - E_q f` (Kantorovich–Rubinstein), with the
Lipschitz constraint enforced by weight clipping, a gradient penalty, or spectral normalisation
(derivations/09-wgan.md).

**Conventions.** Losses take logits (or critic scores) ``[batch]`` and return per-example values
``[batch]``, to be averaged by the caller; all logs of sigmoids are ``softplus`` forms. Players
share one call signature so one training step serves them all:
``generator.apply(vars, z, labels, train=...)`` and
``discriminator.apply(vars, x, labels, update_stats=...)`` returning logits ``[batch]``
(``labels`` is ``None`` for unconditional players). Image players work on images in
:math:`[-1, 1]` (``tanh`` output).

References:
  Goodfellow et al., *Generative Adversarial Networks*, 2014, https://arxiv.org/abs/1406.2661

  Radford et al., *Unsupervised Representation Learning with Deep Convolutional Generative
  Adversarial Networks*, 2015, https://arxiv.org/abs/1511.06434

  Arjovsky et al., *Wasserstein GAN*, 2017, https://arxiv.org/abs/1701.07875

  Gulrajani et al., *Improved Training of Wasserstein GANs*, 2017,
  https://arxiv.org/abs/1704.00028

  Miyato et al., *Spectral Normalization for Generative Adversarial Networks*, 2018,
  https://arxiv.org/abs/1802.05957

  Miyato & Koyama, *cGANs with Projection Discriminator*, 2018, https://arxiv.org/abs/1802.05637

Derivation: derivations/08-gans.md (the game), derivations/09-wgan.md (Wasserstein critics)
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy
from jaxtyping import Array, Float, PRNGKeyArray

from genjax.nn.layers import Conv, ConvTranspose, SpectralConv, SpectralDense

NORMALIZATIONS = ("none", "layer", "spectral")
GP_EPS = 1e-12  #: added under the square root of the penalty's gradient norm (see gradient_penalty)


def _check_logits(name: str, logits) -> Array:
    logits = jnp.asarray(logits)
    if logits.ndim != 1:
        raise ValueError(f"{name} must have shape [batch], got {logits.shape}")
    return logits


def _check_real_fake(real, fake, what: str) -> tuple[Array, Array]:
    real, fake = _check_logits(f"real_{what}", real), _check_logits(f"fake_{what}", fake)
    if real.shape != fake.shape:
        raise ValueError(
            f"real_{what} and fake_{what} must have the same shape [batch], got {real.shape} "
            f"and {fake.shape}"
        )
    return real, fake


# ----------------------------------------------------------------------------- the GAN game


def discriminator_loss(
    real_logits: Float[Array, " batch"], fake_logits: Float[Array, " batch"]
) -> Float[Array, " batch"]:
    r"""The discriminator's loss: binary cross-entropy with data labelled 1 and samples 0.

    .. math:: L_D = -\log D(x) - \log(1 - D(G(z)))
              = \operatorname{softplus}(-\ell(x)) + \operatorname{softplus}(\ell(G(z)))

    with :math:`\ell(x)` = ``real_logits`` and :math:`\ell(G(z))` = ``fake_logits``
    (:math:`-\log\sigma(\ell) = \operatorname{softplus}(-\ell)`,
    :math:`-\log(1-\sigma(\ell)) = \operatorname{softplus}(\ell)`). Its mean is :math:`-V(D, G)`.

    Args:
      real_logits: ``[batch]`` logits on data.
      fake_logits: ``[batch]`` logits on generated samples.

    Returns:
      ``[batch]`` losses, pairing example :math:`i` of each batch.

    Raises:
      ValueError: inputs not 1-D or of different lengths.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(discriminator_loss(jnp.zeros(1), jnp.zeros(1))[0]), 4)  # 2 log 2
      1.3863

    Derivation: derivations/08-gans.md
    """
    real_logits, fake_logits = _check_real_fake(real_logits, fake_logits, "logits")
    return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)


def generator_loss(
    fake_logits: Float[Array, " batch"], saturating: bool = False
) -> Float[Array, " batch"]:
    r"""The generator's loss, minimax (saturating) or non-saturating.

    .. math:: L_G^{\text{sat}} = \log(1 - D(G(z))) = -\operatorname{softplus}(\ell), \qquad
              L_G^{\text{ns}} = -\log D(G(z)) = \operatorname{softplus}(-\ell)

    with :math:`\ell` = ``fake_logits``. Both are decreasing in :math:`\ell`; their slopes are
    :math:`-\sigma(\ell)` and :math:`-\sigma(-\ell)`. Early in training the discriminator wins,
    :math:`D(G(z)) = \sigma(\ell) \to 0`, and the saturating slope vanishes while the
    non-saturating one tends to :math:`-1` (derivations/08-gans.md).

    Args:
      fake_logits: ``[batch]`` discriminator logits on generated samples.
      saturating: ``True`` for the minimax loss of the game, ``False`` (default) for the
        non-saturating heuristic of Goodfellow et al.

    Returns:
      ``[batch]`` losses.

    Raises:
      ValueError: ``fake_logits`` is not 1-D.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(generator_loss(jnp.zeros(1))[0]), 4), round(
      ...     float(generator_loss(jnp.zeros(1), saturating=True)[0]), 4)
      (0.6931, -0.6931)

    Derivation: derivations/08-gans.md
    """
    fake_logits = _check_logits("fake_logits", fake_logits)
    if saturating:
        return -jax.nn.softplus(fake_logits)
    return jax.nn.softplus(-fake_logits)


def optimal_discriminator(
    p: Float[Array, "*batch k"], q: Float[Array, "*batch k"]
) -> Float[Array, "*batch k"]:
    r"""The discriminator that maximises :math:`V(D, G)` for fixed data and model laws.

    .. math:: D^*(x) = \frac{p(x)}{p(x) + q(x)}

    with :math:`p` = ``p`` (data) and :math:`q` = ``q`` (generator), given as probabilities (or
    densities) evaluated at the same points. Where :math:`p + q = 0` the value does not affect
    :math:`V` and ``1/2`` is returned.

    Args:
      p: ``[..., k]`` non-negative values of the data law.
      q: ``[..., k]`` non-negative values of the model law, same shape.

    Returns:
      ``[..., k]`` values in :math:`[0, 1]`.

    Raises:
      ValueError: shapes differ.

    Example:
      >>> import jax.numpy as jnp
      >>> optimal_discriminator(jnp.array([0.5, 0.5, 0.0]), jnp.array([0.5, 0.0, 0.5])).tolist()
      [0.5, 1.0, 0.0]

    Derivation: derivations/08-gans.md
    """
    p, q = jnp.asarray(p), jnp.asarray(q)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    total = p + q
    return jnp.where(total > 0, p / jnp.where(total > 0, total, 1.0), 0.5)


def gan_value(
    p: Float[Array, "*batch k"], q: Float[Array, "*batch k"], d: Float[Array, "*batch k"]
) -> Float[Array, "*batch"]:
    r"""The value :math:`V(D, G)` of the GAN game for discrete laws.

    .. math:: V = \sum_i p_i \log D_i + \sum_i q_i \log(1 - D_i)

    with :math:`p` = ``p`` (data), :math:`q` = ``q`` (generator) and :math:`D` = ``d``, using
    :math:`0 \log 0 = 0`. At :math:`D = D^*` (:func:`optimal_discriminator`) it equals
    :math:`-\log 4 + 2\,\mathrm{JS}(p, q)`.

    Args:
      p: ``[..., k]`` probability vectors of the data.
      q: ``[..., k]`` probability vectors of the generator.
      d: ``[..., k]`` discriminator outputs in :math:`[0, 1]`.

    Returns:
      ``[...]`` values :math:`\le 0`.

    Raises:
      ValueError: shapes differ.

    Example:
      >>> import jax.numpy as jnp
      >>> p = jnp.array([0.5, 0.5])
      >>> round(float(gan_value(p, p, optimal_discriminator(p, p))), 4)  # -log 4
      -1.3863

    Derivation: derivations/08-gans.md
    """
    p, q, d = jnp.asarray(p), jnp.asarray(q), jnp.asarray(d)
    if not p.shape == q.shape == d.shape:
        raise ValueError(f"p, q and d must have one shape, got {p.shape}, {q.shape}, {d.shape}")
    return jnp.sum(xlogy(p, d) + xlogy(q, 1.0 - d), axis=-1)


# ----------------------------------------------------------------------------- Wasserstein


def critic_loss(
    real_scores: Float[Array, " batch"], fake_scores: Float[Array, " batch"]
) -> Float[Array, " batch"]:
    r"""The WGAN critic's loss, the negated Kantorovich–Rubinstein objective.

    .. math:: L_f = f(G(z)) - f(x), \qquad -E[L_f] = E_p f - E_q f \le W_1(p, q)
              \ \text{ for } \|f\|_L \le 1

    with :math:`f(x)` = ``real_scores`` and :math:`f(G(z))` = ``fake_scores`` (unbounded critic
    outputs, no sigmoid).

    Args:
      real_scores: ``[batch]`` critic scores on data.
      fake_scores: ``[batch]`` critic scores on samples.

    Returns:
      ``[batch]`` losses.

    Raises:
      ValueError: inputs not 1-D or of different lengths.

    Example:
      >>> import jax.numpy as jnp
      >>> critic_loss(jnp.array([2.0]), jnp.array([0.5])).tolist()
      [-1.5]

    Derivation: derivations/09-wgan.md
    """
    real_scores, fake_scores = _check_real_fake(real_scores, fake_scores, "scores")
    return fake_scores - real_scores


def wasserstein_generator_loss(fake_scores: Float[Array, " batch"]) -> Float[Array, " batch"]:
    r"""The generator's loss against a critic (WGAN, WGAN-GP, and the hinge GAN of SN-GAN).

    .. math:: L_G = -f(G(z))

    with :math:`f(G(z))` = ``fake_scores``: only this term of :math:`E_p f - E_q f` depends on
    :math:`G`. The hinge GAN uses the same generator loss (Lim & Ye 2017; Miyato et al. 2018).

    Args:
      fake_scores: ``[batch]`` critic scores on samples.

    Returns:
      ``[batch]`` losses.

    Raises:
      ValueError: ``fake_scores`` is not 1-D.

    Derivation: derivations/09-wgan.md
    """
    return -_check_logits("fake_scores", fake_scores)


def hinge_discriminator_loss(
    real_scores: Float[Array, " batch"], fake_scores: Float[Array, " batch"]
) -> Float[Array, " batch"]:
    r"""The hinge loss of the discriminator (geometric GAN, used by SN-GAN).

    .. math:: L_D = \max(0, 1 - f(x)) + \max(0, 1 + f(G(z)))

    with :math:`f(x)` = ``real_scores``, :math:`f(G(z))` = ``fake_scores``. Pair it with
    :func:`wasserstein_generator_loss`.

    Args:
      real_scores: ``[batch]`` scores on data.
      fake_scores: ``[batch]`` scores on samples.

    Returns:
      ``[batch]`` losses.

    Raises:
      ValueError: inputs not 1-D or of different lengths.

    Example:
      >>> import jax.numpy as jnp
      >>> hinge_discriminator_loss(jnp.array([2.0, 0.0]), jnp.array([-3.0, 0.5])).tolist()
      [0.0, 2.5]

    References:
      Lim & Ye, *Geometric GAN*, 2017, https://arxiv.org/abs/1705.02894

    Derivation: derivations/08-gans.md
    """
    real_scores, fake_scores = _check_real_fake(real_scores, fake_scores, "scores")
    return jax.nn.relu(1.0 - real_scores) + jax.nn.relu(1.0 + fake_scores)


def gradient_penalty(
    key: PRNGKeyArray,
    critic_fn: Callable[[Array], Array],
    real: Float[Array, " batch *event"],
    fake: Float[Array, " batch *event"],
    *,
    noise: Float[Array, " batch"] | None = None,
) -> Float[Array, " batch"]:
    r"""The WGAN-GP penalty on random interpolates between data and samples.

    .. math:: \hat x = \epsilon x + (1 - \epsilon)\,\tilde x, \quad \epsilon \sim U[0, 1], \qquad
              P = \big(\|\nabla_{\hat x} f(\hat x)\|_2 - 1\big)^2

    with :math:`x` = ``real``, :math:`\tilde x` = ``fake``, :math:`f` = ``critic_fn`` and one
    :math:`\epsilon` per example drawn from ``key`` (or given as ``noise``). The caller multiplies
    the mean by :math:`\lambda` (10 in Gulrajani et al.) and adds it to the critic loss;
    differentiating that loss differentiates :math:`\nabla_{\hat x} f` again (double backprop).

    Args:
      key: PRNG key for :math:`\epsilon`.
      critic_fn: ``f``: ``[batch, *event] -> [batch]``, each output depending on its own input
        only (no batch norm), so that ``grad(sum f)`` gives every per-example gradient at once.
      real: ``[batch, *event]`` data.
      fake: ``[batch, *event]`` samples (stop their gradient to leave the generator out).
      noise: optional ``[batch]`` values of :math:`\epsilon` in :math:`[0, 1]`.

    Returns:
      ``[batch]`` penalties.

    Raises:
      ValueError: ``real`` and ``fake`` differ in shape or are scalars, ``noise`` is not
        ``[batch]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> critic = lambda x: x @ jnp.array([0.6, 0.8])  # unit-norm weights: 1-Lipschitz
      >>> x = jnp.ones((3, 2))
      >>> float(jnp.max(gradient_penalty(jax.random.key(0), critic, x, -x)))
      0.0

    Note:
      The norm is :math:`\sqrt{\|g\|^2 + 10^{-12}}`: :math:`\sqrt{\cdot}` has an infinite
      derivative at 0, which double backprop would turn into NaN for a critic that is flat at
      :math:`\hat x` (derivations/09-wgan.md).

    References:
      Gulrajani et al., *Improved Training of Wasserstein GANs*, 2017,
      https://arxiv.org/abs/1704.00028 (Algorithm 1).

    Derivation: derivations/09-wgan.md
    """
    real, fake = jnp.asarray(real), jnp.asarray(fake)
    if real.shape != fake.shape or real.ndim < 2:
        raise ValueError(
            f"real and fake must have the same shape [batch, *event], got {real.shape} and "
            f"{fake.shape}"
        )
    batch = real.shape[0]
    if noise is None:
        noise = jax.random.uniform(key, (batch,), real.dtype)
    noise = jnp.asarray(noise, real.dtype)
    if noise.shape != (batch,):
        raise ValueError(f"noise must have shape ({batch},), got {noise.shape}")
    eps = noise.reshape((batch,) + (1,) * (real.ndim - 1))  # [batch, 1, ...]
    interpolates = eps * real + (1.0 - eps) * fake  # [batch, *event]
    grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(interpolates)  # [batch, *event]
    sq_norm = jnp.sum(grads.reshape(batch, -1) ** 2, axis=-1)  # [batch]
    return (jnp.sqrt(sq_norm + GP_EPS) - 1.0) ** 2


def clip_weights(params: Any, c: float) -> Any:
    r"""WGAN weight clipping: project every parameter onto :math:`[-c, c]`.

    .. math:: w \leftarrow \operatorname{clip}(w, -c, c)

    applied leaf-wise to the pytree ``params`` after each critic update. A bounded weight set
    makes the critic :math:`K`-Lipschitz for some :math:`K(c)`, so the critic estimates
    :math:`K\,W_1` (Arjovsky et al., 2017; :math:`c = 0.01` there).

    Args:
      params: a pytree of arrays (e.g. a critic's ``params``).
      c: the clipping bound, positive.

    Returns:
      The clipped pytree, same structure.

    Raises:
      ValueError: ``c`` is not positive.

    Example:
      >>> import jax.numpy as jnp
      >>> clip_weights({"w": jnp.array([-1.0, 0.005, 2.0])}, 0.01)["w"].tolist()
      [-0.01, 0.005, 0.01]

    Derivation: derivations/09-wgan.md
    """
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    return jax.tree.map(lambda w: jnp.clip(w, -c, c), params)


# ----------------------------------------------------------------------------- evaluation


class ModeCoverage(NamedTuple):
    """What :func:`mode_coverage` measures.

    Attributes:
      modes: number of modes covered.
      high_quality: fraction of samples within ``radius`` standard deviations of some mode.
      counts: ``[K]`` high-quality samples per mode.
    """

    modes: int
    high_quality: float
    counts: np.ndarray


def mode_coverage(
    samples: Float[Array, "n dim"],
    means: Float[Array, "K dim"],
    std: float,
    *,
    radius: float = 3.0,
    min_fraction: float = 0.01,
) -> ModeCoverage:
    r"""Modes covered and high-quality samples of a generator on a Gaussian mixture.

    A sample is *high quality* when it lies within ``radius`` standard deviations of its nearest
    mode, :math:`\min_k \|x - \mu_k\| \le r s`; a mode is *covered* when at least a fraction
    ``min_fraction`` of all samples are high-quality samples nearest to it.

    Args:
      samples: ``[n, dim]`` generated points.
      means: ``[K, dim]`` mode centres :math:`\mu_k`.
      std: the modes' standard deviation :math:`s`.
      radius: :math:`r` (3 in Metz et al. and Srivastava et al.).
      min_fraction: share of samples a covered mode needs (1 %).

    Returns:
      :class:`ModeCoverage`.

    Raises:
      ValueError: shapes do not match, no samples, non-positive ``std``.

    Example:
      >>> import numpy as np
      >>> means = np.array([[0.0, 0.0], [5.0, 0.0]])
      >>> mode_coverage(np.zeros((10, 2)), means, 0.1).modes
      1

    References:
      Metz et al., *Unrolled Generative Adversarial Networks*, 2016,
      https://arxiv.org/abs/1611.02163; Srivastava et al., *VEEGAN: Reducing Mode Collapse in
      GANs using Implicit Variational Learning*, 2017, https://arxiv.org/abs/1705.07761

    Derivation: derivations/08-gans.md (section 4, mode collapse)
    """
    samples, means = np.asarray(samples, np.float64), np.asarray(means, np.float64)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must have shape [n, dim] with n >= 1, got {samples.shape}")
    if means.ndim != 2 or means.shape[1] != samples.shape[1]:
        raise ValueError(f"means must have shape [K, {samples.shape[1]}], got {means.shape}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    dist = np.linalg.norm(samples[:, None, :] - means[None], axis=-1)  # [n, K]
    nearest = np.argmin(dist, axis=1)  # [n]
    good = dist[np.arange(len(samples)), nearest] <= radius * std  # [n]
    counts = np.bincount(nearest[good], minlength=means.shape[0])  # [K]
    modes = int(np.sum(counts >= min_fraction * len(samples)))
    return ModeCoverage(modes, float(np.mean(good)), counts)


# ----------------------------------------------------------------------------- players


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _check_unconditional(labels, name: str) -> None:
    if labels is not None:
        raise ValueError(f"{name} is unconditional: labels must be None")


class _Linear(nn.Module):
    """A dense layer, spectrally normalised or not, with the players' common signature."""

    features: int
    spectral: bool = False
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        if self.spectral:
            return SpectralDense(self.features, use_bias=self.use_bias)(x, update_stats)
        return nn.Dense(self.features, use_bias=self.use_bias)(x)


class _Down(nn.Module):
    """A 4x4, stride-2 convolution (halves H and W), spectrally normalised or not."""

    features: int
    spectral: bool = False

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        if self.spectral:
            return SpectralConv(self.features, kernel_size=4, stride=2, padding=1)(x, update_stats)
        return Conv(self.features, kernel_size=4, stride=2, padding=1)(x)


class MLPGenerator(nn.Module):
    r"""A ReLU MLP generator for vector data, :math:`z \mapsto x`.

    Attributes:
      out_dim: data dimension.
      features: hidden width.
      depth: number of hidden layers.

    Returns (``__call__(z, labels=None, train=True)``):
      ``[batch, out_dim]`` (linear output). ``labels`` must be ``None``; ``train`` is accepted
      for the common player signature and has no effect.
    """

    out_dim: int = 2
    features: int = 128
    depth: int = 3

    @nn.compact
    def __call__(self, z, labels=None, train: bool = True):
        _check_unconditional(labels, "MLPGenerator")
        h = z
        for _ in range(self.depth):
            h = nn.relu(nn.Dense(self.features)(h))
        return nn.Dense(self.out_dim)(h)


class MLPDiscriminator(nn.Module):
    r"""A ReLU MLP discriminator / critic for vector data, :math:`x \mapsto \ell(x)`.

    Attributes:
      features: hidden width.
      depth: number of hidden layers.
      normalization: ``"none"``, ``"layer"`` (LayerNorm after each hidden layer, the WGAN-GP
        paper's batch-independent choice) or ``"spectral"`` (every dense layer, SN-GAN).

    Returns (``__call__(x, labels=None, update_stats=False)``):
      ``[batch]`` logits / scores. ``update_stats`` advances the spectral-norm power iteration
      (needs ``mutable=["spectral"]``).
    """

    features: int = 128
    depth: int = 3
    normalization: str = "none"

    @nn.compact
    def __call__(self, x, labels=None, update_stats: bool = False):
        _check_normalization(self.normalization)
        _check_unconditional(labels, "MLPDiscriminator")
        spectral = self.normalization == "spectral"
        h = x
        for _ in range(self.depth):
            h = _Linear(self.features, spectral)(h, update_stats)
            if self.normalization == "layer":
                h = nn.LayerNorm()(h)
            h = nn.relu(h)
        return _Linear(1, spectral)(h, update_stats)[:, 0]  # [batch]


def dcgan_plan(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    r"""Base resolution :math:`s_0` and number of 2x upsamplings :math:`n` with
    :math:`s_0 2^n = H`: the largest :math:`n \le 3` that divides :math:`H` and keeps
    :math:`s_0 \ge 2`.

    8x8 digits: (2, 2); 28x28 MNIST: (7, 2); 32x32 CIFAR: (4, 3).

    Raises:
      ValueError: not a square ``[H, W, C]`` shape, or :math:`H` odd.

    Example:
      >>> dcgan_plan((8, 8, 1)), dcgan_plan((28, 28, 1)), dcgan_plan((32, 32, 3))
      ((2, 2), (7, 2), (4, 3))
    """
    if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
        raise ValueError(f"image_shape must be a square (H, W, C), got {image_shape}")
    size = image_shape[0]
    for n in (3, 2, 1):
        if size % 2**n == 0 and size // 2**n >= 2:
            return size // 2**n, n
    raise ValueError(f"image size {size} must be even and at least 4")


class DCGANGenerator(nn.Module):
    r"""The DCGAN generator: project, then transposed convolutions with batch norm and ReLU.

    :math:`z` (concatenated with a learned label embedding when ``num_classes`` is set) →
    Dense to :math:`s_0 \times s_0 \times 2^{n-1} F` → BN → ReLU → :math:`(n-1)` x
    [ConvTranspose 4x4 stride 2 (halving the channels) → BN → ReLU] → ConvTranspose 4x4 stride 2
    to the image channels → ``tanh``, with :math:`(s_0, n)` from :func:`dcgan_plan` (8x8 digits:
    2x2 → 4x4 → 8x8).

    Attributes:
      image_shape: ``(H, W, C)`` of the output.
      features: :math:`F`, channels before the last layer.
      num_classes: set for a conditional generator (label embedding concatenated to :math:`z`).
      embed_dim: width of the label embedding.

    Returns (``__call__(z, labels=None, train=True)``):
      ``[batch, H, W, C]`` images in :math:`[-1, 1]`. ``train=True`` normalises with batch
      statistics and updates the running averages (``mutable=["batch_stats"]``); ``False`` uses
      the running averages.

    Note:
      Transposed convolutions are :func:`genjax.nn.layers.conv_transpose` (4x4, stride 2,
      padding 1, PyTorch's DCGAN setting), computed without XLA convolutions for speed inside
      the training scan. Batch-norm momentum is 0.9 (flax's ``momentum`` = PyTorch's
      ``1 - momentum``).
    """

    image_shape: tuple[int, int, int] = (8, 8, 1)
    features: int = 32
    num_classes: int | None = None
    embed_dim: int = 16

    @nn.compact
    def __call__(self, z, labels=None, train: bool = True):
        base, num_up = dcgan_plan(self.image_shape)
        h = z
        if self.num_classes is not None:
            if labels is None:
                raise ValueError("a conditional DCGANGenerator needs labels [batch]")
            h = jnp.concatenate([h, nn.Embed(self.num_classes, self.embed_dim)(labels)], -1)
        else:
            _check_unconditional(labels, "DCGANGenerator(num_classes=None)")
        width = self.features * 2 ** (num_up - 1)
        h = nn.Dense(base * base * width)(h)
        h = h.reshape(h.shape[0], base, base, width)  # [batch, s0, s0, 2^(n-1) F]
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
        for i in range(num_up - 1):
            h = ConvTranspose(width // 2 ** (i + 1))(h)  # [batch, 2^(i+1) s0, ..., width/2^(i+1)]
            h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
        return jnp.tanh(ConvTranspose(self.image_shape[2])(h))  # [batch, H, W, C]


class DCGANDiscriminator(nn.Module):
    r"""The DCGAN discriminator / critic, optionally conditional with a projection head.

    :math:`n` x [Conv 4x4 stride 2 → (norm) → LeakyReLU(0.2)] with channels
    :math:`F, 2F, 4F, \dots` (no norm after the first), flatten to :math:`\phi(x)`, then

    .. math:: \ell(x, y) = w^\top \phi(x) + b + e_y^\top \phi(x)

    where the last term, the projection of Miyato & Koyama, is present when ``num_classes`` is
    set (:math:`e_y` a learned class embedding).

    Attributes:
      features: :math:`F`.
      normalization: ``"none"`` (WGAN-GP critic: batch norm would break the per-example gradient
        penalty), ``"layer"``, or ``"spectral"`` (every conv, dense and embedding, SN-GAN).
      num_classes: set for a projection discriminator.

    Returns (``__call__(x, labels=None, update_stats=False)``):
      ``[batch]`` logits / scores.

    Note:
      Radford et al. put batch norm in the discriminator as well; here it is omitted in every
      variant, so that the critic is a per-example function (needed by
      :func:`gradient_penalty`) and one discriminator serves all losses.
    """

    features: int = 32
    normalization: str = "none"
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, labels=None, update_stats: bool = False):
        _check_normalization(self.normalization)
        spectral = self.normalization == "spectral"
        _, num_down = dcgan_plan(tuple(x.shape[1:]))
        h = x
        for i in range(num_down):
            h = _Down(self.features * 2**i, spectral)(h, update_stats)
            if i > 0 and self.normalization == "layer":
                h = nn.LayerNorm(reduction_axes=(-3, -2, -1))(h)
            h = nn.leaky_relu(h, 0.2)
        phi = h.reshape(h.shape[0], -1)  # [batch, s0 * s0 * 2^(n-1) F]
        logits = _Linear(1, spectral)(phi, update_stats)[:, 0]  # [batch]
        if self.num_classes is None:
            _check_unconditional(labels, "DCGANDiscriminator(num_classes=None)")
            return logits
        if labels is None:
            raise ValueError("a projection DCGANDiscriminator needs labels [batch]")
        one_hot = jax.nn.one_hot(labels, self.num_classes, dtype=phi.dtype)  # [batch, classes]
        embed = _Linear(phi.shape[-1], spectral, use_bias=False)(one_hot, update_stats)
        return logits + jnp.sum(embed * phi, axis=-1)  # [batch]
