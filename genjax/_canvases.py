r"""Image-to-image data made from ``digits``, each with an exact answer.

* :func:`segmentation_canvases`: two or three digits at random non-overlapping positions on a
  larger canvas with dim background clutter; the label map holds ``class + 1`` where a digit's
  stroke is (its intensity at least :data:`STROKE_THRESHOLD`) and :data:`BACKGROUND` elsewhere.
  The same canvases serve pix2pix's "labels to photo" (label map in, canvas out).
* :func:`edge_maps`: the Sobel gradient magnitude of each digit (edges → digit).
* :func:`thick_inverted`: the hidden transform :math:`T` of the unpaired task (strokes thickened
  by a cross-shaped dilation, then contrast inverted); :func:`unpaired_split` draws domain A and
  domain B :math:`= T(\cdot)` from disjoint halves.
* :func:`square_masks`: the holes of inpainting, centred or at random positions.

Every generator is deterministic in its key; images are NHWC float32 in [0, 1].

Derivation: derivations/19-dense-prediction.md
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

__all__ = [
    "BACKGROUND",
    "CANVAS_SIZE",
    "STROKE_THRESHOLD",
    "Canvases",
    "edge_maps",
    "segmentation_canvases",
    "square_masks",
    "thick_inverted",
    "unpaired_split",
]

BACKGROUND = 0  #: label of the background; digit ``c`` is labelled ``c + 1``
CANVAS_SIZE = 24  #: side of a segmentation canvas (three 8x8 digits fit without overlap)
STROKE_THRESHOLD = 0.5  #: a digit pixel at least this bright is stroke (labelled)
CLUTTER_RANGE = (0.15, 0.4)  #: intensities of the clutter strokes (below the threshold)
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))  # clutter segments: -, |, \, /
_CROSS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # the dilation of thick_inverted


def _rng(key: jax.Array) -> np.random.Generator:
    """A numpy generator seeded by the key's bits (deterministic in ``key``)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _check_images(images, name: str = "images") -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"{name} must have shape [N, H, W, 1], got {images.shape}")
    return images


