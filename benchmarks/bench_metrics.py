r"""Sample-quality metrics: FID and KID at Inception scale, and the feature extractors' rate.

* FID between two sets of 10 000 x 2048 features (the size of an Inception-v3 pool layer and of
  the usual 10k-sample evaluation): :func:`genjax.metrics.fid` (float64 statistics, one ``eigh``
  and one ``eigvalsh`` of symmetric matrices) beside the pytorch-fid formula
  (``numpy.cov``, then ``scipy.linalg.sqrtm`` of the non-symmetric product
  :math:`\Sigma_1\Sigma_2`, real part), which is the reference row. The row name gives the
  relative difference of the two values. A second group times the Fréchet distance alone, from
  the same means and covariances (:func:`genjax.metrics.fid_from_statistics` against ``sqrtm``).
* KID on the same features, 100 subsets of 1000 rows (Bińkowski et al.'s defaults):
  :func:`genjax.metrics.kid` (one jitted ``lax.map`` over the subsets, float32) beside a numpy
  loop over the subsets in the style of the paper's code (float32). Both build three
  :math:`s \times s` Gram matrices per subset of :math:`s` rows, :math:`3 \cdot 2 s^2 d` FLOPs,
  the count behind the GFLOP/s column.
* Extractor throughput, images per second through
  :meth:`genjax.classifier.CNNClassifier.features` (the digits CNN of the tour, 8x8 images, and
  the same architecture on 28x28) and through a VGG-16 loaded as
  :func:`genjax.classifier.load_vgg_extractor` builds it (32x32 images; random weights, since
  the speed does not depend on them and nothing is downloaded).

The features are random: a standard normal matrix times a fixed random mixing matrix, the second
set shifted, so that both covariances are full and correlated like a network's. ``--quick`` uses
2 000 x 512 features and fewer images. The FID, KID and VGG rows take seconds per call: at full
size they time one call after the warm-up call (three with ``--quick``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from benchmarks.harness import flops_of
from genjax import metrics
from genjax.classifier import CNNClassifier, DigitsCNN, LocalFeatureExtractor, VGGFeatures

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def _features(n: int, dim: int, seed: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(0).normal(size=(dim, dim)) / np.sqrt(dim)  # shared by both sets
    return (rng.normal(size=(n, dim)) @ mix + shift).astype(np.float32)


def _sqrtm_frechet(m1, c1, m2, c2) -> float:
    # pytorch-fid's calculate_frechet_distance: sqrtm of the non-symmetric product, real part.
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    covmean = np.real(covmean)
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(covmean))


def _sqrtm_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    # pytorch-fid's calculate_activation_statistics, then the formula above.
    stats = [(np.mean(f, axis=0), np.cov(f, rowvar=False)) for f in (f1, f2)]
    return _sqrtm_frechet(*stats[0], *stats[1])


def _numpy_kid(f1: np.ndarray, f2: np.ndarray, seed: int = 0) -> float:
    # The subset loop of Bińkowski et al.'s polynomial_mmd_averages, cubic kernel, unbiased MMD².
    f1, f2 = np.asarray(f1), np.asarray(f2)
    rng = np.random.default_rng(seed)
    dim = f1.shape[1]
    size = min(KID_SUBSET_SIZE, len(f1), len(f2))
    values = []
    for _ in range(KID_SUBSETS):
        x = f1[rng.choice(len(f1), size, replace=False)]
        y = f2[rng.choice(len(f2), size, replace=False)]
        kxx = (x @ x.T / dim + 1) ** 3
        kyy = (y @ y.T / dim + 1) ** 3
        kxy = (x @ y.T / dim + 1) ** 3
        off = size * (size - 1)
        values.append(
            (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean()
        )
    return float(np.mean(values))


def _bench_fid(h, n: int, dim: int, repeats: int) -> None:
    f1, f2 = _features(n, dim, 1, 0.0), _features(n, dim, 2, 0.1)
    ours, ref = metrics.fid(f1, f2), _sqrtm_fid(f1, f2)
    agree = f"{abs(ours - ref) / ref:.1e}"
    group = f"FID from features, {n} x {dim}"
    h.measure(group, "genjax.metrics.fid (eigh, float64)", metrics.fid, f1, f2, repeats=repeats)
    h.measure(
        group,
        f"numpy.cov + scipy.linalg.sqrtm (pytorch-fid); rel. diff. {agree}",
        _sqrtm_fid,
        f1,
        f2,
        repeats=repeats,
    )

    m1, c1 = metrics.feature_statistics(f1)
    m2, c2 = metrics.feature_statistics(f2)
    group = f"Fréchet distance from statistics, dim {dim}"
    args = (m1, c1, m2, c2)
    h.measure(
        group,
        "genjax.metrics.fid_from_statistics (eigh)",
        metrics.fid_from_statistics,
        *args,
        repeats=repeats,
    )
    h.measure(group, "scipy.linalg.sqrtm(C1 C2)", _sqrtm_frechet, *args, repeats=repeats)

    key = jax.random.key(0)
    group = f"KID, {n} x {dim}, {KID_SUBSETS} subsets of {min(KID_SUBSET_SIZE, n)}"
    size = min(KID_SUBSET_SIZE, n)
    work = {"items": KID_SUBSETS, "unit": "subsets", "flops": KID_SUBSETS * 3 * 2 * size**2 * dim}
    h.measure(
        group,
        "genjax.metrics.kid (jit, lax.map)",
        metrics.kid,
        key,
        f1,
        f2,
        **work,
        repeats=repeats,
    )
    h.measure(group, "numpy loop (float32)", _numpy_kid, f1, f2, **work, repeats=repeats)


def _per_image(flops: float | None, n: int) -> float | None:
    # XLA's count for one image, times n: a convolution's cost is linear in the batch.
    return None if flops is None else n * flops


def _bench_digits_cnn(h, side: int, n: int) -> None:
    module = DigitsCNN()
    x = np.random.default_rng(0).uniform(size=(n, side, side, 1)).astype(np.float32)
    params = module.init(jax.random.key(0), x[:1])["params"]
    net = CNNClassifier(module, params, (side, side, 1))
    pooled = lambda p, images: jnp.mean(net.features_fn(p, images), axis=(1, 2))
    flops = _per_image(flops_of(pooled, params, jnp.asarray(x[:1])), n)
    h.measure(
        f"digits CNN features, {side}x{side}, {n} images",
        "CNNClassifier.features (jit, chunks of 512)",
        net.features,
        x,
        items=n,
        unit="images",
        flops=flops,
    )


def _bench_vgg(h, n: int, repeats: int) -> None:
    module = VGGFeatures()
    x = np.random.default_rng(0).uniform(size=(n, 32, 32, 3)).astype(np.float32)
    params = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    extractor = LocalFeatureExtractor(module, params, 32)
    apply = lambda p, images: module.apply({"params": p}, images)
    flops = _per_image(flops_of(apply, params, x[:1]), n)
    h.measure(
        f"VGG-16 features, 32x32, {n} images",
        "LocalFeatureExtractor.features (random weights)",
        extractor.features,
        x,
        items=n,
        unit="images",
        flops=flops,
        repeats=repeats,
    )


def run(h, quick: bool) -> None:
    repeats = 3 if quick else 1  # the FID, KID and VGG rows take seconds per call
    n, dim = (2_000, 512) if quick else (10_000, 2048)
    _bench_fid(h, n, dim, repeats)
    _bench_digits_cnn(h, 8, 2_000 if quick else 10_000)
    _bench_digits_cnn(h, 28, 500 if quick else 2_000)
    _bench_vgg(h, 64 if quick else 256, repeats)
