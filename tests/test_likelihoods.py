"""Tests for genjax.likelihoods: the pixel log-likelihoods against scipy/numpy, their argument
order, their NumPy broadcasting (leading sample axes on either side), and the decoder layout.
"""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from genjax import likelihoods as L

RTOL = 1e-5
LOGLIK_RTOL = 1e-5  # float32 log-densities against float64 scipy
BROADCAST_RTOL = 1e-6  # broadcasting inside a function vs explicitly broadcast inputs


def _floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, width=32)


@given(st.lists(_floats(-4, 4), min_size=4, max_size=4), _floats(-3, 2))
def test_gaussian_log_likelihood_matches_scipy(values, log_var):
    x = jnp.array(values)
    mean = jnp.array([0.5, -1.0, 0.0, 2.0])
    want = scipy.stats.norm(np.asarray(mean, np.float64), math.exp(0.5 * log_var)).logpdf(
        np.asarray(x, np.float64)
    )
    got = L.gaussian_log_likelihood(x, mean, log_var)  # fixed, shared variance
    np.testing.assert_allclose(got, want.sum(), rtol=LOGLIK_RTOL, atol=1e-4)
    per_value = L.gaussian_log_likelihood(x, mean, jnp.full(4, log_var), event_ndims=0)
    np.testing.assert_allclose(per_value, want, rtol=LOGLIK_RTOL, atol=1e-4)


@given(st.lists(_floats(-30, 30), min_size=6, max_size=6))
def test_bernoulli_log_likelihood_matches_scipy(logits):
    """Against scipy.stats.bernoulli where 1 - p is exact in float64 (|logit| <= 8), and
    against scipy.special.log_expit (exact in the tails) everywhere."""
    logits = np.asarray(logits, np.float64)
    x = np.array([0, 1, 1, 0, 1, 0], np.float64)
    got = L.bernoulli_log_likelihood(
        jnp.asarray(x, jnp.float32), jnp.asarray(logits, jnp.float32), event_ndims=0
    )
    tails = x * scipy.special.log_expit(logits) + (1 - x) * scipy.special.log_expit(-logits)
    np.testing.assert_allclose(got, tails, rtol=LOGLIK_RTOL, atol=1e-5)
    moderate = np.abs(logits) <= 8
    pmf = scipy.stats.bernoulli(scipy.special.expit(logits)).logpmf(x)
    np.testing.assert_allclose(np.asarray(got)[moderate], pmf[moderate], rtol=1e-4, atol=1e-5)


def test_bernoulli_log_likelihood_sums_exactly_the_event_axes():
    """The image axes are flattened before the sum: every event_ndims gives the per-value terms
    summed over the trailing event_ndims axes, keeping the batch axes."""
    logits = jax.random.normal(jax.random.key(0), (2, 3, 4, 1)) * 3.0
    x = (jax.random.uniform(jax.random.key(1), (2, 3, 4, 1)) < 0.4).astype(jnp.float32)
    per_value = L.bernoulli_log_likelihood(x, logits, event_ndims=0)
    for k in range(5):
        got = L.bernoulli_log_likelihood(x, logits, event_ndims=k)
        want = jnp.sum(per_value, axis=tuple(range(4 - k, 4)))
        assert got.shape == (2, 3, 4, 1)[: 4 - k]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_bernoulli_from_logits_is_exact_where_bce_on_sigmoid_fails():
    """log(sigmoid(l)) underflows in float32 for l < -104; the logits form stays exact."""
    logits, x = jnp.array([-120.0, 120.0]), jnp.array([1.0, 0.0])
    naive = x * jnp.log(jax.nn.sigmoid(logits)) + (1 - x) * jnp.log(1 - jax.nn.sigmoid(logits))
    assert not np.all(np.isfinite(naive))
    got = L.bernoulli_log_likelihood(x, logits, event_ndims=0)
    np.testing.assert_allclose(got, [-120.0, -120.0], rtol=RTOL)


