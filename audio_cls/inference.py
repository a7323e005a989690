"""The inference core, without Lightning: windows -> batched forward (+ TTA) -> clip scores.

One code path serves ``classify``, the clip-aggregation callback's arithmetic and (later) the
server and the exporter:

- :func:`window_probs`: class probabilities of a batch of windows, averaged over time-shifted
  copies (:class:`TimeShiftTTA`, an argument rather than state set on the model);
  :func:`window_embeddings` the same for a named tap of the model, pooled to ``(B, D)``
  (:func:`pooled_tap`), for ``embed``;
- :func:`aggregate_clips`: window probabilities -> clip probabilities (``mean``,
  ``logit_mean``, ``max``, ``vote``);
- :class:`Predictor`: a loaded model plus the checkpoint's window settings, for waveforms and
  for files of any length, decoded block by block in a background thread (bounded memory) and
  batched across files so the model always sees full batches;
- :class:`PrecisionChoice`: the fastest exact-enough arithmetic (``precision="auto"``): bf16
  autocast where the hardware computes bf16 natively, adopted only once it has given the same
  top-1 class as fp32 on the first windows of real input.

Nothing here imports a model family or a data set; the model is any module mapping waveforms
``(B, T)`` to logits ``(B, C)`` (for embeddings, one with the model contract's
``forward_features``/``forward_head``/``forward_intermediates``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided

from audio_cls.data.segments import SHORT_CLIP_SEC, SILENT_PEAK, ShortClipPolicy, fit_length
from audio_cls.io import printable_path

__all__ = [
    "AGGREGATIONS",
    "PRECISIONS",
    "ClipPrediction",
    "ClipResults",
    "PrecisionChoice",
    "Predictor",
    "TimeShiftTTA",
    "WindowSettings",
    "aggregate_clips",
    "cut_windows",
    "native_bf16",
    "pooled_tap",
    "window_embeddings",
    "window_probs",
]

log = logging.getLogger(__name__)

Aggregation = Literal["mean", "logit_mean", "max", "vote"]
AGGREGATIONS: tuple[str, ...] = ("mean", "logit_mean", "max", "vote")
Precision = Literal["auto", "32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "32", "bf16")


@dataclass(frozen=True)
class TimeShiftTTA:
    """Test-time augmentation: average over circularly time-shifted copies of each window.

    Attributes:
        shifts: Copies per window, including the unshifted one when odd (1: off).
        max_shift: Largest shift either way, as a fraction of the window.
    """

    shifts: int = 1
    max_shift: float = 0.1

    def __post_init__(self) -> None:
        if self.shifts < 1 or not 0 <= self.max_shift < 1:
            raise ValueError(
                f"TTA needs shifts >= 1 and 0 <= max_shift < 1, got shifts={self.shifts}, "
                f"max_shift={self.max_shift}"
            )

    def offsets(self, num_samples: int) -> list[int]:
        """Shifts in samples for windows of ``num_samples``."""
        if self.shifts <= 1:
            return [0]
        k = int(self.max_shift * num_samples)
        return torch.linspace(-k, k, self.shifts).round().long().tolist()


def _shift_mean(
    output: Callable[[torch.Tensor], torch.Tensor],
    waveform: torch.Tensor,
    tta: TimeShiftTTA | None,
) -> torch.Tensor:
    """``output`` of windows ``(B, T)``, averaged over the time-shifted copies of ``tta``."""
    offsets = tta.offsets(waveform.shape[-1]) if tta is not None else [0]
    outs = [output(torch.roll(waveform, k, dims=-1) if k else waveform) for k in offsets]
    return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)


def window_probs(
    model: Callable[[torch.Tensor], torch.Tensor],
    waveform: torch.Tensor,
    tta: TimeShiftTTA | None = None,
) -> torch.Tensor:
    """Class probabilities ``(B, C)`` (float32) of windows ``(B, T)``, averaged over ``tta``."""
    return _shift_mean(lambda x: model(x).float().softmax(-1), waveform, tta)


def pooled_tap(model: Any, waveform: torch.Tensor, tap: str = "embedding") -> torch.Tensor:
    """One named tap of ``model.forward_intermediates`` for windows ``(B, T)``, as ``(B, D)``.

    ``embedding`` is the pre-logit embedding (``forward_head(..., pre_logits=True)``, computed
    without the other taps). A 2-D tap is returned as it is; a map ``(B, C, F, T)`` is averaged
    over F and T, a sequence ``(B, L, D)`` over L, and the ``frontend`` tap (channels first,
    ``(B, C, frames)``) over frames: everything but the channels or features.

    Raises:
        ValueError: The model has no tap of that name; the message lists those it has.
    """
    if tap == "embedding":
        return model.forward_head(model.forward_features(waveform), pre_logits=True)
    taps = model.forward_intermediates(waveform)
    if tap not in taps:
        raise ValueError(
            f"--tap {tap}: {type(model).__name__} has no such tap; its taps are {', '.join(taps)}"
        )
    x = taps[tap]
    if x.ndim == 4:  # map (B, C, F, T)
        return x.mean((2, 3))
    if x.ndim == 3:  # the front end's (B, C, frames), or a sequence (B, L, D)
        return x.mean(2 if tap == "frontend" else 1)
    if x.ndim == 2:
        return x
    raise ValueError(f"--tap {tap}: a tap of shape {tuple(x.shape)} cannot be pooled to (B, D)")


def window_embeddings(
    model: Any, waveform: torch.Tensor, tta: TimeShiftTTA | None = None, tap: str = "embedding"
) -> torch.Tensor:
    """:func:`pooled_tap` ``(B, D)`` (float32) of windows ``(B, T)``, averaged over ``tta``."""
    return _shift_mean(lambda x: pooled_tap(model, x, tap).float(), waveform, tta)


def aggregate_clips(
    probs: torch.Tensor, clip_index: torch.Tensor, num_clips: int, method: Aggregation = "mean"
) -> torch.Tensor:
    """Clip probabilities ``(num_clips, C)`` from window probabilities ``(N, C)``.

    ``mean`` averages probabilities; ``logit_mean`` averages log-probabilities (a geometric
    mean, renormalised); ``max`` takes each class's largest window probability (renormalised);
    ``vote`` counts window argmaxes. Clips without windows get all-zero rows.
    """
    num_classes = probs.shape[1]
    counts = torch.bincount(clip_index, minlength=num_clips).clamp_min(1).unsqueeze(1).to(probs)
    # a real index, not a stride-0 view: with the view, scatter_add takes a parallel path that
    # cost ~50 ms a call on a shared 2-core CPU (torch 2.11), even for one clip of 10 windows
    index = clip_index.unsqueeze(1).expand_as(probs).contiguous()
    zeros = probs.new_zeros(num_clips, num_classes)
    if method == "mean":
        return zeros.scatter_add(0, index, probs) / counts
    if method == "logit_mean":
        mean_log = zeros.scatter_add(0, index, probs.clamp_min(1e-8).log()) / counts
        out = mean_log.softmax(-1)
    elif method == "max":
        out = zeros.scatter_reduce(0, index, probs, reduce="amax", include_self=False)
        out = out / out.sum(1, keepdim=True).clamp_min(1e-12)
    elif method == "vote":
        votes = torch.nn.functional.one_hot(probs.argmax(1), num_classes).to(probs)
        out = zeros.scatter_add(0, index, votes) / counts
    else:
        raise ValueError(f"unknown clip aggregation {method!r}; use {', '.join(AGGREGATIONS)}")
    has_windows = torch.bincount(clip_index, minlength=num_clips) > 0
    return out * has_windows.unsqueeze(1)


@dataclass
class ClipResults:
    """Clip-level outcome of a set of clips, what the report writers take."""

    clip_ids: list[str]
    paths: list[str]
    probs: torch.Tensor  # (num_clips, C)
    targets: torch.Tensor  # (num_clips,), -1 where unlabelled
    segment_probs: torch.Tensor  # (N, C), in window order
    segment_clip_index: torch.Tensor  # (N,)
    segment_starts: torch.Tensor  # (N,) start sample
    metrics: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # clip id -> why it has no windows
    warnings: dict[str, str] = field(default_factory=dict)  # clip id -> why it means little

    @property
    def covered(self) -> torch.Tensor:
        """``(num_clips,)`` mask of the clips that have at least one window."""
        return torch.bincount(self.segment_clip_index, minlength=len(self.clip_ids)) > 0


@dataclass(frozen=True)
class WindowSettings:
    """How a model cuts audio: what a checkpoint records of its data module.

    Attributes:
        sample_rate: Rate of the waveform in Hz.
        window_sec: Window length in seconds.
        hop_sec: Hop between windows in seconds (None: half a window).
        short_clip: Clips shorter than a window are zero-padded (``pad``) or tiled (``repeat``).
    """

    sample_rate: int
    window_sec: float = 0.96
    hop_sec: float | None = None
    short_clip: ShortClipPolicy = "pad"

    @classmethod
    def from_section(cls, section: dict[str, Any], sample_rate: int) -> WindowSettings:
        """From a checkpoint's ``segments`` section (defaults where it has none)."""
        seg = section.get("segments") or {}
        return cls(
            sample_rate,
            seg.get("window_sec", 0.96),
            seg.get("hop_sec"),
            seg.get("short_clip", "pad"),
        )

    @property
    def window(self) -> int:
        return round(self.window_sec * self.sample_rate)

    @property
    def hop(self) -> int:
        return round((self.hop_sec or self.window_sec / 2) * self.sample_rate)


