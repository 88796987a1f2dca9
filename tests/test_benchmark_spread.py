"""benchmarks.spread: genjax's speed against PyTorch's fastest row, and the run-to-run spread,
from two JSON records written by hand."""

import json
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from benchmarks import spread  # noqa: E402


def _record(directory: Path, genjax_s: float, torch1_s: float, torch2_s: float) -> None:
    row = {"group": "step", "peak_fraction": 0.25}
    rows = [
        {**row, "name": "genjax loop (lax.scan chunk)", "median_s": genjax_s},
        {**row, "name": "PyTorch 2 eager, 1 thread", "median_s": torch1_s},
        {**row, "name": "PyTorch 2 eager, 2 threads", "median_s": torch2_s},
        {"group": "no torch here", "name": "genjax", "median_s": 1.0, "peak_fraction": None},
    ]
    directory.mkdir()
    (directory / "gan.json").write_text(json.dumps({"rows": rows}))


def test_ratio_against_the_fastest_torch_row_and_spread(tmp_path):
    _record(tmp_path / "one", genjax_s=2.0, torch1_s=3.0, torch2_s=2.5)  # 1.25x
    _record(tmp_path / "two", genjax_s=2.2, torch1_s=2.75, torch2_s=3.3)  # 1.25x, 1 thread
    text = spread.table(tmp_path / "one", ("gan",), results=tmp_path / "two")
    rows = [line for line in text.splitlines() if line.startswith("| step")]
    assert rows == ["| step | 1.25x | 1.25x | PyTorch 2 eager, 1 thread | 25 % | 10 % | 10 % |"]
    assert "no torch here" not in text
