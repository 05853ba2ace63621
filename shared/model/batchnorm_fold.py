"""Fold eval-mode BatchNorm into the convolution before it (exact, Opacus-friendly).

A pretrained backbone computes ``BN(conv(x))`` with fixed statistics at inference.
Folding writes that affine map into the convolution (``W' = W * g / sqrt(v + eps)``,
``b' = beta + (b - mean) * g / sqrt(v + eps)``), so the network computes the same
function with no normalisation layer left: nothing for Opacus to reject, every
parameter has a per-sample gradient, and a frozen body stays exactly pretrained.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What replaces a (timm ``BatchNormAct2d``) norm: its activation, or Identity."""
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    if not parts:
        return nn.Identity()
    for m in parts:
        if hasattr(m, "inplace"):
            m.inplace = False
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every ``Conv2d`` -> ``BatchNorm2d`` pair among siblings, in place.

    Siblings are the children of one module in registration order; ``Identity``
    children between the two are skipped (timm registers ``aa``/``se`` there). The norm
    is replaced by its activation (timm's ``BatchNormAct2d``) or ``Identity``. Returns
    the number of folded pairs; a BatchNorm left unfolded raises ``ValueError``.
    """
    folded = _fold(module)
    left = [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"BatchNorm layers without a convolution to fold into: {left[:5]}")
    return folded


def _fold(module: nn.Module) -> int:
    count = 0
    children = list(module.named_children())
    last_conv: str | None = None
    for name, child in children:
        if isinstance(child, nn.Conv2d):
            last_conv = name
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and last_conv is not None:
            conv = getattr(module, last_conv)
            fused = fuse_conv_bn_eval(conv.eval(), child.eval())
            fused.train(module.training)
            setattr(module, last_conv, fused)
            setattr(module, name, _after_norm(child))
            last_conv = None
            count += 1
        elif isinstance(child, nn.Identity):
            continue
        else:
            last_conv = None
            count += _fold(child)
    return count
