r"""Data sets and batches.

Images come back NHWC float32 in :math:`[0, 1]`, labels int32. Three sources:

* ``digits``: scikit-learn's 8x8 handwritten digits (pixel values 0..16, so 17 levels), shipped
  inside its wheel; a fixed, seeded, stratified 80/20 train/test split. The default everywhere.
* ``mnist``, ``fashion_mnist``, ``cifar10``: ``tensorflow_datasets.data_source`` (array-record
  files, no TensorFlow needed), or, when ``data_dir`` holds them, the standard IDX files
  (``train-images-idx3-ubyte[.gz]`` ...; see :func:`read_idx`).
* toy sets with exact samplers and, where one exists, an exact log-density: ``two_moons``,
  ``eight_gaussians``, ``gaussian_grid``, ``checkerboard``, ``bimodal_1d``.
* text: ``pydoc_topics``, the English help topics shipped with CPython (``pydoc_data.topics``)
  as character ids, every fifth topic held out (:func:`load_text`).
* generated sets that a recipe's loss draws afresh at every step: ``patterns`` (the style
  recipe's images, :func:`genjax.style.pattern`) and ``digit_strings`` (the reversal recipe's
  sequences, :func:`digit_strings`); their splits are fixed samples of the same generator.
* image-to-image sets made from ``digits`` with an exact answer (:mod:`genjax._canvases`):
  segmentation canvases and label maps, Sobel edge maps, the hidden transform of the unpaired
  task, inpainting masks.
"""

from __future__ import annotations

import functools
import gzip
import math
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from genjax._canvases import (
    BACKGROUND,
    CANVAS_SIZE,
    STROKE_THRESHOLD,
    Canvases,
    edge_maps,
    segmentation_canvases,
    square_masks,
    thick_inverted,
    unpaired_split,
)

__all__ = [
    "BACKGROUND",
    "BUILT_IN_SETS",
    "CANVAS_SIZE",
    "DIGIT_STRING_BOS",
    "DIGIT_STRING_EOS",
    "DIGIT_STRING_LENGTH",
    "DIGIT_STRING_PAD",
    "GENERATED_SETS",
    "IMAGE_SETS",
    "STROKE_THRESHOLD",
    "TEXT_HELD_OUT_EVERY",
    "TEXT_SETS",
    "TOY_SETS",
    "Canvases",
    "Dataset",
    "Text",
    "batch_from_orders",
    "batch_indices",
    "batches",
    "bimodal_1d",
    "binarize",
    "check_data_dir",
    "checkerboard",
    "checkerboard_log_prob",
    "dequantize",
    "digit_strings",
    "dynamic_binarize",
    "edge_maps",
    "eight_gaussians",
    "epoch_orders",
    "gaussian_grid",
    "gaussian_mixture",
    "gaussian_mixture_log_prob",
    "grid_means",
    "load",
    "load_dataset",
    "load_idx_folder",
    "load_text",
    "num_examples",
    "read_idx",
    "ring_means",
    "segmentation_canvases",
    "square_masks",
    "thick_inverted",
    "two_moons",
    "unpaired_split",
]

IMAGE_SETS = ("digits", "mnist", "fashion_mnist", "cifar10")
TOY_SETS = ("two_moons", "eight_gaussians", "gaussian_grid", "checkerboard", "bimodal_1d")
TEXT_SETS = ("pydoc_topics",)
GENERATED_SETS = ("patterns", "digit_strings")
BUILT_IN_SETS = ("digits", *TOY_SETS, *TEXT_SETS, *GENERATED_SETS)  # read no files: no data_dir
SPLITS = ("train", "test")
DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2
TOY_SIZES = {"train": 20_000, "test": 5_000}


