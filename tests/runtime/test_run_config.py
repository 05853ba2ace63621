"""``key=value`` config strings for the flwr CLI, checked against flwr's own parser."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from endofed.simulations.flwr_run import run_config_args
from endofed.simulations.run_config import format_run_config, toml_value, write_config_toml


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


def test_run_config_args_inline_or_file(tmp_path: Path) -> None:
    assert run_config_args({}, tmp_path / "unused.toml") == []
    assert not (tmp_path / "unused.toml").exists()
    assert run_config_args({"n": 2}, tmp_path / "a.toml") == ["--run-config", "n=2"]
    flag, value = run_config_args({"name": 'say "hi"'}, tmp_path / "b.toml")
    assert (flag, value) == ("--run-config", str(tmp_path / "b.toml"))
    assert parse_config_args([value]) == {"name": 'say "hi"'}
