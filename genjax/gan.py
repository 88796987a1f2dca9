r"""Generative adversarial networks: the losses, the optimal discriminator, Wasserstein critics,
gradient penalty and weight clipping, the alternating update, DCGAN and MLP players, the sampler
and mode-coverage evaluation.

A generator :math:`G` maps noise :math:`z \sim N(0, I)` to samples with law :math:`q`; a
discriminator :math:`D = \sigma(\ell)` with logit :math:`\ell(x)` separates them from data with
law :math:`p`. The minimax game is

.. math:: \min_G \max_D\ V(D, G) = E_{x\sim p}[\log D(x)] + E_{z}[\log(1 - D(G(z)))],

whose inner maximum is :math:`-\log 4 + 2\,\mathrm{JS}(p, q)` (derivations/08-gans.md). A
Wasserstein critic :math:`f` (an unbounded score) instead estimates
:math:`W_1(p, q) = \sup_{\|f\|_L \le 1} E_p f - E_q f` (Kantorovich–Rubinstein), with the
Lipschitz constraint enforced by weight clipping, a gradient penalty, or spectral normalisation
(derivations/09-wgan.md).

**Conventions.** Losses take logits (or critic scores) ``[batch]`` and return per-example values
``[batch]``, to be averaged by the caller; all logs of sigmoids are ``softplus`` forms. Players
share one call signature so one training step serves them all:
``generator.apply(vars, z, labels, train=...)`` with ``z [batch, generator.latent_dim]`` and
``discriminator.apply(vars, x, labels, update_stats=...)`` returning logits ``[batch]``
(``labels`` is ``None`` for unconditional players). Image players work on images in
:math:`[-1, 1]` (``tanh`` output). A :class:`Game` names the players and the losses;
:func:`critic_step`, :func:`generator_step` and :func:`alternating_update` are the pure,
jittable training steps built on them.

References:
  Goodfellow et al., *Generative Adversarial Networks*, 2014, https://arxiv.org/abs/1406.2661

  Radford et al., *Unsupervised Representation Learning with Deep Convolutional Generative
  Adversarial Networks*, 2015, https://arxiv.org/abs/1511.06434

  Arjovsky et al., *Wasserstein GAN*, 2017, https://arxiv.org/abs/1701.07875

  Gulrajani et al., *Improved Training of Wasserstein GANs*, 2017,
  https://arxiv.org/abs/1704.00028

  Miyato et al., *Spectral Normalization for Generative Adversarial Networks*, 2018,
  https://arxiv.org/abs/1802.05957

  Miyato & Koyama, *cGANs with Projection Discriminator*, 2018, https://arxiv.org/abs/1802.05637

Derivation: derivations/08-gans.md (the game), derivations/09-wgan.md (Wasserstein critics)
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import xlogy
from jaxtyping import Array, Float, Int, PRNGKeyArray

from genjax import _checks
from genjax._gan_players import (
    NORMALIZATIONS,
    ConditionalBatchNorm,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    dcgan_plan,
)
from genjax.nn.layers import SPECTRAL, kernel_matrix

__all__ = [
    "GP_EPS",
    "NOISE",
    "NORMALIZATIONS",
    "ConditionalBatchNorm",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "Game",
    "MLPDiscriminator",
    "MLPGenerator",
    "ModeCoverage",
    "alternating_update",
    "clip_weights",
    "critic_loss",
    "critic_step",
    "dcgan_plan",
    "discriminator_loss",
    "gan_value",
    "generator_loss",
    "generator_step",
    "gradient_penalty",
    "hinge_discriminator_loss",
    "least_squares_discriminator_loss",
    "least_squares_generator_loss",
    "mode_coverage",
    "optimal_discriminator",
    "orthogonal_penalty",
    "sample",
    "wasserstein_generator_loss",
    "with_orthogonal_regularization",
]

GP_EPS = 1e-12  #: added under the square root of the penalty's gradient norm (see gradient_penalty)
NOISE = "noise"  #: the RNG stream the steps and the sampler pass to every generator
_BATCH_STATS = "batch_stats"


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


def orthogonal_penalty(kernel: Float[Array, "*fan_in out"], beta: float = 1e-4) -> Float[Array, ""]:
    r"""BigGAN's orthogonal regularisation of one weight, the off-diagonal form.

    .. math:: R_\beta(W) = \beta\,\big\|W^\top W \odot (\mathbf 1 - I)\big\|_F^2
              = \beta \sum_{i \ne j} (w_i^\top w_j)^2

    with :math:`W` = ``kernel`` reshaped to ``[fan_in, out]`` (a column :math:`w_i` per output
    unit, a conv kernel ``[k, k, C, O]`` to ``[k^2 C, O]``) and :math:`\beta` = ``beta``. Unlike
    :math:`\|W^\top W - I\|_F^2` it leaves the columns' norms free and only pushes distinct
    filters towards orthogonality; its gradient is
    :math:`4\beta\, W (W^\top W \odot (\mathbf 1 - I))`.

    Args:
      kernel: ``[*fan_in, out]`` with at least two axes.
      beta: :math:`\beta \ge 0` (:math:`10^{-4}` in the paper).

    Returns:
      The scalar :math:`R_\beta(W)`.

    References:
      Brock et al., *Large Scale GAN Training for High Fidelity Natural Image Synthesis*, 2019,
      https://arxiv.org/abs/1809.11096 (section 3.1, equation 3).

    Derivation: derivations/22-style-based-gans.md
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(f"kernel must have shape [*fan_in, out] (>= 2 axes), got {kernel.shape}")
    if not beta >= 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    w = kernel_matrix(kernel)  # [out, fan_in], as spectral normalisation sees it
    gram = w @ w.T  # [out, out]
    off = gram * (1.0 - jnp.eye(gram.shape[0], dtype=gram.dtype))
    return beta * jnp.sum(off**2)


