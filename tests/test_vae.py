"""Tests for genjax.vae: KL, reparameterisation, pixel likelihoods, ELBO, IWAE, IS-NLL, models.

The bounds are checked on the linear-Gaussian model (probabilistic PCA), where log p(x) and the
posterior are known in closed form, so every gap is a number to compare with. Monte Carlo checks
use tolerances of a stated number of standard errors; each test's seed is fixed.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from genjax import data as data_lib
from genjax import likelihoods as L
from genjax import metrics
from genjax import vae as V
from genjax.divergences import gaussian_kl

RTOL = 1e-5
ATOL = 1e-5
NUM_SE = 4.0  # Monte Carlo tolerance, in standard errors (a false alarm 6e-5 of the time)


def _floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, width=32)


# ----------------------------------------------------------------------------- the linear model


def _linear_model(key, big_d=5, d=2, orthogonal=True):
    """A PPCA model: W [D, d] (orthogonal columns if asked), b [D], log sigma^2."""
    k_w, k_b = jax.random.split(key)
    w = jax.random.normal(k_w, (big_d, d))
    if orthogonal:
        q, _ = jnp.linalg.qr(w)  # [D, d] orthonormal columns
        w = q * jnp.arange(1.0, d + 1.0)[None, :]  # distinct column norms 1..d
    b = 0.3 * jax.random.normal(k_b, (big_d,))
    return w, b, jnp.float32(math.log(0.25))


def _linear_fns(w, b, log_var, enc_mean, enc_log_var):
    """encode/log_likelihood closures of the linear-Gaussian decoder with a given encoder."""

    def encode(x):
        return enc_mean(x), enc_log_var(x)

    def log_likelihood(z, x):
        mean = jnp.einsum("...d,Dd->...D", z, w)  # [*sample, B, D]
        mean = mean + jnp.reshape(b, (1,) * (mean.ndim - 1) + b.shape)
        return L.gaussian_log_likelihood(x, mean, log_var)  # x [B, D] broadcasts: [*sample, B]

    return encode, log_likelihood


def _posterior_maps(w, b, log_var):
    """The exact posterior as arrays: mean(x) = (x - b) @ gain, and its diagonal log-variance
    (computed once with linear_gaussian_posterior, so the encoders below are plain matmuls)."""
    big_d = w.shape[0]
    gain, cov = V.linear_gaussian_posterior(jnp.eye(big_d) + b[None, :], w, b, log_var)  # [D, d]
    return gain, jnp.log(jnp.diag(cov))  # [D, d], [d]


def _exact_posterior_fns(w, b, log_var, shift=0.0, log_var_shift=0.0):
    """The optimal encoder q(z|x) = p(z|x) (diagonal: W's columns are orthogonal), or, with
    shifts, a sub-optimal one: the exact posterior moved by ``shift`` and widened."""
    gain, post_log_var = _posterior_maps(w, b, log_var)

    def enc_mean(x):
        return (x - b[None, :]) @ gain + shift  # [B, d]

    def enc_log_var(x):
        return jnp.broadcast_to(post_log_var + log_var_shift, (x.shape[0], w.shape[1]))

    return _linear_fns(w, b, log_var, enc_mean, enc_log_var)


def _perturbed_fns(w, b, log_var):
    return _exact_posterior_fns(w, b, log_var, shift=0.4, log_var_shift=0.5)


def _linear_data(key, w, b, log_var, n=4):
    k_z, k_e = jax.random.split(key)
    z = jax.random.normal(k_z, (n, w.shape[1]))
    return z @ w.T + b[None, :] + jnp.exp(0.5 * log_var) * jax.random.normal(k_e, (n, w.shape[0]))


# ----------------------------------------------------------------------------- KL


@given(
    st.lists(_floats(-3, 3), min_size=3, max_size=3),
    st.lists(_floats(-2, 2), min_size=3, max_size=3),
    st.lists(_floats(-3, 3), min_size=3, max_size=3),
    st.lists(_floats(-2, 2), min_size=3, max_size=3),
)
def test_gaussian_kl_matches_numpy_reference(mq, lq, mp, lp):
    """Against the textbook form in variances, in float64:
    KL = sum log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2."""
    got = gaussian_kl(jnp.array(mq), jnp.array(lq), jnp.array(mp), jnp.array(lp))
    sq, sp = np.exp(0.5 * np.array(lq, np.float64)), np.exp(0.5 * np.array(lp, np.float64))
    diff = np.array(mq, np.float64) - np.array(mp, np.float64)
    want = np.sum(np.log(sp / sq) + (sq**2 + diff**2) / (2 * sp**2) - 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "mq, lq, mp, lp", [(0.0, 0.0, 0.0, 0.0), (1.0, -1.0, -0.5, 0.7), (-2.0, 1.5, 0.3, -1.2)]
)
def test_gaussian_kl_matches_quadrature(mq, lq, mp, lp):
    """1-D closed form = the KL integral of q log(q/p) by scipy quadrature (float64)."""
    got = float(gaussian_kl(jnp.array([mq]), jnp.array([lq]), jnp.array([mp]), jnp.array([lp])))
    q = scipy.stats.norm(mq, math.exp(0.5 * lq))
    p = scipy.stats.norm(mp, math.exp(0.5 * lp))
    want = scipy.integrate.quad(
        lambda t: q.pdf(t) * (q.logpdf(t) - p.logpdf(t)), q.ppf(1e-12), q.ppf(1 - 1e-12)
    )[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_gaussian_kl_matches_monte_carlo(key):
    """KL(q||p) = E_q[log q(z) - log p(z)]: closed form within NUM_SE standard errors."""
    mq, lq = jnp.array([0.5, -1.0, 2.0]), jnp.array([0.3, -0.7, 0.0])
    mp, lp = jnp.array([0.0, 0.5, 1.0]), jnp.array([0.0, 0.4, -0.5])
    z = V.reparameterize(key, mq, lq, num_samples=100_000)  # [S, 3]
    log_ratio = L.gaussian_log_likelihood(z, mq, lq) - L.gaussian_log_likelihood(z, mp, lp)
    mc, se = float(jnp.mean(log_ratio)), float(jnp.std(log_ratio)) / math.sqrt(z.shape[0])
    assert abs(float(gaussian_kl(mq, lq, mp, lp)) - mc) < NUM_SE * se


@given(
    st.lists(_floats(-3, 3), min_size=2, max_size=2),
    st.lists(_floats(-2, 2), min_size=2, max_size=2),
    st.lists(_floats(-1, 1), min_size=2, max_size=2),
    st.lists(_floats(-1, 1), min_size=2, max_size=2),
)
def test_gaussian_kl_nonnegative_and_zero_only_at_equality(mq, lq, dm, dl):
    mq, lq = jnp.array(mq), jnp.array(lq)
    mp, lp = mq + jnp.array(dm), lq + jnp.array(dl)
    kl = float(gaussian_kl(mq, lq, mp, lp))
    assert kl >= -ATOL
    assert abs(float(gaussian_kl(mq, lq, mq, lq))) < ATOL
    distance = max(max(map(abs, dm)), max(map(abs, dl)))
    if distance > 1e-2:
        assert kl > 0.0


# ----------------------------------------------------------------------------- reparameterisation


def test_reparameterize_formula_with_injected_noise():
    mean, log_var, eps = jnp.array([1.0, -2.0]), jnp.array([0.0, math.log(4.0)]), jnp.ones(2)
    np.testing.assert_allclose(V.reparameterize(None, mean, log_var, eps), [2.0, 0.0], rtol=RTOL)


def test_reparameterize_has_the_stated_mean_and_variance(key):
    mean, log_var = jnp.array([1.5, -0.5, 0.0]), jnp.array([0.0, math.log(0.09), math.log(4.0)])
    n = 200_000
    z = np.asarray(V.reparameterize(key, mean, log_var, num_samples=n), np.float64)  # [n, 3]
    var = np.exp(np.asarray(log_var, np.float64))
    assert np.all(np.abs(z.mean(0) - np.asarray(mean)) < NUM_SE * np.sqrt(var / n))
    # Var of the sample variance of a normal: 2 sigma^4 / (n - 1).
    assert np.all(np.abs(z.var(0, ddof=1) - var) < NUM_SE * var * np.sqrt(2 / (n - 1)))


def _quadratic(a, c):
    """f(z) = sum_i a_i z_i^2 + c_i z_i, and the analytic gradient of E f under N(mu, sigma^2):
    d/dmu = 2 a mu + c, d/dlog_var = a sigma^2."""
    f = lambda z: jnp.sum(a[None] * z**2 + c[None] * z, axis=-1)  # [S]

    def grads(mean, log_var):
        return 2 * a * mean + c, a * jnp.exp(log_var)

    return f, grads


@pytest.mark.parametrize("estimator", ["reparameterization", "score_function"])
def test_gradient_estimators_match_the_analytic_gradient(key, estimator):
    """Both estimators are unbiased: 50 independent estimates from 2000 draws each average to
    within NUM_SE standard errors of the analytic gradient of E[f(z)] for a quadratic f."""
    a, c = jnp.array([1.0, -0.5, 2.0]), jnp.array([0.3, 1.0, -1.0])
    mean, log_var = jnp.array([0.5, -1.0, 0.2]), jnp.array([0.0, -0.5, 0.4])
    f, grads = _quadratic(a, c)
    fn = lambda e: V.expectation_gradient(
        None, f, mean, log_var, 2000, estimator=estimator, noise=e
    )
    noise = jax.random.normal(key, (50, 2000, 3))
    estimates = jax.jit(jax.vmap(fn))(noise)
    for got, want in zip(estimates, grads(mean, log_var), strict=True):
        se = jnp.std(got, axis=0, ddof=1) / math.sqrt(got.shape[0])
        assert jnp.all(jnp.abs(jnp.mean(got, axis=0) - want) < NUM_SE * se)


def test_reparameterization_gradient_has_lower_variance_than_score_function(key):
    a, c = jnp.array([1.0, -0.5, 2.0]), jnp.array([0.3, 1.0, -1.0])
    mean, log_var = jnp.array([0.5, -1.0, 0.2]), jnp.array([0.0, -0.5, 0.4])
    f, _ = _quadratic(a, c)
    noise = jax.random.normal(key, (200, 10, 3))
    var = {}
    for name in V.ESTIMATORS:
        fn = lambda e, name=name: V.expectation_gradient(
            None, f, mean, log_var, 10, estimator=name, noise=e
        )
        est = jax.jit(jax.vmap(fn))(noise)
        var[name] = float(jnp.sum(jnp.var(est[0], axis=0)))
    assert var["reparameterization"] < 0.5 * var["score_function"]


def test_reparameterize_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"shapes must match: mean \(3, 2\), log_var \(3, 4\)"):
        V.reparameterize(None, jnp.zeros((3, 2)), jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="noise must have shape"):
        V.reparameterize(None, jnp.zeros((3, 2)), jnp.zeros((3, 2)), noise=jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        V.reparameterize(None, jnp.zeros(2), jnp.zeros(2), num_samples=-1)


# ----------------------------------------------------------------------------- exact case


def test_linear_gaussian_log_marginal_matches_scipy(key):
    w, b, log_var = _linear_model(key, orthogonal=False)
    x = _linear_data(jax.random.fold_in(key, 1), w, b, log_var, n=6)
    cov = np.asarray(w @ w.T, np.float64) + math.exp(float(log_var)) * np.eye(5)
    want = scipy.stats.multivariate_normal(np.asarray(b, np.float64), cov).logpdf(np.asarray(x))
    np.testing.assert_allclose(V.linear_gaussian_log_marginal(x, w, b, log_var), want, rtol=1e-4)


def test_linear_gaussian_posterior_is_bayes_rule(key):
    """Mean and covariance agree with Gaussian conditioning of the joint (z, x) in float64."""
    w, b, log_var = _linear_model(key, orthogonal=False)
    x = _linear_data(jax.random.fold_in(key, 1), w, b, log_var, n=3)
    wn, s2 = np.asarray(w, np.float64), math.exp(float(log_var))
    cxx = wn @ wn.T + s2 * np.eye(5)  # Cov[x]
    gain = wn.T @ np.linalg.inv(cxx)  # Cov[z, x] Cov[x]^-1
    want_mean = (np.asarray(x) - np.asarray(b)) @ gain.T
    want_cov = np.eye(2) - gain @ wn
    mean, cov = V.linear_gaussian_posterior(x, w, b, log_var)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-4, atol=1e-6)


def test_elbo_equals_log_px_at_the_exact_posterior(key):
    """With q = p(z|x) every importance weight equals p(x): the one-sample ELBO (sampled KL),
    the analytic-KL ELBO in expectation, and IWAE for any k all equal log p(x)."""
    w, b, log_var = _linear_model(key)
    x = _linear_data(jax.random.fold_in(key, 1), w, b, log_var)
    log_px = V.linear_gaussian_log_marginal(x, w, b, log_var)
    encode, log_lik = _exact_posterior_fns(w, b, log_var)
    one_sample = jax.jit(lambda k: V.elbo(k, encode, log_lik, x, analytic_kl=False).total)
    iwae = jax.jit(lambda k: V.iwae_bound(k, encode, log_lik, x, 7))
    for i in range(2):
        k = jax.random.fold_in(key, 10 + i)
        np.testing.assert_allclose(one_sample(k), log_px, rtol=1e-4)
        np.testing.assert_allclose(iwae(k), log_px, rtol=1e-4)
    analytic = jax.jit(jax.vmap(lambda k: V.elbo(k, encode, log_lik, x).total))(
        jax.random.split(key, 4000)
    )  # [4000, B]
    se = jnp.std(analytic, axis=0) / math.sqrt(analytic.shape[0])
    assert jnp.all(jnp.abs(jnp.mean(analytic, axis=0) - log_px) < NUM_SE * se + 1e-4)


def test_elbo_gap_is_the_kl_to_the_posterior(key):
    """log p(x) - E[ELBO] = KL(q || p(z|x)) > 0 for a sub-optimal diagonal q."""
    w, b, log_var = _linear_model(key)
    x = _linear_data(jax.random.fold_in(key, 1), w, b, log_var)
    log_px = V.linear_gaussian_log_marginal(x, w, b, log_var)
    encode, log_lik = _perturbed_fns(w, b, log_var)
    post_mean, post_cov = V.linear_gaussian_posterior(x, w, b, log_var)
    q_mean, q_log_var = encode(x)
    post_log_var = jnp.broadcast_to(jnp.log(jnp.diag(post_cov)), q_mean.shape)
    gap = gaussian_kl(q_mean, q_log_var, post_mean, post_log_var)  # [B]
    totals = jax.jit(jax.vmap(lambda k: V.elbo(k, encode, log_lik, x).total))(
        jax.random.split(key, 4000)
    )  # [4000, B]
    mc, se = jnp.mean(totals, axis=0), jnp.std(totals, axis=0) / math.sqrt(totals.shape[0])
    assert jnp.all(gap > 0.1)
    assert jnp.all(mc < log_px)
    assert jnp.all(jnp.abs(log_px - mc - gap) < NUM_SE * se)


def test_iwae_bound_is_non_decreasing_in_k_and_approaches_log_px(key):
    w, b, log_var = _linear_model(key)
    x = _linear_data(jax.random.fold_in(key, 1), w, b, log_var, n=2)
    log_px = V.linear_gaussian_log_marginal(x, w, b, log_var)
    encode, log_lik = _perturbed_fns(w, b, log_var)
    repeats, ks = 200, (1, 4, 32, 256)

    @jax.jit
    def bounds(keys):  # {k: [repeats, B]}, independent draws for every k
        return {
            k: jax.vmap(lambda r, k=k: V.iwae_bound(r, encode, log_lik, x, k))(keys[i])
            for i, k in enumerate(ks)
        }

    keys = jnp.stack([jax.random.split(jax.random.fold_in(key, k), repeats) for k in ks])
    out = bounds(keys)
    means = [jnp.mean(out[k], axis=0) for k in ks]
    ses = [jnp.std(out[k], axis=0) / math.sqrt(repeats) for k in ks]
    for lo, hi, se_lo, se_hi in zip(means, means[1:], ses, ses[1:], strict=False):
        assert jnp.all(hi > lo - NUM_SE * jnp.hypot(se_lo, se_hi))
    assert jnp.all(means[-1] <= log_px + NUM_SE * ses[-1])
    assert jnp.all(log_px - means[-1] < 0.05 * (log_px - means[0]))


def test_importance_sampled_nll_chunks_are_one_logsumexp(key):
    """Chunked evaluation (k not a multiple of the chunk) equals one logsumexp over the
    concatenated weights of the same draws, and is -log p(x) at the exact posterior."""
    w, b, log_var = _linear_model(key)
    x = _linear_data(jax.random.fold_in(key, 1), w, b, log_var)
    encode, log_lik = _perturbed_fns(w, b, log_var)
    got = V.importance_sampled_nll(key, encode, log_lik, x, 23, chunk_size=10)
    # the same draws: chunk c is a [10, B, d] standard normal from fold_in(key, c), and only
    # the first 3 draws of the last chunk count; log sum_s w_s of each chunk is its IWAE + log k
    shape = (10, x.shape[0], w.shape[1])
    noise = [jax.random.normal(jax.random.fold_in(key, c), shape) for c in range(3)]
    sums = [
        V.iwae_bound(None, encode, log_lik, x, k, noise=e[:k]) + math.log(k)
        for e, k in zip(noise, (10, 10, 3), strict=True)
    ]  # 3 x [B]
    np.testing.assert_allclose(
        got, math.log(23) - jax.nn.logsumexp(jnp.stack(sums), axis=0), rtol=RTOL
    )
    exact_encode, exact_lik = _exact_posterior_fns(w, b, log_var)
    log_px = V.linear_gaussian_log_marginal(x, w, b, log_var)
    nll = jax.jit(
        lambda x: V.importance_sampled_nll(key, exact_encode, exact_lik, x, 2000, chunk_size=500)
    )(x)
    np.testing.assert_allclose(nll, -log_px, rtol=1e-4)


def test_bounds_reject_bad_input(key):
    w, b, log_var = _linear_model(key)
    x = _linear_data(key, w, b, log_var)
    encode, log_lik = _exact_posterior_fns(w, b, log_var)
    for bad in (-3, 0, 2.5):
        with pytest.raises(ValueError, match="num_samples must be a positive int"):
            V.iwae_bound(key, encode, log_lik, x, bad)
        with pytest.raises(ValueError, match="num_samples must be a positive int"):
            V.importance_sampled_nll(key, encode, log_lik, x, bad)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        V.importance_sampled_nll(key, encode, log_lik, x, 10, chunk_size=0)
    short = lambda x: (jnp.zeros((x.shape[0], 2)), jnp.zeros((x.shape[0], 3)))
    with pytest.raises(ValueError, match=r"shapes must match: encode\(x\) mean \(4, 2\), encode"):
        V.elbo(key, short, log_lik, x)
    with pytest.raises(ValueError, match=r"log_likelihood\(z, x\) must return"):
        V.elbo(key, encode, lambda z, x: jnp.zeros(z.shape), x)
    with pytest.raises(ValueError, match=r"shapes must match: posterior mean \(4, 2\), prior mean"):
        V.elbo(key, encode, log_lik, x, prior=(jnp.zeros((3, 2)), 0.0))
    with pytest.raises(ValueError, match="x must be"):
        V.linear_gaussian_log_marginal(jnp.zeros((2, 4)), w, b, log_var)


def test_elbo_same_with_and_without_jit_and_beta_weights_the_kl(key):
    w, b, log_var = _linear_model(key)
    x = _linear_data(key, w, b, log_var)
    encode, log_lik = _perturbed_fns(w, b, log_var)
    eager = V.elbo(key, encode, log_lik, x, beta=0.5)
    jitted = jax.jit(lambda x: V.elbo(key, encode, log_lik, x, beta=0.5))(x)
    for a, c in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, c, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(eager.total, eager.reconstruction - 0.5 * eager.kl, rtol=RTOL)
    sampled = V.elbo(key, encode, log_lik, x, analytic_kl=False)
    np.testing.assert_allclose(sampled.reconstruction, eager.reconstruction, rtol=RTOL)


def test_mean_over_pixels_is_a_beta_vae_with_beta_equal_to_the_pixel_count(key):
    """Averaging the reconstruction term over the D pixels instead of summing it divides it by
    D: the loss becomes (1/D) times the negative beta-ELBO with beta = D, which is no longer a
    bound on log p(x). Summing over pixels (then averaging over the batch) keeps beta = 1."""
    w, b, log_var = _linear_model(key)
    x = _linear_data(key, w, b, log_var)
    encode, log_lik = _perturbed_fns(w, b, log_var)
    big_d = x.shape[-1]

    @jax.jit
    def losses(x):
        terms = V.elbo(key, encode, log_lik, x)
        per_pixel = -terms.reconstruction / big_d + terms.kl  # "mean over pixels" + KL
        beta_d = V.elbo(key, encode, log_lik, x, beta=float(big_d))
        return terms, per_pixel, beta_d.total

    terms, per_pixel_loss, beta_d_total = losses(x)
    np.testing.assert_allclose(per_pixel_loss, -beta_d_total / big_d, rtol=RTOL, atol=ATOL)
    # the KL now weighs D times more against the reconstruction than in the ELBO
    assert np.all(np.asarray(terms.kl) > 0.1)
    assert not np.allclose(-big_d * per_pixel_loss, terms.total, rtol=0.1)


def test_bits_per_dim_is_the_discrete_bound():
    """(nll + D ln L) / (D ln 2) with nll = -log p: the uniform density on [0, 1)^D (log p = 0)
    is the uniform distribution over the L^D pixel values, log2 L bits per dimension; binary
    data take no offset. The recipes report metrics.bits_per_dim of the VAE's -NLL."""
    bits_per_dim = metrics.bits_per_dim
    np.testing.assert_allclose(bits_per_dim(np.zeros(3), 64, 17), np.full(3, math.log2(17)))
    np.testing.assert_allclose(bits_per_dim(-64 * math.log(2.0), 64, None), 1.0, rtol=RTOL)
    np.testing.assert_allclose(
        bits_per_dim(64 * math.log(17), 64, 17), 0.0, atol=1e-12
    )  # a density of L^D on one bin: that bin has probability 1


def test_kl_warmup_is_linear_then_one():
    assert [float(V.kl_warmup(t, 10)) for t in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    assert float(V.kl_warmup(3, 0)) == 1.0
    with pytest.raises(ValueError, match="warmup_steps"):
        V.kl_warmup(3, -1)


# ----------------------------------------------------------------------------- models


def _init_key(key):
    """An RngBitGenerator key for parameter initialisation: XLA on CPU compiles threefry
    draws for convolution kernels very slowly, and the values do not matter to these tests."""
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="unsafe_rbg")


def _model(kind, likelihood):
    if kind == "CVAE":
        return V.CVAE(
            (8, 8, 1),
            10,
            latent_dim=4,
            hidden=(16,),
            likelihood=likelihood,
            label_features=3,
            learned_prior=True,
        )
    if kind == "VAE":
        return V.VAE((8, 8, 1), latent_dim=4, hidden=(16,), likelihood=likelihood)
    return V.ConvVAE((8, 8, 1), latent_dim=4, features=(4, 8), hidden=16, likelihood=likelihood)


@pytest.mark.parametrize(
    "kind, likelihood",
    [
        ("ConvVAE", L.Likelihood("bernoulli")),
        ("CVAE", L.Likelihood("logistic", levels=17)),
    ],
)
def test_models_bind_to_the_bounds(key, kind, likelihood):
    """Every model and likelihood gives finite [B] bounds, IWAE_1 = the sampled-KL ELBO with the
    same draw, and [n, *event] samples in [0, 1] (for likelihoods on [0, 1])."""
    x = jnp.round(jax.random.uniform(key, (3, 8, 8, 1)) * 16) / 16
    y = jnp.array([0, 4, 9]) if kind == "CVAE" else None
    model = _model(kind, likelihood)

    @jax.jit
    def run(key, x, y):
        params = model.init(_init_key(key), x, *(() if y is None else (y,)))
        bound = V.bind(model, params, y)
        noise = jax.random.normal(key, (1, 3, 4))
        args = (key, bound.encode, bound.log_likelihood, x)
        terms = V.elbo(*args, prior=bound.prior, analytic_kl=False, noise=noise[0])
        iwae = V.iwae_bound(*args, 1, prior=bound.prior, noise=noise)
        return terms.total, iwae, V.sample(key, model, params, 3, labels=y)

    total, iwae, samples = run(key, x, y)
    assert total.shape == (3,) and np.all(np.isfinite(total))
    np.testing.assert_allclose(iwae, total, rtol=1e-4)
    assert samples.shape == (3, 8, 8, 1)
    if likelihood.kind != "gaussian" and likelihood.kind != "gaussian_fixed":
        assert np.all((samples >= 0) & (samples <= 1))


def test_sample_temperature_scales_the_prior_standard_deviation(key):
    """sample decodes z = mu + tau sigma eps: tau = 1 is a draw from the prior (bit for bit the
    decoder means at the standard-normal draw of key), tau = 0 decodes the prior mean, and a
    CVAE's learned prior N(mu_y, sigma_y^2) is scaled about mu_y."""
    vae = _model("VAE", L.Likelihood("bernoulli"))
    x = jnp.zeros((5, 8, 8, 1))
    params = jax.jit(vae.init)(_init_key(key), x)
    eps = jax.random.normal(key, (5, 4))  # [n, d]
    means = lambda z: jax.nn.sigmoid(vae.apply(params, z, method=vae.decode)[..., 0])
    np.testing.assert_array_equal(V.sample(key, vae, params, 5), means(eps))
    for tau in (0.5, 0.0):
        got = V.sample(key, vae, params, 5, temperature=tau)
        np.testing.assert_allclose(got, means(tau * eps), rtol=RTOL, atol=ATOL)
    cvae = _model("CVAE", L.Likelihood("bernoulli"))
    y = jnp.array([0, 3, 3, 7, 9])
    cparams = jax.jit(cvae.init)(_init_key(key), x, y)
    table = jax.random.normal(jax.random.fold_in(key, 1), (10, 8))  # [classes, 2 d]
    cparams = {"params": {**cparams["params"], "prior_table": {"embedding": table}}}
    mu, log_var = table[y, :4], table[y, 4:]  # [n, d] each
    decode = lambda z: jax.nn.sigmoid(cvae.apply(cparams, z, y, method=cvae.decode)[..., 0])
    got = V.sample(key, cvae, cparams, 5, labels=y, temperature=0.5)
    want = decode(mu + 0.5 * jnp.exp(0.5 * log_var) * eps)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_bound_log_likelihood_decodes_each_sample(key):
    """log_likelihood on z [k, B, d] equals k separate calls on z [B, d] (a categorical
    decoder: the parameter axis holds 17 logits per pixel)."""
    likelihood = L.Likelihood("categorical", levels=17)
    model = V.VAE((4,), latent_dim=2, hidden=(8,), likelihood=likelihood)
    x = jnp.round(jax.random.uniform(key, (3, 4)) * 16) / 16  # [3, 4] on the 17-level grid
    bound = V.bind(model, jax.jit(model.init)(_init_key(key), x))
    z = jax.random.normal(key, (5, 3, 2))
    stacked = jax.jit(bound.log_likelihood)(z, x)  # [5, 3]
    single = jax.jit(jax.vmap(bound.log_likelihood, in_axes=(0, None)))(z, x)
    np.testing.assert_allclose(stacked, single, rtol=RTOL)


def test_models_reject_bad_input(key):
    x = jnp.zeros((2, 8, 8, 1))
    cvae = V.CVAE((8, 8, 1), 10, latent_dim=2, hidden=(8,))
    params = jax.jit(cvae.init)(_init_key(key), x, jnp.array([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        V.bind(cvae, params, jnp.array([3, 10]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        V.sample(key, cvae, params, 2, labels=jnp.array([-1, 0]))
    with pytest.raises(TypeError, match="labels must be integers"):
        V.bind(cvae, params, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="a CVAE needs labels"):
        V.bind(cvae, params)
    with pytest.raises(ValueError, match=r"labels must have shape \[2\]"):
        cvae.apply(params, x, jnp.array([0, 1, 2]), method=cvae.encode)
    vae = V.VAE((8, 8, 1), latent_dim=2, hidden=(8,))
    vparams = jax.jit(vae.init)(_init_key(key), x)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 8, 8, 1\]"):
        vae.apply(vparams, jnp.zeros((2, 64)), method=vae.encode)
    with pytest.raises(ValueError, match=r"z must have shape \[B, 2\]"):
        vae.apply(vparams, jnp.zeros((2, 3)), method=vae.decode)
    with pytest.raises(ValueError, match="is unconditional"):
        V.bind(vae, vparams, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="divisible by"):
        jax.eval_shape(V.ConvVAE((6, 6, 1)).init, key, jnp.zeros((1, 6, 6, 1)))


def test_learned_prior_optimum_is_the_aggregate_posterior_moments(key):
    """For fixed posteriors q_n = N(m_n, s_n^2) of one class, sum_n KL(q_n || N(mu, e^lam)) is
    minimised at mu = mean_n m_n and e^lam = mean_n (s_n^2 + (m_n - mu)^2): the gradient
    vanishes there and moving either parameter increases the sum."""
    m = jax.random.normal(key, (50, 3))
    lv = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (50, 3))
    mu = jnp.mean(m, axis=0)
    lam = jnp.log(jnp.mean(jnp.exp(lv) + (m - mu[None]) ** 2, axis=0))

    @jax.jit
    def total(mu, lam):
        full = lambda a: jnp.broadcast_to(a[None], m.shape)  # [50, 3]
        return jnp.sum(gaussian_kl(m, lv, full(mu), full(lam)))

    g_mu, g_lam = jax.jit(jax.grad(total, argnums=(0, 1)))(mu, lam)
    np.testing.assert_allclose(g_mu, 0.0, atol=1e-4)
    np.testing.assert_allclose(g_lam, 0.0, atol=1e-4)
    best = float(total(mu, lam))
    for dm, dl in ((0.1, 0.0), (-0.1, 0.0), (0.0, 0.1), (0.0, -0.1)):
        assert float(total(mu + dm, lam + dl)) > best


def test_cvae_learned_prior_starts_at_the_standard_normal(key):
    x = jnp.zeros((2, 8, 8, 1))
    y = jnp.array([1, 7])
    model = V.CVAE((8, 8, 1), 10, latent_dim=3, hidden=(8,), learned_prior=True)
    params = jax.jit(model.init)(_init_key(key), x, y)
    mean, log_var = model.apply(params, y, method=model.prior)
    np.testing.assert_allclose(mean, 0.0)
    np.testing.assert_allclose(log_var, 0.0)


@pytest.mark.slow
def test_cvae_decodes_to_the_requested_class():
    """A CVAE trained at the tour's budget on digits: a classifier fitted on real digits
    recognises the requested class in most of its samples (chance is 10 %)."""
    from genjax.recipes import vae as recipes
    from genjax.train import fit

    dataset = data_lib.load_dataset("digits")
    recipe = recipes.RECIPES["cvae_digits"]
    task = recipe.make_task(dataset, {})
    state = fit(task, dataset.train, recipe.config(False), progress=False)
    accuracy = recipes.class_accuracy(jax.random.key(1), task, state.ema_params, dataset)
    assert accuracy > 0.8


def test_class_accuracy_reads_the_requested_class():
    """The sample-accuracy check of the CVAE recipe: a CVAE whose decoder ignores z and emits
    the training mean image of the requested class scores near 1; the same decoder with its
    classes shifted by one (it draws class c + 1 when asked for c) scores near 0."""
    from genjax.recipes import vae as recipes

    dataset = data_lib.load_dataset("digits")
    options = {"latent_dim": 2, "hidden": (), "likelihood": "gaussian_fixed", "eval_samples": 1}
    task = recipes.make_task(dataset, options, kind="CVAE")
    setup = task.model
    batch = {k: v[:4] for k, v in dataset.train.items()}
    params = setup.init(jax.random.key(0), batch)
    x, y = dataset.train["x"].reshape(len(dataset.train["x"]), -1), dataset.train["y"]
    means = np.stack([x[y == c].mean(0) for c in range(10)])  # [10, 64] class mean images

    def with_table(table):
        dense = dict(params["params"]["decoder"]["dense_0"])
        dense["kernel"] = jnp.concatenate([jnp.zeros((2, 64)), jnp.asarray(table, jnp.float32)])
        dense["bias"] = jnp.zeros(64)
        decoder = {**params["params"]["decoder"], "dense_0": dense}
        return {"params": {**params["params"], "decoder": decoder}}

    key = jax.random.key(3)
    right = recipes.class_accuracy(key, task, with_table(means), dataset, per_class=10)
    shifted = recipes.class_accuracy(
        key, task, with_table(np.roll(means, -1, 0)), dataset, per_class=10
    )
    assert right > 0.9
    assert shifted < 0.1
