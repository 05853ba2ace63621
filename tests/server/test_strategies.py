"""Strategy registry and central-DP wrappers: every knob comes from the run config."""

import logging
import tomllib
from pathlib import Path

import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
)

from endofed.server.strategies import (
    STRATEGIES,
    STRATEGY_KEYS,
    base_strategy,
    build_strategy,
    clipping_norm,
    strategy_chain,
)
from endofed.shared.config import ConfigError, EndoFedConfig

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _build(**values):
    mapping = {k.replace("_", "-"): v for k, v in values.items()}
    return build_strategy(EndoFedConfig.from_mapping(mapping), ArrayRecord())


def _flwr_defaults() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_builds(name):
    extra = {"proximal_mu": 0.1} if name == "fedprox" else {}
    strategy = _build(strategy=name, min_train_nodes=3, **extra)
    assert strategy.min_train_nodes == 3


def test_fedprox_passes_mu_and_refuses_zero():
    prox = _build(strategy="fedprox", proximal_mu=0.3)
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.3
    with pytest.raises(ConfigError, match=r"proximal-mu.*> 0"):
        _build(strategy="fedprox")  # the default 0.0 is no longer replaced by 0.01
    with pytest.raises(ConfigError, match="proximal-mu"):
        _build(strategy="fedprox", proximal_mu=-1.0)


def test_fedavgm_reads_learning_rate_and_momentum():
    s = _build(strategy="fedavgm", server_learning_rate=0.7, server_momentum=0.35)
    assert isinstance(s, FedAvgM)
    assert s.server_learning_rate == 0.7 and s.server_momentum == 0.35
    assert s.server_opt


@pytest.mark.parametrize("name, cls", [("fedadam", FedAdam), ("fedyogi", FedYogi)])
def test_fedadam_and_fedyogi_read_every_knob(name, cls):
    values = {"server_learning_rate": 0.031, "server_beta_1": 0.55, "server_beta_2": 0.777,
              "server_tau": 2.5e-4, "learning_rate": 0.0042}
    s = _build(strategy=name, **values)
    assert isinstance(s, cls)
    assert s.eta == values["server_learning_rate"]
    assert s.beta_1 == values["server_beta_1"] and s.beta_2 == values["server_beta_2"]
    assert s.tau == values["server_tau"]
    assert s.eta_l == values["learning_rate"]  # Flower only displays it: the sites' lr


def test_fedadagrad_reads_eta_and_tau():
    s = _build(strategy="fedadagrad", server_learning_rate=0.021, server_tau=3e-5)
    assert isinstance(s, FedAdagrad) and s.eta == 0.021 and s.tau == 3e-5
    assert s.beta_1 == 0.0  # Flower's FedAdagrad has no momentum


def test_fedtrimmedavg_and_krum_read_their_knobs():
    t = _build(strategy="fedtrimmedavg", trimmed_beta=0.37)
    assert isinstance(t, FedTrimmedAvg) and t.beta == 0.37
    k = _build(strategy="krum", num_malicious_nodes=2, min_train_nodes=7)
    assert isinstance(k, Krum) and k.num_malicious_nodes == 2


@pytest.mark.parametrize("key, bad", [
    ("server-learning-rate", 0.0), ("server-momentum", 1.0), ("server-beta-1", -0.1),
    ("server-beta-2", 1.5), ("server-tau", 0.0), ("trimmed-beta", 0.5),
    ("num-malicious-nodes", -1),
])
def test_out_of_range_knobs_name_their_key(key, bad):
    with pytest.raises(ConfigError, match=key):
        EndoFedConfig.from_mapping({key: bad})


def test_every_strategy_key_is_declared_with_the_schema_default():
    declared = _flwr_defaults()
    schema = EndoFedConfig().to_mapping()
    for key in STRATEGY_KEYS:
        assert key in declared, f"{key} missing from [tool.flwr.app.config]"
        assert declared[key] == schema[key], key


def test_knob_of_another_strategy_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="endofed.server.strategies"):
        _build(strategy="fedavg", trimmed_beta=0.3, server_momentum=0.5)
        _build(strategy="fedadagrad", server_beta_1=0.5)
    text = caplog.text
    assert "'trimmed-beta'" in text and "'server-momentum'" in text
    assert "'server-beta-1'" in text and "fedadagrad" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="endofed.server.strategies"):
        _build(strategy="fedadam", server_beta_1=0.5)  # read: nothing to report
    assert "does not use" not in caplog.text


def test_central_dp_wraps_the_chosen_strategy():
    s = _build(strategy="fedprox", proximal_mu=0.1, central_dp="server-fixed",
               central_dp_noise=0.5, central_dp_clip=2.0)
    assert isinstance(s, DifferentialPrivacyServerSideFixedClipping)
    assert isinstance(s.strategy, FedProx)
    assert s.clipping_norm == 2.0 and s.noise_multiplier == 0.5
    a = _build(central_dp="client-adaptive")
    assert isinstance(a, DifferentialPrivacyClientSideAdaptiveClipping)


def test_chain_helpers_see_through_the_wrapper():
    s = _build(strategy="fedadam", server_tau=0.02, central_dp="server-adaptive",
               central_dp_clip=3.5)
    assert isinstance(s, DifferentialPrivacyServerSideAdaptiveClipping)
    assert [type(x) for x in strategy_chain(s)] == [type(s), FedAdam]
    assert base_strategy(s) is s.strategy and base_strategy(s).tau == 0.02
    assert clipping_norm(s) == 3.5
    assert clipping_norm(base_strategy(s)) is None


def test_unknown_names_list_the_choices():
    with pytest.raises(ConfigError, match="fedavg"):
        _build(strategy="fedmagic")
    with pytest.raises(ConfigError, match="server-fixed"):
        _build(central_dp="maybe")
