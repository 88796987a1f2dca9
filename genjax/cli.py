"""The ``genjax`` command: train, sample, tour, bench, list.

``genjax train NAME`` trains a registered recipe and writes a run folder; ``genjax sample RUN``
draws from its latest checkpoint; ``genjax tour`` trains every recipe on ``digits`` and writes
``runs/tour/report.md``, ranking the image families by FID and KID; ``genjax bench`` runs the
benchmark suites; ``genjax interpret`` draws saliency, guided backprop and Grad-CAM overlays of
the digits CNN as a PNG; ``genjax stylize CONTENT STYLE`` writes a Gatys style transfer and its
loss curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from genjax import recipes, train, viz
from genjax.data import load_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genjax", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a registered recipe")
    t.add_argument("recipe", help="recipe name (see `genjax list`)")
    t.add_argument("--data", default=None, help="data set (default: the recipe's)")
    t.add_argument("--data-dir", default=None, help="IDX folder or tfds data directory")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="run folder (default runs/RECIPE)")
    t.add_argument(
        "--devices",
        choices=("one", "all"),
        default="one",
        help="'all' shards each batch over every device",
    )
    t.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe option, e.g. code_dim=16 (repeatable)",
    )

    s = sub.add_parser("sample", help="sample from a run folder's latest checkpoint")
    s.add_argument("run_dir")
    s.add_argument("-n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)

    tour = sub.add_parser("tour", help="train every recipe briefly and write a report")
    tour.add_argument(
        "--quick",
        action="store_true",
        help="one recipe per family, quick budgets (under two minutes)",
    )
    tour.add_argument("--only", nargs="*", default=None, help="recipe names to include")
    tour.add_argument("--out", default="runs/tour")
    tour.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rebuild report.md from the results kept in --out",
    )

    b = sub.add_parser("bench", help="run benchmark suites (python -m benchmarks)")
    b.add_argument("suites", nargs="*")
    b.add_argument("--quick", action="store_true")

    sub.add_parser("list", help="list the registered recipes")

    sty = sub.add_parser("stylize", help="Gatys style transfer of CONTENT in the style of STYLE")
    sty.add_argument("content", help="image file, or a pattern: shapes, stripes, checks, waves")
    sty.add_argument("style", help="image file, or a pattern name")
    sty.add_argument("--out", default="runs/stylize", help="folder for the result and curve")
    sty.add_argument("--size", type=int, default=48, help="side in pixels, a multiple of 8")
    sty.add_argument("--steps", type=int, default=300)
    sty.add_argument("--lr", type=float, default=0.05)
    sty.add_argument("--style-weight", type=float, default=1000.0)
    sty.add_argument("--tv-weight", type=float, default=0.0)
    sty.add_argument("--seed", type=int, default=0, help="seed of the random features")
    sty.add_argument(
        "--vgg", default=None, help="VGG-16 weights (.npz) to use instead of random features"
    )

    i = sub.add_parser("interpret", help="saliency, guided backprop and Grad-CAM overlays as PNG")
    i.add_argument(
        "--classifier",
        default="runs/digits_cnn",
        help="DigitsCNN run folder; trained there first when it holds none",
    )
    i.add_argument("--data", default="digits", help="data set of the classifier")
    i.add_argument("--data-dir", default=None, help="IDX folder or tfds data directory")
    i.add_argument("--steps", type=int, default=1500, help="training steps when training")
    i.add_argument(
        "--methods",
        nargs="+",
        default=["saliency", "guided_backprop", "grad_cam", "guided_grad_cam"],
        help="any of saliency guided_backprop deconvnet cam grad_cam guided_grad_cam",
    )
    i.add_argument("--out", default="runs/interpret", help="folder for interpret.png")
    return p


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--option must be KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_train(args) -> int:
    recipe = recipes.get(args.recipe)
    data_name = args.data or recipe.data
    dataset = load_dataset(data_name, args.data_dir)
    options = _options(args.option)
    config = recipe.config(False)
    steps = args.steps or config.steps
    overrides = {
        "steps": steps,
        "log_every": math.gcd(steps, config.log_every),
        "seed": args.seed,
        **({"batch_size": args.batch_size} if args.batch_size else {}),
        **({"lr": args.lr} if args.lr else {}),
    }
    config = dataclasses.replace(config, checkpoint_every=None, **overrides)
    config = dataclasses.replace(config, checkpoint_every=config.log_every)
    run_dir = Path(args.out or f"runs/{recipe.name}")
    info = {"recipe": recipe.name, "data": data_name, "data_dir": args.data_dir, "options": options}
    mesh = None
    if args.devices == "all":
        from genjax import parallel

        mesh = parallel.make_mesh()
    task = recipe.make_task(dataset, options)
    state = train.fit(task, dataset.train, config, run_dir=run_dir, run_info=info, mesh=mesh)
    report = recipe.evaluate(task, state.ema_params, dataset, jax.random.key(args.seed + 1))
    (run_dir / "report.json").write_text(json.dumps(report._asdict(), indent=2))
    print(
        f"{recipe.name}: {report.metric} = {report.value:.6g} "
        f"({report.baseline}: {report.baseline_value:.6g})"
    )
    viz.loss_curves(run_dir / "metrics.jsonl", run_dir / "loss.png")
    return 0


def _restore(run_dir: Path):
    config, info = train.read_config(run_dir)
    recipe = recipes.get(info["recipe"])
    dataset = load_dataset(info["data"], info.get("data_dir"))
    task = recipe.make_task(dataset, info.get("options", {}))
    state, _ = train.init_state(task, config, dataset.train)
    from genjax.checkpoints import CheckpointManager

    manager = CheckpointManager(run_dir / "checkpoints")
    if manager.latest_step() is None:
        raise SystemExit(f"{run_dir}: no checkpoint to sample from")
    return recipe, dataset, task, manager.restore_latest(state)


def cmd_sample(args) -> int:
    run_dir = Path(args.run_dir)
    recipe, _, task, state = _restore(run_dir)
    if task.sample is None:
        raise SystemExit(f"recipe {recipe.name!r} has no sampler")
    samples = np.asarray(task.sample(state.ema_params, jax.random.key(args.seed), args.n))
    out = run_dir / "samples" / "samples.png"
    if samples.ndim == 4:
        viz.image_grid(samples, out, title=f"{recipe.name}, step {int(state.step)}")
    else:
        out = out.with_suffix(".npy")
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, samples)
    print(out)
    return 0


TOUR_CNN_STEPS = {False: 1500, True: 300}  #: digits CNN budget of the tour, by ``--quick``
TOUR_KID_SUBSETS = 100  #: KID subsets in the tour's sample-quality table
TOUR_GMM_COMPONENTS = 10  #: components of the tour's baseline sampler (one per digit)


def cmd_tour(args) -> int:
    """Train, evaluate and draw every selected recipe; rank the image families on ``digits`` by
    FID/KID in the digits CNN's features; write ``report.md``.

    Each recipe's result (``<out>/<recipe>/result.json``) and image samples
    (``<out>/<recipe>/samples.npy``) are kept, and the report covers every recipe with a result
    in ``out`` from a tour of the same mode (full or quick): a tour of a few recipes updates
    their rows in an earlier tour's report, and the FID table ranks them all with the same kept
    classifier. A fresh ``--out`` gives a report of this tour alone."""
    selected = recipes.all_recipes()
    if args.only:
        unknown = set(args.only) - set(selected)
        if unknown:
            raise SystemExit(f"unknown recipes {sorted(unknown)}; known: {', '.join(selected)}")
        selected = {k: v for k, v in selected.items() if k in args.only}
    quick_only = args.quick and not args.only
    selected = {k: v for k, v in selected.items() if v.tour and (v.quick_tour or not quick_only)}
    if args.report_only:
        selected = {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, recipe in selected.items():
        tic = time.perf_counter()
        key = jax.random.key(1)
        dataset, task, state, report = recipes.run(recipe, args.quick, key)
        figs = (
            recipe.figures(task, state.ema_params, dataset, key, out / name)
            if (recipe.figures)
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
            drawn = _image_samples(task, state.ema_params, dataset, jax.random.key(2))
        _keep_result(out / name, args.quick, report, seconds, figs, drawn)
    rows, samples = _kept_results(out, args.quick)
    if not rows:
        mode = "quick " if args.quick else ""
        raise SystemExit(f"{out}: no {mode}tour results to report")
    quality = _tour_quality(samples, out, args.quick) if samples else None
    (out / "report.md").write_text(_report_markdown(rows, args.quick, quality))
    print(out / "report.md")
    return 0


def _keep_result(where: Path, quick: bool, report, seconds: float, figs, drawn) -> None:
    """Write one recipe's tour result to ``where/result.json`` and its image samples (or the
    absence of them) to ``where/samples.npy``."""
    where.mkdir(parents=True, exist_ok=True)
    result = {
        "quick": quick,
        "report": {**report._asdict(), "extra": dict(report.extra)},
        "seconds": seconds,
        "figures": [Path(f).name for f in figs],
    }
    samples = where / "samples.npy"
    if drawn is None:
        samples.unlink(missing_ok=True)
    else:
        np.save(samples, drawn)
    (where / "result.json").write_text(json.dumps(result, indent=1, default=float))


def _kept_results(out: Path, quick: bool):
    """The rows ``(recipe, report, seconds, figure paths)`` and the image samples of every
    registered recipe with a result of this tour mode in ``out``, in registry order."""
    rows, samples = [], {}
    for name, recipe in recipes.all_recipes().items():
        where = out / name
        try:
            result = json.loads((where / "result.json").read_text())
        except FileNotFoundError:
            continue
        if result["quick"] != quick:
            continue
        report = recipes.Report(**result["report"])
        rows.append((recipe, report, result["seconds"], [where / f for f in result["figures"]]))
        if (where / "samples.npy").is_file():
            samples[name] = np.load(where / "samples.npy")
    return rows, samples


def _image_samples(task, params, dataset, key) -> np.ndarray | None:
    """As many samples as the test split when ``task.sample`` draws images of the data's
    shape, else ``None``. The output shape comes from ``jax.eval_shape`` (tracing, no work), so
    a sampler of text is never run; a sampler that cannot be traced is run and its output
    checked."""
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


def _tour_classifier(out: Path, quick: bool):
    """The digits CNN of the tour's FID/KID table: loaded from ``out/digits_cnn`` (quick tour:
    ``out/digits_cnn_quick``) when a finished run is there, else trained there first."""
    from genjax import classifier

    run = out / ("digits_cnn_quick" if quick else "digits_cnn")
    try:
        net = classifier.load_cnn_classifier(run)
    except FileNotFoundError:  # no run yet, or one without its final checkpoint: (re)train
        net = classifier.train_cnn_classifier(
            load_dataset("digits"), steps=TOUR_CNN_STEPS[quick], run_dir=run
        )
    return run, net


def _tour_quality(samples: dict[str, np.ndarray], out: Path, quick: bool) -> dict:
    """FID, KID, precision/recall and IS of each family's samples against the digits test
    split, in the digits CNN's features (:func:`genjax.metrics.image_quality`), with the floor:
    as many training images as there are test images, against the same test split."""
    from genjax import metrics

    tic = time.perf_counter()
    dataset = load_dataset("digits")
    run, net = _tour_classifier(out, quick)
    test = dataset.test["x"]
    n = len(test)
    pick = np.random.default_rng(0).choice(len(dataset.train["x"]), n, replace=False)
    sets = {"floor": dataset.train["x"][pick], "baseline": _gmm_samples(dataset.train["x"], n)}
    sets.update(samples)
    subset = max(2, n // 2)
    figures = {}
    for name, images in sets.items():
        key = jax.random.key(3)
        figures[name] = (
            metrics.image_quality(
                key, net, test, images, num_subsets=TOUR_KID_SUBSETS, subset_size=subset
            )
            if np.all(np.isfinite(images))
            else None  # non-finite samples: no features to compare
        )
        if figures[name] is not None:
            print(f"{name:28s} FID = {figures[name]['fid']:.4g}", flush=True)
    accuracy = float(np.mean(net.predict(test) == dataset.test["y"]))
    steps = train.read_config(run)[0].steps
    return {
        "figures": figures,
        "classifier": run.relative_to(out).as_posix(),
        "steps": steps,
        "accuracy": accuracy,
        "n": n,
        "subset": subset,
        "seconds": time.perf_counter() - tic,
    }


def _gmm_samples(images: np.ndarray, n: int) -> np.ndarray:
    """``n`` samples of a full-covariance Gaussian mixture fitted to the flattened ``images``
    (scikit-learn, seeded), clipped to the pixel range [0, 1]: the classical density model
    every family's FID is compared with."""
    from sklearn.mixture import GaussianMixture

    flat = images.reshape(len(images), -1)  # [N, h*w*c]
    gmm = GaussianMixture(TOUR_GMM_COMPONENTS, covariance_type="full", random_state=0)
    drawn, _ = gmm.fit(flat).sample(n)  # [n, h*w*c], grouped by component
    drawn = np.random.default_rng(0).permutation(drawn)  # IS splits need a mixed order
    return np.clip(drawn, 0.0, 1.0).reshape(n, *images.shape[1:]).astype(np.float32)


