"""Tests for genjax.nn.unet: shapes for every preset, identity at initialisation, the time
embedding's use of the sinusoidal encoding, conditioning, attention's permutation equivariance."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.nn import layers as L
from genjax.nn import unet as U
from genjax.nn.positional import sinusoidal_encoding
from genjax.recipes.common import fast_init_key

ATOL = 1e-5


def _perturb(params, key, scale=0.1):
    """Move every parameter off its initial value (zero-initialised layers hide the rest);
    ``ShapeDtypeStruct`` leaves (from ``jax.eval_shape``) count as zeros."""
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    base = [
        np.zeros(p.shape, np.float32) if isinstance(p, jax.ShapeDtypeStruct) else p for p in leaves
    ]
    return jax.tree.unflatten(
        tree, [b + scale * rng.standard_normal(b.shape).astype(np.float32) for b in base]
    )


@pytest.fixture(scope="module")
def tiny():
    """A small conditional U-Net, its initial parameters and perturbed ones, built once."""
    model = U.UNet(num_steps=50, base_features=8, channel_mults=(1, 2), num_heads=2, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    t, y = jnp.array([0, 10, 49]), jnp.array([0, 1, 3])
    params = jax.jit(model.init)(fast_init_key(jax.random.key(0)), x, t, y)
    return model, jax.jit(model.apply), params, _perturb(params, jax.random.key(1)), (x, t, y)


@pytest.mark.parametrize(
    ("shape", "mults"), [((8, 8, 1), (1, 2)), ((28, 28, 1), (1, 2, 2)), ((32, 32, 3), (1, 2, 2, 2))]
)
def test_unet_presets_map_images_to_their_own_shape(shape, mults):
    model = U.unet_for(shape, num_steps=1000, num_classes=10)
    assert tuple(model.channel_mults) == mults
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, t, t)
    out = jax.eval_shape(model.apply, params, x, t, t)
    assert out.shape == (2, *shape) and out.dtype == jnp.float32


def test_unet_starts_at_zero_and_depends_on_time_and_label(tiny):
    _, apply, params, perturbed, (x, t, y) = tiny
    np.testing.assert_allclose(apply(params, x, t, y), 0.0)  # zero-initialised output conv
    out = apply(perturbed, x, t, y)
    assert not np.allclose(out, apply(perturbed, x, t + 1, y), atol=ATOL)
    assert not np.allclose(out, apply(perturbed, x, t, (y + 1) % 4), atol=ATOL)


def test_time_embedding_is_mlp_of_sinusoidal_encoding(key):
    """With identity weights and zero biases the embedding is silu(PE(t)) exactly."""
    emb = L.TimeEmbedding(num_steps=100, features=16)
    t = jnp.array([0, 7, 99])
    params = jax.eval_shape(emb.init, key, t)
    identity = jax.tree.map(
        lambda p: jnp.eye(16) if len(p.shape) == 2 else jnp.zeros(p.shape), params
    )
    expected = jax.nn.silu(sinusoidal_encoding(100, 16)[t])
    np.testing.assert_allclose(emb.apply(identity, t), expected, atol=ATOL)


def test_res_block_and_attention_start_as_identity(key):
    x = jax.random.normal(key, (2, 4, 4, 8))
    emb = jax.random.normal(key, (2, 12))
    block = L.ResBlock(8, num_groups=4)
    params = jax.jit(block.init)(fast_init_key(key), x, emb)
    np.testing.assert_allclose(jax.jit(block.apply)(params, x, emb), x, atol=ATOL)
    attn = U.AttentionBlock(num_heads=2, num_groups=4)
    attn_params = jax.jit(attn.init)(fast_init_key(key), x)
    np.testing.assert_allclose(jax.jit(attn.apply)(attn_params, x), x, atol=ATOL)
    wider = L.ResBlock(16, num_groups=4)
    shape = jax.eval_shape(lambda: wider.apply(wider.init(key, x, emb), x, emb)).shape
    assert shape == (2, 4, 4, 16)


def test_time_embedding_same_with_and_without_jit(key):
    emb = L.TimeEmbedding(num_steps=100, features=16)
    t = jnp.array([0, 7, 99])
    params = _perturb(jax.eval_shape(emb.init, key, t), jax.random.key(5))
    np.testing.assert_allclose(jax.jit(emb.apply)(params, t), emb.apply(params, t), atol=ATOL)


def test_attention_block_is_permutation_equivariant(key):
    """Self-attention and group norm see positions as a set: permuting pixels permutes outputs."""
    x = jax.random.normal(key, (2, 4, 4, 8))
    attn = U.AttentionBlock(num_heads=2, num_groups=4)
    params = _perturb(jax.eval_shape(attn.init, key, x), jax.random.key(2))
    apply = jax.jit(attn.apply)
    perm = jax.random.permutation(jax.random.key(3), 16)
    permute = lambda z: z.reshape(2, 16, 8)[:, perm].reshape(2, 4, 4, 8)  # [2, 4, 4, 8]
    np.testing.assert_allclose(apply(params, permute(x)), permute(apply(params, x)), atol=ATOL)


def test_unet_output_pixel_sees_the_whole_image(tiny):
    """Through the skips, the convolutions and the middle attention, the output at one corner
    moves when only the opposite corner of the input moves, and other examples do not move."""
    _, apply, _, params, (x, t, y) = tiny
    out = apply(params, x, t, y)
    moved = apply(params, x.at[0, 7, 7, 0].add(1.0), t, y)
    assert abs(float(moved[0, 0, 0, 0] - out[0, 0, 0, 0])) > 1e-4
    np.testing.assert_allclose(moved[1:], out[1:], atol=ATOL)


def test_unet_rejects_bad_input(key):
    model = U.UNet(num_steps=10, base_features=8, channel_mults=(1, 2), num_classes=2)
    x, t, y = jnp.ones((1, 8, 8, 1)), jnp.array([0]), jnp.array([0])
    params = _perturb(jax.eval_shape(model.init, key, x, t, y), key)
    with pytest.raises(ValueError, match="H and W divisible by 2"):
        model.apply(params, jnp.ones((1, 7, 8, 1)), t, y)
    with pytest.raises(ValueError, match=r"x must be NHWC"):
        model.apply(params, jnp.ones((8, 8, 1)), t, y)
    with pytest.raises(ValueError, match=r"t must have shape \[batch\]"):
        model.apply(params, x, jnp.array([0, 1]), y)
    with pytest.raises(ValueError, match="needs labels y"):
        model.apply(params, x, t)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        attn = U.AttentionBlock(num_heads=3)
        attn.init(key, jnp.ones((1, 2, 2, 8)))
    with pytest.raises(ValueError, match=r"t must be \[batch\] integer steps"):
        nn.Module.apply(L.TimeEmbedding(10, 4), {}, jnp.array([0.5]))
    with pytest.raises(ValueError, match=r"image_shape must be \(H, W, C\)"):
        U.unet_for((8, 8), num_steps=10)


def test_unet_for_other_sizes_halves_while_even():
    assert tuple(U.unet_for((16, 16, 1), 10).channel_mults) == (1, 2, 2, 2)
    assert tuple(U.unet_for((12, 20, 1), 10).channel_mults) == (1, 2, 2)
    assert U.unet_for((8, 8, 1), 10, base_features=16).base_features == 16


# ----------------------------------------------------------------------------- cross-attention


def _group_norm(x, scale, bias, groups, eps=1e-6):
    """GroupNorm in float64 numpy: statistics over the positions and the channels of a group."""
    b, h, w, c = x.shape
    g = x.reshape(b, h * w, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * scale + bias


def _cross_attention_reference(params, x, context, lengths, heads, groups):
    """The block by hand: queries from the normalised map, keys and values from the context,
    padded keys at -inf, softmax, output projection, residual."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    x, context = np.asarray(x, np.float64), np.asarray(context, np.float64)
    b, h, w, c = x.shape
    d = c // heads
    hn = _group_norm(x, p["GroupNorm_0"]["scale"], p["GroupNorm_0"]["bias"], groups)
    hn = hn.reshape(b, h * w, c)
    q = np.einsum("bpc,chd->bphd", hn, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("blc,chd->blhd", context, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("blc,chd->blhd", context, p["value"]["kernel"]) + p["value"]["bias"]
    scores = np.einsum("bphd,blhd->bhpl", q, k) / np.sqrt(d)  # [b, heads, HW, L]
    real = np.arange(context.shape[1])[None, :] < np.asarray(lengths)[:, None]  # [b, L]
    scores = np.where(real[:, None, None, :], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhpl,blhd->bphd", weights, v)  # [b, HW, heads, d]
    out = np.einsum("bphd,hdc->bpc", out, p["out"]["kernel"]) + p["out"]["bias"]
    return x + out.reshape(b, h, w, c)


@pytest.fixture(scope="module")
def cross():
    """A cross-attention block (2 heads, 4 groups, 8 channels) with perturbed parameters,
    a 4x4 map and a context of 5 tokens of width 6 whose lengths are 3 and 5."""
    block = U.CrossAttentionBlock(num_heads=2, num_groups=4)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    context = jax.random.normal(jax.random.key(1), (2, 5, 6))
    lengths = jnp.array([3, 5])
    params = _perturb(
        jax.eval_shape(block.init, jax.random.key(0), x, context, lengths),
        jax.random.key(4),
        scale=0.3,
    )
    return block, params, x, context, lengths


def test_cross_attention_equals_attention_with_context_keys_and_values(cross):
    """Reference implementation: the block against the hand computation in float64 numpy,
    queries from the feature map, keys and values from the context, padded tokens masked."""
    block, params, x, context, lengths = cross
    out = jax.jit(block.apply)(params, x, context, lengths)
    assert out.shape == x.shape
    expected = _cross_attention_reference(params, x, context, lengths, heads=2, groups=4)
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=1e-4)


def test_cross_attention_ignores_padded_context_tokens(cross):
    """Invariant: rows of the context at positions >= length change nothing; a real row does."""
    block, params, x, context, lengths = cross
    apply = jax.jit(block.apply)
    out = apply(params, x, context, lengths)
    padded = context.at[0, 3:].set(100.0)  # example 0 has 3 real tokens
    np.testing.assert_allclose(apply(params, x, padded, lengths), out, atol=ATOL)
    real = context.at[0, 2].add(1.0)
    assert not np.allclose(apply(params, x, real, lengths)[0], out[0], atol=1e-4)
    np.testing.assert_allclose(apply(params, x, real, lengths)[1], out[1], atol=ATOL)


def test_cross_attention_starts_as_identity(key):
    block = U.CrossAttentionBlock(num_heads=2, num_groups=4)
    x, context = jax.random.normal(key, (2, 4, 4, 8)), jnp.ones((2, 3, 5))
    params = jax.jit(block.init)(fast_init_key(key), x, context)
    np.testing.assert_allclose(jax.jit(block.apply)(params, x, context), x, atol=ATOL)


@pytest.mark.parametrize("pooled", [False, True])
def test_unet_cross_attention_option_reads_the_context_and_leaves_the_default_unchanged(
    key, pooled
):
    """The default U-Net has no cross-attention parameters; with ``cross_attention`` (and
    ``pooled_context``, the EOS vector added to the embedding) the output moves with a real
    context token, not with a padded one."""
    kwargs = dict(num_steps=10, base_features=8, channel_mults=(1, 2), num_heads=2)
    x, t = jax.random.normal(key, (2, 8, 8, 1)), jnp.array([0, 5])
    plain = jax.eval_shape(U.UNet(**kwargs).init, key, x, t)
    assert not any(
        "CrossAttentionBlock" in str(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(plain)[0]
    )
    model = U.UNet(**kwargs, cross_attention=True, pooled_context=pooled)
    context, lengths = jax.random.normal(key, (2, 4, 6)), jnp.array([2, 4])
    params = _perturb(
        jax.eval_shape(model.init, key, x, t, context=context, context_lengths=lengths),
        jax.random.key(7),
    )
    apply = jax.jit(lambda p, c: model.apply(p, x, t, context=c, context_lengths=lengths))
    out = apply(params, context)
    assert out.shape == x.shape
    np.testing.assert_allclose(apply(params, context.at[0, 3].add(5.0)), out, atol=ATOL)
    assert not np.allclose(apply(params, context.at[0, 1].add(5.0))[0], out[0], atol=1e-4)


def test_cross_attention_rejects_bad_shapes(key):
    block = U.CrossAttentionBlock(num_heads=2, num_groups=4)
    x = jnp.ones((2, 4, 4, 8))
    with pytest.raises(ValueError, match=r"context must have shape \[batch, length, features\]"):
        block.init(key, x, jnp.ones((3, 5, 6)))
    with pytest.raises(ValueError, match=r"context_lengths must have shape \[batch\]"):
        block.init(key, x, jnp.ones((2, 5, 6)), jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="x must be NHWC"):
        block.init(key, jnp.ones((4, 4, 8)), jnp.ones((2, 5, 6)))
    model = U.UNet(num_steps=10, base_features=8, channel_mults=(1,), cross_attention=True)
    with pytest.raises(ValueError, match="needs context"):
        model.init(key, jnp.ones((1, 4, 4, 1)), jnp.array([0]))
    with pytest.raises(
        ValueError, match="pooled_context needs cross_attention and context_lengths"
    ):
        U.UNet(num_steps=10, channel_mults=(1,), cross_attention=True, pooled_context=True).init(
            key, jnp.ones((1, 4, 4, 1)), jnp.array([0]), context=jnp.ones((1, 2, 3))
        )
    with pytest.raises(ValueError, match="only read by a UNet with cross_attention"):
        U.UNet(num_steps=10).init(
            key, jnp.ones((1, 4, 4, 1)), jnp.array([0]), context=jnp.ones((1, 2, 3))
        )
