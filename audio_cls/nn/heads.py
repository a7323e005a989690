"""Pooling and classifier heads shared by the model families."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = ["AttentionPool", "ClassifierHead", "SequencePool", "SequencePooling", "TimeFreqPool"]


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


class AttentionPool(nn.Module):
    """One learned query attending over frames; starts as mean pooling (zero query).

    Args:
        dim: Feature size D.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.key = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B L D) -> (B D)``."""
        scores = self.key(x) @ self.query / math.sqrt(x.shape[-1])  # (B L)
        return torch.einsum("bl,bld->bd", scores.softmax(dim=-1), x)


SequencePooling = Literal["mean", "meanmax", "attention"]


class SequencePool(nn.Module):
    """``(B L D) -> (B D)`` over frames: ``mean``, ``meanmax`` (mean + max, which keeps a short
    event a plain mean dilutes, as :class:`TimeFreqPool` does for the CNN) or ``attention``.

    Args:
        dim: Feature size D.
        kind: Pooling kind.
    """

    def __init__(self, dim: int, kind: SequencePooling = "mean") -> None:
        super().__init__()
        if kind not in ("mean", "meanmax", "attention"):
            raise ValueError(f"pooling must be 'mean', 'meanmax' or 'attention', got {kind!r}")
        self.kind = kind
        self.attn = AttentionPool(dim) if kind == "attention" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            return self.attn(x)
        pooled = x.mean(dim=1)
        return pooled + x.amax(dim=1) if self.kind == "meanmax" else pooled
