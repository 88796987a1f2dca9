"""The tour: train, evaluate and draw every selected recipe, then write ``report.md``.

Each recipe's result (``<out>/<recipe>/result.json``) and image samples
(``<out>/<recipe>/samples.npy``, or one ``samples@<label>.npy`` per labelled set, e.g. per
guidance scale, each a row of the FID table) are kept, and the report covers every recipe with
a result in ``out`` from a tour of the same budget (quick, tour or full:
:data:`genjax.recipes.BUDGETS`): a tour of a few recipes updates their rows in an earlier tour's
report, and the FID table ranks them all with the same kept classifier. The image families on
``digits`` are ranked by FID/KID in the digits CNN's features, beside a floor (training images)
and a baseline (a Gaussian mixture's samples).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from genjax import classifier, metrics, recipes, train
from genjax.data import Dataset, load_dataset

__all__ = [
    "CNN_STEPS",
    "GMM_COMPONENTS",
    "KID_SUBSETS",
    "family_markdown",
    "gmm_samples",
    "image_samples",
    "keep_result",
    "kept_results",
    "load_classifier",
    "quality_markdown",
    "report_markdown",
    "run",
    "sample_quality",
    "sample_sets",
    "select",
]

CNN_STEPS = {"quick": 300, "tour": 1500, "full": 1500}  #: digits CNN budget, by tour budget
KID_SUBSETS = 100  #: KID subsets in the tour's sample-quality table
GMM_COMPONENTS = 10  #: components of the tour's baseline sampler (one per digit)


def select(budget: str, only: list[str] | None = None) -> dict[str, recipes.Recipe]:
    """The recipes a tour of ``budget`` runs: those named in ``only`` (an unknown name is a
    ``ValueError``), else those with a budget of that name: one per family for ``"quick"``
    (``quick_tour``), those with ``tour_steps`` for ``"tour"``, every touring recipe for
    ``"full"``."""
    selected = recipes.all_recipes()
    if only:
        unknown = set(only) - set(selected)
        if unknown:
            raise ValueError(f"unknown recipes {sorted(unknown)}; known: {', '.join(selected)}")
        outside = [k for k in only if budget == "tour" and selected[k].tour_steps is None]
        if outside:
            raise ValueError(f"{', '.join(outside)}: no tour budget; use --quick or --full")
        return {k: v for k, v in selected.items() if k in only}
    wanted = {
        "quick": lambda r: r.tour and r.quick_tour,
        "tour": lambda r: r.tour_steps is not None,
        "full": lambda r: r.tour,
    }[budget]
    return {k: v for k, v in selected.items() if wanted(v)}


def run(
    out: str | Path, budget: str = "tour", only: list[str] | None = None, report_only: bool = False
):
    """Train, evaluate and draw the recipes of ``budget`` (:func:`select`; none with
    ``report_only``), keep their results in ``out`` and write ``out/report.md``; returns its path.

    Training and evaluation use the EMA parameters (:func:`genjax.recipes.run`).
    """
    recipes.check_budget(budget)
    selected = {} if report_only else select(budget, only)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, recipe in selected.items():
        tic = time.perf_counter()
        key = jax.random.key(1)
        dataset, task, state, report = recipes.run(key, recipe, budget)
        figs = (
            recipe.figures(task, state.ema_params, dataset, key, out / name)
            if recipe.figures
            else []
        )
        seconds = time.perf_counter() - tic
        print(
            f"{name:28s} {report.metric} = {report.value:.5g}  "
            f"[{report.baseline}: {report.baseline_value:.5g}]  {seconds:.1f}s",
            flush=True,
        )
        drawn = None
        if recipe.data == "digits":
            drawn = sample_sets(jax.random.key(2), task, state.ema_params, dataset)
        keep_result(out / name, budget, report, seconds, figs, drawn)
    rows, samples = kept_results(out, budget)
    if not rows:
        raise ValueError(f"{out}: no tour results of the {budget!r} budget to report")
    quality = sample_quality(samples, out, budget) if samples else None
    path = out / "report.md"
    path.write_text(report_markdown(rows, budget, quality))
    return path


def sample_sets(key, task: train.Task, params, dataset: Dataset):
    """The images a recipe adds to the FID table: ``task.model.tour_sample_sets(params, key,
    n)`` when the task's model has that method and it returns sets (``{label: [n, H, W, C]}``,
    one table row each, e.g. one per guidance scale), else :func:`image_samples`."""
    several = getattr(task.model, "tour_sample_sets", None)
    if callable(several):
        sets = several(params, key, len(dataset.test["x"]))
        if sets:
            return {label: np.asarray(images) for label, images in sets.items()}
    return image_samples(key, task, params, dataset)


def keep_result(where: Path, budget: str, report, seconds: float, figs, drawn) -> None:
    """Write one recipe's tour result to ``where/result.json`` and its image samples ``drawn``
    ``[n, H, W, C]`` (or their absence, ``None``) to ``where/samples.npy``; several labelled
    sets ``{label: [n, H, W, C]}`` go to ``where/samples@<label>.npy``, one FID row each."""
    where.mkdir(parents=True, exist_ok=True)
    result = {
        "budget": budget,
        "report": {**report._asdict(), "extra": dict(report.extra)},
        "seconds": seconds,
        "figures": [Path(f).name for f in figs],
    }
    for old in where.glob("samples@*.npy"):
        old.unlink()
    samples = where / "samples.npy"
    if drawn is None or isinstance(drawn, dict):
        samples.unlink(missing_ok=True)
    else:
        np.save(samples, drawn)
    for label, images in drawn.items() if isinstance(drawn, dict) else ():
        np.save(where / f"samples@{label}.npy", images)
    (where / "result.json").write_text(json.dumps(result, indent=1, default=float))


def kept_results(out: Path, budget: str):
    """The rows ``(recipe, report, seconds, figure paths)`` and the image samples of every
    registered recipe with a result of this tour budget in ``out``, in registry order."""
    rows, samples = [], {}
    for name, recipe in recipes.all_recipes().items():
        where = out / name
        try:
            result = json.loads((where / "result.json").read_text())
        except FileNotFoundError:
            continue
        if result.get("budget") != budget:
            continue
        report = recipes.Report(**result["report"])
        rows.append((recipe, report, result["seconds"], [where / f for f in result["figures"]]))
        if (where / "samples.npy").is_file():
            samples[name] = np.load(where / "samples.npy")
        for path in sorted(where.glob("samples@*.npy"), key=_set_order):
            samples[f"{name} @ {path.stem.partition('@')[2]}"] = np.load(path)
    return rows, samples


def _set_order(path: Path):
    """Labelled sample sets in numeric order of their value (``w=0``, ``w=1``, ``w=1.5`` ...)."""
    label = path.stem.partition("@")[2]
    try:
        return (0, float(label.partition("=")[2]), label)
    except ValueError:
        return (1, 0.0, label)


def image_samples(key, task: train.Task, params, dataset: Dataset) -> np.ndarray | None:
    """As many samples ``[n, *dataset.shape]`` as the test split when ``task.sample`` draws
    images of the data's shape, else ``None``. The output shape comes from ``jax.eval_shape``
    (tracing, no work), so a sampler of text is never run; a sampler that cannot be traced is
    run and its output checked."""
    if task.sample is None:
        return None
    n = len(dataset.test["x"])
    want = (n, *dataset.shape)
    try:
        shape = jax.eval_shape(lambda p, k: task.sample(p, k, n), params, key).shape
    except TypeError:  # the sampler converts to numpy or branches on values: run it
        shape = want
    if tuple(shape) != want:
        return None
    drawn = np.asarray(task.sample(params, key, n))
    if drawn.shape != want or not np.issubdtype(drawn.dtype, np.floating):
        return None
    return drawn


def load_classifier(out: Path, budget: str):
    """``(run folder, classifier)``: the digits CNN of the FID/KID table, loaded from
    ``out/digits_cnn`` (quick tour: ``out/digits_cnn_quick``) when a finished run is there,
    else trained there first (:data:`CNN_STEPS`)."""
    quick = budget == "quick"
    run_dir = out / ("digits_cnn_quick" if quick else "digits_cnn")
    try:
        net = classifier.load_cnn_classifier(run_dir)
    except FileNotFoundError:  # no run yet, or one without its final checkpoint: (re)train
        net = classifier.train_cnn_classifier(
            load_dataset("digits"), steps=CNN_STEPS[budget], run_dir=run_dir
        )
    return run_dir, net


def sample_quality(samples: dict[str, np.ndarray], out: Path, budget: str) -> dict:
    """FID, KID, precision/recall and IS of each family's samples against the digits test
    split, in the digits CNN's features (:func:`genjax.metrics.image_quality`), with the floor
    (as many training images as there are test images) and the baseline (:func:`gmm_samples`),
    against the same test split."""
    tic = time.perf_counter()
    dataset = load_dataset("digits")
    run_dir, net = load_classifier(out, budget)
    test = dataset.test["x"]
    n = len(test)
    pick = np.random.default_rng(0).choice(len(dataset.train["x"]), n, replace=False)
    sets = {"floor": dataset.train["x"][pick], "baseline": gmm_samples(dataset.train["x"], n)}
    sets.update(samples)
    subset = max(2, n // 2)
    figures = {}
    for name, images in sets.items():
        key = jax.random.key(3)
        figures[name] = (
            metrics.image_quality(
                key, net, test, images, num_subsets=KID_SUBSETS, subset_size=subset
            )
            if np.all(np.isfinite(images))
            else None  # non-finite samples: no features to compare
        )
        if figures[name] is not None:
            print(f"{name:28s} FID = {figures[name]['fid']:.4g}", flush=True)
    accuracy = float(np.mean(net.predict(test) == dataset.test["y"]))
    return {
        "figures": figures,
        "classifier": run_dir.relative_to(out).as_posix(),
        "steps": train.read_config(run_dir)[0].steps,
        "accuracy": accuracy,
        "n": n,
        "subset": subset,
        "seconds": time.perf_counter() - tic,
    }


def gmm_samples(images: np.ndarray, n: int) -> np.ndarray:
    """``n`` samples ``[n, *images.shape[1:]]`` of a :data:`GMM_COMPONENTS`-component
    full-covariance Gaussian mixture fitted to the flattened ``images`` (scikit-learn, seeded),
    clipped to the pixel range [0, 1]: the classical density model every
    family's FID is compared with."""
    from sklearn.mixture import GaussianMixture

    flat = images.reshape(len(images), -1)  # [N, h*w*c]
    gmm = GaussianMixture(GMM_COMPONENTS, covariance_type="full", random_state=0)
    drawn, _ = gmm.fit(flat).sample(n)  # [n, h*w*c], grouped by component
    drawn = np.random.default_rng(0).permutation(drawn)  # IS splits need a mixed order
    return np.clip(drawn, 0.0, 1.0).reshape(n, *images.shape[1:]).astype(np.float32)


