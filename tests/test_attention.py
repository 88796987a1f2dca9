"""Attention against a naive per-query loop, jax.nn and flax; its invariants (rows sum to 1,
masked keys get no weight and no gradient, key/value permutation invariance, the causal
receptive field) and the variance argument of derivations/03-attention.md."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genjax.nn.attention import (
    MultiHeadAttention,
    attention_scores,
    attention_weights,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)

RTOL = 1e-5
ATOL = 1e-5
BF16_ATOL = 5e-2  # bfloat16 keeps 8 bits of mantissa: ~0.4% per rounding, summed over keys
Z = 5.0  # confidence half-width in standard errors
INIT_KEY = jax.random.key(0, impl="unsafe_rbg")  # threefry draws compile slowly on CPU


def reference_impl(query, key, value, mask=None, bias=None, scale=None):
    """Per-query loop in float64 numpy; a fully masked query returns zeros."""
    q, k, v = (np.asarray(a, np.float64) for a in (query, key, value))
    batch, q_len, heads, d = q.shape
    k_len = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    m = np.ones((1, 1, 1, 1), bool) if mask is None else np.asarray(mask)
    m = np.broadcast_to(m.reshape((1,) * (4 - m.ndim) + m.shape), (batch, heads, q_len, k_len))
    b = np.zeros((1, 1, 1, 1)) if bias is None else np.asarray(bias, np.float64)
    b = np.broadcast_to(b.reshape((1,) * (4 - b.ndim) + b.shape), (batch, heads, q_len, k_len))
    out = np.zeros((batch, q_len, heads, v.shape[-1]))
    for bi in range(batch):
        for h in range(heads):
            for i in range(q_len):
                keep = m[bi, h, i]
                if not keep.any():
                    continue
                s = scale * k[bi, :, h] @ q[bi, i, h] + b[bi, h, i]  # [k_len]
                s = np.where(keep, s, -np.inf)
                w = np.exp(s - s.max())
                out[bi, i, h] = (w / w.sum()) @ v[bi, :, h]
    return out


# jitted once per shape: eager dispatch would compile every primitive of every drawn shape
sdpa = jax.jit(scaled_dot_product_attention)
weights_fn = jax.jit(attention_weights)
jax_sdpa = jax.jit(jax.nn.dot_product_attention)
flax_sdpa = jax.jit(nn.dot_product_attention)


@st.composite
def attention_inputs(draw, with_bias=True):
    """Random shapes, a mask of a random broadcast form and rank, and an optional bias.

    Sizes come from small sets so that the jit cache is shared across examples and tests.
    """
    batch, heads = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3]))
    q_len, k_len = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 4, 6]))
    d = draw(st.sampled_from([1, 8]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    q = rng.standard_normal((batch, q_len, heads, d), np.float32)
    k = rng.standard_normal((batch, k_len, heads, d), np.float32)
    v = rng.standard_normal((batch, k_len, heads, d), np.float32)
    mask_shape = draw(
        st.sampled_from(
            [
                None,
                (batch, heads, q_len, k_len),
                (batch, 1, q_len, k_len),
                (1, 1, q_len, k_len),
                (batch, 1, 1, k_len),
                (q_len, k_len),
            ]
        )
    )
    mask = None if mask_shape is None else rng.random(mask_shape) < 0.7
    bias = None
    if with_bias and draw(st.booleans()):
        bias = rng.standard_normal((1, heads, q_len, k_len), np.float32)
    return q, k, v, mask, bias


def normal(seed, shape):
    """Seeded standard normal draws as numpy float32 (no per-shape compilation, unlike jax)."""
    return np.random.default_rng(seed).standard_normal(shape, np.float32)


def full_mask(mask, q, k):
    """``mask`` broadcast to [batch, heads, q_len, k_len] (all True if None), numpy."""
    shape = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    if mask is None:
        return np.ones(shape, bool)
    return np.broadcast_to(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), shape)


def attended(m):
    """[B, Lq, H, 1]: True where a query has at least one key (m is [B, H, Lq, Lk])."""
    return np.transpose(m.any(-1), (0, 2, 1))[..., None]


@settings(max_examples=10)
@given(attention_inputs())
def test_matches_naive_per_query_loop(inputs):
    q, k, v, mask, bias = inputs
    out = sdpa(q, k, v, mask=mask, bias=bias)
    np.testing.assert_allclose(out, reference_impl(q, k, v, mask, bias), rtol=RTOL, atol=ATOL)


@settings(max_examples=10)
@given(attention_inputs())
def test_matches_jax_nn_dot_product_attention(inputs):
    """Same numbers as jax's XLA implementation on every query with at least one key."""
    q, k, v, mask, bias = inputs
    m = full_mask(mask, q, k)
    ours = sdpa(q, k, v, mask=mask, bias=bias)
    ref = jax_sdpa(q, k, v, bias=bias, mask=m)
    a = attended(m)
    np.testing.assert_allclose(np.where(a, ours, 0.0), np.where(a, ref, 0.0), rtol=RTOL, atol=ATOL)


