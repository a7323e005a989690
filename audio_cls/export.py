"""Export a classifier, front end included, to ONNX (or TorchScript), and run an ONNX file.

The exported graph maps waveforms ``(batch, samples)`` (float32, the model's sample rate) to
logits ``(batch, classes)``, with both input axes dynamic. It is traced from an export-ready
copy of the model (:func:`export_ready`):

- the torchaudio log-mel front end becomes :class:`~audio_cls.nn.stft.ExportableLogMel`
  (a strided ``Conv1d`` with fixed DFT kernels, the model's own mel matrix and BatchNorm);
- backbone parts whose eager code does not trace to a length-independent graph get an
  equivalent written for tracing (:data:`_ADAPTERS`): the Liquid-S4 kernel in real arithmetic
  with its causal convolution as a Toeplitz matmul (complex tensors and ``rfft`` have no ONNX
  export) and Mamba's selective scan as a scripted loop (an ONNX ``Loop``; the eager
  scan is a Python loop the tracer would unroll, writing into preallocated buffers it loses).

Exporter: ``torch.onnx.export(dynamo=False)``, the TorchScript-based one, which handles these
ops with dynamic axes (the dynamo exporter needs ``onnxscript``, which the ``export`` extra
does not bring). Opset :data:`OPSET` (17): the first with ``LayerNormalization`` as one
operator, and run by every current runtime (onnxruntime >= 1.12, OpenVINO, TensorRT 8.5+).

After writing, the file is checked against the PyTorch model at three batch sizes and two
lengths (:func:`export_model`); a file whose probabilities differ by more than the tolerance
(default :data:`DEFAULT_TOLERANCE`, 1e-4 absolute) is deleted and refused.

The checkpoint's contract travels as ONNX ``metadata_props`` (JSON strings, :data:`META_KEYS`):
:func:`load_onnx` reads it back and returns an :class:`OnnxClassifier`, a callable the
inference core (:class:`~audio_cls.inference.Predictor`) takes in place of the torch model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from audio_cls.extras import require
from audio_cls.nn.liquid_s4 import LiquidS4Layer, S4DKernel, input_correlation
from audio_cls.nn.mamba import MambaEncoder, MambaLayer
from audio_cls.nn.stft import ExportableLogMel, exportable_copy

__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "META_KEYS",
    "OPSET",
    "ExportError",
    "ExportReport",
    "OnnxClassifier",
    "export_metadata",
    "export_model",
    "export_ready",
    "load_onnx",
    "section_from_metadata",
]

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
OPSET = 17
#: Largest |p_exported - p_torch| accepted, on class probabilities (float32 rounding in a
#: different summation order stays near 1e-6; a wrong graph is off by far more).
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "waveform", "logits"
#: The ``metadata_props`` an exported file carries, each a JSON string.
META_KEYS = (
    "audio_cls_format",
    "model",
    "class_names",
    "sample_rate",
    "window_sec",
    "hop_sec",
    "short_clip",
    "frontend",
    "features",
)
#: Version of that metadata layout.
META_FORMAT = 1


class ExportError(ValueError):
    """A model does not export, or its exported file does not match it; one line, for users."""


# ---------------------------------------------------------------------- export-ready copy
class _RealS4Kernel(nn.Module):
    """An :class:`S4DKernel` in real arithmetic, for the orders one layer uses.

    ``K^(p)_l = 2 Re sum_n W_pn exp(dtA_n l)`` with ``W_p = C Bbar^p``: ``W`` and ``dtA``
    depend on the parameters only, so they are computed once here (complex) and kept as real
    and imaginary parts; the graph evaluates ``exp(Re dtA l) (cos, sin)(Im dtA l)``.

    Args:
        kernel: The trained kernel.
        powers: The orders ``p`` the layer needs, 1 first.
    """

    def __init__(self, kernel: S4DKernel, powers: tuple[int, ...]) -> None:
        super().__init__()
        with torch.no_grad():
            dtA, _, B_bar, C = kernel.discretize()
            W = torch.stack([C * B_bar**p for p in powers])  # (P H N)
        self.register_buffer("rate", dtA.real.contiguous())  # (H N)
        self.register_buffer("freq", dtA.imag.contiguous())
        self.register_buffer("w_re", W.real.contiguous())  # (P H N)
        self.register_buffer("w_im", W.imag.contiguous())

    def forward(self, lags: torch.Tensor) -> torch.Tensor:
        """Kernels at integer ``lags`` ``(L,)``: ``(P H L)``."""
        lag = lags.to(self.rate.dtype)
        decay = torch.exp(self.rate.unsqueeze(-1) * lag)  # (H N L)
        phase = self.freq.unsqueeze(-1) * lag
        v_re, v_im = decay * torch.cos(phase), decay * torch.sin(phase)
        # (H P N) @ (H N L) -> (H P L): one batched matmul per real/imaginary part
        re = torch.matmul(self.w_re.transpose(0, 1), v_re) - torch.matmul(
            self.w_im.transpose(0, 1), v_im
        )
        return 2 * re.transpose(0, 1)

    def gains(self) -> torch.Tensor:
        """Lag-0 kernels ``(P H)``: ``2 Re sum_n W_pn``."""
        return 2 * self.w_re.sum(-1)


def _causal_toeplitz(kernel: _RealS4Kernel, length: torch.Tensor | int) -> torch.Tensor:
    """``(P H L L)`` lower-triangular matrices ``T[t, s] = K_{t-s}`` (0 for ``s > t``).

    The causal convolution becomes a matmul: ONNX ``Conv`` needs a kernel of known length, and
    the FFT route needs complex tensors. Costs ``L^2`` per channel, which at a window's few
    dozen frames is less than the FFT's overhead.
    """
    steps = torch.arange(length, device=kernel.rate.device)
    lag = steps.unsqueeze(1) - steps.unsqueeze(0)  # (L L), t - s
    k = kernel(steps)  # (P H L)
    full = k[..., lag.clamp(min=0)]  # (P H L L)
    return full * (lag >= 0).to(full.dtype)


def _liquid_ssm(self: LiquidS4Layer, kernel: _RealS4Kernel, u: torch.Tensor) -> torch.Tensor:
    """:meth:`LiquidS4Layer.ssm` without complex tensors or FFT (same math, exportable)."""
    powers = self._liquid_powers()
    T = _causal_toeplitz(kernel, u.shape[-1])  # (P H L L), P = 1 + len(powers)
    if self.liquid_kind == "kb":
        signals = torch.stack([input_correlation(u, p) for p in (1, *powers)], dim=1)
        return torch.matmul(T, signals.unsqueeze(-1)).squeeze(-1).sum(dim=1)  # (B H L)
    y = torch.matmul(T[0], u.unsqueeze(-1)).squeeze(-1)
    if self.liquid_kind == "polyb":
        for gain, p in zip(kernel.gains()[1:], powers):
            y = y + gain[:, None] * input_correlation(u, p)
    return y


def _adapt_liquid_s4(layer: LiquidS4Layer) -> None:
    powers = (1, *layer._liquid_powers())
    layer.kernel = _RealS4Kernel(layer.kernel, powers)
    if layer.kernel_rev is not None:
        layer.kernel_rev = _RealS4Kernel(layer.kernel_rev, powers)
    layer.ssm = types.MethodType(_liquid_ssm, layer)


def _scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """Selective scan ``(B E L) (B E L) (E N) (B L N) (B L N) -> (B E L)``, without the D skip.

    Scripted (:func:`_scripted_scan`), so that it exports as an ONNX ``Loop`` over however
    many frames come.
    """
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype, device=u.device)
    du = delta * u
    ys: list[torch.Tensor] = []
    for t in range(u.shape[2]):
        dA = torch.exp(delta[:, :, t].unsqueeze(-1) * A)
        h = dA * h + du[:, :, t].unsqueeze(-1) * B[:, t].unsqueeze(1)
        ys.append(torch.matmul(h, C[:, t].unsqueeze(-1)).squeeze(-1))
    return torch.stack(ys, dim=-1)


@functools.lru_cache(maxsize=1)
def _scripted_scan() -> Callable[..., torch.Tensor]:
    """:func:`_scan`, scripted on first use (not when this module is imported)."""
    return torch.jit.script(_scan)


def _mamba_mixer(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`audio_cls.nn.mamba.mamba_mixer_ref` with the scan of :func:`_scripted_scan`."""
    length = x.shape[1]
    R, N = mixer.time_step_rank, mixer.ssm_state_size
    u, z = mixer.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    u = mixer.act(mixer.conv1d(u)[..., :length])
    dt, B, C = torch.split(mixer.x_proj(u.transpose(1, 2)), [R, N, N], dim=-1)
    delta = F.softplus(mixer.dt_proj(dt).float()).transpose(1, 2)
    A = -torch.exp(mixer.A_log.float())
    u = u.float()
    y = _scripted_scan()(u, delta, A, B.float(), C.float()) + u * mixer.D.float()[:, None]
    y = y * mixer.act(z)
    return mixer.out_proj(y.transpose(1, 2).to(x.dtype))


