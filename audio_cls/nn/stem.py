"""Frame stems: log-mel ``(B F T)`` -> per-frame features ``(B T D)`` for the sequence models.

``linear`` maps each frame's mel vector to D (the earlier project's input projection). ``conv``
first runs 3x3 convolutions over (mel, time) that stride down the mel axis only, then maps the
flattened (channels x mel/2^k) column of each frame to D. Shared filters across mel bins give the
pitch-shift tolerance a CNN has and a per-frame linear map lacks, which matters with a few
hundred training clips; the frame rate (and so the sequence length) is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = ["STEM_CHANNELS", "ConvStem", "LinearStem", "StemKind", "frame_stem"]

StemKind = Literal["linear", "conv"]

#: Conv stem stages used unless a config says otherwise: 128 mels -> 32 rows x 32 channels.
STEM_CHANNELS = (16, 32)


class LinearStem(nn.Linear):
    """``(B F T) -> (B T D)``: one linear map per frame (state-dict keys ``weight``, ``bias``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2))


class ConvStem(nn.Module):
    """``(B F T) -> (B T D)``: conv3x3-BN-GELU stages (mel stride 2 each), then a linear map.

    Args:
        n_mels: Mel bins F; must be divisible by ``2 ** len(channels)``.
        d_model: Output width D.
        channels: Output channels of each stage.
    """

    def __init__(self, n_mels: int, d_model: int, channels: Sequence[int] = STEM_CHANNELS) -> None:
        super().__init__()
        if not channels or any(c < 1 for c in channels):
            raise ValueError(
                f"stem_channels must be a non-empty list of positive ints, got {channels}"
            )
        if n_mels % 2 ** len(channels):
            raise ValueError(
                f"n_mels={n_mels} must be divisible by 2**{len(channels)} for a "
                f"{len(channels)}-stage conv stem (use fewer stem_channels)"
            )
        stages, c_in = [], 1
        for c in channels:
            stages += [
                nn.Conv2d(c_in, c, 3, stride=(2, 1), padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.GELU(),
            ]
            c_in = c
        self.convs = nn.Sequential(*stages)
        self.proj = nn.Linear(c_in * (n_mels // 2 ** len(channels)), d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x.unsqueeze(1))  # (B C F' T)
        return self.proj(h.flatten(1, 2).transpose(1, 2))  # (B T C*F') -> (B T D)


def frame_stem(
    kind: StemKind, n_mels: int, d_model: int, channels: Sequence[int] = STEM_CHANNELS
) -> nn.Module:
    """The ``kind`` stem (``linear`` or ``conv``) from ``n_mels`` bins to ``d_model``."""
    if kind == "linear":
        return LinearStem(n_mels, d_model)
    if kind == "conv":
        return ConvStem(n_mels, d_model, channels)
    raise ValueError(f"stem must be 'linear' or 'conv', got {kind!r}")
