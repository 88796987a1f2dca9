"""The ``genjax`` command as a user runs it: subprocesses that must write what they promise."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genjax.cli import main
from genjax.tour import CNN_STEPS

SCRIPT = shutil.which("genjax", path=str(Path(sys.executable).parent))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "genjax.cli"]


def _run(*args, cwd, check=True):
    out = subprocess.run(
        [*COMMAND, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"genjax {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def test_train_then_sample_writes_the_run_folder(tmp_path):
    run = tmp_path / "run"
    args = "train autoencoder --steps 40 --batch-size 32 --out".split()
    out = _run(*args, str(run), cwd=tmp_path)
    assert "test MSE per pixel" in out.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["steps"] == 40
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 40 and all("loss" in r for r in records)
    assert json.loads((run / "report.json").read_text())["baseline"] == "PCA, 8 components"
    assert (run / "loss.png").stat().st_size > 0
    assert any((run / "checkpoints").iterdir())
    out = _run("sample", str(run), "-n", "16", cwd=tmp_path)
    assert Path(out.stdout.strip()) == run / "samples" / "samples.png"
    assert (run / "samples" / "samples.png").stat().st_size > 0


def _tiny_classifier(run_dir):
    """A small digits CNN in ``run_dir``, so that a command only loads it."""
    from genjax.classifier import train_cnn_classifier
    from genjax.data import load_dataset

    train_cnn_classifier(
        load_dataset("digits"), steps=20, widths=(4, 8), strides=(1, 2), run_dir=run_dir
    )


def _fid_table(report: str) -> list[list[str]]:
    lines = report.splitlines()
    start = lines.index("## Image families ranked by FID")
    table = [line for line in lines[start:] if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]


def test_tour_quick_writes_the_report(tmp_path):
    _tiny_classifier(tmp_path / "tour" / "digits_cnn_quick")  # the tour loads the kept one
    _run("tour", "--quick", "--only", "autoencoder", "--out", "tour", cwd=tmp_path)
    report = (tmp_path / "tour" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| autoencoder |"))
    assert "PCA, 8 components" in row and "| yes |" in row
    assert (tmp_path / "tour" / "autoencoder" / "reconstructions.png").stat().st_size > 0
    floor, baseline, family = _fid_table(report)
    assert floor[:2] == ["floor", "360 training images (the floor)"]
    assert baseline[0] == "baseline" and "Gaussian mixture" in baseline[1]
    assert family[:2] == ["1", "autoencoder"]
    assert float(family[2]) < float(baseline[2])  # reconstructions beat mixture samples
    for cells in (floor, baseline, family):
        assert float(cells[2]) >= 0.0  # FID
        assert math.isfinite(float(cells[3].split(" ± ")[0]))  # KID
    assert "20 steps" in report and "`digits_cnn_quick`" in report  # the kept classifier


@pytest.mark.slow
def test_tour_quick_trains_the_classifier_and_ranks_the_image_families(tmp_path):
    _run("tour", "--quick", "--only", "autoencoder", "vae_digits", "--out", "tour", cwd=tmp_path)
    report = (tmp_path / "tour" / "report.md").read_text()
    rows = _fid_table(report)
    assert [r[0] for r in rows] == ["floor", "baseline", "1", "2"]
    assert {r[1] for r in rows[2:]} == {"autoencoder", "vae_digits"}
    fids = [float(r[2]) for r in rows[2:]]
    assert fids == sorted(fids)
    assert f"{CNN_STEPS['quick']} steps" in report
    assert (tmp_path / "tour" / "digits_cnn_quick" / "config.json").is_file()


# The error paths run in-process: the same ``main`` as the console script, without a start-up.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "nope"), "unknown recipe 'nope'; known recipes: "),
        (("train", "autoencoder", "--data", "nope"), "unknown data set"),
        (("sample", "missing_run"), "missing_run"),
        (("tour", "--only", "nope"), "unknown recipes"),
        (("interpret", "--data", "nope"), "unknown data set"),
        (("interpret", "--methods", "nope"), "unknown methods ['nope']"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code, err = exit_.code, str(exit_.code)
    else:
        err = capsys.readouterr().err
    assert code != 0
    assert message in err


def test_list_names_the_autoencoders(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("autoencoder", "denoising_autoencoder", "sparse_autoencoder"):
        assert name in out


def test_list_names_the_data_each_recipe_uses(capsys):
    assert main(["list"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert rows["autoencoder"] == "digits"
    assert rows["transformer_char_lm"] == rows["word2vec"] == "pydoc_topics"
    assert rows["style_transfer"] == "patterns" and rows["transformer_reverse"] == "digit_strings"


def test_train_and_sample_a_recipe_that_draws_its_own_batches(tmp_path, capsys):
    """A recipe on generated data trains for any step count (here 3, below log_every) and its
    run folder samples its token output as an array."""
    run = tmp_path / "reverse"
    args = ["train", "transformer_reverse", "--steps", "3", "--batch-size", "8"]
    assert main([*args, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "train: 3 steps of batch 8; adam" in out and "exact-match accuracy" in out
    assert json.loads((run / "config.json").read_text())["data"] == "digit_strings"
    assert main(["sample", str(run), "-n", "2"]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path == run / "samples" / "samples.npy"
    assert np.load(path).shape == (2, 2, 9)


def test_interpret_writes_the_overlay_png(tmp_path, capsys):
    run = tmp_path / "cnn"
    _tiny_classifier(run)
    args = ["interpret", "--classifier", str(run), "--out", str(tmp_path / "out")]
    assert main([*args, "--methods", "grad_cam", "guided_backprop"]) == 0
    png = tmp_path / "out" / "interpret.png"
    assert capsys.readouterr().out.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
