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
  (:func:`genjax.flows.bits_per_dim`): a full-covariance ``GaussianMixture`` and a Gaussian
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
from genjax.data import Dataset
from genjax.recipes import Recipe, Report, register
from genjax.train import Task, TrainConfig

EVAL_DEQUANT_DRAWS = 4  # dequantisation draws per test image (the bound is an expectation)
EVAL_KEY = 1234  # fixed: model and baselines see the very same dequantised test images
VALIDATION_FRACTION = 0.2  # of the training set, for the baselines' hyper-parameters
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
    """

    model: F.RealNVP
    event_shape: tuple[int, ...]
    levels: int | None
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_dims(self) -> int:
        return math.prod(self.event_shape)

    def prepare(self, key, x):
        """Dequantise images (:func:`genjax.flows.dequantize`); points pass unchanged."""
        return x if self.levels is None else F.dequantize(key, x, self.levels)

    def init(self, key, batch):
        k_init, k_deq = jax.random.split(key)
        return jax.jit(self.model.init)(k_init, self.prepare(k_deq, jnp.asarray(batch["x"])))

    def log_prob(self, params, y):
        return self.model.apply(params, y)

    def loss(self, params, key, batch):
        lp = self.log_prob(params, self.prepare(key, batch["x"]))
        if self.levels is None:
            return -jnp.mean(lp), {}
        bpd = jnp.mean(F.bits_per_dim(lp, self.num_dims, self.levels))
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
        r"""``n`` draws :math:`x = f^{-1}(T z)`, :math:`z \sim N(0, I)` (as ``RealNVP.sample``)."""
        z = temperature * jax.random.normal(key, (n, *self.event_shape))
        return self.inverse(params, np.asarray(z))


class _Sample:
    """``Task.sample``: ``(params, key, n) -> samples`` at temperature 1, carrying the setup."""

    def __init__(self, setup: Setup):
        self.setup = setup

    def __call__(self, params, key, n):
        return self.setup.sample(params, key, n)


def make_task(dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """The :class:`Task` of a flow recipe. ``options`` override the model's defaults:
    ``num_couplings``, ``features``, ``depth``, ``num_scales`` (images), ``logit_alpha``."""
    images = len(dataset.shape) == 3
    opts = {**(IMAGE_DEFAULTS if images else VECTOR_DEFAULTS), **options}
    if images:
        opts.setdefault("logit_alpha", LOGIT_ALPHA)
    model = F.RealNVP(tuple(dataset.shape), **opts)
    setup = Setup(model, tuple(dataset.shape), dataset.levels if images else None)
    return Task(init=setup.init, loss=setup.loss, sample=_Sample(setup))


def setup_of(task: Task) -> Setup:
    """The :class:`Setup` behind a task built by :func:`make_task`."""
    return task.sample.setup


def _one_blas_thread(fn):
    """Run ``fn`` with BLAS and OpenMP on one thread: scikit-learn's many small products gain
    nothing from more, and idle threads' spinning costs several times the work on a shared
    machine (the 2-D GMM selection: 13 s of CPU on two threads, 2 s on one)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        import sklearn.mixture  # noqa: F401  (loads its BLAS and OpenMP before the limit)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return fn(*args, **kwargs)

    return wrapped


def _validation_split(x: np.ndarray):
    n_val = int(len(x) * VALIDATION_FRACTION)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[n_val:]], x[order[:n_val]]


# ----------------------------------------------------------------------------- 2-D


@functools.cache
@_one_blas_thread
def _gmm_2d(name: str, train: bytes, shape: tuple[int, ...]):
    """The validation-selected full-covariance GMM on a 2-D training set, refit on all of it."""
    from sklearn.mixture import GaussianMixture

    x = np.frombuffer(train, np.float32).reshape(shape)
    fit_x, val_x = _validation_split(x)
    gmm = lambda k: GaussianMixture(k, covariance_type="full", random_state=0)
    best, best_score = None, -np.inf
    for k in GMM_COMPONENTS_2D:  # more components until the validation score drops
        score = gmm(k).fit(fit_x).score(val_x)
        if score <= best_score:
            break
        best, best_score = k, score
    return gmm(best).fit(x), best


