"""Divergences against scipy and the identities of derivations/07-divergences.md: TVD, KL, JS
bounds and symmetries, Pinsker, exact 1-D Wasserstein (scipy, shift, quantile form), sliced
Wasserstein closed forms, the Gaussian KL and the Gaussian W2 (1-D closed form, scipy sqrtm)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from genjax.divergences import (
    gaussian_kl,
    gaussian_w2,
    js,
    js_from_logits,
    kl,
    kl_from_logits,
    sliced_wasserstein,
    tvd,
    tvd_from_logits,
    wasserstein_1d,
)

RTOL = 1e-5
ATOL = 1e-5
F32_ATOL = 2e-4  # float32 sums of k <= 16 terms of size <= log(1e6) and eigh round-off
Z = 5.0  # Monte Carlo half-width in standard errors
LOG2 = math.log(2.0)


def _random_probs(seed: int, k: int, zeros: bool = False, batch: tuple = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.gamma(0.5, size=(*batch, k))
    if zeros:
        p = p * (rng.random((*batch, k)) < 0.6)
        p[..., 0] += 1e-3  # keep at least one mass point
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


prob_pairs = st.builds(
    lambda seed, k, zeros: (_random_probs(seed, k, zeros), _random_probs(seed + 1, k, zeros)),
    st.integers(0, 2**16),
    st.sampled_from([2, 5, 16]),
    st.booleans(),
)

# ---------------------------------------------------------------- TVD, KL, JS


@given(prob_pairs)
def test_tvd_half_l1_in_unit_interval(pq):
    p, q = pq
    value = float(tvd(p, q))
    np.testing.assert_allclose(value, 0.5 * np.abs(p.astype(np.float64) - q).sum(), atol=ATOL)
    assert -ATOL <= value <= 1.0 + ATOL
    # sup over events: A = {p > q} attains it
    event = p > q
    np.testing.assert_allclose(value, p[event].sum() - q[event].sum(), atol=ATOL)


def test_tvd_disjoint_is_one_and_self_is_zero():
    p = jnp.array([0.5, 0.5, 0.0, 0.0])
    q = jnp.array([0.0, 0.0, 0.3, 0.7])
    assert float(tvd(p, q)) == 1.0
    assert float(tvd(p, p)) == 0.0


@given(prob_pairs)
def test_kl_matches_scipy_and_is_nonnegative(pq):
    p, q = pq
    expected = scipy.special.rel_entr(p.astype(np.float64), q.astype(np.float64)).sum()
    value = float(kl(p, q))
    if np.isinf(expected):
        assert np.isinf(value) and value > 0
    else:
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=F32_ATOL)
    assert value >= -ATOL


@given(st.integers(0, 2**16), st.sampled_from([2, 5, 16]))
def test_kl_zero_iff_equal(seed, k):
    p = _random_probs(seed, k)
    assert abs(float(kl(p, p))) < ATOL
    q = _random_probs(seed + 7, k)
    assert not np.allclose(p, q)
    assert float(kl(p, q)) > 0.0


def test_kl_conventions_at_zero():
    # 0 log 0 = 0 (whatever q), and KL = inf where q = 0 < p
    assert float(kl(jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5]))) == pytest.approx(LOG2)
    assert float(kl(jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0]))) == 0.0
    assert float(kl(jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0]))) == math.inf
    grad = jax.grad(lambda p: kl(p, jnp.array([0.5, 0.5])))(jnp.array([1.0, 0.0]))
    assert np.all(np.isfinite(grad))


def test_kl_is_not_symmetric_forward_covers_reverse_seeks():
    # p bimodal, q on one mode: forward KL(p||q) is infinite, reverse KL(q||p) is finite
    p = jnp.array([0.5, 0.0, 0.5])
    q = jnp.array([1.0, 0.0, 0.0])
    assert float(kl(p, q)) == math.inf
    np.testing.assert_allclose(float(kl(q, p)), LOG2, rtol=RTOL)


@given(prob_pairs)
def test_js_symmetric_and_bounded(pq):
    p, q = pq
    a, b = float(js(p, q)), float(js(q, p))
    np.testing.assert_allclose(a, b, atol=ATOL)
    assert -ATOL <= a <= LOG2 + ATOL
    m = 0.5 * (p.astype(np.float64) + q)
    expected = 0.5 * scipy.stats.entropy(p, m) + 0.5 * scipy.stats.entropy(q, m)
    np.testing.assert_allclose(a, expected, atol=F32_ATOL)
    # scipy's jensenshannon is the square root of the divergence
    np.testing.assert_allclose(
        math.sqrt(max(a, 0.0)), scipy.spatial.distance.jensenshannon(p, q), atol=1e-3
    )


def test_js_disjoint_supports_is_log2():
    p = jnp.array([0.2, 0.8, 0.0, 0.0])
    q = jnp.array([0.0, 0.0, 0.6, 0.4])
    np.testing.assert_allclose(float(js(p, q)), LOG2, rtol=RTOL)
    np.testing.assert_allclose(float(js(p, p)), 0.0, atol=ATOL)


@given(prob_pairs)
def test_pinsker(pq):
    p, q = pq
    assert float(tvd(p, q)) <= math.sqrt(float(kl(p, q)) / 2.0) + ATOL
    # the upper bound of JS by TV (Lin 1991): JS <= log 2 * TV
    assert float(js(p, q)) <= LOG2 * float(tvd(p, q)) + ATOL


def test_batched_divergences_have_batch_shape():
    p = _random_probs(0, 6, batch=(3, 4))
    q = _random_probs(1, 6, batch=(3, 4))
    for fn in (tvd, kl, js):
        out = fn(p, q)
        assert out.shape == (3, 4)
        np.testing.assert_allclose(out[1, 2], fn(p[1, 2], q[1, 2]), rtol=RTOL)


def test_same_with_and_without_jit():
    p, q = _random_probs(3, 8), _random_probs(4, 8)
    for fn in (tvd, kl, js):
        np.testing.assert_allclose(jax.jit(fn)(p, q), fn(p, q), rtol=RTOL, atol=1e-7)


# ---------------------------------------------------------------- from logits


@given(st.integers(0, 2**16), st.sampled_from([2, 5, 16]))
def test_from_logits_match_probability_versions(seed, k):
    rng = np.random.default_rng(seed)
    lp = rng.normal(0, 3, (k,)).astype(np.float32)
    lq = rng.normal(0, 3, (k,)).astype(np.float32)
    p, q = scipy.special.softmax(lp), scipy.special.softmax(lq)
    np.testing.assert_allclose(kl_from_logits(lp, lq), kl(p, q), rtol=1e-4, atol=F32_ATOL)
    np.testing.assert_allclose(js_from_logits(lp, lq), js(p, q), rtol=1e-4, atol=F32_ATOL)
    np.testing.assert_allclose(tvd_from_logits(lp, lq), tvd(p, q), rtol=1e-4, atol=F32_ATOL)


def test_kl_from_logits_stable_where_probabilities_underflow():
    # p = softmax([0, -200]) has p_1 = e^-200, 0 in float32; log-space KL keeps the exact value
    lp = jnp.array([0.0, -200.0])
    lq = jnp.array([-200.0, 0.0])
    expected = 200.0  # ≈ (1)(0 - (-200)) + e^-200 (...)
    np.testing.assert_allclose(float(kl_from_logits(lp, lq)), expected, rtol=RTOL)
    # -inf logits are zero probabilities with the kl() conventions
    assert float(kl_from_logits(jnp.array([0.0, -jnp.inf]), jnp.array([0.0, 0.0]))) == (
        pytest.approx(LOG2)
    )
    assert float(kl_from_logits(jnp.array([0.0, 0.0]), jnp.array([0.0, -jnp.inf]))) == math.inf
    np.testing.assert_allclose(
        float(js_from_logits(jnp.array([0.0, -jnp.inf]), jnp.array([-jnp.inf, 0.0]))),
        LOG2,
        rtol=RTOL,
    )


# ---------------------------------------------------------------- bad input


def test_bad_probability_inputs_raise():
    p = jnp.array([0.5, 0.5])
    with pytest.raises(ValueError, match=r"shapes must match: p \(2,\), q \(3,\)"):
        kl(p, jnp.array([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match=r"shapes must match: logits_p \(2,\)"):
        js_from_logits(p, jnp.zeros(3))
    with pytest.raises(ValueError, match="negative"):
        tvd(jnp.array([1.5, -0.5]), p)
    with pytest.raises(ValueError, match="sum to 1"):
        kl(p, jnp.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="sum to 1"):
        js(jnp.array([2.0, 2.0]), p)
    with pytest.raises(ValueError, match=r"k >= 1"):
        tvd(jnp.zeros((3, 0)), jnp.zeros((3, 0)))


# ---------------------------------------------------------------- Gaussian KL


def _gaussian_kl_reference(mq, lvq, mp, lvp):
    """KL of univariate normals from scipy quadrature-free entropy identities, float64."""
    sq2, sp2 = np.exp(lvq), np.exp(lvp)
    return (0.5 * (np.log(sp2 / sq2) + (sq2 + (mq - mp) ** 2) / sp2 - 1.0)).sum(-1)


@given(st.integers(0, 2**16))
def test_gaussian_kl_closed_form_and_shape(seed):
    rng = np.random.default_rng(seed)
    mq, lvq = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    mp, lvp = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    out = gaussian_kl(*(a.astype(np.float32) for a in (mq, lvq, mp, lvp)))
    assert out.shape == (4,)
    np.testing.assert_allclose(out, _gaussian_kl_reference(mq, lvq, mp, lvp), rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(out) >= -ATOL)


def test_gaussian_kl_standard_prior_and_monte_carlo(key):
    mq = jnp.array([[0.3, -1.0]])
    lvq = jnp.array([[-0.5, 0.4]])
    expected = 0.5 * float(jnp.sum(jnp.exp(lvq) + mq**2 - 1.0 - lvq))
    np.testing.assert_allclose(float(gaussian_kl(mq, lvq)[0]), expected, rtol=RTOL)
    # Monte Carlo: E_q[log q(z) - log p(z)] with p = N(0.5, e^-1) given as [dim] arrays
    mp, lvp = jnp.array([0.5, 0.5]), jnp.array([-1.0, -1.0])
    n = 200_000
    z = mq + jnp.exp(0.5 * lvq) * jax.random.normal(key, (n, 2))  # [n, 2]
    log_ratio = (
        scipy.stats.norm.logpdf(z, mq, np.exp(0.5 * lvq))
        - scipy.stats.norm.logpdf(z, mp, np.exp(0.5 * lvp))
    ).sum(-1)
    se = log_ratio.std() / math.sqrt(n)
    value = float(gaussian_kl(mq, lvq, mp[None], lvp[None])[0])
    assert abs(value - log_ratio.mean()) < Z * se


def test_gaussian_kl_zero_for_equal_and_broadcast_errors():
    m, lv = jnp.ones((2, 5)), jnp.full((2, 5), -3.0)
    np.testing.assert_allclose(gaussian_kl(m, lv, m, lv), 0.0, atol=ATOL)
    with pytest.raises(ValueError, match=r"shapes must match: mean_q \(2, 5\)"):
        gaussian_kl(m, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="mean_p must broadcast"):
        gaussian_kl(m, lv, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="scalar"):
        gaussian_kl(jnp.array(0.0), jnp.array(0.0))


# ---------------------------------------------------------------- 1-D Wasserstein


@given(
    st.integers(0, 2**16),
    st.sampled_from([1, 10]),
    st.sampled_from([4, 17]),
    st.booleans(),
)
def test_wasserstein_1d_matches_scipy(seed, n, m, weighted):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n).astype(np.float32)
    y = (rng.normal(size=m) * 2 + 1).astype(np.float32)
    a = rng.random(n).astype(np.float32) + 0.1 if weighted else None
    b = rng.random(m).astype(np.float32) + 0.1 if weighted else None
    expected = scipy.stats.wasserstein_distance(x, y, a, b)
    np.testing.assert_allclose(float(wasserstein_1d(x, y, a, b)), expected, rtol=1e-4, atol=1e-5)


@given(st.integers(0, 2**16), st.floats(-5.0, 5.0))
def test_wasserstein_1d_shift_identity(seed, shift):
    x = np.random.default_rng(seed).normal(size=13).astype(np.float32)
    for p in (1.0, 2.0, 3.0):
        np.testing.assert_allclose(
            float(wasserstein_1d(x, x + np.float32(shift), p=p)), abs(shift), rtol=1e-4, atol=1e-5
        )


def test_wasserstein_1d_p2_equal_sizes_is_sorted_matching():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50).astype(np.float32), rng.exponential(size=50).astype(np.float32)
    expected = math.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))
    np.testing.assert_allclose(float(wasserstein_1d(x, y, p=2.0)), expected, rtol=1e-5)


def test_wasserstein_1d_jit_and_errors():
    x, y = jnp.array([0.0, 1.0, 5.0]), jnp.array([2.0, 3.0])
    np.testing.assert_allclose(jax.jit(wasserstein_1d)(x, y), wasserstein_1d(x, y), rtol=RTOL)
    with pytest.raises(ValueError, match="y is empty"):
        wasserstein_1d(x, jnp.zeros((0,)))
    with pytest.raises(ValueError, match="1-D"):
        wasserstein_1d(jnp.zeros((2, 2)), y)
    with pytest.raises(ValueError, match="x_weights must have shape"):
        wasserstein_1d(x, y, x_weights=jnp.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        wasserstein_1d(x, y, y_weights=jnp.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="p must be"):
        wasserstein_1d(x, y, p=0.5)


# ---------------------------------------------------------------- sliced Wasserstein


def test_sliced_wasserstein_in_1d_is_exact(key):
    x = jax.random.normal(key, (20, 1))
    y = 3.0 * x + 1.0
    exact = float(wasserstein_1d(x[:, 0], y[:, 0]))
    sw = sliced_wasserstein(key, x, y, num_projections=5)
    np.testing.assert_allclose(float(sw), exact, rtol=1e-5)
    np.testing.assert_allclose(float(sliced_wasserstein(key, x, y)), exact, rtol=1e-5)


def test_sliced_wasserstein_translation_closed_form(key):
    # y = x + delta: every projection is a pure shift by <theta, delta>, so
    # SW_2^2 = E(theta.delta)^2 = |delta|^2 / d and SW_1 = |delta| E|theta_1|.
    d, n_proj = 4, 1000
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (30, d))
    delta = jnp.array([1.0, -2.0, 0.5, 0.0])
    norm = float(jnp.linalg.norm(delta))
    noise = jax.random.normal(k2, (n_proj, d))
    theta = noise / jnp.linalg.norm(noise, axis=-1, keepdims=True)
    proj = np.asarray(theta @ delta, np.float64)
    sw2_sq = float(sliced_wasserstein(k2, x, x + delta[None], n_proj, p=2.0, noise=noise)) ** 2
    np.testing.assert_allclose(sw2_sq, np.mean(proj**2), rtol=1e-4)
    se2 = np.std(proj**2) / math.sqrt(n_proj)
    assert abs(sw2_sq - norm**2 / d) < Z * se2
    mean_abs = norm * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    sw1 = float(sliced_wasserstein(k2, x, x + delta[None], n_proj, p=1.0))
    assert abs(sw1 - mean_abs) < Z * np.std(np.abs(proj)) / math.sqrt(n_proj)


def test_sliced_wasserstein_errors(key):
    x = jnp.zeros((5, 2))
    with pytest.raises(ValueError, match="same dim"):
        sliced_wasserstein(key, x, jnp.zeros((5, 3)), 4)
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein(key, x, x, 0)
    with pytest.raises(ValueError, match=r"y must have shape \[n, dim\]"):
        sliced_wasserstein(key, x, jnp.zeros((0, 2)), 4)
    with pytest.raises(ValueError, match="noise must have shape"):
        sliced_wasserstein(key, x, x, 4, noise=jnp.ones((3, 2)))


# ---------------------------------------------------------------- Gaussian W2


@given(st.floats(-3, 3), st.floats(0.1, 3), st.floats(-3, 3), st.floats(0.1, 3))
def test_gaussian_w2_one_dimensional_closed_form(m1, s1, m2, s2):
    value = gaussian_w2(
        jnp.array([m1]), jnp.array([[s1**2]]), jnp.array([m2]), jnp.array([[s2**2]])
    )
    np.testing.assert_allclose(float(value), (m1 - m2) ** 2 + (s1 - s2) ** 2, rtol=1e-4, atol=1e-5)


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


@given(st.integers(0, 2**16), st.sampled_from([2, 5, 12]))
def test_gaussian_w2_matches_scipy_sqrtm(seed, d):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real  # the usual FID formula
    expected = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2.0 * covmean)
    value = gaussian_w2(*(a.astype(np.float32) for a in (m1, c1, m2, c2)))
    np.testing.assert_allclose(float(value), expected, rtol=1e-3, atol=F32_ATOL * d)


def test_gaussian_w2_equals_zero_for_same_and_matches_wasserstein_1d(key):
    rng = np.random.default_rng(1)
    c = _random_cov(rng, 4).astype(np.float32)
    m = rng.normal(size=4).astype(np.float32)
    assert abs(float(gaussian_w2(m, c, m, c))) < F32_ATOL
    # empirical 1-D W2 between large Gaussian samples converges to the closed form
    x = jax.random.normal(key, (100_000,))
    y = 2.0 * jax.random.normal(jax.random.fold_in(key, 1), (100_000,)) + 1.0
    w2_sq = float(gaussian_w2(jnp.zeros(1), jnp.eye(1), jnp.ones(1), 4.0 * jnp.eye(1)))
    np.testing.assert_allclose(float(wasserstein_1d(x, y, p=2.0)) ** 2, w2_sq, rtol=2e-2)


def test_gaussian_w2_errors():
    with pytest.raises(ValueError, match=r"mean2 must have shape \(2,\)"):
        gaussian_w2(jnp.zeros(2), jnp.eye(2), jnp.zeros(3), jnp.eye(3))
    with pytest.raises(ValueError, match=r"cov2 must have shape \(2, 2\)"):
        gaussian_w2(jnp.zeros(2), jnp.eye(2), jnp.zeros(2), jnp.eye(3))
    with pytest.raises(ValueError, match="mean1 must have shape"):
        gaussian_w2(jnp.zeros((2, 2)), jnp.eye(2), jnp.zeros(2), jnp.eye(2))
