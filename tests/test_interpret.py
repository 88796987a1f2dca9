"""Interpretation methods against the hand derivations of derivations/15-interpretation.md:
saliency of a linear model, the ReLU rules of guided backprop and deconvnet on a hand example
and on a two-layer network, Grad-CAM = ReLU(CAM) / hw for a GAP + linear head, guided Grad-CAM
as a product, and activation maximisation's closed-form optimum."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genjax import segmentation
from genjax.classifier import CNNClassifier, DigitsCNN
from genjax.interpret import (
    SplitModel,
    activation_maximisation,
    cam,
    deconv_relu,
    deconvnet,
    grad_cam,
    guided_backprop,
    guided_grad_cam,
    guided_relu,
    saliency,
    saliency_map,
    upsample,
)

RTOL = 1e-5
ATOL = 1e-5


def _linear_apply(p, x, relu=jax.nn.relu):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"][None, :]  # [N, classes]


def _linear(seed: int, shape=(4, 4, 2), classes: int = 3):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=(int(np.prod(shape)), classes)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(classes,)), jnp.float32)
    return _linear_apply, {"w": w, "b": b}


def _two_layer_apply(p, x, relu=jax.nn.relu):
    return relu(x.reshape(x.shape[0], -1) @ p["w1"]) @ p["w2"]  # [N, classes]


def _two_layer(seed: int, shape=(3, 3, 1), hidden: int = 16, classes: int = 4):
    rng = np.random.default_rng(seed)
    params = {
        "w1": jnp.asarray(rng.normal(size=(int(np.prod(shape)), hidden)), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(hidden, classes)), jnp.float32),
    }
    return _two_layer_apply, params


@functools.cache
def _cnn(seed: int = 0, shape=(8, 8, 1)) -> CNNClassifier:
    """A small random-weight DigitsCNN (the identities hold for any weights)."""
    module = DigitsCNN(num_classes=10, widths=(4, 6), strides=(1, 2))
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *shape)))["params"]
    rng = np.random.default_rng(seed)  # numpy draws: no initialiser to compile
    params = jax.tree.map(
        lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), jnp.float32), shapes
    )
    return CNNClassifier(module, params, shape)


@settings(max_examples=10)
@given(st.integers(0, 2**16), st.integers(0, 2))
def test_saliency_equals_the_linear_models_weights(seed, target):
    """closed form: d(w_c . x + b_c)/dx = w_c, whatever x."""
    apply_fn, params = _linear(seed)
    x = jax.random.normal(jax.random.key(seed), (5, 4, 4, 2))
    grad = saliency(apply_fn, params, x, target)
    expected = jnp.broadcast_to(params["w"][:, target].reshape(4, 4, 2), x.shape)
    np.testing.assert_allclose(grad, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(saliency_map(grad), jnp.max(jnp.abs(expected), -1), rtol=RTOL)


def test_saliency_per_example_targets_and_jit():
    """identity: each example's gradient is for its own target; jit gives the same numbers."""
    apply_fn, params = _linear(1)
    x = jnp.ones((3, 4, 4, 2))
    target = jnp.array([2, 0, 1])
    grad = saliency(apply_fn, params, x, target)
    for n in range(3):
        np.testing.assert_allclose(grad[n].ravel(), params["w"][:, int(target[n])], rtol=RTOL)
    jitted = jax.jit(lambda p, v, t: saliency(apply_fn, p, v, t))(params, x, target)
    np.testing.assert_allclose(jitted, grad, rtol=RTOL, atol=ATOL)


def test_guided_relu_rule_on_a_hand_example():
    """closed form: upstream R = (5, -4, 6, 7) at inputs (-1, 2, 3, 0): plain ReLU passes
    (0, -4, 6, 0), guided (0, 0, 6, 0), deconvnet (5, 0, 6, 7)."""
    x = jnp.array([-1.0, 2.0, 3.0, 0.0])
    upstream = jnp.array([5.0, -4.0, 6.0, 7.0])
    for relu, expected in (
        (jax.nn.relu, [0.0, -4.0, 6.0, 0.0]),
        (guided_relu, [0.0, 0.0, 6.0, 0.0]),
        (deconv_relu, [5.0, 0.0, 6.0, 7.0]),
    ):
        _, vjp = jax.vjp(relu, x)
        np.testing.assert_array_equal(vjp(upstream)[0], expected)
        np.testing.assert_array_equal(relu(x), [0.0, 2.0, 3.0, 0.0])


