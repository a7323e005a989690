"""Decode any audio file (or a video's audio track) to mono float32 at a chosen rate.

Audio formats go through soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF...);
containers that libsndfile cannot read (MP4, M4A, WebM, MKV, MOV, AAC, WMA...) are decoded in
process by PyAV, whose wheels bundle FFmpeg's libraries: the first audio track, at its own
rate, downmixed by averaging the channels and resampled with the same filter as every other
file, so a clip sounds the same to a model whichever container it came in. The ``ffmpeg``
program, when installed, is only a fallback for files that PyAV cannot open. Every failure
raises ``AudioLoadError`` naming the file, the reason and what to do about it, so a bad file
in a dataset of thousands is found in one run.

``load_audio`` decodes a whole file; ``iter_audio`` yields the same waveform block by block in
bounded memory, for recordings too long to hold at once.

This module imports nothing from the rest of the project.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "AUDIO_EXTENSIONS",
    "FFMPEG_EXTENSIONS",
    "MAX_SAMPLE",
    "PADDING_SEC",
    "SOUNDFILE_EXTENSIONS",
    "AudioLoadError",
    "AudioTruncatedWarning",
    "audio_duration",
    "audio_info",
    "iter_audio",
    "load_audio",
    "printable_path",
]

# fmt: off
#: Decoded by soundfile (libsndfile >= 1.1 reads MP3 and Opus).
SOUNDFILE_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64",
})
#: Decoded by FFmpeg's libraries through PyAV (video containers and codecs libsndfile lacks).
FFMPEG_EXTENSIONS = frozenset({
    ".mp4", ".m4a", ".m4v", ".aac", ".webm", ".mkv", ".mka", ".mov", ".avi", ".wma", ".wmv",
    ".3gp", ".amr", ".ac3", ".mpg", ".mpeg", ".flv", ".ogv",
})
# fmt: on
#: Every extension ``load_audio`` accepts, lowercase with the dot.
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS

_FFMPEG_HELP = (
    "install ffmpeg (`apt-get install ffmpeg` or `conda install -c conda-forge ffmpeg`) "
    "so that it is on PATH, or convert the file to WAV/FLAC first"
)
_NO_SAMPLES = "holds no audio samples (0 frames); remove it from the dataset"
_TEXT_FILE = (
    "is not an audio file (it holds text; an HTML error page saved by a failed download looks "
    "like this); re-download it"
)
#: Decoded audio beyond a container's declared duration, up to this long, is codec padding
#: (an AAC encoder fills its last 1024-sample frame) and is cut; audio that falls short of the
#: declared duration by more than this is reported as missing.
PADDING_SEC = 0.1
#: Block size in which ``load_audio`` assembles a container's audio (bounds the peak memory to
#: the mono waveform plus one block of all channels).
_LOAD_BLOCK_SEC = 10.0
#: Largest absolute sample value accepted. Float files may legitimately exceed 1.0 (a mix
#: exported unclipped), but a power spectrum squares a sum over an FFT window: with n samples
#: of peak p a bin reaches (n * p) ** 2, which for p = 1e15 stays below float32's maximum
#: (~3.4e38) for windows up to ~18 000 samples. Larger values turn every log-mel into inf/NaN
#: and can only be damage or a file that was never scaled as audio.
MAX_SAMPLE = 1e15


def printable_path(path: str | os.PathLike) -> str:
    """``path`` as text that any stream or UTF-8 file accepts.

    File names that are not valid UTF-8 reach Python as lone surrogates, which raise
    ``UnicodeEncodeError`` when printed to a UTF-8 file; their bytes are shown as ``\\xNN``.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _sf_path(path: Path) -> str | bytes:
    """What soundfile should open: bytes on POSIX, since it encodes a str strictly as UTF-8 and a
    file name that is not valid UTF-8 would raise UnicodeEncodeError there."""
    return os.fsencode(path) if os.name == "posix" else str(path)


