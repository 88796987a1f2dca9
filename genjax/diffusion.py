r"""Denoising diffusion: schedules, the forward process, losses, DDPM and DDIM samplers, guidance.

The forward process adds Gaussian noise in :math:`T` small steps,
:math:`q(x_t \mid x_{t-1}) = N(\sqrt{\alpha_t}\,x_{t-1}, \beta_t I)`, so that
:math:`q(x_t \mid x_0) = N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)` with
:math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`. A network learns to undo one step at a time.

**Time index convention (used everywhere in this module).** Time steps are 0-based array
indices: ``t`` runs over ``0 .. T-1`` and ``schedule.betas[t]`` is the paper's
:math:`\beta_{t+1}`. So ``q_sample(key, schedule, x0, t)`` draws the paper's :math:`x_{t+1}`,
``t = 0`` is the first (least noisy) step, ``t = T-1`` the last (almost pure noise), and the
reverse step at ``t`` maps the paper's :math:`x_{t+1}` to :math:`x_t`. The data is :math:`x_0`
in both conventions. ``tests/test_diffusion.py::test_time_index_convention`` pins this down.

Everything is a pure function of arrays; a denoiser is any ``model_fn(x_t, t) -> prediction``
with ``x_t [batch, ...]`` and ``t [batch]`` int32, returning an ε, :math:`x_0` or v prediction
(``parameterization``). :class:`MLPDenoiser` is the small network used for toy data;
:class:`genjax.nn.unet.UNet` is the image network.

References:
  Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, https://arxiv.org/abs/2006.11239

  Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021,
  https://arxiv.org/abs/2102.09672

  Song et al., *Denoising Diffusion Implicit Models*, 2020, https://arxiv.org/abs/2010.02502

  Ho & Salimans, *Classifier-Free Diffusion Guidance*, 2022, https://arxiv.org/abs/2207.12598

Derivation: derivations/11-ddpm.md, derivations/12-guidance.md, derivations/13-ddim.md
"""

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float, Int

from genjax.nn.layers import TimeEmbedding

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
PARAMETERIZATIONS = ("eps", "x0", "v")
VARIANCES = ("small", "large")


# ----------------------------------------------------------------------------- schedules


