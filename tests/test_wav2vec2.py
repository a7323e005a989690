"""wav2vec2_attention: the published key names load (and nothing else does), the conv encoder
freezes, attention pooling, shapes, time masking and the architecture's variants."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

import audio_cls.models.registry as registry
from audio_cls.models import Wav2Vec2Classifier, create_model, get_model_entry, list_pretrained
from audio_cls.nn.wav2vec2 import Wav2Vec2Backbone
from audio_cls.nn.weights import PretrainedWeightsError

NAME = "wav2vec2_attention"
TINY = get_model_entry(NAME).tiny
SR = 16000
BASE = {  # facebook/wav2vec2-base's config.json
    "hidden": 768,
    "layers": 12,
    "ffn": 3072,
    "conv": (512,) * 7,
    "kernel": (10, 3, 3, 3, 3, 2, 2),
    "pos_kernel": 128,
    "pos_groups": 16,
}
SMALL = {  # the same sizes as TINY, spelt as above
    "hidden": 16,
    "layers": 1,
    "ffn": 32,
    "conv": (8, 8),
    "kernel": (10, 3),
    "pos_kernel": 4,
    "pos_groups": 2,
}


def public_shapes(
    hidden: int,
    layers: int,
    ffn: int,
    conv: tuple[int, ...],
    kernel: tuple[int, ...],
    pos_kernel: int,
    pos_groups: int,
    task: str = "pretraining",
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the hub's state dicts: ``Wav2Vec2ForPreTraining`` (the
    pytorch_model.bin of facebook/wav2vec2-base, weight norm as weight_g / weight_v) or
    ``Wav2Vec2ForCTC`` (facebook/wav2vec2-base-960h, vocabulary of 32)."""
    w, d = "wav2vec2.", hidden
    shapes = {w + "masked_spec_embed": (d,)}
    fe = w + "feature_extractor.conv_layers."
    for i, (c, k) in enumerate(zip(conv, kernel, strict=True)):
        shapes[f"{fe}{i}.conv.weight"] = (c, conv[i - 1] if i else 1, k)
    shapes[f"{fe}0.layer_norm.weight"] = shapes[f"{fe}0.layer_norm.bias"] = (conv[0],)
    fp = w + "feature_projection."
    shapes[fp + "layer_norm.weight"] = shapes[fp + "layer_norm.bias"] = (conv[-1],)
    shapes[fp + "projection.weight"], shapes[fp + "projection.bias"] = (d, conv[-1]), (d,)
    enc = w + "encoder."
    shapes[enc + "pos_conv_embed.conv.weight_g"] = (1, 1, pos_kernel)
    shapes[enc + "pos_conv_embed.conv.weight_v"] = (d, d // pos_groups, pos_kernel)
    shapes[enc + "pos_conv_embed.conv.bias"] = (d,)
    shapes[enc + "layer_norm.weight"] = shapes[enc + "layer_norm.bias"] = (d,)
    for i in range(layers):
        layer = f"{enc}layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{layer}attention.{proj}.weight"] = (d, d)
            shapes[f"{layer}attention.{proj}.bias"] = (d,)
        for norm in ("layer_norm", "final_layer_norm"):
            shapes[f"{layer}{norm}.weight"] = shapes[f"{layer}{norm}.bias"] = (d,)
        shapes[f"{layer}feed_forward.intermediate_dense.weight"] = (ffn, d)
        shapes[f"{layer}feed_forward.intermediate_dense.bias"] = (ffn,)
        shapes[f"{layer}feed_forward.output_dense.weight"] = (d, ffn)
        shapes[f"{layer}feed_forward.output_dense.bias"] = (d,)
    if task == "pretraining":  # 2 groups x 320 code vectors of 256 / 2, projections to 256
        shapes["quantizer.codevectors"] = (1, 640, 128)
        shapes["quantizer.weight_proj.weight"] = (640, conv[-1])
        shapes["quantizer.weight_proj.bias"] = (640,)
        shapes["project_hid.weight"], shapes["project_hid.bias"] = (256, d), (256,)
        shapes["project_q.weight"], shapes["project_q.bias"] = (256, 256), (256,)
    else:
        shapes["lm_head.weight"], shapes["lm_head.bias"] = (32, d), (32,)
    return shapes


