"""Strategy state survives a checkpoint: every layer of a DP-wrapped strategy, no pickles.

The resume tests drive the real round loop (:class:`endofed.server.loop.FederatedRun`)
against :class:`FakeGrid`, an in-process stand-in for Flower's Grid whose sites are
deterministic: a run killed in round 3 and resumed must end bitwise where the same
run ends uninterrupted (tests/federation/test_resume.py does the same with a real
Flower simulation).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from endofed.server.loop import FederatedRun, check_secure_aggregation
from endofed.server.run_state import (
    RunState,
    load_checkpoint,
    load_run_state,
    save_run_state,
    to_checkpoint,
)
from endofed.server.strategies import (
    CENTRAL_DP,
    STATE_ATTRS,
    STRATEGIES,
    base_strategy,
    build_strategy,
    load_strategy_state,
    strategy_chain,
    strategy_state,
)
from endofed.shared import protocol
from endofed.shared.config import ConfigError, EndoFedConfig


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    """Flower stamps new messages with the process's run (the ServerApp's, in a run)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


# -- an in-process Grid ------------------------------------------------------------------
class Killed(BaseException):
    """The coordinating center died (raised from inside a round)."""


class FakeGrid:
    def __init__(self, nodes: Iterable[int] = (1, 2, 3), *, kill_at_round: int | None = None,
                 noise: float = 1e-3, norm_bit: bool = False) -> None:
        self.nodes = list(nodes)
        self.kill_at_round = kill_at_round
        self.noise = noise
        self.norm_bit = norm_bit  # what Flower's adaptiveclipping_mod adds at a site
        self.rounds: list[int] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        messages = sorted(messages, key=lambda m: m.metadata.dst_node_id)
        if not messages:
            return []
        server_round = int(messages[0].content[protocol.CONFIG]["server-round"])
        if messages[0].metadata.message_type.startswith("train"):
            if server_round == self.kill_at_round:
                raise Killed(f"killed in round {server_round}")
            self.rounds.append(server_round)
            replies = [self._train_reply(m, server_round) for m in messages]
        else:
            raise AssertionError("the fake sites only train (set fraction-evaluate=0)")
        np.random.seed(10_000 + server_round)
        return replies

    def _train_reply(self, msg: Message, server_round: int) -> Message:
        node = msg.metadata.dst_node_id
        msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as pushing does
        arrays = {}
        for i, (name, arr) in enumerate(msg.content[protocol.ARRAYS].items()):
            v = arr.numpy()
            rng = np.random.default_rng([node, server_round, i])
            step = rng.standard_normal(v.shape).astype(v.dtype) * (self.noise * node)
            arrays[name] = Array(np.asarray(0.98 * v + step, dtype=v.dtype))
        metrics = {"num-examples": 10 * node, "train-loss": 1.0 / (node + server_round)}
        if self.norm_bit:
            metrics[protocol.NORM_BIT] = int(node > 1)
        content = RecordDict({
            protocol.ARRAYS: ArrayRecord(arrays),
            protocol.METRICS: MetricRecord(metrics),
            protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site-{node}"}),
        })
        meta = Metadata(
            run_id=1, message_id=uuid.uuid4().hex, src_node_id=node, dst_node_id=0,
            reply_to_message_id=msg.metadata.message_id, group_id=str(server_round),
            created_at=time.time(), ttl=60.0, message_type=msg.metadata.message_type,
        )
        return Message(content=content, metadata=meta)


# -- helpers -------------------------------------------------------------------------------
def _same(a, b) -> bool:
    """Exact equality of strategy attributes (arrays: dtype, shape and every bit)."""
    if isinstance(a, ArrayRecord) or isinstance(b, ArrayRecord):
        return (isinstance(a, ArrayRecord) and isinstance(b, ArrayRecord)
                and list(a.keys()) == list(b.keys())
                and all(_same(a[k].numpy(), b[k].numpy()) for k in a.keys()))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a is b or a == b)


def _layer_attrs(strategy) -> list[dict]:
    return [{k: v for k, v in vars(layer).items() if k != "strategy"}
            for layer in strategy_chain(strategy)]


def _differences(a, b) -> list[str]:
    out = []
    for i, (x, y) in enumerate(zip(_layer_attrs(a), _layer_attrs(b), strict=True)):
        out += [f"layer {i} {k}" for k in sorted(set(x) | set(y))
                if not _same(x.get(k), y.get(k))]
    return out


def _checkpointed(state: dict, tmp_path: Path) -> dict:
    """``state`` after a trip through a weights_only=True torch checkpoint."""
    path = tmp_path / f"{uuid.uuid4().hex}.pt"
    torch.save(to_checkpoint(state), path)
    return load_checkpoint(path)


ARRAYS = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
          "b": np.full(4, 0.25, np.float32)}


def _one_round(strategy, server_round: int, arrays: ArrayRecord, grid: FakeGrid) -> ArrayRecord:
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    new, _ = strategy.aggregate_train(server_round, replies)
    assert new is not None
    return new


