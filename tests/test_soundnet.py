"""SoundNet8: frame counts per tap, the minimum length, and sound8.npy loading (on a file with
the public key names and shapes that the test writes)."""

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from audio_cls.models import create_model
from audio_cls.nn.soundnet import SOUNDNET8_LAYERS, SoundNet8
from audio_cls.nn.weights import PretrainedWeightsError

SR = 22050
#: Frames of every tap for 5 s at 22.05 kHz, worked out by hand from the published layer table:
#: conv1 55126 -> pool1 6890; conv2 3446 -> pool2 430; conv3 216; conv4 109; conv5 55 -> pool5
#: 13; conv6 7; conv7 4.
FRAMES_5S = {
    "pool1": 6890,
    "pool2": 430,
    "conv3": 216,
    "conv4": 109,
    "pool5": 13,
    "conv6": 7,
    "conv7": 4,
}
CONV7_MIN = 4574  # by hand, backwards from one conv7 frame
CONV8_MIN = 209374  # backwards from one conv8 frame (conv7 needs 8): 9.5 s


def _sound8(rng: np.random.Generator) -> dict:
    """sound8.npy as SoundNet-tensorflow publishes it: full shapes, (k, 1, in, out) kernels."""
    tree, in_ch = {}, 1
    for layer in SOUNDNET8_LAYERS:
        c = layer.channels
        tree[layer.name] = {
            "weights": rng.standard_normal((layer.kernel, 1, in_ch, c), dtype=np.float32) * 0.1,
            "biases": rng.standard_normal(c, dtype=np.float32),
            "gamma": rng.uniform(0.5, 2.0, c).astype(np.float32),
            "beta": rng.standard_normal(c, dtype=np.float32),
            "mean": rng.standard_normal(c, dtype=np.float32),
            "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
        }
        in_ch = c
    for name, classes in (("conv8", 1000), ("conv8_2", 401)):
        tree[name] = {
            "weights": rng.standard_normal((8, 1, 1024, classes), dtype=np.float32),
            "biases": rng.standard_normal(classes, dtype=np.float32),
        }
    return tree


