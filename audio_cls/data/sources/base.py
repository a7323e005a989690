"""What every clip source yields: a manifest of clips and the class names.

A source knows one dataset layout. It never decodes audio (that is ``audio_cls.io`` and the
cache) and never imports a model.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Clip", "ClipSource", "Manifest", "ManifestError"]


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
    """

    path: Path
    label: int
    fold: int
    clip_id: str


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

    @property
    def folds(self) -> list[int]:
        return sorted({c.fold for c in self.clips})

    def select(self, folds: Iterable[int]) -> list[Clip]:
        wanted = set(folds)
        return [c for c in self.clips if c.fold in wanted]


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
