"""A finished real simulation in which one DP site declines (its budget already spent).

site_2's privacy ledger (``<runs>/_state/site_2/privacy-ledger.json``, where the
simulation keeps it) is charged beforehand with a round of an earlier study that leaves
less than ``dp-min-study-budget`` of its epsilon 8, so in the new study site_2 declines
every round while site_1 trains under DP.
"""

from __future__ import annotations

from pathlib import Path

from endofed.privacy.accounting import compute_epsilon
from endofed.privacy.ledger import LEDGER_NAME, PrivacyLedger

EPSILON, DELTA = 8.0, 1e-4
RUN_CONFIG = {
    "preset": "tiny", "image-size": 64, "batch-size": 4, "dp-batch-size": 0,
    "local-epochs": 1, "synthetic-images-per-site": 10, "threads": 1, "num-server-rounds": 2,
    "dp-epsilon": EPSILON, "dp-delta": DELTA, "seed": 1, "amp": False,
    "min-train-nodes": 1, "min-evaluate-nodes": 2,
}


def spend_budget(runs_dir: Path, site: str = "site_2") -> float:
    """Charge ``site``'s ledger to just under its target; returns epsilon spent."""
    rate, steps, goal = 0.5, 10, EPSILON - 0.15  # < dp-min-study-budget (5 %) left
    lo, hi = 0.3, 50.0  # noise multipliers: epsilon falls as the noise grows
    for _ in range(40):
        mid = (lo + hi) / 2
        if compute_epsilon([(mid, rate, steps)], delta=DELTA, accountant="prv") > goal:
            lo = mid
        else:
            hi = mid
    noise = hi
    ledger = PrivacyLedger(runs_dir / "_state" / site / LEDGER_NAME, site=site,
                           epsilon_target=EPSILON, delta=DELTA)
    entry, _ = ledger.reserve(run="earlier-study", round=1, noise_multiplier=noise,
                              sample_rate=rate, steps=steps, study="earlier-study")
    return ledger.complete(entry, steps=steps)


def make_dp_run(runs_dir: Path, run_name: str = "dp-declined", rounds: int = 2) -> Path:
    """Run the simulation; returns its run directory."""
    from endofed.simulations.federated import run_simulation

    spend_budget(runs_dir)
    cfg = {**RUN_CONFIG, "num-server-rounds": rounds}
    return run_simulation(cfg, num_sites=2, runs_dir=runs_dir, run_name=run_name,
                          timeout=900).run_dir


if __name__ == "__main__":
    import sys
    import time

    t0 = time.time()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(make_dp_run(Path(sys.argv[1]), rounds=rounds), f"{time.time() - t0:.0f}s")
