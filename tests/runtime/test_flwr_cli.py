"""Reading what the flwr CLI prints, and finding the venv's Flower scripts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from endofed.simulations.flwr_cli import (
    flwr_executable,
    parse_json_output,
    parse_run_id,
    strip_ansi,
)


def test_json_document_is_found_inside_coloured_log_lines() -> None:
    out = '\x1b[92mINFO\x1b[0m : loading\n{\n  "success": true,\n  "runs": [{"run-id": 7}]\n}\n'
    assert strip_ansi("\x1b[1;31mred\x1b[0m") == "red"
    assert parse_json_output(out) == {"success": True, "runs": [{"run-id": 7}]}
    with pytest.raises(ValueError, match="no JSON object"):
        parse_json_output("\x1b[91mERROR\x1b[0m : connection refused")


def test_run_id_from_either_stream() -> None:
    assert parse_run_id("\x1b[92mSuccessfully started run 1234\x1b[0m") == 1234
    assert parse_run_id("nothing here", "🎊 Successfully started run 99") == 99
    assert parse_run_id("", "") is None


def test_executables_come_from_this_venv() -> None:
    flwr = flwr_executable("flwr")
    assert flwr.parent == Path(sys.executable).parent
    with pytest.raises(FileNotFoundError, match="not found"):
        flwr_executable("no-such-flower-tool")
