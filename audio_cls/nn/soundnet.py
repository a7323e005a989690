"""SoundNet: the 8-layer raw-waveform CNN, as a backbone over waveform ``(B, 1, T)``.

Paper: Aytar, Vondrick & Torralba, "SoundNet: Learning Sound Representations from Unlabeled
Video" (NeurIPS 2016), https://arxiv.org/abs/1610.09001. Seven 1-D convolutions over time, each
with batch norm and ReLU, max pooling after conv1, conv2 and conv5; the published model adds
two classifier convolutions, ``conv8`` (1000 ImageNet objects) and ``conv8_2`` (401 Places
scenes), which the visual teachers trained (student-teacher transfer from unlabeled video).

The layer table below is the published one (22.05 kHz input, waveform in [-256, 256]); ports
often write the convolutions as 2-D ``(k, 1)`` kernels. Here they are ``Conv1d`` named
``conv{i}.conv`` / ``conv{i}.bn``, so the published weights map one to one (see the
``soundnet8`` family in ``audio_cls.models.soundnet`` for ``sound8.npy``).

Weights: the original Torch7 model (``soundnet8_final.t7``, MIT, github.com/cvondrick/soundnet)
and its TensorFlow port ``sound8.npy`` (github.com/eborboihuc/SoundNet-tensorflow, MIT).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

__all__ = ["SOUNDNET8_LAYERS", "SoundNet8", "SoundNetBlock", "SoundNetLayer", "TapName"]

TapName = Literal["pool1", "pool2", "conv3", "conv4", "pool5", "conv6", "conv7"]


class SoundNetLayer(NamedTuple):
    """One published layer: a convolution (+ BN + ReLU), then max pooling when ``pool`` > 0."""

    name: str
    channels: int
    kernel: int
    stride: int
    padding: int
    pool: int  # max pooling with kernel = stride = pool; 0: none

    @property
    def tap(self) -> str:
        """The name of this layer's output: ``pool{i}`` after pooling, else ``conv{i}``."""
        return self.name.replace("conv", "pool") if self.pool else self.name


#: conv1..conv7 of the 8-layer model, as published.
SOUNDNET8_LAYERS: tuple[SoundNetLayer, ...] = (
    SoundNetLayer("conv1", 16, 64, 2, 32, 8),
    SoundNetLayer("conv2", 32, 32, 2, 16, 8),
    SoundNetLayer("conv3", 64, 16, 2, 8, 0),
    SoundNetLayer("conv4", 128, 8, 2, 4, 0),
    SoundNetLayer("conv5", 256, 4, 2, 2, 4),
    SoundNetLayer("conv6", 512, 4, 2, 2, 0),
    SoundNetLayer("conv7", 1024, 4, 2, 2, 0),
)
#: The classifier convolutions ``conv8`` (objects) and ``conv8_2`` (scenes): kernel 8, stride 2.
_TEACHER_KERNEL, _TEACHER_STRIDE = 8, 2
_TEACHER_CLASSES = {"conv8": 1000, "conv8_2": 401}


