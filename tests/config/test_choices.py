"""The config's choice tuples equal the registries that implement them."""

from __future__ import annotations

from endofed.privacy.accounting import ACCOUNTANTS
from endofed.server.strategies import CENTRAL_DP, STRATEGIES
from endofed.shared.config import choices
from endofed.shared.data.partition import PARTITIONERS
from endofed.shared.engine.optim import OPTIMIZERS, SCHEDULES
from endofed.shared.overlay_detector.selection import DETECTOR_NAMES


def test_each_choice_tuple_is_its_registry():
    hint = "add the new name to shared/config/choices.py too"
    assert set(choices.OPTIMIZERS) == set(OPTIMIZERS), hint
    assert set(choices.LR_SCHEDULES) == set(SCHEDULES), hint
    assert set(choices.STRATEGIES) == set(STRATEGIES), hint
    assert set(choices.CENTRAL_DP_MODES) == {"none", *CENTRAL_DP}, hint
    assert set(choices.DP_ACCOUNTANTS) == set(ACCOUNTANTS), hint
    assert set(choices.PARTITION_SCHEMES) == set(PARTITIONERS), hint
    assert set(choices.OVERLAY_DETECTORS) == set(DETECTOR_NAMES), hint
