"""audio_cls.io.iter_audio / audio_duration: block-wise decoding that matches load_audio."""

from __future__ import annotations

import math
import os
import shutil
import stat
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_cls.io import (
    AudioLoadError,
    AudioTruncatedWarning,
    audio_duration,
    iter_audio,
    load_audio,
)

HAS_FFMPEG = shutil.which("ffmpeg") is not None


def _noise(path: Path, sr: int, n: int, channels: int = 1, subtype: str = "FLOAT") -> Path:
    """White noise: every frequency present, so a wrong sample at a block seam shows."""
    x = 0.3 * np.random.default_rng(n).standard_normal((n, channels))
    sf.write(path, x.astype(np.float32), sr, subtype=subtype)
    return path


def _blocks(path: Path, **kw) -> list[np.ndarray]:
    blocks = list(iter_audio(path, **kw))
    for b in blocks:
        assert b.dtype == np.float32 and b.ndim == 1 and b.size > 0
    return blocks


# ---- same samples as load_audio


@pytest.mark.parametrize(
    ("ext", "subtype"), [(".wav", "FLOAT"), (".wav", "PCM_16"), (".flac", None), (".ogg", None)]
)
@pytest.mark.parametrize("block_sec", [0.01, 0.25, 30.0])
def test_native_rate_is_exact(tmp_path, ext, subtype, block_sec):
    if ext == ".ogg" and "OGG" not in sf.available_formats():
        pytest.skip("this libsndfile has no OGG/Vorbis")
    p = _noise(tmp_path / f"a{ext}", 22050, 12347, subtype=subtype)  # 12347 is prime
    ref = load_audio(p)
    blocks = _blocks(p, block_sec=block_sec)
    block = math.floor(block_sec * 22050 + 1e-6)
    assert all(len(b) == block for b in blocks[:-1]) and 0 < len(blocks[-1]) <= block
    np.testing.assert_array_equal(np.concatenate(blocks), ref)


def test_native_rate_given_explicitly_and_stereo_downmix(tmp_path):
    p = _noise(tmp_path / "stereo.flac", 16000, 8001, channels=3, subtype="PCM_24")
    ref = load_audio(p)
    np.testing.assert_array_equal(np.concatenate(_blocks(p, sample_rate=16000, block_sec=0.1)), ref)
    assert len(ref) == 8001


