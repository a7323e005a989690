"""Mamba classifier: a stack of Mamba blocks over log-mel frames, pooled, then a linear head.

Paper: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023);
bidirectional variant as in audio Mamba models (a forward and a time-reversed pass per block).
Blocks are transformers' ``MambaMixer``: on CUDA with the ``cuda`` extra the mamba-ssm kernels
run, elsewhere the same math in PyTorch, with identical parameter names (see
``audio_cls.nn.mamba``). Trained from scratch; no public audio weights.
"""

from __future__ import annotations

from audio_cls.models.base import AudioClassifier
from audio_cls.models.registry import register_model
from audio_cls.nn.frontends import LogMelSettings
from audio_cls.nn.mamba import MambaEncoder

__all__ = ["SSM_FRONTEND", "MambaClassifier"]

#: The earlier SSM project's front end: 128 mels, 64 ms windows, 32 ms hop (at 16 kHz there).
SSM_FRONTEND = LogMelSettings(n_mels=128, win_ms=64.0, hop_ms=32.0, freq_mask=16, time_mask=20)


@register_model(
    "mamba",
    tiny={"d_model": 16, "n_layers": 1, "d_state": 4},
    requires=("mamba_ssm", "causal_conv1d"),
)
class MambaClassifier(AudioClassifier):
    """Mamba blocks over mel frames."""

    backbone_cls = MambaEncoder
    default_frontend = SSM_FRONTEND
    default_pooling = "mean"
