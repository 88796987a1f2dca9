r"""Looking inside a classifier: saliency, guided backpropagation, CAM, Grad-CAM, activation
maximisation.

Every method is a pure function of ``(apply_fn, params, x, target)``:

* ``apply_fn(params, x, relu=jax.nn.relu) -> logits [N, classes]`` runs the network with
  ``relu`` as its activation; the guided methods pass a ReLU whose backward rule differs
  (:func:`guided_relu`, :func:`deconv_relu`), so the network must take its activation as an
  argument (as :class:`genjax.classifier.DigitsCNN` does);
* CAM and Grad-CAM need the last convolutional map :math:`A` as well, so for them ``apply_fn``
  is a :class:`SplitModel` — ``features(params, x, relu=...) -> A [N, h, w, K]`` and
  ``head(params, A) -> logits`` — itself an ``apply_fn``;
* ``x`` is ``[N, H, W, C]`` images and ``target`` the class, an int or ``[N]`` ints.

The methods:

* :func:`saliency` — :math:`\partial y_c / \partial x` (Simonyan et al. 2013);
* :func:`guided_backprop` — the same gradient with the guided ReLU rule
  :math:`R^{l} = \mathbb 1[f^l > 0]\,\mathbb 1[R^{l+1} > 0]\,R^{l+1}` (Springenberg et al. 2014),
  :func:`deconvnet` with :math:`R^l = \mathbb 1[R^{l+1} > 0]\,R^{l+1}` (Zeiler & Fergus 2014);
* :func:`cam` — :math:`\sum_k w^c_k A^k` for a global-average-pool + linear head (Zhou et al.
  2016);
* :func:`grad_cam` — :math:`\mathrm{ReLU}(\sum_k \alpha^c_k A^k)` with
  :math:`\alpha^c_k = \frac1{hw}\sum_{ij} \partial y_c / \partial A^k_{ij}` (Selvaraju et al.
  2017), and :func:`guided_grad_cam`, its upsampled product with guided backprop;
* :func:`activation_maximisation` — gradient ascent on :math:`y_c(x) - \lambda \|x\|^2`.

Derivation: derivations/15-interpretation.md
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

__all__ = [
    "METHODS",
    "SplitModel",
    "activation_maximisation",
    "cam",
    "deconv_relu",
    "deconvnet",
    "grad_cam",
    "guided_backprop",
    "guided_grad_cam",
    "guided_relu",
    "heatmap",
    "saliency",
    "saliency_map",
    "save_overlays",
    "upsample",
]

# ----------------------------------------------------------------------------- ReLU rules


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
    r"""ReLU whose backward pass is guided backpropagation's rule.

    Forward :math:`\max(x, 0)`; backward
    :math:`R^{l} = \mathbb 1[x > 0]\;\mathbb 1[R^{l+1} > 0]\;R^{l+1}`: the plain ReLU gradient
    keeps only the first indicator, the deconvnet rule (:func:`deconv_relu`) only the second.

    Derivation: derivations/15-interpretation.md
    """
    return jax.nn.relu(x)


def _guided_fwd(x):
    return jax.nn.relu(x), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, 0.0),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconv_relu(x: Array) -> Array:
    r"""ReLU whose backward pass is the deconvnet rule :math:`R^l = \max(R^{l+1}, 0)`: the
    signal is rectified on the way back and the forward activation pattern is ignored.

    Derivation: derivations/15-interpretation.md
    """
    return jax.nn.relu(x)


def _deconv_fwd(x):
    return jax.nn.relu(x), None


def _deconv_bwd(_, g):
    return (jax.nn.relu(g),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)


# ----------------------------------------------------------------------------- helpers


class SplitModel(NamedTuple):
    """A network split at its last convolutional map, for CAM and Grad-CAM.

    Attributes:
      features: ``features(params, x, relu=...) -> A [N, h, w, K]``.
      head: ``head(params, A) -> logits [N, classes]``.

    Calling it, ``model(params, x, relu=...)``, runs ``head(features(x))``: it is an
    ``apply_fn`` too.

    Derivation: derivations/15-interpretation.md
    """

    features: Callable
    head: Callable

    def __call__(self, params, x, relu: Callable = jax.nn.relu):
        return self.head(params, self.features(params, x, relu=relu))


def _check_inputs(x, target) -> tuple[Array, Array]:
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be images [N, H, W, C], got shape {x.shape}")
    target = jnp.asarray(target)
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise TypeError(f"target must be an int class or [N] ints, got dtype {target.dtype}")
    if target.ndim == 0:
        target = jnp.full((x.shape[0],), target)
    if target.shape != (x.shape[0],):
        raise ValueError(f"target must be an int or have shape [{x.shape[0]}], got {target.shape}")
    return x, target


def _check_classes(logits: Array, target: Array) -> None:
    if logits.ndim != 2 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"apply_fn must return logits [N, classes], got shape {logits.shape}")
    try:
        t = np.asarray(target)
    except jax.errors.TracerArrayConversionError:  # under jit: not checkable
        return
    if t.min() < 0 or t.max() >= logits.shape[1]:
        raise ValueError(f"target must be in [0, {logits.shape[1]}), got {t.min()}..{t.max()}")


def _check_call(logits_fn: Callable, x, target) -> tuple[Array, Array]:
    # x and target, then the logits' shape (by tracing logits_fn, no compute) and target's range.
    x, target = _check_inputs(x, target)
    _check_classes(jax.eval_shape(logits_fn, x), target)
    return x, target


def _check_split(apply_fn) -> SplitModel:
    if not isinstance(apply_fn, SplitModel):
        raise TypeError(
            "CAM and Grad-CAM need the last convolutional map: pass apply_fn as "
            f"SplitModel(features, head), got {type(apply_fn).__name__}"
        )
    return apply_fn


def _class_score(logits: Array, target: Array) -> Array:
    # sum over the batch of y_{target_n}: examples do not interact, so its gradient with respect
    # to x_n is example n's own gradient.
    return jnp.sum(jnp.take_along_axis(logits, target[:, None], axis=1))


def _jit_static(core: Callable, *static) -> Callable:
    # Run ``core`` jitted with the callables ``static`` as static arguments when they are
    # hashable (stable functions compile once per shape); otherwise eagerly.
    try:
        hash(static)
    except TypeError:
        return functools.partial(core, *static)
    return functools.partial(_JITTED(core), *static)


@functools.cache
def _JITTED(core: Callable) -> Callable:
    return jax.jit(core, static_argnums=tuple(range(core.__code__.co_argcount - 3)))


def _input_gradient_core(apply_fn, relu, params, x, target):
    return jax.grad(lambda v: _class_score(apply_fn(params, v, relu=relu), target))(x)


def _input_gradient(apply_fn, params, x, target, relu) -> Array:
    x, target = _check_call(lambda v: apply_fn(params, v, relu=relu), x, target)
    return _jit_static(_input_gradient_core, apply_fn, relu)(params, x, target)


def _class_map(core, apply_fn, params, x, target) -> Array:
    model = _check_split(apply_fn)
    x, target = _check_call(lambda v: model(params, v), x, target)
    return _jit_static(core, model.features, model.head)(params, x, target)


# ----------------------------------------------------------------------------- gradients


def saliency(
    apply_fn: Callable,
    params,
    x: Float[Array, "n H W C"],
    target: int | Int[Array, " n"],
) -> Float[Array, "n H W C"]:
    r"""Vanilla gradient saliency :math:`S = \partial y_c / \partial x`.

    For a linear model :math:`y = W^\top \operatorname{vec}(x) + b` it is column :math:`c` of
    :math:`W`, whatever ``x``: saliency explains the local linear approximation
    :math:`y_c(x + \delta) \approx y_c(x) + S \cdot \delta`.

    Args:
      apply_fn: ``apply_fn(params, x, relu=...) -> logits [N, classes]``.
      params: its parameters.
      x: ``[N, H, W, C]`` images.
      target: class :math:`c`, an int or ``[N]`` ints.

    Returns:
      ``[N, H, W, C]`` gradient of each image's target logit (use :func:`saliency_map` for the
      usual ``max_c |S|`` picture).

    References:
      Simonyan et al., *Deep Inside Convolutional Networks: Visualising Image Classification
      Models and Saliency Maps*, 2013, https://arxiv.org/abs/1312.6034

    Derivation: derivations/15-interpretation.md
    """
    return _input_gradient(apply_fn, params, x, target, jax.nn.relu)


def saliency_map(gradient: Float[Array, "n H W C"]) -> Float[Array, "n H W"]:
    r"""The picture of a gradient: :math:`\max_{\text{channel}} |S|` per pixel, ``[N, H, W]``.

    Derivation: derivations/15-interpretation.md
    """
    return jnp.max(jnp.abs(gradient), axis=-1)


def guided_backprop(
    apply_fn: Callable,
    params,
    x: Float[Array, "n H W C"],
    target: int | Int[Array, " n"],
) -> Float[Array, "n H W C"]:
    r"""Guided backpropagation: the input gradient with every ReLU's backward rule replaced by
    :math:`R^{l} = \mathbb 1[f^l > 0]\,\mathbb 1[R^{l+1} > 0]\,R^{l+1}` (:func:`guided_relu`).

    Args / Returns: as :func:`saliency`; ``apply_fn`` must use the ``relu`` it is given.

    Note:
      Guided backprop ignores negative evidence and is nearly independent of the class and of
      the upper layers' weights (Adebayo et al. 2018, *Sanity Checks for Saliency Maps*): it
      shows edges the network sees, not why it chose the class.

    References:
      Springenberg et al., *Striving for Simplicity: The All Convolutional Net*, 2014,
      https://arxiv.org/abs/1412.6806

    Derivation: derivations/15-interpretation.md
    """
    return _input_gradient(apply_fn, params, x, target, guided_relu)


def deconvnet(
    apply_fn: Callable,
    params,
    x: Float[Array, "n H W C"],
    target: int | Int[Array, " n"],
) -> Float[Array, "n H W C"]:
    r"""Deconvnet reconstruction: the backward pass with ReLUs rectifying the signal
    (:func:`deconv_relu`), :math:`R^l = \max(R^{l+1}, 0)`, ignoring where the forward
    activations were zero. As :func:`saliency` otherwise.

    References:
      Zeiler & Fergus, *Visualizing and Understanding Convolutional Networks*, 2014,
      https://arxiv.org/abs/1311.2901

    Derivation: derivations/15-interpretation.md
    """
    return _input_gradient(apply_fn, params, x, target, deconv_relu)


# ----------------------------------------------------------------------------- class maps


def cam(
    apply_fn: SplitModel,
    params,
    x: Float[Array, "n H W C"],
    target: int | Int[Array, " n"],
) -> Float[Array, "n h w"]:
    r"""Class activation map :math:`M^c_{ij} = \sum_k w^c_k A^k_{ij}` of a network whose head is
    a global average pool followed by a linear layer, :math:`y_c = \frac1{hw}\sum_{ij}
    \sum_k w^c_k A^k_{ij} + b_c`, so that :math:`y_c = \operatorname{mean}_{ij} M^c_{ij} + b_c`.

    The weights are read through the head itself: on a :math:`1 \times 1` map holding
    :math:`A_{ij}` a GAP + linear head returns :math:`\sum_k w^c_k A^k_{ij} + b_c`, and the head
    of a zero map returns :math:`b_c`; their difference is :math:`M^c_{ij}`.

    Args:
      apply_fn: a :class:`SplitModel` whose ``head`` is GAP + linear.
      params: its parameters.
      x: ``[N, H, W, C]`` images.
      target: class :math:`c`, an int or ``[N]`` ints.

    Returns:
      ``[N, h, w]`` maps at the resolution of :math:`A` (:func:`upsample` to overlay them).

    References:
      Zhou et al., *Learning Deep Features for Discriminative Localization*, 2016,
      https://arxiv.org/abs/1512.04150

    Derivation: derivations/15-interpretation.md
    """
    return _class_map(_cam_core, apply_fn, params, x, target)


def _cam_core(features, head, params, x, target):
    maps = features(params, x)  # [N, h, w, K]
    n, h, w, k = maps.shape
    per_position = head(params, maps.reshape(n * h * w, 1, 1, k))  # [N h w, classes]
    bias = head(params, jnp.zeros((1, 1, 1, k), maps.dtype))  # [1, classes]
    scores = (per_position - bias).reshape(n, h, w, -1)  # [N, h, w, classes]
    return jnp.take_along_axis(scores, target[:, None, None, None], axis=-1)[..., 0]


def grad_cam(
    apply_fn: SplitModel,
    params,
    x: Float[Array, "n H W C"],
    target: int | Int[Array, " n"],
) -> Float[Array, "n h w"]:
    r"""Grad-CAM :math:`L^c = \mathrm{ReLU}\big(\sum_k \alpha^c_k A^k\big)`, with
    :math:`\alpha^c_k = \frac{1}{hw}\sum_{ij} \partial y_c / \partial A^k_{ij}` the pooled
    gradients of the class logit with respect to the last map.

    For a GAP + linear head :math:`\partial y_c / \partial A^k_{ij} = w^c_k / (hw)`, so
    :math:`L^c = \mathrm{ReLU}(M^c) / (hw)` with :math:`M^c` the :func:`cam` map; Grad-CAM
    extends CAM to any differentiable head.

    Args / Returns: as :func:`cam`.

    References:
      Selvaraju et al., *Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
      Localization*, 2017, https://arxiv.org/abs/1610.02391

    Derivation: derivations/15-interpretation.md
    """
    return _class_map(_grad_cam_core, apply_fn, params, x, target)


def _grad_cam_core(features, head, params, x, target):
    maps = features(params, x)  # [N, h, w, K]
    grads = jax.grad(lambda a: _class_score(head(params, a), target))(maps)  # [N, h, w, K]
    alpha = jnp.mean(grads, axis=(1, 2))  # [N, K]
    return jax.nn.relu(jnp.einsum("nk,nhwk->nhw", alpha, maps))  # [N, h, w]


def upsample(maps: Float[Array, "n h w"], size: tuple[int, int]) -> Float[Array, "n H W"]:
    """Bilinear resize of ``[N, h, w]`` class maps to ``size = (H, W)`` (for overlays).

    Derivation: derivations/15-interpretation.md
    """
    return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")


def guided_grad_cam(
    apply_fn: SplitModel,
    params,
    x: Float[Array, "n H W C"],
    target: int | Int[Array, " n"],
) -> Float[Array, "n H W C"]:
    r"""Guided Grad-CAM: guided backprop times the Grad-CAM map upsampled to the input,
    :math:`G^c \odot \operatorname{up}(L^c)`: fine detail, restricted to the class's region.

    Args: as :func:`cam`. Returns ``[N, H, W, C]``.

    Derivation: derivations/15-interpretation.md
    """
    x, target = _check_inputs(x, target)
    region = upsample(grad_cam(apply_fn, params, x, target), x.shape[1:3])  # [N, H, W]
    return guided_backprop(apply_fn, params, x, target) * region[..., None]


# ----------------------------------------------------------------------------- inputs


def activation_maximisation(
    apply_fn: Callable,
    params,
    x: Float[Array, "n H W C"],
    target: int | Int[Array, " n"],
    *,
    steps: int = 200,
    lr: float = 0.1,
    l2: float = 0.05,
    clip: tuple[float, float] | None = None,
) -> Float[Array, "n H W C"]:
    r"""The input that maximises a class logit under an L2 penalty, by gradient ascent.

    .. math:: x^\star = \arg\max_x\; y_c(x) - \lambda \|x\|^2, \qquad
              x_{t+1} = x_t + \eta\,\big(\nabla_x y_c(x_t) - 2\lambda x_t\big)

    starting from ``x`` (e.g. zeros or the data mean), :math:`\lambda` = ``l2``, :math:`\eta` =
    ``lr``, for ``steps`` steps (``jax.lax.fori_loop``). For a linear logit
    :math:`y_c = w^\top x + b` the optimum is :math:`x^\star = w / (2\lambda)`, reached when
    :math:`\eta < 1/\lambda`.

    Args:
      apply_fn: ``apply_fn(params, x, relu=...) -> logits``.
      params: its parameters.
      x: ``[N, H, W, C]`` starting images.
      target: class :math:`c`, an int or ``[N]`` ints.
      steps: ascent steps.
      lr: step size :math:`\eta`.
      l2: penalty :math:`\lambda \ge 0`; without it the logit of a ReLU network grows without
        bound along a ray.
      clip: ``(low, high)`` to project each step into the image range, or ``None``.

    Returns:
      ``[N, H, W, C]`` optimised inputs.

    References:
      Erhan et al., *Visualizing Higher-Layer Features of a Deep Network*, 2009; Simonyan et
      al., 2013, https://arxiv.org/abs/1312.6034

    Derivation: derivations/15-interpretation.md
    """
    x, target = _check_call(lambda v: apply_fn(params, v), x, target)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not lr > 0 or not l2 >= 0:
        raise ValueError(f"lr must be > 0 and l2 >= 0, got lr={lr}, l2={l2}")

    low, high = (-jnp.inf, jnp.inf) if clip is None else clip
    settings = (steps, float(lr), float(l2), float(low), float(high))
    return _jit_static(_ascent_core, apply_fn, settings)(params, x, target)


def _ascent_core(apply_fn, settings, params, x, target):
    steps, lr, l2, low, high = settings

    def objective(v):
        return _class_score(apply_fn(params, v), target) - l2 * jnp.sum(v * v)

    def step(_, v):
        return jnp.clip(v + lr * jax.grad(objective)(v), low, high)

    return jax.lax.fori_loop(0, steps, step, x)


# ----------------------------------------------------------------------------- pictures

METHODS = {
    "saliency": saliency,
    "guided_backprop": guided_backprop,
    "deconvnet": deconvnet,
    "cam": cam,
    "grad_cam": grad_cam,
    "guided_grad_cam": guided_grad_cam,
}  #: the methods ``genjax interpret`` draws, by name


def heatmap(method: str, model: SplitModel, params, x, target) -> np.ndarray:
    """``[N, H, W]`` non-negative map of ``METHODS[method]`` at the input's resolution,
    scaled to [0, 1] per image: class maps upsampled and rectified, gradients as ``max_c |S|``.

    Derivation: derivations/15-interpretation.md
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    x = jnp.asarray(x)
    out = METHODS[method](model, params, x, target)
    # class maps: the positive evidence (CAM can be negative; Grad-CAM already is ReLU'd);
    # gradients: max_c |S|.
    out = jax.nn.relu(upsample(out, x.shape[1:3])) if out.ndim == 3 else saliency_map(out)
    out = np.asarray(out)  # [N, H, W]
    peak = out.reshape(len(out), -1).max(axis=1)[:, None, None]
    return out / np.where(peak > 0, peak, 1.0)


def save_overlays(
    images, maps: dict[str, np.ndarray], path, titles: list[str] | None = None
) -> Path:
    """One PNG (:func:`genjax.viz.heat_overlays`): a row per entry of ``maps`` (``[N, H, W]`` in
    [0, 1], e.g. from :func:`heatmap`) over the grey ``images [N, H, W, C]``, a column per image,
    ``titles`` above the columns.

    Derivation: derivations/15-interpretation.md
    """
    from genjax import viz

    return viz.heat_overlays(images, maps, path, titles)
