"""genjax.captioning: patches, the teacher-forced caption NLL, causal decoding, the image-blind
baseline and its entropy, and the captioning_digits recipe.

Derivation: derivations/25-captioning.md
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import captions
from genjax.captioning import (
    Captioner,
    caption_nll,
    image_blind_entropy,
    patchify,
    sample,
    stop_at_eos,
    unpatchify,
)

RTOL, ATOL = 1e-5, 1e-5  # float32 sums of ~30 log-softmax terms against float64
TINY = dict(features=16, num_layers=1, num_heads=2, max_length=12)


def _tiny(key, image_blind=False, length=8, batch=3):
    model = Captioner(**TINY, image_blind=image_blind)
    k_x, k_t, k_p = jax.random.split(key, 3)
    images = jax.random.uniform(k_x, (batch, 8, 8, 1))
    tokens = jax.random.randint(k_t, (batch, length), 0, captions.VOCAB_SIZE)
    return model, model.init(k_p, images, tokens), images, tokens


# ----------------------------------------------------------------------------- patches


@given(
    b=st.integers(1, 3),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    patch=st.integers(1, 3),
    c=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_unpatchify_inverts_patchify(b, rows, cols, patch, c, seed):
    """Identity: unpatchify(patchify(x)) = x, and patchify(unpatchify(P)) = P."""
    shape = (rows * patch, cols * patch, c)
    x = np.random.default_rng(seed).normal(size=(b, *shape)).astype(np.float32)
    patches = patchify(jnp.asarray(x), patch)
    assert patches.shape == (b, rows * cols, patch * patch * c)
    np.testing.assert_array_equal(unpatchify(patches, patch, shape), x)
    np.testing.assert_array_equal(patchify(unpatchify(patches, patch, shape), patch), patches)


def test_patchify_reads_raster_order_patches_by_hand():
    """Reference: patch r (W/p) + s is the slice x[r p:(r+1) p, s p:(s+1) p] flattened (row,
    column, channel), for 2x2 patches of an 8x8 digit (16 tokens of 4 pixels)."""
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
    patches = np.asarray(patchify(jnp.asarray(x), 2))
    assert patches.shape == (2, 16, 4)
    for b in range(2):
        for r in range(4):
            for s in range(4):
                expected = x[b, 2 * r : 2 * r + 2, 2 * s : 2 * s + 2].reshape(-1)
                np.testing.assert_array_equal(patches[b, 4 * r + s], expected)


# ----------------------------------------------------------------------------- the loss


def test_caption_nll_equals_a_hand_loop_over_positions_and_ignores_pad(key):
    """Reference: a numpy float64 loop over positions, summing logsumexp(z) - z[c_i] for every
    non-PAD target c_i = tokens[i], i >= 1; logits whose target is PAD do not matter."""
    k_l, k_c, k_z = jax.random.split(key, 3)
    tokens, lengths = captions.draw_captions(k_c, jnp.arange(10) % 10)  # [10, 32]
    logits = 3.0 * jax.random.normal(k_l, (10, tokens.shape[1] - 1, captions.VOCAB_SIZE))
    got = np.asarray(caption_nll(logits, tokens))

    z, c = np.asarray(logits, np.float64), np.asarray(tokens)
    expected = np.zeros(len(c))
    for b in range(len(c)):
        for i in range(1, c.shape[1]):
            if c[b, i] == captions.PAD:
                continue
            expected[b] += np.log(np.sum(np.exp(z[b, i - 1]))) - z[b, i - 1, c[b, i]]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)

    # EOS is predicted and BOS is not: lengths - 1 targets per caption, all before PAD
    assert np.all(np.sum(c[:, 1:] != captions.PAD, 1) == np.asarray(lengths) - 1)
    pad_target = jnp.asarray(c[:, 1:] == captions.PAD)[..., None]  # [B, L - 1, 1]
    noisy = jnp.where(pad_target, jax.random.normal(k_z, logits.shape) * 100.0, logits)
    np.testing.assert_allclose(caption_nll(noisy, tokens), got, rtol=RTOL, atol=ATOL)
    assert np.all(np.isfinite(got)) and np.all(got > 0)


def test_stop_at_eos_pads_after_the_first_eos_by_hand():
    """Reference: rows written out by hand."""
    B, E, P = captions.BOS, captions.EOS, captions.PAD
    tokens = jnp.array([[B, 5, E, 7, E, 9], [B, 5, 6, 7, 8, 9], [B, E, E, 4, P, 6]])
    expected = np.array([[B, 5, E, P, P, P], [B, 5, 6, 7, 8, 9], [B, E, P, P, P, P]])
    np.testing.assert_array_equal(stop_at_eos(tokens), expected)


# ----------------------------------------------------------------------------- the model


def test_causal_mask_a_later_token_does_not_change_earlier_logits(key):
    """Invariant: changing caption token k leaves the logits at positions < k unchanged and
    changes those from k on (so the check can fail)."""
    model, params, images, tokens = _tiny(key, length=10)
    logits = model.apply(params, images, tokens)
    for k in (3, 7):
        changed = tokens.at[:, k].set((tokens[:, k] + 1) % captions.VOCAB_SIZE)
        other = model.apply(params, images, changed)
        np.testing.assert_allclose(other[:, :k], logits[:, :k], atol=1e-5)
        assert float(jnp.max(jnp.abs(other[:, k] - logits[:, k]))) > 1e-3


def test_captioner_depends_on_the_image(key):
    """The captioner's logits change with the image (the check below cannot pass vacuously)."""
    model, params, images, tokens = _tiny(key)
    other = model.apply(params, images[::-1], tokens)
    assert float(jnp.max(jnp.abs(other - model.apply(params, images, tokens)))) > 1e-3


