"""Dashboard page times on a run of 50 rounds x 10 sites (goal: < 200 ms per page).

The run dir is written with the server's own writers (tests/dashboard/fake_run.py:
``save_run_state`` per round, ``write_round_metrics``, the progress line, the final
model and the report). Every page and API endpoint is timed through FastAPI's test
client (in process, no network) as the median of ``--repeats`` requests after one
warm-up request; the peers, measured in the same run, are a static file served by the
same app (the CSS) and reading the same metrics.csv with pandas.

    python benchmarks/bench_dashboard.py [--rounds 50] [--sites 10] [--repeats 15]

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.dashboard.fake_run


def _median_ms(fn, repeats: int) -> float:  # noqa: ANN001 - a callable
    fn()  # warm-up (caches, templates)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50, metavar="N", help="rounds (default 50)")
    ap.add_argument("--sites", type=int, default=10, metavar="N", help="sites (default 10)")
    ap.add_argument("--repeats", type=int, default=15, metavar="N",
                    help="timed requests per page (default 15)")
    args = ap.parse_args()

    import pandas as pd
    from fastapi.testclient import TestClient

    from endofed.server.dashboard import create_app
    from tests.dashboard.fake_run import FakeRun

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        run = FakeRun(root / "study" / "big", total=args.rounds, sites=args.sites,
                      declined=("site_10",))
        for _ in range(args.rounds):
            run.add_round()
        run.finish(report=True)
        build_s = time.perf_counter() - t0
        client = TestClient(create_app(root))
        rid = "study/big"
        pages = {
            "index": "/",
            "run page": f"/runs/{rid}",
            "run live fragment": f"/runs/{rid}/live",
            "report page": f"/runs/{rid}/report",
            "case viewer page": f"/cases?run={rid}",
            "api runs": "/api/runs",
            "api summary (2 s poll)": f"/api/runs/{rid}/summary",
            "api sites": f"/api/runs/{rid}/sites",
            "api events": f"/api/runs/{rid}/events",
            "api metrics": f"/api/runs/{rid}/metrics",
            "api chart map50.svg": f"/api/runs/{rid}/charts/map50.svg",
            "api models": f"/api/runs/{rid}/models",
            "api report": f"/api/runs/{rid}/report",
        }
        out: dict[str, object] = {}
        for name, url in pages.items():
            def get(url: str = url) -> None:
                r = client.get(url)
                assert r.status_code == 200, (url, r.status_code)
            out[name] = _median_ms(get, args.repeats)
        peers = {
            "static css via the same app": _median_ms(
                lambda: client.get("/static/dashboard.css"), args.repeats),
            "pandas.read_csv(metrics.csv)": _median_ms(
                lambda: pd.read_csv(run.run_dir / "metrics.csv"), args.repeats),
        }
        # a cold page: the first request after metrics.csv and last.pt were replaced
        run.state.round -= 1
        run.add_round()
        t0 = time.perf_counter()
        client.get(f"/runs/{rid}")
        cold = round((time.perf_counter() - t0) * 1000, 2)
        rows = len(pd.read_csv(run.run_dir / "metrics.csv"))
    slowest = max(out, key=out.get)
    print(json.dumps({
        "run": {"rounds": args.rounds, "sites": args.sites, "metrics_csv_rows": rows,
                "build_seconds": round(build_s, 1)},
        "median_ms": out,
        "peers_median_ms": peers,
        "run_page_after_a_new_round_ms": cold,
        "slowest": slowest,
        "goal_ms": 200,
        "all_under_goal": all(v < 200 for v in out.values()) and cold < 200,
    }, indent=1))


if __name__ == "__main__":
    main()
