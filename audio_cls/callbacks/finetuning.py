"""Fine-tuning schedule: head-only warm-up, then the whole model; BatchNorm kept in eval.

Built on Lightning's :class:`~lightning.pytorch.callbacks.BaseFinetuning` and on the model's own
parameter groups: the optimiser holds the head at ``lr`` and the front end and backbone at
``backbone_lr`` from the first step, under the model's learning-rate warm-up and cosine decay.
The schedule only switches the backbone's gradients off for the first ``head_warmup_epochs``
and on afterwards, so no parameter group is ever added and a resumed run needs nothing of this
callback's state: the epoch number decides the phase.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["FineTuning"]


class FineTuning(BaseFinetuning):
    """Train the head alone for ``head_warmup_epochs``, then everything.

    While the backbone is frozen its BatchNorm layers run in eval mode, so that its features
    do not drift with the batches' statistics while the head learns from them. With ``bn_eval``
    they stay in eval mode for the whole run: the running statistics of a pretrained model are
    kept, which small batches of a small dataset would otherwise spoil (their scale and shift
    still train).

    Under DDP, parameters that stop receiving gradients need
    ``--trainer.strategy ddp_find_unused_parameters_true``.

    Args:
        head_warmup_epochs: Epochs of head-only training (0: the whole model from the start).
        bn_eval: Keep the front end's and backbone's BatchNorm layers in eval mode throughout.
    """

    def __init__(self, head_warmup_epochs: int = 0, bn_eval: bool = False) -> None:
        super().__init__()
        if head_warmup_epochs < 0:
            raise ValueError(
                f"--finetuning.head_warmup_epochs must be 0 or more, got {head_warmup_epochs}"
            )
        self.head_warmup_epochs = head_warmup_epochs
        self.bn_eval = bn_eval
        self._frozen: list[nn.Parameter] = []

    @staticmethod
    def _body(pl_module: L.LightningModule) -> list[nn.Module]:
        return list(pl_module.backbone_modules())

    def _batchnorms(self, pl_module: L.LightningModule) -> list[_BatchNorm]:
        return [m for b in self._body(pl_module) for m in b.modules() if isinstance(m, _BatchNorm)]

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        # Nothing here: the optimiser must see every parameter, so that the backbone's group
        # exists (at backbone_lr, under the warm-up) before the first epoch freezes it.
        pass

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: torch.optim.Optimizer
    ) -> None:
        head_only = epoch < self.head_warmup_epochs
        if head_only and not self._frozen:
            # only what trains now: parameters the model keeps frozen stay frozen afterwards
            self._frozen = [
                p for m in self._body(pl_module) for p in m.parameters() if p.requires_grad
            ]
            for p in self._frozen:
                p.requires_grad_(False)
        elif not head_only and self._frozen:
            for p in self._frozen:
                p.requires_grad_(True)
            self._frozen = []
            if not self.bn_eval:  # BatchNorm learns from the batches again
                for m in self._batchnorms(pl_module):
                    m.train(pl_module.training)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # BaseFinetuning would also record the optimiser's groups for a resume to restore; no
        # group is added here, and restoring a stale copy would undo the resumed learning rates
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # every batch: Lightning puts the model back in train mode after each validation
        if self._frozen or self.bn_eval:
            for m in self._batchnorms(pl_module):
                m.eval()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a run stopped during the head-only phase leaves a model whose parameters all train
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen = []
