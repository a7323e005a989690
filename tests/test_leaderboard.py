"""bench/leaderboard.py: rows from cross-validation summaries, the committed CSV and the README
table it writes."""

import csv
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from audio_cls.commands.compare import _rows as compare_rows

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("leaderboard", REPO / "bench" / "leaderboard.py")
leaderboard = importlib.util.module_from_spec(_spec)
sys.modules["leaderboard"] = leaderboard  # its dataclasses look their module up
_spec.loader.exec_module(leaderboard)


def _summary(accs: list[float], config: list[str]) -> dict:
    return {
        "config": config,
        "family": "mel_cnn",
        "folds": [
            {"fold": k, "test/clip_acc": a, "run/train_time_s": 10.0, "run_dir": f"fold_{k}"}
            for k, a in enumerate(accs, start=1)
        ],
        "summary": {
            "test/clip_acc": {"mean": sum(accs) / len(accs), "std": 0.05},
            "test/clip_macro_f1": {"mean": 0.8, "std": 0.04},
            "run/params": {"mean": 98_826.0, "std": 0.0},
        },
        "wall_time_sec": 321.4,
    }


def test_committed_leaderboard_is_what_the_readme_shows():
    rows = leaderboard.read_rows()
    assert rows, "bench/leaderboard.csv has no rows"
    readme = (REPO / "README.md").read_text()
    start = readme.index(leaderboard.README_START) + len(leaderboard.README_START)
    end = readme.index(leaderboard.README_END)
    assert readme[start:end].strip() == leaderboard.markdown_table(rows), (
        "README's leaderboard differs from bench/leaderboard.csv: "
        "run python bench/leaderboard.py --readme README.md"
    )
    configs = {e.config for e in leaderboard.ENTRIES}
    for row in rows:
        command = shlex.split(row["command"])
        assert command[:2] in (["audio-cls", "cv"], ["audio-cls", "compare"]), row["command"]
        if command[1] == "cv":
            assert row["name"] in configs
            config = command[command.index("--config") + 1]
            assert (REPO / config).is_file(), config
        folds = row["folds"].split()
        accs = [float(x.split(":")[1]) for x in row["per_fold_clip_acc"].split()]
        assert len(accs) == len(folds) >= 1
        assert float(row["clip_acc_mean"]) == pytest.approx(sum(accs) / len(accs), abs=6e-4)
        assert row["device"] and row["date"]


def test_a_row_holds_the_folds_and_their_mean():
    command = ["audio-cls", "cv", "--config", "configs/cnn_esc10.yaml", "--data.root", "esc10"]
    summary = _summary([0.9, 0.8, 0.85, 0.95, 0.9], command[2:])
    row = leaderboard.row_of_summary("cnn_esc10", summary, shlex.join(command), "cpu", "2026-12-08")
    assert row["clip_acc_mean"] == "0.8800"
    assert row["per_fold_clip_acc"] == "1:0.900 2:0.800 3:0.850 4:0.950 5:0.900"
    assert row["folds"] == "1 2 3 4 5"
    assert row["train_time_s"] == "50"
    table = leaderboard.markdown_table([row])
    assert "| `cnn_esc10` | mel_cnn | 0.880 ± 0.050 | 0.800 ± 0.040 | 1-5 | 0.10 M | cpu |" in table


def test_one_fold_rows_say_so_and_sort_after_five_fold_rows():
    one = leaderboard.row_of_summary("big", _summary([0.99], []), "c1", "cpu: 2 cores", "d")
    five = leaderboard.row_of_summary("small", _summary([0.5] * 5, []), "c5", "cpu: 2 cores", "d")
    table = leaderboard.markdown_table([one, five]).splitlines()
    assert "`small`" in table[2] and "`big`" in table[3]
    assert "| fold 1 only |" in table[3]
    five["device"] = "cpu: 2 cores, Some CPU, bf16-mixed"
    assert "| cpu: 2 cores, bf16-mixed |" in leaderboard.markdown_table([five])


