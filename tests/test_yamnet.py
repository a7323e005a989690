"""YAMNet: front end against the published pipeline, TensorFlow ``same`` padding, shift-only
BatchNorm, and the Keras ``yamnet.h5`` converter against a NumPy reference of the network.

The NumPy reference below follows TensorFlow's semantics (NHWC images of (time, mel), HWIO
kernels, ``same`` padding by TensorFlow's formula, Keras BatchNorm) and never calls our
modules, so a wrong transpose, axis swap or padding side in ours shows as a mismatch.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from audio_cls.models import create_model, get_model_entry
from audio_cls.models.registry import resolve_pretrained
from audio_cls.nn.frontends import FRONTEND_KINDS, frontend_from_dict
from audio_cls.nn.weights import PretrainedWeightsError
from audio_cls.nn.yamnet import (
    YAMNET_LAYERS,
    ConvBNReLU,
    SameConv2d,
    ShiftBatchNorm2d,
    YAMNetSettings,
    convert_keras_weights,
    htk_mel_matrix,
)

SR = 16000
EPS = 1e-4  # YAMNet's BatchNorm epsilon

# ---------------------------------------------------------------------- front end reference
# Printed by tests/data/make_yamnet_reference.py (a float64 NumPy port of TensorFlow's
# linear_to_mel_weight_matrix and YAMNet's features.py) for 0.5 sin(1 kHz) + 0.25 sin(3 kHz),
# 0.96 s at 16 kHz; TensorFlow 2.21 itself (float32) agreed with the port to 3.3e-5 where the
# mel energy is above 20x the log offset and to 1.3e-3 everywhere (float32 FFT rounding near
# the log floor).
REF_FRAMES = 96
REF_LOG_MEL = {
    (0, 19): 4.117905,
    (48, 20): 4.081830,
    (95, 19): 3.284746,  # the last frame reaches into YAMNet's end padding
    (30, 41): 3.547084,
    (70, 42): 3.452024,
    (95, 60): 0.100300,
    (30, 0): -6.401275,  # quiet bands, near log(0.001) = -6.91
    (60, 30): -5.381848,
    (80, 63): -6.840286,
}
REF_MEL = {
    (0, 0): 0.0,  # DC never weighted
    (4, 0): 0.0,
    (5, 0): 0.94769046,
    (32, 19): 0.53630063,  # 1 kHz
    (32, 20): 0.46369937,
    (96, 41): 0.52425454,  # 3 kHz
    (96, 42): 0.47574546,
    (239, 63): 0.10807140,
    (256, 63): 0.0,  # Nyquist, above 7500 Hz
}
REF_MEL_COLUMN_SUMS = {0: 0.94769, 31: 2.889028, 63: 8.944183}  # grow: no area normalisation
#: Where the mel energy is above 20x the log offset (log-mel > ln 0.02): float32 rounding is
#: ~3e-5 there; nearer the floor it is amplified up to ~1e-3 (TensorFlow's own float32 too).
LOUD_TOL, QUIET_TOL = 1e-4, 2e-3


def tone() -> torch.Tensor:
    t = torch.arange(int(0.96 * SR), dtype=torch.float64) / SR
    x = 0.5 * torch.sin(2 * math.pi * 1000.0 * t) + 0.25 * torch.sin(2 * math.pi * 3000.0 * t)
    return x.float()[None]


def frontend():
    return YAMNetSettings().build(SR).eval()


def test_front_end_matches_the_published_reference_numbers():
    log_mel = frontend()(tone())[0]  # (64, frames)
    assert log_mel.shape == (64, REF_FRAMES)
    for (frame, band), want in REF_LOG_MEL.items():
        tol = LOUD_TOL if want > math.log(0.02) else QUIET_TOL
        got = float(log_mel[band, frame])
        assert abs(got - want) <= tol, f"log-mel at frame {frame}, band {band}: {got} vs {want}"


def test_front_end_matches_the_numpy_port_on_every_value():
    path = Path(__file__).parent / "data" / "make_yamnet_reference.py"
    spec = importlib.util.spec_from_file_location("make_yamnet_reference", path)
    port = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(port)
    want, patches, _ = port.log_mel_patches(port.test_signal())
    assert patches.shape == (1, 96, 64)
    got = frontend()(torch.from_numpy(port.test_signal()).float()[None])[0].T.numpy()
    diff = np.abs(got - want)
    loud = want > math.log(0.02)
    assert diff[loud].max() <= LOUD_TOL and diff.max() <= QUIET_TOL


def test_htk_mel_matrix_is_tensorflows():
    m = htk_mel_matrix(64, 512, SR, 125.0, 7500.0)
    assert m.shape == (257, 64)
    for (k, b), want in REF_MEL.items():
        assert abs(float(m[k, b]) - want) <= 1e-7, (k, b)
    for b, want in REF_MEL_COLUMN_SUMS.items():
        assert abs(float(m[:, b].sum()) - want) <= 1e-5, b
    assert float(m.max()) <= 1.0 and not m[0].any()


def test_frames_follow_yamnets_padding():
    fe = frontend()
    for n in (160, 400, 15360, 15361, 21281):
        frames = fe(torch.randn(1, n)).shape[-1]
        assert frames == fe.num_frames(n) == n // 160
    assert fe.output.channels == 64 and fe.output.frame_rate == 100.0
    unpadded = YAMNetSettings(pad_end=False).build(SR)
    assert unpadded(torch.randn(1, 15360)).shape[-1] == unpadded.num_frames(15360) == 94
    with pytest.raises(ValueError, match="at least 160 samples"):
        fe(torch.randn(1, 100))


def test_front_end_is_fp32_and_keeps_nothing_in_the_state_dict():
    fe = frontend()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fe(tone()).dtype == torch.float32
    assert fe.state_dict() == {} and not list(fe.parameters())


def test_front_end_kind_is_registered_and_checked_against_the_data_rate():
    assert FRONTEND_KINDS["yamnet"] is YAMNetSettings
    assert frontend_from_dict({"kind": "yamnet", "f_min": 60.0}, YAMNetSettings()).f_min == 60.0
    with pytest.raises(ValueError, match="expects 16000 Hz but the data delivers 22050 Hz"):
        create_model("yamnet", 3, sample_rate=22050, width_multiplier=0.125)
    with pytest.raises(ValueError, match="above the Nyquist"):
        create_model("yamnet", 3, sample_rate=None, frontend={"sample_rate": 8000})


# ---------------------------------------------------------------------- NumPy, TF semantics
def tf_same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """Pad NHWC ``x`` as TensorFlow's ``padding='same'``: the odd sample after."""

    def amounts(n: int) -> tuple[int, int]:
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        return total // 2, total - total // 2

    return np.pad(x, [(0, 0), amounts(x.shape[1]), amounts(x.shape[2]), (0, 0)])


