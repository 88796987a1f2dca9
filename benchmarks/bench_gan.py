"""GAN training steps: DCGAN hinge and WGAN-GP steps beside PyTorch, WGAN-GP on the mixture
MLPs, and the spectral-norm overhead.

* DCGAN against PyTorch eager: the players of Radford et al. at :math:`F` = 64, :math:`z`
  = 100 (:class:`genjax.gan.DCGANGenerator` / ``DCGANDiscriminator`` without normalisation,
  built by :func:`genjax.recipes.gan.make_task` with options :data:`DCGAN`), trained as the
  recipes train them: the loop's scanned chunk (:func:`genjax.train.make_train_chunk`) over
  ``Task.update`` = :func:`genjax.gan.alternating_update`, with ``digits_config``'s Adam(2e-4,
  0, 0.9) for both players, batch 64 per player update and the generator's EMA (0.999). Two
  games: the hinge loss (one D and one G update per step) and WGAN-GP (5 critic updates with
  the gradient penalty, a gradient of a gradient, then one G update). Each at 28x28 (random
  8-bit images) and on the 8x8 digits. The PyTorch rows run the replica of
  :mod:`benchmarks.torch_gan` (same shapes and parameter count, same optimisers and EMA) at 1
  and 2 intra-op threads. Throughput in loop steps per second; the FLOPs of every row are
  XLA's count of one genjax step.
* WGAN-GP: the same game on the 2-D mixture MLPs of the mode-coverage study (5 x 128, as
  :func:`genjax.recipes.gan.mixture_options` sets them) and on the recipe's default DCGAN
  players on 8x8 digits.
* Spectral normalisation: the same hinge-loss (SN-GAN) step with the discriminator spectrally
  normalised (one power-iteration step per layer per critic update) and without; the ratio of
  the two rows is the overhead.
"""

from __future__ import annotations

import dataclasses

import jax

from benchmarks.harness import LOOP, chained, flops_of, image_dataset, torch_rows
from genjax import train
from genjax.data import Dataset, load_dataset
from genjax.recipes import gan as recipe

STEPS = 50
BATCH = 64  # real images per discriminator update, samples per generator update
DCGAN = {"width": 64, "latent_dim": 100, "normalization": "none"}  # Radford et al.'s sizes
DCGAN_STEPS = {  # loop steps per timed call: about 0.5-1 s of genjax on one core
    (28, "sngan"): 4,
    (28, "wgan_gp"): 1,
    (8, "sngan"): 10,
    (8, "wgan_gp"): 2,
}


def _bench(
    h,
    group: str,
    name: str,
    data: str | Dataset,
    options: dict,
    batch: int,
    config: train.TrainConfig | None = None,
):
    """Time the recipe's loop chunk of ``config`` (default: :data:`STEPS` steps of the loop's
    default Adam, constant rate, no clipping); returns ``(task, row)``."""
    dataset = load_dataset(data) if isinstance(data, str) else data
    task = recipe.make_task(dataset, options)
    if config is None:
        config = train.TrainConfig(
            steps=STEPS, batch_size=batch, log_every=STEPS, schedule="constant", clip_norm=None
        )
    steps = config.log_every
    state, tx = train.init_state(task, config, dataset.train)
    chunk = train.make_train_chunk(task, config, tx, jax.device_put(dataset.train))
    one_batch = {k: jax.numpy.asarray(v[:batch]) for k, v in dataset.train.items()}

    def one(s):
        return task.update(s, jax.random.key(0), one_batch, tx, config.ema_decay)[0]

    step_flops = flops_of(one, state)
    flops = None if step_flops is None else step_flops * steps

    return task, h.measure(
        group, name, chained(chunk, state), state, items=steps, unit="steps", flops=flops
    )


def _dcgan_vs_torch(h, size: int, variant: str) -> None:
    """The DCGAN step of ``variant`` (``"sngan"`` options without spectral norm: the hinge
    game; ``"wgan_gp"``) at ``size`` x ``size``, genjax's loop chunk then PyTorch's replica."""
    dataset = image_dataset((size, size, 1))
    steps = DCGAN_STEPS[size, variant]
    n_critic = 5 if variant == "wgan_gp" else 1
    config = dataclasses.replace(
        recipe.digits_config(False), log_every=steps, batch_size=n_critic * BATCH
    )
    d_opt = {"d_optimizer": "adam", "d_lr": config.lr, "d_b1": config.b1, "d_b2": config.b2}
    options = {**DCGAN, **d_opt, "variant": variant, "n_critic": n_critic}
    game = "hinge" if variant == "sngan" else "WGAN-GP"
    group = (
        f"DCGAN {game} step {size}x{size} (F=64, z=100, batch {BATCH}, n_critic {n_critic}), "
        f"{steps} step{'s' if steps > 1 else ''}"
    )
    task, row = _bench(h, group, LOOP, dataset, options, n_critic * BATCH, config)

    def make_loop():
        from benchmarks import torch_gan

        return torch_gan.make_loop(
            dataset.train["x"],
            loss="hinge" if variant == "sngan" else "wgan_gp",
            steps=steps,
            batch=BATCH,
            n_critic=n_critic,
            features=DCGAN["width"],
            latent_dim=DCGAN["latent_dim"],
            lr=config.lr,
            b1=config.b1,
            b2=config.b2,
            gp_weight=task.model.variant.gp_weight,
            ema_decay=config.ema_decay,
        )

    torch_rows(h, group, make_loop, items=steps, unit="steps", flops=row.flops)


def run(h, quick: bool) -> None:
    for size in (28, 8):
        for variant in ("sngan", "wgan_gp"):
            _dcgan_vs_torch(h, size, variant)
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
