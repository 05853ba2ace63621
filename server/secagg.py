"""Secure aggregation (SecAgg+) for the training phase of a round.

In flwr 1.41 SecAgg+ exists only as a legacy workflow (``SecAggPlusWorkflow`` over a
``LegacyContext`` with a legacy strategy). This module runs exactly that workflow for
the *training* half of each round inside EndoFed's own round loop, so checkpoints,
evaluation merging and resume stay the same whether secure aggregation is on or off.
With it on, the server only ever receives the masked sum of the sites' updates; it
cannot inspect (or screen for NaN) any single update, only the aggregate.

Declines and failures are handled as on the plain path: a site whose privacy budget
is spent sends a zero-weight masked vector with ``declined = 1`` in its (plain)
metrics, so the protocol completes and the decline is recorded; a site that fails
drops out (SecAgg+ removes its masks) and its refusal category is recorded. Fewer
usable updates than ``min-train-nodes`` keep the previous global model.
"""

from __future__ import annotations

import logging
import timeit
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid

from endofed.shared import protocol
from endofed.shared.config import EndoFedConfig

log = logging.getLogger(__name__)


def _legacy():
    """Legacy Flower pieces, imported lazily (only needed when SecAgg+ is on)."""
    from flwr.common import parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.compat.app_utils import start_update_client_manager_thread
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    return {
        "parameters_to_ndarrays": parameters_to_ndarrays,
        "LegacyContext": LegacyContext,
        "ServerConfig": ServerConfig,
        "start_thread": start_update_client_manager_thread,
        "FedAvg": FedAvg,
        "SecAggPlusWorkflow": SecAggPlusWorkflow,
        "MAIN_CONFIGS_RECORD": MAIN_CONFIGS_RECORD,
        "MAIN_PARAMS_RECORD": MAIN_PARAMS_RECORD,
        "Key": Key,
    }


def failure_reasons(failures: Sequence[BaseException | tuple]) -> list[str]:
    """The error reasons of the legacy workflow's failures, each reply once.

    flwr 1.41 wraps a failed reply's :class:`~flwr.app.Error` in an ``Exception`` (the
    masked-vector stage adds the same one twice); the reason is the site's refusal.
    """
    seen: set[int] = set()
    reasons: list[str] = []
    for failure in failures:
        error = failure.args[0] if isinstance(failure, Exception) and failure.args else None
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        reasons.append(str(getattr(error, "reason", error)))
    return reasons


def secure_fedavg(
    captured: dict[int, dict[str, float]], failed: list[str], *, min_usable: int,
    **fedavg: Any,
) -> Any:
    """Flower's legacy FedAvg for the secure workflow, made to report and to decline.

    Its ``aggregate_fit`` fills ``captured`` (node id -> the site's plain scalar
    metrics) and ``failed`` (the reasons of the sites that dropped out), leaves the
    declined sites (zero weight, ``declined = 1``) out of the average, and returns no
    aggregate when fewer than ``min_usable`` updates remain (as the plain path does).
    """
    lg = _legacy()

    class _CapturingFedAvg(lg["FedAvg"]):  # type: ignore[misc, valid-type]
        def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001
            captured.clear()
            failed.clear()
            for proxy, fitres in results:
                captured[proxy.node_id] = {
                    k: float(v) for k, v in fitres.metrics.items() if isinstance(v, int | float)
                }
            failed.extend(failure_reasons(failures))
            usable = [(p, r) for p, r in results if not r.metrics.get(protocol.DECLINED, 0)]
            if len(usable) < min_usable:
                log.warning("round %d: %d usable secure updates (< min-train-nodes=%d; "
                            "%d declined); keeping the previous global model",
                            server_round, len(usable), min_usable,
                            len(results) - len(usable))  # fmt: skip
                return None, {}
            return super().aggregate_fit(server_round, usable, failures)

    return _CapturingFedAvg(**fedavg)


class SecureTrainingPhase:
    """Runs the training half of rounds through SecAgg+ (see module docstring)."""

    def __init__(
        self,
        cfg: EndoFedConfig,
        grid: Grid,
        context: Context,
        names: Sequence[str],
        *,
        study_id: str = "",
    ) -> None:
        lg = _legacy()
        self._lg = lg
        self.names = list(names)
        self.captured: dict[int, dict[str, float]] = {}
        self.failures: list[str] = []
        fed = cfg.federation

        rounds = fed.num_server_rounds
        fit_config: dict[str, Any] = {protocol.NUM_SERVER_ROUNDS: rounds,
                                      protocol.STUDY_ID: study_id}
        if fed.strategy.lower() == "fedprox":  # FedAvg's sum + the sites' proximal term
            fit_config[protocol.PROXIMAL_MU] = float(cfg.train.proximal_mu)
        self.strategy = secure_fedavg(
            self.captured, self.failures, min_usable=max(1, fed.min_train_nodes),
            fraction_fit=fed.fraction_train,
            fraction_evaluate=0.0,
            min_fit_clients=fed.min_train_nodes,
            min_available_clients=fed.min_available_nodes,
            on_fit_config_fn=lambda r: {protocol.SERVER_ROUND: r, **fit_config},
        )
        self.context = lg["LegacyContext"](
            context, config=lg["ServerConfig"](num_rounds=rounds), strategy=self.strategy
        )
        self.workflow = lg["SecAggPlusWorkflow"](
            num_shares=cfg.privacy.secagg_num_shares,
            reconstruction_threshold=cfg.privacy.secagg_reconstruction_threshold,
            clipping_range=cfg.privacy.secagg_clipping_range,
            max_weight=cfg.privacy.secagg_max_weight,
            timeout=fed.round_timeout,
        )
        self._thread, self._stop, done = lg["start_thread"](grid, self.context.client_manager)
        done.wait()
        self.grid = grid

    def run_round(
        self, server_round: int, arrays: ArrayRecord
    ) -> tuple[ArrayRecord | None, dict[int, dict[str, float]]]:
        """One secure training round; returns the new global arrays and per-node metrics.

        ``None`` arrays: no aggregate this round (too few usable updates, or the
        protocol did not complete); :attr:`failures` holds the dropped sites' reasons.
        """
        lg = self._lg
        state = self.context.state
        cfg = ConfigRecord()
        cfg[lg["Key"].START_TIME] = timeit.default_timer()
        cfg[lg["Key"].CURRENT_ROUND] = server_round
        state.config_records[lg["MAIN_CONFIGS_RECORD"]] = cfg
        state.array_records[lg["MAIN_PARAMS_RECORD"]] = arrays
        before = id(state.array_records[lg["MAIN_PARAMS_RECORD"]])
        self.captured.clear()
        self.failures.clear()
        with np.errstate(divide="ignore", invalid="ignore"):  # every site declined: 0/0
            self.workflow(self.grid, self.context)
        result = state.array_records[lg["MAIN_PARAMS_RECORD"]]
        if id(result) == before:
            return None, dict(self.captured)
        values = [v.numpy() for v in result.values()]
        if len(values) != len(self.names):
            raise RuntimeError(
                f"secure aggregate has {len(values)} arrays, the model {len(self.names)}"
            )
        return (
            ArrayRecord({n: Array(np.asarray(v)) for n, v in zip(self.names, values)}),
            dict(self.captured),
        )

    def close(self) -> None:
        """Stop the client-manager thread of the legacy workflow."""
        self._stop.set()
        self._thread.join(timeout=10)

