"""``audio-cls embed``: the Parquet schema, row order, clip statistics, taps, bare inputs,
unreadable files, metadata, shards of several ranks."""

import json

import numpy as np
import pytest
import torch
import yaml

from audio_cls.boost import open_embeddings
from audio_cls.cli import main
from audio_cls.commands import UsageError
from audio_cls.commands.embed import (
    META_KEY,
    EmbedClip,
    embed_clips,
    merge_shards,
    read_embeddings,
    shard_clips,
    shard_path,
)
from audio_cls.data.segments import window_starts
from audio_cls.data.sources import Synthetic
from audio_cls.inference import Predictor, TimeShiftTTA, WindowSettings, pooled_tap
from audio_cls.io import load_audio
from audio_cls.models import create_model, load_classifier
from tests.conftest import TINY_SYNTHETIC, save_tiny_checkpoint

pq = pytest.importorskip("pyarrow.parquet")

SR = 16000
WINDOW, HOP = 0.5, 0.25  # the tiny checkpoint's
META_KEYS = {"class_names", "tap", "model", "sample_rate", "window_sec", "hop_sec", "checkpoint"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.ckpt", ["a", "b", "c"])


@pytest.fixture(scope="module")
def model(ckpt):
    return load_classifier(ckpt)[0]


@pytest.fixture(scope="module")
def data_config(tmp_path_factory, synthetic_root):
    """A training config (model, trainer and data sections) of the tiny synthetic set."""
    config = {
        "model": {"class_path": "audio_cls.models.MelCNN", "init_args": {"channels": [4, 8]}},
        "trainer": {"max_epochs": 1},
        "data": {
            "root": "elsewhere",  # --data.root overrides it
            "source": {
                "class_path": "audio_cls.data.sources.Synthetic",
                "init_args": TINY_SYNTHETIC,
            },
            "window_sec": 0.96,
        },
    }
    path = tmp_path_factory.mktemp("config") / "synthetic.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def data_run(ckpt, data_config, synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "emb.parquet"
    main(
        [
            "embed",
            "--ckpt",
            str(ckpt),
            "--config",
            str(data_config),
            f"--data.root={synthetic_root}",
            "--out",
            str(out),
        ]
    )
    return out


@pytest.fixture
def tones(tmp_path, write_tone):
    return [
        write_tone(tmp_path / "in" / f"t{i}.wav", seconds=0.6 + 0.3 * i, freq=300 * (i + 1))
        for i in range(5)
    ]


def test_schema_is_the_documented_one(data_run):
    schema = pq.read_schema(data_run)
    fixed = [(f.name, str(f.type)) for f in schema][:8]
    assert fixed == [
        ("clip_id", "string"),
        ("path", "string"),
        ("fold", "int64"),
        ("label", "string"),
        ("target", "int64"),
        ("level", "string"),
        ("start_sec", "double"),
        ("end_sec", "double"),
    ]
    emb = [f for f in schema][8:]
    assert [f.name for f in emb] == [f"emb_{i}" for i in range(len(emb))] and emb
    assert {str(f.type) for f in emb} == {"float"}
    assert set(json.loads(schema.metadata[META_KEY.encode()])) == META_KEYS


def test_rows_follow_the_manifest_with_labels_folds_and_window_times(data_run, synthetic_root):
    manifest = Synthetic(**TINY_SYNTHETIC).manifest(synthetic_root)
    e = read_embeddings(data_run)
    order = list(dict.fromkeys(e.clip_id))
    assert order == [c.clip_id for c in manifest.clips]
    assert e.meta["class_names"] == manifest.class_names
    for clip in manifest.clips:
        rows = e.clip_id == clip.clip_id
        n = round(load_audio(clip.path, SR).shape[0])
        starts = window_starts(n, round(WINDOW * SR), round(HOP * SR)) / SR
        assert e.level[rows].tolist() == ["window"] * len(starts) + ["mean", "std", "max"]
        assert set(e.fold[rows]) == {clip.fold} and set(e.target[rows]) == {clip.label}
        assert set(e.label[rows]) == {manifest.class_names[clip.label]}
        np.testing.assert_allclose(e.start_sec[rows], [*starts, 0, 0, 0])
        np.testing.assert_allclose(e.end_sec[rows], [*(starts + WINDOW), *[n / SR] * 3])


def test_window_rows_are_the_models_embeddings(data_run, synthetic_root, model):
    e = read_embeddings(data_run)
    clip = Synthetic(**TINY_SYNTHETIC).manifest(synthetic_root).clips[4]
    wave = torch.from_numpy(load_audio(clip.path, SR))
    starts = window_starts(len(wave), round(WINDOW * SR), round(HOP * SR))
    windows = torch.stack([wave[s : s + round(WINDOW * SR)] for s in starts])
    rows = (e.clip_id == clip.clip_id) & (e.level == "window")
    np.testing.assert_allclose(e.emb[rows], model.embed(windows).numpy(), atol=1e-5)
    assert e.dim == model.num_features


def test_clip_statistics_are_numpy_over_the_window_rows(data_run):
    e = read_embeddings(data_run)
    for clip_id in dict.fromkeys(e.clip_id):
        rows = e.clip_id == clip_id
        w = e.emb[rows & (e.level == "window")]
        for level, expected in (("mean", w.mean(0)), ("std", w.std(0)), ("max", w.max(0))):
            got = e.emb[rows & (e.level == level)]
            assert got.shape == (1, e.dim)
            np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-6)
    assert len(e.select("mean")) == len(set(e.clip_id)) and e.emb.dtype == np.float32