@settings(max_examples=10)
@given(attention_inputs(with_bias=False))
def test_matches_flax_dot_product_attention(inputs):
    q, k, v, mask, _ = inputs
    m = full_mask(mask, q, k)
    ours = sdpa(q, k, v, mask=m)
    ref = flax_sdpa(q, k, v, mask=m)
    a = attended(m)
    np.testing.assert_allclose(np.where(a, ours, 0.0), np.where(a, ref, 0.0), rtol=RTOL, atol=ATOL)


@settings(max_examples=10)
@given(attention_inputs())
def test_weights_rows_sum_to_one_and_masked_keys_get_exactly_zero(inputs):
    q, k, _, mask, bias = inputs
    w = np.asarray(weights_fn(q, k, mask=mask, bias=bias))
    m = full_mask(mask, q, k)
    assert w.shape == m.shape
    assert np.all(w[~m] == 0.0)  # exactly 0, not merely small
    expected_sum = np.where(m.any(-1), 1.0, 0.0)  # a fully masked row is all zeros
    np.testing.assert_allclose(w.sum(-1), expected_sum, rtol=RTOL, atol=ATOL)


def test_value_dim_may_differ_from_head_dim():
    """The value's last axis is independent of the query/key head_dim: [2, 5, 3, 8] queries,
    [2, 6, 3, 8] keys, [2, 6, 3, 2] values give a [2, 5, 3, 2] output."""
    q, k, v = normal(0, (2, 5, 3, 8)), normal(1, (2, 6, 3, 8)), normal(2, (2, 6, 3, 2))
    mask = normal(3, (2, 1, 5, 6)) > 0.0
    out = sdpa(q, k, v, mask=mask)
    assert out.shape == (2, 5, 3, 2)
    np.testing.assert_allclose(out, reference_impl(q, k, v, mask), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (6, 1), (3, 3)])
@pytest.mark.parametrize("masked", [False, True])
def test_grouped_query_attention_matches_jax_nn_and_repeated_heads(heads, kv_heads, masked):
    """Grouped-query (kv_heads < heads) and multi-query (kv_heads = 1) attention: the same
    numbers as jax.nn.dot_product_attention, and as ordinary attention with each key/value head
    repeated for its heads // kv_heads query heads (query head h reads kv head h // G)."""
    q = normal(0, (2, 5, heads, 8))
    k, v = normal(1, (2, 2, 7, kv_heads, 8))
    mask = normal(2, (2, 1, 5, 7)) > -1.0 if masked else None
    m = full_mask(None if mask is None else np.asarray(mask), q, k)
    ours = sdpa(q, k, v, mask=mask)
    assert ours.shape == (2, 5, heads, 8)
    ref = jax_sdpa(q, k, v, mask=m)
    a = attended(m)
    np.testing.assert_allclose(np.where(a, ours, 0.0), np.where(a, ref, 0.0), rtol=RTOL, atol=ATOL)
    group = heads // kv_heads
    repeated = sdpa(q, np.repeat(k, group, axis=2), np.repeat(v, group, axis=2), mask=mask)
    np.testing.assert_allclose(ours, repeated, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        ours,
        reference_impl(q, *(np.repeat(a, group, 2) for a in (k, v)), mask),
        rtol=RTOL,
        atol=ATOL,
    )


