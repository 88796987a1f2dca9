"""Initialisers: fans, variances and bounds against their formulas, jax's variance_scaling as an
independent reference, and the deep-ReLU variance argument of derivations/02-initialisation.md."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genjax.nn.init import compute_fans, he_normal, he_uniform, xavier_normal, xavier_uniform

RTOL = 1e-5
Z = 5.0  # half-width of the confidence intervals, in standard errors (two-sided p < 1e-6)

shapes = st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple)
gains = st.floats(0.1, 3.0)


def expected_std(name, shape, gain, mode="fan_in"):
    """The formula of each initialiser, written out independently of the module."""
    fan_in, fan_out = compute_fans(shape)
    if name.startswith("xavier"):
        return gain * math.sqrt(2.0 / (fan_in + fan_out))
    return gain / math.sqrt(fan_in if mode == "fan_in" else fan_out)


BUILDERS = {
    "xavier_uniform": lambda gain, mode: xavier_uniform(gain),
    "xavier_normal": lambda gain, mode: xavier_normal(gain),
    "he_uniform": lambda gain, mode: he_uniform(mode, gain),
    "he_normal": lambda gain, mode: he_normal(mode, gain),
}


def test_compute_fans_dense_and_conv():
    assert compute_fans((5, 7)) == (5, 7)
    # Flax conv kernel HWIO: receptive field 3*3 counts towards both fans
    assert compute_fans((3, 3, 16, 32)) == (144, 288)
    # PyTorch OIHW layout
    assert compute_fans((32, 16, 3, 3), in_axis=1, out_axis=0) == (144, 288)


@given(shape=shapes)
def test_compute_fans_receptive_field(shape):
    fan_in, fan_out = compute_fans(shape)
    receptive = math.prod(shape[:-2])
    assert (fan_in, fan_out) == (shape[-2] * receptive, shape[-1] * receptive)
    assert fan_in * fan_out == math.prod(shape) * receptive


@settings(max_examples=10)
@given(
    shape=st.sampled_from([(7, 5), (3, 3, 4, 6), (2, 5, 3)]),  # few shapes: one compile each
    gain=gains,
    mode=st.sampled_from(["fan_in", "fan_out"]),
)
def test_normal_initialisers_match_jax_variance_scaling(shape, gain, mode):
    """jax's (untruncated) variance_scaling with the same key draws the same numbers."""
    key = jax.random.key(1)
    ours = xavier_normal(gain)(key, shape)
    ref = jax.nn.initializers.variance_scaling(gain**2, "fan_avg", "normal")(key, shape)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=1e-7)
    ours = he_normal(mode, gain)(key, shape)
    ref = jax.nn.initializers.variance_scaling(gain**2, mode, "normal")(key, shape)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_empirical_variance_within_confidence_interval(name, mode):
    """Sample mean and variance over 147,456 draws lie within Z standard errors of 0 and σ².

    The standard error of the sample variance is σ² sqrt((κ - 1) / N), with kurtosis κ = 3
    (normal) or 9/5 (uniform).
    """
    shape, gain = (3, 3, 64, 256), 1.3
    w = np.asarray(BUILDERS[name](gain, mode)(jax.random.key(2), shape), np.float64)
    n = w.size
    var = expected_std(name, shape, gain, mode) ** 2
    kurtosis = 3.0 if name.endswith("normal") else 9.0 / 5.0
    assert abs(w.mean()) < Z * math.sqrt(var / n)
    assert abs(w.var() - var) < Z * var * math.sqrt((kurtosis - 1.0) / n)


