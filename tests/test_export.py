"""Export: the exportable log-mel, export-ready copies, ONNX/TorchScript parity per family at
several batch sizes and lengths, metadata, refusals, and classify's onnxruntime backend."""

import csv
import json
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from audio_cls.cli import main
from audio_cls.commands import UsageError
from audio_cls.commands.classify import predict_inputs
from audio_cls.export import (
    META_KEYS,
    ExportError,
    export_model,
    export_ready,
    load_onnx,
)
from audio_cls.models import create_model, get_model_entry, load_classifier
from audio_cls.nn.frontends import LogMelFrontend, LogMelSettings
from audio_cls.nn.stft import ExportableLogMel, exportable_copy

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SR = 16000
FAMILIES = ["mel_cnn", "liquid_s4", "vjepa2", "mamba"]
NAMES = ["dog", "rain", "siren"]


def _tiny(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(
        name, 3, **get_model_entry(name).tiny, frontend={"n_mels": 32}, class_names=NAMES
    ).eval()


def _save(model: nn.Module, path) -> None:
    """As `fit` writes it, with 0.5 s windows and 0.25 s hops recorded."""
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["audio_cls"]["segments"] = {"sample_rate": SR, "window_sec": 0.5, "hop_sec": 0.25}
    torch.save(ckpt, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny checkpoint per family (32 mels)."""
    folder = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for i, name in enumerate(FAMILIES):
        paths[name] = folder / f"{name}.ckpt"
        _save(_tiny(name, seed=i), paths[name])
    return paths


@pytest.fixture(scope="module")
def onnx_files(checkpoints, tmp_path_factory):
    """Each family exported through the verb."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, ckpt in checkpoints.items():
        out[name] = folder / f"{name}.onnx"
        main(["export", "--ckpt", str(ckpt), "--out", str(out[name])])
    return out


def _signals(batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / SR
    x = 0.05 * torch.randn(batch, length, generator=g)
    return x + 0.3 * torch.sin(2 * torch.pi * (200 + 300 * torch.rand(batch, 1, generator=g)) * t)


# ---------------------------------------------------------------------- exportable front end
@pytest.mark.parametrize(
    ("rate", "settings"),
    [
        (16000, LogMelSettings()),  # MelCNN's: 25 ms in a 512-point FFT (window zero-padded)
        (16000, LogMelSettings(n_mels=128, win_ms=64.0, hop_ms=32.0)),  # the SSM families'
        (22050, LogMelSettings(n_mels=40, n_fft=2048, f_max=8000.0)),
    ],
)
def test_exportable_logmel_matches_torchaudio(rate, settings):
    torch.manual_seed(0)
    source = settings.build(rate)
    with torch.no_grad():  # non-trivial per-bin statistics, so the norm is really checked
        source.norm.running_mean.uniform_(-12, -2)
        source.norm.running_var.uniform_(1, 9)
    source.eval()
    ours = ExportableLogMel(source)
    loud = 0.9 * torch.sign(torch.randn(1, rate))
    x = torch.cat([_signals(2, rate, 1), torch.zeros(1, rate), loud, 1e-4 * torch.randn(1, rate)])
    with torch.no_grad():
        expected, got = source.log_mel(x), ours.log_mel(x)
        assert got.shape == expected.shape == (5, settings.n_mels, source.num_frames(rate))
        assert (got - expected).abs().max() < 1e-3
        assert (ours(x) - source(x)).abs().max() < 1e-3


def test_exportable_logmel_shares_the_source_tensors_and_has_no_training_path():
    source = LogMelSettings(n_mels=32).build(SR)
    ours = ExportableLogMel(source)
    assert ours.fb.data_ptr() == source.mel.mel_scale.fb.data_ptr()
    assert ours.norm is source.norm
    assert not hasattr(ours, "spec_augment")
    assert ours.num_frames(12345) == source.num_frames(12345)
    assert ours.output == source.output


def test_exportable_copy_leaves_the_model_as_it_was():
    model = _tiny("mel_cnn").train()
    copy = exportable_copy(model)
    assert isinstance(copy.frontend, ExportableLogMel) and not copy.training
    assert isinstance(model.frontend, LogMelFrontend) and model.training


@pytest.mark.parametrize("name", FAMILIES)
def test_export_ready_copy_computes_what_the_model_computes(name):
    """Features, not only probabilities: a tiny random model's probabilities are near uniform
    and would hide an adapter that dropped a term (Mamba's scan alone moves them ~2e-3)."""
    model = _tiny(name)
    ready = export_ready(model)
    x = _signals(2, 9000, 3)
    with torch.no_grad():
        expected = model.backbone(model.frontend(x))
        got = ready.backbone(ready.frontend(x))
        assert (got - expected).abs().max() < 1e-4
        assert (ready(x) - model(x)).abs().max() < 1e-4


# ---------------------------------------------------------------------- ONNX parity per family
@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_matches_pytorch_at_other_batch_sizes_and_lengths(name, checkpoints, onnx_files):
    model, _ = load_classifier(checkpoints[name])
    session = ort.InferenceSession(str(onnx_files[name]), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 4):
        for length in (8000, 12345):  # the window (traced at batch 2) and another length
            x = _signals(batch, length, batch * length)
            with torch.no_grad():
                expected = model(x).softmax(-1).numpy()
            (logits,) = session.run(None, {"waveform": x.numpy()})
            got = torch.from_numpy(logits).softmax(-1).numpy()
            assert got.shape == (batch, 3)
            worst = max(worst, float(np.abs(got - expected).max()))
    assert worst < 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_file_carries_the_contract(name, checkpoints, onnx_files):
    proto = onnx.load(str(onnx_files[name]))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert set(META_KEYS) <= set(meta)
    assert meta["model"] == name and meta["class_names"] == NAMES
    assert meta["sample_rate"] == SR
    assert (meta["window_sec"], meta["hop_sec"]) == (0.5, 0.25)
    assert meta["frontend"]["kind"] == "logmel" and meta["frontend"]["n_mels"] == 32
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "samples"]
    assert {op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")} == {17}


def test_torchscript_export_runs_other_shapes(checkpoints, tmp_path, capsys):
    out = tmp_path / "m.pt"
    main(
        [
            "export",
            "--ckpt",
            str(checkpoints["vjepa2"]),
            "--out",
            str(out),
            "--format",
            "torchscript",
        ]
    )
    assert "max |diff|" in capsys.readouterr().out
    extra = {"audio_cls.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(json.loads(extra["audio_cls.json"])["class_names"]) == NAMES
    model, _ = load_classifier(checkpoints["vjepa2"])
    x = _signals(5, 11111, 0)
    with torch.no_grad():
        assert (scripted(x).softmax(-1) - model(x).softmax(-1)).abs().max() < 1e-4


# ---------------------------------------------------------------------- refusals
def test_a_file_off_by_more_than_the_tolerance_is_refused_and_removed(checkpoints, tmp_path):
    out = tmp_path / "m.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "audio_cls.cli",
            "export",
            "--ckpt",
            str(checkpoints["mel_cnn"]),
            "--out",
            str(out),
            "--tolerance",
            "1e-12",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("audio-cls: error:")]
    assert "more than --tolerance 1e-12" in line and "nothing was written" in line
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


class _SpectrumBackbone(nn.Module):
    """Needs ``torch.fft.rfft``, which the TorchScript-based exporter cannot write."""

    num_features, layout = 8, "map"

    def forward(self, x):
        return torch.fft.rfft(x, dim=-1).abs().unsqueeze(1).expand(-1, 8, -1, -1)


def test_a_family_that_does_not_export_is_one_clean_line(tmp_path, capfd):
    model = _tiny("mel_cnn")
    model.backbone = _SpectrumBackbone()
    with pytest.raises(ExportError) as err:
        export_model(model, {"model": "spectral"}, tmp_path / "m.onnx")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("spectral does not export to onnx: ")
    assert "fft" in message and message.endswith("classify it with --backend torch")
    assert len(message) < 400
    assert list(tmp_path.iterdir()) == []
    assert "Torch IR graph" not in capfd.readouterr().err  # the exporter's dump is silenced


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tolerance", "0"], "--tolerance must be > 0"),
        (["--opset", "9"], "--opset must be between 14 and 20"),
    ],
)
def test_export_option_ranges(checkpoints, tmp_path, args, message):
    with pytest.raises(UsageError, match=message):
        main(
            [
                "export",
                "--ckpt",
                str(checkpoints["mel_cnn"]),
                "--out",
                str(tmp_path / "m.onnx"),
                *args,
            ]
        )


# ---------------------------------------------------------------------- classify on onnxruntime
@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([0.3, 1.0, 1.7, 2.6]):  # one shorter than a window
        t = np.arange(int(SR * seconds)) / SR
        x = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 250 * (i + 1) * t)
        paths.append(folder / f"c{i}.wav")
        sf.write(paths[-1], x.astype(np.float32), SR)
    return paths


