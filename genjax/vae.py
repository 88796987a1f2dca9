r"""Variational autoencoders: reparameterisation, the ELBO, IWAE, importance-sampled likelihoods.

A latent-variable model :math:`p_\theta(x, z) = p(z)\,p_\theta(x \mid z)` is fitted by maximising
the evidence lower bound (ELBO) with an amortised Gaussian posterior
:math:`q_\phi(z \mid x) = N(\mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x))`:

.. math::
   \log p_\theta(x) \;\ge\; \mathcal L(x) =
   E_{q_\phi(z\mid x)}[\log p_\theta(x \mid z)] - \mathrm{KL}(q_\phi(z\mid x)\,\|\,p(z)).

**Interfaces.** The bounds are pure functions of two callables, so the same code serves the MLP
:class:`VAE`, the :class:`ConvVAE`, the conditional :class:`CVAE` and the exact linear-Gaussian
model used in the tests:

* ``encode(x) -> (mean, log_var)``: ``x [B, *event]`` to two ``[B, d]`` arrays;
* ``log_likelihood(z, x) -> log p(x | z)``: ``z [*sample, B, d]`` and ``x [B, *event]`` to
  ``[*sample, B]`` (the sample axes broadcast against the batch of ``x``).

:func:`bind` builds both (and the prior and the decoder) from a Flax model and its parameters.

**Conventions.** Log-variances, never standard deviations, parameterise Gaussians; every
log-likelihood is summed over the event (pixel) axes and returned per example, and losses take
the mean over the batch of that sum (see ``derivations/05-vae.md`` for why "sum over pixels,
mean over batch" is the one that is a bound on :math:`\log p(x)`). Decoders output parameters
with a trailing parameter axis: ``[B, *event, P]`` where :class:`Likelihood` says what the
``P`` values are.

References:
  Kingma & Welling, *Auto-Encoding Variational Bayes*, 2013, https://arxiv.org/abs/1312.6114

  Rezende et al., *Stochastic Backpropagation and Approximate Inference in Deep Generative
  Models*, 2014, https://arxiv.org/abs/1401.4082

  Burda et al., *Importance Weighted Autoencoders*, 2015, https://arxiv.org/abs/1509.00519

  Sohn et al., *Learning Structured Output Representation using Deep Conditional Generative
  Models*, 2015 (NeurIPS).

Derivation: derivations/05-vae.md, derivations/06-conditional-vae.md
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from genjax.divergences import gaussian_kl
from genjax.nn import layers

LOG_2PI = math.log(2.0 * math.pi)
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_fixed", "logistic", "categorical")

Encode = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
LogLikelihood = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- helpers


def _sum_event(v: jax.Array, event_ndims: int) -> jax.Array:
    """Sum over the trailing ``event_ndims`` axes (none when 0)."""
    return jnp.sum(v, axis=tuple(range(-event_ndims, 0))) if event_ndims else v


def _flatten_event(v: jax.Array, event_ndims: int) -> jax.Array:
    """``[*batch, *event] -> [*batch, prod(event)]``: XLA's CPU backend sums an elementwise
    expression over one contiguous axis about twice as fast as over several."""
    return jnp.reshape(v, (*jnp.shape(v)[: jnp.ndim(v) - event_ndims], -1))


def _check_event_ndims(x, event_ndims: int, name: str = "x") -> None:
    if not isinstance(event_ndims, int) or isinstance(event_ndims, bool) or event_ndims < 0:
        raise ValueError(f"event_ndims must be an int >= 0, got {event_ndims!r}")
    if jnp.ndim(x) < event_ndims:
        raise ValueError(
            f"{name} must have at least event_ndims={event_ndims} axes, got shape {jnp.shape(x)}"
        )


def _check_same_shape(name: str, value, other_name: str, other) -> None:
    if jnp.shape(value) != jnp.shape(other):
        raise ValueError(
            f"{name} must have the shape of {other_name} {jnp.shape(other)}, got {jnp.shape(value)}"
        )


def _check_scalar_or_same_shape(name: str, value, other_name: str, other) -> None:
    if jnp.ndim(value) != 0:
        _check_same_shape(name, value, other_name, other)


def _check_num_samples(num_samples) -> None:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")


def _check_levels(levels) -> None:
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")


def _is_concrete(x) -> bool:
    """True outside ``jit``/``grad`` tracing, where array values can be checked."""
    return not isinstance(x, jax.core.Tracer)


def _lead(a, ndim: int) -> jax.Array:
    """``a`` with leading unit axes up to ``ndim`` axes; scalars stay scalars (explicit
    broadcasting, so strict rank promotion holds)."""
    a = jnp.asarray(a)
    if a.ndim == 0:
        return a
    return jnp.reshape(a, (1,) * (ndim - a.ndim) + a.shape)


def _pixel_index(x, levels: int) -> jax.Array:
    """``x`` on the grid ``k / (levels - 1)`` as the integer ``k`` (int32)."""
    return jnp.clip(jnp.round(x * (levels - 1)), 0, levels - 1).astype(jnp.int32)


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

    with :math:`\mu` = ``mean``, :math:`\log\sigma^2` = ``log_var`` and :math:`\varepsilon` =
    ``noise``. Because the randomness sits in :math:`\varepsilon`, which does not depend on the
    parameters, :math:`\nabla_{\mu,\log\sigma^2} E[f(z)] = E_\varepsilon[\nabla f(z)\,
    \partial z/\partial(\mu, \log\sigma^2)]` (:func:`reparameterization_gradient`).

    Args:
      key: PRNG key (unused when ``noise`` is given).
      mean: ``[*batch, d]`` means :math:`\mu`.
      log_var: ``[*batch, d]`` log-variances :math:`\log\sigma^2` (same shape as ``mean``).
      noise: optional standard-normal draw :math:`\varepsilon` replacing the one from ``key``;
        shape ``[*batch, d]``, or ``[num_samples, *batch, d]`` when ``num_samples`` is given.
      num_samples: draw this many samples per mean along a new leading axis.

    Returns:
      ``[*batch, d]``, or ``[num_samples, *batch, d]``.

    Raises:
      ValueError: ``mean`` and ``log_var`` differ in shape, ``noise`` has the wrong shape, or
        ``num_samples`` is not a positive int.

    Example:
      >>> z = reparameterize(None, jnp.ones(2), jnp.zeros(2), noise=jnp.array([0.5, -1.0]))
      >>> z.tolist()
      [1.5, 0.0]

    Note:
      PyTorch VAEs often parameterise the standard deviation or the log standard deviation;
      here it is always the log-variance, matching :func:`genjax.divergences.gaussian_kl`.

    References:
      Kingma & Welling, *Auto-Encoding Variational Bayes*, 2013,
      https://arxiv.org/abs/1312.6114

    Derivation: derivations/05-vae.md
    """
    _check_same_shape("log_var", log_var, "mean", mean)
    shape = jnp.shape(mean)
    if num_samples is not None:
        _check_num_samples(num_samples)
        shape = (num_samples, *shape)
    if noise is None:
        noise = jax.random.normal(key, shape, jnp.result_type(mean))
    elif jnp.shape(noise) != shape:
        raise ValueError(f"noise must have shape {shape}, got {jnp.shape(noise)}")
    ndim = len(shape)
    return _lead(mean, ndim) + jnp.exp(0.5 * _lead(log_var, ndim)) * noise


