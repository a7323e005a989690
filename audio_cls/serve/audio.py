"""Request bodies -> mono float32 waveforms at the model's rate, or a :class:`RequestError`.

Uploaded files are decoded by :mod:`audio_cls.io` (WAV, FLAC, OGG, MP3...; containers such as
MP4, M4A and WebM in process, through PyAV); raw PCM bodies are little-endian float32 or int16.
Every refusal carries the HTTP status and a message that says what to send instead.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

from audio_cls.io import AUDIO_EXTENSIONS, MAX_SAMPLE, AudioLoadError, load_audio

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "PCM_FORMATS",
    "RequestError",
    "check_sample_rate",
    "check_samples",
    "decode_pcm",
    "decode_upload",
    "resample",
]

#: Raw PCM encodings: name -> (numpy dtype, scale to -1..1).
PCM_FORMATS: dict[str, tuple[str, float]] = {"f32le": ("<f4", 1.0), "s16le": ("<i2", 1 / 32768)}
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000

# What libsndfile's format sniffing reports -> an extension load_audio accepts
_SNIFFED = {"WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3"}
# What FFmpeg's probing (PyAV) reports for containers -> an extension load_audio accepts; a
# browser's MediaRecorder uploads WebM or MP4 named "blob"
_SNIFFED_CONTAINERS = {"matroska": ".mkv", "mov": ".mp4", "aac": ".aac", "avi": ".avi"}


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with.

    Attributes:
        status: 413, 415, 422...
        message: What was wrong and what to send instead.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_sample_rate(sample_rate: int | None, what: str = "raw PCM") -> int:
    """``sample_rate`` if it is a plausible audio rate, else a 422 naming the range."""
    if sample_rate is None:
        raise RequestError(
            422,
            f"{what} needs ?sample_rate=<Hz> (the rate the samples were recorded at, e.g. "
            f"16000); it cannot be read from headerless samples",
        )
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise RequestError(
            422,
            f"sample_rate={sample_rate} is not an audio rate; give one between "
            f"{MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz",
        )
    return sample_rate


def resample(wav: np.ndarray, orig: int, new: int) -> np.ndarray:
    """``wav`` from ``orig`` Hz to ``new`` Hz (band-limited sinc, as :func:`load_audio`)."""
    if orig == new or wav.size == 0:
        return wav
    import torch
    from torchaudio.functional import resample as _resample

    with torch.inference_mode():
        return _resample(torch.from_numpy(np.ascontiguousarray(wav)), orig, new).numpy()


def check_samples(wav: np.ndarray) -> None:
    """Refuse NaN/Inf and absurd magnitudes, which would turn every score into NaN."""
    finite = np.isfinite(wav)
    if not finite.all():
        bad = int(wav.size - np.count_nonzero(finite))
        raise RequestError(422, f"the audio holds {bad} NaN/Inf sample(s); send finite samples")
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak > MAX_SAMPLE:
        raise RequestError(
            422,
            f"the audio holds a sample of absolute value {peak:.3g}, beyond {MAX_SAMPLE:.0e}; "
            f"send samples in a normal range (about -1..1 for float32)",
        )


def decode_pcm(body: bytes, fmt: str, sample_rate: int | None, model_rate: int) -> np.ndarray:
    """Raw little-endian PCM -> float32 at ``model_rate``.

    Raises:
        RequestError: 422 for an unknown format, a missing or implausible rate, an empty body,
            a length that is not whole samples, or non-finite samples.
    """
    if fmt not in PCM_FORMATS:
        raise RequestError(
            422, f"format={fmt!r} is not a raw PCM format; use one of {', '.join(PCM_FORMATS)}"
        )
    rate = check_sample_rate(sample_rate)
    dtype, scale = PCM_FORMATS[fmt]
    width = np.dtype(dtype).itemsize
    if not body:
        raise RequestError(422, "the request body is empty: it holds no audio samples")
    if len(body) % width:
        raise RequestError(
            422,
            f"the body's {len(body)} bytes are not whole {fmt} samples ({width} bytes each); "
            f"check ?format= (f32le: float32, s16le: int16)",
        )
    wav = np.frombuffer(body, dtype=dtype).astype(np.float32)
    if scale != 1.0:
        wav *= scale
    check_samples(wav)
    return resample(wav, rate, model_rate)


def _suffix(filename: str, data: bytes) -> str:
    """The extension to decode an upload by: its name's, or sniffed from its header."""
    suffix = Path(filename or "").suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return suffix
    import soundfile as sf

    try:
        fmt = sf.info(io.BytesIO(data)).format
    except Exception:  # not something libsndfile recognises either
        fmt = ""
    if fmt in _SNIFFED:
        return _SNIFFED[fmt]
    container = _sniff_container(data)
    if container:
        return container
    raise RequestError(
        415,
        f"{filename or 'the upload'}: unsupported file type "
        f"'{suffix or 'no extension'}'; send WAV, FLAC, OGG, MP3, or a video or audio "
        f"container such as MP4, M4A or WebM (or raw PCM as application/octet-stream)",
    )


def _sniff_container(data: bytes) -> str:
    """The extension of a container that FFmpeg recognises in ``data``; '' when none."""
    import av

    try:
        with av.open(io.BytesIO(data), metadata_errors="replace") as container:
            names = container.format.name.split(",")  # e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    except Exception:  # not a container either; any failure of the probe means that
        return ""
    return next((_SNIFFED_CONTAINERS[n] for n in names if n in _SNIFFED_CONTAINERS), "")


def decode_upload(filename: str, data: bytes, model_rate: int) -> np.ndarray:
    """An uploaded audio file -> float32 at ``model_rate``.

    Raises:
        RequestError: 415 for a file type the server cannot decode, 422 for an empty, corrupt
            or frameless file, or a video without an audio track.
    """
    name = Path(filename or "upload").name
    if not data:
        raise RequestError(422, f"{name}: the file is empty (0 bytes); it holds no audio")
    suffix = _suffix(name, data)
    with tempfile.TemporaryDirectory(prefix="audio-cls-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            wav = load_audio(path, model_rate)
        except AudioLoadError as err:
            # the reason without the temporary path, which means nothing to the client
            raise RequestError(422, f"{name}: {err.reason}") from None
    return wav
