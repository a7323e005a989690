"""Labels from scores (soft, hard, unsure), label manifests, ``audio-cls label`` and
``classify --labels`` with a text teacher."""

import csv
import math
from pathlib import Path

import pytest
import torch

from audio_cls import labelling
from audio_cls.cli import main
from audio_cls.commands import UsageError
from audio_cls.commands.label import label
from audio_cls.data.sources import CSVManifest
from audio_cls.labelling import (
    LabelRow,
    hard_labels,
    label_clips,
    soft_labels,
    split_by_confidence,
    unsure_path,
    write_label_manifest,
)
from tests.conftest import TINY_SYNTHETIC, save_tiny_checkpoint

CONFIG = Path(__file__).parents[1] / "configs" / "text_teacher_synthetic.yaml"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ the arithmetic
def test_soft_labels_at_temperatures():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    plain = soft_labels(scores)
    assert torch.allclose(plain, scores.softmax(-1))
    assert torch.allclose(soft_labels(scores + 5.0), plain), "shift-invariant"
    sharp, flat = soft_labels(scores, 0.1), soft_labels(scores, 10.0)
    assert sharp[0, 0] > 0.99 and sharp[0, 0] > plain[0, 0] > flat[0, 0]
    assert torch.allclose(flat[0], torch.full((3,), 1 / 3), atol=0.04)
    assert torch.allclose(soft_labels(scores, 2.0), (scores / 2).softmax(-1))
    assert torch.allclose(sharp[1], torch.full((3,), 1 / 3)), "a tie stays a tie"
    for t in (0.0, -1.0):
        with pytest.raises(ValueError, match="--temperature must be > 0"):
            soft_labels(scores, t)


def test_hard_labels_and_the_confidence_split():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.1, 0.3, 0.6]])
    index, confidence = hard_labels(probs)
    assert index.tolist() == [0, 0, 2], "ties go to the first class"
    assert torch.allclose(confidence, torch.tensor([0.7, 0.4, 0.6]))
    assert split_by_confidence(confidence, 0.6).tolist() == [True, False, True], "inclusive"
    assert split_by_confidence(confidence, 0.0).all()
    assert not split_by_confidence(confidence, 1.0).any()
    with pytest.raises(ValueError, match=r"--threshold must be in \[0, 1\]"):
        split_by_confidence(confidence, 1.5)


# ------------------------------------------------------------------------------ manifests
@pytest.fixture
def clips(tmp_path, write_tone):
    return [write_tone(tmp_path / "audio" / f"c{i}.wav", seconds=0.2) for i in range(3)]


def test_manifest_reads_back_as_soft_labels_with_unsure_apart(tmp_path, clips):
    probs = [[0.8, 0.15, 0.05], [0.4, 0.35, 0.25], [0.1, 0.2, 0.7]]
    rows = [
        LabelRow(clips[0], probs[0], "first", 1),
        LabelRow(clips[1], probs[1], "second", 2),
        LabelRow(clips[2], probs[2], "third", None),
    ]
    out = tmp_path / "labels.csv"
    written = write_label_manifest(out, rows, ["a", "b", "c"], threshold=0.5)
    assert (written.num_sure, written.num_unsure) == (2, 1)
    assert written.unsure == unsure_path(out) == tmp_path / "labels_unsure.csv"
    sure = _rows(out)
    columns = ["path", "label", "confidence", "fold", "clip_id", "prob_a", "prob_b", "prob_c"]
    assert list(sure[0]) == columns
    assert [r["label"] for r in sure] == ["a", "c"] and sure[0]["path"] == "audio/c0.wav"
    assert [r["clip_id"] for r in _rows(written.unsure)] == ["second"]

    manifest = CSVManifest("labels.csv", num_folds=3).manifest(tmp_path)
    assert manifest.class_names == ["a", "b", "c"]
    first, third = manifest.clips
    assert (first.clip_id, first.fold, first.label) == ("first", 1, 0)
    assert first.soft == pytest.approx(probs[0], abs=1e-6)
    assert third.label == 2 and third.soft == pytest.approx(probs[2], abs=1e-6)
    assert 1 <= third.fold <= 3, "an empty fold cell is dealt by the reader"


