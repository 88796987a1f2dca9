"""Tests for genjax.flows against autodiff Jacobians, closed forms and the claims of
derivations/10-realnvp.md.

Every layer type is checked for invertibility in both directions, for ``logdet_fwd ==
-logdet_inv``, and for its log-det against ``slogdet(jax.jacrev(f)(x))`` on small inputs. The
couplings' conditioners are given random (not zero-initialised) weights first, so the maps are
far from the identity and a wrong log-det cannot pass. The full model's density is checked to
integrate to one by quadrature, and an affine flow trained on Gaussian data to reach the closed
form Gaussian maximum likelihood.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from genjax import data as data_lib
from genjax import flows as F
from genjax import metrics

RTOL = 1e-5
ATOL = 1e-5
INVERSE_ATOL = 1e-4  # float32 round trips through several exp/tanh layers
LOGDET_ATOL = 1e-3  # float32 slogdet of an autodiff Jacobian (up to 32 x 32)
QUADRATURE_ATOL = 1e-2  # Riemann sum of a smooth density on a 0.02-spaced grid
GAUSSIAN_FIT_ATOL = 2e-3  # nats per point the trained affine flow may fall short of the MLE
# The tanh of the log-scale lets k ~ 30 parameters bend the flow away from a Gaussian; fit on
# N = 8192 points they can raise the training likelihood above the Gaussian MLE by about
# k / (2 N) ~ 2e-3 nats (the chi-square / 2N excess of a likelihood-ratio test); 3x that.
GAUSSIAN_OVERFIT = 6e-3
PERTURB = 0.3  # std of the noise added to every parameter so no layer is the identity


def _perturb(params, key, scale=PERTURB):
    """Every parameter plus N(0, scale²) noise: conditioners leave their zero initialisation."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, noisy)


def _jacobian_logdet(f, x):
    """``slogdet`` of the autodiff Jacobian of ``f`` at every example of ``x [batch, *event]``.

    ``f`` maps a batch to ``(y, log_det)``; the Jacobian of one example's map is taken on the
    flattened event, ``[D, D]``. Returns ``[batch]``; a singular Jacobian fails the test.
    """
    shape, d = x.shape[1:], math.prod(x.shape[1:])

    def one(v):  # v [D]
        g = lambda u: jnp.reshape(f(jnp.reshape(u, (1, *shape)))[0], (d,))  # [D]
        return jnp.linalg.slogdet(jax.jacrev(g)(v))  # sign, log|det| of [D, D]

    sign, logdet = jax.vmap(one)(jnp.reshape(x, (-1, d)))
    assert np.all(np.asarray(sign) != 0.0)
    return logdet


def _vector_conditioner(key, d):
    """A fixed nonlinear conditioner ``b * x -> (shift, log_scale)`` for vector couplings."""
    k1, k2 = jax.random.split(key)
    w1, w2 = jax.random.normal(k1, (d, d)), jax.random.normal(k2, (d, d))

    def conditioner(masked):
        shift = jnp.tanh(masked @ w1)  # [*batch, d]
        log_scale = 0.8 * jnp.tanh(masked @ w2)  # [*batch, d]
        return shift, log_scale

    return conditioner


def _module_and_params(module, key, x, method=None, scale=PERTURB):
    params = module.init(key, x, method=method)
    return _perturb(params, jax.random.fold_in(key, 1), scale)


_JITTED = {}


def _jitted(module, method):
    """``jit(apply)`` of ``module.method`` with params as an argument: one compile per module."""
    if (id(module), method) not in _JITTED:
        fn = jax.jit(lambda params, v: module.apply(params, v, method=method))
        _JITTED[id(module), method] = (module, fn)  # keeps the module alive, so its id
    return _JITTED[id(module), method][1]


