"""DP-SGD for a site's training round: one entry point, :func:`make_private`.

Opacus-style: it takes plain torch objects (model, dataset), the site's privacy
settings, its persistent :class:`~endofed.privacy.ledger.PrivacyLedger` and the study's
:class:`StudyPlan`, and returns a :class:`PrivateRound` holding what a training loop
needs: the wrapped module, the DP optimiser, the Poisson loader, the hook for empty
draws and :meth:`PrivateRound.finish`, which books the round and gives the metrics the
site may report. Nothing is registered at import time.

Per site *process* the Opacus objects are built once (:class:`DPEngine`) and handed
back in each round (``engine=``): wrapping the same model again would add its hooks
twice, and a fresh ``PrivacyEngine`` per round would restart epsilon at zero.

Sampling is Poisson (:mod:`endofed.privacy.sampling`) with rate ``q = 1 / k``, where
``k = round(N / batch-size)`` logical steps make one epoch; an empty draw still takes
a noisy, accounted step (as the DP analysis of Poisson-sampled DP-SGD assumes).

The noise multiplier comes from the site's *planned* total: the rounds remaining in the
study x local epochs x ``k`` steps, composed after everything already in the ledger, so
the (epsilon, delta) target holds at the end of the study. Before any step the ledger
is charged with the round and the round is refused (:class:`PrivacyBudgetError`) if
that would exceed the target, if fitting it would need more noise than
``dp-max-noise-multiplier``, or if it would start a new study with less than
``dp-min-study-budget`` of the target left.

Notes:
    * AMP is disabled under DP (a loss scale would distort per-sample clipping).
    * FedProx' proximal term is ignored under DP: its gradient does not go through
      the per-sample path, so Opacus would drop it silently anyway.
    * The inner optimiser's state (e.g. Adam moments) is reset every round, like the
      non-private path, which builds a new optimiser per round.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader

from endofed.privacy.accounting import (
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    compute_epsilon,
)
from endofed.privacy.ledger import PrivacyLedger, RoundEntry
from endofed.privacy.sampling import (
    expected_batch_size,
    make_poisson_loader,
    poisson_sample_rate,
    poisson_steps_per_epoch,
    secret_generator,
)
from endofed.shared import protocol
from endofed.shared.config import PrivacyConfig, TrainConfig
from endofed.shared.data.dataset import DetectionDataset
from endofed.shared.engine import build_optimizer

log = logging.getLogger(__name__)

#: Relative slack of the noise calibration: the study ends within 1 % below its target.
CALIBRATION_RTOL = 0.01


@dataclass(frozen=True)
class StudyPlan:
    """Where a round stands in its study: what the noise is planned over."""

    run: str
    """The coordinator's run name (shown in the ledger)."""
    study: str
    """The study's identity (the server's ``study-id``; the ledger keys by it)."""
    server_round: int
    total_rounds: int
    local_epochs: int
    max_steps_per_epoch: int = 0
    """Cap on logical steps per local epoch (0 = a full epoch, ``k`` steps)."""

    @classmethod
    def from_round_config(
        cls, round_config: Mapping[str, Any], *, run: str, total_rounds: int,
        local_epochs: int, max_steps_per_epoch: int = 0, ledger: PrivacyLedger | None = None,
    ) -> StudyPlan:
        """The plan the server's round config states, with the site's fallbacks.

        ``run`` / ``total_rounds`` are used when the server does not send
        ``run-name`` / ``num-server-rounds``; ``study-id`` falls back to the run name
        (older servers); ``server-round`` to the round after those the ledger has done.
        """
        run = str(round_config.get(protocol.RUN_NAME, run))
        study = str(round_config.get(protocol.STUDY_ID) or run)
        done = ledger.rounds_done(study) if ledger is not None else 0
        return cls(
            run=run,
            study=study,
            server_round=int(round_config.get(protocol.SERVER_ROUND, done + 1)),
            total_rounds=int(round_config.get(protocol.NUM_SERVER_ROUNDS, total_rounds)),
            local_epochs=local_epochs,
            max_steps_per_epoch=max_steps_per_epoch,
        )

    def round_steps(self, steps_per_epoch: int) -> int:
        """Logical DP steps this round takes."""
        per_epoch = steps_per_epoch
        if self.max_steps_per_epoch > 0:
            per_epoch = min(per_epoch, self.max_steps_per_epoch)
        return self.local_epochs * per_epoch

    def planned_steps(self, steps_per_epoch: int) -> int:
        """Steps from this round to the end of the study (what the noise must cover)."""
        rounds_left = max(1, self.total_rounds - self.server_round + 1)
        return rounds_left * self.round_steps(steps_per_epoch)