def with_orthogonal_regularization(
    tx: optax.GradientTransformation, beta: float = 1e-4, collection: str = "params"
) -> optax.GradientTransformation:
    r"""``tx`` applied to the gradient of the loss plus BigGAN's orthogonal regularisation.

    .. math:: g \leftarrow g + \nabla_\theta \sum_{W} R_\beta(W)

    summed over every leaf :math:`W` of ``collection`` with at least two axes (kernels and
    embeddings; biases and scales are left free), :math:`R_\beta` = :func:`orthogonal_penalty`.
    The optimiser state is ``tx``'s own, so it can replace ``tx`` in a running loop.

    Args:
      tx: the optimiser.
      beta: :math:`\beta \ge 0`.
      collection: the variable collection regularised when the tree is a dict of collections
        (a generator's ``{"params": ..., "batch_stats": ...}``); a tree without that key is
        regularised whole.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    References:
      Brock et al., 2019, https://arxiv.org/abs/1809.11096 (section 3.1).

    Derivation: derivations/22-style-based-gans.md
    """
    if not beta >= 0:
        raise ValueError(f"beta must be non-negative, got {beta}")

    def total(tree):
        leaves = [w for w in jax.tree.leaves(tree) if jnp.ndim(w) >= 2]
        return sum((orthogonal_penalty(w, beta) for w in leaves), jnp.zeros(()))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("with_orthogonal_regularization needs params in update")
        if isinstance(params, dict) and collection in params:
            extra = {
                **jax.tree.map(jnp.zeros_like, params),
                collection: jax.grad(total)(params[collection]),
            }
        else:
            extra = jax.grad(total)(params)
        return tx.update(jax.tree.map(jnp.add, grads, extra), state, params)

    return optax.GradientTransformation(tx.init, update)


# ----------------------------------------------------------------------------- training


