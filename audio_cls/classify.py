"""``audio-cls classify``: label audio files, folders or manifests with a trained checkpoint.

The checkpoint carries what it needs: the architecture, class names, the front end and the
window settings it was trained with. Audio is decoded and resampled to the checkpoint's rate,
cut into the same windows, predicted (optionally with TTA shifts), and aggregated per clip.
Writes per-clip top-k labels and probabilities (CSV, or JSON when ``--out`` ends in ``.json``)
and, with ``--timeline``, one row per window for long recordings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L

from audio_cls.callbacks.aggregation import ClipAggregation, ClipResults
from audio_cls.callbacks.reports import write_predictions, write_timeline
from audio_cls.callbacks.tta import TTAShift
from audio_cls.data import AudioDataModule
from audio_cls.data.sources.files import AudioFiles
from audio_cls.models.base import load_classifier

__all__ = ["classify", "classify_main"]


def classify(
    checkpoint: str | Path,
    inputs: list[str],
    batch_size: int = 256,
    tta_shifts: int = 1,
    aggregation: str = "mean",
    accelerator: str = "auto",
    num_workers: int = 0,
    cache_dir: str | None = None,
    limit: int | None = None,
) -> tuple[ClipResults, list[str], AudioDataModule]:
    """Predict every clip in ``inputs``; returns clip results, class names and the data module."""
    model, section = load_classifier(checkpoint)
    seg = section.get("segments") or {}
    files = AudioFiles(inputs, class_names=model.class_names)
    if limit is not None:
        files = AudioFiles(
            [str(c.path) for c in files.manifest(Path(".")).clips[:limit]], model.class_names
        )
    datamodule = AudioDataModule(
        root=".",
        source=files,
        predict_source=files,
        sample_rate=model.hparams.sample_rate,
        window_sec=seg.get("window_sec", 0.96),
        hop_sec=seg.get("hop_sec"),
        short_clip=seg.get("short_clip", "pad"),
        eval_batch_size=batch_size,
        num_workers=num_workers,
        cache_dir=cache_dir or "memory",  # one pass: decoded clips need not touch the disk
    )
    aggregator = ClipAggregation(aggregation)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[aggregator, TTAShift(tta_shifts)],
    )
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    return aggregator.results["predict"], model.class_names, datamodule


def _to_json(results: ClipResults, class_names: list[str], top_k: int) -> list[dict[str, Any]]:
    k = min(top_k, len(class_names))
    top_p, top_i = results.probs.topk(k, dim=1)
    return [
        {
            "clip_id": clip_id,
            "path": results.paths[i],
            "top_k": [
                {"label": class_names[int(j)], "prob": round(float(p), 6)}
                for p, j in zip(top_p[i], top_i[i])
            ],
        }
        for i, clip_id in enumerate(results.clip_ids)
    ]


def classify_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="audio-cls classify",
        description="Classify audio files, folders (recursive) or CSV manifests (a 'path' column) "
        "with a checkpoint from `audio-cls fit`.",
    )
    parser.add_argument("inputs", nargs="+", help="audio files, folders or .csv manifests")
    parser.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) written by audio-cls fit")
    parser.add_argument("--out", default="predictions.csv", help="per-clip output, .csv or .json")
    parser.add_argument("--timeline", default=None, help="per-window CSV (for long recordings)")
    parser.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=3)
    parser.add_argument(
        "--tta", type=int, default=1, help="time-shifted copies averaged per window"
    )
    parser.add_argument(
        "--aggregation", default="mean", choices=("mean", "logit_mean", "max", "vote")
    )
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=256)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="only the first N clips")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results, names, datamodule = classify(
        args.ckpt,
        args.inputs,
        args.batch_size,
        args.tta,
        args.aggregation,
        args.accelerator,
        limit=args.limit,
    )
    elapsed = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(_to_json(results, names, args.top_k), indent=2))
    else:
        write_predictions(out, results, names, args.top_k)
    if args.timeline:
        write_timeline(
            Path(args.timeline), results, names, datamodule.sample_rate, datamodule.window
        )
    n_windows = len(results.segment_probs)
    for i, clip_id in enumerate(results.clip_ids[:10]):
        p, c = results.probs[i].max(0)
        print(f"{clip_id:<40} {names[int(c)]:<16} {float(p):.3f}")
    if len(results.clip_ids) > 10:
        print(f"... {len(results.clip_ids) - 10} more")
    print(
        f"\n{len(results.clip_ids)} clips, {n_windows} windows in {elapsed:.1f} s "
        f"({n_windows / max(elapsed, 1e-9):.0f} windows/s)\npredictions: {out}"
        + (f"\ntimeline:    {args.timeline}" if args.timeline else "")
    )
