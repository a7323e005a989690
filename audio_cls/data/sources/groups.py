"""Class groups: any source's classes merged into fewer, e.g. impact noise against the rest.

``ClassGroups`` wraps another source and relabels its clips: each group names the classes it
takes, and the classes no group names form one more group (``rest``). The impact-noise task of
floor-noise monitoring is one group against the rest::

    source:
      class_path: audio_cls.data.sources.ClassGroups
      init_args:
        source: {class_path: audio_cls.data.sources.Synthetic, init_args: {num_classes: 10}}
        groups: {impact: [impact, footsteps, knock]}
        rest: other

gives the classes ``[impact, other]``: the groups in the order written, the rest last, so a
binary task always has its named (positive) class first. The data module, the models and the
reports see an ordinary source; nothing else changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError

__all__ = ["ClassGroups"]

#: Attributes the data module reads of a source to explain an empty split (fold settings).
_FORWARDED = frozenset({"num_folds", "group_pattern", "_pattern"})


class ClassGroups(ClipSource):
    """Another source's clips with their classes merged into groups.

    A clip's label becomes its class's group. Soft targets, where the wrapped source has them,
    are summed over each group's classes, so they still sum to 1. Files, folds and clip ids are
    the wrapped source's; so are ``prepare`` (downloads, generation) and the default folds.

    Args:
        source: The wrapped dataset layout (ESC50, Synthetic, CSVManifest, ClassFolders, ...).
        groups: Group name -> the wrapped source's class names it takes; every class in at most
            one group. Names are checked against the data when it is read: an unknown one is
            refused with the list of known classes.
        rest: Name of the group of every class no group names, placed last (left out when no
            class is left over); None: every class must be in a group.
    """

    def __init__(
        self, source: ClipSource, groups: dict[str, list[str]], rest: str | None = "other"
    ) -> None:
        if not groups:
            raise ValueError("groups is empty: name at least one group and its classes")
        seen: dict[str, str] = {}
        for name, members in groups.items():
            if not members:
                raise ValueError(f"group {name!r} has no classes")
            for m in members:
                if m in seen:
                    raise ValueError(f"class {m!r} is in two groups: {seen[m]!r} and {name!r}")
                seen[m] = name
        if rest is not None and rest in groups:
            raise ValueError(f"rest {rest!r} is also the name of a group; pick another name")
        self.source = source
        self.groups = {name: list(members) for name, members in groups.items()}
        self.rest = rest

    @property
    def default_folds(self) -> tuple[Sequence[int], Sequence[int], Sequence[int]]:
        return self.source.default_folds

    def __getattr__(self, name: str):
        # only the fold settings the data module names when a split lacks a class
        if name in _FORWARDED:
            return getattr(self.source, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def prepare(self, root: Path) -> None:
        self.source.prepare(root)

    def group_of(self, class_names: Sequence[str]) -> tuple[list[str], list[int]]:
        """The group names and, per wrapped class, the index of its group.

        Raises:
            ManifestError: A group names a class the wrapped source lacks, or (``rest`` None)
                a class is in no group.
        """
        known = set(class_names)
        unknown = [m for members in self.groups.values() for m in members if m not in known]
        if unknown:
            raise ManifestError(
                f"data.source.groups names class(es) {', '.join(map(repr, unknown))} that the "
                f"dataset lacks; its classes are: {', '.join(class_names)}"
            )
        names = list(self.groups)
        index = {m: i for i, members in enumerate(self.groups.values()) for m in members}
        leftover = [c for c in class_names if c not in index]
        if leftover and self.rest is None:
            raise ManifestError(
                f"class(es) {', '.join(leftover)} are in no group and data.source.rest is None; "
                f"add them to a group or name a rest group"
            )
        if leftover:
            names.append(self.rest)
        return names, [index.get(c, len(names) - 1) for c in class_names]

    def manifest(self, root: Path) -> Manifest:
        inner = self.source.manifest(root)
        names, group = self.group_of(inner.class_names)
        clips = [_regroup(c, group, len(names)) for c in inner.clips]
        return Manifest(clips, names, inner.root)


def _regroup(clip: Clip, group: list[int], num_groups: int) -> Clip:
    soft = None
    if clip.soft is not None:
        sums = [0.0] * num_groups
        for i, p in enumerate(clip.soft):
            sums[group[i]] += p
        soft = tuple(sums)
    label = group[clip.label] if clip.label >= 0 else clip.label
    return dataclasses.replace(clip, label=label, soft=soft)
