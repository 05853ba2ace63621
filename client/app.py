"""The EndoFed ClientApp (one hospital).

Only trainable model weights, scalar training metrics and additive evaluation sums
leave the site; images, masks, paths and patient ids never do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from endofed.client.runtime import get_site_runtime
from endofed.client.secure import (
    central_dp_when_requested,
    is_legacy_train,
    legacy_train_reply,
    secagg_when_requested,
)
from endofed.client.site import site_display_name
from endofed.client.training import decline_metrics, local_evaluate, local_train
from endofed.privacy.accounting import PrivacyBudgetError
from endofed.privacy.outgoing import outgoing_audit_mod
from endofed.privacy.reply_policy import refusal_category, refusal_reason
from endofed.shared import protocol
from endofed.shared.config import EndoFedConfig

log = logging.getLogger(__name__)


def _display_name(context: Context) -> str | None:
    try:
        return site_display_name(
            EndoFedConfig.from_flower(context.run_config, context.node_config),
            context.node_config,
        )
    except Exception:  # noqa: BLE001 - a config that does not build has no name
        return None


def refusals_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """An exception becomes a refusal the server can read: a category and the site's name.

    The full exception (and traceback) goes to the site's own log; the server learns
    e.g. "site data unusable ... [site: st-mary]", never a path or an id.
    """
    try:
        return call_next(msg, context)
    except Exception as exc:
        category = refusal_category(exc)
        name = _display_name(context)
        log.exception("site %s cannot serve this %s message; the server learns only: %s",
                      name, msg.metadata.message_type, category)
        reason = refusal_reason(category, name)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                       reply_to=msg)


# Every reply is audited before it leaves (the outer mod); errors become refusals.
app = ClientApp(mods=[outgoing_audit_mod, refusals_mod])


def _arrays(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


def _site_record(name: str) -> ConfigRecord:
    return ConfigRecord({protocol.SITE_NAME: name})


@app.train(mods=[secagg_when_requested, central_dp_when_requested])
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this site's data for the configured local epochs."""
    rt = get_site_runtime(context.run_config, context.node_config)
    if is_legacy_train(msg):  # SecAgg+ round: same training, legacy reply format
        return legacy_train_reply(
            msg, rt.model.trainable_names(), lambda arrays, cfg: local_train(rt, arrays, cfg)
        )
    records = msg.content.config_records
    config = dict(records[protocol.CONFIG]) if protocol.CONFIG in records else {}
    try:
        state, metrics = local_train(rt, _arrays(msg.content[protocol.ARRAYS]), config)
    except PrivacyBudgetError as exc:
        # An explicit refusal, not an error: the server logs it and goes on without us.
        log.warning("site %s declines round %s: %s", rt.name,
                    config.get(protocol.SERVER_ROUND), exc)
        content = RecordDict(
            {
                protocol.METRICS: MetricRecord(decline_metrics(exc)),
                protocol.SITE: _site_record(rt.name),
            }
        )
        return Message(content=content, reply_to=msg)
    content = RecordDict(
        {
            protocol.ARRAYS: ArrayRecord({k: Array(v) for k, v in state.items()}),
            protocol.METRICS: MetricRecord(metrics),
            protocol.SITE: _site_record(rt.name),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model; reply with additive metric sums only."""
    rt = get_site_runtime(context.run_config, context.node_config)
    state, n = local_evaluate(rt, _arrays(msg.content[protocol.ARRAYS]))
    content = RecordDict(
        {
            protocol.METRIC_STATE: ArrayRecord({k: Array(v) for k, v in state.items()}),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: n}),
            protocol.SITE: _site_record(rt.name),
        }
    )
    return Message(content=content, reply_to=msg)
