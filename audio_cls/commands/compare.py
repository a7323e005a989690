"""``audio-cls compare``: runs and cross-validations side by side, and their ensemble.

Each input is a run folder (``runs/<config>/version_N``, or ``latest``) or a cross-validation
folder (``runs/<config>/cv_<time>``, holding ``cv_summary.json``). ``compare`` reads what they
recorded (``cv_summary.json``, each run's ``metrics_test.json`` and ``run_stats.json``) and
writes into ``--out``:

- ``compare.md`` and ``compare.csv``: one row per input, clip and segment accuracy and macro-F1
  (mean and sample std over folds; a single run is one fold, std 0), parameters, training time
  per fold and test throughput (``run/test_segments_per_s``, see
  :class:`audio_cls.callbacks.RunStats` for how it is measured: it depends on the device that
  ran each input, which the table names);
- ``compare.png``: mean clip accuracy against throughput, point size by parameters.

Inputs must share the dataset (source, its options, class names, and the clips, folds and labels
themselves, by fingerprint) and the folds (the same test folds, each split the same way into
train/val/test); otherwise ``compare`` refuses with one line saying what differs.

With ``--ensemble true`` the inputs are the candidate members of an ensemble that averages their
clip probabilities with weights, chosen per fold on that fold's validation clip probabilities
only (each run's ``predictions_val.csv``: the best epoch's, see
:class:`audio_cls.callbacks.RunStats`) by greedy forward selection with replacement (Caruana et
al., ICML 2004): ``--ensemble_rounds`` times, the member whose addition gives the best
validation clip accuracy (ties: lower log loss) is added to the bag; the bag of the best round
is kept and members weigh by how often they are in it. Only then are the fold's test
predictions read and averaged with those weights. The ensemble is one more row (``ensemble``)
with the same metrics (segment metrics stay empty: members may cut different windows, and the
ensemble averages clip probabilities), the parameters and training time of its members added
up and the throughput of running them one after another (``1 / sum(1 / s_i)``). Its reports,
per fold, go to ``ensemble/fold_<k>/`` (``metrics_test.json``, ``predictions.csv``,
``classification_report.csv``, ``confusion_matrix.png``), its members and weights to
``ensemble/ensemble.json``.

W&B (``--wandb``; by default when the inputs' runs logged to W&B, into their project): one run
``compare-<dataset>-<out>`` (job type ``compare``, tagged with the dataset) holds the table (a
W&B Table) and the plot (an Image); the ensemble gets a run of its own (job type
``cv-summary``, tagged ``ensemble``) whose summary has the same names as the cross-validations'
summary runs (``test/clip_acc_mean``, ``run/params_mean``...), so the W&B UI sorts it among
them. ``WANDB_MODE=offline`` or ``disabled`` work as for training.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audio_cls.commands import UsageError

__all__ = ["Entry", "Fold", "check_comparable", "compare", "load_entry", "select_ensemble"]

#: Test metrics in the table: clip level, then segment (window) level.
METRICS = ("test/clip_acc", "test/clip_macro_f1", "test/acc", "test/macro_f1")
#: What runs record of themselves (:class:`audio_cls.callbacks.RunStats`).
STATS = ("run/params", "run/train_time_s", "run/test_segments_per_s")
_HEADS = {
    "test/clip_acc": "clip acc",
    "test/clip_macro_f1": "clip macro-F1",
    "test/acc": "segment acc",
    "test/macro_f1": "segment macro-F1",
    "run/params": "params",
    "run/train_time_s": "train time (s)",
    "run/test_segments_per_s": "segments/s",
}
_CSV_NAMES = {
    "test/clip_acc": "clip_acc",
    "test/clip_macro_f1": "clip_macro_f1",
    "test/acc": "segment_acc",
    "test/macro_f1": "segment_macro_f1",
    "run/params": "params",
    "run/train_time_s": "train_time_s",
    "run/test_segments_per_s": "segments_per_s",
}
ENSEMBLE = "ensemble"


@dataclass
class Fold:
    """One test fold of an input: how it was split, where its run lies, what it measured.

    Attributes:
        key: The test folds, as text (``"1"``, ``"4,5"``).
        plan: ``train``/``val``/``test`` fold lists (None where the run did not record them).
        run_dir: The fold's run folder (None for the ensemble).
        values: Test metrics and run statistics (None where not measured).
    """

    key: str
    plan: dict[str, list[int]] | None
    run_dir: Path | None
    values: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Entry:
    """One input: a run (one fold) or a cross-validation (its folds)."""

    label: str
    path: Path
    family: str
    dataset: dict[str, Any] | None
    folds: list[Fold]
    device: str = ""
    wandb: dict[str, Any] | None = None  # the project (and mode) its runs logged to

    def fold(self, key: str) -> Fold:
        return next(f for f in self.folds if f.key == key)


# ---------------------------------------------------------------------------------------------
# reading what runs recorded


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot be read ({err})") from None


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as LightningCLI saved it ({} when there is none)."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _wandb_of(config: dict[str, Any]) -> dict[str, Any] | None:
    loggers = (config.get("trainer") or {}).get("logger")
    for spec in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(spec, dict) and str(spec.get("class_path", "")).endswith("WandbLogger"):
            args = spec.get("init_args") or {}
            return {"project": args.get("project"), "offline": bool(args.get("offline"))}
    return None


def _config_folds(config: dict[str, Any]) -> dict[str, list[int]] | None:
    data = config.get("data") or {}
    plan = {s: data.get(f"{s}_folds") for s in ("train", "val", "test")}
    return plan if all(v is not None for v in plan.values()) else None


def _config_dataset(config: dict[str, Any]) -> dict[str, Any] | None:
    """What an older run's ``config.yaml`` says of its dataset (no clips fingerprint)."""
    source = (config.get("data") or {}).get("source")
    if not isinstance(source, dict):
        return None
    from audio_cls.callbacks.run_stats import plain_setting

    kind = str(source.get("class_path", "")).rsplit(".", 1)[-1]
    options = {
        k: v
        for k, raw in (source.get("init_args") or {}).items()
        if (v := plain_setting(raw)) is not None
    }
    options.pop("download", None)
    return {"source": kind, "name": str(options.get("subset") or kind.lower()), "options": options}


