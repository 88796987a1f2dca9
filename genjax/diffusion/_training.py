r"""The forward process, the three parameterisations, the losses, and two denoisers: the exact ε
of a Gaussian mixture and the MLP for vector data.

Derivation: derivations/11-ddpm.md
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from genjax import _checks
from genjax.diffusion._schedules import Schedule, _at, _Batch, _ModelFn, _Steps, _t
from genjax.nn.layers import Dense, TimeEmbedding

PARAMETERIZATIONS = ("eps", "x0", "v")


# ----------------------------------------------------------------------------- forward process


def q_step(key: jax.Array, schedule: Schedule, x_prev: _Batch, t: _Steps, noise=None) -> _Batch:
    r"""One forward step: a draw from :math:`q(x_t \mid x_{t-1})`.

    .. math:: x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon,\qquad
       \epsilon\sim N(0, I)

    Iterated from ``t = 0`` it reproduces :func:`q_sample` in distribution.

    Args:
      key: PRNG key for :math:`\epsilon` (may be ``None`` when ``noise`` is given).
      schedule: the :class:`Schedule`.
      x_prev: ``[batch, ...]`` :math:`x_{t-1}` (the data when ``t = 0``).
      t: int step(s), a scalar or ``[batch]``.
      noise: optional ``[batch, ...]`` :math:`\epsilon` replacing the draw.

    Returns:
      ``[batch, ...]`` :math:`x_t`.

    Derivation: derivations/11-ddpm.md
    """
    scale, std = jnp.sqrt(schedule.alphas), jnp.sqrt(schedule.betas)
    return _scale_and_noise(key, schedule, "x_prev", x_prev, t, noise, scale, std)


def q_sample(key: jax.Array, schedule: Schedule, x0: _Batch, t: _Steps, noise=None) -> _Batch:
    r"""Draw :math:`x_t` from the closed-form marginal :math:`q(x_t \mid x_0)`.

    .. math:: x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,
       \qquad \epsilon \sim N(0, I)

    with :math:`x_0` = ``x0``, :math:`\epsilon` = ``noise`` and :math:`\bar\alpha_t` =
    ``schedule.alpha_bars[t]``.

    Args:
      key: PRNG key for :math:`\epsilon` (may be ``None`` when ``noise`` is given).
      schedule: the :class:`Schedule`.
      x0: ``[batch, ...]`` clean data.
      t: int step(s) in ``0..T-1``, a scalar or ``[batch]``; outside that range a
        ``ValueError``, or under ``jit`` (where it cannot be checked) clamped to ``0..T-1``.
      noise: optional ``[batch, ...]`` :math:`\epsilon` replacing the draw.

    Returns:
      ``[batch, ...]`` noisy :math:`x_t`.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eq. (4),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    signal, std = schedule.sqrt_alpha_bars, schedule.sqrt_one_minus_alpha_bars
    return _scale_and_noise(key, schedule, "x0", x0, t, noise, signal, std)


def _scale_and_noise(key, schedule, name, x, t, noise, scale, std):
    """``scale[t] x + std[t] noise`` for ``x`` named ``name``, drawing ``noise`` if not given."""
    x = _checks.batched(name, x)
    t = _t(schedule, t, x)
    _checks.key_given(key, noise=noise)
    if noise is None:
        noise = jax.random.normal(key, x.shape, x.dtype)
    _checks.same_shape(**{name: x, "noise": noise})
    return _at(scale, t, x.ndim) * x + _at(std, t, x.ndim) * noise


