"""MelCNN: a compact log-mel CNN for audio event classification.

In the spirit of the impact-noise student network and of the small VGG-style CNNs used on
ESC-50 / UrbanSound8K (Piczak 2015; Salamon & Bello 2017): stacked 3x3 convolution blocks with
batch norm and pooling over the (mel, time) plane (:class:`audio_cls.nn.cnn.MelCNNBackbone`),
then mean over frequency and mean + max over time in the head. Sized to train on two CPU cores
in minutes. Trained from scratch; no public weights.
"""

from __future__ import annotations

from audio_cls.models.base import AudioClassifier
from audio_cls.models.registry import register_model
from audio_cls.nn.cnn import MelCNNBackbone
from audio_cls.nn.frontends import LogMelSettings

__all__ = ["MelCNN"]


@register_model("mel_cnn", tiny={"channels": [4, 8, 8]})
class MelCNN(AudioClassifier):
    """Mel-spectrogram CNN (64 mels, 25 ms windows, 10 ms hop)."""

    backbone_cls = MelCNNBackbone
    default_frontend = LogMelSettings(n_mels=64, win_ms=25.0, hop_ms=10.0)
    default_pooling = "meanmax"
