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

**How a GAN uses the loop** (:class:`genjax.train.Task` with a custom ``update``):

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
* One loop step = ``n_critic`` discriminator steps (a ``lax.scan``, each on its own slice of the
  batch, so the loop's ``batch_size`` is ``n_critic`` x the per-step batch) followed by one
  generator step, all in the loop's one jitted update.

Derivation: derivations/08-gans.md
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax import data as data_lib
from genjax import gan as G
from genjax import viz
from genjax.data import Dataset
from genjax.divergences import kl, sliced_wasserstein
from genjax.nn.layers import SPECTRAL
from genjax.recipes import Recipe, Report, register
from genjax.train import Task, TrainConfig, TrainState, ema_update

BATCH_STATS = "batch_stats"
MIXTURE_STD = 0.02  # std of every mode of the 2-D mixtures (the data sets' default)
EVAL_SAMPLES = 10_000  # generated points scored by mode_coverage
SW_PROJECTIONS = 256  # directions of the sliced Wasserstein metrics
SW_IMAGES = 500  # images on each side of the digits' sliced Wasserstein metric
EVAL_PER_CLASS = 50  # conditional samples per digit scored by the classifier


@dataclasses.dataclass(frozen=True)
class Variant:
    """One GAN game: the two losses, the Lipschitz device and the critic's schedule.

    Attributes:
      name: registry key.
      d_loss: ``(real_logits, fake_logits) -> [batch]``.
      g_loss: ``fake_logits -> [batch]``.
      normalization: the discriminator's normalisation (:data:`genjax.gan.NORMALIZATIONS`).
      gp_weight: :math:`\\lambda` of :func:`genjax.gan.gradient_penalty` (0 = none).
      clip: weight-clipping bound :math:`c` (``None`` = none).
      d_optimizer: ``"adam"`` or ``"rmsprop"`` (WGAN with clipping: momentum makes it unstable,
        Arjovsky et al. section 3).
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
):
    """The discriminator's optimiser: Adam(lr, b1, b2) or RMSProp(lr).

    The rate is constant, or with ``decay_steps`` (discriminator updates) decays by cosine to
    ``lr * final_lr_fraction``, as the loop's schedule does for the generator."""
    if kind not in ("adam", "rmsprop"):
        raise ValueError(f"d_optimizer must be 'adam' or 'rmsprop', got {kind!r}")
    rate = lr
    if decay_steps is not None:
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be a positive int or None, got {decay_steps}")
        rate = optax.cosine_decay_schedule(lr, decay_steps, final_lr_fraction)
    if kind == "rmsprop":
        return optax.rmsprop(rate)
    return optax.adam(rate, b1=b1, b2=b2)


@dataclasses.dataclass(frozen=True, eq=False)
class GAN:
    """The two players, the game and the discriminator's optimiser: init, update, sample.

    Attributes:
      generator: ``apply(vars, z, labels, train=...)`` to ``[batch, *event]``.
      discriminator: ``apply(vars, x, labels, update_stats=...)`` to ``[batch]``.
      variant: the :class:`Variant`.
      d_tx: the discriminator's optax optimiser.
      n_critic: discriminator steps per generator step.
      latent_dim: width of :math:`z`.
      event_shape: shape of one example.
      num_classes: label count of a conditional GAN, else ``None``.
      images: data are images in [0, 1], mapped to [-1, 1] for the players.
    """

    generator: nn.Module
    discriminator: nn.Module
    variant: Variant
    d_tx: optax.GradientTransformation
    n_critic: int
    latent_dim: int
    event_shape: tuple[int, ...]
    num_classes: int | None = None
    images: bool = False
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def encode(self, x):
        return 2.0 * x - 1.0 if self.images else x

    def decode(self, x):
        return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0) if self.images else x

    def _fake_labels(self, key, n):
        if self.num_classes is None:
            return None
        return jax.random.randint(key, (n,), 0, self.num_classes)

    def _real_labels(self, batch, n):
        if self.num_classes is None:
            return None
        return jnp.asarray(batch["y"], jnp.int32).reshape(n)

    def init(self, key, batch):
        """``(generator variables, {"discriminator": vars, "d_opt_state": ...})``.

        Parameters do not depend on the batch size: two examples suffice, and one compiled
        function initialises faster than flax's op-by-op ``init``."""
        small = {k: jnp.asarray(v)[:2] for k, v in batch.items()}  # [2, ...]
        return jax.jit(self._init)(key, small)

    def _init(self, key, batch):
        k_g, k_d, k_z = jax.random.split(key, 3)
        x = self.encode(batch["x"])
        n = x.shape[0]
        z = jax.random.normal(k_z, (n, self.latent_dim))
        y = self._real_labels(batch, n)
        g_vars = dict(self.generator.init(k_g, z, y, train=False))
        d_vars = dict(self.discriminator.init(k_d, x, y))
        extra = {"discriminator": d_vars, "d_opt_state": self.d_tx.init(d_vars["params"])}
        return g_vars, extra

    def _generate(self, g_vars, z, labels, train):
        """Samples from the generator; in training mode also its new batch statistics."""
        if train:
            return self.generator.apply(g_vars, z, labels, train=True, mutable=[BATCH_STATS])
        return self.generator.apply(g_vars, z, labels, train=False), {}

    def critic_step(self, g_vars, d_vars, d_opt_state, key, real, real_labels):
        """One discriminator update on ``real [m, *event]``; returns (vars, opt_state, metrics)."""
        k_z, k_y, k_gp = jax.random.split(key, 3)
        m = real.shape[0]
        fake_labels = self._fake_labels(k_y, m)
        z = jax.random.normal(k_z, (m, self.latent_dim))
        fake = jax.lax.stop_gradient(self._generate(g_vars, z, fake_labels, True)[0])
        both = jnp.concatenate([real, fake])  # [2m, *event]: one power-iteration step per update
        both_labels = None if real_labels is None else jnp.concatenate([real_labels, fake_labels])
        variant = self.variant

        def loss_fn(d_params):
            current = {**d_vars, "params": d_params}
            logits, new_state = self.discriminator.apply(
                current, both, both_labels, update_stats=True, mutable=[SPECTRAL]
            )
            real_logits, fake_logits = logits[:m], logits[m:]
            d_loss = jnp.mean(variant.d_loss(real_logits, fake_logits))
            gap = jnp.mean(real_logits) - jnp.mean(fake_logits)
            penalty = jnp.zeros(())
            if variant.gp_weight > 0:
                # the penalty's critic sees labels of the real half; it is f(., y) for fixed y
                critic = lambda x: self.discriminator.apply(current, x, real_labels)
                penalty = jnp.mean(G.gradient_penalty(k_gp, critic, real, fake))
            total = d_loss + variant.gp_weight * penalty
            return total, (dict(new_state), {"d_loss": d_loss, "gp": penalty, "score_gap": gap})

        grads, (new_state, metrics) = jax.grad(loss_fn, has_aux=True)(d_vars["params"])
        updates, d_opt_state = self.d_tx.update(grads, d_opt_state, d_vars["params"])
        d_params = optax.apply_updates(d_vars["params"], updates)
        if variant.clip is not None:
            d_params = G.clip_weights(d_params, variant.clip)
        return {**d_vars, **new_state, "params": d_params}, d_opt_state, metrics

    def generator_grads(self, g_vars, d_vars, key, m: int):
        """Gradient of the generator's loss on ``m`` samples w.r.t. its params.

        Returns ``(grads, new batch statistics, metrics)``; the discriminator is applied without
        advancing its power iteration."""
        k_z, k_y = jax.random.split(key)
        labels = self._fake_labels(k_y, m)
        z = jax.random.normal(k_z, (m, self.latent_dim))

        def loss_fn(g_params):
            fake, new_stats = self._generate({**g_vars, "params": g_params}, z, labels, True)
            logits = self.discriminator.apply(d_vars, fake, labels)
            return jnp.mean(self.variant.g_loss(logits)), dict(new_stats)

        (g_loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_vars["params"])
        return grads, new_stats, {"g_loss": g_loss}

    def update(self, state: TrainState, key, batch, tx, ema_decay):
        """``n_critic`` discriminator steps, then one generator step (``Task.update``)."""
        x = self.encode(batch["x"])
        total = x.shape[0]
        if total % self.n_critic:
            raise ValueError(
                f"batch_size ({total}) must be a multiple of n_critic ({self.n_critic}): each "
                "critic step takes its own slice of the batch"
            )
        m = total // self.n_critic
        xs = x.reshape(self.n_critic, m, *x.shape[1:])  # [n_critic, m, *event]
        labels = self._real_labels(batch, total)
        ys = None if labels is None else labels.reshape(self.n_critic, m)  # [n_critic, m]
        k_critic, k_gen = jax.random.split(key)
        g_vars = state.params

        def body(carry, inputs):
            d_vars, d_opt_state = carry
            real, real_labels, k = inputs
            d_vars, d_opt_state, metrics = self.critic_step(
                g_vars, d_vars, d_opt_state, k, real, real_labels
            )
            return (d_vars, d_opt_state), metrics

        keys = jax.random.split(k_critic, self.n_critic)
        (d_vars, d_opt_state), d_metrics = jax.lax.scan(
            body, (state.extra["discriminator"], state.extra["d_opt_state"]), (xs, ys, keys)
        )
        grads, new_stats, g_metrics = self.generator_grads(g_vars, d_vars, k_gen, m)
        # the loop's optimiser sees the whole generator tree; batch statistics get zero gradient
        # and are then overwritten with the running averages of this step
        full_grads = {**jax.tree.map(jnp.zeros_like, g_vars), "params": grads}
        updates, opt_state = tx.update(full_grads, state.opt_state, g_vars)
        new_g = {**optax.apply_updates(g_vars, updates), **new_stats}
        metrics = {k: jnp.mean(v) for k, v in d_metrics.items()}
        metrics = {**metrics, **g_metrics, "loss": metrics["d_loss"]}
        new_state = state.replace(
            step=state.step + 1,
            params=new_g,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, new_g, ema_decay),
            extra={"discriminator": d_vars, "d_opt_state": d_opt_state},
        )
        return new_state, metrics

    def loss(self, params, key, batch):
        """A generator-only score for ``Task.loss``: sliced W1 between samples and the batch."""
        k_z, k_sw = jax.random.split(key)
        real = self.encode(batch["x"])
        n = real.shape[0]
        labels = self._real_labels(batch, n)
        fake = self._generate(params, jax.random.normal(k_z, (n, self.latent_dim)), labels, False)
        fake = fake[0].reshape(n, -1)  # [n, prod(event)]
        sw = sliced_wasserstein(k_sw, fake, real.reshape(n, -1), SW_PROJECTIONS)
        return sw, {"sliced_w1": sw}

    def sampler(self, n: int):
        if ("sample", n) not in self._cache:

            def sample(params, key, labels):
                z = jax.random.normal(key, (n, self.latent_dim))
                return self.decode(self._generate(params, z, labels, False)[0])

            self._cache[("sample", n)] = jax.jit(sample)
        return self._cache[("sample", n)]

    def sample(self, params, key, n, labels=None):
        """``n`` samples (images in [0, 1]); a conditional GAN cycles through the classes."""
        if self.num_classes is not None and labels is None:
            labels = jnp.arange(n) % self.num_classes
        if labels is not None:
            labels = jnp.asarray(labels, jnp.int32)
        return self.sampler(n)(params, key, labels)