def q_posterior(
    schedule: Schedule, x0: _Batch, xt: _Batch, t: _Steps
) -> tuple[_Batch, _Batch, _Batch]:
    r"""The Gaussian posterior :math:`q(x_{t-1} \mid x_t, x_0) = N(\tilde\mu_t, \tilde\beta_t I)`.

    .. math::
       \tilde\mu_t = \frac{\beta_t\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_t}\,x_0
                   + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,
       \qquad \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t

    At ``t = 0`` the posterior is a point mass at ``x0`` (:math:`\tilde\beta_0 = 0`).

    Args:
      schedule: the :class:`Schedule`.
      x0: ``[batch, ...]`` :math:`x_0`.
      xt: ``[batch, ...]`` :math:`x_t`.
      t: int step(s) in ``0..T-1``, a scalar or ``[batch]``.

    Returns:
      ``(mean, variance, log_variance)``, each ``[batch, ...]``; ``log_variance`` is the
      clipped one (``Schedule.posterior_log_variance_clipped``).

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eqs. (6)-(7),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    x0, xt = _checks.batched("x0", x0), _checks.batched("xt", xt)
    _checks.same_shape(x0=x0, xt=xt)
    t = _t(schedule, t, x0)
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
    schedule: Schedule, xt: _Batch, t: _Steps, prediction: _Batch, parameterization: str = "eps"
) -> tuple[_Batch, _Batch]:
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

    Recovering :math:`x_0` from ε divides by :math:`\sqrt{\bar\alpha_t}`, tiny at the last
    steps: ε-prediction amplifies its error there, which is why :func:`sample` clips
    :math:`\hat x_0` and why v exists.

    Args:
      schedule: the :class:`Schedule`.
      xt: ``[batch, ...]`` :math:`x_t`.
      t: int step(s), a scalar or ``[batch]``.
      prediction: ``[batch, ...]`` the network's output.
      parameterization: what ``prediction`` is: ``"eps"``, ``"x0"`` or ``"v"``.

    Returns:
      ``(x0_hat, eps_hat)``, each ``[batch, ...]``.

    References:
      Salimans & Ho, *Progressive Distillation for Fast Sampling of Diffusion Models*, 2022
      (v-prediction), https://arxiv.org/abs/2202.00512

    Derivation: derivations/11-ddpm.md
    """
    _checks.one_of("parameterization", parameterization, PARAMETERIZATIONS)
    xt, prediction = _checks.batched("xt", xt), _checks.batched("prediction", prediction)
    _checks.same_shape(xt=xt, prediction=prediction)
    t = _t(schedule, t, xt)
    a = _at(schedule.sqrt_alpha_bars, t, xt.ndim)
    s = _at(schedule.sqrt_one_minus_alpha_bars, t, xt.ndim)
    if parameterization == "eps":
        return (xt - s * prediction) / a, prediction
    if parameterization == "x0":
        return prediction, (xt - a * prediction) / s
    return a * xt - s * prediction, s * xt + a * prediction


