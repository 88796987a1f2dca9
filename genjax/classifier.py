"""Reference digits classifiers: one judges class-conditional samples, one supplies features.

* :func:`fit_digits_classifier`: families that generate a requested class (CVAE, conditional
  GAN, guided diffusion) report the accuracy of an independent classifier on their samples. This
  one is an RBF support-vector machine on raw pixels (scikit-learn), fitted on the training split
  only; it reaches about 99 % on the digits test split
  (``tests/test_classifier.py::test_digits_classifier_accuracy``).
* :class:`DigitsCNN` / :class:`CNNClassifier`: a small convolutional network with a global
  average pool, trained by the one loop (:func:`train_cnn_classifier`), saved in a run folder and
  loaded by path (:func:`load_cnn_classifier`). Its pooled features serve FID/KID, its softmax
  the Inception score, its ReLU maps LPIPS (:mod:`genjax.metrics`), and it is the network that
  :mod:`genjax.interpret` looks inside. :func:`digits_cnn` is the shared, cached instance.
* :func:`load_vgg_extractor`: a bigger extractor (VGG-16) whose weights the user has as a local
  ``.npz`` file (:func:`load_npz_params`); nothing is downloaded.

Derivation: derivations/14-metrics.md, derivations/15-interpretation.md
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from genjax import train
from genjax.data import Dataset, load_dataset
from genjax.nn.layers import Conv
from genjax.train import Task, TrainConfig

__all__ = [
    "CNNClassifier",
    "DigitsCNN",
    "LocalFeatureExtractor",
    "VGGFeatures",
    "classifier_task",
    "cnn_train_config",
    "digits_cnn",
    "fit_digits_classifier",
    "heatmap_overlays",
    "load_cnn_classifier",
    "load_npz_params",
    "load_vgg_extractor",
    "save_npz_params",
    "train_cnn_classifier",
]

_FITTED: dict[str, object] = {}


def _fitted(data: Dataset):
    from sklearn.svm import SVC

    if data.name not in _FITTED:
        x = data.train["x"].reshape(len(data.train["x"]), -1)
        _FITTED[data.name] = SVC(C=10.0, gamma="scale").fit(x, data.train["y"])
    return _FITTED[data.name]


def fit_digits_classifier(dataset: Dataset) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping images ``[N, H, W, C]`` in [0, 1] to predicted labels ``[N]`` int32.

    Fitted once per process on ``dataset``'s training split (cached by data-set name).

    Derivation: derivations/06-conditional-vae.md
    """
    model = _fitted(dataset)

    def predict(images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.shape[1:] != dataset.shape:
            raise ValueError(f"images must be [N, {dataset.shape}], got {images.shape}")
        return model.predict(images.reshape(len(images), -1)).astype(np.int32)

    return predict


# ----------------------------------------------------------------------------- digits CNN


class DigitsCNN(nn.Module):
    r"""Convolutions with ReLU, a global average pool and one linear layer.

    .. math:: A = \mathrm{ReLU}(\text{conv}_L \cdots \mathrm{ReLU}(\text{conv}_1 x)), \quad
              \bar a_k = \frac{1}{hw}\sum_{i,j} A_{ijk}, \quad y_c = \sum_k W_{kc}\,\bar a_k + b_c

    The pooled vector :math:`\bar a` is the feature vector of FID/KID, :math:`\mathrm{softmax}(y)`
    feeds the Inception score, the ReLU maps feed LPIPS, and the GAP + linear head makes CAM exact
    (``derivations/15-interpretation.md``). Convolutions are :class:`genjax.nn.layers.Conv`.

    Attributes:
      num_classes: output classes.
      widths: channels of each 3x3 convolution.
      strides: stride of each convolution (same length as ``widths``).

    Every method takes ``relu``, the activation applied after each convolution, so that
    :mod:`genjax.interpret` can swap in a ReLU with a modified backward rule.

    Derivation: derivations/14-metrics.md, derivations/15-interpretation.md
    """

    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    strides: tuple[int, ...] = (1, 2, 1)

    def setup(self):
        if len(self.widths) != len(self.strides):
            raise ValueError(f"widths {self.widths} and strides {self.strides} must match")
        self.convs = [Conv(w, 3, s, 1) for w, s in zip(self.widths, self.strides, strict=True)]
        self.dense = nn.Dense(self.num_classes)

    def layers(self, x: Array, relu: Callable = jax.nn.relu) -> list[Array]:
        """Every ReLU map ``[N, H_l, W_l, widths[l]]`` for images ``x [N, H, W, C]``."""
        maps = []
        for conv in self.convs:
            x = relu(conv(x))
            maps.append(x)
        return maps

    def features(self, x: Array, relu: Callable = jax.nn.relu) -> Array:
        """The last ReLU map :math:`A`, ``[N, h, w, K]``."""
        return self.layers(x, relu)[-1]

    def head(self, maps: Array) -> Array:
        """Logits ``[N, num_classes]`` from the last map: global average pool, then linear."""
        return self.dense(jnp.mean(maps, axis=(1, 2)))  # [N, K] -> [N, classes]

    def __call__(self, x: Array, relu: Callable = jax.nn.relu) -> Array:
        return self.head(self.features(x, relu))


class CNNClassifier(NamedTuple):
    """A trained :class:`DigitsCNN` and its parameters, with batched, jitted read-outs.

    Every method takes images ``[N, H, W, C]`` in [0, 1] and works in chunks of ``CHUNK``.

    Derivation: derivations/14-metrics.md
    """

    module: DigitsCNN
    params: Any
    shape: tuple[int, ...]

    def _run(self, method: str, x) -> Any:
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.shape):
            raise ValueError(
                f"images must be [N, {', '.join(map(str, self.shape))}], got {x.shape}"
            )
        fn = _jitted(self.module, method)
        outs = [fn(self.params, x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)]
        return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)

    def logits(self, x) -> np.ndarray:
        """``[N, num_classes]`` logits."""
        return self._run("__call__", x)

    def probs(self, x) -> np.ndarray:
        """``[N, num_classes]`` softmax probabilities (the Inception score's input)."""
        return np.asarray(jax.nn.softmax(self.logits(x), axis=-1))

    def predict(self, x) -> np.ndarray:
        """``[N]`` int32 predicted labels."""
        return np.argmax(self.logits(x), axis=-1).astype(np.int32)

    def features(self, x) -> np.ndarray:
        """``[N, widths[-1]]`` globally pooled penultimate features (FID, KID, precision/recall)."""
        return self._run("pooled", x)

    def layers(self, x) -> list[np.ndarray]:
        """The ReLU maps of every layer (LPIPS's ``layers_fn``)."""
        return self._run("layers", x)

    @property
    def apply_fn(self) -> Callable:
        """``apply_fn(params, x, relu=jax.nn.relu) -> logits``, pure, for
        :mod:`genjax.interpret` (one function object per module, so jit caches it)."""
        return _pure_fns(self.module)[0]

    @property
    def features_fn(self) -> Callable:
        """``features_fn(params, x, relu=...) -> A [N, h, w, K]``, the last ReLU map."""
        return _pure_fns(self.module)[1]

    @property
    def head_fn(self) -> Callable:
        """``head_fn(params, A) -> logits``: global average pool and the linear layer."""
        return _pure_fns(self.module)[2]

    def split_model(self):
        """This network as a :class:`genjax.interpret.SplitModel` (for CAM and Grad-CAM)."""
        from genjax.interpret import SplitModel

        return SplitModel(self.features_fn, self.head_fn)

    def cam_weights(self) -> np.ndarray:
        """``[K, num_classes]`` kernel :math:`W` of the linear head (CAM's class weights)."""
        return np.asarray(self.params["dense"]["kernel"])


