r"""Captioning recipe: ``captioning_digits``, an encoder–decoder from 4x4 patches to captions.

The loop batches the ``digits`` training images and labels; the loss draws one caption per
example from the ``"train"`` phrasings (:func:`genjax.captions.draw_captions`, a fresh phrasing
per step) and trains two models side by side on the same captions: the
:class:`genjax.captioning.Captioner` and the same decoder without the image
(``Captioner(image_blind=True)``), the baseline. Their parameters are disjoint, so the summed
loss trains each as if alone.

* Metric: held-out test loss in **nats per caption token** (EOS included, BOS and PAD not),
  averaged exactly over every training phrasing of every test image.
* Baseline: the image-blind decoder on the same captions; its floor is the caption entropy
  :math:`\log 10 + \log 8` nats per caption (:func:`genjax.captioning.image_blind_entropy`).
* Extra: the fraction of greedy and of sampled (temperature 1) captions of the test images that
  name the right digit (:func:`genjax.captions.named_digit`), the same for the baseline, the
  fraction of greedy captions that are a training phrasing, the loss on the held-out phrasings,
  and the losses per caption beside the entropies.

Derivation: derivations/25-captioning.md
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genjax import captions
from genjax.captioning import Captioner, caption_nll, image_blind_entropy, sample
from genjax.data import Dataset
from genjax.recipes import Option, Recipe, Report, register
from genjax.recipes.common import fast_init_key
from genjax.train import Task, TrainConfig

__all__ = ["CaptionModels", "decode", "make_task", "named_accuracy"]

STEPS = {True: 300, False: 3000}  #: updates of the quick and full budgets
TOUR_STEPS = 1500  #: updates of the tour budget
FIGURE_IMAGES = 16
DECODE_LENGTH = max(int(captions.caption_table(s)[1].max()) for s in captions.SPLITS)


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionModels:
    r"""The captioner and its image-blind baseline, trained together on the same captions.

    The loss is the sum of the two models' NLL per caption token; their parameters are disjoint,
    so each gets the gradient it would get alone:

    .. math:: \text{nats per token} = \frac{\sum_b -\log p(c_b \mid x_b)}{\sum_b n_b}

    with :math:`n_b` the non-PAD targets of caption :math:`b`
    (:func:`genjax.captioning.caption_nll`).

    Attributes:
      captioner: the :class:`~genjax.captioning.Captioner`.
      blind: the same configuration with ``image_blind=True``.
      train_length: tokens per training caption (the longest training phrasing).
      sample_images: the images ``[n, H, W, C]`` that :meth:`sample` captions (test images).

    Derivation: derivations/25-captioning.md
    """

    captioner: Captioner
    blind: Captioner
    train_length: int
    sample_images: np.ndarray

    def models(self) -> dict[str, Captioner]:
        """``{"captioner": ..., "blind": ...}``, the keys of the parameters."""
        return {"captioner": self.captioner, "blind": self.blind}

    def losses(self, key, params, images, tokens):
        """NLL (nats) of each model on each caption ``tokens [B, L]`` of ``images``, and the
        number of predicted tokens of each: ``({"captioner": [B], "blind": [B]}, counts [B])``;
        with a PRNG ``key`` the models run with dropout drawn from it, with ``None``
        deterministically."""
        counts = jnp.sum(tokens[:, 1:] != captions.PAD, axis=1)  # [B]
        out = {}
        for name, model in self.models().items():
            kw = {} if key is None else {"deterministic": False, "rngs": {"dropout": key}}
            logits = model.apply(params[name], images, tokens[:, :-1], **kw)  # [B, L - 1, V]
            out[name] = caption_nll(logits, tokens)  # [B]
        return out, counts

    def init(self, key, batch):
        """Both models' parameters from one training image and an all-BOS caption."""
        tokens = jnp.zeros((1, self.train_length - 1), jnp.int32)
        x = jnp.asarray(batch["x"][:1])
        k1, k2 = jax.random.split(fast_init_key(key))
        return {
            "captioner": jax.jit(self.captioner.init)(k1, x, tokens),
            "blind": jax.jit(self.blind.init)(k2, x, tokens),
        }

    def loss(self, params, key, batch):
        """The summed NLL per caption token of one training phrasing per example, drawn from
        ``key`` (:func:`genjax.captions.draw_captions`)."""
        k_cap, k_drop = jax.random.split(key)
        tokens, _ = captions.draw_captions(k_cap, batch["y"])
        tokens = tokens[:, : self.train_length]  # [B, L]: only PAD beyond
        nll, counts = self.losses(fast_init_key(k_drop), params, batch["x"], tokens)
        per_token = {name: jnp.sum(v) / jnp.sum(counts) for name, v in nll.items()}
        metrics = {f"{name}_nats_per_token": v for name, v in per_token.items()}
        return per_token["captioner"] + per_token["blind"], metrics

    def sample(self, params, key, n: int):
        """Captions (tokens ``[n, DECODE_LENGTH]``) of the first ``n`` sample images, drawn at
        temperature 1."""
        images = jnp.asarray(self.sample_images[:n])
        return sample(key, self.captioner, params["captioner"], images, max_length=DECODE_LENGTH)


