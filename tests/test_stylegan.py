"""Style-based generator: AdaIN and instance norm, truncation, style mixing, the generator's
running average of w, and the style-mixing measure after training (slow)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import gan as G
from genjax import progan as P
from genjax import stylegan as S
from genjax.nn.norm import adain, instance_norm
from genjax.style import gram_matrix

RTOL, ATOL = 1e-4, 1e-5


def _maps(seed: int, shape=(2, 5, 6, 3)):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=shape) * rng.uniform(0.5, 3.0) + rng.normal(), jnp.float32)


@given(seed=st.integers(0, 2**16))
def test_adain_output_has_the_target_mean_and_std(seed):
    x = _maps(seed)
    rng = np.random.default_rng(seed + 1)
    scale = jnp.asarray(rng.uniform(0.1, 4.0, (2, 3)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(2, 3)) * 3, jnp.float32)
    y = adain(x, scale, bias)
    np.testing.assert_allclose(jnp.mean(y, axis=(1, 2)), bias, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(jnp.std(y, axis=(1, 2)), scale, rtol=RTOL, atol=ATOL)


@given(seed=st.integers(0, 2**16))
def test_instance_norm_is_invariant_to_per_channel_affine_maps(seed):
    x = _maps(seed)
    rng = np.random.default_rng(seed + 2)
    a = jnp.asarray(rng.uniform(0.2, 5.0, (2, 1, 1, 3)), jnp.float32)  # per example, channel
    b = jnp.asarray(rng.normal(size=(2, 1, 1, 3)) * 10, jnp.float32)
    np.testing.assert_allclose(instance_norm(a * x + b), instance_norm(x), rtol=1e-3, atol=1e-4)
    # ... and its output is the z-score of each example's channel (numpy reference)
    ref = (x - np.mean(x, axis=(1, 2), keepdims=True)) / np.std(x, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(instance_norm(x), ref, rtol=RTOL, atol=ATOL)


def test_adain_sets_the_gram_diagonal_to_scale_squared_plus_bias_squared():
    x = _maps(0)
    scale, bias = jnp.array([[0.5, 2.0, 1.0], [3.0, 0.2, 1.5]]), jnp.array([[1.0, -1.0, 0.0]] * 2)
    diagonal = jnp.diagonal(gram_matrix(adain(x, scale, bias)), axis1=-2, axis2=-1)  # [2, 3]
    np.testing.assert_allclose(diagonal, scale**2 + bias**2, rtol=RTOL, atol=ATOL)


def test_adain_shape_errors():
    x = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="scale must have shape"):
        adain(x, jnp.ones((3,)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="x must have shape"):
        instance_norm(jnp.zeros((4, 3)))


def test_truncation_psi_zero_is_the_mean_and_one_the_identity(key):
    w = jax.random.normal(key, (5, 7, 4))
    w_avg = jnp.array([0.5, -1.0, 2.0, 0.0])
    np.testing.assert_allclose(S.truncate(w, w_avg, 1.0), w, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(S.truncate(w, w_avg, 0.0), jnp.broadcast_to(w_avg, w.shape))
    np.testing.assert_allclose(
        S.truncate(w, w_avg, 0.5), (w + w_avg[None, None]) / 2, rtol=RTOL, atol=ATOL
    )
    with pytest.raises(ValueError, match="w_avg"):
        S.truncate(w, jnp.zeros(3), 0.5)


def test_mix_styles_takes_layers_below_the_crossover_from_the_first_source():
    ws1, ws2 = jnp.zeros((3, 6, 2)), jnp.ones((3, 6, 2))
    mixed = S.mix_styles(ws1, ws2, jnp.array([0, 2, 6]))
    np.testing.assert_array_equal(mixed[:, :, 0], [[1] * 6, [0, 0, 1, 1, 1, 1], [0] * 6])
    assert S.num_styles((8, 8, 1)) == 6 and S.num_styles((28, 28, 1)) == 6


def _generator(**kwargs):
    return S.StyleGANGenerator((8, 8, 1), features=8, latent_dim=4, mapping_depth=2, **kwargs)


def test_generator_at_psi_zero_draws_one_image_without_noise(key):
    """Noise scales start at zero: with psi = 0 every code becomes the average code, so every
    sample is the same image; with psi = 1 they differ."""
    g = _generator()
    variables = jax.jit(lambda k: g.init(k, jnp.zeros((1, 4)), train=False))(key)
    variables = {**variables, "batch_stats": {"w_avg": jnp.array([0.3, -0.2, 0.1, 0.0])}}
    draw = jax.jit(lambda v, psi: S.sample(key, g, v, 4, psi=psi), static_argnums=1)
    same = draw(variables, 0.0)
    np.testing.assert_allclose(same, jnp.broadcast_to(same[:1], same.shape), atol=1e-5)
    assert float(jnp.std(draw(variables, 1.0), axis=0).max()) > 1e-3


def test_generator_tracks_the_average_code_and_mixes_only_in_training(key):
    g, mixing = _generator(mixing_prob=0.0), _generator(mixing_prob=1.0)
    z = jax.random.normal(key, (6, 4))
    rngs = {G.NOISE: jax.random.key(1)}

    @jax.jit
    def run(k):
        variables = g.init(k, z, train=False)
        train, stats = g.apply(variables, z, train=True, mutable=["batch_stats"], rngs=rngs)
        evaluate = g.apply(variables, z, train=False, rngs=rngs)
        mixed, _ = mixing.apply(variables, z, train=True, mutable=["batch_stats"], rngs=rngs)
        return (
            train,
            evaluate,
            mixed,
            stats["batch_stats"]["w_avg"],
            g.apply(variables, z, method=g.map),
        )

    train, evaluate, mixed, w_avg, w = run(key)
    np.testing.assert_allclose(w_avg, (1 - g.w_avg_decay) * jnp.mean(w, 0), rtol=RTOL, atol=1e-7)
    # without mixing, training draws the image that evaluation draws (same noise stream)
    np.testing.assert_allclose(train, evaluate, atol=ATOL)
    assert float(jnp.abs(mixed - train).max()) > 1e-4


def test_mixing_at_the_last_layer_is_the_coarse_source(key):
    from genjax.data import load_dataset
    from genjax.recipes.stylegan import make_stylegan

    gan = make_stylegan(load_dataset("digits"), {"width": 8})
    z1, z2 = jax.random.normal(key, (2, 3, 32))
    num = S.num_styles((8, 8, 1))

    @jax.jit
    def run(k):
        variables = gan.generator.init(k, z1, train=False)
        direct = gan.generator.apply(variables, z1, train=False, rngs={G.NOISE: k})
        return direct, gan.mix(variables, k, z1, z2, num)

    direct, mixed = run(key)
    np.testing.assert_allclose(mixed, jnp.clip((direct + 1) / 2, 0, 1), atol=ATOL)


@pytest.mark.slow
def test_stylegan_digits_coarse_styles_keep_the_digit():
    """At the full budget (about dcgan_digits' training time) the coarse styles (2x2 and 4x4)
    decide the digit in at least 90 % of mixed samples, the fine ones in at most 5 %
    (docs/style-based-gans.md: 96 % against 0 % with 500 pairs; 91-96 % over three seeds)."""
    from genjax import recipes
    from genjax.data import load_dataset
    from genjax.train import fit

    recipe, dataset = recipes.get("stylegan_digits"), load_dataset("digits")
    task = recipe.make_task(dataset, {})
    state = fit(task, dataset.train, recipe.config(False), progress=False)
    report = recipe.evaluate(task, state.ema_params, dataset, jax.random.key(0))
    assert report.value >= 0.9 and report.baseline_value <= 0.05, report


# ----------------------------------------------------------------------------- BigGAN's tricks


def test_orthogonal_penalty_matches_the_off_diagonal_sum_and_its_closed_form_gradient(key):
    kernel = jax.random.normal(key, (3, 3, 2, 5))  # a conv kernel: W is [18, 5]
    w = np.asarray(kernel, np.float64).reshape(18, 5)
    by_hand = sum((w[:, i] @ w[:, j]) ** 2 for i in range(5) for j in range(5) if i != j)
    np.testing.assert_allclose(G.orthogonal_penalty(kernel, 0.5), 0.5 * by_hand, rtol=RTOL)
    gram = w.T @ w
    closed = 4 * 0.5 * w @ (gram * (1 - np.eye(5)))  # 4 beta W (W^T W * (1 - I))
    grad = jax.grad(lambda k: G.orthogonal_penalty(k, 0.5))(kernel)
    np.testing.assert_allclose(np.asarray(grad).reshape(18, 5), closed, rtol=RTOL, atol=ATOL)


def test_orthogonal_penalty_is_zero_on_orthogonal_columns_of_any_norm():
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 4)))[0]  # orthonormal columns
    scaled = jnp.asarray(q * np.array([0.1, 1.0, 3.0, 7.0]), jnp.float32)
    np.testing.assert_allclose(G.orthogonal_penalty(scaled, 1.0), 0.0, atol=1e-4)
    assert float(G.orthogonal_penalty(jnp.ones((3, 2)), 1.0)) == pytest.approx(18.0)  # 2 * 3^2
    with pytest.raises(ValueError, match="kernel must have shape"):
        G.orthogonal_penalty(jnp.ones(3))
    with pytest.raises(ValueError, match="beta"):
        G.orthogonal_penalty(jnp.ones((3, 2)), -1.0)


def test_orthogonal_regularization_adds_the_penalty_gradient_to_params_only(key):
    import optax

    params = {
        "params": {"kernel": jax.random.normal(key, (4, 3)), "bias": jnp.ones(3)},
        "batch_stats": {"mean": jnp.ones((2, 3))},
    }
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = G.with_orthogonal_regularization(optax.sgd(1.0), beta=0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = -jax.grad(lambda k: G.orthogonal_penalty(k, 0.1))(params["params"]["kernel"])
    np.testing.assert_allclose(updates["params"]["kernel"], expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(updates["params"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["batch_stats"]["mean"], 0.0)  # not in "params"


def test_fine_kernel_1_makes_the_full_resolution_layers_per_pixel(key):
    """With ``fine_kernel=1`` the two 8x8 layers' convolutions are 1x1 (per-pixel maps of the
    upsampled 4x4 features), those at 2x2 and 4x4 stay 3x3; an even size is refused."""
    net = S.SynthesisNetwork((8, 8, 1), features=4, fine_kernel=1)
    ws = jax.random.normal(key, (2, S.num_styles((8, 8, 1)), 4))
    params = net.init({"params": key, G.NOISE: key}, ws)["params"]
    shapes = {
        name: p["EqualConv_0"]["kernel"].shape
        for name, p in params.items()
        if isinstance(p, dict) and "EqualConv_0" in p
    }
    assert [shapes[f"_StyleLayer_{i}"][:2] for i in (1, 2, 3, 4, 5)] == [(3, 3)] * 3 + [(1, 1)] * 2
    with pytest.raises(ValueError, match="fine_kernel"):
        S.SynthesisNetwork((8, 8, 1), features=4, fine_kernel=2).init(
            {"params": key, G.NOISE: key}, ws
        )


@given(st.integers(0, 2**31 - 1), st.sampled_from([(2, 2), (4, 6), (8, 8)]))
def test_band_pass_has_zero_block_means_is_a_projection_and_kills_upsampled_images(seed, hw):
    """``D P x = 0``, ``P P x = P x`` and ``P U y = 0``, against a numpy block mean."""
    x = jax.random.normal(jax.random.key(seed), (2, *hw, 3))
    p = np.asarray(S.band_pass(x))
    blocks = p.reshape(2, hw[0] // 2, 2, hw[1] // 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(blocks, 0.0, atol=ATOL)
    np.testing.assert_allclose(S.band_pass(p), p, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(S.band_pass(jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)), 0.0, atol=ATOL)
    assert np.abs(p).max() > 0.1  # not zero everywhere


def test_pyramid_keeps_the_pooled_image_of_the_coarse_styles(key):
    """With ``pyramid``, the image pooled to 4x4 depends on the 2x2 and 4x4 styles alone (layers
    < 4) and the one pooled to 2x2 on the 2x2 styles (layers < 2): mixing in another code's finer
    styles changes the full image but not those. Without it, the pooled image changes too."""
    num = S.num_styles((8, 8, 1))
    k_init, k1, k2 = jax.random.split(key, 3)
    ws1 = jax.random.normal(k1, (3, num, 8))
    ws2 = jax.random.normal(k2, (3, num, 8))
    for pyramid in (True, False):
        net = S.SynthesisNetwork((8, 8, 1), features=8, pyramid=pyramid)
        variables = net.init({"params": k_init, G.NOISE: k_init}, ws1)
        params = jax.tree.map(lambda p: p + 0.3, variables)  # non-zero noise scales and biases

        def image(crossover, net=net, params=params):
            ws = S.mix_styles(ws1, ws2, jnp.full((3,), crossover))
            return net.apply(params, ws, rngs={G.NOISE: key})

        full = image(num)
        for crossover, factor in ((4, 2), (2, 4)):
            mixed = image(crossover)
            assert np.abs(mixed - full).max() > 1e-2
            pooled = [np.asarray(P.downsample(x, factor)) for x in (mixed, full)]
            if pyramid:
                np.testing.assert_allclose(*pooled, rtol=RTOL, atol=ATOL)
            else:
                assert np.abs(pooled[0] - pooled[1]).max() > 1e-2


@pytest.mark.slow
def test_biggan_digits_truncation_raises_precision_and_lowers_recall():
    """``biggan_digits`` at its full budget: as psi decreases recall falls and precision rises
    (neither moves the wrong way by more than 0.01, a binomial standard error at 360 samples
    and precision 0.95), and every threshold up to psi = 1 is clearly more precise than no
    truncation (docs/style-based-gans.md: 0.925 untruncated, 0.969 at 1, 0.98 from 0.75 on)."""
    from genjax import recipes
    from genjax.classifier import digits_cnn
    from genjax.data import load_dataset
    from genjax.studies.style_gans import truncation_curve
    from genjax.train import fit

    recipe, dataset = recipes.get("biggan_digits"), load_dataset("digits")
    task = recipe.make_task(dataset, {})
    params = fit(task, dataset.train, recipe.config(False), progress=False).ema_params
    net, test = digits_cnn(dataset), dataset.test["x"]
    curve = truncation_curve(jax.random.key(0), net, test, task.model, params)
    recalls, precisions = [r["recall"] for r in curve], [r["precision"] for r in curve]
    assert all(a >= b - 0.01 for a, b in itertools.pairwise(recalls)), curve
    assert all(b >= a - 0.01 for a, b in itertools.pairwise(precisions)), curve
    truncated = [r["precision"] for r in curve if r["psi"] is not None and r["psi"] <= 1]
    assert min(truncated) > precisions[0] + 0.03, curve
