"""A CSV that lists the clips: ``path,label`` plus optional ``fold`` and ``clip_id`` columns.

For data that does not sit in class folders, or whose split is fixed elsewhere. Paths are
relative to the CSV's folder (absolute paths work too); labels are class names.
"""

from __future__ import annotations

from pathlib import Path

from audio_cls.data.sources._common import (
    assign_folds,
    check_num_folds,
    existing_names,
    missing_files_error,
    read_csv,
    split_folds,
)
from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError
from audio_cls.data.sources.folder import compile_group_pattern, file_group

__all__ = ["CSVManifest"]


class CSVManifest(ClipSource):
    """Clips listed in ``root/<file>``.

    Rows without a fold (no ``fold`` column, or an empty cell) are dealt into folds as
    ``ClassFolders`` does: deterministic, stratified per class, groups kept together. Folds:
    train 1..K-2, validate K-1, test K. Clip ids default to the path as written.

    Args:
        file: CSV file name, relative to the data root.
        num_folds: Number of folds K (at least 3); given folds must lie in 1..K.
        group_pattern: Regex on file stems whose first group names the source recording; files
            of one recording share a fold when folds are dealt.
        classes: Class names in label order; every label must be one of them. Default: the
            sorted unique labels.
    """

    def __init__(
        self,
        file: str = "manifest.csv",
        num_folds: int = 5,
        group_pattern: str | None = None,
        classes: list[str] | None = None,
    ) -> None:
        check_num_folds(num_folds)
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError(f"classes has duplicates: {classes}")
        self.file = file
        self.num_folds = num_folds
        self.group_pattern = group_pattern
        self._pattern = compile_group_pattern(group_pattern)
        self.classes = list(classes) if classes is not None else None
        self.default_folds = split_folds(num_folds)

    def manifest(self, root: Path) -> Manifest:
        csv_path = Path(root) / self.file
        if not csv_path.is_file():
            raise ManifestError(
                f"{csv_path}: manifest not found; write a CSV with columns path,label[,fold] "
                "there, or set --data.root / file"
            )
        base = csv_path.parent
        rows = read_csv(csv_path, ("path", "label"))
        if not rows:
            raise ManifestError(f"{csv_path}: no clips listed")
        paths, labels, folds, ids, lines = [], [], [], [], []
        for line, r in rows:
            where = f"{csv_path}, line {line}"
            if not r["path"]:
                raise ManifestError(f"{where}: empty path")
            if not r["label"]:
                raise ManifestError(f"{where}: empty label for {r['path']}")
            if self.classes is not None and r["label"] not in self.classes:
                raise ManifestError(
                    f"{where}: label '{r['label']}' is not one of the classes {self.classes}"
                )
            fold = r.get("fold", "")
            if fold:
                try:
                    fold_n = int(fold)
                except ValueError:
                    fold_n = 0
                if not 1 <= fold_n <= self.num_folds:
                    raise ManifestError(
                        f"{where}: bad fold '{fold}'; folds are integers 1..{self.num_folds} "
                        "(num_folds), or leave the cell empty to have one assigned"
                    )
                folds.append(fold_n)
            else:
                folds.append(0)
            paths.append(base / r["path"])  # an absolute path replaces base
            labels.append(r["label"])
            ids.append(r.get("clip_id") or Path(r["path"]).as_posix())
            lines.append(line)

        seen: dict[str, int] = {}
        for clip_id, line in zip(ids, lines):
            if clip_id in seen:
                raise ManifestError(
                    f"{csv_path}, line {line}: clip id '{clip_id}' already used on line "
                    f"{seen[clip_id]}; clip ids (or paths) must be unique"
                )
            seen[clip_id] = line

        listing: dict[Path, set[str]] = {}
        missing = []
        for p in paths:
            if p.parent not in listing:
                listing[p.parent] = existing_names(p.parent)
            if p.name not in listing[p.parent]:
                missing.append(p)
        if missing:
            first = lines[paths.index(missing[0])]
            raise missing_files_error(
                csv_path, missing, f"(first at line {first}; paths are relative to {base})"
            )

        todo = [i for i, f in enumerate(folds) if f == 0]
        if todo:
            groups = [file_group(paths[i].stem, self._pattern, ids[i]) for i in todo]
            for i, f in zip(todo, assign_folds([labels[i] for i in todo], groups, self.num_folds)):
                folds[i] = f
        names = self.classes if self.classes is not None else sorted(set(labels))
        index = {n: i for i, n in enumerate(names)}
        clips = [Clip(p, index[lab], f, c) for p, lab, f, c in zip(paths, labels, folds, ids)]
        return Manifest(clips, list(names), Path(root))
