"""Run statistics: what ``audio-cls compare`` reads of a run beside its metrics.

:class:`RunStats` writes ``run_stats.json`` into the run directory and logs the same numbers to
the loggers under fixed names, the same for every family, so that W&B compares them directly
(not to the CSV logger: its ``metrics.csv`` stays what a resumed run reproduces exactly, and
timings never repeat; ``run_stats.json`` sits beside it):

- ``run/train_time_s``: wall time of ``fit``, from its start (sanity check included) to its end;
  a resumed run adds the time recorded in its checkpoint;
- ``run/params``: parameters of the model (front end, backbone and head, trainable or not);
- ``run/test_segments_per_s``: test windows through the model per second (see
  :class:`RunStats` for how it is measured).

The JSON also records what the numbers came from and what a comparison must hold equal: the
model family, the device, the dataset (its source, options, class names and a fingerprint of
its clips, folds and labels) and the train/val/test folds. Each W&B run gets the family and the
dataset as tags and in its config.

It also keeps ``predictions_val.csv``: the validation clip probabilities of the epoch that the
checkpoint callback keeps as best (same monitor, same strict improvement), rewritten whenever
that epoch improves. Ensembles choose their members on it, never on the test predictions.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from audio_cls.callbacks.aggregation import ClipAggregation
from audio_cls.callbacks.run_report import RunReport
from audio_cls.reports import write_metrics, write_predictions

__all__ = ["STATS_FILE", "VAL_PREDICTIONS_FILE", "RunStats", "describe_data", "plain_setting"]

STATS_FILE = "run_stats.json"
VAL_PREDICTIONS_FILE = "predictions_val.csv"

#: Source attributes that do not change which clips a dataset holds.
_NOT_DATA = {"download", "missing", "default_folds"}


def plain_setting(value: Any) -> Any:
    """A source attribute as JSON, or None for what is not a plain setting (paths, objects)."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and "/" not in value and "\\" not in value:
        return value  # a path differs between machines holding the same data
    if isinstance(value, (tuple, list)):  # fold lists, class names
        items = [plain_setting(v) for v in value]
        plain = all(i is not None and not isinstance(i, (list, dict)) for i in items)
        return items if plain else None
    if isinstance(value, dict):  # ClassGroups' groups: name -> class names
        entries = {str(k): plain_setting(v) for k, v in value.items()}
        return entries if all(v is not None for v in entries.values()) else None
    return None


def _wrapped(value: Any) -> bool:
    """Whether an attribute of a source is a source it wraps (ClassGroups' ``source``)."""
    return callable(getattr(value, "manifest", None)) and callable(getattr(value, "prepare", None))


def _source_options(source: Any) -> dict[str, Any]:
    """A source's plain options; those of a source it wraps as ``<attribute>.<option>``."""
    options: dict[str, Any] = {}
    for k, raw in sorted(vars(source).items()):
        if k.startswith("_") or k in _NOT_DATA:
            continue
        if _wrapped(raw):
            options[k] = type(raw).__name__
            options.update({f"{k}.{ik}": iv for ik, iv in _source_options(raw).items()})
        elif (v := plain_setting(raw)) is not None:
            options[k] = v
    return options


def _source_name(source: Any) -> str:
    """Short dataset name: the subset or the source's kind; a wrapping source's is the wrapped
    one's and its groups (``esc50-impact``)."""
    inner = getattr(source, "source", None)
    if _wrapped(inner):
        groups = getattr(source, "groups", None)
        own = "-".join(groups) if isinstance(groups, dict) else type(source).__name__.lower()
        return f"{_source_name(inner)}-{own}"
    return str(getattr(source, "subset", None) or type(source).__name__.lower())


def describe_data(datamodule: Any) -> dict[str, Any] | None:
    """The dataset a run used, as ``compare`` checks it: source class, its plain options (those
    of a wrapped source as ``source.<option>``), short name, class names, number of clips and a
    fingerprint of (clip id, fold, label) over all clips.

    None for a data module that is not an :class:`~audio_cls.data.AudioDataModule`.
    """
    source = getattr(datamodule, "source", None)
    manifest = getattr(datamodule, "manifest", None)
    if source is None or manifest is None:
        return None
    options = _source_options(source)
    digest = hashlib.sha1()
    for clip in sorted(manifest.clips, key=lambda c: c.clip_id):
        digest.update(f"{clip.clip_id}\t{clip.fold}\t{clip.label}\n".encode())
    kind = type(source).__name__
    return {
        "source": kind,
        "name": _source_name(source),
        "options": options,
        "root": str(Path(getattr(datamodule, "root", "")).resolve()),
        "class_names": list(manifest.class_names),
        "clips": len(manifest.clips),
        "fingerprint": digest.hexdigest(),
    }


