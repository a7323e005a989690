"""``audio-cls embed``: per-window and per-clip embeddings of audio, written to Parquet.

The model is a checkpoint of ``audio-cls fit`` (``--ckpt``, cut into the windows it was trained
on), a tag of published weights (``--ckpt TAG``) or a registry family with published weights
(``--model NAME --pretrained TAG_OR_PATH``, cut into ``--window_sec``/``--hop_sec`` windows,
0.96 s and half a window by default). Clips are decoded, cut and batched by the same inference
core as ``classify`` (:class:`audio_cls.inference.Predictor`, TTA shifts included), which
returns one named tap of ``forward_intermediates`` per window instead of probabilities: by
default ``embedding``, the pre-logit embedding (``forward_head(..., pre_logits=True)``). A tap
that is a map ``(B, C, F, T)`` or a sequence ``(B, L, D)`` is averaged over everything but its
channels or features (the front end's ``(B, C, frames)`` over frames), one vector per window.

The clips are a training config's data set (``--config CONFIG``, its ``data:`` section, with
``--data.*`` overrides; every fold, or those of ``--folds``), labels and folds included, or
bare inputs (files, folders, CSV manifests, as ``classify`` takes them), whose label is empty
and fold -1. An unreadable clip is listed on stderr and has no rows; the others go on.

The Parquet file holds one row per window and three per clip (its windows' mean, std and max):

========== ======= ============================================================================
column     type    value
========== ======= ============================================================================
clip_id    string  the clip's name (the manifest's)
path       string  its file
fold       int64   its fold; -1 when unknown (bare inputs)
label      string  its class name; "" when unknown
target     int64   its class index into ``class_names``; -1 when unknown
level      string  ``window``; ``mean``, ``std`` (population, ddof 0), ``max`` over its windows
start_sec  float64 the window's start; 0 on the clip rows
end_sec    float64 the window's end (start + window, also for a padded short clip); the
                   clip's length on the clip rows
emb_<i>    float32 dimension i of the (pooled) tap, i = 0 .. D-1
========== ======= ============================================================================

Rows follow the clips' order (the manifest's), and within a clip its windows in time order,
then ``mean``, ``std``, ``max``. The schema metadata holds JSON under the key ``audio_cls``:
``class_names`` (those ``target`` indexes: the data set's with a config, else the model's own
label names, or none), ``tap``, ``model`` (registry name), ``sample_rate``, ``window_sec``,
``hop_sec`` and ``checkpoint`` (the ``--ckpt`` path or tag, or ``--pretrained``).

Several processes (``torchrun``, which sets ``RANK``/``WORLD_SIZE``, or ``--rank R
--world_size N`` e.g. in an array job) each take a contiguous share of the clips and write
``FILE.rank<R>.parquet`` (schema metadata ``audio_cls_shard``: rank and world size), with no
communication between them; :func:`read_embeddings` reads ``FILE`` or, when it is absent, its
shards in rank order, which is the single-process file's row order, and :func:`merge_shards`
joins them into ``FILE``. :func:`read_embeddings` returns an :class:`Embeddings` of numpy
arrays (no pandas); ``pyarrow.parquet.read_table`` reads the file as it is.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import torch

from audio_cls.commands import UsageError, report_clip_problems
from audio_cls.embeddings import (
    LEVELS,
    META_KEY,
    SHARD_KEY,
    Embeddings,
    arrow,
    merge_shards,
    parquet,
    read_embeddings,
    shard_path,
)
from audio_cls.inference import ClipPrediction, Predictor, TimeShiftTTA, WindowSettings
from audio_cls.io import printable_path

if TYPE_CHECKING:
    from audio_cls.data import AudioDataModule

__all__ = [
    "LEVELS",
    "META_KEY",
    "SHARD_KEY",
    "EmbedClip",
    "EmbedReport",
    "Embeddings",
    "clips_of_data",
    "clips_of_inputs",
    "embed",
    "embed_clips",
    "load_embedder",
    "main",
    "merge_shards",
    "read_embeddings",
    "shard_clips",
    "shard_path",
]


T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# the model


def load_embedder(
    ckpt: str | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    window_sec: float | None = None,
    hop_sec: float | None = None,
) -> tuple[torch.nn.Module, WindowSettings, list[str], str]:
    """The model to embed with, its window settings, its label names and where it came from.

    Returns:
        ``(model, windows, class_names, source)``: ``class_names`` are the model's own label
        names (empty for published weights without them); ``source`` is the checkpoint path or
        weights tag, for the metadata.
    """
    from audio_cls.models import find_pretrained, get_model_entry, load_classifier

    for option, value in (("--window_sec", window_sec), ("--hop_sec", hop_sec)):
        if value is not None and value <= 0:
            raise UsageError(f"{option} must be > 0, got {value}")
    if (ckpt is None) == (model is None):
        raise UsageError(
            "give either --ckpt (a checkpoint of `audio-cls fit`, or a tag of published "
            "weights) or --model NAME --pretrained TAG_OR_PATH"
        )
    if model is not None:
        if not pretrained:
            raise UsageError(
                f"--model {model} needs --pretrained TAG_OR_PATH (`audio-cls models "
                f"--pretrained` lists the tags): embeddings of random weights mean nothing"
            )
        try:
            get_model_entry(model)
        except KeyError as err:
            raise UsageError(f"--model: {err.args[0]}") from None
        net, names = _published(model, pretrained)
        windows, source = WindowSettings(net.sample_rate), pretrained
    else:
        assert ckpt is not None
        if pretrained:
            raise UsageError("--pretrained goes with --model NAME; --ckpt names its weights alone")
        if Path(ckpt).suffix.lower() == ".onnx":
            raise UsageError(
                f"--ckpt {ckpt} is an ONNX file: embed reads the PyTorch checkpoint (.ckpt) it "
                f"was exported from, whose intermediate taps the graph does not keep"
            )
        tagged = find_pretrained(str(ckpt))
        if not Path(ckpt).exists() and tagged:
            net, names = _published(tagged[0], str(ckpt))
            windows = WindowSettings(net.sample_rate)
        else:
            net, section = load_classifier(ckpt)
            windows = WindowSettings.from_section(section, net.sample_rate)
            names = list(net.class_names)
        source = str(ckpt)
    if window_sec is not None:
        windows = replace(windows, window_sec=window_sec)
    if hop_sec is not None:
        windows = replace(windows, hop_sec=hop_sec)
    return net.eval(), windows, names, source


def _published(family: str, spec: str) -> tuple[Any, list[str]]:
    """A family with published weights ``spec`` (a tag, or a file, hub name or URL), and the
    weights' label names (empty when they have none: the classifier is a placeholder)."""
    from audio_cls.models import create_published, find_pretrained

    found = find_pretrained(spec)
    net = create_published(family, spec)
    return net, list(net.class_names) if found and found[1].class_names else []