def reparameterization_gradient(
    key: jax.Array,
    f: Callable[[jax.Array], jax.Array],
    mean: Float[Array, " d"],
    log_var: Float[Array, " d"],
    num_samples: int,
    noise: Float[Array, "num_samples d"] | None = None,
) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
    r"""Monte Carlo gradient of :math:`E_{N(\mu, \sigma^2)}[f(z)]` by reparameterisation.

    .. math:: \hat g = \frac1S \sum_{s=1}^{S} \nabla_{\mu,\log\sigma^2}
       f(\mu + \sigma \odot \varepsilon_s), \qquad \varepsilon_s \sim N(0, I)

    with :math:`S` = ``num_samples``. Unbiased; its variance scales with the curvature of
    :math:`f`, not with the size of :math:`f` (compare :func:`score_function_gradient`).

    Args:
      key: PRNG key (unused when ``noise`` is given).
      f: ``f(z [S, d]) -> [S]``, a differentiable function of each sample.
      mean: ``[d]`` :math:`\mu`.
      log_var: ``[d]`` :math:`\log\sigma^2`.
      num_samples: :math:`S`.
      noise: optional ``[S, d]`` standard-normal draws.

    Returns:
      ``(grad_mean [d], grad_log_var [d])``.

    Derivation: derivations/05-vae.md
    """

    def objective(m, lv):
        z = reparameterize(key, m, lv, noise, num_samples=num_samples)  # [S, d]
        return jnp.mean(f(z))

    return jax.grad(objective, argnums=(0, 1))(mean, log_var)


def score_function_gradient(
    key: jax.Array,
    f: Callable[[jax.Array], jax.Array],
    mean: Float[Array, " d"],
    log_var: Float[Array, " d"],
    num_samples: int,
    noise: Float[Array, "num_samples d"] | None = None,
) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
    r"""Monte Carlo gradient of :math:`E_{q}[f(z)]` by the score function (REINFORCE).

    .. math:: \hat g = \frac1S \sum_{s=1}^{S} f(z_s)\,\nabla_{\mu,\log\sigma^2}
       \log q(z_s; \mu, \sigma^2), \qquad z_s \sim q = N(\mu, \sigma^2)

    computed as the gradient of the surrogate
    :math:`\frac1S\sum_s \mathrm{sg}[f(z_s)]\log q(\mathrm{sg}[z_s])` (``sg`` =
    ``stop_gradient``). Needs only values of :math:`f`, so it works for non-differentiable
    :math:`f` and discrete latents, but its variance grows with :math:`f^2`.

    Args:
      key: PRNG key (unused when ``noise`` is given).
      f: ``f(z [S, d]) -> [S]``.
      mean: ``[d]`` :math:`\mu`.
      log_var: ``[d]`` :math:`\log\sigma^2`.
      num_samples: :math:`S`.
      noise: optional ``[S, d]`` standard-normal draws.

    Returns:
      ``(grad_mean [d], grad_log_var [d])``.

    References:
      Williams, *Simple statistical gradient-following algorithms for connectionist
      reinforcement learning*, 1992 (Machine Learning 8).

    Derivation: derivations/05-vae.md
    """
    z = jax.lax.stop_gradient(reparameterize(key, mean, log_var, noise, num_samples=num_samples))
    values = jax.lax.stop_gradient(f(z))  # [S]

    def surrogate(m, lv):
        full = lambda a: jnp.broadcast_to(a, z.shape)  # [S, d]
        log_q = gaussian_log_likelihood(z, full(m), full(lv))  # [S]
        return jnp.mean(values * log_q)

    return jax.grad(surrogate, argnums=(0, 1))(mean, log_var)


# ----------------------------------------------------------------------------- likelihoods


