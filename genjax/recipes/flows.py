r"""Flow recipes: RealNVP on the 2-D toy sets and on dequantised digits (and MNIST).

* ``flow_two_moons``, ``flow_eight_gaussians``, ``flow_checkerboard``: RealNVP with MLP
  conditioners on 2-D points. Metric: mean test log-likelihood in nats (higher is better).
  Baseline: a full-covariance scikit-learn ``GaussianMixture`` fit to the same training points,
  its component count (1, 2, 4, ... up to 64, until the validation score drops) chosen on a
  validation slice of the training set and then refit on all of it. Where the data's
  density is known (eight Gaussians, checkerboard) the report also gives the true density's
  test log-likelihood, the ceiling any model can reach on average.
* ``flow_digits``: multi-scale RealNVP with ResNet conditioners and a logit pre-processing layer
  on 8x8 digits dequantised to their 17 levels. Metric: test bits per dimension (lower is
  better). Baselines on the *same* dequantised test images, in the same units
  (:func:`genjax.metrics.bits_per_dim`): a full-covariance ``GaussianMixture`` and a Gaussian
  ``KernelDensity``, each with its hyper-parameter chosen on a validation slice of the
  training set; the report's baseline is the better of the two, both are in ``extra``.
* ``flow_mnist``: the same on 28x28 MNIST with 256 levels (``--data-dir`` a folder of IDX files
  or a tensorflow-datasets directory); published context: RealNVP-family models reach about
  1.0-1.1 bits/dim (Glow: 1.05).

Derivation: derivations/10-realnvp.md
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genjax import data as data_lib
from genjax import flows as F
from genjax import metrics, viz
from genjax.data import Dataset
from genjax.recipes import Option, Recipe, Report, register
from genjax.recipes.common import one_blas_thread, select_on_validation
from genjax.train import Task, TrainConfig

__all__ = [
    "EVAL_DEQUANT_DRAWS",
    "EVAL_KEY",
    "IMAGE_DEFAULTS",
    "LOGIT_ALPHA",
    "TRUE_LOG_PROB",
    "VECTOR_DEFAULTS",
    "Setup",
    "dequantised_test",
    "gmm_2d",
    "image_baselines",
    "make_task",
]

EVAL_DEQUANT_DRAWS = 4  # dequantisation draws per test image (the bound is an expectation)
EVAL_KEY = 1234  # fixed: model and baselines see the very same dequantised test images
GMM_COMPONENTS_2D = (1, 2, 4, 8, 16, 32, 64)  # tried in order until validation stops improving
GMM_COMPONENTS_IMAGES = (1, 2, 4, 8)
GMM_REG_COVAR_IMAGES = 1e-4  # ~ the dequantisation noise variance (1/17)²/12 ≈ 3e-4
KDE_BANDWIDTHS = (0.06, 0.08, 0.1, 0.13, 0.16)
MAX_BASELINE_TRAIN = 10_000  # training images the image baselines are fit on (MNIST: a subset)
TEMPERATURES = (0.5, 0.7, 1.0)
IMAGE_DEFAULTS = {"num_couplings": 2, "features": 32, "depth": 1, "num_scales": 2}
VECTOR_DEFAULTS = {"num_couplings": 8, "features": 64, "depth": 2}
LOGIT_ALPHA = 0.05
SAMPLE_BATCH = 64


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """What a flow recipe's task, evaluation and figures share.

    Attributes:
      model: the :class:`genjax.flows.RealNVP`.
      event_shape: shape of one example.
      levels: discrete levels per value for images (dequantised), ``None`` for 2-D points.

    Derivation: derivations/10-realnvp.md
    """

    model: F.RealNVP
    event_shape: tuple[int, ...]
    levels: int | None
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_dims(self) -> int:
        return math.prod(self.event_shape)

    def prepare(self, key, x):
        """Dequantise images (:func:`genjax.data.dequantize`); points pass unchanged."""
        return x if self.levels is None else data_lib.dequantize(key, x, self.levels)

    def init(self, key, batch):
        k_init, k_deq = jax.random.split(key)
        return jax.jit(self.model.init)(k_init, self.prepare(k_deq, jnp.asarray(batch["x"])))

    def log_prob(self, params, y):
        return self.model.apply(params, y)

    def loss(self, params, key, batch):
        lp = self.log_prob(params, self.prepare(key, batch["x"]))
        if self.levels is None:
            return -jnp.mean(lp), {}
        bpd = jnp.mean(metrics.bits_per_dim(lp, self.num_dims, self.levels))
        return bpd, {"bits_per_dim": bpd}

    @property
    def eval_batch(self) -> int:
        """Fixed batch of the jitted passes (inputs are padded), so each compiles once."""
        return 512 if self.levels is not None else 4096

    def _jitted(self, name: str):
        if name not in self._cache:
            method = {"forward": "forward_and_log_det", "inverse": "inverse"}[name]
            self._cache[name] = jax.jit(
                lambda params, v: self.model.apply(params, v, method=method)
            )
        return self._cache[name]

    def _batched(self, name: str, params, v: np.ndarray, batch: int):
        fn, out = self._jitted(name), []
        for i in range(0, len(v), batch):
            chunk = np.asarray(v[i : i + batch], np.float32)
            pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)
            res = fn(params, jnp.asarray(np.concatenate([chunk, pad])))
            n = len(chunk)
            out.append(jax.tree.map(lambda r, n=n: np.asarray(r[:n]), res))
        return jax.tree.map(lambda *parts: np.concatenate(parts), *out)

    def forward(self, params, y: np.ndarray):
        """``(z, log_det)`` of the flow on ``y`` (numpy, any length)."""
        return self._batched("forward", params, y, self.eval_batch)

    def eval_log_prob(self, params, y: np.ndarray) -> np.ndarray:
        """``[n]`` log-densities of ``y`` (numpy, any length), in nats."""
        z, log_det = self.forward(params, y)
        event_ndims = len(self.event_shape)
        return np.asarray(F.standard_normal_log_prob(jnp.asarray(z), event_ndims)) + log_det

    def inverse(self, params, z: np.ndarray) -> np.ndarray:
        """``x = f^{-1}(z)`` (numpy, any length), clipped to [0, 1] for images."""
        x = self._batched("inverse", params, z, SAMPLE_BATCH)
        return np.clip(x, 0.0, 1.0) if self.levels is not None else x

    def sample(self, params, key, n: int, temperature: float = 1.0) -> np.ndarray:
        r"""``n`` draws :math:`x = f^{-1}(T z)`, :math:`z \sim N(0, I)`: :func:`genjax.flows.sample`
        in fixed-size jitted batches, clipped to [0, 1] for images."""
        z = temperature * jax.random.normal(key, (n, *self.event_shape))
        return self.inverse(params, np.asarray(z))


def make_task(dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """The :class:`Task` of a flow recipe. ``options`` override the model's defaults:
    ``num_couplings``, ``features``, ``depth``, ``num_scales`` (images), ``logit_alpha``.

    Derivation: derivations/10-realnvp.md
    """
    images = len(dataset.shape) == 3
    opts = {**(IMAGE_DEFAULTS if images else VECTOR_DEFAULTS), **options}
    if images:
        opts.setdefault("logit_alpha", LOGIT_ALPHA)
    model = F.RealNVP(tuple(dataset.shape), **opts)
    setup = Setup(model, tuple(dataset.shape), dataset.levels if images else None)
    return Task(init=setup.init, loss=setup.loss, sample=setup.sample, model=setup)


# ----------------------------------------------------------------------------- 2-D


@functools.cache
def _gmm_2d(name: str, train: bytes, shape: tuple[int, ...]):
    """The validation-selected full-covariance GMM on a 2-D training set, refit on all of it:
    more components until the validation score stops improving."""
    from sklearn.mixture import GaussianMixture

    x = np.frombuffer(train, np.float32).reshape(shape)
    gmm = lambda k: GaussianMixture(k, covariance_type="full", random_state=0)
    return select_on_validation(gmm, GMM_COMPONENTS_2D, x, stop_when_worse=True)


def gmm_2d(dataset: Dataset):
    """``(fitted GaussianMixture, components)`` for ``dataset``'s training points, the count
    chosen on a validation split (:func:`genjax.recipes.common.select_on_validation`).

    Derivation: derivations/10-realnvp.md
    """
    x = np.ascontiguousarray(dataset.train["x"], np.float32)
    return _gmm_2d(dataset.name, x.tobytes(), x.shape)


TRUE_LOG_PROB = {
    "eight_gaussians": lambda x: data_lib.gaussian_mixture_log_prob(x, data_lib.ring_means(), 0.02),
    "checkerboard": data_lib.checkerboard_log_prob,
}


def _evaluate_2d(task: Task, params, dataset: Dataset, key) -> Report:
    del key  # deterministic: exact log-likelihoods on the fixed test split
    setup = task.model
    test = np.asarray(dataset.test["x"], np.float32)
    flow = float(np.mean(setup.eval_log_prob(params, test)))
    gmm, components = gmm_2d(dataset)
    with one_blas_thread():
        gmm_log_likelihood = float(np.mean(gmm.score_samples(test)))
    extra = {"gmm_components": float(components)}
    if dataset.name in TRUE_LOG_PROB:
        extra["true_density_log_likelihood"] = float(
            np.mean(np.asarray(TRUE_LOG_PROB[dataset.name](jnp.asarray(test))))
        )
    return Report(
        metric="test log-likelihood (nats per point)",
        value=flow,
        baseline=f"full-covariance GaussianMixture, {components} components",
        baseline_value=gmm_log_likelihood,
        lower_is_better=False,
        extra=extra,
    )


def _figures_2d(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """Held-out data beside the flow's density, the GMM's and (where known) the true one."""
    import matplotlib.pyplot as plt  # genjax.viz selected the Agg backend

    del key
    setup = task.model
    test = np.asarray(dataset.test["x"][:3000])
    lo, hi = test.min(0) - 0.5, test.max(0) + 0.5
    side = 200
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], side), np.linspace(lo[1], hi[1], side))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)  # [side², 2]
    panels = [("RealNVP", setup.eval_log_prob(params, grid))]
    gmm, components = gmm_2d(dataset)
    with one_blas_thread():
        panels.append((f"GMM ({components} comp.)", gmm.score_samples(grid)))
    if dataset.name in TRUE_LOG_PROB:
        panels.append(("true", np.asarray(TRUE_LOG_PROB[dataset.name](jnp.asarray(grid)))))
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(3.2 * (1 + len(panels)), 3.3))
    axes[0].scatter(test[:, 0], test[:, 1], s=1, alpha=0.4)
    axes[0].set_title("held-out data")
    for ax, (title, log_p) in zip(axes[1:], panels, strict=True):
        ax.imshow(
            np.exp(log_p).reshape(side, side),
            origin="lower",
            extent=(lo[0], hi[0], lo[1], hi[1]),
            cmap="magma",
        )
        ax.set_title(f"{title} density")
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dataset.name}_density.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------- images


def dequantised_test(dataset: Dataset) -> np.ndarray:
    """``[EVAL_DEQUANT_DRAWS * N, *shape]``: the fixed dequantised test images every model is
    scored on (draw ``d`` of image ``i`` at row ``d * N + i``).

    Derivation: derivations/10-realnvp.md
    """
    keys = jax.random.split(jax.random.key(EVAL_KEY), EVAL_DEQUANT_DRAWS)
    x = jnp.asarray(dataset.test["x"])
    return np.concatenate([np.asarray(data_lib.dequantize(k, x, dataset.levels)) for k in keys])


@functools.cache
def _image_baselines(name: str, train: bytes, test: bytes, dim: int, levels: int):
    """Test bits/dim of the validation-selected GMM and KDE, fit on dequantised training
    images, scored on the given dequantised test images."""
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import KernelDensity

    x = np.frombuffer(train, np.float32).reshape(-1, dim)[:MAX_BASELINE_TRAIN]
    y_test = np.frombuffer(test, np.float32).reshape(-1, dim)
    y = np.asarray(data_lib.dequantize(jax.random.key(EVAL_KEY + 1), jnp.asarray(x), levels))
    bpd = lambda log_p: float(
        np.mean(np.asarray(metrics.bits_per_dim(jnp.asarray(log_p), dim, levels)))
    )

    def gmm(k):
        return GaussianMixture(
            k, covariance_type="full", reg_covar=GMM_REG_COVAR_IMAGES, random_state=0
        )

    gmm_fit, k = select_on_validation(gmm, GMM_COMPONENTS_IMAGES, y)
    kde_fit, bw = select_on_validation(lambda b: KernelDensity(bandwidth=b), KDE_BANDWIDTHS, y)
    with one_blas_thread():
        return {
            "gmm_bits_per_dim": bpd(gmm_fit.score_samples(y_test)),
            "gmm_components": float(k),
            "kde_bits_per_dim": bpd(kde_fit.score_samples(y_test)),
            "kde_bandwidth": bw,
        }


def image_baselines(dataset: Dataset, y_test: np.ndarray) -> dict[str, float]:
    """GMM and KDE test bits/dim on ``y_test`` (see :func:`dequantised_test`), each fit on
    dequantised training images with its setting chosen on a validation split.

    Derivation: derivations/10-realnvp.md
    """
    dim = math.prod(dataset.shape)
    x = np.ascontiguousarray(dataset.train["x"], np.float32)
    y_test = np.ascontiguousarray(y_test, np.float32)
    return _image_baselines(dataset.name, x.tobytes(), y_test.tobytes(), dim, dataset.levels)


def _evaluate_images(task: Task, params, dataset: Dataset, key) -> Report:
    del key  # deterministic: fixed dequantisation draws shared with the baselines
    setup = task.model
    y_test = dequantised_test(dataset)
    log_p = setup.eval_log_prob(params, y_test)
    bpd = metrics.bits_per_dim(jnp.asarray(log_p), setup.num_dims, setup.levels)
    flow = float(np.mean(np.asarray(bpd)))
    base = image_baselines(dataset, y_test)
    gmm, kde = base["gmm_bits_per_dim"], base["kde_bits_per_dim"]
    if gmm <= kde:
        name = f"full-covariance GaussianMixture, {base['gmm_components']:.0f} components"
    else:
        name = f"Gaussian KernelDensity, bandwidth {base['kde_bandwidth']:g}"
    return Report(
        metric=f"test bits/dim (dequantised, {dataset.levels} levels)",
        value=flow,
        baseline=name,
        baseline_value=min(gmm, kde),
        extra={**base, "uniform_bits_per_dim": math.log2(dataset.levels)},
    )


def _figures_images(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """Samples at temperatures 0.5/0.7/1.0, and latent interpolations between test images."""
    import matplotlib.pyplot as plt  # genjax.viz selected the Agg backend

    setup = task.model
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(TEMPERATURES), figsize=(3.0 * len(TEMPERATURES), 3.2))
    for ax, t in zip(axes, TEMPERATURES, strict=True):
        images = setup.sample(params, key, 64, t)  # the same z for every T, scaled by T
        ax.imshow(viz.tile_images(images, ncols=8, pad=0)[..., 0], cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"T = {t:g}")
        ax.axis("off")
    fig.tight_layout()
    samples_path = out_dir / f"{dataset.name}_samples.png"
    fig.savefig(samples_path, dpi=80)
    plt.close(fig)

    # z of pairs of dequantised test images, linearly interpolated, mapped back by the inverse
    pairs, steps = 6, 10
    x = jnp.asarray(dataset.test["x"][: 2 * pairs])
    y = np.asarray(data_lib.dequantize(jax.random.key(EVAL_KEY), x, setup.levels))
    z = setup.forward(params, y)[0].reshape(2, pairs, 1, -1)  # [2, pairs, 1, D]
    w = np.linspace(0.0, 1.0, steps)[None, :, None]  # [1, steps, 1]
    zs = (1.0 - w) * z[0] + w * z[1]  # [pairs, steps, D]
    images = setup.inverse(params, zs.reshape(pairs * steps, *setup.event_shape))
    fig, ax = plt.subplots(figsize=(steps * 0.5, pairs * 0.5 + 0.4))
    grid = viz.tile_images(images, ncols=steps, pad=0)[..., 0]  # one row per pair
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("latent interpolation (left: test image, right: another)", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    interp_path = out_dir / f"{dataset.name}_interpolation.png"
    fig.savefig(interp_path, dpi=80)
    plt.close(fig)
    return [samples_path, interp_path]


# ----------------------------------------------------------------------------- registry


# (steps, batch_size, lr, warmup_steps, log_every) of the tour's full and quick budgets; the
# full budgets keep an EMA of the parameters, the quick ones do not.
_BUDGETS = {
    ("2d", False): (10_000, 512, 1e-3, 200, 500),
    ("2d", True): (300, 256, 5e-3, 30, 150),
    ("images", False): (5_000, 64, 2e-3, 100, 250),
    ("images", True): (300, 64, 3e-3, 30, 100),
}


def _config(kind: str, quick: bool) -> TrainConfig:
    steps, batch_size, lr, warmup_steps, log_every = _BUDGETS[kind, quick]
    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        ema_decay=None if quick else 0.999,
        log_every=log_every,
    )


_IMAGE_SUMMARY = "multi-scale RealNVP on dequantised {}, bits/dim vs GMM and KDE"
_2D_SUMMARY = "RealNVP (MLP couplings) on the 2-D {} set vs a GMM"
for _name, _summary, _tour, _quick_tour in (
    ("checkerboard", _2D_SUMMARY.format("checkerboard"), True, True),
    ("two_moons", _2D_SUMMARY.format("two moons"), False, False),
    ("eight_gaussians", _2D_SUMMARY.format("eight gaussians"), False, False),
    ("digits", _IMAGE_SUMMARY.format("8x8 digits"), True, False),
    ("mnist", _IMAGE_SUMMARY.format("28x28 MNIST"), False, False),
):
    _images = _name in ("digits", "mnist")
    register(
        Recipe(
            name=f"flow_{_name}",
            summary=_summary,
            make_task=make_task,
            config=functools.partial(_config, "images" if _images else "2d"),
            evaluate=_evaluate_images if _images else _evaluate_2d,
            figures=_figures_images if _images else _figures_2d,
            data=_name,
            tour=_tour,
            quick_tour=_quick_tour,
            tour_steps=10000 if _name == "checkerboard" else None,
            options={**IMAGE_DEFAULTS, "logit_alpha": Option(LOGIT_ALPHA, high=1.0)}
            if _images
            else VECTOR_DEFAULTS,
        )
    )
