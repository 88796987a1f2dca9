"""Tests for genjax.diffusion: schedules, forward process, parameterisations, losses, samplers.

The samplers are checked without any training, against the exact ε of a Gaussian mixture
(:func:`genjax.diffusion.gaussian_mixture_eps`); trained models are checked in the slow tests.
"""

import functools
import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm as scipy_norm

from genjax import data, divergences
from genjax import diffusion as D
from genjax.diffusion._variances import discretized_gaussian_log_likelihood
from genjax.recipes.common import fast_init_key

RTOL = 1e-5
ATOL = 1e-5
SAMPLER_ATOL = 1e-4  # float32 chains of up to 1000 steps accumulate rounding
NUM_SAMPLES = 10_000
MEANS = jnp.array(data.BIMODAL_MEANS, jnp.float32)  # [2, 1]: modes at -2 and +2
STD = data.BIMODAL_STD


def _schedules():
    return st.sampled_from(["linear", "cosine", "quadratic"]).flatmap(
        lambda kind: st.integers(1, 1200).map(lambda n: (kind, n))
    )


def _make(kind, n):
    if kind == "linear":
        return D.linear_schedule(n)
    if kind == "cosine":
        return D.cosine_schedule(n)
    return D.quadratic_schedule(n)


# ----------------------------------------------------------------------------- schedules


def test_time_index_convention():
    """t is 0-based: betas[0] is the paper's beta_1 and q_sample(t=0) draws the paper's x_1."""
    s = D.linear_schedule(1000)
    np.testing.assert_allclose(s.betas[0], 1e-4, rtol=RTOL)
    np.testing.assert_allclose(s.betas[-1], 0.02, rtol=RTOL)
    np.testing.assert_allclose(s.alpha_bars[0], 1 - 1e-4, rtol=RTOL)
    np.testing.assert_allclose(s.alpha_bars_prev[0], 1.0)
    np.testing.assert_allclose(s.alpha_bars_prev[1:], s.alpha_bars[:-1], rtol=RTOL)
    x1 = D.q_sample(None, s, jnp.ones((1, 1)), jnp.array([0]), noise=jnp.zeros((1, 1)))
    np.testing.assert_allclose(x1[0, 0], math.sqrt(1 - 1e-4), rtol=RTOL)
    assert s.num_steps == 1000


@given(_schedules())
def test_alpha_bars_are_cumprod_and_strictly_decreasing(kind_n):
    s = _make(*kind_n)
    fields = {k: np.asarray(v, np.float64) for k, v in vars(s).items()}
    betas, alpha_bars = fields["betas"], fields["alpha_bars"]
    # float32 storage: 1 - beta for beta = 0.999 keeps ~4 significant digits, hence the atol.
    np.testing.assert_allclose(fields["alphas"], 1 - betas, rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(alpha_bars, np.cumprod(1 - betas), rtol=1e-4, atol=1e-7)
    assert np.all(np.diff(alpha_bars) < 0)
    assert np.all((alpha_bars > 0) & (alpha_bars < 1))
    exact = np.cumprod(1 - betas)  # float64 reference for the derived fields
    np.testing.assert_allclose(fields["snr"], exact / (1 - exact), rtol=1e-4)
    np.testing.assert_allclose(fields["sqrt_alpha_bars"], np.sqrt(exact), rtol=1e-4)
    np.testing.assert_allclose(fields["sqrt_one_minus_alpha_bars"], np.sqrt(1 - exact), rtol=1e-4)


def test_linear_schedule_final_alpha_bar():
    """prod_{t=1}^{1000} (1 - beta_t) for Ho et al.'s schedule.

    Reference value: ``numpy.prod(1 - numpy.linspace(1e-4, 0.02, 1000))`` in float64.
    """
    s = D.linear_schedule(1000)
    exact = 4.035829765375676e-05
    np.testing.assert_allclose(np.prod(1 - np.linspace(1e-4, 0.02, 1000)), exact, rtol=1e-12)
    np.testing.assert_allclose(s.alpha_bars[-1], exact, rtol=RTOL)


def test_cosine_schedule_matches_closed_form():
    """alpha_bars[t] = f(t+1)/f(0) wherever no beta is clipped; the last betas clip at 0.999."""
    n, offset = 1000, 0.008
    s = D.cosine_schedule(n, s=offset)
    f = lambda u: np.cos((u / n + offset) / (1 + offset) * np.pi / 2) ** 2
    expected = f(np.arange(1, n + 1)) / f(0)
    unclipped = np.asarray(s.betas) < 0.999
    assert unclipped[:-1].all() and not unclipped[-1]
    np.testing.assert_allclose(s.alpha_bars[:-1], expected[:-1], rtol=1e-4)
    np.testing.assert_allclose(s.betas[-1], 0.999, rtol=RTOL)


def test_quadratic_schedule_roots_are_linear():
    s = D.quadratic_schedule(100, 1e-4, 0.02)
    np.testing.assert_allclose(np.diff(np.sqrt(np.asarray(s.betas, np.float64)), 2), 0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.betas)[[0, -1]], [1e-4, 0.02], rtol=RTOL)


def test_posterior_coefficients_follow_definitions():
    s = D.linear_schedule(50, 1e-3, 0.2)
    b, a, ab, abp = (
        np.asarray(v, np.float64) for v in (s.betas, s.alphas, s.alpha_bars, s.alpha_bars_prev)
    )
    np.testing.assert_allclose(s.posterior_variance, b * (1 - abp) / (1 - ab), rtol=1e-4)
    np.testing.assert_allclose(s.posterior_mean_coef_x0, b * np.sqrt(abp) / (1 - ab), rtol=1e-4)
    np.testing.assert_allclose(
        s.posterior_mean_coef_xt, np.sqrt(a) * (1 - abp) / (1 - ab), rtol=1e-4
    )
    assert float(s.posterior_variance[0]) == 0.0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(s.posterior_variance[1]))
    np.testing.assert_allclose(
        s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]), rtol=1e-5
    )


@pytest.mark.parametrize(
    ("betas", "match"),
    [
        ([0.1, 0.05], "non-decreasing"),
        ([0.0, 0.1], r"open interval \(0, 1\)"),
        ([0.1, 1.0], r"open interval \(0, 1\)"),
        ([-0.1, 0.1], r"open interval \(0, 1\)"),
        ([[0.1, 0.2]], r"1-D array \[T\]"),
        ([], r"1-D array \[T\]"),
    ],
)
def test_schedule_rejects_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        D.schedule_from_betas(np.asarray(betas))


