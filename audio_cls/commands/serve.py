"""``audio-cls serve``: a checkpoint behind HTTP (FastAPI + uvicorn), with a page and a stream.

The app lives in :mod:`audio_cls.serve.app`; this verb checks its options, binds the address
(loopback unless told otherwise) and runs uvicorn until interrupted. When the checkpoint fails
to load, the server stops and the verb raises the loader's error, a one-line message.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from audio_cls.commands import UsageError
from audio_cls.extras import require
from audio_cls.inference import PRECISIONS, Aggregation, Precision

__all__ = ["serve", "serve_in_thread", "uvicorn_config"]


def _check_port(host: str, port: int) -> None:
    """A clear message now, instead of uvicorn's log line and exit, when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UsageError(
                f"cannot listen on {host}:{port} ({err.strerror}); pick another --port "
                f"(or stop what uses it)"
            ) from None


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "info") -> Any:
    """uvicorn's config for the app: the sans-I/O WebSocket protocol when this uvicorn has it
    (the legacy one warns with websockets >= 14)."""
    uvicorn = require("uvicorn", "serve", "audio-cls serve")
    from uvicorn.config import WS_PROTOCOLS

    ws = "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "auto"
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, ws=ws)


def serve(
    ckpt: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 50.0,
    aggregation: Aggregation | None = None,
    precision: Precision = "auto",
    workers: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve a checkpoint: ``POST /predict``, a web page at ``/``, ``WS /stream``, ``/docs``.

    Concurrent requests share the model's forward passes (dynamic batching). The page can
    record from the microphone only when opened as ``http://localhost`` or over HTTPS.

    Args:
        ckpt: Checkpoint (``.ckpt``) written by ``audio-cls fit``.
        host: Address to listen on; ``0.0.0.0`` exposes the server (without authentication)
            to the network.
        port: TCP port.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        max_batch: Most windows per forward pass, shared by concurrent requests.
        max_wait_ms: Longest wait for more windows before running a partial batch.
        max_upload_mb: Largest request body in MB (413 beyond it).
        aggregation: Window -> clip: ``mean``, ``logit_mean``, ``max`` or ``vote`` (default:
            the checkpoint's, else ``mean``).
        precision: ``auto``: the model under bf16 autocast where the device computes bf16
            natively and it gave fp32's top class on the first 64 windows served, else fp32;
            ``32``: fp32; ``bf16``: bf16 autocast, unchecked. ``/info`` says which runs.
        workers: Batches in the model at once, each in a thread with its share of PyTorch's
            threads (default: 2 on a CPU with two or more threads, else 1, as ``classify``).
            2 serves more requests; 1 gives each window every thread, the lowest latency
            for a lone stream.
        log_level: uvicorn's log level: ``debug``, ``info``, ``warning``, ``error``.
    """
    from pathlib import Path

    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    if max_batch < 1:
        raise UsageError(f"--max_batch must be >= 1, got {max_batch}")
    if max_wait_ms < 0:
        raise UsageError(f"--max_wait_ms must be >= 0, got {max_wait_ms}")
    if not max_upload_mb > 0:
        raise UsageError(f"--max_upload_mb must be > 0, got {max_upload_mb}")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if not Path(ckpt).is_file():
        raise UsageError(f"--ckpt {ckpt}: checkpoint not found (a .ckpt written by audio-cls fit)")
    require("fastapi", "serve", "audio-cls serve")
    require("uvicorn", "serve", "audio-cls serve")
    require("websockets", "serve", "audio-cls serve (WebSocket /stream)")
    from audio_cls.serve.app import ServeSettings, create_app

    _check_port(host, port)
    # The batcher's thread needs the GIL back between the model's ops; at Python's default
    # 5 ms switch interval a thread busy parsing requests keeps it that long each time, and
    # the model ran at a fifth of its speed beside one (629 -> 131 windows/s; 513 at 0.5 ms)
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
    failed: list[Exception] = []
    server: Any = None

    def stop(err: Exception) -> None:
        failed.append(err)
        if server is not None:
            server.should_exit = True

    settings = ServeSettings(
        max_batch,
        max_wait_ms,
        max_upload_mb,
        device,
        aggregation,
        precision=precision,
        workers=workers,
    )
    app = create_app(ckpt, settings, on_load_error=stop)
    server = require("uvicorn", "serve", "audio-cls serve").Server(
        uvicorn_config(app, host, port, log_level)
    )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"audio-cls serve: http://{shown}:{port}/ (page), /docs (API), "
        f"ws://{shown}:{port}/stream (live)",
        file=sys.stderr,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"audio-cls serve: listening on {host}: reachable from other machines, "
            f"without authentication",
            file=sys.stderr,
        )
    # uvicorn re-raises Ctrl+C once it has shut down cleanly: not an error
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if failed:
        raise failed[0]


@contextlib.contextmanager
def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0
) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (tests, benchmarks, notebooks).

    Args:
        app: An ASGI app, e.g. from :func:`audio_cls.serve.app.create_app`.
        host: Address to listen on.
        port: TCP port; 0 picks a free one.
        timeout: Seconds to wait for the server to start, and to stop.

    Yields:
        The server's base URL, ``http://host:port``.
    """
    uvicorn = require("uvicorn", "serve", "audio-cls serve")
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="audio-cls-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port} within {timeout} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
