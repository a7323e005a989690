"""ESResNeXt-fbsp and AudioCLIP's audio branch: FBSP front end, gates, published weights."""

import csv
import math
import shutil

import numpy as np
import pytest
import torch
import torchvision

from audio_cls.cli import main
from audio_cls.commands import UsageError
from audio_cls.models import create_model, get_model_entry
from audio_cls.models.labels import audioset_labels
from audio_cls.nn.fbsp import FBSPSettings, analysis_window, frame_signal
from audio_cls.nn.weights import PretrainedWeightsError

#: The published gates: (input channels, output channels, depthwise kernel).
PUBLISHED_GATES = {
    "att1": (64, 256, (3, 1)),
    "att2": (256, 512, (1, 5)),
    "att3": (512, 1024, (3, 1)),
    "att4": (1024, 2048, (1, 5)),
    "att5": (2048, 2048, (3, 5)),
}


def published_esresnext_state(num_outputs: int = 527) -> dict[str, torch.Tensor]:
    """A state dict with the key names and shapes of ESResNeXtFBSP_AudioSet.pt: torchvision's
    ResNeXt-50 32x4d names, the gates, the FBSP filterbank, the window and a 527-way fc."""
    torch.manual_seed(0)
    state = {
        k: v
        for k, v in torchvision.models.resnext50_32x4d().state_dict().items()
        if not k.startswith("fc.")
    }
    for name, (cin, cout, kernel) in PUBLISHED_GATES.items():
        state[f"{name}.conv_depth.weight"] = torch.randn(cin, 1, *kernel)
        state[f"{name}.conv_depth.bias"] = torch.randn(cin)
        state[f"{name}.conv_point.weight"] = torch.randn(cout, cin, 1, 1)
        state[f"{name}.conv_point.bias"] = torch.randn(cout)
        state[f"{name}.bn.weight"] = torch.rand(cout)
        state[f"{name}.bn.bias"] = torch.randn(cout)
        state[f"{name}.bn.running_mean"] = torch.randn(cout)
        state[f"{name}.bn.running_var"] = torch.rand(cout) + 0.5
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(7)
    state["fbsp.m"] = torch.rand(1025) * 0.1
    state["fbsp.fb"] = 1 + torch.rand(1025) * 0.1
    state["fbsp.fc"] = torch.arange(1025.0) + torch.randn(1025) * 0.1
    state["fbsp.bias"] = torch.empty(0)
    state["window"] = analysis_window("blackmanharris", 1654)
    state["fc.weight"] = torch.randn(num_outputs, 2048)
    state["fc.bias"] = torch.randn(num_outputs)
    return state


@pytest.fixture(scope="module")
def esresnext_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "ESResNeXtFBSP_AudioSet.pt"
    torch.save(published_esresnext_state(), path)
    return path


