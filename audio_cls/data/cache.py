"""Decoded, resampled waveforms kept once on disk and read back memory-mapped.

Decoding an MP3 or resampling 44.1 kHz audio costs far more than a training step needs; the
cache pays it once per (file, sample rate). Entries live at
``<cache_dir>/v1/sr<rate>/<hh>/<key>-<size>-<mtime_ns>.npy``: the key hashes the source's
absolute path, and the source's size and modification time in the name make a changed file
miss (its stale entry is then replaced). Writes go to a temporary file renamed into place, so
readers, DDP ranks included, only ever see whole entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from audio_cls.io import AudioLoadError, AudioTruncatedWarning, load_audio

__all__ = ["WaveformCache", "default_cache_dir"]

_log = logging.getLogger(__name__)
_VERSION = "v2"  # bump when the entry format or the decoding changes (v2: PyAV decodes)
# Python < 3.13 keeps a duplicate descriptor open for every live map
_MMAP_KW = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def default_cache_dir() -> Path:
    """``$AUDIO_CLS_CACHE`` when set, else ``~/.cache/audio-cls``."""
    env = os.environ.get("AUDIO_CLS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "audio-cls"


class WaveformCache:
    """Waveforms at one sample rate, decoded on first use and memory-mapped afterwards.

    Arrays returned by ``load`` are read-only memory maps: slice and copy what you need. On
    Python < 3.13 every live map holds a file descriptor, so do not keep thousands alive at once
    (reloading is cheap: a cached ``load`` takes tens of microseconds).

    Args:
        cache_dir: Folder for the entries; shared safely between processes and runs. None keeps
            the waveforms in this process' memory instead: for one pass over files seen once
            (``audio-cls classify``), where writing them to disk would only cost time.
        sample_rate: Rate every waveform is resampled to, in Hz.
    """

    def __init__(self, cache_dir: str | os.PathLike | None, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = int(sample_rate)
        self._memory: dict[Path, np.ndarray] | None = None
        if cache_dir is None:
            self._memory = {}
            cache_dir = "<memory>"
        self.cache_dir = Path(cache_dir).expanduser()
        self._dir = self.cache_dir / _VERSION / f"sr{self.sample_rate}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.cache_dir)!r}, sample_rate={self.sample_rate})"

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False
        if self._memory is not None:
            return Path(path) in self._memory
        try:
            return self._entry(path)[0].is_file()
        except OSError:
            return False

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """The waveform of ``path``, shape ``(time,)``, decoding it on a miss.

        Raises:
            AudioLoadError: The source cannot be decoded (see ``audio_cls.io.load_audio``).
        """
        if self._memory is not None:
            wav = self._memory.get(Path(path))
            if wav is None:
                wav = self._memory[Path(path)] = load_audio(path, self.sample_rate)
            return wav
        entry, stamp = self._locate(path)
        try:
            return _map(entry)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, EOFError) as e:  # e.g. emptied by a power cut
            _log.warning("rebuilding unreadable cache entry %s (%s)", entry, e)
        wav = self._decode_and_store(path, entry, stamp)
        try:
            return _map(entry)
        except OSError:  # entry not written (source changed while decoding)
            return wav

    def warm(
        self, paths: Iterable[str | os.PathLike], num_workers: int = 2
    ) -> list[tuple[Path, AudioLoadError]]:
        """Decode every path that is not cached yet.

        A file cut short (``AudioTruncatedWarning``: its header promises more than it holds) is
        cached with what it holds and logged as a warning naming it, once per file decoded.

        Args:
            paths: Source files; duplicates and cached files are skipped.
            num_workers: Threads decoding at once (decoders release the GIL).

        Returns:
            ``(path, error)`` for each file that failed, in input order; the rest are cached.
        """
        todo: list[Path] = []
        seen: set[Path] = set()
        for p in map(Path, paths):
            if p not in seen:
                seen.add(p)
                if p not in self:
                    todo.append(p)
        if not todo:
            return []
        _log.info("decoding %d file(s) into %s", len(todo), self._dir)

        def one(p: Path) -> AudioLoadError | None:
            try:
                if self._memory is not None:
                    self.load(p)
                else:
                    self._decode_and_store(p, *self._locate(p))
            except AudioLoadError as e:
                return e
            return None

        # one recorder around the whole pool: catch_warnings is process-wide, not per thread
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AudioTruncatedWarning)
            if num_workers <= 1 or len(todo) == 1:
                results = [one(p) for p in todo]
            else:
                with ThreadPoolExecutor(max_workers=num_workers) as pool:
                    results = list(pool.map(one, todo))
        for w in caught:
            if issubclass(w.category, AudioTruncatedWarning):
                _log.warning("%s", w.message)
            else:  # not ours to swallow
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        failures = [(p, e) for p, e in zip(todo, results) if e is not None]
        if failures:
            _log.warning("%d of %d file(s) could not be decoded", len(failures), len(todo))
        return failures

    def _locate(self, path: str | os.PathLike) -> tuple[Path, tuple[int, int]]:
        try:
            return self._entry(path)
        except OSError as e:
            load_audio(path, self.sample_rate)  # raises the precise reason (missing, ...)
            raise AudioLoadError(path, f"cannot be read ({e.strerror})") from None

    def _entry(self, path: str | os.PathLike) -> tuple[Path, tuple[int, int]]:
        """Entry file for the source as it is now, and the source's (size, mtime_ns)."""
        src = os.path.abspath(path)  # lexical, no syscalls: this runs for every read
        st = os.stat(src)
        key = hashlib.blake2b(src.encode("utf-8", "surrogateescape"), digest_size=10).hexdigest()
        name = f"{key}-{st.st_size}-{st.st_mtime_ns}.npy"
        return self._dir / key[:2] / name, (st.st_size, st.st_mtime_ns)

    def _decode_and_store(
        self, path: str | os.PathLike, entry: Path, stamp: tuple[int, int]
    ) -> np.ndarray:
        wav = load_audio(path, self.sample_rate)
        st = os.stat(path)
        if (st.st_size, st.st_mtime_ns) != stamp:
            return wav  # rewritten while we decoded: caching it under the old stamp would lie
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, wav.astype("<f4", copy=False), allow_pickle=False)
            os.replace(tmp, entry)  # atomic: readers see the old state or the whole entry
        except BaseException:  # also Ctrl-C: never leave the temporary file behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._drop_stale(entry)
        return wav

    @staticmethod
    def _drop_stale(entry: Path) -> None:
        """Remove entries of earlier versions of the same source file."""
        key = entry.name.split("-", 1)[0]
        for old in entry.parent.glob(f"{key}-*.npy"):
            if old != entry:
                with contextlib.suppress(OSError):  # another rank removed it first
                    old.unlink()


def _map(entry: Path) -> np.ndarray:
    """Memory-map a float32 ``.npy`` entry read-only.

    Equivalent to ``np.load(entry, mmap_mode="r")`` for the entries this cache writes, several
    times faster (no header parsing by ``ast``, no ``np.memmap`` subclass), and strict: a
    header that does not match the file's length raises ``ValueError``.
    """
    fd = os.open(entry, os.O_RDONLY)
    try:
        buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ, **_MMAP_KW)  # empty file: ValueError
    finally:
        os.close(fd)
    offset = 10 + int.from_bytes(buf[8:10], "little")  # .npy v1.0: magic, version, header size
    n, rest = divmod(len(buf) - offset, 4)
    header = buf[:offset]
    if (
        header[:8] != b"\x93NUMPY\x01\x00"
        or b"'<f4'" not in header
        or rest
        or n <= 0
        or (b"(%d,)" % n not in header)
    ):
        buf.close()
        raise ValueError("not a float32 vector entry of the expected length")
    return np.frombuffer(buf, dtype="<f4", offset=offset)
