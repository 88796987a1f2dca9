r"""Training tips as tested functions: label smoothing, softmax temperature, schedules, gradient
clipping, dynamic loss scaling, EMA, LoRA adapters, distillation and int8 quantisation.

* :func:`smooth_labels`, :func:`smoothed_cross_entropy` — targets
  :math:`(1-\varepsilon)\,\mathrm{onehot} + \varepsilon/K`;
* :func:`softmax_with_temperature` — :math:`\mathrm{softmax}(z / T)`;
* :func:`warmup_cosine` (the loop's own schedule, :func:`genjax.train.learning_rate_schedule`)
  and :func:`reduce_on_plateau` (optax's);
* :func:`clip_by_global_norm` — rescale a gradient pytree to norm at most :math:`c`;
* :class:`LossScale`, :func:`scaled_value_and_grad` — dynamic loss scaling for float16;
* :func:`ema_debiased` — the loop's EMA (:func:`genjax.train.ema_update`) with Adam's bias
  correction;
* :class:`LoRADense`, :func:`merge_lora`, :func:`lora_trainable_mask` — low-rank adapters;
* :func:`distillation_loss` — :math:`T^2\,\mathrm{KL}(p_T^{\text{teacher}} \|
  p_T^{\text{student}})`;
* :func:`quantize_int8`, :func:`dequantize_int8` — symmetric post-training int8 weights.

Derivation: derivations/18-training-tips.md
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from genjax import divergences, train
from genjax._checks import int_at_least, positive_int

__all__ = [
    "LoRADense",
    "LossScale",
    "MLPClassifier",
    "Quantized",
    "clip_by_global_norm",
    "count_params",
    "dequantize_int8",
    "digits_experiments",
    "distillation_loss",
    "ema_debiased",
    "fake_quantize_params",
    "lora_trainable_mask",
    "merge_lora",
    "quantize_int8",
    "reduce_on_plateau",
    "scaled_value_and_grad",
    "smooth_labels",
    "smoothed_cross_entropy",
    "softmax_with_temperature",
    "warmup_cosine",
]

PyTree = Any


# ----------------------------------------------------------------------------- targets and logits


def smooth_labels(
    labels: Int[Array, "*batch"], num_classes: int, epsilon: float
) -> Float[Array, "*batch k"]:
    r"""Label-smoothed targets :math:`q = (1 - \varepsilon)\,e_y + \varepsilon\,u`, with
    :math:`u = \mathbf 1/K` the uniform distribution.

    Args:
      labels: integer class ids ``[*batch]`` in ``[0, num_classes)``.
      num_classes: :math:`K \ge 2`.
      epsilon: :math:`\varepsilon \in [0, 1]`.

    Returns:
      Probability vectors ``[*batch, K]``.

    References:
      Szegedy et al., *Rethinking the Inception Architecture for Computer Vision*, 2016,
      https://arxiv.org/abs/1512.00567

    Derivation: derivations/18-training-tips.md
    """
    int_at_least("num_classes", num_classes, 2)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    onehot = jax.nn.one_hot(labels, num_classes)
    return (1.0 - epsilon) * onehot + epsilon / num_classes


def smoothed_cross_entropy(
    logits: Float[Array, "*batch k"], labels: Int[Array, "*batch"], epsilon: float
) -> Float[Array, "*batch"]:
    r"""Cross-entropy against label-smoothed targets.

    .. math::
       -\sum_k q_k \log p_k = (1-\varepsilon)\,\mathrm{CE}(e_y, p) + \varepsilon\,\mathrm{CE}(u, p)

    Args:
      logits: ``[*batch, K]``.
      labels: ``[*batch]``.
      epsilon: smoothing :math:`\varepsilon`.

    Returns:
      ``[*batch]`` (nats).

    Derivation: derivations/18-training-tips.md
    """
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or jnp.shape(labels) != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {logits.shape[:-1]} (logits without the class axis), got "
            f"{jnp.shape(labels)}"
        )
    targets = smooth_labels(labels, logits.shape[-1], epsilon)
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def softmax_with_temperature(
    logits: Float[Array, "*batch k"], temperature: float
) -> Float[Array, "*batch k"]:
    r""":math:`p_i = \exp(z_i / T) / \sum_j \exp(z_j / T)`: :math:`T \to 0` tends to the argmax,
    :math:`T \to \infty` to the uniform distribution, :math:`T = 1` is the softmax.

    Args:
      logits: :math:`z`, ``[*batch, K]``.
      temperature: :math:`T > 0`.

    Returns:
      ``[*batch, K]``.

    Derivation: derivations/18-training-tips.md
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return jax.nn.softmax(jnp.asarray(logits) / temperature, axis=-1)


