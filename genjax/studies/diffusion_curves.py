r"""The quality curves of the digits diffusion recipes: FID, KID, precision, recall and class
accuracy over the guidance scale :math:`w`, and FID over the number of network evaluations for
each sampler (DDIM, DPM-Solver++(2M)), on one trained model.

Derivation: derivations/26-improved-diffusion.md
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from genjax import metrics
from genjax.data import Dataset
from genjax.train import Task

__all__ = ["plot_quality_curves", "quality_sweep"]


def quality_sweep(key: jax.Array, task: Task, params, net, dataset: Dataset, grid) -> list[dict]:
    """Sample quality over a grid of ``(guidance_scale, method, num_steps)``: for each point,
    as many samples as test images (labels cycling through the classes, drawn from ``key``, the
    same for every point), scored like the tour's FID table
    (:func:`genjax.metrics.image_quality` in the features of the classifier ``net``, against
    the test split, KID over 100 subsets of half of it), with ``net``'s accuracy on the
    requested class (``None`` at ``w = 0``) and the sampling time in seconds.

    Derivation: derivations/26-improved-diffusion.md
    """
    test = dataset.test["x"]
    n = len(test)
    labels = np.arange(n) % dataset.num_classes
    rows = []
    for w, method, steps in grid:
        tic = time.perf_counter()
        drawn = task.model.draw(params, key, n, labels, w, method=method, num_steps=steps)
        images = np.asarray(drawn)
        seconds = time.perf_counter() - tic
        quality = metrics.image_quality(
            jax.random.key(3), net, test, images, num_subsets=100, subset_size=max(2, n // 2)
        )
        accuracy = float(np.mean(net.predict(images) == labels)) if w != 0 else None
        rows.append(
            dict(w=w, method=method, steps=steps, **quality, accuracy=accuracy, seconds=seconds)
        )
    return rows


def plot_quality_curves(rows: list[dict], out_dir: Path, sweep: tuple | None = None) -> list[Path]:
    """Two figures from :func:`quality_sweep`'s rows: ``guidance_curve.png`` (FID, KID,
    precision, recall and class accuracy against w, for ``sweep = (model, method, steps)``, by
    default the most common in the rows) and
    ``nfe_curve.png`` (FID against the number of network evaluations, one line per model (an
    optional ``"model"`` key of the rows), sampler and guidance scale).

    Derivation: derivations/26-improved-diffusion.md
    """
    import matplotlib.pyplot as plt  # genjax.viz selected the Agg backend

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samplers = [(r.get("model", ""), r["method"], r["steps"]) for r in rows]
    main = sweep or max(sorted(set(samplers)), key=samplers.count)  # the w sweep's model, sampler
    by_w = sorted(
        (r for r in rows if (r.get("model", ""), r["method"], r["steps"]) == main),
        key=lambda r: r["w"],
    )
    w = [r["w"] for r in by_w]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(w, [r["fid"] for r in by_w], "o-", label="FID")
    axes[0].set_ylabel("FID (digits CNN features)")
    axes[1].errorbar(w, [r["kid"] for r in by_w], [r["kid_std"] for r in by_w], fmt="o-")
    axes[1].set_ylabel("KID")
    for name in ("precision", "recall"):
        axes[2].plot(w, [r[name] for r in by_w], "o-", label=name)
    axes[2].plot(
        [r["w"] for r in by_w if r["accuracy"] is not None],
        [r["accuracy"] for r in by_w if r["accuracy"] is not None],
        "s--",
        label="class accuracy",
    )
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("guidance scale w (0 unconditional, 1 conditional)")
    fig.suptitle(f"{main[0]}{' model, ' if main[0] else ''}sampler {main[1]}, {main[2]} steps")
    fig.tight_layout()
    paths = [out_dir / "guidance_curve.png", out_dir / "nfe_curve.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8.0, 3.6))
    for model, method, scale in sorted({(r.get("model", ""), r["method"], r["w"]) for r in rows}):
        line = sorted(
            (
                r
                for r in rows
                if (r.get("model", ""), r["method"], r["w"]) == (model, method, scale)
            ),
            key=lambda r: r["steps"],
        )
        if len(line) > 1:
            steps = [r["steps"] for r in line]
            label = f"{model}{': ' if model else ''}{method}, w = {scale:g}"
            ax.plot(steps, [r["fid"] for r in line], "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("NFE: network calls per sample (a guided call doubles the batch)")
    ax.set_ylabel("FID")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