def test_hard_manifest_has_no_prob_columns(tmp_path, clips):
    rows = [LabelRow(p, [0.9, 0.1]) for p in clips]
    write_label_manifest(tmp_path / "hard.csv", rows, ["x", "y"], soft=False)
    header = list(_rows(tmp_path / "hard.csv")[0])
    assert header == ["path", "label", "confidence"]
    manifest = CSVManifest("hard.csv", classes=["x", "y"]).manifest(tmp_path)
    assert [c.soft for c in manifest.clips] == [None] * 3
    assert _rows(tmp_path / "hard_unsure.csv") == [], "written, empty, every row sure"


def test_no_rows_write_header_only_files(tmp_path):
    """Every clip unreadable: both files still written, so no stale ones linger."""
    written = write_label_manifest(tmp_path / "l.csv", [], ["x", "y"], threshold=0.5)
    assert (written.num_sure, written.num_unsure) == (0, 0)
    for path in (written.path, written.unsure):
        assert path.read_text().splitlines() == ["path,label,confidence,prob_x,prob_y"]


def test_paths_outside_the_manifest_folder_are_absolute(tmp_path, clips):
    out = tmp_path / "elsewhere" / "l.csv"
    write_label_manifest(out, [LabelRow(clips[0], [1.0, 0.0])], ["x", "y"])
    assert _rows(out)[0]["path"] == clips[0].resolve().as_posix()
    with pytest.raises(ValueError, match="2 probabilities but there are 3 class names"):
        write_label_manifest(out, [LabelRow(clips[0], [1.0, 0.0])], ["x", "y", "z"])


# ------------------------------------------------------------------------------ with a model
@pytest.fixture(scope="module")
def teacher_run(synthetic_root, tmp_path_factory):
    """A text teacher fitted for one epoch on the tiny synthetic set through the CLI."""
    pytest.importorskip("sentence_transformers")
    cwd = tmp_path_factory.mktemp("teacher_run")
    mp = pytest.MonkeyPatch()
    mp.chdir(cwd)
    options = {**TINY_SYNTHETIC}
    main(
        [
            "fit",
            "--config",
            str(CONFIG),
            f"--data.root={synthetic_root}",
            *[f"--data.source.init_args.{k}={v}" for k, v in options.items()],
            '--model.init_args.audio_options={"channels": [4, 8, 8]}',
            "--trainer.max_epochs=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.num_workers=0",
            "--data.batch_size=8",
            "--data.window_sec=0.5",
        ]
    )
    mp.undo()
    return cwd / "runs" / "text_teacher_synthetic"


def test_fit_caches_the_class_text_beside_the_run(teacher_run):
    assert (teacher_run / "checkpoints" / "best.ckpt").is_file()
    assert len(list(teacher_run.glob("text_embeddings_*.pt"))) == 1


def test_label_verb_keeps_folds_and_clip_ids(teacher_run, synthetic_root, tmp_path, capsys):
    ckpt = teacher_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "labels.csv"
    source = synthetic_root / "manifest.csv"
    main(["label", "--ckpt", str(ckpt), str(source), "--out", str(out), "--threshold", "0.4"])
    printed = capsys.readouterr().out
    assert "manifest:" in printed and "unsure:" in printed
    given = {r["clip_id"]: r["fold"] for r in _rows(source)}
    written = _rows(out) + _rows(unsure_path(out))
    assert len(written) == len(given)
    assert {r["clip_id"]: r["fold"] for r in written} == given
    assert all(float(r["confidence"]) >= 0.4 for r in _rows(out))
    assert all(float(r["confidence"]) < 0.4 for r in _rows(unsure_path(out)))
    for r in written:
        probs = [float(v) for k, v in r.items() if k.startswith("prob_")]
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-4)
        assert float(r["confidence"]) == pytest.approx(max(probs), abs=1e-6)
    # every clip, read back as the data module reads a soft-label manifest
    main(["label", "--ckpt", str(ckpt), str(source), "--out", str(out), "--threshold", "0"])
    manifest = CSVManifest("labels.csv", num_folds=3).manifest(tmp_path)
    assert {c.clip_id: str(c.fold) for c in manifest.clips} == given
    assert all(c.soft is not None for c in manifest.clips)
    assert _rows(unsure_path(out)) == []


