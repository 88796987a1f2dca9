r"""VAE recipes: Gaussian-decoder VAE and CVAE on dequantised digits, ConvVAE on binarised digits.

* ``vae_digits``: MLP :class:`genjax.vae.VAE` with a Gaussian decoder (learned per-pixel
  variance) on the 8x8 digits dequantised to a density on :math:`[0, 1)^{64}`. Metric: the
  importance-sampled test NLL (:func:`genjax.vae.importance_sampled_nll`) in nats per image;
  baseline: scikit-learn's probabilistic PCA with as many components as the VAE has latent
  dimensions (``PCA(n).score_samples``), fit on dequantised training images and scored on the
  *same* dequantised test images. A full-covariance ``GaussianMixture`` (components chosen on a
  validation slice) is scored on them too. ``extra`` also holds bits per dimension, the test
  ELBO, and what the code is good for (:mod:`genjax.probes`): linear-probe and kNN accuracy of
  the posterior means vs of the raw pixels, and the codes' noise stability.
* ``cvae_digits``: :class:`genjax.vae.CVAE` (one-hot label in encoder and decoder, learned
  prior :math:`p(z \mid y)`). Metric: importance-sampled :math:`-\log p(x \mid y)`; baseline:
  one PPCA per class, :math:`-\log p_{\text{PPCA}_y}(x)`, same data and units. ``extra``: the
  accuracy of a digits classifier on class-conditional samples beside its accuracy on the real
  test images (the CVAE decodes to the requested class).
* ``vae_digits_anomaly``: the ``vae_digits`` model trained with one class held out
  (``holdout``, default 9; its training examples get weight zero). Metric: AUROC of the score
  :math:`-\mathcal L_k(x)` separating held-out test digits from the other test digits;
  baseline: the AUROC of PPCA's :math:`-\log p(x)` fit on the same training digits.
* ``convvae_digits`` and ``convvae_mnist``: :class:`genjax.vae.ConvVAE` with a Bernoulli
  decoder on dynamically binarised images (a fresh binarisation per step; the test images are
  binarised once, with a fixed key). Metric: importance-sampled test NLL in nats per image
  (MNIST: :math:`k` = 5000 as Burda et al.); baseline: independent Bernoulli pixels with the
  training means. Reference: Burda et al. report 86-87 nats for a 2-layer VAE on MNIST.

**Continuous-density convention.** A digit pixel holds one of :math:`L` = 17 values
:math:`k/(L-1)`; dequantisation maps it to :math:`y = (k + u)/L`, :math:`u \sim U[0, 1)`
(:func:`genjax.data.dequantize`). Every model and baseline is a density on :math:`y \in [0,
1)^D`, fit on dequantised training images and scored on the one fixed dequantised test set
(key ``EVAL_KEY``). NLL is :math:`-\log p(y)` in nats per image (negative values are densities
above 1 on the unit cube); bits per dimension is the discrete upper bound
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
from genjax import probes
from genjax import vae as V
from genjax.data import Dataset
from genjax.recipes import Recipe, Report, register
from genjax.train import Task, TrainConfig, standard_update

EVAL_KEY = 1234  # the fixed dequantisation/binarisation of the test images, shared by baselines
BASELINE_KEY = 4321  # the dequantisation of the training images the baselines are fit on
VALIDATION_FRACTION = 0.2  # of the training set, for the GMM's component count
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


def _threads_1():
    """One BLAS thread for scikit-learn: on a shared CPU a multi-threaded EM is 20x slower."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _fast_key(key: jax.Array) -> jax.Array:
    """An RngBitGenerator key with ``key``'s bits (a threefry key's two words, twice).

    XLA on CPU compiles every threefry draw (initialisers, dequantisation noise, the
    reparameterisation noise, importance samples) into a large hash kernel; compilation, not
    arithmetic, dominates a short run on the 8x8 digits. ``lax.rng_bit_generator`` compiles in a
    fraction of the time. The map is deterministic and injective, so runs stay reproducible;
    a key that is already an RngBitGenerator key is returned as is."""
    if jax.random.key_impl(key) != "threefry2x32":
        return key
    return jax.random.wrap_key_data(jnp.tile(jax.random.key_data(key), 2), impl="unsafe_rbg")


