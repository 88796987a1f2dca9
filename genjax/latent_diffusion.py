r"""Text-conditioned latent diffusion: a KL-regularised autoencoder, diffusion on its scaled
latents with a cross-attention U-Net, classifier-free guidance against the empty prompt.

The pipeline of Rombach et al. on 8x8 digits:

1. :class:`KLAutoencoder`: an encoder :math:`E` to a Gaussian posterior
   :math:`q(z \mid x) = N(\mu(x), \operatorname{diag}\sigma^2(x))` over a ``[H/2, W/2, C]``
   latent and a decoder :math:`D`, trained by :func:`autoencoder_loss`, the negative
   β-weighted ELBO of :func:`genjax.vae.elbo` with a small KL weight;
2. :func:`latent_scale`: the factor :math:`s = 1/\operatorname{std}(z)` over the training
   latents, so that the diffusion sees unit-variance data, as the schedule assumes;
3. :class:`LatentDenoiser`: the :class:`genjax.nn.unet.UNet` with cross-attention
   (:class:`genjax.nn.unet.CrossAttentionBlock`) to the token vectors of a
   :class:`genjax.nn.transformer.TextEncoder`, trained with :func:`genjax.diffusion.ddpm_loss`
   on :math:`s\,z`, the prompt replaced by the empty caption with probability ``drop_prob``
   (:func:`drop_prompts`);
4. :func:`sample`: the same :func:`genjax.diffusion.sample` (DDPM or DDIM) as pixel diffusion,
   run on the latent shape with the guided model of :func:`latent_model_fn`, then
   :math:`x = D(z / s)`.

References:
  Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion Models*, 2022,
  https://arxiv.org/abs/2112.10752

  Ho & Salimans, *Classifier-Free Diffusion Guidance*, 2022, https://arxiv.org/abs/2207.12598

Derivation: derivations/24-latent-diffusion.md
"""

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from genjax import _checks, vae
from genjax import captions as C
from genjax import diffusion as D
from genjax.likelihoods import gaussian_log_likelihood
from genjax.nn.layers import Conv
from genjax.nn.transformer import TextEncoder
from genjax.nn.unet import UNet

__all__ = [
    "DECODER_LOG_VAR",
    "KL_WEIGHT",
    "KLAutoencoder",
    "LatentDenoiser",
    "LatentDiffusion",
    "autoencoder_loss",
    "drop_prompts",
    "latent_model_fn",
    "latent_scale",
    "null_prompt",
    "sample",
]

KL_WEIGHT = 1e-3  #: β of :func:`autoencoder_loss` (derivations/24-latent-diffusion.md)
DECODER_LOG_VAR = 0.0  #: the decoder's fixed log-variance: the loss is ½‖x − D(z)‖² + β KL


# ----------------------------------------------------------------------------- autoencoder


class KLAutoencoder(nn.Module):
    r"""A convolutional autoencoder from images ``[H, W, C]`` to a Gaussian posterior over a
    ``[H/2, W/2, latent_channels]`` latent, and back.

    .. math:: (\mu, \log\sigma^2) = E(x),\qquad \hat x = D(z)

    Encoder: 3x3 conv, a stride-2 3x3 conv, a 3x3 conv to :math:`2C_z` channels
    (:math:`\mu`, :math:`\log\sigma^2`), SiLU between. Decoder: 3x3 conv, nearest upsampling,
    two 3x3 convs, SiLU between; the output is the decoder's mean, unbounded (clip it to
    the pixel range for display). Convolutions are :class:`genjax.nn.layers.Conv`.

    Attributes:
      latent_channels: :math:`C_z`.
      features: hidden channels.

    Methods: ``encode(x [B, H, W, C]) -> (mean, log_var)``, each ``[B, H/2, W/2, C_z]``;
    ``decode(z [B, H/2, W/2, C_z]) -> [B, H, W, out_channels]``; ``__call__(x)`` decodes the
    posterior mean.

    References:
      Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion Models*, 2022
      (section 3.1, the KL-regularised autoencoder), https://arxiv.org/abs/2112.10752

    Derivation: derivations/24-latent-diffusion.md
    """

    latent_channels: int = 2
    features: int = 32
    out_channels: int = 1

    def setup(self):
        self.enc = [Conv(self.features), Conv(self.features, stride=2)]
        self.enc_out = Conv(2 * self.latent_channels)
        self.dec_in = Conv(self.features)
        self.dec = [Conv(self.features)]
        self.dec_out = Conv(self.out_channels)

    def encode(self, x: Float[Array, "B H W C"]):
        if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"x must be NHWC [B, H, W, C] with even H and W, got {x.shape}")
        h = x
        for conv in self.enc:
            h = nn.silu(conv(h))  # [B, H or H/2, W or W/2, F]
        mean, log_var = jnp.split(self.enc_out(h), 2, axis=-1)  # each [B, H/2, W/2, C_z]
        return mean, log_var

    def decode(self, z: Float[Array, "B h w C_z"]):
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(
                f"z must be [B, h, w, latent_channels={self.latent_channels}], got {z.shape}"
            )
        h = nn.silu(self.dec_in(z))  # [B, h, w, F]
        b, height, width, f = h.shape
        h = jax.image.resize(h, (b, 2 * height, 2 * width, f), "nearest")  # [B, 2h, 2w, F]
        for conv in self.dec:
            h = nn.silu(conv(h))
        return self.dec_out(h)  # [B, 2h, 2w, out_channels]

    def __call__(self, x):
        return self.decode(self.encode(x)[0])


