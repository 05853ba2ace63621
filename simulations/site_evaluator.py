"""One evaluation for every model of an experiment: per hospital, pooled, held out.

Every final model (central, each local one, each federated one) is evaluated here,
in one process, by the same code on each hospital's validation split, on their
union (``pooled``) and on an optional hospital never trained on (``holdout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from endofed.shared.build import dataset_for, loader_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.sample import SampleRecord
from endofed.shared.engine import evaluate
from endofed.shared.metrics import MetricAccumulator, flat_scalars
from endofed.simulations.virtual_sites import VirtualSite

POOLED = "pooled"
HOLDOUT = "holdout"


class SiteEvaluator:
    """Evaluate any model on each hospital's val split, their union and a holdout."""

    def __init__(self, sites: Sequence[VirtualSite], holdout: list[SampleRecord] | None,
                 device: torch.device, progress: bool = False) -> None:
        self.sites = list(sites)
        self.holdout = holdout
        self.device = device
        self.progress = progress
        self._datasets: dict[tuple[bool, str], Any] = {}

    def _dataset(self, cfg: EndoFedConfig, name: str, records: list[SampleRecord]) -> Any:
        """The eval dataset of ``name``, built once per preprocessing setting."""
        key = (bool(cfg.preprocess.preprocess), name)
        if key not in self._datasets:
            self._datasets[key] = dataset_for(records, cfg, train=False)
        return self._datasets[key]

    def __call__(self, model: torch.nn.Module, cfg: EndoFedConfig) -> dict[str, dict[str, float]]:
        """``{site name | "pooled" | "holdout": flat metrics}``."""
        model = model.to(self.device)
        kwargs = {"class_names": list(cfg.data.class_names),
                  "morphology_names": list(cfg.data.morphology_names)}
        out: dict[str, dict[str, float]] = {}
        pooled = MetricAccumulator(**kwargs)
        targets = [(s.name, s.val) for s in self.sites]
        if self.holdout is not None:
            targets.append((HOLDOUT, self.holdout))
        for name, records in targets:
            acc = MetricAccumulator(**kwargs)
            if records:
                loader = loader_for(self._dataset(cfg, name, records), cfg, shuffle=False)
                evaluate(model, loader, acc, device=self.device, progress=self.progress,
                         desc=f"eval {name}")
            out[name] = flat_scalars(acc.compute())
            if name != HOLDOUT:
                pooled.merge(acc)
        out[POOLED] = flat_scalars(pooled.compute())
        return out
