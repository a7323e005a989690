"""Sequence-model backbones: Mamba, Liquid-S4, tubelet ViT (plain torch, tiny configs)."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from audio_cls.nn.heads import ClassifierHead, FeaturePool
from audio_cls.nn.liquid_s4 import LiquidS4Encoder, LiquidS4Layer, input_correlation
from audio_cls.nn.mamba import (
    MambaEncoder,
    _SelectiveScan,
    kernels_available,
    mamba_mixer_ref,
)
from audio_cls.nn.stem import frame_stem
from audio_cls.nn.tubelet_vit import TubeletViTEncoder

F_MELS = 16

# name -> (encoder, the pooling its head uses); the ViTs pool with V-JEPA2's attentive pooler
ENCODERS = {
    "mamba": (
        lambda: MambaEncoder(F_MELS, d_model=16, n_layers=2, d_state=4, use_kernels=False),
        "mean",
    ),
    "mamba_bi_attn": (
        lambda: MambaEncoder(F_MELS, d_model=16, n_layers=1, d_state=4, bidirectional=True),
        "attention",
    ),
    "mamba_conv_meanmax": (
        lambda: MambaEncoder(F_MELS, d_model=16, n_layers=1, d_state=4, stem="conv"),
        "meanmax",
    ),
    "liquid_polyb": (lambda: LiquidS4Encoder(F_MELS, d_model=16, n_layers=2, d_state=8), "mean"),
    "liquid_conv_attn": (
        lambda: LiquidS4Encoder(
            F_MELS, d_model=16, n_layers=1, d_state=8, stem="conv", stem_channels=(4,)
        ),
        "attention",
    ),
    "liquid_kb_bi": (
        lambda: LiquidS4Encoder(
            F_MELS,
            d_model=16,
            n_layers=1,
            d_state=8,
            liquid_kind="kb",
            liquid_order=3,
            bidirectional=True,
        ),
        "mean",
    ),
    "vit": (
        lambda: TubeletViTEncoder(F_MELS, chunk_frames=4, d_model=24, depth=2, num_heads=2),
        "attentive",
    ),
    "vit_bands_sincos": (
        lambda: TubeletViTEncoder(
            F_MELS,
            chunk_frames=3,
            mel_patch=8,
            d_model=18,
            depth=1,
            num_heads=2,
            pos_embed="sincos",
        ),
        "attentive",
    ),
    "vit_conv_stem": (
        lambda: TubeletViTEncoder(
            F_MELS, chunk_frames=4, d_model=24, depth=1, num_heads=2, stem="conv", stem_dim=12
        ),
        "attentive",
    ),
    "vit_bands_learned": (
        lambda: TubeletViTEncoder(
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
        "attentive",
    ),
}


class Pooled(nn.Module):
    """An encoder and the pooling a classifier head puts on it: ``(B F T) -> (B D)``."""

    def __init__(self, encoder: nn.Module, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        heads = getattr(encoder, "num_heads", 1)  # the attentive pooler's default, as in models
        self.pool = FeaturePool(encoder.num_features, pooling, encoder.layout, heads=heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder(x))


@pytest.fixture(params=sorted(ENCODERS))
def encoder(request) -> Pooled:
    torch.manual_seed(0)
    build, pooling = ENCODERS[request.param]
    return Pooled(build(), pooling)


def _sequence_length(encoder: nn.Module, frames: int) -> int:
    """Frames for the SSMs (the stems keep the frame rate), tokens for the ViT."""
    if isinstance(encoder, TubeletViTEncoder):
        return encoder.num_chunks(frames) * encoder.n_bands
    return frames


# ---------------------------------------------------------------- every encoder


def test_shape_for_two_lengths(encoder):
    enc = encoder.encoder
    assert enc.layout == "sequence"
    for T in (13, 22):  # 22 frames: longer than the learned ViT table (16) -> interpolated
        x = torch.randn(2, F_MELS, T)
        h = enc(x)  # unpooled
        assert h.shape == (2, _sequence_length(enc, T), enc.num_features)
        assert torch.isfinite(h).all()
        y = encoder(x)
        assert y.shape == (2, enc.num_features)
        assert torch.isfinite(y).all()


def test_intermediates_end_with_the_forward_output(encoder):
    enc = encoder.encoder.eval()
    x = torch.randn(2, F_MELS, 13)
    with torch.no_grad():
        taps = enc.forward_intermediates(x)
        y = enc(x)
    assert list(taps)[-1] == "norm"
    torch.testing.assert_close(taps["norm"], y, atol=0, rtol=0)
    for name, tap in taps.items():
        assert tap.shape == y.shape, name
        assert torch.isfinite(tap).all(), name
    blocks = enc.blocks if isinstance(enc, TubeletViTEncoder) else enc.layers
    assert len(taps) == len(blocks) + 2  # embedding, one per block, final norm


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
        assert torch.equal(encoder.encoder(x), encoder.encoder(x))
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


def test_feature_pool_kinds():
    x = torch.randn(2, 7, 4)
    assert torch.allclose(FeaturePool(4, "mean")(x), x.mean(1))
    assert torch.allclose(FeaturePool(4, "max")(x), x.amax(1))
    assert torch.allclose(FeaturePool(4, "meanmax")(x), x.mean(1) + x.amax(1))
    # a zero query weighs every frame alike: attention pooling starts as the mean
    assert torch.allclose(FeaturePool(4, "attention")(x), x.mean(1), atol=1e-6)
    # ... with one query slice per head, and the same parameters whatever the heads
    two = FeaturePool(4, "attention", heads=2)
    assert torch.allclose(two(x), x.mean(1), atol=1e-6)
    shapes = {n: p.shape for n, p in FeaturePool(4, "attention").named_parameters()}
    assert {n: p.shape for n, p in two.named_parameters()} == shapes
    with pytest.raises(ValueError, match="pooling must be"):
        FeaturePool(4, "median")


def test_attention_pool_heads_weigh_frames_independently():
    torch.manual_seed(0)
    pool = FeaturePool(4, "attention", heads=2)
    with torch.no_grad():
        pool.attn.query.copy_(torch.tensor([0.0, 0.0, 5.0, 5.0]))  # only head 1 looks
    x = torch.randn(2, 7, 4)
    y = pool(x)
    torch.testing.assert_close(y[:, :2], x[:, :, :2].mean(1))  # head 0 is still the mean
    assert (y[:, 2:] - x[:, :, 2:].mean(1)).abs().max() > 1e-3


def test_attentive_pool_is_vjepa2s_pooler():
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2AttentivePooler

    torch.manual_seed(0)
    pool = FeaturePool(8, "attentive", heads=2, layers=2).eval()
    pooler = pool.attentive.pooler
    assert isinstance(pooler, VJEPA2AttentivePooler)
    assert len(pooler.self_attention_layers) == 2
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        y = pool(x)
        torch.testing.assert_close(y, pooler(x))
    assert y.shape == (2, 8)


def test_classifier_head_pools_then_classifies():
    torch.manual_seed(0)
    head = ClassifierHead(4, 3, pooling="attention", dropout=0.5).eval()
    x = torch.randn(2, 7, 4)
    with torch.no_grad():
        embedding = head(x, pre_logits=True)
        torch.testing.assert_close(embedding, x.mean(1), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(head(x), head.fc(embedding))
    assert head(x).shape == (2, 3)


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
    assert enc(torch.randn(1, F_MELS, 9)).shape == (1, 9, 8)
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


# ---------------------------------------------------------------- V-JEPA2 weights

#: A tiny ``vjepa2`` model the public test checkpoint fits (width 24, depth 2, 2 heads).
TINY_VJEPA2 = {
    "d_model": 24,
    "depth": 2,
    "num_heads": 2,
    "pooling": "attentive",
    "pool_layers": 1,
    "frontend": {"n_mels": F_MELS},
}
#: Our parts a V-JEPA2 classification checkpoint provides: blocks, final norm, pooler.
VJEPA2_PARTS = ["backbone.blocks.", "backbone.norm.", "head.pool."]


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


def _save_public(state: dict[str, torch.Tensor], folder: Path) -> Path:
    """``state`` as ``folder/model.safetensors``, as the hub publishes it; returns the folder."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return folder


