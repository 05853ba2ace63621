"""The grammar of the ``threshold-rule`` key: how the image-level threshold is chosen.

``youden`` (maximise sensitivity + specificity - 1), ``sensitivity:X`` (the highest
threshold whose sensitivity is at least ``X``, for screening), ``specificity:X`` (the
lowest threshold whose specificity is at least ``X``) or ``fixed:T`` (always ``T``).
:mod:`endofed.shared.metrics.operating_point` applies the rule; it is parsed here so
that the config rejects a bad value before any training starts.
"""

from __future__ import annotations

import math

from endofed.shared.config.coercion import ConfigError

#: Rule kinds; every kind but ``youden`` takes a number in ``[0, 1]`` after a colon.
THRESHOLD_RULES: tuple[str, ...] = ("youden", "sensitivity", "specificity", "fixed")


def parse_threshold_rule(rule: str, *, key: str = "threshold-rule") -> tuple[str, float | None]:
    """``"sensitivity:0.95"`` -> ``("sensitivity", 0.95)``; ``"youden"`` -> ``("youden", None)``.

    Raises :class:`ConfigError` naming ``key`` for anything else.
    """
    text = str(rule).strip().lower()
    kind, sep, value = text.partition(":")
    kind = kind.strip()
    hint = "use youden, sensitivity:X, specificity:X or fixed:T with X, T in [0, 1]"
    if kind not in THRESHOLD_RULES:
        raise ConfigError(f"config key '{key}': unknown rule {rule!r}; {hint}")
    if kind == "youden":
        if sep:
            raise ConfigError(f"config key '{key}': 'youden' takes no value, got {rule!r}")
        return kind, None
    try:
        target = float(value)
    except ValueError:
        raise ConfigError(f"config key '{key}': {rule!r} needs a number; {hint}") from None
    if not math.isfinite(target) or not 0.0 <= target <= 1.0:
        raise ConfigError(f"config key '{key}': {rule!r} is outside [0, 1]; {hint}")
    return kind, target
