r"""Normalizing flows: RealNVP with affine coupling layers, exact likelihood in bits per dimension.

A flow is an invertible map :math:`z = f(x)` from data to a latent with a simple base density
:math:`p_Z = N(0, I)`. The change-of-variables formula gives the exact log-likelihood

.. math:: \log p_X(x) = \log p_Z(f(x)) + \log\lvert\det J_f(x)\rvert ,

so a flow is trained by maximum likelihood and sampled by :math:`x = f^{-1}(z)` (:func:`sample`).
Its likelihood in bits per dimension is :func:`genjax.metrics.bits_per_dim` of data dequantised
by :func:`genjax.data.dequantize`.

**Contract (distrax).** Every bijector has ``forward_and_log_det(x) -> (y, log_det)`` and
``inverse_and_log_det(y) -> (x, log_det)``. ``log_det`` is :math:`\log\lvert\det J\rvert` of the
map that was applied and has the *batch* shape (the input's shape without its ``event_ndims``
trailing axes), so ``forward``'s log-det is minus ``inverse``'s at corresponding points.
:class:`Chain` applies its layers in order and adds their log-dets; its inverse runs the layers'
inverses in reverse order. "Forward" is the data-to-latent (normalising) direction throughout.

**Layout.** The maths is in pure functions (:func:`affine_forward`, :func:`coupling_forward`,
:func:`logit_forward`, :func:`squeeze`, :func:`checkerboard_mask`, ...) and the bijector modules
own parameters and call them (both live in ``genjax/_bijectors.py`` and are re-exported here);
conditioners (:class:`MLPConditioner`, :class:`ResNetConditioner`) are ordinary Flax modules
whose outputs never need inverting. :class:`RealNVP` assembles them: a stack of couplings for
vectors, the multi-scale architecture with squeezing and factored-out variables for images, an
optional logit pre-processing layer, and the Gaussian base.

References:
  Dinh et al., *Density estimation using Real NVP*, 2017, https://arxiv.org/abs/1605.08803

  Kingma & Dhariwal, *Glow: Generative Flow with Invertible 1x1 Convolutions*, 2018,
  https://arxiv.org/abs/1807.03039

  Papamakarios et al., *Normalizing Flows for Probabilistic Modeling and Inference*, 2021,
  https://arxiv.org/abs/1912.02762

Derivation: derivations/10-realnvp.md
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from genjax import _checks
from genjax._bijectors import (
    MASKS,
    ActNorm,
    AffineCoupling,
    Bijector,
    Chain,
    Conditioner,
    CouplingBlock,
    CouplingStack,
    FactorOut,
    Inverse,
    Logit,
    Squeeze,
    affine_forward,
    affine_inverse,
    channel_mask,
    checkerboard_mask,
    coupling_forward,
    coupling_inverse,
    logit_forward,
    logit_inverse,
    make_mask,
    squeeze,
    tanh_log_scale,
    unsqueeze,
)
from genjax.nn.layers import Conv, Dense

__all__ = [
    "LOG_2PI",
    "MASKS",
    "ActNorm",
    "AffineCoupling",
    "Bijector",
    "Chain",
    "Conditioner",
    "CouplingBlock",
    "CouplingStack",
    "FactorOut",
    "Inverse",
    "Logit",
    "MLPConditioner",
    "RealNVP",
    "ResNetConditioner",
    "Squeeze",
    "affine_forward",
    "affine_inverse",
    "channel_mask",
    "checkerboard_mask",
    "coupling_forward",
    "coupling_inverse",
    "logit_forward",
    "logit_inverse",
    "make_mask",
    "sample",
    "squeeze",
    "standard_normal_log_prob",
    "tanh_log_scale",
    "unsqueeze",
]

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- densities


def standard_normal_log_prob(z: Float[Array, "*shape"], event_ndims: int) -> Float[Array, "*batch"]:
    r"""The standard normal base density, summed over the event axes.

    .. math:: \log N(z; 0, I) = -\tfrac12 \lVert z\rVert^2 - \tfrac{D}{2}\log 2\pi

    Args:
      z: ``[*batch, *event]``.
      event_ndims: number of trailing event axes; :math:`D` is their size.

    Returns:
      ``[*batch]``.

    Derivation: derivations/10-realnvp.md
    """
    _checks.event_ndims(z, event_ndims, "z")
    return _checks.sum_event(-0.5 * z * z - 0.5 * LOG_2PI, event_ndims)


# ----------------------------------------------------------------------------- conditioners


class MLPConditioner(nn.Module):
    r"""Conditioner for vector couplings: ``depth`` hidden ReLU layers, then a zero-initialised
    linear layer to ``2 D`` outputs (shift and raw log-scale), so the coupling starts at the
    identity. ``depth=0`` is a single linear map (an affine flow).

    Attributes:
      features: hidden width.
      depth: number of hidden layers.

    Input ``[*batch, D]`` (the masked vector), output ``[*batch, 2 D]``.

    Derivation: derivations/10-realnvp.md
    """

    features: int = 64
    depth: int = 2

    @nn.compact
    def __call__(self, x: Float[Array, "*batch D"]) -> Float[Array, "*batch D2"]:
        h = x
        for _ in range(self.depth):
            h = nn.relu(Dense(self.features)(h))
        return Dense(2 * x.shape[-1], kernel_init=nn.initializers.zeros)(h)


class ResNetConditioner(nn.Module):
    r"""Conditioner for image couplings: a small convolutional ResNet.

    .. math:: h_0 = \mathrm{Conv}_{3\times3}(x), \quad
       h_{k} = h_{k-1} + \mathrm{Conv}_{3\times3}(\mathrm{ReLU}(\mathrm{Conv}_{3\times3}(
       \mathrm{ReLU}(h_{k-1})))), \quad \mathrm{out} = \mathrm{Conv}_{3\times3}(\mathrm{ReLU}(h_K))

    Each :math:`3\times3` convolution is a :class:`genjax.nn.layers.Conv` (same padding; LeCun
    normal initialisation over the ``9 C`` inputs, as ``nn.Conv``). The output convolution is
    zero-initialised and has ``2 C`` channels (shift, raw log-scale).

    Attributes:
      features: hidden channels.
      num_blocks: residual blocks :math:`K`.

    Note:
      RealNVP uses weight-normalised ResNets with batch norm; we use no normalisation inside the
      conditioner, which trains stably because an ActNorm precedes every coupling and the
      log-scale is tanh-bounded.

    Input ``[*batch, H, W, C]`` (the masked image), output ``[*batch, H, W, 2 C]``.

    Derivation: derivations/10-realnvp.md
    """

    features: int = 64
    num_blocks: int = 2

    @nn.compact
    def __call__(self, x: Float[Array, "*batch H W C"]) -> Float[Array, "*batch H W C2"]:
        if x.ndim < 4:
            raise ValueError(f"x must be [*batch, H, W, C] with a batch axis, got {x.shape}")
        conv = lambda h, n, **kw: Conv(n, 3, 1, 1, **kw)(h)  # [b, H, W, n]
        h = conv(x.reshape(-1, *x.shape[-3:]), self.features)  # [b, H, W, features]
        for _ in range(self.num_blocks):
            h = h + conv(nn.relu(conv(nn.relu(h), self.features)), self.features)
        out = conv(nn.relu(h), 2 * x.shape[-1], kernel_init=nn.initializers.zeros)
        return out.reshape(*x.shape[:-1], out.shape[-1])  # [*batch, H, W, 2 C]


# ----------------------------------------------------------------------------- RealNVP


class RealNVP(nn.Module):
    r"""RealNVP: a normalising flow of affine couplings with a standard normal base.

    .. math:: \log p(x) = \log N(f(x); 0, I) + \log\lvert\det J_f(x)\rvert

    *Vectors* (``event_shape = (D,)``): ``num_couplings`` couplings with alternating
    :func:`checkerboard_mask` parities and :class:`MLPConditioner` conditioners.

    *Images* (``event_shape = (H, W, C)``): the multi-scale architecture. Each scale but the
    last runs ``num_couplings`` checkerboard couplings, squeezes to ``(H/2, W/2, 4C)``, runs
    ``num_couplings`` channel couplings, factors out half the channels (:class:`FactorOut`) and
    hands the other half to the next scale; the last scale runs ``num_couplings + 1``
    checkerboard couplings. Unsqueezing at the end of each scale gives :math:`z` the shape of
    :math:`x`. Conditioners are :class:`ResNetConditioner`.

    Every coupling is preceded by an :class:`ActNorm` (if ``actnorm``); with ``logit_alpha`` set,
    a :class:`Logit` layer comes first, so :meth:`log_prob` is a density on the unit cube.

    Attributes:
      event_shape: shape of one example, ``(D,)`` or ``(H, W, C)``.
      num_couplings: couplings per stage (see above).
      features: conditioner width.
      depth: hidden layers (vectors) or residual blocks (images) per conditioner.
      num_scales: number of scales (images); ``H`` and ``W`` must survive
        ``num_scales - 1`` squeezes and stay even for the checkerboard.
      logit_alpha: :math:`\alpha` of :func:`logit_forward`, or ``None`` for no logit layer.
      actnorm: put an :class:`ActNorm` before every coupling.

    Methods (call through ``model.apply(params, ..., method=...)``):
      ``forward_and_log_det(x)``: :math:`(z, \log|\det J_f(x)|)`, data to latent.
      ``inverse_and_log_det(z)``: :math:`(x, \log|\det J_{f^{-1}}(z)|)`.
      ``forward(x)``, ``inverse(z)``: the same without log-dets.
      ``log_prob(x)`` (also ``__call__``): ``[batch]`` log-density in nats.

    Samples come from :func:`sample`.

    References:
      Dinh et al., *Density estimation using Real NVP*, 2017, https://arxiv.org/abs/1605.08803

    Derivation: derivations/10-realnvp.md
    """

    event_shape: tuple[int, ...]
    num_couplings: int = 4
    features: int = 64
    depth: int = 2
    num_scales: int = 2
    logit_alpha: float | None = None
    actnorm: bool = True

    def setup(self):
        shape = tuple(int(s) for s in self.event_shape)
        if len(shape) not in (1, 3) or any(s <= 0 for s in shape):
            raise ValueError(f"event_shape must be (D,) or (H, W, C), got {self.event_shape}")
        if self.num_couplings < 1 or self.num_scales < 1:
            raise ValueError("num_couplings and num_scales must be >= 1")
        layers = []
        if self.logit_alpha is not None:
            layers.append(Logit(self.logit_alpha, len(shape)))
        if len(shape) == 1:
            layers += self._stage("checkerboard", self.num_couplings, 1)
        else:
            checkerboard_mask(shape)  # raises on odd sizes, before any layer is built
            step = 2**self.num_scales  # num_scales - 1 squeezes, then still even
            if shape[0] % step or shape[1] % step:
                raise ValueError(
                    f"cannot squeeze spatial size {shape[0]}x{shape[1]} {self.num_scales - 1} "
                    f"time(s) and keep it even for the checkerboard: num_scales="
                    f"{self.num_scales} needs H and W divisible by {step}"
                )
            layers += self._scale(shape, self.num_scales)
        self.bijector = Chain(layers)

    def _stage(self, mask: str, count: int, event_ndims: int) -> list[Bijector]:
        if event_ndims == 1:
            cond = MLPConditioner(self.features, self.depth)
        else:
            cond = ResNetConditioner(self.features, self.depth)
        block = CouplingBlock(cond, mask, event_ndims, self.actnorm)
        return [CouplingStack(block, count, event_ndims)]

    def _scale(self, shape: tuple[int, int, int], scales_left: int) -> list[Bijector]:
        h, w, c = shape
        if scales_left == 1:
            return self._stage("checkerboard", self.num_couplings + 1, 3)
        inner = Chain(self._scale((h // 2, w // 2, 2 * c), scales_left - 1))
        return [
            *self._stage("checkerboard", self.num_couplings, 3),
            Squeeze(),
            *self._stage("channel", self.num_couplings, 3),
            FactorOut(inner),
            Inverse(Squeeze()),
        ]

    def _check(self, x, name: str):
        if tuple(jnp.shape(x)[1:]) != tuple(self.event_shape) or jnp.ndim(x) < 2:
            raise ValueError(
                f"{name} must be [batch, {', '.join(map(str, self.event_shape))}], got shape "
                f"{jnp.shape(x)}"
            )

    def forward_and_log_det(self, x):
        self._check(x, "x")
        return self.bijector(x, inverse=False)

    def inverse_and_log_det(self, z):
        self._check(z, "z")
        return self.bijector(z, inverse=True)

    def forward(self, x):
        return self.forward_and_log_det(x)[0]

    def inverse(self, z):
        return self.inverse_and_log_det(z)[0]

    def log_prob(self, x):
        z, log_det = self.forward_and_log_det(x)
        return standard_normal_log_prob(z, len(self.event_shape)) + log_det

    def __call__(self, x):
        return self.log_prob(x)


def sample(
    key: jax.Array,
    model: RealNVP,
    params,
    n: int,
    *,
    temperature: float = 1.0,
) -> jax.Array:
    r"""Draw from the flow: :math:`x = f^{-1}(T z)`, :math:`z \sim N(0, I)`.

    With :math:`T` = ``temperature`` the latent is drawn from :math:`N(0, T^2 I)`; :math:`T < 1`
    trades diversity for typical-looking samples (Kingma & Dhariwal 2018).

    Args:
      key: PRNG key for :math:`z`.
      model: the :class:`RealNVP`.
      params: its parameters.
      n: number of samples.
      temperature: :math:`T`, the standard deviation of the latent.

    Returns:
      ``[n, *model.event_shape]``.

    References:
      Dinh et al., *Density estimation using Real NVP*, 2017, https://arxiv.org/abs/1605.08803

    Derivation: derivations/10-realnvp.md
    """
    _checks.positive_int("n", n)
    z = temperature * jax.random.normal(key, (n, *model.event_shape))  # [n, *event]
    return model.apply(params, z, method="inverse")
