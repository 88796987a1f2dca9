"""Tests for genjax.latent_diffusion and its recipe: the autoencoder's loss by hand, the latent
scale's unit variance, prompt dropout, guidance at w = 0 and w = 1, the latent sampler as
genjax.diffusion.sample with the wrapped model, errors, and the quick recipe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import captions as C
from genjax import diffusion as D
from genjax import latent_diffusion as LD
from genjax.data import load_dataset
from genjax.recipes.common import fast_init_key

ATOL = 1e-5
RTOL = 1e-5
LOG_2PI = np.log(2.0 * np.pi)


def _perturbed(params, key, scale=0.2):
    """Every parameter moved by Gaussian noise (the zero-initialised output layers would hide
    the rest)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def tiny(digits):
    """A small latent diffusion model (T = 20) with perturbed parameters and four prompts."""
    model = LD.LatentDiffusion(
        autoencoder=LD.KLAutoencoder(latent_channels=2, features=8),
        denoiser=LD.LatentDenoiser(
            20, base_features=8, num_heads=2, text_features=8, text_layers=1
        ),
        schedule=D.cosine_schedule(20),
        image_shape=(8, 8, 1),
    )
    x = jnp.asarray(digits.train["x"][:4])
    tokens, lengths = C.tokenize(["seven", "the digit 3", "a 1 written by hand", "zero"])
    key = jax.random.key(0)
    ae = jax.jit(model.autoencoder.init)(fast_init_key(key), x)
    z = jnp.zeros((4, 4, 4, 2))
    den = jax.jit(model.denoiser.init)(
        fast_init_key(key), z, jnp.zeros(4, jnp.int32), tokens, lengths
    )
    params = {
        "autoencoder": _perturbed(ae, jax.random.key(1), 0.05),
        "denoiser": _perturbed(den, jax.random.key(2)),
        "scale": jnp.float32(1.3),
    }
    return model, params, jnp.asarray(tokens), jnp.asarray(lengths)


# ----------------------------------------------------------------------------- autoencoder


def test_autoencoder_loss_is_half_squared_error_plus_beta_kl(tiny, digits):
    """Closed form: with the decoder's log-variance 0 the loss is
    ½‖x − D(μ + σε)‖² + (D/2) log 2π + β KL(N(μ, σ²) ‖ N(0, I)), by hand in float64."""
    model, params, _, _ = tiny
    ae, p = model.autoencoder, params["autoencoder"]
    x = jnp.asarray(digits.train["x"][:5])
    encode = lambda v: ae.apply(p, v, method="encode")
    decode = lambda z: ae.apply(p, z, method="decode")
    noise = jax.random.normal(jax.random.key(3), (5, 4 * 4 * 2))
    beta = 0.01
    loss, reconstruction, kl = LD.autoencoder_loss(
        None, encode, decode, x, kl_weight=beta, noise=noise
    )
    mean, log_var = (np.asarray(a, np.float64).reshape(5, -1) for a in encode(x))
    z = mean + np.exp(0.5 * log_var) * np.asarray(noise, np.float64)
    x_hat = np.asarray(decode(jnp.asarray(z.reshape(5, 4, 4, 2), jnp.float32)), np.float64)
    sq = np.sum((np.asarray(x, np.float64) - x_hat) ** 2, axis=(1, 2, 3))
    kl_hand = 0.5 * np.sum(np.exp(log_var) + mean**2 - 1.0 - log_var, axis=1)
    np.testing.assert_allclose(kl, kl_hand, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reconstruction, -0.5 * sq - 32.0 * LOG_2PI, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        loss, 0.5 * sq + 32.0 * LOG_2PI + beta * kl_hand, rtol=1e-4, atol=1e-4
    )


def test_autoencoder_halves_the_image_into_a_latent_and_back(tiny, digits):
    model, params, _, _ = tiny
    x = jnp.asarray(digits.train["x"][:3])
    mean, log_var = model.autoencoder.apply(params["autoencoder"], x, method="encode")
    assert mean.shape == log_var.shape == (3, 4, 4, 2) == (3, *model.latent_shape)
    assert model.autoencoder.apply(params["autoencoder"], mean, method="decode").shape == x.shape
    images = model.decode(params, model.encode(params, x))  # scale in, scale out
    assert images.shape == x.shape and float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_latent_scale_gives_unit_variance_on_the_training_latents(tiny, digits):
    """Closed form: s = 1 / std over every element, so s z has variance 1 (numpy, float64)."""
    model, params, _, _ = tiny
    x = jnp.asarray(digits.train["x"])
    mean, _ = model.autoencoder.apply(params["autoencoder"], x, method="encode")
    s = LD.latent_scale(mean)
    np.testing.assert_allclose(s, 1.0 / np.std(np.asarray(mean, np.float64)), rtol=RTOL)
    np.testing.assert_allclose(np.std(np.asarray(s * mean, np.float64)), 1.0, rtol=RTOL)
    np.testing.assert_allclose(LD.latent_scale(3.0 * mean), s / 3.0, rtol=RTOL)