@struct.dataclass
class Schedule:
    r"""A noise schedule and every per-step coefficient derived from it (a frozen pytree).

    All fields are ``[T]`` float32 arrays indexed by the 0-based step ``t`` (see the module
    docstring): entry ``t`` belongs to the paper's step :math:`t+1`. Build one with
    :func:`schedule_from_betas`, :func:`linear_schedule`, :func:`cosine_schedule` or
    :func:`quadratic_schedule`; the coefficients are computed in float64 and stored in float32.

    Attributes:
      betas: :math:`\beta_t`, the variance added at step ``t``.
      alphas: :math:`\alpha_t = 1 - \beta_t`.
      alpha_bars: :math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`, strictly decreasing.
      alpha_bars_prev: :math:`\bar\alpha_{t-1}`, with :math:`\bar\alpha_{-1} = 1` (the data).
      sqrt_alpha_bars: :math:`\sqrt{\bar\alpha_t}`, the signal scale of :math:`q(x_t \mid x_0)`.
      sqrt_one_minus_alpha_bars: :math:`\sqrt{1-\bar\alpha_t}`, its noise scale.
      snr: signal-to-noise ratio :math:`\mathrm{SNR}_t = \bar\alpha_t / (1-\bar\alpha_t)`.
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
       \tilde\mu_t = c^{x_0}_t x_0 + c^{x_t}_t x_t,\quad
       c^{x_0}_t = \frac{\beta_t\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_t},\quad
       c^{x_t}_t = \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}

    (:math:`c^{x_0}` is ``posterior_mean_coef_x0``, :math:`c^{x_t}` ``posterior_mean_coef_xt``).

    Args:
      betas: ``[T]`` variances, each in the open interval (0, 1) and non-decreasing in ``t``
        (every schedule in the literature adds more noise later; a decreasing one is almost
        always a reversed array).

    Returns:
      The :class:`Schedule`.

    Raises:
      ValueError: ``betas`` is not a non-empty 1-D array, has entries outside (0, 1), or
        decreases somewhere.

    Example:
      >>> s = schedule_from_betas([0.1, 0.2])
      >>> [round(float(a), 4) for a in s.alpha_bars]
      [0.9, 0.72]

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


def _check_num_steps(num_steps) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps <= 0:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")


def linear_schedule(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    r"""Ho et al.'s linear schedule: :math:`\beta_t` evenly spaced from start to end.

    .. math:: \beta_t = \beta_{\text{start}}
       + \frac{t}{T-1}(\beta_{\text{end}}-\beta_{\text{start}}),\qquad t = 0..T-1

    With the defaults and :math:`T` = 1000, :math:`\bar\alpha_{T-1} \approx 4.04\times10^{-5}`:
    the last step is almost pure noise. The defaults are tuned for :math:`T = 1000`; a shorter
    chain with the same endpoints does not reach noise (with :math:`T = 100`,
    :math:`\bar\alpha \approx 0.36`), so scale both ends by :math:`1000/T` as Nichol & Dhariwal's
    code does, or use :func:`cosine_schedule`.

    Args:
      num_steps: :math:`T`.
      beta_start: :math:`\beta` of the first step.
      beta_end: :math:`\beta` of the last step (at least ``beta_start``).

    Returns:
      The :class:`Schedule`.

    Example:
      >>> s = linear_schedule(1000)
      >>> f"{float(s.alpha_bars[-1]):.3e}"
      '4.036e-05'

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020,
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    _check_num_steps(num_steps)
    return schedule_from_betas(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def quadratic_schedule(
    num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Schedule:
    r"""The "quad" schedule of Ho et al.'s code: :math:`\sqrt{\beta_t}` evenly spaced.

    .. math:: \beta_t = \Big(\sqrt{\beta_{\text{start}}} + \frac{t}{T-1}
       \big(\sqrt{\beta_{\text{end}}}-\sqrt{\beta_{\text{start}}}\big)\Big)^2

    Same endpoints as :func:`linear_schedule` but more small-noise steps, so
    :math:`\bar\alpha_t` decays more slowly early on.

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
    _check_num_steps(num_steps)
    roots = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=np.float64)
    return schedule_from_betas(roots**2)


def cosine_schedule(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    r"""Nichol & Dhariwal's cosine schedule: :math:`\bar\alpha` follows a squared cosine.

    .. math::
       f(u) = \cos^2\Big(\frac{u/T + s}{1+s}\cdot\frac{\pi}{2}\Big),\qquad
       \beta_t = \min\Big(1 - \frac{f(t+1)}{f(t)},\ \beta_{\max}\Big),\qquad t = 0..T-1

    so that, before clipping, :math:`\bar\alpha_t = f(t+1)/f(0)` (``alpha_bars[t]`` is the
    paper's :math:`\bar\alpha_{t+1}`). The offset :math:`s` keeps :math:`\beta_0` from being
    vanishingly small; the clip at :math:`\beta_{\max}` = 0.999 stops the last steps from
    being singular (:math:`f(T) = 0`). ``alpha_bars`` is recomputed from the clipped betas.

    Args:
      num_steps: :math:`T`.
      s: the offset :math:`s`.
      max_beta: the clip :math:`\beta_{\max}`, in (0, 1).

    Returns:
      The :class:`Schedule`.

    Example:
      >>> s = cosine_schedule(1000)
      >>> round(float(s.betas[-1]), 3)
      0.999

    References:
      Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021,
      https://arxiv.org/abs/2102.09672

    Derivation: derivations/11-ddpm.md
    """
    _check_num_steps(num_steps)
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    if not s >= 0.0:
        raise ValueError(f"s must be >= 0, got {s}")
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2
    return schedule_from_betas(np.minimum(1.0 - f[1:] / f[:-1], max_beta))


# ----------------------------------------------------------------------------- validation


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_t(schedule: Schedule, t, batch: int | None, name: str = "t") -> jax.Array:
    """``t`` as int32 ``[batch]``; a float dtype, a wrong shape or (when concrete) a value
    outside ``0..T-1`` is an error naming ``name``."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer time steps, got dtype {t.dtype}")
    if batch is not None and t.shape != (batch,):
        raise ValueError(f"{name} must have shape [batch] = ({batch},), got {t.shape}")
    if _is_concrete(t):
        values = np.asarray(t)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi >= schedule.num_steps:
            raise ValueError(
                f"{name} must lie in [0, {schedule.num_steps - 1}] (0-based steps of a "
                f"{schedule.num_steps}-step schedule), got values in [{lo}, {hi}]"
            )
    return t.astype(jnp.int32)


def _check_batched(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"{name} must be batched, [batch, ...], got a scalar")
    return x


def _check_same_shape(**arrays) -> None:
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shapes must match, got {shapes}")


def _check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
        )


def _at(coef: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """``coef[t]`` shaped ``[batch, 1, ..., 1]`` (rank ``ndim``) to scale a ``[batch, ...]`` x."""
    return coef[t].reshape(t.shape + (1,) * (ndim - 1))  # [batch, 1, ..., 1]


# ----------------------------------------------------------------------------- forward process


def q_step(
    key: jax.Array,
    schedule: Schedule,
    x_prev: Float[Array, " batch *event"],
    t: Int[Array, " batch"],
    noise: Float[Array, " batch *event"] | None = None,
) -> Float[Array, " batch *event"]:
    r"""One forward step: a draw from :math:`q(x_t \mid x_{t-1})`.

    .. math:: q(x_t \mid x_{t-1}) = N(\sqrt{\alpha_t}x_{t-1}, \beta_t I),\qquad
       x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon,\quad \epsilon\sim N(0, I)

    Iterating this from ``t = 0`` reproduces :func:`q_sample` in distribution; it exists to
    check the closed form.

    Args:
      key: PRNG key for :math:`\epsilon`.
      schedule: the :class:`Schedule`.
      x_prev: ``[batch, ...]`` :math:`x_{t-1}` (the data when ``t = 0``).
      t: ``[batch]`` int 0-based steps.
      noise: optional ``[batch, ...]`` :math:`\epsilon` replacing the draw.

    Returns:
      ``[batch, ...]`` :math:`x_t`.

    Derivation: derivations/11-ddpm.md
    """
    x_prev = _check_batched("x_prev", x_prev)
    t = _check_t(schedule, t, x_prev.shape[0])
    if noise is None:
        noise = jax.random.normal(key, x_prev.shape, x_prev.dtype)
    _check_same_shape(x_prev=x_prev, noise=noise)
    scale = _at(jnp.sqrt(schedule.alphas), t, x_prev.ndim)
    std = _at(jnp.sqrt(schedule.betas), t, x_prev.ndim)
    return scale * x_prev + std * noise


def q_sample(
    key: jax.Array,
    schedule: Schedule,
    x0: Float[Array, " batch *event"],
    t: Int[Array, " batch"],
    noise: Float[Array, " batch *event"] | None = None,
) -> Float[Array, " batch *event"]:
    r"""Draw :math:`x_t` from the closed-form marginal :math:`q(x_t \mid x_0)`.

    .. math:: x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,
       \qquad \epsilon \sim N(0, I)

    with :math:`x_0` = ``x0``, :math:`\epsilon` = ``noise`` and :math:`\bar\alpha_t` =
    ``schedule.alpha_bars[t]`` (0-based ``t``: the paper's :math:`x_{t+1}`).

    Args:
      key: PRNG key for :math:`\epsilon` (unused when ``noise`` is given).
      schedule: the :class:`Schedule`.
      x0: ``[batch, ...]`` clean data.
      t: ``[batch]`` int steps in ``0..T-1``.
      noise: optional ``[batch, ...]`` :math:`\epsilon` replacing the draw.

    Returns:
      ``[batch, ...]`` noisy :math:`x_t`.

    Raises:
      TypeError: ``t`` is not an integer array.
      ValueError: ``t`` is not ``[batch]`` or (when concrete) outside ``0..T-1``; ``noise``
        does not match ``x0``.

    Example:
      >>> s = linear_schedule(10)
      >>> x0, eps = jnp.ones((2, 3)), jnp.zeros((2, 3))
      >>> q_sample(None, s, x0, jnp.array([0, 9]), noise=eps)[:, 0].round(4).tolist()
      [0.9999, 0.9498]

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eq. (4),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    x0 = _check_batched("x0", x0)
    t = _check_t(schedule, t, x0.shape[0])
    if noise is None:
        noise = jax.random.normal(key, x0.shape, x0.dtype)
    _check_same_shape(x0=x0, noise=noise)
    signal = _at(schedule.sqrt_alpha_bars, t, x0.ndim)
    std = _at(schedule.sqrt_one_minus_alpha_bars, t, x0.ndim)
    return signal * x0 + std * noise


def q_posterior(
    schedule: Schedule,
    x0: Float[Array, " batch *event"],
    xt: Float[Array, " batch *event"],
    t: Int[Array, " batch"],
) -> tuple[
    Float[Array, " batch *event"], Float[Array, " batch *event"], Float[Array, " batch *event"]
]:
    r"""The Gaussian posterior :math:`q(x_{t-1} \mid x_t, x_0) = N(\tilde\mu_t, \tilde\beta_t I)`.

    .. math::
       \tilde\mu_t = \frac{\beta_t\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_t}\,x_0
                   + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,
       \qquad \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t

    obtained by completing the square in :math:`q(x_t \mid x_{t-1})\,q(x_{t-1} \mid x_0)`.
    At ``t = 0`` the posterior is a point mass at ``x0`` (:math:`\tilde\beta_0 = 0`).

    Args:
      schedule: the :class:`Schedule`.
      x0: ``[batch, ...]`` :math:`x_0`.
      xt: ``[batch, ...]`` :math:`x_t` (the paper's :math:`x_{t+1}` for 0-based ``t``).
      t: ``[batch]`` int steps in ``0..T-1``.

    Returns:
      ``(mean, variance, log_variance)``, each ``[batch, ...]``; ``log_variance`` is the
      clipped one (:attr:`Schedule.posterior_log_variance_clipped`).

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eqs. (6)-(7),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    x0, xt = _check_batched("x0", x0), _check_batched("xt", xt)
    _check_same_shape(x0=x0, xt=xt)
    t = _check_t(schedule, t, x0.shape[0])
    mean = (
        _at(schedule.posterior_mean_coef_x0, t, x0.ndim) * x0
        + _at(schedule.posterior_mean_coef_xt, t, x0.ndim) * xt
    )
    ones = jnp.ones_like(x0)
    variance = _at(schedule.posterior_variance, t, x0.ndim) * ones
    log_variance = _at(schedule.posterior_log_variance_clipped, t, x0.ndim) * ones
    return mean, variance, log_variance


# ----------------------------------------------------------------------------- parameterisations


def to_x0_eps(
    schedule: Schedule,
    xt: Float[Array, " batch *event"],
    t: Int[Array, " batch"],
    prediction: Float[Array, " batch *event"],
    parameterization: str = "eps",
) -> tuple[Float[Array, " batch *event"], Float[Array, " batch *event"]]:
    r"""Turn an ε, :math:`x_0` or v prediction into the pair :math:`(\hat x_0, \hat\epsilon)`.

    With :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon` and
    :math:`v = \sqrt{\bar\alpha_t}\epsilon - \sqrt{1-\bar\alpha_t}x_0`:

    .. math::
       \text{eps:}\ \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}
       {\sqrt{\bar\alpha_t}};
       \quad \text{x0:}\ \hat\epsilon = \frac{x_t - \sqrt{\bar\alpha_t}\,\hat x_0}
       {\sqrt{1-\bar\alpha_t}};
       \quad \text{v:}\ \hat x_0 = \sqrt{\bar\alpha_t}x_t - \sqrt{1-\bar\alpha_t}\hat v,\
       \hat\epsilon = \sqrt{1-\bar\alpha_t}x_t + \sqrt{\bar\alpha_t}\hat v

    Args:
      schedule: the :class:`Schedule`.
      xt: ``[batch, ...]`` :math:`x_t`.
      t: ``[batch]`` int steps.
      prediction: ``[batch, ...]`` the network's output.
      parameterization: what ``prediction`` is: ``"eps"``, ``"x0"`` or ``"v"``.

    Returns:
      ``(x0_hat, eps_hat)``, each ``[batch, ...]``.

    Note:
      Recovering :math:`x_0` from ε divides by :math:`\sqrt{\bar\alpha_t}`, which is tiny at the
      last steps (:math:`\approx 6\times10^{-3}` for the linear schedule): ε-prediction
      amplifies its error there, which is why samplers clip :math:`\hat x_0` and why v exists.

    References:
      Salimans & Ho, *Progressive Distillation for Fast Sampling of Diffusion Models*, 2022
      (v-prediction), https://arxiv.org/abs/2202.00512

    Derivation: derivations/11-ddpm.md
    """
    _check_parameterization(parameterization)
    xt, prediction = _check_batched("xt", xt), _check_batched("prediction", prediction)
    _check_same_shape(xt=xt, prediction=prediction)
    t = _check_t(schedule, t, xt.shape[0])
    a = _at(schedule.sqrt_alpha_bars, t, xt.ndim)
    s = _at(schedule.sqrt_one_minus_alpha_bars, t, xt.ndim)
    if parameterization == "eps":
        return (xt - s * prediction) / a, prediction
    if parameterization == "x0":
        return prediction, (xt - a * prediction) / s
    return a * xt - s * prediction, s * xt + a * prediction


def from_x0_eps(
    schedule: Schedule,
    t: Int[Array, " batch"],
    x0: Float[Array, " batch *event"],
    eps: Float[Array, " batch *event"],
    parameterization: str = "eps",
) -> Float[Array, " batch *event"]:
    r"""The regression target of a parameterisation, from :math:`(x_0, \epsilon)`.

    .. math:: \text{eps: } \epsilon;\qquad \text{x0: } x_0;\qquad
       \text{v: } v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0

    The inverse of :func:`to_x0_eps` (given :math:`x_t` from :func:`q_sample`).

    Args:
      schedule: the :class:`Schedule`.
      t: ``[batch]`` int steps.
      x0: ``[batch, ...]`` data.
      eps: ``[batch, ...]`` the noise that made :math:`x_t`.
      parameterization: ``"eps"``, ``"x0"`` or ``"v"``.

    Returns:
      ``[batch, ...]`` the target.

    References:
      Salimans & Ho, *Progressive Distillation for Fast Sampling of Diffusion Models*, 2022,
      https://arxiv.org/abs/2202.00512

    Derivation: derivations/11-ddpm.md
    """
    _check_parameterization(parameterization)
    x0, eps = _check_batched("x0", x0), _check_batched("eps", eps)
    _check_same_shape(x0=x0, eps=eps)
    t = _check_t(schedule, t, x0.shape[0])
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    return (
        _at(schedule.sqrt_alpha_bars, t, x0.ndim) * eps
        - _at(schedule.sqrt_one_minus_alpha_bars, t, x0.ndim) * x0
    )


# ----------------------------------------------------------------------------- losses


def loss_weights(
    schedule: Schedule,
    t: Int[Array, " batch"],
    parameterization: str = "eps",
    min_snr_gamma: float | None = None,
) -> Float[Array, " batch"]:
    r"""Per-example weights of :func:`ddpm_loss`: none, or Min-SNR-:math:`\gamma`.

    A squared error in any parameterisation is a multiple of the :math:`x_0` error:
    :math:`\|\hat\epsilon-\epsilon\|^2 = \mathrm{SNR}_t\|\hat x_0-x_0\|^2` and
    :math:`\|\hat v-v\|^2 = (\mathrm{SNR}_t+1)\|\hat x_0-x_0\|^2`. Min-SNR-:math:`\gamma`
    weights the :math:`x_0` error by :math:`\min(\mathrm{SNR}_t, \gamma)`, so

    .. math:: w_t = \frac{\min(\mathrm{SNR}_t,\gamma)}{\mathrm{SNR}_t}\ (\text{eps}),\quad
       \min(\mathrm{SNR}_t,\gamma)\ (\text{x0}),\quad
       \frac{\min(\mathrm{SNR}_t,\gamma)}{\mathrm{SNR}_t+1}\ (\text{v})

    and the three parameterisations then minimise the same objective.

    Args:
      schedule: the :class:`Schedule`.
      t: ``[batch]`` int steps.
      parameterization: ``"eps"``, ``"x0"`` or ``"v"``.
      min_snr_gamma: :math:`\gamma`; ``None`` gives weight 1 (Ho et al.'s simple loss).

    Returns:
      ``[batch]`` weights.

    References:
      Hang et al., *Efficient Diffusion Training via Min-SNR Weighting Strategy*, 2023,
      https://arxiv.org/abs/2303.09556

    Derivation: derivations/11-ddpm.md
    """
    _check_parameterization(parameterization)
    if min_snr_gamma is None:
        return jnp.ones(jnp.shape(t), jnp.float32)
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be positive or None, got {min_snr_gamma}")
    snr = schedule.snr[t]
    clipped = jnp.minimum(snr, min_snr_gamma)
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[parameterization]


def vlb_weights(schedule: Schedule) -> Float[Array, " T"]:
    r"""Weights that turn the ε error into the variational bound's KL term :math:`L_{t-1}`.

    When :math:`p_\theta(x_{t-1}\mid x_t)` has the posterior's variance :math:`\tilde\beta_t`
    and its mean comes from :math:`\hat\epsilon` as in :func:`ddpm_step`,

    .. math:: L_{t-1} = \mathrm{KL}\big(q(x_{t-1}\mid x_t,x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)
       = \lambda_t\,\|\epsilon - \hat\epsilon\|^2,\qquad
       \lambda_t = \frac{\beta_t^2}{2\tilde\beta_t\,\alpha_t\,(1-\bar\alpha_t)}

    Dropping :math:`\lambda_t` gives Ho et al.'s simple loss. At ``t = 0`` the bound's term is
    a decoder likelihood rather than a KL; its entry uses the clipped variance.

    Args:
      schedule: the :class:`Schedule`.

    Returns:
      ``[T]`` the :math:`\lambda_t`.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eq. (12),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    variance = jnp.exp(schedule.posterior_log_variance_clipped)
    return schedule.betas**2 / (2.0 * variance * schedule.alphas * (1.0 - schedule.alpha_bars))


def ddpm_loss(
    key: jax.Array,
    schedule: Schedule,
    model_fn: ModelFn,
    x0: Float[Array, " batch *event"],
    *,
    parameterization: str = "eps",
    min_snr_gamma: float | None = None,
    t: Int[Array, " batch"] | None = None,
    noise: Float[Array, " batch *event"] | None = None,
) -> Float[Array, " batch"]:
    r"""The denoising loss, per example: a weighted squared error of the network's prediction.

    .. math:: \ell = w_t\,\frac1D\big\|\,\mathrm{model\_fn}(x_t, t) - y\,\big\|^2,\qquad
       x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon,\quad
       t\sim U\{0..T-1\},\ \epsilon\sim N(0,I)

    where :math:`y` is :math:`\epsilon`, :math:`x_0` or :math:`v` (``parameterization``,
    :func:`from_x0_eps`), :math:`D` is the number of dimensions of one example and
    :math:`w_t` is :func:`loss_weights` (1 unless ``min_snr_gamma`` is set). With ε and
    :math:`w = 1` this is Ho et al.'s :math:`L_{\text{simple}}`.

    Args:
      key: PRNG key for :math:`t` and :math:`\epsilon`.
      schedule: the :class:`Schedule`.
      model_fn: ``model_fn(x_t [batch, ...], t [batch]) -> [batch, ...]`` prediction; close
        over parameters and labels.
      x0: ``[batch, ...]`` data.
      parameterization: ``"eps"``, ``"x0"`` or ``"v"``.
      min_snr_gamma: optional Min-SNR-:math:`\gamma` weighting.
      t: optional ``[batch]`` steps replacing the uniform draw.
      noise: optional ``[batch, ...]`` :math:`\epsilon` replacing the draw.

    Returns:
      ``[batch]`` per-example losses (mean over the example's dimensions).

    Note:
      Ho et al. average over dimensions, so the loss scale does not depend on image size.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eq. (14),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    _check_parameterization(parameterization)
    x0 = _check_batched("x0", x0)
    k_t, k_eps = jax.random.split(key)
    if t is None:
        t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_steps)
    t = _check_t(schedule, t, x0.shape[0])
    if noise is None:
        noise = jax.random.normal(k_eps, x0.shape, x0.dtype)
    xt = q_sample(None, schedule, x0, t, noise=noise)
    prediction = model_fn(xt, t)
    _check_same_shape(x0=x0, prediction=prediction)
    target = from_x0_eps(schedule, t, x0, noise, parameterization)
    axes = tuple(range(1, x0.ndim))
    per_example = jnp.mean((prediction - target) ** 2, axis=axes)  # [batch]
    return loss_weights(schedule, t, parameterization, min_snr_gamma) * per_example


# ----------------------------------------------------------------------------- sampling


def _clip(x0: jax.Array, clip_x0: tuple[float, float] | None) -> jax.Array:
    return x0 if clip_x0 is None else jnp.clip(x0, clip_x0[0], clip_x0[1])


def _check_sampler_args(shape, parameterization, clip_x0) -> tuple[int, ...]:
    _check_parameterization(parameterization)
    shape = tuple(shape)
    if len(shape) < 1 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"shape must be a tuple of positive ints [batch, ...], got {shape}")
    if clip_x0 is not None and not (len(clip_x0) == 2 and clip_x0[0] < clip_x0[1]):
        raise ValueError(
            f"clip_x0 must be None or a pair (low, high) with low < high, got {clip_x0}"
        )
    return shape


def ddpm_step(
    schedule: Schedule,
    model_fn: ModelFn,
    xt: Float[Array, " batch *event"],
    t: Int[Array, ""],
    z: Float[Array, " batch *event"],
    *,
    parameterization: str = "eps",
    clip_x0: tuple[float, float] | None = None,
    variance: str = "small",
) -> Float[Array, " batch *event"]:
    r"""One ancestral step :math:`x_{t-1} \sim p_\theta(x_{t-1} \mid x_t)` (Ho et al., Alg. 2).

    .. math:: x_{t-1} = \tilde\mu_t\big(\hat x_0(x_t), x_t\big) + \sigma_t z,\qquad
       \sigma_t^2 = \tilde\beta_t\ (\text{"small"})\ \text{or}\ \beta_t\ (\text{"large"})

    with :math:`\hat x_0` from the network (:func:`to_x0_eps`), optionally clipped to
    ``clip_x0``, :math:`\tilde\mu_t` the posterior mean (:func:`q_posterior`) and no noise at
    ``t = 0``. For ε-prediction without clipping this equals Ho et al.'s

    .. math:: x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t
       - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\hat\epsilon\Big) + \sigma_t z

    Args:
      schedule: the :class:`Schedule`.
      model_fn: the denoiser ``(x_t, t [batch]) -> prediction``.
      xt: ``[batch, ...]`` current state.
      t: scalar int step (the same for the whole batch).
      z: ``[batch, ...]`` standard normal draw.
      parameterization: what ``model_fn`` predicts.
      clip_x0: optional ``(low, high)`` range for :math:`\hat x_0` (e.g. the data range).
      variance: ``"small"`` (:math:`\tilde\beta_t`) or ``"large"`` (:math:`\beta_t`).

    Returns:
      ``[batch, ...]`` :math:`x_{t-1}`.

    Derivation: derivations/11-ddpm.md
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    t_batch = jnp.full((xt.shape[0],), t, jnp.int32)
    x0_hat, _ = to_x0_eps(schedule, xt, t_batch, model_fn(xt, t_batch), parameterization)
    mean, _, log_var = q_posterior(schedule, _clip(x0_hat, clip_x0), xt, t_batch)
    if variance == "large":
        log_var = jnp.log(_at(schedule.betas, t_batch, xt.ndim)) * jnp.ones_like(xt)
    return mean + jnp.where(t > 0, jnp.exp(0.5 * log_var), 0.0) * z


def _step_noise(key, noise, shape, num_steps):
    """The initial state and a function giving the draw of step ``i`` (0 = first step taken)."""
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


def ddpm_sample(
    key: jax.Array,
    schedule: Schedule,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    parameterization: str = "eps",
    clip_x0: tuple[float, float] | None = None,
    variance: str = "small",
    return_trajectory: bool = False,
    noise: Float[Array, "steps_plus_one batch *event"] | None = None,
):
    r"""Ancestral sampling: :math:`x_{T-1} \sim N(0, I)`, then :func:`ddpm_step` for
    ``t = T-1, ..., 0``, the whole chain inside one ``jax.lax.scan``.

    Args:
      key: PRNG key (unused when ``noise`` is given).
      schedule: the :class:`Schedule`; the chain has ``schedule.num_steps`` steps.
      model_fn: the denoiser ``(x_t, t [batch]) -> prediction``; wrap it with
        :func:`guided_model_fn` for classifier-free guidance.
      shape: ``(batch, ...)`` of the samples.
      parameterization: what ``model_fn`` predicts.
      clip_x0: optional ``(low, high)`` clip of :math:`\hat x_0` at every step.
      variance: ``"small"`` or ``"large"`` (see :func:`ddpm_step`).
      return_trajectory: also return every state.
      noise: optional ``[T + 1, *shape]`` standard normal draws replacing the random ones:
        ``noise[0]`` is the initial state, ``noise[i]`` the draw of the ``i``-th step taken
        (step ``t = T - i``).

    Returns:
      ``[*shape]`` samples; with ``return_trajectory``, ``(samples, trajectory)`` where
      ``trajectory`` is ``[T + 1, *shape]``, from the initial noise to the samples.

    Example:
      >>> s = linear_schedule(50, 2e-3, 0.4)
      >>> x = ddpm_sample(jax.random.key(0), s, lambda x, t: jnp.zeros_like(x), (4, 2))
      >>> x.shape
      (4, 2)

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, Algorithm 2,
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    shape = _check_sampler_args(shape, parameterization, clip_x0)
    num_steps = schedule.num_steps
    x_init, draws = _step_noise(key, noise, shape, num_steps)
    ts = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32)  # [T]: T-1, ..., 0

    def body(x, inputs):
        t, z_or_key = inputs
        x = ddpm_step(
            schedule,
            model_fn,
            x,
            t,
            _draw(z_or_key, shape),
            parameterization=parameterization,
            clip_x0=clip_x0,
            variance=variance,
        )
        return x, (x if return_trajectory else None)

    x, states = jax.lax.scan(body, x_init, (ts, draws))
    if return_trajectory:
        return x, jnp.concatenate([x_init[None], states], axis=0)  # [T + 1, *shape]
    return x


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    r"""The strided sub-sequence :math:`\tau` of DDIM: ``num_steps`` evenly spaced steps.

    .. math:: \tau_i = \mathrm{round}\Big(\frac{i\,(T-1)}{S-1}\Big),\qquad i = 0..S-1

    so :math:`\tau_0 = 0`, :math:`\tau_{S-1} = T-1` and, since consecutive values are at
    least one apart when :math:`S \le T`, all are distinct; :math:`S = T` gives every step.

    Args:
      num_train_steps: :math:`T` of the schedule.
      num_steps: :math:`S`, between 1 and :math:`T` (:math:`S = 1` gives the last step only).

    Returns:
      ``[S]`` increasing int32 steps.

    Derivation: derivations/13-ddim.md
    """
    _check_num_steps(num_steps)
    if num_steps > num_train_steps:
        raise ValueError(
            f"num_steps ({num_steps}) must be at most the schedule's {num_train_steps} steps"
        )
    if num_steps == 1:
        return np.array([num_train_steps - 1], np.int32)
    return np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int32)