def _check_bijector(module, params, x, atol=INVERSE_ATOL):
    """Round trips both ways, batch-shaped log-dets, fwd = -inv, log-det = slogdet(Jacobian)."""
    fwd = functools.partial(_jitted(module, "forward_and_log_det"), params)
    inv = functools.partial(_jitted(module, "inverse_and_log_det"), params)
    y, ld_fwd = fwd(x)
    x_back, ld_inv = inv(y)
    batch = x.shape[:1]
    assert ld_fwd.shape == batch and ld_inv.shape == batch
    np.testing.assert_allclose(x_back, x, atol=atol)
    np.testing.assert_allclose(ld_fwd, -ld_inv, atol=atol)
    y_new = y + 0.1 * jax.random.normal(jax.random.key(99), y.shape)  # not an output of fwd
    np.testing.assert_allclose(fwd(inv(y_new)[0])[0], y_new, atol=atol)
    np.testing.assert_allclose(ld_fwd, _jacobian_logdet(fwd, x), atol=LOGDET_ATOL)
    np.testing.assert_allclose(ld_inv, _jacobian_logdet(inv, y), atol=LOGDET_ATOL)
    return y, ld_fwd


# ----------------------------------------------------------------------------- pure maps


@given(hnp.arrays(np.float32, (3, 4), elements=st.floats(-3, 3, width=32)))
def test_affine_forward_inverse_and_logdet(x):
    key = jax.random.key(0)
    shift, log_scale = jax.random.normal(key, (2, 3, 4))
    y, ld = F.affine_forward(x, shift, log_scale, 1)
    np.testing.assert_allclose(y, x * np.exp(log_scale) + shift, rtol=RTOL, atol=ATOL)
    x_back, ld_inv = F.affine_inverse(y, shift, log_scale, 1)
    np.testing.assert_allclose(x_back, x, atol=INVERSE_ATOL)
    np.testing.assert_allclose(ld, -ld_inv, rtol=RTOL)
    y_again, _ = F.affine_forward(F.affine_inverse(x, shift, log_scale, 1)[0], shift, log_scale, 1)
    np.testing.assert_allclose(y_again, x, atol=INVERSE_ATOL)  # forward(inverse(y)) == y
    f = lambda v: F.affine_forward(v, shift[:1], log_scale[:1], 1)
    np.testing.assert_allclose(ld[:1], _jacobian_logdet(f, x[:1]), atol=LOGDET_ATOL)


def test_tanh_log_scale_bounded_and_identity_at_zero():
    raw = jnp.linspace(-50.0, 50.0, 101)
    bound = jnp.full_like(raw, 1.5)
    s = F.tanh_log_scale(raw, bound)
    assert float(jnp.max(jnp.abs(s))) <= 1.5
    assert float(F.tanh_log_scale(jnp.zeros(1), jnp.ones(1))[0]) == 0.0
    slope = jax.grad(lambda h: F.tanh_log_scale(h, jnp.float32(2.0)))(jnp.float32(0.0))
    np.testing.assert_allclose(slope, 2.0, rtol=RTOL)


@settings(max_examples=10)
@given(
    hnp.arrays(np.float32, (2, 6), elements=st.floats(-3, 3, width=32)),
    st.integers(0, 1),
)
def test_coupling_vector_inverse_and_logdet(x, parity):
    mask = F.checkerboard_mask((6,), parity)
    cond = _vector_conditioner(jax.random.key(1), 6)
    y, ld = F.coupling_forward(x, mask, cond, 1)
    np.testing.assert_array_equal(np.asarray(y)[:, np.asarray(mask) == 1], x[:, mask == 1])
    x_back, ld_inv = F.coupling_inverse(y, mask, cond, 1)
    np.testing.assert_allclose(x_back, x, atol=INVERSE_ATOL)
    np.testing.assert_allclose(ld, -ld_inv, rtol=RTOL, atol=ATOL)
    y_again, _ = F.coupling_forward(F.coupling_inverse(x, mask, cond, 1)[0], mask, cond, 1)
    np.testing.assert_allclose(y_again, x, atol=INVERSE_ATOL)  # forward(inverse(y)) == y
    f = lambda v: F.coupling_forward(v, mask, cond, 1)
    g = lambda v: F.coupling_inverse(v, mask, cond, 1)
    np.testing.assert_allclose(ld, _jacobian_logdet(f, x), atol=LOGDET_ATOL)
    np.testing.assert_allclose(ld_inv, _jacobian_logdet(g, y), atol=LOGDET_ATOL)


