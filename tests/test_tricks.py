"""Training tips: label smoothing, temperature, schedules, clipping, loss scaling, EMA, LoRA,
distillation and int8 quantisation, each against its derivation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import train, tricks

RTOL = 1e-5
ATOL = 1e-6


def _logits(key, shape=(4, 6)):
    return 3.0 * jax.random.normal(key, shape)


def test_smooth_labels_is_the_mixture_and_matches_optax():
    """Reference: optax.smooth_labels on one-hot targets; rows sum to 1."""
    labels = jnp.array([0, 3, 2])
    got = tricks.smooth_labels(labels, 4, 0.1)
    np.testing.assert_allclose(got, optax.smooth_labels(jax.nn.one_hot(labels, 4), 0.1), rtol=RTOL)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=RTOL)
    np.testing.assert_allclose(got[0], [0.925, 0.025, 0.025, 0.025], rtol=RTOL)


def test_smoothed_cross_entropy_is_a_mix_of_two_cross_entropies(key):
    """Identity: CE(q, p) = (1 - ε) CE(e_y, p) + ε CE(u, p) = KL(q || p) + H(q)."""
    logits, labels, eps = _logits(key), jnp.array([0, 5, 2, 1]), 0.2
    logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
    hard = -logp[np.arange(4), np.asarray(labels)]
    uniform = -logp.mean(-1)
    got = tricks.smoothed_cross_entropy(logits, labels, eps)
    np.testing.assert_allclose(got, (1 - eps) * hard + eps * uniform, rtol=1e-5)
    q = np.asarray(tricks.smooth_labels(labels, 6, eps), np.float64)
    kl_plus_entropy = np.sum(q * (np.log(q) - logp), -1) - np.sum(q * np.log(q), -1)
    np.testing.assert_allclose(got, kl_plus_entropy, rtol=1e-5)


def test_softmax_temperature_limits_and_entropy_grows_with_t(key):
    """T = 1 is the softmax, T -> 0 the argmax one-hot, T -> ∞ uniform; entropy increases."""
    z = _logits(key, (3, 5))
    np.testing.assert_allclose(
        tricks.softmax_with_temperature(z, 1.0), jax.nn.softmax(z), rtol=RTOL
    )
    cold = tricks.softmax_with_temperature(z, 1e-3)
    np.testing.assert_allclose(cold, jax.nn.one_hot(jnp.argmax(z, -1), 5), atol=1e-6)
    np.testing.assert_allclose(tricks.softmax_with_temperature(z, 1e4), 0.2, atol=1e-3)
    entropy = [
        float(-jnp.sum(p * jnp.log(p + 1e-30)))
        for p in (tricks.softmax_with_temperature(z[0], t) for t in (0.3, 1.0, 3.0, 10.0))
    ]
    assert entropy == sorted(entropy)


def test_warmup_cosine_matches_the_closed_form():
    """Closed form: η t/W during warm-up, then η(f + (1-f)(1 + cos(π(t-W)/(T-W)))/2)."""
    peak, w, total, f = 0.1, 10, 110, 0.1
    sched = tricks.warmup_cosine(peak, w, total, f)
    for t in (0, 5, 10, 35, 60, 110):
        if t < w:
            expected = peak * t / w
        else:
            expected = peak * (f + (1 - f) * 0.5 * (1 + np.cos(np.pi * (t - w) / (total - w))))
        assert float(sched(t)) == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_reduce_on_plateau_cuts_the_rate_after_patience_steps():
    """A flat loss multiplies the updates by `factor` once `patience` steps pass without
    improvement; a falling loss keeps the scale at 1."""
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.ones(3)}
    for losses, expected in (([1.0] * 5, 0.5), ([1.0, 0.9, 0.8, 0.7, 0.6], 1.0)):
        tx = tricks.reduce_on_plateau(factor=0.5, patience=3)
        state = tx.init(params)
        for loss in losses:
            updates, state = tx.update(grads, state, params, value=jnp.float32(loss))
        assert float(state.scale) == expected
        np.testing.assert_allclose(updates["w"], expected, rtol=RTOL)


def test_clip_by_global_norm_matches_optax_and_keeps_direction(key):
    """Reference: optax.clip_by_global_norm; the norm after is min(norm, c), direction kept."""
    grads = {"a": jax.random.normal(key, (3, 4)), "b": jnp.arange(5.0)}
    norm = float(optax.tree.norm(grads))
    for c in (0.5 * norm, 2.0 * norm):
        clipped, before = tricks.clip_by_global_norm(grads, c)
        ref, _ = optax.clip_by_global_norm(c).update(grads, optax.EmptyState())
        for k in grads:
            np.testing.assert_allclose(clipped[k], ref[k], rtol=RTOL, atol=ATOL)
        assert float(before) == pytest.approx(norm, rel=1e-6)
        assert float(optax.tree.norm(clipped)) == pytest.approx(min(norm, c), rel=1e-5)


def test_loss_scaling_recovers_float32_gradients_where_float16_underflows():
    """L = 1e-4 Σ h, h = 1e-4 p x: backprop multiplies the cotangent 1e-4 by 1e-4, and the
    true gradient 1e-8 x is below float16's smallest subnormal (6e-8). Unscaled float16 gives
    exactly 0; with S = 2^15 the float32 gradient comes back to float16 precision (two
    constants rounded to 11 bits: rtol 3e-3)."""
    x = jnp.linspace(1.0, 2.0, 8)
    w = jnp.full(8, 0.5)

    def loss(params, x, dtype):
        small = jnp.asarray(1e-4, dtype)
        h = params.astype(dtype) * x.astype(dtype) * small
        return jnp.sum(h) * small

    exact = jax.grad(loss)(w, x, jnp.float32)  # = 1e-8 x
    np.testing.assert_allclose(exact, 1e-8 * np.asarray(x), rtol=1e-5)
    unscaled = jax.grad(lambda p: loss(p, x, jnp.float16))(w.astype(jnp.float16))
    assert float(jnp.max(jnp.abs(unscaled))) == 0.0
    state = tricks.LossScale.create(2.0**15)
    _, grads, finite, _ = tricks.scaled_value_and_grad(
        lambda p: loss(p, x, jnp.float16), state, w.astype(jnp.float16)
    )
    assert bool(finite)
    np.testing.assert_allclose(grads, exact, rtol=3e-3)


def test_loss_scale_backs_off_on_overflow_and_grows_after_period():
    """Overflow (inf gradient in float16) halves S and resets the count; `period` finite steps
    double it."""
    state = tricks.LossScale.create(2.0**15, period=3)

    def big(p):
        return jnp.asarray(10.0, jnp.float16) * jnp.sum(p)  # 10 * 2^15 > float16 max 65504

    _, _, finite, state = tricks.scaled_value_and_grad(big, state, jnp.ones(2, jnp.float16))
    assert not bool(finite) and float(state.scale) == 2.0**14 and int(state.good_steps) == 0
    for _ in range(3):
        state = state.update(jnp.bool_(True))
    assert float(state.scale) == 2.0**15 and int(state.good_steps) == 0


def test_ema_debiased_recovers_a_constant_and_matches_the_loop_ema():
    """Closed form: from 0, n updates toward θ give (1 - δ^n) θ; debiasing returns θ."""
    theta, decay, ema = {"w": jnp.array([2.0, -1.0])}, 0.9, {"w": jnp.zeros(2)}
    for _ in range(7):
        ema = train.ema_update(ema, theta, decay)
    np.testing.assert_allclose(ema["w"], (1 - decay**7) * theta["w"], rtol=1e-5)
    np.testing.assert_allclose(tricks.ema_debiased(ema, decay, 7)["w"], theta["w"], rtol=1e-5)


def test_lora_with_zero_b_equals_the_base_dense_layer(key):
    """B = 0 at initialisation: the layer is flax's Dense with the same kernel and bias."""
    x = jax.random.normal(key, (5, 7))
    layer = tricks.LoRADense(features=3, rank=2, alpha=4.0)
    params = layer.init(jax.random.key(1), x)
    p = params["params"]
    assert not np.any(np.asarray(p["lora_b"])) and np.any(np.asarray(p["lora_a"]))
    dense = nn.Dense(3).apply({"params": {"kernel": p["kernel"], "bias": p["bias"]}}, x)
    np.testing.assert_allclose(layer.apply(params, x), dense, rtol=RTOL, atol=ATOL)