def ddim_step(
    schedule: Schedule,
    model_fn: ModelFn,
    xt: Float[Array, " batch *event"],
    t: Int[Array, ""],
    t_prev: Int[Array, ""],
    z: Float[Array, " batch *event"],
    *,
    eta: float = 0.0,
    parameterization: str = "eps",
    clip_x0: tuple[float, float] | None = None,
) -> Float[Array, " batch *event"]:
    r"""One DDIM step from step ``t`` to the earlier step ``t_prev`` (``-1`` = the data).

    .. math::
       x_{\text{prev}} = \sqrt{\bar\alpha_{\text{prev}}}\,\hat x_0
         + \sqrt{1-\bar\alpha_{\text{prev}}-\sigma^2}\,\hat\epsilon + \sigma z,\qquad
       \sigma = \eta\sqrt{\frac{1-\bar\alpha_{\text{prev}}}{1-\bar\alpha_t}}
                \sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{\text{prev}}}}

    with :math:`\bar\alpha_{\text{prev}}` = ``alpha_bars[t_prev]`` (1 for ``t_prev = -1``).
    :math:`\eta = 0` is the deterministic DDIM; :math:`\eta = 1` over every step is DDPM with
    :math:`\sigma_t^2 = \tilde\beta_t`. When :math:`\hat x_0` is clipped, :math:`\hat\epsilon`
    is recomputed from the clipped :math:`\hat x_0` so the step stays on the same line.

    Args:
      schedule: the :class:`Schedule`.
      model_fn: the denoiser.
      xt: ``[batch, ...]`` current state.
      t: scalar int current step.
      t_prev: scalar int target step, smaller than ``t``; ``-1`` means :math:`x_0`.
      z: ``[batch, ...]`` standard normal draw (ignored when :math:`\eta = 0`).
      eta: :math:`\eta \ge 0`.
      parameterization: what ``model_fn`` predicts.
      clip_x0: optional ``(low, high)`` clip of :math:`\hat x_0`.

    Returns:
      ``[batch, ...]`` the state at ``t_prev``.

    References:
      Song et al., *Denoising Diffusion Implicit Models*, 2020, eq. (12),
      https://arxiv.org/abs/2010.02502

    Derivation: derivations/13-ddim.md
    """
    t_batch = jnp.full((xt.shape[0],), t, jnp.int32)
    x0_hat, eps_hat = to_x0_eps(schedule, xt, t_batch, model_fn(xt, t_batch), parameterization)
    if clip_x0 is not None:
        x0_hat = _clip(x0_hat, clip_x0)
        a, s = schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
        eps_hat = (xt - a * x0_hat) / s
    ab = schedule.alpha_bars[t]
    ab_prev = jnp.where(t_prev >= 0, schedule.alpha_bars[jnp.maximum(t_prev, 0)], 1.0)
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0))
    return jnp.sqrt(ab_prev) * x0_hat + direction * eps_hat + sigma * z