def test_metadata(data_run, ckpt):
    meta = read_embeddings(data_run).meta
    assert meta == {
        "class_names": ["impact", "footsteps", "knock"],  # the data set's, which target indexes
        "tap": "embedding",
        "model": "mel_cnn",
        "sample_rate": SR,
        "window_sec": WINDOW,
        "hop_sec": HOP,
        "checkpoint": str(ckpt),
    }


def test_folds_option_selects_folds(ckpt, data_config, synthetic_root, tmp_path):
    out = tmp_path / "f.parquet"
    common = ["embed", "--ckpt", str(ckpt), "--config", str(data_config)]
    main([*common, f"--data.root={synthetic_root}", "--folds", "1", "3", "--out", str(out)])
    e = read_embeddings(out)
    assert set(e.fold) == {1, 3}
    manifest = Synthetic(**TINY_SYNTHETIC).manifest(synthetic_root)
    assert list(dict.fromkeys(e.clip_id)) == [c.clip_id for c in manifest.select([1, 3])]
    with pytest.raises(UsageError, match=r"no fold\(s\) \[7\]"):
        main([*common, f"--data.root={synthetic_root}", "--folds", "7", "--out", str(out)])


def test_bare_inputs_have_no_label_and_fold_minus_one_and_skip_unreadable(
    ckpt, tones, tmp_path, capsys
):
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    out = tmp_path / "e.parquet"
    main(["embed", "--ckpt", str(ckpt), str(tmp_path / "in"), "--out", str(out)])
    e = read_embeddings(out)
    assert list(dict.fromkeys(e.clip_id)) == [f"t{i}" for i in range(5)]
    assert set(e.fold) == {-1} and set(e.label) == {""} and set(e.target) == {-1}
    assert e.meta["class_names"] == ["a", "b", "c"]  # the model's own
    assert "skipped broken" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["embed", "--ckpt", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--strict"])
    assert exit_.value.code == 1


def test_map_tap_is_averaged_over_frequency_and_time(ckpt, model, tones, tmp_path):
    out = tmp_path / "map.parquet"
    main(["embed", "--ckpt", str(ckpt), str(tones[2]), "--tap", "block0", "--out", str(out)])
    e = read_embeddings(out)
    wave = torch.from_numpy(load_audio(tones[2], SR))
    starts = window_starts(len(wave), round(WINDOW * SR), round(HOP * SR))
    windows = torch.stack([wave[s : s + round(WINDOW * SR)] for s in starts])
    with torch.no_grad():
        block = model.forward_intermediates(windows)["block0"]  # (B, C, F, T)
    assert block.ndim == 4 and e.dim == block.shape[1] and e.meta["tap"] == "block0"
    np.testing.assert_allclose(e.select("window").emb, block.mean((2, 3)).numpy(), atol=1e-5)


def test_sequence_and_frontend_taps(tones, tmp_path):
    torch.manual_seed(0)
    net = create_model("vjepa2", 3, d_model=32, depth=1, num_heads=2).eval()
    windows = WindowSettings(SR, WINDOW, HOP)
    clips = [EmbedClip(p.stem, p) for p in tones[:2]]
    predictor = Predictor(net, windows, device="cpu", tap="block0")
    embed_clips(predictor, clips, tmp_path / "s.parquet", {"tap": "block0"})
    e = read_embeddings(tmp_path / "s.parquet")
    wave = torch.from_numpy(load_audio(tones[0], SR))
    x = torch.stack([wave[s : s + 8000] for s in window_starts(len(wave), 8000, 4000)])
    with torch.no_grad():
        taps = net.forward_intermediates(x)
        assert taps["block0"].ndim == 3  # (B, L, D)
        expected = taps["block0"].mean(1)
        frontend = pooled_tap(net, x, "frontend")
    got = e.emb[(e.clip_id == "t0") & (e.level == "window")]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    # the front end's (B, mels, frames) keeps its mel channels, averaged over frames
    assert torch.allclose(frontend, taps["frontend"].mean(2)) and frontend.shape[1] == 128


def test_unknown_tap_lists_the_models_taps(ckpt, tones, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="its taps are frontend, stem, block0"):
        main(["embed", "--ckpt", str(ckpt), str(tones[0]), "--tap", "nope"])
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob(".*partial"))