def _mamba_layer_forward(self: MambaLayer, x: torch.Tensor, use_kernels: bool) -> torch.Tensor:
    """:meth:`MambaLayer.forward` on :func:`_mamba_mixer` (the CUDA kernels do not export)."""
    h = self.norm(x)
    y = _mamba_mixer(self.mixer, h)
    if self.mixer_rev is not None:
        y = y + _mamba_mixer(self.mixer_rev, h.flip(1)).flip(1)
    return x + self.dropout(y)


def _adapt_mamba(layer: MambaLayer) -> None:
    layer.forward = types.MethodType(_mamba_layer_forward, layer)


def _adapt_mamba_encoder(encoder: MambaEncoder) -> None:
    # the layers ignore the choice now; False keeps use_kernels=True from refusing CPU input
    encoder.use_kernels = False


#: Module type -> in-place change of an export copy's module into traceable, equivalent code.
_ADAPTERS: dict[type[nn.Module], Callable[[Any], None]] = {
    LiquidS4Layer: _adapt_liquid_s4,
    MambaLayer: _adapt_mamba,
    MambaEncoder: _adapt_mamba_encoder,
}


class _WaveformToLogits(nn.Module):
    """Front end, backbone and head as one plain module: what gets traced.

    ``AudioClassifier.forward`` composed without the LightningModule around it, whose
    ``trainer`` property raises when ``torch.jit.trace`` walks the attributes.
    """

    def __init__(self, frontend: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.frontend, self.backbone, self.head = frontend, backbone, head

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.frontend(waveform)))


