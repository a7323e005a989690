"""The model-zoo leaderboard: every family cross-validated on ESC-10, one row per family and one
for the ensemble, in ``bench/leaderboard.csv`` and the README's table.

    python bench/leaderboard.py --root /path/to/esc10               # what is not measured yet
    python bench/leaderboard.py --root /path/to/esc10 --only cnn_esc10 --rerun
    python bench/leaderboard.py --readme README.md                  # the table from the CSV only

Each row is one ``audio-cls cv`` of a family's ``lightning_configs/*_esc10.yaml`` over the five
official folds (fold k tested, fold k+1 validates, the rest train), run in a process of its own
under ``runs/leaderboard/`` (W&B as the config says: set ``WANDB_MODE=offline`` without a
network). The row keeps the exact command, the device, the date, the folds, the mean and std of
clip accuracy and macro-F1 over folds and each fold's clip accuracy.

Without a GPU, the families meant for pretrained weights (tens of millions of parameters, hours
per fold on two cores) run one named fold with a short schedule, and their command says so;
with CUDA every config runs whole, in bf16. A row whose command is already in the CSV is kept
(rows add up across sessions; ``--rerun`` measures it again). A cross-validation that finished
without its row (an interrupted leaderboard) is recorded rather than rerun; ``--record-only``
records such rows and starts nothing. The ensemble row is
``audio-cls compare --ensemble`` over the five-fold cross-validations found under
``runs/leaderboard/``: members and weights chosen on validation folds only.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSV_PATH = REPO / "bench" / "leaderboard.csv"
WORK = Path("runs/leaderboard")  # relative to the repository: the commands stay copyable
COLUMNS = [
    "name",
    "family",
    "clip_acc_mean",
    "clip_acc_std",
    "clip_macro_f1_mean",
    "clip_macro_f1_std",
    "per_fold_clip_acc",
    "folds",
    "epochs",
    "params",
    "train_time_s",
    "wall_time_s",
    "device",
    "date",
    "command",
]
PRECISION_ENDS = ("-true", "-mixed")  # Lightning's precision names, as runs record them
README_START = "<!-- leaderboard: bench/leaderboard.py writes this table -->"
README_END = "<!-- /leaderboard -->"


#: Without a GPU, the families meant for pretrained weights (30-95 M parameters; a ResNeXt-50
#: epoch of ESC-10's windows takes about 5 minutes on two cores, a wav2vec2-base one about 4)
#: run one named fold for a few epochs.
ONE_CPU_FOLD = ("--cv.test_folds", "1", "--trainer.max_epochs", "3")


@dataclass(frozen=True)
class Entry:
    config: str  # lightning_configs/<config>.yaml
    cpu_args: tuple[str, ...] = ()  # what a CPU runs instead of the whole config

    def command(self, root: str, cuda: bool) -> list[str]:
        args = ["audio-cls", "cv", "--config", f"configs/{self.config}.yaml"]
        args += ["--data.root", root, "--trainer.default_root_dir", str(WORK)]
        return [*args, "--trainer.precision", "bf16-mixed"] if cuda else [*args, *self.cpu_args]

    def folds(self, cuda: bool) -> int:
        return 1 if not cuda and "--cv.test_folds" in self.cpu_args else 5


# roughly cheapest first, so that an interrupted leaderboard has the most rows
ENTRIES = [
    Entry("cnn_esc10"),
    Entry("text_teacher_esc10"),
    Entry("soundnet8_esc10"),
    Entry("soundnet_multihead_esc10"),
    Entry("vjepa2_esc10"),
    # its 40 epochs take 12 minutes a fold on two cores
    Entry("yamnet_esc10", cpu_args=("--trainer.max_epochs", "20")),
    Entry("esresnext_esc10", ONE_CPU_FOLD),
    Entry("audioclip_esc10", ONE_CPU_FOLD),
    Entry("wav2vec2_esc10", ONE_CPU_FOLD),
    Entry("liquid_s4_esc10"),
    Entry("mamba_esc10"),
]


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {os.cpu_count()} cores, {model}"


def read_rows(path: Path = CSV_PATH) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(rows: list[dict[str, str]], path: Path = CSV_PATH) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in COLUMNS} for row in rows)
    tmp.replace(path)  # a full disk or an interrupt leaves the old table whole


def upsert(rows: list[dict[str, str]], row: dict[str, str]) -> list[dict[str, str]]:
    """Rows with ``row``'s name and device replaced by it (other devices' rows stay)."""
    kept = [r for r in rows if (r["name"], r["device"]) != (row["name"], row["device"])]
    return [*kept, row]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def row_of_summary(
    name: str, summary: dict, command: str, device: str, date: str, epochs: str = ""
) -> dict[str, str]:
    """A leaderboard row from an ``audio-cls cv`` summary (``cv_summary.json``)."""
    stats = summary["summary"]

    def stat(metric: str, key: str) -> float | None:
        return stats.get(metric, {}).get(key)

    per_fold = " ".join(
        f"{f['fold']}:{f['test/clip_acc']:.3f}"
        for f in summary["folds"]
        if f.get("test/clip_acc") is not None
    )
    return {
        "name": name,
        "family": summary.get("family", ""),
        "clip_acc_mean": _fmt(stat("test/clip_acc", "mean")),
        "clip_acc_std": _fmt(stat("test/clip_acc", "std")),
        "clip_macro_f1_mean": _fmt(stat("test/clip_macro_f1", "mean")),
        "clip_macro_f1_std": _fmt(stat("test/clip_macro_f1", "std")),
        "per_fold_clip_acc": per_fold,
        "folds": " ".join(str(f["fold"]) for f in summary["folds"]),
        "epochs": epochs,
        "params": _fmt(stat("run/params", "mean"), 0),
        "train_time_s": _fmt(sum(f.get("run/train_time_s") or 0.0 for f in summary["folds"]), 0),
        "wall_time_s": _fmt(summary.get("wall_time_sec"), 0),
        "device": device,
        "date": date,
        "command": command,
    }


def row_of_ensemble(compare_csv: Path, command: str, device: str, date: str) -> dict[str, str]:
    """The ensemble row of ``audio-cls compare --ensemble``'s ``compare.csv``."""
    with compare_csv.open(newline="") as f:
        table = {r["name"]: r for r in csv.DictReader(f)}
    ensemble = table["ensemble"]
    chosen = json.loads((compare_csv.parent / "ensemble" / "ensemble.json").read_text())
    # compare labels a cross-validation <config name>/<cv folder>
    members = sorted({m.split("/")[0] for fold in chosen["folds"] for m in fold["weights"]})
    per_fold = " ".join(
        f"{fold['fold']}:{fold['test/clip_acc']:.3f}"
        for fold in chosen["folds"]
        if "test/clip_acc" in fold
    )
    return {
        "name": "ensemble",
        "family": "+".join(members),
        "clip_acc_mean": _fmt(float(ensemble["clip_acc_mean"])),
        "clip_acc_std": _fmt(float(ensemble["clip_acc_std"])),
        "clip_macro_f1_mean": _fmt(float(ensemble["clip_macro_f1_mean"])),
        "clip_macro_f1_std": _fmt(float(ensemble["clip_macro_f1_std"])),
        "per_fold_clip_acc": per_fold,
        "folds": " ".join(str(fold["fold"]) for fold in chosen["folds"]),
        "device": device,
        "date": date,
        "command": command,
    }