def _fold_of_run(run_dir: Path, key: str | None, plan: dict | None, row: dict) -> Fold:
    """One run folder as a fold: the row's values, else its metrics and statistics files."""
    stats_path = run_dir / "run_stats.json"
    stats = _read_json(stats_path) if stats_path.is_file() else {}
    metrics_path = run_dir / "metrics_test.json"
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    values = {m: row.get(m, metrics.get(m)) for m in METRICS}
    values.update({m: row.get(m) if row.get(m) is not None else stats.get(m) for m in STATS})
    plan = plan or stats.get("folds") or _config_folds(_run_config(run_dir))
    if key is None:
        key = ",".join(map(str, plan["test"])) if plan else "?"
    return Fold(key, plan, run_dir, values)


def load_entry(path: str | Path) -> Entry:
    """Read a run folder or a cross-validation folder.

    Raises:
        UsageError: ``path`` is neither (or cannot be read).
    """
    given = Path(path)
    folder = given.resolve()
    label = f"{folder.parent.name}/{folder.name}"
    if (folder / "cv_summary.json").is_file():
        summary = _read_json(folder / "cv_summary.json")
        folds = []
        for row in summary.get("folds") or []:
            plan = {s: list(row[s]) for s in ("train", "val", "test") if s in row}
            run_dir = folder / str(row.get("run_dir") or f"fold_{row['fold']}")
            key = ",".join(map(str, plan.get("test") or [row["fold"]]))
            folds.append(_fold_of_run(run_dir, key, plan if len(plan) == 3 else None, row))
        if not folds:
            raise UsageError(f"{given}: cv_summary.json lists no folds")
        family, dataset = summary.get("family"), summary.get("dataset")
    elif (folder / "metrics_test.json").is_file():
        folds = [_fold_of_run(folder, None, None, {})]
        family = dataset = None
    elif not folder.is_dir():
        raise UsageError(f"{given}: no such folder; give run or cross-validation folders")
    else:
        inside = sorted(
            p.name
            for p in folder.iterdir()
            if (p / "cv_summary.json").is_file() or (p / "metrics_test.json").is_file()
        )
        hint = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})"
        raise UsageError(
            f"{given} holds neither cv_summary.json nor metrics_test.json: give run folders "
            "(runs/<config>/version_N) or cross-validation folders (runs/<config>/cv_<time>)"
            + (hint if inside else "")
        )
    first = folds[0].run_dir
    stats_path = first / "run_stats.json"
    stats = _read_json(stats_path) if stats_path.is_file() else {}
    config = _run_config(first)
    if not family:
        family = (
            stats.get("family")
            or str((config.get("model") or {}).get("class_path", "?")).rsplit(".", 1)[-1]
        )
    dataset = dataset or stats.get("data") or _config_dataset(config)
    return Entry(label, given, family, dataset, folds, stats.get("device", ""), _wandb_of(config))