def tf_conv(x: np.ndarray, kernel: np.ndarray, s: int, depthwise: bool = False) -> np.ndarray:
    """``Conv2D`` (kernel HWIO) or ``DepthwiseConv2D`` (kernel HWC1) of NHWC ``x``, ``same``."""
    k = kernel.shape[0]
    xp = tf_same_pad(x, k, s)
    oh, ow = -(-x.shape[1] // s), -(-x.shape[2] // s)
    cout = kernel.shape[2] if depthwise else kernel.shape[3]
    out = np.zeros((x.shape[0], oh, ow, cout))
    for i in range(k):
        for j in range(k):
            patch = xp[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s, :]
            out += patch * kernel[i, j, :, 0] if depthwise else patch @ kernel[i, j]
    return out


def keras_bn_relu(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    y = (x - w[f"{name}/moving_mean"]) / np.sqrt(w[f"{name}/moving_variance"] + EPS)
    return np.maximum(y + w[f"{name}/beta"], 0.0)


def yamnet_reference(patch: np.ndarray, w: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """YAMNet on one (96 frames, 64 bands) patch, as Keras computes it: (embedding, logits)."""
    x = patch[None, :, :, None].astype(np.float64)
    for i, (stride, _) in enumerate(YAMNET_LAYERS, 1):
        if i == 1:
            x = keras_bn_relu(tf_conv(x, w["layer1/conv/kernel"], stride), w, "layer1/conv/bn")
            continue
        dw, pw = f"layer{i}/depthwise_conv", f"layer{i}/pointwise_conv"
        x = keras_bn_relu(tf_conv(x, w[f"{dw}/depthwise_kernel"], stride, True), w, f"{dw}/bn")
        x = keras_bn_relu(tf_conv(x, w[f"{pw}/kernel"], 1), w, f"{pw}/bn")
    embedding = x.mean(axis=(1, 2))[0]
    return embedding, embedding @ w["logits/kernel"] + w["logits/bias"]


def keras_arrays(width: float = 1.0, classes: int = 521, seed: int = 0) -> dict[str, np.ndarray]:
    """Random YAMNet weights under Keras's names (no ``:0``) and shapes, scaled by ``width``."""
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}

    def bn(name: str, c: int) -> None:
        w[f"{name}/beta"] = rng.normal(0.0, 0.1, c)
        w[f"{name}/moving_mean"] = rng.normal(0.0, 0.1, c)
        w[f"{name}/moving_variance"] = rng.uniform(0.5, 1.5, c)

    def he(*shape: int, fan_in: int) -> np.ndarray:
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)

    cin = 1
    for i, (_, c) in enumerate(YAMNET_LAYERS, 1):
        c = max(1, round(c * width))
        if i == 1:
            w["layer1/conv/kernel"] = he(3, 3, 1, c, fan_in=9)
            bn("layer1/conv/bn", c)
        else:
            w[f"layer{i}/depthwise_conv/depthwise_kernel"] = he(3, 3, cin, 1, fan_in=9)
            bn(f"layer{i}/depthwise_conv/bn", cin)
            w[f"layer{i}/pointwise_conv/kernel"] = he(1, 1, cin, c, fan_in=cin)
            bn(f"layer{i}/pointwise_conv/bn", c)
        cin = c
    w["logits/kernel"] = rng.normal(0.0, 1.0 / math.sqrt(cin), (cin, classes))
    w["logits/bias"] = rng.normal(0.0, 0.1, classes)
    return {k: v.astype(np.float32) for k, v in w.items()}


def write_keras_h5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """An h5 laid out as Keras's ``save_weights`` wrote ``yamnet.h5``: one group per layer
    (``layer1/conv``, ``logits``, ...), holding each weight under its full variable name, so
    ``layer1/conv/layer1/conv/kernel:0``."""
    layers: dict[str, list[str]] = {}
    for name in arrays:
        layer, leaf = name.rsplit("/", 1)
        layers.setdefault(layer, []).append(f"{layer}/{leaf}:0")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layers]
        for layer, weight_names in layers.items():
            group = f.require_group(layer)
            group.attrs["weight_names"] = [n.encode() for n in weight_names]
            for weight in weight_names:
                group.create_dataset(weight, data=arrays[weight.removesuffix(":0")])
    return path