def test_image_blind_model_cannot_depend_on_the_image(key):
    """Invariant: the image-blind decoder has no encoder parameters, the same logits for any
    images, and a zero gradient with respect to them."""
    model, params, images, tokens = _tiny(key, image_blind=True)
    names = set(params["params"])
    assert not names & {"patch_embed", "patch_positions", "memory_norm", "encoder_0"}
    assert not any(
        "cross_attention" in jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(params)
    )
    logits = model.apply(params, images, tokens)
    noise = jax.random.uniform(jax.random.fold_in(key, 1), images.shape)
    np.testing.assert_array_equal(model.apply(params, noise, tokens), logits)
    grad = jax.grad(lambda x: jnp.sum(model.apply(params, x, tokens) ** 2))(images)
    np.testing.assert_array_equal(grad, np.zeros(images.shape))


def test_greedy_decoding_under_scan_equals_a_python_argmax_loop(key):
    """Reference: a Python loop that appends argmax of the last position's logits, one full
    forward pass per step, then pads after the first EOS."""
    model, params, images, _ = _tiny(key, batch=4)
    length = 7
    got = sample(None, model, params, images, temperature=0.0, max_length=length)

    apply = jax.jit(model.apply)  # one compile per prefix length
    buffer = np.full((4, 1), captions.BOS, np.int32)
    for _ in range(length - 1):
        logits = apply(params, images, jnp.asarray(buffer))
        buffer = np.concatenate([buffer, np.argmax(logits[:, -1], -1)[:, None]], 1)
    np.testing.assert_array_equal(got, stop_at_eos(jnp.asarray(buffer)))
    assert got.shape == (4, length) and got.dtype == jnp.int32


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_first_token_follows_the_tempered_softmax(key, temperature):
    """Monte Carlo: the frequencies of the first decoded token over 4000 draws match
    softmax(z / T) of the model's first position within 5 standard errors."""
    model, params, images, _ = _tiny(key, batch=1)
    n = 4000
    many = jnp.repeat(images, n, axis=0)
    drawn = np.asarray(sample(key, model, params, many, temperature=temperature, max_length=2))
    logits = model.apply(params, images, jnp.full((1, 1), captions.BOS, jnp.int32))[0, 0]
    probs = np.asarray(jax.nn.softmax(logits / temperature), np.float64)
    freq = np.bincount(drawn[:, 1], minlength=captions.VOCAB_SIZE) / n
    se = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) <= 5 * se + 1e-9)


# ----------------------------------------------------------------------------- the entropy


def _exact_caption_entropy(class_probs, split):
    """H(C) by enumeration of the tokenized caption table: p(c) = sum over (class, phrasing)
    pairs that give token row c of pi_y / P, then -sum p log p (float64)."""
    table, _ = captions.caption_table(split)  # [10, P, L]
    p = {}
    for y in range(10):
        for row in table[y]:
            p[row.tobytes()] = p.get(row.tobytes(), 0.0) + class_probs[y] / table.shape[1]
    q = np.array([v for v in p.values() if v > 0])
    return float(-np.sum(q * np.log(q)))


