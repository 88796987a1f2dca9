"""Transformer blocks and models (pre-LN structure, causality, padding), generation, the token
loss, and the two recipes' data, baselines and (slow) trained results."""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax.data import load_dataset
from genjax.nn.attention import MultiHeadAttention
from genjax.nn.transformer import (
    DecoderBlock,
    DecoderOnlyTransformer,
    EncoderBlock,
    EncoderDecoderTransformer,
    TextEncoder,
    generate,
    pool_at_last,
    token_nll,
)
from genjax.recipes import all_recipes, loop_arrays
from genjax.recipes import transformer as recipe

RTOL = 1e-5
ATOL = 1e-5
Z = 5.0  # confidence half-width in standard errors


@pytest.fixture
def init_key():
    """An RBG key for parameter initialisation: threefry draws compile slowly on CPU."""
    return jax.random.key(0, impl="unsafe_rbg")


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape, np.float32)


def test_token_nll_matches_optax():
    logits = normal(0, (2, 5, 7))
    targets = np.random.default_rng(1).integers(0, 7, (2, 5))
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(token_nll(logits, targets), ref, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="vocab axis"):
        token_nll(logits, targets[:, :4])


def successor_logits(tokens, vocab=10, wrong_after=None):
    """A causal toy model: logits at t favour ``tokens[t] + 1 (mod vocab)``; after the token
    ``wrong_after`` it favours 0 instead (a deliberate mistake)."""
    nxt = (tokens + 1) % vocab
    if wrong_after is not None:
        nxt = jnp.where(tokens == wrong_after, 0, nxt)
    return 5.0 * jax.nn.one_hot(nxt, vocab)  # [B, L, vocab]


def test_generate_greedy_matches_python_loop():
    prompt = jnp.array([[3, 4], [9, 0]])
    out = generate(jax.random.key(0), successor_logits, prompt, 5, temperature=0)
    tokens = np.asarray(prompt).tolist()
    for row in tokens:
        for _ in range(5):
            row.append(int(np.argmax(successor_logits(jnp.array([row]))[0, -1])))
    np.testing.assert_array_equal(out, tokens)


def test_generate_sampling_frequencies_match_softmax():
    """With fixed logits z, each drawn token is Categorical(softmax(z / T)): frequencies within
    Z binomial standard errors over 4000 draws."""
    z = jnp.array([0.0, 1.0, 2.0])
    logits_fn = lambda tokens: jnp.broadcast_to(z, (*tokens.shape, 3))
    for temperature in (1.0, 0.5):
        out = generate(
            jax.random.key(1),
            logits_fn,
            jnp.zeros((4000, 1), jnp.int32),
            1,
            temperature=temperature,
        )
        freq = np.bincount(np.asarray(out[:, 1]), minlength=3) / 4000
        p = np.asarray(jax.nn.softmax(z / temperature))
        assert np.all(np.abs(freq - p) < Z * np.sqrt(p * (1 - p) / 4000))


def test_greedy_exact_match_equals_teacher_forced():
    """Greedy decoding reproduces a target iff every teacher-forced argmax is right (the
    identity Reverser.exact_match relies on), with a toy model that errs after a 7."""
    starts = jnp.arange(10)[:, None]  # [10, 1]
    targets = (starts + jnp.arange(6)[None, :]) % 10  # [10, 6]: s, s+1, ..., s+5
    model = lambda tokens: successor_logits(tokens, wrong_after=7)
    greedy = generate(jax.random.key(0), model, targets[:, :1], 5, temperature=0)
    greedy_exact = jnp.all(greedy == targets, 1)
    forced_exact = jnp.all(jnp.argmax(model(targets[:, :-1]), -1) == targets[:, 1:], 1)
    np.testing.assert_array_equal(greedy_exact, forced_exact)
    assert 0 < int(greedy_exact.sum()) < 10  # both outcomes occur


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prompt"):
        generate(jax.random.key(0), successor_logits, jnp.zeros((2, 0), jnp.int32), 3)
    with pytest.raises(ValueError, match="num_new"):
        generate(jax.random.key(0), successor_logits, jnp.zeros((2, 1), jnp.int32), 0)
    with pytest.raises(ValueError, match="temperature"):
        generate(
            jax.random.key(0), successor_logits, jnp.zeros((2, 1), jnp.int32), 2, temperature=-1
        )


def zero_like_matching(params, names):
    """``params`` with every leaf under a path containing one of ``names`` set to zero."""
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict(
        {k: (jnp.zeros_like(v) if any(n in k for n in names) else v) for k, v in flat.items()}
    )


