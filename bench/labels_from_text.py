"""Labels from text on an ESC-50-layout set (ESC-10): teacher, students, zero-shot.

    python bench/labels_from_text.py --root path/to/esc10 --out runs/labels_from_text \
        [--folds 1 2 3 4 5] [--zero-shot dog rooster] [--max-epochs N]

Runs that finished are kept in ``--out`` and read again by a later call with the same ``--out``
(remove a run's folder to fit it again).

Half of every fold's clips keep their labels (stratified by class, seed 0); the other half's
are hidden. For each test fold k (validation: the next fold, as ``audio-cls cv`` does):

1. a ``text_teacher`` (configs/text_teacher_esc10.yaml) is fitted on the labelled half of the
   training and validation folds, and tested on the whole fold k;
2. it labels the hidden half of the training folds (``audio_cls.labelling.label_clips``, soft
   labels, every clip kept);
3. three students (configs/student_esc10.yaml, MelCNN with early stopping) are fitted and
   tested on the whole fold k: on the labelled half plus the teacher's top-1 labels
   (``--data.extra_labels hard``), plus its soft labels (``soft``), and on the labelled half
   alone (no ``extra_train``).

Zero-shot: for each class named by ``--zero-shot``, a teacher is fitted on every clip of the
other classes (folds 1-3 train, 4 validation, as the fold plan of fold 5) and then labels every
clip of the held-out class with all the class names: how often it names the class it never
heard, against chance (1 / number of classes).

Each fit is ``audio-cls fit`` in a subprocess, W&B off; clip accuracies come from each run's
``metrics_test.json``. Prints one row per fold, the means, and the zero-shot rates.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from audio_cls.data.sources import ESC50
from audio_cls.data.sources.base import Clip

CONFIGS = Path(__file__).resolve().parent.parent / "lightning_configs"
MODELS = ("teacher", "hard", "soft", "labelled_only")


def split_halves(clips: list[Clip], seed: int = 0) -> tuple[list[Clip], list[Clip]]:
    """Half of each (fold, class) keeps its label, the other half is hidden."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[int, int], list[Clip]] = defaultdict(list)
    for clip in clips:
        groups[(clip.fold, clip.label)].append(clip)
    labelled, hidden = [], []
    for key in sorted(groups):
        members = groups[key]
        order = rng.permutation(len(members))
        half = len(members) // 2
        labelled += [members[i] for i in order[:half]]
        hidden += [members[i] for i in order[half:]]
    return labelled, hidden


def write_manifest(path: Path, clips: list[Clip], names: list[str]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "fold", "clip_id"])
        for c in clips:
            writer.writerow([str(Path(c.path).resolve()), names[c.label], c.fold, c.clip_id])
    return path


