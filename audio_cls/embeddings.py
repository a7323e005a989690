"""The embeddings file of ``audio-cls embed``: its Parquet layout, and reading it back.

One row per window and three per clip (its windows' mean, std and max); the columns are
:data:`COLUMNS` then ``emb_0 .. emb_{D-1}`` (float32), the schema metadata holds JSON under
:data:`META_KEY` (``class_names``, ``tap``, ``model``, ``sample_rate``, ``window_sec``,
``hop_sec``, ``checkpoint``). Several processes write ``FILE.rank<r>.parquet`` shards, which
:func:`read_table` and :func:`read_embeddings` read as the one file in rank order.
``audio-cls embed`` (:mod:`audio_cls.commands.embed`) writes it; ``audio-cls boost``
(:mod:`audio_cls.boost`) and users read it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audio_cls.extras import require

__all__ = [
    "COLUMNS",
    "LEVELS",
    "META_KEY",
    "SHARD_KEY",
    "Embeddings",
    "arrow",
    "merge_shards",
    "parquet",
    "read_embeddings",
    "read_table",
    "shard_files",
    "shard_path",
]

#: Schema-metadata key of the JSON describing the embeddings.
META_KEY = "audio_cls"
#: Schema-metadata key of a shard's ``{"rank": r, "world_size": n}``.
SHARD_KEY = "audio_cls_shard"
#: Values of the ``level`` column, in the order a clip's rows take.
LEVELS = ("window", "mean", "std", "max")
#: The columns before ``emb_0 .. emb_{D-1}``.
COLUMNS = ("clip_id", "path", "fold", "label", "target", "level", "start_sec", "end_sec")

_FEATURE = "embeddings files (Parquet)"


def arrow() -> Any:
    """``pyarrow``, or an error naming the ``boost`` extra."""
    return require("pyarrow", "boost", _FEATURE)


def parquet() -> Any:
    """``pyarrow.parquet``, or an error naming the ``boost`` extra."""
    return require("pyarrow.parquet", "boost", _FEATURE)


def shard_path(out: str | Path, rank: int) -> Path:
    """``FILE.parquet`` -> ``FILE.rank<rank>.parquet``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}{out.suffix}")


@dataclass
class Embeddings:
    """The rows of an embeddings file, as numpy arrays (one entry per row, file order).

    Attributes:
        clip_id: ``(N,)`` clip names (object array of str).
        path: ``(N,)`` files.
        fold: ``(N,)`` int64 folds, -1 when unknown.
        label: ``(N,)`` class names, "" when unknown.
        target: ``(N,)`` int64 class indices into ``meta["class_names"]``, -1 when unknown.
        level: ``(N,)`` ``window``, ``mean``, ``std`` or ``max``.
        start_sec: ``(N,)`` float64 window starts (0 on clip rows).
        end_sec: ``(N,)`` float64 window ends (the clip's length on clip rows).
        emb: ``(N, D)`` float32 embeddings.
        meta: The JSON under :data:`META_KEY`.
    """

    clip_id: np.ndarray
    path: np.ndarray
    fold: np.ndarray
    label: np.ndarray
    target: np.ndarray
    level: np.ndarray
    start_sec: np.ndarray
    end_sec: np.ndarray
    emb: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.clip_id)

    @property
    def dim(self) -> int:
        return self.emb.shape[1]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])

    def select(self, level: str) -> Embeddings:
        """The rows of one ``level`` (``window``, ``mean``, ``std``, ``max``), in order."""
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; use {', '.join(LEVELS)}")
        keep = self.level == level
        arrays = {
            name: getattr(self, name)[keep] for name in self.__dataclass_fields__ if name != "meta"
        }
        return Embeddings(**arrays, meta=self.meta)


def shard_files(path: Path) -> list[Path]:
    """The shards of ``path`` in rank order; all of them, or an error naming the missing."""
    pattern = re.compile(re.escape(path.stem) + r"\.rank(\d+)" + re.escape(path.suffix))
    found = {
        int(m.group(1)): p
        for p in (path.parent.iterdir() if path.parent.is_dir() else ())
        if (m := pattern.fullmatch(p.name))
    }
    if not found:
        raise FileNotFoundError(
            f"{path}: no such embeddings file, nor shards {shard_path(path, 0).name}, ...; "
            f"write it with `audio-cls embed --out {path}`"
        )
    pq = parquet()
    sizes = set()
    for p in found.values():
        raw = pq.read_schema(p).metadata or {}
        shard = json.loads(raw.get(SHARD_KEY.encode(), b"{}"))
        sizes.add(shard.get("world_size"))
    world_size = max((s for s in sizes if s), default=len(found))
    missing = [r for r in range(world_size) if r not in found]
    if len(sizes) > 1 or missing or len(found) != world_size:
        said = f"missing rank(s) {missing}" if missing else "shards of different runs"
        raise ValueError(
            f"{path}: its shards are incomplete (world size {world_size}, {said}); run the "
            f"missing ranks again, or remove the stale shards"
        )
    return [found[r] for r in range(world_size)]


def read_table(path: Path) -> Any:
    """The table of ``path``, or of its shards joined in rank order (without their shard key).

    ``audio-cls embed`` removes a stale ``FILE`` when it writes shards and stale shards when it
    writes ``FILE``, so at most one of the two forms is there.
    """
    if path.is_file():
        return parquet().read_table(path)
    return _join(shard_files(path), path)


def _join(shards: list[Path], path: Path) -> Any:
    pa, pq = arrow(), parquet()
    tables = [pq.read_table(p) for p in shards]
    metas = {(t.schema.metadata or {}).get(META_KEY.encode()) for t in tables}
    if len(metas) > 1 or None in metas:
        raise ValueError(f"{path}: its shards come from different runs (their metadata differ)")
    meta = {META_KEY.encode(): metas.pop()}
    return pa.concat_tables([t.replace_schema_metadata(meta) for t in tables])


def read_embeddings(path: str | Path) -> Embeddings:
    """Read ``path``, or when it does not exist its shards ``FILE.rank<r>.parquet`` in rank
    order (the rows a single process writes)."""
    table = read_table(Path(path))
    raw = (table.schema.metadata or {}).get(META_KEY.encode())
    if raw is None:
        raise ValueError(f"{path}: not an embeddings file of `audio-cls embed` (no metadata)")
    dim = sum(1 for name in table.column_names if re.fullmatch(r"emb_\d+", name))

    def column(name: str) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False)

    emb = np.empty((table.num_rows, dim), np.float32)
    for i in range(dim):
        emb[:, i] = column(f"emb_{i}")
    return Embeddings(
        *(column(n) for n in ("clip_id", "path", "fold", "label", "target", "level")),
        start_sec=column("start_sec"),
        end_sec=column("end_sec"),
        emb=emb,
        meta=json.loads(raw),
    )


def merge_shards(path: str | Path, remove: bool = True) -> Path:
    """Join the shards of ``path`` into ``path`` (rank order); remove them after with
    ``remove``."""
    pq = parquet()
    path = Path(path)
    shards = shard_files(path)
    table = _join(shards, path)  # the shards, never an older FILE beside them
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)
    if remove:
        for shard in shards:
            shard.unlink()
    return path
