"""``AudioDataModule``: folds -> train/val/test windows, the label map, and the loaders.

It delivers waveforms only (``{waveform (B, T), target (B,), clip_index (B,), segment_index (B,)}``
plus ``soft (B, C)``), so every model family shares one pipeline; features are the model's
business. ``soft`` holds float32 probability targets: in every batch of a split where some clip
has a soft target (``Clip.soft``; the other clips' rows are one-hot of their label), and in
training batches under mixup. ``target`` stays the hard label (the argmax for soft-only clips).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from audio_cls.data.augment import WaveformAugment, mixup
from audio_cls.data.cache import WaveformCache, default_cache_dir
from audio_cls.data.segments import ShortClipPolicy, fit_length, loud_windows, window_starts
from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError, soft_targets

__all__ = ["AudioDataModule", "SegmentSet"]

log = logging.getLogger(__name__)


@dataclass
class SegmentSet:
    """The clips of one split and the windows cut from them.

    Attributes:
        clips: The split's clips; ``clip_index`` in batches indexes this list.
        lengths: Samples per clip at the data module's rate.
        windows: ``(N, 2)`` int64 rows of (clip index, start sample).
    """

    clips: list[Clip]
    lengths: np.ndarray
    windows: np.ndarray


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
    ) -> None:
        self.segments = segments
        self.cache = cache
        self.window = window
        self.short_clip = short_clip
        self.train = train
        self.jitter = jitter
        self.augment = augment

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
        if self.augment is not None:
            for j in range(len(batch)):
                batch[j] = self.augment(batch[j])
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
        self._manifest: Manifest | None = None
        self._predict_manifest: Manifest | None = None
        self.splits: dict[str, SegmentSet] = {}

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
        defaults = dict(zip(("train", "val", "test"), self.source.default_folds))
        folds = {
            s: list(self._folds[s] if self._folds[s] is not None else defaults[s]) for s in defaults
        }
        available = set(self.manifest.folds)
        for stage, chosen in folds.items():
            missing = sorted(set(chosen) - available)
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

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        self.source.prepare(self.root)

    def setup(self, stage: str | None = None) -> None:
        wanted: dict[str, list[Clip]] = {}
        if stage == "predict" and self.predict_source is not None:
            wanted["predict"] = self.predict_clips()
        else:
            folds = self.folds()
            if stage in (None, "fit"):
                wanted["train"] = self.manifest.select(folds["train"])
            if stage in (None, "fit", "validate") and folds["val"]:
                wanted["val"] = self.manifest.select(folds["val"])
            if stage in (None, "test"):
                wanted["test"] = self.manifest.select(folds["test"])
            if stage in (None, "predict"):
                wanted["predict"] = self.predict_clips(folds)
        for split, clips in wanted.items():
            if split not in self.splits:
                self.splits[split] = self._segment(split, clips)

    def predict_clips(self, folds: dict[str, list[int]] | None = None) -> list[Clip]:
        if self.predict_source is None:
            return self.manifest.select((folds or self.folds())["test"])
        if self._predict_manifest is None:
            self._predict_manifest = self.predict_source.manifest(self.root)
        return self._predict_manifest.clips

    def _segment(self, split: str, clips: list[Clip]) -> SegmentSet:
        """Decode (once, into the cache) and cut a split into windows."""
        failures = self.cache.warm([c.path for c in clips], num_workers=max(self.num_workers, 1))
        if failures:
            listing = "\n".join(f"  {err}" for _, err in failures[:20])
            more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
            if self.on_bad_file == "raise":
                raise ManifestError(
                    f"{len(failures)} of {len(clips)} {split} clip(s) could not be read:\n"
                    f"{listing}{more}\nFix or remove them, or pass --data.on_bad_file skip to "
                    f"leave them out (they are listed in the log)."
                )
            log.warning(
                "leaving out %d unreadable %s clip(s):\n%s%s", len(failures), split, listing, more
            )
            bad = {Path(p) for p, _ in failures}
            clips = [c for c in clips if Path(c.path) not in bad]
        if not clips:
            raise ValueError(f"the {split} split has no readable clips")
        lengths = np.zeros(len(clips), dtype=np.int64)
        rows: list[np.ndarray] = []
        for i, clip in enumerate(clips):
            x = self.cache.load(clip.path)
            lengths[i] = len(x)
            starts = window_starts(len(x), self.window, self.hop)
            if self.drop_silent_db is not None and split != "predict" and len(starts) > 1:
                starts = starts[loud_windows(x, starts, self.window, self.drop_silent_db)]
            rows.append(np.stack([np.full_like(starts, i), starts], axis=1))
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
        labels = np.array([segments.clips[i].label for i in segments.windows[:, 0]])
        weights = 1.0 / np.bincount(labels, minlength=self.num_classes)[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels))
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
            batch["waveform"], batch["soft"] = mixup(
                batch["waveform"], target, self.num_classes, self.mixup_alpha
            )
        return batch

    def segments(self, split: str) -> SegmentSet:
        """The clips and windows of a prepared split: what batches' ``clip_index`` and
        ``segment_index`` point into (the clip-aggregation callback reads it)."""
        return self.splits[split]