# ----------------------------------------------------------------------------- prompts


def test_drop_prompts_replaces_prompts_with_the_empty_caption_where_u_is_below_p(tiny):
    _, _, tokens, lengths = tiny
    u = jnp.array([0.05, 0.5, 0.09, 0.95])
    dropped, dropped_lengths = LD.drop_prompts(None, tokens, lengths, 0.1, noise=u)
    null_tokens, null_lengths = LD.null_prompt()
    np.testing.assert_array_equal(null_tokens[0, :3], [C.BOS, C.EOS, C.PAD])
    assert int(null_lengths[0]) == 2
    for i, drop in enumerate(np.asarray(u) < 0.1):
        want = (null_tokens[0], null_lengths[0]) if drop else (tokens[i], lengths[i])
        np.testing.assert_array_equal(dropped[i], want[0])
        assert int(dropped_lengths[i]) == int(want[1])


# ----------------------------------------------------------------------------- guidance


def test_guidance_zero_is_the_unconditional_model_and_one_the_conditional(tiny):
    """w = 0 gives ε(z, t, ∅) (the empty prompt), w = 1 gives ε(z, t, c), each against a
    direct call of the denoiser."""
    model, params, tokens, lengths = tiny
    den, p = model.denoiser, params["denoiser"]
    zt = jax.random.normal(jax.random.key(5), (4, 4, 4, 2))
    t = jnp.array([0, 5, 10, 19])
    null_tokens, null_lengths = LD.null_prompt()
    null = (jnp.repeat(null_tokens, 4, 0), jnp.repeat(null_lengths, 4, 0))
    unconditional = den.apply(p, zt, t, *null)
    conditional = den.apply(p, zt, t, tokens, lengths)
    assert not np.allclose(unconditional, conditional, atol=1e-3)
    w0 = LD.latent_model_fn(model, params, tokens, lengths, 0.0)(zt, t)
    w1 = LD.latent_model_fn(model, params, tokens, lengths, 1.0)(zt, t)
    np.testing.assert_allclose(w0, unconditional, atol=ATOL)
    np.testing.assert_allclose(w1, conditional, atol=ATOL)
    w3 = LD.latent_model_fn(model, params, tokens, lengths, 3.0)(zt, t)
    np.testing.assert_allclose(w3, unconditional + 3.0 * (conditional - unconditional), atol=1e-4)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("num_steps", [5, None])