@pytest.fixture(scope="module")
def sound8(tmp_path_factory):
    tree = _sound8(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("soundnet") / "sound8.npy"
    np.save(path, tree, allow_pickle=True)
    return path, tree


def _layer_ref(x: np.ndarray, params: dict, layer) -> np.ndarray:
    """One published layer in numpy, on ``(T, in)``: zero padding, strided cross-correlation
    with ``(k, 1, in, out)`` kernels, batch norm (eval), ReLU, max pooling -> ``(T', out)``."""
    w = params["weights"][:, 0].astype(np.float64)  # (k in out)
    xp = np.pad(x, ((layer.padding, layer.padding), (0, 0)))
    windows = sliding_window_view(xp, layer.kernel, axis=0)[:: layer.stride]  # (T' in k)
    y = np.einsum("tik,kio->to", windows, w) + params["biases"]
    y = (y - params["mean"]) / np.sqrt(params["var"] + 1e-5) * params["gamma"] + params["beta"]
    y = np.maximum(y, 0.0)
    if layer.pool:
        n = len(y) // layer.pool
        y = y[: n * layer.pool].reshape(n, layer.pool, -1).max(axis=1)
    return y


def test_frames_per_tap_for_five_seconds():
    backbone = SoundNet8(1, width=0.125).eval()
    assert backbone.frames_per_tap(5 * SR) == FRAMES_5S
    with torch.no_grad():
        taps = backbone.forward_intermediates(torch.randn(1, 1, 5 * SR))
    assert list(taps) == list(FRAMES_5S)
    for name, tap in taps.items():
        assert tap.shape == (1, FRAMES_5S[name], backbone.tap_features[name]), name
    assert backbone.tap_features["conv7"] == backbone.num_features == 128
    full = SoundNet8(1)
    assert full.tap_features == {
        "pool1": 16,
        "pool2": 32,
        "conv3": 64,
        "conv4": 128,
        "pool5": 256,
        "conv6": 512,
        "conv7": 1024,
    }


@pytest.mark.parametrize("output_layer", list(FRAMES_5S))
def test_minimum_length_gives_one_frame_and_one_sample_less_is_refused(output_layer):
    backbone = SoundNet8(1, width=0.125, output_layer=output_layer).eval()
    assert list(backbone.tap_features)[-1] == output_layer
    assert backbone.num_features == backbone.tap_features[output_layer]
    shortest = backbone.min_samples
    assert backbone.frames_per_tap(shortest)[output_layer] == 1
    assert backbone.frames_per_tap(shortest - 1)[output_layer] == 0
    with torch.no_grad():
        assert backbone(torch.randn(2, 1, shortest)).shape == (2, 1, backbone.num_features)
    with pytest.raises(ValueError, match=f"at least {shortest} samples"):
        backbone(torch.randn(2, 1, shortest - 1))


def test_short_clip_error_names_the_minimum_through_the_model():
    model = create_model("soundnet8", 3, sample_rate=SR, width=0.125).eval()
    assert model.backbone.min_samples == CONV7_MIN
    with torch.no_grad():
        assert model(torch.randn(2, SR // 2)).shape == (2, 3)  # 0.5 s: one conv7 frame
    with pytest.raises(ValueError) as err:
        model(torch.randn(2, CONV7_MIN - 1))
    message = str(err.value)
    assert f"at least {CONV7_MIN} samples (0.21 s at 22.05 kHz)" in message
    assert "--data.window_sec" in message and "\n" not in message


def test_sound8_npy_loads_transposed(sound8):
    path, tree = sound8
    torch.manual_seed(0)
    model = create_model("soundnet8", 10, sample_rate=SR, pretrained=str(path)).eval()
    state = model.backbone.state_dict()
    for layer in SOUNDNET8_LAYERS:  # every published conv1..conv7 tensor, full shapes
        p = tree[layer.name]
        weight = torch.from_numpy(p["weights"][:, 0].transpose(2, 1, 0).copy())  # (out in k)
        assert torch.equal(state[f"{layer.name}.conv.weight"], weight), layer.name
        for ours, theirs in (
            ("conv.bias", "biases"),
            ("bn.weight", "gamma"),
            ("bn.bias", "beta"),
            ("bn.running_mean", "mean"),
            ("bn.running_var", "var"),
        ):
            assert torch.equal(state[f"{layer.name}.{ours}"], torch.from_numpy(p[theirs]))
    assert not any(k.startswith(("conv8", "head")) for k in state)  # classifier not built
    # our first two layers against numpy on the raw npy arrays (scale 256 in the front end)
    wave = np.random.default_rng(1).uniform(-1, 1, SR // 2).astype(np.float32)
    with torch.no_grad():
        taps = model.forward_intermediates(torch.from_numpy(wave)[None])
    h = 256.0 * wave.astype(np.float64)[:, None]  # (T 1)
    for layer in SOUNDNET8_LAYERS[:2]:
        h = _layer_ref(h, tree[layer.name], layer)
        np.testing.assert_allclose(taps[layer.tap][0].double().numpy(), h, rtol=2e-4, atol=2e-3)


def test_shallower_output_and_teacher_heads_load_what_they_build(sound8):
    path, tree = sound8
    model = create_model("soundnet8", 3, sample_rate=SR, output_layer="pool5", pretrained=str(path))
    assert not hasattr(model.backbone, "conv6") and model.num_features == 256
    w5 = torch.from_numpy(tree["conv5"]["weights"][:, 0].transpose(2, 1, 0).copy())
    assert torch.equal(model.backbone.conv5.conv.weight, w5)

    teacher = create_model("soundnet8", 3, sample_rate=SR, teacher_heads=True, pretrained=str(path))
    w8 = torch.from_numpy(tree["conv8_2"]["weights"][:, 0].transpose(2, 1, 0).copy())
    assert torch.equal(teacher.backbone.conv8_2.weight, w8)
    assert not teacher.backbone.conv8.weight.requires_grad
    teacher.eval()
    with pytest.raises(ValueError, match=f"at least {CONV8_MIN} samples"):
        teacher.backbone.teacher_logits(teacher.frontend(torch.randn(1, 5 * SR)))
    out = teacher.backbone.teacher_logits(teacher.frontend(torch.randn(1, CONV8_MIN)))
    assert out["objects"].shape == (1, 1, 1000) and out["scenes"].shape == (1, 1, 401)


def test_weights_for_another_rate_or_layout_are_refused(sound8, tmp_path):
    path, tree = sound8
    with pytest.raises(PretrainedWeightsError, match=r"sample_rate 22050 \(ours 16000\)"):
        create_model("soundnet8", 3, frontend={"sample_rate": 16000}, pretrained=str(path))
    converted = {k: dict(v) for k, v in tree.items()}
    converted["conv1"]["weights"] = converted["conv1"]["weights"][:, 0].transpose(2, 1, 0)
    np.save(tmp_path / "torch_layout.npy", converted, allow_pickle=True)
    with pytest.raises(PretrainedWeightsError, match=r"conv1\.weights has shape \(16, 1, 64\)"):
        create_model("soundnet8", 3, sample_rate=SR, pretrained=str(tmp_path / "torch_layout.npy"))


CALLED = []


def _payload(*args):
    CALLED.append(args)


def test_npy_holding_a_function_is_refused_without_running_it(tmp_path):
    tree = _sound8(np.random.default_rng(2))
    tree["conv1"]["hook"] = _payload  # pickled by reference: unpickling would import it
    np.save(tmp_path / "sound8.npy", tree, allow_pickle=True)
    with pytest.raises(PretrainedWeightsError, match=r"refused global .*\._payload") as err:
        create_model("soundnet8", 3, sample_rate=SR, pretrained=str(tmp_path / "sound8.npy"))
    assert "\n" not in str(err.value)
    assert CALLED == []
