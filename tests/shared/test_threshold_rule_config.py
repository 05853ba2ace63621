"""The ``threshold-rule`` key: declared in the run config, typed, validated."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from endofed.shared.config import ConfigError, EndoFedConfig

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_threshold_rule_is_declared_and_read():
    declared = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert declared["threshold-rule"] == "youden"
    assert EndoFedConfig.from_mapping({}).federation.threshold_rule == "youden"
    cfg = EndoFedConfig.from_mapping({"threshold-rule": "sensitivity:0.95"})
    assert cfg.federation.threshold_rule == "sensitivity:0.95"


@pytest.mark.parametrize("rule", ["median", "sensitivity:2", "youden:1", "specificity:"])
def test_a_bad_rule_is_a_config_error_naming_the_key(rule):
    with pytest.raises(ConfigError, match="'threshold-rule'"):
        EndoFedConfig.from_mapping({"threshold-rule": rule})
