"""The run folder in-process: lock, resume checks, history, metrics trimming, corrupt files."""

import dataclasses
import errno
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import linear_data, linear_task

from genjax import recipes, runfolder, train

CONFIG = train.TrainConfig(
    steps=100, batch_size=32, lr=0.05, log_every=20, checkpoint_every=20, ema_decay=0.9
)
INFO = {"recipe": "linear", "data": "linear", "options": {"d": 4}}


def _fit(run_dir, config=CONFIG, info=INFO, task=None, **kw):
    arrays, _ = linear_data()
    task = task or linear_task()
    return train.fit(task, arrays, config, run_dir=run_dir, run_info=info, progress=False, **kw)


def snapshot(folder):
    """Every file under ``folder`` by relative path, with its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def metric_lines(run_dir):
    """``metrics.jsonl`` without the wall-clock ``time`` field."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its final state and metric lines."""
    run_dir = tmp_path_factory.mktemp("reference")
    state = _fit(run_dir)
    return state, metric_lines(run_dir)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run folder stopped at step 40 of 100 (checkpoints 20 and 40)."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    _fit(run_dir, stop_after=40)
    return run_dir


def copy_of(stopped, tmp_path):
    """A private copy of the ``stopped`` folder."""
    return Path(shutil.copytree(stopped, tmp_path / "run"))


def assert_same_run(state, run_dir, reference):
    ref_state, ref_lines = reference
    for a, b in zip(jax.tree.leaves(ref_state), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert metric_lines(run_dir) == ref_lines


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    with runfolder.lock(tmp_path) as path:
        owner = json.loads(path.read_text())
        assert owner == {"pid": os.getpid(), "host": os.uname().nodename}
        with pytest.raises(runfolder.RunLocked, match=rf"in use by pid {os.getpid()} on"):
            with runfolder.lock(tmp_path):
                pass
    assert not path.exists()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)
    path.write_text(json.dumps({"pid": pid, "host": os.uname().nodename}))
    with pytest.warns(UserWarning, match=rf"stale lock of dead pid {pid}"):
        with runfolder.lock(tmp_path):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_fit_refuses_a_locked_folder_untouched(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    before = snapshot(run)
    with runfolder.lock(run):
        with pytest.raises(runfolder.RunLocked, match=str(run)):
            _fit(run)
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "change, named",
    [
        ({"info": {**INFO, "recipe": "other"}}, "recipe 'linear' -> 'other'"),
        ({"info": {**INFO, "options": {"d": 5}}}, "options"),
        ({"config": dataclasses.replace(CONFIG, seed=3)}, "seed 0 -> 3"),
        ({"config": dataclasses.replace(CONFIG, batch_size=16)}, "batch_size 32 -> 16"),
        ({"config": dataclasses.replace(CONFIG, log_every=10)}, "log_every 20 -> 10"),
        ({"config": dataclasses.replace(CONFIG, steps=20)}, "at step 40: steps=20"),
    ],
)
def test_resume_with_another_run_is_refused_untouched(stopped, tmp_path, change, named):
    run = copy_of(stopped, tmp_path)
    before = snapshot(run)
    with pytest.raises(runfolder.ConfigMismatch, match=named) as err:
        _fit(run, **change)
    assert str(run) in str(err.value) and "\n" not in str(err.value)
    assert snapshot(run) == before


def test_resume_with_other_data_is_refused_untouched(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    before = snapshot(run)
    arrays, _ = linear_data(seed=1)
    with pytest.raises(runfolder.ConfigMismatch, match="train_data_sha256"):
        train.fit(linear_task(), arrays, CONFIG, run_dir=run, run_info=INFO, progress=False)
    assert snapshot(run) == before


def test_resume_with_other_shapes_is_refused_untouched(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    before = snapshot(run)
    base = linear_task()

    def init(key, batch):
        return {"w": jnp.zeros((batch["x"].shape[1], 1))}

    def loss(params, key, batch):
        return base.loss({"w": params["w"][:, 0]}, key, batch)

    with pytest.raises(runfolder.ConfigMismatch, match=r"params/w \(4,\) -> \(4, 1\)"):
        _fit(run, task=train.Task(init=init, loss=loss))
    assert snapshot(run) == before


def test_extending_a_run_adds_a_history_segment(tmp_path):
    _fit(tmp_path, config=dataclasses.replace(CONFIG, steps=60))
    before = snapshot(tmp_path)
    _fit(tmp_path, config=dataclasses.replace(CONFIG, steps=60, lr=0.01))  # nothing to train
    assert snapshot(tmp_path) == before
    state = _fit(tmp_path, config=dataclasses.replace(CONFIG, steps=100, lr=0.01))
    assert int(state.step) == 100
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["train"]["steps"] == 60 and record["train"]["lr"] == 0.05
    assert [(s["from_step"], s["steps"], s["lr"]) for s in record["history"]] == [
        (0, 60, 0.05),
        (60, 100, 0.01),
    ]
    config, info = train.read_config(tmp_path)
    assert (config.steps, config.lr) == (100, 0.01) and "history" not in info
    assert [x["step"] for x in metric_lines(tmp_path)] == [20, 40, 60, 80, 100]


def test_resume_trims_metrics_past_the_checkpoint(stopped, tmp_path, reference):
    """Lines past the restored step (a crash after the metrics write, before the checkpoint
    commits) and a half-written line are dropped; the resumed run equals the uninterrupted
    one."""
    run = copy_of(stopped, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 60, "loss": 1.0}) + "\n" + '{"step": 8')
    state = _fit(run)
    assert_same_run(state, run, reference)


