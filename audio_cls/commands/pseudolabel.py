"""``audio-cls pseudolabel``: rounds of pseudo-labelling on unlabelled audio.

Round 0 fits the training config as it is. Each later round labels the unlabelled audio with the
best checkpoint of the round before (through the inference core, as ``audio-cls label`` does),
keeps the clips whose top-1 probability reaches ``--pseudo.threshold`` (the others are set aside
in ``round_<k>_pseudo_labels_unsure.csv``), and fits the config again from scratch with those
clips added to the training folds (``--data.extra_train``) at ``--pseudo.weight``, as hard
(top-1) or soft labels. Pseudo-labelled clips never reach validation or test: the data module
refuses (or, with ``--data.extra_overlap drop``, leaves out) any that is a validation or test
clip.

Every round is a normal ``fit`` run (same config, same overrides) whose run directory sits under
``runs/<name>/pseudo_<time>/round_<k>``, beside the ``round_<k>_pseudo_labels.csv`` it trained
with; ``pseudo_summary.json`` holds each round's manifest, counts, checkpoint and metrics. A
round in which no clip reaches the threshold ends the rounds early. ``--trainer.fast_dev_run``
runs one batch per round, labels with the model in memory and writes nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info

from audio_cls.commands import (
    UsageError,
    report_clip_problems,
    section_parser,
    split_section_argv,
)
from audio_cls.commands.lightning import AudioCLI, claim_folder, run_root
from audio_cls.reports import write_metrics

__all__ = ["main", "pseudo_options", "run_pseudolabel"]

#: Metrics kept per round (those the run has).
ROUND_METRICS = (
    "val/clip_acc",
    "val/clip_macro_f1",
    "test/acc",
    "test/macro_f1",
    "test/clip_acc",
    "test/clip_macro_f1",
)
PREFIX = "--pseudo."


def pseudo_options(
    unlabelled: list[str],
    rounds: int = 2,
    threshold: float = 0.9,
    weight: float = 0.5,
    labels: Literal["hard", "soft"] = "hard",
    temperature: float = 1.0,
) -> None:
    """Pseudo-labelling options, given as ``--pseudo.<name>``.

    Args:
        unlabelled: Audio files, folders or CSV manifests (a ``path`` column) to pseudo-label.
        rounds: Pseudo-labelling rounds after the first fit (each labels, then refits).
        threshold: Keep a clip when its top-1 probability reaches this, in [0, 1].
        weight: Loss weight of the pseudo-labelled clips against the labelled ones.
        labels: Train on the top-1 class (``hard``) or the whole distribution (``soft``).
        temperature: Softmax temperature on the model's logits before the threshold.
    """


def _check(rounds: int, threshold: float, weight: float, temperature: float) -> None:
    if rounds < 1:
        raise UsageError(f"--pseudo.rounds must be >= 1, got {rounds}")
    if not 0 <= threshold <= 1:
        raise UsageError(f"--pseudo.threshold must be in [0, 1], got {threshold}")
    if not weight >= 0:
        raise UsageError(f"--pseudo.weight must be >= 0, got {weight}")
    if not temperature > 0:
        raise UsageError(f"--pseudo.temperature must be > 0, got {temperature}")


class _RoundCLI(AudioCLI):
    """A fit run whose loggers write into the round's directory under the rounds' folder."""

    def __init__(self, tag: str, round_: int, args: list[str], root: Path | None) -> None:
        self.tag, self.round, self.root = tag, round_, root
        super().__init__(args=args)

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer
        loggers = trainer.logger
        specs = loggers if isinstance(loggers, list) else [loggers]
        specs = [lg for lg in specs if hasattr(lg, "init_args")]
        if not specs and self.root is not None:  # no logger: the root dir is the run dir
            trainer.default_root_dir = str(self.root / self.tag / f"round_{self.round}")
        for logger in specs:
            class_path = str(getattr(logger, "class_path", ""))
            if class_path.endswith(("CSVLogger", "TensorBoardLogger")):
                logger.init_args.version = f"{self.tag}/round_{self.round}"
            elif class_path.endswith("WandbLogger"):
                base = logger.init_args.get("name") or "run"
                logger.init_args.group = f"{base}-{self.tag}"
                logger.init_args.name = f"{base}-{self.tag}-round{self.round}"
        super().before_instantiate_classes()


def main(argv: list[str]) -> dict[str, Any]:
    """``audio-cls pseudolabel``: fit's options plus ``--pseudo.*``."""
    ours, rest = split_section_argv(argv, "pseudo", ("unlabelled",))
    parser = section_parser("audio-cls pseudolabel", pseudo_options, "pseudo")
    if any(t in ("-h", "--help") for t in (*rest, *ours)):
        print(
            "usage: audio-cls pseudolabel --config CONFIG [fit options] --pseudo.unlabelled "
            "PATH... [--pseudo.rounds N --pseudo.threshold P --pseudo.weight W "
            "--pseudo.labels hard|soft --pseudo.temperature T]\n"
        )
        print(__doc__ or "")
        parser.print_help()
        return {}
    if not any(t.startswith(PREFIX + "unlabelled") for t in ours):
        raise UsageError(
            "audio-cls pseudolabel needs --pseudo.unlabelled: the audio files, folders or CSV "
            "manifests to pseudo-label"
        )
    options = parser.parse_args(ours).pseudo
    return run_pseudolabel(
        rest,
        unlabelled=list(options.unlabelled),
        rounds=options.rounds,
        threshold=options.threshold,
        weight=options.weight,
        labels=options.labels,
        temperature=options.temperature,
    )


