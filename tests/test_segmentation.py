"""Tests for genjax.segmentation and the segmentation canvases of genjax.data: the canvases'
exact labels, receptive fields by formula against gradients, SegNet's unpooling, IoU by hand,
and (slow) the segmentation recipes' training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import data as D
from genjax import segmentation as S
from genjax.nn.norm import GroupNorm
from genjax.recipes.common import fast_init_key

ATOL = 1e-6


@pytest.fixture(scope="module")
def digits():
    return D.load_dataset("digits")


# ----------------------------------------------------------------------------- canvases


def test_canvas_labels_are_the_thresholded_strokes_of_non_overlapping_digits(digits):
    x, y = digits.test["x"], digits.test["y"]
    canvases = D.segmentation_canvases(jax.random.key(0), x, y, 40)
    assert canvases.images.shape == (40, D.CANVAS_SIZE, D.CANVAS_SIZE, 1)
    assert canvases.labels.shape == (40, D.CANVAS_SIZE, D.CANVAS_SIZE)
    for i in range(40):
        present = canvases.classes[i] >= 0
        assert 2 <= present.sum() <= 3
        boxes = canvases.boxes[i][present]
        for a in range(len(boxes)):
            for b in range(a):  # axis-aligned 8x8 boxes overlap iff both offsets are below 8
                assert np.any(np.abs(boxes[a] - boxes[b]) >= 8)
        expected = np.full((D.CANVAS_SIZE,) * 2, D.BACKGROUND)
        for (r, c), cls, j in zip(
            boxes, canvases.classes[i][present], canvases.sources[i][present], strict=True
        ):
            assert y[j] == cls
            digit = x[j, :, :, 0]
            window = canvases.images[i, r : r + 8, c : c + 8, 0]
            assert np.all(window >= digit)  # the digit under the clutter's maximum
            strokes = digit >= D.STROKE_THRESHOLD
            np.testing.assert_array_equal(window[strokes], digit[strokes])
            expected[r : r + 8, c : c + 8][strokes] = cls + 1
        np.testing.assert_array_equal(canvases.labels[i], expected)
    # clutter never reaches the stroke threshold: every bright pixel is a labelled stroke
    bright = canvases.images[..., 0] >= D.STROKE_THRESHOLD
    np.testing.assert_array_equal(bright, canvases.labels != D.BACKGROUND)


def test_canvases_are_deterministic_in_the_key(digits):
    x, y = digits.test["x"][:50], digits.test["y"][:50]
    a = D.segmentation_canvases(jax.random.key(3), x, y, 5)
    b = D.segmentation_canvases(jax.random.key(3), x, y, 5)
    c = D.segmentation_canvases(jax.random.key(4), x, y, 5)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.images, c.images)


def test_canvases_refuse_bad_arguments(digits):
    x, y = digits.test["x"][:10], digits.test["y"][:10]
    with pytest.raises(ValueError, match="labels"):
        D.segmentation_canvases(jax.random.key(0), x, y[:5], 2)
    with pytest.raises(ValueError, match="size"):
        D.segmentation_canvases(jax.random.key(0), x, y, 2, size=12)
    with pytest.raises(ValueError, match="images"):
        D.segmentation_canvases(jax.random.key(0), x[..., 0], y, 2)


def test_square_masks_cover_the_hole():
    centre = D.square_masks(jax.random.key(0), 3, image_size=8, hole=4)
    assert centre.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(centre[:, 2:6, 2:6], 1.0)
    assert centre.sum() == 3 * 16
    random = D.square_masks(jax.random.key(0), 50, image_size=8, hole=3, centered=False)
    assert np.all(random.sum(axis=(1, 2, 3)) == 9)
    assert len({tuple(np.argwhere(m[..., 0])[0]) for m in random}) > 5  # positions vary
    with pytest.raises(ValueError, match="hole"):
        D.square_masks(jax.random.key(0), 1, image_size=8, hole=8)


# ----------------------------------------------------------------------------- receptive field


def _perturb(params, key, scale=0.3):
    """Random values for every parameter (zero-initialised layers would hide paths)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [scale * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )


def _measured_intervals(net, size: int, period: int, repeats: int = 8) -> list[tuple]:
    """For each output pixel ``(c + d, c + d)``, ``d < period`` (every row and column phase of
    the network's strides), the row and column intervals of input pixels whose gradient is
    non-zero. Example ``i`` of one random batch is read at phase ``i % period``, so one
    backward pass measures every phase ``repeats`` times (max pooling passes gradient to its
    argmax only: the support is the union over the repeats)."""
    batch = period * repeats
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 1))
    params = _perturb(jax.jit(net.init)(fast_init_key(jax.random.key(1)), x[:1]), jax.random.key(2))
    pos = size // 2 + np.arange(batch) % period  # [batch]

    def picked(inp):
        out = net.apply(params, inp)  # [batch, size, size, K]
        return jnp.sum(out[np.arange(batch), pos, pos, 0])

    def local(next_fun, args, kwargs, context):
        """GroupNorm's statistics pool every position (a global, rank-one path): read the
        convolutions' field with the normalisation as the identity."""
        if isinstance(context.module, GroupNorm) and context.method_name == "__call__":
            return args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(local):  # traced (and so intercepted) inside the block
        grads = jax.jit(jax.grad(picked))(x)
    support = np.asarray(jnp.any(grads != 0, axis=-1))  # [batch, H, W]
    found = []
    for d in range(period):
        r, c = np.nonzero(np.any(support[d::period], axis=0))
        found.append(((r.min(), r.max()), (c.min(), c.max())))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", S.NETWORKS)
