"""Cutting clips into fixed-length windows.

Evaluation covers every window of every clip (the last one aligned to the clip's end, so no
audio is left out); training draws random windows. Clips shorter than a window are padded with
zeros or repeated, by policy.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "SHORT_CLIP_SEC",
    "SILENT_PEAK",
    "ShortClipPolicy",
    "fit_length",
    "loud_windows",
    "window_starts",
]

ShortClipPolicy = Literal["pad", "repeat"]

#: Clips whose peak lies below this (-90 dBFS, about one 16-bit step) are reported as silent.
SILENT_PEAK = 10 ** (-90 / 20)
#: Clips shorter than this many seconds are reported as too short to judge.
SHORT_CLIP_SEC = 0.01


def window_starts(num_samples: int, window: int, hop: int) -> np.ndarray:
    """Start offsets of the windows that cover a clip.

    Windows start every ``hop`` samples; when the clip's tail is not covered, one more window
    ends exactly at the clip's end. A clip shorter than a window gets the single start 0.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    if num_samples <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, num_samples - window + 1, hop, dtype=np.int64)
    if starts[-1] + window < num_samples:
        starts = np.append(starts, num_samples - window)
    return starts


def fit_length(x: np.ndarray, length: int, policy: ShortClipPolicy = "pad") -> np.ndarray:
    """``x`` cut or extended to exactly ``length`` samples (zeros or repeats at the end)."""
    n = len(x)
    if n >= length:
        return x[:length]
    if policy == "repeat" and n > 0:
        return np.tile(x, -(-length // n))[:length]
    out = np.zeros(length, dtype=x.dtype)
    out[:n] = x
    return out


def loud_windows(
    x: np.ndarray, starts: np.ndarray, window: int, below_peak_db: float
) -> np.ndarray:
    """Mask of the windows whose RMS lies within ``below_peak_db`` of the clip's loudest one.

    Many recordings (ESC-50 among them) are padded with digital silence; windows of silence
    carry no label information. The loudest window is always kept.
    """
    power = np.array([np.mean(np.square(x[s : s + window], dtype=np.float64)) for s in starts])
    level = 10 * np.log10(power + 1e-12)
    return level >= level.max() - below_peak_db
