"""``fit``, ``validate``, ``test``, ``predict``: LightningCLI over every model family.

The YAML configs in ``lightning_configs/`` are LightningCLI configs; the typed ``__init__``
signatures of the models, the data module and the callbacks are the schema. The data module's
``num_classes``, ``class_names`` and ``sample_rate`` are linked into the model, so no config
repeats them, and each family brings its own front-end defaults.

Run directories: a run's outputs (logs, checkpoints, reports) go to ``runs/<config>/version_N``,
claimed with ``os.mkdir`` before any logger writes, so runs started together never share one;
every versioned logger gets that N. ``--trainer.default_root_dir DIR`` re-roots the loggers'
relative ``save_dir`` (and a relative ``checkpoint.dirpath``) into DIR. ``fit --ckpt_path
<run>/checkpoints/last.ckpt`` resumes: the same run directory, metrics appended, the W&B run
continued. ``fast_dev_run`` writes nothing.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from audio_cls.boost import BoostOptions
from audio_cls.callbacks import ClipAggregation, FineTuning, RunReport, RunStats, TTAShift
from audio_cls.callbacks.checkpointing import (
    RUN_KEY,
    AtomicCheckpointIO,
    CheckpointWriteError,
    ResumeState,
    RunCheckpoint,
)
from audio_cls.commands import UsageError
from audio_cls.data import AudioDataModule
from audio_cls.models import AudioClassifier

__all__ = [
    "AudioCLI",
    "RunDirectoryError",
    "claim_folder",
    "claim_version",
    "finish_wandb",
    "main",
    "resolve_precision",
    "run_root",
]

#: Errors only a write gives (full disk, quota, read-only): the run stops with one line naming
#: the file. Permission errors are left alone: reading a data file can give them too.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class RunDirectoryError(UsageError):
    """A run's output folder or file cannot be created or written; the message says which, why.

    Raised ``from None``: ``audio-cls`` prints the innermost cause of an error, and the OSError
    behind this one lacks the folder.
    """


def _reason(err: OSError) -> str:
    text = err.strerror or str(err)
    return text[:1].lower() + text[1:]


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirectoryError(
            f"cannot create the run directory {path}: a file is in the way"
        ) from None
    except OSError as err:
        raise RunDirectoryError(f"cannot create the run directory {path}: {_reason(err)}") from None


def _check_writable(path: Path) -> None:
    """Fail now, not after training, when nothing can be written in ``path``."""
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise RunDirectoryError(
            f"cannot write in the run directory {path}: {_reason(err)}"
        ) from None


def claim_version(root: str | Path) -> int:
    """Create the next free ``root/version_N`` and return N; safe against concurrent runs.

    ``os.mkdir`` fails when the folder exists, so of two runs counting the same N one creates it
    and the other moves on to N + 1.

    Args:
        root: The folder of the versions (``save_dir/name``), created if missing.

    Raises:
        RunDirectoryError: ``root`` or the version folder cannot be created.
    """
    root = Path(root)
    _make_dir(root)
    taken = [
        int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    n = max(taken, default=-1) + 1
    while True:
        try:
            os.mkdir(root / f"version_{n}")
            return n
        except FileExistsError:
            n += 1
        except OSError as err:
            raise RunDirectoryError(
                f"cannot create the run directory {root / f'version_{n}'}: {_reason(err)}"
            ) from None


def _logger_specs(trainer: Any) -> list[Any]:
    """The configured loggers (``class_path``/``init_args`` namespaces), in order."""
    loggers = trainer.get("logger")
    if loggers is None or isinstance(loggers, bool):
        return []
    return [
        lg
        for lg in (loggers if isinstance(loggers, list) else [loggers])
        if hasattr(lg, "init_args")
    ]


def _is_versioned(spec: Any) -> bool:
    """CSV and TensorBoard loggers write into ``save_dir/name/version``: the run directory."""
    return str(getattr(spec, "class_path", "")).endswith(("CSVLogger", "TensorBoardLogger"))


def _is_wandb(spec: Any) -> bool:
    return str(getattr(spec, "class_path", "")).endswith("WandbLogger")


def _rerooted(value: Any, root: Path) -> Any:
    if isinstance(value, (str, os.PathLike)) and not Path(value).is_absolute():
        return str(root / value)
    return value


class AudioCLI(LightningCLI):
    """LightningCLI with audio-cls' links, standing callbacks and run-directory conventions."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        super().__init__(
            AudioClassifier,
            AudioDataModule,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for field in ("num_classes", "class_names", "sample_rate"):
            parser.link_arguments(
                f"data.{field}", f"model.init_args.{field}", apply_on="instantiate"
            )
        # callbacks every run has get their own keys: YAML lists would replace each other
        parser.add_lightning_class_args(ClipAggregation, "clip_aggregation")
        parser.add_lightning_class_args(TTAShift, "tta")
        parser.add_lightning_class_args(RunReport, "report")
        parser.add_lightning_class_args(RunStats, "run_stats")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(FineTuning, "finetuning")
        # read by `audio-cls cv --cv.boost true` (LightGBM on each fold's embeddings); fit
        # itself leaves it alone, so one YAML holds the model, the data and the boosting
        parser.add_class_arguments(BoostOptions, "boost", instantiate=False)
        parser.set_defaults(
            {
                "checkpoint.filename": "best",
                "checkpoint.monitor": "val/clip_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
            }
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint on the test folds (fit only).",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        trainer.precision = resolve_precision(trainer.precision, trainer.accelerator)
        if trainer.default_root_dir is None:
            # Without a logger (--trainer.logger false) the run directory is the root dir,
            # Lightning's default the cwd: keep checkpoints and reports under runs/ instead.
            files = config.get("config") or []
            name = Path(str(files[-1])).stem if files else "default"
            trainer.default_root_dir = str(Path("runs") / name)
        else:
            self._reroot(config, Path(trainer.default_root_dir))
        self.run_dir: Path | None = None
        self._created: list[Path] = []
        self._resume: dict[str, Any] | None = None
        if self.subcommand is None or trainer.fast_dev_run:
            return  # a probe (run=False) or a debugging pass: no run directory
        if self.subcommand == "fit" and config.get("ckpt_path"):
            self._resume = _resume_info(config.ckpt_path)
            if self._resume is not None:
                _continue_run(trainer, self._resume)
        # one process claims; DDP ranks > 0 get rank zero's directory broadcast by Lightning
        if rank_zero_only.rank == 0:
            self.run_dir, self._created = _claim_run_dir(trainer)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BaseException:
            # bad data or options found while building the classes: leave no empty run behind
            _remove_empty(self._created)
            raise

    @staticmethod
    def _reroot(config: Any, root: Path) -> None:
        """Relative output paths of the loggers and checkpoints resolve against ``root``."""
        for spec in _logger_specs(config.trainer):
            for key in ("save_dir", "dir"):
                if spec.init_args.get(key) is not None:
                    spec.init_args[key] = _rerooted(spec.init_args[key], root)
        ckpt = config.get("checkpoint")
        if ckpt is not None and ckpt.get("dirpath") is not None:
            ckpt.dirpath = _rerooted(ckpt.dirpath, root)
        for cb in config.trainer.get("callbacks") or []:
            args = getattr(cb, "init_args", None)
            if args is not None and args.get("dirpath") is not None:
                args.dirpath = _rerooted(args.dirpath, root)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(ResumeState())
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a custom or sharded one
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_fit(self) -> None:
        if self._resume is not None and rank_zero_only.rank == 0:
            _restore_csv_history(self.trainer, self._resume)

    def _run_subcommand(self, subcommand: str) -> None:
        # every verb ends its W&B runs (crashed ones marked failed); a disk that cannot take a
        # file ends the run with one line naming it
        exit_code = 1
        try:
            super()._run_subcommand(subcommand)
            exit_code = 0
        except CheckpointWriteError as err:
            raise RunDirectoryError(str(err)) from None
        except OSError as err:
            if err.errno in _DISK_ERRNOS and err.filename:
                raise RunDirectoryError(f"cannot write {err.filename}: {_reason(err)}") from None
            raise
        finally:
            if exit_code:  # a run that failed before writing anything (data setup) leaves no folder
                _remove_empty(self._created)
            finish_wandb(self.trainer, exit_code)

    def after_fit(self) -> None:
        trainer = self.trainer
        debugging = bool(trainer.fast_dev_run)
        run_dir = None if debugging else Path(trainer.log_dir or trainer.default_root_dir)
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") or ""
        if trainer.is_global_zero and run_dir is not None and run_dir.name.startswith("version_"):
            _point_latest(run_dir)
        test_after_fit = self.config_init[self.subcommand].get("test_after_fit", True)
        if test_after_fit and self.datamodule.folds()["test"] and not trainer.interrupted:
            trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=True
            )
        if run_dir is None:
            return
        rank_zero_info(f"\nrun directory:   {run_dir}")
        if best:
            score = getattr(ckpt, "best_model_score", None)
            said = (
                f"  ({ckpt.monitor} = {float(score):.4f})"
                if ckpt.monitor and score is not None
                else ""
            )
            rank_zero_info(f"best checkpoint: {best}{said}")
        for name in (
            "metrics_val.json",
            "metrics_test.json",
            "predictions.csv",
            "confusion_matrix.png",
            "run_stats.json",
        ):
            if (run_dir / name).exists():
                rank_zero_info(f"{name + ':':<22} {run_dir / name}")