def gaussian_log_likelihood(
    x: Float[Array, "*shape"],
    mean: Float[Array, "*shape"],
    log_var: Float[Array, "*shape"] | float,
    event_ndims: int = 1,
) -> Float[Array, "*batch"]:
    r"""Diagonal Gaussian log-density, summed over the event axes.

    .. math:: \log N(x; \mu, \operatorname{diag}\sigma^2) = -\frac12 \sum_i
       \Big[\log 2\pi + \log\sigma_i^2 + \frac{(x_i-\mu_i)^2}{\sigma_i^2}\Big]

    with :math:`x` = ``x``, :math:`\mu` = ``mean``, :math:`\log\sigma^2` = ``log_var``, and
    :math:`i` running over the trailing ``event_ndims`` axes. A scalar ``log_var`` is a fixed,
    shared variance (the decoder of probabilistic PCA); an array is a learned, per-value one.

    Args:
      x: ``[*batch, *event]`` values.
      mean: same shape as ``x``.
      log_var: same shape as ``x``, or a scalar.
      event_ndims: number of trailing axes summed over (1 for vectors, 3 for NHWC images).

    Returns:
      ``[*batch]`` log-densities in nats.

    Raises:
      ValueError: shapes differ, or ``event_ndims`` exceeds ``x.ndim``.

    Example:
      >>> round(float(gaussian_log_likelihood(jnp.zeros(1), jnp.zeros(1), 0.0)), 4)
      -0.9189

    Derivation: derivations/05-vae.md
    """
    _check_event_ndims(x, event_ndims)
    _check_same_shape("mean", mean, "x", x)
    _check_scalar_or_same_shape("log_var", log_var, "x", x)
    log_var = jnp.asarray(log_var, jnp.result_type(x))
    log_prob = -0.5 * (LOG_2PI + log_var + jnp.square(x - mean) * jnp.exp(-log_var))
    return _sum_event(log_prob, event_ndims)


def bernoulli_log_likelihood(
    logits: Float[Array, "*shape"],
    x: Float[Array, "*shape"],
    event_ndims: int = 1,
) -> Float[Array, "*batch"]:
    r"""Bernoulli log-likelihood from logits, summed over the event axes.

    .. math:: \log p(x \mid \ell) = \sum_i \big[x_i \log\sigma(\ell_i)
       + (1-x_i)\log\sigma(-\ell_i)\big]
       = \sum_i \big[x_i\ell_i - \operatorname{softplus}(\ell_i)\big]

    with :math:`\ell` = ``logits``. The right-hand form never takes the log of a probability, so
    it is exact for saturated logits where ``log(sigmoid(l))`` underflows to ``-inf``; for
    :math:`x \in [0, 1]` that is not binary it is the (negative) binary cross-entropy, which is
    not a normalised density of grey values.

    Args:
      logits: ``[*batch, *event]`` logits :math:`\ell`.
      x: ``[*batch, *event]`` targets in :math:`[0, 1]` (binary for a true likelihood).
      event_ndims: number of trailing axes summed over.

    Returns:
      ``[*batch]`` log-likelihoods in nats.

    Example:
      >>> round(float(bernoulli_log_likelihood(jnp.zeros(2), jnp.array([0.0, 1.0]))), 4)
      -1.3863

    Note:
      PyTorch's ``BCELoss`` on sigmoid outputs clamps the log at -100;
      ``BCEWithLogitsLoss`` matches this function (with the opposite sign, and a mean over
      elements by default instead of a sum).

    Derivation: derivations/05-vae.md
    """
    _check_event_ndims(x, event_ndims)
    _check_same_shape("logits", logits, "x", x)
    logits, x = _flatten_event(logits, event_ndims), _flatten_event(x, event_ndims)
    return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)


def discretized_logistic_log_likelihood(
    x: Float[Array, "*shape"],
    mean: Float[Array, "*shape"],
    log_scale: Float[Array, "*shape"],
    levels: int,
    event_ndims: int = 1,
) -> Float[Array, "*batch"]:
    r"""Discretised logistic log-likelihood of pixels on the grid :math:`k/(L-1)`.

    The pixel value :math:`x = k/(L-1)`, :math:`k \in \{0..L-1\}`, owns the bin
    :math:`[x - h, x + h]` with :math:`h = \frac{1}{2(L-1)}`; the outermost bins extend to
    :math:`\pm\infty`. With :math:`a = (x + h - \mu)/s` and :math:`b = (x - h - \mu)/s`,

    .. math:: P(x) = \sigma(a) - \sigma(b), \qquad
       \log P(x) = \log\sigma(a) - \operatorname{softplus}(b) + \log\big(1 - e^{\,b - a}\big)

    (the second form is exact for saturated arguments), :math:`\log P = \log\sigma(a)` for
    :math:`k = 0` and :math:`\log P = -\operatorname{softplus}(b)` for :math:`k = L-1`. Here
    :math:`\mu` = ``mean``, :math:`\log s` = ``log_scale``, :math:`L` = ``levels``.

    Args:
      x: ``[*batch, *event]`` pixels in :math:`[0, 1]` on the grid ``k / (levels - 1)``.
      mean: ``[*batch, *event]`` logistic locations :math:`\mu`.
      log_scale: ``[*batch, *event]`` log-scales :math:`\log s`.
      levels: :math:`L`, the number of pixel values (256 for 8-bit images, 17 for digits).
      event_ndims: number of trailing axes summed over.

    Returns:
      ``[*batch]`` log-probabilities in nats (a normalised distribution over the ``L`` values).

    References:
      Salimans et al., *PixelCNN++*, 2017, https://arxiv.org/abs/1701.05517

    Derivation: derivations/05-vae.md
    """
    _check_event_ndims(x, event_ndims)
    _check_levels(levels)
    _check_same_shape("mean", mean, "x", x)
    _check_same_shape("log_scale", log_scale, "x", x)
    k = _pixel_index(x, levels)
    centre = k.astype(mean.dtype) / (levels - 1)
    half = 0.5 / (levels - 1)
    inv_s = jnp.exp(-log_scale)
    a = (centre + half - mean) * inv_s
    b = (centre - half - mean) * inv_s
    interior = jax.nn.log_sigmoid(a) - jax.nn.softplus(b) + jnp.log(-jnp.expm1(b - a))
    log_p = jnp.where(
        k == 0, jax.nn.log_sigmoid(a), jnp.where(k == levels - 1, -jax.nn.softplus(b), interior)
    )
    return _sum_event(log_p, event_ndims)