CHUNK = 512  #: images per jitted call in :class:`CNNClassifier`


@functools.cache
def _pure_fns(module: DigitsCNN) -> tuple[Callable, Callable, Callable]:
    def apply_fn(params, x, relu: Callable = jax.nn.relu):
        return module.apply({"params": params}, x, relu)

    def features_fn(params, x, relu: Callable = jax.nn.relu):
        return module.apply({"params": params}, x, relu, method=DigitsCNN.features)

    def head_fn(params, maps):
        return module.apply({"params": params}, maps, method=DigitsCNN.head)

    return apply_fn, features_fn, head_fn


_JITTED: dict[tuple, Callable] = {}


def _jitted(module: DigitsCNN, method: str) -> Callable:
    key = (module, method)
    if key not in _JITTED:

        def run(params, x):
            variables = {"params": params}
            if method == "pooled":
                return jnp.mean(module.apply(variables, x, method=DigitsCNN.features), axis=(1, 2))
            if method == "__call__":
                return module.apply(variables, x)
            return module.apply(variables, x, method=getattr(DigitsCNN, method))

        _JITTED[key] = jax.jit(run)
    return _JITTED[key]


def classifier_task(module: DigitsCNN) -> Task:
    r"""The loop's :class:`genjax.train.Task` for ``module``: softmax cross-entropy
    :math:`-\log \mathrm{softmax}(y)_{\text{label}}`, with the batch accuracy as a metric.

    Derivation: derivations/14-metrics.md
    """

    def init(key, batch):
        return module.init(key, batch["x"])["params"]

    def loss(params, key, batch):
        logits = module.apply({"params": params}, batch["x"])  # [B, classes]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])  # [B]
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
        return jnp.mean(ce), {"accuracy": accuracy}

    return Task(init=init, loss=loss, model=module)