def _vjepa2(num_classes: int = 3, **options):
    from audio_cls.models import create_model

    torch.manual_seed(0)
    return create_model("vjepa2", num_classes=num_classes, **{**TINY_VJEPA2, **options})


def _assert_blocks_equal(model, state: dict[str, torch.Tensor], prefix: str) -> None:
    """Every tensor of our blocks and final norm equals the published one (``prefix`` =
    ``vjepa2.encoder.`` or ``encoder.``)."""
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(tuple(VJEPA2_PARTS[:2]))}
    theirs = {
        k: v for k, v in state.items() if k.startswith((prefix + "layer.", prefix + "layernorm."))
    }
    assert len(ours) == len(theirs) > 0
    for key, value in ours.items():
        public = key.replace("backbone.blocks.", prefix + "layer.").replace(
            "backbone.norm.", prefix + "layernorm."
        )
        torch.testing.assert_close(value, theirs[public], atol=0, rtol=0, msg=key)


def _assert_pooler_equal(model, hf) -> None:
    """Our attentive pooler holds the published tensors and computes what theirs does."""
    pooler = model.head.pool.attentive.pooler
    ours, theirs = pooler.state_dict(), hf.pooler.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)
    h = torch.randn(2, 7, 24)
    with torch.no_grad():
        torch.testing.assert_close(pooler(h), hf.pooler(h))
        torch.testing.assert_close(model.head(h, pre_logits=True), hf.pooler(h))


