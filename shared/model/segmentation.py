"""Segmentation branch (partial decoder) and its attention map (paper 2.2.1, eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from endofed.shared.model.layers import ConvGNReLU
from endofed.shared.model.rfb import ModifiedRFB


class SegmentationBranch(nn.Module):
    """RFB on source maps 0, 1, 2 -> resize to map 0 -> concat -> decoder -> mask logits.

    ``forward(maps) -> (mask_logits (B,1,h,w), attention (B,1,h,w))`` where ``h, w`` is
    the resolution of source map 0 ("conv4_3"). The attention is ``sigmoid(conv(f))``
    on the decoder features ``f`` before its last (mask) layer; the caller multiplies
    it into source map 0.
    """

    def __init__(self, in_channels: list[int], channels: int = 32, *, groups: int = 32) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"segmentation branch takes 3 source maps, got {len(in_channels)}")
        c = channels
        self.rfbs = nn.ModuleList([ModifiedRFB(ch, c, groups=groups) for ch in in_channels])
        self.decoder = nn.Sequential(
            ConvGNReLU(3 * c, 2 * c, 3, groups=groups),
            ConvGNReLU(2 * c, c, 3, groups=groups),
        )
        self.mask_head = nn.Conv2d(c, 1, 1)
        self.attention_head = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        size = maps[0].shape[-2:]
        feats = [self.rfbs[0](maps[0])]
        for rfb, m in zip(self.rfbs[1:], maps[1:3], strict=True):
            feats.append(F.interpolate(rfb(m), size=size, mode="bilinear", align_corners=False))
        f = self.decoder(torch.cat(feats, dim=1))
        return self.mask_head(f), torch.sigmoid(self.attention_head(f))
