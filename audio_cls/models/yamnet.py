"""YAMNet: MobileNetV1 over 0.96 s log-mel patches, as published for AudioSet.

Model: YAMNet (Plakal & Ellis, Google, 2019; ``tensorflow/models``, ``research/audioset/yamnet``),
MobileNetV1 (Howard et al., 2017) with 14 layers over 96 frames x 64 HTK mel bands
(:mod:`audio_cls.nn.yamnet`), global average pooling to a 1024-d embedding and a 521-class
AudioSet classifier (sigmoid in the original; here the head is trained with softmax
cross-entropy like every family). About 3.2M parameters before the classifier.

Weights: ``yamnet_audioset``, the published Keras file
``https://storage.googleapis.com/audioset/yamnet.h5`` (Apache 2.0, as the repository), converted
on load by :func:`~audio_cls.nn.yamnet.convert_keras_weights`; its ``logits`` layer is the
classifier and is dropped when the class count is not 521. The 521 AudioSet display names live
in the repository's ``yamnet_class_map.csv``, which is not bundled here: a 521-class model
keeps numeric class names.
"""

from __future__ import annotations

from audio_cls.models.base import AudioClassifier
from audio_cls.models.registry import PretrainedConfig, register_model
from audio_cls.nn.yamnet import YAMNetBackbone, YAMNetSettings, convert_keras_weights

__all__ = ["YAMNetClassifier"]

#: The front end the published weights were trained with (augmentation fields left out).
_YAMNET_FRONTEND = YAMNetSettings().contract()


@register_model(
    "yamnet",
    tiny={"width_multiplier": 0.125},
    pretrained=(
        PretrainedConfig(
            tag="yamnet_audioset",
            source="https://storage.googleapis.com/audioset/yamnet.h5",
            format="h5",
            convert=convert_keras_weights,
            frontend=_YAMNET_FRONTEND,
            model_args={"width_multiplier": 1.0},
            description="YAMNet (AudioSet, 521 classes): MobileNetV1 + logits, Keras h5",
        ),
    ),
)
class YAMNetClassifier(AudioClassifier):
    """YAMNet: MobileNetV1 over 64-band HTK log-mel patches (16 kHz, 25 ms / 10 ms)."""

    backbone_cls = YAMNetBackbone
    default_frontend = YAMNetSettings()
    default_pooling = "mean"
