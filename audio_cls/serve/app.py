"""The FastAPI app of ``audio-cls serve``: REST predictions, a web page and a live stream.

Routes:

- ``POST /predict``: an audio file as multipart field ``file``, or raw little-endian PCM as
  ``application/octet-stream`` with ``?sample_rate=&format=f32le|s16le``; answers the top
  classes, every class's probability and (unless ``?timeline=false``) each window's label.
- ``WS /stream?sample_rate=``: binary float32 chunks in, one JSON message per window out.
- ``GET /health`` (200 once the model is loaded, 503 before), ``GET /info``, ``GET /docs``.
- ``GET /``: the page (upload or record, top classes, timeline), plain files from ``static/``.

The checkpoint loads in a thread after the server starts, so ``/health`` can say ``loading``.
Every window of every request goes through one :class:`DynamicBatcher`; a refused request gets
a 4xx with ``{"detail": "<what was wrong and what to send>"}`` and touches nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

import audio_cls
from audio_cls.inference import (
    AGGREGATIONS,
    PRECISIONS,
    Predictor,
    WindowSettings,
    aggregate_clips,
    cut_windows,
)
from audio_cls.serve.audio import (
    PCM_FORMATS,
    RequestError,
    check_sample_rate,
    decode_pcm,
    decode_upload,
)
from audio_cls.serve.batching import BatcherBusyError, DynamicBatcher
from audio_cls.serve.streaming import StreamWindows

__all__ = ["ServeSettings", "create_app"]

# uvicorn's logger: its handler shows these lines beside uvicorn's own
log = logging.getLogger("uvicorn.error")

#: A checkpoint path, or a callable returning ``(model, section)`` as ``load_classifier`` does.
ModelSource = str | Path | Callable[[], tuple[torch.nn.Module, dict[str, Any]]]

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_ACCEPTED = (
    "send an audio file as multipart/form-data field 'file' (WAV, FLAC, OGG, MP3), or raw "
    "little-endian PCM as application/octet-stream with ?sample_rate=<Hz>&format=f32le|s16le"
)
_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "example": "<float32 or int16 little-endian samples>",
        },
    },
}
_ERRORS = {
    413: {"description": "Upload larger than --max_upload_mb"},
    415: {"description": "Content type or file type the server cannot decode"},
    422: {"description": "Undecodable or empty audio, bad sample_rate, format or top_k"},
    503: {"description": "The model is still loading, or too many windows are waiting"},
}


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and what it accepts.

    Attributes:
        max_batch: Most windows per forward pass (shared by concurrent requests).
        max_wait_ms: Longest wait for more windows before running a partial batch.
        max_upload_mb: Largest request body in MB (413 beyond it).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ...
        aggregation: Window -> clip aggregation; None: the checkpoint's, else ``mean``.
        max_pending: Most windows waiting for the model before requests get 503.
        precision: The model's arithmetic, as :class:`audio_cls.inference.PrecisionChoice`
            takes it: ``auto`` (bf16 where native and it agrees with fp32), ``32``, ``bf16``.
        workers: Batches in the model at once (:class:`DynamicBatcher`); None: the
            predictor's (:class:`audio_cls.inference.Predictor`: 2 on a multi-threaded CPU).
    """

    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_upload_mb: float = 50.0
    device: str = "auto"
    aggregation: str | None = None
    max_pending: int = 8192
    precision: str = "auto"
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"unknown aggregation {self.aggregation!r}; use {', '.join(AGGREGATIONS)}"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class _Model:
    """The loaded model and what the routes need of it; loads in a background thread."""

    def __init__(self, source: ModelSource, settings: ServeSettings) -> None:
        self.source = source
        self.settings = settings
        self.status = "loading"
        self.error = ""
        self.predictor: Predictor | None = None
        self.batcher: DynamicBatcher | None = None
        self.section: dict[str, Any] = {}
        self.names: list[str] = []
        self.family = ""
        self.load_sec = 0.0

    def load(self, on_error: Callable[[Exception], None] | None) -> None:
        started = time.perf_counter()
        try:
            if callable(self.source):
                model, section = self.source()
            else:
                from audio_cls.models import load_classifier

                model, section = load_classifier(self.source)
            windows = WindowSettings.from_section(section, model.sample_rate)
            segments = section.get("segments") or {}
            aggregation = (
                self.settings.aggregation
                or section.get("aggregation")
                or segments.get("aggregation")
                or "mean"
            )
            predictor = Predictor(
                model,
                windows,
                batch_size=self.settings.max_batch,
                aggregation=aggregation,
                device=self.settings.device,
                precision=self.settings.precision,
            )
            # the first forward allocates; pay for it before the first request does
            predictor.predict_windows(np.zeros((1, windows.window), dtype=np.float32))
            self.section = section
            self.names = [str(n) for n in model.class_names]
            self.family = getattr(model, "registry_name", "") or type(model).__name__
            self.predictor = predictor
            self.batcher = DynamicBatcher(
                predictor,
                self.settings.max_batch,
                self.settings.max_wait_ms,
                self.settings.max_pending,
                self.settings.workers or predictor.workers,
            )
        except Exception as err:  # reported by /health and the serve command, not a traceback
            self.status, self.error = "error", str(err) or type(err).__name__
            log.error("audio-cls serve: the model did not load: %s", self.error)
            if on_error is not None:
                on_error(err)
            return
        self.load_sec = time.perf_counter() - started
        self.status = "ok"
        log.info(
            "audio-cls serve: %s with %d classes ready on %s in %.1f s",
            self.family,
            len(self.names),
            predictor.device,
            self.load_sec,
        )

    def ready(self) -> tuple[Predictor, DynamicBatcher]:
        """The predictor and batcher, or a 503 saying why there are none."""
        if self.status != "ok" or self.predictor is None or self.batcher is None:
            why = "is still loading" if self.status == "loading" else f"failed: {self.error}"
            raise RequestError(503, f"the model {why}; see /health")
        return self.predictor, self.batcher

    def check_top_k(self, top_k: int) -> int:
        if not 1 <= top_k <= len(self.names):
            raise RequestError(
                422,
                f"top_k={top_k} is out of range: give 1 to {len(self.names)} (the model's "
                f"number of classes)",
            )
        return top_k

    def top(self, probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
        p, i = probs.topk(k)
        return [{"label": self.names[int(j)], "prob": round(float(q), 6)} for q, j in zip(p, i)]


def _validation_message(err: RequestValidationError) -> str:
    """FastAPI's error list as one line: ``top_k: Input should be a valid integer (got 'x')``."""
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
        got = f" (got {e['input']!r})" if "input" in e and e["input"] is not None else ""
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}{got}")
    return "; ".join(parts)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 once it passes ``limit`` bytes."""
    too_large = RequestError(
        413,
        f"the upload is larger than the server's limit of {limit / 1024 / 1024:g} MB "
        f"(--max_upload_mb); send a shorter clip or raise the limit",
    )
    declared = request.headers.get("content-length", "")
    chunks, size = [], 0
    over = declared.isdigit() and int(declared) > limit
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            over = True
        if over:
            # read (and drop) a little more, so the client finishes sending and reads the
            # 413 instead of a reset connection; beyond that, stop listening
            if size > 2 * limit + (8 << 20):
                break
            continue
        chunks.append(chunk)
    if over:
        raise too_large
    return b"".join(chunks)


async def _upload(request: Request, body: bytes) -> tuple[str, bytes]:
    """``(filename, bytes)`` of the multipart field ``file``."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as err:  # malformed multipart: the parser's reason
        detail = getattr(err, "detail", None) or str(err) or type(err).__name__
        raise RequestError(
            422, f"the multipart body cannot be parsed ({detail}); {_ACCEPTED}"
        ) from None
    try:
        upload = form.get("file")
        if upload is None:
            raise RequestError(422, f"the multipart body has no field 'file'; {_ACCEPTED}")
        if isinstance(upload, str):
            raise RequestError(422, "the multipart field 'file' must be a file, not a text value")
        return upload.filename or "upload", await upload.read()
    finally:
        await form.close()  # the parser's spooled temporary files


