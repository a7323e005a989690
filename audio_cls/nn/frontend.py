"""Log-mel front end: waveform ``(..., time)`` -> log-mel ``(..., n_mels, frames)``.

It runs inside the model, batched on the model's device, always in fp32 (mel energies in
bf16 lose the quiet bins), and its settings are part of the model's hyper-parameters so they
travel with every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torchaudio
from torch import nn

__all__ = ["LogMel", "frontend_settings_mismatch"]

#: Settings that decide what a trained model expects to see; compared on load.
FRONTEND_KEYS = ("sample_rate", "n_mels", "n_fft", "win_ms", "hop_ms", "f_min", "f_max")


class LogMel(nn.Module):
    """Log-compressed mel spectrogram.

    Args:
        sample_rate: Rate of the incoming waveform in Hz.
        n_mels: Mel bins.
        n_fft: FFT size; must cover the window.
        win_ms: Analysis window length in milliseconds.
        hop_ms: Hop between frames in milliseconds.
        f_min: Lowest mel filter edge in Hz.
        f_max: Highest mel filter edge in Hz (None: Nyquist).
        eps: Floor added before the log, so digital silence stays finite.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        n_fft: int = 512,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        f_min: float = 20.0,
        f_max: float | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        win_length = round(sample_rate * win_ms / 1000)
        hop_length = round(sample_rate * hop_ms / 1000)
        if sample_rate <= 0 or n_mels <= 0 or hop_length <= 0:
            raise ValueError(
                f"LogMel needs positive sample_rate, n_mels and hop_ms; got "
                f"sample_rate={sample_rate}, n_mels={n_mels}, hop_ms={hop_ms}"
            )
        if win_length > n_fft:
            raise ValueError(
                f"LogMel: a {win_ms} ms window is {win_length} samples at {sample_rate} Hz, "
                f"more than n_fft={n_fft}; raise n_fft or shorten win_ms"
            )
        if f_max is not None and f_max > sample_rate / 2:
            raise ValueError(f"LogMel: f_max={f_max} is above Nyquist ({sample_rate / 2} Hz)")
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.eps = eps
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            power=2.0,
            mel_scale="slaney",
            norm="slaney",
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of ``num_samples`` (centred STFT)."""
        return num_samples // self.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # fp32 even under autocast: the power spectrum spans ~100 dB
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            mel = self.mel(waveform.float())  # (..., n_mels, frames)
            return torch.log(mel + self.eps)


def frontend_settings_mismatch(
    expected: Mapping[str, Any], actual: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Front-end settings that differ between a checkpoint and the current set-up."""
    return {
        k: (expected[k], actual[k])
        for k in FRONTEND_KEYS
        if k in expected and k in actual and expected[k] != actual[k]
    }
