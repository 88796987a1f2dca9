r"""Segmentation recipes: FCN without and with skips, SegNet and the U-Net on digit canvases.

Each recipe trains one network of :data:`genjax.segmentation.NETWORKS` with pixel-wise
cross-entropy (:func:`genjax.segmentation.pixel_cross_entropy`) on
:data:`TRAIN_CANVASES` canvases made from the training digits
(:func:`genjax.data.segmentation_canvases`, 2-3 digits with clutter on 24x24, 11 classes:
background and ten digits), at one budget for all four, and is scored on
:data:`TEST_CANVASES` canvases made from the test digits.

* Metric: test mean IoU over the 11 classes (:func:`genjax.segmentation.mean_iou`).
* Baseline: the intensity threshold that made the labels, with every stroke given the most
  frequent digit class of the training canvases (it knows where strokes are, not which digit).
* Extra: pixel accuracy, the parameter count.

The loss draws its batch of canvases from the step's key (``draws_batches``): the canvases are
made once from the ``digits`` training split and live in the compiled step.

Derivation: derivations/19-dense-prediction.md
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from genjax import segmentation as S
from genjax import viz
from genjax.data import (
    BACKGROUND,
    STROKE_THRESHOLD,
    Canvases,
    Dataset,
    segmentation_canvases,
)
from genjax.recipes import Recipe, Report, register
from genjax.recipes.common import fast_init_key
from genjax.train import Task, TrainConfig

__all__ = [
    "NUM_CLASSES",
    "STEPS",
    "TEST_CANVASES",
    "TRAIN_CANVASES",
    "WIDTHS",
    "Segmenter",
    "canvases",
    "draw_batch",
    "label_colours",
    "make_task",
    "predict",
    "rows_figure",
    "segmentation_config",
]

TRAIN_CANVASES = 3000  #: canvases made from the training digits
TEST_CANVASES = 500  #: canvases made from the test digits
NUM_CLASSES = 11  #: background and ten digits
STEPS = {False: 800, True: 40}  #: the budget of every segmentation recipe, by ``quick``
WIDTHS = (16, 32)  #: channels per level of every network
FIGURE_CANVASES = 6
CHUNK = 250  # canvases per compiled forward pass at evaluation


@functools.cache
def canvases(dataset_name: str, split: str, n: int) -> Canvases:
    """The recipes' canvases of ``split`` (``train``: key 0 over the training digits;
    ``test``: key 1 over the test digits), made once per process.

    Derivation: derivations/19-dense-prediction.md
    """
    from genjax.data import load_dataset

    data = getattr(load_dataset(dataset_name), split)
    key = jax.random.key({"train": 0, "test": 1}[split])
    return segmentation_canvases(key, data["x"], data["y"], n)


class Segmenter(NamedTuple):
    """A segmentation recipe's setup: the network and its training canvases.

    Derivation: derivations/19-dense-prediction.md
    """

    name: str
    net: Any
    train: Canvases


def segmentation_config(quick: bool) -> TrainConfig:
    """The one budget of the four networks: Adam 3e-3 with cosine decay, batch 16, EMA 0.99.

    Derivation: derivations/19-dense-prediction.md
    """
    return TrainConfig(
        steps=STEPS[quick], batch_size=16, lr=3e-3, ema_decay=0.99, log_every=STEPS[quick] // 3
    )


def draw_batch(key: jax.Array, arrays, n: int) -> list:
    """Rows ``idx`` of every array in ``arrays``, ``idx`` ``n`` uniform draws with
    replacement from the step's ``key``: the batch of a recipe that draws its own.

    Derivation: derivations/19-dense-prediction.md
    """
    idx = jax.random.randint(key, (n,), 0, len(arrays[0]))
    return [a[idx] for a in arrays]


def make_task(name: str, dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """The loop's task for network ``name``: pixel-wise cross-entropy on a batch of training
    canvases drawn from the step's key.

    Derivation: derivations/19-dense-prediction.md
    """
    del options
    train = canvases(dataset.name, "train", TRAIN_CANVASES)
    net = S.segmentation_network(name, NUM_CLASSES, WIDTHS)
    images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)

    def init(key, batch):
        return jax.jit(net.init)(fast_init_key(key), images[:2])

    def loss(params, key, batch):
        x, y = draw_batch(key, (images, labels), batch["x"].shape[0])
        logits = net.apply(params, x)  # [B, H, W, K]
        ce = S.pixel_cross_entropy(logits, y)  # [B]
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return jnp.mean(ce), {"pixel_accuracy": accuracy}

    return Task(init=init, loss=loss, model=Segmenter(name, net, train))


def predict(net, params, images) -> np.ndarray:
    """Predicted label maps ``[N, H, W]`` of canvases ``[N, H, W, 1]``, in chunks.

    Derivation: derivations/19-dense-prediction.md
    """
    apply = jax.jit(lambda p, x: jnp.argmax(net.apply(p, x), -1))
    return np.concatenate(
        [np.asarray(apply(params, images[i : i + CHUNK])) for i in range(0, len(images), CHUNK)]
    )


def _evaluate(task: Task, params, dataset: Dataset, key) -> Report:
    del key
    seg: Segmenter = task.model
    test = canvases(dataset.name, "test", TEST_CANVASES)
    pred = predict(seg.net, params, test.images)
    strokes = seg.train.labels[seg.train.labels != BACKGROUND]
    common = int(np.bincount(strokes).argmax())
    baseline = np.where(test.images[..., 0] >= STROKE_THRESHOLD, common, BACKGROUND)
    size = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    return Report(
        metric="test mean IoU (11 classes)",
        value=S.mean_iou(pred, test.labels, NUM_CLASSES),
        baseline="stroke threshold, most frequent digit",
        baseline_value=S.mean_iou(baseline, test.labels, NUM_CLASSES),
        lower_is_better=False,
        extra={
            "pixel_accuracy": S.pixel_accuracy(pred, test.labels),
            "baseline_pixel_accuracy": S.pixel_accuracy(baseline, test.labels),
            "parameters": float(size),
        },
    )


def label_colours(labels) -> np.ndarray:
    """Label maps ``[N, H, W]`` as RGB images ``[N, H, W, 3]``: black background, one colour
    per digit (matplotlib's ``tab10``).

    Derivation: derivations/19-dense-prediction.md
    """
    import matplotlib

    palette = np.concatenate([[[0.0, 0.0, 0.0]], matplotlib.colormaps["tab10"].colors[:10]])
    return palette[np.asarray(labels)].astype(np.float32)


def rows_figure(rows: Mapping[str, np.ndarray], path: Path, title: str) -> Path:
    """One PNG with a row of images per entry of ``rows`` (each ``[n, H, W, C]``, grey or
    RGB in [0, 1]), top to bottom, titled with ``title`` and the rows' names.

    Derivation: derivations/19-dense-prediction.md
    """
    as_rgb = [np.repeat(r, 3, -1) if r.shape[-1] == 1 else r for r in rows.values()]
    n = len(as_rgb[0])
    names = " / ".join(rows)
    return viz.image_grid(np.concatenate(as_rgb), path, ncols=n, title=f"{title}\nrows: {names}")


def _figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    del key
    seg: Segmenter = task.model
    test = canvases(dataset.name, "test", TEST_CANVASES)
    images = test.images[:FIGURE_CANVASES]
    pred = predict(seg.net, params, images)
    rows = {
        "input": images,
        "prediction": label_colours(pred),
        "truth": label_colours(test.labels[:FIGURE_CANVASES]),
    }
    return [rows_figure(rows, out_dir / f"seg_{seg.name}.png", f"{seg.name} on test canvases")]


_SUMMARIES = {
    "fcn_no_skips": "FCN, scores upsampled x8 at once (no skip fusions), on digit canvases",
    "fcn_skips": "FCN-8s style: scores fused with the 1/4 and 1/2 pooling outputs",
    "segnet": "SegNet: decoder unpools with the encoder's max-pooling indices",
    "unet": "the diffusion U-Net without time conditioning, concatenated skips",
}

for _name in S.NETWORKS:
    register(
        Recipe(
            name=f"seg_{_name}",
            summary=_SUMMARIES[_name],
            make_task=functools.partial(make_task, _name),
            config=segmentation_config,
            evaluate=_evaluate,
            figures=_figures,
            draws_batches=True,
            quick_tour=_name == "unet",
            tour_steps=STEPS[False] // 2 if _name == "unet" else None,
        )
    )
