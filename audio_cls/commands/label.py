"""``audio-cls label``: pseudo-label audio with a checkpoint into a soft-label manifest.

A ``text_teacher`` checkpoint labels clips with any class names (``--classes "a, b, c"``; by
default its own), scoring them by cosine similarity to the names' text embeddings; an ordinary
classifier labels with its own classes (or a subset of them). Each clip gets soft labels (the
softmax of its scores at ``--temperature``), a hard label (the top class) and its confidence;
clips below ``--threshold`` go to a file of their own beside the manifest
(``<out stem>_unsure.csv``), to be labelled by hand or in a later round.

The manifest (``path,label,confidence[,fold][,clip_id],prob_<class>...``) is what the data
module's ``CSVManifest`` reads as soft labels (or, with ``--hard``, as hard labels): train a
student on it with ``--data.source.class_path audio_cls.data.sources.CSVManifest
--data.source.init_args.file <out>``. Inputs are read as ``classify`` reads them; a CSV
manifest's ``fold`` and ``clip_id`` columns are kept, so a data set can be relabelled without
changing its split.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import torch

from audio_cls.commands import UsageError, check_writable, report_clip_problems
from audio_cls.inference import PRECISIONS, Aggregation, Precision
from audio_cls.labelling import LabelManifest, hard_labels, label_clips, write_label_manifest
from audio_cls.text import parse_names

__all__ = ["label"]


def label(
    inputs: list[str],
    ckpt: str,
    out: str = "labels.csv",
    classes: str | None = None,
    threshold: float = 0.5,
    temperature: float = 1.0,
    hard: bool = False,
    aggregation: Aggregation = "mean",
    tta: int = 1,
    batch_size: int = 64,
    device: str = "auto",
    limit: int | None = None,
    strict: bool = False,
    precision: Precision = "auto",
) -> LabelManifest:
    """Label audio files, folders (recursive) or CSV manifests with a checkpoint: soft and hard
    labels in a manifest the data module reads, unsure clips in a file of their own.

    Args:
        inputs: Audio files, folders or ``.csv`` manifests (given as bare words); a manifest's
            ``fold`` and ``clip_id`` columns are kept.
        ckpt: Checkpoint (``.ckpt``) of ``audio-cls fit``: a ``text_teacher`` or any classifier.
        out: The manifest to write (``.csv``); the unsure clips go to ``<stem>_unsure.csv``.
        classes: Class names, comma-separated (``"door knock, footsteps, rain"``). A
            ``text_teacher`` scores any names (zero-shot for names it was not trained on);
            another classifier only its own classes, or a subset. Default: the checkpoint's
            classes.
        threshold: Clips whose top probability (their confidence) is below it are unsure
            (0: none is).
        temperature: Softmax temperature on the checkpoint's logits (a teacher's are cosine
            similarities over its own temperature): below 1 sharper labels, above 1 softer
            ones; it moves the confidences, so the split at ``threshold`` too.
        hard: Write hard labels only (no ``prob_<class>`` columns).
        aggregation: Window -> clip: ``mean``, ``logit_mean``, ``max`` or ``vote``.
        tta: Time-shifted copies averaged per window (1: off).
        batch_size: Windows per forward pass.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        limit: Only the first N clips.
        strict: Exit with status 1 when any file could not be read (default: list it, go on).
        precision: ``auto``: the model (not the front end) under bf16 autocast where the
            device computes bf16 natively, once it has given fp32's top class on the first
            windows, else fp32; ``32``: fp32 (exactly reproducible); ``bf16``: bf16 autocast,
            unchecked. As ``classify``'s.
    """
    if not 0 <= threshold <= 1:
        raise UsageError(f"--threshold must be in [0, 1], got {threshold}")
    if not temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {temperature}")
    for option, value in (("--tta", tta), ("--batch_size", batch_size)):
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1 (or left out for every clip), got {limit}")
    out_path = Path(out)
    if out_path.suffix.lower() != ".csv":
        raise UsageError(f"--out {out}: a label manifest is a .csv file; name it e.g. labels.csv")
    check_writable(out_path, "--out")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if classes is not None:  # before the checkpoint is read
        try:
            parse_names(classes, "--classes")
        except ValueError as err:
            raise UsageError(str(err)) from None

    started = time.perf_counter()
    labelled = label_clips(
        ckpt,
        inputs,
        classes,
        temperature=temperature,
        batch_size=batch_size,
        aggregation=aggregation,
        tta=tta,
        device=device,
        limit=limit,
        precision=precision,
    )
    elapsed = time.perf_counter() - started
    rows = labelled.rows()
    written = write_label_manifest(
        out_path, rows, labelled.class_names, threshold=threshold, soft=not hard
    )

    names = labelled.class_names
    if rows:
        index, _ = hard_labels(torch.tensor([list(r.probs) for r in rows]))
        counts = Counter(names[int(i)] for i in index)
        print("top labels: " + ", ".join(f"{n} {counts[n]}" for n in names if counts[n]))
    report_clip_problems(labelled.errors, labelled.warnings)
    print(
        f"{len(rows)} clips labelled in {elapsed:.1f} s with {len(names)} classes: "
        f"{written.num_sure} at or above confidence {threshold:g}, {written.num_unsure} below"
        + (f"; {len(labelled.errors)} unreadable (skipped)" if labelled.errors else "")
        + f"\nmanifest: {written.path}\nunsure:   {written.unsure}"
    )
    if strict and labelled.errors:
        sys.exit(1)
    return written