def _cfg(**values) -> EndoFedConfig:
    base = {"min-train-nodes": 3, "min-available-nodes": 3, "min-evaluate-nodes": 3,
            "fraction-evaluate": 0.0, "central-dp-noise": 0.1, "central-dp-clip": 0.5}
    base.update({k.replace("_", "-"): v for k, v in values.items()})
    if base.get("strategy") == "fedprox":
        base.setdefault("proximal-mu", 0.1)
    return EndoFedConfig.from_mapping(base)


# -- the state itself ------------------------------------------------------------------------
@pytest.mark.parametrize("dp", ["none", *sorted(CENTRAL_DP)])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_restored_strategy_is_indistinguishable_from_the_one_that_ran(name, dp, tmp_path):
    """Whatever two rounds change in any layer is in the state (nothing left behind)."""
    cfg = _cfg(strategy=name, central_dp=dp)
    grid = FakeGrid(noise=0.05, norm_bit=dp.startswith("client"))
    ran = build_strategy(cfg, ArrayRecord())
    arrays = ArrayRecord({k: Array(v) for k, v in ARRAYS.items()})
    for rnd in (1, 2):
        arrays = _one_round(ran, rnd, arrays, grid)
    fresh = build_strategy(cfg, ArrayRecord())
    changed = _differences(ran, fresh)
    load_strategy_state(fresh, _checkpointed(strategy_state(ran), tmp_path))
    assert _differences(ran, fresh) == [], f"not restored (a round changed {changed})"
    # and both go on identically
    a = _one_round(ran, 3, arrays, grid)
    b = _one_round(fresh, 3, arrays, grid)
    assert _same(a, b)


def test_wrapped_fedadam_round_trip_keeps_moments_and_clip_norm(tmp_path):
    cfg = _cfg(strategy="fedadam", central_dp="server-adaptive")
    grid = FakeGrid(noise=0.05)
    ran = build_strategy(cfg, ArrayRecord())
    arrays = ArrayRecord({k: Array(v) for k, v in ARRAYS.items()})
    for rnd in (1, 2):
        arrays = _one_round(ran, rnd, arrays, grid)
    inner = base_strategy(ran)
    assert ran.clipping_norm != 0.5  # adapted twice
    assert inner.m_t and inner.v_t

    save_run_state(tmp_path, RunState(round=2, arrays={k: v.numpy() for k, v in arrays.items()},
                                      strategy_state=strategy_state(ran)))
    # a tensors-only checkpoint: loads without allowing any global
    raw = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert isinstance(raw["strategy_state"]["layers"][1]["attrs"]["m_t"]["arrays"]["w"],
                      torch.Tensor)
    state = load_run_state(tmp_path)
    resumed = build_strategy(cfg, ArrayRecord())
    assert resumed.clipping_norm == 0.5 and base_strategy(resumed).m_t is None
    load_strategy_state(resumed, state.strategy_state)
    assert resumed.clipping_norm == ran.clipping_norm
    for attr in ("m_t", "v_t", "current_arrays"):
        assert _same(getattr(base_strategy(resumed), attr), getattr(inner, attr)), attr
    assert _differences(ran, resumed) == []


def test_state_of_a_layer_the_run_no_longer_has_is_dropped(tmp_path, caplog):
    ran = build_strategy(_cfg(strategy="fedadam", central_dp="server-adaptive"), ArrayRecord())
    grid = FakeGrid(noise=0.05)
    _one_round(ran, 1, ArrayRecord({k: Array(v) for k, v in ARRAYS.items()}), grid)
    plain = build_strategy(_cfg(strategy="fedadam"), ArrayRecord())
    load_strategy_state(plain, _checkpointed(strategy_state(ran), tmp_path))
    assert _same(plain.m_t, base_strategy(ran).m_t)  # matched by class, not position
    assert "DifferentialPrivacyServerSideAdaptiveClipping is not used" in caplog.text