def categorical_log_likelihood(
    logits: Float[Array, "*shape levels"],
    x: Float[Array, "*shape"],
    levels: int,
    event_ndims: int = 1,
) -> Float[Array, "*batch"]:
    r"""Categorical (256-way softmax, or ``levels``-way) pixel log-likelihood.

    .. math:: \log p(x) = \sum_i \operatorname{log\_softmax}(\ell_i)_{k_i}, \qquad
       k_i = \operatorname{round}\big(x_i (L-1)\big)

    with :math:`\ell` = ``logits`` and :math:`L` = ``levels``.

    Args:
      logits: ``[*batch, *event, levels]``.
      x: ``[*batch, *event]`` pixels in :math:`[0, 1]` on the grid ``k / (levels - 1)``.
      levels: :math:`L`.
      event_ndims: number of trailing axes of ``x`` summed over.

    Returns:
      ``[*batch]`` log-probabilities in nats.

    References:
      van den Oord et al., *Pixel Recurrent Neural Networks*, 2016,
      https://arxiv.org/abs/1601.06759

    Derivation: derivations/05-vae.md
    """
    _check_event_ndims(x, event_ndims)
    _check_levels(levels)
    if jnp.shape(logits) != (*jnp.shape(x), levels):
        raise ValueError(
            f"logits must have shape x.shape + (levels,) = {(*jnp.shape(x), levels)}, "
            f"got {jnp.shape(logits)}"
        )
    k = _pixel_index(x, levels)
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), k[..., None], axis=-1)
    return _sum_event(log_p[..., 0], event_ndims)


@dataclasses.dataclass(frozen=True)
class Likelihood:
    r"""The decoder's pixel distribution :math:`p_\theta(x \mid z)` and the layout of its output.

    A decoder emits ``[*batch, *event, P]``: ``P`` = :attr:`num_params` numbers per data value.

    ========================  ====  ==================================================
    ``kind``                  P     the ``P`` numbers
    ========================  ====  ==================================================
    ``"bernoulli"``           1     logit (for binary data)
    ``"gaussian"``            2     mean, log-variance (learned, per value and per z)
    ``"gaussian_fixed"``      1     mean; the log-variance is the constant ``log_var``
    ``"logistic"``            2     mean, log-scale of a discretised logistic
    ``"categorical"``         L     logits over the ``levels`` pixel values
    ========================  ====  ==================================================

    Attributes:
      kind: one of ``LIKELIHOODS``.
      levels: number of pixel values, for ``"logistic"`` and ``"categorical"``.
      log_var: the fixed log-variance of ``"gaussian_fixed"``.
      min_log_var: a floor on the learned log-variance of ``"gaussian"`` (a soft one,
        :math:`\log\sigma^2 = m + \operatorname{softplus}(r - m)`); ``None`` leaves it free.

    Derivation: derivations/05-vae.md
    """

    kind: str = "bernoulli"
    levels: int | None = None
    log_var: float = 0.0
    min_log_var: float | None = None

    def __post_init__(self):
        if self.kind not in LIKELIHOODS:
            raise ValueError(f"kind must be one of {LIKELIHOODS}, got {self.kind!r}")
        if self.kind in ("logistic", "categorical"):
            _check_levels(self.levels)

    @property
    def num_params(self) -> int:
        """``P``: numbers the decoder emits per data value."""
        return {"gaussian": 2, "logistic": 2, "categorical": self.levels or 0}.get(self.kind, 1)

    def _gaussian_log_var(self, raw):
        if self.min_log_var is None:
            return raw
        return self.min_log_var + jax.nn.softplus(raw - self.min_log_var)

    def log_prob(self, output: jax.Array, x: jax.Array, event_ndims: int) -> jax.Array:
        """``log p(x | z)`` summed over the event: ``output [*b, *event, P]``, ``x [*b, *event]``
        to ``[*b]``."""
        if jnp.shape(output) != (*jnp.shape(x), self.num_params):
            raise ValueError(
                f"decoder output must have shape x.shape + ({self.num_params},) = "
                f"{(*jnp.shape(x), self.num_params)} for a {self.kind} likelihood, got "
                f"{jnp.shape(output)}"
            )
        if self.kind == "bernoulli":
            return bernoulli_log_likelihood(output[..., 0], x, event_ndims)
        if self.kind == "gaussian":
            log_var = self._gaussian_log_var(output[..., 1])
            return gaussian_log_likelihood(x, output[..., 0], log_var, event_ndims)
        if self.kind == "gaussian_fixed":
            return gaussian_log_likelihood(x, output[..., 0], self.log_var, event_ndims)
        if self.kind == "logistic":
            return discretized_logistic_log_likelihood(
                x, output[..., 0], output[..., 1], self.levels, event_ndims
            )
        return categorical_log_likelihood(output, x, self.levels, event_ndims)

    def mean(self, output: jax.Array) -> jax.Array:
        r""":math:`E[x \mid z]` from ``output [*b, *event, P]``: ``[*b, *event]`` (the logistic's
        location, clipped to [0, 1], stands in for its mean)."""
        if self.kind == "bernoulli":
            return jax.nn.sigmoid(output[..., 0])
        if self.kind == "categorical":
            values = jnp.arange(self.levels, dtype=output.dtype) / (self.levels - 1)  # [L]
            return jnp.sum(jax.nn.softmax(output, axis=-1) * _lead(values, output.ndim), axis=-1)
        if self.kind == "logistic":
            return jnp.clip(output[..., 0], 0.0, 1.0)
        return output[..., 0]


