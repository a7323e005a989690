"""``fit``, ``validate``, ``test``, ``predict``: LightningCLI over every model family.

The YAML configs in ``lightning_configs/`` are LightningCLI configs; the typed ``__init__``
signatures of the models, the data module and the callbacks are the schema. The data module's
``num_classes``, ``class_names`` and ``sample_rate`` are linked into the model, so no config
repeats them, and each family brings its own front-end defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from audio_cls.callbacks import ClipAggregation, RunReport, TTAShift
from audio_cls.data import AudioDataModule
from audio_cls.models import AudioClassifier

__all__ = ["AudioCLI", "main", "resolve_precision"]


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
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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

    def after_fit(self) -> None:
        trainer = self.trainer
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") or ""
        if trainer.is_global_zero and run_dir.name.startswith("version_"):
            latest = run_dir.parent / "latest"
            if latest.is_symlink() or not latest.exists():
                latest.unlink(missing_ok=True)
                latest.symlink_to(run_dir.name)
        test_after_fit = self.config_init[self.subcommand].get("test_after_fit", True)
        if test_after_fit and self.datamodule.folds()["test"] and not trainer.interrupted:
            trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=True
            )
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
        ):
            if (run_dir / name).exists():
                rank_zero_info(f"{name + ':':<22} {run_dir / name}")


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