def test_unbatched_inputs_match_jax_nn_and_the_batched_call():
    """[length, heads, head_dim] inputs (no batch axis), with grouped heads, a rank-3 mask and a
    bias: the output is [q_len, heads, v_dim], equal to jax.nn.dot_product_attention's and to
    the batched call's row; the weights are [heads, q_len, k_len]."""
    q, k, v = normal(0, (5, 4, 8)), normal(1, (6, 2, 8)), normal(2, (6, 2, 8))
    mask = normal(3, (4, 5, 6)) > -1.0
    bias = normal(4, (1, 5, 6))
    out = sdpa(q, k, v, mask=mask, bias=bias)
    assert out.shape == (5, 4, 8)
    ref = jax_sdpa(q, k, v, bias=bias, mask=mask)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    batched = sdpa(q[None], k[None], v[None], mask=mask, bias=bias)[0]
    np.testing.assert_allclose(out, batched, rtol=RTOL, atol=ATOL)
    weights = weights_fn(q, k, mask=mask, bias=bias)
    assert weights.shape == (4, 5, 6)
    np.testing.assert_allclose(weights, weights_fn(q[None], k[None], mask=mask, bias=bias)[0])
    assert attention_scores(q, k).shape == (4, 5, 6)


@pytest.mark.parametrize(("q_len", "k_len"), [(6, 6), (4, 7), (7, 4)])
def test_is_causal_matches_jax_nn_and_the_causal_mask(q_len, k_len):
    """is_causal=True: the same numbers as jax.nn.dot_product_attention(is_causal=True),
    including q_len != k_len (the top-left lower triangle), also with a padding mask and grouped
    heads; for a square problem it equals mask=causal_mask(length)."""
    q = normal(0, (2, q_len, 4, 8))
    k, v = normal(1, (2, 2, k_len, 2, 8))
    causal_sdpa = jax.jit(functools.partial(scaled_dot_product_attention, is_causal=True))
    jax_causal = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=True))
    np.testing.assert_allclose(causal_sdpa(q, k, v), jax_causal(q, k, v), rtol=RTOL, atol=ATOL)
    pad = padding_mask(jnp.array([k_len, 3]), k_len)  # row 1 keeps keys 0, 1, 2
    full = np.broadcast_to(np.asarray(pad), (2, 4, q_len, k_len))
    np.testing.assert_allclose(
        causal_sdpa(q, k, v, mask=pad), jax_causal(q, k, v, mask=full), rtol=RTOL, atol=ATOL
    )
    w = jax.jit(functools.partial(attention_weights, is_causal=True))(q, k)
    np.testing.assert_array_equal(w[0, 0] > 0, np.tril(np.ones((q_len, k_len), bool)))
    if q_len == k_len:
        np.testing.assert_allclose(
            causal_sdpa(q, k, v), sdpa(q, k, v, mask=causal_mask(q_len)), rtol=RTOL, atol=ATOL
        )


def test_fully_masked_row_gives_zero_output_and_finite_gradients():
    q, k, v = normal(0, (3, 1, 4, 2, 8))
    mask = jnp.ones((1, 1, 4, 4), bool).at[..., 2, :].set(False)  # query 2 sees no key

    def f(q, k, v):
        return scaled_dot_product_attention(q, k, v, mask=mask).sum()

    out = sdpa(q, k, v, mask=mask)
    assert jnp.all(out[:, 2] == 0.0)
    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(q, k, v)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    assert jnp.all(grads[0][:, 2] == 0.0)


