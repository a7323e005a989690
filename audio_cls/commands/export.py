"""``audio-cls export``: write a checkpoint as one ONNX (or TorchScript) graph, front end included.

The graph takes waveforms ``(batch, samples)`` at the checkpoint's rate and returns logits,
both axes dynamic; the class names, window settings, front end and family ride along as
metadata, so ``audio-cls classify --backend onnxruntime --ckpt model.onnx`` needs nothing
else. Each export is checked against PyTorch before it is kept (see :mod:`audio_cls.export`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from audio_cls.commands import UsageError

__all__ = ["export"]

#: Opsets the TorchScript-based exporter writes and our graphs need (SDPA from 14).
OPSETS = range(14, 21)


def export(
    ckpt: str,
    out: str,
    format: Literal["onnx", "torchscript"] = "onnx",
    opset: int = 17,
    tolerance: float = 1e-4,
) -> None:
    """Export a checkpoint from ``audio-cls fit`` (front end, backbone and head) to ONNX or
    TorchScript, and check the file against PyTorch (batches of 1-3, two lengths).

    Args:
        ckpt: Checkpoint (``.ckpt``) written by ``audio-cls fit``.
        out: File to write (``model.onnx``; ``model.pt`` for TorchScript).
        format: ``onnx`` (run it with ``classify --backend onnxruntime``) or ``torchscript``.
        opset: ONNX opset (14-20; 17 has LayerNormalization as one operator).
        tolerance: Largest accepted difference of a class probability between the exported
            file and PyTorch; a file beyond it is deleted and the export fails.
    """
    from audio_cls.commands import check_writable
    from audio_cls.export import ExportError, export_model
    from audio_cls.models import load_classifier

    if not tolerance > 0:
        raise UsageError(f"--tolerance must be > 0 (a probability difference), got {tolerance}")
    if opset not in OPSETS:
        raise UsageError(
            f"--opset must be between {OPSETS.start} and {OPSETS.stop - 1}, got {opset}; "
            f"17 is the default"
        )
    out_path = Path(out)
    check_writable(out_path, "--out")
    model, section = load_classifier(ckpt)
    try:
        report = export_model(model, section, out_path, format, opset, tolerance)
    except ExportError as err:
        raise UsageError(str(err)) from None
    size = out_path.stat().st_size / 2**20
    shapes = ", ".join(f"{b}x{t}" for b, t in report.checked)
    logmel = (
        f"; log-mel max |diff| {report.max_logmel_diff:.1e}"
        if report.max_logmel_diff is not None
        else ""
    )
    print(
        f"exported {report.model} to {out_path} ({size:.1f} MiB, {report.exporter})\n"
        f"checked against PyTorch on {shapes} (batch x samples): probabilities max |diff| "
        f"{report.max_prob_diff:.1e} (tolerance {tolerance:g}){logmel}; {report.seconds:.1f} s"
    )
    if format == "onnx":
        print(f"classify with: audio-cls classify --backend onnxruntime --ckpt {out_path} FILES")