def test_tta_averages_embeddings_of_shifted_windows(model):
    x = torch.randn(3, round(WINDOW * SR))
    predictor = Predictor(model, WindowSettings(SR, WINDOW), device="cpu", tta=TimeShiftTTA(3))
    predictor.tap = "embedding"
    shifts = TimeShiftTTA(3).offsets(x.shape[1])
    expected = torch.stack([model.embed(torch.roll(x, k, -1)) for k in shifts]).mean(0)
    assert torch.allclose(predictor.predict_windows(x), expected, atol=1e-5)
    predictor.tap = None  # the default: class probabilities, as classify has them
    assert torch.allclose(predictor.predict_windows(x).sum(1), torch.ones(3))


@pytest.mark.parametrize("n", range(7))
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_contiguous_and_cover_the_clips(n, world):
    shards = [shard_clips(list(range(n)), r, world) for r in range(world)]
    assert [c for shard in shards for c in shard] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_two_ranks_read_back_as_one_process(model, tones, tmp_path):
    clips = [EmbedClip(p.stem, p, fold=i % 2, label="x", target=0) for i, p in enumerate(tones)]
    predictor = Predictor(model, WindowSettings(SR, WINDOW, HOP), device="cpu", tap="embedding")
    meta = {"tap": "embedding", "class_names": ["x"]}
    embed_clips(predictor, clips, tmp_path / "one.parquet", meta)
    sharded = tmp_path / "two.parquet"
    reports = [embed_clips(predictor, clips, sharded, meta, r, 2) for r in (0, 1)]
    assert [r.path for r in reports] == [shard_path(sharded, 0), shard_path(sharded, 1)]
    assert shard_path(sharded, 1).name == "two.rank1.parquet" and not sharded.exists()
    assert [r.clips for r in reports] == [2, 3]
    one = read_embeddings(tmp_path / "one.parquet")

    def same(a, b):
        for name in ("clip_id", "path", "fold", "label", "target", "level", "start_sec"):
            assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
        assert np.array_equal(a.end_sec, b.end_sec) and np.array_equal(a.emb, b.emb)
        assert a.meta == b.meta

    same(read_embeddings(sharded), one)
    assert list(dict.fromkeys(one.clip_id)) == [p.stem for p in tones]
    # boost reads the shards as the one file too
    assert open_embeddings(sharded).table.equals(open_embeddings(tmp_path / "one.parquet").table)
    # a missing shard is named, not read past
    moved = shard_path(sharded, 1).rename(tmp_path / "elsewhere.parquet")
    with pytest.raises(ValueError, match=r"missing rank\(s\) \[1\]"):
        read_embeddings(sharded)
    moved.rename(shard_path(sharded, 1))
    merge_shards(sharded)
    assert sharded.exists() and not shard_path(sharded, 0).exists()
    same(read_embeddings(sharded), one)


