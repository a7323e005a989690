"""UrbanSound8K: 8732 urban sound excerpts (<= 4 s), 10 classes, 10 predefined folds.

Salamon, Jacoby, Bello, "A Dataset and Taxonomy for Urban Sound Research", ACM MM 2014.
https://urbansounddataset.weebly.com/urbansound8k.html - audio from freesound.org, license
CC BY-NC 3.0. Use the predefined folds: slices of one recording share a fold, and reshuffling
them inflates scores.

Layout: ``root/metadata/UrbanSound8K.csv`` (slice_file_name, fsID, start, end, salience, fold,
classID, class) and ``root/audio/fold<N>/<slice_file_name>``.
"""

from __future__ import annotations

from pathlib import Path

from audio_cls.data.sources._common import (
    ArchiveSource,
    existing_names,
    missing_files_error,
    parse_fold_rows,
    read_csv,
)
from audio_cls.data.sources.base import Clip, Manifest

__all__ = ["UrbanSound8K"]


class UrbanSound8K(ArchiveSource):
    """UrbanSound8K with its ten folds: train 1-8, validate 9, test 10.

    Labels are ``classID`` (renumbered 0..C-1 in id order should a trimmed CSV leave gaps);
    class names come from the ``class`` column.

    Args:
        download: Fetch the public archive (about 6 GB) into the root when the CSV is missing.
    """

    NAME = "UrbanSound8K"
    ARCHIVE_FOLDER = "UrbanSound8K"
    CSV = Path("metadata") / "UrbanSound8K.csv"
    URL = "https://zenodo.org/record/1203745/files/UrbanSound8K.tar.gz"
    default_folds = (tuple(range(1, 9)), (9,), (10,))

    def manifest(self, root: Path) -> Manifest:
        root = Path(root)
        csv_path = self.csv_path(root)
        rows = read_csv(csv_path, ("slice_file_name", "fold", "classID", "class"))
        parsed, index, names = parse_fold_rows(
            rows, csv_path, ("slice_file_name", "fold", "classID", "class")
        )
        audio = root / "audio"
        present = {fold: existing_names(audio / f"fold{fold}") for fold in {p[1] for p in parsed}}
        missing = [audio / f"fold{fold}" / f for f, fold, *_ in parsed if f not in present[fold]]
        if missing:
            raise missing_files_error(
                csv_path,
                missing,
                "Re-extract the archive so that audio/fold1..fold10 are "
                "complete, or point --data.root at a complete copy.",
            )
        clips = [
            Clip(audio / f"fold{fold}" / f, index[t], fold, Path(f).stem)
            for f, fold, t, _ in parsed
        ]
        return Manifest(clips, names, root)
