"""Positional encodings against their closed forms: the sinusoidal table and its shift map,
the interleaved/halves converter, T5 buckets, and rotary's relative-position property
(derivations/04-positional-encoding.md)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genjax.nn.attention import attention_weights
from genjax.nn.positional import (
    LearnedPositionalEmbedding,
    RelativePositionBias,
    apply_rotary,
    interleaved_to_halves,
    relative_position_bucket,
    sinusoidal_encoding,
    sinusoidal_shift,
)

RTOL = 1e-5
ATOL = 1e-5
TRIG_ATOL = 1e-5  # tables are computed in float64 and rounded once to float32

dims = st.sampled_from([2, 4, 8, 16, 64])


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape, np.float32)


@settings(max_examples=10)
@given(length=st.integers(1, 50), dim=dims, base=st.sampled_from([100.0, 10000.0]))
def test_sinusoidal_matches_closed_form(length, dim, base):
    """PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d)), in float64."""
    expected = np.zeros((length, dim))
    for p in range(length):
        for i in range(dim // 2):
            angle = p / base ** (2 * i / dim)
            expected[p, 2 * i], expected[p, 2 * i + 1] = math.sin(angle), math.cos(angle)
    np.testing.assert_allclose(sinusoidal_encoding(length, dim, base), expected, atol=TRIG_ATOL)


def test_sinusoidal_first_rows_and_range():
    pe = sinusoidal_encoding(100, 32)
    np.testing.assert_array_equal(pe[0], np.tile([0.0, 1.0], 16))  # sin 0, cos 0
    assert float(jnp.abs(pe).max()) <= 1.0
    # the last pair has the longest wavelength, 2π base^((d-2)/d)
    np.testing.assert_allclose(pe[1, -2], math.sin(10000.0 ** (-30 / 32)), rtol=RTOL)


@settings(max_examples=10)
@given(offset=st.integers(-20, 20), dim=dims)
def test_sinusoidal_shift_is_a_fixed_linear_map(offset, dim):
    """PE[p + k] = T_k PE[p] for every p with the same T_k; T_k is orthogonal."""
    pe = sinusoidal_encoding(60, dim)
    t = sinusoidal_shift(offset, dim)
    lo, hi = max(0, -offset), min(60, 60 - offset)  # p with both p and p + k in the table
    np.testing.assert_allclose(pe[lo:hi] @ t.T, pe[lo + offset : hi + offset], atol=TRIG_ATOL)
    np.testing.assert_allclose(t @ t.T, np.eye(dim), atol=ATOL)


def test_sinusoidal_shift_composes():
    """T_a T_b = T_{a+b}: shifts are a group of rotations."""
    np.testing.assert_allclose(
        sinusoidal_shift(3, 8) @ sinusoidal_shift(-7, 8), sinusoidal_shift(-4, 8), atol=ATOL
    )


def test_interleaved_to_halves_gives_the_concatenated_sin_cos_layout():
    length, dim = 20, 16
    angles = np.arange(length)[:, None] * 10000.0 ** (-np.arange(0, dim, 2) / dim)[None, :]
    halves = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    np.testing.assert_allclose(
        interleaved_to_halves(sinusoidal_encoding(length, dim)), halves, atol=ATOL
    )


def rotate_pairs_reference(x, positions, base=10000.0):
    """Explicit 2x2 rotation of each pair (2i, 2i+1) by p ω_i, in float64."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    d = x.shape[-1]
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            for i in range(d // 2):
                a = positions[t] * base ** (-2 * i / d)
                rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
                out[b, t, :, 2 * i : 2 * i + 2] = x[b, t, :, 2 * i : 2 * i + 2] @ rot.T
    return out


def test_rotary_matches_explicit_rotation():
    x = normal(0, (2, 7, 3, 8))
    np.testing.assert_allclose(apply_rotary(x), rotate_pairs_reference(x, range(7)), atol=ATOL)
    positions = np.array([5, 0, 11, 2, 2, 9, 30])
    np.testing.assert_allclose(
        apply_rotary(x, positions), rotate_pairs_reference(x, positions), atol=TRIG_ATOL
    )


def test_rotary_halves_convention_equals_interleaved_after_permutation():
    """GPT-NeoX/LLaMA rotate (x_i, x_{i+d/2}); that map is ours conjugated by the permutation."""
    x = normal(1, (1, 9, 2, 16))
    h = np.asarray(interleaved_to_halves(x), np.float64)
    angles = np.arange(9)[:, None] * 10000.0 ** (-np.arange(0, 16, 2) / 16)[None, :]  # [L, 8]
    cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]
    first, second = h[..., :8], h[..., 8:]
    halves_rope = np.concatenate([first * cos - second * sin, first * sin + second * cos], -1)
    np.testing.assert_allclose(interleaved_to_halves(apply_rotary(x)), halves_rope, atol=ATOL)


def scores_of(q, k):
    """Unscaled dot products q_i . k_j for batch 0, head 0: [Lq, Lk]."""
    return np.einsum("qd,kd->qk", np.asarray(q)[0, :, 0], np.asarray(k)[0, :, 0])


