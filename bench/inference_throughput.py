"""Inference throughput of MelCNN over ESC-10 in 0.96 s segments (50 % overlap), per backend.

    python bench/inference_throughput.py --root path/to/ESC-50-layout [--threads 2] [--ckpt M]

End to end: ``audio-cls classify``'s path (``audio_cls.commands.classify.predict_inputs``) on
the audio folder, nothing cached: the inference core decodes, windows, batches across files,
runs front end + model and aggregates per clip; no Trainer. Model only: the same model's
forward over the same segments already stacked in memory, in the same batch size. Both report
segments/s (median of --repeats).

Rows, each end to end and model only, all in one run so that they share the machine's state:

- ``torch fp32, 1 worker``: the baseline, ``--precision 32`` with one batch at a time on all
  the threads, as ``classify`` ran before the predictor had workers (MelCNN's backbone is
  channels-last already, so every torch row is a channels-last figure);
- ``torch fp32, N workers``: the predictor's default layout on a CPU, N batches in flight in
  threads that share the intra-op threads (model only is timed in the same layout);
- ``torch auto``: what ``classify`` does by default (``--precision auto``): bf16 autocast
  where the CPU has native bf16 (AVX-512 BF16 or AMX) once it agreed with fp32 on the first
  64 windows, else fp32; the row names what the trial chose;
- ``torch bf16``: ``--precision bf16``, bf16 autocast unchecked (the front end stays fp32),
  only where the CPU has native bf16;
- ``onnxruntime``: the model exported by ``audio_cls.export`` (front end included), run by
  the onnxruntime backend with ``--threads`` intra-op threads.

For each: the ratio to fp32 and the clip-level agreement with fp32 PyTorch (fraction of clips
with the same top-1 class). Weights are random unless ``--ckpt`` names a trained checkpoint:
throughput does not depend on them, but agreement on a random model (near-uniform, close
calls) understates what a trained model shows; pass a trained MelCNN to judge agreement.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import torch

from audio_cls.commands.classify import predict_inputs
from audio_cls.data.cache import WaveformCache
from audio_cls.data.segments import fit_length, window_starts
from audio_cls.data.sources import ESC50
from audio_cls.inference import ClipResults, native_bf16
from audio_cls.models import MelCNN, load_classifier


class Autocast:
    """A model called under CPU autocast to ``dtype``."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        self.model, self.dtype = model.eval(), dtype

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype):
            return self.model(waveform)


def timed(run: Callable[[], ClipResults], repeats: int) -> tuple[list[float], ClipResults]:
    """Segments/s of ``repeats`` runs after one warm-up run (allocators, imports, sessions)."""
    rates, results = [], None
    for i in range(repeats + 1):
        t = time.perf_counter()
        results = run()
        if i:
            rates.append(len(results.segment_probs) / (time.perf_counter() - t))
    return rates, results