def ddim_sample(
    key: jax.Array,
    schedule: Schedule,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    num_steps: int | None = None,
    eta: float = 0.0,
    parameterization: str = "eps",
    clip_x0: tuple[float, float] | None = None,
    return_trajectory: bool = False,
    noise: Float[Array, "steps_plus_one batch *event"] | None = None,
):
    r"""DDIM sampling over the strided steps :func:`ddim_timesteps`, inside one ``lax.scan``.

    Starts from :math:`N(0, I)` at step :math:`\tau_{S-1} = T-1` and applies :func:`ddim_step`
    from :math:`\tau_i` to :math:`\tau_{i-1}` for ``i = S-1, ..., 0`` (:math:`\tau_{-1}` is the
    data). The network is trained once on all :math:`T` steps; DDIM only changes the sampler.

    Args:
      key: PRNG key (unused when ``noise`` is given).
      schedule: the :class:`Schedule` the network was trained with.
      model_fn: the denoiser ``(x_t, t [batch]) -> prediction``.
      shape: ``(batch, ...)`` of the samples.
      num_steps: :math:`S`; ``None`` uses all :math:`T` steps.
      eta: :math:`\eta` (0: deterministic given the initial noise; 1: DDPM-like).
      parameterization: what ``model_fn`` predicts.
      clip_x0: optional ``(low, high)`` clip of :math:`\hat x_0`.
      return_trajectory: also return every state.
      noise: optional ``[S + 1, *shape]`` draws: ``noise[0]`` is the initial state,
        ``noise[i]`` the draw of the ``i``-th step taken (the layout of :func:`ddpm_sample`).

    Returns:
      ``[*shape]`` samples; with ``return_trajectory``, ``(samples, [S + 1, *shape])``.

    Raises:
      ValueError: ``num_steps`` outside ``1..T``, negative ``eta``, bad ``shape`` or ``noise``.

    References:
      Song et al., *Denoising Diffusion Implicit Models*, 2020, https://arxiv.org/abs/2010.02502

    Derivation: derivations/13-ddim.md
    """
    shape = _check_sampler_args(shape, parameterization, clip_x0)
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    num_steps = schedule.num_steps if num_steps is None else num_steps
    steps = ddim_timesteps(schedule.num_steps, num_steps)
    x_init, draws = _step_noise(key, noise, shape, len(steps))
    ts = jnp.asarray(steps[::-1])  # [S]: tau_{S-1}, ..., tau_0
    ts_prev = jnp.asarray(np.concatenate([[-1], steps[:-1]])[::-1].astype(np.int32))  # [S]

    def body(x, inputs):
        t, t_prev, z_or_key = inputs
        x = ddim_step(
            schedule,
            model_fn,
            x,
            t,
            t_prev,
            _draw(z_or_key, shape),
            eta=eta,
            parameterization=parameterization,
            clip_x0=clip_x0,
        )
        return x, (x if return_trajectory else None)

    x, states = jax.lax.scan(body, x_init, (ts, ts_prev, draws))
    if return_trajectory:
        return x, jnp.concatenate([x_init[None], states], axis=0)  # [S + 1, *shape]
    return x