@pytest.fixture(scope="module")
def audioclip_file(tmp_path_factory):
    """AudioCLIP-Full-Training.pt's layout: the audio branch under ``audio.`` (its ``fc`` the
    1024-d projection) beside CLIP's image and text towers."""
    state = {f"audio.{k}": v for k, v in published_esresnext_state(1024).items()}
    state["visual.conv1.weight"] = torch.randn(64, 3, 3, 3)
    state["transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(24, 8)
    state["token_embedding.weight"] = torch.randn(10, 8)
    state["logit_scale_ai"] = torch.tensor(4.6)
    path = tmp_path_factory.mktemp("weights") / "AudioCLIP-Full-Training.pt"
    torch.save(state, path)
    return path


def test_esresnext_audioset_weights_load_with_their_names(esresnext_file):
    published = torch.load(esresnext_file, weights_only=True)
    model = create_model("esresnext_fbsp", 10, pretrained=str(esresnext_file))
    ours = model.state_dict()
    assert torch.equal(ours["backbone.layer3.5.conv2.weight"], published["layer3.5.conv2.weight"])
    assert torch.equal(ours["backbone.att5.conv_point.weight"], published["att5.conv_point.weight"])
    assert torch.equal(ours["frontend.fbsp.fc"], published["fbsp.fc"])
    assert torch.equal(ours["frontend.window"], published["window"])
    # 527 AudioSet outputs there, 10 classes here: the classifier stays new
    assert ours["head.fc.weight"].shape == (10, 2048)
    assert not torch.equal(ours["head.fc.weight"][:, :5], published["fc.weight"][:10, :5])


def test_esresnext_keeps_the_audioset_classifier_and_its_tag_names(esresnext_file):
    published = torch.load(esresnext_file, weights_only=True)
    model = create_model("esresnext_fbsp", 527, pretrained=str(esresnext_file))
    assert torch.equal(model.head.fc.weight, published["fc.weight"])
    assert model.class_names[:2] == ["Speech", "Male speech, man speaking"]
    assert model.class_names[74] == "Dog" and len(set(model.class_names)) == 527
    assert model.hparams["class_names"] == model.class_names  # what checkpoints will record
    assert len(audioset_labels()) == 527


def test_audioclip_audio_branch_loads_from_the_full_checkpoint(audioclip_file):
    published = torch.load(audioclip_file, weights_only=True)
    model = create_model("audioclip_audio", 10, pretrained=str(audioclip_file))
    ours = model.state_dict()
    assert torch.equal(ours["head.proj.weight"], published["audio.fc.weight"])
    assert torch.equal(ours["backbone.conv1.weight"], published["audio.conv1.weight"])
    assert torch.equal(ours["frontend.fbsp.m"], published["audio.fbsp.m"])
    assert not any(k.startswith(("visual", "transformer")) for k in ours)
    embedding = model.embed(torch.randn(2, 44100) * 0.1)
    assert embedding.shape == (2, 1024)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))


def test_mismatched_weights_are_listed(tmp_path, esresnext_file):
    state = torch.load(esresnext_file, weights_only=True)
    state["att2.conv_point.weight"] = torch.randn(512, 128, 1, 1)
    del state["layer4.2.bn3.weight"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError) as err:
        create_model("esresnext_fbsp", 10, pretrained=str(path))
    text = str(err.value)
    assert "backbone.att2.conv_point.weight" in text and "backbone.layer4.2.bn3.weight" in text


def test_published_weights_refuse_another_front_end():
    with pytest.raises(PretrainedWeightsError, match="hop_length 561"):
        create_model(
            "esresnext_fbsp", 10, pretrained="esresnext_fbsp_audioset", frontend={"hop_length": 512}
        )


def test_fbsp_starts_as_a_fourier_basis_on_a_tone():
    """At initialisation bin k is k cycles per frame: a tone peaks in its bin, in every band."""
    frontend = FBSPSettings(sample_rate=44100, int16_scale=False).build(44100)
    t = np.arange(44100) / 44100
    cycles_per_frame = 300  # bin 300 of 2048-sample frames: in the first band (0..340)
    freq = cycles_per_frame * 44100 / 2048
    wave = torch.tensor(0.5 * np.sin(2 * np.pi * freq * t), dtype=torch.float32)[None]
    db = frontend(wave)  # (1, 3, 341, frames)
    assert db.shape == (1, 3, 341, frontend.num_frames(44100))
    spectrum = db[0].flatten(0, 1).mean(-1)  # (1023,)
    assert abs(int(spectrum.argmax()) - cycles_per_frame) <= 1
    silence = frontend(torch.zeros(1, 4000))
    assert torch.isfinite(silence).all() and silence.max().item() == pytest.approx(-180.0)


def test_fbsp_framing_matches_the_published_count():
    for length in (100, 1654, 1655, 42336, 220500):
        frames = frame_signal(torch.zeros(length), 1654, 561)
        expected = 1 if length <= 1654 else 1 + math.ceil((length - 1654) / 561)
        assert frames.shape == (expected, 1654)
    settings = FBSPSettings(sample_rate=44100)
    assert settings.build(44100).num_frames(42336) == 74  # 0.96 s windows