def export_ready(model: nn.Module) -> nn.Module:
    """An eval-mode copy of a classifier that traces to a graph valid for any batch and length.

    The log-mel front end is swapped for :class:`ExportableLogMel`, each module of a type in
    :data:`_ADAPTERS` is adapted, and front end, backbone and head are composed in a plain
    module (waveform ``(B, T)`` -> logits ``(B, C)``); ``model`` itself is untouched.
    """
    ready = exportable_copy(model)
    for module in list(ready.modules()):
        adapt = _ADAPTERS.get(type(module))
        if adapt is not None:
            adapt(module)
    return _WaveformToLogits(ready.frontend, ready.backbone, ready.head).eval()


# ---------------------------------------------------------------------- metadata
def export_metadata(model: nn.Module, section: dict[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: JSON strings under :data:`META_KEYS`.

    Args:
        model: The classifier (class names, front end, family).
        section: Its checkpoint's audio-cls section (window settings under ``segments``).
    """
    segments = section.get("segments") or {}
    window_sec = segments.get("window_sec", 0.96)
    values = {
        "audio_cls_format": META_FORMAT,
        "model": section.get("model", getattr(model, "registry_name", "")),
        "class_names": list(model.class_names),
        "sample_rate": int(model.sample_rate),
        "window_sec": window_sec,
        "hop_sec": segments.get("hop_sec"),
        "short_clip": segments.get("short_clip", "pad"),
        "frontend": model.frontend.settings.to_dict(),
        "features": section.get("features"),
    }
    return {key: json.dumps(values[key]) for key in META_KEYS}


def section_from_metadata(meta: dict[str, str], where: str) -> dict[str, Any]:
    """A checkpoint-like section (``model``, ``class_names``, ``frontend``, ``segments``) from
    an exported file's metadata.

    Raises:
        ExportError: A key is missing or not JSON; the message names ``where``.
    """
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ExportError(
            f"{where}: has no audio-cls metadata ({', '.join(missing)} missing); use a file "
            f"written by `audio-cls export`"
        )
    try:
        values = {k: json.loads(meta[k]) for k in META_KEYS}
    except json.JSONDecodeError as err:
        raise ExportError(f"{where}: audio-cls metadata is not valid JSON ({err})") from None
    if values["audio_cls_format"] != META_FORMAT:
        raise ExportError(
            f"{where}: metadata format {values['audio_cls_format']}, this version reads "
            f"{META_FORMAT}: export the checkpoint again with this version"
        )
    return {
        "model": values["model"],
        "class_names": values["class_names"],
        "frontend": values["frontend"],
        "features": values["features"],
        "segments": {
            "sample_rate": values["sample_rate"],
            "window_sec": values["window_sec"],
            "hop_sec": values["hop_sec"],
            "short_clip": values["short_clip"],
        },
    }


# ---------------------------------------------------------------------- running an exported file
class OnnxClassifier:
    """An ONNX file as the inference core's model: ``(B, T)`` float tensor -> logits tensor.

    Args:
        path: File written by ``audio-cls export``.
        threads: onnxruntime intra-op threads (None: ``torch.get_num_threads()``, so one
            setting governs both backends).
        providers: onnxruntime execution providers (None: CPU).

    Attributes:
        section: The checkpoint-like section read from the metadata.
        class_names: Class names, in output order.
        sample_rate: The rate the model expects.
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        ort = require("onnxruntime", "export", "running an ONNX model")
        path = Path(path)
        if path.is_dir():
            raise ExportError(f"{path}: is a folder; pass the .onnx file written by export")
        if not path.is_file():
            raise ExportError(f"{path}: ONNX file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no graph-optimiser chatter on stderr
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own types for a bad file
            reason = _first_line(err)
            raise ExportError(
                f"{path}: not a readable ONNX model ({reason}); use a file written by "
                f"`audio-cls export`"
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.section = section_from_metadata(meta, str(path))
        self.class_names: list[str] = list(self.section["class_names"])
        self.sample_rate = int(self.section["segments"]["sample_rate"])
        self.path = path

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return torch.from_numpy(logits).to(waveform.device)


def load_onnx(
    path: str | Path, threads: int | None = None, providers: list[str] | None = None
) -> tuple[OnnxClassifier, dict[str, Any]]:
    """An exported ONNX file as ``(callable model, checkpoint-like section)``, as
    :func:`~audio_cls.models.load_classifier` returns for a checkpoint."""
    model = OnnxClassifier(path, threads, providers)
    return model, model.section


def _load_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.jit.load(str(path), map_location="cpu").eval()


# ---------------------------------------------------------------------- exporting
@dataclass
class ExportReport:
    """What :func:`export_model` did.

    Attributes:
        path: The file written.
        format: ``onnx`` or ``torchscript``.
        model: The family's registry name.
        max_prob_diff: Largest |p_exported - p_torch| over the checked inputs.
        max_logmel_diff: Largest log-mel difference between the exportable and the torchaudio
            front end on the same inputs (None for a front end that needs no swap).
        checked: The ``(batch, samples)`` shapes compared.
        seconds: Time taken, export and checks.
        exporter: Which exporter and opset wrote the file.
    """

    path: Path
    format: str
    model: str
    max_prob_diff: float
    max_logmel_diff: float | None
    checked: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0
    exporter: str = ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0].strip() if text else type(err).__name__
    return line[:200]


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 nowhere, for the block.

    The TorchScript exporter prints its whole IR graph there when a conversion fails; the
    error itself still arrives as an exception, which is what the user sees.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreter): nothing to silence
        yield
        return
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _check_inputs(sample_rate: int, window: int) -> list[torch.Tensor]:
    """Waveforms for the checks: batches of 1, 2 and 3 at the window's length and at one
    0.37 s (plus a sample) longer, the first traced; noise plus a tone, so no band is empty."""
    other = window + round(0.37 * sample_rate) + 1
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for batch, length in ((2, window), (3, other), (1, other), (3, window)):
        t = torch.arange(length) / sample_rate
        noise = 0.05 * torch.randn(batch, length, generator=generator)
        tone = 0.3 * torch.sin(2 * math.pi * 440.0 * t)
        inputs.append((noise + tone).float())
    return inputs


@torch.inference_mode()
def _probs(model: Callable[[torch.Tensor], torch.Tensor], inputs: list) -> list[torch.Tensor]:
    return [model(x).float().softmax(-1) for x in inputs]


@torch.inference_mode()
def _max_logmel_diff(model: nn.Module, ready: nn.Module, inputs: list) -> float | None:
    if not isinstance(ready.frontend, ExportableLogMel):
        return None
    return max(
        float((model.frontend.log_mel(x) - ready.frontend.log_mel(x)).abs().max()) for x in inputs
    )


def _write_onnx(ready: nn.Module, path: Path, example: torch.Tensor, opset: int) -> None:
    with warnings.catch_warnings(), _native_stderr_silenced():
        # the legacy-exporter notice and tracer remarks about shapes: the checks that follow
        # run other shapes, which is what those remarks are about
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ready,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 1: "samples"}, OUTPUT_NAME: {0: "batch"}},
        )


