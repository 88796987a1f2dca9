r"""The GAN players: MLP and DCGAN generators and discriminators (re-exported by
:mod:`genjax.gan`, whose docstring states their common call signature).

Derivation: derivations/08-gans.md (the players, the projection discriminator),
derivations/09-wgan.md (spectral normalisation in the critic), derivations/22-style-based-gans.md
(class-conditional batch norm)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.nn.layers import Conv, ConvTranspose, SpectralConv, SpectralDense
from genjax.nn.norm import BatchNorm

__all__ = [
    "NORMALIZATIONS",
    "ConditionalBatchNorm",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "dcgan_plan",
]

NORMALIZATIONS = ("none", "layer", "spectral")


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _check_unconditional(labels, name: str) -> None:
    if labels is not None:
        raise ValueError(f"{name} is unconditional: labels must be None")


def _check_latent(z, latent_dim: int, name: str) -> None:
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"{name}: z must have shape [batch, {latent_dim}], got {z.shape}")


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
      latent_dim: width of :math:`z`.

    Returns (``__call__(z, labels=None, train=True)``):
      ``[batch, out_dim]`` (linear output) for ``z [batch, latent_dim]``. ``labels`` must be
      ``None``; ``train`` is accepted for the common player signature and has no effect.

    Derivation: derivations/08-gans.md
    """

    out_dim: int = 2
    features: int = 128
    depth: int = 3
    latent_dim: int = 2

    @nn.compact
    def __call__(self, z, labels=None, train: bool = True):
        _check_unconditional(labels, "MLPGenerator")
        _check_latent(z, self.latent_dim, "MLPGenerator")
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

    Derivation: derivations/09-wgan.md
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


class ConditionalBatchNorm(nn.Module):
    r"""Class-conditional batch norm (BigGAN): batch statistics, then a per-class affine map.

    .. math:: \mathrm{CBN}(h, y) = (1 + \gamma_y) \odot \frac{h - \mu_B}{\sqrt{\sigma_B^2
              + \epsilon}} + \beta_y

    with :math:`\mu_B, \sigma_B^2` the per-channel batch statistics of :math:`h` (running
    averages at evaluation, momentum 0.9) and :math:`\gamma_y, \beta_y` learned rows of two
    class embeddings, initialised at zero (plain batch norm at the start). The class enters
    every layer's statistics rather than only the input.

    Attributes:
      num_classes: number of classes.

    Returns (``__call__(h, labels, train)``):
      ``[batch, ..., C]`` for ``h [batch, ..., C]`` and ``labels [batch]``.

    References:
      de Vries et al., *Modulating early visual processing by language*, 2017,
      https://arxiv.org/abs/1707.00683; Brock et al., *Large Scale GAN Training for High
      Fidelity Natural Image Synthesis*, 2019, https://arxiv.org/abs/1809.11096

    Derivation: derivations/22-style-based-gans.md
    """

    num_classes: int

    @nn.compact
    def __call__(self, h, labels, train: bool = True):
        channels = h.shape[-1]
        norm = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, use_scale=False, use_bias=False
        )(h)
        zeros = nn.initializers.zeros
        gamma = nn.Embed(self.num_classes, channels, embedding_init=zeros, name="gamma")(labels)
        beta = nn.Embed(self.num_classes, channels, embedding_init=zeros, name="beta")(labels)
        expand = (slice(None),) + (None,) * (h.ndim - 2)  # [batch, 1, ..., 1, C]
        return (1.0 + gamma[expand]) * norm + beta[expand]


def dcgan_plan(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    r"""Base resolution :math:`s_0` and number of 2x upsamplings :math:`n` with
    :math:`s_0 2^n = H`: the largest :math:`n \le 3` that divides :math:`H` and keeps
    :math:`s_0 \ge 2`.

    8x8 digits: (2, 2); 28x28 MNIST: (7, 2); 32x32 CIFAR: (4, 3).

    Args:
      image_shape: a square ``(H, W, C)`` with :math:`H` even, at least 4.

    Returns:
      ``(s0, n)``.

    Derivation: derivations/08-gans.md
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
      latent_dim: width of :math:`z`.
      conditional_bn: with ``num_classes``, the label also enters through
        :class:`ConditionalBatchNorm` in place of every batch norm (BigGAN); the embedding
        stays concatenated to :math:`z`, as in BigGAN-deep's first layer, so that the
        truncated code :math:`z = 0` still maps to a class-specific layout.

    Returns (``__call__(z, labels=None, train=True)``):
      ``[batch, H, W, C]`` images in :math:`[-1, 1]` for ``z [batch, latent_dim]``.
      ``train=True`` normalises with batch statistics and updates the running averages
      (``mutable=["batch_stats"]``); ``False`` uses the running averages.

    Note:
      Transposed convolutions are :func:`genjax.nn.layers.conv_transpose` (4x4, stride 2,
      padding 1, PyTorch's DCGAN setting), computed without XLA convolutions for speed inside
      the training scan. Batch-norm momentum is 0.9 (flax's ``momentum`` = PyTorch's
      ``1 - momentum``).

    Derivation: derivations/08-gans.md
    """

    image_shape: tuple[int, int, int] = (8, 8, 1)
    features: int = 32
    num_classes: int | None = None
    embed_dim: int = 16
    latent_dim: int = 32
    conditional_bn: bool = False

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
            if self.conditional_bn:
                raise ValueError("conditional_bn needs num_classes")
        _check_latent(z, self.latent_dim, "DCGANGenerator")

        def norm(h):
            if self.conditional_bn:
                return ConditionalBatchNorm(self.num_classes)(h, labels, train)
            return BatchNorm(use_running_average=not train, momentum=0.9)(h)

        width = self.features * 2 ** (num_up - 1)
        h = nn.Dense(base * base * width)(h)
        h = h.reshape(h.shape[0], base, base, width)  # [batch, s0, s0, 2^(n-1) F]
        h = nn.relu(norm(h))
        for i in range(num_up - 1):
            h = ConvTranspose(width // 2 ** (i + 1))(h)  # [batch, 2^(i+1) s0, ..., width/2^(i+1)]
            h = nn.relu(norm(h))
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

    Derivation: derivations/08-gans.md
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