def test_causal_receptive_field_via_gradients():
    """d out_i / d (k_j, v_j) is exactly 0 for j > i and nonzero for j <= i."""
    length = 6
    q, k, v = normal(0, (3, 1, length, 2, 4))

    def per_query(k, v):
        return sdpa(q, k, v, mask=causal_mask(length))[0].sum((1, 2))  # [L]

    jk, jv = jax.jit(jax.jacrev(per_query, argnums=(0, 1)))(k, v)  # [Lq, 1, Lk, H, D] each
    influence = jnp.abs(jk[:, 0]).sum((2, 3)) + jnp.abs(jv[:, 0]).sum((2, 3))  # [Lq, Lk]
    np.testing.assert_array_equal(influence > 0.0, np.tril(np.ones((length, length), bool)))


def test_padded_keys_have_zero_gradient_and_masking_equals_slicing():
    """Keys past each row's length neither change the output nor receive gradient."""
    lengths = jnp.array([3, 5])
    q = normal(0, (2, 4, 2, 8))
    k, v = normal(1, (2, 2, 5, 2, 8))
    mask = padding_mask(lengths, 5)

    gv = jax.jit(jax.grad(lambda v: sdpa(q, k, v, mask=mask).sum()))(v)
    assert jnp.all(gv[0, 3:] == 0.0) and jnp.all(gv[0, :3] != 0.0)
    out = sdpa(q, k, v, mask=mask)
    sliced = sdpa(q[:1], k[:1, :3], v[:1, :3])
    np.testing.assert_allclose(out[:1], sliced, rtol=RTOL, atol=ATOL)


def test_causal_and_padding_masks_closed_form():
    np.testing.assert_array_equal(causal_mask(4)[0, 0], np.tril(np.ones((4, 4), bool)))
    pad = padding_mask(jnp.array([0, 2, 4]), 4)
    assert pad.shape == (3, 1, 1, 4)
    np.testing.assert_array_equal(pad[:, 0, 0], np.arange(4)[None, :] < np.array([[0], [2], [4]]))
    assert (causal_mask(4) & pad).shape == (3, 1, 4, 4)


@settings(max_examples=10)
@given(attention_inputs(with_bias=False), st.integers(0, 2**16))
def test_permuting_keys_and_values_together_leaves_output_unchanged(inputs, seed):
    q, k, v, mask, _ = inputs
    m = full_mask(mask, q, k)
    perm = np.random.default_rng(seed).permutation(k.shape[1])
    out = sdpa(q, k, v, mask=m)
    permuted = sdpa(q, k[:, perm], v[:, perm], mask=m[..., perm])
    np.testing.assert_allclose(out, permuted, rtol=RTOL, atol=ATOL)


def test_score_variance_is_d_k_unscaled_and_one_scaled():
    """For q, k with independent unit-variance entries, Var(q·k) = d_k; dividing by sqrt(d_k)
    gives 1. The standard error of a sample variance is σ² sqrt((κ - 1)/N) with the kurtosis
    κ = 3 + 6/d_k of a sum of d_k products of independent standard normals."""
    d_k, n_q, n_k = 64, 128, 128
    q = normal(0, (1, n_q, 1, d_k))
    k = normal(1, (1, n_k, 1, d_k))
    n = n_q * n_k
    # scores sharing a q (or a k) are dependent: Cov(s_ij², s_il²) = 2 d_k against
    # Var(s²) = 2 d_k² + 6 d_k, so the variance of the mean square grows by 1 + (n_q+n_k-2)/(d_k+3)
    inflation = 1.0 + (n_q + n_k - 2) / (d_k + 3)
    se_unit = math.sqrt((2.0 + 6.0 / d_k) * inflation / n)
    unscaled = np.asarray(attention_scores(q, k, scale=1.0), np.float64)
    scaled = np.asarray(attention_scores(q, k), np.float64)
    assert abs(unscaled.var() / d_k - 1.0) < Z * se_unit
    assert abs(scaled.var() - 1.0) < Z * se_unit
    np.testing.assert_allclose(scaled, unscaled / math.sqrt(d_k), rtol=RTOL, atol=ATOL)


