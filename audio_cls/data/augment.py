"""Waveform augmentations, configured in YAML under ``data.augment`` (train split only).

Randomness comes from torch's generator, which the data loader seeds per worker and per epoch,
so runs repeat under ``seed_everything``. Mixup works on whole batches and lives in the data
module (``mixup_alpha``); SpecAugment works on features and lives in the model.
"""

from __future__ import annotations

import math

import torch
import torchaudio

__all__ = ["WaveformAugment", "mixup"]


#: Speed factors are drawn as k / _SPEED_STEPS.
_SPEED_STEPS = 20


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


class WaveformAugment:
    """Random speed, circular time shift, gain and additive noise at a random SNR, one window
    at a time.

    Args:
        gain_db: Gain range in dB (None: off).
        shift_sec: Largest circular shift in seconds, either way (0: off).
        noise_snr_db: SNR range in dB of added white noise (None: off).
        noise_p: Probability of adding noise to a window.
        speed: Range of playback speed factors (None: off), e.g. ``[0.9, 1.1]``: the window is
            resampled, which stretches time and shifts pitch together (speed perturbation),
            then centre-cropped or zero-padded back to its length. The factor is drawn
            uniformly among the multiples of 1/20 in the range, which keeps each resampling
            filter short.
    """

    #: Waveform rate, set by the data module that owns this augmentation.
    sample_rate: int = 16000

    def __init__(
        self,
        gain_db: tuple[float, float] | None = (-6.0, 6.0),
        shift_sec: float = 0.0,
        noise_snr_db: tuple[float, float] | None = (10.0, 40.0),
        noise_p: float = 0.5,
        speed: tuple[float, float] | None = None,
    ) -> None:
        for name, rng in (("gain_db", gain_db), ("noise_snr_db", noise_snr_db)):
            if rng is not None and (len(rng) != 2 or rng[0] > rng[1]):
                raise ValueError(f"augment.{name} must be [low, high] with low <= high, got {rng}")
        if shift_sec < 0 or not 0 <= noise_p <= 1:
            raise ValueError("augment.shift_sec must be >= 0 and augment.noise_p within [0, 1]")
        if speed is not None and (len(speed) != 2 or not 0.5 <= speed[0] <= speed[1] <= 2.0):
            raise ValueError(
                f"augment.speed must be [low, high] with 0.5 <= low <= high <= 2, got {speed}"
            )
        self.speed = None if speed is None else (float(speed[0]), float(speed[1]))
        self._speed_steps = (0, 0)  # the factors drawn, as k / _SPEED_STEPS, low and high k
        if self.speed is not None:
            low = math.ceil(self.speed[0] * _SPEED_STEPS - 1e-9)
            high = math.floor(self.speed[1] * _SPEED_STEPS + 1e-9)
            if high < low:
                raise ValueError(
                    f"augment.speed {list(speed)} holds no multiple of 1/{_SPEED_STEPS}: widen it"
                )
            self._speed_steps = (low, high)
        self.gain_db = gain_db
        self.shift_sec = shift_sec
        self.noise_snr_db = noise_snr_db
        self.noise_p = noise_p

    def _change_speed(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self._speed_steps
        steps = int(torch.randint(low, high + 1, ()).item()) if high > low else low
        if steps == _SPEED_STEPS:
            return x
        # steps/20 times faster: every `steps` samples become 20
        y = torchaudio.functional.resample(x, steps, _SPEED_STEPS)
        n = len(x)
        if len(y) >= n:
            start = (len(y) - n) // 2
            return y[start : start + n]
        before = (n - len(y)) // 2
        return torch.nn.functional.pad(y, (before, n - len(y) - before))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (T,)
        if self.speed is not None:
            x = self._change_speed(x)
        shift = int(self.shift_sec * self.sample_rate)
        if shift:
            x = torch.roll(x, int(torch.randint(-shift, shift + 1, ()).item()))
        if self.gain_db is not None:
            x = x * 10 ** (_uniform(*self.gain_db) / 20)
        if self.noise_snr_db is not None and torch.rand(()).item() < self.noise_p:
            signal_power = x.square().mean().clamp_min(1e-10)
            snr = _uniform(*self.noise_snr_db)
            x = x + torch.randn_like(x) * torch.sqrt(signal_power / 10 ** (snr / 10))
        return x

    def __repr__(self) -> str:
        return (
            f"WaveformAugment(gain_db={self.gain_db}, shift_sec={self.shift_sec}, "
            f"noise_snr_db={self.noise_snr_db}, noise_p={self.noise_p}, speed={self.speed})"
        )


def mixup(
    waveform: torch.Tensor, target: torch.Tensor, num_classes: int, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., 2018) of a batch with a shuffled copy of itself.

    Waveforms and targets are mixed with one lambda and one permutation, so row ``i`` of the
    result is ``lam * row i + (1 - lam) * row perm[i]`` of both.

    Args:
        waveform: ``(B, T)``.
        target: The batch's soft targets ``(B, C)`` when it has them (``batch["soft"]``), else
            its hard labels ``(B,)``, which are mixed as one-hot rows.
        num_classes: Class count C.
        alpha: Beta distribution parameter.

    Returns:
        Mixed waveforms and soft targets ``(B, C)``, float32.
    """
    if target.ndim == 2:
        if target.shape[1] != num_classes:
            raise ValueError(f"soft targets have {target.shape[1]} classes, not {num_classes}")
        soft = target.float()
    else:
        soft = torch.nn.functional.one_hot(target, num_classes).float()
    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    # the first sample stays dominant, so a hard label keeps its meaning for metrics
    lam = max(lam, 1 - lam)
    perm = torch.randperm(len(waveform), device=waveform.device)
    return lam * waveform + (1 - lam) * waveform[perm], lam * soft + (1 - lam) * soft[perm]