# ---------------------------------------------------------------------- same padding, BN
@pytest.mark.parametrize(("size", "kernel", "stride"), [(8, 3, 2), (7, 3, 2), (6, 3, 1), (5, 1, 1)])
def test_same_padding_matches_tensorflow(size, kernel, stride):
    """Size 8 at stride 2 pads one sample in all (odd): TensorFlow puts it after, at the
    bottom/right; size 7 pads one on each side."""
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, kernel, stride, bias=False)
    x = torch.randn(1, 2, size, size + 1)
    got = conv(x).detach().numpy().transpose(0, 2, 3, 1)  # NHWC
    hwio = conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    want = tf_conv(x.numpy().transpose(0, 2, 3, 1), hwio, stride)
    assert got.shape == want.shape == (1, -(-size // stride), -(-(size + 1) // stride), 3)
    assert np.abs(got - want).max() < 1e-5


def test_odd_padding_goes_after_not_before():
    conv = SameConv2d(1, 1, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    # nothing padded before: output (0, 0) is x[0, 0], (1, 1) is x[2, 2]
    assert conv(x)[0, 0].tolist() == [[1.0, 3.0], [9.0, 11.0]]


def test_shift_only_batchnorm_keeps_a_clean_state_dict():
    bn = ShiftBatchNorm2d(4)
    assert set(bn.state_dict()) == {"bias", "running_mean", "running_var", "num_batches_tracked"}
    assert [name for name, _ in bn.named_parameters()] == ["bias"] and bn.eps == EPS
    x = torch.randn(8, 4, 3, 3) * 3 + 2
    bn.train()(x).sum().backward()
    assert bn.bias.grad is not None and not torch.allclose(bn.running_mean, torch.zeros(4))


def test_eval_folds_batchnorm_into_the_convolution_exactly():
    torch.manual_seed(0)
    layer = ConvBNReLU(4, 6, 3, 2)
    with torch.no_grad():
        layer.bn.running_mean.normal_()
        layer.bn.running_var.uniform_(0.2, 3.0)
        layer.bn.bias.normal_()
    x = torch.randn(2, 4, 9, 10)
    with torch.no_grad():
        folded = layer.eval()(x)
        plain = torch.relu(layer.bn.eval()(layer.conv(x)))
    assert torch.allclose(folded, plain, atol=1e-5)


# ---------------------------------------------------------------------- network and weights
def test_shapes_and_parameter_count_of_the_published_size():
    model = create_model("yamnet", 521, sample_rate=SR).eval()
    # trainable: 3,729,481 as Keras counts yamnet.h5; with BN statistics 3,751,369 in all
    assert sum(p.numel() for p in model.backbone.parameters()) == 3_195_456
    assert sum(p.numel() for p in model.parameters()) == 3_729_481
    wave = torch.randn(2, int(0.96 * SR))
    with torch.no_grad():
        taps = model.forward_intermediates(wave)
        assert taps["frontend"].shape == (2, 64, 96)
        assert taps["layer1"].shape == (2, 32, 32, 48)
        assert taps["layer14"].shape == (2, 1024, 2, 3)
        assert list(taps)[1:-1] == [f"layer{i}" for i in range(1, 15)]
        assert model.embed(wave).shape == (2, 1024) and model(wave).shape == (2, 521)


def test_keras_h5_of_the_published_shapes_loads_and_computes_as_keras(tmp_path):
    """The whole network at YAMNet's size: the file written with Keras's layout and names, read
    by the registry's loader, and the logits compared with the NumPy/TensorFlow reference."""
    arrays = keras_arrays()
    path = write_keras_h5(tmp_path / "yamnet.h5", arrays)
    with h5py.File(path) as f:
        datasets = []
        f.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
    assert len(datasets) == 110 and "layer1/conv/layer1/conv/kernel:0" in datasets
    model = create_model("yamnet", 521, sample_rate=SR, pretrained=str(path)).eval()
    wave = tone()
    with torch.no_grad():
        patch = model.frontend(wave)[0].T.numpy()  # (96 frames, 64 bands), YAMNet's image
        logits = model(wave)[0].numpy()
        embedding = model.embed(wave)[0].numpy()
    want_embedding, want_logits = yamnet_reference(patch, arrays)
    scale = np.abs(want_logits).max()
    assert np.abs(embedding - want_embedding).max() <= 1e-4 * np.abs(want_embedding).max()
    assert np.abs(logits - want_logits).max() <= 1e-4 * scale


def test_kernels_arrive_transposed_for_our_mel_time_layout(tmp_path):
    """Layer by layer on a small width: our first full and depthwise convolutions against
    TensorFlow's on the (time, mel) image, from the same h5 arrays."""
    arrays = keras_arrays(width=0.125, classes=7, seed=1)
    weights = convert_keras_weights(
        {f"{k.rsplit('/', 1)[0]}/{k}:0": torch.from_numpy(v) for k, v in arrays.items()}
    )
    model = create_model("yamnet", 7, sample_rate=SR, width_multiplier=0.125)
    model.load_state_dict(weights)
    image = np.random.default_rng(2).normal(size=(1, 12, 10, 1))  # (N, time, mel, 1)
    x = torch.from_numpy(image.transpose(0, 3, 2, 1)).float()  # (N, 1, mel, time)
    with torch.no_grad():
        conv1 = model.backbone.layer1.conv(x)
        dw = model.backbone.layer2.depthwise.conv(conv1)
    want1 = tf_conv(image, arrays["layer1/conv/kernel"], 2)
    want_dw = tf_conv(want1, arrays["layer2/depthwise_conv/depthwise_kernel"], 1, True)
    assert np.abs(conv1.numpy().transpose(0, 3, 2, 1) - want1).max() < 1e-5
    assert np.abs(dw.numpy().transpose(0, 3, 2, 1) - want_dw).max() < 1e-5
    assert torch.equal(weights["head.fc.weight"], torch.from_numpy(arrays["logits/kernel"]).T)
    assert weights["backbone.layer5.pointwise.bn.running_var"].shape == (32,)


def test_converter_reads_other_spellings_of_the_names():
    t = torch.ones(3)
    out = convert_keras_weights(
        {
            "model_weights/layer3/depthwise_conv/bn/layer3/depthwise_conv/bn/beta:0": t,
            "layer4/pointwise_conv/bn/moving_mean": t,  # neither repeated nor ":0"
            "something/else": t,
        }
    )
    assert set(out) == {
        "backbone.layer3.depthwise.bn.bias",
        "backbone.layer3.depthwise.bn.num_batches_tracked",
        "backbone.layer4.pointwise.bn.running_mean",
        "backbone.layer4.pointwise.bn.num_batches_tracked",
        "something/else",  # not YAMNet's: passed on, so the loader names it
    }
    with pytest.raises(PretrainedWeightsError, match="gamma"):
        convert_keras_weights({"layer1/conv/bn/layer1/conv/bn/gamma:0": t})


def test_other_class_counts_drop_the_audioset_classifier(tmp_path):
    arrays = keras_arrays(width=0.125, classes=521, seed=3)
    path = write_keras_h5(tmp_path / "yamnet.h5", arrays)
    model = create_model("yamnet", 10, sample_rate=SR, width_multiplier=0.125, pretrained=str(path))
    assert model.head.fc.weight.shape == (10, 128)
    want = torch.from_numpy(arrays["layer14/pointwise_conv/kernel"][0, 0].T)
    assert torch.equal(model.backbone.layer14.pointwise.conv.weight[:, :, 0, 0], want)


def test_pretrained_tag_names_the_public_file_and_its_front_end():
    model = create_model("yamnet", 3, sample_rate=SR, width_multiplier=0.125)
    config = resolve_pretrained(model, "yamnet_audioset")
    assert config.source == "https://storage.googleapis.com/audioset/yamnet.h5"
    assert config.format == "h5" and config.convert is convert_keras_weights
    assert get_model_entry("yamnet").pretrained[0] is config
    config.check_frontend(model)  # the family's default front end is the published one
    other = create_model(
        "yamnet", 3, sample_rate=SR, width_multiplier=0.125, frontend={"n_mels": 96}
    )
    with pytest.raises(PretrainedWeightsError, match="n_mels 64 \\(ours 96\\)"):
        config.load_into(other)  # refused before anything is read


def test_a_trace_at_one_length_stays_right_at_others():
    """The conv STFT and the size-dependent padding trace to one graph: traced at 0.96 s (96
    frames), it still matches eager mode at 1.33 s (133 frames: odd sizes, so other padding at
    every stride-2 layer) and at 0.5 s."""
    torch.manual_seed(0)
    model = create_model("yamnet", 4, sample_rate=SR, width_multiplier=0.125)
    model.train()(torch.randn(4, SR))  # BatchNorm statistics off their defaults
    model.eval()
    net = torch.nn.Sequential(model.frontend, model.backbone)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's remarks about sizes, which is the point
        traced = torch.jit.trace(net, torch.randn(2, 15360), check_trace=False)
        for n in (21281, 8000):
            x = torch.randn(3, n)
            assert torch.allclose(traced(x), net(x), atol=1e-5), n


@pytest.mark.slow
def test_exports_to_onnx_for_any_length(tmp_path):
    """``audio-cls export`` leaves a front end that is not log-mel as it is; ours exports."""
    pytest.importorskip("onnxruntime")
    from audio_cls.export import export_model

    torch.manual_seed(0)
    model = create_model("yamnet", 4, sample_rate=SR, width_multiplier=0.125)
    model.train()(torch.randn(4, SR))
    report = export_model(model.eval(), {"model": "yamnet"}, tmp_path / "m.onnx")
    assert (3, 21281) in report.checked and report.max_prob_diff <= 1e-4