def markdown_table(rows: list[dict[str, str]]) -> str:
    """The README's table: best first; one-fold rows say so."""
    lines = [
        "| config | family | clip accuracy | clip macro-F1 | folds | params | device | date |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def key(r: dict[str, str]) -> tuple[int, float]:
        return (-len(r["folds"].split()), -float(r["clip_acc_mean"] or 0))

    for r in sorted(rows, key=key):
        folds = r["folds"].split()
        acc = f"{float(r['clip_acc_mean']):.3f}"
        f1 = f"{float(r['clip_macro_f1_mean']):.3f}"
        if len(folds) > 1:
            acc += f" ± {float(r['clip_acc_std']):.3f}"
            f1 += f" ± {float(r['clip_macro_f1_std']):.3f}"
        where = "1-5" if folds == ["1", "2", "3", "4", "5"] else f"fold {' '.join(folds)} only"
        if r.get("epochs"):
            where += f", {r['epochs']} epochs"
        params = f"{float(r['params']) / 1e6:.2f} M" if r.get("params") else "-"
        parts = r["device"].split(", ")  # kind and size, [CPU model], [training precision]
        device = parts[0] + (f", {parts[-1]}" if parts[-1].endswith(PRECISION_ENDS) else "")
        name = f"`{r['name']}`" if r["name"] != "ensemble" else f"ensemble of {r['family']}"
        family = r["family"] if r["name"] != "ensemble" else "-"
        lines.append(
            f"| {name} | {family} | {acc} | {f1} | {where} | {params} | {device} | {r['date']} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, rows: list[dict[str, str]]) -> None:
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no {README_START} ... {README_END} block to fill")
    table = markdown_table(rows)
    readme.write_text(f"{text[: start + len(README_START)]}\n{table}\n{text[end:]}")


def fit_args(command: list[str]) -> list[str]:
    """The training options of a ``cv`` command: what its ``cv_summary.json`` records."""
    args, i = [], 2
    while i < len(command):
        if command[i].startswith("--cv."):
            i += 2
            continue
        args.append(command[i])
        i += 1
    return args


def find_summary(command: list[str], folds: int | None, since: float = 0.0) -> Path | None:
    """The newest finished cross-validation under WORK of exactly ``command`` (with ``folds``
    folds where given), written after ``since``."""
    wanted, found = fit_args(command), []
    for path in (REPO / WORK).glob("**/cv_*/cv_summary.json"):
        if path.stat().st_mtime < since:
            continue
        summary = json.loads(path.read_text())
        if summary.get("config") == wanted and folds in (None, len(summary["folds"])):
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _config_of(summary_path: Path) -> str:
    args = json.loads(summary_path.read_text()).get("config") or []
    configs = [a for i, a in enumerate(args) if i and args[i - 1] == "--config"]
    return Path(configs[-1]).stem if configs else ""


def five_fold_summaries() -> list[Path]:
    """The newest five-fold cross-validation of each entry under WORK."""
    paths = sorted((REPO / WORK).glob("**/cv_*/cv_summary.json"), key=lambda p: p.stat().st_mtime)
    newest: dict[str, Path] = {}
    for path in paths:
        if len(json.loads(path.read_text())["folds"]) == 5:
            newest[_config_of(path)] = path
    return [newest[e.config] for e in ENTRIES if e.config in newest]


def _precision(summary_path: Path) -> str:
    """The training precision the folds' runs record (``32-true``, ``bf16-mixed``...)."""
    found = set()
    for fold in json.loads(summary_path.read_text())["folds"]:
        stats = summary_path.parent / str(fold.get("run_dir", "")) / "run_stats.json"
        if stats.exists():
            found.add(json.loads(stats.read_text()).get("precision") or "")
    return "/".join(sorted(p for p in found if p))


def _epochs(summary_path: Path) -> str:
    """Epochs the folds trained (early stopping may end some sooner), as ``min-max``."""
    counts = []
    for fold in json.loads(summary_path.read_text())["folds"]:
        metrics = summary_path.parent / str(fold.get("run_dir", "")) / "metrics.csv"
        if metrics.exists():
            with metrics.open(newline="") as f:
                rows = csv.DictReader(f)  # the epochs that logged a training loss
                epochs = [int(r["epoch"]) for r in rows if r.get("train/loss_epoch")]
            if epochs:
                counts.append(max(epochs) + 1)
    if not counts:
        return ""
    return str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def run_entry(
    entry: Entry, root: str, device: str, rows: list[dict[str, str]], rerun: bool, run: bool
):
    cuda = device.startswith("cuda")
    command = entry.command(root, cuda=cuda)
    folds = entry.folds(cuda)
    shown = shlex.join(command)
    if not rerun and any(r["command"] == shown and r["device"].startswith(device) for r in rows):
        print(f"{entry.config}: measured already ({shown}); --rerun measures it again")
        return rows
    path = None if rerun else find_summary(command, folds)
    if path is not None:  # finished earlier (an interrupted leaderboard): recorded, not rerun
        print(f"{entry.config}: recording the finished {path.parent.relative_to(REPO)}")
    elif not run:
        print(f"{entry.config}: no finished cross-validation under {WORK}")
        return rows
    else:
        print(f"\n=== {entry.config}: {shown}", flush=True)
        started = time.time()
        executable = Path(sys.executable).with_name("audio-cls")
        done = subprocess.run([str(executable), *command[1:]], cwd=REPO)
        path = find_summary(command, folds, since=started)
        if done.returncode != 0 or path is None:
            print(f"{entry.config}: the cross-validation failed (exit {done.returncode}); no row")
            return rows
    summary = json.loads(path.read_text())
    date = dt.date.fromtimestamp(path.stat().st_mtime).isoformat()
    precision = _precision(path)
    where = f"{device}, {precision}" if precision else device
    row = row_of_summary(entry.config, summary, shown, where, date, _epochs(path))
    rows = upsert(rows, row)
    write_rows(rows)
    print(f"{entry.config}: clip accuracy {row['clip_acc_mean']} ± {row['clip_acc_std']}")
    return rows


def run_ensemble(device: str, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    summaries = five_fold_summaries()
    if len(summaries) < 2:
        print("ensemble: fewer than two five-fold cross-validations; no row")
        return rows
    dirs = [str(p.parent.relative_to(REPO)) for p in summaries]
    out = WORK / "compare"
    command = ["audio-cls", "compare", *dirs, "--out", str(out), "--ensemble"]
    print(f"\n=== ensemble: {shlex.join(command)}", flush=True)
    executable = Path(sys.executable).with_name("audio-cls")
    if subprocess.run([str(executable), *command[1:]], cwd=REPO).returncode != 0:
        print("ensemble: compare failed; no row")
        return rows
    date = dt.date.today().isoformat()
    row = row_of_ensemble(REPO / out / "compare.csv", shlex.join(command), device, date)
    rows = upsert(rows, row)
    write_rows(rows)
    print(f"ensemble: clip accuracy {row['clip_acc_mean']} ± {row['clip_acc_std']}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="the ESC-10 (or ESC-50) folder, ESC-50's layout")
    parser.add_argument("--only", nargs="+", metavar="CONFIG", help="these configs only")
    parser.add_argument("--rerun", action="store_true", help="measure rows already in the CSV")
    parser.add_argument("--no-ensemble", action="store_true", help="skip the ensemble row")
    parser.add_argument(
        "--record-only",
        action="store_true",
        help=f"write the rows of cross-validations finished under {WORK}, start none",
    )
    parser.add_argument("--readme", type=Path, help="fill this README's leaderboard table")
    args = parser.parse_args(argv)
    rows = read_rows()
    if args.root:
        if not Path(args.root).is_dir():
            raise SystemExit(f"--root {args.root}: not a folder; give the ESC-10 or ESC-50 folder")
        known = {e.config for e in ENTRIES}
        unknown = sorted(set(args.only or []) - known)
        if unknown:
            raise SystemExit(
                f"--only {' '.join(unknown)}: not a leaderboard config ({', '.join(sorted(known))})"
            )
        device = device_name()
        root = os.path.relpath(Path(args.root).resolve(), REPO)
        for entry in ENTRIES:
            if args.only is None or entry.config in args.only:
                rows = run_entry(entry, root, device, rows, args.rerun, not args.record_only)
        if not args.no_ensemble:
            rows = run_ensemble(device, rows)
    elif args.readme is None:
        parser.error("give --root (measure) or --readme (write the table)")
    if args.readme is not None:
        update_readme(args.readme, rows)
        print(f"table written into {args.readme}")
    print()
    print(markdown_table(rows) if rows else "no rows yet")


if __name__ == "__main__":
    main()
