"""Trust policy: which settings a deployed hospital keeps from its own node config.

In a deployment the coordinator writes the run config and each hospital its SuperNode's
node config. A few settings guard the site's privacy budget, so the run config must not
be able to change them at a site that set them (or that relies on their defaults).
In simulation (node config with ``partition-id``) the policy does not apply.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from endofed.shared.config.coercion import section_to_mapping
from endofed.shared.config.privacy import PrivacyConfig

log = logging.getLogger(__name__)

#: Keys only the hospital sets (node config) in a deployment: a coordinator must not be
#: able to move a site's privacy ledger (a fresh ledger would be a fresh budget).
SITE_OWNED_KEYS: tuple[str, ...] = ("state-dir",)


def site_owned_run_config(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any]
) -> dict[str, Any]:
    """The run config as a deployed site accepts it, given the site's node config.

    * ``state-dir`` from the run config is ignored (the ledger stays where the site
      keeps it);
    * a site that sets its own ``dp-epsilon`` owns all its ``dp-*`` settings: the run
      config can neither switch DP off nor loosen delta, clipping or accountant; the
      site's values, or the built-in defaults, apply.
    """
    out = dict(run_config)
    for key in SITE_OWNED_KEYS:
        if out.get(key) not in (None, "") and key not in node_config:
            log.warning("run config sets the site-owned key '%s'; ignored (set it in the "
                        "SuperNode's --node-config)", key)
        out.pop(key, None)
    if float(node_config.get("dp-epsilon", 0) or 0) > 0:
        defaults = section_to_mapping(PrivacyConfig())
        for key in [k for k in out if k.startswith("dp-")]:
            if key not in node_config and out[key] != defaults.get(key, out[key]):
                log.warning("run config sets '%s=%s'; this site owns its DP settings "
                            "(node config dp-epsilon), so %r applies", key, out[key],
                            defaults.get(key))
            out.pop(key)
    return out
