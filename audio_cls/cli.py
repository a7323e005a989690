"""``audio-cls``: dispatch to the verbs of :mod:`audio_cls.commands`.

Errors in the user's data, audio, options or checkpoint end the process with one line
(``audio-cls: error: ...``, exit status 2); ``AUDIO_CLS_TRACEBACK=1`` shows the traceback too.
"""

from __future__ import annotations

import os
import sys
import warnings

from audio_cls.commands import VERBS, UsageError, normalise_dashes, run_function_verb

__all__ = ["main"]


def _print_help() -> None:
    print("usage: audio-cls <verb> [options]\n\nverbs:")
    for verb, spec in VERBS.items():
        print(f"  {verb:<10} {spec.summary}")
    print(
        "\n`audio-cls <verb> --help` describes a verb's options; "
        "`audio-cls fit --model.help MelCNN` a model's.\nExample: audio-cls fit --config "
        "configs/quickstart.yaml"
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (returns None: a returned object would become exit status 1).

    Errors in the user's data, audio, options or checkpoint end the process with one line and
    exit status 2. Option values our classes refuse reach us wrapped by jsonargparse ("does not
    validate against any of the Union subtypes ..."): the innermost cause is the message.
    With ``argv`` given (tests, notebooks) errors propagate as exceptions.
    """
    from audio_cls.extras import MissingExtraError
    from audio_cls.models.base import NonFiniteError

    try:
        _dispatch(list(sys.argv[1:] if argv is None else argv))
    except (ValueError, MissingExtraError, NonFiniteError) as err:
        if os.environ.get("AUDIO_CLS_TRACEBACK") or argv is not None:
            raise
        print(f"audio-cls: error: {_user_message(err)}", file=sys.stderr)
        sys.exit(2)


def _user_message(err: BaseException) -> str:
    """The innermost cause's message; a hint to the traceback for errors not meant for users."""
    from audio_cls.data.sources.base import ManifestError
    from audio_cls.extras import MissingExtraError
    from audio_cls.io import AudioLoadError
    from audio_cls.models.base import CheckpointMismatchError, NonFiniteError
    from audio_cls.nn.weights import PretrainedWeightsError

    while err.__cause__ is not None:
        err = err.__cause__
    ours = (
        ManifestError,
        AudioLoadError,
        CheckpointMismatchError,
        PretrainedWeightsError,
        MissingExtraError,
        NonFiniteError,
        UsageError,
    )
    text = str(err).strip() or type(err).__name__
    if isinstance(err, ours) or type(err) is ValueError:
        return text
    return f"{text} ({type(err).__name__}; AUDIO_CLS_TRACEBACK=1 shows where)"


def _dispatch(argv: list[str]) -> None:
    # W&B runs offline unless the user opts in (WANDB_MODE=online after `wandb login`)
    os.environ.setdefault("WANDB_MODE", "offline")
    # Lightning 2.6 on torch 2.11 warns about its own use of a deprecated pytree class
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    # Every verb hands LightningCLI its arguments explicitly (cv builds one per fold), so its
    # "args and sys.argv both given" caution does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    if not argv or argv[0] in ("-h", "--help"):
        _print_help()
        return
    name = argv[0]
    verb = VERBS.get(name)
    if verb is None:
        print(f"audio-cls: unknown verb {name!r}\n", file=sys.stderr)
        _print_help()
        sys.exit(2)
    argv = normalise_dashes(argv)
    if verb.function is None:
        verb.load()(argv if verb.module == "lightning" else argv[1:])
    else:
        run_function_verb(name, verb, argv[1:])


if __name__ == "__main__":
    main()