def _point_latest(run_dir: Path) -> None:
    """``latest`` -> this run, replaced atomically: runs ending together must not collide."""
    latest = run_dir.parent / "latest"
    if latest.exists() and not latest.is_symlink():
        return  # a folder of the user's
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, latest)
    except OSError as err:  # a file system without links: the run is complete all the same
        tmp.unlink(missing_ok=True)
        rank_zero_info(f"could not point {latest} at {run_dir.name}: {_reason(err)}")


def _missing(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.insert(0, path)
        path = path.parent
    return missing


def _claim_run_dir(trainer: Any) -> tuple[Path | None, list[Path]]:
    """Create (and check) the run directory the loggers will write to; fix their version.

    The first logger decides the directory Lightning uses (``trainer.log_dir``), as do the
    checkpoints. Without loggers it is ``default_root_dir``; with the default logger
    (``logger: true``) or a first logger that is not versioned Lightning picks the folders.

    Returns:
        The run directory (None where Lightning picks it) and the folders created for it.
    """
    logger = trainer.get("logger")
    specs = _logger_specs(trainer)
    if logger is False or logger == []:
        path = Path(trainer.default_root_dir)
        created = _missing(path)
        _make_dir(path)
    elif specs and _is_versioned(specs[0]):
        first = specs[0].init_args
        root = Path(first.save_dir) / (first.get("name") or "")
        version = first.get("version")
        if version is None:
            created = _missing(root)
            version = claim_version(root)
            for spec in specs:
                if _is_versioned(spec) and spec.init_args.get("version") is None:
                    spec.init_args.version = version
            path = root / f"version_{version}"
            created.append(path)
        else:
            path = root / (version if isinstance(version, str) else f"version_{version}")
            created = _missing(path)
            _make_dir(path)
    else:
        return None, []
    try:
        _check_writable(path)
    except RunDirectoryError:
        _remove_empty(created)
        raise
    return path, created


def _remove_empty(folders: list[Path]) -> None:
    """Undo a claim: remove the folders made for a run that never started, innermost first."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty (another run's, or written to): keep it and its parents
            return


_SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


def _resume_info(ckpt_path: Any) -> dict[str, Any] | None:
    """Where a ``fit --ckpt_path`` run continues: the run directory holding the checkpoint.

    None for Lightning's special paths (``last``, ``best``, ...) and for a checkpoint outside a
    run's ``checkpoints/`` folder (a new run starts from it).
    """
    from audio_cls.models.base import CheckpointMismatchError

    text = str(ckpt_path)
    if text in _SPECIAL_CKPT_PATHS or text.startswith("registry"):
        return None
    path = Path(text)
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: checkpoint not found")
    if path.parent.name != "checkpoints":
        return None
    run_dir = path.parent.parent
    if run_dir.is_symlink():  # runs/<config>/latest -> version_N: continue version_N itself
        run_dir = run_dir.parent / os.readlink(run_dir)
    info: dict[str, Any] = {"run_dir": run_dir, "epoch": None, "global_step": None, "wandb": []}
    try:
        import torch

        # memory-mapped: the weights stay on disk, only the small entries are read
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # Lightning's own load later says what is wrong
        rank_zero_info(f"could not read {path} ahead of the resume ({err})")
        return info
    info["epoch"] = ckpt.get("epoch")
    info["global_step"] = ckpt.get("global_step")
    info["wandb"] = list((ckpt.get(RUN_KEY) or {}).get("wandb_ids") or [])
    del ckpt
    return info


def _continue_run(trainer: Any, info: dict[str, Any]) -> None:
    """Point the loggers at the resumed run's directory and W&B run."""
    run_dir: Path = info["run_dir"]
    rank_zero_info(f"resuming the run in {run_dir}")
    specs = _logger_specs(trainer)
    if not specs:
        trainer.default_root_dir = str(run_dir)
    first_versioned = True
    wandb_ids = iter(info["wandb"])
    for spec in specs:
        args = spec.init_args
        if _is_versioned(spec):
            if first_versioned:
                args.save_dir = str(run_dir.parent.parent)
                args.name = run_dir.parent.name
                first_versioned = False
            args.version = run_dir.name
        elif _is_wandb(spec):
            run_id = next(wandb_ids, None)
            if run_id and args.get("version") is None and args.get("id") is None:
                args.version = run_id
                if args.get("resume") is None:
                    args.resume = "allow"


def _restore_csv_history(trainer: Any, info: dict[str, Any]) -> None:
    """Keep the resumed run's ``metrics.csv`` rows up to the checkpoint.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; the rows of the
    epochs the checkpoint holds are read first and written back, those logged after it (the
    interrupted epoch, done again now) are dropped.
    """
    from lightning.pytorch.loggers import CSVLogger

    epoch, step = info.get("epoch"), info.get("global_step")
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        rows = []
        if path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if _before_checkpoint(r, epoch, step)]
        with warnings.catch_warnings():
            # "Experiment logs directory ... exists and is not empty": it is this run's own
            warnings.filterwarnings("ignore", message=".*exists and is not empty")
            experiment = logger.experiment
        for row in rows:
            values = {k: v for k, v in row.items() if k != "step" and v not in ("", None)}
            experiment.log_metrics(values, int(float(row["step"])) if row.get("step") else None)
        experiment.save()