def test_coupling_log_det_is_sum_of_transformed_log_scales(key):
    """The triangular Jacobian's log-det is the sum of s over the transformed half only."""
    x = jax.random.normal(key, (4, 6))
    mask = F.checkerboard_mask((6,), 1)
    cond = _vector_conditioner(jax.random.key(2), 6)
    _, ld = F.coupling_forward(x, mask, cond, 1)
    _, log_scale = cond(mask[None, :] * x)
    np.testing.assert_allclose(ld, jnp.sum(log_scale[:, ::2], axis=1), rtol=RTOL, atol=ATOL)


def test_channel_coupling_masking_equals_slicing(key):
    """Mask form with a channel mask == RealNVP's split form on channel slices."""
    x = jax.random.normal(key, (2, 4, 4, 6))
    w = jax.random.normal(jax.random.key(3), (6, 12))

    def conditioner(masked):  # a 1x1 "convolution": [*, 6] -> shift, log-scale [*, 6]
        out = jnp.tanh(jnp.einsum("bhwc,cd->bhwd", masked, w))  # [2, 4, 4, 12]
        return out[..., :6], out[..., 6:]

    y, ld = F.coupling_forward(x, F.channel_mask((4, 4, 6)), conditioner, 3)
    x1, x2 = x[..., :3], x[..., 3:]
    padded = jnp.concatenate([x1, jnp.zeros_like(x2)], axis=-1)  # what the conditioner sees
    shift, log_scale = conditioner(padded)
    y2 = x2 * jnp.exp(log_scale[..., 3:]) + shift[..., 3:]
    np.testing.assert_allclose(y, jnp.concatenate([x1, y2], -1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ld, jnp.sum(log_scale[..., 3:], axis=(1, 2, 3)), rtol=RTOL)


@given(hnp.arrays(np.float32, (2, 3, 2), elements=st.floats(2**-10, 1 - 2**-10, width=32)))
def test_logit_inverse_and_logdet(x):
    for alpha in (0.0, 0.05):
        y, ld = F.logit_forward(x, alpha, 2)
        p = alpha + (1 - 2 * alpha) * x.astype(np.float64)
        np.testing.assert_allclose(y, np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)
        x_back, ld_inv = F.logit_inverse(y, alpha, 2)
        np.testing.assert_allclose(x_back, x, atol=INVERSE_ATOL)
        np.testing.assert_allclose(ld, -ld_inv, rtol=1e-4, atol=1e-3)
        hand = np.sum(np.log(1 - 2 * alpha) - np.log(p) - np.log1p(-p), axis=(1, 2))
        np.testing.assert_allclose(ld, hand, rtol=1e-4, atol=1e-3)
        y_real = 4.0 * (x - 0.5)  # sigmoid(y) in (0.12, 0.88): inside (alpha, 1 - alpha)
        x_of_y, _ = F.logit_inverse(y_real, alpha, 2)
        y_again, _ = F.logit_forward(x_of_y, alpha, 2)
        np.testing.assert_allclose(y_again, y_real, rtol=1e-3, atol=1e-3)
    f = lambda v: F.logit_forward(v, 0.05, 2)
    np.testing.assert_allclose(f(x)[1], _jacobian_logdet(f, x), rtol=1e-4, atol=1e-3)


def test_logit_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match=r"x must lie in \(0, 1\)"):
        F.logit_forward(jnp.array([[0.0, 0.5]]), 0.0, 1)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        F.logit_forward(jnp.array([[1.5, 0.5]]), 0.05, 1)
    with pytest.raises(ValueError, match="alpha must be in"):
        F.logit_forward(jnp.array([[0.5]]), 0.5, 1)


# ----------------------------------------------------------------------------- masks, squeeze


def test_checkerboard_mask_matches_loop():
    for parity in (0, 1):
        m = np.asarray(F.checkerboard_mask((4, 6, 3), parity))
        for h in range(4):
            for w in range(6):
                assert np.all(m[h, w] == float((h + w + parity) % 2 == 0))
        np.testing.assert_array_equal(F.checkerboard_mask((4,), parity), [1 - parity, parity] * 2)
    total = F.checkerboard_mask((4, 6, 3), 0) + F.checkerboard_mask((4, 6, 3), 1)
    np.testing.assert_array_equal(total, np.ones((4, 6, 3)))
    np.testing.assert_array_equal(F.channel_mask((2, 2, 4), 1)[1, 0], [0.0, 0.0, 1.0, 1.0])


