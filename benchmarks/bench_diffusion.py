"""Diffusion: the U-Net train step, and full-chain sampling, each scanned vs a Python loop.

* **Train step**: the class-conditional digits U-Net of ``diffusion_digits_cfg`` (8x8, cosine
  schedule with T = 1000, label dropout), updated by the loop's scanned chunk
  (:func:`genjax.train.make_train_chunk`) vs one jitted step per Python iteration doing the same
  gather + update. FLOPs from XLA's cost analysis give the fraction of the measured matmul peak.
* **Sampling**: the same U-Net, a batch of images through the whole reverse chain of
  :func:`genjax.diffusion.sample` (one ``lax.scan``): T = 1000 ancestral steps and 50 DDIM
  steps, each beside a Python loop calling a jitted :func:`genjax.diffusion.ddpm_step` /
  :func:`genjax.diffusion.ddim_step` once per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import flops_of, train_loop_candidates
from genjax import diffusion as D
from genjax import train
from genjax.data import load_dataset
from genjax.recipes import diffusion as recipe

TRAIN_STEPS = 50
TRAIN_BATCH = 64
SAMPLE_BATCH = 16  # a full T = 1000 chain is 1000 U-Net calls: keep one call small
DDIM_STEPS = 50


def _task_and_params(dataset, batch: int):
    task = recipe.make_task(dataset, {}, conditional=True)
    config = train.TrainConfig(steps=TRAIN_STEPS, batch_size=batch, log_every=TRAIN_STEPS)
    state, tx = train.init_state(task, config, dataset.train)
    return task, config, state, tx


def _bench_train(h, dataset) -> None:
    task, config, state, tx = _task_and_params(dataset, TRAIN_BATCH)
    flops, candidates = train_loop_candidates(task, config, tx, state, dataset.train)
    group = f"U-Net train step, digits 8x8 + labels, batch {TRAIN_BATCH}, {TRAIN_STEPS} steps"
    for name, fn in candidates.items():
        h.measure(
            group, name, fn, state, items=TRAIN_STEPS * TRAIN_BATCH, unit="images", flops=flops
        )


def _bench_sampling(h, dataset, quick: bool) -> None:
    task, _, state, _ = _task_and_params(dataset, TRAIN_BATCH)
    setup = task.model
    params, schedule = state.params, setup.schedule
    shape = (SAMPLE_BATCH, *setup.event_shape)
    labels = jnp.arange(SAMPLE_BATCH, dtype=jnp.int32) % setup.num_classes
    clip = (-1.0, 1.0)

    def model_fn(p):
        return lambda xt, t: setup.model.apply(p, xt, t, labels)

    @jax.jit
    def ddpm_scan(p, key):
        return D.sample(key, schedule, model_fn(p), shape, clip_x0=clip)

    @jax.jit
    def ddim_scan(p, key):
        return D.sample(key, schedule, model_fn(p), shape, num_steps=DDIM_STEPS, clip_x0=clip)

    @jax.jit
    def ddpm_one(p, x, t, key):
        z = jax.random.normal(key, shape)
        return D.ddpm_step(schedule, model_fn(p), x, t, z, clip_x0=clip)

    @jax.jit
    def ddim_one(p, x, t, t_prev):
        return D.ddim_step(schedule, model_fn(p), x, t, t_prev, jnp.zeros(shape), clip_x0=clip)

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

    key = jax.random.key(0)
    x = jnp.zeros(shape)
    # FLOPs of one step times the chain length (cost analysis of a scan counts its body once).
    ddpm_flops = _times(flops_of(ddpm_one, params, x, ddpm_ts[0], key), T)
    ddim_flops = _times(flops_of(ddim_one, params, x, *ddim_pairs[0]), DDIM_STEPS)
    repeats = 1 if quick else 3  # each call is a whole chain of U-Net evaluations
    for group, flops, rows in (
        (
            f"ancestral DDPM, T = {T}, batch {SAMPLE_BATCH} (8x8 digits U-Net)",
            ddpm_flops,
            (
                ("genjax sample (lax.scan)", ddpm_scan),
                ("python loop of jitted steps", ddpm_loop),
            ),
        ),
        (
            f"DDIM, {DDIM_STEPS} of T = {T} steps, batch {SAMPLE_BATCH} (8x8 digits U-Net)",
            ddim_flops,
            (
                ("genjax sample (lax.scan)", ddim_scan),
                ("python loop of jitted steps", ddim_loop),
            ),
        ),
    ):
        for name, fn in rows:
            h.measure(
                group,
                name,
                fn,
                params,
                key,
                items=SAMPLE_BATCH,
                unit="images",
                flops=flops,
                repeats=repeats,
            )


def _times(flops: float | None, n: int) -> float | None:
    return None if flops is None else flops * n


def run(h, quick: bool) -> None:
    dataset = load_dataset("digits")
    _bench_train(h, dataset)
    _bench_sampling(h, dataset, quick)
