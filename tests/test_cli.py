"""The ``genjax`` command as a user runs it: subprocesses that must write what they promise."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.cli import (
    TOUR_CNN_STEPS,
    _image_samples,
    _keep_result,
    _kept_results,
    _quality_markdown,
    main,
)
from genjax.recipes import Report

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
    out = _run(
        "train",
        "autoencoder",
        "--steps",
        "40",
        "--batch-size",
        "32",
        "--out",
        str(run),
        cwd=tmp_path,
    )
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


def test_tour_results_are_kept_and_merged_by_mode(tmp_path):
    def report(value):
        return Report("m", np.float32(value), "b", 2.0, extra={"e": np.float64(value)})

    images = np.zeros((3, 8, 8, 1), np.float32)
    _keep_result(tmp_path / "vae_digits", True, report(1.0), 4.0, [], images)
    _keep_result(tmp_path / "autoencoder", True, report(0.5), 3.0, [tmp_path / "a.png"], None)
    _keep_result(tmp_path / "flow_digits", False, report(9.0), 5.0, [], images)  # full tour
    rows, samples = _kept_results(tmp_path, quick=True)
    assert [recipe.name for recipe, *_ in rows] == ["autoencoder", "vae_digits"]  # registry order
    (_, first, seconds, figs), (_, second, _, _) = rows
    assert first == report(0.5) and second.extra == {"e": 1.0} and seconds == 3.0
    assert figs == [tmp_path / "autoencoder" / "a.png"]
    assert list(samples) == ["vae_digits"] and samples["vae_digits"].shape == images.shape
    _keep_result(tmp_path / "vae_digits", True, report(0.25), 1.0, [], None)  # rerun, no images
    rows, samples = _kept_results(tmp_path, quick=True)
    assert rows[1][1].value == 0.25 and samples == {}
    assert [recipe.name for recipe, *_ in _kept_results(tmp_path, quick=False)[0]] == [
        "flow_digits"
    ]


def test_tour_report_only_rebuilds_the_report_from_kept_results(tmp_path):
    out = tmp_path / "tour"
    with pytest.raises(SystemExit, match="no quick tour results"):
        main(["tour", "--quick", "--report-only", "--out", str(out)])
    report = Report("test MSE per pixel", 0.0125, "PCA, 8 components", 0.0246)
    _keep_result(out / "autoencoder", True, report, 3.0, [], None)
    assert main(["tour", "--quick", "--report-only", "--out", str(out)]) == 0
    row = next(
        line for line in (out / "report.md").read_text().splitlines() if "autoencoder" in line
    )
    assert "| 0.0125 |" in row and "| yes |" in row


@pytest.mark.slow
def test_tour_quick_trains_the_classifier_and_ranks_the_image_families(tmp_path):
    _run("tour", "--quick", "--only", "autoencoder", "vae_digits", "--out", "tour", cwd=tmp_path)
    report = (tmp_path / "tour" / "report.md").read_text()
    rows = _fid_table(report)
    assert [r[0] for r in rows] == ["floor", "baseline", "1", "2"]
    assert {r[1] for r in rows[2:]} == {"autoencoder", "vae_digits"}
    fids = [float(r[2]) for r in rows[2:]]
    assert fids == sorted(fids)
    assert f"{TOUR_CNN_STEPS[True]} steps" in report
    assert (tmp_path / "tour" / "digits_cnn_quick" / "config.json").is_file()


def test_quality_table_ranks_by_fid_below_the_floor():
    def figures(fid):
        keys = ("kid", "kid_std", "precision", "recall", "inception_score")
        return {"fid": fid, **dict.fromkeys(keys, 0.5)}

    quality = {
        "figures": {
            "floor": figures(1.0),
            "baseline": figures(20.0),
            "a": figures(30.0),
            "b": figures(2.0),
            "c": None,
            "d": figures(9.0),
        },
        "classifier": "digits_cnn",
        "steps": 1500,
        "accuracy": 0.98,
        "n": 360,
        "subset": 180,
        "seconds": 1.0,
    }
    rows = _fid_table("\n".join(_quality_markdown(quality, ["a", "x", "b", "c", "d"], False)))
    assert [r[:2] for r in rows] == [
        ["floor", "360 training images (the floor)"],
        ["baseline", rows[1][1]],
        ["1", "b"],
        ["2", "d"],
        ["3", "a"],
        ["4", "c"],
    ]
    assert rows[-1][2] == "non-finite samples"


def test_image_samples_draws_only_images_of_the_data_shape():
    from genjax.data import Dataset
    from genjax.train import Task

    split = {"x": np.zeros((6, 8, 8, 1), np.float32), "y": np.zeros(6, np.int32)}
    data, n = Dataset("tiny", split, split, 1, 17), 6
    ran = []

    def text(params, key, num):  # traceable, not images: must never run on values
        ran.append(not isinstance(key, jax.core.Tracer))
        return jnp.zeros((num, 32), jnp.int32)

    def numpy_images(params, key, num):  # cannot be traced: run, then checked
        return np.full((num, *data.shape), float(np.asarray(params)), np.float32)

    def jax_images(params, key, num):
        return jax.random.uniform(key, (num, *data.shape)) * params

    key = jax.random.key(0)
    loss = lambda *a: (0.0, {})
    assert _image_samples(Task(init=None, loss=loss), 0.5, data, key) is None
    assert _image_samples(Task(init=None, loss=loss, sample=text), 0.5, data, key) is None
    assert ran == [False]
    drawn = _image_samples(Task(init=None, loss=loss, sample=numpy_images), 0.5, data, key)
    np.testing.assert_array_equal(drawn, np.full((n, *data.shape), 0.5, np.float32))
    drawn = _image_samples(Task(init=None, loss=loss, sample=jax_images), 0.5, data, key)
    assert drawn.shape == (n, *data.shape) and 0.0 <= drawn.min() and drawn.max() <= 0.5


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


def test_interpret_writes_the_overlay_png(tmp_path, capsys):
    run = tmp_path / "cnn"
    _tiny_classifier(run)
    args = ["interpret", "--classifier", str(run), "--out", str(tmp_path / "out")]
    assert main([*args, "--methods", "grad_cam", "guided_backprop"]) == 0
    png = tmp_path / "out" / "interpret.png"
    assert capsys.readouterr().out.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
