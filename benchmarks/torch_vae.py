r"""PyTorch eager replica of the conv VAE recipes' train step (``convvae_digits``,
``convvae_mnist``).

The network replicates :class:`genjax.vae.ConvVAE` with a Bernoulli decoder layer for layer,
with the same shapes and parameter count (:func:`conv_vae`; :func:`load_genjax_weights`
copies genjax's parameters in, which is how the tests check that both compute the same
function):

* encoder: ``len(features)`` x [Conv 4x4/2 → ReLU] → Linear(``hidden``) → ReLU → Linear to
  :math:`(\mu, \log\sigma^2)`;
* decoder: Linear(``hidden``) → ReLU → Linear to the :math:`H/2^n \times W/2^n \times
  F_{n-1}` grid → ReLU → the mirrored ConvTranspose 4x4/2 layers with ReLU between, the last
  to the image's channels (one logit per pixel).

One step is the recipe's (:class:`genjax.recipes.vae.Setup` ``loss`` under
:func:`genjax.train.standard_update`): dynamic binarisation of the batch
(:math:`x \sim \mathrm{Bernoulli}(p)`), one reparameterised sample, the negative ELBO with the
analytic KL (sum over pixels and latent dimensions, mean over the batch), backward, the
global gradient-norm clip, Adam with the loop's learning-rate schedule (linear warm-up, then
cosine decay to ``final_lr_fraction``), and the EMA of the parameters, all as the
:class:`genjax.train.TrainConfig` given to :func:`make_loop` says.

What differs, none of which changes the arithmetic per step: PyTorch's default initialisation
(Kaiming-uniform) vs flax's LeCun normal; NCHW vs NHWC; the batches are consecutive slices of
a tensor already on the device (genjax gathers a shuffled batch inside the step); the
schedule's rate is set by ``LambdaLR`` between steps (genjax evaluates it inside the step).

Checked: with genjax's parameters copied in, the encoder's and decoder's outputs and the
negative ELBO of one batch for the same noise agree to float rounding, and the schedules
agree (``tests/test_benchmarks.py``; 28x28: 545.64 nats in both).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from benchmarks.torch_gan import copy_conv, copy_dense
from genjax.train import TrainConfig

__all__ = ["conv_vae", "load_genjax_weights", "make_loop", "negative_elbo"]


def conv_vae(
    image_shape: tuple[int, int, int], latent_dim: int, features: Sequence[int], hidden: int
) -> tuple[nn.Module, nn.Module]:
    """``(encoder, decoder)``: the replica of ``ConvVAE`` with one logit per pixel."""
    height, width, channels = image_shape
    factor = 2 ** len(features)
    grid = (features[-1], height // factor, width // factor)  # C, h, w
    enc: list[nn.Module] = []
    for c_in, c_out in zip((channels, *features[:-1]), features, strict=True):
        enc += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.ReLU()]
    enc += [nn.Flatten(), nn.Linear(math.prod(grid), hidden), nn.ReLU()]
    enc += [nn.Linear(hidden, 2 * latent_dim)]
    dec: list[nn.Module] = [nn.Linear(latent_dim, hidden), nn.ReLU()]
    dec += [nn.Linear(hidden, math.prod(grid)), nn.ReLU(), nn.Unflatten(1, grid)]
    outs = [*reversed(features[:-1]), channels]
    for i, (c_in, c_out) in enumerate(zip(reversed(features), outs, strict=True)):
        dec += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)]
        if i < len(outs) - 1:
            dec += [nn.ReLU()]
    return nn.Sequential(*enc), nn.Sequential(*dec)


def load_genjax_weights(enc: nn.Module, dec: nn.Module, params, image_shape, features) -> None:
    """Copy a genjax ``ConvVAE``'s parameters (``params["params"]``) into the replica."""
    p = params["params"]
    factor = 2 ** len(features)
    grid = (image_shape[0] // factor, image_shape[1] // factor, features[-1])  # h, w, C
    for i, conv in enumerate(m for m in enc if isinstance(m, nn.Conv2d)):
        copy_conv(conv, p[f"conv_{i}"])
    enc_hidden, enc_out = (m for m in enc if isinstance(m, nn.Linear))
    copy_dense(enc_hidden, p["enc_hidden"], in_hwc=grid)
    copy_dense(enc_out, p["enc_out"])
    dec_hidden, dec_grid = (m for m in dec if isinstance(m, nn.Linear))
    copy_dense(dec_hidden, p["dec_hidden"])
    copy_dense(dec_grid, p["dec_grid"], out_hwc=grid)
    for i, conv in enumerate(m for m in dec if isinstance(m, nn.ConvTranspose2d)):
        copy_conv(conv, p[f"deconv_{i}"])


def negative_elbo(enc, dec, x: torch.Tensor, latent_dim: int, noise=None) -> torch.Tensor:
    r"""The batch mean of :math:`-\mathcal L` for binary ``x [B, C, H, W]``, one sample
    :math:`z = \mu + \sigma \odot \varepsilon` (``noise`` :math:`\varepsilon [B, d]`, drawn
    when ``None``)."""
    h = enc(x)
    mean, log_var = h[:, :latent_dim], h[:, latent_dim:]
    noise = torch.randn_like(mean) if noise is None else noise
    z = mean + torch.exp(0.5 * log_var) * noise
    logits = dec(z)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(1)
    return (bce.flatten(1).sum(1) + kl).mean()


def _rate_factor(config: TrainConfig) -> Callable[[int], float]:
    """The loop's learning-rate schedule over ``config.lr``: linear warm-up, then constant or
    cosine decay to ``final_lr_fraction`` (:func:`genjax.train.learning_rate_schedule`)."""
    warmup = min(config.warmup_steps, config.steps - 1)
    decay = max(config.steps - warmup, 1)

    def factor(t: int) -> float:
        if t < warmup:
            return t / warmup
        if config.schedule == "constant":
            return 1.0
        cos = 0.5 * (1.0 + math.cos(math.pi * min(t - warmup, decay) / decay))
        return (1.0 - config.final_lr_fraction) * cos + config.final_lr_fraction

    return factor


def make_loop(
    images: np.ndarray,
    config: TrainConfig,
    *,
    latent_dim: int,
    features: Sequence[int],
    hidden: int,
) -> Callable:
    """``loop(_)``: ``config.log_every`` train steps of batch ``config.batch_size`` on
    ``images [N, H, W, C]`` in [0, 1], as the module docstring describes; returns the last
    loss as a float."""
    if config.optimizer != "adam":
        raise ValueError(f"config.optimizer must be 'adam', got {config.optimizer!r}")
    enc, dec = conv_vae(tuple(images.shape[1:]), latent_dim, features, hidden)
    params = [*enc.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, config.lr, betas=(config.b1, config.b2))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, _rate_factor(config))
    ema = [p.detach().clone() for p in params]
    data = torch.from_numpy(images.transpose(0, 3, 1, 2)).float().contiguous()
    batch = config.batch_size
    slices = len(data) // batch

    def loop(_):
        for i in range(config.log_every):
            j = i % slices
            x = torch.bernoulli(data[j * batch : (j + 1) * batch])  # dynamic binarisation
            loss = negative_elbo(enc, dec, x, latent_dim)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_norm is not None:
                nn.utils.clip_grad_norm_(params, config.clip_norm)
            opt.step()
            schedule.step()
            if config.ema_decay is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, params, 1.0 - config.ema_decay)
        return loss.detach().item()

    return loop
