"""ONNX export of the improved SSD's forward pass (postprocessing stays in Python)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from endofed.shared.model.weights import unwrap

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("cls_logits", "bbox_regression", "mask_logits", "attention")


class TensorOutputs(nn.Module):
    """Wraps the model so ``forward`` returns the output tensors as a tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(out[k] for k in OUTPUT_NAMES)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: int | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` (eval mode, on its device) to ``path``; input ``images``
    ``(B, 3, S, S)``, outputs named as :data:`OUTPUT_NAMES`."""
    m = unwrap(model)
    size = image_size or m.config.image_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(m.parameters()).device
    was_training = m.training
    m.eval()
    dummy = torch.zeros((1, 3, size, size), device=device)
    axes = {n: {0: "batch"} for n in ("images", *OUTPUT_NAMES)} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            # GroupNorm's batch-size sanity check is traced as a constant: harmless.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                TensorOutputs(m),
                (dummy,),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=axes,
                opset_version=opset,
            )
    finally:
        m.train(was_training)
    log.info("exported %s (%s, %d px) to %s", type(m).__name__, m.config.name, size, path)
    return path
