"""``audio-cls classify``: label audio files, folders or manifests with a trained checkpoint.

The checkpoint carries what it needs: the architecture, class names, the front end and the
window settings it was trained with. Audio is decoded block by block and resampled to the
checkpoint's rate, cut into the same windows, predicted in batches (optionally with TTA
shifts) and aggregated per clip by the inference core; no Trainer is involved. A file that
cannot be read is listed with its reason (in the output and on stderr) while the others are
labelled.

``--ckpt`` may also name published weights that come with a classifier and label names
(``audio-cls models --pretrained`` lists them; e.g. ``esresnext_fbsp_audioset`` tags AudioSet's
527 classes), fetched once and cut into the default 0.96 s windows. AudioSet models are
multi-label (trained with a sigmoid per tag): the softmax scores printed here rank the tags as
the model does, but they are not per-tag probabilities.

With ``--backend onnxruntime``, ``--ckpt`` is an ONNX file from ``audio-cls export`` instead:
its metadata carries the same contract, and onnxruntime runs the graph inside the same
inference core (windows, batches, TTA and aggregation are shared code, not a second copy).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from audio_cls.commands import UsageError, check_writable, report_clip_problems
from audio_cls.inference import (
    PRECISIONS,
    Aggregation,
    ClipPrediction,
    ClipResults,
    Precision,
    Predictor,
    TimeShiftTTA,
    WindowSettings,
    collect,
)
from audio_cls.models import create_published, find_pretrained, load_classifier
from audio_cls.reports import write_events, write_predictions, write_submission, write_timeline

__all__ = ["BACKENDS", "classify", "load_model", "predict_inputs"]

Backend = Literal["torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")


def load_model(
    ckpt: str | Path, backend: Backend = "torch", device: str = "auto"
) -> tuple[Callable[[torch.Tensor], torch.Tensor], WindowSettings, list[str], str]:
    """The model of ``ckpt`` for ``backend``, with its window settings and class names.

    Returns:
        ``(model, windows, class_names, device)``: the model maps waveforms ``(B, T)`` to
        logits; ``device`` is where the inference core should put the waveforms.
    """
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        if Path(ckpt).suffix.lower() == ".onnx":
            raise UsageError(
                f"--ckpt {ckpt} is an ONNX file: add --backend onnxruntime (the torch backend "
                f"reads .ckpt checkpoints from `audio-cls fit`)"
            )
        if not Path(ckpt).exists() and find_pretrained(str(ckpt)):
            model = _published_classifier(str(ckpt))
            return model, WindowSettings(model.sample_rate), list(model.class_names), device
        model, section = load_classifier(ckpt)
        windows = WindowSettings.from_section(section, model.sample_rate)
        return model, windows, list(model.class_names), device
    from audio_cls.export import ExportError, load_onnx

    if device not in ("auto", "cpu"):
        raise UsageError(
            f"--device {device}: the onnxruntime backend runs on the CPU; leave --device "
            f"auto or use --backend torch"
        )
    if Path(ckpt).suffix.lower() == ".ckpt":
        raise UsageError(
            f"--ckpt {ckpt} is a PyTorch checkpoint: the onnxruntime backend reads the .onnx "
            f"file of `audio-cls export --ckpt {ckpt} --out model.onnx` (or use --backend torch)"
        )
    try:
        session, section = load_onnx(ckpt)
    except ExportError as err:
        raise UsageError(str(err)) from None
    windows = WindowSettings.from_section(section, session.sample_rate)
    return session, windows, session.class_names, "cpu"


def _published_classifier(tag: str) -> torch.nn.Module:
    """The model of published weights ``tag``, with their classifier and label names."""
    family, config = find_pretrained(tag)
    if not config.class_names:
        raise UsageError(
            f"--ckpt {tag}: these published weights have no label names to classify with; fit "
            f"a classifier on them first (audio-cls fit ... --model.init_args.pretrained {tag})"
        )
    return create_published(family, tag).eval()


def predict_inputs(
    ckpt: str | Path,
    inputs: list[str],
    batch_size: int = 256,
    tta: int = 1,
    tta_max_shift: float = 0.1,
    aggregation: Aggregation = "mean",
    device: str = "auto",
    limit: int | None = None,
    backend: Backend = "torch",
    precision: Precision = "auto",
    labels: str | None = None,
    check_names: Callable[[list[str]], None] | None = None,
    workers: int | None = None,
) -> tuple[ClipResults, list[str], Predictor]:
    """Predict every clip in ``inputs``; returns clip results, class names and the predictor.

    ``backend`` ``torch`` reads a ``.ckpt``; ``onnxruntime`` an ONNX file from ``export``.
    ``labels`` (``"a, b, c"``): the class names a ``text_teacher`` checkpoint scores instead of
    its own. ``check_names`` sees the class names before anything is predicted (an option
    that names classes fails then, not after the work). ``workers``: the predictor's batches
    in flight at once (:class:`audio_cls.inference.Predictor`).
    """
    from audio_cls.data.sources.files import AudioFiles

    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and backend != "torch":
        raise UsageError("--precision bf16 needs --backend torch (autocast is PyTorch's)")
    model, windows, names, device = load_model(ckpt, backend, device)
    if labels is not None:
        from audio_cls.labelling import name_teacher_classes

        try:
            names = name_teacher_classes(model, labels, f"--ckpt {ckpt}")
        except ValueError as err:
            raise UsageError(str(err)) from None
    if check_names is not None:
        check_names(names)
    predictor = Predictor(
        model,
        windows,
        batch_size=batch_size,
        tta=TimeShiftTTA(tta, tta_max_shift),
        aggregation=aggregation,
        device=device,
        precision=precision,
        workers=workers,
    )
    clips = AudioFiles(inputs, class_names=names).manifest(Path(".")).clips[:limit]
    predictions: list[ClipPrediction] = list(
        predictor.predict_files((c.clip_id, c.path) for c in clips)
    )
    return collect(predictions, len(names)), names, predictor


def _check_event_classes(classes: list[str], class_names: list[str]) -> None:
    unknown = [c for c in classes if c not in class_names]
    if unknown:
        raise UsageError(
            f"--events {', '.join(unknown)}: not a class of this model; its classes are: "
            f"{', '.join(class_names)}"
        )


def _event_thresholds(
    classes: list[str], class_names: list[str], ckpt: str | Path, threshold: float | None
) -> tuple[dict[str, float], str]:
    """Each ``--events`` class's threshold, and the thresholds in words for the summary."""
    from audio_cls.callbacks.run_report import recorded_threshold

    _check_event_classes(classes, class_names)
    if threshold is not None:
        return {c: threshold for c in classes}, f"threshold {threshold:g} (--event_threshold)"
    recorded = recorded_threshold(ckpt)
    thresholds, said = {}, []
    for c in classes:
        if recorded is not None and recorded.positive == c:
            thresholds[c] = recorded.threshold
            said.append(f"{c} >= {recorded.threshold:.3f}, chosen on validation")
        else:
            thresholds[c] = 0.5
            said.append(f"{c} >= 0.5, the default")
    return thresholds, "; ".join(said)


