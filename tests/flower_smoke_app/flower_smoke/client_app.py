"""ClientApp of the smoke app: a deterministic update of a 2-parameter model.

The node's ``partition-id`` (set by the simulation runtime, or passed with
``--node-config`` to a SuperNode) fixes its update and its example count, so the
expected FedAvg aggregate is known in closed form.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _partition(context: Context) -> int:
    try:
        return int(context.node_config["partition-id"])
    except KeyError as exc:
        raise KeyError(
            "flower_smoke ClientApp needs node config 'partition-id' "
            f"(got keys {sorted(context.node_config)})"
        ) from exc


def _probe(context: Context, pid: int) -> None:
    """Record where this ClientApp runs from (for the runtime documentation tests)."""
    probe_dir = str(context.run_config.get("probe-dir", ""))
    if probe_dir:
        info = {"cwd": os.getcwd(), "module-file": str(Path(__file__).resolve())}
        Path(probe_dir, f"client-{pid}.json").write_text(json.dumps(info), encoding="utf-8")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Return ``w + (p + 1) * delta`` with ``num-examples = 10 * (p + 1)``."""
    pid = _partition(context)
    _probe(context, pid)
    delta = float(context.run_config["delta"])
    weights = msg.content["arrays"].to_numpy_ndarrays()
    updated = [w + (pid + 1) * delta for w in weights]
    metrics = MetricRecord(
        {
            "num-examples": 10 * (pid + 1),
            "partition-id": pid,
            "num-partitions": int(context.node_config.get("num-partitions", -1)),
            "pid": os.getpid(),
        }
    )
    content = RecordDict({"arrays": ArrayRecord(updated), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Report the squared norm of the received global model as "loss"."""
    pid = _partition(context)
    weights = msg.content["arrays"].to_numpy_ndarrays()
    loss = float(sum(np.sum(w**2) for w in weights))
    metrics = MetricRecord({"num-examples": 10 * (pid + 1), "loss": loss})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