def cut_windows(
    blocks: Iterable[np.ndarray], window: int, hop: int, short_clip: ShortClipPolicy = "pad"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Windows of a signal that arrives in blocks: yields ``(starts (n,), windows (n, window))``.

    The same windows as :func:`audio_cls.data.segments.window_starts` on the whole signal
    (every ``hop`` samples, plus one ending at the signal's end when the tail is uncovered; a
    signal shorter than a window gives one padded or tiled window), holding at most one window
    plus one block in memory.
    """
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # absolute index of buf[0]
    next_start = 0
    total = 0
    last_start = -1
    for block in blocks:
        buf = np.concatenate([buf, block.astype(np.float32, copy=False)])
        total += len(block)
        starts = np.arange(next_start, total - window + 1, hop, dtype=np.int64)
        if len(starts):
            # a view of the buffer, no copy: the windows are copied once, into their batch
            first = buf[starts[0] - buf_start :]
            step = first.strides[0]
            yield starts, as_strided(first, (len(starts), window), (hop * step, step), False)
            last_start = int(starts[-1])
            next_start = last_start + hop
        keep_from = min(next_start, max(total - window, 0))
        buf, buf_start = buf[keep_from - buf_start :], keep_from
    if total == 0:
        return
    if last_start < 0:  # shorter than a window
        yield np.zeros(1, dtype=np.int64), fit_length(buf, window, short_clip)[None]
    elif last_start + window < total:
        start = total - window
        yield np.array([start], dtype=np.int64), buf[start - buf_start :][None, :window]


@dataclass
class ClipPrediction:
    """One clip's prediction.

    With a :class:`Predictor` ``tap``, ``probs`` and ``window_probs`` hold the clip's mean
    embedding ``(D,)`` and its window embeddings ``(n, D)``.

    Attributes:
        clip_id: The caller's name for the clip.
        path: Its file, if it came from one.
        probs: Clip probabilities ``(C,)`` (empty when ``error`` is set).
        window_probs: Window probabilities ``(n, C)``.
        starts: Window start samples ``(n,)``.
        num_samples: Length of the decoded clip.
        error: Why the clip could not be predicted (unreadable file, ...), else None.
        warning: Why its prediction means little (silent, very short), else None.
    """

    clip_id: str
    path: str
    probs: torch.Tensor
    window_probs: torch.Tensor
    starts: torch.Tensor
    num_samples: int = 0
    error: str | None = None
    warning: str | None = None


def _counted(blocks: Iterable[np.ndarray], counter: list[float]) -> Iterator[np.ndarray]:
    """Pass blocks through, adding their lengths to ``counter[0]`` and keeping their peak
    absolute value in ``counter[1]``."""
    for block in blocks:
        counter[0] += len(block)
        if len(block):
            counter[1] = max(counter[1], float(np.abs(block).max()))
        yield block


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX (elsewhere a CPU emulates bf16, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: no flags to read, and emulated bf16 would be slower
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


class PrecisionChoice:
    """Which arithmetic a :class:`Predictor` runs its model in: the autocast dtype or None.

    ``32`` is fp32 throughout and ``bf16`` is bf16 autocast, both as asked. ``auto`` is bf16
    autocast only where :func:`native_bf16` holds and only after a trial on real input: the
    first ``trial_windows`` audible windows run in both precisions (their fp32 results are
    the ones returned), and bf16 is adopted when it gives fp32's top-1 class on all but a
    fraction ``max_disagreement`` of them; a close call (fp32's two best classes within ``close_call``)
    counts as agreeing. Otherwise it stays fp32. A model that is not a torch module (an ONNX
    Runtime session) runs as it is.

    Args:
        precision: ``auto``, ``32`` or ``bf16``.
        device: Where the model runs.
        is_module: Whether the model is a torch module (autocast applies).
    """

    trial_windows = 64
    max_disagreement = 0.01
    close_call = 0.05

    def __init__(self, precision: str, device: torch.device, is_module: bool) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
        self.compared = 0
        self.disagreed = 0
        self.decided = precision != "auto" or not is_module or not native_bf16(device)
        self.dtype: torch.dtype | None = (
            torch.bfloat16 if precision == "bf16" and is_module else None
        )
        if precision == "auto" and self.decided:
            log.info("precision auto: fp32 (no native bf16 on %s, or not a torch model)", device)

    @property
    def windows_needed(self) -> int:
        """Audible windows the trial still needs (0 once decided)."""
        return 0 if self.decided else self.trial_windows - self.compared

    @property
    def name(self) -> str:
        """What runs now: ``bf16``, ``32``, or ``32 (trying bf16)`` during the trial."""
        if not self.decided:
            return "32 (trying bf16)"
        return "bf16" if self.dtype is not None else "32"

    def observe(self, fp32: torch.Tensor, bf16: torch.Tensor, audible: torch.Tensor) -> None:
        """Count one trial batch (probabilities ``(B, C)`` of both) and decide once enough
        audible windows were seen."""
        fp32, bf16 = fp32[audible], bf16[audible]
        if len(fp32) == 0:
            return
        top2 = fp32.topk(min(2, fp32.shape[1]), dim=1).values
        close = (top2[:, 0] - top2[:, -1]) < self.close_call
        agree = (fp32.argmax(1) == bf16.argmax(1)) | close
        self.compared += len(agree)
        self.disagreed += int((~agree).sum())
        if self.compared < self.trial_windows:
            return
        self.decided = True
        if self.disagreed <= self.max_disagreement * self.compared:
            self.dtype = torch.bfloat16
        log.info(
            "precision auto: bf16 autocast gave fp32's top-1 class on %d of %d windows: using %s",
            self.compared - self.disagreed,
            self.compared,
            "bf16" if self.dtype is not None else "fp32",
        )


def _in_background(items: Iterator[Any], depth: int = 8) -> Iterator[Any]:
    """Run ``items`` in a thread, ``depth`` items ahead of the consumer."""
    done = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
        finally:
            buffer.put(done)

    thread = threading.Thread(target=produce, name="audio-cls-decode", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class _OpenClip:
    def __init__(self, clip_id: str, path: str) -> None:
        self.clip_id, self.path = clip_id, path
        self.probs: list[torch.Tensor] = []
        self.starts: list[np.ndarray] = []
        self.pending = 0  # windows queued but not yet predicted
        self.ended = False
        self.num_samples = 0
        self.error: str | None = None
        self.peak = 0.0


class _Batches:
    """Batches of a :meth:`Predictor.predict_files` call on their way through the model: run
    at once with one worker, else up to ``workers`` at a time in threads; results reach their
    clips in the order the batches were sent."""

    def __init__(self, predictor: Predictor, clips: dict[int, _OpenClip]) -> None:
        self.predictor, self.clips = predictor, clips
        self.pool: ThreadPoolExecutor | None = None
        # (the batch's future, its windows predicted already, whose windows they are)
        self.inflight: deque[tuple[Future | None, list[torch.Tensor], list[tuple[int, int]]]]
        self.inflight = deque()
        self.threads = torch.get_num_threads()
        # batches are assembled in reused buffers, one more than can be in flight: fresh
        # memory for every batch costs page faults comparable to the copy itself
        self.buffers: list[np.ndarray] = []
        self.sent = 0

    def buffer(self, rows: int) -> np.ndarray:
        """An array ``(rows, window)`` that no batch in flight is reading."""
        p = self.predictor
        slot = self.sent % (p.workers + 1)
        if slot == len(self.buffers):
            self.buffers.append(np.empty((p.batch_size, p.windows.window), np.float32))
        return self.buffers[slot][:rows]

    def __enter__(self) -> _Batches:
        workers = self.predictor.workers
        if workers > 1:
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="audio-cls-model")
            # the intra-op pool is shared: the workers split it rather than oversubscribe it
            torch.set_num_threads(max(1, self.threads // workers))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(self.threads)

    def submit(self, windows: np.ndarray, owners: list[tuple[int, int]]) -> None:
        """Send a batch made in :meth:`buffer`."""
        p = self.predictor
        self.sent += 1
        if self.pool is None:
            self._deliver(p.predict_windows(windows), owners)
            return
        # the precision trial's windows run first, here; switching the thread count for them
        # would cost more (the thread pools are rebuilt) than it gains
        head = []
        while not p.precision.decided and len(windows):
            needed = p.precision.windows_needed
            head.append(p.predict_windows(windows[:needed]))
            windows = windows[needed:]
        future = self.pool.submit(p.predict_windows, windows) if len(windows) else None
        self.inflight.append((future, head, owners))
        while len(self.inflight) > p.workers:  # bounded: decoding waits for the model
            self._collect()

    def drain(self) -> None:
        while self.inflight:
            self._collect()

    def _collect(self) -> None:
        future, head, owners = self.inflight.popleft()
        parts = [*head, future.result()] if future is not None else head
        self._deliver(torch.cat(parts) if len(parts) > 1 else parts[0], owners)

    def _deliver(self, probs: torch.Tensor, owners: list[tuple[int, int]]) -> None:
        i = 0
        for k, n in owners:
            self.clips[k].probs.append(probs[i : i + n])
            self.clips[k].pending -= n
            i += n


class Predictor:
    """A model ready to classify audio: window settings, batching, TTA and aggregation.

    Args:
        model: Maps waveforms ``(B, T)`` at ``windows.sample_rate`` to logits ``(B, C)``: a
            module (moved to ``device`` and put in eval mode) or any callable, such as an
            ONNX Runtime session wrapper.
        windows: How clips are cut (from the checkpoint).
        batch_size: Windows per forward pass.
        tta: Time-shift TTA (None: off).
        aggregation: Window -> clip aggregation.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ...
        block_sec: Seconds decoded at a time from a file.
        precision: ``auto`` (the default): bf16 autocast where the device computes bf16
            natively and it agrees with fp32 on the first windows (:class:`PrecisionChoice`),
            else fp32; ``32``: fp32; ``bf16``: bf16 autocast, unchecked. Front ends compute
            in fp32 either way and probabilities come out fp32.
        tap: None: class probabilities. The name of a tap of the model's
            ``forward_intermediates`` (``embedding``: the pre-logit embedding): that tap per
            window, pooled to ``(B, D)`` by :func:`pooled_tap` and averaged over ``tta``, in
            place of probabilities; a clip's output is then its windows' mean (``aggregation``
            is not used). Needs a model with the model contract (an ``AudioClassifier``).
        workers: Batches in flight at once in :meth:`predict_files`, each in a thread of its
            own with ``torch.get_num_threads() // workers`` intra-op threads while it runs
            (the decoding stays in the caller's thread). None: 2 for a torch model on a CPU
            with two or more threads, else 1. Two forward passes side by side keep a CPU's
            cores busier than one pass split across them, and decoding fits between them.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        windows: WindowSettings,
        batch_size: int = 256,
        tta: TimeShiftTTA | None = None,
        aggregation: Aggregation = "mean",
        device: str = "auto",
        block_sec: float = 60.0,
        precision: Precision = "auto",
        tap: str | None = None,
        workers: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; use {', '.join(AGGREGATIONS)}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        self.model = model
        self.windows = windows
        self.batch_size = batch_size
        self.tta = tta
        self.aggregation = aggregation
        self.block_sec = block_sec
        self.precision = PrecisionChoice(precision, self.device, isinstance(model, torch.nn.Module))
        self.tap = tap
        if workers is None:  # a torch model on a CPU with two or more threads: two workers
            on_cpu = self.device.type == "cpu" and isinstance(model, torch.nn.Module)
            workers = 2 if on_cpu and torch.get_num_threads() >= 2 else 1
        self.workers = workers

    @torch.inference_mode()
    def predict_windows(self, windows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Probabilities ``(N, C)`` (with ``tap``: embeddings ``(N, D)``) of windows
        ``(N, window)``, in batches."""
        out = [
            self._forward(batch.to(self.device))
            for batch in torch.as_tensor(windows).split(self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, 0)

    def _forward(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One batch's probabilities (or tap) on the CPU, in ``dtype`` (None: the chosen
        precision, trying bf16 beside fp32 while ``auto`` has not decided)."""
        choice = self.precision
        if dtype is None and not choice.decided:
            # only the windows the trial still needs run twice; the rest of the batch runs in
            # whatever the trial decides (or goes on with it, if silent windows left it short)
            trial, rest = x[: choice.windows_needed], x[choice.windows_needed :]
            fp32 = self._forward(trial, torch.float32)
            audible = trial.abs().amax(-1).cpu() >= SILENT_PEAK
            choice.observe(fp32, self._forward(trial, torch.bfloat16), audible)
            return torch.cat([fp32, self._forward(rest)]) if len(rest) else fp32
        dtype = dtype or choice.dtype or torch.float32
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            if self.tap is None:
                return window_probs(self.model, x, self.tta).cpu()
            return window_embeddings(self.model, x, self.tta, self.tap).cpu()

    def predict_waveform(self, waveform: np.ndarray, clip_id: str = "") -> ClipPrediction:
        """One clip's prediction from a mono waveform at the model's rate."""
        w = self.windows
        parts = list(cut_windows([np.asarray(waveform, np.float32)], w.window, w.hop, w.short_clip))
        if not parts:
            return self._failed(clip_id, "", "holds no audio samples")
        starts = np.concatenate([s for s, _ in parts])
        probs = self.predict_windows(np.concatenate([x for _, x in parts]))
        prediction = self._finish(clip_id, "", probs, torch.from_numpy(starts), len(waveform))
        prediction.warning = self._doubtful(len(waveform), float(np.abs(waveform).max()))
        return prediction

    def _doubtful(self, num_samples: int, peak: float) -> str | None:
        """Why a clip's prediction means little (silent or very short), else None."""
        if peak < SILENT_PEAK:
            return f"silent (peak {peak:.2g}, below -90 dBFS): its prediction means little"
        if num_samples < SHORT_CLIP_SEC * self.windows.sample_rate:
            return (
                f"only {num_samples} sample(s), shorter than {SHORT_CLIP_SEC * 1000:.0f} ms: "
                f"its prediction means little"
            )
        return None

    def predict_files(
        self,
        files: Iterable[tuple[str, str | Path]],
        decode: Callable[[Path, int, float], Iterable[np.ndarray]] | None = None,
        background: bool | None = None,
    ) -> Iterator[ClipPrediction]:
        """Predictions of ``(clip_id, path)`` files, in order; an unreadable file yields one
        with ``error`` set instead of stopping the others.

        Files are decoded block by block (``decode(path, sample_rate, block_sec)``, by default
        :func:`audio_cls.io.iter_audio`), and windows of consecutive files share batches.
        With ``background`` (default: when the model runs on a GPU) decoding runs in a thread
        while the model computes; on a CPU the model's own threads already fill the cores,
        and a decoding thread beside them only makes both wait for each other.
        """
        if decode is None:
            from audio_cls.io import iter_audio

            decode = iter_audio
        items = self._decoded(files, decode)
        if background if background is not None else self.device.type != "cpu":
            items = _in_background(items)
        clips: OrderedDict[int, _OpenClip] = OrderedDict()
        batch: list[tuple[int, int, np.ndarray]] = []  # (clip key, offset in block, windows)
        queued = 0
        key = -1
        with _Batches(self, clips) as batches:
            for item in items:
                kind = item[0]
                if kind == "open":
                    key += 1
                    clips[key] = _OpenClip(item[1], item[2])
                elif kind == "windows":
                    clip = clips[key]
                    clip.starts.append(item[1])
                    clip.pending += len(item[1])
                    batch.append((key, 0, item[2]))
                    queued += len(item[1])
                    if queued >= self.batch_size:
                        queued = self._run(batch, batches, full_only=True)
                else:
                    clip = clips[key]
                    clip.ended, clip.num_samples, clip.error, clip.peak = True, *item[1:]
                yield from self._ready(clips)
            self._run(batch, batches, full_only=False)
            batches.drain()
        yield from self._ready(clips)

    def _decoded(
        self,
        files: Iterable[tuple[str, str | Path]],
        decode: Callable[[Path, int, float], Iterable[np.ndarray]],
    ) -> Iterator[tuple]:
        """``("open", id, path)``, ``("windows", starts, windows)``..., ``("end", n, error)``
        per file."""
        w = self.windows
        for clip_id, path in files:
            # a name that is not valid UTF-8 must still print and go into a UTF-8 report
            yield ("open", clip_id, printable_path(path))
            counter = [0, 0.0]
            try:
                blocks = _counted(decode(Path(path), w.sample_rate, self.block_sec), counter)
                for block_starts, x in cut_windows(blocks, w.window, w.hop, w.short_clip):
                    yield ("windows", block_starts, x)
                error = None if counter[0] else "holds no audio samples"
            except Exception as err:  # one bad file must not cost the others
                error = str(err)
            yield ("end", int(counter[0]), error, counter[1])

    def _run(
        self, batch: list[tuple[int, int, np.ndarray]], batches: _Batches, full_only: bool
    ) -> int:
        """Send queued windows to the model in batches (only whole batches with
        ``full_only``); returns how many windows stay queued."""
        while batch:
            total = sum(len(x) - off for _, off, x in batch)
            if full_only and total < self.batch_size:
                return total
            take, parts, owners = self.batch_size, [], []
            while batch and take:
                k, off, x = batch[0]
                n = min(take, len(x) - off)
                parts.append(x[off : off + n])
                owners.append((k, n))
                take -= n
                if off + n == len(x):
                    batch.pop(0)
                else:
                    batch[0] = (k, off + n, x)
            windows = batches.buffer(self.batch_size - take)
            np.concatenate(parts, out=windows)
            batches.submit(windows, owners)
        return 0

    def _ready(self, clips: OrderedDict[int, _OpenClip]) -> Iterator[ClipPrediction]:
        """Finished clips at the front of the queue, in input order."""
        while clips:
            k, clip = next(iter(clips.items()))
            if not clip.ended or clip.pending:
                return
            del clips[k]
            if clip.error is not None:
                yield self._failed(clip.clip_id, clip.path, clip.error)
                continue
            probs = torch.cat(clip.probs)
            starts = torch.from_numpy(np.concatenate(clip.starts))
            prediction = self._finish(clip.clip_id, clip.path, probs, starts, clip.num_samples)
            prediction.warning = self._doubtful(clip.num_samples, clip.peak)
            yield prediction

    def _finish(
        self, clip_id: str, path: str, probs: torch.Tensor, starts: torch.Tensor, n: int
    ) -> ClipPrediction:
        if not torch.isfinite(probs).all():  # never a confident label from NaN
            bad = int((~torch.isfinite(probs).all(1)).sum())
            return self._failed(
                clip_id,
                path,
                f"the model's output is not finite for {bad} of its {len(probs)} window(s): "
                f"check the file for huge or corrupt samples",
            )
        index = torch.zeros(len(probs), dtype=torch.long)
        method = self.aggregation if self.tap is None else "mean"
        clip_probs = aggregate_clips(probs, index, 1, method)[0]
        return ClipPrediction(clip_id, path, clip_probs, probs, starts, n)

    @staticmethod
    def _failed(clip_id: str, path: str, reason: str) -> ClipPrediction:
        empty = torch.zeros(0)
        return ClipPrediction(clip_id, path, empty, empty, empty.long(), 0, reason)


def collect(
    predictions: Sequence[ClipPrediction], num_classes: int, targets: Sequence[int] | None = None
) -> ClipResults:
    """Clip predictions -> :class:`ClipResults` for the report writers."""
    good = [p for p in predictions if p.error is None]
    probs = torch.zeros(len(predictions), num_classes)
    seg_probs, seg_index, seg_starts = [], [], []
    for i, p in enumerate(predictions):
        if p.error is None:
            probs[i] = p.probs
            seg_probs.append(p.window_probs)
            seg_index.append(torch.full((len(p.window_probs),), i, dtype=torch.long))
            seg_starts.append(p.starts)
    return ClipResults(
        clip_ids=[p.clip_id for p in predictions],
        paths=[p.path for p in predictions],
        probs=probs,
        targets=torch.tensor(list(targets) if targets is not None else [-1] * len(predictions)),
        segment_probs=torch.cat(seg_probs) if good else torch.zeros(0, num_classes),
        segment_clip_index=torch.cat(seg_index) if good else torch.zeros(0, dtype=torch.long),
        segment_starts=torch.cat(seg_starts) if good else torch.zeros(0, dtype=torch.long),
        errors={p.clip_id: p.error for p in predictions if p.error is not None},
        warnings={p.clip_id: p.warning for p in predictions if p.warning is not None},
    )
