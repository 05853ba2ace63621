"""Local training and evaluation of one round at a site (the single code path).

Differential privacy plugs in through :data:`TRAINER_FACTORIES`: the privacy layer
registers a factory that wraps model, optimiser and loader with Opacus and returns
the same :class:`~shared.engine.Trainer`; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from endofed.client.runtime import SiteRuntime
from endofed.shared.engine import Trainer, evaluate
from endofed.shared.metrics import MetricAccumulator
from endofed.shared.model import load_trainable_state, trainable_state

log = logging.getLogger(__name__)

class BudgetExhausted(RuntimeError):
    """The site's next round would exceed its privacy budget: it declines to train.

    ``metrics`` (e.g. ``epsilon-spent``, ``epsilon-target``) go into the decline reply.
    """

    def __init__(self, message: str, metrics: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.metrics = dict(metrics or {})


# (runtime, round config) -> (trainer, loader, extra reply metrics callback)
TrainerFactory = Callable[
    [SiteRuntime, Mapping[str, Any]],
    tuple[Trainer, Any, Callable[[], dict[str, float]]],
]


def plain_trainer(
    rt: SiteRuntime, round_config: Mapping[str, Any]
) -> tuple[Trainer, Any, Callable[[], dict[str, float]]]:
    """Non-private local training (optionally FedProx when the server sends a mu)."""
    train_cfg = rt.cfg.train
    mu = float(round_config.get("proximal-mu", 0.0) or 0.0)
    if mu > 0:
        train_cfg = dataclasses.replace(train_cfg, proximal_mu=mu)
    trainer = Trainer(rt.model, train_cfg, device=rt.device, progress=False)
    if mu > 0:
        trainer.set_proximal_reference()
    return trainer, rt.train_loader(), dict


TRAINER_FACTORIES: dict[str, TrainerFactory] = {"plain": plain_trainer}

#: Trainer metrics a DP site still reports: wall-clock only, nothing computed from images.
DP_SAFE_METRICS = frozenset({"train-seconds"})


def trainer_kind(rt: SiteRuntime) -> str:
    return "dp" if rt.cfg.privacy.enabled else "plain"


def load_global(rt: SiteRuntime, arrays: Mapping[str, np.ndarray]) -> None:
    """Load the global trainable weights sent by the server into the site's model."""
    load_trainable_state(rt.model, {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def local_train(
    rt: SiteRuntime, arrays: Mapping[str, np.ndarray], round_config: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train one round from the global weights; returns (trainable weights, metrics)."""
    load_global(rt, arrays)
    kind = trainer_kind(rt)
    if kind not in TRAINER_FACTORIES:
        # The privacy layer registers "dp" on import.
        import endofed.privacy.dp  # noqa: F401
    factory = TRAINER_FACTORIES[kind]
    trainer, loader, extra_metrics = factory(rt, round_config)
    result = trainer.fit(loader, epochs=rt.cfg.train.epochs, desc=f"{rt.name} train")
    state = {k: v.detach().cpu().numpy() for k, v in trainable_state(rt.model).items()}
    local = result.metrics()
    metrics = {"num-examples": float(len(rt.train_set)), **local, **extra_metrics()}
    if kind == "dp":
        # The training losses (and the Poisson draw's realised image count) are
        # statistics of the site's images that the DP guarantee does not cover: they
        # stay in the site's log; the reply carries only what the privacy layer adds.
        log.info("site %s round %s (not sent under DP): %s", rt.name,
                 round_config.get("server-round"), {k: round(v, 4) for k, v in local.items()})
        metrics = {k: v for k, v in metrics.items() if k not in local or k in DP_SAFE_METRICS}
    return state, metrics


def local_evaluate(
    rt: SiteRuntime, arrays: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """Evaluate the global weights on the site's validation split.

    Returns the metric accumulator's additive state (nothing per image) and the
    number of evaluated images.
    """
    load_global(rt, arrays)
    acc = MetricAccumulator(
        class_names=list(rt.cfg.data.class_names),
        morphology_names=list(rt.cfg.data.morphology_names),
    )
    evaluate(rt.model, rt.val_loader(), acc, device=rt.device)
    return acc.state(), len(rt.val_set)
