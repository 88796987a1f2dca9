r"""Dense prediction: FCN (with and without skip fusions), SegNet and the U-Net for segmentation.

* Networks map an image ``[b, H, W, C]`` to per-pixel class logits ``[b, H, W, K]``:
  :class:`FCN` (convolutions and max pooling down to :math:`H/8`, a 1x1 score layer, learned
  transposed convolutions up; ``skips=True`` fuses the scores of the :math:`H/4` and
  :math:`H/2` pooling outputs by addition, as FCN-8s does); :class:`SegNet` (the same encoder,
  whose max-pooling *indices* place the values back in the decoder, :func:`max_unpool`); and the
  U-Net of :mod:`genjax.nn.unet` without time conditioning (:func:`segmentation_unet`), whose
  skips concatenate the encoder's activations.
* :func:`receptive_field`: the formula :math:`r_\ell = r_{\ell-1} + (k_\ell - 1) j_{\ell-1}`,
  :math:`j_\ell = j_{\ell-1} s_\ell` over a network's deepest path (each network's ``path()``).
* Loss and metrics: :func:`pixel_cross_entropy`, :func:`confusion_matrix`,
  :func:`iou_per_class`, :func:`mean_iou`, :func:`pixel_accuracy`.

References:
  Long, Shelhamer and Darrell, *Fully Convolutional Networks for Semantic Segmentation*, 2015,
  https://arxiv.org/abs/1411.4038

  Badrinarayanan, Kendall and Cipolla, *SegNet*, 2017, https://arxiv.org/abs/1511.00561

  Ronneberger, Fischer and Brox, *U-Net*, 2015, https://arxiv.org/abs/1505.04597

Derivation: derivations/19-dense-prediction.md
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from genjax.nn.layers import Conv, ConvTranspose, group_count
from genjax.nn.norm import GroupNorm
from genjax.nn.unet import UNet

__all__ = [
    "CONV3",
    "FCN",
    "NETWORKS",
    "POOL2",
    "SCORE",
    "SegNet",
    "confusion_matrix",
    "input_interval",
    "iou_per_class",
    "max_pool_with_indices",
    "max_unpool",
    "mean_iou",
    "pixel_accuracy",
    "pixel_cross_entropy",
    "receptive_field",
    "segmentation_network",
    "segmentation_unet",
]

NETWORKS = ("fcn_no_skips", "fcn_skips", "segnet", "unet")  #: :func:`segmentation_network` names
CONV3 = ("conv", 3, 1, 1)  #: a 3x3 convolution with stride 1 and padding 1, as a layer spec
POOL2 = ("conv", 2, 2, 0)  #: a 2x2 pooling window with stride 2 (max pooling), as a layer spec
SCORE = ("conv", 1, 1, 0)  #: a 1x1 convolution, as a layer spec


# ----------------------------------------------------------------------------- receptive field


def _layer_range(layer: tuple, o: int) -> tuple[int, int]:
    """The input indices ``[start, end]`` one output index ``o`` of ``layer`` reads (1-D)."""
    kind = layer[0]
    if kind == "conv":
        _, k, s, p = layer
        return o * s - p, o * s - p + k - 1
    if kind == "up":
        return o // layer[1], o // layer[1]
    if kind == "convT":
        _, k, s, p = layer
        return -((k - 1 - p - o) // s), (o + p) // s
    raise ValueError(f"unknown layer kind {kind!r} (conv, up, convT)")


def receptive_field(layers: Sequence[tuple]) -> tuple[int, Fraction]:
    r"""The closed form: receptive field and jump of a chain of layers, in input pixels.

    .. math:: r_\ell = r_{\ell-1} + (k_\ell - 1)\, j_{\ell-1},\qquad
       j_\ell = j_{\ell-1} s_\ell, \qquad r_0 = j_0 = 1

    Layers are specs: ``("conv", k, s, p)`` (a convolution or pooling window); ``("up", u)``
    (nearest or index upsampling: one input per output, :math:`j \to j/u`); ``("convT", k, s,
    p)`` (a transposed convolution: :math:`\lceil k/s \rceil` neighbouring inputs per
    output, :math:`j \to j/s`). For one chain, :math:`r` is the largest extent of
    :func:`input_interval` over output positions; a network with skips is a union of chains
    whose fields need not be centred alike (:func:`input_interval` handles that).

    Args:
      layers: layer specs from input to output.

    Returns:
      ``(r, j)``: the side of the square of input pixels an output pixel reads (at most), and
      the distance in input pixels between neighbouring outputs.

    References:
      Araujo, Norris and Sim, *Computing Receptive Fields of Convolutional Neural Networks*,
      Distill, 2019, https://distill.pub/2019/computing-receptive-fields/

    Derivation: derivations/19-dense-prediction.md
    """
    r, j = Fraction(1), Fraction(1)
    for layer in layers:
        _layer_range(layer, 0)  # validates the kind
        if layer[0] == "up":
            j /= layer[1]
            continue
        _, k, s, _ = layer
        reads = k if layer[0] == "conv" else -(-k // s)
        r, j = r + (reads - 1) * j, j * (s if layer[0] == "conv" else Fraction(1, s))
    if r.denominator != 1:
        raise ValueError(f"the field {r} is not a whole number of pixels: check the layers")
    return int(r), j


def input_interval(paths: Sequence[Sequence[tuple]], index: int) -> tuple[int, int]:
    r"""The exact input interval ``[lo, hi]`` (one axis) that output index ``index`` reads.

    Each layer maps an output index :math:`o` to the input indices it reads,
    ``("conv", k, s, p)``: :math:`[os - p,\ os - p + k - 1]`; ``("up", u)``:
    :math:`\lfloor o/u \rfloor`; ``("convT", k, s, p)``:
    :math:`[\lceil (o + p - k + 1)/s \rceil,\ \lfloor (o + p)/s \rfloor]`. Both ends are
    non-decreasing in :math:`o`, so an interval maps to an interval, from the output back to
    the input. Skip connections (sums or concatenations) make a network a union of paths: its
    field is the union of the paths' intervals, which need not be nested, since a stride-2
    layer followed by upsampling shifts odd positions.

    Args:
      paths: every path from input to output, each a list of layer specs.
      index: the output index.

    Returns:
      ``(lo, hi)`` input indices (outside ``[0, H)`` where padding is read).

    Derivation: derivations/19-dense-prediction.md
    """
    lows, highs = [], []
    for path in paths:
        lo = hi = index
        for layer in reversed(path):
            lo, hi = _layer_range(layer, lo)[0], _layer_range(layer, hi)[1]
        lows.append(lo)
        highs.append(hi)
    return min(lows), max(highs)


# ----------------------------------------------------------------------------- pooling indices


def max_pool_with_indices(
    x: Float[Array, "b H W C"],
) -> tuple[Float[Array, "b H2 W2 C"], Int[Array, "b H2 W2 C"]]:
    r"""2x2 max pooling with stride 2 that also returns where each maximum was.

    .. math:: y_{ij} = \max_{a, b \in \{0,1\}} x_{2i+a,\,2j+b},\qquad
       \iota_{ij} = 2a^\star + b^\star

    with :math:`(a^\star, b^\star)` the first maximiser in row-major order.

    Args:
      x: ``[b, H, W, C]`` with even ``H`` and ``W``.

    Returns:
      ``(pooled [b, H/2, W/2, C], indices [b, H/2, W/2, C] in {0, 1, 2, 3})``.

    References:
      Badrinarayanan et al., *SegNet*, 2017 (section 3), https://arxiv.org/abs/1511.00561

    Derivation: derivations/19-dense-prediction.md
    """
    if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(f"x must be [b, H, W, C] with even H and W, got {x.shape}")
    b, h, w, c = x.shape
    windows = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    windows = windows.reshape(b, h // 2, w // 2, c, 4)  # [b, H/2, W/2, C, 4]
    indices = jnp.argmax(windows, axis=-1)  # [b, H/2, W/2, C]
    pooled = jnp.take_along_axis(windows, indices[..., None], axis=-1)[..., 0]
    return pooled, indices.astype(jnp.int32)


def max_unpool(
    y: Float[Array, "b H2 W2 C"], indices: Int[Array, "b H2 W2 C"]
) -> Float[Array, "b H W C"]:
    r"""SegNet's unpooling: each value back at the position its max pooling took it from.

    .. math:: x_{2i+a,\,2j+b} = \begin{cases} y_{ij} & 2a + b = \iota_{ij} \\ 0 &
       \text{otherwise}\end{cases}

    Unlike a transposed convolution it has no parameters and restores *where* each
    maximum was, not what surrounded it.

    Args:
      y: ``[b, H/2, W/2, C]`` values.
      indices: ``[b, H/2, W/2, C]`` positions from :func:`max_pool_with_indices`.

    Returns:
      ``[b, H, W, C]``, zero away from the recorded positions.

    References:
      Badrinarayanan et al., *SegNet*, 2017 (figure 3), https://arxiv.org/abs/1511.00561

    Derivation: derivations/19-dense-prediction.md
    """
    if y.shape != indices.shape or y.ndim != 4:
        raise ValueError(
            f"y and indices must be [b, h, w, C] alike, got {y.shape}, {indices.shape}"
        )
    b, h, w, c = y.shape
    spread = jax.nn.one_hot(indices, 4, dtype=y.dtype) * y[..., None]  # [b, h, w, C, 4]
    spread = spread.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)  # [b, h, 2, w, 2, C]
    return spread.reshape(b, 2 * h, 2 * w, c)


# ----------------------------------------------------------------------------- networks


def _check_levels(x: Array, levels: int) -> None:
    factor = 2**levels
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(f"x must be [b, H, W, C] with H, W divisible by {factor}, got {x.shape}")


class FCN(nn.Module):
    r"""A fully convolutional network: ``[b, H, W, C] -> [b, H, W, num_classes]`` logits.

    Encoder: per level two 3x3 conv + ReLU and a 2x2 max pool (:math:`H \to H/2^L`), then one
    more 3x3 conv + ReLU (the paper's convolutionalised fully connected layer) and a 1x1
    score layer. Without skips (FCN-32s style) one transposed convolution (kernel
    :math:`2^{L+1}`, stride :math:`2^L`) upsamples the scores to the input size. With skips
    (FCN-8s style) the scores are upsampled by 2 at a time, and after each step the 1x1 scores
    of the matching pooling output are added:

    .. math:: s = \mathrm{up}_2\big(\mathrm{up}_2(\mathrm{up}_2(s_{L}) + s_{L-1}) + s_{L-2}
       \big) \quad (L = 3)

    Attributes:
      num_classes: output classes :math:`K`.
      widths: channels per level (``L = len(widths)``).
      skips: fuse the finer pooling outputs' scores.

    References:
      Long et al., *Fully Convolutional Networks for Semantic Segmentation*, 2015 (section
      4.2, figure 3), https://arxiv.org/abs/1411.4038

    Derivation: derivations/19-dense-prediction.md
    """

    num_classes: int
    widths: Sequence[int] = (16, 32, 64)
    skips: bool = True

    def paths(self) -> list[list[tuple]]:
        """Every input-to-output path as layer specs (see :func:`input_interval`).

        Derivation: derivations/19-dense-prediction.md
        """
        levels = len(self.widths)
        encoder = [CONV3, CONV3, POOL2] * levels
        if not self.skips:
            s = 2**levels
            return [[*encoder, CONV3, SCORE, ("convT", 2 * s, s, s // 2)]]
        up = ("convT", 4, 2, 1)
        deep = [*encoder, CONV3, SCORE, *[up] * levels]
        fused = [[*encoder[: 3 * lv], SCORE, *[up] * lv] for lv in range(1, levels)]
        return [deep, *fused]

    @nn.compact
    def __call__(self, x: Float[Array, "b H W C"]) -> Float[Array, "b H W K"]:
        levels = len(self.widths)
        _check_levels(x, levels)
        h, pooled = x, []
        for width in self.widths:
            h = nn.relu(Conv(width)(nn.relu(Conv(width)(h))))
            h, _ = max_pool_with_indices(h)  # [b, H/2, W/2, width]
            pooled.append(h)
        h = nn.relu(Conv(self.widths[-1])(h))
        score = Conv(self.num_classes, kernel_size=1, padding=0)(h)  # [b, H/2^L, W/2^L, K]
        if not self.skips:
            s = 2**levels
            return ConvTranspose(self.num_classes, 2 * s, s, s // 2)(score)  # [b, H, W, K]
        for finer in reversed(pooled[:-1]):
            score = ConvTranspose(self.num_classes, 4, 2, 1)(score)  # [b, 2h, 2w, K]
            score = score + Conv(self.num_classes, kernel_size=1, padding=0)(finer)
        return ConvTranspose(self.num_classes, 4, 2, 1)(score)  # [b, H, W, K]


class SegNet(nn.Module):
    r"""SegNet: ``[b, H, W, C] -> [b, H, W, num_classes]`` logits.

    Encoder: per level two 3x3 conv → GroupNorm → ReLU, then :func:`max_pool_with_indices`.
    Decoder, mirrored: :func:`max_unpool` with the stored indices, then two 3x3 conv → GroupNorm
    → ReLU, and a final 1x1 conv to the class scores. No encoder features are copied across:
    only the pooling indices are.

    Attributes:
      num_classes: output classes :math:`K`.
      widths: channels per level.
      num_groups: GroupNorm groups (the paper's batch norm, without batch statistics).

    References:
      Badrinarayanan et al., *SegNet*, 2017, https://arxiv.org/abs/1511.00561

    Derivation: derivations/19-dense-prediction.md
    """

    num_classes: int
    widths: Sequence[int] = (16, 32, 64)
    num_groups: int = 8

    def paths(self) -> list[list[tuple]]:
        """Its one input-to-output path as layer specs (see :func:`input_interval`).

        The deepest pooling and the first unpooling meet with nothing between them: a value
        goes back to the very position it was pooled from, and only a maximum passes both, so
        the pair is the identity on the field and is left out. Every other unpooling reads the
        one window it restores, ``("up", 2)``.

        Derivation: derivations/19-dense-prediction.md
        """
        levels = len(self.widths)
        down = [CONV3, CONV3, POOL2] * (levels - 1) + [CONV3, CONV3]
        return [[*down, CONV3, CONV3, *[("up", 2), CONV3, CONV3] * (levels - 1), SCORE]]

    def _conv(self, width: int, h: Array) -> Array:
        h = Conv(width)(h)
        return nn.relu(GroupNorm(group_count(self.num_groups, width))(h))

    @nn.compact
    def __call__(self, x: Float[Array, "b H W C"]) -> Float[Array, "b H W K"]:
        _check_levels(x, len(self.widths))
        h, indices = x, []
        for width in self.widths:
            h = self._conv(width, self._conv(width, h))
            h, idx = max_pool_with_indices(h)  # [b, H/2, W/2, width]
            indices.append(idx)
        outs = [*self.widths[-2::-1], self.widths[0]]
        for width, idx in zip(outs, reversed(indices), strict=True):
            h = max_unpool(h, idx)  # [b, 2h, 2w, C]
            h = self._conv(width, self._conv(h.shape[-1], h))
        return Conv(self.num_classes, kernel_size=1, padding=0)(h)


def segmentation_unet(num_classes: int, widths: Sequence[int] = (16, 32, 64)) -> UNet:
    r"""The U-Net of :mod:`genjax.nn.unet` as a segmenter: no time conditioning, no attention,
    ``num_classes`` outputs, ``widths[l] = widths[0] * channel_mults[l]``.

    Its skips concatenate each encoder activation to the decoder input of the same resolution,
    so the full-resolution features reach the output through one block.

    References:
      Ronneberger et al., *U-Net*, 2015, https://arxiv.org/abs/1505.04597

    Derivation: derivations/19-dense-prediction.md
    """
    base = widths[0]
    if any(w % base for w in widths):
        raise ValueError(f"widths must be multiples of widths[0], got {tuple(widths)}")
    mults = tuple(w // base for w in widths)
    return UNet(
        num_steps=None,
        base_features=base,
        channel_mults=mults,
        out_features=num_classes,
        attention=False,
    )


def segmentation_network(
    name: str, num_classes: int, widths: Sequence[int] = (16, 32, 64)
) -> nn.Module:
    """The network :data:`NETWORKS` names: ``fcn_no_skips``, ``fcn_skips``, ``segnet`` or
    ``unet``, each with the same per-level widths.

    Derivation: derivations/19-dense-prediction.md
    """
    if name == "fcn_no_skips":
        return FCN(num_classes, tuple(widths), skips=False)
    if name == "fcn_skips":
        return FCN(num_classes, tuple(widths), skips=True)
    if name == "segnet":
        return SegNet(num_classes, tuple(widths))
    if name == "unet":
        return segmentation_unet(num_classes, widths)
    raise ValueError(f"name must be one of {NETWORKS}, got {name!r}")


# ----------------------------------------------------------------------------- loss and metrics


def pixel_cross_entropy(
    logits: Float[Array, "b H W K"], labels: Int[Array, "b H W"]
) -> Float[Array, " b"]:
    r"""Pixel-wise softmax cross-entropy, averaged over each image's pixels.

    .. math:: L = -\frac{1}{HW} \sum_{u} \log \operatorname{softmax}(z_u)_{\ell(u)}

    Args:
      logits: ``[b, H, W, K]`` class scores :math:`z`.
      labels: ``[b, H, W]`` int classes :math:`\ell` in ``[0, K)``.

    Returns:
      ``[b]`` per-image losses.

    Derivation: derivations/19-dense-prediction.md
    """
    if logits.ndim != 4 or labels.shape != logits.shape[:3]:
        raise ValueError(
            f"logits must be [b, H, W, K] and labels [b, H, W], got {logits.shape}, {labels.shape}"
        )
    log_p = jax.nn.log_softmax(logits, axis=-1)  # [b, H, W, K]
    picked = jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -jnp.mean(picked, axis=(1, 2))


def confusion_matrix(predicted, labels, num_classes: int) -> np.ndarray:
    r"""Counts :math:`C_{ab}` of pixels of true class :math:`a` predicted as :math:`b`.

    Args:
      predicted: int classes, any shape.
      labels: int classes, the same shape.
      num_classes: :math:`K`.

    Returns:
      ``[K, K]`` int64 counts (rows: truth, columns: prediction).

    Derivation: derivations/19-dense-prediction.md
    """
    predicted, labels = np.asarray(predicted).ravel(), np.asarray(labels).ravel()
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted and labels must match, got {predicted.shape}, {labels.shape}")
    if predicted.size and (
        min(predicted.min(), labels.min()) < 0 or max(predicted.max(), labels.max()) >= num_classes
    ):
        raise ValueError(f"classes must lie in [0, num_classes={num_classes})")
    flat = labels.astype(np.int64) * num_classes + predicted
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion) -> np.ndarray:
    r"""Intersection over union of each class from a confusion matrix.

    .. math:: \mathrm{IoU}_a = \frac{C_{aa}}{\sum_b C_{ab} + \sum_b C_{ba} - C_{aa}}

    NaN for a class absent from both truth and prediction (its union is empty).

    Args:
      confusion: ``[K, K]`` counts (:func:`confusion_matrix`).

    Returns:
      ``[K]`` float64.

    Derivation: derivations/19-dense-prediction.md
    """
    confusion = np.asarray(confusion, np.float64)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, np.nan)


def mean_iou(predicted, labels, num_classes: int) -> float:
    r"""Mean IoU over the classes present in the truth or the prediction.

    .. math:: \mathrm{mIoU} = \frac{1}{|A|} \sum_{a \in A} \mathrm{IoU}_a,\qquad
       A = \{a : \text{class } a \text{ occurs in truth or prediction}\}

    computed from the confusion matrix accumulated over all pixels of all images.

    Args:
      predicted: ``[...]`` int classes.
      labels: ``[...]`` int true classes.
      num_classes: :math:`K`.

    Returns:
      The mean IoU as a Python float.

    Derivation: derivations/19-dense-prediction.md
    """
    return float(np.nanmean(iou_per_class(confusion_matrix(predicted, labels, num_classes))))


def pixel_accuracy(predicted, labels) -> float:
    r"""The fraction of pixels whose predicted class is the true one.

    Derivation: derivations/19-dense-prediction.md
    """
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted and labels must match, got {predicted.shape}, {labels.shape}")
    return float(np.mean(predicted == labels))
