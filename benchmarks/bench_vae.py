"""VAE: the train step of Kingma & Welling's 784-400-20 MLP VAE, and importance-sampled NLL.

Train step (batch 128, Bernoulli decoder on binary 28x28 images, analytic KL, Adam, 100 steps
per timed call), three ways doing the same arithmetic:

* the loop's scanned chunk (:func:`genjax.train.make_train_chunk`), as ``genjax train`` runs it;
* one jitted step per Python iteration (:func:`genjax.vae.elbo` on :class:`genjax.vae.VAE`);
* the same steps under ``lax.scan`` over pre-made batches (the step without the loop's batch
  gather and per-step metrics);
* the same network, loss and optimiser in PyTorch eager mode (the optional ``bench`` extra,
  ``pip install -e ".[bench]"``), with one intra-op thread and with one per core. The rows are
  skipped, with a note, when torch is not importable.

Conv VAE train step: :class:`genjax.vae.ConvVAE` as the ``convvae_mnist`` recipe builds it (28x28,
random 8-bit images) and as ``convvae_digits`` does (8x8 digits): Bernoulli decoder on
dynamically binarised images, the recipe's own loop configuration (batch 128, Adam with
warm-up and cosine decay, gradient clipping at norm 1, EMA 0.999), timed as the loop's scanned
chunk (:func:`genjax.train.make_train_chunk`) beside the replica of :mod:`benchmarks.torch_vae`
(same shapes and parameter count, same optimiser, clipping, schedule and EMA) at 1 and 2
intra-op threads.

Evaluation: :func:`genjax.vae.importance_sampled_nll` on a batch of test images with ``k``
importance samples, in samples (decoder passes) per second.

The data are random binary images: throughput does not depend on the pixel values, and the
benchmark needs no download.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness import (
    LOOP,
    chained,
    flops_of,
    image_dataset,
    torch_rows,
    train_loop_candidates,
)
from genjax import recipes, train
from genjax import vae as V
from genjax.likelihoods import Likelihood

STEPS = 100
BATCH = 128
IMAGE = (28, 28, 1)
HIDDEN = 400
LATENT = 20
LR = 1e-3
NLL_BATCH = 64
NLL_CHUNK = 500
CONV_STEPS = {28: 5, 8: 50}  # conv VAE steps per timed call: about 1 s each on one core


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(n, *IMAGE)) < 0.13).astype(np.float32)  # MNIST's mean ink


def _model() -> V.VAE:
    return V.VAE(IMAGE, latent_dim=LATENT, hidden=(HIDDEN,), likelihood=Likelihood("bernoulli"))


def _loss(model):
    def loss(params, key, batch):
        bound = V.bind(model, params)
        terms = V.elbo(key, bound.encode, bound.log_likelihood, batch["x"])
        return -jnp.mean(terms.total), {"kl": jnp.mean(terms.kl)}

    return loss


def _jax_rows(h, data: np.ndarray) -> None:
    model = _model()
    loss = _loss(model)
    x0 = jnp.asarray(data[:BATCH])
    params = jax.jit(model.init)(jax.random.key(0), x0)
    group = f"VAE 784-{HIDDEN}-{LATENT} train, batch {BATCH}, {STEPS} steps"

    # the loop's chunk: gather + update inside lax.scan
    config = train.TrainConfig(
        steps=STEPS,
        batch_size=BATCH,
        lr=LR,
        warmup_steps=0,
        schedule="constant",
        clip_norm=None,
        ema_decay=None,
        log_every=STEPS,
    )
    task = train.Task(init=lambda key, batch: model.init(key, batch["x"]), loss=loss)
    arrays = {"x": data}
    state, tx = train.init_state(task, config, arrays)
    chunk = train.make_train_chunk(task, config, tx, jax.device_put(arrays))

    # one jitted step per Python iteration, same optimiser (Adam, constant rate, no clipping)
    adam = optax.adam(LR)
    batches = jnp.asarray(data[: STEPS * BATCH].reshape(STEPS, BATCH, *IMAGE))

    @jax.jit
    def step(params, opt_state, key, x):
        # the loss value is returned, as PyTorch's loop computes it: without it XLA would drop
        # the reduction over pixels and the softplus terms that only the value needs
        value, grads = jax.value_and_grad(lambda p: loss(p, key, {"x": x})[0])(params)
        updates, opt_state = adam.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    @jax.jit
    def scanned_steps(p):
        def body(carry, inputs):
            i, x = inputs
            p, opt_state, value = step(*carry, jax.random.key(i), x)
            return (p, opt_state), value

        _, values = jax.lax.scan(body, (p, adam.init(p)), (jnp.arange(STEPS), batches))
        return values

    def python_loop(p):
        opt_state = adam.init(p)
        for i in range(STEPS):
            p, opt_state, value = step(p, opt_state, jax.random.key(i), batches[i])
        return value

    step_flops = flops_of(step, params, adam.init(params), jax.random.key(0), batches[0])
    flops = None if step_flops is None else STEPS * step_flops
    items = STEPS * BATCH
    h.measure(
        group,
        LOOP,
        chained(chunk, state),
        state,
        items=items,
        unit="examples",
        flops=flops,
    )
    h.measure(
        group,
        "genjax step under lax.scan over pre-made batches",
        scanned_steps,
        params,
        items=items,
        unit="examples",
        flops=flops,
    )
    h.measure(
        group,
        "genjax, jitted step per Python iteration",
        python_loop,
        params,
        items=items,
        unit="examples",
        flops=flops,
    )
    torch_rows(h, group, lambda: _torch_loop(data), items=items, unit="examples", flops=flops)


def _torch_loop(data: np.ndarray) -> Callable:
    import torch

    d = math.prod(IMAGE)
    nn = torch.nn
    enc = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT))
    dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, d))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=LR)
    batches = torch.from_numpy(data[: STEPS * BATCH].reshape(STEPS, BATCH, d))

    def torch_loop(_):
        for i in range(STEPS):
            x = batches[i]
            h_ = enc(x)
            mean, log_var = h_[:, :LATENT], h_[:, LATENT:]
            z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
            logits = dec(z)
            rec = -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
            kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(1)
            loss = -(rec.sum(1) - kl).mean()  # sum over pixels, mean over the batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.detach().item()

    return torch_loop


def _conv_rows(h, size: int) -> None:
    """The conv VAE recipe's train step at ``size`` x ``size``: genjax's loop chunk, then
    PyTorch's replica."""
    recipe = recipes.get("convvae_mnist" if size == 28 else "convvae_digits")
    dataset = image_dataset((size, size, 1))
    steps = CONV_STEPS[size]
    config = dataclasses.replace(recipe.config(False), log_every=steps)
    task = recipe.make_task(dataset, {})
    model = task.model.model
    state, tx = train.init_state(task, config, dataset.train)
    flops, loops = train_loop_candidates(task, config, tx, state, dataset.train)
    group = f"ConvVAE {size}x{size} train ({recipe.name}), batch {config.batch_size}, {steps} steps"
    items = steps * config.batch_size
    h.measure(group, LOOP, loops[LOOP], state, items=items, unit="examples", flops=flops)

    def make_loop():
        from benchmarks import torch_vae

        return torch_vae.make_loop(
            dataset.train["x"],
            config,
            latent_dim=model.latent_dim,
            features=model.features,
            hidden=model.hidden,
        )

    torch_rows(h, group, make_loop, items=items, unit="examples", flops=flops)