class AudioLoadError(ValueError):
    """A file could not be decoded; the message is ``"{path}: {reason}"``.

    Attributes:
        path: The file that failed.
        reason: Why, and what to do about it.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{printable_path(self.path)}: {reason}")

    def __reduce__(self):  # keep the two-argument form picklable (DataLoader workers)
        return type(self), (self.path, self.reason)


class AudioTruncatedWarning(UserWarning):
    """A file holds less audio than its header promises: a WAV or a container cut off, or a
    container with damaged packets (skipped); ``load_audio`` and ``iter_audio`` return what it
    holds and warn with this."""


def load_audio(path: str | os.PathLike, sample_rate: int | None = None) -> np.ndarray:
    """Decode a file to a mono float32 waveform.

    Channels are averaged. When ``sample_rate`` differs from the file's rate the waveform is
    resampled (band-limited sinc, ``torchaudio.functional.resample``). A WAV cut short (its
    header promises more frames than it holds) gives what it holds and warns with
    ``AudioTruncatedWarning``, naming how many seconds are missing.

    Containers (``FFMPEG_EXTENSIONS``) are decoded by PyAV: their first audio track, cut to the
    track's declared duration when the decoder adds up to ``PADDING_SEC`` of codec padding. One
    cut short (or whose data stops reading part way), or with damaged packets (skipped), gives
    what it holds and warns with ``AudioTruncatedWarning``. A file PyAV cannot open goes to the
    ``ffmpeg`` program when it is installed.

    Args:
        path: Audio file, or a video whose first audio track is wanted.
        sample_rate: Target rate in Hz; None keeps the file's own rate.

    Returns:
        1-D array of shape ``(time,)``.

    Raises:
        AudioLoadError: The file is missing, unreadable (permissions), empty, not audio,
            corrupt, a video without an audio track, holds no samples, non-finite samples or
            samples beyond ``MAX_SAMPLE``.
    """
    path = Path(path)
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    ext = _check_file(path)
    if ext in FFMPEG_EXTENSIONS:
        wav, rate = _decode_container(path, sample_rate)
    else:
        try:
            wav, rate = _decode_soundfile(path)
        except AudioLoadError as err:
            # libsndfile builds without MP3 or Opus exist; FFmpeg's decoders read those
            if not _soundfile_lacks(ext):
                raise
            wav, rate = _decode_container(path, sample_rate, err)

    if wav.size == 0:
        raise AudioLoadError(path, _NO_SAMPLES)
    _check_samples(path, wav)
    if ext in (".wav", ".wave") and rate is not None:
        # libsndfile clips a WAV's frame count to the bytes present, so read the header ourselves
        promised = _wav_promised_frames(path) or 0
        if promised > len(wav):
            _warn_truncated(path, promised, len(wav), rate, stacklevel=2)
    if sample_rate is not None and rate is not None and rate != sample_rate:
        wav = _resample(wav, rate, sample_rate)
    return wav


def iter_audio(
    path: str | os.PathLike, sample_rate: int | None = None, block_sec: float = 30.0
) -> Iterator[np.ndarray]:
    """Decode a file block by block, in memory bounded by a few blocks whatever its length.

    The blocks are what ``load_audio(path, sample_rate)`` returns, cut into consecutive pieces:
    their concatenation equals it exactly when no resampling is needed, and to within float32
    rounding (below 1e-6) when it is, or for MP3, whose decoder rounds by read size. Soundfile
    formats are read ``block_sec`` at a time and containers decoded by PyAV frame by frame
    (memory bounded by a block, however long the file), both resampled chunk by chunk with the
    same filter as ``load_audio``; the ffmpeg fallback streams ffmpeg's output, which ffmpeg
    resamples itself.

    Problems the header shows (missing, empty, not audio, corrupt header, no audio track,
    0 frames, a first audio packet that cannot be decoded) raise from this call itself, before
    any block. Problems in the data raise when the iteration reaches them, after the blocks
    before them were yielded: non-finite samples (the message gives the time of the first one),
    decoder errors of soundfile formats, ffmpeg failures. A file cut short (its header promises
    more frames than it holds; a container whose data stops reading part way) yields what it
    holds and then warns with ``AudioTruncatedWarning``, naming how many seconds are missing; a
    container's damaged packets are skipped and named in that warning too.

    Args:
        path: Audio file, or a video whose first audio track is wanted.
        sample_rate: Target rate in Hz; None keeps the file's own rate.
        block_sec: Length of each block in seconds of output. The last block is shorter; when
            resampling, blocks are a whole number of filter periods (``orig // gcd(orig, new)``
            input samples, 10 ms for 44.1 kHz -> 16 kHz), at least one.

    Yields:
        1-D float32 arrays of shape ``(time,)``, mono, at ``sample_rate``.

    Raises:
        AudioLoadError: As ``load_audio``; see above for when.
        ValueError: ``sample_rate`` or ``block_sec`` is not positive.
    """
    path = Path(path)
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not (block_sec > 0 and math.isfinite(block_sec)):
        raise ValueError(f"block_sec must be positive, got {block_sec}")
    ext = _check_file(path)
    if ext in FFMPEG_EXTENSIONS:
        return _iter_container(path, sample_rate, block_sec)
    try:
        info = _soundfile_info(path)
    except AudioLoadError as err:
        # as in load_audio: libsndfile builds without MP3 or Opus exist
        if not _soundfile_lacks(ext):
            raise
        return _iter_container(path, sample_rate, block_sec, err)
    if info.frames == 0:
        raise AudioLoadError(path, _NO_SAMPLES)
    return _iter_soundfile(path, info, sample_rate, block_sec)


def audio_duration(path: str | os.PathLike) -> float | None:
    """Length of a file in seconds, from its header, without decoding it.

    For a container: the audio track's own duration, else (a track that records none) the
    container's, which may include a longer video; ``ffprobe``'s answer when PyAV cannot open
    the file and ffprobe is installed.

    Args:
        path: Audio file, or a video whose first audio track is wanted.

    Returns:
        Seconds; None when the container records no duration (a live stream's dump).

    Raises:
        AudioLoadError: As ``load_audio`` for files that cannot be audio, whose header is
            corrupt, or that have no audio track.
    """
    path = Path(path)
    ext = _check_file(path)
    if ext not in FFMPEG_EXTENSIONS:
        try:
            info = _soundfile_info(path)
        except AudioLoadError:
            if not _soundfile_lacks(ext):
                raise
        else:
            return info.frames / info.samplerate
    try:
        container, stream = _open_av(path)
    except _PyAVError as e:
        if shutil.which("ffprobe") is None:
            raise AudioLoadError(path, e.reason) from None
        return _probe_duration(path)
    with container:
        return _av_duration(container, stream)


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """Read ``(sample_rate, frames, channels)`` from a file's header without decoding it.

    For a container these describe its first audio track, and ``frames`` is its duration times
    its rate (``audio_duration``), 0 when the container records no duration: an estimate
    within a codec frame or so of what ``load_audio`` returns at that rate.

    Raises:
        AudioLoadError: As ``load_audio``, and for a container that PyAV cannot open.
    """
    path = Path(path)
    ext = _check_file(path)
    if ext not in FFMPEG_EXTENSIONS:
        try:
            info = _soundfile_info(path)
        except AudioLoadError:
            if not _soundfile_lacks(ext):
                raise
        else:
            return int(info.samplerate), int(info.frames), int(info.channels)
    try:
        container, stream = _open_av(path)
    except _PyAVError as e:
        raise AudioLoadError(path, e.reason) from None
    with container:
        ctx = stream.codec_context
        rate, channels = int(ctx.sample_rate), int(ctx.channels)
        seconds = _av_duration(container, stream)
    return rate, round(seconds * rate) if seconds else 0, channels


def _check_file(path: Path) -> str:
    """Fail early, with a precise reason, on paths that cannot be audio; returns the extension."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioLoadError(path, "file not found; check the path and the dataset root") from None
    except PermissionError:
        raise AudioLoadError(path, _PERMISSION_FOLDER) from None
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
    # libsndfile reports an unreadable file as a bare "System error", which reads like damage
    reason = _open_failure(path)
    if reason:
        raise AudioLoadError(path, reason)
    return ext


_PERMISSION_FILE = (
    "permission denied: this user may not read the file; fix its permissions "
    "(e.g. chmod a+r) or run as a user that can read it"
)
_PERMISSION_FOLDER = (
    "permission denied: a folder on its path may not be entered by this user; fix the folders' "
    "permissions (e.g. chmod a+rx) or run as a user that can read them"
)


def _open_failure(path: Path) -> str:
    """Why ``path`` cannot be opened for reading ('' when it can)."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError:
        return _PERMISSION_FILE
    except OSError as e:
        return f"cannot open the file ({e.strerror}); check that it is a readable file"
    return ""


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        data, rate = sf.read(_sf_path(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioLoadError(path, _soundfile_reason(path, e)) from None
    return _downmix(data), int(rate)


def _soundfile_info(path: Path):
    try:
        return sf.info(_sf_path(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioLoadError(path, _soundfile_reason(path, e)) from None


def _downmix(data: np.ndarray) -> np.ndarray:
    """(time, channels) -> (time,); a single channel needs a contiguous copy, not a mean."""
    return data[:, 0].copy() if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)


def _check_samples(path: Path, wav: np.ndarray, rate: int | None = None, offset: int = 0) -> None:
    """Refuse NaN/Inf and values beyond ``MAX_SAMPLE``; a whole file reports the count, a block
    (``rate`` given) the time."""
    # one pass over the samples in the common case: NaN makes the peak NaN, inf makes it inf,
    # and both fail the comparison
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak <= MAX_SAMPLE:
        return
    finite = np.isfinite(wav)
    if finite.all():
        where = ""
        if rate is not None:
            first = offset + int(np.argmax(np.abs(wav) > MAX_SAMPLE))
            where = f" (first at {first / rate:.3f} s)"
        raise AudioLoadError(
            path,
            f"holds a sample of absolute value {peak:.3g}{where}, beyond {MAX_SAMPLE:.0e}: its "
            "spectrum would overflow to inf/NaN; the file is damaged or not scaled as audio, "
            "re-export it with samples in a normal range (about -1..1)",
        )
    if rate is None:
        bad = int(np.size(wav) - np.count_nonzero(finite))
        reason = f"holds {bad} NaN/Inf sample(s)"
    else:
        first = offset + int(np.argmin(finite))
        reason = f"holds a NaN/Inf sample at {first / rate:.3f} s"
    raise AudioLoadError(path, f"{reason}; the file is damaged, re-export or remove it")


def _soundfile_reason(path: Path, err: Exception) -> str:
    msg = str(getattr(err, "error_string", "") or err)
    opened = _open_failure(path)  # libsndfile says only "System error" for these
    if opened:
        return opened
    if _looks_like_text(path):
        return _TEXT_FILE
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


def _decode_ffmpeg(path: Path, sample_rate: int | None) -> tuple[np.ndarray, int]:
    cmd, rate = _ffmpeg_command(path, sample_rate)
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False)
    except OSError as e:
        raise AudioLoadError(path, f"could not run {cmd[0]} ({e}); {_FFMPEG_HELP}") from None
    if proc.returncode != 0:
        raise _ffmpeg_failure(path, proc.returncode, proc.stderr)
    n = len(proc.stdout) // 4 * 4  # a partial trailing sample would break frombuffer
    return np.frombuffer(proc.stdout[:n], dtype="<f4").astype(np.float32), rate


def _ffmpeg_command(path: Path, sample_rate: int | None) -> tuple[list[str], int]:
    """The ffmpeg call that writes mono float32 at ``sample_rate`` (native when None)."""
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
    return cmd, sample_rate


def _ffmpeg_failure(path: Path, returncode: int, stderr: bytes) -> AudioLoadError:
    detail = stderr.decode(errors="replace").strip().splitlines()
    reason = detail[-1] if detail else f"exit status {returncode}"
    return AudioLoadError(
        path, f"ffmpeg could not decode it ({reason}); the file is corrupt or has no audio"
    )


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


def _probe_duration(path: Path) -> float | None:
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    cmd = [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        raise AudioLoadError(
            path, f"ffprobe could not read it ({reason}); the file is corrupt or has no audio"
        )
    try:
        return float(proc.stdout.strip().splitlines()[0])
    except (IndexError, ValueError):  # "N/A": a stream without a known length
        return None


# ---- containers, through PyAV
#
# The ffmpeg program stays as a fallback, used only when PyAV cannot open a file: PyAV's wheels
# bundle a build of FFmpeg's libraries chosen for licensing and size, so a system ffmpeg (a
# newer release, or one built with more demuxers and decoders) can read some files that the
# bundled build refuses.


class _PyAVError(Exception):
    """PyAV could not open a file or decode its audio; ``reason`` is the message for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _soundfile_lacks(ext: str) -> bool:
    """Whether this libsndfile build cannot read ``ext`` at all (builds without MP3 or Opus
    exist); such files go to PyAV instead."""
    if ext == ".mp3":
        return "MP3" not in sf.available_formats()
    if ext in (".ogg", ".oga", ".opus"):
        return "OGG" not in sf.available_formats() or "OPUS" not in sf.available_subtypes("OGG")
    return False


def _av_reason(err: BaseException) -> str:
    """FFmpeg's own words for an error, without the file name that PyAV appends."""
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _open_av(path: Path):
    """Open ``path`` with PyAV; returns ``(container, its first audio stream)``.

    Raises:
        AudioLoadError: The file has no audio track (nothing another decoder could fix).
        _PyAVError: PyAV cannot open it, or has no decoder for its audio codec.
    """
    import av  # here: it loads FFmpeg's libraries, which WAV and FLAC never need

    try:
        # metadata_errors: a tag in Latin-1 must not stop the audio from being read
        container = av.open(os.fspath(path), metadata_errors="replace")
    except (av.FFmpegError, OSError, ValueError) as e:
        if _looks_like_text(path):
            raise _PyAVError(_TEXT_FILE) from None
        raise _PyAVError(
            f"cannot be read as a media file, it is corrupt or truncated ({_av_reason(e)}); "
            "re-download it"
        ) from None
    try:
        streams = container.streams
        if not streams.audio:
            found = ", ".join(f"{s.type} ({_codec_name(s)})" for s in streams) or "none"
            raise AudioLoadError(
                path,
                f"has no audio track (its streams: {found}); there is nothing to hear in it, "
                "remove it from the dataset or use a copy with its sound",
            )
        stream = streams.audio[0]
        ctx = stream.codec_context
        if ctx is None or not ctx.sample_rate:
            raise _PyAVError(
                f"its audio codec '{_codec_name(stream)}' has no decoder in PyAV's FFmpeg "
                f"build; convert the file to WAV or FLAC, or {_FFMPEG_HELP}"
            )
    except BaseException:
        container.close()
        raise
    return container, stream


def _codec_name(stream) -> str:
    ctx = stream.codec_context
    return getattr(ctx, "name", None) or "unknown codec"


def _av_declared_seconds(stream) -> float | None:
    """The audio track's own duration: its header's, or Matroska's per-track DURATION tag."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "")  # "00:01:02.500000000"
    try:
        h, m, sec = tag.split(":")
        seconds = 3600 * int(h) + 60 * int(m) + float(sec)
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def _av_duration(container, stream) -> float | None:
    """The audio track's duration, else the container's (which may include a longer video)."""
    seconds = _av_declared_seconds(stream)
    if seconds is None and container.duration and container.duration > 0:
        seconds = container.duration / 1_000_000  # in AV_TIME_BASE units
    return seconds


def _frame_array(frame, channels: int) -> np.ndarray:
    """A decoded frame as ``(channels, samples)`` float32 in -1..1, whatever its format."""
    x = frame.to_ndarray()  # planar: (channels, n); packed: (1, n * channels)
    if not frame.format.is_planar:
        x = x.reshape(-1, frame.layout.nb_channels).T
    if x.dtype == np.uint8:
        x = (x.astype(np.float32) - 128.0) / 128.0
    elif x.dtype.kind == "i":
        x = x.astype(np.float32) / float(2 ** (8 * x.itemsize - 1))
    elif x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.shape[0] != channels:  # the layout changed mid-stream: keep its mix, in as many rows
        x = np.repeat(x.mean(axis=0, keepdims=True, dtype=np.float32), channels, axis=0)
    return x


def _mono(x: np.ndarray) -> np.ndarray:
    """(channels, time) -> (time,), as ``_downmix`` does for soundfile's (time, channels)."""
    return x[0].copy() if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)


