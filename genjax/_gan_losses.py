r"""The GAN losses, re-exported by :mod:`genjax.gan`: the minimax game's discriminator and
generator losses and its value, the optimal discriminator, the hinge and least-squares losses,
the Wasserstein critic loss, the gradient penalty and weight clipping.

Losses take logits (or critic scores) ``[batch]`` and return per-example values ``[batch]``,
to be averaged by the caller; all logs of sigmoids are ``softplus`` forms.

Derivation: derivations/08-gans.md (the game), derivations/09-wgan.md (Wasserstein critics)
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy
from jaxtyping import Array, Float, PRNGKeyArray

from genjax import _checks

GP_EPS = 1e-12  #: added under the square root of the penalty's gradient norm (see gradient_penalty)


def _check_logits(name: str, logits) -> Array:
    logits = jnp.asarray(logits)
    if logits.ndim != 1:
        raise ValueError(f"{name} must have shape [batch], got {logits.shape}")
    return logits


def _check_real_fake(real, fake, what: str) -> tuple[Array, Array]:
    real, fake = _check_logits(f"real_{what}", real), _check_logits(f"fake_{what}", fake)
    _checks.same_shape(**{f"real_{what}": real, f"fake_{what}": fake})
    return real, fake


# ----------------------------------------------------------------------------- the GAN game


def discriminator_loss(
    real_logits: Float[Array, " batch"], fake_logits: Float[Array, " batch"]
) -> Float[Array, " batch"]:
    r"""The discriminator's loss: binary cross-entropy with data labelled 1 and samples 0.

    .. math:: L_D = -\log D(x) - \log(1 - D(G(z)))
              = \operatorname{softplus}(-\ell(x)) + \operatorname{softplus}(\ell(G(z)))

    with :math:`\ell(x)` = ``real_logits`` and :math:`\ell(G(z))` = ``fake_logits``. Its mean is
    :math:`-V(D, G)`; at :math:`\ell = 0` it is :math:`2 \log 2`.

    Args:
      real_logits: ``[batch]`` logits on data.
      fake_logits: ``[batch]`` logits on generated samples.

    Returns:
      ``[batch]`` losses, pairing example :math:`i` of each batch.

    Derivation: derivations/08-gans.md
    """
    real_logits, fake_logits = _check_real_fake(real_logits, fake_logits, "logits")
    return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)


def generator_loss(
    fake_logits: Float[Array, " batch"], saturating: bool = False
) -> Float[Array, " batch"]:
    r"""The generator's loss, minimax (saturating) or non-saturating.

    .. math:: L_G^{\text{sat}} = \log(1 - D(G(z))) = -\operatorname{softplus}(\ell), \qquad
              L_G^{\text{ns}} = -\log D(G(z)) = \operatorname{softplus}(-\ell)

    with :math:`\ell` = ``fake_logits``. Their slopes are :math:`-\sigma(\ell)` and
    :math:`-\sigma(-\ell)`: when the discriminator wins, :math:`\sigma(\ell) \to 0`, the
    saturating slope vanishes while the non-saturating one tends to :math:`-1`.

    Args:
      fake_logits: ``[batch]`` discriminator logits on generated samples.
      saturating: ``True`` for the minimax loss of the game, ``False`` (default) for the
        non-saturating heuristic of Goodfellow et al.

    Returns:
      ``[batch]`` losses.

    Derivation: derivations/08-gans.md
    """
    fake_logits = _check_logits("fake_logits", fake_logits)
    if saturating:
        return -jax.nn.softplus(fake_logits)
    return jax.nn.softplus(-fake_logits)


def optimal_discriminator(
    p: Float[Array, "*batch k"], q: Float[Array, "*batch k"]
) -> Float[Array, "*batch k"]:
    r"""The discriminator that maximises :math:`V(D, G)` for fixed data and model laws.

    .. math:: D^*(x) = \frac{p(x)}{p(x) + q(x)}

    with :math:`p` = ``p`` (data) and :math:`q` = ``q`` (generator), given as probabilities (or
    densities) at the same points; ``1/2`` where :math:`p + q = 0` (the value does not affect
    :math:`V` there).

    Args:
      p: ``[..., k]`` non-negative values of the data law.
      q: ``[..., k]`` non-negative values of the model law, same shape.

    Returns:
      ``[..., k]`` values in :math:`[0, 1]`.

    Derivation: derivations/08-gans.md
    """
    p, q = jnp.asarray(p), jnp.asarray(q)
    _checks.same_shape(p=p, q=q)
    total = p + q
    return jnp.where(total > 0, p / jnp.where(total > 0, total, 1.0), 0.5)


def gan_value(
    p: Float[Array, "*batch k"], q: Float[Array, "*batch k"], d: Float[Array, "*batch k"]
) -> Float[Array, "*batch"]:
    r"""The value :math:`V(D, G)` of the GAN game for discrete laws.

    .. math:: V = \sum_i p_i \log D_i + \sum_i q_i \log(1 - D_i)

    with :math:`p` = ``p`` (data), :math:`q` = ``q`` (generator) and :math:`D` = ``d``, using
    :math:`0 \log 0 = 0`. At :math:`D = D^*` (:func:`optimal_discriminator`) it equals
    :math:`-\log 4 + 2\,\mathrm{JS}(p, q)`.

    Args:
      p: ``[..., k]`` probability vectors of the data.
      q: ``[..., k]`` probability vectors of the generator.
      d: ``[..., k]`` discriminator outputs in :math:`[0, 1]`.

    Returns:
      ``[...]`` values :math:`\le 0`.

    Derivation: derivations/08-gans.md
    """
    p, q, d = jnp.asarray(p), jnp.asarray(q), jnp.asarray(d)
    _checks.same_shape(p=p, q=q, d=d)
    return jnp.sum(xlogy(p, d) + xlogy(q, 1.0 - d), axis=-1)


def hinge_discriminator_loss(
    real_scores: Float[Array, " batch"], fake_scores: Float[Array, " batch"]
) -> Float[Array, " batch"]:
    r"""The hinge loss of the discriminator (geometric GAN, used by SN-GAN).

    .. math:: L_D = \max(0, 1 - f(x)) + \max(0, 1 + f(G(z)))

    with :math:`f(x)` = ``real_scores``, :math:`f(G(z))` = ``fake_scores``; its inner optimum is
    :math:`2 - 2\,\mathrm{TV}(p, q)`. Pair it with :func:`wasserstein_generator_loss`.

    Args:
      real_scores: ``[batch]`` scores on data.
      fake_scores: ``[batch]`` scores on samples.

    Returns:
      ``[batch]`` losses.

    References:
      Lim & Ye, *Geometric GAN*, 2017, https://arxiv.org/abs/1705.02894

    Derivation: derivations/08-gans.md
    """
    real_scores, fake_scores = _check_real_fake(real_scores, fake_scores, "scores")
    return jax.nn.relu(1.0 - real_scores) + jax.nn.relu(1.0 + fake_scores)


# ----------------------------------------------------------------------------- least squares


def least_squares_discriminator_loss(
    real_scores: Float[Array, " batch"], fake_scores: Float[Array, " batch"]
) -> Float[Array, " batch"]:
    r"""The least-squares GAN's discriminator loss, targets 1 for data and 0 for samples.

    .. math:: L_D = \tfrac12 (D(x) - 1)^2 + \tfrac12 D(G(z))^2

    with :math:`D(x)` = ``real_scores`` and :math:`D(G(z))` = ``fake_scores`` (unbounded
    scores, no sigmoid). For laws :math:`p` (data) and :math:`q` (samples) its pointwise
    minimiser is :math:`D^*(x) = p(x) / (p(x) + q(x))`, the log-loss optimum
    (:func:`optimal_discriminator`). A patch discriminator's scores ``[b, h, w]`` enter
    flattened to ``[b h w]``.

    Args:
      real_scores: ``[batch]`` scores on data.
      fake_scores: ``[batch]`` scores on samples.

    Returns:
      ``[batch]`` losses.

    References:
      Mao et al., *Least Squares Generative Adversarial Networks*, 2017,
      https://arxiv.org/abs/1611.04076

    Derivation: derivations/21-cyclegan.md
    """
    real_scores, fake_scores = _check_real_fake(real_scores, fake_scores, "scores")
    return 0.5 * (real_scores - 1.0) ** 2 + 0.5 * fake_scores**2


def least_squares_generator_loss(fake_scores: Float[Array, " batch"]) -> Float[Array, " batch"]:
    r"""The least-squares GAN's generator loss: samples pushed towards the data's target 1.

    .. math:: L_G = \tfrac12 (D(G(z)) - 1)^2

    with :math:`D(G(z))` = ``fake_scores`` (CycleGAN's choice, Zhu et al. section 4).

    Args:
      fake_scores: ``[batch]`` scores on samples.

    Returns:
      ``[batch]`` losses.

    References:
      Mao et al., 2017, https://arxiv.org/abs/1611.04076

    Derivation: derivations/21-cyclegan.md
    """
    return 0.5 * (_check_logits("fake_scores", fake_scores) - 1.0) ** 2


# ----------------------------------------------------------------------------- Wasserstein


def critic_loss(
    real_scores: Float[Array, " batch"], fake_scores: Float[Array, " batch"]
) -> Float[Array, " batch"]:
    r"""The WGAN critic's loss, the negated Kantorovich–Rubinstein objective.

    .. math:: L_f = f(G(z)) - f(x), \qquad -E[L_f] = E_p f - E_q f \le W_1(p, q)
              \ \text{ for } \|f\|_L \le 1

    with :math:`f(x)` = ``real_scores`` and :math:`f(G(z))` = ``fake_scores`` (unbounded critic
    outputs, no sigmoid).

    Args:
      real_scores: ``[batch]`` critic scores on data.
      fake_scores: ``[batch]`` critic scores on samples.

    Returns:
      ``[batch]`` losses.

    Derivation: derivations/09-wgan.md
    """
    real_scores, fake_scores = _check_real_fake(real_scores, fake_scores, "scores")
    return fake_scores - real_scores


def wasserstein_generator_loss(fake_scores: Float[Array, " batch"]) -> Float[Array, " batch"]:
    r"""The generator's loss against a critic (WGAN, WGAN-GP, and the hinge GAN of SN-GAN).

    .. math:: L_G = -f(G(z))

    with :math:`f(G(z))` = ``fake_scores``: only this term of :math:`E_p f - E_q f` depends on
    :math:`G`. The hinge GAN uses the same generator loss (Lim & Ye 2017; Miyato et al. 2018).

    Args:
      fake_scores: ``[batch]`` critic scores on samples.

    Returns:
      ``[batch]`` losses.

    Derivation: derivations/09-wgan.md
    """
    return -_check_logits("fake_scores", fake_scores)


def gradient_penalty(
    key: PRNGKeyArray,
    critic_fn: Callable[[Array], Array],
    real: Float[Array, " batch *event"],
    fake: Float[Array, " batch *event"],
    *,
    noise: Float[Array, " batch"] | None = None,
) -> Float[Array, " batch"]:
    r"""The WGAN-GP penalty on random interpolates between data and samples.

    .. math:: \hat x = \epsilon x + (1 - \epsilon)\,\tilde x, \quad \epsilon \sim U[0, 1], \qquad
              P = \big(\|\nabla_{\hat x} f(\hat x)\|_2 - 1\big)^2

    with :math:`x` = ``real``, :math:`\tilde x` = ``fake``, :math:`f` = ``critic_fn`` and one
    :math:`\epsilon` per example drawn from ``key`` (or given as ``noise``). The caller multiplies
    the mean by :math:`\lambda` (10 in Gulrajani et al.) and adds it to the critic loss;
    differentiating that loss differentiates :math:`\nabla_{\hat x} f` again (double backprop).

    Args:
      key: PRNG key for :math:`\epsilon`.
      critic_fn: ``f``: ``[batch, *event] -> [batch]``, each output depending on its own input
        only (no batch norm), so that ``grad(sum f)`` gives every per-example gradient at once.
      real: ``[batch, *event]`` data.
      fake: ``[batch, *event]`` samples (stop their gradient to leave the generator out).
      noise: optional ``[batch]`` values of :math:`\epsilon` in :math:`[0, 1]`.

    Returns:
      ``[batch]`` penalties.

    Note:
      The norm is :math:`\sqrt{\|g\|^2 + 10^{-12}}` (:data:`GP_EPS`): :math:`\sqrt{\cdot}` has an
      infinite derivative at 0, which double backprop would turn into NaN for a critic that is
      flat at :math:`\hat x`.

    References:
      Gulrajani et al., *Improved Training of Wasserstein GANs*, 2017,
      https://arxiv.org/abs/1704.00028 (Algorithm 1).

    Derivation: derivations/09-wgan.md
    """
    real, fake = jnp.asarray(real), jnp.asarray(fake)
    _checks.same_shape(real=real, fake=fake)
    if real.ndim < 2:
        raise ValueError(f"real and fake must have shape [batch, *event], got {real.shape}")
    batch = real.shape[0]
    if noise is None:
        noise = jax.random.uniform(key, (batch,), real.dtype)
    noise = jnp.asarray(noise, real.dtype)
    if noise.shape != (batch,):
        raise ValueError(f"noise must have shape ({batch},), got {noise.shape}")
    eps = noise.reshape((batch,) + (1,) * (real.ndim - 1))  # [batch, 1, ...]
    interpolates = eps * real + (1.0 - eps) * fake  # [batch, *event]
    grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(interpolates)  # [batch, *event]
    sq_norm = jnp.sum(grads.reshape(batch, -1) ** 2, axis=-1)  # [batch]
    return (jnp.sqrt(sq_norm + GP_EPS) - 1.0) ** 2


def clip_weights(params: Any, c: float) -> Any:
    r"""WGAN weight clipping: project every parameter onto :math:`[-c, c]`.

    .. math:: w \leftarrow \operatorname{clip}(w, -c, c)

    applied leaf-wise to the pytree ``params`` after each critic update. A bounded weight set
    makes the critic :math:`K`-Lipschitz for some :math:`K(c)`, so the critic estimates
    :math:`K\,W_1` (Arjovsky et al., 2017; :math:`c = 0.01` there).

    Args:
      params: a pytree of arrays (e.g. a critic's ``params``).
      c: the clipping bound, positive.

    Returns:
      The clipped pytree, same structure.

    Derivation: derivations/09-wgan.md
    """
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    return jax.tree.map(lambda w: jnp.clip(w, -c, c), params)