def report_markdown(rows, budget: str, quality: dict | None = None) -> str:
    """The tour's ``report.md``: one row per kept result (:func:`kept_results`), the FID table
    (:func:`quality_markdown`) when ``quality`` is given, and each recipe's further figures."""
    lines = [
        f"# genjax tour{'' if budget == 'tour' else f' ({budget} budget)'}",
        "",
        f"Each recipe trained on its data set with its {budget} budget "
        "(`genjax.recipes.Recipe.budget`); figures on the test split, the baseline computed on "
        "the same split.",
        "",
        "| recipe | data | metric | value | baseline | baseline value | beats baseline | "
        "seconds | figure |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe, report, seconds, figs in rows:
        fig = " ".join(f"![{p.stem}]({p.parent.name}/{p.name})" for p in figs)
        lines.append(
            f"| {recipe.name} | {recipe.data} | {report.metric} | {report.value:.5g} | "
            f"{report.baseline} | {report.baseline_value:.5g} | "
            f"{'yes' if report.beats_baseline else 'no'} | {seconds:.1f} | {fig} |"
        )
    lines += family_markdown(rows, quality)
    if quality is not None:
        lines += quality_markdown(quality, [recipe.name for recipe, *_ in rows], budget)
    extras = [(r.name, rep.extra) for r, rep, _, _ in rows if rep.extra]
    if extras:
        lines += ["", "## Further figures", ""]
        for name, extra in extras:
            lines.append(f"- **{name}**: " + ", ".join(f"{k} = {v:.5g}" for k, v in extra.items()))
    return "\n".join(lines) + "\n"


def family_markdown(rows, quality: dict | None = None) -> list[str]:
    """The lines of the family table: per family (:attr:`genjax.recipes.Recipe.family`), whether
    a recipe of this tour beats its baseline in its own metric, and whether one's samples score a
    lower FID than the Gaussian-mixture baseline in the FID table (``quality``,
    :func:`sample_quality`); a family beats its baseline when either holds."""
    figures = quality["figures"] if quality else {}
    base = figures.get("baseline")
    by_family: dict[str, list] = {}
    for recipe, report, *_ in rows:
        by_family.setdefault(recipe.family, []).append((recipe.name, report))
    lines = [
        "",
        "## Families",
        "",
        "| family | recipes | beats its baseline in its metric | FID below the mixture's | "
        "beats a baseline |",
        "|---|---|---|---|---|",
    ]
    for family, members in by_family.items():
        own = [name for name, report in members if report.beats_baseline]
        fid = [
            name
            for name, _ in members
            if base
            and any(
                f and f["fid"] < base["fid"]
                for key, f in figures.items()
                if key == name or key.startswith(f"{name} @ ")  # or one of its labelled sets
            )
        ]
        cells = [", ".join(own) or "no", ", ".join(fid) or "no", "yes" if own or fid else "no"]
        lines.append(f"| {family} | {', '.join(n for n, _ in members)} | {' | '.join(cells)} |")
    return lines


def quality_markdown(quality: dict, order: list[str], budget: str) -> list[str]:
    """The lines of the FID table: floor, baseline, then the families of ``order`` with figures
    in ``quality`` (:func:`sample_quality`) ranked by FID, non-finite samples last."""
    figures, n = quality["figures"], quality["n"]
    families = [
        key
        for name in order
        for key in figures
        if key == name or key.startswith(f"{name} @ ")  # a recipe's labelled sets too
    ]
    ranked = sorted(
        families,
        key=lambda name: math.inf if figures[name] is None else figures[name]["fid"],
    )
    lines = [
        "",
        "## Image families ranked by FID",
        "",
        f"Each recipe on `digits` whose sampler draws images drew {n} samples; FID, KID "
        f"(mean ± std over {KID_SUBSETS} subsets of {quality['subset']}), k-NN "
        "precision/recall (k = 3) and the Inception score compare them with the "
        f"{n} test images in the pooled features of the digits CNN "
        f"(`genjax.classifier.DigitsCNN`, {quality['steps']} steps, "
        f"{100 * quality['accuracy']:.1f} % test accuracy, kept in "
        f"`{quality['classifier']}`). The floor is {n} training images against the same test "
        "split: a model that matched the data would score about that; the baseline is a "
        "classical density model's samples (clipped to [0, 1]). Lower FID and KID are "
        "better; FID is biased upwards at small N, so compare values within this table only. "
        f"Sampling aside, the table took {quality['seconds']:.1f} s (classifier training "
        "included when it was not kept from an earlier tour).",
    ]
    if budget == "quick":
        lines += [
            "",
            f"Quick tour: its classifier's budget is {CNN_STEPS['quick']} steps, not the "
            f"other tours' {CNN_STEPS['tour']}, so these values are not comparable with theirs.",
        ]
    if any("autoencoder" in name for name in families):
        lines += [
            "",
            "An autoencoder has no prior: its sampler reconstructs test images, so its row "
            "measures reconstructions, not generated samples.",
        ]
    lines += [
        "",
        "| rank | images | FID | KID | precision | recall | IS |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(rank: str, label: str, f: dict | None) -> str:
        if f is None:
            return f"| {rank} | {label} | non-finite samples | | | | |"
        return (
            f"| {rank} | {label} | {f['fid']:.4g} | {f['kid']:.3g} ± {f['kid_std']:.2g} | "
            f"{f['precision']:.3f} | {f['recall']:.3f} | {f['inception_score']:.3g} |"
        )

    lines.append(row("floor", f"{n} training images (the floor)", figures["floor"]))
    if "baseline" in figures:
        label = (
            f"{n} samples of a {GMM_COMPONENTS}-component full-covariance Gaussian "
            "mixture fitted to the training images (the baseline)"
        )
        lines.append(row("baseline", label, figures["baseline"]))
    lines += [row(str(i), name, figures[name]) for i, name in enumerate(ranked, start=1)]
    return lines
