"""Local training and evaluation of one round at a site (the single code path).

Without DP the site trains its model with the shared :class:`Trainer`; with DP
(``dp-epsilon`` > 0) it asks :func:`endofed.privacy.dp.make_private` for the Opacus
module, optimiser and Poisson loader of the round and trains those with the same
:class:`Trainer`. A round the privacy budget does not allow raises
:class:`~endofed.privacy.accounting.PrivacyBudgetError` before any step.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from endofed.client.runtime import SiteRuntime
from endofed.privacy.accounting import PrivacyBudgetError
from endofed.privacy.dp import StudyPlan, make_private
from endofed.privacy.ledger import PrivacyLedger, ledger_path
from endofed.privacy.reply_policy import private_reply_metrics
from endofed.shared import protocol
from endofed.shared.engine import Trainer, build_scheduler, evaluate, study_schedule_span
from endofed.shared.engine.rng import derived_seed, seed_process
from endofed.shared.metrics import MetricAccumulator
from endofed.shared.model import load_trainable_state, trainable_state

log = logging.getLogger(__name__)


def load_global(rt: SiteRuntime, arrays: Mapping[str, np.ndarray]) -> None:
    """Load the global trainable weights sent by the server into the site's model."""
    load_trainable_state(rt.model, {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def site_ledger(rt: SiteRuntime) -> PrivacyLedger:
    """The site's persistent privacy ledger (opened once per process)."""
    if rt.ledger is None:
        pc = rt.cfg.privacy
        rt.ledger = PrivacyLedger(
            ledger_path(rt.cfg, rt.name), site=rt.name, epsilon_target=pc.epsilon,
            delta=pc.delta, accountant=pc.accountant,
        )
    return rt.ledger


def _study_scheduler(
    rt: SiteRuntime, trainer: Trainer, loader: Any, round_config: Mapping[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of this round as a slice of the study's schedule."""
    cfg = rt.cfg
    rounds = int(round_config.get(protocol.NUM_SERVER_ROUNDS, cfg.federation.num_server_rounds))
    server_round = int(round_config.get(protocol.SERVER_ROUND, 1))
    per_round = cfg.train.epochs * max(1, trainer.steps_per_epoch(loader))
    start, total = study_schedule_span(server_round, rounds, per_round)
    return build_scheduler(trainer.optimizer, trainer.config, total, start_step=start)


def _plain_round(rt: SiteRuntime, round_config: Mapping[str, Any]) -> dict[str, float]:
    """Non-private local training (FedProx when the server sends a mu)."""
    train_cfg = rt.cfg.train
    mu = float(round_config.get(protocol.PROXIMAL_MU, 0.0) or 0.0)
    if mu > 0:
        train_cfg = dataclasses.replace(train_cfg, proximal_mu=mu)
    trainer = Trainer(rt.model, train_cfg, device=rt.device, progress=False)
    loader = rt.train_loader()
    trainer.scheduler = _study_scheduler(rt, trainer, loader, round_config)
    if mu > 0:
        trainer.set_proximal_reference()
    result = trainer.fit(loader, epochs=train_cfg.epochs, desc=f"{rt.name} train")
    return {protocol.NUM_EXAMPLES: float(len(rt.train_set)), **result.metrics()}


def _private_round(rt: SiteRuntime, round_config: Mapping[str, Any]) -> dict[str, float]:
    """DP-SGD local training under the site's own budget; only DP-safe metrics leave."""
    cfg = rt.cfg
    ledger = site_ledger(rt)
    plan = StudyPlan.from_round_config(
        round_config, run=cfg.federation.run_name,
        total_rounds=cfg.federation.num_server_rounds, local_epochs=cfg.train.epochs,
        max_steps_per_epoch=cfg.train.max_steps, ledger=ledger,
    )
    logical, physical = cfg.dp_batch_sizes
    private = make_private(
        model=rt.model, dataset=rt.train_set, train=cfg.train, privacy=cfg.privacy,
        ledger=ledger, plan=plan, batch_size=logical, device=rt.device,
        num_workers=cfg.data.workers, engine=rt.dp_engine, max_physical_batch_size=physical,
    )
    rt.dp_engine = private.engine
    trainer = Trainer(
        private.module, private.train_config, device=rt.device,
        optimizer=private.optimizer, on_empty_batch=private.on_empty_batch, progress=False,
    )
    trainer.scheduler = _study_scheduler(rt, trainer, private.loader, round_config)
    result = trainer.fit(private.loader, epochs=cfg.train.epochs, desc=f"{rt.name} train")
    metrics = {protocol.NUM_EXAMPLES: float(len(rt.train_set)), **result.metrics(),
               **private.finish()}
    sent, kept = private_reply_metrics(metrics)
    log.info("site %s round %d (not sent under DP): %s", rt.name, plan.server_round,
             {k: round(v, 4) for k, v in kept.items()})
    return sent


def local_train(
    rt: SiteRuntime, arrays: Mapping[str, np.ndarray], round_config: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train one round from the global weights; returns (trainable weights, metrics).

    Raises:
        PrivacyBudgetError: a DP site's budget does not allow the round (nothing ran).
    """
    load_global(rt, arrays)
    # Augmentation and dropout draw from the process's global generators. A simulation
    # process serves several sites in turn, in whatever order Ray schedules them, so the
    # generators are re-seeded from (seed, site, round) for every round: the same study
    # gives the same updates. DP noise and Poisson sampling use their own OS-seeded
    # generators (privacy/dp.py) and are not affected.
    server_round = int(round_config.get(protocol.SERVER_ROUND, 1))
    seed_process(derived_seed(rt.cfg.train.seed, rt.name, server_round))
    if rt.cfg.privacy.enabled:
        metrics = _private_round(rt, round_config)
    else:
        metrics = _plain_round(rt, round_config)
    state = {k: v.detach().cpu().numpy() for k, v in trainable_state(rt.model).items()}
    return state, metrics


def decline_metrics(exc: PrivacyBudgetError) -> dict[str, float]:
    """The metrics of a declined round (as on every path): the ledger's spent/target."""
    return {protocol.DECLINED: 1.0, protocol.NUM_EXAMPLES: 0.0,
            protocol.EPSILON_SPENT: exc.spent, protocol.EPSILON_TARGET: exc.target}


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