class SoundNetBlock(nn.Module):
    """``Conv1d`` (with bias, as published), BatchNorm, ReLU, then optional max pooling.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        kernel: Kernel length in time steps.
        stride: Convolution stride.
        padding: Zeros on each side.
        pool: Max-pooling kernel and stride (0: none).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, pool: int = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride, padding)
        self.bn = nn.BatchNorm1d(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool1d(pool, pool) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B C T) -> (B C' T')
        # max pooling and ReLU commute (both monotone): ReLU on the pooled, 4-8x shorter signal
        return self.act(self.pool(self.bn(self.conv(x))))


def _out_len(length: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (length + 2 * padding - kernel) // stride + 1


def _in_len(length: int, kernel: int, stride: int, padding: int = 0) -> int:
    """The shortest input giving ``length`` outputs (inverse of :func:`_out_len`)."""
    return max(1, (length - 1) * stride + kernel - 2 * padding)


class SoundNet8(nn.Module):
    """Waveform ``(B, 1, T)`` -> unpooled features ``(B, L, D)`` of ``output_layer``.

    Frames per 5 s at 22.05 kHz (110250 samples): pool1 6890, pool2 430, conv3 216, conv4 109,
    pool5 13, conv6 7, conv7 4; a conv7 frame advances 2 x 8 x 2 x 8 x 2 x 2 x 2 x 4 x 2 x 2 =
    32768 samples (1.49 s). Shorter input than :attr:`min_samples` (4574 for conv7, 0.21 s
    at 22.05 kHz) gives no frame and is refused with a ``ValueError``.

    Attributes:
        num_features: Width D of the output (``output_layer``'s channels).
        layout: ``"sequence"``.
        tap_features: Width of every tap of :meth:`forward_intermediates`, by name, in order.
        min_samples: Shortest waveform that gives one output frame.

    Args:
        in_channels: Waveform channels from the front end (1).
        width: Channel multiplier of every layer (1.0: the published widths 16 ... 1024, which
            published weights need; e.g. 0.25 for a small model trained from scratch).
        output_layer: Which layer's sequence is the output (and feeds the head):
            ``pool1``, ``pool2``, ``conv3``, ``conv4``, ``pool5`` (256 wide, the paper's best
            layer for linear classifiers), ``conv6`` or ``conv7`` (1024 wide); later layers are
            not built.
        teacher_heads: Also build the published classifier convolutions ``conv8`` (1000
            objects) and ``conv8_2`` (401 scenes), frozen, for :meth:`teacher_logits`; they need
            ``output_layer: conv7`` and take no part in ``forward`` (``sound8.npy`` loads
            them too).
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: float = 1.0,
        output_layer: TapName = "conv7",
        teacher_heads: bool = False,
    ) -> None:
        super().__init__()
        taps = [layer.tap for layer in SOUNDNET8_LAYERS]
        if output_layer not in taps:
            raise ValueError(
                f"SoundNet8 output_layer must be one of {', '.join(taps)}; got {output_layer!r}"
            )
        if width <= 0:
            raise ValueError(f"SoundNet8 width must be positive, got {width}")
        if teacher_heads and output_layer != "conv7":
            raise ValueError(
                "SoundNet8 teacher_heads (conv8, conv8_2) read conv7: set output_layer: conv7 "
                f"(got {output_layer!r}) or teacher_heads: false"
            )
        self.specs = SOUNDNET8_LAYERS[: taps.index(output_layer) + 1]
        self.tap_features: dict[str, int] = {}
        in_ch = in_channels
        for layer in self.specs:
            out_ch = max(1, round(layer.channels * width))
            block = SoundNetBlock(
                in_ch, out_ch, layer.kernel, layer.stride, layer.padding, layer.pool
            )
            self.add_module(layer.name, block)
            self.tap_features[layer.tap] = in_ch = out_ch
        self.teacher_heads = teacher_heads
        if teacher_heads:
            for name, classes in _TEACHER_CLASSES.items():
                head = nn.Conv1d(in_ch, classes, _TEACHER_KERNEL, _TEACHER_STRIDE)
                self.add_module(name, head.requires_grad_(False))
        self.num_features = in_ch
        self.layout = "sequence"
        self.output_layer = output_layer
        self.min_samples = self._min_samples(1)

    # ------------------------------------------------------------------ lengths
    def frames_per_tap(self, num_samples: int) -> dict[str, int]:
        """Frames of every tap for ``num_samples`` of waveform (0: too short for that tap)."""
        frames, length = {}, num_samples
        for layer in self.specs:
            if length > 0:
                length = _out_len(length, layer.kernel, layer.stride, layer.padding)
            if length > 0 and layer.pool:
                length = _out_len(length, layer.pool, layer.pool)
            frames[layer.tap] = length = max(length, 0)
        return frames

    def _min_samples(self, frames: int) -> int:
        """The shortest waveform giving ``frames`` output frames."""
        for layer in reversed(self.specs):
            if layer.pool:
                frames = _in_len(frames, layer.pool, layer.pool)
            frames = _in_len(frames, layer.kernel, layer.stride, layer.padding)
        return frames

    def _check_length(self, x: torch.Tensor, needed: int, what: str) -> None:
        if x.ndim != 3:
            raise ValueError(f"SoundNet8 expects a waveform batch (B, 1, T), got {tuple(x.shape)}")
        if x.shape[-1] < needed:
            raise ValueError(
                f"SoundNet8 needs at least {needed} samples ({needed / 22050:.2f} s at 22.05 kHz) "
                f"for {what}, got {x.shape[-1]}: use longer windows (--data.window_sec / "
                f"--data.clip_sec) or an earlier --model.output_layer"
            )

    # ------------------------------------------------------------------ forward
    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer's output as a sequence ``(B, L, D)``: ``pool1``, ``pool2``, ``conv3``,
        ``conv4``, ``pool5``, ``conv6``, ``conv7`` up to ``output_layer`` (the last entry);
        widths in :attr:`tap_features`."""
        self._check_length(x, self.min_samples, f"one {self.output_layer} frame")
        taps = {}
        for layer in self.specs:
            x = getattr(self, layer.name)(x)  # (B C T')
            taps[layer.tap] = x.transpose(1, 2).contiguous()  # (B T' C)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B 1 T) -> (B L D)
        self._check_length(x, self.min_samples, f"one {self.output_layer} frame")
        for layer in self.specs:
            x = getattr(self, layer.name)(x)
        return x.transpose(1, 2).contiguous()

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The published classifiers over time: ``objects`` ``(B, L8, 1000)`` (ImageNet) and
        ``scenes`` ``(B, L8, 401)`` (Places), from waveform ``(B, 1, T)``.

        Raises:
            ValueError: Built without ``teacher_heads``, or ``x`` too short for one conv8 frame.
        """
        if not self.teacher_heads:
            raise ValueError("SoundNet8 was built without teacher_heads: set teacher_heads: true")
        needed = self._min_samples(_in_len(1, _TEACHER_KERNEL, _TEACHER_STRIDE))
        self._check_length(x, needed, "one conv8 frame")
        h = self(x).transpose(1, 2)  # (B D L)
        return {
            "objects": self.conv8(h).transpose(1, 2),
            "scenes": self.conv8_2(h).transpose(1, 2),
        }
