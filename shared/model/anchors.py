"""Default boxes from torchvision's ``DefaultBoxGenerator``, as XYXY pixels."""

from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList


def anchors_per_location(aspect_ratios: tuple[tuple[int, ...], ...]) -> list[int]:
    """Anchors per feature-map cell for each level (``2 + 2 * len(ratios)``)."""
    return DefaultBoxGenerator([list(a) for a in aspect_ratios]).num_anchors_per_location()


def generate_anchors(
    feature_sizes: list[tuple[int, int]],
    image_size: int,
    aspect_ratios: tuple[tuple[int, ...], ...],
    scales: tuple[float, ...],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """All default boxes ``(A, 4)`` XYXY in pixels of a square ``image_size`` input.

    Order: level, then cell (row-major), then anchor, matching the prediction head.
    """
    gen = DefaultBoxGenerator([list(a) for a in aspect_ratios], scales=list(scales))
    images = torch.zeros((1, 3, image_size, image_size), dtype=dtype, device=device)
    feats = [torch.zeros((1, 1, h, w), dtype=dtype, device=device) for h, w in feature_sizes]
    (boxes,) = gen(ImageList(images, [(image_size, image_size)]), feats)
    return boxes