def _before_checkpoint(row: dict[str, str], epoch: int | None, step: int | None) -> bool:
    try:
        row_epoch = int(float(row["epoch"])) if row.get("epoch") else None
        row_step = int(float(row["step"])) if row.get("step") else None
    except ValueError:
        return True
    if epoch is None or row_epoch is None:
        return True
    if row_epoch != epoch:
        return row_epoch < epoch
    return step is None or row_step is None or row_step <= step


def finish_wandb(trainer: Any, exit_code: int = 0) -> None:
    """Finish the W&B runs of ``trainer``'s loggers that were started.

    Without it the next ``WandbLogger`` of the process (the next cross-validation fold) takes
    over the run still in progress, and the process's exit abandons it unfinished.

    Args:
        trainer: The trainer whose loggers to look at.
        exit_code: 0 for a run that ended well; W&B marks others failed.
    """
    from lightning.pytorch.loggers import WandbLogger

    for logger in getattr(trainer, "loggers", None) or []:
        # ``_experiment``: asking for ``experiment`` would start a run just to end it
        run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
        if run is not None:
            run.finish(exit_code=exit_code)


def resolve_precision(precision: Any, accelerator: Any) -> Any:
    """``bf16-mixed`` where the device has bf16; else the nearest precision it runs, said once.

    GPUs before Ampere lack bf16 (-> ``16-mixed``); on CPUs bf16 autocast runs, but far slower
    than fp32 on most of them (-> ``32-true``).
    """
    import torch

    if str(precision) not in ("bf16-mixed", "bf16"):
        return precision
    on_gpu = torch.cuda.is_available() and str(accelerator) in ("auto", "gpu", "cuda")
    if on_gpu:
        if torch.cuda.is_bf16_supported():
            return precision
        fallback = "16-mixed"
    else:
        fallback = "32-true"
    rank_zero_info(f"precision {precision} is not available on this device: using {fallback}")
    return fallback


def main(argv: list[str]) -> None:
    """Run a LightningCLI verb (``argv`` starts with it)."""
    AudioCLI(args=argv)


def run_root(probe: AudioCLI) -> Path:
    """Where fit's run directories go for a parsed (not run) CLI: the first versioned logger's
    root, or the trainer's root dir. Verbs that run several fits (``cv``, ``pseudolabel``) put
    their own folder there."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = probe.trainer.loggers
    if loggers and isinstance(loggers[0], (CSVLogger, TensorBoardLogger)):
        return Path(loggers[0].root_dir)
    return Path(probe.trainer.default_root_dir)


def claim_folder(root: Path, tag: str) -> str:
    """Create ``root/tag`` (``tag-2``, ``tag-3``... when taken, so that two verbs started
    together get two folders) and return the name used."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirectoryError(f"cannot create {root}: {_reason(err)}") from None
    for i in range(1, 1000):
        name = tag if i == 1 else f"{tag}-{i}"
        try:
            os.mkdir(root / name)
            return name
        except FileExistsError:
            continue
        except OSError as err:
            raise RunDirectoryError(f"cannot create {root / name}: {_reason(err)}") from None
    raise RunDirectoryError(f"cannot create a folder {tag} under {root}: all 999 names taken")
