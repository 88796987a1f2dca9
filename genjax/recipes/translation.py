r"""Image-to-image recipes: pix2pix and its ablations, CycleGAN and its no-cycle ablation, the
context encoder with L2 alone and with L2 + adversarial.

* ``pix2pix_cgan_l1``, ``pix2pix_l1``, ``pix2pix_cgan``: labels → canvas on the segmentation
  canvases (:func:`genjax.recipes.segmentation.canvases`): the one-hot label map in, the canvas
  out; U-Net generator, conditional :class:`genjax.translation.PatchGAN`. Metric: FID, in the
  digits CNN's features (:func:`genjax.classifier.digits_cnn`), between the 8x8 crops of the
  generated test canvases at the digits' boxes and the same crops of the real test canvases;
  baseline: the label map's strokes drawn at full intensity. Extra: the CNN's accuracy on the
  generated crops (the requested class), on the real crops, and the L1 error.
* ``cyclegan``, ``cyclegan_no_cycle``: digits (A) ↔ the hidden transform :math:`T` of digits (B,
  :func:`genjax.data.thick_inverted`) from disjoint halves of the training digits
  (:func:`genjax.data.unpaired_split`). Metric: test MSE of :math:`G(x)` to :math:`T(x)`;
  baseline: the identity map's MSE. Extra: an SVM fitted on :math:`T` of the training digits
  (:func:`genjax.classifier.fit_digits_classifier`) recovers the class of :math:`G(x)`.
* ``inpaint_l2``, ``inpaint_l2_adv``: the context encoder on 8x8 digits with the centre 4x4
  masked (:func:`genjax.data.square_masks`). Metric: FID of the completed test images against
  the test images (digits CNN); baseline: the mean training digit pasted into the hole. Extra:
  the hole's MSE.

**How the two players use the loop**: ``state.params`` holds the generator(s), trained by the
loop's optimiser and averaged by its EMA; ``state.extra`` holds the discriminator(s) and their
Adam state (rate 2e-4, :math:`\beta_1 = 0.5`, as pix2pix and CycleGAN use). Each step computes
both players' gradients at the current parameters and updates both (simultaneous steps). Every
loss draws its batch from the step's key (``draws_batches``).

Derivation: derivations/20-pix2pix.md, derivations/21-cyclegan.md
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax import classifier, metrics
from genjax import translation as T
from genjax.data import (
    Dataset,
    square_masks,
    thick_inverted,
    unpaired_split,
)
from genjax.recipes import Option, Recipe, Report, register
from genjax.recipes.common import fast_init_key
from genjax.recipes.segmentation import (
    NUM_CLASSES,
    TEST_CANVASES,
    TRAIN_CANVASES,
    canvases,
    draw_batch,
    label_colours,
    rows_figure,
)
from genjax.train import Task, TrainConfig, TrainState, ema_update

__all__ = [
    "Players",
    "adversarial_task",
    "canvas_crops",
    "cyclegan_task",
    "inpainting_task",
    "pix2pix_task",
    "translation_config",
]

WIDTHS = (16, 32)  #: the U-Net generators' channels per level
D_LR, D_B1 = 2e-4, 0.5  #: the discriminators' Adam (pix2pix and CycleGAN)
STEPS = {False: 400, True: 40}  #: pix2pix and the context encoder, by ``quick``
CYCLE_STEPS = {False: 1200, True: 40}  #: CycleGAN (two generators learning from no pairs)
CYCLE_D_LR = 2e-3  #: CycleGAN's discriminators learn at the generators' rate
FIGURE_N = 6
CHUNK = 250


def translation_config(quick: bool, steps: Mapping[bool, int] = STEPS) -> TrainConfig:
    """The generators' budget: ``steps[quick]`` updates of Adam 2e-3 (:math:`\beta_1 = 0.5`),
    batch 16, cosine decay, EMA 0.99.

    Derivation: derivations/20-pix2pix.md
    """
    steps = steps[quick]
    return TrainConfig(
        steps=steps, batch_size=16, lr=2e-3, ema_decay=0.99, log_every=steps // 4, b1=0.5
    )


class Players(NamedTuple):
    """A recipe's setup: networks, the pure losses, and the arrays evaluation reads.

    Attributes:
      name: the recipe.
      generators: name -> generator module (a U-Net, output through a sigmoid).
      discriminators: name -> :class:`genjax.translation.PatchGAN` (empty: no adversary).
      losses: ``(g_params, d_params, key, n) -> (g_loss, d_loss, metrics)``.
      example: name -> an input batch of each generator, for ``init``.
      d_example: name -> ``(x, condition)`` inputs of each discriminator, for ``init``.
      arrays: whatever evaluation and figures read.

    Derivation: derivations/20-pix2pix.md
    """

    name: str
    generators: Mapping[str, nn.Module]
    discriminators: Mapping[str, nn.Module]
    losses: Callable
    example: Mapping[str, Any]
    d_example: Mapping[str, Any]
    arrays: Mapping[str, Any]

    def generate(self, g_params, which: str, x):
        """Pixels in [0, 1]: the sigmoid of generator ``which`` on inputs ``x``."""
        return jax.nn.sigmoid(self.generators[which].apply(g_params[which], x))


def _init_players(key, players: Players, d_tx) -> tuple[dict, dict]:
    """Every generator's and discriminator's variables from ``key``, and the discriminators'
    optimiser state: ``(g_params, {"d": d_params, "d_opt": state})``."""
    nets = {**players.generators, **players.discriminators}
    keys = jax.random.split(key, len(nets))
    inputs = {**{k: (v,) for k, v in players.example.items()}, **players.d_example}
    params = {
        k: net.init(k_i, *inputs[k]) for k_i, (k, net) in zip(keys, nets.items(), strict=True)
    }
    g = {k: params[k] for k in players.generators}
    d = {k: params[k] for k in players.discriminators}
    return g, {"d": d, "d_opt": d_tx.init(d)}


def adversarial_task(players: Players, d_lr: float = D_LR) -> Task:
    """The loop's :class:`~genjax.train.Task` for ``players`` (see the module docstring), the
    discriminators trained by Adam at ``d_lr`` with :math:`\beta_1 = 0.5`.

    Derivation: derivations/20-pix2pix.md
    """
    d_tx = optax.adam(d_lr, b1=D_B1)

    def init(key, batch):
        return jax.jit(lambda k: _init_players(k, players, d_tx))(fast_init_key(key))

    def loss(params, key, batch):
        g_loss, _, m = players.losses(params, {}, key, batch["x"].shape[0])
        return g_loss, m

    def update(state: TrainState, key, batch, tx, ema_decay):
        n = batch["x"].shape[0]
        d = state.extra["d"]

        def g_obj(g):
            g_loss, _, m = players.losses(g, jax.lax.stop_gradient(d), key, n)
            return g_loss, m

        (g_loss, m), g_grads = jax.value_and_grad(g_obj, has_aux=True)(state.params)
        updates, opt_state = tx.update(g_grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        extra = state.extra
        if players.discriminators:
            g_fixed = jax.lax.stop_gradient(state.params)
            d_grads = jax.grad(lambda dd: players.losses(g_fixed, dd, key, n)[1])(d)
            d_updates, d_opt = d_tx.update(d_grads, state.extra["d_opt"], d)
            extra = {"d": optax.apply_updates(d, d_updates), "d_opt": d_opt}
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, ema_decay),
            extra=extra,
        )
        return new_state, {**m, "loss": g_loss}

    return Task(init=init, loss=loss, model=players, update=update)


# ----------------------------------------------------------------------------- pix2pix


def _one_hot(labels) -> jax.Array:
    return jax.nn.one_hot(labels, NUM_CLASSES)  # [..., H, W, K]


def pix2pix_task(dataset: Dataset, l1_weight: float, adversarial_weight: float, name: str) -> Task:
    r"""Labels → canvas: :func:`genjax.translation.pix2pix_losses` with the given weights
    (cGAN + L1: 100 and 1; L1 only: 100 and 0; cGAN only: 0 and 1).

    Derivation: derivations/20-pix2pix.md
    """
    train = canvases(dataset.name, "train", TRAIN_CANVASES)
    images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)
    gen = T.translation_unet(1, WIDTHS)
    disc = {"d": T.PatchGAN((32, 64))} if adversarial_weight else {}
    players = None

    def losses(g, d, key, n):
        x_lab, y = draw_batch(key, (labels, images), n)
        cond = _one_hot(x_lab)  # [n, H, W, K]
        fake = players.generate(g, "g", cond)
        if not d:  # no adversary: L1 alone
            l1 = jnp.mean(jnp.abs(fake - y))
            return l1_weight * l1, jnp.zeros(()), {"l1": l1}
        net = disc["d"]
        real_s = net.apply(d["d"], 2 * y - 1, cond)
        fake_d = net.apply(d["d"], 2 * jax.lax.stop_gradient(fake) - 1, cond)
        fake_g = net.apply(jax.lax.stop_gradient(d["d"]), 2 * fake - 1, cond)
        return T.pix2pix_losses(
            real_s,
            fake_d,
            fake_g,
            fake,
            y,
            l1_weight=l1_weight,
            adversarial_weight=adversarial_weight,
        )

    cond0 = _one_hot(labels[:2])
    players = Players(
        name,
        {"g": gen},
        disc,
        losses,
        {"g": cond0},
        {"d": (images[:2], cond0)},
        {},
    )
    return adversarial_task(players)


def canvas_crops(images, boxes, classes) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digit crops ``[M, 8, 8, 1]`` of canvases at their boxes, and their classes
    ``[M]`` (absent digits skipped).

    Derivation: derivations/20-pix2pix.md
    """
    crops, labels = [], []
    for img, bx, cl in zip(np.asarray(images), boxes, classes, strict=True):
        for (r, c), k in zip(bx, cl, strict=True):
            if k >= 0:
                crops.append(img[r : r + 8, c : c + 8])
                labels.append(k)
    return np.stack(crops), np.asarray(labels, np.int32)


def _pix2pix_outputs(players: Players, params, label_maps) -> np.ndarray:
    fn = jax.jit(lambda p, lab: players.generate(p, "g", _one_hot(lab)))
    return np.concatenate(
        [
            np.asarray(fn(params, label_maps[i : i + CHUNK]))
            for i in range(0, len(label_maps), CHUNK)
        ]
    )


def _evaluate_pix2pix(task: Task, params, dataset: Dataset, key) -> Report:
    test = canvases(dataset.name, "test", TEST_CANVASES)
    fake = _pix2pix_outputs(task.model, params, test.labels)
    real_crops, classes = canvas_crops(test.images, test.boxes, test.classes)
    fake_crops, _ = canvas_crops(fake, test.boxes, test.classes)
    strokes = (test.labels > 0).astype(np.float32)[..., None]
    base_crops, _ = canvas_crops(strokes, test.boxes, test.classes)
    cnn = classifier.digits_cnn(dataset)
    real_f = cnn.features(real_crops)
    return Report(
        metric="FID of generated digit crops (digits CNN)",
        value=metrics.fid(real_f, cnn.features(fake_crops)),
        baseline="label strokes at full intensity",
        baseline_value=metrics.fid(real_f, cnn.features(base_crops)),
        extra={
            "class_accuracy": float(np.mean(cnn.predict(fake_crops) == classes)),
            "real_crops_class_accuracy": float(np.mean(cnn.predict(real_crops) == classes)),
            "l1": float(np.mean(np.abs(fake - test.images))),
        },
    )


