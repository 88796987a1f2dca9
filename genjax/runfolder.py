"""A run folder (``config.json``, ``metrics.jsonl``, ``checkpoints/``, samples): one owner at a
time, a record that is never rewritten behind the user's back, and metrics that match the
checkpoints.

* **Lock.** :func:`lock` holds ``lock`` inside the folder (an exclusive ``flock`` on a file
  holding the owner's pid and host) for as long as :func:`genjax.train.fit` writes. A lock
  left by a process that died is taken over with a warning; a live one is :class:`RunLocked`.
* **Record.** ``config.json`` holds the run's first :class:`~genjax.train.TrainConfig`
  (``"train"``), the caller's facts (recipe, data set, options) and ``"history"``, one segment
  per stretch of training: ``{"from_step": k, <the fields below>}``. Resuming compares the
  saved record with the new one before anything is written (:func:`plan_resume`):

  - may change, recorded as a new segment from the restored step: :data:`MUTABLE_TRAIN`
    (``steps``, to extend a run or end it earlier, never below the restored step; ``lr``, to
    carry on at a lower rate after a divergence; ``checkpoint_every``) and
    :data:`MUTABLE_INFO` (``data_dir``, where the same data set lives);
  - must match, else :class:`ConfigMismatch` naming every field that differs: everything
    else (recipe, data set, options, seed, batch size, optimiser and its constants, schedule,
    clipping, EMA, ``log_every``, the training data's digest ``train_data_sha256`` that
    :func:`genjax.train.fit` records), and the shapes of the saved state (checked against the
    checkpoint's metadata in :func:`restore_newest`).

  A folder without any checkpoint holds no training yet, so a new record replaces its own.
* **Metrics.** ``metrics.jsonl`` holds one line per logged step of the run the checkpoints
  describe: :func:`trim_metrics` drops the lines past a step by writing a temporary file and
  renaming it into place (or, when the disk is full, truncating the file in place).
* **Checkpoints.** :func:`restore_newest` restores the newest intact checkpoint, warning about
  each corrupt one it skips (naming its step); none intact is :class:`NoIntactCheckpoint`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from genjax.checkpoints import flat_shapes

__all__ = [
    "MUTABLE_INFO",
    "MUTABLE_TRAIN",
    "ConfigMismatch",
    "CorruptFile",
    "NoIntactCheckpoint",
    "RunFolderError",
    "RunLocked",
    "current_settings",
    "lock",
    "new_record",
    "plan_resume",
    "read_record",
    "restore_newest",
    "trim_metrics",
    "write_record",
]

MUTABLE_TRAIN = ("steps", "lr", "checkpoint_every")
"""``TrainConfig`` fields a resumed run may change (recorded as a new history segment)."""

MUTABLE_INFO = ("data_dir",)
"""``run_info`` facts a resumed run may change (recorded as a new history segment)."""

_LOCK_NAME = "lock"


class RunFolderError(Exception):
    """A run folder cannot be used as asked; the one-line message names the folder or file."""


class RunLocked(RunFolderError):
    """Another live process owns the run folder (its pid and host are named)."""


class ConfigMismatch(RunFolderError):
    """Resuming would change what the saved run is; the message names every differing field."""


class NoIntactCheckpoint(RunFolderError):
    """Every checkpoint of the run folder is corrupt or partial."""


class CorruptFile(RunFolderError):
    """A file of the run folder (``config.json``, ``metrics.jsonl``) cannot be parsed."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def lock(run_dir: str | Path) -> Iterator[Path]:
    """Own ``run_dir`` for the duration of the ``with`` block; yields the lock file's path.

    The lock is an exclusive ``flock`` on ``run_dir/lock``, which holds ``{"pid", "host"}``;
    the kernel drops the flock when its process dies, so a lock file left by a killed run is
    taken over with a warning naming the dead pid. The file is removed on exit.

    Raises:
      RunLocked: another live process holds the lock.
    """
    path = Path(run_dir) / _LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
            raise RunLocked(f"{run_dir} is in use by {who} (lock file {path})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the owner removed the file between our open and flock: try again
    try:
        owner = _read_owner(fd)
        host = socket.gethostname()
        pid = owner.get("pid")
        if pid is not None and pid != os.getpid():
            if owner.get("host") == host and not _pid_alive(pid):
                whose = f"dead pid {pid} on {host}"
            else:
                whose = f"pid {pid} on {owner.get('host', '?')}, which no longer holds it"
            warnings.warn(f"{path}: taking over the stale lock of {whose}", stacklevel=3)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host}).encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``run_dir/config.json`` as a dict, ``None`` when there is none.

    Raises:
      CorruptFile: the file is not a JSON object with a ``"train"`` entry.
    """
    path = Path(run_dir) / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptFile(
            f"{path} is not valid JSON ({err}); restore it or start a new folder"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("train"), dict):
        raise CorruptFile(f"{path} has no 'train' section: it is not a genjax run record")
    return record


def current_settings(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(train fields, facts)`` in force at the end of ``record``'s history."""
    train = dict(record["train"])
    info = {k: v for k, v in record.items() if k not in ("train", "history")}
    for segment in record.get("history", []):
        for k, v in segment.items():
            if k in MUTABLE_TRAIN:
                train[k] = v
            elif k in MUTABLE_INFO:
                info[k] = v
    return train, info


