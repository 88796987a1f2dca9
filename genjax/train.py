r"""One training loop for every family.

A family hands the loop a :class:`Task`: how to initialise parameters from a batch, and a pure
loss ``loss(params, key, batch) -> (loss, metrics)``. The loop owns everything else:

* the optax optimiser built from :class:`TrainConfig` (Adam or AdamW, linear warm-up then cosine
  decay, global-norm gradient clipping), or any ``optax.GradientTransformation`` given as
  ``TrainConfig(optimizer=...)``;
* one jitted, state-donating update; ``jax.lax.scan`` runs ``log_every`` updates per dispatch
  (the last chunk is shorter when ``steps`` is not a multiple of ``log_every``);
* an exponential moving average (EMA) of the parameters,
  :math:`\bar\theta_t = \delta\,\bar\theta_{t-1} + (1-\delta)\,\theta_t`;
* a guard that stops with the step number and the offending metric when any metric is NaN/inf;
* progress through tqdm, ``metrics.jsonl``, and orbax checkpoints written atomically, from which a
  run resumes bit for bit (every step's key and batch are functions of the step number alone).

Evaluation, sampling and the tour use ``state.ema_params``, which equal ``state.params`` when
``ema_decay`` is ``None``.

Families whose update is not "one optimiser on one loss" (a GAN's alternating players, batch
statistics) supply ``Task.update`` instead of relying on :func:`standard_update`; they still get
the scan, the guard, EMA, logging and checkpoints. The contract is ``docs/api.md``, Training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from genjax import checkpoints, parallel, runfolder
from genjax import data as data_lib
from genjax._checks import positive_int

__all__ = [
    "Task",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "TrainingInterrupted",
    "check_finite",
    "ema_update",
    "fit",
    "init_state",
    "learning_rate_schedule",
    "make_optimizer",
    "make_train_chunk",
    "read_config",
    "standard_update",
]

PyTree = Any
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    r"""Everything that decides a run's numbers. Written to ``config.json`` by :func:`fit`.

    The defaults train with Adam at ``lr`` on a cosine schedule, gradients clipped to global norm
    1.0 and an EMA of the parameters with decay 0.999; :func:`fit` prints them
    (:meth:`describe`) when it shows progress.

    Attributes:
      steps: number of optimiser updates (any positive int).
      batch_size: examples per update (global, across devices).
      lr: peak learning rate.
      optimizer: ``"adam"``, ``"adamw"``, or an ``optax.GradientTransformation`` used as given
        (``lr``, ``b1``, ``b2``, ``weight_decay``, ``warmup_steps``, ``schedule``,
        ``final_lr_fraction`` and ``clip_norm`` then do not apply; ``ema_decay`` does).
      weight_decay: decoupled weight decay (AdamW only).
      b1, b2: Adam moment decays.
      warmup_steps: linear warm-up from 0 to ``lr``.
      schedule: ``"constant"`` or ``"cosine"`` (decays to ``lr * final_lr_fraction``).
      final_lr_fraction: the cosine schedule's floor as a fraction of ``lr``.
      clip_norm: global gradient-norm clip; ``None`` disables it.
      ema_decay: EMA decay :math:`\delta`; ``None`` disables the EMA.
      log_every: updates per scan dispatch, per log line and per checkpoint opportunity; the
        last chunk holds the ``steps % log_every`` remaining updates.
      checkpoint_every: save every this many steps (a multiple of ``log_every``); ``None``
        saves only at the end.
      seed: the run's single source of randomness.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str | optax.GradientTransformation = "adam"
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    warmup_steps: int = 0
    schedule: str = "cosine"
    final_lr_fraction: float = 0.05
    clip_norm: float | None = 1.0
    ema_decay: float | None = 0.999
    log_every: int = 100
    checkpoint_every: int | None = None
    seed: int = 0

    def __post_init__(self):
        positive_int("steps", self.steps)
        positive_int("batch_size", self.batch_size)
        positive_int("log_every", self.log_every)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite float, got {self.lr}")
        if not isinstance(self.optimizer, optax.GradientTransformation) and (
            self.optimizer not in ("adam", "adamw")
        ):
            raise ValueError(
                "optimizer must be 'adam', 'adamw' or an optax.GradientTransformation, "
                f"got {self.optimizer!r}"
            )
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm}")
        if self.checkpoint_every is not None and (
            self.checkpoint_every <= 0 or self.checkpoint_every % self.log_every
        ):
            raise ValueError(
                "checkpoint_every must be a positive multiple of log_every "
                f"({self.log_every}), got {self.checkpoint_every}"
            )

    @property
    def custom_optimizer(self) -> bool:
        """True when ``optimizer`` is a user's ``optax.GradientTransformation``."""
        return isinstance(self.optimizer, optax.GradientTransformation)

    def describe(self) -> str:
        """One line naming the optimiser, learning rate, schedule, clipping and EMA."""
        ema = "off" if self.ema_decay is None else f"{self.ema_decay:g}"
        if self.custom_optimizer:
            opt = "a user optax.GradientTransformation (its own rate, schedule and clipping)"
        else:
            schedule = (
                "constant"
                if self.schedule == "constant"
                else f"cosine to {self.final_lr_fraction:g} x lr"
            )
            clip = "off" if self.clip_norm is None else f"global norm {self.clip_norm:g}"
            name = self.optimizer
            if name == "adamw":
                name = f"adamw (weight decay {self.weight_decay:g})"
            opt = (
                f"{name} lr {self.lr:g}, warm-up {self.warmup_steps} steps, "
                f"schedule {schedule}, clip {clip}"
            )
        evaluated = "EMA parameters" if self.ema_decay is not None else "parameters (no EMA)"
        return (
            f"train: {self.steps} steps of batch {self.batch_size}; {opt}; EMA {ema}; "
            f"evaluation uses the {evaluated}"
        )


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    r"""Linear warm-up to ``lr`` over ``warmup_steps``, then constant or cosine decay.

    .. math::
       \eta_t = \eta\,\frac{t}{W}\ (t < W), \qquad
       \eta_t = \eta\Big(f + (1-f)\tfrac12\big(1+\cos\tfrac{\pi (t-W)}{T-W}\big)\Big)\ (t \ge W)

    with :math:`W` = ``warmup_steps``, :math:`T` = ``steps``, :math:`f` = ``final_lr_fraction``.

    Loshchilov & Hutter, *SGDR: Stochastic Gradient Descent with Warm Restarts*, 2016,
    https://arxiv.org/abs/1608.03983

    Derivation: derivations/18-training-tips.md
    """
    warmup = min(config.warmup_steps, config.steps - 1)
    if config.schedule == "constant":
        after = optax.constant_schedule(config.lr)
    else:
        after = optax.cosine_decay_schedule(
            config.lr, max(config.steps - warmup, 1), alpha=config.final_lr_fraction
        )
    if warmup == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.lr, warmup), after], boundaries=[warmup]
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax chain described by ``config``: clip, then Adam/AdamW on the schedule; a
    user's ``optax.GradientTransformation`` in ``config.optimizer`` as given."""
    if config.custom_optimizer:
        return config.optimizer
    schedule = learning_rate_schedule(config)
    if config.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay)
    else:
        opt = optax.adam(schedule, b1=config.b1, b2=config.b2)
    if config.clip_norm is None:
        return opt
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)