def autoencoder_loss(
    key: jax.Array | None,
    encode: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    decode: Callable[[jax.Array], jax.Array],
    x: Float[Array, "B H W C"],
    *,
    kl_weight: float = KL_WEIGHT,
    decoder_log_var: float = DECODER_LOG_VAR,
    noise: Float[Array, "B d"] | None = None,
):
    r"""The autoencoder's objective: the negative β-ELBO, per example.

    .. math:: \ell(x) = -\log N\big(x;\ D(z),\ e^{\lambda} I\big)
       + \beta\,\mathrm{KL}\big(q(z\mid x)\,\|\,N(0, I)\big),\qquad
       z = \mu(x) + \sigma(x)\odot\varepsilon

    with :math:`\beta` = ``kl_weight`` and :math:`\lambda` = ``decoder_log_var``; for
    :math:`\lambda = 0` the first term is :math:`\tfrac12\|x - D(z)\|^2` plus a constant. It is
    :func:`genjax.vae.elbo` (reparameterisation, closed-form Gaussian KL) on the flattened
    latent: the spatial latent is one :math:`d = h w C_z` dimensional Gaussian.

    Args:
      key: PRNG key for :math:`\varepsilon` (``None`` when ``noise`` is given).
      encode: ``x [B, H, W, C] -> (mean, log_var)``, each ``[B, h, w, C_z]``.
      decode: ``z [B, h, w, C_z] -> [B, H, W, C]``, the decoder mean.
      x: ``[B, H, W, C]`` images.
      kl_weight: :math:`\beta \ge 0`.
      decoder_log_var: :math:`\lambda`, the fixed log-variance of :math:`p(x \mid z)`.
      noise: optional ``[B, h w C_z]`` standard-normal draw.

    Returns:
      ``(loss [B], reconstruction [B], kl [B])`` in nats: :math:`\ell`,
      :math:`\log p(x \mid z)` and the KL.

    References:
      Kingma & Welling, *Auto-Encoding Variational Bayes*, 2013,
      https://arxiv.org/abs/1312.6114

      Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion Models*, 2022,
      https://arxiv.org/abs/2112.10752

    Derivation: derivations/24-latent-diffusion.md
    """
    if not kl_weight >= 0.0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}")
    latent = jax.eval_shape(lambda v: encode(v)[0], x).shape  # [B, h, w, C_z]

    def flat_encode(v):
        mean, log_var = encode(v)
        return mean.reshape(v.shape[0], -1), log_var.reshape(v.shape[0], -1)  # [B, d] each

    def log_likelihood(z, v):
        mean = decode(z.reshape(latent))  # [B, H, W, C]
        return gaussian_log_likelihood(v, mean, decoder_log_var, event_ndims=3)  # [B]

    terms = vae.elbo(key, flat_encode, log_likelihood, x, beta=kl_weight, noise=noise)
    return -terms.total, terms.reconstruction, terms.kl