@given(_floats(-0.5, 1.5), _floats(-5, 1), st.sampled_from([2, 17, 256]))
def test_discretized_logistic_matches_scipy_and_normalises(mu, log_s, levels):
    k = np.arange(levels)
    x = k / (levels - 1)
    half = 0.5 / (levels - 1)
    dist = scipy.stats.logistic(mu, math.exp(log_s))
    hi = np.where(k == levels - 1, np.inf, x + half)
    lo = np.where(k == 0, -np.inf, x - half)
    # the difference of cdfs below the location and of survival functions above it keeps
    # float64 precision in both tails
    mass = np.where(x > mu, dist.sf(lo) - dist.sf(hi), dist.cdf(hi) - dist.cdf(lo))
    want = np.log(np.maximum(mass, 1e-300))
    got = L.discretized_logistic_log_likelihood(
        jnp.asarray(x, jnp.float32),
        jnp.full(levels, mu, jnp.float32),
        jnp.full(levels, log_s, jnp.float32),
        levels,
        event_ndims=0,
    )
    finite = want > -600
    np.testing.assert_allclose(np.asarray(got)[finite], want[finite], rtol=1e-3, atol=1e-4)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(jax.nn.logsumexp(got), 0.0, atol=1e-4)


def test_discretized_logistic_stays_finite_for_saturated_arguments():
    x = jnp.array([0.5, 0.5, 0.0, 1.0])
    mean = jnp.array([50.0, -50.0, 50.0, -50.0])
    got = L.discretized_logistic_log_likelihood(x, mean, jnp.full(4, -3.0), 256, event_ndims=0)
    assert np.all(np.isfinite(got))
    # far in the tail P = sigma(a) - sigma(b) ~ e^{b}(e^{a-b} - 1) for a, b << 0
    s = math.exp(-3.0)
    a, b = (0.5 + 0.5 / 255 - 50.0) / s, (0.5 - 0.5 / 255 - 50.0) / s
    np.testing.assert_allclose(got[0], a + math.log(-math.expm1(b - a)), rtol=1e-4)


def test_categorical_log_likelihood_matches_numpy(key):
    logits = jax.random.normal(key, (3, 4, 17))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 17, (3, 4)) / 16.0, jnp.float32)
    log_p = scipy.special.log_softmax(np.asarray(logits, np.float64), axis=-1)
    k = np.round(np.asarray(x) * 16).astype(int)
    want = np.take_along_axis(log_p, k[..., None], -1)[..., 0].sum(-1)
    got = L.categorical_log_likelihood(x, logits, 17)
    np.testing.assert_allclose(got, want, rtol=LOGLIK_RTOL)


def test_likelihood_checks_the_decoder_output_shape():
    lik = L.Likelihood("gaussian")
    with pytest.raises(ValueError, match=r"decoder output must have shape"):
        lik.log_prob(jnp.zeros((2, 3)), jnp.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="kind must be one of"):
        L.Likelihood("poisson")
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        L.Likelihood("categorical")
    with pytest.raises(ValueError, match=r"shapes do not broadcast: x \(3,\), mean \(4,\)"):
        L.gaussian_log_likelihood(jnp.zeros(3), jnp.zeros(4), 0.0)


def test_likelihood_dispatches_to_the_pixel_log_likelihoods(key):
    """Likelihood.log_prob reads the trailing parameter axis as its table says."""
    x = jnp.round(jax.random.uniform(key, (2, 3)) * 16) / 16  # [B, D] on the 17-level grid
    out = jax.random.normal(key, (2, 3, 2))  # [B, D, P = 2]
    cases = {
        "bernoulli": L.bernoulli_log_likelihood(x, out[..., 0]),
        "gaussian": L.gaussian_log_likelihood(x, out[..., 0], out[..., 1]),
        "gaussian_fixed": L.gaussian_log_likelihood(x, out[..., 0], -2.0),
        "logistic": L.discretized_logistic_log_likelihood(x, out[..., 0], out[..., 1], 17),
    }
    for kind, want in cases.items():
        lik = L.Likelihood(kind, levels=17, log_var=-2.0)
        got = lik.log_prob(x, out[..., : lik.num_params])
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=kind)
    logits = jax.random.normal(key, (2, 3, 17))
    np.testing.assert_allclose(
        L.Likelihood("categorical", 17).log_prob(x, logits),
        L.categorical_log_likelihood(x, logits, 17),
        rtol=RTOL,
    )