def public_weights(seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in public_shapes(**{**SMALL, **kwargs}).items()}


def new_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weight norm under PyTorch's parametrization names, as newer files spell it."""
    rename = {
        "weight_g": "parametrizations.weight.original0",
        "weight_v": "parametrizations.weight.original1",
    }
    out = {}
    for key, value in weights.items():
        stem, _, leaf = key.rpartition(".")
        out[f"{stem}.{rename[leaf]}" if leaf in rename else key] = value
    return out


def tiny(**overrides) -> Wav2Vec2Classifier:
    return create_model(NAME, num_classes=3, sample_rate=SR, **{**TINY, **overrides})


def test_public_names_are_transformers_own():
    """The key list above is what transformers' Wav2Vec2ForPreTraining holds, so it is what
    the hub files hold."""
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
    )
    theirs = {k: tuple(v.shape) for k, v in Wav2Vec2ForPreTraining(config).state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in new_names(public_weights()).items()}
    assert theirs == ours


def test_default_backbone_is_wav2vec2_base():
    model = Wav2Vec2Classifier(num_classes=2)
    backbone = model.backbone
    assert model.head.pool.attn.heads == 12  # attention pooling takes the backbone's heads
    ours = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    base = new_names(public_shapes(**BASE))
    assert ours == {k: s for k, s in base.items() if k.startswith("wav2vec2.")}
    assert backbone.num_features == 768 and backbone.num_heads == 12
    assert backbone.layout == "sequence"
    assert (backbone.receptive_field, backbone.hop) == (400, 320)  # 25 ms and 20 ms at 16 kHz
    assert backbone.num_frames(5 * SR) == 249
    assert not any(p.requires_grad for p in backbone.wav2vec2.feature_extractor.parameters())
    assert backbone.wav2vec2.config._attn_implementation == "sdpa"


def test_pretraining_bin_loads_every_encoder_tensor(tmp_path):
    """facebook/wav2vec2-base's pytorch_model.bin: weight_g / weight_v, quantizer and
    projections beside the encoder."""
    weights = public_weights()
    weights["wav2vec2.encoder.pos_conv_embed.conv.weight_g"].abs_()
    path = tmp_path / "pytorch_model.bin"
    torch.save(weights, path)
    torch.manual_seed(3)
    model = tiny(pretrained=str(path))
    ours = model.state_dict()
    for key, value in new_names(weights).items():
        if key.startswith("wav2vec2."):
            assert torch.equal(ours["backbone." + key], value), key
    # the effective conv kernel is g * v / |v| of the file's tensors (not swapped)
    conv = model.backbone.wav2vec2.encoder.pos_conv_embed.conv
    g = weights["wav2vec2.encoder.pos_conv_embed.conv.weight_g"]
    v = weights["wav2vec2.encoder.pos_conv_embed.conv.weight_v"]
    assert torch.allclose(conv.weight, torch._weight_norm(v, g, 2), atol=1e-6)
    # the head is new: attention pooling starts as a mean (zero query)
    assert torch.count_nonzero(model.head.pool.attn.query) == 0
    loaded = model.load_pretrained(str(path))
    assert len(loaded) == sum(k.startswith("wav2vec2.") for k in weights)
    assert all(k.startswith("backbone.wav2vec2.") for k in loaded)
    assert not any(x in k for k in loaded for x in ("quantizer", "project_", "lm_head"))