class Dataset(NamedTuple):
    """Both splits of a data set, as the loop and the recipes use them.

    Attributes:
      name: the data set's name.
      train: ``{"x": [N, ...] float32, "y": [N] int32}``.
      test: the same for the test split.
      num_classes: number of label values.
      levels: number of discrete values per pixel (17 for digits, 256 for 8-bit images),
        ``None`` for continuous data.
      alphabet: for text, the sorted characters (``x`` holds indices into it; no ``y``);
        ``None`` otherwise.
    """

    name: str
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    num_classes: int
    levels: int | None
    alphabet: str | None = None

    def text(self, split: str = "train") -> str:
        """The characters of ``split`` of a text set, decoded from the ids in ``x``."""
        if self.alphabet is None:
            raise ValueError(f"{self.name!r} is not a text data set")
        return "".join(np.asarray(list(self.alphabet))[getattr(self, split)["x"]])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(8, 8, 1)`` or ``(2,)``."""
        return tuple(self.train["x"].shape[1:])


def load(name: str, split: str = "train", data_dir: str | Path | None = None):
    """Load one split of a data set as numpy arrays.

    Args:
      name: one of ``IMAGE_SETS``, ``TOY_SETS``, ``TEXT_SETS`` or ``GENERATED_SETS``.
      split: ``"train"`` or ``"test"``.
      data_dir: for the image sets other than ``digits`` (the sets read from files): a
        folder of IDX files, or a tensorflow-datasets data directory. ``None`` uses tfds's
        default directory; given for any other set, it is an error.

    Returns:
      ``(x, y)``: images ``[N, H, W, C]`` float32 in [0, 1] (toy sets: points ``[N, d]``) and
      labels ``[N]`` int32; text: character ids ``[N]`` int32 and ``None``; ``patterns``:
      the images ``[4, 48, 48, 3]`` and their index in :data:`genjax.style.PATTERNS`;
      ``digit_strings``: padded strings ``[N, 8]`` and their lengths ``[N]``.

    Raises:
      ValueError: unknown name or split (the message lists the known ones), a corrupt file, or
        ``data_dir`` given for a set that reads no files.
      FileNotFoundError: ``data_dir`` does not exist or lacks the files for ``split``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_data_dir(name, data_dir)
    if name == "digits":
        return _digits(split)
    if name in TEXT_SETS:
        return load_text(name).ids(split), None
    if name == "patterns":
        return _patterns()
    if name == "digit_strings":
        src, lengths, _, _ = digit_strings(
            jax.random.key(SPLITS.index(split) + 1), TOY_SIZES[split], DIGIT_STRING_LENGTH
        )
        return np.asarray(src, np.int32), np.asarray(lengths, np.int32)
    if name in TOY_SETS:
        key = jax.random.key(SPLITS.index(split) + 1)
        x, y = TOY_SAMPLERS[name](key, TOY_SIZES[split])
        return np.asarray(x), np.asarray(y)
    if name in IMAGE_SETS:
        if data_dir is not None and _has_idx(Path(data_dir)):
            return load_idx_folder(data_dir, split)
        if data_dir is not None and not Path(data_dir).is_dir():
            raise FileNotFoundError(f"data_dir {str(data_dir)!r} is not a folder")
        return _tfds(name, split, data_dir)
    known = IMAGE_SETS + TOY_SETS + TEXT_SETS + GENERATED_SETS
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(known)}")


