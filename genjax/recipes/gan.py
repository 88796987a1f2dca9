r"""GAN recipes: 2-D mixtures (mode coverage), DCGAN and the conditional GAN on digits.

* ``gan_eight_gaussians``, ``gan_grid``: 5 x 128 MLP players on the ring of 8 Gaussians and
  the 5x5 grid of 25 (std 0.02), both players' rates decaying (:func:`mixture_options`).
  Option ``variant`` picks the game (:data:`VARIANTS`: ``minimax``, ``nonsaturating``,
  ``wgan``, ``wgan_gp``, ``sngan``; default ``wgan_gp``). Metric: modes
  covered (:func:`genjax.gan.mode_coverage`), baseline: the same count on test samples of the
  mixture; the high-quality fraction is reported beside it.
* ``dcgan_digits``: :class:`genjax.gan.DCGANGenerator` / ``DCGANDiscriminator`` on 8x8 digits.
  Metric: sliced Wasserstein-1 distance between samples and the test images (pixels in
  [0, 1]); baseline: the same distance from an equally large set of training images.
* ``cgan_digits``: the conditional GAN (label embedding in G, projection discriminator).
  Metric: a digits classifier's accuracy on class-conditional samples; baseline: the same
  classifier on the real test images.

The study that runs every game on both mixtures is :mod:`genjax.studies.gan_modes`.

**How a GAN uses the loop** (:class:`genjax.train.Task` with a custom ``update``, built from
:func:`genjax.gan.alternating_update`):

* ``state.params`` holds the *generator's* variables (``params`` and, for DCGAN, its
  ``batch_stats``); the loop's optimiser ``tx`` (built from the run's ``TrainConfig``) trains it
  and the loop's EMA averages it, so ``state.ema_params`` is the EMA generator that samples.
* ``state.extra`` holds the discriminator's variables (``params`` and the spectral-norm ``u``
  vectors) and its optimiser state. The discriminator's optimiser (Adam, constant rate or
  decaying over ``d_decay_steps`` generator steps) is fixed when the task is made
  (:class:`GAN` ``d_tx``): ``Task.update`` receives the loop's ``tx`` but
  ``Task.init`` does not, so a second optimiser state cannot be built from the loop's optimiser,
  and ``optax.multi_transform`` over both players would share one step count and one
  gradient-clipping norm between players that update at different rates.
* One loop step = ``n_critic`` discriminator steps, each on its own slice of the batch (so the
  loop's ``batch_size`` is ``n_critic`` x the per-step batch), then one generator step, all in
  the loop's one jitted update.

Derivation: derivations/08-gans.md, derivations/09-wgan.md
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax import _checks, viz
from genjax import data as data_lib
from genjax import gan as G
from genjax.classifier import fit_digits_classifier
from genjax.data import Dataset
from genjax.divergences import kl, sliced_wasserstein
from genjax.recipes import Option, Recipe, Report, register
from genjax.train import Task, TrainConfig, TrainState, ema_update

__all__ = [
    "GAN",
    "VARIANTS",
    "Variant",
    "digits_config",
    "discriminator_optimizer",
    "make_gan",
    "make_mixture_task",
    "make_task",
    "mixture_config",
    "mixture_means",
    "mixture_options",
]

MIXTURE_STD = 0.02  # std of every mode of the 2-D mixtures (the data sets' default)
EVAL_SAMPLES = 10_000  # generated points scored by mode_coverage
SW_PROJECTIONS = 256  # directions of the sliced Wasserstein metrics
SW_IMAGES = 500  # images on each side of the digits' sliced Wasserstein metric
EVAL_PER_CLASS = 50  # conditional samples per digit scored by the classifier
MIXTURE_STEPS = 4000  # generator steps of the full budget on the 2-D mixtures
MIXTURE_DEPTH = 5  # hidden layers of both MLP players on the 2-D mixtures (width 128)
TOY_GP_WEIGHT = 0.1  # WGAN-GP's lambda on its toy data sets (Gulrajani et al., appendix)


@dataclasses.dataclass(frozen=True)
class Variant:
    r"""One GAN game: the two losses, the Lipschitz device and the critic's optimiser.

    Attributes:
      name: registry key.
      d_loss: ``(real_logits, fake_logits) -> [batch]``.
      g_loss: ``fake_logits -> [batch]``.
      normalization: the discriminator's normalisation (:data:`genjax.gan.NORMALIZATIONS`).
      gp_weight: :math:`\lambda` of :func:`genjax.gan.gradient_penalty` (0 = none).
      clip: weight-clipping bound :math:`c` (``None`` = none).
      d_optimizer: ``"adam"`` or ``"rmsprop"`` (WGAN with clipping: momentum makes it unstable,
        Arjovsky et al. section 3).

    Derivation: derivations/08-gans.md, derivations/09-wgan.md
    """

    name: str
    d_loss: Callable[[jax.Array, jax.Array], jax.Array]
    g_loss: Callable[[jax.Array], jax.Array]
    normalization: str = "none"
    gp_weight: float = 0.0
    clip: float | None = None
    d_optimizer: str = "adam"


VARIANTS: dict[str, Variant] = {
    "minimax": Variant(
        "minimax", G.discriminator_loss, functools.partial(G.generator_loss, saturating=True)
    ),
    "nonsaturating": Variant("nonsaturating", G.discriminator_loss, G.generator_loss),
    "wgan": Variant(
        "wgan", G.critic_loss, G.wasserstein_generator_loss, clip=0.01, d_optimizer="rmsprop"
    ),
    "wgan_gp": Variant("wgan_gp", G.critic_loss, G.wasserstein_generator_loss, gp_weight=10.0),
    "sngan": Variant(
        "sngan", G.hinge_discriminator_loss, G.wasserstein_generator_loss, normalization="spectral"
    ),
}


def discriminator_optimizer(
    kind: str,
    lr: float,
    b1: float,
    b2: float,
    decay_steps: int | None = None,
    final_lr_fraction: float = 0.05,
) -> optax.GradientTransformation:
    """The discriminator's optimiser: Adam(lr, b1, b2) or RMSProp(lr).

    The rate is constant, or with ``decay_steps`` (discriminator updates) decays by cosine to
    ``lr * final_lr_fraction``, as the loop's schedule does for the generator.

    Derivation: derivations/08-gans.md, derivations/09-wgan.md
    """
    if kind not in ("adam", "rmsprop"):
        raise ValueError(f"d_optimizer must be 'adam' or 'rmsprop', got {kind!r}")
    _checks.positive_int("decay_steps", decay_steps, allow_none=True)
    rate = lr
    if decay_steps is not None:
        rate = optax.cosine_decay_schedule(lr, decay_steps, final_lr_fraction)
    if kind == "rmsprop":
        return optax.rmsprop(rate)
    return optax.adam(rate, b1=b1, b2=b2)


@dataclasses.dataclass(frozen=True, eq=False)
class GAN:
    """A recipe's GAN: the players and game, the discriminator's optimiser, the data's range.

    ``init``, ``update``, ``loss`` and ``sample`` are the :class:`genjax.train.Task`'s; the task's
    ``model`` is this object.

    Attributes:
      generator: ``apply(vars, z, labels, train=...)`` to ``[batch, *event]``.
      discriminator: ``apply(vars, x, labels, update_stats=...)`` to ``[batch]``.
      variant: the :class:`Variant`.
      d_tx: the discriminator's optax optimiser.
      n_critic: discriminator steps per generator step.
      event_shape: shape of one example.
      num_classes: label count of a conditional GAN, else ``None``.
      images: data are images in [0, 1], mapped to [-1, 1] for the players.

    Derivation: derivations/08-gans.md
    """

    generator: nn.Module
    discriminator: nn.Module
    variant: Variant
    d_tx: optax.GradientTransformation
    n_critic: int
    event_shape: tuple[int, ...]
    num_classes: int | None = None
    images: bool = False

    @functools.cached_property
    def game(self) -> G.Game:
        """The :class:`genjax.gan.Game` the players play."""
        return G.Game(
            self.generator,
            self.discriminator,
            self.variant.d_loss,
            self.variant.g_loss,
            gp_weight=self.variant.gp_weight,
            clip=self.variant.clip,
            num_classes=self.num_classes,
        )

    def _players_range(self, x):
        """Data in [0, 1] to the players' [-1, 1] (vectors as they are)."""
        return 2.0 * x - 1.0 if self.images else x

    def _labels(self, batch, n):
        if self.num_classes is None:
            return None
        return jnp.asarray(batch["y"], jnp.int32).reshape(n)

    def init(self, key, batch):
        """``(generator variables, {"discriminator": vars, "d_opt_state": ...})``.

        Parameters do not depend on the batch size: two examples suffice, and the
        initialisation runs as one compiled function rather than flax's op-by-op ``init``."""
        small = {k: jnp.asarray(v)[:2] for k, v in batch.items()}  # [2, ...]
        return jax.jit(self._init)(key, small)

    def _init(self, key, batch):
        k_g, k_d, k_z = jax.random.split(key, 3)
        x = self._players_range(batch["x"])
        n = x.shape[0]
        z = jax.random.normal(k_z, (n, self.generator.latent_dim))
        y = self._labels(batch, n)
        g_vars = dict(self.generator.init(k_g, z, y, train=False))
        d_vars = dict(self.discriminator.init(k_d, x, y))
        extra = {"discriminator": d_vars, "d_opt_state": self.d_tx.init(d_vars["params"])}
        return g_vars, extra

    def update(self, state: TrainState, key, batch, tx, ema_decay):
        """``Task.update``: :func:`genjax.gan.alternating_update` on the loop's state."""
        x = self._players_range(batch["x"])
        g_vars, opt_state, d_vars, d_opt_state, metrics = G.alternating_update(
            key,
            state.params,
            state.opt_state,
            state.extra["discriminator"],
            state.extra["d_opt_state"],
            x,
            self._labels(batch, x.shape[0]),
            game=self.game,
            g_tx=tx,
            d_tx=self.d_tx,
            n_critic=self.n_critic,
        )
        new_state = state.replace(
            step=state.step + 1,
            params=g_vars,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, g_vars, ema_decay),
            extra={"discriminator": d_vars, "d_opt_state": d_opt_state},
        )
        return new_state, {**metrics, "loss": metrics["d_loss"]}

    def loss(self, params, key, batch):
        """A generator-only score for ``Task.loss``: sliced W1 between samples and the batch."""
        k_z, k_sw = jax.random.split(key)
        real = self._players_range(batch["x"])
        n = real.shape[0]
        labels = self._labels(batch, n)
        fake = G.sample(k_z, self.generator, params, n, labels=labels).reshape(n, -1)
        sw = sliced_wasserstein(k_sw, fake, real.reshape(n, -1), SW_PROJECTIONS)
        return sw, {"sliced_w1": sw}

    @functools.cached_property
    def _sampler(self):
        def draw(params, key, n, labels):
            x = G.sample(key, self.generator, params, n, labels=labels)  # [n, *event]
            return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0) if self.images else x

        return jax.jit(draw, static_argnums=2)

    def sample(self, params, key, n, labels=None):
        """``n`` samples (images in [0, 1]); a conditional GAN cycles through the classes."""
        if self.num_classes is not None and labels is None:
            labels = jnp.arange(n) % self.num_classes
        if labels is not None:
            labels = jnp.asarray(labels, jnp.int32)
        return self._sampler(params, key, n, labels)


