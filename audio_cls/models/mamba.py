"""Mamba classifier: a stack of Mamba blocks over log-mel frames, pooled, then a linear head.

Paper: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023);
bidirectional variant as in audio Mamba models (a forward and a time-reversed pass per block).
Blocks are transformers' ``MambaMixer``: on CUDA with the ``cuda`` extra the mamba-ssm kernels
run, elsewhere the same math in PyTorch, with identical parameter names (see
``audio_cls.nn.mamba``). Trained from scratch; no public audio weights.
"""

from __future__ import annotations

from typing import Any

from audio_cls.models.base import AudioClassifier
from audio_cls.models.registry import register_model
from audio_cls.nn.heads import SequencePooling
from audio_cls.nn.mamba import MambaEncoder
from audio_cls.nn.stem import STEM_CHANNELS, StemKind

__all__ = ["MambaClassifier"]

#: The earlier SSM project's front end: 16 kHz, 128 mels, 64 ms windows, 32 ms hop.
SSM_FRONTEND = {"sample_rate": 16000, "n_mels": 128, "n_fft": 1024, "win_ms": 64.0, "hop_ms": 32.0}


@register_model(
    "mamba",
    frontend=SSM_FRONTEND,
    tiny={"d_model": 16, "n_layers": 1, "d_state": 4},
    requires=("mamba_ssm", "causal_conv1d"),
)
class MambaClassifier(AudioClassifier):
    """Mamba over mel frames.

    Args:
        num_classes: Output classes.
        d_model: Width of the residual stream.
        n_layers: Mamba blocks.
        d_state: SSM state size per channel.
        d_conv: Causal convolution width inside each block.
        expand: Inner width factor of each block.
        bidirectional: Add a time-reversed pass to every block.
        pooling: ``mean``, ``meanmax`` (mean + max) or learned-query ``attention`` over frames.
        dropout: Dropout in the residual stream.
        use_kernels: Force the CUDA kernels (True), the PyTorch path (False) or choose by
            device and availability (None).
        stem: ``linear`` per-frame projection, or a ``conv`` stem over (mel, time) first
            (:mod:`audio_cls.nn.stem`).
        stem_channels: Channels of the conv stem's stages (default ``[16, 32]``).
        **kwargs: Front end, augmentation, loss and optimiser settings of ``AudioClassifier``.
    """

    def __init__(
        self,
        num_classes: int,
        d_model: int = 256,
        n_layers: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        bidirectional: bool = False,
        pooling: SequencePooling = "mean",
        dropout: float = 0.0,
        use_kernels: bool | None = None,
        stem: StemKind = "linear",
        stem_channels: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.backbone = MambaEncoder(
            self.hparams.n_mels,
            d_model,
            n_layers,
            d_state,
            d_conv,
            expand,
            bidirectional=bidirectional,
            pooling=pooling,
            dropout=dropout,
            use_kernels=use_kernels,
            stem=stem,
            stem_channels=stem_channels or STEM_CHANNELS,
        )
        self.build_head()
