"""Screening of client replies before anything is aggregated.

Each check is a function ``(message, expected_shapes) -> reason | None`` in a list;
the first reason found rejects the reply, which is logged and never aggregated.

A site that refuses or fails a round answers with an error whose reason is a category
and its display name (:func:`endofed.privacy.reply_policy.refusal_reason`): the server
records e.g. "refused: site data unusable" under the site's name. Everything else
(the path, the exception) stays in the site's own log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from endofed.privacy.reply_policy import APP_NOT_APPROVED, BUDGET_EXHAUSTED, parse_refusal
from endofed.shared import protocol

log = logging.getLogger(__name__)

ARRAYS_KEY = protocol.ARRAYS
METRICS_KEY = protocol.METRICS
SITE_KEY = protocol.SITE
DECLINED_KEY = protocol.DECLINED
DECLINED_REASON = f"declined: {BUDGET_EXHAUSTED}"
APP_REFUSED_REASON = f"refused: {APP_NOT_APPROVED}"


@dataclass
class ScreenedReply:
    """A reply that was not aggregated, and why."""

    node_id: int
    site: str
    reason: str
    declined: bool = False


def site_of(msg: Message) -> str:
    """The site name a reply declares (an error: the name its refusal carries), else
    ``node-<id>``."""
    if msg.has_error():
        refusal = parse_refusal(msg.error.reason, allow_detail=True)
        if refusal is not None and refusal.site is not None:
            return refusal.site
        return f"node-{msg.metadata.src_node_id}"
    try:
        return str(msg.content[SITE_KEY][protocol.SITE_NAME])
    except KeyError:
        return f"node-{msg.metadata.src_node_id}"


def error_reason(msg: Message) -> str:
    """What the server records for an error reply (see :func:`describe_error`)."""
    return describe_error(msg.error.reason)


def describe_error(reason: str | None) -> str:
    """What the server records for an error reason.

    A site's refusal: ``declined: privacy budget exhausted`` or ``refused: <category>``
    (with the outgoing audit's detail, if any); an error made by Flower itself (a node
    that went offline...): ``client error: <reason>``.
    """
    refusal = parse_refusal(reason, allow_detail=True)
    if refusal is None:
        return f"client error: {reason}"
    if refusal.declined:
        return DECLINED_REASON
    return f"refused: {refusal.category}" + (f" ({refusal.detail})" if refusal.detail else "")


Check = Callable[[Message, Mapping[str, tuple[int, ...]]], str | None]


def _error(msg: Message, expected: Mapping[str, tuple[int, ...]]) -> str | None:
    if msg.has_error():
        return error_reason(msg)
    return None


def _declined(msg: Message, expected: Mapping[str, tuple[int, ...]]) -> str | None:
    metrics = msg.content.metric_records.get(METRICS_KEY)
    if metrics is not None and float(metrics.get(DECLINED_KEY, 0)) > 0:
        return DECLINED_REASON
    return None


def _has_arrays(msg: Message, expected: Mapping[str, tuple[int, ...]]) -> str | None:
    if ARRAYS_KEY not in msg.content.array_records:
        return "reply carries no model arrays"
    if METRICS_KEY not in msg.content.metric_records:
        return "reply carries no metrics"
    if protocol.NUM_EXAMPLES not in msg.content[METRICS_KEY]:
        return f"reply metrics lack {protocol.NUM_EXAMPLES!r}"
    return None


def _shapes(msg: Message, expected: Mapping[str, tuple[int, ...]]) -> str | None:
    arrays = msg.content[ARRAYS_KEY]
    keys = list(arrays.keys())
    if keys != list(expected.keys()):
        missing = set(expected) - set(keys)
        extra = set(keys) - set(expected)
        return f"unexpected array keys (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})"
    for k, arr in arrays.items():
        if tuple(arr.shape) != tuple(expected[k]):
            return f"array {k!r} has shape {tuple(arr.shape)}, expected {tuple(expected[k])}"
    return None


def _finite(msg: Message, expected: Mapping[str, tuple[int, ...]]) -> str | None:
    for k, arr in msg.content[ARRAYS_KEY].items():
        if not np.isfinite(arr.numpy()).all():
            return f"array {k!r} contains NaN or Inf"
    for k, v in msg.content[METRICS_KEY].items():
        values = v if isinstance(v, list) else [v]
        if not all(np.isfinite(float(x)) for x in values):
            return f"metric {k!r} is not finite"
    return None


TRAIN_CHECKS: list[Check] = [_error, _declined, _has_arrays, _shapes, _finite]


def screen_train_replies(
    replies: Iterable[Message], expected_shapes: Mapping[str, tuple[int, ...]]
) -> tuple[list[Message], list[ScreenedReply]]:
    """Split replies into aggregatable ones and rejected/declined ones (logged)."""
    valid: list[Message] = []
    screened: list[ScreenedReply] = []
    for msg in replies:
        reason = next((r for check in TRAIN_CHECKS if (r := check(msg, expected_shapes))), None)
        if reason is None:
            valid.append(msg)
            continue
        item = ScreenedReply(
            node_id=msg.metadata.src_node_id,
            site=site_of(msg),
            reason=reason,
            declined=reason.startswith("declined"),
        )
        screened.append(item)
        if reason == APP_REFUSED_REASON:  # the site runner refused this app bundle
            log.warning("site refused the app: %s (node %d)", item.site, item.node_id)
            continue
        level = logging.INFO if item.declined else logging.WARNING
        log.log(level, "train reply from %s (node %d) not aggregated: %s",
                item.site, item.node_id, reason)
    return valid, screened
