"""Report writers: what a run, a cross-validation or ``classify`` leaves beside its numbers.

- ``write_metrics``: a metrics dict as JSON (non-finite values become null);
- ``write_predictions``: one row per clip, top-k classes and every class probability (the
  ``prob_<class>`` columns double as a soft-label manifest), and why a clip has none;
- ``write_timeline``: one row per window, for long recordings;
- ``write_classification_report`` and ``write_confusion_matrix``: clip level, from scikit-learn.

Plain functions over :class:`audio_cls.inference.ClipResults`; no Lightning.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audio_cls.inference import ClipResults

__all__ = [
    "write_classification_report",
    "write_confusion_matrix",
    "write_metrics",
    "write_predictions",
    "write_submission",
    "write_timeline",
]


def finite_number(value: Any) -> float | None:
    """A float, or None where it is NaN or infinite (JSON has no such numbers)."""
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return value if math.isfinite(value) else None


def write_metrics(path: Path, metrics: Mapping[str, Any]) -> None:
    """A JSON file of metrics (nested dicts and lists are kept)."""
    path.write_text(json.dumps(metrics, indent=2))


def write_predictions(
    path: Path, results: ClipResults, class_names: Sequence[str], top_k: int = 3
) -> None:
    """One row per clip: id, path, target, top-k classes with probabilities, every probability,
    ``error`` (why a clip has no prediction: an unreadable file) and ``warning`` (why its
    prediction means little: a silent or very short clip)."""
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
            + ["error", "warning"]
        )
        for i, clip_id in enumerate(results.clip_ids):
            error = results.errors.get(clip_id)
            if error is not None:
                w.writerow(
                    [clip_id, results.paths[i]] + [""] * (3 + 2 * k + len(class_names)) + [error]
                )
                continue
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
                + ["", results.warnings.get(clip_id, "")]
            )


def write_submission(
    path: Path,
    results: ClipResults,
    class_names: Sequence[str],
    id_column: str = "Id",
    label_column: str = "Category",
) -> None:
    """A challenge's submission file: one ``Id,Category`` row per predicted clip, in order.

    Clips without a prediction (unreadable files) have no row: the caller reports them.
    """
    predicted = results.probs.argmax(1)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([id_column, label_column])
        for i, clip_id in enumerate(results.clip_ids):
            if clip_id not in results.errors and results.covered[i]:
                w.writerow([clip_id, class_names[int(predicted[i])]])


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
    from sklearn.metrics import ConfusionMatrixDisplay

    y_true, y_pred = _labelled(results)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        display_labels=list(class_names),
        ax=ax,
        cmap="Blues",
        colorbar=False,
        xticks_rotation=60,
        include_values=len(class_names) <= 30,
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
