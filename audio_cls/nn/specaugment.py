"""SpecAugment (Park et al., 2019): frequency and time masks on ``(B, F, T)`` features."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

__all__ = ["SpecAugment"]


class SpecAugment(nn.Module):
    """Random frequency and time masks, drawn per example; identity in eval mode.

    Args:
        freq_mask: Widest frequency mask in bins (0 disables).
        time_mask: Widest time mask in frames (0 disables).
        n_freq_masks: Frequency masks per example.
        n_time_masks: Time masks per example.
    """

    def __init__(
        self, freq_mask: int = 8, time_mask: int = 16, n_freq_masks: int = 2, n_time_masks: int = 2
    ) -> None:
        super().__init__()
        if min(freq_mask, time_mask, n_freq_masks, n_time_masks) < 0:
            raise ValueError("SpecAugment: mask widths and counts must be >= 0")
        masks: list[nn.Module] = []
        if freq_mask:
            masks += [
                torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)
            ] * n_freq_masks
        if time_mask:
            masks += [torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)] * n_time_masks
        self.masks = nn.ModuleList(masks)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B F T)
        if not self.training or not len(self.masks):
            return features
        # mask with the per-example mean so masked regions look like "nothing", not -inf silence
        fill = features.mean(dim=(-2, -1), keepdim=True)
        x = (features - fill).unsqueeze(1)  # (B 1 F T): iid masks need a channel axis
        for mask in self.masks:
            x = mask(x)
        return x.squeeze(1) + fill