def check_data_dir(name: str, data_dir: str | Path | None) -> None:
    """A ``data_dir`` given for a set of ``BUILT_IN_SETS`` (which read no files) is an error."""
    if data_dir is not None and name in BUILT_IN_SETS:
        raise ValueError(
            f"data_dir {str(data_dir)!r}: data set {name!r} is built in, reads no files"
        )


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Both splits of ``name`` as a :class:`Dataset` (see :func:`load`)."""
    (xtr, ytr), (xte, yte) = (load(name, s, data_dir) for s in SPLITS)
    if name in TEXT_SETS:
        alphabet = load_text(name).alphabet
        return Dataset(name, {"x": xtr}, {"x": xte}, len(alphabet), None, alphabet)
    continuous = name in TOY_SETS or name in GENERATED_SETS
    levels = {"digits": 17}.get(name, None if continuous else 256)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    return Dataset(name, {"x": xtr, "y": ytr}, {"x": xte, "y": yte}, num_classes, levels)


def _digits(split: str):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # [1797, 8, 8, 1]
    y = digits.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SEED, stratify=y
    )
    return (xtr, ytr) if split == "train" else (xte, yte)


# ----------------------------------------------------------------------------- IDX files

_IDX_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a numpy array.

    The format (LeCun et al., MNIST): two zero bytes, a type byte (0x08 = uint8 ...), a byte with
    the number of dimensions ``n``, ``n`` big-endian uint32 sizes, then the data in C order.

    Raises:
      ValueError: a ``.gz`` file that is not gzip or is cut short, a wrong magic number, an
        unknown type, or a file shorter or longer than its header says; the message names the
        file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:  # not gzip, cut short, or corrupt
            raise ValueError(f"{path}: not a readable gzip file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; expected "
            "00 00 <type> <ndim>)"
        )
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: corrupt IDX file, header promises shape {shape} ({expected} bytes) but the "
            f"file has {len(raw)} bytes"
        )
    return np.frombuffer(raw[header:], dtype=dtype).reshape(shape)


def _find_idx(folder: Path, split: str, kind: str) -> Path | None:
    stem = f"{_IDX_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_idx(folder: Path) -> bool:
    return folder.is_dir() and any(
        _find_idx(folder, s, k) for s in SPLITS for k in ("images", "labels")
    )


def load_idx_folder(data_dir: str | Path, split: str = "train"):
    """Images and labels of ``split`` from a folder of standard MNIST-style IDX files.

    Returns:
      ``(x [N, H, W, 1] float32 in [0, 1], y [N] int32)``.
    """
    folder = Path(data_dir)
    paths = {k: _find_idx(folder, split, k) for k in ("images", "labels")}
    missing = [k for k, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"{folder}: no {split} {' or '.join(missing)} IDX file (expected "
            f"{_IDX_PREFIX[split]}-images-idx3-ubyte[.gz] and "
            f"{_IDX_PREFIX[split]}-labels-idx1-ubyte[.gz])"
        )
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{folder}: IDX images must be [N, H, W] and labels [N] with the same N, got "
            f"{images.shape} and {labels.shape}"
        )
    return (images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int32)


def _tfds(name: str, split: str, data_dir):
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as err:  # tfds raises several kinds of error for a missing set
        raise FileNotFoundError(
            f"{name} is not prepared for tensorflow-datasets in {data_dir or 'the default dir'} "
            f"({type(err).__name__}: {err}). Prepare it with `tfds build {name}` on a machine "
            "with network, or pass data_dir= a folder of IDX files"
        ) from err
    records = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(r["image"]) for r in records])
    labels = np.asarray([r["label"] for r in records], dtype=np.int32)
    if images.ndim == 3:
        images = images[..., None]
    return images.astype(np.float32) / 255.0, labels


# ----------------------------------------------------------------------------- text

TEXT_HELD_OUT_EVERY = 5  # every 5th topic (sorted by name) is test text


class Text(NamedTuple):
    """A character corpus and its fixed split.

    Attributes:
      alphabet: the sorted characters of the whole corpus; a character's id is its index.
      train: the training text.
      test: the held-out text.
    """

    alphabet: str
    train: str
    test: str

    def ids(self, split: str = "train") -> np.ndarray:
        """``[N]`` int32 ids of ``split``'s characters."""
        index = {c: i for i, c in enumerate(self.alphabet)}
        return np.array([index[c] for c in getattr(self, split)], np.int32)


@functools.cache
def load_text(name: str = "pydoc_topics") -> Text:
    """A text data set: ``pydoc_topics`` is CPython's help topics (``pydoc_data.topics``, 79
    topics, ~465k characters) in sorted key order, joined with blank lines; every fifth topic
    (indices 4, 9, 14, ...) is the test text. The alphabet is the sorted set of characters of
    the whole corpus, so test characters never fall outside it."""
    if name not in TEXT_SETS:
        raise ValueError(f"unknown text data set {name!r}; known: {', '.join(TEXT_SETS)}")
    from pydoc_data.topics import topics

    texts = [topics[key] for key in sorted(topics)]
    held = [i % TEXT_HELD_OUT_EVERY == TEXT_HELD_OUT_EVERY - 1 for i in range(len(texts))]
    alphabet = "".join(sorted(set("".join(texts))))
    train = "\n\n".join(t for t, h in zip(texts, held, strict=True) if not h)
    test = "\n\n".join(t for t, h in zip(texts, held, strict=True) if h)
    return Text(alphabet, train, test)


# ----------------------------------------------------------------------------- generated sets

