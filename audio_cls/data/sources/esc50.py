"""ESC-50: 2000 five-second environmental recordings, 50 classes, 5 folds (and ESC-10).

Piczak, "ESC: Dataset for Environmental Sound Classification", ACM MM 2015.
https://github.com/karolpiczak/ESC-50 - audio from freesound.org, license CC BY-NC 3.0.

Layout: ``root/meta/esc50.csv`` (filename, fold, target, category, esc10, src_file, take) and
``root/audio/<filename>``. Folds follow the dataset (clips of one source recording share a fold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from audio_cls.data.sources._common import (
    ArchiveSource,
    existing_names,
    missing_files_error,
    parse_fold_rows,
    read_csv,
)
from audio_cls.data.sources.base import Clip, Manifest, ManifestError

__all__ = ["ESC50"]


class ESC50(ArchiveSource):
    """ESC-50, or its 10-class subset ESC-10.

    Labels are the dataset's targets renumbered 0..C-1 in target order (ESC-10 targets have
    gaps); class names are the ``category`` column.

    Args:
        subset: ``"esc50"`` for all clips, ``"esc10"`` for the rows marked ``esc10``.
        download: Fetch the public archive into the root when ``meta/esc50.csv`` is missing.
    """

    NAME = "ESC-50"
    ARCHIVE_FOLDER = "ESC-50-master"
    CSV = Path("meta") / "esc50.csv"
    URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"
    default_folds = ((1, 2, 3), (4,), (5,))

    def __init__(self, subset: Literal["esc50", "esc10"] = "esc50", download: bool = True) -> None:
        if subset not in ("esc50", "esc10"):
            raise ValueError(f"subset must be 'esc50' or 'esc10', got {subset!r}")
        self.subset = subset
        super().__init__(download)

    def manifest(self, root: Path) -> Manifest:
        root = Path(root)
        csv_path = self.csv_path(root)
        rows = read_csv(csv_path, ("filename", "fold", "target", "category"))
        if self.subset == "esc10" and rows and "esc10" in rows[0][1]:
            # a CSV without the esc10 column is taken to hold ESC-10 already
            rows = [(n, r) for n, r in rows if r["esc10"].lower() in ("true", "1", "yes")]
            if not rows:
                raise ManifestError(f"{csv_path}: no row has esc10 set to True")
        parsed, index, names = parse_fold_rows(
            rows, csv_path, ("filename", "fold", "target", "category")
        )
        audio = root / "audio"
        present = existing_names(audio)
        missing = [audio / f for f, *_ in parsed if f not in present]
        if missing:
            raise missing_files_error(
                csv_path,
                missing,
                "Re-extract the archive so that audio/ is complete, or point "
                "--data.root at a complete copy.",
            )
        clips = [Clip(audio / f, index[t], fold, Path(f).stem) for f, fold, t, _ in parsed]
        return Manifest(clips, names, root)
