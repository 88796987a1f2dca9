"""Progressive growing: fade-in, equalised learning rate, pixel norm, minibatch stddev, the
growth schedule, and players that are the lower stage exactly at the start of a fade-in."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import progan as P
from genjax.nn.layers import strided_conv
from genjax.nn.norm import pixel_norm

RTOL, ATOL = 1e-5, 1e-6


def test_fade_in_is_the_upsampled_low_output_at_0_and_the_new_layer_at_1(key):
    k1, k2 = jax.random.split(key)
    low, high = jax.random.normal(k1, (2, 3, 3, 2)), jax.random.normal(k2, (2, 6, 6, 2))
    up = np.repeat(np.repeat(np.asarray(low), 2, axis=1), 2, axis=2)  # nearest, by hand
    np.testing.assert_array_equal(P.fade_in(0.0, low, high), up)
    np.testing.assert_array_equal(P.fade_in(1.0, low, high), high)
    np.testing.assert_allclose(P.fade_in(0.25, low, high), 0.75 * up + 0.25 * high, rtol=RTOL)
    with pytest.raises(ValueError, match="high must have shape"):
        P.fade_in(0.5, low, low)


def test_downsample_averages_blocks_and_undoes_upsample(key):
    x = jax.random.normal(key, (2, 4, 4, 3))
    np.testing.assert_allclose(P.downsample(P.upsample(x, 2), 2), x, rtol=RTOL, atol=ATOL)
    by_hand = np.asarray(x).reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(P.downsample(x), by_hand, rtol=RTOL, atol=ATOL)


def _players(key, features=8):
    g, d = P.ProGANGenerator((8, 8, 1), features, latent_dim=4), P.ProGANDiscriminator(features)
    k_z, k_g, k_d = jax.random.split(key, 3)
    z = jax.random.normal(k_z, (4, 4))
    g_vars = g.init(k_g, z)
    x = jnp.tanh(jax.random.normal(k_d, (4, 8, 8, 1)))
    return g, d, z, g_vars, x, d.init(k_d, x)


@pytest.mark.parametrize("stage", [1, 2])
def test_players_at_alpha_0_are_the_lower_stage(key, stage):
    """The loss is continuous across a growth step: at alpha = 0 the grown generator draws the
    lower stage's image (upsampled) and the grown critic scores what the lower one scored."""
    g, d, z, g_vars, x, d_vars = _players(key)
    grown = g.apply(P.with_growth(g_vars, stage, 0.0), z)
    lower = g.apply(P.with_growth(g_vars, stage - 1, 1.0), z)
    np.testing.assert_allclose(grown, lower, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        d.apply(P.with_growth(d_vars, stage, 0.0), x),
        d.apply(P.with_growth(d_vars, stage - 1, 1.0), x),
        rtol=1e-4,
        atol=1e-5,
    )
    # ... and the lower stage's image really is coarser: constant on 2x2 blocks
    blocks = np.asarray(lower).reshape(4, 4, 2, 4, 2, 1)
    np.testing.assert_allclose(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))