def test_same_output_with_and_without_jit():
    q, k, v = normal(0, (3, 2, 7, 4, 16))
    mask = causal_mask(7)
    bias = normal(1, (1, 4, 7, 7))
    f = lambda q, k, v: scaled_dot_product_attention(q, k, v, mask=mask, bias=bias)
    np.testing.assert_allclose(f(q, k, v), jax.jit(f)(q, k, v), rtol=RTOL, atol=ATOL)


def test_bfloat16_input_keeps_bfloat16_output_and_float32_softmax():
    q, k, v = normal(0, (3, 2, 7, 4, 16))
    mask = causal_mask(7)
    low = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    out = scaled_dot_product_attention(*low, mask=mask)
    assert out.dtype == jnp.bfloat16
    assert attention_weights(low[0], low[1], mask=mask).dtype == jnp.float32
    ref = reference_impl(*(np.asarray(a, np.float32) for a in low), mask=mask)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=BF16_ATOL)


def test_weight_dropout_zeroes_and_rescales(key):
    """With one-hot values, the output is the (dropped-out) weight matrix itself: each weight is
    either 0 or A/(1-p)."""
    p, length = 0.3, 8
    q, k = normal(0, (2, 1, length, 1, 4))
    v = jnp.eye(length)[None, :, None, :]  # [1, L, 1, L]: out[i] = weights[i, :]
    weights = attention_weights(q, k)[0, 0]  # [L, L]
    out = scaled_dot_product_attention(
        q, k, v, dropout_rate=p, dropout_key=jax.random.fold_in(key, 7)
    )[0, :, 0]  # [L, L]
    dropped = out == 0.0
    assert 0 < int(dropped.sum()) < length * length
    np.testing.assert_allclose(
        jnp.where(dropped, 0.0, out), jnp.where(dropped, 0.0, weights / (1 - p)), rtol=RTOL
    )


def flax_params(params):
    return {"params": {k: params["params"][k] for k in ("query", "key", "value", "out")}}


@pytest.mark.parametrize("cross", [False, True])
def test_multi_head_attention_matches_flax_module(cross):
    """Self- and cross-attention equal flax's MultiHeadDotProductAttention on the same params."""
    x = normal(0, (2, 5, 16))
    kv = normal(1, (2, 7, 12)) if cross else x
    mask = jnp.ones((1, 1, 5, 7), bool).at[..., 3:].set(False) if cross else causal_mask(5)
    ours = MultiHeadAttention(num_heads=4)
    params = jax.jit(ours.init)(INIT_KEY, x, kv)
    assert params["params"]["query"]["kernel"].shape == (16, 4, 4)
    assert params["params"]["out"]["kernel"].shape == (4, 4, 16)
    ref = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16, out_features=16)
    np.testing.assert_allclose(
        jax.jit(ours.apply)(params, x, kv, mask=mask),
        jax.jit(ref.apply)(flax_params(params), x, kv, mask=mask),
        rtol=RTOL,
        atol=ATOL,
    )


def test_multi_head_attention_with_fewer_kv_heads_equals_repeated_kv_projections():
    """num_kv_heads=2 of 4 heads: key/value kernels of 2 heads, and the same output as
    ordinary multi-head attention whose key/value kernels repeat each head for its 2 query
    heads."""
    x = normal(0, (2, 5, 16))
    gqa = MultiHeadAttention(num_heads=4, num_kv_heads=2)
    params = jax.jit(gqa.init)(INIT_KEY, x)
    assert params["params"]["key"]["kernel"].shape == (16, 2, 4)
    assert params["params"]["value"]["bias"].shape == (2, 4)
    assert params["params"]["query"]["kernel"].shape == (16, 4, 4)
    repeat = lambda a: jnp.repeat(a, 2, axis=-2)  # kernel [16, K, 4] or bias [K, 4]
    full = {
        "params": {
            **params["params"],
            **{name: jax.tree.map(repeat, params["params"][name]) for name in ("key", "value")},
        }
    }
    mask = causal_mask(5)
    np.testing.assert_allclose(
        jax.jit(gqa.apply)(params, x, mask=mask),
        jax.jit(MultiHeadAttention(num_heads=4).apply)(full, x, mask=mask),
        rtol=RTOL,
        atol=ATOL,
    )