# ----------------------------------------------------------------------------- guidance


def classifier_free_guidance(
    eps_cond: Float[Array, " batch *event"],
    eps_uncond: Float[Array, " batch *event"],
    guidance_scale: float | Float[Array, ""],
) -> Float[Array, " batch *event"]:
    r"""Combine conditional and unconditional predictions (classifier-free guidance).

    .. math:: \tilde\epsilon = \epsilon_u + w\,(\epsilon_c - \epsilon_u)

    with :math:`\epsilon_c` = ``eps_cond``, :math:`\epsilon_u` = ``eps_uncond`` and
    :math:`w` = ``guidance_scale``: :math:`w = 0` is unconditional, :math:`w = 1` conditional,
    :math:`w > 1` sharpens toward the condition (the score of
    :math:`p(x)\,p(c \mid x)^{w}`).

    Note:
      Ho & Salimans write :math:`(1+w')\epsilon_c - w'\epsilon_u`; that is this function with
      ``guidance_scale = 1 + w'`` (:func:`guidance_scale_from_ho_salimans`). The formula is
      affine with weights summing to one, so it applies unchanged to :math:`x_0` or v
      predictions of the same :math:`x_t`.

    Args:
      eps_cond: ``[batch, ...]`` conditional prediction.
      eps_uncond: ``[batch, ...]`` unconditional prediction (null label).
      guidance_scale: :math:`w`, a scalar.

    Returns:
      ``[batch, ...]`` guided prediction.

    Example:
      >>> classifier_free_guidance(jnp.ones(2), jnp.zeros(2), 3.0).tolist()
      [3.0, 3.0]

    References:
      Ho & Salimans, *Classifier-Free Diffusion Guidance*, 2022, https://arxiv.org/abs/2207.12598

    Derivation: derivations/12-guidance.md
    """
    eps_cond, eps_uncond = jnp.asarray(eps_cond), jnp.asarray(eps_uncond)
    _check_same_shape(eps_cond=eps_cond, eps_uncond=eps_uncond)
    if jnp.ndim(guidance_scale) != 0:
        raise ValueError(f"guidance_scale must be a scalar, got shape {jnp.shape(guidance_scale)}")
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guidance_scale_from_ho_salimans(w: float) -> float:
    r"""Convert Ho & Salimans's guidance weight :math:`w'` to ``guidance_scale`` :math:`= 1+w'`.

    Example:
      >>> guidance_scale_from_ho_salimans(0.0)
      1.0

    Derivation: derivations/12-guidance.md
    """
    return 1.0 + w


