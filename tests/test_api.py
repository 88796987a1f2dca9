"""The contract of docs/api.md, checked mechanically over every public module."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import genjax

ROOT = Path(__file__).resolve().parents[1]
DERIVATION = re.compile(r"Derivation:\s*(.+)")
NOTE = re.compile(r"derivations/[0-9]{2}-[a-z0-9-]+\.md")
# A draw from a key, as opposed to making a key from a seed (jax.random.key(seed)).
DRAWS = re.compile(
    r"\brandom\.(normal|uniform|bernoulli|categorical|randint|permutation|choice|gumbel|"
    r"truncated_normal|bits|split|fold_in|rademacher|exponential|gamma|beta|dirichlet)\("
)
MAKES_KEY = re.compile(r"\brandom\.(key|PRNGKey)\(")
FAMILY_SAMPLERS = {
    "genjax.vae": ("key", "model", "params", "n"),
    "genjax.flows": ("key", "model", "params", "n"),
    "genjax.gan": ("key", "generator", "params", "n"),
    "genjax.diffusion": ("key", "schedule", "model_fn", "shape"),
    "genjax.latent_diffusion": ("key", "model", "params", "n"),
    "genjax.captioning": ("key", "model", "params", "images"),
}


def _public_modules() -> list[str]:
    names = ["genjax"]
    for info in pkgutil.walk_packages(genjax.__path__, "genjax."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


PUBLIC_MODULES = _public_modules()


def _exports(module_name: str):
    module = importlib.import_module(module_name)
    return module, [(name, getattr(module, name)) for name in module.__all__]


def _functions(module_name: str):
    """The public functions a module exports (not classes, constants or submodules)."""
    _, exports = _exports(module_name)
    return [(n, f) for n, f in exports if inspect.isfunction(f)]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_module_lists_its_api_in_all(module_name):
    module = importlib.import_module(module_name)
    assert isinstance(getattr(module, "__all__", None), list | tuple), module_name
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names undefined {missing}"
    # Everything the module defines without a leading underscore is in __all__.
    defined = [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module_name
    ]
    unlisted = sorted(set(defined) - set(module.__all__))
    assert not unlisted, f"{module_name} defines public names missing from __all__: {unlisted}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_exported_definition_has_a_docstring_and_its_derivation(module_name):
    module, exports = _exports(module_name)
    covered = DERIVATION.search(module.__doc__ or "") is not None
    for name, obj in exports:
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        assert doc.strip(), f"{module_name}.{name} has no docstring"
        if covered:
            line = DERIVATION.search(doc)
            assert line, f"{module_name}.{name} has no 'Derivation:' line (its module has one)"
            for note in NOTE.findall(line.group(1)):
                assert (ROOT / note).is_file(), f"{module_name}.{name} cites missing {note}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_anything_random_takes_key_first(module_name):
    for name, fn in _functions(module_name):
        params = list(inspect.signature(fn).parameters)
        if "query" in params:  # attention's `key` is the keys of query-key-value
            continue
        try:
            source = inspect.getsource(fn)
        except OSError:
            continue
        draws = DRAWS.search(source) and not MAKES_KEY.search(source)
        if draws or "key" in params:
            assert params and params[0] == "key", (
                f"{module_name}.{name}{inspect.signature(fn)} draws randomness: key goes first"
            )


def _log_likelihoods():
    found = {}
    for module_name in PUBLIC_MODULES:
        for name, fn in _functions(module_name):
            if name.endswith("_log_likelihood"):
                found.setdefault(name, fn)
    return found


B, D, K, LEVELS = 3, 5, 4, 17
_rng = np.random.default_rng(0)
_PIXELS = (_rng.integers(0, LEVELS, (B, D)) / (LEVELS - 1)).astype(np.float32)
# Each log-likelihood's data and parameters: (x [B, D], parameters with a leading [K] axis,
# keyword options). Parameters are given for the data's event axes.
LIKELIHOOD_INPUTS = {
    "gaussian_log_likelihood": (
        _rng.normal(size=(B, D)).astype(np.float32),
        (_rng.normal(size=(K, B, D)), _rng.normal(size=(K, B, D))),
        {},
    ),
    "bernoulli_log_likelihood": (
        (_rng.uniform(size=(B, D)) > 0.5).astype(np.float32),
        (_rng.normal(size=(K, B, D)),),
        {},
    ),
    "discretized_logistic_log_likelihood": (
        _PIXELS,
        (_rng.uniform(size=(K, B, D)), _rng.normal(size=(K, B, D)) - 2.0, LEVELS),
        {},
    ),
    "categorical_log_likelihood": (
        _PIXELS,
        (_rng.normal(size=(K, B, D, LEVELS)), LEVELS),
        {},
    ),
}


def test_every_log_likelihood_is_covered_here():
    assert set(_log_likelihoods()) == set(LIKELIHOOD_INPUTS)


@pytest.mark.parametrize("name", sorted(LIKELIHOOD_INPUTS))
def test_log_likelihoods_take_data_first_and_event_ndims_by_keyword(name):
    params = inspect.signature(_log_likelihoods()[name]).parameters
    assert next(iter(params)) == "x", f"{name}: the data goes first"
    assert params["event_ndims"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["event_ndims"].default == 1


@pytest.mark.parametrize("name", sorted(LIKELIHOOD_INPUTS))
def test_log_likelihoods_broadcast_over_a_leading_sample_axis(name):
    fn = _log_likelihoods()[name]
    x, dist, options = LIKELIHOOD_INPUTS[name]
    dist = tuple(jnp.asarray(p, jnp.float32) if np.ndim(p) else p for p in dist)
    got = fn(jnp.asarray(x), *dist, **options)
    assert got.shape == (K, B)
    tiled = fn(jnp.broadcast_to(x, (K, B, D)), *dist, **options)
    np.testing.assert_allclose(got, tiled, rtol=1e-6, atol=1e-5)
    # ... and the other way round: samples of the data against one set of parameters.
    one = tuple(p[0] if np.ndim(p) else p for p in dist)
    xs = jnp.broadcast_to(x, (K, B, D))
    np.testing.assert_allclose(fn(xs, *one, **options), jnp.broadcast_to(got[0], (K, B)))
    rows = jnp.stack(
        [fn(jnp.asarray(x), *(p[k] if np.ndim(p) else p for p in dist)) for k in range(K)]
    )
    np.testing.assert_allclose(got, rows, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("module_name", sorted(FAMILY_SAMPLERS))
def test_every_family_has_the_contract_sampler(module_name):
    module = importlib.import_module(module_name)
    assert "sample" in module.__all__, f"{module_name} exports no sample()"
    params = list(inspect.signature(module.sample).parameters.values())
    head = FAMILY_SAMPLERS[module_name]
    assert tuple(p.name for p in params[: len(head)]) == head
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[: len(head)])
    for p in params[len(head) :]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{module_name}.sample: {p.name}"
        assert p.default is not inspect.Parameter.empty, f"{module_name}.sample: {p.name}"
    if "diffusion" not in module_name:  # latent-variable samplers scale the prior
        assert inspect.signature(module.sample).parameters["temperature"].default == 1.0


def test_guidance_uses_one_name():
    diffusion = importlib.import_module("genjax.diffusion")
    for name in ("classifier_guidance", "classifier_free_guidance"):
        params = inspect.signature(getattr(diffusion, name)).parameters
        assert "guidance_scale" in params and "scale" not in params, name


def test_one_dequantize():
    exporters = [m for m in PUBLIC_MODULES if "dequantize" in _exports(m)[0].__all__]
    assert exporters == ["genjax.data"]


def test_samplers_share_option_names():
    """An option with the same meaning has the same name in every family's sampler."""
    synonyms = {"scale", "steps", "num_samples", "temp", "guidance"}
    for module_name in FAMILY_SAMPLERS:
        params = set(inspect.signature(importlib.import_module(module_name).sample).parameters)
        assert not params & synonyms, f"{module_name}.sample uses {params & synonyms}"


def test_time_steps_may_be_scalars():
    diffusion = importlib.import_module("genjax.diffusion")
    schedule = diffusion.linear_schedule(10)
    x0 = jnp.ones((2, 3))
    noise = jnp.zeros((2, 3))
    key = jax.random.key(0)
    by_int = diffusion.q_sample(key, schedule, x0, 4, noise=noise)
    by_batch = diffusion.q_sample(key, schedule, x0, jnp.array([4, 4]), noise=noise)
    np.testing.assert_array_equal(by_int, by_batch)
