r"""The reverse chain: the DDPM and DDIM steps and :func:`sample`, one ``lax.scan`` over either.

Derivation: derivations/11-ddpm.md, derivations/13-ddim.md
"""

import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from genjax import _checks
from genjax.diffusion._schedules import Schedule, _at, _Batch, _ModelFn, _Steps, _t
from genjax.diffusion._training import PARAMETERIZATIONS, q_posterior, to_x0_eps

_VARIANCES = ("small", "large")
# Below this alpha_bar, x0-hat from an eps prediction divides eps's error by sqrt(alpha_bar) < 3e-3.
_TINY_ALPHA_BAR = 1e-5


# ----------------------------------------------------------------------------- sampling


def _clip(x0: jax.Array, clip_x0: tuple[float, float] | None) -> jax.Array:
    return x0 if clip_x0 is None else jnp.clip(x0, clip_x0[0], clip_x0[1])


def _column(mask: jax.Array, ndim: int) -> jax.Array:
    return mask.reshape(mask.shape + (1,) * (ndim - 1))  # [batch, 1, ..., 1]


def ddpm_step(
    schedule: Schedule,
    model_fn: _ModelFn,
    xt: _Batch,
    t: _Steps,
    z: _Batch,
    *,
    parameterization: str = "eps",
    clip_x0: tuple[float, float] | None = None,
    variance: str = "small",
) -> _Batch:
    r"""One ancestral step :math:`x_{t-1} \sim p_\theta(x_{t-1} \mid x_t)` (Ho et al., Alg. 2).

    .. math:: x_{t-1} = \tilde\mu_t\big(\hat x_0(x_t), x_t\big) + \sigma_t z,\qquad
       \sigma_t^2 = \tilde\beta_t\ (\text{"small"})\ \text{or}\ \beta_t\ (\text{"large"})

    with :math:`\hat x_0` from the network (:func:`to_x0_eps`), clipped to ``clip_x0`` if given,
    :math:`\tilde\mu_t` the posterior mean (:func:`q_posterior`) and no noise at ``t = 0``. For
    unclipped ε this is Ho et al.'s
    :math:`x_{t-1} = (x_t - \beta_t\hat\epsilon/\sqrt{1-\bar\alpha_t})/\sqrt{\alpha_t}
    + \sigma_t z`.

    Args:
      schedule: the :class:`Schedule`.
      model_fn: the denoiser ``(x_t, t [batch]) -> prediction``.
      xt: ``[batch, ...]`` current state.
      t: int step(s), a scalar or ``[batch]``.
      z: ``[batch, ...]`` standard normal draw.
      parameterization: what ``model_fn`` predicts.
      clip_x0: optional ``(low, high)`` range of :math:`\hat x_0`.
      variance: ``"small"`` (:math:`\tilde\beta_t`) or ``"large"`` (:math:`\beta_t`).

    Returns:
      ``[batch, ...]`` :math:`x_{t-1}`.

    Derivation: derivations/11-ddpm.md
    """
    _checks.one_of("variance", variance, _VARIANCES)
    t = _t(schedule, t, xt)
    x0_hat, _ = to_x0_eps(schedule, xt, t, model_fn(xt, t), parameterization)
    mean, _, log_var = q_posterior(schedule, _clip(x0_hat, clip_x0), xt, t)
    if variance == "large":
        log_var = jnp.log(_at(schedule.betas, t, xt.ndim)) * jnp.ones_like(xt)
    return mean + jnp.where(_column(t > 0, xt.ndim), jnp.exp(0.5 * log_var), 0.0) * z


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    r"""The strided sub-sequence :math:`\tau` of DDIM: ``num_steps`` evenly spaced steps.

    .. math:: \tau_i = \mathrm{round}\Big(\frac{i\,(T-1)}{S-1}\Big),\qquad i = 0..S-1

    so :math:`\tau_0 = 0`, :math:`\tau_{S-1} = T-1`, all distinct when :math:`S \le T`, and
    :math:`S = T` gives every step.

    Args:
      num_train_steps: :math:`T` of the schedule.
      num_steps: :math:`S`, between 1 and :math:`T` (:math:`S = 1` gives the last step only).

    Returns:
      ``[S]`` increasing int32 steps.

    Derivation: derivations/13-ddim.md
    """
    _checks.positive_int("num_steps", num_steps)
    if num_steps > num_train_steps:
        raise ValueError(
            f"num_steps ({num_steps}) must be at most the schedule's {num_train_steps} steps"
        )
    if num_steps == 1:
        return np.array([num_train_steps - 1], np.int32)
    return np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int32)


