"""The one typed config: Flower keys in, typed sections out, clear errors."""

from pathlib import Path

import pytest

from endofed.shared.config import ConfigError, EndoFedConfig


def test_run_and_node_config_map_to_typed_sections():
    cfg = EndoFedConfig.from_flower(
        {"local-epochs": 3, "dp-epsilon": "4.5", "secagg": "true", "class-names": "polyp,ulcer",
         "num-server-rounds": 7, "runs-dir": "/tmp/x"},
        {"data-path": "/data/site", "site-name": "oslo", "partition-id": 2},
    )
    assert cfg.train.epochs == 3
    assert cfg.privacy.epsilon == 4.5 and cfg.privacy.enabled
    assert cfg.privacy.secagg is True
    assert cfg.data.class_names == ("polyp", "ulcer")
    assert cfg.federation.num_server_rounds == 7
    assert cfg.federation.runs_dir == Path("/tmp/x")
    assert cfg.site.data_path == Path("/data/site") and cfg.site.site_name == "oslo"
    assert cfg.site.partition_id == 2


def test_node_config_overrides_run_config():
    cfg = EndoFedConfig.from_flower({"dp-epsilon": 8.0}, {"dp-epsilon": 2.0})
    assert cfg.privacy.epsilon == 2.0


def test_deployed_site_owns_its_ledger_location(tmp_path):
    run = {"state-dir": str(tmp_path / "fresh-ledger"), "dp-epsilon": 8.0}
    cfg = EndoFedConfig.from_flower(run, {"data-path": "/data/site"})
    assert cfg.privacy.state_dir is None  # the site's default, not the coordinator's
    own = EndoFedConfig.from_flower(run, {"data-path": "/d", "state-dir": "/srv/state"})
    assert own.privacy.state_dir == Path("/srv/state")
    # Simulation: the run config places every virtual site's state.
    sim = EndoFedConfig.from_flower(run, {"partition-id": 0, "num-partitions": 2})
    assert sim.privacy.state_dir == tmp_path / "fresh-ledger"


def test_run_config_cannot_loosen_a_sites_own_dp_settings():
    node = {"data-path": "/d", "dp-epsilon": 4.0}
    run = {"dp-epsilon": 0.0, "dp-delta": 0.5, "dp-max-grad-norm": 100.0,
           "dp-min-study-budget": 0.0, "local-epochs": 2}
    cfg = EndoFedConfig.from_flower(run, node)
    assert cfg.privacy.epsilon == 4.0 and cfg.privacy.enabled
    defaults = EndoFedConfig.from_mapping({}).privacy
    assert cfg.privacy.delta == defaults.delta
    assert cfg.privacy.max_grad_norm == defaults.max_grad_norm
    assert cfg.privacy.min_study_budget == defaults.min_study_budget
    assert cfg.train.epochs == 2  # non-privacy keys still come from the run
    # A site without its own budget follows the consortium's run config.
    follower = EndoFedConfig.from_flower({"dp-epsilon": 8.0, "dp-delta": 1e-6}, {"data-path": "/d"})
    assert follower.privacy.epsilon == 8.0 and follower.privacy.delta == 1e-6


def test_round_trip_through_mapping():
    cfg = EndoFedConfig.from_mapping({"preset": "cpu", "batch-size": 4, "dp-epsilon": 1.0})
    again = EndoFedConfig.from_mapping(cfg.to_mapping())
    assert again == cfg


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"batch-size": "many"}, "batch-size"),
        ({"batch-size": 0}, "batch-size"),
        ({"dp-epsilon": -1}, "dp-epsilon"),
        ({"finetune": "partial"}, "finetune"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"secagg": "maybe"}, "secagg"),
    ],
)
def test_bad_values_name_the_key(values, needle):
    with pytest.raises(ConfigError, match=needle):
        EndoFedConfig.from_mapping(values)
