"""``AudioClassifier``: the LightningModule every architecture family subclasses.

It owns what all families share: the log-mel front end (fp32, on the model's device), feature
normalisation, SpecAugment, the loss (cross-entropy with label smoothing, soft targets), segment
metrics per stage, optimiser parameter groups and the schedule, and the checkpoint contract
(front-end and segment settings saved, and checked against the data on load).

A family subclasses it with a typed ``__init__`` that builds ``self.backbone`` (features
``(B, F, T)`` -> embedding ``(B, D)``, with an ``embed_dim`` attribute) and calls
``self.build_head()``. Extra base settings pass through ``**kwargs``, so
``audio-cls fit --model.help <Family>`` lists every option.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from audio_cls.nn.frontend import FRONTEND_KEYS, LogMel, frontend_settings_mismatch
from audio_cls.nn.heads import ClassifierHead
from audio_cls.nn.optim import param_groups
from audio_cls.nn.specaugment import SpecAugment

__all__ = ["AudioClassifier", "CheckpointMismatchError", "load_classifier"]

#: Key of the audio-cls section inside a Lightning checkpoint.
CKPT_KEY = "audio_cls"
#: Stages with labels and segment metrics.
STAGES = ("train", "val", "test")


class CheckpointMismatchError(ValueError):
    """A checkpoint's front end, classes or segment settings do not fit the current data."""


def segment_metrics(num_classes: int) -> MetricCollection:
    """Segment-level metrics logged at every stage."""
    kw = {"num_classes": num_classes, "validate_args": False}
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(average="micro", **kw),
            "macro_f1": MulticlassF1Score(average="macro", **kw),
            "precision": MulticlassPrecision(average="macro", **kw),
            "recall": MulticlassRecall(average="macro", **kw),
        }
    )