def classifier_guidance(
    schedule: Schedule,
    eps: Float[Array, " batch *event"],
    t: Int[Array, " batch"],
    grad_log_prob: Float[Array, " batch *event"],
    scale: float,
) -> Float[Array, " batch *event"]:
    r"""Classifier guidance: push ε against the gradient of a classifier's log-probability.

    .. math:: \tilde\epsilon = \hat\epsilon - s\,\sqrt{1-\bar\alpha_t}\,
       \nabla_{x_t}\log p_\phi(y \mid x_t)

    since :math:`\hat\epsilon = -\sqrt{1-\bar\alpha_t}\,\nabla\log p(x_t)`; this is the ε of
    :math:`p(x_t)\,p_\phi(y\mid x_t)^s`. With the exact :math:`p(y \mid x_t)` and :math:`s = w`
    it equals :func:`classifier_free_guidance` with scale :math:`w`.

    Args:
      schedule: the :class:`Schedule`.
      eps: ``[batch, ...]`` unconditional ε prediction.
      t: ``[batch]`` int steps.
      grad_log_prob: ``[batch, ...]`` :math:`\nabla_{x_t}\log p_\phi(y\mid x_t)`.
      scale: the classifier scale :math:`s`.

    Returns:
      ``[batch, ...]`` guided ε.

    References:
      Dhariwal & Nichol, *Diffusion Models Beat GANs on Image Synthesis*, 2021, Algorithm 2,
      https://arxiv.org/abs/2105.05233

    Derivation: derivations/12-guidance.md
    """
    eps, grad_log_prob = _check_batched("eps", eps), _check_batched("grad_log_prob", grad_log_prob)
    _check_same_shape(eps=eps, grad_log_prob=grad_log_prob)
    t = _check_t(schedule, t, eps.shape[0])
    return eps - scale * _at(schedule.sqrt_one_minus_alpha_bars, t, eps.ndim) * grad_log_prob


