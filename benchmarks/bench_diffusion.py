"""Diffusion: the U-Net train step and full-chain sampling, beside a Python loop and PyTorch.

Two sizes, each with the U-Net :func:`genjax.nn.unet.unet_for` picks for the recipe: 8x8 digits
(``diffusion_digits_cfg``: channels 16-32, attention at 4x4) and 28x28 images
(``diffusion_mnist``: channels 16-32-32, attention at 7x7; random images with random labels,
since the timing does not depend on the pixels and the benchmark needs no download). Both are
class-conditional, v-predicting, Min-SNR-weighted, with the cosine schedule of T = 1000 steps.

* **Train step**: the recipe's update (label dropout, loss, gradient, global-norm clipping,
  Adam on the recipe's warm-up + cosine rate, EMA) as the loop's scanned chunk
  (:func:`genjax.train.make_train_chunk`); at 8x8 also beside one jitted step per Python
  iteration doing the same gather + update. FLOPs from XLA's cost analysis of one step give the
  fraction of the measured matmul peak.
* **Sampling**: a batch of images through the whole reverse chain of
  :func:`genjax.diffusion.sample` (one ``lax.scan``): T = 1000 ancestral steps and 50 DDIM steps
  (labels cycling over the classes, unguided; v-prediction, x0-hat clipped); at 8x8 also
  beside a Python loop calling a jitted :func:`genjax.diffusion.ddpm_step` /
  :func:`genjax.diffusion.ddim_step` once per step. Throughput is in image-steps per second
  (images times the chain's network calls), so that chains of different lengths compare.
* **PyTorch**: every group also times the same network, update and sampler written in PyTorch
  eager (:mod:`benchmarks.torch_unet`: a layer-for-layer replica with the same parameter count,
  checked when it is built), at 1 and 2 intra-op threads (:func:`benchmarks.harness.torch_rows`),
  with the same batch and steps per call; the FLOPs of its rows are genjax's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import LOOP, flops_of, image_dataset, torch_rows, train_loop_candidates
from genjax import diffusion as D
from genjax import recipes, train
from genjax.data import Dataset

DDIM_STEPS = 50
# per side: (recipe, train steps per timed call, sampling batch); a T = 1000 chain is 1000 U-Net
# calls, so its batch stays small enough for a chain of a few seconds
SIZES = {8: ("diffusion_digits_cfg", 25, 8), 28: ("diffusion_mnist", 2, 2)}
SAMPLE_REPEATS = 2  # each call is a whole chain of U-Net evaluations
LARGE_TRAIN_REPEATS = 5  # a 28x28 train call takes seconds: at most this many timed calls
UNIT = "image-steps"  # a sampler's throughput: images times network calls per image


def _task_and_params(side: int, dataset: Dataset, steps: int):
    """The recipe's task, its full-budget config cut into chunks of ``steps`` updates, the
    initial state and the optimiser."""
    recipe = recipes.get(SIZES[side][0])
    task = recipe.make_task(dataset, {})
    config = dataclasses.replace(recipe.config(False), log_every=steps)
    state, tx = train.init_state(task, config, dataset.train)
    return task, config, state, tx


def _replica(setup, dataset: Dataset, params):
    """The PyTorch U-Net of ``setup.model``, its parameter count checked against ``params``."""
    from benchmarks import torch_unet

    model = torch_unet.replica_of(setup.model, dataset.shape)
    return torch_unet.check_parameter_count(model, params)


def _bench_train(h, side: int, dataset: Dataset) -> None:
    steps = SIZES[side][1]
    task, config, state, tx = _task_and_params(side, dataset, steps)
    flops, candidates = train_loop_candidates(task, config, tx, state, dataset.train)
    if side != 8:  # the Python-loop reference is shown once, at 8x8
        candidates = {LOOP: candidates[LOOP]}
    batch = config.batch_size
    group = f"U-Net train step {side}x{side} + labels, batch {batch}, {steps} steps"
    items = steps * batch
    repeats = h.repeats if side == 8 else min(h.repeats, LARGE_TRAIN_REPEATS)
    row = dict(items=items, unit="images", flops=flops, repeats=repeats)
    for name, fn in candidates.items():
        h.measure(group, name, fn, state, **row)
    torch_rows(h, group, _torch_train(task, config, dataset, state.params, steps), **row)


def _torch_train(task, config, dataset: Dataset, params, steps: int):
    """``make_loop`` of :func:`benchmarks.harness.torch_rows`: the PyTorch replica's ``steps``
    updates of the recipe's loss and optimiser."""
    setup = task.model

    def make_loop():
        from benchmarks import torch_unet

        return torch_unet.train_loop(
            _replica(setup, dataset, params),
            torch_unet.Schedule(setup.schedule),
            dataset.train["x"],
            dataset.train["y"],
            steps=steps,
            batch=config.batch_size,
            opt=torch_unet.Optimiser.of(config, steps),
            label_drop=setup.label_drop,
            min_snr_gamma=setup.min_snr_gamma,
        )

    return make_loop