class _AvAudio:
    """The first audio track of a container, decoded by PyAV into mono float32 blocks.

    Opening decodes up to the first frame, so that a file PyAV cannot read fails here, before
    any block is yielded and while the ffmpeg fallback can still take it. ``rate`` is the
    track's own rate (that of its first decoded frame).
    """

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        self._errors = (av.FFmpegError, OSError, ValueError)
        self._container, self._stream = _open_av(path)
        try:
            self.channels = max(1, int(self._stream.codec_context.channels))
            self.read_error = ""  # why reading the file stopped early
            self.bad_packets = 0  # packets the decoder refused (skipped)
            self.bad_reason = ""  # the decoder's reason for the first of them
            self.first_bad = "the first"  # and where that one lies
            self.decoded_after_bad = False  # whether audio followed a skipped packet
            self._frames = self._decode()
            self._first = next(self._frames, None)
            if self._first is None:
                why = self.read_error or self.bad_reason
                if why:
                    raise _PyAVError(
                        f"its audio cannot be decoded, the file is corrupt or truncated ({why}); "
                        "re-download it"
                    )
                raise AudioLoadError(path, _NO_SAMPLES)
            self.rate = int(self._first.sample_rate)
            seconds = _av_declared_seconds(self._stream)
            self.declared = round(seconds * self.rate) if seconds else None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._container.close()

    def _decode(self) -> Iterator:
        """Decoded frames. Reading stops at a demuxer error (a file cut short); a packet the
        decoder refuses is skipped, as the ffmpeg program does, and counted."""
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except self._errors as e:
                self.read_error = _av_reason(e)
                break
            try:
                frames = self._stream.decode(packet)
            except self._errors as e:
                if not self.bad_packets:
                    self.bad_reason = _av_reason(e)
                    if packet.pts is not None and packet.time_base:
                        self.first_bad += f" at {float(packet.pts * packet.time_base):.3f} s"
                self.bad_packets += 1
                continue
            if frames and self.bad_packets:
                self.decoded_after_bad = True
            yield from frames
        with contextlib.suppress(*self._errors):  # reading stopped early: what the decoder holds
            yield from self._stream.decode(None)

    def _arrays(self) -> Iterator[np.ndarray]:
        """``(channels, n)`` float32 pieces in order, cut at the declared duration when what
        follows it is no more than ``PADDING_SEC`` (codec padding). Sets ``self.done``."""
        limit = self.declared
        slack = round(PADDING_SEC * self.rate)
        held: list[np.ndarray] = []  # past the declared end: padding, unless it runs on
        n_held = 0
        self.done = 0
        frame = self._first
        self._first = None  # let it go once converted
        while frame is not None:
            if frame.sample_rate != self.rate:
                raise AudioLoadError(
                    self.path,
                    f"its audio changes sample rate part way ({self.rate} -> "
                    f"{frame.sample_rate} Hz at {self.done / self.rate:.3f} s); convert it to "
                    "WAV or FLAC at one rate first",
                )
            try:
                x = _frame_array(frame, self.channels)
            except ValueError:  # a sample format numpy has no type for (64-bit integers)
                raise AudioLoadError(
                    self.path,
                    f"its audio comes in sample format '{frame.format.name}', which cannot be "
                    "read here; convert it to WAV or FLAC first",
                ) from None
            frame = next(self._frames, None)
            if limit is None or self.done + n_held + x.shape[1] <= limit:
                self.done += x.shape[1]
                yield x
                continue
            if not held and self.done < limit:
                yield x[:, : limit - self.done]
                x = x[:, limit - self.done :]
                self.done = limit
            held.append(x)
            n_held += x.shape[1]
            if n_held > slack:  # more than padding: the declared duration is wrong, keep it all
                yield from held
                self.done += n_held
                held, n_held, limit = [], 0, None

    def blocks(self, block: int) -> Iterator[np.ndarray]:
        """Mono float32 blocks of ``block`` frames at ``rate`` (the last one shorter); warns at
        the end when audio is missing or damaged. Closes the container when done."""
        try:
            parts: list[np.ndarray] = []
            have = start = 0
            for x in self._arrays():
                parts.append(x)
                have += x.shape[1]
                if have < block:
                    continue
                data = np.concatenate(parts, axis=1)
                whole = have // block * block
                for i in range(0, whole, block):
                    wav = _mono(data[:, i : i + block])
                    _check_samples(self.path, wav, self.rate, start)
                    start += block
                    yield wav
                parts = [data[:, whole:]] if whole < have else []
                have -= whole
            if have:
                wav = _mono(np.concatenate(parts, axis=1))
                _check_samples(self.path, wav, self.rate, start)
                yield wav
        finally:
            self.close()
        if self.done == 0:
            raise AudioLoadError(self.path, _NO_SAMPLES)
        self._warn_missing()

    def _warn_missing(self) -> None:
        rate, done = self.rate, self.done
        short = (self.declared or 0) - done
        missing = ""
        if short > round(PADDING_SEC * rate):
            missing = (
                f"{short / rate:.3f} s missing (the header promises {self.declared / rate:.3f} s, "
                f"the data ends at {done / rate:.3f} s)"
            )
        # skipped packets followed by audio explain a shortfall; a refused last packet is
        # only the cut-off end of a truncated file
        damaged = self.bad_packets > 0 and (
            self.decoded_after_bad or not (missing or self.read_error)
        )
        problems = []
        if self.read_error or (missing and not damaged):
            what = "truncated" + (f", {missing}" if missing else "")
            if self.read_error:
                what += f" (reading stopped at {done / rate:.3f} s: {self.read_error})"
            problems.append(what)
        if damaged:
            what = (
                f"damaged, {self.bad_packets} audio packet(s) could not be decoded and were "
                f"skipped ({self.first_bad}: {self.bad_reason})"
            )
            problems.append(what + (f", {missing}" if missing and not self.read_error else ""))
        if problems:
            warnings.warn(
                f"{printable_path(self.path)}: {'; '.join(problems)}; using what it holds, "
                "re-download it",
                AudioTruncatedWarning,
                stacklevel=3,
            )


