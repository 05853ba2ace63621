"""Arms, DP budgets and the job grid of an experiment."""

from __future__ import annotations

import pytest

from endofed.server.strategies import STRATEGIES
from endofed.simulations.experiment_spec import (
    FEDERATED,
    ExperimentError,
    grid,
    parse_arms,
    parse_dp,
)


def test_arm_and_dp_parsing():
    arms = parse_arms(["central", "fedavg", "FedProx"], preprocess_ablation=True)
    assert [a.name for a in arms] == ["central", "fedavg", "fedavg+prep", "fedprox",
                                      "fedprox+prep"]
    assert [a.kind for a in arms] == ["central", "federated", "federated", "federated",
                                      "federated"]
    assert arms[2].preprocess and not arms[1].preprocess and arms[2].strategy == "fedavg"
    with pytest.raises(ExperimentError, match="unknown arm 'fedfoo'"):
        parse_arms(["fedfoo"])
    assert parse_dp(["none", "8", "1"]) == [0.0, 8.0, 1.0]
    with pytest.raises(ExperimentError):
        parse_dp(["-1"])


def test_every_registered_strategy_is_a_federated_arm():
    arms = parse_arms(sorted(STRATEGIES))
    assert [a.strategy for a in arms] == sorted(STRATEGIES)
    assert {a.kind for a in arms} == {FEDERATED}


def test_grid_runs_federated_arms_per_dp_and_the_others_once_per_seed(tmp_path, tiny_spec):
    spec = tiny_spec(tmp_path, arms=parse_arms(["central", "fedavg+prep"]), dp=[0.0, 8.0],
                     seeds=[0, 1])
    assert [j.key for j in grid(spec)] == [
        "central_none_0", "fedavg+prep_none_0", "fedavg+prep_8_0",
        "central_none_1", "fedavg+prep_none_1", "fedavg+prep_8_1",
    ]
    assert grid(spec)[1].run_name == "fedavg-prep_none_0"
