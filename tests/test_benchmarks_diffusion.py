"""The PyTorch replicas of the benchmark suites' U-Net and RealNVP are the genjax models.

Each replica (``benchmarks/torch_unet.py``, ``benchmarks/torch_flows.py``) is built beside the
genjax model at 8x8: the parameter counts are equal, and with genjax's parameters copied in
(perturbed, so that the zero-initialised layers are not zero) both compute the same function;
the PyTorch samplers reproduce :func:`genjax.diffusion.sample` from the same noise, and the
eager train loops run.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import diffusion as D
from genjax import recipes, train
from genjax.data import dequantize, load_dataset
from genjax.nn.unet import unet_for

torch = pytest.importorskip("torch")
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from benchmarks import torch_flows, torch_unet  # noqa: E402  (they need torch)

SHAPE = (8, 8, 1)
T = 12  # steps of the small schedule the replica checks use (the recipe's is 1000)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _perturbed(params, seed: int = 1, scale: float = 0.05):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [
        leaf + scale * jax.random.normal(k, leaf.shape)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


def _nhwc(x: "torch.Tensor") -> np.ndarray:
    return x.numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def small_unet():
    """The recipe's 8x8 U-Net (``base_features`` 16) with ``T`` time steps, its perturbed
    parameters, and its PyTorch replica holding them."""
    unet = unet_for(SHAPE, T, 10, base_features=16, out_features=1)
    x = jnp.zeros((2, *SHAPE))
    t, y = jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32)
    params = _perturbed(jax.jit(unet.init)(jax.random.key(0), x, t, y))
    return unet, params, torch_unet.load_flax_params(torch_unet.replica_of(unet, SHAPE), params)


def test_unet_replica_has_the_recipes_parameter_count(digits):
    task = recipes.get("diffusion_digits_cfg").make_task(digits, {})
    params = task.init(jax.random.key(0), {k: v[:4] for k, v in digits.train.items()})
    model = torch_unet.replica_of(task.model.model, digits.shape)
    count = sum(x.size for x in jax.tree.leaves(params))
    assert torch_unet.num_params(model) == count
    assert torch_unet.check_parameter_count(model, params) is model


def test_unet_replica_computes_the_same_function(digits, small_unet):
    unet, params, model = small_unet
    x = 2.0 * digits.train["x"][:6] - 1.0
    t = np.array([0, 1, 4, 7, 10, 11], np.int32)
    y = np.array([0, 3, 9, 10, 5, 1], np.int32)  # 10: the null label
    ours = np.asarray(jax.jit(unet.apply)(params, jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))
    with torch.no_grad():
        theirs = model(torch_unet.nchw(x), torch.from_numpy(t).long(), torch.from_numpy(y).long())
    assert np.abs(ours).max() > 0.1  # the perturbed zero-initialised layers contribute
    np.testing.assert_allclose(_nhwc(theirs), ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_torch_samplers_follow_genjax_sample(method, small_unet):
    n = 3
    unet, params, model = small_unet
    schedule = D.cosine_schedule(T)
    labels = np.array([1, 4, 10], np.int32)
    coefs, shape = torch_unet.Schedule(schedule), (n, 1, 8, 8)
    y = torch.from_numpy(labels).long()
    if method == "ddpm":
        loop, num_steps, draws = torch_unet.ddpm_loop(model, coefs, shape, y), None, T - 1
    else:
        steps = D.ddim_timesteps(T, 4)
        loop, num_steps, draws = torch_unet.ddim_loop(model, coefs, shape, y, steps), 4, 0
    torch.manual_seed(0)
    theirs = loop(None)
    torch.manual_seed(0)  # the loop's draws again: the start, then one per noisy step
    noise = [_nhwc(torch.randn(shape)) for _ in range(1 + draws)]
    total = T if num_steps is None else num_steps
    noise += [np.zeros((n, *SHAPE), np.float32)] * (total + 1 - len(noise))
    sample = jax.jit(
        lambda p, noise: D.sample(
            None,
            schedule,
            lambda xt, t: unet.apply(p, xt, t, jnp.asarray(labels)),
            (n, *SHAPE),
            num_steps=num_steps,
            method=method,
            clip_x0=(-1.0, 1.0),
            parameterization="v",
            noise=noise,
        )
    )
    ours = sample(params, jnp.asarray(np.stack(noise)))
    np.testing.assert_allclose(_nhwc(theirs), np.asarray(ours), rtol=1e-4, atol=1e-4)


def test_realnvp_replica_has_the_parameter_count_and_log_density(digits):
    task = recipes.get("flow_digits").make_task(digits, {})
    batch = {k: v[:16] for k, v in digits.train.items()}
    params = _perturbed(task.init(jax.random.key(0), batch))
    model = torch_flows.RealNVP(task.model.model)
    assert torch_unet.num_params(model) == sum(x.size for x in jax.tree.leaves(params))
    torch_flows.load_flax_params(model, params)
    y = np.asarray(dequantize(jax.random.key(2), jnp.asarray(batch["x"][:8]), digits.levels))
    ours = np.asarray(jax.jit(task.model.model.apply)(params, jnp.asarray(y)))
    with torch.no_grad():
        theirs = model.log_prob(torch_unet.nchw(y)).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-3)


def test_eager_train_loops_run_and_follow_the_config(digits, small_unet):
    config = recipes.get("diffusion_digits_cfg").config(False)
    opt = torch_unet.Optimiser.of(config, 3)
    schedule = train.learning_rate_schedule(config)
    np.testing.assert_allclose(opt.lrs, [float(schedule(i)) for i in range(3)], rtol=1e-6)
    assert (opt.betas, opt.clip_norm, opt.ema_decay) == ((0.9, 0.999), 1.0, 0.999)
    torch.manual_seed(0)
    diffusion = torch_unet.train_loop(
        torch_unet.replica_of(small_unet[0], SHAPE),
        torch_unet.Schedule(D.cosine_schedule(T)),
        digits.train["x"],
        digits.train["y"],
        steps=3,
        batch=8,
        opt=opt,
        label_drop=0.1,
        min_snr_gamma=5.0,
    )
    task = recipes.get("flow_digits").make_task(digits, {})
    flow = torch_flows.train_loop(
        torch_flows.RealNVP(task.model.model),
        digits.train["x"],
        digits.levels,
        steps=3,
        batch=8,
        opt=opt,
    )
    # v targets have unit variance and the initial prediction is 0: the weighted loss is at
    # most the largest Min-SNR weight, 1; a fresh flow on digits is a few bits per dimension
    assert 0.0 < float(diffusion(None)) < 1.5
    assert 0.5 < float(flow(None)) < 10.0