# ---------------------------------------------------------------------------------------------
# the clips


@dataclass(frozen=True)
class EmbedClip:
    """One clip to embed, with what the Parquet file says of it.

    Attributes:
        clip_id: Its name.
        path: Its file.
        fold: Its fold (-1: unknown).
        label: Its class name ("": unknown).
        target: Its class index (-1: unknown).
    """

    clip_id: str
    path: str | Path
    fold: int = -1
    label: str = ""
    target: int = -1


def clips_of_data(
    data: AudioDataModule, folds: list[int] | None = None
) -> tuple[list[EmbedClip], list[str]]:
    """Every clip of ``data``'s manifest (of ``folds`` only, when given), in manifest order,
    with the data set's class names."""
    manifest = data.manifest
    names = list(manifest.class_names)
    clips = manifest.clips
    if folds is not None:
        missing = sorted(set(folds) - set(manifest.folds))
        if missing or not folds:
            raise UsageError(
                f"--folds {folds}: the data set at {data.root} has no fold(s) "
                f"{missing or folds}; it has folds {manifest.folds}"
            )
        clips = manifest.select(folds)
    return [
        EmbedClip(c.clip_id, c.path, c.fold, names[c.label] if c.label >= 0 else "", c.label)
        for c in clips
    ], names


def clips_of_inputs(inputs: list[str]) -> list[EmbedClip]:
    """Files, folders and CSV manifests as ``classify`` reads them; no labels, fold -1."""
    from audio_cls.data.sources.files import AudioFiles

    return [EmbedClip(c.clip_id, c.path) for c in AudioFiles(inputs).manifest(Path(".")).clips]


