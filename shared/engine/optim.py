"""Optimiser and learning-rate schedule registries (name -> builder)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from endofed.shared.config import ConfigError, TrainConfig

ParamGroups = list[dict[str, object]]
OptimizerBuilder = Callable[[ParamGroups, TrainConfig], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c.learning_rate, weight_decay=c.weight_decay),
    "adam": lambda p, c: torch.optim.Adam(p, lr=c.learning_rate, weight_decay=c.weight_decay),
    "sgd": lambda p, c: torch.optim.SGD(
        p, lr=c.learning_rate, momentum=c.momentum, weight_decay=c.weight_decay
    ),
}


def param_groups(
    model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter], config: TrainConfig
) -> ParamGroups:
    """The trainable parameters as optimiser groups.

    For a model whose backbone body holds pretrained weights (``pretrained_body``, set
    by ``build_model``), the body gets ``learning-rate x backbone-lr-scale`` and the new
    layers the full rate: fine-tuning moves ImageNet features less than it trains the
    detector. Plain parameter iterables (or a body trained from scratch) give one group.
    """
    if not isinstance(model_or_params, torch.nn.Module):
        return [{"params": [p for p in model_or_params if p.requires_grad]}]
    model = model_or_params
    inner = model
    while hasattr(inner, "_module"):  # Opacus GradSampleModule
        inner = inner._module
    named = [(n, p) for n, p in inner.named_parameters() if p.requires_grad]
    scale = config.backbone_lr_scale
    if not getattr(inner, "pretrained_body", False) or scale == 1.0:
        return [{"params": [p for _, p in named]}]
    body = [p for n, p in named if n.startswith("backbone.body.")]
    rest = [p for n, p in named if not n.startswith("backbone.body.")]
    groups: ParamGroups = [{"params": rest}]
    if body:
        groups.append({"params": body, "lr": config.learning_rate * scale})
    return groups


def build_optimizer(
    model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter], config: TrainConfig
) -> torch.optim.Optimizer:
    """Build the optimiser named by ``config.optimizer`` (groups: :func:`param_groups`)."""
    try:
        builder = OPTIMIZERS[config.optimizer]
    except KeyError:
        raise ConfigError(
            f"config key 'optimizer': unknown {config.optimizer!r}; "
            f"choose one of {sorted(OPTIMIZERS)}"
        ) from None
    return builder(param_groups(model_or_params, config), config)


def effective_warmup(warmup: int, total: int) -> int:
    """``warmup-steps``, but at most a tenth of the schedule: a short schedule (a small
    DP site's round has a dozen steps) must not spend itself warming up."""
    return min(int(warmup), max(0, int(total) // 10))


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _constant(step: int, total: int, warmup: int) -> float:
    return (step + 1) / max(1, warmup) if step < warmup else 1.0


SCHEDULES: dict[str, Callable[[int, int, int], float]] = {
    "cosine": _cosine,
    "constant": _constant,
}


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int,
    *, start_step: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR multiplier from ``config.lr_schedule`` with linear warm-up
    (:func:`effective_warmup` steps).

    ``start_step`` places this run of steps inside a longer schedule of
    ``total_steps``: a federated round continues the study's warm-up and decay where
    the previous round left them (:func:`study_schedule_span`).
    """
    try:
        fn = SCHEDULES[config.lr_schedule]
    except KeyError:
        raise ConfigError(
            f"config key 'lr-schedule': unknown {config.lr_schedule!r}; "
            f"choose one of {sorted(SCHEDULES)}"
        ) from None
    warmup = effective_warmup(config.warmup_steps, max(1, total_steps))
    start = max(0, int(start_step))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: fn(s + start, max(1, total_steps), warmup)
    )


def study_schedule_span(
    server_round: int, num_rounds: int, steps_per_round: int
) -> tuple[int, int]:
    """``(start_step, total_steps)`` of round ``server_round`` (1-based) of a study.

    One warm-up and one decay over all rounds, not one per round: with a short round
    (a small hospital has few steps) a per-round warm-up would never reach the full
    rate, and a per-round cosine would restart the decay every round.
    """
    r = min(max(1, int(server_round)), max(1, int(num_rounds)))
    per = max(1, int(steps_per_round))
    return (r - 1) * per, max(1, int(num_rounds)) * per
