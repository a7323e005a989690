"""Under 2-process DDP (gloo, CPU): clip aggregation gives the single-process numbers, and a
raw-waveform family trains with ``find_unused_parameters=False`` (no dead parameters)."""

import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from audio_cls.callbacks import ClipAggregation, RunReport
from audio_cls.data import AudioDataModule
from audio_cls.data.sources import Synthetic
from audio_cls.models import AudioClassifier, MelCNN
from audio_cls.nn.frontends import WaveformFrontend, WaveformSettings
from tests.conftest import TINY_SYNTHETIC


def _test_run(root, out, **trainer_kw):
    torch.manual_seed(0)
    # 0.3 s windows, 0.2 s hop: 5 windows per clip, 45 in all, odd, so the sampler must pad
    dm = AudioDataModule(
        root=str(root),
        source=Synthetic(**TINY_SYNTHETIC),
        num_workers=0,
        window_sec=0.3,
        hop_sec=0.2,
        eval_batch_size=8,
    )
    model = MelCNN(num_classes=3, class_names=dm.class_names, channels=[4, 8, 8])
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=[ClipAggregation(), RunReport()],
        **trainer_kw,
    )
    trainer.test(model, datamodule=dm, verbose=False)
    with (out / "predictions.csv").open() as f:
        rows = {r["clip_id"]: r for r in csv.DictReader(f)}
    return json.loads((out / "metrics_test.json").read_text()), rows


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_rank_clip_metrics_equal_single_process(synthetic_root, tmp_path):
    single, single_rows = _test_run(synthetic_root, tmp_path / "single", devices=1)
    ddp, ddp_rows = _test_run(synthetic_root, tmp_path / "ddp", devices=2, strategy="ddp_spawn")
    assert single_rows.keys() == ddp_rows.keys() and len(single_rows) == 9
    for clip_id, row in single_rows.items():
        probs = [float(v) for k, v in row.items() if k.startswith("prob_")]
        other = [float(v) for k, v in ddp_rows[clip_id].items() if k.startswith("prob_")]
        assert probs == pytest.approx(other, abs=1e-5), clip_id
    for key in ("test/clip_acc", "test/clip_macro_f1"):
        assert single[key] == pytest.approx(ddp[key])


class ToyWaveNet(torch.nn.Module):
    """A strided 1-D convolution over the raw waveform: ``(B, 1, T) -> (B, L, width)``."""

    def __init__(self, in_channels: int, width: int = 8, dead: bool = False) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(in_channels, width, 64, stride=32)
        # a parameter that takes no part in the loss: what DDP must refuse
        self.dead = torch.nn.Linear(2, 2) if dead else None
        self.num_features, self.layout = width, "sequence"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).transpose(1, 2)


class ToyWaveform(AudioClassifier):
    """A raw-waveform family declared in the test file itself."""

    backbone_cls = ToyWaveNet
    default_frontend = WaveformSettings(normalize=True)
    default_pooling = "meanmax"


def _fit_two_ranks(root, **model_options):
    torch.manual_seed(0)
    dm = AudioDataModule(
        root=str(root), source=Synthetic(**TINY_SYNTHETIC), num_workers=0, batch_size=4
    )
    model = ToyWaveform(num_classes=3, class_names=dm.class_names, **model_options)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(
            process_group_backend="gloo", find_unused_parameters=False, start_method="spawn"
        ),
        max_steps=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    return model, before, trainer


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_raw_waveform_family_trains_under_ddp_without_unused_parameters(synthetic_root):
    model, before, trainer = _fit_two_ranks(synthetic_root)
    # spawned ranks hand back their weights and logged values, not their loop counters
    assert "train/loss_step" in trainer.callback_metrics
    assert isinstance(model.frontend, WaveformFrontend) and not list(model.frontend.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_refuses_a_model_with_a_dead_parameter(synthetic_root):
    """The control: the same run with one unused parameter fails at its second step."""
    with pytest.raises(Exception, match=r"(?i)reduction|unused|did not receive grad"):
        _fit_two_ranks(synthetic_root, dead=True)
