"""The package as a user meets it: lazy imports, the README's commands, CI running them."""

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import genjax

ROOT = Path(__file__).resolve().parents[1]


def test_every_listed_submodule_imports_and_every_module_is_listed():
    on_disk = {m.name for m in pkgutil.iter_modules(genjax.__path__) if not m.name.startswith("_")}
    assert set(genjax.__all__) - {"__version__"} == on_disk
    for name in on_disk:
        assert getattr(genjax, name) is importlib.import_module(f"genjax.{name}")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        genjax.nope  # noqa: B018


def test_import_genjax_is_lazy():
    code = "import sys, genjax; print(any(m.startswith(('flax', 'optax')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _quick_start() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", section, flags=re.S)


def test_readme_quick_start_has_two_commands_that_ci_runs():
    commands = _quick_start()
    assert len(commands) == 2, commands
    setup, tests = (c.strip() for c in commands)
    assert "python3 -m venv .venv" in setup and "genjax tour" in setup
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"\.venv/bin/pip install [^&\n]+", setup).group(0).strip()
    test_cmd = tests.split("&&")[-1].strip()
    assert install in ci, "CI must install exactly as the README says"
    assert test_cmd in ci, "CI must run the README's test command"
    assert "ruff check" in ci and "genjax tour --quick" in ci