def make_gan(dataset: Dataset, options: Mapping[str, Any], *, conditional: bool = False) -> GAN:
    """The players for ``dataset``: MLPs for vectors, DCGAN for images; options override.

    Derivation: derivations/08-gans.md
    """
    variant_name = str(options.get("variant", "wgan_gp"))
    if variant_name not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant_name!r}")
    variant = VARIANTS[variant_name]
    if "gp_weight" in options:
        variant = dataclasses.replace(variant, gp_weight=float(options["gp_weight"]))
    normalization = str(options.get("normalization", variant.normalization))
    num_classes = dataset.num_classes if conditional else None
    images = len(dataset.shape) == 3
    width = int(options.get("width", 32 if images else 128))
    latent_dim = int(options.get("latent_dim", 32 if images else 2))
    if images:
        generator = G.DCGANGenerator(
            dataset.shape, features=width, num_classes=num_classes, latent_dim=latent_dim
        )
        discriminator = G.DCGANDiscriminator(
            features=width, normalization=normalization, num_classes=num_classes
        )
    else:
        depth = int(options.get("depth", 3))
        generator = G.MLPGenerator(dataset.shape[0], width, depth, latent_dim=latent_dim)
        discriminator = G.MLPDiscriminator(width, depth, normalization=normalization)
    n_critic = int(options.get("n_critic", 5 if not images else 1))
    decay = options.get("d_decay_steps")
    d_tx = discriminator_optimizer(
        str(options.get("d_optimizer", variant.d_optimizer)),
        float(options.get("d_lr", 2e-3 if not images else 2e-4)),
        float(options.get("d_b1", 0.0)),
        float(options.get("d_b2", 0.9)),
        decay_steps=None if decay is None else n_critic * int(decay),
        final_lr_fraction=float(options.get("d_final_lr_fraction", 0.05)),
    )
    return GAN(
        generator,
        discriminator,
        variant,
        d_tx,
        n_critic=n_critic,
        event_shape=dataset.shape,
        num_classes=num_classes,
        images=images,
    )


