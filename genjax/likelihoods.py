r"""Log-likelihoods of data under factorised distributions, and a decoder's output layout.

Every function is ``*_log_likelihood(x, <parameters...>, *, event_ndims=1)``: the data, then the
distribution's parameters. Data and parameters broadcast by NumPy's rules, leading sample axes
included (``x [B, D]`` against ``mean [K, B, D]`` gives ``[K, B]``); the trailing
``event_ndims`` axes are summed, so the result has the broadcast batch shape. :class:`Likelihood`
names what a decoder's trailing parameter axis holds and dispatches to these functions.

Derivation: derivations/05-vae.md
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from genjax import _checks

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "bernoulli_log_likelihood",
    "categorical_log_likelihood",
    "discretized_logistic_log_likelihood",
    "gaussian_log_likelihood",
]

LOG_2PI = math.log(2.0 * math.pi)
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_fixed", "logistic", "categorical")


def _aligned(event_ndims: int, x, **params) -> tuple[tuple[int, ...], list[jax.Array]]:
    """The broadcast shape of ``x`` and ``params`` (an error names every shape), and the arrays
    with leading unit axes up to its rank (scalars stay scalars), so that elementwise arithmetic
    broadcasts without rank promotion."""
    _checks.event_ndims(x, event_ndims)
    shape = _checks.broadcast_shape(x=x, **params)
    arrays = [jnp.asarray(a) for a in (x, *params.values())]
    lead = lambda a: a if a.ndim == 0 else jnp.reshape(a, (1,) * (len(shape) - a.ndim) + a.shape)
    return shape, [lead(a) for a in arrays]


def _pixel_index(x, levels: int) -> jax.Array:
    """``x`` on the grid ``k / (levels - 1)`` as the integer ``k`` (int32)."""
    return jnp.clip(jnp.round(x * (levels - 1)), 0, levels - 1).astype(jnp.int32)


def gaussian_log_likelihood(
    x: Float[Array, "*x_shape"],
    mean: Float[Array, "*mean_shape"],
    log_var: Float[Array, "*var_shape"] | float,
    *,
    event_ndims: int = 1,
) -> Float[Array, "*batch"]:
    r"""Diagonal Gaussian log-density, summed over the event axes.

    .. math:: \log N(x; \mu, \operatorname{diag}\sigma^2) = -\frac12 \sum_i
       \Big[\log 2\pi + \log\sigma_i^2 + \frac{(x_i-\mu_i)^2}{\sigma_i^2}\Big]

    with :math:`x` = ``x``, :math:`\mu` = ``mean``, :math:`\log\sigma^2` = ``log_var`` and
    :math:`i` over the trailing ``event_ndims`` axes. A scalar ``log_var`` is one shared, fixed
    variance (probabilistic PCA's decoder).

    Args:
      x: ``[*batch, *event]`` values.
      mean: broadcastable against ``x``, e.g. ``[K, *batch, *event]``.
      log_var: broadcastable against ``x`` (``[*event]``, a scalar, ...).
      event_ndims: trailing axes summed over (1 for vectors, 3 for NHWC images).

    Returns:
      Log-densities in nats with the broadcast batch shape.

    Derivation: derivations/05-vae.md
    """
    log_var = jnp.asarray(log_var, jnp.result_type(x))
    _, (x, mean, log_var) = _aligned(event_ndims, x, mean=mean, log_var=log_var)
    log_prob = -0.5 * (LOG_2PI + log_var + jnp.square(x - mean) * jnp.exp(-log_var))
    return _checks.sum_event(log_prob, event_ndims)


def bernoulli_log_likelihood(
    x: Float[Array, "*x_shape"],
    logits: Float[Array, "*logits_shape"],
    *,
    event_ndims: int = 1,
) -> Float[Array, "*batch"]:
    r"""Bernoulli log-likelihood from logits, summed over the event axes.

    .. math:: \log p(x \mid \ell) = \sum_i \big[x_i \log\sigma(\ell_i)
       + (1-x_i)\log\sigma(-\ell_i)\big]
       = \sum_i \big[x_i\ell_i - \operatorname{softplus}(\ell_i)\big]

    with :math:`\ell` = ``logits``. The right-hand form never takes the log of a probability, so
    it stays exact where ``log(sigmoid(l))`` underflows to ``-inf``. PyTorch's
    ``BCEWithLogitsLoss`` is its negative, averaged over elements by default instead of summed.

    Args:
      x: ``[*batch, *event]`` targets in :math:`[0, 1]` (binary for a true likelihood).
      logits: broadcastable against ``x``.
      event_ndims: trailing axes summed over; they are flattened into one before the sum (XLA's
        CPU backend reduces one contiguous axis about twice as fast as several).

    Returns:
      Log-likelihoods in nats with the broadcast batch shape.

    Derivation: derivations/05-vae.md
    """
    shape, (x, logits) = _aligned(event_ndims, x, logits=logits)
    batch = shape[: len(shape) - event_ndims]
    flat = lambda a: jnp.reshape(jnp.broadcast_to(a, shape), (*batch, -1))  # [*batch, E]
    logits, x = flat(logits), flat(x)
    return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)


def discretized_logistic_log_likelihood(
    x: Float[Array, "*x_shape"],
    mean: Float[Array, "*mean_shape"],
    log_scale: Float[Array, "*scale_shape"],
    levels: int,
    *,
    event_ndims: int = 1,
) -> Float[Array, "*batch"]:
    r"""Discretised logistic log-likelihood of pixels on the grid :math:`k/(L-1)`.

    The value :math:`x = k/(L-1)` owns the bin :math:`[x - h, x + h]`, :math:`h =
    \frac{1}{2(L-1)}`, the outermost bins extended to :math:`\pm\infty`. With :math:`a = (x + h -
    \mu)/s` and :math:`b = (x - h - \mu)/s`,

    .. math:: \log P(x) = \log\sigma(a) - \operatorname{softplus}(b) + \log\big(1 - e^{\,b - a}\big)

    (:math:`\sigma(a) - \sigma(b)` in a form exact for saturated arguments), :math:`\log\sigma(a)`
    for :math:`k = 0` and :math:`-\operatorname{softplus}(b)` for :math:`k = L-1`; :math:`\mu` =
    ``mean``, :math:`\log s` = ``log_scale``, :math:`L` = ``levels``.

    Args:
      x: ``[*batch, *event]`` pixels in :math:`[0, 1]` on the grid ``k / (levels - 1)``.
      mean: broadcastable against ``x``: logistic locations :math:`\mu`.
      log_scale: broadcastable against ``x``: log-scales :math:`\log s`.
      levels: :math:`L` (256 for 8-bit images, 17 for the digits).
      event_ndims: trailing axes summed over.

    Returns:
      Log-probabilities in nats (normalised over the ``L`` values) with the broadcast batch shape.

    References:
      Salimans et al., *PixelCNN++*, 2017, https://arxiv.org/abs/1701.05517

    Derivation: derivations/05-vae.md
    """
    _checks.int_at_least("levels", levels, 2)
    _, (x, mean, log_scale) = _aligned(event_ndims, x, mean=mean, log_scale=log_scale)
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
    return _checks.sum_event(log_p, event_ndims)


def categorical_log_likelihood(
    x: Float[Array, "*x_shape"],
    logits: Float[Array, "*logits_shape levels"],
    levels: int,
    *,
    event_ndims: int = 1,
) -> Float[Array, "*batch"]:
    r"""Categorical (``levels``-way softmax) pixel log-likelihood, summed over the event axes.

    .. math:: \log p(x) = \sum_i \operatorname{log\_softmax}(\ell_i)_{k_i}, \qquad
       k_i = \operatorname{round}\big(x_i (L-1)\big)

    with :math:`\ell` = ``logits`` and :math:`L` = ``levels``.

    Args:
      x: ``[*batch, *event]`` pixels in :math:`[0, 1]` on the grid ``k / (levels - 1)``.
      logits: ``[..., levels]``; ``logits.shape[:-1]`` broadcasts against ``x``.
      levels: :math:`L`.
      event_ndims: trailing axes of ``x`` summed over.

    Returns:
      Log-probabilities in nats with the broadcast batch shape.

    References:
      van den Oord et al., *Pixel Recurrent Neural Networks*, 2016,
      https://arxiv.org/abs/1601.06759

    Derivation: derivations/05-vae.md
    """
    _checks.int_at_least("levels", levels, 2)
    if jnp.ndim(logits) < 1 or jnp.shape(logits)[-1] != levels:
        raise ValueError(f"logits must be [..., levels={levels}], got shape {jnp.shape(logits)}")
    log_p = jax.nn.log_softmax(logits, axis=-1)  # [..., L]
    by_value = {"logits without the levels axis": log_p[..., 0]}
    shape, (k, _) = _aligned(event_ndims, _pixel_index(x, levels), **by_value)
    log_p = jnp.broadcast_to(log_p, (*shape, levels))  # [*shape, L]
    k = jnp.broadcast_to(k, shape)[..., None]  # [*shape, 1]
    return _checks.sum_event(jnp.take_along_axis(log_p, k, axis=-1)[..., 0], event_ndims)


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
      min_log_var: a soft floor :math:`\log\sigma^2 = m + \operatorname{softplus}(r - m)` on the
        learned log-variance of ``"gaussian"``; ``None`` leaves it free.

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
            _checks.int_at_least("levels", self.levels, 2)

    @property
    def num_params(self) -> int:
        """``P``: numbers the decoder emits per data value."""
        return {"gaussian": 2, "logistic": 2, "categorical": self.levels or 0}.get(self.kind, 1)

    def _gaussian_log_var(self, raw):
        if self.min_log_var is None:
            return raw
        return self.min_log_var + jax.nn.softplus(raw - self.min_log_var)

    def log_prob(self, x: jax.Array, output: jax.Array, *, event_ndims: int = 1) -> jax.Array:
        """``log p(x | z)`` summed over the event: ``x [*b, *event]`` and a decoder ``output
        [..., *event, P]`` that broadcasts against it (sample axes in front) to the batch shape."""
        p = self.num_params
        if jnp.ndim(output) < 1 or jnp.shape(output)[-1] != p:
            raise ValueError(
                f"decoder output must have shape [..., {p}] ({p} numbers per value for a "
                f"{self.kind} likelihood), got {jnp.shape(output)}"
            )
        opts = {"event_ndims": event_ndims}
        if self.kind == "bernoulli":
            return bernoulli_log_likelihood(x, output[..., 0], **opts)
        if self.kind == "gaussian":
            log_var = self._gaussian_log_var(output[..., 1])
            return gaussian_log_likelihood(x, output[..., 0], log_var, **opts)
        if self.kind == "gaussian_fixed":
            return gaussian_log_likelihood(x, output[..., 0], self.log_var, **opts)
        if self.kind == "logistic":
            return discretized_logistic_log_likelihood(
                x, output[..., 0], output[..., 1], self.levels, **opts
            )
        return categorical_log_likelihood(x, output, self.levels, **opts)

    def mean(self, output: jax.Array) -> jax.Array:
        r""":math:`E[x \mid z]` from ``output [*b, *event, P]``: ``[*b, *event]`` (the logistic's
        location, clipped to [0, 1], stands in for its mean)."""
        if self.kind == "bernoulli":
            return jax.nn.sigmoid(output[..., 0])
        if self.kind == "categorical":
            values = jnp.arange(self.levels, dtype=output.dtype) / (self.levels - 1)  # [L]
            values = jnp.reshape(values, (1,) * (output.ndim - 1) + values.shape)  # [1.., L]
            return jnp.sum(jax.nn.softmax(output, axis=-1) * values, axis=-1)
        if self.kind == "logistic":
            return jnp.clip(output[..., 0], 0.0, 1.0)
        return output[..., 0]
