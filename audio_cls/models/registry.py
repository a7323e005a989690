"""Name -> architecture registry (timm-style): model tests, ``create_model``, checkpoints, weights.

A new family is one file in ``audio_cls/models`` whose class is decorated with
``@register_model``, plus one import line in ``audio_cls/models/__init__.py``. Its entry also
carries the published weights it can start from (:class:`PretrainedConfig`): where they come
from, their format, how their keys map onto ours, which of our keys form the classifier, and
the front end they expect.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from audio_cls.nn.weights import (
    PretrainedWeightsError,
    load_into,
    read_weights,
    rename_key,
    resolve_weights,
)

if TYPE_CHECKING:
    from audio_cls.models.base import AudioClassifier

__all__ = [
    "ModelEntry",
    "PretrainedConfig",
    "create_model",
    "create_published",
    "find_pretrained",
    "get_model_entry",
    "list_models",
    "list_pretrained",
    "register_model",
    "resolve_pretrained",
]

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class PretrainedConfig:
    """Published weights a family can start from.

    Attributes:
        tag: Name users pass as ``pretrained`` (``audio-cls models --pretrained`` lists them);
            empty for the template used when ``pretrained`` is a path, hub name or URL.
        source: Hub name, URL or local path (None: the user supplies it).
        format: ``safetensors``, ``torch``, ``npy`` or ``h5`` (None: from the file name).
        convert: Turns the file's tensors into PyTorch layout before renaming (a Keras ``.h5``
            or a TensorFlow ``.npy`` stores kernels transposed); None: used as read.
        rename: Ordered (checkpoint prefix, our prefix) pairs; our prefix None drops the key.
        covers: Our key prefixes the weights must provide (None: the whole model); the rest
            keeps its fresh initialisation.
        optional: Our key prefixes loaded where the weights have them (e.g. the pooler and
            classifier of a classification checkpoint given as a path).
        classifier: Our key prefixes that form the classifier, dropped when the class count
            differs from the weights'.
        frontend: Front-end settings the weights expect (compared before anything loads).
        model_args: Architecture options the weights need (shown to users; shapes are checked
            on load).
        class_names: The weights' own label names, kept when the class count matches.
        description: One line for listings.
    """

    tag: str = ""
    source: str | None = None
    format: str | None = None
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    rename: tuple[tuple[str, str | None], ...] = ()
    covers: tuple[str, ...] | None = None
    optional: tuple[str, ...] = ()
    classifier: tuple[str, ...] = ("head.fc.",)
    frontend: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None
    description: str = ""

    def check_frontend(self, model: AudioClassifier) -> None:
        """Refuse a model whose front end differs from the one the weights expect."""
        ours = model.frontend.settings.contract()
        diff = {k: (v, ours.get(k)) for k, v in self.frontend.items() if ours.get(k) != v}
        if diff:
            said = ", ".join(f"{k} {a} (ours {b})" for k, (a, b) in diff.items())
            hint = " and --data.sample_rate" if "sample_rate" in diff else ""
            raise PretrainedWeightsError(
                f"weights {self.tag or self.source} expect a front end with {said}; set "
                f"--model.frontend accordingly{hint}"
            )

    def load_into(self, model: AudioClassifier, prefixes: Sequence[str] | None = None) -> list[str]:
        """Read the weights and copy them into ``model``; returns our keys that loaded."""
        if not self.source:
            raise PretrainedWeightsError(
                f"{model.registry_name}: pretrained tag {self.tag!r} names no source; pass a "
                f"local file, hub name or URL as --model.pretrained"
            )
        if self.tag:
            self.check_frontend(model)  # before a download
        weights = read_weights(resolve_weights(self.source), self.format)
        if self.rename != OWN_WEIGHTS.rename and _has_own_names(weights):
            # another audio-cls run of this family (a .ckpt or its state dict), not the
            # published layout: our names, the whole model, its own front end
            return replace(OWN_WEIGHTS, tag=self.tag, source=self.source)._load(
                model, weights, prefixes
            )
        self.check_frontend(model)
        if self.convert is not None:
            weights = self.convert(weights)
        return self._load(model, weights, prefixes)

    def _load(
        self,
        model: AudioClassifier,
        weights: dict[str, torch.Tensor],
        prefixes: Sequence[str] | None,
    ) -> list[str]:
        what = f"pretrained weights {self.tag or self.source}"
        renamed = {}
        for key, value in weights.items():
            name = rename_key(key, self.rename)
            if name is not None:
                renamed[name] = value
        ours = model.state_dict()
        # the classifier: its prefixes, and the same layer of each head of a multi-tap model
        per_tap = re.compile(
            "|".join(
                rf"head\.heads\.[^.]+\.{re.escape(p.removeprefix('head.'))}"
                for p in self.classifier
            )
        )
        classifier = [k for k in ours if k.startswith(self.classifier) or per_tap.match(k)]
        # a classifier for other classes (or none at all) stays freshly initialised
        fits = all(k in renamed and renamed[k].shape == ours[k].shape for k in classifier)
        drop = [] if fits else [*self.classifier, *classifier]
        if prefixes:
            only: list[str] | None = list(prefixes)
        elif self.covers is None:
            only = None
        else:
            # parts this model does not build (a shallower variant) are neither required nor
            # loaded; optional parts load where both sides have them
            built = [p for p in self.covers if any(k.startswith(p) for k in ours)]
            present = [
                p
                for p in self.optional
                if any(k.startswith(p) for k in renamed) and any(k.startswith(p) for k in ours)
            ]
            only = [*built, *present]
        report = load_into(
            model, weights, rename=self.rename, drop=drop, only=only, strict=True, what=what
        )
        if not drop and self.class_names and len(self.class_names) == model.num_classes:
            model.class_names = list(self.class_names)
            model.hparams["class_names"] = list(self.class_names)  # and so in checkpoints
        return report.loaded


#: Used when ``pretrained`` is another audio-cls checkpoint (``.ckpt``) or a state dict with our
#: own key names, whatever layout the family's published weights have.
OWN_WEIGHTS = PretrainedConfig(rename=(("state_dict.", ""),), description="our own key names")


def _has_own_names(weights: Mapping[str, Any]) -> bool:
    """Whether ``weights`` use our key names (``backbone.*`` and ``head.*``, bare or under
    ``state_dict.`` as in a Lightning checkpoint): no published layout has both."""
    keys = [k.removeprefix("state_dict.") for k in weights]
    return any(k.startswith("backbone.") for k in keys) and any(k.startswith("head.") for k in keys)


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of one architecture.

    Attributes:
        name: Registry name (snake_case).
        cls: The ``AudioClassifier`` subclass.
        tiny: Overrides that shrink the model for fast tests.
        requires: Optional packages its fast (kernel) path needs.
        pretrained: Published weights it can start from; the first is the template for a
            path, hub name or URL given instead of a tag.
    """

    name: str
    cls: type
    tiny: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    pretrained: tuple[PretrainedConfig, ...] = ()

    @property
    def frontend(self) -> Any:
        """The family's default front-end settings."""
        return self.cls.default_frontend


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    tiny: dict[str, Any] | None = None,
    requires: tuple[str, ...] = (),
    pretrained: Sequence[PretrainedConfig] = (),
) -> Callable[[T], T]:
    """Class decorator adding an architecture to the registry under ``name``."""

    def decorate(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].cls}")
        tags = [p.tag for p in pretrained if p.tag]
        if len(set(tags)) != len(tags):
            raise ValueError(f"{name}: pretrained tags repeat: {tags}")
        _REGISTRY[name] = ModelEntry(name, cls, dict(tiny or {}), requires, tuple(pretrained))
        cls.registry_name = name
        return cls

    return decorate


