"""Group norm, batch norm and the staged channel sums (derivations/11-ddpm.md, section 7):
values against flax's modules and float64 numpy, the closed-form gradient against autodiff of
the forward pass (first and second order), the running statistics, the errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax.nn.norm import (
    BatchNorm,
    GroupNorm,
    batch_moments,
    batch_norm,
    channel_sums,
    group_norm,
)

ATOL = 1e-5  # float32 statistics of a few hundred entries of unit scale
GRAD_ATOL = 1e-4  # float32 gradients through rsqrt of those statistics


def _group_norm_numpy(x, scale, bias, groups, eps=1e-6):
    """(17) in float64: statistics over the positions and the channels of a group."""
    x = np.asarray(x, np.float64)
    b, c = x.shape[0], x.shape[-1]
    g = x.reshape(b, -1, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


@given(
    st.integers(0, 2**16),
    st.sampled_from([(2, 7, 3), (3, 784, 16), (2, 196, 64), (1, 1, 5), (4, 3136, 2), (2, 25, 1)]),
    st.booleans(),
)
def test_channel_sums_match_numpy(seed, shape, per_example):
    # shapes on both sides of the staging threshold (N C > 4096 with a divisor k, k C <= 4096)
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    want = x.astype(np.float64).sum(axis=1 if per_example else (0, 1))
    got = jax.jit(channel_sums, static_argnums=1)(x, per_example)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_group_norm_matches_flax_and_float64_numpy(key, groups):
    x = 2.0 * jax.random.normal(key, (3, 6, 5, 8)) + 1.0
    variables = nn.GroupNorm(groups).init(key, x)
    assert jax.tree.structure(variables) == jax.tree.structure(GroupNorm(groups).init(key, x))
    k1, k2 = jax.random.split(jax.random.key(1))
    params = {"scale": jax.random.normal(k1, (8,)), "bias": jax.random.normal(k2, (8,))}
    got = GroupNorm(groups).apply({"params": params}, x)
    np.testing.assert_allclose(got, nn.GroupNorm(groups).apply({"params": params}, x), atol=ATOL)
    want = _group_norm_numpy(x, np.asarray(params["scale"]), np.asarray(params["bias"]), groups)
    np.testing.assert_allclose(got, want, atol=ATOL)
    # any number of position axes: [batch, N, C] too
    flat = x.reshape(3, 30, 8)
    np.testing.assert_allclose(
        group_norm(flat, params["scale"], params["bias"], groups), want.reshape(3, 30, 8), atol=ATOL
    )


def test_batch_norm_module_matches_flax_in_training_and_evaluation(key):
    x = 1.5 * jax.random.normal(key, (8, 5, 6, 4)) - 0.5
    for options in ({"momentum": 0.9}, {"momentum": 0.9, "use_scale": False, "use_bias": False}):
        ours, ref = BatchNorm(False, **options), nn.BatchNorm(False, **options)
        variables = ref.init(key, x)
        assert jax.tree.structure(ours.init(key, x)) == jax.tree.structure(variables)
        if "params" in variables:
            variables = {
                **variables,
                "params": {"scale": jnp.arange(1.0, 5.0), "bias": -jnp.ones(4)},
            }
        y, stats = ours.apply(variables, x, mutable=["batch_stats"])
        y_ref, stats_ref = ref.apply(variables, x, mutable=["batch_stats"])
        np.testing.assert_allclose(y, y_ref, atol=ATOL)
        for name in ("mean", "var"):  # rho m + (1 - rho) mu, not updated at init
            np.testing.assert_allclose(
                stats["batch_stats"][name], stats_ref["batch_stats"][name], atol=ATOL
            )
        mean, var = batch_moments(x)
        np.testing.assert_allclose(stats["batch_stats"]["mean"], 0.1 * mean, atol=ATOL)
        np.testing.assert_allclose(stats["batch_stats"]["var"], 0.9 + 0.1 * var, atol=ATOL)
        evaluated = {**variables, **stats}
        np.testing.assert_allclose(
            BatchNorm(True, **options).apply(evaluated, x),
            nn.BatchNorm(True, **options).apply(evaluated, x),
            atol=ATOL,
        )
    # train-mode numbers are (17) with the statistics pooled over the batch
    flat = np.asarray(x, np.float64).reshape(-1, 4)
    want = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
    got = batch_norm(x, jnp.ones(4), jnp.zeros(4)).reshape(-1, 4)
    np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.parametrize("kind", ["group", "batch"])
def test_normalisation_gradients_are_the_closed_form(monkeypatch, key, kind):
    # the custom VJP (the "adjoint" formulation, derivations/11-ddpm.md section 7) against
    # autodiff of the same forward pass ("xla") and of flax's module, first and second order
    k1, k2, k3 = jax.random.split(key, 3)
    x = 2.0 * jax.random.normal(k1, (4, 5, 3, 8)) + 0.5
    weight = jax.random.normal(k2, x.shape)
    scale, bias = 1.0 + 0.3 * jax.random.normal(k3, (2, 8))

    def ours(x, scale, bias):
        if kind == "group":
            return group_norm(x, scale, bias, 4)
        return batch_norm(x, scale, bias)

    def flax_norm(x, scale, bias):
        module = nn.GroupNorm(4) if kind == "group" else nn.BatchNorm(False)
        variables = {"params": {"scale": scale, "bias": bias}}
        if kind == "batch":
            variables["batch_stats"] = {"mean": jnp.zeros(8), "var": jnp.ones(8)}
            return module.apply(variables, x, mutable=["batch_stats"])[0]
        return module.apply(variables, x)

    def loss(f):
        return lambda x, s, b: jnp.sum(weight * jnp.tanh(f(x, s, b)))

    def penalty(f):  # differentiates the input gradient again
        return lambda s: jnp.sum(jax.grad(loss(f))(x, s, bias) ** 2)

    results = {}
    for formulation in ("adjoint", "xla"):
        monkeypatch.setenv("GENJAX_CONV", formulation)
        first = jax.grad(loss(ours), argnums=(0, 1, 2))(x, scale, bias)
        results[formulation] = (*first, jax.grad(penalty(ours))(scale))
    reference = (*jax.grad(loss(flax_norm), argnums=(0, 1, 2))(x, scale, bias),)
    for got, want in zip(results["adjoint"], results["xla"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=GRAD_ATOL)
    for got, want in zip(results["adjoint"][:3], reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=GRAD_ATOL)
    # forward mode needs the "xla" formulation (the closed form is a reverse-mode rule)
    tangent = jax.jvp(lambda v: ours(v, scale, bias), (x,), (x,))[1]
    assert tangent.shape == x.shape and bool(jnp.all(jnp.isfinite(tangent)))


def test_normalisation_errors():
    x = jnp.ones((2, 4, 4, 6))
    with pytest.raises(ValueError, match="num_groups must be a positive int dividing C = 6"):
        group_norm(x, jnp.ones(6), jnp.zeros(6), 4)
    with pytest.raises(ValueError, match=r"scale must have shape \(6,\)"):
        group_norm(x, jnp.ones(5), jnp.zeros(6), 3)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        batch_norm(x, jnp.ones(6), jnp.zeros((1, 6)))
    with pytest.raises(ValueError, match="eps must be positive"):
        batch_norm(x, jnp.ones(6), jnp.zeros(6), eps=0.0)
    with pytest.raises(ValueError, match=r"x must have shape \[batch, \.\.\., C\]"):
        group_norm(jnp.ones(6), jnp.ones(6), jnp.zeros(6), 1)
    with pytest.raises(ValueError, match="at least one position axis"):
        channel_sums(jnp.ones((2, 6)), per_example=True)