@pytest.mark.parametrize("name", ["xavier_uniform", "he_uniform"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_uniform_bound_is_sharp(name, mode):
    """|w| <= b = sqrt(3) σ, and the largest |w| of N draws is within 20 b / N of b
    (P(max |w| < b (1 - 20/N)) = (1 - 20/N)^N ≈ e^-20)."""
    shape, gain = (200, 300), 0.7
    w = np.abs(np.asarray(BUILDERS[name](gain, mode)(jax.random.key(3), shape)))
    bound = math.sqrt(3.0) * expected_std(name, shape, gain, mode)
    if name == "xavier_uniform":
        assert bound == pytest.approx(gain * math.sqrt(6.0 / 500.0), rel=RTOL)
    assert w.max() <= bound * (1 + RTOL)
    assert w.max() >= bound * (1 - 20.0 / w.size)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_usable_as_flax_kernel_init(name):
    init = BUILDERS[name](1.0, "fan_in")
    dense = nn.Dense(32, kernel_init=init).init(jax.random.key(0), jnp.ones((1, 16)))
    conv_init = nn.Conv(8, (3, 3), kernel_init=init).init  # traced only: no conv is compiled
    conv = jax.eval_shape(conv_init, jax.random.key(0), jnp.ones((1, 5, 5, 4)))
    assert dense["params"]["kernel"].shape == (16, 32)
    assert conv["params"]["kernel"].shape == (3, 3, 4, 8)
    assert dense["params"]["kernel"].dtype == jnp.float32
    assert init(jax.random.key(0), (4, 4), jnp.bfloat16).dtype == jnp.bfloat16


def relu_mlp_activations(key, init, depth=20, width=1024, batch=256):
    """Mean square of the post-ReLU activations of each layer of a bias-free ReLU MLP."""
    x_key, *keys = jax.random.split(key, depth + 1)
    x = jax.random.normal(x_key, (batch, width))
    out = []
    h = x
    for k in keys:
        h = jax.nn.relu(h @ init(k, (width, width)))
        out.append(float(jnp.mean(h**2)))
    return float(jnp.mean(x**2)), np.array(out)


def test_he_init_keeps_relu_activation_variance_over_20_layers(key):
    """E[relu(z)²] = Var(z)/2 and Var(z_{l+1}) = n Var(W) E[a_l²]: with Var W = 2/n the mean
    square of the activations stays at that of the input (here within a factor 2)."""
    x_sq, act_sq = relu_mlp_activations(key, he_normal())
    ratios = act_sq / x_sq
    assert np.all((ratios > 0.5) & (ratios < 2.0)), ratios


def test_badly_scaled_init_collapses_relu_activations(key):
    """Without the ReLU factor 2 (Xavier's Var W = 1/n on square layers) each layer halves the
    mean square: after 20 layers it is 2^-20 ≈ 1e-6 of the input, as derived."""
    x_sq, act_sq = relu_mlp_activations(key, xavier_normal())
    ratio = act_sq[-1] / x_sq
    assert ratio < 1e-4
    assert 0.1 * 2.0**-20 < ratio < 10 * 2.0**-20  # the order of magnitude the formula gives


def test_he_fan_out_keeps_backward_gradient_variance(key):
    """Backward pass: Var(∂/∂a_l) = n_out Var(W) E[relu'(z)] Var(∂/∂a_{l+1}) = Var(∂/∂a_{l+1})
    with Var W = 2/n_out; the gradient at the input keeps the cotangent's mean square."""
    depth, width, batch = 20, 256, 512
    x_key, g_key, *keys = jax.random.split(key, depth + 2)
    weights = [he_normal("fan_out")(k, (width, width)) for k in keys]

    def net(x):
        for w in weights:
            x = jax.nn.relu(x) @ w
        return x

    x = jax.random.normal(x_key, (batch, width))
    cotangent = jax.random.normal(g_key, (batch, width))
    _, vjp = jax.vjp(net, x)
    (grad,) = vjp(cotangent)
    # the first layer sees relu(x) too, so every layer carries the factor 1/2 · 2 = 1
    ratio = float(jnp.mean(grad**2) / jnp.mean(cotangent**2))
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: xavier_uniform(gain=0.0), "gain"),
        (lambda: he_normal(gain=-1.0), "gain"),
        (lambda: he_uniform(mode="fan_avg"), "mode"),
        (lambda: compute_fans((5,)), "at least 2 axes"),
        (lambda: compute_fans((5, 0)), "positive"),
        (lambda: compute_fans((5, 5), in_axis=0, out_axis=-2), "must differ"),
        (lambda: compute_fans((5, 5), in_axis=3), "in_axis"),
        (lambda: he_normal()(jax.random.key(0), (3,)), "at least 2 axes"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_integer_dtype_raises():
    with pytest.raises(TypeError, match="dtype"):
        xavier_normal()(jax.random.key(0), (3, 3), jnp.int32)
