"""Load test of ``audio-cls serve``: concurrent clients, dynamic batching, streaming latency.

    python bench/serve_load.py [--root path/to/ESC-50-layout] [--seconds 30] [--clients 32]

Starts ``audio-cls serve`` in a subprocess on a free loopback port (random MelCNN weights,
10 classes, 0.96 s windows every 0.48 s, unless ``--ckpt``), then for ``--seconds``:

- ``--clients`` concurrent HTTP clients post 5 s WAV clips (from ``--root``'s audio files, or
  synthetic tones when there are none) to ``/predict``, each as soon as its previous answer
  came back;
- one WebSocket client streams audio in real time to ``/stream``.

Then one more real-time stream on the idle server, and two references without a server, in
this process with the same threads and precision: offline ``audio-cls classify`` on the same
clips written as WAV files, 6 copies each (its path: decode, windows, batches of 256), and the
model alone (the same windows through ``Predictor.predict_windows``, the server's batch size,
from the main thread and from a fresh thread; the faster of the two counts).

Prints requests/s, p50/p99 latency, errors, served segments/s and their ratios to offline
``classify`` (the issue's target, >= 0.8) and to the model alone (how much of the model's
throughput the server delivers), the server's mean batch size, and per-window stream latency.
Traffic goes to 127.0.0.1 only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import lightning as L
import numpy as np
import soundfile as sf
import torch

from audio_cls.commands.classify import predict_inputs
from audio_cls.data.segments import fit_length
from audio_cls.inference import Predictor, WindowSettings, cut_windows
from audio_cls.io import AUDIO_EXTENSIONS, load_audio
from audio_cls.models import MelCNN, load_classifier

SR = 16000


def make_checkpoint(folder: Path) -> Path:
    """Random MelCNN weights with ESC-style windows: throughput does not depend on weights."""
    model = MelCNN(num_classes=10, class_names=[f"class{i}" for i in range(10)], sample_rate=SR)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    path = folder / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["audio_cls"]["segments"] = {"sample_rate": SR, "window_sec": 0.96, "hop_sec": 0.48}
    torch.save(ckpt, path)
    return path


def load_clips(root: str | None, count: int, seconds: float) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` clips of ``seconds`` at 16 kHz, and where they came from."""
    files = []
    if root and Path(root).is_dir():
        folder = Path(root) / "audio" if (Path(root) / "audio").is_dir() else Path(root)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    n = round(seconds * SR)
    if files:
        step = max(1, len(files) // count)  # spread over the classes, not the first ones
        clips = [fit_length(load_audio(p, SR), n) for p in files[::step][:count]]
        return clips, f"{len(clips)} clips from {folder}"
    rng = np.random.default_rng(0)
    t = np.arange(n) / SR
    clips = [
        (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(n)).astype(
            np.float32
        )
        for i in range(count)
    ]
    return clips, f"{count} synthetic clips (no audio under --root)"


def wav_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "audio_cls.cli", "serve", "--ckpt", str(ckpt)]
    cmd += ["--port", str(port), "--device", "cpu", "--log_level", "warning"]
    cmd += ["--max_batch", str(args.max_batch), "--max_wait_ms", str(args.max_wait_ms)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not become healthy within 180 s")


async def http_load(
    url: str, bodies: list[bytes], clients: int, seconds: float, max_requests: int
) -> dict:
    """``clients`` concurrent posters for ``seconds`` (or ``max_requests`` in all)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    segments = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker(k: int) -> None:
            nonlocal segments, sent
            i = k
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = bodies[i % len(bodies)]
                i += clients
                t = time.perf_counter()
                try:
                    r = await client.post("/predict", files={"file": ("clip.wav", body)})
                except httpx.HTTPError as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                    continue
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    continue
                latencies.append(time.perf_counter() - t)
                segments += len(r.json()["windows"])

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "segments": segments, "elapsed": elapsed}


async def stream_latency(url: str, wav: np.ndarray, seconds: float) -> list[float]:
    """Stream ``wav`` (looped) in real time for ``seconds``; per-window latency_ms."""
    from websockets.asyncio.client import connect

    chunk = SR // 10
    latencies: list[float] = []
    async with connect(f"{url}?sample_rate={SR}", open_timeout=30) as ws:

        async def send() -> None:
            for i in range(round(seconds * 10)):
                start = (i * chunk) % (len(wav) - chunk)
                await ws.send(wav[start : start + chunk].astype("<f4").tobytes())
                await asyncio.sleep(0.1)
            await ws.send("end")

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message.get("done") or "error" in message:
                    return
                latencies.append(message["latency_ms"])

        sender = asyncio.create_task(send())
        try:
            await asyncio.wait_for(receive(), seconds + 60)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return latencies


async def loaded_phase(http_url: str, ws_url: str, bodies, wav, args) -> tuple[dict, list[float]]:
    load = http_load(http_url, bodies, args.clients, args.seconds, args.max_requests)
    stream = stream_latency(ws_url, wav, max(1.0, args.seconds - 2))
    return tuple(await asyncio.gather(load, stream))


def offline_rates(ckpt: Path, clips: list[np.ndarray], batch: int, seconds: float) -> dict:
    """Segments/s of ``Predictor.predict_windows`` on the clips' windows, no server: called
    from the main thread and from a fresh thread (as the server's batcher calls it); torch's
    CPU kernels can run at quite different speeds in the two."""
    import threading

    model, section = load_classifier(ckpt)
    w = WindowSettings.from_section(section, model.sample_rate)
    predictor = Predictor(model, w, batch_size=batch, device="cpu")
    windows = np.concatenate(
        [x for clip in clips for _, x in cut_windows([clip], w.window, w.hop, w.short_clip)]
    )
    rates: dict[str, float] = {}

    def measure(where: str) -> None:
        predictor.predict_windows(windows[:batch])  # warm-up
        done, started = 0, time.perf_counter()
        for _ in range(1000):  # bounded; stops after `seconds`
            predictor.predict_windows(windows)
            done += len(windows)
            if time.perf_counter() - started > seconds:
                break
        rates[where] = done / (time.perf_counter() - started)

    measure("main thread")
    thread = threading.Thread(target=measure, args=("worker thread",))
    thread.start()
    thread.join()
    return rates


def classify_rate(ckpt: Path, clips: list[np.ndarray], folder: Path, seconds: float) -> float:
    """Segments/s of ``classify``'s path (``predict_inputs``, checkpoint loading included) over
    the clips as WAV files, each written 6 times so that loading weighs as in a run over a few
    hundred files; repeated for about ``seconds`` after one warm-up pass."""
    for i, clip in enumerate(clips * 6):
        sf.write(folder / f"{i:04d}.wav", clip, SR)
    predict_inputs(ckpt, [str(folder)], device="cpu")  # warm-up, and the precision trial
    done, started = 0, time.perf_counter()
    for _ in range(100):  # bounded; stops after `seconds`
        results, _, _ = predict_inputs(ckpt, [str(folder)], device="cpu")
        done += len(results.segment_probs)
        if time.perf_counter() - started > seconds:
            break
    return done / (time.perf_counter() - started)


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    q = np.percentile(values, [50, 99])
    return f"p50 {q[0]:.1f} ms, p99 {q[1]:.1f} ms, max {max(values):.1f} ms ({len(values)} windows)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=None, help="ESC-50-style folder (audio/ inside)")
    parser.add_argument("--ckpt", default=None, help="a checkpoint (default: random MelCNN)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load phase")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--clip-sec", type=float, default=5.0)
    parser.add_argument("--clips", type=int, default=64, help="distinct clips sent")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--workers", type=int, help="the server's batcher workers (its default)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    clips, origin = load_clips(args.root, args.clips, args.clip_sec)
    bodies = [wav_bytes(x) for x in clips]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else make_checkpoint(Path(tmp))
        port = free_port()
        http_url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/stream"
        server = start_server(ckpt, port, args)
        try:
            load, loaded_stream = asyncio.run(
                loaded_phase(http_url, ws_url, bodies, clips[0], args)
            )
            idle_stream = asyncio.run(stream_latency(ws_url, clips[0], 10.0))
            info = httpx.get(f"{http_url}/info", timeout=30).json()
        finally:
            server.terminate()
            server.wait(60)
        offline_by_thread = offline_rates(ckpt, clips, args.max_batch, seconds=10.0)
        wav_folder = Path(tmp) / "clips"
        wav_folder.mkdir()
        classify_sps = classify_rate(ckpt, clips, wav_folder, seconds=10.0)

    lat = np.array(load["latencies"]) * 1000
    n_ok = len(lat)
    served = load["segments"] / load["elapsed"]
    print(f"audio-cls serve under load: {origin}, {args.clip_sec:g} s each, {info['model']}")
    print(
        f"  {args.clients} clients for {load['elapsed']:.1f} s, max_batch {args.max_batch}, "
        f"max_wait {args.max_wait_ms:g} ms, {info['batching']['workers']} batcher workers of "
        f"{info['torch_threads']} torch threads (model alone: 1 x {torch.get_num_threads()}), "
        f"{info['device']}, precision {info['precision']}"
    )
    print(f"  requests:        {n_ok} ok, {n_ok / load['elapsed']:.1f} req/s")
    if n_ok:
        p50, p99 = np.percentile(lat, [50, 99])
        print(f"  latency:         p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"  errors:          {sum(load['errors'].values())} {load['errors'] or ''}".rstrip())
    print(f"  served:          {served:.0f} segments/s")
    print(f"  offline classify: {classify_sps:.0f} segments/s (same clips as WAV files, 6 copies)")
    offline = max(offline_by_thread.values())  # the faster: the ratio errs on the low side
    both = ", ".join(f"{v:.0f} from the {k}" for k, v in offline_by_thread.items())
    print(f"  model alone:     {offline:.0f} segments/s (Predictor.predict_windows: {both})")
    print(f"  served / classify: {served / classify_sps:.2f} (target >= 0.8)")
    print(f"  served / model alone: {served / offline:.2f}")
    batching = info["batching"]
    print(
        f"  batching:        {batching['batches']} batches, mean {batching['mean_batch']:.1f} "
        f"windows, model busy {batching['busy_sec']:.1f} s"
    )
    print(f"  stream, loaded:  {summary(loaded_stream)}")
    print(f"  stream, idle:    {summary(idle_stream)}")


if __name__ == "__main__":
    main()