def test_schedule_constructors_reject_bad_arguments():
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        D.linear_schedule(0)
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        D.cosine_schedule(10.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        D.linear_schedule(10, beta_start=0.02, beta_end=1e-4)
    with pytest.raises(ValueError, match=r"max_beta must lie in \(0, 1\)"):
        D.cosine_schedule(10, max_beta=1.0)


# ----------------------------------------------------------------------------- forward process


def test_iterated_forward_steps_match_closed_form():
    """Iterating q(x_t | x_{t-1}) gives mean sqrt(alpha_bar_t) x0 and variance 1 - alpha_bar_t."""
    s = D.linear_schedule(60, 1e-3, 0.1)
    # Exact moment recursion in float64: m_t = sqrt(a_t) m_{t-1}, v_t = a_t v_{t-1} + b_t.
    m, v = 1.0, 0.0
    means, variances = [], []
    for a, b in zip(np.asarray(s.alphas, np.float64), np.asarray(s.betas, np.float64), strict=True):
        m, v = math.sqrt(a) * m, a * v + b
        means.append(m)
        variances.append(v)
    np.testing.assert_allclose(means, s.sqrt_alpha_bars, rtol=1e-5)
    np.testing.assert_allclose(variances, 1 - np.asarray(s.alpha_bars, np.float64), rtol=1e-4)

    # Monte Carlo through q_step: 4 standard errors on the mean and on the variance.
    n, x0 = 20_000, 1.5
    x = jnp.full((n, 1), x0)
    key = jax.random.key(1)
    for t in range(s.num_steps):
        x = D.q_step(jax.random.fold_in(key, t), s, x, jnp.full((n,), t))
    var = 1 - float(s.alpha_bars[-1])
    assert abs(float(x.mean()) - x0 * float(s.sqrt_alpha_bars[-1])) < 4 * math.sqrt(var / n)
    assert abs(float(x.var()) - var) < 4 * var * math.sqrt(2 / n)


def test_q_sample_moments(key):
    s = D.cosine_schedule(100)
    n, t = 50_000, 40
    x0 = jnp.full((n, 1), -0.7)
    x = D.q_sample(key, s, x0, jnp.full((n,), t))
    var = 1 - float(s.alpha_bars[t])
    assert abs(float(x.mean()) + 0.7 * float(s.sqrt_alpha_bars[t])) < 4 * math.sqrt(var / n)
    assert abs(float(x.var()) - var) < 4 * var * math.sqrt(2 / n)


@given(st.integers(1, 99), st.floats(-3, 3), st.floats(-3, 3))
def test_q_posterior_matches_bayes_rule(t, x0, xt):
    """Condition the joint Gaussian of (x_{t-1}, x_t) given x0 (Schur complement, float64)."""
    s = D.linear_schedule(100, 1e-3, 0.2)
    ab_prev = float(np.asarray(s.alpha_bars, np.float64)[t - 1])
    a, b = float(s.alphas[t]), float(s.betas[t])
    mean_prev, var_prev = math.sqrt(ab_prev) * x0, 1 - ab_prev
    cov = np.array(
        [[var_prev, math.sqrt(a) * var_prev], [math.sqrt(a) * var_prev, a * var_prev + b]]
    )
    mean_t = math.sqrt(a) * mean_prev
    expected_mean = mean_prev + cov[0, 1] / cov[1, 1] * (xt - mean_t)
    expected_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    mean, var, log_var = D.q_posterior(s, jnp.array([[x0]]), jnp.array([[xt]]), jnp.array([t]))
    np.testing.assert_allclose(mean[0, 0], expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var[0, 0], expected_var, rtol=1e-4)
    np.testing.assert_allclose(log_var[0, 0], np.log(expected_var), rtol=1e-4, atol=1e-5)


def test_q_posterior_at_first_step_is_point_mass_at_x0():
    s = D.linear_schedule(10)
    x0, xt = jnp.array([[0.3, -1.0]]), jnp.array([[5.0, 2.0]])
    mean, var, _ = D.q_posterior(s, x0, xt, jnp.array([0]))
    np.testing.assert_allclose(mean, x0, rtol=RTOL)
    assert float(var.max()) == 0.0


# ----------------------------------------------------------------------------- parameterisations


@given(st.sampled_from(D.PARAMETERIZATIONS), st.integers(0, 999), st.integers(0, 2**16))
def test_parameterization_round_trip(parameterization, t, seed):
    s = D.linear_schedule(1000)
    k1, k2 = jax.random.split(jax.random.key(seed))
    x0, eps = jax.random.normal(k1, (3, 4)), jax.random.normal(k2, (3, 4))
    tt = jnp.full((3,), t)
    xt = D.q_sample(None, s, x0, tt, noise=eps)
    target = D.from_x0_eps(s, tt, x0, eps, parameterization)
    x0_back, eps_back = D.to_x0_eps(s, xt, tt, target, parameterization)
    # x0 recovered from eps divides by sqrt(alpha_bar) (>= 6e-3): scale the tolerance.
    scale = 1.0 / float(s.sqrt_alpha_bars[t]) if parameterization == "eps" else 1.0
    np.testing.assert_allclose(x0_back, x0, atol=1e-5 * scale * 10)
    np.testing.assert_allclose(eps_back, eps, atol=1e-4 / float(s.sqrt_one_minus_alpha_bars[t]))
    again = D.from_x0_eps(s, tt, x0_back, eps_back, parameterization)
    np.testing.assert_allclose(again, target, atol=1e-3 * scale)


def test_v_matches_angle_form():
    """Salimans & Ho: with phi = arctan(sigma/alpha), v = cos(phi) eps - sin(phi) x0 and
    x0 = cos(phi) x_t - sin(phi) v."""
    s = D.cosine_schedule(200)
    t = jnp.arange(0, 200, 20)
    k1, k2 = jax.random.split(jax.random.key(3))
    x0, eps = jax.random.normal(k1, (10, 2)), jax.random.normal(k2, (10, 2))
    phi = np.arctan2(np.asarray(s.sqrt_one_minus_alpha_bars[t]), np.asarray(s.sqrt_alpha_bars[t]))
    phi = phi[:, None]
    v = D.from_x0_eps(s, t, x0, eps, "v")
    np.testing.assert_allclose(v, np.cos(phi) * eps - np.sin(phi) * x0, atol=ATOL)
    xt = D.q_sample(None, s, x0, t, noise=eps)
    x0_hat, _ = D.to_x0_eps(s, xt, t, v, "v")
    np.testing.assert_allclose(x0_hat, np.cos(phi) * xt - np.sin(phi) * v, atol=ATOL)


# ----------------------------------------------------------------------------- losses


def test_ddpm_loss_is_mean_squared_error_of_the_target(key):
    s = D.linear_schedule(100, 1e-3, 0.2)
    k1, k2 = jax.random.split(key)
    x0, eps = jax.random.normal(k1, (4, 3, 3, 1)), jax.random.normal(k2, (4, 3, 3, 1))
    t = jnp.array([0, 10, 50, 99])
    oracle = lambda xt, tt: D.to_x0_eps(s, xt, tt, eps, "eps")[1]
    np.testing.assert_allclose(D.ddpm_loss(key, s, oracle, x0, t=t, noise=eps), 0.0, atol=1e-10)
    zero = lambda xt, tt: jnp.zeros_like(xt)
    loss = D.ddpm_loss(key, s, zero, x0, t=t, noise=eps)
    np.testing.assert_allclose(loss, np.mean(np.asarray(eps) ** 2, axis=(1, 2, 3)), rtol=RTOL)
    loss_x0 = D.ddpm_loss(key, s, zero, x0, t=t, noise=eps, parameterization="x0")
    np.testing.assert_allclose(loss_x0, np.mean(np.asarray(x0) ** 2, axis=(1, 2, 3)), rtol=RTOL)
    assert loss.shape == (4,)


def test_min_snr_weighting_gives_one_objective_for_all_parameterizations(key):
    """w_t turns every parameterisation's error into min(SNR_t, gamma) times the x0 error."""
    s = D.cosine_schedule(100)
    k1, k2 = jax.random.split(key)
    x0, eps = jax.random.normal(k1, (5, 2)), jax.random.normal(k2, (5, 2))
    t = jnp.array([1, 20, 50, 80, 99])
    x0_guess = lambda xt: 0.5 * jnp.tanh(xt)  # any fixed denoiser, expressed three ways

    def model(parameterization):
        def fn(xt, tt):
            guess = x0_guess(xt)
            eps_guess = D.to_x0_eps(s, xt, tt, guess, "x0")[1]
            return D.from_x0_eps(s, tt, guess, eps_guess, parameterization)

        return fn

    gamma = 5.0
    losses = [
        D.ddpm_loss(key, s, model(p), x0, t=t, noise=eps, parameterization=p, min_snr_gamma=gamma)
        for p in D.PARAMETERIZATIONS
    ]
    xt = D.q_sample(None, s, x0, t, noise=eps)
    expected = np.minimum(np.asarray(s.snr[t]), gamma) * np.mean(
        (np.asarray(x0_guess(xt)) - np.asarray(x0)) ** 2, axis=1
    )
    for loss in losses:
        np.testing.assert_allclose(loss, expected, rtol=1e-3)
    np.testing.assert_allclose(D.loss_weights(s, t, "eps"), 1.0)


def test_vlb_weights_turn_eps_error_into_posterior_kl(key):
    """KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) with equal variances is |mu - mu_hat|^2/(2 var)
    and equals lambda_t |eps - eps_hat|^2."""
    s = D.linear_schedule(100, 1e-3, 0.2)
    k1, k2, k3 = jax.random.split(key, 3)
    x0, eps = jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (4, 3))
    eps_hat = eps + 0.3 * jax.random.normal(k3, (4, 3))
    t = jnp.array([1, 5, 40, 99])
    xt = D.q_sample(None, s, x0, t, noise=eps)
    mean, var, _ = D.q_posterior(s, x0, xt, t)
    x0_hat, _ = D.to_x0_eps(s, xt, t, eps_hat, "eps")
    mean_hat, _, _ = D.q_posterior(s, x0_hat, xt, t)
    kl = np.sum((np.asarray(mean) - np.asarray(mean_hat)) ** 2 / (2 * np.asarray(var)), axis=1)
    expected = np.asarray(D.vlb_weights(s)[t]) * np.sum((np.asarray(eps - eps_hat)) ** 2, axis=1)
    np.testing.assert_allclose(kl, expected, rtol=1e-3)


# ----------------------------------------------------------------------------- samplers


def _mixture_eps(schedule, means=MEANS, weights=None):
    return lambda x, t: D.gaussian_mixture_eps(schedule, x, t, means, STD, weights)


