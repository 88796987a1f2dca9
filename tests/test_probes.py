"""Tests for genjax.probes: PCA view, latent grid, interpolation, probes, AUROC, noise stability.

References: scikit-learn (PCA, roc_auc_score), scipy (normal quantiles), brute-force numpy
(kNN, pairwise AUROC) and closed forms (slerp of orthogonal vectors, the stability of a linear
encoder).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from genjax import probes

RTOL = 1e-5
ATOL = 1e-5
NUM_SE = 4.0


def _blobs(seed, n_per_class=40, classes=3, dim=5, spread=0.3, point_seed=None):
    """Well separated Gaussian blobs: centres from ``seed``, points from ``point_seed``."""
    centres = 3.0 * np.random.default_rng(seed).normal(size=(classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    rng = np.random.default_rng(seed if point_seed is None else point_seed)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def test_pca_2d_matches_sklearn():
    from sklearn.decomposition import PCA

    x, _ = _blobs(0)
    got = np.asarray(probes.pca_2d(jnp.asarray(x, jnp.float32)))
    want = PCA(2).fit_transform(x)
    # same axes up to a sign per axis; ours fixes the sign by the largest loading
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-3, atol=1e-3)
    assert np.var(got[:, 0]) >= np.var(got[:, 1])


def test_pca_2d_sign_rule_and_errors():
    x, _ = _blobs(1)
    view = probes.pca_2d(jnp.asarray(x, jnp.float32))
    flipped = probes.pca_2d(jnp.asarray(-x, jnp.float32))
    # negating the data flips the centred data, not the rule: the view is the negated view
    np.testing.assert_allclose(flipped, -view, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="at least 2 columns"):
        probes.pca_2d(jnp.zeros((5, 1)))
    with pytest.raises(ValueError, match=r"codes must be \[n, d\]"):
        probes.pca_2d(jnp.zeros(5))


def test_latent_grid_sits_at_normal_quantiles():
    z = np.asarray(probes.latent_grid(lambda z: z, num_per_side=4, epsilon=0.1))  # [16, 2]
    q = scipy.stats.norm.ppf(np.linspace(0.1, 0.9, 4))
    np.testing.assert_allclose(z[:, 0], np.repeat(q, 4), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z[:, 1], np.tile(q, 4), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="num_per_side"):
        probes.latent_grid(lambda z: z, 1)


def test_interpolate_linear_endpoints_and_midpoint():
    z0, z1 = jnp.array([1.0, -2.0, 0.5]), jnp.array([3.0, 0.0, -0.5])
    path = probes.interpolate(z0, z1, 5)
    np.testing.assert_allclose(path[0], z0)
    np.testing.assert_allclose(path[-1], z1)
    np.testing.assert_allclose(path[2], (z0 + z1) / 2, rtol=RTOL)


def test_slerp_of_orthogonal_unit_vectors_is_the_quarter_circle():
    """z_t = cos(t pi/2) z0 + sin(t pi/2) z1 for orthonormal z0, z1."""
    z0, z1 = jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 1.0, 0.0])
    path = probes.interpolate(z0, z1, 7, "slerp")
    t = np.linspace(0, 1, 7)[:, None]
    want = (
        np.cos(t * np.pi / 2) * np.asarray(z0)[None] + np.sin(t * np.pi / 2) * np.asarray(z1)[None]
    )
    np.testing.assert_allclose(path, want, rtol=1e-5, atol=1e-6)


@given(st.integers(0, 10_000))
def test_slerp_keeps_the_norm_of_equal_norm_endpoints(seed):
    k0, k1 = jax.random.split(jax.random.key(seed))
    z0, z1 = jax.random.normal(k0, (8,)), jax.random.normal(k1, (8,))
    z1 = z1 * jnp.linalg.norm(z0) / jnp.linalg.norm(z1)
    path = probes.interpolate(z0, z1, 9, "slerp")
    np.testing.assert_allclose(jnp.linalg.norm(path, axis=1), jnp.linalg.norm(z0), rtol=1e-4)
    # the linear path's midpoint is shorter whenever the endpoints differ
    mid = probes.interpolate(z0, z1, 3)[1]
    assert jnp.linalg.norm(mid) <= jnp.linalg.norm(z0) * (1 + 1e-6)


def test_slerp_of_parallel_codes_falls_back_to_linear():
    z0 = jnp.array([1.0, 2.0])
    path = probes.interpolate(z0, 3.0 * z0, 3, "slerp")
    np.testing.assert_allclose(path, probes.interpolate(z0, 3.0 * z0, 3), rtol=RTOL)
    assert np.all(np.isfinite(path))


def test_interpolate_rejects_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        probes.interpolate(jnp.zeros(2), jnp.ones(2), 3, "cubic")
    with pytest.raises(ValueError, match="num_steps"):
        probes.interpolate(jnp.zeros(2), jnp.ones(2), 1)
    with pytest.raises(ValueError, match="z0 and z1 must be vectors"):
        probes.interpolate(jnp.zeros(2), jnp.ones(3), 3)


def test_linear_probe_reads_separable_codes_and_not_random_labels():
    x, y = _blobs(2)
    xt, yt = _blobs(2, n_per_class=20, point_seed=12)  # same centres, fresh points
    assert probes.linear_probe_accuracy(x, y, xt, yt) == 1.0
    rng = np.random.default_rng(3)
    noise_x, noise_y = rng.normal(size=(300, 5)), rng.integers(0, 10, 300)
    test_x, test_y = rng.normal(size=(300, 5)), rng.integers(0, 10, 300)
    # 10 classes independent of the codes: accuracy near 0.1 (4 binomial SEs above chance)
    bound = 0.1 + NUM_SE * math.sqrt(0.1 * 0.9 / 300)
    assert probes.linear_probe_accuracy(noise_x, noise_y, test_x, test_y) < bound


def test_knn_accuracy_matches_brute_force():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 3, 60)
    xt, yt = rng.normal(size=(25, 3)), rng.integers(0, 3, 25)
    k = 5
    dist = np.sum((xt[:, None, :] - x[None, :, :]) ** 2, axis=-1)  # [25, 60]
    nearest = np.argsort(dist, axis=1)[:, :k]
    votes = np.stack([np.bincount(y[i], minlength=3) for i in nearest])  # [25, 3]
    want = np.mean(np.argmax(votes, axis=1) == yt)  # ties go to the smaller label, as sklearn
    assert probes.knn_accuracy(x, y, xt, yt, k=k) == pytest.approx(want)


def test_probes_reject_mismatched_shapes():
    x, y = _blobs(5)
    with pytest.raises(ValueError, match="train_labels must be"):
        probes.linear_probe_accuracy(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="same width"):
        probes.knn_accuracy(x, y, x[:, :2], y)
    with pytest.raises(ValueError, match="k must be a positive int"):
        probes.knn_accuracy(x, y, x, y, k=0)


@given(st.integers(0, 10_000))
def test_auroc_equals_pairwise_count_and_sklearn(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    normal = rng.integers(0, 6, rng.integers(1, 30)).astype(float)  # ties on purpose
    anomalous = rng.integers(2, 8, rng.integers(1, 30)).astype(float)
    diff = anomalous[:, None] - normal[None, :]  # [m, n]
    pairwise = np.mean((diff > 0) + 0.5 * (diff == 0))
    got = probes.auroc(normal, anomalous)
    assert got == pytest.approx(pairwise, abs=1e-12)
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    assert got == pytest.approx(roc_auc_score(labels, np.r_[normal, anomalous]), abs=1e-12)


def test_auroc_extremes_and_errors():
    assert probes.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert probes.auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert probes.auroc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="non-empty"):
        probes.auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        probes.auroc([np.nan], [1.0])


def test_noise_stability_of_a_linear_encoder_matches_the_closed_form(key):
    """S = s^2 ||A||_F^2 / (2 tr(A Sigma A^T)) for f(x) = A x and x ~ N(0, Sigma)."""
    k_a, k_x, k_n = jax.random.split(key, 3)
    a = jax.random.normal(k_a, (3, 6))  # [d, D]
    scales = jnp.linspace(0.5, 2.0, 6)  # Sigma = diag(scales^2)
    x = jax.random.normal(k_x, (4000, 6)) * scales[None, :]
    s = 0.3
    encode = jax.jit(lambda x: x @ a.T)  # [n, 3]
    got = probes.noise_stability(k_n, encode, x, s, num_draws=2)
    want = s**2 * float(jnp.sum(a**2)) / (2 * float(jnp.sum((a * scales[None, :]) ** 2)))
    # sample variance over 4000 points and 8000 noise draws: a few per cent
    assert got == pytest.approx(want, rel=0.05)
    assert probes.noise_stability(k_n, encode, x, 0.0) == 0.0
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        probes.noise_stability(k_n, encode, x, -1.0)
