"""Unlabelled audio for prediction: files, folders (searched recursively) and CSV manifests."""

from __future__ import annotations

import logging
from pathlib import Path

from audio_cls.data.sources._common import read_csv_table
from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError
from audio_cls.data.sources.folder import AudioWalk
from audio_cls.io import AUDIO_EXTENSIONS, printable_path

__all__ = ["AudioFiles"]

_log = logging.getLogger(__name__)


class AudioFiles(ClipSource):
    """Clips named on the command line.

    An input that does not exist (a file, a folder, or a file a manifest lists) does not stop
    the others: it stays in the manifest as a clip whose path does not exist, so that the
    decoder reports it ("file not found") beside the predictions of the rest, and it is listed
    in ``missing``. Only when none of the inputs exists is that an error.

    Args:
        paths: Audio files, folders (every audio file below them, symbolic links followed
            safely as ``ClassFolders`` does) or ``.csv`` manifests with a ``path`` column
            (relative to the CSV's folder; an optional ``clip_id`` column).
        class_names: Names the labels will index (the model's); labels are unknown (-1).

    Attributes:
        missing: After ``manifest``: the inputs and listed files that do not exist, in order.
    """

    default_folds = ((), (), (0,))

    def __init__(self, paths: list[str], class_names: list[str] | None = None) -> None:
        if not paths:
            raise ValueError("AudioFiles needs at least one file, folder or manifest")
        self.paths = [Path(p).expanduser() for p in paths]
        self.class_names = list(class_names or [])
        self.missing: list[Path] = []

    def _expand(self) -> list[tuple[Path, str]]:
        found: list[tuple[Path, str]] = []
        self.missing = []
        absent = 0  # inputs (not files a manifest lists) that do not exist
        walk = AudioWalk(AUDIO_EXTENSIONS)
        for given in self.paths:
            if given.is_dir():
                files = walk.files(given)
                if not files:
                    _log.warning("%s: no audio files in this folder", printable_path(given))
                found += [(p, printable_path(p.relative_to(given).with_suffix(""))) for p in files]
            elif given.suffix.lower() == ".csv" and given.is_file():
                found += self._read_csv(given)
            elif given.exists():
                found.append((given, printable_path(given.stem)))
            else:
                absent += 1
                self.missing.append(given)
                found.append((given, printable_path(given.stem or given)))
        if absent == len(self.paths):
            shown = ", ".join(printable_path(p) for p in self.paths[:5])
            more = f" and {len(self.paths) - 5} more" if len(self.paths) > 5 else ""
            raise ManifestError(
                f"no such file or folder: {shown}{more}; check the paths (none of the "
                f"{len(self.paths)} input(s) exists)"
            )
        if not found:
            shown = ", ".join(printable_path(p) for p in self.paths[:5])
            raise ManifestError(f"{shown}: no audio files found in the input(s)")
        return found

    def _read_csv(self, csv_path: Path) -> list[tuple[Path, str]]:
        _, rows = read_csv_table(csv_path, ("path",))  # reads a spreadsheet's BOM too
        if not rows:
            raise ManifestError(
                f"{printable_path(csv_path)}: lists no files (only a header); add one row per "
                "audio file with its path in the 'path' column"
            )
        found = []
        for line, row in rows:
            if not row["path"]:
                raise ManifestError(
                    f"{printable_path(csv_path)}, line {line}: empty path; fill it or delete "
                    "the row"
                )
            path = csv_path.parent / row["path"]  # an absolute path replaces the folder
            if not path.exists():
                self.missing.append(path)
            found.append((path, row.get("clip_id") or str(Path(row["path"]).with_suffix(""))))
        return found

    def manifest(self, root: Path) -> Manifest:
        clips, seen = [], set()
        for path, clip_id in self._expand():
            if clip_id in seen:  # same stem from two places: fall back to the full path
                clip_id = printable_path(path)
            seen.add(clip_id)
            clips.append(Clip(path=path, label=-1, fold=0, clip_id=clip_id))
        if self.missing:
            shown = "\n  ".join(printable_path(p) for p in self.missing[:20])
            more = f"\n  ... and {len(self.missing) - 20} more" if len(self.missing) > 20 else ""
            _log.warning(
                "%d input(s) do not exist; they are reported as unreadable:\n  %s%s",
                len(self.missing),
                shown,
                more,
            )
        return Manifest(clips, self.class_names)
