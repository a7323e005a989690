"""Lightning glue every run can use: clip aggregation, TTA shifts, run reports, run statistics,
checkpoints, the fine-tuning schedule."""

from audio_cls.callbacks.aggregation import ClipAggregation
from audio_cls.callbacks.checkpointing import AtomicCheckpointIO, ResumeState, RunCheckpoint
from audio_cls.callbacks.finetuning import FineTuning
from audio_cls.callbacks.run_report import RunReport
from audio_cls.callbacks.run_stats import RunStats
from audio_cls.callbacks.tta import TTAShift

__all__ = [
    "AtomicCheckpointIO",
    "ClipAggregation",
    "FineTuning",
    "ResumeState",
    "RunCheckpoint",
    "RunReport",
    "RunStats",
    "TTAShift",
]
