"""Which training metrics a site under differential privacy may report.

DP-SGD protects the *weights* it releases. Everything else a site computes from its
images (training losses, the realised size of a Poisson draw, throughput measured on
those images) is outside the guarantee, so a DP site keeps it in its own log and
sends only the names in :data:`DP_REPORTABLE_METRICS`: the accounting of the round
(from :meth:`endofed.privacy.dp.PrivateRound.finish`), its training-set size (the
FedAvg weight, which the site discloses by joining) and wall-clock time.

When a site refuses or fails a round, the server learns a category
(:data:`REFUSAL_CATEGORIES`, e.g. "site data unusable") and the site's display name,
in the one format of :func:`refusal_reason`; never the exception's text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from endofed.privacy.accounting import PrivacyBudgetError
from endofed.shared import protocol
from endofed.shared.config import ConfigError
from endofed.shared.data.layouts import ImageReadError, SiteDataError

DP_REPORTABLE_METRICS: frozenset[str] = frozenset({
    protocol.NUM_EXAMPLES,
    protocol.DECLINED,  # the refusal itself, with the ledger's spent/target below
    protocol.TRAIN_SECONDS,
    protocol.EPSILON_SPENT,
    protocol.EPSILON_TARGET,
    protocol.DP_DELTA,
    protocol.DP_NOISE_MULTIPLIER,
    protocol.DP_SAMPLE_RATE,
    protocol.DP_STEPS,
    protocol.NORM_BIT,  # central DP on top: computed from the already private update
})


def private_reply_metrics(
    metrics: Mapping[str, float],
) -> tuple[dict[str, float], dict[str, float]]:
    """Split a DP site's round metrics into (sent to the server, kept in the site's log)."""
    sent = {k: float(v) for k, v in metrics.items() if k in DP_REPORTABLE_METRICS}
    kept = {k: float(v) for k, v in metrics.items() if k not in DP_REPORTABLE_METRICS}
    return sent, kept


# -- what the server learns when a site refuses or fails a round -------------------------
# A site that cannot answer a round sends one of these categories, and optionally its
# display name, never the exception text: exception texts name files, folders and
# patient ids. The full reason (with its traceback) stays in the site's own log.
DATA_UNUSABLE = "site data unusable"
BUDGET_EXHAUSTED = "privacy budget exhausted"
CONFIG_INVALID = "site configuration invalid"
OUT_OF_MEMORY = "site out of memory"
AUDIT_REFUSED = "outgoing audit refused the reply"
SITE_FAILED = "site failed"
#: The site runner's refusal of an app bundle the hospital has not approved.
APP_NOT_APPROVED = "app not approved"
REFUSAL_CATEGORIES: tuple[str, ...] = (
    DATA_UNUSABLE, BUDGET_EXHAUSTED, CONFIG_INVALID, OUT_OF_MEMORY, AUDIT_REFUSED, SITE_FAILED,
    APP_NOT_APPROVED,
)
_LOG_NOTE = "(details in the site's log)"
MAX_SITE_NAME = 128
_REASON_RE = re.compile(
    r"^(?P<category>[a-z ]{1,40})(?:: (?P<detail>[^\n]{1,400}))? "
    + re.escape(_LOG_NOTE)
    + rf"(?: \[site: (?P<site>[^\n]{{1,{MAX_SITE_NAME}}})\])?$"
)


@dataclass(frozen=True)
class Refusal:
    """A site's refusal or failure as the server sees it: a category and a name."""

    category: str
    site: str | None = None
    detail: str | None = None

    @property
    def declined(self) -> bool:
        """True for a privacy-budget refusal (a decline, not a fault)."""
        return self.category == BUDGET_EXHAUSTED


def valid_site_name(name: object) -> bool:
    """A display name, not a path: printable, no path separators, at most 128 chars."""
    return (isinstance(name, str) and bool(name.strip()) and len(name) <= MAX_SITE_NAME
            and name.isprintable() and "/" not in name and "\\" not in name)


def refusal_category(exc: BaseException) -> str:
    """The category of an exception raised while a site served a round."""
    if isinstance(exc, PrivacyBudgetError):
        return BUDGET_EXHAUSTED
    if isinstance(exc, SiteDataError | ImageReadError):
        return DATA_UNUSABLE
    if isinstance(exc, ConfigError):
        return CONFIG_INVALID
    if isinstance(exc, MemoryError):
        return OUT_OF_MEMORY
    return SITE_FAILED


def refusal_reason(category: str, site: str | None = None, detail: str | None = None) -> str:
    """The error reason a site sends: ``<category>[: detail] (details ...) [site: name]``.

    ``detail`` is for the outgoing audit's own refusals only (built from declared
    names); a reason a handler returns must have none (see :func:`parse_refusal`).
    """
    if category not in REFUSAL_CATEGORIES:
        raise ValueError(f"unknown refusal category {category!r}")
    text = category + (f": {detail}" if detail else "") + f" {_LOG_NOTE}"
    if site is not None and valid_site_name(site):
        text += f" [site: {site}]"
    return text


def parse_refusal(reason: str | None, *, allow_detail: bool = False) -> Refusal | None:
    """The :class:`Refusal` of an error reason in the :func:`refusal_reason` format.

    ``None`` when ``reason`` is anything else (free text, an unknown category, an
    invalid site name, or a detail where none is allowed).
    """
    match = _REASON_RE.match(reason or "")
    if match is None or match["category"] not in REFUSAL_CATEGORIES:
        return None
    if match["detail"] is not None and not allow_detail:
        return None
    site = match["site"]
    if site is not None and not valid_site_name(site):
        return None
    return Refusal(category=match["category"], site=site, detail=match["detail"])
