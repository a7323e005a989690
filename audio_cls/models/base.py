"""``AudioClassifier``: the LightningModule every architecture family subclasses.

A model is three components, each from ``audio_cls.nn``: a front end (waveform -> features,
its settings saved with the checkpoint and compared on load), a backbone (features ->
unpooled features) and a head (pooling + classifier). The base class owns what all families
share: the loss (cross-entropy with label smoothing, soft targets, distillation at a
temperature, per-clip weights, a consistency term between two augmented views), segment metrics
per stage, optimiser parameter groups and the schedule, pretrained weights, and the checkpoint
contract.

A family is a thin subclass that names its parts::

    @register_model("mamba", tiny={"d_model": 16})
    class MambaClassifier(AudioClassifier):
        backbone_cls = MambaEncoder
        default_frontend = LogMelSettings(n_mels=128, n_fft=1024, win_ms=64.0, hop_ms=32.0)
        default_pooling = "mean"

Its ``__init__`` signature is composed once, when the class is created, from the base options,
the front-end settings type and the backbone's own signature (everything after its first
parameter, the input channels). So every hyper-parameter is written once, where it is used,
and ``audio-cls fit --model.help MambaClassifier`` still documents every option. A family that
needs options of its own defines ``__init__(self, num_classes, <its options>, **kwargs)`` and
passes ``**kwargs`` on to ``super().__init__``; they join the composed signature.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import logging
import math
import pickle
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

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

from audio_cls.inference import TimeShiftTTA, window_probs
from audio_cls.nn.frontends import (
    FrontendSettings,
    LogMelSettings,
    frontend_from_dict,
    settings_mismatch,
)
from audio_cls.nn.heads import ClassifierHead, MultiTapHead, Pooling
from audio_cls.nn.optim import param_groups

__all__ = [
    "CHECKPOINT_FORMAT",
    "AudioClassifier",
    "CheckpointMismatchError",
    "NonFiniteError",
    "consistency_loss",
    "distillation_loss",
    "load_classifier",
]

log = logging.getLogger(__name__)

#: Key of the audio-cls section inside a Lightning checkpoint.
CKPT_KEY = "audio_cls"
#: Layout of that section and of the state dict; 1 was the contract before front ends and heads
#: became components (``model_class`` path, pooling inside backbones).
CHECKPOINT_FORMAT = 2
#: Stages with labels and segment metrics.
STAGES = ("train", "val", "test")


class CheckpointMismatchError(ValueError):
    """A checkpoint's front end, classes or format do not fit the current set-up."""