def _ho_algorithm2_reference(schedule, eps_fn, noise):
    """Ho et al.'s Algorithm 2 as a plain Python loop in numpy, independent of ddpm_step."""
    b = np.asarray(schedule.betas, np.float64)
    a = 1 - b
    ab = np.cumprod(a)
    sigma2 = np.concatenate([[0.0], b[1:] * (1 - ab[:-1]) / (1 - ab[1:])])  # tilde beta
    x = np.asarray(noise[0], np.float64)
    states = [x]
    for i, t in enumerate(range(schedule.num_steps - 1, -1, -1)):
        eps = np.asarray(eps_fn(jnp.asarray(x, jnp.float32), jnp.full((x.shape[0],), t)))
        z = np.asarray(noise[i + 1]) if t > 0 else 0.0
        x = (x - b[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(a[t]) + np.sqrt(sigma2[t]) * z
        states.append(x)
    return np.stack(states)


def test_ddpm_chain_scan_equals_python_loop_step_for_step():
    s = D.cosine_schedule(50)
    eps_fn = _mixture_eps(s)
    noise = jax.random.normal(jax.random.key(4), (51, 16, 1))
    x, trajectory = D.sample(
        None, s, eps_fn, (16, 1), clip_x0=None, noise=noise, return_trajectory=True
    )
    expected = _ho_algorithm2_reference(s, eps_fn, noise)
    assert trajectory.shape == (51, 16, 1)
    np.testing.assert_allclose(trajectory, expected, atol=SAMPLER_ATOL)
    np.testing.assert_allclose(x, trajectory[-1])


def _song_eq12_reference(schedule, eps_fn, noise, num_steps, eta):
    """Song et al.'s eq. (12) over the strided steps as a numpy loop, independent of ddim_step."""
    ab = np.cumprod(1 - np.asarray(schedule.betas, np.float64))
    taus = np.round(np.linspace(0, schedule.num_steps - 1, num_steps)).astype(int)
    x = np.asarray(noise[0], np.float64)
    states = [x]
    for i in range(num_steps):
        t = taus[num_steps - 1 - i]
        ab_t = ab[t]
        ab_prev = ab[taus[num_steps - 2 - i]] if i < num_steps - 1 else 1.0
        eps = np.asarray(eps_fn(jnp.asarray(x, jnp.float32), jnp.full((x.shape[0],), t)))
        x0 = (x - np.sqrt(1 - ab_t) * eps) / np.sqrt(ab_t)
        sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        direction = np.sqrt(1 - ab_prev - sigma**2)
        x = np.sqrt(ab_prev) * x0 + direction * eps + sigma * np.asarray(noise[i + 1])
        states.append(x)
    return np.stack(states)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_chain_scan_equals_python_loop_step_for_step(eta):
    s = D.cosine_schedule(200)
    eps_fn = _mixture_eps(s)
    noise = jax.random.normal(jax.random.key(14), (13, 16, 1))
    with pytest.warns(UserWarning, match="DDIM with clip_x0=None"):  # alpha_bar_T ~ 1e-8
        x, trajectory = D.sample(
            None,
            s,
            eps_fn,
            (16, 1),
            num_steps=12,
            eta=eta,
            clip_x0=None,
            noise=noise,
            return_trajectory=True,
        )
    expected = _song_eq12_reference(s, eps_fn, noise, 12, eta)
    assert trajectory.shape == (13, 16, 1)
    np.testing.assert_allclose(trajectory, expected, atol=SAMPLER_ATOL)
    np.testing.assert_allclose(x, trajectory[-1])


def test_ddim_with_eta_one_over_all_steps_equals_ddpm():
    """Song et al.'s eq. (12) with eta = 1 over every step (the numpy loop) is the DDPM chain
    that sample() runs when num_steps is None or T; ddim_step with eta = 1 is ddpm_step."""
    s = D.linear_schedule(100, 1e-3, 0.2)
    eps_fn = _mixture_eps(s)
    noise = jax.random.normal(jax.random.key(5), (101, 32, 1))
    kw = dict(clip_x0=None, noise=noise, return_trajectory=True)
    ddpm = D.sample(None, s, eps_fn, (32, 1), **kw)[1]
    np.testing.assert_allclose(D.sample(None, s, eps_fn, (32, 1), num_steps=100, **kw)[1], ddpm)
    ddim = _song_eq12_reference(s, eps_fn, noise, 100, 1.0)
    np.testing.assert_allclose(ddim, ddpm, atol=SAMPLER_ATOL)
    x, z = ddpm[40], noise[60]  # the state at t = 60 and the draw of the step from it
    np.testing.assert_allclose(
        D.ddim_step(s, eps_fn, x, 60, 59, z, eta=1.0),
        D.ddpm_step(s, eps_fn, x, 60, z),
        atol=SAMPLER_ATOL,
    )


def test_ddim_with_eta_zero_is_deterministic_given_the_start():
    s = D.linear_schedule(1000)
    eps_fn = _mixture_eps(s)
    start = jax.random.normal(jax.random.key(6), (1, 8, 1))
    draws = [jax.random.normal(jax.random.key(k), (20, 8, 1)) for k in (7, 8)]
    a, b = (
        D.sample(
            None, s, eps_fn, (8, 1), num_steps=20, clip_x0=None, noise=jnp.concatenate([start, d])
        )
        for d in draws
    )
    np.testing.assert_allclose(a, b)
    c = D.sample(
        None,
        s,
        eps_fn,
        (8, 1),
        num_steps=20,
        eta=1.0,
        clip_x0=None,
        noise=jnp.concatenate([start, draws[0]]),
    )
    assert not np.allclose(a, c)


def test_ddim_timesteps():
    steps = D.ddim_timesteps(1000, 50)
    assert steps[0] == 0 and steps[-1] == 999 and len(np.unique(steps)) == 50
    np.testing.assert_array_equal(D.ddim_timesteps(30, 30), np.arange(30))
    np.testing.assert_array_equal(D.ddim_timesteps(30, 1), [29])
    with pytest.raises(ValueError, match="at most the schedule's 30 steps"):
        D.ddim_timesteps(30, 31)


def test_gaussian_mixture_eps_is_scaled_score_of_noised_mixture():
    """eps* = -sqrt(1 - alpha_bar) grad log q(x_t); q(x_t) via data.gaussian_mixture_log_prob."""
    s = D.cosine_schedule(100)
    means = jnp.array([[-2.0, 0.5], [1.0, 1.0], [0.0, -3.0]])
    x = jax.random.normal(jax.random.key(9), (6, 2)) * 2
    t = jnp.array([0, 5, 30, 60, 90, 99])
    eps = D.gaussian_mixture_eps(s, x, t, means, 0.3)

    @jax.jit
    @jax.vmap
    def reference(xi, ti):
        ab = s.alpha_bars[ti]
        log_q = lambda z: data.gaussian_mixture_log_prob(
            z, jnp.sqrt(ab) * means, jnp.sqrt(ab * 0.3**2 + 1 - ab)
        )
        return -jnp.sqrt(1 - ab) * jax.grad(log_q)(xi)

    np.testing.assert_allclose(eps, reference(x, t), rtol=1e-4, atol=1e-5)


def test_gaussian_mixture_eps_weights_match_hand_formula():
    s = D.linear_schedule(10, 0.05, 0.3)
    x, t, w = jnp.array([[0.4]]), jnp.array([6]), np.array([0.2, 0.8])
    ab = float(s.alpha_bars[6])
    var = ab * STD**2 + 1 - ab
    mu = math.sqrt(ab) * np.array([-2.0, 2.0])
    dens = w * np.exp(-((0.4 - mu) ** 2) / (2 * var))
    score = np.sum(dens * -(0.4 - mu) / var) / np.sum(dens)
    eps = D.gaussian_mixture_eps(s, x, t, MEANS, STD, jnp.asarray(w))
    np.testing.assert_allclose(eps[0, 0], -math.sqrt(1 - ab) * score, rtol=1e-5)


def _mode_fraction(x):
    return float(np.mean(np.asarray(x)[:, 0] > 0))


def _within(fraction, p, n=NUM_SAMPLES):
    return abs(fraction - p) <= 3 * math.sqrt(p * (1 - p) / n)


# With the exact eps the only error left is the discretisation of the reverse chain, so a
# 200-step cosine chain (DDPM) and 50 strided steps of the 1000-step linear schedule (DDIM)
# already carry the data's mass split; the unequal-weight test rules out a split that is right
# only by the symmetry of the two modes, and the moment checks a chain that lands off the modes.
SAMPLERS = {
    "ddpm": (
        lambda: D.cosine_schedule(200),
        lambda key, s, fn: D.sample(key, s, fn, (NUM_SAMPLES, 1), clip_x0=None),
    ),
    "ddim": (
        lambda: D.linear_schedule(1000),
        lambda key, s, fn: D.sample(key, s, fn, (NUM_SAMPLES, 1), num_steps=50, clip_x0=None),
    ),
    "dpm_solver_2m": (
        lambda: D.cosine_schedule(1000),
        lambda key, s, fn: _unclipped_dpm_solver(key, s, fn, (NUM_SAMPLES, 1), 30),
    ),
}


def _unclipped_dpm_solver(key, schedule, fn, shape, num_steps, noise=None):
    """DPM-Solver++(2M) without the clip (the exact eps has no error for it to bound)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "DDIM with clip_x0=None")
        return D.sample(
            key,
            schedule,
            fn,
            shape,
            num_steps=num_steps,
            method="dpm_solver_2m",
            clip_x0=None,
            noise=noise,
        )


@functools.cache
def _analytic_sampler(name):
    """A jitted ``run(key, weights, mode, scale)``: guided sampling of the bimodal mixture with
    unconditional eps = the mixture with ``weights`` and conditional eps = component ``mode``
    alone; ``scale = 0`` is plain unconditional sampling. One compilation per sampler."""
    make_schedule, sample = SAMPLERS[name]
    s = make_schedule()

    def run(key, weights, mode, scale):
        cond_means = jax.lax.dynamic_slice(MEANS, (mode, 0), (1, 1))  # [1, 1]
        eps_cond, eps_uncond = _mixture_eps(s, cond_means), _mixture_eps(s, weights=weights)
        guided = lambda x, t: D.classifier_free_guidance(eps_cond(x, t), eps_uncond(x, t), scale)
        return sample(key, s, guided)

    return jax.jit(run)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_analytic_sampler_splits_modes_evenly(sampler):
    x = _analytic_sampler(sampler)(jax.random.key(10), jnp.array([0.5, 0.5]), 0, 0.0)
    assert _within(_mode_fraction(x), 0.5), _mode_fraction(x)
    upper = np.asarray(x)[np.asarray(x)[:, 0] > 0, 0]
    assert abs(upper.mean() - 2.0) < 0.05 and abs(upper.std() - STD) < 0.03


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_analytic_sampler_reproduces_unequal_weights(sampler):
    x = _analytic_sampler(sampler)(jax.random.key(11), jnp.array([0.3, 0.7]), 0, 0.0)
    assert _within(_mode_fraction(x), 0.7), _mode_fraction(x)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize(("mode", "scale"), [(0, 1.0), (1, 1.0), (0, 3.0)])
def test_guided_analytic_sampler_lands_on_requested_mode(sampler, mode, scale):
    """Conditional eps = the requested component's eps; unconditional = the mixture's."""
    x = _analytic_sampler(sampler)(jax.random.key(12), jnp.array([0.5, 0.5]), mode, scale)
    on_mode = np.mean((np.asarray(x)[:, 0] > 0) == bool(mode))
    assert on_mode >= 0.99, on_mode


def test_classifier_guidance_with_exact_classifier_equals_cfg():
    """grad log p(y | x_t) = grad log q(x_t | y) - grad log q(x_t), so both guidances agree."""
    s = D.cosine_schedule(100)
    x = jnp.linspace(-3, 3, 7)[:, None]
    t = jnp.array([0, 10, 30, 50, 70, 90, 99])
    eps_u = D.gaussian_mixture_eps(s, x, t, MEANS, STD)
    eps_c = D.gaussian_mixture_eps(s, x, t, MEANS[1:], STD)

    def log_p_y(xi, ti):  # log posterior of component 1 under the noised mixture
        ab = s.alpha_bars[ti]
        var = ab * STD**2 + 1 - ab
        logits = -((xi[0] - jnp.sqrt(ab) * MEANS[:, 0]) ** 2) / (2 * var)
        return jax.nn.log_softmax(logits)[1]

    grad = jax.jit(jax.vmap(jax.grad(log_p_y)))(x, t)
    for w in (1.0, 2.5):
        np.testing.assert_allclose(
            D.classifier_guidance(s, eps_u, t, grad, w),
            D.classifier_free_guidance(eps_c, eps_u, w),
            rtol=1e-4,
            atol=1e-5,
        )


def test_guidance_scale_conventions():
    ec, eu = jnp.array([1.0, -2.0]), jnp.array([0.5, 3.0])
    np.testing.assert_allclose(D.classifier_free_guidance(ec, eu, 0.0), eu)
    np.testing.assert_allclose(D.classifier_free_guidance(ec, eu, 1.0), ec)
    w_paper = 2.0  # Ho & Salimans: (1 + w) eps_c - w eps_u
    np.testing.assert_allclose(
        D.classifier_free_guidance(ec, eu, D.guidance_scale_from_ho_salimans(w_paper)),
        (1 + w_paper) * ec - w_paper * eu,
        rtol=RTOL,
    )
    with pytest.raises(ValueError, match="guidance_scale must be a scalar"):
        D.classifier_free_guidance(ec, eu, jnp.ones(2))


def test_guided_model_fn_matches_separate_calls():
    calls = []

    def model(x, t, y):
        calls.append(x.shape[0])
        return x * (y[:, None] + 1.0) + t[:, None]

    x, t, y = jnp.array([[1.0], [2.0]]), jnp.array([3, 4]), jnp.array([0, 1])
    out = D.guided_model_fn(model, y, null_label=5, guidance_scale=2.0)(x, t)
    expected = D.classifier_free_guidance(model(x, t, y), model(x, t, jnp.full((2,), 5)), 2.0)
    np.testing.assert_allclose(out, expected, rtol=RTOL)
    assert calls[0] == 4  # one network call on the doubled batch


def test_drop_labels(key):
    labels = jnp.arange(10_000) % 10
    dropped = D.drop_labels(key, labels, 0.2, null_label=10)
    fraction = float(np.mean(np.asarray(dropped) == 10))
    assert abs(fraction - 0.2) < 3 * math.sqrt(0.2 * 0.8 / 10_000)
    kept = np.asarray(dropped) != 10
    np.testing.assert_array_equal(np.asarray(dropped)[kept], np.asarray(labels)[kept])
    fixed = D.drop_labels(None, jnp.array([1, 2, 3]), 0.5, 9, noise=jnp.array([0.1, 0.6, 0.49]))
    np.testing.assert_array_equal(fixed, [9, 2, 9])
    with pytest.raises(ValueError, match=r"drop_prob must lie in \[0, 1\]"):
        D.drop_labels(key, labels, 1.5, 10)


def test_clip_x0_bounds_the_last_step():
    s = D.linear_schedule(20, 1e-3, 0.3)
    far = lambda x, t: jnp.full_like(x, 5.0)  # an x0-predictor far outside the data range
    for num_steps, method in ((None, None), (10, None), (10, "dpm_solver_2m")):
        x = D.sample(
            jax.random.key(0),
            s,
            far,
            (6, 2),
            num_steps=num_steps,
            method=method,
            parameterization="x0",
        )  # the default clip_x0 is (-1, 1)
        np.testing.assert_allclose(x, 1.0, atol=1e-5)


def test_samplers_same_with_and_without_jit():
    s = D.cosine_schedule(30)
    eps_fn = _mixture_eps(s)
    key = jax.random.key(13)
    for sample in (
        lambda k: D.sample(k, s, eps_fn, (8, 1), clip_x0=None),
        lambda k: D.sample(k, s, eps_fn, (8, 1), num_steps=10, eta=0.5, clip_x0=(-5.0, 5.0)),
        lambda k: D.sample(k, s, eps_fn, (8, 1), num_steps=10, method="dpm_solver_2m"),
        lambda k: D.ddpm_loss(k, s, eps_fn, jnp.ones((8, 1))),
        lambda k: D.q_sample(k, s, jnp.ones((8, 1)), jnp.arange(8)),
    ):
        np.testing.assert_allclose(jax.jit(sample)(key), sample(key), atol=SAMPLER_ATOL)


def test_schedule_is_a_pytree_usable_under_jit():
    s = D.linear_schedule(10)
    leaves = jax.tree.leaves(s)
    assert len(leaves) == 11 and all(leaf.shape == (10,) for leaf in leaves)
    x = jax.jit(D.q_sample)(jax.random.key(0), s, jnp.ones((2, 1)), jnp.array([0, 9]))
    assert x.shape == (2, 1)


# ----------------------------------------------------------------------------- bad input


def test_bad_time_steps_raise():
    s = D.linear_schedule(10)
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        D.q_sample(None, s, x, jnp.array([0, 10]), noise=x)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        D.q_posterior(s, x, x, jnp.array([-1, 0]))
    with pytest.raises(TypeError, match="t must hold integer time steps"):
        D.q_sample(None, s, x, jnp.array([0.0, 1.0]), noise=x)
    with pytest.raises(ValueError, match=r"t must be a scalar or \[batch\] = \(2,\)"):
        D.q_sample(None, s, x, jnp.array([0, 1, 2]), noise=x)


def test_out_of_range_time_steps_are_clamped_under_jit():
    s = D.linear_schedule(10)
    x0, eps = jnp.ones((3, 2)), jnp.full((3, 2), 0.5)
    inside = D.q_sample(None, s, x0, jnp.array([0, 9, 9]), noise=eps)
    outside = jax.jit(D.q_sample)(None, s, x0, jnp.array([-4, 10, 1000]), noise=eps)
    np.testing.assert_array_equal(outside, inside)
    model = lambda xt, t: xt * t[:, None]  # depends on t, so a clamped t shows in the loss
    loss = jax.jit(lambda t: D.ddpm_loss(None, s, model, x0, t=t, noise=eps))
    np.testing.assert_array_equal(loss(jnp.array([-4, 10, 1000])), loss(jnp.array([0, 9, 9])))


def test_mismatched_shapes_raise():
    s = D.linear_schedule(10)
    x, t = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises(ValueError, match="shapes must match"):
        D.q_sample(None, s, x, t, noise=jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="shapes must match"):
        D.q_posterior(s, x, jnp.zeros((2, 2)), t)
    with pytest.raises(ValueError, match="shapes must match"):
        D.ddpm_loss(jax.random.key(0), s, lambda xt, tt: xt[:, :1], x)
    with pytest.raises(ValueError, match="x0 must be batched"):
        D.q_sample(None, s, jnp.float32(1.0), t)
    with pytest.raises(ValueError, match=r"xt must be \[batch, dim\] and means \[K, dim\]"):
        D.gaussian_mixture_eps(s, x, t, MEANS, STD)
    wrong = lambda xt, tt: xt[:, :1]  # a denoiser whose output does not match its input
    for num_steps in (None, 5):  # DDPM, DDIM
        with pytest.raises(ValueError, match="shapes must match"):
            D.sample(jax.random.key(0), s, wrong, (2, 3), num_steps=num_steps)


def test_bad_sampler_arguments_raise():
    s = D.linear_schedule(10)
    fn = lambda x, t: x
    with pytest.raises(ValueError, match="parameterization must be one of"):
        D.sample(jax.random.key(0), s, fn, (2, 1), parameterization="score")
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        D.sample(jax.random.key(0), s, fn, (0, 1))
    with pytest.raises(ValueError, match=r"noise must have shape \[steps \+ 1, \*shape\]"):
        D.sample(None, s, fn, (2, 1), noise=jnp.zeros((10, 2, 1)))
    with pytest.raises(ValueError, match="variance must be one of"):
        D.sample(jax.random.key(0), s, fn, (2, 1), variance="fixed")
    with pytest.raises(ValueError, match="method must be one of"):
        D.sample(jax.random.key(0), s, fn, (2, 1), method="euler")
    with pytest.raises(ValueError, match="method='ddpm' runs all 10 steps"):
        D.sample(jax.random.key(0), s, fn, (2, 1), num_steps=5, method="ddpm")
    with pytest.raises(ValueError, match="eta applies to DDIM, not to dpm_solver_2m"):
        D.sample(jax.random.key(0), s, fn, (2, 1), num_steps=5, method="dpm_solver_2m", eta=1.0)
    with pytest.raises(ValueError, match="clip_x0 must be None or a pair"):
        D.sample(jax.random.key(0), s, fn, (2, 1), clip_x0=(1.0, -1.0))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        D.sample(jax.random.key(0), s, fn, (2, 1), eta=-0.1)
    with pytest.raises(ValueError, match="at most the schedule's 10 steps"):
        D.sample(jax.random.key(0), s, fn, (2, 1), num_steps=11)
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        D.loss_weights(s, jnp.array([0]), "eps", min_snr_gamma=0.0)


# ----------------------------------------------------------------------------- MLP denoiser


def test_mlp_denoiser_shapes_and_conditioning(key):
    model = D.MLPDenoiser(num_steps=50, features=16, depth=2, num_classes=2)
    x, t, y = jnp.ones((5, 3)), jnp.arange(5), jnp.array([0, 1, 2, 0, 1])
    params = model.init(key, x, t, y)
    out = model.apply(params, x, t, y)
    assert out.shape == (5, 3)
    # The zero-initialised output layer makes the initial prediction exactly zero.
    np.testing.assert_allclose(out, 0.0)
    params = jax.tree.map(lambda p: p + 0.1, params)
    changed = model.apply(params, x, t, jnp.array([1, 1, 1, 1, 1]))
    assert not np.allclose(model.apply(params, x, t, y), changed)
    with pytest.raises(ValueError, match="needs labels y"):
        model.apply(params, x, t)
    with pytest.raises(ValueError, match=r"x must be \[batch, dim\]"):
        nn.Module.apply(model, params, jnp.ones((5,)), t, y)


# ----------------------------------------------------------------------------- recipes


def test_recipe_task_follows_the_task_contract():
    """Task(init, loss, sample, model): sample is a plain (params, key, n) and model the Setup."""
    from genjax.recipes import diffusion as recipe_module

    dataset = data.load_dataset("two_moons")
    task = recipe_module.make_task(
        dataset, {"num_steps": 10, "width": 16, "depth": 1}, conditional=False
    )
    assert isinstance(task.model, recipe_module.Setup)
    batch = {"x": dataset.train["x"][:8]}
    params = task.init(jax.random.key(0), batch)
    loss, _ = task.loss(params, jax.random.key(1), batch)
    assert loss.shape == () and np.isfinite(float(loss))
    assert task.sample(params, jax.random.key(2), 5).shape == (5, 2)


# ----------------------------------------------------------------------------- trained models


@pytest.mark.slow
def test_trained_bimodal_model_splits_modes_and_follows_labels():
    """The issue's quality bar: a trained (not analytic) model puts 50 +- 3 % of unconditional
    samples on each mode and >= 99 % of conditional ones on the requested mode."""
    from genjax import train
    from genjax.recipes import diffusion as recipe_module
    from genjax.recipes import get

    recipe = get("diffusion_bimodal")
    dataset = data.load_dataset(recipe.data)
    task = recipe.make_task(dataset, {})
    state = train.fit(task, dataset.train, recipe.config(False), progress=False)
    uncond, cond, asked = recipe_module.bimodal_samples(
        jax.random.key(0), task, state.ema_params, n=NUM_SAMPLES
    )
    assert abs(np.mean(uncond > 0) - 0.5) <= 0.03
    assert np.mean((cond > 0) == (asked == 1)) >= 0.99


# ----------------------------------------------------------------------------- the contract


def test_time_steps_may_be_an_int_a_scalar_or_a_batch():
    s = D.cosine_schedule(50)
    x0, eps = jax.random.normal(jax.random.key(20), (2, 3, 1, 1)), jnp.ones((2, 3, 1, 1))
    for t in (7, jnp.int32(7), jnp.array([7, 7])):
        batch = jnp.array([7, 7])
        np.testing.assert_array_equal(
            D.q_sample(None, s, x0, t, noise=eps), D.q_sample(None, s, x0, batch, noise=eps)
        )
        np.testing.assert_array_equal(
            D.q_posterior(s, x0, eps, t)[0], D.q_posterior(s, x0, eps, batch)[0]
        )
        np.testing.assert_array_equal(
            D.from_x0_eps(s, t, x0, eps, "v"), D.from_x0_eps(s, batch, x0, eps, "v")
        )
        np.testing.assert_array_equal(
            D.classifier_guidance(s, eps, t, x0, 2.0), D.classifier_guidance(s, eps, batch, x0, 2.0)
        )
        zero = lambda xt, tt: jnp.zeros_like(xt)
        np.testing.assert_array_equal(
            D.ddpm_loss(None, s, zero, x0, t=t, noise=eps),
            D.ddpm_loss(None, s, zero, x0, t=batch, noise=eps),
        )
    np.testing.assert_array_equal(
        D.loss_weights(s, 7, "v", 5.0), D.loss_weights(s, batch, "v", 5.0)[0]
    )
    xt = jnp.array([[0.3], [-1.0]])
    np.testing.assert_array_equal(
        D.gaussian_mixture_eps(s, xt, 9, MEANS, STD),
        D.gaussian_mixture_eps(s, xt, jnp.array([9, 9]), MEANS, STD),
    )
    with pytest.raises(TypeError, match="t must hold integer time steps"):
        D.q_sample(None, s, x0, 7.0, noise=eps)


def test_ddpm_loss_needs_a_key_only_for_what_it_draws():
    s = D.cosine_schedule(50)
    x0, eps = jnp.ones((4, 2)), jnp.zeros((4, 2))
    fn = lambda xt, tt: xt
    D.ddpm_loss(None, s, fn, x0, t=3, noise=eps)  # nothing left to draw
    with pytest.raises(ValueError, match="key is None, so t must be given"):
        D.ddpm_loss(None, s, fn, x0, noise=eps)
    with pytest.raises(ValueError, match="key is None, so t and noise must be given"):
        D.ddpm_loss(None, s, fn, x0)
    with pytest.raises(ValueError, match="key is None, so noise must be given"):
        D.sample(None, s, fn, (2, 1))


def test_sample_options_belong_to_their_sampler():
    s = D.linear_schedule(10)
    fn = lambda x, t: x
    with pytest.raises(ValueError, match="eta applies to DDIM"):
        D.sample(jax.random.key(0), s, fn, (2, 1), eta=0.5)
    with pytest.raises(ValueError, match="variance applies to DDPM"):
        D.sample(jax.random.key(0), s, fn, (2, 1), num_steps=5, variance="large")


# ----------------------------------------------------------------------------- unclipped DDIM

# cosine_schedule(100) ends at alpha_bar = 2.4e-7: x0-hat from eps divides eps's error by
# sqrt(alpha_bar) ~ 5e-4, and the first of 20 deterministic DDIM steps keeps 1/160 of it.
TINY_END = functools.partial(D.cosine_schedule, 100)
BOUNDED_MEANS = jnp.array([[-0.5], [0.5]])  # a mixture inside the default clip range [-1, 1]
BOUNDED_STD = 0.1


def _bounded_mixture_w1(x) -> float:
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.normal(m, BOUNDED_STD, 2000) for m in (-0.5, 0.5)])
    return float(divergences.wasserstein_1d(jnp.ravel(x), jnp.asarray(ref, jnp.float32)))


def test_ddim_default_clip_survives_eps_errors_at_tiny_alpha_bar():
    """The exact mixture eps plus a small error 0.05 sin(3x) (a network's): unclipped 20-step
    DDIM lands far from the data, the default clip_x0 = (-1, 1) and DDPM do not; without the
    error, clipping changes nothing."""
    s = TINY_END()
    exact = lambda x, t: D.gaussian_mixture_eps(s, x, t, BOUNDED_MEANS, BOUNDED_STD)
    noisy = lambda x, t: exact(x, t) + 0.05 * jnp.sin(3.0 * x)
    run = lambda fn, **kw: D.sample(jax.random.key(1), s, fn, (4000, 1), **kw)
    with pytest.warns(UserWarning, match="DDIM with clip_x0=None"):
        clean = run(exact, num_steps=20, clip_x0=None)
    np.testing.assert_allclose(run(exact, num_steps=20), clean, atol=1e-5)
    clipped = _bounded_mixture_w1(run(noisy, num_steps=20))
    with pytest.warns(UserWarning, match="DDIM with clip_x0=None"):
        unclipped = _bounded_mixture_w1(run(noisy, num_steps=20, clip_x0=None))
    ddpm = _bounded_mixture_w1(run(noisy, clip_x0=None))
    assert clipped < 0.08 and ddpm < 0.08, (clipped, ddpm)
    assert unclipped > 0.3, unclipped


def test_sample_warns_only_where_unclipped_ddim_is_unsafe():
    fn = lambda x, t: jnp.zeros_like(x)
    key = jax.random.key(0)
    with pytest.warns(UserWarning, match=r"alpha_bars\[T-1\] = 2.4e-07"):
        D.sample(key, TINY_END(), fn, (2, 1), num_steps=20, clip_x0=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.sample(key, TINY_END(), fn, (2, 1), num_steps=20)  # clipped by default
        D.sample(key, TINY_END(), fn, (2, 1), clip_x0=None)  # DDPM
        D.sample(key, TINY_END(), fn, (2, 1), num_steps=20, clip_x0=None, parameterization="v")
        D.sample(key, D.linear_schedule(1000), fn, (2, 1), num_steps=20, clip_x0=None)  # 4e-5


def test_trained_toy_model_needs_the_clip_under_ddim():
    """A small MLP trained for a 400 steps on four clusters in [-1, 1]^2: 20 DDIM steps
    of cosine_schedule(100) with the default clip_x0 stay near the data; without the clip the
    network's eps error, multiplied ~2000x in x0-hat, throws the samples off."""
    s = TINY_END()
    modes = jnp.array([[0.6, 0.6], [-0.6, 0.6], [0.6, -0.6], [-0.6, -0.6]])

    def draw(key, n):
        k_mode, k_noise = jax.random.split(key)
        return modes[jax.random.randint(k_mode, (n,), 0, 4)] + 0.1 * jax.random.normal(
            k_noise, (n, 2)
        )

    model = D.MLPDenoiser(s.num_steps, features=32, depth=2)
    params = model.init(
        fast_init_key(jax.random.key(1)), jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32)
    )
    tx = optax.adam(3e-3)

    def step(carry, key):
        params, opt = carry
        k_x, k_loss = jax.random.split(key)
        x0 = draw(k_x, 256)
        loss = lambda p: jnp.mean(D.ddpm_loss(k_loss, s, lambda xt, t: model.apply(p, xt, t), x0))
        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), None

    train = jax.jit(lambda c, keys: jax.lax.scan(step, c, keys)[0])
    params, _ = train(
        (params, tx.init(params)), jax.random.split(fast_init_key(jax.random.key(2)), 400)
    )
    fn = lambda xt, t: model.apply(params, xt, t)
    test = draw(jax.random.key(7), 2000)
    sliced = lambda x: float(divergences.sliced_wasserstein(jax.random.key(9), x, test, 128))
    floor = sliced(draw(jax.random.key(8), 2000))
    clipped = sliced(D.sample(jax.random.key(3), s, fn, (2000, 2), num_steps=20))
    with pytest.warns(UserWarning, match="DDIM with clip_x0=None"):
        unclipped = sliced(
            D.sample(jax.random.key(3), s, fn, (2000, 2), num_steps=20, clip_x0=None)
        )
    assert clipped < 8 * floor, (clipped, floor)
    assert unclipped > 3 * clipped, (unclipped, clipped)


def test_large_variance_adds_sqrt_beta_noise_and_is_exact_for_standard_normal_data():
    """closed form + Monte Carlo. One step: given the same z, variance="large" differs from
    "small" by (sqrt(beta_t) - sqrt(tilde beta_t)) z for t > 0 and not at all at t = 0. Chain:
    for data N(0, I) the exact eps is sqrt(1 - alpha_bar_t) x_t, the step's mean is
    sqrt(alpha_t) x_t, and sigma_t^2 = beta_t makes each step the true reverse transition, so
    N(0, I) is kept to the last (noise-free) step: Var x_0 = alpha_0 = 0.992 after 20 cosine
    steps, where "small" would give v_{t-1} = alpha_t v_t + tilde beta_t, 0.81 (8 standard
    errors away). The sample mean and variance lie within Z = 5 standard errors of 0 and
    alpha_0 (sqrt(v / n) and v sqrt(2 / (n - 1)))."""
    s, n, z_tol = D.cosine_schedule(20), 4000, 5.0
    eps_fn = lambda x, t: D.gaussian_mixture_eps(s, x, t, jnp.zeros((1, 1)), 1.0)
    xt, z = (jax.random.normal(jax.random.key(i), (s.num_steps, 1)) for i in (20, 21))
    t = np.arange(s.num_steps)

    @jax.jit
    def steps(xt, z):
        step = lambda z, variance: D.ddpm_step(s, eps_fn, xt, t, z, variance=variance)
        return step(z, "large") - step(z, "small"), step(jnp.zeros_like(z), "large")

    difference, mean = steps(xt, z)
    betas, tilde = np.asarray(s.betas, np.float64), np.asarray(s.posterior_variance, np.float64)
    expected = (np.sqrt(betas) - np.sqrt(tilde)) * (t > 0)  # [T]
    np.testing.assert_allclose(difference, expected[:, None] * z, atol=ATOL)
    np.testing.assert_allclose(mean, np.sqrt(1.0 - betas)[:, None] * xt, rtol=RTOL, atol=ATOL)
    v_small = 1.0
    for k in range(s.num_steps - 1, -1, -1):
        v_small = (1.0 - betas[k]) * v_small + (tilde[k] if k > 0 else 0.0)
    v = 1.0 - betas[0]
    assert v - v_small > z_tol * v * math.sqrt(2.0 / (n - 1))  # "small" would fail the check
    x = np.asarray(D.sample(jax.random.key(3), s, eps_fn, (n, 1), clip_x0=None, variance="large"))
    assert abs(x.mean()) < z_tol * math.sqrt(v / n), x.mean()
    assert abs(x.var(ddof=1) - v) < z_tol * v * math.sqrt(2.0 / (n - 1)), x.var(ddof=1)


def test_vlb_weights_fall_with_t_so_l_simple_gives_low_noise_steps_less_weight():
    """closed form: lambda_t = beta_t^2 / (2 tilde beta_t alpha_t (1 - alpha_bar_t)) simplifies
    to beta_t / (2 alpha_t (1 - alpha_bar_{t-1})) for t >= 1 (float64 reference, rtol 1e-3).
    On the linear schedule it falls from 0.60 at t = 1 through every step to t = 300, and stays
    below 1/50 of that from there on, so L_simple's uniform weight gives the low-noise steps
    (small t) at least 50 times less weight, relative to the late steps, than the bound does."""
    s = D.linear_schedule(1000)
    lam = np.asarray(D.vlb_weights(s), np.float64)
    b = np.asarray(s.betas, np.float64)
    ab = np.cumprod(1.0 - b)
    # float32 schedule: 1 - alpha_bar_0 = 1e-4 is held to float32's 6e-8 spacing near 1
    np.testing.assert_allclose(lam[1:], b[1:] / (2 * (1 - b[1:]) * (1 - ab[:-1])), rtol=1e-3)
    assert abs(lam[1] - 0.60) < 0.005
    assert np.all(np.diff(lam[1:301]) < 0)
    assert lam[300:].max() < lam[1] / 50


@pytest.mark.parametrize(("sampler", "mean", "std"), [("ddpm", 2.12, 0.48), ("ddim", 2.51, 0.29)])
def test_guidance_scale_three_lands_beyond_the_mode_and_narrower(sampler, mean, std):
    """Monte Carlo, 10,000 samples: with w = 3 on the mixture (mode +2, std 0.5) the samples'
    mean and standard deviation are the figures of derivations/12-guidance.md §4 within Z = 5
    standard errors (std / sqrt(n) for the mean, std / sqrt(2n) for the standard deviation), and
    those lie beyond the mode (mean > 2) and inside its spread (std < 0.5) by more than that."""
    x = np.asarray(_analytic_sampler(sampler)(jax.random.key(13), jnp.array([0.5, 0.5]), 1, 3.0))
    se_mean, se_std = std / math.sqrt(NUM_SAMPLES), std / math.sqrt(2 * NUM_SAMPLES)
    assert abs(x.mean() - mean) < 5 * se_mean, x.mean()
    assert abs(x.std() - std) < 5 * se_std, x.std()
    assert mean - 5 * se_mean > 2.0 and std + 5 * se_std < STD


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_with_the_true_eps_keeps_the_forward_marginals(eta):
    """Monte Carlo, 20,000 draws: x_t ~ q(x_t | x_0) and the true eps of that draw (x_0 known)
    make ddim_step a draw of q_sigma(x_prev | x_t, x_0), whose marginal is q(x_prev | x_0) =
    N(sqrt(alpha_bar_prev) x_0, 1 - alpha_bar_prev) for every eta, over a strided pair of steps
    (t = 60 to 30). Mean and variance within Z = 5 standard errors, sqrt(v / n) and
    v sqrt(2 / (n - 1))."""
    s, n, x0, t, t_prev, z_tol = D.linear_schedule(100, 1e-3, 0.2), 20_000, 0.7, 60, 30, 5.0
    ab = np.asarray(s.alpha_bars, np.float64)
    eps, z = (jax.random.normal(jax.random.key(k), (n, 1)) for k in (40, 41))
    xt = math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * eps
    true_eps = lambda x, step: (
        (x - jnp.sqrt(s.alpha_bars[step])[:, None] * x0) / jnp.sqrt(1 - s.alpha_bars[step])[:, None]
    )
    x = np.asarray(D.ddim_step(s, true_eps, xt, t, t_prev, z, eta=eta), np.float64)[:, 0]
    mean, var = math.sqrt(ab[t_prev]) * x0, 1 - ab[t_prev]
    assert abs(x.mean() - mean) < z_tol * math.sqrt(var / n), x.mean()
    assert abs(x.var(ddof=1) - var) < z_tol * var * math.sqrt(2.0 / (n - 1)), x.var(ddof=1)


def test_first_ddim_step_multiplies_an_eps_error_by_a_difference_of_large_factors():
    """closed form (derivations/13-ddim.md §4): for eta = 0 the first of 20 strided steps of
    cosine_schedule(100), from T-1 = 99 to tau_{S-2} = 94, is linear in x_{T-1} and in eps-hat
    with coefficients sqrt(ab_94 / ab_99) and -(sqrt(ab_94) sqrt(1 - ab_99) / sqrt(ab_99)
    - sqrt(1 - ab_94)), about 158 and -157: an eps error of 0.05 moves the state by about 8.
    Both derivatives by autodiff against the float64 formula, rtol 1e-4 (float32 steps)."""
    s, t, t_prev = TINY_END(), 99, 94
    assert D.ddim_timesteps(100, 20)[-2] == t_prev
    ab = np.asarray(s.alpha_bars, np.float64)
    slope_x = math.sqrt(ab[t_prev] / ab[t])
    slope_eps = -(math.sqrt(ab[t_prev]) * math.sqrt(1 - ab[t]) / math.sqrt(ab[t]))
    slope_eps += math.sqrt(1 - ab[t_prev])
    step = lambda x, e: D.ddim_step(
        s, lambda x, _: x * 0 + e, x, t, t_prev, jnp.zeros((1, 1)), eta=0.0
    )[0, 0]
    d_x, d_eps = jax.grad(step, argnums=(0, 1))(jnp.ones((1, 1)), 0.0)
    np.testing.assert_allclose([float(d_x[0, 0]), float(d_eps)], [slope_x, slope_eps], rtol=1e-4)
    assert 150 < slope_x < 165 and -165 < slope_eps < -150


# ----------------------------------------------------------------------------- DPM-Solver++(2M)


def _dpm_solver_reference(schedule, eps_fn, noise, num_steps):
    """Lu et al.'s DPM-Solver++(2M) (Algorithm 2) as a numpy loop in float64 over the strided
    steps, from log-SNRs, independent of dpm_solver_2m_coefficients."""
    ab = np.cumprod(1 - np.asarray(schedule.betas, np.float64))
    taus = np.round(np.linspace(0, schedule.num_steps - 1, num_steps)).astype(int)[::-1]
    x = np.asarray(noise, np.float64)
    states, x0_prev, h_prev = [x], None, None
    for i, t in enumerate(taus):
        eps = np.asarray(eps_fn(jnp.asarray(x, jnp.float32), jnp.full((x.shape[0],), t)))
        x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
        if i == len(taus) - 1:  # to the data: sigma = 0, first order
            x = x0
        else:
            s = taus[i + 1]
            h = 0.5 * np.log(ab[s] / (1 - ab[s])) - 0.5 * np.log(ab[t] / (1 - ab[t]))
            d = x0 if x0_prev is None else x0 + (x0 - x0_prev) * h / (2 * h_prev)
            x = np.sqrt((1 - ab[s]) / (1 - ab[t])) * x + np.sqrt(ab[s]) * -np.expm1(-h) * d
            x0_prev, h_prev = x0, h
        states.append(x)
    return np.stack(states)


def test_dpm_solver_chain_scan_equals_numpy_loop_step_for_step():
    s = D.cosine_schedule(200)
    eps_fn = _mixture_eps(s)
    noise = jax.random.normal(jax.random.key(20), (13, 16, 1))
    with pytest.warns(UserWarning, match="DDIM with clip_x0=None"):  # alpha_bar_T ~ 1e-8
        x, trajectory = D.sample(
            None,
            s,
            eps_fn,
            (16, 1),
            num_steps=12,
            method="dpm_solver_2m",
            clip_x0=None,
            noise=noise,
            return_trajectory=True,
        )
    expected = _dpm_solver_reference(s, eps_fn, noise[0], 12)
    assert trajectory.shape == (13, 16, 1)
    np.testing.assert_allclose(trajectory, expected, atol=SAMPLER_ATOL)
    np.testing.assert_allclose(x, trajectory[-1])


def test_dpm_solver_first_and_last_steps_are_ddim_steps():
    """With two steps DPM-Solver++(2M) takes only its first-order steps: DDIM (eta = 0)."""
    s = D.linear_schedule(100, 1e-3, 0.2)
    eps_fn = _mixture_eps(s)
    noise = jax.random.normal(jax.random.key(21), (3, 32, 1))
    kw = dict(num_steps=2, clip_x0=None, noise=noise, return_trajectory=True)
    dpm = D.sample(None, s, eps_fn, (32, 1), method="dpm_solver_2m", **kw)[1]
    ddim = D.sample(None, s, eps_fn, (32, 1), method="ddim", **kw)[1]
    np.testing.assert_allclose(dpm, ddim, atol=SAMPLER_ATOL)
    ratio, cur, prev = D.dpm_solver_2m_coefficients(s, 5)
    assert prev[0] == 0.0 and prev[-1] == 0.0 and np.all(prev[1:-1] < 0.0)
    assert ratio[-1] == 0.0 and cur[-1] == 1.0  # the last step returns x0-hat


# The probability-flow ODE's solution from fixed starts, by DDIM over all 1000 steps; the error
# of a sampler is the W1 distance of its endpoints (same starts) to the reference's.
ODE_SAMPLES = 4000


@functools.cache
def _ode_errors():
    s = D.cosine_schedule(1000)
    eps_fn = _mixture_eps(s)
    start = jax.random.normal(jax.random.key(22), (1, ODE_SAMPLES, 1))

    def run(method, num_steps):
        noise = jnp.concatenate([start, jnp.zeros((num_steps, ODE_SAMPLES, 1))])
        if method == "ddim":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "DDIM with clip_x0=None")
                return D.sample(
                    None,
                    s,
                    eps_fn,
                    (ODE_SAMPLES, 1),
                    num_steps=num_steps,
                    method="ddim",
                    clip_x0=None,
                    noise=noise,
                )
        return _unclipped_dpm_solver(None, s, eps_fn, (ODE_SAMPLES, 1), num_steps, noise)

    ref = run("ddim", 1000).ravel()
    return {
        (m, n): float(divergences.wasserstein_1d(run(m, n).ravel(), ref))
        for m in ("ddim", "dpm_solver_2m")
        for n in (20, 30, 50, 100)
    }


