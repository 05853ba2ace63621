"""Outgoing audit: the single chokepoint every ClientApp reply passes before it leaves.

:func:`outgoing_audit_mod` is a Flower client mod (register it app-wide with
``ClientApp(mods=[outgoing_audit_mod])`` so it wraps every handler and every other
mod, SecAgg+ included). It lets a reply through only if everything in it is on the
allow-list below, and otherwise replaces it with an error :class:`~flwr.app.Message`
naming the offending record/key (never its value) and logs the refusal.

Allowed content (anything else is refused):

The records and keys are those :mod:`endofed.shared.protocol` declares:

* ``ArrayRecord "arrays"``: trainable model weights, each with a name and shape of
  ``trainable_state(model_for(cfg))`` for the site's config, floating dtype.
* ``ArrayRecord "metric-state"``: :meth:`MetricAccumulator.state` arrays, each with a
  template key, shape and dtype kind (int/float).
* ``MetricRecord "metrics"``: numeric scalars (no lists: a list of numbers can
  carry an image) under the metric names the protocol declares.
* ``ConfigRecord "site"``: exactly ``{"site-name": <hospital name>}``; the name may
  not contain ``/`` or ``\\``.
* SecAgg+ (flwr's ``secaggplus_mod`` in the legacy workflow): the protocol record
  ``"secaggplus_configs"`` of each stage (public keys, encrypted key shares,
  masked vectors whose shapes are the model's, node ids) and the legacy ``FitRes``
  envelope (empty ``"fitres.parameters"``, numeric ``"fitres.metrics"`` /
  ``"fitres.num_examples"``, ``"fitres.status"`` with an ``ok`` message).

Caps: a MetricRecord holds at most :data:`MAX_METRICS` entries, all declared names;
``"fitres.num_examples"`` exactly ``{"num_examples"}``; SecAgg+ node-id lists name
only the nodes the request named (a list of integers could otherwise carry pixels);
every string that leaves is a declared name, the site's name (at most 128 printable
characters) or a fixed status.

Errors are audited too. An exception raised by the ClientApp is logged in full on the
site and answered with an error naming only its category
(:data:`~endofed.privacy.reply_policy.REFUSAL_CATEGORIES`, e.g. "site data unusable"):
Flower would otherwise send ``str(exception)`` to the server, and exception texts often
hold file paths. An error *returned* by a handler passes only if its reason is in the
:func:`~endofed.privacy.reply_policy.refusal_reason` format; any other reason is logged
on the site and replaced by "site failed". The audit's own refusals name the record and
key only when they are declared names (an undeclared one is shown by its length).

The audit protects against *accidental* leaks by EndoFed's own code (a debugging
image in a reply, a path in a metric); code running in the ClientApp process could
bypass it, so it does not replace code review (see ``docs/SECURITY.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import bytes_to_ndarray
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey

from endofed.privacy.reply_policy import (
    AUDIT_REFUSED,
    DP_REPORTABLE_METRICS,
    SITE_FAILED,
    parse_refusal,
    refusal_category,
    refusal_reason,
    valid_site_name,
)
from endofed.shared import protocol
from endofed.shared.config import EndoFedConfig
from endofed.shared.metrics import MetricAccumulator
from endofed.shared.model import build_model, trainable_state

__all__ = [
    "OutgoingPolicy",
    "OutgoingViolation",
    "audit_content",
    "outgoing_audit_mod",
    "policy_for",
]

logger = logging.getLogger(__name__)

ARRAYS_KEY = protocol.ARRAYS
STATE_KEY = protocol.METRIC_STATE
METRICS_KEY = protocol.METRICS
SITE_KEY = protocol.SITE
SITE_NAME_KEY = protocol.SITE_NAME
SECAGG_KEY = protocol.SECAGG_CONFIGS
FITRES_PARAMETERS = protocol.FITRES_PARAMETERS
FITRES_METRICS = protocol.FITRES_METRICS
FITRES_NUM_EXAMPLES = protocol.FITRES_NUM_EXAMPLES
FITRES_STATUS = protocol.FITRES_STATUS
#: Every metric name a reply may carry (train and evaluate replies).
DECLARED_METRICS = frozenset(protocol.TRAIN_METRICS) | frozenset(protocol.EVALUATE_METRICS)
_OK_STATUS_MESSAGES = {"ok", "success", ""}
# Largest single protocol blob a SecAgg+ stage may send (keys and encrypted shares of
# 32-byte secrets are a few hundred bytes; an image is tens of kilobytes).
MAX_SECAGG_BLOB = 4096
#: Most entries a metric record may hold (the protocol declares fewer train metrics).
MAX_METRICS = 32
#: Most nodes a SecAgg+ id list may name.
MAX_SECAGG_NODES = 1024
#: Names the audit may repeat in the refusal the server gets (undeclared ones it won't).
PROTOCOL_NAMES = frozenset({
    ARRAYS_KEY, STATE_KEY, METRICS_KEY, SITE_KEY, SITE_NAME_KEY, SECAGG_KEY,
    FITRES_PARAMETERS, FITRES_METRICS, FITRES_NUM_EXAMPLES, FITRES_STATUS, "num_examples",
    "code", "message", "pk1", "pk2", "dsts", "ctxts", "nids", "shares", "masked_params",
}) | DECLARED_METRICS
_ERROR_CODES = frozenset(v for k, v in vars(ErrorCode).items()
                         if k.isupper() and isinstance(v, int))

_SAFE_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,79}$")
AUDIT_ERROR_CODE = ErrorCode.MOD_FAILED_PRECONDITION

CallNext = Callable[[Message, Context], Message]


class OutgoingViolation(ValueError):
    """A reply holds something that may not leave the site."""

    def __init__(self, record: str, key: str | None, reason: str) -> None:
        self.record, self.key, self.reason = record, key, reason
        where = f"{record!r}" if key is None else f"{record!r}[{key!r}]"
        super().__init__(f"{where}: {reason}")

    def public(self, known: frozenset[str] | set[str] = PROTOCOL_NAMES) -> str:
        """The refusal for the server: names only if ``known`` (declared), else lengths."""
        where = _shown(self.record, known)
        if self.key is not None:
            where += f"[{_shown(self.key, known)}]"
        return f"{where}: {self.reason}"


def _shown(name: object, known: frozenset[str] | set[str]) -> str:
    text = str(name)
    if text in known or re.fullmatch(r"masked_params\[\d{1,5}\]", text):
        return repr(text)
    return f"<undeclared name of {len(text)} characters>"


@dataclass(frozen=True)
class OutgoingPolicy:
    """What a site may send: weight and metric-state shapes for its config."""

    weights: Mapping[str, tuple[int, ...]]
    metric_state: Mapping[str, tuple[tuple[int, ...], str]]  # key -> (shape, dtype kind)
    metrics: frozenset[str] = DECLARED_METRICS
    """Metric names the site may send (a DP site: only the DP-reportable ones)."""

    def known_names(self) -> frozenset[str]:
        """Every name a refusal may repeat: protocol names, weight and state keys."""
        return PROTOCOL_NAMES | frozenset(self.weights) | frozenset(self.metric_state)

    @classmethod
    def from_config(cls, cfg: EndoFedConfig) -> OutgoingPolicy:
        """Build the site's model and an empty accumulator, record their shapes."""
        policy = _policy_cached(
            cfg.model.preset,
            tuple(cfg.data.class_names),
            tuple(cfg.data.morphology_names),
            int(cfg.data.image_size),
            cfg.finetune_mode,
        )
        if cfg.privacy.enabled:
            policy = dataclasses.replace(policy, metrics=DP_REPORTABLE_METRICS)
        return policy


