"""Loss terms: focal equals torchvision's, per-image normalisation, empty images."""

from __future__ import annotations

import math

import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from endofed.shared.model import build_model, compute_loss, sigmoid_focal_loss, structure_loss
from endofed.shared.model.loss import match_anchors


def test_focal_matches_torchvision_and_hand_values() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.5], [3.0, -4.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    ours = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    ref = tv_focal(logits, targets, alpha=0.25, gamma=2.0, reduction="none")
    torch.testing.assert_close(ours, ref)
    # Hand value at logit 0, target 1: alpha * (1 - 0.5)^2 * ln 2.
    assert math.isclose(ours[0, 0].item(), 0.25 * 0.25 * math.log(2), rel_tol=1e-6)
    # logit 2, target 0: (1 - alpha) * p^2 * -log(1 - p), p = sigmoid(2).
    p = 1 / (1 + math.exp(-2.0))
    assert math.isclose(ours[0, 1].item(), 0.75 * p**2 * -math.log(1 - p), rel_tol=1e-6)


def _zero_outputs(model, batch) -> dict[str, torch.Tensor]:
    b, a, k = len(batch), model.anchors.shape[0], model.num_classes
    h = model.config.image_size // 8
    return {
        "cls_logits": torch.zeros(b, a, k, requires_grad=True),
        "bbox_regression": torch.zeros(b, a, 4, requires_grad=True),
        "mask_logits": torch.zeros(b, 1, h, h, requires_grad=True),
        "attention": torch.zeros(b, 1, h, h),
    }


def test_detection_terms_are_normalised_per_image(batch_factory) -> None:
    model = build_model(preset="tiny", num_classes=2, image_size=96)
    anchor = model.anchors[100].tolist()
    batch = batch_factory([[(*anchor, 2)], []], 96)
    outputs = _zero_outputs(model, batch)
    loss = compute_loss(outputs, batch, model.anchors)
    a, k = model.anchors.shape[0], 2
    idx, _ = match_anchors(model.anchors, batch)
    assert idx[0, 100] == 0 and (idx[1] == -1).all()
    n_pos = int((idx[0] >= 0).sum())
    unit = 0.25 * math.log(2)  # (1 - p_t)^2 * CE at logit 0
    # Image 0: positives contribute alpha, negatives (1 - alpha); divided by its own count.
    expected0 = (n_pos * 0.25 + (a * k - n_pos) * 0.75) * unit / n_pos
    expected1 = a * k * 0.75 * unit  # no boxes: divided by max(0, 1) = 1
    torch.testing.assert_close(loss.cls, torch.tensor([expected0, expected1]))
    assert loss.reg[1].item() == 0.0
    assert loss.reg[0].item() > 0.0  # zero deltas are wrong for all but the exact anchor
    assert loss.total.shape == loss.seg.shape == (2,)
    torch.testing.assert_close(loss.total, loss.seg + loss.cls + loss.reg)
    scaled = compute_loss(outputs, batch, model.anchors, alpha_seg=3.0)
    torch.testing.assert_close(scaled.total, 3 * loss.seg + loss.cls + loss.reg)


def test_images_without_lesions_train(batch_factory) -> None:
    model = build_model(preset="tiny", num_classes=3, image_size=64)
    batch = batch_factory([[], [], []], 64)
    loss = model.compute_loss(model(batch.images), batch)
    assert torch.isfinite(loss.total).all()
    assert (loss.reg == 0).all()
    loss.total.mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_structure_loss_orders_predictions() -> None:
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 10:40, 20:50] = 1.0
    good = (mask * 2 - 1) * 12.0
    bad = -good
    lg, lb = structure_loss(good, mask), structure_loss(bad, mask)
    assert lg.shape == (2,)
    assert lg[0] < 0.01 and (lb > 1.0).all()
    assert lg[1] < 0.05  # empty mask: the smoothed IoU term decays like 1 / (1 + sum p)
    # Low-resolution logits are upsampled to the mask size.
    low = torch.nn.functional.avg_pool2d(good, 8)
    assert structure_loss(low, mask)[0] < 0.5 * lb[0]


def test_boundary_weights_use_an_exact_box_mean() -> None:
    from endofed.shared.model.loss import _box_mean

    x = (torch.rand(2, 1, 40, 37, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    ref = torch.nn.functional.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
    torch.testing.assert_close(_box_mean(x, 9), ref)
