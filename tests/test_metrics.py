"""Sample-quality metrics against closed forms, scipy and the identities of
derivations/14-metrics.md: IS bounds, FID as the Gaussian W2 (scipy sqrtm reference, 1-D and
diagonal closed forms, invariances), unbiased KID, k-NN precision/recall, LPIPS identities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from genjax.divergences import gaussian_w2
from genjax.metrics import (
    bits_per_dim,
    feature_statistics,
    fid,
    fid_from_statistics,
    frechet_distance,
    image_quality,
    inception_score,
    kid,
    lpips,
    lpips_from_features,
    mmd2_unbiased,
    polynomial_kernel,
    precision_recall,
    sample_quality,
)

RTOL = 1e-6  # float64 FID against a float64 reference
ATOL = 1e-9  # float64 round-off on traces of size <= 1e2
F32_RTOL = 1e-5  # float32 IS / kernels against float64 references
F32_FID_RTOL = 1e-4  # the jit-able Fréchet distance in float32 against float64, dim <= 128
Z = 5.0  # Monte Carlo half-width in standard errors


def _features(seed: int, n: int, dim: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / math.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mix + shift


def _pytorch_fid_reference(f1: np.ndarray, f2: np.ndarray) -> float:
    # The formula of pytorch-fid: sqrtm of the non-symmetric product, real part.
    m1, m2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------- bits per dim


def test_bits_per_dim_under_jit_equals_eager():
    """invariant: part of the jit-able core (static num_dims and levels), the same numbers under
    jax.jit; closed form -log p / (D ln 2) + log2 L (hand values in tests/test_flows.py)."""
    log_p = jnp.array([-100.0, 0.0, 12.5])
    jitted = jax.jit(bits_per_dim, static_argnums=(1, 2))
    np.testing.assert_allclose(jitted(log_p, 64, 17), bits_per_dim(log_p, 64, 17), rtol=F32_RTOL)
    np.testing.assert_allclose(
        jitted(log_p, 64, None), -np.asarray(log_p) / (64 * math.log(2)), rtol=F32_RTOL
    )


# ----------------------------------------------------------------------------- Inception score


def test_inception_score_is_one_for_identical_uniform_predictions():
    """identity: every KL term is 0."""
    mean, std = inception_score(np.full((100, 10), 0.1), splits=10)
    assert mean == pytest.approx(1.0, rel=F32_RTOL) and std == pytest.approx(0.0, abs=1e-6)


def test_inception_score_is_num_classes_for_confident_uniform_coverage():
    """identity: one-hot rows covering the K classes equally give exp(log K) = K."""
    probs = np.eye(10)[np.arange(200) % 10]  # each split of 20 holds every class twice
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(10.0, rel=F32_RTOL) and std == pytest.approx(0.0, abs=1e-5)


def _naive_inception_scores(seed: int, splits: int) -> tuple[np.ndarray, list[float]]:
    """Random probabilities [53, 7] and the original per-split loop's scores, in float64."""
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.normal(size=(53, 7))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    size = len(probs) // splits
    scores = []
    for s in range(splits):
        part = probs[s * size : (s + 1) * size]
        py = part.mean(0)
        scores.append(np.exp(np.mean([np.sum(p * (np.log(p) - np.log(py))) for p in part])))
    return probs, scores


@given(st.integers(0, 2**16), st.sampled_from([1, 3, 5]))
def test_inception_score_matches_naive_loop(seed, splits):
    """reference implementation: the original per-split loop in float64; bounds 1 <= IS <= K."""
    probs, scores = _naive_inception_scores(seed, splits)
    mean, std = inception_score(probs.astype(np.float32), splits=splits)
    assert mean == pytest.approx(np.mean(scores), rel=F32_RTOL)
    assert std == pytest.approx(np.std(scores), rel=1e-3, abs=1e-5)
    assert 1.0 - 1e-5 <= mean <= 7.0 + 1e-5


@pytest.mark.parametrize("splits", [1, 3, 5])
def test_inception_score_under_jit_matches_naive_loop(splits):
    """reference implementation: the jit-able core under jax.jit returns JAX scalars equal to
    the float64 loop (same tolerances as eagerly)."""
    probs, scores = _naive_inception_scores(17, splits)
    mean, std = jax.jit(inception_score, static_argnums=1)(probs.astype(np.float32), splits)
    assert isinstance(mean, jax.Array) and isinstance(std, jax.Array)
    assert float(mean) == pytest.approx(np.mean(scores), rel=F32_RTOL)
    assert float(std) == pytest.approx(np.std(scores), rel=1e-3, abs=1e-5)