def latent_scale(latents: Float[Array, "n ..."]) -> Float[Array, ""]:
    r"""The latent scale factor: one over the standard deviation of the training latents.

    .. math:: s = \Big(\frac{1}{N d}\sum_{n, i} (z_{n i} - \bar z)^2\Big)^{-1/2}

    over every element :math:`z_{ni}` of ``latents`` (one scalar for all channels, as Rombach
    et al.), so that :math:`s\,z` has unit variance: the variance that the forward process
    :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon` keeps at 1 for
    every :math:`t` and that its end :math:`N(0, I)` assumes.

    Args:
      latents: ``[N, ...]`` training latents (posterior means).

    Returns:
      Scalar :math:`s > 0`.

    References:
      Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion Models*, 2022
      (appendix G, the rescaling), https://arxiv.org/abs/2112.10752

    Derivation: derivations/24-latent-diffusion.md
    """
    latents = jnp.asarray(latents)
    if latents.ndim < 2 or latents.size < 2:
        raise ValueError(f"latents must be [N, ...] with at least 2 values, got {latents.shape}")
    return 1.0 / jnp.std(latents)


# ----------------------------------------------------------------------------- prompts


def null_prompt(max_length: int = C.MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    r"""The empty caption :math:`\varnothing` of classifier-free guidance: ``BOS EOS``.

    Returns:
      ``(tokens [1, max_length], lengths [1])`` int32 (``tokenize([""])``).

    Derivation: derivations/24-latent-diffusion.md
    """
    return C.tokenize([""], max_length)


def drop_prompts(
    key: jax.Array | None,
    tokens: Int[Array, "B L"],
    lengths: Int[Array, " B"],
    drop_prob: float,
    noise: Float[Array, " B"] | None = None,
):
    r"""Prompt dropout for classifier-free guidance: each prompt becomes the empty caption
    with probability ``drop_prob``.

    .. math:: \tilde c_i = \varnothing\ \text{if}\ u_i < p\ \text{else}\ c_i,
       \qquad u_i \sim U[0, 1)

    :func:`genjax.diffusion.drop_labels` applied to the row indices, with index :math:`B` the
    appended :func:`null_prompt`.

    Args:
      key: PRNG key (``None`` when ``noise`` is given).
      tokens: ``[B, L]`` int prompt tokens.
      lengths: ``[B]`` their lengths.
      drop_prob: :math:`p \in [0, 1]`.
      noise: optional ``[B]`` uniforms :math:`u`.

    Returns:
      ``(tokens [B, L], lengths [B])``.

    References:
      Ho & Salimans, *Classifier-Free Diffusion Guidance*, 2022, Algorithm 1,
      https://arxiv.org/abs/2207.12598

    Derivation: derivations/24-latent-diffusion.md
    """
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(
            f"tokens must be [B, L] and lengths [B], got {tokens.shape} and {lengths.shape}"
        )
    null_tokens, null_lengths = null_prompt(tokens.shape[1])
    batch = tokens.shape[0]
    idx = D.drop_labels(key, jnp.arange(batch), drop_prob, batch, noise)  # [B], B = dropped
    all_tokens = jnp.concatenate([tokens, jnp.asarray(null_tokens, tokens.dtype)])  # [B + 1, L]
    all_lengths = jnp.concatenate([lengths, jnp.asarray(null_lengths, lengths.dtype)])
    return all_tokens[idx], all_lengths[idx]


# ----------------------------------------------------------------------------- denoiser


class LatentDenoiser(nn.Module):
    r"""The text-conditioned denoiser :math:`\epsilon_\theta(z_t, t, c)`: a
    :class:`~genjax.nn.transformer.TextEncoder` turns the prompt :math:`c` into token vectors
    :math:`\tau(c)` ``[B, L, text_features]``, and a :class:`~genjax.nn.unet.UNet` with
    ``cross_attention`` attends to them in its middle; with ``pooled_context`` the EOS token's
    vector is also added to the U-Net's time embedding.

    .. math:: \hat\epsilon = \mathrm{UNet}\big(z_t, t;\ \tau(c)\big)

    The text encoder is trained jointly with the U-Net (derivations/24-latent-diffusion.md
    says why).

    Attributes:
      num_steps: :math:`T` of the schedule.
      base_features, channel_mults, num_heads: the U-Net's.
      text_features, text_heads, text_layers: the text encoder's.
      vocab_size, max_length: the tokenizer's (:mod:`genjax.captions`).
      pooled_context: the U-Net's option of the same name.

    Methods: ``__call__(z_t [B, h, w, C_z], t [B], tokens [B, L], lengths [B]) -> [B, h, w,
    C_z]``; ``encode_text(tokens, lengths) -> [B, L, text_features]``; ``denoise(z_t, t,
    context, lengths)`` (the U-Net alone, for a context computed once per sampling).

    References:
      Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion Models*, 2022
      (section 3.3), https://arxiv.org/abs/2112.10752

    Derivation: derivations/24-latent-diffusion.md
    """

    num_steps: int
    base_features: int = 32
    channel_mults: Sequence[int] = (1,)
    num_heads: int = 4
    text_features: int = 32
    text_heads: int = 2
    text_layers: int = 2
    vocab_size: int = C.VOCAB_SIZE
    max_length: int = C.MAX_LENGTH
    pooled_context: bool = True

    def setup(self):
        self.text = TextEncoder(
            self.vocab_size, self.text_features, self.text_heads, self.text_layers, self.max_length
        )
        self.unet = UNet(
            num_steps=self.num_steps,
            base_features=self.base_features,
            channel_mults=tuple(self.channel_mults),
            num_heads=self.num_heads,
            cross_attention=True,
            pooled_context=self.pooled_context,
        )

    def encode_text(self, tokens, lengths):
        return self.text(tokens, lengths)  # [B, L, text_features]

    def denoise(self, zt, t, context, lengths):
        return self.unet(zt, t, context=context, context_lengths=lengths)  # [B, h, w, C_z]

    def __call__(self, zt, t, tokens, lengths):
        return self.denoise(zt, t, self.encode_text(tokens, lengths), lengths)


@dataclasses.dataclass(frozen=True, eq=False)
class LatentDiffusion:
    r"""A latent diffusion model: what :func:`sample` needs besides the parameters.

    Parameters are a dict ``{"autoencoder": ..., "denoiser": ..., "scale": s}`` of the
    :class:`KLAutoencoder`, the :class:`LatentDenoiser` and the scalar :func:`latent_scale`.

    Attributes:
      autoencoder: the :class:`KLAutoencoder`.
      denoiser: the :class:`LatentDenoiser`.
      schedule: the noise schedule the denoiser was trained with.
      image_shape: ``(H, W, C)``.
      clip: :math:`\hat z_0` of the scaled latents is clipped to ``[-clip, clip]`` while
        sampling (the scaled training latents lie well inside; derivations/24-latent-diffusion.md).
      parameterization: what the denoiser predicts (``"eps"``, ``"x0"`` or ``"v"``,
        :data:`genjax.diffusion.PARAMETERIZATIONS`).

    Derivation: derivations/24-latent-diffusion.md
    """

    autoencoder: KLAutoencoder
    denoiser: LatentDenoiser
    schedule: D.Schedule
    image_shape: tuple[int, int, int]
    clip: float = 5.0
    parameterization: str = "eps"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(H/2, W/2, C_z)``."""
        height, width, _ = self.image_shape
        return (height // 2, width // 2, self.autoencoder.latent_channels)

    def encode(self, params, x):
        """Scaled posterior means :math:`s\\,\\mu(x)` ``[B, h, w, C_z]`` of images ``x``."""
        mean, _ = self.autoencoder.apply(params["autoencoder"], x, method="encode")
        return params["scale"] * mean

    def decode(self, params, z):
        """Images :math:`D(z / s)` ``[B, H, W, C]`` of scaled latents, clipped to [0, 1]."""
        x = self.autoencoder.apply(params["autoencoder"], z / params["scale"], method="decode")
        return jnp.clip(x, 0.0, 1.0)


def latent_model_fn(
    model: LatentDiffusion,
    params,
    tokens: Int[Array, "n L"],
    lengths: Int[Array, " n"],
    guidance_scale: float,
):
    r"""The sampler-ready ``(z_t, t) -> prediction`` (ε, x0 or v, the model's
    ``parameterization``) of prompts ``tokens``, guided against the empty prompt.

    .. math:: \tilde\epsilon = \epsilon_\theta(z_t, t, \varnothing)
       + w\,\big(\epsilon_\theta(z_t, t, c) - \epsilon_\theta(z_t, t, \varnothing)\big)

    with :math:`w` = ``guidance_scale``: :func:`genjax.diffusion.guided_model_fn` over a table
    of the ``n`` prompts' token vectors and the :func:`null_prompt`'s (row ``n``), the text
    encoded once, not at every step.

    Args:
      model: the :class:`LatentDiffusion`.
      params: its parameters.
      tokens: ``[n, L]`` prompt tokens.
      lengths: ``[n]`` their lengths.
      guidance_scale: :math:`w` (0: unconditional, 1: conditional, > 1: guided).

    Returns:
      ``model_fn(z_t [n, h, w, C_z], t [n]) -> [n, h, w, C_z]``.

    Derivation: derivations/24-latent-diffusion.md
    """
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(
            f"tokens must be [n, L] and lengths [n], got {tokens.shape} and {lengths.shape}"
        )
    n = tokens.shape[0]
    null_tokens, null_lengths = null_prompt(tokens.shape[1])
    all_tokens = jnp.concatenate([tokens, jnp.asarray(null_tokens, tokens.dtype)])  # [n + 1, L]
    all_lengths = jnp.concatenate([lengths, jnp.asarray(null_lengths, lengths.dtype)])  # [n + 1]
    den, p = model.denoiser, params["denoiser"]
    context = den.apply(p, all_tokens, all_lengths, method="encode_text")  # [n + 1, L, D]

    def conditional(zt, t, y):  # y [b] rows of the table, n = the empty prompt
        return den.apply(p, zt, t, context[y], all_lengths[y], method="denoise")

    return D.guided_model_fn(conditional, jnp.arange(n), n, guidance_scale)


def sample(
    key: jax.Array,
    model: LatentDiffusion,
    params,
    n: int,
    *,
    tokens: Int[Array, "n L"] | None = None,
    lengths: Int[Array, " n"] | None = None,
    guidance_scale: float = 2.0,
    num_steps: int | None = 50,
    eta: float = 0.0,
    method: str | None = None,
):
    r"""Draw ``n`` images for ``n`` prompts: the reverse chain of :func:`genjax.diffusion.sample`
    in the latent space, guided against the empty prompt, then decoded.

    .. math:: z_0 \sim p_\theta^{w}(z_0 \mid c)\ \text{(DDIM or DDPM on } [n, h, w, C_z]),
       \qquad x = D(z_0 / s)

    Args:
      key: PRNG key.
      model: the :class:`LatentDiffusion`.
      params: its parameters.
      n: number of images.
      tokens: ``[n, L]`` prompt tokens (:func:`genjax.captions.tokenize`); ``None``: the empty
        prompt for all (unconditional samples).
      lengths: ``[n]`` their lengths (given with ``tokens``).
      guidance_scale: :math:`w` of :func:`latent_model_fn`.
      num_steps: sampler steps, or ``None`` for DDPM over all :math:`T`.
      eta: DDIM's :math:`\eta`.
      method: the sampler of :func:`genjax.diffusion.sample` (``None``: DDIM for
        ``num_steps < T``, else DDPM; or ``"dpm_solver_2m"``).

    Returns:
      ``[n, H, W, C]`` images in [0, 1].

    Derivation: derivations/24-latent-diffusion.md
    """
    _checks.positive_int("n", n)
    if (tokens is None) != (lengths is None):
        raise ValueError("tokens and lengths must be given together")
    if tokens is None:
        null_tokens, null_lengths = null_prompt()
        tokens, lengths = np.repeat(null_tokens, n, 0), np.repeat(null_lengths, n, 0)
    if jnp.shape(tokens)[0] != n:
        raise ValueError(f"tokens must have n = {n} rows, got shape {jnp.shape(tokens)}")
    model_fn = latent_model_fn(model, params, tokens, lengths, guidance_scale)
    z = D.sample(
        key,
        model.schedule,
        model_fn,
        (n, *model.latent_shape),
        num_steps=num_steps,
        method=method,
        eta=eta,
        clip_x0=(-model.clip, model.clip),
        parameterization=model.parameterization,
    )
    return model.decode(params, z)
