"""audio_cls.io: decoding, downmix, resampling, and a precise error for every bad input."""

from __future__ import annotations

import pickle
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_cls.io import AUDIO_EXTENSIONS, AudioLoadError, audio_info, load_audio


def _error(path: Path, **kw) -> AudioLoadError:
    with pytest.raises(AudioLoadError) as info:
        load_audio(path, **kw)
    err = info.value
    assert err.path == path
    assert str(err) == f"{path}: {err.reason}"
    return err


# ---- bad inputs


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.wav").reason


def test_directory(tmp_path):
    d = tmp_path / "folder.wav"
    d.mkdir()
    assert "directory" in _error(d).reason


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.touch()
    assert "empty (0 bytes)" in _error(p).reason


def test_zero_frames(tmp_path):
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros(0, np.float32), 16000)
    assert "0 frames" in _error(p).reason


def test_text_file_named_wav(tmp_path):
    p = tmp_path / "page.wav"
    p.write_text("<html><body>404 Not Found</body></html>\n" * 5)
    assert "not an audio file" in _error(p).reason


def test_truncated_flac(tmp_path, write_tone):
    p = write_tone(tmp_path / "a.flac", seconds=1.0)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    reason = _error(p).reason
    assert "corrupt or truncated" in reason and "re-download" in reason


def test_garbage_bytes(tmp_path):
    p = tmp_path / "noise.flac"
    p.write_bytes(b"fLaC" + np.random.default_rng(0).bytes(400))
    _error(p)


def test_nan_samples(tmp_path):
    p = tmp_path / "nan.wav"
    x = np.full(100, 0.1, np.float32)
    x[[3, 50]] = [np.nan, np.inf]
    sf.write(p, x, 16000, subtype="FLOAT")
    assert "2 NaN/Inf" in _error(p).reason


def test_unsupported_extension(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    reason = _error(p).reason
    assert "unsupported extension '.txt'" in reason and ".flac" in reason


def test_broken_container_without_ffmpeg(tmp_path, monkeypatch):
    # containers are decoded in process (PyAV): no ffmpeg needed, PyAV's reason is reported
    p = tmp_path / "video.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = _error(p, sample_rate=16000).reason
    assert "corrupt or truncated" in reason and "re-download" in reason
    assert "ffmpeg" not in reason


def test_bad_sample_rate(tmp_path, write_tone):
    with pytest.raises(ValueError, match="positive"):
        load_audio(write_tone(tmp_path / "a.wav"), sample_rate=0)


def test_error_pickles(tmp_path):
    # DataLoader workers send exceptions to the main process by pickling them
    err = pickle.loads(pickle.dumps(AudioLoadError(tmp_path / "x.wav", "broken")))
    assert isinstance(err, ValueError)
    assert (err.path, err.reason) == (tmp_path / "x.wav", "broken")


# ---- ffmpeg path, through a stand-in executable


def _fake_ffmpeg(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "ffmpeg"
    exe.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_ffmpeg_decodes_container(tmp_path, monkeypatch):
    exe = _fake_ffmpeg(
        tmp_path,
        "import array\n"
        "args = sys.argv[1:]\n"
        "assert args[args.index('-ar') + 1] == '8000' and args[args.index('-ac') + 1] == '1'\n"
        "assert args[-3:] == ['-f', 'f32le', '-']\n"
        "sys.stdout.buffer.write(array.array('f', [0.25] * 800).tobytes())",
    )
    monkeypatch.setattr(shutil, "which", lambda name: str(exe) if name == "ffmpeg" else None)
    p = tmp_path / "clip.m4a"
    p.write_bytes(b"not really aac")
    wav = load_audio(p, sample_rate=8000)
    assert wav.dtype == np.float32 and wav.shape == (800,)
    np.testing.assert_allclose(wav, 0.25)


def test_ffmpeg_failure_is_reported(tmp_path, monkeypatch):
    exe = _fake_ffmpeg(tmp_path, "sys.stderr.write('moov atom not found\\n'); sys.exit(1)")
    monkeypatch.setattr(shutil, "which", lambda name: str(exe) if name == "ffmpeg" else None)
    p = tmp_path / "broken.mp4"
    p.write_bytes(b"junk")
    reason = _error(p, sample_rate=16000).reason
    assert "ffmpeg could not decode it (moov atom not found)" in reason


# ---- good inputs


def test_mono_float32_native_rate(tmp_path, write_tone):
    p = write_tone(tmp_path / "a.wav", sr=22050, seconds=0.2)
    wav = load_audio(p)
    assert wav.dtype == np.float32 and wav.ndim == 1 and wav.shape == (4410,)
    assert wav.flags.c_contiguous


def test_stereo_downmix(tmp_path):
    p = tmp_path / "stereo.wav"
    left = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    sf.write(p, np.stack([left, np.full_like(left, 0.2)], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(p), (left + 0.2) / 2, atol=1e-6)


def test_resample_length_and_pitch(tmp_path, write_tone):
    p = write_tone(tmp_path / "a.wav", sr=44100, seconds=1.0, freq=1000.0)
    wav = load_audio(p, sample_rate=16000)
    assert wav.dtype == np.float32 and wav.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wav))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=2)  # 1 Hz bins


@pytest.mark.parametrize("ext", [".flac", ".ogg", ".WAV", ".aiff"])
def test_round_trip(tmp_path, write_tone, ext):
    ref = load_audio(write_tone(tmp_path / "ref.wav", sr=16000, seconds=0.5, subtype="FLOAT"))
    wav = load_audio(write_tone(tmp_path / f"a{ext}", sr=16000, seconds=0.5))
    assert wav.shape == ref.shape
    if ext == ".ogg":  # lossy
        assert np.corrcoef(wav, ref)[0, 1] > 0.99
    else:
        np.testing.assert_allclose(wav, ref, atol=1e-4)


def test_audio_info(tmp_path, write_tone):
    p = write_tone(tmp_path / "a.flac", sr=8000, seconds=0.25, channels=2)
    assert audio_info(p) == (8000, 2000, 2)
    with pytest.raises(AudioLoadError, match="not found"):
        audio_info(tmp_path / "missing.flac")


def test_extensions_are_lowercase_with_dot():
    assert {".wav", ".flac", ".ogg", ".mp3", ".mp4", ".m4a", ".webm"} <= AUDIO_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in AUDIO_EXTENSIONS)