def test_dpm_solver_converges_in_fewer_steps_than_ddim():
    """On the mixture's exact eps (cosine schedule, T = 1000): 30 DPM-Solver++(2M) steps land
    closer to the ODE's solution than 50 DDIM steps, 50 closer than 100; halving the step
    halves DDIM's error (first order) and quarters the solver's (second order)."""
    err = _ode_errors()
    assert err["dpm_solver_2m", 30] < err["ddim", 50], err
    assert err["dpm_solver_2m", 50] < err["ddim", 100], err
    assert err["dpm_solver_2m", 20] < err["ddim", 20], err
    assert 1.6 < err["ddim", 50] / err["ddim", 100] < 2.6, err
    assert err["dpm_solver_2m", 50] / err["dpm_solver_2m", 100] > 3.0, err


# ----------------------------------------------------------------------------- learned variances


@given(
    t=st.integers(0, 99),
    v=st.floats(-30.0, 30.0, allow_nan=False),
)
def test_learned_variance_stays_between_the_posterior_and_forward_variances(t, v):
    s = D.cosine_schedule(100)
    log_var = float(D.learned_log_variance(s, t, jnp.full((1, 1), v, jnp.float32))[0, 0])
    small = float(s.posterior_log_variance_clipped[t])
    large = float(np.log(s.betas[t]))
    lo, hi = min(small, large), max(small, large)
    assert lo - 1e-5 <= log_var <= hi + 1e-5
    if t > 0:  # beta-tilde_t <= beta_t: the interval is [beta-tilde_t, beta_t]
        assert small <= large + 1e-6