def test_blackman_harris_window_is_the_periodic_four_term_one():
    w = analysis_window("blackmanharris", 1654).double()
    n = torch.arange(1654, dtype=torch.float64) * 2 * math.pi / 1654
    a = (0.35875, 0.48829, 0.14128, 0.01168)
    expected = a[0] - a[1] * torch.cos(n) + a[2] * torch.cos(2 * n) - a[3] * torch.cos(3 * n)
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=0)


def test_fbsp_filter_norm_loss_and_gradient_normalisation():
    model = create_model("esresnext_fbsp", 3, **get_model_entry("esresnext_fbsp").tiny)
    fbsp = model.frontend.fbsp
    # normalised filters of a Fourier basis have unit norm: no loss at initialisation
    assert model.frontend.regularization_loss().item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        fbsp.fb.mul_(9.0)  # filter norms sqrt(9) = 3: loss (3 - 1)^2
    assert model.frontend.regularization_loss().item() == pytest.approx(4.0, rel=1e-4)
    loss = model(torch.randn(2, 8000)).logsumexp(-1).sum() + model.frontend.regularization_loss()
    loss.backward()
    model.on_before_optimizer_step(None)
    for p in (fbsp.m, fbsp.fb, fbsp.fc):
        assert p.grad.abs().max().item() == pytest.approx(1.0, rel=1e-5)


def test_gates_multiply_the_stages_and_att5_gates_the_pooled_features():
    model = create_model("esresnext_fbsp", 3, **get_model_entry("esresnext_fbsp").tiny).eval()
    backbone = model.backbone
    x = model.frontend(torch.randn(2, 8000))
    taps = backbone.forward_intermediates(x)
    assert list(taps) == ["stem", "layer1", "layer2", "layer3", "layer4", "gated"]
    layer4 = taps["layer4"]
    gate = torch.sigmoid(
        backbone.att5.bn(
            backbone.att5.conv_point(backbone.att5.conv_depth(layer4.amax((-2, -1), keepdim=True)))
        )
    )
    # published: average-pool, then times att5 of the max-pooled map
    expected = layer4.mean((-2, -1)) * gate[..., 0, 0]
    torch.testing.assert_close(model.forward_head(taps["gated"], pre_logits=True), expected)
    plain = create_model(
        "esresnext_fbsp", 3, attention=False, **get_model_entry("esresnext_fbsp").tiny
    )
    assert not any(k.startswith("backbone.att") for k in plain.state_dict())


def test_classify_tags_audio_with_the_published_audioset_weights(
    esresnext_file, tmp_path, monkeypatch, write_tone
):
    """``--ckpt esresnext_fbsp_audioset``: fetched once (here from a local copy), AudioSet names."""
    fetched = []

    def fake_download(url, dst, progress=True):
        fetched.append(url)
        shutil.copy(esresnext_file, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setenv("AUDIO_CLS_CACHE", str(tmp_path / "cache"))
    tone = write_tone(tmp_path / "tone.wav", sr=44100, seconds=1.0)
    out = tmp_path / "tags.csv"
    main(["classify", str(tone), "--ckpt", "esresnext_fbsp_audioset", "--out", str(out)])
    assert fetched == [get_model_entry("esresnext_fbsp").pretrained[0].source]
    with out.open() as f:
        row = next(csv.DictReader(f))
    assert row["prediction"] in audioset_labels()
    assert "prob_Male speech, man speaking" in row


def test_classify_refuses_published_weights_without_label_names(tmp_path, write_tone):
    tone = write_tone(tmp_path / "tone.wav", sr=44100, seconds=1.0)
    with pytest.raises(UsageError, match="no label names to classify with; fit a classifier"):
        main(["classify", str(tone), "--ckpt", "audioclip_full", "--out", str(tmp_path / "o.csv")])