def bits_per_dim(nll: np.ndarray, num_dims: int, levels: int | None) -> np.ndarray:
    r"""Nats per image to bits per dimension: :math:`\mathrm{nll}/(D\ln 2) + \log_2 L` for data
    dequantised from :math:`L` levels (the discrete bound), :math:`\mathrm{nll}/(D\ln 2)` for
    binary data (``levels=None``)."""
    bpd = np.asarray(nll) / (num_dims * math.log(2.0))
    return bpd if levels is None else bpd + math.log2(levels)


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """What a VAE recipe's task, evaluation and figures share.

    Attributes:
      model: a :class:`genjax.vae.VAE`, ``ConvVAE`` or ``CVAE``.
      preparation: ``"dequantize"`` (density on [0, 1)) or ``"binarize"`` (dynamic
        binarisation, Bernoulli decoder).
      levels: pixel levels of the data set (dequantisation).
      eval_samples: :math:`k` of the importance-sampled NLL.
      holdout: a class whose training examples get weight zero, or ``None``.
      kl_warmup: steps of linear KL warm-up (0: none).
      beta: the KL weight :math:`\beta`.
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
        return jax.jit(self.model.init)(_fast_key(key), x, *extra)

    def terms(self, params, key, x, y, beta):
        bound = V.bind(self.model, params, y)
        return V.elbo(key, bound.encode, bound.log_likelihood, x, beta=beta, prior=bound.prior)

    def loss(self, params, key, batch, step=None):
        k_prep, k_elbo = jax.random.split(_fast_key(key))
        x = self.prepare(k_prep, batch["x"])
        beta = self.beta
        if self.kl_warmup and step is not None:
            beta = beta * V.kl_warmup(step, self.kl_warmup)
        t = self.terms(params, k_elbo, x, self._labels(batch), beta)
        # sum over pixels (inside the log-likelihood), mean over the (kept) examples
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
        return standard_update(loss, state, key, batch, tx, ema_decay)

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
        key = _fast_key(key)
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

    def sample(self, params, key, n: int, labels=None):
        if self.conditional and labels is None:
            labels = jnp.arange(n) % self.model.num_classes
        fn = lambda params, key, labels: V.sample(key, self.model, params, n, labels)
        images = self._jitted(f"sample_{n}", fn)(params, _fast_key(key), labels)
        return np.clip(np.asarray(images), 0.0, 1.0)


class _Sample:
    """``Task.sample``: ``(params, key, n) -> images``, carrying its :class:`Setup`."""

    def __init__(self, setup: Setup):
        self.setup = setup

    def __call__(self, params, key, n):
        return self.setup.sample(params, key, n)


def make_task(dataset: Dataset, options: Mapping[str, Any], *, kind: str, **defaults) -> Task:
    """The :class:`Task` of a VAE recipe. ``kind`` is ``"VAE"``, ``"CVAE"`` or ``"ConvVAE"``;
    ``options`` override ``defaults``: ``latent_dim``, ``hidden``, ``features`` (ConvVAE),
    ``likelihood`` (``gaussian``, ``bernoulli``, ``logistic``, ``categorical``),
    ``preparation``, ``eval_samples``, ``holdout``, ``kl_warmup``, ``beta``,
    ``learned_prior`` (CVAE)."""
    opts = {**defaults, **options}
    preparation = opts.pop("preparation", "dequantize")
    if preparation not in PREPARATIONS:
        raise ValueError(f"preparation must be one of {PREPARATIONS}, got {preparation!r}")
    if dataset.levels is None:
        raise ValueError(f"{dataset.name} is not an image data set; VAE recipes need images")
    kind_of_lik = opts.pop("likelihood", "gaussian" if preparation == "dequantize" else "bernoulli")
    likelihood = V.Likelihood(kind_of_lik, levels=dataset.levels)
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
    return Task(init=setup.init, loss=setup.loss, sample=_Sample(setup), update=setup.update)


def setup_of(task: Task) -> Setup:
    """The :class:`Setup` behind a task built by :func:`make_task`."""
    return task.sample.setup


# ----------------------------------------------------------------------------- data views


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(len(x), -1)  # [n, D]


def _prepared(setup: Setup, dataset: Dataset, split: str, seed: int) -> np.ndarray:
    cache_key = ("prepared", dataset.name, split)
    if cache_key not in setup._cache:
        key = _fast_key(jax.random.key(seed))
        x = jnp.asarray(getattr(dataset, split)["x"])
        setup._cache[cache_key] = np.asarray(setup.prepare(key, x))
    return setup._cache[cache_key]


def prepared_test(setup: Setup, dataset: Dataset) -> np.ndarray:
    """The one fixed prepared (dequantised or binarised) test set every model is scored on."""
    return _prepared(setup, dataset, "test", EVAL_KEY)


def prepared_train(setup: Setup, dataset: Dataset) -> np.ndarray:
    """The prepared training images the baselines are fit on (one fixed draw)."""
    return _prepared(setup, dataset, "train", BASELINE_KEY)


def ppca_nll(train: np.ndarray, test: np.ndarray, n: int) -> np.ndarray:
    """``[m]`` test NLL (nats) of scikit-learn's probabilistic PCA with ``n`` components."""
    from sklearn.decomposition import PCA

    with _threads_1():
        return -PCA(n).fit(_flat(train)).score_samples(_flat(test))