class _Sample:
    """``Task.sample``: ``(params, key, n) -> samples``, carrying its :class:`GAN`."""

    def __init__(self, gan: GAN):
        self.gan = gan

    def __call__(self, params, key, n):
        return self.gan.sample(params, key, n)


def make_gan(dataset: Dataset, options: Mapping[str, Any], *, conditional: bool = False) -> GAN:
    """The players for ``dataset``: MLPs for vectors, DCGAN for images; options override."""
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
    if images:
        generator = G.DCGANGenerator(dataset.shape, features=width, num_classes=num_classes)
        discriminator = G.DCGANDiscriminator(
            features=width, normalization=normalization, num_classes=num_classes
        )
        latent_dim = int(options.get("latent_dim", 32))
    else:
        depth = int(options.get("depth", 3))
        generator = G.MLPGenerator(dataset.shape[0], features=width, depth=depth)
        discriminator = G.MLPDiscriminator(width, depth, normalization=normalization)
        latent_dim = int(options.get("latent_dim", 2))
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
        latent_dim=latent_dim,
        event_shape=dataset.shape,
        num_classes=num_classes,
        images=images,
    )


def make_task(dataset: Dataset, options: Mapping[str, Any], conditional: bool = False) -> Task:
    gan = make_gan(dataset, options, conditional=conditional)
    return Task(init=gan.init, loss=gan.loss, sample=_Sample(gan), update=gan.update)


