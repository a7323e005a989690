"""Liquid-S4 classifier: S4D layers with liquid (input-correlation) kernels over mel frames.

Papers: Gu et al., "On the Parameterization and Initialization of Diagonal State Space Models"
(S4D, 2022); Hasani et al., "Liquid Structural State-Space Models" (ICLR 2023), KB and PolyB
liquid kernels. Trained from scratch; no public audio weights. SSM parameters (A, B, dt) train
in their own optimiser group at ``ssm_lr`` without weight decay.
"""

from __future__ import annotations

from typing import Any, Literal

from audio_cls.models.base import AudioClassifier
from audio_cls.models.mamba import SSM_FRONTEND
from audio_cls.models.registry import register_model
from audio_cls.nn.heads import SequencePooling
from audio_cls.nn.liquid_s4 import LiquidS4Encoder
from audio_cls.nn.stem import STEM_CHANNELS, StemKind

__all__ = ["LiquidS4Classifier"]


@register_model(
    "liquid_s4", frontend=SSM_FRONTEND, tiny={"d_model": 16, "n_layers": 1, "d_state": 8}
)
class LiquidS4Classifier(AudioClassifier):
    """Liquid-S4 over mel frames.

    Args:
        num_classes: Output classes.
        d_model: Channels H of the residual stream.
        n_layers: S4D layers.
        d_state: State size N per channel.
        liquid_kind: ``kb`` or ``polyb`` liquid kernel, or ``none`` for plain S4D.
        liquid_order: Highest order p of the input correlation terms.
        dropout: Dropout after each layer.
        bidirectional: Add an anti-causal pass per layer.
        ssm_lr: Learning rate of A, B and dt (None: the model's learning rate).
        pooling: ``mean``, ``meanmax`` (mean + max) or learned-query ``attention`` over frames.
        stem: ``linear`` per-frame projection, or a ``conv`` stem over (mel, time) first
            (:mod:`audio_cls.nn.stem`).
        stem_channels: Channels of the conv stem's stages (default ``[16, 32]``).
        **kwargs: Front end, augmentation, loss and optimiser settings of ``AudioClassifier``.
    """

    def __init__(
        self,
        num_classes: int,
        d_model: int = 128,
        n_layers: int = 4,
        d_state: int = 64,
        liquid_kind: Literal["none", "kb", "polyb"] = "polyb",
        liquid_order: int = 2,
        dropout: float = 0.1,
        bidirectional: bool = False,
        ssm_lr: float | None = 1e-3,
        pooling: SequencePooling = "mean",
        stem: StemKind = "linear",
        stem_channels: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.backbone = LiquidS4Encoder(
            self.hparams.n_mels,
            d_model,
            n_layers,
            d_state,
            liquid_kind=liquid_kind,
            liquid_order=liquid_order,
            dropout=dropout,
            bidirectional=bidirectional,
            ssm_lr=ssm_lr,
            pooling=pooling,
            stem=stem,
            stem_channels=stem_channels or STEM_CHANNELS,
        )
        self.build_head()
