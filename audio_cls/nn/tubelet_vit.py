"""V-JEPA2-style ViT over spectrogram tubelets (unpooled tokens; the attentive pooler is a head).

Paper: Assran et al., "V-JEPA 2: Self-Supervised Video Models Enable Understanding, Prediction
and Planning" (2025), https://arxiv.org/abs/2506.09985. Blocks come from ``transformers``
(``transformers.models.vjepa2.modeling_vjepa2``): ``VJEPA2Layer``, a pre-norm block with 3-axis
rotary position embedding. V-JEPA2's attentive pooler is ``pooling: attentive`` of the head
(:class:`audio_cls.nn.heads.AttentivePool`).

Tokens: the (mels, frames) spectrogram is cut into time chunks of ``chunk_frames`` frames and,
optionally, mel bands of ``mel_patch`` bins; each (mel_patch x chunk_frames) patch is one token.
Frames left over after the last whole chunk are zero-padded into one more chunk
(``remainder="pad"``: 155 frames / 8 -> 20 tokens per band) or dropped (``"crop"``: 19,
the earlier project's [155, 128] -> [19, 128, 8] layout). The rotary embedding sees
(time chunk, mel band) as the (frame, height) axes of V-JEPA2's grid, so any length works.
With ``stem="conv"`` the chunks are cut from the per-frame features of a small convolutional
stem (:class:`audio_cls.nn.stem.ConvStem`) instead of raw mel bins: early convolutions make
ViTs far more sample-efficient (Xiao et al., "Early Convolutions Help Transformers See Better",
2021), which counts on datasets of a few hundred clips.

Weights: V-JEPA2 checkpoints (Meta, Hugging Face hub ``facebook/vjepa2-*``, MIT licence) are
video models; the ``vjepa2`` family's pretrained configuration maps their transformer blocks
(``vjepa2.encoder.layer.{i}.*``) onto ``blocks.{i}.*`` and their pooler onto the head. The RGB
patch embedding never transfers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import VJEPA2Config
from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2Layer

from audio_cls.nn.stem import STEM_CHANNELS, ConvStem, StemKind

__all__ = ["TubeletViTEncoder"]


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``(n,) -> (n dim)`` sine-cosine features (a zero column when ``dim`` is odd)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=positions.device) / (dim / 2))
    angles = positions.float()[:, None] * omega[None]
    return F.pad(torch.cat([angles.sin(), angles.cos()], dim=-1), (0, dim % 2))


class TubeletViTEncoder(nn.Module):
    """Log-mel spectrogram -> tubelet tokens -> V-JEPA2 blocks -> normalised tokens (unpooled).

    Input ``(B F T)`` (F mel bins, T frames); output ``(B N D)``, N tokens in time-major order.

    Args:
        in_channels: Mel bins F.
        chunk_frames: Frames per token along time.
        mel_patch: Mel bins per token; ``None`` = the whole mel axis (one token per chunk).
            Must divide ``in_channels``.
        d_model: Token width D.
        depth: Number of transformer blocks.
        num_heads: Attention heads (``d_model`` must be divisible by it).
        mlp_ratio: MLP hidden size over ``d_model``.
        max_frames: Longest input the learned positional table covers; longer inputs
            interpolate it. Rotary and sin-cos positions have no limit.
        dropout: Dropout on the token embeddings and on attention probabilities.
        pos_embed: Absolute position embedding added to the tokens on top of the rotary one:
            ``none``, ``sincos`` (fixed, time and mel halves) or ``learned``.
        remainder: ``pad`` the last partial chunk with zeros, or ``crop`` it.
        drop_path: Stochastic-depth rate of the last block (linear from 0).
        stem: ``linear``: tokens are linear maps of raw mel patches; ``conv``: of the
            ``stem_dim`` per-frame features of a conv stem (``mel_patch`` must then be None).
        stem_channels: Channels of the conv stem's stages.
        stem_dim: Per-frame feature size the conv stem hands to the tubelet embedding.
    """

    def __init__(
        self,
        in_channels: int,
        chunk_frames: int = 8,
        mel_patch: int | None = None,
        d_model: int = 192,
        depth: int = 4,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        max_frames: int = 1024,
        dropout: float = 0.0,
        pos_embed: Literal["none", "sincos", "learned"] = "none",
        remainder: Literal["pad", "crop"] = "pad",
        drop_path: float = 0.0,
        stem: StemKind = "linear",
        stem_channels: Sequence[int] = STEM_CHANNELS,
        stem_dim: int = 64,
    ) -> None:
        super().__init__()
        if stem not in ("linear", "conv"):
            raise ValueError(f"stem must be 'linear' or 'conv', got {stem!r}")
        if stem == "conv" and mel_patch is not None:
            raise ValueError(
                "mel_patch needs stem='linear': a conv stem's features have no mel bands"
            )
        n_mels = in_channels
        self.stem = ConvStem(n_mels, stem_dim, stem_channels) if stem == "conv" else None
        rows = n_mels if self.stem is None else stem_dim  # what each chunk's columns hold
        mel_patch = rows if mel_patch is None else mel_patch
        if chunk_frames < 1 or mel_patch < 1 or rows % mel_patch:
            raise ValueError(
                f"need chunk_frames >= 1 and mel_patch dividing n_mels={n_mels}, "
                f"got chunk_frames={chunk_frames}, mel_patch={mel_patch}"
            )
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if pos_embed not in ("none", "sincos", "learned"):
            raise ValueError(f"pos_embed must be 'none', 'sincos' or 'learned', got {pos_embed!r}")
        if remainder not in ("pad", "crop"):
            raise ValueError(f"remainder must be 'pad' or 'crop', got {remainder!r}")
        self.n_mels = n_mels
        self.chunk_frames = chunk_frames
        self.mel_patch = mel_patch
        self.n_bands = rows // mel_patch
        self.remainder = remainder
        self.pos_embed_kind = pos_embed
        self.num_features = d_model
        self.num_heads = num_heads  # the attentive pooler's default
        self.layout = "sequence"
        # V-JEPA2's rotary grid: frame = time chunk, height = mel band (grid side = n_bands).
        self.config = VJEPA2Config(
            hidden_size=d_model,
            num_attention_heads=num_heads,
            num_hidden_layers=depth,
            mlp_ratio=mlp_ratio,
            patch_size=1,
            crop_size=self.n_bands,
            tubelet_size=1,
            frames_per_clip=max(1, math.ceil(max_frames / chunk_frames)),
            in_chans=1,
            attention_probs_dropout_prob=dropout,
            attention_dropout=dropout,
            drop_path_rate=drop_path,
        )
        self.config._attn_implementation = "sdpa"

        self.patch_embed = nn.Linear(mel_patch * chunk_frames, d_model)
        self.pos_drop = nn.Dropout(dropout)
        if pos_embed == "learned":
            max_chunks = self.config.frames_per_clip
            self.pos_table = nn.Parameter(torch.zeros(1, max_chunks, self.n_bands, d_model))
        else:
            self.pos_table = None
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            VJEPA2Layer(self.config, rate, d_model, num_heads, mlp_ratio) for rate in rates
        )
        self.norm = nn.LayerNorm(d_model, eps=self.config.layer_norm_eps)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """V-JEPA2's scheme: truncated normal (0.02) linears."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.pos_table is not None:
            nn.init.trunc_normal_(self.pos_table, std=std)

    def num_chunks(self, frames: int) -> int:
        """Time chunks (tokens per mel band) for an input of ``frames`` frames."""
        if self.remainder == "crop" and frames >= self.chunk_frames:
            return frames // self.chunk_frames
        return math.ceil(frames / self.chunk_frames)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """``(B F T) -> (B n_chunks n_bands mel_patch*chunk_frames)`` patches, time-major."""
        if x.shape[1] != self.n_mels:
            raise ValueError(
                f"expected {self.n_mels} mel bins, got input of shape {tuple(x.shape)}"
            )
        if self.stem is not None:
            x = self.stem(x).transpose(1, 2)  # (B stem_dim T)
        frames, c = x.shape[-1], self.chunk_frames
        # num_chunks in integer arithmetic on the (traced) length, so an exported graph holds
        # for any length: pad -> ceil(frames / c); crop -> whole chunks, or one padded chunk
        n_t = (frames + c - 1) // c if self.remainder == "pad" else frames // c + (frames < c)
        x = F.pad(x, (0, n_t * c - frames))  # zeros at the end, or a negative pad that crops
        x = x.reshape(x.shape[0], self.n_bands, self.mel_patch, n_t, c)
        return x.permute(0, 3, 1, 2, 4).flatten(3)  # (B n_t n_b mel_patch*c)

    def _absolute_pos(self, n_t: int, device: torch.device) -> torch.Tensor | None:
        D = self.num_features
        if self.pos_embed_kind == "sincos":
            t = _sincos_1d(torch.arange(n_t, device=device), D - D // 2)  # (n_t D-D/2)
            m = _sincos_1d(torch.arange(self.n_bands, device=device), D // 2)  # (n_b D/2)
            return torch.cat(
                [t[:, None].expand(-1, self.n_bands, -1), m[None].expand(n_t, -1, -1)], dim=-1
            )[None]
        if self.pos_table is None:
            return None
        table = self.pos_table  # (1 max_t n_b D)
        if n_t <= table.shape[1]:
            return table[:, :n_t]
        table = F.interpolate(  # (1 D n_b max_t) -> (1 D n_b n_t)
            table.permute(0, 3, 2, 1),
            size=(self.n_bands, n_t),
            mode="bilinear",
            align_corners=False,
        )
        return table.permute(0, 3, 2, 1)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named taps ``(B N D)``: ``tokens`` (embedded patches), ``block{i}`` and ``norm``."""
        patches = self.tokenize(x)
        B, n_t, n_b, _ = patches.shape
        h = self.patch_embed(patches)  # (B n_t n_b D)
        pos = self._absolute_pos(n_t, h.device)
        if pos is not None:
            h = h + pos.to(h.dtype)
        h = self.pos_drop(h.flatten(1, 2))  # (B N D)
        taps = {"tokens": h}
        # Rotary ids on V-JEPA2's (frame, height, width) grid of side n_b: id = t*n_b^2 + m*n_b.
        t = torch.arange(n_t, device=h.device)[:, None]
        m = torch.arange(n_b, device=h.device)[None, :]
        ids = (t * n_b * n_b + m * n_b).flatten()[None].expand(B, -1)  # (B N)
        for i, block in enumerate(self.blocks):
            h = taps[f"block{i}"] = block(h, ids)[0]
        taps["norm"] = self.norm(h)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B F T) -> (B N D)`` normalised tokens, N = n_chunks * n_bands (time-major)."""
        return self.forward_intermediates(x)["norm"]
