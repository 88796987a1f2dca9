r"""The U-Net: time embedding, residual blocks with group norm, skips, attention.

The diffusion network maps a noisy image and its time step (and optionally a label) to a
prediction of the same shape (ε, :math:`x_0` or v; see :mod:`genjax.diffusion`). Without time
conditioning (``num_steps=None``), with ``out_features`` output channels and without attention,
the same network is the segmentation and image-translation U-Net of
:mod:`genjax.segmentation` and :mod:`genjax.translation`. Its parts:

* :class:`genjax.nn.layers.TimeEmbedding`: the sinusoidal encoding of the integer step
  followed by a two-layer MLP;
* :class:`genjax.nn.layers.ResBlock`: GroupNorm → SiLU → 3x3 conv, plus a projection of the
  time embedding, → GroupNorm → SiLU → dropout → 3x3 conv (zero-initialised), with a 1x1 skip
  when the width changes, so every block starts as the identity; convolutions are
  :class:`genjax.nn.layers.Conv` (fast to differentiate inside a scan on CPU);
* :class:`AttentionBlock`: GroupNorm, then multi-head self-attention over the :math:`H W`
  positions (:func:`genjax.nn.attention.scaled_dot_product_attention`), residual;
* :class:`CrossAttentionBlock`: GroupNorm, then multi-head attention whose queries come from
  the :math:`H W` positions and whose keys and values come from a context sequence (a prompt's
  token vectors), padded context tokens masked, residual;
* :class:`UNet`: a down path of stride-2 3x3 convs and an up path of nearest upsampling and a
  3x3 conv; each up block concatenates the matching down activation (the skip connection); the
  middle, at the lowest resolution, is ResBlock → AttentionBlock (→ CrossAttentionBlock with
  ``cross_attention``) → ResBlock.

:func:`unet_for` picks the widths and depths for 8x8 digits, 28x28 MNIST and 32x32 CIFAR.

References:
  Ronneberger et al., *U-Net: Convolutional Networks for Biomedical Image Segmentation*, 2015,
  https://arxiv.org/abs/1505.04597

  Ho et al., *Denoising Diffusion Probabilistic Models*, 2020 (appendix B, the architecture),
  https://arxiv.org/abs/2006.11239

  Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion Models*, 2022
  (cross-attention conditioning), https://arxiv.org/abs/2112.10752

  Podell et al., *SDXL: Improving Latent Diffusion Models for High-Resolution Image
  Synthesis*, 2023 (pooled text embedding), https://arxiv.org/abs/2307.01952

Derivation: derivations/11-ddpm.md (the network's place in the loss),
derivations/19-dense-prediction.md (skips and receptive field),
derivations/24-latent-diffusion.md (cross-attention)
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.nn.attention import padding_mask, scaled_dot_product_attention
from genjax.nn.layers import Conv, Dense, ResBlock, TimeEmbedding, group_count
from genjax.nn.norm import GroupNorm

__all__ = ["AttentionBlock", "CrossAttentionBlock", "UNet", "unet_for"]


class AttentionBlock(nn.Module):
    r"""Multi-head self-attention over the spatial positions of a feature map, residual.

    .. math:: y = x + W_o\,\mathrm{Attention}(W_q\hat x, W_k\hat x, W_v\hat x),\qquad
       \hat x = \mathrm{GN}(x)\ \text{flattened to}\ [b, HW, C]

    Attributes:
      num_heads: attention heads (must divide the channel count).
      num_groups: GroupNorm groups.

    Returns (``__call__(x)``):
      ``[b, H, W, C]``.

    References:
      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762

      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020 (appendix B: self-attention
      inside the U-Net), https://arxiv.org/abs/2006.11239

    Derivation: derivations/03-attention.md
    """

    num_heads: int = 4  # must divide the channel count
    num_groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"channels ({c}) must be divisible by num_heads ({self.num_heads})")
        h = GroupNorm(group_count(self.num_groups, c))(x)
        h = h.reshape(b, height * width, c)  # [b, HW, C]
        qkv = nn.DenseGeneral((3, self.num_heads, c // self.num_heads))(h)  # [b, HW, 3, n, d]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [b, HW, heads, head_dim]
        out = scaled_dot_product_attention(q, k, v)  # [b, HW, heads, head_dim]
        out = nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros)(out)
        return x + out.reshape(b, height, width, c)  # [b, H, W, C]


class CrossAttentionBlock(nn.Module):
    r"""Multi-head cross-attention from the positions of a feature map to a context sequence,
    residual: the text conditioning of latent diffusion.

    .. math:: y = x + W_o\,\mathrm{Attention}(W_q\hat x, W_k c, W_v c),\qquad
       \hat x = \mathrm{GN}(x)\ \text{flattened to}\ [b, HW, C]

    with :math:`c` = ``context`` (``[b, L, D]``, e.g. a text encoder's token vectors) and the
    padding mask :math:`M_{bj} = [\,j < \ell_b\,]` of ``context_lengths``
    (:func:`genjax.nn.attention.padding_mask`), so that padded context tokens get zero weight and
    their values do not matter. :math:`W_q: C \to n \times C/n`, :math:`W_k, W_v: D \to n
    \times C/n`; :math:`W_o` is zero-initialised, so the block starts as the identity.

    Attributes:
      num_heads: attention heads (must divide the channel count :math:`C`).
      num_groups: GroupNorm groups.

    Returns (``__call__(x, context, context_lengths=None)``):
      ``[b, H, W, C]`` for ``x [b, H, W, C]``, ``context [b, L, D]`` and ``context_lengths
      [b]`` integers in ``[1, L]`` (``None``: every context token is real).

    References:
      Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion Models*, 2022
      (section 3.3), https://arxiv.org/abs/2112.10752

      Vaswani et al., *Attention Is All You Need*, 2017, https://arxiv.org/abs/1706.03762

    Derivation: derivations/24-latent-diffusion.md
    """

    num_heads: int = 4  # must divide the channel count
    num_groups: int = 8

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array, context_lengths: jax.Array | None = None
    ) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC [b, H, W, C], got shape {x.shape}")
        b, height, width, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"channels ({c}) must be divisible by num_heads ({self.num_heads})")
        context = jnp.asarray(context)
        if context.ndim != 3 or context.shape[0] != b:
            raise ValueError(
                f"context must have shape [batch, length, features] with batch {b}, "
                f"got {context.shape}"
            )
        mask = None
        if context_lengths is not None:
            if jnp.shape(context_lengths) != (b,):
                raise ValueError(
                    f"context_lengths must have shape [batch] = ({b},), "
                    f"got {jnp.shape(context_lengths)}"
                )
            mask = padding_mask(context_lengths, context.shape[1])  # [b, 1, 1, L]
        heads = (self.num_heads, c // self.num_heads)
        h = GroupNorm(group_count(self.num_groups, c))(x)
        h = h.reshape(b, height * width, c)  # [b, HW, C]
        q = nn.DenseGeneral(heads, name="query")(h)  # [b, HW, heads, head_dim]
        k = nn.DenseGeneral(heads, name="key")(context)  # [b, L, heads, head_dim]
        v = nn.DenseGeneral(heads, name="value")(context)  # [b, L, heads, head_dim]
        out = scaled_dot_product_attention(q, k, v, mask=mask)  # [b, HW, heads, head_dim]
        out = nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros, name="out")(
            out
        )  # [b, HW, C]
        return x + out.reshape(b, height, width, c)  # [b, H, W, C]


class UNet(nn.Module):
    r"""A U-Net ``(x [b, H, W, C], t [b] | None, y [b] | None) -> [b, H, W, out]``.

    Level :math:`\ell` (of ``len(channel_mults)``) works at resolution :math:`H / 2^\ell` with
    ``base_features * channel_mults[l]`` channels and ``num_res_blocks`` residual blocks; the
    lowest level adds self-attention. A conditional model (``num_classes`` set) embeds
    ``num_classes + 1`` labels, the last being the null label of classifier-free guidance,
    and adds the label embedding to the time embedding. Without time conditioning
    (``num_steps=None``, an unconditional model) the embedding is the constant 0, so each
    residual block's embedding projection reduces to a learned per-channel bias. With
    ``cross_attention`` the middle also attends to a ``context`` sequence
    (:class:`CrossAttentionBlock`, after the self-attention): the text-conditioned denoiser of
    latent diffusion. With ``pooled_context`` as well, a projection of the mean of the context's
    real tokens is added to the time embedding, so that every residual block sees the prompt
    (Podell et al.'s SDXL adds a pooled text embedding in the same way).

    Attributes:
      num_steps: :math:`T` of the diffusion schedule, or ``None`` for a network of the image
        alone (segmentation, translation); ``t`` is then ``None``.
      base_features: channels of the first level.
      channel_mults: channel multiplier per level.
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      num_heads: heads of the middle attention.
      num_groups: GroupNorm groups.
      dropout: dropout rate inside residual blocks.
      num_classes: number of labels, or ``None`` for an unconditional model.
      out_features: output channels (``None``: as many as the input's).
      attention: self-attention in the middle (it makes the receptive field global).
      cross_attention: cross-attention to ``context`` in the middle; ``context`` is then
        required, and refused otherwise.
      pooled_context: also add a projection of the mean of the context's real tokens to the
        embedding (with ``cross_attention``; ``context_lengths`` is then required).

    Returns (``__call__(x, t=None, y=None, train=False, context=None, context_lengths=None)``):
      ``[b, H, W, out]``, the prediction for ``x [b, H, W, C]`` (``H`` and ``W`` divisible by
      ``2 ** (len(channel_mults) - 1)``) at steps ``t [b]`` with labels ``y [b]``, attending to
      ``context [b, L, D]`` whose first ``context_lengths [b]`` tokens are real.

    Note:
      Ho et al. attend at 16x16 as well as in the middle; for images of at most 32x32 we attend
      only at the lowest resolution, which keeps a CPU step cheap.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020 (appendix B),
      https://arxiv.org/abs/2006.11239

      Ronneberger et al., *U-Net*, 2015, https://arxiv.org/abs/1505.04597

    Derivation: derivations/11-ddpm.md, derivations/19-dense-prediction.md
    """

    num_steps: int | None
    base_features: int = 32
    channel_mults: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    num_heads: int = 4
    num_groups: int = 8
    dropout: float = 0.0
    num_classes: int | None = None
    out_features: int | None = None
    attention: bool = True
    cross_attention: bool = False
    pooled_context: bool = False

    def paths(self) -> list[list[tuple]]:
        r"""Every input-to-output path through the skips, as the layer specs of
        :func:`genjax.segmentation.input_interval`: ``("conv", k, s, p)`` for the 3x3 convs
        (a residual block contributes two; its own identity or 1x1 skip is a sub-path with a
        nested field) and the stride-2 convs, ``("up", 2)`` for nearest upsampling. Without
        attention only (attention reads every position).

        Derivation: derivations/19-dense-prediction.md
        """
        if self.attention:
            raise ValueError("with attention every output reads the whole image")
        conv, down, last = ("conv", 3, 1, 1), ("conv", 3, 2, 1), len(self.channel_mults) - 1
        h = [[conv]]  # the paths reaching the current activation
        skips = [h]
        for level in range(last + 1):
            for _ in range(self.num_res_blocks):
                h = [[*p, conv, conv] for p in h]
                skips.append(h)
            if level != last:
                h = [[*p, down] for p in h]
                skips.append(h)
        h = [[*p, *[conv] * 4] for p in h]  # the middle's two blocks
        for level in reversed(range(last + 1)):
            for _ in range(self.num_res_blocks + 1):
                h = [[*p, conv, conv] for p in h + skips.pop()]  # concatenation, then a block
            if level != 0:
                h = [[*p, ("up", 2), conv] for p in h]
        return [[*p, conv] for p in h]

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array | None = None,
        y: jax.Array | None = None,
        train: bool = False,
        context: jax.Array | None = None,
        context_lengths: jax.Array | None = None,
    ) -> jax.Array:
        if self.cross_attention and context is None:
            raise ValueError("a UNet with cross_attention needs context [batch, length, features]")
        if not self.cross_attention and (context is not None or context_lengths is not None):
            raise ValueError("context is only read by a UNet with cross_attention=True")
        factor = 2 ** (len(self.channel_mults) - 1)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"x must be NHWC [b, H, W, C] with H and W divisible by {factor} "
                f"(channel_mults={tuple(self.channel_mults)}), got shape {x.shape}"
            )
        emb_features = 4 * self.base_features
        if self.num_steps is None:
            if t is not None:
                raise ValueError("a UNet without time conditioning (num_steps=None) takes t=None")
            emb = jnp.zeros((x.shape[0], emb_features), x.dtype)  # [b, E], constant
        else:
            if jnp.shape(t) != (x.shape[0],):
                raise ValueError(f"t must have shape [batch] = ({x.shape[0]},), got {jnp.shape(t)}")
            emb = TimeEmbedding(self.num_steps, emb_features)(t)  # [b, E]
        if self.pooled_context:
            if not self.cross_attention or context_lengths is None:
                raise ValueError("pooled_context needs cross_attention and context_lengths [batch]")
            real = padding_mask(context_lengths, context.shape[1])[:, 0, 0, :, None]  # [b, L, 1]
            count = jnp.maximum(jnp.sum(real, axis=1), 1).astype(context.dtype)  # [b, 1]
            pooled = jnp.sum(jnp.where(real, context, 0.0), axis=1) / count  # [b, D]
            emb = emb + Dense(emb_features, name="pooled_context")(pooled)  # [b, E]
        if self.num_classes is not None:
            if y is None:
                raise ValueError("a conditional UNet (num_classes set) needs labels y [batch]")
            emb = emb + nn.Embed(self.num_classes + 1, emb_features)(y)  # [b, E]

        def block(features, h):
            return ResBlock(features, self.num_groups, self.dropout)(h, emb, train)

        h = Conv(self.base_features)(x)  # [b, H, W, base]
        skips = [h]
        last = len(self.channel_mults) - 1
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = block(self.base_features * mult, h)
                skips.append(h)
            if level != last:
                h = Conv(h.shape[-1], stride=2)(h)  # [b, H/2, W/2, C]
                skips.append(h)

        h = block(h.shape[-1], h)
        if self.attention:
            h = AttentionBlock(self.num_heads, self.num_groups)(h)
        if self.cross_attention:
            h = CrossAttentionBlock(self.num_heads, self.num_groups)(h, context, context_lengths)
        h = block(h.shape[-1], h)

        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)  # [b, H', W', C + C_skip]
                h = block(self.base_features * mult, h)
            if level != 0:
                b, height, width, c = h.shape
                h = jax.image.resize(h, (b, 2 * height, 2 * width, c), "nearest")
                # h: [b, 2H', 2W', C]
                h = Conv(c)(h)
        h = nn.silu(GroupNorm(group_count(self.num_groups, h.shape[-1]))(h))
        out = self.out_features or x.shape[-1]
        return Conv(out, kernel_init=nn.initializers.zeros)(h)


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

    Derivation: derivations/11-ddpm.md
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