@functools.lru_cache(maxsize=8)
def _policy_cached(
    preset: str,
    class_names: tuple[str, ...],
    morphology_names: tuple[str, ...],
    image_size: int,
    finetune: str,
) -> OutgoingPolicy:
    # Shapes only: no pretrained file is read (the weights do not change a shape).
    with torch.no_grad():
        model = build_model(
            preset=preset, num_classes=len(class_names), image_size=image_size,
            finetune=finetune,
        )
        weights = {k: tuple(v.shape) for k, v in trainable_state(model).items()}
    del model
    acc = MetricAccumulator(class_names=list(class_names), morphology_names=list(morphology_names))
    state = {k: (tuple(v.shape), _kind(v.dtype)) for k, v in acc.state().items()}
    logger.debug("outgoing policy: %d weight arrays, %d metric-state arrays", len(weights),
                 len(state))  # fmt: skip
    return OutgoingPolicy(weights=weights, metric_state=state)


def policy_for(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> OutgoingPolicy:
    """The policy of the site configured by Flower's run and node config (cached)."""
    return OutgoingPolicy.from_config(EndoFedConfig.from_flower(run_config, node_config))


def _kind(dtype: np.dtype) -> str:
    kind = np.dtype(dtype).kind
    return "int" if kind in "iu" else "float" if kind == "f" else kind


def _check_key(record: str, key: str) -> None:
    if not isinstance(key, str) or not _SAFE_KEY_RE.match(key):
        raise OutgoingViolation(record, None, f"key of length {len(str(key))} is not a plain "
                                "metric name (letters, digits, '_.@:+-', no path separators)")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, str)


