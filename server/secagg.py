"""Secure aggregation (SecAgg+) for the training phase of a round.

In flwr 1.41 SecAgg+ exists only as a legacy workflow (``SecAggPlusWorkflow`` over a
``LegacyContext`` with a legacy strategy). This module runs exactly that workflow for
the *training* half of each round inside EndoFed's own round loop, so checkpoints,
evaluation merging and resume stay the same whether secure aggregation is on or off.
With it on, the server only ever receives the masked sum of the sites' updates; it
cannot inspect (or screen for NaN) any single update, only the aggregate.
"""

from __future__ import annotations

import logging
import timeit
from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid

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
        captured = self.captured
        fed = cfg.federation

        class _CapturingFedAvg(lg["FedAvg"]):  # type: ignore[misc, valid-type]
            """Legacy FedAvg that also keeps each site's (unmasked) scalar metrics."""

            def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001
                captured.clear()
                for proxy, fitres in results:
                    captured[proxy.node_id] = {
                        k: float(v) for k, v in fitres.metrics.items()
                        if isinstance(v, int | float)
                    }
                for failure in failures:
                    log.warning("secure aggregation: a site failed or declined: %s", failure)
                return super().aggregate_fit(server_round, results, failures)

        rounds = fed.num_server_rounds
        self.strategy = _CapturingFedAvg(
            fraction_fit=fed.fraction_train,
            fraction_evaluate=0.0,
            min_fit_clients=fed.min_train_nodes,
            min_available_clients=fed.min_available_nodes,
            on_fit_config_fn=lambda r: {"server-round": r, "num-server-rounds": rounds,
                                        "study-id": study_id},
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
        """One secure training round; returns the new global arrays and per-node metrics."""
        lg = self._lg
        state = self.context.state
        cfg = ConfigRecord()
        cfg[lg["Key"].START_TIME] = timeit.default_timer()
        cfg[lg["Key"].CURRENT_ROUND] = server_round
        state.config_records[lg["MAIN_CONFIGS_RECORD"]] = cfg
        state.array_records[lg["MAIN_PARAMS_RECORD"]] = arrays
        before = id(state.array_records[lg["MAIN_PARAMS_RECORD"]])
        self.captured.clear()
        self.workflow(self.grid, self.context)
        result = state.array_records[lg["MAIN_PARAMS_RECORD"]]
        if id(result) == before:
            log.warning("round %d: secure aggregation did not complete", server_round)
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
        self._stop.set()
        self._thread.join(timeout=10)

