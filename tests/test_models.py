"""The model contract, for every registered family: front end, unpooled features, head,
``reset_classifier``, ``forward_intermediates``, ``embed``, checkpoint round trip, signature."""

import inspect

import lightning as L
import pytest
import torch

from audio_cls.inference import TimeShiftTTA
from audio_cls.models import create_model, get_model_entry, list_models, load_classifier
from audio_cls.models.base import CKPT_KEY, AudioClassifier, CheckpointMismatchError
from audio_cls.nn.cnn import MelCNNBackbone
from audio_cls.nn.frontends import Frontend, LogMelSettings, WaveformSettings
from audio_cls.nn.optim import param_groups

SR = 16000


def rate(name: str) -> int:
    """The family's own rate where its front end fixes one (44.1 kHz FBSP...), else SR."""
    return get_model_entry(name).frontend.sample_rate or SR


def tiny(name: str, **overrides):
    entry = get_model_entry(name)
    frontend = {"n_mels": 32} if entry.frontend.kind == "logmel" else {}
    kwargs = {**entry.tiny, "sample_rate": rate(name), "frontend": frontend, **overrides}
    return create_model(name, num_classes=3, **kwargs)


def save(model: AudioClassifier, path) -> None:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    model = tiny(name).train()
    wave = torch.randn(4, rate(name) // 2)
    logits = model(wave)
    assert logits.shape == (4, 3)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    # every parameter takes part: no dead front-end or pooling weights (DDP needs none)
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.allclose(model.predict_proba(wave).sum(-1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_features_head_and_embedding(name):
    torch.manual_seed(0)
    model = tiny(name).train()
    wave = torch.randn(2, rate(name) // 2)
    assert isinstance(model.frontend, Frontend)
    feats = model.frontend(wave)
    assert feats.shape[:2] == (2, model.frontend.output.channels)
    unpooled = model.forward_features(wave)
    assert unpooled.ndim >= 3, "backbones return unpooled features"
    model.eval()
    with torch.no_grad():
        logits = model.forward_head(model.forward_features(wave))
        emb = model.forward_head(model.forward_features(wave), pre_logits=True)
        assert torch.allclose(logits, model(wave), atol=1e-6)
        assert torch.allclose(model.head.fc(emb), logits, atol=1e-5)
    assert emb.shape == (2, model.num_features)
    # embed() runs in eval mode whatever mode the model is in, and restores that mode
    model.train()
    assert torch.allclose(model.embed(wave), emb, atol=1e-5)
    assert model.training


@pytest.mark.parametrize("name", list_models())
def test_forward_intermediates_names_taps(name):
    torch.manual_seed(0)
    model = tiny(name).eval()
    wave = torch.randn(2, rate(name) // 2)
    with torch.no_grad():
        taps = model.forward_intermediates(wave)
        assert next(iter(taps)) == "frontend" and list(taps)[-1] == "embedding"
        assert len(taps) >= 4, "at least one inner layer besides front end, output and embedding"
        assert torch.allclose(taps["embedding"], model.embed(wave), atol=1e-5)
        last_tap = list(taps.values())[-2]
        assert torch.allclose(last_tap, model.forward_features(wave), atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_reset_classifier(name):
    model = tiny(name).eval()  # eval: a forward pass must not move BatchNorm statistics
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.reset_classifier(5, ["a", "b", "c", "d", "e"])
    assert model.num_classes == 5 and model.class_names[-1] == "e"
    assert model(torch.randn(2, rate(name) // 2)).shape == (2, 5)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


# the sequence families again with their conv stem (BatchNorm statistics must travel too)
CONV_STEM = {"stem": "conv", "stem_channels": [4, 4]}
ROUND_TRIPS = [(name, {}) for name in list_models()] + [
    (name, CONV_STEM) for name in ("mamba", "liquid_s4", "vjepa2")
]


@pytest.mark.parametrize(("name", "overrides"), ROUND_TRIPS)
def test_checkpoint_round_trip(name, overrides, tmp_path):
    torch.manual_seed(0)
    model = tiny(name, class_names=["a", "b", "c"], **overrides)
    model.train()(torch.randn(4, rate(name) // 2))  # move BatchNorm statistics off their defaults
    save(model, tmp_path / "m.ckpt")
    loaded, section = load_classifier(tmp_path / "m.ckpt")
    assert type(loaded) is type(model)
    assert section["class_names"] == ["a", "b", "c"] and section["model"] == name
    assert section["format_version"] == 2
    assert loaded.frontend.settings == model.frontend.settings
    wave = torch.randn(2, rate(name))
    with torch.no_grad():
        assert torch.equal(model.eval()(wave), loaded(wave))


@pytest.mark.parametrize("name", list_models())
def test_signature_documents_every_option_once(name):
    """The composed ``__init__`` lists base, front-end and backbone options, each once,
    with a description (what ``--model.help`` shows)."""
    cls = get_model_entry(name).cls
    params = inspect.signature(cls.__init__).parameters
    backbone = list(inspect.signature(cls.backbone_cls).parameters)[1:]
    assert set(backbone) <= set(params)
    assert {"num_classes", "frontend", "pooling", "lr", "pretrained"} <= set(params)
    assert params["frontend"].default == cls.default_frontend
    assert params["pooling"].default == cls.default_pooling
    doc = cls.__init__.__doc__
    for option in params:
        if option != "self":
            line = next(x for x in doc.splitlines() if x.strip().startswith(f"{option}:"))
            assert len(line.split(":", 1)[1].strip()) > 3, f"{name}.{option} is undocumented"


def test_front_end_mismatch_is_refused(tmp_path):
    save(tiny("mel_cnn"), tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    other = tiny("mel_cnn", sample_rate=32000, frontend={"n_mels": 40, "n_fft": 1024})
    with pytest.raises(CheckpointMismatchError) as err:
        other.on_load_checkpoint(checkpoint)
    # every differing field is named
    assert "sample_rate: checkpoint 16000 vs now 32000" in str(err.value)
    assert "n_mels: checkpoint 32 vs now 40" in str(err.value)
    assert "n_fft: checkpoint 512 vs now 1024" in str(err.value)


def test_augmentation_settings_are_not_part_of_the_contract(tmp_path):
    save(tiny("mel_cnn"), tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    tiny("mel_cnn", frontend={"n_mels": 32, "freq_mask": 0}).on_load_checkpoint(checkpoint)


def test_front_end_rate_and_data_rate_must_agree():
    with pytest.raises(ValueError, match="expects 22050 Hz but the data delivers 16000 Hz"):
        tiny("mel_cnn", frontend={"sample_rate": 22050})
    assert tiny("mel_cnn", sample_rate=None, frontend={"sample_rate": 22050}).sample_rate == 22050


def test_previous_checkpoint_format_is_refused_in_one_line(tmp_path):
    save(tiny("mel_cnn"), tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    checkpoint[CKPT_KEY] = {"model_class": "audio_cls.models.mel_cnn.MelCNN", "frontend": {}}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointMismatchError, match="checkpoint format 1") as err:
        load_classifier(tmp_path / "old.ckpt")
    assert "\n" not in str(err.value)


def test_checkpoint_class_comes_from_the_registry_not_a_path(tmp_path):
    save(tiny("mel_cnn"), tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    checkpoint[CKPT_KEY]["model"] = "os.system"
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"unknown model 'os\.system'"):
        load_classifier(tmp_path / "evil.ckpt")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a readable audio-cls checkpoint"),
        (b"model: {class_path: x}\n", "not a readable audio-cls checkpoint"),
        (None, "checkpoint not found"),
    ],
)
def test_bad_checkpoint_files(tmp_path, content, reason):
    path = tmp_path / "x.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointMismatchError, match=reason) as err:
        load_classifier(path)
    assert "weights_only=False" not in str(err.value)


def test_not_an_audio_cls_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointMismatchError, match="not an audio-cls checkpoint"):
        load_classifier(tmp_path / "x.ckpt")


def test_class_names_must_match_count():
    with pytest.raises(ValueError, match="class_names has 2 names"):
        tiny("mel_cnn", class_names=["a", "b"])


def test_unknown_backbone_option_names_it():
    with pytest.raises(
        TypeError, match="MambaClassifier: got an unexpected keyword argument 'd_modle'"
    ):
        tiny("mamba", d_modle=8)


def test_frontend_stays_fp32_under_autocast():
    model = tiny("mel_cnn").eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.frontend(torch.randn(2, SR // 2))
    assert feats.dtype == torch.float32


@pytest.mark.parametrize("shape", [(3, SR // 2), (2, 2, SR // 4), (SR,)])
def test_mel_power_is_torchaudios_mel_spectrogram(shape):
    frontend = tiny("mel_cnn").frontend
    waveform = torch.randn(*shape)
    expected = frontend.mel(waveform)  # torchaudio's MelSpectrogram, |z| squared
    torch.testing.assert_close(frontend.mel_power(waveform), expected, rtol=1e-4, atol=1e-5)


def test_waveform_frontend_scales_and_normalises():
    wave = torch.randn(2, 100) * 3 + 1
    front = WaveformSettings(normalize=True).build(SR)
    x = front(wave)
    assert x.shape == (2, 1, 100) and front.output.channels == 1
    assert torch.allclose(x.mean(-1), torch.zeros(2, 1), atol=1e-5)
    assert torch.allclose(x.std(-1), torch.ones(2, 1), atol=1e-3)
    assert torch.equal(WaveformSettings(scale=2.0).build(SR)(wave), 2 * wave.unsqueeze(1))
    assert not list(front.parameters())


def test_logmel_settings_contract_and_partial_override():
    from audio_cls.nn.frontends import frontend_from_dict

    base = LogMelSettings(n_mels=128, hop_ms=32.0)
    merged = frontend_from_dict({"n_mels": 64}, base)
    assert merged.n_mels == 64 and merged.hop_ms == 32.0
    assert "freq_mask" not in merged.contract() and merged.contract()["kind"] == "logmel"
    with pytest.raises(ValueError, match="no setting"):
        frontend_from_dict({"n_melz": 3}, base)


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
    model = tiny("mel_cnn", lr=1e-2, backbone_lr=1e-4, schedule="constant")
    optimizer = model.configure_optimizers()["optimizer"]
    head = {id(p) for p in model.head.parameters()}
    seen = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert group["lr"] == (1e-2 if id(p) in head else 1e-4)
            seen += 1
    assert seen == sum(1 for _ in model.parameters())


def test_tta_is_an_argument_averaging_rolled_copies():
    torch.manual_seed(0)
    model = tiny("mel_cnn").eval()
    wave = torch.randn(2, SR // 2)
    with torch.no_grad():
        plain = model.predict_proba(wave)
        shifted = model.predict_proba(wave, TimeShiftTTA(3, 0.1))
        k = int(0.1 * wave.shape[-1])
        expected = torch.stack(
            [model(torch.roll(wave, s, -1)).softmax(-1) for s in (-k, 0, k)]
        ).mean(0)
    assert torch.allclose(shifted, expected, atol=1e-6)
    assert not torch.allclose(plain, shifted)
    assert torch.equal(model.predict_proba(wave), plain), "no state left behind"


class _WithOwnOption(AudioClassifier):
    """A family with an option of its own beside its backbone's."""

    backbone_cls = MelCNNBackbone

    def __init__(self, num_classes: int, logit_scale: float = 1.0, **kwargs) -> None:
        """Scaled logits.

        Args:
            logit_scale: Factor on the logits.
        """
        super().__init__(num_classes, **kwargs)
        self.logit_scale = logit_scale

    def forward_head(self, features, pre_logits=False):
        out = super().forward_head(features, pre_logits)
        return out if pre_logits else out * self.logit_scale


def test_a_family_option_joins_the_composed_signature_and_hparams():
    params = inspect.signature(_WithOwnOption.__init__).parameters
    assert list(params)[:6] == [
        "self",
        "num_classes",
        "class_names",
        "sample_rate",
        "frontend",
        "logit_scale",
    ]
    assert "channels" in params and "lr" in params
    assert "logit_scale: Factor on the logits." in _WithOwnOption.__init__.__doc__
    model = _WithOwnOption(num_classes=3, logit_scale=2.0, channels=[4, 8, 8])
    assert model.logit_scale == 2.0 and model.hparams["logit_scale"] == 2.0
    assert model.hparams["channels"] == [4, 8, 8] and model.hparams["frontend"]["n_mels"] == 64
