"""``audio-cls serve``: a checkpoint behind HTTP, a web page and a WebSocket stream.

- :mod:`audio_cls.serve.app`: the FastAPI app (:func:`~audio_cls.serve.app.create_app`);
- :mod:`audio_cls.serve.batching`: the dynamic batcher that shares forward passes between
  concurrent requests;
- :mod:`audio_cls.serve.audio`: request bodies (uploads, raw PCM) -> waveforms;
- :mod:`audio_cls.serve.streaming`: a live stream -> the model's windows;
- ``static/``: the page at ``/`` (plain HTML, JS and CSS; no build step, no CDN).

The package needs the ``serve`` extra; importing it without FastAPI says how to install it,
while ``import audio_cls`` never imports FastAPI at all.
"""

from importlib.util import find_spec

from audio_cls.extras import require

# fail here, with the extra to install, rather than on the first FastAPI name in a submodule
require("fastapi", "serve", "audio-cls serve")
# python-multipart's module was renamed; older releases have only the old name
require(
    "python_multipart" if find_spec("python_multipart") else "multipart",
    "serve",
    "audio-cls serve (multipart uploads)",
)
