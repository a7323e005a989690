"""Unlabelled audio for prediction: files, folders (searched recursively) and CSV manifests."""

from __future__ import annotations

import csv
from pathlib import Path

from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError
from audio_cls.io import AUDIO_EXTENSIONS

__all__ = ["AudioFiles"]


class AudioFiles(ClipSource):
    """Clips named on the command line.

    Args:
        paths: Audio files, folders (every audio file below them) or ``.csv`` manifests with a
            ``path`` column (relative to the CSV's folder).
        class_names: Names the labels will index (the model's); labels are unknown (-1).
    """

    default_folds = ((), (), (0,))

    def __init__(self, paths: list[str], class_names: list[str] | None = None) -> None:
        if not paths:
            raise ValueError("AudioFiles needs at least one file, folder or manifest")
        self.paths = [Path(p).expanduser() for p in paths]
        self.class_names = list(class_names or [])

    def _expand(self) -> list[tuple[Path, str]]:
        found: list[tuple[Path, str]] = []
        for given in self.paths:
            if given.is_dir():
                files = sorted(
                    p
                    for p in given.rglob("*")
                    if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                )
                if not files:
                    raise ManifestError(f"{given}: no audio files in this folder")
                found += [(p, str(p.relative_to(given).with_suffix(""))) for p in files]
            elif given.suffix.lower() == ".csv":
                with given.open(newline="") as f:
                    reader = csv.DictReader(f)
                    if "path" not in (reader.fieldnames or []):
                        raise ManifestError(f"{given}: a prediction manifest needs a 'path' column")
                    for row in reader:
                        path = given.parent / row["path"]
                        found.append(
                            (path, row.get("clip_id") or str(Path(row["path"]).with_suffix("")))
                        )
            elif given.exists():
                found.append((given, given.stem))
            else:
                raise ManifestError(f"{given}: no such file or folder")
        return found

    def manifest(self, root: Path) -> Manifest:
        clips, seen = [], set()
        for path, clip_id in self._expand():
            if clip_id in seen:  # same stem from two places: fall back to the full path
                clip_id = str(path)
            seen.add(clip_id)
            clips.append(Clip(path=path, label=-1, fold=0, clip_id=clip_id))
        return Manifest(clips, self.class_names)
