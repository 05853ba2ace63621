"""The EndoFed ClientApp (one hospital).

Only trainable model weights, scalar training metrics and additive evaluation sums
leave the site; images, masks, paths and patient ids never do.
"""

from __future__ import annotations

import logging

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from endofed.client.runtime import get_site_runtime
from endofed.client.secure import (
    central_dp_when_requested,
    is_legacy_train,
    legacy_train_reply,
    secagg_when_requested,
)
from endofed.client.training import local_evaluate, local_train
from endofed.privacy.accounting import PrivacyBudgetError
from endofed.privacy.outgoing import outgoing_audit_mod
from endofed.shared import protocol

log = logging.getLogger(__name__)

app = ClientApp(mods=[outgoing_audit_mod])  # every reply is audited before it leaves


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
        declined = {protocol.DECLINED: 1, protocol.NUM_EXAMPLES: 0,
                    protocol.EPSILON_SPENT: exc.spent, protocol.EPSILON_TARGET: exc.target}
        content = RecordDict(
            {
                protocol.METRICS: MetricRecord(declined),
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
