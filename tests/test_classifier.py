"""The reference digits classifier that judges class-conditional samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.classifier import (
    digits_cnn,
    fit_digits_classifier,
    load_cnn_classifier,
    load_npz_params,
    load_vgg_extractor,
    save_npz_params,
    train_cnn_classifier,
)
from genjax.data import load_dataset


def test_digits_classifier_accuracy():
    data = load_dataset("digits")
    predict = fit_digits_classifier(data)
    accuracy = float(np.mean(predict(data.test["x"]) == data.test["y"]))
    assert accuracy > 0.97, accuracy


def test_digits_classifier_rejects_wrong_image_shape():
    predict = fit_digits_classifier(load_dataset("digits"))
    with pytest.raises(ValueError, match="images must be"):
        predict(np.zeros((2, 28, 28, 1)))


# ----------------------------------------------------------------------------- digits CNN


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A DigitsCNN trained for 20 steps by the loop into a run folder."""
    run = tmp_path_factory.mktemp("cnn")
    data = load_dataset("digits")
    net = train_cnn_classifier(data, steps=20, widths=(4, 8), strides=(1, 2), run_dir=run)
    return run, net, data


def test_cnn_classifier_saves_and_loads_by_path(tiny_run):
    """identity: the classifier read back from its run folder gives the same logits."""
    run, net, data = tiny_run
    loaded = load_cnn_classifier(run)
    x = data.test["x"][:50]
    np.testing.assert_array_equal(loaded.logits(x), net.logits(x))
    assert loaded.module == net.module and (run / "metrics.jsonl").is_file()


def test_cnn_features_are_the_pooled_last_map_and_probs_sum_to_one(tiny_run):
    """identity: features = spatial mean of the last ReLU map; logits = features W + b;
    softmax rows sum to 1; layers has one map per convolution."""
    _, net, data = tiny_run
    x = data.test["x"][:30]
    maps = net.layers(x)
    assert [m.shape for m in maps] == [(30, 8, 8, 4), (30, 4, 4, 8)]
    features = net.features(x)
    np.testing.assert_allclose(features, maps[-1].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    dense = net.params["dense"]
    expected = features @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])[None, :]
    np.testing.assert_allclose(net.logits(x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.probs(x).sum(axis=1), 1.0, rtol=1e-5)
    assert net.predict(x).dtype == np.int32


def test_cnn_classifier_rejects_bad_input(tiny_run, tmp_path):
    _, net, _ = tiny_run
    with pytest.raises(ValueError, match="images must be"):
        net.features(np.zeros((2, 28, 28, 1)))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_cnn_classifier(tmp_path / "missing")
    (tmp_path / "config.json").write_text('{"train": {}, "recipe": "autoencoder"}')
    with pytest.raises(ValueError, match="not a DigitsCNN classifier run"):
        load_cnn_classifier(tmp_path)


@pytest.mark.slow
def test_digits_cnn_accuracy(tmp_path):
    """The feature extractor of the metrics reaches >= 97 % on the digits test split."""
    data = load_dataset("digits")
    net = digits_cnn(data, run_dir=tmp_path / "cnn")
    accuracy = float(np.mean(net.predict(data.test["x"]) == data.test["y"]))
    assert accuracy >= 0.97, accuracy
    assert load_cnn_classifier(tmp_path / "cnn").cam_weights().shape == (128, 10)


# ----------------------------------------------------------------------------- local weights

BLOCKS = ((2,), (3, 3))


def _vgg_params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {
        "block1_conv1": (3, 3, 3, 2),
        "block2_conv1": (3, 3, 2, 3),
        "block2_conv2": (3, 3, 3, 3),
    }
    return {
        name: {
            "kernel": rng.normal(size=s).astype(np.float32) * 0.01,
            "bias": rng.normal(size=s[-1]).astype(np.float32),
        }
        for name, s in shapes.items()
    }


def _vgg_reference(params: dict, x: np.ndarray) -> list[np.ndarray]:
    # Keras' VGG preprocessing, then lax.conv_general_dilated (not genjax's im2col) and max-pool.
    x = np.tile(x, (1, 1, 1, 3))[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68])
    x = jnp.asarray(x, jnp.float32)
    maps = []
    for b, convs in enumerate(BLOCKS, start=1):
        for c in range(1, len(convs) + 1):
            p = params[f"block{b}_conv{c}"]
            y = jax.lax.conv_general_dilated(
                x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            x = jax.nn.relu(y + p["bias"].reshape(1, 1, 1, -1))
        maps.append(np.asarray(x))
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return maps


def test_vgg_extractor_loads_a_local_npz_file(tmp_path):
    """reference implementation: a random-weight VGG file written here, read back and run,
    matches lax.conv_general_dilated + reduce_window on the same weights."""
    params = _vgg_params(0)
    path = save_npz_params(tmp_path / "vgg.npz", params)
    loaded = load_npz_params(path)
    for layer, leaves in params.items():
        for name, value in leaves.items():
            np.testing.assert_array_equal(loaded[layer][name], value)
    extractor = load_vgg_extractor(path, BLOCKS)
    x = np.random.default_rng(1).uniform(size=(2, 4, 4, 1)).astype(np.float32)
    expected = _vgg_reference(params, x)
    got = extractor.layers(x)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        extractor.features(x), expected[-1].mean(axis=(1, 2)), rtol=1e-4, atol=1e-3
    )
    assert extractor.features(np.zeros((3, 2, 2, 1))).shape == (3, 3)  # resized up to 4x4


def test_vgg_extractor_rejects_bad_weight_files(tmp_path):
    params = _vgg_params(0)
    del params["block2_conv2"]
    with pytest.raises(ValueError, match="lacks block2_conv2/bias"):
        load_vgg_extractor(save_npz_params(tmp_path / "missing.npz", params), BLOCKS)
    params = _vgg_params(0)
    params["block1_conv1"]["kernel"] = np.zeros((3, 3, 1, 2), np.float32)
    with pytest.raises(ValueError, match=r"block1_conv1/kernel must have shape \(3, 3, 3, 2\)"):
        load_vgg_extractor(save_npz_params(tmp_path / "shape.npz", params), BLOCKS)
    params = _vgg_params(0)
    params["fc1"] = {"kernel": np.zeros((2, 2), np.float32)}
    with pytest.raises(ValueError, match="holds fc1/kernel"):
        load_vgg_extractor(save_npz_params(tmp_path / "extra.npz", params), BLOCKS)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_npz_params(tmp_path / "nope.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"expected an \.npz archive"):
        load_npz_params(tmp_path / "single.npy")
