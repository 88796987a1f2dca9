r"""Conditional sampling: classifier guidance, classifier-free guidance and label dropout.

Derivation: derivations/12-guidance.md
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from genjax import _checks
from genjax.diffusion._schedules import Schedule, _at, _Batch, _ModelFn, _Steps, _t

# ----------------------------------------------------------------------------- guidance


def classifier_free_guidance(eps_cond: _Batch, eps_uncond: _Batch, guidance_scale) -> _Batch:
    r"""Combine conditional and unconditional predictions (classifier-free guidance).

    .. math:: \tilde\epsilon = \epsilon_u + w\,(\epsilon_c - \epsilon_u)

    with :math:`\epsilon_c` = ``eps_cond``, :math:`\epsilon_u` = ``eps_uncond`` and :math:`w` =
    ``guidance_scale``: :math:`w = 0` is unconditional, :math:`w = 1` conditional, :math:`w > 1`
    sharpens toward the condition (the score of :math:`p(x)\,p(c \mid x)^{w}`). Ho & Salimans
    write :math:`(1+w')\epsilon_c - w'\epsilon_u`, i.e. :math:`w = 1 + w'`
    (:func:`guidance_scale_from_ho_salimans`). The weights sum to one, so the formula applies
    unchanged to :math:`x_0` or v predictions of the same :math:`x_t`.

    Args:
      eps_cond: ``[batch, ...]`` conditional prediction.
      eps_uncond: ``[batch, ...]`` unconditional prediction (null label).
      guidance_scale: :math:`w`, a scalar.

    Returns:
      ``[batch, ...]`` guided prediction.

    References:
      Ho & Salimans, *Classifier-Free Diffusion Guidance*, 2022, https://arxiv.org/abs/2207.12598

    Derivation: derivations/12-guidance.md
    """
    eps_cond, eps_uncond = jnp.asarray(eps_cond), jnp.asarray(eps_uncond)
    _checks.same_shape(eps_cond=eps_cond, eps_uncond=eps_uncond)
    if jnp.ndim(guidance_scale) != 0:
        raise ValueError(f"guidance_scale must be a scalar, got shape {jnp.shape(guidance_scale)}")
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guidance_scale_from_ho_salimans(w: float) -> float:
    r"""Ho & Salimans's guidance weight :math:`w'` as this module's ``guidance_scale``
    :math:`w = 1 + w'` (see :func:`classifier_free_guidance`).

    Derivation: derivations/12-guidance.md
    """
    return 1.0 + w


def classifier_guidance(
    schedule: Schedule, eps: _Batch, t: _Steps, grad_log_prob: _Batch, guidance_scale: float
) -> _Batch:
    r"""Classifier guidance: push ε against the gradient of a classifier's log-probability.

    .. math:: \tilde\epsilon = \hat\epsilon - w\,\sqrt{1-\bar\alpha_t}\,
       \nabla_{x_t}\log p_\phi(y \mid x_t)

    since :math:`\hat\epsilon = -\sqrt{1-\bar\alpha_t}\,\nabla\log p(x_t)`; this is the ε of
    :math:`p(x_t)\,p_\phi(y\mid x_t)^w`. With the exact :math:`p(y \mid x_t)` it equals
    :func:`classifier_free_guidance` with the same ``guidance_scale`` :math:`w`.

    Args:
      schedule: the :class:`Schedule`.
      eps: ``[batch, ...]`` unconditional ε prediction.
      t: int step(s), a scalar or ``[batch]``.
      grad_log_prob: ``[batch, ...]`` :math:`\nabla_{x_t}\log p_\phi(y\mid x_t)`.
      guidance_scale: the classifier scale :math:`w`.

    Returns:
      ``[batch, ...]`` guided ε.

    References:
      Dhariwal & Nichol, *Diffusion Models Beat GANs on Image Synthesis*, 2021, Algorithm 2,
      https://arxiv.org/abs/2105.05233

    Derivation: derivations/12-guidance.md
    """
    eps = _checks.batched("eps", eps)
    grad_log_prob = _checks.batched("grad_log_prob", grad_log_prob)
    _checks.same_shape(eps=eps, grad_log_prob=grad_log_prob)
    t = _t(schedule, t, eps)
    std = _at(schedule.sqrt_one_minus_alpha_bars, t, eps.ndim)
    return eps - guidance_scale * std * grad_log_prob


def drop_labels(
    key: jax.Array | None,
    labels: Int[Array, " batch"],
    drop_prob: float,
    null_label: int,
    noise: Float[Array, " batch"] | None = None,
) -> Int[Array, " batch"]:
    r"""Label dropout for classifier-free guidance: each label becomes ``null_label`` w.p. ``p``.

    .. math:: \tilde y_i = \varnothing\ \text{if}\ u_i < p\ \text{else}\ y_i,
       \qquad u_i \sim U[0, 1)

    so one network learns both :math:`\epsilon(x_t, y)` and :math:`\epsilon(x_t, \varnothing)`.

    Args:
      key: PRNG key for :math:`u` (``None`` when ``noise`` is given).
      labels: ``[batch]`` int labels.
      drop_prob: :math:`p` in [0, 1] (Ho & Salimans use 0.1-0.2).
      null_label: the index :math:`\varnothing` of the "no label" embedding (usually the number
        of classes).
      noise: optional ``[batch]`` uniforms :math:`u` replacing the draw.

    Returns:
      ``[batch]`` int32 labels.

    References:
      Ho & Salimans, *Classifier-Free Diffusion Guidance*, 2022, Algorithm 1,
      https://arxiv.org/abs/2207.12598

    Derivation: derivations/12-guidance.md
    """
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be [batch] integers, got {labels.shape} {labels.dtype}")
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}")
    _checks.key_given(key, noise=noise)
    if noise is None:
        noise = jax.random.uniform(key, labels.shape)
    return jnp.where(noise < drop_prob, null_label, labels).astype(jnp.int32)


def guided_model_fn(
    model_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    labels: Int[Array, " batch"],
    null_label: int,
    guidance_scale: float,
) -> _ModelFn:
    r"""A sampler-ready ``(x_t, t) -> prediction`` applying classifier-free guidance.

    Calls ``model_fn(x, t, y)`` once on the doubled batch
    :math:`[(x_t, y), (x_t, \varnothing)]` and combines the halves with
    :func:`classifier_free_guidance`.

    Args:
      model_fn: conditional denoiser ``(x_t [b, ...], t [b], y [b]) -> [b, ...]``.
      labels: ``[batch]`` the labels to sample.
      null_label: the "no label" index used in training (:func:`drop_labels`).
      guidance_scale: :math:`w` (0 unconditional, 1 conditional, > 1 guided).

    Returns:
      ``model_fn(x_t [batch, ...], t [batch]) -> [batch, ...]``.

    Derivation: derivations/12-guidance.md
    """
    labels = jnp.asarray(labels, jnp.int32)

    def guided(xt, t):
        if xt.shape[0] != labels.shape[0]:
            raise ValueError(f"x_t has batch {xt.shape[0]} but labels has {labels.shape[0]}")
        both = model_fn(
            jnp.concatenate([xt, xt], axis=0),  # [2 batch, ...]
            jnp.concatenate([t, t], axis=0),  # [2 batch]
            jnp.concatenate([labels, jnp.full_like(labels, null_label)], axis=0),  # [2 batch]
        )
        eps_cond, eps_uncond = jnp.split(both, 2, axis=0)  # each [batch, ...]
        return classifier_free_guidance(eps_cond, eps_uncond, guidance_scale)

    return guided
