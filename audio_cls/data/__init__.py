"""Where clips come from and how they become batches.

Attributes load lazily, so the sources and the cache import without Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AudioDataModule", "WaveformAugment"]

_LAZY = {
    "AudioDataModule": "audio_cls.data.datamodule",
    "WaveformAugment": "audio_cls.data.augment",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'audio_cls.data' has no attribute {name!r}")
