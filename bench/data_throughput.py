"""Data pipeline throughput: clips/s for the first decode and for cached epochs.

    python bench/data_throughput.py --root path/to/ESC-50-layout [--subset esc10] [--rate 16000]

The first pass decodes (and resamples when the rate differs) every clip into a fresh cache;
the cached passes read every clip back through the cache and cut all of its windows, as an
evaluation epoch does. Figures: median of --repeats passes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from audio_cls.data.cache import WaveformCache
from audio_cls.data.segments import fit_length, window_starts
from audio_cls.data.sources import ESC50


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True)
    parser.add_argument("--subset", default="esc10")
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    clips = ESC50(subset=args.subset, download=False).manifest(Path(args.root)).clips
    paths = [c.path for c in clips]
    window, hop = round(0.96 * args.rate), round(0.48 * args.rate)
    first, cached, windows = [], [], 0
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cache = WaveformCache(tmp, args.rate)
            t = time.perf_counter()
            failures = cache.warm(paths, num_workers=args.workers)
            first.append(len(paths) / (time.perf_counter() - t))
            assert not failures, failures
            t = time.perf_counter()
            windows = 0
            for p in paths:
                x = cache.load(p)
                for s in window_starts(len(x), window, hop):
                    np.array(fit_length(x[s : s + window], window), dtype=np.float32)
                    windows += 1
            cached.append(len(paths) / (time.perf_counter() - t))
    print(
        f"clips: {len(paths)} ({windows} windows of 0.96 s) at {args.rate} Hz, {args.workers} decode threads"
    )
    print(
        f"first decode:  {statistics.median(first):8.0f} clips/s  (median of {args.repeats}, min {min(first):.0f}, max {max(first):.0f})"
    )
    print(
        f"cached epoch:  {statistics.median(cached):8.0f} clips/s  (median of {args.repeats}, min {min(cached):.0f}, max {max(cached):.0f})"
    )


if __name__ == "__main__":
    main()
