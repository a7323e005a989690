"""Inference throughput of MelCNN over ESC-10 in 0.96 s segments (50 % overlap).

    python bench/inference_throughput.py --root path/to/ESC-50-layout [--threads 2]

End to end: ``audio-cls classify``'s path (``audio_cls.commands.classify.predict_inputs``) on
the audio folder, nothing cached: the inference core decodes in a background thread, windows,
batches across files, runs front end + model and aggregates per clip; no Trainer. Model only: the same model's forward over the
same segments already stacked in memory, in the same batch size. Both report segments/s
(median of --repeats) and their ratio. Weights are random: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from audio_cls.commands.classify import predict_inputs
from audio_cls.data.cache import WaveformCache
from audio_cls.data.segments import fit_length, window_starts
from audio_cls.data.sources import ESC50
from audio_cls.models import MelCNN


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    root = Path(args.root)
    clips = ESC50(subset="esc10", download=False).manifest(root).clips
    with tempfile.TemporaryDirectory() as tmp:
        model = MelCNN(num_classes=10, class_names=[str(i) for i in range(10)], sample_rate=16000)
        trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
        trainer.strategy.connect(model)
        ckpt = Path(tmp) / "model.ckpt"
        trainer.save_checkpoint(ckpt)

        end_to_end, n_segments = [], 0
        for i in range(args.repeats + 1):  # the first run warms up allocators and imports
            t = time.perf_counter()
            results, _, _ = predict_inputs(
                ckpt, [str(root / "audio")], batch_size=args.batch_size, device="cpu"
            )
            if i:
                end_to_end.append(len(results.segment_probs) / (time.perf_counter() - t))
            n_segments = len(results.segment_probs)

        cache = WaveformCache(None, 16000)
        window, hop = 15360, 7680
        segments = torch.stack(
            [
                torch.from_numpy(fit_length(cache.load(c.path)[s : s + window], window).copy())
                for c in clips
                for s in window_starts(len(cache.load(c.path)), window, hop)
            ]
        )
        model.eval()
        model_only = []
        with torch.inference_mode():
            for i in range(args.repeats + 1):
                t = time.perf_counter()
                for batch in segments.split(args.batch_size):
                    model(batch).softmax(-1)
                if i:
                    model_only.append(len(segments) / (time.perf_counter() - t))
    e2e, mo = statistics.median(end_to_end), statistics.median(model_only)
    print(
        f"ESC-10: {len(clips)} clips, {n_segments} segments of 0.96 s, batch {args.batch_size}, {args.threads} threads"
    )
    print(
        f"end to end:  {e2e:8.0f} segments/s  (median of {args.repeats}; min {min(end_to_end):.0f}, max {max(end_to_end):.0f})"
    )
    print(
        f"model only:  {mo:8.0f} segments/s  (median of {args.repeats}; min {min(model_only):.0f}, max {max(model_only):.0f})"
    )
    print(f"end to end / model only: {e2e / mo:.2f}")


if __name__ == "__main__":
    main()