@pytest.mark.parametrize(
    ("probs", "splits", "message"),
    [
        (np.full((10, 4), 0.5), 2, "must sum to 1"),  # logits or unnormalised scores
        (np.array([[1.5, -0.5]] * 4), 1, "non-negative"),
        (np.full((10,), 0.1), 1, r"shape \[N, classes\]"),
        (np.full((4, 2), 0.5), 5, "splits must be"),
    ],
)
def test_inception_score_rejects_bad_input(probs, splits, message):
    with pytest.raises(ValueError, match=message):
        inception_score(probs, splits=splits)


# ----------------------------------------------------------------------------- FID


def test_fid_of_a_set_with_itself_is_zero():
    """identity: W2(N, N) = 0, up to float64 round-off of the eigendecomposition."""
    f = _features(0, 300, 16)
    assert 0.0 <= fid(f, f) < 1e-8


@pytest.mark.parametrize(("seed", "dim"), [(0, 4), (1, 16), (2, 64)])
def test_fid_matches_scipy_sqrtm(seed, dim):
    """reference implementation: pytorch-fid's formula with scipy.linalg.sqrtm, 1e-6 relative."""
    f1, f2 = _features(seed, 500, dim), _features(seed + 10, 400, dim, shift=0.3)
    assert fid(f1, f2) == pytest.approx(_pytorch_fid_reference(f1, f2), rel=RTOL, abs=ATOL)


@pytest.mark.parametrize(("seed", "dim"), [(0, 4), (1, 16), (2, 64)])
def test_frechet_distance_under_jit_matches_scipy_sqrtm(seed, dim):
    """reference implementation: the jit-able core under jax.jit, on float64 features
    (jax.enable_x64), against pytorch-fid's formula with fid's tolerances; it returns a float64
    JAX scalar equal to the host path fid to round-off."""
    f1, f2 = _features(seed, 500, dim), _features(seed + 10, 400, dim, shift=0.3)
    with jax.enable_x64(True):
        value = jax.jit(frechet_distance)(jnp.asarray(f1), jnp.asarray(f2))
        assert isinstance(value, jax.Array) and value.dtype == jnp.float64
        value = float(value)
    assert value == pytest.approx(_pytorch_fid_reference(f1, f2), rel=RTOL, abs=ATOL)
    assert value == pytest.approx(fid(f1, f2), rel=RTOL, abs=ATOL)


@pytest.mark.parametrize(("seed", "dim"), [(0, 4), (1, 16), (2, 64), (3, 128)])
def test_frechet_distance_in_float32(seed, dim):
    """documented precision: float32 features give a float32 result (under jit) within
    F32_FID_RTOL of pytorch-fid's float64 value; fid is a Python float."""
    f1, f2 = _features(seed, 500, dim), _features(seed + 10, 400, dim, shift=0.3)
    value = jax.jit(frechet_distance)(f1.astype(np.float32), f2.astype(np.float32))
    assert value.dtype == jnp.float32
    assert float(value) == pytest.approx(_pytorch_fid_reference(f1, f2), rel=F32_FID_RTOL)
    assert type(fid(f1, f2)) is float


