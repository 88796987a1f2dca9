"""Argument checks shared by the public functions: one place, one wording.

Every check runs at trace time on static facts (shapes, ``ndim``, Python scalars), or on values
only when they are concrete (outside ``jit``/``grad``), so that a misuse is a plain Python
exception naming the argument and never an XLA error or a silent NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__: list[str] = []  # private: imported by genjax's modules only


def is_concrete(x) -> bool:
    """True outside ``jit``/``grad`` tracing, where array values can be checked."""
    return not isinstance(x, jax.core.Tracer)


def positive_int(name: str, value, *, allow_none: bool = False) -> None:
    """``value`` must be a Python int > 0 (or ``None`` when ``allow_none``)."""
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive int{extra}, got {value!r}")


def same_shape(**arrays) -> None:
    """All keyword arrays must have one shape; the error lists every name and shape."""
    shapes = {k: tuple(jnp.shape(v)) for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"shapes must match: {listed}")


def event_ndims(x, event_ndims: int, name: str = "x") -> None:
    """``event_ndims`` must be an int >= 0 and ``x`` must have at least that many axes."""
    if not isinstance(event_ndims, int) or isinstance(event_ndims, bool) or event_ndims < 0:
        raise ValueError(f"event_ndims must be an int >= 0, got {event_ndims!r}")
    if jnp.ndim(x) < event_ndims:
        raise ValueError(
            f"{name} must have at least event_ndims={event_ndims} axes, got shape {jnp.shape(x)}"
        )


def broadcast_shape(**arrays) -> tuple[int, ...]:
    """The NumPy broadcast of the keyword arrays' shapes; an error names every shape."""
    shapes = {k: tuple(jnp.shape(v)) for k, v in arrays.items()}
    try:
        return tuple(jnp.broadcast_shapes(*shapes.values()))
    except ValueError:
        listed = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"shapes do not broadcast: {listed}") from None


def sum_event(v: jax.Array, event_ndims: int) -> jax.Array:
    """Sum over the trailing ``event_ndims`` axes (none when 0): the batch-shaped total."""
    return jnp.sum(v, axis=tuple(range(-event_ndims, 0))) if event_ndims else v


def int_at_least(name: str, value, minimum: int) -> None:
    """``value`` must be a Python int >= ``minimum`` (e.g. ``levels >= 2``)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def matrix(name: str, a) -> None:
    """``a`` must be two-dimensional, ``[n, d]``."""
    if jnp.ndim(a) != 2:
        raise ValueError(f"{name} must be [n, d], got shape {jnp.shape(a)}")


def one_of(name: str, value, options) -> None:
    """``value`` must be one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")


def batched(name: str, x) -> jax.Array:
    """``x`` as an array with a leading batch axis (``[batch, ...]``); a scalar is an error."""
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"{name} must be batched, [batch, ...], got a scalar")
    return x


def time_steps(t, num_steps: int, batch: int, name: str = "t", low: int = 0) -> jax.Array:
    """Integer time steps ``t`` (a Python int, a scalar or a ``[batch]`` array) as int32
    ``[batch]``; a scalar applies to the whole batch. A float dtype, another shape or (when
    concrete) a value outside ``low .. num_steps - 1`` is an error naming ``name``."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer time steps, got dtype {t.dtype}")
    if t.shape not in ((), (batch,)):
        raise ValueError(f"{name} must be a scalar or [batch] = ({batch},), got shape {t.shape}")
    if is_concrete(t) and t.size:
        lo, hi = int(t.min()), int(t.max())
        if lo < low or hi >= num_steps:
            raise ValueError(
                f"{name} must lie in [{low}, {num_steps - 1}] (0-based steps of a {num_steps}-step "
                f"schedule), got values in [{lo}, {hi}]"
            )
    return jnp.broadcast_to(t, (batch,)).astype(jnp.int32)


def key_given(key, **replacements) -> None:
    """``key`` may be ``None`` only when every draw is replaced: each keyword is an argument
    that replaces a draw (``noise=noise``); the error names those that are ``None``."""
    missing = [name for name, value in replacements.items() if value is None]
    if key is None and missing:
        raise ValueError(f"key is None, so {' and '.join(missing)} must be given")


def batch_of(x, event_shape: tuple[int, ...], name: str = "x") -> None:
    """``x`` must be ``[B, *event_shape]`` for some batch size ``B``."""
    if jnp.ndim(x) != len(event_shape) + 1 or tuple(jnp.shape(x)[1:]) != tuple(event_shape):
        raise ValueError(
            f"{name} must have shape [B, {', '.join(map(str, event_shape))}], got {jnp.shape(x)}"
        )


def labels(y, num_classes: int, batch: int | None = None) -> jax.Array:
    """Integer class labels ``[B]`` (``B = batch`` when given), in ``[0, num_classes)`` when
    concrete; returned as int32."""
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if y.ndim != 1 or (batch is not None and y.shape[0] != batch):
        want = "B" if batch is None else batch
        raise ValueError(f"labels must have shape [{want}], got {y.shape}")
    if is_concrete(y) and y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]")
    return y.astype(jnp.int32)
