"""GAN losses against independent references and the identities of derivations/08-gans.md: the
value at the optimal discriminator is -log 4 + 2 JS, the generator gradients at the optimal
discriminator (2 JS; reverse KL - 2 JS), the hinge optimum 2 - 2 TV, the saturating generator's
gradient vanishes, the gradient penalty of a 1-Lipschitz critic is zero, clipping,
mode coverage, the DCGAN players' shapes and per-example critics, spectral norm in the critic,
the sampler, the alternating update (n_critic critic steps, then a generator step, inside one
jitted step) and the mode-coverage study's table and figure."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import gan as G
from genjax import recipes
from genjax.data import grid_means, load_dataset, ring_means
from genjax.divergences import js, kl, tvd
from genjax.nn.layers import SPECTRAL, spectral_norm_exact
from genjax.recipes import gan as R
from genjax.studies import gan_modes as S
from genjax.train import TrainConfig, fit, init_state, make_train_chunk

RTOL = 1e-5
ATOL = 1e-5
F32_ATOL = 1e-4  # float32 sums of k <= 16 terms of size <= log(1e4)
LOG4 = math.log(4.0)


def _random_probs(seed: int, k: int, zeros: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.gamma(0.5, size=k)
    if zeros:
        p = p * (rng.random(k) < 0.6)
        p[0] += 1e-3  # keep at least one mass point
    return (p / p.sum()).astype(np.float32)


prob_pairs = st.builds(
    lambda seed, k, zeros: (_random_probs(seed, k, zeros), _random_probs(seed + 1, k, zeros)),
    st.integers(0, 2**16),
    st.sampled_from([2, 5, 16]),
    st.booleans(),
)

# ---------------------------------------------------------------- the GAN game


def test_discriminator_loss_is_binary_cross_entropy(key):
    real, fake = jax.random.normal(key, (2, 64)) * 5.0
    ours = G.discriminator_loss(real, fake)
    ref = optax.sigmoid_binary_cross_entropy(real, jnp.ones(64)) + (
        optax.sigmoid_binary_cross_entropy(fake, jnp.zeros(64))
    )
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)


def test_generator_losses_match_log_sigmoid_forms(key):
    logits = jax.random.normal(key, (64,)) * 5.0
    d = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))  # float64 reference of D
    np.testing.assert_allclose(
        G.generator_loss(logits, saturating=True), np.log1p(-d), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(G.generator_loss(logits), -np.log(d), rtol=RTOL, atol=ATOL)


def test_losses_stable_at_extreme_logits():
    big = jnp.array([-1e4, 1e4])
    for value in (
        G.discriminator_loss(big, big),
        G.generator_loss(big),
        G.generator_loss(big, saturating=True),
    ):
        assert np.all(np.isfinite(value))
    np.testing.assert_allclose(G.generator_loss(big), [1e4, 0.0], atol=ATOL)


@given(prob_pairs)
def test_value_at_optimal_discriminator_is_minus_log4_plus_2js(pq):
    p, q = pq
    d_star = G.optimal_discriminator(p, q)
    value = float(G.gan_value(p, q, d_star))
    np.testing.assert_allclose(value, -LOG4 + 2.0 * float(js(p, q)), atol=F32_ATOL)
    assert -LOG4 - F32_ATOL <= value <= F32_ATOL  # JS in [0, log 2]


@given(prob_pairs, st.integers(0, 2**16))
def test_optimal_discriminator_maximises_the_value(pq, seed):
    p, q = pq
    d_star = G.optimal_discriminator(p, q)
    other = np.random.default_rng(seed).uniform(0.01, 0.99, p.shape).astype(np.float32)
    assert float(G.gan_value(p, q, other)) <= float(G.gan_value(p, q, d_star)) + F32_ATOL


@jax.jit
def _generator_gradients(p, theta0):
    """Gradients at theta0 of E_{q_theta}[loss] with D* fixed at q0 = softmax(theta0), and of
    2 JS(p, q_theta) and KL(q_theta || p)."""
    d_star = G.optimal_discriminator(p, jax.nn.softmax(theta0))  # fixed: no gradient through it
    logits = jnp.log(d_star) - jnp.log1p(-d_star)  # the discriminator's logits at each point

    def expected(loss):  # E_{x ~ q_theta} loss(x) over the k points
        return lambda t: jnp.sum(jax.nn.softmax(t) * loss(logits))

    sat = jax.grad(expected(lambda v: G.generator_loss(v, saturating=True)))(theta0)
    ns = jax.grad(expected(G.generator_loss))(theta0)
    two_js = jax.grad(lambda t: 2.0 * js(p, jax.nn.softmax(t)))(theta0)
    reverse_kl = jax.grad(lambda t: kl(jax.nn.softmax(t), p))(theta0)
    return sat, ns, two_js, reverse_kl


@pytest.mark.parametrize("k", [2, 5, 16])
def test_generator_gradients_at_the_optimal_discriminator(k):
    """Identity: with D* = p / (p + q0) held fixed at the current generator q0 = softmax(theta0),
    the saturating loss has the gradient of 2 JS(p, q) (envelope theorem) and the
    non-saturating loss the gradient of KL(q || p) - 2 JS(p, q) (derivations/08-gans.md)."""
    rng = np.random.default_rng(k)
    for _ in range(10):
        p = rng.dirichlet(np.ones(k)).astype(np.float32)
        theta0 = rng.normal(scale=2.0, size=k).astype(np.float32)
        sat, ns, two_js, reverse_kl = _generator_gradients(p, theta0)
        assert float(jnp.max(jnp.abs(two_js))) > 1e-3  # not a trivially zero gradient
        np.testing.assert_allclose(sat, two_js, rtol=1e-3, atol=F32_ATOL)
        np.testing.assert_allclose(ns, reverse_kl - two_js, rtol=1e-3, atol=F32_ATOL)


@jax.jit
def _hinge_expected_loss(p, q, f):
    """sum_i p_i max(0, 1 - f_i) + q_i max(0, 1 + f_i) for scores f [..., k]."""
    ones = jnp.ones(p.shape)

    def one(f):
        real_part = G.hinge_discriminator_loss(f, -ones)  # max(0, 1 - f_i) + 0
        fake_part = G.hinge_discriminator_loss(ones, f)  # 0 + max(0, 1 + f_i)
        return jnp.sum(p * real_part + q * fake_part)

    return jax.vmap(one)(f.reshape(-1, p.shape[0]))


@pytest.mark.parametrize("k", [2, 5, 16])
def test_hinge_inner_optimum_is_two_minus_two_tvd(k):
    """Closed form: min_f sum_i p_i max(0, 1 - f_i) + q_i max(0, 1 + f_i) = 2 - 2 TV(p, q),
    attained at f* = sign(p - q); random scores do no better (derivations/08-gans.md)."""
    for seed in range(10):
        p, q = _random_probs(seed, k, seed % 2 == 0), _random_probs(seed + 1, k, seed % 2 == 0)
        best = float(_hinge_expected_loss(p, q, np.sign(p - q))[0])
        np.testing.assert_allclose(best, 2.0 - 2.0 * float(tvd(p, q)), atol=F32_ATOL)
        other = np.random.default_rng(seed).normal(scale=2.0, size=(64, k)).astype(np.float32)
        assert float(jnp.min(_hinge_expected_loss(p, q, other))) >= best - F32_ATOL


def test_optimal_discriminator_is_half_when_p_equals_q_and_at_empty_points():
    p = jnp.array([0.25, 0.75, 0.0])
    np.testing.assert_allclose(G.optimal_discriminator(p, p), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(float(G.gan_value(p, p, G.optimal_discriminator(p, p))), -LOG4)


def test_saturating_gradient_vanishes_nonsaturating_does_not():
    # D(G(z)) = sigmoid(logit) -> 0 as logit -> -inf: the discriminator rejects every sample
    logits = jnp.array([-2.0, -5.0, -10.0, -20.0])
    sat = jax.vmap(jax.grad(lambda v: G.generator_loss(v[None], saturating=True)[0]))(logits)
    ns = jax.vmap(jax.grad(lambda v: G.generator_loss(v[None])[0]))(logits)
    np.testing.assert_allclose(sat, -jax.nn.sigmoid(logits), rtol=RTOL)  # -D
    np.testing.assert_allclose(ns, -jax.nn.sigmoid(-logits), rtol=RTOL)  # -(1 - D)
    assert abs(float(sat[-1])) < 1e-8 and abs(float(ns[-1]) + 1.0) < 1e-6
    assert np.all(np.abs(np.diff(np.asarray(sat))) > 0)  # shrinking as D(G(z)) -> 0


# ---------------------------------------------------------------- Wasserstein critics


def test_critic_generator_and_hinge_losses_against_reference(key):
    real, fake = jax.random.normal(key, (2, 32)) * 3.0
    np.testing.assert_allclose(G.critic_loss(real, fake), fake - real, rtol=RTOL)
    np.testing.assert_allclose(G.wasserstein_generator_loss(fake), -fake, rtol=RTOL)
    ref = np.maximum(0, 1 - np.asarray(real)) + np.maximum(0, 1 + np.asarray(fake))
    np.testing.assert_allclose(G.hinge_discriminator_loss(real, fake), ref, rtol=RTOL)


def test_critic_objective_of_the_optimal_1d_critic_is_w1(key):
    # p = N(0, 1), q = N(delta, 1): W1 = |delta|, attained by f(x) = -x (1-Lipschitz)
    delta, n = 1.5, 200_000
    x = jax.random.normal(key, (n,))
    objective = -float(jnp.mean(G.critic_loss(-x, -(x + delta))))  # E_p f - E_q f
    np.testing.assert_allclose(objective, delta, rtol=1e-5)


@pytest.mark.parametrize("shape", [(16, 2), (4, 8, 8, 1)])
def test_gradient_penalty_zero_for_unit_norm_linear_critic(key, shape):
    k_w, k_x, k_y = jax.random.split(key, 3)
    w = jax.random.normal(k_w, shape[1:])
    w = w / jnp.linalg.norm(w)  # ||grad f|| = ||w|| = 1 everywhere
    critic = lambda x: jnp.sum(x * w[None], axis=tuple(range(1, x.ndim)))
    real, fake = jax.random.normal(k_x, shape), jax.random.normal(k_y, shape)
    np.testing.assert_allclose(G.gradient_penalty(key, critic, real, fake), 0.0, atol=1e-10)


def test_gradient_penalty_linear_critic_and_interpolates(key):
    # f(x) = a . x has gradient a: P = (|a| - 1)^2 at every interpolate
    a = jnp.array([3.0, 4.0])
    critic = lambda x: x @ a
    real, fake = jax.random.normal(key, (2, 8, 2))
    np.testing.assert_allclose(
        G.gradient_penalty(key, critic, real, fake), np.full(8, 16.0), rtol=RTOL
    )
    # f(x) = |x|^2 / 2 has gradient x-hat: P = (|eps x + (1 - eps) y| - 1)^2, checked by hand
    eps = jnp.linspace(0.0, 1.0, 8)
    quad = lambda x: 0.5 * jnp.sum(x**2, axis=-1)
    interp = eps[:, None] * real + (1 - eps[:, None]) * fake
    expected = (np.linalg.norm(np.asarray(interp), axis=-1) - 1.0) ** 2
    ours = G.gradient_penalty(key, quad, real, fake, noise=eps)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=ATOL)
    # the default draw is U[0, 1] from the key: the same with and without jit
    jitted = jax.jit(G.gradient_penalty, static_argnums=1)(key, quad, real, fake)
    np.testing.assert_allclose(jitted, G.gradient_penalty(key, quad, real, fake), rtol=RTOL)


def test_gradient_penalty_double_backprop_finite_for_flat_critic(key):
    # a critic with zero gradient at the interpolates: sqrt'(0) would give NaN without GP_EPS
    params = jnp.zeros(2)
    real, fake = jax.random.normal(key, (2, 4, 2))

    def total(w):
        return jnp.mean(G.gradient_penalty(key, lambda x: x @ w, real, fake))

    value, grad = jax.value_and_grad(total)(params)
    np.testing.assert_allclose(float(value), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(grad))


def test_clip_weights_projects_every_leaf():
    params = {"a": jnp.array([-1.0, 0.005, 2.0]), "b": {"c": jnp.full((2, 2), -0.5)}}
    clipped = G.clip_weights(params, 0.01)
    assert jax.tree.structure(clipped) == jax.tree.structure(params)
    np.testing.assert_allclose(clipped["a"], [-0.01, 0.005, 0.01])
    np.testing.assert_allclose(clipped["b"]["c"], np.full((2, 2), -0.01))


def test_loss_errors():
    with pytest.raises(ValueError, match="real_logits must have shape"):
        G.discriminator_loss(jnp.zeros((2, 1)), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"shapes must match: real_logits \(3,\), fake_logits"):
        G.discriminator_loss(jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(ValueError, match="fake_logits must have shape"):
        G.generator_loss(jnp.zeros(()))
    with pytest.raises(ValueError, match=r"shapes must match: real_scores \(3,\), fake_scores"):
        G.critic_loss(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="fake_scores must have shape"):
        G.wasserstein_generator_loss(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"shapes must match: real_scores \(1,\), fake_scores"):
        G.hinge_discriminator_loss(jnp.zeros(1), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"shapes must match: p \(2,\), q \(3,\)"):
        G.optimal_discriminator(jnp.ones(2) / 2, jnp.ones(3) / 3)
    with pytest.raises(ValueError, match=r"shapes must match: p \(2,\), q \(2,\), d \(3,\)"):
        G.gan_value(jnp.ones(2) / 2, jnp.ones(2) / 2, jnp.ones(3))
    critic = lambda x: jnp.sum(x, -1)
    with pytest.raises(ValueError, match=r"shapes must match: real \(2, 3\), fake \(3, 3\)"):
        G.gradient_penalty(jax.random.key(0), critic, jnp.zeros((2, 3)), jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"real and fake must have shape \[batch, \*event\]"):
        G.gradient_penalty(jax.random.key(0), critic, jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"noise must have shape \(2,\)"):
        G.gradient_penalty(None, critic, jnp.zeros((2, 3)), jnp.zeros((2, 3)), noise=jnp.ones(3))
    with pytest.raises(ValueError, match="c must be positive"):
        G.clip_weights({"w": jnp.ones(2)}, 0.0)


# ---------------------------------------------------------------- mode coverage


def test_mode_coverage_counts_by_hand():
    means = ring_means(8, 2.0)
    std = 0.02
    # 100 samples: 60 on mode 0, 39 on mode 3, 1 on mode 5 (1 % exactly), none elsewhere
    samples = np.concatenate(
        [np.repeat(means[[0]], 60, 0), np.repeat(means[[3]], 39, 0), means[[5]] + 2.9 * std]
    )
    samples[-1] = means[5] + np.array([2.9 * std, 0.0])
    cover = G.mode_coverage(samples, means, std)
    assert cover.modes == 3
    assert cover.high_quality == 1.0
    np.testing.assert_array_equal(cover.counts, [60, 0, 0, 39, 0, 1, 0, 0])
    # 3.1 std away is not high quality; the mode loses its only sample
    samples[-1] = means[5] + np.array([3.1 * std, 0.0])
    cover = G.mode_coverage(samples, means, std)
    assert cover.modes == 2
    np.testing.assert_allclose(cover.high_quality, 0.99)


def test_mode_coverage_of_the_data_itself_is_full(key):
    for means in (ring_means(8, 2.0), grid_means(5, 2.0)):
        x = means[np.arange(5000) % len(means)] + 0.02 * np.asarray(
            jax.random.normal(key, (5000, 2))
        )
        cover = G.mode_coverage(x, means, 0.02)
        assert cover.modes == len(means)
        assert cover.high_quality > 0.98  # chi-square(2) beyond 3 std: exp(-4.5) = 1.1 %


def test_mode_coverage_errors():
    means = ring_means(8, 2.0)
    with pytest.raises(ValueError, match="samples must have shape"):
        G.mode_coverage(np.zeros((0, 2)), means, 0.02)
    with pytest.raises(ValueError, match=r"means must have shape \[K, 3\]"):
        G.mode_coverage(np.zeros((4, 3)), means, 0.02)
    with pytest.raises(ValueError, match="std must be positive"):
        G.mode_coverage(np.zeros((4, 2)), means, 0.0)


# ---------------------------------------------------------------- players


@pytest.mark.parametrize("image_shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_dcgan_players_shapes(key, image_shape):
    # shapes by abstract evaluation: no compilation
    gen = G.DCGANGenerator(image_shape, features=8, latent_dim=16)
    disc = G.DCGANDiscriminator(features=8)
    z = jax.ShapeDtypeStruct((3, 16), jnp.float32)
    g_vars = jax.eval_shape(lambda z: gen.init(key, z, train=False), z)
    x, _ = jax.eval_shape(lambda v, z: gen.apply(v, z, mutable=["batch_stats"]), g_vars, z)
    assert x.shape == (3, *image_shape)
    d_vars = jax.eval_shape(lambda x: disc.init(key, x), x)
    assert jax.eval_shape(disc.apply, d_vars, x).shape == (3,)
    width = 8 * 2 ** (G.dcgan_plan(image_shape)[1] - 1)  # channels double per upsampling
    assert g_vars["params"]["ConvTranspose_0"]["kernel"].shape == (4, 4, width, width // 2)


def test_dcgan_plan():
    assert G.dcgan_plan((8, 8, 1)) == (2, 2)
    assert G.dcgan_plan((28, 28, 1)) == (7, 2)
    assert G.dcgan_plan((32, 32, 3)) == (4, 3)
    with pytest.raises(ValueError, match="square"):
        G.dcgan_plan((8, 6, 1))
    with pytest.raises(ValueError, match="even and at least 4"):
        G.dcgan_plan((7, 7, 1))


def test_critic_is_per_example(key):
    # gradient_penalty needs f(x)_i to depend on x_i only: the Jacobian is block diagonal
    # (convolutions, the layer norm over [H, W, C] and the projection head are per example)
    disc = G.DCGANDiscriminator(features=4, normalization="layer", num_classes=10)
    x = jax.random.uniform(key, (3, 8, 8, 1))
    y = jnp.array([0, 4, 9])

    @jax.jit
    def jacobian(x):
        d_vars = disc.init(key, x, y)
        return jax.jacobian(lambda x: disc.apply(d_vars, x, y))(x)  # [3, 3, 8, 8, 1]

    jac = jacobian(x)
    off_diagonal = jac.reshape(3, 3, -1) * (1.0 - jnp.eye(3))[:, :, None]
    np.testing.assert_allclose(off_diagonal, 0.0, atol=1e-12)
    assert float(jnp.max(jnp.abs(jac))) > 0


def test_conditional_players_use_labels(key):
    gen = G.DCGANGenerator((8, 8, 1), features=4, num_classes=10, latent_dim=8)
    disc = G.DCGANDiscriminator(features=4, num_classes=10)
    z = jnp.tile(jax.random.normal(key, (1, 8)), (2, 1))
    y = jnp.array([1, 7])

    @jax.jit
    def run(z, y):
        x, g_vars = gen.init_with_output(key, z, y, train=False)
        d_vars = disc.init(key, x, y)
        return x, disc.apply(d_vars, jnp.stack([x[0], x[0]]), y), g_vars, d_vars

    x, logits, g_vars, d_vars = run(z, y)
    assert x.shape == (2, 8, 8, 1) and float(jnp.max(jnp.abs(x))) <= 1.0  # tanh output
    assert float(jnp.max(jnp.abs(x[0] - x[1]))) > 0  # same z, different labels
    assert float(jnp.abs(logits[0] - logits[1])) > 0  # same image: the projection term sees y
    with pytest.raises(ValueError, match="needs labels"):
        jax.eval_shape(lambda z: gen.apply(g_vars, z, train=False), z)
    with pytest.raises(ValueError, match="needs labels"):
        jax.eval_shape(lambda x: disc.apply(d_vars, x), x)


def test_player_errors(key):
    init = lambda module, *args: jax.eval_shape(lambda: module.init(key, *args))
    with pytest.raises(ValueError, match="labels must be None"):
        init(G.DCGANGenerator(), jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="labels must be None"):
        init(G.MLPGenerator(), jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="normalization must be one of"):
        init(G.MLPDiscriminator(normalization="batch"), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="normalization must be one of"):
        init(G.DCGANDiscriminator(normalization="batch"), jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"z must have shape \[batch, 3\]"):
        init(G.MLPGenerator(latent_dim=3), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"z must have shape \[batch, 32\]"):
        init(G.DCGANGenerator(), jnp.zeros((2, 4)))


def test_spectral_critic_sigma_matches_svd_after_enough_steps(key):
    disc = G.MLPDiscriminator(features=16, depth=2, normalization="spectral")
    x = jax.random.normal(key, (8, 2))
    variables = jax.jit(disc.init)(key, x)
    params, stats = variables["params"], variables[SPECTRAL]

    def step(stats):
        _, new = disc.apply(
            {"params": params, SPECTRAL: stats}, x, update_stats=True, mutable=[SPECTRAL]
        )
        return new[SPECTRAL]

    stats = jax.jit(lambda s: jax.lax.fori_loop(0, 200, lambda _, s: step(s), s))(stats)
    kernels = jax.tree_util.tree_leaves_with_path(params)
    sigmas = jax.tree_util.tree_leaves_with_path(stats)
    kernels = {jax.tree_util.keystr(p[:-1]): k for p, k in kernels if p[-1].key == "kernel"}
    sigmas = {jax.tree_util.keystr(p[:-1]): s for p, s in sigmas if p[-1].key == "sigma"}
    assert sigmas.keys() == kernels.keys() and len(sigmas) == 3
    for name, kernel in kernels.items():
        np.testing.assert_allclose(sigmas[name], spectral_norm_exact(kernel), rtol=1e-3)


# ---------------------------------------------------------------- alternating updates


def _mixture_state(variant: str, n_critic: int = 3, steps: int = 4):
    dataset = load_dataset("eight_gaussians")
    options = {"variant": variant, "n_critic": n_critic, "width": 8, "depth": 1}
    task = R.make_task(dataset, options)
    config = TrainConfig(
        steps=steps, batch_size=n_critic * 8, log_every=steps, schedule="constant", seed=1
    )
    arrays = {k: v[:256] for k, v in dataset.train.items()}
    state, tx = init_state(task, config, arrays)
    return task, config, tx, arrays, state


@pytest.mark.parametrize("variant", ["wgan", "sngan"])  # clipping + RMSProp; hinge + SN
def test_one_jitted_step_updates_both_players(variant):
    task, config, tx, arrays, state = _mixture_state(variant)
    chunk = make_train_chunk(task, config, tx, {k: jnp.asarray(v) for k, v in arrays.items()})
    d_before = jax.tree.map(np.asarray, state.extra["discriminator"])
    g_before = jax.tree.map(np.asarray, state.params)
    new, metrics = chunk(state)
    assert int(new.step) == config.steps
    assert all(np.all(np.isfinite(v)) for v in metrics.values())
    for before, after in (
        (g_before["params"], new.params["params"]),
        (d_before["params"], new.extra["discriminator"]["params"]),
    ):
        moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), before, after)
        assert max(jax.tree.leaves(moved)) > 0
    if R.VARIANTS[variant].clip is not None:
        c = R.VARIANTS[variant].clip
        leaves = jax.tree.leaves(new.extra["discriminator"]["params"])
        assert max(float(jnp.max(jnp.abs(w))) for w in leaves) <= c + 1e-7
    if R.VARIANTS[variant].normalization == "spectral":
        u_before = jax.tree.leaves(d_before[SPECTRAL])
        u_after = jax.tree.leaves(new.extra["discriminator"][SPECTRAL])
        assert any(float(np.max(np.abs(a - b))) > 0 for a, b in zip(u_before, u_after, strict=True))


def test_n_critic_steps_run_inside_the_step():
    # the discriminator's optimiser counts its own updates: n_critic per loop step
    task, config, tx, arrays, state = _mixture_state("wgan_gp", n_critic=3, steps=2)
    chunk = make_train_chunk(task, config, tx, {k: jnp.asarray(v) for k, v in arrays.items()})
    new, _ = chunk(state)
    counts = [
        int(leaf)
        for leaf in jax.tree.leaves(new.extra["d_opt_state"])
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.integer) and jnp.ndim(leaf) == 0
    ]
    assert counts and all(c == 3 * 2 for c in counts)


def test_batch_size_must_be_a_multiple_of_n_critic():
    task, _, tx, arrays, state = _mixture_state("wgan_gp", n_critic=3)
    batch = {k: jnp.asarray(v[:10]) for k, v in arrays.items()}
    with pytest.raises(ValueError, match="multiple of n_critic"):
        task.update(state, jax.random.key(0), batch, tx, None)


@pytest.mark.parametrize("variant", ["wgan_gp", "wgan"])  # penalty; clipping + RMSProp
def test_alternating_update_is_critic_steps_then_a_generator_step(key, variant):
    # split(key) = (critic keys split n_critic ways, generator key); slice j feeds critic step j
    task, _, tx, arrays, state = _mixture_state(variant, n_critic=2)
    gan = task.model
    real = jnp.asarray(arrays["x"][:16])
    d_vars, d_opt = state.extra["discriminator"], state.extra["d_opt_state"]
    statics = {"game": gan.game, "d_tx": gan.d_tx}
    k_critic, k_gen = jax.random.split(key)
    by_hand = (d_vars, d_opt)
    for k, x in zip(jax.random.split(k_critic, 2), (real[:8], real[8:]), strict=True):
        *by_hand, metrics = G.critic_step(k, *by_hand, state.params, x, **statics)
    g_vars, g_opt, g_metrics = G.generator_step(
        k_gen, state.params, state.opt_state, by_hand[0], 8, game=gan.game, g_tx=tx
    )
    update = functools.partial(G.alternating_update, g_tx=tx, n_critic=2, **statics)
    for fn in (update, jax.jit(update)):
        out = fn(key, state.params, state.opt_state, d_vars, d_opt, real)
        want = (g_vars, g_opt, *by_hand)
        for got, ref in zip(jax.tree.leaves(out[:4]), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[4]["g_loss"], g_metrics["g_loss"], rtol=1e-5)
    assert set(out[4]) == {"d_loss", "gp", "score_gap", "g_loss"}
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_sampler_scales_the_latent_prior_by_the_temperature(key):
    gen = G.MLPGenerator(out_dim=2, features=8, depth=1, latent_dim=3)
    params = jax.jit(gen.init)(key, jnp.zeros((1, 3)))
    z = jax.random.normal(key, (5, 3))
    for tau in (1.0, 0.5):
        np.testing.assert_allclose(
            G.sample(key, gen, params, 5, temperature=tau), gen.apply(params, tau * z), rtol=RTOL
        )
    frozen = G.sample(key, gen, params, 5, temperature=0.0)  # every z at the prior's mean
    np.testing.assert_allclose(frozen, np.repeat(gen.apply(params, jnp.zeros((1, 3))), 5, 0))
    with pytest.raises(ValueError, match="n must be a positive int"):
        G.sample(key, gen, params, 0)
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        G.sample(key, gen, params, 5, labels=jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        G.sample(key, gen, params, 5, temperature=-1.0)


def test_task_sample_is_the_family_sampler_in_pixel_range(key):
    # Task.sample(params, key, n) is genjax.gan.sample mapped from [-1, 1] to [0, 1]; a
    # conditional GAN cycles through the classes
    dataset = load_dataset("digits")
    task = R.make_task(dataset, {"variant": "sngan", "width": 4}, conditional=True)
    g_vars, _ = task.init(key, {k: v[:2] for k, v in dataset.train.items()})
    images = task.sample(g_vars, key, 12)
    labels = jnp.arange(12) % 10
    raw = G.sample(key, task.model.generator, g_vars, 12, labels=labels)
    np.testing.assert_allclose(images, np.clip((np.asarray(raw) + 1.0) / 2.0, 0, 1), atol=1e-6)
    assert images.shape == (12, 8, 8, 1)


def test_make_task_errors():
    dataset = load_dataset("eight_gaussians")
    with pytest.raises(ValueError, match="variant must be one of"):
        R.make_task(dataset, {"variant": "lsgan"})
    with pytest.raises(ValueError, match="d_optimizer must be"):
        R.make_task(dataset, {"d_optimizer": "sgd"})
    with pytest.raises(ValueError, match="decay_steps must be"):
        R.make_task(dataset, {"d_decay_steps": 0})


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_discriminator_rate_decays_by_cosine_over_its_updates(kind):
    # constant unit gradients: Adam's step is the rate itself; RMSProp's is rate / sqrt(v_t)
    lr, steps, final = 1e-2, 10, 0.05
    tx = R.discriminator_optimizer(kind, lr, 0.5, 0.9, decay_steps=steps, final_lr_fraction=final)
    ref = R.discriminator_optimizer(kind, lr, 0.5, 0.9)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.ones(3)}
    state, ref_state = tx.init(params), ref.init(params)
    for t in range(steps + 2):
        update, state = tx.update(grads, state, params)
        ref_update, ref_state = ref.update(grads, ref_state, params)
        want = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
        np.testing.assert_allclose(update["w"], want * ref_update["w"], rtol=1e-5, atol=0)


def test_mixture_options_share_players_and_decay_across_games():
    dataset = load_dataset("eight_gaussians")
    for variant in S.STUDY_VARIANTS:
        options = R.mixture_options(variant, steps=100)
        assert options["depth"] == R.MIXTURE_DEPTH and options["d_decay_steps"] == 100
        gan = R.make_mixture_task(dataset, {"variant": variant}).model
        assert gan.generator.depth == gan.discriminator.depth == R.MIXTURE_DEPTH
        want_gp = R.TOY_GP_WEIGHT if variant == "wgan_gp" else R.VARIANTS[variant].gp_weight
        assert gan.variant.gp_weight == want_gp
    # options override the defaults
    gan = R.make_mixture_task(dataset, {"depth": 2, "gp_weight": 10.0}).model
    assert gan.generator.depth == 2 and gan.variant.gp_weight == 10.0


@pytest.mark.slow
def test_conditional_digits_step_and_sampler(key):
    dataset = load_dataset("digits")
    task = R.make_task(dataset, {"variant": "sngan", "width": 4}, conditional=True)
    config = TrainConfig(steps=2, batch_size=16, log_every=2, schedule="constant")
    state = fit(task, dataset.train, config, progress=False)
    images = task.sample(state.ema_params, key, 20)
    assert images.shape == (20, 8, 8, 1)
    assert float(jnp.min(images)) >= 0.0 and float(jnp.max(images)) <= 1.0
    assert "batch_stats" in state.params


# ---------------------------------------------------------------- training (slow)


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, variant",
    [(d, v) for d in ("eight_gaussians", "gaussian_grid") for v in ("wgan_gp", "sngan")],
)
def test_lipschitz_games_cover_every_mode(data, variant):
    # the mode-coverage study of docs/gans.md at the recipes' full budget and seed
    dataset = load_dataset(data)
    task = R.make_mixture_task(dataset, {"variant": variant})
    state = fit(task, dataset.train, R.mixture_config(False), progress=False)
    samples = np.asarray(task.sample(state.ema_params, jax.random.key(1), 10_000))
    means = R.mixture_means(data)
    cover = G.mode_coverage(samples, means, R.MIXTURE_STD)
    assert cover.modes == len(means)
    assert cover.high_quality >= 0.8


@pytest.mark.slow
def test_dcgan_digits_does_not_collapse():
    # the dcgan_digits recipe at its full budget: near the training images' sliced W1 to the
    # test images (0.022; the collapsed run with Adam beta1 = 0.5 scored 0.217) and a class
    # histogram near uniform (a single class is 2.30 nats from it)
    recipe = recipes.get("dcgan_digits")
    dataset = load_dataset("digits")
    task = recipe.make_task(dataset, {})
    state = fit(task, dataset.train, recipe.config(False), progress=False)
    report = recipe.evaluate(task, state.ema_params, dataset, jax.random.key(1))
    assert report.value < 2 * report.baseline_value
    assert report.extra["kl_class_histogram_to_uniform"] < 0.1


def test_study_figure_draws_a_panel_per_saved_run(tmp_path):
    ring = R.mixture_means("eight_gaussians")
    for variant in ("data", "sngan"):
        np.save(tmp_path / f"samples_eight_gaussians_{variant}.npy", ring)
    row = {"data": "eight_gaussians", "variant": "sngan", "modes": 8, "num_modes": 8}
    rows = [{**row, "high_quality": 1.0}]
    path = S.study_figure(tmp_path, "eight_gaussians", rows, tmp_path / "fig" / "gan.png")
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 1.5 * height  # two panels side by side


def test_study_table_has_a_row_per_game_and_columns_per_data_set():
    def row(data, variant, modes, num, hq):
        return {
            "data": data,
            "variant": variant,
            "modes": modes,
            "num_modes": num,
            "high_quality": hq,
            "seconds": 1.0,
            "steps": 10,
            "seed": 0,
        }

    rows = [
        row("eight_gaussians", "data", 8, 8, 0.99),
        row("eight_gaussians", "sngan", 7, 8, 0.8123),
        row("gaussian_grid", "data", 25, 25, 0.989),
        row("gaussian_grid", "sngan", 21, 25, 0.5),
        row("gaussian_grid", "minimax", 1, 25, 0.9),
    ]
    lines = S.study_table(rows).splitlines()
    assert lines[0].count("modes") == 2 and "ring of 8" in lines[0] and "grid of 25" in lines[0]
    body = {line.split("|")[1].strip(): line for line in lines[2:] if line.startswith("|")}
    assert body["SN-GAN (hinge)"].split("|")[2:6] == [" 7/8 ", " 81.2 % ", " 21/25 ", " 50.0 % "]
    assert body["minimax GAN"].split("|")[2:4] == ["  ", "  "]  # not run on the ring
    assert next(iter(body)) == "test samples (ceiling)"


# ---------------------------------------------------------------- BigGAN's tricks


def test_conditional_batch_norm_is_batch_norm_with_a_class_affine_map(key):
    h = jax.random.normal(key, (6, 2, 2, 3)) * 2.0 + 1.0
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    cbn = G.ConditionalBatchNorm(3)
    variables = jax.jit(lambda k: cbn.init(k, h, labels, train=False))(key)
    gamma, beta = jnp.arange(9.0).reshape(3, 3) / 10, -jnp.arange(9.0).reshape(3, 3) / 5
    params = {"gamma": {"embedding": gamma}, "beta": {"embedding": beta}}
    out, _ = cbn.apply(
        {**variables, "params": params}, h, labels, train=True, mutable=["batch_stats"]
    )
    x = np.asarray(h)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    normed = (x - mean) / np.sqrt(var + 1e-5)  # flax's BatchNorm epsilon
    g, b = np.asarray(gamma)[labels], np.asarray(beta)[labels]  # [6, 3]
    want = (1 + g)[:, None, None, :] * normed + b[:, None, None, :]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_conditional_bn_generator_feeds_the_label_to_the_first_layer_and_every_norm(key):
    """BigGAN-deep's input: at z = 0 the first layer's output still depends on the class (with
    the label in the norms alone it would be the dense bias, the same for every class)."""
    gen = G.DCGANGenerator((8, 8, 1), features=4, num_classes=10, conditional_bn=True)
    z, labels = jnp.zeros((4, 32)), jnp.array([0, 1, 2, 3])
    variables = jax.jit(lambda k: gen.init(k, z, labels, train=False))(key)
    assert {"Embed_0", "ConditionalBatchNorm_0", "ConditionalBatchNorm_1"} <= set(
        variables["params"]
    )
    _, inter = gen.apply(variables, z, labels, train=False, capture_intermediates=True)
    first = np.asarray(inter["intermediates"]["Dense_0"]["__call__"][0])  # [4, s0 s0 2F]
    assert np.abs(first[1:] - first[:1]).max(axis=1).min() > 1e-3
    with pytest.raises(ValueError, match="conditional_bn needs num_classes"):
        G.DCGANGenerator((8, 8, 1), conditional_bn=True).init(key, z, train=False)


class _Latents(nn.Module):
    """A generator that returns its latent code: the sampler's z made visible."""

    latent_dim: int = 3

    @nn.compact
    def __call__(self, z, labels=None, train=True):
        return z