def test_latent_sampler_is_diffusion_sample_with_the_wrapped_model(tiny, num_steps, monkeypatch):
    """One code path: the latent sampler equals genjax.diffusion.sample (DDIM, or DDPM for
    ``num_steps=None``) called directly on the latent shape with :func:`latent_model_fn`,
    then the decoder; and it calls that very function."""
    model, params, tokens, lengths = tiny
    key = jax.random.key(9)
    out = LD.sample(
        key,
        model,
        params,
        4,
        tokens=tokens,
        lengths=lengths,
        guidance_scale=2.0,
        num_steps=num_steps,
    )
    model_fn = LD.latent_model_fn(model, params, tokens, lengths, 2.0)
    z = D.sample(
        key,
        model.schedule,
        model_fn,
        (4, 4, 4, 2),
        num_steps=num_steps,
        clip_x0=(-model.clip, model.clip),
    )
    np.testing.assert_allclose(out, model.decode(params, z), atol=ATOL)
    assert out.shape == (4, 8, 8, 1)
    calls = []
    original = D.sample
    monkeypatch.setattr(D, "sample", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    LD.sample(key, model, params, 4, tokens=tokens, lengths=lengths, num_steps=num_steps)
    assert calls == [(4, 4, 4, 2)]


def test_unconditional_sampling_uses_the_empty_prompt(tiny):
    model, params, _, _ = tiny
    key = jax.random.key(2)
    null_tokens, null_lengths = LD.null_prompt()
    a = LD.sample(key, model, params, 3, num_steps=4, guidance_scale=1.0)
    b = LD.sample(
        key,
        model,
        params,
        3,
        num_steps=4,
        guidance_scale=1.0,
        tokens=np.repeat(null_tokens, 3, 0),
        lengths=np.repeat(null_lengths, 3, 0),
    )
    np.testing.assert_allclose(a, b, atol=ATOL)


def test_bad_shapes_raise_value_error_naming_the_argument(tiny):
    model, params, tokens, lengths = tiny
    ae = model.autoencoder
    key = jax.random.key(0)
    enc = lambda v: ae.apply(params["autoencoder"], v, method="encode")
    dec = lambda z: ae.apply(params["autoencoder"], z, method="decode")
    with pytest.raises(ValueError, match=r"x must be NHWC"):
        LD.autoencoder_loss(key, enc, dec, jnp.ones((8, 8, 1)))
    with pytest.raises(ValueError, match=r"x must be NHWC \[B, H, W, C\] with even H and W"):
        enc(jnp.ones((1, 7, 8, 1)))
    with pytest.raises(ValueError, match=r"z must be \[B, h, w, latent_channels=2\]"):
        dec(jnp.ones((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        LD.autoencoder_loss(key, enc, dec, jnp.ones((1, 8, 8, 1)), kl_weight=-1.0)
    with pytest.raises(ValueError, match=r"latents must be \[N, \.\.\.\]"):
        LD.latent_scale(jnp.ones(5))
    with pytest.raises(ValueError, match=r"tokens must be \[B, L\] and lengths \[B\]"):
        LD.drop_prompts(key, tokens, lengths[:2], 0.1)
    with pytest.raises(ValueError, match=r"tokens must be \[n, L\] and lengths \[n\]"):
        LD.latent_model_fn(model, params, tokens[0], lengths, 2.0)
    with pytest.raises(ValueError, match="tokens must have n = 3 rows"):
        LD.sample(key, model, params, 3, tokens=tokens, lengths=lengths)
    with pytest.raises(ValueError, match="tokens and lengths must be given together"):
        LD.sample(key, model, params, 4, tokens=tokens)
    with pytest.raises(ValueError, match="n must be"):
        LD.sample(key, model, params, 0)


# ----------------------------------------------------------------------------- recipe


def test_quick_recipe_trains_and_evaluates(digits):
    """The quick budget trains both stages and evaluates; the frozen autoencoder's scaled
    training latents have unit variance, and every figure of the report is finite."""
    from genjax import recipes

    result = recipes.run(jax.random.key(0), recipes.get("latent_diffusion_digits"), "quick")
    params, setup = result.state.ema_params, result.task.model
    z = setup.model.encode(params, jnp.asarray(digits.train["x"]))
    np.testing.assert_allclose(np.std(np.asarray(z, np.float64)), 1.0, rtol=1e-4)
    report = result.report
    assert 0.0 <= report.value <= 1.0 and 0.0 <= report.baseline_value <= 1.0
    for name in (
        "train_prompt_accuracy",
        "fid",
        "kid",
        "seconds_per_image",
        "pixel_cfg_seconds_per_image",
        "sampling_speedup",
    ):
        assert np.isfinite(report.extra[name]), name
    images = result.task.sample(params, jax.random.key(1), 4)
    assert images.shape == (4, 8, 8, 1)


def test_distractors_add_one_random_word_before_or_after_the_caption():
    """Every caption keeps its words in order with one extra word of 2-8 letters at one end;
    the lengths count it and its space; ``prob = 0`` changes nothing."""
    from genjax.recipes.latent_diffusion import add_distractors

    tokens, lengths = C.draw_captions(jax.random.key(0), jnp.arange(40) % 10)
    new, new_lengths = add_distractors(jax.random.key(1), tokens, lengths, 1.0)
    for old_text, text, n, m in zip(
        C.detokenize(tokens), C.detokenize(new), lengths, new_lengths, strict=True
    ):
        words, old = text.split(" "), old_text.split(" ")
        assert words[1:] == old or words[:-1] == old, (old_text, text)
        extra = words[0] if words[1:] == old else words[-1]
        assert 2 <= len(extra) <= 8 and extra.isalpha()
        assert int(m) == int(n) + len(extra) + 1
    same, same_lengths = add_distractors(jax.random.key(1), tokens, lengths, 0.0)
    np.testing.assert_array_equal(same, tokens)
    np.testing.assert_array_equal(same_lengths, lengths)