def test_multi_head_attention_dropout_and_injected_attention_fn():
    x = normal(0, (2, 5, 8))
    calls = []

    def jax_attention(q, k, v, *, mask, bias, dropout_rate, dropout_key):
        calls.append(dropout_rate)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)

    ours = MultiHeadAttention(num_heads=2, dropout_rate=0.5)
    params = jax.jit(ours.init)(INIT_KEY, x)
    swapped = MultiHeadAttention(num_heads=2, dropout_rate=0.5, attention_fn=jax_attention)
    apply = jax.jit(ours.apply, static_argnames="deterministic")
    eval_out = apply(params, x)
    np.testing.assert_allclose(eval_out, jax.jit(swapped.apply)(params, x), rtol=RTOL, atol=ATOL)
    assert calls == [0.0]  # traced once, without dropout
    rngs = {"dropout": jax.random.key(3)}
    train = apply(params, x, deterministic=False, rngs=rngs)
    assert not np.allclose(train, eval_out)
    np.testing.assert_allclose(train, apply(params, x, deterministic=False, rngs=rngs))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q, k, v: scaled_dot_product_attention(q, k[..., :3], v), "head dims differ"),
        (lambda q, k, v: scaled_dot_product_attention(q[0], k, v), "query must have shape"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v[:, :2]), "value"),
        (
            lambda q, k, v: scaled_dot_product_attention(q[:, :, :1], k, v),
            r"query heads \(1\) must be a multiple of key/value heads \(2\)",
        ),
        (
            lambda q, k, v: scaled_dot_product_attention(q, *jnp.ones((2, 2, 4, 2, 4))),
            "agree on batch",
        ),
        (
            lambda q, k, v: MultiHeadAttention(num_heads=2, num_kv_heads=3).init(
                jax.random.key(0), q[:, :, 0]
            ),
            "num_kv_heads",
        ),
        (
            lambda q, k, v: scaled_dot_product_attention(q, k, v, mask=jnp.ones((3, 5), bool)),
            "does not broadcast",
        ),
        (
            lambda q, k, v: attention_weights(q, k, mask=jnp.ones((1, 1, 1, 1, 5), bool)),
            "rank <= 4",
        ),
        (lambda q, k, v: attention_weights(q, k, bias=jnp.ones((3, 4, 4))), "does not broadcast"),
        (lambda q, k, v: attention_weights(q, k, scale=0.0), "scale"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, dropout_rate=0.5), "dropout_key"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, dropout_rate=1.0), "dropout_rate"),
        (lambda q, k, v: causal_mask(0), "length"),
        (lambda q, k, v: padding_mask(jnp.array([1, 2]), -1), "max_length"),
        (lambda q, k, v: padding_mask(jnp.ones((2, 2), int), 3), "lengths"),
        (
            lambda q, k, v: MultiHeadAttention(num_heads=3).init(jax.random.key(0), q[:, :, 0]),
            "num_heads",
        ),
    ],
)
def test_bad_input_raises_value_error(call, match):
    q = k = v = jnp.ones((1, 4, 2, 4))  # [batch, length, heads, head_dim]
    with pytest.raises(ValueError, match=match):
        call(q, k, v)


def test_non_boolean_mask_raises_type_error():
    q = jnp.ones((1, 4, 2, 4))
    with pytest.raises(TypeError, match="mask must be boolean"):
        attention_weights(q, q, mask=jnp.ones((4, 4)))