DEFAULTS = {"features": 32, "num_layers": 1, "num_heads": 4, "patch": 4, "dropout": 0.1}


def make_task(dataset: Dataset, options: Mapping[str, Any]) -> Task:
    """The loop's task: both models' NLL per caption token of one training phrasing per example,
    drawn from the step's key (:class:`CaptionModels`).

    Options: ``features``, ``num_layers``, ``num_heads``, ``patch``, ``dropout``.

    Derivation: derivations/25-captioning.md
    """
    opts = {**DEFAULTS, **options}
    config = dict(
        patch=int(opts["patch"]),
        features=int(opts["features"]),
        num_layers=int(opts["num_layers"]),
        num_heads=int(opts["num_heads"]),
        dropout_rate=float(opts["dropout"]),
    )
    models = CaptionModels(
        Captioner(**config),
        Captioner(**config, image_blind=True),
        int(captions.caption_table("train")[1].max()),
        dataset.test["x"],
    )
    return Task(init=models.init, loss=models.loss, sample=models.sample, model=models)


def _config(quick: bool) -> TrainConfig:
    if quick:  # a smaller batch at a higher rate, and no EMA, to show learning in a few seconds
        return TrainConfig(
            steps=STEPS[True],
            batch_size=32,
            lr=5e-3,
            warmup_steps=30,
            ema_decay=None,
            log_every=100,
        )
    return TrainConfig(
        steps=STEPS[False],
        batch_size=64,
        lr=3e-3,
        warmup_steps=50,
        ema_decay=0.99,
        log_every=250,
    )


@functools.partial(jax.jit, static_argnums=(0,))
def _all_phrasing_losses(models: CaptionModels, params, images, labels, table):
    """NLL of each model for every phrasing of ``table`` ``[10, P, L]`` of every image,
    ``{name: [n, P]}``, and the token counts ``[n, P]``."""
    tokens = table[labels]  # [n, P, L]
    n, num_phrasings, length = tokens.shape
    tokens = tokens.reshape(n * num_phrasings, length)  # [n P, L]
    images = jnp.repeat(images, num_phrasings, axis=0)  # [n P, H, W, C]
    nll, counts = models.losses(None, params, images, tokens)
    shape = (n, num_phrasings)
    return {k: v.reshape(shape) for k, v in nll.items()}, counts.reshape(shape)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _decode(model: Captioner, params, key, images, temperature: float):
    return sample(key, model, params, images, temperature=temperature, max_length=DECODE_LENGTH)


def decode(key, model: Captioner, params, images, temperature: float) -> list[str]:
    """The caption strings of ``images`` decoded at ``temperature`` (0: greedy), jitted once per
    model and temperature.

    Derivation: derivations/25-captioning.md
    """
    return captions.detokenize(
        np.asarray(_decode(model, params, key, jnp.asarray(images), temperature))
    )


def named_accuracy(texts: list[str], labels) -> float:
    """The fraction of ``texts`` whose :func:`genjax.captions.named_digit` is the label.

    Derivation: derivations/25-captioning.md
    """
    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(
            f"texts and labels must have one length, got {len(texts)} and {len(labels)}"
        )
    return float(
        np.mean([captions.named_digit(t) == int(y) for t, y in zip(texts, labels, strict=True)])
    )


