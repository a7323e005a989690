"""An exportable log-mel front end: the STFT as a strided convolution with fixed DFT kernels.

``torch.stft`` lowers to complex FFT ops that ONNX exporters and runtimes handle unevenly
(the TorchScript exporter has no ``rfft``, complex tensors have no ONNX type). The short-time
Fourier transform of frames of ``n_fft`` samples every ``hop`` samples is a ``Conv1d`` whose
kernels are the window times the DFT basis: for bin ``k`` and sample ``n`` of the frame,
``w[n] cos(2 pi k n / n_fft)`` (real part) and ``-w[n] sin(2 pi k n / n_fft)`` (imaginary
part), with the hop as the stride. Every exporter and runtime has ``Pad`` (reflect),
``Conv``, ``MatMul`` and ``Log``, so the whole model, front end included, exports as one graph.

:class:`ExportableLogMel` is built from an existing :class:`~audio_cls.nn.frontends.
LogMelFrontend` and computes the same features as its eval-mode forward: centred STFT with
reflect padding, the periodic Hann window zero-padded to ``n_fft``, power spectrum, the
front end's own mel filterbank (``mel.mel_scale.fb``), ``log(mel + 1e-6)`` and its own
BatchNorm (the modules and buffers are shared, not copied). There is no training path:
SpecAugment is left out. :func:`exportable_copy` returns an eval-mode copy of a whole
classifier with that front end in place of the torchaudio one.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from audio_cls.nn.frontends import Frontend, LogMelFrontend

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ExportableLogMel", "dft_kernels", "exportable_copy"]

#: The floor inside the log, as in :meth:`LogMelFrontend.log_mel`.
LOG_FLOOR = 1e-6


def dft_kernels(window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Windowed one-sided DFT basis as ``Conv1d`` weights ``(2 * (n_fft // 2 + 1), 1, n_fft)``.

    The first half of the output channels are the real parts, the second half the imaginary
    parts. A window shorter than ``n_fft`` is zero-padded on both sides, as ``torch.stft`` does.

    Args:
        window: Analysis window ``(win_length,)``, ``win_length <= n_fft``.
        n_fft: Frame (FFT) size.
    """
    win_length = window.shape[-1]
    if win_length > n_fft:
        raise ValueError(f"the window has {win_length} samples, more than n_fft={n_fft}")
    left = (n_fft - win_length) // 2
    w = F.pad(window.double(), (left, n_fft - win_length - left))
    # float64 phases: k * n reaches n_fft^2 / 2, where float32 angles lose digits
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, n).remainder(n_fft) / n_fft
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * w
    return basis.float().unsqueeze(1)


class ExportableLogMel(Frontend):
    """Eval-mode log-mel of a :class:`LogMelFrontend`, written in exportable operations.

    Waveform ``(B, T)`` -> normalised log-mel ``(B, n_mels, T // hop + 1)``, equal to the source
    front end's eval-mode output up to float rounding (the STFT is summed in another order).

    Args:
        source: The front end to mirror; its mel filterbank and BatchNorm are shared.

    Raises:
        ValueError: The source's spectrogram is set up in a way this module does not mirror.
    """

    def __init__(self, source: LogMelFrontend) -> None:
        super().__init__()
        spec = source.mel.spectrogram
        unsupported = {
            "center": (spec.center, True),
            "pad_mode": (spec.pad_mode, "reflect"),
            "normalized": (spec.normalized, False),
            "onesided": (spec.onesided, True),
            "power": (spec.power, 2.0),
            "pad": (spec.pad, 0),
        }
        differ = {k: v for k, (v, want) in unsupported.items() if v != want}
        if differ:
            raise ValueError(
                f"the exportable log-mel mirrors a centred, reflect-padded power spectrogram; "
                f"this front end's spectrogram has {differ}"
            )
        self.settings = source.settings
        self.n_fft = spec.n_fft
        self.hop_length = spec.hop_length
        self.register_buffer("dft", dft_kernels(spec.window, spec.n_fft), persistent=False)
        # the source's own tensors and module, so the copy cannot drift from the checkpoint
        self.register_buffer("fb", source.mel.mel_scale.fb, persistent=False)
        self.norm = source.norm

    # the same frames as the module it mirrors: both read settings and hop_length only
    output = LogMelFrontend.output
    num_frames = LogMelFrontend.num_frames

    def power_spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(B, T) -> (B, n_fft // 2 + 1, frames)``: power spectrum, centred as ``torch.stft``."""
        half = self.n_fft // 2
        # reflect padding of a (B, 1, T) signal: ONNX Pad(mode="reflect")
        x = F.pad(waveform.float().unsqueeze(1), (half, half), mode="reflect")
        parts = F.conv1d(x, self.dft, stride=self.hop_length)  # (B, 2 * bins, frames)
        real, imag = parts.chunk(2, dim=1)
        return real * real + imag * imag

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(B, T) -> (B, n_mels, frames)`` log-mel energies, before normalisation."""
        power = self.power_spectrogram(waveform)
        mel = torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)
        return torch.log(mel + LOG_FLOOR)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # fp32 whatever the caller's autocast, as the source front end
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            return self.norm(self.log_mel(waveform))


def exportable_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of a classifier whose log-mel front end is :class:`ExportableLogMel`.

    Any module with a ``frontend`` attribute works (an ``AudioClassifier``); a front end that
    is not log-mel (the raw waveform) is already plain tensor arithmetic and stays as it is.
    The original model is left untouched.
    """
    ready = copy.deepcopy(model).eval()
    if isinstance(ready.frontend, LogMelFrontend):
        ready.frontend = ExportableLogMel(ready.frontend)
    return ready
