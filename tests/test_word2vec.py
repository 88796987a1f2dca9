"""Skip-gram with negative sampling: the loss, its gradient, the noise and subsampling
distributions, pair generation, the implied context distribution, neighbours, triplet loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genjax import word2vec as w2v

RTOL = 1e-5
ATOL = 1e-5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _vectors(key, k=4, d=6, batch=3):
    kc, ko, kn = jax.random.split(key, 3)
    return (
        jax.random.normal(kc, (batch, d)),
        jax.random.normal(ko, (batch, d)),
        jax.random.normal(kn, (batch, k, d)),
    )


def test_negative_sampling_loss_matches_numpy(key):
    """Closed form: -log σ(u_o·v_c) - Σ log σ(-u_k·v_c) in float64 numpy."""
    v, u, neg = (np.asarray(a, np.float64) for a in _vectors(key))
    pos = np.sum(u * v, -1)
    negs = np.einsum("bkd,bd->bk", neg, v)
    expected = -np.log(_sigmoid(pos)) - np.sum(np.log(_sigmoid(-negs)), -1)
    got = w2v.negative_sampling_loss(v, u, neg)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_negative_sampling_gradient_wrt_center_matches_hand_derivation(key):
    """∂ℓ/∂v_c = (σ(u_o·v_c) - 1) u_o + Σ_k σ(u_k·v_c) u_k; also ∂ℓ/∂u_o and ∂ℓ/∂u_k."""
    v, u, neg = _vectors(key)
    grad_v, grad_u, grad_n = jax.grad(
        lambda a, b, c: jnp.sum(w2v.negative_sampling_loss(a, b, c)), argnums=(0, 1, 2)
    )(v, u, neg)
    v, u, neg = (np.asarray(a, np.float64) for a in (v, u, neg))
    s_pos = _sigmoid(np.sum(u * v, -1))[:, None]  # [B, 1]
    s_neg = _sigmoid(np.einsum("bkd,bd->bk", neg, v))  # [B, K]
    hand_v = (s_pos - 1.0) * u + np.einsum("bk,bkd->bd", s_neg, neg)
    np.testing.assert_allclose(grad_v, hand_v, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_u, (s_pos - 1.0) * v, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_n, s_neg[:, :, None] * v[:, None, :], rtol=RTOL, atol=ATOL)


@given(
    counts=st.lists(st.integers(1, 10_000), min_size=2, max_size=30),
    power=st.floats(0.0, 1.5),
)
def test_noise_distribution_sums_to_one_and_follows_power(counts, power):
    """Invariant: Σ P_n = 1 and P_n(i)/P_n(j) = (c_i/c_j)^α for every pair."""
    p = np.asarray(w2v.noise_distribution(jnp.array(counts, jnp.float32), power), np.float64)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
    c = np.array(counts, np.float64)
    np.testing.assert_allclose(p / p[0], (c / c[0]) ** power, rtol=1e-4)


def test_noise_distribution_special_powers_and_zero_counts():
    """α = 1 is the unigram, α = 0 uniform; a zero count has probability 0 when α > 0."""
    counts = jnp.array([1.0, 3.0, 0.0, 4.0])
    np.testing.assert_allclose(w2v.noise_distribution(counts, 1.0), [0.125, 0.375, 0, 0.5])
    np.testing.assert_allclose(w2v.noise_distribution(counts, 0.0), [0.25] * 4)
    assert float(w2v.noise_distribution(counts)[2]) == 0.0


def test_subsample_probability_matches_formula():
    """Closed form: discard 1 - sqrt(t/f) above the threshold, 0 at or below it."""
    t = 1e-3
    f = np.array([0.0, 1e-4, 1e-3, 4e-3, 0.1, 1.0])
    expected = np.where(f > t, 1.0 - np.sqrt(t / np.where(f > 0, f, 1.0)), 0.0)
    got = w2v.subsample_probability(jnp.array(f, jnp.float32), t)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)
    assert expected[3] == pytest.approx(0.5)


def test_subsample_keeps_expected_fraction(key):
    """Monte Carlo: a word of frequency f keeps sqrt(t/f) of 40k occurrences within 5 SE."""
    discard = jnp.array([0.75, 0.0])
    ids = np.zeros(40_000, np.int32)
    ids[::2] = 1
    kept = w2v.subsample(key, ids, discard)
    n0 = np.sum(kept == 0)
    se = np.sqrt(20_000 * 0.25 * 0.75)
    assert abs(n0 - 5_000) < 5 * se
    assert np.sum(kept == 1) == 20_000


def test_skipgram_pairs_match_a_loop():
    """Reference: every (i, j) with 0 < |i - j| <= w, from a double loop; count 2wn - w(w+1)."""
    ids = np.array([5, 1, 4, 2, 3, 9, 7], np.int32)
    for w in (1, 2, 3):
        expected = [
            (ids[i], ids[j])
            for i in range(len(ids))
            for j in range(i - w, i + w + 1)
            if j != i and 0 <= j < len(ids)
        ]
        got = w2v.skipgram_pairs(ids, w)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, np.array(expected))
        assert len(got) == 2 * w * len(ids) - w * (w + 1)


def test_sample_negatives_follow_the_noise_distribution(key):
    """Monte Carlo: empirical frequencies of 50k draws within 5 SE; zero-probability words never
    drawn."""
    p = np.array([0.5, 0.0, 0.3, 0.15, 0.05])
    draws = np.asarray(w2v.sample_negatives(key, jnp.array(p), (10_000, 5))).ravel()
    freq = np.bincount(draws, minlength=5) / draws.size
    se = np.sqrt(p * (1 - p) / draws.size)
    assert np.all(np.abs(freq - p) <= 5 * se + 1e-12)
    assert freq[1] == 0.0


def test_skipgram_module_gathers_and_starts_at_log2(key):
    """The module equals the pure loss on gathered rows; zero context vectors give (K+1) log 2."""
    model = w2v.SkipGram(vocab_size=11, dim=4)
    c, o, n = jnp.array([1, 2]), jnp.array([3, 4]), jnp.array([[5, 6, 7], [8, 9, 10]])
    params = model.init(key, c, o, n)
    np.testing.assert_allclose(model.apply(params, c, o, n), 4 * np.log(2.0), rtol=RTOL)
    table = {"center": jax.random.normal(key, (11, 4)), "context": jax.random.normal(key, (11, 4))}
    got = model.apply({"params": table}, c, o, n)
    ref = w2v.negative_sampling_loss(table["center"][c], table["context"][o], table["context"][n])
    np.testing.assert_allclose(got, ref, rtol=RTOL)
    np.testing.assert_allclose(
        model.apply({"params": table}, c, method="embed"), table["center"][c]
    )


def test_context_log_probs_recover_unigram_at_the_centre_independent_optimum(key):
    """Closed form: scores log(P/(K P_n)) give p(o|c) = P(o) for every centre; zero scores give
    P_n."""
    k, v = 5, 7
    unigram = np.asarray(jax.random.dirichlet(key, jnp.ones(v)), np.float64)
    noise = unigram**0.75 / np.sum(unigram**0.75)
    score = np.log(unigram) - np.log(k) - np.log(noise)
    table = jnp.array(score[:, None], jnp.float32)  # [V, 1]: u_o = s(o), v_c = 1
    logp = w2v.context_log_probs(jnp.ones((3, 1)), table, jnp.log(jnp.array(noise, jnp.float32)))
    np.testing.assert_allclose(np.exp(logp), np.tile(unigram, (3, 1)), rtol=1e-4)
    zero = w2v.context_log_probs(jnp.zeros((2, 1)), table, jnp.log(jnp.array(noise)))
    np.testing.assert_allclose(np.exp(zero), np.tile(noise, (2, 1)), rtol=1e-4)


def test_nearest_neighbours_by_cosine_exclude_the_query():
    """Hand-built vectors: neighbours ordered by cosine (scale-free), never the word itself."""
    emb = jnp.array([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    ids, sims = w2v.nearest_neighbours(emb, jnp.array([0, 2]), k=3)
    np.testing.assert_array_equal(ids, [[1, 4, 2], [4, 1, 0]])
    np.testing.assert_allclose(sims[0], [10 / np.sqrt(101), 1 / np.sqrt(2), 0.0], atol=1e-6)
    np.testing.assert_allclose(w2v.cosine_similarity(emb, emb).diagonal(), 1.0, rtol=1e-6)


def test_triplet_loss_matches_hand_computation():
    """Closed form on 2-d points: max(0, |a-p|^2 - |a-n|^2 + m), and the unsquared variant."""
    a = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    p = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    n = jnp.array([[0.0, 1.5], [0.0, 3.0]])
    np.testing.assert_allclose(w2v.triplet_loss(a, p, n, margin=1.5), [1 - 2.25 + 1.5, 0.0])
    np.testing.assert_allclose(w2v.triplet_loss(a, p, n, margin=2.0), [0.75, 0.0])
    np.testing.assert_allclose(
        w2v.triplet_loss(a, p, n, margin=1.0, squared=False), [0.5, 0.0], atol=1e-6
    )


def test_tokenize_and_vocab():
    """Words are lower-case letter runs; the vocabulary keeps words with min_count, by count."""
    tokens = w2v.tokenize("The cat, the DOG; the cat 42 x")
    assert tokens == ["the", "cat", "the", "dog", "the", "cat", "x"]
    vocab = w2v.build_vocab(tokens, min_count=2)
    assert vocab.words == ("the", "cat")
    np.testing.assert_array_equal(vocab.counts, [3, 2])
    np.testing.assert_array_equal(vocab.encode(tokens), [0, 1, 0, 0, 1])


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: w2v.negative_sampling_loss(
                jnp.ones((2, 3)), jnp.ones((2, 4)), jnp.ones((2, 1, 3))
            ),
            r"shapes must match: center \(2, 3\), context \(2, 4\)",
        ),
        (
            lambda: w2v.negative_sampling_loss(
                jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones((2, 3))
            ),
            "negatives",
        ),
        (lambda: w2v.noise_distribution(jnp.array([1.0, -1.0])), "non-negative"),
        (lambda: w2v.noise_distribution(jnp.zeros(3)), "positive entry"),
        (lambda: w2v.noise_distribution(jnp.ones((2, 2))), r"\[V\]"),
        (lambda: w2v.noise_distribution(jnp.ones(3), power=-1.0), "power"),
        (lambda: w2v.subsample_probability(jnp.array([0.5, 1.5])), r"\[0, 1\]"),
        (lambda: w2v.subsample_probability(jnp.array([0.5]), threshold=0.0), "threshold"),
        (lambda: w2v.skipgram_pairs(np.arange(5), 0), "window"),
        (lambda: w2v.skipgram_pairs(np.ones((2, 2)), 1), r"\[n\]"),
        (lambda: w2v.nearest_neighbours(jnp.ones((3, 2)), jnp.array([0]), k=3), "k must"),
        (lambda: w2v.triplet_loss(jnp.ones(2), jnp.ones(2), jnp.ones(3)), "shapes must match"),
        (lambda: w2v.triplet_loss(jnp.ones(2), jnp.ones(2), jnp.ones(2), margin=-1.0), "margin"),
        (lambda: w2v.build_vocab(["a"], min_count=2), "no word"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tokenize_rejects_non_text():
    with pytest.raises(TypeError, match="text must be a str"):
        w2v.tokenize(b"bytes")


@pytest.mark.slow
def test_word2vec_recipe_beats_the_unigram_baseline():
    """The recipe's quick budget already predicts held-out contexts better than the unigram."""
    from genjax import recipes

    report = recipes.run(jax.random.key(0), recipes.get("word2vec"), "quick").report
    assert report.beats_baseline
    assert report.extra["held_out_ns_loss"] < report.extra["held_out_ns_loss_unigram_scorer"]
