"""What a federated EndoFed round costs beyond local training. Prints one JSON object.

Three measurements (``--deploy`` measures Flower's default isolation, a fresh
``flwr-clientapp`` per message, and the EndoFed site runner, one warm process per
SuperNode, in the same invocation):

* ``overhead``: per round, ``1 - max(site train-seconds) / round-seconds`` from a run's
  ``metrics.csv`` (the share of the round the server spends waiting on anything but
  the slowest site's training: process start-up, transfer, aggregation, evaluation,
  checkpointing). Computed for runs made here (``--simulate``, ``--deploy``) and for
  any existing run directory given with ``--run-dir``.
* ``bytes``: bytes sent per round per site for ``finetune=global`` vs ``local`` and each
  model preset: the trainable arrays go down and come back up (``2 x sum(nbytes)``).
  Computed from :func:`shared.model.trainable_state`; no federation is run.
* ``scaling``: the largest number of virtual hospitals (``--scale 3 10 25 50``) for
  which one ``tiny`` round completes in simulation within ``--scale-timeout``; stops
  at the first failure or timeout. Peak RSS is the largest sum over the runtime's
  processes (SuperLink, Ray, ClientApps), sampled every 0.5 s from ``/proc``.

    python benchmarks/bench_federation.py --bytes --simulate --deploy --scale 3 10 25 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from endofed.shared.model import PRESETS, build_model, trainable_state  # noqa: E402
from endofed.simulations.deployment import LocalDeployment  # noqa: E402
from endofed.simulations.flwr_run import FlowerRunError  # noqa: E402
from endofed.simulations.simulation_runtime import LocalSimulationRuntime  # noqa: E402

SMALL_RUN = {"preset": "tiny", "image-size": 64, "batch-size": 4, "local-epochs": 1,
             "threads": 1, "seed": 3, "amp": False}  # fmt: skip


def overhead_of(run_dir: Path) -> dict[str, Any]:
    """Per-round overhead share from ``run_dir/metrics.csv``."""
    df = pd.read_csv(Path(run_dir) / "metrics.csv")
    rounds = []
    for rnd, rows in df.groupby("round"):
        glob = rows[rows.site == "global"]
        sites = rows[rows.site != "global"]
        if glob.empty or "train-seconds" not in sites or sites["train-seconds"].isna().all():
            continue
        total = float(glob["round-seconds"].iloc[0])
        train = float(sites["train-seconds"].max())
        rounds.append({"round": int(rnd), "round_s": round(total, 2),
                       "max_train_s": round(train, 2),
                       "overhead_share": round(1.0 - train / total, 4)})
    shares = [r["overhead_share"] for r in rounds]
    return {"run_dir": str(run_dir), "rounds": rounds,
            "mean_overhead_share": round(sum(shares) / len(shares), 4) if shares else None}


def bytes_per_round(presets: list[str], image_size: int, num_classes: int = 1) -> dict:
    """Bytes exchanged per site per round (down + up) for each preset and fine-tuning."""
    out: dict[str, dict[str, Any]] = {}
    for preset in presets:
        out[preset] = {}
        for finetune in ("global", "local"):
            torch.manual_seed(0)
            model = build_model(preset=preset, num_classes=num_classes,
                                image_size=image_size, finetune=finetune)
            state = trainable_state(model)
            one_way = sum(t.numel() * t.element_size() for t in state.values())
            total = sum(p.numel() * p.element_size() for p in model.parameters())
            out[preset][finetune] = {
                "arrays": len(state),
                "one_way_bytes": one_way,
                "per_round_bytes": 2 * one_way,
                "per_round_mib": round(2 * one_way / 2**20, 3),
                "share_of_parameters": round(one_way / total, 4),
            }
            del model
    return out


class _RssSampler(threading.Thread):
    """Peak summed RSS of a runtime's processes (Linux /proc)."""

    def __init__(self, runtime: LocalSimulationRuntime | LocalDeployment) -> None:
        super().__init__(daemon=True)
        self.runtime, self.peak, self._halt = runtime, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.5):
            total = 0
            for pid in list(self.runtime.alive_processes()):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
                except OSError:
                    continue
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._halt.set()
        self.join(timeout=5)
        return self.peak