class NonFiniteError(ArithmeticError):
    """The loss or the model's output stopped being finite; the message names the clips."""


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
        sample_rate: Waveform rate the data delivers (linked from the data module).
        frontend: Front-end settings; unset fields keep the family's defaults.
        pooling: How the head pools the backbone's features: ``mean``, ``max``, ``meanmax``,
            ``attention`` (learned queries) or ``attentive`` (V-JEPA2's pooler).
        pool_heads: Heads of attention pooling (None: the backbone's attention heads, or 1).
        pool_layers: Self-attention layers of attentive pooling.
        embed_dim: Project the pooled features to this width before the classifier (the
            embedding that ``embed`` returns); None: no projection.
        normalize_embedding: Scale the embedding to unit L2 norm (as AudioCLIP's audio branch).
        taps: One head per named backbone tap (e.g. SoundNet's ``[pool5, conv6, conv7]``),
            trained with the losses summed; None: one head on the backbone's output.
        tap_combine: With ``taps``: ``mean`` of the heads' probabilities (the embedding
            concatenates theirs), or the name of the one tap whose head predicts and embeds.
        head_dropout: Dropout before the classifier layer.
        label_smoothing: Cross-entropy label smoothing (hard labels, and soft ones with
            ``soft_loss: ce``).
        soft_loss: Loss on soft targets (``batch["soft"]``: a soft-label manifest, a teacher's
            labels, mixup): ``ce``, soft cross-entropy; ``kl``, distillation,
            ``T^2 * KL(q_T || p_T)`` with both distributions at ``distill_temperature`` T (the
            targets re-tempered as ``q^(1/T)`` renormalised, which is the softmax of a
            teacher's logits over T). Hard-labelled clips in a soft batch are one-hot rows, so
            with ``kl`` they get ``T^2`` times cross-entropy at T. Batches without soft
            targets always use cross-entropy.
        distill_temperature: The temperature T of ``soft_loss: kl`` (1: plain KL).
        consistency_weight: Weight of a consistency term between the predictions on two
            independently augmented views of the same windows (the data module's
            ``second_view``, on by itself with its ``unlabelled`` audio): the first view's
            probabilities, without gradient, are the target of the second's. It is the one
            loss that unlabelled clips (target -1) contribute. 0: off (no second forward pass).
        consistency_loss: ``kl``: ``KL(p_1 || p_2)``; ``mse``: squared distance between the two
            probability vectors (summed over classes).
        lr: Peak learning rate of the head (and of the rest unless ``backbone_lr`` is set).
        backbone_lr: Learning rate of front end and backbone (None: ``lr``).
        weight_decay: AdamW decay; never applied to norms, biases and SSM parameters.
        warmup_epochs: Linear warm-up length before the cosine decay.
        schedule: ``cosine`` (warm-up then cosine to zero over the run) or ``constant``.
        pretrained: Published weights to start from when fitting: a tag of this family
            (``audio-cls models --pretrained``), a local file or folder, a hub name or a URL.
        pretrained_prefixes: Load only our parameters under these prefixes (e.g.
            ``[head.pool]`` for V-JEPA2's attentive pooler alone); None: all the weights cover.

    Per-clip weights: a batch may carry ``weight`` (B,) (the data module's ``extra_weight`` for
    teacher-labelled clips, 1 for the rest); each clip's supervised and consistency losses are
    multiplied by it, the supervised one averaged over the batch's labelled clips and the
    consistency one over all its clips. Without ``weight``, ``soft_loss: ce`` and no
    consistency term, the loss is the plain mean cross-entropy, as before these options.
    """

    registry_name: ClassVar[str] = ""
    #: The backbone: ``backbone_cls(in_channels, **options)``, returning unpooled features and
    #: exposing ``num_features`` and ``layout`` (:data:`audio_cls.nn.heads.FeatureLayout`).
    backbone_cls: ClassVar[type[nn.Module] | None] = None
    #: The front end a family was designed for; a config overrides single fields.
    default_frontend: ClassVar[FrontendSettings] = LogMelSettings()
    default_pooling: ClassVar[Pooling] = "mean"
    #: Defaults of other options (the base's or the backbone's) for this family.
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.backbone_cls is not None:
            _compose_init(cls)

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        sample_rate: int | None = None,
        frontend: FrontendSettings | dict[str, Any] | None = None,
        pooling: Pooling | None = None,
        pool_heads: int | None = None,
        pool_layers: int = 1,
        embed_dim: int | None = None,
        normalize_embedding: bool = False,
        taps: list[str] | None = None,
        tap_combine: str = "mean",
        head_dropout: float = 0.2,
        label_smoothing: float = 0.1,
        soft_loss: Literal["ce", "kl"] = "ce",
        distill_temperature: float = 1.0,
        consistency_weight: float = 0.0,
        consistency_loss: Literal["kl", "mse"] = "kl",
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 1e-2,
        warmup_epochs: float = 1.0,
        schedule: Literal["cosine", "constant"] = "cosine",
        pretrained: str | None = None,
        pretrained_prefixes: list[str] | None = None,
        **backbone_options: Any,
    ) -> None:
        super().__init__()
        cls = type(self)
        if cls.backbone_cls is None:
            raise TypeError(
                f"{cls.__name__} names no backbone_cls; build a registered family "
                f"(audio-cls models lists them)"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}"
            )
        if not distill_temperature > 0:
            raise ValueError(f"--model.distill_temperature must be > 0, got {distill_temperature}")
        if not consistency_weight >= 0:
            raise ValueError(f"--model.consistency_weight must be >= 0, got {consistency_weight}")
        settings = self._frontend_settings(frontend)
        pooling = pooling or cls.default_pooling
        self.num_classes = num_classes
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        self.frontend = settings.build(settings.resolve_rate(sample_rate))
        self.backbone = cls.backbone_cls(self.frontend.output.channels, **backbone_options)
        head_options = {
            "pooling": pooling,
            "layout": self.backbone.layout,
            "dropout": head_dropout,
            "pool_heads": pool_heads or getattr(self.backbone, "num_heads", 1),
            "pool_layers": pool_layers,
            "embed_dim": embed_dim,
            "normalize_embedding": normalize_embedding,
        }
        self.taps = list(taps or [])
        self.head: ClassifierHead | MultiTapHead
        if self.taps:
            widths = getattr(self.backbone, "tap_features", {})
            unknown = [t for t in self.taps if t not in widths]
            if unknown:
                has = ", ".join(widths) or "none: it offers no taps for heads"
                raise ValueError(
                    f"--model.taps {unknown}: {type(self.backbone).__name__} has taps {has}"
                )
            self.head = MultiTapHead(
                {t: widths[t] for t in self.taps}, num_classes, tap_combine, **head_options
            )
        else:
            self.head = ClassifierHead(self.backbone.num_features, num_classes, **head_options)
        # ModuleDict keys cannot be "train" (nn.Module.train), hence the suffix
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": segment_metrics(num_classes) for stage in STAGES}
        )
        self._pretrained_loaded = False
        if pretrained:
            from audio_cls.models.registry import resolve_pretrained

            # refuse a front-end mismatch now, not after a download (a path is checked once
            # read: it may be another run of ours, with its own front end)
            config = resolve_pretrained(self, pretrained)
            if config.tag:
                config.check_frontend(self)

    def _save_options(self, options: dict[str, Any]) -> None:
        """Record the options as hyper-parameters (checkpoints, loggers, ``load_classifier``),
        with the front end and pooling as resolved: plain values, since checkpoints are read
        with ``weights_only=True``."""
        # without "kind": the family's settings type is the schema (the checkpoint section has it)
        options = {**options, "frontend": dataclasses.asdict(self.frontend.settings)}
        options["pooling"] = self.head.pool.kind
        # LightningCLI rebuilds the model of a --ckpt_path from this (load_classifier ignores it)
        options["_class_path"] = f"{type(self).__module__}.{type(self).__qualname__}"
        self.save_hyperparameters(options)

    def _frontend_settings(
        self, given: FrontendSettings | dict[str, Any] | None
    ) -> FrontendSettings:
        default = type(self).default_frontend
        if given is None:
            return default
        if isinstance(given, FrontendSettings):
            return given
        return frontend_from_dict(given, default)

    # ------------------------------------------------------------------ model contract
    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def num_features(self) -> int:
        """Width of :meth:`embed`'s output."""
        return self.head.num_features

    def forward_features(self, waveform: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Waveform ``(B, T)`` -> the backbone's unpooled features (with ``taps``: each tap's,
        by name)."""
        if waveform.ndim != 2:
            raise ValueError(f"expected a waveform batch (B, T), got shape {tuple(waveform.shape)}")
        features = self.frontend(waveform)
        if self.taps:
            taps = self.backbone.forward_intermediates(features)
            return {name: taps[name] for name in self.taps}
        return self.backbone(features)

    def forward_head(
        self, features: torch.Tensor | dict[str, torch.Tensor], pre_logits: bool = False
    ) -> torch.Tensor:
        """Unpooled features -> logits ``(B, C)``, or the embedding ``(B, D)`` with ``pre_logits``."""
        return self.head(features, pre_logits=pre_logits)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform ``(B, T)`` -> logits ``(B, C)``."""
        return self.forward_head(self.forward_features(waveform))

    def forward_intermediates(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named taps: ``frontend`` features, the backbone's own taps, and ``embedding``."""
        feats = self.frontend(waveform)
        taps = {"frontend": feats}
        if hasattr(self.backbone, "forward_intermediates"):
            taps.update(self.backbone.forward_intermediates(feats))
            last = taps[next(reversed(taps))]
        else:
            last = taps["features"] = self.backbone(feats)
        head_input = {name: taps[name] for name in self.taps} if self.taps else last
        taps["embedding"] = self.head(head_input, pre_logits=True)
        return taps

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """Pre-logit embedding ``(B, num_features)``, in eval mode whatever mode the model is in."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.forward_head(self.forward_features(waveform), pre_logits=True)
        finally:
            self.train(was_training)

    def reset_classifier(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """A new classifier layer (and metrics) for ``num_classes`` classes."""
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.head.reset(num_classes)
        self.num_classes = num_classes
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        self.hparams["num_classes"], self.hparams["class_names"] = num_classes, class_names
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": segment_metrics(num_classes) for stage in STAGES}
        ).to(self.device)

    def predict_proba(
        self, waveform: torch.Tensor, tta: TimeShiftTTA | None = None
    ) -> torch.Tensor:
        """Class probabilities ``(B, C)``, averaged over time-shifted copies with ``tta``."""
        return window_probs(self, waveform, tta)

    # ------------------------------------------------------------------ pretrained weights
    def load_pretrained(self, source: str | None = None) -> list[str]:
        """Load published weights (``source`` or the ``pretrained`` option); our loaded keys."""
        from audio_cls.models.registry import resolve_pretrained

        config = resolve_pretrained(self, source or self.hparams.pretrained)
        loaded = config.load_into(self, prefixes=self.hparams.pretrained_prefixes)
        self._pretrained_loaded = True
        return loaded

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        consistency = hp.consistency_weight
        waveform = batch["waveform"]
        n = len(waveform)
        if consistency > 0:
            if "view" not in batch:
                raise ValueError(
                    "--model.consistency_weight needs a second augmented view of each training "
                    "window: set --data.second_view true (with --data.augment), or give "
                    "--data.unlabelled"
                )
            # one pass over both views: BatchNorm sees them together, as one batch
            waveform = torch.cat([waveform, batch["view"]])
        features = self.forward_features(waveform)
        if isinstance(self.head, MultiTapHead):  # one loss per head, summed
            heads = self.head.head_logits(features)
        else:
            heads = {"": self.forward_head(features)}
        loss = sum(self._supervised_loss(x[:n], batch) for x in heads.values())
        if consistency > 0:
            kind = hp.consistency_loss
            term = sum(
                _weighted_mean(consistency_loss(x[:n], x[n:], kind), batch.get("weight"))
                for x in heads.values()
            )
            self.log("train/consistency_loss", term, on_step=False, on_epoch=True, batch_size=n)
            loss = loss + consistency * term
        first = {name: x[:n] for name, x in heads.items()}
        logits = self.head.combine_logits(first) if "" not in first else first[""]
        regularization = self.frontend.regularization_loss()
        if regularization is not None:  # e.g. FBSP's filter-norm loss
            self.log("train/frontend_loss", regularization, on_step=False, on_epoch=True)
            loss = loss + regularization
        if not torch.isfinite(loss):
            self._refuse_non_finite(
                "train", batch, logits, f"the training loss became {loss.item()}"
            )
        target = batch["soft"] if "soft" in batch else batch["target"]
        hard = target.argmax(-1) if target.ndim == 2 else target
        labelled = batch["target"] >= 0  # unlabelled clips have no metrics either
        if labelled.any():
            self.metrics["train_metrics"].update(logits.detach()[labelled], hard[labelled])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        return loss

    def _supervised_loss(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The batch's label loss of one head's logits ``(B, C)`` (see the class docstring)."""
        hp = self.hparams
        smoothing = hp.label_smoothing
        soft_loss = hp.soft_loss
        soft = batch.get("soft")
        weight = batch.get("weight")
        consistency = hp.consistency_weight > 0
        if weight is None and not consistency and (soft is None or soft_loss == "ce"):
            # the loss of runs before per-clip weights, term for term
            target = soft if soft is not None else batch["target"]
            return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
        labelled = batch["target"] >= 0
        if soft is not None and soft_loss == "kl":
            per_clip = distillation_loss(logits, soft, hp.distill_temperature)
        else:
            target = soft if soft is not None else batch["target"].clamp_min(0)
            per_clip = F.cross_entropy(
                logits.float(), target, label_smoothing=smoothing, reduction="none"
            )
        warned = getattr(self, "_warned_unlabelled", False)
        if not (warned or consistency or bool(labelled.all())):
            log.warning(
                "training batches hold unlabelled clips but --model.consistency_weight is 0: "
                "they take no part in the loss"
            )
            self._warned_unlabelled = True
        return _weighted_mean(per_clip, weight, labelled)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # after accumulation and AMP unscaling, so the front end sees the step's true gradients
        self.frontend.condition_gradients()

    def _stage_tta(self, stage: str) -> TimeShiftTTA | None:
        """The TTA of this stage, from the callback that configures it (no state is set here)."""
        for callback in self.trainer.callbacks if self._trainer else []:
            if hasattr(callback, "tta_for"):
                return callback.tta_for(stage)
        return None

    def _refuse_non_finite(
        self, stage: str, batch: dict[str, torch.Tensor], output: torch.Tensor, what: str
    ) -> None:
        """Stop the run, naming the clips whose output is not finite (or saying that the
        weights themselves are not), instead of training or scoring on NaN."""
        weights_ok = all(torch.isfinite(p).all() for p in self.parameters())
        bad = ~torch.isfinite(output.detach().float()).all(dim=-1)
        if weights_ok and self.training:
            # BatchNorm mixes the batch in training, so one huge clip spoils every row (and the
            # running statistics): find the culprits one clip at a time, on a copy
            probe = copy.deepcopy(self)
            with torch.no_grad(), contextlib.suppress(ValueError):  # a layer that needs B > 1
                bad = torch.tensor(
                    [not torch.isfinite(probe(w[None])).all() for w in batch["waveform"]]
                )
        clips = batch["clip_index"][bad].unique().tolist()
        names = [str(i) for i in clips]
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "segments"):
            split = datamodule.segments(stage)  # the documented window/clip lookup
            names = [str(split.clips[i].path) for i in clips]
        if not weights_ok:
            cause = "the model's weights are no longer finite: lower --model.lr or use gradient clipping (--trainer.gradient_clip_val 1.0)"
        elif names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            cause = f"the output is not finite for {shown}: check those files (huge or corrupt samples) and remove them"
        else:
            cause = (
                "every output is finite but the loss is not: check the soft labels of this batch"
            )
        raise NonFiniteError(f"{what} ({stage}, epoch {self.current_epoch}); {cause}")

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        probs = self.predict_proba(batch["waveform"], self._stage_tta(stage))
        if not torch.isfinite(probs).all():
            self._refuse_non_finite(stage, batch, probs, "the model's probabilities are not finite")
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
        """Everything trained at ``backbone_lr``: front end and backbone."""
        return [self.frontend, self.backbone]

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
        trainer = self.trainer if self._trainer else None
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            mine: dict[str, Any] = {"sample_rate": self.sample_rate}
            theirs: dict[str, Any] = {"sample_rate": datamodule.sample_rate}
            if stage != "predict":  # prediction needs no labels, only the rate
                mine["num_classes"], theirs["num_classes"] = (
                    self.num_classes,
                    datamodule.num_classes,
                )
            if mine != theirs:
                raise CheckpointMismatchError(
                    f"the model expects {mine} but the data module delivers {theirs}; set "
                    f"--data.sample_rate / the dataset to match, or train a new model"
                )
        # At fit setup, so a resumed run's checkpoint (restored after setup) wins, and
        # rebuilding a trained model for test/predict/classify never fetches anything.
        resuming = trainer is not None and trainer.ckpt_path is not None
        if stage == "fit" and self.hparams.pretrained and not (resuming or self._pretrained_loaded):
            self.load_pretrained()

    def checkpoint_section(self) -> dict[str, Any]:
        """What a checkpoint records beside the weights (see :func:`load_classifier`)."""
        return {
            "format_version": CHECKPOINT_FORMAT,
            "model": self.registry_name,
            "frontend": self.frontend.settings.to_dict(),
            # what the backbone sees: for readers of checkpoints (server info, exporters)
            "features": dataclasses.asdict(self.frontend.output),
            "class_names": self.class_names,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        section = self.checkpoint_section()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "segment_settings"):
            section["segments"] = datamodule.segment_settings
        checkpoint[CKPT_KEY] = section

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        section = checkpoint.get(CKPT_KEY)
        if section is None:
            return
        _check_format(section, "this checkpoint")
        theirs = frontend_from_dict(section["frontend"], self.frontend.settings).contract()
        diff = settings_mismatch(theirs, self.frontend.settings.contract())
        if diff:
            said = ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
            raise CheckpointMismatchError(
                f"this checkpoint's front end differs from the configured one ({said}); "
                f"configure the model (and --data.sample_rate) as it was trained"
            )


# ---------------------------------------------------------------------- losses
def distillation_loss(
    logits: torch.Tensor, soft: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Knowledge distillation per row: ``T^2 * KL(q_T || softmax(logits / T))`` ``(B,)``.

    Args:
        logits: The student's logits ``(B, C)``.
        soft: Target probabilities ``(B, C)``; re-tempered as ``q^(1/T)`` renormalised, which
            for a teacher's softmax output is the softmax of its logits over T. An all-zero row
            (an unlabelled clip) gives 0.
        temperature: T; the ``T^2`` factor keeps the gradients' scale as T changes (Hinton et
            al., 2015).
    """
    t = float(temperature)
    q = soft.float().clamp_min(0)
    if t != 1.0:
        q = q.pow(1.0 / t)
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
    log_p = F.log_softmax(logits.float() / t, dim=-1)
    # kl_div takes 0 * log 0 as 0, so classes a target rules out cost nothing
    return t * t * F.kl_div(log_p, q, reduction="none").sum(-1)


def consistency_loss(
    logits: torch.Tensor, other: torch.Tensor, kind: Literal["kl", "mse"] = "kl"
) -> torch.Tensor:
    """How far the predictions on a second view stray from those on the first, per row ``(B,)``.

    The first view's probabilities are the target, without gradient (a Pi-model without a
    mean teacher), so the term pulls the second view towards the first, never both together
    towards a constant.

    Args:
        logits: Logits ``(B, C)`` of the first view (the target).
        other: Logits ``(B, C)`` of the second view.
        kind: ``kl``: ``KL(p_1 || p_2)``; ``mse``: squared distance of the probability vectors.
    """
    target = logits.detach().float().softmax(-1)
    if kind == "mse":
        return (other.float().softmax(-1) - target).square().sum(-1)
    if kind != "kl":
        raise ValueError(f"--model.consistency_loss must be kl or mse, got {kind!r}")
    return F.kl_div(F.log_softmax(other.float(), dim=-1), target, reduction="none").sum(-1)


def _weighted_mean(
    per_row: torch.Tensor, weight: torch.Tensor | None, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum(weight * loss)`` over the ``rows`` (mask; None: all) divided by their count (0 when
    there are none, still part of the graph)."""
    if weight is not None:
        per_row = per_row * weight.to(per_row.dtype)
    if rows is None:
        return per_row.mean()
    per_row = torch.where(rows, per_row, torch.zeros_like(per_row))
    return per_row.sum() / rows.sum().clamp_min(1)


# ---------------------------------------------------------------------- signature composition
def _doc_params(obj: Any) -> dict[str, str]:
    """``{parameter: description}`` from a Google-style docstring."""
    import docstring_parser

    return {
        p.arg_name: p.description or "" for p in docstring_parser.parse(obj.__doc__ or "").params
    }


def _resolved_parameters(function: Any) -> dict[str, inspect.Parameter]:
    """A function's parameters with their annotations evaluated (modules here postpone them),
    so that the composed signature carries real types for jsonargparse to check."""
    hints = typing.get_type_hints(function)
    return {
        name: p.replace(annotation=hints.get(name, p.annotation))
        for name, p in inspect.signature(function).parameters.items()
    }


def _compose_init(cls: type[AudioClassifier]) -> None:
    """Give a family an ``__init__`` whose signature and docstring list every option.

    Order: ``num_classes``, the data links, ``frontend`` (typed and defaulted by the family),
    the family's own options, the backbone's options, then the head, loss and optimiser options
    of the base. Everything after ``num_classes`` is keyword-only.
    """
    base = _resolved_parameters(AudioClassifier.__init__)
    own_init = cls.__dict__.get("__init__")
    if getattr(own_init, "_composed", False):
        own_init = None
    own = (
        [
            p
            for name, p in _resolved_parameters(own_init).items()
            if name not in ("self", "num_classes") and p.kind is not p.VAR_KEYWORD
        ]
        if own_init
        else []
    )
    backbone = list(_resolved_parameters(cls.backbone_cls.__init__).values())[2:]
    backbone = [p for p in backbone if p.kind is not p.VAR_KEYWORD]
    keyword = inspect.Parameter.KEYWORD_ONLY
    leading = ("class_names", "sample_rate", "frontend")
    head = [
        base["class_names"],
        base["sample_rate"],
        base["frontend"].replace(
            annotation=type(cls.default_frontend) | None, default=cls.default_frontend
        ),
    ]
    tail = [
        p.replace(default=cls.default_pooling) if p.name == "pooling" else p
        for name, p in base.items()
        if name not in ("self", "num_classes", *leading) and p.kind is not p.VAR_KEYWORD
    ]
    params = [p.replace(kind=keyword) for p in head + own + backbone + tail]
    names = [p.name for p in params]
    unknown = sorted(set(cls.option_defaults) - set(names))
    if unknown:
        raise TypeError(f"{cls.__name__}.option_defaults names unknown option(s) {unknown}")
    params = [
        p.replace(default=cls.option_defaults[p.name]) if p.name in cls.option_defaults else p
        for p in params
    ]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise TypeError(f"{cls.__name__}: option(s) {clash} are declared twice")
    signature = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            base["num_classes"],
            *params,
        ]
    )
    docs = {
        **_doc_params(AudioClassifier),
        **_doc_params(cls.backbone_cls),
        **(_doc_params(own_init) if own_init else {}),
        "frontend": f"Front-end settings; unset fields keep the family's defaults (shown "
        f"below; each is described by --model.frontend.help "
        f"{type(cls.default_frontend).__name__}).",
    }
    summary = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    lines = [summary, "", "Args:"] + [
        f"    {p.name}: {' '.join(docs.get(p.name, '').split())}"
        for p in signature.parameters.values()
        if p.name != "self"
    ]
    target = own_init

    def __init__(self: AudioClassifier, num_classes: int, **options: Any) -> None:
        try:
            bound = signature.bind(self, num_classes, **options)
        except TypeError as err:  # an option no part of the family takes
            raise TypeError(f"{cls.__name__}: {err}") from None
        bound.apply_defaults()
        # every option as the family's signature resolves it, so its defaults are the ones used
        resolved = {k: v for k, v in bound.arguments.items() if k not in ("self", "num_classes")}
        if target is not None:
            target(self, num_classes, **resolved)
        else:
            super(cls, self).__init__(num_classes, **resolved)
        # Saved here, from the composed signature, rather than by Lightning's inspection of
        # the calling frames, which expects each frame's locals to match its class's
        # signature (a family's own ``__init__`` has fewer).
        if type(self) is cls:
            self._save_options({k: v for k, v in bound.arguments.items() if k != "self"})

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__doc__ = "\n".join(lines)
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    __init__._composed = True  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]


# ---------------------------------------------------------------------- loading
def _check_format(section: dict[str, Any], what: str) -> None:
    version = section.get("format_version", 1)
    if version != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{what} has checkpoint format {version} (written by an audio-cls before the model "
            f"contract v2, when front ends and pooling lived elsewhere); this version reads "
            f"format {CHECKPOINT_FORMAT}: retrain it with `audio-cls fit`"
        )


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[AudioClassifier, dict[str, Any]]:
    """Load any registered architecture from an ``audio-cls fit`` checkpoint.

    The file is read with ``weights_only=True`` and the class is found by its registry name, so
    a checkpoint cannot run code.

    Returns:
        The model in eval mode and the checkpoint's audio-cls section (front end, class names,
        segment settings).

    Raises:
        CheckpointMismatchError: The file is missing, unreadable, not an audio-cls checkpoint,
            of another format, or of an unknown family; the message names the file.
    """
    from audio_cls.models.registry import get_model_entry

    path = Path(path)
    if path.is_dir():
        raise CheckpointMismatchError(f"{path}: is a folder; pass the .ckpt file inside it")
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt, not a torch file, or holds code
        text = str(err).strip()
        if isinstance(err, pickle.UnpicklingError) or "weights only" in text.lower():
            # torch's own text goes on to suggest turning the safety off: never pass that on
            reason = "not a PyTorch checkpoint, or it holds objects other than tensors"
        else:
            reason = text.splitlines()[0][:160] if text else type(err).__name__
        raise CheckpointMismatchError(
            f"{path}: not a readable audio-cls checkpoint ({reason}); use a .ckpt written by "
            f"`audio-cls fit` (a file that holds code or other objects is refused for safety)"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or CKPT_KEY not in checkpoint
        or "state_dict" not in checkpoint
    ):
        raise CheckpointMismatchError(
            f"{path}: not an audio-cls checkpoint (no '{CKPT_KEY}' section); "
            f"use a .ckpt written by `audio-cls fit`"
        )
    section = checkpoint[CKPT_KEY]
    _check_format(section, str(path))
    try:
        cls = get_model_entry(section["model"]).cls
    except KeyError as err:
        raise CheckpointMismatchError(f"{path}: {err.args[0]}") from None
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    hparams["frontend"] = section["frontend"]
    hparams["pretrained"] = None  # the checkpoint holds every weight already
    model = cls(**hparams)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), section