def test_truncated_sampling_keeps_z_in_the_box_and_none_is_the_plain_sampler(key):
    gen = _Latents()
    z = G.sample(key, gen, {}, 2000, truncation=0.5)
    assert float(jnp.max(jnp.abs(z))) <= 0.5
    assert float(jnp.std(z)) > 0.25  # resampled inside [-0.5, 0.5], not clipped to its edges
    np.testing.assert_array_equal(G.sample(key, gen, {}, 5), jax.random.normal(key, (5, 3)))
    half = G.sample(key, gen, {}, 5, truncation=1.0, temperature=0.5)
    np.testing.assert_allclose(half, 0.5 * G.sample(key, gen, {}, 5, truncation=1.0), rtol=RTOL)
    with pytest.raises(ValueError, match="truncation must be positive"):
        G.sample(key, gen, {}, 5, truncation=0.0)


def test_truncation_trades_recall_for_precision_on_a_gaussian(key):
    """The truncation trick on an exact generator (identity on N(0, I), 8-D): as the threshold
    falls, the samples crowd the data's dense centre (precision up) and leave its tails
    (recall down), the trade-off measured in genjax.metrics' k-NN precision and recall."""
    from genjax.metrics import precision_recall

    k_data, k_fake = jax.random.split(key)
    real = jax.random.normal(k_data, (1000, 8))
    gen = _Latents(latent_dim=8)
    curve = [
        precision_recall(real, G.sample(k_fake, gen, {}, 1000, truncation=psi))
        for psi in (3.0, 2.0, 1.5, 1.0)
    ]
    precision = np.array([float(p) for p, _ in curve])
    recall = np.array([float(r) for _, r in curve])
    assert np.all(np.diff(precision) > 0) and np.all(np.diff(recall) < 0), curve
    assert recall[-1] < 0.5 * recall[0]
