"""Plots: the tiled grid's geometry and that each writer leaves a readable PNG."""

import matplotlib.image as mpimg
import numpy as np
import pytest

from genjax import viz


def test_tile_images_places_each_image(key):
    images = np.random.default_rng(0).uniform(size=(5, 3, 4, 1)).astype(np.float32)
    grid = viz.tile_images(images, ncols=2, pad=1)
    assert grid.shape == (3 * 4 - 1, 2 * 5 - 1, 1)
    np.testing.assert_array_equal(grid[4:7, 5:9], images[3])  # row 1, column 1
    np.testing.assert_array_equal(grid[8:11, 5:9], 1.0)  # the empty sixth cell stays white


def test_tile_images_rejects_non_images():
    with pytest.raises(ValueError, match=r"images must be \[N, H, W, C\]"):
        viz.tile_images(np.zeros((4, 8, 8)))


def test_every_writer_leaves_a_png(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "m.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    paths = [
        viz.image_grid(rng.uniform(size=(4, 8, 8, 1)), tmp_path / "grid.png", title="t"),
        viz.loss_curves(tmp_path / "m.jsonl", tmp_path / "loss.png"),
        viz.scatter_2d({"a": rng.normal(size=(50, 2))}, tmp_path / "s.png"),
        viz.density_2d(lambda p: -0.5 * np.sum(p**2, axis=1), tmp_path / "d.png", lim=3.0),
        viz.line_plot(
            np.arange(5), {"model": rng.normal(size=5)}, tmp_path / "l.png", levels={"base": 0.0}
        ),
        viz.labelled_scatter(rng.normal(size=(3, 2)), ["a", "b", "c"], tmp_path / "w.png", "t"),
    ]
    for path in paths:
        assert mpimg.imread(path).ndim == 3
