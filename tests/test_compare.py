"""``audio-cls compare``: the table and plot over cross-validations the tests make, refusals of
runs on other datasets or folds, the ensemble row (chosen on validation folds only), what each
run records of itself (``run_stats.json``), and W&B offline."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from audio_cls.cli import main
from audio_cls.commands import UsageError
from audio_cls.commands.compare import compare, select_ensemble
from tests.test_cli import FAST as CLI_FAST
from tests.test_cli import TINY_SOURCE
from tests.test_runs import _fails_with_one_line, _wandb_records

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
FAST = [*CLI_FAST, "--data.window_sec=0.5", "--trainer.max_epochs=1"]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _summary(records: list) -> dict[str, object]:
    """The summary values an offline W&B run recorded, by key."""
    return {
        item.key or "/".join(item.nested_key): json.loads(item.value_json)
        for r in records
        if r.HasField("summary")
        for item in r.summary.update
    }


def _wandb_runs(folder: Path) -> dict[str, tuple]:
    """Offline W&B runs under ``folder``: display name -> (tags, job type, records)."""
    seen = {}
    for run in sorted(folder.rglob("offline-run-*")):
        records = _wandb_records(next(run.glob("run-*.wandb")))
        info = [r.run for r in records if r.HasField("run")][-1]  # tags set after the start
        seen[info.display_name] = (list(info.tags), info.job_type, records)
    return seen


@pytest.fixture(scope="module")
def cvs(synthetic_root, tmp_path_factory):
    """Two tiny cross-validations of MelCNN (two widths) on the synthetic set, folds 1-3; the
    second one logs to W&B offline."""
    import wandb

    cwd = tmp_path_factory.mktemp("compare")
    mp = pytest.MonkeyPatch()
    mp.chdir(cwd)
    common = ["cv", "--config", QUICKSTART, f"--data.root={synthetic_root}", *TINY_SOURCE, *FAST]
    try:
        main([*common, "--model.init_args.channels=[4,8]"])
        mp.setenv("WANDB_MODE", "offline")
        wandb.teardown()  # W&B reads its settings once a process
        main([*common, "--model.init_args.channels=[8,8,8]", "--seed_everything=7"])
    finally:
        wandb.teardown()
        mp.undo()
    found = sorted((cwd / "runs" / "quickstart").glob("cv_*"))
    assert len(found) == 2
    return cwd, found


def test_runs_record_their_stats_and_cv_summarises_them(cvs):
    small = cvs[1][0]
    summary = json.loads((small / "cv_summary.json").read_text())
    assert summary["family"] == "mel_cnn"
    assert summary["dataset"]["source"] == "Synthetic" and summary["dataset"]["clips"] == 27
    for row in summary["folds"]:
        run = small / row["run_dir"]
        assert run == small / f"fold_{row['fold']}"
        stats = json.loads((run / "run_stats.json").read_text())
        assert stats["family"] == "mel_cnn"
        assert stats["run/train_time_s"] > 0 and stats["run/test_segments_per_s"] > 0
        assert stats["test_segments"] == 9 * 3  # 9 test clips of 1 s, 0.5 s windows, 0.25 s hop
        assert stats["folds"] == {k: row[k] for k in ("train", "val", "test")}
        assert stats["data"]["fingerprint"] == summary["dataset"]["fingerprint"]
        for key in ("run/params", "run/train_time_s", "run/test_segments_per_s"):
            assert row[key] == pytest.approx(stats[key])
        # metrics.csv stays free of timings, which no rerun repeats (W&B has them, below)
        assert not [k for k in _csv(run / "metrics.csv")[0] if k.startswith("run/")]
        # the best epoch's validation clip probabilities, for ensembles
        val = _csv(run / "predictions_val.csv")
        assert len(val) == 9 and {"prob_impact", "prob_knock"} <= set(val[0])
    params = [row["run/params"] for row in summary["folds"]]
    assert summary["summary"]["run/params"]["mean"] == pytest.approx(np.mean(params))
    assert summary["summary"]["run/train_time_s"]["std"] >= 0


def test_compare_writes_the_table_the_plot_and_the_ensemble(cvs, tmp_path):
    _, (small, large) = cvs
    out = tmp_path / "cmp"
    main(["compare", str(small), str(large), "--out", str(out), "--ensemble", "--wandb=false"])
    rows = _csv(out / "compare.csv")
    assert [r["name"] for r in rows] == [
        f"quickstart/{small.name}",
        f"quickstart/{large.name}",
        "ensemble",
    ]
    for row, cv in zip(rows, (small, large)):
        summary = json.loads((cv / "cv_summary.json").read_text())["summary"]
        assert float(row["clip_acc_mean"]) == pytest.approx(summary["test/clip_acc"]["mean"])
        assert float(row["segment_macro_f1_std"]) == pytest.approx(summary["test/macro_f1"]["std"])
        assert float(row["params_mean"]) == summary["run/params"]["mean"]
        assert float(row["segments_per_s_mean"]) > 0 and row["folds"] == "3"
    ensemble = rows[2]
    assert ensemble["segment_acc_mean"] == ""  # clip probabilities only
    assert 0 <= float(ensemble["clip_acc_mean"]) <= 1
    assert "| ensemble | ensemble |" in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 0

    chosen = json.loads((out / "ensemble" / "ensemble.json").read_text())
    accs = []
    for fold in chosen["folds"]:
        assert sum(fold["weights"].values()) == pytest.approx(1.0)
        folder = out / "ensemble" / f"fold_{fold['fold']}"
        for name in ("predictions.csv", "classification_report.csv", "confusion_matrix.png"):
            assert (folder / name).is_file(), name
        metrics = json.loads((folder / "metrics_test.json").read_text())
        predictions = _csv(folder / "predictions.csv")
        right = np.mean([p["prediction"] == p["target"] for p in predictions])
        assert metrics["test/clip_acc"] == pytest.approx(right) == fold["test/clip_acc"]
        accs.append(right)
    assert float(ensemble["clip_acc_mean"]) == pytest.approx(np.mean(accs))


def _edited_copy(cv: Path, to: Path, edit) -> Path:
    shutil.copytree(cv, to)
    summary = json.loads((to / "cv_summary.json").read_text())
    edit(summary)
    (to / "cv_summary.json").write_text(json.dumps(summary))
    return to


def test_runs_on_other_datasets_or_folds_are_refused(
    cvs, synthetic_root, tmp_path, monkeypatch, capsys
):
    _, (small, _) = cvs

    def other_dataset(summary):
        summary["dataset"]["options"]["clips_per_class"] = 12

    def other_split(summary):
        summary["folds"][1]["train"], summary["folds"][1]["val"] = [1, 3], []

    renamed = _edited_copy(small, tmp_path / "a" / "cv_other", other_dataset)
    line = _fails_with_one_line(
        ["compare", str(small), str(renamed), "--out", str(tmp_path / "x")], monkeypatch, capsys
    )
    assert "the datasets differ: Synthetic(clips_per_class=9) vs Synthetic(clips_per_class=12)" in (
        line
    )
    assert small.name in line and "a/cv_other" in line

    split = _edited_copy(small, tmp_path / "b" / "cv_split", other_split)
    line = _fails_with_one_line(
        ["compare", str(small), str(split), "--out", str(tmp_path / "x")], monkeypatch, capsys
    )
    assert "test fold 2 is split differently (train [1] val [3] vs train [1, 3] val [])" in line

    # a run of its own (one fold) against a cross-validation (three)
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            QUICKSTART,
            f"--data.root={synthetic_root}",
            *TINY_SOURCE,
            *FAST,
            "--data.train_folds=[1]",
            "--data.val_folds=[2]",
            "--data.test_folds=[3]",
        ]
    )
    run = tmp_path / "runs" / "quickstart" / "latest"
    line = _fails_with_one_line(
        ["compare", str(small), str(run), "--out", str(tmp_path / "x")], monkeypatch, capsys
    )
    assert "the test folds differ (1; 2; 3 vs 3)" in line
    assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match=r"holds neither cv_summary\.json nor metrics_test\.json"):
        compare([str(tmp_path)], out=str(tmp_path / "x"))


# ---------------------------------------------------------------------------------------------
# the ensemble is chosen on validation folds only


CLASSES = ["a", "b"]


def _predictions(path: Path, targets: list[int], right: bool) -> None:
    """Confident predictions, all right or all wrong."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "path", "target", "prediction", "prob_a", "prob_b", "error"])
        for i, t in enumerate(targets):
            guess = t if right else 1 - t
            probs = [0.9, 0.1] if guess == 0 else [0.1, 0.9]
            w.writerow([f"c{i}", f"{i}.wav", CLASSES[t], CLASSES[guess], *probs, ""])


