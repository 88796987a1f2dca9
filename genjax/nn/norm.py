r"""Feature normalisations as pure functions: group norm, instance norm, adaptive instance norm,
pixel norm.

* :func:`group_norm` (and its module :class:`GroupNorm`, a drop-in for flax's ``nn.GroupNorm``)
  normalises each example over its positions and the channels of a group. Its gradient is
  written by hand (a custom VJP): two per-example channel sums of the cotangent and one
  elementwise pass, which XLA's CPU backend runs several times faster than the autodiff of the
  statistics (derivations/11-ddpm.md, section 7).

* :func:`instance_norm` removes each example's per-channel mean and standard deviation over
  the spatial axes; :func:`adain` then re-injects a *style*: a target mean and standard
  deviation per channel. These statistics are what a Gram-matrix style loss
  (:func:`genjax.style.gram_matrix`) compares, to first order: AdaIN sets the diagonal part of
  the feature covariance directly instead of matching it by gradient descent.
* :func:`pixel_norm` scales each pixel's feature vector to unit root-mean-square (ProGAN's
  "local response normalisation" in the generator).

References:
  Ulyanov et al., *Instance Normalization: The Missing Ingredient for Fast Stylization*, 2016,
  https://arxiv.org/abs/1607.08022

  Huang & Belongie, *Arbitrary Style Transfer in Real-time with Adaptive Instance
  Normalization*, 2017, https://arxiv.org/abs/1703.06868

  Karras et al., *Progressive Growing of GANs for Improved Quality, Stability, and Variation*,
  2018, https://arxiv.org/abs/1710.10196

  Wu & He, *Group Normalization*, 2018, https://arxiv.org/abs/1803.08494

Derivation: derivations/22-style-based-gans.md, derivations/11-ddpm.md (group norm)
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from genjax.nn._formulation import conv_formulation

__all__ = [
    "BATCH_NORM_EPS",
    "GROUP_NORM_EPS",
    "NORM_EPS",
    "BatchNorm",
    "GroupNorm",
    "adain",
    "batch_moments",
    "batch_norm",
    "channel_sums",
    "group_norm",
    "instance_norm",
    "pixel_norm",
]

NORM_EPS = 1e-8  #: added to the variance (mean square) under the square roots of this module
GROUP_NORM_EPS = 1e-6  #: :func:`group_norm`'s default epsilon, flax's ``nn.GroupNorm``'s
BATCH_NORM_EPS = 1e-5  #: :func:`batch_norm`'s default epsilon, flax's ``nn.BatchNorm``'s


_WIDE = 4096  #: the widest partial sum of :func:`_middle_sum`'s first stage, in elements


def _middle_sum(x: Array) -> Array:
    """``[B, N, C] -> [B, C]`` in two stages: the ``[B, N / k, k C]`` view summed over its middle
    axis (a reduction keeping a wide minor axis, ``k`` the largest divisor of ``N`` below ``N``
    with ``k C <= 4096``), then the ``[B, k, C]`` partial sums. A barrier keeps XLA from merging
    the stages back into one reduction or fusing them into a single serial loop."""
    b, n, c = x.shape
    if conv_formulation() != "adjoint":
        return x.sum(1)
    k = max((k for k in range(1, n) if n % k == 0 and k * c <= _WIDE), default=1)
    if k == 1 or n * c <= _WIDE:
        return x.sum(1)
    partial = jax.lax.optimization_barrier(x.reshape(b, n // k, k * c).sum(1))  # [B, k C]
    return partial.reshape(b, k, c).sum(1)


def channel_sums(x: Float[Array, "*lead C"], per_example: bool = False) -> Array:
    r"""Sums over the positions: :math:`s_c = \sum_{i} x_{i, c}` over every axis but the last
    (``[C]``), or with ``per_example`` over every axis but the first and the last
    (:math:`s_{b,c} = \sum_i x_{b, i, c}`, ``[B, C]``).

    The same numbers as ``x.sum(axes)`` to float rounding, summed in stages: XLA's CPU backend
    runs a reduction over leading axes that keeps only the narrow channel axis several times
    slower than one that keeps a wide minor axis (``[64, 28, 28, 32]`` per example: 1.0 ms as one
    reduction, 0.46 ms in stages, inside a ``lax.scan`` on two cores). Normalisation statistics
    and the gradients of biases and normalisation parameters are such sums.

    Args:
      x: ``[..., C]`` with at least one leading axis (two with ``per_example``).
      per_example: keep the first axis.

    Returns:
      ``[C]``, or ``[B, C]`` with ``per_example``.

    Derivation: derivations/11-ddpm.md (section 7)
    """
    x = jnp.asarray(x)
    if x.ndim < 2 + per_example:
        raise ValueError(
            f"x must have shape [{'B, ' if per_example else ''}..., C] with at least one "
            f"position axis, got {x.shape}"
        )
    sums = _middle_sum(x.reshape(x.shape[0], -1, x.shape[-1]))  # [B, C]
    return sums if per_example else sums.sum(0)


def _group_means(s: Array, num_groups: int, count: int, pooled: bool) -> Array:
    """``[B, C]`` per-example channel sums to their group's sum over ``count`` (and over the
    batch if ``pooled``), repeated over the group's channels: ``[B, C]`` (``[1, C]`` pooled)."""
    if pooled:
        s = s.sum(0, keepdims=True)  # [1, C]
    b, c = s.shape
    g = s.reshape(b, num_groups, c // num_groups).sum(-1) / count  # [B, G]
    return jnp.repeat(g, c // num_groups, axis=1)


def _per_example(v: Array, x: Array) -> Array:
    """``[B, C]`` (or ``[1, C]``) coefficients shaped to broadcast against ``x [B, ..., C]``."""
    return v.reshape(v.shape[:1] + (1,) * (x.ndim - 2) + v.shape[1:])


def _count(x: Array, num_groups: int, pooled: bool) -> int:
    """The number of entries behind each statistic: positions times the group's channels (times
    the batch if ``pooled``)."""
    n = math.prod(x.shape[1:-1]) * (x.shape[-1] // num_groups)
    return n * x.shape[0] if pooled else n


def _norm_fwd(x, scale, bias, num_groups, eps, pooled):
    rows = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, N, C]
    count = _count(x, num_groups, pooled)
    mean = _group_means(_middle_sum(rows), num_groups, count, pooled)  # [B or 1, C]
    square = _group_means(_middle_sum(rows * rows), num_groups, count, pooled)
    rstd = jax.lax.rsqrt(jnp.maximum(square - mean * mean, 0.0) + eps)
    a = scale[None] * rstd
    y = x * _per_example(a, x) + _per_example(bias[None] - mean * a, x)
    return y, (x, scale, mean, rstd)


def _norm_bwd(num_groups, eps, pooled, residuals, dy):
    x, scale, mean, rstd = residuals
    scale = scale[None]  # [1, C]
    rows, drows = (v.reshape(x.shape[0], -1, x.shape[-1]) for v in (x, dy))  # [B, N, C]
    count = _count(x, num_groups, pooled)
    t = _middle_sum(drows)  # [B, C]: sums over positions of dy
    if pooled:
        t = t.sum(0, keepdims=True)  # [1, C]: and over the batch
    s = _middle_sum(drows * rows)
    u = rstd * ((s.sum(0, keepdims=True) if pooled else s) - mean * t)  # sums of dy * xhat
    m1 = _group_means(scale * t, num_groups, count, False)  # group mean of dxhat = dy * scale
    m2 = _group_means(scale * u, num_groups, count, False)  # group mean of dxhat * xhat
    q = rstd * rstd * m2
    dx = dy * _per_example(rstd * scale, x) - x * _per_example(q, x)
    dx = dx + _per_example(mean * q - rstd * m1, x)
    return dx, u.sum(0), t.sum(0)


def _norm(x, scale, bias, num_groups, eps, pooled):
    return _norm_fwd(x, scale, bias, num_groups, eps, pooled)[0]


_norm_vjp = jax.custom_vjp(_norm, nondiff_argnums=(3, 4, 5))
_norm_vjp.defvjp(_norm_fwd, _norm_bwd)


def _normalize(x, scale, bias, num_groups, eps, pooled):
    """The normalisation with its closed-form gradient under the ``"adjoint"`` formulation,
    with autodiff's otherwise (:func:`genjax.nn.layers.conv_formulation`)."""
    op = _norm_vjp if conv_formulation() == "adjoint" else _norm
    return op(x, scale, bias, num_groups, eps, pooled)


def _check_affine(x, scale, bias, eps) -> tuple[Array, Array, Array]:
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape [batch, ..., C], got {x.shape}")
    c = x.shape[-1]
    for name, v in (("scale", scale), ("bias", bias)):
        if jnp.shape(v) != (c,):
            raise ValueError(f"{name} must have shape ({c},) (x's channels), got {jnp.shape(v)}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return x, jnp.asarray(scale, x.dtype), jnp.asarray(bias, x.dtype)


def group_norm(
    x: Float[Array, "batch *spatial C"],
    scale: Float[Array, " C"],
    bias: Float[Array, " C"],
    num_groups: int,
    eps: float = GROUP_NORM_EPS,
) -> Float[Array, "batch *spatial C"]:
    r"""Group normalisation: each example's channels split into groups, each group normalised
    over its positions and channels, then a per-channel affine map.

    .. math:: y_{b,n,c} = \gamma_c\,\frac{x_{b,n,c} - \mu_{b,g}}{\sqrt{\sigma^2_{b,g} +
              \epsilon}} + \beta_c,\qquad \mu_{b,g} = \frac{1}{N C_g}\sum_{n,\,c' \in g}
              x_{b,n,c'},\quad \sigma^2_{b,g} = \frac{1}{N C_g}\sum_{n,\,c' \in g}
              x_{b,n,c'}^2 - \mu_{b,g}^2

    with :math:`g` the group of channel :math:`c` (``C / num_groups`` consecutive channels,
    :math:`C_g` of them), :math:`n` the positions, :math:`\gamma` = ``scale`` and
    :math:`\beta` = ``bias``. The variance is floored at zero. Same numbers as flax's
    ``nn.GroupNorm`` (to float rounding); the gradient is the closed form of
    derivations/11-ddpm.md (section 7), written as a custom VJP:

    .. math:: \frac{\partial L}{\partial x_{b,n,c}} = \frac{1}{\sigma_{b,g}}\Big(
              \gamma_c\,\delta_{b,n,c} - \overline{\gamma\delta}_{b,g}
              - \hat x_{b,n,c}\,\overline{\gamma\delta\hat x}_{b,g}\Big)

    (:math:`\delta = \partial L/\partial y`, bars the means over a group's positions and
    channels). It differentiates again (its backward pass is made of differentiable
    operations); under the ``"adjoint"`` formulation (CPU,
    :func:`genjax.nn.layers.conv_formulation`) forward-mode derivatives through it raise.

    Args:
      x: ``[batch, ..., C]`` (channels last, any number of position axes).
      scale: ``[C]`` :math:`\gamma`.
      bias: ``[C]`` :math:`\beta`.
      num_groups: groups :math:`G`, dividing ``C``.
      eps: :math:`\epsilon > 0`.

    Returns:
      ``[batch, ..., C]``.

    References:
      Wu & He, *Group Normalization*, 2018, https://arxiv.org/abs/1803.08494

    Derivation: derivations/11-ddpm.md (section 7)
    """
    x, scale, bias = _check_affine(x, scale, bias, eps)
    c = x.shape[-1]
    if not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ValueError(f"num_groups must be a positive int dividing C = {c}, got {num_groups!r}")
    return _normalize(x, scale, bias, num_groups, float(eps), False)


class GroupNorm(nn.Module):
    r""":func:`group_norm` with learned ``scale`` (ones) and ``bias`` (zeros), named and shaped as
    flax's ``nn.GroupNorm``'s, so the two share parameter trees.

    Attributes:
      num_groups: groups, dividing the input's channels.
      epsilon: :math:`\epsilon`.

    Derivation: derivations/11-ddpm.md (section 7)
    """

    num_groups: int = 32
    epsilon: float = GROUP_NORM_EPS

    @nn.compact
    def __call__(self, x: Float[Array, "batch *spatial C"]) -> Float[Array, "batch *spatial C"]:
        c = jnp.shape(x)[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return group_norm(x, scale, bias, self.num_groups, self.epsilon)


def batch_moments(x: Float[Array, "batch *spatial C"]) -> tuple[Array, Array]:
    r"""Per-channel mean and (biased) variance over every axis but the last,
    :math:`\mu_c = \overline{x_{\cdot c}}`, :math:`\sigma^2_c = \overline{x^2_{\cdot c}} -
    \mu_c^2` (floored at zero), summed as :func:`channel_sums` sums.

    Args:
      x: ``[batch, ..., C]``.

    Returns:
      ``(mean [C], var [C])``.

    Derivation: derivations/11-ddpm.md (section 7)
    """
    x = jnp.asarray(x)
    n = x.size // x.shape[-1]
    mean = channel_sums(x) / n
    return mean, jnp.maximum(channel_sums(x * x) / n - mean * mean, 0.0)


def batch_norm(
    x: Float[Array, "batch *spatial C"],
    scale: Float[Array, " C"],
    bias: Float[Array, " C"],
    eps: float = BATCH_NORM_EPS,
) -> Float[Array, "batch *spatial C"]:
    r"""Batch normalisation with the batch's statistics: each channel normalised over the batch
    and the positions, then a per-channel affine map.

    .. math:: y_{i,c} = \gamma_c\,\frac{x_{i,c} - \mu_c}{\sqrt{\sigma^2_c + \epsilon}} +
              \beta_c

    with :math:`i` running over the batch and the positions and :math:`\mu, \sigma^2` of
    :func:`batch_moments`. It is :func:`group_norm`'s computation with one channel per group
    and the statistics pooled over the batch, with the same hand-written gradient
    (derivations/11-ddpm.md, section 7); same numbers as flax's ``nn.BatchNorm`` in training
    mode, to float rounding.

    Args:
      x: ``[batch, ..., C]``.
      scale: ``[C]`` :math:`\gamma`.
      bias: ``[C]`` :math:`\beta`.
      eps: :math:`\epsilon > 0`.

    Returns:
      ``[batch, ..., C]``.

    References:
      Ioffe & Szegedy, *Batch Normalization: Accelerating Deep Network Training by Reducing
      Internal Covariate Shift*, 2015, https://arxiv.org/abs/1502.03167

    Derivation: derivations/11-ddpm.md (section 7)
    """
    x, scale, bias = _check_affine(x, scale, bias, eps)
    return _normalize(x, scale, bias, x.shape[-1], float(eps), True)


class BatchNorm(nn.Module):
    r""":func:`batch_norm` in training, the running statistics at evaluation: a drop-in for
    flax's ``nn.BatchNorm`` over the last axis, with its parameter (``scale``, ``bias``) and
    ``batch_stats`` (``mean``, ``var``) names, initial values and update
    (:math:`m \leftarrow \rho\, m + (1 - \rho)\, \mu`, likewise the variance, not at
    initialisation).

    Attributes:
      use_running_average: normalise with the running statistics (also a call argument).
      momentum: :math:`\rho`.
      epsilon: :math:`\epsilon`.
      use_scale: learn :math:`\gamma` (else 1).
      use_bias: learn :math:`\beta` (else 0).

    Derivation: derivations/11-ddpm.md (section 7)
    """

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = BATCH_NORM_EPS
    use_scale: bool = True
    use_bias: bool = True

    @nn.compact
    def __call__(
        self, x: Float[Array, "batch *spatial C"], use_running_average: bool | None = None
    ) -> Float[Array, "batch *spatial C"]:
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        c = jnp.shape(x)[-1]
        mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
        var = self.variable("batch_stats", "var", jnp.ones, (c,))
        scale = self.param("scale", nn.initializers.ones, (c,)) if self.use_scale else jnp.ones(c)
        bias = self.param("bias", nn.initializers.zeros, (c,)) if self.use_bias else jnp.zeros(c)
        if use_running_average:
            a = scale * jax.lax.rsqrt(var.value + self.epsilon)  # [C]
            return x * _per_example(a[None], x) + _per_example((bias - mean.value * a)[None], x)
        if not self.is_initializing():
            mu, sigma2 = jax.lax.stop_gradient(batch_moments(x))
            mean.value = self.momentum * mean.value + (1 - self.momentum) * mu
            var.value = self.momentum * var.value + (1 - self.momentum) * sigma2
        return batch_norm(x, scale, bias, self.epsilon)


def _check_maps(x) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"x must have shape [*batch, H, W, C], got {x.shape}")
    return x


def instance_norm(
    x: Float[Array, "*batch H W C"], eps: float = NORM_EPS
) -> Float[Array, "*batch H W C"]:
    r"""Instance normalisation: each example's channels to zero mean and unit variance.

    .. math:: \mathrm{IN}(x)_{hwc} = \frac{x_{hwc} - \mu_c(x)}{\sqrt{\sigma_c^2(x) + \epsilon}},
              \quad \mu_c = \frac{1}{HW}\sum_{hw} x_{hwc}, \quad
              \sigma_c^2 = \frac{1}{HW}\sum_{hw} (x_{hwc} - \mu_c)^2

    with :math:`x` = ``x`` (one example's maps) and :math:`\epsilon` = ``eps``. It is invariant to
    a per-channel affine change :math:`x_{hwc} \mapsto a_c x_{hwc} + b_c` with :math:`a_c > 0`
    (up to :math:`\epsilon`): the statistics it removes are exactly those.

    Args:
      x: ``[*batch, H, W, C]`` feature maps.
      eps: :math:`\epsilon \ge 0`.

    Returns:
      ``[*batch, H, W, C]``.

    References:
      Ulyanov et al., 2016, https://arxiv.org/abs/1607.08022

    Derivation: derivations/22-style-based-gans.md
    """
    x = _check_maps(x)
    mean = jnp.mean(x, axis=(-3, -2), keepdims=True)  # [*batch, 1, 1, C]
    var = jnp.mean((x - mean) ** 2, axis=(-3, -2), keepdims=True)  # [*batch, 1, 1, C]
    return (x - mean) * jax.lax.rsqrt(var + eps)


def adain(
    x: Float[Array, "*batch H W C"],
    scale: Float[Array, "*batch C"],
    bias: Float[Array, "*batch C"],
    eps: float = NORM_EPS,
) -> Float[Array, "*batch H W C"]:
    r"""Adaptive instance normalisation: the content's normalised maps with the style's
    per-channel statistics.

    .. math:: \mathrm{AdaIN}(x, y)_{hwc} = y_{s,c}\,\mathrm{IN}(x)_{hwc} + y_{b,c}

    with :math:`x` = ``x``, :math:`y_s` = ``scale`` and :math:`y_b` = ``bias``
    (:func:`instance_norm`). The output's per-channel mean is :math:`y_{b,c}` and its standard
    deviation :math:`|y_{s,c}|` (times :math:`\sigma_c/\sqrt{\sigma_c^2 + \epsilon}`). Style
    transfer takes :math:`y_s, y_b` from the style image's features (Huang & Belongie); StyleGAN
    computes them from :math:`w` by a learned affine map.

    Args:
      x: ``[*batch, H, W, C]`` feature maps.
      scale: ``[*batch, C]`` target standard deviations (the style's scale).
      bias: ``[*batch, C]`` target means.
      eps: :math:`\epsilon` of :func:`instance_norm`.

    Returns:
      ``[*batch, H, W, C]``.

    References:
      Huang & Belongie, 2017, https://arxiv.org/abs/1703.06868

    Derivation: derivations/22-style-based-gans.md
    """
    x = _check_maps(x)
    want = x.shape[:-3] + x.shape[-1:]
    for name, v in (("scale", scale), ("bias", bias)):
        if jnp.shape(v) != want:
            raise ValueError(f"{name} must have shape {want} ([*batch, C]), got {jnp.shape(v)}")
    scale = jnp.expand_dims(scale, (-3, -2))  # [*batch, 1, 1, C]
    bias = jnp.expand_dims(bias, (-3, -2))  # [*batch, 1, 1, C]
    return scale * instance_norm(x, eps) + bias


def pixel_norm(x: Float[Array, "*batch C"], eps: float = NORM_EPS) -> Float[Array, "*batch C"]:
    r"""Pixelwise feature normalisation: each feature vector to unit root-mean-square.

    .. math:: b_{c} = \frac{a_c}{\sqrt{\frac1C \sum_{j} a_j^2 + \epsilon}}

    with :math:`a` = ``x`` along its last axis (the channels of one pixel, or a latent vector).

    Args:
      x: ``[..., C]``.
      eps: :math:`\epsilon \ge 0`.

    Returns:
      ``[..., C]``.

    References:
      Karras et al., 2018, https://arxiv.org/abs/1710.10196 (section 4.2).

    Derivation: derivations/22-style-based-gans.md
    """
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have a feature axis [..., C], got {x.shape}")
    return x * jax.lax.rsqrt(jnp.mean(x**2, axis=-1, keepdims=True) + eps)
