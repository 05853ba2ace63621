"""Site-owned settings: a hospital's compute, preprocessing and privacy, never the coordinator's.

At a deployed site (node config without ``partition-id``) the settings in
:data:`SITE_SETTING_KEYS` come from the site: its ``endofed site join`` flags (written
into the SuperNode's node config), other node-config keys, or the built-in defaults.
The coordinator's run config cannot set them: :func:`site_owned_run_config` drops them
from the run config before the site's configuration is built (the site runner applies
it to every message, outside the code the coordinator ships). DP settings keep the
policy of :func:`endofed.shared.config.trust.site_owned_run_config` on top.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from endofed.shared.config import EndoFedConfig
from endofed.shared.config.coercion import section_keys
from endofed.shared.config.scope import DP_KEYS
from endofed.shared.config.sections import PreprocessConfigRef

log = logging.getLogger(__name__)

#: Compute and preprocessing keys a deployed site owns outright.
COMPUTE_KEYS: tuple[str, ...] = ("device", "threads", "workers", "amp")
PREPROCESS_KEYS: tuple[str, ...] = section_keys(PreprocessConfigRef)
#: Every key the site owns (DP: the site's values once it sets dp-epsilon).
SITE_SETTING_KEYS: tuple[str, ...] = (*COMPUTE_KEYS, *PREPROCESS_KEYS, *DP_KEYS, "state-dir")

_LOGGED: set[tuple[str, str, str]] = set()

SOURCE_FLAG = "site flag"
SOURCE_NODE = "node config"
SOURCE_DEFAULT = "default"


def is_deployed(node_config: Mapping[str, Any]) -> bool:
    """A real site (not a simulated partition)."""
    return "partition-id" not in node_config


def site_owned_run_config(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any]
) -> dict[str, Any]:
    """The run config without the compute and preprocessing keys a deployed site owns.

    In simulation (``partition-id`` in the node config) the run config is unchanged.
    A run-config value that differs from what the site uses is logged (once).
    """
    out = dict(run_config)
    if not is_deployed(node_config):
        return out
    defaults = EndoFedConfig().to_mapping()
    for key in (*COMPUTE_KEYS, *PREPROCESS_KEYS):
        if key not in out:
            continue
        value = out.pop(key)
        site_value = node_config.get(key, defaults.get(key))
        if value != site_value and (k := (key, repr(value), repr(site_value))) not in _LOGGED:
            _LOGGED.add(k)
            log.info("run config sets %s=%r; this site owns it and uses %r", key, value,
                     site_value)
    return out


@dataclass(frozen=True)
class EffectiveSetting:
    """One site-owned setting as the site's training will use it."""

    key: str
    value: Any
    source: str  # SOURCE_FLAG | SOURCE_NODE | SOURCE_DEFAULT


def effective_settings(
    node_config: Mapping[str, Any], from_flags: Collection[str] = ()
) -> list[EffectiveSetting]:
    """Every site-owned setting with its value and where it came from.

    ``from_flags``: the node-config keys set by an ``endofed site join`` flag.
    The values are those of the built configuration (so a type or range error in a
    node-config value raises :class:`~endofed.shared.config.ConfigError` here).
    """
    cfg = EndoFedConfig.from_flower({}, dict(node_config)).to_mapping()
    out = []
    for key in SITE_SETTING_KEYS:
        if key in from_flags:
            source = SOURCE_FLAG
        elif key in node_config:
            source = SOURCE_NODE
        else:
            source = SOURCE_DEFAULT
        value = node_config.get(key, cfg.get(key))
        out.append(EffectiveSetting(key, value, source))
    return out


def format_settings(settings: list[EffectiveSetting]) -> str:
    """A plain table: key, value, source (one line each)."""
    width = max(len(s.key) for s in settings)
    return "\n".join(f"  {s.key:<{width}}  {s.value!s:<24} ({s.source})" for s in settings)