def _to_json(results: ClipResults, class_names: list[str], top_k: int) -> list[dict[str, Any]]:
    k = min(top_k, len(class_names))
    top_p, top_i = results.probs.topk(k, dim=1)
    rows = []
    for i, clip_id in enumerate(results.clip_ids):
        row: dict[str, Any] = {"clip_id": clip_id, "path": results.paths[i]}
        if clip_id in results.errors:
            row["error"] = results.errors[clip_id]
        else:
            row["top_k"] = [
                {"label": class_names[int(j)], "prob": round(float(p), 6)}
                for p, j in zip(top_p[i], top_i[i])
            ]
            if clip_id in results.warnings:
                row["warning"] = results.warnings[clip_id]
        rows.append(row)
    return rows


def classify(
    inputs: list[str],
    ckpt: str,
    out: str = "predictions.csv",
    timeline: str | None = None,
    events: str | None = None,
    events_out: str = "events.csv",
    event_threshold: float | None = None,
    top_k: int = 3,
    tta: int = 1,
    tta_max_shift: float = 0.1,
    aggregation: Aggregation = "mean",
    batch_size: int = 256,
    device: str = "auto",
    limit: int | None = None,
    strict: bool = False,
    backend: Backend = "torch",
    precision: Precision = "auto",
    format: Literal["auto", "submission"] = "auto",
    labels: str | None = None,
) -> ClipResults:
    """Classify audio files, folders (recursive) or CSV manifests (a ``path`` column) with a
    checkpoint from ``audio-cls fit``.

    Args:
        inputs: Audio files, folders or ``.csv`` manifests (given as bare words).
        ckpt: Checkpoint (``.ckpt``) written by ``audio-cls fit``, or a tag of published
            weights with label names (``esresnext_fbsp_audioset``); with ``--backend
            onnxruntime``, the ``.onnx`` file written by ``audio-cls export``.
        out: Per-clip output, ``.csv`` or ``.json``.
        format: ``auto``: by the extension of ``--out``; ``submission``: a challenge's ``Id,Category``
            CSV (the Id is the clip id: a file's name without extension, its path below a folder
            given as input), and exit status 1 when a clip could not be predicted (a submission
            missing an Id is invalid).
        timeline: Per-window CSV, for long recordings.
        events: Class names, comma-separated (``impact``): write the stretches of each clip where
            a class's window probability is at or above its threshold, consecutive windows
            merged, to ``--events_out`` (clip, class, start/end seconds, peak probability).
        events_out: The events CSV.
        event_threshold: Decision threshold of every ``--events`` class. Default: the one a
            checkpoint trained with ``report.positive_class`` chose on its validation clips,
            for that class, else 0.5. That one was chosen on clip probabilities (the windows'
            aggregated) and is applied here to single windows.
        top_k: Classes listed per clip.
        tta: Time-shifted copies averaged per window (1: off).
        tta_max_shift: Largest TTA shift, as a fraction of the window.
        aggregation: Window -> clip: ``mean``, ``logit_mean``, ``max`` or ``vote``.
        batch_size: Windows per forward pass.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        limit: Only the first N clips.
        strict: Exit with status 1 when any file could not be read (default: list it, go on).
        backend: ``torch`` (the checkpoint in PyTorch) or ``onnxruntime`` (an exported ONNX
            file, on the CPU, with as many threads as PyTorch uses).
        precision: ``auto``: the model (not the front end) under bf16 autocast where the
            device computes bf16 natively (AVX-512 BF16 or AMX, or a recent GPU), once it has
            given fp32's top class on the first 64 windows, else fp32; ``32``: fp32 (exactly
            reproducible across machines); ``bf16``: bf16 autocast, unchecked
            (``bench/inference_throughput.py`` measures speed and agreement).
        labels: Class names, comma-separated (``"door knock, footsteps, rain"``), for a
            ``text_teacher`` checkpoint: it scores these names by their text embeddings (its
            recorded text model and prompts), with no training on them.
    """
    for option, value in (("--top_k", top_k), ("--tta", tta), ("--batch_size", batch_size)):
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1 (or left out for every clip), got {limit}")
    out_path = Path(out)
    check_writable(out_path, "--out")
    if timeline:
        check_writable(Path(timeline), "--timeline")
    event_classes = [c.strip() for c in (events or "").split(",") if c.strip()]
    if events is not None and not event_classes:
        raise UsageError(f"--events {events!r} names no class: give class names, e.g. impact")
    if event_classes:
        check_writable(Path(events_out), "--events_out")
    if event_threshold is not None and not 0 <= event_threshold <= 1:
        raise UsageError(f"--event_threshold must be in 0..1, got {event_threshold}")

    started = time.perf_counter()
    results, names, predictor = predict_inputs(
        ckpt,
        inputs,
        batch_size,
        tta,
        tta_max_shift,
        aggregation,
        device,
        limit,
        backend,
        precision,
        labels,
        check_names=lambda names: _check_event_classes(event_classes, names),
    )
    elapsed = time.perf_counter() - started
    if format == "submission":
        write_submission(out_path, results, names)
        strict = True
    elif out_path.suffix.lower() == ".json":
        out_path.write_text(json.dumps(_to_json(results, names, top_k), indent=2))
    else:
        write_predictions(out_path, results, names, top_k)
    if timeline:
        w = predictor.windows
        write_timeline(Path(timeline), results, names, w.sample_rate, w.window)
    if event_classes:
        thresholds, said = _event_thresholds(event_classes, names, ckpt, event_threshold)
        w = predictor.windows
        n_events = write_events(
            Path(events_out), results, names, thresholds, w.sample_rate, w.window
        )

    n_windows = len(results.segment_probs)
    labelled = [i for i, c in enumerate(results.clip_ids) if c not in results.errors]
    for i in labelled[:10]:
        p, c = results.probs[i].max(0)
        print(f"{results.clip_ids[i]:<40} {names[int(c)]:<16} {float(p):.3f}")
    if len(labelled) > 10:
        print(f"... {len(labelled) - 10} more")
    report_clip_problems(results.errors, results.warnings)
    print(
        f"\n{len(labelled)} clips, {n_windows} windows in {elapsed:.1f} s "
        f"({n_windows / max(elapsed, 1e-9):.0f} windows/s)"
        + (f"; {len(results.errors)} unreadable, listed in the output" if results.errors else "")
        + f"\npredictions: {out_path}"
        + (f"\ntimeline:    {timeline}" if timeline else "")
        + (f"\nevents:      {events_out} ({n_events} event(s); {said})" if event_classes else "")
    )
    if strict and results.errors:
        sys.exit(1)
    return results
