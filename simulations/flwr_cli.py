"""The venv's Flower command-line tools: where they are and what they print.

We always run the console scripts installed next to the running interpreter
(``flwr``, ``flower-superlink``, ``flower-supernode``), never another installation
found on ``PATH``, and read their output with the parsers below: the ``flwr`` CLI
colours its text (ANSI escapes) and wraps ``--format json`` documents in log lines.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

_RUN_ID_RE = re.compile(r"Successfully started run (\d+)")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def flwr_executable(name: str) -> Path:
    """Path of a Flower console script (``flwr``, ``flower-superlink``...) of this venv.

    Scripts live next to the running interpreter (``<venv>/bin``), whether or not the
    venv is activated, so we never pick up another installation from ``PATH``.
    """
    bin_dir = Path(sys.executable).parent
    for candidate in (bin_dir / name, bin_dir / f"{name}.exe"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"Flower executable '{name}' not found in {bin_dir} (next to {sys.executable}); "
        "is flwr installed in this environment?"
    )


def strip_ansi(text: str) -> str:
    """``text`` without ANSI colour escapes."""
    return _ANSI_RE.sub("", text)


def parse_json_output(text: str) -> Any:
    """Parse the JSON document printed by a ``flwr ... --format json`` command.

    Raises ValueError if the output holds no JSON object.
    """
    text = strip_ansi(text)
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON object in flwr output: {text[:300]!r}")
    return json.loads(text[start : text.rfind("}") + 1])


def parse_run_id(*outputs: str) -> int | None:
    """The run id ``flwr run`` printed (``Successfully started run N``), if any."""
    for text in outputs:
        match = _RUN_ID_RE.search(strip_ansi(text))
        if match:
            return int(match.group(1))
    return None