def test_masks_reject_odd_sizes():
    with pytest.raises(ValueError, match="checkerboard split needs even"):
        F.checkerboard_mask((5,))
    with pytest.raises(ValueError, match="checkerboard split needs even"):
        F.checkerboard_mask((4, 3, 1))
    with pytest.raises(ValueError, match="channel split needs an even number"):
        F.channel_mask((4, 4, 3))
    with pytest.raises(ValueError, match="parity must be 0 or 1"):
        F.checkerboard_mask((4,), 2)


@given(hnp.arrays(np.float32, (2, 4, 6, 3), elements=st.floats(-5, 5, width=32)))
def test_squeeze_matches_loop_and_inverts(x):
    y = np.asarray(F.squeeze(x))
    assert y.shape == (2, 2, 3, 12)
    for i in range(2):
        for j in range(3):
            for a in range(2):
                for b in range(2):
                    slot = 2 * a + b
                    np.testing.assert_array_equal(
                        y[:, i, j, 3 * slot : 3 * slot + 3], x[:, 2 * i + a, 2 * j + b]
                    )
    np.testing.assert_array_equal(F.unsqueeze(y), x)
    np.testing.assert_array_equal(F.squeeze(F.unsqueeze(y)), y)


def test_squeeze_is_volume_preserving(key):
    x = jax.random.normal(key, (2, 4, 4, 1))
    f = lambda v: (F.squeeze(v), None)
    np.testing.assert_allclose(_jacobian_logdet(f, x), 0.0, atol=ATOL)


def test_squeeze_rejects_unsqueezable_sizes():
    with pytest.raises(ValueError, match="cannot squeeze spatial size 5x4"):
        F.squeeze(jnp.zeros((1, 5, 4, 1)))
    with pytest.raises(ValueError, match="cannot unsqueeze 6 channels"):
        F.unsqueeze(jnp.zeros((1, 2, 2, 6)))
    with pytest.raises(ValueError, match="must be"):
        F.squeeze(jnp.zeros((4, 4)))


# ----------------------------------------------------------------------------- bijector modules


def test_actnorm_data_init_and_logdet(key):
    x = 3.0 + 2.0 * jax.random.normal(key, (64, 4, 4, 2))
    module = F.ActNorm(event_ndims=3)
    params = module.init(key, x)
    y, ld = module.apply(params, x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, rtol=1e-4)
    log_scale = params["params"]["log_scale"]
    np.testing.assert_allclose(ld, jnp.full((64,), 16 * jnp.sum(log_scale)), rtol=RTOL)
    _check_bijector(module, _perturb(params, key), x[:2])


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
def test_affine_coupling_image_layer(key, mask):
    x = jax.random.normal(key, (2, 4, 4, 2))
    module = F.AffineCoupling(F.ResNetConditioner(4, 1), mask, 1, event_ndims=3)
    params = _module_and_params(module, key, x)
    y, _ = _check_bijector(module, params, x)
    kept = np.asarray(F.make_mask(mask, (4, 4, 2), 1)) == 1
    np.testing.assert_array_equal(np.asarray(y)[:, kept], np.asarray(x)[:, kept])
    assert not np.allclose(np.asarray(y)[:, ~kept], np.asarray(x)[:, ~kept])


def test_affine_coupling_rejects_bad_conditioner(key):
    x = jax.random.normal(key, (3, 4))
    wrong = F.AffineCoupling(nn.Dense(3), "checkerboard", 0, event_ndims=1)
    with pytest.raises(ValueError, match="the conditioner must return shape"):
        wrong.init(key, x)


def test_chain_adds_logdets_and_inverts_in_reverse(key):
    x = jax.random.normal(key, (3, 4))
    layers = [
        F.ActNorm(1),
        F.AffineCoupling(F.MLPConditioner(8, 1), "checkerboard", 0, 1),
        F.AffineCoupling(F.MLPConditioner(8, 1), "checkerboard", 1, 1),
    ]
    chain = F.Chain(layers)
    params = _module_and_params(chain, key, x)
    _check_bijector(chain, params, x)
    h, total = x, 0.0
    for i, layer in enumerate(layers):
        h, ld = layer.apply({"params": params["params"][f"layers_{i}"]}, h)
        total = total + ld
    y, ld_chain = chain.apply(params, x)
    np.testing.assert_allclose(y, h, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ld_chain, total, rtol=RTOL, atol=ATOL)


