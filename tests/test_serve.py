"""``audio-cls serve`` over real HTTP and WebSocket on loopback: answers equal the offline
predictor's, every bad request gets a clear 4xx and costs its neighbours nothing, windows of
concurrent requests share batches, and the stream client prints one line per window."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")

from audio_cls.cli import main  # noqa: E402
from audio_cls.commands import UsageError  # noqa: E402
from audio_cls.commands.serve import serve_in_thread  # noqa: E402
from audio_cls.inference import Predictor, WindowSettings, cut_windows  # noqa: E402
from audio_cls.models import load_classifier  # noqa: E402
from audio_cls.models.base import CheckpointMismatchError  # noqa: E402
from audio_cls.serve.app import ServeSettings, create_app  # noqa: E402
from audio_cls.serve.batching import DynamicBatcher  # noqa: E402
from audio_cls.serve.streaming import StreamWindows  # noqa: E402
from tests.conftest import save_tiny_checkpoint  # noqa: E402

SR = 16000
NAMES = ["dog", "rain", "siren"]
UPLOAD_MB = 1.0
OVERSIZE = b"\0" * (2 * 2**20)  # twice the server's upload limit
HEALTH_TIMEOUT = 60.0  # seconds a test waits for the model to load


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny MelCNN checkpoint with 0.5 s windows every 0.25 s, as `fit` writes it."""
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.ckpt", NAMES)
    return path


@pytest.fixture(scope="module")
def offline(checkpoint) -> Predictor:
    """The same checkpoint through the inference core, without any server."""
    model, section = load_classifier(checkpoint)
    return Predictor(
        model, WindowSettings.from_section(section, model.sample_rate), device="cpu", precision="32"
    )


