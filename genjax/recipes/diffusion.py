r"""Diffusion recipes: the 1-D bimodal exercise, 2-D toy sets, digits with classifier-free guidance.

* ``diffusion_bimodal``: an MLP ε-predictor on :func:`genjax.data.bimodal_1d`, conditional on the
  mode with label dropout, so one network samples both unconditionally (mode split, should be
  ½) and on the requested mode (conditional accuracy). Baseline: the same sampler driven by the
  exact ε of the mixture (:func:`genjax.diffusion.gaussian_mixture_eps`).
* ``diffusion_two_moons``, ``diffusion_eight_gaussians``, ``diffusion_checkerboard``: an
  unconditional MLP ε-predictor; metric: sliced Wasserstein distance of samples to held-out
  data, baseline: the same distance between the two halves of the held-out data.
* ``diffusion_digits``: an unconditional U-Net on 8x8 digits; ``diffusion_digits_cfg``: a
  class-conditional U-Net trained with label dropout and sampled with classifier-free guidance;
  metric: a digits classifier's accuracy on class-conditional samples, baseline: the same
  classifier on the real test images. ``diffusion_mnist``: the same on 28x28 MNIST
  (``--data-dir`` a folder of IDX files or a tensorflow-datasets directory).

Images are mapped from [0, 1] to [-1, 1] for training; samplers clip :math:`\hat x_0` to
[-1, 1] and map back.

Derivation: derivations/11-ddpm.md, derivations/12-guidance.md, derivations/13-ddim.md
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genjax import data as data_lib
from genjax import diffusion as D
from genjax import divergences, viz
from genjax.classifier import fit_digits_classifier
from genjax.data import Dataset
from genjax.nn.unet import unet_for
from genjax.recipes import Recipe, Report, register
from genjax.recipes.common import fast_init_key
from genjax.train import Task, TrainConfig

__all__ = ["Setup", "bimodal_samples", "make_task"]

TOY_NUM_STEPS = 100  # T for vector data (cosine schedule): cheap chains that still split modes
IMAGE_NUM_STEPS = 1000
IMAGE_SAMPLE_STEPS = 10  # sampler steps (network calls) for images in evaluation and figures
IMAGE_SAMPLER = "dpm_solver_2m"  # at 10-20 steps as good as DDIM at 50-100 (docs/diffusion.md)
IMAGE_TOUR_STEPS = 2500  # updates of the digits U-Nets in the default tour
MIN_SNR_GAMMA = 5.0  # Hang et al.'s gamma, with v-prediction
TOUR_SCALES = (0.0, 1.0, 1.5, 2.0)  # guidance scales ranked in the tour's FID table
LABEL_DROP = 0.1  # Ho & Salimans's p_uncond
GUIDANCE_SCALES = (0.0, 1.0, 2.0, 4.0)  # w of classifier_free_guidance; 0 = unconditional
HEADLINE_SCALE = 2.0
EVAL_SCALES = (1.0, HEADLINE_SCALE)  # scales whose accuracy evaluation reports
EVAL_PER_CLASS = 10  # per digit and scale; figures reuse the same batch size (one compile)
TOY_EVAL_SAMPLES = 5_000


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """Everything a diffusion recipe's task, evaluation and figures share.

    Attributes:
      model: the Flax denoiser ``apply(params, x_t, t, y)``.
      schedule: the noise schedule.
      event_shape: shape of one example, e.g. ``(8, 8, 1)`` or ``(2,)``.
      num_classes: label count of a conditional model, else ``None``.
      images: whether the data are images in [0, 1] (mapped to [-1, 1]).
      sample_steps: DDIM steps for sampling, or ``None`` for DDPM over all steps.
      label_drop: label-dropout probability for classifier-free guidance.
      parameterization: what the network predicts, ``"eps"`` or ``"v"`` (or ``"x0"``).
      variance: ``"small"`` (fixed, trained by the simple loss) or ``"learned"`` (the network
        outputs v too, trained by :func:`genjax.diffusion.hybrid_loss`).
      min_snr_gamma: Min-SNR weighting of the simple loss, or ``None``.
      method: the sampler of :func:`genjax.diffusion.sample` (``None``: DDIM when
        ``sample_steps`` is set, DDPM otherwise).
      levels: discrete values per pixel of image data (the bound's decoder), else ``None``.
      tour_scales: the guidance scales whose samples the tour's FID table ranks, one row each
        (:meth:`tour_sample_sets`); empty: one row, :meth:`sample`'s.

    Derivation: derivations/11-ddpm.md, derivations/12-guidance.md, derivations/13-ddim.md,
    derivations/26-improved-diffusion.md
    """

    model: Any
    schedule: D.Schedule
    event_shape: tuple[int, ...]
    num_classes: int | None
    images: bool
    sample_steps: int | None
    label_drop: float = LABEL_DROP
    parameterization: str = "eps"
    variance: str = "small"
    min_snr_gamma: float | None = None
    method: str | None = None
    levels: int | None = None
    tour_scales: tuple[float, ...] = ()
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def encode(self, x):
        """Data as the network sees it: images from [0, 1] to [-1, 1], vectors as they are."""
        return 2.0 * x - 1.0 if self.images else x

    def decode(self, x):
        """The inverse of :meth:`encode`, clipped to [0, 1] for images."""
        return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0) if self.images else x

    def init(self, key, batch):
        x0 = self.encode(jnp.asarray(batch["x"]))
        t = jnp.zeros((x0.shape[0],), jnp.int32)
        y = self._labels(batch, x0.shape[0])
        return jax.jit(self.model.init)(fast_init_key(key), x0, t, y)

    def _labels(self, batch, n):
        if self.num_classes is None:
            return None
        return jnp.asarray(batch["y"], jnp.int32).reshape(n)

    def loss(self, params, key, batch):
        k_drop, k_loss = jax.random.split(key)
        x0 = self.encode(batch["x"])
        y = self._labels(batch, x0.shape[0])
        if y is not None:
            y = D.drop_labels(k_drop, y, self.label_drop, self.num_classes)
        model_fn = lambda xt, t: self.model.apply(params, xt, t, y)
        options = dict(parameterization=self.parameterization, min_snr_gamma=self.min_snr_gamma)
        if self.variance == "learned":
            loss = D.hybrid_loss(k_loss, self.schedule, model_fn, x0, levels=self.levels, **options)
        else:
            loss = D.ddpm_loss(k_loss, self.schedule, model_fn, x0, **options)
        return jnp.mean(loss), {}

    def sampler(
        self,
        n: int,
        guided: bool,
        trajectory: bool = False,
        method: str | None = None,
        num_steps: int | None = None,
    ) -> Callable:
        """A jitted ``sample(params, key, labels, guidance_scale)``: ``n`` decoded draws.
        ``guided`` combines conditional and null-label predictions with ``guidance_scale`` (one
        network call on a doubled batch); otherwise the network is called once with ``labels``.
        ``method`` and ``num_steps`` replace the setup's sampler and its number of steps."""
        method = self.method if method is None else method
        num_steps = self.sample_steps if num_steps is None else num_steps
        cache_key = (n, guided, trajectory, method, num_steps)
        if cache_key not in self._cache:
            shape = (n, *self.event_shape)
            clip = (-1.0, 1.0) if self.images else None

            def sample(params, key, labels, guidance_scale):
                conditional = lambda xt, t, y: self.model.apply(params, xt, t, y)
                if guided:
                    model_fn = D.guided_model_fn(
                        conditional, labels, self.num_classes, guidance_scale
                    )
                else:
                    model_fn = lambda xt, t: conditional(xt, t, labels)
                out = D.sample(
                    key,
                    self.schedule,
                    model_fn,
                    shape,
                    num_steps=num_steps,
                    method=method,
                    clip_x0=clip,
                    parameterization=self.parameterization,
                    variance=self.variance,
                    return_trajectory=trajectory,
                )
                if trajectory:
                    return self.decode(out[0]), out[1]
                return self.decode(out)

            self._cache[cache_key] = jax.jit(sample)
        return self._cache[cache_key]

    def memo(self, tag: tuple, params, key, compute: Callable):
        """``compute()``, kept for the latest ``params`` object per ``(tag, key)``: the tour
        evaluates and then plots the same parameters with the same key, so the figures show
        the very samples the evaluation scored, drawn once."""
        memo_key = ("memo", *tag, np.asarray(jax.random.key_data(key)).tobytes())
        cached = self._cache.get(memo_key)
        if cached is None or cached[0] is not params:
            cached = (params, compute())
            self._cache[memo_key] = cached
        return cached[1]

    def sample(self, params, key, n):
        """``Task.sample``: ``n`` samples; a conditional model cycles through the labels and is
        guided with ``HEADLINE_SCALE``."""
        return self.draw(params, key, n)

    def draw(
        self,
        params,
        key,
        n,
        labels=None,
        guidance_scale=HEADLINE_SCALE,
        trajectory=False,
        method=None,
        num_steps=None,
    ):
        """``n`` samples. A conditional model cycles through the labels unless given and is
        guided with ``guidance_scale`` (0: unconditional via the null label, 1: conditional);
        ``method`` and ``num_steps`` override the setup's sampler (:meth:`sampler`)."""
        sampler = functools.partial(
            self.sampler, n, trajectory=trajectory, method=method, num_steps=num_steps
        )
        if self.num_classes is None:
            return sampler(False)(params, key, None, 0.0)
        if labels is None:
            labels = jnp.arange(n) % self.num_classes
        labels = jnp.asarray(labels, jnp.int32)
        if guidance_scale == 0.0:
            labels = jnp.full((n,), self.num_classes, jnp.int32)
        guided = guidance_scale not in (0.0, 1.0)
        w = jnp.float32(guidance_scale)
        return sampler(guided)(params, key, labels, w)

    def tour_sample_sets(self, params, key, n) -> dict[str, jax.Array]:
        """The tour's FID rows: ``{"w=<scale>": n samples}`` for each of ``tour_scales`` (labels
        cycling through the classes, the same key for every scale), or ``{}`` when there are
        none (the tour then ranks :meth:`sample`'s draws)."""
        return {f"w={w:g}": self.draw(params, key, n, guidance_scale=w) for w in self.tour_scales}

    def bits_per_dim(self, params, key, images, labels=None, batch_size: int = 100):
        """The variational bound on the test NLL of ``images`` ``[N, H, W, C]`` in [0, 1], in
        bits per dimension (:func:`genjax.diffusion.vlb_nll` with the discretised decoder of
        ``levels`` values; the conditional model is read with ``labels``, or with the null label
        when ``None``); returns ``(mean, per-image [N])``."""
        x0 = self.encode(jnp.asarray(images, jnp.float32))
        n = x0.shape[0]
        if self.num_classes is not None and labels is None:
            labels = np.full((n,), self.num_classes, np.int32)

        @jax.jit
        def bound(params, key, x, y):
            model_fn = lambda xt, t: self.model.apply(params, xt, t, y)
            total, _ = D.vlb_nll(
                key,
                self.schedule,
                model_fn,
                x,
                parameterization=self.parameterization,
                variance=self.variance,
                levels=self.levels,
                clip_x0=(-1.0, 1.0),
            )
            return total

        nats, keys = [], jax.random.split(key, -(-n // batch_size))
        for j, i in enumerate(range(0, n, batch_size)):
            k = keys[j]
            y = None if labels is None else jnp.asarray(labels[i : i + batch_size], jnp.int32)
            nats.append(np.asarray(bound(params, k, x0[i : i + batch_size], y)))
        bits = np.concatenate(nats) / (math.prod(x0.shape[1:]) * math.log(2.0))  # [N]
        return float(np.mean(bits)), bits


def _setup(dataset: Dataset, options: Mapping[str, Any], *, conditional: bool) -> Setup:
    """The model and schedule for ``dataset``: an MLP for vectors, a U-Net for images."""
    num_classes = dataset.num_classes if conditional else None
    images = len(dataset.shape) == 3
    variance = str(options.get("variance", "small"))
    if images:
        num_steps = int(options.get("num_steps", IMAGE_NUM_STEPS))
        channels = dataset.shape[-1]
        model = unet_for(
            dataset.shape,
            num_steps,
            num_classes,
            base_features=int(options.get("base_features", 16)),
            out_features=2 * channels if variance == "learned" else channels,
        )
        schedule = D.cosine_schedule(num_steps)
        sample_steps = int(options.get("sample_steps", IMAGE_SAMPLE_STEPS))
    else:
        num_steps = int(options.get("num_steps", TOY_NUM_STEPS))
        model = D.MLPDenoiser(
            num_steps,
            features=int(options.get("width", 128)),
            depth=int(options.get("depth", 3)),
            num_classes=num_classes,
        )
        schedule = D.cosine_schedule(num_steps)
        sample_steps = None
    # Images default to the digits recipes' training and sampler; vectors to plain DDPM.
    gamma = options.get("min_snr_gamma", MIN_SNR_GAMMA if images else None)
    return Setup(
        model,
        schedule,
        dataset.shape,
        num_classes,
        images,
        sample_steps,
        parameterization=str(options.get("parameterization", "v" if images else "eps")),
        variance=variance,
        min_snr_gamma=None if gamma is None else float(gamma),
        method=options.get("sample_method", IMAGE_SAMPLER if images else None),
        levels=dataset.levels if images else None,
        tour_scales=tuple(options.get("tour_scales", ())),
    )


def make_task(
    dataset: Dataset, options: Mapping[str, Any], *, conditional: bool, **defaults
) -> Task:
    """The :class:`Task` of a diffusion recipe; ``options`` override the recipe's ``defaults``
    (``num_steps``, ``width``, ``depth``, ``base_features``, ``sample_steps``,
    ``sample_method``, ``parameterization``, ``variance``, ``min_snr_gamma``,
    ``tour_scales``); the task's ``model`` is its :class:`Setup`.

    Derivation: derivations/11-ddpm.md
    """
    setup = _setup(dataset, {**defaults, **options}, conditional=conditional)
    return Task(init=setup.init, loss=setup.loss, sample=setup.sample, model=setup)


# ----------------------------------------------------------------------------- metrics


SLICED_PROJECTIONS = 256


def _w1(x, y) -> float:
    return float(divergences.wasserstein_1d(jnp.ravel(jnp.asarray(x)), jnp.ravel(jnp.asarray(y))))


def _sliced_w1(key, x, y) -> float:
    """Sliced W1 with ``SLICED_PROJECTIONS`` directions; the same ``key`` gives the same
    directions, so a model and its baseline are compared on the same slices."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    return float(divergences.sliced_wasserstein(key, x, y, SLICED_PROJECTIONS))


# ----------------------------------------------------------------------------- 1-D bimodal


def _bimodal_analytic_sampler(setup: Setup, n: int):
    means = jnp.asarray(data_lib.BIMODAL_MEANS, jnp.float32)
    eps = lambda x, t: D.gaussian_mixture_eps(setup.schedule, x, t, means, data_lib.BIMODAL_STD)
    return jax.jit(lambda key: D.sample(key, setup.schedule, eps, (n, 1), clip_x0=None))


def _bimodal_draws(setup: Setup, params, key, n: int):
    """``(unconditional [n], conditional [n], asked_mode [n], trajectory [T + 1, n, 1])``.

    Unconditional draws with their reverse trajectories and conditional draws (w = 1), both
    from one compiled sampler (the trajectory variant, so the figure's trajectories need no
    second compilation); kept by :meth:`Setup.memo`.
    """

    def compute():
        k_u, k_c = jax.random.split(key)
        uncond, trajectory = setup.draw(params, k_u, n, guidance_scale=0.0, trajectory=True)
        asked = np.arange(n) % 2
        cond, _ = setup.draw(params, k_c, n, asked, guidance_scale=1.0, trajectory=True)
        return np.asarray(uncond)[:, 0], np.asarray(cond)[:, 0], asked, np.asarray(trajectory)

    return setup.memo(("bimodal", n), params, key, compute)


def bimodal_samples(key: jax.Array, task: Task, params, n: int = TOY_EVAL_SAMPLES):
    """``n`` unconditional samples and ``n`` conditional ones (w = 1), half asking for each
    mode; returns ``(unconditional [n], conditional [n], asked_mode [n])`` as numpy.

    Derivation: derivations/12-guidance.md
    """
    return _bimodal_draws(task.model, params, key, n)[:3]


def _evaluate_bimodal(task: Task, params, dataset: Dataset, key) -> Report:
    k_model, k_base = jax.random.split(key)
    uncond, cond, asked = bimodal_samples(k_model, task, params)
    test = dataset.test["x"][: len(uncond), 0]
    analytic = np.asarray(_bimodal_analytic_sampler(task.model, len(uncond))(k_base))[:, 0]
    accuracy = np.mean((cond > 0) == (asked == 1))
    return Report(
        metric="W1 of unconditional samples to test data",
        value=_w1(uncond, test),
        baseline="same DDPM sampler with the exact mixture ε",
        baseline_value=_w1(analytic, test),
        extra={
            "mode_split_upper": float(np.mean(uncond > 0)),
            "baseline_mode_split_upper": float(np.mean(analytic > 0)),
            "conditional_accuracy_w1": float(accuracy),
        },
    )


def _bimodal_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt  # genjax.viz selected the Agg backend

    k_s, _ = jax.random.split(key)  # the evaluation's samples (_evaluate_bimodal's k_model)
    uncond, cond, asked, trajectory = _bimodal_draws(task.model, params, k_s, TOY_EVAL_SAMPLES)
    grid = np.linspace(-4, 4, 400)
    density = np.exp(
        np.asarray(
            data_lib.gaussian_mixture_log_prob(
                jnp.asarray(grid)[:, None], data_lib.BIMODAL_MEANS, data_lib.BIMODAL_STD
            )
        )
    )
    trajectory = trajectory[:, :64]  # [T + 1, 64, 1]: 64 of the unconditional chains
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].hist(uncond, bins=80, density=True, alpha=0.6, label="samples (unconditional)")
    axes[0].plot(grid, density, "k", label="data density")
    axes[0].set_title(f"unconditional: {np.mean(uncond > 0):.1%} on the right mode")
    for mode in (0, 1):
        label = f"asked for mode {mode}"
        axes[1].hist(cond[asked == mode], bins=80, density=True, alpha=0.6, label=label)
    axes[1].set_title("conditional (w = 1)")
    steps = np.arange(trajectory.shape[0])[::-1]  # remaining steps, T ... 0
    axes[2].plot(steps, np.asarray(trajectory)[:, :, 0], lw=0.5, alpha=0.7)
    axes[2].invert_xaxis()
    axes[2].set_xlabel("step t (reverse time →)")
    axes[2].set_title("reverse trajectories")
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bimodal.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------- 2-D toys


def _evaluate_toy_2d(task: Task, params, dataset: Dataset, key) -> Report:
    k_s, k_proj = jax.random.split(key)
    test = dataset.test["x"]
    half = len(test) // 2
    samples = np.asarray(task.sample(params, k_s, half))
    return Report(
        metric="sliced W1 of samples to held-out data",
        value=_sliced_w1(k_proj, samples, test[:half]),
        baseline="sliced W1 between the two halves of the held-out data",
        baseline_value=_sliced_w1(k_proj, test[half : 2 * half], test[:half]),
    )


def _toy_2d_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    samples = np.asarray(task.sample(params, key, 2000))
    points = {"held-out data": dataset.test["x"][:2000], "samples": samples}
    return [viz.scatter_2d(points, out_dir / f"{dataset.name}.png")]


# ----------------------------------------------------------------------------- images


def _per_class_samples(setup: Setup, params, key, per_class: int, scale: float):
    """``(images [classes * per_class, H, W, C], labels)``, ordered by class; kept by
    :meth:`Setup.memo`."""
    labels = jnp.repeat(jnp.arange(setup.num_classes), per_class)  # [classes * per_class]

    def compute():
        images = setup.draw(params, key, len(labels), labels, scale)
        return np.asarray(images), np.asarray(labels)

    return setup.memo(("per_class", per_class, float(scale)), params, key, compute)


def _evaluate_images_cfg(task: Task, params, dataset: Dataset, key) -> Report:
    setup = task.model
    classify = fit_digits_classifier(dataset)
    baseline = float(np.mean(classify(dataset.test["x"]) == dataset.test["y"]))
    accuracy = {}
    for scale in EVAL_SCALES:
        images, labels = _per_class_samples(setup, params, key, EVAL_PER_CLASS, scale)
        accuracy[scale] = float(np.mean(classify(images) == labels))
    return Report(
        metric=f"classifier accuracy on class-conditional samples (w = {HEADLINE_SCALE:g})",
        value=accuracy[HEADLINE_SCALE],
        baseline="same classifier on the real test images",
        baseline_value=baseline,
        lower_is_better=False,
        extra={f"accuracy_w{scale:g}": acc for scale, acc in accuracy.items()},
    )


def _evaluate_images_unconditional(task: Task, params, dataset: Dataset, key) -> Report:
    """Sliced W1 in pixel space, samples vs test, beside train vs test (same sizes)."""
    k_s, k_proj = jax.random.split(key)
    test = dataset.test["x"].reshape(len(dataset.test["x"]), -1)
    n = min(len(test), 500)
    samples = np.asarray(task.sample(params, k_s, n)).reshape(n, -1)
    train = dataset.train["x"][:n].reshape(n, -1)
    return Report(
        metric="sliced W1 (pixels) of samples to test images",
        value=_sliced_w1(k_proj, samples, test[:n]),
        baseline="sliced W1 of training images to test images",
        baseline_value=_sliced_w1(k_proj, train, test[:n]),
    )


def _images_cfg_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """The guidance grid: one panel per scale in ``GUIDANCE_SCALES`` (left to right), one row
    per class in each."""
    panels = [
        viz.tile_images(  # [classes rows, EVAL_PER_CLASS columns] of one scale
            _per_class_samples(task.model, params, key, EVAL_PER_CLASS, scale)[0],
            ncols=EVAL_PER_CLASS,
        )
        for scale in GUIDANCE_SCALES
    ]
    panels = [np.pad(p, ((0, 0), (3, 3), (0, 0)), constant_values=1.0) for p in panels]  # margins
    names = {0.0: " (unconditional)", 1.0: " (conditional)"}
    title = "w = " + ", ".join(f"{w:g}{names.get(w, '')}" for w in GUIDANCE_SCALES)
    path = out_dir / f"{dataset.name}_guidance_grid.png"
    return [viz.image_grid(np.stack(panels), path, ncols=len(GUIDANCE_SCALES), title=title)]


def _images_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    images = np.asarray(task.sample(params, key, 100))
    return [viz.image_grid(images, out_dir / f"{dataset.name}_samples.png", ncols=10)]


# ----------------------------------------------------------------------------- registry


# (quick, full) budgets. A quick toy run takes few large batches: compilation dominates, and
# every step pays for the loop's shuffle of the whole 20 000-example set, so steps cost more than
# examples. Compiling the U-Net's step and samplers is most of a quick image run.
_BUDGETS = {
    "toy": (
        dict(steps=200, batch_size=512, lr=5e-3, warmup_steps=20, ema_decay=None, log_every=200),
        dict(
            steps=10_000, batch_size=512, lr=2e-3, warmup_steps=200, ema_decay=0.995, log_every=500
        ),
    ),
    "image": (
        dict(steps=100, batch_size=64, lr=2e-3, warmup_steps=10, ema_decay=None, log_every=100),
        dict(steps=6_000, batch_size=64, lr=2e-3, warmup_steps=200, ema_decay=0.999, log_every=250),
    ),
}


def _config(kind: str, quick: bool) -> TrainConfig:
    return TrainConfig(**_BUDGETS[kind][0 if quick else 1])


_toy_config = functools.partial(_config, "toy")
_image_config = functools.partial(_config, "image")


register(
    Recipe(
        name="diffusion_bimodal",
        summary="DDPM with an MLP on the 1-D two-mode mixture, mode-conditional with guidance",
        make_task=functools.partial(make_task, conditional=True, width=64),
        config=_toy_config,
        evaluate=_evaluate_bimodal,
        figures=_bimodal_figures,
        data="bimodal_1d",
        quick_tour=True,
        tour_steps=10000,
        options={"num_steps": TOY_NUM_STEPS, "width": 64, "depth": 3},
    )
)

for _name, _tour in (("two_moons", True), ("eight_gaussians", False), ("checkerboard", False)):
    register(
        Recipe(
            name=f"diffusion_{_name}",
            summary=f"DDPM with an MLP on the 2-D {_name.replace('_', ' ')} set",
            make_task=functools.partial(make_task, conditional=False),
            config=_toy_config,
            evaluate=_evaluate_toy_2d,
            figures=_toy_2d_figures,
            data=_name,
            tour=_tour,
            options={"num_steps": TOY_NUM_STEPS, "width": 128, "depth": 3},
        )
    )

# (name, summary, class-conditional, data, in the tour)
_IMAGE_RECIPES = (
    (
        "diffusion_digits_cfg",
        "class-conditional U-Net DDPM on 8x8 digits, classifier-free guidance, DPM-Solver++(2M)",
        True,
        "digits",
        True,
    ),
    (
        "diffusion_digits",
        "unconditional U-Net DDPM on 8x8 digits, learned variances, DPM-Solver++(2M) sampling",
        False,
        "digits",
        True,
    ),
    (
        "diffusion_mnist",
        "class-conditional U-Net DDPM on 28x28 MNIST with classifier-free guidance",
        True,
        "mnist",
        False,
    ),
)

for _name, _summary, _conditional, _data, _tour in _IMAGE_RECIPES:
    _options = {
        "num_steps": IMAGE_NUM_STEPS,
        "base_features": 16,
        "sample_steps": IMAGE_SAMPLE_STEPS,
        "sample_method": IMAGE_SAMPLER,
        "parameterization": "v",
        "min_snr_gamma": MIN_SNR_GAMMA,
        "variance": "learned" if _name == "diffusion_digits" else "small",
    }
    if _name == "diffusion_digits_cfg":
        _options["tour_scales"] = TOUR_SCALES
    register(
        Recipe(
            name=_name,
            summary=_summary,
            make_task=functools.partial(make_task, conditional=_conditional, **_options),
            config=_image_config,
            evaluate=_evaluate_images_cfg if _conditional else _evaluate_images_unconditional,
            figures=_images_cfg_figures if _conditional else _images_figures,
            data=_data,
            tour=_tour,
            tour_steps=IMAGE_TOUR_STEPS if _data == "digits" else None,
            options=_options,
        )
    )