@flax.struct.dataclass
class TrainState:
    """The whole of a run's mutable state; a checkpoint is exactly this pytree.

    Attributes:
      step: updates done so far, int32 scalar.
      params: the trained parameters.
      opt_state: the optimiser's state.
      ema_params: EMA of ``params`` (equal to ``params`` when the EMA is off).
      extra: anything else a custom update carries (batch statistics, power-iteration vectors,
        a second optimiser's state); ``{}`` by default.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree
    extra: PyTree = dataclasses.field(default_factory=dict)


UpdateFn = Callable[[TrainState, jax.Array, Batch], tuple[TrainState, Metrics]]


class Task(NamedTuple):
    """What a family hands the loop (the contract of ``docs/api.md``, Training).

    Attributes:
      init: ``init(key, batch) -> params``, or ``-> (params, extra)`` when ``update`` needs
        extra state.
      loss: ``loss(params, key, batch) -> (scalar_loss, metrics_dict)``; pure and jittable.
      sample: ``sample(params, key, n) -> array``, a plain function (images NHWC in [0, 1] for
        image families), used by ``genjax sample`` and the tour; ``None`` when the recipe
        draws nothing.
      model: the recipe's setup object, which evaluation and figures read.
      update: optional ``update(state, key, batch, tx, ema_decay) -> (state, metrics)`` replacing
        :func:`standard_update`, for families with several players or mutable state.
    """

    init: Callable[..., Any]
    loss: Callable[[PyTree, jax.Array, Batch], tuple[jax.Array, Metrics]]
    sample: Callable[[PyTree, jax.Array, int], jax.Array] | None = None
    model: Any = None
    update: Callable[..., tuple[TrainState, Metrics]] | None = None


def ema_update(ema: PyTree, params: PyTree, decay: float | None) -> PyTree:
    r"""EMA step :math:`\bar\theta \leftarrow \delta\bar\theta + (1-\delta)\theta`.

    ``decay=None`` turns the EMA off: the result is ``params`` itself.
    """
    if decay is None:
        return params
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def standard_update(
    key: jax.Array,
    loss_fn: Callable[[PyTree, jax.Array, Batch], tuple[jax.Array, Metrics]],
    state: TrainState,
    batch: Batch,
    tx: optax.GradientTransformation,
    ema_decay: float | None,
) -> tuple[TrainState, Metrics]:
    """One optimiser step on ``loss_fn``; adds ``loss`` and ``grad_norm`` to the metrics."""
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=ema_update(state.ema_params, params, ema_decay),
    )
    return new_state, metrics


class TrainingDiverged(FloatingPointError):
    """A metric became NaN or infinite; the message names the step and the metric, and, for a
    run folder, the last good checkpoint and how to resume from it with a lower rate."""


class TrainingInterrupted(Exception):
    """:func:`fit` was interrupted (``KeyboardInterrupt``) after its pending checkpoint writes
    were flushed; ``step`` is the checkpoint a new ``fit`` on the same folder resumes from.

    Args:
      step: the step to resume from (0 when nothing was saved).
      message: one line naming that step.
    """

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


def init_state(
    task: Task, config: TrainConfig, arrays: Mapping[str, np.ndarray]
) -> tuple[TrainState, optax.GradientTransformation]:
    """Initialise parameters on the first batch and the optimiser; returns (state, tx)."""
    init_key, _ = jax.random.split(jax.random.key(config.seed))
    first = {k: jnp.asarray(v[: config.batch_size]) for k, v in arrays.items()}
    out = task.init(init_key, first)
    params, extra = out if isinstance(out, tuple) else (out, {})
    tx = make_optimizer(config)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.array, params),
        extra=extra,
    )
    return state, tx


def make_train_chunk(
    task: Task,
    config: TrainConfig,
    tx: optax.GradientTransformation,
    arrays: Mapping[str, jax.Array],
    *,
    shard_batch: Callable[[Batch], Batch] = lambda b: b,
    length: int | None = None,
) -> Callable[[TrainState], tuple[TrainState, Metrics]]:
    """A jitted function running ``length`` (default ``config.log_every``) updates with
    ``jax.lax.scan``.

    Step :math:`t` uses the key ``fold_in(run_key, t)`` and the batch
    :func:`genjax.data.batch_indices` gives for ``t``; so the numbers a step produces depend on
    the step number alone, which is what makes resuming exact and chunk lengths irrelevant to
    the result. ``arrays`` stay on the device and batches are gathered inside the scan.
    ``shard_batch`` lays each batch out over devices (:func:`genjax.parallel.batch_sharder`).
    Returns ``chunk(state) -> (state, metrics)`` where every metric has a leading axis of
    length ``length``.
    """
    length = config.log_every if length is None else length
    positive_int("length", length)
    _, step_root = jax.random.split(jax.random.key(config.seed))
    data_key, step_key = jax.random.split(step_root)
    num_examples = data_lib.num_examples(arrays)
    if num_examples < config.batch_size:
        raise ValueError(
            f"batch_size ({config.batch_size}) exceeds the number of training examples "
            f"({num_examples})"
        )

    def update(state, key, batch):
        if task.update is not None:
            return task.update(state, key, batch, tx, config.ema_decay)
        return standard_update(key, task.loss, state, batch, tx, config.ema_decay)

    per_epoch = num_examples // config.batch_size
    # A chunk of `length` steps starting anywhere touches at most this many epochs.
    chunk_epochs = (length - 1) // per_epoch + 2

    def chunk(state):
        first_epoch = state.step // per_epoch
        orders = data_lib.epoch_orders(data_key, first_epoch, chunk_epochs, num_examples)

        def body(state, _):
            idx = data_lib.batch_from_orders(orders, first_epoch, state.step, config.batch_size)
            batch = shard_batch({k: v[idx] for k, v in arrays.items()})
            return update(state, jax.random.fold_in(step_key, state.step), batch)

        return jax.lax.scan(body, state, length=length)

    return jax.jit(chunk, donate_argnums=0, compiler_options=_compiler_options())


def _compiler_options() -> dict[str, str] | None:
    """XLA options for compiling a training chunk. On CPU, no YNNPACK fusions: XLA runs them on
    one thread inside the chunk's ``while`` loop, where its own convolutions and matrix products
    use every core (two idle cores, one chunk at 28x28: U-Net 311 -> 238 ms per step, RealNVP
    303 -> 214, DCGAN 76 -> 68, the MLP VAE unchanged; benchmarks/README.md)."""
    if jax.default_backend() != "cpu":
        return None
    return {"xla_cpu_experimental_ynn_fusion_type": ""}


def check_finite(metrics: Mapping[str, np.ndarray], first_step: int) -> None:
    """Raise :class:`TrainingDiverged` naming the first step and metric that is NaN/inf."""
    bad = [
        (int(np.argmax(~np.isfinite(v))), name)
        for name, v in metrics.items()
        if not np.all(np.isfinite(v))
    ]
    if bad:
        offset, name = min(bad)
        value = float(np.asarray(metrics[name])[offset])
        raise TrainingDiverged(
            f"metric '{name}' became {value} at step {first_step + offset + 1}; "
            "lower the learning rate, tighten clip_norm or check the data"
        )


def _summarise(metrics: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in metrics.items()}


def fit(
    task: Task,
    arrays: Mapping[str, np.ndarray],
    config: TrainConfig,
    *,
    run_dir: str | Path | None = None,
    run_info: Mapping[str, Any] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainState:
    """Train ``task`` on ``arrays`` (a dict of equally long numpy arrays) as ``config`` says.

    Updates run in scanned chunks that end at multiples of ``config.log_every`` and at the last
    step, so any ``steps`` works; each chunk is one log line.

    Args:
      task: the family's :class:`Task`.
      arrays: training data, e.g. ``{"x": images, "y": labels}``; batches are dicts of the same
        keys with a leading ``batch_size`` axis.
      config: the run's :class:`TrainConfig`; with ``progress`` its
        :meth:`TrainConfig.describe` line is printed first.
      run_dir: where ``config.json``, ``metrics.jsonl`` and ``checkpoints/`` go, owned by this
        call for its duration (:func:`genjax.runfolder.lock`). If it already holds a
        checkpoint, training resumes from the newest intact one once the saved record is
        checked against ``config`` and ``run_info`` (which fields may change:
        :mod:`genjax.runfolder`).
      run_info: extra JSON-able facts stored in ``config.json`` (the recipe, data set, options).
      mesh: a device mesh from :func:`genjax.parallel.make_mesh`; batches are sharded over its
        ``"batch"`` axis and parameters replicated. ``None`` runs on the default device.
      progress: print the config line and show a tqdm bar with the live loss.
      stop_after: stop (and checkpoint) after this many steps in total, as if interrupted;
        ``fit`` called again on the same ``run_dir`` carries on.

    Returns:
      The final :class:`TrainState`; evaluate ``state.ema_params`` (equal to ``state.params``
      when ``config.ema_decay`` is ``None``).

    Raises:
      TrainingDiverged: a metric became NaN/inf; the message names the step, the metric and
        the last good checkpoint to resume from with a lower rate.
      TrainingInterrupted: ``KeyboardInterrupt``; pending checkpoints are flushed first.
      OSError: a write failed (``errno.ENOSPC`` for a full disk); the newest complete
        checkpoint stays the latest and ``metrics.jsonl`` does not run past it.
      genjax.runfolder.RunFolderError: the folder is locked by a live process, holds another
        run (:class:`~genjax.runfolder.ConfigMismatch`), no intact checkpoint, or a corrupt
        ``config.json``; the folder is left as it was.
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    state, tx = init_state(task, config, arrays)
    shard_batch = lambda b: b
    if mesh is not None:
        state = parallel.replicate(state, mesh)
        shard_batch = parallel.batch_sharder(mesh, config.batch_size)
    device_arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
    if mesh is not None:
        device_arrays = parallel.replicate(device_arrays, mesh)
    chunks: dict[int, Callable] = {}

    def chunk(state, length):
        if length not in chunks:
            chunks[length] = make_train_chunk(
                task, config, tx, device_arrays, shard_batch=shard_batch, length=length
            )
        return chunks[length](state)

    manager = None
    with contextlib.ExitStack() as stack:
        if run_dir is not None:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(runfolder.lock(run_dir))
            state = _prepare_run(run_dir, config, run_info, state, arrays)
            manager = checkpoints.CheckpointManager(run_dir / "checkpoints")
            if mesh is not None:
                state = parallel.replicate(state, mesh)
        start = int(state.step)
        end = config.steps if stop_after is None else min(config.steps, stop_after)
        if progress:
            print(config.describe(), flush=True)
        bar = tqdm(total=end, initial=start, disable=not progress, desc="train", unit="step")
        tic = time.perf_counter()
        try:
            while int(state.step) < end:
                first = int(state.step)
                length = min(config.log_every - first % config.log_every, end - first)
                state, metrics = chunk(state, length)
                metrics = jax.device_get(metrics)
                check_finite(metrics, first)
                summary = _summarise(metrics)
                step = int(state.step)
                bar.update(length)
                bar.set_postfix(loss=f"{summary.get('loss', float('nan')):.4g}")
                if run_dir is not None:
                    record = {"step": step, "time": time.perf_counter() - tic, **summary}
                    _append_metrics(run_dir / "metrics.jsonl", record)
                    every = config.checkpoint_every
                    if step == end or (every is not None and step % every == 0):
                        manager.save(step, state)
            if manager is not None:
                manager.wait()
        except BaseException as err:
            _stop(err, manager, run_dir, config, run_info)
            raise
        finally:
            bar.close()
    return state


