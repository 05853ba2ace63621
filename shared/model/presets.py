"""Architecture presets of the improved SSD: a registry ``name -> SSDConfig``.

A preset fixes everything that changes the *shape* of the network (backbone, widths,
anchors, RFPN depth); a checkpoint stores its :class:`SSDConfig` so the exact network
can be rebuilt. ``build_model(preset=..., **overrides)`` replaces single fields.

Note: this is the *architecture* config; :class:`shared.config.ModelConfig` is the
user-facing choice (preset name, weights file, fine-tuning mode) that selects one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Aspect ratios and scales of torchvision's SSD300 (6 source maps).
SSD300_ASPECT_RATIOS: tuple[tuple[int, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD300_SCALES: tuple[float, ...] = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)

#: Anchor scales fitted to polyp boxes (Kvasir-SEG: sqrt of relative box area p5 0.13,
#: median 0.39, p95 0.77; docs/RECIPE.md): finer steps where lesions are, none past 1.
LESION_SCALES: tuple[float, ...] = (0.10, 0.20, 0.32, 0.45, 0.60, 0.78, 0.96)

BACKBONES = ("vgg16", "resnet", "cpu", "efficientnet")
EFFICIENTNET_VARIANTS = ("lite0", "lite1", "lite2")
#: Normalisation of the backbone body: ``group`` (GroupNorm, training from scratch) or
#: ``folded`` (a torchvision body with its BatchNorm folded into conv biases; no norm).
BODY_NORMS = ("group", "folded")
#: Backbones whose body can be built ``folded`` (they have a torchvision counterpart).
FOLDABLE_BACKBONES = ("vgg16", "resnet")


@dataclass(frozen=True)
class SSDConfig:
    """Shape-defining hyper-parameters of :class:`~shared.model.ssd.ImprovedSSD`.

    * ``backbone``: ``vgg16`` (paper), ``resnet`` (``depth`` x ``width``),
      ``efficientnet`` (``variant`` lite0/1/2, ImageNet-pretrained) or ``cpu``
      (a small GroupNorm conv net whose stage widths are ``channels``).
    * ``extra_channels``: widths of the SSD extra layers after the backbone body.
    * ``rfb_channels``: channels of each RFB branch (32 in the paper).
    * ``fpn_channels`` / ``rfpn_steps``: RFPN width and number of unrolled passes
      (``0`` = plain SSD heads on the source maps).
    * ``aspect_ratios`` / ``scales``: anchors, as in torchvision's ``DefaultBoxGenerator``.
    * ``body_norm``: ``group`` (GroupNorm after every body conv) or ``folded`` (vgg16 /
      resnet only: the body's convs carry bias and there is no norm layer, as a
      torchvision body with its eval-mode BatchNorm folded in; ``build_model`` picks it
      for a torchvision weights file). Extras, RFPN, heads keep GroupNorm either way.
    """

    name: str
    backbone: str
    image_size: int
    depth: int = 0
    variant: str = ""
    width: int = 1
    channels: tuple[int, ...] = ()
    extra_channels: tuple[int, ...] = (512, 256, 256)
    rfb_channels: int = 32
    fpn_channels: int = 256
    rfpn_steps: int = 2
    gn_groups: int = 32
    body_norm: str = "group"
    aspect_ratios: tuple[tuple[int, ...], ...] = SSD300_ASPECT_RATIOS
    scales: tuple[float, ...] = SSD300_SCALES
    class_names: tuple[str, ...] = field(default=())

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the config is inconsistent."""
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"preset {self.name!r}: backbone must be one of {BACKBONES}, got {self.backbone!r}"
            )
        if self.backbone == "resnet" and self.depth not in RESNET_LAYERS:
            raise ValueError(
                f"preset {self.name!r}: resnet depth must be one of {sorted(RESNET_LAYERS)}, "
                f"got {self.depth}"
            )
        if self.backbone == "efficientnet" and self.variant not in EFFICIENTNET_VARIANTS:
            raise ValueError(
                f"preset {self.name!r}: efficientnet variant must be one of "
                f"{EFFICIENTNET_VARIANTS}, got {self.variant!r}"
            )
        if self.body_norm not in BODY_NORMS:
            raise ValueError(
                f"preset {self.name!r}: body_norm must be one of {BODY_NORMS}, "
                f"got {self.body_norm!r}"
            )
        if self.body_norm == "folded" and self.backbone not in FOLDABLE_BACKBONES:
            raise ValueError(
                f"preset {self.name!r}: body_norm='folded' needs a backbone in "
                f"{FOLDABLE_BACKBONES} (a torchvision body), got {self.backbone!r}"
            )
        if self.width < 1:
            raise ValueError(f"preset {self.name!r}: width must be >= 1, got {self.width}")
        if self.rfpn_steps < 0:
            raise ValueError(f"preset {self.name!r}: rfpn_steps must be >= 0")
        if self.image_size < 32:
            raise ValueError(f"preset {self.name!r}: image_size must be >= 32")
        if len(self.aspect_ratios) != 6 or len(self.scales) != 7:
            raise ValueError(
                f"preset {self.name!r}: 6 source maps need 6 aspect-ratio tuples and 7 scales, "
                f"got {len(self.aspect_ratios)} and {len(self.scales)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (safe for ``torch.load(weights_only=True)``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SSDConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SSDConfig fields {unknown}; known: {sorted(known)}")
        v = dict(values)
        for key in ("channels", "extra_channels", "scales", "class_names"):
            if key in v:
                v[key] = tuple(v[key])
        if "aspect_ratios" in v:
            v["aspect_ratios"] = tuple(tuple(a) for a in v["aspect_ratios"])
        return cls(**v)


