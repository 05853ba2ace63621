"""Per-site differential privacy: DP-SGD (Opacus) and the persistent privacy ledger.

``privacy.dp`` registers the ``"dp"`` trainer of :mod:`client.training` on import
(the client imports it lazily when ``dp-epsilon`` > 0); this package root stays light.
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
