"""Optional dependencies, imported where they are used, with an error naming the extra.

Importing ``audio_cls`` never imports an optional package (mamba-ssm, h5py, onnxruntime,
FastAPI, sentence-transformers, LightGBM, ...). A feature that needs one calls
:func:`require`, which says which ``pip install 'audio-cls[extra]'`` brings it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError` saying how to
    install it (``pip install 'audio-cls[extra]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{feature} needs the Python package '{module.split('.')[0]}', which is not "
            f"installed: pip install 'audio-cls[{extra}]' (or `make install`, which installs "
            f"every extra but cuda)"
        ) from err
