"""A CSV that lists the clips: ``path,label`` plus optional ``fold``, ``clip_id`` and
``prob_<class>`` columns.

For data that does not sit in class folders, or whose split is fixed elsewhere. Paths are
relative to the CSV's folder (absolute paths work too); labels are class names; ``prob_<class>``
columns give soft targets, so a ``predictions.csv`` reads back as a soft-label manifest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from audio_cls.data.sources._common import (
    assign_folds,
    check_case_duplicates,
    check_num_folds,
    existing_names,
    missing_files_error,
    read_csv_table,
    split_folds,
    warn_padded_names,
)
from audio_cls.data.sources.base import SOFT_TOLERANCE, Clip, ClipSource, Manifest, ManifestError
from audio_cls.data.sources.folder import compile_group_pattern, file_group

__all__ = ["PROB_PREFIX", "CSVManifest"]

#: Columns named ``prob_<class>`` hold one class's probability (as ``predictions.csv`` writes).
PROB_PREFIX = "prob_"


class CSVManifest(ClipSource):
    """Clips listed in ``root/<file>``.

    Columns: ``path`` and ``label`` (a class name), optionally ``fold`` and ``clip_id``; other
    columns are ignored. Rows without a fold (no ``fold`` column, or an empty cell) are dealt
    into folds as ``ClassFolders`` does: deterministic, stratified per class, groups kept
    together. Folds: train 1..K-2, validate K-1, test K. Clip ids default to the path as written.

    Labels are read without surrounding spaces (``"dog "`` is ``dog``; a warning names such
    labels). Labels that differ only by case (``Dog``, ``dog``) are refused rather than merged:
    which spelling to keep would be a guess, and one rename in the CSV settles it.

    Soft targets: one ``prob_<class>`` column per class gives each clip a probability vector
    (``Clip.soft``). The class names are then those columns' names, in column order (or
    ``classes``, which the columns must match exactly, in any order), and ``label`` is optional:

    - all prob cells filled: the clip gets that vector, which must be finite, >= 0 and sum to 1
      within 1e-3 (kept as written, not renormalised); its label is the ``label`` cell when
      given, else the most probable class (the first of tied ones);
    - all prob cells empty: a hard-labelled clip, so the ``label`` cell is required;
    - some filled, some empty: an error.

    A ``predictions.csv`` written by ``audio-cls`` (``clip_id,path,target,prediction,...,
    prob_<class>...``) therefore reads as a soft-label manifest of the model's probabilities
    (distillation, pseudo-labels); its ``target`` column is not read, only ``label`` is.

    Args:
        file: CSV file name, relative to the data root.
        num_folds: Number of folds K (at least 3); given folds must lie in 1..K.
        group_pattern: Regex on file stems whose first group names the source recording; files
            of one recording share a fold when folds are dealt.
        classes: Class names in label order; every label must be one of them. Default: the
            ``prob_`` columns' classes in column order when there are any, else the sorted
            unique labels.
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
        padded: dict[str, set[str]] = {}
        header, rows = read_csv_table(csv_path, _required_columns, padded)
        warn_padded_names(padded.get("label", ()), str(csv_path))
        prob_columns = [c for c in header if c.startswith(PROB_PREFIX)]
        soft_names = self._soft_classes(csv_path, prob_columns) if prob_columns else None
        soft_columns = [PROB_PREFIX + n for n in soft_names or ()]  # in label order
        known = soft_names if soft_names is not None else self.classes
        if not rows:
            raise ManifestError(f"{csv_path}: no clips listed")
        paths, labels, folds, ids, lines = [], [], [], [], []
        softs: list[tuple[float, ...] | None] = []
        for line, r in rows:
            where = f"{csv_path}, line {line}"
            if not r["path"]:
                raise ManifestError(f"{where}: empty path")
            label = r.get("label", "")
            soft = None
            if soft_names is not None:
                soft = _read_soft(r, where, soft_columns)
                if soft is None and not label:
                    raise ManifestError(
                        f"{where}: no label and no prob_ values for {r['path']}; give a label "
                        "or a probability in every prob_ column"
                    )
                if soft is not None and not label:
                    # metrics and fold dealing use the most probable class
                    label = soft_names[max(range(len(soft)), key=soft.__getitem__)]
            elif not label:
                raise ManifestError(f"{where}: empty label for {r['path']}")
            if known is not None and label not in known:
                near = [k for k in known if k.casefold() == label.casefold()]
                hint = (
                    f" (class names are case-sensitive: did you mean '{near[0]}'?)" if near else ""
                )
                raise ManifestError(
                    f"{where}: label '{label}' is not one of the classes {known}{hint}"
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
            labels.append(label)
            softs.append(soft)
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
        names = known if known is not None else sorted(set(labels))
        check_case_duplicates(names, str(csv_path), "label" if known is None else "class")
        index = {n: i for i, n in enumerate(names)}
        clips = [
            Clip(p, index[lab], f, c, soft)
            for p, lab, f, c, soft in zip(paths, labels, folds, ids, softs)
        ]
        return Manifest(clips, list(names), Path(root))

    def _soft_classes(self, csv_path: Path, prob_columns: list[str]) -> list[str]:
        """Class names from the ``prob_`` columns (checked against ``classes`` when given)."""
        where = f"{csv_path}, line 1"
        names = [c[len(PROB_PREFIX) :] for c in prob_columns]
        if "" in names:
            raise ManifestError(f"{where}: column '{PROB_PREFIX}' names no class")
        twice = sorted({c for c in prob_columns if prob_columns.count(c) > 1})
        if twice:
            raise ManifestError(f"{where}: column(s) {', '.join(twice)} appear more than once")
        if self.classes is None:
            return names
        missing = [PROB_PREFIX + n for n in self.classes if n not in names]
        extra = [PROB_PREFIX + n for n in names if n not in self.classes]
        if missing or extra:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"extra {', '.join(extra)}"] if extra else []
            raise ManifestError(
                f"{where}: the prob_ columns must be exactly one per class of {self.classes}: "
                + "; ".join(parts)
            )
        return list(self.classes)


def _required_columns(header: list[str]) -> tuple[str, ...]:
    # with soft targets a row can do without a hard label
    if any(c.startswith(PROB_PREFIX) for c in header):
        return ("path",)
    return ("path", "label")


def _read_soft(row: dict[str, str], where: str, columns: Sequence[str]) -> tuple[float, ...] | None:
    """A row's probabilities in ``columns`` order; None when every prob cell is empty."""
    empty = [c for c in columns if not row.get(c)]
    if len(empty) == len(columns):
        return None
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ManifestError(
            f"{where}: {shown} empty while other prob_ columns are filled; fill every prob_ "
            "column, or leave them all empty and give a label"
        )
    values = []
    for c in columns:
        try:
            p = float(row[c])
        except ValueError:
            raise ManifestError(f"{where}: {c} '{row[c]}' is not a number") from None
        if not math.isfinite(p) or p < 0:
            raise ManifestError(f"{where}: {c} '{row[c]}' is not a probability (finite, >= 0)")
        values.append(p)
    total = math.fsum(values)
    if abs(total - 1) > SOFT_TOLERANCE:
        raise ManifestError(
            f"{where}: the prob_ values sum to {total:.6g}, not 1 (within {SOFT_TOLERANCE:g})"
        )
    return tuple(values)
