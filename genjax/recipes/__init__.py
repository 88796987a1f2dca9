"""Recipes: a family, a data set and a budget, trained by the one loop and reported by the tour.

A recipe joins a family module (pure maths + Flax modules) to the running layer. Each module in
this package builds one or more :class:`Recipe` objects and hands them to :func:`register`;
:func:`all_recipes` imports every module here, so a new family appears in ``genjax train`` and
``genjax tour`` by adding one file. A recipe says:

* ``make_task(dataset, options) -> Task``: the :class:`genjax.train.Task` for that data;
* ``config(quick) -> TrainConfig``: the tour's budget (``quick`` for ``genjax tour --quick``);
* ``evaluate(task, params, dataset, key) -> Report``: the headline test metric beside its
  baseline computed on the same split (e.g. PCA for the autoencoder);
* ``figures(task, params, dataset, key, out_dir) -> [paths]``: PNGs for the report;
* ``tour``: whether ``genjax tour`` runs it (recipes on large downloaded sets say no);
* ``quick_tour``: whether ``genjax tour --quick`` runs it. One recipe per family says yes, with a
  quick budget of about ten seconds, so that the quick tour touches every family in under two
  minutes; ``--only`` overrides the selection;
* ``data``: the name of the data set it trains on (:func:`genjax.data.load_dataset`);
* ``draws_batches``: whether its loss draws its own batch from the step's key (text windows,
  generated strings, an image being optimised), so that the loop's batch only sets the batch
  size (:func:`loop_arrays`).

The task's ``model`` is the recipe's setup object, which ``evaluate`` and ``figures`` read.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from genjax.checkpoints import CheckpointManager
from genjax.data import Dataset, load_dataset
from genjax.train import Task, TrainConfig, TrainState, fit, init_state, read_config

__all__ = [
    "Recipe",
    "Report",
    "Run",
    "all_recipes",
    "get",
    "loop_arrays",
    "register",
    "restore",
    "run",
    "sample_run",
    "train_run",
]


class Report(NamedTuple):
    """A recipe's headline result on the test split, beside its baseline.

    Attributes:
      metric: what ``value`` measures, with its unit (e.g. ``"test MSE per pixel"``).
      value: the model's figure.
      baseline: the reference it is compared with (e.g. ``"PCA, 8 components"``).
      baseline_value: the reference's figure on the same split and in the same unit.
      lower_is_better: the direction of ``metric``.
      extra: further named figures for the report.
    """

    metric: str
    value: float
    baseline: str
    baseline_value: float
    lower_is_better: bool = True
    extra: Mapping[str, float] = {}

    @property
    def beats_baseline(self) -> bool:
        """Whether ``value`` is better than ``baseline_value`` in the metric's direction."""
        if self.lower_is_better:
            return self.value < self.baseline_value
        return self.value > self.baseline_value


class Recipe(NamedTuple):
    """One trainable, reportable configuration of a family (see the module docstring)."""

    name: str
    summary: str
    make_task: Callable[[Dataset, Mapping[str, Any]], Task]
    config: Callable[[bool], TrainConfig]
    evaluate: Callable[[Task, Any, Dataset, jax.Array], Report]
    figures: Callable[[Task, Any, Dataset, jax.Array, Path], list[Path]] | None = None
    data: str = "digits"
    tour: bool = True
    quick_tour: bool = False
    draws_batches: bool = False


_REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry; a second recipe with the same name is an error."""
    if recipe.name in _REGISTRY and _REGISTRY[recipe.name] is not recipe:
        raise ValueError(f"a recipe named {recipe.name!r} is already registered")
    _REGISTRY[recipe.name] = recipe
    return recipe


def all_recipes() -> dict[str, Recipe]:
    """Every registered recipe by name, importing each module of this package once."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name lists the known ones."""
    recipes = all_recipes()
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(recipes)}")
    return recipes[name]


class Run(NamedTuple):
    """What :func:`run` returns: the data, the task, the trained state and the report."""

    dataset: Dataset
    task: Task
    state: TrainState
    report: Report


