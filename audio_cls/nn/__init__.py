"""Plain torch building blocks (no Lightning): front ends, backbones, heads, weights."""

from audio_cls.nn.frontends import LogMelSettings, WaveformSettings
from audio_cls.nn.heads import ClassifierHead, FeaturePool
from audio_cls.nn.specaugment import SpecAugment

__all__ = [
    "ClassifierHead",
    "FeaturePool",
    "LogMelSettings",
    "SpecAugment",
    "WaveformSettings",
]