class Game(NamedTuple):
    r"""One GAN game: the two players, their losses and the critic's Lipschitz device.

    Attributes:
      generator: ``apply(vars, z, labels, train=...)``, ``z [batch, generator.latent_dim]``.
      discriminator: ``apply(vars, x, labels, update_stats=...)`` to ``[batch]``.
      d_loss: ``(real_logits, fake_logits) -> [batch]``: :func:`discriminator_loss`,
        :func:`critic_loss` or :func:`hinge_discriminator_loss`.
      g_loss: ``fake_logits -> [batch]``: :func:`generator_loss` or
        :func:`wasserstein_generator_loss`.
      gp_weight: :math:`\lambda` of :func:`gradient_penalty` (0: none).
      clip: bound :math:`c` of :func:`clip_weights` after each critic update (``None``: none).
      num_classes: label count of a conditional game (fake labels uniform), else ``None``.

    Derivation: derivations/08-gans.md
    """

    generator: nn.Module
    discriminator: nn.Module
    d_loss: Callable[[Array, Array], Array]
    g_loss: Callable[[Array], Array]
    gp_weight: float = 0.0
    clip: float | None = None
    num_classes: int | None = None


def _fakes(game: Game, k_z: PRNGKeyArray, k_y: PRNGKeyArray, n: int):
    """``z [n, latent_dim]`` from ``k_z`` and uniform labels ``[n]`` from ``k_y`` (or ``None``)."""
    labels = None
    if game.num_classes is not None:
        labels = jax.random.randint(k_y, (n,), 0, game.num_classes)
    return jax.random.normal(k_z, (n, game.generator.latent_dim)), labels


def _generate(game: Game, g_vars, z, labels, key):
    """The generator's samples in training mode and its new batch statistics (if any); ``key``
    feeds the ``"noise"`` RNG stream of generators that draw inside (style-based ones)."""
    out, stats = game.generator.apply(
        g_vars, z, labels, train=True, mutable=[_BATCH_STATS], rngs={NOISE: key}
    )
    return out, dict(stats)


def critic_step(
    key: PRNGKeyArray,
    d_vars: Any,
    d_opt_state: optax.OptState,
    g_vars: Any,
    real: Float[Array, " m *event"],
    real_labels: Int[Array, " m"] | None = None,
    *,
    game: Game,
    d_tx: optax.GradientTransformation,
) -> tuple[Any, optax.OptState, dict[str, Array]]:
    r"""One discriminator update against ``m`` fresh samples :math:`\tilde x_i = G(z_i)`.

    .. math:: L(\phi) = \frac1m \sum_i L_D\big(\ell_\phi(x_i), \ell_\phi(\tilde x_i)\big)
              + \frac{\lambda}{m} \sum_i P_i, \qquad
              \phi \leftarrow \operatorname{clip}_c\big(\phi + \mathrm{d\_tx}(\nabla_\phi L)\big)

    with :math:`x` = ``real``, :math:`\phi` = ``d_vars["params"]``, :math:`L_D` = ``game.d_loss``,
    :math:`P` the :func:`gradient_penalty` when :math:`\lambda` = ``game.gp_weight`` > 0, and
    :func:`clip_weights` when :math:`c` = ``game.clip`` is set. Data and samples pass through the
    discriminator as one batch (one power-iteration step per update); the samples' gradient is
    stopped.

    Args:
      key: PRNG key (noise, fake labels and interpolates from ``split(key, 3)``).
      d_vars, d_opt_state: the discriminator's variables and ``d_tx``'s state.
      g_vars: the generator's variables (batch norm in training mode, statistics not kept).
      real: ``[m, *event]`` data; ``real_labels``: ``[m]`` ints of a conditional game.
      game, d_tx: the :class:`Game` and the discriminator's optimiser.

    Returns:
      ``(d_vars, d_opt_state, metrics)``; scalar metrics ``d_loss`` (without the penalty), ``gp``
      and ``score_gap`` :math:`\bar\ell(x) - \bar\ell(\tilde x)`.

    Derivation: derivations/08-gans.md
    """
    k_z, k_y, k_gp = jax.random.split(key, 3)
    m = real.shape[0]
    z, fake_labels = _fakes(game, k_z, k_y, m)
    fake = _generate(game, g_vars, z, fake_labels, jax.random.fold_in(k_z, 1))[0]
    fake = jax.lax.stop_gradient(fake)
    both = jnp.concatenate([real, fake])  # [2m, *event]
    both_labels = None if real_labels is None else jnp.concatenate([real_labels, fake_labels])

    def loss_fn(d_params):
        current = {**d_vars, "params": d_params}
        logits, new_state = game.discriminator.apply(
            current, both, both_labels, update_stats=True, mutable=[SPECTRAL]
        )
        real_logits, fake_logits = logits[:m], logits[m:]
        d_loss = jnp.mean(game.d_loss(real_logits, fake_logits))
        gap = jnp.mean(real_logits) - jnp.mean(fake_logits)
        penalty = jnp.zeros(())
        if game.gp_weight > 0:
            # the penalty's critic sees labels of the real half; it is f(., y) for fixed y
            critic = lambda x: game.discriminator.apply(current, x, real_labels)
            penalty = jnp.mean(gradient_penalty(k_gp, critic, real, fake))
        total = d_loss + game.gp_weight * penalty
        return total, (dict(new_state), {"d_loss": d_loss, "gp": penalty, "score_gap": gap})

    grads, (new_state, metrics) = jax.grad(loss_fn, has_aux=True)(d_vars["params"])
    updates, d_opt_state = d_tx.update(grads, d_opt_state, d_vars["params"])
    d_params = optax.apply_updates(d_vars["params"], updates)
    if game.clip is not None:
        d_params = clip_weights(d_params, game.clip)
    return {**d_vars, **new_state, "params": d_params}, d_opt_state, metrics


