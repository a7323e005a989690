import shutil

import numpy as np
import pytest
import torch

from audio_cls.data import AudioDataModule, WaveformAugment
from audio_cls.data.augment import mixup
from audio_cls.data.sources import CSVManifest, Synthetic
from tests.conftest import TINY_SYNTHETIC


def make_dm(root, **kw) -> AudioDataModule:
    kw.setdefault("num_workers", 0)
    return AudioDataModule(root=str(root), source=Synthetic(**TINY_SYNTHETIC), **kw)


def test_links_and_default_folds(synthetic_root):
    dm = make_dm(synthetic_root)
    assert dm.num_classes == 3 and dm.class_names == ["impact", "footsteps", "knock"]
    assert dm.folds() == {"train": [1], "val": [2], "test": [3]}


def test_eval_windows_cover_every_clip(synthetic_root):
    dm = make_dm(synthetic_root, window_sec=0.4, hop_sec=0.2)
    dm.setup("test")
    seg = dm.splits["test"]
    assert set(seg.windows[:, 0].tolist()) == set(range(len(seg.clips)))
    for i, n in enumerate(seg.lengths):
        starts = seg.windows[seg.windows[:, 0] == i, 1]
        assert starts.min() == 0 and starts.max() + dm.window == n
    batch = next(iter(dm.test_dataloader()))
    assert batch["waveform"].shape[1] == dm.window and batch["waveform"].dtype == torch.float32
    assert {"target", "clip_index", "segment_index"} <= set(batch)


def test_whole_clip_mode_gives_one_window_per_clip(synthetic_root):
    dm = make_dm(synthetic_root, clip_sec=1.0)
    dm.setup("test")
    assert len(dm.splits["test"].windows) == len(dm.splits["test"].clips)


def test_short_clips_are_padded(synthetic_root):
    dm = make_dm(synthetic_root, window_sec=1.5)
    dm.setup("test")
    x = dm._dataset("test")[0]["waveform"]
    assert x.shape == (24000,) and torch.all(x[16000:] == 0)


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ({"train_folds": [1, 2], "val_folds": [2]}, "share fold"),
        ({"train_folds": [7]}, "does not have"),
        ({"train_folds": []}, "selects nothing"),
    ],
)
def test_bad_folds_are_refused(synthetic_root, folds, message):
    with pytest.raises(ValueError, match=message):
        make_dm(synthetic_root, **folds).setup("fit")


def test_corrupt_clip_is_named_and_can_be_skipped(tmp_path, synthetic_root):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    victim = sorted((root / "audio").rglob("*.wav"))[0]
    victim.write_bytes(b"not audio at all")
    kw = dict(
        root=str(root),
        source=CSVManifest("manifest.csv", num_folds=3),
        num_workers=0,
        train_folds=[1, 2, 3],
        val_folds=[],
        test_folds=[],
    )
    with pytest.raises(ValueError, match=victim.name) as err:
        AudioDataModule(**kw).setup("fit")
    assert "--data.on_bad_file skip" in str(err.value)
    dm = AudioDataModule(**kw, on_bad_file="skip")
    dm.setup("fit")
    assert victim not in {c.path for c in dm.splits["train"].clips}
    assert victim.exists()  # nothing is deleted


def test_training_windows_are_augmented_and_jittered(synthetic_root):
    torch.manual_seed(0)
    dm = make_dm(
        synthetic_root, augment=WaveformAugment(gain_db=(-6, 6), noise_snr_db=(5, 5), noise_p=1.0)
    )
    dm.setup("fit")
    ds = dm._dataset("train")
    a, b = ds[0]["waveform"], ds[0]["waveform"]
    assert a.shape == b.shape == (dm.window,)
    assert not torch.equal(a, b)


def test_speed_perturbation_moves_pitch_and_keeps_the_window_length():
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(16000) / 16000)  # 1 Hz FFT bins
    augment = WaveformAugment(gain_db=None, noise_snr_db=None, speed=(0.9, 1.1))
    torch.manual_seed(0)
    outputs = [augment(tone) for _ in range(60)]
    assert all(y.shape == tone.shape for y in outputs)
    peaks = {int(torch.fft.rfft(y).abs().argmax()) for y in outputs}
    assert peaks == {900, 950, 1000, 1050, 1100}  # every multiple of 1/20 in the range
    torch.manual_seed(0)
    assert all(torch.equal(augment(tone), y) for y in outputs[:5])  # the seed repeats it
    slow = WaveformAugment(gain_db=None, noise_snr_db=None, speed=(0.5, 0.5))(tone)
    assert int(torch.fft.rfft(slow).abs().argmax()) == 500
    with pytest.raises(ValueError, match=r"augment.speed \[0.92, 0.93\] holds no multiple"):
        WaveformAugment(speed=(0.92, 0.93))
    with pytest.raises(ValueError, match=r"0\.5 <= low <= high <= 2"):
        WaveformAugment(speed=(1.2, 1.1))


def test_silent_windows_are_dropped(tmp_path, write_tone):
    import soundfile as sf

    root = tmp_path / "silence"
    rows = ["path,label,fold"]
    for i in range(3):
        x = np.zeros(16000 * 4, dtype=np.float32)
        x[:16000] = 0.5 * np.sin(np.arange(16000) * 0.1)
        (root / "a").mkdir(parents=True, exist_ok=True)
        sf.write(root / "a" / f"{i}.wav", x, 16000)
        # one class: every fold must hold every class (a lone 'b' clip in fold 2 is refused)
        rows.append(f"a/{i}.wav,a,{i + 1}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    kw = dict(
        root=str(root), source=CSVManifest(num_folds=3), num_workers=0, window_sec=1.0, hop_sec=1.0
    )
    keep_all = AudioDataModule(**kw)
    keep_all.setup("test")
    loud_only = AudioDataModule(**kw, drop_silent_db=30.0)
    loud_only.setup("test")
    assert len(keep_all.splits["test"].windows) == 4
    assert loud_only.splits["test"].windows[:, 1].tolist() == [0]


def test_mixup_soft_targets():
    torch.manual_seed(0)
    wave, target = torch.randn(8, 100), torch.arange(8) % 3
    mixed, soft = mixup(wave, target, 3, alpha=0.4)
    assert soft.shape == (8, 3)
    assert torch.allclose(soft.sum(1), torch.ones(8))
    assert (soft.max(1).values >= 0.5).all()
    assert (soft.argmax(1) == target).all()  # the dominant sample keeps its label
    assert not torch.equal(mixed, wave)


def test_balanced_sampling(synthetic_root):
    dm = make_dm(synthetic_root, balanced_sampling=True, batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, torch.utils.data.WeightedRandomSampler)
