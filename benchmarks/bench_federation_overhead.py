"""Fixed costs of running a Flower app through EndoFed's private runtimes.

Uses the torch-free smoke app (tests/flower_smoke_app), so the figures are pure
orchestration overhead: SuperLink start-up, ``flwr run`` (FAB build + install, Ray
start-up in simulation, ClientApp process launches in deployment), per-round cost
(from runs with two different round counts) and shutdown. Prints one JSON object.

    python benchmarks/bench_federation_overhead.py --nodes 3 --rounds 1 3 [--deployment]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from endofed.simulations.deployment import LocalDeployment  # noqa: E402
from endofed.simulations.simulation_runtime import LocalSimulationRuntime  # noqa: E402

SMOKE_APP = REPO / "tests" / "flower_smoke_app"


def _measure(
    factory: Callable[[], LocalSimulationRuntime | LocalDeployment],
    rounds: list[int],
    nodes: int,
    extra: dict[str, float],
) -> dict[str, object]:
    t0 = time.perf_counter()
    runtime = factory()
    runtime.start()
    startup = time.perf_counter() - t0
    runs = []
    try:
        for r in rounds:
            res = runtime.run(
                {"num-server-rounds": r, "min-nodes": nodes, **extra}, timeout=900
            ).check()
            runs.append({"rounds": r, "seconds": round(res.duration_s, 2)})
    finally:
        t1 = time.perf_counter()
        runtime.stop()
        shutdown = time.perf_counter() - t1
    out: dict[str, object] = {
        "startup_s": round(startup, 2),
        "runs": runs,
        "shutdown_s": round(shutdown, 2),
    }
    if len(runs) >= 2 and runs[-1]["rounds"] != runs[0]["rounds"]:
        per_round = (runs[-1]["seconds"] - runs[0]["seconds"]) / (
            runs[-1]["rounds"] - runs[0]["rounds"]
        )
        out["per_round_s"] = round(per_round, 2)
        out["fixed_run_s"] = round(runs[0]["seconds"] - per_round * runs[0]["rounds"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--deployment", action="store_true", help="also time a deployment")
    args = parser.parse_args()

    result: dict[str, object] = {
        "benchmark": "federation_overhead",
        "nodes": args.nodes,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    result["simulation"] = _measure(
        lambda: LocalSimulationRuntime(
            SMOKE_APP, num_supernodes=args.nodes, num_cpus_per_client=args.cpus_per_client
        ),
        args.rounds,
        args.nodes,
        {},
    )
    if args.deployment:
        sites = [{"partition-id": i, "num-partitions": args.nodes} for i in range(args.nodes)]
        result["deployment"] = _measure(
            lambda: LocalDeployment(SMOKE_APP, sites=sites),
            args.rounds,
            args.nodes,
            {"fraction-evaluate": 0.0},
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
