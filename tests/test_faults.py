"""Fault injection on a run folder: a trainer in a subprocess is killed, interrupted, starved of
disk, raced, or resumed with another run; after each fault either the resumed run ends with the
parameters and ``metrics.jsonl`` of the uninterrupted one, or the command printed one error line
and left the folder byte for byte as it was. The command-line table is tests/test_cli_errors.py.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_runfolder import snapshot

TRAINER = r"""
import errno, json, os, signal, sys, time
sys.path.insert(0, {tests!r})
import jax, jax.numpy as jnp, numpy as np
from test_train import linear_data, linear_task
from genjax import runfolder, train
import orbax.checkpoint._src.path.atomicity as atomicity

run_dir, spec = sys.argv[1], json.loads(sys.argv[2])
# a shell starts background jobs with SIGINT ignored, and Python then keeps it ignored: restore
# the default handler (KeyboardInterrupt) so that the injected SIGINT behaves as a Ctrl-C
signal.signal(signal.SIGINT, signal.default_int_handler)
fault, at = spec.get("fault"), spec.get("at")
config = train.TrainConfig(
    steps=spec.get("steps", 100), batch_size=spec.get("batch_size", 32), lr=0.05, log_every=20,
    checkpoint_every=20, ema_decay=0.9, seed=0,
)
info = {{"recipe": spec.get("recipe", "linear"), "data": "linear", "options": {{}}}}
task = linear_task()
if spec.get("wide"):
    def init(key, batch):
        return {{"w": jnp.zeros((batch["x"].shape[1], 1))}}
    def loss(params, key, batch):
        return linear_task().loss({{"w": params["w"][:, 0]}}, key, batch)
    task = train.Task(init=init, loss=loss)

append = train._append_metrics
def faulty_append(path, record):
    if fault == "kill_before_metrics" and record["step"] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "enospc_metrics" and record["step"] == at:
        with open(path, "a") as f:
            f.write('{{"step": ')
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    append(path, record)
    print("logged", record["step"], flush=True)
    if fault == "kill_after_metrics" and record["step"] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "sigint" and record["step"] == at:
        os.kill(os.getpid(), signal.SIGINT)
    if fault == "pause" and record["step"] == at:
        open(os.path.join(run_dir, "..", "paused"), "w").close()
        while not os.path.exists(os.path.join(run_dir, "..", "go")):
            time.sleep(0.05)
    if fault == "slow":
        time.sleep(0.3)
train._append_metrics = faulty_append

save = train.checkpoints.CheckpointManager.save
def settled_save(self, step, tree):  # a paused trainer leaves no write in flight
    save(self, step, tree)
    if fault == "pause":
        self.wait()
train.checkpoints.CheckpointManager.save = settled_save

finalize = atomicity.AtomicRenameTemporaryPath.finalize
def faulty_finalize(self, *args, **kwargs):
    if self.get_final().name == str(at):
        if fault == "kill_in_checkpoint":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "enospc_checkpoint":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.get_final()))
    return finalize(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = faulty_finalize

arrays, _ = linear_data()
try:
    state = train.fit(
        task, arrays, config, run_dir=run_dir, run_info=info, progress=False,
        stop_after=spec.get("stop_after"),
    )
except BaseException as err:
    codes = [(runfolder.RunFolderError, 3), (train.TrainingDiverged, 4),
             (train.TrainingInterrupted, 130), (OSError, 5)]
    code = next((c for kind, c in codes if isinstance(err, kind)), None)
    if code is None:
        raise
    print("genjax: error: " + " ".join(str(err).split()), file=sys.stderr)
    sys.exit(code)
np.save(os.path.join(run_dir, "..", "final.npy"), np.concatenate(
    [np.ravel(np.asarray(x)) for x in jax.tree.leaves(state)]).astype(np.float64))
"""

NOISE = ("WARNING: All log messages before absl::InitializeLog()",)
COUNTS = {"injected": 0, "recovered exactly": 0, "refused cleanly": 0}


def _trainer(tmp_path, run_dir, **spec):
    script = tmp_path / "trainer.py"
    if not script.exists():
        script.write_text(TRAINER.format(tests=str(Path(__file__).parent)))
    return [sys.executable, str(script), str(run_dir), json.dumps(spec)]


def train_run(tmp_path, run_dir, **spec):
    """Run the trainer to its end or its fault; returns the CompletedProcess."""
    return subprocess.run(
        _trainer(tmp_path, run_dir, **spec), capture_output=True, text=True, timeout=300
    )


def metric_lines(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's final state (flattened) and metric lines."""
    tmp = tmp_path_factory.mktemp("reference")
    out = train_run(tmp, tmp / "run")
    assert out.returncode == 0, out.stderr
    return np.load(tmp / "final.npy"), metric_lines(tmp / "run")


def assert_recovers(tmp_path, run_dir, reference, fault_out, expect_code):
    """The faulty run ended as expected; a plain rerun equals the uninterrupted run."""
    COUNTS["injected"] += 1
    assert fault_out.returncode == expect_code, fault_out.stderr
    assert "Traceback" not in fault_out.stderr, fault_out.stderr
    if expect_code > 0:
        assert_one_error_line(fault_out)
    assert not (tmp_path / "final.npy").exists()
    out = train_run(tmp_path, run_dir)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "final.npy"), reference[0])
    assert metric_lines(run_dir) == reference[1]
    assert not (run_dir / "lock").exists()
    COUNTS["recovered exactly"] += 1
    return out


