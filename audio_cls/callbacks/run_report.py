"""Run reports: what a run directory holds besides checkpoints and the resolved config.

- ``metrics_val.json``: validation metrics (segment and clip) of the best and the last epoch and
  every epoch's (``history``), rewritten after each validation; the history travels in the
  checkpoints, so a resumed run's file covers the epochs before the interruption too;
- ``metrics_test.json``: test metrics, segment and clip level;
- ``classification_report.csv`` and ``confusion_matrix.png``: clip level, at test;
- ``predictions.csv``: one row per clip with its top class and every class probability
  (at test and predict); ``segments.csv`` at predict: the per-window timeline;
- ``bad_files.csv``: the clips the data module left out as unreadable (``split,path,reason``),
  when there were any (``--data.on_bad_file skip``).

The writers are :mod:`audio_cls.reports`, shared with ``classify`` and ``cv``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from audio_cls.callbacks.aggregation import ClipAggregation
from audio_cls.inference import ClipResults
from audio_cls.reports import (
    finite_number,
    write_classification_report,
    write_confusion_matrix,
    write_metrics,
    write_predictions,
    write_timeline,
)

__all__ = ["RunReport"]

log = logging.getLogger(__name__)


def _stage_metrics(trainer: L.Trainer, stage: str) -> dict[str, float | None]:
    return {
        k: finite_number(v)
        for k, v in sorted(trainer.callback_metrics.items())
        if k.startswith(f"{stage}/")
    }


class RunReport(L.Callback):
    """Writes the run's metric files, reports and predictions into the run directory.

    Args:
        top_k: Classes listed per clip in ``predictions.csv``.
    """

    def __init__(self, top_k: int = 3) -> None:
        self.top_k = top_k
        self._val_history: list[dict[str, Any]] = []

    @staticmethod
    def run_dir(trainer: L.Trainer) -> Path | None:
        """The run directory on rank zero, None on other ranks.

        Every rank must call it: ``trainer.log_dir`` is a broadcast under DDP. None as well under
        ``fast_dev_run``: a debugging pass has no run directory and must not litter the cwd.
        """
        if trainer.fast_dev_run:
            return None
        path = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return None
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _results(trainer: L.Trainer, stage: str) -> ClipResults | None:
        for cb in trainer.callbacks:
            if isinstance(cb, ClipAggregation) and stage in cb.results:
                return cb.results[stage]
        return None

    def state_dict(self) -> dict[str, Any]:
        # in every checkpoint: a resumed run's metrics_val.json keeps the epochs before the resume
        return {"val_history": list(self._val_history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_history = list(state_dict.get("val_history", []))

    def setup(self, trainer, pl_module, stage):
        # after the data module's setup of this stage, which records the unreadable clips
        out = self.run_dir(trainer)
        rows = list(getattr(trainer.datamodule, "bad_files", None) or [])
        if out is not None and rows:
            with (out / "bad_files.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["split", "path", "reason"])
                writer.writerows((str(s), str(p), str(r)) for s, p, r in rows)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self._val_history.append({"epoch": trainer.current_epoch, **_stage_metrics(trainer, "val")})
        if trainer.state.fn == TrainerFn.FITTING:
            self._write_val_metrics(trainer)  # a killed run keeps its epochs so far

    def on_fit_end(self, trainer, pl_module):
        self._write_val_metrics(trainer)

    def _write_val_metrics(self, trainer: L.Trainer) -> None:
        out = self.run_dir(trainer)
        if out is None or not self._val_history:
            return
        ckpt = trainer.checkpoint_callback
        monitor = getattr(ckpt, "monitor", None)
        best = self._val_history[-1]
        if monitor and all(h.get(monitor) is not None for h in self._val_history):
            pick = max if ckpt.mode == "max" else min
            best = pick(self._val_history, key=lambda h: h[monitor])
        payload = {
            "monitor": monitor,
            "best": best,
            "last": self._val_history[-1],
            "history": self._val_history,
        }
        write_metrics(out / "metrics_val.json", payload)

    def on_test_end(self, trainer, pl_module):
        out = self.run_dir(trainer)
        if out is None:
            return
        metrics = _stage_metrics(trainer, "test")
        write_metrics(out / "metrics_test.json", metrics)
        results = self._results(trainer, "test")
        if results is None:
            return
        names = pl_module.class_names
        write_predictions(out / "predictions.csv", results, names, self.top_k)
        write_classification_report(out / "classification_report.csv", results, names)
        acc = metrics.get("test/clip_acc")
        title = f"clip accuracy {acc:.3f}" if acc is not None else "test clips"
        write_confusion_matrix(out / "confusion_matrix.png", results, names, title)
        self._log_to_wandb(trainer, out)
        log.info("test reports written to %s", out)

    def on_predict_end(self, trainer, pl_module):
        out = self.run_dir(trainer)
        results = self._results(trainer, "predict")
        if out is None or results is None:
            return
        write_predictions(out / "predictions.csv", results, pl_module.class_names, self.top_k)
        dm = trainer.datamodule
        write_timeline(
            out / "segments.csv", results, pl_module.class_names, dm.sample_rate, dm.window
        )
        log.info("predictions written to %s", out / "predictions.csv")

    @staticmethod
    def _log_to_wandb(trainer: L.Trainer, out: Path) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key="test/confusion_matrix", images=[str(out / "confusion_matrix.png")]
                )
                with (out / "predictions.csv").open() as f:
                    rows = list(csv.reader(f))
                logger.log_table(key="test/predictions", columns=rows[0], data=rows[1:])
