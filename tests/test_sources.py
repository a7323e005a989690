"""Clip sources: dataset layouts -> manifests, downloads from local archives, synthetic data."""

from __future__ import annotations

import hashlib
import logging
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from audio_cls.data.sources import (
    ESC50,
    SYNTHETIC_CLASSES,
    ClassFolders,
    ClipSource,
    CSVManifest,
    ManifestError,
    Synthetic,
    UrbanSound8K,
)
from tests.conftest import write_csv

# ---- ESC-50

# ESC-10's targets have gaps: the source must renumber them 0..9
ESC10 = {
    0: "dog", 1: "rooster", 10: "rain", 11: "sea_waves", 12: "crackling_fire",
    20: "crying_baby", 21: "sneezing", 38: "clock_tick", 40: "helicopter", 41: "chainsaw",
}  # fmt: skip
ESC_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


def _esc_tree(root: Path, write_tone, extra: bool = True) -> Path:
    """Two clips per ESC-10 class (folds 1..5), plus a non-ESC-10 class when ``extra``."""
    rows = []
    classes = {**ESC10, 5: "cat"} if extra else ESC10
    for target, name in classes.items():
        for k in range(2):
            fold = (target + k) % 5 + 1
            fname = f"{fold}-{target}{k}00-A-{target}.wav"
            rows.append([fname, fold, target, name, target in ESC10, f"{target}{k}00", "A"])
            write_tone(root / "audio" / fname, sr=8000, seconds=0.05)
    write_csv(root / "meta" / "esc50.csv", ESC_HEADER, rows)
    return root


def test_esc10_non_contiguous_targets(tmp_path, write_tone):
    root = _esc_tree(tmp_path, write_tone)
    m = ESC50(subset="esc10").manifest(root)
    assert m.class_names == [ESC10[t] for t in sorted(ESC10)]
    assert len(m.clips) == 20 and {c.label for c in m.clips} == set(range(10))
    by_id = {c.clip_id: c for c in m.clips}
    clip = by_id["4-38000-A-38"]
    assert m.class_names[clip.label] == "clock_tick" and clip.fold == 4
    assert clip.path == root / "audio" / "4-38000-A-38.wav"
    assert m.folds == [1, 2, 3, 4, 5]

    full = ESC50().manifest(root)
    assert len(full.class_names) == 11 and full.class_names[2] == "cat"  # target 5
    assert ESC50.default_folds == ((1, 2, 3), (4,), (5,))


def test_esc10_only_csv_keeps_all_rows(tmp_path, write_tone):
    root = _esc_tree(tmp_path, write_tone, extra=False)
    assert len(ESC50(subset="esc10").manifest(root).clips) == 20


def test_esc50_missing_audio(tmp_path, write_tone):
    root = _esc_tree(tmp_path, write_tone)
    for p in sorted((root / "audio").iterdir())[:7]:
        p.unlink()
    with pytest.raises(ManifestError) as info:
        ESC50().manifest(root)
    msg = str(info.value)
    assert str(root / "meta" / "esc50.csv") in msg and "7 audio file(s)" in msg
    assert "... and 2 more" in msg


def test_esc50_download_from_archive(tmp_path, write_tone, monkeypatch):
    src = _esc_tree(tmp_path / "src", write_tone)
    archive = tmp_path / "master.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(src.rglob("*")):
            z.write(p, "ESC-50-master/" + p.relative_to(src).as_posix())
    monkeypatch.setattr(ESC50, "URL", archive.as_uri())
    root = tmp_path / "data" / "esc50"
    ESC50().prepare(root)
    assert sorted(p.name for p in root.iterdir()) == ["audio", "meta"]  # no leftovers
    assert len(ESC50().manifest(root).clips) == 22
    ESC50(download=False).prepare(root)  # present: nothing to do