def _append_metrics(path: Path, record: Mapping[str, Any]) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:  # name the file: a failed write() does not
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def _stop(err, manager, run_dir, config: TrainConfig, run_info) -> None:
    """Leave the run folder consistent after ``err`` stopped :func:`fit`: pending checkpoint
    writes flushed (or abandoned when they fail), ``metrics.jsonl`` trimmed to the newest
    complete checkpoint; then raise :class:`TrainingInterrupted` for an interrupt, an
    ``OSError`` naming the run folder for a failed write that names no file, and a
    :class:`TrainingDiverged` naming the checkpoint to resume from for a divergence."""
    last = 0
    if manager is not None:
        with contextlib.suppress(Exception, KeyboardInterrupt):
            manager.wait()
        with contextlib.suppress(Exception, KeyboardInterrupt):
            manager.close()
        last = manager.latest_step() or 0
        with contextlib.suppress(OSError, runfolder.CorruptFile):  # keep `err` the error raised
            runfolder.trim_metrics(run_dir / "metrics.jsonl", last)
    if isinstance(err, KeyboardInterrupt):
        if manager is None:
            message = "interrupted; nothing was saved (fit without run_dir)"
            raise TrainingInterrupted(0, message) from None
        raise TrainingInterrupted(
            last,
            f"interrupted: the last checkpoint is step {last}; run again on {run_dir} to "
            f"resume from step {last}",
        ) from None
    if isinstance(err, OSError) and err.filename is None and run_dir is not None:
        raise OSError(err.errno, err.strerror or str(err), str(run_dir)) from err
    if isinstance(err, TrainingDiverged):
        lower = f"{config.lr / 10:g}"
        if manager is None or not last:
            advice = f"start again with a lower learning rate (e.g. lr={lower})"
        else:
            recipe = (run_info or {}).get("recipe", "RECIPE")
            advice = (
                f"the last good checkpoint is step {last} in {run_dir}: resume from it with a "
                f"lower learning rate (lr={lower}; genjax train {recipe} --out {run_dir} "
                f"--lr {lower}, with the run's other flags)"
            )
        raise TrainingDiverged(f"{err.args[0]}; {advice}") from None


