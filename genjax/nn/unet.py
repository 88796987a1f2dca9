r"""The diffusion U-Net: time embedding, residual blocks with group norm, skips, attention.

The network maps a noisy image and its time step (and optionally a label) to a prediction of
the same shape (ε, :math:`x_0` or v; see :mod:`genjax.diffusion`). Its parts:

* :class:`TimeEmbedding`: the sinusoidal encoding of the integer step
  (:func:`genjax.nn.positional.sinusoidal_encoding`) followed by a two-layer MLP;
* :class:`ResBlock`: GroupNorm → SiLU → 3x3 conv, plus a projection of the time embedding,
  → GroupNorm → SiLU → dropout → 3x3 conv (zero-initialised), with a 1x1-conv skip when the
  width changes, so every block starts as the identity;
* :class:`AttentionBlock`: GroupNorm, then multi-head self-attention over the :math:`H W`
  positions (:func:`genjax.nn.attention.scaled_dot_product_attention`), residual;
* :class:`UNet`: a stride-2 conv down path and a nearest-upsample + conv up path; each up block
  concatenates the matching down activation (the skip connection); the middle, at the lowest
  resolution, is ResBlock → AttentionBlock → ResBlock.

:func:`unet_for` picks the widths and depths for 8x8 digits, 28x28 MNIST and 32x32 CIFAR.

References:
  Ronneberger et al., *U-Net: Convolutional Networks for Biomedical Image Segmentation*, 2015,
  https://arxiv.org/abs/1505.04597

  Ho et al., *Denoising Diffusion Probabilistic Models*, 2020 (appendix B, the architecture),
  https://arxiv.org/abs/2006.11239

Derivation: derivations/11-ddpm.md (the network's place in the loss)
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.nn.attention import scaled_dot_product_attention
from genjax.nn.positional import sinusoidal_encoding


class TimeEmbedding(nn.Module):
    r"""Embed integer diffusion steps: sinusoidal encoding, then Dense → SiLU → Dense.

    .. math:: e(t) = W_2\,\mathrm{SiLU}(W_1\,\mathrm{PE}(t) + b_1) + b_2

    where :math:`\mathrm{PE}(t)` is row ``t`` of
    ``sinusoidal_encoding(num_steps, features)`` (the Transformer's position encoding, with the
    step as the position).

    Attributes:
      num_steps: number of steps :math:`T` (rows of the encoding table).
      features: width of the encoding and of the output.

    Returns (``__call__(t)``):
      ``[batch, features]`` for ``t`` ``[batch]`` int.

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762
    """

    num_steps: int
    features: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        if t.ndim != 1 or not jnp.issubdtype(t.dtype, jnp.integer):
            raise ValueError(f"t must be [batch] integer steps, got {t.shape} {t.dtype}")
        table = sinusoidal_encoding(self.num_steps, self.features)  # [T, features]
        h = nn.Dense(self.features)(table[t])  # [batch, features]
        return nn.Dense(self.features)(nn.silu(h))


def _groups(num_groups: int, channels: int) -> int:
    """The largest group count dividing ``channels`` that is at most ``num_groups``."""
    return math.gcd(num_groups, channels)


class ResBlock(nn.Module):
    r"""A residual block conditioned on an embedding (time, and label if any).

    .. math:: h = \mathrm{Conv}\big(\mathrm{Drop}(\mathrm{SiLU}(\mathrm{GN}(
       \mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(x))) + W e))))\big),\qquad y = \mathrm{skip}(x) + h

    The last conv is zero-initialised, so at initialisation the block is ``skip(x)``.

    Attributes:
      features: output channels.
      num_groups: GroupNorm groups (reduced to a divisor of the channel count).
      dropout: dropout rate (uses the ``"dropout"`` RNG stream when ``train``).

    Returns (``__call__(x, emb, train=False)``):
      ``[b, H, W, features]`` for ``x`` ``[b, H, W, C]`` and ``emb`` ``[b, E]``.
    """

    features: int
    num_groups: int = 8
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        h = nn.silu(nn.GroupNorm(_groups(self.num_groups, x.shape[-1]))(x))
        h = nn.Conv(self.features, (3, 3))(h)  # [b, H, W, features]
        h = h + nn.Dense(self.features)(nn.silu(emb))[:, None, None, :]  # [b, H, W, features]
        h = nn.silu(nn.GroupNorm(_groups(self.num_groups, self.features))(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros)(h)
        skip = x if x.shape[-1] == self.features else nn.Conv(self.features, (1, 1))(x)
        return skip + h


class AttentionBlock(nn.Module):
    r"""Multi-head self-attention over the spatial positions of a feature map, residual.

    .. math:: y = x + W_o\,\mathrm{Attention}(W_q\hat x, W_k\hat x, W_v\hat x),\qquad
       \hat x = \mathrm{GN}(x)\ \text{flattened to}\ [b, HW, C]

    Attributes:
      num_heads: attention heads (must divide the channel count).
      num_groups: GroupNorm groups.

    Returns (``__call__(x)``):
      ``[b, H, W, C]``.
    """

    num_heads: int = 4
    num_groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"channels ({c}) must be divisible by num_heads ({self.num_heads})")
        h = nn.GroupNorm(_groups(self.num_groups, c))(x)
        h = h.reshape(b, height * width, c)  # [b, HW, C]
        qkv = nn.DenseGeneral((3, self.num_heads, c // self.num_heads))(h)  # [b, HW, 3, n, d]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [b, HW, heads, head_dim]
        out = scaled_dot_product_attention(q, k, v)  # [b, HW, heads, head_dim]
        out = nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros)(out)
        return x + out.reshape(b, height, width, c)  # [b, H, W, C]


class UNet(nn.Module):
    r"""A U-Net denoiser ``(x_t [b, H, W, C], t [b], y [b] | None) -> [b, H, W, C]``.

    Level :math:`\ell` (of ``len(channel_mults)``) works at resolution :math:`H / 2^\ell` with
    ``base_features * channel_mults[l]`` channels and ``num_res_blocks`` residual blocks; the
    lowest level adds self-attention. A conditional model (``num_classes`` set) embeds
    ``num_classes + 1`` labels, the last being the null label of classifier-free guidance,
    and adds the label embedding to the time embedding.

    Attributes:
      num_steps: :math:`T` of the diffusion schedule.
      base_features: channels of the first level.
      channel_mults: channel multiplier per level.
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      num_heads: heads of the middle attention.
      num_groups: GroupNorm groups.
      dropout: dropout rate inside residual blocks.
      num_classes: number of labels, or ``None`` for an unconditional model.

    Raises:
      ValueError: ``x`` is not NHWC with ``H`` and ``W`` divisible by
        ``2 ** (len(channel_mults) - 1)``; ``t`` is not ``[b]``; ``y`` missing on a conditional
        model.

    Note:
      Ho et al. attend at 16x16 as well as in the middle; for images of at most 32x32 we attend
      only at the lowest resolution, which keeps a CPU step cheap.
    """

    num_steps: int
    base_features: int = 32
    channel_mults: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    num_heads: int = 4
    num_groups: int = 8
    dropout: float = 0.0
    num_classes: int | None = None

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        factor = 2 ** (len(self.channel_mults) - 1)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"x must be NHWC [b, H, W, C] with H and W divisible by {factor} "
                f"(channel_mults={tuple(self.channel_mults)}), got shape {x.shape}"
            )
        if jnp.shape(t) != (x.shape[0],):
            raise ValueError(f"t must have shape [batch] = ({x.shape[0]},), got {jnp.shape(t)}")
        emb_features = 4 * self.base_features
        emb = TimeEmbedding(self.num_steps, emb_features)(t)  # [b, E]
        if self.num_classes is not None:
            if y is None:
                raise ValueError("a conditional UNet (num_classes set) needs labels y [batch]")
            emb = emb + nn.Embed(self.num_classes + 1, emb_features)(y)  # [b, E]

        def block(features, h):
            return ResBlock(features, self.num_groups, self.dropout)(h, emb, train)

        h = nn.Conv(self.base_features, (3, 3))(x)  # [b, H, W, base]
        skips = [h]
        last = len(self.channel_mults) - 1
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = block(self.base_features * mult, h)
                skips.append(h)
            if level != last:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)  # [b, H/2, W/2, C]
                skips.append(h)

        h = block(h.shape[-1], h)
        h = AttentionBlock(self.num_heads, self.num_groups)(h)
        h = block(h.shape[-1], h)

        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)  # [b, H', W', C + C_skip]
                h = block(self.base_features * mult, h)
            if level != 0:
                b, height, width, c = h.shape
                h = jax.image.resize(h, (b, 2 * height, 2 * width, c), "nearest")
                # h: [b, 2H', 2W', C]
                h = nn.Conv(c, (3, 3))(h)
        h = nn.silu(nn.GroupNorm(_groups(self.num_groups, h.shape[-1]))(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)


def unet_for(
    image_shape: Sequence[int], num_steps: int, num_classes: int | None = None, **overrides
) -> UNet:
    r"""A :class:`UNet` sized for an image shape ``(H, W, C)``.

    ============  ==============  ================  ====================
    image         base_features   channel_mults     lowest resolution
    ============  ==============  ================  ====================
    8x8 (digits)  32              (1, 2)            4x4
    28x28         32              (1, 2, 2)         7x7
    32x32         64              (1, 2, 2, 2)      4x4
    ============  ==============  ================  ====================

    Other sizes get ``(1, 2)`` halvings while both sides stay even (at most four levels).

    Args:
      image_shape: ``(H, W, C)``.
      num_steps: :math:`T` of the schedule.
      num_classes: label count for a conditional model, else ``None``.
      **overrides: any other :class:`UNet` attribute.

    Returns:
      The (uninitialised) :class:`UNet`.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
    height, width, _ = image_shape
    presets = {8: (32, (1, 2)), 28: (32, (1, 2, 2)), 32: (64, (1, 2, 2, 2))}
    if height == width and height in presets:
        base, mults = presets[height]
    else:
        levels = 1
        while levels < 4 and height % 2**levels == 0 and width % 2**levels == 0:
            levels += 1
        base, mults = 32, (1,) + (2,) * (levels - 1)
    settings = dict(base_features=base, channel_mults=mults, num_classes=num_classes)
    settings.update(overrides)
    return UNet(num_steps=num_steps, **settings)
