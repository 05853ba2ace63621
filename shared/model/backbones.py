"""Backbones producing the six SSD source maps.

Each backbone has:

* ``body``: the part whose weights may come from a torchvision checkpoint (frozen in
  ``local`` fine-tuning). With ``config.body_norm == "group"`` (training from scratch)
  GroupNorm follows every body convolution; with ``"folded"`` (vgg16 / resnet, a
  torchvision file) the convolutions carry a bias and the body has no norm layer: the
  file's eval-mode BatchNorm is folded into them (``shared/model/weights.py``);
* ``extras``: the SSD extra layers (always trained, always GroupNorm);
* ``out_channels``: channels of the six source maps;
* :meth:`torchvision_pairs`: ``(own conv, torchvision conv, torchvision BatchNorm or
  None)`` for every body convolution a torchvision ``state_dict`` can fill.

Source map 0 is the "conv4_3" map (stride 8), map 1 "conv7", map 2 "conv8_2"; these
three feed the segmentation branch.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from endofed.shared.model.efficientnet_lite import efficientnet_lite_body, extra_block
from endofed.shared.model.layers import ConvGNReLU, L2Norm, group_norm, no_inplace
from endofed.shared.model.presets import RESNET_LAYERS, SSDConfig

NUM_SOURCE_MAPS = 6

#: ``(own conv module name, torchvision conv prefix, torchvision BatchNorm prefix | None)``
TorchvisionPair = tuple[str, str, str | None]


def _extra_block(
    in_ch: int, out_ch: int, *, groups: int, stride: int = 2, padding: int = 1
) -> nn.Sequential:
    """SSD extra layer: 1x1 reduction to ``out_ch // 2`` then a 3x3 (strided) conv."""
    mid = max(out_ch // 2, 1)
    return nn.Sequential(
        ConvGNReLU(in_ch, mid, 1, groups=groups),
        ConvGNReLU(mid, out_ch, 3, stride=stride, padding=padding, groups=groups),
    )


class SSDBackbone(nn.Module):
    """Base class: ``forward(images) -> list of 6 source maps``."""

    out_channels: list[int]
    body: nn.Module
    extras: nn.ModuleList

    def torchvision_pairs(self) -> list[TorchvisionPair]:
        """Body convolutions a torchvision ``state_dict`` fills (empty: no counterpart)."""
        return []

    def torchvision_key_map(self) -> dict[str, str]:
        """``{torchvision conv key: key in this backbone}`` for the convolution tensors
        (weight, and bias when our conv has one); BatchNorm keys are not in it."""
        own = self.state_dict()
        out = {}
        for name, tv_conv, _ in self.torchvision_pairs():
            for p in ("weight", "bias"):
                if f"{name}.{p}" in own:
                    out[f"{tv_conv}.{p}"] = f"{name}.{p}"
        return out

    def _run_extras(self, x: torch.Tensor, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        for block in self.extras:
            x = block(x)
            maps.append(x)
        return maps


def _body_conv(in_ch: int, out_ch: int, k: int = 3, *, groups: int, folded: bool,
               **kw: int) -> ConvGNReLU:
    """A body ``conv -> norm -> ReLU``; ``folded``: the norm is ``Identity`` (no norm)."""
    block = ConvGNReLU(in_ch, out_ch, k, groups=groups, **kw)
    if folded:
        block.norm = nn.Identity()
    return block


class VGG16Backbone(SSDBackbone):
    """The SSD300 VGG16 extractor (as torchvision's ``SSDFeatureExtractorVGG``).

    ``body.stage4`` ends at conv4_3 (ceil-mode pool3 as in SSD), ``body.stage7`` holds
    conv5_x, pool5 (3x3/s1), fc6 (3x3, dilation 6) and fc7 (1x1). ``l2norm`` rescales
    conv4_3. With ``body_norm="group"`` GroupNorm follows every body convolution; with
    ``"folded"`` the body has no norm at all, as torchvision's ``vgg16`` (fc6/fc7 are
    then Xavier-initialised, as torchvision's SSD does).
    """

    _CFG4: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512)
    # Index of each conv in torchvision's ``vgg16().features``.
    _TV_CONV_IDX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

    def __init__(self, config: SSDConfig) -> None:
        super().__init__()
        g = config.gn_groups
        folded = config.body_norm == "folded"
        if len(config.extra_channels) != 4:
            raise ValueError(
                f"preset {config.name!r}: the vgg16 backbone needs 4 extra_channels "
                f"(conv8_2..conv11_2), got {config.extra_channels}"
            )
        layers: list[nn.Module] = []
        self._conv_names: list[str] = []
        in_ch = 3
        for v in self._CFG4:
            if v in ("M", "C"):
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=(v == "C")))
            else:
                self._conv_names.append(f"body.stage4.{len(layers)}.conv")
                layers.append(_body_conv(in_ch, int(v), 3, groups=g, folded=folded))
                in_ch = int(v)
        stage7: list[nn.Module] = [nn.MaxPool2d(2, 2)]
        for _ in range(3):
            self._conv_names.append(f"body.stage7.{len(stage7)}.conv")
            stage7.append(_body_conv(512, 512, 3, groups=g, folded=folded))
        fc = [
            _body_conv(512, 1024, 3, padding=6, dilation=6, groups=g, folded=folded),  # fc6
            _body_conv(1024, 1024, 1, groups=g, folded=folded),  # fc7 ("conv7")
        ]
        if folded:
            for block in fc:
                nn.init.xavier_uniform_(block.conv.weight)
                nn.init.zeros_(block.conv.bias)
        stage7 += [nn.MaxPool2d(3, 1, 1), *fc]
        self.body = nn.Module()
        self.body.stage4 = nn.Sequential(*layers)
        self.body.stage7 = nn.Sequential(*stage7)
        self.l2norm = L2Norm(512)
        e = config.extra_channels
        self.extras = nn.ModuleList(
            [
                _extra_block(1024, e[0], groups=g),  # conv8_2
                _extra_block(e[0], e[1], groups=g),  # conv9_2
                _extra_block(e[1], e[2], groups=g, stride=1, padding=0),  # conv10_2
                _extra_block(e[2], e[3], groups=g, stride=1, padding=0),  # conv11_2
            ]
        )
        self.out_channels = [512, 1024, *e]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c4 = self.body.stage4(x)
        c7 = self.body.stage7(c4)
        return self._run_extras(c7, [self.l2norm(c4), c7])

    def torchvision_pairs(self) -> list[TorchvisionPair]:
        return [
            (name, f"features.{idx}", None)
            for idx, name in zip(self._TV_CONV_IDX, self._conv_names, strict=True)
        ]


