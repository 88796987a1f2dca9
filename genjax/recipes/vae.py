r"""VAE recipes: Gaussian-decoder VAE and CVAE on dequantised digits, ConvVAE on binarised digits.

* ``vae_digits``: MLP :class:`genjax.vae.VAE` with a Gaussian decoder (learned per-pixel
  variance) on the 8x8 digits dequantised to a density on :math:`[0, 1)^{64}`. Metric: the
  importance-sampled test NLL (:func:`genjax.vae.importance_sampled_nll`) in nats per image;
  baseline: scikit-learn's probabilistic PCA with as many components as the VAE has latent
  dimensions, fit on dequantised training images and scored on the *same* dequantised test
  images; a full-covariance ``GaussianMixture`` (components chosen on a validation split) is
  scored on them too. ``extra``: bits per dimension, the test ELBO, and what the code is good for
  (:mod:`genjax.probes`): linear-probe and kNN accuracy of the posterior means vs of the raw
  pixels, and the codes' noise stability.
* ``cvae_digits``: :class:`genjax.vae.CVAE` (one-hot label, learned prior :math:`p(z \mid y)`).
  Metric: importance-sampled :math:`-\log p(x \mid y)`; baseline: one PPCA per class. ``extra``:
  the accuracy of :func:`genjax.classifier.fit_digits_classifier` on class-conditional samples
  beside its accuracy on the real test images.
* ``vae_digits_anomaly``: the ``vae_digits`` model trained with one class held out (its training
  examples get weight zero). Metric: AUROC of :math:`-\mathcal L_k(x)` separating held-out test
  digits from the rest; baseline: the AUROC of PPCA's :math:`-\log p(x)`.
* ``convvae_digits`` and ``convvae_mnist``: :class:`genjax.vae.ConvVAE` with a Bernoulli decoder
  on dynamically binarised images (the test images binarised once, with a fixed key). Metric:
  importance-sampled test NLL (MNIST: :math:`k` = 5000 as Burda et al., who report 86-87 nats
  for a 2-layer VAE); baseline: independent Bernoulli pixels with the training means.

Every density model and baseline of the digits recipes is a density on the dequantised
:math:`y = (k + u)/L \in [0, 1)^D` (:func:`genjax.data.dequantize`, :math:`L` = 17), scored on one
fixed dequantised test set (key ``EVAL_KEY``). NLL is :math:`-\log p(y)` in nats per image;
bits per dimension (:func:`genjax.metrics.bits_per_dim`) is the discrete upper bound
:math:`(-\log p(y) + D \ln L)/(D \ln 2)`.

Derivation: derivations/05-vae.md, derivations/06-conditional-vae.md
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
from genjax import likelihoods, metrics, probes, viz
from genjax import vae as V
from genjax.classifier import fit_digits_classifier
from genjax.data import Dataset
from genjax.recipes import Option, Recipe, Report, register
from genjax.recipes.common import fast_init_key, one_blas_thread, select_on_validation
from genjax.train import Task, TrainConfig, standard_update

__all__ = ["RECIPES", "Setup", "class_accuracy", "make_task"]

EVAL_KEY = 1234  # the fixed dequantisation/binarisation of the test images, shared by baselines
BASELINE_KEY = 4321  # the dequantisation of the training images the baselines are fit on
GMM_COMPONENTS = (1, 2, 4, 8)
GMM_REG_COVAR = 1e-4  # about the dequantisation noise variance (1/17)^2 / 12 = 2.9e-4
EVAL_BATCH = 64  # test images per importance-sampling call
CHUNK_SIZE = 100  # importance samples per decoder call
EVAL_PER_CLASS = 50  # CVAE samples per class scored by the classifier
NOISE_STD = 0.05  # input noise of the noise-stability probe (pixels in [0, 1])
HOLDOUT = 9
PREPARATIONS = ("dequantize", "binarize")

DIGITS_DEFAULTS = {"latent_dim": 16, "hidden": (512, 256), "eval_samples": 200}
CONV_DEFAULTS = {"latent_dim": 32, "features": (32, 64), "hidden": 256, "eval_samples": 200}


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    r"""What a VAE recipe's task, evaluation and figures share (``Task.model``).

    Attributes:
      model: a :class:`genjax.vae.VAE`, ``ConvVAE`` or ``CVAE``.
      preparation: ``"dequantize"`` (density on [0, 1)) or ``"binarize"`` (dynamic
        binarisation, Bernoulli decoder).
      levels: pixel levels of the data set (dequantisation).
      eval_samples: :math:`k` of the importance-sampled NLL.
      holdout: a class whose training examples get weight zero, or ``None``.
      kl_warmup: steps of linear KL warm-up (0: none).
      beta: the KL weight :math:`\beta`.

    Derivation: derivations/05-vae.md
    """

    model: Any
    preparation: str
    levels: int
    eval_samples: int
    holdout: int | None = None
    kl_warmup: int = 0
    beta: float = 1.0
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def conditional(self) -> bool:
        return isinstance(self.model, V.CVAE)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.model.event_shape)

    @property
    def num_dims(self) -> int:
        return math.prod(self.event_shape)

    def prepare(self, key, x):
        """The continuous (dequantised) or binary view of pixels in [0, 1]."""
        if self.preparation == "dequantize":
            return data_lib.dequantize(key, x, self.levels)
        return data_lib.dynamic_binarize(key, x)

    def _labels(self, batch):
        return jnp.asarray(batch["y"], jnp.int32) if self.conditional else None

    def init(self, key, batch):
        x = jnp.asarray(batch["x"])
        extra = () if not self.conditional else (self._labels(batch),)
        return jax.jit(self.model.init)(fast_init_key(key), x, *extra)

    def terms(self, params, key, x, y, beta):
        """:func:`genjax.vae.elbo` of prepared images ``x`` (labels ``y`` for a CVAE)."""
        bound = V.bind(self.model, params, y)
        return V.elbo(key, bound.encode, bound.log_likelihood, x, beta=beta, prior=bound.prior)

    def loss(self, params, key, batch, step=None):
        r"""The batch mean of :math:`-\mathcal L_\beta` (sum over pixels inside the
        log-likelihood, mean over the kept examples), and the ELBO's terms."""
        k_prep, k_elbo = jax.random.split(fast_init_key(key))
        x = self.prepare(k_prep, batch["x"])
        beta = self.beta
        if self.kl_warmup and step is not None:
            beta = beta * V.kl_warmup(step, self.kl_warmup)
        t = self.terms(params, k_elbo, x, self._labels(batch), beta)
        weight = jnp.ones_like(t.total)
        if self.holdout is not None:
            weight = (batch["y"] != self.holdout).astype(t.total.dtype)
        mean = lambda v: jnp.sum(weight * v) / jnp.maximum(jnp.sum(weight), 1.0)
        elbo = mean(t.reconstruction - t.kl)
        return -mean(t.total), {
            "elbo": elbo,
            "kl": mean(t.kl),
            "reconstruction": mean(t.reconstruction),
        }

    def update(self, state, key, batch, tx, ema_decay):
        """:func:`genjax.train.standard_update` with the KL warm-up weight of ``state.step``."""
        loss = functools.partial(self.loss, step=state.step)
        return standard_update(key, loss, state, batch, tx, ema_decay)

    # -- evaluation ------------------------------------------------------------------------

    def _jitted(self, name: str, fn: Callable) -> Callable:
        if name not in self._cache:
            self._cache[name] = jax.jit(fn)
        return self._cache[name]

    def _over_batches(self, fn, params, key, x, y) -> np.ndarray:
        """``fn(params, key, x_batch, y_batch) -> [batch]`` over ``x`` in padded batches."""
        n = len(x)
        pad = (-n) % EVAL_BATCH
        xp = np.concatenate([x, np.repeat(x[-1:], pad, 0)])  # [n + pad, ...]
        yp = None if y is None else np.concatenate([y, np.repeat(y[-1:], pad, 0)])
        out = []
        key = fast_init_key(key)
        for i in range(0, n + pad, EVAL_BATCH):
            yb = None if yp is None else jnp.asarray(yp[i : i + EVAL_BATCH])
            k = jax.random.fold_in(key, i)
            out.append(np.asarray(fn(params, k, jnp.asarray(xp[i : i + EVAL_BATCH]), yb)))
        return np.concatenate(out)[:n]

    def nll(self, params, key, x: np.ndarray, y: np.ndarray | None = None, num_samples=None):
        """Importance-sampled NLL ``[n]`` (nats per image) of prepared images ``x``."""
        k = self.eval_samples if num_samples is None else num_samples

        def fn(params, key, xb, yb):
            bound = V.bind(self.model, params, yb)
            return V.importance_sampled_nll(
                key,
                bound.encode,
                bound.log_likelihood,
                xb,
                k,
                chunk_size=CHUNK_SIZE,
                prior=bound.prior,
            )

        return self._over_batches(self._jitted(f"nll_{k}", fn), params, key, x, y)

    def elbo(self, params, key, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Single-sample ELBO ``[n]`` (nats per image) of prepared images ``x``."""
        fn = lambda params, key, xb, yb: self.terms(params, key, xb, yb, 1.0).total
        return self._over_batches(self._jitted("elbo", fn), params, key, x, y)

    def codes(self, params, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Posterior means ``[n, d]`` of prepared images ``x``."""
        fn = lambda params, key, xb, yb: V.bind(self.model, params, yb).encode(xb)[0]
        return self._over_batches(self._jitted("codes", fn), params, jax.random.key(0), x, y)

    def decode_mean(self, params, z, y=None):
        """Decoder means ``[n, *event]`` for codes ``z [n, d]``."""
        fn = lambda params, z, y: self.model.likelihood.mean(
            V.bind(self.model, params, y).decode(z)
        )
        return np.asarray(self._jitted("decode", fn)(params, jnp.asarray(z), y))

    def sample(self, params, key, n: int, *, labels=None) -> np.ndarray:
        """``Task.sample``: ``n`` images in [0, 1] (:func:`genjax.vae.sample`; a CVAE without
        ``labels`` draws class ``i mod num_classes`` for sample ``i``)."""
        if self.conditional and labels is None:
            labels = jnp.arange(n) % self.model.num_classes
        fn = lambda params, key, labels: V.sample(key, self.model, params, n, labels=labels)
        images = self._jitted(f"sample_{n}", fn)(params, fast_init_key(key), labels)
        return np.clip(np.asarray(images), 0.0, 1.0)


def make_task(dataset: Dataset, options: Mapping[str, Any], *, kind: str, **defaults) -> Task:
    """The :class:`Task` of a VAE recipe, with its :class:`Setup` as ``Task.model``.

    ``kind`` is ``"VAE"``, ``"CVAE"`` or ``"ConvVAE"``; ``options`` override ``defaults``:
    ``latent_dim``, ``hidden``, ``features`` (ConvVAE), ``likelihood`` (a kind of
    :class:`genjax.likelihoods.Likelihood`), ``preparation``, ``eval_samples``, ``holdout``,
    ``kl_warmup``, ``beta``, ``learned_prior`` (CVAE).

    Derivation: derivations/05-vae.md
    """
    opts = {**defaults, **options}
    preparation = opts.pop("preparation", "dequantize")
    if preparation not in PREPARATIONS:
        raise ValueError(f"preparation must be one of {PREPARATIONS}, got {preparation!r}")
    if dataset.levels is None:
        raise ValueError(f"{dataset.name} is not an image data set; VAE recipes need images")
    kind_of_lik = opts.pop("likelihood", "gaussian" if preparation == "dequantize" else "bernoulli")
    likelihood = likelihoods.Likelihood(kind_of_lik, levels=dataset.levels)
    setup_opts = {
        name: opts.pop(name)
        for name in ("eval_samples", "holdout", "kl_warmup", "beta")
        if name in opts
    }
    if "hidden" in opts and kind != "ConvVAE":
        opts["hidden"] = tuple(opts["hidden"])
    if "features" in opts:
        opts["features"] = tuple(opts["features"])
    shape = tuple(dataset.shape)
    if kind == "VAE":
        model = V.VAE(shape, likelihood=likelihood, **opts)
    elif kind == "CVAE":
        model = V.CVAE(shape, dataset.num_classes, likelihood=likelihood, **opts)
    elif kind == "ConvVAE":
        model = V.ConvVAE(shape, likelihood=likelihood, **opts)
    else:
        raise ValueError(f"kind must be 'VAE', 'CVAE' or 'ConvVAE', got {kind!r}")
    setup = Setup(model, preparation, dataset.levels, **setup_opts)
    return Task(
        init=setup.init, loss=setup.loss, sample=setup.sample, update=setup.update, model=setup
    )


# ----------------------------------------------------------------------------- data views


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(len(x), -1)  # [n, D]


def _prepared(setup: Setup, dataset: Dataset, split: str, seed: int) -> np.ndarray:
    cache_key = ("prepared", dataset.name, split)
    if cache_key not in setup._cache:
        key = fast_init_key(jax.random.key(seed))
        x = jnp.asarray(getattr(dataset, split)["x"])
        setup._cache[cache_key] = np.asarray(setup.prepare(key, x))
    return setup._cache[cache_key]


def _prepared_test(setup: Setup, dataset: Dataset) -> np.ndarray:
    """The one fixed prepared (dequantised or binarised) test set every model is scored on."""
    return _prepared(setup, dataset, "test", EVAL_KEY)


def _prepared_train(setup: Setup, dataset: Dataset) -> np.ndarray:
    """The prepared training images the baselines are fit on (one fixed draw)."""
    return _prepared(setup, dataset, "train", BASELINE_KEY)


def _ppca_nll(train: np.ndarray, test: np.ndarray, n: int) -> np.ndarray:
    """``[m]`` test NLL (nats) of scikit-learn's probabilistic PCA with ``n`` components
    (``PCA(n).score_samples``)."""
    from sklearn.decomposition import PCA

    with one_blas_thread():
        return -PCA(n).fit(_flat(train)).score_samples(_flat(test))


def _gmm_nll(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, int]:
    """``([m] test NLL, components)`` of a full-covariance ``GaussianMixture`` whose component
    count (one of ``GMM_COMPONENTS``) is chosen on a validation split of ``train`` and refit on
    all of it."""
    from sklearn.mixture import GaussianMixture

    make = lambda k: GaussianMixture(
        k, covariance_type="full", reg_covar=GMM_REG_COVAR, random_state=0
    )
    gmm, components = select_on_validation(make, GMM_COMPONENTS, _flat(train))
    with one_blas_thread():
        return -gmm.score_samples(_flat(test)), components


def _classwise_ppca_nll(train, train_y, test, test_y, n: int) -> np.ndarray:
    r"""``[m]`` test :math:`-\log p(x \mid y)` of one PPCA per class (``n`` components)."""
    out = np.zeros(len(test))
    for c in np.unique(train_y):
        out[test_y == c] = _ppca_nll(train[train_y == c], test[test_y == c], n)
    return out


def class_accuracy(
    key: jax.Array, task: Task, params, dataset: Dataset, *, per_class: int = EVAL_PER_CLASS
) -> float:
    """Accuracy of :func:`genjax.classifier.fit_digits_classifier` at recovering the requested
    class of a CVAE task's samples, ``per_class`` per label.

    Derivation: derivations/06-conditional-vae.md
    """
    labels = np.repeat(np.arange(dataset.num_classes), per_class)  # [classes * per_class]
    images = task.model.sample(params, key, len(labels), labels=jnp.asarray(labels))
    return float(np.mean(fit_digits_classifier(dataset)(images) == labels))


# ----------------------------------------------------------------------------- evaluation


def _code_probes(setup: Setup, params, dataset: Dataset, key) -> dict[str, float]:
    """Linear-probe / kNN accuracy of the posterior means vs the raw pixels, noise stability."""
    train_x, test_x = _prepared_train(setup, dataset), _prepared_test(setup, dataset)
    ytr, yte = dataset.train["y"], dataset.test["y"]
    ctr, cte = setup.codes(params, train_x), setup.codes(params, test_x)
    encode = setup._jitted("encode", lambda p, x: V.bind(setup.model, p).encode(x)[0])
    with one_blas_thread():
        return {
            "linear_probe_code": probes.linear_probe_accuracy(ctr, ytr, cte, yte),
            "linear_probe_pixels": probes.linear_probe_accuracy(
                _flat(train_x), ytr, _flat(test_x), yte
            ),
            "knn_code": probes.knn_accuracy(ctr, ytr, cte, yte),
            "knn_pixels": probes.knn_accuracy(_flat(train_x), ytr, _flat(test_x), yte),
            "noise_stability": probes.noise_stability(
                key, lambda x: encode(params, x), jnp.asarray(test_x), NOISE_STD
            ),
        }


def _evaluate_likelihood(task: Task, params, dataset: Dataset, key) -> Report:
    """``vae_digits``: IS test NLL vs PPCA (same latent size) and a GMM, the ELBO, code probes;
    ``cvae_digits``: IS test -log p(x|y) vs one PPCA per class, the class of the samples."""
    setup = task.model
    k_nll, k_elbo, k_more = jax.random.split(fast_init_key(key), 3)
    train, test = _prepared_train(setup, dataset), _prepared_test(setup, dataset)
    y = dataset.test["y"] if setup.conditional else None
    nll = float(np.mean(setup.nll(params, k_nll, test, y)))
    n = setup.model.latent_dim
    bpd = lambda v: float(metrics.bits_per_dim(-v, setup.num_dims, setup.levels))
    k = setup.eval_samples
    if setup.conditional:
        ppca = float(np.mean(_classwise_ppca_nll(train, dataset.train["y"], test, y, n)))
        metric = f"test -log p(x|y), importance-sampled k={k} (nats/image)"
        baseline = f"one probabilistic PCA per class, {n} components"
        real = fit_digits_classifier(dataset)(dataset.test["x"]) == y
        more = {
            "sample_class_accuracy": class_accuracy(k_more, task, params, dataset),
            "classifier_accuracy_on_test": float(np.mean(real)),
        }
    else:
        ppca = float(np.mean(_ppca_nll(train, test, n)))
        metric = f"test NLL, importance-sampled k={k} (nats/image, dequantised)"
        baseline = f"probabilistic PCA, {n} components (sklearn PCA.score)"
        gmm, components = _gmm_nll(train, test)
        gmm = float(np.mean(gmm))
        more = {
            "gmm_nll": gmm,
            "gmm_bits_per_dim": bpd(gmm),
            "gmm_components": float(components),
            **_code_probes(setup, params, dataset, k_more),
        }
    return Report(
        metric=metric,
        value=nll,
        baseline=baseline,
        baseline_value=ppca,
        extra={
            "test_elbo": float(np.mean(setup.elbo(params, k_elbo, test, y))),
            "bits_per_dim": bpd(nll),
            "ppca_bits_per_dim": bpd(ppca),
            **more,
        },
    )


def _evaluate_anomaly(task: Task, params, dataset: Dataset, key) -> Report:
    """``vae_digits_anomaly``: AUROC of -IWAE (k) for the held-out class vs PPCA's -log p."""
    setup = task.model
    held = setup.holdout
    train, test = _prepared_train(setup, dataset), _prepared_test(setup, dataset)
    normal_train = train[dataset.train["y"] != held]
    is_anomaly = dataset.test["y"] == held
    score = setup.nll(params, key, test)
    ppca = _ppca_nll(normal_train, test, setup.model.latent_dim)
    pca_error = _pca_reconstruction_error(normal_train, test, setup.model.latent_dim)
    auc = lambda s: probes.auroc(s[~is_anomaly], s[is_anomaly])
    return Report(
        metric=f"AUROC, held-out digit {held} vs the rest, score -IWAE k={setup.eval_samples}",
        value=auc(score),
        baseline=f"PPCA ({setup.model.latent_dim} components) -log p(x), same training digits",
        baseline_value=auc(ppca),
        lower_is_better=False,
        extra={
            "pca_reconstruction_error_auroc": auc(pca_error),
            "test_nll_normal": float(np.mean(score[~is_anomaly])),
            "test_nll_held_out": float(np.mean(score[is_anomaly])),
        },
    )


def _pca_reconstruction_error(train, test, n: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    with one_blas_thread():
        pca = PCA(n).fit(_flat(train))
        recon = pca.inverse_transform(pca.transform(_flat(test)))
    return np.sum((recon - _flat(test)) ** 2, axis=1)


def _evaluate_binary(task: Task, params, dataset: Dataset, key) -> Report:
    """``convvae_*``: IS test NLL on fixed binarised test images vs independent pixels."""
    setup = task.model
    k_nll, k_elbo = jax.random.split(fast_init_key(key))
    test = _prepared_test(setup, dataset)
    nll = float(np.mean(setup.nll(params, k_nll, test)))
    p = np.clip(_flat(dataset.train["x"]).mean(0), 1e-4, 1 - 1e-4)  # E[binarised pixel]
    flat = _flat(test)
    independent = -np.mean(flat @ np.log(p) + (1 - flat) @ np.log1p(-p))
    return Report(
        metric=f"test NLL, importance-sampled k={setup.eval_samples} (nats/image, binarised)",
        value=nll,
        baseline="independent Bernoulli pixels (training means)",
        baseline_value=float(independent),
        extra={
            "test_elbo": float(np.mean(setup.elbo(params, k_elbo, test))),
            "bits_per_dim": float(metrics.bits_per_dim(-nll, setup.num_dims)),
        },
    )


# ----------------------------------------------------------------------------- figures


def _interpolation_strip(setup: Setup, params, dataset: Dataset, pairs: int = 4, steps: int = 10):
    """``[2 pairs steps, *event]`` decoder means along linear (first ``pairs`` rows) and
    spherical paths between the codes of pairs of test images of different classes (a CVAE
    decodes each path with the label of its first image: its code holds the style)."""
    test = _prepared_test(setup, dataset)
    y = dataset.test["y"]
    first = [int(np.argmax(y == c)) for c in range(2 * pairs)]  # one image of classes 0..7
    labels = y[first] if setup.conditional else None
    codes = setup.codes(params, test[first], labels)  # [2 pairs, d]
    rows = []
    for method in probes.INTERPOLATIONS:
        for i in range(pairs):
            path = probes.interpolate(
                jnp.asarray(codes[2 * i]), jnp.asarray(codes[2 * i + 1]), steps, method
            )  # [steps, d]
            lab = None if labels is None else jnp.full((steps,), labels[2 * i], jnp.int32)
            rows.append(setup.decode_mean(params, path, lab))
    return np.clip(np.concatenate(rows), 0.0, 1.0)


def _figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """A sample grid (rows = classes for a CVAE), the interpolation strip, a 2-D PCA view of
    the test codes, and the decoded latent grid when the latent space is 2-D."""
    setup = task.model
    name = dataset.name
    n_classes = dataset.num_classes
    labels = jnp.asarray(np.repeat(np.arange(n_classes), 10)) if setup.conditional else None
    samples = setup.sample(params, key, 10 * n_classes, labels=labels)
    title = "samples (decoder means" + (", row = requested class)" if setup.conditional else ")")
    paths = [viz.image_grid(samples, out_dir / f"{name}_samples.png", ncols=10, title=title)]
    paths.append(
        viz.image_grid(
            _interpolation_strip(setup, params, dataset),
            out_dir / f"{name}_interpolation.png",
            ncols=10,
            title="test-code interpolation: linear (top 4), slerp (bottom 4)",
        )
    )
    y = dataset.test["y"]
    codes = setup.codes(params, _prepared_test(setup, dataset), y if setup.conditional else None)
    view = np.asarray(probes.pca_2d(jnp.asarray(codes)))  # [n, 2]
    points = {f"digit {c}": view[y == c] for c in np.unique(y)}
    paths.append(viz.scatter_2d(points, out_dir / f"{name}_codes_pca.png"))
    if setup.model.latent_dim == 2 and not setup.conditional:
        grid = probes.latent_grid(lambda z: setup.decode_mean(params, z), 12)
        path = out_dir / f"{name}_manifold.png"
        title = "decoded latent grid at Gaussian quantiles"
        paths.append(viz.image_grid(np.asarray(grid), path, ncols=12, title=title))
    return paths


# ----------------------------------------------------------------------------- registry


def _config(quick: bool, *, steps=10_000, batch_size=64, warmup_steps=200) -> TrainConfig:
    if quick:
        return TrainConfig(
            steps=400, batch_size=64, lr=2e-3, warmup_steps=50, ema_decay=None, log_every=200
        )
    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=1e-3,
        warmup_steps=warmup_steps,
        ema_decay=0.999,
        log_every=500,
    )


_conv_config = functools.partial(_config, steps=20_000, batch_size=128, warmup_steps=500)

RECIPES: dict[str, Recipe] = {}
_OPTIONS = {  # the options of make_task beside the recipe's own defaults
    "likelihood": "gaussian",
    "preparation": "dequantize",
    "holdout": Option(None, 0, 9, int),
    "kl_warmup": Option(0, low=0),
    "beta": 1.0,
}


def _register(name, summary, evaluate, *, config=_config, figures=_figures, **options) -> None:
    """Register a recipe whose task is :func:`make_task` with the ``options`` that are not
    :class:`genjax.recipes.Recipe` fields (``data``, ``tour``, ``quick_tour``, ``tour_steps``)."""
    recipe_fields = ("data", "tour", "quick_tour", "tour_steps")
    fields = {k: options.pop(k) for k in recipe_fields if k in options}
    make = functools.partial(make_task, **options)
    fields["options"] = {**{k: v for k, v in options.items() if k != "kind"}, **_OPTIONS}
    recipe = Recipe(name, summary, make, config, evaluate, figures=figures, **fields)
    RECIPES[name] = register(recipe)


_register(
    "vae_digits",
    "Gaussian-decoder MLP VAE on dequantised digits: IS NLL vs PPCA and a GMM",
    _evaluate_likelihood,
    quick_tour=True,
    tour_steps=3000,
    kind="VAE",
    **DIGITS_DEFAULTS,
)
_register(
    "cvae_digits",
    "conditional VAE (learned prior p(z|y)) on digits: -log p(x|y) vs per-class PPCA",
    _evaluate_likelihood,
    kind="CVAE",
    learned_prior=True,
    **DIGITS_DEFAULTS,
)
_register(
    "vae_digits_anomaly",
    f"VAE trained without digit {HOLDOUT}: anomaly AUROC of -IWAE vs PPCA",
    _evaluate_anomaly,
    figures=None,
    kind="VAE",
    holdout=HOLDOUT,
    **DIGITS_DEFAULTS,
)
_register(
    "convvae_digits",
    "convolutional VAE, Bernoulli decoder, dynamically binarised digits",
    _evaluate_binary,
    config=_conv_config,
    tour=False,
    kind="ConvVAE",
    preparation="binarize",
    **CONV_DEFAULTS,
)
_register(
    "convvae_mnist",
    "convolutional VAE on dynamically binarised MNIST, k=5000 IS NLL (Burda et al.)",
    _evaluate_binary,
    config=_conv_config,
    data="mnist",
    tour=False,
    kind="ConvVAE",
    preparation="binarize",
    **{**CONV_DEFAULTS, "eval_samples": 5000},
)