@settings(max_examples=10)
@given(shift=st.integers(-40, 40), seed=st.integers(0, 2**16))
def test_rotary_scores_depend_only_on_relative_position(shift, seed):
    """<R_m q, R_n k> = <R_{m+s} q, R_{n+s} k> = <q, R_{n-m} k> for every shift s."""
    length = 8
    q, k = normal(seed, (2, 1, length, 1, 16))
    positions = np.arange(length) + 50
    rotated = lambda pos: scores_of(apply_rotary(q, pos), apply_rotary(k, pos))  # [Lq, Lk]
    s = rotated(positions)
    np.testing.assert_allclose(s, rotated(positions + shift), atol=1e-3)
    relative = np.stack(
        [scores_of(q, apply_rotary(k, np.arange(length) - m))[m] for m in range(length)]
    )  # row m: q_m . R_{n-m} k_n
    np.testing.assert_allclose(s, relative, atol=1e-3)


def test_rotary_preserves_norm_and_dtype():
    x = normal(2, (2, 5, 3, 8))
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rotary(x), axis=-1), np.linalg.norm(x, axis=-1), rtol=RTOL
    )
    low = apply_rotary(x.astype(jnp.bfloat16))
    assert low.dtype == jnp.bfloat16
    per_batch = np.stack([np.arange(5), np.arange(5) + 3])  # [batch, length]
    np.testing.assert_allclose(
        apply_rotary(x, per_batch)[1], apply_rotary(x[1:], np.arange(5) + 3)[0], atol=ATOL
    )


def t5_bucket_reference(relative_position, bidirectional, num_buckets, max_distance):
    """The T5 (mesh-tensorflow) bucketing, one integer at a time in plain Python."""
    ret, n = 0, -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 16)])
def test_relative_bucket_matches_t5(bidirectional, num_buckets, max_distance):
    rel = np.arange(-300, 301)
    ours = np.asarray(
        relative_position_bucket(
            jnp.asarray(rel),
            bidirectional=bidirectional,
            num_buckets=num_buckets,
            max_distance=max_distance,
        )
    )
    ref = [t5_bucket_reference(int(r), bidirectional, num_buckets, max_distance) for r in rel]
    np.testing.assert_array_equal(ours, ref)
    assert ours.min() >= 0 and ours.max() == num_buckets - 1
    past = ours[rel <= 0][::-1]  # keys at distance 0, 1, 2, ... before the query
    assert np.all(np.diff(past) >= 0)  # coarser, never finer, with distance
    if not bidirectional:
        assert np.all(ours[rel > 0] == 0)  # causal: every future key shares bucket 0


def test_relative_position_bias_is_toeplitz_and_feeds_attention(key):
    rpb = RelativePositionBias(num_heads=2, num_buckets=8, max_distance=16)
    params = rpb.init(key, 5, 7)
    bias = np.asarray(rpb.apply(params, 5, 7))
    assert bias.shape == (1, 2, 5, 7)
    table = np.asarray(params["params"]["bias"])  # [buckets, heads]
    buckets = relative_position_bucket(
        jnp.arange(7)[None, :] - jnp.arange(5)[:, None], num_buckets=8, max_distance=16
    )
    np.testing.assert_array_equal(bias[0], np.transpose(table[np.asarray(buckets)], (2, 0, 1)))
    for offset in range(-4, 7):  # constant along diagonals: a function of j - i only
        assert np.ptp(np.diagonal(bias[0], offset, axis1=1, axis2=2), axis=1).max() == 0.0
    q = normal(0, (1, 5, 2, 4))
    k = normal(1, (1, 7, 2, 4))
    w = attention_weights(q, k, bias=bias)
    ref = jax.nn.softmax(np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0 + bias, axis=-1)
    np.testing.assert_allclose(w, ref, rtol=RTOL, atol=ATOL)


def test_learned_embedding_adds_table_rows(key):
    module = LearnedPositionalEmbedding(max_length=10)
    x = normal(0, (2, 6, 4))
    params = module.init(key, x)
    table = params["params"]["embedding"]
    assert table.shape == (10, 4)
    np.testing.assert_allclose(module.apply(params, x), x + table[None, :6], rtol=RTOL)
    with pytest.raises(ValueError, match="max_length"):
        module.apply(params, normal(0, (1, 11, 4)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sinusoidal_encoding(4, 5), "dim must be even"),
        (lambda: sinusoidal_encoding(0, 4), "length must be a positive int"),
        (lambda: sinusoidal_encoding(-3, 4), "length must be a positive int"),
        (lambda: sinusoidal_encoding(4, 4, base=1.0), "base"),
        (lambda: sinusoidal_shift(1, 3), "dim must be even"),
        (lambda: interleaved_to_halves(jnp.ones(3)), "even last axis"),
        (lambda: apply_rotary(jnp.ones((1, 4, 2, 3))), "head_dim must be even"),
        (lambda: apply_rotary(jnp.ones((4, 2, 4))), "x must have shape"),
        (lambda: apply_rotary(jnp.ones((1, 4, 2, 4)), jnp.arange(5)), "positions"),
        (lambda: relative_position_bucket(jnp.arange(3), num_buckets=7), "num_buckets"),
        (lambda: relative_position_bucket(jnp.arange(3), max_distance=4), "max_distance"),
        (lambda: RelativePositionBias(num_heads=1).init(jax.random.key(0), 0, 3), "q_len"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