def test_learned_variance_ends_and_middle():
    s = D.linear_schedule(50, 1e-3, 0.2)
    t = jnp.array([1, 10, 49])
    ends = D.learned_log_variance(s, t, jnp.array([[-40.0], [0.0], [40.0]]))[:, 0]
    small, large = s.posterior_log_variance_clipped[t], jnp.log(s.betas[t])
    np.testing.assert_allclose(ends[0], small[0], rtol=RTOL)
    np.testing.assert_allclose(ends[1], 0.5 * (small[1] + large[1]), rtol=RTOL)
    np.testing.assert_allclose(ends[2], large[2], rtol=RTOL)


def test_learned_ddpm_step_interpolates_between_the_fixed_steps(key):
    """v -> +inf gives the "large" step, v -> -inf the "small" one; DDIM and DPM-Solver drop v."""
    s = D.cosine_schedule(40)
    eps_fn = _mixture_eps(s)
    xt, z = jax.random.normal(key, (2, 8, 1))
    for v, fixed in ((40.0, "large"), (-40.0, "small")):
        learned = lambda x, t, v=v: jnp.concatenate([eps_fn(x, t), jnp.full_like(x, v)], -1)
        np.testing.assert_allclose(
            D.ddpm_step(s, learned, xt, 20, z, variance="learned"),
            D.ddpm_step(s, eps_fn, xt, 20, z, variance=fixed),
            atol=ATOL,
        )
    for method in ("ddim", "dpm_solver_2m"):
        kw = dict(num_steps=10, method=method, clip_x0=(-5.0, 5.0))
        np.testing.assert_allclose(
            D.sample(key, s, learned, (8, 1), variance="learned", **kw),
            D.sample(key, s, eps_fn, (8, 1), **kw),
            atol=ATOL,
        )
    full = D.sample(key, s, learned, (8, 1), variance="learned", clip_x0=None)
    assert full.shape == (8, 1) and np.all(np.isfinite(full))


