"""Name -> architecture registry (timm-style), driving model tests, ``embed`` and weight loading.

A new family is one file in ``audio_cls/models`` whose class is decorated with
``@register_model``, plus one import line in ``audio_cls/models/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model"]

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of one architecture.

    Attributes:
        name: Registry name (snake_case).
        cls: The ``AudioClassifier`` subclass.
        frontend: Front-end settings the architecture was designed for (and its public
            weights expect), e.g. ``{"sample_rate": 16000, "n_mels": 128}``.
        weight_formats: Public weight formats its loader reads.
        tiny: Overrides that shrink the model for fast tests.
        requires: Optional packages its fast (kernel) path needs.
    """

    name: str
    cls: type
    frontend: dict[str, Any] = field(default_factory=dict)
    weight_formats: tuple[str, ...] = ()
    tiny: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    frontend: dict[str, Any] | None = None,
    weight_formats: tuple[str, ...] = (),
    tiny: dict[str, Any] | None = None,
    requires: tuple[str, ...] = (),
) -> Callable[[T], T]:
    """Class decorator adding an architecture to the registry under ``name``."""

    def decorate(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].cls}")
        _REGISTRY[name] = ModelEntry(
            name, cls, dict(frontend or {}), weight_formats, dict(tiny or {}), requires
        )
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


def create_model(name: str, num_classes: int, **overrides: Any):
    """Build a registered architecture with its designed front end, overridden by ``overrides``."""
    entry = get_model_entry(name)
    return entry.cls(num_classes=num_classes, **{**entry.frontend, **overrides})
