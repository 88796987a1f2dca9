r"""The bijectors behind :mod:`genjax.flows`: the pure maps (affine, coupling, logit, squeeze,
masks) and the Flax modules that own their parameters.

Every bijector has ``forward_and_log_det(x) -> (y, log_det)`` and ``inverse_and_log_det(y)``;
``log_det`` has the batch shape. :mod:`genjax.flows` re-exports every public name here.

Derivation: derivations/10-realnvp.md
"""

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from genjax import _checks

Conditioner = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
MASKS = ("checkerboard", "channel")


# ----------------------------------------------------------------------------- affine maps


def affine_forward(
    x: Float[Array, "*shape"],
    shift: Float[Array, "*shape"],
    log_scale: Float[Array, "*shape"],
    event_ndims: int,
) -> tuple[Float[Array, "*shape"], Float[Array, "*batch"]]:
    r"""Elementwise affine map and its log-determinant.

    .. math:: y = x \odot e^{s} + t, \qquad \log\lvert\det J\rvert = \textstyle\sum_i s_i

    with :math:`t` = ``shift`` and :math:`s` = ``log_scale``; the Jacobian is diagonal, so its
    log-determinant is the sum of the log-scales over the event axes.

    Args:
      x: input, ``[*batch, *event]``.
      shift: :math:`t`, the shape of ``x``.
      log_scale: :math:`s`, the shape of ``x`` (log-scale, so the map is always invertible).
      event_ndims: number of trailing event axes summed into the log-det.

    Returns:
      ``(y, log_det)`` with ``y`` the shape of ``x`` and ``log_det`` ``[*batch]``.

    Derivation: derivations/10-realnvp.md
    """
    _checks.event_ndims(x, event_ndims)
    _checks.same_shape(x=x, shift=shift, log_scale=log_scale)
    return x * jnp.exp(log_scale) + shift, _checks.sum_event(log_scale, event_ndims)


def affine_inverse(
    y: Float[Array, "*shape"],
    shift: Float[Array, "*shape"],
    log_scale: Float[Array, "*shape"],
    event_ndims: int,
) -> tuple[Float[Array, "*shape"], Float[Array, "*batch"]]:
    r"""Inverse of :func:`affine_forward`: :math:`x = (y - t) \odot e^{-s}`.

    Its log-det is :math:`-\sum_i s_i`, minus the forward one.

    Args:
      y: output of the forward map, ``[*batch, *event]``.
      shift: :math:`t`, the shape of ``y``.
      log_scale: :math:`s`, the shape of ``y``.
      event_ndims: number of trailing event axes.

    Returns:
      ``(x, log_det)``; ``log_det`` ``[*batch]`` is the inverse map's, minus the forward one.

    Derivation: derivations/10-realnvp.md
    """
    _checks.event_ndims(y, event_ndims)
    _checks.same_shape(y=y, shift=shift, log_scale=log_scale)
    return (y - shift) * jnp.exp(-log_scale), -_checks.sum_event(log_scale, event_ndims)


def tanh_log_scale(
    raw: Float[Array, "*shape"], bound: Float[Array, "*shape"]
) -> Float[Array, "*shape"]:
    r"""A coupling's log-scale kept in :math:`(-|a|, |a|)`: :math:`s = a \tanh(h)`.

    :math:`h` = ``raw`` is the conditioner's unconstrained output and :math:`a` = ``bound`` a
    learned per-channel factor (RealNVP's choice). The bound keeps :math:`e^{s}` from overflowing
    while the conditioner is still random, and :math:`\tanh` is odd with slope 1 at 0, so a
    zero-initialised conditioner gives the identity and the layer can contract or expand
    equally. Glow's :math:`\sigma(h + 2)` scale, by contrast, can only contract.

    Args:
      raw: :math:`h`, any shape.
      bound: :math:`a`, the shape of ``raw`` (broadcast it explicitly).

    Returns:
      :math:`s`, the shape of ``raw``.

    Derivation: derivations/10-realnvp.md
    """
    _checks.same_shape(raw=raw, bound=bound)
    return bound * jnp.tanh(raw)