@pytest.mark.parametrize("name", ["mel_cnn", "liquid_s4"])
def test_onnxruntime_backend_equals_torch_backend(name, checkpoints, onnx_files, wavs):
    inputs = [str(p) for p in wavs]
    torch_res, torch_names, _ = predict_inputs(checkpoints[name], inputs, batch_size=3)
    ort_res, ort_names, predictor = predict_inputs(
        onnx_files[name], inputs, batch_size=3, backend="onnxruntime"
    )
    assert ort_names == torch_names == NAMES
    assert (predictor.windows.window, predictor.windows.hop) == (8000, 4000)
    assert ort_res.clip_ids == torch_res.clip_ids and not ort_res.errors
    assert torch.equal(ort_res.segment_starts, torch_res.segment_starts)
    assert (ort_res.probs - torch_res.probs).abs().max() < 1e-4
    assert (ort_res.segment_probs - torch_res.segment_probs).abs().max() < 1e-4


def test_classify_verb_with_the_onnxruntime_backend(checkpoints, onnx_files, wavs, tmp_path):
    common = [str(p) for p in wavs] + ["--top-k", "2"]
    main(
        [
            "classify",
            "--ckpt",
            str(checkpoints["vjepa2"]),
            *common,
            "--out",
            str(tmp_path / "t.csv"),
        ]
    )
    main(
        [
            "classify",
            "--backend",
            "onnxruntime",
            "--ckpt",
            str(onnx_files["vjepa2"]),
            *common,
            "--out",
            str(tmp_path / "o.csv"),
        ]
    )
    rows = [
        list(csv.DictReader((tmp_path / f).read_text().splitlines())) for f in ("t.csv", "o.csv")
    ]
    assert [r["prediction"] for r in rows[0]] == [r["prediction"] for r in rows[1]]
    assert [r["clip_id"] for r in rows[1]] == ["c0", "c1", "c2", "c3"]


@pytest.mark.parametrize(
    ("backend", "which", "message"),
    [
        ("torch", "onnx", r"is an ONNX file: add --backend onnxruntime"),
        ("onnxruntime", "ckpt", r"is a PyTorch checkpoint: the onnxruntime backend reads"),
        ("onnxruntime", "missing", r"ONNX file not found"),
        ("onnxruntime", "wav", r"not a readable ONNX model"),
    ],
)
def test_backend_and_file_mismatches_are_one_line(
    checkpoints, onnx_files, wavs, tmp_path, backend, which, message
):
    path = {
        "onnx": onnx_files["mel_cnn"],
        "ckpt": checkpoints["mel_cnn"],
        "missing": tmp_path / "none.onnx",
        "wav": wavs[0],
    }[which]
    with pytest.raises(UsageError, match=message) as err:
        main(["classify", "--backend", backend, "--ckpt", str(path), str(wavs[0])])
    assert "\n" not in str(err.value)


def test_an_onnx_file_without_our_metadata_is_named(tmp_path):
    path = tmp_path / "plain.onnx"
    with torch.no_grad():
        torch.onnx.export(nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), dynamo=False)
    with pytest.raises(ExportError, match=r"plain.onnx: has no audio-cls metadata"):
        load_onnx(path)
