r"""Recipes of the progressive and style-based GANs on 8x8 digits, and BigGAN's tricks on the
conditional GAN.

* ``stylegan_digits``: :class:`genjax.stylegan.StyleGANGenerator` (mapping network, constant
  input, AdaIN, noise, style mixing) against the spectral-norm DCGAN discriminator of
  ``dcgan_digits`` with the same non-saturating loss. Metric: the share of style-mixed samples
  (coarse styles from one code, fine from another) that the digits classifier labels as the
  coarse source's class; baseline: the share labelled as the fine source's class.
* ``progan_digits``: :class:`genjax.progan.ProGANGenerator` / ``ProGANDiscriminator`` growing
  2x2 → 4x4 → 8x8 with fade-in, WGAN-GP. Metric: sliced W1 to the test images, as
  ``dcgan_digits``.
* ``biggan_digits``: the conditional DCGAN with class-conditional batch norm
  (:class:`genjax.gan.ConditionalBatchNorm`), projection discriminator, hinge loss and spectral
  norm; sampled with the truncation trick on :math:`z` (:func:`genjax.gan.sample`'s
  ``truncation``). Metric: classifier accuracy on class-conditional samples, as
  ``cgan_digits``; in ``extra`` the same at :data:`TRUNCATION` = 1.

Each full budget trains for about as long as ``dcgan_digits``' on the same machine
(:data:`STEPS`; docs/style-based-gans.md gives the times). The study that compares them with
FID, KID, precision and recall is :mod:`genjax.studies.style_gans`.

Derivation: derivations/22-style-based-gans.md
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genjax import gan as G
from genjax import progan as P
from genjax import stylegan as S
from genjax import viz
from genjax.classifier import fit_digits_classifier
from genjax.data import Dataset
from genjax.recipes import Option, Recipe, Report, register
from genjax.recipes.gan import (
    GAN,
    VARIANTS,
    _evaluate_conditional,
    _evaluate_dcgan,
    digits_config,
    discriminator_optimizer,
)
from genjax.train import Task, TrainConfig, TrainState

__all__ = [
    "COARSE_LAYERS",
    "PROGAN_D_LR",
    "PROGAN_STAGE_STEPS",
    "PROGAN_TRAIN",
    "STEPS",
    "STYLEGAN_D_LR",
    "STYLEGAN_TRAIN",
    "TRUNCATION",
    "GrowingGAN",
    "OrthogonalGAN",
    "StyleGAN",
    "make_biggan",
    "make_progan",
    "make_stylegan",
    "mixing_agreement",
    "style_config",
]

STEPS = {"stylegan": 1300, "progan": 1600, "biggan": 5000}  #: full budgets (equal time)
COARSE_LAYERS = 4  #: style layers from the coarse source in the mixing grid (2x2 and 4x4)
TRUNCATION = 1.0  #: BigGAN's truncation threshold reported beside the untruncated accuracy
MIX_SOURCES = 200  #: codes on each side of the style-mixing measure (pairs: this many)
#: ProGAN's generator: Adam(2e-3, 0, 0.99) and a short EMA (0.99: about 100 steps, within the
#: last stage); equalised LR moves weights at lr times the He constant, so the rates are larger
#: than DCGAN's (docs/style-based-gans.md measures each change)
PROGAN_TRAIN = {"lr": 2e-3, "b2": 0.99, "ema_decay": 0.99}
PROGAN_D_LR = 1e-2  #: ProGAN's critic: Adam(1e-2, 0, 0.99), five times the generator's rate
#: ProGAN's growth stage length T: 2x2 and 4x4 take T steps each, 8x8 the rest of the budget
PROGAN_STAGE_STEPS = 100
#: StyleGAN's generator: Adam(1e-2, 0, 0.99) and EMA 0.99. Its layers are equalised too, so at
#: DCGAN's 2e-4 its 3x3 convs moved about twelve times slower than DCGAN's (FID 38, mixing
#: agreement 65 %; docs/style-based-gans.md measures the change)
STYLEGAN_TRAIN = {"lr": 1e-2, "b2": 0.99, "ema_decay": 0.99}
STYLEGAN_D_LR = 4e-4  #: StyleGAN's discriminator (dcgan_digits' SN critic): Adam(4e-4, 0, 0.9)


@dataclasses.dataclass(frozen=True, eq=False)
class StyleGAN(GAN):
    """A :class:`genjax.recipes.gan.GAN` whose generator is style-based: ``sample`` takes the
    truncation :math:`\\psi` (:func:`genjax.stylegan.sample`).

    Derivation: derivations/22-style-based-gans.md
    """

    def sample(self, params, key, n, labels=None, psi: float = 1.0):
        """``n`` images in [0, 1], codes truncated towards the average by ``psi``."""
        x = S.sample(key, self.generator, params, n, psi=psi)
        return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)

    def mix(self, params, key, z_coarse, z_fine, crossover: int):
        """Images in [0, 1] with layers ``< crossover`` styled by ``z_coarse`` and the rest by
        ``z_fine`` (both ``[n, latent_dim]``); noise maps from ``key``, one per row."""
        g = self.generator
        w1, w2 = (g.apply(params, z, method=g.map) for z in (z_coarse, z_fine))
        num = S.num_styles(g.image_shape)
        ws = S.mix_styles(
            S.broadcast_styles(w1, num),
            S.broadcast_styles(w2, num),
            jnp.full((w1.shape[0],), crossover),
        )
        x = g.apply(params, ws, method=g.synthesize, rngs={G.NOISE: key})
        return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class GrowingGAN(GAN):
    """A :class:`genjax.recipes.gan.GAN` whose players grow (:mod:`genjax.progan`): each update
    first sets both players' ``"growth"`` variables to :func:`genjax.progan.growth_schedule` at
    the state's step; ``sample`` draws at the final stage.

    Attributes:
      stage_steps: :math:`T`, generator steps per growth stage.
      num_stages: :math:`K`, resolutions :math:`s_0, \\dots, s_0 2^{K-1}`.

    Derivation: derivations/22-style-based-gans.md
    """

    stage_steps: int = 1000
    num_stages: int = 3

    def update(self, state: TrainState, key, batch, tx, ema_decay):
        """:meth:`GAN.update` at the stage and fade-in weight of ``state.step``."""
        stage, alpha = P.growth_schedule(state.step, self.stage_steps, self.num_stages)
        d_vars = P.with_growth(state.extra["discriminator"], stage, alpha)
        grown = state.replace(
            params=P.with_growth(state.params, stage, alpha),
            extra={**state.extra, "discriminator": d_vars},
        )
        new_state, metrics = super().update(grown, key, batch, tx, ema_decay)
        return new_state, {**metrics, "stage": stage, "alpha": alpha}

    def sample(self, params, key, n, labels=None, stage: int | None = None):
        """``n`` images in [0, 1] at ``stage`` (default: the last) with :math:`\\alpha = 1`."""
        stage = self.num_stages - 1 if stage is None else stage
        return super().sample(P.with_growth(params, stage, 1.0), key, n, labels)


@dataclasses.dataclass(frozen=True, eq=False)
class OrthogonalGAN(GAN):
    """A :class:`genjax.recipes.gan.GAN` whose generator's optimiser adds BigGAN's orthogonal
    regularisation (:func:`genjax.gan.with_orthogonal_regularization`) to its gradient.

    Attributes:
      ortho: :math:`\\beta` (0: none).

    Derivation: derivations/22-style-based-gans.md
    """

    ortho: float = 0.0

    def update(self, state: TrainState, key, batch, tx, ema_decay):
        """:meth:`GAN.update` with ``tx`` regularised when ``ortho`` > 0."""
        if self.ortho > 0:
            tx = G.with_orthogonal_regularization(tx, self.ortho)
        return super().update(state, key, batch, tx, ema_decay)


def _d_tx(options: Mapping[str, Any], lr: float, b2: float):
    return discriminator_optimizer(
        "adam", float(options.get("d_lr", lr)), 0.0, float(options.get("d_b2", b2))
    )


def make_stylegan(dataset: Dataset, options: Mapping[str, Any]) -> StyleGAN:
    """StyleGAN's generator against ``dcgan_digits``' discriminator and loss.

    Derivation: derivations/22-style-based-gans.md
    """
    width = int(options.get("width", 32))
    generator = S.StyleGANGenerator(
        dataset.shape,
        features=width,
        latent_dim=int(options.get("latent_dim", 32)),
        mixing_prob=float(options.get("mixing_prob", 0.9)),
        fine_kernel=int(options.get("fine_kernel", 3)),
        pyramid=bool(options.get("pyramid", 1)),
    )
    discriminator = G.DCGANDiscriminator(features=32, normalization="spectral")
    return StyleGAN(
        generator,
        discriminator,
        VARIANTS["nonsaturating"],
        _d_tx(options, STYLEGAN_D_LR, 0.9),
        n_critic=1,
        event_shape=dataset.shape,
        images=True,
    )


def make_progan(dataset: Dataset, options: Mapping[str, Any]) -> GrowingGAN:
    """ProGAN's growing players under WGAN-GP (:math:`\\lambda = 10`) with the drift penalty
    (:func:`genjax.progan.drift_critic_loss`, ``drift``), :math:`T` = ``stage_steps``.

    Derivation: derivations/22-style-based-gans.md
    """
    width = int(options.get("width", 16))
    stages = G.dcgan_plan(dataset.shape)[1] + 1
    drift = float(options.get("drift", 1e-3))
    variant = dataclasses.replace(
        VARIANTS["wgan_gp"], d_loss=lambda real, fake: P.drift_critic_loss(real, fake, drift)
    )
    return GrowingGAN(
        P.ProGANGenerator(dataset.shape, width, int(options.get("latent_dim", 32))),
        P.ProGANDiscriminator(width),
        variant,
        _d_tx(options, PROGAN_D_LR, 0.99),
        n_critic=1,
        event_shape=dataset.shape,
        images=True,
        stage_steps=int(options.get("stage_steps", PROGAN_STAGE_STEPS)),
        num_stages=stages,
    )


def make_biggan(dataset: Dataset, options: Mapping[str, Any]) -> OrthogonalGAN:
    """The conditional DCGAN with class-conditional batch norm, hinge loss and spectral norm;
    ``ortho`` > 0 adds orthogonal regularisation of the generator with that :math:`\\beta`.

    Derivation: derivations/22-style-based-gans.md
    """
    width = int(options.get("width", 32))
    generator = G.DCGANGenerator(
        dataset.shape,
        features=width,
        num_classes=dataset.num_classes,
        latent_dim=int(options.get("latent_dim", 32)),
        conditional_bn=True,
    )
    discriminator = G.DCGANDiscriminator(
        features=width, normalization="spectral", num_classes=dataset.num_classes
    )
    return OrthogonalGAN(
        generator,
        discriminator,
        VARIANTS["sngan"],
        _d_tx(options, 2e-4, 0.9),
        n_critic=1,
        event_shape=dataset.shape,
        num_classes=dataset.num_classes,
        images=True,
        ortho=float(options.get("ortho", 0.0)),
    )


def _task(gan: GAN) -> Task:
    return Task(init=gan.init, loss=gan.loss, sample=gan.sample, model=gan, update=gan.update)


def style_config(name: str):
    """The budget of recipe ``name`` (``"stylegan"``, ``"progan"``, ``"biggan"``): the DCGAN
    digits config (:func:`genjax.recipes.gan.digits_config`) with :data:`STEPS` updates, 100
    in the quick budget; ProGAN's with :data:`PROGAN_TRAIN` and StyleGAN's with
    :data:`STYLEGAN_TRAIN` (the generator's Adam and EMA).

    Derivation: derivations/22-style-based-gans.md
    """

    def config(quick: bool) -> TrainConfig:
        over = {"progan": PROGAN_TRAIN, "stylegan": STYLEGAN_TRAIN}.get(name, {})
        return dataclasses.replace(
            digits_config(quick), steps=100 if quick else STEPS[name], **over
        )

    return config


# ----------------------------------------------------------------------------- evaluation


def mixing_agreement(
    key: jax.Array, gan: StyleGAN, params, classify, n: int, crossover: int = COARSE_LAYERS
) -> dict[str, float]:
    r"""How far the coarse styles decide the digit: ``n`` pairs of codes, each mixed at
    ``crossover``, labelled by ``classify`` (images → classes).

    .. math:: a_{\mathrm{coarse}} = \frac1n \sum_i [c(x_{\mathrm{mix}, i}) = c(x_{1,i})],
              \qquad a_{\mathrm{fine}} = \frac1n \sum_i [c(x_{\mathrm{mix}, i}) = c(x_{2,i})]

    with :math:`x_1, x_2` the unmixed images of the coarse and fine sources (their pairs with
    the same class are left out: there both agreements hold trivially).

    Returns:
      ``{"coarse", "fine", "pairs"}``: the two agreements and the number of pairs kept.

    Derivation: derivations/22-style-based-gans.md
    """
    k1, k2, k_noise = jax.random.split(key, 3)
    shape = (n, gan.generator.latent_dim)
    z1, z2 = jax.random.normal(k1, shape), jax.random.normal(k2, shape)
    num = S.num_styles(gan.generator.image_shape)
    c1 = classify(np.asarray(gan.mix(params, k_noise, z1, z2, num)))  # all layers from z1
    c2 = classify(np.asarray(gan.mix(params, k_noise, z1, z2, 0)))  # all layers from z2
    mixed = classify(np.asarray(gan.mix(params, k_noise, z1, z2, crossover)))
    keep = c1 != c2
    return {
        "coarse": float(np.mean(mixed[keep] == c1[keep])),
        "fine": float(np.mean(mixed[keep] == c2[keep])),
        "pairs": float(np.sum(keep)),
    }


def _evaluate_stylegan(task: Task, params, dataset: Dataset, key) -> Report:
    k_mix, k_sw = jax.random.split(key)
    agree = mixing_agreement(k_mix, task.model, params, fit_digits_classifier(dataset), MIX_SOURCES)
    sliced = _evaluate_dcgan(task, params, dataset, k_sw)
    return Report(
        metric=f"mixed samples labelled as the coarse source's class (layers < {COARSE_LAYERS})",
        value=agree["coarse"],
        baseline="labelled as the fine source's class",
        baseline_value=agree["fine"],
        lower_is_better=False,
        extra={
            "pairs_of_distinct_classes": agree["pairs"],
            "sliced_w1_to_test": sliced.value,
            "sliced_w1_train_to_test": sliced.baseline_value,
        },
    )


def _evaluate_biggan(task: Task, params, dataset: Dataset, key) -> Report:
    report = _evaluate_conditional(task, params, dataset, key)
    gan = task.model
    labels = np.repeat(np.arange(dataset.num_classes), 50)
    x = G.sample(key, gan.generator, params, len(labels), labels=labels, truncation=TRUNCATION)
    images = np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0)
    accuracy = float(np.mean(fit_digits_classifier(dataset)(images) == labels))
    return report._replace(extra={**report.extra, f"accuracy_truncation_{TRUNCATION:g}": accuracy})


# ----------------------------------------------------------------------------- figures


def _stylegan_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    gan, out_dir = task.model, Path(out_dir)
    k_s, k_mix, k_noise, k_t = jax.random.split(key, 4)
    samples = np.asarray(gan.sample(params, k_s, 100))
    paths = [viz.image_grid(samples, out_dir / "stylegan_samples.png", ncols=10)]
    # style mixing: row i takes its coarse layers from source i, column j its fine from j
    rows = 6
    z = jax.random.normal(k_mix, (2 * rows, gan.generator.latent_dim))
    coarse = jnp.repeat(z[:rows], rows, axis=0)  # [rows^2, d]
    fine = jnp.tile(z[rows:], (rows, 1))  # [rows^2, d]
    num = S.num_styles(gan.generator.image_shape)
    grid = np.asarray(gan.mix(params, k_noise, coarse, fine, COARSE_LAYERS))
    top = np.asarray(gan.mix(params, k_noise, z[rows:], z[rows:], num))  # fine sources
    left = np.asarray(gan.mix(params, k_noise, z[:rows], z[:rows], num))  # coarse sources
    blank = np.ones_like(top[:1])
    cells = [blank, top]
    for i in range(rows):
        cells += [left[i : i + 1], grid[i * rows : (i + 1) * rows]]
    path = out_dir / "stylegan_mixing.png"
    paths.append(viz.image_grid(np.concatenate(cells), path, ncols=rows + 1))
    # truncation strip: rows are codes, columns psi from 1 down to 0
    psis = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
    strip = [np.asarray(gan.sample(params, k_t, 8, psi=psi)) for psi in psis]  # [P][8, ...]
    strip = np.stack(strip, axis=1).reshape(-1, *dataset.shape)  # [8 P, H, W, C]
    path = out_dir / "stylegan_truncation.png"
    paths.append(viz.image_grid(strip, path, ncols=len(psis)))
    return paths


def _progan_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    samples = np.asarray(task.model.sample(params, key, 100))
    return [viz.image_grid(samples, Path(out_dir) / "progan_samples.png", ncols=10)]


def _biggan_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    gan = task.model
    labels = np.repeat(np.arange(dataset.num_classes), 2)  # two codes per class
    thresholds = (None, 1.5, 1.0, 0.5, 0.25)
    strip = []
    for psi in thresholds:  # the same key: the same z before truncation
        x = G.sample(key, gan.generator, params, len(labels), labels=labels, truncation=psi)
        strip.append(np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0))
    strip = np.concatenate(strip)  # [P * 20, H, W, C]: a row per threshold
    path = Path(out_dir) / "biggan_truncation.png"
    return [viz.image_grid(strip, path, ncols=len(labels))]


# ----------------------------------------------------------------------------- registry

_COMMON = {"width": 32, "latent_dim": 32, "d_lr": 2e-4, "d_b2": Option(0.9, high=1.0)}
for _recipe in (
    Recipe(
        "stylegan_digits",
        "StyleGAN (mapping, AdaIN, noise, mixing) vs the SN DCGAN critic on digits: mixing",
        make_task=lambda dataset, options: _task(make_stylegan(dataset, options)),
        config=style_config("stylegan"),
        evaluate=_evaluate_stylegan,
        figures=_stylegan_figures,
        quick_tour=True,
        tour_steps=STEPS["stylegan"],
        options={
            **_COMMON,
            "d_lr": STYLEGAN_D_LR,
            "mixing_prob": Option(0.9, high=1.0),
            "fine_kernel": 3,
            "pyramid": Option(1, low=0, high=1),
        },
    ),
    Recipe(
        "progan_digits",
        "ProGAN (2x2 -> 4x4 -> 8x8 with fade-in, WGAN-GP) on digits: sliced W1 to test",
        make_task=lambda dataset, options: _task(make_progan(dataset, options)),
        config=style_config("progan"),
        evaluate=_evaluate_dcgan,
        figures=_progan_figures,
        options={
            **_COMMON,
            "width": 16,
            "d_lr": PROGAN_D_LR,
            "d_b2": Option(0.99, high=1.0),
            "drift": 1e-3,
            "stage_steps": PROGAN_STAGE_STEPS,
        },
    ),
    Recipe(
        "biggan_digits",
        "conditional DCGAN with class-conditional BN, projection D, hinge + SN: accuracy",
        make_task=lambda dataset, options: _task(make_biggan(dataset, options)),
        config=style_config("biggan"),
        evaluate=_evaluate_biggan,
        figures=_biggan_figures,
        options={**_COMMON, "width": 32, "ortho": 0.0},
    ),
):
    register(_recipe)
