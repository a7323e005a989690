"""YAMNet: its log-mel front end and its MobileNetV1 backbone, in PyTorch.

Model: YAMNet (Plakal & Ellis, Google, 2019; ``tensorflow/models``, ``research/audioset/yamnet``),
a MobileNetV1 (Howard et al., "MobileNets", 2017) trained on AudioSet's 521 classes. Weights:
the Keras file ``https://storage.googleapis.com/audioset/yamnet.h5`` (Apache 2.0, as the
repository); :func:`convert_keras_weights` maps it onto these modules.

- :class:`YAMNetSettings` -> :class:`YAMNetFrontend`: 16 kHz waveform -> ``log(mel + 0.001)`` of
  the STFT magnitude (25 ms periodic Hann window, 10 ms hop, 512-point FFT, no centring), 64
  HTK mel bands 125-7500 Hz from :func:`htk_mel_matrix` (TensorFlow's
  ``linear_to_mel_weight_matrix``). The waveform's end is padded with ``window - hop`` zeros,
  as YAMNet's ``pad_waveform`` does, so 0.96 s gives exactly 96 frames. The STFT is a strided
  ``Conv1d`` with fixed DFT kernels: it traces to any length and exports to ONNX as it is.
- :class:`YAMNetBackbone`: 14 layers (a 3x3 convolution, then 13 depthwise-separable ones),
  TensorFlow ``same`` padding (:class:`SameConv2d`), BatchNorm with a shift and no scale
  (:class:`ShiftBatchNorm2d`), ReLU; returns the unpooled map, which the head's global mean
  turns into the 1024-d embedding.

YAMNet reads its patch as an image of (time, mel); here the map is (mel, time), the layout
every CNN of this package uses. The convolutions are 3x3 with equal strides on both axes and
TensorFlow pads both axes the same way, so the two are the same network with the kernels'
spatial axes swapped, which :func:`convert_keras_weights` does.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from audio_cls.nn.frontends import FeatureShape, Frontend, FrontendSettings
from audio_cls.nn.specaugment import SpecAugment
from audio_cls.nn.weights import PretrainedWeightsError

__all__ = [
    "YAMNET_LAYERS",
    "SameConv2d",
    "SeparableConv",
    "ShiftBatchNorm2d",
    "YAMNetBackbone",
    "YAMNetFrontend",
    "YAMNetSettings",
    "convert_keras_weights",
    "htk_mel_matrix",
    "stft_kernels",
]

#: ``(stride, output channels)`` of layers 1-14: a full 3x3 convolution, then depthwise-separable.
YAMNET_LAYERS: tuple[tuple[int, int], ...] = (
    (2, 32),
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)
#: YAMNet's BatchNorm epsilon (Keras ``BatchNormalization(epsilon=1e-4)``).
BN_EPS = 1e-4


# ---------------------------------------------------------------------- front end
def htk_mel_matrix(
    n_mels: int, n_fft: int, sample_rate: float, f_min: float, f_max: float
) -> torch.Tensor:
    """TensorFlow's ``linear_to_mel_weight_matrix``: ``(n_fft // 2 + 1, n_mels)`` triangles.

    HTK mel scale ``1127 ln(1 + f / 700)``; band edges evenly spaced in mel between ``f_min``
    and ``f_max``; each FFT bin's weight is the triangle evaluated at the bin's mel value (the
    slopes are linear in mel, not in Hz); the DC bin gets no weight; no area normalisation
    (each triangle peaks at 1). Computed in float64.

    Args:
        n_mels: Mel bands.
        n_fft: FFT size (``n_fft // 2 + 1`` one-sided bins from 0 Hz to Nyquist).
        sample_rate: Rate in Hz.
        f_min: Lower edge of the lowest band in Hz.
        f_max: Upper edge of the highest band in Hz (at most Nyquist).
    """
    if n_mels <= 0 or not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"HTK mel bands need n_mels > 0 and 0 <= f_min < f_max <= {sample_rate / 2} Hz "
            f"(Nyquist); got n_mels={n_mels}, f_min={f_min}, f_max={f_max}"
        )

    def mel(hz: torch.Tensor) -> torch.Tensor:
        return 1127.0 * torch.log(1.0 + hz / 700.0)

    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    bins_mel = mel(bins[1:]).unsqueeze(1)  # (bins - 1, 1): DC left out
    edges = torch.linspace(
        float(mel(torch.tensor(f_min, dtype=torch.float64))),
        float(mel(torch.tensor(f_max, dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (n_mels,) each
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    return F.pad(weights, (0, 0, 1, 0))  # the DC row back, all zero


def stft_kernels(win_length: int, n_fft: int) -> torch.Tensor:
    """Periodic-Hann-windowed DFT basis as ``Conv1d`` weights ``(2 * (n_fft // 2 + 1), 1, win)``.

    Frame ``[t, t + win)`` of the waveform, zero-padded at the end to ``n_fft`` as ``tf.signal``
    does, times these kernels gives the real parts (first half of the channels) and imaginary
    parts (second half) of its one-sided DFT. Phases in float64.

    Args:
        win_length: Window (and frame) length in samples.
        n_fft: FFT size, at least ``win_length``.
    """
    if not 0 < win_length <= n_fft:
        raise ValueError(f"the window has {win_length} samples; it needs 1 to n_fft={n_fft}")
    n = torch.arange(win_length, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / win_length)  # periodic Hann
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, n).remainder(n_fft) / n_fft
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
    return basis.float().unsqueeze(1)


@dataclass(frozen=True)
class YAMNetSettings(FrontendSettings):
    """YAMNet's front end: log of the HTK mel energies of the STFT magnitude.

    Args:
        sample_rate: Waveform rate in Hz (YAMNet's 16 kHz; None: the data's rate).
        n_mels: Mel bands (the feature channels).
        win_ms: STFT window in milliseconds (the FFT is the next power of two).
        hop_ms: Hop between frames in milliseconds.
        f_min: Lower edge of the lowest mel band in Hz.
        f_max: Upper edge of the highest mel band in Hz.
        log_offset: Added to the mel energies before the log.
        pad_end: Pad ``window - hop`` zeros at the end, so ``T`` samples give ``T // hop``
            frames (YAMNet's padding; 0.96 s -> 96 frames).
        freq_mask: SpecAugment's widest frequency mask in bands, in training (0: off).
        time_mask: SpecAugment's widest time mask in frames, in training (0: off).
    """

    kind: ClassVar[str] = "yamnet"

    sample_rate: int | None = 16000
    n_mels: int = 64
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 125.0
    f_max: float = 7500.0
    log_offset: float = 0.001
    pad_end: bool = True
    freq_mask: int = field(default=8, metadata={"augment": True})
    time_mask: int = field(default=16, metadata={"augment": True})

    def build(self, sample_rate: int) -> YAMNetFrontend:
        return YAMNetFrontend(dataclasses.replace(self, sample_rate=sample_rate))


class YAMNetFrontend(Frontend):
    """Waveform ``(B, T)`` -> ``log(mel + log_offset)`` ``(B, n_mels, frames)``; SpecAugment in
    training. No learned parameters and nothing in the state dict (the DFT kernels and the mel
    matrix are rebuilt from the settings).

    Args:
        settings: Its settings, ``sample_rate`` filled in.
    """

    def __init__(self, settings: YAMNetSettings) -> None:
        super().__init__()
        s = self.settings = settings
        rate = int(s.sample_rate)
        self.win_length = round(rate * s.win_ms / 1000)
        self.hop_length = round(rate * s.hop_ms / 1000)
        if self.win_length <= 0 or self.hop_length <= 0 or s.log_offset <= 0:
            raise ValueError(
                f"the yamnet front end needs positive win_ms, hop_ms and log_offset; got "
                f"win_ms={s.win_ms}, hop_ms={s.hop_ms}, log_offset={s.log_offset}"
            )
        if s.f_max > rate / 2:
            raise ValueError(
                f"--model.frontend.f_max {s.f_max} is above the Nyquist frequency of {rate} Hz "
                f"audio ({rate / 2} Hz): use 16000 Hz data (YAMNet's rate) or lower f_max"
            )
        self.n_fft = 1 << (self.win_length - 1).bit_length()  # YAMNet: 2 ** ceil(log2(win))
        self.pad = max(self.win_length - self.hop_length, 0) if s.pad_end else 0
        mel = htk_mel_matrix(s.n_mels, self.n_fft, rate, s.f_min, s.f_max)
        self.register_buffer("dft", stft_kernels(self.win_length, self.n_fft), persistent=False)
        self.register_buffer("mel", mel.float(), persistent=False)  # (bins, n_mels)
        self.spec_augment = SpecAugment(s.freq_mask, s.time_mask)

    @property
    def output(self) -> FeatureShape:
        return FeatureShape(self.settings.n_mels, self.sample_rate / self.hop_length, "log-mel")

    def num_frames(self, num_samples: int) -> int:
        return max((num_samples + self.pad - self.win_length) // self.hop_length + 1, 0)

    def magnitude(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(B, T) -> (B, n_fft // 2 + 1, frames)``: STFT magnitude of the (padded) waveform."""
        if waveform.shape[-1] + self.pad < self.win_length:
            raise ValueError(
                f"the yamnet front end needs at least {self.win_length - self.pad} samples "
                f"per example; got {waveform.shape[-1]}"
            )
        x = F.pad(waveform.float().unsqueeze(1), (0, self.pad))  # (B 1 T+pad)
        parts = F.conv1d(x, self.dft, stride=self.hop_length)  # (B 2*bins frames)
        real, imag = parts.chunk(2, dim=1)
        return torch.sqrt(real * real + imag * imag)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(B, T) -> (B, n_mels, frames)``: ``log(mel + log_offset)``, before SpecAugment."""
        # fp32 even under autocast: the magnitudes span ~100 dB
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            magnitude = self.magnitude(waveform)
            mel = torch.matmul(magnitude.transpose(1, 2), self.mel).transpose(1, 2)
            return torch.log(mel + self.settings.log_offset)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.spec_augment(self.log_mel(waveform))


# ---------------------------------------------------------------------- backbone
class SameConv2d(nn.Conv2d):
    """``Conv2d`` with TensorFlow's ``same`` padding: output ``ceil(size / stride)``, the odd
    padding sample at the bottom / right (the end of each axis).

    The padding is worked out from the input's size in each call, in operations a trace records,
    so a traced or exported graph stays right for every input length. Kernels at least as large
    as the stride (true of every YAMNet layer); no dilation.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.dilation != (1, 1) or any(k < s for k, s in zip(self.kernel_size, self.stride)):
            raise ValueError("SameConv2d needs dilation 1 and kernels at least the stride")
        # odd kernels at stride 1 pad symmetrically, which the convolution does by itself
        self.symmetric = self.stride == (1, 1) and all(k % 2 for k in self.kernel_size)
        self.padding = tuple(k // 2 for k in self.kernel_size) if self.symmetric else (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.same_conv(x, self.weight, self.bias)

    def same_conv(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """This convolution's padding and stride with other weights (BatchNorm folded in)."""
        if self.symmetric:
            return self._conv_forward(x, weight, bias)
        pads = []
        for axis in (-1, -2):  # F.pad lists the last axis first
            k, s = self.kernel_size[axis], self.stride[axis]
            # (ceil(n / s) - 1) * s + k - n = k - s + ((-n) mod s): never negative for k >= s
            total = k - s + (-x.shape[axis]) % s
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads), weight, bias)


class ShiftBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with a learned shift and no scale (Keras ``center=True, scale=False``).

    Built as ``BatchNorm2d(affine=False)`` plus a ``bias`` parameter, which ``F.batch_norm``
    takes without a weight: the state dict holds exactly what Keras stores (``bias`` = beta,
    ``running_mean``, ``running_var``) and ``num_batches_tracked``, with no frozen weight of
    ones that could be trained by mistake or would have to be invented on load. (Caveat:
    ``SyncBatchNorm.convert_sync_batchnorm``, i.e. Lightning's ``sync_batchnorm=True``, copies
    affine parameters only, so it would drop the shift; leave that option off for YAMNet.)

    Args:
        num_features: Channels.
        eps: Added to the variance (YAMNet's 1e-4).
    """

    def __init__(self, num_features: int, eps: float = BN_EPS) -> None:
        super().__init__(num_features, eps=eps, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))


class ConvBNReLU(nn.Module):
    """``SameConv2d`` (no bias), :class:`ShiftBatchNorm2d`, ReLU; ``groups=in_ch`` is depthwise.

    In eval mode the BatchNorm is folded into the convolution's weights and bias on the fly
    (the same arithmetic with one pass over the activations fewer: a quarter less CPU time
    at batch 64).

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        kernel: Square kernel size.
        stride: Stride on both axes.
        groups: Convolution groups.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = SameConv2d(in_ch, out_ch, kernel, stride, groups=groups, bias=False)
        self.bn = ShiftBatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.bn.track_running_stats:
            return F.relu(self.bn(self.conv(x)), inplace=True)
        scale = torch.rsqrt(self.bn.running_var + self.bn.eps)  # (C,)
        weight = self.conv.weight * scale.view(-1, 1, 1, 1)
        bias = self.bn.bias - self.bn.running_mean * scale
        return F.relu(self.conv.same_conv(x, weight, bias), inplace=True)


class SeparableConv(nn.Module):
    """MobileNetV1's depthwise-separable layer: 3x3 depthwise at ``stride``, then 1x1 pointwise.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        stride: Stride of the depthwise convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(in_ch, in_ch, 3, stride, groups=in_ch)
        self.pointwise = ConvBNReLU(in_ch, out_ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class YAMNetBackbone(nn.Module):
    """Log-mel ``(B, F, T)`` -> feature map ``(B, C, F / 32, T / 32)`` (sizes rounded up).

    YAMNet's MobileNetV1: ``layer1`` a 3x3 convolution at stride 2, ``layer2``-``layer14``
    depthwise-separable (:data:`YAMNET_LAYERS`); 64 mel bands x 96 frames end as a 2 x 3 map of
    1024 channels, whose mean is YAMNet's embedding.

    Args:
        in_channels: Mel bands F (rows of the map); the network works at any number of bands.
        width_multiplier: Scales every layer's channels (MobileNet's alpha; 1.0 is YAMNet, and
            only 1.0 loads its weights).
    """

    def __init__(self, in_channels: int, width_multiplier: float = 1.0) -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"YAMNet width_multiplier must be > 0, got {width_multiplier}")
        widths = [max(1, round(c * width_multiplier)) for _, c in YAMNET_LAYERS]
        self.layer_names = [f"layer{i}" for i in range(1, len(YAMNET_LAYERS) + 1)]
        in_ch = 1
        for i, ((stride, _), out_ch) in enumerate(zip(YAMNET_LAYERS, widths)):
            if i == 0:
                layer: nn.Module = ConvBNReLU(in_ch, out_ch, 3, stride)
            else:
                layer = SeparableConv(in_ch, out_ch, stride)
            self.add_module(self.layer_names[i], layer)
            in_ch = out_ch
        # channels-last: ~1.5x faster on CPU here (oneDNN depthwise kernels), and on tensor cores
        self.to(memory_format=torch.channels_last)
        self.num_features = widths[-1]
        self.layout = "map"

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named taps ``(B C F' T')``: ``layer1`` ... ``layer14`` (the last is the output)."""
        h = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)  # (B 1 F T)
        taps = {}
        for name in self.layer_names:
            h = taps[name] = self.get_submodule(name)(h)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B F T) -> (B C F' T')
        h = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        for name in self.layer_names:
            h = self.get_submodule(name)(h)
        return h


# ---------------------------------------------------------------------- Keras weights
#: Keras name (``layerN/...`` after de-duplication, no ``:0``) -> our name, per pattern.
_KERAS_NAMES = (
    (re.compile(r"(layer1)/conv/kernel"), r"\1.conv.weight"),
    (re.compile(r"(layer1)/conv/bn/(\w+)"), r"\1.bn.\2"),
    (re.compile(r"(layer\d+)/(depthwise)_conv/depthwise_kernel"), r"\1.\2.conv.weight"),
    (re.compile(r"(layer\d+)/(pointwise)_conv/kernel"), r"\1.\2.conv.weight"),
    (re.compile(r"(layer\d+)/(depthwise|pointwise)_conv/bn/(\w+)"), r"\1.\2.bn.\3"),
)
_BN_NAMES = {"beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
#: ``group/weight`` stored as Keras's ``save_weights`` does: the layer's group, then the
#: weight's own full name (``layer1/conv/layer1/conv/kernel:0``).
_REPEATED = re.compile(r"^(?P<group>.+)/(?P=group)/(?P<leaf>[^/]+)$")


def convert_keras_weights(
    weights: Mapping[str, torch.Tensor], prefix: str = "backbone.", head: str = "head.fc."
) -> dict[str, torch.Tensor]:
    """YAMNet's Keras weights (``yamnet.h5``) -> our names, in PyTorch layouts.

    Reads names as ``read_weights`` gives them for the published file
    (``layer2/depthwise_conv/layer2/depthwise_conv/depthwise_kernel:0``; a ``model_weights/``
    group, a repeated group or the ``:0`` suffix may each be absent). Kernels: full convolutions
    ``(kh, kw, in, out)`` -> ``(out, in, kw, kh)`` and depthwise ``(kh, kw, C, 1)`` -> ``(C, 1,
    kw, kh)``, the spatial axes swapped because YAMNet's image is (time, mel) and ours (mel,
    time); BatchNorm beta / moving mean / moving variance -> ``bias`` / ``running_mean`` /
    ``running_var``, with ``num_batches_tracked`` 0 (Keras keeps no count); ``logits`` dense
    ``(1024, 521)`` -> ``head.fc`` ``(521, 1024)``. Names that are not YAMNet's pass unchanged.

    Args:
        weights: The file's tensors.
        prefix: Our prefix of the backbone's names.
        head: Our prefix of the classifier layer.

    Raises:
        PretrainedWeightsError: A YAMNet BatchNorm carries a variable this model has no place for
            (``gamma``: weights of a YAMNet variant trained with ``scale=True``).
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        name = key.removeprefix("model_weights/").removesuffix(":0")
        repeated = _REPEATED.match(name)
        if repeated:
            name = f"{repeated['group']}/{repeated['leaf']}"
        if name in ("logits/kernel", "logits/bias", "dense/kernel", "dense/bias"):
            leaf = name.rsplit("/", 1)[1]
            out[head + ("weight" if leaf == "kernel" else "bias")] = (
                tensor.t().contiguous() if leaf == "kernel" else tensor
            )
            continue
        ours = None
        for pattern, target in _KERAS_NAMES:
            if pattern.fullmatch(name):
                ours = pattern.sub(target, name)
                break
        if ours is None:
            out[key] = tensor
            continue
        if ".bn." in ours:
            module, variable = ours.rsplit(".", 1)
            if variable not in _BN_NAMES:
                raise PretrainedWeightsError(
                    f"YAMNet weights: {key} is a BatchNorm {variable!r}, which YAMNet's "
                    f"BatchNorm (shift only, no scale) does not have; these are not the "
                    f"published yamnet.h5 weights"
                )
            out[f"{prefix}{module}.{_BN_NAMES[variable]}"] = tensor
            out[f"{prefix}{module}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        elif tensor.ndim == 4 and "depthwise" in ours:
            out[prefix + ours] = tensor.permute(2, 3, 1, 0).contiguous()  # (C 1 kw kh)
        elif tensor.ndim == 4:
            out[prefix + ours] = tensor.permute(3, 2, 1, 0).contiguous()  # (out in kw kh)
        else:
            out[prefix + ours] = tensor
    return out
