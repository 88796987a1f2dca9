r"""Image to image: PatchGAN, pix2pix, CycleGAN and the context encoder.

* :class:`PatchGAN`: a conditional discriminator of overlapping patches, ``[b, H, W, C] ->
  [b, h, w]`` scores, one per patch; its receptive field (``paths()``,
  :func:`genjax.segmentation.receptive_field`) is the patch size.
* pix2pix (paired): a U-Net generator (:func:`translation_unet`, the network of
  :mod:`genjax.nn.unet` without time conditioning) and :func:`pix2pix_losses`, the conditional
  GAN loss plus :math:`\lambda` L1; ``adversarial_weight=0`` is the L1-only ablation and
  ``l1_weight=0`` the cGAN-only one.
* CycleGAN (unpaired): :func:`cycle_loss` and :func:`identity_loss`, with the least-squares GAN
  losses of :mod:`genjax.gan`, in :func:`cyclegan_losses`; ``cycle_weight=0`` is the no-cycle
  ablation.
* Context encoder (inpainting): :func:`masked_input` and :func:`context_encoder_losses`, the
  reconstruction loss on the hole alone (L2) or jointly with an adversarial term.

Every loss returns ``(generator_loss, discriminator_loss, metrics)`` from pure functions of the
networks' outputs, so the recipes' alternating updates only differentiate them.

References:
  Isola et al., *Image-to-Image Translation with Conditional Adversarial Networks*, 2017,
  https://arxiv.org/abs/1611.07004

  Zhu et al., *Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
  Networks*, 2017, https://arxiv.org/abs/1703.10593

  Pathak et al., *Context Encoders: Feature Learning by Inpainting*, 2016,
  https://arxiv.org/abs/1604.07379

Derivation: derivations/20-pix2pix.md, derivations/21-cyclegan.md
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float

from genjax import gan
from genjax.nn.layers import Conv
from genjax.nn.unet import UNet

__all__ = [
    "PatchGAN",
    "context_encoder_losses",
    "cycle_loss",
    "cyclegan_losses",
    "identity_loss",
    "masked_input",
    "patch_scores",
    "pix2pix_losses",
    "translation_unet",
]


class PatchGAN(nn.Module):
    r"""A patch discriminator: ``(x [b, H, W, C], condition [b, H, W, C'] | None) -> [b, h, w]``.

    The condition (pix2pix: the input image) is concatenated to ``x`` on the channel axis. Then
    per entry of ``features`` a 4x4 conv with stride 2 and padding 1 and a leaky ReLU (slope
    0.2), and a final 3x3 conv to one score per position. Each score sees one
    :math:`r \times r` patch of the input, :math:`r` = ``receptive_field(paths()[0])[0]``
    (18 with the default two stride-2 layers), so :math:`D` models the image as a field of
    patches judged independently: a Markov random field assumption beyond the patch size.

    Attributes:
      features: channels of the stride-2 layers (``len(features)`` halvings).

    References:
      Isola et al., 2017 (section 3.2.2), https://arxiv.org/abs/1611.07004

    Derivation: derivations/20-pix2pix.md
    """

    features: Sequence[int] = (32, 64)

    def paths(self) -> list[list[tuple]]:
        """Its one input-to-output path as layer specs (:func:`genjax.segmentation.input_interval`).

        Derivation: derivations/20-pix2pix.md
        """
        return [[("conv", 4, 2, 1)] * len(self.features) + [("conv", 3, 1, 1)]]

    @nn.compact
    def __call__(
        self, x: Float[Array, "b H W C"], condition: Float[Array, "b H W D"] | None = None
    ) -> Float[Array, "b h w"]:
        factor = 2 ** len(self.features)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"x must be [b, H, W, C] with H, W divisible by {factor}, got {x.shape}"
            )
        h = x if condition is None else jnp.concatenate([x, condition], axis=-1)
        for width in self.features:
            h = nn.leaky_relu(Conv(width, kernel_size=4, stride=2, padding=1)(h), 0.2)
        return Conv(1)(h)[..., 0]  # [b, H / 2^L, W / 2^L]


def patch_scores(scores: Float[Array, "b h w"]) -> Float[Array, " n"]:
    """A patch discriminator's scores ``[b, h, w]`` as the ``[b h w]`` batch that the losses of
    :mod:`genjax.gan` take: each patch is one judged example.

    Derivation: derivations/20-pix2pix.md
    """
    return scores.reshape(-1)  # [b h w]


def translation_unet(
    out_features: int, widths: Sequence[int] = (32, 64), num_groups: int = 8
) -> UNet:
    r"""The generator of pix2pix, CycleGAN and the context encoder: the U-Net of
    :mod:`genjax.nn.unet` without time conditioning or attention; the recipes map its output
    through a sigmoid to pixels in [0, 1].

    Derivation: derivations/20-pix2pix.md
    """
    base = widths[0]
    return UNet(
        num_steps=None,
        base_features=base,
        channel_mults=tuple(w // base for w in widths),
        num_groups=num_groups,
        out_features=out_features,
        attention=False,
    )


def _l1(a: Array, b: Array) -> Array:
    return jnp.mean(jnp.abs(a - b))


def pix2pix_losses(
    real_scores: Float[Array, "b h w"],
    fake_scores_d: Float[Array, "b h w"],
    fake_scores_g: Float[Array, "b h w"],
    fake: Float[Array, "b H W C"],
    target: Float[Array, "b H W C"],
    *,
    l1_weight: float = 100.0,
    adversarial_weight: float = 1.0,
) -> tuple[Array, Array, dict]:
    r"""pix2pix's objective: conditional GAN plus :math:`\lambda` L1.

    .. math:: G^* = \arg\min_G \max_D\ \mathcal{L}_{cGAN}(G, D) + \lambda\, E\|y - G(x)\|_1

    with the non-saturating generator loss :math:`-\log D(x, G(x))` per patch
    (:func:`genjax.gan.generator_loss`) and the discriminator's cross-entropy
    (:func:`genjax.gan.discriminator_loss`), averaged over patches.

    Args:
      real_scores: ``[b, h, w]`` patch logits :math:`D(x, y)`.
      fake_scores_d: ``[b, h, w]`` :math:`D(x, G(x))` with :math:`G(x)` held fixed (for D).
      fake_scores_g: ``[b, h, w]`` :math:`D(x, G(x))` differentiable in G (for G).
      fake: ``[b, H, W, C]`` :math:`G(x)`.
      target: ``[b, H, W, C]`` :math:`y`.
      l1_weight: :math:`\lambda` (0: the cGAN-only ablation).
      adversarial_weight: weight of the cGAN term (0: the L1-only ablation).

    Returns:
      ``(generator_loss, discriminator_loss, metrics)``, scalars and a dict of scalars.

    References:
      Isola et al., 2017 (equations 1-4), https://arxiv.org/abs/1611.07004

    Derivation: derivations/20-pix2pix.md
    """
    l1 = _l1(fake, target)
    adv = jnp.mean(gan.generator_loss(patch_scores(fake_scores_g)))
    d_loss = jnp.mean(
        gan.discriminator_loss(patch_scores(real_scores), patch_scores(fake_scores_d))
    )
    g_loss = adversarial_weight * adv + l1_weight * l1
    return g_loss, d_loss, {"l1": l1, "g_adv": adv, "d_loss": d_loss}


def cycle_loss(
    a: Float[Array, "b H W C"],
    a_cycled: Float[Array, "b H W C"],
    b: Float[Array, "b H W C"],
    b_cycled: Float[Array, "b H W C"],
) -> Array:
    r"""CycleGAN's cycle-consistency loss.

    .. math:: \mathcal{L}_{cyc} = E_a \|F(G(a)) - a\|_1 + E_b \|G(F(b)) - b\|_1

    (means over pixels); zero exactly when :math:`F \circ G` and :math:`G \circ F` are the
    identity on the samples, as for an inverse pair.

    Args:
      a: ``[b, H, W, C]`` domain-A images; ``a_cycled`` = :math:`F(G(a))`.
      a_cycled: the same shape.
      b: ``[b', H, W, C]`` domain-B images; ``b_cycled`` = :math:`G(F(b))`.
      b_cycled: the same shape.

    Returns:
      The scalar loss.

    References:
      Zhu et al., 2017 (equation 2), https://arxiv.org/abs/1703.10593

    Derivation: derivations/21-cyclegan.md
    """
    if a.shape != a_cycled.shape or b.shape != b_cycled.shape:
        raise ValueError(
            f"a/a_cycled and b/b_cycled must match, got {a.shape}, {a_cycled.shape}, "
            f"{b.shape}, {b_cycled.shape}"
        )
    return _l1(a_cycled, a) + _l1(b_cycled, b)


def identity_loss(
    a: Float[Array, "b H W C"],
    f_of_a: Float[Array, "b H W C"],
    b: Float[Array, "b H W C"],
    g_of_b: Float[Array, "b H W C"],
) -> Array:
    r"""CycleGAN's identity loss: each generator leaves images of its target domain alone.

    .. math:: \mathcal{L}_{id} = E_b \|G(b) - b\|_1 + E_a \|F(a) - a\|_1

    Args:
      a: ``[b, H, W, C]`` domain-A images; ``f_of_a`` = :math:`F(a)`.
      f_of_a: the same shape.
      b: domain-B images; ``g_of_b`` = :math:`G(b)`.
      g_of_b: the same shape.

    Returns:
      The scalar loss.

    References:
      Zhu et al., 2017 (section 5.2, photo generation from paintings),
      https://arxiv.org/abs/1703.10593

    Derivation: derivations/21-cyclegan.md
    """
    return _l1(f_of_a, a) + _l1(g_of_b, b)


def cyclegan_losses(
    scores: dict[str, Array],
    images: dict[str, Array],
    *,
    cycle_weight: float = 10.0,
    identity_weight: float = 5.0,
) -> tuple[Array, Array, dict]:
    r"""CycleGAN's objective with least-squares GAN losses.

    .. math:: \mathcal{L}_G = \tfrac12 (D_B(G(a)) - 1)^2 + \tfrac12 (D_A(F(b)) - 1)^2
       + \lambda_{cyc} \mathcal{L}_{cyc} + \lambda_{id} \mathcal{L}_{id}

    and each discriminator's :func:`genjax.gan.least_squares_discriminator_loss` on its
    domain's real images against the other generator's output.

    Args:
      scores: patch scores ``[b, h, w]``: ``"real_a"`` :math:`D_A(a)`, ``"real_b"``
        :math:`D_B(b)`, ``"fake_a_d"``/``"fake_b_d"`` :math:`D_A(F(b))`, :math:`D_B(G(a))`
        with the generators held fixed, ``"fake_a_g"``/``"fake_b_g"`` the same,
        differentiable in the generators.
      images: ``"a"``, ``"b"``, ``"a_cycled"`` :math:`F(G(a))`, ``"b_cycled"``
        :math:`G(F(b))`, ``"f_of_a"``, ``"g_of_b"``, each ``[b, H, W, C]``.
      cycle_weight: :math:`\lambda_{cyc}` (0: the no-cycle ablation).
      identity_weight: :math:`\lambda_{id}`.

    Returns:
      ``(generator_loss, discriminator_loss, metrics)``.

    References:
      Zhu et al., 2017 (equations 1-3 and section 4), https://arxiv.org/abs/1703.10593

    Derivation: derivations/21-cyclegan.md
    """
    flat = {k: patch_scores(v) for k, v in scores.items()}
    adv = jnp.mean(gan.least_squares_generator_loss(flat["fake_b_g"])) + jnp.mean(
        gan.least_squares_generator_loss(flat["fake_a_g"])
    )
    cyc = cycle_loss(images["a"], images["a_cycled"], images["b"], images["b_cycled"])
    ident = identity_loss(images["a"], images["f_of_a"], images["b"], images["g_of_b"])
    d_loss = jnp.mean(
        gan.least_squares_discriminator_loss(flat["real_a"], flat["fake_a_d"])
    ) + jnp.mean(gan.least_squares_discriminator_loss(flat["real_b"], flat["fake_b_d"]))
    g_loss = adv + cycle_weight * cyc + identity_weight * ident
    return g_loss, d_loss, {"g_adv": adv, "cycle": cyc, "identity": ident, "d_loss": d_loss}


def masked_input(
    images: Float[Array, "b H W C"], masks: Float[Array, "b H W 1"]
) -> Float[Array, "b H W C2"]:
    r"""The context encoder's input: the image with its hole zeroed, and the mask as a channel.

    .. math:: \big((1 - M) \odot x,\ M\big)

    Args:
      images: ``[b, H, W, C]``.
      masks: ``[b, H, W, 1]``, 1 in the hole (:func:`genjax.data.square_masks`).

    Returns:
      ``[b, H, W, C + 1]``.

    Derivation: derivations/20-pix2pix.md
    """
    if masks.shape != (*images.shape[:3], 1):
        raise ValueError(
            f"masks must be [b, H, W, 1] = {(*images.shape[:3], 1)}, got {masks.shape}"
        )
    return jnp.concatenate([(1.0 - masks) * images, masks], axis=-1)


def context_encoder_losses(
    images: Float[Array, "b H W C"],
    predicted: Float[Array, "b H W C"],
    masks: Float[Array, "b H W 1"],
    real_scores: Float[Array, "b h w"] | None = None,
    fake_scores_d: Float[Array, "b h w"] | None = None,
    fake_scores_g: Float[Array, "b h w"] | None = None,
    *,
    adversarial_weight: float = 0.0,
) -> tuple[Array, Array, dict]:
    r"""The context encoder's joint loss: L2 on the hole, plus an adversarial term.

    .. math:: \mathcal{L}_{rec} = \frac{\|M \odot (x - F((1 - M) \odot x))\|_2^2}{\sum M},
       \qquad \mathcal{L} = (1 - \lambda_{adv}) \mathcal{L}_{rec} + \lambda_{adv}
       \mathcal{L}_{adv}

    with :math:`\mathcal{L}_{adv}` the non-saturating GAN loss of the completed image
    :math:`(1 - M) \odot x + M \odot F(\cdot)` (:func:`genjax.gan.generator_loss`).
    ``adversarial_weight=0`` (no scores needed) is L2 alone.

    Args:
      images: ``[b, H, W, C]`` originals :math:`x`.
      predicted: ``[b, H, W, C]`` the network's output :math:`F`.
      masks: ``[b, H, W, 1]`` holes :math:`M`.
      real_scores: ``[b, h, w]`` :math:`D(x)`.
      fake_scores_d: ``[b, h, w]`` :math:`D` of the completed images, the network held fixed.
      fake_scores_g: ``[b, h, w]`` the same, differentiable in the network.
      adversarial_weight: :math:`\lambda_{adv}` (Pathak et al. use 0.001 at 128x128).

    Returns:
      ``(generator_loss, discriminator_loss, metrics)``; the discriminator loss is 0 without
      scores.

    References:
      Pathak et al., 2016 (section 3.2, equations 1-3), https://arxiv.org/abs/1604.07379

    Derivation: derivations/20-pix2pix.md
    """
    hole = jnp.sum((masks * (images - predicted)) ** 2) / jnp.maximum(jnp.sum(masks), 1.0)
    metrics = {"hole_mse": hole / images.shape[-1]}
    if adversarial_weight == 0.0:
        return hole, jnp.zeros(()), metrics
    adv = jnp.mean(gan.generator_loss(patch_scores(fake_scores_g)))
    d_loss = jnp.mean(
        gan.discriminator_loss(patch_scores(real_scores), patch_scores(fake_scores_d))
    )
    g_loss = (1.0 - adversarial_weight) * hole + adversarial_weight * adv
    return g_loss, d_loss, {**metrics, "g_adv": adv, "d_loss": d_loss}
