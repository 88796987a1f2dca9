"""Autoencoder train step: the loop's scanned chunk vs one jitted step per Python iteration.

Both run the same update (:func:`genjax.train.standard_update`) on the MLP autoencoder of the
tour (digits 8x8, 8-d code, hidden 256); the reference dispatches a jitted single step per
batch from Python, the way a loop without ``lax.scan`` would. A 784-pixel variant shows the
same step at MNIST size.
"""

from __future__ import annotations

from benchmarks.harness import image_dataset, train_loop_candidates
from genjax import train
from genjax.recipes import autoencoder as recipe

STEPS = 100


def _bench(h, shape, batch: int) -> None:
    data = image_dataset(shape)
    task = recipe.make_task(data, {})
    config = train.TrainConfig(steps=STEPS, batch_size=batch, log_every=STEPS)
    state, tx = train.init_state(task, config, data.train)
    flops, candidates = train_loop_candidates(task, config, tx, state, data.train)
    group = f"AE train step {shape[0]}x{shape[1]}, batch {batch}, {STEPS} steps"
    for name, fn in candidates.items():
        h.measure(group, name, fn, state, items=STEPS * batch, unit="examples", flops=flops)


def run(h, quick: bool) -> None:
    for shape, batch in (((8, 8, 1), 64), ((28, 28, 1), 128)):
        _bench(h, shape, batch)