# ----------------------------------------------------------------------------- schedules


def warmup_cosine(
    peak_lr: float, warmup_steps: int, total_steps: int, final_fraction: float = 0.0
) -> optax.Schedule:
    r"""Linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to
    ``peak_lr * final_fraction`` at ``total_steps``: the schedule the training loop uses
    (:func:`genjax.train.learning_rate_schedule`), for use outside it.

    .. math::
       \eta_t = \eta\,\frac{t}{W}\ (t < W), \qquad
       \eta_t = \eta\Big(f + (1-f)\tfrac12\big(1+\cos\tfrac{\pi (t-W)}{T-W}\big)\Big)\ (t \ge W)

    Derivation: derivations/18-training-tips.md
    """
    positive_int("total_steps", total_steps)
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be an int in [0, total_steps), got {warmup_steps!r}")
    if not 0.0 <= final_fraction <= 1.0:
        raise ValueError(f"final_fraction must be in [0, 1], got {final_fraction}")
    config = train.TrainConfig(
        steps=total_steps,
        lr=peak_lr,
        warmup_steps=warmup_steps,
        schedule="cosine",
        final_lr_fraction=final_fraction,
        log_every=1,
    )
    return train.learning_rate_schedule(config)


def reduce_on_plateau(
    factor: float = 0.5, patience: int = 10, rtol: float = 1e-4, cooldown: int = 0
) -> optax.GradientTransformationExtraArgs:
    r"""Multiply the updates by ``factor`` when the loss has not improved by a relative
    ``rtol`` for ``patience`` consecutive updates (optax's ``contrib.reduce_on_plateau``).

    Chain it after the optimiser and pass the loss: ``tx.update(g, state, params,
    value=loss)``. The current multiplier is ``state.scale``.

    Derivation: derivations/18-training-tips.md
    """
    if not 0.0 < factor < 1.0:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    positive_int("patience", patience)
    return optax.contrib.reduce_on_plateau(
        factor=factor, patience=patience, rtol=rtol, cooldown=cooldown
    )


# ----------------------------------------------------------------------------- gradients


