"""Orbax checkpoints of a training state, written atomically and restored exactly.

Orbax writes each step into a temporary folder and renames it into place once complete, so a
crash mid-write leaves the previous checkpoint as the latest one; no pickle is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["CheckpointManager"]


class CheckpointManager:
    """Save and restore a pytree by step number under ``directory``.

    Args:
      directory: the ``checkpoints/`` folder of a run.
      max_to_keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None`` when there is none."""
        return self._manager.latest_step()

    def save(self, step: int, tree: Any) -> None:
        """Write ``tree`` as checkpoint ``step`` (atomically)."""
        self._manager.save(step, args=ocp.args.StandardSave(tree))

    def restore(self, step: int, like: Any) -> Any:
        """Read checkpoint ``step`` into the structure, shapes and dtypes of ``like``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest(self, like: Any) -> Any:
        """The newest checkpoint shaped like ``like``, or ``like`` itself when there is none."""
        step = self.latest_step()
        return like if step is None else self.restore(step, like)

    def wait(self) -> None:
        """Block until every pending write is on disk."""
        self._manager.wait_until_finished()