def test_trim_metrics_is_a_no_op_when_nothing_is_past(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 20}\n{"step": 40}\n')
    inode = path.stat().st_ino
    runfolder.trim_metrics(path, 40)
    assert path.stat().st_ino == inode
    runfolder.trim_metrics(path, 20)
    assert path.read_text() == '{"step": 20}\n'
    path.write_text('{"step": 20}\nnot json\n')
    with pytest.raises(runfolder.CorruptFile, match=r"metrics\.jsonl holds a line"):
        runfolder.trim_metrics(path, 40)


def _corrupt(run_dir, step, how="truncate"):
    """Truncate checkpoint ``step``'s data files, overwrite every data file (the per-process
    ones too) with random bytes, or empty its ``_METADATA``."""
    where = run_dir / "checkpoints" / str(step) / "default"
    if how == "empty_metadata":
        (where / "_METADATA").write_text("")
        return
    if how == "overwrite":
        paths = glob.glob(str(where / "**" / "d" / "*"), recursive=True)
        assert paths
        for path in paths:
            with open(path, "wb") as f:
                f.write(np.random.default_rng(0).bytes(100))
        return
    for path in glob.glob(str(where / "d" / "*")):
        with open(path, "r+b") as f:
            f.truncate(10)


@pytest.mark.parametrize("how", ["truncate", "overwrite", "empty_metadata"])
def test_corrupt_latest_checkpoint_falls_back(tmp_path, reference, how):
    _fit(tmp_path, stop_after=60)
    _corrupt(tmp_path, 60, how)
    with pytest.warns(UserWarning, match="checkpoint 60 is corrupt"):
        state = _fit(tmp_path)
    assert_same_run(state, tmp_path, reference)
    assert (tmp_path / "corrupt_checkpoints" / "60").is_dir()


