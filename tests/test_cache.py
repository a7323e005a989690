"""audio_cls.data.cache: decode once, memory-map after, invalidate on change, write atomically."""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import audio_cls.data.cache as cache_mod
from audio_cls.data.cache import WaveformCache, default_cache_dir
from audio_cls.io import AudioLoadError, load_audio


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Records every decode the cache performs."""
    calls: list[Path] = []

    def counting(path, sample_rate=None):
        calls.append(Path(path))
        return load_audio(path, sample_rate)

    monkeypatch.setattr(cache_mod, "load_audio", counting)
    return calls


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.rglob("*") if p.is_file())


def test_hit_returns_same_data_memory_mapped(tmp_path, write_tone, decodes):
    src = write_tone(tmp_path / "a.wav", sr=16000, seconds=0.3)
    cache = WaveformCache(tmp_path / "cache", 16000)
    assert src not in cache
    first = cache.load(src)
    assert src in cache
    second = cache.load(src)
    assert decodes == [src]  # decoded once
    assert isinstance(second.base.obj, mmap.mmap) and not second.flags.writeable
    np.testing.assert_array_equal(second, np.load(_entries(tmp_path / "cache")[0]))
    assert second.dtype == np.float32 and second.shape == (4800,)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, load_audio(src, 16000))


def test_entries_per_sample_rate(tmp_path, write_tone):
    src = write_tone(tmp_path / "a.wav", sr=16000, seconds=0.5)
    assert WaveformCache(tmp_path / "c", 8000).load(src).shape == (4000,)
    assert WaveformCache(tmp_path / "c", 16000).load(src).shape == (8000,)
    assert len(_entries(tmp_path / "c")) == 2


def test_invalidated_when_source_changes(tmp_path, write_tone, decodes):
    src = write_tone(tmp_path / "a.wav", seconds=0.2, amplitude=0.5)
    cache = WaveformCache(tmp_path / "cache", 16000)
    old = np.array(cache.load(src))
    st = os.stat(src)
    write_tone(src, seconds=0.2, amplitude=0.25)  # same size: only mtime tells
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert src not in cache
    new = cache.load(src)
    assert len(decodes) == 2
    np.testing.assert_allclose(new, old / 2, atol=1e-4)
    assert len(_entries(tmp_path / "cache")) == 1  # the stale entry was replaced


def test_failed_write_leaves_no_files(tmp_path, write_tone, monkeypatch):
    src = write_tone(tmp_path / "a.wav")
    cache = WaveformCache(tmp_path / "cache", 16000)

    def interrupted(f, arr, **kw):
        f.write(b"\x93NUMPY half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.load(src)
    assert _entries(tmp_path / "cache") == []
    assert src not in cache


def test_no_temporary_files_and_unreadable_entry_rebuilt(tmp_path, write_tone, decodes):
    src = write_tone(tmp_path / "a.wav")
    cache = WaveformCache(tmp_path / "cache", 16000)
    cache.load(src)
    (entry,) = _entries(tmp_path / "cache")
    assert entry.suffix == ".npy" and not entry.name.startswith(".")
    entry.write_bytes(b"")  # what a power cut can leave
    np.testing.assert_array_equal(cache.load(src), load_audio(src, 16000))
    assert len(decodes) == 2
    assert _entries(tmp_path / "cache") == [entry]


def test_concurrent_loads_agree(tmp_path, write_tone):
    src = write_tone(tmp_path / "a.wav", seconds=0.2)
    cache = WaveformCache(tmp_path / "cache", 8000)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: np.array(cache.load(src)), range(8)))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert len(_entries(tmp_path / "cache")) == 1


def test_warm_returns_failures(tmp_path, write_tone, decodes):
    good = [write_tone(tmp_path / f"g{i}.wav", seconds=0.1, freq=300 + i) for i in range(3)]
    text = tmp_path / "bad.wav"
    text.write_text("not audio at all\n")
    missing = tmp_path / "missing.flac"
    cache = WaveformCache(tmp_path / "cache", 16000)
    cache.load(good[0])

    failures = cache.warm([good[0], text, good[1], missing, good[2], good[1]], num_workers=2)
    assert [p for p, _ in failures] == [text, missing]
    assert all(isinstance(e, AudioLoadError) for _, e in failures)
    assert "not an audio file" in failures[0][1].reason
    assert "not found" in failures[1][1].reason
    assert all(g in cache for g in good)
    assert sorted(decodes[1:]) == sorted([text, good[1], missing, good[2]])  # each miss once
    assert cache.warm(good) == []


def test_load_error_names_the_file(tmp_path):
    cache = WaveformCache(tmp_path / "cache", 16000)
    with pytest.raises(AudioLoadError, match="not found"):
        cache.load(tmp_path / "missing.wav")
    assert "missing.wav" not in cache


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AUDIO_CLS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AUDIO_CLS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "audio-cls"


def test_bad_sample_rate(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        WaveformCache(tmp_path, 0)


def test_memory_mode_decodes_once_and_writes_nothing(tmp_path, write_tone, decodes):
    path = write_tone(tmp_path / "a.wav", sr=8000, seconds=0.25)
    cache = WaveformCache(None, 16000)
    first = cache.load(path)
    assert len(first) == 4000 and path in cache
    assert cache.load(path) is first
    assert cache.warm([path]) == []
    assert len(decodes) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]