# ----------------------------------------------------------------------------- evaluation


def mixture_means(name: str) -> np.ndarray:
    """The mode centres of a 2-D mixture data set."""
    if name == "eight_gaussians":
        return data_lib.ring_means(8, 2.0)
    if name == "gaussian_grid":
        return data_lib.grid_means(5, 2.0)
    raise ValueError(f"no mode centres for data set {name!r}")


def evaluate_mixture(task: Task, params, dataset: Dataset, key) -> Report:
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


def digits_classifier(dataset: Dataset) -> Callable[[np.ndarray], np.ndarray]:
    """A classifier ``images [N, 8, 8, 1] -> labels [N]`` fitted on the training split.

    Uses ``genjax.classifier.fit_digits_classifier`` when present, else a scikit-learn SVC
    (RBF kernel) on the flattened pixels.
    """
    try:
        from genjax.classifier import fit_digits_classifier
    except ImportError:
        from sklearn.svm import SVC

        n = len(dataset.train["x"])
        svc = SVC(C=10.0, gamma="scale").fit(dataset.train["x"].reshape(n, -1), dataset.train["y"])
        return lambda images: svc.predict(np.asarray(images).reshape(len(images), -1))
    return fit_digits_classifier(dataset)


def evaluate_dcgan(task: Task, params, dataset: Dataset, key) -> Report:
    k_sample, k_sw, k_idx = jax.random.split(key, 3)
    n = min(SW_IMAGES, len(dataset.test["x"]))
    samples = np.asarray(task.sample(params, k_sample, n)).reshape(n, -1)
    test = dataset.test["x"][:n].reshape(n, -1)
    idx = np.asarray(jax.random.permutation(k_idx, len(dataset.train["x"])))[:n]
    train = dataset.train["x"][idx].reshape(n, -1)
    sw = float(sliced_wasserstein(k_sw, samples, test, SW_PROJECTIONS))
    sw_real = float(sliced_wasserstein(k_sw, train, test, SW_PROJECTIONS))
    predicted = digits_classifier(dataset)(samples.reshape(n, *dataset.shape))
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