def generator_step(
    key: PRNGKeyArray,
    g_vars: Any,
    g_opt_state: optax.OptState,
    d_vars: Any,
    n: int,
    *,
    game: Game,
    g_tx: optax.GradientTransformation,
) -> tuple[Any, optax.OptState, dict[str, Array]]:
    r"""One generator update on ``n`` fresh samples against a fixed discriminator.

    .. math:: L(\theta) = \frac1n \sum_i L_G\big(\ell(G_\theta(z_i))\big), \qquad
              \theta \leftarrow \theta + \mathrm{g\_tx}(\nabla_\theta L)

    with :math:`\theta` = ``g_vars["params"]`` and :math:`L_G` = ``game.g_loss``. ``g_tx`` sees
    the whole variable tree: batch statistics get a zero gradient, then this step's running
    averages. The discriminator's power iteration does not advance.

    Args:
      key: PRNG key (noise and fake labels from ``split(key)``).
      g_vars, g_opt_state: the generator's variables and ``g_tx``'s state.
      d_vars: the discriminator's variables.
      n: number of samples.
      game, g_tx: the :class:`Game` and the generator's optimiser.

    Returns:
      ``(g_vars, g_opt_state, metrics)``; the scalar metric ``g_loss``.

    Derivation: derivations/08-gans.md
    """
    k_z, k_y = jax.random.split(key)
    z, labels = _fakes(game, k_z, k_y, n)
    k_noise = jax.random.fold_in(k_z, 1)

    def loss_fn(g_params):
        fake, new_stats = _generate(game, {**g_vars, "params": g_params}, z, labels, k_noise)
        logits = game.discriminator.apply(d_vars, fake, labels)
        return jnp.mean(game.g_loss(logits)), new_stats

    (g_loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_vars["params"])
    full_grads = {**jax.tree.map(jnp.zeros_like, g_vars), "params": grads}
    updates, g_opt_state = g_tx.update(full_grads, g_opt_state, g_vars)
    return {**optax.apply_updates(g_vars, updates), **new_stats}, g_opt_state, {"g_loss": g_loss}


