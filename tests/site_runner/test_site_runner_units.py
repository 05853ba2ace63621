"""The site runner's parts without processes: the approval gate in front of the ClientApp,
the audit entry, the site-owned settings and the per-run cache (seconds)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from endofed.client.runner.audit import audit_entry, payload_sha256
from endofed.client.runner.connection import TaskInput
from endofed.client.runner.gate import AppGate
from endofed.client.runner.handler import MessageHandler
from endofed.client.runner.run_cache import RunCache
from endofed.client.site_settings import effective_settings, site_owned_run_config
from endofed.privacy.approvals import ApprovalStore
from endofed.privacy.reply_policy import APP_NOT_APPROVED, parse_refusal
from endofed.shared.config import EndoFedConfig

RUN_ID = 7


def _message(round_: int = 2) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 5, 1
    msg = Message(RecordDict({
        "config": ConfigRecord({"server-round": round_, "study-id": "study-a"}),
        "arrays": ArrayRecord({"w": Array(np.ones((2, 3), np.float32))}),
    }), dst_node_id=5, message_type="train", group_id=str(round_))
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def _task(fab: Fab, node_config: dict, run_config: dict) -> TaskInput:
    ctx = Context(run_id=RUN_ID, node_id=5, node_config=node_config, state=RecordDict(),
                  run_config=run_config)
    run = Run.create_empty(RUN_ID)
    return TaskInput(message=_message(), context=ctx, run=run, fab=fab)


@pytest.fixture
def fabs(tmp_path, write_app) -> tuple[Fab, Fab]:
    marker = tmp_path / "imported"
    a = build_fab_from_disk(write_app(tmp_path / "a", "X = 1\n"))
    b = build_fab_from_disk(write_app(
        tmp_path / "b", f"open({str(marker)!r}, 'w').write('ran')\n"))
    return (Fab(hashlib.sha256(a).hexdigest(), a, {}),
            Fab(hashlib.sha256(b).hexdigest(), b, {}))


class _App:
    """Stands in for the installed ClientApp: records what it was given."""

    def __init__(self) -> None:
        self.calls: list[Context] = []

    def __call__(self, msg: Message, ctx: Context) -> Message:
        self.calls.append(ctx)
        out = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros((2, 3), np.float32))}),
                          "metrics": MetricRecord({"num-examples": 4.0})})
        return Message(out, reply_to=msg)


def test_unapproved_bundle_is_refused_without_running_anything(tmp_path, fabs):
    approved, modified = fabs
    state = tmp_path / "state"
    ApprovalStore(state).approve_hash(approved.hash_str)
    app = _App()
    handler = MessageHandler(AppGate(state), RunCache(), app)
    nodes = {"data-path": "/x", "site-name": "st-mary"}

    out = handler.handle(_task(modified, nodes, {}))
    assert app.calls == []  # the ClientApp was not called
    assert not (tmp_path / "imported").exists()
    refusal = parse_refusal(out.reply.error.reason)
    assert refusal is not None and refusal.category == APP_NOT_APPROVED
    assert refusal.site == "st-mary"
    assert out.entry["outcome"] == "refused" and out.entry["app_hash"] == modified.hash_str
    assert out.entry["received"] == {"config/server-round": [], "config/study-id": [],
                                     "arrays/w": [2, 3]}
    assert out.entry["sent"] == {} and out.entry["sent_bytes"] == 0

    ok = handler.handle(_task(approved, nodes, {"threads": 1, "batch-size": 4}))
    assert len(app.calls) == 1 and ok.entry["outcome"] == "replied"
    # the run config's threads never reaches the ClientApp at a deployed site
    assert app.calls[0].run_config == {"batch-size": 4}
    assert ok.entry["round"] == 2 and ok.entry["study_id"] == "study-a"
    assert ok.entry["sent"]["arrays/w"]["shape"] == [2, 3]
    assert ok.entry["payload_sha256"] == payload_sha256(ok.reply)


def test_a_bundle_whose_bytes_do_not_match_its_hash_is_refused(tmp_path, fabs):
    approved, modified = fabs
    state = tmp_path / "state"
    ApprovalStore(state).approve_hash(approved.hash_str)
    forged = Fab(approved.hash_str, modified.content, {})  # approved hash, other bytes
    decision = AppGate(state).check(forged)
    assert not decision.approved and decision.app_hash == modified.hash_str


def test_revoked_approval_applies_at_the_next_message(tmp_path, fabs):
    approved, _ = fabs
    store = ApprovalStore(tmp_path / "state")
    store.approve_hash(approved.hash_str)
    gate = AppGate(tmp_path / "state")
    assert gate.check(approved).approved
    store.revoke(approved.hash_str[:16])
    assert not gate.check(approved).approved


def test_payload_hash_changes_with_one_value():
    msg = _message()
    a = Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))})}),
                reply_to=msg)
    arr = np.zeros(3, np.float32)
    arr[1] = 1e-7
    b = Message(RecordDict({"arrays": ArrayRecord({"w": Array(arr)})}), reply_to=msg)
    assert payload_sha256(a) != payload_sha256(b)
    entry = audit_entry(msg, a, app_hash="h")
    assert entry["sent_bytes"] == len(a.content["arrays"]["w"].data)


def test_site_threads_win_over_the_run_config_at_a_deployed_site():
    run = {"threads": 1, "device": "cuda", "workers": 3, "preprocess": True, "batch-size": 4}
    site = {"data-path": "/x", "site-name": "a", "threads": 2}
    cfg = EndoFedConfig.from_flower(site_owned_run_config(run, site), site)
    assert cfg.train.threads == 2 and cfg.train.device == "auto"
    assert cfg.data.workers == 0 and cfg.preprocess.preprocess is False
    assert cfg.data.batch_size == 4  # the coordinator's study settings still apply
    # simulation: the run config is the study's, unchanged
    sim = {"partition-id": 0, "num-partitions": 2}
    assert site_owned_run_config(run, sim) == run
    sources = {s.key: s.source for s in effective_settings(site, from_flags={"threads"})}
    assert sources["threads"] == "site flag" and sources["device"] == "default"


def test_run_cache_releases_on_a_new_run(monkeypatch):
    released = []
    monkeypatch.setattr("endofed.client.runner.run_cache.release_site_runtimes",
                        lambda: released.append(1) or 0)
    cache = RunCache(idle_release=3600)
    cache.enter(1)
    cache.enter(1)
    assert released == [] and cache.messages == 2
    cache.enter(2)
    assert released == [1] and cache.run_id == 2 and cache.messages == 1


def test_join_dry_run_prints_settings_and_both_commands(tmp_path, runner_hospitals):
    res = subprocess.run(
        [sys.executable, "-m", "endofed.cli", "site", "join", "--superlink", "x.org:9092",
         "--data-path", str(runner_hospitals[0]), "--site-name", "st-mary",
         "--state-dir", str(tmp_path / "state"), "--threads", "2", "-c", "amp=false",
         "--runtime-port", "39999", "--dry-run"],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert any(line.split()[:3] == ["threads", "2", "(site"] for line in lines)
    assert any(line.split()[:3] == ["amp", "False", "(node"] for line in lines)
    assert any(line.split()[:2] == ["workers", "0"] and "(default)" in line for line in lines)
    runner, supernode = lines[-2], lines[-1]
    assert "endofed.client.runner" in runner and "127.0.0.1:39999" in runner
    assert str(Path(tmp_path / "state").resolve()) in runner
    assert "--isolation process" in supernode and "--port 39999" in supernode
    assert "threads=2" in supernode


def test_join_refuses_a_coordinator_key_in_c(runner_hospitals):
    res = subprocess.run(
        [sys.executable, "-m", "endofed.cli", "site", "join", "--superlink", "x.org:9092",
         "--data-path", str(runner_hospitals[0]), "--site-name", "st-mary",
         "-c", "learning-rate=0.1", "--dry-run"],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "learning-rate" in res.stderr and "not started" in res.stderr
