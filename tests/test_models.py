"""Every registered architecture: shapes, gradients, checkpoint round trip, front-end contract."""

import lightning as L
import pytest
import torch

from audio_cls.models import create_model, get_model_entry, list_models, load_classifier
from audio_cls.models.base import CheckpointMismatchError
from audio_cls.nn.optim import param_groups

SR = 16000


def tiny(name: str, **overrides):
    entry = get_model_entry(name)
    kwargs = {**entry.tiny, "sample_rate": SR, "n_mels": 32, **overrides}
    return create_model(name, num_classes=3, **kwargs)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    model = tiny(name).train()
    wave = torch.randn(4, SR // 2)
    logits = model(wave)
    assert logits.shape == (4, 3)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    emb = model.embed(wave)
    assert emb.shape == (4, model.backbone.embed_dim)
    assert torch.allclose(model.predict_proba(wave).sum(-1), torch.ones(4), atol=1e-5)


# the sequence families again with their conv stem (BatchNorm statistics must travel too)
CONV_STEM = {"stem": "conv", "stem_channels": [4, 4]}
ROUND_TRIPS = [(name, {}) for name in list_models()] + [
    (name, CONV_STEM) for name in ("mamba", "liquid_s4", "vjepa2")
]


@pytest.mark.parametrize(("name", "overrides"), ROUND_TRIPS)
def test_checkpoint_round_trip(name, overrides, tmp_path):
    torch.manual_seed(0)
    model = tiny(name, class_names=["a", "b", "c"], **overrides)
    model.train()(torch.randn(4, SR // 2))  # move BatchNorm statistics off their defaults
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded, section = load_classifier(path)
    assert type(loaded) is type(model)
    assert section["class_names"] == ["a", "b", "c"]
    wave = torch.randn(2, SR)
    with torch.no_grad():
        assert torch.equal(model.eval()(wave), loaded(wave))


def test_front_end_mismatch_is_refused(tmp_path):
    model = tiny("mel_cnn")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    other = tiny("mel_cnn", sample_rate=32000, n_fft=1024)
    with pytest.raises(CheckpointMismatchError, match="sample_rate: checkpoint 16000 vs now 32000"):
        other.on_load_checkpoint(checkpoint)


def test_not_an_audio_cls_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointMismatchError, match="not an audio-cls checkpoint"):
        load_classifier(tmp_path / "x.ckpt")


def test_class_names_must_match_count():
    with pytest.raises(ValueError, match="class_names has 2 names"):
        tiny("mel_cnn", class_names=["a", "b"])


def test_frontend_stays_fp32_under_autocast():
    model = tiny("mel_cnn").eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.frontend(torch.randn(2, SR // 2))
    assert feats.dtype == torch.float32


def test_param_groups_decay_and_hints():
    lin, norm = torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)
    ssm = torch.nn.Linear(4, 4)
    ssm.weight._optim = {"lr": 1e-4, "weight_decay": 0.0}
    groups = param_groups([(lin, 1e-3), (norm, 1e-3), (ssm, 1e-3)], weight_decay=0.05)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_param[id(lin.weight)] == (1e-3, 0.05)
    assert by_param[id(lin.bias)] == (1e-3, 0.0)
    assert by_param[id(norm.weight)] == (1e-3, 0.0)
    assert by_param[id(ssm.weight)] == (1e-4, 0.0)


def test_head_and_backbone_learning_rates():
    model = tiny("mel_cnn", lr=1e-2, backbone_lr=1e-4)
    model.trainer = None  # constant schedule needs no trainer
    model.hparams.schedule = "constant"
    optimizer = model.configure_optimizers()["optimizer"]
    head = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert group["lr"] == (1e-2 if id(p) in head else 1e-4)


def test_tta_shifts_average_rolled_copies():
    torch.manual_seed(0)
    model = tiny("mel_cnn").eval()
    wave = torch.randn(2, SR // 2)
    with torch.no_grad():
        plain = model.predict_proba(wave)
        model.tta_shifts, model.tta_max_shift = 3, 0.1
        shifted = model.predict_proba(wave)
        k = int(0.1 * wave.shape[-1])
        expected = torch.stack(
            [model(torch.roll(wave, s, -1)).softmax(-1) for s in (-k, 0, k)]
        ).mean(0)
    assert torch.allclose(shifted, expected, atol=1e-6)
    assert not torch.allclose(plain, shifted)
