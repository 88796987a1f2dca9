"""genjax: generative deep learning from first principles in JAX and Flax.

Every formula lives in one pure function in a module named for its topic, is derived in a note
under ``derivations/`` and is checked by a test under ``tests/``. Submodules load on first use::

    import genjax
    genjax.divergences.kl(p, q)      # imports genjax.divergences here
"""

import importlib
from types import ModuleType

__version__ = "0.1.0"

_SUBMODULES = (
    "autoencoders",
    "captioning",
    "captions",
    "checkpoints",
    "classifier",
    "cli",
    "clip",
    "data",
    "diffusion",
    "divergences",
    "figures",
    "flows",
    "gan",
    "interpret",
    "latent_diffusion",
    "likelihoods",
    "metrics",
    "nn",
    "parallel",
    "probes",
    "progan",
    "recipes",
    "runfolder",
    "segmentation",
    "studies",
    "style",
    "stylegan",
    "tour",
    "train",
    "translation",
    "tricks",
    "vae",
    "viz",
    "word2vec",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"genjax.{name}")
    raise AttributeError(f"module 'genjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