def test_generator_at_alpha_1_is_the_new_layers_output(key):
    g, _, z, g_vars, _, _ = _players(key)
    out, inter = g.apply(P.with_growth(g_vars, 1, 1.0), z, capture_intermediates=True)
    rgb_1 = inter["intermediates"]["rgb_1"]["__call__"][0]  # [4, 4, 4, 1]
    np.testing.assert_allclose(out, P.upsample(rgb_1, 2), rtol=RTOL, atol=ATOL)
    half = g.apply(P.with_growth(g_vars, 1, 0.5), z)
    lower = g.apply(P.with_growth(g_vars, 0, 1.0), z)
    np.testing.assert_allclose(half, (out + lower) / 2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel_size,channels", [(3, 5), (1, 7)])
def test_equalised_lr_runtime_scale_is_he_constant(key, kernel_size, channels):
    x = jax.random.normal(key, (2, 4, 4, channels))
    layer = P.EqualConv(6, kernel_size)
    variables = layer.init(key, x)
    kernel = variables["params"]["kernel"]
    he = math.sqrt(2.0 / (kernel_size * kernel_size * channels))  # He et al.'s std
    assert P.he_constant(kernel_size * kernel_size * channels) == pytest.approx(he, rel=1e-12)
    pad = (kernel_size - 1) // 2
    np.testing.assert_allclose(
        layer.apply(variables, x), strided_conv(x, kernel * he, 1, pad), rtol=1e-4, atol=1e-5
    )
    dense = P.EqualDense(3, gain=1.0)
    d_vars = dense.init(key, x)
    np.testing.assert_allclose(
        dense.apply(d_vars, x),
        x @ (d_vars["params"]["kernel"] / math.sqrt(channels)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_equalised_weights_are_stored_at_unit_scale(key):
    layer = P.EqualConv(64, 3)
    kernel = layer.init(key, jnp.zeros((1, 4, 4, 64)))["params"]["kernel"]  # 36,864 weights
    assert float(jnp.std(kernel)) == pytest.approx(1.0, abs=0.02)


def test_lr_multiplier_keeps_the_initial_function_and_scales_adam_steps_by_mu(key):
    x = jax.random.normal(key, (16, 8))
    target = jnp.ones((16, 4))
    effective = {}
    for mu in (1.0, 0.01):
        layer = P.EqualDense(4, lr_mul=mu)
        params = layer.init(jax.random.key(1), x)
        opt = optax.adam(1e-3)

        def loss(p, layer=layer):
            return jnp.mean((layer.apply(p, x) - target) ** 2)

        updates, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
        c = P.he_constant(8) * mu  # W = c mu W_hat: the step of W is c mu times W_hat's
        effective[mu] = [c * p["params"]["kernel"] for p in (params, updates)]
    np.testing.assert_allclose(effective[0.01][0], effective[1.0][0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(effective[0.01][1], 0.01 * effective[1.0][1], rtol=1e-4)


def test_minibatch_stddev_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2, 3, 4)).astype(np.float32)
    out = np.asarray(P.minibatch_stddev(jnp.asarray(x), group_size=3))
    assert out.shape == (6, 2, 3, 5)
    np.testing.assert_array_equal(out[..., :4], x)
    for i in range(6):  # groups of 3 consecutive examples: 0-2 and 3-5
        group = x[3 * (i // 3) : 3 * (i // 3) + 3]  # [3, 2, 3, 4]
        s = np.mean(np.sqrt(np.var(group, axis=0) + 1e-8))
        np.testing.assert_allclose(out[i, ..., 4], s, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of group_size"):
        P.minibatch_stddev(jnp.asarray(x[:5]), group_size=3)


@given(seed=st.integers(0, 2**16), scale=st.floats(0.01, 100.0))
def test_pixel_norm_gives_unit_rms_and_ignores_scale(seed, scale):
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(3, 2, 2, 8)), jnp.float32)
    y = pixel_norm(x)
    np.testing.assert_allclose(jnp.mean(y**2, axis=-1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(pixel_norm(scale * x), y, rtol=1e-3, atol=1e-4)


def test_growth_schedule_stages_and_fade_in():
    steps = [0, 99, 100, 125, 150, 199, 200, 250, 299, 1000]
    got = [tuple(float(v) for v in P.growth_schedule(t, 100, 3)) for t in steps]
    want = [
        (0, 1),
        (0, 1),
        (1, 0),
        (1, 0.5),
        (1, 1),
        (1, 1),
        (2, 0),
        (2, 1),
        (2, 1),
        (2, 1),
    ]
    assert got == want


def test_drift_critic_loss_is_the_wgan_loss_plus_eps_times_the_squared_data_score():
    real, fake = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 0.0, -1.0])
    expected = np.array([0.5 - 1.0 + 0.1 * 1.0, 0.0 + 2.0 + 0.1 * 4.0, -1.0 - 3.0 + 0.1 * 9.0])
    np.testing.assert_allclose(P.drift_critic_loss(real, fake, 0.1), expected, rtol=RTOL)
    np.testing.assert_allclose(P.drift_critic_loss(real, fake, 0.0), fake - real, rtol=RTOL)
    # the penalty's gradient pulls the data's scores towards 0: d/df(x) = -1 + 2 eps f(x)
    grad = jax.grad(lambda r: jnp.sum(P.drift_critic_loss(r, fake, 0.1)))(real)
    np.testing.assert_allclose(grad, -1.0 + 0.2 * real, rtol=RTOL)
    with pytest.raises(ValueError, match="drift"):
        P.drift_critic_loss(real, fake, -1.0)
    with pytest.raises(ValueError, match="real_scores"):
        P.drift_critic_loss(real, fake[:2])


@pytest.mark.slow
def test_progan_digits_trains_to_within_twice_the_data_floor():
    """At the full budget (1600 steps, stages of 100 at 2x2 and 4x4) the EMA generator's sliced
    W1 to the test images is within twice the training images' own (docs/style-based-gans.md:
    0.036 against 0.024, FID 13.8; the first recipe, at DCGAN's learning rates with EMA 0.999,
    had FID 198)."""
    from genjax import recipes
    from genjax.data import load_dataset
    from genjax.train import fit

    recipe, dataset = recipes.get("progan_digits"), load_dataset("digits")
    task = recipe.make_task(dataset, {})
    state = fit(task, dataset.train, recipe.config(False), progress=False)
    report = recipe.evaluate(task, state.ema_params, dataset, jax.random.key(0))
    assert report.value < 2 * report.baseline_value, report
