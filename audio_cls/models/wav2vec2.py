"""wav2vec 2.0 on the raw 16 kHz waveform, with learned attention pooling over its frames.

Paper: Baevski et al., "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech
Representations" (NeurIPS 2020). The backbone is transformers' ``Wav2Vec2Model``
(:class:`audio_cls.nn.wav2vec2.Wav2Vec2Backbone`); the head pools its frames with learned
queries (``pooling: attention``, one per attention head) before a linear classifier, as the
earlier wav2vec2 event classifier did. The waveform is normalised per example (zero mean, unit
variance), as wav2vec2's feature extractor does (``do_normalize: true``).

Weights (Meta, Hugging Face hub, Apache-2.0): ``wav2vec2_base`` is ``facebook/wav2vec2-base``
(self-supervised on LibriSpeech 960 h; its hub repo holds only ``pytorch_model.bin``, a
``Wav2Vec2ForPreTraining`` state dict, fetched by URL); ``wav2vec2_base_960h`` is
``facebook/wav2vec2-base-960h`` (the same, fine-tuned for English CTC; ``model.safetensors``).
The transformer and conv encoder load; the quantizer, ``project_q``, ``project_hid`` and the CTC
``lm_head`` are dropped. A local folder or file of such weights, a bare ``Wav2Vec2Model`` state
dict, or an audio-cls checkpoint of this family (which also brings its head) load the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from audio_cls.models.base import AudioClassifier
from audio_cls.models.registry import PretrainedConfig, register_model
from audio_cls.nn.frontends import WaveformSettings
from audio_cls.nn.wav2vec2 import Wav2Vec2Backbone

__all__ = ["Wav2Vec2Classifier"]

_OURS = "backbone.wav2vec2."
# Checkpoint prefix -> ours. The hub's task models (ForPreTraining, ForCTC, ForSequenceClassification)
# keep the encoder under "wav2vec2."; a bare Wav2Vec2Model has no prefix (an audio-cls run has
# our names: the registry reads it as such). Everything else is a head of another task: dropped.
_RENAME: tuple[tuple[str, str | None], ...] = (
    ("wav2vec2.", _OURS),
    ("feature_extractor.", _OURS + "feature_extractor."),
    ("feature_projection.", _OURS + "feature_projection."),
    ("encoder.", _OURS + "encoder."),
    ("masked_spec_embed", _OURS + "masked_spec_embed"),
    ("", None),  # quantizer.*, project_q.*, project_hid.*, lm_head.*, projector.*, classifier.*
)
_COVERS = (_OURS + "feature_extractor.", _OURS + "feature_projection.", _OURS + "encoder.")
# a fine-tuned checkpoint without SpecAugment may lack the mask vector
_OPTIONAL = (_OURS + "masked_spec_embed",)

# The position embedding's weight norm: files written before PyTorch's parametrizations hold
# weight_g / weight_v (the pytorch_model.bin of facebook/wav2vec2-base does); transformers now
# builds parametrizations.weight.original0 / original1 where PyTorch has them.
_NEW_NORM = hasattr(nn.utils.parametrizations, "weight_norm")
_WEIGHT_NORM_NAMES = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}


def _weight_norm_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's position-embedding weight-norm tensors under the names our module has."""
    names = _WEIGHT_NORM_NAMES if _NEW_NORM else {v: k for k, v in _WEIGHT_NORM_NAMES.items()}
    out = {}
    for key, value in weights.items():
        head, _, leaf = key.rpartition("pos_conv_embed.conv.")
        for old, new in names.items():
            if head and leaf == old:
                key = f"{head}pos_conv_embed.conv.{new}"
        out[key] = value
    return out


_WAV2VEC2 = {
    "format": None,  # told by the file: pytorch_model.bin (torch) or model.safetensors
    "convert": _weight_norm_names,
    "rename": _RENAME,
    "covers": _COVERS,
    "optional": _OPTIONAL,
    "frontend": {"sample_rate": 16000, "normalize": True},
}


@register_model(
    "wav2vec2_attention",
    tiny={
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 32,
        "conv_dim": [8, 8],
        "conv_kernel": [10, 3],
        "conv_stride": [5, 2],
        "pos_conv_kernel": 4,
        "pos_conv_groups": 2,
    },
    pretrained=(
        PretrainedConfig(
            tag="wav2vec2_base",
            source="https://huggingface.co/facebook/wav2vec2-base/resolve/main/pytorch_model.bin",
            description="wav2vec2-base, self-supervised on LibriSpeech 960 h: conv encoder + "
            "transformer",
            **_WAV2VEC2,
        ),
        PretrainedConfig(
            tag="wav2vec2_base_960h",
            source="facebook/wav2vec2-base-960h",
            description="wav2vec2-base fine-tuned for English speech recognition (CTC, "
            "LibriSpeech 960 h): conv encoder + transformer",
            **_WAV2VEC2,
        ),
    ),
)
class Wav2Vec2Classifier(AudioClassifier):
    """wav2vec2 on the raw waveform, attention pooling over frames, linear classifier."""

    backbone_cls = Wav2Vec2Backbone
    default_frontend = WaveformSettings(sample_rate=16000, normalize=True)
    default_pooling = "attention"
