import numpy as np
import pytest

from audio_cls.data.segments import fit_length, loud_windows, window_starts


@pytest.mark.parametrize("n", [15360, 15361, 23040, 80000, 80001])
def test_windows_cover_every_sample(n):
    window, hop = 15360, 7680
    starts = window_starts(n, window, hop)
    covered = np.zeros(n, dtype=bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all()
    assert starts[-1] + window == n  # last window ends on the clip's end
    assert (np.diff(starts) <= hop).all() and (np.diff(starts) > 0).all()


def test_esc50_clip_gives_nine_windows():
    # 5 s at 16 kHz, 0.96 s windows, 50 % overlap: starts 0, 0.48, ..., 3.84 and one at 4.04
    starts = window_starts(80000, 15360, 7680)
    assert len(starts) == 10
    assert starts[-1] == 80000 - 15360


def test_short_clip_gets_one_window():
    assert window_starts(100, 15360, 7680).tolist() == [0]


def test_bad_window_raises():
    with pytest.raises(ValueError, match="window and hop"):
        window_starts(100, 0, 10)


def test_fit_length_pad_repeat_crop():
    x = np.arange(1, 4, dtype=np.float32)
    assert fit_length(x, 7, "pad").tolist() == [1, 2, 3, 0, 0, 0, 0]
    assert fit_length(x, 7, "repeat").tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert fit_length(x, 2).tolist() == [1, 2]


def test_loud_windows_drop_digital_silence():
    x = np.zeros(4000, dtype=np.float32)
    x[:1000] = np.sin(np.arange(1000))
    starts = window_starts(len(x), 1000, 1000)
    keep = loud_windows(x, starts, 1000, below_peak_db=30)
    assert keep.tolist() == [True, False, False, False]
