"""Building blocks with no training logic: initialisers, attention, positional encodings, layers,
normalisation."""

import importlib
from types import ModuleType

_SUBMODULES = ("attention", "init", "layers", "norm", "positional", "transformer", "unet")

__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"genjax.nn.{name}")
    raise AttributeError(f"module 'genjax.nn' has no attribute {name!r}")
