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
