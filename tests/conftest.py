"""Strict JAX for every test: silent rank broadcasting is an error, and keys are fixtures."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")

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