@dataclass
class DPEngine:
    """A site's Opacus objects, built once per process and reused every round."""

    module: GradSampleModule
    optimizer: DPOptimizer
    engine: PrivacyEngine
    loader: DataLoader  # what the trainer iterates (physical batches)
    logical_loader: DataLoader  # the Poisson loader (logical batches)
    sample_rate: float
    steps_per_epoch: int
    num_samples: int
    noise_multiplier: float = 0.0

    @property
    def accountant(self) -> Any:
        return self.engine.accountant

    def empty_step(self) -> None:
        """A noisy, accounted step for an empty Poisson draw (zero per-sample grads)."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        self.optimizer.step()

    def reset_round_state(self) -> None:
        """Forget anything a previous (possibly interrupted) round left in the optimiser."""
        opt = self.optimizer
        opt.original_optimizer.state.clear()
        opt._step_skip_queue.clear()
        opt._is_last_step_skipped = False
        for p in opt.params:
            p.grad_sample = None
            p.summed_grad = None
            p.grad = None

    def accounted_steps(self) -> int:
        """Steps the accountant has seen (history included)."""
        return sum(int(s) for _, _, s in self.accountant.history)


def private_train_config(train: TrainConfig) -> TrainConfig:
    """The training settings DP-SGD runs with: no AMP, no global clip, no FedProx term."""
    if train.proximal_mu > 0:
        log.warning("proximal-mu is ignored under differential privacy")
    return dataclasses.replace(train, amp=False, grad_clip=0.0, proximal_mu=0.0)


def build_dp_engine(
    *,
    model: nn.Module,
    dataset: DetectionDataset,
    train: TrainConfig,
    privacy: PrivacyConfig,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    site: str = "site",
    max_physical_batch_size: int | None = None,
) -> DPEngine:
    """Wrap ``model`` with Opacus for Poisson-sampled DP-SGD over ``dataset``.

    ``batch_size`` is the expected logical (Poisson) batch; ``max_physical_batch_size``
    caps what runs at once (``None``: ``dp-max-physical-batch-size``; 0: no cap).
    """
    n = len(dataset)
    k = poisson_steps_per_epoch(n, batch_size)
    sample_rate = poisson_sample_rate(k)
    logical = make_poisson_loader(
        dataset, sample_rate=sample_rate, generator=secret_generator(), num_workers=num_workers
    )
    optimizer = build_optimizer(model, private_train_config(train))
    # dp-secure-rng needs torchcsprng; PrivacyConfig.validate checked it is installed.
    engine = PrivacyEngine(accountant=privacy.accountant, secure_mode=privacy.secure_rng)
    # poisson_sampling=False: our loader already samples Poisson, and Opacus would
    # otherwise replace our collate with its own empty-batch wrapper.
    module, dp_optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=logical,
        noise_multiplier=1.0,  # set per round from the plan
        max_grad_norm=privacy.max_grad_norm,
        loss_reduction="mean",
        poisson_sampling=False,
        grad_sample_mode="hooks",
        noise_generator=None if privacy.secure_rng else secret_generator(device),
    )
    module.forbid_grad_accumulation()
    if privacy.delta >= 1.0 / n:
        # (eps, delta)-DP with delta >= 1/N allows releasing one image outright.
        log.warning(
            "site %s: dp-delta %g is not below 1/N = %.3g for %d training images; the "
            "guarantee is weak - use a delta well below 1/N (e.g. 1e-5)",
            site, privacy.delta, 1.0 / n, n,
        )
    if len(logical) != k:
        raise RuntimeError(f"Poisson loader has {len(logical)} steps per epoch, expected {k}")
    if dp_optimizer.expected_batch_size != expected_batch_size(n, 1.0 / k):
        raise RuntimeError(
            f"DPOptimizer expects batches of {dp_optimizer.expected_batch_size}, expected "
            f"{expected_batch_size(n, 1.0 / k)} (= {n} images x rate {1.0 / k:.4g})"
        )
    physical = loader
    cap = privacy.max_physical_batch_size if max_physical_batch_size is None \
        else max_physical_batch_size
    if cap > 0:
        with BatchMemoryManager(
            data_loader=loader,
            max_physical_batch_size=cap,
            optimizer=dp_optimizer,
        ) as capped:
            physical = capped  # a DataLoader with our collate: still yields Batch
    log.info(
        "site %s: DP-SGD over %d images, %d steps/epoch (q=%.4g, expected batch %d), "
        "max grad norm %g, target (%g, %g) with %s accountant",
        site, n, k, 1.0 / k, dp_optimizer.expected_batch_size, privacy.max_grad_norm,
        privacy.epsilon, privacy.delta, privacy.accountant,
    )
    return DPEngine(
        module=module, optimizer=dp_optimizer, engine=engine, loader=physical,
        logical_loader=loader, sample_rate=1.0 / k, steps_per_epoch=k, num_samples=n,
    )


@dataclass
class PrivateRound:
    """What the training loop needs for one DP round, and how to close it."""

    engine: DPEngine
    ledger: PrivacyLedger
    entry: RoundEntry
    train_config: TrainConfig
    start_steps: int

    @property
    def module(self) -> GradSampleModule:
        return self.engine.module

    @property
    def optimizer(self) -> DPOptimizer:
        return self.engine.optimizer

    @property
    def loader(self) -> DataLoader:
        return self.engine.loader

    def on_empty_batch(self) -> None:
        """The trainer's hook for an empty Poisson draw."""
        self.engine.empty_step()

    def finish(self) -> dict[str, float]:
        """Book the steps the accountant saw; the privacy metrics of the reply."""
        steps = self.engine.accounted_steps() - self.start_steps
        spent = self.ledger.complete(self.entry, steps=steps)
        return {
            protocol.EPSILON_SPENT: spent,
            protocol.EPSILON_TARGET: self.ledger.epsilon_target,
            protocol.DP_DELTA: self.ledger.delta,
            protocol.DP_NOISE_MULTIPLIER: self.engine.noise_multiplier,
            protocol.DP_SAMPLE_RATE: self.engine.sample_rate,
            protocol.DP_STEPS: float(steps),
        }