def test_esc50_failed_download_says_what_to_do(tmp_path, monkeypatch):
    url = (tmp_path / "nowhere" / "master.zip").as_uri()
    monkeypatch.setattr(ESC50, "URL", url)
    with pytest.raises(ManifestError) as info:
        ESC50().prepare(tmp_path / "root")
    msg = str(info.value)
    assert msg.startswith(f"could not download ESC-50 from {url} (")
    assert "--data.root /path/to/ESC-50-master" in msg and "meta/esc50.csv" in msg
    assert list((tmp_path / "root").iterdir()) == []  # temporary files cleaned up

    with pytest.raises(ManifestError, match=r"download is off.*--data\.root"):
        ESC50(download=False).prepare(tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_esc50_bad_subset():
    with pytest.raises(ValueError, match="subset"):
        ESC50(subset="esc20")  # type: ignore[arg-type]


# ---- UrbanSound8K

US_CLASSES = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling"]
US_HEADER = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]


def _us8k_tree(root: Path, write_tone) -> Path:
    rows = []
    for fold in range(1, 11):
        for cid in (4, 1, 3, 0, 2):  # not sorted on purpose
            name = f"{1000 + cid}-{fold}-0-{cid}.wav"
            rows.append([name, 1000 + cid, 0.0, 0.5, 1, fold, cid, US_CLASSES[cid]])
            write_tone(root / "audio" / f"fold{fold}" / name, sr=8000, seconds=0.05)
    write_csv(root / "metadata" / "UrbanSound8K.csv", US_HEADER, rows)
    return root


def test_urbansound8k(tmp_path, write_tone):
    root = _us8k_tree(tmp_path, write_tone)
    m = UrbanSound8K().manifest(root)
    assert m.class_names == US_CLASSES
    assert len(m.clips) == 50 and m.folds == list(range(1, 11))
    clip = next(c for c in m.clips if c.clip_id == "1003-7-0-3")
    assert (clip.label, clip.fold) == (3, 7)
    assert clip.path == root / "audio" / "fold7" / "1003-7-0-3.wav"
    assert UrbanSound8K.default_folds == (tuple(range(1, 9)), (9,), (10,))

    (root / "audio" / "fold9" / "1002-9-0-2.wav").unlink()
    with pytest.raises(ManifestError, match=r"UrbanSound8K\.csv: 1 audio file"):
        UrbanSound8K().manifest(root)


def test_urbansound8k_download_tar(tmp_path, write_tone, monkeypatch):
    src = _us8k_tree(tmp_path / "src", write_tone)
    archive = tmp_path / "UrbanSound8K.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(src, arcname="UrbanSound8K")
    monkeypatch.setattr(UrbanSound8K, "URL", archive.as_uri())
    root = tmp_path / "us8k"
    UrbanSound8K().prepare(root)
    assert len(UrbanSound8K().manifest(root).clips) == 50
    assert sorted(p.name for p in root.iterdir()) == ["audio", "metadata"]


# ---- class folders


def _folder_tree(root: Path, write_tone, recordings: int = 6, cuts: int = 3) -> Path:
    for cls in ("dog", "cat"):
        for r in range(recordings):
            for k in range(cuts):
                write_tone(root / cls / f"rec{cls}{r}-{k}.wav", sr=8000, seconds=0.02)
    return root


def test_class_folders_groups_stay_together(tmp_path, write_tone):
    root = _folder_tree(tmp_path, write_tone)
    write_tone(root / "cat" / "sub" / "deep-0.flac", sr=8000, seconds=0.02)
    (root / "cat" / "readme.txt").write_text("not audio")
    src = ClassFolders(num_folds=3, group_pattern=r"^(rec\w+)-\d+$")
    m = src.manifest(root)
    assert m.class_names == ["cat", "dog"]
    assert len(m.clips) == 37 and "cat/sub/deep-0.flac" in {c.clip_id for c in m.clips}
    folds_of: dict[str, set[int]] = {}
    for c in m.clips:
        folds_of.setdefault(c.path.stem.split("-")[0], set()).add(c.fold)
    assert all(len(f) == 1 for f in folds_of.values())  # a recording never straddles folds
    per_class = Counter((c.label, c.fold) for c in m.clips if c.path.parent.name != "sub")
    assert set(per_class.values()) == {6}  # 2 recordings x 3 cuts per class and fold
    assert src.default_folds == ((1,), (2,), (3,))

    again = ClassFolders(num_folds=3, group_pattern=r"^(rec\w+)-\d+$").manifest(root)
    assert [(c.clip_id, c.fold) for c in again.clips] == [(c.clip_id, c.fold) for c in m.clips]


