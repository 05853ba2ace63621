"""The learning-rate schedule: one warm-up and one decay over a whole study."""

from __future__ import annotations

import math

import pytest
import torch

from endofed.shared.config import TrainConfig
from endofed.shared.engine import build_optimizer, build_scheduler, study_schedule_span
from endofed.shared.model import build_model


def _lrs(cfg: TrainConfig, total: int, start: int, steps: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.learning_rate)
    sched = build_scheduler(opt, cfg, total, start_step=start)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _reference(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up, then cosine from 1 to 0.05 (hand-written)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def test_rounds_are_slices_of_one_study_schedule() -> None:
    cfg = TrainConfig(learning_rate=0.1, warmup_steps=5, lr_schedule="cosine")
    rounds, per_round = 4, 20
    whole = _lrs(cfg, rounds * per_round, 0, rounds * per_round)
    sliced = []
    for r in range(1, rounds + 1):
        start, total = study_schedule_span(r, rounds, per_round)
        assert (start, total) == ((r - 1) * per_round, rounds * per_round)
        sliced += _lrs(cfg, total, start, per_round)
    assert sliced == pytest.approx(whole)
    assert whole == pytest.approx([_reference(s, 80, 5, 0.1) for s in range(80)])
    # later rounds do not warm up again (a restart would begin at lr / warmup = 0.02)
    assert all(sliced[r * per_round] > 0.05 for r in (1, 2))


def test_warmup_is_capped_at_a_tenth_of_a_short_schedule() -> None:
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=100)
    lrs = _lrs(cfg, 30, 0, 30)  # 100 warm-up steps would never reach the full rate
    assert lrs == pytest.approx([_reference(s, 30, 3, 1.0) for s in range(30)])
    assert max(lrs) == pytest.approx(1.0)


def test_pretrained_body_gets_the_lower_rate() -> None:
    cfg = TrainConfig(learning_rate=1e-3, backbone_lr_scale=0.1)
    model = build_model(preset="lite0", num_classes=1, image_size=64)
    groups = build_optimizer(model, cfg).param_groups
    body = {id(p) for p in model.backbone.body.parameters()}
    rates = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert all(rates[i] == pytest.approx(1e-4) for i in body)
    assert all(r == pytest.approx(1e-3) for i, r in rates.items() if i not in body)
    assert len(rates) == sum(1 for p in model.parameters() if p.requires_grad)
    scratch = build_model(preset="lite0", num_classes=1, image_size=64, weights_path="none")
    assert len(build_optimizer(scratch, cfg).param_groups) == 1  # nothing pretrained