def test_mp3_matches_to_rounding(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    p = _noise(tmp_path / "a.mp3", 44100, 44100 + 11, subtype=None)
    ref = load_audio(p)
    got = np.concatenate(_blocks(p, block_sec=0.1))
    # libsndfile's MP3 decoder rounds a little differently depending on the read size
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-6


@pytest.mark.parametrize(
    ("orig", "new"),
    [(44100, 16000), (22050, 16000), (8000, 16000), (48000, 16000), (11025, 16000), (16000, 44100)],
)
@pytest.mark.parametrize("seconds", [0.0003, 0.07, 2.3])
def test_resampled_matches_whole_file(tmp_path, orig, new, seconds):
    # lengths that are no multiple of the filter period (441 at 44.1 kHz -> 16 kHz, 3 at 48 kHz)
    n = round(orig * seconds) + 7
    p = _noise(tmp_path / "a.wav", orig, n)
    ref = load_audio(p, sample_rate=new)
    assert len(ref) == math.ceil(n * new / orig)
    # tiny blocks put a seam every period (and inside the filter's reach of both ends)
    for block_sec in (0.002, 0.05, 1.0, 30.0):
        blocks = _blocks(p, sample_rate=new, block_sec=block_sec)
        got = np.concatenate(blocks)
        assert got.shape == ref.shape, block_sec
        assert np.abs(got - ref).max() <= 1e-5, block_sec
        if block_sec >= 0.05:  # above one period, no block exceeds block_sec of output
            assert max(len(b) for b in blocks) <= block_sec * new


def test_resampled_stereo_flac(tmp_path):
    p = _noise(tmp_path / "a.flac", 44100, 44100 + 333, channels=2, subtype="PCM_16")
    ref = load_audio(p, sample_rate=16000)
    got = np.concatenate(_blocks(p, sample_rate=16000, block_sec=0.2))
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5


# ---- bounded memory


def test_ten_minute_file_is_read_in_bounded_blocks(tmp_path, monkeypatch):
    sr, minutes, block_sec = 16000, 10, 5.0
    n = sr * 60 * minutes + 123
    p = tmp_path / "long.wav"
    ramp = ((np.arange(sr * 60) % 1000) / 1000 - 0.5).astype(np.float32)
    with sf.SoundFile(p, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for _ in range(minutes):
            f.write(ramp)
        f.write(ramp[:123])

    asked = []
    read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        asked.append(frames)
        return read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    t0 = time.perf_counter()
    total, count = 0, 0
    for block in iter_audio(p, block_sec=block_sec):
        assert len(block) <= block_sec * sr
        # the content is the file's: the ramp continues across block seams
        expected = ((np.arange(total, total + len(block)) % (sr * 60)) % 1000) / 1000 - 0.5
        np.testing.assert_allclose(block, expected, atol=1 / 32768)
        total += len(block)
        count += 1
    assert total == n and count == math.ceil(n / (block_sec * sr))
    # never a whole-file read (frames=-1), never more than a block at a time
    assert asked and all(0 < frames <= block_sec * sr for frames in asked)
    assert time.perf_counter() - t0 < 30


def test_long_resampled_stream_keeps_block_size(tmp_path):
    sr = 44100
    p = tmp_path / "long.wav"
    with sf.SoundFile(p, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for i in range(60):
            f.write(np.full(sr, (i % 7) / 10, np.float32))
    lengths = [len(b) for b in iter_audio(p, sample_rate=16000, block_sec=5.0)]
    assert max(lengths) <= 5 * 16000 and len(lengths) == 12
    assert sum(lengths) == 60 * 16000


# ---- errors before the first block


def _call_error(path: Path, **kw) -> AudioLoadError:
    """The error must come from the call itself, with no iteration."""
    with pytest.raises(AudioLoadError) as info:
        iter_audio(path, **kw)
    assert info.value.path == path
    return info.value


def test_bad_files_fail_at_the_call(tmp_path):
    assert "not found" in _call_error(tmp_path / "nope.wav").reason
    (tmp_path / "dir.wav").mkdir()
    assert "directory" in _call_error(tmp_path / "dir.wav").reason
    (tmp_path / "empty.flac").touch()
    assert "empty (0 bytes)" in _call_error(tmp_path / "empty.flac").reason
    (tmp_path / "page.wav").write_text("<html><body>404 Not Found</body></html>\n" * 5)
    assert "not an audio file" in _call_error(tmp_path / "page.wav").reason
    (tmp_path / "notes.txt").write_text("hello")
    assert "unsupported extension '.txt'" in _call_error(tmp_path / "notes.txt").reason
    (tmp_path / "noise.flac").write_bytes(b"fLaC" + np.random.default_rng(0).bytes(400))
    _call_error(tmp_path / "noise.flac")
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    assert _call_error(tmp_path / "zero.wav").reason == load_audio_error(tmp_path / "zero.wav")


def load_audio_error(path: Path) -> str:
    with pytest.raises(AudioLoadError) as info:
        load_audio(path)
    return info.value.reason


def test_bad_arguments(tmp_path, write_tone):
    p = write_tone(tmp_path / "a.wav")
    for kw in ({"sample_rate": 0}, {"block_sec": 0}, {"block_sec": -1.0}, {"block_sec": math.nan}):
        with pytest.raises(ValueError, match="positive"):
            iter_audio(p, **kw)


# ---- errors in the data


@pytest.mark.parametrize("sample_rate", [None, 8000])
def test_nan_names_the_time_of_the_first_bad_sample(tmp_path, sample_rate):
    p = tmp_path / "nan.wav"
    x = np.full(16000 * 4, 0.1, np.float32)
    x[[40000, 48000]] = [np.nan, np.inf]  # 2.5 s and 3.0 s
    sf.write(p, x, 16000, subtype="FLOAT")
    out = []
    with pytest.raises(AudioLoadError, match=r"NaN/Inf sample at 2\.500 s") as info:
        for block in iter_audio(p, sample_rate=sample_rate, block_sec=1.0):
            out.append(block)
    assert info.value.path == p and str(info.value).startswith(f"{p}: ")
    # the clean blocks before it came out (the resampler reads one block ahead)
    assert 1 <= len(out) <= 2 and np.isfinite(np.concatenate(out)).all()


def test_truncated_wav_yields_what_is_there_and_warns(tmp_path):
    p = _noise(tmp_path / "cut.wav", 16000, 32000, subtype="PCM_16")  # 2.0 s
    whole = load_audio(p)
    data_offset = p.stat().st_size - 2 * 32000
    p.write_bytes(p.read_bytes()[: data_offset + 2 * 12000])  # keep 0.75 s
    with pytest.warns(AudioTruncatedWarning, match=r"1\.250 s missing") as record:
        got = np.concatenate(_blocks(p, block_sec=0.5))
    assert str(p) in str(record[0].message)
    np.testing.assert_array_equal(got, whole[:12000])


def test_complete_files_do_not_warn(tmp_path):
    p = _noise(tmp_path / "a.wav", 16000, 16001, subtype="PCM_24")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(len(b) for b in iter_audio(p, block_sec=0.3)) == 16001


def test_truncated_flac_raises_like_load_audio(tmp_path):
    p = _noise(tmp_path / "a.flac", 16000, 48000, subtype="PCM_16")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(AudioLoadError, match="corrupt or truncated") as info:
        for _ in iter_audio(p, block_sec=0.25):
            pass
    assert "decoding stopped at" in info.value.reason


# ---- ffmpeg path, through a stand-in executable


def _fake_tool(tmp_path: Path, name: str, body: str) -> Path:
    exe = tmp_path / name
    exe.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def _use(monkeypatch, **tools: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: str(tools[name]) if name in tools else None)


def test_ffmpeg_output_is_streamed_in_blocks(tmp_path, monkeypatch):
    exe = _fake_tool(
        tmp_path,
        "ffmpeg",
        "import array\n"
        "args = sys.argv[1:]\n"
        "assert args[args.index('-ar') + 1] == '8000' and args[-3:] == ['-f', 'f32le', '-']\n"
        "x = array.array('f', [i / 10000 for i in range(8000)])\n"
        "for _ in range(3):\n"
        "    sys.stdout.buffer.write(x.tobytes())\n"
        "sys.stdout.buffer.write(b'\\x00\\x00')",  # a torn last sample is dropped
    )
    _use(monkeypatch, ffmpeg=exe)
    p = tmp_path / "clip.m4a"
    p.write_bytes(b"not really aac")
    blocks = _blocks(p, sample_rate=8000, block_sec=0.7)
    assert [len(b) for b in blocks] == [5600] * 4 + [1600]
    got = np.concatenate(blocks)
    np.testing.assert_array_equal(got, load_audio(p, sample_rate=8000))
    np.testing.assert_allclose(got[8000:8003], [0, 1e-4, 2e-4], atol=1e-7)


def test_ffmpeg_failure_comes_before_any_block(tmp_path, monkeypatch):
    exe = _fake_tool(tmp_path, "ffmpeg", "sys.stderr.write('moov atom not found\\n'); sys.exit(1)")
    _use(monkeypatch, ffmpeg=exe)
    p = tmp_path / "broken.mp4"
    p.write_bytes(b"junk")
    it = iter_audio(p, sample_rate=16000)
    with pytest.raises(AudioLoadError, match=r"ffmpeg could not decode it \(moov atom not found\)"):
        next(it)


def test_ffmpeg_stops_when_the_caller_stops(tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    exe = _fake_tool(
        tmp_path,
        "ffmpeg",
        f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "while True:\n    sys.stdout.buffer.write(bytes(4000))",
    )
    _use(monkeypatch, ffmpeg=exe)
    p = tmp_path / "endless.webm"
    p.write_bytes(b"junk")
    it = iter_audio(p, sample_rate=1000, block_sec=1.0)
    assert len(next(it)) == 1000 and len(next(it)) == 1000
    it.close()
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(int(pid_file.read_text()), 0)


def test_broken_container_without_ffmpeg_fails_at_the_call(tmp_path, monkeypatch):
    _use(monkeypatch)
    p = tmp_path / "video.mp4"
    p.write_bytes(b"junk")
    # PyAV reads containers in process: a broken one fails at the call, with its reason
    assert "not an audio file" in _call_error(p, sample_rate=16000).reason


@pytest.mark.skipif(not HAS_FFMPEG, reason="ffmpeg is not installed on this machine")
def test_real_ffmpeg_container_matches_load_audio(tmp_path):
    import subprocess

    src = _noise(tmp_path / "src.wav", 44100, 44100 * 2 + 5)
    p = tmp_path / "clip.mka"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-c:a", "flac", str(p)], check=True
    )
    ref = load_audio(p, sample_rate=16000)
    got = np.concatenate(_blocks(p, sample_rate=16000, block_sec=0.3))
    np.testing.assert_array_equal(got, ref)
    assert audio_duration(p) == pytest.approx(2.0, abs=0.01)


# ---- audio_duration


def test_duration_from_the_header(tmp_path, write_tone):
    assert audio_duration(write_tone(tmp_path / "a.wav", sr=16000, seconds=1.25)) == 1.25
    assert audio_duration(write_tone(tmp_path / "a.flac", sr=44100, seconds=0.5)) == 0.5
    with pytest.raises(AudioLoadError, match="not found"):
        audio_duration(tmp_path / "missing.wav")


def test_duration_of_a_container(tmp_path, monkeypatch):
    p = tmp_path / "video.mp4"
    p.write_bytes(b"junk")
    _use(monkeypatch)
    with pytest.raises(AudioLoadError, match="not an audio file"):  # neither PyAV nor ffprobe
        audio_duration(p)
    probe = _fake_tool(
        tmp_path,
        "ffprobe",
        "assert 'format=duration' in sys.argv\nprint('3723.250000')",
    )
    _use(monkeypatch, ffprobe=probe)
    assert audio_duration(p) == 3723.25
    probe.write_text(f"#!{sys.executable}\nprint('N/A')\n")
    assert audio_duration(p) is None
    probe.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write('Invalid data\\n'); sys.exit(1)\n"
    )
    with pytest.raises(AudioLoadError, match=r"ffprobe could not read it \(Invalid data\)"):
        audio_duration(p)