def _evaluate(task: Task, params, dataset: Dataset, key) -> Report:
    models: CaptionModels = task.model
    x, y = jnp.asarray(dataset.test["x"]), jnp.asarray(dataset.test["y"])
    # every phrasing of both sets in one pass: [10, P_train + P_held_out, L]
    tables = [captions.caption_table(split)[0] for split in captions.SPLITS]
    nll, counts = _all_phrasing_losses(models, params, x, y, jnp.asarray(np.concatenate(tables, 1)))
    per_token, per_caption, start = {}, {}, 0
    for split, table in zip(captions.SPLITS, tables, strict=True):
        cols = slice(start, start + table.shape[1])
        start += table.shape[1]
        for name, v in nll.items():
            total = float(jnp.sum(v[:, cols]))
            per_token[name, split] = total / float(jnp.sum(counts[:, cols]))
            per_caption[name, split] = total / v[:, cols].size
    k_greedy, k_sampled = jax.random.split(key)
    greedy = decode(k_greedy, models.captioner, params["captioner"], x, 0.0)
    sampled = decode(k_sampled, models.captioner, params["captioner"], x, 1.0)
    # the blind decoder's greedy caption is the same for every image: decode it once
    blind_greedy = decode(k_greedy, models.blind, params["blind"], x[:1], 0.0) * len(y)
    train_phrasings = {p for c in range(10) for p in captions.phrasings(c)}
    train_counts = np.bincount(dataset.train["y"], minlength=10) / len(dataset.train["y"])
    return Report(
        metric="test loss, nats per caption token (training phrasings)",
        value=per_token["captioner", "train"],
        baseline="image-blind decoder (same captions)",
        baseline_value=per_token["blind", "train"],
        extra={
            "greedy_names_right_digit": named_accuracy(greedy, y),
            "sampled_names_right_digit": named_accuracy(sampled, y),
            "blind_greedy_names_right_digit": named_accuracy(blind_greedy, y),
            "greedy_is_a_training_phrasing": float(np.mean([t in train_phrasings for t in greedy])),
            "held_out_nats_per_token": per_token["captioner", "held_out"],
            "blind_held_out_nats_per_token": per_token["blind", "held_out"],
            "nats_per_caption": per_caption["captioner", "train"],
            "blind_nats_per_caption": per_caption["blind", "train"],
            "entropy_log_8": math.log(len(captions.TRAIN_TEMPLATES)),
            "blind_entropy_log_80": image_blind_entropy(),
            "blind_entropy_train_class_frequencies": image_blind_entropy(train_counts),
        },
    )


def _figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    models: CaptionModels = task.model
    x, y = dataset.test["x"][:FIGURE_IMAGES], dataset.test["y"][:FIGURE_IMAGES]
    greedy = decode(key, models.captioner, params["captioner"], x, 0.0)
    sampled = decode(key, models.captioner, params["captioner"], x, 1.0)
    ncols = 8
    nrows = math.ceil(len(x) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.1 * ncols, 2.5 * nrows + 0.5))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i >= len(x):
            continue
        ax.imshow(x[i, ..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        marks = [
            "" if captions.named_digit(t) == int(y[i]) else " (x)" for t in (greedy[i], sampled[i])
        ]
        ax.set_title(f"greedy: {greedy[i]}{marks[0]}\nsampled: {sampled[i]}{marks[1]}", fontsize=7)
    fig.suptitle("captions of test digits (greedy, and sampled at temperature 1; (x): wrong digit)")
    fig.tight_layout()
    path = out_dir / "captioning_digits.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


register(
    Recipe(
        name="captioning_digits",
        summary="encoder-decoder transformer from 4x4 patches to digit captions, vs image-blind",
        make_task=make_task,
        config=_config,
        evaluate=_evaluate,
        figures=_figures,
        quick_tour=True,
        options={**DEFAULTS, "dropout": Option(DEFAULTS["dropout"], 0.0, 0.9)},
        tour_steps=TOUR_STEPS,
    )
)