def test_class_folders_without_groups_balanced(tmp_path, write_tone):
    root = _folder_tree(tmp_path, write_tone, recordings=10, cuts=1)
    (root / "empty_class").mkdir()
    m = ClassFolders(num_folds=5, extensions=["WAV"]).manifest(root)
    assert m.class_names == ["cat", "dog"]  # the empty folder is skipped
    assert set(Counter((c.label, c.fold) for c in m.clips).values()) == {2}
    assert ClassFolders(num_folds=5).default_folds == ((1, 2, 3), (4,), (5,))


def test_class_folders_errors(tmp_path):
    with pytest.raises(ManifestError, match="no class folders"):
        ClassFolders().manifest(tmp_path)
    with pytest.raises(ValueError, match="num_folds"):
        ClassFolders(num_folds=2)
    with pytest.raises(ValueError, match="group_pattern"):
        ClassFolders(group_pattern="(unclosed")


# ---- CSV manifest


def test_csv_manifest(tmp_path, write_tone):
    for name in ("a", "b", "c", "d"):
        write_tone(tmp_path / "clips" / f"{name}.wav", sr=8000, seconds=0.02)
    write_csv(
        tmp_path / "list.csv",
        ["path", "label", "fold"],
        [
            ["clips/a.wav", "dog", 2],
            ["clips/b.wav", "cat", ""],  # no fold: one is dealt
            ["clips/c.wav", "cat", 5],
            [str(tmp_path / "clips" / "d.wav"), "bird", 1],  # absolute path
        ],
    )
    m = CSVManifest(file="list.csv").manifest(tmp_path)
    assert m.class_names == ["bird", "cat", "dog"]
    labels = [(c.label, c.clip_id) for c in m.clips][:3]
    assert labels == [(2, "clips/a.wav"), (1, "clips/b.wav"), (1, "clips/c.wav")]
    assert [m.clips[i].fold for i in (0, 2, 3)] == [2, 5, 1]
    assert 1 <= m.clips[1].fold <= 5
    assert m.clips[0].path == tmp_path / "clips" / "a.wav"

    ordered = CSVManifest(file="list.csv", classes=["dog", "cat", "bird"]).manifest(tmp_path)
    assert ordered.class_names == ["dog", "cat", "bird"] and ordered.clips[0].label == 0


@pytest.mark.parametrize(
    ("header", "row", "match"),
    [
        (["file", "label"], ["x.wav", "dog"], r"line 1: missing column\(s\) path"),
        (["path", "label"], ["x.wav", ""], "line 3: empty label"),
        (["path", "label"], ["nope.wav", "dog"], r"(?s)1 audio file\(s\).*nope.wav.*line 3"),
        (["path", "label", "fold"], ["x.wav", "dog", "0"], "line 3: bad fold '0'"),
        (["path", "label", "fold"], ["x.wav", "dog", "two"], "line 3: bad fold 'two'"),
        (["path", "label", "fold"], ["x.wav", "dog", "6"], "line 3: bad fold '6'"),
        (["path", "label"], ["x.wav", "dog"], "line 3: clip id 'x.wav' already used on line 2"),
    ],
)
def test_csv_manifest_errors(tmp_path, write_tone, header, row, match):
    write_tone(tmp_path / "x.wav", sr=8000, seconds=0.02)
    first = ["x.wav", "dog", "1"][: len(header)] if header[0] == "path" else ["x.wav", "dog"]
    if row[0] == "x.wav" and header[0] == "path" and "clip id" not in match:
        write_tone(tmp_path / "y.wav", sr=8000, seconds=0.02)
        first[0] = "y.wav"
    csv_path = write_csv(tmp_path / "manifest.csv", header, [first, row])
    with pytest.raises(ManifestError, match=match) as info:
        CSVManifest().manifest(tmp_path)
    assert str(csv_path) in str(info.value)