def clip_by_global_norm(grads: PyTree, max_norm: float) -> tuple[PyTree, jax.Array]:
    r"""Rescale a gradient pytree so its global norm is at most :math:`c`:
    :math:`g \leftarrow g \cdot \min(1, c / \lVert g\rVert_2)`, with
    :math:`\lVert g\rVert_2^2 = \sum_{\text{leaves}}\sum g^2`. The direction is kept.

    Returns:
      ``(clipped grads, norm before clipping)``.

    References:
      Pascanu, Mikolov, Bengio, *On the difficulty of training recurrent neural networks*,
      2013, https://arxiv.org/abs/1211.5063

    Derivation: derivations/18-training-tips.md
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    norm = optax.tree.norm(grads)
    factor = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda g: (g * factor).astype(g.dtype), grads), norm


@flax.struct.dataclass
class LossScale:
    """Dynamic loss-scaling state.

    Attributes:
      scale: the current loss scale :math:`S` (float32 scalar).
      good_steps: consecutive finite steps since the last change (int32 scalar).
      period: grow :math:`S` by ``factor`` after this many finite steps (static).
      factor: growth and back-off factor (static).

    Derivation: derivations/18-training-tips.md
    """

    scale: jax.Array
    good_steps: jax.Array
    period: int = flax.struct.field(pytree_node=False, default=2000)
    factor: float = flax.struct.field(pytree_node=False, default=2.0)

    @classmethod
    def create(cls, initial: float = 2.0**15, period: int = 2000, factor: float = 2.0):
        if not initial > 0 or period < 1 or not factor > 1:
            raise ValueError(
                f"need initial > 0, period >= 1, factor > 1; got {initial}, {period}, {factor}"
            )
        return cls(jnp.float32(initial), jnp.int32(0), period, factor)

    def update(self, finite: jax.Array) -> LossScale:
        """Back off (:math:`S/\\text{factor}`, counter reset) on a non-finite step; otherwise
        count, and grow (:math:`S \\cdot \\text{factor}`) after ``period`` finite steps."""
        grow = finite & (self.good_steps + 1 >= self.period)
        scale = jnp.where(
            finite, jnp.where(grow, self.scale * self.factor, self.scale), self.scale / self.factor
        )
        good = jnp.where(finite & ~grow, self.good_steps + 1, 0)
        return self.replace(scale=scale, good_steps=good.astype(jnp.int32))


def scaled_value_and_grad(
    loss_fn: Callable[..., jax.Array], loss_scale: LossScale, *args
) -> tuple[jax.Array, PyTree, jax.Array, LossScale]:
    r"""Gradient of a low-precision loss through dynamic loss scaling.

    Differentiates :math:`S\cdot L` (so small gradients stay above float16's underflow,
    :math:`6\times10^{-8}`), casts the gradients to float32 and divides by :math:`S`. If any is
    inf/NaN the step must be skipped and :math:`S` halves; after ``period`` finite steps
    :math:`S` doubles.

    Args:
      loss_fn: ``loss_fn(params, *rest) -> scalar`` computed in low precision.
      loss_scale: the :class:`LossScale` state.
      *args: ``params`` first, then the rest of ``loss_fn``'s arguments.

    Returns:
      ``(loss, float32 grads of the unscaled loss, finite flag, new LossScale)``; apply the
      update only where ``finite``.

    References:
      Micikevicius et al., *Mixed Precision Training*, 2018, https://arxiv.org/abs/1710.03740

    Derivation: derivations/18-training-tips.md
    """

    def scaled(params, *rest):
        loss = loss_fn(params, *rest)
        return loss * loss_scale.scale.astype(loss.dtype), loss

    (_, loss), grads = jax.value_and_grad(scaled, has_aux=True)(*args)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32) / loss_scale.scale, grads)
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    return loss, grads, finite, loss_scale.update(finite)


def ema_debiased(ema: PyTree, decay: float, step: int | jax.Array) -> PyTree:
    r"""Bias-corrected EMA :math:`\hat\theta_t = \bar\theta_t / (1 - \delta^t)` for an EMA
    started at zero (:math:`\bar\theta_0 = 0`) and updated by :func:`genjax.train.ema_update`
    :math:`t \ge 1` times.

    Derivation: derivations/18-training-tips.md
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    correction = 1.0 - decay ** jnp.asarray(step, jnp.float32)
    return jax.tree.map(lambda e: e / correction, ema)


# ----------------------------------------------------------------------------- LoRA


class LoRADense(nn.Module):
    r"""A Dense layer with a low-rank adapter: :math:`y = xW + b + \frac{\alpha}{r}\,x A B`.

    :math:`W \in \mathbb R^{d_{in}\times d_{out}}` and :math:`b` are the (frozen) base
    parameters, ``kernel`` and ``bias`` like ``flax.linen.Dense``; :math:`A \in
    \mathbb R^{d_{in}\times r}` starts Gaussian with variance :math:`1/d_{in}` and :math:`B \in
    \mathbb R^{r\times d_{out}}` at zero, so before training the layer *is* the base layer. The
    adapter adds :math:`r(d_{in} + d_{out})` parameters. Train only ``lora_a``/``lora_b``
    (:func:`lora_trainable_mask`); :func:`merge_lora` folds them into ``kernel``.

    References:
      Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models*, 2021,
      https://arxiv.org/abs/2106.09685

    Derivation: derivations/18-training-tips.md
    """

    features: int
    rank: int = 4
    alpha: float = 4.0

    @nn.compact
    def __call__(self, x):
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        d_in = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (d_in, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        a = self.param("lora_a", nn.initializers.normal(1.0 / np.sqrt(d_in)), (d_in, self.rank))
        b = self.param("lora_b", nn.initializers.zeros, (self.rank, self.features))
        scale = self.alpha / self.rank
        y = x @ kernel + scale * ((x @ a) @ b)  # [..., features]
        return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + bias.shape)


