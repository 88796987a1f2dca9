"""The ``genjax`` command: train, sample, tour, bench, list, interpret, stylize, figures.

``genjax train NAME`` trains a registered recipe into a run folder; ``genjax sample RUN`` draws
from its latest checkpoint; ``genjax tour`` trains the recipes and writes a report
(:mod:`genjax.tour`); ``genjax bench`` runs the benchmark suites; ``genjax interpret`` draws
saliency and Grad-CAM overlays of the digits CNN; ``genjax stylize CONTENT STYLE`` writes a Gatys
style transfer; ``genjax figures`` draws the derivation notes' concept figures
(:mod:`genjax.figures`). This module only parses and dispatches; errors are one line (docs/cli.md).
"""

from __future__ import annotations

import argparse
import errno
import math
import subprocess
import sys
import warnings
from pathlib import Path

import jax

from genjax import parallel, recipes, tour
from genjax.data import check_data_dir, load_dataset

__all__ = ["main"]  # the commands are reached through main: the command line is the API


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line ``genjax: error: ...`` (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"genjax: error: {message} (see `{self.prog} --help`)\n")


def _number(kind: type, positive: bool = True):
    """An argparse type: a finite ``kind`` that is > 0 (``positive``) or >= 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            what = f"{'an integer' if kind is int else 'a number'} {'>' if positive else '>='} 0"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_INT, _FLOAT, _INT0, _FLOAT0 = (
    _number(int),
    _number(float),
    _number(int, False),
    _number(float, False),
)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genjax", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a registered recipe")
    t.add_argument("recipe", help="recipe name (see `genjax list`)")
    t.add_argument("--data", default=None, help="data set (default: the recipe's)")
    t.add_argument("--data-dir", default=None, help="IDX folder or tfds data directory")
    t.add_argument("--steps", type=_INT, default=None, help="default: the recipe's")
    t.add_argument("--batch-size", type=_INT, default=None, help="default: the recipe's")
    t.add_argument("--lr", type=_FLOAT, default=None, help="default: the recipe's")
    t.add_argument("--seed", type=_INT0, default=0)
    t.add_argument("--out", default=None, help="run folder (default runs/RECIPE)")
    t.add_argument("--devices", choices=("one", "all"), default="one", help="'all': every device")
    option_help = "recipe option, e.g. code_dim=16 (repeatable)"
    t.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help=option_help)

    s = sub.add_parser("sample", help="sample from a run folder's latest checkpoint")
    s.add_argument("run_dir")
    s.add_argument("-n", type=_INT, default=64)
    s.add_argument("--seed", type=_INT0, default=0)

    tour = sub.add_parser("tour", help="train a recipe or two per family and write a report")
    size = tour.add_mutually_exclusive_group()
    for flag, help_ in (
        ("quick", "one recipe per family, smoke budgets (under two minutes)"),
        ("full", "every touring recipe at its full budget (an hour or more)"),
    ):
        size.add_argument(f"--{flag}", dest="budget", action="store_const", const=flag, help=help_)
    tour.set_defaults(budget="tour")
    tour.add_argument("--only", nargs="*", default=None, help="recipe names to include")
    tour.add_argument("--out", default="runs/tour")
    report_help = "train nothing: rebuild report.md from the results kept in --out"
    tour.add_argument("--report-only", action="store_true", help=report_help)

    b = sub.add_parser("bench", help="run benchmark suites (python -m benchmarks)")
    b.add_argument("suites", nargs="*")
    b.add_argument("--quick", action="store_true")
    device_help = "run the JAX rows on this platform (cpu, gpu, tpu); alone: print the device"
    b.add_argument("--device", nargs="?", const="", metavar="PLATFORM", help=device_help)

    sub.add_parser("list", help="list the registered recipes")

    sty = sub.add_parser("stylize", help="Gatys style transfer of CONTENT in the style of STYLE")
    sty.add_argument("content", help="image file, or a pattern: shapes, stripes, checks, waves")
    sty.add_argument("style", help="image file, or a pattern name")
    sty.add_argument("--out", default="runs/stylize", help="folder for the result and curve")
    sty.add_argument("--size", type=_INT, default=48, help="side in pixels, a multiple of 8")
    sty.add_argument("--steps", type=_INT, default=300)
    sty.add_argument("--lr", type=_FLOAT, default=0.05)
    sty.add_argument("--style-weight", type=_FLOAT0, default=1000.0)
    sty.add_argument("--tv-weight", type=_FLOAT0, default=0.0)
    sty.add_argument("--seed", type=_INT0, default=0, help="seed of the random features")
    sty.add_argument("--vgg", help="VGG-16 weights (.npz) to use instead of random features")

    i = sub.add_parser("interpret", help="saliency, guided backprop and Grad-CAM overlays as PNG")
    run_help = "DigitsCNN run folder; trained there first when it holds none"
    i.add_argument("--classifier", default="runs/digits_cnn", help=run_help)
    i.add_argument("--data", default="digits", help="data set of the classifier")
    i.add_argument("--data-dir", default=None, help="IDX folder or tfds data directory")
    i.add_argument("--steps", type=_INT, default=1500, help="training steps when training")
    methods = ["saliency", "guided_backprop", "grad_cam", "guided_grad_cam"]
    methods_help = "any of saliency guided_backprop deconvnet cam grad_cam guided_grad_cam"
    i.add_argument("--methods", nargs="+", default=methods, help=methods_help)
    i.add_argument("--out", default="runs/interpret", help="folder for interpret.png")

    f = sub.add_parser("figures", help="draw the derivation notes' concept figures as PNG")
    f.add_argument("--out", default="docs/figures/concepts", help="folder for NAME.png")
    f.add_argument("--only", nargs="+", metavar="NAME", help="figure names (default: all)")
    return p


def _cmd_train(args) -> int:
    """``genjax train``: :func:`genjax.recipes.train_run` into ``--out`` (default
    ``runs/RECIPE``)."""
    recipe = recipes.get(args.recipe)
    options = recipe.parse_options(args.option)
    check_data_dir(args.data or recipe.data, args.data_dir)  # before the run folder is touched
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    mesh = parallel.make_mesh() if args.devices == "all" else None
    report = recipes.train_run(
        jax.random.key(args.seed + 1),
        recipe,
        args.out or f"runs/{recipe.name}",
        data=args.data,
        data_dir=args.data_dir,
        options=options,
        mesh=mesh,
        seed=args.seed,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    print(
        f"{recipe.name}: {report.metric} = {report.value:.6g} "
        f"({report.baseline}: {report.baseline_value:.6g})"
    )
    return 0


def _cmd_sample(args) -> int:
    """``genjax sample``: :func:`genjax.recipes.sample_run`."""
    print(recipes.sample_run(jax.random.key(args.seed), args.run_dir, args.n))
    return 0


def _cmd_tour(args) -> int:
    """``genjax tour``: :func:`genjax.tour.run`."""
    print(tour.run(args.out, args.budget, args.only, args.report_only))
    return 0


def _cmd_bench(args) -> int:
    """``genjax bench``: ``python -m benchmarks`` from the repository root."""
    if not Path("benchmarks/harness.py").is_file():
        raise FileNotFoundError("genjax bench runs from the repository root (no benchmarks/)")
    cmd = [sys.executable, "-m", "benchmarks", *args.suites, *(["--quick"] if args.quick else [])]
    if args.device is not None:
        cmd += ["--device", args.device] if args.device else ["--device"]
    return subprocess.call(cmd)


def _cmd_list(args) -> int:
    """``genjax list``: every registered recipe with its data set."""
    for name, recipe in recipes.all_recipes().items():
        print(f"{name:28s} {recipe.data:16s} {recipe.summary}")
    return 0


def _cmd_interpret(args) -> int:
    """``genjax interpret``: :func:`genjax.classifier.heatmap_overlays` of the digits CNN in
    ``--classifier`` (trained there first when it holds none)."""
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
    print(classifier.heatmap_overlays(net, dataset, args.methods, Path(args.out) / "interpret.png"))
    return 0


def _cmd_stylize(args) -> int:
    """``genjax stylize``: :func:`genjax.recipes.style.stylize_images` into ``--out``."""
    from genjax.recipes.style import stylize_images

    options = ("size", "steps", "lr", "style_weight", "tv_weight", "seed", "vgg")
    paths, h = stylize_images(
        args.content, args.style, args.out, **{k: getattr(args, k) for k in options}
    )
    print(
        f"style loss {h['style'][0]:.4g} -> {h['style'][-1]:.4g} "
        f"({h['style'][0] / h['style'][-1]:.1f}x), content loss {h['content'][-1]:.4g}; "
        f"wrote {', '.join(map(str, paths))}"
    )
    return 0


def _cmd_figures(args) -> int:
    """``genjax figures``: :func:`genjax.figures.make_figures` into ``--out``."""
    from genjax import figures

    for path in figures.make_figures(jax.random.key(0), args.out, args.only):
        print(path)
    return 0


def _exit_code(err: BaseException) -> int | None:
    """The exit code of an error a user can cause (docs/cli.md): 1 bad input, 3 run folder,
    4 training diverged, 5 storage full, 130 interrupted; ``None`` for anything else (a bug)."""
    from genjax import train

    runfolder = sys.modules.get("genjax.runfolder")  # not imported: none of its errors raised
    if runfolder is not None and isinstance(err, runfolder.RunFolderError):
        return 3
    if isinstance(err, train.TrainingDiverged):
        return 4
    if isinstance(err, (KeyboardInterrupt, train.TrainingInterrupted)):
        return 130
    chain = (err, err.__cause__, err.__context__)
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain):
        return 5
    return 1 if isinstance(err, (ValueError, TypeError, OSError)) else None


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code. An error a user can cause
    prints one line ``genjax: error: ...`` on stderr and returns its code (``docs/cli.md``)."""
    warnings.formatwarning = lambda m, *_, **__: f"genjax: warning: {' '.join(str(m).split())}\n"
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # a usage error (printed by _Parser) or --help
        return exit_.code
    try:
        return globals()[f"_cmd_{args.command}"](args)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):  # a message: the same one line as every error
            raise SystemExit(f"genjax: error: {' '.join(exit_.code.split())}") from None
        raise
    except BaseException as err:
        code = _exit_code(err)
        if code is None:
            raise
        message = " ".join(str(err).split()) or "interrupted"
        print(f"genjax: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
