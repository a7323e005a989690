"""FBSP: a learnable time-frequency front end (Fourier basis with a learnable window).

Paper: Guzhov et al., "ESResNe(X)t-fbsp: Learning Robust Time-Frequency Transformation of
Audio" (IJCNN 2021). Each of the ``n_fft // 2 + 1`` output bins is a complex filter over one
frame, ``w_k(t) = sqrt(fb_k) * |sinc(fb_k t / m_k)|^m_k e^{i m_k arg sinc} * e^{-i fc_k t}``
with ``t`` spanning ``[-pi, pi]`` over the frame: it starts as ``m = 0, fb = 1, fc = k``, a
rectangular-window Fourier basis (bin ``k`` at ``k`` cycles per frame), and training moves
each bin's centre frequency ``fc``, bandwidth ``fb`` and window shape ``m``. The power spectrum (in dB) is split along frequency into
``bands`` image channels for an ImageNet-style CNN. Parameter names (``fbsp.m``, ``fbsp.fb``,
``fbsp.fc``, ``fbsp.bias``) and the ``window`` buffer follow the published checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from audio_cls.nn.frontends import FeatureShape, Frontend, FrontendSettings

__all__ = ["FBSPFilterbank", "FBSPFrontend", "FBSPSettings", "frame_signal"]

Window = Literal["blackmanharris", "hann", "hamming", "boxcar"]
#: Power floor before the dB conversion, as published (digital silence stays finite).
POWER_FLOOR = 1e-18
_EPS = 1e-8


def analysis_window(kind: Window, length: int) -> torch.Tensor:
    """A periodic (DFT-even) window of ``length`` samples."""
    if kind == "blackmanharris":  # 4-term Blackman-Harris, minimum side lobes
        a = [0.35875, 0.48829, 0.14128, 0.01168]
        return torch.signal.windows.general_cosine(length, a=a, sym=False)
    if kind == "hann":
        return torch.hann_window(length, periodic=True)
    if kind == "hamming":
        return torch.hamming_window(length, periodic=True)
    if kind == "boxcar":
        return torch.ones(length)
    raise ValueError(f"unknown window {kind!r}; use blackmanharris, hann, hamming or boxcar")


def frame_signal(x: torch.Tensor, frame_length: int, hop_length: int) -> torch.Tensor:
    """``(..., time) -> (..., frames, frame_length)``, zero-padded evenly on both sides so that
    the last frame ends at the signal's end (the published framing: no centring, one frame for a
    signal shorter than a frame)."""
    length = x.shape[-1]
    frames = 1 if length <= frame_length else 1 + math.ceil((length - frame_length) / hop_length)
    pad = (frames - 1) * hop_length + frame_length - length
    x = F.pad(x, (pad // 2, pad - pad // 2))
    return x.unfold(-1, frame_length, hop_length)


class FBSPFilterbank(nn.Module):
    """The learnable complex filterbank: frames ``(..., n)`` -> spectrum ``(..., bins)``.

    Args:
        bins: Output bins (``n_fft // 2 + 1`` for a one-sided spectrum).
        normalized: Divide the filters by ``sqrt(n)`` (an orthonormal DFT at initialisation).
    """

    def __init__(self, bins: int, normalized: bool = True) -> None:
        super().__init__()
        self.normalized = normalized
        self.m = nn.Parameter(torch.zeros(bins))  # window shape (0: rectangular)
        self.fb = nn.Parameter(torch.ones(bins))  # bandwidth
        self.fc = nn.Parameter(torch.arange(bins, dtype=torch.float32))  # centre frequency
        # The published model has no bias but its checkpoints hold an empty ``fbsp.bias``; an
        # empty buffer keeps the names equal without a parameter that never gets a gradient.
        self.register_buffer("bias", torch.empty(0))

    def filters(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The filters over a frame of ``n`` samples: real and imaginary parts ``(bins, n)``.

        In real arithmetic (no complex tensors), so that the front end exports to ONNX.
        """
        t = math.pi * torch.linspace(-1.0, 1.0, n, device=self.m.device) + _EPS  # (n,)
        m, fb, fc = self.m[:, None], self.fb[:, None], self.fc[:, None]
        arg = fb * t / (m + _EPS)
        sinc = torch.where(arg == 0, torch.ones_like(arg), torch.sin(arg) / arg)
        # sinc ** m as a complex power: |sinc|^m, phase m * pi where sinc is negative; then
        # times e^{-i fc t} and sqrt(fb)
        magnitude = fb.sqrt() * sinc.abs().pow(m)
        phase = m * math.pi * (sinc < 0).to(sinc.dtype) - fc * t
        scale = 1.0 / math.sqrt(n) if self.normalized else 1.0
        return magnitude * torch.cos(phase) * scale, magnitude * torch.sin(phase) * scale

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``(..., n)`` -> the spectrum's real and imaginary parts ``(..., bins)``."""
        real, imag = self.filters(frames.shape[-1])
        return frames @ real.T, frames @ imag.T

    def norm_loss(self, n: int) -> torch.Tensor:
        """Mean squared deviation of each filter's L2 norm from the DFT's (1, or ``sqrt(n)``
        unnormalised): keeps the learnt transform energy-preserving."""
        real, imag = self.filters(n)
        norms = (real.square() + imag.square()).sum(-1).sqrt()
        target = 1.0 if self.normalized else math.sqrt(n)
        return F.mse_loss(norms, torch.full_like(norms, target))

    @torch.no_grad()
    def normalize_gradients(self) -> None:
        """Scale the gradients of ``m``, ``fb`` and ``fc`` by their inf-norm, as published: their
        raw magnitudes differ by orders from the CNN's."""
        for p in (self.m, self.fb, self.fc):
            if p.grad is not None:
                p.grad /= p.grad.abs().max() + _EPS


@dataclass(frozen=True)
class FBSPSettings(FrontendSettings):
    """FBSP front end: framing, learnable Fourier filterbank, power in dB, frequency bands.

    Defaults are those of the published AudioSet ESResNeXt-fbsp and AudioCLIP checkpoints.

    Args:
        sample_rate: Waveform rate in Hz (None: the data's ``sample_rate``).
        n_fft: Frame length the filters span (frames are zero-padded to it); ``n_fft // 2 + 1``
            bins.
        win_length: Analysis window in samples.
        hop_length: Hop between frames in samples.
        window: Analysis window shape.
        normalized: Filters scaled by ``1 / sqrt(n_fft)``.
        bands: Frequency bands the bins are split into, one image channel each (the CNN's
            input channels); the top ``bins % bands`` bins are left out.
        int16_scale: Take the waveform through the int16 scale and back as the published models
            do (``x * 32767``, then ``[-32768, 32767] -> [-1, 1]``: a DC offset of 1.5e-5).
    """

    kind: ClassVar[str] = "fbsp"

    sample_rate: int | None = None
    n_fft: int = 2048
    win_length: int = 1654
    hop_length: int = 561
    window: Window = "blackmanharris"
    normalized: bool = True
    bands: int = 3
    int16_scale: bool = True

    def build(self, sample_rate: int) -> FBSPFrontend:
        return FBSPFrontend(dataclasses.replace(self, sample_rate=sample_rate))


class FBSPFrontend(Frontend):
    """Waveform ``(B, T)`` -> power in dB ``(B, bands, bins // bands, frames)``.

    Args:
        settings: Its settings, ``sample_rate`` filled in.
    """

    def __init__(self, settings: FBSPSettings) -> None:
        super().__init__()
        s = self.settings = settings
        if not 0 < s.win_length <= s.n_fft or s.hop_length <= 0:
            raise ValueError(
                f"the FBSP front end needs 0 < win_length <= n_fft and hop_length > 0; got "
                f"win_length={s.win_length}, n_fft={s.n_fft}, hop_length={s.hop_length}"
            )
        bins = s.n_fft // 2 + 1
        if not 0 < s.bands <= bins:
            raise ValueError(f"--model.frontend.bands must be in 1..{bins}, got {s.bands}")
        self.bins_per_band = bins // s.bands
        self.register_buffer("window", analysis_window(s.window, s.win_length))
        self.fbsp = FBSPFilterbank(bins, s.normalized)

    @property
    def output(self) -> FeatureShape:
        s = self.settings
        return FeatureShape(s.bands, self.sample_rate / s.hop_length, "fbsp-db")

    def num_frames(self, num_samples: int) -> int:
        s = self.settings
        if num_samples <= s.win_length:
            return 1
        return 1 + math.ceil((num_samples - s.win_length) / s.hop_length)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        s = self.settings
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.float()
            if s.int16_scale:
                x = (x * 32767.0 + 32768.0) * (2.0 / 65535.0) - 1.0
            frames = frame_signal(x, s.win_length, s.hop_length) * self.window
            extra = s.n_fft - s.win_length
            frames = F.pad(frames, (extra // 2, extra - extra // 2))  # (B L n_fft)
            real, imag = self.fbsp(frames)  # (B L bins) each
            power = real.square() + imag.square()
            power = power[..., : s.bands * self.bins_per_band].transpose(1, 2)  # (B bins' L)
            power = torch.where(power > 0, power, torch.full_like(power, POWER_FLOOR))
            db = 10.0 * torch.log10(power)
            return db.unflatten(1, (s.bands, self.bins_per_band))

    def regularization_loss(self) -> torch.Tensor:
        return self.fbsp.norm_loss(self.settings.n_fft)

    def condition_gradients(self) -> None:
        self.fbsp.normalize_gradients()