def _container_reader(path: Path, fallback: AudioLoadError | None = None) -> _AvAudio | None:
    """PyAV's reader for ``path``; None when PyAV cannot read it and the ffmpeg program is
    installed to try instead.

    Raises:
        AudioLoadError: Why not, when neither can: ``fallback`` (soundfile's reason for a file
            it lacks the codec for) or PyAV's reason.
    """
    try:
        return _AvAudio(path)
    except _PyAVError as e:
        if shutil.which("ffmpeg") is not None:
            return None
        raise fallback or AudioLoadError(path, e.reason) from None


def _decode_container(
    path: Path, sample_rate: int | None, fallback: AudioLoadError | None = None
) -> tuple[np.ndarray, int]:
    """A container's first audio track, mono, at its own rate (PyAV) or at ``sample_rate``
    (the ffmpeg fallback resamples); returns ``(waveform, its rate)``."""
    reader = _container_reader(path, fallback)
    if reader is None:
        return _decode_ffmpeg(path, sample_rate)
    blocks = list(reader.blocks(_block_frames(_LOAD_BLOCK_SEC, reader.rate)))
    return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks)), reader.rate


def _iter_container(
    path: Path, sample_rate: int | None, block_sec: float, fallback: AudioLoadError | None = None
) -> Iterator[np.ndarray]:
    reader = _container_reader(path, fallback)
    if reader is None:
        cmd, rate = _ffmpeg_command(path, sample_rate)
        return _iter_ffmpeg(path, cmd, rate, block_sec)
    return _iter_pyav(reader, sample_rate, block_sec)