# ----------------------------------------------------------------------------- bounds


class ElboTerms(NamedTuple):
    r"""The ELBO and its two parts, per example (each ``[B]``).

    Attributes:
      reconstruction: :math:`E_q[\log p(x \mid z)]` (one-sample estimate unless averaged).
      kl: :math:`\mathrm{KL}(q(z \mid x)\,\|\,p(z))`.
      total: ``reconstruction - beta * kl``; a lower bound on :math:`\log p(x)` when
        ``beta = 1``.
    """

    reconstruction: jax.Array
    kl: jax.Array
    total: jax.Array


def kl_warmup(step: Int[Array, ""] | int, warmup_steps: int) -> Float[Array, ""]:
    r"""Linear KL warm-up weight :math:`\min(1, t / W)` for step :math:`t` and :math:`W` =
    ``warmup_steps`` (``0`` disables the warm-up: always 1). Multiply ``beta`` by it.

    References:
      Sønderby et al., *Ladder Variational Autoencoders*, 2016, https://arxiv.org/abs/1602.02282

    Derivation: derivations/05-vae.md
    """
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if warmup_steps == 0:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def _encode_checked(encode: Encode, x) -> tuple[jax.Array, jax.Array]:
    mean, log_var = encode(x)
    if jnp.ndim(mean) != 2 or jnp.shape(mean)[0] != jnp.shape(x)[0]:
        raise ValueError(
            f"encode(x) must return a mean of shape [B, d] with B = x.shape[0] = "
            f"{jnp.shape(x)[0]}, got {jnp.shape(mean)}"
        )
    _check_same_shape("the log-variance returned by encode", log_var, "its mean", mean)
    return mean, log_var


def _prior(prior, mean) -> tuple[jax.Array, jax.Array]:
    prior_mean, prior_log_var = prior
    for name, v in (("prior mean", prior_mean), ("prior log-variance", prior_log_var)):
        _check_scalar_or_same_shape(name, v, "the posterior mean", mean)
    return jnp.asarray(prior_mean, mean.dtype), jnp.asarray(prior_log_var, mean.dtype)


