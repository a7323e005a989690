"""The fine-tuning schedule: head-only warm-up, then the backbone at backbone_lr; BN in eval."""

import lightning as L
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from audio_cls.callbacks import FineTuning
from audio_cls.models import create_model


class Probe(L.Callback):
    """Records, at every optimiser step, which parts got gradients, each group's learning rate
    and whether the backbone's BatchNorm layers were training."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        def got_grad(module):
            return {p.grad is not None for p in module.parameters()}

        head_params = {id(p) for p in pl_module.head.parameters()}
        lrs = {
            "head" if id(group["params"][0]) in head_params else "body": group["lr"]
            for group in optimizer.param_groups
        }
        bns = [m for m in pl_module.backbone.modules() if isinstance(m, _BatchNorm)]
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "head": got_grad(pl_module.head),
                "backbone": got_grad(pl_module.backbone),
                "frontend": got_grad(pl_module.frontend),
                "lrs": lrs,
                "bn_training": {m.training for m in bns},
            }
        )


def batches(n: int = 4):
    torch.manual_seed(0)
    return [
        {
            "waveform": torch.randn(4, 8000),
            "target": torch.randint(0, 3, (4,)),
            "clip_index": torch.arange(4),
            "segment_index": torch.arange(4),
        }
        for _ in range(n)
    ]


def fit(callback: FineTuning, epochs: int = 3) -> list[dict]:
    model = create_model(
        "mel_cnn",
        3,
        channels=[4, 8, 8],
        frontend={"n_mels": 32},
        lr=1e-2,
        backbone_lr=1e-4,
        schedule="constant",
    )
    probe = Probe()
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[callback, probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, DataLoader(batches(), batch_size=None))
    assert all(p.requires_grad for p in model.parameters())  # nothing left frozen afterwards
    return probe.steps


def test_head_warmup_then_backbone_at_its_learning_rate():
    steps = fit(FineTuning(head_warmup_epochs=2, bn_eval=False))
    warmup = [s for s in steps if s["epoch"] < 2]
    after = [s for s in steps if s["epoch"] >= 2]
    assert warmup and after
    for s in warmup:
        assert s["head"] == {True} and s["backbone"] == {False} and s["frontend"] == {False}
        assert s["bn_training"] == {False}  # a frozen backbone's statistics do not drift
    for s in after:
        assert s["head"] == {True} and s["backbone"] == {True} and s["frontend"] == {True}
        assert s["bn_training"] == {True}
    # the groups exist from the first step, at their own rates, in both phases
    assert all(s["lrs"] == {"head": 1e-2, "body": 1e-4} for s in steps)


def test_bn_eval_keeps_batchnorm_statistics_for_the_whole_run():
    steps = fit(FineTuning(head_warmup_epochs=0, bn_eval=True), epochs=1)
    assert all(s["backbone"] == {True} and s["bn_training"] == {False} for s in steps)


def test_without_a_schedule_everything_trains_from_the_start():
    steps = fit(FineTuning(), epochs=1)
    assert all(s["backbone"] == {True} and s["bn_training"] == {True} for s in steps)


def test_parameters_the_model_freezes_itself_stay_frozen():
    model = create_model("mel_cnn", 3, channels=[4, 8, 8], frontend={"n_mels": 32})
    kept = model.backbone.stem[0].weight
    kept.requires_grad_(False)
    callback = FineTuning(head_warmup_epochs=1)
    callback.finetune_function(model, 0, None)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    callback.finetune_function(model, 1, None)
    assert not kept.requires_grad
    assert all(
        p.requires_grad for n, p in model.backbone.named_parameters() if n != "stem.0.weight"
    )


def test_negative_warmup_is_refused_naming_the_option():
    with pytest.raises(ValueError, match=r"--finetuning\.head_warmup_epochs"):
        FineTuning(head_warmup_epochs=-1)