def merge_lora(params: PyTree, alpha: float, rank: int) -> PyTree:
    r"""Fold every adapter into its base kernel, :math:`W' = W + \frac{\alpha}{r}AB`, and drop
    ``lora_a``/``lora_b``: the result is a plain ``flax.linen.Dense`` parameter tree with the
    same forward pass.

    Derivation: derivations/18-training-tips.md
    """

    def merge(tree):
        if isinstance(tree, dict) and "lora_a" in tree:
            kernel = tree["kernel"] + (alpha / rank) * tree["lora_a"] @ tree["lora_b"]
            return {k: v for k, v in tree.items() if not k.startswith("lora_")} | {"kernel": kernel}
        if isinstance(tree, dict):
            return {k: merge(v) for k, v in tree.items()}
        return tree

    return merge(flax.core.unfreeze(params))


def lora_trainable_mask(params: PyTree) -> PyTree:
    """``True`` at ``lora_a``/``lora_b`` leaves, ``False`` elsewhere: pass to
    ``optax.masked`` (or label for ``optax.multi_transform``) to freeze the base.

    Derivation: derivations/18-training-tips.md
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    mask = {k: k[-1] in ("lora_a", "lora_b") for k in flat}
    return flax.traverse_util.unflatten_dict(mask)


def count_params(params: PyTree, mask: PyTree | None = None) -> int:
    """Number of scalars in ``params`` (only where ``mask`` is True, if given).

    Derivation: derivations/18-training-tips.md
    """
    sizes = jax.tree.map(lambda p: int(np.prod(p.shape)), params)
    if mask is not None:
        sizes = jax.tree.map(lambda s, m: s if m else 0, sizes, mask)
    return int(sum(jax.tree.leaves(sizes)))


# ----------------------------------------------------------------------------- distillation


def distillation_loss(
    student_logits: Float[Array, "*batch k"],
    teacher_logits: Float[Array, "*batch k"],
    temperature: float = 4.0,
) -> Float[Array, "*batch"]:
    r"""Knowledge-distillation loss, temperature-softened and rescaled by :math:`T^2`.

    .. math::
       \mathcal L_{\text{KD}} = T^2\,\mathrm{KL}\big(\mathrm{softmax}(v/T)\,\big\|\,
       \mathrm{softmax}(z/T)\big), \qquad
       \frac{\partial\mathcal L_{\text{KD}}}{\partial z_i} = T\,(p_i - q_i)

    with :math:`z` the student's and :math:`v` the teacher's logits, :math:`p, q` their
    softened distributions. For large :math:`T` and zero-mean logits the gradient tends to
    :math:`(z_i - v_i)/K`: the :math:`T^2` keeps its size independent of :math:`T`, so the soft
    term can be mixed with the hard-label loss at a fixed weight.

    Args:
      student_logits, teacher_logits: ``[*batch, K]``.
      temperature: :math:`T > 0`.

    Returns:
      ``[*batch]`` (nats).

    References:
      Hinton, Vinyals, Dean, *Distilling the Knowledge in a Neural Network*, 2015,
      https://arxiv.org/abs/1503.02531

    Derivation: derivations/18-training-tips.md
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_logits, teacher_logits = jnp.asarray(student_logits), jnp.asarray(teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape [*batch, K], got "
            f"{student_logits.shape} and {teacher_logits.shape}"
        )
    t = temperature
    return t**2 * divergences.kl_from_logits(teacher_logits / t, student_logits / t)


# ----------------------------------------------------------------------------- quantisation


class Quantized(NamedTuple):
    """int8 values and the float32 scale(s) that map them back: ``w ≈ values * scale``.

    Derivation: derivations/18-training-tips.md
    """

    values: jax.Array
    scale: jax.Array


def quantize_int8(w: Float[Array, "..."], axis: int | None = None) -> Quantized:
    r"""Symmetric int8 quantisation: :math:`s = \max|w| / 127`,
    :math:`q = \mathrm{clip}(\mathrm{round}(w / s), -127, 127)`.

    Rounding to the nearest level bounds the error by half a step:
    :math:`|w - s\,q| \le s/2`. ``axis`` keeps one scale per slice along that axis
    (per-output-channel for ``axis=-1`` of a Dense kernel); ``None`` uses one scale for the whole
    tensor. An all-zero slice gets scale 1.

    References:
      Jacob et al., *Quantization and Training of Neural Networks for Efficient
      Integer-Arithmetic-Only Inference*, 2018, https://arxiv.org/abs/1712.05877

    Derivation: derivations/18-training-tips.md
    """
    w = jnp.asarray(w, jnp.float32)
    if axis is None:
        amax = jnp.max(jnp.abs(w))
    else:
        if not -w.ndim <= axis < w.ndim:
            raise ValueError(f"axis must be in [-{w.ndim}, {w.ndim}), got {axis}")
        reduce = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        amax = jnp.max(jnp.abs(w), axis=reduce, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
    return Quantized(q, scale)


def dequantize_int8(q: Quantized) -> jax.Array:
    r"""The float32 weights an int8 tensor stands for: :math:`\hat w = s\, q`, within
    :math:`s/2` of the quantised :math:`w` (:func:`quantize_int8`).

    Args:
      q: :class:`Quantized` int8 ``values`` and their ``scale`` (broadcasting against them).

    Returns:
      float32 array of ``q.values``' shape.

    Derivation: derivations/18-training-tips.md
    """
    return q.values.astype(jnp.float32) * q.scale


def fake_quantize_params(params: PyTree, axis: int | None = -1) -> PyTree:
    """Every kernel with at least two axes quantised to int8 and dequantised (biases and other
    vectors kept in float32): the parameters an int8 deployment would evaluate with.

    Derivation: derivations/18-training-tips.md
    """

    def one(path, p):
        name = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
        if name == "kernel" and p.ndim >= 2:
            return dequantize_int8(quantize_int8(p, axis))
        return p

    return jax.tree_util.tree_map_with_path(one, params)


# ----------------------------------------------------------------------------- digits experiments


class MLPClassifier(nn.Module):
    """A ReLU MLP classifier on flattened images; ``rank > 0`` makes every layer a
    :class:`LoRADense` (parameter names ``dense_0, dense_1, ...`` either way, so
    :func:`merge_lora` turns one tree into the other).

    Derivation: derivations/18-training-tips.md
    """

    hidden: tuple[int, ...] = (256, 256)
    num_classes: int = 10
    rank: int = 0
    alpha: float = 4.0

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)  # [B, H*W*C]
        sizes = (*self.hidden, self.num_classes)
        for i, size in enumerate(sizes):
            if self.rank:
                x = LoRADense(size, self.rank, self.alpha, name=f"dense_{i}")(x)
            else:
                x = nn.Dense(size, name=f"dense_{i}")(x)
            if i < len(sizes) - 1:
                x = nn.relu(x)
        return x


def _accuracy(model: nn.Module, params, x, y) -> float:
    logits = jax.jit(model.apply)(params, jnp.asarray(x))
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y))


def _fit(init, loss, arrays, steps: int, lr: float, seed: int):
    config = train.TrainConfig(
        steps=steps,
        batch_size=64,
        lr=lr,
        warmup_steps=20,
        log_every=steps // 5,
        seed=seed,
        ema_decay=None,
    )
    return train.fit(train.Task(init=init, loss=loss), arrays, config, progress=False).params


