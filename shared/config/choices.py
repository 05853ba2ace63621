"""The names a choice-valued key may take, so the config rejects a typo before any work.

The registries that implement them sit above ``config`` (the optimisers and schedules in
``shared/engine/optim.py``, the strategies and central-DP wrappers in
``server/strategies.py``, the partitioners in ``shared/data/partition.py``, the overlay
detectors in ``shared/overlay_detector/selection.py``, the accountants in
``privacy/accounting.py``, the experiment trackers in
``shared/metrics/tracking.py``); ``tests/config/test_choices.py`` keeps each tuple equal to its
registry, so adding a name there means adding it here.
"""

from __future__ import annotations

from collections.abc import Iterable

from endofed.shared.config.coercion import ConfigError
from endofed.shared.config.keys import closest_key

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
STRATEGIES: tuple[str, ...] = (
    "fedadagrad", "fedadam", "fedavg", "fedavgm", "fedmedian", "fedprox", "fedtrimmedavg",
    "fedyogi", "krum",
)
CENTRAL_DP_MODES: tuple[str, ...] = (
    "none", "client-adaptive", "client-fixed", "server-adaptive", "server-fixed",
)
DP_ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
PARTITION_SCHEMES: tuple[str, ...] = ("dirichlet", "iid", "source")
OVERLAY_DETECTORS: tuple[str, ...] = ("classical", "learned")
FINETUNE_MODES: tuple[str, ...] = ("auto", "global", "local", "heads")
#: ``tracking``: off, or a backend of shared/metrics/tracking.py (BACKENDS there).
TRACKERS: tuple[str, ...] = ("none", "mlflow", "tensorboard")


def check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value in choices:
        return
    guess = closest_key(str(value), choices)
    hint = f"did you mean '{guess}'? " if guess else ""
    raise ConfigError(
        f"config key '{key}': unknown {value!r} ({hint}choose one of {', '.join(choices)})",
        key=key,
    )
