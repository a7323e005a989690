"""``audio-cls boost``: LightGBM (+ MLP) on embeddings files, on synthetic embeddings."""

from __future__ import annotations

import csv
import inspect
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from audio_cls.boost import BoostOptions, default_folds, run_boost
from audio_cls.cli import main
from audio_cls.commands.boost import boost

lgb = pytest.importorskip("lightgbm")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pc = pytest.importorskip("pyarrow.compute")

CLASSES = ["dog", "siren", "drill"]
DIM = 8
FAST = {"n_estimators": 40, "num_threads": 1, "min_data_in_leaf": 5}
FAST_ARGS = ["--n_estimators", "40", "--num_threads", "1", "--min_data_in_leaf", "5"]
TEST_KEYS = {
    "test/acc",
    "test/loss",
    "test/macro_f1",
    "test/precision",
    "test/recall",
    "test/clip_acc",
    "test/clip_macro_f1",
}


def write_embeddings(
    path: Path,
    folds: range | list[int] = range(1, 6),
    clips_per_class: int = 4,
    separation: float = 3.0,
    noise: float = 1.0,
    labelled: bool = True,
    metadata: bool = True,
    seed: int = 0,
) -> Path:
    """An embeddings file as `audio-cls embed` writes it: per clip 2-5 window rows around a
    class centre (``separation`` apart, Gaussian ``noise``), then its mean, std and max rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), DIM)) * separation
    columns: dict[str, list] = {
        k: [] for k in ("clip_id", "path", "fold", "label", "target", "level", "start_sec")
    }
    columns["end_sec"], vectors = [], []

    def add(clip, fold, c, level, start, vector):
        columns["clip_id"].append(clip)
        columns["path"].append(f"/audio/{clip}.wav")
        columns["fold"].append(fold)
        columns["label"].append(CLASSES[c] if labelled else "")
        columns["target"].append(c if labelled else -1)
        columns["level"].append(level)
        columns["start_sec"].append(start)
        columns["end_sec"].append(start + 0.96 if level == "window" else start)
        vectors.append(vector)

    for fold in folds:
        for c in range(len(CLASSES)):
            for k in range(clips_per_class):
                clip = f"f{fold}-{CLASSES[c]}-{k}"
                centre = centres[c] + rng.normal(size=DIM) * 0.3 * noise
                windows = centre + rng.normal(size=(rng.integers(2, 6), DIM)) * noise
                for w, vector in enumerate(windows):
                    add(clip, fold, c, "window", 0.48 * w, vector)
                for level, stat in (("mean", np.mean), ("std", np.std), ("max", np.max)):
                    add(clip, fold, c, level, 0.0, stat(windows, axis=0))
    data = {
        "clip_id": pa.array(columns["clip_id"], pa.string()),
        "path": pa.array(columns["path"], pa.string()),
        "fold": pa.array(columns["fold"], pa.int64()),
        "label": pa.array(columns["label"], pa.string()),
        "target": pa.array(columns["target"], pa.int64()),
        "level": pa.array(columns["level"], pa.string()),
        "start_sec": pa.array(columns["start_sec"], pa.float64()),
        "end_sec": pa.array(columns["end_sec"], pa.float64()),
    }
    matrix = np.asarray(vectors, dtype=np.float32)
    data.update({f"emb_{i}": pa.array(matrix[:, i], pa.float32()) for i in range(DIM)})
    table = pa.table(data)
    if metadata:
        meta = {
            "class_names": CLASSES,
            "tap": "pre_logits",
            "model": "mel_cnn",
            "sample_rate": 16000,
            "window_sec": 0.96,
            "hop_sec": 0.48,
            "checkpoint": "m.ckpt",
        }
        table = table.replace_schema_metadata({"audio_cls": json.dumps(meta)})
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> Path:
    return write_embeddings(tmp_path_factory.mktemp("emb") / "emb.parquet")


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def _test_windows(path: Path, folds: list[int]) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(path).to_pydict()
    keep = [
        i
        for i, (level, fold) in enumerate(zip(table["level"], table["fold"], strict=True))
        if level == "window" and fold in folds
    ]
    x = np.array([[table[f"emb_{d}"][i] for d in range(DIM)] for i in keep], dtype=np.float32)
    return [table["clip_id"][i] for i in keep], x


def test_end_to_end_from_a_yaml(embeddings, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "boost.yaml"
    config.write_text(
        yaml.safe_dump({"embeddings": str(embeddings), "out": str(out), **FAST, "seed": 1})
    )
    main(["boost", "--config", str(config)])
    printed = capsys.readouterr().out
    assert "clip acc" in printed and str(out) in printed

    metrics = json.loads((out / "metrics_test.json").read_text())
    assert set(metrics) == TEST_KEYS
    assert metrics["test/clip_acc"] > 0.8  # chance: 1/3
    assert metrics["test/acc"] > 0.6
    info = json.loads((out / "boost.json").read_text())
    # folds 1-5 and no fold lists: the ESC-50 convention
    assert info["folds"] == {"train": [1, 2, 3], "val": [4], "test": [5]}
    assert info["class_names"] == CLASSES and info["embeddings"]["model"] == "mel_cnn"
    val = json.loads((out / "metrics_val.json").read_text())
    assert val["best"]["iteration"] == info["lightgbm/best_iteration"]
    assert {"val/clip_acc", "val/loss"} <= set(val["best"])

    predictions = _rows(out / "predictions.csv")
    assert len(predictions) == 3 * 4  # test fold 5: 4 clips per class
    assert all(r["clip_id"].startswith("f5-") for r in predictions)
    for r in predictions:
        assert r["target"] == r["clip_id"].split("-")[1]
        assert sum(float(r[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-4)
    report = {r["class"]: r for r in _rows(out / "classification_report.csv")}
    assert set(CLASSES) <= set(report) and int(report["dog"]["support"]) == 4
    assert float(report["accuracy"]["f1"]) == pytest.approx(metrics["test/clip_acc"], abs=1e-4)
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    importance = _rows(out / "feature_importance.csv")
    assert len(importance) == DIM
    assert {r["feature"] for r in importance} == {f"emb_{i}" for i in range(DIM)}
    assert sum(float(r["gain"]) for r in importance) > 0 and all(
        int(r["split"]) >= 0 for r in importance
    )
    booster = lgb.Booster(model_file=str(out / "lightgbm.txt"))
    assert booster.num_trees() == info["lightgbm/best_iteration"] * len(CLASSES)

    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["boost", "--config", str(config), "--num_leaves", "7", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["num_leaves"] == 7 and printed["learning_rate"] == 0.1


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_clip_scores_aggregate_the_saved_models_window_probabilities(
    embeddings, tmp_path, aggregation
):
    out = tmp_path / aggregation
    run_boost(embeddings, out, [1, 2], [3], [4, 5], aggregation=aggregation, **FAST)
    clip_ids, x = _test_windows(embeddings, [4, 5])
    probs = lgb.Booster(model_file=str(out / "lightgbm.txt")).predict(x)
    predictions = _rows(out / "predictions.csv")
    assert [r["clip_id"] for r in predictions] == list(dict.fromkeys(clip_ids))
    for r in predictions:
        mine = probs[[c == r["clip_id"] for c in clip_ids]]
        top = mine.max(0)
        expected = mine.mean(0) if aggregation == "mean" else top / top.sum()
        got = [float(r[f"prob_{c}"]) for c in CLASSES]
        np.testing.assert_allclose(got, expected, atol=2e-6)
        assert r["prediction"] == CLASSES[int(expected.argmax())]


def test_fold_rules(embeddings, tmp_path):
    with pytest.raises(ValueError, match=r"fold\(s\) 2 are in both --train_folds and --val_folds"):
        main(
            [
                *("boost", "--embeddings", str(embeddings), "--out", str(tmp_path)),
                *("--train_folds", "[1, 2]", "--val_folds", "[2]", "--test_folds", "[5]"),
            ]
        )
    assert not (tmp_path / "metrics_test.json").exists()
    with pytest.raises(ValueError, match="in both --val_folds and --test_folds"):
        default_folds([1, 2, 3], [1], [2, 3], [3])
    with pytest.raises(ValueError, match=r"together .*missing: --val_folds"):
        default_folds([1, 2, 3], [1], None, [3])
    with pytest.raises(ValueError, match=r"--test_folds: x has no rows in fold\(s\) 9"):
        default_folds([1, 2, 3], [1], [2], [9], "x")
    with pytest.raises(ValueError, match="folds 1-7: give --train_folds"):
        default_folds(list(range(1, 8)), None, None, None)
    assert default_folds(list(range(1, 11)), None, None, None) == (list(range(1, 9)), [9], [10])
    assert default_folds([1, 2, 3], [2, 1], [], [3]) == ([1, 2], [], [3])


def test_early_stopping_stops_before_the_last_round(tmp_path):
    noisy = write_embeddings(tmp_path / "noisy.parquet", separation=0.6, noise=1.5, seed=3)
    options = {**FAST, "n_estimators": 400, "learning_rate": 0.3, "early_stopping_rounds": 5}
    metrics = run_boost(noisy, tmp_path / "run", [1, 2, 3], [4], [5], **options)
    best = metrics["lightgbm/best_iteration"]
    assert 1 <= best < 400
    history = json.loads((tmp_path / "run" / "metrics_val.json").read_text())["history"]
    assert len(history) == best + 5  # stopped 5 rounds after the best one
    losses = [h["val/logloss"] for h in history]
    assert min(losses) == losses[best - 1]
    # without validation folds every round is kept
    metrics = run_boost(
        noisy, tmp_path / "all", [1, 2, 3], [], [5], **{**options, "n_estimators": 30}
    )
    assert metrics["lightgbm/best_iteration"] == 30 and "val/clip_acc" not in metrics


def test_same_seed_same_predictions(embeddings, tmp_path):
    options = {**FAST, "bagging_fraction": 0.6, "feature_fraction": 0.5, "seed": 7}
    for run in ("a", "b"):
        run_boost(embeddings, tmp_path / run, **options)
    a, b = ((tmp_path / r / "predictions.csv").read_text() for r in ("a", "b"))
    assert a == b
    assert (tmp_path / "a" / "lightgbm.txt").read_text().split("parameters:")[0] == (
        tmp_path / "b" / "lightgbm.txt"
    ).read_text().split("parameters:")[0]


def test_ensemble_reports_both_members(embeddings, tmp_path):
    options = {**FAST, "ensemble": True, "mlp_epochs": 30, "mlp_patience": 5}
    metrics = run_boost(embeddings, tmp_path / "e", **options)
    for member in ("", "lightgbm/", "mlp/"):
        for stage in ("test", "val"):
            assert {f"{stage}/{member}acc", f"{stage}/{member}clip_macro_f1"} <= set(metrics)
    written = json.loads((tmp_path / "e" / "metrics_test.json").read_text())
    assert {"test/mlp/clip_acc", "test/lightgbm/clip_acc", "test/clip_acc"} <= set(written)
    assert metrics["test/mlp/clip_acc"] > 0.8 and 1 <= metrics["mlp/best_epoch"] <= 30
    assert (tmp_path / "e" / "mlp.pt").exists()
    # the weight really mixes: all of it on the MLP gives the MLP's numbers
    only_mlp = run_boost(embeddings, tmp_path / "m", **{**options, "mlp_weight": 1.0})
    assert only_mlp["test/loss"] == pytest.approx(only_mlp["test/mlp/loss"], abs=1e-6)
    assert only_mlp["test/loss"] != pytest.approx(only_mlp["test/lightgbm/loss"], abs=1e-6)


def test_clip_stats_features(embeddings, tmp_path):
    metrics = run_boost(embeddings, tmp_path, features="clip_stats", **FAST)
    assert "test/clip_acc" in metrics and "test/acc" not in metrics
    assert metrics["test/clip_acc"] > 0.8
    names = [r["feature"] for r in _rows(tmp_path / "feature_importance.csv")]
    assert len(names) == 3 * DIM and "max_emb_0" in names and "std_emb_7" in names


def test_unlabelled_training_folds_fail_in_one_line(tmp_path):
    path = write_embeddings(tmp_path / "u.parquet", labelled=False)
    with pytest.raises(ValueError) as err:
        main(["boost", "--embeddings", str(path), "--out", str(tmp_path / "o"), *FAST_ARGS])
    message = str(err.value)
    assert "\n" not in message
    assert "train folds 1-3" in message and "no labelled rows" in message


def test_files_that_are_not_embeddings_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        run_boost(tmp_path / "none.parquet", tmp_path)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        run_boost(tmp_path / "bad.parquet", tmp_path)
    bare = write_embeddings(tmp_path / "bare.parquet", metadata=False, folds=[1, 2, 3])
    with pytest.raises(ValueError, match="no class names"):
        run_boost(bare, tmp_path)
    table = pq.read_table(bare)
    windows_only = tmp_path / "windows.parquet"
    meta = {"audio_cls": json.dumps({"class_names": CLASSES})}
    pq.write_table(
        table.filter(pc.equal(table["level"], "window")).replace_schema_metadata(meta),
        windows_only,
    )
    with pytest.raises(ValueError, match="the train folds 1 have no mean rows"):
        run_boost(windows_only, tmp_path, [1], [2], [3], features="clip")
    with pytest.raises(ValueError, match="--num_leaves must be >= 2, got 1"):
        run_boost(bare, tmp_path, num_leaves=1)
    with pytest.raises(ValueError, match="unknown boost option"):
        run_boost(bare, tmp_path, leaves=3)


def test_the_verb_takes_exactly_the_options():
    verb = inspect.signature(boost).parameters
    options = {f.name: f.default for f in fields(BoostOptions)}
    own = ["embeddings", "out", "train_folds", "val_folds", "test_folds"]
    assert list(verb) == own + list(options)
    assert {name: verb[name].default for name in options} == options
