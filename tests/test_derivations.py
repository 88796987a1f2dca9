"""Notes and tests cannot drift apart.

Every test a derivation cites is a test pytest collects, and every displayed result of a note
(a ``$$ ... $$`` block, or a paragraph labelled **Claim:** or **Result:**) cites one within its
scope, unless it is marked as a definition or as a step of a derivation. The convention is
stated at the top of ``derivations/00-reading-guide.md``.
"""

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTES = sorted((ROOT / "derivations").glob("*.md"))
CITATION = re.compile(r"tests/(test_\w+)\.py::(test_\w+)")
HEADING = re.compile(r"#{1,6}\s")
CAPTION = re.compile(r"([*_])[^*_\s].*\1")
LABEL = re.compile(r"\*\*(?:Claim|Result):\*\*")
DEFINITION, STEP = "<!-- definition -->", "<!-- step -->"


def _is_unconditional_skip(decorator: ast.expr) -> bool:
    """``@pytest.mark.skip`` or ``@pytest.mark.skip(...)``: collected, but never run."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "skip"


def _collected_tests(module: str, root: Path = ROOT) -> set[str]:
    """Names of the tests pytest collects from ``tests/<module>.py``, read from its AST.

    A test is a module-level ``def test_*`` (parametrised or not): nested functions are not
    collected, and a test under an unconditional ``pytest.mark.skip`` is collected but checks
    nothing, so neither counts.
    """
    path = root / "tests" / f"{module}.py"
    if not path.is_file():
        return set()
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test")
        and not any(_is_unconditional_skip(d) for d in node.decorator_list)
    }


@dataclass(frozen=True)
class Displayed:
    """One displayed result: where it starts (1-based line), how it is marked, what it cites."""

    line: int
    head: str
    marker: str | None
    section: int
    cited: bool


def _paragraph_end(lines: list[str], i: int) -> int:
    """Index of the first blank line at or after ``i`` (``len(lines)`` if none)."""
    while i < len(lines) and lines[i].strip():
        i += 1
    return i


def _scope_end(lines: list[str], last: int) -> int:
    """End (exclusive) of a result's scope: the rest of the paragraph holding line ``last``,
    then the next paragraph, skipping figures: a paragraph that starts with ``![``, and its
    caption when that is a one-line italic paragraph of its own."""
    i = _paragraph_end(lines, last + 1)
    while True:
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i < len(lines) and lines[i].lstrip().startswith("!["):
            i = _paragraph_end(lines, i)
            j = i
            while j < len(lines) and not lines[j].strip():
                j += 1
            if (
                j < len(lines)
                and CAPTION.fullmatch(lines[j].strip())
                and _paragraph_end(lines, j) == j + 1
            ):
                i = j + 1  # the figure's caption, a one-line italic paragraph of its own
            continue
        return _paragraph_end(lines, i)


def _label(line: str) -> re.Match | None:
    """The first **Claim:**/**Result:** of a line that is not inside an inline code span."""
    return next((m for m in LABEL.finditer(line) if line[: m.start()].count("`") % 2 == 0), None)


def displayed_results(text: str) -> list[Displayed]:
    """The displayed results of a note, in order, outside fenced code blocks."""
    lines = text.split("\n")
    found, section, fenced, i = [], 0, False, 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            fenced = not fenced
        elif not fenced and HEADING.match(stripped):
            section += 1
        elif not fenced and stripped.startswith("$$"):
            last = i if stripped.endswith("$$") and len(stripped) >= 4 else i + 1
            while last < len(lines) - 1 and "$$" not in lines[last]:
                last += 1
            last = min(last, len(lines) - 1)  # an unclosed block runs to the end of the note
            above = lines[i - 1] if i else ""
            marker = next((m for m in (DEFINITION, STEP) if m in above), None)
            scope = "\n".join(lines[i : _scope_end(lines, last)])
            found.append(
                Displayed(i + 1, stripped[:60], marker, section, bool(CITATION.search(scope)))
            )
            i = last + 1
            continue
        elif not fenced and (label := _label(lines[i])):
            scope = "\n".join([lines[i][label.start() :], *lines[i + 1 : _scope_end(lines, i)]])
            found.append(
                Displayed(i + 1, stripped[:60], None, section, bool(CITATION.search(scope)))
            )
        i += 1
    return found


def uncited_results(text: str) -> list[Displayed]:
    """Displayed results that break the convention.

    A result without a marker must cite a test in its scope; a ``step`` must lead, within its
    section, to a result that does (possibly through further steps); a ``definition`` is free.
    """
    results = displayed_results(text)
    bad, leads_to_cited = [], False
    for k in reversed(range(len(results))):
        r = results[k]
        if k + 1 < len(results) and results[k + 1].section != r.section:
            leads_to_cited = False
        if r.marker == DEFINITION:
            continue
        ok = r.cited or (r.marker == STEP and leads_to_cited)
        if not ok:
            bad.append(r)
        leads_to_cited = ok
    return bad[::-1]


def test_there_are_notes():
    assert len(NOTES) >= 2


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_every_cited_test_exists(note):
    """Each ``tests/test_<module>.py::test_<name>`` a note cites is a test pytest collects."""
    cited = CITATION.findall(note.read_text())
    missing = sorted({f"tests/{m}.py::{t}" for m, t in cited if t not in _collected_tests(m)})
    assert not missing, f"{note.name} cites tests that pytest does not collect: {missing}"


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_every_note_cites_a_test_and_names_code(note):
    text = note.read_text()
    assert CITATION.search(text), f"{note.name} names no test"
    assert re.search(r"genjax[./]\w+", text), f"{note.name} names no code"


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_every_displayed_result_cites_a_test(note):
    """Every ``$$`` block and **Claim:**/**Result:** cites a test in its scope, or is marked."""
    bad = [f"line {r.line}: {r.head}" for r in uncited_results(note.read_text())]
    assert not bad, f"{note.name}: displayed results citing no test: {bad}"


CONVENTION_CASES = {
    "cited in the next paragraph": ("$$a = b$$\n\nChecked: tests/test_x.py::test_y.\n", []),
    "cited in its own paragraph": ("Text\n$$a = b$$\nas tests/test_x.py::test_y shows.\n", []),
    "cited two paragraphs later": ("$$a = b$$\n\nWhy.\n\ntests/test_x.py::test_y\n", [1]),
    "cited only before it": ("By tests/test_x.py::test_y,\n$$a = b$$\n\nWhy.\n", [2]),
    "a figure in between": ("$$a = b$$\n\n![f](f.png)\n*caption*\n\ntests/test_x.py::test_y\n", []),
    "a figure and caption": ("$$a$$\n\n![f](f.png)\n\n*The f.*\n\ntests/test_x.py::test_y\n", []),
    "a list is no caption": ("$$a$$\n\n![f](f.png)\n\n* item\n\ntests/test_x.py::test_y\n", [1]),
    "a definition": ("Let\n<!-- definition -->\n$$a := b$$\n\nWhy.\n", []),
    "a step to a cited result": (
        "<!-- step -->\n$$a = b$$\n\n$$b = c$$\ntests/test_x.py::test_y\n",
        [],
    ),
    "a step to nothing": ("<!-- step -->\n$$a = b$$\n\nWhy.\n", [2]),
    "a step past a heading": (
        "<!-- step -->\n$$a$$\n\n## 2\n\n$$b$$\ntests/test_x.py::test_y\n",
        [2],
    ),
    "a multi-line display": ("$$a\n= b\n= c$$\nso tests/test_x.py::test_y.\n", []),
    "an uncited claim": ("**Claim:** a = b.\n\nWhy.\n", [1]),
    "a cited claim": ("Known. **Result:** a = b\n(tests/test_x.py::test_y).\n", []),
    "in a code block": ("```\n$$a = b$$\n```\n", []),
    "unclosed at the end": ("Text\n$$a = b", [2]),
    "a label in inline code": ("Write `**Claim:**` before a claim.\n", []),
}


@pytest.mark.parametrize("case", CONVENTION_CASES)
def test_convention_finds_uncited_results(case):
    """The checker itself: which toy notes break the convention, by line."""
    text, expected = CONVENTION_CASES[case]
    assert [r.line for r in uncited_results(text)] == expected


def test_collected_tests_are_module_level_and_not_skipped(tmp_path):
    source = (
        "import pytest\n"
        "@pytest.mark.parametrize('x', [1])\n"
        "def test_param(x): pass\n"
        "def test_plain(): pass\n"
        "@pytest.mark.skip(reason='no')\n"
        "def test_skipped(): pass\n"
        "@pytest.mark.skipif(False, reason='no')\n"
        "def test_conditional(): pass\n"
        "def helper():\n"
        "    def test_nested(): pass\n"
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_toy.py").write_text(source)
    collected = _collected_tests("test_toy", tmp_path)
    assert collected == {"test_param", "test_plain", "test_conditional"}
    assert _collected_tests("test_missing", tmp_path) == set()
