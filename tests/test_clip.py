"""Tests for genjax.clip and the clip_digits recipe: InfoNCE against a hand loop of
cross-entropies, the mutual-information bound on correlated Gaussians with the optimal critic,
the temperature clip, prompt ensembling and zero-shot logits, class-level recall@1, the model's
invariances, the recipe's batches and its quick run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import captions
from genjax import clip as C
from genjax.data import load_dataset
from genjax.recipes import clip as R
from genjax.recipes import get, run

RTOL = 1e-5
ATOL = 1e-5
Z = 4.0  # Monte Carlo half-width in standard errors


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def unit(seed, shape):
    x = normal(seed, shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_info_nce(u, v, s):
    """The symmetric InfoNCE loss by a loop over rows and columns (numpy, float64)."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    scale = min(math.exp(s), 100.0)
    n = len(u)
    rows, cols = [], []
    for i in range(n):
        row = [scale * u[i] @ v[j] for j in range(n)]  # image i against every text
        col = [scale * u[j] @ v[i] for j in range(n)]  # text i against every image
        rows.append(-(row[i] - math.log(sum(math.exp(z) for z in row))))
        cols.append(-(col[i] - math.log(sum(math.exp(z) for z in col))))
    return 0.5 * (np.mean(rows) + np.mean(cols))


@given(n=st.integers(1, 7), dim=st.integers(1, 5), s=st.floats(-2.0, 5.0), seed=st.integers(0, 99))
def test_info_nce_equals_a_hand_loop_of_cross_entropies(n, dim, s, seed):
    u, v = unit(seed, (n, dim)), unit(seed + 1000, (n, dim))
    np.testing.assert_allclose(
        C.info_nce_loss(u, v, s), reference_info_nce(u, v, s), rtol=1e-4, atol=1e-6
    )


def test_info_nce_groups_average_independent_losses():
    u, v = unit(0, (3, 5, 4)), unit(1, (3, 5, 4))
    per_group = [reference_info_nce(u[g], v[g], 1.5) for g in range(3)]
    np.testing.assert_allclose(C.info_nce_loss(u, v, 1.5), np.mean(per_group), rtol=1e-4)
    # and a group is not the same as the flattened batch (more negatives)
    flat = C.info_nce_loss(u.reshape(15, 4), v.reshape(15, 4), 1.5)
    assert not np.isclose(flat, np.mean(per_group), rtol=1e-3)


def test_logit_scale_is_clipped_at_100_with_zero_gradient_beyond():
    u, v = unit(0, (4, 3)), unit(1, (4, 3))
    np.testing.assert_allclose(
        C.clip_logits(u, v, math.log(1000.0)), 100.0 * u @ v.T, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        C.clip_logits(u, v, C.INIT_LOG_TEMPERATURE), u @ v.T / 0.07, rtol=RTOL, atol=ATOL
    )
    grad = jax.grad(lambda s: C.info_nce_loss(u, v, s))
    assert float(grad(jnp.float32(math.log(1000.0)))) == 0.0
    assert float(grad(jnp.float32(1.0))) != 0.0


def test_temperature_runs_from_log_n_to_the_hard_margin():
    """At e^s -> 0 every pair is equally likely (L = log N); as e^s grows, L -> 0 when each
    diagonal entry is the strict maximum of its row and column, and L grows without bound
    (linearly in e^s) when one is not."""
    n = 5
    u = np.eye(n, dtype=np.float32)
    np.testing.assert_allclose(C.info_nce_loss(u, u, -30.0), math.log(n), rtol=RTOL)
    assert float(C.info_nce_loss(u, u, math.log(100.0))) < 1e-6  # margin 1, scale 100
    v = u[[1, 0, 2, 3, 4]]  # pairs 0 and 1 swapped: their diagonal entries are 0, not 1
    losses = [float(C.info_nce_loss(u, v, math.log(t))) for t in (10.0, 20.0, 40.0)]
    np.testing.assert_allclose(np.diff(losses), [4.0, 8.0], rtol=1e-3)  # 2 rows, 2 cols of 5


def test_duplicates_floor_the_loss_at_the_log_multiplicity():
    """Pairs of one class embedded identically (a perfect class-level encoder): row i's
    softmax spreads over the k_c captions of its class, so as e^s grows the loss tends to the
    mean over pairs of log k_c, not 0: same-class pairs are false negatives."""
    labels = np.array([0, 0, 0, 1, 2, 2])
    u = np.eye(3, dtype=np.float32)[labels]
    k = np.bincount(labels)[labels]
    np.testing.assert_allclose(
        C.info_nce_loss(u, u, math.log(100.0)), np.mean(np.log(k)), rtol=1e-5, atol=1e-6
    )


