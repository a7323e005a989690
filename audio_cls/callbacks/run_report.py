"""Run reports: what a run directory holds besides checkpoints and the resolved config.

- ``metrics_val.json``: validation metrics (segment and clip) of the best and the last epoch and
  every epoch's (``history``), rewritten after each validation; the history travels in the
  checkpoints, so a resumed run's file covers the epochs before the interruption too;
- ``metrics_test.json``: test metrics, segment and clip level;
- ``classification_report.csv`` and ``confusion_matrix.png``: clip level, at test;
- ``predictions.csv``: one row per clip with its top class and every class probability
  (at test and predict); ``segments.csv`` at predict: the per-window timeline;
- ``bad_files.csv``: the clips the data module left out as unreadable (``split,path,reason``),
  when there were any (``--data.on_bad_file skip``);
- with ``positive_class`` (one class against the rest, e.g. impact noise): ``pr_curve.png`` at
  test, and the positive class's precision, recall and F1 at a decision threshold chosen on the
  validation clips (see :class:`RunReport`).

The writers are :mod:`audio_cls.reports`, shared with ``classify`` and ``cv``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from audio_cls.callbacks.aggregation import ClipAggregation
from audio_cls.inference import ClipResults
from audio_cls.reports import (
    DEFAULT_RULE,
    Threshold,
    average_precision,
    choose_threshold,
    finite_number,
    positive_metrics,
    write_metrics,
    write_pr_curve,
    write_predictions,
    write_test_reports,
    write_timeline,
)

__all__ = ["RunReport", "recorded_threshold"]

log = logging.getLogger(__name__)


def _stage_metrics(trainer: L.Trainer, stage: str) -> dict[str, float | None]:
    return {
        k: finite_number(v)
        for k, v in sorted(trainer.callback_metrics.items())
        if k.startswith(f"{stage}/")
    }


class RunReport(L.Callback):
    """Writes the run's metric files, reports and predictions into the run directory.

    With ``positive_class`` the run is also scored as that class against the rest (a two-class
    task such as impact noise vs other sounds; with more classes, one against the others):

    - after every validation, a decision threshold is chosen on the validation clips'
      probabilities of the class (max F1, :func:`audio_cls.reports.choose_threshold`) and kept
      in that epoch's ``metrics_val.json`` entry (``val/clip_pos_threshold``,
      ``val/clip_pos_f1``) and in the checkpoints saved after it, so each checkpoint carries
      the threshold chosen with its own weights;
    - at test, the tested checkpoint's threshold is applied to the test clips, never tuned on
      them: ``metrics_test.json`` gains ``test/clip_pos_precision``, ``test/clip_pos_recall``,
      ``test/clip_pos_f1``, ``test/clip_pos_ap`` (average precision, threshold-free) and
      ``test/clip_pos_threshold``, plus ``decision`` (the class, threshold and rule in words),
      and ``pr_curve.png`` draws the test curve with that operating point. A model tested
      without a recorded threshold (no validation folds) uses 0.5, and says so.

    ``audio-cls classify --events`` reads the same threshold from the checkpoint.

    Args:
        top_k: Classes listed per clip in ``predictions.csv``.
        positive_class: The class scored against the rest (e.g. ``impact``), one of the data's
            class names; None: no such scoring.
    """

    def __init__(self, top_k: int = 3, positive_class: str | None = None) -> None:
        self.top_k = top_k
        self.positive_class = positive_class
        self._val_history: list[dict[str, Any]] = []
        self._threshold: Threshold | None = None  # chosen at the latest validation
        self._test_threshold: Threshold | None = None
        #: What the latest test wrote to ``metrics_test.json`` (``cv`` reads the positive class's).
        self.test_metrics: dict[str, Any] = {}

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
        # in every checkpoint: a resumed run's metrics_val.json keeps the epochs before the resume;
        # the threshold is the one chosen with the weights saved beside it
        threshold = self._threshold.to_dict() if self._threshold is not None else None
        return {"val_history": list(self._val_history), "threshold": threshold}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_history = list(state_dict.get("val_history", []))
        saved = state_dict.get("threshold")
        self._threshold = Threshold.from_dict(saved) if saved else None

    def _positive_index(self, pl_module: L.LightningModule) -> int:
        names = list(pl_module.class_names)
        if self.positive_class not in names:
            raise ValueError(
                f"report.positive_class {self.positive_class!r} is not one of the data's "
                f"classes: {', '.join(names)}"
            )
        return names.index(self.positive_class)

    def _scores(
        self, results: ClipResults, pl_module: L.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled clips' probabilities of the positive class, and which are positive."""
        index = self._positive_index(pl_module)
        keep = results.covered & (results.targets >= 0)
        return results.probs[keep, index].double(), results.targets[keep] == index

    def setup(self, trainer, pl_module, stage):
        if self.positive_class is not None:
            self._positive_index(pl_module)  # a misspelt class stops the run before training
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
        entry = {"epoch": trainer.current_epoch, **_stage_metrics(trainer, "val")}
        results = self._results(trainer, "val")
        if self.positive_class is not None and results is not None:
            scores, positives = self._scores(results, pl_module)
            self._threshold = choose_threshold(scores, positives, self.positive_class)
            entry["val/clip_pos_threshold"] = self._threshold.threshold
            entry["val/clip_pos_f1"] = self._threshold.val_f1
        self._val_history.append(entry)
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

    def on_test_start(self, trainer, pl_module):
        if self.positive_class is None:
            return
        # the tested checkpoint's own threshold; a model tested as it stands (no ckpt_path) has
        # the one of its latest validation, which saw these weights
        path = trainer.ckpt_path
        threshold = recorded_threshold(path) if path else self._threshold
        if threshold is not None and threshold.positive != self.positive_class:
            threshold = None  # recorded for another class
        self._test_threshold = threshold or Threshold(self.positive_class, 0.5, DEFAULT_RULE)

    def on_test_end(self, trainer, pl_module):
        out = self.run_dir(trainer)
        if out is None:
            return
        metrics: dict[str, Any] = _stage_metrics(trainer, "test")
        results = self._results(trainer, "test")
        if results is not None and self._test_threshold is not None:
            metrics.update(self._positive_report(out, results, pl_module, self._test_threshold))
        self.test_metrics = metrics
        if results is None:
            write_metrics(out / "metrics_test.json", metrics)
            return
        write_test_reports(out, metrics, results, pl_module.class_names, top_k=self.top_k)
        self._log_to_wandb(trainer, out)
        log.info("test reports written to %s", out)

    def _positive_report(
        self,
        out: Path,
        results: ClipResults,
        pl_module: L.LightningModule,
        threshold: Threshold,
    ) -> dict[str, Any]:
        """The positive class's test metrics at ``threshold``; draws ``pr_curve.png``."""
        scores, positives = self._scores(results, pl_module)
        at = positive_metrics(scores, positives, threshold.threshold)
        ap = average_precision(scores, positives)
        title = (
            f"{threshold.positive} vs rest, test clips ({int(positives.sum())} of {len(scores)})"
        )
        write_pr_curve(out / "pr_curve.png", scores, positives, threshold, title)
        return {
            "test/clip_pos_precision": at["precision"],
            "test/clip_pos_recall": at["recall"],
            "test/clip_pos_f1": at["f1"],
            "test/clip_pos_ap": ap,
            "test/clip_pos_threshold": threshold.threshold,
            "decision": {**threshold.to_dict(), **{k: at[k] for k in ("tp", "fp", "fn")}},
        }

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


def recorded_threshold(ckpt_path: str | Path) -> Threshold | None:
    """The decision threshold a checkpoint of a ``positive_class`` run records, else None.

    Read with ``mmap`` so the weights are not loaded a second time; a file that is not a local
    checkpoint, or holds no threshold, gives None.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not ours to judge here: the model loader reports unreadable files
        return None
    state = (checkpoint.get("callbacks") or {}).get(RunReport.__qualname__) or {}
    saved = state.get("threshold") if isinstance(state, dict) else None
    return Threshold.from_dict(saved) if saved else None