def test_vjepa2_public_keys_load_into_ours(tmp_path):
    hf = _public_vjepa2_state()
    sd = hf.state_dict()
    folder = _save_public(sd, tmp_path / "cls")
    ours = _vjepa2(pretrained_prefixes=VJEPA2_PARTS).eval()
    patch_embed = ours.backbone.patch_embed.weight.detach().clone()
    loaded = ours.load_pretrained(str(folder / "model.safetensors"))  # one file
    assert "head.pool.attentive.pooler.query_tokens" in loaded
    assert "backbone.blocks.1.mlp.fc2.weight" in loaded
    assert set(loaded) == {k for k in ours.state_dict() if k.startswith(tuple(VJEPA2_PARTS))}
    torch.testing.assert_close(
        ours.backbone.blocks[1].attention.query.weight,
        sd["vjepa2.encoder.layer.1.attention.query.weight"],
    )
    torch.testing.assert_close(ours.backbone.norm.bias, sd["vjepa2.encoder.layernorm.bias"])
    _assert_blocks_equal(ours, sd, "vjepa2.encoder.")
    _assert_pooler_equal(ours, hf)
    # the RGB video patch embedding never transfers
    assert torch.equal(ours.backbone.patch_embed.weight, patch_embed)
    # create_model(pretrained=folder) loads at once, with the family's default (encoder) parts
    model = _vjepa2(pretrained=str(folder))
    _assert_blocks_equal(model, sd, "vjepa2.encoder.")


def test_vjepa2_model_keys_and_pooler_only_loading(tmp_path):
    hf = _public_vjepa2_state()
    # VJEPA2Model-style keys: no "vjepa2." prefix
    model_keys = {k.removeprefix("vjepa2."): v for k, v in hf.state_dict().items()}
    folder = _save_public(model_keys, tmp_path / "model")
    full = _vjepa2(pretrained=str(folder), pretrained_prefixes=VJEPA2_PARTS)
    _assert_blocks_equal(full, model_keys, "encoder.")
    _assert_pooler_equal(full, hf)
    # pooler-only loading: the depth may differ from the checkpoint's
    shallow = _vjepa2(depth=1, pretrained_prefixes=["head.pool"])
    blocks = {k: v.clone() for k, v in shallow.backbone.state_dict().items()}
    loaded = shallow.load_pretrained(str(folder))
    assert all(k.startswith("head.pool.attentive.pooler.") for k in loaded)
    assert len(loaded) == sum(k.startswith("pooler.") for k in model_keys)
    _assert_pooler_equal(shallow, hf)
    for key, value in shallow.backbone.state_dict().items():  # the backbone kept its own
        assert torch.equal(value, blocks[key]), key


