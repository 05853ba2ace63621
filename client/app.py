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
from endofed.client.training import BudgetExhausted, local_evaluate, local_train
from endofed.privacy.outgoing import outgoing_audit_mod

log = logging.getLogger(__name__)

ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
SITE_KEY = "site"
STATE_KEY = "metric-state"

app = ClientApp(mods=[outgoing_audit_mod])  # every reply is audited before it leaves


def _arrays(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


def _site_record(name: str) -> ConfigRecord:
    return ConfigRecord({"site-name": name})


@app.train(mods=[secagg_when_requested, central_dp_when_requested])
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this site's data for the configured local epochs."""
    rt = get_site_runtime(context.run_config, context.node_config)
    if is_legacy_train(msg):  # SecAgg+ round: same training, legacy reply format
        return legacy_train_reply(
            msg, rt.model.trainable_names(), lambda arrays, cfg: local_train(rt, arrays, cfg)
        )
    config = dict(msg.content["config"]) if "config" in msg.content.config_records else {}
    try:
        state, metrics = local_train(rt, _arrays(msg.content[ARRAYS_KEY]), config)
    except BudgetExhausted as exc:
        # An explicit refusal, not an error: the server logs it and goes on without us.
        log.warning("site %s declines round %s: %s", rt.name, config.get("server-round"), exc)
        content = RecordDict(
            {
                METRICS_KEY: MetricRecord({"declined": 1, "num-examples": 0, **exc.metrics}),
                SITE_KEY: _site_record(rt.name),
            }
        )
        return Message(content=content, reply_to=msg)
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in state.items()}),
            METRICS_KEY: MetricRecord(metrics),
            SITE_KEY: _site_record(rt.name),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model; reply with additive metric sums only."""
    rt = get_site_runtime(context.run_config, context.node_config)
    state, n = local_evaluate(rt, _arrays(msg.content[ARRAYS_KEY]))
    content = RecordDict(
        {
            STATE_KEY: ArrayRecord({k: Array(v) for k, v in state.items()}),
            METRICS_KEY: MetricRecord({"num-examples": n}),
            SITE_KEY: _site_record(rt.name),
        }
    )
    return Message(content=content, reply_to=msg)
