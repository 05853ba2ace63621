"""DP-SGD for ``endofed train``: the federation's privacy entry point, one pooled "site".

Central training with ``dp-epsilon`` > 0 goes through the same
:func:`endofed.privacy.dp.make_private` as a hospital's round: Opacus
``GradSampleModule`` + ``DPOptimizer``, Poisson sampling with an expected logical batch
of ``dp-batch-size`` (physical batches capped by ``dp-max-physical-batch-size`` through
Opacus' ``BatchMemoryManager``), and a persistent, write-ahead ledger. Each epoch is one
round of a study of ``local-epochs`` rounds, so the noise is calibrated for the epochs
still planned and the (epsilon, delta) target holds after the last one; each epoch is
booked in ``<out>/privacy-ledger.json`` before it trains.

The ledger stays when a run starts over (``--no-resume``): the data's privacy loss of
the earlier run is real, so a new study only starts on what is left of the target.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from endofed.privacy.dp import DPEngine, PrivateRound, StudyPlan, make_private
from endofed.privacy.ledger import LEDGER_NAME, PrivacyLedger
from endofed.shared import protocol
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.dataset import DetectionDataset

#: The ledger's site name for central training.
CENTRAL_SITE = "central"

#: Privacy metrics of an epoch -> their names in train_history.json / metrics.json.
HISTORY_KEYS = {
    protocol.EPSILON_SPENT: "epsilon_spent",
    protocol.EPSILON_TARGET: "epsilon_target",
    protocol.DP_DELTA: "dp_delta",
    protocol.DP_NOISE_MULTIPLIER: "dp_noise_multiplier",
    protocol.DP_SAMPLE_RATE: "dp_sample_rate",
    protocol.DP_STEPS: "dp_steps",
}


def dp_identity(cfg: EndoFedConfig) -> dict[str, Any]:
    """The DP settings a resume must keep, under one key (``"off"`` without DP)."""
    pc = cfg.privacy
    if not pc.enabled:
        return {"dp-sgd": "off"}
    return {"dp-sgd": {
        "dp-epsilon": float(pc.epsilon),
        "dp-delta": float(pc.delta),
        "dp-max-grad-norm": float(pc.max_grad_norm),
        "dp-accountant": pc.accountant,
        "dp-batch-size": int(cfg.dp_batch_sizes[0]),
    }}


def new_study_id() -> str:
    """A fresh study (a run started over is a new study in the same ledger)."""
    return f"central-{uuid.uuid4().hex[:12]}"


class CentralPrivacy:
    """The DP side of a central run: ledger, study plan and one Opacus engine."""

    def __init__(
        self, cfg: EndoFedConfig, out_dir: Path, dataset: DetectionDataset,
        device: torch.device, *, study: str, total_epochs: int,
    ) -> None:
        pc = cfg.privacy
        self.cfg = cfg
        self.dataset = dataset
        self.device = device
        self.study = study
        self.total_epochs = int(total_epochs)
        self.ledger = PrivacyLedger(
            Path(out_dir).resolve() / LEDGER_NAME, site=CENTRAL_SITE,
            epsilon_target=pc.epsilon, delta=pc.delta, accountant=pc.accountant,
        )
        self.engine: DPEngine | None = None

    def epoch(self, model: nn.Module, epoch: int) -> PrivateRound:
        """Prepare epoch ``epoch`` (1-based) as round ``epoch`` of the study.

        Raises :class:`~endofed.privacy.accounting.PrivacyBudgetError` before any step
        when the budget does not allow it (the ledger and the model are unchanged).
        """
        cfg = self.cfg
        plan = StudyPlan(
            run=f"central:{self.study}", study=self.study, server_round=int(epoch),
            total_rounds=self.total_epochs, local_epochs=1,
            max_steps_per_epoch=cfg.train.max_steps,
        )
        logical, physical = cfg.dp_batch_sizes
        private = make_private(
            model=model, dataset=self.dataset, train=cfg.train, privacy=cfg.privacy,
            ledger=self.ledger, plan=plan, batch_size=logical, device=self.device,
            num_workers=cfg.data.workers, engine=self.engine,
            max_physical_batch_size=physical,
        )
        self.engine = private.engine
        return private

    def finish(self, private: PrivateRound) -> dict[str, float]:
        """Book the epoch; its privacy metrics under train_history.json's names."""
        metrics = private.finish()
        return {HISTORY_KEYS[k]: float(v) for k, v in metrics.items() if k in HISTORY_KEYS}

    def summary(self, history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """What the report and metrics.json say about privacy: the ledger's epsilon,
        the settings, and the last epoch's noise (``history``: train_history rows)."""
        self.ledger.refresh()
        pc = self.cfg.privacy
        rows = [r for r in history if r.get("dp_noise_multiplier") is not None]
        last = rows[-1] if rows else {}
        return {
            "epsilon_spent": self.ledger.epsilon_spent(),
            "epsilon_target": pc.epsilon,
            "delta": pc.delta,
            "accountant": pc.accountant,
            "max_grad_norm": pc.max_grad_norm,
            "noise_multiplier": float(last.get("dp_noise_multiplier", float("nan"))),
            "sample_rate": float(last.get("dp_sample_rate", float("nan"))),
            "logical_batch_size": self.cfg.dp_batch_sizes[0],
            "dp_steps": sum(int(r.get("dp_steps") or 0) for r in rows),
            "finetune": self.cfg.finetune_mode,
            "study": self.study,
            "ledger": str(self.ledger.path),
            "grad_sample_module": type(self.engine.module).__name__ if self.engine else None,
        }


def privacy_section(summary: dict[str, Any]) -> str:
    """The report's "Privacy" section."""
    return (
        f"DP-SGD (Opacus, {summary['grad_sample_module'] or 'not run in this process'}): "
        f"epsilon spent {summary['epsilon_spent']:.4g} of target "
        f"{summary['epsilon_target']:g} at delta {summary['delta']:g} "
        f"({summary['accountant']} accountant), noise multiplier "
        f"{summary['noise_multiplier']:.4g}, max grad norm {summary['max_grad_norm']:g}, "
        f"expected logical batch {summary['logical_batch_size']} (Poisson, sample rate "
        f"{summary['sample_rate']:.4g}), {summary['dp_steps']} noisy steps, finetune "
        f"{summary['finetune']}; ledger {summary['ledger']}"
    )
