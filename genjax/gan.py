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
from jaxtyping import Array, Float, Int, PRNGKeyArray

from genjax import _checks
from genjax._gan_losses import (
    GP_EPS,
    clip_weights,
    critic_loss,
    discriminator_loss,
    gan_value,
    generator_loss,
    gradient_penalty,
    hinge_discriminator_loss,
    least_squares_discriminator_loss,
    least_squares_generator_loss,
    optimal_discriminator,
    wasserstein_generator_loss,
)
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

NOISE = "noise"  #: the RNG stream the steps and the sampler pass to every generator
_BATCH_STATS = "batch_stats"


# ----------------------------------------------------------------------------- regularisation


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
