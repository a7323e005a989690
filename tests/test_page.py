"""The page of ``audio-cls serve`` in a real headless browser: Debian's chromium, driven by
Playwright (its own browser download is never used). Upload a file, record from a (fake)
microphone, and see the same top class and timeline as the API gives."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (it comes with the dev extra)"
)
CHROMIUM = os.environ.get("AUDIO_CLS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"no chromium at {CHROMIUM} (apt-get install chromium, or set AUDIO_CLS_CHROMIUM)",
        allow_module_level=True,
    )

from audio_cls.commands.serve import serve_in_thread  # noqa: E402
from audio_cls.serve.app import create_app  # noqa: E402
from tests.conftest import save_tiny_checkpoint  # noqa: E402

SR = 16000
NAMES = ["dog", "rain", "siren"]
TIMEOUT_MS = 30_000  # every wait in the browser is bounded


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tiny MelCNN checkpoint (0.5 s windows every 0.25 s) served on a free loopback port."""
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.ckpt", NAMES)
    with serve_in_thread(create_app(path)) as url:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the model did not load within 60 s"
            time.sleep(0.05)
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # --no-sandbox: chromium refuses to run as root otherwise; the fake devices give
            # getUserMedia a microphone (a beep) and grant it without a prompt
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
            ],
            timeout=TIMEOUT_MS,
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server)
    page.wait_for_selector("body[data-ready='true']")
    page.errors = errors
    yield page
    page.close()


def test_upload_shows_the_top_class_and_the_timeline(page, server, tmp_path, write_tone):
    clip = write_tone(tmp_path / "tone.wav", seconds=1.3, freq=900)
    with httpx.Client(base_url=server, timeout=60) as c:
        expected = c.post(
            "/predict?top_k=3", files={"file": ("tone.wav", clip.read_bytes())}
        ).json()
    assert "mel_cnn" in page.inner_text("#model")
    page.set_input_files("#file", str(clip))
    page.wait_for_selector("#top li")
    labels = page.locator("#top li .label").all_inner_texts()
    assert labels == [t["label"] for t in expected["top"]]
    shown = page.locator("#top li .prob").first.inner_text()
    assert shown == f"{expected['top'][0]['prob']:.3f}"
    blocks = page.locator("#timeline .window")
    assert blocks.count() == len(expected["windows"]) == 5
    assert blocks.all_inner_texts() == [w["label"] for w in expected["windows"]]
    assert "tone.wav" in page.inner_text("#source")
    assert not page.errors, page.errors


def test_a_bad_file_shows_the_servers_reason(page, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("422: broken.wav:")
    assert page.locator("#top li").count() == 0


def test_recording_from_the_microphone(page):
    page.click("#record")
    page.wait_for_selector("#record.recording")
    page.wait_for_timeout(1200)  # about a second of the fake microphone's beep
    page.click("#record")
    page.wait_for_selector("#top li")
    assert "recording" in page.inner_text("#source")
    assert page.locator("#top li .label").first.inner_text() in NAMES
    assert page.locator("#timeline .window").count() >= 1
