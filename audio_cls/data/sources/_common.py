"""Pieces that several sources share: CSV rows, fold dealing, downloading an archive."""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from audio_cls.data.sources.base import ClipSource, ManifestError

_log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30.0


def read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as ``(line number, row)``, after checking the header has ``required``."""
    return read_csv_table(path, required)[1]


def read_csv_table(
    path: Path,
    required: Sequence[str] | Callable[[list[str]], Sequence[str]],
    padded: dict[str, set[str]] | None = None,
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and rows of a CSV, like ``read_csv``; cells come stripped of surrounding space.

    Args:
        path: The CSV file.
        required: Columns the header must have, or a function of the header that names them
            (for columns that are only needed when others are absent).
        padded: When given, filled with ``column -> {cell as written}`` for every cell that the
            stripping changed, so that callers can say which values were read differently.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read the file ({e})") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        if callable(required):
            required = required(header)
        missing = [c for c in required if c not in header]
        if missing:
            raise ManifestError(
                f"{path}, line 1: missing column(s) {', '.join(missing)} "
                f"(found: {', '.join(header) or 'no header'})"
            )
        reader.fieldnames = header
        rows = []
        for row in reader:
            cells = {k: v or "" for k, v in row.items() if k}
            if padded is not None:
                for k, v in cells.items():
                    if v != v.strip():
                        padded.setdefault(k, set()).add(v)
            rows.append((reader.line_num, {k: v.strip() for k, v in cells.items()}))
    return header, rows


def warn_padded_names(written: Iterable[str], where: str, what: str = "label") -> None:
    """One warning naming the names that were read without their surrounding spaces."""
    pairs = [f"{w!r} as {w.strip()!r}" for w in sorted(set(written))]
    if pairs:
        more = f" and {len(pairs) - 10} more" if len(pairs) > 10 else ""
        _log.warning(
            "%s: %s(s) with surrounding spaces read without them: %s%s",
            where,
            what,
            ", ".join(pairs[:10]),
            more,
        )


def check_case_duplicates(names: Iterable[str], where: str, what: str = "label") -> None:
    """Refuse names that differ only by case (``Dog``/``dog``): they would be two classes.

    Refused rather than merged: which spelling to keep is a guess, the class names end up in
    checkpoints and predictions, and a rename settles it in one edit.
    """
    spellings: dict[str, set[str]] = {}
    for n in names:
        spellings.setdefault(n.casefold(), set()).add(n)
    clashes = [sorted(v) for _, v in sorted(spellings.items()) if len(v) > 1]
    if clashes:
        shown = "; ".join(" and ".join(repr(n) for n in c) for c in clashes[:5])
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise ManifestError(
            f"{where}: {what}s {shown}{more} differ only by case and would become separate "
            f"classes; rename them to one spelling"
        )


def missing_files_error(csv_path: Path, missing: Sequence[Path], hint: str = "") -> ManifestError:
    """One error listing the first few missing files and how many there are."""
    shown = "\n  ".join(str(p) for p in missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    return ManifestError(
        f"{csv_path}: {len(missing)} audio file(s) listed there do not exist:\n  {shown}{more}"
        + (f"\n{hint}" if hint else "")
    )


def existing_names(folder: Path) -> set[str]:
    """File names in ``folder`` (one listdir instead of a stat per clip)."""
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def contiguous_labels(
    pairs: Iterable[tuple[int, str]], csv_path: Path
) -> tuple[dict[int, int], list[str]]:
    """Map dataset target ids, maybe with gaps, to 0..C-1 in id order; names per id."""
    names: dict[int, str] = {}
    for target, name in pairs:
        if names.setdefault(target, name) != name:
            raise ManifestError(
                f"{csv_path}: target {target} is named both '{names[target]}' and '{name}'"
            )
    order = sorted(names)
    return {t: i for i, t in enumerate(order)}, [names[t] for t in order]


def parse_fold_rows(
    rows: Sequence[tuple[int, dict[str, str]]],
    csv_path: Path,
    columns: tuple[str, str, str, str],
) -> tuple[list[tuple[str, int, int, str]], dict[int, int], list[str]]:
    """A fold-based metadata CSV's rows -> ``(file, fold, target, name)`` tuples, the target id
    -> 0..C-1 map and the class names; ``columns`` names the file, fold, target and name columns.
    """
    file_col, fold_col, target_col, name_col = columns
    parsed = []
    for line, r in rows:
        try:
            fold, target = int(r[fold_col]), int(r[target_col])
        except ValueError:
            raise ManifestError(
                f"{csv_path}, line {line}: {fold_col} '{r[fold_col]}' and {target_col} "
                f"'{r[target_col]}' must be integers"
            ) from None
        if fold < 1:
            raise ManifestError(f"{csv_path}, line {line}: fold must be >= 1, got {fold}")
        parsed.append((r[file_col], fold, target, r[name_col]))
    if not parsed:
        raise ManifestError(f"{csv_path}: no clips listed")
    index, names = contiguous_labels(((t, c) for _, _, t, c in parsed), csv_path)
    return parsed, index, names


def split_folds(num_folds: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Train on folds 1..K-2, validate on K-1, test on K."""
    return tuple(range(1, num_folds - 1)), (num_folds - 1,), (num_folds,)


def check_num_folds(num_folds: int) -> None:
    if num_folds < 3:
        raise ValueError(f"num_folds must be >= 3 (train, val and test folds), got {num_folds}")


def _rank(text: str) -> bytes:
    # hashlib, not hash(): Python salts str hashes per process
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).digest()