@settings(max_examples=10)
@given(st.integers(0, 2**16), st.integers(0, 3))
def test_guided_backprop_differs_from_the_gradient_only_where_the_rule_says(seed, target):
    """closed form: for y = W2^T relu(W1^T x), the plain gradient is W1 (1[h > 0] * W2[:, c]),
    guided backprop W1 (1[h > 0] * max(W2[:, c], 0)), deconvnet W1 max(W2[:, c], 0)."""
    apply_fn, params = _two_layer(seed)
    x = jax.random.normal(jax.random.key(seed), (2, 3, 3, 1))
    h = x.reshape(2, -1) @ params["w1"]  # [2, hidden] pre-activations
    v = params["w2"][:, target]  # [hidden]
    active = (h > 0).astype(jnp.float32)
    cases = (
        (saliency, (active * v[None, :]) @ params["w1"].T),
        (guided_backprop, (active * jax.nn.relu(v)[None, :]) @ params["w1"].T),
        (deconvnet, jnp.broadcast_to(jax.nn.relu(v) @ params["w1"].T, (2, 9))),
    )
    for method, expected in cases:
        got = method(apply_fn, params, x, target).reshape(2, -1)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_grad_cam_equals_cam_for_a_gap_linear_head():
    """identity: with a GAP + linear head dy_c/dA_ijk = W_kc / (hw), so Grad-CAM =
    ReLU(CAM) / (hw); CAM = sum_k W_kc A_k and its spatial mean plus b_c is the logit."""
    net = _cnn()
    model = net.split_model()
    x = jax.random.uniform(jax.random.key(1), (5, 8, 8, 1))
    target = jnp.arange(5)
    maps = net.layers(x)[-1]  # [5, 4, 4, 6]
    weights = net.cam_weights()  # [6, 10]
    expected_cam = jnp.einsum("nhwk,kn->nhw", maps, weights[:, :5])
    got_cam = cam(model, net.params, x, target)
    np.testing.assert_allclose(got_cam, expected_cam, rtol=RTOL, atol=ATOL)
    logits = net.logits(x)
    bias = net.params["dense"]["bias"][:5]
    np.testing.assert_allclose(
        jnp.mean(got_cam, (1, 2)) + bias, logits[jnp.arange(5), target], rtol=RTOL, atol=ATOL
    )
    h, w = maps.shape[1:3]
    np.testing.assert_allclose(
        grad_cam(model, net.params, x, target), jax.nn.relu(got_cam) / (h * w), rtol=RTOL, atol=1e-6
    )


def test_guided_grad_cam_is_guided_backprop_times_the_upsampled_map():
    """identity: the product of the two pieces, the map resized bilinearly to the input."""
    net = _cnn()
    model = net.split_model()
    x = jax.random.uniform(jax.random.key(2), (3, 8, 8, 1))
    region = upsample(grad_cam(model, net.params, x, 7), (8, 8))
    expected = guided_backprop(model, net.params, x, 7) * region[..., None]
    np.testing.assert_allclose(guided_grad_cam(model, net.params, x, 7), expected, rtol=RTOL)
    assert region.shape == (3, 8, 8)


def test_activation_maximisation_reaches_the_linear_optimum():
    """closed form: argmax_x w_c . x - lambda |x|^2 = w_c / (2 lambda)."""
    apply_fn, params = _linear(3)
    x0 = jnp.zeros((2, 4, 4, 2))
    out = activation_maximisation(apply_fn, params, x0, 1, steps=300, lr=0.5, l2=0.5)
    expected = jnp.broadcast_to(params["w"][:, 1].reshape(4, 4, 2) / (2 * 0.5), x0.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_activation_maximisation_raises_the_objective():
    """identity: ascent on the CNN raises y_c - lambda |x|^2 and stays in the clip range; with
    lambda = 0 it raises the logit itself."""
    net = _cnn()
    x0 = jnp.full((2, 8, 8, 1), 0.5)
    objective = lambda v, l2: net.logits(v)[:, 3] - l2 * np.sum(np.square(v), axis=(1, 2, 3))
    for l2 in (0.05, 0.0):
        out = activation_maximisation(
            net.apply_fn, net.params, x0, 3, steps=30, lr=0.01, l2=l2, clip=(0.0, 1.0)
        )
        assert np.all(objective(np.asarray(out), l2) > objective(np.asarray(x0), l2))
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_interpret_rejects_bad_input():
    apply_fn, params = _linear(0)
    x = jnp.zeros((2, 4, 4, 2))
    with pytest.raises(ValueError, match=r"x must be images \[N, H, W, C\]"):
        saliency(apply_fn, params, jnp.zeros((4, 4, 2)), 0)
    with pytest.raises(TypeError, match="target must be an int"):
        saliency(apply_fn, params, x, 1.5)
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\)"):
        saliency(apply_fn, params, x, 3)
    with pytest.raises(ValueError, match=r"target must be an int or have shape \[2\]"):
        saliency(apply_fn, params, x, jnp.array([0, 1, 2]))
    with pytest.raises(TypeError, match="SplitModel"):
        grad_cam(apply_fn, params, x, 0)
    with pytest.raises(ValueError, match="steps must be"):
        activation_maximisation(apply_fn, params, x, 0, steps=-1)
    assert isinstance(_cnn().split_model(), SplitModel)


