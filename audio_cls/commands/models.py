"""``audio-cls models``: the registered model families and the published weights they take."""

from __future__ import annotations

__all__ = ["models"]


def models(pretrained: bool = False) -> None:
    """List the registered model families: name, class and default front end.

    Args:
        pretrained: List the pretrained weight tags instead: pass one as
            ``--model.init_args.pretrained TAG`` (or to ``create_model``).
    """
    from audio_cls.models import get_model_entry, list_models, list_pretrained

    if pretrained:
        rows = list_pretrained()
        if not rows:
            print("no pretrained weights are registered")
        for name, config in rows:
            needs = ", ".join(f"{k}={v}" for k, v in config.model_args.items())
            print(f"{config.tag:<30} {name:<12} {config.source}")
            print(f"{'':<30} {config.description}" + (f"; needs {needs}" if needs else ""))
        return
    for name in list_models():
        entry = get_model_entry(name)
        front = {k: v for k, v in entry.frontend.contract().items() if v is not None}
        kind = front.pop("kind")
        settings = " ".join(f"{k}={v}" for k, v in front.items())
        print(f"{name:<12} {entry.cls.__qualname__:<20} {kind}: {settings}")
