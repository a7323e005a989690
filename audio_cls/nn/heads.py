"""Heads: pooling over a backbone's unpooled features, then the classifier.

Backbones hand over either a feature map ``(B, C, F, T)`` (CNNs) or a sequence ``(B, L, D)``
(SSMs, transformers, raw-waveform encoders); :class:`FeaturePool` turns both into one
embedding ``(B, D)``, and :class:`ClassifierHead` adds dropout and the linear classifier.
``ClassifierHead(x, pre_logits=True)`` is the embedding that ``embed`` and LightGBM use.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = [
    "POOLING_KINDS",
    "AttentionPool",
    "AttentivePool",
    "ClassifierHead",
    "FeatureLayout",
    "FeaturePool",
    "MultiTapHead",
    "Pooling",
]

Pooling = Literal["mean", "max", "meanmax", "attention", "attentive"]
POOLING_KINDS: tuple[str, ...] = ("mean", "max", "meanmax", "attention", "attentive")
#: ``map``: ``(B, C, F, T)``, channels first; ``sequence``: ``(B, L, D)``, features last.
FeatureLayout = Literal["map", "sequence"]


class AttentionPool(nn.Module):
    """Learned queries attending over frames, one per head; starts as mean pooling.

    Each head scores the frames with its slice of ``key(x) . query`` and averages its slice of
    the features with those weights, so one head is the single learned query of attentive
    statistics pooling and more heads let different feature groups watch different frames.

    Args:
        dim: Feature size D (divisible by ``heads``).
        heads: Attention heads.
    """

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"attention pooling: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(dim))  # zero: uniform weights, i.e. the mean
        self.key = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B L D) -> (B D)``."""
        B, L, D = x.shape
        h = self.heads
        scores = (self.key(x) * self.query).view(B, L, h, D // h).sum(-1)  # (B L h)
        weights = (scores / math.sqrt(D // h)).softmax(dim=1)
        return torch.einsum("blh,blhd->bhd", weights, x.view(B, L, h, D // h)).reshape(B, D)


class AttentivePool(nn.Module):
    """V-JEPA2's attentive pooler: self-attention layers, then one learned query cross-attends.

    Built from ``transformers``' ``VJEPA2AttentivePooler``, so published pooler weights load
    under ``pooler.*`` (see the ``vjepa2`` family's pretrained configuration).

    Args:
        dim: Feature size D.
        heads: Attention heads (divide D).
        layers: Self-attention layers before the cross-attention (V-JEPA2 uses 3).
        mlp_ratio: MLP width factor inside the pooler's layers.
    """

    def __init__(self, dim: int, heads: int = 1, layers: int = 1, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        from transformers import VJEPA2Config
        from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2AttentivePooler

        if heads < 1 or dim % heads:
            raise ValueError(f"attentive pooling: dim {dim} is not divisible by {heads} heads")
        config = VJEPA2Config(
            hidden_size=dim,
            num_attention_heads=heads,
            num_pooler_layers=layers,
            mlp_ratio=mlp_ratio,
        )
        config._attn_implementation = "sdpa"
        self.pooler = VJEPA2AttentivePooler(config)
        self._init_weights(config.initializer_range)

    @torch.no_grad()
    def _init_weights(self, std: float) -> None:
        """V-JEPA2's scheme: truncated normal linears, output projections scaled by depth."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pooler.query_tokens, std=std)
        for i, layer in enumerate(self.pooler.self_attention_layers, 1):
            nn.init.trunc_normal_(layer.self_attn.out_proj.weight, std=std / i**0.5)
            nn.init.trunc_normal_(layer.mlp.fc2.weight, std=std / i**0.5)
        n = len(self.pooler.self_attention_layers) + 1
        nn.init.trunc_normal_(self.pooler.cross_attention_layer.mlp.fc2.weight, std=std / n**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B L D) -> (B D)``."""
        return self.pooler(x)


class FeaturePool(nn.Module):
    """Unpooled features -> ``(B, D)``.

    A map ``(B, C, F, T)`` is first averaged over frequency and read as the sequence
    ``(B, T, C)``. Then over time: ``mean``; ``max``; ``meanmax`` (mean + max, which keeps a short
    event such as an impact that a plain mean dilutes); ``attention`` (learned queries,
    :class:`AttentionPool`); ``attentive`` (V-JEPA2's pooler, :class:`AttentivePool`).

    Args:
        dim: Feature size D (C for maps).
        kind: Pooling kind.
        layout: ``map`` or ``sequence``.
        heads: Heads of ``attention`` / ``attentive`` pooling.
        layers: Self-attention layers of ``attentive`` pooling.
    """

    def __init__(
        self,
        dim: int,
        kind: Pooling = "mean",
        layout: FeatureLayout = "sequence",
        heads: int = 1,
        layers: int = 1,
    ) -> None:
        super().__init__()
        if kind not in POOLING_KINDS:
            raise ValueError(f"pooling must be one of {', '.join(POOLING_KINDS)}; got {kind!r}")
        if layout not in ("map", "sequence"):
            raise ValueError(f"feature layout must be 'map' or 'sequence', got {layout!r}")
        self.kind, self.layout = kind, layout
        if kind == "attention":
            self.attn = AttentionPool(dim, heads)
        elif kind == "attentive":
            self.attentive = AttentivePool(dim, heads, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "map":
            x = x.mean(dim=2).transpose(1, 2)  # (B C F T) -> (B T C)
        if self.kind == "attention":
            return self.attn(x)
        if self.kind == "attentive":
            return self.attentive(x)
        if self.kind == "mean":
            return x.mean(dim=1)
        if self.kind == "max":
            return x.amax(dim=1)
        return x.mean(dim=1) + x.amax(dim=1)


class ClassifierHead(nn.Module):
    """Pooling, an optional embedding projection, dropout and a linear classifier.

    The embedding (``pre_logits``) is the pooled features, or their projection to
    ``embed_dim`` (AudioCLIP's 1024-d audio embedding; a student matching a text teacher's
    space), L2-normalised with ``normalize_embedding``.

    Args:
        num_features: Feature size D of the backbone.
        num_classes: Output classes.
        pooling: Pooling kind (:class:`FeaturePool`).
        layout: The backbone's feature layout.
        dropout: Dropout before the linear layer.
        pool_heads: Heads of attention pooling.
        pool_layers: Self-attention layers of attentive pooling.
        embed_dim: Width of a linear projection of the pooled features (None: no projection).
        normalize_embedding: Scale each embedding to unit L2 norm.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        pooling: Pooling = "mean",
        layout: FeatureLayout = "sequence",
        dropout: float = 0.0,
        pool_heads: int = 1,
        pool_layers: int = 1,
        embed_dim: int | None = None,
        normalize_embedding: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim is not None and embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive width or None, got {embed_dim}")
        self.pool = FeaturePool(num_features, pooling, layout, pool_heads, pool_layers)
        self.proj = nn.Linear(num_features, embed_dim) if embed_dim else nn.Identity()
        self.normalize_embedding = normalize_embedding
        self.num_features = embed_dim or num_features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    def reset(self, num_classes: int) -> None:
        """A new, freshly initialised classifier layer for ``num_classes`` classes."""
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        embedding = self.proj(self.pool(x))
        if self.normalize_embedding:
            embedding = nn.functional.normalize(embedding, dim=-1)
        return embedding if pre_logits else self.fc(self.dropout(embedding))


class MultiTapHead(nn.Module):
    """One :class:`ClassifierHead` per named backbone tap (SoundNet's ``pool5``, ``conv6``,
    ``conv7``), trained with the heads' losses summed.

    The prediction is the mean of the heads' probabilities (returned as its log, so that a
    softmax downstream gives that mean back), or one head's logits with ``combine: <tap>``; the
    embedding is the concatenation of the heads' embeddings, or the chosen head's.

    Args:
        tap_features: Feature width of each tap, by name.
        num_classes: Output classes.
        combine: ``mean`` of the heads' probabilities, or the name of the one head to use.
        **head_options: :class:`ClassifierHead`'s options (pooling, layout, dropout, ...).
    """

    def __init__(
        self, tap_features: dict[str, int], num_classes: int, combine: str = "mean", **head_options
    ) -> None:
        super().__init__()
        if combine != "mean" and combine not in tap_features:
            raise ValueError(
                f"--model.tap_combine {combine!r}: use mean or one of the taps "
                f"{', '.join(tap_features)}"
            )
        self.heads = nn.ModuleDict(
            {
                name: ClassifierHead(d, num_classes, **head_options)
                for name, d in tap_features.items()
            }
        )
        self.combine = combine
        widths = {name: head.num_features for name, head in self.heads.items()}
        self.num_features = sum(widths.values()) if combine == "mean" else widths[combine]

    @property
    def pool(self) -> FeaturePool:
        """The first head's pooling (every head pools alike)."""
        return next(iter(self.heads.values())).pool

    def reset(self, num_classes: int) -> None:
        for head in self.heads.values():
            head.reset(num_classes)

    def head_logits(self, taps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each head's logits ``(B, C)``, by tap."""
        return {name: head(taps[name]) for name, head in self.heads.items()}

    def combine_logits(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prediction's logits from the heads' logits."""
        if self.combine != "mean":
            return logits[self.combine]
        probs = torch.stack([x.float().softmax(-1) for x in logits.values()]).mean(0)
        return probs.clamp_min(1e-12).log()

    def forward(self, taps: dict[str, torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            if self.combine != "mean":
                return self.heads[self.combine](taps[self.combine], pre_logits=True)
            return torch.cat(
                [head(taps[name], pre_logits=True) for name, head in self.heads.items()], dim=-1
            )
        return self.combine_logits(self.head_logits(taps))