def alternating_update(
    key: PRNGKeyArray,
    g_vars: Any,
    g_opt_state: optax.OptState,
    d_vars: Any,
    d_opt_state: optax.OptState,
    real: Float[Array, " batch *event"],
    real_labels: Int[Array, " batch"] | None = None,
    *,
    game: Game,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    n_critic: int = 1,
) -> tuple[Any, optax.OptState, Any, optax.OptState, dict[str, Array]]:
    r"""One step of the game: ``n_critic`` discriminator updates, then one generator update.

    .. math:: \phi \leftarrow \mathrm{critic\_step}(\phi; \theta, x_{(j)})\ \ (j = 1, \dots,
              n_{\mathrm{critic}}), \qquad \theta \leftarrow \mathrm{generator\_step}(\theta; \phi)

    with :math:`x_{(j)}` the :math:`j`-th of ``n_critic`` equal slices of ``real`` (a batch of
    ``n_critic`` :math:`\times m`), the critic steps one ``lax.scan`` and the generator step on
    :math:`m` samples (:func:`critic_step`, :func:`generator_step`). Pure and jittable with
    ``game``, the optimisers and ``n_critic`` static.

    Args:
      key: PRNG key: ``split(key)`` gives the critic steps' (split ``n_critic`` ways) and the
        generator step's.
      g_vars, g_opt_state: the generator's variables and ``g_tx``'s state.
      d_vars, d_opt_state: the discriminator's variables and ``d_tx``'s state.
      real: ``[n_critic * m, *event]`` data; ``real_labels``: ``[n_critic * m]`` ints of a
        conditional game.
      game, g_tx, d_tx: the :class:`Game` and the players' optimisers.
      n_critic: discriminator updates per generator update.

    Returns:
      ``(g_vars, g_opt_state, d_vars, d_opt_state, metrics)``: the critic's metrics averaged over
      its updates, and ``g_loss``.

    References:
      Gulrajani et al., *Improved Training of Wasserstein GANs*, 2017,
      https://arxiv.org/abs/1704.00028 (Algorithm 1).

    Derivation: derivations/08-gans.md
    """
    _checks.positive_int("n_critic", n_critic)
    total = real.shape[0]
    if total % n_critic:
        raise ValueError(
            f"real's batch ({total}) must be a multiple of n_critic ({n_critic}): each critic "
            "step takes its own slice"
        )
    m = total // n_critic
    xs = real.reshape(n_critic, m, *real.shape[1:])  # [n_critic, m, *event]
    ys = None if real_labels is None else real_labels.reshape(n_critic, m)  # [n_critic, m]
    k_critic, k_gen = jax.random.split(key)

    def body(carry, inputs):
        x, y, k = inputs
        d_vars, d_opt_state, metrics = critic_step(k, *carry, g_vars, x, y, game=game, d_tx=d_tx)
        return (d_vars, d_opt_state), metrics

    keys = jax.random.split(k_critic, n_critic)
    (d_vars, d_opt_state), d_metrics = jax.lax.scan(body, (d_vars, d_opt_state), (xs, ys, keys))
    g_vars, g_opt_state, g_metrics = generator_step(
        k_gen, g_vars, g_opt_state, d_vars, m, game=game, g_tx=g_tx
    )
    metrics = {k: jnp.mean(v) for k, v in d_metrics.items()}
    return g_vars, g_opt_state, d_vars, d_opt_state, {**metrics, **g_metrics}