class AudioClassifier(L.LightningModule):
    """Front end + backbone + head, with loss, metrics and optimiser.

    Args:
        num_classes: Output classes (linked from the data module by the CLI).
        class_names: Names of the classes, saved with the checkpoint for prediction.
        sample_rate: Waveform rate the front end expects (linked from the data module).
        n_mels: Mel bins of the front end.
        n_fft: FFT size of the front end.
        win_ms: Front-end window in milliseconds.
        hop_ms: Front-end hop in milliseconds.
        f_min: Lowest mel frequency.
        f_max: Highest mel frequency (None: Nyquist).
        freq_mask: SpecAugment's widest frequency mask in bins (0: off).
        time_mask: SpecAugment's widest time mask in frames (0: off).
        label_smoothing: Cross-entropy label smoothing.
        head_dropout: Dropout before the classifier layer.
        lr: Peak learning rate of the head (and of the backbone unless ``backbone_lr`` is set).
        backbone_lr: Learning rate of front-end normalisation and backbone (None: ``lr``).
        weight_decay: AdamW decay; never applied to norms, biases and SSM parameters.
        warmup_epochs: Linear warm-up length before the cosine decay.
        schedule: ``cosine`` (warm-up then cosine to zero over the run) or ``constant``.
    """

    registry_name: str = ""

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        sample_rate: int = 16000,
        n_mels: int = 64,
        n_fft: int = 512,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        f_min: float = 20.0,
        f_max: float | None = None,
        freq_mask: int = 8,
        time_mask: int = 16,
        label_smoothing: float = 0.1,
        head_dropout: float = 0.2,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 1e-2,
        warmup_epochs: float = 1.0,
        schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}"
            )
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        self.frontend = LogMel(sample_rate, n_mels, n_fft, win_ms, hop_ms, f_min, f_max)
        self.feature_norm = nn.BatchNorm1d(n_mels)  # learned per-mel-bin scaling of log energies
        self.spec_augment = SpecAugment(freq_mask, time_mask)
        self.backbone: nn.Module
        self.head: nn.Module
        # ModuleDict keys cannot be "train" (nn.Module.train), hence the suffix
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": segment_metrics(num_classes) for stage in STAGES}
        )
        #: Time-shifted copies averaged at test/predict; set by the ``TTAShift`` callback.
        self.tta_shifts: int = 1
        self.tta_max_shift: float = 0.1

    # ------------------------------------------------------------------ model contract
    def build_head(self) -> None:
        """Attach the classifier head once ``self.backbone`` exists."""
        self.head = ClassifierHead(
            self.backbone.embed_dim, self.num_classes, self.hparams.head_dropout
        )

    @property
    def frontend_settings(self) -> dict[str, Any]:
        return {k: self.hparams[k] for k in FRONTEND_KEYS}

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform ``(B, T)`` -> normalised log-mel ``(B, F, frames)`` (SpecAugment when training)."""
        if waveform.ndim != 2:
            raise ValueError(f"expected a waveform batch (B, T), got shape {tuple(waveform.shape)}")
        x = self.feature_norm(self.frontend(waveform))
        return self.spec_augment(x)

    def forward_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform ``(B, T)`` -> embedding ``(B, D)``."""
        return self.backbone(self.features(waveform))

    def forward_head(self, embedding: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return embedding if pre_logits else self.head(embedding)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform ``(B, T)`` -> logits ``(B, C)``."""
        return self.forward_head(self.forward_features(waveform))

    @torch.no_grad()
    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """Pre-logit embedding ``(B, D)`` (for LightGBM, retrieval, ``audio-cls embed``)."""
        return self.forward_head(self.forward_features(waveform), pre_logits=True)

    def predict_proba(self, waveform: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, C)``, averaged over ``tta_shifts`` time-shifted copies."""
        if self.tta_shifts <= 1:
            return self(waveform).float().softmax(-1)
        n = waveform.shape[-1]
        max_shift = int(self.tta_max_shift * n)
        offsets = torch.linspace(-max_shift, max_shift, self.tta_shifts).round().long().tolist()
        probs = [self(torch.roll(waveform, k, dims=-1)).float().softmax(-1) for k in offsets]
        return torch.stack(probs).mean(0)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["waveform"])
        target = batch["soft"] if "soft" in batch else batch["target"]
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.hparams.label_smoothing)
        hard = target.argmax(-1) if target.ndim == 2 else target
        self.metrics["train_metrics"].update(logits.detach(), hard)
        self.log(
            "train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(hard)
        )
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        probs = self.predict_proba(batch["waveform"])
        out = {
            "probs": probs,
            "clip_index": batch["clip_index"],
            "segment_index": batch["segment_index"],
        }
        if stage in STAGES:
            target = batch["target"]
            labelled = target >= 0
            if labelled.any():
                loss = F.nll_loss(probs[labelled].clamp_min(1e-8).log(), target[labelled])
                self.log(
                    f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=int(labelled.sum())
                )
                self.metrics[f"{stage}_metrics"].update(probs[labelled], target[labelled])
            out["target"] = target
        return out

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "predict")

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = self.metrics[f"{stage}_metrics"]
        if metrics["acc"].update_called:
            values = metrics.compute()
            self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # ------------------------------------------------------------------ optimiser
    def backbone_modules(self) -> list[nn.Module]:
        """Everything trained at ``backbone_lr``: all but the head."""
        return [m for name, m in self.named_children() if name not in ("head", "metrics")]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        backbone_lr = hp.backbone_lr if hp.backbone_lr is not None else hp.lr
        modules = [(self.head, hp.lr)] + [(m, backbone_lr) for m in self.backbone_modules()]
        optimizer = torch.optim.AdamW(param_groups(modules, hp.weight_decay))
        if hp.schedule == "constant":
            return {"optimizer": optimizer}
        total = self.trainer.estimated_stepping_batches
        max_epochs = max(self.trainer.max_epochs or 1, 1)
        if not math.isfinite(total) or total <= 0:
            return {"optimizer": optimizer}
        warmup = min(int(total * hp.warmup_epochs / max_epochs), int(total) - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ------------------------------------------------------------------ data and checkpoint contract
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is None:
            return
        mine: dict[str, Any] = {"sample_rate": self.hparams.sample_rate}
        theirs: dict[str, Any] = {"sample_rate": datamodule.sample_rate}
        if stage != "predict":  # prediction needs no labels, only the rate
            mine["num_classes"], theirs["num_classes"] = self.num_classes, datamodule.num_classes
        if mine != theirs:
            raise CheckpointMismatchError(
                f"the model expects {mine} but the data module delivers {theirs}; set "
                f"--data.sample_rate / the dataset to match, or train a new model"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        section = {
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "frontend": self.frontend_settings,
            "class_names": self.class_names,
        }
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "segment_settings"):
            section["segments"] = datamodule.segment_settings
        checkpoint[CKPT_KEY] = section

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        section = checkpoint.get(CKPT_KEY)
        if section is None:
            return
        diff = frontend_settings_mismatch(section["frontend"], self.frontend_settings)
        if diff:
            said = ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
            raise CheckpointMismatchError(
                f"this checkpoint's front end differs from the configured one ({said}); "
                f"configure the model (and --data.sample_rate) as it was trained"
            )


def _checkpoint_section(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    if CKPT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointMismatchError(
            f"{path}: not an audio-cls checkpoint (no '{CKPT_KEY}' section); "
            f"use a .ckpt written by `audio-cls fit`"
        )
    return checkpoint[CKPT_KEY]


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[AudioClassifier, dict[str, Any]]:
    """Load any registered architecture from an ``audio-cls fit`` checkpoint.

    The file is read with ``weights_only=True`` and the class must be a registered
    ``AudioClassifier``, so a checkpoint cannot run code.

    Returns:
        The model in eval mode and the checkpoint's audio-cls section (front end, class names,
        segment settings).
    """
    from audio_cls.models.registry import get_model_entry, list_models

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    section = _checkpoint_section(checkpoint, path)
    module_name, _, class_name = section["model_class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    known = {get_model_entry(n).cls for n in list_models()}
    if cls not in known:
        raise CheckpointMismatchError(
            f"{path}: model class {section['model_class']} is not a registered audio-cls model"
        )
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    model = cls(**hparams)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), section
