"""Every bad command-line input ends in one line ``genjax: error: ...`` on stderr that names the
culprit, and the exit code of docs/cli.md: 1 bad input, 2 usage, 3 run folder, 4 training
diverged, 5 storage full, 130 interrupted.

The table runs in-process (``genjax.cli.main``, the console script's entry point); the
subprocess tests check that nothing else, such as a traceback, reaches the terminal.
"""

import errno
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genjax import recipes, runfolder, train
from genjax.cli import main

SCRIPT = shutil.which("genjax", path=str(Path(sys.executable).parent))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "genjax.cli"]
TRAIN = ("train", "autoencoder", "--out", "{tmp}/run")

# (arguments, exit code, text the single stderr line must contain); {tmp} is the test's folder
CASES = [
    # usage (argparse): zero, negative or non-numeric flags, no command
    (("train", "autoencoder", "--steps", "0"), 2, "argument --steps: must be an integer > 0"),
    (("train", "autoencoder", "--steps", "-5"), 2, "argument --steps: must be an integer > 0"),
    (("train", "autoencoder", "--steps", "1.5"), 2, "argument --steps: must be an integer > 0"),
    (("train", "autoencoder", "--batch-size", "0"), 2, "argument --batch-size: must be an"),
    (("train", "autoencoder", "--lr", "0"), 2, "argument --lr: must be a number > 0, got '0'"),
    (("train", "autoencoder", "--lr", "-0.1"), 2, "argument --lr: must be a number > 0"),
    (("train", "autoencoder", "--lr", "nan"), 2, "argument --lr: must be a number > 0"),
    (("train", "autoencoder", "--seed", "-1"), 2, "argument --seed: must be an integer >= 0"),
    (("sample", "run", "-n", "0"), 2, "argument -n: must be an integer > 0"),
    (("stylize", "shapes", "checks", "--size", "0"), 2, "argument --size: must be an integer"),
    (("stylize", "shapes", "checks", "--steps", "0"), 2, "argument --steps: must be an integer"),
    (("stylize", "shapes", "checks", "--lr", "0"), 2, "argument --lr: must be a number > 0"),
    (("stylize", "shapes", "checks", "--tv-weight", "-1"), 2, "argument --tv-weight: must be"),
    (("interpret", "--steps", "0"), 2, "argument --steps: must be an integer > 0"),
    (("train", "autoencoder", "--devices", "some"), 2, "argument --devices: invalid choice"),
    ((), 2, "the following arguments are required: command"),
    (("nope",), 2, "invalid choice: 'nope'"),
    # bad input: options, names, data
    ((*TRAIN, "--option", "nosuchkey=5"), 1, "--option nosuchkey: recipe 'autoencoder' has no"),
    ((*TRAIN, "--option", "nosuchkey=5"), 1, "known: arch, code_dim, hidden"),
    ((*TRAIN, "--option", "code_dim=2.7"), 1, "--option code_dim=2.7: code_dim must be an int"),
    ((*TRAIN, "--option", "code_dim=-3"), 1, "--option code_dim=-3: code_dim must be an integer"),
    ((*TRAIN, "--option", "code_dim=0"), 1, "code_dim must be an integer >= 1"),
    ((*TRAIN, "--option", "code_dim=abc"), 1, "--option code_dim=abc: code_dim must be an int"),
    ((*TRAIN, "--option", "code_dim"), 1, "--option must be KEY=VALUE, got 'code_dim'"),
    (("train", "vae_digits", "--option", "hidden=[64,-1]"), 1, "hidden entries must be an int"),
    (("train", "vae_digits", "--option", "holdout=10"), 1, "holdout must be an integer in [0, 9]"),
    (("train", "transformer_char_lm", "--option", "dropout=2"), 1, "dropout must be a number in"),
    ((*TRAIN, "--data-dir", "{tmp}"), 1, "data set 'digits' is built in, reads no files"),
    (("train", "flow_two_moons", "--data-dir", "{tmp}"), 1, "data set 'two_moons' is built in"),
    (("train", "nope"), 1, "unknown recipe 'nope'; known recipes: "),
    ((*TRAIN, "--data", "nope"), 1, "unknown data set 'nope'"),
    ((*TRAIN, "--data", "mnist", "--data-dir", "{tmp}/garbage"), 1, "{tmp}/garbage/train-images"),
    ((*TRAIN, "--data", "mnist", "--data-dir", "{tmp}/truncated"), 1, "not a readable gzip file"),
    ((*TRAIN, "--data", "mnist", "--data-dir", "{tmp}/nothing"), 1, "{tmp}/nothing"),
    (("sample", "{tmp}/nothing"), 1, "{tmp}/nothing"),
    (("interpret", "--data-dir", "{tmp}"), 1, "data set 'digits' is built in"),
    (("interpret", "--methods", "nope"), 1, "unknown methods ['nope']"),
    (("stylize", "{tmp}/missing.png", "checks"), 1, "missing.png"),
    (("stylize", "shapes", "checks", "--size", "12"), 1, "image size (12, 12) must be a multiple"),
    (("tour", "--only", "convvae_digits", "--out", "{tmp}/t"), 1, "convvae_digits: no tour budget"),
    (("tour", "--only", "nope", "--out", "{tmp}/t"), 1, "unknown recipes ['nope']"),
    (("tour", "--quick", "--full"), 2, "argument --full: not allowed with argument --quick"),
    # run folder
    (("sample", "{tmp}/corrupt"), 3, "{tmp}/corrupt/config.json"),
]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The test's folder with a garbage and a truncated gzipped IDX set and a run folder whose
    ``config.json`` is garbage."""
    monkeypatch.chdir(tmp_path)
    images = np.zeros((4, 28, 28), np.uint8)
    payload = b"\x00\x00\x08\x03" + np.array(images.shape, ">u4").tobytes() + images.tobytes()
    for name, data in (("garbage", b"not gzip"), ("truncated", gzip.compress(payload)[:40])):
        (tmp_path / name).mkdir()
        for split in ("train", "t10k"):
            (tmp_path / name / f"{split}-images-idx3-ubyte.gz").write_bytes(data)
            (tmp_path / name / f"{split}-labels-idx1-ubyte.gz").write_bytes(data)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    return tmp_path


def _error_line(capsys) -> str:
    """The one line the command wrote to stderr."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("genjax: error: ")
    return lines[0]