def make_task(dataset: Dataset, options: Mapping[str, Any], conditional: bool = False) -> Task:
    """The :class:`genjax.train.Task` of :func:`make_gan`; its ``model`` is the :class:`GAN`.

    Derivation: derivations/08-gans.md
    """
    gan = make_gan(dataset, options, conditional=conditional)
    return Task(init=gan.init, loss=gan.loss, sample=gan.sample, model=gan, update=gan.update)


def mixture_options(variant: str = "wgan_gp", steps: int = MIXTURE_STEPS) -> dict[str, Any]:
    """:func:`make_gan` options of every game on the 2-D mixtures.

    Both players are 5 x 128 ReLU MLPs; the discriminator's rate decays by cosine over the
    ``steps`` generator steps, as the generator's does (:func:`mixture_config`); WGAN-GP uses
    the paper's toy penalty weight :data:`TOY_GP_WEIGHT` instead of 10.

    Derivation: derivations/08-gans.md
    """
    options: dict[str, Any] = {"variant": variant, "depth": MIXTURE_DEPTH, "d_decay_steps": steps}
    if variant == "wgan_gp":
        options["gp_weight"] = TOY_GP_WEIGHT
    return options


def make_mixture_task(dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """``make_task`` of the mixture recipes: :func:`mixture_options` of ``options["variant"]``
    (default WGAN-GP), which ``options`` override.

    Derivation: derivations/08-gans.md
    """
    variant = str(options.get("variant", "wgan_gp"))
    return make_task(dataset, {**mixture_options(variant), **options})


def mixture_means(name: str) -> np.ndarray:
    """The mode centres ``[K, 2]`` of a 2-D mixture data set.

    Derivation: derivations/08-gans.md
    """
    if name == "eight_gaussians":
        return data_lib.ring_means(8, 2.0)
    if name == "gaussian_grid":
        return data_lib.grid_means(5, 2.0)
    raise ValueError(f"no mode centres for data set {name!r}")


# ----------------------------------------------------------------------------- evaluation


def _evaluate_mixture(task: Task, params, dataset: Dataset, key) -> Report:
    means = mixture_means(dataset.name)
    k_sample, k_sw = jax.random.split(key)
    samples = np.asarray(task.sample(params, k_sample, EVAL_SAMPLES))
    cover = G.mode_coverage(samples, means, MIXTURE_STD)
    real = dataset.test["x"][:EVAL_SAMPLES]
    base = G.mode_coverage(real, means, MIXTURE_STD)
    sw = float(sliced_wasserstein(k_sw, samples[: len(real)], real, SW_PROJECTIONS))
    return Report(
        metric=f"modes covered (of {len(means)})",
        value=float(cover.modes),
        baseline="test samples of the mixture",
        baseline_value=float(base.modes),
        lower_is_better=False,
        extra={
            "high_quality_fraction": cover.high_quality,
            "baseline_high_quality_fraction": base.high_quality,
            "sliced_w1_to_test": sw,
        },
    )


def _evaluate_dcgan(task: Task, params, dataset: Dataset, key) -> Report:
    k_sample, k_sw, k_idx = jax.random.split(key, 3)
    n = min(SW_IMAGES, len(dataset.test["x"]))
    samples = np.asarray(task.sample(params, k_sample, n)).reshape(n, -1)
    test = dataset.test["x"][:n].reshape(n, -1)
    idx = np.asarray(jax.random.permutation(k_idx, len(dataset.train["x"])))[:n]
    train = dataset.train["x"][idx].reshape(n, -1)
    sw = float(sliced_wasserstein(k_sw, samples, test, SW_PROJECTIONS))
    sw_real = float(sliced_wasserstein(k_sw, train, test, SW_PROJECTIONS))
    predicted = fit_digits_classifier(dataset)(samples.reshape(n, *dataset.shape))
    hist = np.bincount(predicted, minlength=dataset.num_classes) / n
    uniform = np.full(dataset.num_classes, 1.0 / dataset.num_classes)
    return Report(
        metric="sliced W1 to test images",
        value=sw,
        baseline="training images",
        baseline_value=sw_real,
        lower_is_better=True,
        extra={"kl_class_histogram_to_uniform": float(kl(hist, uniform))},
    )


def _evaluate_conditional(task: Task, params, dataset: Dataset, key) -> Report:
    """Classifier accuracy on class-conditional samples; in ``extra`` the diversity within a
    class: sliced W1 between a class's samples and its test images, averaged over classes,
    beside the same distance from its training images."""
    k_sample, k_sw = jax.random.split(key)
    classify = fit_digits_classifier(dataset)
    labels = np.repeat(np.arange(dataset.num_classes), EVAL_PER_CLASS)
    samples = np.asarray(task.model.sample(params, k_sample, len(labels), labels=labels))
    accuracy = float(np.mean(classify(samples) == labels))
    real_accuracy = float(np.mean(classify(dataset.test["x"]) == dataset.test["y"]))
    fake_sw, real_sw = [], []
    for c in range(dataset.num_classes):
        test = dataset.test["x"][dataset.test["y"] == c]
        n = min(len(test), EVAL_PER_CLASS)
        test = test[:n].reshape(n, -1)
        train = dataset.train["x"][dataset.train["y"] == c][:n].reshape(n, -1)
        fake = samples[labels == c][:n].reshape(n, -1)
        fake_sw.append(float(sliced_wasserstein(k_sw, fake, test, SW_PROJECTIONS)))
        real_sw.append(float(sliced_wasserstein(k_sw, train, test, SW_PROJECTIONS)))
    return Report(
        metric="classifier accuracy on conditional samples",
        value=accuracy,
        baseline="the same classifier on real test images",
        baseline_value=real_accuracy,
        lower_is_better=False,
        extra={
            "class_sliced_w1_to_test": float(np.mean(fake_sw)),
            "class_sliced_w1_train_to_test": float(np.mean(real_sw)),
        },
    )


# ----------------------------------------------------------------------------- figures


def _mixture_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    samples = np.asarray(task.sample(params, key, 2_000))
    variant = task.model.variant.name
    path = Path(out_dir) / f"{dataset.name}_{variant}.png"
    means = mixture_means(dataset.name)
    return [viz.mode_panels({variant: samples}, means, 3 * MIXTURE_STD, path)]


def _image_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    gan = task.model
    labels = None if gan.num_classes is None else np.tile(np.arange(gan.num_classes), 10)
    samples = gan.sample(params, key, 100, labels=labels)
    name = "cgan_digits" if gan.num_classes is not None else "dcgan_digits"
    return [viz.image_grid(np.asarray(samples), Path(out_dir) / f"{name}_samples.png", ncols=10)]


# ----------------------------------------------------------------------------- configs


def mixture_config(quick: bool) -> TrainConfig:
    r"""Defaults on 2-D mixtures: Adam(2e-3, 0, 0.9) for both players, 5 critic steps of 256
    points per generator step, the generator's rate decaying by cosine to 5 %, no EMA (the
    discriminator's rate decays alike, :func:`mixture_options`).

    Adam without momentum (:math:`\beta_1 = 0`, as on digits, :func:`digits_config`): with
    :math:`\beta_1 = 0.5` SN-GAN covered 20/25 modes of the grid at 49.6 % high quality, with
    0 25/25 at 83.1 %.

    The modes are 100 std apart: samples must settle within 3 std, so both players' step sizes
    have to shrink at the end (with the generator's alone decaying, the critic kept moving and
    WGAN-GP covered 4/8 modes of the ring), and an EMA of the weights averages generators whose
    modes have moved (with decay 0.999 it covered no mode after 3000 steps where the raw
    generator covered all 8). The quick budget (200 steps of 5 x 64 points) only smoke-tests
    the loop; its discriminator's rate barely decays (the decay spans the full budget).

    Derivation: derivations/08-gans.md
    """
    return TrainConfig(
        steps=200 if quick else MIXTURE_STEPS,
        batch_size=5 * (64 if quick else 256),
        lr=2e-3,
        b1=0.0,
        b2=0.9,
        schedule="cosine",
        final_lr_fraction=0.05,
        clip_norm=None,
        ema_decay=None,
        log_every=100,
    )


def digits_config(quick: bool) -> TrainConfig:
    r"""DCGAN defaults on 8x8 digits: Adam(2e-4, 0, 0.9) both players, batch 64, EMA 0.999.

    Adam without momentum (:math:`\beta_1 = 0`, Zhang et al. 2019, SAGAN): with
    :math:`\beta_1 = 0.5` the unconditional DCGAN collapsed onto one image (sliced W1 to the
    test images 0.217, training images 0.022); with 0 it reached 0.028, all else equal.

    Derivation: derivations/08-gans.md
    """
    return TrainConfig(
        steps=300 if quick else 5000,
        batch_size=64,
        lr=2e-4,
        b1=0.0,
        b2=0.9,
        schedule="constant",
        clip_norm=None,
        ema_decay=0.999,
        log_every=100,
    )


_MIXTURE = {
    "make_task": make_mixture_task,
    "config": mixture_config,
    "evaluate": _evaluate_mixture,
    "figures": _mixture_figures,
}
_DIGITS = {"config": digits_config, "figures": _image_figures, "data": "digits"}
_OPTIONS = {  # what make_gan reads (the sizes and rates default by data kind)
    "variant": "wgan_gp",
    "normalization": "none",
    "d_optimizer": "adam",
    "width": 128,
    "latent_dim": 2,
    "depth": 3,
    "n_critic": 5,
    "gp_weight": 10.0,
    "d_lr": 2e-3,
    "d_b1": Option(0.0, high=1.0),
    "d_b2": Option(0.9, high=1.0),
    "d_final_lr_fraction": Option(0.05, high=1.0),
    "d_decay_steps": Option(None, type=int),
}
for _recipe in (
    Recipe(
        "gan_eight_gaussians",
        "WGAN-GP MLPs on 8 Gaussians on a ring (radius 2, std 0.02): modes covered",
        data="eight_gaussians",
        quick_tour=True,
        **_MIXTURE,
    ),
    Recipe(
        "gan_grid",
        "WGAN-GP MLPs on the 5x5 grid of 25 Gaussians (std 0.02): modes covered",
        data="gaussian_grid",
        tour=False,
        **_MIXTURE,
    ),
    Recipe(
        "dcgan_digits",
        "DCGAN (non-saturating loss, spectral-norm D) on 8x8 digits: sliced W1 to test",
        make_task=lambda dataset, options: make_task(
            dataset, {"variant": "nonsaturating", "normalization": "spectral", **options}
        ),
        evaluate=_evaluate_dcgan,
        tour_steps=5000,
        **_DIGITS,
    ),
    Recipe(
        "cgan_digits",
        "conditional GAN (label embedding in G, projection D, hinge + SN) on digits",
        make_task=lambda dataset, options: make_task(
            dataset, {"variant": "sngan", **options}, conditional=True
        ),
        evaluate=_evaluate_conditional,
        tour_steps=5000,
        **_DIGITS,
    ),
):
    register(_recipe._replace(options=_OPTIONS))