def assign_folds(labels: Sequence[str], groups: Sequence[str], num_folds: int) -> list[int]:
    """Deterministic, stratified, group-aware folds 1..num_folds for each item.

    Per class, groups are ordered by a stable hash and dealt round-robin to the folds (starting
    at a fold fixed by the class name), skipping ahead to the fold with the fewest items when
    groups differ in size. A group already placed by an earlier class keeps its fold, so items
    of one source recording never straddle folds.
    """
    members: dict[str, dict[str, int]] = {}
    for label, group in zip(labels, groups):
        by_group = members.setdefault(label, {})
        by_group[group] = by_group.get(group, 0) + 1
    fold_of: dict[str, int] = {}
    for label in sorted(members):
        counts = [0] * num_folds
        todo = []
        for group, n in members[label].items():
            if group in fold_of:
                counts[fold_of[group] - 1] += n
            else:
                todo.append(group)
        nxt = int.from_bytes(_rank(label)[:4], "big") % num_folds
        for group in sorted(todo, key=lambda g: _rank(g)):
            low = min(counts)
            while counts[nxt] != low:
                nxt = (nxt + 1) % num_folds
            fold_of[group] = nxt + 1
            counts[nxt] += members[label][group]
            nxt = (nxt + 1) % num_folds
    return [fold_of[g] for g in groups]


def download_and_extract(
    name: str, url: str, root: Path, top_folder: str, marker: str, help_text: str
) -> None:
    """Download an archive into ``root`` and unpack its ``top_folder`` contents into ``root``.

    ``marker`` (the metadata file, relative to the top folder) is moved in last, so an
    interrupted run never leaves a root that looks complete.

    Raises:
        ManifestError: Download or unpacking failed; the message includes ``help_text``.
    """
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".zip" if url.lower().endswith(".zip") else ".tar.gz"
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=".download-", suffix=suffix)
    archive = Path(tmp_name)
    unpack = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
    try:
        _log.info("downloading %s from %s into %s", name, url, root)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp,
            ):
                _copy_with_progress(resp, out, name)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise ManifestError(
                f"could not download {name} from {url} ({reason}). {help_text}"
            ) from None
        try:
            if suffix == ".zip":
                with zipfile.ZipFile(archive) as z:
                    z.extractall(unpack)  # zipfile drops absolute and '..' parts of names
            else:
                with tarfile.open(archive, "r:*") as t:
                    if hasattr(tarfile, "data_filter"):
                        t.extractall(unpack, filter="data")
                    else:  # pragma: no cover - Python without PEP 706 backports
                        t.extractall(unpack)
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
            raise ManifestError(f"could not unpack {name} from {url} ({e}). {help_text}") from None
        top = unpack / top_folder
        if not (top / marker).is_file():
            top = unpack  # an archive without the top folder
        if not (top / marker).is_file():
            raise ManifestError(
                f"the {name} archive from {url} holds no {top_folder}/{marker}. {help_text}"
            )
        held = unpack / ".marker"
        os.replace(top / marker, held)
        _merge_move(top, root, skip=held)
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        os.replace(held, root / marker)
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpack, ignore_errors=True)


def _copy_with_progress(resp: IO[bytes], out: IO[bytes], name: str) -> None:
    headers = getattr(resp, "headers", None)
    total = int(headers.get("Content-Length") or 0) if headers is not None else 0
    done, step = 0, 256 << 20
    next_log = step
    while chunk := resp.read(1 << 20):
        out.write(chunk)
        done += len(chunk)
        if done >= next_log:  # archives run to gigabytes: show that it is moving
            of = f" of {total >> 20} MB" if total else " MB"
            _log.info("%s: %d%s downloaded", name, done >> 20, of)
            next_log += step


def _merge_move(src: Path, dst: Path, skip: Path) -> None:
    """Move the tree ``src`` into ``dst``, merging folders and replacing files; keeps extras."""
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child == skip:
            continue
        target = dst / child.name
        if child.is_dir() and target.is_dir():
            _merge_move(child, target, skip)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(child, target)


class ArchiveSource(ClipSource):
    """A public dataset with a metadata CSV, downloaded as one archive when missing.

    Subclasses set ``NAME``, ``URL``, ``ARCHIVE_FOLDER`` (the archive's top folder) and ``CSV``
    (the metadata file relative to the dataset root).
    """

    NAME: str
    URL: str
    ARCHIVE_FOLDER: str
    CSV: Path

    def __init__(self, download: bool = True) -> None:
        self.download = download

    def _help(self) -> str:
        return (
            f"Download and unpack it yourself, then pass --data.root /path/to/{self.ARCHIVE_FOLDER} "
            f"(the folder that holds {self.CSV.as_posix()} and audio/)"
        )

    def prepare(self, root: Path) -> None:
        root = Path(root)
        if (root / self.CSV).is_file():
            return
        if not self.download:
            raise ManifestError(
                f"{self.NAME} not found: {root / self.CSV} does not exist and download is off. "
                f"Get {self.URL}. {self._help()}"
            )
        download_and_extract(
            self.NAME, self.URL, root, self.ARCHIVE_FOLDER, self.CSV.as_posix(), self._help()
        )

    def csv_path(self, root: Path) -> Path:
        """The metadata CSV under ``root``; a ManifestError saying what to do when missing."""
        path = Path(root) / self.CSV
        if not path.is_file():
            raise ManifestError(f"{self.NAME} not found: {path} does not exist. {self._help()}")
        return path
