r"""The progressive and style-based GAN study on digits: DCGAN, ProGAN, StyleGAN and the
BigGAN-style conditional GAN, each at its recipe's full budget (about the training time of
``dcgan_digits``), scored by FID, KID, precision and recall in the digits CNN's features
against the test split; StyleGAN's style-mixing agreement and the truncation curve of the
conditional GAN (precision and recall over the threshold :math:`\psi`), with and without
orthogonal regularisation (:data:`ORTHO`), beside them.

Run it as ``python -m genjax.studies.style_gans --out runs/style_gans --figures docs/figures``;
it writes ``study.json`` and ``table.md`` in ``--out`` and the figures (``progan_stages.png``,
``stylegan_mixing.png``, ``stylegan_truncation.png``, ``biggan_truncation.png``,
``biggan_truncation_curve.png``) in ``--figures``.

Derivation: derivations/22-style-based-gans.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import matplotlib
import numpy as np

from genjax import gan as G
from genjax import metrics, recipes
from genjax.classifier import digits_cnn, fit_digits_classifier
from genjax.data import load_dataset
from genjax.recipes import stylegan as RS
from genjax.train import fit

matplotlib.use("Agg")

__all__ = ["MODELS", "ORTHO", "THRESHOLDS", "main", "quality", "study_table", "truncation_curve"]

MODELS = ("dcgan_digits", "progan_digits", "stylegan_digits", "biggan_digits")
THRESHOLDS = (2.0, 1.5, 1.0, 0.75, 0.5, 0.25)  #: truncation thresholds psi of the curve
ORTHO = (1e-4, 1e-2)  #: orthogonal-regularisation strengths beta of the extra truncation curves
TABLE_PSI = (1.0, 0.5)  #: the two thresholds of the conditional GAN in the table
KID_SUBSETS = 50


def quality(net, test: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """FID, KID, precision and recall of ``images`` against ``test`` in the digits CNN's
    features (:func:`genjax.metrics.image_quality`).

    Derivation: derivations/22-style-based-gans.md
    """
    subset = max(2, len(test) // 2)
    out = metrics.image_quality(
        jax.random.key(3), net, test, images, num_subsets=KID_SUBSETS, subset_size=subset
    )
    return {k: out[k] for k in ("fid", "kid", "kid_std", "precision", "recall")}


def _conditional_samples(gan, params, key, n: int, psi: float | None) -> np.ndarray:
    labels = np.arange(n) % gan.num_classes
    x = G.sample(key, gan.generator, params, n, labels=labels, truncation=psi)
    return np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0)


def truncation_curve(key, net, test, gan, params) -> list[dict[str, float]]:
    """Precision, recall, FID and KID of the conditional GAN at each threshold of
    :data:`THRESHOLDS` and without truncation (``psi = None``), the same key (the same draws
    before truncation) for every threshold.

    Derivation: derivations/22-style-based-gans.md
    """
    rows = []
    for psi in (None, *THRESHOLDS):
        images = _conditional_samples(gan, params, key, len(test), psi)
        rows.append({"psi": psi, **quality(net, test, images)})
    return rows


def _train(name: str, dataset, out: Path, stops: tuple[int, ...] = (), options=None):
    """Train recipe ``name`` at its full budget with ``options``; returns (task, state, seconds,
    states at ``stops``). With ``stops`` the run goes to a run folder and pauses at each stop."""
    recipe = recipes.get(name)
    task = recipe.make_task(dataset, options or {})
    config = recipe.config(False)
    snapshots, seconds = [], 0.0
    run_dir = out / name
    if stops:
        shutil.rmtree(run_dir, ignore_errors=True)
    for stop in (*stops, None):
        tic = time.perf_counter()
        state = fit(
            task,
            dataset.train,
            config,
            progress=False,
            run_dir=run_dir if stops else None,
            stop_after=stop,
        )
        jax.block_until_ready(state.params)
        seconds += time.perf_counter() - tic
        if stop is not None:
            snapshots.append(state)
    return task, state, seconds, snapshots


def _stage_figure(task, snapshots, key, path: Path) -> Path:
    from genjax import viz

    gan = task.model
    rows = [
        np.asarray(gan.sample(state.ema_params, key, 10, stage=k))
        for k, state in enumerate(snapshots)
    ]
    return viz.image_grid(np.concatenate(rows), path, ncols=10)


def _curve_figure(curves: dict[str, list[dict]], path: Path) -> Path:
    """Precision (solid) and recall (dashed) over the thresholds, one colour per curve."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, (name, curve) in enumerate(curves.items()):
        labels = ["none" if r["psi"] is None else f"{r['psi']:g}" for r in curve]
        color = f"C{i}"
        ax.plot(
            labels, [r["precision"] for r in curve], "o-", color=color, label=f"precision, {name}"
        )
        ax.plot(labels, [r["recall"] for r in curve], "s--", color=color, label=f"recall, {name}")
    ax.set_xlabel(r"truncation threshold $\psi$ on z")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("BigGAN-style cGAN on digits: truncation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def study_table(record: dict[str, Any]) -> str:
    """The Markdown table of :func:`main`'s record: one row per model, the floor first.

    Derivation: derivations/22-style-based-gans.md
    """
    lines = [
        "| model | steps | train s | FID | KID | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        steps = "" if row["steps"] is None else str(row["steps"])
        secs = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(
            f"| {row['label']} | {steps} | {secs} | {row['fid']:.3g} | "
            f"{row['kid']:.3g} ± {row['kid_std']:.2g} | {row['precision']:.3f} | "
            f"{row['recall']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study (see the module docstring) and return its record.

    Derivation: derivations/22-style-based-gans.md
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/style_gans"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("digits")
    test = dataset.test["x"]
    net = digits_cnn(dataset, run_dir=args.out / "digits_cnn")
    pick = np.random.default_rng(0).choice(len(dataset.train["x"]), len(test), replace=False)
    rows = [
        {"label": "training images (floor)", "steps": None, "seconds": None}
        | quality(net, test, dataset.train["x"][pick])
    ]
    record: dict[str, Any] = {"rows": rows, "n": len(test)}
    key = jax.random.key(0)
    for name in MODELS:
        snapshots = []
        if name == "progan_digits":  # a run paused at the stage ends, for the growth figure
            t = RS.PROGAN_STAGE_STEPS  # the stage length of make_progan
            snapshots = _train(name, dataset, args.out, (t, 2 * t))[3]
        task, state, seconds, _ = _train(name, dataset, args.out)  # timed without pauses
        steps = int(state.step)
        print(f"{name}: {steps} steps in {seconds:.0f} s", flush=True)
        params = state.ema_params
        if name == "biggan_digits":
            curve = truncation_curve(key, net, test, task.model, params)
            record["truncation_curve"] = curve
            curves = {"beta = 0": curve}
            for beta in ORTHO:  # the same recipe with orthogonal regularisation
                ortho = _train(name, dataset, args.out, options={"ortho": beta})
                curves[f"beta = {beta:g}"] = truncation_curve(
                    key, net, test, ortho[0].model, ortho[1].ema_params
                )
            record["truncation_curve_ortho"] = {k: v for k, v in curves.items() if k != "beta = 0"}
            _curve_figure(curves, args.figures / "biggan_truncation_curve.png")
            for row in curve:
                if row["psi"] is None or row["psi"] in TABLE_PSI:
                    label = "none" if row["psi"] is None else f"{row['psi']:g}"
                    rows.append(
                        {"label": f"BigGAN-style cGAN, psi = {label}", "steps": steps}
                        | {"seconds": seconds}
                        | {k: row[k] for k in ("fid", "kid", "kid_std", "precision", "recall")}
                    )
        else:
            images = np.asarray(task.sample(params, key, len(test)))
            label = {"dcgan_digits": "DCGAN", "progan_digits": "ProGAN"}.get(name, "StyleGAN")
            rows.append(
                {"label": label, "steps": steps, "seconds": seconds} | quality(net, test, images)
            )
        if name == "progan_digits":
            snapshots.append(state)
            _stage_figure(task, snapshots, key, args.figures / "progan_stages.png")
        if name == "stylegan_digits":
            classify = fit_digits_classifier(dataset)
            record["mixing"] = {
                str(c): RS.mixing_agreement(key, task.model, params, classify, 500, c)
                for c in (2, 4)
            }
        if name != "dcgan_digits":
            recipes.get(name).figures(task, params, dataset, key, args.figures)
        (args.out / "study.json").write_text(json.dumps(record, indent=2, default=float))
    table = study_table(record)
    (args.out / "table.md").write_text(table + "\n")
    print(table, flush=True)
    return record


if __name__ == "__main__":
    main()
