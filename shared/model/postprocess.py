"""From raw outputs to detections, mask probabilities and image-level probabilities."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, clip_boxes_to_image

from endofed.shared.model.loss import BOX_CODER_WEIGHTS


class PostprocessOutput(NamedTuple):
    """Per-image detections plus dense outputs.

    * ``detections``: one dict per image with ``boxes (N, 4)`` XYXY input pixels,
      ``labels (N,)`` in ``1..K`` and ``scores (N,)``.
    * ``mask_prob``: ``(B, 1, S, S)`` lesion probability at input resolution.
    * ``image_probs``: ``(B, K + 1)``; column ``k >= 1`` is the probability that some
      lesion of class ``k`` is present (anchor scores combined with the mask branch, see
      :func:`image_probabilities`), column 0 ("normal") is ``1 - max_k p_k``. Rows are
      one-vs-rest scores and need not sum to 1; the predicted class is the row's argmax.
    """

    detections: list[dict[str, torch.Tensor]]
    mask_prob: torch.Tensor
    image_probs: torch.Tensor


def image_probabilities(
    cls_logits: torch.Tensor, mask_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, A, K)`` logits (and ``(B, 1, h, w)`` mask logits) -> ``(B, K + 1)`` scores.

    Detection evidence for class ``k`` is its highest anchor score ``s_k``. Focal-loss
    scores are deliberately low (easy negatives are down-weighted), so on their own they
    rarely cross 0.5; the segmentation branch is trained with (weighted) BCE and its peak
    pixel probability ``m`` is a better-calibrated "a lesion is present" signal. With
    mask logits, the top class gets ``max(s_top, m)`` and the others are scaled by the same
    factor: ``p_k = s_k * max(1, m / s_top)``. Normal is ``1 - max_k p_k``.
    """
    lesion = torch.sigmoid(cls_logits).amax(dim=1)  # (B, K)
    if mask_logits is not None:
        m = torch.sigmoid(mask_logits).flatten(1).amax(dim=1, keepdim=True)  # (B, 1)
        top = lesion.amax(dim=1, keepdim=True).clamp_min(1e-12)
        lesion = (lesion * torch.clamp(m / top, min=1.0)).clamp(max=1.0)
    normal = 1.0 - lesion.amax(dim=1, keepdim=True)
    return torch.cat([normal, lesion], dim=1)


@torch.no_grad()
def postprocess(
    outputs: dict[str, torch.Tensor],
    anchors: torch.Tensor,
    image_size: int | tuple[int, int],
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.45,
    max_detections: int = 100,
    topk_candidates: int = 400,
) -> PostprocessOutput:
    """Decode boxes, keep scores above ``score_thresh``, per-class NMS, top detections."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    cls_logits, bbox_reg = outputs["cls_logits"], outputs["bbox_regression"]
    num_classes = cls_logits.shape[-1]
    coder = BoxCoder(BOX_CODER_WEIGHTS)
    anchors = anchors.to(bbox_reg)
    detections = []
    for logits, deltas in zip(cls_logits, bbox_reg, strict=True):
        boxes = clip_boxes_to_image(coder.decode_single(deltas, anchors), size)
        scores = torch.sigmoid(logits).flatten()  # (A * K), anchor-major
        keep = torch.nonzero(scores > score_thresh).squeeze(1)
        if keep.numel() > topk_candidates:
            top = scores[keep].topk(topk_candidates).indices
            keep = keep[top]
        anchor_idx = torch.div(keep, num_classes, rounding_mode="floor")
        labels = keep % num_classes
        cand_boxes, cand_scores = boxes[anchor_idx], scores[keep]
        kept = batched_nms(cand_boxes, cand_scores, labels, nms_thresh)[:max_detections]
        detections.append(
            {"boxes": cand_boxes[kept], "labels": labels[kept] + 1, "scores": cand_scores[kept]}
        )
    mask_prob = torch.sigmoid(
        F.interpolate(outputs["mask_logits"], size=size, mode="bilinear", align_corners=False)
    )
    return PostprocessOutput(
        detections, mask_prob, image_probabilities(cls_logits, outputs["mask_logits"])
    )
