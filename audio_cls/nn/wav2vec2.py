"""wav2vec 2.0 over the raw 16 kHz waveform (unpooled frames; pooling is the head's).

Paper: Baevski et al., "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech
Representations" (NeurIPS 2020), https://arxiv.org/abs/2006.11477. The network is
``transformers``' ``Wav2Vec2Model``: a convolutional feature encoder (seven layers, 320 samples
= 20 ms hop and 400 samples = 25 ms receptive field at 16 kHz in the base architecture, group
norm after the first layer) then a feature projection, a convolutional position embedding and a
post-norm transformer. ``stable_layer_norm`` switches to the layout of the large ``lv60`` and
XLS-R models (layer-normed conv layers with bias, pre-norm transformer).

Weights: Meta's checkpoints on the Hugging Face hub (``facebook/wav2vec2-base``,
``facebook/wav2vec2-base-960h``, Apache-2.0) load through the ``wav2vec2_attention`` family's
pretrained configurations (:mod:`audio_cls.models.wav2vec2`); nothing is downloaded when the
module is built. Their keys ``wav2vec2.*`` are this module's ``wav2vec2.*``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

__all__ = ["BASE_CONV_DIM", "BASE_CONV_KERNEL", "BASE_CONV_STRIDE", "Wav2Vec2Backbone"]

#: wav2vec2-base's conv feature encoder (also the large models').
BASE_CONV_DIM: tuple[int, ...] = (512,) * 7
BASE_CONV_KERNEL: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
BASE_CONV_STRIDE: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)


class Wav2Vec2Backbone(nn.Module):
    """Waveform ``(B 1 T)`` -> wav2vec2's last hidden state ``(B L D)``, L frames.

    The defaults are the wav2vec2-base architecture (94.4M parameters: 768 wide, 12 layers of
    12 heads, 3072 feed-forward, the 7-layer conv encoder); smaller values build small variants
    from scratch, published weights need the architecture they were trained with.

    Args:
        in_channels: Channels of the front end's output: 1, the waveform (``WaveformSettings``).
        hidden_size: Transformer width D.
        num_layers: Transformer layers.
        num_heads: Attention heads per layer (divide ``hidden_size``); also the default heads
            of ``attention`` pooling.
        intermediate_size: Feed-forward width of each layer.
        conv_dim: Output channels of each conv layer of the feature encoder.
        conv_kernel: Kernel of each conv layer (as many as ``conv_dim``).
        conv_stride: Stride of each conv layer; their product is the frame hop in samples.
        pos_conv_kernel: Kernel of the convolutional position embedding (128 in base).
        pos_conv_groups: Groups of that convolution (16 in base; divide ``hidden_size``).
        stable_layer_norm: Layout of wav2vec2-large-lv60 and XLS-R (layer norm in every conv
            layer, conv bias, pre-norm transformer); False: wav2vec2-base's and -large's.
        dropout: Dropout on hidden states: after the feature projection, the position
            embedding, attention and feed-forward.
        attention_dropout: Dropout on attention probabilities.
        activation_dropout: Dropout inside the feed-forward, after its activation.
        layerdrop: Probability of skipping a whole transformer layer at each training step
            (LayerDrop). Skipped layers get no gradient, which DDP refuses unless
            ``strategy: ddp_find_unused_parameters_true``.
        mask_time_prob: SpecAugment-style time masking in training, as wav2vec2's fine-tuning:
            about this share of frames (in spans of ``mask_time_length``) is replaced by a
            learned vector before the transformer; 0 turns it off.
        mask_time_length: Frames per masked span (10 frames = 200 ms in base).
        freeze_feature_encoder: Keep the conv feature encoder fixed (no gradients), as
            wav2vec2 fine-tuning recipes do.
        gradient_checkpointing: Recompute each layer in the backward pass: less memory for
            longer clips or larger batches, about a third more compute.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        conv_dim: Sequence[int] = BASE_CONV_DIM,
        conv_kernel: Sequence[int] = BASE_CONV_KERNEL,
        conv_stride: Sequence[int] = BASE_CONV_STRIDE,
        pos_conv_kernel: int = 128,
        pos_conv_groups: int = 16,
        stable_layer_norm: bool = False,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layerdrop: float = 0.0,
        mask_time_prob: float = 0.0,
        mask_time_length: int = 10,
        freeze_feature_encoder: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if in_channels != 1:
            raise ValueError(
                f"wav2vec2 reads the raw waveform (1 channel), got a front end with "
                f"{in_channels} channels; use the waveform front end (frontend: {{kind: waveform}})"
            )
        conv_dim, conv_kernel, conv_stride = list(conv_dim), list(conv_kernel), list(conv_stride)
        if not conv_dim or not len(conv_dim) == len(conv_kernel) == len(conv_stride):
            raise ValueError(
                f"conv_dim, conv_kernel and conv_stride need one entry per conv layer; got "
                f"{len(conv_dim)}, {len(conv_kernel)} and {len(conv_stride)}"
            )
        if hidden_size % num_heads or hidden_size % pos_conv_groups:
            raise ValueError(
                f"hidden_size={hidden_size} must be divisible by num_heads={num_heads} and by "
                f"pos_conv_groups={pos_conv_groups}"
            )
        for name, p in (
            ("dropout", dropout),
            ("attention_dropout", attention_dropout),
            ("activation_dropout", activation_dropout),
            ("layerdrop", layerdrop),
            ("mask_time_prob", mask_time_prob),
        ):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if mask_time_length < 1:
            raise ValueError(f"mask_time_length must be >= 1, got {mask_time_length}")
        config = Wav2Vec2Config(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            conv_dim=conv_dim,
            conv_kernel=conv_kernel,
            conv_stride=conv_stride,
            num_conv_pos_embeddings=pos_conv_kernel,
            num_conv_pos_embedding_groups=pos_conv_groups,
            feat_extract_norm="layer" if stable_layer_norm else "group",
            conv_bias=stable_layer_norm,
            do_stable_layer_norm=stable_layer_norm,
            hidden_dropout=dropout,
            feat_proj_dropout=dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            layerdrop=layerdrop,
            # masks come from mask_time_indices (below), never from transformers' own sampler
            mask_time_prob=0.0,
            mask_feature_prob=0.0,
        )
        config._attn_implementation = "sdpa"
        self.wav2vec2 = Wav2Vec2Model(config)
        # The learned vector of masked frames, kept whatever mask_time_prob says so that the
        # published weights (which hold it) load the same way; trained only while it is used,
        # since DDP refuses parameters that get no gradient.
        self.wav2vec2.masked_spec_embed = nn.Parameter(
            torch.empty(hidden_size).uniform_(), requires_grad=mask_time_prob > 0
        )
        if freeze_feature_encoder:
            self.wav2vec2.freeze_feature_encoder()
        if gradient_checkpointing:
            # transformers 5 renamed gradient_checkpointing_enable (kept as a deprecated alias)
            enable = getattr(self.wav2vec2, "activation_checkpointing_enable", None)
            enable = enable or self.wav2vec2.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.stable_layer_norm = stable_layer_norm
        self.conv_kernel, self.conv_stride = conv_kernel, conv_stride
        # samples the first frame needs: k0 + sum (k_i - 1) * (stride product before layer i)
        hops = [math.prod(conv_stride[:i]) for i in range(len(conv_stride))]
        self.receptive_field = conv_kernel[0] + sum(
            (k - 1) * h for k, h in zip(conv_kernel[1:], hops[1:], strict=True)
        )
        self.hop = math.prod(conv_stride)
        self.num_features = hidden_size
        self.num_heads = num_heads
        self.layout = "sequence"

    def num_frames(self, num_samples: int) -> int:
        """Frames L the feature encoder makes of ``num_samples`` samples."""
        frames = num_samples
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            frames = (frames - k) // s + 1
        return frames

    def _time_mask(self, batch: int, frames: int, device: torch.device) -> torch.Tensor:
        """``(B L)`` bool, True on masked frames: spans of ``mask_time_length`` frames, about
        ``mask_time_prob * L / mask_time_length`` of them (at least one) per example."""
        span = min(self.mask_time_length, frames)
        spans = max(1, int(self.mask_time_prob * frames / span + torch.rand(()).item()))
        starts = torch.randint(0, frames - span + 1, (batch, spans), device=device)
        index = (starts[..., None] + torch.arange(span, device=device)).flatten(1)
        mask = torch.zeros(batch, frames, dtype=torch.bool, device=device)
        return mask.scatter_(1, index, True)

    def _encode(self, x: torch.Tensor, hidden_states: bool):  # -> Wav2Vec2BaseModelOutput
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"expected a waveform batch (B, 1, T), got shape {tuple(x.shape)}")
        samples = x.shape[-1]
        if samples < self.receptive_field:
            raise ValueError(
                f"wav2vec2 needs at least {self.receptive_field} samples (its conv encoder's "
                f"receptive field), got {samples}; use longer windows"
            )
        wave = x[:, 0]  # (B T)
        mask = None
        if self.training and self.mask_time_prob > 0:
            mask = self._time_mask(x.shape[0], self.num_frames(samples), x.device)
        return self.wav2vec2(wave, mask_time_indices=mask, output_hidden_states=hidden_states)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named taps ``(B L *)``: ``feature_encoder`` (the conv encoder's output after the
        projection's layer norm, transformers' ``extract_features``, C channels), ``layer_0``
        (the transformer's input, after the position embedding) to ``layer_N`` (the output of
        layer N), and ``norm`` (the final layer norm) with ``stable_layer_norm``."""
        out = self._encode(x, hidden_states=True)
        taps = {"feature_encoder": out.extract_features}
        for i, h in enumerate(out.hidden_states):
            taps[f"layer_{i}"] = h
        if self.stable_layer_norm:  # pre-norm: the last layer's output is normalised once more
            taps["norm"] = out.last_hidden_state
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B 1 T) -> (B L D)``, L = :meth:`num_frames` of T."""
        return self._encode(x, hidden_states=False).last_hidden_state
