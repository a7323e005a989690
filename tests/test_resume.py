"""Exact resume: ``last.ckpt`` is every epoch's, written atomically, and ``fit --ckpt_path`` after
a ``kill -9`` continues the same run directory and ends where the uninterrupted run ends."""

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from audio_cls.callbacks import AtomicCheckpointIO, ResumeState, RunCheckpoint
from audio_cls.callbacks.checkpointing import CheckpointWriteError, atomic_save
from tests.conftest import TINY_SYNTHETIC

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
TINY_SOURCE = [f"--data.source.init_args.{k}={v}" for k, v in TINY_SYNTHETIC.items()]
EPOCHS = 3


# ---------------------------------------------------------------------------------------------
# last.ckpt every epoch


class _Worsening(L.LightningModule):
    """A tiny regressor whose logged ``score`` gets worse every epoch: best stays epoch 0."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("score", -float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(12, 4, generator=g), torch.zeros(12, 1)), 4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 4), torch.zeros(4, 1)), 4)


class _ReadsLast(L.Callback):
    """Records (epoch, global_step) of the last.ckpt on disk at every epoch start and batch."""

    def __init__(self, path: Path, every_batch: bool) -> None:
        self.path, self.every_batch = path, every_batch
        self.at_epoch_start, self.at_batch_start = [], []

    def _read(self):
        ckpt = torch.load(self.path, weights_only=True)
        return ckpt["epoch"], ckpt["global_step"]

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.at_epoch_start.append((trainer.current_epoch, *self._read()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.every_batch and trainer.global_step > 0:
            self.at_batch_start.append((trainer.global_step, self._read()[1]))


def _fit_worsening(tmp_path: Path, **checkpoint_kwargs) -> _ReadsLast:
    ckpt = RunCheckpoint(
        dirpath=tmp_path,
        filename="best",
        monitor="score",
        mode="max",
        save_last=True,
        **checkpoint_kwargs,
    )
    reader = _ReadsLast(tmp_path / "last.ckpt", "save_last_every_n_steps" in checkpoint_kwargs)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ckpt, reader],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(_Worsening())
    return reader


def test_last_ckpt_holds_every_completed_epoch_though_the_metric_only_worsens(tmp_path):
    # Lightning 2.6's ModelCheckpoint rewrites last.ckpt only beside a new best: here at epoch 0
    reader = _fit_worsening(tmp_path)
    # at each epoch start, last.ckpt is the epoch just completed: 3 steps an epoch
    assert reader.at_epoch_start == [(1, 0, 3), (2, 1, 6)]
    final = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (EPOCHS - 1, 3 * EPOCHS)
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temp


def test_last_ckpt_every_n_steps_and_top_k_every_n_epochs(tmp_path):
    reader = _fit_worsening(tmp_path, save_last_every_n_steps=1, every_n_epochs=2)
    # before every batch but an epoch's first, last.ckpt is the previous step's
    assert all(step == on_disk for step, on_disk in reader.at_batch_start)
    assert len(reader.at_batch_start) == 3 * EPOCHS - 1
    # top-k follows every_n_epochs (epoch 1 is the first checked): last.ckpt is not held back
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == EPOCHS - 1


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    callback = ResumeState()
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    atomic_save({"state": callback.state_dict()}, tmp_path / "s.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    callback.load_state_dict(torch.load(tmp_path / "s.ckpt", weights_only=True)["state"])
    callback.on_train_start(None, None)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


class _Noisy(torch.utils.data.Dataset):
    """Draws from torch's generator per item, like the data module's augmentation."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i):
        x = torch.full((4,), float(i)) + torch.randn(4)
        return x, x.sum(0, keepdim=True)


class _Dropout(_Worsening):
    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers, self.drop = workers, nn.Dropout(0.5)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(self.drop(x)), y)

    def train_dataloader(self):
        w = self.workers
        return DataLoader(_Noisy(), 4, shuffle=True, num_workers=w, persistent_workers=w > 0)


