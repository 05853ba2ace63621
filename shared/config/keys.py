"""Unknown-key errors: name the key, the closest known key, and where it was given."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from endofed.shared.config.coercion import ConfigError


def closest_key(key: str, known: Iterable[str]) -> str | None:
    """The known key ``key`` was most likely meant to be (``dp_epsilon`` -> ``dp-epsilon``)."""
    known = sorted(known)
    normal = key.strip().lower().replace("_", "-")
    if normal in known and normal != key:
        return normal
    match = difflib.get_close_matches(normal, known, n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_message(key: str, known: Iterable[str]) -> str:
    """``unknown key 'dp-epislon' (did you mean 'dp-epsilon'?)``."""
    guess = closest_key(key, known)
    if guess:
        return f"unknown key '{key}' (did you mean '{guess}'?)"
    return (f"unknown key '{key}' (no known key is close; the keys are listed in "
            "[tool.flwr.app.config] of pyproject.toml)")


def check_known_keys(keys: Iterable[str], known: Iterable[str], *, source: str | None) -> None:
    """Raise :class:`ConfigError` for the first key of ``keys`` not in ``known``.

    ``source`` (``"run config"``, ``"node config"``, a file) starts the message.
    """
    known = frozenset(known)
    unknown = [k for k in keys if k not in known]
    if unknown:
        prefix = f"{source}: " if source else ""
        more = f" (and {len(unknown) - 1} more unknown key(s))" if len(unknown) > 1 else ""
        raise ConfigError(prefix + unknown_key_message(unknown[0], known) + more,
                          key=unknown[0])
