"""Style transfer: Gram matrices, content/style losses, total variation, random features and
the stylisation loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import style

RTOL = 1e-5
ATOL = 1e-6


def _maps(key, shape=(2, 5, 4, 3)):
    return jax.random.normal(key, shape)


def test_gram_matrix_matches_a_loop(key):
    """Reference: G_cd = (1/HW) Σ_hw F_hwc F_hwd by explicit loops in float64."""
    f = np.asarray(_maps(key), np.float64)
    b, h, w, c = f.shape
    ref = np.zeros((b, c, c))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                ref[i] += np.outer(f[i, y, x], f[i, y, x])
    np.testing.assert_allclose(style.gram_matrix(f), ref / (h * w), rtol=RTOL, atol=ATOL)


@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_gram_matrix_is_symmetric_psd(seed, scale):
    """Invariant: G = G^T and every eigenvalue >= 0 (up to float32 rounding), for maps of any
    scale; also with fewer positions than channels (rank-deficient G)."""
    rng = np.random.default_rng(seed)
    for shape in ((5, 4, 3), (1, 2, 6)):
        f = (scale * rng.standard_normal(shape)).astype(np.float32)
        check_psd(np.asarray(style.gram_matrix(f), np.float64))


def check_psd(g):
    np.testing.assert_allclose(g, g.T, rtol=0, atol=1e-6 * np.abs(g).max())
    assert np.linalg.eigvalsh(g).min() >= -1e-5 * np.abs(g).max()


def test_gram_matrix_is_invariant_to_permuting_positions(key):
    """Invariant: shuffling the H*W positions (any permutation) leaves G unchanged."""
    f = _maps(key, (1, 6, 5, 4))
    perm = jax.random.permutation(jax.random.key(1), 30)
    shuffled = f.reshape(1, 30, 4)[:, perm].reshape(1, 6, 5, 4)
    assert not np.allclose(shuffled, f)
    np.testing.assert_allclose(
        style.gram_matrix(shuffled), style.gram_matrix(f), rtol=RTOL, atol=ATOL
    )


def test_content_loss_matches_numpy(key):
    """Closed form: mean over H, W, C of (F - P)^2, per example."""
    f, p = _maps(key), _maps(jax.random.key(3))
    ref = np.mean((np.asarray(f) - np.asarray(p)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(style.content_loss(f, p), ref, rtol=RTOL)


def test_style_loss_zero_for_identical_inputs_and_linear_in_weights(key):
    """Identity: targets from the same maps give 0; otherwise Σ_l w_l mean((G_l - A_l)^2)."""
    maps = [_maps(key, (2, 6, 6, 3)), _maps(jax.random.key(1), (2, 3, 3, 5))]
    other = [_maps(jax.random.key(2), (2, 6, 6, 3)), _maps(jax.random.key(4), (2, 3, 3, 5))]
    same = [style.gram_matrix(m) for m in maps]
    np.testing.assert_allclose(style.style_loss(maps, same), 0.0, atol=1e-12)
    grams = [style.gram_matrix(m) for m in other]
    per_layer = [
        np.mean((np.asarray(style.gram_matrix(m)) - np.asarray(g)) ** 2, axis=(1, 2))
        for m, g in zip(maps, grams, strict=True)
    ]
    got = style.style_loss(maps, grams, weights=(0.3, 2.0))
    np.testing.assert_allclose(got, 0.3 * per_layer[0] + 2.0 * per_layer[1], rtol=1e-4)
    assert np.all(np.asarray(got) > 0)
    np.testing.assert_allclose(
        style.style_loss(maps, grams), 0.5 * (per_layer[0] + per_layer[1]), rtol=1e-4
    )


def test_total_variation_matches_hand_computation():
    """Closed form on a 2x3 one-channel image, worked by hand for p = 1 and p = 2."""
    img = jnp.array([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]])[None, :, :, None]  # [1, 2, 3, 1]
    # vertical differences: 2, 1, -3; horizontal: 1, 2 (row 0) and 0, -2 (row 1)
    np.testing.assert_allclose(style.total_variation(img, power=1), [2 + 1 + 3 + 1 + 2 + 0 + 2])
    np.testing.assert_allclose(style.total_variation(img, power=2), [4 + 1 + 9 + 1 + 4 + 0 + 4])
    np.testing.assert_allclose(style.total_variation(jnp.full((3, 4, 4, 2), 0.7)), 0.0)


def test_random_features_shapes_and_flat_image_response(key):
    """Maps are [B, H/f, W/f, F]; a flat mid-grey image gives all-zero features; a flat image of
    any grey gives zero away from the borders (zero-mean filters)."""
    kernels = style.random_feature_kernels(key, channels=3, num_scales=3, kernel_size=3, filters=4)
    factors = (1, 2, 4)
    maps = style.random_features(kernels, jnp.full((2, 16, 16, 3), 0.5), factors)
    assert [m.shape for m in maps] == [(2, 16, 16, 4), (2, 8, 8, 4), (2, 4, 4, 4)]
    assert all(float(jnp.abs(m).max()) == 0.0 for m in maps)
    grey = style.random_features(kernels, jnp.full((1, 16, 16, 3), 0.9), factors)
    np.testing.assert_allclose(grey[0][:, 1:-1, 1:-1], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(kernels[0]).mean(axis=(0, 1, 2)), 0.0, atol=1e-6)


def test_average_pool_matches_reshape_mean(key):
    """Reference: block means by explicit slicing."""
    x = _maps(key, (1, 4, 6, 2))
    got = style.average_pool(x, 2)
    ref = np.asarray(x)[:, 0::2, 0::2] + np.asarray(x)[:, 1::2, 0::2]
    ref = (ref + np.asarray(x)[:, 0::2, 1::2] + np.asarray(x)[:, 1::2, 1::2]) / 4
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


def test_stylize_lowers_the_style_loss_from_the_content_image(key):
    """A short run (8x8, 30 steps) starts at the content image (content loss 0) and lowers the
    style loss; history has steps + 1 entries and the image stays in (0, 1)."""
    kernels = style.random_feature_kernels(key, num_scales=2, kernel_size=3, filters=4)
    feats = functools.partial(style.random_features, factors=(1, 2), kernels=kernels)
    content, target = style.pattern("shapes", 8), style.pattern("checks", 8)
    result = style.stylize(content, target, lambda x: feats(images=x), steps=30, style_weight=1e3)
    h = result.history
    assert all(v.shape == (31,) for v in h.values())
    assert h["content"][0] < 1e-8
    assert h["style"][-1] < 0.5 * h["style"][0]
    assert float(result.image.min()) > 0.0 and float(result.image.max()) < 1.0


def test_stylize_defaults_to_random_features_from_key_zero():
    """The default extractor is random_features with the kernels of jax.random.key(0): the
    history's first entry is the objective of the start image under those features."""
    content, target = style.pattern("shapes", 8), style.pattern("stripes", 8)
    kernels = style.random_feature_kernels(jax.random.key(0))
    feats = functools.partial(style.random_features, kernels)
    start = jax.nn.sigmoid(style.logit(jnp.asarray(content)))
    _, parts = style.stylization_loss(start, style.style_targets(feats, content, target), feats)
    history = style.stylize(content, target, steps=1).history
    assert float(parts["style"]) > 0
    np.testing.assert_allclose(history["style"][0], parts["style"], rtol=1e-4)


