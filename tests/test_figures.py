"""The concept figures: their data against closed forms, the PNGs, and the command line."""

import math

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from genjax import diffusion, figures
from genjax.cli import main
from genjax.nn.init import he_normal, xavier_normal

CHEAP = ("schedules", "kl_fits", "point_masses", "positional_encoding")  # seconds in all
# the other analytic figures load the digits (scikit-learn) or run 8 MLPs of 20 layers
SLOWER = ("forward_noising", "activation_variance")
TRAINED = ("attention_weights", "denoising_autoencoder", "gan_training", "word2vec_embeddings")
MAX_BYTES = 150_000
T = 1000


def _check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < MAX_BYTES, (path.name, path.stat().st_size)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_point_mass_js_is_log2_and_w1_is_abs_theta():
    """JS(δ_0, δ_θ) = log 2 for every θ ≠ 0 (disjoint supports) and 0 at θ = 0, while
    W1 = |θ| with derivative sign θ: only W1 tells the generator which way to move."""
    thetas = figures.POINT_MASS_THETAS  # the figure's: holds 0
    js, w1, dw1 = map(np.asarray, figures.point_mass_distances(thetas))
    at_zero = np.isclose(thetas, 0.0)
    np.testing.assert_allclose(js[~at_zero], math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(js[at_zero], 0.0, atol=1e-7)
    np.testing.assert_allclose(w1, np.abs(thetas), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(dw1[~at_zero], np.sign(thetas[~at_zero]))


def test_alpha_bars_decrease_and_log_snr_matches_closed_form():
    """ᾱ_t = ∏(1 - β_s) falls strictly for both schedules (linear: β evenly spaced from 1e-4 to
    0.02; cosine: ᾱ_t = f(t+1)/f(0) before the β clip of the last step), and log-SNR is
    log(ᾱ/(1 - ᾱ)) of the float64 ᾱ, decreasing."""
    linear, cosine = diffusion.linear_schedule(T), diffusion.cosine_schedule(T)
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    references = (
        (linear, np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))),
        (cosine, f[1:-1] / f[0]),  # [T - 1]: the last step is clipped
    )
    for schedule, a in references:
        n = a.size
        np.testing.assert_allclose(schedule.alpha_bars[:n], a, rtol=1e-5, atol=1e-9)
        assert np.all(np.diff(np.asarray(schedule.alpha_bars)) < 0)
        snr = np.asarray(figures.log_snr(schedule))
        assert np.all(np.diff(snr) < 0)
        np.testing.assert_allclose(snr[:n], np.log(a / (1.0 - a)), rtol=1e-5, atol=1e-5)


def test_noising_series_is_the_closed_form(key):
    """Row i is √ᾱ_t x0 + √(1-ᾱ_t) ε at t = ts[i], with one ε for the whole row."""
    x0 = jax.random.uniform(jax.random.key(1), (8, 8, 1), minval=-1.0, maxval=1.0)
    schedule = diffusion.cosine_schedule(T)
    ts = (0, 10, 500, 999)
    series = np.asarray(figures.noising_series(key, schedule, x0, ts))
    eps = np.asarray(jax.random.normal(key, x0.shape))
    a = np.asarray(schedule.alpha_bars)[list(ts)][:, None, None, None]
    expected = np.sqrt(a) * np.asarray(x0)[None] + np.sqrt(1.0 - a) * eps[None]
    np.testing.assert_allclose(series, expected, rtol=1e-5, atol=1e-5)  # float32 coefficients


def _two_bumps(x):
    """log of 0.3 N(-2, 0.5²) + 0.7 N(1.5, 0.8²) at ``x`` (unnormalised is fine)."""
    log_n = lambda m, s: -0.5 * ((x - m) / s) ** 2 - np.log(s)
    return np.logaddexp(np.log(0.3) + log_n(-2.0, 0.5), np.log(0.7) + log_n(1.5, 0.8))


def test_forward_kl_fit_matches_moments_and_reverse_fit_seeks_a_mode():
    """argmin_q KL(p‖q) over Gaussians is moment matching (μ = E_p x, σ² = Var_p x), whatever p
    (here on the figure's grid, wide enough for the truncation of q to be negligible); the reverse
    fit from a start near the right bump settles on that bump (μ ≈ 1.5, σ ≈ 0.8)."""
    x = figures.KL_GRID
    logits_p = _two_bumps(x)
    p = np.exp(logits_p - logits_p.max())
    p /= p.sum()
    mean = float(np.sum(p * x))
    std = float(np.sqrt(np.sum(p * (x - mean) ** 2)))
    mu, sigma = figures.fit_gaussian(logits_p, x, "forward")
    assert mu == pytest.approx(mean, abs=1e-3)
    assert sigma == pytest.approx(std, rel=1e-3)
    mu_r, sigma_r = figures.fit_gaussian(logits_p, x, "reverse")
    assert mu_r == pytest.approx(1.5, abs=0.05)
    assert sigma_r == pytest.approx(0.8, rel=0.07)


def test_positional_gram_depends_on_the_offset_only():
    """(PE PEᵀ)_pq = Σ_i cos((p - q) ω_i): the diagonal is d/2 and every diagonal of the matrix
    is constant (a Toeplitz matrix)."""
    length, dim = 48, 32
    pe, gram = map(np.asarray, figures.positional_tables(length, dim))
    assert pe.shape == (length, dim) and gram.shape == (length, length)
    np.testing.assert_allclose(np.diag(gram), dim / 2, rtol=1e-5)
    omega = 10000.0 ** (-np.arange(0, dim, 2) / dim)
    offsets = np.arange(length)[:, None] - np.arange(length)[None, :]
    expected = np.cos(offsets[..., None] * omega).sum(-1)
    np.testing.assert_allclose(gram, expected, atol=1e-4)


