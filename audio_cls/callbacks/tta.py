"""Test-time augmentation by time shifts, configured per run."""

from __future__ import annotations

import lightning as L

from audio_cls.inference import TimeShiftTTA

__all__ = ["TTAShift"]


class TTAShift(L.Callback):
    """Average each window's probabilities over ``shifts`` circularly time-shifted copies.

    Active at test and predict; validation stays single-pass, so model selection is cheap.
    The model asks for the stage's setting (``tta_for``) and passes it to the inference core;
    nothing is set on the model.

    Args:
        shifts: Copies per window, including the unshifted one when odd (1: off).
        max_shift: Largest shift either way, as a fraction of the window.
    """

    def __init__(self, shifts: int = 1, max_shift: float = 0.1) -> None:
        self.tta = TimeShiftTTA(shifts, max_shift)

    def tta_for(self, stage: str) -> TimeShiftTTA | None:
        """The TTA of ``stage`` (``val``, ``test``, ``predict``); None where it is off."""
        return self.tta if stage in ("test", "predict") and self.tta.shifts > 1 else None