def test_vjepa2_mismatch_raises_clear_error(tmp_path):
    from audio_cls.nn.weights import PretrainedWeightsError

    sd = _public_vjepa2_state(pooler_layers=2).state_dict()
    source = str(_save_public(sd, tmp_path / "cls"))
    narrow = _vjepa2(d_model=16, pool_layers=2, pretrained_prefixes=["head.pool"])
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    with pytest.raises(
        PretrainedWeightsError,
        match=r"mis-shaped:\n\s+head\.pool\.attentive\.pooler\.query_tokens: "
        r"checkpoint \(1, 1, 24\) vs model \(1, 1, 16\)",
    ):
        narrow.load_pretrained(source)
    for key, value in narrow.state_dict().items():  # nothing loads when anything misfits
        assert torch.equal(value, before[key]), key
    with pytest.raises(
        PretrainedWeightsError,
        match=r"backbone\.blocks\.0\.attention\.query\.weight: "
        r"checkpoint \(24, 24\) vs model \(16, 16\)",
    ):
        _vjepa2(d_model=16, pretrained=source)
    # pooler self-attention layers: fewer or more than the checkpoint's
    layer1 = sum(k.startswith("pooler.self_attention_layers.1.") for k in sd)
    with pytest.raises(
        PretrainedWeightsError,
        match=rf"0 missing, {layer1} unexpected, 0 mis-shaped(.|\n)*unexpected "
        r"\(in the checkpoint, not in the model\):\n"
        r"\s+head\.pool\.attentive\.pooler\.self_attention_layers\.1\.",
    ):
        _vjepa2(pool_layers=1, pretrained=source, pretrained_prefixes=["head.pool"])
    with pytest.raises(
        PretrainedWeightsError,
        match=rf"{layer1} missing, 0 unexpected, 0 mis-shaped(.|\n)*missing "
        r"\(in the model, not in the checkpoint\):\n"
        r"\s+head\.pool\.attentive\.pooler\.self_attention_layers\.2\.",
    ):
        _vjepa2(pool_layers=3, pretrained=source, pretrained_prefixes=["head.pool"])
    # pooler keys land only in an attentive pooler
    n_pooler = sum(k.startswith("pooler.") for k in sd)
    with pytest.raises(
        PretrainedWeightsError, match=rf"0 missing, {n_pooler} unexpected, 0 mis-shaped"
    ):
        _vjepa2(pooling="mean", pretrained=source, pretrained_prefixes=["head.pool"])


def test_vjepa2_classifier_starts_from_pretrained_folder_at_fit_only(tmp_path):
    from audio_cls.models import VJEPA2Classifier

    hf = _public_vjepa2_state()
    folder = _save_public(hf.state_dict(), tmp_path)
    kw = {"num_classes": 3, "class_names": ["a", "b", "c"], "sample_rate": 16000}
    kw |= {"frontend": {"n_mels": F_MELS}, "d_model": 24, "depth": 2, "num_heads": 2}
    kw |= {"pretrained": str(folder), "pretrained_prefixes": VJEPA2_PARTS}
    model = VJEPA2Classifier(**kw)
    query = model.head.pool.attentive.pooler.query_tokens
    assert not torch.equal(query, hf.pooler.query_tokens)
    model.setup("test")  # rebuilding a trained model for test/predict fetches nothing
    assert not torch.equal(query, hf.pooler.query_tokens)
    model.setup("fit")
    torch.testing.assert_close(query, hf.pooler.query_tokens)
    torch.testing.assert_close(
        model.backbone.blocks[0].mlp.fc1.weight, hf.vjepa2.encoder.layer[0].mlp.fc1.weight
    )


def test_vjepa2_classification_checkpoint_path_loads_pooler_and_classifier(tmp_path):
    hf = _public_vjepa2_state()
    source = str(_save_public(hf.state_dict(), tmp_path))
    model = _vjepa2(pretrained=source).eval()
    _assert_blocks_equal(model, hf.state_dict(), "vjepa2.encoder.")
    _assert_pooler_equal(model, hf)
    torch.testing.assert_close(model.head.fc.weight, hf.classifier.weight)
    torch.testing.assert_close(model.head.fc.bias, hf.classifier.bias)


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
