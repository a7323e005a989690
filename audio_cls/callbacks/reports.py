"""Run reports: what a run directory holds besides checkpoints and the resolved config.

- ``metrics_val.json``: validation metrics (segment and clip) of the best and the last epoch;
- ``metrics_test.json``: test metrics, segment and clip level;
- ``classification_report.csv`` and ``confusion_matrix.png``: clip level, at test;
- ``predictions.csv``: one row per clip with its top class and every class probability
  (at test and predict); ``segments.csv`` at predict: the per-window timeline.

The same writers serve ``audio-cls classify``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from audio_cls.callbacks.aggregation import ClipAggregation, ClipResults

__all__ = [
    "RunReport",
    "write_classification_report",
    "write_confusion_matrix",
    "write_predictions",
    "write_timeline",
]

log = logging.getLogger(__name__)


def _number(value: Any) -> float | None:
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return value if math.isfinite(value) else None


def _stage_metrics(trainer: L.Trainer, stage: str) -> dict[str, float | None]:
    return {
        k: _number(v)
        for k, v in sorted(trainer.callback_metrics.items())
        if k.startswith(f"{stage}/")
    }


def write_predictions(
    path: Path, results: ClipResults, class_names: Sequence[str], top_k: int = 3
) -> None:
    """One row per clip: id, path, target, top-k classes with probabilities, every probability."""
    k = min(top_k, len(class_names))
    top_p, top_i = results.probs.topk(k, dim=1)
    covered = results.covered
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["clip_id", "path", "target", "prediction", "confidence"]
            + [f"top{j + 1}" for j in range(k)]
            + [f"top{j + 1}_prob" for j in range(k)]
            + [f"prob_{name}" for name in class_names]
        )
        for i, clip_id in enumerate(results.clip_ids):
            if not covered[i]:
                continue
            target = int(results.targets[i])
            names = [class_names[int(j)] for j in top_i[i]]
            w.writerow(
                [clip_id, results.paths[i], class_names[target] if target >= 0 else "", names[0]]
                + [f"{float(top_p[i, 0]):.6f}"]
                + names
                + [f"{float(p):.6f}" for p in top_p[i]]
                + [f"{float(p):.6f}" for p in results.probs[i]]
            )


def write_timeline(
    path: Path, results: ClipResults, class_names: Sequence[str], sample_rate: int, window: int
) -> None:
    """Per-window rows (clip, start/end seconds, top class, its probability): the timeline."""
    order = torch.argsort(results.segment_clip_index * (1 << 40) + results.segment_starts)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "start_sec", "end_sec", "prediction", "confidence"])
        for n in order.tolist():
            clip = int(results.segment_clip_index[n])
            start = int(results.segment_starts[n]) / sample_rate
            p, c = results.segment_probs[n].max(0)
            w.writerow(
                [
                    results.clip_ids[clip],
                    f"{start:.3f}",
                    f"{start + window / sample_rate:.3f}",
                    class_names[int(c)],
                    f"{float(p):.6f}",
                ]
            )


def _labelled(results: ClipResults) -> tuple[np.ndarray, np.ndarray]:
    keep = (results.covered & (results.targets >= 0)).numpy()
    return results.targets.numpy()[keep], results.probs.argmax(1).numpy()[keep]


def write_classification_report(
    path: Path, results: ClipResults, class_names: Sequence[str]
) -> None:
    """Per-class precision, recall, F1 and support at clip level, plus the averages."""
    from sklearn.metrics import classification_report

    y_true, y_pred = _labelled(results)
    report = classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for name, row in report.items():
            if isinstance(row, dict):
                w.writerow(
                    [
                        name,
                        f"{row['precision']:.4f}",
                        f"{row['recall']:.4f}",
                        f"{row['f1-score']:.4f}",
                        int(row["support"]),
                    ]
                )
            else:  # "accuracy" is a bare number
                w.writerow([name, "", "", f"{row:.4f}", len(y_true)])


def write_confusion_matrix(
    path: Path, results: ClipResults, class_names: Sequence[str], title: str
) -> None:
    """Clip-level confusion matrix as a PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    y_true, y_pred = _labelled(results)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(class_names))))
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(class_names) <= 30:
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > cm.max() / 2 else "black",
                )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._val_history.append(
                {"epoch": trainer.current_epoch, **_stage_metrics(trainer, "val")}
            )

    def on_fit_end(self, trainer, pl_module):
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
        (out / "metrics_val.json").write_text(json.dumps(payload, indent=2))

    def on_test_end(self, trainer, pl_module):
        out = self.run_dir(trainer)
        if out is None:
            return
        metrics = _stage_metrics(trainer, "test")
        (out / "metrics_test.json").write_text(json.dumps(metrics, indent=2))
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