def test_vlb_term_is_the_closed_form_gaussian_kl_and_its_monte_carlo_estimate(key):
    """For t > 0 the term is KL(q(x_{t-1} | x_t, x0) || N(mean, exp(log_var))): the diagonal
    Gaussians' closed form in numpy, and E_q[log q - log p] from 200 000 draws."""
    s = D.cosine_schedule(100)
    k = jax.random.split(key, 4)
    x0 = jax.random.normal(k[0], (3, 2))
    t = jnp.array([5, 40, 90])
    xt = D.q_sample(k[1], s, x0, t)
    mean = jax.random.normal(k[2], (3, 2))
    log_var = D.learned_log_variance(s, t, jax.random.normal(k[3], (3, 2)))
    term = np.asarray(D.vlb_term(s, x0, xt, t, mean, log_var))
    q_mean, q_var, _ = (np.asarray(a, np.float64) for a in D.q_posterior(s, x0, xt, t))
    p_mean, p_var = np.asarray(mean, np.float64), np.exp(np.asarray(log_var, np.float64))
    closed = 0.5 * np.sum(
        np.log(p_var / q_var) + (q_var + (q_mean - p_mean) ** 2) / p_var - 1.0, axis=1
    )
    np.testing.assert_allclose(term, closed, rtol=1e-4)
    draws = q_mean + np.sqrt(q_var) * np.random.default_rng(0).standard_normal((200_000, 3, 2))
    log_q = -0.5 * (np.log(2 * np.pi * q_var) + (draws - q_mean) ** 2 / q_var)
    log_p = -0.5 * (np.log(2 * np.pi * p_var) + (draws - p_mean) ** 2 / p_var)
    monte_carlo = np.mean(np.sum(log_q - log_p, axis=2), axis=0)  # [3]
    np.testing.assert_allclose(term, monte_carlo, rtol=0.02, atol=2e-3)


