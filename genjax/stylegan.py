r"""A small style-based generator: mapping network, constant input, AdaIN styles, per-pixel
noise, style mixing and the truncation trick in :math:`w` space.

A mapping network :math:`f` takes :math:`z \sim N(0, I)` to an intermediate code
:math:`w = f(z)`. The synthesis network starts from a learned constant
:math:`s_0 \times s_0 \times F` tensor; each of its :math:`L` layers is (3x3 conv) → scaled
per-pixel noise → leaky ReLU → :func:`~genjax.nn.norm.adain` with the style
:math:`(y_s, y_b) = A_\ell w_\ell` of its own copy :math:`w_\ell` of the code, two layers per
resolution and a bilinear 2x upsampling between resolutions. Since every layer gets its own
:math:`w_\ell`, codes can be mixed (:func:`mix_styles`): layers :math:`\ell < c` from one code
(the coarse resolutions: *what* is drawn), the others from another (the fine ones: *how*).
Training mixes two codes for a fraction of the batch (style-mixing regularisation), and keeps a
running average :math:`\bar w` of :math:`w`, towards which sampling may pull the codes
(:func:`truncate`).

The generator follows :mod:`genjax.gan`'s player signature and trains with
:func:`genjax.gan.alternating_update`; its noise and mixing draws use the ``"noise"`` RNG
stream, which :mod:`genjax.gan`'s steps and sampler pass to every generator.

References:
  Karras et al., *A Style-Based Generator Architecture for Generative Adversarial Networks*,
  2019, https://arxiv.org/abs/1812.04948

  Huang & Belongie, *Arbitrary Style Transfer in Real-time with Adaptive Instance
  Normalization*, 2017, https://arxiv.org/abs/1703.06868

Derivation: derivations/22-style-based-gans.md
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from genjax import _checks
from genjax import gan as G
from genjax._gan_players import dcgan_plan
from genjax.nn.norm import adain, pixel_norm
from genjax.progan import LEAK, EqualConv, EqualDense, downsample, upsample

__all__ = [
    "MappingNetwork",
    "StyleGANGenerator",
    "SynthesisNetwork",
    "band_pass",
    "broadcast_styles",
    "mix_styles",
    "num_styles",
    "sample",
    "truncate",
]


# ----------------------------------------------------------------------------- pure functions


def num_styles(image_shape: tuple[int, int, int]) -> int:
    r"""The number of style inputs :math:`L = 2(n + 1)` of the synthesis network: two layers
    at each of the :math:`n + 1` resolutions :math:`s_0, 2 s_0, \dots, s_0 2^n = H`
    (:func:`genjax.gan.dcgan_plan`; 8x8 digits: 6 styles at 2x2, 4x4, 8x8).

    Args:
      image_shape: square ``(H, W, C)``.

    Returns:
      :math:`L`.

    Derivation: derivations/22-style-based-gans.md
    """
    return 2 * (dcgan_plan(tuple(image_shape))[1] + 1)


def truncate(
    w: Float[Array, "*batch d"], w_avg: Float[Array, " d"], psi: float | Array
) -> Float[Array, "*batch d"]:
    r"""The truncation trick in :math:`w` space.

    .. math:: w' = \bar w + \psi\,(w - \bar w)

    with :math:`w` = ``w``, :math:`\bar w` = ``w_avg`` and :math:`\psi` = ``psi``: :math:`\psi = 1`
    is the identity, :math:`\psi = 0` the average code for every sample; in between, codes move
    towards the densely sampled centre of :math:`w` space, where the generator was trained most,
    at the cost of variety.

    Args:
      w: ``[..., d]`` codes.
      w_avg: ``[d]`` average code.
      psi: :math:`\psi` (usually in :math:`[0, 1]`).

    Returns:
      ``[..., d]``.

    References:
      Karras et al., 2019, section 2 and appendix B.

    Derivation: derivations/22-style-based-gans.md
    """
    w, w_avg = jnp.asarray(w), jnp.asarray(w_avg)
    if w_avg.ndim != 1 or w.shape[-1:] != w_avg.shape:
        raise ValueError(
            f"w_avg must have shape ({w.shape[-1]},) for w {w.shape}, got {w_avg.shape}"
        )
    w_avg = w_avg.reshape((1,) * (w.ndim - 1) + w_avg.shape)  # [1, ..., 1, d]
    return w_avg + psi * (w - w_avg)


def broadcast_styles(w: Float[Array, "batch d"], num: int) -> Float[Array, "batch num d"]:
    r"""One code per layer: :math:`w_\ell = w` for :math:`\ell = 1, \dots, L`.

    Args:
      w: ``[batch, d]``.
      num: :math:`L` (:func:`num_styles`).

    Returns:
      ``[batch, L, d]``.

    Derivation: derivations/22-style-based-gans.md
    """
    _checks.positive_int("num", num)
    if w.ndim != 2:
        raise ValueError(f"w must have shape [batch, d], got {w.shape}")
    return jnp.broadcast_to(w[:, None, :], (w.shape[0], num, w.shape[1]))


def mix_styles(
    ws1: Float[Array, "batch L d"], ws2: Float[Array, "batch L d"], crossover: Int[Array, " batch"]
) -> Float[Array, "batch L d"]:
    r"""Style mixing: the first layers' codes from one source, the rest from another.

    .. math:: w_\ell = \begin{cases} w^{(1)}_\ell & \ell < c \\ w^{(2)}_\ell & \ell \ge c
              \end{cases}

    per example, with :math:`c` = ``crossover`` (0: all from ``ws2``; :math:`L`: all from
    ``ws1``). Layers count from the coarsest resolution, so ``ws1`` gives the coarse styles.

    Args:
      ws1: ``[batch, L, d]`` per-layer codes of the coarse source.
      ws2: ``[batch, L, d]`` per-layer codes of the fine source.
      crossover: ``[batch]`` ints in :math:`[0, L]`.

    Returns:
      ``[batch, L, d]``.

    Derivation: derivations/22-style-based-gans.md
    """
    ws1, ws2 = jnp.asarray(ws1), jnp.asarray(ws2)
    _checks.same_shape(ws1=ws1, ws2=ws2)
    if ws1.ndim != 3:
        raise ValueError(f"ws1 and ws2 must have shape [batch, L, d], got {ws1.shape}")
    crossover = jnp.asarray(crossover)
    if crossover.shape != ws1.shape[:1]:
        raise ValueError(f"crossover must have shape ({ws1.shape[0]},), got {crossover.shape}")
    coarse = jnp.arange(ws1.shape[1])[None, :] < crossover[:, None]  # [batch, L]
    return jnp.where(coarse[..., None], ws1, ws2)


def band_pass(x: Float[Array, "batch H W C"]) -> Float[Array, "batch H W C"]:
    r"""What a 2x2 average pooling removes: :math:`x - U D x`, with :math:`D` the 2x2 block mean
    (:func:`~genjax.progan.downsample`) and :math:`U` nearest-neighbour upsampling
    (:func:`~genjax.progan.upsample`).

    Since :math:`D U = I`, :math:`D(x - U D x) = 0`: the result has zero mean over every 2x2
    block, so adding it to an image leaves that image's half-resolution version unchanged. It
    is a projection (:math:`P^2 = P`) and vanishes on upsampled images (:math:`P U = 0`).

    Args:
      x: ``[batch, H, W, C]`` with even :math:`H, W`.

    Returns:
      ``[batch, H, W, C]``.

    References:
      Denton et al., *Deep Generative Image Models using a Laplacian Pyramid of Adversarial
      Networks*, 2015, https://arxiv.org/abs/1506.05751

    Derivation: derivations/22-style-based-gans.md
    """
    return x - upsample(downsample(x))


# ----------------------------------------------------------------------------- networks


def _act(x: Array) -> Array:
    return nn.leaky_relu(x, LEAK)


class MappingNetwork(nn.Module):
    r"""The mapping :math:`f: z \mapsto w`: pixel norm, then ``depth`` x [equalised dense →
    leaky ReLU], width ``w_dim``.

    Attributes:
      w_dim: width of :math:`w` and of the hidden layers.
      depth: number of layers (8 in the paper).
      lr_mul: learning-rate multiplier of its layers (:class:`~genjax.progan.EqualDense`; 0.01
        in the paper, which slows the mapping relative to the synthesis network).

    Returns (``__call__(z)``):
      ``[batch, w_dim]``.

    Derivation: derivations/22-style-based-gans.md
    """

    w_dim: int = 32
    depth: int = 4
    lr_mul: float = 0.01

    @nn.compact
    def __call__(self, z: Float[Array, "batch n"]) -> Float[Array, "batch w_dim"]:
        h = pixel_norm(z)
        for _ in range(self.depth):
            h = _act(EqualDense(self.w_dim, lr_mul=self.lr_mul)(h))
        return h


class _StyleLayer(nn.Module):
    """(kxk conv) → noise × learned per-channel scale → leaky ReLU → AdaIN from ``w``."""

    features: int
    conv: bool = True
    kernel_size: int = 3

    @nn.compact
    def __call__(self, h, w):
        if self.conv:
            h = EqualConv(self.features, self.kernel_size)(h)
        else:
            h = h + self.param("bias", nn.initializers.zeros, (1, 1, 1, self.features))
        noise = jax.random.normal(self.make_rng("noise"), (*h.shape[:3], 1), h.dtype)
        h = h + noise * self.param("noise_scale", nn.initializers.zeros, (1, 1, 1, self.features))
        style = EqualDense(2 * self.features, gain=1.0)(w)  # [batch, 2F]
        scale, bias = 1.0 + style[:, : self.features], style[:, self.features :]
        return adain(_act(h), scale, bias)


class SynthesisNetwork(nn.Module):
    r"""The synthesis network: learned constant → :math:`L` style layers → 1x1 to pixels.

    Layer :math:`2r` and :math:`2r + 1` work at resolution :math:`s_0 2^r`; layer 0 has no conv
    (it styles the constant), every other has a 3x3 :class:`~genjax.progan.EqualConv` (at the
    full resolution a ``fine_kernel`` :math:`\times` ``fine_kernel`` one); between resolutions a
    bilinear 2x upsampling. Noise maps ``[batch, H, W, 1]`` come from the ``"noise"`` RNG stream.

    With ``pyramid``, every resolution has its own 1x1 output :math:`\mathrm{rgb}_r(h_r)` and the
    image is a Laplacian pyramid of them, each level but the first band-passed
    (:func:`band_pass`, :math:`P`) and upsampled (nearest, :math:`U`) to the full size:

    .. math:: x = U^{n}\,\mathrm{rgb}_0 + \sum_{r=1}^{n} U^{n-r} P\,\mathrm{rgb}_r,
              \qquad D^{n-r} x = U^{r}\,\mathrm{rgb}_0 + \sum_{r' = 1}^{r} U^{r-r'} P\,
              \mathrm{rgb}_{r'}

    so the image pooled to :math:`s_0 2^r` depends on the layers up to resolution :math:`r`
    alone: the fine styles add detail and cannot move the coarse image.

    Attributes:
      image_shape: ``(H, W, C)``.
      features: :math:`F`, channels at every resolution.
      fine_kernel: odd kernel size of the full-resolution layers' convs: 1 makes them
        per-pixel maps of the upsampled coarse features (colour and stroke weight, no new
        shapes), so that the coarse layers must decide the image's geometry.
      pyramid: the Laplacian-pyramid output above instead of one 1x1 output at the end.

    Returns (``__call__(ws)``):
      ``[batch, H, W, C]`` (linear output) for ``ws [batch, L, d]``.

    Derivation: derivations/22-style-based-gans.md
    """

    image_shape: tuple[int, int, int] = (8, 8, 1)
    features: int = 64
    fine_kernel: int = 3
    pyramid: bool = False

    @nn.compact
    def __call__(self, ws: Float[Array, "batch L d"]) -> Float[Array, "batch H W C"]:
        base, num_up = dcgan_plan(self.image_shape)
        if self.fine_kernel < 1 or self.fine_kernel % 2 == 0:
            raise ValueError(f"fine_kernel must be a positive odd int, got {self.fine_kernel}")
        if ws.ndim != 3 or ws.shape[1] != num_styles(self.image_shape):
            raise ValueError(
                f"ws must have shape [batch, {num_styles(self.image_shape)}, d], got {ws.shape}"
            )
        const = self.param("const", nn.initializers.ones, (1, base, base, self.features))
        h = jnp.broadcast_to(const, (ws.shape[0], base, base, self.features))  # [b, s0, s0, F]
        image = None  # the pyramid's sum so far, at the current resolution
        for r in range(num_up + 1):
            if r > 0:
                b, s = h.shape[0], h.shape[1]
                h = jax.image.resize(h, (b, 2 * s, 2 * s, self.features), "bilinear")
            k = self.fine_kernel if r == num_up else 3
            h = _StyleLayer(self.features, conv=r > 0, kernel_size=k)(h, ws[:, 2 * r])
            h = _StyleLayer(self.features, kernel_size=k)(h, ws[:, 2 * r + 1])
            if self.pyramid:
                rgb = EqualConv(self.image_shape[2], 1, gain=1.0)(h)  # [b, s0 2^r, ., C]
                image = rgb if image is None else upsample(image) + band_pass(rgb)
        if self.pyramid:
            return image
        return EqualConv(self.image_shape[2], 1, gain=1.0)(h)  # [b, H, W, C]


class StyleGANGenerator(nn.Module):
    r"""The style-based generator :math:`G(z) = g(w_1, \dots, w_L)` with :math:`w = f(z)`.

    In training (``train=True``), each example mixes its code with that of a second
    :math:`z' \sim N(0, I)` with probability ``mixing_prob``, at a crossover :math:`c` uniform in
    :math:`\{1, \dots, L - 1\}` (:func:`mix_styles`), and the running average
    :math:`\bar w \leftarrow \beta \bar w + (1 - \beta)\,\mathrm{mean}_i\, w_i` (``w_avg`` in the
    ``"batch_stats"`` collection, updated when that collection is mutable) tracks the codes. In
    evaluation (``train=False``), codes are truncated towards :math:`\bar w` by ``psi``
    (:func:`truncate`; 1: none).

    Attributes:
      image_shape: ``(H, W, C)``.
      features: :math:`F` of the synthesis network.
      latent_dim: width of :math:`z` and of :math:`w`.
      fine_kernel: ``SynthesisNetwork.fine_kernel``.
      pyramid: ``SynthesisNetwork.pyramid``.
      mapping_depth: layers of the mapping network.
      mixing_prob: share of training examples generated from two codes (0.9 in the paper).
      psi: :math:`\psi` of the truncation at evaluation.
      w_avg_decay: :math:`\beta` of the running average (0.995 in the paper).

    Returns (``__call__(z, labels=None, train=True)``):
      ``[batch, H, W, C]`` for ``z [batch, latent_dim]``; ``labels`` must be ``None``. Needs the
      ``"noise"`` RNG stream. Methods ``map(z) -> w`` and ``synthesize(ws) -> images`` (through
      ``apply(..., method=...)``) expose the two halves for style mixing and path lengths.

    Derivation: derivations/22-style-based-gans.md
    """

    image_shape: tuple[int, int, int] = (8, 8, 1)
    features: int = 64
    latent_dim: int = 32
    mapping_depth: int = 4
    mixing_prob: float = 0.9
    psi: float = 1.0
    w_avg_decay: float = 0.995
    fine_kernel: int = 3
    pyramid: bool = False

    def setup(self):
        self.mapping = MappingNetwork(self.latent_dim, self.mapping_depth)
        self.synthesis = SynthesisNetwork(
            self.image_shape, self.features, self.fine_kernel, self.pyramid
        )
        self.w_avg = self.variable("batch_stats", "w_avg", jnp.zeros, (self.latent_dim,))

    def map(self, z: Float[Array, "batch n"]) -> Float[Array, "batch n"]:
        """The mapping network's codes :math:`w = f(z)`."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [batch, {self.latent_dim}], got {z.shape}")
        return self.mapping(z)

    def synthesize(self, ws: Float[Array, "batch L n"]) -> Float[Array, "batch H W C"]:
        """The synthesis network's images from per-layer codes ``ws``."""
        return self.synthesis(ws)

    def __call__(self, z, labels=None, train: bool = True):
        if labels is not None:
            raise ValueError("StyleGANGenerator is unconditional: labels must be None")
        w = self.map(z)  # [b, d]
        num = num_styles(self.image_shape)
        ws = broadcast_styles(w, num)  # [b, L, d]
        if not train:
            return self.synthesize(
                ws if self.psi == 1.0 else truncate(ws, self.w_avg.value, self.psi)
            )
        if self.is_mutable_collection("batch_stats") and not self.is_initializing():
            beta = self.w_avg_decay
            self.w_avg.value = beta * self.w_avg.value + (1.0 - beta) * jnp.mean(w, axis=0)
        if self.mixing_prob > 0:
            k_z, k_c, k_u = jax.random.split(self.make_rng("noise"), 3)
            ws2 = broadcast_styles(self.map(jax.random.normal(k_z, z.shape, z.dtype)), num)
            mixed = jax.random.uniform(k_u, (z.shape[0],)) < self.mixing_prob
            crossover = jnp.where(mixed, jax.random.randint(k_c, (z.shape[0],), 1, num), num)
            ws = mix_styles(ws, ws2, crossover)
        return self.synthesize(ws)


def sample(
    key: PRNGKeyArray,
    generator: StyleGANGenerator,
    params: Any,
    n: int,
    *,
    psi: float = 1.0,
    temperature: float = 1.0,
) -> Float[Array, " n H W C"]:
    r"""``n`` samples of a style-based generator, truncated in :math:`w` space.

    .. math:: x_i = g\big(\bar w + \psi (f(\tau z_i) - \bar w)\big), \qquad z_i \sim N(0, I)

    (:func:`genjax.gan.sample` of the generator with :math:`\psi` = ``psi``; its noise maps from
    ``key``'s ``"noise"`` stream).

    Args:
      key: PRNG key.
      generator: the :class:`StyleGANGenerator`.
      params: its variables (``params`` and ``batch_stats`` with ``w_avg``).
      n: number of samples.
      psi: :math:`\psi` of :func:`truncate` (1: no truncation).
      temperature: :math:`\tau`, the latent prior's standard deviation.

    Returns:
      ``[n, H, W, C]``.

    Derivation: derivations/22-style-based-gans.md
    """
    if not math.isfinite(psi):
        raise ValueError(f"psi must be finite, got {psi}")
    return G.sample(key, generator.clone(psi=float(psi)), params, n, temperature=temperature)