def _run(runtime: LocalSimulationRuntime | LocalDeployment, cfg: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    with runtime:
        sampler = _RssSampler(runtime)
        sampler.start()
        try:
            res = runtime.run(cfg, timeout=timeout)
            ok, status = res.ok, res.status
        except FlowerRunError as exc:
            ok, status = False, f"error: {str(exc).splitlines()[0]}"
        peak = sampler.stop()
    return {"ok": ok, "status": status, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(peak / 2**20, 1)}


def simulate(runs: Path, name: str, sites: int, rounds: int, images: int,
             timeout: float) -> dict:
    cfg = {**SMALL_RUN, "num-server-rounds": rounds, "runs-dir": str(runs), "run-name": name,
           "synthetic-images-per-site": images, "min-train-nodes": min(2, sites),
           "min-evaluate-nodes": min(2, sites), "min-available-nodes": sites}
    rt = LocalSimulationRuntime(REPO, num_supernodes=sites, num_cpus_per_client=1,
                                backend_num_cpus=2, log_dir=runs / name / "logs")
    return _run(rt, cfg, timeout)


def deploy(runs: Path, name: str, sites: int, rounds: int, images: int,
           timeout: float, *, site_runner: bool = False, preset: str = "tiny") -> dict:
    """A loopback deployment; ``site_runner``: SuperNodes in ``--isolation process``
    with the EndoFed site runner (the app approved at every site)."""
    from endofed.shared.data.synthetic import write_sites

    data = runs / "deploy-data"
    if not (data / f"site_{sites}").exists():
        write_sites(data, sites=sites, images_per_site=images, seed=1, size=96)
    nodes = [{"data-path": str(data / f"site_{i + 1}"), "site-name": f"hosp-{i + 1}",
              "threads": 1} for i in range(sites)]  # the site's own threads (= run's)
    cfg = {**SMALL_RUN, "preset": preset, "num-server-rounds": rounds, "runs-dir": str(runs),
           "run-name": name, "min-train-nodes": sites, "min-evaluate-nodes": sites,
           "min-available-nodes": sites}
    rt = LocalDeployment(REPO, sites=nodes, log_dir=runs / name / "logs",
                         site_runner=site_runner)
    if site_runner:
        rt.approve_app()
    return _run(rt, cfg, timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", action="store_true", help="bytes per round per site")
    parser.add_argument("--presets", nargs="+", default=["tiny", "cpu", "paper"])
    parser.add_argument("--image-size", type=int, default=None,
                        help="model input size for --bytes (default: each preset's)")
    parser.add_argument("--simulate", action="store_true", help="time a 3-site simulation")
    parser.add_argument("--deploy", action="store_true",
                        help="time a 3-site deployment, default isolation and site runner")
    parser.add_argument("--deploy-preset", default="tiny", metavar="NAME",
                        help="model preset of the --deploy runs (default: %(default)s)")
    parser.add_argument("--deploy-variants", default="default,site-runner", metavar="LIST",
                        help="which --deploy variants to run, comma-separated "
                        "(default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=10, help="images per site")
    parser.add_argument("--run-dir", type=Path, nargs="*", default=[],
                        help="existing run directories to compute the overhead of")
    parser.add_argument("--scale", type=int, nargs="*", default=[],
                        help="numbers of virtual hospitals to try (one round each)")
    parser.add_argument("--scale-images", type=int, default=4)
    parser.add_argument("--scale-timeout", type=float, default=300.0)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-federation-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "federation", "cpu_count": os.cpu_count(),
                              "load_avg_1m": round(os.getloadavg()[0], 2),
                              "work_dir": str(work)}
    if args.bytes:
        unknown = [p for p in args.presets if p not in PRESETS]
        if unknown:
            parser.error(f"unknown presets {unknown}; choose from {sorted(PRESETS)}")
        result["bytes"] = bytes_per_round(args.presets, args.image_size)
    overhead: dict[str, Any] = {}
    if args.simulate:
        run = simulate(work, "sim", 3, args.rounds, args.images, 1800)
        overhead["simulation"] = {**run, **(overhead_of(work / "sim") if run["ok"] else {})}
    if args.deploy:
        variants = [v.strip() for v in args.deploy_variants.split(",") if v.strip()]
        unknown = set(variants) - {"default", "site-runner"}
        if unknown:
            parser.error(f"--deploy-variants: unknown {sorted(unknown)}")
        for variant in variants:
            name = "deploy" if variant == "default" else "deploy-runner"
            run = deploy(work, name, 3, args.rounds, args.images, 2400,
                         site_runner=variant == "site-runner", preset=args.deploy_preset)
            key = "deployment" if variant == "default" else "deployment_site_runner"
            overhead[key] = {**run, "preset": args.deploy_preset,
                             **(overhead_of(work / name) if run["ok"] else {})}
    for rd in args.run_dir:
        overhead[str(rd)] = overhead_of(rd)
    if overhead:
        result["overhead"] = overhead
    if args.scale:
        tries = []
        for n in sorted(args.scale):
            t0 = time.perf_counter()
            run = simulate(work, f"scale{n}", n, 1, args.scale_images, args.scale_timeout)
            run.update(sites=n, seconds=round(time.perf_counter() - t0, 1))
            tries.append(run)
            if not run["ok"] or run["seconds"] > args.scale_timeout:
                break
        done = [t["sites"] for t in tries if t["ok"] and t["seconds"] <= args.scale_timeout]
        result["scaling"] = {"tries": tries, "largest_ok": max(done) if done else None,
                             "images_per_site": args.scale_images}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