def _fake_run(folder: Path, val_right: bool, test_right: bool) -> Path:
    """A run folder as fit leaves it (the files compare reads): test fold 1, val fold 2."""
    data = {
        "source": "Synthetic",
        "name": "synthetic",
        "options": {"num_classes": 2},
        "class_names": CLASSES,
        "clips": 8,
        "fingerprint": "f" * 40,
    }
    stats = {
        "family": "mel_cnn",
        "run/params": 1000,
        "run/train_time_s": 10.0,
        "run/test_segments_per_s": 100.0,
        "data": data,
        "folds": {"train": [3], "val": [2], "test": [1]},
    }
    folder.mkdir(parents=True)
    (folder / "run_stats.json").write_text(json.dumps(stats))
    acc = 1.0 if test_right else 0.0
    metrics = {"test/clip_acc": acc, "test/clip_macro_f1": acc, "test/acc": acc}
    (folder / "metrics_test.json").write_text(json.dumps({**metrics, "test/macro_f1": acc}))
    _predictions(folder / "predictions_val.csv", [0, 1, 0, 1], val_right)
    _predictions(folder / "predictions.csv", [1, 0, 1, 1], test_right)
    return folder


def test_ensemble_members_are_chosen_on_validation_not_test(tmp_path):
    x = _fake_run(tmp_path / "x" / "version_0", val_right=True, test_right=False)
    y = _fake_run(tmp_path / "y" / "version_0", val_right=False, test_right=True)
    result = compare([str(y), str(x)], out=str(tmp_path / "out"), ensemble=True)
    fold = result["ensemble"]["folds"][0]
    assert fold["weights"] == {"x/version_0": 1.0}  # validation prefers x; test would prefer y
    assert fold["val/clip_acc"] == 1.0 and fold["test/clip_acc"] == 0.0
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["ensemble"]["clip_acc_mean"] == 0.0
    assert rows["ensemble"]["params_mean"] == 1000  # one member chosen
    assert rows["ensemble"]["segments_per_s_mean"] == pytest.approx(100.0)


