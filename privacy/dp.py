"""DP-SGD at a site (Opacus), registered as the ``"dp"`` trainer of the client.

Importing this module registers :func:`dp_trainer` in
:data:`client.training.TRAINER_FACTORIES`. Per site *process* it builds, once, one
Opacus ``GradSampleModule`` around the site's model, one ``DPOptimizer`` and one
accountant (kept in ``rt.extras["privacy"]``): wrapping the same model again would add
its hooks twice, and a fresh ``PrivacyEngine`` per round would restart epsilon at zero.

Sampling is Poisson (``UniformWithReplacementSampler``) with rate ``q = 1 / k``, where
``k = round(N / batch-size)`` logical steps make one epoch, through our own collate so
an empty draw is an empty :class:`~shared.data.collate.Batch`; the trainer then calls
:meth:`DPSite.empty_step`, which still takes a noisy, accounted step (as the DP
analysis of Poisson-sampled DP-SGD assumes).

The noise multiplier comes from the site's *planned* total: the rounds remaining in the
run (``num-server-rounds`` minus the rounds already done) x local epochs x ``k`` steps,
composed after everything already in the persistent ledger
(:mod:`privacy.ledger`), so the (epsilon, delta) target holds at the end of the
study. Before each round the ledger is charged with the round's steps and the round
is refused (:class:`client.training.BudgetExhausted`) if that would exceed the target,
if fitting it would need more noise than ``dp-max-noise-multiplier``, or if it would
start a new study with less than ``dp-min-study-budget`` of the target left.

Notes:
    * AMP is disabled under DP (a loss scale would distort per-sample clipping).
    * FedProx' proximal term is ignored under DP: its gradient does not go through
      the per-sample path, so Opacus would drop it silently anyway.
    * The inner optimiser's state (e.g. Adam moments) is reset every round, like the
      non-private path, which builds a new optimiser per round.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset

from endofed.client.runtime import SiteRuntime
from endofed.client.training import TRAINER_FACTORIES, BudgetExhausted
from endofed.privacy.accounting import (
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    compute_epsilon,
)
from endofed.privacy.ledger import PrivacyLedger, RoundEntry, ledger_path
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.collate import collate_detection
from endofed.shared.engine import Trainer, build_optimizer

log = logging.getLogger(__name__)

EXTRAS_KEY = "privacy"


def poisson_steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Logical steps per epoch ``k`` (so the sampling rate is ``1 / k``)."""
    if num_samples < 1:
        raise ValueError("DP training needs at least one training image")
    return max(1, round(num_samples / batch_size))


def poisson_sample_rate(steps_per_epoch: int) -> float:
    """``1 / k``, nudged down by one ulp if needed so ``int(1 / q) == k`` exactly.

    Opacus derives the epoch length as ``int(1 / q)`` and accounts with
    ``1 / len(loader)``; both then agree with ``k``.
    """
    q = 1.0 / steps_per_epoch
    while int(1.0 / q) < steps_per_epoch:
        q = math.nextafter(q, 0.0)
    return q


