r"""PyTorch eager replicas of the GAN suite's DCGAN train steps (hinge and WGAN-GP).

The players replicate :class:`genjax.gan.DCGANGenerator` and ``DCGANDiscriminator`` (without
normalisation, unconditional) layer for layer, with the same shapes and parameter counts
(:func:`dcgan_players`; :func:`load_genjax_weights` copies genjax's variables in, which is how
the tests check that both compute the same function):

* G: Linear to :math:`s_0 \times s_0 \times 2^{n-1} F` → BatchNorm → ReLU → :math:`(n-1)` x
  [ConvTranspose 4x4/2 → BatchNorm → ReLU] → ConvTranspose 4x4/2 → tanh
  (:func:`genjax.gan.dcgan_plan` gives :math:`s_0, n`). PyTorch's BatchNorm momentum 0.1 is
  flax's 0.9; eps 1e-5 in both.
* D: :math:`n` x [Conv 4x4/2 → LeakyReLU(0.2)] with :math:`F, 2F, \dots` channels → Linear.

One step of :func:`make_loop` is what :func:`genjax.gan.alternating_update` does inside the
recipe's ``Task.update``: ``n_critic`` critic updates, each on its own slice of ``m`` real
images and ``m`` fresh samples (generated without a graph), data and samples through D as one
batch of ``2m``, the hinge loss or the WGAN critic loss plus :math:`\lambda` times the gradient
penalty (double backprop: ``torch.autograd.grad(create_graph=True)``, the norm
:math:`\sqrt{\|g\|^2 + 10^{-12}}` as :func:`genjax.gan.gradient_penalty`); then one generator
update on ``m`` fresh samples with :math:`-\bar\ell(G(z))` (D's parameters frozen for it, so
no gradient of D's weights is formed, as in genjax); then the EMA of G's parameters and
buffers. Both players use Adam(lr, b1, b2), eps 1e-8, constant rate, no clipping, as the
recipe's ``digits_config`` and ``make_gan``.

What differs, none of which changes the arithmetic per step: PyTorch's default initialisation
(Kaiming-uniform) vs flax's LeCun normal; NCHW vs NHWC; the real batches are slices of a
tensor already in [-1, 1] (genjax gathers a shuffled batch and maps [0, 1] to [-1, 1] inside
the step); the critic's generator pass updates G's running batch statistics (genjax discards
them there); genjax's optimiser also carries G's batch statistics with zero gradients.

Checked: with genjax's weights copied in, G's samples, D's logits and the gradient penalty
agree to float rounding (``tests/test_benchmarks.py``); with each library's own
initialisation, the hinge loss of one 28x28 batch at the start is in the same range (2.07
genjax, 2.01 PyTorch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from genjax.gan import GP_EPS, dcgan_plan

__all__ = [
    "copy_conv",
    "copy_dense",
    "dcgan_players",
    "load_genjax_weights",
    "make_loop",
    "num_params",
]


def dcgan_players(
    image_shape: tuple[int, int, int], features: int, latent_dim: int
) -> tuple[nn.Module, nn.Module]:
    """``(G, D)``: the replicas of ``DCGANGenerator`` and ``DCGANDiscriminator`` (no norm)."""
    channels = image_shape[2]
    base, num_up = dcgan_plan(tuple(image_shape))
    width = features * 2 ** (num_up - 1)
    g: list[nn.Module] = [
        nn.Linear(latent_dim, base * base * width),
        nn.Unflatten(1, (width, base, base)),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    for i in range(num_up - 1):
        out = width // 2 ** (i + 1)
        g += [nn.ConvTranspose2d(width // 2**i, out, 4, 2, 1), nn.BatchNorm2d(out), nn.ReLU()]
    g += [nn.ConvTranspose2d(features, channels, 4, 2, 1), nn.Tanh()]
    d: list[nn.Module] = []
    for i in range(num_up):
        d += [nn.Conv2d(channels if i == 0 else features * 2 ** (i - 1), features * 2**i, 4, 2, 1)]
        d += [nn.LeakyReLU(0.2)]
    d += [nn.Flatten(), nn.Linear(base * base * width, 1), nn.Flatten(0)]
    return nn.Sequential(*g), nn.Sequential(*d)


def num_params(*modules: nn.Module) -> int:
    """Trainable parameters of ``modules`` (buffers such as running statistics excluded)."""
    return sum(p.numel() for m in modules for p in m.parameters())


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


def copy_dense(linear: nn.Linear, p, in_hwc=None, out_hwc=None) -> None:
    """Copy a flax ``Dense`` (``kernel [in, out]``) into ``linear``; ``in_hwc`` / ``out_hwc``
    give the ``(H, W, C)`` of an input flattened from / an output reshaped to NHWC, which
    PyTorch flattens as CHW."""
    k = np.asarray(p["kernel"])
    b = np.asarray(p["bias"])
    if in_hwc is not None:
        k = k.reshape(*in_hwc, -1).transpose(2, 0, 1, 3).reshape(k.shape)
    if out_hwc is not None:
        k = k.reshape(-1, *out_hwc).transpose(0, 3, 1, 2).reshape(k.shape)
        b = b.reshape(out_hwc).transpose(2, 0, 1).reshape(-1)
    with torch.no_grad():
        linear.weight.copy_(_t(k.T))
        linear.bias.copy_(_t(b))


def copy_conv(conv: nn.Module, p) -> None:
    """Copy a genjax ``Conv`` / ``ConvTranspose`` (``kernel [k, k, C, O]``) into ``conv``: a
    ``Conv2d`` weight is ``[O, C, k, k]``; a ``ConvTranspose2d`` weight ``[C, O, k, k]`` is the
    kernel flipped in both spatial axes (:func:`genjax.nn.layers.conv_transpose`)."""
    k = np.asarray(p["kernel"])
    if isinstance(conv, nn.ConvTranspose2d):
        w = k[::-1, ::-1].transpose(2, 3, 0, 1)
    else:
        w = k.transpose(3, 2, 0, 1)
    with torch.no_grad():
        conv.weight.copy_(_t(w))
        conv.bias.copy_(_t(p["bias"]))


def load_genjax_weights(g: nn.Module, d: nn.Module, g_vars, d_vars, image_shape) -> None:
    """Copy a genjax generator's and discriminator's variables into the replicas."""
    base, _ = dcgan_plan(tuple(image_shape))
    gp, dp = g_vars["params"], d_vars["params"]
    width = g[0].out_features // (base * base)
    copy_dense(g[0], gp["Dense_0"], out_hwc=(base, base, width))
    norms = [m for m in g if isinstance(m, nn.BatchNorm2d)]
    for i, bn in enumerate(norms):
        with torch.no_grad():
            bn.weight.copy_(_t(gp[f"BatchNorm_{i}"]["scale"]))
            bn.bias.copy_(_t(gp[f"BatchNorm_{i}"]["bias"]))
    for i, conv in enumerate(m for m in g if isinstance(m, nn.ConvTranspose2d)):
        copy_conv(conv, gp[f"ConvTranspose_{i}"])
    for i, conv in enumerate(m for m in d if isinstance(m, nn.Conv2d)):
        copy_conv(conv, dp[f"_Down_{i}"]["Conv_0"])
    last = next(m for m in d if isinstance(m, nn.Linear))
    copy_dense(last, dp["_Linear_0"]["Dense_0"], in_hwc=(base, base, width))


def make_loop(
    images: np.ndarray,
    *,
    loss: str,
    steps: int,
    batch: int,
    n_critic: int,
    features: int,
    latent_dim: int,
    lr: float,
    b1: float,
    b2: float,
    gp_weight: float = 10.0,
    ema_decay: float | None = 0.999,
) -> Callable:
    """``loop(_)``: ``steps`` GAN steps (``loss`` ``"hinge"`` or ``"wgan_gp"``) of ``n_critic``
    critic updates on ``batch`` real images each and one generator update, as the module
    docstring describes. ``images`` are ``[N, H, W, C]`` in [0, 1]; returns the last critic
    loss as a float."""
    if loss not in ("hinge", "wgan_gp"):
        raise ValueError(f"loss must be 'hinge' or 'wgan_gp', got {loss!r}")
    image_shape = tuple(images.shape[1:])
    g, d = dcgan_players(image_shape, features, latent_dim)
    g.train()
    opt_g = torch.optim.Adam(g.parameters(), lr, betas=(b1, b2))
    opt_d = torch.optim.Adam(d.parameters(), lr, betas=(b1, b2))
    ema = [t.detach().clone() for t in (*g.parameters(), *g.buffers()) if t.is_floating_point()]
    live = [t for t in (*g.parameters(), *g.buffers()) if t.is_floating_point()]
    real = torch.from_numpy(2.0 * images.transpose(0, 3, 1, 2) - 1.0).float().contiguous()
    slices = len(real) // batch  # real batch j is real[j * batch : (j + 1) * batch]
    m = batch

    def critic_loss(x, fake):
        logits = d(torch.cat([x, fake]))
        real_logits, fake_logits = logits[:m], logits[m:]
        if loss == "hinge":
            return torch.relu(1.0 - real_logits).mean() + torch.relu(1.0 + fake_logits).mean()
        value = fake_logits.mean() - real_logits.mean()
        eps = torch.rand(m, 1, 1, 1)
        mixed = (eps * x + (1.0 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(mixed).sum(), mixed, create_graph=True)
        norm = (grad.flatten(1).square().sum(1) + GP_EPS).sqrt()
        return value + gp_weight * (norm - 1.0).square().mean()

    def loop(_):
        k = 0
        for _ in range(steps):
            for _ in range(n_critic):
                x = real[(k % slices) * m : (k % slices + 1) * m]
                k += 1
                with torch.no_grad():
                    fake = g(torch.randn(m, latent_dim))
                d_loss = critic_loss(x, fake)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            d.requires_grad_(False)
            g_loss = -d(g(torch.randn(m, latent_dim))).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            d.requires_grad_(True)
            if ema_decay is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, live, 1.0 - ema_decay)
        return d_loss.detach().item()

    return loop
