"""Windows of a live stream: float32 chunks of any size in, full model windows out.

The client's samples arrive at its own rate. Windows are cut at that rate (the checkpoint's
window length, every ``hop_sec``) from a buffer that keeps only what a future window still
needs, and each window is then resampled to the model's rate on its own, so that no chunk
boundary ever shows up inside a window.
"""

from __future__ import annotations

import numpy as np

from audio_cls.data.segments import fit_length
from audio_cls.serve.audio import check_samples, resample

__all__ = ["StreamWindows"]


class StreamWindows:
    """Cut a stream of chunks into the model's windows.

    Args:
        sample_rate: Rate of the incoming samples in Hz.
        model_rate: Rate the model takes.
        window_sec: Window length (the checkpoint's).
        hop_sec: Seconds between window starts.
    """

    def __init__(
        self, sample_rate: int, model_rate: int, window_sec: float, hop_sec: float
    ) -> None:
        if hop_sec <= 0:
            raise ValueError(f"hop_sec must be > 0, got {hop_sec}")
        self.sample_rate = sample_rate
        self.model_rate = model_rate
        self.window_sec = window_sec
        self.hop_sec = hop_sec
        self.window_in = max(1, round(window_sec * sample_rate))
        self.model_window = round(window_sec * model_rate)
        self._hop_index = 0  # index of the next window; its start is index * hop_sec
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # input sample index of _buf[0]
        self._leftover = b""  # bytes of a float split across chunks
        self.received = 0  # input samples so far

    def _start(self, index: int) -> int:
        # from the index, not summed hops, so rounding never drifts over a long stream
        return round(index * self.hop_sec * self.sample_rate)

    def push_bytes(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Add little-endian float32 bytes (a sample may be split across calls).

        Returns:
            ``(starts_sec (n,), windows (n, model_window))`` of the windows now complete.

        Raises:
            RequestError: 422 for NaN/Inf or absurd samples.
        """
        data = self._leftover + data
        whole = len(data) // 4 * 4
        self._leftover = data[whole:]
        return self.push(np.frombuffer(data[:whole], dtype="<f4"))

    def push(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add float32 samples; returns the windows now complete (see :meth:`push_bytes`)."""
        samples = np.asarray(samples, dtype=np.float32)
        check_samples(samples)
        self._buf = np.concatenate([self._buf, samples])
        self.received += len(samples)
        starts, windows = [], []
        while (start := self._start(self._hop_index)) + self.window_in <= self.received:
            offset = start - self._buf_start
            windows.append(self._buf[offset : offset + self.window_in])
            starts.append(start / self.sample_rate)
            self._hop_index += 1
        keep = min(self._start(self._hop_index), self.received)
        self._buf = self._buf[keep - self._buf_start :].copy()
        self._buf_start = keep
        if not windows:
            return np.zeros(0), np.zeros((0, self.model_window), dtype=np.float32)
        out = np.stack(windows)
        if self.sample_rate != self.model_rate:
            out = resample(out, self.sample_rate, self.model_rate)
            out = np.stack([fit_length(w, self.model_window) for w in out])
        return np.asarray(starts), out