def _segment(step: int, train: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    seg = {"from_step": step, **{k: train[k] for k in MUTABLE_TRAIN if k in train}}
    return {**seg, **{k: info[k] for k in MUTABLE_INFO if k in info}}


def new_record(train: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The record of a run starting at step 0 with these fields and facts."""
    train, info = _jsonable(dict(train)), _jsonable(dict(info))
    return {"train": train, **info, "history": [_segment(0, train, info)]}


def plan_resume(
    run_dir: str | Path,
    saved: Mapping[str, Any],
    train: Mapping[str, Any],
    info: Mapping[str, Any],
    step: int,
) -> dict[str, Any] | None:
    """Check a resume at checkpoint ``step`` against the ``saved`` record; returns the record to
    write (a new history segment from ``step``), or ``None`` when it stays as it is.

    Raises:
      ConfigMismatch: a field outside :data:`MUTABLE_TRAIN`/:data:`MUTABLE_INFO` differs, or
        ``steps`` is below ``step``.
    """
    old_train, old_info = current_settings(saved)
    train, info = _jsonable(dict(train)), _jsonable(dict(info))
    differ = []
    for name in sorted(set(old_info) | set(info)):
        if name not in MUTABLE_INFO and old_info.get(name) != info.get(name):
            differ.append(f"{name} {old_info.get(name)!r} -> {info.get(name)!r}")
    for name in sorted(set(old_train) | set(train)):
        if name not in MUTABLE_TRAIN and old_train.get(name) != train.get(name):
            differ.append(f"{name} {old_train.get(name)!r} -> {train.get(name)!r}")
    if differ:
        raise ConfigMismatch(
            f"{run_dir} holds a different run: {'; '.join(differ)} (only "
            f"{', '.join(MUTABLE_TRAIN + MUTABLE_INFO)} may change on resume; use a new folder)"
        )
    if train["steps"] < step:
        raise ConfigMismatch(
            f"{run_dir} is at step {step}: steps={train['steps']} cannot undo training "
            "(give steps >= the restored step, or use a new folder)"
        )
    if train["steps"] == step:
        return None  # nothing to train
    # Segments after `step` describe training the restored checkpoint does not hold.
    history = list(saved.get("history") or [_segment(0, saved["train"], saved)])
    kept = [seg for seg in history if seg.get("from_step", 0) <= step] or history[:1]
    past_train, past_info = current_settings({**saved, "history": kept})
    changed = any(past_train.get(k) != train.get(k) for k in MUTABLE_TRAIN) or any(
        past_info.get(k) != info.get(k) for k in MUTABLE_INFO
    )
    if changed:
        before = [seg for seg in kept if seg.get("from_step", 0) < step] or kept[:1]
        return {**saved, "history": [*before, _segment(step, train, info)]}
    return None if kept == history else {**saved, "history": kept}


def write_record(run_dir: str | Path, record: Mapping[str, Any]) -> None:
    """Write ``record`` as ``run_dir/config.json`` atomically (temporary file, then rename)."""
    path = Path(run_dir) / "config.json"
    tmp = path.with_name("config.json.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def trim_metrics(path: str | Path, step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` at ``path`` whose step is at most ``step``.

    A last line without its newline (a write cut short) is dropped too. The kept lines are
    written to a temporary file renamed into place; when that write fails for lack of space the
    file is truncated in place instead (which needs none). Nothing is written when nothing is
    dropped.

    Raises:
      CorruptFile: a complete line is not a JSON record with a ``"step"``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    keep = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            line_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            raise CorruptFile(
                f"{path} holds a line that is not a metrics record: {line[:60]!r}"
            ) from None
        if line_step > step:
            break
        keep += len(line)
    if keep == len(data):
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data[:keep])
        os.replace(tmp, path)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        os.truncate(path, keep)
    finally:
        tmp.unlink(missing_ok=True)


# Orbax, TensorStore and JSON raise many types (a bare Exception for unreadable array data).
_RESTORE_ERRORS = (Exception,)


def restore_newest(manager: Any, like: Any, run_dir: str | Path) -> tuple[Any, int | None, list]:
    """Restore the newest intact checkpoint of ``manager`` (a
    :class:`genjax.checkpoints.CheckpointManager`) into the structure of ``like``.

    Returns:
      ``(state, step, bad)``: the restored state (``like`` when there is no checkpoint), its
      step (``None`` when none) and the steps of the newer checkpoints that were corrupt.

    Raises:
      ConfigMismatch: the newest readable checkpoint holds arrays of other shapes or another
        structure than ``like`` (the model changed).
      NoIntactCheckpoint: there are checkpoints and none of them restores.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    bad = []
    for step in steps:
        try:
            saved = manager.shapes(step)
        except _RESTORE_ERRORS:
            saved = None
        if saved:
            _check_shapes(run_dir, step, saved, like)
        try:
            state = manager.restore(step, like)
        except _RESTORE_ERRORS as err:
            warnings.warn(
                f"{run_dir}: checkpoint {step} is corrupt or partial ({type(err).__name__}: "
                f"{str(err).split(':')[0][:60]}); trying the one before",
                stacklevel=2,
            )
            bad.append(step)
            continue
        return state, step, bad
    if steps:
        raise NoIntactCheckpoint(
            f"{run_dir}: none of the checkpoints {sorted(steps)} restores (all corrupt or "
            "partial); start a new folder"
        )
    return like, None, bad


def _check_shapes(run_dir, step: int, have: Mapping[str, tuple], like: Any) -> None:
    want = flat_shapes(like)
    keys = sorted(set(want) | set(have))
    differ = [f"{k} {have.get(k)} -> {want.get(k)}" for k in keys if want.get(k) != have.get(k)]
    if not differ:
        return
    shown = "; ".join(differ[:3]) + (f"; and {len(differ) - 3} more" if len(differ) > 3 else "")
    raise ConfigMismatch(
        f"{run_dir}: checkpoint {step} holds a model of other shapes ({shown}); use a new folder"
    )