def test_the_summary_of_the_same_command_is_found_and_others_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr(leaderboard, "REPO", tmp_path)
    entry = leaderboard.Entry("esresnext_esc10", leaderboard.ONE_CPU_FOLD)
    command = entry.command("esc10", cuda=False)
    assert "--cv.test_folds" not in leaderboard.fit_args(command)
    assert entry.folds(cuda=False) == 1 and entry.folds(cuda=True) == 5
    ours = tmp_path / leaderboard.WORK / "runs/esresnext/cv_1/cv_summary.json"
    other = tmp_path / leaderboard.WORK / "runs/esresnext/cv_2/cv_summary.json"
    for path, args in ((ours, leaderboard.fit_args(command)), (other, ["--config", "x.yaml"])):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_summary([0.7], args)))
    os.utime(ours, (1, 1))
    assert leaderboard.find_summary(command, 1) == ours
    assert leaderboard.find_summary(command, 5) is None  # an unfinished or other cv: no row
    assert leaderboard.find_summary(command, 1, since=2) is None


def test_rows_are_replaced_per_name_and_device_and_written_whole(tmp_path):
    a = {"name": "x", "device": "cpu", "clip_acc_mean": "0.5"}
    b = {"name": "x", "device": "cuda", "clip_acc_mean": "0.6"}
    rows = leaderboard.upsert(leaderboard.upsert([a], b), {**a, "clip_acc_mean": "0.7"})
    assert sorted((r["device"], r["clip_acc_mean"]) for r in rows) == [
        ("cpu", "0.7"),
        ("cuda", "0.6"),
    ]
    path = tmp_path / "board.csv"
    leaderboard.write_rows(rows, path)
    assert [r["clip_acc_mean"] for r in leaderboard.read_rows(path)] == ["0.6", "0.7"]
    assert not path.with_suffix(".csv.tmp").exists()


def test_the_ensemble_row_comes_from_compare(tmp_path):
    columns, _ = compare_rows([])
    values = {c: "" for c in columns}
    values.update(name="ensemble", folds="2", clip_acc_mean="0.91", clip_acc_std="0.01")
    values.update(clip_macro_f1_mean="0.9", clip_macro_f1_std="0.02")
    with (tmp_path / "compare.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerow(values)
    (tmp_path / "ensemble").mkdir()
    folds = [
        {
            "fold": "1",
            "weights": {"cnn_esc10/cv_1": 0.5, "vjepa2_esc10/cv_2": 0.5},
            "test/clip_acc": 0.9,
        },
        {"fold": "2", "weights": {"cnn_esc10/cv_1": 1.0}, "test/clip_acc": 0.92},
    ]
    (tmp_path / "ensemble" / "ensemble.json").write_text(json.dumps({"folds": folds}))
    row = leaderboard.row_of_ensemble(tmp_path / "compare.csv", "audio-cls compare", "cpu", "d")
    assert row["family"] == "cnn_esc10+vjepa2_esc10"
    assert row["per_fold_clip_acc"] == "1:0.900 2:0.920"
    assert row["clip_acc_mean"] == "0.9100" and row["folds"] == "1 2"
    assert "| ensemble of cnn_esc10+vjepa2_esc10 |" in leaderboard.markdown_table([row])


def test_epochs_are_those_that_trained(tmp_path):
    for fold, last in ((1, 14), (2, 9)):  # fold 2 stopped early
        run = tmp_path / f"fold_{fold}"
        run.mkdir()
        lines = ["epoch,step,train/loss_epoch,test/clip_acc"]
        lines += [f"{e},{e * 10},0.5," for e in range(last + 1)]
        lines.append(f"{last + 1},{last * 10 + 1},,0.9")  # the test row
        (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    summary = tmp_path / "cv_summary.json"
    summary.write_text(json.dumps({"folds": [{"run_dir": "fold_1"}, {"run_dir": "fold_2"}]}))
    assert leaderboard._epochs(summary) == "10-15"
