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
from genjax.data import Dataset, load_dataset
from genjax.recipes import autoencoder as recipe

STEPS = 100


def _dataset(shape) -> Dataset:
    if shape == (8, 8, 1):
        return load_dataset("digits")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4096, *shape)).astype(np.float32)
    y = np.zeros(len(x), np.int32)
    return Dataset("uniform", {"x": x, "y": y}, {"x": x[:256], "y": y[:256]}, 1, None)


def run(h, quick: bool) -> None:
    for shape, batch in (((8, 8, 1), 64), ((28, 28, 1), 128)):
        data = _dataset(shape)
        task = recipe.make_task(data, {})
        config = train.TrainConfig(steps=STEPS, batch_size=batch, log_every=STEPS)
        state, tx = train.init_state(task, config, data.train)
        chunk = train.make_train_chunk(task, config, tx, jax.device_put(data.train))
        group = f"AE train step {shape[0]}x{shape[1]}, batch {batch}, {STEPS} steps"

        def scanned(s):
            return chunk(jax.tree.map(lambda a: a.copy(), s))[1]["loss"]

        one = jax.jit(
            lambda s, b: train.standard_update(
                task.loss, s, jax.random.key(0), b, tx, config.ema_decay
            )[0]
        )
        b0 = {k: jax.numpy.asarray(v[:batch]) for k, v in data.train.items()}
        step_flops = flops_of(one, state, b0)
        train_step_flops = None if step_flops is None else step_flops * STEPS

        def python_loop(s):
            for _ in range(STEPS):
                s = one(s, b0)
            return s.params

        items = STEPS * batch
        h.measure(
            group,
            "genjax loop (lax.scan chunk)",
            scanned,
            state,
            items=items,
            unit="examples",
            flops=train_step_flops,
        )
        h.measure(
            group,
            "python loop of jitted steps",
            python_loop,
            state,
            items=items,
            unit="examples",
            flops=train_step_flops,
        )
