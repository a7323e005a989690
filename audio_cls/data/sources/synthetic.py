"""Synthetic sound events: a small dataset generated on the spot, for demos, tests and smoke runs.

Up to ten classes of synthesised events (impact, footsteps, knock, tone, sweep, noise_burst,
chirp, hum, click_train, siren). Each clip holds one event, at a random time, duration, pitch
and level, over coloured background noise (a random white/pink/brown mix) at a random SNR, and
is then scaled to a random peak level. Loudness and energy alone do not tell the classes apart,
and low SNRs make some clips hard, so a model has something to learn, yet a small CNN trains
on it in minutes on a CPU.

Generation is deterministic: clip ``i`` of class ``c`` comes from a numpy Generator seeded with
``(seed, c, i)``, so the same settings give the same bytes on every machine with the same numpy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from audio_cls.data.sources._common import check_num_folds, existing_names, split_folds
from audio_cls.data.sources.base import ClipSource, Manifest, ManifestError
from audio_cls.data.sources.manifest import CSVManifest

__all__ = ["SYNTHETIC_CLASSES", "Synthetic"]

#: Class names in label order; ``num_classes=C`` uses the first C.
SYNTHETIC_CLASSES = (
    "impact",
    "footsteps",
    "knock",
    "tone",
    "sweep",
    "noise_burst",
    "chirp",
    "hum",
    "click_train",
    "siren",
)
_GENERATOR_VERSION = 1  # bump whenever the audio a seed gives changes
_SETTINGS = "synthetic.json"
_MANIFEST = "manifest.csv"

Gen = np.random.Generator


class Synthetic(ClipSource):
    """Generated sound-event clips written as 16-bit WAV files plus ``manifest.csv``.

    ``prepare`` writes the files once (and again only when the settings change); ``manifest``
    reads them back through ``CSVManifest``. Folds are balanced per class; train on 1..K-2,
    validate on K-1, test on K.

    Args:
        num_classes: How many of ``SYNTHETIC_CLASSES`` to use, 2 to 10.
        clips_per_class: Clips generated for each class.
        clip_sec: Length of every clip in seconds.
        sample_rate: Rate of the written files in Hz.
        snr_db: Range the event-to-background ratio of each clip is drawn from, in dB.
        num_folds: Folds the clips are dealt into (K, at least 3).
        seed: Seed of the whole dataset.
    """

    def __init__(
        self,
        num_classes: int = 8,
        clips_per_class: int = 30,
        clip_sec: float = 2.0,
        sample_rate: int = 16000,
        snr_db: tuple[float, float] = (0.0, 20.0),
        num_folds: int = 5,
        seed: int = 0,
    ) -> None:
        if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
            raise ValueError(
                f"num_classes must be in 2..{len(SYNTHETIC_CLASSES)}, got {num_classes}"
            )
        if clips_per_class < 1:
            raise ValueError(f"clips_per_class must be >= 1, got {clips_per_class}")
        if not 0.25 <= clip_sec <= 600:
            raise ValueError(f"clip_sec must be in 0.25..600 seconds, got {clip_sec}")
        if sample_rate < 4000:
            raise ValueError(f"sample_rate must be >= 4000 Hz, got {sample_rate}")
        if len(snr_db) != 2 or snr_db[0] > snr_db[1]:
            raise ValueError(f"snr_db must be (low, high) with low <= high, got {snr_db}")
        check_num_folds(num_folds)
        self.num_classes = num_classes
        self.clips_per_class = clips_per_class
        self.clip_sec = float(clip_sec)
        self.sample_rate = sample_rate
        self.snr_db = (float(snr_db[0]), float(snr_db[1]))
        self.num_folds = num_folds
        self.seed = seed
        self.default_folds = split_folds(num_folds)

    @property
    def class_names(self) -> list[str]:
        return list(SYNTHETIC_CLASSES[: self.num_classes])

    def settings(self) -> dict:
        """What the generated files depend on; stored next to them to detect stale data."""
        return {
            "generator": _GENERATOR_VERSION,
            "num_classes": self.num_classes,
            "clips_per_class": self.clips_per_class,
            "clip_sec": self.clip_sec,
            "sample_rate": self.sample_rate,
            "snr_db": list(self.snr_db),
            "num_folds": self.num_folds,
            "seed": self.seed,
        }

    def clip(self, class_index: int, clip_index: int) -> np.ndarray:
        """Clip ``clip_index`` of class ``class_index`` as float32 in [-1, 1], shape ``(time,)``."""
        rng = np.random.default_rng([self.seed, class_index, clip_index])
        sr = self.sample_rate
        n = round(self.clip_sec * sr)
        event = _GENERATORS[SYNTHETIC_CLASSES[class_index]](rng, sr, n)[:n]
        event = event / (np.sqrt(np.mean(event**2)) + 1e-12)
        start = int(rng.integers(0, n - len(event) + 1))
        snr = rng.uniform(*self.snr_db)
        x = _background(rng, n, sr) * 10 ** (-snr / 20)  # unit-RMS event over it
        x[start : start + len(event)] += event
        peak = 10 ** (rng.uniform(-20.0, -1.0) / 20)  # random level: loudness tells nothing
        return (x * (peak / (np.abs(x).max() + 1e-12))).astype(np.float32)

    def prepare(self, root: Path) -> None:
        root = Path(root)
        if self._up_to_date(root):
            return
        root.mkdir(parents=True, exist_ok=True)
        marker = root / _SETTINGS
        if marker.exists():  # our own files from other settings: start clean
            marker.unlink(missing_ok=True)
            shutil.rmtree(root / "audio", ignore_errors=True)
        rows = []
        for c, name in enumerate(self.class_names):
            folder = root / "audio" / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(self.clips_per_class):
                pcm = np.round(self.clip(c, i) * 32767).astype(np.int16)
                sf.write(folder / f"{name}_{i:03d}.wav", pcm, self.sample_rate, subtype="PCM_16")
                fold = (i + c) % self.num_folds + 1
                rows.append((f"audio/{name}/{name}_{i:03d}.wav", name, fold, f"{name}_{i:03d}"))
        _write_atomic(root / _MANIFEST, _csv_text(("path", "label", "fold", "clip_id"), rows))
        # written last: its presence means the set is complete
        _write_atomic(marker, json.dumps(self.settings(), indent=2) + "\n")

    def manifest(self, root: Path) -> Manifest:
        root = Path(root)
        if not self._settings_match(root):
            raise ManifestError(
                f"{root}: no synthetic data generated with these settings; call prepare(root) "
                "first (the data module does so before fit/test), or use another --data.root"
            )
        reader = CSVManifest(_MANIFEST, num_folds=self.num_folds, classes=self.class_names)
        return reader.manifest(root)

    def _settings_match(self, root: Path) -> bool:
        try:
            return json.loads((root / _SETTINGS).read_text()) == self.settings()
        except (OSError, ValueError):
            return False

    def _up_to_date(self, root: Path) -> bool:
        if not (self._settings_match(root) and (root / _MANIFEST).is_file()):
            return False
        for name in self.class_names:
            present = existing_names(root / "audio" / name)
            if any(f"{name}_{i:03d}.wav" not in present for i in range(self.clips_per_class)):
                return False
        return True


def _csv_text(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- signal building blocks (float64, arbitrary scale; the clip is normalised afterwards)


def _t(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _fade(x: np.ndarray, sr: int, attack: float, release: float) -> np.ndarray:
    """Raised-cosine onset and offset ramps, so events do not start with a click."""
    n = len(x)
    a, r = min(int(attack * sr), n // 2), min(int(release * sr), n // 2)
    env = np.ones(n)
    if a:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r:
        env[n - r :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1) / r)
    return x * env


def _band_noise(rng: Gen, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, n)


def _fmax(sr: int) -> float:
    return 0.45 * sr  # keep every partial below Nyquist, whatever the rate


def _seconds(rng: Gen, lo: float, hi: float, n_max: int, sr: int) -> int:
    """Random duration in samples, clipped to the clip length."""
    return max(1, min(int(rng.uniform(lo, hi) * sr), n_max))


def _place(events: list[tuple[float, np.ndarray]], sr: int, n_max: int) -> np.ndarray:
    """Sum events at onsets (seconds) into one buffer that ends with the last event."""
    end = max(int(t * sr) + len(e) for t, e in events)
    out = np.zeros(min(end, n_max))
    for t, e in events:
        i = int(t * sr)
        if i < len(out):
            out[i : i + len(e)] += e[: len(out) - i]
    return out


def _background(rng: Gen, n: int, sr: int) -> np.ndarray:
    """Unit-RMS noise with a random mix of white, pink (1/f) and brown (1/f^2) power spectra."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[0] = 0
    f = np.fft.rfftfreq(n, 1 / sr)
    f[0] = f[1] if n > 1 else 1.0
    mix = np.zeros(n)
    for w, shape in zip(rng.dirichlet([1.0, 1.0, 1.0]), (1.0, f**-0.5, f**-1.0)):
        c = np.fft.irfft(spec * shape, n)
        mix += w * c / (np.sqrt(np.mean(c**2)) + 1e-12)
    return mix / (np.sqrt(np.mean(mix**2)) + 1e-12)