def from_x0_eps(
    schedule: Schedule, t: _Steps, x0: _Batch, eps: _Batch, parameterization: str = "eps"
) -> _Batch:
    r"""The regression target of a parameterisation, from :math:`(x_0, \epsilon)`.

    .. math:: \text{eps: } \epsilon;\qquad \text{x0: } x_0;\qquad
       \text{v: } v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0

    The inverse of :func:`to_x0_eps` (given :math:`x_t` from :func:`q_sample`).

    Args:
      schedule: the :class:`Schedule`.
      t: int step(s), a scalar or ``[batch]``.
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
    _checks.one_of("parameterization", parameterization, PARAMETERIZATIONS)
    x0, eps = _checks.batched("x0", x0), _checks.batched("eps", eps)
    _checks.same_shape(x0=x0, eps=eps)
    t = _t(schedule, t, x0)
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
    t: _Steps,
    parameterization: str = "eps",
    min_snr_gamma: float | None = None,
) -> Float[Array, "*t"]:
    r"""Per-example weights of :func:`ddpm_loss`: none, or Min-SNR-:math:`\gamma`.

    Every parameterisation's squared error is a multiple of the :math:`x_0` error
    (:math:`\|\hat\epsilon-\epsilon\|^2 = \mathrm{SNR}_t\|\hat x_0-x_0\|^2`,
    :math:`\|\hat v-v\|^2 = (\mathrm{SNR}_t+1)\|\hat x_0-x_0\|^2`); Min-SNR-:math:`\gamma`
    weights the :math:`x_0` error by :math:`\min(\mathrm{SNR}_t, \gamma)`:

    .. math:: w_t = \frac{\min(\mathrm{SNR}_t,\gamma)}{\mathrm{SNR}_t}\ (\text{eps}),\quad
       \min(\mathrm{SNR}_t,\gamma)\ (\text{x0}),\quad
       \frac{\min(\mathrm{SNR}_t,\gamma)}{\mathrm{SNR}_t+1}\ (\text{v})

    Args:
      schedule: the :class:`Schedule`.
      t: int step(s), any shape (a Python int, a scalar or ``[batch]``).
      parameterization: ``"eps"``, ``"x0"`` or ``"v"``.
      min_snr_gamma: :math:`\gamma > 0`; ``None`` gives weight 1 (Ho et al.'s simple loss).

    Returns:
      Weights with the shape of ``t``.

    References:
      Hang et al., *Efficient Diffusion Training via Min-SNR Weighting Strategy*, 2023,
      https://arxiv.org/abs/2303.09556

    Derivation: derivations/11-ddpm.md
    """
    _checks.one_of("parameterization", parameterization, PARAMETERIZATIONS)
    if min_snr_gamma is None:
        return jnp.ones(jnp.shape(t), jnp.float32)
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be positive or None, got {min_snr_gamma}")
    snr = schedule.snr[jnp.asarray(t)]
    clipped = jnp.minimum(snr, min_snr_gamma)
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[parameterization]


def vlb_weights(schedule: Schedule) -> Float[Array, " T"]:
    r"""Weights that turn the ε error into the variational bound's KL term :math:`L_{t-1}`.

    When :math:`p_\theta(x_{t-1}\mid x_t)` has variance :math:`\tilde\beta_t` and its mean
    comes from :math:`\hat\epsilon` as in :func:`ddpm_step`,

    .. math:: L_{t-1} = \mathrm{KL}\big(q(x_{t-1}\mid x_t,x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)
       = \lambda_t\,\|\epsilon - \hat\epsilon\|^2,\qquad
       \lambda_t = \frac{\beta_t^2}{2\tilde\beta_t\,\alpha_t\,(1-\bar\alpha_t)}

    At ``t = 0`` the bound's term is a decoder likelihood; its entry uses the clipped variance.

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
    key: jax.Array | None,
    schedule: Schedule,
    model_fn: _ModelFn,
    x0: _Batch,
    *,
    parameterization: str = "eps",
    min_snr_gamma: float | None = None,
    t: _Steps | None = None,
    noise: _Batch | None = None,
) -> Float[Array, " batch"]:
    r"""The denoising loss, per example: a weighted squared error of the network's prediction.

    .. math:: \ell = w_t\,\frac1D\big\|\,\mathrm{model\_fn}(x_t, t) - y\,\big\|^2,\qquad
       x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon,\quad
       t\sim U\{0..T-1\},\ \epsilon\sim N(0,I)

    where :math:`y` is :math:`\epsilon`, :math:`x_0` or :math:`v` (:func:`from_x0_eps`),
    :math:`D` the number of dimensions of one example (Ho et al. average over them, so the
    scale does not depend on image size) and :math:`w_t` is :func:`loss_weights`. With ε and
    :math:`w = 1` this is Ho et al.'s :math:`L_{\text{simple}}`.

    Args:
      key: PRNG key for :math:`t` and :math:`\epsilon`; ``None`` when both are given.
      schedule: the :class:`Schedule`.
      model_fn: ``(x_t [batch, ...], t [batch]) -> [batch, ...]``; close over parameters and
        labels.
      x0: ``[batch, ...]`` data.
      parameterization: ``"eps"``, ``"x0"`` or ``"v"``.
      min_snr_gamma: optional Min-SNR-:math:`\gamma` weighting.
      t: optional int step(s) in ``0..T-1``, a scalar or ``[batch]``, replacing the uniform
        draw; outside that range as in :func:`q_sample` (an error, clamped under ``jit``).
      noise: optional ``[batch, ...]`` :math:`\epsilon` replacing the draw.

    Returns:
      ``[batch]`` per-example losses.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eq. (14),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/11-ddpm.md
    """
    _checks.one_of("parameterization", parameterization, PARAMETERIZATIONS)
    x0 = _checks.batched("x0", x0)
    t, noise, xt = _draw_t_noise(key, schedule, x0, t, noise)
    prediction = model_fn(xt, t)
    _checks.same_shape(x0=x0, prediction=prediction)
    target = from_x0_eps(schedule, t, x0, noise, parameterization)
    per_example = jnp.mean((prediction - target) ** 2, axis=tuple(range(1, x0.ndim)))  # [batch]
    return loss_weights(schedule, t, parameterization, min_snr_gamma) * per_example


def _draw_t_noise(key, schedule: Schedule, x0: jax.Array, t, noise):
    """``(t [batch], noise, x_t)`` of a training step: ``t`` uniform on ``0..T-1`` and the noise
    standard normal unless given (``key`` may be ``None`` when both are)."""
    _checks.key_given(key, t=t, noise=noise)
    if key is not None:
        k_t, k_eps = jax.random.split(key)
    if t is None:
        t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_steps)
    t = _t(schedule, t, x0)
    if noise is None:
        noise = jax.random.normal(k_eps, x0.shape, x0.dtype)
    return t, noise, q_sample(None, schedule, x0, t, noise=noise)


# ----------------------------------------------------------------------------- analytic check


def gaussian_mixture_eps(
    schedule: Schedule,
    xt: Float[Array, "batch dim"],
    t: _Steps,
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
      t: int step(s), a scalar or ``[batch]``.
      means: ``[K, dim]`` component means :math:`\mu_k`.
      std: the components' standard deviation :math:`s \ge 0`.
      weights: optional ``[K]`` mixture weights :math:`\pi_k` (default equal).

    Returns:
      ``[batch, dim]`` :math:`\epsilon^*`.

    Derivation: derivations/11-ddpm.md
    """
    xt = _checks.batched("xt", xt)
    means = jnp.asarray(means, jnp.float32)
    if xt.ndim != 2 or means.ndim != 2 or means.shape[1] != xt.shape[1]:
        raise ValueError(
            f"xt must be [batch, dim] and means [K, dim] with the same dim, got {xt.shape} "
            f"and {means.shape}"
        )
    t = _t(schedule, t, xt)
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

    The time step enters through :class:`genjax.nn.layers.TimeEmbedding`, added to every hidden
    layer; an optional class embedding (``num_classes`` labels plus one null label for
    classifier-free guidance) is added to the time embedding. The output layer starts at zero.

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
        h = Dense(self.features)(x)
        for _ in range(self.depth):
            h = nn.silu(Dense(self.features)(h) + Dense(self.features)(emb))
        return Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)