def test_patterns_are_images_in_the_unit_interval():
    for name in style.PATTERNS:
        img = style.pattern(name, 16)
        assert img.shape == (1, 16, 16, 3) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0 and img.std() > 0.05


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: style.gram_matrix(jnp.ones((4, 4))), r"\[\*batch, H, W, C\]"),
        (
            lambda: style.content_loss(jnp.ones((1, 2, 2, 3)), jnp.ones((1, 2, 2, 4))),
            "shapes must match",
        ),
        (lambda: style.style_loss([jnp.ones((1, 2, 2, 3))], []), "equal length"),
        (
            lambda: style.style_loss([jnp.ones((1, 2, 2, 3))], [jnp.ones((1, 4, 4))]),
            r"target_grams\[0\] must have shape",
        ),
        (
            lambda: style.style_loss([jnp.ones((1, 2, 2, 3))], [jnp.ones((1, 3, 3))], [-1.0]),
            "weights",
        ),
        (lambda: style.total_variation(jnp.ones((1, 2, 2, 1)), power=3), "power"),
        (lambda: style.random_feature_kernels(jax.random.key(0), kernel_size=4), "kernel_size"),
        (lambda: style.average_pool(jnp.ones((1, 5, 4, 1)), 2), "multiple"),
        (lambda: style.pattern("nope"), "pattern name"),
        (
            lambda: style.stylize(jnp.ones((2, 8, 8, 3)), jnp.ones((1, 8, 8, 3)), lambda x: [x]),
            r"content must have shape \[1, H, W, C\]",
        ),
        (
            lambda: style.stylize(jnp.ones((1, 8, 8, 3)), jnp.ones((1, 8, 8, 1)), lambda x: [x]),
            "same channels",
        ),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow
def test_style_transfer_recipe_meets_its_goal():
    """The tour budget reduces the style loss at least 10x with content within the bound."""
    from genjax import recipes

    report = recipes.run(jax.random.key(0), recipes.get("style_transfer"), "full").report
    assert report.extra["style_reduction_factor"] >= 10.0
    assert report.extra["content_ratio"] <= report.extra["content_bound"]


def test_load_image_reads_files_and_patterns(tmp_path):
    """A PNG written by matplotlib comes back as [1, size, size, 3] in [0, 1] (alpha dropped,
    resized); a pattern name gives the pattern; a missing file names the patterns."""
    import matplotlib.image

    img = np.zeros((4, 4, 3), np.float32)
    img[:, 2:] = 1.0
    matplotlib.image.imsave(tmp_path / "half.png", img)
    got = style.load_image(str(tmp_path / "half.png"), 8)
    assert got.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(got[0, :, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(got[0, :, -1], 1.0, atol=1e-6)
    np.testing.assert_array_equal(style.load_image("waves", 8), style.pattern("waves", 8))
    with pytest.raises(FileNotFoundError, match="pattern name"):
        style.load_image(str(tmp_path / "missing.png"), 8)


def test_stylize_command_writes_result_and_curve(tmp_path, capsys):
    """`genjax stylize CONTENT STYLE --out DIR` writes the comparison, the result and the loss
    curve, and prints the style-loss reduction."""
    from genjax import cli

    code = cli.main(
        ["stylize", "shapes", "checks", "--size", "8", "--steps", "3", "--out", str(tmp_path)]
    )
    assert code == 0
    for name in ("stylized.png", "result.png", "loss_curve.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "style loss" in capsys.readouterr().out


def test_vgg_features_from_a_local_weights_file(tmp_path, key):
    """A small VGG-style stack with random weights, written by the test as .npz: the loaded
    features equal the module applied to the preprocessed images (times the scale), and
    stylisation with them lowers the style loss."""
    from genjax import classifier

    blocks = ((4,), (6,))
    module = classifier.VGGFeatures(blocks)
    params = module.init(key, jnp.zeros((1, 16, 16, 3)))["params"]
    path = classifier.save_npz_params(tmp_path / "tiny_vgg.npz", params)
    feats = style.vgg_features(str(path), blocks, scale=0.01)
    content, target = style.pattern("shapes", 16), style.pattern("stripes", 16)
    maps = feats(jnp.asarray(content))
    assert [m.shape for m in maps] == [(1, 16, 16, 4), (1, 8, 8, 6)]
    bgr = 255.0 * content[..., ::-1] - np.array(classifier.VGG_BGR_MEAN).reshape(1, 1, 1, 3)
    direct = module.apply({"params": params}, jnp.asarray(bgr, jnp.float32))
    np.testing.assert_allclose(maps[1], 0.01 * direct[1], rtol=1e-4, atol=1e-5)
    result = style.stylize(content, target, feats, steps=10, style_weight=1e3)
    assert result.history["style"][-1] < result.history["style"][0]
    with pytest.raises(FileNotFoundError):
        style.vgg_features(str(tmp_path / "missing.npz"))
