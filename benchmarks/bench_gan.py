"""GAN training steps: a WGAN-GP step (n_critic = 5, double backprop) and the spectral-norm
overhead.

* WGAN-GP: one loop step = 5 critic updates, each differentiating the gradient penalty (a
  gradient of a gradient), then one generator update — :func:`genjax.gan.alternating_update`
  as the recipes' ``Task.update``, run by the loop's scanned chunk. On the 2-D mixture MLPs of
  the mode-coverage study (5 x 128, as :func:`genjax.recipes.gan.mixture_options` sets them)
  and on the DCGAN players of ``dcgan_digits`` (8x8). Throughput in loop steps per second.
* Spectral normalisation: the same hinge-loss (SN-GAN) step with the discriminator spectrally
  normalised (one power-iteration step per layer per critic update) and without; the ratio of
  the two rows is the overhead.
"""

from __future__ import annotations

import jax

from benchmarks.harness import flops_of
from genjax import train
from genjax.data import load_dataset
from genjax.recipes import gan as recipe

STEPS = 50


def _bench(h, group: str, name: str, data: str, options: dict, batch: int) -> None:
    dataset = load_dataset(data)
    task = recipe.make_task(dataset, options)
    config = train.TrainConfig(
        steps=STEPS, batch_size=batch, log_every=STEPS, schedule="constant", clip_norm=None
    )
    state, tx = train.init_state(task, config, dataset.train)
    chunk = train.make_train_chunk(task, config, tx, jax.device_put(dataset.train))
    one_batch = {k: jax.numpy.asarray(v[:batch]) for k, v in dataset.train.items()}

    def one(s):
        return task.update(s, jax.random.key(0), one_batch, tx, config.ema_decay)[0]

    step_flops = flops_of(one, state)
    flops = None if step_flops is None else step_flops * STEPS

    def scanned(s):
        return chunk(jax.tree.map(lambda a: a.copy(), s))[1]["loss"]

    h.measure(group, name, scanned, state, items=STEPS, unit="steps", flops=flops)


def run(h, quick: bool) -> None:
    mlp = {**recipe.mixture_options("wgan_gp"), "n_critic": 5}  # the study's 5 x 128 players
    _bench(
        h, "WGAN-GP step, mixture MLPs", "n_critic=5, 5x256 points", "eight_gaussians", mlp, 5 * 256
    )
    dcgan = {"variant": "wgan_gp", "n_critic": 5}
    _bench(h, "WGAN-GP step, DCGAN 8x8", "n_critic=5, 5x64 images", "digits", dcgan, 5 * 64)
    for norm in ("spectral", "none"):
        options = {"variant": "sngan", "normalization": norm}
        _bench(
            h, "hinge step, DCGAN 8x8, batch 64", f"D normalization={norm}", "digits", options, 64
        )
    if not quick:
        for norm in ("spectral", "none"):
            options = {**recipe.mixture_options("sngan"), "normalization": norm, "n_critic": 5}
            _bench(
                h,
                "hinge step, mixture MLPs, n_critic=5",
                f"D normalization={norm}",
                "eight_gaussians",
                options,
                5 * 256,
            )