def model_only(
    model: Callable, segments: torch.Tensor, batch: int, repeats: int, workers: int = 1
) -> list[float]:
    """Segments/s of the model alone on windows in memory, laid out as the end-to-end row runs
    it: ``workers`` batches at a time in threads, sharing the intra-op threads."""
    threads = torch.get_num_threads()

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x).float().softmax(-1)

    rates = []
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    torch.set_num_threads(max(1, threads // workers))
    try:
        for i in range(repeats + 1):
            t = time.perf_counter()
            if pool is None:
                for x in segments.split(batch):
                    forward(x)
            else:
                list(pool.map(forward, segments.split(batch)))
            if i:
                rates.append(len(segments) / (time.perf_counter() - t))
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown()
    return rates


def agreement(results: ClipResults, reference: ClipResults) -> float:
    """Fraction of clips whose top-1 class equals the reference's."""
    same = results.probs.argmax(1) == reference.probs.argmax(1)
    return float(same.float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ckpt", help="a trained checkpoint (default: random MelCNN weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # the onnxruntime backend takes the same count
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    root = Path(args.root)
    audio = str(root / "audio")
    clips = ESC50(subset="esc10", download=False).manifest(root).clips
    bs, n = args.batch_size, args.repeats
    rows: list[tuple[str, list[float], list[float], ClipResults]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.ckpt:
            ckpt = Path(args.ckpt)
        else:
            model = MelCNN(
                num_classes=10, class_names=[str(i) for i in range(10)], sample_rate=16000
            )
            trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
            trainer.strategy.connect(model)
            ckpt = Path(tmp) / "model.ckpt"
            trainer.save_checkpoint(ckpt)
        model, section = load_classifier(ckpt)

        cache = WaveformCache(None, 16000)
        window, hop = 15360, 7680
        segments = torch.stack(
            [
                torch.from_numpy(fit_length(cache.load(c.path)[s : s + window], window).copy())
                for c in clips
                for s in window_starts(len(cache.load(c.path)), window, hop)
            ]
        )

        def classify(precision: str, **options) -> ClipResults:
            """``classify``'s path; its predictor's precision and workers are kept."""
            results, _, predictor = predict_inputs(
                ckpt, [audio], batch_size=bs, device="cpu", precision=precision, **options
            )
            chosen[precision] = predictor.precision.name
            workers[precision] = predictor.workers
            return results

        chosen: dict[str, str] = {}
        workers: dict[str, int] = {}
        e2e, fp32 = timed(lambda: classify("32", workers=1), n)
        rows.append(("torch fp32, 1 worker", e2e, model_only(model, segments, bs, n), fp32))

        e2e, res = timed(lambda: classify("32"), n)
        mo = model_only(model, segments, bs, n, workers["32"])
        rows.append((f"torch fp32, {workers['32']} workers", e2e, mo, res))

        e2e, res = timed(lambda: classify("auto"), n)
        auto_bf16 = chosen["auto"] == "bf16"
        mo = model_only(
            Autocast(model, torch.bfloat16) if auto_bf16 else model,
            segments,
            bs,
            n,
            workers["auto"],
        )
        rows.append((f"torch auto ({'bf16' if auto_bf16 else 'fp32'})", e2e, mo, res))

        if native_bf16(torch.device("cpu")):
            e2e, res = timed(lambda: classify("bf16"), n)
            mo = model_only(Autocast(model, torch.bfloat16), segments, bs, n, workers["bf16"])
            rows.append(("torch bf16", e2e, mo, res))
        else:
            print("torch bf16: skipped, this CPU has neither AVX-512 BF16 nor AMX")

        try:
            from audio_cls.export import export_model, load_onnx

            onnx_path = Path(tmp) / "model.onnx"
            export_model(model, section, onnx_path)
            e2e, res = timed(
                lambda: predict_inputs(
                    onnx_path, [audio], batch_size=bs, device="cpu", backend="onnxruntime"
                )[0],
                n,
            )
            session, _ = load_onnx(onnx_path, threads=args.threads)
            rows.append(("onnxruntime", e2e, model_only(session, segments, bs, n), res))
        except ImportError as err:  # the export extra is missing
            print(f"onnxruntime: skipped ({err})")

    print(
        f"ESC-10: {len(clips)} clips, {len(fp32.segment_probs)} segments of 0.96 s, batch "
        f"{bs}, {args.threads} threads, {'weights ' + str(ckpt) if args.ckpt else 'random weights'}"
        f"; medians of {n} runs (min-max)"
    )
    base_e2e, base_mo = statistics.median(rows[0][1]), statistics.median(rows[0][2])
    print(
        f"{'path':<22} {'end to end seg/s':>24} {'x fp32':>7} {'model only seg/s':>24} "
        f"{'x fp32':>7} {'e2e/model':>9} {'top-1 = fp32':>13}"
    )
    for name, e2e, mo, res in rows:
        me, mm = statistics.median(e2e), statistics.median(mo)
        print(
            f"{name:<22} {me:8.0f} ({min(e2e):6.0f}-{max(e2e):6.0f}) {me / base_e2e:7.2f} "
            f"{mm:8.0f} ({min(mo):6.0f}-{max(mo):6.0f}) {mm / base_mo:7.2f} {me / mm:9.2f} "
            f"{100 * agreement(res, fp32):12.2f}%"
        )
    _, auto_e2e, auto_mo, auto_res = rows[2]
    me = statistics.median(auto_e2e)
    print(
        f"targets (torch auto, what classify does): end to end {me / base_e2e:.2f}x fp32's "
        f"(>= 1.5), end to end / model only {me / statistics.median(auto_mo):.2f} (>= 0.9), "
        f"clips with fp32's top-1 {100 * agreement(auto_res, fp32):.2f}% (>= 99.5%)"
    )


if __name__ == "__main__":
    main()
