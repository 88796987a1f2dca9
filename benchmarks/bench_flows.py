"""RealNVP: exact log-likelihood and sampling throughput, and the train step's share of peak.

The model is the multi-scale RealNVP of ``flow_digits`` (2 scales, ResNet conditioners, logit
pre-processing; :data:`genjax.recipes.flows.IMAGE_DEFAULTS`) on 8x8 digits and, at MNIST size,
the same configuration on 28x28 images (random 8-bit images: the timing does not depend on
the values). Per size:

* ``log_prob``: :meth:`genjax.flows.RealNVP.log_prob` (forward pass + log-dets) on a batch of
  dequantised images, in images/s. This is the cost of one exact likelihood evaluation.
* ``sample``: :func:`genjax.flows.sample` (a normal draw + the inverse pass), in
  images/s. A flow samples in one network pass, unlike a diffusion chain.
* train step: the loop's scanned chunk (:func:`genjax.train.make_train_chunk`) running the
  recipe's update (dequantise, bits/dim loss, gradient, clipping, Adam on the recipe's full
  budget's rates, EMA), beside its reference, one jitted step per Python iteration
  (:func:`benchmarks.harness.train_loop_candidates`), with FLOPs from XLA's cost analysis of one
  step giving the fraction of the measured matmul peak; and beside the same flow, loss and
  update in PyTorch eager (:mod:`benchmarks.torch_flows`, a layer-for-layer replica with the
  same parameter count, checked when it is built) at 1 and 2 intra-op threads
  (:func:`benchmarks.harness.torch_rows`), whose rows use genjax's FLOPs.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from benchmarks.harness import image_dataset, torch_rows, train_loop_candidates
from genjax import flows as F
from genjax import recipes, train
from genjax.data import dequantize

EVAL_BATCH = 256
TRAIN_STEPS = {8: 20, 28: 6}  # updates per timed call (halved by --quick)
RECIPES = {8: "flow_digits", 28: "flow_mnist"}


def _bench(h, shape, quick: bool) -> None:
    data = image_dataset(shape)
    recipe = recipes.get(RECIPES[shape[0]])
    task = recipe.make_task(data, {})
    model = task.model.model
    steps = max(TRAIN_STEPS[shape[0]] // (2 if quick else 1), 1)
    config = dataclasses.replace(recipe.config(False), log_every=steps)
    state, tx = train.init_state(task, config, data.train)
    params = state.params
    size = f"{shape[0]}x{shape[1]}"

    x = np.resize(data.train["x"], (EVAL_BATCH, *shape))  # [EVAL_BATCH, H, W, 1]
    y = dequantize(jax.random.key(0), jax.numpy.asarray(x), data.levels)
    log_prob = jax.jit(lambda p, v: model.apply(p, v))
    h.measure(
        f"RealNVP log_prob {size}, batch {EVAL_BATCH}",
        "genjax RealNVP.log_prob (jit)",
        log_prob,
        params,
        y,
        items=EVAL_BATCH,
        unit="images",
    )
    sample = jax.jit(lambda p, k: F.sample(k, model, p, EVAL_BATCH))
    h.measure(
        f"RealNVP sample {size}, batch {EVAL_BATCH}",
        "genjax flows.sample (jit)",
        sample,
        params,
        jax.random.key(1),
        items=EVAL_BATCH,
        unit="images",
    )

    flops, candidates = train_loop_candidates(task, config, tx, state, data.train)
    batch = config.batch_size
    group = f"RealNVP train step {size}, batch {batch}, {steps} steps"
    for name, fn in candidates.items():  # the loop's chunk and its Python-loop reference
        h.measure(group, name, fn, state, items=steps * batch, unit="images", flops=flops)

    def make_loop():
        from benchmarks import torch_flows, torch_unet

        replica = torch_unet.check_parameter_count(torch_flows.RealNVP(model), params)
        opt = torch_unet.Optimiser.of(config, steps)
        images = data.train["x"]
        return torch_flows.train_loop(
            replica, images, data.levels, steps=steps, batch=batch, opt=opt
        )

    torch_rows(h, group, make_loop, items=steps * batch, unit="images", flops=flops)


def run(h, quick: bool) -> None:
    for shape in ((8, 8, 1), (28, 28, 1)):
        _bench(h, shape, quick)