def _log_likelihood_checked(log_likelihood: LogLikelihood, z, x) -> jax.Array:
    out = log_likelihood(z, x)
    expected = jnp.shape(z)[:-1]
    if jnp.shape(out) != expected:
        raise ValueError(
            f"log_likelihood(z, x) must return z.shape[:-1] = {expected}, got {jnp.shape(out)}"
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
    r"""The (β-weighted) evidence lower bound per example, with its two terms.

    .. math:: \mathcal L_\beta(x) = \underbrace{\log p(x \mid z)}_{\texttt{reconstruction}}
       - \beta\,\underbrace{\mathrm{KL}(q(z \mid x)\,\|\,p(z))}_{\texttt{kl}}, \qquad
       z = \mu(x) + \sigma(x)\odot\varepsilon

    a one-sample, reparameterised estimate of
    :math:`E_q[\log p(x\mid z)] - \beta\,\mathrm{KL}`. With :math:`\beta = 1` its expectation is
    :math:`\log p(x) - \mathrm{KL}(q(z\mid x)\,\|\,p(z \mid x)) \le \log p(x)`. The KL is the
    closed form :func:`genjax.divergences.gaussian_kl` (``analytic_kl=True``) or the one-sample
    estimate :math:`\log q(z\mid x) - \log p(z)` at the same :math:`z`.

    Args:
      key: PRNG key for :math:`\varepsilon` (unused when ``noise`` is given).
      encode: ``encode(x) -> (mean [B, d], log_var [B, d])``, the posterior :math:`q(z\mid x)`.
      log_likelihood: ``log_likelihood(z [B, d], x) -> [B]``, :math:`\log p(x \mid z)`.
      x: ``[B, *event]`` data.
      beta: weight :math:`\beta` of the KL (β-VAE; times :func:`kl_warmup` for a warm-up).
      prior: ``(mean, log_var)`` of the Gaussian prior :math:`p(z)`, scalars or ``[B, d]`` (a
        learned conditional prior :math:`p(z \mid y)`); the default is :math:`N(0, I)`.
      analytic_kl: closed-form KL (lower variance) or the one-sample estimate.
      noise: optional ``[B, d]`` standard-normal draw replacing the one from ``key``.

    Returns:
      :class:`ElboTerms` of ``[B]`` arrays, in nats.

    Raises:
      ValueError: ``encode`` or ``log_likelihood`` return the wrong shapes, or the prior's
        shape does not match the posterior's.

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
        kl = gaussian_log_likelihood(z, mean, log_var) - gaussian_log_likelihood(
            z, jnp.broadcast_to(prior_mean, z.shape), jnp.broadcast_to(prior_log_var, z.shape)
        )
    return ElboTerms(reconstruction, kl, reconstruction - beta * kl)


def log_importance_weights(
    key: jax.Array,
    encode: Encode,
    log_likelihood: LogLikelihood,
    x: Float[Array, " B *event"],
    num_samples: int,
    *,
    prior: tuple = (0.0, 0.0),
    noise: Float[Array, "num_samples B d"] | None = None,
) -> Float[Array, "num_samples B"]:
    r"""Log importance weights :math:`\log w_s = \log p(x, z_s) - \log q(z_s \mid x)`,
    :math:`z_s \sim q(z \mid x)`, for :math:`s = 1..k` (:math:`k` = ``num_samples``).

    .. math:: \log w_s = \log p(x \mid z_s) + \log p(z_s) - \log q(z_s \mid x)

    Args:
      key, encode, log_likelihood, x, prior: as in :func:`elbo`.
      num_samples: :math:`k`.
      noise: optional ``[k, B, d]`` standard-normal draws.

    Returns:
      ``[k, B]`` log-weights in nats.

    Derivation: derivations/05-vae.md
    """
    _check_num_samples(num_samples)
    mean, log_var = _encode_checked(encode, x)
    prior_mean, prior_log_var = _prior(prior, mean)
    z = reparameterize(key, mean, log_var, noise, num_samples=num_samples)  # [k, B, d]
    log_px_z = _log_likelihood_checked(log_likelihood, z, x)  # [k, B]
    full = lambda a: jnp.broadcast_to(_lead(a, z.ndim), z.shape)  # [k, B, d]
    log_pz = gaussian_log_likelihood(z, full(prior_mean), full(prior_log_var))  # [k, B]
    log_qz = gaussian_log_likelihood(z, full(mean), full(log_var))  # [k, B]
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
    r"""The importance-weighted bound :math:`\mathcal L_k` per example.

    .. math:: \mathcal L_k(x) = \log \frac1k \sum_{s=1}^{k} w_s
       = \operatorname{logsumexp}_s(\log w_s) - \log k,
       \qquad w_s = \frac{p(x, z_s)}{q(z_s \mid x)},\ z_s \sim q(z \mid x)

    with :math:`k` = ``num_samples`` and :math:`\log w_s` from :func:`log_importance_weights`.
    :math:`E[\mathcal L_1]` is the ELBO, :math:`E[\mathcal L_k] \le E[\mathcal L_{k+1}] \le
    \log p(x)`, and :math:`\mathcal L_k \to \log p(x)` as :math:`k \to \infty`.

    Args:
      key, encode, log_likelihood, x, prior: as in :func:`elbo`.
      num_samples: :math:`k`.
      noise: optional ``[k, B, d]`` standard-normal draws.

    Returns:
      ``[B]`` bounds in nats.

    Raises:
      ValueError: ``num_samples`` is not a positive int, or shapes mismatch (as :func:`elbo`).

    References:
      Burda et al., *Importance Weighted Autoencoders*, 2015,
      https://arxiv.org/abs/1509.00519

    Derivation: derivations/05-vae.md
    """
    log_w = log_importance_weights(
        key, encode, log_likelihood, x, num_samples, prior=prior, noise=noise
    )
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
    r"""Importance-sampled negative log-likelihood :math:`-\mathcal L_k(x)`, the standard
    evaluation of a VAE (Burda et al. use :math:`k` = 5000).

    .. math:: -\log \hat p(x) = \log k - \operatorname{logsumexp}_{s=1}^{k}\big[\log p(x\mid z_s)
       + \log p(z_s) - \log q(z_s\mid x)\big]

    The :math:`k` samples are drawn ``chunk_size`` at a time under ``jax.lax.map`` (memory
    :math:`O(\text{chunk\_size}\cdot B)` decoder outputs, never :math:`O(kB)`); padding of the
    last chunk gets weight zero (log-weight :math:`-\infty`). Chunk ``c`` uses
    ``fold_in(key, c)``. An upper bound on :math:`-\log p(x)` in expectation, tight as
    :math:`k \to \infty`.

    Args:
      key, encode, log_likelihood, x, prior: as in :func:`elbo`.
      num_samples: :math:`k`.
      chunk_size: samples per chunk.

    Returns:
      ``[B]`` NLL estimates in nats.

    Raises:
      ValueError: ``num_samples`` or ``chunk_size`` is not a positive int.

    References:
      Burda et al., *Importance Weighted Autoencoders*, 2015,
      https://arxiv.org/abs/1509.00519

    Derivation: derivations/05-vae.md
    """
    _check_num_samples(num_samples)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    chunk = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk)

    def one_chunk(c):
        k = jax.random.fold_in(key, c)
        return log_importance_weights(k, encode, log_likelihood, x, chunk, prior=prior)

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

    evaluated through a Cholesky factor of :math:`C`. :math:`W` = ``weight``, :math:`b` =
    ``bias``, :math:`\log\sigma^2` = ``log_var``.

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

    :math:`S` does not depend on :math:`x`, and is diagonal exactly when the columns of
    :math:`W` are orthogonal (as at the PPCA maximum-likelihood solution): only then can a
    diagonal Gaussian :math:`q` match it and close the ELBO gap.

    Args:
      x: ``[*batch, D]``.
      weight: ``[D, d]``.
      bias: ``[D]``.
      log_var: scalar :math:`\log\sigma^2`.

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


def check_labels(labels, num_classes: int, batch: int | None = None) -> jax.Array:
    """Validate integer class labels ``[B]``: shape, dtype and (outside ``jit``) range
    ``0 <= y < num_classes``; returns them as int32."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.ndim != 1 or (batch is not None and labels.shape[0] != batch):
        want = f"[{batch}]" if batch is not None else "[B]"
        raise ValueError(f"labels must have shape {want}, got {labels.shape}")
    if (
        _is_concrete(labels)
        and labels.size
        and (int(labels.min()) < 0 or int(labels.max()) >= num_classes)
    ):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.astype(jnp.int32)


def _check_event(x, event_shape: tuple[int, ...], name: str = "x") -> None:
    if tuple(jnp.shape(x)[1:]) != tuple(event_shape) or jnp.ndim(x) != len(event_shape) + 1:
        raise ValueError(
            f"{name} must have shape [B, {', '.join(map(str, event_shape))}], got {jnp.shape(x)}"
        )


def _check_latent(z, latent_dim: int) -> None:
    if jnp.ndim(z) != 2 or jnp.shape(z)[1] != latent_dim:
        raise ValueError(f"z must have shape [B, {latent_dim}], got {jnp.shape(z)}")


class MLP(nn.Module):
    """Dense layers with ``activation`` between them (none after the last)."""

    features: Sequence[int]
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.features):
            x = nn.Dense(width, name=f"dense_{i}")(x)
            if i < len(self.features) - 1:
                x = self.activation(x)
        return x


