"""Autoencoder train step: the loop's scanned chunk vs one jitted step per Python iteration.

Both run the same update (:func:`genjax.train.standard_update`) on the MLP autoencoder of the
tour (digits 8x8, 8-d code, hidden 256); the reference dispatches a jitted single step per
batch from Python, the way a loop without ``lax.scan`` would. A 784-pixel variant shows the
same step at MNIST size.
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks.harness import flops_of
from genjax import train
from genjax.data import Dataset, batch_indices, load_dataset
from genjax.recipes import autoencoder as recipe

STEPS = 100


def _dataset(shape) -> Dataset:
    if shape == (8, 8, 1):
        return load_dataset("digits")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4096, *shape)).astype(np.float32)
    y = np.zeros(len(x), np.int32)
    return Dataset("uniform", {"x": x, "y": y}, {"x": x[:256], "y": y[:256]}, 1, None)


def _bench(h, shape, batch: int) -> None:
    data = _dataset(shape)
    task = recipe.make_task(data, {})
    config = train.TrainConfig(steps=STEPS, batch_size=batch, log_every=STEPS)
    state, tx = train.init_state(task, config, data.train)
    device_data = jax.device_put(data.train)
    chunk = train.make_train_chunk(task, config, tx, device_data)
    n = len(data.train["x"])
    data_key = jax.random.key(1)

    @jax.jit
    def one(s):
        # The same work as one scan iteration: gather the step's batch, then update.
        idx = batch_indices(data_key, s.step, n, batch)
        b = {k: v[idx] for k, v in device_data.items()}
        return train.standard_update(task.loss, s, jax.random.key(0), b, tx, config.ema_decay)[0]

    def scanned(s):
        return chunk(jax.tree.map(lambda a: a.copy(), s))[1]["loss"]

    def python_loop(s):
        for _ in range(STEPS):
            s = one(s)
        return s.params

    step_flops = flops_of(one, state)
    flops = None if step_flops is None else step_flops * STEPS
    group = f"AE train step {shape[0]}x{shape[1]}, batch {batch}, {STEPS} steps"
    for name, fn in (
        ("genjax loop (lax.scan chunk)", scanned),
        ("python loop of jitted steps", python_loop),
    ):
        h.measure(group, name, fn, state, items=STEPS * batch, unit="examples", flops=flops)


def run(h, quick: bool) -> None:
    for shape, batch in (((8, 8, 1), 64), ((28, 28, 1), 128)):
        _bench(h, shape, batch)
