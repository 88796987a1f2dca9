"""Layers: the convolutions (both formulations, forward, gradients and second derivatives)
against lax/flax, and spectral
normalisation against the SVD (power-iteration convergence, the gradient u v^T, the mutable u
collection, the conv bound of derivations/09-wgan.md)."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax.nn.layers import (
    KERNEL_GRADIENT_CHUNKS,
    SPECTRAL,
    Conv,
    ConvTranspose,
    Dense,
    SpectralConv,
    SpectralDense,
    conv_formulation,
    conv_transpose,
    dense,
    kernel_matrix,
    power_iteration,
    spectral_norm_exact,
    spectral_normalize,
    strided_conv,
)

RTOL = 1e-5
ATOL = 1e-5
CONV_ATOL = 1e-4  # float32 sums of up to 4*4*8 products in different orders
DN = ("NHWC", "HWIO", "NHWC")


# jitted once per shape: eager dispatch would compile every slice of every drawn shape
conv = jax.jit(strided_conv, static_argnums=(2, 3))
convt = jax.jit(conv_transpose, static_argnums=(2, 3))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _lax_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), [(padding, padding)] * 2, dimension_numbers=DN
    )


@given(
    st.integers(0, 2**16),
    st.sampled_from([(8, 3, 1, 1), (8, 4, 2, 1), (7, 3, 2, 0), (6, 1, 1, 0), (5, 5, 1, 2)]),
)
def test_strided_conv_matches_lax(seed, config):
    size, k, stride, padding = config
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    kernel = rng.normal(size=(k, k, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(
        conv(x, kernel, stride, padding),
        _lax_conv(x, kernel, stride, padding),
        rtol=RTOL,
        atol=CONV_ATOL,
    )


@given(
    st.integers(0, 2**16), st.sampled_from([(4, 4, 2, 1), (7, 4, 2, 1), (3, 3, 1, 1), (2, 3, 2, 0)])
)
def test_conv_transpose_matches_lax_and_flax(seed, config):
    size, k, stride, padding = config
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, size, size, 4)).astype(np.float32)
    kernel = rng.normal(size=(k, k, 4, 3)).astype(np.float32)
    out = conv_transpose(x, kernel, stride, padding)
    assert out.shape == (
        2,
        (size - 1) * stride - 2 * padding + k,
        (size - 1) * stride - 2 * padding + k,
        3,
    )
    edge = k - 1 - padding
    expected = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), [(edge, edge)] * 2, lhs_dilation=(stride, stride), dimension_numbers=DN
    )
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=CONV_ATOL)
    flax_layer = nn.ConvTranspose(
        3, (k, k), (stride, stride), padding=[(edge, edge)] * 2, use_bias=False
    )
    flax_out = flax_layer.apply({"params": {"kernel": kernel}}, x)
    np.testing.assert_allclose(out, flax_out, rtol=RTOL, atol=CONV_ATOL)


def test_conv_transpose_is_the_adjoint_of_strided_conv(key):
    # <conv(x), y> = <x, conv^T(y)>: the transposed conv with the spatially flipped, channel-
    # swapped kernel is the linear adjoint of the strided conv (k = 4, s = 2, P = 1).
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (1, 8, 8, 2))
    kernel = jax.random.normal(k2, (4, 4, 2, 3))
    y = jax.random.normal(k3, (1, 4, 4, 3))
    adjoint_kernel = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # [4, 4, 3, 2]
    lhs = jnp.vdot(conv(x, kernel, 2, 1), y)
    rhs = jnp.vdot(x, convt(y, adjoint_kernel, 2, 1))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_conv_double_gradient_matches_lax(key):
    # the gradient penalty differentiates twice: second derivatives agree with lax's conv
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (2, 8, 8, 1))
    kernel = 0.3 * jax.random.normal(k2, (4, 4, 1, 2))

    def penalty(kern, conv):
        grad_x = jax.grad(lambda z: jnp.sum(jnp.tanh(conv(z, kern, 2, 1))))(x)
        return jnp.sum(grad_x**2)

    ours = jax.jit(jax.grad(lambda k: penalty(k, strided_conv)))(kernel)
    ref = jax.jit(jax.grad(lambda k: penalty(k, _lax_conv)))(kernel)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=CONV_ATOL)


# (size, k, stride, padding); size 2 takes the transposed convolution's small-input path
CONFIGS = [
    (8, 4, 2, 1),
    (7, 4, 2, 1),
    (7, 3, 2, 0),
    (8, 3, 1, 1),
    (6, 1, 1, 0),
    (5, 5, 1, 2),
    (2, 4, 2, 1),
    (2, 3, 2, 0),
]


def _lax_conv_transpose(x, kernel, stride, padding):
    edge = kernel.shape[0] - 1 - padding
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), [(edge, edge)] * 2, lhs_dilation=(stride, stride), dimension_numbers=DN
    )


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("transposed", [False, True])
def test_conv_gradients_match_lax_autodiff(config, transposed):
    # first and second derivatives of the "adjoint" formulation (custom VJP) against autodiff
    # of lax's convolution, at odd sizes too (where the stride drops the last rows)
    size, k, stride, padding = config
    if transposed and padding > k - 1:
        pytest.skip("a transposed convolution needs P <= k - 1")
    if not transposed and k > size + 2 * padding:
        pytest.skip("a strided convolution needs k <= H + 2 P")
    rng = np.random.default_rng(size * 100 + k * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    kernel = jnp.asarray(0.3 * rng.normal(size=(k, k, 3, 4)), jnp.float32)
    ours, ref = (conv_transpose, _lax_conv_transpose) if transposed else (strided_conv, _lax_conv)
    weight = jnp.asarray(rng.normal(size=ours(x, kernel, stride, padding).shape), jnp.float32)

    def loss(x, kern, f):
        return jnp.sum(weight * jnp.tanh(f(x, kern, stride, padding)))

    def penalty(kern, f):  # a gradient penalty: differentiates the input gradient again
        return jnp.sum(jax.grad(loss)(x, kern, f) ** 2)

    np.testing.assert_allclose(
        ours(x, kernel, stride, padding), ref(x, kernel, stride, padding), atol=CONV_ATOL
    )
    for got, want in zip(
        jax.grad(loss, argnums=(0, 1))(x, kernel, ours),
        jax.grad(loss, argnums=(0, 1))(x, kernel, ref),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=CONV_ATOL)
    np.testing.assert_allclose(
        jax.grad(penalty)(kernel, ours), jax.grad(penalty)(kernel, ref), rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize("config", [(16, 3, 1, 1), (16, 4, 2, 1)])
@pytest.mark.parametrize("transposed", [False, True])
def test_kernel_gradient_in_batch_chunks_matches_lax(config, transposed):
    # a batch of 32 with 8 channels on 16x16 maps (8 * 256 >= 1024 positions per chunk): the
    # kernel gradient is summed over four batch chunks
    assert KERNEL_GRADIENT_CHUNKS == 4
    size, k, stride, padding = config
    rng = np.random.default_rng(size + k + stride)
    x = jnp.asarray(rng.normal(size=(32, size, size, 8)), jnp.float32)
    kernel = jnp.asarray(0.2 * rng.normal(size=(k, k, 8, 8)), jnp.float32)
    ours, ref = (conv_transpose, _lax_conv_transpose) if transposed else (strided_conv, _lax_conv)
    weight = jnp.asarray(rng.normal(size=ours(x, kernel, stride, padding).shape), jnp.float32)

    def loss(kern, f):
        return jnp.sum(weight * f(x, kern, stride, padding))

    np.testing.assert_allclose(
        jax.grad(loss)(kernel, ours), jax.grad(loss)(kernel, ref), rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 4, 7)])
def test_dense_matches_flax_dense_values_and_gradients(key, shape):
    x = jax.random.normal(key, shape)
    variables = nn.Dense(6).init(key, x)
    assert jax.tree.structure(Dense(6).init(key, x)) == jax.tree.structure(variables)
    variables = jax.tree.map(lambda a: a + 0.1, variables)  # a non-zero bias
    weight = jax.random.normal(jax.random.key(1), (*shape[:-1], 6))

    def loss(v, x, module):
        return jnp.sum(weight * jnp.tanh(module.apply(v, x)))

    def penalty(v, module):  # a gradient penalty: differentiates the input gradient again
        return jnp.sum(jax.grad(loss, argnums=1)(v, x, module) ** 2)

    np.testing.assert_allclose(
        Dense(6).apply(variables, x), nn.Dense(6).apply(variables, x), rtol=RTOL, atol=ATOL
    )
    got = jax.grad(loss, argnums=(0, 1))(variables, x, Dense(6))
    want = jax.grad(loss, argnums=(0, 1))(variables, x, nn.Dense(6))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    for g, w in zip(
        jax.tree.leaves(jax.grad(penalty)(variables, Dense(6))),
        jax.tree.leaves(jax.grad(penalty)(variables, nn.Dense(6))),
        strict=True,
    ):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"kernel must have shape \[in, out\]"):
        dense(x, jnp.ones((3, 6)))
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        dense(x, jnp.ones((7, 6)), jnp.ones(5))


def test_conv_formulation_by_backend_and_override(monkeypatch):
    monkeypatch.delenv("GENJAX_CONV", raising=False)
    assert conv_formulation("cpu") == "adjoint"
    assert conv_formulation("gpu") == conv_formulation("tpu") == "xla"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 4, 3, 2)), jnp.float32)
    grads = {}
    for name in ("adjoint", "xla"):
        monkeypatch.setenv("GENJAX_CONV", name)
        assert conv_formulation("cpu") == name
        f = lambda k: jnp.sum(
            jnp.sin(strided_conv(conv_transpose(x, k, 2, 1), k.transpose(0, 1, 3, 2), 2, 1))
        )
        grads[name] = jax.grad(f)(kernel)
    np.testing.assert_allclose(grads["adjoint"], grads["xla"], rtol=1e-4, atol=CONV_ATOL)
    # forward mode needs the xla formulation: the custom VJP is reverse-only
    tangent = jax.jvp(lambda k: strided_conv(x, k, 2, 1), (kernel,), (kernel,))[1]
    np.testing.assert_allclose(tangent, strided_conv(x, kernel, 2, 1), rtol=1e-5, atol=CONV_ATOL)
    monkeypatch.setenv("GENJAX_CONV", "fast")
    with pytest.raises(ValueError, match="GENJAX_CONV must be one of"):
        strided_conv(x, kernel)


def test_conv_modules_shapes_and_errors(key):
    x = jnp.ones((2, 8, 8, 1))
    variables = Conv(4, kernel_size=4, stride=2, padding=1).init(key, x)
    assert variables["params"]["kernel"].shape == (4, 4, 1, 4)
    assert Conv(4, 4, 2, 1).apply(variables, x).shape == (2, 4, 4, 4)
    np.testing.assert_allclose(
        Conv(4, 4, 2, 1).apply(variables, x),
        _lax_conv(x, variables["params"]["kernel"], 2, 1),  # zero bias at init
        atol=CONV_ATOL,
    )
    up = ConvTranspose(3).init(key, jnp.ones((2, 4, 4, 4)))
    assert ConvTranspose(3).apply(up, jnp.ones((2, 4, 4, 4))).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match=r"x must have shape \[batch, H, W, C\]"):
        strided_conv(jnp.ones((8, 8, 1)), jnp.ones((3, 3, 1, 1)))
    with pytest.raises(ValueError, match="kernel must have shape"):
        strided_conv(x, jnp.ones((3, 3, 2, 1)))
    with pytest.raises(ValueError, match="stride must be"):
        strided_conv(x, jnp.ones((3, 3, 1, 1)), stride=0)
    with pytest.raises(ValueError, match="larger than the padded input"):
        strided_conv(x, jnp.ones((9, 9, 1, 1)))
    with pytest.raises(ValueError, match="padding must be <= kh - 1"):
        conv_transpose(x, jnp.ones((3, 3, 1, 1)), 2, 3)


# ----------------------------------------------------------------------------- spectral norm


power = jax.jit(power_iteration, static_argnums=2)
GAP_STEPS = 40  # with s2/s1 <= 2/3 the error (s2/s1)^(2t) is below 1e-14 after 40 steps


@given(st.integers(0, 2**16), st.sampled_from([(3, 5), (8, 8), (16, 2)]))
def test_power_iteration_converges_to_svd(seed, shape):
    # W = U diag(s) V^T with a known spectrum whose top gap s2/s1 <= 2/3
    rng = np.random.default_rng(seed)
    r = min(shape)
    left, _ = np.linalg.qr(rng.normal(size=(shape[0], r)))
    right, _ = np.linalg.qr(rng.normal(size=(shape[1], r)))
    s = np.sort(rng.uniform(0.1, 2.0, r))[::-1]
    s[0] = 1.5 * s[1] + rng.uniform(0.0, 1.0) if r > 1 else s[0]
    w = (left * s[None]) @ right.T  # [out, fan_in]
    u0 = rng.normal(size=shape[0]).astype(np.float32)
    sigma, u, v = power(jnp.asarray(w, jnp.float32), jnp.asarray(u0), GAP_STEPS)
    np.testing.assert_allclose(float(sigma), s[0], rtol=1e-4)
    np.testing.assert_allclose(float(sigma), float(spectral_norm_exact(w)), rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-5)
    np.testing.assert_allclose(w @ np.asarray(v), float(sigma) * np.asarray(u), atol=1e-4)
    np.testing.assert_allclose(abs(np.asarray(u) @ left[:, 0]), 1.0, atol=1e-4)


@given(st.integers(0, 2**16))
def test_power_iteration_never_overestimates(seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    sigma, _, _ = power(jnp.asarray(w), jnp.asarray(rng.normal(size=6), jnp.float32), 1)
    assert float(sigma) <= float(np.linalg.svd(w, compute_uv=False)[0]) * (1 + 1e-5)


def test_power_iteration_gradient_is_u_v_transpose(key):
    w = jax.random.normal(key, (5, 7))
    u0 = jnp.ones(5)
    _, u, v = power_iteration(w, u0, 200)
    grad = jax.grad(lambda m: power_iteration(m, u0, 200)[0])(w)
    np.testing.assert_allclose(grad, jnp.outer(u, v), atol=1e-5)
    # and it is the derivative of the exact largest singular value
    exact_grad = jax.grad(spectral_norm_exact)(w)
    np.testing.assert_allclose(grad, exact_grad, atol=1e-4)


def test_spectral_normalize_conv_kernel_has_unit_matrix_norm(key):
    kernel = jax.random.normal(key, (4, 4, 3, 8))
    assert kernel_matrix(kernel).shape == (8, 48)
    w_bar, _, sigma = spectral_normalize(kernel, jnp.ones(8), num_iters=100)
    np.testing.assert_allclose(float(spectral_norm_exact(w_bar)), 1.0, rtol=1e-4)
    np.testing.assert_allclose(float(sigma), float(spectral_norm_exact(kernel)), rtol=1e-4)


def test_spectral_dense_u_is_mutable_and_converges_one_step_per_call(key):
    layer = SpectralDense(6)
    x = jax.random.normal(key, (3, 10))
    variables = layer.init(key, x)
    assert set(variables) == {"params", SPECTRAL}
    kernel = variables["params"]["kernel"]
    exact = float(spectral_norm_exact(kernel))
    apply = jax.jit(lambda v: layer.apply(v, x, update_stats=True, mutable=[SPECTRAL]))
    u_before = variables[SPECTRAL]["u"]
    sigmas = []
    for _ in range(100):
        _, updates = apply(variables)
        variables = {**variables, **updates}
        sigmas.append(float(variables[SPECTRAL]["sigma"]))
    assert not np.allclose(u_before, variables[SPECTRAL]["u"])
    assert sigmas[0] < exact and sigmas[-1] == pytest.approx(exact, rel=1e-3)
    # evaluation (update_stats=False) does not touch u and uses the stored estimate
    y_eval = layer.apply(variables, x)
    expected = x @ (kernel / exact) + variables["params"]["bias"][None]
    np.testing.assert_allclose(y_eval, expected, atol=1e-3)
    with pytest.raises(Exception, match=r"immutable|mutable"):
        layer.apply(variables, x, update_stats=True)


def test_spectral_conv_layer_bound_on_operator_norm(key):
    # the normalised matrix has norm 1; the conv operator's norm is at most
    # sqrt(ceil(k/s)^2) times that (derivations/09-wgan.md)
    layer = SpectralConv(4, kernel_size=4, stride=2, padding=1, num_iters=50)
    x = jax.random.normal(key, (1, 8, 8, 2))
    variables = layer.init(key, x)
    _, updates = layer.apply(variables, x, update_stats=True, mutable=[SPECTRAL])
    variables = {**variables, **updates}
    w_bar = variables["params"]["kernel"] / variables[SPECTRAL]["sigma"]
    np.testing.assert_allclose(float(spectral_norm_exact(w_bar)), 1.0, rtol=1e-3)
    linear = lambda z: strided_conv(z, w_bar, 2, 1)
    transpose = lambda z: jax.vjp(linear, x)[1](z)  # A^T z

    @jax.jit
    def operator_norm(z):  # power iteration on the conv's normal operator A^T A
        def body(_, z):
            z = transpose(linear(z))[0]
            return z / jnp.linalg.norm(z)

        z = jax.lax.fori_loop(0, 200, body, z)
        return jnp.linalg.norm(linear(z))

    op_norm = float(operator_norm(x))
    assert 0.5 < op_norm <= math.sqrt(2 * 2) * (1 + 1e-3)
    bias = variables["params"]["bias"][None, None, None]
    np.testing.assert_allclose(layer.apply(variables, x), linear(x) + bias, atol=1e-4)


def test_spectral_errors():
    with pytest.raises(ValueError, match=r"w must have shape \[out, fan_in\]"):
        power_iteration(jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match=r"u must have shape \(2,\)"):
        power_iteration(jnp.ones((2, 3)), jnp.ones(3))
    with pytest.raises(ValueError, match="num_iters"):
        power_iteration(jnp.ones((2, 3)), jnp.ones(2), 0)
    with pytest.raises(ValueError, match="kernel must have shape"):
        kernel_matrix(jnp.ones(3))
