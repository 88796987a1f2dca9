"""Autoencoders: the pure pieces against numpy and the claims of derivations/01-autoencoders.md."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

from genjax import autoencoders as ae

RTOL = 1e-5
ATOL = 1e-6
SHAPE = (8, 8, 1)


def test_squared_error_matches_numpy(key):
    x = jax.random.uniform(key, (5, *SHAPE))
    x_hat = jax.random.uniform(jax.random.fold_in(key, 1), (5, *SHAPE))
    want = ((np.asarray(x) - np.asarray(x_hat)) ** 2).reshape(5, -1).sum(1)
    np.testing.assert_allclose(ae.squared_error(x, x_hat), want, rtol=RTOL, atol=ATOL)


def test_squared_error_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        ae.squared_error(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_corrupt_is_a_pure_function_of_the_key(key):
    x = jnp.ones((4, *SHAPE))
    for kind in ae.NOISE_KINDS:
        a, b = ae.corrupt(key, x, kind, 0.3), ae.corrupt(key, x, kind, 0.3)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, ae.corrupt(jax.random.fold_in(key, 1), x, kind, 0.3))


def test_gaussian_corruption_moments(key):
    # 64k draws: the standard error of the mean is 0.5 / 256 ~ 0.002; 5 standard errors allowed.
    level = 0.5
    x = jnp.zeros((1024, 64))
    noise = np.asarray(ae.corrupt(key, x, "gaussian", level))
    assert abs(noise.mean()) < 5 * level / np.sqrt(noise.size)
    assert abs(noise.std() - level) < 5 * level / np.sqrt(2 * noise.size)


def test_masking_corruption_drops_the_stated_fraction(key):
    level = 0.3
    x = jnp.ones((1024, 64))
    dropped = 1.0 - np.asarray(ae.corrupt(key, x, "masking", level)).mean()
    # Binomial standard error sqrt(p(1-p)/n) ~ 0.0018; 5 standard errors allowed.
    assert abs(dropped - level) < 5 * np.sqrt(level * (1 - level) / x.size)


def test_corrupt_rejects_bad_kind_and_level(key):
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="kind must be one of"):
        ae.corrupt(key, x, "salt")
    with pytest.raises(ValueError, match=r"masking level must be in \[0, 1\)"):
        ae.corrupt(key, x, "masking", 1.0)
    with pytest.raises(ValueError, match="gaussian level must be >= 0"):
        ae.corrupt(key, x, "gaussian", -0.1)


def test_gaussian_denoising_equals_weight_decay(key):
    r"""E_eps ||x - A(x + s eps)||^2 = ||x - A x||^2 + s^2 ||A||_F^2 for a linear map A."""
    k1, k2, k3 = jax.random.split(key, 3)
    dim, draws, level = 6, 200_000, 0.4
    a = jax.random.normal(k1, (dim, dim)) / np.sqrt(dim)
    x = jax.random.normal(k2, (1, dim))
    noisy = ae.corrupt(k3, jnp.broadcast_to(x, (draws, dim)), "gaussian", level)
    losses = np.asarray(ae.squared_error(jnp.broadcast_to(x, (draws, dim)), noisy @ a.T))
    closed = float(ae.squared_error(x, x @ a.T)[0] + level**2 * jnp.sum(a**2))
    stderr = losses.std() / np.sqrt(draws)
    assert abs(losses.mean() - closed) < 5 * stderr


def test_linear_autoencoder_optimum_is_pca():
    """At W_enc = U_k^T, W_dec = U_k: zero gradient, loss = the discarded variance."""
    rng = np.random.default_rng(0)
    n, dim, k = 500, 6, 2
    x = rng.normal(size=(n, dim)) * np.array([3.0, 2.0, 1.0, 0.5, 0.3, 0.1])
    x = x - x.mean(0)
    cov = x.T @ x / n
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    u = eigvec[:, ::-1][:, :k]

    def loss(w_enc, w_dec):
        xj = jnp.asarray(x, jnp.float32)
        return jnp.mean(ae.squared_error(xj, xj @ w_enc.T @ w_dec.T))

    w_enc, w_dec = jnp.asarray(u.T, jnp.float32), jnp.asarray(u, jnp.float32)
    np.testing.assert_allclose(loss(w_enc, w_dec), eigval[: dim - k].sum(), rtol=1e-4)
    for g in jax.grad(loss, argnums=(0, 1))(w_enc, w_dec):
        np.testing.assert_allclose(g, 0.0, atol=1e-4)
    # and any other rank-k code does worse: a random orthonormal basis
    q, _ = np.linalg.qr(rng.normal(size=(dim, k)))
    assert loss(jnp.asarray(q.T), jnp.asarray(q)) > loss(w_enc, w_dec)


@given(
    code=st.lists(
        st.floats(-10, 10, allow_nan=False, width=32), min_size=6, max_size=6, unique=True
    ),
    k=st.integers(1, 6),
)
def test_top_k_code_keeps_the_k_largest(code, k):
    z = np.asarray(code, np.float32)[None]
    out = np.asarray(ae.top_k_code(jnp.asarray(z), k))
    want = np.where(z >= np.sort(z, axis=-1)[:, -k:][:, :1], z, 0.0)
    np.testing.assert_array_equal(out, want)
    assert np.count_nonzero(out) <= k


def test_top_k_gradient_flows_only_through_kept_entries():
    z = jnp.asarray([[0.5, -1.0, 2.0, 0.1]])
    g = jax.grad(lambda z: jnp.sum(ae.top_k_code(z, 2)))(z)
    np.testing.assert_array_equal(g, [[1.0, 0.0, 1.0, 0.0]])


def test_top_k_rejects_bad_k():
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        ae.top_k_code(jnp.zeros((2, 4)), 5)


def test_l1_penalty_matches_numpy(key):
    z = jax.random.normal(key, (3, 7))
    np.testing.assert_allclose(ae.l1_penalty(z), np.abs(np.asarray(z)).sum(1), rtol=RTOL)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_autoencoder_shapes_and_range(key, arch):
    model = ae.Autoencoder(shape=SHAPE, code_dim=5, hidden=32, arch=arch)
    x = jax.random.uniform(key, (3, *SHAPE))
    params = model.init(key, x)
    recon, code = model.apply(params, x)
    assert recon.shape == x.shape and code.shape == (3, 5)
    assert float(recon.min()) > 0.0 and float(recon.max()) < 1.0
    loss, _ = model.apply(params, key, x, method="loss")
    np.testing.assert_allclose(loss, ae.squared_error(x, recon), rtol=RTOL)


def test_autoencoder_rejects_bad_config_and_input(key):
    x = jnp.zeros((2, *SHAPE))
    with pytest.raises(ValueError, match="arch must be"):
        ae.Autoencoder(shape=SHAPE, arch="rnn").init(key, x)
    with pytest.raises(ValueError, match="divisible by 4"):
        ae.Autoencoder(shape=(6, 6, 1), arch="conv").init(key, jnp.zeros((2, 6, 6, 1)))
    with pytest.raises(ValueError, match=r"x must have shape \[batch, 8, 8, 1\]"):
        ae.Autoencoder(shape=SHAPE).init(key, jnp.zeros((2, 8, 8, 3)))


def test_denoising_autoencoder_trains_on_the_corrupted_input(key):
    x = jax.random.uniform(key, (4, *SHAPE))
    plain = ae.Autoencoder(shape=SHAPE, hidden=16)
    params = plain.init(key, x)
    noisy = ae.DenoisingAutoencoder(shape=SHAPE, hidden=16, noise="masking", noise_level=0.5)
    k = jax.random.key(3)
    got, _ = noisy.apply(params, k, x, method="loss")
    want = ae.squared_error(x, plain.apply(params, ae.corrupt(k, x, "masking", 0.5))[0])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    silent = ae.DenoisingAutoencoder(shape=SHAPE, hidden=16, noise_level=0.0)
    np.testing.assert_allclose(
        silent.apply(params, k, x, method="loss")[0],
        plain.apply(params, k, x, method="loss")[0],
        rtol=RTOL,
    )


def test_sparse_autoencoder_code_and_penalty(key):
    x = jax.random.uniform(key, (4, *SHAPE))
    model = ae.SparseAutoencoder(shape=SHAPE, code_dim=12, hidden=16, top_k=3, l1=0.1)
    params = model.init(key, x)
    (recon, code), (loss, _) = model.apply(params, x), model.apply(params, key, x, method="loss")
    assert (np.count_nonzero(np.asarray(code), axis=1) <= 3).all()
    want = ae.squared_error(x, recon) + 0.1 * np.abs(np.asarray(code)).sum(1)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="l1 must be >= 0"):
        ae.SparseAutoencoder(shape=SHAPE, l1=-1.0)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 8\]"):
        ae.SparseAutoencoder(shape=SHAPE, code_dim=8, top_k=9)
    with pytest.raises(ValueError, match="noise must be one of"):
        ae.DenoisingAutoencoder(shape=SHAPE, noise="salt")
