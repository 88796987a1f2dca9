"""Autoencoder recipes: plain, denoising and sparse, each compared with PCA of the same size.

The headline is the test-split mean squared error per pixel of reconstructing clean images,
beside scikit-learn's PCA with as many components as the code has dimensions, fitted on the
same training split: the best any *linear* code of that size can do. The task's ``model`` is
the autoencoder module; its sampler reconstructs random test images (an autoencoder has no
prior).

Derivation: derivations/01-autoencoders.md
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genjax import autoencoders as ae
from genjax import viz
from genjax.data import Dataset
from genjax.recipes import Recipe, Report, register
from genjax.train import Task, TrainConfig

__all__ = ["make_task", "pca_mse_per_pixel", "test_mse_per_pixel"]

CODE_DIM = 8
EVAL_BATCH = 512


def make_task(dataset: Dataset, options: Mapping[str, Any], *, cls=ae.Autoencoder, **fields):
    """The :class:`Task` of an autoencoder ``cls(**fields)`` on ``dataset``.

    ``options`` (from the command line): ``code_dim``, ``hidden``, ``arch``.

    Derivation: derivations/01-autoencoders.md
    """
    if len(dataset.shape) != 3:
        raise ValueError(
            f"autoencoders need image data [H, W, C], got example shape "
            f"{dataset.shape} for {dataset.name!r}"
        )
    model = cls(
        shape=dataset.shape,
        code_dim=int(options.get("code_dim", CODE_DIM)),
        hidden=int(options.get("hidden", 256)),
        arch=str(options.get("arch", "mlp")),
        **fields,
    )

    def init(key, batch):
        return model.init(key, batch["x"])

    def loss(params, key, batch):
        per_example, code = model.apply(params, key, batch["x"], method="loss")
        mse = jnp.mean(ae.squared_error(batch["x"], model.apply(params, batch["x"])[0]))
        metrics = {
            "mse_per_pixel": mse / np.prod(dataset.shape),
            "code_l1": jnp.mean(ae.l1_penalty(code)),
        }
        return jnp.mean(per_example), metrics

    return Task(
        init=init, loss=loss, sample=_reconstructions(model, dataset.test["x"]), model=model
    )


def _reconstructions(model: ae.Autoencoder, images: np.ndarray):
    """``sample(params, key, n)``: an autoencoder has no prior, so it reconstructs ``n`` random
    ``images`` (drawn without replacement)."""

    def sample(params, key, n):
        idx = jax.random.choice(key, len(images), (n,), replace=False)
        return model.apply(params, jnp.asarray(images)[idx])[0]

    return sample


def _model_apply(params, x, model):
    return model.apply(params, x)[0]


def test_mse_per_pixel(model: ae.Autoencoder, params, x: np.ndarray) -> float:
    """Mean over test images and pixels of the squared reconstruction error.

    Derivation: derivations/01-autoencoders.md
    """
    apply = jax.jit(partial(_model_apply, model=model))
    errors = [
        np.asarray(ae.squared_error(x[i : i + EVAL_BATCH], apply(params, x[i : i + EVAL_BATCH])))
        for i in range(0, len(x), EVAL_BATCH)
    ]
    return float(np.concatenate(errors).mean() / np.prod(x.shape[1:]))


def pca_mse_per_pixel(train: np.ndarray, test: np.ndarray, components: int) -> float:
    """Test MSE per pixel of scikit-learn's PCA with ``components`` fitted on ``train``.

    Derivation: derivations/01-autoencoders.md
    """
    from sklearn.decomposition import PCA

    flat_tr, flat_te = train.reshape(len(train), -1), test.reshape(len(test), -1)
    pca = PCA(components).fit(flat_tr)
    recon = pca.inverse_transform(pca.transform(flat_te))
    return float(np.mean((recon - flat_te) ** 2))


def _evaluate(task: Task, params, dataset: Dataset, key) -> Report:
    """Test MSE per pixel of clean reconstructions vs PCA of the same code size.

    The code size is the number of numbers that describe one image: ``code_dim``, or ``top_k``
    for a sparse code (PCA then keeps as many components as the code has non-zero entries).
    """
    del key
    model = task.model
    size = getattr(model, "top_k", None) or model.code_dim
    value = test_mse_per_pixel(model, params, dataset.test["x"])
    baseline = pca_mse_per_pixel(dataset.train["x"], dataset.test["x"], size)
    return Report(
        metric="test MSE per pixel",
        value=value,
        baseline=f"PCA, {size} components",
        baseline_value=baseline,
    )


def _figures(task: Task, params, dataset: Dataset, key, out_dir: Path) -> list[Path]:
    """Test images (odd rows) above their reconstructions (even rows)."""
    del key
    x = dataset.test["x"][:16]
    recon = np.asarray(task.model.apply(params, x)[0])
    pairs = np.concatenate([x[:8], recon[:8], x[8:], recon[8:]])
    return [
        viz.image_grid(
            pairs, out_dir / "reconstructions.png", ncols=8, title="test images / reconstructions"
        )
    ]


def _config(quick: bool) -> TrainConfig:
    """Tour budget: 3000 steps (quick: 600) of batch 64, Adam 2e-3 with cosine decay."""
    steps = 600 if quick else 3000
    return TrainConfig(
        steps=steps, batch_size=64, lr=2e-3, warmup_steps=50, log_every=100, ema_decay=None
    )


VARIANTS = {
    "autoencoder": ("MLP autoencoder, 8-d code", {}),
    "denoising_autoencoder": (
        "denoising MLP autoencoder (Gaussian noise 0.3), 8-d code",
        {"cls": ae.DenoisingAutoencoder, "noise": "gaussian", "noise_level": 0.3},
    ),
    "sparse_autoencoder": (
        "sparse MLP autoencoder (top-4 of a 16-d code + L1 1e-3)",
        {"cls": ae.SparseAutoencoder, "top_k": 4, "l1": 1e-3},
    ),
}


def _make(variant_options):
    def build(dataset, options):
        options = dict(options)
        if "top_k" in variant_options:
            options.setdefault("code_dim", 16)
        return make_task(dataset, options, **variant_options)

    return build


for _name, (_summary, _variant) in VARIANTS.items():
    register(
        Recipe(
            name=_name,
            summary=_summary,
            make_task=_make(_variant),
            config=_config,
            evaluate=_evaluate,
            figures=_figures,
            quick_tour=_name == "autoencoder",
            tour_steps=3000 if _name == "autoencoder" else None,
            options={"code_dim": CODE_DIM, "hidden": 256, "arch": "mlp"},
        )
    )