def test_vlb_term_at_the_first_step_is_the_decoder_nll(key):
    s = D.cosine_schedule(100)
    x0 = jnp.array([[-1.0, 0.0, 0.5], [1.0, -0.5, 0.25]])
    xt = D.q_sample(key, s, x0, 0)
    mean, log_var = x0 + 0.1, jnp.full_like(x0, -3.0)
    term = D.vlb_term(s, x0, xt, 0, mean, log_var, levels=9)
    expected = -discretized_gaussian_log_likelihood(x0, mean, log_var, levels=9)
    np.testing.assert_allclose(term, expected, rtol=RTOL)
    density = D.vlb_term(s, x0, xt, 0, mean, log_var, levels=None)
    expected = -np.sum(scipy_norm.logpdf(x0, mean, np.exp(-1.5)), axis=1)
    np.testing.assert_allclose(density, expected, rtol=1e-4)


@given(
    mean=st.floats(-3.0, 3.0),
    log_var=st.floats(-12.0, 3.0),
    levels=st.sampled_from([2, 17, 256]),
)
def test_discretized_gaussian_decoder_is_normalised_and_matches_scipy(mean, log_var, levels):
    grid = np.linspace(-1.0, 1.0, levels)[:, None]  # [L, 1]: every value once
    log_p = discretized_gaussian_log_likelihood(
        jnp.asarray(grid, jnp.float32),
        jnp.full((levels, 1), mean, jnp.float32),
        jnp.full((levels, 1), log_var, jnp.float32),
        levels=levels,
    )
    assert np.all(np.isfinite(log_p))
    std, h = math.exp(0.5 * log_var), 1.0 / (levels - 1)
    upper = np.where(grid[:, 0] >= 1.0, np.inf, grid[:, 0] + h)
    lower = np.where(grid[:, 0] <= -1.0, -np.inf, grid[:, 0] - h)
    probs = scipy_norm.cdf(upper, mean, std) - scipy_norm.cdf(lower, mean, std)
    np.testing.assert_allclose(np.sum(np.exp(np.asarray(log_p, np.float64))), 1.0, atol=1e-4)
    big = probs > 1e-6  # where float64 differences of the cdf are accurate
    np.testing.assert_allclose(np.exp(np.asarray(log_p))[big], probs[big], rtol=2e-3, atol=1e-6)


