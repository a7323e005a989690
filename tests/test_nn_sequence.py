"""Sequence-model backbones: Mamba, Liquid-S4, tubelet ViT (plain torch, tiny configs)."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys

import pytest
import torch

from audio_cls.nn.heads import SequencePool
from audio_cls.nn.liquid_s4 import LiquidS4Encoder, LiquidS4Layer, input_correlation
from audio_cls.nn.mamba import (
    MambaEncoder,
    _SelectiveScan,
    kernels_available,
    mamba_mixer_ref,
)
from audio_cls.nn.stem import frame_stem
from audio_cls.nn.tubelet_vit import (
    TubeletViTEncoder,
    load_vjepa2_pooler_state,
    load_vjepa2_state,
)

F_MELS = 16

ENCODERS = {
    "mamba": lambda: MambaEncoder(F_MELS, d_model=16, n_layers=2, d_state=4, use_kernels=False),
    "mamba_bi_attn": lambda: MambaEncoder(
        F_MELS, d_model=16, n_layers=1, d_state=4, bidirectional=True, pooling="attention"
    ),
    "mamba_conv_meanmax": lambda: MambaEncoder(
        F_MELS, d_model=16, n_layers=1, d_state=4, stem="conv", pooling="meanmax"
    ),
    "liquid_polyb": lambda: LiquidS4Encoder(F_MELS, d_model=16, n_layers=2, d_state=8),
    "liquid_conv_attn": lambda: LiquidS4Encoder(
        F_MELS,
        d_model=16,
        n_layers=1,
        d_state=8,
        stem="conv",
        stem_channels=(4,),
        pooling="attention",
    ),
    "liquid_kb_bi": lambda: LiquidS4Encoder(
        F_MELS,
        d_model=16,
        n_layers=1,
        d_state=8,
        liquid_kind="kb",
        liquid_order=3,
        bidirectional=True,
    ),
    "vit": lambda: TubeletViTEncoder(F_MELS, chunk_frames=4, d_model=24, depth=2, num_heads=2),
    "vit_bands_sincos": lambda: TubeletViTEncoder(
        F_MELS, chunk_frames=3, mel_patch=8, d_model=18, depth=1, num_heads=2, pos_embed="sincos"
    ),
    "vit_conv_stem": lambda: TubeletViTEncoder(
        F_MELS, chunk_frames=4, d_model=24, depth=1, num_heads=2, stem="conv", stem_dim=12
    ),
    "vit_bands_learned": lambda: TubeletViTEncoder(
        F_MELS,
        chunk_frames=4,
        mel_patch=4,
        d_model=24,
        depth=1,
        num_heads=2,
        pos_embed="learned",
        max_frames=16,
        remainder="crop",
    ),
}


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request) -> torch.nn.Module:
    torch.manual_seed(0)
    return ENCODERS[request.param]()


# ---------------------------------------------------------------- every encoder


def test_shape_for_two_lengths(encoder):
    for T in (13, 22):  # 22 frames: longer than the learned ViT table (16) -> interpolated
        y = encoder(torch.randn(2, F_MELS, T))
        assert y.shape == (2, encoder.embed_dim)
        assert torch.isfinite(y).all()


def test_backward_gives_finite_grads_for_all_params(encoder):
    encoder.train()
    encoder(torch.randn(3, F_MELS, 17)).square().mean().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_eval_is_deterministic(encoder):
    encoder.eval()
    x = torch.randn(2, F_MELS, 15)
    with torch.no_grad():
        assert torch.equal(encoder(x), encoder(x))


# ---------------------------------------------------------------- stems and pooling


def test_conv_stem_keeps_frame_rate_and_is_equivariant_to_time_shift():
    torch.manual_seed(0)
    stem = frame_stem("conv", F_MELS, 8, channels=(4, 6)).eval()
    x = torch.randn(2, F_MELS, 20)
    y = stem(x)
    assert y.shape == (2, 20, 8)
    # 3x3 convolutions with time stride 1: shifting the input by 3 frames shifts the
    # output by 3 frames wherever the 5-frame receptive field misses the borders and the wrap
    shifted = stem(torch.roll(x, 3, dims=-1))
    assert torch.allclose(shifted[:, 5:18], y[:, 2:15], atol=1e-5)


def test_linear_stem_is_a_per_frame_linear_map():
    stem = frame_stem("linear", F_MELS, 8)
    x = torch.randn(2, F_MELS, 5)
    assert torch.allclose(stem(x), x.transpose(1, 2) @ stem.weight.T + stem.bias)


def test_stem_settings_errors_name_the_field():
    with pytest.raises(ValueError, match="n_mels=20 must be divisible by 2\\*\\*3"):
        frame_stem("conv", 20, 8, channels=(4, 4, 4))
    with pytest.raises(ValueError, match="stem must be 'linear' or 'conv'"):
        frame_stem("patch", F_MELS, 8)


def test_vit_conv_stem_tokens_and_settings():
    vit = TubeletViTEncoder(
        F_MELS, chunk_frames=4, d_model=24, num_heads=2, stem="conv", stem_dim=12
    )
    assert vit.tokenize(torch.randn(2, F_MELS, 13)).shape == (2, 4, 1, 12 * 4)
    with pytest.raises(ValueError, match="mel_patch needs stem='linear'"):
        TubeletViTEncoder(F_MELS, mel_patch=4, d_model=24, num_heads=2, stem="conv")


def test_sequence_pool_kinds():
    x = torch.randn(2, 7, 4)
    assert torch.allclose(SequencePool(4, "mean")(x), x.mean(1))
    assert torch.allclose(SequencePool(4, "meanmax")(x), x.mean(1) + x.amax(1))
    # a zero query weighs every frame alike: attention pooling starts as the mean
    assert torch.allclose(SequencePool(4, "attention")(x), x.mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="pooling must be"):
        SequencePool(4, "median")


# ---------------------------------------------------------------- Mamba


@pytest.mark.parametrize("copied", [False, True])
def test_mamba_ssm_params_carry_no_decay_hint(copied):
    enc = MambaEncoder(F_MELS, d_model=8, n_layers=1, d_state=4, bidirectional=True)
    enc = copy.deepcopy(enc) if copied else enc
    hinted = {n for n, p in enc.named_parameters() if getattr(p, "_optim", None)}
    for mixer in ("mixer", "mixer_rev"):
        for name in ("A_log", "D", "dt_proj.weight", "dt_proj.bias"):
            key = f"layers.0.{mixer}.{name}"
            assert key in hinted
            assert enc.get_parameter(key)._optim == {"weight_decay": 0.0}
    assert "layers.0.mixer.in_proj.weight" not in hinted


def test_mamba_bidirectional_differs_from_unidirectional():
    torch.manual_seed(0)
    bi = MambaEncoder(F_MELS, d_model=16, n_layers=2, d_state=4, bidirectional=True).eval()
    uni = MambaEncoder(F_MELS, d_model=16, n_layers=2, d_state=4).eval()
    shared = {k: v for k, v in bi.state_dict().items() if ".mixer_rev." not in k}
    assert uni.load_state_dict(shared, strict=True) is not None  # same weights but mixer_rev
    x = torch.randn(2, F_MELS, 12)
    with torch.no_grad():
        assert (bi(x) - uni(x)).abs().max() > 1e-4


@pytest.mark.skipif(kernels_available(), reason="transformers bound the CUDA kernels")
@pytest.mark.parametrize("training", [True, False])
def test_mamba_reference_equals_transformers_mixer_on_cpu(training):
    """On CPU without kernels MambaMixer.forward is transformers' own torch path."""
    torch.manual_seed(0)
    enc = MambaEncoder(F_MELS, d_model=16, n_layers=1, d_state=4, use_kernels=False)
    mixer = enc.layers[0].mixer.train(training)
    h = torch.randn(2, 11, 16)
    torch.testing.assert_close(mamba_mixer_ref(mixer, h), mixer(h), atol=1e-5, rtol=1e-5)


