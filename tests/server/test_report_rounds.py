"""The real round loop re-renders the report and logs a progress line after every round.

:class:`TrainOnlyGrid` stands in for Flower's Grid (deterministic sites that train and
never evaluate); the run is killed in round 3, as a crashed coordinator would be: the
report of round 2 must already be there (it used to be written only at the end).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from endofed.server.loop import FederatedRun
from endofed.server.report import PROGRESS_LOG, wait_for_report
from endofed.shared import protocol
from endofed.shared.config import EndoFedConfig


class Killed(BaseException):
    """The coordinating center died in the middle of a round."""


class TrainOnlyGrid:
    def __init__(self, kill_at_round: int) -> None:
        self.kill_at_round = kill_at_round

    def get_node_ids(self) -> list[int]:
        return [1, 2]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        messages = list(messages)
        server_round = int(messages[0].content[protocol.CONFIG]["server-round"])
        if server_round == self.kill_at_round:
            raise Killed(f"killed in round {server_round}")
        return [self._reply(m, server_round) for m in messages]

    @staticmethod
    def _reply(msg: Message, server_round: int) -> Message:
        node = msg.metadata.dst_node_id
        msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as pushing does
        arrays = {k: Array(np.asarray(0.99 * a.numpy(), dtype=a.numpy().dtype))
                  for k, a in msg.content[protocol.ARRAYS].items()}
        content = RecordDict({
            protocol.ARRAYS: ArrayRecord(arrays),
            protocol.METRICS: MetricRecord({"num-examples": 13 * node,
                                            "train-loss": 1.0 / (node + server_round)}),
            protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site-{node}"}),
        })
        meta = Metadata(
            run_id=1, message_id=uuid.uuid4().hex, src_node_id=node, dst_node_id=0,
            reply_to_message_id=msg.metadata.message_id, group_id=str(server_round),
            created_at=time.time(), ttl=60.0, message_type=msg.metadata.message_type,
        )
        return Message(content=content, metadata=meta)


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    """Flower stamps new messages with the process's run (the ServerApp's, in a run)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_report_and_progress_after_every_round(tmp_path, caplog) -> None:
    values = {"preset": "tiny", "image-size": 64, "num-server-rounds": 4,
              "runs-dir": str(tmp_path), "run-name": "crashed", "round-timeout": 5.0,
              "min-train-nodes": 2, "min-available-nodes": 2, "min-evaluate-nodes": 2,
              "fraction-evaluate": 0.0, "strategy": "fedavg"}
    cfg = EndoFedConfig.from_mapping(values)
    run = FederatedRun(cfg, TrainOnlyGrid(kill_at_round=3), run_config=values)
    with caplog.at_level(logging.INFO, logger="endofed"), pytest.raises(Killed):
        run.run()
    run_dir = tmp_path / "crashed"
    assert wait_for_report(run_dir, timeout=120)
    lines = (run_dir / PROGRESS_LOG).read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["EndoFed round 1/4", "EndoFed round 2/4"]
    assert all("2 sites trained, 0 declined, 0 refused, 0 offline" in ln for ln in lines)
    assert lines[1] in caplog.text
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# EndoFed run crashed: round 2")
    assert "Round 2 of 4 (in progress" in report
    assert "| site-1 | trained | 13 |" in report and "| site-2 | trained | 26 |" in report
    assert (run_dir / "rounds.png").stat().st_size > 1000