# ---- synthetic


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_synthetic_deterministic(tmp_path):
    src = Synthetic(num_classes=3, clips_per_class=4, clip_sec=0.5, num_folds=4, seed=7)
    src.prepare(tmp_path / "a")
    src.prepare(tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    other = Synthetic(num_classes=3, clips_per_class=4, clip_sec=0.5, num_folds=4, seed=8)
    other.prepare(tmp_path / "c")
    first = "audio/impact/impact_000.wav"
    assert _digest(tmp_path / "a")[first] != _digest(tmp_path / "c")[first]


def test_synthetic_default_set(tmp_path):
    src = Synthetic()
    src.prepare(tmp_path)
    m = src.manifest(tmp_path)
    assert m.class_names == list(SYNTHETIC_CLASSES[:8])
    assert len(m.clips) == 240
    assert set(Counter((c.label, c.fold) for c in m.clips).values()) == {6}  # 30 / 5 folds
    assert src.default_folds == ((1, 2, 3), (4,), (5,))
    data, sr = sf.read(m.clips[0].path, dtype="int16")
    assert sr == 16000 and data.shape == (32000,)
    assert sf.info(m.clips[0].path).subtype == "PCM_16"


def test_synthetic_prepare_skips_then_regenerates(tmp_path, caplog):
    src = Synthetic(num_classes=2, clips_per_class=3, clip_sec=0.25, num_folds=3)
    src.prepare(tmp_path)
    wav = tmp_path / "audio" / "impact" / "impact_000.wav"
    mtime = wav.stat().st_mtime_ns
    src.prepare(tmp_path)
    assert wav.stat().st_mtime_ns == mtime  # complete and matching: untouched

    bigger = Synthetic(num_classes=3, clips_per_class=2, clip_sec=0.25, num_folds=3)
    with pytest.raises(ManifestError, match="call prepare"):
        bigger.manifest(tmp_path)
    bigger.prepare(tmp_path)
    m = bigger.manifest(tmp_path)
    assert m.class_names == ["impact", "footsteps", "knock"] and len(m.clips) == 6
    assert not (tmp_path / "audio" / "impact" / "impact_002.wav").exists()  # old set removed


def test_synthetic_every_class_at_low_rate():
    src = Synthetic(num_classes=10, clip_sec=0.3, sample_rate=8000, snr_db=(-5.0, 30.0))
    for c in range(10):
        for i in range(3):
            x = src.clip(c, i)
            assert x.shape == (2400,) and x.dtype.name == "float32"
            assert 0.09 < abs(x).max() <= 0.9  # peak level is random, -20..-1 dBFS


def test_synthetic_validation():
    with pytest.raises(ValueError, match="num_classes"):
        Synthetic(num_classes=11)
    with pytest.raises(ValueError, match="num_classes"):
        Synthetic(num_classes=1)
    with pytest.raises(ValueError, match="snr_db"):
        Synthetic(snr_db=(10.0, 0.0))


def test_all_sources_are_clip_sources():
    for cls in (ESC50, UrbanSound8K, ClassFolders, CSVManifest, Synthetic):
        assert issubclass(cls, ClipSource)


def test_class_folders_warns_on_empty_class(tmp_path, write_tone, caplog):
    write_tone(tmp_path / "a" / "x.wav", sr=8000, seconds=0.02)
    write_tone(tmp_path / "b" / "y.wav", sr=8000, seconds=0.02)
    (tmp_path / "c").mkdir()
    with caplog.at_level(logging.WARNING):
        m = ClassFolders(num_folds=3).manifest(tmp_path)
    assert m.class_names == ["a", "b"]
    assert "class skipped" in caplog.text


@pytest.mark.parametrize(
    ("source", "header", "row", "match"),
    [
        ("esc50", ESC_HEADER, ["a.wav", "x", 0, "dog", True, "1", "A"],
         r"esc50\.csv, line 2: fold 'x' and target '0' must be integers"),
        ("esc50", ESC_HEADER, ["a.wav", 0, 0, "dog", True, "1", "A"],
         r"esc50\.csv, line 2: fold must be >= 1, got 0"),
        ("us8k", US_HEADER, ["a.wav", 1, 0.0, 0.5, 1, 1, "two", "dog"],
         r"UrbanSound8K\.csv, line 2: fold '1' and classID 'two' must be integers"),
    ],
)  # fmt: skip
def test_fold_metadata_bad_rows_name_line_and_column(tmp_path, source, header, row, match):
    if source == "esc50":
        write_csv(tmp_path / "meta" / "esc50.csv", header, [row])
        with pytest.raises(ManifestError, match=match):
            ESC50().manifest(tmp_path)
    else:
        write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", header, [row])
        with pytest.raises(ManifestError, match=match):
            UrbanSound8K().manifest(tmp_path)
