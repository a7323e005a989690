"""Soft targets from the data: ``prob_<class>`` manifest columns -> ``Clip.soft`` -> batches."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from audio_cls.data import AudioDataModule
from audio_cls.data.augment import mixup
from audio_cls.data.sources import Clip, CSVManifest, Manifest, ManifestError
from tests.conftest import write_csv


def _tones(root: Path, write_tone, names, seconds: float = 0.02, sr: int = 8000) -> None:
    for i, name in enumerate(names):
        write_tone(root / name, sr=sr, seconds=seconds, freq=300.0 + 100 * i)


# ---- reading prob_ columns


def test_prob_columns_give_soft_clips_and_argmax_labels(tmp_path, write_tone):
    _tones(tmp_path, write_tone, ["a.wav", "b.wav", "c.wav"])
    write_csv(
        tmp_path / "manifest.csv",
        ["path", "fold", "prob_dog", "prob_cat", "prob_bird"],
        [
            ["a.wav", 1, 0.7, 0.2, 0.1],
            ["b.wav", 2, 0.1, 0.3, 0.6],
            ["c.wav", 3, "0.25", "0.5", "0.25"],
        ],
    )
    m = CSVManifest().manifest(tmp_path)
    assert m.class_names == ["dog", "cat", "bird"]  # column order, not sorted
    assert [c.soft for c in m.clips] == [(0.7, 0.2, 0.1), (0.1, 0.3, 0.6), (0.25, 0.5, 0.25)]
    assert [c.label for c in m.clips] == [0, 2, 1]
    assert [c.fold for c in m.clips] == [1, 2, 3]

    # `classes` fixes the label order; the vectors follow it
    m = CSVManifest(classes=["bird", "cat", "dog"]).manifest(tmp_path)
    assert m.class_names == ["bird", "cat", "dog"]
    assert m.clips[0].soft == (0.1, 0.2, 0.7) and m.clips[0].label == 2
    assert m.clips[1].soft == (0.6, 0.3, 0.1) and m.clips[1].label == 0


def test_ties_take_the_first_class_and_the_sum_has_a_tolerance(tmp_path, write_tone):
    _tones(tmp_path, write_tone, ["a.wav", "b.wav"])
    write_csv(
        tmp_path / "manifest.csv",
        ["path", "prob_x", "prob_y"],
        [["a.wav", 0.5, 0.5], ["b.wav", 0.2, 0.8004]],  # 1.0004: within 1e-3
    )
    m = CSVManifest().manifest(tmp_path)
    assert [c.label for c in m.clips] == [0, 1]
    assert m.clips[1].soft == (0.2, 0.8004)  # kept as written, not renormalised


def test_hard_and_soft_rows_mix(tmp_path, write_tone):
    names = [f"{i}.wav" for i in range(6)]
    _tones(tmp_path, write_tone, names)
    write_csv(
        tmp_path / "manifest.csv",
        ["path", "label", "prob_a", "prob_b"],
        [
            ["0.wav", "b", "", ""],  # hard label only
            ["1.wav", "", 0.9, 0.1],  # soft only: label = argmax
            ["2.wav", "a", 0.4, 0.6],  # both: the label is kept as given
            ["3.wav", "a", "", ""],
            ["4.wav", "", 0.3, 0.7],
            ["5.wav", "b", " ", " "],  # blank cells count as empty
        ],
    )
    m = CSVManifest(num_folds=3).manifest(tmp_path)
    assert m.class_names == ["a", "b"]
    got = [(c.clip_id, c.label, c.soft) for c in m.clips]
    assert got == [
        ("0.wav", 1, None),
        ("1.wav", 0, (0.9, 0.1)),
        ("2.wav", 0, (0.4, 0.6)),
        ("3.wav", 0, None),
        ("4.wav", 1, (0.3, 0.7)),
        ("5.wav", 1, None),
    ]
    assert all(1 <= c.fold <= 3 for c in m.clips)  # dealt, stratified on the labels above


def test_plain_csv_has_no_soft_targets(tmp_path, write_tone):
    _tones(tmp_path, write_tone, ["a.wav", "b.wav"])
    write_csv(tmp_path / "manifest.csv", ["path", "label"], [["a.wav", "x"], ["b.wav", "y"]])
    m = CSVManifest().manifest(tmp_path)
    assert m.class_names == ["x", "y"] and all(c.soft is None for c in m.clips)


@pytest.mark.parametrize(
    ("header", "row", "match"),
    [
        (["path", "prob_a", "prob_b"], ["x.wav", 0.5, ""], r"line 3: prob_b empty while other"),
        (
            ["path", "prob_a", "prob_b"],
            ["x.wav", 0.5, 0.4],
            r"line 3: the prob_ values sum to 0.9,",
        ),
        (
            ["path", "prob_a", "prob_b"],
            ["x.wav", -0.1, 1.1],
            r"line 3: prob_a '-0.1' is not a prob",
        ),
        (["path", "prob_a", "prob_b"], ["x.wav", "nan", 1], r"line 3: prob_a 'nan' is not a prob"),
        (["path", "prob_a", "prob_b"], ["x.wav", "inf", 0], r"line 3: prob_a 'inf' is not a prob"),
        (
            ["path", "prob_a", "prob_b"],
            ["x.wav", 0.5, "high"],
            r"line 3: prob_b 'high' is not a num",
        ),
        (["path", "prob_a", "prob_b"], ["x.wav", "", ""], r"line 3: no label and no prob_ values"),
        (
            ["path", "label", "prob_a", "prob_b"],
            ["x.wav", "c", "", ""],
            r"line 3: label 'c' is not one of the classes \['a', 'b'\]",
        ),
        (["path", "prob_a", "prob_a"], ["x.wav", 0.5, 0.5], r"line 1: .*prob_a appear more than"),
        (
            ["path", "prob_", "prob_b"],
            ["x.wav", 0.5, 0.5],
            r"line 1: column 'prob_' names no class",
        ),
        (["file", "prob_a", "prob_b"], ["x.wav", 0.5, 0.5], r"line 1: missing column\(s\) path \("),
    ],
)
def test_soft_manifest_errors(tmp_path, write_tone, header, row, match):
    _tones(tmp_path, write_tone, ["x.wav", "y.wav"])
    first = ["y.wav", "a", 0.5, 0.5] if "label" in header else ["y.wav", 0.5, 0.5]
    csv_path = write_csv(tmp_path / "manifest.csv", header, [first, row])
    with pytest.raises(ManifestError, match=match) as info:
        CSVManifest().manifest(tmp_path)
    assert str(csv_path) in str(info.value)


def test_prob_columns_must_match_classes(tmp_path, write_tone):
    _tones(tmp_path, write_tone, ["x.wav"])
    write_csv(tmp_path / "manifest.csv", ["path", "prob_a", "prob_c"], [["x.wav", 0.5, 0.5]])
    with pytest.raises(ManifestError) as info:
        CSVManifest(classes=["a", "b"]).manifest(tmp_path)
    assert "line 1: the prob_ columns must be exactly one per class of ['a', 'b']" in str(
        info.value
    )
    assert "missing prob_b; extra prob_c" in str(info.value)


def test_label_column_still_required_without_prob_columns(tmp_path, write_tone):
    _tones(tmp_path, write_tone, ["x.wav"])
    write_csv(tmp_path / "manifest.csv", ["path", "probability"], [["x.wav", 1.0]])
    with pytest.raises(ManifestError, match=r"line 1: missing column\(s\) label"):
        CSVManifest().manifest(tmp_path)


@pytest.mark.parametrize(
    ("soft", "match"),
    [
        ((0.5, 0.5), r"c0: soft target has 2 value\(s\) for 3 classes \(2 clip\(s\) affected\)"),
        ((1.2, -0.2, 0.0), r"c0: soft target value -0.2 for class 1 is not a finite prob"),
        ((float("nan"), 0.5, 0.5), r"c0: soft target value nan for class 0 is not a finite"),
        ((0.5, 0.2, 0.2), r"c0: soft target sums to 0.9, not 1 \(within 0.001\) \(2 clip"),
    ],
)
def test_manifest_checks_soft_vectors(soft, match):
    clips = [Clip(Path(f"{i}.wav"), 0, 1, f"c{i}", soft) for i in range(2)]
    clips.append(Clip(Path("ok.wav"), 2, 1, "ok", (0.0, 0.0, 1.0)))
    with pytest.raises(ManifestError, match=match):
        Manifest(clips, ["a", "b", "c"])
    assert Manifest(clips[2:], ["a", "b", "c"]).clips[0].soft == (0.0, 0.0, 1.0)


def test_predictions_csv_reads_back_as_a_soft_manifest(tmp_path, write_tone):
    from audio_cls.inference import ClipResults
    from audio_cls.reports import write_predictions

    names = ["quiet", "loud", "noisy"]
    paths = [tmp_path / "audio" / f"{i}.wav" for i in range(4)]
    for p in paths:
        write_tone(p, sr=8000, seconds=0.02)
    probs = torch.tensor(
        [[0.7, 0.2, 0.1], [0.05, 0.15, 0.8], [0.3, 0.4, 0.3], [1 / 3, 1 / 3, 1 / 3]]
    )
    results = ClipResults(
        clip_ids=["c0", "c1", "c2", "c3"],
        paths=[str(p) for p in paths],  # absolute, as the aggregation callback writes them
        probs=probs,
        targets=torch.tensor([2, 0, -1, 1]),  # deliberately not the argmax: `target` is not read
        segment_probs=probs,
        segment_clip_index=torch.arange(4),
        segment_starts=torch.zeros(4, dtype=torch.long),
        metrics={},
    )
    write_predictions(tmp_path / "predictions.csv", results, names)

    m = CSVManifest(file="predictions.csv", num_folds=3).manifest(tmp_path)
    assert m.class_names == names
    assert [c.clip_id for c in m.clips] == ["c0", "c1", "c2", "c3"]
    assert [c.path for c in m.clips] == paths
    assert [c.label for c in m.clips] == [0, 2, 1, 0]  # argmax of the probabilities
    for clip, row in zip(m.clips, probs.tolist()):
        assert clip.soft == pytest.approx(row, abs=1e-6)


# ---- batches


def _soft_root(root: Path, write_tone) -> tuple[Path, dict[str, list[float]]]:
    """Two soft and one hard clip per fold (1..3), 0.5 s each; the rows each clip should get."""
    vectors = {
        "s1": [0.6, 0.3, 0.1],
        "s2": [0.0, 0.25, 0.75],
        "s3": [0.2, 0.7, 0.1],
        "s4": [0.5, 0.0, 0.5],
        "s5": [0.1, 0.1, 0.8],
        "s6": [0.3, 0.3, 0.4],
    }
    rows, expected = [], {}
    for fold in (1, 2, 3):
        for k, (clip_id, vec) in enumerate(list(vectors.items())[2 * fold - 2 : 2 * fold]):
            rows.append([f"{clip_id}.wav", "", fold, clip_id, *vec])
            expected[clip_id] = vec
            write_tone(root / f"{clip_id}.wav", seconds=0.5, freq=300.0 + 200 * k)
        hard = f"h{fold}"
        label = ["a", "b", "c"][fold - 1]
        rows.append([f"{hard}.wav", label, fold, hard, "", "", ""])
        expected[hard] = [float(label == n) for n in "abc"]
        write_tone(root / f"{hard}.wav", seconds=0.5, freq=900.0)
    write_csv(
        root / "manifest.csv",
        ["path", "label", "fold", "clip_id", "prob_a", "prob_b", "prob_c"],
        rows,
    )
    return root, expected


def _dm(root: Path, **kw) -> AudioDataModule:
    kw = {"num_workers": 0, "clip_sec": 0.5, "batch_size": 3, **kw}
    return AudioDataModule(root=str(root), source=CSVManifest(num_folds=3), **kw)


def test_train_batch_carries_the_soft_vectors(tmp_path, write_tone):
    root, expected = _soft_root(tmp_path, write_tone)
    dm = _dm(root, train_folds=[1, 2], val_folds=[], test_folds=[3], batch_size=6)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))  # one window per clip: all six train clips
    clips = dm.segments("train").clips
    ids = [clips[i].clip_id for i in batch["clip_index"].tolist()]
    assert sorted(ids) == ["h1", "h2", "s1", "s2", "s3", "s4"]
    assert batch["soft"].dtype == torch.float32 and batch["soft"].shape == (6, 3)
    want = torch.tensor([expected[i] for i in ids], dtype=torch.float32)
    assert torch.equal(batch["soft"], want)  # one-hot rows for the hard clips
    assert torch.equal(batch["target"], want.argmax(1))

    dm.setup("test")  # evaluation batches carry it too
    test_batch = next(iter(dm.test_dataloader()))
    test_ids = [dm.segments("test").clips[i].clip_id for i in test_batch["clip_index"].tolist()]
    want = torch.tensor([expected[i] for i in test_ids], dtype=torch.float32)
    assert torch.equal(test_batch["soft"], want)


def test_no_soft_key_without_soft_clips(tmp_path, write_tone):
    rows = []
    for i in range(6):
        write_tone(tmp_path / f"{i}.wav", seconds=0.5)
        rows.append([f"{i}.wav", "ab"[i % 2], i % 3 + 1])
    write_csv(tmp_path / "manifest.csv", ["path", "label", "fold"], rows)
    dm = _dm(tmp_path, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"waveform", "target", "clip_index", "segment_index"}
    assert "soft" not in dm._dataset("val")[0]


def _recover_mix(wave: torch.Tensor, mixed: torch.Tensor) -> tuple[float, list[int]]:
    """Mixup's lambda and permutation, read off waveforms that are the rows of an identity."""
    lam = float(mixed.diagonal().min())  # lam where a row was mixed with another, else 1
    perm = []
    for i, row in enumerate(mixed):
        others = row.clone()
        others[i] = -1
        perm.append(int(others.argmax()) if others.max() > 0 else i)
    assert torch.allclose(mixed, lam * wave + (1 - lam) * wave[perm], atol=1e-6)
    return lam, perm