def test_receptive_field_formula_equals_the_gradient_support(name):
    net = S.segmentation_network(name, 3, widths=(4, 8))
    size, period = (80 if name == "unet" else 48), 4
    paths = net.paths()
    measured = _measured_intervals(net, size, period)
    for d, (rows, cols) in enumerate(measured):
        want = S.input_interval(paths, size // 2 + d)
        assert 0 < want[0] and want[1] < size - 1  # inside the image: no padding read
        assert rows == want and cols == want
    if len(paths) == 1:  # a chain: the closed form is the largest extent
        extent = max(hi - lo + 1 for (lo, hi), _ in measured)
        assert S.receptive_field(paths[0]) == (extent, 1)


def test_receptive_field_closed_form_by_hand():
    # two 3x3 convs: 5; a 2x2 pool: +1 = 6, jump 2; a 3x3 conv: +2*2 = 10
    assert S.receptive_field([S.CONV3, S.CONV3, S.POOL2, S.CONV3]) == (10, 2)
    # a 4/2/1 transposed conv reads two neighbours: +1 * 2, then the jump halves
    assert S.receptive_field([S.POOL2, ("convT", 4, 2, 1)]) == (4, 1)
    with pytest.raises(ValueError, match="layer kind"):
        S.receptive_field([("pool", 2)])


# ----------------------------------------------------------------------------- SegNet unpooling


@given(st.integers(0, 2**31 - 1))
def test_unpooling_puts_values_back_at_the_argmax_positions(seed):
    x = jax.random.normal(jax.random.key(seed), (2, 6, 4, 3))
    pooled, idx = S.max_pool_with_indices(x)
    naive = np.asarray(x).reshape(2, 3, 2, 2, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(pooled, naive)
    restored = np.asarray(S.max_unpool(pooled, idx))
    xn = np.asarray(x)
    for b, i, j, c in np.ndindex(pooled.shape):
        window = xn[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c]
        a, bb = np.unravel_index(np.argmax(window), (2, 2))
        got = restored[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c]
        want = np.zeros((2, 2), np.float32)
        want[a, bb] = window[a, bb]
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- IoU


def test_iou_against_a_hand_computation():
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: |∩| = 2 (0,0),(0,1)->no: truth 0 at (0,0),(0,1); pred 0 at (0,0),(1,2)
    #   ∩ = {(0,0)} = 1, ∪ = {(0,0),(0,1),(1,2)} = 3 -> 1/3
    # class 1: truth {(0,2),(1,0)}, pred {(0,1),(0,2),(1,0)}: 2/3
    # class 2: truth {(1,1),(1,2)}, pred {(1,1)}: 1/2
    # class 3: absent from both -> NaN, left out of the mean
    iou = S.iou_per_class(S.confusion_matrix(pred, truth, 4))
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2], rtol=1e-12)
    assert np.isnan(iou[3])
    np.testing.assert_allclose(S.mean_iou(pred, truth, 4), (1 / 3 + 2 / 3 + 1 / 2) / 3)
    np.testing.assert_allclose(S.pixel_accuracy(pred, truth), 4 / 6)
    with pytest.raises(ValueError, match="num_classes"):
        S.confusion_matrix(pred, truth, 2)


def test_pixel_cross_entropy_matches_a_naive_sum(key):
    logits = jax.random.normal(key, (2, 3, 4, 5))
    labels = jax.random.randint(jax.random.key(1), (2, 3, 4), 0, 5)
    got = S.pixel_cross_entropy(logits, labels)
    z = np.asarray(logits, np.float64)
    lse = np.log(np.exp(z).sum(-1))
    naive = np.mean(lse - np.take_along_axis(z, np.asarray(labels)[..., None], -1)[..., 0], (1, 2))
    np.testing.assert_allclose(got, naive, rtol=1e-5)
    with pytest.raises(ValueError, match="labels"):
        S.pixel_cross_entropy(logits, labels[:, :2])


@pytest.mark.parametrize("name", S.NETWORKS)
def test_networks_map_a_canvas_to_class_logits(name):
    net = S.segmentation_network(name, 11)
    x = jax.ShapeDtypeStruct((2, 24, 24, 1), jnp.float32)
    params = jax.eval_shape(net.init, jax.random.key(0), x)
    assert jax.eval_shape(net.apply, params, x).shape == (2, 24, 24, 11)


# ----------------------------------------------------------------------------- training (slow)


@pytest.mark.slow
def test_unet_segments_test_canvases_to_the_stated_mean_iou():
    """The seg_unet recipe at its full budget: test mIoU at least 0.85, far above the
    threshold baseline (which knows where strokes are but not which digit)."""
    from genjax import recipes

    report = recipes.run(jax.random.key(1), recipes.get("seg_unet"), "full").report
    assert report.value >= 0.85
    assert report.baseline_value < 0.2