RHO, DIM = 0.8, 2
MI = -0.5 * DIM * math.log(1 - RHO**2)  # nats: -1/2 log(1 - rho^2) per dimension


def optimal_critic_embeddings(x, y):
    r"""Vectors whose dot product is the log density ratio log p(x, y) / (p(x) p(y)) up to a
    constant (which cancels in every softmax): a x.y - b |x|^2 - b |y|^2 with
    a = rho / (1 - rho^2), b = rho^2 / (2 (1 - rho^2))."""
    a, b = RHO / (1 - RHO**2), RHO**2 / (2 * (1 - RHO**2))
    one = np.ones((*x.shape[:-1], 1), np.float32)
    u = np.concatenate([a * x, -b * np.sum(x**2, -1, keepdims=True), one], -1)
    v = np.concatenate([y, one, -b * np.sum(y**2, -1, keepdims=True)], -1)
    return u, v


def test_infonce_bound_stays_below_the_gaussian_mutual_information_and_approaches_it():
    """log N - L with the optimal critic on pairs y = rho x + sqrt(1 - rho^2) e: below I for
    every N, increasing in N, within 0.03 nats of I at N = 512 (each mean over 40 000 pairs;
    comparisons with Z standard errors)."""
    rng = np.random.default_rng(0)
    loss = jax.jit(jax.vmap(lambda u, v: C.info_nce_loss(u, v, 0.0)))
    means = []
    for n in (2, 8, 32, 128, 512):
        m = 40_000 // n
        x = rng.standard_normal((m, n, DIM)).astype(np.float32)
        y = (RHO * x + math.sqrt(1 - RHO**2) * rng.standard_normal((m, n, DIM))).astype(np.float32)
        bound = np.asarray(C.mutual_information_bound(loss(*optimal_critic_embeddings(x, y)), n))
        mean, se = float(bound.mean()), float(bound.std() / math.sqrt(m))
        assert mean <= MI + Z * se, (n, mean, MI)
        assert mean <= math.log(n) + 1e-6  # the bound never exceeds log N
        if means:
            assert mean > means[-1][0] - Z * math.hypot(se, means[-1][1]), (n, mean, means)
        means.append((mean, se))
    assert MI - means[-1][0] < 0.03
    assert MI - means[0][0] > 0.5  # N = 2 is far from I: the bound needs many negatives


def test_class_embeddings_are_renormalised_means_of_normalised_prompts():
    prompts = normal(0, (3, 4, 5))
    expected = np.stack(
        [
            np.mean([p / np.linalg.norm(p) for p in prompts[c]], 0)
            / np.linalg.norm(np.mean([p / np.linalg.norm(p) for p in prompts[c]], 0))
            for c in range(3)
        ]
    )
    np.testing.assert_allclose(C.class_embeddings(prompts), expected, rtol=RTOL, atol=ATOL)


