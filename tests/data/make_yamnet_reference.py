"""Reference numbers for YAMNet's front end, from a NumPy port of the published pipeline.

Independent of ``audio_cls`` and of torch: this ports ``tf.signal.linear_to_mel_weight_matrix``
(TensorFlow, ``tensorflow/python/ops/signal/mel_ops.py``) and YAMNet's ``features.py``
(``pad_waveform``, ``tf.signal.stft`` magnitude with a periodic Hann window, matmul with the mel
matrix, ``log(mel + 0.001)``, 0.96 s patches with a 0.48 s hop) in float64 NumPy, runs it on a
fixed signal (0.5 sin 1 kHz + 0.25 sin 3 kHz, 0.96 s at 16 kHz) and prints the numbers
``tests/test_yamnet.py`` holds our front end to.

    python tests/data/make_yamnet_reference.py          # print the reference numbers
    python tests/data/make_yamnet_reference.py --tf     # also compare with TensorFlow itself

``--tf`` needs TensorFlow (never a dependency of this repository; install it in a throwaway
environment). It runs YAMNet's feature steps with ``tf.signal`` in float32 and prints the
largest differences from the NumPy port.
"""

from __future__ import annotations

import argparse

import numpy as np

SAMPLE_RATE = 16000.0
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
PATCH_WINDOW_SECONDS = 0.96
PATCH_HOP_SECONDS = 0.48

#: (frame, band) positions printed: bands 19-20 hold 1 kHz and 41-42 hold 3 kHz (loud); 0, 30
#: and 63 are far from both (quiet, near the log floor); frame 95 overlaps the zero padding.
POSITIONS = [
    (0, 19),
    (48, 20),
    (95, 19),
    (30, 41),
    (70, 42),
    (95, 60),
    (30, 0),
    (60, 30),
    (80, 63),
]
#: (FFT bin, band) entries of the mel matrix printed: 1 kHz is bin 32, 3 kHz bin 96.
MEL_ENTRIES = [(0, 0), (4, 0), (5, 0), (32, 19), (32, 20), (96, 41), (96, 42), (239, 63), (256, 63)]


def hertz_to_mel(f: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + f / 700.0)


def linear_to_mel_weight_matrix(
    num_mel_bins: int,
    num_spectrogram_bins: int,
    sample_rate: float,
    lower_edge_hertz: float,
    upper_edge_hertz: float,
) -> np.ndarray:
    """``(num_spectrogram_bins, num_mel_bins)``, as TensorFlow computes it (in float64 here)."""
    linear = np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins)[1:]  # DC bin dropped
    bins_mel = hertz_to_mel(linear)[:, None]
    edges = np.linspace(
        hertz_to_mel(np.float64(lower_edge_hertz)),
        hertz_to_mel(np.float64(upper_edge_hertz)),
        num_mel_bins + 2,
    )
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    lower_slopes = (bins_mel - lower) / (center - lower)
    upper_slopes = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    return np.pad(weights, [[1, 0], [0, 0]])


def pad_waveform(waveform: np.ndarray) -> np.ndarray:
    """YAMNet's ``pad_waveform``: at least one patch of samples, then whole patch hops.

    TensorFlow casts ``seconds * rate`` to float32 before int32 (0.975 s * 16000 is
    15599.999... in float64, 15600 in float32), so the port does too.
    """
    min_seconds = PATCH_WINDOW_SECONDS + STFT_WINDOW_SECONDS - STFT_HOP_SECONDS
    min_samples = int(np.float32(min_seconds * SAMPLE_RATE))
    n = len(waveform)
    padding = max(0, min_samples - n)
    n = max(n, min_samples)
    after_first = n - min_samples
    hop = int(np.float32(PATCH_HOP_SECONDS * SAMPLE_RATE))
    hops = int(np.ceil(np.float32(after_first) / np.float32(hop)))
    padding += hop * hops - after_first
    return np.pad(waveform, (0, padding))


def frame(x: np.ndarray, length: int, step: int) -> np.ndarray:
    """``tf.signal.frame`` along the first axis, complete frames only."""
    count = 1 + (len(x) - length) // step if len(x) >= length else 0
    return np.stack([x[i * step : i * step + length] for i in range(count)])


