r"""Style-transfer recipe: Gatys stylisation of a generated content image, trained by the loop.

The "parameters" the loop trains are the image's logits :math:`z` (the image is
:math:`\sigma(z)`), started at the content image; the loss is
:func:`genjax.style.stylization_loss` with random multi-scale conv features
(:func:`genjax.style.random_features`, fixed seed). The loop's batch is unused
(``Recipe(draws_batches=True)``); Adam with a constant learning rate does the rest, exactly what
:func:`genjax.style.stylize` runs in its own scan.

Data: the ``patterns`` data set (:func:`genjax.data.load_dataset`, the images of
:func:`genjax.style.pattern`): content ``"shapes"``, style ``"stripes"`` (48 x 48 RGB); another
``size`` draws the patterns at that size.

Metric: the style loss of the result, beside the style loss of the starting point (the content
image itself); their ratio is the reduction factor (goal: at least 10x). Content bound: the
result's content loss must stay below ``CONTENT_BOUND`` times the content loss the style image
itself would have (a result that simply became the style image scores 1).

Derivation: derivations/17-style-transfer.md
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genjax import style, viz
from genjax.data import Dataset
from genjax.recipes import Option, Recipe, Report, register
from genjax.train import Task, TrainConfig

__all__ = ["Stylization", "make_task", "stylize_images"]

DEFAULTS = {
    "content": "shapes",
    "style": "stripes",
    "size": 48,
    "style_weight": 1000.0,
    "content_weight": 1.0,
    "tv_weight": 0.0,
    "seed": 0,
}
CONTENT_LAYERS = (0,)
CONTENT_BOUND = 0.75


@dataclasses.dataclass(frozen=True, eq=False)
class Stylization:
    """The fixed pieces: content and style images, features, targets, weights.

    Derivation: derivations/17-style-transfer.md
    """

    content: np.ndarray  # [1, H, W, 3]
    style: np.ndarray  # [1, H, W, 3]
    kernels: tuple[jax.Array, ...]
    weights: Mapping[str, float]
    targets: style.StyleTargets  # computed once, eagerly, by make_task

    def features(self, images):
        """The random multi-scale feature maps of ``images``."""
        return style.random_features(self.kernels, images)

    def objective(self, image):
        """``(loss, parts)`` of :func:`genjax.style.stylization_loss` for ``image``."""
        return style.stylization_loss(
            image, self.targets, self.features, content_layers=CONTENT_LAYERS, **self.weights
        )

    def init(self, key, batch):
        """The content image's logits."""
        del key, batch
        return {"z": style.logit(jnp.asarray(self.content))}

    def loss(self, params, key, batch):
        """The stylisation objective of the image ``sigmoid(z)``."""
        del key, batch
        return self.objective(jax.nn.sigmoid(params["z"]))

    def image(self, params) -> np.ndarray:
        """The image ``[1, H, W, 3]`` that ``params`` hold."""
        return np.asarray(jax.nn.sigmoid(params["z"]))

    def style_image_content_loss(self) -> float:
        """Content loss of the style image against the content image (the bound's unit)."""
        maps = self.features(jnp.asarray(self.style))
        return float(
            sum(style.content_loss(maps[i], self.targets.content[i])[0] for i in CONTENT_LAYERS)
        )


def _pattern(dataset: Dataset, name: str, size: int) -> np.ndarray:
    """Pattern ``name`` ``[1, size, size, 3]`` from ``dataset`` when it has that size."""
    if dataset is None or dataset.name != "patterns":
        got = None if dataset is None else dataset.name
        raise ValueError(f"style transfer needs the 'patterns' data set, got {got!r}")
    if name not in style.PATTERNS:
        raise ValueError(f"pattern name must be one of {style.PATTERNS}, got {name!r}")
    if dataset.shape[:2] != (size, size):
        return style.pattern(name, size)
    x, y = dataset.train["x"], dataset.train["y"]
    return x[y == style.PATTERNS.index(name)]


def make_task(dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """The stylisation :class:`Task` on the ``patterns`` data set.

    Options: ``content``, ``style`` (pattern names), ``size``, ``style_weight``,
    ``content_weight``, ``tv_weight``, ``seed`` (of the random features).

    Derivation: derivations/17-style-transfer.md
    """
    opts = {**DEFAULTS, **options}
    size = int(opts["size"])
    kernels = style.random_feature_kernels(jax.random.key(int(opts["seed"])))
    content, style_image = (_pattern(dataset, str(opts[k]), size) for k in ("content", "style"))
    features = functools.partial(style.random_features, kernels)
    st = Stylization(
        content=content,
        style=style_image,
        kernels=tuple(kernels),
        targets=style.style_targets(features, jnp.asarray(content), jnp.asarray(style_image)),
        weights={
            "content_weight": float(opts["content_weight"]),
            "style_weight": float(opts["style_weight"]),
            "tv_weight": float(opts["tv_weight"]),
        },
    )
    return Task(init=st.init, loss=st.loss, model=st)


def _config(quick: bool) -> TrainConfig:
    """300 Adam steps (quick: 100) at a constant 0.05 on the image logits."""
    return TrainConfig(
        steps=100 if quick else 300,
        batch_size=8,
        lr=0.05,
        schedule="constant",
        clip_norm=None,
        ema_decay=None,
        log_every=50,
    )


def _evaluate(task: Task, params, dataset: Dataset, key) -> Report:
    del dataset, key
    st: Stylization = task.model
    _, start = st.objective(jnp.asarray(st.content))
    _, end = st.objective(jnp.asarray(st.image(params)))
    bound_unit = st.style_image_content_loss()
    return Report(
        metric="style loss",
        value=float(end["style"]),
        baseline="content image (start of the optimisation)",
        baseline_value=float(start["style"]),
        extra={
            "style_reduction_factor": float(start["style"] / end["style"]),
            "content_loss": float(end["content"]),
            "content_loss_of_style_image": bound_unit,
            "content_ratio": float(end["content"]) / bound_unit,
            "content_bound": CONTENT_BOUND,
        },
    )


def _figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """Content, style and result side by side (``stylized.png``)."""
    del dataset, key
    st: Stylization = task.model
    images = np.concatenate([st.content, st.style, st.image(params)])
    return [
        viz.image_grid(images, out_dir / "stylized.png", ncols=3, title="content / style / result")
    ]


def stylize_images(
    content: str,
    style_source: str,
    out: str | Path,
    *,
    size: int = 48,
    steps: int = 300,
    lr: float = 0.05,
    style_weight: float = 1000.0,
    tv_weight: float = 0.0,
    seed: int = 0,
    vgg: str | None = None,
) -> tuple[list[Path], dict[str, np.ndarray]]:
    """:func:`genjax.style.stylize` of two images (files or pattern names,
    :func:`genjax.style.load_image`) at ``size``, with random features of ``seed`` or the VGG-16
    weights in the ``.npz`` file ``vgg``; writes ``stylized.png`` (content / style / result),
    ``result.png`` and ``loss_curve.png`` in ``out``. Returns the paths and the loss history.

    Derivation: derivations/17-style-transfer.md
    """
    content_image = style.load_image(content, size)
    target = style.load_image(style_source, size)
    if vgg:
        features = style.vgg_features(vgg)
    else:
        kernels = style.random_feature_kernels(jax.random.key(seed))
        features = functools.partial(style.random_features, kernels)
    result = style.stylize(
        content_image,
        target,
        features,
        steps=steps,
        lr=lr,
        style_weight=style_weight,
        tv_weight=tv_weight,
    )
    out = Path(out)
    image = np.asarray(result.image)
    images = np.concatenate([content_image, target, image])
    paths = [
        viz.image_grid(images, out / "stylized.png", ncols=3, title="content / style / result"),
        viz.image_grid(image, out / "result.png"),
        style.plot_history(result.history, out / "loss_curve.png"),
    ]
    return paths, result.history


_SUMMARY = "Gatys stylisation of a generated image with random multi-scale conv features"
_RECIPE = Recipe("style_transfer", _SUMMARY, make_task, _config, _evaluate, _figures)
_OPTIONS = {**DEFAULTS, "seed": Option(0, low=0)}
register(_RECIPE._replace(data="patterns", draws_batches=True, options=_OPTIONS, tour_steps=150))