def test_mixup_mixes_soft_targets_like_the_waveforms():
    torch.manual_seed(3)
    soft = torch.tensor(
        [[0.6, 0.3, 0.1], [0.0, 0.25, 0.75], [0.2, 0.7, 0.1], [1.0, 0.0, 0.0], [0.3, 0.3, 0.4]]
    )
    wave = torch.eye(5)  # row i is the waveform of sample i: the mix shows lam and perm
    mixed_wave, mixed_soft = mixup(wave, soft, 3, alpha=0.4)
    lam, perm = _recover_mix(wave, mixed_wave)
    assert 0.5 <= lam < 1 and perm != list(range(5))
    assert torch.allclose(mixed_soft, lam * soft + (1 - lam) * soft[perm], atol=1e-6)
    assert torch.allclose(mixed_soft.sum(1), torch.ones(5), atol=1e-6)

    with pytest.raises(ValueError, match="soft targets have 3 classes, not 4"):
        mixup(wave, soft, 4, alpha=0.4)


def test_training_mixup_uses_the_batch_soft_targets(tmp_path, write_tone):
    root, expected = _soft_root(tmp_path, write_tone)
    dm = _dm(root, mixup_alpha=0.4)
    dm.trainer = SimpleNamespace(training=True)  # what the hook looks at
    soft = torch.tensor([expected[i] for i in ("s1", "s2", "h1", "s3")])
    wave = torch.eye(4)
    batch = {"waveform": wave, "target": soft.argmax(1), "soft": soft}
    torch.manual_seed(1)
    out = dm.on_after_batch_transfer(dict(batch), 0)
    lam, perm = _recover_mix(wave, out["waveform"])
    assert perm != list(range(4))
    # the clips' vectors are mixed, not one-hot rows of `target`
    assert torch.allclose(out["soft"], lam * soft + (1 - lam) * soft[perm], atol=1e-6)
    assert torch.allclose(out["soft"].sum(1), torch.ones(4), atol=1e-6)

    dm.trainer = SimpleNamespace(training=False)  # evaluation: untouched
    assert dm.on_after_batch_transfer(dict(batch), 0)["soft"] is soft


def test_fit_on_a_soft_label_manifest(tmp_path, write_tone):
    from audio_cls.models import MelCNN

    root, _ = _soft_root(tmp_path, write_tone)
    torch.manual_seed(0)
    dm = _dm(root, batch_size=3)
    model = MelCNN(num_classes=dm.num_classes, class_names=dm.class_names, channels=[4, 8, 8])
    seen: dict[str, object] = {}

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["soft"], seen["loss"] = batch.get("soft"), outputs["loss"].detach()

    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path / "run"),
        callbacks=[Spy()],
    )
    trainer.fit(model, datamodule=dm)
    assert isinstance(seen["soft"], torch.Tensor) and seen["soft"].shape == (3, 3)
    assert np.isfinite(float(seen["loss"]))
