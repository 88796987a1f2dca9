"""Notes and tests cannot drift apart: every test a derivation cites exists."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTES = sorted((ROOT / "derivations").glob("*.md"))
CITATION = re.compile(r"tests/(test_\w+)\.py::(test_\w+)")


def _test_names(module: str) -> set[str]:
    path = ROOT / "tests" / f"{module}.py"
    if not path.is_file():
        return set()
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_there_are_notes():
    assert len(NOTES) >= 2


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_every_cited_test_exists(note):
    cited = CITATION.findall(note.read_text())
    missing = [f"tests/{m}.py::{t}" for m, t in cited if t not in _test_names(m)]
    assert not missing, f"{note.name} cites tests that do not exist: {missing}"


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_every_note_cites_a_test_and_names_code(note):
    text = note.read_text()
    assert CITATION.search(text), f"{note.name} names no test"
    assert re.search(r"genjax[./]\w+", text), f"{note.name} names no code"