# -- records -----------------------------------------------------------------------------
def _audit_weights(name: str, record: ArrayRecord, policy: OutgoingPolicy) -> None:
    for key, array in record.items():
        expected = policy.weights.get(key)
        if expected is None:
            raise OutgoingViolation(name, key, "not a trainable weight of the site's model")
        value = array.numpy()
        if tuple(value.shape) != expected:
            raise OutgoingViolation(
                name, key, f"shape {tuple(value.shape)} differs from the weight's {expected}"
            )
        if value.dtype.kind != "f":
            raise OutgoingViolation(name, key, f"dtype {value.dtype} is not a float weight")


def _audit_metric_state(name: str, record: ArrayRecord, policy: OutgoingPolicy) -> None:
    for key, array in record.items():
        expected = policy.metric_state.get(key)
        if expected is None:
            raise OutgoingViolation(name, key, "not a MetricAccumulator state key")
        value = array.numpy()
        shape, kind = expected
        if tuple(value.shape) != shape:
            raise OutgoingViolation(
                name, key, f"shape {tuple(value.shape)} differs from the state's {shape}"
            )
        if _kind(value.dtype) != kind:
            raise OutgoingViolation(name, key, f"dtype {value.dtype} is not {kind}")


def _audit_numeric(name: str, record: Mapping[str, Any], allowed: frozenset[str]) -> None:
    if len(record) > MAX_METRICS:
        raise OutgoingViolation(
            name, None, f"{len(record)} entries exceed the cap of {MAX_METRICS} metrics"
        )
    for key, value in record.items():
        _check_key(name, key)
        if key not in allowed:
            if name == FITRES_NUM_EXAMPLES:
                raise OutgoingViolation(name, key, "only 'num_examples' is allowed here")
            if key not in DECLARED_METRICS:
                reason = ("not a metric endofed.shared.protocol declares (declare it there, "
                          "with its meaning, before a site may send it)")
            else:
                reason = ("computed from the site's images outside the DP guarantee "
                          "(endofed.privacy.reply_policy.DP_REPORTABLE_METRICS)")
            raise OutgoingViolation(name, key, reason)
        if not _is_number(value):
            what = "list" if isinstance(value, list) else type(value).__name__
            raise OutgoingViolation(name, key, f"value is a {what}, only numbers may leave")


def _audit_site(name: str, record: ConfigRecord) -> None:
    extra = sorted(k for k in record if k != SITE_NAME_KEY)
    if extra:
        raise OutgoingViolation(name, extra[0], f"only {SITE_NAME_KEY!r} is allowed here")
    value = record.get(SITE_NAME_KEY)
    if not isinstance(value, str) or not value.strip():
        raise OutgoingViolation(name, SITE_NAME_KEY, "must be a non-empty string")
    if "/" in value or "\\" in value or len(value) > 128 or not value.isprintable():
        raise OutgoingViolation(
            name, SITE_NAME_KEY, "looks like a path, not a hospital name (has '/' or '\\', "
            "control characters or more than 128 characters)",
        )  # fmt: skip


