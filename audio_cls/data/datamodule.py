"""``AudioDataModule``: folds -> train/val/test windows, the label map, and the loaders.

It delivers waveforms only (``{waveform (B, T), target (B,), clip_index (B,), segment_index (B,)}``
plus ``soft (B, C)``), so every model family shares one pipeline; features are the model's
business. ``soft`` holds float32 probability targets: in every batch of a split where some clip
has a soft target (``Clip.soft``; the other clips' rows are one-hot of their label), and in
training batches under mixup. ``target`` stays the hard label (the argmax for soft-only clips).

Training batches may carry two more keys: ``weight (B,)``, each clip's loss weight, whenever the
training split holds clips beyond the dataset's own (``extra_train``, ``unlabelled``); and
``view (B, T)``, a second, independently augmented copy of the same windows (``second_view``),
for the model's consistency term. Unlabelled clips have ``target`` -1 (and all-zero ``soft``
rows).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from audio_cls.data.augment import WaveformAugment, mixup
from audio_cls.data.cache import WaveformCache, default_cache_dir
from audio_cls.data.segments import (
    SHORT_CLIP_SEC,
    SILENT_PEAK,
    ShortClipPolicy,
    fit_length,
    loud_windows,
    window_starts,
)
from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError, soft_targets
from audio_cls.data.sources.files import AudioFiles
from audio_cls.data.sources.folder import file_group
from audio_cls.data.sources.manifest import CSVManifest
from audio_cls.io import printable_path

__all__ = ["AudioDataModule", "SegmentSet"]

log = logging.getLogger(__name__)

_SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


@dataclass
class SegmentSet:
    """The clips of one split and the windows cut from them.

    Attributes:
        clips: The split's clips; ``clip_index`` in batches indexes this list.
        lengths: Samples per clip at the data module's rate.
        windows: ``(N, 2)`` int64 rows of (clip index, start sample).
        weights: Loss weight per clip (float32), delivered as ``batch["weight"]``; None: none
            delivered (every clip weighs 1).
    """

    clips: list[Clip]
    lengths: np.ndarray
    windows: np.ndarray
    weights: np.ndarray | None = None


class _WindowDataset(Dataset):
    """Windows of cached waveforms; random offsets and augmentation when ``train``."""

    def __init__(
        self,
        segments: SegmentSet,
        cache: WaveformCache,
        window: int,
        short_clip: ShortClipPolicy,
        train: bool = False,
        jitter: int = 0,
        augment: WaveformAugment | None = None,
        second_view: bool = False,
    ) -> None:
        self.segments = segments
        self.cache = cache
        self.window = window
        self.short_clip = short_clip
        self.train = train
        self.jitter = jitter
        self.augment = augment
        self.second_view = second_view

    def __len__(self) -> int:
        return len(self.segments.windows)

    def _waveform(self, clip_index: int) -> np.ndarray:
        # a cached load is a ~15 us memory map; keeping maps open would exhaust file handles
        return self.cache.load(self.segments.clips[clip_index].path)

    def _window(self, start: int, x: np.ndarray) -> np.ndarray:
        if self.train and self.jitter:
            # a random offset around the grid window keeps silent-window filtering meaningful
            latest = max(len(x) - self.window, 0)
            start = min(
                max(start + int(torch.randint(-self.jitter, self.jitter + 1, ())), 0), latest
            )
        return fit_length(x[start : start + self.window], self.window, self.short_clip)

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """A whole batch at once: each clip is opened once, windows land in one array.

        The DataLoader calls this instead of ``__getitem__`` per window (``collate`` below
        passes the batch through), which keeps end-to-end inference close to model speed.
        """
        rows = self.segments.windows[indices]
        waveform = np.empty((len(indices), self.window), dtype=np.float32)
        current, x = -1, None
        for j in np.argsort(rows[:, 0], kind="stable"):  # grouped by clip: one load each
            clip_index, start = int(rows[j, 0]), int(rows[j, 1])
            if clip_index != current:
                current, x = clip_index, self._waveform(clip_index)
            waveform[j] = self._window(start, x)
        batch = torch.from_numpy(waveform)
        # The second view is made here rather than in the model: the augmentation is configured
        # once, on the data side, runs in the loader's workers, and each view starts from the
        # same raw window (same crop) rather than from an augmented copy of the other.
        view = batch.clone() if self.second_view else None
        if self.augment is not None:
            for j in range(len(batch)):
                batch[j] = self.augment(batch[j])
                if view is not None:
                    view[j] = self.augment(view[j])
        labels = [self.segments.clips[c].label for c in rows[:, 0]]
        out = {
            "waveform": batch,
            "target": torch.tensor(labels, dtype=torch.long),
            "clip_index": torch.from_numpy(rows[:, 0].copy()),
            "segment_index": torch.as_tensor(indices, dtype=torch.long),
        }
        # the split's soft targets, built on the first batch of each loader process
        if "_soft_table" not in self.__dict__:
            self._soft_table = soft_targets(self.segments.clips)
        if self._soft_table is not None:
            out["soft"] = torch.from_numpy(self._soft_table[rows[:, 0]])
        if self.segments.weights is not None:
            out["weight"] = torch.from_numpy(self.segments.weights[rows[:, 0]])
        if view is not None:
            out["view"] = view
        return out


def collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batches arrive assembled by ``_WindowDataset.__getitems__``."""
    return batch