class WideResNet(ResNet):
    """torchvision's ResNet (Bottleneck) with all widths times ``width``.

    Module names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``...), so a
    torchvision checkpoint maps 1:1 for ``width=1``. ``bn*`` modules (and
    ``downsample.1``) are GroupNorm; with ``folded=True`` they are ``Identity`` and every
    convolution has a bias (a torchvision ResNet with its BatchNorm folded in).
    """

    def __init__(
        self, layers: tuple[int, int, int, int], width: int, groups: int, *,
        folded: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        self._norm_layer = partial(group_norm, groups=groups)
        self.inplanes = 64 * width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(Bottleneck, 64 * width, layers[0])
        self.layer2 = self._make_layer(Bottleneck, 128 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(Bottleneck, 256 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(Bottleneck, 512 * width, layers[3], stride=2)
        no_inplace(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last norm of each residual branch (torchvision's option).
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
        if folded:
            _fold_away_norms(self)

    def torchvision_pairs(self) -> list[TorchvisionPair]:
        """``(conv, conv, its BatchNorm)`` in torchvision names (relative to this body)."""
        pairs: list[TorchvisionPair] = [("conv1", "conv1", "bn1")]
        for name, m in self.named_modules():
            if isinstance(m, Bottleneck):
                for k in (1, 2, 3):
                    pairs.append((f"{name}.conv{k}", f"{name}.conv{k}", f"{name}.bn{k}"))
                if m.downsample is not None:
                    ds = f"{name}.downsample"
                    pairs.append((f"{ds}.0", f"{ds}.0", f"{ds}.1"))
        return pairs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c2, c3, c4]


def _fold_away_norms(body: nn.Module) -> None:
    """The no-norm (folded) form of a GN ResNet body: biased convs, ``Identity`` norms.

    The residual branch's last conv starts at zero (as the zero-init of its norm), so a
    folded body that is not loaded from a file still starts near the identity."""
    for parent in list(body.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.Conv2d) and child.bias is None:
                conv = nn.Conv2d(
                    child.in_channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, bias=True,
                )
                with torch.no_grad():
                    conv.weight.copy_(child.weight)
                    conv.bias.zero_()
                    if isinstance(parent, Bottleneck) and name == "conv3":
                        conv.weight.zero_()
                setattr(parent, name, conv)


class ResNetBackbone(SSDBackbone):
    """ResNet-``depth`` x ``width``: layer2/3/4 (strides 8/16/32) + 3 GN extras.

    The body is GroupNorm (``body_norm="group"``) or norm-free with biased convs
    (``"folded"``, for a torchvision file's folded BatchNorm)."""

    def __init__(self, config: SSDConfig) -> None:
        super().__init__()
        if len(config.extra_channels) != 3:
            raise ValueError(
                f"preset {config.name!r}: the resnet backbone needs 3 extra_channels, "
                f"got {config.extra_channels}"
            )
        w, g = config.width, config.gn_groups
        self.body = WideResNet(
            RESNET_LAYERS[config.depth], w, g, folded=config.body_norm == "folded"
        )
        chans = [512 * w, 1024 * w, 2048 * w]
        e = config.extra_channels
        self.extras = nn.ModuleList(
            [
                _extra_block(chans[2], e[0], groups=g),
                _extra_block(e[0], e[1], groups=g),
                _extra_block(e[1], e[2], groups=g),
            ]
        )
        self.out_channels = [*chans, *e]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.body(x)
        return self._run_extras(maps[-1], list(maps))

    def torchvision_pairs(self) -> list[TorchvisionPair]:
        return [(f"body.{own}", tv, bn) for own, tv, bn in self.body.torchvision_pairs()]


class CPUBackbone(SSDBackbone):
    """A small plain GN conv net for CPU simulations (stage widths ``config.channels``).

    Strides of the six maps: 8, 16, 32 (body) and 64, 128, 256 (extras).
    """

    def __init__(self, config: SSDConfig) -> None:
        super().__init__()
        if len(config.channels) != 4 or len(config.extra_channels) != 3:
            raise ValueError(
                f"preset {config.name!r}: the cpu backbone needs 4 channels and 3 "
                f"extra_channels, got {config.channels} and {config.extra_channels}"
            )
        c0, c1, c2, c3 = config.channels
        g = config.gn_groups
        self.body = nn.Module()
        self.body.stage8 = nn.Sequential(
            ConvGNReLU(3, c0, 3, stride=2, groups=g),
            ConvGNReLU(c0, c1, 3, stride=2, groups=g),
            ConvGNReLU(c1, c1, 3, groups=g),
            ConvGNReLU(c1, c2, 3, stride=2, groups=g),
            ConvGNReLU(c2, c2, 3, groups=g),
        )
        self.body.stage16 = nn.Sequential(
            ConvGNReLU(c2, c3, 3, stride=2, groups=g), ConvGNReLU(c3, c3, 3, groups=g)
        )
        self.body.stage32 = nn.Sequential(ConvGNReLU(c3, c3, 3, stride=2, groups=g))
        e = config.extra_channels
        self.extras = nn.ModuleList(
            [
                _extra_block(c3, e[0], groups=g),
                _extra_block(e[0], e[1], groups=g),
                _extra_block(e[1], e[2], groups=g),
            ]
        )
        self.out_channels = [c2, c3, c3, *e]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s8 = self.body.stage8(x)
        s16 = self.body.stage16(s8)
        s32 = self.body.stage32(s16)
        return self._run_extras(s32, [s8, s16, s32])


class EfficientNetBackbone(SSDBackbone):
    """EfficientNet-Lite (``config.variant``) body, BatchNorm folded, + 3 GN extras.

    Strides of the six maps: 8, 16, 32 (body) and 64, 128, 256 (extras). The body is
    built with random weights; :meth:`load_pretrained` puts the packaged ImageNet
    weights in (``build_model`` does that for ``weights-path=auto|pretrained``).
    """

    def __init__(self, config: SSDConfig) -> None:
        super().__init__()
        if len(config.extra_channels) != 3:
            raise ValueError(
                f"preset {config.name!r}: the efficientnet backbone needs 3 extra_channels, "
                f"got {config.extra_channels}"
            )
        self.variant = config.variant
        self.body = efficientnet_lite_body(config.variant, pretrained=False)
        g, e = config.gn_groups, config.extra_channels
        c = self.body.out_channels
        self.extras = nn.ModuleList(
            [
                extra_block(c[2], e[0], groups=g),
                extra_block(e[0], e[1], groups=g),
                extra_block(e[1], e[2], groups=g),
            ]
        )
        self.out_channels = [*c, *e]

    def load_pretrained(self) -> int:
        """Replace the body by the folded ImageNet body; returns the tensors loaded."""
        state = efficientnet_lite_body(self.variant, pretrained=True).state_dict()
        device = next(self.body.parameters()).device
        self.body.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
        return len(state)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.body(x)
        return self._run_extras(maps[-1], list(maps))


BACKBONE_BUILDERS: dict[str, type[SSDBackbone]] = {
    "vgg16": VGG16Backbone,
    "resnet": ResNetBackbone,
    "cpu": CPUBackbone,
    "efficientnet": EfficientNetBackbone,
}


def build_backbone(config: SSDConfig) -> SSDBackbone:
    """Instantiate the backbone named by ``config.backbone``."""
    return BACKBONE_BUILDERS[config.backbone](config)