def test_registry_model_with_pretrained_weights_and_window_options(tones, tmp_path):
    torch.manual_seed(0)
    net = create_model("mel_cnn", 3).eval()
    weights = tmp_path / "weights.ckpt"
    torch.save({"state_dict": net.state_dict()}, weights)
    out = tmp_path / "r.parquet"
    common = ["embed", "--model", "mel_cnn", str(tones[4]), "--out", str(out)]
    main([*common, "--pretrained", str(weights), "--window_sec", "0.8", "--hop_sec", "0.4"])
    e = read_embeddings(out)
    assert e.meta["window_sec"] == 0.8 and e.meta["hop_sec"] == 0.4
    assert e.meta["model"] == "mel_cnn" and e.meta["checkpoint"] == str(weights)
    assert e.meta["class_names"] == []  # a file of weights names no classes
    wave = torch.from_numpy(load_audio(tones[4], SR))
    starts = window_starts(len(wave), 12800, 6400)
    np.testing.assert_allclose(e.select("window").start_sec, starts / SR)
    x = torch.stack([wave[s : s + 12800] for s in starts])
    np.testing.assert_allclose(e.select("window").emb, net.embed(x).numpy(), atol=1e-5)
    with pytest.raises(UsageError, match="needs --pretrained"):
        main(common)


@pytest.mark.parametrize(
    ("tag", "family", "names"),
    [("esresnext_fbsp_audioset", "esresnext_fbsp", 527), ("audioclip_full", "audioclip_audio", 0)],
)
def test_ckpt_may_be_a_tag_of_published_weights(tag, family, names, tones, tmp_path, monkeypatch):
    """The weights are not downloaded here: the family is built with the tag's options, and
    the metadata names the tag and the weights' label names (none for weights without)."""
    from audio_cls.models import registry

    built = []

    def fake_create(name, num_classes, pretrained=None, **options):
        built.append((name, num_classes, pretrained))
        return create_model("mel_cnn", num_classes, channels=[4, 8, 8])

    monkeypatch.setattr(registry, "create_model", fake_create)
    out = tmp_path / "t.parquet"
    main(["embed", "--ckpt", tag, str(tones[0]), "--out", str(out)])
    assert built == [(family, names or 2, tag)]
    meta = read_embeddings(out).meta
    assert meta["checkpoint"] == tag and len(meta["class_names"]) == names
    assert meta["window_sec"] == 0.96 and meta["hop_sec"] == 0.48


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["x.wav"], "give either --ckpt"),
        (["--ckpt", "m.onnx", "x.wav"], "ONNX file"),
        (["--ckpt", "CKPT", "--pretrained", "p.ckpt", "x.wav"], "--pretrained goes with"),
        (["--ckpt", "CKPT"], "nothing to embed"),
        (["--ckpt", "CKPT", "x.wav", "--folds", "1"], "--folds selects folds"),
        (["--ckpt", "CKPT", "x.wav", "--data.root", "d"], "not both"),
        (["--ckpt", "CKPT", "x.wav", "--tta", "0"], "--tta must be >= 1"),
        (["--ckpt", "CKPT", "x.wav", "--rank", "2", "--world_size", "2"], "--rank must be"),
    ],
)
def test_usage_errors_say_what_to_do(ckpt, args, match):
    args = [str(ckpt) if a == "CKPT" else a for a in args]
    with pytest.raises(UsageError, match=match):
        main(["embed", *args])


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["embed", "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--tap" in text and "--data.root" in text and "--config" in text


def test_a_new_run_replaces_the_other_form_of_the_file(model, tones, tmp_path):
    """Shards written after a single-process FILE (or the reverse) are what readers get."""
    clips = [EmbedClip(p.stem, p, fold=1, label="x", target=0) for p in tones]
    predictor = Predictor(model, WindowSettings(SR, WINDOW, HOP), device="cpu", tap="embedding")
    out = tmp_path / "e.parquet"
    embed_clips(predictor, clips[:1], out, {"tap": "embedding", "class_names": ["x"]})
    for r in (0, 1):
        embed_clips(predictor, clips, out, {"tap": "embedding", "class_names": ["x"]}, r, 2)
    assert not out.exists()
    assert len(set(read_embeddings(out).clip_id)) == len(clips)
    merge_shards(out)
    assert len(set(read_embeddings(out).clip_id)) == len(clips)
    embed_clips(predictor, clips[:1], out, {"tap": "embedding", "class_names": ["x"]})
    assert not list(tmp_path.glob("e.rank*.parquet"))
    assert len(set(read_embeddings(out).clip_id)) == 1