def test_relu_activation_variance_changes_by_gain_squared_over_two_per_layer(key):
    """With Var W = g²/n, Var(z_{l+1}) = n Var(W) E[relu(z_l)²] = (g²/2) Var(z_l), and Var(h_l)
    is a fixed fraction of Var(z_l): He (g = √2) keeps it constant over 20 layers (within the
    finite width's fluctuation), g = 0.5 makes it vanish (x 1/8 per layer), g = 2 explode (x 2).
    With one key the weights differ only by g and ReLU is positively homogeneous, so the ratio
    to He is exactly (g²/2)^l."""
    he = np.asarray(figures.activation_variances(key, he_normal(), jax.nn.relu))
    assert np.all((he / he[0] > 0.5) & (he / he[0] < 2.0)), he / he[0]
    slope = np.polyfit(np.arange(1, 21), np.log(he), 1)[0]
    assert abs(slope) < 0.05
    layers = np.arange(1, 21)
    for gain in (0.5, 2.0):
        v = np.asarray(figures.activation_variances(key, he_normal(gain=gain), jax.nn.relu))
        np.testing.assert_allclose(v / he, (gain**2 / 2) ** layers, rtol=1e-3)
    assert v[-1] / v[0] > 1e4  # gain 2 explodes


def test_tanh_with_xavier_keeps_a_nonvanishing_variance(key):
    """tanh is linear near 0, so Xavier's Var W = 1/n keeps the variance from vanishing (it
    decays only slowly, like 1/l), while a quarter of it (Var W = 0.25/n) loses x 1/4 per layer."""
    xavier = np.asarray(figures.activation_variances(key, xavier_normal(), jnp.tanh))
    small = xavier_normal(gain=0.5)
    shrunk = np.asarray(figures.activation_variances(key, small, jnp.tanh))
    assert xavier[-1] > 0.02
    slope = np.polyfit(np.arange(10, 21), np.log(shrunk[9:]), 1)[0]
    assert slope == pytest.approx(math.log(0.25), abs=0.05)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: figures.fit_gaussian(np.zeros(5), np.zeros(5), "sideways"), "direction"),
        (lambda: figures.fit_gaussian(np.zeros(5), np.zeros(4), "forward"), "logits_p"),
        (lambda: figures.point_mass_distances(np.zeros((2, 2))), "thetas must have shape"),
        (lambda: figures.gan_snapshots(None, None, None, {}, (0, 150), 4), "multiples of every"),
        (lambda: figures.gan_snapshots(None, None, None, {}, (200, 100), 4), "increasing"),
        (lambda: figures.make_figures(None, "unused", ["nope"]), "unknown figure 'nope'"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_make_figures_writes_the_cheap_figures(tmp_path, key):
    paths = figures.make_figures(key, tmp_path, CHEAP)
    assert [p.name for p in paths] == [f"{n}.png" for n in CHEAP]
    for path in paths:
        _check_png(path)


def test_a_figure_is_the_same_alone_or_with_the_others(tmp_path, key):
    """``--only`` draws a figure with the key it has in a full run: the files are equal."""
    alone = figures.make_figures(key, tmp_path / "a", ["point_masses"])[0]
    both = figures.make_figures(key, tmp_path / "b", ["positional_encoding", "point_masses"])
    assert alone.read_bytes() == both[1].read_bytes()


def test_unknown_figure_is_one_line_naming_it_and_the_known_ones(tmp_path, capsys):
    code = main(["figures", "--out", str(tmp_path), "--only", "schedules", "nope"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("genjax: error: unknown figure 'nope'")
    assert all(name in err for name in figures.FIGURES)
    assert not list(tmp_path.iterdir())  # nothing drawn before the names are checked


@pytest.mark.slow
def test_make_figures_writes_the_trained_figures(tmp_path, key):
    paths = figures.make_figures(key, tmp_path, SLOWER + TRAINED)
    for path in paths:
        _check_png(path)


@pytest.mark.slow
def test_attention_rows_are_causal_distributions(key):
    """Each head's row i is a distribution over keys j ≤ i of the trained character model."""
    from genjax import recipes

    result = recipes.run(key, recipes.get("transformer_char_lm"), "quick")
    lm = result.task.model
    tokens = [lm.corpus.alphabet.index(c) for c in figures.ATTENTION_TEXT]
    maps = np.asarray(figures.attention_maps(lm.model, result.state.ema_params, tokens))
    length = len(tokens)
    assert maps.shape == (lm.model.num_heads, length, length)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert np.all(maps[:, ~np.tri(length, dtype=bool)] == 0.0)


@pytest.mark.slow
def test_trained_denoiser_reconstructs_closer_than_its_noisy_input(key):
    """The noisy input is x + 0.3 ε (the recipe's corruption); after the quick budget the
    reconstruction of a noisy test digit is nearer the
    clean digit than the noisy input is (per-pixel MSE)."""
    from genjax import recipes

    result = recipes.run(key, recipes.get("denoising_autoencoder"), "quick")
    x = result.dataset.test["x"][:100]
    noisy, recon = figures.denoising_rows(key, result.task.model, result.state.ema_params, x)
    assert float(jnp.std(noisy - x)) == pytest.approx(0.3, rel=0.05)  # the recipe's noise
    noisy_mse = float(jnp.mean((noisy - x) ** 2))
    assert float(jnp.mean((recon - x) ** 2)) < 0.5 * noisy_mse
