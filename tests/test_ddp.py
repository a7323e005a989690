"""Clip aggregation across ranks: 2-process DDP (gloo, CPU) gives the single-process numbers."""

import csv
import json

import lightning as L
import pytest
import torch

from audio_cls.callbacks import ClipAggregation, RunReport
from audio_cls.data import AudioDataModule
from audio_cls.data.sources import Synthetic
from audio_cls.models import MelCNN
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
