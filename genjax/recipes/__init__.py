"""Recipes: a family, a data set and a budget, trained by the one loop and reported by the tour.

A recipe joins a family module (pure maths + Flax modules) to the running layer. Each module in
this package builds one or more :class:`Recipe` objects and hands them to :func:`register`;
:func:`all_recipes` imports every module here, so a new family appears in ``genjax train`` and
``genjax tour`` by adding one file. A recipe says:

* ``make_task(dataset, options) -> Task``: the :class:`genjax.train.Task` for that data;
* ``config(quick) -> TrainConfig``: the full budget (``genjax train``, ``genjax tour --full``),
  or with ``quick`` a smoke budget of about ten seconds (``genjax tour --quick``);
* ``tour_steps``: the number of updates of the full config that the default ``genjax tour``
  trains (``None``: the recipe is not in it). One or two recipes per family carry it, chosen so
  that each still beats its baseline and the whole tour ends in about 13 minutes on 2 cores;
* ``evaluate(task, params, dataset, key) -> Report``: the headline test metric beside its
  baseline computed on the same split (e.g. PCA for the autoencoder);
* ``figures(task, params, dataset, key, out_dir) -> [paths]``: PNGs for the report;
* ``tour``: whether ``genjax tour --full`` runs it (recipes on large downloaded sets say no);
* ``quick_tour``: whether ``genjax tour --quick`` runs it. One recipe per family says yes, with a
  quick budget of about ten seconds, so that the quick tour touches every family in under two
  minutes; ``--only`` overrides the selection of every budget;
* ``data``: the name of the data set it trains on (:func:`genjax.data.load_dataset`);
* ``draws_batches``: whether its loss draws its own batch from the step's key (text windows,
  generated strings, an image being optimised), so that the loop's batch only sets the batch
  size (:func:`loop_arrays`).
* ``options``: the options ``make_task`` reads (``genjax train --option KEY=VALUE``), name ->
  default or :class:`Option`; :meth:`Recipe.parse_options` refuses other names and values that
  are not of the default's type or lie outside the option's range.

The task's ``model`` is the recipe's setup object, which ``evaluate`` and ``figures`` read.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from genjax.checkpoints import CheckpointManager
from genjax.data import Dataset, load_dataset
from genjax.runfolder import restore_newest
from genjax.train import Task, TrainConfig, TrainState, fit, init_state, read_config

__all__ = [
    "BUDGETS",
    "Option",
    "Recipe",
    "Report",
    "Run",
    "all_recipes",
    "check_budget",
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


class Option(NamedTuple):
    """A recipe option whose range or type is not the one its default implies.

    A plain default in ``Recipe.options`` declares an option of the default's type: an ``int``
    must be ``>= 1``, a ``float`` finite and ``>= 0``, a tuple a JSON list of such numbers. An
    :class:`Option` sets the closed range ``[low, high]`` instead (``None``: that implied
    bound), and ``type`` when the default is ``None``.
    """

    default: Any
    low: float | None = None
    high: float | None = None
    type: type | None = None


def _parse_option(key: str, text: str, spec: Any, shown: str | None = None) -> Any:
    """The value ``text`` of the option ``key`` declared by ``spec`` (a default or an
    :class:`Option`); a value of another type or out of range is a ``ValueError`` naming it
    (and the whole value ``shown`` when ``text`` is one entry of a list)."""
    opt = spec if isinstance(spec, Option) else Option(spec)
    kind = opt.type or type(opt.default)

    def fail(what: str) -> ValueError:
        entries = "" if shown is None else " entries"
        return ValueError(f"--option {key}={shown or text}: {key}{entries} must be {what}")

    if kind in (tuple, list):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            raise fail("a JSON list such as [64, 32]") from None
        items = items if isinstance(items, list) else [items]
        element = opt._replace(default=opt.default[0] if opt.default else 1, type=None)
        return tuple(_parse_option(key, json.dumps(item), element, text) for item in items)
    if kind is bool:
        words = {"true": True, "1": True, "false": False, "0": False}
        if text.lower() not in words:
            raise fail("true or false")
        return words[text.lower()]
    if kind is str:
        return text
    if kind not in (int, float):  # declared without a type: JSON, else the text itself
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    try:
        value = kind(text)
    except ValueError:
        raise fail("an integer" if kind is int else "a number") from None
    low = opt.low if opt.low is not None else (1 if kind is int else 0.0)
    high = math.inf if opt.high is None else opt.high
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise fail(f"{'an integer' if kind is int else 'a number'} {bounds}")
    return value


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
    options: Mapping[str, Any] = {}
    tour_steps: int | None = None

    @property
    def family(self) -> str:
        """The family: the name of the module of this package that built ``make_task``."""
        fn = self.make_task
        while isinstance(fn, functools.partial):
            fn = fn.func
        return fn.__module__.rsplit(".", 1)[-1]

    def budget(self, name: str) -> TrainConfig:
        """The :class:`~genjax.train.TrainConfig` of the budget ``name`` (:data:`BUDGETS`):
        ``"quick"`` is ``config(True)``, ``"full"`` is ``config(False)``, and ``"tour"`` is the
        full config cut to ``tour_steps`` updates (its learning-rate schedule follows the new
        length); a ``ValueError`` names an unknown budget or a recipe outside the tour."""
        if check_budget(name) != "tour":
            return self.config(name == "quick")
        if self.tour_steps is None:
            raise ValueError(f"recipe {self.name!r} has no tour budget (tour_steps is None)")
        return dataclasses.replace(self.config(False), steps=self.tour_steps)

    def parse_options(self, pairs: Sequence[str]) -> dict[str, Any]:
        """``KEY=VALUE`` strings (``genjax train --option``) as this recipe's options: a key
        outside ``options`` is a ``ValueError`` listing the known keys, and a value is parsed
        with its declaration (:class:`Option`), a ``ValueError`` naming the option if it does not
        fit."""
        out = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"--option must be KEY=VALUE, got {pair!r}")
            if key not in self.options:
                known = ", ".join(sorted(self.options)) or "none"
                raise ValueError(
                    f"--option {key}: recipe {self.name!r} has no such option; known: {known}"
                )
            out[key] = _parse_option(key, text, self.options[key])
        return out


_REGISTRY: dict[str, Recipe] = {}
BUDGETS = ("quick", "tour", "full")  #: the training budgets of a recipe (:meth:`Recipe.budget`)


def check_budget(name: str) -> str:
    """``name`` if it is one of :data:`BUDGETS`, else a ``ValueError`` listing them."""
    if name not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {name!r}")
    return name


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


def run(key: jax.Array, recipe: Recipe, budget: str) -> Run:
    """Load ``recipe``'s data, train its task at the ``budget`` (:meth:`Recipe.budget`), and
    evaluate the EMA parameters (the parameters themselves when the config has no EMA) with
    ``key``."""
    dataset = load_dataset(recipe.data)
    task = recipe.make_task(dataset, {})
    config = recipe.budget(budget)
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
    parameters with ``key`` and write ``report.json``; resumes a stopped run once its saved
    record is checked (:func:`genjax.train.fit`; the folder is locked while training, and the
    fields that may change on resume are those of :mod:`genjax.runfolder`).

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

    Raises:
      genjax.runfolder.RunFolderError: the folder is in use, holds another run, no intact
        checkpoint or a corrupt ``config.json``; nothing in it is changed.
      genjax.train.TrainingDiverged, genjax.train.TrainingInterrupted, OSError: as
        :func:`genjax.train.fit` raises them, with the folder at its newest checkpoint.
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
    """The recipe, data set, task and newest intact checkpointed state of a run folder that
    :func:`train_run` wrote, read without writing anything.

    Raises:
      FileNotFoundError: the folder has no ``config.json`` or no checkpoint.
      genjax.runfolder.RunFolderError: a corrupt ``config.json``
        (:class:`~genjax.runfolder.CorruptFile`) or no intact checkpoint
        (:class:`~genjax.runfolder.NoIntactCheckpoint`); a corrupt newer checkpoint is skipped
        with a warning naming its step.
    """
    run_dir = Path(run_dir)
    config, info = read_config(run_dir)
    recipe = get(info["recipe"])
    dataset = load_dataset(info["data"], info.get("data_dir"))
    task = recipe.make_task(dataset, info.get("options", {}))
    like, _ = init_state(task, config, loop_arrays(recipe, dataset, config.batch_size))
    state, step, _ = restore_newest(CheckpointManager(run_dir / "checkpoints"), like, run_dir)
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to sample from")
    return recipe, dataset, task, state


def sample_run(key: jax.Array, run_dir: str | Path, n: int) -> Path:
    """Draw ``n`` samples from the EMA parameters of a run folder's newest intact checkpoint
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
