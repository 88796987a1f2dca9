"""Device meshes and batch-axis sharding.

The loop runs one jitted step function whatever the device count: parameters are replicated,
each batch is split along its leading axis over the mesh's ``"batch"`` axis, and XLA's SPMD
partitioner inserts the gradient all-reduce. One device and eight devices therefore compute the
same loss curve up to the order of floating-point summation.

Several hosts: call ``jax.distributed.initialize()`` in every process first; ``jax.devices()``
then lists every host's devices and :func:`make_mesh` spans them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["BATCH_AXIS", "batch_sharder", "make_mesh", "replicate", "shard_batch"]

BATCH_AXIS = "batch"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"batch"`` over ``devices`` (default: all devices, all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Split every array of ``batch`` along its leading axis over the mesh (host arrays in)."""
    return jax.device_put(dict(batch), NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))


def batch_sharder(mesh: Mesh, batch_size: int) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """A function for use inside ``jit`` that constrains a batch to be split over the mesh.

    Raises:
      ValueError: ``batch_size`` is not divisible by the number of devices.
    """
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the device count ({n})")
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))

    def constrain(batch):
        return {k: jax.lax.with_sharding_constraint(v, sharding) for k, v in batch.items()}

    return constrain