def ddim_step(
    schedule: Schedule,
    model_fn: _ModelFn,
    xt: _Batch,
    t: _Steps,
    t_prev: _Steps,
    z: _Batch,
    *,
    eta: float = 0.0,
    parameterization: str = "eps",
    clip_x0: tuple[float, float] | None = None,
) -> _Batch:
    r"""One DDIM step from step ``t`` to the earlier step ``t_prev`` (``-1`` = the data).

    .. math::
       x_{\text{prev}} = \sqrt{\bar\alpha_{\text{prev}}}\,\hat x_0
         + \sqrt{1-\bar\alpha_{\text{prev}}-\sigma^2}\,\hat\epsilon + \sigma z,\qquad
       \sigma = \eta\sqrt{\frac{1-\bar\alpha_{\text{prev}}}{1-\bar\alpha_t}}
                \sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{\text{prev}}}}

    with :math:`\bar\alpha_{\text{prev}}` = ``alpha_bars[t_prev]`` (1 for ``t_prev = -1``).
    :math:`\eta = 0` is deterministic; :math:`\eta = 1` over every step is DDPM. When
    :math:`\hat x_0` is clipped, :math:`\hat\epsilon` is recomputed from it.

    Args:
      schedule: the :class:`Schedule`.
      model_fn: the denoiser.
      xt: ``[batch, ...]`` current state.
      t: int step(s), a scalar or ``[batch]``.
      t_prev: the earlier step(s), a scalar or ``[batch]``; ``-1`` means :math:`x_0`.
      z: ``[batch, ...]`` standard normal draw (unused when :math:`\eta = 0`).
      eta: :math:`\eta \ge 0`.
      parameterization: what ``model_fn`` predicts.
      clip_x0: optional ``(low, high)`` range of :math:`\hat x_0`.

    Returns:
      ``[batch, ...]`` the state at ``t_prev``.

    References:
      Song et al., *Denoising Diffusion Implicit Models*, 2020, eq. (12),
      https://arxiv.org/abs/2010.02502

    Derivation: derivations/13-ddim.md
    """
    t = _t(schedule, t, xt)
    t_prev = _checks.time_steps(t_prev, schedule.num_steps, xt.shape[0], "t_prev", low=-1)
    x0_hat, eps_hat = to_x0_eps(schedule, xt, t, model_fn(xt, t), parameterization)
    if clip_x0 is not None:
        x0_hat = _clip(x0_hat, clip_x0)
        a = _at(schedule.sqrt_alpha_bars, t, xt.ndim)
        eps_hat = (xt - a * x0_hat) / _at(schedule.sqrt_one_minus_alpha_bars, t, xt.ndim)
    ab = _at(schedule.alpha_bars, t, xt.ndim)
    ab_prev = jnp.where(
        _column(t_prev >= 0, xt.ndim),
        _at(schedule.alpha_bars, jnp.maximum(t_prev, 0), xt.ndim),
        1.0,
    )
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0))
    return jnp.sqrt(ab_prev) * x0_hat + direction * eps_hat + sigma * z


def _step_noise(key, noise, shape, num_steps):
    """The initial state and the draws (or keys) of the steps, first step taken first."""
    if noise is not None:
        noise = jnp.asarray(noise)
        if noise.shape != (num_steps + 1, *shape):
            raise ValueError(
                f"noise must have shape [steps + 1, *shape] = {(num_steps + 1, *shape)}, "
                f"got {noise.shape}"
            )
        return noise[0], noise[1:]
    k_init, k_steps = jax.random.split(key)
    return jax.random.normal(k_init, shape), jax.random.split(k_steps, num_steps)


def _draw(z_or_key, shape):
    if jnp.issubdtype(z_or_key.dtype, jax.dtypes.prng_key):
        return jax.random.normal(z_or_key, shape)
    return z_or_key


def _warn_if_unsafe(schedule: Schedule, clip_x0, parameterization: str) -> None:
    """Warn when strided DDIM recovers an unclipped x0-hat from ε at a tiny alpha_bar."""
    if clip_x0 is not None or parameterization != "eps":
        return
    if not _checks.is_concrete(schedule.alpha_bars):
        return
    last = float(np.asarray(schedule.alpha_bars)[-1])  # host-side: fine under jit
    if last < _TINY_ALPHA_BAR:
        warnings.warn(
            f"DDIM with clip_x0=None: alpha_bars[T-1] = {last:.2g}, so x0-hat = (x_t - "
            f"sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) multiplies the error of eps by "
            f"{1 / math.sqrt(last):.0f} at the first step; pass the data's range as clip_x0 "
            "(or use eta=1, v-prediction, or num_steps=None for DDPM)",
            stacklevel=3,
        )