def test_lora_merge_equals_the_unmerged_forward_and_counts_parameters(key):
    """W' = W + (α/r) A B gives the same outputs as the adapter; r(d_in + d_out) trainable."""
    x = jax.random.normal(key, (5, 7))
    model = nn.Sequential([tricks.LoRADense(16, rank=2, alpha=8.0), nn.relu, tricks.LoRADense(3)])
    params = model.init(jax.random.key(1), x)
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: (
            jax.random.normal(jax.random.key(len(str(path))), v.shape)
            if "lora_b" in str(path)
            else v
        ),
        params,
    )
    merged = tricks.merge_lora(params["params"], alpha=8.0, rank=2)
    merged["layers_2"] = tricks.merge_lora({"x": params["params"]["layers_2"]}, 4.0, 4)["x"]
    plain = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
    np.testing.assert_allclose(
        plain.apply({"params": merged}, x), model.apply(params, x), rtol=1e-4, atol=1e-5
    )
    mask = tricks.lora_trainable_mask(params)
    assert tricks.count_params(params, mask) == 2 * (7 + 16) + 4 * (16 + 3)
    assert (
        tricks.count_params(params) == tricks.count_params(params, mask) + 7 * 16 + 16 + 16 * 3 + 3
    )


def test_distillation_gradient_and_t_squared_scaling(key):
    """∂L/∂z = T (softmax(z/T) - softmax(v/T)); for large T and zero-mean logits it tends to
    (z - v)/K, the same size at every T because of the T² factor; 0 when student = teacher."""
    z, v = _logits(key, (2, 5)), _logits(jax.random.key(9), (2, 5))
    z, v = z - z.mean(-1, keepdims=True), v - v.mean(-1, keepdims=True)
    for t in (1.0, 4.0):
        grad = jax.grad(lambda s, t=t: jnp.sum(tricks.distillation_loss(s, v, t)))(z)
        expected = t * (jax.nn.softmax(z / t) - jax.nn.softmax(v / t))
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    big = jax.grad(lambda s: jnp.sum(tricks.distillation_loss(s, v, 1000.0)))(z)
    np.testing.assert_allclose(big, (z - v) / 5, rtol=2e-2, atol=2e-3)
    # loss itself → Σ(z - v)² / (2K) for large T (second-order expansion of the KL)
    np.testing.assert_allclose(
        tricks.distillation_loss(z, v, 1000.0), jnp.sum((z - v) ** 2, -1) / 10, rtol=2e-2
    )
    np.testing.assert_allclose(tricks.distillation_loss(z, z, 3.0), 0.0, atol=1e-5)