def gmm_2d(dataset: Dataset):
    """``(fitted GaussianMixture, components)`` for ``dataset``'s training points."""
    x = np.ascontiguousarray(dataset.train["x"], np.float32)
    return _gmm_2d(dataset.name, x.tobytes(), x.shape)


TRUE_LOG_PROB = {
    "eight_gaussians": lambda x: data_lib.gaussian_mixture_log_prob(x, data_lib.ring_means(), 0.02),
    "checkerboard": data_lib.checkerboard_log_prob,
}


@_one_blas_thread
def evaluate_2d(task: Task, params, dataset: Dataset, key) -> Report:
    del key  # deterministic: exact log-likelihoods on the fixed test split
    setup = setup_of(task)
    test = np.asarray(dataset.test["x"], np.float32)
    flow = float(np.mean(setup.eval_log_prob(params, test)))
    gmm, components = gmm_2d(dataset)
    extra = {"gmm_components": float(components)}
    if dataset.name in TRUE_LOG_PROB:
        extra["true_density_log_likelihood"] = float(
            np.mean(np.asarray(TRUE_LOG_PROB[dataset.name](jnp.asarray(test))))
        )
    return Report(
        metric="test log-likelihood (nats per point)",
        value=flow,
        baseline=f"full-covariance GaussianMixture, {components} components",
        baseline_value=float(np.mean(gmm.score_samples(test))),
        lower_is_better=False,
        extra=extra,
    )


