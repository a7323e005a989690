"""Checkpoints a run can be resumed from exactly, written so that a crash never corrupts them.

- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in its own folder and
  renames it over the old one, so a full disk or a kill mid-write leaves the previous file whole.
- :class:`RunCheckpoint` is ``ModelCheckpoint`` whose ``last.ckpt`` holds the last completed
  epoch. Lightning 2.6 writes ``last.ckpt`` only beside a top-k checkpoint, so with a monitor
  only when the metric improves: a crash then redoes epochs.
- :class:`ResumeState` keeps the global random states (torch, CUDA, numpy, Python) in the
  checkpoint and restores them when training resumes, which Lightning does not do by itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader

__all__ = [
    "RUN_KEY",
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "ResumeState",
    "RunCheckpoint",
    "atomic_save",
]

#: Checkpoint key of what a resumed run needs before its loggers exist (the W&B run ids).
RUN_KEY = "audio_cls_run"

TMP_SUFFIX = ".tmp"


def _reason(err: OSError) -> str:
    text = err.strerror or str(err)
    return text[:1].lower() + text[1:]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; whatever was at its path before is unchanged."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror, str(path))
        self.path = Path(path)
        self.reason = _reason(cause)

    def __str__(self) -> str:
        return (
            f"cannot write checkpoint {self.path}: {self.reason} "
            "(the previous checkpoint there, if any, is unchanged)"
        )


def atomic_save(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers see the old file or the new one, never a partial one.

    Args:
        checkpoint: What to save.
        path: The file to (re)place.

    Raises:
        CheckpointWriteError: The folder or the file could not be written (full disk,
            permissions); the temporary file is removed.
    """
    path = Path(path)
    # serialised in memory first: torch's zip writer reports a failed disk write as a
    # RuntimeError without errno, a plain file write says ENOSPC
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(path, err) from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    # the rename itself survives a power cut only once the folder entry is on disk
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes go through :func:`atomic_save`.

    Lightning's own write goes through an fsspec transaction whose temporary file lives in the
    system temp folder; moving it from another file system rewrites the target in place, so a
    full disk there leaves a truncated checkpoint. Remote paths keep Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, path)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is the last completed epoch, for exact resumes.

    With ``save_last``, ``last.ckpt`` is written at the end of every training epoch, after that
    epoch's validation (so it holds the validation history, the early-stopping count and the
    random states), and at the end of training. Top-k checkpoints (``best.ckpt``) keep
    Lightning's rules (``monitor``, ``every_n_epochs``, ...). ``save_last: link`` writes a file
    too: a link to the best checkpoint is not the last epoch. Nothing is written under
    ``fast_dev_run``. Logger buffers are flushed before each write, so ``metrics.csv`` holds what
    the checkpoint does. One gap remains: Lightning logs an epoch's epoch-level training metrics
    just after ``on_train_epoch_end``; a process killed in those milliseconds resumes without
    that one ``metrics.csv`` row (the validation history is in the checkpoint, whole).

    Args:
        save_last_every_n_steps: Also write ``last.ckpt`` every this many training steps
            (0: at epoch ends only). A resume from a mid-epoch ``last.ckpt`` keeps the step
            count and the weights, but the rest of that epoch sees a new data order.
        **kwargs: ``ModelCheckpoint``'s arguments.
    """

    def __init__(self, save_last_every_n_steps: int = 0, **kwargs: Any) -> None:
        if save_last_every_n_steps < 0:
            raise ValueError(
                f"checkpoint.save_last_every_n_steps must be >= 0, got {save_last_every_n_steps}"
            )
        super().__init__(**kwargs)
        self.save_last_every_n_steps = save_last_every_n_steps
        self._last_written_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath and not trainer.fast_dev_run:
            # temporary files of a write a kill interrupted; the run directory is this run's own
            with contextlib.suppress(OSError):
                for stale in Path(self.dirpath).glob(f".*.ckpt.*{TMP_SUFFIX}"):
                    stale.unlink()

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        # Lightning's own last saves (beside a top-k one, at train end): _write_last replaces them
        return

    def _write_last(self, trainer: L.Trainer) -> None:
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or self._last_written_step == trainer.global_step
        ):
            return
        candidates = self._monitor_candidates(trainer)
        path = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        self.last_model_path = path  # before saving: it is part of the saved state
        # metric rows still buffered by the CSV logger would be lost with the process
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(path, self.save_weights_only)
        self._last_written_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the previous epoch's end-of-epoch metrics were logged after its last.ckpt
        for logger in trainer.loggers:
            logger.save()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.save_last_every_n_steps
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if n and trainer.global_step % n == 0 and not last_batch:  # epoch ends write anyway
            self._write_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._write_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._write_last(trainer)  # stopped mid-epoch (max_steps); a no-op after an epoch end

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        here = self.dirpath
        if saved and here and saved != here and os.path.realpath(saved) == os.path.realpath(here):
            # the same folder spelled otherwise (relative vs absolute, via `latest`): keep the
            # best-k bookkeeping, or the next best.ckpt would become best-v1.ckpt
            def move(p: Any) -> Any:
                return os.path.join(here, os.path.basename(p)) if p else p

            state_dict = {
                **state_dict,
                "dirpath": here,
                "best_model_path": move(state_dict.get("best_model_path")),
                "kth_best_model_path": move(state_dict.get("kth_best_model_path")),
                "last_model_path": move(state_dict.get("last_model_path")),
                "best_k_models": {
                    move(k): v for k, v in (state_dict.get("best_k_models") or {}).items()
                },
            }
        super().load_state_dict(state_dict)


# ---------------------------------------------------------------------------------------------
# random states


def rng_state() -> dict[str, Any]:
    """The global random states, in types ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, python, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(python), "gauss": python_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global random states.

    Args:
        state: What :func:`rng_state` returned (CUDA's ignored without a GPU).
    """
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _respawn_persistent_workers(loader: DataLoader) -> None:
    # A persistent worker's random stream runs on from epoch to epoch and cannot be saved. Without
    # it, each epoch's iterator starts new workers seeded from the main process's generator, which
    # the checkpoint holds, so a resumed epoch draws what the uninterrupted one did.
    if loader.persistent_workers and getattr(loader, "_iterator", None) is not None:
        loader._iterator = None


class ResumeState(L.Callback):
    """Keeps the global random states in checkpoints and restores them on resume.

    Lightning's checkpoint holds weights, optimiser, schedulers, loops and callbacks, but not the
    torch/numpy/Python generators that draw the data order, the augmentation and the loader
    workers' seeds; without them a resumed run diverges from the uninterrupted one. The states
    are restored when training starts (after the sanity check, which Lightning isolates), and
    validation during fit runs isolated from them too, so that neither the number of validation
    loaders started nor a resume changes what training draws. Persistent training-loader workers
    are restarted every epoch (see :func:`_respawn_persistent_workers`), and a resumed run's
    first training iterator is made again after the restore.

    Under DDP, rank zero's states are saved and every rank restores them.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._first_epoch = False
        self._outside_validation: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        from lightning.pytorch.loggers import WandbLogger

        # the resumed run's W&B loggers are created before the checkpoint is restored
        checkpoint[RUN_KEY] = {
            "wandb_ids": [
                lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger) and lg.version
            ]
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None
            self._first_epoch = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.train_dataloader
        if loaders is not None:
            apply_to_collection(loaders, DataLoader, _respawn_persistent_workers)
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if self._first_epoch and fetcher is not None:
            # Lightning makes a fit's first iterator before on_train_start, so a resumed run's
            # drew its worker seed before the restore; the uninterrupted run made this epoch's
            # after this hook. A new one draws it, and the order, from the restored state.
            iter(fetcher)
        self._first_epoch = False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._outside_validation = rng_state()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._outside_validation is not None:
            set_rng_state(self._outside_validation)
            self._outside_validation = None
