r"""Noise schedules: the frozen :class:`Schedule` pytree and its constructors.

Derivation: derivations/11-ddpm.md
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float, Int

from genjax import _checks

_ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
_Steps = Int[Array, " batch"] | Int[Array, ""] | int
_Batch = Float[Array, " batch *event"]


# ----------------------------------------------------------------------------- schedules


@struct.dataclass
class Schedule:
    r"""A noise schedule and every per-step coefficient derived from it (a frozen pytree).

    All fields are ``[T]`` float32 arrays indexed by the 0-based step ``t``: entry ``t`` belongs
    to the paper's step :math:`t+1`. Build one with :func:`schedule_from_betas`,
    :func:`linear_schedule`, :func:`cosine_schedule` or :func:`quadratic_schedule`.

    Attributes:
      betas: :math:`\beta_t`, the variance added at step ``t``.
      alphas: :math:`\alpha_t = 1 - \beta_t`.
      alpha_bars: :math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`, strictly decreasing.
      alpha_bars_prev: :math:`\bar\alpha_{t-1}`, with :math:`\bar\alpha_{-1} = 1` (the data).
      sqrt_alpha_bars: :math:`\sqrt{\bar\alpha_t}`, the signal scale of :math:`q(x_t \mid x_0)`.
      sqrt_one_minus_alpha_bars: :math:`\sqrt{1-\bar\alpha_t}`, its noise scale.
      snr: :math:`\mathrm{SNR}_t = \bar\alpha_t / (1-\bar\alpha_t)`.
      posterior_variance: :math:`\tilde\beta_t = \beta_t (1-\bar\alpha_{t-1})/(1-\bar\alpha_t)`,
        the variance of :math:`q(x_{t-1} \mid x_t, x_0)`; zero at ``t = 0``.
      posterior_log_variance_clipped: :math:`\log\tilde\beta_t` with the ``t = 0`` entry (the
        log of zero) replaced by the ``t = 1`` entry, as in Ho et al.'s code.
      posterior_mean_coef_x0: :math:`\beta_t\sqrt{\bar\alpha_{t-1}}/(1-\bar\alpha_t)`.
      posterior_mean_coef_xt: :math:`\sqrt{\alpha_t}(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)`.

    Derivation: derivations/11-ddpm.md
    """

    betas: Float[Array, " T"]
    alphas: Float[Array, " T"]
    alpha_bars: Float[Array, " T"]
    alpha_bars_prev: Float[Array, " T"]
    sqrt_alpha_bars: Float[Array, " T"]
    sqrt_one_minus_alpha_bars: Float[Array, " T"]
    snr: Float[Array, " T"]
    posterior_variance: Float[Array, " T"]
    posterior_log_variance_clipped: Float[Array, " T"]
    posterior_mean_coef_x0: Float[Array, " T"]
    posterior_mean_coef_xt: Float[Array, " T"]

    @property
    def num_steps(self) -> int:
        """The number of steps :math:`T` (static: the arrays' length)."""
        return self.betas.shape[0]


def schedule_from_betas(betas) -> Schedule:
    r"""Build a :class:`Schedule` from the per-step variances :math:`\beta_t`.

    .. math::
       \alpha_t = 1-\beta_t,\quad \bar\alpha_t = \prod_{s=0}^{t}\alpha_s,\quad
       \tilde\beta_t = \beta_t\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t},\quad
       \tilde\mu_t = \frac{\beta_t\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_t} x_0
       + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t} x_t

    The coefficients are computed in float64 and stored in float32.

    Args:
      betas: ``[T]`` variances, each in (0, 1) and non-decreasing in ``t`` (a decreasing
        schedule is almost always a reversed array, so it is an error).

    Returns:
      The :class:`Schedule`.

    Derivation: derivations/11-ddpm.md
    """
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.shape[0] == 0:
        raise ValueError(f"betas must be a non-empty 1-D array [T], got shape {b.shape}")
    if not np.all((b > 0.0) & (b < 1.0)):
        raise ValueError(
            f"betas must lie in the open interval (0, 1), got min {b.min()} and max {b.max()}"
        )
    if np.any(np.diff(b) < 0.0):
        first = int(np.argmax(np.diff(b) < 0.0))
        raise ValueError(
            f"betas must be non-decreasing in t, but betas[{first + 1}] = {b[first + 1]} < "
            f"betas[{first}] = {b[first]}"
        )
    alphas = 1.0 - b
    alpha_bars = np.cumprod(alphas)
    alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
    posterior_variance = b * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
    # t = 0 has zero posterior variance; its log borrows the t = 1 value (or beta_0 if T = 1).
    first_log = posterior_variance[1] if b.shape[0] > 1 else b[0]
    log_var = np.log(np.concatenate([[first_log], posterior_variance[1:]]))
    fields = dict(
        betas=b,
        alphas=alphas,
        alpha_bars=alpha_bars,
        alpha_bars_prev=alpha_bars_prev,
        sqrt_alpha_bars=np.sqrt(alpha_bars),
        sqrt_one_minus_alpha_bars=np.sqrt(1.0 - alpha_bars),
        snr=alpha_bars / (1.0 - alpha_bars),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=log_var,
        posterior_mean_coef_x0=b * np.sqrt(alpha_bars_prev) / (1.0 - alpha_bars),
        posterior_mean_coef_xt=np.sqrt(alphas) * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars),
    )
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


def linear_schedule(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    r"""Ho et al.'s linear schedule: :math:`\beta_t` evenly spaced from start to end.

    .. math:: \beta_t = \beta_{\text{start}}
       + \frac{t}{T-1}(\beta_{\text{end}}-\beta_{\text{start}}),\qquad t = 0..T-1

    The defaults are tuned for :math:`T` = 1000 (:math:`\bar\alpha_{T-1} \approx 4.04\times
    10^{-5}`); with :math:`T` = 100 the same endpoints end at :math:`\bar\alpha \approx 0.36`,
    not noise, so scale both by :math:`1000/T` or use :func:`cosine_schedule`.

    Args:
      num_steps: :math:`T`.
      beta_start: :math:`\beta` of the first step.
      beta_end: :math:`\beta` of the last step (at least ``beta_start``).

    Returns:
      The :class:`Schedule`.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020,
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    _checks.positive_int("num_steps", num_steps)
    return schedule_from_betas(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def quadratic_schedule(
    num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Schedule:
    r"""The "quad" schedule of Ho et al.'s code: :math:`\sqrt{\beta_t}` evenly spaced.

    .. math:: \beta_t = \Big(\sqrt{\beta_{\text{start}}} + \frac{t}{T-1}
       \big(\sqrt{\beta_{\text{end}}}-\sqrt{\beta_{\text{start}}}\big)\Big)^2

    Args:
      num_steps: :math:`T`.
      beta_start: :math:`\beta` of the first step.
      beta_end: :math:`\beta` of the last step.

    Returns:
      The :class:`Schedule`.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020,
      https://arxiv.org/abs/2006.11239 (``get_beta_schedule("quad")`` in the authors' code)

    Derivation: derivations/11-ddpm.md
    """
    _checks.positive_int("num_steps", num_steps)
    roots = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=np.float64)
    return schedule_from_betas(roots**2)


def cosine_schedule(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    r"""Nichol & Dhariwal's cosine schedule: :math:`\bar\alpha` follows a squared cosine.

    .. math::
       f(u) = \cos^2\Big(\frac{u/T + s}{1+s}\cdot\frac{\pi}{2}\Big),\qquad
       \beta_t = \min\Big(1 - \frac{f(t+1)}{f(t)},\ \beta_{\max}\Big),\qquad t = 0..T-1

    so that, before clipping, ``alpha_bars[t]`` :math:`= f(t+1)/f(0)`. The clip at
    :math:`\beta_{\max}` keeps the last step from being singular (:math:`f(T) = 0`); it leaves
    :math:`\bar\alpha_{T-1}` tiny (:math:`2.4\times10^{-7}` for :math:`T` = 100), which is why
    :func:`sample` clips :math:`\hat x_0`.

    Args:
      num_steps: :math:`T`.
      s: the offset :math:`s \ge 0`.
      max_beta: the clip :math:`\beta_{\max}`, in (0, 1).

    Returns:
      The :class:`Schedule`.

    References:
      Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021,
      https://arxiv.org/abs/2102.09672

    Derivation: derivations/11-ddpm.md
    """
    _checks.positive_int("num_steps", num_steps)
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    if not s >= 0.0:
        raise ValueError(f"s must be >= 0, got {s}")
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2
    return schedule_from_betas(np.minimum(1.0 - f[1:] / f[:-1], max_beta))


def _t(schedule: Schedule, t, x: jax.Array, name: str = "t") -> jax.Array:
    """``t`` as int32 ``[batch]`` for the batch of ``x`` (see :func:`_checks.time_steps`).

    A concrete ``t`` outside ``0..T-1`` is a ``ValueError``; a traced one (under ``jit``) cannot
    be checked and is clamped to ``0..T-1`` (a negative step reads step 0, not the end)."""
    t = _checks.time_steps(t, schedule.num_steps, x.shape[0], name)
    return jnp.clip(t, 0, schedule.num_steps - 1)


def _at(coef: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """``coef[t]`` shaped ``[batch, 1, ..., 1]`` (rank ``ndim``) to scale a ``[batch, ...]`` x."""
    return coef[t].reshape(t.shape + (1,) * (ndim - 1))  # [batch, 1, ..., 1]


def _clip(x0: jax.Array, clip_x0: tuple[float, float] | None) -> jax.Array:
    """``x0`` clipped to ``clip_x0 = (low, high)``, or as it is when ``clip_x0`` is ``None``."""
    return x0 if clip_x0 is None else jnp.clip(x0, clip_x0[0], clip_x0[1])
