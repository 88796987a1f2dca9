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

__all__ = [
    "density_2d",
    "heat_overlays",
    "image_grid",
    "labelled_scatter",
    "line_plot",
    "loss_curves",
    "mode_panels",
    "scatter_2d",
    "tile_images",
    "twin_curves",
]


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


def line_plot(
    x,
    curves: dict[str, np.ndarray],
    path: str | Path,
    *,
    levels: dict[str, float] | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
):
    """Curves ``name -> y [N]`` against ``x [N]``, with dashed horizontal ``levels``
    (``name -> value``, e.g. baselines); writes a PNG at ``path``."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, y in curves.items():
        ax.plot(np.asarray(x), np.asarray(y), label=name)
    for i, (name, value) in enumerate((levels or {}).items(), start=len(curves)):
        ax.axhline(value, color=f"C{i}", ls=("--", ":", "-.")[i % 3], label=name)
    ax.set_xlabel(xlabel or "")
    ax.set_ylabel(ylabel or "")
    if title:
        ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def labelled_scatter(points, labels: Sequence[str], path: str | Path, title: str | None = None):
    """``[N, 2]`` points, each annotated with its label; writes a PNG at ``path``."""
    points = np.asarray(points)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(points[:, 0], points[:, 1], s=4)
    for (x, y), label in zip(points, labels, strict=True):
        ax.annotate(label, (x, y), fontsize=7)
    if title:
        ax.set_title(title)
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


def twin_curves(
    left: tuple[str, np.ndarray],
    right: tuple[str, np.ndarray],
    path: str | Path,
    *,
    log_left: bool = False,
    xlabel: str = "step",
    title: str | None = None,
):
    """Two ``(label, values [T])`` curves against their index, ``right`` on a second y-axis."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    (ax.semilogy if log_left else ax.plot)(left[1], color="C0", label=left[0])
    twin = ax.twinx()
    twin.plot(right[1], color="C1", label=right[0])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(left[0], color="C0")
    twin.set_ylabel(right[0], color="C1")
    if title:
        ax.set_title(title)
    fig.legend(loc="center right", bbox_to_anchor=(0.85, 0.5))
    return _save(fig, path)


def heat_overlays(images, maps: dict[str, np.ndarray], path, titles: Sequence[str] | None = None):
    """Rows of ``[N, H, W]`` maps in [0, 1] (name -> maps) as heat maps over the grey
    ``images [N, H, W, C]``, below a row of the images; a column per image, ``titles`` above."""
    images = np.asarray(images, np.float32)
    grey = images.mean(axis=-1)  # [N, H, W]
    rows = ["input", *maps]
    fig, axes = plt.subplots(
        len(rows), len(images), figsize=(0.8 * len(images), 0.85 * len(rows)), squeeze=False
    )
    for r, name in enumerate(rows):
        for c in range(len(images)):
            ax = axes[r, c]
            ax.imshow(grey[c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if name != "input":
                ax.imshow(maps[name][c], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name.replace("_", " "), fontsize=7)
            if r == 0 and titles:
                ax.set_title(titles[c], fontsize=7)
    return _save(fig, path)


def mode_panels(panels: dict[str, np.ndarray], means, radius: float, path: str | Path) -> Path:
    """A row of square panels, one per ``title -> points [n, 2]``: the points (blue) over the
    modes ``means [K, 2]`` of a mixture, each drawn as a disc of ``radius`` (red)."""
    means = np.asarray(means)
    lim = float(np.abs(means).max()) + 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(1.9 * len(panels), 2.2), squeeze=False)
    for ax, (title, points) in zip(axes[0], panels.items(), strict=True):
        points = np.asarray(points)
        for mu in means:
            ax.add_patch(plt.Circle(mu, radius, color="tab:red", alpha=0.6, lw=0))
        ax.scatter(points[:, 0], points[:, 1], s=0.5, alpha=0.3, color="tab:blue", linewidths=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
