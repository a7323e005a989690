"""Pooling and classifier heads shared by the model families."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClassifierHead", "TimeFreqPool"]


class TimeFreqPool(nn.Module):
    """``(B, C, F, T)`` feature map -> ``(B, C)``: mean over frequency, then mean + max over time.

    Max over time keeps short events (an impact) that a plain mean would dilute.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=2)  # (B C T)
        return x.mean(dim=-1) + x.amax(dim=-1)


class ClassifierHead(nn.Module):
    """Dropout + linear layer from an embedding to class logits.

    Args:
        in_features: Embedding width.
        num_classes: Output classes.
        dropout: Dropout before the linear layer.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(embedding))