def log_mel_patches(waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(log_mel (frames, bands), patches (n, 96, bands), mel matrix (bins, bands))``."""
    window = round(SAMPLE_RATE * STFT_WINDOW_SECONDS)
    hop = round(SAMPLE_RATE * STFT_HOP_SECONDS)
    fft_length = 2 ** int(np.ceil(np.log(window) / np.log(2.0)))
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # periodic
    frames = frame(pad_waveform(waveform), window, hop) * hann
    magnitude = np.abs(np.fft.rfft(frames, n=fft_length))  # zero-padded at the end
    matrix = linear_to_mel_weight_matrix(
        MEL_BANDS, fft_length // 2 + 1, SAMPLE_RATE, MEL_MIN_HZ, MEL_MAX_HZ
    )
    log_mel = np.log(magnitude @ matrix + LOG_OFFSET)
    rate = SAMPLE_RATE / hop
    patch = round(rate * PATCH_WINDOW_SECONDS)
    patch_hop = round(rate * PATCH_HOP_SECONDS)
    return log_mel, frame(log_mel, patch, patch_hop), matrix


def test_signal() -> np.ndarray:
    t = np.arange(int(PATCH_WINDOW_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    return 0.5 * np.sin(2 * np.pi * 1000.0 * t) + 0.25 * np.sin(2 * np.pi * 3000.0 * t)


def tensorflow_features(waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """YAMNet's feature steps with TensorFlow itself (float32): ``(log_mel, mel matrix)``."""
    import tensorflow as tf

    window = round(SAMPLE_RATE * STFT_WINDOW_SECONDS)
    hop = round(SAMPLE_RATE * STFT_HOP_SECONDS)
    fft_length = 2 ** int(np.ceil(np.log(window) / np.log(2.0)))
    x = tf.constant(pad_waveform(waveform).astype(np.float32))
    magnitude = tf.abs(tf.signal.stft(x, window, hop, fft_length))
    matrix = tf.signal.linear_to_mel_weight_matrix(
        MEL_BANDS, fft_length // 2 + 1, SAMPLE_RATE, MEL_MIN_HZ, MEL_MAX_HZ
    )
    log_mel = tf.math.log(tf.matmul(magnitude, matrix) + LOG_OFFSET)
    return log_mel.numpy(), matrix.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf", action="store_true", help="compare with TensorFlow as well")
    args = parser.parse_args()
    waveform = test_signal()
    log_mel, patches, matrix = log_mel_patches(waveform)
    print(f"samples {len(waveform)} padded to {len(pad_waveform(waveform))}")
    print(f"frames {log_mel.shape[0]}, patches {patches.shape}")
    print("LOG_MEL = {")
    for f, b in POSITIONS:
        print(f"    ({f}, {b}): {log_mel[f, b]:.6f},")
    print("}")
    print("MEL = {")
    for k, b in MEL_ENTRIES:
        print(f"    ({k}, {b}): {matrix[k, b]:.8f},")
    print("}")
    print(f"mel matrix column sums 0, 31, 63: {matrix.sum(0)[[0, 31, 63]].round(6).tolist()}")
    print(
        f"first nonzero bin of bands 0 and 63: {[int(np.flatnonzero(matrix[:, b])[0]) for b in (0, 63)]}"
    )
    if args.tf:
        tf_log_mel, tf_matrix = tensorflow_features(waveform)
        loud = log_mel > np.log(LOG_OFFSET) + 3
        print(
            f"TensorFlow {tf_log_mel.shape}: max |mel matrix diff| {np.abs(tf_matrix - matrix).max():.2e}"
        )
        print(
            f"  max |log-mel diff| all {np.abs(tf_log_mel - log_mel).max():.2e}, "
            f"where mel > 20 x offset {np.abs(tf_log_mel - log_mel)[loud].max():.2e}"
        )
        for f, b in POSITIONS:
            print(f"  ({f}, {b}): numpy {log_mel[f, b]:.6f} tensorflow {tf_log_mel[f, b]:.6f}")


if __name__ == "__main__":
    main()
