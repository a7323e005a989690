"""End to end through the command line, on data the tests make (never ../shared)."""

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from audio_cls.cli import main
from audio_cls.commands import VERBS, UsageError
from audio_cls.commands.embed import read_embeddings
from audio_cls.models import get_model_entry
from tests.conftest import TINY_SYNTHETIC, make_esc50_tree

CONFIGS = sorted((Path(__file__).parents[1] / "lightning_configs").glob("*.yaml"))
TINY_SOURCE = [f"--data.source.init_args.{k}={v}" for k, v in TINY_SYNTHETIC.items()]
TINY_GROUPED_SOURCE = [
    f"--data.source.init_args.source.init_args.{k}={v}"
    for k, v in {**TINY_SYNTHETIC, "num_classes": 5}.items()
]
IMPACT_ESC50 = {0: "dog", 10: "rain", 25: "footsteps", 30: "door_wood_knock", 39: "glass_breaking"}
FAST = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.num_workers=0",
    "--data.batch_size=8",
]


def make_us8k_tree(root: Path) -> Path:
    rows = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    for fold in range(1, 11):
        for cid, name in enumerate(["dog_bark", "siren"]):
            fname = f"{100 + fold}-{cid}-0-0.wav"
            (root / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
            t = np.arange(12000) / 16000
            sf.write(
                root / "audio" / f"fold{fold}" / fname,
                (0.3 * np.sin(2 * np.pi * (300 + 500 * cid) * t)).astype(np.float32),
                16000,
            )
            rows.append(f"{fname},{100 + fold},0,0.75,1,{fold},{cid},{name}")
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / "UrbanSound8K.csv").write_text("\n".join(rows) + "\n")
    return root


def make_folder_tree(root: Path) -> Path:
    for name, freq in (("knock", 300), ("whistle", 2000)):
        for i in range(10):
            t = np.arange(16000) / 16000
            (root / name).mkdir(parents=True, exist_ok=True)
            sf.write(
                root / name / f"rec{i}_part0.wav",
                (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32),
                16000,
            )
    return root