# ----------------------------------------------------------------------------- masks


def checkerboard_mask(shape: Sequence[int], parity: int = 0) -> Float[Array, "*shape"]:
    r"""The checkerboard mask :math:`b`: ones on alternating positions, the conditioning half.

    For a vector event ``(D,)``: :math:`b_i = [\,i + p \text{ even}\,]`. For an image event
    ``(H, W, C)``: :math:`b_{hwc} = [\,h + w + p \text{ even}\,]`, the same for every channel.
    :math:`p` = ``parity`` swaps the halves, so alternating layers transform both.

    Args:
      shape: the event shape, ``(D,)`` or ``(H, W, C)``; ``D``, ``H`` and ``W`` must be even so
        both halves are equal and the image can be squeezed afterwards.
      parity: 0 or 1.

    Returns:
      float32 mask of shape ``shape`` (1 = kept and used to condition, 0 = transformed).

    Derivation: derivations/10-realnvp.md
    """
    shape = tuple(int(s) for s in shape)
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    if len(shape) == 1:
        spatial = shape
    elif len(shape) == 3:
        spatial = shape[:2]
    else:
        raise ValueError(f"shape must be (D,) or (H, W, C), got {shape}")
    if any(s <= 0 or s % 2 for s in spatial):
        raise ValueError(
            f"a checkerboard split needs even, positive sizes, got shape {shape}: the halves "
            "would differ in size"
        )
    index = sum(np.indices(spatial))  # [*spatial] sum of coordinates
    mask = ((index + parity) % 2 == 0).astype(np.float32)
    if len(shape) == 3:
        mask = np.broadcast_to(mask[:, :, None], shape)  # [H, W, C]
    return jnp.asarray(mask)


