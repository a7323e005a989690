"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def _write_tone(
    path: str | Path,
    sr: int = 16000,
    seconds: float = 0.5,
    freq: float = 440.0,
    channels: int = 1,
    amplitude: float = 0.5,
    subtype: str | None = None,
) -> Path:
    """Write a sine tone (every channel the same) to ``path``; format from the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(sr * seconds)) / sr
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(path, np.repeat(x[:, None], channels, axis=1), sr, subtype=subtype)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV file with ``header`` and ``rows``; folders are made as needed."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def write_tone() -> Callable[..., Path]:
    """``write_tone(path, sr=16000, seconds=0.5, freq=440, channels=1, ...) -> Path``."""
    return _write_tone


# ---------------------------------------------------------------------------------------------
# Data sets the end-to-end tests train on; built once per session, never read from ../shared.

TINY_SYNTHETIC = {"num_classes": 3, "clips_per_class": 9, "clip_sec": 1.0, "num_folds": 3}


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory):
    """Keep caches and W&B files inside the test session's temporary folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUDIO_CLS_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("WANDB_MODE", "disabled")
    mp.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny generated set: 3 classes x 9 clips of 1 s, folds 1-3."""
    from audio_cls.data.sources import Synthetic

    root = tmp_path_factory.mktemp("synthetic")
    Synthetic(**TINY_SYNTHETIC).prepare(root)
    return root


ESC10_TARGETS = {0: "dog", 1: "rooster", 10: "rain", 11: "sea_waves", 12: "crackling_fire"}


def make_esc50_tree(
    root: Path,
    targets: dict[int, str] = ESC10_TARGETS,
    per_fold: int = 1,
    seconds: float = 1.0,
    sr: int = 16000,
) -> Path:
    """An ESC-50 layout (meta/esc50.csv + audio/) holding only some targets, like ESC-10."""
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    rng = np.random.default_rng(0)
    for target, name in targets.items():
        for fold in range(1, 6):
            for take in range(per_fold):
                src = 1000 + 10 * target + fold
                fname = f"{fold}-{src}-{'ABCDE'[take]}-{target}.wav"
                t = np.arange(int(sr * seconds)) / sr
                x = 0.3 * np.sin(
                    2 * np.pi * (200 + 150 * (target % 7)) * t
                ) + 0.01 * rng.standard_normal(len(t))
                (root / "audio").mkdir(parents=True, exist_ok=True)
                sf.write(root / "audio" / fname, x.astype(np.float32), sr)
                rows.append(f"{fname},{fold},{target},{name},True,{src},{'ABCDE'[take]}")
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def esc50_root(tmp_path_factory) -> Path:
    return make_esc50_tree(tmp_path_factory.mktemp("esc50"))


# ---------------------------------------------------------------------------------------------
# A checkpoint as `audio-cls fit` writes it, for the verbs that read one (classify, serve, ...).


def save_tiny_checkpoint(
    path: Path, class_names: list[str], window_sec: float = 0.5, hop_sec: float = 0.25
) -> Path:
    """A tiny MelCNN (random weights, seed 0) saved with the window settings of a data module."""
    import lightning as L
    import torch

    from audio_cls.models import create_model

    torch.manual_seed(0)
    model = create_model("mel_cnn", len(class_names), channels=[4, 8, 8], class_names=class_names)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["audio_cls"]["segments"] = {
        "sample_rate": model.sample_rate,
        "window_sec": window_sec,
        "hop_sec": hop_sec,
    }
    torch.save(checkpoint, path)
    return path