def test_selective_scan_backward_matches_finite_differences():
    torch.manual_seed(0)
    b, e, L, n = 2, 3, 7, 4
    kw = {"dtype": torch.float64, "requires_grad": True}
    u = torch.randn(b, e, L, **kw)
    delta = (torch.rand(b, e, L, dtype=torch.float64) + 0.1).requires_grad_()
    A = (-torch.rand(e, n, dtype=torch.float64) - 0.5).requires_grad_()
    B, C = torch.randn(b, L, n, **kw), torch.randn(b, L, n, **kw)
    assert torch.autograd.gradcheck(_SelectiveScan.apply, (u, delta, A, B, C))


@pytest.mark.skipif(kernels_available(), reason="transformers bound the CUDA kernels")
def test_mamba_reference_gradients_equal_transformers_autograd_on_cpu():
    torch.manual_seed(0)
    enc = MambaEncoder(F_MELS, d_model=16, n_layers=1, d_state=4, use_kernels=False)
    mixer = enc.layers[0].mixer
    h = torch.randn(2, 19, 16, requires_grad=True)
    grads = []
    for forward in (lambda x: mamba_mixer_ref(mixer, x), mixer):
        mixer.zero_grad()
        h.grad = None
        forward(h).square().sum().backward()
        grads.append([h.grad.clone()] + [p.grad.clone() for p in mixer.parameters()])
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_mamba_reference_path_runs_on_cpu_and_kernels_refuse_cpu():
    enc = MambaEncoder(F_MELS, d_model=8, n_layers=1, d_state=4)  # auto
    assert enc(torch.randn(1, F_MELS, 9)).shape == (1, 8)
    enc.use_kernels = True
    with pytest.raises(RuntimeError, match="CUDA"):
        enc(torch.randn(1, F_MELS, 9))


