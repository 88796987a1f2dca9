"""``python -m benchmarks [suite ...] [--quick]``: run benchmark suites and write their tables.

Every ``benchmarks/bench_<name>.py`` is a suite named ``<name>``; with no names, all run.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from benchmarks.harness import RESULTS, Harness

INDEX = Path(__file__).parent / "README.md"
INDEX_HEAD = """# Benchmarks

`python -m benchmarks [suite ...] [--quick]` (or `genjax bench`) runs the suites below and
rewrites this page from `results/<suite>.md`. Every row times jitted code after a warm-up call,
waits with `block_until_ready`, and reports the median of repeated calls, the throughput, the
achieved GFLOP/s (FLOPs counted by XLA's cost analysis where it knows them) and the fraction of
the machine's float32 matmul peak, which the harness measures itself with a large jitted matmul
at the start of each suite. Rows in one group do the same work; "vs best" compares them with the
fastest. Each table names the machine and library versions it ran on; figures from a shared or
busy machine are noisy, and the peak is measured under the same conditions as the rows.
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
    args = p.parse_args(argv)
    names = args.suites or suites()
    unknown = set(names) - set(suites())
    if unknown:
        p.error(f"unknown suites {sorted(unknown)}; known: {suites()}")
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        h = Harness(name, quick=args.quick)
        module.run(h, args.quick)
        print(h.markdown())
        print(f"wrote {h.write()}")
    print(f"wrote {write_index()}")
    return 0


def write_index(results: Path = RESULTS, path: Path = INDEX) -> Path:
    """Rewrite ``benchmarks/README.md``: the header above, then every suite's table."""
    tables = [p.read_text().strip() for p in sorted(results.glob("*.md"))]
    path.write_text("\n\n".join([INDEX_HEAD.strip(), *tables]) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