def test_zero_shot_of_a_perfect_encoder_is_always_right():
    """Images embedded at their class's direction (any positive scale), prompts at that
    direction with noise orthogonal to all class directions and any positive scale."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    directions = np.eye(16, dtype=np.float32)[:10]  # [10, 16]
    images = directions[labels] * rng.uniform(0.1, 5.0, (200, 1)).astype(np.float32)
    noise = np.zeros((10, 6, 16), np.float32)
    noise[..., 10:] = rng.standard_normal((10, 6, 6))
    prompts = (directions[:, None, :] + noise) * rng.uniform(0.1, 5.0, (10, 6, 1))
    logits = C.zero_shot_logits(images, prompts.astype(np.float32), 2.0)
    assert logits.shape == (200, 10)
    np.testing.assert_array_equal(np.argmax(logits, -1), labels)


def test_recall_at_1_counts_the_class_of_the_nearest_key():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.8]], np.float32)
    keys = np.array([[2.0, 0.1], [0.1, 2.0], [-1.0, 0.0]], np.float32)
    # nearest keys by cosine: 0, 1, 0 (key 0 is nearer the third query despite key 2's sign)
    assert C.recall_at_1(queries, keys, np.array([5, 6, 5]), np.array([5, 6, 7])) == 1.0
    assert C.recall_at_1(queries, keys, np.array([5, 7, 6]), np.array([5, 6, 7])) == pytest.approx(
        1 / 3
    )


@pytest.mark.parametrize(
    ("fn", "args", "error", "match"),
    [
        (C.info_nce_loss, (np.zeros((3, 4)), np.zeros((4, 4)), 0.0), ValueError, "pairs"),
        (C.info_nce_loss, (np.zeros((4,)), np.zeros((4,)), 0.0), ValueError, r"\[\.\.\., n, dim\]"),
        (C.clip_logits, (np.zeros((3, 4)), np.zeros((3, 5)), 0.0), ValueError, "dim"),
        (C.clip_logits, (np.zeros((3, 4)), np.zeros((3, 4)), np.zeros(2)), ValueError, "scalar"),
        (C.class_embeddings, (np.zeros((3, 4)),), ValueError, r"\[classes, prompts, dim\]"),
        (C.zero_shot_logits, (np.zeros((3,)), np.zeros((2, 2, 3))), ValueError, r"\[n, dim\]"),
        (C.zero_shot_logits, (np.zeros((3, 4)), np.zeros((2, 2, 3))), ValueError, "share dim"),
        (C.mutual_information_bound, (1.0, 0), ValueError, "n must be a positive int"),
        (
            C.recall_at_1,
            (np.zeros((3, 2)), np.zeros((4, 2)), np.zeros(3), np.zeros(3)),
            ValueError,
            "key_labels",
        ),
        (
            C.recall_at_1,
            (np.zeros((3, 2)), np.zeros((4, 2)), np.zeros(2), np.zeros(4)),
            ValueError,
            "query_labels",
        ),
    ],
)
def test_bad_arguments_raise(fn, args, error, match):
    with pytest.raises(error, match=match):
        fn(*args)


# ----------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def small_clip():
    model = C.CLIP(
        captions.VOCAB_SIZE,
        embed_dim=8,
        widths=(4, 8),
        strides=(1, 2),
        text_features=16,
        text_heads=2,
        text_layers=1,
    )
    x = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
    tokens, lengths = captions.tokenize(["seven", "the digit 7", "an eight"])
    params = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), x, tokens, lengths)
    return model, params, x, tokens, lengths


def test_clip_embeddings_are_unit_vectors_and_ignore_caption_padding(small_clip):
    model, params, x, tokens, lengths = small_clip
    u, v, s = jax.jit(model.apply)(params, x, tokens, lengths)
    assert u.shape == (3, 8) and v.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, rtol=RTOL)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, rtol=RTOL)
    np.testing.assert_allclose(s, C.INIT_LOG_TEMPERATURE, rtol=RTOL)
    short = jax.jit(lambda p, t, n: model.apply(p, t, n, method="encode_text"))
    np.testing.assert_allclose(short(params, tokens[:, :13], lengths), v, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="text_tower"):
        C.CLIP(captions.VOCAB_SIZE, text_tower="lstm").init(jax.random.key(0), x, tokens, lengths)


# ----------------------------------------------------------------------------- the recipe


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_distinct_class_batches_hold_one_example_of_each_digit(digits):
    labels = digits.train["y"]
    idx = np.asarray(jax.jit(lambda k: R.draw_pairs(k, labels, 60, True))(jax.random.key(3)))
    assert idx.shape == (6, 10)
    np.testing.assert_array_equal(labels[idx], np.broadcast_to(np.arange(10), (6, 10)))
    assert len(np.unique(idx)) > 50  # drawn, not a fixed pick
    uniform = np.asarray(R.draw_pairs(jax.random.key(3), labels, 60, False))
    assert uniform.shape == (1, 60) and len(np.unique(labels[uniform])) < 60
    with pytest.raises(ValueError, match="multiple of 10"):
        R.draw_pairs(jax.random.key(3), labels, 64, True)


def test_recipe_quick_budget_trains_and_evaluates():
    """150 updates (about 25 s under load): zero-shot accuracy well above chance and the
    untrained model's, every extra figure present and in [0, 1]."""
    recipe = get("clip_digits")
    assert recipe.draws_batches and recipe.quick_tour and recipe.tour_steps == R.TOUR_STEPS
    report = run(jax.random.key(0), recipe, "quick").report
    assert report.value > 0.6
    assert report.extra["untrained_zero_shot"] < 0.3
    for name in (
        "zero_shot_train_phrasings",
        "zero_shot_held_out_phrasings",
        "linear_probe",
        "digits_classifier",
        "recall_at_1_image_to_text",
        "recall_at_1_text_to_image",
    ):
        assert 0.0 <= report.extra[name] <= 1.0, name
    assert report.extra["digits_classifier"] > 0.95


@pytest.mark.slow
def test_recipe_tour_budget_reaches_90_percent_zero_shot():
    report = run(jax.random.key(0), get("clip_digits"), "tour").report
    assert report.value >= 0.9
    assert report.extra["zero_shot_held_out_phrasings"] >= 0.9