def assert_one_error_line(out):
    lines = [x for x in out.stderr.splitlines() if x and not x.startswith(NOISE)]
    errors = [x for x in lines if x.startswith("genjax: error: ")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    return errors[0]


def assert_refused(tmp_path, run_dir, before, out, code, *named):
    """The command printed one error line naming ``named`` and left the folder as it was."""
    COUNTS["injected"] += 1
    assert out.returncode == code, out.stderr
    line = assert_one_error_line(out)
    for part in named:
        assert part in line, line
    assert snapshot(run_dir) == before
    COUNTS["refused cleanly"] += 1


@pytest.mark.parametrize(
    "fault, code",
    [
        pytest.param(
            "kill_after_metrics",  # line logged, checkpoint not yet committed
            -signal.SIGKILL,
            marks=pytest.mark.slow,
        ),
        ("kill_in_checkpoint", -signal.SIGKILL),  # inside orbax's commit of step 60
        ("sigint", 130),
    ],
)
def test_fault_then_resume_equals_the_uninterrupted_run(tmp_path, reference, fault, code):
    run_dir = tmp_path / "run"
    out = train_run(tmp_path, run_dir, fault=fault, at=60)
    if fault == "sigint":
        line = assert_one_error_line(out)
        assert "interrupted: the last checkpoint is step 40" in line
        assert [x["step"] for x in metric_lines(run_dir)] == [20, 40]
    rerun = assert_recovers(tmp_path, run_dir, reference, out, code)
    if code == -signal.SIGKILL:
        assert "taking over the stale lock of dead pid" in rerun.stderr


def test_two_concurrent_writers(tmp_path, reference):
    """A second trainer on a folder in use refuses with one line and changes nothing; the first
    finishes as if alone."""
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        _trainer(tmp_path, run_dir, fault="pause", at=40),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "paused").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        before = snapshot(run_dir)
        second = train_run(tmp_path, run_dir)
        assert_refused(
            tmp_path, run_dir, before, second, 3, f"in use by pid {first.pid}", str(run_dir)
        )
        (tmp_path / "go").touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    np.testing.assert_array_equal(np.load(tmp_path / "final.npy"), reference[0])
    assert metric_lines(run_dir) == reference[1]


