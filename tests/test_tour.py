"""The tour (genjax/tour.py): kept results, the report, the FID table, the image samples."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.cli import main
from genjax.recipes import Report
from genjax.tour import (
    GMM_COMPONENTS,
    family_markdown,
    gmm_samples,
    image_samples,
    keep_result,
    kept_results,
    quality_markdown,
    select,
)


def _fid_table(report: str) -> list[list[str]]:
    lines = report.splitlines()
    start = lines.index("## Image families ranked by FID")
    table = [line for line in lines[start:] if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]


def test_tour_results_are_kept_and_merged_by_budget(tmp_path):
    def report(value):
        return Report("m", np.float32(value), "b", 2.0, extra={"e": np.float64(value)})

    images = np.zeros((3, 8, 8, 1), np.float32)
    keep_result(tmp_path / "vae_digits", "quick", report(1.0), 4.0, [], images)
    keep_result(tmp_path / "autoencoder", "quick", report(0.5), 3.0, [tmp_path / "a.png"], None)
    keep_result(tmp_path / "flow_digits", "full", report(9.0), 5.0, [], images)
    rows, samples = kept_results(tmp_path, "quick")
    assert [recipe.name for recipe, *_ in rows] == ["autoencoder", "vae_digits"]  # registry order
    (_, first, seconds, figs), (_, second, _, _) = rows
    assert first == report(0.5) and second.extra == {"e": 1.0} and seconds == 3.0
    assert figs == [tmp_path / "autoencoder" / "a.png"]
    assert list(samples) == ["vae_digits"] and samples["vae_digits"].shape == images.shape
    keep_result(tmp_path / "vae_digits", "quick", report(0.25), 1.0, [], None)  # rerun, no images
    rows, samples = kept_results(tmp_path, "quick")
    assert rows[1][1].value == 0.25 and samples == {}
    assert [recipe.name for recipe, *_ in kept_results(tmp_path, "full")[0]] == ["flow_digits"]
    assert kept_results(tmp_path, "tour") == ([], {})


def test_tour_report_only_rebuilds_the_report_from_kept_results(tmp_path, capsys):
    out = tmp_path / "tour"
    assert main(["tour", "--quick", "--report-only", "--out", str(out)]) == 1
    assert "no tour results of the 'quick' budget" in capsys.readouterr().err
    report = Report("test MSE per pixel", 0.0125, "PCA, 8 components", 0.0246)
    keep_result(out / "autoencoder", "quick", report, 3.0, [], None)
    assert main(["tour", "--quick", "--report-only", "--out", str(out)]) == 0
    row = next(
        line for line in (out / "report.md").read_text().splitlines() if "autoencoder" in line
    )
    assert "| 0.0125 |" in row and "| yes |" in row


def _figures(fid):
    """A row of the FID table with FID ``fid`` and 0.5 for every other figure."""
    keys = ("kid", "kid_std", "precision", "recall", "inception_score")
    return {"fid": fid, **dict.fromkeys(keys, 0.5)}


def test_quality_table_ranks_by_fid_below_the_floor():
    quality = {
        "figures": {
            "floor": _figures(1.0),
            "baseline": _figures(20.0),
            "a": _figures(30.0),
            "b": _figures(2.0),
            "c": None,
            "d": _figures(9.0),
        },
        "classifier": "digits_cnn",
        "steps": 1500,
        "accuracy": 0.98,
        "n": 360,
        "subset": 180,
        "seconds": 1.0,
    }
    rows = _fid_table("\n".join(quality_markdown(quality, ["a", "x", "b", "c", "d"], False)))
    assert [r[:2] for r in rows] == [
        ["floor", "360 training images (the floor)"],
        ["baseline", rows[1][1]],
        ["1", "b"],
        ["2", "d"],
        ["3", "a"],
        ["4", "c"],
    ]
    assert rows[-1][2] == "non-finite samples"


def test_image_samples_draws_only_images_of_the_data_shape():
    from genjax.data import Dataset
    from genjax.train import Task

    split = {"x": np.zeros((6, 8, 8, 1), np.float32), "y": np.zeros(6, np.int32)}
    data, n = Dataset("tiny", split, split, 1, 17), 6
    ran = []

    def text(params, key, num):  # traceable, not images: must never run on values
        ran.append(not isinstance(key, jax.core.Tracer))
        return jnp.zeros((num, 32), jnp.int32)

    def numpy_images(params, key, num):  # cannot be traced: run, then checked
        return np.full((num, *data.shape), float(np.asarray(params)), np.float32)

    def jax_images(params, key, num):
        return jax.random.uniform(key, (num, *data.shape)) * params

    key = jax.random.key(0)
    loss = lambda *a: (0.0, {})
    assert image_samples(key, Task(init=None, loss=loss), 0.5, data) is None
    assert image_samples(key, Task(init=None, loss=loss, sample=text), 0.5, data) is None
    assert ran == [False]
    drawn = image_samples(key, Task(init=None, loss=loss, sample=numpy_images), 0.5, data)
    np.testing.assert_array_equal(drawn, np.full((n, *data.shape), 0.5, np.float32))
    drawn = image_samples(key, Task(init=None, loss=loss, sample=jax_images), 0.5, data)
    assert drawn.shape == (n, *data.shape) and 0.0 <= drawn.min() and drawn.max() <= 0.5


def test_gmm_baseline_is_seeded_shuffled_and_clipped():
    """The baseline's samples: a fixed function of the images (seeded fit, seeded shuffle),
    in the pixel range, mixed over components (not grouped, as scikit-learn returns them)."""
    from sklearn.mixture import GaussianMixture

    from genjax.data import load_dataset

    images = load_dataset("digits").train["x"][:400]
    drawn = gmm_samples(images, 50)
    assert drawn.shape == (50, 8, 8, 1) and drawn.dtype == np.float32
    assert 0.0 <= drawn.min() and drawn.max() <= 1.0
    np.testing.assert_array_equal(drawn, gmm_samples(images, 50))
    gmm = GaussianMixture(GMM_COMPONENTS, covariance_type="full", random_state=0)
    grouped = np.clip(gmm.fit(images.reshape(400, -1)).sample(50)[0], 0.0, 1.0)
    assert not np.array_equal(drawn.reshape(50, -1), grouped)
    np.testing.assert_allclose(
        np.sort(drawn.reshape(50, -1), axis=0), np.sort(grouped, axis=0).astype(np.float32)
    )


def test_select_by_budget_and_only_overrides():
    quick, default, full = select("quick"), select("tour"), select("full")
    assert "autoencoder" in quick and "denoising_autoencoder" not in quick
    assert set(default) < set(full) and all(r.tour_steps for r in default.values())
    assert list(select("quick", ["denoising_autoencoder"])) == ["denoising_autoencoder"]
    with pytest.raises(ValueError, match="unknown recipes"):
        select("full", ["nope"])
    with pytest.raises(ValueError, match="convvae_digits: no tour budget"):
        select("tour", ["convvae_digits"])


def test_tour_budget_is_the_full_config_cut_to_tour_steps():
    recipe = select("tour")["transformer_char_lm"]
    full, cut = recipe.budget("full"), recipe.budget("tour")
    assert cut.steps == recipe.tour_steps < full.steps
    assert dataclasses.replace(cut, steps=full.steps) == full
    assert recipe.budget("quick") == recipe.config(True)
    with pytest.raises(ValueError, match="budget must be one of quick, tour, full"):
        recipe.budget("long")


def test_family_table_counts_a_win_in_the_own_metric_or_in_fid():
    recipes = select("full")
    rows = [
        (recipes["autoencoder"], Report("m", 1.0, "b", 2.0), 1.0, []),  # beats in its metric
        (recipes["dcgan_digits"], Report("m", 3.0, "b", 2.0), 1.0, []),  # loses, but FID wins
        (recipes["cgan_digits"], Report("m", 3.0, "b", 2.0), 1.0, []),
        (recipes["word2vec"], Report("m", 3.0, "b", 2.0), 1.0, []),  # loses both
    ]
    fid = {"baseline": {"fid": 10.0}, "dcgan_digits": {"fid": 5.0}, "cgan_digits": None}
    table = {
        line.split(" | ")[0].strip("| "): line.strip("|").split(" | ")
        for line in family_markdown(rows, {"figures": fid})
        if line.startswith("| ") and "---" not in line
    }
    assert table["autoencoder"][2:] == ["autoencoder", "no", "yes "]
    assert table["gan"][1:] == ["dcgan_digits, cgan_digits", "no", "dcgan_digits", "yes "]
    assert table["word2vec"][2:] == ["no", "no", "no "]
    assert recipes["vae_digits"].family == "vae" and recipes["flow_digits"].family == "flows"


def test_labelled_sample_sets_are_kept_and_ranked_as_rows_of_their_recipe(tmp_path):
    """A recipe's {label: images} (e.g. one set per guidance scale) is kept as
    samples@<label>.npy, loaded as '<recipe> @ <label>' in numeric order, ranked in the FID
    table with the others, and counted for its family."""
    from genjax.tour import sample_sets

    images = np.zeros((3, 8, 8, 1), np.float32)
    sets = {"w=2": images + 0.2, "w=0": images, "w=1.5": images + 0.1}
    report = Report("m", 1.0, "b", 2.0)
    keep_result(tmp_path / "diffusion_digits_cfg", "tour", report, 4.0, [], sets)
    rows, samples = kept_results(tmp_path, "tour")
    assert list(samples) == [f"diffusion_digits_cfg @ w={w}" for w in ("0", "1.5", "2")]
    np.testing.assert_array_equal(samples["diffusion_digits_cfg @ w=1.5"], images + 0.1)
    keep_result(tmp_path / "diffusion_digits_cfg", "tour", report, 4.0, [], images)  # one set
    assert list(kept_results(tmp_path, "tour")[1]) == ["diffusion_digits_cfg"]

    quality = {
        "figures": {
            "floor": _figures(1.0),
            "baseline": _figures(20.0),
            "dcgan_digits": _figures(6.0),
            "diffusion_digits_cfg @ w=0": _figures(30.0),
            "diffusion_digits_cfg @ w=1.5": _figures(3.0),
        },
        "classifier": "digits_cnn",
        "steps": 1500,
        "accuracy": 0.98,
        "n": 360,
        "subset": 180,
        "seconds": 1.0,
    }
    order = ["dcgan_digits", "diffusion_digits_cfg"]
    table = _fid_table("\n".join(quality_markdown(quality, order, "tour")))
    assert [r[:2] for r in table[2:]] == [
        ["1", "diffusion_digits_cfg @ w=1.5"],
        ["2", "dcgan_digits"],
        ["3", "diffusion_digits_cfg @ w=0"],
    ]
    recipes = select("full")
    rows = [(recipes["diffusion_digits_cfg"], Report("m", 3.0, "b", 2.0), 1.0, [])]
    family = [line for line in family_markdown(rows, quality) if "diffusion_digits_cfg" in line]
    assert family[0].split(" | ")[3] == "diffusion_digits_cfg"

    class Model:
        def tour_sample_sets(self, params, key, n):
            return {"w=1": np.ones((n, 8, 8, 1), np.float32)}

    from genjax.data import Dataset
    from genjax.train import Task

    split = {"x": np.zeros((5, 8, 8, 1), np.float32), "y": np.zeros(5, np.int32)}
    task = Task(init=None, loss=lambda *a: (0.0, {}), model=Model())
    drawn = sample_sets(jax.random.key(0), task, None, Dataset("tiny", split, split, 1, 17))
    assert list(drawn) == ["w=1"] and drawn["w=1"].shape == (5, 8, 8, 1)