@pytest.mark.parametrize(("args", "code", "culprit"), CASES)
def test_bad_input_exits_with_its_code_and_one_line(folder, capsys, args, code, culprit):
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    assert main([a.format(tmp=folder) for a in args]) == code
    assert culprit.format(tmp=folder) in _error_line(capsys)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # nothing written


# errors raised while training, by what they are: (exception, exit code, text of the line)
RAISED = [
    (train.TrainingDiverged("step 40: loss is nan; resume from step 20 with --lr 1e-3"), 4, "40"),
    (train.TrainingInterrupted(20, "interrupted; resume from step 20"), 130, "step 20"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (OSError(errno.ENOSPC, "No space left on device", "run/checkpoints"), 5, "run/checkpoints"),
    (runfolder.RunLocked("run is in use by pid 7 on host"), 3, "run is in use by pid 7"),
    (runfolder.ConfigMismatch("run holds recipe 'autoencoder', not 'vae'"), 3, "'autoencoder'"),
    (runfolder.NoIntactCheckpoint("run: no intact checkpoint"), 3, "run: no intact checkpoint"),
    (PermissionError(errno.EACCES, "Permission denied", "run/metrics.jsonl"), 1, "metrics.jsonl"),
]


@pytest.mark.parametrize(("error", "code", "culprit"), RAISED)
def test_training_errors_exit_with_their_code_and_one_line(
    tmp_path, monkeypatch, capsys, error, code, culprit
):
    def raise_(*args, **kwargs):
        raise error

    monkeypatch.setattr(recipes, "train_run", raise_)
    assert main(["train", "autoencoder", "--out", str(tmp_path / "run")]) == code
    assert culprit in _error_line(capsys)


def test_a_bug_is_not_hidden(tmp_path, monkeypatch):
    def raise_(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(recipes, "train_run", raise_)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "autoencoder", "--out", str(tmp_path / "run")])


def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    args = ["train", "transformer_reverse", "--steps", "2", "--batch-size", "4", "--out", str(run)]
    with runfolder.lock(run):
        assert main(args) == 3
    assert f"{run} is in use by pid" in _error_line(capsys)


def test_flags_left_out_are_the_recipes_defaults(monkeypatch, capsys):
    """A flag left out (None) leaves the recipe's default in place; one given is passed on."""
    seen = {}

    def train_run(*args, **kwargs):
        seen.update(kwargs)
        return recipes.Report("test MSE per pixel", 0.01, "PCA, 8 components", 0.02)

    monkeypatch.setattr(recipes, "train_run", train_run)
    assert main(["train", "autoencoder", "--steps", "7", "--option", "code_dim=3"]) == 0
    assert "autoencoder: test MSE per pixel = 0.01" in capsys.readouterr().out
    assert seen["steps"] == 7 and "lr" not in seen and "batch_size" not in seen
    assert seen["options"] == {"code_dim": 3}


def test_the_console_script_prints_one_line_and_no_traceback(tmp_path):
    (tmp_path / "idx").mkdir()
    for kind in ("images-idx3", "labels-idx1"):
        (tmp_path / "idx" / f"train-{kind}-ubyte.gz").write_bytes(b"not gzip")
    args = ["train", "autoencoder", "--data", "mnist", "--data-dir", "idx", "--out", "run"]
    out = subprocess.run(
        [*COMMAND, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "genjax: error: idx/train-images-idx3-ubyte.gz: not a readable gzip file "
        "(Not a gzipped file (b'no'))"
    ]


@pytest.mark.slow
def test_diverged_training_is_one_line_naming_the_step(tmp_path):
    args = ["train", "autoencoder", "--steps", "40", "--lr", "1e30", "--out", "run"]
    out = subprocess.run(
        [*COMMAND, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 4, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("genjax: error: ") and "step" in errors[0]
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
