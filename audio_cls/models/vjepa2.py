"""V-JEPA2-style tubelet ViT classifier over log-mel spectrograms, with an attentive pooler.

Paper: Assran et al., "V-JEPA 2" (2025). The spectrogram is cut into time chunks (tubelets) of
``chunk_frames`` frames, embedded, encoded by transformers' ``VJEPA2Layer`` blocks
(:class:`audio_cls.nn.tubelet_vit.TubeletViTEncoder`) and pooled by V-JEPA2's attentive pooler
in the head (``pooling: attentive``).

Weights: V-JEPA2 checkpoints (Meta, Hugging Face hub ``facebook/vjepa2-*``, MIT licence) are
video models. Their transformer blocks load into ours where width, depth and heads match, and a
classification checkpoint's attentive pooler loads into the head; the RGB patch embedding never
transfers (``pretrained_prefixes: [head.pool]`` loads the pooler alone).
"""

from __future__ import annotations

from audio_cls.models.base import AudioClassifier
from audio_cls.models.mamba import SSM_FRONTEND
from audio_cls.models.registry import PretrainedConfig, register_model
from audio_cls.nn.tubelet_vit import TubeletViTEncoder

__all__ = ["VJEPA2Classifier"]

# Key names of transformers' VJEPA2Model ("encoder.*") and VJEPA2ForVideoClassification
# ("vjepa2.encoder.*", "pooler.*", "classifier.*"); everything else (video patch embedding,
# predictor) has no counterpart here.
_VJEPA2_RENAME = (
    ("vjepa2.encoder.layer.", "backbone.blocks."),
    ("vjepa2.encoder.layernorm.", "backbone.norm."),
    ("encoder.layer.", "backbone.blocks."),
    ("encoder.layernorm.", "backbone.norm."),
    ("pooler.", "head.pool.attentive.pooler."),
    ("classifier.", "head.fc."),
    ("", None),
)
_VITL = {"d_model": 1024, "depth": 24, "num_heads": 16}


@register_model(
    "vjepa2",
    tiny={"d_model": 32, "depth": 1, "num_heads": 2},
    pretrained=(
        PretrainedConfig(
            tag="vjepa2_vitl_fpc64_256",
            source="facebook/vjepa2-vitl-fpc64-256",
            format="safetensors",
            rename=_VJEPA2_RENAME,
            covers=("backbone.blocks.", "backbone.norm."),
            # a local copy of a classification checkpoint brings its pooler and classifier
            optional=("head.pool.attentive.", "head.fc."),
            model_args=_VITL,
            description="V-JEPA2 ViT-L encoder (video, self-supervised): transformer blocks",
        ),
        PretrainedConfig(
            tag="vjepa2_vitl_fpc16_256_ssv2",
            source="facebook/vjepa2-vitl-fpc16-256-ssv2",
            format="safetensors",
            rename=_VJEPA2_RENAME,
            covers=("backbone.blocks.", "backbone.norm.", "head.pool.attentive.", "head.fc."),
            model_args={**_VITL, "pooling": "attentive", "pool_layers": 3},
            description="V-JEPA2 ViT-L classifier (Something-Something v2): blocks + pooler",
        ),
    ),
)
class VJEPA2Classifier(AudioClassifier):
    """Tubelet ViT over mel spectrograms with V-JEPA2's attentive pooler."""

    backbone_cls = TubeletViTEncoder
    default_frontend = SSM_FRONTEND
    default_pooling = "attentive"
