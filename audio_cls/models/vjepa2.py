"""V-JEPA2-style tubelet ViT classifier over log-mel spectrograms, with an attentive pooler.

Paper: Assran et al., "V-JEPA 2" (2025). The spectrogram is cut into time chunks (tubelets) of
``chunk_frames`` frames, embedded, encoded by transformers' ``VJEPA2Layer`` blocks and pooled by
``VJEPA2AttentivePooler``. Published V-JEPA2 pooler (and matching encoder) weights load by hub
name or local path with ``pretrained`` (through ``audio_cls.nn.tubelet_vit.load_vjepa2_state``).
"""

from __future__ import annotations

from typing import Any, Literal

from audio_cls.models.base import AudioClassifier
from audio_cls.models.mamba import SSM_FRONTEND
from audio_cls.models.registry import register_model
from audio_cls.nn.stem import STEM_CHANNELS, StemKind
from audio_cls.nn.tubelet_vit import TubeletViTEncoder, load_vjepa2_state
from audio_cls.nn.weights import fetch_state_dict

__all__ = ["VJEPA2Classifier"]


@register_model(
    "vjepa2",
    frontend=SSM_FRONTEND,
    weight_formats=("hf-hub:facebook/vjepa2-*",),
    tiny={"d_model": 32, "depth": 1, "num_heads": 2},
)
class VJEPA2Classifier(AudioClassifier):
    """Tubelet ViT with V-JEPA2's attentive pooler.

    Args:
        num_classes: Output classes.
        chunk_frames: Frames per tubelet (the earlier project: 8, giving 19-20 tokens for 5 s).
        mel_patch: Mel bins per token (None: the whole mel axis).
        d_model: Token width.
        depth: Transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP width factor.
        dropout: Dropout in attention and MLP.
        pooler_layers: Self-attention layers inside the attentive pooler.
        remainder: Leftover frames after the last whole chunk: ``pad`` into one more, or ``crop``.
        drop_path: Stochastic depth rate.
        pretrained: V-JEPA2 weights to start from when fitting: a hub name
            (``facebook/vjepa2-vitl-fpc64-256``) or a local folder/file of ``.safetensors``.
            The attentive pooler always loads (``d_model``, ``num_heads`` and ``pooler_layers``
            must match the checkpoint); the patch embedding never does (video, not mel).
        pretrained_encoder: Also load the transformer blocks (``depth`` must match too).
        stem: ``linear`` tokens from raw mel patches, or ``conv``: from the per-frame features
            of a small conv stem (:mod:`audio_cls.nn.stem`; far better from scratch on small sets).
        stem_channels: Channels of the conv stem's stages (default ``[16, 32]``).
        stem_dim: Per-frame width of the conv stem's output.
        **kwargs: Front end, augmentation, loss and optimiser settings of ``AudioClassifier``.
    """

    def __init__(
        self,
        num_classes: int,
        chunk_frames: int = 8,
        mel_patch: int | None = None,
        d_model: int = 192,
        depth: int = 4,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pooler_layers: int = 1,
        remainder: Literal["pad", "crop"] = "pad",
        drop_path: float = 0.0,
        pretrained: str | None = None,
        pretrained_encoder: bool = False,
        stem: StemKind = "linear",
        stem_channels: list[int] | None = None,
        stem_dim: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.backbone = TubeletViTEncoder(
            self.hparams.n_mels,
            chunk_frames=chunk_frames,
            mel_patch=mel_patch,
            d_model=d_model,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            pooler_layers=pooler_layers,
            remainder=remainder,
            drop_path=drop_path,
            stem=stem,
            stem_channels=stem_channels or STEM_CHANNELS,
            stem_dim=stem_dim,
        )
        self.build_head()
        self._pretrained_loaded = False

    def load_pretrained(self) -> list[str]:
        """Load the ``pretrained`` V-JEPA2 weights; returns our parameter names that loaded."""
        state = fetch_state_dict(self.hparams.pretrained)
        loaded = load_vjepa2_state(self.backbone, state, encoder=self.hparams.pretrained_encoder)
        self._pretrained_loaded = True
        return loaded

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # At fit setup, so a resumed run's checkpoint (restored after setup) wins, and
        # rebuilding a trained model for test/predict/classify never fetches anything.
        if stage == "fit" and self.hparams.pretrained and not self._pretrained_loaded:
            self.load_pretrained()