DIGIT_STRING_LENGTH = 8  # longest string of the ``digit_strings`` data set
DIGIT_STRING_PAD, DIGIT_STRING_BOS, DIGIT_STRING_EOS = 10, 11, 12  # after the digits 0..9


def digit_strings(key, n: int, max_len: int, min_len: int = 1):
    """``n`` random digit strings of lengths uniform in ``[min_len, max_len]``, with their
    reversals as a decoder's input and target.

    Returns ``(src [n, max_len] padded with PAD, lengths [n], tgt_in [n, max_len + 1],
    tgt_out [n, max_len + 1])``: ``tgt_in`` = BOS + reversed digits, ``tgt_out`` = reversed
    digits + EOS (both padded with PAD), with PAD, BOS, EOS = 10, 11, 12.
    """
    pad, bos, eos = DIGIT_STRING_PAD, DIGIT_STRING_BOS, DIGIT_STRING_EOS
    k_len, k_dig = jax.random.split(key)
    lengths = jax.random.randint(k_len, (n,), min_len, max_len + 1)  # [n]
    digits = jax.random.randint(k_dig, (n, max_len), 0, 10)  # [n, max_len]
    pos = jnp.arange(max_len)[None, :]  # [1, max_len]
    src = jnp.where(pos < lengths[:, None], digits, pad)  # [n, max_len]
    # reversed: position i holds src[len - 1 - i]
    rev_idx = jnp.clip(lengths[:, None] - 1 - pos, 0, max_len - 1)  # [n, max_len]
    rev = jnp.where(pos < lengths[:, None], jnp.take_along_axis(digits, rev_idx, 1), pad)
    pad_col = jnp.full((n, 1), pad)
    out_pos = jnp.arange(max_len + 1)[None, :]  # [1, max_len + 1]
    tgt_out = jnp.where(
        out_pos == lengths[:, None], eos, jnp.concatenate([rev, pad_col], 1)
    )  # [n, max_len + 1]
    tgt_in = jnp.concatenate([jnp.full((n, 1), bos), rev], 1)  # [n, max_len + 1]
    return src, lengths, tgt_in, tgt_out


def _patterns():
    from genjax.style import PATTERNS, pattern

    images = np.concatenate([pattern(name) for name in PATTERNS])  # [4, 48, 48, 3]
    return images.astype(np.float32), np.arange(len(PATTERNS), dtype=np.int32)


# ----------------------------------------------------------------------------- toy sets


def gaussian_mixture(key, n: int, means, std: float):
    r"""``n`` draws from the equal-weight isotropic mixture :math:`\frac1K\sum_k N(\mu_k, s^2 I)`.

    Args:
      key: PRNG key.
      n: number of samples.
      means: ``[K, d]`` component means :math:`\mu_k`.
      std: component standard deviation :math:`s`.

    Returns:
      ``(x [n, d] float32, y [n] int32)``: samples and the component each came from.
    """
    means = jnp.asarray(means, jnp.float32)
    k_comp, k_noise = jax.random.split(key)
    y = jax.random.randint(k_comp, (n,), 0, means.shape[0])
    x = means[y] + std * jax.random.normal(k_noise, (n, means.shape[1]))
    return x, y.astype(jnp.int32)


def gaussian_mixture_log_prob(x, means, std: float):
    r"""Exact :math:`\log \frac1K\sum_k N(x; \mu_k, s^2 I)` for ``x [..., d]``, via logsumexp."""
    means = jnp.asarray(means, jnp.float32)
    num_modes, d = means.shape
    means = jnp.reshape(means, (1,) * (x.ndim - 1) + means.shape)  # [1.., K, d]
    sq = jnp.sum((x[..., None, :] - means) ** 2, axis=-1)  # [..., K]
    log_norm = -0.5 * d * jnp.log(2 * jnp.pi * std**2)
    return jax.nn.logsumexp(-0.5 * sq / std**2, axis=-1) + log_norm - jnp.log(num_modes)