def sample(
    key: jax.Array | None,
    schedule: Schedule,
    model_fn: _ModelFn,
    shape: Sequence[int],
    *,
    num_steps: int | None = None,
    eta: float = 0.0,
    clip_x0: tuple[float, float] | None = (-1.0, 1.0),
    parameterization: str = "eps",
    variance: str = "small",
    return_trajectory: bool = False,
    noise: Float[Array, "steps_plus_one batch *event"] | None = None,
):
    r"""Sample the reverse chain from :math:`N(0, I)`: DDPM over all :math:`T` steps, or DDIM
    over ``num_steps`` strided ones, the whole chain inside one ``jax.lax.scan``.

    With ``num_steps`` ``None`` or :math:`T` this is ancestral sampling, :func:`ddpm_step` for
    ``t = T-1, ..., 0``; otherwise :func:`ddim_step` from :math:`\tau_i` to :math:`\tau_{i-1}`
    over :func:`ddim_timesteps` (:math:`\tau_{-1}` is the data). The network is trained once
    on all :math:`T` steps; the sampler is a choice at sampling time.

    **Clipping.** :math:`\hat x_0` is clipped to ``clip_x0`` at every step, by default
    ``(-1, 1)``: data scaled to [-1, 1] (Ho et al.'s images). Pass the data's range for other
    bounded data, or ``None`` for unbounded data. Unclipped ε-prediction recovers
    :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\hat\epsilon)/\sqrt{\bar\alpha_t}`; at
    :math:`\bar\alpha_{T-1} = 2.4\times10^{-7}` (:func:`cosine_schedule` with :math:`T` = 100)
    that multiplies the network's ε error by 2000, which a few large deterministic DDIM steps
    do not undo. So DDIM with ``clip_x0=None``, ε-prediction and
    :math:`\bar\alpha_{T-1} < 10^{-5}` warns.

    Args:
      key: PRNG key (``None`` when ``noise`` is given).
      schedule: the :class:`Schedule` the network was trained with.
      model_fn: the denoiser ``(x_t, t [batch]) -> prediction``; wrap it with
        :func:`guided_model_fn` for classifier-free guidance.
      shape: ``(batch, ...)`` of the samples.
      num_steps: :math:`S` DDIM steps in ``1..T``; ``None`` or :math:`T` for DDPM.
      eta: DDIM's :math:`\eta \ge 0` (0: deterministic given the start; 1: DDPM-like); DDPM
        takes no ``eta``.
      clip_x0: ``(low, high)`` range of :math:`\hat x_0`, or ``None``.
      parameterization: what ``model_fn`` predicts: ``"eps"``, ``"x0"`` or ``"v"``.
      variance: DDPM's ``"small"`` or ``"large"`` (see :func:`ddpm_step`).
      return_trajectory: also return every state.
      noise: optional ``[S + 1, *shape]`` standard normal draws replacing the random ones:
        ``noise[0]`` is the initial state, ``noise[i]`` the draw of the ``i``-th step taken.

    Returns:
      ``[*shape]`` samples; with ``return_trajectory``, ``(samples, [S + 1, *shape])`` from
      the initial noise to the samples.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, Algorithm 2,
      https://arxiv.org/abs/2006.11239

      Song et al., *Denoising Diffusion Implicit Models*, 2020, https://arxiv.org/abs/2010.02502

    Derivation: derivations/11-ddpm.md, derivations/13-ddim.md
    """
    _checks.one_of("parameterization", parameterization, PARAMETERIZATIONS)
    _checks.one_of("variance", variance, _VARIANCES)
    shape = tuple(shape)
    if len(shape) < 1 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"shape must be a tuple of positive ints [batch, ...], got {shape}")
    if clip_x0 is not None and not (len(clip_x0) == 2 and clip_x0[0] < clip_x0[1]):
        raise ValueError(
            f"clip_x0 must be None or a pair (low, high) with low < high, got {clip_x0}"
        )
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    total = schedule.num_steps
    num_steps = total if num_steps is None else num_steps
    steps = ddim_timesteps(total, num_steps)  # [S] increasing; every step when S = T
    ddpm = num_steps == total
    if ddpm and eta != 0.0:
        raise ValueError(
            f"eta applies to DDIM (num_steps < {total}); over all steps the sampler is DDPM"
        )
    if not ddpm and variance != "small":
        raise ValueError("variance applies to DDPM (num_steps None or T); DDIM's is eta")
    if not ddpm:
        _warn_if_unsafe(schedule, clip_x0, parameterization)
    _checks.key_given(key, noise=noise)
    x_init, draws = _step_noise(key, noise, shape, num_steps)
    ts = jnp.asarray(steps[::-1])  # [S]: tau_{S-1}, ..., tau_0
    ts_prev = jnp.asarray(np.concatenate([[-1], steps[:-1]])[::-1].astype(np.int32))  # [S]
    options = dict(parameterization=parameterization, clip_x0=clip_x0)

    def body(x, inputs):
        t, t_prev, z_or_key = inputs
        z = _draw(z_or_key, shape)
        if ddpm:
            x = ddpm_step(schedule, model_fn, x, t, z, variance=variance, **options)
        else:
            x = ddim_step(schedule, model_fn, x, t, t_prev, z, eta=eta, **options)
        return x, (x if return_trajectory else None)

    x, states = jax.lax.scan(body, x_init, (ts, ts_prev, draws))
    if return_trajectory:
        return x, jnp.concatenate([x_init[None], states], axis=0)  # [S + 1, *shape]
    return x