def _add_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    onnx = require("onnx", "export", "ONNX export")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "audio-cls"
    onnx.save(proto, str(path))


def _write_torchscript(
    ready: nn.Module, path: Path, example: torch.Tensor, metadata: dict[str, str]
) -> None:
    with warnings.catch_warnings(), _native_stderr_silenced():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ready, (example,), check_trace=False)
    # the same metadata as the ONNX file, as one JSON document beside the code
    torch.jit.save(traced, str(path), _extra_files={"audio_cls.json": json.dumps(metadata)})


def export_model(
    model: nn.Module,
    section: dict[str, Any],
    out: str | Path,
    format: ExportFormat = "onnx",
    opset: int = OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportReport:
    """Write ``model`` (front end included) to ``out`` and check it against PyTorch.

    The check runs the written file (onnxruntime, or ``torch.jit.load``) and the PyTorch
    model on the same waveforms (batches of 1 to 3, at the window's length and another); the
    file is removed and the export refused when any class probability differs by more than
    ``tolerance``.

    Args:
        model: The classifier, as :func:`~audio_cls.models.load_classifier` returns it.
        section: Its checkpoint section (window settings, family).
        out: File to write.
        format: ``onnx`` or ``torchscript``.
        opset: ONNX opset.
        tolerance: Largest accepted absolute difference of a class probability.

    Raises:
        ExportError: The model does not export (its family and the reason, one line), or the
            written file does not match the model (the file is removed).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use {' or '.join(FORMATS)}")
    started = time.perf_counter()
    out = Path(out)
    family = section.get("model") or getattr(model, "registry_name", "") or type(model).__name__
    was_training = model.training
    model.eval()  # the reference the file is checked against; its mode is restored after
    try:
        return _export_checked(model, section, out, format, opset, tolerance, family, started)
    finally:
        model.train(was_training)


def _export_checked(
    model: nn.Module,
    section: dict[str, Any],
    out: Path,
    format: ExportFormat,
    opset: int,
    tolerance: float,
    family: str,
    started: float,
) -> ExportReport:
    """:func:`export_model` once the model is in eval mode."""
    ready = export_ready(model)
    windows = section.get("segments") or {}
    rate = int(model.sample_rate)
    window = round(windows.get("window_sec", 0.96) * rate)
    inputs = _check_inputs(rate, window)
    metadata = export_metadata(model, section)
    exporter = (
        f"torch.onnx.export (TorchScript-based, dynamo=False), opset {opset}, "
        f"torch {torch.__version__}"
        if format == "onnx"
        else f"torch.jit.trace, torch {torch.__version__}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target and renamed when checked: a refused export leaves nothing
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            if format == "onnx":
                _write_onnx(ready, tmp, inputs[0], opset)
                _add_onnx_metadata(tmp, metadata)
                runner: Callable[[torch.Tensor], torch.Tensor] = OnnxClassifier(tmp)
            else:
                _write_torchscript(ready, tmp, inputs[0], metadata)
                runner = _load_torchscript(tmp)
        except ExportError:
            raise
        except Exception as err:
            raise ExportError(
                f"{family} does not export to {format}: {_first_line(err)} "
                f"({type(err).__name__}); classify it with --backend torch"
            ) from None
        try:
            expected = _probs(model, inputs)
        except Exception as err:
            raise ExportError(
                f"{family}: the PyTorch model itself fails on the check waveforms "
                f"(batch x samples {', '.join(str(tuple(x.shape)) for x in inputs)}): "
                f"{_first_line(err)}"
            ) from None
        try:
            got = _probs(runner, inputs)
        except Exception as err:  # a shape frozen at trace time fails at another one
            raise ExportError(
                f"{family} exported to {format} but the file fails on other batch sizes or "
                f"lengths than the traced one: {_first_line(err)}; classify it with "
                f"--backend torch"
            ) from None
        worst = max(float((a - b).abs().max()) for a, b in zip(expected, got))
        if not worst <= tolerance:  # NaN refuses too
            raise ExportError(
                f"{family}: the exported file's probabilities differ from PyTorch's by up to "
                f"{worst:.2e}, more than --tolerance {tolerance:g}; nothing was written to {out}"
            )
        logmel = _max_logmel_diff(model, ready, inputs)
        del runner  # release the session's hold on the file before renaming it
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(
        path=out,
        format=format,
        model=family,
        max_prob_diff=worst,
        max_logmel_diff=logmel,
        checked=[tuple(x.shape) for x in inputs],
        seconds=time.perf_counter() - started,
        exporter=exporter,
    )
