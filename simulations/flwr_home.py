"""Private Flower CLI state: a throw-away ``FLWR_HOME`` and TOML value formatting.

The ``flwr`` CLI reads its SuperLink connections from ``$FLWR_HOME/config.toml``
(``~/.flwr`` by default) and the SuperLink/SuperExec install FABs under
``$FLWR_HOME/apps``. EndoFed always points ``FLWR_HOME`` at a private temporary
directory so it never reads or writes the user's ``~/.flwr``.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ConfigValue = str | bool | int | float

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}  # fmt: skip


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


def toml_value(value: ConfigValue) -> str:
    """Format one config value as TOML: quoted/escaped strings, lowercase bools."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-tripping form, always has '.' or 'e'
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in _TOML_ESCAPES:
                out.append(_TOML_ESCAPES[ch])
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    raise TypeError(
        f"config value {value!r} has type {type(value).__name__}; expected str, bool, int or float"
    )


def check_config_key(key: str) -> str:
    """Return ``key`` if it is a (dotted) bare TOML key, else raise ValueError."""
    if not _KEY_RE.match(key):
        raise ValueError(
            f"config key {key!r} is not a bare TOML key (letters, digits, '-', '_', '.')"
        )
    return key


def format_run_config(config: Mapping[str, ConfigValue]) -> str:
    """Format ``config`` as the ``key=value ...`` string of ``flwr run --run-config``.

    Strings are TOML basic strings (double quotes, escaped), bools ``true``/``false``,
    numbers bare. ``flwr`` splits the string with a regex that cannot see past a
    double quote inside a quoted value, so such strings raise ValueError; use
    :func:`write_config_toml` (and pass the file) for those.
    """
    parts = []
    for key, value in config.items():
        check_config_key(key)
        if isinstance(value, str) and '"' in value:
            raise ValueError(
                f"run-config value of {key!r} contains a double quote, which "
                "`flwr run --run-config` cannot parse inline; pass a TOML file instead"
            )
        parts.append(f"{key}={toml_value(value)}")
    return " ".join(parts)


def write_config_toml(path: Path, config: Mapping[str, ConfigValue]) -> Path:
    """Write ``config`` as flat ``key = value`` TOML lines (for ``--run-config FILE``)."""
    lines = [f"{check_config_key(k)} = {toml_value(v)}" for k, v in config.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class SuperLinkConnection:
    """One ``[superlink.<name>]`` entry of the Flower config file."""

    name: str
    address: str
    insecure: bool = True
    root_certificates: Path | None = None


def write_flower_config(home: Path, connection: SuperLinkConnection) -> Path:
    """Write ``home/config.toml`` with ``connection`` as the only (default) connection."""
    check_config_key(connection.name)
    lines = [
        "[superlink]",
        f"default = {toml_value(connection.name)}",
        "",
        f"[superlink.{connection.name}]",
        f"address = {toml_value(connection.address)}",
        f"insecure = {toml_value(connection.insecure)}",
    ]
    if connection.root_certificates is not None:
        lines.append(f"root-certificates = {toml_value(str(connection.root_certificates))}")
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
