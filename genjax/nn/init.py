r"""Variance-preserving weight initialisers: Xavier/Glorot and He/Kaiming.

Each builder returns ``init(key, shape, dtype=jnp.float32) -> Array``, the protocol of
``jax.nn.initializers`` and of Flax's ``kernel_init``, so ``nn.Dense(64, kernel_init=he_normal())``
works as is. The variance targets are

.. math::
   \text{Xavier: } \operatorname{Var} W = g^2 \frac{2}{n_\text{in} + n_\text{out}}, \qquad
   \text{He: } \operatorname{Var} W = \frac{g^2}{n_\text{mode}},\ g = \sqrt 2 \text{ by default},

with :math:`g` = ``gain`` and :math:`n_\text{in}, n_\text{out}` from :func:`compute_fans` (a
convolution's receptive field counts towards both fans). A uniform draw on :math:`[-b, b]` has
variance :math:`b^2/3`, which gives the bounds :math:`b = g\sqrt{6/(n_\text{in}+n_\text{out})}`
and :math:`b = g\sqrt{3/n_\text{mode}}`.

Derivation: derivations/02-initialisation.md
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from genjax._checks import one_of

__all__ = [
    "Initializer",
    "compute_fans",
    "he_normal",
    "he_uniform",
    "xavier_normal",
    "xavier_uniform",
]

Initializer = Callable[..., Float[Array, "..."]]

_MODES = ("fan_in", "fan_out")


def compute_fans(shape: Sequence[int], in_axis: int = -2, out_axis: int = -1) -> tuple[int, int]:
    r"""Fan-in and fan-out of a dense or convolution kernel.

    .. math::
       n_\text{in} = s_\text{in} \cdot r, \qquad n_\text{out} = s_\text{out} \cdot r, \qquad
       r = \prod_{a \ne \text{in}, \text{out}} s_a,

    where :math:`s` = ``shape``, :math:`s_\text{in}` = ``shape[in_axis]``,
    :math:`s_\text{out}` = ``shape[out_axis]`` and :math:`r` is the receptive field (the product
    of the remaining axes: :math:`k_h k_w` for a Flax ``HWIO`` conv kernel, 1 for a dense one).

    Args:
      shape: kernel shape, at least 2 axes, all positive.
      in_axis: the input-feature axis (Flax: ``-2``).
      out_axis: the output-feature axis (Flax: ``-1``).

    Returns:
      ``(fan_in, fan_out)`` as Python ints.

    Note:
      PyTorch stores conv kernels ``OIHW``; pass ``in_axis=1, out_axis=0`` for that layout.

    Derivation: derivations/02-initialisation.md
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 axes (fan_in, fan_out), got {shape}")
    if any(s <= 0 for s in shape):
        raise ValueError(f"shape must have positive sizes, got {shape}")
    ndim = len(shape)
    for name, axis in (("in_axis", in_axis), ("out_axis", out_axis)):
        if not -ndim <= axis < ndim:
            raise ValueError(f"{name}={axis} is out of range for shape {shape}")
    in_axis, out_axis = in_axis % ndim, out_axis % ndim
    if in_axis == out_axis:
        raise ValueError(f"in_axis and out_axis must differ, both are axis {in_axis}")
    receptive_field = math.prod(s for a, s in enumerate(shape) if a not in (in_axis, out_axis))
    return shape[in_axis] * receptive_field, shape[out_axis] * receptive_field


def _check_gain(gain: float) -> float:
    gain = float(gain)
    if not (gain > 0 and math.isfinite(gain)):
        raise ValueError(f"gain must be a positive finite float, got {gain}")
    return gain


def _he_std(mode: str, gain: float) -> Callable[[int, int], float]:
    """:math:`g / \\sqrt{n}` with :math:`n` the fan that ``mode`` names."""
    gain = _check_gain(gain)
    one_of("mode", mode, _MODES)
    if mode == "fan_in":
        return lambda fan_in, fan_out: gain / math.sqrt(fan_in)
    return lambda fan_in, fan_out: gain / math.sqrt(fan_out)


def _xavier_std(gain: float) -> Callable[[int, int], float]:
    r""":math:`g \sqrt{2 / (n_\text{in} + n_\text{out})}`."""
    gain = _check_gain(gain)
    return lambda fan_in, fan_out: gain * math.sqrt(2.0 / (fan_in + fan_out))


