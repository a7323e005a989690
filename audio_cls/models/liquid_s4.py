"""Liquid-S4 classifier: S4D layers with liquid (input-correlation) kernels over mel frames.

Papers: Gu et al., "On the Parameterization and Initialization of Diagonal State Space Models"
(S4D, 2022); Hasani et al., "Liquid Structural State-Space Models" (ICLR 2023), KB and PolyB
liquid kernels. Trained from scratch; no public audio weights. SSM parameters (A, B, dt) train
in their own optimiser group at ``ssm_lr`` without weight decay.
"""

from __future__ import annotations

from audio_cls.models.base import AudioClassifier
from audio_cls.models.mamba import SSM_FRONTEND
from audio_cls.models.registry import register_model
from audio_cls.nn.liquid_s4 import LiquidS4Encoder

__all__ = ["LiquidS4Classifier"]


@register_model("liquid_s4", tiny={"d_model": 16, "n_layers": 1, "d_state": 8})
class LiquidS4Classifier(AudioClassifier):
    """Liquid-S4 layers over mel frames."""

    backbone_cls = LiquidS4Encoder
    default_frontend = SSM_FRONTEND
    default_pooling = "mean"
