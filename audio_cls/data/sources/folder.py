"""Class folders: ``root/<class name>/**/<file>``, one folder per class.

The simplest way to bring your own data. Folds are dealt deterministically, stratified per
class; a ``group_pattern`` keeps files cut from one source recording (or spoken by one speaker)
in one fold, which otherwise leak between train and test and inflate scores.

Symbolic links are followed, but each real folder is searched once and each real file listed
once, so a link loop cannot hang the walk nor a link to ``.`` multiply the files; a link that
leads into another class's folder is refused, since its files would get the wrong label.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Collection
from pathlib import Path

from audio_cls.data.sources._common import (
    assign_folds,
    check_case_duplicates,
    check_num_folds,
    split_folds,
    warn_padded_names,
)
from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError
from audio_cls.io import AUDIO_EXTENSIONS, printable_path

__all__ = ["AudioWalk", "ClassFolders", "file_group"]

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


class AudioWalk:
    """Finds audio files below folders, following symbolic links safely.

    Every real folder is searched once and every real file listed once, whatever the links:
    a link to a folder already searched (a loop, a link to ``.`` or ``..``, a second link to
    one folder) or to a file already listed is skipped with a warning naming the link. Files
    reached without a link win over the same files reached through one. One walker can search
    several folders, each for an owner (a class name): a link into another owner's folder, or
    to a folder or file already found for another owner, raises ``ManifestError`` naming the
    link, since its files would get the wrong label.

    Args:
        extensions: Lowercase extensions with the dot, e.g. ``{".wav"}``.
        owners: Real paths of every owner's top folder, by owner name (for the link check).
    """

    def __init__(self, extensions: Collection[str], owners: dict[str, str] | None = None) -> None:
        self.extensions = frozenset(extensions)
        self.owners = dict(owners or {})
        self._dirs: dict[tuple[int, int], tuple[str | None, Path]] = {}
        self._files: dict[tuple[int, int], tuple[str | None, Path]] = {}

    def files(self, top: Path, owner: str | None = None) -> list[Path]:
        """The audio files below ``top`` (hidden names skipped), sorted.

        Raises:
            ManifestError: A link leads into another owner's folder or files.
        """
        found: list[Path] = []
        if not self._enter(top, top, owner, link=None):
            return found
        real_dirs: deque[Path] = deque([top])
        links: deque[Path] = deque()
        while real_dirs or links:
            # search everything reachable without a link first, so that a file's own path wins
            while real_dirs:
                folder = real_dirs.popleft()
                for entry in self._entries(folder):
                    path = Path(entry.path)
                    if entry.is_symlink():
                        links.append(path)
                    elif _is_dir(entry):
                        if self._enter(path, path, owner, link=None):
                            real_dirs.append(path)
                    elif self._wanted(entry.name) and self._claim(path, path, owner, link=None):
                        found.append(path)
            if links:
                link = links.popleft()
                self._check_target(link, owner)
                if os.path.isdir(link):
                    if self._enter(link, link, owner, link=link):
                        real_dirs.append(link)
                elif self._wanted(link.name) and self._claim(link, link, owner, link=link):
                    found.append(link)
        return sorted(found)

    def _wanted(self, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in self.extensions

    @staticmethod
    def _entries(folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as e:
            _log.warning(
                "%s: cannot list this folder (%s); its files are left out",
                printable_path(folder),
                e.strerror,
            )
            return []

    def _check_target(self, link: Path, owner: str | None) -> None:
        """Refuse a link that leads into (or above) another owner's folder."""
        real = os.path.realpath(link)
        for other, top in self.owners.items():
            if other == owner:
                continue
            inside = real == top or real.startswith(top.rstrip(os.sep) + os.sep)
            above = top.startswith(real.rstrip(os.sep) + os.sep)
            if inside or above:
                raise ManifestError(
                    f"{printable_path(link)}: symbolic link to {printable_path(real)}, "
                    f"{'inside' if inside else 'above'} the folder of class '{other}'; files "
                    f"reached through it would be labelled '{owner}'. Remove the link, or copy "
                    f"the files it should add into the class folder"
                )

    def _enter(self, path: Path, shown: Path, owner: str | None, link: Path | None) -> bool:
        """Whether folder ``path`` is new (and now marked as searched for ``owner``)."""
        try:
            st = os.stat(path)
        except OSError as e:
            _log.warning("%s: cannot open (%s); left out", printable_path(shown), e.strerror)
            return False
        return self._first("folder", self._dirs, (st.st_dev, st.st_ino), path, owner, link)

    def _claim(self, path: Path, shown: Path, owner: str | None, link: Path | None) -> bool:
        """Whether file ``path`` is new (and now listed for ``owner``)."""
        try:
            st = os.stat(path)
        except OSError:
            return True  # a dangling link: kept, so the decode check reports it as missing
        return self._first("file", self._files, (st.st_dev, st.st_ino), path, owner, link)

    def _first(
        self,
        kind: str,
        seen: dict[tuple[int, int], tuple[str | None, Path]],
        key: tuple[int, int],
        path: Path,
        owner: str | None,
        link: Path | None,
    ) -> bool:
        if key not in seen:
            seen[key] = (owner, path)
            return True
        first_owner, first = seen[key]
        shown = printable_path(link or path)
        if first_owner != owner:
            raise ManifestError(
                f"{shown}: the same {kind} as {printable_path(first)}, already found for class "
                f"'{first_owner}'; one recording cannot belong to two classes. Remove the link "
                "or one of the copies"
            )
        how = "symbolic link to" if link is not None else "the same (hard-linked or mounted)"
        why = "a loop, or a second way to it" if kind == "folder" else "counted once"
        _log.warning(
            "%s: %s %s %s, already found (%s); skipped",
            shown,
            how,
            kind,
            printable_path(first),
            why,
        )
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