class AudioDataModule(L.LightningDataModule):
    """Clips from a ``ClipSource``, decoded once into a cache and cut into windows.

    Args:
        root: Dataset folder (downloaded or generated there by sources that can).
        source: The dataset layout (ESC50, UrbanSound8K, ClassFolders, CSVManifest, Synthetic).
        sample_rate: Rate every clip is decoded to.
        window_sec: Window length in seconds (0.96 s: the YAMNet/VGGish convention).
        hop_sec: Hop between evaluation windows (None: half a window, 50 % overlap).
        clip_sec: Whole-clip mode: windows of ``clip_sec`` (no overlap) replace
            ``window_sec``/``hop_sec``, so 5 s ESC-50 clips become one example each.
        short_clip: Clips shorter than a window are zero-padded (``pad``) or tiled (``repeat``).
        drop_silent_db: Skip windows quieter than the clip's loudest by more than this many dB,
            in training and in clip aggregation (None: keep all).
        train_folds: Folds to train on (None: the dataset's convention).
        val_folds: Folds to validate on (None: the dataset's convention).
        test_folds: Folds to test on (None: the dataset's convention; [] for none).
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size (None: 4 x ``batch_size``).
        num_workers: Loader worker processes.
        augment: Waveform augmentation for training windows (None: off).
        mixup_alpha: Mixup Beta parameter for training batches (0: off).
        balanced_sampling: Draw training windows with class-balanced probabilities.
        cache_dir: Decoded-waveform cache (None: ``$AUDIO_CLS_CACHE`` or ``~/.cache/audio-cls``;
            ``memory``: keep decoded clips in memory only, for a single pass with no workers).
        on_bad_file: ``raise`` lists every unreadable clip and stops; ``skip`` warns and leaves
            them out.
        predict_source: Clips for ``predict`` (None: the test folds).
        extra_train: A CSV manifest of more training clips, e.g. the teacher-labelled one that
            ``audio-cls label`` writes (``path``, ``label``, ``prob_<class>`` columns over the
            dataset's classes, paths relative to the CSV). Its clips join the training split
            only, whatever their ``fold`` cells say; a clip that is also a training clip of the
            dataset is left out of it (the dataset's label wins), one that is a validation or
            test clip is refused or dropped (``extra_overlap``).
        extra_weight: Loss weight of each ``extra_train`` clip against the dataset's (1).
        extra_labels: What of ``extra_train`` to train on: its ``prob_`` columns as soft
            targets (``soft``), or only its top-1 ``label`` (``hard``).
        extra_overlap: ``extra_train`` or ``unlabelled`` clips that are validation or test clips
            of the dataset (the same file): ``raise`` names them and stops (the scores would
            not be honest), ``drop`` leaves them out with a warning (e.g. one teacher manifest
            for every fold of ``cv``).
        unlabelled: Audio files, folders or CSV manifests (a ``path`` column) without labels,
            added to the training split with target -1: they contribute only the model's
            consistency term (``--model.consistency_weight``) and turn ``second_view`` on.
            Clips that are already training clips (the dataset's or ``extra_train``'s) are left
            out of it.
        second_view: Training batches also carry ``view``, a second copy of each window
            (same crop) augmented independently of the first, for the consistency term.

    ``setup("fit")`` decode-checks every split the run uses (train, validation and test folds,
    since ``fit`` tests afterwards) in one pass, so an unreadable test clip stops the run before
    training rather than after; ``setup("validate")`` and ``setup("test")`` check their split,
    ``setup("predict")`` the prediction clips. Before that, every class must have clips in the
    training folds and in the validation and test folds (when those are used), else a
    ``ManifestError`` names the classes, the split that lacks them and why (e.g. a
    ``group_pattern`` that put all of a class's files in one group). Silent clips (peak below
    -90 dBFS) and clips shorter than 10 ms are kept but listed in one warning per split.

    Attributes:
        bad_files: Every unreadable clip found so far, as ``(split, path, reason)`` rows in the
            order found (``split`` is ``train``, ``val``, ``test`` or ``predict``; ``path`` is
            printable text, undecodable bytes shown as ``\\xNN``; ``reason`` says why and what
            to do). Filled by ``setup`` both when they stop the run (``on_bad_file="raise"``)
            and when they are left out (``skip``); run reports write it as ``bad_files.csv``.
    """

    def __init__(
        self,
        root: str = "data/synthetic",
        source: ClipSource | None = None,
        sample_rate: int = 16000,
        window_sec: float = 0.96,
        hop_sec: float | None = None,
        clip_sec: float | None = None,
        short_clip: ShortClipPolicy = "pad",
        drop_silent_db: float | None = None,
        train_folds: list[int] | None = None,
        val_folds: list[int] | None = None,
        test_folds: list[int] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        augment: WaveformAugment | None = None,
        mixup_alpha: float = 0.0,
        balanced_sampling: bool = False,
        cache_dir: str | None = None,
        on_bad_file: Literal["raise", "skip"] = "raise",
        predict_source: ClipSource | None = None,
        extra_train: str | None = None,
        extra_weight: float = 1.0,
        extra_labels: Literal["soft", "hard"] = "soft",
        extra_overlap: Literal["raise", "drop"] = "raise",
        unlabelled: list[str] | None = None,
        second_view: bool = False,
    ) -> None:
        super().__init__()
        if clip_sec is not None:
            window_sec, hop_sec = clip_sec, clip_sec
        hop_sec = window_sec / 2 if hop_sec is None else hop_sec
        if window_sec <= 0 or hop_sec <= 0:
            raise ValueError(
                f"data.window_sec and data.hop_sec must be > 0 ({window_sec}, {hop_sec})"
            )
        if mixup_alpha < 0:
            raise ValueError(f"data.mixup_alpha must be >= 0, got {mixup_alpha}")
        if not extra_weight >= 0:
            raise ValueError(f"data.extra_weight must be >= 0, got {extra_weight}")
        self.save_hyperparameters(ignore=["source", "augment", "predict_source"])
        if source is None:
            from audio_cls.data.sources import Synthetic

            source = Synthetic(sample_rate=sample_rate)
        self.root = Path(root).expanduser()
        self.source = source
        self.predict_source = predict_source
        self.sample_rate = sample_rate
        self.window = round(window_sec * sample_rate)
        self.hop = round(hop_sec * sample_rate)
        self.short_clip = short_clip
        self.drop_silent_db = drop_silent_db
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        self.num_workers = num_workers
        self.augment = augment
        if augment is not None:
            augment.sample_rate = sample_rate
        self.mixup_alpha = mixup_alpha
        self.balanced_sampling = balanced_sampling
        self.on_bad_file = on_bad_file
        in_memory = cache_dir == "memory"
        self.cache = WaveformCache(
            None if in_memory else cache_dir or default_cache_dir(), sample_rate
        )
        self._folds = {"train": train_folds, "val": val_folds, "test": test_folds}
        self.extra_train = extra_train
        self.extra_weight = extra_weight
        self.extra_labels = extra_labels
        self.extra_overlap = extra_overlap
        self.unlabelled = list(unlabelled) if unlabelled else None
        self.second_view = bool(second_view or self.unlabelled)
        if self.second_view and augment is None:
            log.warning(
                "data.second_view without data.augment: both views are the same window, so "
                "only the model's dropout tells them apart"
            )
        self._extra: tuple[list[Clip], list[Clip]] | None = None
        self._manifest: Manifest | None = None
        self._predict_manifest: Manifest | None = None
        self.splits: dict[str, SegmentSet] = {}
        self.bad_files: list[tuple[str, str, str]] = []
        self._unreadable: dict[Path, str] = {}  # path -> reason, kept across setups

    # ------------------------------------------------------------------ what the model links to
    @property
    def manifest(self) -> Manifest:
        """The dataset's clips; prepares (downloads/generates) the data on first use."""
        if self._manifest is None:
            self.source.prepare(self.root)
            self._manifest = self.source.manifest(self.root)
            if not self._manifest.clips:
                raise ManifestError(f"{self.root}: the dataset holds no clips")
        return self._manifest

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.manifest.class_names)

    @property
    def segment_settings(self) -> dict[str, Any]:
        """What a checkpoint needs to cut new audio the way it was trained."""
        return {
            "sample_rate": self.sample_rate,
            "window_sec": self.window / self.sample_rate,
            "hop_sec": self.hop / self.sample_rate,
            "short_clip": self.short_clip,
            "drop_silent_db": self.drop_silent_db,
        }

    def folds(self) -> dict[str, list[int]]:
        """Train/val/test folds after defaults, checked for overlap and emptiness."""
        folds = self._chosen_folds()
        available = set(self.manifest.folds)
        for stage, chosen in folds.items():
            missing = sorted(set(chosen) - available)
            if missing and self._folds[stage] is None:
                # the dataset's own folds came out empty: name the classes that caused it
                per_split = {s: self.manifest.select(f) for s, f in folds.items() if f}
                error = self._class_gaps(per_split)
                if error is not None:
                    raise error
            if missing:
                raise ManifestError(
                    f"data.{stage}_folds {chosen} names fold(s) {missing} that the dataset at "
                    f"{self.root} does not have (it has folds {sorted(available)})"
                )
        if not folds["train"]:
            raise ManifestError("data.train_folds selects nothing; name at least one fold")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(set(folds[a]) & set(folds[b]))
            if shared:
                raise ManifestError(
                    f"data.{a}_folds and data.{b}_folds share fold(s) {shared}: the "
                    f"{b} numbers would not be honest; give each split its own folds"
                )
        return folds

    def _chosen_folds(self) -> dict[str, list[int]]:
        """Train/val/test folds after defaults, unchecked."""
        defaults = dict(zip(("train", "val", "test"), self.source.default_folds))
        return {
            s: list(self._folds[s] if self._folds[s] is not None else defaults[s]) for s in defaults
        }

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        self.source.prepare(self.root)

    def setup(self, stage: str | None = None) -> None:
        wanted: dict[str, list[Clip]] = {}  # splits this stage cuts into windows
        checked: dict[str, list[Clip]] = {}  # splits decode-checked now: those, and for fit test
        if stage == "predict" and self.predict_source is not None:
            wanted["predict"] = self.predict_clips()
        else:
            folds = self.folds()
            if stage in (None, "fit"):
                extra, unlabelled = self.extra_clips()
                wanted["train"] = self.manifest.select(folds["train"]) + extra + unlabelled
            if stage in (None, "fit", "validate") and folds["val"]:
                wanted["val"] = self.manifest.select(folds["val"])
            if stage in (None, "test"):
                wanted["test"] = self.manifest.select(folds["test"])
            if stage == "fit" and folds["test"]:  # fit tests afterwards: check that split now
                checked["test"] = self.manifest.select(folds["test"])
            if stage in (None, "predict"):
                wanted["predict"] = self.predict_clips(folds)
        checked.update(wanted)
        checked = {
            s: checked[s]
            for s in ("train", "val", "test", "predict")
            if s in checked and s not in self.splits
        }
        if not checked:
            return
        labelled = {s: c for s, c in checked.items() if s != "predict" and c}
        error = self._class_gaps(labelled)
        if error is not None:
            raise error
        readable = self._check_files(checked)
        if any(len(readable[s]) < len(c) for s, c in labelled.items()):
            error = self._class_gaps({s: readable[s] for s in labelled})
            if error is not None:
                raise error
        for split in wanted:
            if split in checked:
                self.splits[split] = self._segment(split, readable[split])
        if "train" in self.splits and (self.extra_train or self.unlabelled):
            extra = {id(c) for c in self.extra_clips()[0]}
            self.splits["train"].weights = np.array(
                [self.extra_weight if id(c) in extra else 1.0 for c in self.splits["train"].clips],
                dtype=np.float32,
            )

    def extra_clips(self) -> tuple[list[Clip], list[Clip]]:
        """The clips that ``extra_train`` and ``unlabelled`` add to the training split, read once
        and checked against the dataset's splits (see their options)."""
        if self._extra is not None:
            return self._extra
        folds = self.folds()
        held_out = {
            _file_key(c.path): split
            for split in ("val", "test")
            for c in self.manifest.select(folds[split])
        }
        training = {_file_key(c.path) for c in self.manifest.select(folds["train"])}
        extra: list[Clip] = []
        if self.extra_train:
            extra = self._read_extra(Path(self.extra_train).expanduser())
            extra = self._without_held_out(extra, held_out, "data.extra_train")
            kept = [c for c in extra if _file_key(c.path) not in training]
            if len(kept) < len(extra):
                log.warning(
                    "data.extra_train: %d of its %d clip(s) are training clips of the dataset "
                    "already; they keep the dataset's label and are not added again",
                    len(extra) - len(kept),
                    len(extra),
                )
            extra = kept
            training |= {_file_key(c.path) for c in extra}
        unlabelled: list[Clip] = []
        if self.unlabelled:
            found = AudioFiles(self.unlabelled).manifest(self.root).clips
            found = self._without_held_out(found, held_out, "data.unlabelled")
            unlabelled = [
                Clip(c.path, -1, 0, f"unlabelled:{c.clip_id}")
                for c in found
                if _file_key(c.path) not in training
            ]
            if len(unlabelled) < len(found):
                log.info(
                    "data.unlabelled: %d clip(s) are labelled training clips already; left out",
                    len(found) - len(unlabelled),
                )
            if not unlabelled:
                raise ManifestError(
                    f"data.unlabelled {self.unlabelled}: no clip is left that is not a labelled "
                    "training, validation or test clip; give audio the dataset does not hold"
                )
        self._extra = (extra, unlabelled)
        return self._extra

    def _read_extra(self, path: Path) -> list[Clip]:
        """``extra_train``'s clips, labelled over the dataset's classes, all in training."""
        if not path.is_file():
            raise ManifestError(
                f"data.extra_train {path}: manifest not found; write one with `audio-cls label` "
                "or give the path of a CSV with path and label (or prob_<class>) columns"
            )
        source = CSVManifest(
            file=path.name, num_folds=_fold_count(path), classes=list(self.class_names)
        )
        try:
            clips = source.manifest(path.parent).clips
        except ManifestError as err:
            raise ManifestError(f"data.extra_train: {err}") from None
        if self.extra_labels == "hard":
            clips = [dataclasses.replace(c, soft=None) for c in clips]
        # own ids: the dataset may name a clip of its own the same way
        return [dataclasses.replace(c, clip_id=f"extra:{c.clip_id}") for c in clips]

    def _without_held_out(
        self, clips: list[Clip], held_out: dict[str, str], option: str
    ) -> list[Clip]:
        """``clips`` without those that are validation or test clips (``extra_overlap``)."""
        overlap = [(c, held_out[k]) for c in clips if (k := _file_key(c.path)) in held_out]
        if not overlap:
            return clips
        shown = ", ".join(f"{printable_path(c.path)} ({split})" for c, split in overlap[:5])
        more = f" and {len(overlap) - 5} more" if len(overlap) > 5 else ""
        if self.extra_overlap == "raise":
            raise ManifestError(
                f"{option}: {len(overlap)} of its clip(s) are validation or test clips of the "
                f"dataset: {shown}{more}; training on them would make those scores dishonest. "
                f"Remove them, or pass --data.extra_overlap drop to leave them out"
            )
        log.warning(
            "%s: leaving out %d clip(s) that are validation or test clips: %s%s",
            option,
            len(overlap),
            shown,
            more,
        )
        dropped = {id(c) for c, _ in overlap}
        return [c for c in clips if id(c) not in dropped]

    def _check_files(self, splits: dict[str, list[Clip]]) -> dict[str, list[Clip]]:
        """Decode every clip of ``splits`` once (into the cache) and record the unreadable ones
        in ``bad_files``; raise listing them all, or return the splits without them (skip)."""
        todo = [c.path for clips in splits.values() for c in clips]
        todo = [p for p in dict.fromkeys(map(Path, todo)) if p not in self._unreadable]
        for path, err in self.cache.warm(todo, num_workers=max(self.num_workers, 1)):
            self._unreadable[Path(path)] = err.reason
        recorded = {(s, p) for s, p, _ in self.bad_files}
        new: list[tuple[str, str, str]] = []
        for split, clips in splits.items():
            for c in clips:
                reason = self._unreadable.get(Path(c.path))
                row = (split, printable_path(c.path))
                if reason is not None and row not in recorded:
                    recorded.add(row)
                    new.append((*row, reason))
        self.bad_files += new
        if new:
            counts = {s: sum(1 for r in new if r[0] == s) for s in splits}
            summary = ", ".join(f"{n} of {len(splits[s])} {s}" for s, n in counts.items() if n)
            listing = "\n".join(f"  [{s}] {p}: {why}" for s, p, why in new[:20])
            more = f"\n  ... and {len(new) - 20} more" if len(new) > 20 else ""
            if self.on_bad_file == "raise":
                raise ManifestError(
                    f"{len(new)} clip(s) could not be read ({summary}):\n{listing}{more}\n"
                    "Fix or remove them, or pass --data.on_bad_file skip to leave them out "
                    "(they are listed in the log)."
                )
            log.warning(
                "leaving out %d unreadable clip(s) (%s):\n%s%s", len(new), summary, listing, more
            )
        return {
            s: [c for c in clips if Path(c.path) not in self._unreadable]
            for s, clips in splits.items()
        }

    def _class_gaps(self, splits: dict[str, list[Clip]]) -> ManifestError | None:
        """The error naming classes that a split lacks, and why; None when every split has
        every class. A clip counts for a class by its label or a soft target above 0."""
        manifest = self.manifest
        present = {
            s: {c.label for c in clips}
            | {i for c in clips if c.soft is not None for i, p in enumerate(c.soft) if p > 0}
            for s, clips in splits.items()
        }
        gaps = []
        for i, name in enumerate(manifest.class_names):
            lacking = [s for s in splits if i not in present[s]]
            if lacking:
                gaps.append(self._describe_gap(i, name, lacking))
        if not gaps:
            return None
        shown = "; ".join(gaps[:5]) + (f"; and {len(gaps) - 5} more" if len(gaps) > 5 else "")
        return ManifestError(
            f"{len(gaps)} class(es) missing from a split, so training or the scores would be "
            f"wrong: {shown}. Use fewer folds (num_folds), another group_pattern (or none), or "
            "more files per class, or pick data.train_folds/val_folds/test_folds that hold "
            "every class"
        )

    def _describe_gap(self, label: int, name: str, lacking: list[str]) -> str:
        """``class 'dog' has all 4 of its files in fold 3 (why), so the <split> folds [..] have
        none``, and/or which splits hold only unreadable files of the class."""
        clips = [c for c in self.manifest.clips if c.label == label]
        folds_of = self._chosen_folds()

        def named(splits: list[str]) -> str:
            return " and ".join(f"the {_SPLIT_WORDS[s]} folds {folds_of[s]}" for s in splits)

        # a split may hold the class's files and still lack it: all of them unreadable
        unreadable = [
            s
            for s in lacking
            if any(c.fold in folds_of[s] for c in clips)
            and all(Path(c.path) in self._unreadable for c in clips if c.fold in folds_of[s])
        ]
        parts = []
        empty = [s for s in lacking if s not in unreadable]
        if empty:
            parts.append(f"class '{name}' {self._placement(clips)}, so {named(empty)} have none")
        if unreadable:
            parts.append(
                f"class '{name}' has only unreadable files in {named(unreadable)} (left out)"
            )
        return "; ".join(parts)

    def _placement(self, clips: list[Clip]) -> str:
        """Where a class's files lie and, when it shows, why: ``has all 4 of its files in fold
        3 (group_pattern '^(x)' put them in one group)``."""
        folds = sorted({c.fold for c in clips})
        n = len(clips)
        if not clips:
            return "has no files at all"
        if n == 1:
            where = f"has its only file in fold {folds[0]}"
        elif len(folds) == 1:
            where = f"has all {n} of its files in fold {folds[0]}"
        else:
            where = f"has its {n} files in folds {', '.join(map(str, folds))} only"
        pattern = getattr(self.source, "_pattern", None)
        num_folds = getattr(self.source, "num_folds", None) or len(self.manifest.folds)
        if pattern is not None:
            groups = {file_group(c.path.stem, pattern, c.clip_id) for c in clips}
            if len(groups) < min(n, num_folds):
                word = "one group" if len(groups) == 1 else f"{len(groups)} groups"
                return f"{where} (group_pattern {self.source.group_pattern!r} put them in {word})"
        if n < num_folds:
            return f"{where} (only {n} file(s) for {num_folds} folds)"
        return where

    def predict_clips(self, folds: dict[str, list[int]] | None = None) -> list[Clip]:
        if self.predict_source is None:
            return self.manifest.select((folds or self.folds())["test"])
        if self._predict_manifest is None:
            self._predict_manifest = self.predict_source.manifest(self.root)
        return self._predict_manifest.clips

    def _segment(self, split: str, clips: list[Clip]) -> SegmentSet:
        """Cut a split's checked (decoded, cached) clips into windows."""
        if not clips:
            raise ManifestError(
                f"the {split} split has no clips to read: data.{split}_folds selects none, or "
                "all of them were unreadable and left out (listed above)"
            )
        lengths = np.zeros(len(clips), dtype=np.int64)
        rows: list[np.ndarray] = []
        odd: list[str] = []  # silent or too short: kept, but a model can only guess on them
        shortest = SHORT_CLIP_SEC * self.sample_rate
        for i, clip in enumerate(clips):
            x = self.cache.load(clip.path)
            lengths[i] = len(x)
            peak = float(np.max(np.abs(x))) if len(x) else 0.0
            if len(x) < shortest:
                odd.append(
                    f"{printable_path(clip.path)}: {1000 * len(x) / self.sample_rate:.2f} ms"
                )
            elif peak < SILENT_PEAK:
                level = f"peak {20 * np.log10(peak):.1f} dBFS" if peak > 0 else "all zeros"
                odd.append(f"{printable_path(clip.path)}: silent ({level})")
            starts = window_starts(len(x), self.window, self.hop)
            if self.drop_silent_db is not None and split != "predict" and len(starts) > 1:
                starts = starts[loud_windows(x, starts, self.window, self.drop_silent_db)]
            rows.append(np.stack([np.full_like(starts, i), starts], axis=1))
        if odd:
            more = f"\n  ... and {len(odd) - 20} more" if len(odd) > 20 else ""
            log.warning(
                "%s: %d clip(s) silent (peak below -90 dBFS) or shorter than %g ms; they are "
                "used, but a model can only guess on them, so check or remove them:\n  %s%s",
                split,
                len(odd),
                1000 * SHORT_CLIP_SEC,
                "\n  ".join(odd[:20]),
                more,
            )
        windows = np.concatenate(rows)
        log.info("%s: %d clips -> %d windows", split, len(clips), len(windows))
        return SegmentSet(clips, lengths, windows)

    def _dataset(self, split: str) -> _WindowDataset:
        train = split == "train"
        return _WindowDataset(
            self.splits[split],
            self.cache,
            self.window,
            self.short_clip,
            train=train,
            jitter=self.hop // 2 if train else 0,
            augment=self.augment if train else None,
            second_view=train and self.second_view,
        )

    def _loader(self, split: str, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            self._dataset(split),
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        if not self.balanced_sampling:
            return self._loader("train", self.batch_size, shuffle=True, drop_last=True)
        segments = self.splits["train"]
        # unlabelled clips (-1) are balanced as one more class
        groups = np.array([segments.clips[i].label for i in segments.windows[:, 0]]) + 1
        weights = 1.0 / np.bincount(groups, minlength=self.num_classes + 1)[groups]
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(groups))
        return self._loader("train", self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.splits:  # no validation folds (e.g. `cv --cv.val none`)
            return []
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        trainer = self.trainer
        if self.mixup_alpha > 0 and trainer is not None and trainer.training:
            # mix the clips' soft targets when the data has them, one-hot labels otherwise
            target = batch["soft"] if "soft" in batch else batch["target"]
            waveform = batch["waveform"]
            if "view" in batch:  # both views mixed alike: one lambda, one permutation
                waveform = torch.stack([waveform, batch["view"]], dim=1)
            if self.unlabelled:
                mixed, soft = _mixup_labelled(
                    waveform, target, batch["target"] >= 0, self.num_classes, self.mixup_alpha
                )
            else:
                mixed, soft = mixup(waveform, target, self.num_classes, self.mixup_alpha)
            batch["soft"] = soft
            if "view" in batch:
                batch["waveform"], batch["view"] = mixed[:, 0], mixed[:, 1]
            else:
                batch["waveform"] = mixed
        return batch

    def segments(self, split: str) -> SegmentSet:
        """The clips and windows of a prepared split: what batches' ``clip_index`` and
        ``segment_index`` point into (the clip-aggregation callback reads it)."""
        return self.splits[split]


def _file_key(path: Path) -> str:
    """One name per file, however it is reached (relative path, ``..``, symbolic link)."""
    return os.path.realpath(path)


def _fold_count(csv_path: Path) -> int:
    """Enough folds for every ``fold`` cell of a CSV (folds of an extra manifest are read but not
    used: all its clips train)."""
    from audio_cls.data.sources._common import read_csv_table

    _, rows = read_csv_table(csv_path, ())
    folds = [int(f) for _, r in rows if (f := r.get("fold", "")).isdigit()]
    return max(3, *folds) if folds else 5


def _mixup_labelled(
    waveform: torch.Tensor,
    target: torch.Tensor,
    labelled: torch.Tensor,
    num_classes: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup among the labelled rows only; unlabelled rows stay as they are, with zero targets
    (a mix with a clip of no label would have a target that sums to less than 1)."""
    rows = labelled.nonzero().squeeze(1)
    soft = torch.zeros(len(waveform), num_classes, device=waveform.device)
    if target.ndim == 2:
        soft[rows] = target[rows].float()
    else:
        soft[rows] = torch.nn.functional.one_hot(target[rows], num_classes).float()
    if len(rows) < 2:
        return waveform, soft
    mixed, mixed_soft = mixup(waveform[rows], target[rows], num_classes, alpha)
    waveform = waveform.clone()
    waveform[rows], soft[rows] = mixed, mixed_soft
    return waveform, soft