def _copy(tree):
    """Fresh buffers: the loop donates its state, so a tree reused later must not be it."""
    return jax.tree.map(jnp.array, tree)


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def digits_experiments(
    dataset, steps: int = 1500, rank: int = 3, lora_lr: float = 1e-2, seed: int = 0
) -> dict:
    """The measured tips on ``digits``: int8 accuracy drop, LoRA vs full fine-tuning on
    inverted digits, and a distilled student vs the same student trained alone.

    A teacher MLP (64-256-256-10) is trained with the loop for ``steps`` updates. Then:

    * ``int8``: its test accuracy with every kernel quantised per output channel
      (:func:`fake_quantize_params`) against float32;
    * LoRA: the shifted task is the same digits with inverted intensities :math:`1 - x`; full
      fine-tuning updates every weight, LoRA (rank ``rank`` on every layer) only the adapters
      (the base stays in the loss's closure, so the optimiser never sees it; learning rate
      ``lora_lr``); both for ``steps`` updates; accuracy on the inverted test split, with the
      adapters' parameter count as a fraction of the base's;
    * distillation: a 64-16-10 student trained on labels alone vs on
      :math:`\\tfrac12\\mathrm{CE} + \\tfrac12\\,\\mathcal L_{\\text{KD}}(T=4)` from the teacher,
      same steps and seed.

    Returns:
      A dict of named accuracies and fractions.

    Derivation: derivations/18-training-tips.md
    """
    xtr, ytr = dataset.train["x"], dataset.train["y"]
    xte, yte = dataset.test["x"], dataset.test["y"]
    arrays = {"x": xtr, "y": ytr}
    k = dataset.num_classes
    teacher = MLPClassifier(num_classes=k)

    def plain_task(model):
        init = lambda key, batch: model.init(key, batch["x"])
        loss = lambda p, key, b: (jnp.mean(_ce(model.apply(p, b["x"]), b["y"])), {})
        return init, loss

    base = _fit(*plain_task(teacher), arrays, steps, 2e-3, seed)
    out = {"teacher_acc": _accuracy(teacher, base, xte, yte)}
    out["teacher_int8_acc"] = _accuracy(teacher, fake_quantize_params(base), xte, yte)

    # ---- LoRA vs full fine-tuning on inverted digits
    inverted = {"x": 1.0 - xtr, "y": ytr}
    ft_steps = max(5, steps // 5 * 5)
    out["inverted_before_finetune_acc"] = _accuracy(teacher, base, 1.0 - xte, yte)
    full = _fit(lambda key, b: _copy(base), plain_task(teacher)[1], inverted, ft_steps, 1e-3, seed)
    out["full_finetune_acc"] = _accuracy(teacher, full, 1.0 - xte, yte)

    lora_model = MLPClassifier(num_classes=k, rank=rank, alpha=2.0 * rank)
    lora_init = lora_model.init(jax.random.key(seed), jnp.asarray(xtr[:1]))["params"]
    adapters0 = {n: {a: lora_init[n][a] for a in ("lora_a", "lora_b")} for n in lora_init}

    def with_base(adapters):
        return {"params": {n: {**base["params"][n], **adapters[n]} for n in adapters}}

    def lora_loss(adapters, key, b):
        logits = lora_model.apply(with_base(adapters), b["x"])
        return jnp.mean(_ce(logits, b["y"])), {}

    adapters = _fit(lambda key, b: _copy(adapters0), lora_loss, inverted, ft_steps, lora_lr, seed)
    merged = {"params": merge_lora(with_base(adapters)["params"], 2.0 * rank, rank)}
    out["lora_finetune_acc"] = _accuracy(teacher, merged, 1.0 - xte, yte)
    out["lora_param_fraction"] = count_params(adapters) / count_params(base)
    out["lora_over_full"] = out["lora_finetune_acc"] / out["full_finetune_acc"]

    # ---- distillation
    student = MLPClassifier(hidden=(16,), num_classes=k)
    alone = _fit(*plain_task(student), arrays, steps, 2e-3, seed)
    teacher_apply = teacher.apply

    def kd_loss(p, key, b):
        logits = student.apply(p, b["x"])
        soft = distillation_loss(logits, teacher_apply(base, b["x"]), 4.0)
        return jnp.mean(0.5 * _ce(logits, b["y"]) + 0.5 * soft), {}

    distilled = _fit(plain_task(student)[0], kd_loss, arrays, steps, 2e-3, seed)
    out["student_alone_acc"] = _accuracy(student, alone, xte, yte)
    out["student_distilled_acc"] = _accuracy(student, distilled, xte, yte)
    return out
