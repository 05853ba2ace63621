"""Per-level SSD predictors: sigmoid class logits (no background) and box deltas."""

from __future__ import annotations

import math

import torch
from torch import nn


def _flatten(x: torch.Tensor, columns: int) -> torch.Tensor:
    # (B, A*C, H, W) -> (B, H*W*A, C): location-major, anchor-minor, as torchvision's
    # SSDHead and DefaultBoxGenerator order them.
    b, _, h, w = x.shape
    x = x.view(b, -1, columns, h, w).permute(0, 3, 4, 1, 2)
    return x.reshape(b, -1, columns)


class SSDPredictionHead(nn.Module):
    """3x3 conv predictors on each level; class bias initialised to prior ``0.01``."""

    def __init__(
        self, in_channels: list[int], anchors_per_location: list[int], num_classes: int,
        *, prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls = nn.ModuleList(
            [nn.Conv2d(c, a * num_classes, 3, padding=1)
             for c, a in zip(in_channels, anchors_per_location, strict=True)]
        )
        self.reg = nn.ModuleList(
            [nn.Conv2d(c, a * 4, 3, padding=1)
             for c, a in zip(in_channels, anchors_per_location, strict=True)]
        )
        bias = -math.log((1.0 - prior_prob) / prior_prob)
        for conv in [*self.cls, *self.reg]:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        for conv in self.cls:
            nn.init.constant_(conv.bias, bias)

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cls = torch.cat([_flatten(h(m), self.num_classes) for h, m in zip(self.cls, maps)], 1)
        reg = torch.cat([_flatten(h(m), 4) for h, m in zip(self.reg, maps)], 1)
        return cls, reg