def ring_means(num_modes: int = 8, radius: float = 2.0) -> np.ndarray:
    """``[num_modes, 2]`` means evenly spaced on a circle of ``radius``."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def grid_means(size: int = 5, spacing: float = 2.0) -> np.ndarray:
    """``[size**2, 2]`` means on a centred ``size`` x ``size`` grid with ``spacing``."""
    ticks = spacing * (np.arange(size) - (size - 1) / 2)
    gx, gy = np.meshgrid(ticks, ticks, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def eight_gaussians(key, n: int, radius: float = 2.0, std: float = 0.02):
    """Eight Gaussians on a ring (Metz et al. 2017, *Unrolled GANs*).

    See :func:`gaussian_mixture`; exact density by :func:`gaussian_mixture_log_prob`.
    """
    return gaussian_mixture(key, n, ring_means(8, radius), std)


def gaussian_grid(key, n: int, size: int = 5, spacing: float = 2.0, std: float = 0.02):
    """The 5x5 grid of 25 Gaussians (Srivastava et al. 2017, *VEEGAN*)."""
    return gaussian_mixture(key, n, grid_means(size, spacing), std)


def two_moons(key, n: int, noise: float = 0.05):
    """Two interleaving half circles (as scikit-learn's ``make_moons``) plus Gaussian noise.

    No closed-form density (the noise convolves a curve). Returns ``(x [n, 2], moon [n])``.
    """
    k_moon, k_t, k_noise = jax.random.split(key, 3)
    y = jax.random.bernoulli(k_moon, 0.5, (n,)).astype(jnp.int32)
    t = jnp.pi * jax.random.uniform(k_t, (n,))
    upper = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1)
    lower = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=1)
    x = jnp.where(y[:, None] == 0, upper, lower)
    return x + noise * jax.random.normal(k_noise, (n, 2)), y


def checkerboard(key, n: int):
    r"""Uniform on the 8 dark cells of a 4x4 board covering :math:`[-2, 2]^2`.

    Cell :math:`(i, j)` (lower-left corner :math:`(i-2, j-2)`) is dark when :math:`i + j` is even.
    Returns ``(x [n, 2], cell [n])``; the density is 1/8 on dark cells
    (:func:`checkerboard_log_prob`).
    """
    cells = jnp.asarray([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
    k_cell, k_u = jax.random.split(key)
    y = jax.random.randint(k_cell, (n,), 0, 8)
    x = cells[y] - 2.0 + jax.random.uniform(k_u, (n, 2))
    return x.astype(jnp.float32), y.astype(jnp.int32)


def checkerboard_log_prob(x):
    """Exact log-density of :func:`checkerboard`: ``log(1/8)`` on dark cells, ``-inf`` elsewhere."""
    cell = jnp.floor(x + 2.0)  # [..., 2] cell indices
    inside = jnp.all((cell >= 0) & (cell <= 3), axis=-1)
    dark = jnp.sum(cell, axis=-1) % 2 == 0
    return jnp.where(inside & dark, -jnp.log(8.0), -jnp.inf)


BIMODAL_MEANS = ((-2.0,), (2.0,))
BIMODAL_STD = 0.5


def bimodal_1d(key, n: int):
    """Equal mixture of N(-2, 0.5²) and N(2, 0.5²) in 1-D. Returns ``(x [n, 1], mode [n])``."""
    return gaussian_mixture(key, n, BIMODAL_MEANS, BIMODAL_STD)


TOY_SAMPLERS: dict[str, Callable] = {
    "two_moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "gaussian_grid": gaussian_grid,
    "checkerboard": checkerboard,
    "bimodal_1d": bimodal_1d,
}


# ----------------------------------------------------------------------------- batches


def num_examples(arrays: Mapping[str, np.ndarray]) -> int:
    """The common leading length of ``arrays``; a mismatch is a ``ValueError``."""
    if not arrays:
        raise ValueError("arrays must hold at least one array")
    lengths = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays must share their leading (example) axis, got lengths {lengths}")
    return next(iter(lengths.values()))


def batch_indices(key, step, n: int, batch_size: int):
    r"""Indices of the examples in batch number ``step`` of a shuffled, drop-remainder stream.

    With :math:`B = \lfloor n / b \rfloor` batches per epoch, step :math:`t` is batch
    :math:`t \bmod B` of epoch :math:`e = \lfloor t / B \rfloor`, whose order is
    ``permutation(fold_in(key, e), n)``. Every example appears at most once per epoch, and all
    but the ``n mod b`` dropped ones exactly once. Works under ``jit`` with a traced ``step``.

    Returns:
      ``[batch_size]`` int32 indices.
    """
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size ({batch_size}) exceeds the number of examples ({n})")
    epoch = step // per_epoch
    return batch_from_orders(epoch_orders(key, epoch, 1, n), epoch, step, batch_size)


def epoch_orders(key, first_epoch, num_epochs: int, n: int):
    """The shuffled orders of epochs ``first_epoch, ..., first_epoch + num_epochs - 1``.

    Epoch :math:`e`'s order is ``permutation(fold_in(key, e), n)``, as in :func:`batch_indices`.
    The training loop draws the orders a whole scan chunk needs once, before the scan, rather
    than one permutation of all ``n`` examples per step.

    Returns:
      ``[num_epochs, n]`` int32 indices.
    """
    epochs = first_epoch + jnp.arange(num_epochs)
    return jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))(epochs)


def batch_from_orders(orders, first_epoch, step, batch_size: int):
    """Batch ``step``'s indices (as :func:`batch_indices`) from :func:`epoch_orders` output.

    ``orders`` must hold the order of the epoch that ``step`` falls in, i.e. row
    ``step // (n // batch_size) - first_epoch``.
    """
    per_epoch = orders.shape[1] // batch_size
    row = orders[step // per_epoch - first_epoch]
    return jax.lax.dynamic_slice(row, ((step % per_epoch) * batch_size,), (batch_size,))


def batches(
    key, arrays: Mapping[str, np.ndarray], batch_size: int, num_epochs: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Shuffled, drop-remainder batches of ``arrays`` for ``num_epochs`` epochs.

    The same order as the training loop uses (:func:`batch_indices`), as host-side numpy.
    """
    n = num_examples(arrays)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    indices = jax.jit(batch_indices, static_argnums=(2, 3))
    for step in range(num_epochs * (n // batch_size) if n >= batch_size else 1):
        idx = np.asarray(indices(key, step, n, batch_size))
        yield {k: v[idx] for k, v in arrays.items()}


# ----------------------------------------------------------------------------- pixels


def binarize(x, threshold: float = 0.5):
    """Static binarisation: ``1`` where ``x > threshold``, else ``0`` (same dtype as ``x``)."""
    return (x > threshold).astype(x.dtype)


def dynamic_binarize(key, x):
    r"""Dynamic binarisation: :math:`b \sim \mathrm{Bernoulli}(x)` elementwise, fresh per draw.

    References:
      Salakhutdinov & Murray, *On the quantitative analysis of deep belief networks*, 2008.
    """
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
        raise TypeError("x must hold probabilities in [0, 1] as floats")
    return jax.random.bernoulli(key, x).astype(x.dtype)


def dequantize(key, x, levels: int, *, noise=None):
    r"""Uniform dequantisation of pixels with ``levels`` discrete values in :math:`[0, 1]`.

    .. math:: y = \frac{k + u}{L}, \qquad k = \mathrm{round}\big((L-1)\,x\big),\quad
       u \sim U[0, 1)

    with :math:`L` = ``levels`` and :math:`u` = ``noise``, so :math:`y \in [0, 1)` and every
    discrete value owns a cell of side :math:`1/L`. A density :math:`p(y)` on the unit cube then
    bounds the discrete likelihood, :math:`\log P(k) \ge E_u[\log p(y)] - D \log L`
    (:func:`genjax.metrics.bits_per_dim`); without the noise a density could pile infinite mass
    on the grid.

    Args:
      key: PRNG key (ignored when ``noise`` is given).
      x: ``[*shape]`` pixels on the grid ``k / (levels - 1)``.
      levels: :math:`L`, an int >= 2 (17 for digits, 256 for 8-bit images).
      noise: optional ``[*shape]`` :math:`u` in :math:`[0, 1)` replacing the draw.

    Returns:
      ``[*shape]`` float32 in ``[0, 1)``.

    References:
      Theis et al., *A note on the evaluation of generative models*, 2016,
      https://arxiv.org/abs/1511.01844

    Derivation: derivations/10-realnvp.md
    """
    from genjax._checks import same_shape

    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    if noise is None:
        noise = jax.random.uniform(key, jnp.shape(x))
    same_shape(x=x, noise=noise)
    k = jnp.round(x * (levels - 1))
    return (k + noise) / levels
