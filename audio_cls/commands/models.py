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
        tag_w = max((len(c.tag) for _, c in rows), default=0)
        name_w = max((len(n) for n, _ in rows), default=0)
        for name, config in rows:
            needs = ", ".join(f"{k}={v}" for k, v in config.model_args.items())
            source = config.source or "(no download: pass the local file)"
            print(f"{config.tag:<{tag_w}}  {name:<{name_w}}  {source}")
            print(f"{'':<{tag_w}}  {config.description}" + (f"; needs {needs}" if needs else ""))
        return
    names = list_models()
    name_w = max(len(n) for n in names)
    class_w = max(len(get_model_entry(n).cls.__qualname__) for n in names)
    for name in names:
        entry = get_model_entry(name)
        front = {k: v for k, v in entry.frontend.contract().items() if v is not None}
        kind = front.pop("kind")
        settings = " ".join(f"{k}={v}" for k, v in front.items())
        print(f"{name:<{name_w}}  {entry.cls.__qualname__:<{class_w}}  {kind}: {settings}")
