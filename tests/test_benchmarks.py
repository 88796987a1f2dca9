"""The benchmarks' PyTorch replicas of the GAN and conv VAE suites compute genjax's functions:
at 8x8, with genjax's weights copied in, the same parameter counts, forward passes, losses and
gradient penalty; their timed loops run; and the device every table records."""

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import gan as G
from genjax import recipes, train
from genjax import vae as V
from genjax.data import Dataset
from genjax.recipes import gan as R

torch = pytest.importorskip("torch")
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

SHAPE = (8, 8, 1)
ATOL = 1e-5  # float32 round-off of layers of a few hundred terms, logits of size ~1


def _images(n: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 17, size=(n, *SHAPE)) / 16.0).astype(np.float32)  # [n, 8, 8, 1]


def _dataset() -> Dataset:
    x = _images()
    y = np.zeros(len(x), np.int32)
    return Dataset("tiny8", {"x": x, "y": y}, {"x": x[:64], "y": y[:64]}, 10, 17)


def _nchw(x: np.ndarray):
    return torch.from_numpy(np.array(np.asarray(x).transpose(0, 3, 1, 2)))  # a writable copy


def _count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def test_dcgan_replica_matches_genjax_players():
    from benchmarks import bench_gan
    from benchmarks import torch_gan as T

    dataset = _dataset()
    options = {**bench_gan.DCGAN, "variant": "wgan_gp"}
    gan = R.make_task(dataset, options).model
    g_vars, extra = gan.init(jax.random.key(0), dataset.train)
    d_vars = extra["discriminator"]
    g, d = T.dcgan_players(SHAPE, options["width"], options["latent_dim"])
    assert T.num_params(g, d) == _count((g_vars["params"], d_vars["params"]))

    x = 2.0 * _images(16, seed=1) - 1.0  # [16, 8, 8, 1] in [-1, 1]
    z = np.random.default_rng(2).normal(size=(16, options["latent_dim"])).astype(np.float32)
    eps = np.linspace(0.1, 0.9, 16).astype(np.float32)

    @jax.jit
    def genjax_side(x, z, eps):
        fake, _ = gan.generator.apply(g_vars, z, train=True, mutable=["batch_stats"])
        logits = gan.discriminator.apply(d_vars, jnp.concatenate([x, fake]))
        critic = lambda v: gan.discriminator.apply(d_vars, v)
        gp = G.gradient_penalty(jax.random.key(0), critic, x, fake, noise=eps)
        return fake, logits, gp

    fake, logits, gp = map(np.asarray, genjax_side(x, z, eps))
    T.load_genjax_weights(g, d, g_vars, d_vars, SHAPE)
    np.testing.assert_allclose(
        g(torch.from_numpy(z)).detach().numpy().transpose(0, 2, 3, 1), fake, atol=ATOL
    )
    both = np.concatenate([x, fake])
    np.testing.assert_allclose(d(_nchw(both)).detach().numpy(), logits, atol=ATOL)
    e = torch.from_numpy(eps)[:, None, None, None]
    mixed = (e * _nchw(x) + (1 - e) * _nchw(fake)).requires_grad_()
    (grad,) = torch.autograd.grad(d(mixed).sum(), mixed, create_graph=True)
    norm = (grad.flatten(1).square().sum(1) + G.GP_EPS).sqrt()
    np.testing.assert_allclose(((norm - 1) ** 2).detach().numpy(), gp, rtol=1e-4, atol=ATOL)


@pytest.mark.parametrize("loss", ["hinge", "wgan_gp"])
def test_dcgan_replica_loop_steps(loss):
    from benchmarks import torch_gan as T

    torch.manual_seed(0)
    small = {"steps": 1, "batch": 16, "features": 8, "latent_dim": 4, "b1": 0.0, "b2": 0.9}
    loop = T.make_loop(_images(), loss=loss, n_critic=2, lr=2e-4, **small)
    value = loop(None)
    assert np.isfinite(value)
    if loss == "hinge":
        assert 0.0 <= value <= 4.0  # two hinge terms, each in [0, 2] for logits in [-1, 1]
    else:
        assert value > -10.0  # W1 estimate of near-initial players plus a penalty >= 0
    with pytest.raises(ValueError, match="loss"):
        T.make_loop(_images(), loss="x", n_critic=1, lr=1e-3, **small)


def test_conv_vae_replica_matches_genjax_model():
    from benchmarks import torch_vae as T

    dataset = _dataset()
    recipe = recipes.get("convvae_digits")
    task = recipe.make_task(dataset, {})
    model = task.model.model
    config = recipe.config(False)
    params = task.init(jax.random.key(0), dataset.train)
    enc, dec = T.conv_vae(SHAPE, model.latent_dim, model.features, model.hidden)
    assert sum(p.numel() for p in [*enc.parameters(), *dec.parameters()]) == _count(params)

    x = (_images(32, seed=3) > 0.5).astype(np.float32)  # [32, 8, 8, 1] binary
    noise = np.random.default_rng(4).normal(size=(32, model.latent_dim)).astype(np.float32)

    @jax.jit
    def genjax_side(x, noise):
        bound = V.bind(model, params)
        code = jnp.concatenate(bound.encode(x), axis=1)  # [32, 2 d]
        logits = bound.decode(noise)[..., 0]  # [32, 8, 8, 1]
        terms = V.elbo(jax.random.key(0), bound.encode, bound.log_likelihood, x, noise=noise)
        return code, logits, -jnp.mean(terms.total)

    code, logits, loss = map(np.asarray, genjax_side(x, noise))
    T.load_genjax_weights(enc, dec, params, SHAPE, model.features)
    np.testing.assert_allclose(enc(_nchw(x)).detach().numpy(), code, atol=ATOL)
    out = dec(torch.from_numpy(noise)).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, logits, atol=ATOL)
    ours = T.negative_elbo(enc, dec, _nchw(x), model.latent_dim, torch.from_numpy(noise))
    np.testing.assert_allclose(ours.item(), loss, rtol=1e-5)

    schedule = train.learning_rate_schedule(config)
    factor = T._rate_factor(config)
    for t in (0, 250, config.warmup_steps, 5000, config.steps - 1):
        np.testing.assert_allclose(config.lr * factor(t), float(schedule(t)), rtol=1e-5)

    torch.manual_seed(0)
    small = dataclasses.replace(config, log_every=2, batch_size=32)
    loop = T.make_loop(_images(), small, latent_dim=4, features=(8, 8), hidden=16)
    assert np.isfinite(loop(None))


def test_tables_record_the_device(capsys):
    from benchmarks import harness
    from benchmarks.__main__ import main

    dev = harness.device()
    assert dev["platform"] == jax.devices()[0].platform
    assert dev["device_kind"] == jax.devices()[0].device_kind
    assert f"on {dev['platform']} ({dev['device_kind']})" in harness.machine()
    assert main(["--device"]) == 0  # prints the device, runs no suite
    assert capsys.readouterr().out.startswith(f"device: {dev['platform']}")
    with pytest.raises(SystemExit):
        main(["--device", "quantum"])
