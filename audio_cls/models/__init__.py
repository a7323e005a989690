"""Architecture families: one file each, registered by name.

Importing this package registers every family; optional heavy dependencies (mamba-ssm CUDA
kernels, ...) are imported only where they are used.
"""

from audio_cls.models.base import AudioClassifier, CheckpointMismatchError, load_classifier
from audio_cls.models.mel_cnn import MelCNN
from audio_cls.models.registry import create_model, get_model_entry, list_models, register_model

__all__ = [
    "AudioClassifier",
    "CheckpointMismatchError",
    "MelCNN",
    "create_model",
    "get_model_entry",
    "list_models",
    "load_classifier",
    "register_model",
]