def _audit_status(name: str, record: ConfigRecord) -> None:
    if set(record) != {"code", "message"}:
        raise OutgoingViolation(name, None, f"keys {sorted(record)} != ['code', 'message']")
    if not isinstance(record["code"], int):
        raise OutgoingViolation(name, "code", "must be an int")
    message = record["message"]
    if not isinstance(message, str) or message.strip().lower() not in _OK_STATUS_MESSAGES:
        raise OutgoingViolation(name, "message", "only an 'ok' status message may leave")


def _blobs(name: str, key: str, value: Any) -> list[bytes]:
    values = value if isinstance(value, list) else [value]
    for blob in values:
        if not isinstance(blob, bytes):
            raise OutgoingViolation(name, key, f"expected bytes, got {type(blob).__name__}")
        if len(blob) > MAX_SECAGG_BLOB:
            raise OutgoingViolation(
                name, key, f"{len(blob)}-byte blob exceeds the {MAX_SECAGG_BLOB}-byte bound"
            )
    return values


def _int_list(name: str, key: str, value: Any, allowed: set[int] | None) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise OutgoingViolation(name, key, "expected a list of node ids")
    if len(value) > MAX_SECAGG_NODES or len(set(value)) != len(value):
        raise OutgoingViolation(name, key, f"{len(value)} node ids, not distinct or more "
                                f"than {MAX_SECAGG_NODES}")  # fmt: skip
    if allowed is not None and not set(value) <= allowed:
        raise OutgoingViolation(name, key, "names nodes the request did not name")
    return value


def _request_nodes(request: Message | None) -> set[int] | None:
    """The node ids a SecAgg+ request named (neighbours' keys, active/dead lists)."""
    if request is None or not request.has_content():
        return None
    configs = request.content.config_records.get(SECAGG_KEY)
    if configs is None:
        return set()
    nodes = {int(k) for k in configs if k.isdigit()}
    for key in (SecAggKey.ACTIVE_NODE_ID_LIST, SecAggKey.DEAD_NODE_ID_LIST):
        value = configs.get(key)
        if isinstance(value, list):
            nodes |= {v for v in value if isinstance(v, int)}
    return nodes


def _audit_secagg(
    name: str, record: ConfigRecord, policy: OutgoingPolicy, request: Message | None = None
) -> None:
    """One SecAgg+ stage reply (see ``flwr.client.mod.secaggplus_mod``).

    With the ``request`` the node-id lists are checked against the nodes it named.
    """
    keys = set(record)
    if keys == {"pk1", "pk2"}:  # setup
        for key in keys:
            _blobs(name, key, record[key])
    elif keys == {"dsts", "ctxts"} or keys == {"nids", "shares"}:  # share keys / unmask
        ids_key, blob_key = ("dsts", "ctxts") if "dsts" in keys else ("nids", "shares")
        ids = _int_list(name, ids_key, record[ids_key], _request_nodes(request))
        blobs = _blobs(name, blob_key, record[blob_key])
        if len(ids) != len(blobs):
            raise OutgoingViolation(name, blob_key, f"{len(blobs)} blobs for {len(ids)} nodes")
    elif keys == {"masked_params"}:  # masked, quantised weights
        value = record["masked_params"]
        if not isinstance(value, list) or not all(isinstance(b, bytes) for b in value):
            raise OutgoingViolation(name, "masked_params", "expected a list of bytes")
        shapes = [tuple(bytes_to_ndarray(b).shape) for b in value]
        # flwr prepends the quantised weight factor, a (1,) array.
        expected = [(1,), *policy.weights.values()]
        if shapes != expected:
            bad = next((i for i, (a, b) in enumerate(zip(shapes, expected)) if a != b),
                       min(len(shapes), len(expected)))  # fmt: skip
            raise OutgoingViolation(
                name, f"masked_params[{bad}]",
                f"{len(shapes)} masked arrays whose shapes are not the model's "
                f"({len(expected)} expected; first difference at index {bad})",
            )  # fmt: skip
    else:
        raise OutgoingViolation(name, None, f"unknown SecAgg+ reply keys {sorted(keys)}")


