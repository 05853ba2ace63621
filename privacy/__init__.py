"""Per-site differential privacy and the guards around what leaves a site.

* :mod:`~endofed.privacy.dp`: :func:`make_private`, the one entry point for a DP-SGD
  round (Opacus), given plain torch objects, the site's ledger and the study's plan.
* :mod:`~endofed.privacy.reply_policy`: which metrics a DP site may report.
* :mod:`~endofed.privacy.sampling`: the Poisson loader and unpredictable generators.
* :mod:`~endofed.privacy.accounting` / :mod:`~endofed.privacy.ledger`: noise
  calibration over the persistent, locked, write-ahead per-site ledger.
* :mod:`~endofed.privacy.outgoing`: the audit every ClientApp reply passes.
* :mod:`~endofed.privacy.audit`: membership-inference audit of a global model.
* :mod:`~endofed.privacy.certs`: TLS certificates and SuperNode keys.

This package root stays light (no torch/Opacus import).
"""

from endofed.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    compute_epsilon,
    create_accountant,
)
from endofed.privacy.ledger import LedgerError, PrivacyLedger, default_state_root, ledger_path

__all__ = [
    "ACCOUNTANTS",
    "LedgerError",
    "PrivacyBudgetError",
    "PrivacyLedger",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "create_accountant",
    "default_state_root",
    "ledger_path",
]