def _split_gaussian(h: jax.Array, latent_dim: int) -> tuple[jax.Array, jax.Array]:
    return h[:, :latent_dim], h[:, latent_dim:]  # [B, d], [B, d]


class VAE(nn.Module):
    r"""MLP variational autoencoder (Kingma & Welling's 784-400-20 network with the defaults
    on 28x28 images).

    Encoder :math:`x \mapsto (\mu, \log\sigma^2)` and decoder :math:`z \mapsto` the
    :class:`Likelihood`'s parameters are MLPs with ``hidden`` widths (mirrored in the decoder).

    Attributes:
      event_shape: shape of one example, e.g. ``(28, 28, 1)``.
      latent_dim: :math:`d`.
      hidden: hidden widths of the encoder (the decoder uses them reversed).
      likelihood: the decoder's :class:`Likelihood`.
      activation: the nonlinearity.

    Methods (call with ``model.apply(params, ..., method=...)``):
      ``encode(x [B, *event]) -> (mean [B, d], log_var [B, d])``;
      ``decode(z [B, d]) -> [B, *event, P]``; ``__call__(x)`` encodes and decodes the mean
      (used to initialise).

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
        size = math.prod(self.event_shape)
        self.encoder = MLP((*self.hidden, 2 * self.latent_dim), self.activation)
        self.decoder = MLP(
            (*reversed(self.hidden), size * self.likelihood.num_params), self.activation
        )

    def encode(self, x):
        _check_event(x, self.event_shape)
        h = self.encoder(jnp.reshape(x, (x.shape[0], -1)))  # [B, 2d]
        return _split_gaussian(h, self.latent_dim)

    def decode(self, z):
        _check_latent(z, self.latent_dim)
        out = self.decoder(z)  # [B, D P]
        return jnp.reshape(out, (z.shape[0], *self.event_shape, self.likelihood.num_params))

    def __call__(self, x):
        mean, _ = self.encode(x)
        return self.decode(mean)


class ConvVAE(nn.Module):
    r"""Convolutional VAE for images ``[H, W, C]`` with ``H`` and ``W`` divisible by
    ``2 ** len(features)``.

    Encoder: 4x4 convolutions of stride 2 and padding 1 (each halves ``H`` and ``W``) with
    ``features`` channels and ReLU, a dense layer of ``hidden`` units, a dense layer to
    :math:`(\mu, \log\sigma^2)`. Decoder: the mirror image with 4x4 transposed convolutions of
    stride 2 (each doubles the resolution); the last one emits ``C * P`` channels. The
    convolutions are :class:`genjax.nn.layers.Conv` and :class:`genjax.nn.layers.ConvTranspose`
    (slices and matrix products: fast gradients inside the training scan on CPU).

    Attributes:
      event_shape: ``(H, W, C)``.
      latent_dim: :math:`d`.
      features: channels of the stride-2 convolutions (each halves ``H`` and ``W``).
      hidden: width of the dense layer between the convolutions and the code.
      likelihood: the decoder's :class:`Likelihood`.

    Methods: as :class:`VAE`.

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
        self.enc_hidden = nn.Dense(self.hidden)
        self.enc_out = nn.Dense(2 * self.latent_dim)
        self.dec_hidden = nn.Dense(self.hidden)
        self.dec_grid = nn.Dense((h // factor) * (w // factor) * self.features[-1])
        channels = [*reversed(self.features[:-1]), self.event_shape[2] * self.likelihood.num_params]
        self.deconvs = [
            layers.ConvTranspose(c, kernel_size=4, stride=2, padding=1, name=f"deconv_{i}")
            for i, c in enumerate(channels)
        ]

    def encode(self, x):
        _check_event(x, self.event_shape)
        h = x
        for conv in self.convs:
            h = nn.relu(conv(h))  # [B, H / 2^i, W / 2^i, features[i]]
        h = nn.relu(self.enc_hidden(jnp.reshape(h, (x.shape[0], -1))))  # [B, hidden]
        return _split_gaussian(self.enc_out(h), self.latent_dim)

    def decode(self, z):
        _check_latent(z, self.latent_dim)
        height, width, channels = self.event_shape
        factor = 2 ** len(self.features)
        h = nn.relu(self.dec_grid(nn.relu(self.dec_hidden(z))))
        h = jnp.reshape(h, (z.shape[0], height // factor, width // factor, -1))  # [B, h, w, F]
        for i, deconv in enumerate(self.deconvs):
            h = deconv(h)  # spatial size doubles
            if i < len(self.deconvs) - 1:
                h = nn.relu(h)
        p = self.likelihood.num_params
        return jnp.reshape(h, (z.shape[0], height, width, channels, p))  # [B, H, W, C, P]

    def __call__(self, x):
        mean, _ = self.encode(x)
        return self.decode(mean)


class CVAE(nn.Module):
    r"""Conditional VAE: :math:`q(z \mid x, y)`, :math:`p(x \mid z, y)` and a prior
    :math:`p(z \mid y)` that is :math:`N(0, I)` or learned per class.

    The label :math:`y` enters the encoder and the decoder as a one-hot vector
    (``label_features=None``) or a learned embedding of ``label_features`` numbers, concatenated
    to the flattened image and to :math:`z`. With ``learned_prior`` the prior is
    :math:`N(\mu_y, \operatorname{diag} e^{\log\sigma^2_y})` with one learned mean and
    log-variance per class (Sohn et al.'s conditional prior network, for a label input).

    Attributes:
      event_shape, latent_dim, hidden, likelihood, activation: as :class:`VAE`.
      num_classes: number of label values.
      label_features: ``None`` for one-hot labels, else the embedding width.
      learned_prior: learn :math:`p(z \mid y)` instead of fixing :math:`N(0, I)`.

    Methods:
      ``encode(x, y)``, ``decode(z, y)``, ``prior(y) -> (mean [B, d], log_var [B, d])``,
      ``__call__(x, y)``.

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
        size = math.prod(self.event_shape)
        self.encoder = MLP((*self.hidden, 2 * self.latent_dim), self.activation)
        self.decoder = MLP(
            (*reversed(self.hidden), size * self.likelihood.num_params), self.activation
        )
        if self.label_features is not None:
            self.embedding = nn.Embed(self.num_classes, self.label_features)
        if self.learned_prior:
            self.prior_table = nn.Embed(
                self.num_classes, 2 * self.latent_dim, embedding_init=nn.initializers.zeros
            )

    def _label(self, y, batch: int):
        y = check_labels(y, self.num_classes, batch)
        if self.label_features is None:
            return jax.nn.one_hot(y, self.num_classes)  # [B, classes]
        return self.embedding(y)  # [B, label_features]

    def encode(self, x, y):
        _check_event(x, self.event_shape)
        flat = jnp.reshape(x, (x.shape[0], -1))  # [B, D]
        h = self.encoder(jnp.concatenate([flat, self._label(y, x.shape[0])], axis=1))
        return _split_gaussian(h, self.latent_dim)

    def decode(self, z, y):
        _check_latent(z, self.latent_dim)
        out = self.decoder(jnp.concatenate([z, self._label(y, z.shape[0])], axis=1))
        return jnp.reshape(out, (z.shape[0], *self.event_shape, self.likelihood.num_params))

    def prior(self, y):
        y = check_labels(y, self.num_classes)
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
      likelihood: the model's :class:`Likelihood`.
    """

    encode: Encode
    log_likelihood: LogLikelihood
    decode: Callable[[jax.Array], jax.Array]
    prior: tuple
    likelihood: Likelihood


def bind(model: nn.Module, params, labels: Int[Array, " B"] | None = None) -> Bound:
    r"""The functions :func:`elbo`, :func:`iwae_bound` and :func:`importance_sampled_nll` take,
    for a :class:`VAE`, :class:`ConvVAE` or :class:`CVAE` (whose ``labels`` then condition
    every piece; a CVAE needs them).

    ``log_likelihood`` accepts sample axes in front of the batch: ``z [*sample, B, d]`` is
    flattened to ``[(*sample) B, d]``, decoded, and scored against ``x`` repeated along them.

    Raises:
      ValueError: a CVAE without labels, or labels for an unconditional model.

    Derivation: derivations/05-vae.md
    """
    conditional = isinstance(model, CVAE)
    if conditional and labels is None:
        raise ValueError("a CVAE needs labels [B] to bind")
    if not conditional and labels is not None:
        raise ValueError(f"{type(model).__name__} is unconditional; pass labels=None")
    event_ndims = len(model.event_shape)
    extra = () if labels is None else (check_labels(labels, model.num_classes),)

    def encode(x):
        return model.apply(params, x, *extra, method=model.encode)

    def decode(z):
        return model.apply(params, z, *extra, method=model.decode)

    def log_likelihood(z, x):
        sample_shape = z.shape[:-2]
        reps = math.prod(sample_shape)
        flat_z = jnp.reshape(z, (-1, z.shape[-1]))  # [(*sample) B, d]
        tiled = lambda a: jnp.reshape(
            jnp.broadcast_to(a, (*sample_shape, *a.shape)), (reps * a.shape[0], *a.shape[1:])
        )  # [(*sample) B, ...]
        more = () if labels is None else (tiled(extra[0]),)
        out = model.apply(params, flat_z, *more, method=model.decode)  # [(*sample) B, *event, P]
        log_p = model.likelihood.log_prob(out, tiled(x), event_ndims)  # [(*sample) B]
        return jnp.reshape(log_p, z.shape[:-1])  # [*sample, B]

    if conditional:
        prior = model.apply(params, extra[0], method=model.prior)
    else:
        prior = (0.0, 0.0)
    return Bound(encode, log_likelihood, decode, prior, model.likelihood)


def sample(
    key: jax.Array,
    model: nn.Module,
    params,
    num_samples: int,
    labels: Int[Array, " num_samples"] | None = None,
) -> jax.Array:
    r"""Decoder means :math:`E[x \mid z]`, :math:`z \sim p(z)` (or :math:`p(z \mid y)`):
    ``[num_samples, *event]``.

    The mean, not a draw from :math:`p(x \mid z)`, is what sample grids show: pixel noise from
    a factorised likelihood is independent across pixels and carries no structure.

    Derivation: derivations/05-vae.md
    """
    _check_num_samples(num_samples)
    if labels is not None:
        labels = check_labels(labels, model.num_classes, num_samples)
    bound = bind(model, params, labels)
    mean, log_var = bound.prior
    mean = jnp.broadcast_to(jnp.asarray(mean, jnp.float32), (num_samples, model.latent_dim))
    log_var = jnp.broadcast_to(jnp.asarray(log_var, jnp.float32), mean.shape)
    z = reparameterize(key, mean, log_var)  # [n, d]
    return model.likelihood.mean(bound.decode(z))