def _metrics(cli: AudioCLI) -> dict[str, float]:
    found = cli.trainer.callback_metrics
    return {m: float(found[m]) for m in ROUND_METRICS if m in found}


def run_pseudolabel(
    rest: list[str],
    unlabelled: list[str],
    rounds: int = 2,
    threshold: float = 0.9,
    weight: float = 0.5,
    labels: str = "hard",
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Pseudo-labelling rounds over the training config given by ``rest`` (fit's options).

    Returns:
        The summary: the options, one entry per round (its manifest, counts, checkpoint and
        metrics) and the wall time.
    """
    from audio_cls.labelling import label_clips, write_label_manifest

    _check(rounds, threshold, weight, temperature)
    missing = [p for p in unlabelled if not Path(p).exists()]
    if missing:
        raise UsageError(f"--pseudo.unlabelled: no such file or folder: {', '.join(missing[:5])}")
    if any(t.startswith("--data.extra_train") for t in rest):
        raise UsageError(
            "audio-cls pseudolabel sets --data.extra_train itself (the pseudo-labels of each "
            "round); leave it out"
        )
    probe = AudioCLI(args=rest, run=False)  # resolves the config once: run root, fast_dev_run
    if probe.trainer.world_size > 1:
        raise UsageError(
            "audio-cls pseudolabel runs on one device (rank 0 labels between rounds): add "
            "--trainer.devices 1"
        )
    debugging = bool(probe.trainer.fast_dev_run)
    root = None if debugging else run_root(probe)
    tag = time.strftime("pseudo_%Y%m%d-%H%M%S")
    if root is not None:
        tag = claim_folder(root, tag)
    scratch = None
    if root is None:  # fast_dev_run writes nothing: the manifests go to a temporary folder
        scratch = tempfile.TemporaryDirectory(prefix="audio-cls-pseudo-")
    # absolute: the manifests are named in each round's config and in the summary
    folder = Path(os.path.abspath(scratch.name if scratch is not None else root / tag))  # type: ignore[operator]
    started = time.perf_counter()
    per_round: list[dict[str, Any]] = []
    extra: list[str] = []
    trained_on: dict[str, Any] = {"manifest": None, "num_pseudo": 0}
    stopped = None
    try:
        for k in range(rounds + 1):
            rank_zero_info(f"\n=== pseudo-labelling round {k} of {rounds}")
            cli = _RoundCLI(tag, k, ["fit", *rest, *extra], root)
            callback = cli.trainer.checkpoint_callback
            checkpoint = getattr(callback, "best_model_path", "") or getattr(
                callback, "last_model_path", ""
            )
            per_round.append(
                {"round": k, **trained_on, "checkpoint": checkpoint or None, **_metrics(cli)}
            )
            if k == rounds:
                break
            # this round's model labels the audio for the next (in memory under fast_dev_run)
            labelled = label_clips(
                checkpoint or cli.model.eval(), unlabelled, temperature=temperature
            )
            report_clip_problems(labelled.errors, labelled.warnings)
            manifest = write_label_manifest(
                folder / f"round_{k + 1}_pseudo_labels.csv",
                labelled.rows(),
                labelled.class_names,
                threshold=threshold,
                soft=labels == "soft",
            )
            rank_zero_info(
                f"round {k}: {manifest.num_sure} of {manifest.num_sure + manifest.num_unsure} "
                f"clip(s) reach {threshold:g}: {manifest.path}"
            )
            trained_on = {
                "manifest": str(manifest.path),
                "num_pseudo": manifest.num_sure,
                "num_unsure": manifest.num_unsure,
            }
            if manifest.num_sure == 0:
                stopped = f"round {k}: no clip reached --pseudo.threshold {threshold:g}"
                rank_zero_info(f"{stopped}; stopping")
                break
            extra = [
                f"--data.extra_train={manifest.path}",
                f"--data.extra_weight={weight}",
                f"--data.extra_labels={labels}",
            ]
        result = {
            "config": rest,
            "options": {
                "unlabelled": unlabelled,
                "rounds": rounds,
                "threshold": threshold,
                "weight": weight,
                "labels": labels,
                "temperature": temperature,
            },
            "rounds": per_round,
            "stopped_early": stopped,
            "wall_time_sec": time.perf_counter() - started,
        }
    finally:
        if scratch is not None:
            scratch.cleanup()
    print(f"\npseudo-labelling, {len(per_round) - 1} round(s) ({result['wall_time_sec']:.0f} s)")
    print(_table(per_round))
    if root is not None:
        write_metrics(root / tag / "pseudo_summary.json", result)
        print(f"\nsummary: {root / tag / 'pseudo_summary.json'}")
    return result


def _table(per_round: list[dict[str, Any]]) -> str:
    cols = [m for m in ROUND_METRICS if any(m in r for r in per_round)]
    heads = ["pseudo", *(c.replace("/", " ") for c in cols)]
    lines = ["round  " + "  ".join(f"{h:>16}" for h in heads)]
    for r in per_round:
        cells = [f"{r.get('num_pseudo', 0):>16}"]
        cells += [f"{r[c]:>16.4f}" if c in r else f"{'-':>16}" for c in cols]
        lines.append(f"{r['round']:>5}  " + "  ".join(cells))
    return "\n".join(lines)
