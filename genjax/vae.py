r"""Variational autoencoders: reparameterisation, the ELBO, IWAE, importance-sampled likelihoods.

A latent-variable model :math:`p_\theta(x, z) = p(z)\,p_\theta(x \mid z)` is fitted by maximising
:math:`\mathcal L(x) = E_{q_\phi(z\mid x)}[\log p_\theta(x \mid z)] - \mathrm{KL}(q_\phi(z\mid
x)\,\|\,p(z)) \le \log p_\theta(x)` with a Gaussian :math:`q_\phi`. The bounds (:func:`elbo`,
:func:`iwae_bound`, to maximise; :func:`importance_sampled_nll`, to minimise) are pure functions
of two callables, so one code path serves :class:`VAE`, :class:`ConvVAE`, :class:`CVAE` and the
exact linear-Gaussian model of the tests: ``encode(x [B, *event]) -> (mean, log_var)``, two
``[B, d]`` arrays, and ``log_likelihood(z [*sample, B, d], x [B, *event]) -> [*sample, B]``
(:func:`bind` builds both from a model). Log-variances parameterise every Gaussian;
log-likelihoods (:mod:`genjax.likelihoods`) are summed over the event axes per example and
losses average that sum over the batch.

Derivation: derivations/05-vae.md, derivations/06-conditional-vae.md
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from genjax import _checks
from genjax.divergences import gaussian_kl
from genjax.likelihoods import LOG_2PI, Likelihood, gaussian_log_likelihood
from genjax.nn import layers

__all__ = [
    "CVAE",
    "ESTIMATORS",
    "VAE",
    "Bound",
    "ConvVAE",
    "ElboTerms",
    "bind",
    "elbo",
    "expectation_gradient",
    "importance_sampled_nll",
    "iwae_bound",
    "kl_warmup",
    "linear_gaussian_log_marginal",
    "linear_gaussian_posterior",
    "reparameterize",
    "sample",
]

ESTIMATORS = ("reparameterization", "score_function")
Encode = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
LogLikelihood = Callable[[jax.Array, jax.Array], jax.Array]


def _lead(a, ndim: int) -> jax.Array:
    """``a`` with leading unit axes up to ``ndim`` axes; scalars stay scalars."""
    a = jnp.asarray(a)
    return a if a.ndim == 0 else jnp.reshape(a, (1,) * (ndim - a.ndim) + a.shape)


# ----------------------------------------------------------------------------- sampling


def reparameterize(
    key: jax.Array,
    mean: Float[Array, "*batch d"],
    log_var: Float[Array, "*batch d"],
    noise: Float[Array, "*sample_batch d"] | None = None,
    *,
    num_samples: int | None = None,
) -> Float[Array, "*sample_batch d"]:
    r"""Draw :math:`z \sim N(\mu, \operatorname{diag}\sigma^2)` as a differentiable function of
    :math:`(\mu, \log\sigma^2)`: the reparameterisation trick.

    .. math:: z = \mu + \exp(\tfrac12 \log\sigma^2) \odot \varepsilon, \qquad
       \varepsilon \sim N(0, I)

    with :math:`\mu` = ``mean``, :math:`\log\sigma^2` = ``log_var``, :math:`\varepsilon` =
    ``noise``. The log-variance (not the standard deviation PyTorch VAEs often use) matches
    :func:`genjax.divergences.gaussian_kl`.

    Args:
      key: PRNG key (unused when ``noise`` is given).
      mean: ``[*batch, d]`` means :math:`\mu`.
      log_var: ``[*batch, d]`` log-variances :math:`\log\sigma^2`.
      noise: optional standard-normal draw :math:`\varepsilon`, ``[*batch, d]`` or
        ``[num_samples, *batch, d]``.
      num_samples: draw this many samples per mean along a new leading axis.

    Returns:
      ``[*batch, d]``, or ``[num_samples, *batch, d]``.

    References:
      Kingma & Welling, *Auto-Encoding Variational Bayes*, 2013,
      https://arxiv.org/abs/1312.6114

    Derivation: derivations/05-vae.md
    """
    _checks.same_shape(mean=mean, log_var=log_var)
    _checks.positive_int("num_samples", num_samples, allow_none=True)
    shape = jnp.shape(mean) if num_samples is None else (num_samples, *jnp.shape(mean))
    if noise is None:
        noise = jax.random.normal(key, shape, jnp.result_type(mean))
    elif jnp.shape(noise) != shape:
        raise ValueError(f"noise must have shape {shape}, got {jnp.shape(noise)}")
    ndim = len(shape)
    return _lead(mean, ndim) + jnp.exp(0.5 * _lead(log_var, ndim)) * noise


def expectation_gradient(
    key: jax.Array,
    f: Callable[[jax.Array], jax.Array],
    mean: Float[Array, " d"],
    log_var: Float[Array, " d"],
    num_samples: int,
    *,
    estimator: str = "reparameterization",
    noise: Float[Array, "num_samples d"] | None = None,
) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
    r"""Monte Carlo gradient of :math:`E_{q}[f(z)]`, :math:`q = N(\mu, \operatorname{diag}
    \sigma^2)`, with respect to :math:`(\mu, \log\sigma^2)`.

    .. math:: \hat g_{\text{rep}} = \frac1S \sum_{s=1}^{S} \nabla_{\mu,\log\sigma^2}
       f(\mu + \sigma \odot \varepsilon_s), \qquad
       \hat g_{\text{sf}} = \frac1S \sum_{s=1}^{S} f(z_s)\,\nabla_{\mu,\log\sigma^2}
       \log q(z_s; \mu, \sigma^2)

    with :math:`S` = ``num_samples`` draws :math:`z_s = \mu + \sigma\odot\varepsilon_s`. Both are
    unbiased. ``estimator="reparameterization"``: its variance scales with the curvature of
    :math:`f`. ``"score_function"`` (REINFORCE), the gradient of the surrogate
    :math:`\frac1S\sum_s \mathrm{sg}[f(z_s)]\log q(\mathrm{sg}[z_s])` (``sg`` =
    ``stop_gradient``): it needs only values of :math:`f`, but its variance grows with
    :math:`f^2`.

    Args:
      key: PRNG key (unused when ``noise`` is given).
      f: ``f(z [S, d]) -> [S]`` (differentiable for the reparameterisation estimator).
      mean: ``[d]`` :math:`\mu`.
      log_var: ``[d]`` :math:`\log\sigma^2`.
      num_samples: :math:`S`.
      estimator: ``"reparameterization"`` or ``"score_function"``.
      noise: optional ``[S, d]`` standard-normal draws :math:`\varepsilon_s`.

    Returns:
      ``(grad_mean [d], grad_log_var [d])``.

    References:
      Williams, *Simple statistical gradient-following algorithms for connectionist
      reinforcement learning*, 1992 (Machine Learning 8).

    Derivation: derivations/05-vae.md
    """
    _checks.one_of("estimator", estimator, ESTIMATORS)
    if estimator == "reparameterization":

        def objective(m, lv):
            return jnp.mean(f(reparameterize(key, m, lv, noise, num_samples=num_samples)))

    else:
        z = reparameterize(key, mean, log_var, noise, num_samples=num_samples)  # [S, d]
        z = jax.lax.stop_gradient(z)
        values = jax.lax.stop_gradient(f(z))  # [S]

        def objective(m, lv):
            return jnp.mean(values * gaussian_log_likelihood(z, m, lv))  # log q: [S]

    return jax.grad(objective, argnums=(0, 1))(mean, log_var)


# ----------------------------------------------------------------------------- bounds


class ElboTerms(NamedTuple):
    r"""The ELBO and its two parts, per example (each ``[B]``, nats).

    Attributes:
      reconstruction: :math:`\log p(x \mid z)` at one draw :math:`z \sim q(z \mid x)`.
      kl: :math:`\mathrm{KL}(q(z \mid x)\,\|\,p(z))`.
      total: ``reconstruction - beta * kl``; a lower bound on :math:`\log p(x)` when
        ``beta = 1``.

    Derivation: derivations/05-vae.md
    """

    reconstruction: jax.Array
    kl: jax.Array
    total: jax.Array


def kl_warmup(step: Int[Array, ""] | int, warmup_steps: int) -> Float[Array, ""]:
    r"""Linear KL warm-up weight :math:`\min(1, t / W)` for step :math:`t` = ``step`` and
    :math:`W` = ``warmup_steps`` (``0``: always 1). Multiply ``beta`` by it.

    References:
      Sønderby et al., *Ladder Variational Autoencoders*, 2016, https://arxiv.org/abs/1602.02282

    Derivation: derivations/05-vae.md
    """
    _checks.int_at_least("warmup_steps", warmup_steps, 0)
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(1.0, t / warmup_steps) if warmup_steps else jnp.float32(1.0)


def _encode_checked(encode: Encode, x) -> tuple[jax.Array, jax.Array]:
    mean, log_var = encode(x)
    if jnp.ndim(mean) != 2 or jnp.shape(mean)[0] != jnp.shape(x)[0]:
        want = f"[B, d] with B = x.shape[0] = {jnp.shape(x)[0]}"
        raise ValueError(f"encode(x) must return a mean of shape {want}, got {jnp.shape(mean)}")
    _checks.same_shape(**{"encode(x) mean": mean, "encode(x) log_var": log_var})
    return mean, log_var


def _prior(prior, mean) -> tuple[jax.Array, jax.Array]:
    """The prior's ``(mean, log_var)``: scalars or arrays of the posterior mean's shape."""
    for name, v in zip(("prior mean", "prior log_var"), prior, strict=True):
        if jnp.ndim(v):
            _checks.same_shape(**{"posterior mean": mean, name: v})
    return tuple(jnp.asarray(v, mean.dtype) for v in prior)


def _log_likelihood_checked(log_likelihood: LogLikelihood, z, x) -> jax.Array:
    out = log_likelihood(z, x)
    if (want := jnp.shape(z)[:-1]) != jnp.shape(out):
        raise ValueError(
            f"log_likelihood(z, x) must return z.shape[:-1] = {want}, got {jnp.shape(out)}"
        )
    return out


def elbo(
    key: jax.Array,
    encode: Encode,
    log_likelihood: LogLikelihood,
    x: Float[Array, " B *event"],
    *,
    beta: float | Float[Array, ""] = 1.0,
    prior: tuple = (0.0, 0.0),
    analytic_kl: bool = True,
    noise: Float[Array, "B d"] | None = None,
) -> ElboTerms:
    r"""The (β-weighted) evidence lower bound per example, with its two terms: a bound to
    maximise.

    .. math:: \mathcal L_\beta(x) = \underbrace{\log p(x \mid z)}_{\texttt{reconstruction}}
       - \beta\,\underbrace{\mathrm{KL}(q(z \mid x)\,\|\,p(z))}_{\texttt{kl}}, \qquad
       z = \mu(x) + \sigma(x)\odot\varepsilon

    a one-sample estimate of :math:`E_q[\log p(x\mid z)] - \beta\,\mathrm{KL}`, whose expectation
    for :math:`\beta = 1` is :math:`\log p(x) - \mathrm{KL}(q(z\mid x)\,\|\,p(z \mid x))`. The KL
    is the closed form :func:`genjax.divergences.gaussian_kl` (``analytic_kl=True``) or the
    one-sample :math:`\log q(z\mid x) - \log p(z)` at the same :math:`z`.

    Args:
      key: PRNG key for :math:`\varepsilon` (unused when ``noise`` is given).
      encode: ``encode(x) -> (mean [B, d], log_var [B, d])``: :math:`q(z\mid x)`.
      log_likelihood: ``log_likelihood(z [B, d], x) -> [B]``: :math:`\log p(x \mid z)`.
      x: ``[B, *event]`` data.
      beta: the KL weight :math:`\beta` (β-VAE; times :func:`kl_warmup` for a warm-up).
      prior: ``(mean, log_var)`` of the Gaussian :math:`p(z)`, scalars or ``[B, d]`` (a learned
        :math:`p(z \mid y)`); :math:`N(0, I)` by default.
      analytic_kl: closed-form KL, or the one-sample estimate.
      noise: optional ``[B, d]`` standard-normal draw.

    Returns:
      :class:`ElboTerms` of ``[B]`` arrays, in nats.

    References:
      Kingma & Welling, *Auto-Encoding Variational Bayes*, 2013,
      https://arxiv.org/abs/1312.6114

      Higgins et al., *β-VAE*, 2017 (ICLR).

    Derivation: derivations/05-vae.md
    """
    mean, log_var = _encode_checked(encode, x)
    prior_mean, prior_log_var = _prior(prior, mean)
    z = reparameterize(key, mean, log_var, noise)  # [B, d]
    reconstruction = _log_likelihood_checked(log_likelihood, z, x)  # [B]
    if analytic_kl:
        kl = gaussian_kl(mean, log_var, prior_mean, prior_log_var)  # [B]
    else:
        log_p = gaussian_log_likelihood(z, prior_mean, prior_log_var)  # [B]
        kl = gaussian_log_likelihood(z, mean, log_var) - log_p
    return ElboTerms(reconstruction, kl, reconstruction - beta * kl)


def _log_weights(key, encode, log_likelihood, x, num_samples: int, prior, noise=None):
    r"""``[k, B]`` log importance weights :math:`\log p(x \mid z_s) + \log p(z_s) - \log
    q(z_s \mid x)`, :math:`z_s \sim q(z \mid x)`."""
    mean, log_var = _encode_checked(encode, x)
    prior_mean, prior_log_var = _prior(prior, mean)
    z = reparameterize(key, mean, log_var, noise, num_samples=num_samples)  # [k, B, d]
    log_px_z = _log_likelihood_checked(log_likelihood, z, x)  # [k, B]
    log_pz = gaussian_log_likelihood(z, prior_mean, prior_log_var)  # [k, B]
    log_qz = gaussian_log_likelihood(z, mean, log_var)  # [k, B]
    return log_px_z + log_pz - log_qz


def iwae_bound(
    key: jax.Array,
    encode: Encode,
    log_likelihood: LogLikelihood,
    x: Float[Array, " B *event"],
    num_samples: int,
    *,
    prior: tuple = (0.0, 0.0),
    noise: Float[Array, "num_samples B d"] | None = None,
) -> Float[Array, " B"]:
    r"""The importance-weighted bound :math:`\mathcal L_k` per example: a bound to maximise.

    .. math:: \mathcal L_k(x) = \operatorname{logsumexp}_{s=1}^{k}\log w_s - \log k, \qquad
       \log w_s = \log p(x\mid z_s) + \log p(z_s) - \log q(z_s\mid x),\ z_s \sim q(z \mid x)

    with :math:`k` = ``num_samples``. :math:`E[\mathcal L_1]` is the ELBO and
    :math:`E[\mathcal L_k] \le E[\mathcal L_{k+1}] \le \log p(x)`.

    Args:
      key, encode, log_likelihood, x, prior: as :func:`elbo`.
      num_samples: :math:`k`.
      noise: optional ``[k, B, d]`` standard-normal draws.

    Returns:
      ``[B]`` bounds in nats.

    References:
      Burda et al., *Importance Weighted Autoencoders*, 2015,
      https://arxiv.org/abs/1509.00519

    Derivation: derivations/05-vae.md
    """
    _checks.positive_int("num_samples", num_samples)
    log_w = _log_weights(key, encode, log_likelihood, x, num_samples, prior, noise)  # [k, B]
    return jax.nn.logsumexp(log_w, axis=0) - math.log(num_samples)


def importance_sampled_nll(
    key: jax.Array,
    encode: Encode,
    log_likelihood: LogLikelihood,
    x: Float[Array, " B *event"],
    num_samples: int = 5000,
    *,
    chunk_size: int = 500,
    prior: tuple = (0.0, 0.0),
) -> Float[Array, " B"]:
    r"""Importance-sampled negative log-likelihood :math:`-\mathcal L_k(x)`, an NLL to minimise
    (Burda et al. evaluate with :math:`k` = 5000).

    .. math:: -\log \hat p(x) = \log k - \operatorname{logsumexp}_{s=1}^{k}\big[\log p(x\mid z_s)
       + \log p(z_s) - \log q(z_s\mid x)\big]

    The :math:`k` = ``num_samples`` draws come ``chunk_size`` at a time under ``jax.lax.map``
    (memory for ``chunk_size`` decoder passes, never :math:`k`); chunk ``c`` uses
    ``fold_in(key, c)`` and the padding of the last chunk gets log-weight :math:`-\infty`.

    Args:
      key, encode, log_likelihood, x, prior: as :func:`elbo`.
      num_samples: :math:`k`.
      chunk_size: draws per chunk.

    Returns:
      ``[B]`` NLL estimates in nats (upper bounds on :math:`-\log p(x)` in expectation).

    References:
      Burda et al., *Importance Weighted Autoencoders*, 2015,
      https://arxiv.org/abs/1509.00519

    Derivation: derivations/05-vae.md
    """
    _checks.positive_int("num_samples", num_samples)
    _checks.positive_int("chunk_size", chunk_size)
    chunk = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk)

    def one_chunk(c):
        k = jax.random.fold_in(key, c)
        return _log_weights(k, encode, log_likelihood, x, chunk, prior)  # [chunk, B]

    log_w = jax.lax.map(one_chunk, jnp.arange(num_chunks))  # [num_chunks, chunk, B]
    log_w = jnp.reshape(log_w, (num_chunks * chunk, log_w.shape[-1]))  # [num_chunks chunk, B]
    valid = jnp.arange(num_chunks * chunk) < num_samples  # [num_chunks chunk]
    log_w = jnp.where(valid[:, None], log_w, -jnp.inf)
    return math.log(num_samples) - jax.nn.logsumexp(log_w, axis=0)


# ----------------------------------------------------------------------------- exact case


def linear_gaussian_log_marginal(
    x: Float[Array, "*batch D"],
    weight: Float[Array, "D d"],
    bias: Float[Array, " D"],
    log_var: float | Float[Array, ""],
) -> Float[Array, "*batch"]:
    r"""Exact :math:`\log p(x)` of the linear-Gaussian model (probabilistic PCA).

    With :math:`p(z) = N(0, I_d)` and :math:`p(x \mid z) = N(Wz + b, \sigma^2 I_D)`,

    .. math:: p(x) = N(x;\, b,\, C), \qquad C = WW^\top + \sigma^2 I_D

    through a Cholesky factor of :math:`C`; :math:`W` = ``weight``, :math:`b` = ``bias``,
    :math:`\log\sigma^2` = ``log_var`` (a scalar).

    Args:
      x: ``[*batch, D]``.
      weight: ``[D, d]``.
      bias: ``[D]``.
      log_var: scalar :math:`\log\sigma^2`.

    Returns:
      ``[*batch]`` log-densities in nats.

    References:
      Tipping & Bishop, *Probabilistic Principal Component Analysis*, 1999 (JRSS B 61).

    Derivation: derivations/05-vae.md
    """
    big_d = _check_linear_gaussian(x, weight, bias, log_var)
    cov = weight @ weight.T + jnp.exp(log_var) * jnp.eye(big_d, dtype=weight.dtype)  # [D, D]
    chol = jnp.linalg.cholesky(cov)  # [D, D] lower
    centred = x - _lead(bias, x.ndim)  # [*batch, D]
    flat = jnp.reshape(centred, (-1, big_d)).T  # [D, n]
    solved = jax.scipy.linalg.solve_triangular(chol, flat, lower=True)  # [D, n]
    maha = jnp.reshape(jnp.sum(solved**2, axis=0), x.shape[:-1])  # [*batch]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    return -0.5 * (big_d * LOG_2PI + log_det + maha)


def linear_gaussian_posterior(
    x: Float[Array, "*batch D"],
    weight: Float[Array, "D d"],
    bias: Float[Array, " D"],
    log_var: float | Float[Array, ""],
) -> tuple[Float[Array, "*batch d"], Float[Array, "d d"]]:
    r"""Exact posterior :math:`p(z \mid x) = N(m(x), S)` of the linear-Gaussian model.

    .. math:: M = W^\top W + \sigma^2 I_d, \qquad m(x) = M^{-1} W^\top (x - b), \qquad
       S = \sigma^2 M^{-1}

    :math:`S` does not depend on :math:`x` and is diagonal exactly when the columns of :math:`W`
    are orthogonal: only then can a diagonal Gaussian :math:`q` close the ELBO gap. Arguments as
    :func:`linear_gaussian_log_marginal`.

    Returns:
      ``(mean [*batch, d], cov [d, d])``.

    Derivation: derivations/05-vae.md
    """
    _check_linear_gaussian(x, weight, bias, log_var)
    d = weight.shape[1]
    var = jnp.exp(log_var)
    m = weight.T @ weight + var * jnp.eye(d, dtype=weight.dtype)  # [d, d]
    centred = x - _lead(bias, x.ndim)  # [*batch, D]
    projected = jnp.reshape(centred, (-1, x.shape[-1])) @ weight  # [n, d]: rows W^T (x - b)
    mean = jnp.linalg.solve(m, projected.T)  # [d, n]
    mean = jnp.reshape(mean.T, (*x.shape[:-1], d))  # [*batch, d]
    return mean, var * jnp.linalg.inv(m)


def _check_linear_gaussian(x, weight, bias, log_var) -> int:
    if jnp.ndim(weight) != 2:
        raise ValueError(f"weight must be [D, d], got shape {jnp.shape(weight)}")
    big_d = weight.shape[0]
    if jnp.shape(bias) != (big_d,):
        raise ValueError(f"bias must be [D] = [{big_d}], got shape {jnp.shape(bias)}")
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != big_d:
        raise ValueError(f"x must be [*batch, D] with D = {big_d}, got shape {jnp.shape(x)}")
    if jnp.ndim(log_var) != 0:
        raise ValueError(f"log_var must be a scalar, got shape {jnp.shape(log_var)}")
    return big_d


# ----------------------------------------------------------------------------- models


class _MLP(nn.Module):
    """Dense layers with ``activation`` between them (none after the last)."""

    features: Sequence[int]
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.features):
            x = layers.Dense(width, name=f"dense_{i}")(x)
            if i < len(self.features) - 1:
                x = self.activation(x)
        return x


def _mlp_coders(m: nn.Module) -> tuple[_MLP, _MLP]:
    r"""The encoder and decoder MLPs of a :class:`VAE` or :class:`CVAE`: ``hidden`` widths, to
    :math:`(\mu, \log\sigma^2)` and, reversed, to the likelihood's parameters of every value."""
    out = math.prod(m.event_shape) * m.likelihood.num_params
    encoder = _MLP((*m.hidden, 2 * m.latent_dim), m.activation)
    return encoder, _MLP((*reversed(m.hidden), out), m.activation)


