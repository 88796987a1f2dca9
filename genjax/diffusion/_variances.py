r"""The reverse step's mean and variance (fixed or learned), the exact variational bound with its
discretised decoder, and Nichol & Dhariwal's hybrid loss.

Derivation: derivations/26-improved-diffusion.md
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr
from jaxtyping import Array, Float

from genjax import _checks, divergences
from genjax.diffusion._schedules import Schedule, _at, _Batch, _clip, _ModelFn, _Steps, _t
from genjax.diffusion._training import (
    PARAMETERIZATIONS,
    _draw_t_noise,
    from_x0_eps,
    loss_weights,
    q_posterior,
    q_sample,
    to_x0_eps,
)

VARIANCES = ("small", "large", "learned")
HYBRID_VLB_WEIGHT = 1e-3  # Nichol & Dhariwal's lambda


def split_learned(output: Float[Array, "batch *event two_c"]) -> tuple[_Batch, _Batch]:
    r"""Split a learned-variance network's output ``[batch, ..., 2 C]`` into the prediction
    (ε, :math:`x_0` or v, the first ``C`` channels) and the interpolation logit v (the last
    ``C``).

    .. math:: f_\theta(x_t, t) = \big[\hat y \,\|\, v\big],\qquad
       \hat y = f_{:, \ldots, :C},\quad v = f_{:, \ldots, C:}

    Args:
      output: ``[batch, ..., 2 C]`` the network's output.

    Returns:
      ``(prediction, v)``, each ``[batch, ..., C]``.

    References:
      Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021, Sec. 3.1,
      https://arxiv.org/abs/2102.09672

    Derivation: derivations/26-improved-diffusion.md
    """
    output = _checks.batched("output", output)
    if output.shape[-1] % 2:
        raise ValueError(
            f"a learned-variance output has 2 C channels on its last axis, got {output.shape}"
        )
    return jnp.split(output, 2, axis=-1)


def learned_log_variance(schedule: Schedule, t: _Steps, v: _Batch) -> _Batch:
    r"""Nichol & Dhariwal's learned variance: a per-dimension interpolation of the two bounds.

    .. math:: \log\Sigma_\theta(x_t, t) = f\log\beta_t + (1-f)\log\tilde\beta_t,\qquad
       f = \tfrac12\big(1 + \tanh v\big) \in (0, 1)

    with :math:`\tilde\beta_t` the clipped posterior variance
    (``Schedule.posterior_log_variance_clipped``), so :math:`\Sigma_\theta` lies between
    :math:`\tilde\beta_t` and :math:`\beta_t`.

    Note: the paper uses :math:`f = (v + 1)/2` with v unconstrained, which can leave the
    interval; :math:`\tfrac12(1+\tanh v)` equals it to first order at :math:`v = 0` (where a
    zero-initialised output starts) and never leaves it.

    Args:
      schedule: the :class:`Schedule`.
      t: int step(s), a scalar or ``[batch]``.
      v: ``[batch, ...]`` the network's interpolation output.

    Returns:
      ``[batch, ...]`` :math:`\log\Sigma_\theta`.

    References:
      Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021, eq. (15),
      https://arxiv.org/abs/2102.09672

    Derivation: derivations/26-improved-diffusion.md
    """
    v = _checks.batched("v", v)
    t = _t(schedule, t, v)
    frac = 0.5 * (1.0 + jnp.tanh(v))
    log_large = _at(jnp.log(schedule.betas), t, v.ndim)
    log_small = _at(schedule.posterior_log_variance_clipped, t, v.ndim)
    return frac * log_large + (1.0 - frac) * log_small


def p_mean_variance(
    schedule: Schedule,
    output: _Batch,
    xt: _Batch,
    t: _Steps,
    *,
    parameterization: str = "eps",
    variance: str = "small",
    clip_x0: tuple[float, float] | None = None,
) -> tuple[_Batch, _Batch]:
    r"""The mean and log-variance of the reverse step :math:`p_\theta(x_{t-1}\mid x_t)`.

    .. math:: \mu_\theta = \tilde\mu_t\big(\hat x_0, x_t\big),\qquad
       \log\Sigma_\theta = \log\tilde\beta_t\ (\text{small}),\ \log\beta_t\ (\text{large}),\
       \text{or :func:`learned_log_variance`}

    with :math:`\hat x_0` from the prediction (:func:`to_x0_eps`), clipped to ``clip_x0``.

    Args:
      schedule: the :class:`Schedule`.
      output: ``[batch, ...]`` the network's output at ``(x_t, t)``; ``[batch, ..., 2 C]``
        (prediction, v) when ``variance="learned"``.
      xt: ``[batch, ...]`` :math:`x_t`.
      t: int step(s), a scalar or ``[batch]``.
      parameterization: what the prediction is: ``"eps"``, ``"x0"`` or ``"v"``.
      variance: ``"small"``, ``"large"`` or ``"learned"``.
      clip_x0: optional ``(low, high)`` range of :math:`\hat x_0`.

    Returns:
      ``(mean, log_variance)``, each ``[batch, ...]``; at ``t = 0`` the small variance is the
      clipped one (:math:`\tilde\beta_1`), the decoder's.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, https://arxiv.org/abs/2006.11239

    Derivation: derivations/26-improved-diffusion.md
    """
    _checks.one_of("variance", variance, VARIANCES)
    xt = _checks.batched("xt", xt)
    t = _t(schedule, t, xt)
    if variance == "learned":
        output, v = split_learned(output)
    x0_hat, _ = to_x0_eps(schedule, xt, t, output, parameterization)
    mean, _, log_var = q_posterior(schedule, _clip(x0_hat, clip_x0), xt, t)
    if variance == "large":
        log_var = _at(jnp.log(schedule.betas), t, xt.ndim) * jnp.ones_like(xt)
    elif variance == "learned":
        log_var = learned_log_variance(schedule, t, v)
    return mean, log_var


def discretized_gaussian_log_likelihood(
    x: Float[Array, "*x_shape"],
    mean: Float[Array, "*mean_shape"],
    log_var: Float[Array, "*var_shape"],
    *,
    levels: int = 256,
    event_ndims: int = 1,
) -> Float[Array, "*batch"]:
    r"""Log-probability of data on ``levels`` evenly spaced values in [-1, 1] under a Gaussian
    integrated over each value's bin (Ho et al.'s decoder :math:`p_\theta(x_0 \mid x_1)`).

    The value :math:`x = -1 + 2k/(L-1)` owns the bin :math:`[x - h, x + h]`,
    :math:`h = 1/(L-1)`, the outermost bins extended to :math:`\pm\infty`:

    .. math:: \log P(x) = \log\Big(\Phi\Big(\frac{x + h - \mu}{\sigma}\Big)
       - \Phi\Big(\frac{x - h - \mu}{\sigma}\Big)\Big),\qquad \sigma^2 = e^{\log\sigma^2}

    computed as :math:`\log\Phi(a) + \log(1 - e^{\log\Phi(b) - \log\Phi(a)})` on the side of
    zero where :math:`\Phi` is not saturated (by symmetry, :math:`\Phi(a)-\Phi(b) =
    \Phi(-b)-\Phi(-a)`), so it stays finite far in the tails.

    It follows the log-likelihood contract of ``docs/api.md`` (data first, NumPy
    broadcasting of data and parameters, the trailing ``event_ndims`` axes summed), like
    :func:`genjax.likelihoods.discretized_logistic_log_likelihood`, whose grid is [0, 1].

    Args:
      x: ``[*batch, *event]`` data in [-1, 1] on the grid (off-grid values are rounded to it).
      mean: broadcastable against ``x``: :math:`\mu`.
      log_var: broadcastable against ``x``: :math:`\log\sigma^2`.
      levels: :math:`L` (256 for 8-bit images, 17 for the digits).
      event_ndims: trailing axes summed over.

    Returns:
      Log-probabilities in nats (normalised over the :math:`L` values) with the broadcast batch
      shape.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eq. (13),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/26-improved-diffusion.md
    """
    _checks.int_at_least("levels", levels, 2)
    _checks.event_ndims(x, event_ndims)
    shape = _checks.broadcast_shape(x=x, mean=mean, log_var=log_var)
    x, mean, log_var = (jnp.broadcast_to(jnp.asarray(a), shape) for a in (x, mean, log_var))
    k = jnp.clip(jnp.round((x + 1.0) * (levels - 1) / 2.0), 0, levels - 1)
    centre = -1.0 + 2.0 * k / (levels - 1)
    half = 1.0 / (levels - 1)
    inv_std = jnp.exp(-0.5 * log_var)
    a = jnp.where(k == levels - 1, jnp.inf, (centre + half - mean) * inv_std)
    b = jnp.where(k == 0, -jnp.inf, (centre - half - mean) * inv_std)
    flip = (a + b) > 0  # both in the upper tail: use Phi(-b) - Phi(-a)
    hi, lo = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    log_p = log_hi + jnp.log(-jnp.expm1(jnp.minimum(log_lo - log_hi, -1e-30)))
    return _checks.sum_event(log_p, event_ndims)


def _gaussian_log_likelihood(x, mean, log_var):
    """Continuous diagonal Gaussian log-density, summed over all but the batch axis."""
    per_dim = -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * jnp.exp(-log_var))
    return jnp.sum(per_dim.reshape(x.shape[0], -1), axis=-1)  # [batch]


def vlb_term(
    schedule: Schedule,
    x0: _Batch,
    xt: _Batch,
    t: _Steps,
    mean: _Batch,
    log_var: _Batch,
    *,
    levels: int | None = 256,
) -> Float[Array, " batch"]:
    r"""One term of the variational bound, in nats: a KL for ``t > 0``, the decoder's NLL at 0.

    .. math:: L_{t-1} = \mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,
       N(\mu_\theta, \Sigma_\theta)\big)\ (t > 0),\qquad
       L_0 = -\log p_\theta(x_0 \mid x_1)\ (t = 0)

    The KL of two diagonal Gaussians is :func:`genjax.divergences.gaussian_kl`; the decoder is
    :func:`discretized_gaussian_log_likelihood` with ``levels`` values, or the continuous
    Gaussian density when ``levels`` is ``None`` (data that is not discrete).

    Args:
      schedule: the :class:`Schedule`.
      x0: ``[batch, ...]`` data.
      xt: ``[batch, ...]`` :math:`x_t` (the paper's :math:`x_{t+1}` for 0-based ``t``).
      t: int step(s), a scalar or ``[batch]``.
      mean: ``[batch, ...]`` :math:`\mu_\theta` (:func:`p_mean_variance`).
      log_var: ``[batch, ...]`` :math:`\log\Sigma_\theta`.
      levels: discrete values per dimension of the data in [-1, 1], or ``None``.

    Returns:
      ``[batch]`` the term in nats.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eq. (5),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/26-improved-diffusion.md
    """
    x0 = _checks.batched("x0", x0)
    _checks.same_shape(x0=x0, xt=xt, mean=mean, log_var=log_var)
    t = _t(schedule, t, x0)
    flat = lambda a: a.reshape(a.shape[0], -1)  # [batch, D]
    q_mean, _, q_log_var = q_posterior(schedule, x0, xt, t)
    kl = divergences.gaussian_kl(flat(q_mean), flat(q_log_var), flat(mean), flat(log_var))
    if levels is None:
        decoder = -_gaussian_log_likelihood(x0, mean, log_var)
    else:
        decoder = -discretized_gaussian_log_likelihood(
            flat(x0), flat(mean), flat(log_var), levels=levels
        )
    return jnp.where(t == 0, decoder, kl)


def prior_kl(schedule: Schedule, x0: _Batch) -> Float[Array, " batch"]:
    r"""The bound's prior term :math:`L_T = \mathrm{KL}(q(x_T \mid x_0)\,\|\,N(0, I))`, in nats.

    .. math:: L_T = \tfrac12\sum_j\big(\bar\alpha_T x_{0,j}^2 + (1-\bar\alpha_T) - 1
       - \log(1-\bar\alpha_T)\big)

    with :math:`\bar\alpha_T` = ``alpha_bars[T-1]``. It has no parameters.

    Args:
      schedule: the :class:`Schedule`.
      x0: ``[batch, ...]`` data.

    Returns:
      ``[batch]`` nats.

    References:
      Ho et al., *Denoising Diffusion Probabilistic Models*, 2020, eq. (5),
      https://arxiv.org/abs/2006.11239

    Derivation: derivations/26-improved-diffusion.md
    """
    x0 = _checks.batched("x0", x0)
    ab = schedule.alpha_bars[-1]
    mean = jnp.sqrt(ab) * x0.reshape(x0.shape[0], -1)  # [batch, D]
    return divergences.gaussian_kl(mean, jnp.full_like(mean, jnp.log1p(-ab)))


def vlb_nll(
    key: jax.Array | None,
    schedule: Schedule,
    model_fn: _ModelFn,
    x0: _Batch,
    *,
    parameterization: str = "eps",
    variance: str = "small",
    levels: int | None = 256,
    clip_x0: tuple[float, float] | None = None,
    noise: Float[Array, "T batch *event"] | None = None,
) -> tuple[Float[Array, " batch"], Float[Array, "batch T_plus_one"]]:
    r"""The variational bound on :math:`-\log p_\theta(x_0)`, every term computed exactly.

    .. math:: -\log p_\theta(x_0) \le L = L_T + \sum_{t=1}^{T-1} L_{t-1} + L_0

    One draw :math:`x_t \sim q(x_t \mid x_0)` per step (a ``lax.scan`` over all :math:`T`
    steps, one network call each): an unbiased estimate of the bound, exact in ``t`` (no
    sampling of the step). In bits per dimension: :math:`L / (D \ln 2)`.

    Args:
      key: PRNG key of the draws (``None`` when ``noise`` is given).
      schedule: the :class:`Schedule`.
      model_fn: ``(x_t, t [batch]) -> output`` as in :func:`p_mean_variance`.
      x0: ``[batch, ...]`` data (in [-1, 1] on ``levels`` values, unless ``levels`` is
        ``None``).
      parameterization: what the prediction is.
      variance: ``"small"``, ``"large"`` or ``"learned"``.
      levels: discrete values per dimension (the decoder), or ``None`` for continuous data.
      clip_x0: optional range of :math:`\hat x_0` in the means.
      noise: optional ``[T, batch, ...]`` standard normal draws, ``noise[t]`` making
        :math:`x_t`.

    Returns:
      ``(total [batch], terms [batch, T + 1])`` in nats; ``terms[:, t]`` is the term at step
      ``t`` (``t = 0`` the decoder) and ``terms[:, T]`` the prior term :func:`prior_kl`.

    References:
      Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021, Sec. 2.1,
      https://arxiv.org/abs/2102.09672

    Derivation: derivations/26-improved-diffusion.md
    """
    _checks.one_of("parameterization", parameterization, PARAMETERIZATIONS)
    _checks.one_of("variance", variance, VARIANCES)
    x0 = _checks.batched("x0", x0)
    total_steps = schedule.num_steps
    _checks.key_given(key, noise=noise)
    if noise is None:
        noise = jax.random.normal(key, (total_steps, *x0.shape), x0.dtype)
    if noise.shape != (total_steps, *x0.shape):
        raise ValueError(f"noise must be [T, *x0.shape] = {(total_steps, *x0.shape)}")

    def term(_, inputs):
        t, z = inputs
        t = jnp.full((x0.shape[0],), t, jnp.int32)
        xt = q_sample(None, schedule, x0, t, noise=z)
        mean, log_var = p_mean_variance(
            schedule,
            model_fn(xt, t),
            xt,
            t,
            parameterization=parameterization,
            variance=variance,
            clip_x0=clip_x0,
        )
        return None, vlb_term(schedule, x0, xt, t, mean, log_var, levels=levels)

    _, terms = jax.lax.scan(term, None, (jnp.arange(total_steps), noise))  # [T, batch]
    terms = jnp.concatenate([terms.T, prior_kl(schedule, x0)[:, None]], axis=1)  # [batch, T+1]
    return jnp.sum(terms, axis=1), terms


def hybrid_loss(
    key: jax.Array | None,
    schedule: Schedule,
    model_fn: _ModelFn,
    x0: _Batch,
    *,
    vlb_weight: float = HYBRID_VLB_WEIGHT,
    parameterization: str = "eps",
    min_snr_gamma: float | None = None,
    levels: int | None = 256,
    t: _Steps | None = None,
    noise: _Batch | None = None,
) -> Float[Array, " batch"]:
    r"""Nichol & Dhariwal's hybrid objective for a network with learned variances.

    .. math:: \ell = \underbrace{w_t\frac1D\|\hat y - y\|^2}_{L_\text{simple}}
       + \lambda\,\frac{T}{D}\,L_{t-1}\big(\mathrm{sg}[\mu_\theta], \Sigma_\theta\big),
       \qquad t \sim U\{0..T-1\}

    where the network outputs :math:`(\hat y, v)` (:func:`split_learned`), the simple loss is
    :func:`ddpm_loss`'s (same weights :math:`w_t`), and the bound's term :math:`L_{t-1}`
    (:func:`vlb_term`, scaled by :math:`T` to estimate the sum over steps, per dimension) sees
    the mean through a stop-gradient :math:`\mathrm{sg}`: the bound trains only the variance,
    the mean keeps the simple loss's gradient. :math:`\lambda` = ``vlb_weight`` (0.001 in the
    paper).

    Args:
      key: PRNG key for ``t`` and the noise (``None`` when both are given).
      schedule: the :class:`Schedule`.
      model_fn: ``(x_t, t [batch]) -> [batch, ..., 2 C]``.
      x0: ``[batch, ...]`` data.
      vlb_weight: :math:`\lambda \ge 0`.
      parameterization: what the first half of the output predicts.
      min_snr_gamma: optional Min-SNR weighting of the simple term (:func:`loss_weights`).
      levels: discrete values of the data for the decoder term, or ``None``.
      t: optional steps replacing the uniform draw.
      noise: optional ``[batch, ...]`` noise replacing the draw.

    Returns:
      ``[batch]`` per-example losses.

    References:
      Nichol & Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021, Sec. 3.1,
      https://arxiv.org/abs/2102.09672

    Derivation: derivations/26-improved-diffusion.md
    """
    _checks.one_of("parameterization", parameterization, PARAMETERIZATIONS)
    if not vlb_weight >= 0.0:
        raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}")
    x0 = _checks.batched("x0", x0)
    t, noise, xt = _draw_t_noise(key, schedule, x0, t, noise)
    prediction, v = split_learned(model_fn(xt, t))
    _checks.same_shape(x0=x0, prediction=prediction)
    target = from_x0_eps(schedule, t, x0, noise, parameterization)
    axes = tuple(range(1, x0.ndim))
    simple = jnp.mean((prediction - target) ** 2, axis=axes)  # [batch]
    simple = loss_weights(schedule, t, parameterization, min_snr_gamma) * simple
    frozen = jnp.concatenate([jax.lax.stop_gradient(prediction), v], axis=-1)
    mean, log_var = p_mean_variance(
        schedule, frozen, xt, t, parameterization=parameterization, variance="learned"
    )
    bound = vlb_term(schedule, x0, xt, t, mean, log_var, levels=levels)  # [batch] nats
    dims = math.prod(x0.shape[1:])
    return simple + vlb_weight * schedule.num_steps * bound / dims