@pytest.mark.slow
def test_resume_with_another_recipe_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert train_run(tmp_path, run_dir, steps=40).returncode == 0
    before = snapshot(run_dir)
    out = train_run(tmp_path, run_dir, recipe="other")
    assert_refused(tmp_path, run_dir, before, out, 3, str(run_dir), "recipe 'linear' -> 'other'")


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault, code",
    [
        ("kill_before_metrics", -signal.SIGKILL),  # chunk done, nothing written
        ("enospc_checkpoint", 5),
        ("enospc_metrics", 5),
    ],
)
def test_more_faults_then_resume(tmp_path, reference, fault, code):
    run_dir = tmp_path / "run"
    out = train_run(tmp_path, run_dir, fault=fault, at=60)
    if code == 5:
        assert "No space left on device" in assert_one_error_line(out)
        assert [x["step"] for x in metric_lines(run_dir)] == [20, 40]
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[:2] == ["20", "40"]
    assert_recovers(tmp_path, run_dir, reference, out, code)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_external_signal_mid_run(tmp_path, reference, sig):
    """A signal from outside at an arbitrary moment (here after the second logged step)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _trainer(tmp_path, run_dir, fault="slow"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("logged 40"):
                break
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert_recovers(tmp_path, run_dir, reference, out, -sig if sig == signal.SIGKILL else 130)


def _corrupt(run_dir, step):
    for path in (run_dir / "checkpoints" / str(step) / "default" / "d").iterdir():
        path.write_bytes(b"\0" * 7)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_resumes_from_the_one_before(tmp_path, reference):
    run_dir = tmp_path / "run"
    assert train_run(tmp_path, run_dir, stop_after=60).returncode == 0
    (tmp_path / "final.npy").unlink()
    _corrupt(run_dir, 60)
    COUNTS["injected"] += 1
    out = train_run(tmp_path, run_dir)
    assert out.returncode == 0, out.stderr
    assert "checkpoint 60 is corrupt or partial" in out.stderr
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "final.npy"), reference[0])
    assert metric_lines(run_dir) == reference[1]
    COUNTS["recovered exactly"] += 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, named",
    [
        ("config", ["config.json is not valid JSON"]),
        ("all_checkpoints", ["none of the checkpoints [20, 40] restores"]),
        ("wide", ["params/w (4,) -> (4, 1)"]),
        ("batch_size", ["batch_size 32 -> 16"]),
        ("steps", ["at step 40: steps=20"]),
    ],
)
def test_damaged_or_changed_folder_is_refused(tmp_path, damage, named):
    run_dir = tmp_path / "run"
    assert train_run(tmp_path, run_dir, steps=40).returncode == 0
    spec = {}
    if damage == "config":
        (run_dir / "config.json").write_text('{"train": {"steps": 4')
    elif damage == "all_checkpoints":
        _corrupt(run_dir, 20)
        _corrupt(run_dir, 40)
    elif damage == "wide":
        spec = {"wide": True}
    elif damage == "batch_size":
        spec = {"batch_size": 16}
    else:
        spec = {"steps": 20}
    before = snapshot(run_dir)
    out = train_run(tmp_path, run_dir, **spec)
    assert_refused(tmp_path, run_dir, before, out, 3, str(run_dir), *named)


@pytest.mark.slow
def test_cli_resume_with_another_recipe_keeps_the_run(tmp_path):
    """``genjax train autoencoder`` then ``genjax train sparse_autoencoder`` on the same folder:
    refused with one line (exit 3), the folder unchanged and ``genjax sample`` still works; a
    shorter ``--steps`` or another ``--batch-size`` is refused the same way, and so is
    ``genjax sample`` once every checkpoint is corrupt."""
    from test_cli import _run

    run = tmp_path / "run"
    _run(*"train autoencoder --steps 40 --batch-size 32 --out".split(), str(run), cwd=tmp_path)
    before = snapshot(run)
    for args, named in [
        (("sparse_autoencoder", "--steps", "40", "--batch-size", "32"), "recipe 'autoencoder'"),
        (("autoencoder", "--steps", "20", "--batch-size", "32"), "at step 40: steps=20"),
        (("autoencoder", "--steps", "40", "--batch-size", "16"), "batch_size 32 -> 16"),
    ]:
        out = _run("train", *args, "--out", str(run), cwd=tmp_path, check=False)
        assert_refused(tmp_path, run, before, out, 3, str(run), named)
    out = _run("sample", str(run), "-n", "4", cwd=tmp_path)
    assert Path(out.stdout.strip()) == run / "samples" / "samples.png"
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir())
    for step in steps:
        _corrupt(run, step)
    before = snapshot(run)
    out = _run("sample", str(run), "-n", "4", cwd=tmp_path, check=False)
    assert_refused(tmp_path, run, before, out, 3, f"none of the checkpoints {steps} restores")


def test_zz_fault_table(capsys):
    """Prints how many faults this session injected, recovered exactly and refused cleanly."""
    with capsys.disabled():
        print("\nrun-folder faults:", ", ".join(f"{k} {v}" for k, v in COUNTS.items()))
    assert COUNTS["injected"] == COUNTS["recovered exactly"] + COUNTS["refused cleanly"]