def list_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; a KeyError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def list_pretrained(name: str | None = None) -> list[tuple[str, PretrainedConfig]]:
    """``(model name, config)`` of every tagged pretrained configuration (of one model)."""
    names = [name] if name else list_models()
    return [(n, p) for n in names for p in get_model_entry(n).pretrained if p.tag]


def resolve_pretrained(model: AudioClassifier, spec: str) -> PretrainedConfig:
    """The configuration for ``pretrained=spec``: a tag of the model's family, or its template
    (or :data:`OWN_WEIGHTS`) with ``spec`` as the source."""
    entry = get_model_entry(model.registry_name)
    for config in entry.pretrained:
        if config.tag and config.tag == spec:
            return config
    template = entry.pretrained[0] if entry.pretrained else OWN_WEIGHTS
    # a user's file: its suffix tells the format (a .ckpt of ours, the published .h5...)
    return replace(template, tag="", source=spec, format=None)


def create_model(
    name: str, num_classes: int, pretrained: str | None = None, **overrides: Any
) -> AudioClassifier:
    """Build a registered architecture (its designed front end unless overridden).

    Args:
        name: Registry name (``list_models()``).
        num_classes: Output classes; a pretrained classifier of another size is dropped.
        pretrained: A tag of the family, or a file, folder, hub name or URL; loaded now.
        **overrides: Any option of the family's ``__init__``; ``frontend`` may be a partial
            dict of front-end settings.
    """
    model = get_model_entry(name).cls(num_classes=num_classes, pretrained=pretrained, **overrides)
    if pretrained:
        model.load_pretrained()
    return model


def find_pretrained(tag: str) -> tuple[str, PretrainedConfig] | None:
    """``(family, config)`` of the published weights tagged ``tag``, None when no family has it."""
    return next(((n, c) for n, c in list_pretrained() if c.tag == tag), None)


def create_published(name: str, spec: str) -> AudioClassifier:
    """Family ``name`` with published weights ``spec`` (a tag, or a file, hub name or URL) loaded.

    With weights that carry label names (a tag's ``class_names``) the model has their
    classifier and names; otherwise its 2-class classifier is a placeholder, for embeddings.
    """
    entry = get_model_entry(name)
    config = next((c for c in entry.pretrained if c.tag and c.tag == spec), None)
    names = list(config.class_names) if config is not None and config.class_names else []
    options = dict(config.model_args) if config is not None else {}
    return create_model(name, len(names) or 2, pretrained=spec, **options)
