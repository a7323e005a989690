"""Class folders: ``root/<class name>/**/<file>``, one folder per class.

The simplest way to bring your own data. Folds are dealt deterministically, stratified per
class; a ``group_pattern`` keeps files cut from one source recording in one fold, which
otherwise leak between train and test and inflate scores.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from audio_cls.data.sources._common import assign_folds, check_num_folds, split_folds
from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError
from audio_cls.io import AUDIO_EXTENSIONS

__all__ = ["ClassFolders", "file_group"]

_log = logging.getLogger(__name__)


def file_group(stem: str, pattern: re.Pattern[str] | None, fallback: str) -> str:
    """Fold-group key of a file: the pattern's first group (or whole match) in ``stem``.

    Files the pattern does not match are their own group, keyed by ``fallback``.
    """
    if pattern is not None:
        m = pattern.search(stem)
        if m:
            # prefixed so that a matched group never equals some file's fallback name
            return "group:" + (m.group(1) if pattern.groups else m.group(0))
    return "file:" + fallback


def compile_group_pattern(group_pattern: str | None) -> re.Pattern[str] | None:
    if group_pattern is None:
        return None
    try:
        return re.compile(group_pattern)
    except re.error as e:
        raise ValueError(f"group_pattern {group_pattern!r} is not a valid regex ({e})") from None


class ClassFolders(ClipSource):
    """Audio files sorted into one subfolder per class.

    Class names are the subfolder names, sorted; files are searched recursively. Clip ids are
    the paths relative to the root. Folds: train 1..K-2, validate K-1, test K.

    Args:
        num_folds: Folds to deal the files into (K, at least 3).
        group_pattern: Regex applied to each file stem; files whose first group (or whole match)
            is equal share a fold, e.g. ``r"^(\\d+)-"`` for ``<recording id>-<n>.wav``. Files
            it does not match form groups of one.
        extensions: File extensions to include (default: every format ``audio_cls.io`` reads).
    """

    def __init__(
        self,
        num_folds: int = 5,
        group_pattern: str | None = None,
        extensions: list[str] | None = None,
    ) -> None:
        check_num_folds(num_folds)
        self.num_folds = num_folds
        self.group_pattern = group_pattern
        self._pattern = compile_group_pattern(group_pattern)
        exts = AUDIO_EXTENSIONS if extensions is None else extensions
        self.extensions = frozenset("." + e.lower().lstrip(".") for e in exts)
        if not self.extensions:
            raise ValueError("extensions must not be empty")
        self.default_folds = split_folds(num_folds)

    def manifest(self, root: Path) -> Manifest:
        root = Path(root)
        if not root.is_dir():
            raise ManifestError(f"{root}: not a folder; pass --data.root /path/to/class/folders")
        classes = sorted(
            e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")
        )
        if not classes:
            raise ManifestError(
                f"{root}: no class folders found; expected one subfolder per class "
                "(root/<class>/<file>)"
            )
        files: list[Path] = []
        labels: list[str] = []
        kept: list[str] = []
        for name in classes:
            found = self._scan(root / name)
            if not found:
                _log.warning(
                    "%s: no audio files (%s), class skipped",
                    root / name,
                    " ".join(sorted(self.extensions)),
                )
                continue
            kept.append(name)
            files += found
            labels += [name] * len(found)
        if not files:
            raise ManifestError(
                f"{root}: class folders {classes[:5]} hold no files with extensions "
                f"{' '.join(sorted(self.extensions))}"
            )
        rel = [p.relative_to(root).as_posix() for p in files]
        groups = [file_group(p.stem, self._pattern, r) for p, r in zip(files, rel)]
        folds = assign_folds(labels, groups, self.num_folds)
        index = {name: i for i, name in enumerate(kept)}
        clips = [Clip(p, index[lab], f, r) for p, lab, f, r in zip(files, labels, folds, rel)]
        return Manifest(clips, kept, root)

    def _scan(self, folder: Path) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [
                Path(dirpath, f)
                for f in filenames
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in self.extensions
            ]
        return sorted(found)