def channel_mask(shape: Sequence[int], parity: int = 0) -> Float[Array, "*shape"]:
    r"""The channel mask: ones on the first half of the channels (the second half if ``parity``).

    .. math:: b_{\dots c} = [\, c < C/2 \,] \text{ for } p = 0, \qquad
       b_{\dots c} = [\, c \ge C/2 \,] \text{ for } p = 1

    Args:
      shape: the event shape ``(..., C)`` with ``C`` even.
      parity: 0 or 1.

    Returns:
      float32 mask of shape ``shape``.

    Derivation: derivations/10-realnvp.md
    """
    shape = tuple(int(s) for s in shape)
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    if not shape or shape[-1] <= 0 or shape[-1] % 2:
        raise ValueError(f"a channel split needs an even number of channels, got shape {shape}")
    first = (np.arange(shape[-1]) < shape[-1] // 2) != bool(parity)  # [C]
    return jnp.asarray(np.broadcast_to(first.astype(np.float32), shape))


def make_mask(kind: str, shape: Sequence[int], parity: int) -> jax.Array:
    """:func:`checkerboard_mask` or :func:`channel_mask` by name (``kind`` in ``MASKS``).

    Returns the float32 mask of shape ``shape``. Derivation: derivations/10-realnvp.md
    """
    if kind == "checkerboard":
        return checkerboard_mask(shape, parity)
    if kind == "channel":
        return channel_mask(shape, parity)
    raise ValueError(f"mask must be one of {MASKS}, got {kind!r}")


# ----------------------------------------------------------------------------- coupling


def coupling_forward(
    x: Float[Array, "*shape"],
    mask: Float[Array, "*event"],
    conditioner: Conditioner,
    event_ndims: int,
) -> tuple[Float[Array, "*shape"], Float[Array, "*batch"]]:
    r"""The masked affine coupling layer (RealNVP), forward.

    .. math::
       (t, s) = \mathrm{NN}(b \odot x), \qquad
       y = b \odot x + (1 - b) \odot \big(x \odot e^{s} + t\big), \qquad
       \log\lvert\det J\rvert = \textstyle\sum_i (1 - b_i)\, s_i

    with :math:`b` = ``mask`` and :math:`\mathrm{NN}` = ``conditioner``. The kept half
    :math:`b \odot x` passes through unchanged and decides the affine map of the other half, so
    the Jacobian is triangular (after ordering the kept entries first) with diagonal
    :math:`1` on the kept half and :math:`e^{s}` on the other: its log-det is a sum and the
    conditioner is never inverted or differentiated for it.

    Args:
      x: input, ``[*batch, *event]``.
      mask: :math:`b`, ``[*event]`` of 0/1 (see :func:`checkerboard_mask`, :func:`channel_mask`).
      conditioner: ``conditioner(b * x) -> (shift, log_scale)``, both the shape of ``x``; it
        receives the masked input only.
      event_ndims: number of trailing event axes (``mask.ndim``).

    Returns:
      ``(y, log_det)``: ``y`` the shape of ``x``, ``log_det`` ``[*batch]``.

    Note:
      The mask form applies :math:`t, s` to every entry and zeroes them on the kept half; for a
      channel mask this equals RealNVP's split form on channel slices
      (``tests/test_flows.py::test_channel_coupling_masking_equals_slicing``).

    Derivation: derivations/10-realnvp.md
    """
    return affine_forward(x, *_masked_conditioner(x, mask, conditioner, event_ndims), event_ndims)


def coupling_inverse(
    y: Float[Array, "*shape"],
    mask: Float[Array, "*event"],
    conditioner: Conditioner,
    event_ndims: int,
) -> tuple[Float[Array, "*shape"], Float[Array, "*batch"]]:
    r"""Inverse of :func:`coupling_forward`, in closed form.

    Since :math:`b \odot y = b \odot x`, the conditioner's input is known from :math:`y`:

    .. math::
       (t, s) = \mathrm{NN}(b \odot y), \qquad
       x = b \odot y + (1 - b) \odot (y - t) \odot e^{-s}, \qquad
       \log\lvert\det J\rvert = -\textstyle\sum_i (1 - b_i)\, s_i

    Args:
      y: output of the forward layer, ``[*batch, *event]``.
      mask: :math:`b`, ``[*event]``.
      conditioner: the same callable as in the forward pass.
      event_ndims: number of trailing event axes.

    Returns:
      ``(x, log_det)`` with ``log_det`` ``[*batch]``.

    Derivation: derivations/10-realnvp.md
    """
    return affine_inverse(y, *_masked_conditioner(y, mask, conditioner, event_ndims), event_ndims)


def _masked_conditioner(v, mask, conditioner, event_ndims: int):
    """``((1 - b) * t, (1 - b) * s)`` with ``(t, s) = conditioner(b * v)``: the coupling's
    shift and log-scale, zero on the kept half. ``b * v`` is the same for ``x`` and ``y``."""
    _checks.event_ndims(v, event_ndims)
    event_shape = jnp.shape(v)[jnp.ndim(v) - event_ndims :]
    if jnp.shape(mask) != event_shape:
        raise ValueError(f"mask must have the event shape {event_shape}, got {jnp.shape(mask)}")
    b = jnp.broadcast_to(mask, jnp.shape(v))  # [*batch, *event]
    shift, log_scale = conditioner(b * v)
    _checks.same_shape(x=v, shift=shift, log_scale=log_scale)
    return (1.0 - b) * shift, (1.0 - b) * log_scale


# ----------------------------------------------------------------------------- logit


def _check_logit_domain(x, alpha: float) -> None:
    if not 0.0 <= alpha < 0.5:
        raise ValueError(f"alpha must be in [0, 0.5), got {alpha!r}")
    if _checks.is_concrete(x):
        v = np.asarray(x)
        p = alpha + (1.0 - 2.0 * alpha) * v
        if not np.all((p > 0.0) & (p < 1.0)):
            lo, hi = float(np.min(v)), float(np.max(v))
            where = "(0, 1)" if alpha == 0 else "[0, 1]"
            raise ValueError(
                f"x must lie in {where} for the logit transform (alpha={alpha}), got values in "
                f"[{lo}, {hi}]"
            )


def logit_forward(
    x: Float[Array, "*shape"], alpha: float, event_ndims: int
) -> tuple[Float[Array, "*shape"], Float[Array, "*batch"]]:
    r"""RealNVP's pre-processing: squash into :math:`(\alpha, 1-\alpha)`, then take the logit.

    .. math::
       p = \alpha + (1 - 2\alpha)\,x, \qquad y = \log p - \log(1 - p), \qquad
       \log\lvert\det J\rvert = \textstyle\sum_i \big[\log(1-2\alpha) - \log p_i - \log(1-p_i)\big]

    The flow then models :math:`y \in \mathbb{R}^D`; the log-det term converts its density back
    to one on the unit cube, and must be in any bits/dim reported for :math:`x`.

    Args:
      x: pixels, ``[*batch, *event]`` in :math:`(0, 1)` (in :math:`[0, 1]` when
        :math:`\alpha > 0`), e.g. dequantised by :func:`genjax.data.dequantize`.
      alpha: :math:`\alpha \in [0, 0.5)` (RealNVP: 0.05 on CIFAR-10, 1e-6 on MNIST).
      event_ndims: number of trailing event axes.

    Returns:
      ``(y, log_det)`` with ``log_det`` ``[*batch]``.

    Note:
      Values outside the domain raise ``ValueError`` only for concrete (un-jitted) ``x``; under
      ``jit`` they cannot be checked and give NaN.

    Derivation: derivations/10-realnvp.md
    """
    _checks.event_ndims(x, event_ndims)
    _check_logit_domain(x, alpha)
    p = alpha + (1.0 - 2.0 * alpha) * x
    log_p, log_1mp = jnp.log(p), jnp.log1p(-p)
    log_det = math.log(1.0 - 2.0 * alpha) - log_p - log_1mp
    return log_p - log_1mp, _checks.sum_event(log_det, event_ndims)


def logit_inverse(
    y: Float[Array, "*shape"], alpha: float, event_ndims: int
) -> tuple[Float[Array, "*shape"], Float[Array, "*batch"]]:
    r"""Inverse of :func:`logit_forward`: :math:`x = (\sigma(y) - \alpha)/(1 - 2\alpha)`.

    .. math:: \log\lvert\det J\rvert = \textstyle\sum_i \big[\log\sigma(y_i) + \log\sigma(-y_i)
       - \log(1 - 2\alpha)\big]

    computed with ``log_sigmoid`` so large :math:`|y|` does not underflow.

    Args:
      y: ``[*batch, *event]`` real.
      alpha: as in :func:`logit_forward`.
      event_ndims: number of trailing event axes.

    Returns:
      ``(x, log_det)``; ``x`` lies in :math:`(0, 1)` up to rounding when :math:`\alpha > 0`
      only for :math:`\sigma(y) \in (\alpha, 1-\alpha)`.

    Derivation: derivations/10-realnvp.md
    """
    _checks.event_ndims(y, event_ndims)
    if not 0.0 <= alpha < 0.5:
        raise ValueError(f"alpha must be in [0, 0.5), got {alpha!r}")
    x = (jax.nn.sigmoid(y) - alpha) / (1.0 - 2.0 * alpha)
    log_det = jax.nn.log_sigmoid(y) + jax.nn.log_sigmoid(-y) - math.log(1.0 - 2.0 * alpha)
    return x, _checks.sum_event(log_det, event_ndims)


# ----------------------------------------------------------------------------- squeeze


def squeeze(x: Float[Array, "*batch H W C"], factor: int = 2) -> Float[Array, "*batch h2 w2 c2"]:
    r"""Space-to-depth: each ``factor`` x ``factor`` patch becomes ``factor**2`` channels.

    .. math:: y_{i, j, (a f + b) C + c} = x_{f i + a,\; f j + b,\; c}, \qquad 0 \le a, b < f

    A permutation of the entries, so its log-det is 0. RealNVP squeezes between scales so that
    channel couplings can mix neighbouring pixels.

    Args:
      x: ``[*batch, H, W, C]`` with ``H`` and ``W`` divisible by ``factor``.
      factor: patch side :math:`f`.

    Returns:
      ``[*batch, H/f, W/f, C f^2]``.

    Derivation: derivations/10-realnvp.md
    """
    if jnp.ndim(x) < 3:
        raise ValueError(f"x must be [*batch, H, W, C], got shape {jnp.shape(x)}")
    *batch, h, w, c = jnp.shape(x)
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    if h % factor or w % factor:
        raise ValueError(
            f"cannot squeeze spatial size {h}x{w} by {factor}: height and width must be "
            f"divisible by {factor}"
        )
    nb = len(batch)
    y = jnp.reshape(x, (*batch, h // factor, factor, w // factor, factor, c))  # [*b,h',f,w',f,C]
    perm = (*range(nb), nb, nb + 2, nb + 1, nb + 3, nb + 4)
    y = jnp.transpose(y, perm)  # [*b, h', w', f, f, C]
    return jnp.reshape(y, (*batch, h // factor, w // factor, factor * factor * c))  # [*b,h',w',f²C]


def unsqueeze(y: Float[Array, "*batch h2 w2 c2"], factor: int = 2) -> Float[Array, "*batch H W C"]:
    r"""Depth-to-space, the inverse of :func:`squeeze`.

    Args:
      y: ``[*batch, h, w, C]`` with ``C`` divisible by ``factor**2``.
      factor: patch side :math:`f`.

    Returns:
      ``[*batch, h f, w f, C / f^2]``.


    Derivation: derivations/10-realnvp.md
    """
    if jnp.ndim(y) < 3:
        raise ValueError(f"y must be [*batch, h, w, C], got shape {jnp.shape(y)}")
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    *batch, h, w, c = jnp.shape(y)
    if c % (factor * factor):
        raise ValueError(
            f"cannot unsqueeze {c} channels by {factor}: need a multiple of {factor**2}"
        )
    nb, c0 = len(batch), c // (factor * factor)
    x = jnp.reshape(y, (*batch, h, w, factor, factor, c0))  # [*b, h, w, f, f, C']
    perm = (*range(nb), nb, nb + 2, nb + 1, nb + 3, nb + 4)
    x = jnp.transpose(x, perm)  # [*b, h, f, w, f, C']
    return jnp.reshape(x, (*batch, h * factor, w * factor, c0))  # [*b, h f, w f, C']


# ----------------------------------------------------------------------------- bijectors


class Bijector(nn.Module):
    r"""Base of every bijector here: ``__call__(x, inverse=False) -> (y, log_det)``.

    Subclasses implement ``__call__``; :meth:`forward_and_log_det` and
    :meth:`inverse_and_log_det` are the public contract, ``log_det`` has the batch shape.

    Derivation: derivations/10-realnvp.md
    """

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """:math:`y = f(x)` and :math:`\\log|\\det J_f(x)|` (batch shape)."""
        return self(x, inverse=False)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """:math:`x = f^{-1}(y)` and :math:`\\log|\\det J_{f^{-1}}(y)|` (batch shape)."""
        return self(y, inverse=True)

    def forward(self, x: jax.Array) -> jax.Array:
        return self.forward_and_log_det(x)[0]

    def inverse(self, y: jax.Array) -> jax.Array:
        return self.inverse_and_log_det(y)[0]


class Chain(Bijector):
    r"""Composition :math:`f = f_K \circ \dots \circ f_1`; log-dets add, the inverse runs backwards.

    .. math:: \log\lvert\det J_f(x)\rvert = \textstyle\sum_k \log\lvert\det J_{f_k}(x_{k-1})\rvert,
       \qquad x_k = f_k(x_{k-1})

    Attributes:
      layers: the bijectors :math:`f_1, \dots, f_K`, applied in this order by the forward pass.
        Their batch shapes must agree (all layers of one flow share ``event_ndims``).

    Derivation: derivations/10-realnvp.md
    """

    layers: Sequence[Bijector]

    def __call__(self, x, inverse: bool = False):
        log_det = None
        for layer in reversed(self.layers) if inverse else self.layers:
            x, ld = layer(x, inverse=inverse)
            log_det = ld if log_det is None else log_det + ld
        if log_det is None:
            raise ValueError("a Chain needs at least one layer")
        return x, log_det


class Inverse(Bijector):
    r"""The inverse of ``bijector``: its forward is ``bijector``'s inverse and vice versa.

    .. math:: \log\lvert\det J_{f^{-1}}(y)\rvert = -\log\lvert\det J_f(f^{-1}(y))\rvert

    Derivation: derivations/10-realnvp.md
    """

    bijector: Bijector

    def __call__(self, x, inverse: bool = False):
        return self.bijector(x, inverse=not inverse)


class Squeeze(Bijector):
    r""":func:`squeeze` as a bijector on ``[*batch, H, W, C]`` images.

    .. math:: y = \mathrm{squeeze}(x), \qquad \log\lvert\det J\rvert = 0

    (a permutation of the entries). Output ``[*batch, H/f, W/f, f^2 C]``; log-det ``[*batch]``.

    Derivation: derivations/10-realnvp.md
    """

    factor: int = 2

    @nn.compact
    def __call__(self, x, inverse: bool = False):
        y = unsqueeze(x, self.factor) if inverse else squeeze(x, self.factor)
        return y, jnp.zeros(jnp.shape(x)[:-3], x.dtype)


class Logit(Bijector):
    r""":func:`logit_forward` / :func:`logit_inverse` as a bijector; no parameters.

    .. math:: y = \operatorname{logit}(\alpha + (1 - 2\alpha) x), \qquad
       \log\lvert\det J\rvert = \textstyle\sum_i \big[\log(1-2\alpha) - \log p_i
       - \log(1-p_i)\big]

    Input ``[*batch, *event]`` in the unit cube; log-det ``[*batch]``.

    References:
      Dinh et al., *Density estimation using Real NVP*, 2017, https://arxiv.org/abs/1605.08803

    Derivation: derivations/10-realnvp.md
    """

    alpha: float = 0.05
    event_ndims: int = 3

    @nn.compact
    def __call__(self, x, inverse: bool = False):
        fn = logit_inverse if inverse else logit_forward
        return fn(x, self.alpha, self.event_ndims)


class ActNorm(Bijector):
    r"""Activation normalisation (Glow): a learned per-channel affine map.

    .. math:: y = x \odot e^{s} + t, \qquad
       \log\lvert\det J\rvert = N_\text{pos}\textstyle\sum_c s_c

    with one :math:`(t_c, s_c)` per channel (last axis) and :math:`N_\text{pos}` the number of
    positions per channel in one event (``H * W`` for images, 1 for vectors), via
    :func:`affine_forward`. Initialised from the first batch seen in the forward direction so the
    outputs have zero mean and unit variance per channel (Kingma & Dhariwal 2018); initialised
    through the inverse, it starts as the identity.

    Attributes:
      event_ndims: trailing event axes (1 for vectors, 3 for images).
      data_init: use the data-dependent initialisation.

    Note:
      Glow's alternative to RealNVP's batch normalisation: no running statistics, so training
      and evaluation compute the same bijection.

    References:
      Kingma & Dhariwal, *Glow: Generative Flow with Invertible 1x1 Convolutions*, 2018,
      https://arxiv.org/abs/1807.03039

    Derivation: derivations/10-realnvp.md
    """

    event_ndims: int = 1
    data_init: bool = True

    @nn.compact
    def __call__(self, x, inverse: bool = False):
        _checks.event_ndims(x, self.event_ndims)
        c = jnp.shape(x)[-1]
        axes = tuple(range(jnp.ndim(x) - 1))  # every axis but the channel

        def init_shift(_):
            if inverse or not self.data_init:
                return jnp.zeros((c,), jnp.float32)
            return -jnp.mean(x, axis=axes) / _init_std(x, axes)

        def init_log_scale(_):
            if inverse or not self.data_init:
                return jnp.zeros((c,), jnp.float32)
            return -jnp.log(_init_std(x, axes))

        shift = jnp.broadcast_to(self.param("shift", init_shift), jnp.shape(x))
        log_scale = jnp.broadcast_to(self.param("log_scale", init_log_scale), jnp.shape(x))
        fn = affine_inverse if inverse else affine_forward
        return fn(x, shift, log_scale, self.event_ndims)


def _init_std(x, axes):
    """Per-channel std for ActNorm's initialisation, floored at 1e-3 so a constant channel in
    the first batch does not give a huge scale."""
    return jnp.maximum(jnp.std(x, axis=axes), 1e-3)


class AffineCoupling(Bijector):
    r"""Masked affine coupling layer (RealNVP): :func:`coupling_forward` / :func:`coupling_inverse`.

    The conditioner's output :math:`(t, h)` is split in two along the last axis and the
    log-scale bounded as :math:`s = a \tanh(h)` (:func:`tanh_log_scale`), with a learned
    per-channel :math:`a` initialised to 1.

    Attributes:
      conditioner: a Flax module mapping ``b * x`` (shape of ``x``) to ``[..., 2 C]``: shift
        then raw log-scale. :class:`MLPConditioner` for vectors, :class:`ResNetConditioner` for
        images; zero-initialise its last layer to start at the identity.
      mask: ``"checkerboard"`` or ``"channel"`` (see :func:`make_mask`).
      parity: 0 or 1, which half is kept; a call's ``parity=`` argument (possibly a traced
        int, as inside :class:`CouplingStack`'s scan) overrides it.
      event_ndims: trailing event axes (1 for vectors, 3 for images).

    References:
      Dinh et al., *Density estimation using Real NVP*, 2017, https://arxiv.org/abs/1605.08803

    Derivation: derivations/10-realnvp.md
    """

    conditioner: nn.Module
    mask: str = "checkerboard"
    parity: int = 0
    event_ndims: int = 1

    @nn.compact
    def __call__(self, x, inverse: bool = False, parity=None):
        _checks.event_ndims(x, self.event_ndims)
        event_shape = jnp.shape(x)[jnp.ndim(x) - self.event_ndims :]
        b = make_mask(self.mask, event_shape, self.parity)
        if parity is not None:  # both masks are complements: parity 1 keeps the other half
            b = jnp.where(parity == self.parity, b, 1.0 - b)
        c = event_shape[-1]
        bound = jnp.broadcast_to(self.param("scale_bound", nn.initializers.ones, (c,)), x.shape)

        def conditioner(masked):
            out = self.conditioner(masked)  # [*batch, *event[:-1], 2 C]
            if jnp.shape(out) != (*jnp.shape(x)[:-1], 2 * c):
                raise ValueError(
                    f"the conditioner must return shape {(*jnp.shape(x)[:-1], 2 * c)}, got "
                    f"{jnp.shape(out)}"
                )
            shift, raw = jnp.split(out, 2, axis=-1)  # two [*batch, *event]
            return shift, tanh_log_scale(raw, bound)

        fn = coupling_inverse if inverse else coupling_forward
        return fn(x, b, conditioner, self.event_ndims)


class CouplingBlock(Bijector):
    r"""An :class:`ActNorm` (optional) followed by an :class:`AffineCoupling`: the repeated unit.

    .. math:: f = \mathrm{coupling} \circ \mathrm{actnorm}, \qquad
       \log\lvert\det J_f\rvert = \log\lvert\det J_\mathrm{actnorm}\rvert
       + \log\lvert\det J_\mathrm{coupling}\rvert

    Attributes:
      conditioner: the coupling's conditioner module.
      mask: ``"checkerboard"`` or ``"channel"``.
      event_ndims: trailing event axes.
      actnorm: put an :class:`ActNorm` before the coupling.

    Derivation: derivations/10-realnvp.md
    """

    conditioner: nn.Module
    mask: str = "checkerboard"
    event_ndims: int = 1
    actnorm: bool = True

    @nn.compact
    def __call__(self, x, inverse: bool = False, parity=0):
        layers = []
        if self.actnorm:
            layers.append(lambda v, inv: ActNorm(self.event_ndims)(v, inverse=inv))
        coupling = AffineCoupling(self.conditioner, self.mask, 0, self.event_ndims)
        layers.append(lambda v, inv: coupling(v, inverse=inv, parity=parity))
        log_det = 0.0
        for layer in reversed(layers) if inverse else layers:
            x, ld = layer(x, inverse)
            log_det = log_det + ld
        return x, log_det


class CouplingStack(Bijector):
    r"""``num_layers`` copies of a :class:`CouplingBlock` with alternating mask parity, as a scan.

    Layer :math:`k` uses parity :math:`k \bmod 2`. Equal to a :class:`Chain` of the blocks
    (``tests/test_flows.py::test_coupling_stack_equals_chain``), but the layers' parameters are
    stacked along a leading axis and applied with ``jax.lax.scan`` (the inverse scans in
    reverse), so XLA compiles one block however deep the stack: compile time stays flat in the
    depth. Initialised in the forward direction, layer by layer, so each :class:`ActNorm` sees
    its own input.

    Attributes:
      block: the template :class:`CouplingBlock` (its configuration is used, not its identity).
      num_layers: number of blocks :math:`K`.
      event_ndims: trailing event axes.

    Derivation: derivations/10-realnvp.md
    """

    block: CouplingBlock
    num_layers: int
    event_ndims: int = 1

    @nn.compact
    def __call__(self, x, inverse: bool = False):
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        template = self.block.clone(parent=None)
        parities = jnp.arange(self.num_layers) % 2  # [K]

        def init_layers(rng):
            def init_one(h, inputs):
                key, parity = inputs
                params = template.init(key, h, parity=parity)
                return template.apply(params, h, parity=parity)[0], params

            keys = jax.random.split(rng, self.num_layers)
            return jax.lax.scan(init_one, x, (keys, parities))[1]  # params stacked on axis 0

        stacked = self.param("layers", init_layers)

        def apply_one(carry, inputs):
            h, log_det = carry
            params, parity = inputs
            h, ld = template.apply(params, h, inverse=inverse, parity=parity)
            return (h, log_det + ld), None

        batch = jnp.shape(x)[: jnp.ndim(x) - self.event_ndims]
        start = (x, jnp.zeros(batch, x.dtype))
        (y, log_det), _ = jax.lax.scan(apply_one, start, (stacked, parities), reverse=inverse)
        return y, log_det


class FactorOut(Bijector):
    r"""Multi-scale factoring: keep the first half of the channels, transform the rest by ``inner``.

    .. math:: (z_1, h) = \mathrm{split}(x), \qquad y = \mathrm{concat}(z_1, g(h)), \qquad
       \log\lvert\det J\rvert = \log\lvert\det J_g(h)\rvert

    :math:`z_1` leaves the flow at this scale (it is already a latent); :math:`g` = ``inner``
    is the rest of the flow at coarser scales. Block-triangular, so the log-det is ``inner``'s.

    Attributes:
      inner: the bijector for the second half of the channels.

    Derivation: derivations/10-realnvp.md
    """

    inner: Bijector

    @nn.compact
    def __call__(self, x, inverse: bool = False):
        c = jnp.shape(x)[-1]
        if c % 2:
            raise ValueError(f"FactorOut needs an even channel count, got shape {jnp.shape(x)}")
        kept, rest = jnp.split(x, 2, axis=-1)  # two [*batch, H, W, C/2]
        rest, log_det = self.inner(rest, inverse=inverse)
        return jnp.concatenate([kept, rest], axis=-1), log_det  # [*batch, H, W, C]
