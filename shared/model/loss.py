"""Losses of the improved SSD (paper eqs. 2-4), per image so DP-SGD stays exact.

``total_i = alpha_seg * L_seg_i + L_cls_i + L_reg_i`` where, for image ``i``:

* ``L_cls_i``: sigmoid focal loss summed over all anchors and classes, divided by the
  image's own number of positive anchors (at least 1);
* ``L_reg_i``: smooth L1 on the ``BoxCoder(10, 10, 5, 5)`` deltas of the positive
  anchors, divided by the same count (0 for an image without boxes);
* ``L_seg_i``: weighted BCE + weighted IoU of the mask (the "structure loss" of
  PraNet: pixels near the lesion boundary weigh up to 6x).

Nothing is normalised by batch-level quantities, so one image's loss (and gradient)
does not depend on the other images of the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder, SSDMatcher
from torchvision.ops import box_iou

from endofed.shared.data.collate import Batch

BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class LossOutput(NamedTuple):
    """Per-image loss terms, each of shape ``(B,)``."""

    total: torch.Tensor
    cls: torch.Tensor
    reg: torch.Tensor
    seg: torch.Tensor


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise focal loss (paper eq. 2); ``alpha < 0`` disables the alpha weight."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss


def _box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the in-image part of each ``k x k`` window (separable, exact)."""
    p = k // 2
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, p), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(p, 0), count_include_pad=False)


def structure_loss(
    mask_logits: torch.Tensor, masks: torch.Tensor, *, kernel_size: int | None = None
) -> torch.Tensor:
    """Weighted BCE + weighted IoU per image ``(B,)``; logits are resized to the masks."""
    if mask_logits.shape[-2:] != masks.shape[-2:]:
        mask_logits = F.interpolate(
            mask_logits, size=masks.shape[-2:], mode="bilinear", align_corners=False
        )
    if kernel_size is None:
        kernel_size = max(3, (masks.shape[-1] // 10) | 1)
    with torch.no_grad():
        weight = 1.0 + 5.0 * (_box_mean(masks, kernel_size) - masks).abs()
    bce = F.binary_cross_entropy_with_logits(mask_logits, masks, reduction="none")
    wbce = (weight * bce).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))
    prob = torch.sigmoid(mask_logits)
    inter = (prob * masks * weight).sum(dim=(1, 2, 3))
    union = ((prob + masks) * weight).sum(dim=(1, 2, 3))
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return wbce + wiou


@torch.no_grad()
def match_anchors(
    anchors: torch.Tensor, batch: Batch, *, iou_threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD matching per image: ``(matched_idx (B, A), matched_boxes (B, A, 4))``.

    ``matched_idx`` is the index of the ground-truth box of each anchor, ``-1`` for a
    negative (images without boxes give all ``-1``). ``matched_boxes`` holds that box
    (zeros for negatives).
    """
    matcher = SSDMatcher(iou_threshold)
    b, a = int(batch.images.shape[0]), int(anchors.shape[0])
    idx = torch.full((b, a), -1, dtype=torch.int64, device=anchors.device)
    boxes = torch.zeros((b, a, 4), dtype=anchors.dtype, device=anchors.device)
    for i in range(b):
        n = int(batch.num_boxes[i])
        if n == 0:
            continue
        gt = batch.boxes[i, :n].to(anchors)
        m = matcher(box_iou(gt, anchors))
        m = m.clamp(min=-1)  # Matcher uses -1 (below) and -2 (between); both negative here
        idx[i] = m
        pos = m >= 0
        boxes[i, pos] = gt[m[pos]]
    return idx, boxes


def compute_loss(
    outputs: dict[str, torch.Tensor],
    batch: Batch,
    anchors: torch.Tensor,
    *,
    alpha_seg: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    iou_threshold: float = 0.5,
) -> LossOutput:
    """Per-image losses of a batch (see module docstring); mean them for the step."""
    cls_logits = outputs["cls_logits"]
    bbox_reg = outputs["bbox_regression"]
    num_classes = cls_logits.shape[-1]
    anchors = anchors.to(device=cls_logits.device, dtype=bbox_reg.dtype)

    matched_idx, matched_boxes = match_anchors(anchors, batch, iou_threshold=iou_threshold)
    pos = matched_idx >= 0  # (B, A)
    num_pos = pos.sum(dim=1).clamp(min=1).to(cls_logits.dtype)

    # Class targets: one-hot of the matched box label (labels 1..K -> columns 0..K-1).
    labels = batch.labels.to(cls_logits.device)
    gathered = torch.gather(labels, 1, matched_idx.clamp(min=0)) if labels.numel() else (
        torch.zeros_like(matched_idx)
    )
    target_cls = torch.zeros_like(cls_logits)
    pos_labels = torch.where(pos, gathered - 1, torch.zeros_like(gathered))
    target_cls.scatter_(2, pos_labels.unsqueeze(-1), pos.unsqueeze(-1).to(cls_logits.dtype))
    if num_classes < 1:
        raise ValueError("cls_logits must have at least one class column")
    cls = sigmoid_focal_loss(cls_logits, target_cls, alpha=focal_alpha, gamma=focal_gamma)
    cls = cls.sum(dim=(1, 2)) / num_pos

    coder = BoxCoder(BOX_CODER_WEIGHTS)
    # Negatives regress onto their own anchor (zero deltas) so no inf/nan appears.
    matched_boxes = torch.where(pos.unsqueeze(-1), matched_boxes, anchors.unsqueeze(0))
    flat_anchors = anchors.unsqueeze(0).expand_as(matched_boxes).reshape(-1, 4)
    target_reg = coder.encode_single(matched_boxes.reshape(-1, 4), flat_anchors)
    target_reg = target_reg.view_as(bbox_reg)
    reg = F.smooth_l1_loss(bbox_reg, target_reg, reduction="none").sum(dim=2)
    reg = torch.where(pos, reg, torch.zeros_like(reg)).sum(dim=1) / num_pos

    masks = batch.masks.to(device=cls_logits.device, dtype=outputs["mask_logits"].dtype)
    seg = structure_loss(outputs["mask_logits"], masks)
    total = alpha_seg * seg + cls + reg
    return LossOutput(total=total, cls=cls, reg=reg, seg=seg)
