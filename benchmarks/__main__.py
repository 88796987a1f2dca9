"""``python -m benchmarks [suite ...] [--quick] [--device [PLATFORM]]``: run benchmark suites
and write their tables.

Every ``benchmarks/bench_<name>.py`` is a suite named ``<name>``; with no names, all run. Every
table and JSON record names the device its JAX rows ran on (``jax.devices()[0]``'s platform
and kind; PyTorch rows run on the CPU). ``--device PLATFORM`` (``cpu``, ``gpu``, ``cuda``,
``rocm``, ``tpu``) runs the JAX rows on that platform; ``--device`` alone prints the device
the suites would run on and exits.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from benchmarks.harness import RESULTS, Harness, device

INDEX = Path(__file__).parent / "README.md"
PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu")  # values of jax's ``jax_platforms``
INDEX_HEAD = """# Benchmarks

`python -m benchmarks [suite ...] [--quick]` (or `genjax bench`) runs the suites below and
rewrites this page from `results/<suite>.md`. Every row times jitted code after a warm-up call,
waits with `block_until_ready`, and reports the median of repeated calls, the throughput, the
achieved GFLOP/s (FLOPs counted by XLA's cost analysis where it knows them) and the fraction of
the machine's float32 matmul peak, which the harness measures itself with a large jitted matmul
at the start of each suite. Rows in one group do the same work; "vs best" compares them with the
fastest. Each table names the machine, the library versions and the device its JAX rows ran on
(PyTorch reference rows run on the CPU); figures from a shared or busy machine are noisy, and
the peak is measured under the same conditions as the rows. `--device PLATFORM` (`cpu`, `gpu`,
`tpu`) runs the JAX rows on that platform, so that the same tables come from an accelerator;
`--device` alone prints the device a run would use and exits.

Convolutions on CPU. Every family convolves through `genjax.nn.layers.strided_conv` and
`conv_transpose`, and its dense layers, biases and normalisations are genjax's too
(`genjax.nn.layers.Dense`, `genjax.nn.norm.GroupNorm` / `BatchNorm`); `conv_formulation` picks
how they are differentiated, by backend. Autodiff of XLA's convolution emits kernel gradients
in layouts that XLA's CPU backend runs through a generic loop, tens of times slower inside a
training scan than outside it; on CPU genjax therefore writes both gradients by hand (a custom
VJP), as convolutions in the canonical layout: the adjoint convolution for the input, and for
the kernel a convolution with the channels as batch and the batch as features, summed over
four batch chunks (derivations/09-wgan.md). Dense layers multiply by explicitly transposed
copies (XLA's CPU products with a transposed operand are 2-3x slower), and biases and
normalisations sum over positions in two stages, with closed-form normalisation gradients
(derivations/11-ddpm.md, section 7). XLA's YNNPACK fusions run on one thread inside a scan, so
training chunks compile without them on CPU (`genjax.train.make_train_chunk`). `python -m
benchmarks.spread RUN1` compares genjax with PyTorch's fastest thread setting over two runs
(`results/spread.md`).
"""


def suites() -> list[str]:
    """Names of every suite module in this package."""
    here = Path(__file__).parent
    return sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("suites", nargs="*", help=f"suites to run (default all): {suites()}")
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    p.add_argument(
        "--device",
        nargs="?",
        const="",
        choices=("", *PLATFORMS),
        metavar="PLATFORM",
        help=f"run the JAX rows on this platform {PLATFORMS}; alone: print the device and exit",
    )
    args = p.parse_args(argv)
    names = args.suites or suites()
    unknown = set(names) - set(suites())
    if unknown:
        p.error(f"unknown suites {sorted(unknown)}; known: {suites()}")
    if args.device is not None:
        try:
            dev = select_device(args.device or None)
        except RuntimeError as err:
            p.error(f"--device {args.device}: {err}")
        print(f"device: {dev['platform']} ({dev['device_kind']}); PyTorch rows on {dev['torch']}")
        if not args.device:
            return 0
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        h = Harness(name, quick=args.quick)
        module.run(h, args.quick)
        print(h.markdown())
        print(f"wrote {h.write()}")
    print(f"wrote {write_index()}")
    return 0


def select_device(name: str | None) -> dict[str, str]:
    """Make ``name`` (one of :data:`PLATFORMS`; ``None``: JAX's default) the platform of the
    JAX rows, before any of them runs; returns :func:`benchmarks.harness.device`.

    Raises ``RuntimeError`` when the platform is not available or JAX's backends were already
    initialised on another one."""
    import jax

    if name is not None:
        jax.config.update("jax_platforms", name)
    dev = device()
    want = {"cuda": "gpu", "rocm": "gpu"}.get(name, name)
    if want is not None and dev["platform"] != want:
        raise RuntimeError(f"JAX runs on {dev['platform']}, not {want}")
    return dev


def write_index(results: Path = RESULTS, path: Path = INDEX) -> Path:
    """Rewrite ``benchmarks/README.md``: the header above, then every suite's table."""
    tables = [p.read_text().strip() for p in sorted(results.glob("*.md"))]
    path.write_text("\n\n".join([INDEX_HEAD.strip(), *tables]) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
