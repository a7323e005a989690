"""The inference core: streaming windows, batching across files, bad files, TTA, aggregation."""

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_cls.data.segments import fit_length, window_starts
from audio_cls.inference import (
    PrecisionChoice,
    Predictor,
    TimeShiftTTA,
    WindowSettings,
    aggregate_clips,
    collect,
    cut_windows,
)
from audio_cls.models import create_model

SR = 16000


def blocks_of(x: np.ndarray, size: int):
    for i in range(0, len(x), size):
        yield x[i : i + size]


@pytest.mark.parametrize("n", [1, 100, 15359, 15360, 15361, 40000, 123457])
@pytest.mark.parametrize("block", [1000, 7680, 50000])
def test_cut_windows_matches_whole_signal_windows(n, block):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    window, hop = 15360, 7680
    parts = list(cut_windows(blocks_of(x, block), window, hop))
    starts = np.concatenate([s for s, _ in parts])
    windows = np.concatenate([w for _, w in parts])
    expected = window_starts(n, window, hop)
    assert starts.tolist() == expected.tolist()
    for s, w in zip(starts, windows):
        assert np.array_equal(w, fit_length(x[s : s + window], window))


def test_cut_windows_of_nothing_yields_nothing():
    assert list(cut_windows(iter([]), 10, 5)) == []


def test_aggregation_methods():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    index = torch.tensor([0, 0, 1])
    mean = aggregate_clips(probs, index, 3, "mean")
    assert torch.allclose(mean[0], torch.tensor([0.55, 0.45])) and mean[2].sum() == 0
    vote = aggregate_clips(probs, index, 2, "vote")
    assert torch.allclose(vote[0], torch.tensor([0.5, 0.5]))
    assert torch.allclose(aggregate_clips(probs, index, 2, "max")[1], torch.tensor([0.6, 0.4]))
    with pytest.raises(ValueError, match="unknown clip aggregation"):
        aggregate_clips(probs, index, 2, "median")


def test_tta_settings_are_checked():
    assert TimeShiftTTA(1).offsets(100) == [0]
    assert TimeShiftTTA(3, 0.1).offsets(100) == [-10, 0, 10]
    with pytest.raises(ValueError, match="shifts >= 1"):
        TimeShiftTTA(0)


@pytest.fixture
def predictor():
    torch.manual_seed(0)
    model = create_model("mel_cnn", 3, channels=[4, 8, 8], sample_rate=SR)
    return Predictor(model, WindowSettings(SR, 0.5, 0.25), batch_size=7)


