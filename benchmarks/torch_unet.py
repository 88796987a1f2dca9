"""PyTorch eager replica of the diffusion recipe's U-Net, its train step and its samplers.

The reference rows of ``benchmarks/bench_diffusion.py``; imported only where torch is wanted
(it lives in the ``bench`` extra). What is replicated, layer for layer, from
:class:`genjax.nn.unet.UNet` as :func:`genjax.nn.unet.unet_for` sizes it for the recipe
(``base_features`` 16, one residual block per level, 4 attention heads, 8 GroupNorm groups):

* the time embedding (the interleaved sin/cos table of
  :func:`genjax.nn.positional.sinusoidal_encoding`, then Linear → SiLU → Linear, width
  ``4 base``), plus a label embedding of ``num_classes + 1`` rows (the last is the null label);
* residual blocks GroupNorm → SiLU → 3x3 conv, + Linear(SiLU(emb)), → GroupNorm → SiLU → 3x3
  conv (zero-initialised), with a 1x1 skip when the width changes;
* the down path (stride-2 3x3 convs), the middle (block → self-attention over the ``H W``
  positions → block), the up path (concatenated skips, nearest upsampling then a 3x3 conv), and
  GroupNorm → SiLU → zero-initialised 3x3 conv out;
* the train step of :meth:`genjax.recipes.diffusion.Setup.loss` with the loop's update: label
  dropout to the null label, ``t`` uniform, v-prediction target, Min-SNR-γ weights, mean over
  pixels and batch; global-norm clipping, Adam with the config's betas and (warm-up + cosine)
  rates, and an EMA of the parameters;
* the DDPM (small variance) and DDIM (η = 0) steps of :mod:`genjax.diffusion` for a v-predicting
  network with :math:`\\hat x_0` clipped to [-1, 1], written out with the schedule's
  coefficients.

What differs: PyTorch's default initialisation (Kaiming-uniform convs and linears) instead of
flax's LeCun-normal (the zero-initialised layers are zero in both); tensors are NCHW, PyTorch's
native layout; PyTorch's own random numbers. None of it changes the arithmetic per step.
:func:`load_flax_params` copies a genjax parameter tree in, for checking that both networks
compute the same function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

GN_EPS = 1e-6  # flax.linen.GroupNorm's epsilon (PyTorch's default is 1e-5)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=GN_EPS)


def _sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """``[length, dim]``: sin, cos, sin, ... of ``p * 10000^(-2i/dim)`` (interleaved)."""
    freqs = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # [dim/2]
    angles = np.arange(length)[:, None] * freqs[None, :]  # [length, dim/2]
    pairs = np.stack([np.sin(angles), np.cos(angles)], axis=-1)  # [length, dim/2, 2]
    return torch.from_numpy(pairs.reshape(length, dim).astype(np.float32))


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, + embedding projection, → GroupNorm → SiLU → conv, residual."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nn.Module):
    """GroupNorm, multi-head self-attention over the H W positions, residual."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)  # output laid out as [3, heads, head_dim]
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # [b, HW, C]
        qkv = self.qkv(h).view(b, height * width, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [b, heads, HW, head_dim]
        out = F.scaled_dot_product_attention(q, k, v)  # [b, heads, HW, head_dim]
        out = self.out(out.transpose(1, 2).reshape(b, height * width, c))  # [b, HW, C]
        return x + out.transpose(1, 2).reshape(b, c, height, width)


class UNet(nn.Module):
    """The replica of :class:`genjax.nn.unet.UNet` (time and label conditioned, attention in
    the middle); ``forward(x [b, C, H, W], t [b], y [b]) -> [b, out, H, W]``."""

    def __init__(
        self,
        in_channels: int,
        num_steps: int,
        num_classes: int | None,
        base: int = 16,
        mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        heads: int = 4,
        groups: int = 8,
        out_channels: int | None = None,
    ):
        super().__init__()
        emb = 4 * base
        self.register_buffer("table", _sinusoidal_table(num_steps, emb), persistent=False)
        self.time = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = None if num_classes is None else nn.Embedding(num_classes + 1, emb)
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()  # ResBlocks and stride-2 convs, in order
        skips, ch, last = [base], base, len(mults) - 1
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, base * mult, emb, groups))
                ch = base * mult
                skips.append(ch)
            if level != last:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, emb, groups)
        self.attn = AttentionBlock(ch, heads, groups)
        self.mid2 = ResBlock(ch, ch, emb, groups)
        self.up = nn.ModuleList()  # ResBlocks (each after a concatenation) and upsampling convs
        for level, mult in reversed(list(enumerate(mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), base * mult, emb, groups))
                ch = base * mult
            if level != 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = _norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, out_channels or in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = self.time(self.table[t])  # [b, E]
        if self.label is not None:
            emb = emb + self.label(y)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def replica_of(unet, image_shape: Sequence[int]) -> UNet:
    """The :class:`UNet` replica of a genjax :class:`genjax.nn.unet.UNet` for images
    ``(H, W, C)``."""
    if unet.dropout or not unet.attention or unet.cross_attention or unet.pooled_context:
        raise ValueError("the replica covers the diffusion U-Net: no dropout, self-attention only")
    return UNet(
        image_shape[-1],
        unet.num_steps,
        unet.num_classes,
        unet.base_features,
        tuple(unet.channel_mults),
        unet.num_res_blocks,
        unet.num_heads,
        unet.num_groups,
        unet.out_features,
    )


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_parameter_count(module: nn.Module, params) -> nn.Module:
    """``module``, after checking that it has as many parameters as the genjax tree
    ``params``; an ``AssertionError`` names both counts otherwise."""
    import jax

    ours, theirs = sum(x.size for x in jax.tree.leaves(params)), num_params(module)
    if ours != theirs:
        raise AssertionError(f"the PyTorch replica has {theirs} parameters, genjax's model {ours}")
    return module


