"""What every clip source yields: a manifest of clips and the class names.

A source knows one dataset layout. It never decodes audio (that is ``audio_cls.io`` and the
cache) and never imports a model.
"""

from __future__ import annotations

import abc
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["SOFT_TOLERANCE", "Clip", "ClipSource", "Manifest", "ManifestError", "soft_targets"]

#: How far a soft target's sum may stray from 1 (probabilities written with a few decimals).
SOFT_TOLERANCE = 1e-3


class ManifestError(ValueError):
    """A dataset's metadata is missing or wrong; the message names the file/row and the fix."""


@dataclass(frozen=True)
class Clip:
    """One labelled recording.

    Attributes:
        path: Audio file.
        label: Index into ``Manifest.class_names``; -1 when unknown (prediction).
        fold: Cross-validation fold, 1-based.
        clip_id: Unique, stable name of the clip (used in prediction files).
        soft: Probability over ``Manifest.class_names`` (a soft target), or None for a hard
            label only. Sources set ``label`` to its argmax when no hard label is given, so
            metrics and clip aggregation score the most probable class.
    """

    path: Path
    label: int
    fold: int
    clip_id: str
    soft: tuple[float, ...] | None = None


@dataclass
class Manifest:
    """Clips plus the class names their labels index."""

    clips: list[Clip]
    class_names: list[str]
    root: Path | None = field(default=None)

    def __post_init__(self) -> None:
        counts = Counter(c.clip_id for c in self.clips)
        if len(counts) != len(self.clips):
            dup = sorted(i for i, n in counts.items() if n > 1)[:5]
            raise ManifestError(f"duplicate clip ids in manifest: {dup}")
        n = len(self.class_names)
        bad = [c for c in self.clips if not -1 <= c.label < n]
        if bad:
            raise ManifestError(
                f"{bad[0].clip_id}: label {bad[0].label} is outside 0..{n - 1} "
                f"({len(bad)} clip(s) affected)"
            )
        wrong = [(c, why) for c in self.clips if c.soft is not None and (why := _soft_error(c, n))]
        if wrong:
            clip, why = wrong[0]
            raise ManifestError(
                f"{clip.clip_id}: soft target {why} ({len(wrong)} clip(s) affected)"
            )

    @property
    def folds(self) -> list[int]:
        return sorted({c.fold for c in self.clips})

    def select(self, folds: Iterable[int]) -> list[Clip]:
        wanted = set(folds)
        return [c for c in self.clips if c.fold in wanted]


def _soft_error(clip: Clip, num_classes: int) -> str:
    """What is wrong with a clip's soft target ('' when nothing)."""
    soft = clip.soft or ()
    if len(soft) != num_classes:
        return f"has {len(soft)} value(s) for {num_classes} classes"
    for i, p in enumerate(soft):
        if not math.isfinite(p) or p < 0:
            return f"value {p} for class {i} is not a finite probability >= 0"
    total = math.fsum(soft)
    if abs(total - 1) > SOFT_TOLERANCE:
        return f"sums to {total:g}, not 1 (within {SOFT_TOLERANCE:g})"
    return ""


def soft_targets(clips: Sequence[Clip]) -> np.ndarray | None:
    """The clips' soft targets as a ``(N, C)`` float32 array, or None when no clip has one.

    A clip without a soft target gets the one-hot row of its label (all zeros when the label is
    unknown, -1), so soft and hard clips can share one batch.
    """
    width = next((len(c.soft) for c in clips if c.soft is not None), 0)
    if not width:
        return None
    table = np.zeros((len(clips), width), dtype=np.float32)
    for i, c in enumerate(clips):
        if c.soft is not None:
            table[i] = c.soft
        elif c.label >= 0:
            table[i, c.label] = 1.0
    return table


class ClipSource(abc.ABC):
    """A dataset layout on disk.

    Subclasses are configured in YAML under ``data.source``; the dataset location is the data
    module's ``root`` and is passed to every call, so ``--data.root`` works for every source.
    """

    #: (train, val, test) folds that the dataset's own convention uses.
    default_folds: tuple[Sequence[int], Sequence[int], Sequence[int]] = ((1, 2, 3), (4,), (5,))

    def prepare(self, root: Path) -> None:  # noqa: B027 - optional hook
        """Download or generate the data when ``root`` lacks it (runs once, on rank 0).

        Raises a ``ManifestError`` that says how to provide the data by hand when it cannot.
        """

    @abc.abstractmethod
    def manifest(self, root: Path) -> Manifest:
        """Read the clips under ``root``."""
