r"""Feature normalisations as pure functions: instance norm, adaptive instance norm, pixel norm.

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

Derivation: derivations/22-style-based-gans.md
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["NORM_EPS", "adain", "instance_norm", "pixel_norm"]

NORM_EPS = 1e-8  #: added to the variance (mean square) under the square roots of this module


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
