"""``audio-cls stream``: play an audio file to ``audio-cls serve``'s ``/stream`` like a live
microphone, and print the label of each window as the server sends it.

The file is decoded at its own rate (the server resamples), cut into ``chunk_sec`` chunks of
float32 sent one by one with a pause of ``chunk_sec / speed`` between them; the text ``end``
closes the stream once every window has been answered.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import numpy as np

from audio_cls.commands import UsageError
from audio_cls.extras import require

__all__ = ["stream", "stream_waveform"]


def _with_query(url: str, **params: Any) -> str:
    """``url`` with ``params`` added to its query, unless it sets them already."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise UsageError(
            f"--url {url}: use a ws:// or wss:// address, e.g. ws://127.0.0.1:8000/stream"
        )
    query = parse_qs(parts.query)
    for key, value in params.items():
        if value is not None and key not in query:
            query[key] = [str(value)]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


async def _run(
    url: str,
    wav: np.ndarray,
    rate: int,
    chunk_sec: float,
    speed: float,
    show: Any,
) -> list[dict[str, Any]]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    chunk = max(1, round(chunk_sec * rate))
    messages: list[dict[str, Any]] = []

    async def send(ws: Any) -> None:
        for i in range(0, len(wav), chunk):
            await ws.send(wav[i : i + chunk].astype("<f4").tobytes())
            await asyncio.sleep(chunk_sec / speed)  # as fast as a microphone delivers
        await ws.send("end")

    try:
        async with connect(url, open_timeout=10, max_size=2**22) as ws:
            sender = asyncio.create_task(send(ws))
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    if "error" in message:
                        raise UsageError(f"the server refused the stream: {message['error']}")
                    messages.append(message)
                    show(message)
                    if message.get("done"):
                        break
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
    except (OSError, asyncio.TimeoutError) as err:
        raise UsageError(
            f"cannot connect to {url} ({err}); is `audio-cls serve` running there?"
        ) from None
    except ConnectionClosed as err:
        raise UsageError(f"the server closed the stream ({err})") from None
    return messages


def stream_waveform(
    url: str,
    wav: np.ndarray,
    sample_rate: int,
    chunk_sec: float = 0.1,
    speed: float = 1.0,
    hop_sec: float | None = None,
    top_k: int = 3,
    show: Any = None,
) -> list[dict[str, Any]]:
    """Stream a mono float32 waveform to ``url``; returns the server's messages in order
    (one per window, then ``{"done": true, ...}``).

    Args:
        url: The server's stream address, ``ws://host:port/stream``.
        wav: Mono samples.
        sample_rate: Their rate in Hz (sent as ``?sample_rate=``).
        chunk_sec: Seconds of audio per message.
        speed: 1: real time; larger: faster (tests).
        hop_sec: Seconds between windows (None: the checkpoint's hop).
        top_k: Classes per window.
        show: Called with each message as it arrives.
    """
    require("websockets", "serve", "audio-cls stream")
    full = _with_query(url, sample_rate=sample_rate, hop_sec=hop_sec, top_k=top_k)
    duration = len(wav) / sample_rate
    timeout = duration / speed + 30  # the stream's own length, plus the server's work
    run = _run(full, wav, sample_rate, chunk_sec, speed, show or (lambda m: None))
    try:
        return asyncio.run(asyncio.wait_for(run, timeout))
    except asyncio.TimeoutError:
        raise UsageError(f"the server at {url} did not finish within {timeout:.0f} s") from None


def _line(message: dict[str, Any]) -> str:
    if message.get("done"):
        return f"done: {message['windows']} windows over {message['received_sec']:.2f} s"
    top = "  ".join(f"{t['label']} {t['prob']:.3f}" for t in message["top"])
    start, end, latency = message["start"], message["end"], message["latency_ms"]
    return f"{start:7.2f} - {end:7.2f} s  {top}  ({latency:.1f} ms)"


def stream(
    files: list[str],
    url: str = "ws://127.0.0.1:8000/stream",
    speed: float = 1.0,
    chunk_sec: float = 0.1,
    hop_sec: float | None = None,
    top_k: int = 3,
    jsonl: bool = False,
) -> list[dict[str, Any]]:
    """Stream audio files to ``audio-cls serve`` in real time, as a microphone would, and print
    the label of each window as it comes back.

    Args:
        files: Audio files (given as bare words), streamed one after another.
        url: The server's stream endpoint.
        speed: Playback speed: 1 is real time, 10 sends ten times faster.
        chunk_sec: Seconds of audio per message.
        hop_sec: Seconds between windows (default: the checkpoint's hop).
        top_k: Classes printed per window.
        jsonl: Print each message as a JSON line instead of a table row.
    """
    from audio_cls.io import audio_info, load_audio

    if not files:
        raise UsageError("give an audio file to stream: audio-cls stream FILE [--url ...]")
    if not speed > 0:
        raise UsageError(f"--speed must be > 0, got {speed}")
    if not chunk_sec > 0:
        raise UsageError(f"--chunk_sec must be > 0, got {chunk_sec}")
    if top_k < 1:
        raise UsageError(f"--top_k must be >= 1, got {top_k}")
    if hop_sec is not None and not hop_sec > 0:
        raise UsageError(f"--hop_sec must be > 0, got {hop_sec}")
    _with_query(url)  # a bad --url fails before any file is decoded

    def show(message: dict[str, Any]) -> None:
        print(json.dumps(message) if jsonl else _line(message), flush=True)

    everything: list[dict[str, Any]] = []
    for path in files:
        # every file (a video's audio track too) is sent at its own rate; the server resamples
        rate = audio_info(path)[0]
        wav = load_audio(path, rate)
        if len(files) > 1 and not jsonl:
            print(f"== {path}", flush=True)
        started = time.perf_counter()
        everything += stream_waveform(url, wav, rate, chunk_sec, speed, hop_sec, top_k, show)
        if not jsonl:
            print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return everything
