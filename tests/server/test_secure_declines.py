"""SecAgg+ rounds handle declines and failures as the plain path does.

The secure FedAvg is Flower's legacy FedAvg (flwr 1.41 SecAggPlusWorkflow); these
tests hand it real legacy ``FitRes`` results the way the workflow does after
unmasking: every result carries the same (already aggregated) parameters, and a
declined site is a zero-weight one with ``declined = 1`` in its plain metrics.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Error
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy

from endofed.privacy.reply_policy import DATA_UNUSABLE, refusal_reason
from endofed.server.loop import check_secure_aggregation
from endofed.server.secagg import failure_reasons, secure_fedavg
from endofed.shared.config import ConfigError, EndoFedConfig

AGGREGATE = [np.arange(6, dtype=np.float64).reshape(2, 3), np.ones(3)]


def _result(node: int, num_examples: int, metrics: dict) -> tuple[GridClientProxy, FitRes]:
    fitres = FitRes(status=Status(Code.OK, "ok"), parameters=ndarrays_to_parameters(AGGREGATE),
                    num_examples=num_examples, metrics=metrics)  # fmt: skip
    return GridClientProxy(node, None, 1), fitres  # type: ignore[arg-type]


def _results() -> list:
    declined = {"declined": 1.0, "num-examples": 0.0, "epsilon-spent": 8.0,
                "epsilon-target": 8.0}
    return [_result(11, 6, {"num-examples": 6.0, "train-seconds": 1.0}),
            _result(12, 0, declined),
            _result(13, 4, {"num-examples": 4.0, "train-seconds": 2.0})]


def test_a_declined_site_is_reported_and_left_out_of_the_secure_average():
    captured: dict[int, dict[str, float]] = {}
    failed: list[str] = []
    strategy = secure_fedavg(captured, failed, min_usable=2)
    refusal = Error(code=1, reason=refusal_reason(DATA_UNUSABLE, "hosp-bad"))
    dropped = Exception(refusal)
    params, _ = strategy.aggregate_fit(1, _results(), [dropped, Exception(refusal)])
    for got, want in zip(parameters_to_ndarrays(params), AGGREGATE, strict=True):
        np.testing.assert_allclose(got, want)
    assert captured[12]["declined"] == 1.0 and captured[12]["epsilon-spent"] == 8.0
    assert set(captured) == {11, 12, 13}
    # the workflow lists a masked-vector failure twice: it is one site
    assert failed == [refusal_reason(DATA_UNUSABLE, "hosp-bad")]


def test_too_few_usable_secure_updates_keep_the_previous_model():
    """Two usable of three with min-train-nodes=3: no aggregate, as on the plain path."""
    captured: dict[int, dict[str, float]] = {}
    params, metrics = secure_fedavg(captured, [], min_usable=3).aggregate_fit(1, _results(), [])
    assert params is None and metrics == {}
    assert captured[12]["declined"] == 1.0  # the decline is still reported


def test_every_site_declining_gives_no_aggregate():
    results = [r for r in _results() if r[1].num_examples == 0]
    params, _ = secure_fedavg({}, [], min_usable=1).aggregate_fit(2, results, [])
    assert params is None


def test_failure_reasons_read_the_wrapped_errors():
    error = Error(code=1, reason="site failed (details in the site's log)")
    assert failure_reasons([Exception(error), Exception(error), (None, None)]) == [error.reason]


def _cfg(**values) -> EndoFedConfig:
    return EndoFedConfig.from_mapping({"secagg": True, **values})


@pytest.mark.parametrize("values", [{}, {"strategy": "fedprox", "proximal-mu": 0.01}])
def test_secure_aggregation_runs_fedavg_and_fedprox(values):
    check_secure_aggregation(_cfg(**values))


@pytest.mark.parametrize("values", [
    {"strategy": "fedadam"}, {"strategy": "fedmedian"}, {"strategy": "krum"},
    {"central-dp": "client-fixed"}, {"central-dp": "server-adaptive"},
])
def test_secure_aggregation_refuses_what_it_cannot_run_and_names_what_works(values):
    with pytest.raises(ConfigError) as info:
        check_secure_aggregation(_cfg(**values))
    message = str(info.value)
    assert message.startswith("config key 'secagg'")
    assert "fedavg or fedprox and central-dp=none" in message
    assert "\n" not in message
