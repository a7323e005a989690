"""audio-cls: audio event classification with PyTorch Lightning."""

__version__ = "0.1.0"