def _matmul_flops(jaxpr) -> int:
    """2 · (output size) · (contracted size), summed over every ``dot_general`` of a jaxpr and of
    the jaxprs nested in its equations (jit, custom derivatives)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[c] for c in contract)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                total += _matmul_flops(inner)
    return total


@pytest.mark.parametrize("length_over_width", [0.5, 1.0, 2.0, 4.0])
def test_attention_outgrows_the_projections_beyond_twice_the_width(length_over_width):
    """closed form, exact integer FLOP counts: over one sequence of length L and width D with H
    heads of size D/H, MultiHeadAttention's four projections cost 8 L D² and the attention inside
    it 4 L² D (2 L² D/H for Q Kᵀ and for A V, per head), so attention / projections = L / (2D):
    they are equal at L = 2D, not at L = D. Counted from the traced matmuls of the code."""
    width, heads = 32, 4
    length = int(length_over_width * width)
    x = jax.ShapeDtypeStruct((1, length, width), jnp.float32)
    module = MultiHeadAttention(num_heads=heads)
    params = jax.eval_shape(module.init, INIT_KEY, x)
    total = _matmul_flops(jax.make_jaxpr(module.apply)(params, x).jaxpr)
    qkv = jax.ShapeDtypeStruct((1, length, heads, width // heads), jnp.float32)
    attention = _matmul_flops(jax.make_jaxpr(scaled_dot_product_attention)(qkv, qkv, qkv).jaxpr)
    projections = total - attention
    assert attention == 4 * length**2 * width
    assert projections == 8 * length * width**2
    assert attention * 2 * width == projections * length  # ratio L / (2D), exactly


@jax.jit
def _first_row_and_its_query_jacobian(q, k):
    """Query 0's attention weights ``[k_len]`` and their Jacobian in ``q``."""
    row = lambda q: attention_weights(q, k)[0, 0, 0]  # [k_len]
    return row(q), jax.jacobian(row)(q)


def test_softmax_saturates_as_unscaled_scores_grow_and_scaling_keeps_it_fixed():
    """Monte Carlo over 128 queries x 128 keys with unit-normal entries. The softmax Jacobian
    J = diag(A) - A Aᵀ of each row (checked against jax.jacobian of the code's weights) has a
    median Frobenius norm near 0.13 with the 1/sqrt(d_k) scale, whatever d_k (σ = 1); unscaled
    scores (σ = sqrt(d_k)) push rows towards one-hot: the fraction of rows with a weight above
    0.99 grows with d_k (0.13 at d_k = 64, 0.79 at d_k = 1024), and at d_k = 1024 the
    median Jacobian norm is below 1 % of the scaled one. Tolerances: `median_atol` on the
    scaled medians (their spread over seeds is about 0.01); the thresholds on the unscaled rows
    are about half the measured values.
    """
    n, median_atol = 128, 0.03

    def rows(scores):  # [n, n] scores -> weights, median Frobenius norm of the row Jacobians
        a = np.exp(scores - scores.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        jac = a[:, :, None] * np.eye(n) - a[:, :, None] * a[:, None, :]  # [n, n, n]
        return a, jac, np.median(np.sqrt((jac**2).sum(axis=(1, 2))))

    one_hot = {}
    for d_k in (64, 1024):
        q, k = normal(d_k, (1, n, 1, d_k)), normal(d_k + 1, (1, n, 1, d_k))
        unscaled = np.asarray(attention_scores(q, k, scale=1.0), np.float64)[0, 0]  # [n, n]
        a, jac, scaled_median = rows(unscaled / math.sqrt(d_k))
        if d_k == 64:  # the closed forms against the code's weights and their autodiff Jacobian
            weights, dq = _first_row_and_its_query_jacobian(q, k)
            np.testing.assert_allclose(weights, a[0], rtol=RTOL, atol=ATOL)
            dq = np.asarray(dq)[:, 0, 0, 0, :]  # [n, d_k]: d A_0j / d q_0
            np.testing.assert_allclose(dq, jac[0] @ k[0, :, 0] / 8.0, rtol=RTOL, atol=ATOL)
        assert abs(scaled_median - 0.13) < median_atol
        assert (a.max(axis=1) > 0.99).mean() == 0.0
        a, _, unscaled_median = rows(unscaled)
        one_hot[d_k] = (a.max(axis=1) > 0.99).mean()
    assert 0.08 < one_hot[64] < 0.35 < one_hot[1024]
    assert unscaled_median < 0.01 * scaled_median
