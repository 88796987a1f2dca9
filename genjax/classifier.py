"""A reference digits classifier for judging generated and class-conditional samples.

Families that generate a requested class (CVAE, conditional GAN, guided diffusion) report the
accuracy of an independent classifier on their samples. This one is an RBF support-vector
machine on raw pixels (scikit-learn), fitted on the training split only; it reaches about 99 %
on the digits test split (``tests/test_classifier.py::test_digits_classifier_accuracy``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from genjax.data import Dataset

_FITTED: dict[str, object] = {}


def _fitted(data: Dataset):
    from sklearn.svm import SVC

    if data.name not in _FITTED:
        x = data.train["x"].reshape(len(data.train["x"]), -1)
        _FITTED[data.name] = SVC(C=10.0, gamma="scale").fit(x, data.train["y"])
    return _FITTED[data.name]


def fit_digits_classifier(dataset: Dataset) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping images ``[N, H, W, C]`` in [0, 1] to predicted labels ``[N]`` int32.

    Fitted once per process on ``dataset``'s training split (cached by data-set name).
    """
    model = _fitted(dataset)

    def predict(images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.shape[1:] != dataset.shape:
            raise ValueError(f"images must be [N, {dataset.shape}], got {images.shape}")
        return model.predict(images.reshape(len(images), -1)).astype(np.int32)

    return predict
