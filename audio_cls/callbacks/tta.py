"""Test-time augmentation by time shifts."""

from __future__ import annotations

import lightning as L

__all__ = ["TTAShift"]


class TTAShift(L.Callback):
    """Average each window's probabilities over ``shifts`` circularly time-shifted copies.

    Active at test and predict (validation stays single-pass, so model selection is cheap).

    Args:
        shifts: Copies per window, including the unshifted one when odd (1: off).
        max_shift: Largest shift either way, as a fraction of the window.
    """

    def __init__(self, shifts: int = 1, max_shift: float = 0.1) -> None:
        if shifts < 1 or not 0 <= max_shift < 1:
            raise ValueError("TTAShift needs shifts >= 1 and 0 <= max_shift < 1")
        self.shifts = shifts
        self.max_shift = max_shift

    def _enable(self, pl_module: L.LightningModule) -> None:
        pl_module.tta_shifts, pl_module.tta_max_shift = self.shifts, self.max_shift

    def _disable(self, pl_module: L.LightningModule) -> None:
        pl_module.tta_shifts = 1

    def on_test_start(self, trainer, pl_module):
        self._enable(pl_module)

    def on_test_end(self, trainer, pl_module):
        self._disable(pl_module)

    def on_predict_start(self, trainer, pl_module):
        self._enable(pl_module)

    def on_predict_end(self, trainer, pl_module):
        self._disable(pl_module)