def gmm_nll(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, int]:
    """``([m] test NLL, components)`` of a full-covariance ``GaussianMixture`` whose component
    count is chosen on a validation slice of ``train`` and refit on all of it."""
    from sklearn.mixture import GaussianMixture

    x = _flat(train)
    order = np.random.default_rng(0).permutation(len(x))
    n_val = int(len(x) * VALIDATION_FRACTION)
    fit_x, val_x = x[order[n_val:]], x[order[:n_val]]
    gmm = lambda k: GaussianMixture(
        k, covariance_type="full", reg_covar=GMM_REG_COVAR, random_state=0
    )
    with _threads_1():
        best = max(GMM_COMPONENTS, key=lambda k: gmm(k).fit(fit_x).score(val_x))
        return -gmm(best).fit(x).score_samples(_flat(test)), best


def classwise_ppca_nll(train, train_y, test, test_y, n: int) -> np.ndarray:
    """``[m]`` test :math:`-\\log p(x \\mid y)` of one PPCA per class (``n`` components)."""
    out = np.zeros(len(test))
    for c in np.unique(train_y):
        out[test_y == c] = ppca_nll(train[train_y == c], test[test_y == c], n)
    return out


@functools.cache
def _svc(train_x: bytes, train_y: bytes, dim: int):
    from sklearn.svm import SVC

    x = np.frombuffer(train_x, np.float32).reshape(-1, dim)
    with _threads_1():
        return SVC(C=10.0, gamma="scale").fit(x, np.frombuffer(train_y, np.int32))


def digit_classifier(dataset: Dataset) -> Callable[[np.ndarray], np.ndarray]:
    """``images [n, H, W, C] -> labels [n]``: ``genjax.classifier.fit_digits_classifier`` when
    the package has it, else an RBF support-vector machine on the flattened training pixels."""
    try:
        from genjax.classifier import fit_digits_classifier
    except ImportError:
        x = np.ascontiguousarray(dataset.train["x"], np.float32).reshape(
            len(dataset.train["x"]), -1
        )
        y = np.ascontiguousarray(dataset.train["y"], np.int32)
        svc = _svc(x.tobytes(), y.tobytes(), x.shape[1])
        return lambda images: svc.predict(np.asarray(images, np.float32).reshape(len(images), -1))
    return fit_digits_classifier(dataset)


def class_accuracy(task: Task, params, dataset: Dataset, key, per_class: int = EVAL_PER_CLASS):
    """Accuracy of :func:`digit_classifier` on a CVAE's samples, ``per_class`` per label."""
    setup = setup_of(task)
    labels = np.repeat(np.arange(dataset.num_classes), per_class)  # [classes * per_class]
    images = setup.sample(params, key, len(labels), jnp.asarray(labels))
    return float(np.mean(digit_classifier(dataset)(images) == labels))


# ----------------------------------------------------------------------------- evaluation


def _code_probes(setup: Setup, params, dataset: Dataset, key) -> dict[str, float]:
    """Linear-probe / kNN accuracy of the posterior means vs the raw pixels, noise stability."""
    train_x, test_x = prepared_train(setup, dataset), prepared_test(setup, dataset)
    ytr, yte = dataset.train["y"], dataset.test["y"]
    ctr, cte = setup.codes(params, train_x), setup.codes(params, test_x)
    encode = setup._jitted("encode", lambda p, x: V.bind(setup.model, p).encode(x)[0])
    with _threads_1():
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


def evaluate_density(task: Task, params, dataset: Dataset, key) -> Report:
    """``vae_digits``: IS test NLL vs PPCA (same latent size) and a GMM; ELBO; code probes."""
    setup = setup_of(task)
    k_nll, k_elbo, k_probe = jax.random.split(_fast_key(key), 3)
    train, test = prepared_train(setup, dataset), prepared_test(setup, dataset)
    nll = float(np.mean(setup.nll(params, k_nll, test)))
    n = setup.model.latent_dim
    ppca = float(np.mean(ppca_nll(train, test, n)))
    gmm, components = gmm_nll(train, test)
    gmm = float(np.mean(gmm))
    bpd = lambda v: float(bits_per_dim(v, setup.num_dims, setup.levels))
    return Report(
        metric=f"test NLL, importance-sampled k={setup.eval_samples} (nats/image, dequantised)",
        value=nll,
        baseline=f"probabilistic PCA, {n} components (sklearn PCA.score)",
        baseline_value=ppca,
        extra={
            "test_elbo": float(np.mean(setup.elbo(params, k_elbo, test))),
            "bits_per_dim": bpd(nll),
            "ppca_bits_per_dim": bpd(ppca),
            "gmm_nll": gmm,
            "gmm_bits_per_dim": bpd(gmm),
            "gmm_components": float(components),
            **_code_probes(setup, params, dataset, k_probe),
        },
    )