def make_private(
    *,
    model: nn.Module,
    dataset: DetectionDataset,
    train: TrainConfig,
    privacy: PrivacyConfig,
    ledger: PrivacyLedger,
    plan: StudyPlan,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    engine: DPEngine | None = None,
    max_physical_batch_size: int | None = None,
) -> PrivateRound:
    """Prepare one DP-SGD round of ``plan`` under the site's budget.

    ``engine`` is the :class:`DPEngine` a previous round of this process returned
    (``PrivateRound.engine``); ``None`` builds it around ``model``. Train with
    ``round.module`` / ``round.optimizer`` / ``round.loader`` / ``round.on_empty_batch``
    and ``round.train_config``, then call ``round.finish()``. ``batch_size`` is the
    expected logical batch, ``max_physical_batch_size`` the cap on what runs at once
    (see :func:`build_dp_engine`).

    Raises:
        PrivacyBudgetError: the round would exceed the site's epsilon target, need
            more noise than ``dp-max-noise-multiplier``, or start a new study on the
            remains of a spent budget. Raised before any step; the ledger and the
            model are unchanged.
    """
    if engine is not None and engine.num_samples != len(dataset):
        raise ValueError(f"the DP engine was built for {engine.num_samples} images, the "
                         f"dataset has {len(dataset)}: build a new engine (engine=None)")
    # Every budget check runs before Opacus touches the model.
    steps_per_epoch = poisson_steps_per_epoch(len(dataset), batch_size)
    if engine is not None and engine.steps_per_epoch != steps_per_epoch:
        # The accountant would book the plan's sample rate, the loader draw another's.
        raise ValueError(
            f"the DP engine samples {engine.steps_per_epoch} batches per epoch, a batch of "
            f"{batch_size} needs {steps_per_epoch}: build a new engine (engine=None)"
        )
    sample_rate = 1.0 / steps_per_epoch
    ledger.refresh()
    _check_new_study(ledger, privacy, plan)
    round_steps = plan.round_steps(steps_per_epoch)
    planned = plan.planned_steps(steps_per_epoch)
    current = engine.noise_multiplier if engine is not None else 0.0
    sigma = _plan_noise(current, sample_rate, ledger, privacy, planned)
    if engine is None:
        engine = build_dp_engine(
            model=model, dataset=dataset, train=train, privacy=privacy,
            batch_size=batch_size, device=device, num_workers=num_workers,
            site=ledger.site, max_physical_batch_size=max_physical_batch_size,
        )
    entry, before = ledger.reserve(
        run=plan.run, round=plan.server_round, noise_multiplier=sigma,
        sample_rate=sample_rate, steps=round_steps, study=plan.study,
    )
    engine.noise_multiplier = sigma
    engine.reset_round_state()
    engine.optimizer.noise_multiplier = sigma
    # Seed the accountant with the persistent history (in place: the optimiser's step
    # hook holds this very accountant).
    engine.accountant.history = list(before)
    log.info(
        "site %s round %d: %d DP steps with noise multiplier %.4f (q=%.4g); %d planned "
        "steps left in study %r", ledger.site, plan.server_round, round_steps, sigma,
        sample_rate, planned, plan.study,
    )
    return PrivateRound(
        engine=engine, ledger=ledger, entry=entry, train_config=private_train_config(train),
        start_steps=engine.accounted_steps(),
    )


