r"""Progressive growing of GANs: a generator and a critic that grow from :math:`s_0 \times s_0`
to the full resolution, fading each new layer in, with equalised learning rate, pixel norm and
the minibatch standard deviation.

Growth is a state, not a new network: both players hold the layers of every resolution from
the start, and the ``"growth"`` variable collection holds the current stage :math:`k` (the
resolution :math:`s_0 2^k`) and the fade-in weight :math:`\alpha` (:func:`with_growth`,
:func:`growth_schedule`). At stage :math:`k` the generator's image is

.. math:: G_k(z) = \mathrm{up}\big((1 - \alpha)\,\mathrm{up}_2(\mathrm{rgb}_{k-1}(h_{k-1}))
          + \alpha\,\mathrm{rgb}_k(h_k)\big)

(:func:`fade_in`), shown at the full resolution by nearest-neighbour upsampling
(:func:`upsample`), and the critic sees its input average-pooled to :math:`s_0 2^k`
(:func:`downsample`), with the mirror-image blend on its input side. Shapes never change, so
one jitted training step serves every stage, and at :math:`\alpha = 0` stage :math:`k` is
stage :math:`k-1` exactly: the loss is continuous across a growth step.

The players follow :mod:`genjax.gan`'s signature (``generator.apply(vars, z, labels,
train=...)``, ``discriminator.apply(vars, x, labels, update_stats=...)``) and train with its
:func:`genjax.gan.alternating_update` under the WGAN-GP loss, as in the paper.

References:
  Karras et al., *Progressive Growing of GANs for Improved Quality, Stability, and Variation*,
  2018, https://arxiv.org/abs/1710.10196

  He et al., *Delving Deep into Rectifiers*, 2015, https://arxiv.org/abs/1502.01852

Derivation: derivations/22-style-based-gans.md
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from genjax import _checks
from genjax._gan_players import dcgan_plan
from genjax.gan import critic_loss
from genjax.nn.layers import strided_conv
from genjax.nn.norm import NORM_EPS, pixel_norm

__all__ = [
    "GROWTH",
    "LEAK",
    "EqualConv",
    "EqualDense",
    "ProGANDiscriminator",
    "ProGANGenerator",
    "downsample",
    "drift_critic_loss",
    "fade_in",
    "growth_schedule",
    "he_constant",
    "minibatch_stddev",
    "upsample",
    "with_growth",
]

GROWTH = "growth"  #: the variable collection holding ``stage`` and ``alpha``
LEAK = 0.2  #: negative slope of every leaky ReLU of the players


# ----------------------------------------------------------------------------- pure functions


def he_constant(fan_in: int, gain: float = math.sqrt(2.0)) -> float:
    r"""He's initialisation standard deviation, the runtime weight scale of equalised LR.

    .. math:: c = \frac{g}{\sqrt{n_{\mathrm{in}}}}

    with :math:`g` = ``gain`` (:math:`\sqrt 2` before a ReLU, 1 before a linear output) and
    :math:`n_{\mathrm{in}}` = ``fan_in``. Equalised LR stores :math:`\hat w \sim N(0, 1)` and
    uses :math:`w = c\,\hat w`: the same initial law as He's, but Adam's step, which is
    invariant to the gradient's scale, moves every layer's *effective* weights at a rate
    proportional to that layer's :math:`c`.

    Args:
      fan_in: inputs per output unit (:math:`k^2 C` for a :math:`k \times k` conv).
      gain: :math:`g > 0`.

    Returns:
      :math:`c` as a Python float.

    References:
      He et al., 2015, https://arxiv.org/abs/1502.01852; Karras et al., 2018, section 4.1.

    Derivation: derivations/22-style-based-gans.md
    """
    _checks.positive_int("fan_in", fan_in)
    if not gain > 0:
        raise ValueError(f"gain must be positive, got {gain}")
    return gain / math.sqrt(fan_in)


def upsample(x: Float[Array, "batch H W C"], factor: int = 2) -> Float[Array, "batch H2 W2 C"]:
    r"""Nearest-neighbour upsampling, :math:`y_{b, i, j, c} = x_{b, \lfloor i/f \rfloor,
    \lfloor j/f \rfloor, c}` with :math:`f` = ``factor``.

    Args:
      x: ``[batch, H, W, C]``.
      factor: :math:`f \ge 1`.

    Returns:
      ``[batch, f H, f W, C]``.

    Derivation: derivations/22-style-based-gans.md
    """
    _checks.positive_int("factor", factor)
    if x.ndim != 4:
        raise ValueError(f"x must have shape [batch, H, W, C], got {x.shape}")
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)  # [b, fH, fW, C]


def downsample(x: Float[Array, "batch H W C"], factor: int = 2) -> Float[Array, "batch H2 W2 C"]:
    r"""Average pooling over :math:`f \times f` blocks, the adjoint (up to :math:`f^2`) of
    :func:`upsample`: :math:`y_{b,i,j,c} = f^{-2} \sum_{p,q < f} x_{b, fi+p, fj+q, c}`.

    Args:
      x: ``[batch, H, W, C]`` with :math:`H, W` multiples of ``factor``.
      factor: :math:`f \ge 1`.

    Returns:
      ``[batch, H/f, W/f, C]``.

    Derivation: derivations/22-style-based-gans.md
    """
    _checks.positive_int("factor", factor)
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(
            f"x must have shape [batch, H, W, C], H, W multiples of {factor}; got {x.shape}"
        )
    b, h, w, c = x.shape
    blocks = x.reshape(b, h // factor, factor, w // factor, factor, c)  # [b, H/f, f, W/f, f, C]
    return jnp.mean(blocks, axis=(2, 4))  # [b, H/f, W/f, C]


def fade_in(
    alpha: Float[Array, ""] | float,
    low: Float[Array, "batch H W C"],
    high: Float[Array, "batch H2 W2 C"],
) -> Float[Array, "batch H2 W2 C"]:
    r"""The fade-in blend of a new, higher-resolution layer with the upsampled old output.

    .. math:: y = (1 - \alpha)\,\mathrm{up}_2(y_{\mathrm{low}}) + \alpha\,y_{\mathrm{high}}

    with :math:`\alpha` = ``alpha`` rising from 0 to 1 during a growth stage,
    :math:`y_{\mathrm{low}}` = ``low`` (the previous resolution's output) and
    :math:`y_{\mathrm{high}}` = ``high`` (the new layer's). At :math:`\alpha = 0` it is the
    previous network upsampled, at :math:`\alpha = 1` the new layer alone.

    Args:
      alpha: scalar :math:`\alpha \in [0, 1]`.
      low: ``[batch, H, W, C]``.
      high: ``[batch, 2H, 2W, C]``.

    Returns:
      ``[batch, 2H, 2W, C]``.

    References:
      Karras et al., 2018, section 3 and figure 2.

    Derivation: derivations/22-style-based-gans.md
    """
    if low.ndim != 4 or high.shape != (
        low.shape[0],
        2 * low.shape[1],
        2 * low.shape[2],
        low.shape[3],
    ):
        raise ValueError(
            f"high must have shape [batch, 2H, 2W, C] for low [batch, H, W, C]; got low "
            f"{low.shape}, high {high.shape}"
        )
    return (1.0 - alpha) * upsample(low) + alpha * high


def minibatch_stddev(
    x: Float[Array, "batch H W C"], group_size: int = 4
) -> Float[Array, "batch H W C1"]:
    r"""The minibatch standard deviation feature, appended as one more channel.

    The batch is split into :math:`B/G` groups of :math:`G` consecutive examples (example
    :math:`i` in group :math:`\lfloor i/G \rfloor`); within a group :math:`g`,

    .. math:: s_g = \frac{1}{HWC} \sum_{h,w,c} \sqrt{\frac1G \sum_{i \in g}
              (x_{ihwc} - \bar x_{ghwc})^2 + \epsilon}

    is one number, the average spread of the group's features, given to every example of the
    group as a constant :math:`H \times W` map. A collapsed generator's samples have a small
    :math:`s`, which the critic can see.

    Args:
      x: ``[batch, H, W, C]`` features, ``batch`` a multiple of ``min(group_size, batch)``.
      group_size: :math:`G` (4 in the paper; the whole batch if larger).

    Returns:
      ``[batch, H, W, C + 1]``.

    Note:
      The paper groups examples :math:`i \bmod (B/G)` and scores data and samples in separate
      calls; :func:`genjax.gan.critic_step` scores them as one batch ``[data; samples]``, and
      consecutive groups keep each group within one half (for ``m`` a multiple of :math:`G`).
      The feature couples the examples of a group, so the critic is not a per-example function:
      the gradient penalty's ``grad(sum f)`` then holds cross terms between group members, as
      in the paper's own WGAN-GP implementation.

    References:
      Karras et al., 2018, section 3 (their ``minibatch_stddev_layer``).

    Derivation: derivations/22-style-based-gans.md
    """
    _checks.positive_int("group_size", group_size)
    if x.ndim != 4:
        raise ValueError(f"x must have shape [batch, H, W, C], got {x.shape}")
    b, h, w, _ = x.shape
    g = min(group_size, b)
    if b % g:
        raise ValueError(f"x's batch ({b}) must be a multiple of group_size ({g})")
    y = x.reshape(b // g, g, *x.shape[1:])  # [B/G, G, H, W, C]
    var = jnp.var(y, axis=1)  # [B/G, H, W, C]
    s = jnp.mean(jnp.sqrt(var + NORM_EPS), axis=(1, 2, 3))  # [B/G]
    feature = jnp.broadcast_to(jnp.repeat(s, g)[:, None, None, None], (b, h, w, 1))  # [B, H, W, 1]
    return jnp.concatenate([x, feature.astype(x.dtype)], axis=-1)


def drift_critic_loss(
    real_scores: Float[Array, " batch"],
    fake_scores: Float[Array, " batch"],
    drift: float = 1e-3,
) -> Float[Array, " batch"]:
    r"""The WGAN critic loss with ProGAN's drift penalty on the data's scores.

    .. math:: L_D = f(\tilde x) - f(x) + \epsilon_{\mathrm{drift}}\, f(x)^2

    with :math:`f(x)` = ``real_scores``, :math:`f(\tilde x)` = ``fake_scores`` and
    :math:`\epsilon_{\mathrm{drift}}` = ``drift`` (0.001 in the paper). The WGAN loss only sees
    score differences, so the scores' common offset is a free direction that can drift without
    bound; the quadratic term pins it near 0 and leaves the gradient of the difference unchanged
    to first order.

    Args:
      real_scores: ``[batch]`` critic scores on data.
      fake_scores: ``[batch]`` critic scores on samples.
      drift: :math:`\epsilon_{\mathrm{drift}} \ge 0`.

    Returns:
      ``[batch]`` losses (add the gradient penalty as for :func:`genjax.gan.critic_loss`).

    References:
      Karras et al., 2018, appendix A.1 (:math:`\epsilon_{\mathrm{drift}} = 0.001`).

    Derivation: derivations/22-style-based-gans.md
    """
    if not drift >= 0:
        raise ValueError(f"drift must be non-negative, got {drift}")
    return critic_loss(real_scores, fake_scores) + drift * jnp.asarray(real_scores) ** 2


def growth_schedule(
    step: jax.Array | int, stage_steps: int, num_stages: int
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""The stage :math:`k` and fade-in weight :math:`\alpha` at a training step.

    .. math:: k = \min(\lfloor t / T \rfloor, K - 1), \qquad
              \alpha = \begin{cases} 1 & k = 0 \\
              \min\!\big(1, \tfrac{t - kT}{T/2}\big) & k \ge 1 \end{cases}

    with :math:`t` = ``step``, :math:`T` = ``stage_steps`` and :math:`K` = ``num_stages``: each
    stage after the first fades its layer in over its first :math:`T/2` steps and then trains
    at :math:`\alpha = 1`; the last stage runs to the end of training.

    Args:
      step: the training step (int or scalar array).
      stage_steps: :math:`T \ge 2`.
      num_stages: :math:`K \ge 1`.

    Returns:
      ``(stage, alpha)``: float32 scalars (the stage as a whole number).

    Derivation: derivations/22-style-based-gans.md
    """
    _checks.int_at_least("stage_steps", stage_steps, 2)
    _checks.positive_int("num_stages", num_stages)
    t = jnp.asarray(step, jnp.float32)
    stage = jnp.minimum(jnp.floor(t / stage_steps), num_stages - 1)
    ramp = jnp.clip((t - stage * stage_steps) / (stage_steps / 2), 0.0, 1.0)
    return stage, jnp.where(stage == 0, 1.0, ramp)


def with_growth(variables: dict, stage, alpha) -> dict:
    r"""``variables`` with the ``"growth"`` collection set to ``stage`` and ``alpha``.

    .. math:: (k, \alpha) \mapsto \text{variables}[\texttt{growth}]

    Args:
      variables: a player's variables (a dict of collections).
      stage: the stage :math:`k` (a whole number, int or scalar).
      alpha: :math:`\alpha \in [0, 1]`.

    Returns:
      A new dict; the other collections are shared.

    Derivation: derivations/22-style-based-gans.md
    """
    growth = {"stage": jnp.asarray(stage, jnp.float32), "alpha": jnp.asarray(alpha, jnp.float32)}
    return {**variables, GROWTH: growth}


# ----------------------------------------------------------------------------- layers


class EqualDense(nn.Module):
    r"""A dense layer with equalised learning rate: :math:`y = x (c \mu \hat W) + \mu \hat b`.

    :math:`\hat W \sim N(0, \mu^{-2})` is the stored parameter ``kernel`` and :math:`c` =
    :func:`he_constant` of the input width, applied at every call. The learning-rate multiplier
    :math:`\mu` leaves the initial function unchanged (:math:`\mu \hat W \sim N(0, 1)`) and
    scales every update of the effective weights by :math:`\mu` under Adam, whose steps do not
    depend on the gradient's scale: StyleGAN's mapping network uses :math:`\mu = 0.01`.

    Attributes:
      features: output width.
      gain: :math:`g` of :func:`he_constant`.
      lr_mul: :math:`\mu`.

    Reference:
      Karras et al., *A Style-Based Generator Architecture for GANs*, 2019 (appendix C),
      https://arxiv.org/abs/1812.04948

    Derivation: derivations/22-style-based-gans.md
    """

    features: int
    gain: float = math.sqrt(2.0)
    lr_mul: float = 1.0

    @nn.compact
    def __call__(self, x: Float[Array, "*batch n"]) -> Float[Array, "*batch features"]:
        init = nn.initializers.normal(1.0 / self.lr_mul)
        kernel = self.param("kernel", init, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = x @ (kernel * (he_constant(x.shape[-1], self.gain) * self.lr_mul))  # [..., features]
        return y + self.lr_mul * bias.reshape((1,) * (y.ndim - 1) + (-1,))


class EqualConv(nn.Module):
    r"""A stride-1 "same" convolution with equalised learning rate, kernel :math:`c \hat K`.

    :math:`\hat K \sim N(0, 1)` ``[k, k, C, O]``, :math:`c` = :func:`he_constant` of
    :math:`k^2 C`; computed by :func:`genjax.nn.layers.strided_conv` with padding
    :math:`(k - 1)/2`.

    Attributes:
      features: output channels.
      kernel_size: odd :math:`k`.
      gain: :math:`g` of :func:`he_constant`.

    Derivation: derivations/22-style-based-gans.md
    """

    features: int
    kernel_size: int = 3
    gain: float = math.sqrt(2.0)

    @nn.compact
    def __call__(self, x: Float[Array, "batch H W C"]) -> Float[Array, "batch H W O"]:
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.normal(1.0), shape)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        scaled = kernel * he_constant(k * k * x.shape[-1], self.gain)
        return strided_conv(x, scaled, 1, (k - 1) // 2) + bias.reshape(1, 1, 1, -1)


def _act(x: Array) -> Array:
    return nn.leaky_relu(x, LEAK)


class _GBlock(nn.Module):
    """Upsample 2x (nearest), then two [3x3 equalised conv → leaky ReLU → pixel norm]."""

    features: int

    @nn.compact
    def __call__(self, h):
        h = upsample(h)
        for _ in range(2):
            h = pixel_norm(_act(EqualConv(self.features)(h)))
        return h


class _DBlock(nn.Module):
    """Two [3x3 equalised conv → leaky ReLU], then average-pool 2x."""

    features: int

    @nn.compact
    def __call__(self, h):
        for _ in range(2):
            h = _act(EqualConv(self.features)(h))
        return downsample(h)


def _growth(module: nn.Module, num_stages: int) -> tuple[Array, Array]:
    """The ``(stage index, alpha)`` of a player: the final stage, alpha 1, unless set."""
    stage = module.variable(GROWTH, "stage", lambda: jnp.float32(num_stages - 1)).value
    alpha = module.variable(GROWTH, "alpha", lambda: jnp.float32(1.0)).value
    index = jnp.clip(jnp.round(stage), 0, num_stages - 1).astype(jnp.int32)
    return index, alpha


class ProGANGenerator(nn.Module):
    r"""The progressive generator, drawn at the full resolution at every stage.

    :math:`z` → :func:`~genjax.nn.norm.pixel_norm` → :class:`EqualDense` to
    :math:`s_0 \times s_0 \times F` → leaky ReLU → pixel norm → 3x3 conv block (:math:`h_0`),
    then per stage :math:`k \ge 1` an upsample-conv-conv block (:math:`h_k`, pixel norm after
    every conv); ``rgb_k`` is a 1x1 :class:`EqualConv` (gain 1, linear output). The stage's
    image is :func:`fade_in` of ``rgb_{k-1}`` and ``rgb_k`` with the ``"growth"`` variables'
    :math:`\alpha`, upsampled to ``image_shape`` (:func:`upsample`). :math:`(s_0, K - 1)` come
    from :func:`genjax.gan.dcgan_plan` (8x8 digits: 2x2 → 4x4 → 8x8; 28x28: 7 → 14 → 28).

    Attributes:
      image_shape: ``(H, W, C)``.
      features: :math:`F`, channels at every resolution.
      latent_dim: width of :math:`z`.

    Returns (``__call__(z, labels=None, train=True)``):
      ``[batch, H, W, C]`` for ``z [batch, latent_dim]``; ``labels`` must be ``None`` and
      ``train`` has no effect (no batch statistics). The ``"growth"`` collection defaults to the
      final stage with :math:`\alpha = 1` (:func:`with_growth` sets it).

    Note:
      Every stage's blocks run at every step (the stage only selects the output), so a stage's
      step costs what the full network's does; the paper instead builds the smaller network.

    Derivation: derivations/22-style-based-gans.md
    """

    image_shape: tuple[int, int, int] = (8, 8, 1)
    features: int = 64
    latent_dim: int = 32

    @nn.compact
    def __call__(self, z, labels=None, train: bool = True):
        if labels is not None:
            raise ValueError("ProGANGenerator is unconditional: labels must be None")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [batch, {self.latent_dim}], got {z.shape}")
        base, num_up = dcgan_plan(self.image_shape)
        index, alpha = _growth(self, num_up + 1)
        f, channels = self.features, self.image_shape[2]
        h = EqualDense(base * base * f, gain=math.sqrt(2.0) / 4)(pixel_norm(z))
        h = pixel_norm(_act(h.reshape(z.shape[0], base, base, f)))  # [b, s0, s0, F]
        h = pixel_norm(_act(EqualConv(f)(h)))
        rgb = [EqualConv(channels, 1, gain=1.0, name="rgb_0")(h)]  # [b, s0, s0, C]
        outs = [upsample(rgb[0], 2**num_up)]  # [b, H, W, C]
        for k in range(1, num_up + 1):
            h = _GBlock(f)(h)  # [b, s0 2^k, s0 2^k, F]
            rgb.append(EqualConv(channels, 1, gain=1.0, name=f"rgb_{k}")(h))
            outs.append(upsample(fade_in(alpha, rgb[k - 1], rgb[k]), 2 ** (num_up - k)))
        return jnp.stack(outs)[index]  # [b, H, W, C]


class ProGANDiscriminator(nn.Module):
    r"""The progressive critic: the mirror image of :class:`ProGANGenerator`.

    At stage :math:`k` the input is average-pooled to :math:`s_0 2^k` (:func:`downsample`);
    ``from_rgb_k`` (1x1 :class:`EqualConv`, leaky ReLU) and block :math:`k` (two 3x3 convs,
    average pool) take it to :math:`s_0 2^{k-1}`, blended with ``from_rgb_{k-1}`` of the input
    pooled once more:

    .. math:: h = \alpha\,\mathrm{block}_k(\mathrm{from}_k(x_k))
              + (1 - \alpha)\,\mathrm{from}_{k-1}(\mathrm{down}_2(x_k)),

    then blocks :math:`k-1, \dots, 1`, and at :math:`s_0`: :func:`minibatch_stddev`, a 3x3
    conv, a dense layer and the linear score.

    Attributes:
      features: :math:`F`, channels at every resolution.
      group_size: :math:`G` of :func:`minibatch_stddev`.

    Returns (``__call__(x, labels=None, update_stats=False)``):
      ``[batch]`` critic scores for ``x [batch, H, W, C]``; ``labels`` must be ``None``;
      ``update_stats`` has no effect (no spectral norm).

    Derivation: derivations/22-style-based-gans.md
    """

    features: int = 64
    group_size: int = 4

    @nn.compact
    def __call__(self, x, labels=None, update_stats: bool = False):
        if labels is not None:
            raise ValueError("ProGANDiscriminator is unconditional: labels must be None")
        _, num_up = dcgan_plan(tuple(x.shape[1:]))
        index, alpha = _growth(self, num_up + 1)
        f = self.features
        from_rgb = [EqualConv(f, 1, name=f"from_rgb_{k}") for k in range(num_up + 1)]
        blocks = [None] + [_DBlock(f, name=f"block_{k}") for k in range(1, num_up + 1)]

        def trunk(h, k):  # features at resolution s0 2^k through blocks k, ..., 1
            for j in range(k, 0, -1):
                h = blocks[j](h)
            return h

        feats = [_act(from_rgb[0](downsample(x, 2**num_up)))]  # [b, s0, s0, F]
        for k in range(1, num_up + 1):
            x_k = downsample(x, 2 ** (num_up - k))  # [b, s0 2^k, s0 2^k, C]
            new = blocks[k](_act(from_rgb[k](x_k)))  # [b, s0 2^(k-1), ..., F]
            old = _act(from_rgb[k - 1](downsample(x_k)))
            feats.append(trunk(alpha * new + (1.0 - alpha) * old, k - 1))
        h = minibatch_stddev(jnp.stack(feats)[index], self.group_size)  # [b, s0, s0, F + 1]
        h = _act(EqualConv(f)(h))
        h = _act(EqualDense(f)(h.reshape(h.shape[0], -1)))
        return EqualDense(1, gain=1.0)(h)[:, 0]  # [batch]