def drop_labels(
    key: jax.Array,
    labels: Int[Array, " batch"],
    drop_prob: float,
    null_label: int,
    noise: Float[Array, " batch"] | None = None,
) -> Int[Array, " batch"]:
    r"""Label dropout for classifier-free guidance: replace each label by ``null_label`` w.p. ``p``.

    .. math:: \tilde y_i = \begin{cases}\varnothing & u_i < p\\ y_i & \text{otherwise}\end{cases},
       \qquad u_i \sim U[0, 1)

    One network then learns both :math:`\epsilon(x_t, y)` and :math:`\epsilon(x_t, \varnothing)`.

    Args:
      key: PRNG key for :math:`u`.
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
    if noise is None:
        noise = jax.random.uniform(key, labels.shape)
    return jnp.where(noise < drop_prob, null_label, labels).astype(jnp.int32)


def guided_model_fn(
    model_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    labels: Int[Array, " batch"],
    null_label: int,
    guidance_scale: float,
) -> ModelFn:
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


# ----------------------------------------------------------------------------- analytic check


def gaussian_mixture_eps(
    schedule: Schedule,
    xt: Float[Array, "batch dim"],
    t: Int[Array, " batch"],
    means: Float[Array, "components dim"],
    std: float,
    weights: Float[Array, " components"] | None = None,
) -> Float[Array, "batch dim"]:
    r"""The exact optimal ε-predictor when the data is a Gaussian mixture.

    If :math:`x_0 \sim \sum_k \pi_k N(\mu_k, s^2 I)` then
    :math:`x_t \sim \sum_k \pi_k N(\sqrt{\bar\alpha_t}\mu_k, \sigma_t^2 I)` with
    :math:`\sigma_t^2 = \bar\alpha_t s^2 + 1 - \bar\alpha_t`, and the minimiser of the ε loss is
    :math:`E[\epsilon \mid x_t] = -\sqrt{1-\bar\alpha_t}\,\nabla\log q(x_t)`:

    .. math:: \epsilon^*(x_t, t) = \sqrt{1-\bar\alpha_t}\sum_k r_k(x_t)
       \frac{x_t - \sqrt{\bar\alpha_t}\mu_k}{\sigma_t^2},\qquad
       r_k = \mathrm{softmax}_k\Big(\log\pi_k - \frac{\|x_t-\sqrt{\bar\alpha_t}\mu_k\|^2}
       {2\sigma_t^2}\Big)

    A one-component ``means`` gives the ε of that component alone (the "conditional" ε).

    Args:
      schedule: the :class:`Schedule`.
      xt: ``[batch, dim]`` noisy points.
      t: ``[batch]`` int steps.
      means: ``[K, dim]`` component means :math:`\mu_k`.
      std: the components' standard deviation :math:`s \ge 0`.
      weights: optional ``[K]`` mixture weights :math:`\pi_k` (default equal).

    Returns:
      ``[batch, dim]`` :math:`\epsilon^*`.

    Derivation: derivations/11-ddpm.md (the score of a noised mixture)
    """
    xt = _check_batched("xt", xt)
    means = jnp.asarray(means, jnp.float32)
    if xt.ndim != 2 or means.ndim != 2 or means.shape[1] != xt.shape[1]:
        raise ValueError(
            f"xt must be [batch, dim] and means [K, dim] with the same dim, got {xt.shape} "
            f"and {means.shape}"
        )
    t = _check_t(schedule, t, xt.shape[0])
    if weights is None:
        log_w = jnp.full((means.shape[0],), -math.log(means.shape[0]))
    else:
        log_w = jnp.log(jnp.asarray(weights, jnp.float32))
        if log_w.shape != (means.shape[0],):
            raise ValueError(f"weights must be [K] = ({means.shape[0]},), got {log_w.shape}")
    a = schedule.sqrt_alpha_bars[t][:, None, None]  # [batch, 1, 1]
    var = (schedule.alpha_bars[t] * std**2 + 1.0 - schedule.alpha_bars[t])[:, None]  # [batch, 1]
    diff = xt[:, None, :] - a * means[None]  # [batch, K, dim]
    logits = log_w[None] - 0.5 * jnp.sum(diff**2, axis=-1) / var  # [batch, K]
    r = jax.nn.softmax(logits, axis=-1)  # [batch, K]
    expected_diff = jnp.einsum("bk,bkd->bd", r, diff)  # [batch, dim]
    return schedule.sqrt_one_minus_alpha_bars[t][:, None] * expected_diff / var


# ----------------------------------------------------------------------------- toy denoiser


class MLPDenoiser(nn.Module):
    r"""An MLP denoiser for vector data: ``(x_t [b, d], t [b], y [b] | None) -> [b, d]``.

    The time step enters through :class:`genjax.nn.layers.TimeEmbedding` (sinusoidal encoding
    then an MLP), added to every hidden layer; an optional class embedding (``num_classes``
    labels plus one null label for classifier-free guidance) is added to the time embedding.

    Attributes:
      num_steps: :math:`T` of the schedule (the time embedding's table size).
      features: hidden width.
      depth: number of hidden layers.
      num_classes: number of labels, or ``None`` for an unconditional model.

    Derivation: derivations/11-ddpm.md
    """

    num_steps: int
    features: int = 128
    depth: int = 3
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, t, y=None):
        if x.ndim != 2:
            raise ValueError(f"x must be [batch, dim], got shape {x.shape}")
        emb = TimeEmbedding(self.num_steps, self.features)(t)  # [b, features]
        if self.num_classes is not None:
            if y is None:
                raise ValueError("a conditional MLPDenoiser needs labels y [batch]")
            emb = emb + nn.Embed(self.num_classes + 1, self.features)(y)  # [b, features]
        h = nn.Dense(self.features)(x)
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.features)(h) + nn.Dense(self.features)(emb))
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)
