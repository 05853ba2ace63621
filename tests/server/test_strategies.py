"""Strategy registry and central-DP wrappers."""

import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedProx,
)

from endofed.server.strategies import STRATEGIES, build_strategy
from endofed.shared.config import ConfigError, EndoFedConfig


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_builds(name):
    cfg = EndoFedConfig.from_mapping({"strategy": name, "min-train-nodes": 3})
    strategy = build_strategy(cfg, ArrayRecord())
    assert strategy.min_train_nodes == 3


def test_fedprox_and_fedadam_get_their_parameters():
    prox = build_strategy(EndoFedConfig.from_mapping({"strategy": "fedprox",
                                                      "proximal-mu": 0.3}), ArrayRecord())
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.3
    adam = build_strategy(EndoFedConfig.from_mapping({"strategy": "FedAdam",
                                                      "server-learning-rate": 0.05}),
                          ArrayRecord())
    assert isinstance(adam, FedAdam) and adam.eta == 0.05


def test_central_dp_wraps_the_chosen_strategy():
    s = build_strategy(EndoFedConfig.from_mapping(
        {"strategy": "fedprox", "central-dp": "server-fixed", "central-dp-noise": 0.5,
         "central-dp-clip": 2.0}), ArrayRecord())
    assert isinstance(s, DifferentialPrivacyServerSideFixedClipping)
    assert isinstance(s.strategy, FedProx)
    assert s.clipping_norm == 2.0 and s.noise_multiplier == 0.5
    a = build_strategy(EndoFedConfig.from_mapping({"central-dp": "client-adaptive"}),
                       ArrayRecord())
    assert isinstance(a, DifferentialPrivacyClientSideAdaptiveClipping)


def test_unknown_names_list_the_choices():
    with pytest.raises(ConfigError, match="fedavg"):
        build_strategy(EndoFedConfig.from_mapping({"strategy": "fedmagic"}), ArrayRecord())
    with pytest.raises(ConfigError, match="server-fixed"):
        build_strategy(EndoFedConfig.from_mapping({"central-dp": "maybe"}), ArrayRecord())
