"""Plain torch building blocks (no Lightning): front ends, SpecAugment, pooling, heads, SSM layers."""

from audio_cls.nn.frontend import LogMel, frontend_settings_mismatch
from audio_cls.nn.heads import ClassifierHead, TimeFreqPool
from audio_cls.nn.specaugment import SpecAugment

__all__ = ["ClassifierHead", "LogMel", "SpecAugment", "TimeFreqPool", "frontend_settings_mismatch"]
