"""Decode any audio file (or a video's audio track) to mono float32 at a chosen rate.

Audio formats go through soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF...);
containers that libsndfile cannot read (MP4, M4A, WebM, MKV, MOV, AAC, WMA...) go through an
``ffmpeg`` subprocess. Every failure raises ``AudioLoadError`` naming the file, the reason and
what to do about it, so a bad file in a dataset of thousands is found in one run.

This module imports nothing from the rest of the project.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "AUDIO_EXTENSIONS",
    "FFMPEG_EXTENSIONS",
    "SOUNDFILE_EXTENSIONS",
    "AudioLoadError",
    "audio_info",
    "load_audio",
]

# fmt: off
#: Decoded by soundfile (libsndfile >= 1.1 reads MP3 and Opus).
SOUNDFILE_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64",
})
#: Decoded by an ffmpeg subprocess (video containers and codecs libsndfile lacks).
FFMPEG_EXTENSIONS = frozenset({
    ".mp4", ".m4a", ".m4v", ".aac", ".webm", ".mkv", ".mka", ".mov", ".avi", ".wma", ".wmv",
    ".3gp", ".amr", ".ac3",
})
# fmt: on
#: Every extension ``load_audio`` accepts, lowercase with the dot.
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS

_FFMPEG_HELP = (
    "install ffmpeg (`apt-get install ffmpeg` or `conda install -c conda-forge ffmpeg`) "
    "so that it is on PATH, or convert the file to WAV/FLAC first"
)


class AudioLoadError(ValueError):
    """A file could not be decoded; the message is ``"{path}: {reason}"``.

    Attributes:
        path: The file that failed.
        reason: Why, and what to do about it.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep the two-argument form picklable (DataLoader workers)
        return type(self), (self.path, self.reason)


def load_audio(path: str | os.PathLike, sample_rate: int | None = None) -> np.ndarray:
    """Decode a file to a mono float32 waveform.

    Channels are averaged. When ``sample_rate`` differs from the file's rate the waveform is
    resampled (band-limited sinc, ``torchaudio.functional.resample``).

    Args:
        path: Audio file, or a video whose first audio track is wanted.
        sample_rate: Target rate in Hz; None keeps the file's own rate.

    Returns:
        1-D array of shape ``(time,)``.

    Raises:
        AudioLoadError: The file is missing, empty, not audio, corrupt, holds no samples or
            non-finite samples, or its format needs ffmpeg and ffmpeg is not installed.
    """
    path = Path(path)
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    ext = _check_file(path)
    if ext in FFMPEG_EXTENSIONS:
        wav, rate = _decode_ffmpeg(path, sample_rate), sample_rate
    else:
        try:
            wav, rate = _decode_soundfile(path)
        except AudioLoadError:
            # libsndfile builds without Opus exist; ffmpeg reads it when present
            if ext != ".opus" or shutil.which("ffmpeg") is None:
                raise
            wav, rate = _decode_ffmpeg(path, sample_rate), sample_rate

    if wav.size == 0:
        raise AudioLoadError(path, "holds no audio samples (0 frames); remove it from the dataset")
    if not np.isfinite(wav).all():
        bad = int(np.size(wav) - np.count_nonzero(np.isfinite(wav)))
        raise AudioLoadError(
            path, f"holds {bad} NaN/Inf sample(s); the file is damaged, re-export or remove it"
        )
    if sample_rate is not None and rate is not None and rate != sample_rate:
        wav = _resample(wav, rate, sample_rate)
    return wav


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """Read ``(sample_rate, frames, channels)`` from a file's header without decoding it.

    Raises:
        AudioLoadError: As ``load_audio``; formats that need ffmpeg are not supported here.
    """
    path = Path(path)
    ext = _check_file(path)
    if ext in FFMPEG_EXTENSIONS:
        raise AudioLoadError(
            path, f"audio_info reads soundfile formats only; '{ext}' needs ffmpeg/ffprobe"
        )
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioLoadError(path, _soundfile_reason(path, e)) from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def _check_file(path: Path) -> str:
    """Fail early, with a precise reason, on paths that cannot be audio; returns the extension."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioLoadError(path, "file not found; check the path and the dataset root") from None
    except OSError as e:
        raise AudioLoadError(path, f"cannot access the file ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioLoadError(path, "is a directory, not an audio file")
    ext = path.suffix.lower()
    if ext not in AUDIO_EXTENSIONS:
        raise AudioLoadError(
            path,
            f"unsupported extension '{ext or path.name}'; convert it to WAV or FLAC "
            f"(accepted: {' '.join(sorted(AUDIO_EXTENSIONS))})",
        )
    if st.st_size == 0:
        raise AudioLoadError(path, "file is empty (0 bytes); re-download or re-extract it")
    return ext


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioLoadError(path, _soundfile_reason(path, e)) from None
    # (time, channels) -> (time,); a single channel needs a contiguous copy, not a mean
    wav = data[:, 0].copy() if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return wav, int(rate)


def _soundfile_reason(path: Path, err: Exception) -> str:
    msg = str(getattr(err, "error_string", "") or err)
    if _looks_like_text(path):
        return (
            "is not an audio file (it holds text; an HTML error page saved by a failed "
            "download looks like this); re-download it"
        )
    if "not recognised" in msg.lower() or "unknown format" in msg.lower():
        return f"is not in a recognised audio format ({msg}); check the file type"
    return f"cannot be decoded, the file is corrupt or truncated ({msg}); re-download it"


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return sum(c.isprintable() or c.isspace() for c in text) >= 0.95 * len(text)


def _decode_ffmpeg(path: Path, sample_rate: int | None) -> np.ndarray:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioLoadError(path, f"decoding '{path.suffix.lower()}' needs ffmpeg; {_FFMPEG_HELP}")
    if sample_rate is None:
        sample_rate = _probe_rate(path)
    cmd = [
        ffmpeg,
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-f",
        "f32le",
        "-",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False)
    except OSError as e:
        raise AudioLoadError(path, f"could not run {ffmpeg} ({e}); {_FFMPEG_HELP}") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        raise AudioLoadError(
            path, f"ffmpeg could not decode it ({reason}); the file is corrupt or has no audio"
        )
    n = len(proc.stdout) // 4 * 4  # a partial trailing sample would break frombuffer
    return np.frombuffer(proc.stdout[:n], dtype="<f4").astype(np.float32)


def _probe_rate(path: Path) -> int:
    """Native rate of a container's first audio stream (ffprobe ships with ffmpeg)."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        raise AudioLoadError(
            path, "pass a sample_rate: ffprobe, which reads the native rate, is missing"
        )
    cmd = [
        ffprobe,
        "-v",
        "error",
        "-select_streams",
        "a:0",
        "-show_entries",
        "stream=sample_rate",
        "-of",
        "csv=p=0",
        str(path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return int(proc.stdout.strip().splitlines()[0])
    except (IndexError, ValueError):
        raise AudioLoadError(path, "ffprobe found no audio stream in it") from None


def _resample(wav: np.ndarray, orig: int, new: int) -> np.ndarray:
    # torch is imported here so that reading files and headers stays light
    import torch
    from torchaudio.functional import resample

    with torch.inference_mode():
        out = resample(torch.from_numpy(wav), orig, new)
    return out.numpy()
