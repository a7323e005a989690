"""Architecture families: one file each, registered by name.

Importing this package registers every family; optional heavy dependencies (mamba-ssm CUDA
kernels, ...) are imported only where they are used.
"""

from audio_cls.models.base import AudioClassifier, CheckpointMismatchError, load_classifier
from audio_cls.models.esresnext import AudioCLIPAudio, ESResNeXtFBSP
from audio_cls.models.liquid_s4 import LiquidS4Classifier
from audio_cls.models.mamba import MambaClassifier
from audio_cls.models.mel_cnn import MelCNN
from audio_cls.models.registry import (
    PretrainedConfig,
    create_model,
    create_published,
    find_pretrained,
    get_model_entry,
    list_models,
    list_pretrained,
    register_model,
)
from audio_cls.models.soundnet import SoundNetClassifier
from audio_cls.models.text_teacher import TextTeacher
from audio_cls.models.vjepa2 import VJEPA2Classifier
from audio_cls.models.wav2vec2 import Wav2Vec2Classifier
from audio_cls.models.yamnet import YAMNetClassifier

__all__ = [
    "AudioCLIPAudio",
    "AudioClassifier",
    "CheckpointMismatchError",
    "ESResNeXtFBSP",
    "LiquidS4Classifier",
    "MambaClassifier",
    "MelCNN",
    "PretrainedConfig",
    "SoundNetClassifier",
    "TextTeacher",
    "VJEPA2Classifier",
    "Wav2Vec2Classifier",
    "YAMNetClassifier",
    "create_model",
    "create_published",
    "find_pretrained",
    "get_model_entry",
    "list_models",
    "list_pretrained",
    "load_classifier",
    "register_model",
]