def _config_fields(config: TrainConfig) -> dict[str, Any]:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if config.custom_optimizer:
        fields["optimizer"] = _CUSTOM
    return fields


def _data_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """A short SHA-256 of the training arrays (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}{array.shape}{array.dtype}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def _prepare_run(
    run_dir: Path,
    config: TrainConfig,
    run_info: Mapping[str, Any] | None,
    like: TrainState,
    arrays: Mapping[str, np.ndarray],
) -> TrainState:
    """Check the run folder against ``config``, ``run_info`` and a digest of ``arrays``
    (``train_data_sha256``; a record without one is not checked for it) and restore its newest
    intact checkpoint (:mod:`genjax.runfolder`); only then record the new segment, move corrupt
    checkpoints aside (to ``corrupt_checkpoints/``) and trim ``metrics.jsonl`` to the restored
    step."""
    fields, info = _config_fields(config), dict(run_info or {})
    saved = runfolder.read_record(run_dir)
    manager = checkpoints.CheckpointManager(run_dir / "checkpoints")
    resuming = saved is not None and bool(manager.all_steps())
    if not resuming or "train_data_sha256" in saved:
        info["train_data_sha256"] = _data_digest(arrays)
    try:
        if resuming:  # the fields first: the clearer message
            runfolder.plan_resume(run_dir, saved, {**fields, "steps": math.inf}, info, 0)
        state, step, bad = runfolder.restore_newest(manager, like, run_dir)
    finally:
        manager.close()
    if step is None or saved is None:
        record = runfolder.new_record(fields, info)
    else:
        record = runfolder.plan_resume(run_dir, saved, fields, info, step)
    if step is not None and config.steps == step:
        return state  # nothing to train: the folder stays as it is
    if record is not None and record != saved:
        runfolder.write_record(run_dir, record)
    for bad_step in bad:
        aside = run_dir / "corrupt_checkpoints"
        aside.mkdir(exist_ok=True)
        os.replace(manager.directory / str(bad_step), aside / str(bad_step))
    runfolder.trim_metrics(run_dir / "metrics.jsonl", step or 0)
    return state


def read_config(run_dir: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """Read back ``config.json``: the :class:`TrainConfig` in force at the end of the run's
    history (:mod:`genjax.runfolder`) and the ``run_info`` facts.

    Raises:
      FileNotFoundError: there is no ``config.json``.
      genjax.runfolder.CorruptFile: it cannot be parsed.
    """
    record = runfolder.read_record(run_dir)
    if record is None:
        raise FileNotFoundError(
            f"{Path(run_dir) / 'config.json'} not found: is {run_dir} a genjax run folder?"
        )
    fields, info = runfolder.current_settings(record)
    if fields.get("optimizer") == _CUSTOM:
        raise ValueError(
            f"{run_dir} was trained with a user optax.GradientTransformation, which config.json "
            "cannot hold: build its TrainConfig again to restore it"
        )
    return TrainConfig(**fields), info


_CUSTOM = "custom optax.GradientTransformation"