def loop_arrays(recipe: Recipe, dataset: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """The arrays the loop batches for ``recipe``: the training split, or, for a recipe whose
    loss draws its own batch (``draws_batches``), ``batch_size`` placeholder rows that only set
    the batch size."""
    if recipe.draws_batches:
        return {"x": np.zeros((batch_size,), np.float32)}
    return dataset.train


def run(key: jax.Array, recipe: Recipe, quick: bool) -> Run:
    """Load ``recipe``'s data, train its task at its (``quick``) budget, and evaluate the EMA
    parameters (the parameters themselves when the config has no EMA) with ``key``."""
    dataset = load_dataset(recipe.data)
    task = recipe.make_task(dataset, {})
    config = recipe.config(quick)
    state = fit(task, loop_arrays(recipe, dataset, config.batch_size), config, progress=False)
    return Run(dataset, task, state, recipe.evaluate(task, state.ema_params, dataset, key))


def train_run(
    key: jax.Array,
    recipe: Recipe,
    run_dir: str | Path,
    *,
    data: str | None = None,
    data_dir: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    **overrides: Any,
) -> Report:
    """Train ``recipe`` at its full budget into the run folder ``run_dir`` (``config.json``,
    ``metrics.jsonl``, a checkpoint every ``log_every`` steps, ``loss.png``), evaluate the EMA
    parameters with ``key`` and write ``report.json``; resumes a stopped run.

    Args:
      key: the evaluation's PRNG key.
      recipe: the :class:`Recipe`.
      run_dir: the run folder.
      data, data_dir: the data set (default: the recipe's) and where it lives.
      options: the recipe's options (e.g. ``code_dim``).
      mesh: a device mesh to shard batches over (:func:`genjax.parallel.make_mesh`).
      **overrides: :class:`~genjax.train.TrainConfig` fields replacing the recipe's.

    Returns:
      The :class:`Report`.
    """
    from genjax import viz

    data, options, run_dir = data or recipe.data, dict(options or {}), Path(run_dir)
    dataset = load_dataset(data, data_dir)
    config = recipe.config(False)
    config = dataclasses.replace(config, **{"checkpoint_every": config.log_every, **overrides})
    info = {"recipe": recipe.name, "data": data, "data_dir": data_dir, "options": options}
    task = recipe.make_task(dataset, options)
    arrays = loop_arrays(recipe, dataset, config.batch_size)
    state = fit(task, arrays, config, run_dir=run_dir, run_info=info, mesh=mesh)
    report = recipe.evaluate(task, state.ema_params, dataset, key)
    (run_dir / "report.json").write_text(json.dumps(report._asdict(), indent=2, default=float))
    viz.loss_curves(run_dir / "metrics.jsonl", run_dir / "loss.png")
    return report


def restore(run_dir: str | Path) -> tuple[Recipe, Dataset, Task, TrainState]:
    """The recipe, data set, task and latest checkpointed state of a run folder that
    :func:`train_run` wrote; a folder without a checkpoint is a ``FileNotFoundError``."""
    run_dir = Path(run_dir)
    config, info = read_config(run_dir)
    recipe = get(info["recipe"])
    dataset = load_dataset(info["data"], info.get("data_dir"))
    task = recipe.make_task(dataset, info.get("options", {}))
    like, _ = init_state(task, config, loop_arrays(recipe, dataset, config.batch_size))
    manager = CheckpointManager(run_dir / "checkpoints")
    if manager.latest_step() is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to sample from")
    return recipe, dataset, task, manager.restore_latest(like)


def sample_run(key: jax.Array, run_dir: str | Path, n: int) -> Path:
    """Draw ``n`` samples from the EMA parameters of a run folder's latest checkpoint
    (:func:`restore`) with ``key``: an image grid ``samples/samples.png`` for images
    ``[n, H, W, C]``, else the array as ``samples/samples.npy``. Returns the path written."""
    from genjax import viz

    run_dir = Path(run_dir)
    recipe, _, task, state = restore(run_dir)
    if task.sample is None:
        raise ValueError(f"recipe {recipe.name!r} has no sampler")
    samples = np.asarray(task.sample(state.ema_params, key, n))
    out = run_dir / "samples" / "samples.png"
    if samples.ndim == 4:
        return viz.image_grid(samples, out, title=f"{recipe.name}, step {int(state.step)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out.with_suffix(".npy"), samples)
    return out.with_suffix(".npy")