def test_likelihood_mean_of_categorical_and_floor_of_gaussian_variance():
    one_hot = 50.0 * jax.nn.one_hot(jnp.array([[4]]), 17)  # [1, 1, 17] certain of k = 4
    np.testing.assert_allclose(L.Likelihood("categorical", 17).mean(one_hot), [[0.25]], atol=1e-6)
    floored = L.Likelihood("gaussian", min_log_var=-3.0)
    out = jnp.stack([jnp.zeros(1), jnp.full(1, -40.0)], axis=-1)[None]  # [1, 1, 2]
    # with log_var floored at ~-3 the density at the mean is about N(0; 0, e^-3)
    want = -0.5 * (math.log(2 * math.pi) - 3.0)
    np.testing.assert_allclose(floored.log_prob(jnp.zeros((1, 1)), out), [want], atol=1e-6)


# ----------------------------------------------------------------------------- order, broadcasting

ORDER = {
    "gaussian_log_likelihood": ("x", "mean", "log_var", "event_ndims"),
    "bernoulli_log_likelihood": ("x", "logits", "event_ndims"),
    "discretized_logistic_log_likelihood": ("x", "mean", "log_scale", "levels", "event_ndims"),
    "categorical_log_likelihood": ("x", "logits", "levels", "event_ndims"),
}


