"""A folder of videos labelled by a CSV of ``Id,Category`` rows (the layout of video-classification
challenges), classified by their sound.

Layout: ``root/<videos>/<id>.mp4`` (any container or audio format ``audio_cls.io`` reads:
MP4, WebM, MKV, MOV, AVI, M4A, WAV...), ``root/<labels>`` with one row per labelled video
(``Id``: its file name, with or without the extension; ``Category``: its class name), and
optionally a class map and a list of the videos to predict. Audio is decoded from each video's
first audio track in process (PyAV) and cached once, like any clip.

Such datasets have no official folds: they are dealt as ``ClassFolders`` deals them
(deterministic, stratified per class, a ``group_pattern`` keeps videos of one source together).
A listed video missing from the folder, or one without an audio track, stays in the manifest
under its own name, so the data module's decode check reports it by name (``bad_files``; stop,
or leave it out with ``--data.on_bad_file skip``); it is never dropped in silence.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from audio_cls.data.sources._common import (
    assign_folds,
    check_case_duplicates,
    check_num_folds,
    existing_names,
    read_csv_table,
    split_folds,
    warn_padded_names,
)
from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError
from audio_cls.data.sources.folder import compile_group_pattern, file_group
from audio_cls.io import AUDIO_EXTENSIONS, printable_path

__all__ = ["VideoFolder"]

_log = logging.getLogger(__name__)


class VideoFolder(ClipSource):
    """Videos in one folder, labelled by a CSV; or, with ``split="test"``, the videos to predict.

    ``split="train"`` gives the labelled videos, dealt into ``num_folds`` folds (train 1..K-2,
    validate K-1, test K). ``split="test"`` gives unlabelled clips (label -1, fold 0) for
    ``data.predict_source``: the videos that ``test_list`` names, or, without one, every video
    in the folder that ``labels`` does not list; their class names are the same class map, so
    predictions name the classes the model was trained on. Clip ids are the ``Id`` cells as
    written (without a test list: the file names without extension), which is what a
    submission file repeats.

    An ``Id`` names the file ``<Id>`` in the folder, else the one file whose name without
    extension is ``<Id>``; two files that fit (``a.mp4`` and ``a.webm``) are refused as
    ambiguous. Categories are read without surrounding spaces; categories that differ only by
    case are refused (they would be two classes).

    Args:
        videos: Folder of the videos, relative to the data root (searched without subfolders).
        labels: CSV of the labelled videos, relative to the data root.
        classes: Class names in label order: a list, or a CSV file (relative to the data root)
            whose ``label_column`` lists them in order (or ordered by an integer ``id_column``
            numbering them 0..C-1, when it has one). None: the sorted unique categories of
            ``labels``.
        split: ``train`` for the labelled videos, ``test`` for the videos to predict.
        test_list: CSV (relative to the data root) whose ``id_column`` names the videos to
            predict, for ``split="test"``. None: the videos in the folder that ``labels`` does
            not list.
        num_folds: Folds to deal the labelled videos into (K, at least 3).
        group_pattern: Regex on file names without extension whose first group (or whole
            match) names a source recording; videos of one group share a fold. None: every
            video is its own group.
        id_column: Column of the video ids.
        label_column: Column of the class names.
    """

    def __init__(
        self,
        videos: str = "videos",
        labels: str = "train.csv",
        classes: list[str] | str | None = None,
        split: Literal["train", "test"] = "train",
        test_list: str | None = None,
        num_folds: int = 5,
        group_pattern: str | None = None,
        id_column: str = "Id",
        label_column: str = "Category",
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        check_num_folds(num_folds)
        if isinstance(classes, (list, tuple)) and len(set(classes)) != len(classes):
            raise ValueError(f"classes has duplicates: {classes}")
        self.videos = videos
        self.labels = labels
        self.classes = list(classes) if isinstance(classes, (list, tuple)) else classes
        self.split = split
        self.test_list = test_list
        self.num_folds = num_folds
        self.group_pattern = group_pattern
        self._pattern = compile_group_pattern(group_pattern)
        self.id_column = id_column
        self.label_column = label_column
        self.default_folds = split_folds(num_folds) if split == "train" else ((), (), (0,))
        self.missing: list[Path] = []

    def manifest(self, root: Path) -> Manifest:
        """Read the clips under ``root``; ``missing`` lists the listed videos that do not exist.

        Raises:
            ManifestError: A CSV is missing or wrong (the message names the file and line),
                the folder is missing, or none of the listed videos exists.
        """
        root = Path(root)
        folder = root / self.videos
        if not folder.is_dir():
            raise ManifestError(
                f"{printable_path(folder)}: the videos folder does not exist; pass --data.root "
                "(the folder that holds it) or set the source's videos option"
            )
        files = _FolderIndex(folder)
        labelled = self._read_labels(root) if self.split == "train" or self._labels_needed() else []
        names = self._class_names(root, labelled)
        if self.split == "train":
            if not labelled:
                raise ManifestError(f"{printable_path(root / self.labels)}: lists no videos")
            paths = files.find_all(labelled)
            entries = [(vid, path, label) for (_, vid, label), path in zip(labelled, paths)]
        else:
            entries = [(vid, path, "") for vid, path in self._test_entries(root, files, labelled)]
        self.missing = [p for _, p, _ in entries if not files.exists(p)]
        self._report_missing(len(entries))
        if self.split == "test":
            clips = [Clip(path, -1, 0, vid) for vid, path, _ in entries]
            return Manifest(clips, names, root)
        index = {n: i for i, n in enumerate(names)}
        # keyed as the data module keys them when it explains a class's placement
        groups = [file_group(path.stem, self._pattern, vid) for vid, path, _ in entries]
        folds = assign_folds([label for _, _, label in entries], groups, self.num_folds)
        clips = [
            Clip(path, index[label], fold, vid) for (vid, path, label), fold in zip(entries, folds)
        ]
        return Manifest(clips, names, root)

    # ---------------------------------------------------------------------------- the CSVs
    def _labels_needed(self) -> bool:
        """Whether ``split="test"`` must read ``labels`` (for the class names, or to know
        which videos are unlabelled)."""
        return self.classes is None or self.test_list is None

    def _read_labels(self, root: Path) -> list[tuple[str, str, str]]:
        """``(where, id, category)`` per row of the labels CSV, ids checked unique."""
        csv_path = root / self.labels
        if not csv_path.is_file():
            raise ManifestError(
                f"{printable_path(csv_path)}: labels not found; write a CSV with columns "
                f"{self.id_column},{self.label_column} there, or set --data.root / labels"
            )
        padded: dict[str, set[str]] = {}
        _, rows = read_csv_table(csv_path, (self.id_column, self.label_column), padded)
        warn_padded_names(padded.get(self.label_column, ()), printable_path(csv_path))
        out = []
        for line, row in rows:
            where = f"{printable_path(csv_path)}, line {line}"
            vid, label = row[self.id_column], row[self.label_column]
            if not vid:
                raise ManifestError(f"{where}: empty {self.id_column}; fill it or delete the row")
            if not label:
                raise ManifestError(
                    f"{where}: empty {self.label_column} for '{vid}'; give its class, or move "
                    "the video to the test list"
                )
            out.append((where, vid, label))
        _check_unique_ids(out, self.id_column)
        return out

    def _class_names(self, root: Path, labelled: list[tuple[str, str, str]]) -> list[str]:
        """The class map, with every labelled category checked against it."""
        if isinstance(self.classes, str):
            names = self._read_class_map(root / self.classes)
        elif self.classes is not None:
            names = list(self.classes)
        else:
            names = sorted({label for _, _, label in labelled})
            if not names:
                raise ManifestError(
                    f"{printable_path(root / self.labels)}: no categories to name the classes; "
                    "give the class map (classes)"
                )
        source = self.classes if isinstance(self.classes, str) else self.labels
        check_case_duplicates(names, printable_path(root / source), "class name")
        known = set(names)
        for where, vid, label in labelled:
            if label not in known:
                near = [n for n in names if n.casefold() == label.casefold()]
                hint = (
                    f" (class names are case-sensitive: did you mean '{near[0]}'?)" if near else ""
                )
                raise ManifestError(
                    f"{where}: category '{label}' of '{vid}' is not in the class map "
                    f"{names[:10]}{' ...' if len(names) > 10 else ''}{hint}"
                )
        return names

    def _read_class_map(self, csv_path: Path) -> list[str]:
        if not csv_path.is_file():
            raise ManifestError(
                f"{printable_path(csv_path)}: class map not found; write a CSV with a "
                f"{self.label_column} column there (one class per row, in label order), or "
                "leave classes unset to use the sorted categories of the labels"
            )
        header, rows = read_csv_table(csv_path, (self.label_column,))
        where = printable_path(csv_path)
        names = [row[self.label_column] for _, row in rows]
        if not names or "" in names:
            raise ManifestError(f"{where}: the class map lists no classes, or an empty name")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ManifestError(f"{where}: class(es) {twice} listed more than once")
        if self.id_column in header:
            numbers = [row[self.id_column] for _, row in rows]
            try:
                order = [int(n) for n in numbers]
            except ValueError:
                order = []
            if sorted(order) != list(range(len(names))):
                raise ManifestError(
                    f"{where}: the {self.id_column} column must number the classes 0.."
                    f"{len(names) - 1}, each once (found {numbers[:10]}); fix it, or drop the "
                    "column to take the rows in order"
                )
            names = [n for _, n in sorted(zip(order, names))]
        return names

    def _test_entries(
        self, root: Path, files: _FolderIndex, labelled: list[tuple[str, str, str]]
    ) -> list[tuple[str, Path]]:
        """``(id, path)`` of the videos to predict."""
        if self.test_list is not None:
            csv_path = root / self.test_list
            if not csv_path.is_file():
                raise ManifestError(
                    f"{printable_path(csv_path)}: test list not found; write a CSV with an "
                    f"{self.id_column} column there, or leave test_list unset to predict the "
                    "videos that the labels do not list"
                )
            _, rows = read_csv_table(csv_path, (self.id_column,))
            listed = []
            for line, row in rows:
                where = f"{printable_path(csv_path)}, line {line}"
                if not row[self.id_column]:
                    raise ManifestError(
                        f"{where}: empty {self.id_column}; fill it or delete the row"
                    )
                listed.append((where, row[self.id_column], ""))
            if not listed:
                raise ManifestError(f"{printable_path(csv_path)}: lists no videos")
            _check_unique_ids(listed, self.id_column)
            return [(vid, path) for (_, vid, _), path in zip(listed, files.find_all(listed))]
        taken = {files.find(vid, where) for where, vid, _ in labelled}
        rest = [p for p in files.media() if p not in taken]
        if not rest:
            raise ManifestError(
                f"{printable_path(files.folder)}: every video there is labelled in "
                f"{self.labels}; nothing is left to predict (give a test_list)"
            )
        stems = [p.stem for p in rest]
        return [(p.stem if stems.count(p.stem) == 1 else p.name, p) for p in rest]

    def _report_missing(self, listed: int) -> None:
        if not self.missing:
            return
        what = self.labels if self.split == "train" else self.test_list
        if len(self.missing) == listed:
            shown = ", ".join(printable_path(p.name) for p in self.missing[:5])
            raise ManifestError(
                f"{what}: none of the {listed} video(s) it lists is in "
                f"{printable_path(self.missing[0].parent)} (e.g. {shown}); check --data.root "
                "and the source's videos folder"
            )
        shown = "\n  ".join(printable_path(p) for p in self.missing[:20])
        more = f"\n  ... and {len(self.missing) - 20} more" if len(self.missing) > 20 else ""
        _log.warning(
            "%s: %d of %d listed video(s) do not exist; they are reported as unreadable:\n  %s%s",
            what,
            len(self.missing),
            listed,
            shown,
            more,
        )


class _FolderIndex:
    """The files of the videos folder, listed once, found by name or by name without extension."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names = {n for n in existing_names(folder) if not n.startswith(".")}
        self.by_stem: dict[str, list[str]] = {}
        for name in sorted(self.names):
            if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                self.by_stem.setdefault(os.path.splitext(name)[0], []).append(name)

    def find(self, vid: str, where: str) -> Path:
        """The file an ``Id`` names; a path that does not exist when none does (reported by
        the decode check under that name)."""
        if vid in self.names:
            return self.folder / vid
        found = self.by_stem.get(vid, [])
        if len(found) > 1:
            raise ManifestError(
                f"{where}: '{vid}' could be any of {', '.join(found)}; keep one of them, or "
                "write the Id with its extension"
            )
        return self.folder / (found[0] if found else vid)

    def find_all(self, rows: Sequence[tuple[str, str, str]]) -> list[Path]:
        """``find`` for every ``(where, id, _)`` row; two ids naming one file are refused."""
        paths = [self.find(vid, where) for where, vid, _ in rows]
        first: dict[Path, tuple[str, str]] = {}
        for (where, vid, _), path in zip(rows, paths):
            if path in first:
                other_where, other = first[path]
                raise ManifestError(
                    f"{where}: '{vid}' names the same file as '{other}' ({other_where}); list "
                    "each video once"
                )
            first[path] = (where, vid)
        return paths

    def exists(self, path: Path) -> bool:
        return (path.parent == self.folder and path.name in self.names) or path.exists()

    def media(self) -> list[Path]:
        """Every file the decoder reads, sorted by name."""
        return [self.folder / n for names in self.by_stem.values() for n in names]


def _check_unique_ids(rows: Sequence[tuple[str, str, str]], column: str) -> None:
    seen: dict[str, str] = {}
    for where, vid, _ in rows:
        if vid in seen:
            raise ManifestError(
                f"{where}: {column} '{vid}' already listed ({seen[vid]}); each video once"
            )
        seen[vid] = where