def sample(
    key: PRNGKeyArray,
    generator: nn.Module,
    params: Any,
    n: int,
    *,
    labels: Int[Array, " n"] | None = None,
    temperature: float = 1.0,
    truncation: float | None = None,
) -> Float[Array, " n *event"]:
    r"""``n`` samples of a generator, optionally with BigGAN's truncation trick on :math:`z`.

    .. math:: x_i = G(\tau z_i, y_i), \qquad z_i \sim N(0, I_{d_z})
              \ \text{conditioned on}\ \|z_i\|_\infty \le \psi

    with :math:`G` = ``generator`` at ``params`` (batch norm on its running averages),
    :math:`\tau` = ``temperature`` (the latent prior's standard deviation; 1 is the prior of
    training), :math:`d_z` = ``generator.latent_dim``, :math:`y` = ``labels`` and :math:`\psi` =
    ``truncation`` (each coordinate drawn from the normal truncated to :math:`[-\psi, \psi]`,
    i.e. resampled until inside; ``None``: no truncation). A smaller :math:`\psi` keeps
    :math:`z` near the mode of the prior: higher fidelity, less variety (Brock et al.).
    ``key`` also feeds the generator's ``"noise"`` RNG stream (:data:`NOISE`).

    Args:
      key: PRNG key for :math:`z` (and the generator's own noise).
      generator: the Flax generator (:class:`MLPGenerator`, :class:`DCGANGenerator`,
        :class:`genjax.stylegan.StyleGANGenerator`, ...).
      params: its variables (``params`` and, with batch norm, ``batch_stats``).
      n: number of samples.
      labels: ``[n]`` int classes of a conditional generator, else ``None``.
      temperature: :math:`\tau \ge 0`.
      truncation: :math:`\psi > 0` or ``None``.

    Returns:
      ``[n, *event]`` samples in the generator's range (:math:`[-1, 1]` for image players).

    References:
      Brock et al., *Large Scale GAN Training for High Fidelity Natural Image Synthesis*, 2019,
      https://arxiv.org/abs/1809.11096 (section 3.1, the truncation trick).

    Derivation: derivations/08-gans.md, derivations/22-style-based-gans.md
    """
    _checks.positive_int("n", n)
    if labels is not None:
        labels = jnp.asarray(labels, jnp.int32)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if _checks.is_concrete(temperature) and not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if truncation is not None and not truncation > 0:
        raise ValueError(f"truncation must be positive or None, got {truncation}")
    shape = (n, generator.latent_dim)
    if truncation is None:
        z = jax.random.normal(key, shape)  # [n, latent_dim]
    else:
        z = jax.random.truncated_normal(key, -truncation, truncation, shape)  # [n, latent_dim]
    noise_key = jax.random.fold_in(key, 1)
    return generator.apply(params, temperature * z, labels, train=False, rngs={NOISE: noise_key})


# ----------------------------------------------------------------------------- evaluation


class ModeCoverage(NamedTuple):
    """What :func:`mode_coverage` measures.

    Attributes:
      modes: number of modes covered.
      high_quality: fraction of samples within ``radius`` standard deviations of some mode.
      counts: ``[K]`` high-quality samples per mode.

    Derivation: derivations/08-gans.md
    """

    modes: int
    high_quality: float
    counts: np.ndarray


def mode_coverage(
    samples: Float[np.ndarray, "n dim"],
    means: Float[np.ndarray, "K dim"],
    std: float,
    *,
    radius: float = 3.0,
    min_fraction: float = 0.01,
) -> ModeCoverage:
    r"""Modes covered and high-quality samples of a generator on a Gaussian mixture (host-side).

    A sample is *high quality* when it lies within ``radius`` standard deviations of its nearest
    mode, :math:`\min_k \|x - \mu_k\| \le r s`; a mode is *covered* when at least a fraction
    ``min_fraction`` of all samples are high-quality samples nearest to it.

    Args:
      samples: ``[n, dim]`` generated points.
      means: ``[K, dim]`` mode centres :math:`\mu_k`.
      std: the modes' standard deviation :math:`s`.
      radius: :math:`r` (3 in Metz et al. and Srivastava et al.).
      min_fraction: share of samples a covered mode needs (1 %).

    Returns:
      :class:`ModeCoverage` (Python and NumPy numbers).

    References:
      Metz et al., *Unrolled Generative Adversarial Networks*, 2016,
      https://arxiv.org/abs/1611.02163; Srivastava et al., *VEEGAN: Reducing Mode Collapse in
      GANs using Implicit Variational Learning*, 2017, https://arxiv.org/abs/1705.07761

    Derivation: derivations/08-gans.md
    """
    samples, means = np.asarray(samples, np.float64), np.asarray(means, np.float64)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must have shape [n, dim] with n >= 1, got {samples.shape}")
    if means.ndim != 2 or means.shape[1] != samples.shape[1]:
        raise ValueError(f"means must have shape [K, {samples.shape[1]}], got {means.shape}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    dist = np.linalg.norm(samples[:, None, :] - means[None], axis=-1)  # [n, K]
    nearest = np.argmin(dist, axis=1)  # [n]
    good = dist[np.arange(len(samples)), nearest] <= radius * std  # [n]
    counts = np.bincount(nearest[good], minlength=means.shape[0])  # [K]
    modes = int(np.sum(counts >= min_fraction * len(samples)))
    return ModeCoverage(modes, float(np.mean(good)), counts)
