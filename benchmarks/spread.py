"""``python -m benchmarks.spread OTHER [suite ...]``: genjax against PyTorch over two runs.

For every group of the suites (default: the convolutional families' ``gan``, ``vae``,
``diffusion``, ``flows``) that has both a genjax row and PyTorch rows, the speed of genjax
relative to PyTorch's fastest thread setting, ``t(PyTorch best) / t(genjax)`` (above 1: genjax
is faster), in this run (``benchmarks/results``) and in the run whose JSON records were saved in
the directory ``OTHER``; and the spread of each side's median between the two runs,
``max / min - 1``. Writes ``results/spread.md`` (which the index, ``benchmarks/README.md``,
then includes) and prints it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.__main__ import write_index
from benchmarks.harness import RESULTS

SUITES = ("gan", "vae", "diffusion", "flows")


def _pairs(path: Path) -> dict[str, tuple[dict, dict]]:
    """``{group: (genjax row, fastest PyTorch row)}`` of one suite's JSON record."""
    rows = json.loads(path.read_text())["rows"]
    out = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group and r["name"].startswith("genjax")]
        torch = [r for r in rows if r["group"] == group and r["name"].startswith("PyTorch")]
        if mine and torch:
            out[group] = (mine[0], min(torch, key=lambda r: r["median_s"]))
    return out


def _spread(a: float, b: float) -> str:
    return f"{100 * (max(a, b) / min(a, b) - 1):.0f} %"


def table(other: Path, suites: tuple[str, ...] = SUITES, results: Path = RESULTS) -> str:
    """The Markdown table described in the module docstring."""
    lines = [
        "### genjax against PyTorch eager, two runs",
        "",
        f"Speed of genjax's row relative to PyTorch's fastest thread setting (above 1: genjax is "
        f"faster) in each run; run 1 is the JSON saved in `{other.name}`, run 2 these tables. "
        "Spread: the larger median over the smaller, minus one.",
        "",
        "| group | genjax vs PyTorch, run 1 | run 2 | PyTorch's best (run 2) | genjax of peak "
        "(run 2) | spread genjax | spread PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    for suite in suites:
        now, then = results / f"{suite}.json", other / f"{suite}.json"
        if not (now.is_file() and then.is_file()):
            continue
        before = _pairs(then)
        for group, (mine, torch) in _pairs(now).items():
            if group not in before:
                continue
            mine1, torch1 = before[group]
            peak = mine["peak_fraction"]
            lines.append(
                f"| {group} | {torch1['median_s'] / mine1['median_s']:.2f}x | "
                f"{torch['median_s'] / mine['median_s']:.2f}x | {torch['name']} | "
                f"{'' if peak is None else f'{100 * peak:.0f} %'} | "
                f"{_spread(mine['median_s'], mine1['median_s'])} | "
                f"{_spread(torch['median_s'], torch1['median_s'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    text = table(Path(argv[0]), tuple(argv[1:]) or SUITES)
    (RESULTS / "spread.md").write_text(text)
    write_index()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