def test_ctc_safetensors_folder_loads_without_mask_vector(tmp_path):
    """facebook/wav2vec2-base-960h: model.safetensors with an lm_head; a fine-tuned file may
    lack masked_spec_embed, which then keeps its initialisation."""
    weights = new_names(public_weights(task="ctc"))
    del weights["wav2vec2.masked_spec_embed"]
    (tmp_path / "hub").mkdir()
    save_file(weights, tmp_path / "hub" / "model.safetensors")
    model = tiny(pretrained=str(tmp_path / "hub"))
    ours = model.state_dict()
    for key, value in weights.items():
        if key.startswith("wav2vec2."):
            assert torch.equal(ours["backbone." + key], value), key


def test_tags_name_the_published_files(tmp_path, monkeypatch):
    tags = {config.tag: config for _, config in list_pretrained(NAME)}
    base, ctc = tags["wav2vec2_base"], tags["wav2vec2_base_960h"]
    # the wav2vec2-base hub repo holds pytorch_model.bin only; a hub snapshot fetches
    # *.safetensors, hence the file's URL
    assert base.source.endswith("facebook/wav2vec2-base/resolve/main/pytorch_model.bin")
    assert ctc.source == "facebook/wav2vec2-base-960h"
    assert base.frontend == {"sample_rate": 16000, "normalize": True}
    weights = public_weights()
    torch.save(weights, tmp_path / "pytorch_model.bin")
    fetched = []

    def offline(source, *args, **kwargs):
        fetched.append(source)
        return tmp_path / "pytorch_model.bin"

    monkeypatch.setattr(registry, "resolve_weights", offline)
    model = tiny(pretrained="wav2vec2_base")
    assert fetched == [base.source]
    key = "wav2vec2.encoder.layers.0.attention.q_proj.weight"
    assert torch.equal(model.state_dict()["backbone." + key], weights[key])


def test_default_frontend_and_pooling():
    assert Wav2Vec2Classifier.default_frontend.sample_rate == SR
    assert Wav2Vec2Classifier.default_frontend.normalize  # do_normalize of wav2vec2-base
    model = tiny()
    assert model.head.pool.kind == "attention" and model.frontend.settings.normalize


def test_mis_shaped_file_lists_what_differs(tmp_path):
    torch.save(public_weights(hidden=32, ffn=64), tmp_path / "w.bin")
    with pytest.raises(PretrainedWeightsError, match="mis-shaped") as err:
        tiny(pretrained=str(tmp_path / "w.bin"))
    first, *listed = str(err.value).splitlines()
    # 16 -> 32 wide: mask vector 1, projection 2, position conv 2 (v, bias), norm 2, layer 16
    assert "0 missing, 0 unexpected, 23 mis-shaped" in first
    assert "    backbone.wav2vec2.masked_spec_embed: checkpoint (32,) vs model (16,)" in listed


def test_deeper_model_than_the_file_lists_missing_layers(tmp_path):
    torch.save(public_weights(), tmp_path / "w.bin")
    with pytest.raises(PretrainedWeightsError, match="missing") as err:
        tiny(pretrained=str(tmp_path / "w.bin"), num_layers=2)
    assert "backbone.wav2vec2.encoder.layers.1." in str(err.value)


def test_unrelated_file_is_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(PretrainedWeightsError, match="missing") as err:
        tiny(pretrained=str(tmp_path / "other.pth"))
    assert "backbone.wav2vec2.feature_extractor.conv_layers.0.conv.weight" in str(err.value)


def test_weights_refuse_an_unnormalised_front_end(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="normalize True"):
        tiny(pretrained="wav2vec2_base", frontend={"normalize": False})


