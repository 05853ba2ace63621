"""All-tensor batches with padded boxes, safe for Opacus' Poisson sampling.

A dataset item is a fixed-shape tuple (see :class:`DetectionItem`), so both
``torch.utils.data.default_collate`` and Opacus' empty-batch wrapper work; our own
:func:`collate_detection` additionally builds an empty :class:`Batch` of the right
shapes when the sampler draws no sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """A batch of ``B`` images padded to ``M`` boxes each.

    * ``images``: ``(B, 3, S, S)`` float, normalised.
    * ``masks``: ``(B, 1, S, S)`` float in {0, 1}.
    * ``boxes``: ``(B, M, 4)`` float XYXY in pixels of the ``S x S`` input.
    * ``labels``: ``(B, M)`` int64, ``1..K``; ``0`` marks padding.
    * ``num_boxes``: ``(B,)`` int64, valid boxes per image.
    * ``image_labels``: ``(B,)`` int64, image-level class (0 = normal).
    * ``morphology``: ``(B, M)`` int64 index into the dataset's morphology names,
      ``-1`` for unknown or padding.
    """

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    num_boxes: torch.Tensor
    image_labels: torch.Tensor
    morphology: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.images.shape[0])

    def targets(self) -> list[dict[str, torch.Tensor]]:
        """Per-image unpadded targets (``boxes``, ``labels``, ``morphology``)."""
        out = []
        for i in range(int(self.images.shape[0])):
            n = int(self.num_boxes[i])
            out.append(
                {
                    "boxes": self.boxes[i, :n],
                    "labels": self.labels[i, :n],
                    "morphology": self.morphology[i, :n],
                }
            )
        return out


# A dataset item is the per-sample slice of a Batch (same order, no batch dimension).
DetectionItem = tuple[torch.Tensor, ...]


def empty_batch(image_size: int, max_boxes: int) -> Batch:
    """A batch with zero images and the shapes a non-empty batch would have."""
    s = image_size
    return Batch(
        images=torch.zeros((0, 3, s, s)),
        masks=torch.zeros((0, 1, s, s)),
        boxes=torch.zeros((0, max_boxes, 4)),
        labels=torch.zeros((0, max_boxes), dtype=torch.int64),
        num_boxes=torch.zeros((0,), dtype=torch.int64),
        image_labels=torch.zeros((0,), dtype=torch.int64),
        morphology=torch.zeros((0, max_boxes), dtype=torch.int64),
    )


def collate_detection(
    items: Sequence[DetectionItem], *, image_size: int, max_boxes: int
) -> Batch:
    """Stack fixed-shape items into a :class:`Batch`; an empty list gives an empty batch.

    Use with ``functools.partial(collate_detection, image_size=S, max_boxes=M)``.
    """
    if len(items) == 0:
        return empty_batch(image_size, max_boxes)
    return Batch(*(torch.stack([it[k] for it in items]) for k in range(len(Batch._fields))))