def test_fid_equals_gaussian_w2_of_the_empirical_statistics():
    """closed form: FID is genjax.divergences.gaussian_w2 of the sample mean and covariance."""
    f1, f2 = _features(3, 200, 8), _features(4, 250, 8, shift=1.0)
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (f1, f2)]
    with jax.enable_x64(True):
        expected = float(gaussian_w2(*stats[0], *stats[1]))
    assert fid(f1, f2) == pytest.approx(expected, rel=RTOL)
    mean, cov = feature_statistics(f1)
    np.testing.assert_allclose(cov, np.cov(f1, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(mean, f1.mean(0), rtol=1e-12)


def test_fid_from_statistics_closed_forms():
    """closed form: 1-D (m1 - m2)^2 + (s1 - s2)^2; commuting (diagonal) covariances
    |m1 - m2|^2 + sum (sqrt a - sqrt b)^2."""
    value = fid_from_statistics(
        np.array([0.5]), np.array([[4.0]]), np.array([-1.0]), np.array([[9.0]])
    )
    assert value == pytest.approx(1.5**2 + (2.0 - 3.0) ** 2, rel=RTOL)
    rng = np.random.default_rng(5)
    a, b = rng.uniform(0.1, 3.0, 32), rng.uniform(0.1, 3.0, 32)
    m1, m2 = rng.normal(size=32), rng.normal(size=32)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid_from_statistics(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=RTOL)


def test_fid_of_gaussian_samples_approaches_the_population_w2():
    """Monte Carlo: FID of large Gaussian samples is near the population W2^2 of gaussian_w2
    (its O(dim / N) bias makes the tolerance loose but the check still fails for a wrong
    trace term)."""
    rng = np.random.default_rng(6)
    dim, n = 4, 20_000
    c1 = np.diag([1.0, 2.0, 0.5, 1.5])
    c2 = np.diag([2.0, 1.0, 1.0, 0.5])
    m2 = np.full(dim, 0.5)
    f1 = rng.normal(size=(n, dim)) @ np.sqrt(c1)
    f2 = rng.normal(size=(n, dim)) @ np.sqrt(c2) + m2
    with jax.enable_x64(True):
        population = float(gaussian_w2(np.zeros(dim), c1, m2, c2))
    assert fid(f1, f2) == pytest.approx(population, rel=0.05)


@given(st.integers(0, 2**16))
def test_fid_is_symmetric_non_negative_and_invariant(seed):
    """identity: symmetric, >= 0, invariant to permuting samples and to one orthogonal rotation
    of both feature sets."""
    rng = np.random.default_rng(seed)
    f1, f2 = _features(seed, 80, 6), _features(seed + 1, 90, 6, shift=0.2)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # orthogonal
    value = fid(f1, f2)
    assert value >= 0.0
    assert fid(f2, f1) == pytest.approx(value, rel=RTOL, abs=ATOL)
    assert fid(f1[rng.permutation(80)], f2[rng.permutation(90)]) == pytest.approx(
        value, rel=RTOL, abs=ATOL
    )
    assert fid(f1 @ q, f2 @ q) == pytest.approx(value, rel=RTOL, abs=ATOL)


def test_fid_with_fewer_samples_than_features_warns_and_stays_finite():
    """documented handling: a singular covariance warns; the eigh square roots need no offset
    and the value is finite, >= 0 and equal to scipy's on the same statistics."""
    f1, f2 = _features(7, 10, 32), _features(8, 12, 32, shift=0.5)
    with pytest.warns(UserWarning, match="covariance is singular"):
        value = fid(f1, f2)
    assert np.isfinite(value) and value >= 0.0
    assert value == pytest.approx(_pytorch_fid_reference(f1, f2), rel=1e-4)


@pytest.mark.parametrize(
    ("f1", "f2", "message"),
    [
        (np.zeros((10, 3)), np.zeros((10, 4)), "same width"),
        (np.zeros((10,)), np.zeros((10, 4)), r"features1 must have shape \[N, dim\]"),
        (np.zeros((1, 3)), np.zeros((10, 3)), "at least 2 samples"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), "finite"),
    ],
)
def test_fid_rejects_bad_input(f1, f2, message):
    with pytest.raises(ValueError, match=message):
        fid(f1, f2)
    with pytest.raises(ValueError, match=message):
        frechet_distance(f1, f2)


def test_fid_from_statistics_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="mean2 must have shape"):
        fid_from_statistics(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ----------------------------------------------------------------------------- KID


def test_mmd2_unbiased_matches_naive_loop():
    """reference implementation: the U-statistic written as loops over pairs i != j."""
    x, y = _features(9, 12, 5), _features(10, 9, 5, shift=0.4)
    k = lambda a, b: (a @ b / 5 + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(12) for j in range(12) if i != j) / (12 * 11)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(a, b) for a in x for b in y) / (12 * 9)
    value = float(mmd2_unbiased(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    assert value == pytest.approx(xx + yy - 2 * xy, rel=1e-4, abs=1e-4)
    gram = polynomial_kernel(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(gram, (x @ y.T / 5 + 1) ** 3, rtol=F32_RTOL)


def test_kid_is_unbiased_for_one_distribution(key):
    """Monte Carlo: the mean of unbiased MMD^2 over 400 pairs of samples of one distribution is
    within 5 standard errors of 0, while the biased (V-statistic) estimate is not."""
    draws = jax.random.normal(key, (400, 2, 20, 4))  # [pairs, 2 sets, n, dim]
    unbiased = jax.vmap(lambda d: mmd2_unbiased(d[0], d[1]))(draws)  # [pairs]
    biased = jax.vmap(
        lambda d: (
            jnp.mean(polynomial_kernel(d[0], d[0]))
            + jnp.mean(polynomial_kernel(d[1], d[1]))
            - 2 * jnp.mean(polynomial_kernel(d[0], d[1]))
        )
    )(draws)
    se = float(jnp.std(unbiased)) / math.sqrt(400)
    assert abs(float(jnp.mean(unbiased))) < Z * se
    assert float(jnp.mean(biased)) > Z * float(jnp.std(biased)) / math.sqrt(400)


def test_kid_separates_shifted_sets_and_subsets_are_seeded(key):
    """identity: KID of two sets of one distribution is near 0 next to a shifted pair; the same
    key gives the same subsets; with subset_size >= N it is the full-set MMD^2."""
    f = _features(11, 600, 8)
    f1, f2, f3 = f[:300], f[300:], f[300:] + 1.0
    same, same_std = kid(key, f1, f2, num_subsets=20, subset_size=100)
    shifted, _ = kid(key, f1, f3, num_subsets=20, subset_size=100)
    assert abs(same) < 0.02 * shifted and same_std > 0
    assert kid(key, f1, f2, num_subsets=20, subset_size=100) == (same, same_std)
    full, full_std = kid(key, f1, f2, num_subsets=3, subset_size=10_000)
    expected = float(mmd2_unbiased(jnp.asarray(f1, jnp.float32), jnp.asarray(f2, jnp.float32)))
    assert full == pytest.approx(expected, rel=1e-4, abs=1e-6) and full_std < 1e-6


def test_kid_under_jit_equals_eager_and_the_full_set_mmd2(key):
    """invariant: the jit-able core gives the same (mean, std) under jax.jit as eagerly, as JAX
    scalars; with subset_size >= N it is the full-set MMD^2 (same tolerances as eagerly)."""
    f = _features(11, 600, 8)
    f1, f2 = f[:300], f[300:]
    options = {"num_subsets": 20, "subset_size": 100}
    jitted = jax.jit(lambda k, a, b: kid(k, a, b, **options))
    got, want = jitted(key, f1, f2), kid(key, f1, f2, **options)
    assert all(isinstance(v, jax.Array) for v in got)
    np.testing.assert_allclose(got, want, rtol=F32_RTOL, atol=1e-7)
    full, full_std = jax.jit(lambda k, a, b: kid(k, a, b, num_subsets=3, subset_size=10_000))(
        key, f1, f2
    )
    expected = float(mmd2_unbiased(jnp.asarray(f1, jnp.float32), jnp.asarray(f2, jnp.float32)))
    assert float(full) == pytest.approx(expected, rel=1e-4, abs=1e-6) and float(full_std) < 1e-6


def test_kid_rejects_bad_input(key):
    with pytest.raises(ValueError, match="same width"):
        kid(key, np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="num_subsets must be a positive int"):
        kid(key, np.zeros((10, 3)), np.zeros((10, 3)), num_subsets=0)


# ----------------------------------------------------------------------------- precision/recall


def test_precision_recall_hand_example():
    """closed form: real points 0, 1, 2, 3 on a line (k = 1 radii 1, 1, 1, 1); fakes at 0.5 and
    10 give precision 1/2; the fake manifold (radius 9.5 each) covers every real point."""
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(0.5) and recall == pytest.approx(1.0)


def test_precision_recall_identities_and_mode_dropping():
    """identity: a set against itself gives (1, 1); a far-away set gives (0, 0); a model that
    drops one of two modes keeps precision 1 and loses half the recall."""
    rng = np.random.default_rng(13)
    real = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 20.0])
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    dropped = rng.normal(size=(400, 2)) * 0.5
    precision, recall = precision_recall(real, dropped, k=3)
    assert precision > 0.97 and 0.3 < recall <= 0.5


def test_precision_recall_under_jit():
    """closed form and identities under jax.jit: the hand example (1/2, 1), a set against
    itself (1, 1), a far-away set (0, 0), returned as JAX scalars."""
    jitted = jax.jit(precision_recall, static_argnames="k")
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    precision, recall = jitted(real, np.array([[0.5], [10.0]]), k=1)
    assert isinstance(precision, jax.Array)
    assert float(precision) == pytest.approx(0.5) and float(recall) == pytest.approx(1.0)
    cloud = np.random.default_rng(13).normal(size=(50, 2))
    assert tuple(map(float, jitted(cloud, cloud))) == (1.0, 1.0)
    assert tuple(map(float, jitted(cloud, cloud + 100.0))) == (0.0, 0.0)


def test_precision_recall_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be an int"):
        precision_recall(np.zeros((3, 2)), np.zeros((5, 2)), k=3)


# ----------------------------------------------------------------------------- LPIPS


def _maps(seed: int, shapes) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


SHAPES = [(3, 8, 8, 4), (3, 4, 4, 6)]


def test_lpips_zero_on_identical_and_symmetric():
    """identity: d(x, x) = 0, d(x, y) = d(y, x) >= 0."""
    a, b = _maps(0, SHAPES), _maps(1, SHAPES)
    np.testing.assert_allclose(lpips_from_features(a, a), 0.0, atol=1e-7)
    d_ab, d_ba = lpips_from_features(a, b), lpips_from_features(b, a)
    np.testing.assert_allclose(d_ab, d_ba, rtol=F32_RTOL)
    assert np.all(np.asarray(d_ab) > 0)


def test_lpips_hand_example_and_channel_scale_invariance():
    """closed form: one position, unit vectors e1 vs e2 give w1 + w2; scaling a feature
    vector by a positive factor leaves the distance unchanged (channel normalisation)."""
    a = np.array([[[[3.0, 0.0]]]], np.float32)  # [1, 1, 1, 2], normalised to e1
    b = np.array([[[[0.0, 0.5]]]], np.float32)  # normalised to e2
    value = lpips_from_features([a], [b], weights=[np.array([2.0, 0.25], np.float32)])
    np.testing.assert_allclose(value, [2.25], rtol=F32_RTOL)
    x, y = _maps(2, SHAPES), _maps(3, SHAPES)
    scale = [np.abs(m[..., :1]) + 0.1 for m in _maps(4, SHAPES)]  # per-position, positive
    scaled = [m * s for m, s in zip(x, scale, strict=True)]
    np.testing.assert_allclose(lpips_from_features(scaled, y), lpips_from_features(x, y), rtol=1e-4)


def test_lpips_on_images_uses_the_layers_fn(key):
    """reference implementation: lpips(x, y, layers_fn) = lpips_from_features of the maps."""
    kernel = jax.random.normal(key, (1, 3))  # a 1x1 convolution from 1 to 3 channels
    layers_fn = lambda im: [jax.nn.relu(im @ kernel), im]  # two "layers" of one image
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    y = jax.random.uniform(jax.random.key(2), (4, 8, 8, 1))
    expected = lpips_from_features(layers_fn(x), layers_fn(y))
    np.testing.assert_allclose(lpips(x, y, layers_fn), expected, rtol=F32_RTOL)
    np.testing.assert_allclose(lpips(x, x, layers_fn), 0.0, atol=1e-7)


def test_lpips_rejects_bad_input():
    a = _maps(0, SHAPES)
    with pytest.raises(ValueError, match="equally long"):
        lpips_from_features(a, a[:1])
    with pytest.raises(ValueError, match=r"weights\[0\] must have shape \(4,\)"):
        lpips_from_features(a, a, weights=[np.ones(3), np.ones(6)])
    with pytest.raises(ValueError, match="x and y must be"):
        lpips(np.zeros((2, 8, 8, 1)), np.zeros((3, 8, 8, 1)), lambda im: [im])


def test_sample_quality_reports_every_metric(key):
    """identity: a set against itself gives FID ~ 0, precision = recall = 1."""
    f = _features(14, 120, 4)
    report = sample_quality(key, f, f, num_subsets=5, subset_size=50)
    assert all(type(v) is float for v in report.values())
    assert set(report) == {"fid", "kid", "kid_std", "precision", "recall"}
    assert report["fid"] < 1e-8 and report["precision"] == report["recall"] == 1.0


def test_image_quality_goes_through_the_extractor(key):
    """reference implementation: image_quality = sample_quality of the extractor's features
    plus the Inception score of its probabilities."""

    class Extractor:
        features = staticmethod(lambda im: im.reshape(len(im), -1)[:, :4] + im.mean())
        probs = staticmethod(lambda im: np.full((len(im), 5), 0.2))

    rng = np.random.default_rng(15)
    real, fake = rng.uniform(size=(60, 4, 4, 1)), rng.uniform(size=(50, 4, 4, 1)) ** 2
    got = image_quality(key, Extractor, real, fake, num_subsets=4, subset_size=30)
    expected = sample_quality(
        key, Extractor.features(real), Extractor.features(fake), num_subsets=4, subset_size=30
    )
    assert got == {**expected, "inception_score": pytest.approx(1.0, rel=F32_RTOL)}
