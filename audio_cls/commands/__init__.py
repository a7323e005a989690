"""The verbs of ``audio-cls``, one module each, declared once in :data:`VERBS`.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands
(:mod:`audio_cls.commands.lightning`); every other verb is a typed function whose signature and
docstring are its options and help, parsed by jsonargparse like the training configs: each
takes ``--config`` (a YAML of its own options) and ``--print_config``, options spelled with
underscores also accept dashes, and a verb may take its main list (``inputs``) as bare words.
``cv`` combines both: its own ``--cv.*`` options beside a training config.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "VERBS",
    "UsageError",
    "Verb",
    "check_writable",
    "normalise_dashes",
    "report_clip_problems",
    "run_function_verb",
    "section_parser",
    "split_section_argv",
]


class UsageError(ValueError):
    """A verb's option is out of range; the message names the option and what to do."""


def check_writable(path: Path, option: str) -> None:
    """Fail before the work, not after it, when an output file cannot be written; the message
    names ``option``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe")
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(
            f"{option} {path}: cannot write there ({err.strerror}); pick another path"
        ) from None


def report_clip_problems(errors: dict[str, str], warnings: dict[str, str]) -> None:
    """On stderr, one line per clip that could not be read (skipped) or whose output means
    little (silent, very short): what every verb that reads audio files prints."""
    import sys

    for clip_id, reason in errors.items():
        print(f"audio-cls: skipped {clip_id}: {reason}", file=sys.stderr)
    for clip_id, reason in warnings.items():
        print(f"audio-cls: warning: {clip_id} is {reason}", file=sys.stderr)


@dataclass(frozen=True)
class Verb:
    """One verb: where it lives and what it does.

    Attributes:
        module: Module under ``audio_cls.commands`` holding it.
        summary: One line for ``audio-cls --help``.
        function: The verb's function in ``module`` (None: the module's ``main(argv)``).
        positional: The list option that bare words on the command line fill.
    """

    module: str
    summary: str
    function: str | None = None
    positional: str | None = None

    def load(self) -> Callable[..., Any]:
        module = importlib.import_module(f"audio_cls.commands.{self.module}")
        return getattr(module, self.function or "main")


VERBS: dict[str, Verb] = {
    "fit": Verb(
        "lightning", "train (and, with test folds, test the best checkpoint) from a config"
    ),
    "validate": Verb("lightning", "evaluate a checkpoint on the validation folds"),
    "test": Verb("lightning", "evaluate a checkpoint on the test folds (segment and clip metrics)"),
    "predict": Verb("lightning", "predict the test folds (or data.predict_source) of a config"),
    "cv": Verb("cv", "cross-validate: one fit + test per fold, then mean and std over folds"),
    "pseudolabel": Verb("pseudolabel", "pseudo-labelling rounds: fit, label audio, refit with it"),
    "compare": Verb(
        "compare", "compare runs and cross-validations: table, plot, ensemble", "compare", "inputs"
    ),
    "classify": Verb(
        "classify",
        "classify audio files, folders or manifests with a checkpoint (top-k CSV/JSON)",
        function="classify",
        positional="inputs",
    ),
    "label": Verb(
        "label",
        "pseudo-label audio with a (text) teacher: soft + hard labels manifest, unsure apart",
        function="label",
        positional="inputs",
    ),
    "boost": Verb("boost", "LightGBM (+ an MLP) on the embeddings of `embed`, tested", "boost"),
    "embed": Verb("embed", "per-window and per-clip embeddings of a data set or audio to Parquet"),
    "models": Verb("models", "list the registered model families and pretrained weights", "models"),
    "export": Verb("export", "export a checkpoint to ONNX or TorchScript, checked", "export"),
    "serve": Verb("serve", "serve a checkpoint: HTTP API, web page, live WebSocket", "serve"),
    "stream": Verb("stream", "stream audio to `audio-cls serve` in real time", "stream", "files"),
}


def normalise_dashes(argv: list[str]) -> list[str]:
    """``--top-k 3`` -> ``--top_k 3``: option names accept dashes for underscores."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + eq + value
        out.append(token)
    return out


def split_section_argv(
    argv: list[str], section: str, list_options: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """A verb's own ``--<section>.*`` options (with their values) apart from the training
    options that go to LightningCLI, for verbs that take both (``cv``, ``pseudolabel``).

    A list option (``list_options``) takes several bare values (``--cv.folds 1 2 3``,
    ``--pseudo.unlabelled a.wav b/``), passed on as one JSON list; a value already written as a
    list (``[1,2,3]``) is passed as it is.
    """
    prefix = f"--{section}."
    ours, rest, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token.startswith(prefix) and "=" not in token:
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values.append(argv[i + 1])
                i += 1
            listed = len(values) == 1 and values[0].startswith("[")
            if token[len(prefix) :] in list_options and values and not listed:
                values = [json.dumps([_json_scalar(v) for v in values])]
            ours += [token, *values]
        elif token.startswith(prefix):
            ours.append(token)
        else:
            rest.append(token)
        i += 1
    return ours, rest


def section_parser(prog: str, options: Callable[..., Any], section: str) -> Any:
    """The jsonargparse parser of a verb's own ``--<section>.*`` options, read from the
    signature of ``options`` (the counterpart of :func:`split_section_argv`)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=prog, add_help=False)
    parser.add_function_arguments(options, section)
    return parser


def _json_scalar(value: str) -> Any:
    """A bare word as JSON reads it when it is a number, else the word itself (a path)."""
    try:
        number = json.loads(value)
    except ValueError:
        return value
    return number if isinstance(number, int | float) else value


def _bare_flags(argv: list[str], flags: set[str]) -> list[str]:
    """``--strict`` alone (no true/false after it) -> ``--strict=true``."""
    out = []
    for i, token in enumerate(argv):
        following = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if token.startswith("--") and token[2:] in flags and following not in ("true", "false"):
            token += "=true"
        out.append(token)
    return out


def _gather_positionals(argv: list[str]) -> tuple[list[str], list[str]]:
    """Options apart from bare words; every option takes one value (``--x v`` or ``--x=v``;
    booleans arrive as ``--x=true`` from :func:`_bare_flags`)."""
    rest, words, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("-"):
            rest.append(token)
            takes_value = "=" not in token and token not in ("-h", "--help", "--print_config")
            if takes_value and i + 1 < len(argv):
                rest.append(argv[i + 1])
                i += 1
        else:
            words.append(token)
        i += 1
    return rest, words


def run_function_verb(name: str, verb: Verb, argv: list[str]) -> Any:
    """Parse ``argv`` against the verb function's signature and call it."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    function = verb.load()
    doc = inspect.getdoc(function) or ""
    parser = ArgumentParser(prog=f"audio-cls {name}", description=doc.split("\n\nArgs:")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML of this verb's options.")
    parser.add_function_arguments(function, fail_untyped=True)
    flags = {
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.annotation in (bool, "bool")
    }
    argv = _bare_flags(argv, flags)
    if verb.positional:
        argv, words = _gather_positionals(argv)
        if words:
            # handed over as values, not re-parsed: any file name (even one that is not
            # valid UTF-8) arrives as the shell gave it
            parser.set_defaults({verb.positional: words})
    config = parser.parse_args(argv)
    options = {k: v for k, v in vars(config).items() if k != "config"}
    return function(**options)