def test_checkpoint_before_tensors_only_still_loads(tmp_path):
    """Old checkpoints pickled numpy arrays ({attr: (kind, value)} of the outer strategy)."""
    m_t = {"w": np.ones((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    payload = {"round": 2, "arrays": {k: torch.from_numpy(v) for k, v in ARRAYS.items()},
               "history": [{"round": 1, "site": "global", "map50": np.float64(0.5)}],
               "strategy_state": {"m_t": ("dict", m_t), "v_t": ("dict", m_t)},
               "run_config": {}, "events": []}
    (tmp_path / "checkpoints").mkdir()
    torch.save(payload, tmp_path / "checkpoints" / "last.pt")
    state = load_run_state(tmp_path)
    assert state.round == 2 and state.history[0]["map50"] == 0.5
    adam = build_strategy(_cfg(strategy="fedadam"), ArrayRecord())
    load_strategy_state(adam, state.strategy_state)
    assert _same(adam.m_t, m_t) and _same(adam.v_t, m_t)


def test_state_attrs_are_what_flower_strategies_mutate():
    assert set(STATE_ATTRS) == {"m_t", "v_t", "momentum_vector", "current_arrays",
                                "clipping_norm"}


# -- the real round loop, killed and resumed ---------------------------------------------------
def _run_cfg(tmp_path: Path, name: str, **values) -> EndoFedConfig:
    base = {"preset": "tiny", "image_size": 64, "num_server_rounds": 4,
            "runs_dir": str(tmp_path), "run_name": name, "round_timeout": 5.0}
    return _cfg(**{**base, **values})


def _final(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


RESUME_CASES = {
    "fedadam+server-adaptive": {"strategy": "fedadam", "central_dp": "server-adaptive",
                                "central_dp_clip": 0.4},
    "fedavgm+client-adaptive": {"strategy": "fedavgm", "central_dp": "client-adaptive",
                                "central_dp_clip": 0.4},
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_killed_run_resumes_exactly_like_an_uninterrupted_one(tmp_path, case):
    knobs = RESUME_CASES[case]
    norm_bit = knobs["central_dp"].startswith("client")
    full_cfg = _run_cfg(tmp_path, "full", **knobs)
    full = FederatedRun(full_cfg, FakeGrid(norm_bit=norm_bit), run_config={})
    full_dir = full.run()

    cfg = _run_cfg(tmp_path, "killed", **knobs)
    with pytest.raises(Killed):
        FederatedRun(cfg, FakeGrid(kill_at_round=3, norm_bit=norm_bit), run_config={}).run()
    run_dir = tmp_path / "killed"
    assert not (run_dir / "checkpoints" / "round_003.pt").exists()
    at_kill = load_checkpoint(run_dir / "checkpoints" / "round_002.pt")
    assert list((run_dir / "checkpoints").glob("*.tmp")) == []

    grid = FakeGrid(norm_bit=norm_bit)
    resumed = FederatedRun(cfg, grid, run_config={})
    # right after the restore: exactly the state saved at round 2 (the uninterrupted run's)
    assert resumed.state.round == 2
    restored = strategy_state(resumed.strategy)
    assert _same(restored, at_kill["strategy_state"])
    assert _same(restored, load_checkpoint(full_dir / "checkpoints" / "round_002.pt")
                 ["strategy_state"])
    assert resumed.strategy.clipping_norm != knobs["central_dp_clip"]  # the adapted norm
    resumed.run()
    assert grid.rounds == [3, 4]  # rounds 1-2 were not re-run

    a, b = _final(full_dir), _final(run_dir)
    assert a["round"] == b["round"] == 4
    assert _same(a["arrays"], b["arrays"])
    assert _same(a["strategy_state"], b["strategy_state"])
    hist = [{k: v for k, v in r.items() if k != "round-seconds"} for r in b["history"]]
    assert hist == [{k: v for k, v in r.items() if k != "round-seconds"}
                    for r in a["history"]]
    clip = [r["central-dp-clip-norm"] for r in a["history"] if r["site"] == "global"]
    assert clip[0] == knobs["central_dp_clip"] and len(set(clip)) == 4  # adapted each round


def test_resume_without_the_strategy_state_would_diverge(tmp_path):
    """The control for the test above: the comparison sees lost moments and clip norm."""
    knobs = RESUME_CASES["fedadam+server-adaptive"]
    full_dir = FederatedRun(_run_cfg(tmp_path, "full", **knobs), FakeGrid(),
                            run_config={}).run()
    cfg = _run_cfg(tmp_path, "amnesiac", **knobs)
    with pytest.raises(Killed):
        FederatedRun(cfg, FakeGrid(kill_at_round=3), run_config={}).run()
    last = tmp_path / "amnesiac" / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    payload["strategy_state"] = {}
    torch.save(payload, last)
    FederatedRun(cfg, FakeGrid(), run_config={}).run()
    a, b = _final(full_dir)["arrays"], _final(tmp_path / "amnesiac")["arrays"]
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff > 1e-3


# -- the loop around the strategy -------------------------------------------------------------
def test_secure_aggregation_refuses_what_it_would_skip():
    check_secure_aggregation(_cfg(secagg=True))
    for values in ({"strategy": "fedadam"}, {"central_dp": "server-adaptive"}):
        with pytest.raises(ConfigError, match="secagg"):
            check_secure_aggregation(_cfg(secagg=True, **values))


def test_min_available_relaxes_through_a_dp_wrapper(tmp_path):
    cfg = _run_cfg(tmp_path, "relax", strategy="fedadam", central_dp="server-adaptive",
                   round_timeout=0.01)  # > 0: the config refuses 0
    run = FederatedRun(cfg, FakeGrid(nodes=(1, 2)), run_config={})
    run._rounds_run = 1  # after the first round a missing site is not waited for
    run._relax_min_available(2, floor=2)
    assert base_strategy(run.strategy).min_available_nodes == 2
    assert run.state.events[-1]["event"] == "degraded"


def test_study_file_is_written_atomically(tmp_path):
    FederatedRun(_run_cfg(tmp_path, "study"), FakeGrid(), run_config={})
    names = sorted(p.name for p in (tmp_path / "study").iterdir())
    assert names == ["study.json"]