def _gradient_supports(fmap, x: np.ndarray, units) -> list:
    """For each ``i`` in ``units``: the rows and columns of ``x [1, H, W, 1]`` where the gradient
    of ``fmap(x)[0, i, i, 0]`` is nonzero (all units through one jitted, vmapped backward pass)."""
    out = jax.eval_shape(fmap, x)
    cotangents = np.zeros((len(units), *out.shape), np.float32)
    for n, i in enumerate(units):
        cotangents[n, 0, i, i, 0] = 1.0
    backward = jax.jit(jax.vmap(lambda ct: jax.vjp(fmap, x)[1](ct)[0]))
    grads = np.asarray(backward(cotangents))[:, 0, :, :, 0]  # [units, H, W]
    return [(np.flatnonzero(g.any(axis=1)), np.flatnonzero(g.any(axis=0))) for g in grads]


@pytest.mark.parametrize(
    "kernel_sizes, strides",
    [((3, 3, 3), (1, 2, 1)), ((5, 3), (2, 2)), ((2, 3, 1, 3), (2, 1, 2, 1)), ((1,), (3,))],
)
def test_receptive_field_is_the_support_of_one_units_input_gradient(kernel_sizes, strides):
    """closed form (genjax.segmentation.receptive_field): with positive kernels and inputs (no
    cancellation) and no padding, the gradient of unit (i, i) of the last layer is nonzero
    exactly on input rows and columns i j_L .. i j_L + r_L - 1. Exact integer comparison."""
    layers = [("conv", k, s, 0) for k, s in zip(kernel_sizes, strides, strict=True)]
    size, jump = segmentation.receptive_field(layers)
    rng = np.random.default_rng(0)
    kernels = [rng.uniform(0.5, 1.5, (k, k, 1, 1)).astype(np.float32) for k in kernel_sizes]

    def last_map(x):
        for kernel, s in zip(kernels, strides, strict=True):
            x = jax.lax.conv_general_dilated(
                x, kernel, (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        return x

    x = rng.uniform(0.5, 1.5, (1, 40, 40, 1)).astype(np.float32)
    for i, (rows, cols) in zip((0, 1, 2), _gradient_supports(last_map, x, (0, 1, 2)), strict=True):
        expected = np.arange(i * jump, i * jump + size)
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_array_equal(cols, expected)


def test_digits_cnn_units_see_a_nine_pixel_square():
    """closed form: DigitsCNN's 3x3 convolutions with strides (1, 2, 1) give r = 9, j = 2; the
    gradient of one unit of the last map (positive weights and input, so every ReLU passes) is
    nonzero on a 9 x 9 square, and its neighbour's square starts 2 pixels further on."""
    layers = [("conv", 3, s, 1) for s in DigitsCNN.strides]
    assert segmentation.receptive_field(layers) == (9, 2)
    module = DigitsCNN(num_classes=2, widths=(2, 2, 2), strides=(1, 2, 1))
    x = np.random.default_rng(1).uniform(0.5, 1.5, (1, 20, 20, 1)).astype(np.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
    rng = np.random.default_rng(2)
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.uniform(0.1, 1.0, s.shape), jnp.float32), shapes
    )
    features = lambda v: module.apply({"params": params}, v, method=DigitsCNN.features)
    assert jax.eval_shape(features, x).shape == (1, 10, 10, 2)
    starts = []
    for rows, cols in _gradient_supports(features, x, (4, 5)):
        np.testing.assert_array_equal(rows, np.arange(rows[0], rows[0] + 9))
        np.testing.assert_array_equal(cols, rows)
        starts.append(rows[0])
    assert starts[1] - starts[0] == 2