def _report_markdown(rows, quick: bool, quality: dict | None = None) -> str:
    lines = [
        f"# genjax tour{' (quick)' if quick else ''}",
        "",
        f"Each recipe trained on its data set with its {'quick ' if quick else ''}tour budget; "
        "figures on the test split, the baseline computed on the same split.",
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
    if quality is not None:
        lines += _quality_markdown(quality, [recipe.name for recipe, *_ in rows], quick)
    extras = [(r.name, rep.extra) for r, rep, _, _ in rows if rep.extra]
    if extras:
        lines += ["", "## Further figures", ""]
        for name, extra in extras:
            lines.append(f"- **{name}**: " + ", ".join(f"{k} = {v:.5g}" for k, v in extra.items()))
    return "\n".join(lines) + "\n"


def _quality_markdown(quality: dict, order: list[str], quick: bool) -> list[str]:
    figures, n = quality["figures"], quality["n"]
    families = [name for name in order if name in figures]
    ranked = sorted(
        families,
        key=lambda name: math.inf if figures[name] is None else figures[name]["fid"],
    )
    lines = [
        "",
        "## Image families ranked by FID",
        "",
        f"Each recipe on `digits` whose sampler draws images drew {n} samples; FID, KID "
        f"(mean ± std over {TOUR_KID_SUBSETS} subsets of {quality['subset']}), k-NN "
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
    if quick:
        lines += [
            "",
            f"Quick tour: its classifier's budget is {TOUR_CNN_STEPS[True]} steps, not the full "
            f"tour's {TOUR_CNN_STEPS[False]}, so these values are not comparable with the full "
            "tour's.",
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
            f"{n} samples of a {TOUR_GMM_COMPONENTS}-component full-covariance Gaussian "
            "mixture fitted to the training images (the baseline)"
        )
        lines.append(row("baseline", label, figures["baseline"]))
    lines += [row(str(i), name, figures[name]) for i, name in enumerate(ranked, start=1)]
    return lines


def cmd_bench(args) -> int:
    if not Path("benchmarks/harness.py").is_file():
        raise SystemExit("genjax bench runs from the repository root (benchmarks/ not found)")
    cmd = [sys.executable, "-m", "benchmarks", *args.suites, *(["--quick"] if args.quick else [])]
    return subprocess.call(cmd)


def cmd_list(args) -> int:
    for name, recipe in recipes.all_recipes().items():
        print(f"{name:28s} {recipe.data:16s} {recipe.summary}")
    return 0


def cmd_interpret(args) -> int:
    from genjax import classifier, interpret

    dataset = load_dataset(args.data, args.data_dir)
    unknown = sorted(set(args.methods) - set(interpret.METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(interpret.METHODS)}")
    run = Path(args.classifier)
    if (run / "config.json").is_file():
        net = classifier.load_cnn_classifier(run)
    else:
        net = classifier.train_cnn_classifier(dataset, steps=args.steps, run_dir=run)
    x, y = dataset.test["x"], dataset.test["y"]
    first = [int(np.flatnonzero(y == c)[0]) for c in range(dataset.num_classes) if np.any(y == c)]
    images, labels = x[first], y[first]  # one test image per class
    predicted = net.predict(images)
    maps = {
        m: interpret.heatmap(m, net.split_model(), net.params, images, labels) for m in args.methods
    }
    titles = [f"{t} (pred {p})" for t, p in zip(labels, predicted, strict=True)]
    path = interpret.save_overlays(images, maps, Path(args.out) / "interpret.png", titles)
    print(path)
    return 0


def cmd_stylize(args) -> int:
    import functools

    from genjax import style

    content = style.load_image(args.content, args.size)
    target = style.load_image(args.style, args.size)
    if args.vgg:
        features = style.vgg_features(args.vgg)
    else:
        kernels = style.random_feature_kernels(jax.random.key(args.seed))
        features = functools.partial(style.random_features, kernels)
    result = style.stylize(
        content,
        target,
        features,
        steps=args.steps,
        lr=args.lr,
        style_weight=args.style_weight,
        tv_weight=args.tv_weight,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = np.concatenate([content, target, np.asarray(result.image)])
    viz.image_grid(images, out / "stylized.png", ncols=3, title="content / style / result")
    viz.image_grid(np.asarray(result.image), out / "result.png")
    style.plot_history(result.history, out / "loss_curve.png")
    h = result.history
    print(
        f"style loss {h['style'][0]:.4g} -> {h['style'][-1]:.4g} "
        f"({h['style'][0] / h['style'][-1]:.1f}x), content loss {h['content'][-1]:.4g}; "
        f"wrote {out / 'stylized.png'}, {out / 'result.png'}, {out / 'loss_curve.png'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "train": cmd_train,
        "sample": cmd_sample,
        "tour": cmd_tour,
        "bench": cmd_bench,
        "list": cmd_list,
        "interpret": cmd_interpret,
        "stylize": cmd_stylize,
    }[args.command]
    try:
        return handler(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, not a traceback
        print(f"genjax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