def test_label_zero_shot_names_and_temperature(teacher_run, synthetic_root):
    ckpt = teacher_run / "checkpoints" / "best.ckpt"
    audio = [str(synthetic_root / "audio")]
    plain = label_clips(ckpt, audio, "door knock, footsteps, rain", limit=4)
    assert plain.class_names == ["door knock", "footsteps", "rain"]
    assert plain.probs.shape == (4, 3) and not plain.errors
    assert plain.folds == [None] * 4 and not any(plain.carried_ids), "a folder carries neither"
    sharp = label_clips(ckpt, audio, ["door knock", "footsteps", "rain"], 0.5, limit=4)
    assert (hard_labels(sharp.probs)[1] >= hard_labels(plain.probs)[1]).all()
    assert (hard_labels(sharp.probs)[0] == hard_labels(plain.probs)[0]).all()


def test_classify_by_free_text_labels(teacher_run, synthetic_root, tmp_path):
    ckpt = teacher_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "p.csv"
    labels = "door knock, footsteps, rain, siren"
    audio = str(synthetic_root / "audio")
    main(
        ["classify", audio, "--ckpt", str(ckpt), "--out", str(out), "--labels", labels, "--limit=3"]
    )
    rows = _rows(out)
    assert len(rows) == 3
    assert {k for k in rows[0] if k.startswith("prob_")} == {
        "prob_door knock",
        "prob_footsteps",
        "prob_rain",
        "prob_siren",
    }


def test_ordinary_classifier_labels_its_own_classes_only(synthetic_root, tmp_path):
    names = ["impact", "footsteps", "knock"]
    ckpt = save_tiny_checkpoint(tmp_path / "cnn.ckpt", names)
    audio = [str(synthetic_root / "audio")]
    own = label_clips(ckpt, audio, limit=2)
    assert own.class_names == names
    subset = label_clips(ckpt, audio, "knock, impact", limit=2)
    expected = own.probs[:, [2, 0]]
    assert torch.allclose(subset.probs, expected / expected.sum(1, keepdim=True), atol=1e-5)
    with pytest.raises(ValueError, match="only a text_teacher checkpoint labels"):
        label_clips(ckpt, audio, "rain, wind")
    with pytest.raises(UsageError, match="--labels needs a text_teacher checkpoint"):
        main(["classify", audio[0], "--ckpt", str(ckpt), "--labels", "rain, wind"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "1.5"], r"--threshold must be in \[0, 1\]"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--out", "labels.json"], "is a .csv file"),
        (["--classes", " "], "--classes is empty"),
        (["--classes", "a, b, a"], "--classes names a more than once"),
    ],
)
def test_label_option_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = save_tiny_checkpoint(tmp_path / "cnn.ckpt", ["a", "b"])
    with pytest.raises(UsageError, match=message):
        main(["label", "--ckpt", str(ckpt), str(tmp_path), *args])


def test_label_passes_precision_to_the_inference_core(synthetic_root, tmp_path, monkeypatch):
    seen = {}

    class Spy(labelling.Predictor):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(labelling, "Predictor", Spy)
    ckpt = save_tiny_checkpoint(tmp_path / "cnn.ckpt", ["impact", "footsteps", "knock"])
    audio = str(synthetic_root / "audio")
    out = tmp_path / "l.csv"
    main(["label", "--ckpt", str(ckpt), audio, "--out", str(out), "--limit=2", "--precision=32"])
    assert seen["precision"] == "32"
    assert len(_rows(out)) + len(_rows(unsure_path(out))) == 2
    # the command line refuses other values in its parser; a call from Python here
    with pytest.raises(UsageError, match="--precision must be one of auto, 32, bf16"):
        label([audio], str(ckpt), out=str(out), precision="16")


def test_data_module_clips_keep_their_fold_and_id(synthetic_root, tmp_path):
    """The path of the student's pseudo-labelling rounds: clips of a manifest, a model in memory."""
    from audio_cls.data.sources import Synthetic
    from audio_cls.inference import WindowSettings
    from audio_cls.models import load_classifier

    manifest = Synthetic(**TINY_SYNTHETIC).manifest(synthetic_root)
    model, _ = load_classifier(save_tiny_checkpoint(tmp_path / "m.ckpt", manifest.class_names))
    chosen = manifest.clips[:3]
    labelled = label_clips(model, chosen, windows=WindowSettings(16000, 0.5))
    assert labelled.clip_ids == [c.clip_id for c in chosen]
    assert labelled.folds == [c.fold for c in chosen] and all(labelled.carried_ids)
    rows = labelled.rows()
    assert [r.fold for r in rows] == [c.fold for c in chosen]
    assert all(math.isclose(sum(r.probs), 1.0, abs_tol=1e-5) for r in rows)
