"""PyTorch eager replica of the image RealNVP of :mod:`genjax.flows` and its train step.

The reference rows of ``benchmarks/bench_flows.py``; imported only where torch is wanted. What
is replicated from :class:`genjax.flows.RealNVP` with the recipe's
:data:`genjax.recipes.flows.IMAGE_DEFAULTS` (2 couplings per stage, 32 conditioner channels,
1 residual block, 2 scales, logit pre-processing with α = 0.05):

* the logit layer, then per scale: checkerboard couplings, a squeeze (space-to-depth with
  genjax's channel order), channel couplings, half the channels factored out and the other
  half handed to the next scale, and the unsqueeze; the last scale has one more checkerboard
  coupling and no squeeze; mask parities alternate within a stage;
* every coupling block: ActNorm (per-channel shift and log-scale), then the affine coupling
  :math:`y = b x + (1 - b)(x e^{s} + t)` with :math:`s = a \\tanh(h)` and a per-channel bound
  :math:`a`; the conditioner is the ResNet 3x3 conv → (ReLU → conv → ReLU → conv, residual)
  → ReLU → conv (zero-initialised) to shift and raw log-scale;
* the loss: uniform dequantisation to the data's levels, the standard normal base, bits per
  dimension; the update of :func:`benchmarks.torch_unet.eager_updates` (clip, Adam, EMA).

What differs: PyTorch's default initialisation of the convolutions (the zero-initialised
output convolutions are zero in both), ActNorm starts as the identity instead of genjax's
data-dependent initialisation, the couplings are a Python loop over modules where genjax scans
over stacked parameters, NCHW layout, PyTorch's own random numbers. None of it changes the
arithmetic per step. :func:`load_flax_params` copies a genjax parameter tree in, for checking
that both compute the same log-density.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.torch_unet import Optimiser, batch_order, eager_updates, nchw

LOG_2PI = math.log(2.0 * math.pi)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``[b, C, H, W] -> [b, 4 C, H/2, W/2]``, channel ``(2 i + j) C + c`` holding
    ``x[c, 2 h + i, 2 w + j]`` (:func:`genjax.flows.squeeze`'s order)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)  # [b, 2, 2, C, h/2, w/2]
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`."""
    b, c4, h, w = x.shape
    x = x.view(b, 2, 2, c4 // 4, h, w).permute(0, 3, 4, 1, 5, 2)  # [b, C, h, 2, w, 2]
    return x.reshape(b, c4 // 4, 2 * h, 2 * w)


def _mask(kind: str, c: int, h: int, w: int, parity: int) -> torch.Tensor:
    """``[C, H, W]`` 0/1 mask: 1 on the kept half (:func:`genjax.flows.make_mask`)."""
    if kind == "checkerboard":
        grid = np.add.outer(np.arange(h), np.arange(w))  # [H, W]
        m = np.broadcast_to(((grid + parity) % 2 == 0)[None], (c, h, w))
    else:
        m = np.broadcast_to(((np.arange(c) < c // 2) != bool(parity))[:, None, None], (c, h, w))
    return torch.from_numpy(np.ascontiguousarray(m, np.float32))


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResNetConditioner(nn.Module):
    """conv → ``depth`` x (ReLU → conv → ReLU → conv, residual) → ReLU → zero-initialised conv."""

    def __init__(self, c: int, features: int, depth: int):
        super().__init__()
        self.conv_in = _conv(c, features)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(), _conv(features, features), nn.ReLU(), _conv(features, features)
            )
            for _ in range(depth)
        )
        self.conv_out = _conv(features, 2 * c)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = h + block(h)
        return self.conv_out(F.relu(h))


class CouplingBlock(nn.Module):
    """ActNorm, then a masked affine coupling; ``forward(x) -> (y, log_det [b])``."""

    def __init__(self, kind: str, shape: tuple[int, int, int], parity: int, features, depth):
        super().__init__()
        c = shape[0]
        self.shift = nn.Parameter(torch.zeros(c))  # ActNorm
        self.log_scale = nn.Parameter(torch.zeros(c))
        self.bound = nn.Parameter(torch.ones(c))  # the tanh bound of the log-scale
        self.conditioner = ResNetConditioner(c, features, depth)
        self.register_buffer("mask", _mask(kind, *shape, parity), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = x.shape[2] * x.shape[3]
        x = x * self.log_scale.exp()[:, None, None] + self.shift[:, None, None]
        log_det = positions * self.log_scale.sum()
        b = self.mask
        shift, raw = self.conditioner(b * x).chunk(2, dim=1)
        s = (1.0 - b) * (self.bound[:, None, None] * torch.tanh(raw))
        y = x * s.exp() + (1.0 - b) * shift
        return y, log_det + s.sum(dim=(1, 2, 3))


class Stage(nn.ModuleList):
    """``count`` coupling blocks of one mask kind, parities alternating."""

    def __init__(self, kind: str, count: int, shape, features: int, depth: int):
        super().__init__(CouplingBlock(kind, shape, k % 2, features, depth) for k in range(count))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = 0.0
        for block in self:
            x, ld = block(x)
            log_det = log_det + ld
        return x, log_det


class Scale(nn.Module):
    """One scale of the multi-scale flow (and, inside it, the coarser ones)."""

    def __init__(self, shape, scales_left: int, couplings: int, features: int, depth: int):
        super().__init__()
        c, h, w = shape
        if scales_left == 1:
            self.first = Stage("checkerboard", couplings + 1, shape, features, depth)
            self.channel = self.inner = None
            return
        self.first = Stage("checkerboard", couplings, shape, features, depth)
        self.channel = Stage("channel", couplings, (4 * c, h // 2, w // 2), features, depth)
        self.inner = Scale((2 * c, h // 2, w // 2), scales_left - 1, couplings, features, depth)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, log_det = self.first(x)
        if self.inner is None:
            return x, log_det
        x, ld_channel = self.channel(squeeze(x))
        kept, rest = x.chunk(2, dim=1)
        rest, ld_inner = self.inner(rest)
        return unsqueeze(torch.cat([kept, rest], dim=1)), log_det + ld_channel + ld_inner


class RealNVP(nn.Module):
    """The replica of :class:`genjax.flows.RealNVP` for images; ``log_prob(x [b, C, H, W])``
    in nats, ``x`` in the unit cube."""

    def __init__(self, model):
        super().__init__()
        h, w, c = model.event_shape
        if not model.actnorm or model.logit_alpha is None:
            raise ValueError("the replica covers the image RealNVP with ActNorm and a logit layer")
        self.alpha = float(model.logit_alpha)
        self.flow = Scale(
            (c, h, w), model.num_scales, model.num_couplings, model.features, model.depth
        )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        p = self.alpha + (1.0 - 2.0 * self.alpha) * x
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        logit_det = (math.log(1.0 - 2.0 * self.alpha) - log_p - log_1mp).sum(dim=(1, 2, 3))
        z, log_det = self.flow(log_p - log_1mp)
        base = (-0.5 * z.square() - 0.5 * LOG_2PI).sum(dim=(1, 2, 3))
        return base + log_det + logit_det


def train_loop(
    model: RealNVP, images: np.ndarray, levels: int, *, steps: int, batch: int, opt: Optimiser
) -> Callable:
    """``loop(_)``: ``steps`` updates (:func:`benchmarks.torch_unet.eager_updates`) of the
    recipe's loss, bits per dimension of dequantised ``images`` (NHWC on the grid of
    ``levels`` values)."""
    grid = nchw(np.round(images * (levels - 1)))  # [N, C, H, W] level indices
    order = batch_order(len(images), steps, batch)
    dims = math.prod(images.shape[1:])

    def step_loss(i):
        k = grid[order[i]]
        y = (k + torch.rand_like(k)) / levels  # dequantised
        bits = -model.log_prob(y) / (dims * math.log(2.0)) + math.log2(levels)
        return bits.mean()

    return eager_updates(model, step_loss, steps, opt)


# ----------------------------------------------------------------------------- weight copy


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


def _load_conv(conv: nn.Conv2d, p) -> None:
    kernel = np.asarray(p["kernel"])  # [3, 3, C, O] (or [9 C, O], its im2col matrix)
    out = kernel.shape[-1]
    cin = kernel.size // (9 * out)
    conv.weight.data.copy_(_t(kernel.reshape(3, 3, cin, out).transpose(3, 2, 0, 1)))  # OIHW
    conv.bias.data.copy_(_t(p["bias"]))


def _load_stage(stage: Stage, stacked) -> None:
    p = stacked["params"]  # every leaf [blocks, ...]
    convs = [c for _, c in sorted(p["conditioner"].items(), key=lambda i: int(i[0].split("_")[1]))]
    for k, block in enumerate(stage):
        block.shift.data.copy_(_t(p["ActNorm_0"]["shift"][k]))
        block.log_scale.data.copy_(_t(p["ActNorm_0"]["log_scale"][k]))
        block.bound.data.copy_(_t(p["AffineCoupling_0"]["scale_bound"][k]))
        cond = block.conditioner
        layers = [cond.conv_in, *(r[i] for r in cond.blocks for i in (1, 3)), cond.conv_out]
        for layer, conv in zip(layers, convs, strict=True):
            _load_conv(layer, {name: v[k] for name, v in conv.items()})


def _stacks(tree) -> list:
    """The stacked parameter trees of every :class:`genjax.flows.CouplingStack` in ``tree``
    (``{"layers": {"params": ...}}``), in the order the flow applies them (``layers_i`` of a
    :class:`genjax.flows.Chain` by ``i``, a :class:`genjax.flows.FactorOut`'s ``inner``)."""
    if not isinstance(tree, dict):
        return []
    if isinstance(tree.get("layers"), dict) and "params" in tree["layers"]:
        return [tree["layers"]]
    out = []
    for name in sorted(tree, key=lambda n: int("0" + "".join(filter(str.isdigit, n)))):
        out += _stacks(tree[name])
    return out


def load_flax_params(model: RealNVP, params) -> RealNVP:
    """Copy a genjax RealNVP's ``params`` into ``model`` (stages in application order)."""
    stages, scale = [], model.flow
    while scale is not None:
        stages += [scale.first] + ([scale.channel] if scale.channel is not None else [])
        scale = scale.inner
    stacks = _stacks(params["params"])
    if len(stacks) != len(stages):
        raise ValueError(f"{len(stacks)} coupling stacks in params, {len(stages)} in the replica")
    for stage, stacked in zip(stages, stacks, strict=True):
        _load_stage(stage, stacked)
    return model
