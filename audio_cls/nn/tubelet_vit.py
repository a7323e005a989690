"""V-JEPA2-style ViT over spectrogram tubelets, with V-JEPA2's attentive pooler.

Paper: Assran et al., "V-JEPA 2: Self-Supervised Video Models Enable Understanding, Prediction
and Planning" (2025), https://arxiv.org/abs/2506.09985. Blocks come from ``transformers``
(``transformers.models.vjepa2.modeling_vjepa2``): ``VJEPA2Layer`` (pre-norm block with 3-axis
rotary position embedding) and ``VJEPA2AttentivePooler`` (self-attention layers, then one
learned query cross-attending to the tokens, then an MLP).

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
video models; :func:`load_vjepa2_state` copies their attentive pooler (and, for a matching
width/depth, their transformer blocks) by the public key names of
``VJEPA2ForVideoClassification``. The RGB patch embedding never transfers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import VJEPA2Config
from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2AttentivePooler, VJEPA2Layer

from audio_cls.nn.stem import STEM_CHANNELS, ConvStem, StemKind
from audio_cls.nn.weights import PretrainedWeightsError

__all__ = [
    "TubeletViTEncoder",
    "load_vjepa2_pooler_state",
    "load_vjepa2_state",
]


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``(n,) -> (n dim)`` sine-cosine features (a zero column when ``dim`` is odd)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=positions.device) / (dim / 2))
    angles = positions.float()[:, None] * omega[None]
    return F.pad(torch.cat([angles.sin(), angles.cos()], dim=-1), (0, dim % 2))


class TubeletViTEncoder(nn.Module):
    """Log-mel spectrogram -> tubelet tokens -> V-JEPA2 blocks -> attentive pooling.

    Input ``(B F T)`` (F mel bins, T frames); output ``(B D)`` with ``D = embed_dim = d_model``.

    Args:
        n_mels: Mel bins F.
        chunk_frames: Frames per token along time.
        mel_patch: Mel bins per token; ``None`` = the whole mel axis (one token per chunk).
            Must divide ``n_mels``.
        d_model: Token width D.
        depth: Number of transformer blocks.
        num_heads: Attention heads (``d_model`` must be divisible by it).
        mlp_ratio: MLP hidden size over ``d_model``.
        max_frames: Longest input the learned positional table covers; longer inputs
            interpolate it. Rotary and sin-cos positions have no limit.
        dropout: Dropout on the token embeddings and on attention probabilities.
        pooler_layers: Self-attention layers in the attentive pooler (V-JEPA2 uses 3).
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
        n_mels: int,
        chunk_frames: int = 8,
        mel_patch: int | None = None,
        d_model: int = 192,
        depth: int = 4,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        max_frames: int = 1024,
        dropout: float = 0.0,
        pooler_layers: int = 1,
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
        self.embed_dim = d_model
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
            num_pooler_layers=pooler_layers,
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
        self.pooler = VJEPA2AttentivePooler(self.config)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """V-JEPA2's scheme: truncated normal (0.02) linears, depth-scaled pooler outputs."""
        std = self.config.initializer_range
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
        B, _, T = x.shape
        n_t, c = self.num_chunks(T), self.chunk_frames
        x = F.pad(x, (0, n_t * c - T)) if n_t * c > T else x[..., : n_t * c]  # (B F n_t*c)
        x = x.reshape(B, self.n_bands, self.mel_patch, n_t, c)
        return x.permute(0, 3, 1, 2, 4).flatten(3)  # (B n_t n_b mel_patch*c)

    def _absolute_pos(self, n_t: int, device: torch.device) -> torch.Tensor | None:
        D = self.embed_dim
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B F T) -> (B N D)`` normalised tokens, N = n_chunks * n_bands (time-major)."""
        patches = self.tokenize(x)
        B, n_t, n_b, _ = patches.shape
        h = self.patch_embed(patches)  # (B n_t n_b D)
        pos = self._absolute_pos(n_t, h.device)
        if pos is not None:
            h = h + pos.to(h.dtype)
        h = self.pos_drop(h.flatten(1, 2))  # (B N D)
        # Rotary ids on V-JEPA2's (frame, height, width) grid of side n_b: id = t*n_b^2 + m*n_b.
        t = torch.arange(n_t, device=h.device)[:, None]
        m = torch.arange(n_b, device=h.device)[None, :]
        ids = (t * n_b * n_b + m * n_b).flatten()[None].expand(B, -1)  # (B N)
        for block in self.blocks:
            h = block(h, ids)[0]
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B F T) -> (B D)``."""
        return self.pooler(self.forward_features(x))


