"""What an experiment grid is: its arms, DP budgets, seeds, budget, and the jobs they make.

An *arm* is one way of training: ``central`` (pooled data), ``local`` (each hospital
alone) or a federated strategy of :data:`endofed.server.strategies.STRATEGIES`, any
of them with ``+prep`` (site preprocessing on). Federated arms run once per DP
budget and seed, the others once per seed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endofed.server.strategies import STRATEGIES
from endofed.shared.config import EndoFedConfig

CENTRAL, LOCAL, FEDERATED = "central", "local", "federated"
PREP_SUFFIX = "+prep"


class ExperimentError(ValueError):
    """The experiment cannot run as asked; the message says why and how to fix it."""


@dataclass(frozen=True)
class Arm:
    """One way of training: ``kind`` central/local/federated, its strategy and prep."""

    name: str
    kind: str
    strategy: str = ""
    preprocess: bool = False


def parse_arms(names: Iterable[str], *, preprocess_ablation: bool = False) -> list[Arm]:
    """``["central", "fedavg", "fedprox+prep"]`` -> arms; the ablation adds ``X+prep``
    for every federated arm ``X``."""
    arms: list[Arm] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        base, prep = (name[: -len(PREP_SUFFIX)], True) if name.endswith(PREP_SUFFIX) else (
            name, False)
        if base in (CENTRAL, LOCAL):
            arm = Arm(name, base, preprocess=prep)
        elif base in STRATEGIES:
            arm = Arm(name, FEDERATED, strategy=base, preprocess=prep)
        else:
            raise ExperimentError(
                f"unknown arm {raw!r}: expected central, local or a strategy "
                f"({', '.join(sorted(STRATEGIES))}), optionally with '{PREP_SUFFIX}'"
            )
        if arm not in arms:
            arms.append(arm)
        if preprocess_ablation and arm.kind == FEDERATED and not prep:
            extra = Arm(name + PREP_SUFFIX, FEDERATED, strategy=base, preprocess=True)
            if extra not in arms:
                arms.append(extra)
    if not arms:
        raise ExperimentError("no arm given (e.g. --arms central,local,fedavg)")
    return arms


def parse_dp(values: Iterable[str | float]) -> list[float]:
    """``["none", "8", "1"]`` -> ``[0.0, 8.0, 1.0]`` (``0`` = no DP)."""
    out: list[float] = []
    for v in values:
        s = str(v).strip().lower()
        if not s:
            continue
        if s in ("none", "off", "inf", "0"):
            eps = 0.0
        else:
            try:
                eps = float(s)
            except ValueError:
                raise ExperimentError(f"--dp values are 'none' or epsilons > 0, got {v!r}") \
                    from None
            if not eps > 0 or math.isinf(eps):
                raise ExperimentError(f"--dp epsilon must be > 0 (or 'none'), got {v!r}")
        if eps not in out:
            out.append(eps)
    return out or [0.0]


def dp_label(eps: float) -> str:
    """``0`` -> ``"none"``, ``8.0`` -> ``"8"``."""
    return "none" if eps <= 0 else f"{eps:g}"


@dataclass
class ExperimentSpec:
    """Everything that defines an experiment grid (see :mod:`endofed.simulations.experiment`)."""

    out: Path
    data: list[Path] | None = None  # None: synthetic hospitals
    sites: int = 3
    partition: str = "iid"
    arms: list[Arm] = field(default_factory=lambda: parse_arms(["central", "local", "fedavg"]))
    dp: list[float] = field(default_factory=lambda: [0.0])
    rounds: int = 5
    local_epochs: int = 1
    preset: str = "tiny"
    seeds: list[int] = field(default_factory=lambda: [0])
    holdout_site: Path | None = None
    device_shift: bool = False
    images_per_site: int = 24
    image_size: int = 128
    batch_size: int = 8
    limit_images: int = 0
    split_seed: int = 0
    val_fraction: float = 0.2
    extra_config: dict[str, Any] = field(default_factory=dict)
    num_cpus_per_client: float = 1.0
    timeout: float | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`ExperimentError` for a grid that cannot run."""
        if self.sites < 1:
            raise ExperimentError(f"--sites must be >= 1, got {self.sites}")
        if self.rounds < 1 or self.local_epochs < 1:
            raise ExperimentError("--rounds and --local-epochs must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ExperimentError(f"val fraction must be in (0, 1), got {self.val_fraction}")
        if not self.seeds:
            raise ExperimentError("no seed given (e.g. --seeds 0,1,2)")
        if any(a.kind == FEDERATED for a in self.arms) and self.sites < 2:
            raise ExperimentError("federated arms need --sites >= 2")
        for p in [*(self.data or []), *([self.holdout_site] if self.holdout_site else [])]:
            if not Path(p).is_dir():
                raise ExperimentError(f"data folder {p} does not exist")

    def settings(self) -> dict[str, Any]:
        """What fixes the hospitals and the training budget (must not change on resume)."""
        return {
            "data": [str(Path(p).resolve()) for p in self.data] if self.data else "synthetic",
            "sites": self.sites,
            "partition": self.partition,
            "rounds": self.rounds,
            "local_epochs": self.local_epochs,
            "preset": self.preset,
            "holdout_site": str(Path(self.holdout_site).resolve()) if self.holdout_site else None,
            "device_shift": self.device_shift,
            "images_per_site": self.images_per_site if not self.data else None,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "limit_images": self.limit_images,
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction,
            # tracking (--track) only records the runs: it never makes results differ
            "extra_config": {k: str(v) for k, v in sorted(self.extra_config.items())
                             if k not in ("tracking", "tracking-dir")},
        }

    def base_mapping(self, seed: int, *, preprocess: bool = False) -> dict[str, Any]:
        """The kebab-case run config shared by every arm of ``seed``."""
        tracked = str(self.extra_config.get("tracking", "none")) != "none"
        return {
            **self.extra_config,
            # one tracking store for the whole grid: <out>/mlruns or <out>/tensorboard/<run>
            **({"tracking-dir": str(Path(self.out).resolve())} if tracked else {}),
            "preset": self.preset,
            "image-size": self.image_size,
            "batch-size": self.batch_size,
            "local-epochs": self.local_epochs,
            "val-fraction": self.val_fraction,
            "split-seed": self.split_seed,
            "seed": seed,
            "preprocess": preprocess,
        }

    def config(self, seed: int, *, preprocess: bool = False, **overrides: Any) -> EndoFedConfig:
        """:meth:`base_mapping` (plus kebab-case ``overrides``) as an :class:`EndoFedConfig`."""
        return EndoFedConfig.from_mapping(
            {**self.base_mapping(seed, preprocess=preprocess), **overrides}
        )


@dataclass
class Job:
    """One cell of the grid: an arm at one DP budget and seed."""

    arm: Arm
    dp: float
    seed: int

    @property
    def key(self) -> str:
        """``<arm>_<dp>_<seed>``, e.g. ``fedavg_8_0``: names the job's result marker."""
        return f"{self.arm.name}_{dp_label(self.dp)}_{self.seed}"

    @property
    def run_name(self) -> str:
        """:attr:`key` safe as a folder and Flower run name."""
        return re.sub(r"[^A-Za-z0-9_.-]", "-", self.key)


def grid(spec: ExperimentSpec) -> list[Job]:
    """All jobs: federated arms x dp x seeds; central/local once per seed (no DP)."""
    jobs = []
    for seed in spec.seeds:
        for arm in spec.arms:
            for eps in (spec.dp if arm.kind == FEDERATED else [0.0]):
                jobs.append(Job(arm, eps, seed))
    return jobs
