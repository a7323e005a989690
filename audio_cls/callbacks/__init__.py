"""Callbacks every run can use: clip aggregation, TTA shifts, run reports."""

from audio_cls.callbacks.aggregation import ClipAggregation, ClipResults, aggregate_clips
from audio_cls.callbacks.reports import RunReport
from audio_cls.callbacks.tta import TTAShift

__all__ = ["ClipAggregation", "ClipResults", "RunReport", "TTAShift", "aggregate_clips"]