def audit_content(
    content: RecordDict, policy: OutgoingPolicy, request: Message | None = None
) -> None:
    """Raise :class:`OutgoingViolation` unless every record of ``content`` is allowed.

    ``request`` (the message being answered) bounds the SecAgg+ node-id lists.
    """
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            if name == ARRAYS_KEY:
                _audit_weights(name, record, policy)
            elif name == STATE_KEY:
                _audit_metric_state(name, record, policy)
            elif name == FITRES_PARAMETERS and len(record) == 0:
                pass  # cleared by secaggplus_mod: the weights travel masked
            else:
                raise OutgoingViolation(name, next(iter(record), None), "unexpected ArrayRecord")
        elif isinstance(record, MetricRecord):
            if name not in (METRICS_KEY, FITRES_NUM_EXAMPLES):
                raise OutgoingViolation(name, None, "unexpected MetricRecord")
            allowed = policy.metrics if name == METRICS_KEY else frozenset({"num_examples"})
            _audit_numeric(name, record, allowed)
        elif isinstance(record, ConfigRecord):
            if name == SITE_KEY:
                _audit_site(name, record)
            elif name == FITRES_METRICS:
                _audit_numeric(name, record, policy.metrics)
            elif name == FITRES_STATUS:
                _audit_status(name, record)
            elif name == SECAGG_KEY:
                _audit_secagg(name, record, policy, request)
            else:
                raise OutgoingViolation(name, None, "unexpected ConfigRecord")
        else:  # pragma: no cover - flwr has no other record type in 1.41
            raise OutgoingViolation(name, None, f"unexpected record type {type(record).__name__}")


def _refuse(msg: Message, reason: str, code: int = AUDIT_ERROR_CODE) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def _site_name(context: Context, reply: Message | None = None) -> str | None:
    """The site's display name for an error: its reply's (if valid), else its node config's."""
    if reply is not None and not reply.has_error() and reply.has_content():
        site = reply.content.config_records.get(SITE_KEY)
        if site is not None and valid_site_name(site.get(SITE_NAME_KEY)):
            return str(site[SITE_NAME_KEY])
    name = context.node_config.get(SITE_NAME_KEY)
    return str(name) if valid_site_name(name) else None


def _audit_error(msg: Message, reply: Message, context: Context) -> Message:
    """An error reply passes only in the refusal format, with a known error code."""
    error = reply.error
    refusal = parse_refusal(error.reason)
    if refusal is not None and error.code in _ERROR_CODES:
        return reply
    logger.error("outgoing audit replaced the reason of an error reply (code %r): %r",
                 error.code, error.reason)  # fmt: skip
    return _refuse(msg, refusal_reason(SITE_FAILED, _site_name(context)),
                   ErrorCode.CLIENT_APP_RAISED_EXCEPTION)


def outgoing_audit_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
    """Flower mod: pass the reply only if everything in it may leave the site."""
    try:
        reply = call_next(msg, context)
    except Exception as exc:
        category = refusal_category(exc)
        logger.exception("ClientApp raised %s; the server gets only its category (%s)",
                         type(exc).__name__, category)  # fmt: skip
        return _refuse(msg, refusal_reason(category, _site_name(context)),
                       ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
    if reply.has_error():
        return _audit_error(msg, reply, context)
    if not reply.has_content():
        return reply
    policy: OutgoingPolicy | None = None
    try:
        policy = policy_for(context.run_config, context.node_config)
        audit_content(reply.content, policy, request=msg)
    except OutgoingViolation as exc:
        logger.error("outgoing audit refused a %s reply: %s", msg.metadata.message_type, exc)
        known = policy.known_names() if policy is not None else PROTOCOL_NAMES
        return _refuse(msg, refusal_reason(AUDIT_REFUSED, _site_name(context, reply),
                                           exc.public(known)))  # fmt: skip
    except Exception as exc:  # the policy itself could not be built: fail closed
        logger.exception("outgoing audit could not check the reply")
        return _refuse(msg, refusal_reason(AUDIT_REFUSED, _site_name(context),
                                           f"audit failed ({refusal_category(exc)})"))
    return reply