@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-4, 1e4))
def test_int8_quantisation_error_is_at_most_half_a_step(seed, scale):
    """Invariant: |w - s q| <= s/2 per tensor and per channel; the largest |w| maps to ±127."""
    w = (scale * np.random.default_rng(seed).standard_normal((6, 5))).astype(np.float32)
    for axis in (None, -1):
        q = tricks.quantize_int8(w, axis)
        assert q.values.dtype == jnp.int8
        err = np.abs(np.asarray(tricks.dequantize_int8(q)) - w)
        assert np.all(err <= np.asarray(q.scale) / 2 * (1 + 1e-5))
        assert int(jnp.max(jnp.abs(q.values.astype(jnp.int32)))) == 127


def test_fake_quantize_params_touches_only_kernels(key):
    """Kernels come back on the int8 grid; biases are unchanged."""
    params = nn.Dense(4).init(key, jnp.ones((1, 3)))
    fq = tricks.fake_quantize_params(params)
    np.testing.assert_array_equal(fq["params"]["bias"], params["params"]["bias"])
    k = np.asarray(params["params"]["kernel"])
    step = np.abs(k).max(0) / 127
    assert np.all(np.abs(np.asarray(fq["params"]["kernel"]) - k) <= step / 2 * (1 + 1e-5))
    assert not np.array_equal(np.asarray(fq["params"]["kernel"]), k)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tricks.smooth_labels(jnp.array([0]), 1, 0.1), "num_classes"),
        (lambda: tricks.smooth_labels(jnp.array([0]), 3, 1.5), "epsilon"),
        (lambda: tricks.smoothed_cross_entropy(jnp.ones((2, 3)), jnp.array([0]), 0.1), "labels"),
        (lambda: tricks.softmax_with_temperature(jnp.ones(3), 0.0), "temperature"),
        (lambda: tricks.warmup_cosine(0.1, 10, 10), "warmup_steps"),
        (lambda: tricks.reduce_on_plateau(factor=1.5), "factor"),
        (lambda: tricks.clip_by_global_norm({"a": jnp.ones(2)}, 0.0), "max_norm"),
        (lambda: tricks.LossScale.create(0.0), "initial"),
        (lambda: tricks.ema_debiased({}, 1.0, 3), "decay"),
        (lambda: tricks.distillation_loss(jnp.ones(3), jnp.ones(4)), "same shape"),
        (lambda: tricks.distillation_loss(jnp.ones(3), jnp.ones(3), -1.0), "temperature"),
        (lambda: tricks.quantize_int8(jnp.ones((2, 2)), axis=2), "axis"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow
def test_digits_experiments_meet_the_lora_and_int8_goals():
    """LoRA with < 5 % of the parameters recovers >= 95 % of full fine-tuning's accuracy on
    inverted digits; int8 weights lose at most one point of test accuracy."""
    from genjax.data import load_dataset

    out = tricks.digits_experiments(load_dataset("digits"))
    assert out["lora_param_fraction"] < 0.05
    assert out["lora_over_full"] >= 0.95
    assert out["inverted_before_finetune_acc"] < 0.5 < out["full_finetune_acc"]
    assert out["teacher_acc"] - out["teacher_int8_acc"] <= 0.01
