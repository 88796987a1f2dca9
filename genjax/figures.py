r"""Concept figures of the derivation notes, computed by genjax's own functions.

Each figure is a function ``name(key, path) -> path`` writing one 100-dpi PNG (matplotlib's
Agg backend, which :mod:`genjax.viz` selects; its helpers where they fit); :data:`FIGURES` maps
the names to the functions and :func:`make_figures` writes any of them (``genjax figures``).
The numbers come from small pure functions tested in ``tests/test_figures.py``
(:func:`noising_series`, :func:`log_snr`, :func:`fit_gaussian`, :func:`point_mass_distances`,
:func:`attention_maps`, :func:`positional_tables`, :func:`activation_variances`,
:func:`denoising_rows`, :func:`gan_snapshots`), which call the topic's module: the schedules of
:mod:`genjax.diffusion`, the divergences of :mod:`genjax.divergences`,
:mod:`genjax.nn.positional`, :mod:`genjax.nn.init`, and the recipes of :mod:`genjax.recipes`,
trained at their quick budgets, for the trained models. A figure is a function of its key, so
the files are the same on every run.

Derivation: derivations/01-autoencoders.md, derivations/02-initialisation.md,
derivations/03-attention.md, derivations/04-positional-encoding.md,
derivations/07-divergences.md, derivations/08-gans.md, derivations/09-wgan.md,
derivations/11-ddpm.md, derivations/16-word2vec.md
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from genjax import _checks, diffusion, divergences, recipes, viz
from genjax import autoencoders as ae
from genjax import data as data_lib
from genjax.nn import attention as attn
from genjax.nn import init as nn_init
from genjax.nn import positional
from genjax.probes import pca_2d
from genjax.train import Task, TrainConfig, init_state, make_train_chunk

__all__ = [
    "FIGURES",
    "activation_variance",
    "activation_variances",
    "attention_maps",
    "attention_weights",
    "denoising_autoencoder",
    "denoising_rows",
    "fit_gaussian",
    "forward_noising",
    "gan_snapshots",
    "gan_training",
    "kl_fits",
    "log_snr",
    "make_figures",
    "noising_series",
    "point_mass_distances",
    "point_masses",
    "positional_encoding",
    "positional_tables",
    "schedules",
    "word2vec_embeddings",
]

DIFFUSION_STEPS = 1000  # T of Ho et al.'s schedules
NOISING_TIMES = (0, 50, 100, 200, 300, 500, 700, 999)
KL_GRID = np.linspace(-8.0, 8.0, 1601)  # where the 1-D densities are discretised
POINT_MASS_THETAS = np.linspace(-2.0, 2.0, 201)  # holds 0
ATTENTION_TEXT = "The value of the object is None."  # 32 characters: the model's context
GAN_SNAPSHOTS = (0, 100, 300, 1000, 2000)  # generator steps at which the fixed z are drawn
GAN_CHUNK = 100  # steps per compiled chunk between snapshots
WORD2VEC_WORDS = (
    "int", "float", "string", "list", "dict", "tuple", "set",
    "true", "false", "none", "class", "function", "method", "module",
    "read", "write", "file", "if", "else", "while", "for", "return",
)  # fmt: skip


# ----------------------------------------------------------------------------- data


def noising_series(
    key, schedule: diffusion.Schedule, x0: Float[Array, "*event"], ts: Sequence[int]
) -> Float[Array, " n *event"]:
    r"""One example noised at several steps with one draw of noise (q_sample).

    .. math:: x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon,
              \qquad \epsilon \sim N(0, I) \text{ drawn once from } \texttt{key}

    with :math:`\bar\alpha` = ``schedule.alpha_bars``, so the row shows the signal fading into
    one fixed noise image (the same ``key`` gives the same :math:`\epsilon` for any schedule).

    Args:
      key: PRNG key of :math:`\epsilon`.
      schedule: the :class:`genjax.diffusion.Schedule`.
      x0: one example ``[*event]`` (images in :math:`[-1, 1]`).
      ts: the 0-based steps, each in ``0..T-1``.

    Returns:
      ``[len(ts), *event]``, row ``i`` at step ``ts[i]``.

    Derivation: derivations/11-ddpm.md
    """
    x0 = jnp.asarray(x0)
    t = jnp.asarray(ts, jnp.int32)  # [n]
    noise = jax.random.normal(key, x0.shape, x0.dtype)  # [*event]
    tile = lambda a: jnp.broadcast_to(a[None], (t.shape[0], *x0.shape))  # [n, *event]
    return diffusion.q_sample(key, schedule, tile(x0), t, noise=tile(noise))


def log_snr(schedule: diffusion.Schedule) -> Float[Array, " T"]:
    r"""The log signal-to-noise ratio of each step.

    .. math:: \lambda_t = \log \frac{\bar\alpha_t}{1 - \bar\alpha_t}
              = \log\bar\alpha_t - \log(1 - \bar\alpha_t)

    with :math:`\bar\alpha` = ``schedule.alpha_bars``; the log of ``schedule.snr``, which is
    computed in float64 before rounding (so steps with :math:`\bar\alpha_t` near 1, where
    :math:`1 - \bar\alpha_t` in float32 would lose digits, keep their precision).

    Args:
      schedule: the :class:`genjax.diffusion.Schedule`.

    Returns:
      ``[T]`` float32, strictly decreasing.

    References:
      Kingma et al., *Variational Diffusion Models*, 2021, https://arxiv.org/abs/2107.00630

    Derivation: derivations/11-ddpm.md
    """
    return jnp.log(schedule.snr)


def fit_gaussian(
    logits_p: Float[Array, " k"],
    x: Float[Array, " k"],
    direction: str,
    *,
    mean: float = 1.0,
    log_std: float = 0.0,
    steps: int = 1000,
    lr: float = 0.05,
) -> tuple[float, float]:
    r"""The Gaussian :math:`q = N(\mu, \sigma^2)` closest to :math:`p` in forward or reverse KL,
    by gradient descent on the grid ``x``.

    .. math::
       \text{forward: } \min_{\mu,\sigma} \mathrm{KL}(p \,\|\, q_{\mu,\sigma}), \qquad
       \text{reverse: } \min_{\mu,\sigma} \mathrm{KL}(q_{\mu,\sigma} \,\|\, p)

    with both densities discretised on ``x`` (:math:`q_i \propto e^{-(x_i-\mu)^2/2\sigma^2}`) and
    the KL of :func:`genjax.divergences.kl_from_logits`. The forward optimum matches moments
    (:math:`\mu = \mathbb E_p x`, :math:`\sigma^2 = \operatorname{Var}_p x`: mode covering); the
    reverse one sits on one mode of a well separated mixture (mode seeking), the one the start
    ``mean`` is nearest.

    Args:
      logits_p: ``[k]`` unnormalised log-probabilities of :math:`p` at ``x``.
      x: ``[k]`` grid.
      direction: ``"forward"`` or ``"reverse"``.
      mean, log_std: the start :math:`\mu_0`, :math:`\log\sigma_0`.
      steps: Adam steps (a ``lax.scan``).
      lr: Adam's initial learning rate, decayed to 0 by a cosine.

    Returns:
      ``(mu, sigma)`` as Python floats.

    Derivation: derivations/07-divergences.md
    """
    _checks.one_of("direction", direction, ("forward", "reverse"))
    _checks.positive_int("steps", steps)
    logits_p, x = jnp.asarray(logits_p, jnp.float32), jnp.asarray(x, jnp.float32)
    _checks.same_shape(logits_p=logits_p, x=x)
    theta = jnp.array([mean, log_std], jnp.float32)
    theta = _fit_gaussian(logits_p, x, theta, direction=direction, steps=steps, lr=float(lr))
    return float(theta[0]), float(jnp.exp(theta[1]))


@functools.partial(jax.jit, static_argnames=("direction", "steps", "lr"))
def _fit_gaussian(logits_p, x, theta, *, direction: str, steps: int, lr: float):
    """``steps`` Adam steps on ``theta = (mu, log sigma)`` (see :func:`fit_gaussian`)."""

    def loss(theta):
        logits_q = -0.5 * ((x - theta[0]) * jnp.exp(-theta[1])) ** 2  # [k]
        if direction == "forward":
            return divergences.kl_from_logits(logits_p, logits_q)
        return divergences.kl_from_logits(logits_q, logits_p)

    tx = optax.adam(optax.cosine_decay_schedule(lr, steps))  # decays to 0: settles exactly

    def step(carry, _):
        theta, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss)(theta), opt_state)
        return (optax.apply_updates(theta, updates), opt_state), None

    return jax.lax.scan(step, (theta, tx.init(theta)), length=steps)[0][0]


def point_mass_distances(thetas: Float[Array, " n"]) -> tuple[Float[Array, " n"], ...]:
    r"""JS and :math:`W_1` between the point masses :math:`\delta_0` and :math:`\delta_\theta`.

    .. math:: \mathrm{JS}(\delta_0, \delta_\theta) = \log 2 \;(\theta \ne 0), \qquad
              W_1(\delta_0, \delta_\theta) = |\theta|

    JS by :func:`genjax.divergences.js` on the one-hot vectors of the two masses over the points
    :math:`\{0\} \cup \{\theta_i\}`; :math:`W_1` by :func:`genjax.divergences.wasserstein_1d`
    between the one-point samples :math:`\{0\}` and :math:`\{\theta\}`, with its gradient in
    :math:`\theta` (JS, flat on :math:`\theta \ne 0`, has none to give).

    Args:
      thetas: ``[n]`` positions :math:`\theta`.

    Returns:
      ``(js, w1, dw1_dtheta)``, each ``[n]``.

    References:
      Arjovsky et al., *Wasserstein GAN*, 2017, https://arxiv.org/abs/1701.07875 (Example 1)

    Derivation: derivations/09-wgan.md
    """
    thetas = np.asarray(thetas, np.float32)
    if thetas.ndim != 1:
        raise ValueError(f"thetas must have shape [n], got {thetas.shape}")
    support = np.union1d([0.0], thetas)  # [k]
    p = np.broadcast_to(support == 0.0, (thetas.size, support.size))  # [n, k] δ_0
    q = support[None, :] == thetas[:, None]  # [n, k] δ_θ
    js = divergences.js(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32))  # [n]
    w1 = lambda t: divergences.wasserstein_1d(jnp.zeros((1,)), t[None])
    w1, grad = jax.vmap(jax.value_and_grad(w1))(jnp.asarray(thetas))  # [n], [n]
    return js, w1, grad


def attention_maps(model, params, tokens: Int[Array, " length"], layer: int = 0):
    r"""The self-attention weights of every head of one layer of a decoder-only Transformer.

    .. math:: A_h = \operatorname{softmax}\Big(\frac{Q_h K_h^\top}{\sqrt{d_k}} + \log M\Big)

    with :math:`Q_h, K_h` the layer's query and key projections of ``tokens`` (captured from the
    forward pass of ``model``) and :math:`M` the causal mask, computed by
    :func:`genjax.nn.attention.attention_weights`.

    Args:
      model: a :class:`genjax.nn.transformer.DecoderOnlyTransformer` with ``"learned"`` or
        ``"sinusoidal"`` positions (rotary ones rotate :math:`Q, K` inside the attention).
      params: its variables.
      tokens: ``[length]`` int ids.
      layer: the block, ``0 .. num_layers - 1``.

    Returns:
      ``[heads, length, length]`` float32, row :math:`i` the weights query :math:`i` gives the
      keys :math:`j \le i` (zero above the diagonal).

    Derivation: derivations/03-attention.md
    """
    if model.positional == "rotary":
        raise ValueError("attention_maps needs learned or sinusoidal positions, got rotary")
    if not 0 <= layer < model.num_layers:
        raise ValueError(f"layer must be in 0..{model.num_layers - 1}, got {layer}")
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must have shape [length], got {tokens.shape}")
    wanted = lambda mdl, _: mdl.name in ("query", "key")
    _, state = model.apply(params, tokens[None], capture_intermediates=wanted)
    block = state["intermediates"][f"DecoderBlock_{layer}"]["self_attention"]
    q, k = block["query"]["__call__"][0], block["key"]["__call__"][0]  # [1, L, H, d_k] each
    mask = attn.causal_mask(tokens.shape[0])  # [1, 1, L, L]
    return attn.attention_weights(q, k, mask=mask)[0]  # [H, L, L]


def positional_tables(length: int, dim: int) -> tuple[Float[Array, "length dim"], ...]:
    r"""The sinusoidal table and its Gram matrix.

    .. math:: PE = \texttt{sinusoidal\_encoding}(L, d), \qquad
              (PE\,PE^\top)_{pq} = \sum_i \cos\big((p - q)\,\omega_i\big)

    The Gram matrix depends on the offset :math:`p - q` alone (each sin/cos pair contributes
    :math:`\cos((p-q)\omega_i)`) and its diagonal is :math:`d/2`.

    Args:
      length: positions :math:`L`.
      dim: width :math:`d`, even.

    Returns:
      ``(pe [L, d], gram [L, L])``.

    Derivation: derivations/04-positional-encoding.md
    """
    pe = positional.sinusoidal_encoding(length, dim)  # [L, d]
    return pe, pe @ pe.T  # [L, L]


def activation_variances(
    key,
    init: nn_init.Initializer,
    activation: Callable[[jax.Array], jax.Array],
    *,
    depth: int = 20,
    width: int = 512,
    batch: int = 128,
) -> Float[Array, " depth"]:
    r"""The variance of the activations of each layer of a deep bias-free MLP at initialisation.

    .. math:: h_0 = x \sim N(0, I), \qquad h_l = \phi(h_{l-1} W_l), \qquad
              v_l = \operatorname{Var}(h_l), \quad W_l \sim \texttt{init}

    With :math:`\phi` = ReLU and He's :math:`\operatorname{Var} W = 2/n`, :math:`v_l` stays
    constant; a smaller scale makes it vanish geometrically, a larger one explode.

    Args:
      key: PRNG key of :math:`x` and the weights.
      init: a :mod:`genjax.nn.init` initialiser, ``init(key, (width, width))``.
      activation: :math:`\phi`, e.g. ``jax.nn.relu`` or ``jnp.tanh``.
      depth: layers :math:`L`.
      width: units :math:`n` per layer.
      batch: inputs :math:`x` the variance is taken over (with the units).

    Returns:
      ``[depth]`` float32, :math:`v_1 \dots v_L`.

    Derivation: derivations/02-initialisation.md
    """
    for name, value in (("depth", depth), ("width", width), ("batch", batch)):
        _checks.positive_int(name, value)
    x_key, w_key = jax.random.split(key)
    weights = jax.vmap(lambda k: init(k, (width, width)))(jax.random.split(w_key, depth))
    x = jax.random.normal(x_key, (batch, width))  # [batch, width]
    return _layer_variances(x, weights, activation)  # [depth]


@functools.partial(jax.jit, static_argnames="activation")
def _layer_variances(x, weights, activation):
    """``Var(h_l)`` for ``h_l = activation(h_{l-1} @ weights[l])``, ``h_0 = x``, by a scan."""

    def layer(h, w):
        h = activation(h @ w)  # [batch, width]
        return h, jnp.var(h)

    return jax.lax.scan(layer, x, weights)[1]  # [depth]


def denoising_rows(key, model: ae.DenoisingAutoencoder, params, x: Float[Array, "n h w c"]):
    r"""A denoising autoencoder's corrupted inputs and their reconstructions.

    .. math:: \tilde x \sim q(\tilde x \mid x) \;(\texttt{corrupt}), \qquad
              \hat x = g_\theta(f_\phi(\tilde x))

    Args:
      key: PRNG key of the corruption (:func:`genjax.autoencoders.corrupt` with the model's
        ``noise`` and ``noise_level``).
      model: the :class:`genjax.autoencoders.DenoisingAutoencoder`.
      params: its variables.
      x: ``[n, H, W, C]`` clean images.

    Returns:
      ``(noisy, reconstruction)``, each ``[n, H, W, C]``.

    Derivation: derivations/01-autoencoders.md
    """
    noisy = ae.corrupt(key, jnp.asarray(x), model.noise, model.noise_level)  # [n, H, W, C]
    return noisy, model.apply(params, noisy)[0]


def gan_snapshots(
    key,
    task: Task,
    config: TrainConfig,
    arrays: Mapping[str, np.ndarray],
    steps: Sequence[int],
    n: int,
    *,
    every: int = GAN_CHUNK,
):
    r"""Samples of one fixed latent batch at several points of a GAN's training.

    Trains ``task`` with the loop's own steps (:func:`genjax.train.make_train_chunk`, ``every``
    steps per compiled chunk) and, at each step in ``steps``, draws ``task.sample(params, key,
    n)`` from the generator's current parameters (not their average): the same ``key`` gives
    the same :math:`z` each time, so a column follows one :math:`G(z)` through training.

    Args:
      key: PRNG key of the latent batch.
      task: a GAN :class:`~genjax.train.Task` (``genjax.recipes.gan``).
      config: its :class:`~genjax.train.TrainConfig` (``steps`` is not read).
      arrays: the training arrays.
      steps: increasing multiples of ``every``, from 0.
      n: samples per snapshot.
      every: steps per chunk.

    Returns:
      ``[len(steps), n, *event]`` numpy samples.

    Derivation: derivations/08-gans.md
    """
    _checks.positive_int("n", n)
    _checks.positive_int("every", every)
    steps = [int(s) for s in steps]
    if not steps or any(s % every or s < 0 for s in steps) or steps != sorted(set(steps)):
        raise ValueError(f"steps must be increasing multiples of every={every}, got {steps}")
    state, tx = init_state(task, config, arrays)
    device_arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
    chunk = make_train_chunk(task, config, tx, device_arrays, length=every)
    out = []
    for target in steps:
        while int(state.step) < target:
            state, _ = chunk(state)
        out.append(np.asarray(task.sample(state.params, key, n)))
    return np.stack(out)  # [len(steps), n, *event]


# ----------------------------------------------------------------------------- figures


def forward_noising(key, path: str | Path) -> Path:
    r"""A digit noised at several steps under the linear and the cosine schedule (one noise).

    Data: :func:`noising_series` on the first test digit (scaled to :math:`[-1, 1]`) with
    :func:`genjax.diffusion.linear_schedule` and :func:`genjax.diffusion.cosine_schedule`,
    :math:`T = 1000`, at ``NOISING_TIMES``.

    Derivation: derivations/11-ddpm.md
    """
    x0 = 2.0 * data_lib.load_dataset("digits").test["x"][0] - 1.0  # [8, 8, 1] in [-1, 1]
    rows = {
        name: (noising_series(key, fn(DIFFUSION_STEPS), x0, NOISING_TIMES) + 1.0) / 2.0
        for name, fn in (
            ("linear", diffusion.linear_schedule),
            ("cosine", diffusion.cosine_schedule),
        )
    }
    titles = [f"t = {t}" for t in NOISING_TIMES]
    title = r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ (same $\epsilon$)"
    return _image_rows(rows, path, col_titles=titles, title=title)


def schedules(key, path: str | Path) -> Path:
    r""":math:`\bar\alpha_t` and the log-SNR of the linear and cosine schedules, :math:`T = 1000`.

    Data: ``Schedule.alpha_bars`` and :func:`log_snr`. ``key`` is not used (the figure draws
    nothing; every figure takes one).

    Derivation: derivations/11-ddpm.md
    """
    del key
    linear, cosine = (
        fn(DIFFUSION_STEPS) for fn in (diffusion.linear_schedule, diffusion.cosine_schedule)
    )
    panels = {
        r"$\bar\alpha_t$": {"linear": linear.alpha_bars, "cosine": cosine.alpha_bars},
        r"log-SNR $\log(\bar\alpha_t / (1-\bar\alpha_t))$": {
            "linear": log_snr(linear),
            "cosine": log_snr(cosine),
        },
    }
    return _curve_panels(np.arange(DIFFUSION_STEPS), panels, path, xlabel="step t")


def kl_fits(key, path: str | Path) -> Path:
    r"""Forward vs reverse KL Gaussian fits to a bimodal density (mode covering vs seeking).

    Data: :func:`fit_gaussian` in both directions on
    :math:`p = \tfrac12 N(-2, 0.5^2) + \tfrac12 N(2, 0.5^2)` (``genjax.data.BIMODAL_MEANS``,
    ``BIMODAL_STD``) on ``KL_GRID``. ``key`` is not used.

    Derivation: derivations/07-divergences.md
    """
    del key
    x = jnp.asarray(KL_GRID, jnp.float32)
    logits_p = data_lib.gaussian_mixture_log_prob(
        x[:, None], data_lib.BIMODAL_MEANS, data_lib.BIMODAL_STD
    )  # [k]
    dx = float(KL_GRID[1] - KL_GRID[0])
    curves = {"p (two modes)": np.exp(np.asarray(logits_p))}
    for direction, label in (("forward", "KL(p‖q): covers"), ("reverse", "KL(q‖p): seeks")):
        mu, sigma = fit_gaussian(logits_p, x, direction)
        density = np.exp(-0.5 * ((KL_GRID - mu) / sigma) ** 2)
        curves[f"{label}, μ={mu:.2f}, σ={sigma:.2f}"] = density / (density.sum() * dx)
    title = "best Gaussian q for a bimodal p"
    return _curve_panels(KL_GRID, {title: curves}, path, xlabel="x", size=(6.0, 3.4))


def point_masses(key, path: str | Path) -> Path:
    r"""JS and :math:`W_1` between :math:`\delta_0` and :math:`\delta_\theta` against
    :math:`\theta`, and their gradients.

    Data: :func:`point_mass_distances` at ``POINT_MASS_THETAS`` (201 points of :math:`[-2, 2]`).
    ``key`` is not used.

    Derivation: derivations/09-wgan.md
    """
    del key
    thetas = POINT_MASS_THETAS
    js, w1, dw1 = point_mass_distances(thetas)
    panels = {
        "distance": {"JS (log 2 for θ ≠ 0)": js, "W1 = |θ|": w1},
        "d/dθ": {"JS: 0": np.zeros_like(thetas), "W1: sign θ": dw1},
    }
    return _curve_panels(thetas, panels, path, xlabel="θ")


def attention_weights(key, path: str | Path) -> Path:
    r"""The attention weights of each head of the character model on one sentence.

    Data: the recipe ``transformer_char_lm`` trained at its quick budget
    (:func:`genjax.recipes.run`), then :func:`attention_maps` of layer 0 on ``ATTENTION_TEXT``.

    Derivation: derivations/03-attention.md
    """
    result = recipes.run(key, recipes.get("transformer_char_lm"), "quick")
    lm = result.task.model
    tokens = np.array([lm.corpus.alphabet.index(c) for c in ATTENTION_TEXT], np.int32)
    maps = np.asarray(attention_maps(lm.model, result.state.ema_params, tokens))  # [H, L, L]
    panels = {f"head {h}": m for h, m in enumerate(maps)}
    report = result.report
    title = (
        f"layer 0 of the character model ({report.value:.2f} bits/char, bigram "
        f"{report.baseline_value:.2f}): row = query, column = key"
    )
    return _heatmaps(panels, path, ticks=list(ATTENTION_TEXT), title=title, vmax=1.0)


def positional_encoding(key, path: str | Path) -> Path:
    r"""The sinusoidal table :math:`PE` (64 positions, 64 dims) and :math:`PE\,PE^\top`.

    Data: :func:`positional_tables`. ``key`` is not used.

    Derivation: derivations/04-positional-encoding.md
    """
    del key
    pe, gram = positional_tables(64, 64)
    panels = {"PE[p, i]: positions × dims": np.asarray(pe), "PE PEᵀ: position × position": gram}
    return _heatmaps(panels, path, cmap="RdBu_r", symmetric=True, colorbar=True)


def activation_variance(key, path: str | Path) -> Path:
    r"""Activation variance through 20 tanh and ReLU layers for Xavier, He and bad scales.

    Data: :func:`activation_variances` with :func:`genjax.nn.init.xavier_normal`
    (:math:`\operatorname{Var} W = 1/n` on square layers), :func:`genjax.nn.init.he_normal`
    (:math:`2/n`), and He with gains 0.5 and 2 (:math:`0.25/n`, :math:`4/n`): one key for
    every curve, so they share the input and the weights' directions.

    Derivation: derivations/02-initialisation.md
    """
    inits = {
        "Xavier, Var W = 1/n": nn_init.xavier_normal(),
        "He, Var W = 2/n": nn_init.he_normal(),
        "too small, Var W = 0.25/n": nn_init.he_normal(gain=0.5),
        "too large, Var W = 4/n": nn_init.he_normal(gain=2.0),
    }
    panels = {
        f"{name}": {label: activation_variances(key, init, fn) for label, init in inits.items()}
        for name, fn in (("tanh", jnp.tanh), ("ReLU", jax.nn.relu))
    }
    return _curve_panels(
        np.arange(1, 21), panels, path, xlabel="layer", ylabel="Var(activations)", logy=True
    )


def denoising_autoencoder(key, path: str | Path) -> Path:
    r"""Noisy test digits, a denoising autoencoder's reconstructions and the clean digits.

    Data: the recipe ``denoising_autoencoder`` trained at its quick budget
    (:func:`genjax.recipes.run`), then :func:`denoising_rows` on 10 test digits.

    Derivation: derivations/01-autoencoders.md
    """
    k_run, k_noise = jax.random.split(key)
    result = recipes.run(k_run, recipes.get("denoising_autoencoder"), "quick")
    x = result.dataset.test["x"][:10]
    noisy, recon = denoising_rows(k_noise, result.task.model, result.state.ema_params, x)
    rows = {"noisy input": noisy, "reconstruction": recon, "clean target": x}
    report = result.report
    title = f"test MSE/pixel {report.value:.4f} ({report.baseline}: {report.baseline_value:.4f})"
    return _image_rows(rows, path, title=title)


def gan_training(key, path: str | Path) -> Path:
    r"""One fixed latent batch through a DCGAN's training on digits.

    Data: :func:`gan_snapshots` of the recipe ``dcgan_digits`` (its configuration) at
    ``GAN_SNAPSHOTS``, 10 samples each.

    Derivation: derivations/08-gans.md
    """
    recipe = recipes.get("dcgan_digits")
    dataset = data_lib.load_dataset(recipe.data)
    task = recipe.make_task(dataset, {})
    samples = gan_snapshots(key, task, recipe.budget("full"), dataset.train, GAN_SNAPSHOTS, 10)
    rows = {f"step {s}": images for s, images in zip(GAN_SNAPSHOTS, samples, strict=True)}
    return _image_rows(rows, path, title="G(z) for one fixed z batch (columns) during training")


def word2vec_embeddings(key, path: str | Path) -> Path:
    r"""Skip-gram word vectors projected to 2-D by PCA, a handful of words labelled.

    Data: the recipe ``word2vec`` trained at its quick budget (:func:`genjax.recipes.run`);
    :func:`genjax.probes.pca_2d` of the centre vectors of ``WORD2VEC_WORDS`` (those in the
    vocabulary).

    Derivation: derivations/16-word2vec.md
    """
    result = recipes.run(key, recipes.get("word2vec"), "quick")
    index = result.task.model.corpus.vocab.index
    words = [w for w in WORD2VEC_WORDS if w in index]
    vectors = result.state.ema_params["params"]["center"][jnp.array([index[w] for w in words])]
    title = f"skip-gram centre vectors, PCA (vocabulary: {len(index)} words)"
    return viz.labelled_scatter(np.asarray(pca_2d(vectors)), words, path, title=title)


FIGURES: dict[str, Callable[[jax.Array, Path], Path]] = {
    "forward_noising": forward_noising,
    "schedules": schedules,
    "kl_fits": kl_fits,
    "point_masses": point_masses,
    "attention_weights": attention_weights,
    "positional_encoding": positional_encoding,
    "activation_variance": activation_variance,
    "denoising_autoencoder": denoising_autoencoder,
    "gan_training": gan_training,
    "word2vec_embeddings": word2vec_embeddings,
}  #: name -> ``figure(key, path) -> path``; the file is ``<name>.png``


def make_figures(key, out_dir: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    r"""Write the figures ``names`` (default: all of :data:`FIGURES`) as ``out_dir/<name>.png``.

    Figure ``name`` is drawn with ``fold_in(key, i)``, ``i`` its place in :data:`FIGURES`, so a
    figure is the same whether it is written alone or with the others.

    Args:
      key: PRNG key.
      out_dir: the folder, created if missing.
      names: figure names; an unknown one is a ``ValueError`` listing the known ones.

    Returns:
      The paths written, in the order of ``names``.

    Derivation: the note of each figure (derivations/01-autoencoders.md to
    derivations/16-word2vec.md, as listed in this module's docstring)
    """
    names = list(FIGURES) if names is None else list(names)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure {unknown[0]!r}; known figures: {', '.join(FIGURES)}")
    out = Path(out_dir)
    order = list(FIGURES)
    return [FIGURES[n](jax.random.fold_in(key, order.index(n)), out / f"{n}.png") for n in names]


# ----------------------------------------------------------------------------- plotting


def _image_rows(
    rows: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    col_titles: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Rows of ``[n, H, W, C]`` images in [0, 1] (label -> images), one labelled row each."""
    import matplotlib.pyplot as plt  # genjax.viz selected the Agg backend

    n = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(
        len(rows), n, figsize=(0.75 * n + 1.2, 0.8 * len(rows) + 0.5), squeeze=False
    )
    for r, (label, images) in enumerate(rows.items()):
        images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
        for c, ax in enumerate(axes[r]):
            if c < len(images):
                ax.imshow(images[c, ..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=8)
    return _save(fig, path, title)


def _curve_panels(
    x,
    panels: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str | None = None,
    logy: bool = False,
    marker: str | None = None,
    size: tuple[float, float] | None = None,
) -> Path:
    """Side-by-side panels (title -> curves, label -> ``y [N]``) against ``x [N]``."""
    import matplotlib.pyplot as plt

    size = size or (4.2 * len(panels), 3.3)
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
        for label, y in curves.items():
            ax.plot(np.asarray(x), np.asarray(y), label=label, marker=marker, markersize=2)
        if logy:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _heatmaps(
    panels: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    ticks: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    vmax: float | None = None,
    symmetric: bool = False,
    colorbar: bool = False,
) -> Path:
    """Side-by-side heat maps (title -> ``[rows, cols]``); ``ticks`` label both axes."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.7), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels.items(), strict=True):
        values = np.asarray(values)
        top = float(np.abs(values).max()) if symmetric else vmax
        image = ax.imshow(values, cmap=cmap, vmin=-top if symmetric else 0.0, vmax=top)
        ax.set_title(name, fontsize=9)
        if ticks is not None:
            positions = np.arange(len(ticks))
            ax.set_xticks(positions, ticks, fontsize=5)
            ax.set_yticks(positions, ticks, fontsize=5)
        if colorbar:
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path, title)


def _save(fig, path: str | Path, title: str | None = None) -> Path:
    """Write ``fig`` as a 100-dpi PNG at ``path`` under the figure-wide ``title``; close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.93 if title else 1.0))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
