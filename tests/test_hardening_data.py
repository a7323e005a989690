"""Cases from a user report: folds on one's own folders, symlinks, odd clips and labels, huge
samples, bad files in every split, prediction inputs, non-UTF-8 names, unreadable files."""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from audio_cls.data import AudioDataModule
from audio_cls.data.sources import AudioFiles, ClassFolders, CSVManifest, ManifestError
from audio_cls.io import (
    AudioLoadError,
    AudioTruncatedWarning,
    iter_audio,
    load_audio,
    printable_path,
)

CONFIG = Path(__file__).parents[1] / "lightning_configs" / "cnn_folder.yaml"
OLD_PATTERN = "^([^_-]+)"  # what cnn_folder.yaml used to ship
SR = 16000


def _tone(path: Path, seconds: float = 0.1, freq: float = 440.0, amp: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(SR * seconds)) / SR
    sf.write(path, (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    return path


def _dm(root: Path, source, **kw) -> AudioDataModule:
    kw = {"num_workers": 0, "cache_dir": "memory", "window_sec": 0.1, **kw}
    return AudioDataModule(root=str(root), source=source, **kw)


def _shipped_source(**override) -> ClassFolders:
    """ClassFolders configured as lightning_configs/cnn_folder.yaml configures it."""
    source = yaml.safe_load(CONFIG.read_text())["data"]["source"]
    assert source["class_path"] == "audio_cls.data.sources.ClassFolders"
    return ClassFolders(**{**source["init_args"], **override})


# ---- 1. folds on a user's own folders


def _three_classes(root: Path) -> Path:
    """Ordinary names: dog_01.wav, knock-3.flac, ESC-style 1-100032-A-0.flac, impact_000.wav."""
    for k in range(1, 6):
        _tone(root / "dog" / f"dog_{k:02d}.wav", freq=300)
        _tone(root / "knock" / f"knock-{k}.flac", freq=600)
        _tone(root / "impact" / f"impact_{k:03d}.wav", freq=900)
    _tone(root / "impact" / "1-100032-A-0.flac", freq=900)
    return root


def _twelve_classes(root: Path) -> Path:
    """Synthetic-style names ``<class>_<n>.wav``, five per class."""
    for c in range(12):
        for k in range(5):
            _tone(root / f"class{c:02d}" / f"class{c:02d}_{k:03d}.wav", freq=200 + 50 * c)
    return root


def test_shipped_folder_config_groups_only_when_asked():
    assert _shipped_source().group_pattern is None
    text = CONFIG.read_text()
    assert "group_pattern: '^(spk\\d+)_'" in text and "spk03_take2.wav" in text
    assert "ten points" in text  # says why grouping matters


@pytest.mark.parametrize("make", [_three_classes, _twelve_classes])
def test_own_folders_train_on_every_class_without_grouping(tmp_path, make):
    root = make(tmp_path)
    dm = _dm(root, _shipped_source())
    dm.setup("fit")
    dm.setup("test")
    for split in ("train", "val", "test"):
        labels = {c.label for c in dm.splits[split].clips}
        assert labels == set(range(dm.num_classes)), split


@pytest.mark.parametrize("make", [_three_classes, _twelve_classes])
def test_grouping_every_file_of_a_class_together_is_refused_by_name(tmp_path, make):
    root = make(tmp_path)
    dm = _dm(root, _shipped_source(group_pattern=OLD_PATTERN))
    with pytest.raises(ManifestError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert "\n" not in msg and "does not have" not in msg  # one line, not the misleading one
    assert re.search(r"class '\w+' has all \d+ of its files in fold \d", msg)
    assert f"group_pattern '{OLD_PATTERN}' put them in one group" in msg
    assert re.search(r"so the (training|validation|test) folds \[[\d, ]+\]", msg)
    assert "fewer folds" in msg and "another group_pattern" in msg and "more files" in msg


def test_too_few_files_for_the_folds_is_named(tmp_path):
    root = _three_classes(tmp_path)
    for p in sorted((root / "knock").iterdir())[2:]:
        p.unlink()
    with pytest.raises(ManifestError, match=r"class 'knock' .*only 2 file\(s\) for 5 folds"):
        _dm(root, _shipped_source()).setup("fit")


def test_class_check_follows_the_stage_and_ignores_unused_splits(tmp_path):
    root = _three_classes(tmp_path)
    for p in sorted((root / "knock").iterdir())[1:]:
        p.unlink()  # one knock file: in a single fold
    source = _shipped_source(num_folds=3)
    (fold,) = {c.fold for c in source.manifest(root).clips if c.path.parent.name == "knock"}
    others = [f for f in (1, 2, 3) if f != fold]
    dm = _dm(root, source, train_folds=[1, 2, 3], val_folds=[], test_folds=[])
    dm.setup("fit")  # no validation or test folds: nothing can lack a class there
    with pytest.raises(ManifestError, match=rf"the test folds \[{others[0]}\] have none"):
        _dm(root, source, train_folds=[fold], val_folds=[], test_folds=[others[0]]).setup("test")


# ---- 2. symbolic links in class folders


def _link_tree(root: Path) -> Path:
    for k in range(3):
        _tone(root / "dog" / "a" / f"d{k}.wav")
        _tone(root / "cat" / f"c{k}.wav", freq=800)
    (root / "dog" / "b").mkdir()
    return root


def _timed_manifest(root: Path, caplog):
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        m = ClassFolders(num_folds=3).manifest(root)
    assert time.perf_counter() - start < 1.0
    return m


def test_symlink_loop_is_walked_once(tmp_path, caplog):
    root = _link_tree(tmp_path)
    os.symlink("../b", root / "dog" / "a" / "to_b")
    os.symlink("../a", root / "dog" / "b" / "to_a")
    m = _timed_manifest(root, caplog)
    dog = sorted(c.clip_id for c in m.clips if m.class_names[c.label] == "dog")
    assert dog == ["dog/a/d0.wav", "dog/a/d1.wav", "dog/a/d2.wav"]  # own paths win over links
    assert "to_a" in caplog.text and "to_b" in caplog.text and "skipped" in caplog.text


def test_link_to_dot_does_not_multiply_files(tmp_path, caplog):
    root = _link_tree(tmp_path)
    os.symlink(".", root / "dog" / "a" / "again")
    os.symlink(".", root / "dog" / "again")
    m = _timed_manifest(root, caplog)
    assert len(m.clips) == 6
    assert str(root / "dog" / "again") in caplog.text


def test_file_linked_twice_counts_once(tmp_path, caplog):
    root = _link_tree(tmp_path)
    os.symlink("a/d0.wav", root / "dog" / "alias1.wav")
    os.symlink(root / "dog" / "a" / "d0.wav", root / "dog" / "b" / "alias2.wav")
    m = _timed_manifest(root, caplog)
    assert len(m.clips) == 6 and "dog/a/d0.wav" in {c.clip_id for c in m.clips}
    assert "alias1.wav" in caplog.text and "alias2.wav" in caplog.text


@pytest.mark.parametrize(
    ("name", "target"),
    [("cats", "../cat"), ("stolen.wav", "../cat/c0.wav"), ("everything", "..")],
)
def test_link_into_another_class_is_refused_naming_it(tmp_path, name, target):
    root = _link_tree(tmp_path)
    os.symlink(target, root / "dog" / name)
    start = time.perf_counter()
    with pytest.raises(ManifestError) as info:
        ClassFolders(num_folds=3).manifest(root)
    assert time.perf_counter() - start < 1.0
    msg = str(info.value)
    assert msg.startswith(f"{root / 'dog' / name}: symbolic link") and "\n" not in msg
    assert "class 'cat'" in msg and "labelled 'dog'" in msg


def test_class_folder_linked_to_another_class_is_refused(tmp_path):
    root = _link_tree(tmp_path)
    os.symlink("dog", root / "hound")
    with pytest.raises(ManifestError, match=r"hound: this class folder .* of class 'dog'"):
        ClassFolders(num_folds=3).manifest(root)


def test_links_outside_the_root_are_followed(tmp_path):
    root = _link_tree(tmp_path / "data")
    _tone(tmp_path / "elsewhere" / "e0.wav")
    os.symlink(tmp_path / "elsewhere", root / "cat" / "more")
    m = ClassFolders(num_folds=3).manifest(root)
    assert "cat/more/e0.wav" in {c.clip_id for c in m.clips} and len(m.clips) == 7


# ---- 3. truncated WAVs, label spelling, silent and very short clips


def _truncated_wav(path: Path) -> Path:
    x = 0.3 * np.random.default_rng(0).standard_normal(2 * SR)  # 2.0 s
    sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")
    header = path.stat().st_size - 2 * 2 * SR
    path.write_bytes(path.read_bytes()[: header + 2 * 12000])  # keeps 0.75 s
    return path


def test_load_audio_warns_on_a_truncated_wav(tmp_path):
    p = _truncated_wav(tmp_path / "cut.wav")
    with pytest.warns(AudioTruncatedWarning, match=r"cut\.wav: truncated, 1\.250 s missing"):
        assert len(load_audio(p)) == 12000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(_tone(tmp_path / "whole.wav"))  # a complete file says nothing


def test_cache_warm_up_logs_each_truncated_file(tmp_path, caplog):
    rows = ["path,label,fold"]
    for k in range(3):
        _tone(tmp_path / f"ok{k}.wav")
        rows.append(f"ok{k}.wav,a,{k + 1}")
    for k in range(2):
        _truncated_wav(tmp_path / f"cut{k}.wav")
        rows.append(f"cut{k}.wav,a,1")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    dm = _dm(tmp_path, CSVManifest(num_folds=3), num_workers=2, cache_dir=str(tmp_path / "c"))
    with caplog.at_level(logging.WARNING, logger="audio_cls.data.cache"):
        dm.setup("fit")
    for k in range(2):
        (line,) = [r.getMessage() for r in caplog.records if f"cut{k}.wav" in r.getMessage()]
        assert "truncated, 1.250 s missing" in line
    assert len(dm.splits["train"].clips) == 3  # still used: what they hold is real audio


def _labels_csv(root: Path, labels: list[str]) -> None:
    rows = ["path,label"]
    for k, label in enumerate(labels):
        _tone(root / f"{k}.wav")
        rows.append(f"{k}.wav,{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")


def test_labels_are_stripped_with_a_warning(tmp_path, caplog):
    _labels_csv(tmp_path, ["dog ", "dog", " cat", "cat"])
    with caplog.at_level(logging.WARNING):
        m = CSVManifest(num_folds=3).manifest(tmp_path)
    assert m.class_names == ["cat", "dog"]
    assert "'dog ' as 'dog'" in caplog.text and "' cat' as 'cat'" in caplog.text


def test_labels_differing_by_case_are_refused(tmp_path):
    _labels_csv(tmp_path, ["Dog ", "dog", "cat"])
    with pytest.raises(ManifestError) as info:
        CSVManifest(num_folds=3).manifest(tmp_path)
    msg = str(info.value)
    assert "labels 'Dog' and 'dog' differ only by case" in msg and "rename" in msg
    assert str(tmp_path / "manifest.csv") in msg and "\n" not in msg


def test_label_case_hint_against_given_classes(tmp_path):
    _labels_csv(tmp_path, ["Dog", "cat"])
    with pytest.raises(ManifestError, match="did you mean 'dog'"):
        CSVManifest(num_folds=3, classes=["cat", "dog"]).manifest(tmp_path)


def test_class_folders_by_case_refused_and_spaces_stripped(tmp_path, caplog):
    _tone(tmp_path / "cat " / "a.wav")
    _tone(tmp_path / "dog" / "b.wav")
    with caplog.at_level(logging.WARNING):
        m = ClassFolders(num_folds=3).manifest(tmp_path)
    assert m.class_names == ["cat", "dog"] and "'cat ' as 'cat'" in caplog.text
    _tone(tmp_path / "Dog" / "c.wav")
    with pytest.raises(ManifestError, match="names 'Dog' and 'dog' differ only by case"):
        ClassFolders(num_folds=3).manifest(tmp_path)


def test_silent_and_very_short_clips_are_listed_once_per_split(tmp_path, caplog):
    rows = ["path,label,fold"]
    for fold in (1, 2, 3):
        _tone(tmp_path / f"ok{fold}.wav")
        rows.append(f"ok{fold}.wav,a,{fold}")
    sf.write(tmp_path / "zeros.wav", np.zeros(SR // 10, np.float32), SR)
    sf.write(tmp_path / "hiss.wav", np.full(SR // 10, 1e-5, np.float32), SR, subtype="FLOAT")
    _tone(tmp_path / "blip.wav", seconds=0.005)  # 5 ms, loud
    _tone(tmp_path / "quiet.wav", amp=1e-3)  # -60 dBFS: quiet but not silent
    rows += ["zeros.wav,a,1", "hiss.wav,a,1", "blip.wav,a,1", "quiet.wav,a,1"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    dm = _dm(tmp_path, CSVManifest(num_folds=3))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    reports = [r.getMessage() for r in caplog.records if "silent" in r.getMessage()]
    assert len(reports) == 1 and reports[0].startswith("train: 3 clip(s)")
    assert "zeros.wav: silent (all zeros)" in reports[0]
    assert "hiss.wav: silent (peak -100.0 dBFS)" in reports[0]
    assert "blip.wav: 5.00 ms" in reports[0] and "quiet.wav" not in reports[0]
    assert len(dm.splits["train"].clips) == 5  # they still load


# ---- 4. huge but finite samples


def test_huge_float_sample_is_refused_at_decode(tmp_path):
    x = np.full(1600, 0.1, np.float32)
    x[800] = 1e30
    p = tmp_path / "huge.wav"
    sf.write(p, x, SR, subtype="FLOAT")
    with pytest.raises(AudioLoadError) as info:
        load_audio(p)
    assert str(info.value).startswith(f"{p}: holds a sample of absolute value 1e+30")
    with pytest.raises(AudioLoadError, match=r"1e\+30 \(first at 0\.050 s\)"):
        list(iter_audio(p, block_sec=0.01))


def test_loud_float_samples_still_load(tmp_path):
    p = tmp_path / "loud.wav"
    sf.write(p, np.full(1600, 8.0, np.float32), SR, subtype="FLOAT")
    assert float(load_audio(p).max()) == 8.0
    assert float(np.concatenate(list(iter_audio(p))).max()) == 8.0


# ---- 5. every split checked before training


def _split_tree(root: Path) -> tuple[Path, dict[str, Path]]:
    """Two classes, two clips per class and fold (1..3); one corrupt clip per fold."""
    rows = ["path,label,fold"]
    bad = {}
    for fold, split in zip((1, 2, 3), ("train", "val", "test")):
        for label in "ab":
            for k in range(2):
                name = f"{label}{fold}{k}.wav"
                _tone(root / name, freq=300 if label == "a" else 700)
                rows.append(f"{name},{label},{fold}")
        bad[split] = root / f"a{fold}0.wav"
        bad[split].write_bytes(b"not audio at all")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root, bad


def test_bad_files_of_every_split_stop_fit_in_one_error(tmp_path):
    root, bad = _split_tree(tmp_path)
    dm = _dm(root, CSVManifest(num_folds=3))
    with pytest.raises(ManifestError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert msg.startswith("3 clip(s) could not be read (1 of 4 train, 1 of 4 val, 1 of 4 test)")
    for split, path in bad.items():
        assert f"[{split}] {path}: is not an audio file" in msg
    assert "--data.on_bad_file skip" in msg
    assert [(s, p) for s, p, _ in dm.bad_files] == [(s, str(p)) for s, p in bad.items()]
    assert dm.splits == {}  # nothing trained on


def test_bad_files_skipped_with_one_warning_and_recorded(tmp_path, caplog):
    root, bad = _split_tree(tmp_path)
    dm = _dm(root, CSVManifest(num_folds=3), on_bad_file="skip")
    with caplog.at_level(logging.WARNING, logger="audio_cls.data.datamodule"):
        dm.setup("fit")
        assert "test" not in dm.splits  # checked now, cut into windows when testing
        dm.setup("test")
    (warning,) = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert warning.startswith("leaving out 3 unreadable clip(s)")
    assert len(dm.bad_files) == 3
    for (split, path, reason), (want_split, want_path) in zip(dm.bad_files, bad.items()):
        assert (split, path) == (want_split, str(want_path))
        assert reason.startswith("is not an audio file") and str(want_path) not in reason
    for split, path in bad.items():
        kept = {c.path for c in dm.splits[split].clips}
        assert len(kept) == 3 and path not in kept


def test_prediction_inputs_are_not_checked_at_fit(tmp_path):
    root, bad = _split_tree(tmp_path / "data")
    for path in bad.values():
        _tone(path)  # repair the training data
    broken = tmp_path / "new" / "broken.wav"
    broken.parent.mkdir()
    broken.write_bytes(b"junk")
    dm = _dm(root, CSVManifest(num_folds=3), predict_source=AudioFiles([str(broken)]))
    dm.setup("fit")
    assert dm.bad_files == []
    with pytest.raises(ManifestError, match=r"\[predict\] .*broken\.wav"):
        dm.setup("predict")
    assert dm.bad_files[0][:2] == ("predict", str(broken))


def test_skipping_that_empties_a_class_is_named(tmp_path):
    root, _ = _split_tree(tmp_path)
    (root / "a31.wav").write_bytes(b"junk")  # both test clips of class 'a' now unreadable
    dm = _dm(root, CSVManifest(num_folds=3), on_bad_file="skip")
    with pytest.raises(
        ManifestError,
        match=r"class 'a' has only unreadable files in the test folds \[3\] \(left out\)",
    ):
        dm.setup("fit")


# ---- 6. prediction inputs


def test_header_only_prediction_csv_is_refused(tmp_path):
    (tmp_path / "list.csv").write_text("path\n")
    with pytest.raises(ManifestError) as info:
        AudioFiles([str(tmp_path / "list.csv")]).manifest(Path("."))
    assert str(info.value).startswith(f"{tmp_path / 'list.csv'}: lists no files")


def test_prediction_csv_with_bom(tmp_path):
    _tone(tmp_path / "a.wav")
    (tmp_path / "list.csv").write_bytes("\ufeffpath,clip_id\r\na.wav,first\r\n".encode())
    (clip,) = AudioFiles([str(tmp_path / "list.csv")]).manifest(Path(".")).clips
    assert (clip.path, clip.clip_id) == (tmp_path / "a.wav", "first")


def test_missing_inputs_do_not_stop_the_others(tmp_path, caplog):
    good = _tone(tmp_path / "good.wav")
    (tmp_path / "list.csv").write_text("path\ngone.wav\n")
    inputs = [tmp_path / "nope.wav", good, tmp_path / "no_folder", tmp_path / "list.csv"]
    source = AudioFiles([str(p) for p in inputs])
    with caplog.at_level(logging.WARNING):
        clips = source.manifest(Path(".")).clips
    assert [c.path for c in clips] == [inputs[0], good, inputs[2], tmp_path / "gone.wav"]
    assert source.missing == [inputs[0], inputs[2], tmp_path / "gone.wav"]
    assert "3 input(s) do not exist" in caplog.text
    for clip in clips[:1] + clips[2:]:
        with pytest.raises(AudioLoadError, match="not found"):
            iter_audio(clip.path, SR)


def test_missing_inputs_are_reported_by_the_inference_core(tmp_path):
    import torch

    from audio_cls.inference import Predictor, WindowSettings
    from audio_cls.models import create_model

    torch.manual_seed(0)
    model = create_model("mel_cnn", 2, channels=[4, 8], sample_rate=SR)
    predictor = Predictor(model, WindowSettings(SR, 0.1), batch_size=4, device="cpu")
    good = _tone(tmp_path / "good.wav")
    clips = AudioFiles([str(tmp_path / "nope.wav"), str(good)]).manifest(Path(".")).clips
    preds = list(predictor.predict_files((c.clip_id, c.path) for c in clips))
    assert "nope.wav: file not found" in preds[0].error and preds[1].error is None


def test_no_input_exists(tmp_path):
    with pytest.raises(ManifestError) as info:
        AudioFiles([str(tmp_path / "a.wav"), str(tmp_path / "b")]).manifest(Path("."))
    msg = str(info.value)
    assert msg.startswith("no such file or folder: ") and "none of the 2 input(s)" in msg
    assert "\n" not in msg


# ---- 6. file names that are not valid UTF-8


def _bad_name(folder: Path, freq: float = 440.0) -> Path:
    tmp = _tone(folder / "tmp.wav", freq=freq)
    raw = os.path.join(os.fsencode(folder), b"bad\xff.wav")
    os.rename(tmp, raw)
    return Path(os.fsdecode(raw))


def test_non_utf8_names_through_class_folders_and_the_cache(tmp_path):
    for k in range(3):
        _tone(tmp_path / "dog" / f"d{k}.wav")
        _tone(tmp_path / "cat" / f"c{k}.wav", freq=800)
    odd = _bad_name(tmp_path / "dog")
    dm = _dm(tmp_path, ClassFolders(num_folds=3), cache_dir=str(tmp_path / ".cache"))
    dm.setup("fit")
    dm.setup("test")
    clip = next(c for c in dm.manifest.clips if c.path == odd)
    assert clip.clip_id == "dog/bad\\xff.wav"  # printable: written to predictions as UTF-8
    for c in dm.manifest.clips:
        c.clip_id.encode("utf-8")
    np.testing.assert_array_equal(dm.cache.load(odd), load_audio(odd, SR))


def test_non_utf8_name_in_errors_and_prediction_inputs(tmp_path):
    odd = _bad_name(tmp_path / "in")
    (clip,) = AudioFiles([str(tmp_path / "in")]).manifest(Path(".")).clips
    assert clip.path == odd and clip.clip_id == "bad\\xff"
    assert len(np.concatenate(list(iter_audio(odd, SR)))) == 1600
    odd.write_bytes(b"junk")
    with pytest.raises(AudioLoadError) as info:
        load_audio(odd)
    msg = str(info.value)
    msg.encode("utf-8")  # no lone surrogates: prints to any log or file
    assert msg.startswith(printable_path(odd)) and "bad\\xff.wav" in msg


# ---- 7. files this user may not read


def test_unreadable_file_reason_is_permission(tmp_path, monkeypatch):
    p = _tone(tmp_path / "locked.wav")
    real_open = os.open

    def denied(path, flags, *args, **kw):
        if Path(os.fsdecode(path)) == p:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", denied)  # what a chmod 000 file does to a non-root user
    with pytest.raises(AudioLoadError) as info:
        load_audio(p)
    assert info.value.reason.startswith("permission denied: ")
    assert "corrupt" not in info.value.reason and "re-download" not in info.value.reason


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file"
)
def test_chmod_000_file_is_permission_denied(tmp_path):
    p = _tone(tmp_path / "locked.wav")
    p.chmod(0)
    try:
        for read in (load_audio, lambda q: list(iter_audio(q))):
            with pytest.raises(AudioLoadError, match=r"locked\.wav: permission denied: "):
                read(p)
    finally:
        p.chmod(0o644)