def test_help_lists_every_verb(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert all(verb in out for verb in VERBS)


def test_configs_folder_is_reachable_as_configs():
    configs = Path(__file__).parents[1] / "configs"
    assert sorted(p.name for p in configs.glob("*.yaml")) == [p.name for p in CONFIGS]
    assert {
        "quickstart.yaml",
        "cnn_esc50.yaml",
        "cnn_esc10.yaml",
        "cnn_us8k.yaml",
        "cnn_folder.yaml",
    } <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path" in out and "clip_aggregation" in out


@pytest.fixture
def data_roots(tmp_path_factory, synthetic_root, esc50_root):
    return {
        "Synthetic": (synthetic_root, TINY_SOURCE),
        "ESC50": (esc50_root, []),
        "UrbanSound8K": (make_us8k_tree(tmp_path_factory.mktemp("us8k")), []),
        "ClassFolders": (make_folder_tree(tmp_path_factory.mktemp("folders")), []),
        # ClassGroups configs (impact_*): trees that hold the grouped classes and some others
        "ClassGroups/Synthetic": (tmp_path_factory.mktemp("synthetic5"), TINY_GROUPED_SOURCE),
        "ClassGroups/ESC50": (make_esc50_tree(tmp_path_factory.mktemp("esc50i"), IMPACT_ESC50), []),
    }


def tiny_model_options(config: Path) -> list[str]:
    """The registry's tiny sizes for the config's model: the config's wiring (data, callbacks,
    schedule) is what a one-batch run checks; full sizes are the model tests' concern."""
    class_path = yaml.safe_load(config.read_text())["model"]["class_path"]
    module, name = class_path.rsplit(".", 1)
    family = getattr(importlib.import_module(module), name)
    tiny = get_model_entry(family.registry_name).tiny
    return [f"--model.init_args.{k}={json.dumps(v)}" for k, v in tiny.items()]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_every_config(config, data_roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = config.read_text()
    source = next(name for name in data_roots if f"sources.{name}" in text)
    if "sources.ClassGroups" in text:
        source = f"ClassGroups/{source}"
    root, extra = data_roots[source]
    extra = [*extra, *tiny_model_options(config)]
    main(
        [
            "fit",
            "--config",
            str(config),
            f"--data.root={root}",
            "--trainer.fast_dev_run=true",
            "--trainer.precision=32-true",
            "--trainer.devices=1",
            *extra,
            *FAST,
        ]
    )
    assert list(tmp_path.iterdir()) == []  # a debugging pass writes nothing: no runs/, no ckpt


def test_run_without_logger_keeps_its_outputs_under_runs(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quickstart = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    no_logger = ["--trainer.max_epochs=1", "--trainer.logger=false", "--data.window_sec=0.5"]
    main(
        [
            "fit",
            "--config",
            quickstart,
            f"--data.root={synthetic_root}",
            *TINY_SOURCE,
            *FAST,
            *no_logger,
        ]
    )
    run = tmp_path / "runs" / "quickstart"
    assert (run / "metrics_test.json").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing else in the cwd


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_fit_test_predict_classify(synthetic_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quickstart = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    common = ["--config", quickstart, f"--data.root={synthetic_root}", *TINY_SOURCE, *FAST]
    main(["fit", *common, "--trainer.max_epochs=3", "--data.window_sec=0.5"])

    run = tmp_path / "runs" / "quickstart" / "latest"
    for name in (
        "config.yaml",
        "metrics_val.json",
        "metrics_test.json",
        "classification_report.csv",
        "confusion_matrix.png",
        "predictions.csv",
        "metrics.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).is_file(), name
    val = json.loads((run / "metrics_val.json").read_text())
    assert val["monitor"] == "val/clip_acc" and len(val["history"]) == 3
    test_metrics = json.loads((run / "metrics_test.json").read_text())
    assert {"test/acc", "test/macro_f1", "test/clip_acc", "test/clip_macro_f1"} <= set(test_metrics)
    predictions = _rows(run / "predictions.csv")
    assert (
        len(predictions) == TINY_SYNTHETIC["clips_per_class"] * TINY_SYNTHETIC["num_classes"] // 3
    )
    acc = np.mean([r["prediction"] == r["target"] for r in predictions])
    assert acc == pytest.approx(test_metrics["test/clip_acc"])
    losses = [
        float(r["train/loss_epoch"])
        for r in _rows(run / "metrics.csv")
        if r.get("train/loss_epoch")
    ]
    assert losses[-1] < losses[0]  # it learns

    ckpt = str(run / "checkpoints" / "best.ckpt")
    main(["test", *common, "--data.window_sec=0.5", f"--ckpt_path={ckpt}", "--tta.shifts=3"])
    main(["predict", *common, "--data.window_sec=0.5", f"--ckpt_path={ckpt}"])
    newest = max(
        (tmp_path / "runs" / "quickstart").glob("version_*"),
        key=lambda p: int(p.name.split("_")[1]),
    )
    assert (newest / "segments.csv").is_file() and (newest / "predictions.csv").is_file()

    audio = sorted((synthetic_root / "audio").rglob("*.wav"))[:4]
    main(
        [
            "classify",
            "--ckpt",
            ckpt,
            *map(str, audio),
            "--out",
            "p.json",
            "--timeline",
            "t.csv",
            "--top-k",
            "2",
        ]
    )
    result = json.loads(Path("p.json").read_text())
    assert len(result) == 4 and all(len(r["top_k"]) == 2 for r in result)
    assert all(abs(sum(p["prob"] for p in r["top_k"])) <= 1.0 + 1e-6 for r in result)
    timeline = _rows(Path("t.csv"))
    assert {r["clip_id"] for r in timeline} == {p.stem for p in audio}
    assert float(timeline[1]["start_sec"]) == pytest.approx(0.25)  # hop = half the 0.5 s window
    assert "windows/s" in capsys.readouterr().out


def test_cross_validation(synthetic_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quickstart = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    main(
        [
            "cv",
            "--config",
            quickstart,
            f"--data.root={synthetic_root}",
            *TINY_SOURCE,
            *FAST,
            "--trainer.max_epochs=1",
            "--cv.boost=true",  # and LightGBM on each fold's embeddings of its own model
            "--boost.n_estimators=20",
            "--boost.min_data_in_leaf=2",
        ]
    )
    summary_path = next((tmp_path / "runs" / "quickstart").glob("cv_*/cv_summary.json"))
    summary = json.loads(summary_path.read_text())
    assert [f["fold"] for f in summary["folds"]] == [1, 2, 3]
    assert [f["test"] for f in summary["folds"]] == [[1], [2], [3]]
    for fold in summary["folds"]:
        assert not set(fold["train"]) & set(fold["val"] + fold["test"])
    clip = [f["test/clip_acc"] for f in summary["folds"]]
    assert summary["summary"]["test/clip_acc"]["mean"] == pytest.approx(np.mean(clip))
    assert summary["summary"]["test/clip_acc"]["std"] == pytest.approx(np.std(clip, ddof=1))
    assert "mean" in capsys.readouterr().out
    for fold in summary["folds"]:  # each fold's LightGBM: its own embeddings, its own folds
        assert 0.0 <= fold["boost/test/clip_acc"] <= 1.0
        run = summary_path.parent / f"fold_{fold['fold']}"
        embedded = read_embeddings(run / "embeddings.parquet")
        assert sorted(set(embedded.fold.tolist())) == [1, 2, 3]
        boosted = json.loads((run / "boost" / "metrics_test.json").read_text())
        assert boosted["test/clip_acc"] == pytest.approx(fold["boost/test/clip_acc"])
    boost_clip = [f["boost/test/clip_acc"] for f in summary["folds"]]
    assert summary["summary"]["boost/test/clip_acc"]["mean"] == pytest.approx(np.mean(boost_clip))


def test_missing_dataset_says_how_to_point_at_a_copy(tmp_path, monkeypatch):
    from audio_cls.data.sources import ESC50, ManifestError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ESC50, "URL", (tmp_path / "no-such-archive.zip").as_uri())
    config = str(Path(__file__).parents[1] / "configs" / "mamba_esc50.yaml")
    with pytest.raises(
        ManifestError, match=r"could not download ESC-50.*--data\.root /path/to/ESC-50-master"
    ):
        main(["fit", "--config", config])


def test_bf16_falls_back_where_the_device_lacks_it(monkeypatch):
    import torch

    from audio_cls.commands.lightning import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("bf16-mixed", "auto") == "32-true"
    assert resolve_precision("16-mixed", "auto") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("bf16-mixed", "gpu") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("bf16-mixed", "gpu") == "bf16-mixed"


def test_cross_validation_without_validation_folds(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quickstart = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    from audio_cls.commands.cv import main as run_cv

    result = run_cv(
        [
            "--config",
            quickstart,
            f"--data.root={synthetic_root}",
            *TINY_SOURCE,
            *FAST,
            "--trainer.max_epochs=1",
            "--cv.val",
            "none",
            "--cv.folds",
            "1",
            "2",
        ]
    )
    assert [(f["train"], f["val"], f["test"]) for f in result["folds"]] == [
        ([2], [], [1]),
        ([1], [], [2]),
    ]
    assert all(f["test/clip_acc"] is not None for f in result["folds"])


def test_cross_validation_of_one_named_fold_keeps_its_plan(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quickstart = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    from audio_cls.commands.cv import main as run_cv

    args = ["--config", quickstart, f"--data.root={synthetic_root}", *TINY_SOURCE, *FAST]
    with pytest.raises(UsageError, match=r"--cv.test_folds \[4\]: not among .*\[1, 2, 3\]"):
        run_cv([*args, "--cv.test_folds", "4"])
    result = run_cv([*args, "--trainer.max_epochs=1", "--cv.test_folds", "2"])
    # the plan the whole cross-validation gives fold 2: fold 3 validates, fold 1 trains
    assert [(f["train"], f["val"], f["test"]) for f in result["folds"]] == [([1], [3], [2])]
    summary = json.loads(next(tmp_path.rglob("cv_summary.json")).read_text())
    assert [f["fold"] for f in summary["folds"]] == [2]


def test_boosting_an_untrained_model_without_weights_says_where_they_come_from(tmp_path):
    config = str(Path(__file__).parents[1] / "configs" / "yamnet_lgbm_us8k.yaml")
    root = make_us8k_tree(tmp_path / "us8k")
    with pytest.raises(
        UsageError,
        match=r"set --model\.init_args\.pretrained; published: "
        r"yamnet_audioset \(https://storage\.googleapis\.com/audioset/yamnet\.h5\)",
    ):
        main(["cv", "--config", config, f"--data.root={root}", "--cv.boost=true"])
