"""Tests for genjax.translation, the least-squares GAN losses of genjax.gan and the translation
data of genjax.data: PatchGAN's shape and receptive field, the cycle loss of an inverse pair,
the least-squares optimum, Sobel edges and the hidden transform against scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from genjax import data as D
from genjax import gan
from genjax import segmentation as S
from genjax import translation as T
from genjax.recipes.common import fast_init_key

RTOL = 1e-5
ATOL = 1e-6


# ----------------------------------------------------------------------------- data


def _digits(n=20):
    return D.load_dataset("digits").test["x"][:n], D.load_dataset("digits").test["y"][:n]


def test_edge_maps_are_scipy_sobel_magnitudes():
    x, _ = _digits()
    img = x[..., 0].astype(np.float64)
    gx = np.stack([ndimage.sobel(i, axis=1, mode="constant") for i in img])
    gy = np.stack([ndimage.sobel(i, axis=0, mode="constant") for i in img])
    mag = np.hypot(gx, gy)
    want = mag / mag.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(D.edge_maps(x)[..., 0], want, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(D.edge_maps(np.zeros((1, 8, 8, 1))), 0.0)


def test_hidden_transform_is_a_cross_dilation_then_inversion():
    x, _ = _digits()
    cross = ndimage.generate_binary_structure(2, 1)  # the 3x3 cross
    dilated = np.stack(
        [ndimage.grey_dilation(i, footprint=cross, mode="constant", cval=0.0) for i in x[..., 0]]
    )
    np.testing.assert_allclose(D.thick_inverted(x)[..., 0], 1.0 - dilated, atol=ATOL)


def test_unpaired_domains_come_from_disjoint_halves():
    x, y = _digits(40)
    split = D.unpaired_split(jax.random.key(0), x, y)
    assert len(split["a"]) == 20 and len(split["b"]) == 20
    flat = x.reshape(len(x), -1)
    a_src = [int(np.flatnonzero((flat == a.ravel()).all(1))[0]) for a in split["a"]]
    tx = D.thick_inverted(x).reshape(len(x), -1)
    b_src = [int(np.flatnonzero((tx == b.ravel()).all(1))[0]) for b in split["b"]]
    assert not set(a_src) & set(b_src)
    np.testing.assert_array_equal(split["a_labels"], y[a_src])
    np.testing.assert_array_equal(split["b_labels"], y[b_src])


# ----------------------------------------------------------------------------- PatchGAN


@pytest.mark.parametrize(
    ("features", "size", "patches", "field"), [((32, 64), 24, 6, 18), ((32,), 8, 4, 8)]
)
def test_patchgan_output_shape_and_receptive_field(features, size, patches, field):
    net = T.PatchGAN(features)
    x = jnp.zeros((2, size, size, 1))
    cond = jnp.zeros((2, size, size, 3))
    params = jax.jit(net.init)(fast_init_key(jax.random.key(0)), x, cond)
    assert net.apply(params, x, cond).shape == (2, patches, patches)
    assert S.receptive_field(net.paths()[0]) == (field, 2 ** len(features))
    # measured: the input pixels one central score depends on (leaky ReLU: no dead paths)
    big = 40
    xb = jax.random.normal(jax.random.key(1), (1, big, big, 1))
    o = big // 2 ** len(features) // 2
    grad = jax.jit(jax.grad(lambda v: net.apply(params, v, jnp.zeros((1, big, big, 3)))[0, o, o]))(
        xb
    )
    rows, cols = np.nonzero(np.asarray(grad[0, ..., 0]))
    assert rows.max() - rows.min() + 1 == field == cols.max() - cols.min() + 1
    assert (rows.min(), rows.max()) == S.input_interval(net.paths(), o)


# ----------------------------------------------------------------------------- CycleGAN


@given(st.integers(0, 2**31 - 1))
def test_cycle_loss_is_zero_for_an_exact_inverse_pair(seed):
    a = jax.random.uniform(jax.random.key(seed), (3, 8, 8, 1))
    b = jax.random.uniform(jax.random.key(seed + 1), (4, 8, 8, 1))

    def g(v):  # an invertible map A -> B and its inverse
        return 1.0 - v**2

    def f(v):
        return jnp.sqrt(1.0 - v)

    assert float(T.cycle_loss(a, f(g(a)), b, g(f(b)))) == pytest.approx(0.0, abs=1e-6)
    # a map that is not the inverse: the loss is the mean |F(G(a)) - a| + mean |G(F(b)) - b|
    h = 0.5 * a
    want = np.mean(np.abs(np.asarray(h - a))) + np.mean(np.abs(np.asarray(g(0.5 * b) - b)))
    got = T.cycle_loss(a, h, b, g(0.5 * b))
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_identity_loss_by_hand():
    a, b = jnp.zeros((1, 2, 2, 1)), jnp.ones((1, 2, 2, 1))
    assert float(T.identity_loss(a, a + 0.25, b, b - 0.5)) == pytest.approx(0.75)


def test_least_squares_optimum_is_p_over_p_plus_q():
    """The weighted least-squares loss sum_i p_i (D_i - 1)^2 / 2 + q_i D_i^2 / 2 has zero
    gradient and a positive curvature at D* = p / (p + q), and no grid value beats it."""
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))

    def loss(d):
        real = gan.least_squares_discriminator_loss(d, jnp.zeros_like(d))  # (d - 1)^2 / 2
        fake = gan.least_squares_discriminator_loss(jnp.ones_like(d), d)  # d^2/2
        return jnp.sum(p * real + q * fake)

    d_star = gan.optimal_discriminator(p, q)
    np.testing.assert_allclose(d_star, p / (p + q), rtol=RTOL)
    np.testing.assert_allclose(jax.grad(loss)(d_star), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.diag(jax.hessian(loss)(d_star)), p + q, rtol=RTOL)
    grid = jnp.linspace(0.0, 1.0, 101)
    moved = jnp.where(jnp.eye(7, dtype=bool)[:, None, :], grid[None, :, None], d_star[None, None])
    values = jax.vmap(jax.vmap(loss))(moved)  # [7, 101]: one coordinate at a time on the grid
    assert float(values.min()) >= float(loss(d_star)) - 1e-7


def test_least_squares_losses_by_hand():
    real, fake = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
    np.testing.assert_allclose(gan.least_squares_discriminator_loss(real, fake), [0.0, 2.5])
    np.testing.assert_allclose(gan.least_squares_generator_loss(fake), [0.5, 0.5])
    with pytest.raises(ValueError, match="real_scores"):
        gan.least_squares_discriminator_loss(jnp.zeros((2, 2)), jnp.zeros((2, 2)))


# ----------------------------------------------------------------------------- pix2pix, inpainting


def test_pix2pix_ablations_drop_their_term(key):
    scores = jax.random.normal(key, (3, 2, 2, 2))
    fake = jax.random.uniform(jax.random.key(1), (2, 4, 4, 1))
    target = jax.random.uniform(jax.random.key(2), (2, 4, 4, 1))
    l1 = np.mean(np.abs(np.asarray(fake - target)))
    adv = np.mean(np.asarray(jax.nn.softplus(-scores[2])))  # -log sigmoid(D(x, G(x)))
    args = (scores[0], scores[1], scores[2], fake, target)
    g_only_l1, _, _ = T.pix2pix_losses(*args, adversarial_weight=0.0)
    g_only_gan, d_loss, _ = T.pix2pix_losses(*args, l1_weight=0.0)
    g_both, _, _ = T.pix2pix_losses(*args)
    np.testing.assert_allclose(g_only_l1, 100 * l1, rtol=RTOL)
    np.testing.assert_allclose(g_only_gan, adv, rtol=RTOL)
    np.testing.assert_allclose(g_both, adv + 100 * l1, rtol=RTOL)
    want_d = np.mean(jax.nn.softplus(-scores[0]) + jax.nn.softplus(scores[1]))
    np.testing.assert_allclose(d_loss, want_d, rtol=RTOL)


def test_context_encoder_loss_is_the_hole_mse():
    x = jnp.ones((2, 4, 4, 1))
    masks = jnp.zeros((2, 4, 4, 1)).at[:, 1:3, 1:3].set(1.0)
    pred = jnp.full((2, 4, 4, 1), 0.5).at[:, 0, 0].set(-9.0)  # outside the hole: ignored
    g, d, m = T.context_encoder_losses(x, pred, masks)
    assert float(g) == pytest.approx(0.25) and float(d) == 0.0
    assert float(m["hole_mse"]) == pytest.approx(0.25)
    inp = T.masked_input(x, masks)
    assert inp.shape == (2, 4, 4, 2)
    np.testing.assert_array_equal(inp[..., 0], 1.0 - masks[..., 0])
    np.testing.assert_array_equal(inp[..., 1], masks[..., 0])
    with pytest.raises(ValueError, match="masks"):
        T.masked_input(x, masks[..., 0])


def test_translation_unet_is_the_unet_without_time():
    net = T.translation_unet(1, (8, 16))
    x = jnp.zeros((2, 8, 8, 11))
    params = jax.eval_shape(net.init, jax.random.key(0), x)
    assert jax.eval_shape(net.apply, params, x).shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="num_steps=None"):
        net.apply(params, x, jnp.zeros((2,), jnp.int32))


# ----------------------------------------------------------------------------- training (slow)


def _report(name):
    from genjax import recipes

    return recipes.run(jax.random.key(1), recipes.get(name), "full").report


@pytest.mark.slow
def test_pix2pix_cgan_l1_beats_l1_alone_on_fid_and_draws_the_requested_digits():
    both, l1 = _report("pix2pix_cgan_l1"), _report("pix2pix_l1")
    assert both.value < l1.value < both.baseline_value
    assert both.extra["class_accuracy"] >= 0.95


@pytest.mark.slow
def test_inpainting_with_the_adversarial_term_beats_l2_alone_on_fid():
    joint, l2 = _report("inpaint_l2_adv"), _report("inpaint_l2")
    assert joint.value < l2.value < l2.baseline_value
    assert l2.extra["hole_mse"] < l2.extra["baseline_hole_mse"]


@pytest.mark.slow
def test_cyclegan_finds_the_hidden_transform_and_keeps_the_class():
    cycle, no_cycle = _report("cyclegan"), _report("cyclegan_no_cycle")
    assert cycle.value < min(cycle.baseline_value, no_cycle.value)
    assert cycle.extra["class_accuracy"] >= 0.95
    assert no_cycle.extra["class_accuracy"] < 0.5  # without the cycle: one output for all