def test_pre_ln_encoder_block_is_residual_over_normalised_inputs(init_key):
    """x + MHA(LN x), then + MLP(LN ·): zeroing the MLP's output layer leaves exactly
    x + MHA(LN x), computed here from the block's own sub-module parameters."""
    x = normal(0, (2, 5, 8))
    block = EncoderBlock(num_heads=2)
    params = jax.jit(block.init)(init_key, x)["params"]
    no_mlp = zero_like_matching({"params": params}, ["Dense_1"])  # MLP's W_2 and b_2
    apply = jax.jit(block.apply)
    out = apply(no_mlp, x)

    @jax.jit
    def by_hand(params, x):
        ln = flax.linen.LayerNorm().apply({"params": params["LayerNorm_0"]}, x)
        mha = MultiHeadAttention(num_heads=2).apply({"params": params["MultiHeadAttention_0"]}, ln)
        return x + mha

    np.testing.assert_allclose(out, by_hand(params, x), rtol=RTOL, atol=ATOL)
    identity = zero_like_matching({"params": params}, ["Dense_1", "out"])
    np.testing.assert_allclose(apply(identity, x), x, rtol=RTOL, atol=ATOL)


def test_decoder_block_uses_memory_only_through_cross_attention(init_key):
    x, memory = normal(0, (2, 4, 8)), normal(1, (2, 6, 8))
    block = DecoderBlock(num_heads=2)
    params = jax.jit(block.init)(init_key, x, memory)
    apply = jax.jit(block.apply)
    assert not np.allclose(apply(params, x, memory), apply(params, x, memory + 1.0))
    no_cross = zero_like_matching(params, ["cross_attention"])
    np.testing.assert_allclose(
        apply(no_cross, x, memory), apply(no_cross, x, memory + 1.0), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "rotary"])
def test_decoder_only_model_is_causal_and_sees_positions(init_key, positional):
    """Changing token t changes the logits at positions >= t and never before. Sinusoidal and
    learned positions enter the residual stream, so a repeated token's logits depend on where
    it is; rotary only rotates queries and keys, and with identical tokens every value is the
    same, so the output cannot depend on position."""
    model = DecoderOnlyTransformer(
        vocab_size=11,
        max_length=8,
        features=16,
        num_layers=1,
        num_heads=2,
        positional=positional,
    )
    tokens = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8], [3, 3, 3, 3, 3, 3, 3, 3]])
    params = jax.jit(model.init)(init_key, tokens)
    apply = jax.jit(model.apply)
    base = apply(params, tokens)
    assert base.shape == (2, 8, 11)
    for t in (0, 3, 7):
        changed = np.abs(np.asarray(apply(params, tokens.at[0, t].set(0)) - base)).max(-1)[0]
        assert np.all(changed[:t] == 0.0)
        assert changed[t] > 0.0
    repeated = np.asarray(base[1])  # [8, 11]
    if positional == "rotary":
        np.testing.assert_allclose(
            repeated, np.broadcast_to(repeated[0], repeated.shape), rtol=1e-4, atol=1e-4
        )
    else:
        assert not np.allclose(repeated[0], repeated[-1])


def test_encoder_decoder_ignores_source_padding_and_splits_into_encode_decode(init_key):
    model = EncoderDecoderTransformer(
        src_vocab=11, tgt_vocab=13, max_length=7, features=16, num_layers=1, num_heads=2
    )
    src = jnp.array([[1, 2, 3, 10, 10], [4, 5, 6, 7, 8]])
    lengths = jnp.array([3, 5])
    tgt = jnp.array([[11, 3, 2, 1, 12, 10], [11, 8, 7, 6, 5, 4]])
    params = jax.jit(model.init)(init_key, src, lengths, tgt)

    @jax.jit
    def both_ways(params, src):
        """(full apply, encode then decode): one compilation for both."""
        memory = model.apply(params, src, lengths, method="encode")
        two_step = model.apply(params, tgt, memory, lengths, method="decode")
        return model.apply(params, src, lengths, tgt), two_step

    logits, two_step = both_ways(params, src)
    np.testing.assert_allclose(two_step, logits, rtol=RTOL, atol=ATOL)
    repadded = src.at[0, 3:].set(jnp.array([0, 9]))  # other tokens at the padded positions
    np.testing.assert_allclose(both_ways(params, repadded)[0], logits, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("kwargs", "tokens", "match"),
    [
        ({"positional": "alibi"}, jnp.zeros((1, 4), jnp.int32), "positional"),
        ({"features": 10, "num_heads": 4}, jnp.zeros((1, 4), jnp.int32), "num_heads"),
        ({}, jnp.zeros((1, 9), jnp.int32), "max_length"),
        ({}, jnp.zeros((4,), jnp.int32), r"\[batch, length\]"),
    ],
)
def test_model_bad_input_raises(key, kwargs, tokens, match):
    model = DecoderOnlyTransformer(
        vocab_size=5, max_length=8, **{"features": 8, "num_heads": 2, **kwargs}
    )
    with pytest.raises(ValueError, match=match):
        model.init(key, tokens)


