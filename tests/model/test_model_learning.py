"""The tiny preset must actually learn: overfit a few drawn lesions (boxes + masks)."""

from __future__ import annotations

import torch
from torchmetrics.detection import MeanAveragePrecision

from endofed.shared.model import build_model


def _dice(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = (prob > 0.5).float()
    inter = (pred * target).sum(dim=(1, 2, 3))
    return 2 * inter / (pred.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)))


def test_tiny_overfits_synthetic_lesions(lesion_batch) -> None:
    torch.manual_seed(0)
    batch = lesion_batch(6, 96, seed=1)
    model = build_model(preset="tiny", num_classes=2, image_size=96)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model.compute_loss(model(batch.images), batch).total.mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first

    model.eval()
    with torch.no_grad():
        pp = model.postprocess(model(batch.images))
    metric = MeanAveragePrecision(iou_thresholds=[0.5])
    metric.update(pp.detections, batch.targets())
    assert metric.compute()["map_50"].item() >= 0.8
    assert _dice(pp.mask_prob, batch.masks).mean().item() >= 0.7


def test_loss_drops_quickly(lesion_batch) -> None:
    """Short variant: 30 Adam steps cut the loss by more than half."""
    torch.manual_seed(0)
    batch = lesion_batch(4, 64, seed=2)
    model = build_model(preset="tiny", num_classes=2, image_size=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model.compute_loss(model(batch.images), batch).total.mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
