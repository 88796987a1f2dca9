r"""The reverse chain: the DDPM, DDIM and DPM-Solver++(2M) steps and :func:`sample`, one
``lax.scan`` over any of them.

Derivation: derivations/11-ddpm.md, derivations/13-ddim.md, derivations/26-improved-diffusion.md
"""

import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from genjax import _checks
from genjax.diffusion._schedules import Schedule, _at, _Batch, _clip, _ModelFn, _Steps, _t
from genjax.diffusion._training import PARAMETERIZATIONS, to_x0_eps
from genjax.diffusion._variances import VARIANCES, p_mean_variance, split_learned

METHODS = ("ddpm", "ddim", "dpm_solver_2m")
# Below this alpha_bar, x0-hat from an eps prediction divides eps's error by sqrt(alpha_bar) < 3e-3.
_TINY_ALPHA_BAR = 1e-5


# ----------------------------------------------------------------------------- sampling


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
       \sigma_t^2 = \tilde\beta_t\ (\text{"small"}),\ \beta_t\ (\text{"large"})\ \text{or}\
       \exp\big(f\log\beta_t + (1-f)\log\tilde\beta_t\big)\ (\text{"learned"})

    with :math:`\hat x_0` from the network (:func:`to_x0_eps`), clipped to ``clip_x0`` if given,
    :math:`\tilde\mu_t` the posterior mean (:func:`q_posterior`), the learned interpolation
    :func:`learned_log_variance` and no noise at ``t = 0`` (:func:`p_mean_variance` holds the
    mean and variance). For unclipped ε this is Ho et al.'s
    :math:`x_{t-1} = (x_t - \beta_t\hat\epsilon/\sqrt{1-\bar\alpha_t})/\sqrt{\alpha_t}
    + \sigma_t z`.

    Args:
      schedule: the :class:`Schedule`.
      model_fn: the denoiser ``(x_t, t [batch]) -> prediction``; with ``variance="learned"``
        it returns ``[batch, ..., 2 C]``, the prediction and then v on the last axis
        (:func:`split_learned`).
      xt: ``[batch, ...]`` current state.
      t: int step(s), a scalar or ``[batch]``.
      z: ``[batch, ...]`` standard normal draw.
      parameterization: what ``model_fn`` predicts.
      clip_x0: optional ``(low, high)`` range of :math:`\hat x_0`.
      variance: ``"small"`` (:math:`\tilde\beta_t`), ``"large"`` (:math:`\beta_t`) or
        ``"learned"``.

    Returns:
      ``[batch, ...]`` :math:`x_{t-1}`.

    References:
      Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021 (learned
      variances), https://arxiv.org/abs/2102.09672

    Derivation: derivations/11-ddpm.md, derivations/26-improved-diffusion.md
    """
    t = _t(schedule, t, xt)
    mean, log_var = p_mean_variance(
        schedule,
        model_fn(xt, t),
        xt,
        t,
        parameterization=parameterization,
        variance=variance,
        clip_x0=clip_x0,
    )
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


def dpm_solver_2m_coefficients(
    schedule: Schedule, num_steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The per-step coefficients of DPM-Solver++(2M) over :func:`ddim_timesteps`.

    With :math:`\alpha_t = \sqrt{\bar\alpha_t}`, :math:`\sigma_t = \sqrt{1-\bar\alpha_t}`,
    :math:`\lambda_t = \log(\alpha_t/\sigma_t)` and the step :math:`h_i = \lambda_{s} -
    \lambda_{t}` from :math:`t = \tau_{S-i}` to :math:`s = \tau_{S-1-i}`, step ``i`` is

    .. math:: x_s = \frac{\sigma_s}{\sigma_t}\,x_t + \alpha_s\big(1 - e^{-h_i}\big)
       \Big[\Big(1 + \frac{1}{2 r_i}\Big)\hat x_0^{(i)} - \frac{1}{2 r_i}\hat x_0^{(i-1)}\Big],
       \qquad r_i = h_{i-1}/h_i

    i.e. ``x = ratio[i] * x + cur[i] * x0_hat + prev[i] * x0_hat_previous``. The first step has
    no previous :math:`\hat x_0` and the last (to the data, :math:`\sigma = 0`,
    :math:`h = \infty`) is first order: both are DDIM steps (``prev = 0``).

    Args:
      schedule: the :class:`Schedule`.
      num_steps: :math:`S`, the number of network evaluations, in ``1..T``.

    Returns:
      ``(ratio, cur, prev)``, each ``[S]`` float32, in the order the steps are taken.

    References:
      Lu et al., *DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
      Models*, 2022, Algorithm 2, https://arxiv.org/abs/2211.01095

    Derivation: derivations/26-improved-diffusion.md
    """
    steps = ddim_timesteps(schedule.num_steps, num_steps)[::-1]  # [S]: tau_{S-1}, ..., tau_0
    ab = np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))
    ab_t = ab[steps]
    ab_s = np.concatenate([ab[steps[1:]], [1.0]])  # the step's target; 1 = the data
    alpha_s, sigma_t, sigma_s = np.sqrt(ab_s), np.sqrt(1.0 - ab_t), np.sqrt(1.0 - ab_s)
    lam_t = 0.5 * (np.log(ab_t) - np.log1p(-ab_t))
    with np.errstate(divide="ignore"):
        lam_s = np.concatenate([lam_t[1:], [np.inf]])
    h = lam_s - lam_t  # [S], the last infinite
    ratio = sigma_s / sigma_t
    first_order = alpha_s * -np.expm1(-h)  # alpha_s (1 - e^{-h}); 1 at the last step
    r = np.concatenate([[np.inf], h[:-1] / h[1:]])  # r_i = h_{i-1} / h_i; inf: first order
    second = np.isfinite(r) & (r > 0) & np.isfinite(h)
    corr = np.where(second, 1.0 / (2.0 * np.where(second, r, 1.0)), 0.0)
    cast = lambda a: np.asarray(a, np.float32)
    return cast(ratio), cast(first_order * (1.0 + corr)), cast(-first_order * corr)


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
    method: str | None = None,
    eta: float = 0.0,
    clip_x0: tuple[float, float] | None = (-1.0, 1.0),
    parameterization: str = "eps",
    variance: str = "small",
    return_trajectory: bool = False,
    noise: Float[Array, "steps_plus_one batch *event"] | None = None,
):
    r"""Sample the reverse chain from :math:`N(0, I)`: DDPM over all :math:`T` steps, DDIM or
    DPM-Solver++(2M) over ``num_steps`` strided ones, the whole chain inside one ``jax.lax.scan``.

    ``method`` picks the sampler: ``"ddpm"``, ancestral sampling, :func:`ddpm_step` for
    ``t = T-1, ..., 0``; ``"ddim"``, :func:`ddim_step` from :math:`\tau_i` to
    :math:`\tau_{i-1}` over :func:`ddim_timesteps` (:math:`\tau_{-1}` is the data);
    ``"dpm_solver_2m"``, the second-order multistep solver of the probability-flow ODE over the
    same steps (:func:`dpm_solver_2m_coefficients`: one network call per step, the previous
    :math:`\hat x_0` carried in the scan). ``None`` is DDPM when ``num_steps`` is ``None`` or
    :math:`T`, else DDIM. The network is trained once on all :math:`T` steps; the sampler is a
    choice at sampling time.

    **Clipping.** :math:`\hat x_0` is clipped to ``clip_x0`` at every step, by default
    ``(-1, 1)``: data scaled to [-1, 1] (Ho et al.'s images). Pass the data's range for other
    bounded data, or ``None`` for unbounded data. Unclipped ε-prediction recovers
    :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\hat\epsilon)/\sqrt{\bar\alpha_t}`; at
    :math:`\bar\alpha_{T-1} = 2.4\times10^{-7}` (:func:`cosine_schedule` with :math:`T` = 100)
    that multiplies the network's ε error by 2000, which a few large deterministic steps
    do not undo. So DDIM or DPM-Solver with ``clip_x0=None``, ε-prediction and
    :math:`\bar\alpha_{T-1} < 10^{-5}` warns.

    Args:
      key: PRNG key (``None`` when ``noise`` is given).
      schedule: the :class:`Schedule` the network was trained with.
      model_fn: the denoiser ``(x_t, t [batch]) -> prediction``; wrap it with
        :func:`guided_model_fn` for classifier-free guidance. With ``variance="learned"`` it
        returns ``[*shape[:-1], 2 C]``: the prediction, then v (:func:`split_learned`).
      shape: ``(batch, ...)`` of the samples.
      num_steps: :math:`S` steps (network evaluations) in ``1..T``; ``None`` for :math:`T`.
      method: ``"ddpm"``, ``"ddim"``, ``"dpm_solver_2m"`` or ``None`` (see above).
      eta: DDIM's :math:`\eta \ge 0` (0: deterministic given the start; 1: DDPM-like); the
        other samplers take no ``eta``.
      clip_x0: ``(low, high)`` range of :math:`\hat x_0`, or ``None``.
      parameterization: what ``model_fn`` predicts: ``"eps"``, ``"x0"`` or ``"v"``.
      variance: DDPM's ``"small"``, ``"large"`` or ``"learned"`` (see :func:`ddpm_step`);
        ``"learned"`` with DDIM or DPM-Solver says only that ``model_fn`` outputs v too,
        which these deterministic samplers drop.
      return_trajectory: also return every state.
      noise: optional ``[S + 1, *shape]`` standard normal draws replacing the random ones:
        ``noise[0]`` is the initial state, ``noise[i]`` the draw of the ``i``-th step taken
        (unused by DPM-Solver and by DDIM with :math:`\eta = 0`).

    Returns:
      ``[*shape]`` samples; with ``return_trajectory``, ``(samples, [S + 1, *shape])`` from
      the initial noise to the samples.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, Algorithm 2,
      https://arxiv.org/abs/2006.11239

      Song et al., *Denoising Diffusion Implicit Models*, 2020, https://arxiv.org/abs/2010.02502

      Lu et al., *DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
      Models*, 2022, https://arxiv.org/abs/2211.01095

    Derivation: derivations/11-ddpm.md, derivations/13-ddim.md,
    derivations/26-improved-diffusion.md
    """
    _checks.one_of("parameterization", parameterization, PARAMETERIZATIONS)
    _checks.one_of("variance", variance, VARIANCES)
    if method is not None:
        _checks.one_of("method", method, METHODS)
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
    if method is None:
        method = "ddpm" if num_steps == total else "ddim"
    if method == "ddpm" and num_steps != total:
        raise ValueError(f"method='ddpm' runs all {total} steps: num_steps must be None or T")
    if method != "ddim" and eta != 0.0:
        raise ValueError(
            f"eta applies to DDIM (num_steps < {total}); over all steps the sampler is DDPM"
            if method == "ddpm"
            else f"eta applies to DDIM, not to {method}"
        )
    if method != "ddpm" and variance == "large":
        raise ValueError("variance applies to DDPM (num_steps None or T); DDIM's is eta")
    if method != "ddpm":
        _warn_if_unsafe(schedule, clip_x0, parameterization)
    _checks.key_given(key, noise=noise)
    x_init, draws = _step_noise(key, noise, shape, num_steps)
    ts = jnp.asarray(steps[::-1])  # [S]: tau_{S-1}, ..., tau_0
    ts_prev = jnp.asarray(np.concatenate([[-1], steps[:-1]])[::-1].astype(np.int32))  # [S]
    options = dict(parameterization=parameterization, clip_x0=clip_x0)
    if variance == "learned" and method != "ddpm":
        learned_fn = model_fn
        model_fn = lambda xt, t: split_learned(learned_fn(xt, t))[0]
    trace = lambda x: x if return_trajectory else None

    if method == "dpm_solver_2m":
        coefs = tuple(jnp.asarray(c) for c in dpm_solver_2m_coefficients(schedule, num_steps))

        def solver(carry, inputs):
            x, x0_prev = carry
            t, ratio, cur, prev = inputs
            t = _t(schedule, t, x)
            x0_hat, _ = to_x0_eps(schedule, x, t, model_fn(x, t), parameterization)
            x0_hat = _clip(x0_hat, clip_x0)
            x = ratio * x + cur * x0_hat + prev * x0_prev
            return (x, x0_hat), trace(x)

        (x, _), states = jax.lax.scan(solver, (x_init, jnp.zeros_like(x_init)), (ts, *coefs))
    else:

        def body(x, inputs):
            t, t_prev, z_or_key = inputs
            z = _draw(z_or_key, shape)
            if method == "ddpm":
                x = ddpm_step(schedule, model_fn, x, t, z, variance=variance, **options)
            else:
                x = ddim_step(schedule, model_fn, x, t, t_prev, z, eta=eta, **options)
            return x, trace(x)

        x, states = jax.lax.scan(body, x_init, (ts, ts_prev, draws))
    if return_trajectory:
        return x, jnp.concatenate([x_init[None], states], axis=0)  # [S + 1, *shape]
    return x
