"""ServerApp of the smoke app: FedAvg over a 2-parameter numpy model.

Writes a JSON summary (final arrays, which nodes answered in each round, its own
working directory and module path) to the absolute ``out-path`` of the run config.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class RecordingFedAvg(FedAvg):
    """FedAvg that remembers which nodes replied to each training round."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.participants: dict[int, list[dict[str, int]]] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.participants[server_round] = sorted(
            (
                {
                    "node-id": int(msg.metadata.src_node_id),
                    "partition-id": int(msg.content["metrics"]["partition-id"]),
                    "num-partitions": int(msg.content["metrics"]["num-partitions"]),
                }
                for msg in replies
                if msg.has_content()
            ),
            key=lambda p: p["partition-id"],
        )
        return super().aggregate_train(server_round, replies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` of FedAvg from a zero 2-vector."""
    cfg = context.run_config
    if bool(cfg["fail"]):
        raise RuntimeError("flower_smoke: failure requested by run config `fail`")
    time.sleep(float(cfg["sleep-s"]))
    min_nodes = int(cfg["min-nodes"])
    strategy = RecordingFedAvg(
        fraction_train=1.0,
        fraction_evaluate=float(cfg["fraction-evaluate"]),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros(2, dtype=np.float64)]),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=120,
    )
    out_path = str(cfg["out-path"])
    if not out_path:
        return
    summary = {
        "final-arrays": [a.tolist() for a in result.arrays.to_numpy_ndarrays()],
        "participants": {str(k): v for k, v in strategy.participants.items()},
        "train-metrics": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
        "evaluate-metrics": {str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()},
        "run-config": {k: v for k, v in cfg.items()},
        "cwd": os.getcwd(),
        "module-file": str(Path(__file__).resolve()),
        "run-id": context.run_id,
    }
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