def test_no_intact_checkpoint_is_refused_untouched(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    for step in (20, 40):
        _corrupt(run, step)
    before = snapshot(run)
    with (
        pytest.warns(UserWarning),
        pytest.raises(runfolder.NoIntactCheckpoint, match=str(run)),
    ):
        _fit(run)
    assert snapshot(run) == before


def test_garbage_config_json_is_refused_untouched(tmp_path):
    _fit(tmp_path, stop_after=20)
    (tmp_path / "config.json").write_text("{ not json")
    before = snapshot(tmp_path)
    match = r"config\.json is not valid JSON"
    with pytest.raises(runfolder.CorruptFile, match=match):
        _fit(tmp_path)
    with pytest.raises(runfolder.CorruptFile, match=match):
        train.read_config(tmp_path)
    assert snapshot(tmp_path) == before


def test_restore_without_checkpoints_creates_nothing(tmp_path):
    fields = {f.name: getattr(CONFIG, f.name) for f in dataclasses.fields(CONFIG)}
    record = {"train": fields, "recipe": "autoencoder", "data": "digits", "data_dir": None}
    (tmp_path / "config.json").write_text(json.dumps({**record, "options": {}}))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        recipes.restore(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def _diverging_task(at):
    """The linear task whose loss turns NaN after step ``at``."""
    base = linear_task()

    def update(state, key, batch, tx, ema_decay):
        state, metrics = train.standard_update(key, base.loss, state, batch, tx, ema_decay)
        loss = jnp.where(state.step > at, jnp.nan, metrics["loss"])
        return state, {**metrics, "loss": loss}

    return train.Task(init=base.init, loss=base.loss, update=update)


def test_divergence_names_the_last_good_checkpoint(tmp_path):
    with pytest.raises(train.TrainingDiverged) as err:
        _fit(tmp_path, task=_diverging_task(50))
    message = str(err.value)
    assert "metric 'loss' became nan at step 51" in message
    assert f"last good checkpoint is step 40 in {tmp_path}" in message
    assert f"genjax train linear --out {tmp_path} --lr 0.005" in message
    assert [x["step"] for x in metric_lines(tmp_path)] == [20, 40]
    state = _fit(tmp_path, config=dataclasses.replace(CONFIG, lr=0.005))
    assert int(state.step) == 100
    history = json.loads((tmp_path / "config.json").read_text())["history"]
    assert [(s["from_step"], s["lr"]) for s in history] == [(0, 0.05), (40, 0.005)]


@pytest.mark.parametrize("fault", ["interrupt", "enospc_metrics", "enospc_checkpoint"])
def test_stopped_fit_leaves_a_consistent_folder(tmp_path, reference, monkeypatch, fault):
    """An interrupt or a full disk at step 60: pending checkpoints flushed, metrics trimmed to
    the newest checkpoint (40), the error raised; resuming gives the uninterrupted run."""
    append, save = train._append_metrics, train.checkpoints.CheckpointManager.save

    def full_append(path, record):
        if record["step"] == 60:
            if fault == "interrupt":
                raise KeyboardInterrupt
            if fault == "enospc_metrics":
                with open(path, "a") as f:
                    f.write('{"step": 6')
                raise OSError(errno.ENOSPC, "No space left on device")  # names no file
        append(path, record)

    def full_save(self, step, tree):
        if step == 60:
            raise OSError(errno.ENOSPC, "No space left on device")
        save(self, step, tree)

    monkeypatch.setattr(train, "_append_metrics", full_append)
    monkeypatch.setattr(train.checkpoints.CheckpointManager, "save", full_save)
    if fault == "interrupt":
        with pytest.raises(train.TrainingInterrupted, match="last checkpoint is step 40") as err:
            _fit(tmp_path)
        assert err.value.step == 40
    else:
        with pytest.raises(OSError) as err:
            _fit(tmp_path)
        assert err.value.errno == errno.ENOSPC and str(tmp_path) in str(err.value)
    assert [x["step"] for x in metric_lines(tmp_path)] == [20, 40]
    assert train.checkpoints.CheckpointManager(tmp_path / "checkpoints").latest_step() == 40
    assert not (tmp_path / "lock").exists()
    monkeypatch.undo()
    assert_same_run(_fit(tmp_path), tmp_path, reference)


def test_plan_resume_drops_segments_the_checkpoint_does_not_hold():
    """A segment recorded from step 60 is dropped when the run resumes from checkpoint 40 (its
    newer checkpoints were corrupt); a change from 40 becomes the new segment."""
    fields = {f.name: getattr(CONFIG, f.name) for f in dataclasses.fields(CONFIG)}
    saved = runfolder.new_record(fields, INFO)
    saved["history"].append({"from_step": 60, "steps": 200, "lr": 0.05, "checkpoint_every": 20})
    same = runfolder.plan_resume("r", saved, {**fields, "steps": 200}, INFO, 40)
    assert [seg["from_step"] for seg in same["history"]] == [0, 40]
    assert runfolder.plan_resume("r", saved, {**fields, "steps": 200}, INFO, 60) is None
    assert runfolder.plan_resume("r", same, {**fields, "steps": 200}, INFO, 40) is None
    back = runfolder.plan_resume("r", saved, fields, INFO, 40)
    assert back["history"] == saved["history"][:1]
    lower = runfolder.plan_resume("r", saved, {**fields, "steps": 200, "lr": 0.01}, INFO, 60)
    assert [(seg["from_step"], seg["lr"]) for seg in lower["history"]] == [(0, 0.05), (60, 0.01)]


def test_trim_metrics_truncates_in_place_when_the_disk_is_full(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 20}\n{"step": 40}\n')

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    runfolder.trim_metrics(path, 20)
    assert path.read_text() == '{"step": 20}\n'
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


def test_interrupt_without_a_run_folder(monkeypatch):
    def interrupt(metrics):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_summarise", interrupt)
    arrays, _ = linear_data()
    with pytest.raises(train.TrainingInterrupted, match="nothing was saved") as err:
        train.fit(linear_task(), arrays, CONFIG, progress=False)
    assert err.value.step == 0
