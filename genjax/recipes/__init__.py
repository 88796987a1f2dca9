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
  minutes; ``--only`` overrides the selection.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax

from genjax.data import Dataset, load_dataset
from genjax.train import Task, TrainConfig, TrainState, fit


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


def run(recipe: Recipe, quick: bool, key: jax.Array) -> Run:
    """Load ``recipe``'s data, train its task at its (``quick``) budget, and evaluate the EMA
    parameters (the parameters themselves when the config has no EMA) with ``key``."""
    dataset = load_dataset(recipe.data)
    task = recipe.make_task(dataset, {})
    state = fit(task, dataset.train, recipe.config(quick), progress=False)
    return Run(dataset, task, state, recipe.evaluate(task, state.ema_params, dataset, key))