# ---- one generator per class: (rng, sample rate, max samples) -> event


def _impact(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    n = _seconds(rng, 0.3, 0.8, n_max, sr)
    t = _t(n, sr)
    crack = rng.standard_normal(n) * np.exp(-t / rng.uniform(0.003, 0.02))
    thump = np.sin(2 * np.pi * rng.uniform(40, 120) * t + rng.uniform(0, 2 * np.pi))
    thump *= np.exp(-t / rng.uniform(0.05, 0.2))
    return rng.uniform(0.3, 1.0) * crack + rng.uniform(0.5, 1.5) * thump


def _footsteps(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    step = rng.uniform(0.35, 0.6)
    fits = int((n_max / sr - 0.2) / step) + 1
    k = max(1, min(int(rng.integers(2, 6)), fits))
    cutoff = rng.uniform(150, 500)
    events = []
    for j in range(k):
        m = int(0.2 * sr)
        t = _t(m, sr)
        env = np.minimum(t / 0.005, 1.0) * np.exp(-t / rng.uniform(0.02, 0.06))
        body = np.sin(2 * np.pi * rng.uniform(60, 150) * t)
        thud = 4 * _band_noise(rng, m, sr, 20, cutoff) + body
        onset = j * step * rng.uniform(0.9, 1.1) if j else 0.0
        events.append((onset, thud * env * 10 ** (rng.uniform(-3, 3) / 20)))
    return _place(events, sr, n_max)


def _knock(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    f0 = min(rng.uniform(300, 900), _fmax(sr) / 2.3)
    gap = rng.uniform(0.08, 0.2)
    events = []
    for j in range(int(rng.integers(2, 5))):
        m = int(0.08 * sr)
        t = _t(m, sr)
        tau = rng.uniform(0.008, 0.025)
        tap = np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 2.3 * f0 * t)
        tap = tap * np.exp(-t / tau) + 0.3 * rng.standard_normal(m) * np.exp(-t / 0.001)
        events.append((j * gap * rng.uniform(0.85, 1.15), tap * rng.uniform(0.6, 1.0)))
    return _place(events, sr, n_max)


def _tone(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    n = _seconds(rng, 0.4, 1.5, n_max, sr)
    t = _t(n, sr)
    f0, decay = rng.uniform(300, 1500), rng.uniform(0.3, 0.7)
    x = np.zeros(n)
    for h in range(1, int(rng.integers(1, 6)) + 1):
        if h * f0 < _fmax(sr):
            x += decay ** (h - 1) * np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi))
    return _fade(x, sr, rng.uniform(0.01, 0.05), rng.uniform(0.01, 0.05))


def _sweep(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    n = _seconds(rng, 0.5, 1.5, n_max, sr)
    t = _t(n, sr)
    lo, hi = rng.uniform(200, 800), rng.uniform(1500, min(5000, _fmax(sr)))
    a, b = (lo, hi) if rng.random() < 0.5 else (hi, lo)
    u = t / t[-1] if n > 1 else t
    freq = a + (b - a) * u if rng.random() < 0.5 else a * (b / a) ** u
    return _fade(np.sin(2 * np.pi * np.cumsum(freq) / sr), sr, 0.02, 0.02)


def _noise_burst(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    n = _seconds(rng, 0.2, 0.8, n_max, sr)
    centre, octaves = rng.uniform(300, min(4000, _fmax(sr) / 1.5)), rng.uniform(0.5, 2.0)
    lo, hi = centre / 2 ** (octaves / 2), min(centre * 2 ** (octaves / 2), _fmax(sr))
    x = _band_noise(rng, n, sr, lo, hi)
    return _fade(x, sr, rng.uniform(0.005, 0.03), rng.uniform(0.005, 0.03))


def _chirp(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    cap = min(7000.0, _fmax(sr))
    gap = rng.uniform(0.06, 0.2)
    events = []
    for j in range(int(rng.integers(3, 9))):
        m = int(rng.uniform(0.02, 0.06) * sr)
        u = np.arange(m) / m
        f_lo, f_hi = rng.uniform(0.3, 0.5) * cap, rng.uniform(0.6, 1.0) * cap
        freq = f_lo + (f_hi - f_lo) * u**2  # fast, accelerating up-chirp
        c = _fade(np.sin(2 * np.pi * np.cumsum(freq) / sr), sr, 0.003, 0.005)
        events.append((j * gap * rng.uniform(0.8, 1.2), c * rng.uniform(0.5, 1.0)))
    return _place(events, sr, n_max)


def _hum(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    dur = n_max / sr
    n = _seconds(rng, min(1.0, dur) * 0.9, dur, n_max, sr)
    t = _t(n, sr)
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    x = np.zeros(n)
    for h in range(1, 7):
        x += rng.uniform(0.1, 1.0) / (1 + (h % 2 == 0)) * np.sin(2 * np.pi * h * f0 * t)
    x *= 1 + rng.uniform(0, 0.3) * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)
    return _fade(x, sr, rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2))


def _click_train(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    n = _seconds(rng, 0.3, 1.5, n_max, sr)
    period = 1 / rng.uniform(5, 40)
    m = max(2, int(0.003 * sr))
    decay = np.exp(-_t(m, sr) / 0.0005)
    events = [
        (k * period * rng.uniform(0.98, 1.02), rng.standard_normal(m) * decay)
        for k in range(max(1, int(n / sr / period)))
    ]
    return _place(events, sr, n_max)


def _siren(rng: Gen, sr: int, n_max: int) -> np.ndarray:
    dur = n_max / sr
    n = _seconds(rng, min(1.0, dur), max(min(1.0, dur), dur), n_max, sr)
    t = _t(n, sr)
    carrier, depth = rng.uniform(500, 1500), rng.uniform(100, 500)
    rate, phi = rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
    freq = carrier + depth * np.sin(2 * np.pi * rate * t + phi)  # slow FM
    phase = 2 * np.pi * np.cumsum(freq) / sr
    x = np.zeros(n)
    for h in range(1, int(rng.integers(1, 4)) + 1):
        if h * (carrier + depth) < _fmax(sr):
            x += np.sin(h * phase) / h
    return _fade(x, sr, 0.05, 0.05)


_GENERATORS: dict[str, Callable[[Gen, int, int], np.ndarray]] = {
    "impact": _impact,
    "footsteps": _footsteps,
    "knock": _knock,
    "tone": _tone,
    "sweep": _sweep,
    "noise_burst": _noise_burst,
    "chirp": _chirp,
    "hum": _hum,
    "click_train": _click_train,
    "siren": _siren,
}