# ----------------------------------------------------------------------------- weight copy


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


def _dense(linear: nn.Module, p) -> None:
    out = np.asarray(p["bias"]).size
    kernel = np.asarray(p["kernel"]).reshape(-1, out)  # [in, out] (DenseGeneral: axes flattened)
    weight = kernel.T
    if isinstance(linear, nn.Conv2d):  # a 1x1 conv
        weight = weight[:, :, None, None]
    linear.weight.data.copy_(_t(weight))
    linear.bias.data.copy_(_t(np.asarray(p["bias"]).reshape(-1)))


def _conv(conv: nn.Conv2d, p) -> None:
    conv.weight.data.copy_(_t(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1))))  # OIHW
    conv.bias.data.copy_(_t(p["bias"]))


def _group_norm(norm: nn.GroupNorm, p) -> None:
    norm.weight.data.copy_(_t(p["scale"]))
    norm.bias.data.copy_(_t(p["bias"]))


def _res_block(block: ResBlock, p) -> None:
    _group_norm(block.norm1, p["GroupNorm_0"])
    _conv(block.conv1, p["Conv_0"])
    _dense(block.emb, p["Dense_0"])
    _group_norm(block.norm2, p["GroupNorm_1"])
    _conv(block.conv2, p["Conv_1"])
    if block.skip is not None:
        _dense(block.skip, p["Dense_1"])


def load_flax_params(model: UNet, params) -> UNet:
    """Copy a genjax U-Net's ``params`` (``{"params": ...}``) into ``model``, in the order the
    flax modules were created (``Conv_i``, ``ResBlock_i`` numbered by call order)."""
    p = params["params"]
    time = p["TimeEmbedding_0"]
    _dense(model.time[0], time["Dense_0"])
    _dense(model.time[2], time["Dense_1"])
    if model.label is not None:
        model.label.weight.data.copy_(_t(p["Embed_0"]["embedding"]))
    convs = iter(f"Conv_{i}" for i in range(len(p)))
    blocks = iter(f"ResBlock_{i}" for i in range(len(p)))

    def path(layers) -> None:  # ResBlocks and convolutions in flax's order of creation
        for layer in layers:
            if isinstance(layer, ResBlock):
                _res_block(layer, p[next(blocks)])
            else:
                _conv(layer, p[next(convs)])

    _conv(model.conv_in, p[next(convs)])
    path(model.down)
    _res_block(model.mid1, p[next(blocks)])
    attn = p["AttentionBlock_0"]
    _group_norm(model.attn.norm, attn["GroupNorm_0"])
    _dense(model.attn.qkv, attn["DenseGeneral_0"])
    _dense(model.attn.out, attn["DenseGeneral_1"])
    _res_block(model.mid2, p[next(blocks)])
    path(model.up)
    _group_norm(model.norm_out, p["GroupNorm_0"])
    _conv(model.conv_out, p[next(convs)])
    return model