def evaluate_conditional(task: Task, params, dataset: Dataset, key) -> Report:
    """``cvae_digits``: IS test -log p(x|y) vs one PPCA per class; accuracy of samples."""
    setup = setup_of(task)
    k_nll, k_elbo, k_acc = jax.random.split(_fast_key(key), 3)
    train, test = prepared_train(setup, dataset), prepared_test(setup, dataset)
    ytr, yte = dataset.train["y"], dataset.test["y"]
    nll = float(np.mean(setup.nll(params, k_nll, test, yte)))
    n = setup.model.latent_dim
    ppca = float(np.mean(classwise_ppca_nll(train, ytr, test, yte, n)))
    classify = digit_classifier(dataset)
    real = float(np.mean(classify(dataset.test["x"]) == yte))
    bpd = lambda v: float(bits_per_dim(v, setup.num_dims, setup.levels))
    return Report(
        metric=f"test -log p(x|y), importance-sampled k={setup.eval_samples} (nats/image)",
        value=nll,
        baseline=f"one probabilistic PCA per class, {n} components",
        baseline_value=ppca,
        extra={
            "test_elbo": float(np.mean(setup.elbo(params, k_elbo, test, yte))),
            "bits_per_dim": bpd(nll),
            "ppca_bits_per_dim": bpd(ppca),
            "sample_class_accuracy": class_accuracy(task, params, dataset, k_acc),
            "classifier_accuracy_on_test": real,
        },
    )


def evaluate_anomaly(task: Task, params, dataset: Dataset, key) -> Report:
    """``vae_digits_anomaly``: AUROC of -IWAE (k) for the held-out class vs PPCA's -log p."""
    setup = setup_of(task)
    held = setup.holdout
    train, test = prepared_train(setup, dataset), prepared_test(setup, dataset)
    normal_train = train[dataset.train["y"] != held]
    is_anomaly = dataset.test["y"] == held
    score = setup.nll(params, key, test)
    ppca = ppca_nll(normal_train, test, setup.model.latent_dim)
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

    with _threads_1():
        pca = PCA(n).fit(_flat(train))
        recon = pca.inverse_transform(pca.transform(_flat(test)))
    return np.sum((recon - _flat(test)) ** 2, axis=1)


def evaluate_binary(task: Task, params, dataset: Dataset, key) -> Report:
    """``convvae_*``: IS test NLL on fixed binarised test images vs independent pixels."""
    setup = setup_of(task)
    k_nll, k_elbo = jax.random.split(_fast_key(key))
    test = prepared_test(setup, dataset)
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
            "bits_per_dim": float(bits_per_dim(nll, setup.num_dims, None)),
        },
    )


# ----------------------------------------------------------------------------- figures


def _grid(images: np.ndarray, rows: int) -> np.ndarray:
    """``[rows (H + 1), cols (W + 1)]``: images row-major with a blank line between them."""
    images = np.pad(images, ((0, 0), (0, 1), (0, 1), (0, 0)))  # [n, H + 1, W + 1, C]
    n, h, w, c = images.shape
    cols = n // rows
    grid = images[: rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * h, cols * w, c)[..., 0]  # [rows (H + 1), cols (W + 1)]


def _save(images: np.ndarray, rows: int, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = _grid(images, rows)
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 16 + 0.3, grid.shape[0] / 16 + 0.5))
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def interpolation_strip(setup: Setup, params, dataset: Dataset, pairs: int = 4, steps: int = 10):
    """``[2 pairs steps, *event]`` decoder means along linear (first ``pairs`` rows) and
    spherical paths between the codes of pairs of test images of different classes (a CVAE
    decodes each path with the label of its first image)."""
    test = prepared_test(setup, dataset)
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
            # a CVAE decodes the whole path with the first image's label: its code holds style
            lab = None if labels is None else jnp.full((steps,), labels[2 * i], jnp.int32)
            rows.append(setup.decode_mean(params, path, lab))
    return np.clip(np.concatenate(rows), 0.0, 1.0)


def figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """A sample grid (rows = classes for a CVAE), the interpolation strip, and a 2-D view of
    the codes (PCA; the decoded latent grid when the latent space is 2-D)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = setup_of(task)
    name = dataset.name
    n_classes = dataset.num_classes
    labels = jnp.asarray(np.repeat(np.arange(n_classes), 10)) if setup.conditional else None
    samples = setup.sample(params, key, 10 * n_classes, labels)
    title = "samples (decoder means" + (", row = requested class)" if setup.conditional else ")")
    paths = [_save(samples, n_classes, out_dir / f"{name}_samples.png", title)]
    strip = interpolation_strip(setup, params, dataset)
    paths.append(
        _save(
            strip,
            8,
            out_dir / f"{name}_interpolation.png",
            "interpolation between test codes: linear (top 4), spherical (bottom 4)",
        )
    )
    test = prepared_test(setup, dataset)
    y = dataset.test["y"]
    codes = setup.codes(params, test, y if setup.conditional else None)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    view = np.asarray(probes.pca_2d(jnp.asarray(codes)))
    points = ax.scatter(view[:, 0], view[:, 1], c=y, cmap="tab10", s=6)
    fig.colorbar(points, ax=ax, label="digit")
    ax.set_title("test codes, first two principal axes", fontsize=9)
    fig.tight_layout()
    path = out_dir / f"{name}_codes_pca.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    if setup.model.latent_dim == 2 and not setup.conditional:
        grid = probes.latent_grid(lambda z: setup.decode_mean(params, z), 12)
        paths.append(
            _save(
                np.clip(np.asarray(grid), 0, 1),
                12,
                out_dir / f"{name}_manifold.png",
                "decoded latent grid at Gaussian quantiles",
            )
        )
    return paths


# ----------------------------------------------------------------------------- registry


def _config(quick: bool) -> TrainConfig:
    if quick:
        return TrainConfig(
            steps=400, batch_size=64, lr=2e-3, warmup_steps=50, ema_decay=None, log_every=200
        )
    return TrainConfig(
        steps=10_000, batch_size=64, lr=1e-3, warmup_steps=200, ema_decay=0.999, log_every=500
    )


def _conv_config(quick: bool) -> TrainConfig:
    if quick:
        return TrainConfig(
            steps=400, batch_size=64, lr=2e-3, warmup_steps=50, ema_decay=None, log_every=200
        )
    return TrainConfig(
        steps=20_000, batch_size=128, lr=1e-3, warmup_steps=500, ema_decay=0.999, log_every=500
    )


RECIPES: dict[str, Recipe] = {}


def _register(recipe: Recipe) -> None:
    RECIPES[recipe.name] = register(recipe)


_register(
    Recipe(
        name="vae_digits",
        summary="Gaussian-decoder MLP VAE on dequantised digits: IS NLL vs PPCA and a GMM",
        make_task=functools.partial(make_task, kind="VAE", **DIGITS_DEFAULTS),
        config=_config,
        evaluate=evaluate_density,
        figures=figures,
        quick_tour=True,
    )
)
_register(
    Recipe(
        name="cvae_digits",
        summary="conditional VAE (learned prior p(z|y)) on digits: -log p(x|y) vs per-class PPCA",
        make_task=functools.partial(make_task, kind="CVAE", learned_prior=True, **DIGITS_DEFAULTS),
        config=_config,
        evaluate=evaluate_conditional,
        figures=figures,
    )
)
_register(
    Recipe(
        name="vae_digits_anomaly",
        summary=f"VAE trained without digit {HOLDOUT}: anomaly AUROC of -IWAE vs PPCA",
        make_task=functools.partial(make_task, kind="VAE", holdout=HOLDOUT, **DIGITS_DEFAULTS),
        config=_config,
        evaluate=evaluate_anomaly,
    )
)
_register(
    Recipe(
        name="convvae_digits",
        summary="convolutional VAE, Bernoulli decoder, dynamically binarised digits",
        make_task=functools.partial(
            make_task, kind="ConvVAE", preparation="binarize", **CONV_DEFAULTS
        ),
        config=_conv_config,
        evaluate=evaluate_binary,
        figures=figures,
        tour=False,
    )
)
_register(
    Recipe(
        name="convvae_mnist",
        summary="convolutional VAE on dynamically binarised MNIST, k=5000 IS NLL (Burda et al.)",
        make_task=functools.partial(
            make_task,
            kind="ConvVAE",
            preparation="binarize",
            **{**CONV_DEFAULTS, "eval_samples": 5000},
        ),
        config=_conv_config,
        evaluate=evaluate_binary,
        figures=figures,
        data="mnist",
        tour=False,
    )
)