@pytest.mark.parametrize("split", list(captions.SPLITS))
def test_image_blind_entropy_closed_form_equals_exact_enumeration(split):
    """Closed form H(Y) + log P against the exact entropy of the caption distribution, for
    uniform classes (log 10 + log P; log 80 = 4.382 nats for the 8 training phrasings) and for
    classes drawn from a Dirichlet."""
    num = len(captions.SPLITS[split])
    uniform = np.full(10, 0.1)
    assert math.isclose(image_blind_entropy(split=split), math.log(10 * num), rel_tol=1e-12)
    np.testing.assert_allclose(
        image_blind_entropy(split=split), _exact_caption_entropy(uniform, split), rtol=1e-12
    )
    pi = np.random.default_rng(0).dirichlet(np.ones(10))
    np.testing.assert_allclose(
        image_blind_entropy(pi, split), _exact_caption_entropy(pi, split), rtol=1e-12
    )
    if split == "train":
        assert math.isclose(image_blind_entropy(), 4.382026634673881, rel_tol=1e-12)


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_argument(key):
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"patch .* must divide"):
        patchify(x, 3)
    with pytest.raises(ValueError, match=r"x must have shape \[batch, H, W, C\]"):
        patchify(x[0], 2)
    with pytest.raises(ValueError, match="patch must be a positive int"):
        patchify(x, 0)
    with pytest.raises(ValueError, match="patches must have shape"):
        unpatchify(jnp.zeros((2, 16, 3)), 2, (8, 8, 1))
    with pytest.raises(ValueError, match="image_shape must be"):
        unpatchify(jnp.zeros((2, 16, 4)), 2, (8, 8))
    tokens = jnp.zeros((2, 5), jnp.int32)
    with pytest.raises(ValueError, match=r"logits must have shape \[batch, L - 1, vocab\]"):
        caption_nll(jnp.zeros((2, 5, 7)), tokens)
    with pytest.raises(TypeError, match="tokens must be an integer array"):
        caption_nll(jnp.zeros((2, 4, 7)), tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match="tokens must have shape"):
        stop_at_eos(tokens[0])
    with pytest.raises(ValueError, match="split must be one of"):
        image_blind_entropy(split="test")
    with pytest.raises(ValueError, match="class_probs must have shape"):
        image_blind_entropy(np.ones(9) / 9)
    with pytest.raises(ValueError, match="class_probs must be non-negative and sum to 1"):
        image_blind_entropy(np.ones(10))

    model, params, images, tokens = _tiny(key)
    blind = Captioner(**TINY, image_blind=True)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample(key, model, params, images, temperature=-1.0)
    with pytest.raises(ValueError, match=r"max_length must lie in \[2, 12\]"):
        sample(key, model, params, images, max_length=13)
    with pytest.raises(TypeError, match="model must be a Captioner"):
        sample(key, object(), params, images)
    with pytest.raises(ValueError, match="images must have shape"):
        sample(key, model, params, images[0])
    with pytest.raises(ValueError, match="tokens have length 13 > max_length 12"):
        model.apply(params, images, jnp.zeros((3, 13), jnp.int32))
    with pytest.raises(ValueError, match="images and tokens must share the batch size"):
        model.apply(params, images, tokens[:2])
    with pytest.raises(ValueError, match="memory must be None for an image_blind"):
        model.apply(params, tokens, None, method="decode")
    with pytest.raises(ValueError, match="an image_blind Captioner has no encoder"):
        blind.init(key, images, method="encode")
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide features \(16\)"):
        Captioner(features=16, num_heads=3).init(key, images, tokens)


# ----------------------------------------------------------------------------- the recipe


def test_quick_recipe_trains_and_evaluates(tmp_path):
    """The captioning_digits recipe at its quick budget trains both models, beats the
    image-blind decoder on held-out test loss, reports accuracies in [0, 1] and writes its
    figure."""
    from genjax import recipes

    recipe = recipes.get("captioning_digits")
    assert recipe.quick_tour and recipe.tour_steps is not None
    run = recipes.run(jax.random.key(0), recipe, "quick")
    report = run.report
    assert math.isfinite(report.value) and report.beats_baseline, report
    for name in ("greedy_names_right_digit", "sampled_names_right_digit"):
        assert 0.0 <= report.extra[name] <= 1.0
    assert report.extra["greedy_names_right_digit"] > report.extra["blind_greedy_names_right_digit"]
    paths = recipe.figures(run.task, run.state.ema_params, run.dataset, jax.random.key(1), tmp_path)
    assert all(p.is_file() for p in paths)


@pytest.mark.slow
def test_tour_budget_names_the_right_digit():
    """The captioning_digits recipe at its tour budget: greedy captions of the test images name
    the right digit at least 95 % of the time; the image-blind decoder's loss per caption is
    within 0.15 nats of its floor H(C) = log 80; the sampled accuracy (Monte Carlo, 3 standard
    errors) is above the bound exp(-(loss per caption - log 8)) of derivations/25."""
    from genjax import recipes

    report = recipes.run(jax.random.key(0), recipes.get("captioning_digits"), "tour").report
    assert report.extra["greedy_names_right_digit"] >= 0.95, report
    assert report.beats_baseline
    blind = report.extra["blind_nats_per_caption"]
    assert report.extra["blind_entropy_log_80"] - 0.05 <= blind <= math.log(80) + 0.15, report
    # the sampled accuracy estimates E[q(y|x)] >= exp(-(loss per caption - log 8))
    bound = math.exp(-(report.extra["nats_per_caption"] - report.extra["entropy_log_8"]))
    sampled = report.extra["sampled_names_right_digit"]
    assert sampled >= bound - 3 * math.sqrt(sampled * (1 - sampled) / 360), report