def fit(config: str, manifest: Path, workdir: Path, folds: dict, *options: str) -> dict:
    """``audio-cls fit`` on ``manifest`` in ``workdir``; returns its test metrics. A workdir
    that holds a finished run (an interrupted bench run again) is read, not fitted again."""
    done = sorted(workdir.rglob("metrics_test.json"), key=lambda p: p.stat().st_mtime)
    if done and list(workdir.rglob("best.ckpt")):
        return json.loads(done[-1].read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    source = {
        "class_path": "audio_cls.data.sources.CSVManifest",
        "init_args": {"file": str(manifest)},
    }
    cmd = [sys.executable, "-m", "audio_cls.cli", "fit", "--config", str(CONFIGS / config)]
    cmd += ["--data.root", str(manifest.parent), "--data.source", json.dumps(source)]
    for stage in ("train", "val", "test"):
        cmd += [f"--data.{stage}_folds", json.dumps(folds[stage])]
    cmd += list(options)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    with (workdir / "fit.log").open("w") as log:
        subprocess.run(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    metrics = sorted(workdir.rglob("metrics_test.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(metrics[-1].read_text()) if metrics else {}


def best_checkpoint(workdir: Path) -> Path:
    return sorted(workdir.rglob("best.ckpt"), key=lambda p: p.stat().st_mtime)[-1]


def clip_acc(metrics: dict) -> float:
    return float(metrics.get("test/clip_acc", float("nan")))


def run_fold(k: int, fold_ids: list[int], labelled, hidden, names, out: Path, extra: list[str]):
    from audio_cls.labelling import label_clips, write_label_manifest

    i = fold_ids.index(k)
    val = fold_ids[(i + 1) % len(fold_ids)]
    train = [f for f in fold_ids if f not in (k, val)]
    folds = {"train": train, "val": [val], "test": [k]}
    here = out / f"fold{k}"
    here.mkdir(parents=True, exist_ok=True)
    # labelled halves of the training and validation folds, the whole test fold
    data = [c for c in labelled if c.fold != k] + [c for c in labelled + hidden if c.fold == k]
    manifest = write_manifest(here / "data.csv", data, names)
    accs = {}
    accs["teacher"] = clip_acc(
        fit("text_teacher_esc10.yaml", manifest, here / "teacher", folds, *extra)
    )
    to_label = [c for c in hidden if c.fold in train]
    labels = label_clips(best_checkpoint(here / "teacher"), to_label, device="cpu")
    pseudo = write_label_manifest(here / "teacher_labels.csv", labels.rows(), labels.class_names)
    # the teacher's class order is its manifest's (sorted names), not ESC-50's
    truth = np.array([labels.class_names.index(names[c.label]) for c in to_label])
    teacher_label_acc = float((labels.probs.argmax(1).numpy() == truth).mean())
    student = ("--data.extra_train", str(pseudo.path))
    for kind in ("hard", "soft"):
        accs[kind] = clip_acc(
            fit(
                "student_esc10.yaml",
                manifest,
                here / kind,
                folds,
                *student,
                "--data.extra_labels",
                kind,
                *extra,
            )
        )
    accs["labelled_only"] = clip_acc(
        fit("student_esc10.yaml", manifest, here / "labelled_only", folds, *extra)
    )
    return accs, teacher_label_acc


def zero_shot(held_out: str, clips: list[Clip], names: list[str], out: Path, extra: list[str]):
    from audio_cls.labelling import label_clips

    c = names.index(held_out)
    here = out / f"zero_shot_{held_out}"
    here.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(here / "data.csv", [x for x in clips if x.label != c], names)
    folds = {"train": [1, 2, 3], "val": [4], "test": [5]}
    fit("text_teacher_esc10.yaml", manifest, here / "teacher", folds, *extra)
    unseen = [x for x in clips if x.label == c]
    labels = label_clips(best_checkpoint(here / "teacher"), unseen, classes=names, device="cpu")
    named = [labels.class_names[i] for i in labels.probs.argmax(1).tolist()]
    return named.count(held_out) / len(named), Counter(named).most_common(3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="ESC-50-layout folder (audio/, meta/)")
    parser.add_argument("--out", default="runs/labels_from_text")
    parser.add_argument("--folds", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    parser.add_argument("--zero-shot", nargs="*", default=[], help="classes to hold out")
    parser.add_argument("--max-epochs", type=int, default=None, help="override every config's")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    extra = ["--trainer.max_epochs", str(args.max_epochs)] if args.max_epochs else []

    manifest = ESC50(subset="esc10", download=False).manifest(Path(args.root))
    names = list(manifest.class_names)
    clips = list(manifest.clips)
    fold_ids = sorted({c.fold for c in clips})
    labelled, hidden = split_halves(clips)
    print(
        f"{len(clips)} clips, {len(names)} classes; {len(labelled)} labelled, {len(hidden)} hidden"
    )

    rows = {}
    for k in args.folds:
        rows[k] = run_fold(k, fold_ids, labelled, hidden, names, out, extra)
        accs, label_acc = rows[k]
        print(
            f"fold {k}: "
            + ", ".join(f"{m} {accs[m]:.3f}" for m in MODELS)
            + f"; teacher's labels of the hidden half right {label_acc:.3f}",
            flush=True,
        )
    if rows:
        print("clip accuracy over folds " + " ".join(map(str, args.folds)) + ":")
        for m in MODELS:
            values = [rows[k][0][m] for k in rows]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"  {m:<14} {statistics.mean(values):.3f} +- {std:.3f}")
    for held_out in args.zero_shot:
        rate, common = zero_shot(held_out, clips, names, out, extra)
        given = ", ".join(f"{name} {n}" for name, n in common)
        print(
            f"zero-shot {held_out}: named {rate:.3f} of its clips (chance {1 / len(names):.3f}); "
            f"names given most: {given}",
            flush=True,
        )


if __name__ == "__main__":
    main()
