"""The reference digits classifier that judges class-conditional samples."""

import numpy as np
import pytest

from genjax.classifier import (
    digits_cnn,
    fit_digits_classifier,
    load_cnn_classifier,
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
