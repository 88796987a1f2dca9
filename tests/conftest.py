"""Strict JAX for every test: silent rank broadcasting is an error, and keys are fixtures.

Compiled programs are kept in a persistent XLA cache (``.cache/xla`` at the repository root, or
``$JAX_COMPILATION_CACHE_DIR``), shared with the command-line runs the tests start: a second run
of the suite loads what the first compiled instead of compiling it again.
"""

import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "xla")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_rank_promotion", "raise")

# JIT compilation makes first examples slow; deadlines would only measure the compiler.
settings.register_profile(
    "genjax",
    deadline=None,
    max_examples=25,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("genjax")


@pytest.fixture
def key():
    """A fixed PRNG key: every random test is seeded."""
    return jax.random.key(0)