def _make(
    std_of_fans: Callable[[int, int], float], distribution: str, in_axis: int, out_axis: int
) -> Initializer:
    """An initialiser drawing from ``distribution`` with standard deviation ``std_of_fans``."""

    def init(key, shape, dtype=jnp.float32):
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}")
        std = std_of_fans(*compute_fans(shape, in_axis, out_axis))
        if distribution == "normal":
            return std * jax.random.normal(key, tuple(shape), dtype)
        bound = math.sqrt(3.0) * std  # Var U[-b, b] = b^2 / 3
        return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)

    return init


def xavier_uniform(gain: float = 1.0, in_axis: int = -2, out_axis: int = -1) -> Initializer:
    r"""Glorot & Bengio's uniform initialiser.

    .. math::
       W \sim \mathcal U[-b, b], \qquad b = g\sqrt{\frac{6}{n_\text{in} + n_\text{out}}},
       \qquad \operatorname{Var} W = g^2 \frac{2}{n_\text{in} + n_\text{out}}

    with :math:`g` = ``gain`` and the fans of :func:`compute_fans` (``in_axis``, ``out_axis``).

    Args:
      gain: positive scale :math:`g` (1 for tanh-like/linear layers).
      in_axis: input-feature axis of the kernel.
      out_axis: output-feature axis of the kernel.

    Returns:
      ``init(key, shape, dtype=jnp.float32)``, an array of ``shape``.

    References:
      Glorot & Bengio, *Understanding the difficulty of training deep feedforward neural
      networks*, 2010, https://proceedings.mlr.press/v9/glorot10a.html

    Derivation: derivations/02-initialisation.md
    """
    return _make(_xavier_std(gain), "uniform", in_axis, out_axis)


def xavier_normal(gain: float = 1.0, in_axis: int = -2, out_axis: int = -1) -> Initializer:
    r"""Glorot & Bengio's normal initialiser: :func:`xavier_uniform`'s variance, drawn from
    :math:`\mathcal N\big(0,\ g^2 \tfrac{2}{n_\text{in} + n_\text{out}}\big)`.

    Arguments and return value as :func:`xavier_uniform`.

    Note:
      An untruncated normal, as in PyTorch's ``xavier_normal_``; ``jax.nn.initializers.
      glorot_normal`` draws a truncated normal rescaled to the same variance.

    Derivation: derivations/02-initialisation.md
    """
    return _make(_xavier_std(gain), "normal", in_axis, out_axis)


def he_uniform(
    mode: str = "fan_in", gain: float = math.sqrt(2.0), in_axis: int = -2, out_axis: int = -1
) -> Initializer:
    r"""He et al.'s uniform initialiser for ReLU networks.

    .. math::
       W \sim \mathcal U[-b, b], \qquad b = g\sqrt{\frac{3}{n}}, \qquad
       \operatorname{Var} W = \frac{g^2}{n} \;(= 2/n \text{ for } g = \sqrt 2)

    where :math:`n = n_\text{in}` for ``mode="fan_in"`` (keeps forward activations' variance) or
    :math:`n_\text{out}` for ``mode="fan_out"`` (keeps backward gradients' variance), and
    :math:`g` = ``gain``.

    Args:
      mode: ``"fan_in"`` or ``"fan_out"``.
      gain: positive scale :math:`g`; the default :math:`\sqrt 2` is the ReLU factor. For a leaky
        ReLU of slope :math:`a` use :math:`\sqrt{2/(1+a^2)}`.
      in_axis: input-feature axis of the kernel (:func:`compute_fans`).
      out_axis: output-feature axis of the kernel.

    Returns:
      ``init(key, shape, dtype=jnp.float32)``, an array of ``shape``.

    References:
      He et al., *Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet
      Classification*, 2015, https://arxiv.org/abs/1502.01852

    Derivation: derivations/02-initialisation.md
    """
    return _make(_he_std(mode, gain), "uniform", in_axis, out_axis)


def he_normal(
    mode: str = "fan_in", gain: float = math.sqrt(2.0), in_axis: int = -2, out_axis: int = -1
) -> Initializer:
    r"""He et al.'s normal initialiser for ReLU networks: :func:`he_uniform`'s variance, drawn
    from :math:`\mathcal N(0, g^2/n)` (:math:`\mathcal N(0, 2/n)` for :math:`g = \sqrt 2`).

    Arguments and return value as :func:`he_uniform`.

    Note:
      An untruncated normal, as in PyTorch's ``kaiming_normal_``; ``jax.nn.initializers.
      he_normal`` draws a truncated normal rescaled to the same variance.

    Derivation: derivations/02-initialisation.md
    """
    return _make(_he_std(mode, gain), "normal", in_axis, out_axis)