def wait_healthy(url: str, timeout: float = HEALTH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not become healthy within {timeout} s")


@pytest.fixture(scope="module")
def server(checkpoint):
    """The app on a free loopback port; max_wait 50 ms so concurrent requests share batches;
    fp32, so that answers equal the offline predictor's to the last digit."""
    settings = ServeSettings(max_wait_ms=50, max_upload_mb=UPLOAD_MB, precision="32")
    app = create_app(checkpoint, settings)
    with serve_in_thread(app) as url:
        wait_healthy(url)
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def tone(seconds: float, freq: float, sr: int = SR, noise: float = 0.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    x = 0.4 * np.sin(2 * np.pi * freq * t) + noise * np.random.default_rng(0).standard_normal(
        len(t)
    )
    return x.astype(np.float32)


def wav_bytes(x: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str = "FLOAT") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def upload(c, data: bytes, name: str = "clip.wav", query: str = ""):
    return c.post(f"/predict{query}", files={"file": (name, data, "application/octet-stream")})


def raw(c, data: bytes, query: str, content_type: str | None = "application/octet-stream"):
    headers = {"content-type": content_type} if content_type else {}
    return c.post(f"/predict{query}", content=data, headers=headers)


def probs_of(answer: dict) -> np.ndarray:
    return np.array([answer["probs"][n] for n in NAMES])


# ---------------------------------------------------------------------------------- imports


def test_importing_audio_cls_imports_no_server_package():
    code = (
        "import sys, audio_cls, audio_cls.cli, audio_cls.commands.serve, "
        "audio_cls.commands.stream\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} "
        "& {'fastapi', 'starlette', 'uvicorn', 'websockets'})\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------------- health, info


def test_health_is_503_until_the_model_is_loaded(checkpoint):
    release = threading.Event()

    def slow_loader():
        assert release.wait(30), "the test never released the loader"
        return load_classifier(checkpoint)

    with serve_in_thread(create_app(slow_loader)) as url:
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        early = httpx.post(f"{url}/predict", content=b"", timeout=10)
        assert early.status_code == 503 and "loading" in early.json()["detail"]
        assert httpx.get(f"{url}/info", timeout=10).status_code == 503
        release.set()
        wait_healthy(url)
        assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}


def test_a_checkpoint_that_fails_to_load_is_reported(tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    failures: list[Exception] = []
    with serve_in_thread(create_app(broken, on_load_error=failures.append)) as url:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while not failures and time.monotonic() < deadline:
            time.sleep(0.05)
        health = httpx.get(f"{url}/health", timeout=10)
    assert failures and "not a readable audio-cls checkpoint" in str(failures[0])
    assert health.status_code == 503 and health.json()["status"] == "error"
    assert "broken.ckpt" in health.json()["detail"]


def test_info_and_docs(client):
    info = client.get("/info").json()
    assert info["classes"] == NAMES and info["num_classes"] == 3
    assert info["sample_rate"] == SR and info["window_sec"] == 0.5 and info["hop_sec"] == 0.25
    assert info["model"] == "mel_cnn" and info["aggregation"] == "mean"
    assert info["version"] and info["batching"]["max_batch"] == 64
    assert info["precision"] == "32"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(body)


# ---------------------------------------------------------------------------------- predictions


def test_upload_matches_the_offline_predictor(client, offline):
    x = tone(1.3, 500, noise=0.05)
    answer = upload(client, wav_bytes(x), query="?top_k=2")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = offline.predict_waveform(x)
    np.testing.assert_allclose(probs_of(body), expected.probs.numpy(), atol=1e-5)
    assert body["model"] == "mel_cnn" and body["duration_sec"] == pytest.approx(1.3)
    best = np.argsort(-expected.probs.numpy())[:2]
    assert [t["label"] for t in body["top"]] == [NAMES[i] for i in best]
    # windows: every 0.25 s, plus one ending at the clip's end (1.3 s)
    starts = [w["start"] for w in body["windows"]]
    assert starts == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.8])
    assert body["windows"][-1]["end"] == pytest.approx(1.3)
    for w, p in zip(body["windows"], expected.window_probs):
        assert w["label"] == NAMES[int(p.argmax())] and w["prob"] == pytest.approx(float(p.max()))
    no_timeline = upload(client, wav_bytes(x), query="?timeline=false").json()
    assert "windows" not in no_timeline and len(no_timeline["top"]) == 3


def test_an_upload_is_sniffed_when_its_name_says_nothing(client):
    x = tone(0.7, 300)
    named = upload(client, wav_bytes(x, fmt="FLAC", subtype="PCM_16"), "clip.flac").json()
    nameless = upload(client, wav_bytes(x, fmt="FLAC", subtype="PCM_16"), "blob").json()
    assert nameless["probs"] == named["probs"]


def test_raw_f32le_and_s16le_give_the_same_answer(client):
    pcm16 = (tone(2.0, 700, noise=0.02) * 32767).round().astype("<i2")
    as_float = (pcm16 / 32768).astype("<f4")
    f32 = raw(client, as_float.tobytes(), f"?sample_rate={SR}&format=f32le")
    s16 = raw(client, pcm16.tobytes(), f"?sample_rate={SR}&format=s16le")
    assert f32.status_code == s16.status_code == 200, (f32.text, s16.text)
    np.testing.assert_allclose(probs_of(f32.json()), probs_of(s16.json()), atol=1e-3)
    assert len(f32.json()["windows"]) == len(s16.json()["windows"]) == 7


def test_raw_pcm_is_resampled_to_the_model_rate(client, offline):
    x8k = tone(1.0, 400, sr=8000)
    answer = raw(client, x8k.tobytes(), "?sample_rate=8000").json()
    assert answer["duration_sec"] == pytest.approx(1.0)
    from torchaudio.functional import resample

    expected = offline.predict_waveform(resample(torch.from_numpy(x8k), 8000, SR).numpy())
    np.testing.assert_allclose(probs_of(answer), expected.probs.numpy(), atol=1e-5)


def _frameless_wav() -> bytes:
    return wav_bytes(np.zeros(0, np.float32), subtype="PCM_16")  # a header, no samples


BAD_REQUESTS = {
    "oversize": (413, "larger than", lambda c: upload(c, OVERSIZE)),
    "oversize raw": (
        413,
        "--max_upload_mb",
        lambda c: raw(c, OVERSIZE, f"?sample_rate={SR}"),
    ),
    "text/plain": (415, "not accepted", lambda c: raw(c, b"hello", "", "text/plain")),
    "no content type": (415, "not accepted", lambda c: raw(c, b"\0\0\0\0", "", None)),
    "not audio": (415, "unsupported file type", lambda c: upload(c, b"hello there", "notes.txt")),
    "undecodable": (422, "clip.wav", lambda c: upload(c, b"RIFF\x00\x00garbage")),
    "empty file": (422, "empty", lambda c: upload(c, b"")),
    "no frames": (422, "no audio samples", lambda c: upload(c, _frameless_wav())),
    "empty raw": (422, "no audio samples", lambda c: raw(c, b"", f"?sample_rate={SR}")),
    "no sample_rate": (422, "sample_rate", lambda c: raw(c, b"\0" * 64, "")),
    "zero sample_rate": (422, "not an audio rate", lambda c: raw(c, b"\0" * 64, "?sample_rate=0")),
    "text sample_rate": (422, "sample_rate", lambda c: raw(c, b"\0" * 64, "?sample_rate=fast")),
    "unknown format": (
        422,
        "format='u8'",
        lambda c: raw(c, b"\0" * 64, f"?sample_rate={SR}&format=u8"),
    ),
    "split sample": (422, "not whole f32le", lambda c: raw(c, b"\0" * 63, f"?sample_rate={SR}")),
    "nan": (
        422,
        "NaN",
        lambda c: raw(c, np.full(800, np.nan, "<f4").tobytes(), f"?sample_rate={SR}"),
    ),
    "top_k 0": (422, "top_k=0", lambda c: upload(c, wav_bytes(tone(0.5, 200)), query="?top_k=0")),
    "top_k 99": (422, "1 to 3", lambda c: upload(c, wav_bytes(tone(0.5, 200)), query="?top_k=99")),
    "top_k text": (422, "top_k", lambda c: upload(c, wav_bytes(tone(0.5, 200)), query="?top_k=a")),
    "no file field": (
        422,
        "no field 'file'",
        lambda c: c.post("/predict", files={"other": ("a.wav", b"x")}),
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_4xx(client, case):
    status, words, send = BAD_REQUESTS[case]
    answer = send(client)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and words in detail
    assert client.get("/health").status_code == 200  # and the server is still up


def test_containers_decode_without_ffmpeg(client, monkeypatch, tmp_path):
    """Containers are decoded in process (PyAV): no ffmpeg program is needed on the server."""
    import shutil

    from tests.test_video import has_encoder, write_media

    monkeypatch.setattr(shutil, "which", lambda name: None)
    webm = has_encoder("libopus") and has_encoder("libvpx")
    name, codecs = ("rec.webm", ("libopus", "libvpx")) if webm else ("rec.mp4", ("aac", "mpeg4"))
    video = write_media(tmp_path / name, 0.6, 48000, 440.0, 1, *codecs)
    named = upload(client, video.read_bytes(), video.name)
    assert named.status_code == 200, named.text
    # a browser's MediaRecorder names its upload "blob": the container is recognised
    nameless = upload(client, video.read_bytes(), "blob")
    assert nameless.status_code == 200 and nameless.json()["probs"] == named.json()["probs"]
    silent = write_media(tmp_path / "silent.mp4", 0.6, audio=None)
    answer = upload(client, silent.read_bytes(), "silent.mp4")
    assert answer.status_code == 422 and "has no audio track" in answer.json()["detail"]
    answer = upload(client, b"\x1aE\xdf\xa3 webm bytes", "recording.webm")
    assert answer.status_code == 422 and "recording.webm" in answer.json()["detail"]


def test_concurrent_requests_good_and_bad_mixed(server):
    """16 at once: the good answers equal their single-request answers, the bad ones fail."""
    clips = [tone(0.6 + 0.15 * i, 200 + 90 * i, noise=0.03) for i in range(10)]
    with httpx.Client(base_url=server, timeout=60) as c:
        alone = [upload(c, wav_bytes(x)).json() for x in clips]
        batches_before = c.get("/info").json()["batching"]["batches"]
    bad = [
        lambda c: upload(c, b"RIFF\x00\x00garbage"),
        lambda c: raw(c, b"\0" * 63, f"?sample_rate={SR}"),
        lambda c: raw(c, np.full(800, np.inf, "<f4").tobytes(), f"?sample_rate={SR}"),
        lambda c: upload(c, wav_bytes(clips[0]), query="?top_k=0"),
        lambda c: raw(c, b"hello", "", "text/plain"),
        lambda c: upload(c, b""),
    ]
    jobs = [lambda c, x=x: upload(c, wav_bytes(x)) for x in clips] + bad
    order = np.random.default_rng(1).permutation(len(jobs))
    barrier = threading.Barrier(len(jobs), timeout=30)

    def run(i: int):
        with httpx.Client(base_url=server, timeout=60) as c:
            barrier.wait()
            return jobs[i](c)

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = dict(zip(order, pool.map(run, order)))
    for i in range(len(clips)):
        assert answers[i].status_code == 200, answers[i].text
        got = answers[i].json()
        np.testing.assert_allclose(probs_of(got), probs_of(alone[i]), atol=1e-5)
        assert len(got["windows"]) == len(alone[i]["windows"])
        for a, b in zip(got["windows"], alone[i]["windows"]):
            assert a["label"] == b["label"] and a["prob"] == pytest.approx(b["prob"], abs=1e-5)
    for i in range(len(clips), len(jobs)):
        assert 400 <= answers[i].status_code < 500 and answers[i].json()["detail"]
    with httpx.Client(base_url=server, timeout=60) as c:
        batching = c.get("/info").json()["batching"]
    # one batch per request at most if nothing were shared
    assert batching["batches"] - batches_before < len(clips)


# ---------------------------------------------------------------------------------- batcher


class _Recording:
    """A stand-in predictor: records batch sizes; windows whose first sample is NaN fail."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay

    def predict_windows(self, windows: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(windows)
        if torch.isnan(x[:, 0]).any():
            raise RuntimeError("poisoned window")
        self.sizes.append(len(x))
        time.sleep(self.delay)
        return torch.stack([x.sum(1), x.mean(1)], 1)


def test_batcher_fills_shared_batches_and_keeps_each_request_in_order():
    fake = _Recording()
    batcher = DynamicBatcher(fake, max_batch=5, max_wait_ms=200)
    try:
        jobs = [np.arange(n * 4, dtype=np.float32).reshape(n, 4) + 100 * n for n in (3, 7, 1)]
        futures = [batcher.submit(j) for j in jobs]
        results = [f.result(timeout=10) for f in futures]
    finally:
        batcher.close()
    for job, got in zip(jobs, results):
        np.testing.assert_allclose(got[:, 0].numpy(), job.sum(1))
    assert fake.sizes == [5, 5, 1]  # 11 windows of 3 requests in full batches
    assert batcher.stats.windows == 11 and batcher.stats.requests == 3


def test_batcher_workers_answer_every_request_and_give_the_threads_back():
    fake = _Recording(delay=0.01)
    threads = torch.get_num_threads()
    default = DynamicBatcher(fake)
    default.close()
    assert default.workers == 1  # the default: every thread on one batch
    batcher = DynamicBatcher(fake, max_batch=4, max_wait_ms=1, workers=2)
    try:
        assert torch.get_num_threads() == max(1, threads // 2)
        jobs = [np.full((n, 3), n, dtype=np.float32) for n in (1, 9, 4, 13, 2, 7)]
        futures = [batcher.submit(j) for j in jobs]
        results = [f.result(timeout=10) for f in futures]
    finally:
        batcher.close()
    assert torch.get_num_threads() == threads
    for job, got in zip(jobs, results):
        np.testing.assert_allclose(got[:, 0].numpy(), job.sum(1))  # each row in its place
    assert batcher.stats.windows == 36 and batcher.stats.requests == 6
    assert sum(fake.sizes) == 36 and max(fake.sizes) <= 4


def test_batcher_fails_only_the_request_that_breaks_the_model():
    fake = _Recording(delay=0.05)
    batcher = DynamicBatcher(fake, max_batch=64, max_wait_ms=100)
    try:
        good = np.ones((4, 8), np.float32)
        poisoned = good.copy()
        poisoned[2, 0] = np.nan
        futures = [batcher.submit(good), batcher.submit(poisoned), batcher.submit(2 * good)]
        assert futures[0].result(timeout=10)[:, 0].tolist() == [8.0] * 4
        with pytest.raises(RuntimeError, match="poisoned"):
            futures[1].result(timeout=10)
        assert futures[2].result(timeout=10)[:, 0].tolist() == [16.0] * 4
    finally:
        batcher.close()


# ---------------------------------------------------------------------------------- streaming


def test_stream_windows_match_cut_windows_whatever_the_chunks():
    x = tone(3.0, 330, noise=0.1)
    cutter = StreamWindows(SR, SR, window_sec=0.5, hop_sec=0.25)
    raw_bytes = x.astype("<f4").tobytes()
    rng = np.random.default_rng(0)
    starts, windows, i = [], [], 0
    while i < len(raw_bytes):
        n = int(rng.integers(1, 9000))  # any size, floats split across chunks
        s, w = cutter.push_bytes(raw_bytes[i : i + n])
        starts += list(s)
        windows += list(w)
        i += n
    expected = [(s, w) for s, w in cut_windows([x], 8000, 4000)]
    exp_starts = np.concatenate([s for s, _ in expected]) / SR
    np.testing.assert_allclose(starts, exp_starts)
    np.testing.assert_array_equal(np.stack(windows), np.concatenate([w for _, w in expected]))


def test_stream_windows_at_another_rate_are_resampled_to_the_models():
    cutter = StreamWindows(8000, SR, window_sec=0.5, hop_sec=0.5)
    x = tone(2.0, 300, sr=8000)
    starts, windows = cutter.push(x[:5000])
    more_starts, more = cutter.push(x[5000:])
    assert list(starts) + list(more_starts) == [0.0, 0.5, 1.0, 1.5]
    assert windows.shape == (1, 8000) and more.shape == (3, 8000)  # 0.5 s at 16 kHz
    from torchaudio.functional import resample

    whole = resample(torch.from_numpy(x[4000:8000]), 8000, SR).numpy()
    np.testing.assert_allclose(more[0], whole, atol=1e-6)


def ws_url(http_url: str, query: str) -> str:
    return http_url.replace("http://", "ws://") + "/stream" + query


def test_websocket_stream_sends_one_message_per_window(server, offline):
    from websockets.sync.client import connect

    x = tone(3.0, 450, noise=0.05)
    data = x.astype("<f4").tobytes()
    messages = []
    with connect(ws_url(server, f"?sample_rate={SR}&top_k=2"), open_timeout=10) as ws:
        for i in range(0, len(data), 4 * 1237 + 2):  # odd sizes, floats split across chunks
            ws.send(data[i : i + 4 * 1237 + 2])
        ws.send("end")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=30))
            messages.append(message)
            if message.get("done"):
                break
    done, windows = messages[-1], messages[:-1]
    assert done == {"done": True, "windows": 11, "received_sec": pytest.approx(3.0)}
    starts = [m["start"] for m in windows]
    assert starts == pytest.approx([0.25 * i for i in range(11)])
    assert all(m["end"] == pytest.approx(m["start"] + 0.5) for m in windows)
    assert all(m["latency_ms"] >= 0 and len(m["top"]) == 2 for m in windows)
    expected = offline.predict_windows(np.stack([x[i * 4000 : i * 4000 + 8000] for i in range(11)]))
    for m, p in zip(windows, expected):
        assert m["top"][0]["label"] == NAMES[int(p.argmax())]
        assert m["top"][0]["prob"] == pytest.approx(float(p.max()), abs=1e-5)


@pytest.mark.parametrize(
    ("query", "send", "words"),
    [
        ("", None, "sample_rate"),
        (f"?sample_rate={SR}&hop_sec=0", None, "hop_sec"),
        (f"?sample_rate={SR}", "hello", "binary float32"),
        (f"?sample_rate={SR}", np.full(16, np.nan, "<f4").tobytes(), "NaN"),
    ],
)
def test_websocket_refusals_say_why(server, query, send, words):
    from websockets.sync.client import connect

    with connect(ws_url(server, query), open_timeout=10) as ws:
        if send is not None:
            ws.send(send)
        message = json.loads(ws.recv(timeout=30))
    assert words in message["error"]


def test_stream_verb_prints_each_window(server, tmp_path, capsys, write_tone):
    path = write_tone(tmp_path / "t.wav", sr=22050, seconds=1.5, freq=600)
    options = ["--url", ws_url(server, ""), "--speed", "50", "--hop_sec", "0.5"]
    main(["stream", str(path), *options, "--jsonl"])
    messages = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["start"] for m in messages[:-1]] == pytest.approx([0.0, 0.5, 1.0])
    assert messages[-1] == {"done": True, "windows": 3, "received_sec": pytest.approx(1.5)}
    assert all(m["top"][0]["label"] in NAMES for m in messages[:-1])
    main(["stream", str(path), *options])  # the table: one row per window, then a summary
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1] == "done: 3 windows over 1.50 s"
    assert lines[1].split()[:3] == ["0.50", "-", "1.00"] and lines[1].split()[4] in NAMES


def test_stream_verb_refuses_a_server_that_is_not_there(tmp_path, write_tone):
    path = write_tone(tmp_path / "t.wav")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing listens on it
    with pytest.raises(UsageError, match="is `audio-cls serve` running"):
        main(["stream", str(path), "--url", f"ws://127.0.0.1:{port}/stream"])


# ---------------------------------------------------------------------------------- the verb


def test_serve_verb_option_errors(checkpoint, tmp_path):
    with pytest.raises(UsageError, match="checkpoint not found"):
        main(["serve", "--ckpt", str(tmp_path / "no.ckpt")])
    with pytest.raises(UsageError, match="--max_batch must be >= 1"):
        main(["serve", "--ckpt", str(checkpoint), "--max_batch", "0"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
            main(["serve", "--ckpt", str(checkpoint), "--port", str(port)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_verb_end_to_end(checkpoint):
    """The console command serves until interrupted (Ctrl+C), then exits cleanly."""
    port = _free_port()
    cmd = [sys.executable, "-m", "audio_cls.cli", "serve", "--ckpt", str(checkpoint)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=120)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            answer = raw(c, tone(1.0, 300).tobytes(), f"?sample_rate={SR}")
        assert answer.status_code == 200 and answer.json()["top"][0]["label"] in NAMES
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err.decode()
    assert f"http://127.0.0.1:{port}/" in err.decode()


def test_serve_verb_stops_with_the_reason_when_the_checkpoint_is_broken(tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    started = time.monotonic()
    with pytest.raises(CheckpointMismatchError, match=r"broken\.ckpt: not a readable"):
        main(["serve", "--ckpt", str(broken), "--port", str(_free_port())])
    assert time.monotonic() - started < HEALTH_TIMEOUT