# ---------------------------------------------------------------------------------------------
# what must be equal


def _describe(data: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    options = data.get("options") or {}
    shown = [f"{k}={options.get(k)}" for k in (keys if keys is not None else sorted(options))]
    return f"{data.get('source')}({', '.join(shown)})"


def _dataset_difference(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str | None:
    """Why two runs' datasets differ, or None (also where one did not record it)."""
    if a is None or b is None:
        return None
    opts_a, opts_b = a.get("options") or {}, b.get("options") or {}
    differing = sorted(k for k in set(opts_a) | set(opts_b) if opts_a.get(k) != opts_b.get(k))
    if a.get("source") != b.get("source") or differing:
        return f"the datasets differ: {_describe(a, differing)} vs {_describe(b, differing)}"
    if a.get("class_names") and b.get("class_names") and a["class_names"] != b["class_names"]:
        return (
            f"the class names differ ({len(a['class_names'])} vs {len(b['class_names'])} "
            "classes, or another order)"
        )
    if a.get("fingerprint") and b.get("fingerprint") and a["fingerprint"] != b["fingerprint"]:
        return (
            f"the datasets hold different clips, folds or labels ({_describe(a, [])}: "
            f"{a.get('clips')} vs {b.get('clips')} clips, fingerprints "
            f"{a['fingerprint'][:8]} vs {b['fingerprint'][:8]})"
        )
    return None


def _plan_text(plan: dict[str, list[int]] | None) -> str:
    if plan is None:
        return "unrecorded"
    return f"train {plan['train']} val {plan['val']}"


def check_comparable(entries: Sequence[Entry]) -> None:
    """Refuse inputs on different datasets or folds with one line saying which differ.

    Raises:
        UsageError: The first difference found, naming the two inputs.
    """
    first = entries[0]
    for other in entries[1:]:
        pair = f"cannot compare {first.label} and {other.label}"
        why = _dataset_difference(first.dataset, other.dataset)
        if why:
            raise UsageError(f"{pair}: {why}; compare runs on the same dataset")
        keys_a, keys_b = [f.key for f in first.folds], [f.key for f in other.folds]
        if sorted(keys_a) != sorted(keys_b):
            raise UsageError(
                f"{pair}: the test folds differ ({'; '.join(keys_a)} vs {'; '.join(keys_b)}); "
                "compare runs over the same folds"
            )
        for fold in first.folds:
            theirs = other.fold(fold.key)
            if fold.plan and theirs.plan and fold.plan != theirs.plan:
                raise UsageError(
                    f"{pair}: test fold {fold.key} is split differently ({_plan_text(fold.plan)} "
                    f"vs {_plan_text(theirs.plan)}); compare runs over the same folds"
                )


# ---------------------------------------------------------------------------------------------
# the ensemble


@dataclass
class _Predictions:
    clip_ids: list[str]
    paths: list[str]
    probs: np.ndarray  # (n, C)
    targets: np.ndarray  # (n,), -1 where unlabelled


def _read_predictions(path: Path, class_names: list[str] | None) -> _Predictions:
    """Clip probabilities of a predictions CSV (``prob_<class>`` columns); rows without
    probabilities (unreadable clips) are left out."""
    if not path.is_file():
        raise UsageError(f"{path} is missing: --ensemble needs every run's {path.name}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        names = [c[5:] for c in columns if c.startswith("prob_")]
        if "clip_id" not in columns or not names:
            raise UsageError(
                f"{path}: not a predictions file (no clip_id or prob_<class> columns); "
                "--ensemble reads the ones fit writes into each run folder"
            )
        if class_names is not None and names != class_names:
            raise UsageError(f"{path}: its classes {names} are not the dataset's {class_names}")
        index = {n: i for i, n in enumerate(names)}
        ids, paths, probs, targets = [], [], [], []
        for row in reader:
            if not row.get(f"prob_{names[0]}"):
                continue
            ids.append(row["clip_id"])
            paths.append(row.get("path", ""))
            probs.append([float(row[f"prob_{n}"]) for n in names])
            targets.append(index.get(row.get("target") or "", -1))
    return _Predictions(ids, paths, np.asarray(probs, dtype=np.float64), np.asarray(targets))


def _aligned(preds: list[_Predictions], what: str, fold: str) -> list[_Predictions]:
    """Every member's rows in the first member's clip order; the clip sets must agree."""
    first = preds[0]
    order = {c: i for i, c in enumerate(first.clip_ids)}
    out = [first]
    for p in preds[1:]:
        if set(p.clip_ids) != set(order):
            raise UsageError(
                f"the {what} clips of fold {fold} differ between runs ({len(first.clip_ids)} vs "
                f"{len(p.clip_ids)} clips with predictions): an ensemble needs the same clips"
            )
        if p.clip_ids != first.clip_ids:
            theirs = {c: i for i, c in enumerate(p.clip_ids)}
            at = [theirs[c] for c in first.clip_ids]
            p = _Predictions(first.clip_ids, first.paths, p.probs[at], p.targets[at])
        out.append(p)
    return out


def _score(probs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(accuracy, -log loss) over the labelled rows: larger is better, in that order."""
    keep = targets >= 0
    probs, targets = probs[keep], targets[keep]
    if not len(targets):
        return 0.0, 0.0
    acc = float((probs.argmax(1) == targets).mean())
    picked = np.clip(probs[np.arange(len(targets)), targets], 1e-12, None)
    return acc, float(np.log(picked).mean())


def select_ensemble(
    val_probs: Sequence[np.ndarray], targets: np.ndarray, rounds: int = 20
) -> np.ndarray:
    """Member weights by greedy forward selection with replacement (Caruana et al., 2004).

    Each round adds to the bag the member whose addition gives the best validation score of
    the bag's mean probabilities (accuracy, ties broken by lower log loss, then by the earlier
    member); the bag of the best round is kept. Only validation data comes in here.

    Args:
        val_probs: Each member's ``(n, C)`` validation clip probabilities, rows aligned.
        targets: ``(n,)`` class indices (-1: unlabelled, not scored).
        rounds: Members drawn into the bag, at most.

    Returns:
        ``(M,)`` weights summing to 1.
    """
    counts = np.zeros(len(val_probs))
    total = np.zeros_like(val_probs[0])
    best, best_counts = None, counts
    for r in range(1, max(rounds, 1) + 1):
        scores = [_score((total + p) / r, targets) for p in val_probs]
        m = max(range(len(scores)), key=lambda i: (scores[i], -i))
        counts[m] += 1
        total += val_probs[m]
        if best is None or scores[m] > best:
            best, best_counts = scores[m], counts.copy()
    return best_counts / best_counts.sum()


def _clip_metrics(probs: np.ndarray, targets: np.ndarray, num_classes: int) -> dict[str, float]:
    """Clip accuracy and macro-F1 as the runs compute them (torchmetrics)."""
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    keep = targets >= 0
    p, t = torch.from_numpy(probs[keep]), torch.from_numpy(targets[keep]).long()
    return {
        "test/clip_acc": multiclass_accuracy(p, t, num_classes, average="micro").item(),
        "test/clip_macro_f1": multiclass_f1_score(p, t, num_classes, average="macro").item(),
    }


def _ensemble(entries: Sequence[Entry], rounds: int, out: Path) -> tuple[Entry, dict[str, Any]]:
    """The ensemble of ``entries``, fold by fold; its reports are written under ``out``."""
    import torch

    from audio_cls.callbacks.run_stats import VAL_PREDICTIONS_FILE
    from audio_cls.inference import ClipResults
    from audio_cls.reports import write_test_reports

    class_names = (entries[0].dataset or {}).get("class_names")
    folds, record = [], []
    for fold in entries[0].folds:
        runs = [e.fold(fold.key).run_dir for e in entries]
        if not fold.plan or not fold.plan.get("val"):
            raise UsageError(
                f"--ensemble chooses members on validation folds, and test fold {fold.key} of "
                f"{entries[0].label} had none (cv --cv.val none): use runs with validation folds"
            )
        # chosen on validation predictions alone; the test files are opened afterwards
        val = _aligned(
            [_read_predictions(r / VAL_PREDICTIONS_FILE, class_names) for r in runs],
            "val",
            fold.key,
        )
        class_names = class_names or [str(i) for i in range(val[0].probs.shape[1])]
        weights = select_ensemble([v.probs for v in val], val[0].targets, rounds)
        val_probs = sum(w * v.probs for w, v in zip(weights, val))
        val_acc, val_ll = _score(val_probs, val[0].targets)
        test = _aligned(
            [_read_predictions(r / "predictions.csv", class_names) for r in runs], "test", fold.key
        )
        probs = sum(w * t.probs for w, t in zip(weights, test))
        targets = test[0].targets
        values: dict[str, float | None] = {
            **_clip_metrics(probs, targets, len(class_names)),
            "test/acc": None,
            "test/macro_f1": None,
        }
        chosen = [e.fold(fold.key).values for e, w in zip(entries, weights) if w > 0]
        values.update(_member_stats(chosen))
        fold_dir = out / f"fold_{fold.key.replace(',', '-')}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        n = len(test[0].clip_ids)
        results = ClipResults(
            clip_ids=test[0].clip_ids,
            paths=test[0].paths,
            probs=torch.from_numpy(probs).float(),
            targets=torch.from_numpy(targets).long(),
            segment_probs=torch.from_numpy(probs).float(),
            segment_clip_index=torch.arange(n),
            segment_starts=torch.zeros(n, dtype=torch.long),
        )
        measured = {k: v for k, v in values.items() if v is not None}
        write_test_reports(fold_dir, measured, results, class_names, f"ensemble, fold {fold.key}")
        folds.append(Fold(fold.key, fold.plan, None, values))
        record.append(
            {
                "fold": fold.key,
                "weights": {e.label: float(w) for e, w in zip(entries, weights) if w > 0},
                "val/clip_acc": val_acc,
                "val/log_loss": -val_ll,
                "members_val/clip_acc": {
                    e.label: _score(v.probs, v.targets)[0] for e, v in zip(entries, val)
                },
                **values,
            }
        )
    devices = {e.device for e in entries}
    device = devices.pop() if len(devices) == 1 else "mixed"
    entry = Entry(ENSEMBLE, out, ENSEMBLE, entries[0].dataset, folds, device)
    return entry, {
        "members": [str(e.path) for e in entries],
        "labels": [e.label for e in entries],
        "rounds": rounds,
        "selection": "greedy forward selection with replacement on validation clip "
        "probabilities (accuracy, then log loss); test predictions never read before",
        "folds": record,
    }


def _member_stats(values: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Parameters and training time added up; throughput of running the members in turn."""

    def every(key: str) -> list[float] | None:
        got = [v.get(key) for v in values]
        return None if any(g is None for g in got) else [float(g) for g in got]

    params, train, rate = (
        every("run/params"),
        every("run/train_time_s"),
        every("run/test_segments_per_s"),
    )
    return {
        "run/params": sum(params) if params else None,
        "run/train_time_s": sum(train) if train else None,
        "run/test_segments_per_s": 1 / sum(1 / r for r in rate) if rate and all(rate) else None,
    }


# ---------------------------------------------------------------------------------------------
# the table, the plot, W&B


def _stats(entry: Entry) -> dict[str, dict[str, float]]:
    """Mean and sample std over folds of every metric and statistic measured."""
    out = {}
    for m in (*METRICS, *STATS):
        got = [f.values.get(m) for f in entry.folds]
        got = [float(v) for v in got if v is not None]
        if got:
            out[m] = {
                "mean": statistics.fmean(got),
                "std": statistics.stdev(got) if len(got) > 1 else 0.0,
            }
    return out


def _number(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def _cell(stats: dict[str, dict[str, float]], metric: str) -> str:
    if metric not in stats:
        return "-"
    mean, std = stats[metric]["mean"], stats[metric]["std"]
    if metric == "run/params":
        return _number(mean)
    if metric in STATS:
        return f"{mean:.0f} ± {std:.0f}" if std else f"{mean:.0f}"
    return f"{mean:.4f} ± {std:.4f}"


def _rows(entries: Sequence[Entry]) -> tuple[list[str], list[list[Any]]]:
    """CSV columns and rows: every number apart, mean and std."""
    columns = ["name", "family", "folds", "device"]
    for m in (*METRICS, *STATS):
        columns += [f"{_CSV_NAMES[m]}_mean", f"{_CSV_NAMES[m]}_std"]
    columns.append("path")
    rows = []
    for e in entries:
        stats = _stats(e)
        row: list[Any] = [e.label, e.family, len(e.folds), e.device]
        for m in (*METRICS, *STATS):
            s = stats.get(m)
            row += [s["mean"], s["std"]] if s else [None, None]
        rows.append([*row, str(e.path)])
    return columns, rows


def _markdown(entries: Sequence[Entry]) -> str:
    first = entries[0]
    data = first.dataset or {}
    folds = "; ".join(f"{f.key} ({_plan_text(f.plan)})" for f in first.folds)
    heads = ["run", "family", *(_HEADS[m] for m in (*METRICS, *STATS)), "device"]
    lines = [
        f"Dataset: {data.get('name', '?')} ({_describe(data) if data else 'unrecorded'}, "
        f"{data.get('clips', '?')} clips); test folds: {folds}.",
        "Mean ± std over folds; parameters, training time per fold and test segments/s as each "
        "run recorded them (run_stats.json).",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "---|" * len(heads),
    ]
    for e in entries:
        stats = _stats(e)
        cells = [e.label, e.family, *(_cell(stats, m) for m in (*METRICS, *STATS)), e.device]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(entries: Sequence[Entry], path: Path) -> None:
    """Mean clip accuracy (error bar: std over folds) against segments/s; size by parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for e in entries:
        s = _stats(e)
        if "test/clip_acc" in s and "run/test_segments_per_s" in s:
            params = s.get("run/params", {}).get("mean", 0.0)
            points.append((e, s["run/test_segments_per_s"]["mean"], s["test/clip_acc"], params))
    largest = max((p for *_, p in points), default=0.0) or 1.0
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for e, rate, acc, params in points:
        size = 30 + 600 * math.sqrt(params / largest)
        marker = "*" if e.family == ENSEMBLE else "o"
        ax.errorbar(rate, acc["mean"], yerr=acc["std"], fmt="none", ecolor="0.6", zorder=1)
        ax.scatter(rate, acc["mean"], s=size, marker=marker, alpha=0.6, zorder=2)
        label = f"{e.label}\n{_number(params)} params" if params else e.label
        ax.annotate(
            label, (rate, acc["mean"]), fontsize=7, xytext=(6, 6), textcoords="offset points"
        )
    rates = [r for _, r, _, _ in points]
    if rates and max(rates) > 10 * min(rates):
        ax.set_xscale("log")
    ax.set_xlabel("test segments / s (as recorded by each run)")
    ax.set_ylabel("clip accuracy (mean over folds)")
    missing = [e.label for e in entries if e not in [p[0] for p in points]]
    title = "accuracy against throughput (point size: parameters)"
    ax.set_title(title + (f"\nnot shown (no throughput): {', '.join(missing)}" if missing else ""))
    ax.margins(x=0.25, y=0.15)  # room for the labels
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _log_to_wandb(
    settings: dict[str, Any],
    out: Path,
    entries: Sequence[Entry],
    table: tuple[list[str], list[list[Any]]],
    ensemble: dict[str, Any] | None,
) -> None:
    """The table and the plot in a ``compare`` run; the ensemble in a summary run of its own."""
    import wandb

    dataset = (entries[0].dataset or {}).get("name", "unknown")
    common = {k: v for k, v in settings.items() if v is not None}
    common.setdefault("dir", str(out))
    run = wandb.init(
        **common,
        name=f"compare-{dataset}-{out.name}",
        job_type="compare",
        group=f"compare-{dataset}",
        tags=[dataset, "compare"],
        config={"dataset": dataset, "inputs": [str(e.path) for e in entries]},
    )
    try:
        columns, rows = table
        run.log(
            {
                "compare/table": wandb.Table(columns=columns, data=rows),
                "compare/plot": wandb.Image(str(out / "compare.png")),
            }
        )
    finally:
        run.finish()
    if ensemble is None:
        return
    entry = next(e for e in entries if e.family == ENSEMBLE)
    run = wandb.init(
        **common,
        name=f"ensemble-{dataset}-{out.name}",
        job_type="cv-summary",
        group=f"compare-{dataset}",
        tags=[dataset, ENSEMBLE],
        config={"family": ENSEMBLE, "dataset": dataset, **ensemble},
    )
    try:
        for metric, s in _stats(entry).items():
            run.summary[f"{metric}_mean"] = s["mean"]
            run.summary[f"{metric}_std"] = s["std"]
    finally:
        run.finish()


def _wandb_settings(
    entries: Sequence[Entry], wandb: bool | None, project: str | None
) -> dict[str, Any] | None:
    logged = next((e.wandb for e in entries if e.wandb), None)
    if wandb is False or (wandb is None and logged is None and project is None):
        return None
    settings: dict[str, Any] = {"project": project or (logged or {}).get("project") or "audio-cls"}
    if logged and logged.get("offline"):
        settings["mode"] = "offline"
    return settings


def compare(
    inputs: list[str],
    out: str = "compare",
    ensemble: bool = False,
    ensemble_rounds: int = 20,
    wandb: bool | None = None,
    wandb_project: str | None = None,
) -> dict[str, Any]:
    """Compare runs and cross-validations on the same dataset and folds: compare.md and
    compare.csv (clip and segment accuracy and macro-F1, mean and std over folds; parameters,
    training time, test segments/s) and compare.png (accuracy against throughput).

    Args:
        inputs: Run folders (runs/<config>/version_N) or cross-validation folders
            (runs/<config>/cv_<time>), given as bare words.
        out: Folder for the table, the plot and the ensemble's reports (made when absent;
            files are replaced).
        ensemble: Also average the inputs' clip probabilities, with members and weights
            chosen on each fold's validation predictions only, and report it as one more row
            (reports in out/ensemble).
        ensemble_rounds: Members drawn (with replacement) by the greedy selection, at most.
        wandb: Log the table and the plot (and the ensemble) to W&B; None: when the inputs'
            runs logged to W&B.
        wandb_project: W&B project (None: the one the inputs' runs logged to, else audio-cls).
    """
    if not inputs:
        raise UsageError("compare needs run or cross-validation folders: audio-cls compare DIR...")
    if ensemble_rounds < 1:
        raise UsageError(f"--ensemble_rounds must be at least 1, got {ensemble_rounds}")
    entries = [load_entry(p) for p in inputs]
    seen: dict[Path, str] = {}
    for given, e in zip(inputs, entries):
        if e.path.resolve() in seen:
            raise UsageError(f"{given} is given twice (also as {seen[e.path.resolve()]})")
        seen[e.path.resolve()] = given
    labels = [e.label for e in entries]
    for i, e in enumerate(entries):
        if labels.count(e.label) > 1:  # two folders of the same name under different roots
            e.label = f"{e.label} ({i + 1})"
    check_comparable(entries)
    if ensemble and len(entries) < 2:
        raise UsageError("--ensemble needs at least two runs or cross-validations")
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out_dir}: cannot create it ({err.strerror or err})") from None
    chosen = None
    rows = list(entries)
    if ensemble:
        entry, chosen = _ensemble(entries, ensemble_rounds, out_dir / ENSEMBLE)
        chosen["summary"] = _stats(entry)
        (out_dir / ENSEMBLE / "ensemble.json").write_text(json.dumps(chosen, indent=2))
        rows.append(entry)
    markdown = _markdown(rows)
    (out_dir / "compare.md").write_text(markdown)
    table = _rows(rows)
    with (out_dir / "compare.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table[0])
        writer.writerows(["" if v is None else v for v in row] for row in table[1])
    _plot(rows, out_dir / "compare.png")
    settings = _wandb_settings(entries, wandb, wandb_project)
    if settings is not None:
        _log_to_wandb(settings, out_dir, rows, table, chosen)
    print(markdown)
    print(f"table: {out_dir / 'compare.md'}, {out_dir / 'compare.csv'}")
    print(f"plot:  {out_dir / 'compare.png'}")
    if chosen is not None:
        print(f"ensemble: {out_dir / ENSEMBLE / 'ensemble.json'}")
        for fold in chosen["folds"]:
            weights = ", ".join(f"{k} {w:.2f}" for k, w in fold["weights"].items())
            print(f"  fold {fold['fold']}: {weights}")
    return {"rows": [dict(zip(table[0], row)) for row in table[1]], "ensemble": chosen}