def _figures_pix2pix(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    test = canvases(dataset.name, "test", TEST_CANVASES)
    fake = _pix2pix_outputs(task.model, params, test.labels[:FIGURE_N])
    rows = {
        "input": label_colours(test.labels[:FIGURE_N]),
        "prediction": fake,
        "truth": test.images[:FIGURE_N],
    }
    name = task.model.name
    return [rows_figure(rows, out_dir / f"{name}.png", f"{name}: label map to canvas")]


# ----------------------------------------------------------------------------- CycleGAN


def cyclegan_task(
    dataset: Dataset, cycle_weight: float, name: str, identity_weight: float = 0.0
) -> Task:
    r"""Digits ↔ :math:`T`(digits) from disjoint halves: :func:`genjax.translation.cyclegan_losses`
    with ``cycle_weight`` (10, or 0 for the no-cycle ablation) and ``identity_weight`` (0 by
    default: :math:`T` inverts contrast, which a loss asking :math:`G(b) = b` resists; Zhu et
    al.'s choice is :math:`0.5 \lambda_{cyc} = 5`, the option ``identity_weight=5``).

    Derivation: derivations/21-cyclegan.md
    """
    split = unpaired_split(jax.random.key(0), dataset.train["x"], dataset.train["y"])
    a_all, b_all = jnp.asarray(split["a"]), jnp.asarray(split["b"])
    gens = {"g": T.translation_unet(1, WIDTHS), "f": T.translation_unet(1, WIDTHS)}
    discs = {"da": T.PatchGAN((32,)), "db": T.PatchGAN((32,))}
    players = None

    def losses(g, d, key, n):
        k_a, k_b = jax.random.split(key)
        (a,), (b,) = draw_batch(k_a, (a_all,), n), draw_batch(k_b, (b_all,), n)
        gen = functools.partial(players.generate, g)
        fake_b, fake_a = gen("g", a), gen("f", b)
        images = {
            "a": a,
            "b": b,
            "a_cycled": gen("f", fake_b),
            "b_cycled": gen("g", fake_a),
            "f_of_a": gen("f", a),
            "g_of_b": gen("g", b),
        }
        if not d:  # Task.loss, without the adversaries: the cycle and identity terms
            cyc = T.cycle_loss(a, images["a_cycled"], b, images["b_cycled"])
            ident = T.identity_loss(a, images["f_of_a"], b, images["g_of_b"])
            return cycle_weight * cyc + identity_weight * ident, jnp.zeros(()), {"cycle": cyc}
        sd = jax.lax.stop_gradient(d)

        def score(which, params, x):
            return discs[which].apply(params[which], 2 * x - 1)

        scores = {
            "real_a": score("da", d, a),
            "real_b": score("db", d, b),
            "fake_a_d": score("da", d, jax.lax.stop_gradient(fake_a)),
            "fake_b_d": score("db", d, jax.lax.stop_gradient(fake_b)),
            "fake_a_g": score("da", sd, fake_a),
            "fake_b_g": score("db", sd, fake_b),
        }
        return T.cyclegan_losses(
            scores, images, cycle_weight=cycle_weight, identity_weight=identity_weight
        )

    players = Players(
        name,
        gens,
        discs,
        losses,
        {"g": a_all[:2], "f": b_all[:2]},
        {"da": (a_all[:2],), "db": (b_all[:2],)},
        {},
    )
    return adversarial_task(players, d_lr=CYCLE_D_LR)


def _transformed_dataset(dataset: Dataset) -> Dataset:
    """``dataset`` with :math:`T` applied to both splits (for the class-recovery SVM)."""
    return dataset._replace(
        name=f"{dataset.name}_thick_inverted",
        train={**dataset.train, "x": thick_inverted(dataset.train["x"])},
        test={**dataset.test, "x": thick_inverted(dataset.test["x"])},
    )


def _cycle_outputs(players: Players, params, x) -> np.ndarray:
    return np.asarray(jax.jit(lambda p, v: players.generate(p, "g", v))(params, x))


def _evaluate_cyclegan(task: Task, params, dataset: Dataset, key) -> Report:
    x, y = dataset.test["x"], dataset.test["y"]
    truth = thick_inverted(x)
    fake = _cycle_outputs(task.model, params, x)
    svm = classifier.fit_digits_classifier(_transformed_dataset(dataset))
    return Report(
        metric="test MSE of G(x) to the hidden T(x)",
        value=float(np.mean((fake - truth) ** 2)),
        baseline="identity map x",
        baseline_value=float(np.mean((x - truth) ** 2)),
        extra={
            "class_accuracy": float(np.mean(svm(fake) == y)),
            "truth_class_accuracy": float(np.mean(svm(truth) == y)),
        },
    )


def _figures_cyclegan(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    x = dataset.test["x"][:FIGURE_N]
    rows = {
        "input": x,
        "prediction": _cycle_outputs(task.model, params, x),
        "truth": thick_inverted(x),
    }
    name = task.model.name
    return [rows_figure(rows, out_dir / f"{name}.png", f"{name}: A to B (hidden T)")]


# ----------------------------------------------------------------------------- inpainting

HOLE = 4  #: side of the centre square masked in each 8x8 digit


def inpainting_task(dataset: Dataset, adversarial_weight: float, name: str) -> Task:
    r"""The context encoder: :func:`genjax.translation.context_encoder_losses` with
    ``adversarial_weight`` (0: L2 alone) on the centre-masked training digits.

    Derivation: derivations/20-pix2pix.md
    """
    x_all = jnp.asarray(dataset.train["x"])
    mask = jnp.asarray(square_masks(jax.random.key(0), 1, image_size=8, hole=HOLE))  # [1, 8, 8, 1]
    gen = T.translation_unet(1, WIDTHS)
    discs = {"d": T.PatchGAN((32,))} if adversarial_weight else {}
    players = None

    def losses(g, d, key, n):
        (x,) = draw_batch(key, (x_all,), n)
        masks = jnp.broadcast_to(mask, x.shape)
        pred = players.generate(g, "g", T.masked_input(x, masks))
        if not d:
            return T.context_encoder_losses(x, pred, masks)
        done = (1 - masks) * x + masks * pred
        net = discs["d"]
        return T.context_encoder_losses(
            x,
            pred,
            masks,
            net.apply(d["d"], 2 * x - 1),
            net.apply(d["d"], 2 * jax.lax.stop_gradient(done) - 1),
            net.apply(jax.lax.stop_gradient(d["d"]), 2 * done - 1),
            adversarial_weight=adversarial_weight,
        )

    example = T.masked_input(x_all[:2], jnp.broadcast_to(mask, x_all[:2].shape))
    players = Players(
        name, {"g": gen}, discs, losses, {"g": example}, {"d": (x_all[:2],)}, {"mask": mask}
    )
    return adversarial_task(players)


def _completed(players: Players, params, x) -> np.ndarray:
    mask = np.broadcast_to(np.asarray(players.arrays["mask"]), x.shape)
    pred = np.asarray(
        jax.jit(lambda p, v, m: players.generate(p, "g", T.masked_input(v, m)))(params, x, mask)
    )
    return (1 - mask) * x + mask * pred


def _evaluate_inpainting(task: Task, params, dataset: Dataset, key) -> Report:
    x = dataset.test["x"]
    mask = np.broadcast_to(np.asarray(task.model.arrays["mask"]), x.shape)
    done = _completed(task.model, params, x)
    mean_digit = dataset.train["x"].mean(0, keepdims=True)
    base = (1 - mask) * x + mask * mean_digit
    cnn = classifier.digits_cnn(dataset)
    real_f = cnn.features(x)
    hole = float(mask.sum())
    return Report(
        metric="FID of completed test digits (digits CNN)",
        value=metrics.fid(real_f, cnn.features(done)),
        baseline="mean training digit in the hole",
        baseline_value=metrics.fid(real_f, cnn.features(base)),
        extra={
            "hole_mse": float(np.sum(mask * (done - x) ** 2) / hole),
            "baseline_hole_mse": float(np.sum(mask * (base - x) ** 2) / hole),
            "class_accuracy": float(np.mean(cnn.predict(done) == dataset.test["y"])),
        },
    )


def _figures_inpainting(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    x = dataset.test["x"][:FIGURE_N]
    mask = np.broadcast_to(np.asarray(task.model.arrays["mask"]), x.shape)
    rows = {"input": (1 - mask) * x + mask * 0.5, "prediction": _completed(task.model, params, x)}
    rows["truth"] = x
    name = task.model.name
    return [rows_figure(rows, out_dir / f"{name}.png", f"{name}: centre {HOLE}x{HOLE} filled")]


# ----------------------------------------------------------------------------- registry

_PIX2PIX = {
    "pix2pix_cgan_l1": (100.0, 1.0, "pix2pix, labels to canvas: cGAN + 100 L1, PatchGAN"),
    "pix2pix_l1": (100.0, 0.0, "pix2pix ablation: L1 alone (no discriminator)"),
    "pix2pix_cgan": (0.0, 1.0, "pix2pix ablation: cGAN alone (no L1)"),
}
for _name, (_l1, _adv, _summary) in _PIX2PIX.items():
    register(
        Recipe(
            name=_name,
            summary=_summary,
            make_task=lambda ds, opts, _l1=_l1, _adv=_adv, _name=_name: pix2pix_task(
                ds, opts.get("l1_weight", _l1), _adv, _name
            ),
            options={"l1_weight": _l1},
            config=translation_config,
            evaluate=_evaluate_pix2pix,
            figures=_figures_pix2pix,
            draws_batches=True,
            quick_tour=_name == "pix2pix_cgan_l1",
            tour_steps=STEPS[False] // 2 if _name == "pix2pix_cgan_l1" else None,
        )
    )

_CYCLE = {
    "cyclegan": (10.0, "CycleGAN digits <-> hidden T(digits): LSGAN + cycle + identity"),
    "cyclegan_no_cycle": (0.0, "CycleGAN ablation: no cycle-consistency loss"),
}
for _name, (_w, _summary) in _CYCLE.items():
    register(
        Recipe(
            name=_name,
            summary=_summary,
            make_task=lambda ds, opts, _w=_w, _name=_name: cyclegan_task(
                ds, _w, _name, opts.get("identity_weight", 0.0)
            ),
            options={"identity_weight": 0.0},
            config=functools.partial(translation_config, steps=CYCLE_STEPS),
            evaluate=_evaluate_cyclegan,
            figures=_figures_cyclegan,
            draws_batches=True,
        )
    )

_INPAINT = {
    "inpaint_l2": (0.0, "context encoder, centre 4x4 of digits: L2 on the hole"),
    "inpaint_l2_adv": (0.1, "context encoder: L2 + adversarial (joint loss)"),
}
for _name, (_w, _summary) in _INPAINT.items():
    register(
        Recipe(
            name=_name,
            summary=_summary,
            make_task=lambda ds, opts, _w=_w, _name=_name: inpainting_task(
                ds, opts.get("adversarial_weight", _w), _name
            ),
            options={"adversarial_weight": Option(_w, 0.0, 1.0)} if _w else {},
            config=translation_config,
            evaluate=_evaluate_inpainting,
            figures=_figures_inpainting,
            draws_batches=True,
        )
    )
