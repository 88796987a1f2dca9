"""Orbax checkpoints of a training state, written atomically and restored exactly.

Orbax writes each step into a temporary folder and renames it into place once complete, so a
crash mid-write leaves the previous checkpoint as the latest one; no pickle is involved. The
folder is created by the first :meth:`CheckpointManager.save`, so reading a run folder never
creates ``checkpoints/``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointManager", "flat_shapes"]


def _key_name(entry: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"params/w": shape, ...}``: the shape of every array leaf of ``tree`` (a pytree, or
    the metadata tree of a checkpoint) by its path, as orbax stores it."""
    tree = flax.serialization.to_state_dict(tree)
    return {
        "/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", np.shape(leaf)))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


_ECHOES = ("Event loop is closed", "in background save thread", "Save Finalize thread")


class _WriteErrorEchoes(logging.Filter):
    """Drops orbax's log lines (with tracebacks) about a failed background write, and the
    ``Event loop is closed`` noise after it: the error itself reaches the caller of
    :meth:`CheckpointManager.save` or :meth:`CheckpointManager.wait`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(echo in record.getMessage() for echo in _ECHOES)


logging.getLogger("absl").addFilter(_WriteErrorEchoes())
_unraisable = sys.unraisablehook


def _drop_closed_loop(unraisable: Any) -> None:
    """Drops the ``RuntimeError: Event loop is closed`` that a TensorStore callback raises,
    after a failed read of a corrupt checkpoint, into the asyncio loop orbax already closed."""
    if not (
        isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"
    ):
        _unraisable(unraisable)


sys.unraisablehook = _drop_closed_loop


class CheckpointManager:
    """Save and restore a pytree by step number under ``directory``.

    Args:
      directory: the ``checkpoints/`` folder of a run.
      max_to_keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self._manager = None

    def _open(self, create: bool) -> ocp.CheckpointManager | None:
        if self._manager is None:
            if not create and not self.directory.is_dir():
                return None
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.max_to_keep, create=create, cleanup_tmp_directories=create
            )
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
            )
        return self._manager

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, oldest first."""
        manager = self._open(create=False)
        return [] if manager is None else sorted(manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: Any) -> None:
        """Write ``tree`` as checkpoint ``step`` (atomically, in the background)."""
        self._open(create=True).save(step, args=ocp.args.StandardSave(tree))

    def shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """:func:`flat_shapes` of checkpoint ``step``, read from its metadata."""
        metadata = self._open(create=False).item_metadata(step)
        return flat_shapes(getattr(metadata, "tree", metadata))

    def restore(self, step: int, like: Any) -> Any:
        """Read checkpoint ``step`` into the structure, shapes and dtypes of ``like``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._open(create=False).restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest(self, like: Any) -> Any:
        """The newest intact checkpoint shaped like ``like`` (a corrupt newer one is skipped
        with a warning, :func:`genjax.runfolder.restore_newest`), or ``like`` itself when there
        is none."""
        from genjax.runfolder import restore_newest

        return restore_newest(self, like, self.directory.parent)[0]

    def wait(self) -> None:
        """Block until every pending write is on disk; raises the error of a failed one."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending writes and release orbax's resources."""
        if self._manager is not None:
            self._manager.close()