def test_discretized_gaussian_decoder_follows_the_log_likelihood_contract():
    """Data first, NumPy broadcasting over a leading sample axis, event axes summed (the
    contract of docs/api.md, as genjax.likelihoods' discretised logistic)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 17, (3, 5)) / 8.0 - 1.0, jnp.float32)  # [B, D] on the grid
    mean = jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32)  # [K, B, D]
    log_var = jnp.asarray(rng.normal(size=(4, 3, 5)) - 2.0, jnp.float32)
    got = discretized_gaussian_log_likelihood(x, mean, log_var, levels=17)
    assert got.shape == (4, 3)
    rows = [
        discretized_gaussian_log_likelihood(x, mean[k], log_var[k], levels=17) for k in range(4)
    ]
    np.testing.assert_allclose(got, jnp.stack(rows), rtol=1e-6, atol=1e-5)
    per_dim = discretized_gaussian_log_likelihood(x, mean, log_var, levels=17, event_ndims=0)
    np.testing.assert_allclose(np.sum(per_dim, axis=-1), got, rtol=1e-6, atol=1e-5)


def _mixture_log_density(x):
    """log of the bimodal mixture's density at x [n, 1] (numpy)."""
    comps = [scipy_norm.logpdf(x[:, 0], m, STD) for m in (-2.0, 2.0)]
    return np.logaddexp(*comps) - math.log(2.0)


@pytest.mark.parametrize("variance", ["small", "large", "learned"])
def test_vlb_bounds_the_exact_nll_of_the_mixture(variance):
    """With the exact eps the bound on -log p(x0), averaged over data, is at least the data's
    entropy E[-log q(x0)] (the model's cross-entropy is). At T = 100 the forward variance
    beta_t (right for data this broad) leaves 0.002 nats, the posterior's beta-tilde_t 0.77, and
    their geometric mean (v = 0) lies between."""
    s = D.cosine_schedule(100)
    eps_fn = _mixture_eps(s)
    if variance == "learned":  # the geometric mean of the two fixed variances (v = 0)
        model_fn = lambda x, t: jnp.concatenate([eps_fn(x, t), jnp.zeros_like(x)], -1)
    else:
        model_fn = eps_fn
    x0, _ = data.gaussian_mixture(jax.random.key(23), 4000, data.BIMODAL_MEANS, STD)
    total, terms = jax.jit(lambda k: D.vlb_nll(k, s, model_fn, x0, variance=variance, levels=None))(
        jax.random.key(24)
    )
    assert terms.shape == (4000, 101)
    np.testing.assert_allclose(np.sum(terms, axis=1), total, atol=1e-5)
    nll = -_mixture_log_density(np.asarray(x0, np.float64))
    gap = float(np.mean(total) - np.mean(nll))
    standard_error = float(np.std(np.asarray(total) - nll) / math.sqrt(4000))
    assert gap > -3 * standard_error, (gap, standard_error)
    assert gap < {"small": 1.0, "large": 0.02, "learned": 0.4}[variance], gap


def test_prior_kl_is_the_closed_form(key):
    s = D.linear_schedule(100, 1e-3, 0.2)
    x0 = jax.random.normal(key, (4, 3))
    ab = float(np.cumprod(1 - np.asarray(s.betas, np.float64))[-1])
    expected = 0.5 * np.sum(ab * np.asarray(x0) ** 2 + (1 - ab) - 1 - np.log(1 - ab), axis=1)
    np.testing.assert_allclose(D.prior_kl(s, x0), expected, rtol=1e-4)


def test_hybrid_loss_trains_the_mean_by_the_simple_loss_and_the_variance_by_the_bound(key):
    """The stop-gradient: the hybrid loss's gradient in the prediction is the simple loss's;
    its gradient in v is lambda T / D times the bound term's; with lambda = 0 it is ddpm_loss."""
    s = D.cosine_schedule(50)
    k = jax.random.split(key, 4)
    x0 = jnp.clip(jax.random.normal(k[0], (6, 4)), -1, 1)
    pred, v = jax.random.normal(k[1], (6, 4)), jax.random.normal(k[2], (6, 4))
    t, noise = jnp.array([0, 1, 5, 20, 40, 49]), jax.random.normal(k[3], (6, 4))
    opts = dict(t=t, noise=noise, levels=17)

    def hybrid(p, v, weight):
        fn = lambda xt, tt: jnp.concatenate([p, v], -1)
        return jnp.sum(D.hybrid_loss(None, s, fn, x0, vlb_weight=weight, **opts))

    simple = lambda p: jnp.sum(D.ddpm_loss(None, s, lambda xt, tt: p, x0, t=t, noise=noise))
    np.testing.assert_allclose(hybrid(pred, v, 0.0), simple(pred), rtol=RTOL)
    np.testing.assert_allclose(
        jax.grad(hybrid)(pred, v, 0.5), jax.grad(simple)(pred), rtol=RTOL, atol=ATOL
    )

    def bound(v):
        xt = D.q_sample(None, s, x0, t, noise=noise)
        out = jnp.concatenate([pred, v], -1)
        mean, log_var = D.p_mean_variance(s, out, xt, t, variance="learned")
        return jnp.sum(D.vlb_term(s, x0, xt, t, mean, log_var, levels=17))

    grad_v = jax.grad(hybrid, argnums=1)(pred, v, 0.5)
    np.testing.assert_allclose(grad_v, 0.5 * 50 / 4 * jax.grad(bound)(v), rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(grad_v)) and np.any(np.abs(grad_v) > 0)


# ----------------------------------------------------------------------------- image recipes


def _tiny_digits_task(options, conditional=True):
    from genjax.recipes import diffusion as recipe_module

    dataset = data.load_dataset("digits")
    opts = {"num_steps": 20, "base_features": 8, "sample_steps": 5, **options}
    return dataset, recipe_module.make_task(dataset, opts, conditional=conditional)


def test_learned_variance_recipe_trains_by_the_hybrid_loss_and_reports_bits_per_dim():
    """A U-Net with 2 C outputs: the loss is hybrid_loss (finite, with a gradient in every
    parameter), every sampler runs, and the test bound is finite bits/dim above zero."""
    dataset, task = _tiny_digits_task(
        {"variance": "learned", "parameterization": "v"}, conditional=False
    )
    setup = task.model
    batch = {k: v[:16] for k, v in dataset.train.items()}
    params = task.init(jax.random.key(0), batch)
    out = setup.model.apply(params, setup.encode(batch["x"]), jnp.zeros(16, jnp.int32), None)
    assert out.shape == (16, 8, 8, 2)
    loss, _ = task.loss(params, jax.random.key(1), batch)
    grads = jax.grad(lambda p: task.loss(p, jax.random.key(1), batch)[0])(params)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    for method, steps in ((None, 20), ("ddim", 5), ("dpm_solver_2m", 5)):
        x = setup.draw(params, jax.random.key(2), 4, method=method, num_steps=steps)
        assert x.shape == (4, 8, 8, 1) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    mean, bits = setup.bits_per_dim(params, jax.random.key(3), dataset.test["x"][:6], batch_size=4)
    assert bits.shape == (6,) and np.all(np.isfinite(bits)) and mean > 0.0


def test_tour_sample_sets_one_per_guidance_scale_with_w_zero_and_one_kept():
    """tour_scales gives one labelled set per scale; w = 0 is the null label's draw and w = 1
    the plain conditional draw (the same as draw with those scales)."""
    dataset, task = _tiny_digits_task({"tour_scales": (0.0, 1.0, 2.0)})
    setup = task.model
    params = task.init(jax.random.key(0), {k: v[:8] for k, v in dataset.train.items()})
    params = jax.tree.map(lambda p: p + 0.01, params)  # a non-zero output layer
    sets = setup.tour_sample_sets(params, jax.random.key(4), 10)
    assert list(sets) == ["w=0", "w=1", "w=2"]
    key = jax.random.key(4)
    np.testing.assert_allclose(sets["w=0"], setup.draw(params, key, 10, guidance_scale=0.0))
    labels = jnp.arange(10) % 10
    null = jnp.full((10,), 10)
    conditional = setup.sampler(10, False)(params, key, labels, 0.0)
    np.testing.assert_allclose(sets["w=1"], conditional, atol=1e-6)
    np.testing.assert_allclose(sets["w=0"], setup.sampler(10, False)(params, key, null, 0.0))
    assert not np.allclose(sets["w=2"], sets["w=1"])
    _, plain = _tiny_digits_task({})
    assert plain.model.tour_sample_sets(params, key, 10) == {}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "label", "gan_fid"),
    [("diffusion_digits_cfg", "w=1.5", 3.21), ("diffusion_digits", None, 5.80)],
)
def test_tour_budget_diffusion_beats_the_gans_fid(name, label, gan_fid):
    """The tour's path (2 500 steps, DPM-Solver++(2M) in 10 steps, key 2, 360 samples) scored
    like the tour's FID table, in the features of a digits CNN trained as the tour trains it:
    the guided model at w = 1.5 below the conditional GAN's FID of the full tour (3.21), the
    unconditional one below the DCGAN's (5.80). Measured: 2.58 and 4.40."""
    from genjax import classifier, metrics, recipes, tour

    recipe = recipes.all_recipes()[name]
    dataset, task, state, _ = recipes.run(jax.random.key(1), recipe, "tour")
    drawn = tour.sample_sets(jax.random.key(2), task, state.ema_params, dataset)
    images = drawn[label] if label else drawn
    net = classifier.train_cnn_classifier(dataset, steps=tour.CNN_STEPS["tour"])
    test = dataset.test["x"]
    quality = metrics.image_quality(
        jax.random.key(3), net, test, images, num_subsets=tour.KID_SUBSETS,
        subset_size=len(test) // 2,
    )  # fmt: skip
    assert quality["fid"] < gan_fid, quality