class ClassFolders(ClipSource):
    """Audio files sorted into one subfolder per class.

    Class names are the subfolder names (surrounding spaces dropped, with a warning), sorted;
    names that differ only by case (``Dog``, ``dog``) are refused, as they would be two
    classes. Files are searched recursively, following symbolic links (see ``AudioWalk``).
    Clip ids are the paths relative to the root. Folds: train 1..K-2, validate K-1, test K.

    Args:
        num_folds: Folds to deal the files into (K, at least 3).
        group_pattern: Regex applied to each file stem; files whose first group (or whole match)
            is equal share a fold, e.g. ``r"^(spk\\d+)_"`` for ``spk03_take2.wav`` (one speaker
            per group). Files it does not match form groups of one. None (default): every file
            is its own group. Group only by a real recording or speaker id: a class whose files
            all share one group lands in a single fold.
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
            raise ManifestError(
                f"{printable_path(root)}: not a folder; pass --data.root /path/to/class/folders"
            )
        try:
            with os.scandir(root) as it:
                folders = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        except OSError as e:
            raise ManifestError(
                f"{printable_path(root)}: cannot list the class folders ({e.strerror}); check "
                "the folder's permissions"
            ) from None
        if not folders:
            raise ManifestError(
                f"{printable_path(root)}: no class folders found; expected one subfolder per "
                "class (root/<class>/<file>)"
            )
        names = {f: printable_path(f).strip() for f in folders}
        where = printable_path(root)
        warn_padded_names([f for f in folders if f != f.strip()], where, "class folder name")
        check_case_duplicates(names.values(), where, "class folder name")
        self._check_distinct(root, folders)
        walk = AudioWalk(self.extensions, {names[f]: os.path.realpath(root / f) for f in folders})
        files: list[Path] = []
        labels: list[str] = []
        kept: list[str] = []
        for folder in sorted(folders, key=names.__getitem__):
            name = names[folder]
            found = walk.files(root / folder, owner=name)
            if not found:
                _log.warning(
                    "%s: no audio files (%s), class skipped",
                    printable_path(root / folder),
                    " ".join(sorted(self.extensions)),
                )
                continue
            kept.append(name)
            files += found
            labels += [name] * len(found)
        if not files:
            raise ManifestError(
                f"{where}: class folders {[names[f] for f in folders[:5]]} hold no files with "
                f"extensions {' '.join(sorted(self.extensions))}"
            )
        # printable ids: they are written to predictions and reports as UTF-8
        rel = [printable_path(p.relative_to(root).as_posix()) for p in files]
        groups = [file_group(p.stem, self._pattern, r) for p, r in zip(files, rel)]
        folds = assign_folds(labels, groups, self.num_folds)
        index = {name: i for i, name in enumerate(kept)}
        clips = [Clip(p, index[lab], f, r) for p, lab, f, r in zip(files, labels, folds, rel)]
        return Manifest(clips, kept, root)

    @staticmethod
    def _check_distinct(root: Path, folders: list[str]) -> None:
        """Refuse two class folders that are one real folder (a class folder linked to another)."""
        real = {f: os.path.realpath(root / f) for f in folders}
        for a in folders:
            for b in folders:
                ra, rb = real[a], real[b]
                same = ra == rb and (root / a).is_symlink()
                if a != b and (same or ra.startswith(rb.rstrip(os.sep) + os.sep)):
                    raise ManifestError(
                        f"{printable_path(root / a)}: this class folder leads to "
                        f"{printable_path(ra)}, {'the folder' if same else 'inside the folder'} "
                        f"of class '{printable_path(b).strip()}'; its files would get two "
                        "labels. Remove the link or give the class its own folder"
                    )