def test_text_encoder_masking_equals_slicing_and_zeroes_padding(init_key):
    """A real position's output is the same with any tokens in the padding and with the padding
    cut off (the sequence alone, at its own length); padded outputs are zero."""
    model = TextEncoder(vocab_size=12, features=16, num_heads=2, num_layers=2, max_length=8)
    tokens = jnp.array([[1, 5, 6, 2, 0, 0, 0], [1, 7, 8, 9, 10, 11, 2]])
    lengths = jnp.array([4, 7])
    params = jax.jit(model.init)(init_key, tokens, lengths)
    apply = jax.jit(model.apply)
    h = apply(params, tokens, lengths)
    assert h.shape == (2, 7, 16)
    np.testing.assert_array_equal(h[0, 4:], 0.0)
    assert np.all(np.linalg.norm(h[:, :4], axis=-1) > 1.0)  # LayerNorm output: norm ~ sqrt(D)
    repadded = tokens.at[0, 4:].set(jnp.array([3, 11, 4]))
    np.testing.assert_allclose(apply(params, repadded, lengths), h, rtol=RTOL, atol=ATOL)
    sliced = apply(params, tokens[:1, :4], lengths[:1])  # [1, 4, D]
    np.testing.assert_allclose(sliced[0], h[0, :4], rtol=RTOL, atol=ATOL)
    # and the real tokens do matter
    assert not np.allclose(apply(params, tokens.at[0, 1].set(9), lengths)[0, :4], h[0, :4])


def test_pool_at_last_takes_the_eos_position():
    h = normal(0, (3, 5, 4))
    lengths = jnp.array([1, 5, 3])
    expected = np.stack([h[b, n - 1] for b, n in enumerate([1, 5, 3])])
    np.testing.assert_array_equal(pool_at_last(jnp.asarray(h), lengths), expected)
    np.testing.assert_array_equal(jax.jit(pool_at_last)(jnp.asarray(h), lengths), expected)


@pytest.mark.parametrize(
    ("h_shape", "lengths", "error", "match"),
    [
        ((3, 5), jnp.array([1, 2, 3]), ValueError, r"\[batch, length, features\]"),
        ((3, 5, 4), jnp.array([1, 2]), ValueError, r"lengths must have shape \[batch\]"),
        ((3, 5, 4), jnp.array([1.0, 2.0, 3.0]), TypeError, "integer"),
        ((3, 5, 4), jnp.array([0, 2, 3]), ValueError, r"\[1, 5\]"),
        ((3, 5, 4), jnp.array([1, 6, 3]), ValueError, r"\[1, 5\]"),
    ],
)
def test_pool_at_last_bad_input_raises(h_shape, lengths, error, match):
    with pytest.raises(error, match=match):
        pool_at_last(jnp.zeros(h_shape), lengths)


@pytest.mark.parametrize(
    ("kwargs", "tokens", "lengths", "error", "match"),
    [
        (
            {"features": 10, "num_heads": 4},
            jnp.zeros((1, 4), jnp.int32),
            [4],
            ValueError,
            "num_heads",
        ),
        ({}, jnp.zeros((1, 9), jnp.int32), [4], ValueError, "max_length"),
        ({}, jnp.zeros((4,), jnp.int32), [4], ValueError, r"\[batch, length\]"),
        ({}, jnp.zeros((2, 4), jnp.int32), [4], ValueError, "lengths must have shape"),
        ({}, jnp.zeros((1, 4), jnp.float32), [4], TypeError, "integer"),
        ({"num_layers": 0}, jnp.zeros((1, 4), jnp.int32), [4], ValueError, "num_layers"),
    ],
)
def test_text_encoder_bad_input_raises(key, kwargs, tokens, lengths, error, match):
    model = TextEncoder(vocab_size=5, **{"features": 8, "num_heads": 2, "max_length": 8, **kwargs})
    with pytest.raises(error, match=match):
        model.init(key, tokens, jnp.array(lengths))


# ----------------------------------------------------------------------------- recipes


