"""The coordinating center's round loop: train, screen, aggregate, evaluate, checkpoint.

Flower's ``Strategy.start`` has no resume and no per-round hook, so the loop below
drives the strategy's own ``configure_*`` / ``aggregate_train`` methods round by
round, which lets it (a) screen every reply before aggregation, (b) merge the sites'
additive evaluation sums into exact global metrics, and (c) checkpoint after every
round and continue from the last one when the same run name is started again.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from endofed.privacy.reply_policy import parse_refusal
from endofed.server.evaluation import merge_evaluation_replies
from endofed.server.replies import (
    DECLINED_KEY,
    DECLINED_REASON,
    METRICS_KEY,
    describe_error,
    screen_train_replies,
    site_of,
)
from endofed.server.report import render_run_report, report_round
from endofed.server.run_state import (
    BEST_MODEL,
    FINAL_MODEL,
    RunState,
    load_run_state,
    save_run_state,
    to_checkpoint,
    write_round_metrics,
)
from endofed.server.secagg import SecureTrainingPhase
from endofed.server.strategies import (
    base_strategy,
    build_strategy,
    clipping_norm,
    load_strategy_state,
    strategy_state,
)
from endofed.shared.build import checkpoint_preprocess, model_for
from endofed.shared.config import ConfigError, EndoFedConfig
from endofed.shared.metrics.scalars import improves
from endofed.shared.metrics.tracking import open_tracker, round_scalars
from endofed.shared.model import load_trainable_state, save_checkpoint, trainable_state
from endofed.shared.util.atomic import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def to_arrayrecord(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_arrayrecord(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


STUDY_FILE = "study.json"


def study_id(run_dir: Path) -> str:
    """The study's identity: created with the run directory, kept when it is resumed.

    Sites key their privacy ledger by it, so two studies that happen to share a run
    name are still two studies (and a resumed study is still the same one).
    """
    path = run_dir / STUDY_FILE
    if path.exists():
        try:
            return str(json.loads(path.read_text())["study-id"])
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path} is unreadable ({exc}); restore or delete it") from exc
    sid = uuid.uuid4().hex
    atomic_write_json(path, {"study-id": sid, "run-dir": str(run_dir)}, indent=None)
    return sid


#: Strategies that run under SecAgg+: FedAvg of the masked sum (FedProx adds only the
#: sites' proximal term, sent in the round config).
SECURE_STRATEGIES = ("fedavg", "fedprox")


def check_secure_aggregation(cfg: EndoFedConfig) -> None:
    """SecAgg+ rounds aggregate with SecAgg+'s own FedAvg: refuse what it would skip.

    Called before round 1. Robust aggregators (median, trimmed mean, Krum) and central
    DP need each site's update, which SecAgg+ hides by design; the server-side
    optimisers are not wired to the secure sum. Asking for them together with
    ``secagg`` is an error, not a silent FedAvg.
    """
    if not cfg.privacy.secagg:
        return
    strategy, dp = cfg.federation.strategy.lower(), cfg.privacy.central_dp.lower()
    if strategy not in SECURE_STRATEGIES or dp not in ("", "none"):
        raise ConfigError(
            f"config key 'secagg': secure aggregation runs with strategy "
            f"{' or '.join(SECURE_STRATEGIES)} and central-dp=none (got "
            f"strategy={cfg.federation.strategy!r}, central-dp={cfg.privacy.central_dp!r}); "
            "robust aggregators and central DP need each site's update, which SecAgg+ "
            "hides, and server-side optimisers do not run on the secure sum. Use secagg "
            "with fedavg/fedprox (and per-site dp-epsilon), or turn secagg off"
        )


class FederatedRun:
    """One federated study, resumable by run name."""

    def __init__(
        self,
        cfg: EndoFedConfig,
        grid: Grid,
        *,
        run_config: dict[str, Any],
        context: Context | None = None,
    ) -> None:
        check_secure_aggregation(cfg)
        self.cfg = cfg
        self.grid = grid
        self.context = context
        self.secure: SecureTrainingPhase | None = None
        self.node_sites: dict[int, str] = {}
        self._rounds_run = 0  # rounds run by this process (resumed runs start at 0)
        self.run_config = dict(run_config)
        self.run_dir = Path(cfg.federation.runs_dir).expanduser().resolve() / (
            cfg.federation.run_name
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.study_id = study_id(self.run_dir)
        torch.manual_seed(cfg.train.seed)  # the same seed gives the same initial model
        self.model = model_for(cfg)
        initial = {k: v.detach().cpu().numpy() for k, v in trainable_state(self.model).items()}
        self.expected_shapes = {k: tuple(v.shape) for k, v in initial.items()}
        state = load_run_state(self.run_dir)
        if state is not None:
            self._check_compatible(state, initial)
            log.info(
                "resuming run %s from its checkpoint after round %d",
                cfg.federation.run_name, state.round,
            )
        else:
            state = RunState(round=0, arrays=initial, run_config=self.run_config)
        self.state = state
        self.strategy = build_strategy(cfg, to_arrayrecord(state.arrays))
        if state.strategy_state:
            load_strategy_state(self.strategy, state.strategy_state)
        # optional MLflow / TensorBoard run beside metrics.csv (tracking = "none": no-op)
        self.tracker = open_tracker(
            cfg.federation.tracking, self.run_dir, run_name=cfg.federation.run_name,
            tracking_dir=cfg.federation.tracking_dir,
            tags={"kind": "federated", "study-id": self.study_id,
                  "strategy": cfg.federation.strategy, "dp-epsilon": cfg.privacy.epsilon,
                  "seed": cfg.train.seed},
        )
        self.tracker.log_params(self.run_config)

    def _check_compatible(self, state: RunState, initial: dict[str, np.ndarray]) -> None:
        shapes = {k: tuple(v.shape) for k, v in state.arrays.items()}
        if shapes != self.expected_shapes:
            raise ConfigError(
                f"run directory {self.run_dir} holds a checkpoint of a different model "
                f"(preset/classes/fine-tuning changed); choose another 'run-name' or "
                "delete that directory"
            )

    # ------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run the remaining rounds; returns the run directory."""
        total = self.cfg.federation.num_server_rounds
        arrays = to_arrayrecord(self.state.arrays)
        if self.state.round >= total:
            log.info("run %s already finished %d rounds", self.cfg.federation.run_name, total)
        if self.cfg.privacy.secagg and self.state.round < total:
            if self.context is None:
                raise ConfigError("secure aggregation needs the ServerApp context")
            self.secure = SecureTrainingPhase(
                self.cfg, self.grid, self.context, list(self.expected_shapes),
                study_id=self.study_id,
            )
            log.info("secure aggregation (SecAgg+) is on: the server sees only the sum")
        status = "FAILED"
        try:
            for server_round in range(self.state.round + 1, total + 1):
                t0 = time.perf_counter()
                log.info("[ROUND %d/%d]", server_round, total)
                if self.secure is not None:
                    arrays, train_rows = self._secure_train_round(server_round, arrays)
                else:
                    arrays, train_rows = self._train_round(server_round, arrays)
                eval_rows = self._evaluate_round(server_round, arrays)
                self._record_round(server_round, arrays, train_rows, eval_rows,
                                   time.perf_counter() - t0)
                self._rounds_run += 1
            self._finish(arrays)
            status = "FINISHED"
        finally:
            if self.secure is not None:
                self.secure.close()
            self.tracker.close(status)
        return self.run_dir

    def _secure_train_round(
        self, server_round: int, arrays: ArrayRecord
    ) -> tuple[ArrayRecord, dict[str, dict[str, float]]]:
        assert self.secure is not None
        new_arrays, per_node = self.secure.run_round(server_round, arrays)
        rows: dict[str, dict[str, float]] = {}
        declined = 0
        for nid, metrics in per_node.items():
            site = self.node_sites.get(nid, f"node-{nid}")
            rows[site] = metrics
            if metrics.get(DECLINED_KEY, 0) > 0:  # as on the plain path
                declined += 1
                log.info("secure round %d: %s declined (privacy budget)", server_round, site)
                self.state.events.append({"round": server_round, "site": site, "node": nid,
                                          "event": "declined",
                                          "reason": DECLINED_REASON})
        for reason in self.secure.failures:  # sites that dropped out of the protocol
            refusal = parse_refusal(reason, allow_detail=True)
            site = refusal.site if refusal is not None and refusal.site else "unknown site"
            event = "declined" if refusal is not None and refusal.declined else "rejected"
            rows.setdefault(site, {})[event] = 1.0
            log.warning("secure round %d: %s dropped out: %s", server_round, site,
                        describe_error(reason))
            self.state.events.append({"round": server_round, "site": site, "event": event,
                                      "reason": describe_error(reason)})
        if new_arrays is None:
            log.warning("round %d: no secure aggregate (%d replies, %d declined, %d dropped "
                        "out); keeping the previous model", server_round, len(per_node),
                        declined, len(self.secure.failures))
            return arrays, rows
        if not all(np.isfinite(v.numpy()).all() for v in new_arrays.values()):
            log.warning("round %d: the secure aggregate contains NaN/Inf; rejected",
                        server_round)
            self.state.events.append({"round": server_round, "site": "global",
                                      "event": "rejected", "reason": "non-finite aggregate"})
            return arrays, rows
        rows["global"] = {"sites-aggregated": float(len(per_node) - declined)}
        return new_arrays, rows

    def _base_config(self, server_round: int) -> ConfigRecord:
        return ConfigRecord(
            {
                "server-round": server_round,
                "num-server-rounds": self.cfg.federation.num_server_rounds,
                "study-id": self.study_id,
            }
        )

    def _online_nodes(self) -> int:
        return len(list(self.grid.get_node_ids()))

    def _relax_min_available(self, server_round: int, floor: int) -> None:
        """Keep a round from waiting forever for ``min-available-nodes`` after a site died.

        Flower's ``sample_nodes`` blocks until ``min_available_nodes`` SuperNodes are
        connected. The first round this process runs waits like that (the federation
        starts when enough hospitals have joined); later rounds wait at most
        ``round-timeout`` and then go on with the nodes online, never fewer than
        ``floor`` (``min-train-nodes`` / ``min-evaluate-nodes``, which Flower still
        waits for).
        """
        configured = self.cfg.federation.min_available_nodes
        inner = base_strategy(self.strategy)  # the DP wrappers sample through it
        if not hasattr(inner, "min_available_nodes"):
            return
        inner.min_available_nodes = configured
        if not self._rounds_run or self._online_nodes() >= configured:
            return
        deadline = time.monotonic() + self.cfg.federation.round_timeout
        log.info("round %d: waiting up to %.0fs for min-available-nodes=%d (%d online)",
                 server_round, self.cfg.federation.round_timeout, configured,
                 self._online_nodes())
        while (online := self._online_nodes()) < configured and time.monotonic() < deadline:
            time.sleep(1.0)
        if online < configured:
            cap = max(online, floor, 1)
            log.warning("round %d: only %d of min-available-nodes=%d SuperNodes online "
                        "after %.0fs; going on with %d", server_round, online, configured,
                        self.cfg.federation.round_timeout, cap)
            inner.min_available_nodes = cap
            self.state.events.append(
                {"round": server_round, "site": "global", "event": "degraded",
                 "reason": f"{online} of min-available-nodes={configured} nodes online"}
            )

    def _train_round(
        self, server_round: int, arrays: ArrayRecord
    ) -> tuple[ArrayRecord, dict[str, dict[str, float]]]:
        self._relax_min_available(server_round, self.cfg.federation.min_train_nodes)
        clip = clipping_norm(self.strategy)  # the norm this round's updates are clipped to
        messages = list(
            self.strategy.configure_train(
                server_round, arrays, self._base_config(server_round), self.grid
            )
        )
        replies = list(
            self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout)
        )
        # Pushed messages carry their ids; a reply the SuperLink made up for a node
        # that went offline comes from the SuperLink itself, so map it back.
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}

        def node_of(reply: Message) -> int:
            return dst.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

        valid, screened = screen_train_replies(replies, self.expected_shapes)
        rows: dict[str, dict[str, float]] = {}
        for msg in valid:
            self.node_sites[node_of(msg)] = site_of(msg)
            rows[site_of(msg)] = {
                k: float(v) for k, v in msg.content[METRICS_KEY].items()
                if not isinstance(v, list)
            }
        failed = [r for r in replies if not any(r is v for v in valid)]
        for item, msg in zip(screened, failed, strict=True):
            node = node_of(msg)
            if item.site.startswith("node-"):  # an error without a name: known from before?
                site = self.node_sites.get(node, f"node-{node}")
            else:
                site = self.node_sites[node] = item.site
            if item.declined:
                event = "declined"
            elif msg.has_error() and msg.error.code == ErrorCode.NODE_UNAVAILABLE:
                event = "unavailable"
            else:
                event = "rejected"
            rows.setdefault(site, {})[event] = 1.0
            self.state.events.append({"round": server_round, "site": site, "node": node,
                                      "event": event, "reason": item.reason})
        if clip is not None:
            rows.setdefault("global", {})["central-dp-clip-norm"] = clip
        replied = {node_of(r) for r in replies}
        silent = [m.metadata.dst_node_id for m in messages
                  if m.metadata.dst_node_id not in replied]
        if silent:
            log.warning("round %d: %d of %d sites did not reply within %.0fs: %s",
                        server_round, len(silent), len(messages),
                        self.cfg.federation.round_timeout,
                        ", ".join(self.node_sites.get(n, f"node-{n}") for n in silent))
        for node in silent:
            site = self.node_sites.get(node, f"node-{node}")
            rows.setdefault(site, {})["missing"] = 1.0
            self.state.events.append(
                {"round": server_round, "site": site, "node": node, "event": "missing",
                 "reason": f"no reply within round-timeout "
                           f"({self.cfg.federation.round_timeout:.0f}s)"}
            )
        if len(valid) < max(1, self.cfg.federation.min_train_nodes):
            log.warning(
                "round %d: only %d usable updates (< min-train-nodes=%d); "
                "keeping the previous global model",
                server_round, len(valid), self.cfg.federation.min_train_nodes,
            )
            return arrays, rows
        _restrict_to_common_metrics(valid)
        new_arrays, agg_metrics = self.strategy.aggregate_train(server_round, valid)
        if new_arrays is None:
            log.warning("round %d: strategy returned no aggregate", server_round)
            return arrays, rows
        rows["global"] = {**rows.get("global", {}),
                          **{k: float(v) for k, v in (agg_metrics or {}).items()
                             if not isinstance(v, list)}}
        rows["global"]["sites-aggregated"] = float(len(valid))
        return new_arrays, rows

    def _evaluate_round(self, server_round: int, arrays: ArrayRecord) -> dict[str, Any]:
        if self.cfg.federation.fraction_evaluate <= 0:
            return {}
        self._relax_min_available(server_round, self.cfg.federation.min_evaluate_nodes)
        messages = list(
            self.strategy.configure_evaluate(
                server_round, arrays, self._base_config(server_round), self.grid
            )
        )
        replies: list[Message] = list(
            self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout)
        )
        for msg in replies:
            if not msg.has_error():
                self.node_sites[msg.metadata.src_node_id] = site_of(msg)
        return merge_evaluation_replies(
            replies,
            class_names=list(self.cfg.data.class_names),
            morphology_names=list(self.cfg.data.morphology_names),
            threshold_rule=self.cfg.federation.threshold_rule,
        )

    def _record_round(
        self,
        server_round: int,
        arrays: ArrayRecord,
        train_rows: dict[str, dict[str, float]],
        evaluation: dict[str, Any],
        seconds: float,
    ) -> None:
        site_scalars: dict[str, dict[str, float]] = evaluation.get("site_scalars", {})
        # Secure rounds know sites only by node id until the evaluation names them.
        train_rows = {self._named(k): v for k, v in train_rows.items()}
        for event in self.state.events:
            if event.get("round") == server_round:
                event["site"] = self._named(str(event["site"]))
        sites = sorted(set(train_rows) | set(site_scalars) | {"global"})
        for site in sites:
            row: dict[str, Any] = {"round": server_round, "site": site}
            row.update(train_rows.get(site, {}))
            if site == "global":
                row.update(evaluation.get("global_scalars", {}))
                row["round-seconds"] = seconds
            else:
                row.update(site_scalars.get(site, {}))
            self.state.history.append(row)
        if evaluation.get("global_metrics") is not None:
            write_round_metrics(self.run_dir, server_round, evaluation["global_metrics"])
            self._keep_if_best(server_round, arrays, evaluation["global_metrics"])
        self.state.round = server_round
        self.state.arrays = from_arrayrecord(arrays)
        self.state.strategy_state = strategy_state(self.strategy)
        save_run_state(self.run_dir, self.state)
        self.tracker.log_metrics(round_scalars(
            r for r in self.state.history if r.get("round") == server_round
        ), step=server_round)
        # the progress line (terminal, progress.log) and report.md of this round
        report_round(self.run_dir, self.state.history, server_round=server_round,
                     total=self.cfg.federation.num_server_rounds,
                     run_config=self.run_config, events=self.state.events)

    def _named(self, site: str) -> str:
        """``node-<id>`` replaced by the site's name once a reply has named it."""
        if site.startswith("node-") and site[5:].isdigit():
            return self.node_sites.get(int(site[5:]), site)
        return site

    def _keep_if_best(
        self, server_round: int, arrays: ArrayRecord, metrics: dict[str, Any]
    ) -> None:
        """Write ``model_best.pt`` when this round's federated validation map50 is the
        best so far (:func:`~endofed.shared.metrics.scalars.improves`); before the round
        checkpoint, so a resumed run never has a best model older than its history."""
        earlier = [_nan(r.get("map50")) for r in self.state.history
                   if r.get("site") == "global" and r.get("round", 0) < server_round
                   and "map50" in r]
        best: float | None = None
        for value in earlier:
            if improves(value, best):
                best = value
        value = _nan(metrics.get("map50"))
        if not improves(value, best):
            return
        self._save_model(BEST_MODEL, arrays, {"round": server_round, "val_map50": value,
                                              "operating_point": metrics.get("operating_point")})
        log.info("round %d: best federated validation map50 so far (%s); %s written",
                 server_round, _fmt(value), BEST_MODEL)

    def _save_model(self, name: str, arrays: ArrayRecord, extra: dict[str, Any]) -> Path:
        load_trainable_state(
            self.model, {k: torch.from_numpy(v) for k, v in from_arrayrecord(arrays).items()}
        )
        extra = {"class_names": list(self.cfg.data.class_names),
                 "run_name": self.cfg.federation.run_name,
                 "study_id": self.study_id,
                 "preprocess": checkpoint_preprocess(self.cfg),
                 **{k: v for k, v in extra.items() if v is not None}}
        return save_checkpoint(self.run_dir / name, self.model, extra=to_checkpoint(extra))

    def _finish(self, arrays: ArrayRecord) -> None:
        # final_model.pt is the last round's global model with that round's threshold.
        latest = _latest_round_metrics(self.run_dir)
        self._save_model(FINAL_MODEL, arrays, {
            "rounds": self.state.round,
            "operating_point": (latest or {}).get("operating_point"),
        })
        if self.state.events:
            rows = ["| Round | Site | Event | Reason |", "|---|---|---|---|"]
            rows += [f"| {e['round']} | {e['site']} | {e['event']} | {e.get('reason', '')} |"
                     for e in self.state.events]
            atomic_write_text(self.run_dir / "events.md", "\n".join(rows) + "\n")
        render_run_report(self.run_dir)
        log.info("run report: %s", self.run_dir / "report.md")
        d = self.run_dir
        self.tracker.log_artifacts([d / "report.md", d / "metrics.csv", d / "events.md",
                                    *sorted(d.glob("*.png"))], subdir="report")
        self.tracker.log_artifacts([d / FINAL_MODEL, d / BEST_MODEL], subdir="model")


def _restrict_to_common_metrics(replies: list[Message]) -> None:
    """Keep only the metric keys every reply has (per-site rows were recorded already).

    Flower's strategies refuse replies whose MetricRecords differ, e.g. when one
    hospital trains under DP (it adds ``epsilon-spent`` ...) and another does not.
    """
    if not replies:
        return
    common = set.intersection(*(set(m.content[METRICS_KEY].keys()) for m in replies))
    for msg in replies:
        record = msg.content[METRICS_KEY]
        if set(record.keys()) != common:
            msg.content[METRICS_KEY] = MetricRecord(
                {k: v for k, v in record.items() if k in common}
            )


def _nan(x: Any) -> float:
    try:
        return float("nan") if x is None else float(x)
    except (TypeError, ValueError):
        return float("nan")


def _latest_round_metrics(run_dir: Path) -> dict[str, Any] | None:
    files = sorted((run_dir / "rounds").glob("round_*.json"))
    if not files:
        return None
    try:
        return json.loads(files[-1].read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); final model stored without a threshold",
                    files[-1], exc)
        return None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
