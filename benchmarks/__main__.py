"""``python -m benchmarks [suite ...] [--quick]``: run benchmark suites and write their tables.

Every ``benchmarks/bench_<name>.py`` is a suite named ``<name>``; with no names, all run.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from benchmarks.harness import Harness


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
