"""Containers decoded in process by PyAV (no ffmpeg program), and the ``VideoFolder`` source.

Every video here is written by PyAV itself: a few tiny frames and a tone of known frequency.
"""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import audio_cls.io as audio_io
from audio_cls.data import AudioDataModule
from audio_cls.data.sources import ManifestError, VideoFolder
from audio_cls.io import (
    AudioLoadError,
    AudioTruncatedWarning,
    audio_duration,
    audio_info,
    iter_audio,
    load_audio,
)
from tests.conftest import write_csv

av = pytest.importorskip("av")

SR = 16000


def has_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except Exception:
        return False
    return True


def write_media(
    path: Path,
    seconds: float = 1.0,
    rate: int = 44100,
    freq: float = 440.0,
    channels: int = 2,
    audio: str | None = "aac",
    video: str | None = "mpeg4",
    container: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """A file with ``video`` frames (10 per second, 32x32) and a ``freq`` Hz tone of amplitude
    0.5 in every channel, encoded with ``audio`` (None: no audio track)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container, options=options or {}) as out:
        v = a = None  # every stream is added before the first packet is written
        if video:
            v = out.add_stream(video, rate=10)
            v.width = v.height = 32
            v.pix_fmt = "yuv420p"
        if audio:
            experimental = {"strict": "experimental"} if audio in ("vorbis", "opus") else None
            a = out.add_stream(audio, rate=rate, options=experimental)
            a.layout = "stereo" if channels == 2 else "mono"
        if v is not None:
            for i in range(max(1, round(seconds * 10))):
                frame = av.VideoFrame.from_ndarray(
                    np.full((32, 32, 3), 25 * i % 255, np.uint8), format="rgb24"
                )
                frame.pts = i
                out.mux(v.encode(frame))
            out.mux(v.encode(None))
        if a is not None:
            n = round(seconds * rate)
            tone = (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
            for start in range(0, n, 960):
                chunk = np.ascontiguousarray(
                    np.repeat(tone[None, start : start + 960], channels, 0)
                )
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=a.layout.name)
                frame.sample_rate, frame.pts = rate, start
                out.mux(a.encode(frame))
            out.mux(a.encode(None))
    return path


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


@pytest.fixture(autouse=True)
def _no_ffmpeg_program(monkeypatch):
    """Every test here must pass without the ffmpeg program: hide it even where installed."""
    monkeypatch.setattr(shutil, "which", lambda name: None)


# ---- decoding


CONTAINERS = {
    # name: (file name, audio codec, video codec, rate, seconds the length may be off)
    "mp4 h264+aac": (
        "clip.mp4",
        "aac",
        "h264" if has_encoder("libx264") else "mpeg4",
        44100,
        0.005,
    ),
    "mp4 mpeg4+aac mono": ("mono.mp4", "aac", "mpeg4", 22050, 0.005),
    "m4a aac": ("song.m4a", "aac", None, 48000, 0.005),
    "mov pcm_s16le": ("take.mov", "pcm_s16le", "mpeg4", 32000, 0.005),
    "webm vp8+opus": ("rec.webm", "libopus", "libvpx", 48000, 0.005),
    "mkv vorbis": ("clip.mkv", "vorbis", "mpeg4", 44100, 0.005),
    # AVI records no encoder delay: MP3's priming and padding (~45 ms here) stay, as they do
    # with the ffmpeg program
    "avi mp3": ("old.avi", "libmp3lame", "mpeg4", 44100, 0.06),
}


@pytest.mark.parametrize("case", list(CONTAINERS))
def test_container_tone_comes_back(tmp_path, case):
    name, acodec, vcodec, rate, slack = CONTAINERS[case]
    for codec in filter(None, (acodec, vcodec)):
        if not has_encoder(codec):
            pytest.skip(f"PyAV's FFmpeg has no {codec} encoder")
    channels = 1 if "mono" in case else 2
    p = write_media(tmp_path / name, 1.0, rate, 440.0, channels, acodec, vcodec)
    wav = load_audio(p, SR)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - SR) <= SR * slack  # within a few ms of the encoded second
    assert dominant_hz(wav, SR) == pytest.approx(440.0, abs=2.0)
    # the amplitude survives downmix and scaling (integer PCM included), codec ripple aside
    assert np.abs(wav[SR // 10 : -SR // 10]).max() == pytest.approx(0.5, abs=0.05)
    native = load_audio(p)
    assert abs(len(native) - rate) <= rate * slack
    if slack < 0.01:  # and in time: the codec's priming samples are gone (a shift would show)
        t = np.arange(rate // 10, rate - rate // 10)
        tone = 0.5 * np.sin(2 * np.pi * 440.0 * t / rate)
        assert np.sqrt(np.mean((native[t] - tone) ** 2)) < 0.02
    got_rate, frames, got_channels = audio_info(p)
    assert (got_rate, got_channels) == (rate, channels)
    estimate = max(slack, 0.03)  # what the header says, within a codec frame or so
    assert abs(frames - rate) <= rate * estimate
    assert audio_duration(p) == pytest.approx(1.0, abs=estimate)


def test_aac_padding_is_cut_to_the_declared_duration(tmp_path):
    # an AAC encoder fills its last 1024-sample frame; the track's duration says where it ends
    p = write_media(tmp_path / "a.m4a", 0.5, 44100, video=None)
    assert len(load_audio(p)) == 22050


def test_video_without_audio_track_names_the_file(tmp_path):
    p = write_media(tmp_path / "silent film.mp4", audio=None)
    for read in (load_audio, iter_audio, audio_duration, audio_info):
        with pytest.raises(AudioLoadError) as info:
            read(p)
        assert info.value.path == p and "has no audio track" in info.value.reason
        assert "video (mpeg4)" in info.value.reason and str(p) in str(info.value)


def test_container_cut_before_its_index_is_one_clear_error(tmp_path):
    p = write_media(tmp_path / "cut.mp4", 1.0)  # the index (moov) is written last
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(AudioLoadError) as info:
        load_audio(p, SR)
    message = str(info.value)
    assert message.startswith(str(p)) and "\n" not in message
    assert "corrupt or truncated" in message and "re-download" in message
    with pytest.raises(AudioLoadError, match="corrupt or truncated"):
        iter_audio(p, SR)  # at the call, before any block


@pytest.mark.parametrize(
    ("name", "options"),
    [("fast.mp4", {"movflags": "faststart"}), ("cut.webm", None)],
    ids=["mp4 index first", "webm"],
)
def test_container_cut_short_warns_and_gives_what_it_holds(tmp_path, name, options):
    video = "libvpx" if name.endswith(".webm") else "mpeg4"
    audio = "libopus" if name.endswith(".webm") else "aac"
    if not (has_encoder(video) and has_encoder(audio)):
        pytest.skip("encoder missing")
    p = write_media(tmp_path / name, 2.0, 48000, audio=audio, video=video, options=options)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.warns(AudioTruncatedWarning) as caught:
        wav = load_audio(p, SR)
    message = str(caught[0].message)
    assert message.startswith(f"{p}: truncated") and "missing" in message
    assert 0.3 * 2 * SR < len(wav) < 0.8 * 2 * SR
    assert dominant_hz(wav, SR) == pytest.approx(440.0, abs=3.0)
    with pytest.warns(AudioTruncatedWarning):
        blocks = list(iter_audio(p, SR, block_sec=0.25))
    np.testing.assert_allclose(np.concatenate(blocks), wav, atol=1e-6)


def test_damaged_packets_are_skipped_and_named(tmp_path):
    p = write_media(tmp_path / "damaged.m4a", 4.0, 44100, video=None)
    data = bytearray(p.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(0).bytes(2000)
    p.write_bytes(bytes(data))
    with pytest.warns(AudioTruncatedWarning, match=r"damaged, \d+ audio packet\(s\)") as caught:
        wav = load_audio(p, SR)
    assert str(caught[0].message).startswith(str(p))
    assert 3.5 * SR < len(wav) <= 4 * SR  # the rest is decoded, not dropped


@pytest.mark.parametrize(("rate", "block_sec"), [(None, 0.3), (SR, 0.25), (SR, 30.0)])
def test_streamed_blocks_concatenate_to_load_audio(tmp_path, rate, block_sec):
    p = write_media(tmp_path / "long.mp4", 2.0, 44100, freq=1000.0)
    whole = load_audio(p, rate)
    blocks = list(iter_audio(p, rate, block_sec=block_sec))
    out_rate = rate or 44100
    block = int(block_sec * out_rate)
    if len(whole) > block:
        assert len(blocks) > 1 and all(abs(len(b) - block) <= 1 for b in blocks[:-1])
    got = np.concatenate(blocks)
    assert got.dtype == np.float32 and len(got) == len(whole)
    if rate is None:
        np.testing.assert_array_equal(got, whole)
    else:
        np.testing.assert_allclose(got, whole, atol=1e-6)


def test_streaming_decodes_as_it_goes(tmp_path, monkeypatch):
    """A long file is never decoded whole: after the first block, most frames are still unread."""
    p = write_media(tmp_path / "hour.m4a", 6.0, 8000, video=None)
    converted = []
    real = audio_io._frame_array
    monkeypatch.setattr(
        audio_io, "_frame_array", lambda f, c: converted.append(f.samples) or real(f, c)
    )
    it = iter_audio(p, None, block_sec=0.5)
    assert len(next(it)) == 4000
    assert sum(converted) < 8000  # a block and a frame or two, not 48000 samples
    it.close()


def test_opus_when_libsndfile_lacks_it(tmp_path, monkeypatch):
    if not has_encoder("libopus"):
        pytest.skip("PyAV's FFmpeg has no Opus encoder")
    p = write_media(
        tmp_path / "voice.opus", 1.0, 48000, audio="libopus", video=None, container="ogg"
    )

    def no_opus(path, *args, **kwargs):
        raise audio_io.AudioLoadError(path, "libsndfile cannot read it")

    # a libsndfile built without Opus: soundfile fails, FFmpeg's decoder takes over
    monkeypatch.setattr(audio_io, "_decode_soundfile", no_opus)
    monkeypatch.setattr(audio_io, "_soundfile_info", no_opus)
    monkeypatch.setattr(audio_io.sf, "available_subtypes", lambda fmt=None: {"VORBIS": "Vorbis"})
    wav = load_audio(p, SR)
    assert abs(len(wav) - SR) <= SR * 0.005
    assert dominant_hz(wav, SR) == pytest.approx(440.0, abs=2.0)
    np.testing.assert_allclose(np.concatenate(list(iter_audio(p, SR))), wav, atol=1e-6)
    assert audio_duration(p) == pytest.approx(1.0, abs=0.03)


def test_ffmpeg_program_only_for_what_pyav_cannot_open(tmp_path, monkeypatch):
    marker = tmp_path / "ffmpeg-ran"
    exe = tmp_path / "ffmpeg"
    exe.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(marker)!r}, 'w').close()\n"
        "sys.stderr.write('moov atom not found\\n'); sys.exit(1)\n"
    )
    exe.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(exe) if name == "ffmpeg" else None)
    good = write_media(tmp_path / "good.mp4", 0.5)
    assert len(load_audio(good, SR)) == SR // 2 and not marker.exists()
    with pytest.raises(AudioLoadError, match="has no audio track"):  # no use asking ffmpeg
        load_audio(write_media(tmp_path / "mute.mp4", 0.5, audio=None), SR)
    assert not marker.exists()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    with pytest.raises(AudioLoadError, match=r"ffmpeg could not decode it \(moov atom not found\)"):
        load_audio(broken, SR)
    assert marker.exists()


# ---- the VideoFolder source

CLASSES = {"bell": 880.0, "hum": 110.0, "whistle": 2000.0}


def video_tree(root: Path, per_class: int = 3, seconds: float = 0.5) -> Path:
    """``root/videos/<class><k>.mp4`` with a tone per class and ``root/train.csv``."""
    rows = []
    for name, freq in CLASSES.items():
        for k in range(per_class):
            vid = f"{name}{k}"
            write_media(root / "videos" / f"{vid}.mp4", seconds, 16000, freq, channels=1)
            rows.append([vid, name])
    write_csv(root / "train.csv", ["Id", "Category"], rows)
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return video_tree(tmp_path_factory.mktemp("videos"))


def test_source_builds_clips_labels_and_folds(videos):
    m = VideoFolder(num_folds=3).manifest(videos)
    assert m.class_names == sorted(CLASSES)
    assert len(m.clips) == 9 and m.folds == [1, 2, 3]
    by_id = {c.clip_id: c for c in m.clips}
    clip = by_id["hum2"]
    assert clip.path == videos / "videos" / "hum2.mp4" and m.class_names[clip.label] == "hum"
    for name in CLASSES:  # stratified: one video of each class per fold
        assert sorted(c.fold for c in m.clips if m.class_names[c.label] == name) == [1, 2, 3]
    assert VideoFolder(num_folds=3).default_folds == ((1,), (2,), (3,))


def test_source_ids_with_extensions_class_map_and_groups(tmp_path):
    root = tmp_path
    for vid in ("a_1", "a_2", "b_1", "b_2", "c_1", "c_2"):
        (root / "videos").mkdir(exist_ok=True)
        (root / "videos" / f"{vid}.webm").write_bytes(b"x")
    rows = [["a_1.webm", "dog"], ["a_2", "dog"], ["b_1", "cat"], ["b_2", "cat"]]
    rows += [["c_1", "dog"], ["c_2", "cat"]]
    write_csv(root / "train.csv", ["Id", "Category"], rows)
    write_csv(root / "classes.csv", ["Id", "Category"], [[1, "cat"], [0, "dog"]])
    m = VideoFolder(classes="classes.csv", num_folds=3, group_pattern=r"^(\w)_").manifest(root)
    assert m.class_names == ["dog", "cat"]  # the map's numbering, not sorted
    assert {c.clip_id for c in m.clips} == {"a_1.webm", "a_2", "b_1", "b_2", "c_1", "c_2"}
    assert all(c.path.suffix == ".webm" and c.path.is_file() for c in m.clips)
    fold = {c.clip_id: c.fold for c in m.clips}
    assert fold["a_1.webm"] == fold["a_2"] and fold["b_1"] == fold["b_2"]
    assert fold["c_1"] == fold["c_2"]
    listed = VideoFolder(classes=["cat", "dog"], num_folds=3).manifest(root)
    assert listed.class_names == ["cat", "dog"]


def test_missing_video_is_reported_by_name(videos, tmp_path, caplog):
    root = tmp_path / "root"
    shutil.copytree(videos, root)
    text = (root / "train.csv").read_text()
    (root / "train.csv").write_text(text + "lost_one,hum\n")
    source = VideoFolder(num_folds=3)
    with caplog.at_level(logging.WARNING):
        m = source.manifest(root)
    assert "lost_one" in caplog.text and source.missing == [root / "videos" / "lost_one"]
    assert "lost_one" in {c.clip_id for c in m.clips}  # kept, so the decode check names it
    dm = AudioDataModule(
        str(root), source, num_workers=0, cache_dir=str(tmp_path / "cache"), window_sec=0.25
    )
    with pytest.raises(ManifestError, match=r"lost_one: file not found"):
        dm.setup("fit")
    assert [p for _, p, _ in dm.bad_files] == [str(root / "videos" / "lost_one")]
    assert "not found" in dm.bad_files[0][2]


def test_video_without_audio_is_reported_and_can_be_skipped(videos, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(videos, root)
    source = VideoFolder(num_folds=3)
    # a bell video of the training folds (which keep another one) loses its sound
    victim = next(c for c in source.manifest(root).clips if "bell" in c.clip_id and c.fold < 3)
    write_media(victim.path, 0.5, audio=None)
    dm = AudioDataModule(
        str(root),
        source,
        num_workers=0,
        cache_dir=str(tmp_path / "cache"),
        window_sec=0.25,
        on_bad_file="skip",
        train_folds=[1, 2],
        val_folds=[3],
        test_folds=[],
    )
    dm.setup("fit")
    assert [(split, p) for split, p, _ in dm.bad_files] == [("train", str(victim.path))]
    assert "has no audio track" in dm.bad_files[0][2]
    left = [c.clip_id for s in dm.splits.values() for c in s.clips]
    assert victim.clip_id not in left and len(left) == 8


def test_test_split_lists_the_videos_to_predict(videos, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(videos, root)
    for vid in ("q1", "q2"):
        write_media(root / "videos" / f"{vid}.mp4", 0.3, 16000, 880.0, channels=1)
    unlisted = VideoFolder(split="test").manifest(root)
    assert [c.clip_id for c in unlisted.clips] == ["q1", "q2"]
    assert unlisted.class_names == sorted(CLASSES)
    assert all(c.label == -1 and c.fold == 0 for c in unlisted.clips)
    write_csv(root / "test.csv", ["Id"], [["q2"], ["hum0"]])
    listed = VideoFolder(split="test", test_list="test.csv", classes=sorted(CLASSES))
    m = listed.manifest(root)
    assert [(c.clip_id, c.path.name) for c in m.clips] == [("q2", "q2.mp4"), ("hum0", "hum0.mp4")]
    assert listed.default_folds == ((), (), (0,))


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([["bell0", "bell"], ["bell0", "hum"]], r"train.csv, line 3: Id 'bell0' already listed"),
        ([["bell0", "bell"], ["bell0.mp4", "bell"]], r"line 3: 'bell0.mp4' names the same file"),
        (
            [["bell0", "Bell"], ["hum0", "bell"]],
            r"class names 'Bell' and 'bell' differ only by case",
        ),
        ([["bell0", ""]], r"line 2: empty Category for 'bell0'"),
        ([["", "bell"]], r"line 2: empty Id"),
        ([["ghost", "bell"]], r"none of the 1 video\(s\) it lists"),
    ],
)
def test_source_errors_name_the_file_and_line(tmp_path, rows, match):
    write_media(tmp_path / "videos" / "bell0.mp4", 0.2, 16000, channels=1)
    write_media(tmp_path / "videos" / "hum0.mp4", 0.2, 16000, channels=1)
    write_csv(tmp_path / "train.csv", ["Id", "Category"], rows)
    with pytest.raises(ManifestError, match=match):
        VideoFolder(num_folds=3).manifest(tmp_path)


def test_source_setup_errors(tmp_path):
    with pytest.raises(ManifestError, match="videos folder does not exist"):
        VideoFolder().manifest(tmp_path)
    (tmp_path / "videos").mkdir()
    with pytest.raises(ManifestError, match="labels not found"):
        VideoFolder().manifest(tmp_path)
    (tmp_path / "videos" / "a.mp4").write_bytes(b"x")
    (tmp_path / "videos" / "a.webm").write_bytes(b"x")
    write_csv(tmp_path / "train.csv", ["Id", "Category"], [["a", "dog"]])
    with pytest.raises(ManifestError, match=r"'a' could be any of a.mp4, a.webm"):
        VideoFolder().manifest(tmp_path)
    write_csv(tmp_path / "classes.csv", ["Category"], [["cat"]])
    write_csv(tmp_path / "train.csv", ["Id", "Category"], [["a.mp4", "dog"]])
    with pytest.raises(ManifestError, match=r"category 'dog' of 'a.mp4' is not in the class map"):
        VideoFolder(classes="classes.csv").manifest(tmp_path)
    with pytest.raises(ValueError, match="split"):
        VideoFolder(split="val")


def test_datamodule_loads_a_batch_from_videos(videos, tmp_path):
    dm = AudioDataModule(
        str(videos),
        VideoFolder(num_folds=3),
        sample_rate=SR,
        window_sec=0.25,
        batch_size=4,
        num_workers=0,
        cache_dir=str(tmp_path / "cache"),
    )
    assert dm.class_names == sorted(CLASSES)
    dm.setup("fit")
    assert dm.bad_files == []
    for clip in dm.manifest.clips:  # decoded once, cached like any clip
        assert clip.path in dm.cache
    batch = next(iter(dm.train_dataloader()))
    assert batch["waveform"].shape == (4, 4000)
    for wav, target in zip(batch["waveform"].numpy(), batch["target"].tolist()):
        name = dm.class_names[target]
        assert dominant_hz(wav, SR) == pytest.approx(CLASSES[name], abs=8.0)


def test_fit_fast_dev_run_on_videos(videos, tmp_path, monkeypatch):
    from audio_cls.cli import main

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on tiny data sets
        main(
            [
                "fit",
                "--model=audio_cls.models.MelCNN",
                "--model.channels=[4, 8, 8]",
                f"--data.root={videos}",
                "--data.source=audio_cls.data.sources.VideoFolder",
                "--data.source.num_folds=3",
                f"--data.cache_dir={tmp_path / 'cache'}",
                "--data.window_sec=0.25",
                "--data.batch_size=4",
                "--data.num_workers=0",
                "--trainer.fast_dev_run=true",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--trainer.logger=false",
            ]
        )
    assert list(tmp_path.iterdir()) == [tmp_path / "cache"]  # nothing but the decoded audio
