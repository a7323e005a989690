"""``audio-cls cv``: k-fold cross-validation over a dataset's official folds.

For each test fold k, the next fold (cyclically) validates (early stopping and the best
checkpoint) and the remaining folds train; the best checkpoint is then tested on fold k.
Nothing of fold k is seen before its test, so the numbers are honest. ``--cv.val none`` trains
on all other folds and validates on nothing (the checkpoint of the last epoch is tested).
``--cv.test_folds 1`` runs only the fold that tests fold 1, with the plan the whole
cross-validation gives it (one named fold where all would take too long).

Every fold is a normal ``fit`` run (same config, same overrides) whose run directory sits under
``runs/<name>/cv_<time>/fold_<k>``; ``cv_summary.json`` beside them holds per-fold metrics and
mean/std (sample standard deviation) over folds, of the test metrics (with
``report.positive_class``, also that class's precision, recall and F1 at the threshold chosen
on each fold's validation fold) and of what each fold's run records of itself
(``run/params``, ``run/train_time_s``, ``run/test_segments_per_s``: see
:mod:`audio_cls.callbacks.run_stats`), with each fold's run directory, the model family and the
dataset (source, options, class names, fingerprint of its clips): what ``audio-cls compare``
reads. ``--trainer.fast_dev_run`` runs one batch per fold and writes nothing,
``cv_summary.json`` included (the table is printed).

With ``--cv.boost true`` each fold goes on: every clip of its train, val and test folds is
embedded by that fold's best model (its pre-logit ``embedding``, written to the fold's
``embeddings.parquet``), and LightGBM (:func:`audio_cls.boost.run_boost`, options from the
config's ``boost`` section) trains on the train folds, stops early on the val fold and is tested
on the test fold, into the fold's ``boost/``; its metrics sit beside the model's as
``boost/test/...``. The embedding model never saw the test fold. With ``trainer.max_epochs: 0``
the model is not trained at all and its published weights make the embeddings (YAMNet +
LightGBM); such a run without ``pretrained`` weights is refused.

With W&B, every fold is its own finished run, named ``<name>-<cv tag>-fold<k>`` in the group
``<name>-<cv tag>``, and one more run of the group, ``<name>-<cv tag>-summary`` (job type
``cv-summary``), holds the mean and std over folds: W&B groups show the folds' curves side by
side, and the summary run gives the cross-validation one row to sort and compare by.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from audio_cls.callbacks.run_report import RunReport
from audio_cls.callbacks.run_stats import RunStats, describe_data
from audio_cls.commands import (
    UsageError,
    report_clip_problems,
    section_parser,
    split_section_argv,
)
from audio_cls.commands.lightning import AudioCLI, claim_folder, run_root
from audio_cls.reports import write_metrics

__all__ = ["cv_folds", "cv_options", "main", "run_cv", "summarize"]

#: Metrics reported per fold and summarised.
CV_METRICS = ("test/acc", "test/macro_f1", "test/clip_acc", "test/clip_macro_f1")
#: The same metrics of LightGBM on each fold's embeddings (``--cv.boost true``).
BOOST_METRICS = tuple(f"boost/{m}" for m in CV_METRICS)
#: The positive class's test metrics of a one-against-the-rest run (``report.positive_class``),
#: at the threshold chosen on its validation fold (:class:`audio_cls.callbacks.RunReport`).
POSITIVE_METRICS = ("test/clip_pos_precision", "test/clip_pos_recall", "test/clip_pos_f1")
#: What each fold's run records of itself (:class:`audio_cls.callbacks.RunStats`), summarised too.
RUN_STATS = ("run/params", "run/train_time_s", "run/test_segments_per_s")


def cv_folds(folds: list[int], val: str = "next") -> list[dict[str, list[int]]]:
    """Train/val/test fold lists, one per test fold."""
    if len(folds) < 2 + (val == "next"):
        raise ValueError(
            f"cross-validation needs at least {2 + (val == 'next')} folds, got {folds}"
        )
    plans = []
    for i, test in enumerate(folds):
        val_folds = [folds[(i + 1) % len(folds)]] if val == "next" else []
        train = [f for f in folds if f != test and f not in val_folds]
        plans.append({"train": train, "val": val_folds, "test": [test]})
    return plans


def summarize(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample std of each metric over folds."""
    summary = {}
    for metric in (*CV_METRICS, *POSITIVE_METRICS, *BOOST_METRICS, *RUN_STATS):
        values = [f[metric] for f in per_fold if f.get(metric) is not None]
        if values:
            summary[metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    return summary


class _FoldCLI(AudioCLI):
    """A fit run whose loggers write into the cross-validation's fold directory.

    Args:
        tag: The cross-validation's folder name (``cv_<time>``) under the run root.
        fold: The test fold.
        args: ``fit`` and its options.
        validate: Whether the fold has validation folds (else early stopping is dropped).
        root: Where the fold directories go without a versioned logger (the run root).
    """

    def __init__(
        self, tag: str, fold: int, args: list[str], validate: bool = True, root: Path | None = None
    ) -> None:
        self.tag, self.fold, self.validate, self.root = tag, fold, validate, root
        self.wandb_args: list[Any] = []
        super().__init__(args=args)

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer
        if not self.validate and trainer.callbacks:  # nothing to stop early on
            trainer.callbacks = [
                cb
                for cb in trainer.callbacks
                if not getattr(cb, "class_path", "").endswith("EarlyStopping")
            ]
        loggers = trainer.logger
        specs = loggers if isinstance(loggers, list) else [loggers]
        specs = [lg for lg in specs if hasattr(lg, "init_args")]
        if not specs and self.root is not None:  # no logger: the root dir is the run dir
            trainer.default_root_dir = str(self.root / self.tag / f"fold_{self.fold}")
        for logger in specs:
            class_path = getattr(logger, "class_path", "")
            if class_path.endswith("CSVLogger") or class_path.endswith("TensorBoardLogger"):
                logger.init_args.version = f"{self.tag}/fold_{self.fold}"
            elif class_path.endswith("WandbLogger"):
                base = logger.init_args.get("name") or "run"
                logger.init_args.group = f"{base}-{self.tag}"
                logger.init_args.name = f"{base}-{self.tag}-fold{self.fold}"
                if logger.init_args.get("job_type") is None:
                    logger.init_args.job_type = "cv-fold"
                self.wandb_args.append((base, logger.init_args))
        # before the run directory is claimed, which follows the versions set here
        super().before_instantiate_classes()


def _log_summary_to_wandb(
    fold_cli: _FoldCLI, tag: str, result: dict[str, Any], summary: dict[str, dict[str, float]]
) -> None:
    """One more run in each W&B group of the folds: the cross-validation's mean and std."""
    import wandb

    for base, args in fold_cli.wandb_args:
        settings = {
            "project": args.get("project"),
            "entity": args.get("entity"),
            "dir": args.get("save_dir") or args.get("dir"),
            "group": args.get("group"),
            "tags": list(dict.fromkeys([*(args.get("tags") or []), *_labels(result).values()])),
            "name": f"{base}-{tag}-summary",
            "job_type": "cv-summary",
            "config": {
                "cv_folds": [f["fold"] for f in result["folds"]],
                "args": result["config"],
                **_labels(result),
            },
        }
        if args.get("offline"):
            settings["mode"] = "offline"
        if settings["dir"]:
            os.makedirs(settings["dir"], exist_ok=True)
        run = wandb.init(**{k: v for k, v in settings.items() if v is not None})
        try:
            for metric, stats in summary.items():
                run.summary[f"{metric}_mean"] = stats["mean"]
                run.summary[f"{metric}_std"] = stats["std"]
            columns = ["fold", *CV_METRICS]
            rows = [[f["fold"], *(f.get(m) for m in CV_METRICS)] for f in result["folds"]]
            run.log({"cv/folds": wandb.Table(columns=columns, data=rows)})
        finally:
            run.finish()


def _labels(result: dict[str, Any]) -> dict[str, str]:
    """W&B tags and config keys: the model family and the dataset's short name."""
    labels = {"family": result.get("family") or ""}
    if result.get("dataset"):
        labels["dataset"] = result["dataset"]["name"]
    return {k: v for k, v in labels.items() if v}


_HEADS = {  # at most 13 characters, the width of a column
    "test/clip_pos_precision": "pos precision",
    "test/clip_pos_recall": "pos recall",
    "test/clip_pos_f1": "pos f1",
    "run/params": "params",
    "run/train_time_s": "train s",
    "run/test_segments_per_s": "segments/s",
}


def _table(per_fold: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> str:
    order = (*CV_METRICS, *POSITIVE_METRICS, *BOOST_METRICS, *RUN_STATS)
    cols = [m for m in order if m in summary]
    heads = [_HEADS.get(c) or c.replace("test/", "").replace("boost/", "lgbm ") for c in cols]

    def cell(col: str, value: float | None) -> str:
        if value is None:
            return f"{'-':>13}"
        return f"{value:>13.1f}" if col in RUN_STATS else f"{value:>13.4f}"

    lines = ["fold  " + "  ".join(f"{h:>13}" for h in heads)]
    for row in per_fold:
        lines.append(f"{row['fold']:>4}  " + "  ".join(cell(c, row.get(c)) for c in cols))
    lines.append("mean  " + "  ".join(cell(c, summary[c]["mean"]) for c in cols))
    lines.append(" std  " + "  ".join(cell(c, summary[c]["std"]) for c in cols))
    return "\n".join(lines)


def cv_options(
    folds: list[int] | None = None,
    test_folds: list[int] | None = None,
    val: Literal["next", "none"] = "next",
    boost: bool = False,
) -> None:
    """Cross-validation options, given as ``--cv.folds``, ``--cv.test_folds``, ``--cv.val`` and
    ``--cv.boost``.

    Args:
        folds: Folds that take part, each tested in turn (None: every fold of the dataset).
        test_folds: Test only these of them, with the same train/val folds as the whole
            cross-validation gives them (one named fold where all of them would take too long).
        val: ``next``: the next fold validates (early stopping, best checkpoint); ``none``:
            train on all other folds and keep the last epoch.
        boost: Also fit LightGBM on each fold's embeddings of its own model (the config's
            ``boost`` section holds its options).
    """


def _check_boost_ready(probe: AudioCLI) -> None:
    """Refuse embeddings of a model that neither trains nor starts from published weights."""
    from audio_cls.models import list_pretrained

    model = probe.model
    if probe.trainer.max_epochs == 0 and not model.hparams.get("pretrained"):
        sources = [
            f"{c.tag} ({c.source or 'a local file'})"
            for _, c in list_pretrained(model.registry_name)
        ]
        where = "; published: " + ", ".join(sources) if sources else ""
        raise UsageError(
            f"--cv.boost with trainer.max_epochs 0 embeds with an untrained "
            f"{model.registry_name}: set --model.init_args.pretrained{where}"
        )


def _boost_fold(cli: AudioCLI, plan: dict[str, list[int]], options: dict[str, Any]) -> dict:
    """Embed the fold's clips with its best model, then LightGBM on them; the test metrics."""
    from audio_cls.boost import run_boost
    from audio_cls.commands.embed import clips_of_data, embed_clips
    from audio_cls.inference import Predictor, WindowSettings
    from audio_cls.models import load_classifier

    best = getattr(cli.trainer.checkpoint_callback, "best_model_path", "") or ""
    model = load_classifier(best)[0] if best else cli.model.eval()  # max_epochs 0: as loaded
    data = cli.datamodule
    windows = WindowSettings.from_section({"segments": data.segment_settings}, model.sample_rate)
    folds = [*plan["train"], *plan["val"], *plan["test"]]
    clips, names = clips_of_data(data, folds)
    run_dir = Path(cli.trainer.log_dir or cli.trainer.default_root_dir)
    out = run_dir / "embeddings.parquet"
    meta = {
        "class_names": names,
        "tap": "embedding",
        "model": model.registry_name,
        "sample_rate": windows.sample_rate,
        "window_sec": windows.window / windows.sample_rate,
        "hop_sec": windows.hop / windows.sample_rate,
        "checkpoint": best,
    }
    rank_zero_info(f"cv fold {plan['test'][0]}: embedding {len(clips)} clips into {out}")
    report = embed_clips(Predictor(model, windows, tap="embedding"), clips, out, meta)
    report_clip_problems(report.errors, report.warnings)
    return run_boost(out, run_dir / "boost", plan["train"], plan["val"], plan["test"], **options)


def _fold_stats(cli: AudioCLI, cv_dir: Path | None) -> dict[str, Any]:
    """The fold run's statistics (:data:`RUN_STATS`), its positive-class metrics
    (:data:`POSITIVE_METRICS`, where it scored a positive class) and its directory (relative
    to the cross-validation's folder where it lies inside it): what ``compare`` reads."""
    stats = next((cb for cb in cli.trainer.callbacks if isinstance(cb, RunStats)), None)
    report = next((cb for cb in cli.trainer.callbacks if isinstance(cb, RunReport)), None)
    row: dict[str, Any] = {}
    if report is not None:  # the positive class's metrics, where the run scored one
        row.update(
            {m: report.test_metrics[m] for m in POSITIVE_METRICS if m in report.test_metrics}
        )
    if stats is not None:
        recorded = stats.stats(cli.trainer, cli.model)
        row.update({m: recorded.get(m) for m in RUN_STATS})
    if cv_dir is not None and cli.trainer.log_dir:
        run_dir = Path(cli.trainer.log_dir).resolve()
        with contextlib.suppress(ValueError):
            run_dir = run_dir.relative_to(cv_dir.resolve())
        row["run_dir"] = str(run_dir)
    return row


def main(argv: list[str]) -> dict[str, Any]:
    """``audio-cls cv``: fit's options plus ``--cv.folds`` / ``--cv.val``."""
    ours, rest = split_section_argv(argv, "cv", ("folds", "test_folds"))
    parser = section_parser("audio-cls cv", cv_options, "cv")
    options = parser.parse_args(ours).cv
    if any(t in ("-h", "--help") for t in rest):
        print(
            "usage: audio-cls cv --config CONFIG [fit options] [--cv.folds K ...] "
            "[--cv.test_folds K ...] [--cv.val next|none] [--cv.boost true]\n"
        )
        print(__doc__ or "")
        parser.print_help()
        return {}
    if any(t.startswith("--print_config") for t in rest):
        # the training config as fit resolves it, then the cross-validation's own options
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
            AudioCLI(args=["fit", *rest])
        print(buffer.getvalue().rstrip())
        print(parser.dump(parser.parse_args(ours), skip_none=False).rstrip())
        return {}
    return run_cv(
        rest,
        folds=options.folds,
        test_folds=options.test_folds,
        val=options.val,
        boost=options.boost,
    )


def run_cv(
    rest: list[str],
    folds: list[int] | None = None,
    val: str = "next",
    boost: bool = False,
    test_folds: list[int] | None = None,
) -> dict[str, Any]:
    """Cross-validate the training config given by ``rest`` (fit's options)."""
    probe = AudioCLI(args=rest, run=False)  # resolves the config once to learn the folds
    section = probe.config.get("boost")
    boost_options = section.as_dict() if section is not None else {}
    if boost:
        if probe.trainer.world_size > 1:
            # rank 0 alone embeds and boosts; the others would wait at the next fold's
            # first collective for longer than the process group allows
            raise UsageError(
                "--cv.boost runs on one device: add --trainer.devices 1, or embed and boost "
                "each fold's checkpoint with `audio-cls embed` and `audio-cls boost`"
            )
        _check_boost_ready(probe)
    folds = folds or probe.datamodule.manifest.folds
    plans = cv_folds(folds, val)
    if test_folds:
        unknown = sorted(set(test_folds) - set(folds))
        if unknown:
            raise UsageError(
                f"--cv.test_folds {unknown}: not among the cross-validated folds {folds}"
            )
        plans = [p for p in plans if p["test"][0] in test_folds]
    debugging = bool(probe.trainer.fast_dev_run)  # one batch per fold, nothing written
    root = None if debugging else run_root(probe)
    tag = time.strftime("cv_%Y%m%d-%H%M%S")
    if root is not None and rank_zero_only.rank == 0:
        tag = claim_folder(root, tag)  # two cross-validations started together get two folders
    started = time.perf_counter()
    per_fold = []
    cli = None
    for plan in plans:
        k = plan["test"][0]
        rank_zero_info(
            f"\n=== cv fold {k}: train {plan['train']}, val {plan['val']}, test {plan['test']}"
        )
        overrides = [
            f"--data.{split}_folds={json.dumps(plan[split])}" for split in ("train", "val", "test")
        ]
        if not plan["val"]:  # nothing to select on: keep the last epoch, no validation loop
            overrides += ["--checkpoint.monitor=null", "--trainer.limit_val_batches=0"]
        cli = _FoldCLI(
            tag, k, ["fit", *rest, *overrides, "--test_after_fit=true"], bool(plan["val"]), root
        )
        metrics = cli.trainer.callback_metrics
        row: dict[str, Any] = {"fold": k, **plan}
        for m in CV_METRICS:
            row[m] = float(metrics[m]) if m in metrics else None
        row.update(_fold_stats(cli, None if root is None else root / tag))
        if boost and not debugging and cli.trainer.is_global_zero:
            boosted = _boost_fold(cli, plan, boost_options)
            row.update({f"boost/{m}": boosted.get(m) for m in CV_METRICS})
        per_fold.append(row)
    summary = summarize(per_fold)
    result = {
        "config": rest,
        "family": probe.model.registry_name or type(probe.model).__name__,
        "dataset": describe_data(probe.datamodule),
        "folds": per_fold,
        "summary": summary,
        "wall_time_sec": time.perf_counter() - started,
    }
    if not probe.trainer.is_global_zero:
        return result
    print(f"\ncross-validation over folds {folds} ({result['wall_time_sec']:.0f} s)")
    print(_table(per_fold, summary))
    if root is not None:
        out_dir = root / tag
        write_metrics(out_dir / "cv_summary.json", result)
        print(f"\nsummary: {out_dir / 'cv_summary.json'}")
        if cli is not None and cli.wandb_args:
            _log_summary_to_wandb(cli, tag, result, summary)
    return result
