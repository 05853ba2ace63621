"""Small building blocks: GroupNorm conv block and the SSD L2Norm layer.

Everything here is Opacus-friendly: no BatchNorm, no in-place activations, and the
one custom parametrised layer (:class:`L2Norm`) is a leaf module with a registered
per-sample gradient function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ConvGNReLU(nn.Sequential):
    """``Conv2d -> GroupNorm -> ReLU`` (children named ``conv``, ``norm``, ``act``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int = 1,
        *,
        groups: int = 32,
        bias: bool = True,
        relu: bool = True,
    ) -> None:
        if padding is None:
            k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = (dilation * (k[0] - 1) // 2, dilation * (k[1] - 1) // 2)
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias
        )
        self.norm = group_norm(out_channels, groups)
        self.act = nn.ReLU(inplace=False) if relu else nn.Identity()


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (SSD conv4_3).

    A leaf module that owns its ``weight`` so Opacus can compute its per-sample
    gradient (see the grad sampler registered below).
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.view(1, -1, 1, 1) * F.normalize(x, p=2.0, dim=1, eps=self.eps)


def _register_opacus_grad_samplers() -> None:
    try:
        from opacus.grad_sample import register_grad_sampler
    except ImportError:  # pragma: no cover - opacus is a declared dependency
        return

    @register_grad_sampler(L2Norm)
    def _l2norm_grad_sample(
        layer: L2Norm, activations: list[torch.Tensor], backprops: torch.Tensor
    ) -> dict[nn.Parameter, torch.Tensor]:
        x = activations[0]
        normed = F.normalize(x, p=2.0, dim=1, eps=layer.eps)
        gs = (backprops * normed).sum(dim=(2, 3))
        return {layer.weight: gs} if layer.weight.requires_grad else {}


_register_opacus_grad_samplers()


def no_inplace(module: nn.Module) -> nn.Module:
    """Turn every in-place activation of ``module`` into an out-of-place one."""
    for m in module.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    return module