def cnn_train_config(steps: int = 1500, seed: int = 0) -> TrainConfig:
    """The digits CNN's budget: Adam 3e-3, batch 64, cosine decay, EMA 0.99.

    Derivation: derivations/14-metrics.md
    """
    return TrainConfig(
        steps=steps, batch_size=64, lr=3e-3, ema_decay=0.99, log_every=100, seed=seed
    )


def train_cnn_classifier(
    dataset: Dataset,
    *,
    steps: int = 1500,
    widths: tuple[int, ...] = (32, 64, 128),
    strides: tuple[int, ...] = (1, 2, 1),
    seed: int = 0,
    run_dir: str | Path | None = None,
) -> CNNClassifier:
    """Train a :class:`DigitsCNN` on ``dataset``'s training split with the one loop.

    Args:
      dataset: ``digits`` (default everywhere) or any labelled image set (e.g. ``mnist``).
      steps: optimiser updates.
      widths, strides: the architecture (see :class:`DigitsCNN`).
      seed: the run's seed.
      run_dir: when given, the loop writes ``config.json``, ``metrics.jsonl`` and an orbax
        checkpoint there, and :func:`load_cnn_classifier` reads it back.

    Returns:
      The :class:`CNNClassifier` with the EMA parameters.

    Derivation: derivations/14-metrics.md
    """
    module = DigitsCNN(dataset.num_classes, tuple(widths), tuple(strides))
    config = cnn_train_config(steps, seed)
    info = {
        "classifier": "DigitsCNN",
        "data": dataset.name,
        "num_classes": dataset.num_classes,
        "widths": list(widths),
        "strides": list(strides),
        "shape": list(dataset.shape),
    }
    state = train.fit(
        classifier_task(module),
        dataset.train,
        config,
        run_dir=run_dir,
        run_info=info,
        progress=False,
    )
    return CNNClassifier(module, state.ema_params, dataset.shape)


def load_cnn_classifier(run_dir: str | Path) -> CNNClassifier:
    """Load a classifier that :func:`train_cnn_classifier` saved in ``run_dir``.

    Derivation: derivations/14-metrics.md
    """
    from genjax.checkpoints import CheckpointManager

    config, info = train.read_config(run_dir)
    if info.get("classifier") != "DigitsCNN":
        raise ValueError(f"{run_dir} is not a DigitsCNN classifier run (config.json: {info})")
    module = DigitsCNN(info["num_classes"], tuple(info["widths"]), tuple(info["strides"]))
    shape = tuple(info["shape"])
    dummy = {
        "x": np.zeros((config.batch_size, *shape), np.float32),
        "y": np.zeros(config.batch_size, np.int32),
    }
    like, _ = train.init_state(classifier_task(module), config, dummy)
    manager = CheckpointManager(Path(run_dir) / "checkpoints")
    if manager.latest_step() is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to load")
    state = manager.restore_latest(like)
    return CNNClassifier(module, state.ema_params, shape)


