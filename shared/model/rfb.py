"""The modified Receptive Field Block of the segmentation branch (paper fig. 3)."""

from __future__ import annotations

import torch
from torch import nn

from endofed.shared.model.layers import ConvGNReLU


class ModifiedRFB(nn.Module):
    """Four branches (``1x1``; ``1x1 -> (1,k) -> (k,1) -> 3x3 dil k`` for k = 3, 5, 7).

    Each branch has ``channels`` outputs; they are concatenated (``4 * channels``),
    reduced by a 3x3 conv to ``channels`` and summed with a 1x1 shortcut of the input,
    then passed through ReLU (as PraNet's ``RFB_modified``).
    """

    KERNELS = (3, 5, 7)

    def __init__(self, in_channels: int, channels: int = 32, *, groups: int = 32) -> None:
        super().__init__()
        c = channels
        branches: list[nn.Module] = [ConvGNReLU(in_channels, c, 1, groups=groups, relu=False)]
        for k in self.KERNELS:
            branches.append(
                nn.Sequential(
                    ConvGNReLU(in_channels, c, 1, groups=groups),
                    ConvGNReLU(c, c, (1, k), padding=(0, k // 2), groups=groups),
                    ConvGNReLU(c, c, (k, 1), padding=(k // 2, 0), groups=groups),
                    ConvGNReLU(c, c, 3, padding=k, dilation=k, groups=groups, relu=False),
                )
            )
        self.branches = nn.ModuleList(branches)
        self.fuse = ConvGNReLU(len(branches) * c, c, 3, groups=groups, relu=False)
        self.shortcut = ConvGNReLU(in_channels, c, 1, groups=groups, relu=False)
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat = torch.cat([b(x) for b in self.branches], dim=1)
        return self.act(self.fuse(cat) + self.shortcut(x))
