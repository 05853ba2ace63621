"""Opacus compatibility: per-sample gradients exist, are exact and independent."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule

from endofed.shared.data.collate import Batch
from endofed.shared.model import build_model

BOXES = [
    [(10, 10, 40, 50, 1)],
    [(50, 20, 90, 60, 2), (5, 60, 30, 90, 1)],
    [],
]


def _slice(batch: Batch, i: int) -> Batch:
    return Batch(*(t[i : i + 1] for t in batch))


def _per_sample_grads(model, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gsm = GradSampleModule(model, loss_reduction="sum")
    loss = model.compute_loss(gsm(batch.images), batch)
    loss.total.sum().backward()
    grads = {n: p.grad_sample.detach().clone() for n, p in model.named_parameters()
             if p.requires_grad}
    gsm._close()
    return loss.total.detach(), grads


@pytest.mark.parametrize("preset", ["tiny", "lite0"])
@pytest.mark.parametrize("finetune", ["global", "local", "heads"])
def test_every_trainable_param_gets_exact_grad_sample(
    batch_factory, finetune: str, preset: str
) -> None:
    torch.manual_seed(0)
    model = build_model(preset=preset, num_classes=2, image_size=96, finetune=finetune)
    batch = batch_factory(BOXES, 96)
    gsm = GradSampleModule(model, loss_reduction="sum")
    model.compute_loss(gsm(batch.images), batch).total.sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad_sample is not None, name
            assert p.grad_sample.shape == (3, *p.shape), name
        else:
            assert getattr(p, "grad_sample", None) is None, name
    per_sample = {n: p.grad_sample.clone() for n, p in model.named_parameters() if p.requires_grad}
    gsm._close()

    # Each per-sample gradient equals the gradient of that image alone.
    for i in range(3):
        model.zero_grad()
        model.compute_loss(model(batch.images[i : i + 1]), _slice(batch, i)).total.sum().backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(per_sample[n][i], p.grad, rtol=1e-3, atol=1e-5,
                                           msg=lambda m, n=n, i=i: f"{n}[{i}]: {m}")


@pytest.mark.parametrize("preset", ["tiny", "lite0"])
def test_image_loss_and_grad_do_not_depend_on_the_rest_of_the_batch(
    batch_factory, preset: str
) -> None:
    torch.manual_seed(0)
    model = build_model(preset=preset, num_classes=2, image_size=96)
    a = batch_factory(BOXES, 96, seed=1)
    other = [[(0, 0, 90, 90, 2), (30, 30, 60, 60, 2)], [], [(20, 20, 30, 30, 1)]]
    b = batch_factory(other, 96, seed=2)
    # Same image 0 and its targets; images 1 and 2 entirely different.
    mixed = Batch(*(torch.cat([ta[:1], tb[1:]]) for ta, tb in zip(a, b, strict=True)))
    loss_a, grads_a = _per_sample_grads(model, a)
    model.zero_grad()
    loss_m, grads_m = _per_sample_grads(model, mixed)
    torch.testing.assert_close(loss_a[0], loss_m[0])
    assert not torch.allclose(loss_a[1:], loss_m[1:])
    for n in grads_a:
        torch.testing.assert_close(grads_a[n][0], grads_m[n][0], rtol=1e-4, atol=1e-6)


def test_paper_l2norm_gets_grad_sample(batch_factory) -> None:
    """The L2Norm scale of conv4_3 is a leaf with its own per-sample gradient."""
    model = build_model(preset="paper", num_classes=1, finetune="local")
    batch = batch_factory([[(40, 40, 120, 150, 1)], []], 300)
    gsm = GradSampleModule(model, loss_reduction="sum")
    model.compute_loss(gsm(batch.images), batch).total.sum().backward()
    w = model.backbone.l2norm.weight
    assert w.requires_grad and w.grad_sample.shape == (2, 512)
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and getattr(p, "grad_sample", None) is None]
    assert not missing
    # Per-sample gradients sum to the batch gradient.
    torch.testing.assert_close(w.grad_sample.sum(0), w.grad, rtol=1e-4, atol=1e-6)
    gsm._close()