def _nll_rows(h, data: np.ndarray, num_samples: int) -> None:
    model = _model()
    x = jnp.asarray(data[:NLL_BATCH])
    params = jax.jit(model.init)(jax.random.key(0), x)

    def nll_of(k):
        def nll(params, key, x):
            bound = V.bind(model, params)
            return V.importance_sampled_nll(
                key, bound.encode, bound.log_likelihood, x, k, chunk_size=NLL_CHUNK
            )

        return jax.jit(nll)

    nll = nll_of(num_samples)
    # XLA's cost analysis counts the body of lax.map once: count one chunk, times the chunks
    chunk_flops = flops_of(nll_of(NLL_CHUNK), params, jax.random.key(1), x)
    flops = None if chunk_flops is None else chunk_flops * -(-num_samples // NLL_CHUNK)

    group = f"IS NLL, {NLL_BATCH} images x k={num_samples} (chunks of {NLL_CHUNK})"
    h.measure(
        group,
        "genjax importance_sampled_nll",
        nll,
        params,
        jax.random.key(1),
        x,
        items=NLL_BATCH * num_samples,
        unit="samples",
        flops=flops,
    )


def run(h, quick: bool) -> None:
    data = _images(STEPS * BATCH)
    _jax_rows(h, data)
    for size in (28, 8):
        _conv_rows(h, size)
    _nll_rows(h, data, 1000 if quick else 5000)
