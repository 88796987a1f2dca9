"""The reference digits classifier that judges class-conditional samples."""

import numpy as np
import pytest

from genjax.classifier import fit_digits_classifier
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