def _split_gaussian(h: jax.Array, latent_dim: int) -> tuple[jax.Array, jax.Array]:
    return h[:, :latent_dim], h[:, latent_dim:]  # [B, d], [B, d]


class VAE(nn.Module):
    r"""MLP variational autoencoder (Kingma & Welling's 784-400-20 network with the defaults
    on 28x28 images).

    Encoder :math:`x \mapsto (\mu, \log\sigma^2)` and decoder :math:`z \mapsto` the
    :class:`genjax.likelihoods.Likelihood`'s parameters are MLPs with ``hidden`` widths (reversed
    in the decoder). Methods (``model.apply(params, ..., method=...)``): ``encode(x [B, *event])
    -> (mean [B, d], log_var [B, d])``; ``decode(z [B, d]) -> [B, *event, P]``; ``__call__(x)``
    decodes the posterior mean (for ``init``).

    Attributes:
      event_shape: shape of one example, e.g. ``(28, 28, 1)``.
      latent_dim: :math:`d`.
      hidden: hidden widths of the encoder.
      likelihood: the decoder's :class:`genjax.likelihoods.Likelihood`.
      activation: the nonlinearity.

    References:
      Kingma & Welling, *Auto-Encoding Variational Bayes*, 2013,
      https://arxiv.org/abs/1312.6114

    Derivation: derivations/05-vae.md
    """

    event_shape: tuple[int, ...]
    latent_dim: int = 20
    hidden: Sequence[int] = (400,)
    likelihood: Likelihood = Likelihood()
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def setup(self):
        self.encoder, self.decoder = _mlp_coders(self)

    def encode(self, x):
        _checks.batch_of(x, self.event_shape)
        h = self.encoder(jnp.reshape(x, (x.shape[0], -1)))  # [B, 2d]
        return _split_gaussian(h, self.latent_dim)

    def decode(self, z):
        _checks.batch_of(z, (self.latent_dim,), "z")
        out = self.decoder(z)  # [B, D P]
        return jnp.reshape(out, (z.shape[0], *self.event_shape, self.likelihood.num_params))

    def __call__(self, x):
        mean, _ = self.encode(x)
        return self.decode(mean)


