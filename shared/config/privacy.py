"""The privacy section: per-site differential privacy, secure aggregation, central DP.

Validation probes for ``torchcsprng`` when Opacus' secure mode is asked for, so a
site learns at start-up, not mid-round, that the package is missing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from endofed.shared.config.choices import CENTRAL_DP_MODES, DP_ACCOUNTANTS, check_choice
from endofed.shared.config.coercion import ConfigError, check_range


def csprng_available() -> bool:
    """Whether ``torchcsprng`` (needed by Opacus' ``secure_mode``) is importable."""
    return importlib.util.find_spec("torchcsprng") is not None


@dataclass(frozen=True)
class PrivacyConfig:
    """Per-site differential privacy and secure aggregation."""

    epsilon: float = field(default=0.0, metadata={"key": "dp-epsilon"})  # 0 = DP off
    delta: float = field(default=1e-5, metadata={"key": "dp-delta"})
    max_grad_norm: float = field(default=1.0, metadata={"key": "dp-max-grad-norm"})
    accountant: str = field(default="prv", metadata={"key": "dp-accountant"})
    # A round whose calibrated noise would exceed this is declined (the budget left
    # is too small for a useful update).
    max_noise_multiplier: float = field(
        default=10.0, metadata={"key": "dp-max-noise-multiplier"}
    )
    # A *new* study (study-id not yet in the site's ledger) starts only if at least this
    # share of dp-epsilon is left; a finished study's calibration slack is not a budget.
    min_study_budget: float = field(default=0.05, metadata={"key": "dp-min-study-budget"})
    # Opacus secure_mode (CSPRNG noise, needs torchcsprng); off: noise and sampling use
    # generators seeded from OS entropy, never from the run config's seed.
    secure_rng: bool = field(default=False, metadata={"key": "dp-secure-rng"})
    # Expected (logical) Poisson batch under DP: large batches keep the noise per
    # image small (De et al. 2022); 0 = batch-size.
    logical_batch_size: int = field(default=64, metadata={"key": "dp-batch-size"})
    # Physical batch cap under DP (Opacus BatchMemoryManager); 0 = batch-size.
    max_physical_batch_size: int = field(
        default=0, metadata={"key": "dp-max-physical-batch-size"}
    )
    secagg: bool = False
    # SecAgg+ protocol: share of the round's sites each secret is shared with, share of
    # those needed to reconstruct, and the range weights are clipped to for quantisation.
    secagg_num_shares: float = 1.0
    secagg_reconstruction_threshold: float = 0.67
    secagg_clipping_range: float = 8.0
    # Example counts are scaled by this before quantisation: set it near the largest
    # site's training-set size (larger = coarser aggregate, smaller = big sites capped).
    secagg_max_weight: float = 1000.0
    # Central (site-level) DP with Flower's strategy wrappers:
    # none | server-fixed | server-adaptive | client-fixed | client-adaptive
    central_dp: str = "none"
    central_dp_noise: float = 1.0
    central_dp_clip: float = 1.0
    # Where the site's privacy ledger lives (node config); None = privacy.ledger default.
    state_dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.epsilon > 0

    def validate(self) -> None:
        if self.epsilon < 0:
            raise ConfigError(f"config key 'dp-epsilon': must be >= 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"config key 'dp-delta': must be in (0, 1), got {self.delta}")
        if self.max_grad_norm <= 0:
            raise ConfigError(
                f"config key 'dp-max-grad-norm': must be > 0, got {self.max_grad_norm}"
            )
        if self.max_noise_multiplier < 0.3:
            raise ConfigError(
                "config key 'dp-max-noise-multiplier': must be >= 0.3, "
                f"got {self.max_noise_multiplier}"
            )
        if self.secure_rng and not csprng_available():
            raise ConfigError(
                "config key 'dp-secure-rng': Opacus' secure mode needs the torchcsprng "
                "package, which is not installed (it has no build for this torch); set "
                "dp-secure-rng=false: noise and sampling then use generators seeded from "
                "OS entropy"
            )
        if not 0 <= self.min_study_budget < 1:
            raise ConfigError(
                "config key 'dp-min-study-budget': must be in [0, 1) (a share of "
                f"dp-epsilon), got {self.min_study_budget}"
            )
        if self.logical_batch_size < 0:
            raise ConfigError(
                "config key 'dp-batch-size': must be >= 0 (0 = batch-size), "
                f"got {self.logical_batch_size}"
            )
        if self.max_physical_batch_size < 0:
            raise ConfigError(
                "config key 'dp-max-physical-batch-size': must be >= 0 (0 = batch-size), "
                f"got {self.max_physical_batch_size}"
            )
        check_choice("dp-accountant", self.accountant, DP_ACCOUNTANTS)
        check_range("secagg-num-shares", self.secagg_num_shares, gt=0,
                    note="a share of the round's sites if <= 1, else a count")
        check_range("secagg-reconstruction-threshold", self.secagg_reconstruction_threshold,
                    gt=0, note="a share of the shares if <= 1, else a count")
        check_range("secagg-clipping-range", self.secagg_clipping_range, gt=0)
        check_range("secagg-max-weight", self.secagg_max_weight, gt=0)
        check_choice("central-dp", self.central_dp.lower() or "none", CENTRAL_DP_MODES)
        check_range("central-dp-noise", self.central_dp_noise, ge=0)
        check_range("central-dp-clip", self.central_dp_clip, gt=0)
