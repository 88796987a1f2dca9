"""Plots written as PNG files: image grids, loss curves, 2-D scatters and densities.

Every function takes arrays and a path, writes one PNG and returns the path; nothing is shown on
screen (matplotlib's Agg backend), so they run on a server and in tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def tile_images(images, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile ``[N, H, W, C]`` images into one ``[rows*(H+pad)-pad, cols*(W+pad)-pad, C]`` array."""
    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.ones((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = images[i]
    return grid


def image_grid(images, path: str | Path, ncols: int | None = None, title: str | None = None):
    """Write ``[N, H, W, C]`` images in [0, 1] as one grid PNG at ``path``."""
    grid = tile_images(images, ncols)
    fig, ax = plt.subplots(figsize=(4, 4 * grid.shape[0] / grid.shape[1] + 0.3))
    ax.imshow(
        grid[..., 0] if grid.shape[-1] == 1 else grid,
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def loss_curves(metrics_jsonl: str | Path, path: str | Path, keys: Sequence[str] = ("loss",)):
    """Plot ``keys`` of a run's ``metrics.jsonl`` against the step; writes a PNG at ``path``."""
    records = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line]
    fig, ax = plt.subplots(figsize=(5, 3))
    for k in keys:
        steps = [r["step"] for r in records if k in r]
        ax.plot(steps, [r[k] for r in records if k in r], label=k)
    ax.set_xlabel("step")
    ax.legend()
    return _save(fig, path)


def scatter_2d(points: dict[str, np.ndarray], path: str | Path, lim: float | None = None):
    """Scatter several ``[N, 2]`` point sets (name -> points) on one square plot."""
    fig, ax = plt.subplots(figsize=(4, 4))
    for name, p in points.items():
        p = np.asarray(p)
        ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5, label=name)
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(markerscale=4, fontsize=8)
    return _save(fig, path)


def density_2d(
    log_prob: Callable[[np.ndarray], np.ndarray],
    path: str | Path,
    lim: float = 3.0,
    resolution: int = 200,
    title: str | None = None,
):
    """Heat map of ``exp(log_prob)`` on ``[-lim, lim]^2``; ``log_prob`` maps ``[M, 2] -> [M]``."""
    ticks = np.linspace(-lim, lim, resolution, dtype=np.float32)
    gx, gy = np.meshgrid(ticks, ticks, indexing="xy")
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)  # [res*res, 2]
    density = np.exp(np.asarray(log_prob(grid))).reshape(resolution, resolution)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(density, origin="lower", extent=(-lim, lim, -lim, lim), cmap="magma")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
