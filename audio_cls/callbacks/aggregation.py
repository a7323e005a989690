"""Clip-level evaluation: window probabilities -> one prediction per clip -> clip metrics.

The arithmetic is the inference core's (:func:`audio_cls.inference.aggregate_clips`); this
callback gathers a stage's window outputs and logs clip metrics.

Under DDP the distributed sampler hands each rank a share of the windows (padding with
repeats), so a clip's windows may sit on several ranks. Every rank's outputs are gathered,
de-duplicated by segment index, and aggregated identically on every rank.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from audio_cls.inference import AGGREGATIONS, Aggregation, ClipResults, aggregate_clips

__all__ = ["ClipAggregation"]


def _gather_rows(pl_module: L.LightningModule, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a rank-local ``(n, ...)`` tensor over ranks; ``n`` may differ per rank."""
    world = pl_module.trainer.world_size
    if world == 1:
        return tensor
    n = torch.tensor([tensor.shape[0]], device=pl_module.device)
    sizes = pl_module.all_gather(n).flatten().tolist()
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = pl_module.all_gather(padded.to(pl_module.device))  # (world, max, ...)
    return torch.cat([gathered[r, : sizes[r]] for r in range(world)]).to(tensor.device)


class ClipAggregation(L.Callback):
    """Aggregate window predictions per clip and log clip metrics (``val/clip_acc``, ...).

    Args:
        method: ``mean`` of segment probabilities, ``logit_mean``, ``max`` or ``vote``.
    """

    def __init__(self, method: Aggregation = "mean") -> None:
        if method not in AGGREGATIONS:
            raise ValueError(f"unknown clip aggregation {method!r}; use {', '.join(AGGREGATIONS)}")
        self.method = method
        self._outputs: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.results: dict[str, ClipResults] = {}

    def _collect(self, stage: str, outputs: Any) -> None:
        if isinstance(outputs, dict) and "probs" in outputs:
            self._outputs.setdefault(stage, []).append(
                {k: v.detach().cpu() for k, v in outputs.items() if k != "target"}
            )

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if not trainer.sanity_checking:
            self._collect("val", outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect("test", outputs)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect("predict", outputs)

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        outputs = self._outputs.pop(stage, [])
        if trainer.sanity_checking:
            return
        segments = trainer.datamodule.segments(stage)
        num_classes = pl_module.num_classes
        if outputs:
            probs = torch.cat([o["probs"] for o in outputs]).float()
            segment_index = torch.cat([o["segment_index"] for o in outputs]).long()
        else:
            probs, segment_index = torch.zeros(0, num_classes), torch.zeros(0, dtype=torch.long)
        probs = _gather_rows(pl_module, probs).cpu()
        segment_index = _gather_rows(pl_module, segment_index).cpu()
        # the distributed sampler repeats windows to even out ranks: keep each window once
        order = torch.argsort(segment_index, stable=True)
        segment_index, probs = segment_index[order], probs[order]
        keep = torch.ones_like(segment_index, dtype=torch.bool)
        keep[1:] = segment_index[1:] != segment_index[:-1]
        segment_index, probs = segment_index[keep], probs[keep]

        windows = torch.from_numpy(segments.windows)[segment_index]
        clip_index, starts = windows[:, 0], windows[:, 1]
        num_clips = len(segments.clips)
        clip_probs = aggregate_clips(probs, clip_index, num_clips, self.method)
        targets = torch.tensor([c.label for c in segments.clips], dtype=torch.long)
        covered = torch.bincount(clip_index, minlength=num_clips) > 0
        metrics: dict[str, float] = {}
        labelled = covered & (targets >= 0)
        if stage != "predict" and labelled.any():
            preds, tgt = clip_probs[labelled], targets[labelled]
            metrics = {
                "clip_acc": multiclass_accuracy(preds, tgt, num_classes, average="micro").item(),
                "clip_macro_f1": multiclass_f1_score(
                    preds, tgt, num_classes, average="macro"
                ).item(),
            }
            for name, value in metrics.items():
                # identical on every rank after the gather: no further reduction
                pl_module.log(
                    f"{stage}/{name}", value, prog_bar=name == "clip_acc", rank_zero_only=False
                )
        self.results[stage] = ClipResults(
            clip_ids=[c.clip_id for c in segments.clips],
            paths=[str(c.path) for c in segments.clips],
            probs=clip_probs,
            targets=targets,
            segment_probs=probs,
            segment_clip_index=clip_index,
            segment_starts=starts,
            metrics=metrics,
        )

    def on_validation_epoch_end(self, trainer, pl_module):
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._finish(trainer, pl_module, "test")

    def on_predict_epoch_end(self, trainer, pl_module):
        self._finish(trainer, pl_module, "predict")