#: Bottleneck blocks per stage for the ResNet depths of the r<depth>x<width> family.
RESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def _resnet(depth: int, width: int) -> SSDConfig:
    return SSDConfig(
        name=f"r{depth}x{width}",
        backbone="resnet",
        image_size=300,
        depth=depth,
        width=width,
        extra_channels=(512 * width, 256 * width, 256 * width),
        fpn_channels=256,
    )


PRESETS: dict[str, SSDConfig] = {
    "paper": SSDConfig(
        name="paper",
        backbone="vgg16",
        image_size=300,
        extra_channels=(512, 256, 256, 256),
        fpn_channels=256,
    ),
    **{f"r{d}x{w}": _resnet(d, w) for d in (50, 101) for w in (1, 2, 3)},
    "r152x3": _resnet(152, 3),
    "cpu": SSDConfig(
        name="cpu",
        backbone="cpu",
        image_size=160,
        channels=(16, 32, 64, 96),
        extra_channels=(96, 64, 64),
        rfb_channels=16,
        fpn_channels=64,
        rfpn_steps=2,
        gn_groups=8,
    ),
    # EfficientNet-Lite presets: ImageNet-pretrained bodies (docs/RECIPE.md).
    **{
        f"lite{n}": SSDConfig(
            name=f"lite{n}",
            backbone="efficientnet",
            variant=f"lite{n}",
            image_size=size,
            extra_channels=(192, 128, 128),
            rfb_channels=32,
            fpn_channels=96,
            rfpn_steps=2,
            gn_groups=16,
            scales=LESION_SCALES,
            aspect_ratios=((2,),) * 6,  # polyp boxes are near square (w/h p5-p95 0.5-1.3)
        )
        for n, size in ((0, 224), (1, 240), (2, 260))
    },
    "tiny": SSDConfig(
        name="tiny",
        backbone="cpu",
        image_size=96,
        channels=(8, 16, 16, 24),
        extra_channels=(24, 16, 16),
        rfb_channels=8,
        fpn_channels=16,
        rfpn_steps=1,
        gn_groups=4,
    ),
}

#: Names used by the paper that map onto a registered preset.
ALIASES: dict[str, str] = {"r150x3": "r152x3", "r100x1": "r101x1", "r100x2": "r101x2",
                           "r100x3": "r101x3"}


def get_preset(name: str) -> SSDConfig:
    """The preset registered as ``name`` (or one of its paper aliases)."""
    key = ALIASES.get(name, name)
    try:
        return PRESETS[key]
    except KeyError:
        raise ValueError(
            f"unknown model preset {name!r}; known presets: {sorted(PRESETS)} "
            f"(aliases: {sorted(ALIASES)})"
        ) from None


def available_presets() -> list[str]:
    """Registered preset names (aliases excluded)."""
    return sorted(PRESETS)
