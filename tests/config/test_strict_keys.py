"""Strict configuration (issue 14 item 1, Why 1 and 7): unknown keys, scopes, values."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from endofed.shared.config import ConfigError, EndoFedConfig
from endofed.shared.config.scope import (
    COMMAND_SCOPES,
    NODE_KEYS,
    NODE_ONLY_KEYS,
    SIMULATE_SCOPE,
    TRAIN_SCOPE,
)

ROOT = Path(__file__).resolve().parents[2]
RUN_CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_a_typo_is_an_error_naming_the_closest_key():
    # Old code: from_mapping ignored the key, so DP stayed off without a word.
    with pytest.raises(ConfigError) as info:
        EndoFedConfig.from_mapping({"dp-epislon": 1})
    assert str(info.value) == "unknown key 'dp-epislon' (did you mean 'dp-epsilon'?)"
    assert info.value.key == "dp-epislon"
    with pytest.raises(ConfigError, match=r"'dp_epsilon' \(did you mean 'dp-epsilon'\?\)"):
        EndoFedConfig.from_mapping({"dp_epsilon": 1})
    with pytest.raises(ConfigError, match="'zzz' .no known key is close"):
        EndoFedConfig.from_mapping({"zzz": 1})
    with pytest.raises(ConfigError, match=r"^runs/x/config.json: unknown key 'lr'"):
        EndoFedConfig.from_mapping({"lr": 1}, source="runs/x/config.json")


def test_run_and_node_config_name_their_source():
    with pytest.raises(ConfigError, match=r"^run config: unknown key 'num-server-round' "
                                          r"\(did you mean 'num-server-rounds'\?\)"):
        EndoFedConfig.from_flower({**RUN_CONFIG, "num-server-round": 5}, {})
    with pytest.raises(ConfigError, match=r"^node config: unknown key 'data-pth'"):
        EndoFedConfig.from_flower(RUN_CONFIG, {"data-pth": "/d"})
    with pytest.raises(ConfigError, match=r"^node config: config key 'dp-epsilon'"):
        EndoFedConfig.from_flower(RUN_CONFIG, {"data-path": "/d", "dp-epsilon": -1})
    with pytest.raises(ConfigError, match=r"^run config: config key 'batch-size'"):
        EndoFedConfig.from_flower({**RUN_CONFIG, "batch-size": 0}, {"data-path": "/d"})


def test_the_declared_run_config_is_exactly_the_known_keys():
    # Every [tool.flwr.app.config] key is read (old code: `partition` was read by the
    # ClientApp behind the config's back), and every known key a run config may set is
    # declared there (Flower refuses an override of an undeclared key).
    known = EndoFedConfig.known_keys()
    assert set(RUN_CONFIG) == known - NODE_ONLY_KEYS
    cfg = EndoFedConfig.from_flower(RUN_CONFIG, {"partition-id": 1, "num-partitions": 3})
    assert cfg.site.partition == "iid" and cfg.site.partition_id == 1


def test_node_config_may_set_only_a_sites_own_settings():
    ok = {"data-path": "/d", "site-name": "St Mary's", "state-dir": "/s", "dp-epsilon": 4.0,
          "dp-delta": 1e-6, "device": "cpu", "threads": 2, "preprocess": True}
    assert EndoFedConfig.from_flower(RUN_CONFIG, ok).site.site_name == "St Mary's"
    for key, value in (("strategy", "fedadam"), ("learning-rate", 0.1),
                       ("num-server-rounds", 9), ("preset", "tiny"), ("secagg", True)):
        with pytest.raises(ConfigError, match=rf"^node config: '{key}' is the coordinator's"):
            EndoFedConfig.from_flower(RUN_CONFIG, {"data-path": "/d", key: value})


def test_run_config_cannot_set_a_node_only_key():
    for key, value in (("site-name", "x"), ("partition-id", 0), ("num-partitions", 2)):
        with pytest.raises(ConfigError, match=rf"^run config: '{key}' belongs to each site"):
            EndoFedConfig.from_flower({**RUN_CONFIG, key: value}, {"data-path": "/d"})


def test_scopes_name_only_known_keys():
    known = EndoFedConfig.known_keys()
    assert NODE_KEYS <= known
    for scope in COMMAND_SCOPES.values():
        assert scope.honoured <= known, scope.command
        assert set(scope.instead) <= known, scope.command
        assert not set(scope.instead) & scope.honoured, scope.command


def test_train_honours_model_data_schedule_and_dp_keys_only():
    TRAIN_SCOPE.check(["preset", "learning-rate", "lr-schedule", "warmup-steps", "image-size",
                       "threshold-rule", "dp-epsilon", "dp-delta", "dp-max-grad-norm"])
    for key in ("strategy", "num-server-rounds", "secagg", "central-dp", "server-momentum",
                "run-name", "runs-dir", "data-path", "proximal-mu", "state-dir", "site-name"):
        with pytest.raises(ConfigError, match=rf"^config key '{key}': train does not use it"):
            TRAIN_SCOPE.check([key])


def test_simulate_refuses_what_its_own_flags_set():
    SIMULATE_SCOPE.check(["learning-rate", "proximal-mu", "dp-delta", "secagg", "server-tau"])
    for key, flag in (("strategy", "--arms"), ("dp-epsilon", "--dp"), ("preset", "--preset"),
                      ("num-server-rounds", "--rounds"), ("partition", "--partition")):
        with pytest.raises(ConfigError, match=rf"'{key}': simulate does not use it .*{flag}"):
            SIMULATE_SCOPE.check([key])


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../up", "a\\b", "-rf", ".hidden",
                                  "tab\there", "new\nline", "nul\x00", "with space", "x" * 129])
def test_unsafe_run_names_are_refused(name):
    # Old code accepted '..' (and everything without '/'): runs-dir/.. is outside runs-dir.
    with pytest.raises(ConfigError, match="'run-name'.*not a safe folder name"):
        EndoFedConfig.from_flower({**RUN_CONFIG, "run-name": name})


@pytest.mark.parametrize("name", ["default", "polyps-2026-05", "fedavg_8_0", "fedavg-prep_0.5_1",
                                  "_scratch", "x" * 128])
def test_safe_run_names_pass(name):
    assert EndoFedConfig.from_flower({**RUN_CONFIG, "run-name": name}).federation.run_name == name


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"dp-epsilon": "nan"}, "'dp-epsilon': expected a finite number"),  # nan > 0 is False
        ({"learning-rate": "inf"}, "'learning-rate': expected a finite number"),
        ({"batch-size": True}, "'batch-size': expected an integer"),
        ({"secagg": "maybe"}, "'secagg': expected true or false"),
        ({"optimizer": "adamm"}, "'optimizer': unknown 'adamm' .did you mean 'adam'"),
        ({"lr-schedule": "step"}, "'lr-schedule': unknown 'step'"),
        ({"strategy": "fedadm"}, "'strategy': unknown 'fedadm' .did you mean 'fedadam'"),
        ({"central-dp": "server"}, "'central-dp': unknown 'server'"),
        ({"dp-accountant": "gdp"}, "'dp-accountant': unknown 'gdp'"),
        ({"partition": "dirichet:0.5"}, "'partition': unknown 'dirichet'"),
        ({"preprocess-detector": "yolo"}, "'preprocess-detector': unknown 'yolo'"),
        ({"device": "gpu"}, "'device': unknown 'gpu'"),
        ({"momentum": 1.0}, r"'momentum': must be in \[0, 1\), got 1.0"),
        ({"fraction-train": 0}, r"'fraction-train': must be in \(0, 1\]"),
        ({"round-timeout": 0}, "'round-timeout': must be > 0"),
        ({"workers": -1}, "'workers': must be >= 0"),
        ({"class-names": ""}, "'class-names': give at least one class"),
        ({"class-names": "polyp,polyp"}, "'class-names': a name is repeated"),
        ({"central-dp-clip": 0}, "'central-dp-clip': must be > 0"),
        ({"secagg-num-shares": 0}, "'secagg-num-shares': must be > 0"),
        ({"site-name": "a\x1b[31m"}, "'site-name'.*control characters"),
        ({"partition-id": 3, "num-partitions": 3}, "'partition-id': 3 is not below"),
    ],
)
def test_values_are_checked_in_the_config(values, needle):
    with pytest.raises(ConfigError, match=needle):
        EndoFedConfig.from_mapping(values)


def test_case_and_defaults_still_accepted():
    cfg = EndoFedConfig.from_mapping({"strategy": "FedAvg", "central-dp": "None",
                                      "partition": "dirichlet:0.5,4", "fraction-evaluate": 0})
    assert cfg.federation.strategy == "FedAvg"  # the server lower-cases it
    assert EndoFedConfig.from_flower(RUN_CONFIG) == EndoFedConfig.from_flower(dict(RUN_CONFIG))