def make_poisson_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    image_size: int,
    max_boxes: int,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A Poisson-sampling loader of :class:`Batch` (empty draws give empty batches)."""
    n = len(dataset)  # type: ignore[arg-type]
    k = poisson_steps_per_epoch(n, batch_size)
    sampler = UniformWithReplacementSampler(
        num_samples=n, sample_rate=poisson_sample_rate(k), generator=generator
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=functools.partial(
            collate_detection, image_size=image_size, max_boxes=max_boxes
        ),
        num_workers=num_workers,
        generator=generator,
    )


@dataclass
class DPSite:
    """A site's DP-SGD objects, built once per process and reused every round."""

    module: GradSampleModule
    optimizer: DPOptimizer
    engine: PrivacyEngine
    loader: DataLoader  # what the trainer iterates (physical batches)
    logical_loader: DataLoader  # the Poisson loader (logical batches)
    sample_rate: float
    steps_per_epoch: int
    ledger: PrivacyLedger
    noise_multiplier: float = 0.0

    @property
    def accountant(self):
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
        return sum(int(s) for _, _, s in self.accountant.history)


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from the operating system's entropy pool.

    DP noise and Poisson sampling must never be derived from the run config: the
    coordinating center sets ``seed``, and noise it can regenerate is noise it can
    subtract from the update. (Opacus' ``secure_mode``, ``dp-secure-rng``, goes further
    and draws every sample from a CSPRNG.)
    """
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(secrets.randbits(63))
    return gen


def build_dp_site(rt: SiteRuntime) -> DPSite:
    """Wrap ``rt.model`` with Opacus and open the site's ledger (once per process)."""
    cfg = rt.cfg
    pc = cfg.privacy
    ledger = PrivacyLedger(
        ledger_path(cfg, rt.name),
        site=rt.name,
        epsilon_target=pc.epsilon,
        delta=pc.delta,
        accountant=pc.accountant,
    )
    generator = secret_generator()
    logical = make_poisson_loader(
        rt.train_set,
        batch_size=cfg.data.batch_size,
        image_size=cfg.data.image_size,
        max_boxes=cfg.data.max_boxes,
        num_workers=cfg.data.workers,
        generator=generator,
    )
    optimizer = build_optimizer(rt.model.parameters(), _train_config(cfg))
    # dp-secure-rng needs torchcsprng; PrivacyConfig.validate checked it is installed.
    engine = PrivacyEngine(accountant=pc.accountant, secure_mode=pc.secure_rng)
    # poisson_sampling=False: our loader already samples Poisson, and Opacus would
    # otherwise replace our collate with its own empty-batch wrapper.
    module, dp_optimizer, loader = engine.make_private(
        module=rt.model,
        optimizer=optimizer,
        data_loader=logical,
        noise_multiplier=1.0,  # set per round from the plan
        max_grad_norm=pc.max_grad_norm,
        loss_reduction="mean",
        poisson_sampling=False,
        grad_sample_mode="hooks",
        noise_generator=None if pc.secure_rng else secret_generator(rt.device),
    )
    module.forbid_grad_accumulation()
    n = len(rt.train_set)
    if pc.delta >= 1.0 / n:
        # (eps, delta)-DP with delta >= 1/N allows releasing one image outright.
        log.warning(
            "site %s: dp-delta %g is not below 1/N = %.3g for %d training images; the "
            "guarantee is weak - use a delta well below 1/N (e.g. 1e-5)",
            rt.name, pc.delta, 1.0 / n, n,
        )
    k = len(logical)
    sample_rate = 1.0 / k
    if k != poisson_steps_per_epoch(n, cfg.data.batch_size):
        raise RuntimeError(f"Poisson loader has {k} steps per epoch, expected "
                           f"{poisson_steps_per_epoch(n, cfg.data.batch_size)}")
    if dp_optimizer.expected_batch_size != int(n * sample_rate):
        raise RuntimeError(
            f"DPOptimizer expects batches of {dp_optimizer.expected_batch_size}, "
            f"expected {int(n * sample_rate)} (= {n} images x rate {sample_rate:.4g})"
        )
    physical = loader
    if pc.max_physical_batch_size > 0:
        with BatchMemoryManager(
            data_loader=loader,
            max_physical_batch_size=pc.max_physical_batch_size,
            optimizer=dp_optimizer,
        ) as capped:
            physical = capped  # a DataLoader with our collate: still yields Batch
    log.info(
        "site %s: DP-SGD over %d images, %d steps/epoch (q=%.4g, expected batch %d), "
        "max grad norm %g, target (%g, %g) with %s accountant; ledger %s",
        rt.name, n, k, sample_rate, dp_optimizer.expected_batch_size, pc.max_grad_norm,
        pc.epsilon, pc.delta, pc.accountant, ledger.path,
    )
    return DPSite(
        module=module,
        optimizer=dp_optimizer,
        engine=engine,
        loader=physical,
        logical_loader=loader,
        sample_rate=sample_rate,
        steps_per_epoch=k,
        ledger=ledger,
    )


def get_dp_site(rt: SiteRuntime) -> DPSite:
    """The site's :class:`DPSite`, built on first use and kept in ``rt.extras``."""
    site = rt.extras.get(EXTRAS_KEY)
    if site is None:
        site = build_dp_site(rt)
        rt.extras[EXTRAS_KEY] = site
    return site


def _train_config(cfg: EndoFedConfig):
    train = cfg.train
    if train.proximal_mu > 0:
        log.warning("proximal-mu is ignored under differential privacy")
    return dataclasses.replace(train, amp=False, grad_clip=0.0, proximal_mu=0.0)


def _round_plan(
    rt: SiteRuntime, site: DPSite, round_config: Mapping[str, Any]
) -> tuple[str, str, int, int, int]:
    """(run name, study, server round, steps this round, steps left in the study).

    ``study`` is the server's ``study-id`` (unique per study, kept when a study is
    resumed), else the run name (older servers).
    """
    cfg = rt.cfg
    run = str(round_config.get("run-name", cfg.federation.run_name))
    study = str(round_config.get("study-id") or run)
    total_rounds = int(round_config.get("num-server-rounds", cfg.federation.num_server_rounds))
    done = site.ledger.rounds_done(study)
    server_round = int(round_config.get("server-round", done + 1))
    per_epoch = site.steps_per_epoch
    if cfg.train.max_steps > 0:
        per_epoch = min(per_epoch, cfg.train.max_steps)
    round_steps = cfg.train.epochs * per_epoch
    rounds_left = max(1, total_rounds - server_round + 1)
    return run, study, server_round, round_steps, rounds_left * round_steps