# ----------------------------------------------------------------------------- train step


def nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy images as a contiguous NCHW float32 tensor."""
    return torch.from_numpy(np.array(np.transpose(x, (0, 3, 1, 2)), np.float32))  # a copy


class Schedule:
    """The per-step coefficients a step needs, from a :class:`genjax.diffusion.Schedule`."""

    def __init__(self, schedule):
        get = lambda name: np.asarray(getattr(schedule, name), np.float64)
        self.num_steps = int(schedule.num_steps)
        self.alpha_bars = get("alpha_bars")
        self.sqrt_ab = torch.from_numpy(get("sqrt_alpha_bars").astype(np.float32))
        self.sqrt_1mab = torch.from_numpy(get("sqrt_one_minus_alpha_bars").astype(np.float32))
        self.snr = get("snr")
        self.coef_x0 = get("posterior_mean_coef_x0")
        self.coef_xt = get("posterior_mean_coef_xt")
        self.std = np.exp(0.5 * get("posterior_log_variance_clipped"))

    def min_snr_v_weights(self, gamma: float) -> torch.Tensor:
        """``[T]`` Min-SNR-γ weights of the v loss, ``min(SNR, γ) / (SNR + 1)``."""
        return torch.from_numpy((np.minimum(self.snr, gamma) / (self.snr + 1.0)).astype(np.float32))


@dataclasses.dataclass(frozen=True)
class Optimiser:
    """The loop's optimiser as PyTorch runs it: the rate of each step, Adam's betas, the
    global-norm clip and the EMA decay (``None``: off)."""

    lrs: tuple[float, ...]
    betas: tuple[float, float]
    clip_norm: float | None
    ema_decay: float | None

    @classmethod
    def of(cls, config, steps: int) -> Optimiser:
        """The optimiser of a :class:`genjax.train.TrainConfig` (Adam, its rate schedule from
        step 0) for ``steps`` updates."""
        from genjax.train import learning_rate_schedule

        if config.custom_optimizer or config.optimizer != "adam":
            raise ValueError(f"the replica runs Adam, got optimizer {config.optimizer!r}")
        schedule = learning_rate_schedule(config)
        lrs = tuple(float(schedule(i)) for i in range(steps))
        return cls(lrs, (config.b1, config.b2), config.clip_norm, config.ema_decay)


def batch_order(num_examples: int, steps: int, batch: int) -> torch.Tensor:
    """``[steps, batch]`` example indices: a fixed shuffle, the data cycled as needed."""
    order = np.random.default_rng(0).permutation(np.resize(np.arange(num_examples), steps * batch))
    return torch.from_numpy(order).view(steps, batch)


def eager_updates(
    model: nn.Module, step_loss: Callable[[int], torch.Tensor], steps: int, opt: Optimiser
) -> Callable:
    """``loop(_)``: ``steps`` updates of ``step_loss(i)`` the way an eager PyTorch loop runs
    them (gradients set to ``None``, clipping, Adam with the step's rate, a ``foreach`` EMA;
    no host synchronisation inside); returns the last loss."""
    params = list(model.parameters())
    adam = torch.optim.Adam(params, lr=opt.lrs[0], betas=opt.betas, eps=1e-8, foreach=True)
    ema = [p.detach().clone() for p in params]

    def loop(_):
        for i in range(steps):
            loss = step_loss(i)
            adam.zero_grad(set_to_none=True)
            loss.backward()
            if opt.clip_norm is not None:
                nn.utils.clip_grad_norm_(params, opt.clip_norm, foreach=True)
            adam.param_groups[0]["lr"] = opt.lrs[i]
            adam.step()
            if opt.ema_decay is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, params, 1.0 - opt.ema_decay)
        return loss.detach()

    return loop


def train_loop(
    model: UNet,
    schedule: Schedule,
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    steps: int,
    batch: int,
    opt: Optimiser,
    label_drop: float,
    min_snr_gamma: float,
) -> Callable:
    """``loop(_)``: ``steps`` updates (:func:`eager_updates`) of the recipe's v-prediction loss
    on ``images`` (NHWC in [0, 1]) and ``labels``."""
    x_all = nchw(2.0 * images - 1.0)  # [N, C, H, W] in [-1, 1]
    y_all = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    order = batch_order(len(images), steps, batch)
    weights = schedule.min_snr_v_weights(min_snr_gamma)
    null = None if model.label is None else model.label.num_embeddings - 1

    def step_loss(i):
        idx = order[i]
        x0 = x_all[idx]
        y = None
        if y_all is not None:
            y = torch.where(torch.rand(batch) < label_drop, null, y_all[idx])
        t = torch.randint(0, schedule.num_steps, (batch,))
        noise = torch.randn_like(x0)
        a = schedule.sqrt_ab[t].view(-1, 1, 1, 1)
        s = schedule.sqrt_1mab[t].view(-1, 1, 1, 1)
        pred = model(a * x0 + s * noise, t, y)
        target = a * noise - s * x0  # v
        return (weights[t] * (pred - target).square().mean(dim=(1, 2, 3))).mean()

    return eager_updates(model, step_loss, steps, opt)


# ----------------------------------------------------------------------------- samplers


def _v_to_x0_eps(x, out, a: float, s: float):
    """``(x0_hat clipped to [-1, 1], eps_hat recomputed from it)`` of a v prediction."""
    x0 = (a * x - s * out).clamp(-1.0, 1.0)
    return x0, (x - a * x0) / s


def ddpm_loop(model: UNet, schedule: Schedule, shape, labels: torch.Tensor | None) -> Callable:
    """``loop(_)``: ancestral sampling over all T steps (small variance, v-prediction, clipped
    :math:`\\hat x_0`), one network call per step under ``torch.no_grad()``."""
    steps = range(schedule.num_steps - 1, -1, -1)
    coefs = [
        (
            torch.full((shape[0],), t, dtype=torch.long),
            math.sqrt(schedule.alpha_bars[t]),
            math.sqrt(1.0 - schedule.alpha_bars[t]),
            float(schedule.coef_x0[t]),
            float(schedule.coef_xt[t]),
            float(schedule.std[t]) if t > 0 else 0.0,
        )
        for t in steps
    ]

    @torch.no_grad()
    def loop(_):
        x = torch.randn(shape)
        for t, a, s, c0, ct, std in coefs:
            x0 = (a * x - s * model(x, t, labels)).clamp(-1.0, 1.0)
            x = c0 * x0 + ct * x
            if std > 0.0:
                x = x + std * torch.randn_like(x)
        return x

    return loop


def ddim_loop(
    model: UNet, schedule: Schedule, shape, labels: torch.Tensor | None, timesteps: np.ndarray
) -> Callable:
    """``loop(_)``: deterministic DDIM (η = 0) over ``timesteps`` (increasing, from
    :func:`genjax.diffusion.ddim_timesteps`), v-prediction with clipped :math:`\\hat x_0`."""
    ts = [int(t) for t in timesteps[::-1]]
    prevs = [*ts[1:], -1]
    coefs = []
    for t, tp in zip(ts, prevs, strict=True):
        ab_prev = 1.0 if tp < 0 else float(schedule.alpha_bars[tp])
        coefs.append(
            (
                torch.full((shape[0],), t, dtype=torch.long),
                math.sqrt(schedule.alpha_bars[t]),
                math.sqrt(1.0 - schedule.alpha_bars[t]),
                math.sqrt(ab_prev),
                math.sqrt(1.0 - ab_prev),
            )
        )

    @torch.no_grad()
    def loop(_):
        x = torch.randn(shape)
        for t, a, s, a_prev, s_prev in coefs:
            x0, eps = _v_to_x0_eps(x, model(x, t, labels), a, s)
            x = a_prev * x0 + s_prev * eps
        return x

    return loop