def test_own_run_loads_backbone_and_head(tmp_path):
    torch.manual_seed(0)
    source = tiny()
    torch.save(source.state_dict(), tmp_path / "run.pth")
    torch.manual_seed(1)
    model = tiny(pretrained=str(tmp_path / "run.pth"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_feature_encoder(freeze):
    torch.manual_seed(0)
    model = tiny(freeze_feature_encoder=freeze, schedule="constant").train()
    model(torch.randn(2, SR // 8)).sum().backward()
    w2v = model.backbone.wav2vec2
    conv = list(w2v.feature_extractor.parameters())
    assert all((p.grad is None) == freeze and p.requires_grad != freeze for p in conv)
    rest = [*w2v.feature_projection.parameters(), *w2v.encoder.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rest)
    groups = model.configure_optimizers()["optimizer"].param_groups
    trained = {id(p) for group in groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert trained.isdisjoint(id(p) for p in conv) == freeze


@pytest.mark.parametrize(("pool_heads", "heads"), [(None, 4), (1, 1), (8, 8)])
def test_attention_pooling_heads(pool_heads, heads):
    torch.manual_seed(0)
    model = tiny(num_heads=4, pool_heads=pool_heads).eval()
    assert model.head.pool.attn.heads == heads
    wave = torch.randn(2, SR // 8)
    with torch.no_grad():
        frames = model.forward_features(wave)
        assert torch.allclose(model.embed(wave), frames.mean(1), atol=1e-5)  # zero query: mean
        model.head.pool.attn.query.normal_()
        pooled = model.embed(wave)
    assert pooled.shape == (2, 16) and model(wave).shape == (2, 3)
    assert not torch.allclose(pooled, frames.mean(1), atol=1e-4)


def test_shapes_and_taps():
    model = tiny().eval()
    backbone = model.backbone
    assert (backbone.receptive_field, backbone.hop) == (10 + 2 * 5, 10)
    wave = torch.randn(3, 4000)
    with torch.no_grad():
        feats = model.forward_features(wave)
        taps = model.forward_intermediates(wave)
    assert feats.shape == (3, backbone.num_frames(4000), 16) == (3, 399, 16)
    assert list(taps) == ["frontend", "feature_encoder", "layer_0", "layer_1", "embedding"]
    assert taps["feature_encoder"].shape == (3, 399, 8)
    assert torch.equal(taps["layer_1"], feats)


def test_too_short_input_is_one_clear_error():
    with pytest.raises(ValueError, match="at least 20 samples"):
        tiny()(torch.randn(2, 19))


def test_waveform_only():
    with pytest.raises(ValueError, match="waveform front end"):
        Wav2Vec2Backbone(64)


def test_time_masking_in_training_only():
    torch.manual_seed(0)
    model = tiny(mask_time_prob=0.3, dropout=0.0, attention_dropout=0.0)
    embed = model.backbone.wav2vec2.masked_spec_embed
    assert embed.requires_grad
    wave = torch.randn(2, SR // 8)
    model.eval()
    with torch.no_grad():
        clean = model.forward_features(wave)
        assert torch.equal(clean, model.forward_features(wave))
    model.train()
    masked = model.forward_features(wave)
    assert not torch.allclose(masked, clean, atol=1e-4)
    masked.sum().backward()
    assert embed.grad is not None and embed.grad.abs().sum() > 0
    assert not tiny().backbone.wav2vec2.masked_spec_embed.requires_grad  # off: not trained


def test_time_mask_covers_about_the_share_asked():
    backbone = Wav2Vec2Backbone(1, **TINY, mask_time_prob=0.2)
    torch.manual_seed(0)
    share = torch.stack([backbone._time_mask(8, 500, torch.device("cpu")) for _ in range(20)])
    # spans may overlap, so a little under the share asked
    assert 0.13 < share.float().mean() < 0.21


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = tiny(gradient_checkpointing=checkpointing, dropout=0.0, attention_dropout=0.0)
        model.train()(torch.randn(2, SR // 8)).sum().backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_stable_layer_norm_variant():
    torch.manual_seed(0)
    model = tiny(stable_layer_norm=True).eval()
    conv = model.backbone.wav2vec2.feature_extractor.conv_layers
    assert all(isinstance(layer.layer_norm, torch.nn.LayerNorm) for layer in conv)
    assert conv[0].conv.bias is not None
    wave = torch.randn(2, SR // 8)
    with torch.no_grad():
        taps = model.forward_intermediates(wave)
        assert list(taps)[-2] == "norm"
        assert torch.equal(taps["norm"], model.forward_features(wave))
