"""Front ends: waveform ``(B, T)`` -> features ``(B, C, frames)``, inside the model.

A front end runs batched on the model's device, always in fp32 (mel energies in bf16 lose the
quiet bins). Each kind is a frozen settings dataclass plus the module it builds:

- :class:`LogMelSettings` -> :class:`LogMelFrontend`: log-mel spectrogram, per-mel-bin
  normalisation, SpecAugment in training (``C`` = mel bins);
- :class:`WaveformSettings` -> :class:`WaveformFrontend`: the raw waveform, optionally scaled or
  normalised per example (``C`` = 1, one frame per sample), for SoundNet or wav2vec2.

The settings are what a model family declares as its default and what a config overrides
(``--model.frontend.n_mels 128``); :meth:`FrontendSettings.contract` is what a checkpoint
records and compares on load (augmentation is left out: it does not change what a trained
model expects). A learnable front end (FBSP) is one more pair of the same shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torchaudio
from torch import nn

from audio_cls.nn.specaugment import SpecAugment

__all__ = [
    "FRONTEND_KINDS",
    "FeatureShape",
    "Frontend",
    "FrontendSettings",
    "LogMelFrontend",
    "LogMelSettings",
    "WaveformFrontend",
    "WaveformSettings",
    "frontend_from_dict",
    "settings_mismatch",
]

#: Fields that only shape training-time augmentation; never part of the contract.
_AUGMENT = {"augment": True}
#: Front-end settings types by the ``kind`` checkpoints record (filled as they are defined).
FRONTEND_KINDS: dict[str, type[FrontendSettings]] = {}


@dataclass(frozen=True)
class FeatureShape:
    """What a front end hands the backbone: ``(B, channels, frames)`` at ``frame_rate`` Hz."""

    channels: int
    frame_rate: float
    kind: str


@dataclass(frozen=True)
class FrontendSettings:
    """Base of the settings dataclasses; ``kind`` names the front end in checkpoints.

    A subclass that sets ``kind`` joins :data:`FRONTEND_KINDS` when it is defined, so a front
    end may live in its own module (``nn/fbsp.py``).
    """

    kind: ClassVar[str] = ""

    sample_rate: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            known = FRONTEND_KINDS.setdefault(cls.kind, cls)
            if known.__qualname__ != cls.__qualname__:
                raise TypeError(f"front-end kind {cls.kind!r} is taken by {known.__qualname__}")

    def build(self, sample_rate: int) -> Frontend:
        """The front-end module at ``sample_rate`` (the data's rate when the settings say None)."""
        raise NotImplementedError

    def resolve_rate(self, sample_rate: int | None) -> int:
        """The one rate both sides agree on; a ``ValueError`` naming both when they differ."""
        if (
            self.sample_rate is not None
            and sample_rate is not None
            and self.sample_rate != sample_rate
        ):
            raise ValueError(
                f"the {self.kind} front end expects {self.sample_rate} Hz but the data "
                f"delivers {sample_rate} Hz: set --data.sample_rate {self.sample_rate} "
                f"(or --model.frontend.sample_rate {sample_rate} to train at that rate)"
            )
        rate = self.sample_rate or sample_rate or 16000
        if rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {rate}")
        return rate

    def to_dict(self) -> dict[str, Any]:
        """Every field plus ``kind``: enough to rebuild the settings."""
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def contract(self) -> dict[str, Any]:
        """The fields that decide what a trained model expects (augmentation excluded)."""
        return {
            "kind": self.kind,
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if not f.metadata.get("augment")
            },
        }