def test_greedy_selection_with_replacement():
    targets = np.array([0, 1, 0, 1])
    good = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.45, 0.55]])
    sure = np.array([[0.99, 0.01], [0.01, 0.99], [0.99, 0.01], [0.55, 0.45]])  # one wrong
    assert select_ensemble([sure, good], targets, rounds=1).tolist() == [0.0, 1.0]
    # `sure` joins once `good` outweighs its one mistake: all right, lower log loss
    weights = select_ensemble([sure, good], targets, rounds=5)
    assert weights.sum() == pytest.approx(1.0) and 0 < weights[0] < weights[1]


def test_ensemble_needs_validation_predictions(tmp_path):
    x = _fake_run(tmp_path / "x" / "version_0", True, True)
    y = _fake_run(tmp_path / "y" / "version_0", True, True)
    (y / "predictions_val.csv").unlink()
    with pytest.raises(UsageError, match=r"predictions_val\.csv is missing"):
        compare([str(x), str(y)], out=str(tmp_path / "out"), ensemble=True)
    with pytest.raises(UsageError, match="at least two"):
        compare([str(x)], out=str(tmp_path / "out"), ensemble=True)
    (y / "predictions_val.csv").write_text("path,label\na.wav,a\n")  # a manifest, not predictions
    with pytest.raises(UsageError, match=r"predictions_val\.csv: not a predictions file"):
        compare([str(x), str(y)], out=str(tmp_path / "out"), ensemble=True)


def test_inputs_that_are_not_runs_are_refused_with_what_to_give(tmp_path):
    x = _fake_run(tmp_path / "runs" / "x" / "version_0", True, True)
    with pytest.raises(UsageError, match=r"nowhere: no such folder"):
        compare([str(tmp_path / "nowhere")], out=str(tmp_path / "out"))
    # the config's folder instead of one of its runs: the runs inside it are named
    with pytest.raises(UsageError, match=r"holds neither .* \(it holds version_0\)$"):
        compare([str(x.parent)], out=str(tmp_path / "out"))
    with pytest.raises(UsageError, match=r"version_0 is given twice"):
        compare([str(x), str(tmp_path / "runs" / "x" / ".." / "x" / "version_0")])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# W&B


def test_wandb_offline_runs_are_tagged_and_compare_logs_its_table(cvs, tmp_path, monkeypatch):
    import wandb

    cwd, (small, large) = cvs
    runs = _wandb_runs(cwd / "runs" / "wandb")
    tag = large.name
    fold = runs[f"quickstart-{tag}-fold1"]
    assert {"mel_cnn", "synthetic"} <= set(fold[0])
    stats = json.loads((large / "fold_1" / "run_stats.json").read_text())
    logged = _summary(fold[2])
    for key in ("run/params", "run/train_time_s", "run/test_segments_per_s"):
        assert logged[key] == pytest.approx(stats[key]), key
    summary = runs[f"quickstart-{tag}-summary"]
    assert {"mel_cnn", "synthetic"} <= set(summary[0])
    logged = set(_summary(summary[2]))
    assert {"test/clip_acc_mean", "run/params_mean", "run/test_segments_per_s_mean"} <= logged

    # the second cross-validation logged to W&B: compare does too, by default, offline here
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "cmp"
    wandb.teardown()
    try:
        compare([str(small), str(large)], out=str(out), ensemble=True)
    finally:
        monkeypatch.undo()
        wandb.teardown()
    seen = _wandb_runs(out / "wandb")
    assert sorted(seen) == ["compare-synthetic-cmp", "ensemble-synthetic-cmp"]
    tags, job, records = seen["compare-synthetic-cmp"]
    assert job == "compare" and "synthetic" in tags
    logged = {
        item.nested_key[0]: json.loads(item.value_json)
        for r in records
        if r.HasField("history")
        for item in r.history.item
        if item.nested_key and item.nested_key[-1] == "_type"
    }
    assert logged == {"compare/table": "table-file", "compare/plot": "image-file"}
    tags, job, records = seen["ensemble-synthetic-cmp"]
    assert job == "cv-summary" and "ensemble" in tags
    assert {"test/clip_acc_mean", "run/params_mean"} <= set(_summary(records))