@_one_blas_thread
def figures_2d(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """Held-out data beside the flow's density, the GMM's and (where known) the true one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    del key
    setup = setup_of(task)
    test = np.asarray(dataset.test["x"][:3000])
    lo, hi = test.min(0) - 0.5, test.max(0) + 0.5
    side = 200
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], side), np.linspace(lo[1], hi[1], side))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)  # [side², 2]
    panels = [("RealNVP", setup.eval_log_prob(params, grid))]
    gmm, components = gmm_2d(dataset)
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
    scored on (draw ``d`` of image ``i`` at row ``d * N + i``)."""
    keys = jax.random.split(jax.random.key(EVAL_KEY), EVAL_DEQUANT_DRAWS)
    x = jnp.asarray(dataset.test["x"])
    return np.concatenate([np.asarray(F.dequantize(k, x, dataset.levels)) for k in keys])


@functools.cache
@_one_blas_thread
def _image_baselines(name: str, train: bytes, test: bytes, dim: int, levels: int):
    """Test bits/dim of the validation-selected GMM and KDE, fit on dequantised training
    images, scored on the given dequantised test images."""
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import KernelDensity

    x = np.frombuffer(train, np.float32).reshape(-1, dim)[:MAX_BASELINE_TRAIN]
    y_test = np.frombuffer(test, np.float32).reshape(-1, dim)
    y = np.asarray(F.dequantize(jax.random.key(EVAL_KEY + 1), jnp.asarray(x), levels))
    fit_y, val_y = _validation_split(y)
    bpd = lambda log_p: float(np.mean(np.asarray(F.bits_per_dim(jnp.asarray(log_p), dim, levels))))

    def gmm(k):
        return GaussianMixture(
            k, covariance_type="full", reg_covar=GMM_REG_COVAR_IMAGES, random_state=0
        )

    k = min(GMM_COMPONENTS_IMAGES, key=lambda k: -gmm(k).fit(fit_y).score(val_y))
    bw = min(KDE_BANDWIDTHS, key=lambda b: -KernelDensity(bandwidth=b).fit(fit_y).score(val_y))
    return {
        "gmm_bits_per_dim": bpd(gmm(k).fit(y).score_samples(y_test)),
        "gmm_components": float(k),
        "kde_bits_per_dim": bpd(KernelDensity(bandwidth=bw).fit(y).score_samples(y_test)),
        "kde_bandwidth": bw,
    }


def image_baselines(dataset: Dataset, y_test: np.ndarray) -> dict[str, float]:
    """GMM and KDE test bits/dim on ``y_test`` (see :func:`dequantised_test`)."""
    dim = math.prod(dataset.shape)
    x = np.ascontiguousarray(dataset.train["x"], np.float32)
    y_test = np.ascontiguousarray(y_test, np.float32)
    return _image_baselines(dataset.name, x.tobytes(), y_test.tobytes(), dim, dataset.levels)


def evaluate_images(task: Task, params, dataset: Dataset, key) -> Report:
    del key  # deterministic: fixed dequantisation draws shared with the baselines
    setup = setup_of(task)
    y_test = dequantised_test(dataset)
    log_p = setup.eval_log_prob(params, y_test)
    bpd = F.bits_per_dim(jnp.asarray(log_p), setup.num_dims, setup.levels)
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


def _grid(images: np.ndarray, rows: int) -> np.ndarray:
    n, h, w, c = images.shape
    cols = n // rows
    grid = images[: rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * (h), cols * w, c)[..., 0]  # [rows H, cols W]


def figures_images(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """Samples at temperatures 0.5/0.7/1.0, and latent interpolations between test images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = setup_of(task)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(TEMPERATURES), figsize=(3.0 * len(TEMPERATURES), 3.2))
    for ax, t in zip(axes, TEMPERATURES, strict=True):
        images = setup.sample(params, key, 64, t)  # the same z for every T, scaled by T
        ax.imshow(_grid(images, 8), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"T = {t:g}")
        ax.axis("off")
    fig.tight_layout()
    samples_path = out_dir / f"{dataset.name}_samples.png"
    fig.savefig(samples_path, dpi=80)
    plt.close(fig)

    # z of pairs of dequantised test images, linearly interpolated, mapped back by the inverse
    pairs, steps = 6, 10
    x = jnp.asarray(dataset.test["x"][: 2 * pairs])
    y = np.asarray(F.dequantize(jax.random.key(EVAL_KEY), x, setup.levels))
    z = setup.forward(params, y)[0].reshape(2, pairs, 1, -1)  # [2, pairs, 1, D]
    w = np.linspace(0.0, 1.0, steps)[None, :, None]  # [1, steps, 1]
    zs = (1.0 - w) * z[0] + w * z[1]  # [pairs, steps, D]
    images = setup.inverse(params, zs.reshape(pairs * steps, *setup.event_shape))
    fig, ax = plt.subplots(figsize=(steps * 0.5, pairs * 0.5 + 0.4))
    ax.imshow(_grid(images, pairs), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("latent interpolation (left: test image, right: another)", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    interp_path = out_dir / f"{dataset.name}_interpolation.png"
    fig.savefig(interp_path, dpi=80)
    plt.close(fig)
    return [samples_path, interp_path]


# ----------------------------------------------------------------------------- registry


def _config_2d(quick: bool) -> TrainConfig:
    if quick:
        return TrainConfig(
            steps=300, batch_size=256, lr=5e-3, warmup_steps=30, ema_decay=None, log_every=150
        )
    return TrainConfig(
        steps=10_000, batch_size=512, lr=1e-3, warmup_steps=200, ema_decay=0.999, log_every=500
    )


def _config_images(quick: bool) -> TrainConfig:
    if quick:
        return TrainConfig(
            steps=300, batch_size=64, lr=3e-3, warmup_steps=30, ema_decay=None, log_every=100
        )
    return TrainConfig(
        steps=5_000, batch_size=64, lr=2e-3, warmup_steps=100, ema_decay=0.999, log_every=250
    )


for _name, _tour in (("checkerboard", True), ("two_moons", False), ("eight_gaussians", False)):
    register(
        Recipe(
            name=f"flow_{_name}",
            summary=f"RealNVP (MLP couplings) on the 2-D {_name.replace('_', ' ')} set vs a GMM",
            make_task=make_task,
            config=_config_2d,
            evaluate=evaluate_2d,
            figures=figures_2d,
            data=_name,
            tour=_tour,
            quick_tour=_tour,
        )
    )

register(
    Recipe(
        name="flow_digits",
        summary="multi-scale RealNVP on dequantised 8x8 digits, bits/dim vs GMM and KDE",
        make_task=make_task,
        config=_config_images,
        evaluate=evaluate_images,
        figures=figures_images,
        data="digits",
    )
)

register(
    Recipe(
        name="flow_mnist",
        summary="multi-scale RealNVP on dequantised 28x28 MNIST, bits/dim vs GMM and KDE",
        make_task=make_task,
        config=_config_images,
        evaluate=evaluate_images,
        figures=figures_images,
        data="mnist",
        tour=False,
    )
)