def _bench_sampling(h, side: int, dataset: Dataset, quick: bool) -> None:
    n = SIZES[side][2]
    task, _, state, _ = _task_and_params(side, dataset, 1)
    setup = task.model
    params, schedule = state.params, setup.schedule
    shape = (n, *setup.event_shape)
    labels = jnp.arange(n, dtype=jnp.int32) % setup.num_classes
    options = dict(clip_x0=(-1.0, 1.0), parameterization=setup.parameterization)

    def model_fn(p):
        return lambda xt, t: setup.model.apply(p, xt, t, labels)

    @jax.jit
    def ddpm_scan(p, key):
        return D.sample(key, schedule, model_fn(p), shape, method="ddpm", **options)

    @jax.jit
    def ddim_scan(p, key):
        return D.sample(
            key, schedule, model_fn(p), shape, num_steps=DDIM_STEPS, method="ddim", **options
        )

    @jax.jit
    def ddpm_one(p, x, t, key):
        z = jax.random.normal(key, shape)
        return D.ddpm_step(schedule, model_fn(p), x, t, z, **options)

    @jax.jit
    def ddim_one(p, x, t, t_prev):
        return D.ddim_step(schedule, model_fn(p), x, t, t_prev, jnp.zeros(shape), **options)

    T = schedule.num_steps
    ddpm_ts = [jnp.int32(t) for t in range(T - 1, -1, -1)]  # device scalars, built once
    steps = D.ddim_timesteps(T, DDIM_STEPS)
    ddim_pairs = [
        (jnp.int32(t), jnp.int32(tp))
        for t, tp in zip(steps[::-1], np.concatenate([[-1], steps[:-1]])[::-1], strict=True)
    ]

    def ddpm_loop(p, key):
        k_init, k_steps = jax.random.split(key)
        x = jax.random.normal(k_init, shape)
        for t, k in zip(ddpm_ts, jax.random.split(k_steps, T), strict=True):
            x = ddpm_one(p, x, t, k)
        return x

    def ddim_loop(p, key):
        x = jax.random.normal(key, shape)
        for t, t_prev in ddim_pairs:
            x = ddim_one(p, x, t, t_prev)
        return x

    def torch_sampler(kind: str):
        def make_loop():
            import torch

            from benchmarks import torch_unet

            model = _replica(setup, dataset, params)
            coefs = torch_unet.Schedule(schedule)
            y = torch.arange(n) % setup.num_classes
            torch_shape = (n, shape[-1], *shape[1:3])  # NCHW
            if kind == "ddpm":
                return torch_unet.ddpm_loop(model, coefs, torch_shape, y)
            return torch_unet.ddim_loop(model, coefs, torch_shape, y, steps)

        return make_loop

    key = jax.random.key(0)
    x = jnp.zeros(shape)
    # FLOPs of one step times the chain length (cost analysis of a scan counts its body once).
    ddpm_flops = _times(flops_of(ddpm_one, params, x, ddpm_ts[0], key), T)
    ddim_flops = _times(flops_of(ddim_one, params, x, *ddim_pairs[0]), DDIM_STEPS)
    size = f"{side}x{side} U-Net"
    for kind, length, group, flops, rows in (
        (
            "ddpm",
            T,
            f"ancestral DDPM, T = {T}, batch {n} ({size})",
            ddpm_flops,
            (("genjax sample (lax.scan)", ddpm_scan), ("python loop of jitted steps", ddpm_loop)),
        ),
        (
            "ddim",
            DDIM_STEPS,
            f"DDIM, {DDIM_STEPS} of T = {T} steps, batch {n} ({size})",
            ddim_flops,
            (("genjax sample (lax.scan)", ddim_scan), ("python loop of jitted steps", ddim_loop)),
        ),
    ):
        if side != 8:  # the Python-loop reference is shown once, at 8x8
            rows = rows[:1]
        row = dict(items=n * length, unit=UNIT, flops=flops, repeats=1 if quick else SAMPLE_REPEATS)
        for name, fn in rows:
            h.measure(group, name, fn, params, key, **row)
        torch_rows(h, group, torch_sampler(kind), **row)


def _times(flops: float | None, n: int) -> float | None:
    return None if flops is None else flops * n


def run(h, quick: bool) -> None:
    for side in SIZES:
        dataset = image_dataset((side, side, 1), num_classes=10)
        _bench_train(h, side, dataset)
        _bench_sampling(h, side, dataset, quick)
