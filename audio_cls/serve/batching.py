"""Dynamic batching: windows of concurrent requests share the model's forward passes.

Worker threads (one by default; with more, each has its share of the intra-op threads) run the
model. A request hands its windows to :meth:`DynamicBatcher.submit` and gets a future of their
probabilities; a free worker waits for the first pending window, then at most ``max_wait_ms``
for more, fills a batch of up to ``max_batch`` windows (round robin over the waiting requests,
so a long upload does not hold back short ones), runs :meth:`Predictor.predict_windows` once
and hands each request its rows. A request larger than a batch spans several, possibly in
different workers.

Nothing here imports FastAPI: the batcher is plain threads and futures, usable by any front.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from audio_cls.inference import Predictor

__all__ = ["BatcherBusyError", "BatcherStats", "DynamicBatcher"]

log = logging.getLogger(__name__)


class BatcherBusyError(RuntimeError):
    """Too many windows are waiting; the caller should retry later (HTTP 503)."""


@dataclass
class BatcherStats:
    """Counters since the batcher started.

    Attributes:
        batches: Forward passes run.
        windows: Windows predicted.
        requests: Submissions resolved (with a result or an error).
        busy_sec: Seconds spent in forward passes.
    """

    batches: int = 0
    windows: int = 0
    requests: int = 0
    busy_sec: float = 0.0

    def as_dict(self) -> dict[str, float]:
        mean = self.windows / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "windows": self.windows,
            "requests": self.requests,
            "mean_batch": round(mean, 2),
            "busy_sec": round(self.busy_sec, 3),
        }


@dataclass(eq=False)  # identity: jobs are found in the queue by who they are
class _Job:
    windows: np.ndarray  # (n, window)
    future: Future
    taken: int = 0  # windows handed to a batch so far
    parts: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (offset, probs)
    done: int = 0  # windows predicted so far

    @property
    def left(self) -> int:
        return len(self.windows) - self.taken


class DynamicBatcher:
    """Batches the windows of concurrent requests into shared forward passes.

    Args:
        predictor: The loaded model; only the worker threads call it.
        max_batch: Most windows per forward pass.
        max_wait_ms: Longest wait for more windows once one is pending.
        max_pending: Most windows waiting at once; beyond it :meth:`submit` raises
            :class:`BatcherBusyError` (a lone request larger than this is still accepted).
        workers: Forward passes at once, each in a thread of its own; the process's intra-op
            threads are split among them while the batcher runs. One keeps a window's latency
            lowest (every thread on it); two can deliver more where one pass leaves cores idle.
    """

    def __init__(
        self,
        predictor: Predictor,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        max_pending: int = 8192,
        workers: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_pending = max_pending
        self.stats = BatcherStats()
        self._jobs: deque[_Job] = deque()
        self._pending = 0  # windows not yet handed to a batch
        self._cond = threading.Condition()
        self._closed = False
        self._delivering = threading.Lock()  # workers finish parts of the same request
        self._trial = threading.Lock()  # the precision trial runs one batch at a time
        self.workers = workers
        self._threads_before = torch.get_num_threads()
        if self.workers > 1:
            torch.set_num_threads(max(1, self._threads_before // self.workers))
        self._threads = [
            threading.Thread(target=self._work, name=f"audio-cls-batcher-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        """Windows waiting for a batch."""
        return self._pending

    def submit(self, windows: np.ndarray) -> Future:
        """Queue windows ``(n, window)``; the future gives their probabilities ``(n, C)``.

        Raises:
            BatcherBusyError: ``max_pending`` windows are already waiting.
            RuntimeError: The batcher is closed.
        """
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        future: Future = Future()
        if len(windows) == 0:
            future.set_result(torch.zeros(0, 0))
            return future
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._pending and self._pending + len(windows) > self.max_pending:
                raise BatcherBusyError(
                    f"{self._pending} windows are already waiting for the model; retry shortly"
                )
            self._jobs.append(_Job(windows, future))
            self._pending += len(windows)
            self._cond.notify()
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; requests still waiting fail with ``RuntimeError``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        if self.workers > 1:
            torch.set_num_threads(self._threads_before)
        with self._cond:
            for job in self._jobs:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the server is shutting down"))
            self._jobs.clear()
            self._pending = 0

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                # once something waits, give others max_wait to join the batch
                deadline = time.monotonic() + self.max_wait
                while self._pending < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed:
                    return
                batch = self._take()
            self._run(batch)

    def _take(self) -> list[tuple[_Job, int, int]]:
        """Up to ``max_batch`` windows as ``(job, start, count)``, shared round robin."""
        batch: list[tuple[_Job, int, int]] = []
        room = self.max_batch
        while room and self._jobs:
            share = max(1, room // len(self._jobs))
            for job in list(self._jobs):
                n = min(share, job.left, room)
                if n:
                    batch.append((job, job.taken, n))
                    job.taken += n
                    room -= n
                    self._pending -= n
                if not job.left:
                    self._jobs.remove(job)
                if not room:
                    break
        return batch

    def _predict(self, windows: np.ndarray) -> torch.Tensor:
        precision = getattr(self.predictor, "precision", None)
        if precision is not None and not precision.decided:
            with self._trial:
                return self.predictor.predict_windows(windows)
        return self.predictor.predict_windows(windows)

    def _run(self, batch: list[tuple[_Job, int, int]]) -> None:
        started = time.perf_counter()
        try:
            probs = self._predict(np.concatenate([job.windows[s : s + n] for job, s, n in batch]))
        except Exception as err:  # one bad request must not fail its neighbours
            self._run_alone(batch, err)
            return
        finally:
            with self._delivering:
                self.stats.busy_sec += time.perf_counter() - started
        with self._delivering:
            self.stats.batches += 1
            i = 0
            for job, start, n in batch:
                self._deliver(job, start, probs[i : i + n])
                i += n

    def _run_alone(self, batch: list[tuple[_Job, int, int]], err: Exception) -> None:
        """After a failed batch, each request's part again on its own: only the culprit fails."""
        if len({id(job) for job, _, _ in batch}) == 1:
            self._fail(batch[0][0], err)
            return
        for job, start, n in batch:
            if job.future.done():
                continue
            try:
                probs = self._predict(job.windows[start : start + n])
            except Exception as own:
                self._fail(job, own)
            else:
                with self._delivering:
                    self.stats.batches += 1
                    self._deliver(job, start, probs)

    def _deliver(self, job: _Job, start: int, probs: torch.Tensor) -> None:
        """Hand a request its rows (under ``_delivering``)."""
        if job.future.done():  # failed earlier in another batch
            return
        job.parts.append((start, probs))
        job.done += len(probs)
        self.stats.windows += len(probs)
        if job.done == len(job.windows):
            job.parts.sort(key=lambda part: part[0])
            self.stats.requests += 1
            job.future.set_result(torch.cat([p for _, p in job.parts]))

    def _fail(self, job: _Job, err: Exception) -> None:
        log.warning("a request's windows failed in the model: %s", err)
        with self._cond:  # drop what is still queued of it
            if job in self._jobs:
                self._pending -= job.left
                self._jobs.remove(job)
        with self._delivering:
            if not job.future.done():
                self.stats.requests += 1
                job.future.set_exception(err)