def _device(pl_module: L.LightningModule) -> str:
    device = pl_module.device
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RunStats(L.Callback):
    """Training time, parameter count and test throughput of a run; the best validation epoch's
    clip probabilities.

    Throughput (``run/test_segments_per_s``): the time of every test batch from
    ``on_test_batch_start`` to ``on_test_batch_end`` (after the batch is on the device; with
    CUDA synchronised at both ends) is summed, and the windows of those batches are divided by
    it. It covers the model's forward pass on the test windows (front end, backbone, head,
    test-time shifts when ``tta.shifts`` > 1) plus the step's loss and metric updates, and
    leaves out data loading. The first batch is left out when there are more (it pays for
    warm-up: kernel selection, lazy initialisation), so the figure is the steady rate at the
    run's ``eval_batch_size`` and precision on its device, which the JSON records.
    """

    def __init__(self) -> None:
        self.train_time_s: float | None = None
        self.test_segments_per_s: float | None = None
        self.test_segments = 0
        self._fit_started: float | None = None
        self._earlier_train_s = 0.0  # a resumed run's time before the resume
        self._best: float | None = None  # the monitored value of the best validation epoch
        self._batch_started = 0.0
        self._test_batches: list[tuple[int, float]] = []

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._fit_started if self._fit_started else 0.0
        return {"train_time_s": self._earlier_train_s + elapsed, "best": self._best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._earlier_train_s = float(state_dict.get("train_time_s") or 0.0)
        self._best = state_dict.get("best")

    # ------------------------------------------------------------------ what a run records
    def stats(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The record of ``run_stats.json``; also what ``cv`` reads per fold."""
        params = sum(p.numel() for p in pl_module.parameters())
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        datamodule = getattr(trainer, "datamodule", None)
        folds = datamodule.folds() if hasattr(datamodule, "folds") else None
        tta = next((cb.tta.shifts for cb in trainer.callbacks if hasattr(cb, "tta_for")), 1)
        return {
            "family": getattr(pl_module, "registry_name", "") or type(pl_module).__name__,
            "run/train_time_s": self.train_time_s,
            "run/params": params,
            "run/trainable_params": trainable,
            "run/test_segments_per_s": self.test_segments_per_s,
            "test_segments": self.test_segments,
            "device": _device(pl_module),
            "precision": str(trainer.precision),
            "eval_batch_size": getattr(datamodule, "eval_batch_size", None),
            "tta_shifts": tta,
            "data": describe_data(datamodule),
            "folds": folds,
        }

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, keys: list[str]) -> None:
        """Write ``run_stats.json`` and log ``keys`` of it to every logger."""
        out = RunReport.run_dir(trainer)  # every rank calls it: a broadcast under DDP
        if out is None:
            return
        stats = self.stats(trainer, pl_module)
        path = out / STATS_FILE
        if path.is_file():  # fit wrote it; the test after fit adds to it
            earlier = json.loads(path.read_text())
            stats = {**earlier, **{k: v for k, v in stats.items() if v is not None}}
        write_metrics(path, stats)
        values = {k: float(stats[k]) for k in keys if stats.get(k) is not None}
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):  # see the module's docstring
                logger.log_metrics(values, step=trainer.global_step)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer, pl_module, stage):
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import WandbLogger

        data = describe_data(getattr(trainer, "datamodule", None))
        family = getattr(pl_module, "registry_name", "") or type(pl_module).__name__
        labels = {"family": family, **({"dataset": data["name"]} if data else {})}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment  # started by Lightning before the callbacks' setup
                run.tags = tuple(dict.fromkeys([*(run.tags or ()), *labels.values()]))
                run.config.update(labels, allow_val_change=True)

    def on_fit_start(self, trainer, pl_module):
        self._fit_started = time.perf_counter()

    def on_fit_end(self, trainer, pl_module):
        if self._fit_started is not None:
            self.train_time_s = self._earlier_train_s + time.perf_counter() - self._fit_started
            self._fit_started = None
        self._record(trainer, pl_module, ["run/train_time_s", "run/params"])

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        ckpt = trainer.checkpoint_callback
        monitor = getattr(ckpt, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        if value is None:
            return
        value = float(value)
        if self._best is not None:
            better = value > self._best if ckpt.mode == "max" else value < self._best
            if not better:  # as ModelCheckpoint: a tie keeps the earlier epoch
                return
        self._best = value
        results = next(
            (cb.results["val"] for cb in trainer.callbacks if isinstance(cb, ClipAggregation)),
            None,
        )
        out = RunReport.run_dir(trainer)
        if out is not None and results is not None:
            write_predictions(out / VAL_PREDICTIONS_FILE, results, pl_module.class_names)

    def on_test_start(self, trainer, pl_module):
        self._test_batches = []

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        _sync(pl_module.device)
        self._batch_started = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        _sync(pl_module.device)
        elapsed = time.perf_counter() - self._batch_started
        self._test_batches.append((int(batch["waveform"].shape[0]), elapsed))

    def on_test_end(self, trainer, pl_module):
        timed = self._test_batches[1:] if len(self._test_batches) > 1 else self._test_batches
        seconds = sum(t for _, t in timed)
        self.test_segments = sum(n for n, _ in self._test_batches)
        if seconds > 0:
            self.test_segments_per_s = sum(n for n, _ in timed) / seconds
        self._record(trainer, pl_module, ["run/test_segments_per_s", "run/params"])