def heatmap_overlays(net: CNNClassifier, dataset: Dataset, methods, path: str | Path) -> Path:
    """One test image per class of ``dataset`` with ``net``'s heat map by each of ``methods``
    (:data:`genjax.interpret.METHODS`) overlaid, titled with the true and predicted label, as
    one PNG at ``path`` (:func:`genjax.interpret.save_overlays`).

    Derivation: derivations/15-interpretation.md
    """
    from genjax import interpret

    x, y = dataset.test["x"], dataset.test["y"]
    first = [int(np.flatnonzero(y == c)[0]) for c in range(dataset.num_classes) if np.any(y == c)]
    images, labels = x[first], y[first]  # one test image per class
    predicted = net.predict(images)
    model = net.split_model()
    maps = {m: interpret.heatmap(m, model, net.params, images, labels) for m in methods}
    titles = [f"{t} (pred {p})" for t, p in zip(labels, predicted, strict=True)]
    return interpret.save_overlays(images, maps, Path(path), titles)


_CNNS: dict[tuple, CNNClassifier] = {}


def digits_cnn(dataset: Dataset | None = None, run_dir: str | Path | None = None) -> CNNClassifier:
    """The shared feature extractor of the metrics: a :class:`DigitsCNN` for ``dataset``
    (``digits`` by default), loaded from ``run_dir`` when that holds one, else trained (and saved
    there when ``run_dir`` is given); cached per process.

    Its test accuracy is checked in ``tests/test_classifier.py::test_digits_cnn_accuracy``.

    Derivation: derivations/14-metrics.md
    """
    dataset = dataset or load_dataset("digits")
    key = (dataset.name, str(run_dir))
    if key not in _CNNS:
        has_run = run_dir is not None and (Path(run_dir) / "config.json").is_file()
        _CNNS[key] = (
            load_cnn_classifier(run_dir)
            if has_run
            else train_cnn_classifier(dataset, run_dir=run_dir)
        )
    return _CNNS[key]


# ----------------------------------------------------------------------------- local weights

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
#: ImageNet channel means in BGR order, subtracted by Keras' VGG preprocessing ("caffe" mode)
VGG_BGR_MEAN = (103.939, 116.779, 123.68)


def save_npz_params(path: str | Path, params) -> Path:
    """Write a nested parameter dict as one ``.npz`` with ``"a/b/c"`` keys (no pickle).

    Derivation: derivations/14-metrics.md
    """
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in keys): np.asarray(v)
        for keys, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    path = Path(path)
    np.savez(path, **flat)
    return path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz")