def shard_clips(clips: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s contiguous share of ``clips`` (sizes differ by at most one): the shards
    in rank order are the clips in order."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"--rank must be in 0..world_size-1, got rank {rank} of {world_size}")
    n = len(clips)
    return list(clips[rank * n // world_size : (rank + 1) * n // world_size])


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class EmbedReport:
    """What one process embedded.

    Attributes:
        path: The file written (``FILE`` or its shard).
        clips: Clips with rows.
        windows: Window rows.
        dim: Embedding width D.
        seconds: Wall time of decoding and embedding.
        errors: Clip id -> why it has no rows (unreadable file, ...).
        warnings: Clip id -> why its embedding means little (silent, very short).
    """

    path: Path
    clips: int = 0
    windows: int = 0
    dim: int = 0
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


def _schema(dim: int, meta: dict[str, Any], shard: dict[str, int] | None) -> Any:
    pa = arrow()

    columns = [
        ("clip_id", pa.string()),
        ("path", pa.string()),
        ("fold", pa.int64()),
        ("label", pa.string()),
        ("target", pa.int64()),
        ("level", pa.string()),
        ("start_sec", pa.float64()),
        ("end_sec", pa.float64()),
        *((f"emb_{i}", pa.float32()) for i in range(dim)),
    ]
    metadata = {META_KEY: json.dumps(meta)}
    if shard is not None:
        metadata[SHARD_KEY] = json.dumps(shard)
    return pa.schema(columns, metadata=metadata)


def _clip_rows(clip: EmbedClip, p: ClipPrediction, windows: WindowSettings) -> dict[str, Any]:
    """A clip's rows: its windows, then the mean, std and max over them."""
    w = p.window_probs.numpy().astype(np.float32, copy=False)  # (n, D) window embeddings
    n = len(w)
    sr = windows.sample_rate
    starts = p.starts.numpy().astype(np.float64) / sr
    return {
        "clip_id": [clip.clip_id] * (n + 3),
        "path": [p.path or printable_path(clip.path)] * (n + 3),
        "fold": np.full(n + 3, clip.fold, np.int64),
        "label": [clip.label] * (n + 3),
        "target": np.full(n + 3, clip.target, np.int64),
        "level": ["window"] * n + list(LEVELS[1:]),
        "start_sec": np.concatenate([starts, np.zeros(3)]),
        "end_sec": np.concatenate([starts + windows.window / sr, np.full(3, p.num_samples / sr)]),
        "emb": np.concatenate([w, w.mean(0)[None], w.std(0)[None], w.max(0)[None]]),
    }


class _ParquetRows:
    """Rows written in row groups to ``path`` (through a ``.partial`` file renamed at the end,
    so a reader never sees half a file)."""

    def __init__(self, path: Path, schema: Any) -> None:
        pq = parquet()
        self.path, self.schema = path, schema
        self.partial = path.with_name(f".{path.name}.partial")
        self.dim = len(schema) - 8
        self.group_rows = max(1024, 2**22 // max(self.dim, 1))  # ~16 MB of embeddings a group
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.partial, schema)
        except OSError as err:
            raise UsageError(
                f"--out {path}: cannot write there ({err.strerror or err}); pick another path"
            ) from None
        self.blocks: list[dict[str, Any]] = []
        self.pending = 0

    def add(self, block: dict[str, Any]) -> None:
        self.blocks.append(block)
        self.pending += len(block["level"])
        if self.pending >= self.group_rows:
            self.flush()

    def flush(self) -> None:
        pa = arrow()

        if not self.blocks:
            return
        emb = np.concatenate([b["emb"] for b in self.blocks])
        arrays = []
        for name in self.schema.names[:8]:
            values = [b[name] for b in self.blocks]
            if isinstance(values[0], np.ndarray):
                arrays.append(pa.array(np.concatenate(values)))
            else:
                arrays.append(pa.array([v for block in values for v in block], pa.string()))
        arrays += [pa.array(np.ascontiguousarray(emb[:, i])) for i in range(self.dim)]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.blocks, self.pending = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self.writer.close()
        self.partial.unlink(missing_ok=True)


def embed_clips(
    predictor: Predictor,
    clips: Sequence[EmbedClip],
    out: str | Path,
    meta: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
) -> EmbedReport:
    """Embed rank ``rank``'s share of ``clips`` (:func:`shard_clips`) and write its rows.

    Args:
        predictor: The inference core, with ``tap`` set.
        clips: Every clip, in order (each process gets the whole list).
        out: The Parquet file; with ``world_size`` > 1 this rank writes :func:`shard_path`.
        meta: The JSON stored under :data:`META_KEY`.
        rank: This process's rank.
        world_size: How many processes share the clips.
    """
    if predictor.tap is None:
        raise ValueError("embed_clips needs a Predictor with a tap (e.g. tap='embedding')")
    mine = shard_clips(clips, rank, world_size)
    path = Path(out) if world_size == 1 else shard_path(out, rank)
    windows = predictor.windows
    # one silent window: checks the tap before any decoding and gives the width
    dim = predictor.predict_windows(np.zeros((1, windows.window), np.float32)).shape[1]
    shard = None if world_size == 1 else {"rank": rank, "world_size": world_size}
    rows = _ParquetRows(path, _schema(dim, meta, shard))
    report = EmbedReport(path, dim=dim)
    started = time.perf_counter()
    try:
        predictions = predictor.predict_files((c.clip_id, c.path) for c in mine)
        for clip, prediction in zip(mine, predictions):
            if prediction.error is not None:
                report.errors[clip.clip_id] = prediction.error
                continue
            if prediction.warning is not None:
                report.warnings[clip.clip_id] = prediction.warning
            rows.add(_clip_rows(clip, prediction, windows))
            report.clips += 1
            report.windows += len(prediction.starts)
        rows.close()
        # one form of FILE at a time, so readers never take an older run for this one
        if world_size == 1:
            for stale in path.parent.glob(f"{path.stem}.rank*{path.suffix}"):
                stale.unlink()
        elif rank == 0:
            Path(out).unlink(missing_ok=True)
    except BaseException:
        rows.abort()
        raise
    report.seconds = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------------------------------
# the verb


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size: given, else torchrun's ``RANK``/``WORLD_SIZE``, else 0 of 1."""
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    me = rank if rank is not None else int(os.environ.get("RANK", 0))
    if world < 1 or not 0 <= me < world:
        raise UsageError(
            f"--rank must be in 0..{world - 1} and --world_size >= 1, got rank {me} of {world}"
        )
    return me, world


def embed(
    inputs: list[str] | None = None,
    ckpt: str | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    out: str = "embeddings.parquet",
    tap: str = "embedding",
    folds: list[int] | None = None,
    window_sec: float | None = None,
    hop_sec: float | None = None,
    tta: int = 1,
    tta_max_shift: float = 0.1,
    batch_size: int = 256,
    device: str = "auto",
    precision: Literal["32", "bf16"] = "32",
    limit: int | None = None,
    strict: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    data: AudioDataModule | None = None,
) -> EmbedReport:
    """Write per-window embeddings (and each clip's mean, std and max over its windows) of a
    data set or of audio files to Parquet.

    Args:
        inputs: Audio files, folders (recursive) or ``.csv`` manifests (a ``path`` column),
            given as bare words; their label is empty and their fold -1. Leave out with
            ``--config``.
        ckpt: Checkpoint (``.ckpt``) of ``audio-cls fit`` (cut into the windows it was trained
            on), or a tag of published weights (``audio-cls models --pretrained``).
        model: A registry family (``audio-cls models``), with ``--pretrained``; instead of
            ``--ckpt``.
        pretrained: The family's published weights: a tag, a local file, hub name or URL.
        out: The Parquet file; with several ranks each writes ``FILE.rank<R>.parquet``.
        tap: Which output of the model's ``forward_intermediates`` (``embedding``: the
            pre-logit embedding; an unknown name lists the model's taps). A map ``(B, C, F,
            T)`` or a sequence ``(B, L, D)`` is averaged to one vector per window over
            everything but its channels or features (the ``frontend`` tap over frames).
        folds: With ``--config``: only these folds (``--folds 1 2`` or ``--folds [1,2]``;
            None: every clip of the data set).
        window_sec: Window length in seconds (None: the checkpoint's, or 0.96 s for published
            weights).
        hop_sec: Hop between windows (None: the checkpoint's, or half a window).
        tta: Time-shifted copies averaged per window (1: off).
        tta_max_shift: Largest TTA shift, as a fraction of the window.
        batch_size: Windows per forward pass.
        device: ``auto`` (CUDA when available; with several ranks ``cuda:$LOCAL_RANK``),
            ``cpu`` or ``cuda``.
        precision: ``32``, or ``bf16``: the model (not the front end) under bf16 autocast; the
            embeddings are written as float32 either way.
        limit: Only the first N clips.
        strict: Exit with status 1 when any file could not be read (default: list it on
            stderr, go on).
        rank: This process's share of the clips (None: ``$RANK`` as torchrun sets it, else 0).
        world_size: How many processes share the clips (None: ``$WORLD_SIZE``, else 1).
        data: A data module whose manifest gives the clips, labels and folds (the Python
            counterpart of ``--config``/``--data.*``).
    """
    for option, value in (("--tta", tta), ("--batch_size", batch_size)):
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1 (or left out for every clip), got {limit}")
    if bool(inputs) == (data is not None):
        raise UsageError(
            "give the clips either as bare inputs (files, folders, CSV manifests) or as a data "
            "set (--config CONFIG with its data: section, --data.* overrides), not both"
            if inputs
            else "nothing to embed: give audio files, folders or CSV manifests, or a data set "
            "(--config CONFIG, --data.root ...)"
        )
    if folds is not None and data is None:
        raise UsageError("--folds selects folds of a data set: give --config CONFIG too")
    rank, world_size = _distributed(rank, world_size)
    net, windows, names, source = load_embedder(ckpt, model, pretrained, window_sec, hop_sec)
    if data is not None:
        clips, names = clips_of_data(data, folds)
    else:
        clips = clips_of_inputs(list(inputs or []))
    clips = clips[:limit]
    if device == "auto" and world_size > 1 and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        device = f"cuda:{local}"
    predictor = Predictor(
        net,
        windows,
        batch_size=batch_size,
        tta=TimeShiftTTA(tta, tta_max_shift),
        device=device,
        precision=precision,
        tap=tap,
    )
    meta = {
        "class_names": names,
        "tap": tap,
        "model": getattr(net, "registry_name", type(net).__name__),
        "sample_rate": windows.sample_rate,
        "window_sec": windows.window / windows.sample_rate,
        "hop_sec": windows.hop / windows.sample_rate,
        "checkpoint": source,
    }
    report = embed_clips(predictor, clips, out, meta, rank, world_size)
    report_clip_problems(report.errors, report.warnings)
    shard = f" (rank {rank} of {world_size})" if world_size > 1 else ""
    print(
        f"{report.clips} clips, {report.windows} windows{shard} in {report.seconds:.1f} s "
        f"({report.windows / max(report.seconds, 1e-9):.0f} windows/s), {report.dim} "
        f"dimensions of tap {tap}"
        + (f"; {len(report.errors)} unreadable, listed above" if report.errors else "")
        + f"\nembeddings: {report.path}"
        + (f" (read_embeddings({out!r}) reads the {world_size} shards)" if shard else "")
    )
    if strict and report.errors:
        sys.exit(1)
    return report


# ---------------------------------------------------------------------------------------------
# the command line


def _parser() -> Any:
    import inspect

    from jsonargparse import ArgumentParser

    from audio_cls.data import AudioDataModule

    doc = inspect.getdoc(embed) or ""
    parser = ArgumentParser(
        prog="audio-cls embed",
        description=doc.split("\n\nArgs:")[0]
        + "\n\nWith --config, the clips are the data set of a training config's data: section "
        "(labels and folds included), which --data.* options override.",
    )
    parser.add_argument(
        "--config",
        type=str,
        help="A YAML: its data: section (a training config's) gives the clips; its top-level "
        "keys named like this verb's options set them. May repeat.",
    )
    parser.add_function_arguments(embed, fail_untyped=True, skip={"data"})
    parser.add_class_arguments(AudioDataModule, "data", fail_untyped=False)
    return parser


def _split_configs(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--config FILE`` (or ``--config=FILE``) apart from the other options."""
    configs, rest, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--config" and i + 1 < len(argv):
            configs.append(argv[i + 1])
            i += 1
        elif token.startswith("--config="):
            configs.append(token.split("=", 1)[1])
        else:
            rest.append(token)
        i += 1
    return configs, rest


def _join_folds(argv: list[str]) -> list[str]:
    """``--folds 1 2 3`` -> ``--folds [1,2,3]``."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == "--folds":
            values = []
            while i + 1 < len(argv) and re.fullmatch(r"-?\d+", argv[i + 1]):
                values.append(argv[i + 1])
                i += 1
            if values:
                out.append(f"[{','.join(values)}]")
        i += 1
    return out


def _read_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise UsageError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"--config {path}: expected a YAML mapping (options, or a data: section)")
    return doc


def main(argv: list[str]) -> EmbedReport | None:
    """``audio-cls embed``: its options, plus ``--config`` and ``--data.*`` for a data set."""
    import inspect

    from audio_cls.commands import _bare_flags, _gather_positionals

    parser = _parser()
    configs, argv = _split_configs(argv)
    argv = _join_folds(_bare_flags(argv, {"strict"}))
    argv, words = _gather_positionals(argv)
    options = set(inspect.signature(embed).parameters) - {"data"}
    defaults: dict[str, Any] = {}
    data_argv: list[str] = []
    for path in configs:
        doc = _read_config(path)
        if isinstance(doc.get("data"), dict):
            data_argv += ["--data", json.dumps(doc["data"])]
        # a training config's model: is a class_path mapping, not the --model NAME option
        defaults.update({k: v for k, v in doc.items() if k in options and not isinstance(v, dict)})
    if words:
        defaults["inputs"] = words
    parser.set_defaults(defaults)
    config = parser.parse_args(data_argv + argv)
    data = None
    if data_argv or any(t.startswith("--data") for t in argv):
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        data = instantiate(config).data
    return embed(**{name: config.get(name) for name in options}, data=data)
