"""Dataset layouts: each source turns a folder on disk into a ``Manifest`` of labelled clips."""

from audio_cls.data.sources.base import Clip, ClipSource, Manifest, ManifestError
from audio_cls.data.sources.esc50 import ESC50
from audio_cls.data.sources.files import AudioFiles
from audio_cls.data.sources.folder import ClassFolders
from audio_cls.data.sources.groups import ClassGroups
from audio_cls.data.sources.manifest import CSVManifest
from audio_cls.data.sources.synthetic import SYNTHETIC_CLASSES, Synthetic
from audio_cls.data.sources.urbansound8k import UrbanSound8K
from audio_cls.data.sources.video import VideoFolder

__all__ = [
    "ESC50",
    "SYNTHETIC_CLASSES",
    "AudioFiles",
    "CSVManifest",
    "ClassFolders",
    "ClassGroups",
    "Clip",
    "ClipSource",
    "Manifest",
    "ManifestError",
    "Synthetic",
    "UrbanSound8K",
    "VideoFolder",
]
