"""Flower's ``key=value`` config strings (``--run-config``, ``--node-config``, ...).

``flwr run --run-config``, ``flwr run --federation-config`` and ``flower-supernode
--node-config`` all take flat TOML ``key=value`` pairs separated by spaces; the
values are TOML scalars. :func:`format_run_config` writes them so that flwr's own
parser (``flwr.common.config.parse_config_args``) reads back exactly what was given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

from endofed.shared.util.atomic import atomic_write_text

ConfigValue = str | bool | int | float

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}  # fmt: skip


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
    return atomic_write_text(path, "\n".join(lines) + "\n")
