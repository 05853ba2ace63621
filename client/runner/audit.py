"""What the site runner writes to the site's audit trail for each message.

One entry per message, built here from what was received and what was sent (names,
shapes, byte counts and a sha256 over the sent payload); appended by
:class:`endofed.privacy.audit_trail.AuditTrail`, which hash-chains the entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from endofed.shared import protocol

OUTCOMES = ("replied", "declined", "refused", "failed")


def _scalar_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def received_shapes(content: RecordDict | None) -> dict[str, list[int]]:
    """``{"record/key": shape}`` of a received message (scalars and lists: ``[]``/``[n]``)."""
    out: dict[str, list[int]] = {}
    if content is None:
        return out
    for name, record in content.items():
        for key, value in record.items():
            if isinstance(record, ArrayRecord):
                out[f"{name}/{key}"] = [int(d) for d in value.shape]
            else:
                out[f"{name}/{key}"] = [len(value)] if isinstance(value, list | bytes) else []
    return out


def sent_items(content: RecordDict | None) -> dict[str, dict[str, Any]]:
    """``{"record/key": {"shape": [...], "bytes": n}}`` of a reply's content."""
    out: dict[str, dict[str, Any]] = {}
    if content is None:
        return out
    for name, record in content.items():
        for key, value in record.items():
            if isinstance(record, ArrayRecord):
                out[f"{name}/{key}"] = {"shape": [int(d) for d in value.shape],
                                        "bytes": len(value.data)}
            else:
                out[f"{name}/{key}"] = {
                    "shape": [len(value)] if isinstance(value, list | bytes) else [],
                    "bytes": len(_scalar_json(value).encode()),
                }
    return out


def payload_sha256(reply: Message) -> str:
    """sha256 over the reply's payload in a canonical order.

    Arrays contribute their serialized bytes, metrics and configs their canonical JSON,
    an error reply its code and reason; every item is prefixed by its record and key.
    """
    h = hashlib.sha256()
    if reply.has_error():
        h.update(f"error\0{reply.error.code}\0{reply.error.reason}".encode())
        return h.hexdigest()
    content = reply.content
    for name in sorted(content.keys()):
        record = content[name]
        for key in sorted(record.keys()):
            value = record[key]
            h.update(f"{name}\0{key}\0".encode())
            if isinstance(record, ArrayRecord):
                h.update(value.data)
            else:
                h.update(_scalar_json(value).encode())
            h.update(b"\0")
    return h.hexdigest()


def _round_config(msg: Message) -> Mapping[str, Any]:
    if not msg.has_content():
        return {}
    cfg = msg.content.config_records.get(protocol.CONFIG)
    return dict(cfg) if isinstance(cfg, ConfigRecord) else {}


def _reply_metrics(reply: Message | None) -> Mapping[str, Any]:
    if reply is None or reply.has_error():
        return {}
    metrics = reply.content.metric_records.get(protocol.METRICS)
    return dict(metrics) if isinstance(metrics, MetricRecord) else {}


def outcome_of(reply: Message | None, refused: bool) -> str:
    """``refused`` (app not approved), ``failed`` (an error reply or none), ``declined``
    (a privacy-budget decline) or ``replied``."""
    if refused:
        return "refused"
    if reply is None or reply.has_error():
        return "failed"
    if float(_reply_metrics(reply).get(protocol.DECLINED, 0) or 0) > 0:
        return "declined"
    return "replied"


def audit_entry(
    msg: Message,
    reply: Message | None,
    *,
    app_hash: str,
    refused: bool = False,
    reason: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The audit-trail entry of one message (fields of the shared interface)."""
    cfg = _round_config(msg)
    server_round = cfg.get(protocol.SERVER_ROUND)
    if server_round is None and msg.metadata.group_id.isdigit():
        server_round = int(msg.metadata.group_id)
    sent = sent_items(reply.content) if reply is not None and not reply.has_error() else {}
    metrics = _reply_metrics(reply)
    eps = metrics.get(protocol.EPSILON_SPENT)
    entry: dict[str, Any] = {
        "app_hash": app_hash,
        "run_id": int(msg.metadata.run_id),
        "study_id": str(cfg.get(protocol.STUDY_ID, "")),
        "round": int(server_round) if server_round is not None else None,
        "message_type": msg.metadata.message_type,
        "node_id": int(msg.metadata.dst_node_id),
        "received": received_shapes(msg.content if msg.has_content() else None),
        "sent": sent,
        "sent_bytes": int(sum(v["bytes"] for v in sent.values())),
        "payload_sha256": payload_sha256(reply) if reply is not None else "",
        "epsilon_spent": float(eps) if eps is not None else None,
        "outcome": outcome_of(reply, refused),
        "reason": reason,
    }
    if extra:
        entry.update(extra)
    return entry
