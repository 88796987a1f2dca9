"""The loop: schedules, EMA, exact resume, the NaN guard, checkpoints, devices."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import data, train

RTOL = 1e-5


def linear_task():
    """Least squares y = x w: small, deterministic, with a known optimum."""

    def init(key, batch):
        return {"w": jnp.zeros((batch["x"].shape[1],))}

    def loss(params, key, batch):
        noise = 0.0 * jax.random.normal(key, ())
        err = batch["x"] @ params["w"] - batch["y"] + noise
        return jnp.mean(err**2), {"abs_err": jnp.mean(jnp.abs(err))}

    return train.Task(init=init, loss=loss)


def linear_data(n=256, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = np.arange(1, d + 1, dtype=np.float32)
    return {"x": x, "y": (x @ w).astype(np.float32)}, w


CONFIG = train.TrainConfig(
    steps=200, batch_size=32, lr=0.05, log_every=20, ema_decay=0.9, warmup_steps=10
)


def test_fit_converges_to_least_squares():
    arrays, w = linear_data()
    state = train.fit(linear_task(), arrays, CONFIG, progress=False)
    np.testing.assert_allclose(state.params["w"], w, atol=0.05)
    assert int(state.step) == CONFIG.steps


def test_schedule_warmup_then_cosine():
    config = dataclasses.replace(CONFIG, steps=100, warmup_steps=10, lr=1.0, final_lr_fraction=0.1)
    sched = train.learning_rate_schedule(config)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(0.5, rel=RTOL)
    assert float(sched(10)) == pytest.approx(1.0, rel=RTOL)
    assert float(sched(100)) == pytest.approx(0.1, rel=RTOL)
    # Halfway through the cosine: f + (1 - f) / 2.
    assert float(sched(55)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-4)


def test_ema_update_closed_form():
    ema = train.ema_update({"a": jnp.asarray(1.0)}, {"a": jnp.asarray(3.0)}, 0.75)
    assert float(ema["a"]) == pytest.approx(0.75 * 1 + 0.25 * 3)
    assert train.ema_update({"a": 1}, {"a": 2}, None) == {"a": 2}


def test_exact_resume(tmp_path):
    """Stopped at step 100 and resumed, a run ends bit for bit where the uninterrupted one does."""
    arrays, _ = linear_data()
    config = dataclasses.replace(CONFIG, checkpoint_every=20)
    full = train.fit(linear_task(), arrays, config, run_dir=tmp_path / "a", progress=False)
    train.fit(linear_task(), arrays, config, run_dir=tmp_path / "b", progress=False, stop_after=100)
    resumed = train.fit(linear_task(), arrays, config, run_dir=tmp_path / "b", progress=False)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(20, 201, 20))
    config_json = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config_json["train"]["steps"] == 200


def test_nan_guard_names_step_and_metric():
    arrays, _ = linear_data()
    arrays["x"] = arrays["x"] * 1e3
    diverging = dataclasses.replace(
        CONFIG,
        lr=1e6,
        optimizer="adam",
        clip_norm=None,
        b1=0.0,
        schedule="constant",
        warmup_steps=0,
    )

    def loss(params, key, batch):
        err = batch["x"] @ params["w"] - batch["y"]
        return jnp.mean(jnp.exp(err)), {}

    task = train.Task(init=linear_task().init, loss=loss)
    with pytest.raises(train.TrainingDiverged, match=r"metric '\w+' became (nan|inf) at step \d+"):
        train.fit(task, arrays, diverging, progress=False)


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of log_every"):
        train.TrainConfig(steps=150, log_every=100, checkpoint_every=150)
    with pytest.raises(ValueError, match="optimizer"):
        train.TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="lr must be"):
        train.TrainConfig(lr=-1.0)
    arrays, _ = linear_data(n=8)
    with pytest.raises(ValueError, match="batch_size"):
        train.fit(linear_task(), arrays, CONFIG, progress=False)


def test_optimizer_matches_optax_chain():
    config = dataclasses.replace(CONFIG, schedule="constant", warmup_steps=0, clip_norm=0.5)
    tx = train.make_optimizer(config)
    ref = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(config.lr))
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([3.0, -4.0, 0.0])}
    u, _ = tx.update(grads, tx.init(params), params)
    v, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_allclose(u["w"], v["w"], rtol=RTOL)


def test_partial_final_chunk_resumes_exactly(tmp_path):
    """steps=30 with log_every=20 runs chunks of 20 and 10; stopped at 10 and resumed, the run
    ends bit for bit where the uninterrupted one does."""
    arrays, _ = linear_data()
    config = dataclasses.replace(CONFIG, steps=30, checkpoint_every=20)
    full = train.fit(linear_task(), arrays, config, run_dir=tmp_path / "a", progress=False)
    assert int(full.step) == 30
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [20, 30]
    train.fit(linear_task(), arrays, config, run_dir=tmp_path / "b", progress=False, stop_after=10)
    resumed = train.fit(linear_task(), arrays, config, run_dir=tmp_path / "b", progress=False)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [10, 20, 30]
    unchunked = train.fit(
        linear_task(),
        arrays,
        dataclasses.replace(config, log_every=1, checkpoint_every=None),
        progress=False,
    )
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(unchunked), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL)


def test_user_optax_transformation_trains_and_resumes(tmp_path):
    """``TrainConfig(optimizer=optax.sgd(...))`` is used as given (no clipping, no schedule):
    the first update is plain gradient descent on step 0's batch, and a stopped run resumes
    exactly."""
    arrays, w = linear_data()
    lr = 0.05
    config = dataclasses.replace(CONFIG, optimizer=optax.sgd(lr), ema_decay=None)
    assert train.make_optimizer(config) is config.optimizer
    one = train.fit(linear_task(), arrays, dataclasses.replace(config, steps=1), progress=False)
    _, step_root = jax.random.split(jax.random.key(config.seed))
    data_key, _ = jax.random.split(step_root)
    idx = np.asarray(data.batch_indices(data_key, 0, len(arrays["x"]), config.batch_size))
    batch = {k: jnp.asarray(v[idx]) for k, v in arrays.items()}
    zero = {"w": jnp.zeros(w.shape)}
    grad = jax.grad(lambda p: linear_task().loss(p, jax.random.key(0), batch)[0])(zero)
    np.testing.assert_allclose(one.params["w"], -lr * grad["w"], rtol=RTOL)
    full = train.fit(linear_task(), arrays, config, run_dir=tmp_path / "a", progress=False)
    np.testing.assert_allclose(full.params["w"], w, atol=0.05)
    train.fit(linear_task(), arrays, config, run_dir=tmp_path / "b", progress=False, stop_after=50)
    resumed = train.fit(linear_task(), arrays, config, run_dir=tmp_path / "b", progress=False)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match=r"optax\.GradientTransformation"):
        train.read_config(tmp_path / "a")


def test_fit_prints_the_defaults_it_trains_with(capsys):
    """EMA 0.999, clipping at 1.0 and the cosine schedule are on by default, and ``fit`` says
    so in its first line."""
    config = train.TrainConfig(steps=2, batch_size=8, log_every=1)
    assert (config.ema_decay, config.clip_norm, config.schedule) == (0.999, 1.0, "cosine")
    arrays, _ = linear_data(n=16)
    train.fit(linear_task(), arrays, config, progress=True)
    line = capsys.readouterr().out.splitlines()[0]
    for part in ("adam lr 0.001", "cosine", "clip global norm 1", "EMA 0.999", "EMA parameters"):
        assert part in line


MULTI_DEVICE = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from test_train import CONFIG, linear_data, linear_task
from genjax import parallel, train
arrays, _ = linear_data()
mesh = parallel.make_mesh() if len(jax.devices()) > 1 else None
state = train.fit(linear_task(), arrays, CONFIG, mesh=mesh, progress=False, run_dir={out!r})
print(json.dumps({{"devices": len(jax.devices()), "w": np.asarray(state.params["w"]).tolist()}}))
"""


def _run_on(devices, out):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    code = MULTI_DEVICE.format(tests=os.path.dirname(__file__), out=str(out))
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_one_and_eight_devices_agree(tmp_path):
    one, eight = _run_on(1, tmp_path / "one"), _run_on(8, tmp_path / "eight")
    assert one["devices"] == 1 and eight["devices"] == 8
    np.testing.assert_allclose(one["w"], eight["w"], rtol=1e-4, atol=1e-5)
    curves = [
        [json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("one", "eight")
    ]
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4, atol=1e-6)