def _fit_noisy(tmp_path: Path, epochs: int, workers: int, ckpt_path=None) -> _Dropout:
    L.seed_everything(0, workers=True)
    model = _Dropout(workers)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RunCheckpoint(dirpath=tmp_path, save_last=True), ResumeState()],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_in_process_draws_what_the_uninterrupted_run_drew(tmp_path, workers):
    whole = _fit_noisy(tmp_path / "whole", EPOCHS, workers)
    _fit_noisy(tmp_path / "parts", 1, workers)
    last = tmp_path / "parts" / "last.ckpt"
    resumed = _fit_noisy(tmp_path / "parts", EPOCHS, workers, ckpt_path=last)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_best_k_bookkeeping_survives_a_resume_that_spells_the_folder_otherwise(
    tmp_path, monkeypatch
):
    # a run started with relative paths, resumed with an absolute --ckpt_path
    monkeypatch.chdir(tmp_path)
    relative = os.path.join("runs", "q", "version_0", "checkpoints")
    (tmp_path / relative).mkdir(parents=True)
    saved = {
        "monitor": "score",
        "best_model_score": torch.tensor(0.5),
        "best_model_path": os.path.join(relative, "best.ckpt"),
        "current_score": torch.tensor(0.25),
        "dirpath": relative,
        "best_k_models": {os.path.join(relative, "best.ckpt"): torch.tensor(0.5)},
        "kth_best_model_path": os.path.join(relative, "best.ckpt"),
        "kth_value": torch.tensor(0.5),
        "last_model_path": os.path.join(relative, "last.ckpt"),
    }
    ckpt = RunCheckpoint(dirpath=tmp_path / relative, filename="best", monitor="score", mode="max")
    ckpt.load_state_dict(saved)
    best = str(tmp_path / relative / "best.ckpt")
    assert ckpt.best_model_score == 0.5 and ckpt.best_model_path == best
    assert list(ckpt.best_k_models) == [best] and ckpt.kth_best_model_path == best
    assert ckpt.last_model_path == str(tmp_path / relative / "last.ckpt")


# ---------------------------------------------------------------------------------------------
# atomic writes


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_full_disk_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch, failing):
    path = tmp_path / "last.ckpt"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, failing, full)
    with pytest.raises(CheckpointWriteError) as err:
        atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert str(err.value).startswith(f"cannot write checkpoint {path}: no space left on device")
    assert err.value.errno == errno.ENOSPC
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the temporary file is gone


# ---------------------------------------------------------------------------------------------
# kill -9, resume, compare


def _fit_argv(root: Path, out: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "audio_cls.cli",
        "fit",
        "--config",
        QUICKSTART,
        f"--data.root={root}",
        *TINY_SOURCE,
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--data.num_workers={workers}",
        "--data.batch_size=8",
        "--data.window_sec=0.5",
        f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.default_root_dir={out}",
    ]


def _start(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    # a session of its own: the kill reaches its loader workers too
    with log.open("w") as f:
        return subprocess.Popen(
            argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def _run_dir(out: Path) -> Path:
    return out / "runs" / "quickstart" / "version_0"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _logged_epoch_end(path: Path, epoch: int) -> bool:
    try:
        rows = _csv_rows(path)
    except (OSError, csv.Error):
        return False
    return any(r.get("epoch") == str(epoch) and r.get("train/loss_epoch") for r in rows)


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, float):
            assert value == pytest.approx(b[key], abs=1e-5), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_after_kill_matches_the_uninterrupted_run(synthetic_root, tmp_path, workers):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # both start together: the uninterrupted run is the reference, the other is killed
    ref = _start(_fit_argv(synthetic_root, whole, workers), tmp_path, tmp_path / "whole.log")
    argv = _fit_argv(synthetic_root, killed, workers)
    victim = _start(argv, tmp_path, tmp_path / "killed.log")
    last = _run_dir(killed) / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    # last.ckpt appears whole, by rename, once the first epoch is complete; Lightning logs that
    # epoch's epoch-level training metrics a moment later (see RunCheckpoint)
    while not (last.exists() and _logged_epoch_end(_run_dir(killed) / "metrics.csv", 0)):
        assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no last.ckpt after 240 s"
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    interrupted_at = torch.load(last, weights_only=True)["epoch"]
    assert interrupted_at < EPOCHS - 1 and not (_run_dir(killed) / "metrics_test.json").exists()

    resumed = _start([*argv, f"--ckpt_path={last}"], tmp_path, tmp_path / "resumed.log")
    _finish(resumed, tmp_path / "resumed.log")
    _finish(ref, tmp_path / "whole.log")

    # the same run directory, continued
    assert sorted(p.name for p in _run_dir(killed).parent.iterdir()) == ["latest", "version_0"]
    a, b = _run_dir(whole), _run_dir(killed)
    val_a = json.loads((a / "metrics_val.json").read_text())
    val_b = json.loads((b / "metrics_val.json").read_text())
    assert [h["epoch"] for h in val_b["history"]] == list(range(EPOCHS))  # the whole history
    for ha, hb in zip(val_a["history"], val_b["history"]):
        _close(ha, hb)
    _close(val_a["best"], val_b["best"])
    _close(
        json.loads((a / "metrics_test.json").read_text()),
        json.loads((b / "metrics_test.json").read_text()),
    )
    # metrics.csv: the rows before the kill kept, the interrupted epoch's not doubled
    rows_a, rows_b = _csv_rows(a / "metrics.csv"), _csv_rows(b / "metrics.csv")
    assert [(r["epoch"], r["step"]) for r in rows_b] == [(r["epoch"], r["step"]) for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        _close(
            {k: float(v) for k, v in ra.items() if v},
            {k: float(v) for k, v in rb.items() if v},
        )