class Canvases(NamedTuple):
    """Segmentation canvases and their exact answers.

    Attributes:
      images: ``[N, S, S, 1]`` float32 canvases in [0, 1].
      labels: ``[N, S, S]`` int32 label maps: :data:`BACKGROUND` or digit class + 1.
      boxes: ``[N, 3, 2]`` int32 top-left corner (row, column) of each digit, ``-1`` where a
        canvas has only two digits.
      classes: ``[N, 3]`` int32 class of each digit, ``-1`` where absent.
      sources: ``[N, 3]`` int32 index of each digit in the images it was drawn from, ``-1``
        where absent.

    Derivation: derivations/19-dense-prediction.md
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    sources: np.ndarray


def _positions(rng: np.random.Generator, count: int, size: int, side: int) -> list[tuple]:
    """``count`` top-left corners of ``side``-square boxes that do not overlap in a canvas of
    ``size`` (rejection sampling, restarted when a placement leaves no room)."""
    while True:
        placed: list[tuple[int, int]] = []
        for _ in range(50 * count):
            r, c = (int(v) for v in rng.integers(0, size - side + 1, 2))
            if all(abs(r - r2) >= side or abs(c - c2) >= side for r2, c2 in placed):
                placed.append((r, c))
                if len(placed) == count:
                    return placed


def segmentation_canvases(
    key: jax.Array,
    images,
    labels,
    n: int,
    *,
    size: int = CANVAS_SIZE,
    max_digits: int = 3,
    clutter: int = 4,
) -> Canvases:
    r"""``n`` canvases of two to ``max_digits`` digits with clutter, and their label maps.

    Each canvas draws a digit count in :math:`\{2, \dots, \text{max\_digits}\}`, that many
    digits (with replacement) from ``images``, non-overlapping positions, and ``clutter``
    straight segments of length 2-4 with intensity in :data:`CLUTTER_RANGE`. Pixel values are
    :math:`\max(\text{digits}, \text{clutter})`; the label is

    .. math:: \ell(u) = \begin{cases} c_k + 1 & x_k(u) \ge \tau \\ 0 & \text{otherwise}\end{cases}

    with :math:`x_k` the digit placed over pixel :math:`u`, :math:`c_k` its class and
    :math:`\tau` = :data:`STROKE_THRESHOLD`. Clutter stays below :math:`\tau`, so it never
    changes a label, but a network must learn to ignore it.

    Args:
      key: PRNG key.
      images: ``[M, h, w, 1]`` digits in [0, 1] (the train split for training canvases, the
        test split for test canvases).
      labels: ``[M]`` int classes.
      n: number of canvases.
      size: canvas side (at least ``2 h``).
      max_digits: 2 or 3.
      clutter: clutter segments per canvas.

    Returns:
      :class:`Canvases`.

    Derivation: derivations/19-dense-prediction.md
    """
    images = _check_images(images)
    labels = np.asarray(labels, np.int32)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape [{len(images)}], got {labels.shape}")
    if max_digits not in (2, 3):
        raise ValueError(f"max_digits must be 2 or 3, got {max_digits}")
    side = images.shape[1]
    if images.shape[2] != side or size < 2 * side:
        raise ValueError(f"size must be at least twice the digits' side {side}, got {size}")
    rng = _rng(key)
    out = np.zeros((n, size, size), np.float32)
    label_maps = np.full((n, size, size), BACKGROUND, np.int32)
    boxes = np.full((n, 3, 2), -1, np.int32)
    classes = np.full((n, 3), -1, np.int32)
    sources = np.full((n, 3), -1, np.int32)
    low, high = CLUTTER_RANGE
    for i in range(n):
        for _ in range(clutter):
            r, c = rng.integers(0, size, 2)
            dr, dc = _DIRECTIONS[rng.integers(len(_DIRECTIONS))]
            steps = np.arange(rng.integers(2, 5))
            rows, cols = r + dr * steps, c + dc * steps
            keep = (rows < size) & (cols >= 0) & (cols < size)
            out[i, rows[keep], cols[keep]] = rng.uniform(low, high)
        count = int(rng.integers(2, max_digits + 1))
        for k, (r, c) in enumerate(_positions(rng, count, size, side)):
            j = int(rng.integers(len(images)))
            digit = images[j, :, :, 0]  # [h, w]
            window = out[i, r : r + side, c : c + side]
            window[:] = np.maximum(window, digit)
            label_maps[i, r : r + side, c : c + side][digit >= STROKE_THRESHOLD] = labels[j] + 1
            boxes[i, k], classes[i, k], sources[i, k] = (r, c), labels[j], j
    return Canvases(out[..., None], label_maps, boxes, classes, sources)


def edge_maps(images) -> np.ndarray:
    r"""The Sobel gradient magnitude of each image, scaled to a maximum of 1 per image.

    .. math:: E = \frac{\sqrt{(S_x * x)^2 + (S_y * x)^2}}{\max_u \sqrt{\cdots}},\qquad
       S_x = \begin{pmatrix}-1&0&1\\-2&0&2\\-1&0&1\end{pmatrix},\ S_y = S_x^\top

    with zero padding (the digits' background); a blank image has a blank edge map.

    Args:
      images: ``[N, H, W, 1]`` in [0, 1].

    Returns:
      ``[N, H, W, 1]`` float32 in [0, 1].

    Derivation: derivations/19-dense-prediction.md
    """
    x = np.pad(_check_images(images)[..., 0], ((0, 0), (1, 1), (1, 1)))  # [N, H+2, W+2]
    h, w = x.shape[1] - 2, x.shape[2] - 2

    def shifted(dr, dc):
        return x[:, 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]  # [N, H, W]

    gx = sum(wt * (shifted(dr, 1) - shifted(dr, -1)) for dr, wt in ((-1, 1), (0, 2), (1, 1)))
    gy = sum(wt * (shifted(1, dc) - shifted(-1, dc)) for dc, wt in ((-1, 1), (0, 2), (1, 1)))
    mag = np.sqrt(gx**2 + gy**2)  # [N, H, W]
    peak = mag.max(axis=(1, 2), keepdims=True)  # [N, 1, 1]
    return (mag / np.where(peak > 0, peak, 1.0)).astype(np.float32)[..., None]


def thick_inverted(images) -> np.ndarray:
    r"""The hidden transform :math:`T` of the unpaired task: thicken, then invert.

    .. math:: T(x)(u) = 1 - \max_{v \in u + \{0, \pm e_1, \pm e_2\}} x(v)

    (a dilation by the 3x3 cross with zero padding, then inverted contrast: dark thick
    strokes on white). :math:`T` is fixed and never shown to the model.

    Args:
      images: ``[N, H, W, 1]`` in [0, 1].

    Returns:
      ``[N, H, W, 1]`` float32 in [0, 1].

    Derivation: derivations/21-cyclegan.md
    """
    x = np.pad(_check_images(images)[..., 0], ((0, 0), (1, 1), (1, 1)))  # [N, H+2, W+2]
    h, w = x.shape[1] - 2, x.shape[2] - 2
    cross = [x[:, 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr, dc in _CROSS]
    return (1.0 - np.max(cross, axis=0)).astype(np.float32)[..., None]


def unpaired_split(key: jax.Array, images, labels) -> dict[str, np.ndarray]:
    r"""Unpaired training domains from disjoint halves of ``images``.

    A random half is domain A as it is; the other half, through :func:`thick_inverted`, is
    domain B. No image of A has its own :math:`T(x)` in B.

    Args:
      key: PRNG key of the split.
      images: ``[N, H, W, 1]`` in [0, 1].
      labels: ``[N]`` classes (kept for evaluation only).

    Returns:
      ``{"a": [N_a, H, W, 1], "a_labels": [N_a], "b": [N_b, H, W, 1], "b_labels": [N_b]}``
      with :math:`N_a = \lfloor N / 2 \rfloor` and :math:`N_b = N - N_a`.

    Derivation: derivations/21-cyclegan.md
    """
    images = _check_images(images)
    labels = np.asarray(labels, np.int32)
    order = _rng(key).permutation(len(images))
    half_a, half_b = order[: len(images) // 2], order[len(images) // 2 :]
    return {
        "a": images[half_a],
        "a_labels": labels[half_a],
        "b": thick_inverted(images[half_b]),
        "b_labels": labels[half_b],
    }


def square_masks(
    key: jax.Array, n: int, *, image_size: int = 8, hole: int = 4, centered: bool = True
) -> np.ndarray:
    r"""Inpainting holes: ``hole``-square masks, at the centre or at random positions.

    .. math:: M(u) = 1 \text{ inside the hole}, 0 \text{ outside};\qquad
       \tilde x = (1 - M) \odot x

    Args:
      key: PRNG key (unused when ``centered``).
      n: number of masks.
      image_size: image side.
      hole: hole side (``1 <= hole < image_size``).
      centered: the centre square (Pathak et al.'s central region) or uniform positions.

    Returns:
      ``[n, image_size, image_size, 1]`` float32 masks, 1 in the hole.

    Derivation: derivations/19-dense-prediction.md
    """
    if not 1 <= hole < image_size:
        raise ValueError(f"hole must be in [1, image_size={image_size}), got {hole}")
    masks = np.zeros((n, image_size, image_size, 1), np.float32)
    if centered:
        start = np.full((n, 2), (image_size - hole) // 2)
    else:
        start = _rng(key).integers(0, image_size - hole + 1, (n, 2))
    for i, (r, c) in enumerate(start):
        masks[i, r : r + hole, c : c + hole] = 1.0
    return masks
