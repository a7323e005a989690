"""Reading published weights: sources, formats, safety and loading into a module."""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import urllib.error
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from audio_cls.extras import MissingExtraError
from audio_cls.nn import weights as W
from audio_cls.nn.weights import (
    LoadReport,
    PretrainedWeightsError,
    fetch_state_dict,
    load_into,
    read_weights,
    resolve_weights,
    weight_format,
)

# ---------------------------------------------------------------------------------------------
# weight_format


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("m.safetensors", "safetensors"),
        ("m.pt", "torch"),
        ("m.pth", "torch"),
        ("pytorch_model.bin", "torch"),
        ("last.ckpt", "torch"),
        ("M.PTH", "torch"),
        ("sound8.npy", "npy"),
        ("vggish.h5", "h5"),
        ("vggish.hdf5", "h5"),
    ],
)
def test_weight_format_by_suffix(name, fmt):
    assert weight_format(Path(name)) == fmt


def test_weight_format_folder_and_unknown(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    with pytest.raises(PretrainedWeightsError, match=r"repo: no \.safetensors file"):
        weight_format(folder)
    (folder / "model.safetensors").write_bytes(b"x")
    assert weight_format(folder) == "safetensors"
    with pytest.raises(PretrainedWeightsError, match=r"notes\.txt: unknown .*'\.txt'") as info:
        weight_format(tmp_path / "notes.txt")
    assert all(s in str(info.value) for s in (".safetensors", ".pth", ".npy", ".h5"))


# ---------------------------------------------------------------------------------------------
# resolve_weights


def test_resolve_local_paths_as_they_are(tmp_path, monkeypatch):
    file = tmp_path / "w.pth"
    file.write_bytes(b"x")
    assert resolve_weights(str(file)) == file
    assert resolve_weights(str(tmp_path)) == tmp_path
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_weights("~/w.pth") == file


def test_resolve_missing_path_is_not_taken_for_a_hub_repo(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("must not ask the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    for source in ("weights/x.pth", "./x.safetensors", "a/b/c"):
        with pytest.raises(PretrainedWeightsError, match=rf"{source!r} not found"):
            resolve_weights(source)


class _FakeDownload:
    """Stands in for ``torch.hub.download_url_to_file``: writes ``payload`` or fails midway."""

    def __init__(self, payload: bytes = b"", fail: bool = False):
        self.payload, self.fail, self.calls = payload, fail, []

    def __call__(self, url, dst, hash_prefix=None, progress=True):
        self.calls.append((url, Path(dst)))
        Path(dst).write_bytes(self.payload[:3] if self.fail else self.payload)
        if self.fail:
            raise urllib.error.URLError("no route to host")


def test_resolve_url_downloads_once_into_the_cache(tmp_path, monkeypatch):
    buf = io.BytesIO()
    torch.save({"w": torch.arange(3.0)}, buf)
    fake = _FakeDownload(buf.getvalue())
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake)
    monkeypatch.setenv("AUDIO_CLS_CACHE", str(tmp_path / "cache"))
    url = "https://example.org/models/cnn%2014.pth?download=1"

    path = resolve_weights(url)
    assert path.name == "cnn 14.pth" and path.parent.parent == tmp_path / "cache" / "weights"
    assert fake.calls[0][0] == url
    assert fake.calls[0][1].parent == path.parent  # written beside it, then renamed
    assert fake.calls[0][1] != path
    assert resolve_weights(url) == path
    assert len(fake.calls) == 1  # the second call reads the cache
    assert sorted(p.name for p in path.parent.iterdir()) == ["cnn 14.pth"]
    torch.testing.assert_close(read_weights(path)["w"], torch.arange(3.0))

    other = resolve_weights("http://example.org/b.npy", cache_dir=tmp_path / "mine")
    assert other.name == "b.npy" and other.parent.parent == tmp_path / "mine"
    assert other.read_bytes() == buf.getvalue()
    # the same file name under another URL is another file
    again = resolve_weights("http://example.org/other/b.npy", cache_dir=tmp_path / "mine")
    assert again != other and len(fake.calls) == 3


def test_resolve_url_failure_leaves_nothing(tmp_path, monkeypatch):
    fake = _FakeDownload(b"0123456789", fail=True)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake)
    cache = tmp_path / "cache"
    with pytest.raises(PretrainedWeightsError) as info:
        resolve_weights("https://example.org/sound8.npy", cache_dir=cache)
    message = str(info.value)
    assert "https://example.org/sound8.npy" in message
    assert "no route to host" in message
    assert "download the file elsewhere and pass its local path" in message
    assert "\n" not in message
    assert list(cache.iterdir()) == []  # no partial file, no final file


def test_resolve_hub_repo(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        (tmp_path / "model.safetensors").write_bytes(b"x")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert resolve_weights("facebook/vjepa2-vitl-fpc64-256") == tmp_path
    assert resolve_weights("hf-hub:owner/model.pth", allow_patterns=["*.pth"]) == tmp_path
    assert calls == [
        ("facebook/vjepa2-vitl-fpc64-256", ["*.safetensors", "*.json"]),
        ("owner/model.pth", ["*.pth"]),
    ]


def test_hub_repo_without_safetensors_gives_its_pytorch_model_bin(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, allow_patterns=None, **kwargs):
        calls.append(allow_patterns)
        if allow_patterns == ["pytorch_model.bin"]:
            (tmp_path / "pytorch_model.bin").write_bytes(b"x")
        else:
            (tmp_path / "config.json").write_text("{}")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert resolve_weights("facebook/wav2vec2-base") == tmp_path / "pytorch_model.bin"
    assert calls == [["*.safetensors", "*.json"], ["pytorch_model.bin"]]


def test_resolve_hub_failure_says_what_to_do(monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kwargs):
        raise OSError("We couldn't connect to the hub.\nCheck your connection.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(PretrainedWeightsError) as info:
        resolve_weights("hf-hub:owner/name")
    message = str(info.value)
    assert message.startswith("could not fetch weights 'hf-hub:owner/name'")
    assert "couldn't connect" in message
    assert message.endswith("download the repo elsewhere and pass its local folder instead")
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# read_weights: formats


def test_read_safetensors_file_and_shards(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file(
        {"b": torch.zeros(3, dtype=torch.int64)}, tmp_path / "model-00002-of-00002.safetensors"
    )
    state = read_weights(tmp_path)
    assert set(state) == {"a", "b"}
    assert state["b"].dtype == torch.int64
    assert set(read_weights(tmp_path / "model-00001-of-00002.safetensors")) == {"a"}

    save_file({"a": torch.ones(2)}, tmp_path / "model.fp16.safetensors")
    with pytest.raises(PretrainedWeightsError, match=r"also occur in another \.safetensors"):
        read_weights(tmp_path)


def test_read_torch_flattens_nested_dicts_and_drops_other_leaves(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": {"enc.w": torch.ones(2, 2), "head": {"b": torch.zeros(3)}},
            "epoch": 7,
            "name": "cnn14",
            "lrs": [0.1, 0.01],
            "hparams": {"n_mels": 64},
        },
        path,
    )
    state = read_weights(path)
    assert set(state) == {"state_dict.enc.w", "state_dict.head.b"}
    torch.testing.assert_close(state["state_dict.enc.w"], torch.ones(2, 2))

    bare = tmp_path / "bias.pt"
    torch.save(torch.arange(4), bare)
    assert list(read_weights(bare)) == ["bias"]


class _RunsCommand:
    """Unpickling it runs a shell command (what a hostile weights file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_read_torch_refuses_objects_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(1), "x": _RunsCommand(marker)}, path)
    with pytest.raises(PretrainedWeightsError) as info:
        read_weights(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable PyTorch weights file")
    assert "refused for safety" in message
    assert "system" in message  # names the refused global
    assert "weights_only" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not marker.exists()


def test_read_npy_dict_of_arrays_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    layers = {
        "conv1": {
            "weights": rng.standard_normal((8, 1, 64, 1)).astype(np.float32),
            "biases": rng.standard_normal(16).astype(np.float32),
            "gamma": np.ones(16, np.float32),
            "beta": np.zeros(16, np.float32),
            "mean": rng.standard_normal(16).astype(np.float32),
            "var": np.ones(16, np.float64),
        },
        "conv2": OrderedDict(weights=np.arange(6, dtype=np.int16).reshape(2, 3)),
        "note": "trained on Flickr",
    }
    path = tmp_path / "sound8.npy"
    np.save(path, layers, allow_pickle=True)
    state = read_weights(path)
    assert set(state) == {f"conv1.{k}" for k in layers["conv1"]} | {"conv2.weights"}
    for key, array in layers["conv1"].items():
        assert state[f"conv1.{key}"].dtype == torch.from_numpy(array).dtype
        np.testing.assert_array_equal(state[f"conv1.{key}"].numpy(), array)
    np.testing.assert_array_equal(state["conv2.weights"].numpy(), layers["conv2"]["weights"])


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as numpy under Python 2 pickled arrays."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_read_npy_written_by_python2_numpy(tmp_path):
    """SoundNet's sound8.npy is a protocol-2 pickle naming ``numpy.core.multiarray``."""
    weights = np.linspace(-1, 1, 300, dtype=np.float32).reshape(3, 100)
    obj = np.empty((), dtype=object)
    obj[()] = {"conv1": {"weights": weights, "biases": np.arange(3.0)}}
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    payload = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct" in payload
    assert pickle.SHORT_BINSTRING in payload and b"_codecs" not in payload
    path = tmp_path / "sound8.npy"
    with path.open("wb") as f:
        header = {"descr": "|O", "fortran_order": False, "shape": ()}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(payload)

    state = read_weights(path)
    assert set(state) == {"conv1.weights", "conv1.biases"}
    np.testing.assert_array_equal(state["conv1.weights"].numpy(), weights)
    np.testing.assert_array_equal(state["conv1.biases"].numpy(), np.arange(3.0))


def test_read_npy_refuses_other_globals_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, {"conv1": {"weights": np.ones(2)}, "x": _RunsCommand(marker)}, allow_pickle=True)
    with pytest.raises(PretrainedWeightsError, match=r"evil\.npy: refused global posix\.system"):
        read_weights(path)
    assert not marker.exists()


def test_read_npy_plain_arrays(tmp_path):
    path = tmp_path / "mel_basis.npy"
    np.save(path, np.arange(12, dtype=">f4").reshape(3, 4))  # big-endian: converted
    state = read_weights(path)
    assert list(state) == ["mel_basis"]
    assert state["mel_basis"].dtype == torch.float32
    np.testing.assert_array_equal(state["mel_basis"].numpy(), np.arange(12.0).reshape(3, 4))
    np.save(tmp_path / "scale.npy", np.float32(0.5))  # 0-d stays 0-d
    assert read_weights(tmp_path / "scale.npy")["scale"].shape == ()


def test_read_h5_keeps_dataset_paths(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "vggish.h5"
    kernel = np.random.default_rng(0).standard_normal((3, 3, 1, 8)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"layer1"]
        f.create_dataset("layer1/conv/layer1/conv/kernel:0", data=kernel)
        f.create_dataset("layer1/conv/layer1/conv/bias:0", data=np.zeros(8, np.float32))
        f.create_dataset("step", data=np.int64(5))
        f.create_dataset("name", data="vggish")  # not numeric: dropped
    state = read_weights(path)
    assert set(state) == {
        "layer1/conv/layer1/conv/kernel:0",
        "layer1/conv/layer1/conv/bias:0",
        "step",
    }
    np.testing.assert_array_equal(state["layer1/conv/layer1/conv/kernel:0"].numpy(), kernel)
    assert state["step"].shape == () and state["step"].item() == 5


def test_read_h5_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "vggish.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(
        MissingExtraError,
        match=r"'h5py', which is not installed: pip install 'audio-cls\[weights\]'",
    ):
        read_weights(path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy_bytes(value, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.pth", b"", r"empty file"),
        ("text.safetensors", b"these are not tensors\n", r"unreadable safetensors file"),
        ("text.pth", b"these are not tensors\n", r"not a readable PyTorch weights file"),
        ("cut.npy", _npy_bytes(np.arange(100.0))[:-40], r"not a readable \.npy .*cut short"),
        ("cut_header.npy", _npy_bytes(np.arange(100.0))[:20], r"not a readable \.npy"),
        ("cut_dict.npy", _npy_bytes({"a": np.ones(50)}, True)[:-30], r"not a readable \.npy"),
        ("text.npy", b"these are not tensors\n", r"not a readable \.npy"),
        ("text.h5", b"these are not tensors\n", r"not a readable HDF5"),
        ("weights.txt", b"1 2 3\n", r"unknown weights format '\.txt'"),
    ],
)
def test_read_broken_files_name_the_file(tmp_path, name, data, reason):
    if name.endswith(".h5"):
        pytest.importorskip("h5py")
    path = _write(tmp_path / name, data)
    with pytest.raises(PretrainedWeightsError, match=reason) as info:
        read_weights(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_read_missing_and_tensorless(tmp_path):
    with pytest.raises(PretrainedWeightsError, match=r"gone\.pth: weights not found"):
        read_weights(tmp_path / "gone.pth")
    torch.save({"epoch": 3, "name": "x"}, tmp_path / "meta.pt")
    with pytest.raises(PretrainedWeightsError, match=r"meta\.pt: no tensors"):
        read_weights(tmp_path / "meta.pt")
    with pytest.raises(PretrainedWeightsError, match=r"only folders of \.safetensors"):
        read_weights(tmp_path, format="torch")


def test_explicit_format_overrides_the_suffix(tmp_path):
    path = tmp_path / "weights.data"
    torch.save({"w": torch.ones(2)}, path)
    assert set(read_weights(path, format="torch")) == {"w"}


def test_fetch_state_dict_reads_any_format(tmp_path):
    path = tmp_path / "sound8.npy"
    np.save(path, {"conv1": {"weights": np.ones(2, np.float32)}}, allow_pickle=True)
    assert set(fetch_state_dict(str(path))) == {"conv1.weights"}


# ---------------------------------------------------------------------------------------------
# load_into


class _Head(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.fc = nn.Linear(8, classes)


class _Net(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        self.head = _Head(classes)


def _checkpoint(classes: int = 3, prefix: str = "", seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = _Net(classes)
    with torch.no_grad():
        net.encoder[1].running_mean.normal_()
    return {prefix + k: v.clone() for k, v in net.state_dict().items()}


def test_load_into_exact_fit():
    net, ckpt = _Net(), _checkpoint()
    report = load_into(net, ckpt)
    assert report == LoadReport(
        loaded=list(net.state_dict()), missing=[], unexpected=[], mismatched=[]
    )
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, ckpt[key])  # buffers too


def test_load_into_rename_prefixes():
    ckpt = _checkpoint(prefix="model.")
    ckpt = {k.replace("model.head.", "classifier."): v for k, v in ckpt.items()}
    ckpt["model.encoder.0.weight_extra"] = torch.zeros(1)
    ckpt["aux.loss_weight"] = torch.ones(1)
    net = _Net()
    report = load_into(
        net,
        ckpt,
        rename=[
            ("model.encoder.0.weight_extra", None),  # first match wins: dropped ...
            ("model.", ""),  # ... before this strips the prefix
            ("classifier.", "head."),
            ("aux.", None),
        ],
    )
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(net.head.fc.weight, ckpt["classifier.fc.weight"])
    torch.testing.assert_close(net.encoder[0].bias, ckpt["model.encoder.0.bias"])

    # a name matching no pair keeps its own
    plain = _checkpoint(seed=2)
    load_into(net, plain, rename=[("model.", "")])
    torch.testing.assert_close(net.encoder[0].weight, plain["encoder.0.weight"])

    with pytest.raises(PretrainedWeightsError, match=r"rename maps both 'a\.encoder"):
        load_into(
            net,
            {"a.encoder.0.bias": torch.ones(8), "b.encoder.0.bias": torch.ones(8)},
            rename=[("a.", ""), ("b.", "")],
        )


def test_load_into_drop_the_classifier():
    net = _Net(classes=10)
    head_before = net.head.fc.weight.detach().clone()
    ckpt = _checkpoint(classes=527)
    report = load_into(net, ckpt, drop=["head.fc."])
    assert report.missing == report.unexpected == report.mismatched == []
    assert not any(k.startswith("head.") for k in report.loaded)
    torch.testing.assert_close(net.head.fc.weight, head_before)
    torch.testing.assert_close(net.encoder[0].weight, ckpt["encoder.0.weight"])


def test_load_into_only_some_layers():
    net = _Net()
    head_before = net.head.fc.weight.detach().clone()
    ckpt = {k: v for k, v in _checkpoint().items() if k.startswith("encoder.0.")}
    ckpt["decoder.proj.weight"] = torch.ones(2, 2)  # outside `only`: ignored, not unexpected
    report = load_into(net, ckpt, only=["encoder.0."])
    assert report == LoadReport(["encoder.0.weight", "encoder.0.bias"], [], [], [])
    torch.testing.assert_close(net.encoder[0].weight, ckpt["encoder.0.weight"])
    torch.testing.assert_close(net.head.fc.weight, head_before)


def test_load_into_strict_lists_what_does_not_fit():
    net = _Net()
    net.head.fc = nn.Linear(2048, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ckpt = _checkpoint()
    ckpt["head.fc.weight"] = torch.zeros(527, 2048)
    del ckpt["encoder.0.bias"]
    for i in range(12):
        ckpt[f"extra.{i:02d}"] = torch.zeros(1)
    with pytest.raises(PretrainedWeightsError) as info:
        load_into(net, ckpt, what="AudioSet weights (cnn14.pth)")
    lines = str(info.value).splitlines()
    assert lines[0].startswith(
        "AudioSet weights (cnn14.pth) do not fit the model: 1 missing, 12 unexpected, 2 mis-shaped"
    )
    assert "strict=False" in lines[0]
    assert all(line.startswith("  ") for line in lines[1:])
    body = "\n".join(lines[1:])
    assert "    encoder.0.bias" in body
    assert "    head.fc.weight: checkpoint (527, 2048) vs model (10, 2048)" in body
    assert "    head.fc.bias: checkpoint (3,) vs model (10,)" in body
    listed = [line for line in lines if line.strip().startswith("extra.")]
    assert listed == [f"    extra.{i:02d}" for i in range(10)]
    assert "    ... and 2 more" in lines
    for key, value in net.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key])


def test_load_into_non_strict_loads_what_fits():
    net = _Net(classes=10)
    head_before = net.head.fc.weight.detach().clone()
    ckpt = _checkpoint(classes=527)
    del ckpt["encoder.0.bias"]
    ckpt["extra"] = torch.zeros(1)
    report = load_into(net, ckpt, strict=False)
    assert report.missing == ["encoder.0.bias"]
    assert report.unexpected == ["extra"]
    assert report.mismatched == [
        "head.fc.weight: checkpoint (527, 8) vs model (10, 8)",
        "head.fc.bias: checkpoint (527,) vs model (10,)",
    ]
    assert "encoder.0.weight" in report.loaded and "head.fc.weight" not in report.loaded
    torch.testing.assert_close(net.encoder[0].weight, ckpt["encoder.0.weight"])
    torch.testing.assert_close(net.encoder[1].running_mean, ckpt["encoder.1.running_mean"])
    torch.testing.assert_close(net.head.fc.weight, head_before)

    nothing = load_into(net, {"model." + k: v for k, v in ckpt.items()}, strict=False)
    assert nothing.loaded == [] and len(nothing.unexpected) == len(ckpt)
    assert nothing.missing == list(net.state_dict())


def test_load_into_dry_run_reports_without_loading():
    net = _Net(classes=10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    probe = load_into(net, _checkpoint(classes=527), only=["head.fc."], strict=False, dry_run=True)
    assert probe.loaded == [] and len(probe.mismatched) == 2
    report = load_into(net, _checkpoint(classes=10), dry_run=True)
    assert report.loaded == list(net.state_dict())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_load_into_converts_dtype():
    net = _Net()
    ckpt = {k: v.double() if v.is_floating_point() else v for k, v in _checkpoint().items()}
    load_into(net, ckpt)
    assert net.encoder[0].weight.dtype == torch.float32
    torch.testing.assert_close(net.encoder[0].weight, ckpt["encoder.0.weight"].float())

    half = _Net().half()
    load_into(half, _checkpoint())
    assert half.head.fc.weight.dtype == torch.float16
    torch.testing.assert_close(half.head.fc.weight, _checkpoint()["head.fc.weight"].half())


def test_module_is_a_low_layer():
    source = Path(W.__file__).read_text()
    # only the optional-dependency helper of the bottom layer (tests/test_layers.py: the rest)
    project = [line for line in source.splitlines() if "audio_cls" in line and "import" in line]
    assert project == ["from audio_cls.extras import require"]
    assert "lightning" not in source.lower()
    assert "weights_only=False" not in source
