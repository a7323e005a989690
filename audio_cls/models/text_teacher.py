"""TextTeacher: an audio backbone projected into a text space, classified by class-name text.

The teacher of the impact-noise project, after ViLD (Gu et al., "Open-vocabulary Object
Detection via Vision and Language Knowledge Distillation", ICLR 2022) and CLIP (Radford et al.,
2021): any registered audio family's front end and backbone, pooled and projected into the
embedding space of a SentenceTransformer (the head's ``embed_dim`` projection, unit norm), and a
classifier whose weights are the frozen text embeddings of the class names written into prompts
(:mod:`audio_cls.text`). Logits are cosine similarities divided by a temperature, fixed (ViLD)
or learned (CLIP); an optional class may get a learned embedding instead of text (ViLD's
background, "none of these").

Because the classifier is text, the teacher scores class names it never saw in training
(:meth:`TextTeacher.set_class_names`). The text model's name and the prompts travel with the
checkpoint, and the class embeddings are a buffer of the state dict, so a checkpoint predicts
its own classes with no text model installed. The text model is loaded when the class names
are known (at ``setup``, or at the first forward pass of a model built outside a Trainer),
never at import. No published weights.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from audio_cls.models.base import STAGES, AudioClassifier, segment_metrics
from audio_cls.models.mel_cnn import MelCNN
from audio_cls.models.registry import get_model_entry, register_model
from audio_cls.nn.frontends import FrontendSettings, frontend_from_dict
from audio_cls.text import DEFAULT_PROMPTS, DEFAULT_TEXT_MODEL, check_prompts, parse_names

__all__ = ["TextClassifier", "TextTeacher"]

#: The audio family a teacher uses unless told otherwise.
DEFAULT_AUDIO = "mel_cnn"
#: Largest logit scale (1 / temperature) a learned temperature may reach, as in CLIP.
MAX_SCALE = 100.0


def _audio_entry(audio: str) -> Any:
    """The registry entry of audio family ``audio`` (one-line errors)."""
    if audio == TextTeacher.registry_name:
        raise ValueError("--model.audio text_teacher: a teacher's audio family must be another")
    try:
        return get_model_entry(audio)
    except KeyError as err:
        raise ValueError(f"--model.audio: {err.args[0]}") from None


class AudioBackbone(nn.Module):
    """The backbone of a registered audio family, for the teacher.

    Not a module of its own: constructing it builds that family's backbone (so the state dict
    has the family's key names), with the family's defaults under ``audio_options``.

    Args:
        in_channels: Channels of the front end's output.
        audio: Registered family whose front end and backbone the teacher uses
            (``audio-cls models`` lists them).
        audio_options: Options of that family's backbone (e.g. ``{channels: [16, 32, 64]}`` for
            ``mel_cnn``); None: its defaults.
    """

    def __new__(  # type: ignore[misc]
        cls, in_channels: int, audio: str = DEFAULT_AUDIO, audio_options: dict | None = None
    ) -> nn.Module:
        family = _audio_entry(audio).cls
        backbone_cls = family.backbone_cls
        accepted = set(inspect.signature(backbone_cls).parameters)
        defaults = {k: v for k, v in family.option_defaults.items() if k in accepted}
        options = {**defaults, **(audio_options or {})}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(
                f"--model.audio_options {unknown}: {backbone_cls.__name__} ({audio}) has no such "
                f"option(s); it takes {', '.join(sorted(accepted - {'in_channels'}))}"
            )
        return backbone_cls(in_channels, **options)

    def __init__(
        self, in_channels: int, audio: str = DEFAULT_AUDIO, audio_options: dict | None = None
    ) -> None:  # never runs (``__new__`` returns another class); it states the signature
        super().__init__()


class TextClassifier(nn.Module):
    """Cosine similarity to frozen class text embeddings, over a temperature.

    Args:
        dim: Width D of the embeddings.
        num_classes: Classes C (rows of ``text``, zeros until :meth:`set_text`).
        temperature: Similarities are divided by it (its log-inverse is the logit scale).
        learn_temperature: Learn the temperature (CLIP) rather than keep it fixed (ViLD).
        background: Learn one embedding for a background class ("none of these").
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        temperature: float = 0.07,
        learn_temperature: bool = False,
        background: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < temperature <= 1:
            raise ValueError(f"--model.temperature must be in (0, 1], got {temperature}")
        self.register_buffer("text", torch.zeros(num_classes, dim))  # (C, D), unit rows
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.background = nn.Parameter(torch.randn(dim) / math.sqrt(dim)) if background else None
        self.background_index = -1  # row of the background class, -1: none
        self.ready = False  # text rows set (by set_text or a loaded state dict)
        self.register_load_state_dict_post_hook(_mark_ready)

    def set_text(self, text: torch.Tensor, background_index: int = -1) -> None:
        """Use ``text`` ``(C, D)`` as the class embeddings (``background_index``: the row the
        learned background embedding replaces, -1: none)."""
        with torch.inference_mode(False):  # a buffer made under inference mode could not train
            self.text = F.normalize(text.detach().float(), dim=-1).to(self.text.device).clone()
        self.background_index = background_index if self.background is not None else -1
        self.ready = True

    @property
    def scale(self) -> torch.Tensor:
        """The logit scale, 1 / temperature (capped at :data:`MAX_SCALE`)."""
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    def class_embeddings(self) -> torch.Tensor:
        """The class embeddings ``(C, D)``, unit rows, the background one learned."""
        text = self.text
        if self.background is not None and self.background_index >= 0:
            rows = torch.arange(len(text), device=text.device) == self.background_index
            text = torch.where(rows.unsqueeze(1), self.background.to(text.dtype), text)
        return F.normalize(text, dim=-1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, D)`` -> logits ``(B, C)``: scaled cosine similarities."""
        x = F.normalize(embedding.float(), dim=-1)
        return self.scale * x @ self.class_embeddings().t()


def _mark_ready(module: nn.Module, incompatible: Any) -> None:
    if not any(k.endswith("text") for k in incompatible.missing_keys):
        module.ready = True


@register_model("text_teacher", tiny={"audio_options": {"channels": [4, 8, 8]}})
class TextTeacher(AudioClassifier):
    """Audio backbone projected into a text space, classified by class-name text embeddings."""

    backbone_cls = AudioBackbone
    default_frontend = MelCNN.default_frontend
    default_pooling = None  # type: ignore[assignment]  # the audio family's
    option_defaults = {"embed_dim": 384, "normalize_embedding": True}

    def __init__(
        self,
        num_classes: int,
        text_model: str = DEFAULT_TEXT_MODEL,
        prompts: list[str] | None = None,
        temperature: float = 0.07,
        learn_temperature: bool = False,
        background: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Teacher options.

        Args:
            text_model: SentenceTransformer name or folder whose embeddings of the class names
                are the classifier (``all-MiniLM-L6-v2``, 384-d, is packaged offline by the
                ``text`` extra); ``embed_dim`` must be its width.
            prompts: Templates with a ``{label}`` field, averaged per class (None: ``the sound
                of {label}``, ``a recording of {label}``, ``{label}``).
            temperature: Cosine similarities are divided by it (ViLD fixes 0.01; CLIP starts
                learning it at 0.07).
            learn_temperature: Learn the temperature (CLIP) instead of keeping it fixed (ViLD).
            background: Name of a class whose embedding is learned instead of read from text
                (ViLD's background, "none of these"); None: every class is text.
        """
        self.text_model = text_model
        self.prompts = check_prompts(DEFAULT_PROMPTS if prompts is None else prompts)
        self.background_name = background
        entry = _audio_entry(kwargs.get("audio", DEFAULT_AUDIO))
        kwargs["frontend"] = self._audio_frontend(entry.cls, kwargs.get("frontend"))
        kwargs["pooling"] = kwargs.get("pooling") or entry.cls.default_pooling
        if not kwargs.get("embed_dim"):
            raise ValueError(
                "--model.embed_dim: a text teacher projects into the text space; set it to the "
                "text model's width (384 for all-MiniLM-L6-v2)"
            )
        super().__init__(num_classes, **kwargs)
        self.head.fc = TextClassifier(
            self.head.num_features, num_classes, temperature, learn_temperature, bool(background)
        )
        self._cache_dir: str | None = None

    @staticmethod
    def _audio_frontend(
        family: type[AudioClassifier], given: FrontendSettings | dict[str, Any] | None
    ) -> FrontendSettings:
        """The front end: the audio family's own, with what was given on top. The composed
        default (mel_cnn's) stands for "the family's" when another family is named."""
        own = family.default_frontend
        if given is None or given == TextTeacher.default_frontend:
            return own
        if isinstance(given, FrontendSettings):
            return given
        return frontend_from_dict(given, own)

    def _save_options(self, options: dict[str, Any]) -> None:
        # the prompts as used, so a checkpoint never depends on a later default
        super()._save_options({**options, "prompts": list(self.prompts)})

    # ------------------------------------------------------------------ the text side
    def set_class_names(self, class_names: list[str], cache_dir: str | None = None) -> None:
        """Score ``class_names`` from now on, with the recorded text model and prompts.

        Names never seen in training work too (zero-shot); the background class keeps its
        learned embedding where its name is among them. Loads the text model (unless the
        embeddings are cached in ``cache_dir``).

        Raises:
            ValueError: Empty or repeated names, or a text model of another width than
                ``embed_dim``.
        """
        names = parse_names(class_names, "class names")
        from audio_cls.text import class_text_embeddings

        text = class_text_embeddings(
            names, self.text_model, self.prompts, cache_dir or self._cache_dir
        )
        fc: TextClassifier = self.head.fc
        if text.shape[1] != fc.text.shape[1]:
            raise ValueError(
                f"text model {self.text_model} gives {text.shape[1]}-d embeddings but the "
                f"teacher projects to {fc.text.shape[1]}: set --model.embed_dim {text.shape[1]}"
            )
        bg = self.background_name
        fc.set_text(text, names.index(bg) if bg in names else -1)
        if len(names) != self.num_classes:
            self.metrics = nn.ModuleDict(
                {f"{stage}_metrics": segment_metrics(len(names)) for stage in STAGES}
            ).to(self.device)
        self.class_names = names
        self.num_classes = len(names)
        self.hparams["num_classes"], self.hparams["class_names"] = len(names), names

    def reset_classifier(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """The classifier of ``class_names`` (default ``0..num_classes-1``): their text."""
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.set_class_names(class_names or [str(i) for i in range(num_classes)])

    def forward_head(
        self, features: torch.Tensor | dict[str, torch.Tensor], pre_logits: bool = False
    ) -> torch.Tensor:
        if not pre_logits and not self.head.fc.ready:  # built outside a Trainer
            self.set_class_names(self.class_names)
        return super().forward_head(features, pre_logits)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = self.trainer if self._trainer else None
        # the cache beside the run; a debugging pass (fast_dev_run) writes nothing
        if trainer is not None and not trainer.fast_dev_run and trainer.log_dir:
            self._cache_dir = str(trainer.log_dir)
        if not self.head.fc.ready:
            self.set_class_names(self.class_names)

    def checkpoint_section(self) -> dict[str, Any]:
        return {
            **super().checkpoint_section(),
            "text": {
                "model": self.text_model,
                "prompts": list(self.prompts),
                "background": self.background_name,
            },
        }