def load_npz_params(path: str | Path) -> dict:
    """Read an ``.npz`` of ``"a/b/c"``-keyed arrays into a nested dict (``allow_pickle=False``).

    Derivation: derivations/14-metrics.md
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz archive: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, expected an .npz archive of arrays")
    tree: dict = {}
    with archive:
        for key in archive.files:
            *parents, leaf = key.split("/")
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = np.asarray(archive[key])
    return tree


class VGGFeatures(nn.Module):
    r"""A VGG convolution stack (3x3 convolutions and ReLU, 2x2 max-pool after each block)
    whose parameters are named as Keras' ``VGG16``: ``block{b}_conv{c}/{kernel,bias}`` with
    ``kernel [3, 3, C_in, C_out]``. Returns the ReLU map of every block's last convolution.

    Attributes:
      blocks: output channels of each convolution, block by block (``VGG16_BLOCKS``).

    Derivation: derivations/14-metrics.md
    """

    blocks: tuple[tuple[int, ...], ...] = VGG16_BLOCKS

    @nn.compact
    def __call__(self, x: Array) -> list[Array]:
        maps = []
        for b, widths in enumerate(self.blocks, start=1):
            for c, width in enumerate(widths, start=1):
                x = jax.nn.relu(Conv(width, 3, 1, 1, name=f"block{b}_conv{c}")(x))
            maps.append(x)
            n, h, w, ch = x.shape
            x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, ch).max((2, 4))
        return maps


class LocalFeatureExtractor(NamedTuple):
    """A pretrained network read from a local weights file, with the read-outs of
    :class:`CNNClassifier` that the metrics use: ``features`` (FID/KID) and ``layers`` (LPIPS).

    Images ``[N, H, W, 1 or 3]`` in [0, 1] are tiled to three channels, resized (bilinear) so
    that each side is at least ``min_size``, scaled to [0, 255], flipped to BGR and centred by
    ``VGG_BGR_MEAN`` (Keras' VGG preprocessing).

    Derivation: derivations/14-metrics.md
    """

    module: VGGFeatures
    params: Any
    min_size: int

    def _prepare(self, x) -> Array:
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"images must be [N, H, W, 1 or 3], got {x.shape}")
        if x.shape[-1] == 1:
            x = jnp.tile(x, (1, 1, 1, 3))  # [N, H, W, 3]
        h, w = x.shape[1:3]
        scale = max(1.0, self.min_size / min(h, w))
        if scale > 1.0:
            x = jax.image.resize(x, (x.shape[0], round(h * scale), round(w * scale), 3), "bilinear")
        bgr = 255.0 * x[..., ::-1]  # [N, H', W', 3]
        return bgr - jnp.asarray(VGG_BGR_MEAN, jnp.float32).reshape(1, 1, 1, 3)

    def layers(self, x) -> list[np.ndarray]:
        """The ReLU map at the end of every block."""
        maps = _jitted_vgg(self.module)(self.params, self._prepare(x))
        return [np.asarray(m) for m in maps]

    def features(self, x) -> np.ndarray:
        """``[N, C]`` global average of the last block's map."""
        return self.layers(x)[-1].mean(axis=(1, 2))


@functools.cache
def _jitted_vgg(module: VGGFeatures) -> Callable:
    return jax.jit(lambda params, x: module.apply({"params": params}, x))


def load_vgg_extractor(
    path: str | Path, blocks: tuple[tuple[int, ...], ...] = VGG16_BLOCKS
) -> LocalFeatureExtractor:
    """Load VGG weights from a local ``.npz`` (keys ``block{b}_conv{c}/kernel`` and ``/bias``,
    as Keras names them; convert a Keras ``.h5`` with ``h5py`` into this layout).

    Args:
      path: the ``.npz`` file (nothing is downloaded).
      blocks: the architecture the file holds (``VGG16_BLOCKS`` for VGG-16).

    Returns:
      A :class:`LocalFeatureExtractor`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a missing, unexpected or wrongly shaped array; the message names it.

    Derivation: derivations/14-metrics.md
    """
    module = VGGFeatures(tuple(tuple(b) for b in blocks))
    expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    loaded = load_npz_params(path)
    want = {
        f"{layer}/{name}": s.shape
        for layer, leaves in expected.items()
        for name, s in leaves.items()
    }
    have = {
        f"{layer}/{name}": np.shape(v)
        for layer, leaves in loaded.items()
        if isinstance(leaves, dict)
        for name, v in leaves.items()
    }
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(
            f"{path} lacks {missing[0]} (shape {want[missing[0]]}) and {len(missing) - 1} more"
        )
    extra = sorted(set(have) - set(want))
    if extra:
        raise ValueError(f"{path} holds {extra[0]}, which blocks={blocks} does not have")
    for key, shape in want.items():
        if have[key] != shape:
            raise ValueError(f"{path}: {key} must have shape {shape}, got {have[key]}")
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), loaded)
    return LocalFeatureExtractor(module, params, 2 ** len(blocks))