def _plan_noise(
    sigma: float, sample_rate: float, ledger: PrivacyLedger, privacy: PrivacyConfig,
    planned_steps: int,
) -> float:
    """Keep the current noise ``sigma`` if it still fits the plan tightly, else calibrate."""
    history = ledger.history()
    if sigma > 0:
        eps = compute_epsilon(
            [*history, (sigma, sample_rate, planned_steps)],
            delta=privacy.delta, accountant=privacy.accountant,
        )
        tight = privacy.epsilon * (1.0 - CALIBRATION_RTOL) <= eps <= privacy.epsilon
        if tight and sigma <= privacy.max_noise_multiplier:
            return sigma
    return calibrate_noise_multiplier(
        history=history,
        sample_rate=sample_rate,
        steps=planned_steps,
        target_epsilon=privacy.epsilon,
        delta=privacy.delta,
        accountant=privacy.accountant,
        rtol=CALIBRATION_RTOL,
        max_noise_multiplier=privacy.max_noise_multiplier,
    )


def _check_new_study(ledger: PrivacyLedger, privacy: PrivacyConfig, plan: StudyPlan) -> None:
    """Refuse to *start* a study on the crumbs of a budget an earlier study planned to spend.

    The noise of a study is calibrated so that its last round lands within 1 % of the
    target; what is left is calibration slack, which only an enormous noise multiplier
    could fit a round into. Rounds of a study already under way are not affected.
    """
    if ledger.has_study(plan.study):
        return
    spent = ledger.epsilon_spent()
    left = privacy.epsilon - spent
    if spent > 0 and left < privacy.min_study_budget * privacy.epsilon:
        raise PrivacyBudgetError(
            f"site {ledger.site}: privacy budget used up by earlier studies (spent "
            f"epsilon {spent:.4g} of {privacy.epsilon:.4g}; a new study needs at least "
            f"{privacy.min_study_budget:.0%} of dp-epsilon left, dp-min-study-budget); "
            f"not joining run {plan.run!r} (ledger {ledger.path})",
            spent=spent,
            target=privacy.epsilon,
        )
