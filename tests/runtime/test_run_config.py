"""Config formatting for the flwr CLI, checked against flwr's own parsers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from endofed.simulations.flwr_home import (
    SuperLinkConnection,
    format_run_config,
    toml_value,
    write_config_toml,
    write_flower_config,
)
from endofed.simulations.runtime import simulation_federation_config


def test_toml_value_scalars() -> None:
    assert toml_value(True) == "true"
    assert toml_value(False) == "false"
    assert toml_value(3) == "3"
    assert toml_value(-7) == "-7"
    assert toml_value(0.001) == "0.001"
    assert toml_value(2.0) == "2.0"
    assert toml_value("runs/demo") == '"runs/demo"'
    assert toml_value("a\\b\n") == '"a\\\\b\\n"'
    with pytest.raises(TypeError):
        toml_value([1, 2])  # type: ignore[arg-type]


def test_format_run_config_roundtrips_through_flwr_parser() -> None:
    config = {
        "num-server-rounds": 3,
        "learning-rate": 1e-05,
        "fraction-train": 1.0,
        "use-dp": False,
        "secure": True,
        "run-name": "exp 1 (dp)",
        "runs-dir": "/tmp/endo fed/runs",
        "windows-path": "C:\\data\\site'a",
        "empty": "",
    }
    text = format_run_config(config)
    assert "use-dp=false" in text and "secure=true" in text and "num-server-rounds=3" in text
    parsed = parse_config_args([text])
    assert parsed == config
    assert type(parsed["fraction-train"]) is float and type(parsed["num-server-rounds"]) is int


def test_format_run_config_rejects_what_flwr_cannot_parse(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="double quote"):
        format_run_config({"name": 'say "hi"'})
    with pytest.raises(ValueError, match="bare TOML key"):
        format_run_config({"bad key": 1})
    # ...but the TOML-file form carries it exactly.
    path = write_config_toml(tmp_path / "cfg.toml", {"name": 'say "hi"', "n": 2})
    assert parse_config_args([str(path)]) == {"name": 'say "hi"', "n": 2}


def test_special_floats_roundtrip() -> None:
    parsed = parse_config_args([format_run_config({"a": math.inf, "b": -math.inf})])
    assert parsed == {"a": math.inf, "b": -math.inf}


def test_federation_config_integer_and_fractional_cpus() -> None:
    cfg = simulation_federation_config(num_supernodes=3, num_cpus_per_client=1)
    assert cfg == {"num-supernodes": 3, "client-resources-num-cpus": 1}
    # flwr only takes whole CPUs per ClientApp: 0.5 of 2 CPUs -> 4 logical CPUs, 1 each.
    cfg = simulation_federation_config(
        num_supernodes=5, num_cpus_per_client=0.5, backend_num_cpus=2, verbose=True
    )
    assert cfg["client-resources-num-cpus"] == 1
    assert cfg["init-args-num-cpus"] == 4
    assert cfg["verbose"] is True
    with pytest.raises(ValueError):
        simulation_federation_config(num_supernodes=2, num_cpus_per_client=0)


def test_federation_config_is_accepted_by_flwr() -> None:
    from flwr.supercore.utils import simulation_config_from_json

    cfg = simulation_federation_config(
        num_supernodes=4, num_cpus_per_client=1, num_gpus_per_client=0.25,
        backend_num_cpus=2, backend_logging_level="ERROR",
    )  # fmt: skip
    # Same conversion as `flwr run --federation-config` (flwr/cli/run/run.py).
    parsed = parse_config_args([format_run_config(cfg)])
    proto = simulation_config_from_json({k.replace("-", "_"): v for k, v in parsed.items()})
    assert proto.num_supernodes == 4
    assert proto.client_resources_num_cpus == 1
    assert proto.client_resources_num_gpus == pytest.approx(0.25)
    assert proto.init_args_num_cpus == 2
    assert proto.init_args_logging_level == "ERROR"


def test_flower_config_file_is_read_by_flwr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    write_flower_config(tmp_path, SuperLinkConnection("private-x", "127.0.0.1:45678"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    conn = read_superlink_connection()  # the default connection
    assert conn.name == "private-x"
    assert conn.address == "127.0.0.1:45678"
    assert conn.insecure is True
