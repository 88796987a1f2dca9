r"""The mode-coverage study: five GAN games on the ring of 8 and the grid of 25 Gaussians.

Every game (minimax, non-saturating, WGAN with clipping, WGAN-GP, SN-GAN with the hinge loss)
trains the same players (:func:`genjax.recipes.gan.mixture_options`) with the same budget
(:func:`genjax.recipes.gan.mixture_config`) and seed; only the game changes. Each run is scored
by :func:`genjax.gan.mode_coverage` on 10,000 samples, beside the test samples of the mixture
(the ceiling). Run it as ``python -m genjax.studies.gan_modes --out runs/gan_study --figures
docs/figures``.

Derivation: derivations/08-gans.md (§9), derivations/09-wgan.md (§3)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from genjax import gan as G
from genjax import viz
from genjax.data import load_dataset
from genjax.recipes import gan as R
from genjax.train import fit

__all__ = [
    "STUDY_DATA",
    "STUDY_VARIANTS",
    "main",
    "mode_coverage_study",
    "study_figure",
    "study_table",
]

STUDY_VARIANTS = ("minimax", "nonsaturating", "wgan", "wgan_gp", "sngan")
STUDY_DATA = ("eight_gaussians", "gaussian_grid")
_LABELS = {
    "minimax": "minimax GAN",
    "nonsaturating": "non-saturating GAN",
    "wgan": "WGAN (clipping)",
    "wgan_gp": "WGAN-GP",
    "sngan": "SN-GAN (hinge)",
    "data": "test samples (ceiling)",
}
_DATA_NAMES = {"eight_gaussians": "ring of 8", "gaussian_grid": "grid of 25"}
_FIGURE_SAMPLES = 2000  # points kept per run for the figures


def mode_coverage_study(
    out_dir: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    variants: tuple[str, ...] = STUDY_VARIANTS,
    data: tuple[str, ...] = STUDY_DATA,
    figure_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train every game on each 2-D mixture with one budget and seed; score and plot.

    Every run uses :func:`genjax.recipes.gan.mixture_options` and the full budget of
    :func:`genjax.recipes.gan.mixture_config` (``steps`` overriding its length, both players'
    rates decaying over it) with ``seed``; only the game (:data:`genjax.recipes.gan.VARIANTS`)
    changes. Writes one PNG per data set, ``gan_<data>.png`` in ``figure_dir`` (default
    ``out_dir``): test samples, then each game's samples over the modes. Rows go to
    ``out_dir/mode_coverage.json``, merged with rows of other data sets already there (so the
    two data sets can run as separate processes), and the whole table to ``mode_coverage.md``.

    Args:
      out_dir: folder for the table, the JSON rows and the kept samples.
      steps: generator steps per run (default: the full budget).
      seed: the training seed; the samples scored use ``jax.random.key(seed + 1)``.
      variants: games among :data:`STUDY_VARIANTS`.
      data: mixtures among :data:`STUDY_DATA`.
      figure_dir: folder for the figures.

    Returns:
      This call's rows (``data``, ``variant``, ``modes``, ``num_modes``, ``high_quality``,
      ``seconds``, ``steps``, ``seed``).

    Derivation: derivations/08-gans.md
    """
    unknown = set(variants) - set(R.VARIANTS)
    if unknown:
        raise ValueError(f"variants must be among {sorted(R.VARIANTS)}, got {sorted(unknown)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure_dir = Path(figure_dir) if figure_dir is not None else out_dir
    config = dataclasses.replace(R.mixture_config(False), seed=seed)
    if steps is not None:
        config = dataclasses.replace(config, steps=steps, log_every=math.gcd(steps, 100))
    rows = []
    for name in data:
        dataset = load_dataset(name)
        means = R.mixture_means(name)
        real = dataset.test["x"][: R.EVAL_SAMPLES]
        cover = G.mode_coverage(real, means, R.MIXTURE_STD)
        rows.append(_row(name, "data", cover, len(means), 0.0, config))
        np.save(out_dir / f"samples_{name}_data.npy", real[:_FIGURE_SAMPLES])
        for variant in variants:
            tic = time.perf_counter()
            task = R.make_task(dataset, R.mixture_options(variant, config.steps))
            state = fit(task, dataset.train, config, progress=False)
            key = jax.random.key(seed + 1)
            samples = np.asarray(task.sample(state.ema_params, key, R.EVAL_SAMPLES))
            cover = G.mode_coverage(samples, means, R.MIXTURE_STD)
            seconds = time.perf_counter() - tic
            rows.append(_row(name, variant, cover, len(means), seconds, config))
            np.save(out_dir / f"samples_{name}_{variant}.npy", samples[:_FIGURE_SAMPLES])
            print(
                f"{name:16s} {variant:14s} modes {cover.modes:2d}/{len(means)}  high quality "
                f"{100 * cover.high_quality:5.1f} %  {seconds:.0f} s",
                flush=True,
            )
    path = out_dir / "mode_coverage.json"
    done = {(r["data"], r["variant"]) for r in rows}
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    merged = [r for r in old if (r["data"], r["variant"]) not in done] + rows
    path.write_text(json.dumps({"rows": merged}, indent=2))
    (out_dir / "mode_coverage.md").write_text(study_table(merged))
    for name in data:
        study_figure(out_dir, name, merged, figure_dir / f"gan_{name}.png")
    return rows


def _row(data, variant, cover: G.ModeCoverage, num_modes, seconds, config) -> dict[str, Any]:
    return {
        "data": data,
        "variant": variant,
        "modes": cover.modes,
        "num_modes": num_modes,
        "high_quality": cover.high_quality,
        "seconds": seconds,
        "steps": config.steps,
        "seed": config.seed,
    }


def study_figure(out_dir: Path, name: str, rows: list[dict[str, Any]], path: Path) -> Path:
    """One row of panels for data set ``name``: test samples, then each game's samples (as
    saved by :func:`mode_coverage_study` in ``out_dir``) over the modes, titled with the score.

    Derivation: derivations/08-gans.md
    """
    by = {r["variant"]: r for r in rows if r["data"] == name}
    panels = {}
    for variant in ("data", *R.VARIANTS):
        saved = Path(out_dir) / f"samples_{name}_{variant}.npy"
        if not saved.is_file():
            continue
        title = variant
        if variant in by:
            r = by[variant]
            title += f": {r['modes']}/{r['num_modes']}, {100 * r['high_quality']:.0f} %"
        panels[title] = np.load(saved)
    return viz.mode_panels(panels, R.mixture_means(name), 3 * R.MIXTURE_STD, path)


def study_table(rows: list[dict[str, Any]]) -> str:
    """The study's rows as one Markdown table: a row per game, two columns per data set.

    Derivation: derivations/08-gans.md
    """
    data = list(dict.fromkeys(r["data"] for r in rows))
    names = [_DATA_NAMES.get(d, d) for d in data]
    head = "| game |" + "".join(f" {n}: modes | {n}: high quality |" for n in names)
    lines = [head, "|---|" + "---:|---:|" * len(data)]
    by = {(r["data"], r["variant"]): r for r in rows}
    variants = ["data"] + [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "data"]
    for variant in variants:
        cells = []
        for d in data:
            r = by.get((d, variant))
            if r is None:
                cells += ["", ""]
            else:
                cells += [f"{r['modes']}/{r['num_modes']}", f"{100 * r['high_quality']:.1f} %"]
        lines.append(f"| {_LABELS.get(variant, variant)} | " + " | ".join(cells) + " |")
    budgets = {r["data"]: (r["steps"], r["seed"]) for r in rows if r["variant"] != "data"}
    budget = "; ".join(
        f"{_DATA_NAMES.get(d, d)}: {steps} generator steps, seed {seed}"
        for d, (steps, seed) in budgets.items()
    )
    lines += [
        "",
        f"{budget}; each generator step follows 5 critic steps of 256 points. 10,000 samples "
        "scored per run: a sample is high quality within 3 std of a mode, a mode is covered "
        "when at least 1 % of the samples are high-quality samples of it.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m genjax.studies.gan_modes``: run :func:`mode_coverage_study`, print its table.

    Derivation: derivations/08-gans.md
    """
    parser = argparse.ArgumentParser(
        prog="python -m genjax.studies.gan_modes",
        description="Mode coverage of five GAN games on the 8-Gaussian ring and 25-Gaussian grid",
    )
    parser.add_argument("--out", default="runs/gan_study", help="folder for the table and JSON")
    parser.add_argument("--figures", default=None, help="folder for gan_<data>.png (default OUT)")
    parser.add_argument("--steps", type=int, default=None, help="generator steps per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", default=list(STUDY_VARIANTS))
    parser.add_argument("--data", nargs="*", default=list(STUDY_DATA))
    args = parser.parse_args(argv)
    mode_coverage_study(
        args.out,
        steps=args.steps,
        seed=args.seed,
        variants=tuple(args.variants),
        data=tuple(args.data),
        figure_dir=args.figures,
    )
    print((Path(args.out) / "mode_coverage.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