def _plan_noise(site: DPSite, cfg: EndoFedConfig, planned_steps: int, rtol: float) -> float:
    """Keep the current noise if it still fits the remaining plan tightly, else calibrate."""
    pc = cfg.privacy
    history = site.ledger.history()
    sigma = site.noise_multiplier
    if sigma > 0:
        eps = compute_epsilon(
            [*history, (sigma, site.sample_rate, planned_steps)],
            delta=pc.delta, accountant=pc.accountant,
        )
        if pc.epsilon * (1.0 - rtol) <= eps <= pc.epsilon and sigma <= pc.max_noise_multiplier:
            return sigma
    return calibrate_noise_multiplier(
        history=history,
        sample_rate=site.sample_rate,
        steps=planned_steps,
        target_epsilon=pc.epsilon,
        delta=pc.delta,
        accountant=pc.accountant,
        rtol=rtol,
        max_noise_multiplier=pc.max_noise_multiplier,
    )


def _check_new_study(site: DPSite, cfg: EndoFedConfig, run: str, study: str) -> None:
    """Refuse to *start* a study on the crumbs of a budget an earlier study planned to spend.

    The noise of a study is calibrated so that its last round lands within 1 % of the
    target; what is left is calibration slack, which only an enormous noise multiplier
    could fit a round into. Rounds of a study already under way are not affected.
    """
    pc = cfg.privacy
    if site.ledger.has_study(study):
        return
    spent = site.ledger.epsilon_spent()
    left = pc.epsilon - spent
    if spent > 0 and left < pc.min_study_budget * pc.epsilon:
        raise PrivacyBudgetError(
            f"site {site.ledger.site}: privacy budget used up by earlier studies (spent "
            f"epsilon {spent:.4g} of {pc.epsilon:.4g}; a new study needs at least "
            f"{pc.min_study_budget:.0%} of dp-epsilon left, dp-min-study-budget); "
            f"not joining run {run!r} (ledger {site.ledger.path})",
            spent=spent,
            target=pc.epsilon,
        )


def dp_trainer(
    rt: SiteRuntime, round_config: Mapping[str, Any]
) -> tuple[Trainer, DataLoader, Callable[[], dict[str, float]]]:
    """The ``"dp"`` trainer factory: DP-SGD with a persistent, enforced budget.

    Raises:
        BudgetExhausted: the round would take the site past its epsilon target
            (raised before any training; the ledger is unchanged).
    """
    cfg = rt.cfg
    site = get_dp_site(rt)
    site.ledger.refresh()
    run, study, server_round, round_steps, planned = _round_plan(rt, site, round_config)

    def decline(exc: PrivacyBudgetError) -> BudgetExhausted:
        return BudgetExhausted(
            str(exc), {"epsilon-spent": exc.spent, "epsilon-target": exc.target}
        )

    try:
        _check_new_study(site, cfg, run, study)
        sigma = _plan_noise(site, cfg, planned, rtol=0.01)
        entry, before = site.ledger.reserve(
            run=run, round=server_round, noise_multiplier=sigma,
            sample_rate=site.sample_rate, steps=round_steps, study=study,
        )
    except PrivacyBudgetError as exc:
        raise decline(exc) from exc
    site.noise_multiplier = sigma
    site.reset_round_state()
    site.optimizer.noise_multiplier = sigma
    # Seed the accountant with the persistent history (in place: the optimiser's step
    # hook holds this very accountant).
    site.accountant.history = list(before)
    start_steps = site.accounted_steps()
    log.info(
        "site %s round %d: %d DP steps with noise multiplier %.4f (q=%.4g); %d planned "
        "steps left in run %r", rt.name, server_round, round_steps, sigma, site.sample_rate,
        planned, run,
    )
    trainer = Trainer(
        site.module,
        _train_config(cfg),
        device=rt.device,
        optimizer=site.optimizer,
        on_empty_batch=site.empty_step,
        progress=False,
    )

    def extra_metrics() -> dict[str, float]:
        return finish_round(site, entry, start_steps)

    return trainer, site.loader, extra_metrics


def finish_round(site: DPSite, entry: RoundEntry, start_steps: int) -> dict[str, float]:
    """Record the steps the accountant saw this round; the reply's privacy metrics."""
    steps = site.accounted_steps() - start_steps
    spent = site.ledger.complete(entry, steps=steps)
    ledger = site.ledger
    return {
        "epsilon-spent": spent,
        "epsilon-target": ledger.epsilon_target,
        "dp-delta": ledger.delta,
        "dp-noise-multiplier": site.noise_multiplier,
        "dp-sample-rate": site.sample_rate,
        "dp-steps": float(steps),
    }


TRAINER_FACTORIES["dp"] = dp_trainer