def test_importing_mamba_module_imports_no_kernels():
    code = (
        "import sys, audio_cls.nn.mamba\n"
        "mods = ('mamba_ssm', 'causal_conv1d', 'transformers.models.mamba.modeling_mamba')\n"
        "bad = [m for m in mods if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("mamba_ssm") is None,
    reason="needs CUDA and mamba-ssm",
)
def test_mamba_kernel_path_equals_reference_on_gpu(monkeypatch):
    assert kernels_available(), "mamba_ssm is installed but transformers did not bind it"
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # true fp32 on
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # both paths
    torch.manual_seed(0)
    enc = MambaEncoder(F_MELS, d_model=64, n_layers=2, d_state=16, bidirectional=True).cuda()
    x = torch.randn(4, F_MELS, 50, device="cuda")
    for training in (True, False):  # fused mamba_inner_fn / causal_conv1d + selective_scan
        enc.train(training)
        mixer = enc.layers[0].mixer
        h = torch.randn(4, 50, 64, device="cuda")
        torch.testing.assert_close(mixer(h), mamba_mixer_ref(mixer, h), atol=1e-4, rtol=1e-4)
    enc.eval()
    outs, grads = [], []
    for use_kernels in (True, False):
        enc.use_kernels = use_kernels
        enc.zero_grad()
        y = enc(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append(enc.input_proj.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------- Liquid-S4


@pytest.mark.parametrize("copied", [False, True])
def test_liquid_ssm_params_carry_optim_hints(copied):
    enc = LiquidS4Encoder(F_MELS, d_model=8, n_layers=1, d_state=4, ssm_lr=2e-3)
    enc = copy.deepcopy(enc) if copied else enc
    kernel = enc.layers[0].kernel
    for name in ("log_dt", "log_A_real", "A_imag", "B"):
        assert getattr(kernel, name)._optim == {"weight_decay": 0.0, "lr": 2e-3}
    assert not hasattr(kernel.C, "_optim")


def _layer(kind: str, **kw) -> LiquidS4Layer:
    torch.manual_seed(0)  # identical parameters whatever the kind
    return LiquidS4Layer(4, 8, kind, liquid_order=3, dt_min=0.2, dt_max=0.5, **kw).eval()


def test_liquid_kinds_give_different_outputs():
    u = torch.randn(2, 4, 20)
    with torch.no_grad():
        y = {kind: _layer(kind)(u) for kind in ("none", "kb", "polyb")}
    for a, b in (("none", "kb"), ("none", "polyb"), ("kb", "polyb")):
        assert (y[a] - y[b]).abs().max() > 1e-3, (a, b)


def _recurrent_ssm(layer: LiquidS4Layer, u: torch.Tensor, powers: tuple[int, ...]) -> torch.Tensor:
    """x_k = Abar x_{k-1} + Bbar^p u^(p)_k, y_k = 2 Re(C x_k), summed over p, step by step."""
    _, A_bar, B_bar, C = layer.kernel.discretize()  # (H N/2) complex
    y = torch.zeros_like(u)
    for p in powers:
        up = input_correlation(u, p)
        x = torch.zeros(*u.shape[:2], A_bar.shape[-1], dtype=torch.cfloat)  # (B H N/2)
        for k in range(u.shape[-1]):
            x = A_bar * x + B_bar**p * up[..., k, None]
            y[..., k] += 2 * (C * x).sum(-1).real
    return y


@pytest.mark.parametrize(("kind", "powers"), [("none", (1,)), ("kb", (1, 2, 3))])
def test_liquid_convolution_equals_recurrence(kind, powers):
    layer = _layer(kind)
    u = torch.randn(2, 4, 25)
    with torch.no_grad():
        torch.testing.assert_close(
            layer.ssm(layer.kernel, u), _recurrent_ssm(layer, u, powers), atol=1e-4, rtol=1e-4
        )


def test_liquid_kernel_stays_fp32_under_bf16_autocast():
    layer = _layer("kb")
    seen = []
    layer.activation.register_forward_hook(lambda m, i, o: seen.append(i[0].dtype))
    u = torch.randn(2, 4, 16)
    with torch.no_grad():
        ref = layer(u)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer.kernel(16, (1, 2)).dtype == torch.float32
            out = layer(u)
    assert seen == [torch.float32, torch.float32]  # SSM output (pre-activation) is fp32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


# ---------------------------------------------------------------- tubelet ViT


@pytest.mark.parametrize(("remainder", "chunks"), [("pad", 20), ("crop", 19)])
def test_vit_chunks_155_frames_into_documented_tokens(remainder, chunks):
    vit = TubeletViTEncoder(
        128, chunk_frames=8, d_model=8, depth=1, num_heads=2, remainder=remainder
    )
    assert vit.num_chunks(155) == chunks
    assert vit.tokenize(torch.randn(1, 128, 155)).shape == (1, chunks, 1, 128 * 8)
    bands = TubeletViTEncoder(
        128, chunk_frames=8, mel_patch=32, d_model=8, depth=1, num_heads=2, remainder=remainder
    )
    assert bands.tokenize(torch.randn(1, 128, 155)).shape == (1, chunks, 4, 32 * 8)


def test_vit_tokenize_keeps_patch_content():
    vit = TubeletViTEncoder(8, chunk_frames=3, mel_patch=4, d_model=8, depth=1, num_heads=2)
    x = torch.arange(8 * 7, dtype=torch.float32).reshape(1, 8, 7)
    tok = vit.tokenize(x)  # (1 3 2 12): chunks of 3 frames, zero-padded to 9, 2 bands of 4
    assert tok.shape == (1, 3, 2, 12)
    torch.testing.assert_close(tok[0, 1, 1].reshape(4, 3), x[0, 4:8, 3:6])
    assert tok[0, 2, 0].reshape(4, 3)[:, 1:].abs().sum() == 0  # padding


def _public_vjepa2_state(pooler_layers: int = 1):
    from transformers import VJEPA2Config
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2ForVideoClassification

    cfg = VJEPA2Config(
        hidden_size=24,
        num_attention_heads=2,
        num_hidden_layers=2,
        num_pooler_layers=pooler_layers,
        crop_size=16,
        patch_size=8,
        frames_per_clip=4,
        tubelet_size=2,
        pred_hidden_size=8,
        pred_num_attention_heads=2,
        pred_num_hidden_layers=1,
        num_labels=3,
    )
    torch.manual_seed(1)
    return VJEPA2ForVideoClassification(cfg).eval()


def test_vjepa2_public_keys_load_into_ours():
    hf = _public_vjepa2_state()
    sd = hf.state_dict()
    torch.manual_seed(0)
    ours = TubeletViTEncoder(F_MELS, chunk_frames=4, d_model=24, depth=2, num_heads=2).eval()
    loaded = load_vjepa2_state(ours, sd, encoder=True)
    assert "pooler.query_tokens" in loaded and "blocks.1.mlp.fc2.weight" in loaded
    torch.testing.assert_close(
        ours.blocks[1].attention.query.weight, sd["vjepa2.encoder.layer.1.attention.query.weight"]
    )
    torch.testing.assert_close(ours.norm.bias, sd["vjepa2.encoder.layernorm.bias"])
    h = torch.randn(2, 7, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours.pooler(h), hf.pooler(h))
    # VJEPA2Model-style keys (no "vjepa2." prefix) and pooler-only loading
    fresh = TubeletViTEncoder(F_MELS, chunk_frames=4, d_model=24, depth=2, num_heads=2)
    model_keys = {k.removeprefix("vjepa2."): v for k, v in sd.items()}
    assert all(k.startswith("pooler.") for k in load_vjepa2_pooler_state(fresh, model_keys))


def test_vjepa2_mismatch_raises_clear_error():
    sd = _public_vjepa2_state(pooler_layers=2).state_dict()
    narrow = TubeletViTEncoder(F_MELS, d_model=16, depth=2, num_heads=2, pooler_layers=2)
    with pytest.raises(ValueError, match=r"shape mismatch pooler\.query_tokens"):
        load_vjepa2_pooler_state(narrow, sd)
    shallow = TubeletViTEncoder(F_MELS, d_model=24, depth=2, num_heads=2, pooler_layers=1)
    with pytest.raises(ValueError, match="pooler_layers=2"):
        load_vjepa2_pooler_state(shallow, sd)


def test_vjepa2_classifier_starts_from_pretrained_folder_at_fit_only(tmp_path):
    from safetensors.torch import save_file

    from audio_cls.models import VJEPA2Classifier

    hf = _public_vjepa2_state()
    save_file(
        {k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors"
    )
    kw = {"num_classes": 3, "class_names": ["a", "b", "c"], "sample_rate": 16000, "n_mels": 16}
    kw |= {"d_model": 24, "depth": 2, "num_heads": 2, "pretrained": str(tmp_path)}
    model = VJEPA2Classifier(pretrained_encoder=True, **kw)
    query = model.backbone.pooler.query_tokens
    assert not torch.equal(query, hf.pooler.query_tokens)
    model.setup("test")  # rebuilding a trained model for test/predict fetches nothing
    assert not torch.equal(query, hf.pooler.query_tokens)
    model.setup("fit")
    torch.testing.assert_close(query, hf.pooler.query_tokens)
    torch.testing.assert_close(
        model.backbone.blocks[0].mlp.fc1.weight, hf.vjepa2.encoder.layer[0].mlp.fc1.weight
    )


def test_fetch_state_dict_errors_name_the_source(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from audio_cls.nn.weights import PretrainedWeightsError, fetch_state_dict

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(PretrainedWeightsError, match=r"audio-cls-test/no-such-repo.*local folder"):
        fetch_state_dict("audio-cls-test/no-such-repo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedWeightsError, match=r"no \.safetensors file"):
        fetch_state_dict(str(tmp_path / "empty"))
    bad = tmp_path / "bad" / "model.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(PretrainedWeightsError, match=r"model\.safetensors: unreadable"):
        fetch_state_dict(str(bad.parent))