class ConvVAE(nn.Module):
    r"""Convolutional VAE for images ``[H, W, C]``, ``H`` and ``W`` divisible by
    ``2 ** len(features)``.

    Encoder: 4x4 convolutions of stride 2 and padding 1 (each halves ``H`` and ``W``) with
    ``features`` channels and ReLU, a dense layer of ``hidden`` units, a dense layer to
    :math:`(\mu, \log\sigma^2)`. Decoder: the mirror image with 4x4 transposed convolutions of
    stride 2, the last emitting ``C * P`` channels (:class:`genjax.nn.layers.Conv`,
    :class:`genjax.nn.layers.ConvTranspose`). Methods as :class:`VAE`.

    Attributes:
      event_shape: ``(H, W, C)``.
      latent_dim: :math:`d`.
      features: channels of the stride-2 convolutions.
      hidden: width of the dense layer between the convolutions and the code.
      likelihood: the decoder's :class:`genjax.likelihoods.Likelihood`.

    Derivation: derivations/05-vae.md
    """

    event_shape: tuple[int, int, int]
    latent_dim: int = 32
    features: Sequence[int] = (32, 64)
    hidden: int = 256
    likelihood: Likelihood = Likelihood()

    def setup(self):
        if len(self.event_shape) != 3:
            raise ValueError(f"event_shape must be (H, W, C), got {self.event_shape}")
        h, w, _ = self.event_shape
        factor = 2 ** len(self.features)
        if h % factor or w % factor:
            raise ValueError(
                f"event_shape {self.event_shape}: H and W must be divisible by "
                f"2 ** len(features) = {factor}"
            )
        self.convs = [
            layers.Conv(f, kernel_size=4, stride=2, padding=1, name=f"conv_{i}")
            for i, f in enumerate(self.features)
        ]
        self.enc_hidden = layers.Dense(self.hidden)
        self.enc_out = layers.Dense(2 * self.latent_dim)
        self.dec_hidden = layers.Dense(self.hidden)
        self.dec_grid = layers.Dense((h // factor) * (w // factor) * self.features[-1])
        channels = [*reversed(self.features[:-1]), self.event_shape[2] * self.likelihood.num_params]
        self.deconvs = [
            layers.ConvTranspose(c, kernel_size=4, stride=2, padding=1, name=f"deconv_{i}")
            for i, c in enumerate(channels)
        ]

    def encode(self, x):
        _checks.batch_of(x, self.event_shape)
        h = x
        for conv in self.convs:
            h = nn.relu(conv(h))  # [B, H / 2^i, W / 2^i, features[i]]
        h = nn.relu(self.enc_hidden(jnp.reshape(h, (x.shape[0], -1))))  # [B, hidden]
        return _split_gaussian(self.enc_out(h), self.latent_dim)

    def decode(self, z):
        _checks.batch_of(z, (self.latent_dim,), "z")
        height, width, _ = self.event_shape
        factor = 2 ** len(self.features)
        h = nn.relu(self.dec_grid(nn.relu(self.dec_hidden(z))))
        h = jnp.reshape(h, (z.shape[0], height // factor, width // factor, -1))  # [B, h, w, F]
        for i, deconv in enumerate(self.deconvs):
            h = deconv(h)  # spatial size doubles
            if i < len(self.deconvs) - 1:
                h = nn.relu(h)
        return jnp.reshape(h, (z.shape[0], *self.event_shape, -1))  # [B, H, W, C, P]

    def __call__(self, x):
        mean, _ = self.encode(x)
        return self.decode(mean)


class CVAE(nn.Module):
    r"""Conditional VAE: :math:`q(z \mid x, y)`, :math:`p(x \mid z, y)` and a prior
    :math:`p(z \mid y)` that is :math:`N(0, I)` or learned per class.

    The label enters the encoder and the decoder as a one-hot vector (``label_features=None``)
    or a learned embedding, concatenated to the flattened image and to :math:`z`. With
    ``learned_prior`` the prior is :math:`N(\mu_y, \operatorname{diag} e^{\log\sigma^2_y})`, one
    learned mean and log-variance per class, initialised at :math:`N(0, I)`. Methods:
    ``encode(x, y)``, ``decode(z, y)``, ``prior(y) -> (mean [B, d], log_var [B, d])``,
    ``__call__(x, y)``.

    Attributes:
      event_shape, latent_dim, hidden, likelihood, activation: as :class:`VAE`.
      num_classes: number of label values.
      label_features: ``None`` for one-hot labels, else the embedding width.
      learned_prior: learn :math:`p(z \mid y)` instead of fixing :math:`N(0, I)`.

    References:
      Sohn et al., *Learning Structured Output Representation using Deep Conditional
      Generative Models*, 2015 (NeurIPS).

    Derivation: derivations/06-conditional-vae.md
    """

    event_shape: tuple[int, ...]
    num_classes: int
    latent_dim: int = 20
    hidden: Sequence[int] = (400,)
    likelihood: Likelihood = Likelihood()
    label_features: int | None = None
    learned_prior: bool = False
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def setup(self):
        self.encoder, self.decoder = _mlp_coders(self)
        if self.label_features is not None:
            self.embedding = nn.Embed(self.num_classes, self.label_features)
        if self.learned_prior:
            self.prior_table = nn.Embed(
                self.num_classes, 2 * self.latent_dim, embedding_init=nn.initializers.zeros
            )

    def _label(self, y, batch: int):
        y = _checks.labels(y, self.num_classes, batch)
        if self.label_features is None:
            return jax.nn.one_hot(y, self.num_classes)  # [B, classes]
        return self.embedding(y)  # [B, label_features]

    def encode(self, x, y):
        _checks.batch_of(x, self.event_shape)
        flat = jnp.reshape(x, (x.shape[0], -1))  # [B, D]
        h = self.encoder(jnp.concatenate([flat, self._label(y, x.shape[0])], axis=1))
        return _split_gaussian(h, self.latent_dim)

    def decode(self, z, y):
        _checks.batch_of(z, (self.latent_dim,), "z")
        out = self.decoder(jnp.concatenate([z, self._label(y, z.shape[0])], axis=1))
        return jnp.reshape(out, (z.shape[0], *self.event_shape, self.likelihood.num_params))

    def prior(self, y):
        y = _checks.labels(y, self.num_classes)
        if not self.learned_prior:
            zeros = jnp.zeros((y.shape[0], self.latent_dim))
            return zeros, zeros
        return _split_gaussian(self.prior_table(y), self.latent_dim)

    def __call__(self, x, y):
        mean, _ = self.encode(x, y)
        self.prior(y)
        return self.decode(mean, y)


class Bound(NamedTuple):
    """A model's pieces as plain functions of arrays (see :func:`bind`).

    Attributes:
      encode: ``encode(x [B, *event]) -> (mean [B, d], log_var [B, d])``.
      log_likelihood: ``log_likelihood(z [*sample, B, d], x [B, *event]) -> [*sample, B]``.
      decode: ``decode(z [B, d]) -> [B, *event, P]`` decoder outputs.
      prior: ``(mean, log_var)`` of :math:`p(z)` (scalars, or ``[B, d]`` for a CVAE).
      likelihood: the model's :class:`genjax.likelihoods.Likelihood`.

    Derivation: derivations/05-vae.md
    """

    encode: Encode
    log_likelihood: LogLikelihood
    decode: Callable[[jax.Array], jax.Array]
    prior: tuple
    likelihood: Likelihood


def bind(model: nn.Module, params, labels: Int[Array, " B"] | None = None) -> Bound:
    r"""The callables :func:`elbo`, :func:`iwae_bound` and :func:`importance_sampled_nll` take,
    for a :class:`VAE`, :class:`ConvVAE` or :class:`CVAE` (whose ``labels [B]``, required, then
    condition every piece).

    ``log_likelihood`` decodes ``z [*sample, B, d]`` as one ``[(*sample) B, d]`` batch and scores
    ``x [B, *event]`` against it by broadcasting over the sample axes.

    Derivation: derivations/05-vae.md
    """
    conditional = isinstance(model, CVAE)
    if conditional and labels is None:
        raise ValueError("a CVAE needs labels [B] to bind")
    if not conditional and labels is not None:
        raise ValueError(f"{type(model).__name__} is unconditional; pass labels=None")
    event_ndims = len(model.event_shape)
    extra = () if labels is None else (_checks.labels(labels, model.num_classes),)

    def encode(x):
        return model.apply(params, x, *extra, method=model.encode)

    def decode(z):
        return model.apply(params, z, *extra, method=model.decode)

    def log_likelihood(z, x):
        flat_z = jnp.reshape(z, (-1, z.shape[-1]))  # [(*sample) B, d]
        # the labels [B] repeated along the sample axes: [(*sample) B]
        more = tuple(jnp.reshape(jnp.broadcast_to(y, z.shape[:-1]), (-1,)) for y in extra)
        out = model.apply(params, flat_z, *more, method=model.decode)  # [(*sample) B, *event, P]
        out = jnp.reshape(out, (*z.shape[:-1], *out.shape[1:]))  # [*sample, B, *event, P]
        return model.likelihood.log_prob(x, out, event_ndims=event_ndims)  # [*sample, B]

    prior = model.apply(params, extra[0], method=model.prior) if conditional else (0.0, 0.0)
    return Bound(encode, log_likelihood, decode, prior, model.likelihood)


def sample(
    key: jax.Array,
    model: nn.Module,
    params,
    n: int,
    *,
    labels: Int[Array, " n"] | None = None,
    temperature: float = 1.0,
) -> Float[Array, " n *event"]:
    r"""Decoder means :math:`E[x \mid z]` at :math:`z = \mu + \tau\sigma\odot\varepsilon`,
    :math:`\varepsilon \sim N(0, I)`, from the prior :math:`p(z) = N(\mu, \sigma^2)` (or
    :math:`p(z \mid y)` of a :class:`CVAE`) with its standard deviation scaled by :math:`\tau` =
    ``temperature``.

    The mean, not a draw from :math:`p(x \mid z)`, is what sample grids show: the pixel noise of
    a factorised likelihood is independent across pixels and carries no structure.

    Args:
      key: PRNG key.
      model: a :class:`VAE`, :class:`ConvVAE` or :class:`CVAE`.
      params: its parameters.
      n: number of samples.
      labels: ``[n]`` ints, the classes a :class:`CVAE` draws (required for it).
      temperature: :math:`\tau \ge 0`; 1 draws from the prior itself.

    Returns:
      ``[n, *event]`` decoder means.

    Derivation: derivations/05-vae.md
    """
    _checks.positive_int("n", n)
    if isinstance(temperature, int | float) and temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if labels is not None:
        labels = _checks.labels(labels, model.num_classes, n)
    bound = bind(model, params, labels)
    mean, log_var = (jnp.asarray(v, jnp.float32) for v in bound.prior)
    mean = jnp.broadcast_to(mean, (n, model.latent_dim))  # [n, d]
    log_var = jnp.broadcast_to(log_var, mean.shape)  # [n, d]
    noise = temperature * jax.random.normal(key, mean.shape, mean.dtype)  # [n, d]
    return model.likelihood.mean(bound.decode(reparameterize(key, mean, log_var, noise)))
