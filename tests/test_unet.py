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
