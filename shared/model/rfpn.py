"""Recursive feature pyramid (RFPN): a top-down FPN unrolled ``steps`` times.

Pass ``t`` computes ``p_i = smooth_i(lateral_i(x_i^t) + up(p_{i+1}))`` top-down. For
``t > 0`` the bottom-up input is ``x_i^t = x_i + feedback_i(p_i^{t-1})`` (1x1 feedback
convolutions, zero-initialised, as in recursive FPN / DetectoRS), so each pass sees the
previous pass' fused features. Lateral, smoothing and feedback weights are shared by
all passes (the recursion adds depth, not parameters beyond the feedback convs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from endofed.shared.model.layers import ConvGNReLU


class RecursiveFPN(nn.Module):
    """``forward(maps) -> maps`` with ``out_channels`` channels each (``steps >= 1``)."""

    def __init__(
        self, in_channels: list[int], out_channels: int, steps: int, *, groups: int = 32
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"RecursiveFPN needs steps >= 1, got {steps}")
        self.steps = steps
        self.lateral = nn.ModuleList(
            [nn.Conv2d(c, out_channels, 1) for c in in_channels]
        )
        self.smooth = nn.ModuleList(
            [ConvGNReLU(out_channels, out_channels, 3, groups=groups) for _ in in_channels]
        )
        self.feedback = nn.ModuleList(
            [nn.Conv2d(out_channels, c, 1) for c in in_channels] if steps > 1 else []
        )
        for conv in self.feedback:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.out_channels = [out_channels] * len(in_channels)

    def _top_down(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(xs)
        outs: list[torch.Tensor] = [xs[0]] * n
        prev = self.lateral[n - 1](xs[n - 1])
        outs[n - 1] = self.smooth[n - 1](prev)
        for i in range(n - 2, -1, -1):
            lat = self.lateral[i](xs[i])
            prev = lat + F.interpolate(prev, size=lat.shape[-2:], mode="nearest")
            outs[i] = self.smooth[i](prev)
        return outs

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = self._top_down(maps)
        for _ in range(1, self.steps):
            xs = [x + fb(o) for x, fb, o in zip(maps, self.feedback, outs, strict=True)]
            outs = self._top_down(xs)
        return outs
