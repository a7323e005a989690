"""ESResNeXt-fbsp and the AudioCLIP audio branch: ResNeXt-50 behind a learnable FBSP front end.

Papers: Guzhov et al., "ESResNe(X)t-fbsp: Learning Robust Time-Frequency Transformation of
Audio" (IJCNN 2021); Guzhov et al., "AudioCLIP: Extending CLIP to Image, Text and Audio"
(ICASSP 2022). The front end (:class:`audio_cls.nn.fbsp.FBSPFrontend`) turns 44.1 kHz audio
into a dB power spectrum in three frequency bands, read as the three channels of an image by a
ResNeXt-50 32x4d with attention gates (:class:`audio_cls.nn.resnext.ESResNeXtBackbone`).
AudioCLIP's audio branch is the same network whose last layer is a 2048 -> 1024 projection into
CLIP's joint space, L2-normalised; here that projection is the head's ``embed_dim`` and a
classifier follows it.

Weights (AndreyGuzhov/ESResNeXt-fbsp and AndreyGuzhov/AudioCLIP GitHub releases, MIT licence):
``ESResNeXtFBSP_AudioSet.pt`` (a state dict: torchvision ResNeXt names, ``att1..att5``,
``fbsp.{m,fb,fc,bias}``, ``window``, ``fc`` with the 527 AudioSet outputs) and
``AudioCLIP-Full-Training.pt`` (the same network under ``audio.``, its ``fc`` being the
1024-d projection, beside CLIP's ``visual.*`` and text weights, which are ignored). torchvision's
ImageNet ResNeXt-50 weights start the backbone alone (the "ptin" setting of the paper).
"""

from __future__ import annotations

from audio_cls.models.base import AudioClassifier
from audio_cls.models.labels import audioset_labels
from audio_cls.models.registry import PretrainedConfig, register_model
from audio_cls.nn.fbsp import FBSPSettings
from audio_cls.nn.resnext import ESResNeXtBackbone

__all__ = ["AudioCLIPAudio", "ESResNeXtFBSP"]

_RELEASES = "https://github.com/AndreyGuzhov"
#: The front end every published checkpoint was trained with.
PUBLISHED_FBSP = FBSPSettings(sample_rate=44100)
_PUBLISHED_CONTRACT = {
    k: v for k, v in PUBLISHED_FBSP.contract().items() if k not in ("kind", "int16_scale")
}
_TINY = {"layers": [1, 1, 1, 1], "groups": 1, "width_per_group": 64, "width": 4}

_ESRESNEXT_RENAME = (
    ("fbsp.", "frontend.fbsp."),
    ("window", "frontend.window"),
    ("fc.", "head.fc."),
    ("", "backbone."),
)
_AUDIOCLIP_RENAME = (
    ("audio.fbsp.", "frontend.fbsp."),
    ("audio.window", "frontend.window"),
    ("audio.fc.", "head.proj."),
    ("audio.", "backbone."),
    ("", None),  # CLIP's image and text towers, logit scales
)
#: What both AudioCLIP releases share: the audio branch's layout and front end.
_AUDIOCLIP = {
    "format": "torch",
    "rename": _AUDIOCLIP_RENAME,
    "covers": ("frontend.", "backbone.", "head.proj."),
    "frontend": _PUBLISHED_CONTRACT,
    "model_args": {"embed_dim": 1024},
}


@register_model(
    "esresnext_fbsp",
    tiny=_TINY,
    pretrained=(
        PretrainedConfig(
            tag="esresnext_fbsp_audioset",
            source=f"{_RELEASES}/ESResNeXt-fbsp/releases/download/v0.1/ESResNeXtFBSP_AudioSet.pt",
            format="torch",
            rename=_ESRESNEXT_RENAME,
            frontend=_PUBLISHED_CONTRACT,
            class_names=audioset_labels(),
            description="ESResNeXt-fbsp trained on AudioSet (527 tags): front end + backbone",
        ),
        PretrainedConfig(
            tag="resnext50_imagenet",
            source="https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth",
            format="torch",
            rename=(("fc.", None), ("", "backbone.")),
            covers=("backbone.conv1.", "backbone.bn1.", "backbone.layer"),
            description="torchvision ResNeXt-50 32x4d on ImageNet: the residual stages only",
        ),
    ),
)
class ESResNeXtFBSP(AudioClassifier):
    """ESResNeXt-fbsp: learnable FBSP front end + ResNeXt-50 32x4d with attention gates."""

    backbone_cls = ESResNeXtBackbone
    default_frontend = PUBLISHED_FBSP
    default_pooling = "mean"  # the published global average pooling


@register_model(
    "audioclip_audio",
    tiny=_TINY,
    pretrained=(
        PretrainedConfig(
            tag="audioclip_full",
            source=f"{_RELEASES}/AudioCLIP/releases/download/v0.1/AudioCLIP-Full-Training.pt",
            description="AudioCLIP audio branch (full training): front end, backbone, "
            "1024-d projection",
            **_AUDIOCLIP,
        ),
        PretrainedConfig(
            tag="audioclip_partial",
            source=f"{_RELEASES}/AudioCLIP/releases/download/v0.1/AudioCLIP-Partial-Training.pt",
            description="AudioCLIP audio branch (partial training: audio head only tuned)",
            **_AUDIOCLIP,
        ),
    ),
)
class AudioCLIPAudio(AudioClassifier):
    """AudioCLIP's audio branch: ESResNeXt-fbsp, a 1024-d L2-normalised embedding, a classifier."""

    backbone_cls = ESResNeXtBackbone
    default_frontend = PUBLISHED_FBSP
    default_pooling = "mean"
    option_defaults = {"embed_dim": 1024, "normalize_embedding": True}
