"""ResNeXt over spectrogram images, with ESResNeXt's attention gates.

Papers: Xie et al., "Aggregated Residual Transformations for Deep Neural Networks" (CVPR 2017)
for ResNeXt-50 32x4d; Guzhov et al., "ESResNeXt-fbsp" (IJCNN 2021) for the gates ``att1`` ..
``att5``: after each stage, a depthwise + pointwise convolution, BatchNorm and a sigmoid over the
stage's (max-pooled) input multiply the stage's output; ``att5`` gates the final features
channel by channel from their global maximum. The residual stages are torchvision's
``Bottleneck`` blocks, so module names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``) match
torchvision's ImageNet weights and the published ESResNeXt-fbsp / AudioCLIP checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, conv1x1

__all__ = ["AttentionGate", "ESResNeXtBackbone"]

#: (kernel, padding) of the gates after layer1 .. layer4 and of the final one, as published:
#: they alternate between frequency (3, 1) and time (1, 5) context.
_GATES = (((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 5), (1, 2)))


class AttentionGate(nn.Module):
    """Sigmoid gate computed from a stage's input, sized to the stage's output.

    Args:
        in_channels: Channels of the stage's input.
        out_channels: Channels of the stage's output (the gate's).
        kernel_size: Depthwise kernel (frequency, time).
        padding: Depthwise padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        padding: tuple[int, int],
    ) -> None:
        super().__init__()
        self.conv_depth = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=padding, groups=in_channels
        )
        self.conv_point = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.adaptive_max_pool2d(x, size)
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(x))))


class ESResNeXtBackbone(nn.Module):
    """Spectrogram bands ``(B, C, F, T)`` -> feature map ``(B, 8 * width * 4, F/32, T/32)``.

    Args:
        in_channels: Input image channels (the front end's frequency bands).
        layers: Bottleneck blocks per stage (ResNeXt-50: 3, 4, 6, 3).
        groups: Grouped-convolution cardinality (32 for ResNeXt-50 32x4d; 1: a plain ResNet).
        width_per_group: Channels per group in the first stage (4 for 32x4d; 64 with 1 group).
        width: Stem width; stages have ``width``, 2x, 4x and 8x bottleneck planes (64 published).
        attention: Add the gates ``att1`` .. ``att5``.
    """

    layout = "map"

    def __init__(
        self,
        in_channels: int,
        layers: list[int] | None = None,
        groups: int = 32,
        width_per_group: int = 4,
        width: int = 64,
        attention: bool = True,
    ) -> None:
        super().__init__()
        layers = list(layers or (3, 4, 6, 3))
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"ESResNeXt needs 4 stages of at least 1 block, got layers={layers}")
        if int(width * width_per_group / 64) * groups < 1:
            raise ValueError(
                f"width {width} with width_per_group {width_per_group} leaves no channels per "
                f"group: raise width_per_group (64 with groups 1 is a plain ResNet)"
            )
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = width
        self.stages: list[str] = []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = self._stage(
                channels, planes, blocks, 1 if i == 0 else 2, groups, width_per_group
            )
            setattr(self, f"layer{i + 1}", stage)
            if attention:
                kernel, padding = _GATES[i]
                gate = AttentionGate(channels, planes * Bottleneck.expansion, kernel, padding)
                setattr(self, f"att{i + 1}", gate)
            channels = planes * Bottleneck.expansion
            self.stages.append(f"layer{i + 1}")
        if attention:
            self.att5 = AttentionGate(channels, channels, *_GATES[4])
        self.attention = attention
        self.num_features = channels
        self._init_weights()

    @staticmethod
    def _stage(
        inplanes: int, planes: int, blocks: int, stride: int, groups: int, width_per_group: int
    ) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or inplanes != out:
            downsample = nn.Sequential(conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
        first = Bottleneck(
            inplanes, planes, stride, downsample, groups=groups, base_width=width_per_group
        )
        rest = [
            Bottleneck(out, planes, groups=groups, base_width=width_per_group)
            for _ in range(blocks - 1)
        ]
        return nn.Sequential(first, *rest)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Taps ``stem`` and ``layer1`` .. ``layer4`` (gated), then ``gated`` (the output)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        taps = {"stem": x}
        for i, name in enumerate(self.stages, 1):
            gate_input = x
            x = getattr(self, name)(x)
            if self.attention:
                x = x * getattr(self, f"att{i}")(gate_input, x.shape[-2:])
            taps[name] = x
        if self.attention:
            # Published: avg-pool, then times att5 of the max-pooled map. The gate is one value
            # per channel, so gating the map before the head's average pooling is the same.
            x = x * self.att5(x, (1, 1))
            taps["gated"] = x
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.forward_intermediates(x)
        return taps[next(reversed(taps))]