def evaluate_conditional(task: Task, params, dataset: Dataset, key) -> Report:
    """Classifier accuracy on class-conditional samples; in ``extra`` the diversity within a
    class: sliced W1 between a class's samples and its test images, averaged over classes,
    beside the same distance from its training images."""
    k_sample, k_sw = jax.random.split(key)
    classify = digits_classifier(dataset)
    labels = np.repeat(np.arange(dataset.num_classes), EVAL_PER_CLASS)
    samples = np.asarray(task.sample.gan.sample(params, k_sample, len(labels), labels=labels))
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


def _draw_mixture(ax, samples: np.ndarray, means: np.ndarray, title: str) -> None:
    """Samples (blue) over the mixture's density: each mode's 3-std disc (red) on one axis."""
    import matplotlib.pyplot as plt

    lim = float(np.abs(means).max()) + 1.0
    for mu in means:
        ax.add_patch(plt.Circle(mu, 3 * MIXTURE_STD, color="tab:red", alpha=0.6, lw=0))
    ax.scatter(samples[:, 0], samples[:, 1], s=0.5, alpha=0.3, color="tab:blue", linewidths=0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def save_mixture_plot(samples: np.ndarray, means: np.ndarray, path: Path, title: str) -> Path:
    """Scatter ``samples [n, 2]`` over the mixture's modes (3-std discs) and save a PNG."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.6, 2.6), dpi=80)
    _draw_mixture(ax, np.asarray(samples), means, title)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def mixture_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    samples = np.asarray(task.sample(params, key, 2_000))
    variant = task.sample.gan.variant.name
    path = Path(out_dir) / f"{dataset.name}_{variant}.png"
    return [save_mixture_plot(samples, mixture_means(dataset.name), path, variant)]


def image_figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    gan = task.sample.gan
    labels = None if gan.num_classes is None else np.tile(np.arange(gan.num_classes), 10)
    samples = gan.sample(params, key, 100, labels=labels)
    name = "cgan_digits" if gan.num_classes is not None else "dcgan_digits"
    return [viz.image_grid(np.asarray(samples), Path(out_dir) / f"{name}_samples.png", ncols=10)]


# ----------------------------------------------------------------------------- configs


MIXTURE_STEPS = 4000  # generator steps of the full budget on the 2-D mixtures
MIXTURE_DEPTH = 5  # hidden layers of both MLP players on the 2-D mixtures (width 128)
TOY_GP_WEIGHT = 0.1  # WGAN-GP's lambda on its toy data sets (Gulrajani et al., appendix)


def mixture_options(variant: str = "wgan_gp", steps: int = MIXTURE_STEPS) -> dict[str, Any]:
    """:func:`make_gan` options of every game on the 2-D mixtures.

    Both players are 5 x 128 ReLU MLPs; the discriminator's rate decays by cosine over the
    ``steps`` generator steps, as the generator's does (:func:`mixture_config`); WGAN-GP uses
    the paper's toy penalty weight :data:`TOY_GP_WEIGHT` instead of 10."""
    options: dict[str, Any] = {"variant": variant, "depth": MIXTURE_DEPTH, "d_decay_steps": steps}
    if variant == "wgan_gp":
        options["gp_weight"] = TOY_GP_WEIGHT
    return options


def make_mixture_task(dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """``make_task`` of the mixture recipes: :func:`mixture_options` of ``options["variant"]``
    (default WGAN-GP), which ``options`` override."""
    variant = str(options.get("variant", "wgan_gp"))
    return make_task(dataset, {**mixture_options(variant), **options})


def mixture_config(quick: bool) -> TrainConfig:
    """Defaults on 2-D mixtures: Adam(2e-3, 0, 0.9) for both players, 5 critic steps of 256
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
    the loop; its discriminator's rate barely decays (the decay spans the full budget)."""
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
    """DCGAN defaults on 8x8 digits: Adam(2e-4, 0, 0.9) both players, batch 64, EMA 0.999.

    Adam without momentum (:math:`\beta_1 = 0`, Zhang et al. 2019, SAGAN): with
    :math:`\beta_1 = 0.5` the unconditional DCGAN collapsed onto one image (sliced W1 to the
    test images 0.217, training images 0.022); with 0 it reached 0.028, all else equal."""
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


register(
    Recipe(
        name="gan_eight_gaussians",
        summary="WGAN-GP MLPs on 8 Gaussians on a ring (radius 2, std 0.02): modes covered",
        make_task=make_mixture_task,
        config=mixture_config,
        evaluate=evaluate_mixture,
        figures=mixture_figures,
        data="eight_gaussians",
        quick_tour=True,
    )
)
register(
    Recipe(
        name="gan_grid",
        summary="WGAN-GP MLPs on the 5x5 grid of 25 Gaussians (std 0.02): modes covered",
        make_task=make_mixture_task,
        config=mixture_config,
        evaluate=evaluate_mixture,
        figures=mixture_figures,
        data="gaussian_grid",
        tour=False,
    )
)
register(
    Recipe(
        name="dcgan_digits",
        summary="DCGAN (non-saturating loss, spectral-norm D) on 8x8 digits: sliced W1 to test",
        make_task=lambda dataset, options: make_task(
            dataset, {"variant": "nonsaturating", "normalization": "spectral", **options}
        ),
        config=digits_config,
        evaluate=evaluate_dcgan,
        figures=image_figures,
        data="digits",
    )
)
register(
    Recipe(
        name="cgan_digits",
        summary="conditional GAN (label embedding in G, projection D, hinge + SN) on digits",
        make_task=lambda dataset, options: make_task(
            dataset, {"variant": "sngan", **options}, conditional=True
        ),
        config=digits_config,
        evaluate=evaluate_conditional,
        figures=image_figures,
        data="digits",
    )
)


# ----------------------------------------------------------------------------- the study

STUDY_VARIANTS = ("minimax", "nonsaturating", "wgan", "wgan_gp", "sngan")
STUDY_DATA = ("eight_gaussians", "gaussian_grid")
STUDY_LABELS = {
    "minimax": "minimax GAN",
    "nonsaturating": "non-saturating GAN",
    "wgan": "WGAN (clipping)",
    "wgan_gp": "WGAN-GP",
    "sngan": "SN-GAN (hinge)",
    "data": "test samples (ceiling)",
}


def mode_coverage_study(
    out_dir: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    variants: tuple[str, ...] = STUDY_VARIANTS,
    data: tuple[str, ...] = STUDY_DATA,
    figure_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train every GAN variant on each 2-D mixture with one budget and seed; score and plot.

    Every run uses the same players (:func:`mixture_options`), :func:`mixture_config` (full
    budget, ``steps`` overriding its length, both players' rates decaying over it), ``n_critic``
    and ``seed``; only the game (:data:`VARIANTS`) changes. Writes one PNG per data set,
    ``gan_<data>.png`` in ``figure_dir`` (default ``out_dir``): test samples, then each
    variant's samples over the modes. Rows go to ``out_dir/mode_coverage.json``, merged with
    rows of other data sets already there (so the two data sets can run as separate
    processes), and the whole table to ``mode_coverage.md``. Returns this call's rows.
    """
    import time

    from genjax.data import load_dataset
    from genjax.train import fit

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"variants must be among {sorted(VARIANTS)}, got {sorted(unknown)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure_dir = Path(figure_dir) if figure_dir is not None else out_dir
    config = dataclasses.replace(mixture_config(False), seed=seed)
    if steps is not None:
        config = dataclasses.replace(config, steps=steps, log_every=math.gcd(steps, 100))
    rows = []
    for name in data:
        dataset = load_dataset(name)
        means = mixture_means(name)
        real = dataset.test["x"][:EVAL_SAMPLES]
        cover = G.mode_coverage(real, means, MIXTURE_STD)
        rows.append(_study_row(name, "data", cover, len(means), 0.0, config, seed))
        np.save(out_dir / f"samples_{name}_data.npy", real[:2000])
        for variant in variants:
            tic = time.perf_counter()
            task = make_task(dataset, mixture_options(variant, config.steps))
            state = fit(task, dataset.train, config, progress=False)
            key = jax.random.key(seed + 1)
            samples = np.asarray(task.sample(state.ema_params, key, EVAL_SAMPLES))
            cover = G.mode_coverage(samples, means, MIXTURE_STD)
            seconds = time.perf_counter() - tic
            rows.append(_study_row(name, variant, cover, len(means), seconds, config, seed))
            np.save(out_dir / f"samples_{name}_{variant}.npy", samples[:2000])
            print(
                f"{name:16s} {variant:14s} modes {cover.modes:2d}/{len(means)}  high quality "
                f"{100 * cover.high_quality:5.1f} %  {seconds:.0f} s",
                flush=True,
            )
    path = out_dir / "mode_coverage.json"
    done = {(r["data"], r["variant"]) for r in rows}
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    merged = [r for r in old if (r["data"], r["variant"]) not in done] + rows
    path.write_text(json.dumps({"rows": merged}, indent=2))
    (out_dir / "mode_coverage.md").write_text(study_table(merged))
    for name in data:
        study_figure(out_dir, name, merged, figure_dir / f"gan_{name}.png")
    return rows


def study_figure(out_dir: Path, name: str, rows: list[dict[str, Any]], path: Path) -> Path:
    """One row of panels for data set ``name``: test samples, then each variant's samples (as
    saved by :func:`mode_coverage_study` in ``out_dir``) over the modes, titled with the score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = mixture_means(name)
    by = {r["variant"]: r for r in rows if r["data"] == name}
    order = [v for v in ("data", *VARIANTS) if (out_dir / f"samples_{name}_{v}.npy").is_file()]
    fig, axes = plt.subplots(1, len(order), figsize=(1.9 * len(order), 2.2), dpi=80)
    for ax, variant in zip(np.atleast_1d(axes), order, strict=True):
        samples = np.load(out_dir / f"samples_{name}_{variant}.npy")
        title = variant
        if variant in by:
            r = by[variant]
            title += f": {r['modes']}/{r['num_modes']}, {100 * r['high_quality']:.0f} %"
        _draw_mixture(ax, samples, means, title)
    fig.tight_layout(pad=0.6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _study_row(data, variant, cover: G.ModeCoverage, num_modes, seconds, config, seed):
    return {
        "data": data,
        "variant": variant,
        "modes": cover.modes,
        "num_modes": num_modes,
        "high_quality": cover.high_quality,
        "seconds": seconds,
        "steps": config.steps,
        "seed": seed,
    }


def study_table(rows: list[dict[str, Any]]) -> str:
    """The study's rows as one Markdown table: a row per game, two columns per data set."""
    names = {"eight_gaussians": "ring of 8", "gaussian_grid": "grid of 25"}
    data = list(dict.fromkeys(r["data"] for r in rows))
    head = "| game |" + "".join(
        f" {names.get(d, d)}: modes | {names.get(d, d)}: high quality |" for d in data
    )
    lines = [head, "|---|" + "---:|---:|" * len(data)]
    by = {(r["data"], r["variant"]): r for r in rows}
    variants = ["data"] + [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "data"]
    for variant in variants:
        cells = []
        for d in data:
            r = by.get((d, variant))
            if r is None:
                cells += ["", ""]
            else:
                cells += [f"{r['modes']}/{r['num_modes']}", f"{100 * r['high_quality']:.1f} %"]
        lines.append(f"| {STUDY_LABELS.get(variant, variant)} | " + " | ".join(cells) + " |")
    budgets = {r["data"]: (r["steps"], r["seed"]) for r in rows if r["variant"] != "data"}
    budget = "; ".join(
        f"{names.get(d, d)}: {steps} generator steps, seed {seed}"
        for d, (steps, seed) in budgets.items()
    )
    lines += [
        "",
        f"{budget}; each generator step follows 5 critic steps of 256 points. 10,000 samples "
        "scored per run: a sample is high quality within 3 std of a mode, a mode is covered "
        "when at least 1 % of the samples are high-quality samples of it.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m genjax.recipes.gan``: the study of :func:`mode_coverage_study`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m genjax.recipes.gan",
        description="Mode coverage of five GAN games on the 8-Gaussian ring and 25-Gaussian grid",
    )
    parser.add_argument("--out", default="runs/gan_study", help="folder for the table and JSON")
    parser.add_argument("--figures", default=None, help="folder for gan_<data>.png (default OUT)")
    parser.add_argument("--steps", type=int, default=None, help="generator steps per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", default=list(STUDY_VARIANTS))
    parser.add_argument("--data", nargs="*", default=list(STUDY_DATA))
    args = parser.parse_args(argv)
    mode_coverage_study(
        args.out,
        steps=args.steps,
        seed=args.seed,
        variants=tuple(args.variants),
        data=tuple(args.data),
        figure_dir=args.figures,
    )
    print((Path(args.out) / "mode_coverage.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
