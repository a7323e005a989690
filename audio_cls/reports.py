"""Report writers: what a run, a cross-validation or ``classify`` leaves beside its numbers.

- ``write_metrics``: a metrics dict as JSON (non-finite values become null);
- ``write_predictions``: one row per clip, top-k classes and every class probability (the
  ``prob_<class>`` columns double as a soft-label manifest), and why a clip has none;
- ``write_timeline``: one row per window, for long recordings;
- ``write_classification_report`` and ``write_confusion_matrix``: clip level, from scikit-learn;
- ``write_test_reports``: the files every test (a run's, an ensemble's) leaves, all of the above;
- one class against the rest (the impact-noise task): ``choose_threshold`` picks a decision
  threshold on validation probabilities (max F1), ``positive_metrics`` scores it,
  ``write_pr_curve`` draws the precision-recall curve with that operating point;
- ``find_events`` and ``write_events``: windows above a threshold merged into events (start,
  end, peak), the "when did the thumps happen" of long recordings.

Plain functions over :class:`audio_cls.inference.ClipResults`; no Lightning.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audio_cls.inference import ClipResults

__all__ = [
    "Threshold",
    "average_precision",
    "choose_threshold",
    "find_events",
    "positive_metrics",
    "pr_points",
    "write_classification_report",
    "write_confusion_matrix",
    "write_events",
    "write_metrics",
    "write_pr_curve",
    "write_predictions",
    "write_submission",
    "write_test_reports",
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


def write_test_reports(
    out: Path,
    metrics: Mapping[str, Any],
    results: ClipResults,
    class_names: Sequence[str],
    title: str = "",
    top_k: int = 3,
) -> None:
    """``metrics_test.json``, ``predictions.csv``, ``classification_report.csv`` and
    ``confusion_matrix.png`` (titled with ``title`` and the clip accuracy) into ``out``."""
    write_metrics(out / "metrics_test.json", metrics)
    write_predictions(out / "predictions.csv", results, class_names, top_k)
    write_classification_report(out / "classification_report.csv", results, class_names)
    acc = metrics.get("test/clip_acc")
    said = f"clip accuracy {acc:.3f}" if acc is not None else "test clips"
    write_confusion_matrix(
        out / "confusion_matrix.png", results, class_names, f"{title}: {said}" if title else said
    )


# ---------------------------------------------------------------------------------------------
# One class against the rest: a decision threshold, its precision/recall/F1, the PR curve.
# A clip is called positive when its probability of the class is >= the threshold.


@dataclass(frozen=True)
class Threshold:
    """A decision threshold on one class's probability and how it was chosen.

    Attributes:
        positive: The class called positive.
        threshold: Clips whose probability of ``positive`` is >= this are called positive.
        rule: How the value was chosen, in words (stated in the reports).
        val_f1: F1 of ``positive`` on the clips it was chosen on (None: not chosen on data).
    """

    positive: str
    threshold: float
    rule: str
    val_f1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain types: for JSON reports and for checkpoints read with ``weights_only=True``."""
        return {
            "positive": self.positive,
            "threshold": self.threshold,
            "rule": self.rule,
            "val_f1": self.val_f1,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Threshold:
        return cls(str(d["positive"]), float(d["threshold"]), str(d["rule"]), d.get("val_f1"))


#: The rule of :func:`choose_threshold`, as the reports state it.
MAX_F1_RULE = (
    "max F1 of the positive class over the validation clips' probabilities (ties: the higher "
    "threshold), placed midway between the lowest probability called positive and the next "
    "lower one"
)
#: The rule when no validation probabilities chose one: a two-class argmax.
DEFAULT_RULE = "0.5 (no validation threshold recorded: the argmax of a two-class model)"


def pr_points(
    scores: np.ndarray | Sequence[float], positives: np.ndarray | Sequence[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at each distinct score, highest threshold first.

    Args:
        scores: Probability of the positive class per clip.
        positives: Whether each clip is of the positive class.

    Returns:
        ``(precision, recall, thresholds)``, one entry per distinct score; recall is 0
        everywhere when there is no positive clip.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and positives {y.shape} must be equal 1-d shapes")
    if not len(s):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last clip of each distinct score
    tp = np.cumsum(y)[last]
    called = last + 1
    n_pos = int(y.sum())
    recall = tp / n_pos if n_pos else np.zeros(len(last))
    return tp / called, recall, s[last]


def positive_metrics(
    scores: np.ndarray | Sequence[float], positives: np.ndarray | Sequence[bool], threshold: float
) -> dict[str, float]:
    """Precision, recall and F1 of the positive class at ``threshold`` (0 where undefined, as
    the classification report's ``zero_division=0``), and the counts behind them."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    called = s >= threshold
    tp = int((called & y).sum())
    fp = int((called & ~y).sum())
    fn = int((~called & y).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def average_precision(
    scores: np.ndarray | Sequence[float], positives: np.ndarray | Sequence[bool]
) -> float | None:
    """Area under the step precision-recall curve: the sum of ``(R_k - R_{k-1}) P_k`` over the
    thresholds (scikit-learn's definition); None without a positive clip."""
    if not np.asarray(positives, dtype=bool).any():
        return None
    precision, recall, _ = pr_points(scores, positives)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def choose_threshold(
    scores: np.ndarray | Sequence[float], positives: np.ndarray | Sequence[bool], positive: str
) -> Threshold:
    """The threshold of best F1 on these clips (meant for validation clips only).

    Ties go to the higher threshold (fewer false alarms). The value lies midway between the
    lowest score called positive and the next lower score, so clips scored a hair below the
    ones seen are not flipped. Without clips or without a positive clip there is nothing to
    choose on: 0.5, the argmax of a two-class model, stated as such.
    """
    precision, recall, thresholds = pr_points(scores, positives)
    if not len(thresholds) or not recall.any():
        return Threshold(positive, 0.5, DEFAULT_RULE)
    f1 = np.where(
        precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0
    )
    k = int(np.argmax(f1))  # first maximum: the highest threshold
    cut = thresholds[k] if k + 1 == len(thresholds) else (thresholds[k] + thresholds[k + 1]) / 2
    return Threshold(positive, float(cut), MAX_F1_RULE, float(f1[k]))


def write_pr_curve(
    path: Path,
    scores: np.ndarray | Sequence[float],
    positives: np.ndarray | Sequence[bool],
    decision: Threshold,
    title: str,
) -> None:
    """The precision-recall curve of the positive class as a PNG, with the operating point of
    ``decision``'s threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision, recall, _ = pr_points(scores, positives)
    ap = average_precision(scores, positives)
    at = positive_metrics(scores, positives, decision.threshold)
    fig, ax = plt.subplots(figsize=(5.0, 4.5))
    if len(recall):
        ax.step(
            np.r_[0.0, recall],
            np.r_[precision[0], precision],
            where="pre",
            label=f"AP {ap:.3f}" if ap is not None else "no positive clip",
        )
    ax.plot(
        [at["recall"]],
        [at["precision"]],
        "o",
        color="tab:red",
        label=f"threshold {decision.threshold:.3f}: P {at['precision']:.3f}, "
        f"R {at['recall']:.3f}, F1 {at['f1']:.3f}",
    )
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Events: the windows of a long recording where a class is above a threshold.


def find_events(
    starts: np.ndarray | Sequence[float],
    probs: np.ndarray | Sequence[float],
    window: float,
    threshold: float,
) -> list[tuple[float, float, float]]:
    """Windows whose probability is >= ``threshold``, merged into events.

    A window at or above the threshold extends the current event when it is the next window
    in order, or when it starts before the event ends (with a hop shorter than the window, a
    window a few places on still overlaps the event); otherwise it starts a new event.

    Args:
        starts: Window start times, ascending (any unit; ``window`` in the same one).
        probs: The class's probability per window.
        window: Window length.
        threshold: Windows at or above it count.

    Returns:
        ``(start, end, peak probability)`` per event, in time order.
    """
    starts = np.asarray(starts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    events: list[list[float]] = []
    last = -2
    for i in np.flatnonzero(probs >= threshold).tolist():
        start, p = float(starts[i]), float(probs[i])
        if events and (i == last + 1 or start <= events[-1][1]):
            ev = events[-1]
            ev[1], ev[2] = start + window, max(ev[2], p)
        else:
            events.append([start, start + window, p])
        last = i
    return [(a, b, p) for a, b, p in events]


def write_events(
    path: Path,
    results: ClipResults,
    class_names: Sequence[str],
    thresholds: Mapping[str, float],
    sample_rate: int,
    window: int,
) -> int:
    """``events.csv``: one row per event (clip, class, start/end seconds, peak probability, the
    threshold used), clips in input order, classes in the order of ``thresholds``.

    Args:
        thresholds: Class name -> its threshold; the classes whose events are wanted.
        window: Window length in samples.

    Returns:
        The number of events written.
    """
    columns = {name: class_names.index(name) for name in thresholds}
    clip_index = results.segment_clip_index.numpy()
    order = np.lexsort((results.segment_starts.numpy(), clip_index))  # by clip, then time
    bounds = np.r_[0, np.cumsum(np.bincount(clip_index, minlength=len(results.clip_ids)))]
    starts = results.segment_starts.numpy()[order] / sample_rate
    probs = results.segment_probs.numpy()[order]
    n = 0
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "class", "start_sec", "end_sec", "peak_prob", "threshold"])
        for clip, clip_id in enumerate(results.clip_ids):
            rows = slice(bounds[clip], bounds[clip + 1])
            for name, threshold in thresholds.items():
                found = find_events(
                    starts[rows], probs[rows, columns[name]], window / sample_rate, threshold
                )
                for start, end, peak in found:
                    w.writerow(
                        [clip_id, name, f"{start:.3f}", f"{end:.3f}", f"{peak:.6f}", threshold]
                    )
                n += len(found)
    return n
