"""How metric values read in reports: numbers, percentages, localisation rows.

Shared by the Markdown report (:mod:`.report`) and the figures (:mod:`.plots`):
missing or non-finite values read ``n/a``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def fmt_value(value: Any, digits: int = 4) -> str:
    """Ints as ints, numbers with ``digits`` decimals, ``None``/nan/inf as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return "n/a"
    return f"{f:.{digits}f}"


def fmt_percent(value: Any) -> str:
    """A share as a percentage with two decimals (``n/a`` if not a finite number)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{100 * f:.2f}%" if math.isfinite(f) else "n/a"


def localization_groups(loc: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The localisation rows in report order: each morphology, then ``"total"``."""
    groups = list((loc.get("per_morphology") or {}).items())
    if loc.get("overall"):
        groups.append(("total", loc["overall"]))
    return groups


def share_at(row: Mapping[str, Any], t: float) -> float:
    """A row's share of lesions localised at IoU threshold ``t`` (0.0 if absent/nan)."""
    shares = row.get("share") or {}
    for key, value in shares.items():
        if math.isclose(float(key), t):
            return float(value) if value is not None and math.isfinite(float(value)) else 0.0
    return 0.0


def hits_at(row: Mapping[str, Any], t: float) -> int:
    """A row's number of lesions localised at IoU threshold ``t`` (0 if absent)."""
    for key, value in (row.get("hits") or {}).items():
        if math.isclose(float(key), t):
            return int(value)
    return 0