def test_ngram_baselines_against_hand_counts():
    train = np.array([0, 1, 0, 1, 0, 2] * 3)  # bigrams: 0->1 6, 1->0 6, 0->2 3, 2->0 2
    uni = np.exp(recipe.unigram_log_probs(train, 3))
    np.testing.assert_allclose(uni, np.array([9 + 1, 6 + 1, 3 + 1]) / (18 + 3), rtol=RTOL)
    bi = np.exp(recipe.bigram_log_probs(train, 3, 0.5))  # add-0.5
    np.testing.assert_allclose(bi[0], np.array([0.5, 6.5, 3.5]) / 10.5, rtol=RTOL)
    np.testing.assert_allclose(bi[1], np.array([6.5, 0.5, 0.5]) / 7.5, rtol=RTOL)
    np.testing.assert_allclose(bi[2], np.array([2.5, 0.5, 0.5]) / 3.5, rtol=RTOL)
    test = np.array([0, 1, 0])
    unigram_bits, bigram_bits, chosen = recipe.ngram_bits_per_char(train, test, 3)
    uni_ref = -(np.log(uni[1]) + np.log(uni[0])) / 2 / math.log(2)
    assert unigram_bits == pytest.approx(uni_ref, rel=RTOL)
    bi_c = np.exp(recipe.bigram_log_probs(train, 3, chosen))
    bi_ref = -(np.log(bi_c[0, 1]) + np.log(bi_c[1, 0])) / 2 / math.log(2)
    assert bigram_bits == pytest.approx(bi_ref, rel=RTOL)
    assert chosen in recipe.BIGRAM_ALPHAS


def test_held_out_windows_predict_each_character_once():
    ids = np.arange(23)
    windows = recipe.held_out_windows(ids, 5)  # [4, 6]
    assert windows.shape == (4, 6)
    np.testing.assert_array_equal(windows[:, 1:].ravel(), ids[1:21])  # predicted characters
    np.testing.assert_array_equal(windows[1:, 0], windows[:-1, -1])  # context carries over


def test_digit_strings_are_reversed_with_bos_eos_and_padding():
    strings = jax.jit(recipe.digit_strings, static_argnums=(1, 2))
    src, lengths, tgt_in, tgt_out = strings(jax.random.key(0, impl="unsafe_rbg"), 50, 6)
    for s, n, ti, to in zip(*map(np.asarray, (src, lengths, tgt_in, tgt_out)), strict=True):
        assert 1 <= n <= 6
        np.testing.assert_array_equal(to[:n], s[:n][::-1])
        assert to[n] == recipe.EOS and ti[0] == recipe.BOS
        np.testing.assert_array_equal(ti[1 : n + 1], to[:n])
        assert np.all(s[n:] == recipe.PAD) and np.all(to[n + 1 :] == recipe.PAD)
        assert np.all(s[:n] < 10)


def test_recipes_registered_and_losses_trace_to_scalars():
    """Shapes only (traced, not compiled); the slow tests below train both recipes."""
    recipes = all_recipes()
    batch = {"x": jnp.zeros((4, 1))}  # the loop's batch only sets the batch size
    for name in ("transformer_char_lm", "transformer_reverse"):
        task = recipes[name].make_task(load_dataset(recipes[name].data), {})
        params = jax.eval_shape(task.init, jax.random.key(0), batch)
        loss, _ = jax.eval_shape(task.loss, params, jax.random.key(1), batch)
        assert loss.shape == () and loss.dtype == jnp.float32
        assert recipes[name].config(True).steps <= recipes[name].config(False).steps


def train_quick(name):
    from genjax.train import fit

    r = all_recipes()[name]
    dataset = load_dataset(r.data)
    task = r.make_task(dataset, {})
    config = r.config(True)
    state = fit(task, loop_arrays(r, dataset, config.batch_size), config, progress=False)
    return r, task, state.params, dataset


@pytest.mark.slow
def test_char_lm_quick_run_beats_bigram():
    r, task, params, dataset = train_quick("transformer_char_lm")
    report = r.evaluate(task, params, dataset, jax.random.key(0))
    assert report.beats_baseline
    assert report.value < report.extra["unigram_bits_per_char"]
    ids = np.asarray(task.sample(params, jax.random.key(1), 2))
    assert ids.shape == (2, recipe.CHAR_DEFAULTS["context"])


@pytest.mark.slow
def test_reverse_quick_run_reverses_and_greedy_agrees():
    r, task, params, dataset = train_quick("transformer_reverse")
    report = r.evaluate(task, params, dataset, jax.random.key(0))
    assert report.value > 0.8 and report.beats_baseline
    reverser = task.model
    src, lengths, _, tgt_out = recipe.digit_strings(
        jax.random.key(recipe.TEST_SEED), recipe.TEST_SIZE, reverser.max_len
    )
    pred = reverser.translate(params, src, lengths)
    valid = jnp.arange(reverser.max_len + 1)[None, :] <= lengths[:, None]
    greedy = float(jnp.mean(jnp.all((pred == tgt_out) | ~valid, 1)))
    assert greedy == pytest.approx(report.value, abs=1e-9)