class Frontend(nn.Module):
    """A front-end module: ``forward(waveform (B, T)) -> (B, C, frames)`` in fp32.

    Attributes:
        settings: The settings it was built from, with ``sample_rate`` filled in.
    """

    settings: FrontendSettings

    @property
    def sample_rate(self) -> int:
        return int(self.settings.sample_rate)  # filled in by ``build``

    @property
    def output(self) -> FeatureShape:
        raise NotImplementedError

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` of waveform."""
        raise NotImplementedError

    def regularization_loss(self) -> torch.Tensor | None:
        """A loss term the front end adds in training (a learnable filterbank's); None: none."""
        return None

    def condition_gradients(self) -> None:
        """Adjust the front end's gradients before each optimiser step (default: leave them)."""


@dataclass(frozen=True)
class LogMelSettings(FrontendSettings):
    """Log-mel front end: mel spectrogram, log, per-mel-bin normalisation, SpecAugment.

    Args:
        sample_rate: Waveform rate in Hz (None: the data's ``sample_rate``).
        n_mels: Mel bins (the feature channels).
        n_fft: FFT size; must cover the window (None: the smallest power of two that does,
            at whatever rate the data comes).
        win_ms: Analysis window in milliseconds.
        hop_ms: Hop between frames in milliseconds.
        f_min: Lowest mel frequency in Hz.
        f_max: Highest mel frequency in Hz (None: Nyquist).
        normalize: Learned per-mel-bin scaling of the log energies (BatchNorm over mel bins).
        freq_mask: SpecAugment's widest frequency mask in bins, in training (0: off).
        time_mask: SpecAugment's widest time mask in frames, in training (0: off).
    """

    kind: ClassVar[str] = "logmel"

    sample_rate: int | None = None
    n_mels: int = 64
    n_fft: int | None = None
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 20.0
    f_max: float | None = None
    normalize: bool = True
    freq_mask: int = field(default=8, metadata=_AUGMENT)
    time_mask: int = field(default=16, metadata=_AUGMENT)

    def build(self, sample_rate: int) -> LogMelFrontend:
        n_fft = self.n_fft or 1 << max(round(sample_rate * self.win_ms / 1000) - 1, 1).bit_length()
        return LogMelFrontend(dataclasses.replace(self, sample_rate=sample_rate, n_fft=n_fft))


class LogMelFrontend(Frontend):
    """Waveform ``(B, T)`` -> normalised log-mel ``(B, n_mels, frames)``; SpecAugment in training.

    Power mel spectrogram (centred STFT, Slaney mel scale and area normalisation), ``log(mel +
    1e-6)`` so that digital silence stays finite, then the per-bin normalisation.

    Args:
        settings: Its settings, ``sample_rate`` and ``n_fft`` filled in.
    """

    def __init__(self, settings: LogMelSettings) -> None:
        super().__init__()
        s = self.settings = settings
        rate = int(s.sample_rate)
        win_length = round(rate * s.win_ms / 1000)
        self.hop_length = round(rate * s.hop_ms / 1000)
        if s.n_mels <= 0 or self.hop_length <= 0 or win_length <= 0:
            raise ValueError(
                f"the log-mel front end needs positive n_mels, win_ms and hop_ms; got "
                f"n_mels={s.n_mels}, win_ms={s.win_ms}, hop_ms={s.hop_ms}"
            )
        if win_length > s.n_fft:
            raise ValueError(
                f"a {s.win_ms} ms window is {win_length} samples at {rate} Hz, more than "
                f"n_fft={s.n_fft}: raise --model.frontend.n_fft (or leave it unset to follow "
                f"the window) or shorten --model.frontend.win_ms"
            )
        if s.f_max is not None and s.f_max > rate / 2:
            raise ValueError(
                f"--model.frontend.f_max {s.f_max} is above the Nyquist frequency of "
                f"{rate} Hz audio ({rate / 2} Hz)"
            )
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=rate,
            n_fft=s.n_fft,
            win_length=win_length,
            hop_length=self.hop_length,
            f_min=s.f_min,
            f_max=s.f_max,
            n_mels=s.n_mels,
            power=2.0,
            mel_scale="slaney",
            norm="slaney",
        )
        self.norm = nn.BatchNorm1d(s.n_mels) if s.normalize else nn.Identity()
        self.spec_augment = SpecAugment(s.freq_mask, s.time_mask)

    @property
    def output(self) -> FeatureShape:
        return FeatureShape(self.settings.n_mels, self.sample_rate / self.hop_length, "log-mel")

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def mel_power(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(..., time) -> (..., n_mels, frames)`` mel power: torchaudio's ``MelSpectrogram``
        (``self.mel`` holds its settings, window and filterbank), with ``|z|^2`` summed as
        ``re^2 + im^2``: its ``|z|`` then squared takes a square root per bin, a fifth of
        MelCNN's inference time on a CPU."""
        spec = self.mel.spectrogram
        batch = waveform.shape[:-1]
        z = torch.stft(
            waveform.reshape(-1, waveform.shape[-1]),
            spec.n_fft,
            spec.hop_length,
            spec.win_length,
            spec.window,
            center=spec.center,
            pad_mode=spec.pad_mode,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        parts = torch.view_as_real(z)
        mel = self.mel.mel_scale(parts[..., 0].square() + parts[..., 1].square())
        return mel.reshape(*batch, *mel.shape[-2:])

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(..., time) -> (..., n_mels, frames)`` log-mel energies, before normalisation."""
        # fp32 even under autocast: the power spectrum spans ~100 dB
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            return torch.log(self.mel_power(waveform.float()) + 1e-6)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = self.norm(self.log_mel(waveform))
        return self.spec_augment(x)


@dataclass(frozen=True)
class WaveformSettings(FrontendSettings):
    """Raw-waveform front end, for models that learn their own filters.

    Args:
        sample_rate: Waveform rate in Hz (None: the data's ``sample_rate``).
        scale: Factor applied first (e.g. 32768 for models trained on the int16 scale).
        normalize: Zero mean and unit variance per example (as wav2vec2's feature extractor).
    """

    kind: ClassVar[str] = "waveform"

    sample_rate: int | None = None
    scale: float = 1.0
    normalize: bool = False

    def build(self, sample_rate: int) -> WaveformFrontend:
        return WaveformFrontend(dataclasses.replace(self, sample_rate=sample_rate))


class WaveformFrontend(Frontend):
    """Waveform ``(B, T)`` -> ``(B, 1, T)``: scaled and optionally normalised; no parameters.

    Args:
        settings: Its settings, ``sample_rate`` filled in.
    """

    def __init__(self, settings: WaveformSettings) -> None:
        super().__init__()
        self.settings = settings

    @property
    def output(self) -> FeatureShape:
        return FeatureShape(1, float(self.sample_rate), "waveform")

    def num_frames(self, num_samples: int) -> int:
        return num_samples

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform.float() * self.settings.scale
        if self.settings.normalize:
            x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + 1e-7)
        return x.unsqueeze(1)


def frontend_from_dict(values: Mapping[str, Any], default: FrontendSettings) -> FrontendSettings:
    """Settings from a (partial) dict: its ``kind`` (or ``default``'s), unset fields default's.

    Raises:
        ValueError: An unknown kind or field, named with the accepted ones.
    """
    values = dict(values)
    kind = values.pop("kind", default.kind)
    if kind not in FRONTEND_KINDS:
        raise ValueError(f"unknown front end {kind!r}; known: {', '.join(FRONTEND_KINDS)}")
    cls = FRONTEND_KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"the {kind} front end has no setting(s) {unknown}; it has {sorted(names)}"
        )
    base = default if isinstance(default, cls) else cls()
    return dataclasses.replace(base, **values)


def settings_mismatch(
    expected: Mapping[str, Any], actual: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Contract fields that differ between a checkpoint (``expected``) and a set-up."""
    keys = sorted(set(expected) | set(actual))
    return {k: (expected.get(k), actual.get(k)) for k in keys if expected.get(k) != actual.get(k)}