def _iter_pyav(reader: _AvAudio, sample_rate: int | None, block_sec: float) -> Iterator[np.ndarray]:
    rate = reader.rate
    if sample_rate is None or sample_rate == rate:
        yield from reader.blocks(_block_frames(block_sec, rate))
        return
    # whole filter periods per chunk, as for soundfile formats
    period = rate // math.gcd(rate, sample_rate)
    chunk = max(1, _block_frames(block_sec, rate) // period) * period
    yield from _resample_stream(reader.blocks(chunk), rate, sample_rate, chunk)


# ---- streaming


def _block_frames(block_sec: float, rate: int) -> int:
    # the epsilon keeps 0.1 s * 44100 Hz at 4410 frames despite float rounding
    return max(1, math.floor(block_sec * rate + 1e-6))


def _iter_soundfile(
    path: Path, info, sample_rate: int | None, block_sec: float
) -> Iterator[np.ndarray]:
    rate = int(info.samplerate)
    if sample_rate is None or sample_rate == rate:
        yield from _read_soundfile(path, info, _block_frames(block_sec, rate))
        return
    g = math.gcd(rate, sample_rate)
    period = rate // g
    # whole periods, so that every chunk starts at the same filter phase as in load_audio
    chunk = max(1, _block_frames(block_sec, rate) // period) * period
    yield from _resample_stream(_read_soundfile(path, info, chunk), rate, sample_rate, chunk)


def _read_soundfile(path: Path, info, block: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of ``block`` frames; warns at the end if the data fell short."""
    rate = int(info.samplerate)
    done = 0
    try:
        f = sf.SoundFile(_sf_path(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioLoadError(path, _soundfile_reason(path, e)) from None
    with f:
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                reason = _soundfile_reason(path, e)
                stop = f"(decoding stopped at {done / rate:.3f} s)"
                raise AudioLoadError(path, f"{reason} {stop}") from None
            if len(data) == 0:
                break
            wav = _downmix(data)
            _check_samples(path, wav, rate, done)
            done += len(wav)
            yield wav
    if done == 0:
        raise AudioLoadError(path, _NO_SAMPLES)
    # libsndfile clips a WAV's frame count to the bytes present, so read the header ourselves
    promised = max(int(info.frames), _wav_promised_frames(path) or 0)
    if promised > done:
        _warn_truncated(path, promised, done, rate, stacklevel=2)


def _warn_truncated(path: Path, promised: int, done: int, rate: int, stacklevel: int) -> None:
    warnings.warn(
        f"{printable_path(path)}: truncated, {(promised - done) / rate:.3f} s missing (the header "
        f"promises {promised / rate:.3f} s, the data ends at {done / rate:.3f} s); using what it "
        "holds, re-download it",
        AudioTruncatedWarning,
        stacklevel=stacklevel + 1,
    )


#: WAVE format tags whose data chunk holds whole frames of ``block_align`` bytes.
_WAV_FRAME_TAGS = frozenset({0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE})


def _wav_promised_frames(path: Path) -> int | None:
    """Frames that a RIFF/WAVE header's data chunk promises; None when it cannot tell."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
                return None
            align = 0
            for _ in range(64):  # a real header has a handful of chunks before "data"
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                size = struct.unpack("<I", chunk[4:])[0]
                if chunk[:4] == b"fmt ":
                    fmt = f.read(size + size % 2)
                    tag, _, _, _, align = struct.unpack("<HHIIH", fmt[:14])
                    if tag not in _WAV_FRAME_TAGS:
                        return None
                elif chunk[:4] == b"data":
                    # 0 and 0xFFFFFFFF are placeholders that recorders write while streaming
                    if align == 0 or size in (0, 0xFFFFFFFF):
                        return None
                    return size // align
                else:
                    f.seek(size + size % 2, os.SEEK_CUR)
    except (OSError, struct.error):
        return None
    return None


def _resample_stream(
    blocks: Iterable[np.ndarray], orig: int, new: int, chunk: int
) -> Iterator[np.ndarray]:
    """Resample a stream chunk by chunk so that the result matches one whole-file call.

    ``torchaudio.functional.resample`` reduces the rates to ``p = orig // g`` and
    ``q = new // g`` and maps every ``p`` input samples to ``q`` output samples with a filter
    reaching ``width`` input samples either side, zero-padding both ends. A chunk that starts on
    a multiple of ``p`` and carries at least ``width`` samples of real context either side (or
    meets the file's end, where the padding is the same) therefore yields exactly the outputs
    that the whole-file call gives for it: ``q`` per ``p`` input samples, from index
    ``start / p * q``. ``chunk`` is a multiple of ``p``.
    """
    import torch
    from torchaudio.transforms import Resample

    g = math.gcd(orig, new)
    p, q = orig // g, new // g
    # the half-width torchaudio uses (lowpass_filter_width=6, rolloff=0.99), in whole periods,
    # plus one period of margin
    width = math.ceil(6 * p / (min(p, q) * 0.99))
    ctx = (math.ceil(width / p) + 1) * p
    # the kernel built once, in float32 like resample() builds it for a float32 waveform
    resampler = Resample(orig, new, dtype=torch.float32)

    buf = np.zeros(0, np.float32)
    buf_start = 0  # input index of buf[0]
    pos = 0  # first input sample whose output is not yet out; a multiple of p

    def run(end: int, hi: int, last: bool) -> np.ndarray:
        lo = max(0, pos - ctx)
        with torch.inference_mode():
            out = resampler(torch.from_numpy(buf[lo - buf_start : hi - buf_start])).numpy()
        # at the file's end keep the tail too: torchaudio's length is ceil(n * q / p)
        return out[(pos - lo) // p * q : None if last else (end - lo) // p * q]

    for block in blocks:
        buf = np.concatenate([buf, block])
        while buf_start + len(buf) >= pos + chunk + ctx:
            yield run(pos + chunk, pos + chunk + ctx, last=False)
            pos += chunk
            # drop what no later chunk needs as left context
            drop = max(0, pos - ctx) - buf_start
            buf, buf_start = buf[drop:], buf_start + drop
    n = buf_start + len(buf)
    while pos < n:
        end = min(pos + chunk, n)
        out = run(end, min(end + ctx, n), last=end == n)
        pos = end
        if out.size:
            yield out


def _iter_ffmpeg(path: Path, cmd: list[str], rate: int, block_sec: float) -> Iterator[np.ndarray]:
    nbytes = 4 * _block_frames(block_sec, rate)
    done = 0
    # stderr to a file: a pipe nobody reads while stdout is consumed could fill and stall ffmpeg
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        except OSError as e:
            raise AudioLoadError(path, f"could not run {cmd[0]} ({e}); {_FFMPEG_HELP}") from None
        try:
            while True:
                raw = proc.stdout.read(nbytes)
                at_end = len(raw) < nbytes
                if at_end:
                    # check the exit status before the last block: a broken file yields nothing
                    returncode = proc.wait()
                    if returncode != 0:
                        err.seek(0)
                        raise _ffmpeg_failure(path, returncode, err.read())
                n = len(raw) // 4 * 4  # a partial trailing sample would break frombuffer
                wav = np.frombuffer(raw[:n], dtype="<f4").astype(np.float32)
                if wav.size:
                    _check_samples(path, wav, rate, done)
                    done += wav.size
                    yield wav
                if at_end:
                    break
        finally:
            # also reached when the caller stops early: do not leave ffmpeg running
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
    if done == 0:
        raise AudioLoadError(path, _NO_SAMPLES)
