"""The improved SSD: backbone + segmentation branch/attention + RFPN + SSD head."""

from __future__ import annotations

import torch
from torch import nn

from endofed.shared.data.collate import Batch
from endofed.shared.model.anchors import anchors_per_location, generate_anchors
from endofed.shared.model.backbones import NUM_SOURCE_MAPS, build_backbone
from endofed.shared.model.head import SSDPredictionHead
from endofed.shared.model.loss import LossOutput, compute_loss
from endofed.shared.model.postprocess import PostprocessOutput, postprocess
from endofed.shared.model.presets import SSDConfig
from endofed.shared.model.rfpn import RecursiveFPN
from endofed.shared.model.segmentation import SegmentationBranch

FINETUNE_MODES = ("global", "local", "heads")


class ImprovedSSD(nn.Module):
    """Improved SSD of the paper (section 2.2) for ``num_classes`` lesion classes.

    ``forward(images (B, 3, S, S))`` returns a dict:

    * ``cls_logits (B, A, K)``: sigmoid logits, no background column;
    * ``bbox_regression (B, A, 4)``: ``BoxCoder(10, 10, 5, 5)`` deltas to ``anchors``;
    * ``mask_logits (B, 1, h, w)``: lesion mask at source-map-0 resolution;
    * ``attention (B, 1, h, w)``: the attention multiplied into source map 0.

    ``anchors`` is an ``(A, 4)`` XYXY pixel buffer for ``config.image_size``; the
    forward pass is shape-static (traceable / ONNX-exportable).
    """

    anchors: torch.Tensor

    def __init__(self, config: SSDConfig, num_classes: int) -> None:
        super().__init__()
        config.validate()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (lesion classes), got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.finetune = "global"
        # True once pretrained weights are in the backbone body (build_model sets it);
        # the optimiser then gives the body a lower learning rate.
        self.pretrained_body = False
        g = config.gn_groups
        self.backbone = build_backbone(config)
        self.segmentation = SegmentationBranch(
            self.backbone.out_channels[:3], config.rfb_channels, groups=g
        )
        head_in = list(self.backbone.out_channels)
        self.rfpn: RecursiveFPN | None = None
        if config.rfpn_steps > 0:
            self.rfpn = RecursiveFPN(head_in, config.fpn_channels, config.rfpn_steps, groups=g)
            head_in = self.rfpn.out_channels
        self.head = SSDPredictionHead(
            head_in, anchors_per_location(config.aspect_ratios), num_classes
        )
        self._anchor_cache: dict[int, torch.Tensor] = {}
        self.register_buffer("anchors", self.anchors_for(config.image_size), persistent=False)

    # ------------------------------------------------------------------ shapes
    def feature_sizes(self, image_size: int) -> list[tuple[int, int]]:
        """Spatial sizes of the six source maps for an ``image_size`` input.

        Computed by a shape-only pass on the ``meta`` device (no real compute).
        """
        meta = {
            k: torch.empty_like(v, device="meta")
            for k, v in [*self.backbone.named_parameters(), *self.backbone.named_buffers()]
        }
        x = torch.empty((1, 3, image_size, image_size), device="meta")
        try:
            with torch.no_grad():
                maps = torch.func.functional_call(self.backbone, meta, (x,))
        except RuntimeError as exc:
            raise ValueError(
                f"preset {self.config.name!r}: image size {image_size} is too small for "
                f"its backbone ({exc})"
            ) from None
        sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        if len(sizes) != NUM_SOURCE_MAPS or min(min(s) for s in sizes) < 1:
            raise ValueError(
                f"preset {self.config.name!r}: image size {image_size} gives source maps "
                f"{sizes}; need {NUM_SOURCE_MAPS} non-empty maps"
            )
        return sizes

    def anchors_for(self, image_size: int) -> torch.Tensor:
        """Anchors ``(A, 4)`` XYXY pixels for a square ``image_size`` input (cached)."""
        if image_size not in self._anchor_cache:
            device = next(self.parameters()).device
            sizes = self.feature_sizes(image_size)
            if device.type == "meta":  # shape-only model (e.g. to count parameters)
                per_loc = anchors_per_location(self.config.aspect_ratios)
                n = sum(h * w * a for (h, w), a in zip(sizes, per_loc, strict=True))
                anchors = torch.empty((n, 4), device=device)
            else:
                anchors = generate_anchors(
                    sizes, image_size, self.config.aspect_ratios, self.config.scales,
                    device=device,
                )
            self._anchor_cache[image_size] = anchors
        anchors = self._anchor_cache[image_size]
        buf = self._buffers.get("anchors")
        return anchors.to(buf.device) if buf is not None else anchors

    # ----------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.backbone(images)
        mask_logits, attention = self.segmentation(maps[:3])
        maps = [maps[0] * attention, *maps[1:]]  # paper eq. 1
        if self.rfpn is not None:
            maps = self.rfpn(maps)
        cls_logits, bbox_regression = self.head(maps)
        return {
            "cls_logits": cls_logits,
            "bbox_regression": bbox_regression,
            "mask_logits": mask_logits,
            "attention": attention,
        }

    # ------------------------------------------------------------- utilities
    def compute_loss(
        self, outputs: dict[str, torch.Tensor], batch: Batch, **kwargs: float
    ) -> LossOutput:
        """:func:`shared.model.loss.compute_loss` with anchors for the input size."""
        size = int(batch.images.shape[-1])
        anchors = self.anchors if size == self.config.image_size else self.anchors_for(size)
        return compute_loss(outputs, batch, anchors, **kwargs)

    def postprocess(
        self,
        outputs: dict[str, torch.Tensor],
        *,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.45,
        max_detections: int = 100,
        image_size: int | None = None,
    ) -> PostprocessOutput:
        """Detections (per-class NMS), mask probabilities and image-level probabilities."""
        size = image_size or self.config.image_size
        anchors = self.anchors if size == self.config.image_size else self.anchors_for(size)
        if anchors.shape[0] != outputs["cls_logits"].shape[1]:
            raise ValueError(
                f"outputs have {outputs['cls_logits'].shape[1]} anchors but the model has "
                f"{anchors.shape[0]} for image size {size}; pass image_size= the input size"
            )
        return postprocess(
            outputs,
            anchors,
            size,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            max_detections=max_detections,
        )

    def frozen_modules(self, mode: str = "local") -> list[nn.Module]:
        """Modules a fine-tuning ``mode`` freezes.

        ``local``: the pretrained backbone body. ``heads``: also the extra layers, the
        RFPN and the segmentation branch's RFBs, so only the box/class heads and the
        mask decoder train (about 0.18 M parameters at lite0 instead of 1.6 M): under
        DP-SGD the noise then spreads over far fewer coordinates. ``heads`` is meant for
        a model whose new layers were already trained (a public warm start).
        """
        if mode == "global":
            return []
        frozen: list[nn.Module] = [self.backbone.body]
        if mode == "heads":
            frozen += [self.backbone.extras, self.rfpn, self.segmentation.rfbs]
        return frozen

    def set_finetune(self, mode: str) -> None:
        """``global``: everything trains; ``local``: the backbone body is frozen;
        ``heads``: only the detection heads and the mask decoder train."""
        if mode not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {mode!r}")
        for p in self.parameters():
            p.requires_grad_(True)
        for m in self.frozen_modules(mode):
            for p in m.parameters():
                p.requires_grad_(False)
        self.finetune = mode

    def trainable_names(self) -> list[str]:
        """Names (``state_dict`` keys) of what trains and what the federation sends."""
        return [n for n, p in self.named_parameters() if p.requires_grad]