@pytest.mark.parametrize("name", sorted(ORDER))
def test_log_likelihoods_take_the_data_then_the_parameters(name):
    params = inspect.signature(getattr(L, name)).parameters
    assert tuple(params) == ORDER[name]
    assert params["event_ndims"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["event_ndims"].default == 1


def test_bernoulli_reads_the_data_first():
    """x in {0, 1} and real logits are not interchangeable: the value is x l - softplus(l)."""
    x = np.array([[0.0, 1.0, 1.0]], np.float32)
    logits = np.array([[2.5, -1.5, 0.3]], np.float32)
    want = np.sum(x * logits - np.logaddexp(0.0, logits.astype(np.float64)), axis=-1)
    got = L.bernoulli_log_likelihood(jnp.asarray(x), jnp.asarray(logits))
    np.testing.assert_allclose(got, want, rtol=LOGLIK_RTOL)
    swapped = L.bernoulli_log_likelihood(jnp.asarray(logits), jnp.asarray(x))
    assert not np.allclose(swapped, want, rtol=1e-2)


K, B, H, W, LEVELS = 3, 2, 4, 5, 17


def _inputs(key):
    """Data on the 17-level grid and parameters for each log-likelihood, all [K, B, H, W]."""
    k = jax.random.split(key, 4)
    x = jnp.round(jax.random.uniform(k[0], (K, B, H, W)) * (LEVELS - 1)) / (LEVELS - 1)
    a = jax.random.normal(k[1], (K, B, H, W))
    b = jax.random.normal(k[2], (K, B, H, W)) - 1.0
    logits = jax.random.normal(k[3], (K, B, H, W, LEVELS))
    return {
        "gaussian_log_likelihood": (x, (a, b), ()),
        "bernoulli_log_likelihood": ((x > 0.5).astype(jnp.float32), (a,), ()),
        "discretized_logistic_log_likelihood": (x, (jax.nn.sigmoid(a), b), (LEVELS,)),
        "categorical_log_likelihood": (x, (logits,), (LEVELS,)),
    }


# (shape taken from the data, shape taken from each parameter, event_ndims, result shape); a
# parameter's shape excludes the categorical's trailing levels axis
CASES = [
    ((B, H, W), (K, B, H, W), 2, (K, B)),  # a leading sample axis on the parameters
    ((K, B, H, W), (B, H, W), 2, (K, B)),  # ... and on the data
    ((B, H, W), (H, W), 2, (B,)),  # one set of parameters for the whole batch
    ((K, B, H, W), (K, 1, H, W), 2, (K, B)),  # a unit axis that broadcasts
    ((B, H, W), (K, B, H, W), 0, (K, B, H, W)),  # nothing summed
    ((B, H, W), (K, B, H, W), 3, (K,)),
]


def _take(a, shape, extra=0):
    """The trailing entries of ``a [K, B, H, W, *extra]`` with the given shape (unit axes keep
    index 0)."""
    lead = a.ndim - extra - len(shape)
    index = (0,) * lead + tuple(slice(0, 1) if n == 1 else slice(None) for n in shape)
    return a[index]


@pytest.mark.parametrize("name", sorted(ORDER))
@pytest.mark.parametrize("x_shape, param_shape, event_ndims, out_shape", CASES)
def test_log_likelihoods_broadcast_like_explicitly_broadcast_inputs(
    key, name, x_shape, param_shape, event_ndims, out_shape
):
    """Broadcasting by NumPy's rules inside the function equals calling it on inputs broadcast
    by hand to the full shape; the trailing event_ndims axes are summed."""
    fn = getattr(L, name)
    x, params, options = _inputs(key)[name]
    extra = [1 if name == "categorical_log_likelihood" else 0] * len(params)
    x = _take(x, x_shape)
    params = [_take(p, param_shape, e) for p, e in zip(params, extra, strict=True)]
    full = jnp.broadcast_shapes(x_shape, param_shape)
    got = fn(x, *params, *options, event_ndims=event_ndims)
    assert got.shape == out_shape
    wide = [
        jnp.broadcast_to(p, full + p.shape[p.ndim - e :])
        for p, e in zip(params, extra, strict=True)
    ]
    want = fn(jnp.broadcast_to(x, full), *wide, *options, event_ndims=event_ndims)
    np.testing.assert_allclose(got, want, rtol=BROADCAST_RTOL, atol=1e-5)


def test_gaussian_log_var_of_the_event_shape_broadcasts_over_the_batch():
    """x [B, D] with a per-dimension log_var [D] (and a scalar one) against numpy in float64."""
    rng = np.random.default_rng(0)
    x, mean, log_var = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=3)
    want = scipy.stats.norm(mean, np.exp(0.5 * log_var)[None, :]).logpdf(x).sum(-1)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    got = L.gaussian_log_likelihood(f32(x), f32(mean), f32(log_var))
    np.testing.assert_allclose(got, want, rtol=LOGLIK_RTOL, atol=1e-5)
    scalar = L.gaussian_log_likelihood(f32(x), f32(mean), 0.5)
    np.testing.assert_allclose(
        scalar, scipy.stats.norm(mean, math.exp(0.25)).logpdf(x).sum(-1), rtol=LOGLIK_RTOL
    )


def test_likelihood_log_prob_broadcasts_decoder_samples_against_the_data(key):
    """Decoder outputs [K, B, D, P] against x [B, D]: row k equals scoring output k alone."""
    x = jnp.round(jax.random.uniform(key, (2, 3)) * 16) / 16  # [B, D] on the 17-level grid
    for kind in L.LIKELIHOODS:
        lik = L.Likelihood(kind, levels=17)
        out = jax.random.normal(jax.random.fold_in(key, 1), (4, 2, 3, lik.num_params))
        got = lik.log_prob(x, out)
        assert got.shape == (4, 2), kind
        rows = jnp.stack([lik.log_prob(x, out[k]) for k in range(4)])
        np.testing.assert_allclose(got, rows, rtol=BROADCAST_RTOL, atol=1e-5, err_msg=kind)