def _vjepa2_key_map(module: TubeletViTEncoder, encoder: bool) -> dict[str, str]:
    """Our parameter name -> public V-JEPA2 name (``VJEPA2ForVideoClassification``)."""
    names = {}
    for key in module.state_dict():
        if key.startswith("pooler."):
            names[key] = key
        elif encoder and key.startswith("blocks."):
            names[key] = "vjepa2.encoder.layer." + key[len("blocks.") :]
        elif encoder and key.startswith("norm."):
            names[key] = "vjepa2.encoder.layernorm." + key[len("norm.") :]
    return names


def load_vjepa2_state(
    module: TubeletViTEncoder,
    state_dict: Mapping[str, torch.Tensor],
    encoder: bool = False,
) -> list[str]:
    """Copy a public V-JEPA2 checkpoint's pooler (and optionally transformer blocks) into ours.

    Accepts the key names of ``VJEPA2ForVideoClassification`` (``pooler.*``,
    ``vjepa2.encoder.layer.{i}.*``, ``vjepa2.encoder.layernorm.*``) and of ``VJEPA2Model``
    (``encoder.*``). The classifier, predictor and RGB patch embedding are ignored.

    Args:
        module: The encoder to fill in place.
        state_dict: The checkpoint's state dict.
        encoder: Also copy the transformer blocks and final norm (needs equal width/depth).

    Returns:
        Our parameter names that were loaded.

    Raises:
        PretrainedWeightsError: Keys are missing from the checkpoint or shapes differ; the
            message lists them and the settings that would match.
    """
    sd = {
        (k if k.startswith(("vjepa2.", "pooler.")) else "vjepa2." + k): v
        for k, v in state_dict.items()
    }
    names = _vjepa2_key_map(module, encoder)
    wanted = set(names.values())
    prefixes = ("pooler.", "vjepa2.encoder.layer.") if encoder else ("pooler.",)
    own = module.state_dict()
    missing = [src for src in names.values() if src not in sd]
    mismatched = [
        f"{src}: checkpoint {tuple(sd[src].shape)} vs ours {tuple(own[dst].shape)}"
        for dst, src in names.items()
        if src in sd and sd[src].shape != own[dst].shape
    ]
    n_pool = len({k.split(".")[2] for k in sd if k.startswith("pooler.self_attention_layers.")})
    extra = [k for k in sd if k.startswith(prefixes) and k not in wanted]
    if missing or mismatched or extra:
        query = sd.get("pooler.query_tokens")
        width = None if query is None else query.shape[-1]
        raise PretrainedWeightsError(
            "V-JEPA2 checkpoint does not fit this TubeletViTEncoder "
            f"(checkpoint: width {width}, {n_pool} pooler self-attention layers; ours: width "
            f"{module.embed_dim}, {len(module.pooler.self_attention_layers)} pooler layers, "
            f"depth {len(module.blocks)}); build it with d_model={width}, "
            f"pooler_layers={n_pool} and the checkpoint's num_heads.\n"
            + "".join(f"  shape mismatch {m}\n" for m in mismatched[:10])
            + "".join(f"  missing from checkpoint: {k}\n" for k in missing[:10])
            + "".join(f"  not in our model: {k}\n" for k in extra[:10])
        )
    module.load_state_dict({dst: sd[src] for dst, src in names.items()}, strict=False)
    return sorted(names)


def load_vjepa2_pooler_state(
    module: TubeletViTEncoder, state_dict: Mapping[str, torch.Tensor]
) -> list[str]:
    """Copy only the attentive pooler of a public V-JEPA2 checkpoint; see load_vjepa2_state."""
    return load_vjepa2_state(module, state_dict, encoder=False)