def test_coupling_stack_equals_chain(key):
    x = jax.random.normal(key, (3, 4))
    block = F.CouplingBlock(F.MLPConditioner(8, 1), "checkerboard", 1, True)
    stack = F.CouplingStack(block, 3, 1)
    params = _module_and_params(stack, key, x)
    stacked = params["params"]["layers"]
    apply_block = jax.jit(block.apply, static_argnames="inverse")
    h, total = x, 0.0
    for k in range(3):  # the chain, forward
        h, ld = apply_block(jax.tree.map(lambda p, k=k: p[k], stacked), h, parity=k % 2)
        total = total + ld
    y, ld_stack = _jitted(stack, "forward_and_log_det")(params, x)
    np.testing.assert_allclose(y, h, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ld_stack, total, rtol=RTOL, atol=ATOL)
    for k in reversed(range(3)):  # the chain's inverse runs the blocks backwards
        layer = jax.tree.map(lambda p, k=k: p[k], stacked)
        h, _ = apply_block(layer, h, inverse=True, parity=k % 2)
    x_back, ld_inv = _jitted(stack, "inverse_and_log_det")(params, y)
    np.testing.assert_allclose(x_back, h, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(x_back, x, atol=INVERSE_ATOL)
    np.testing.assert_allclose(ld_inv, -total, rtol=RTOL, atol=ATOL)


def test_factor_out_keeps_first_half(key):
    x = jax.random.normal(key, (2, 2, 2, 4))
    module = F.FactorOut(F.ActNorm(3))
    params = _module_and_params(module, key, x)
    y, _ = _check_bijector(module, params, x)
    np.testing.assert_array_equal(y[..., :2], x[..., :2])


def test_parameter_free_bijectors_logit_squeeze_inverse(key):
    """The Logit and Squeeze layers, and Inverse of each, as bijector modules: round trips,
    fwd = -inv and log-det = slogdet(Jacobian), like every other layer."""
    x = jax.random.uniform(key, (2, 4, 4, 1), minval=0.02, maxval=0.98)
    for module in (F.Logit(0.05, 3), F.Squeeze(), F.Inverse(F.ActNorm(3))):
        params = module.init(key, x)
        params = _perturb(params, key) if params else params
        _check_bijector(module, params, x)
    squeezed = F.squeeze(x)  # [2, 2, 2, 4]
    y, ld = F.Inverse(F.Squeeze()).apply({}, squeezed)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(ld, np.zeros(2))
    z = F.logit_forward(x, 0.05, 3)[0]
    x_back, ld_inv = F.Inverse(F.Logit(0.05, 3)).apply({}, z)
    np.testing.assert_allclose(x_back, x, atol=INVERSE_ATOL)
    np.testing.assert_allclose(ld_inv, -F.logit_forward(x, 0.05, 3)[1], rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- RealNVP


@pytest.fixture(scope="module")
def vector_flow():
    model = F.RealNVP((2,), num_couplings=4, features=16, depth=2)
    x = jax.random.normal(jax.random.key(0), (256, 2))
    params = _module_and_params(model, jax.random.key(1), x)
    return model, params


@pytest.fixture(scope="module")
def image_flow():
    model = F.RealNVP((4, 4, 1), num_couplings=1, features=4, depth=0, logit_alpha=0.05)
    x = jax.random.uniform(jax.random.key(0), (8, 4, 4, 1))
    params = _module_and_params(model, jax.random.key(1), x, scale=0.1)
    return model, params


@settings(max_examples=5)
@given(hnp.arrays(np.float32, (3, 2), elements=st.floats(-3, 3, width=32)))
def test_realnvp_vector_inverse_and_logdet(vector_flow, x):
    model, params = vector_flow
    _check_bijector(model, params, x)


def test_realnvp_image_inverse_and_logdet(image_flow):
    model, params = image_flow
    x = jax.random.uniform(jax.random.key(5), (1, 4, 4, 1), minval=0.05, maxval=0.95)
    _check_bijector(model, params, x)
    z = model.apply(params, x, method="forward")
    assert z.shape == x.shape


@settings(max_examples=5)
@given(hnp.arrays(np.float32, (2, 4, 4, 1), elements=st.floats(2**-7, 1 - 2**-7, width=32)))
def test_realnvp_image_round_trips_on_drawn_inputs(image_flow, x):
    """inverse(forward(x)) == x and forward(inverse(z)) == z for the multi-scale model."""
    model, params = image_flow
    fwd = _jitted(model, "forward_and_log_det")
    inv = _jitted(model, "inverse_and_log_det")
    z, ld = fwd(params, x)
    x_back, ld_inv = inv(params, z)
    np.testing.assert_allclose(x_back, x, atol=INVERSE_ATOL)
    np.testing.assert_allclose(ld, -ld_inv, rtol=RTOL, atol=1e-3)
    z_new = np.asarray(z) + 0.1
    np.testing.assert_allclose(fwd(params, inv(params, z_new)[0])[0], z_new, atol=1e-3)


def test_realnvp_log_prob_is_base_plus_logdet(image_flow):
    model, params = image_flow
    x = jax.random.uniform(jax.random.key(6), (3, 4, 4, 1), minval=0.05, maxval=0.95)
    z, ld = _jitted(model, "forward_and_log_det")(params, x)
    base = jnp.sum(-0.5 * z**2 - 0.5 * math.log(2 * math.pi), axis=(1, 2, 3))
    log_prob = _jitted(model, "log_prob")(params, x)
    np.testing.assert_allclose(log_prob, base + ld, rtol=RTOL, atol=ATOL)


def test_realnvp_same_with_and_without_jit(vector_flow):
    model, params = vector_flow
    x = jax.random.normal(jax.random.key(6), (3, 2))
    eager = model.apply(params, x)
    np.testing.assert_allclose(_jitted(model, "log_prob")(params, x), eager, rtol=RTOL, atol=ATOL)
    z = model.apply(params, x, method="forward")
    jitted_z = _jitted(model, "forward_and_log_det")(params, x)[0]
    np.testing.assert_allclose(jitted_z, z, rtol=RTOL, atol=ATOL)


def test_realnvp_sample_is_inverse_of_scaled_normal(vector_flow):
    model, params = vector_flow
    key = jax.random.key(7)
    x = F.sample(key, model, params, 5, temperature=0.7)
    z = 0.7 * jax.random.normal(key, (5, 2))
    np.testing.assert_allclose(x, model.apply(params, z, method="inverse"), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(model.apply(params, x, method="forward"), z, atol=INVERSE_ATOL)
    with pytest.raises(ValueError, match="n must be a positive int"):
        F.sample(key, model, params, 0)


def test_realnvp_density_integrates_to_one(vector_flow):
    model, params = vector_flow
    ticks = np.arange(-10.0, 10.0, 0.02, dtype=np.float32) + 0.01  # midpoints
    gx, gy = np.meshgrid(ticks, ticks)
    grid = np.stack([gx.ravel(), gy.ravel()], 1)  # [1000², 2]
    log_p = jax.jit(lambda p, v: model.apply(p, v))(params, grid)
    mass = float(jnp.sum(jnp.exp(log_p))) * 0.02**2
    np.testing.assert_allclose(mass, 1.0, atol=QUADRATURE_ATOL)


def test_affine_flow_recovers_gaussian_log_likelihood(key):
    """depth=0 conditioners are linear, so with the log-scale's input weights at 0 every coupling
    is a shear and the flow an affine map: the family holds every Gaussian. Trained by maximum
    likelihood it reaches the closed-form Gaussian maximum likelihood of the same points,
    -D/2 (1 + log 2 pi) - 1/2 log det(Sigma_hat), and exceeds it by no more than its few
    non-affine parameters can overfit."""
    cov = np.array(
        [[2.0, 1.2, 0.3, 0.0], [1.2, 1.5, -0.4, 0.2], [0.3, -0.4, 0.8, 0.1], [0.0, 0.2, 0.1, 0.5]]
    )
    mean = jnp.array([1.0, -2.0, 0.5, 3.0])
    x = jax.random.multivariate_normal(key, mean, cov, (8192,)).astype(jnp.float32)
    d = x.shape[1]
    emp_cov = np.cov(np.asarray(x, np.float64), rowvar=False, bias=True)
    mle = -0.5 * d * (1 + math.log(2 * math.pi)) - 0.5 * np.linalg.slogdet(emp_cov)[1]

    model = F.RealNVP((d,), num_couplings=4, features=1, depth=0)
    params = model.init(jax.random.key(1), x)
    tx = optax.adam(0.01)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            grads = jax.grad(lambda p: -jnp.mean(model.apply(p, x)))(params)
            updates, opt_state = tx.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, (params, tx.init(params)), None, length=3000)[0][0]

    fitted = float(jnp.mean(model.apply(train(params), x)))
    assert mle - GAUSSIAN_FIT_ATOL < fitted < mle + GAUSSIAN_OVERFIT


def test_bits_per_dim_hand_computation():
    log_p = jnp.array([-100.0, 0.0])
    np.testing.assert_allclose(
        metrics.bits_per_dim(log_p, 64, 17),
        [100 / (64 * math.log(2)) + math.log2(17), math.log2(17)],
    )
    np.testing.assert_allclose(metrics.bits_per_dim(log_p, 64), [100 / (64 * math.log(2)), 0.0])
    # a density constant on each dequantisation cell: bpd = cross-entropy of the discrete law
    probs = np.array([0.5, 0.25, 0.25])  # P(k) over L = 3 levels, D = 1
    k = np.array([0, 1, 2, 0])
    log_density = np.log(probs[k] * 3)  # p(y) = P(k) * L on cell k
    bpd = metrics.bits_per_dim(jnp.asarray(log_density), 1, 3)
    np.testing.assert_allclose(bpd, -np.log2(probs[k]), rtol=RTOL)
    with pytest.raises(ValueError, match="num_dims must be a positive int"):
        metrics.bits_per_dim(log_p, 0)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        metrics.bits_per_dim(log_p, 4, 1)


def test_dequantize_matches_formula_and_stays_in_cell(key):
    """genjax.data.dequantize: y = (round(16 x) + u) / 17 with u the key's uniform draw."""
    x = jnp.round(jax.random.uniform(key, (50, 8, 8, 1)) * 16) / 16
    y = data_lib.dequantize(jax.random.key(3), x, 17)
    u = jax.random.uniform(jax.random.key(3), x.shape)
    np.testing.assert_array_equal(y, (jnp.round(x * 16) + u) / 17)
    assert float(y.min()) >= 0.0 and float(y.max()) < 1.0
    np.testing.assert_array_equal(jnp.floor(y * 17), jnp.round(x * 16))
    half = data_lib.dequantize(None, x, 17, noise=jnp.full(x.shape, 0.5))
    np.testing.assert_allclose(half, (jnp.round(x * 16) + 0.5) / 17, rtol=RTOL)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        data_lib.dequantize(key, x, 1)
    with pytest.raises(ValueError, match=r"shapes must match: x \(50, 8, 8, 1\), noise \(8,\)"):
        data_lib.dequantize(None, x, 17, noise=jnp.zeros(8))


def test_realnvp_rejects_bad_shapes(key):
    with pytest.raises(ValueError, match="checkerboard split needs even"):
        F.RealNVP((3,)).init(key, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"cannot squeeze spatial size 6x6 2 time"):
        F.RealNVP((6, 6, 1), num_scales=3).init(key, jnp.zeros((2, 6, 6, 1)))
    with pytest.raises(ValueError, match="cannot squeeze spatial size 6x6 1 time"):
        F.RealNVP((6, 6, 1), num_scales=2).init(key, jnp.zeros((2, 6, 6, 1)))
    with pytest.raises(ValueError, match="checkerboard split needs even"):
        F.RealNVP((5, 4, 1), num_scales=1).init(key, jnp.zeros((2, 5, 4, 1)))
    with pytest.raises(ValueError, match=r"x must be \[batch, 4, 4, 1\]"):
        F.RealNVP((4, 4, 1)).init(key, jnp.zeros((2, 4, 4, 2)))
    with pytest.raises(ValueError, match="x must lie in"):
        F.RealNVP((4, 4, 1), logit_alpha=0.0).init(key, jnp.ones((2, 4, 4, 1)))