def _write(path, seconds, seed):
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(SR * seconds))
    sf.write(path, x.astype(np.float32), SR)
    return x.astype(np.float32)


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("workers", [1, 3])
def test_files_equal_waveforms_and_batches_span_files(predictor, tmp_path, background, workers):
    predictor.workers = workers  # 3 batches of 7 windows in flight, in threads
    lengths = [0.3, 1.7, 2.0, 0.9, 3.1, 0.6]
    waves = [_write(tmp_path / f"{i}.wav", s, i) for i, s in enumerate(lengths)]
    files = [(f"clip{i}", tmp_path / f"{i}.wav") for i in range(len(waves))]
    from_files = list(predictor.predict_files(files, background=background))
    assert [p.clip_id for p in from_files] == [f"clip{i}" for i in range(len(waves))]
    for wave, pred in zip(waves, from_files):
        alone = predictor.predict_waveform(wave)
        assert pred.error is None and pred.num_samples == len(wave)
        assert torch.equal(pred.starts, alone.starts)
        torch.testing.assert_close(pred.window_probs, alone.window_probs, atol=1e-5, rtol=0)
        torch.testing.assert_close(pred.probs, alone.probs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("precision", ["32", "auto"])
def test_workers_split_the_threads_and_give_them_back(predictor, tmp_path, precision):
    assert Predictor(predictor.model, predictor.windows, device="cpu").workers == (
        2 if torch.get_num_threads() >= 2 else 1
    )
    for i in range(6):
        _write(tmp_path / f"{i}.wav", 4.0, i)
    files = [(f"c{i}", tmp_path / f"{i}.wav") for i in range(6)]
    threads = torch.get_num_threads()
    seen = []

    class Counting(Predictor):
        def predict_windows(self, windows):
            seen.append((self.precision.decided, len(windows), torch.get_num_threads()))
            return super().predict_windows(windows)

    counting = Counting(predictor.model, predictor.windows, 16, precision=precision, workers=2)
    assert len(list(counting.predict_files(files))) == 6
    assert torch.get_num_threads() == threads
    split = max(1, threads // 2)
    # the precision trial (auto, with native bf16) runs first, on its 64 windows only
    trial = [s for s in seen if not s[0]]
    assert seen[: len(trial)] == trial
    assert sum(k for _, k, _ in trial) == (64 if counting.precision.compared else 0)
    assert {n for _, _, n in seen} == {split}
    stream = counting.predict_files(files)
    next(stream)
    stream.close()  # stopped early: the pool is shut and the thread count restored
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Predictor(predictor.model, predictor.windows, workers=0)


def test_long_file_is_decoded_in_blocks(predictor, tmp_path):
    wave = _write(tmp_path / "long.wav", 30.0, 1)
    seen = []

    def decode(path, sample_rate, block_sec):
        from audio_cls.io import iter_audio

        for block in iter_audio(path, sample_rate, 2.0):
            seen.append(len(block))
            yield block

    (pred,) = predictor.predict_files([("long", tmp_path / "long.wav")], decode=decode)
    assert max(seen) <= 2 * SR and sum(seen) == len(wave)
    assert len(pred.starts) == len(window_starts(len(wave), 8000, 4000))


def test_bad_file_is_reported_and_the_others_predicted(predictor, tmp_path):
    _write(tmp_path / "good.wav", 1.0, 0)
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really")
    _write(tmp_path / "good2.wav", 1.0, 1)
    files = [(n, tmp_path / f"{n}.wav") for n in ("good", "bad", "good2")]
    preds = list(predictor.predict_files(files, background=True))
    assert [p.error is None for p in preds] == [True, False, True]
    assert "bad.wav" in preds[1].error
    results = collect(preds, 3)
    assert results.errors == {"bad": preds[1].error}
    assert results.covered.tolist() == [True, False, True]


def test_predictor_tta_changes_probabilities(tmp_path):
    torch.manual_seed(0)
    model = create_model("mel_cnn", 3, channels=[4, 8, 8], sample_rate=SR)
    wave = _write(tmp_path / "x.wav", 1.0, 3)
    plain = Predictor(model, WindowSettings(SR, 0.5)).predict_waveform(wave)
    tta = Predictor(model, WindowSettings(SR, 0.5), tta=TimeShiftTTA(3)).predict_waveform(wave)
    assert not torch.allclose(plain.probs, tta.probs)


def test_bf16_autocast_stays_close_to_fp32_and_returns_fp32(tmp_path):
    torch.manual_seed(0)
    model = create_model("mel_cnn", 3, channels=[4, 8, 8], sample_rate=SR)
    waves = [_write(tmp_path / f"{i}.wav", 1.0, i) for i in range(4)]
    fp32 = Predictor(model, WindowSettings(SR, 0.5), precision="32")
    bf16 = Predictor(model, WindowSettings(SR, 0.5), precision="bf16")
    for wave in waves:
        a, b = fp32.predict_waveform(wave), bf16.predict_waveform(wave)
        assert b.probs.dtype == torch.float32
        assert (a.window_probs - b.window_probs).abs().max() < 0.02


def test_silent_and_one_sample_clips_are_predicted_with_a_warning(predictor, tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(tmp_path / "one.wav", np.full(1, 0.5, np.float32), SR)
    _write(tmp_path / "fine.wav", 1.0, 0)
    files = [(n, tmp_path / f"{n}.wav") for n in ("silent", "one", "fine")]
    preds = {p.clip_id: p for p in predictor.predict_files(files)}
    assert "silent" in preds["silent"].warning and preds["silent"].error is None
    assert "only 1 sample" in preds["one"].warning
    assert preds["fine"].warning is None
    assert collect(list(preds.values()), 3).warnings.keys() == {"silent", "one"}


def test_a_file_name_that_is_not_utf8_is_reported_printably(predictor, tmp_path):
    import os

    name = os.fsdecode(b"bad\xff.wav")
    x = np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32) * 0.1
    sf.write(os.fsencode(tmp_path / name), x, SR)  # soundfile takes such names as bytes
    (pred,) = predictor.predict_files([("bad", tmp_path / name)])
    assert pred.error is None and pred.path.endswith("bad\\xff.wav")
    pred.path.encode("utf-8")  # goes into a UTF-8 report as it is


class _FlipsUnderAutocast(torch.nn.Module):
    """Confident logits whose classes come out reversed under CPU autocast: bf16 that disagrees."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.linspace(1.0, 3.0, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = 10 * x.abs().mean(-1, keepdim=True) * self.scale
        return logits.flip(-1) if torch.is_autocast_enabled("cpu") else logits


@pytest.fixture
def native_bf16(monkeypatch):
    """The trial of ``precision="auto"`` runs whatever this CPU is."""
    monkeypatch.setattr("audio_cls.inference.native_bf16", lambda device: True)


def test_auto_precision_stays_fp32_when_bf16_changes_the_top_class(native_bf16):
    windows = np.random.default_rng(0).uniform(-0.5, 0.5, (100, 8000)).astype(np.float32)
    model = _FlipsUnderAutocast()
    auto = Predictor(model, WindowSettings(SR, 0.5), batch_size=16, precision="auto")
    exact = Predictor(model, WindowSettings(SR, 0.5), precision="32")
    assert torch.equal(auto.predict_windows(windows), exact.predict_windows(windows))
    assert auto.precision.decided and auto.precision.name == "32"
    assert auto.precision.compared == 64 and auto.precision.disagreed == 64


def test_auto_precision_adopts_bf16_after_the_trial_and_clips_agree_with_fp32(
    native_bf16, tmp_path
):
    torch.manual_seed(0)
    model = create_model("mel_cnn", 4, channels=[4, 8, 8], sample_rate=SR).eval()
    with torch.no_grad():  # confident outputs, as a trained model gives, not close calls
        model.head.fc.weight.mul_(50)
    paths = [str(tmp_path / f"{i}.wav") for i in range(40)]
    for i, path in enumerate(paths):
        _write(path, 2.0, i)
    auto = Predictor(model, WindowSettings(SR, 0.5), batch_size=32, precision="auto")
    exact = Predictor(model, WindowSettings(SR, 0.5), batch_size=32, precision="32")
    a = collect(list(auto.predict_files((p, p) for p in paths)), 4)
    b = collect(list(exact.predict_files((p, p) for p in paths)), 4)
    assert auto.precision.name == "bf16" and auto.precision.compared >= 64
    assert exact.precision.name == "32"
    # the trial's windows are fp32's own, those after it bf16's: close, not equal
    n = auto.precision.compared
    assert torch.equal(a.segment_probs[:32], b.segment_probs[:32])
    assert not torch.equal(a.segment_probs[n:], b.segment_probs[n:])
    assert (a.probs.argmax(1) == b.probs.argmax(1)).float().mean() >= 0.995


def test_precision_trial_skips_silent_windows_and_counts_close_calls_as_agreeing(native_bf16):
    choice = PrecisionChoice("auto", torch.device("cpu"), is_module=True)
    fp32 = torch.tensor([[0.9, 0.1], [0.52, 0.48], [0.8, 0.2], [0.3, 0.7]])
    bf16 = torch.tensor([[0.8, 0.2], [0.47, 0.53], [0.1, 0.9], [0.6, 0.4]])
    choice.observe(fp32, bf16, torch.tensor([True, True, False, True]))
    assert (choice.compared, choice.disagreed, choice.decided) == (3, 1, False)
    with pytest.raises(ValueError, match="precision"):
        PrecisionChoice("fp16", torch.device("cpu"), is_module=True)
    assert PrecisionChoice("auto", torch.device("cpu"), is_module=False).name == "32"
    assert PrecisionChoice("bf16", torch.device("cpu"), is_module=False).name == "32"