def _windows_of(wav: np.ndarray, w: WindowSettings) -> tuple[np.ndarray, np.ndarray]:
    """``(starts (n,), windows (n, window))`` of a waveform, as the offline predictor cuts it."""
    parts = list(cut_windows([wav], w.window, w.hop, w.short_clip))
    if not parts:
        raise RequestError(422, "the audio holds no samples")
    return np.concatenate([s for s, _ in parts]), np.concatenate([x for _, x in parts])


def _page(name: str) -> bytes:
    return resources.files("audio_cls.serve").joinpath("static", name).read_bytes()


def create_app(
    source: ModelSource,
    settings: ServeSettings | None = None,
    on_load_error: Callable[[Exception], None] | None = None,
) -> FastAPI:
    """The server's app; the model loads in a thread once the app starts.

    Args:
        source: Checkpoint path, or a callable returning ``(model, section)``.
        settings: Batching and upload limits.
        on_load_error: Called (in the loading thread) when the model fails to load, e.g. to
            stop the server.

    Returns:
        A FastAPI app for uvicorn (or any ASGI server).
    """
    settings = settings or ServeSettings()
    state = _Model(source, settings)
    pages = {name: _page(name) for name in _STATIC}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(
            target=state.load, args=(on_load_error,), name="audio-cls-load", daemon=True
        )
        thread.start()
        yield
        if state.batcher is not None:
            state.batcher.close()

    app = FastAPI(
        title="audio-cls",
        version=audio_cls.__version__,
        summary="Audio event classification with an audio-cls checkpoint.",
        lifespan=lifespan,
    )
    app.state.model = state

    @app.exception_handler(RequestError)
    async def _refused(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(err)}, status_code=422)

    @app.get("/health", summary="200 once the model is loaded, 503 before")
    async def health() -> JSONResponse:
        if state.status == "ok":
            return JSONResponse({"status": "ok"})
        body = {"status": state.status}
        if state.error:
            body["detail"] = state.error
        return JSONResponse(body, status_code=503)

    @app.get("/info", summary="The model: classes, sample rate, windows, family, version")
    async def info() -> dict[str, Any]:
        predictor, batcher = state.ready()
        w = predictor.windows
        return {
            "model": state.family,
            "classes": state.names,
            "num_classes": len(state.names),
            "sample_rate": w.sample_rate,
            "window_sec": w.window_sec,
            "hop_sec": w.hop / w.sample_rate,
            "short_clip": w.short_clip,
            "aggregation": predictor.aggregation,
            "frontend": state.section.get("frontend"),
            "features": state.section.get("features"),
            "checkpoint": None if callable(source) else Path(source).name,
            "device": str(predictor.device),
            "precision": predictor.precision.name,
            "torch_threads": torch.get_num_threads(),
            "version": audio_cls.__version__,
            "max_upload_mb": settings.max_upload_mb,
            "batching": {
                "max_batch": batcher.max_batch,
                "max_wait_ms": batcher.max_wait * 1000,
                "workers": batcher.workers,
                **batcher.stats.as_dict(),
            },
        }

    @app.post(
        "/predict",
        summary="Classify an audio file or raw PCM",
        openapi_extra={"requestBody": _PREDICT_BODY},
        responses=_ERRORS,
    )
    async def predict(
        request: Request,
        top_k: int = Query(3, description="Classes listed in 'top' (1 to the model's classes)"),
        timeline: bool = Query(True, description="Include each window's label ('windows')"),
        sample_rate: int | None = Query(None, description="Raw PCM only: its rate in Hz"),
        fmt: str = Query("f32le", alias="format", description="Raw PCM only: f32le or s16le"),
    ) -> dict[str, Any]:
        # the body first, even when refusing: a client still sending reads our answer
        # rather than a reset connection
        body = await _read_body(request, settings.max_upload_bytes)
        predictor, batcher = state.ready()
        state.check_top_k(top_k)
        model_rate = predictor.windows.sample_rate
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("multipart/form-data", "application/octet-stream"):
            raise RequestError(
                415, f"Content-Type {kind or '(none)'!r} is not accepted: {_ACCEPTED}"
            )
        if kind == "multipart/form-data":
            filename, data = await _upload(request, body)
            wav = await asyncio.to_thread(decode_upload, filename, data, model_rate)
        else:
            if fmt not in PCM_FORMATS:  # before decoding, so the message names the option
                raise RequestError(
                    422, f"format={fmt!r} is unknown; use one of {', '.join(PCM_FORMATS)}"
                )
            check_sample_rate(sample_rate)
            wav = await asyncio.to_thread(decode_pcm, body, fmt, sample_rate, model_rate)
        return await _predict_waveform(predictor, batcher, wav, top_k, timeline)

    async def _predict_waveform(
        predictor: Predictor, batcher: DynamicBatcher, wav: np.ndarray, top_k: int, timeline: bool
    ) -> dict[str, Any]:
        w = predictor.windows
        # off the event loop: a long upload is many megabytes of windows
        starts, windows = await asyncio.to_thread(_windows_of, wav, w)
        try:
            probs = await asyncio.wrap_future(batcher.submit(windows))
        except BatcherBusyError as err:
            raise RequestError(503, str(err)) from None
        except Exception as err:  # the model failed on this request's windows, and only them
            log.exception("the model failed on a request")
            raise RequestError(500, f"the model failed on this audio ({err})") from None
        if not torch.isfinite(probs).all():
            raise RequestError(
                422, "the model's output is not finite for this audio; check its samples"
            )
        index = torch.zeros(len(probs), dtype=torch.long)
        clip = aggregate_clips(probs, index, 1, predictor.aggregation)[0]
        out: dict[str, Any] = {
            "top": state.top(clip, top_k),
            "probs": {n: round(float(p), 6) for n, p in zip(state.names, clip)},
            "duration_sec": round(len(wav) / w.sample_rate, 6),
            "model": state.family,
        }
        if timeline:
            best_p, best_i = probs.max(1)
            out["windows"] = [
                {
                    "start": round(int(s) / w.sample_rate, 6),
                    "end": round(min(int(s) + w.window, max(len(wav), 1)) / w.sample_rate, 6),
                    "label": state.names[int(i)],
                    "prob": round(float(p), 6),
                }
                for s, p, i in zip(starts, best_p, best_i)
            ]
        return out

    @app.websocket("/stream")
    async def stream(ws: WebSocket) -> None:
        """Binary float32 chunks in; one ``{start, end, top, latency_ms}`` per window out.

        Send the text ``end`` to get ``{"done": true, "windows": n}`` and a normal close.
        """
        await ws.accept()
        try:
            predictor, batcher = state.ready()
            cutter, top_k = _stream_options(ws, predictor)
        except RequestError as err:
            await _ws_refuse(ws, err.message, 1013 if err.status == 503 else 1008)
            return
        sent = 0
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                arrived = time.perf_counter()
                data, text = message.get("bytes"), message.get("text")
                if text is not None:
                    if text.strip().lower() not in ("end", '{"type": "end"}', '{"type":"end"}'):
                        await _ws_refuse(
                            ws, "send binary float32 PCM chunks, and the text 'end' to finish"
                        )
                        return
                    received = cutter.received / cutter.sample_rate
                    await ws.send_json({"done": True, "windows": sent, "received_sec": received})
                    await ws.close(1000)
                    return
                try:
                    starts, windows = cutter.push_bytes(data or b"")
                except RequestError as err:
                    await _ws_refuse(ws, err.message, 1007)
                    return
                if not len(windows):
                    continue
                try:
                    probs = await asyncio.wrap_future(batcher.submit(windows))
                except BatcherBusyError as err:
                    await _ws_refuse(ws, str(err), 1013)
                    return
                except Exception as err:  # the model failed on these windows
                    log.exception("the model failed on a stream")
                    await _ws_refuse(ws, f"the model failed on this audio ({err})", 1011)
                    return
                for start, p in zip(starts, probs):
                    await ws.send_json(
                        {
                            "start": round(float(start), 6),
                            "end": round(float(start) + cutter.window_sec, 6),
                            "top": state.top(p, top_k),
                            "latency_ms": round((time.perf_counter() - arrived) * 1000, 2),
                        }
                    )
                    sent += 1
        except WebSocketDisconnect:
            return

    def _stream_options(ws: WebSocket, predictor: Predictor) -> tuple[StreamWindows, int]:
        query = ws.query_params
        w = predictor.windows
        values: dict[str, Any] = {}
        for name, cast in (("sample_rate", int), ("hop_sec", float), ("top_k", int)):
            raw = query.get(name)
            if raw is None:
                continue
            try:
                values[name] = cast(raw)
            except ValueError:
                kind = "an integer" if cast is int else "a number"
                raise RequestError(422, f"{name}={raw!r} must be {kind}") from None
        rate = check_sample_rate(values.get("sample_rate"), "a stream of float32 samples")
        hop = values.get("hop_sec", w.hop / w.sample_rate)
        if not 0 < hop <= 3600:
            raise RequestError(422, f"hop_sec={hop} must be > 0 (and at most an hour)")
        top_k = state.check_top_k(values.get("top_k", min(3, len(state.names))))
        return StreamWindows(rate, w.sample_rate, w.window_sec, hop), top_k

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(pages["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in _STATIC or name == "index.html":
            raise RequestError(404, f"no such file: /static/{name}")
        return Response(pages[name], media_type=_STATIC[name])

    return app


async def _ws_refuse(ws: WebSocket, message: str, code: int = 1003) -> None:
    """Tell the client why in a JSON message, then close with ``code``."""
    with contextlib.suppress(Exception):  # the client may be gone already
        await ws.send_text(json.dumps({"error": message}))
        # a close reason may hold 123 bytes at most
        await ws.close(code, reason=message.encode()[:120].decode(errors="ignore"))
