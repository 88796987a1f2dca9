"""What several recipes share: a fast initialisation key, one BLAS thread for scikit-learn, and
classical baselines whose settings are chosen on a validation split of the training data.

The digits classifier that judges class-conditional samples is
:func:`genjax.classifier.fit_digits_classifier`; recipes call it directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["fast_init_key", "one_blas_thread", "select_on_validation", "validation_split"]

VALIDATION_FRACTION = 0.2  # of the training set, for choosing a baseline's setting


def fast_init_key(key: jax.Array) -> jax.Array:
    """An RngBitGenerator key derived from ``key`` (deterministic in ``key``).

    XLA on CPU compiles every threefry draw into a large hash kernel, one per parameter tensor
    of an ``init``; RngBitGenerator draws compile to a much smaller one. Used for parameter
    initialisation and for the noise of short runs on small data.
    """
    if jax.random.key_impl(key) == "unsafe_rbg":
        return key
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="unsafe_rbg")


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run scikit-learn with BLAS and OpenMP on one thread.

    Its many small products gain nothing from more threads, and idle threads spinning on a shared
    2-core machine cost several times the work.
    """
    import sklearn.mixture  # noqa: F401  (loads its BLAS and OpenMP before the limit applies)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def validation_split(
    x: np.ndarray, fraction: float = VALIDATION_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, validation)``: a fixed seeded permutation of ``x`` cut at ``fraction``."""
    n_val = int(len(x) * fraction)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[n_val:]], x[order[:n_val]]


def select_on_validation(
    make: Callable[[Any], Any],
    candidates: Sequence[Any],
    x: np.ndarray,
    *,
    stop_when_worse: bool = False,
) -> tuple[Any, Any]:
    """Choose the candidate whose model ``make(candidate)`` scores best on a validation split of
    ``x`` (scikit-learn's ``score``: mean log-likelihood), then refit it on all of ``x``.

    ``stop_when_worse`` walks ``candidates`` in order and stops at the first that scores no
    better than its predecessor (for growing component counts). Returns ``(fitted, candidate)``.
    """
    fit_x, val_x = validation_split(x)
    best, best_score = None, -np.inf
    with one_blas_thread():
        for c in candidates:
            score = make(c).fit(fit_x).score(val_x)
            if score > best_score:
                best, best_score = c, score
            elif stop_when_worse:
                break
        return make(best).fit(x), best
