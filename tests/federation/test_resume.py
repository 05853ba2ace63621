"""A real Flower simulation killed after round 2 resumes with its whole strategy state.

The federation (SuperLink, ServerApp, Ray workers) is killed with round 2 saved and
round 3 not (a directory where round 3's checkpoint goes makes the ServerApp fail
there, whatever the load), then the same run name is started again in a new
federation and finishes round 3. What is compared:

* the checkpoint the killed run left against the uninterrupted run's round 2;
* that the resumed process *used* the restored state: FedAdam's round-3 moments and
  weights follow from the round-2 ones by Flower's update rule, which they would not
  if m_t / v_t had restarted from zero; the adaptive clip norm the resumed round 3
  clipped with is exactly the one saved after round 2;
* the final weights and moments against the uninterrupted run (FedAdam without
  central DP): bitwise. Sites train on one CPU thread, without augmentation, on a
  seeded loader, so a site's update is a function of the global weights it receives
  (whichever process runs it); with two sites FedAvg's weighted sum has two terms, and
  float addition of two terms does not depend on the order the replies arrive in.
  (With more sites the order would change the last bits; compare with a tolerance
  then.) ``amnesia`` shows the comparison would see a lost state.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from endofed.server.run_state import load_checkpoint
from endofed.simulations.federated import project_root, run_simulation
from endofed.simulations.simulation_runtime import LocalSimulationRuntime

RUN_CONFIG = {
    "preset": "tiny",
    "image-size": 64,
    "batch-size": 4,
    "local-epochs": 1,
    "synthetic-images-per-site": 8,
    "threads": 1,
    "num-server-rounds": 3,
    "augment": False,
    "seed": 5,
    "strategy": "fedadam",
    "fraction-evaluate": 0.0,
    "min-train-nodes": 2,
    "min-evaluate-nodes": 2,
    "min-available-nodes": 2,
}
SITES = 2
BETA_1, BETA_2, ETA, TAU = 0.9, 0.99, 0.1, 1e-3  # the defaults in pyproject.toml



def _checkpoint(run_dir: Path, server_round: int) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / f"round_{server_round:03d}.pt")


def _layer(state: dict, cls: str) -> dict:
    (layer,) = [x for x in state["strategy_state"]["layers"] if x["class"] == cls]
    return layer["attrs"]


def _arrays(item: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in item["arrays"].items()}


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max())
               for k in a)


def _saved_round(run_dir: Path, server_round: int) -> bool:
    """Whether ``last.pt`` (the checkpoint a restart resumes from) is of ``server_round``."""
    last = run_dir / "checkpoints" / "last.pt"
    return last.exists() and load_checkpoint(last)["round"] == server_round


def _killed_after_round_2(cfg: dict, runs: Path, name: str, timeout: float = 900) -> Path:
    """Run until round 2 is saved and round 3 cannot be, then SIGKILL the federation.

    Deterministic whatever the machine's load (polling for ``last.pt`` raced round 3 on
    a busy machine: "killed too late"): a directory stands where round 3's checkpoint
    goes, so the ServerApp fails while saving round 3, before ``last.pt`` moves past
    round 2; the state on disk is the one a kill during round 3 leaves. Then everything
    this runtime started (SuperLink, ServerApp, Ray workers) is killed with SIGKILL.
    """
    run_dir = runs / name
    blocker = run_dir / "checkpoints" / "round_003.pt"
    blocker.mkdir(parents=True)
    cfg = {**cfg, "runs-dir": str(runs), "run-name": name}
    runtime = LocalSimulationRuntime(project_root(), num_supernodes=SITES,
                                     num_cpus_per_client=1.0, log_dir=run_dir / "logs-killed")
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = runtime.run(cfg, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - the run fails or is killed under it
            outcome["error"] = exc

    with runtime:
        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        runner.join(timeout=timeout)  # the run ends when its ServerApp fails in round 3
        assert _saved_round(run_dir, 2), f"round 2 never finished: {outcome}"
        for pid in runtime.alive_processes():  # kill -9 of whatever is left of the center
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    runner.join(timeout=120)
    assert "result" not in outcome or not outcome["result"].ok  # it did not finish
    assert blocker.is_dir() and not any(blocker.iterdir()), "round 3 was saved"
    blocker.rmdir()
    assert not (run_dir / "final_model.pt").exists()
    return run_dir


def _resume(cfg: dict, runs: Path, name: str) -> Path:
    return run_simulation(cfg, num_sites=SITES, runs_dir=runs, run_name=name,
                          timeout=900).run_dir


def _fedadam_step(state2: dict, state3: dict, inner: str) -> tuple[dict, dict, float]:
    """Round 3 of FedAdam recomputed from the round-2 state: (m_t-based d_3, w_3, amnesia).

    ``d_3`` (the mean update of round 3) follows from m_3 and the saved m_2; the v_t
    and weight updates it implies are what Flower computes only if it started round 3
    from the saved m_2 and v_2. ``amnesia`` is how far round 3's weights would move if
    it had restarted from m = v = 0 instead.
    """
    a2, a3 = _layer(state2, inner), _layer(state3, inner)
    m2, v2, m3, v3 = (_arrays(x[k]) for x, k in ((a2, "m_t"), (a2, "v_t"), (a3, "m_t"),
                                                   (a3, "v_t")))
    w2 = {k: np.asarray(v, np.float64) for k, v in state2["arrays"].items()}
    d3 = {k: (m3[k] - BETA_1 * m2[k]) / (1 - BETA_1) for k in m3}
    eta_norm = ETA * np.sqrt(1 - BETA_2 ** 4) / (1 - BETA_1 ** 4)  # server_round + 1 = 4
    v3_expected = {k: BETA_2 * v2[k] + (1 - BETA_2) * d3[k] ** 2 for k in v2}
    w3 = {k: w2[k] + eta_norm * m3[k] / (np.sqrt(v3[k]) + TAU) for k in w2}
    fresh_eta = ETA * np.sqrt(1 - BETA_2) / (1 - BETA_1)  # FedAdam's first step (t=1)
    fresh = {k: w2[k] + fresh_eta * (1 - BETA_1) * d3[k]
             / (np.sqrt((1 - BETA_2) * d3[k] ** 2) + TAU) for k in w2}
    for k in v3:
        np.testing.assert_allclose(v3[k], v3_expected[k], rtol=1e-3,
                                   atol=1e-6 * float(np.abs(v3[k]).max()), err_msg=k)
    return d3, w3, _max_diff(w3, fresh)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # three federations in a row on a busy machine
def test_fedadam_killed_after_round_2_resumes_like_an_uninterrupted_run(tmp_path):
    runs = tmp_path / "runs"
    full = _resume(RUN_CONFIG, runs, "full")  # uninterrupted, same seed
    killed = _killed_after_round_2(RUN_CONFIG, runs, "killed")
    saved = _checkpoint(killed, 2)
    full2 = _checkpoint(full, 2)
    # what the killed run left is what the uninterrupted run had after round 2
    assert _max_diff(saved["arrays"], full2["arrays"]) == 0.0
    for attr in ("m_t", "v_t"):
        assert _max_diff(_arrays(_layer(saved, "FedAdam")[attr]),
                         _arrays(_layer(full2, "FedAdam")[attr])) == 0.0, attr

    resumed = _resume(RUN_CONFIG, runs, "killed")
    last = _checkpoint(resumed, 3)
    # the resumed process started round 3 from the saved m_2, v_2 (not from zero) ...
    _, w3, amnesia = _fedadam_step(saved, last, "FedAdam")
    assert _max_diff(w3, last["arrays"]) < 1e-6
    assert amnesia > 1e-3  # ... which a lost state would visibly break (measured: 0.018)
    # ... and ends bitwise where the uninterrupted run ends
    full3 = _checkpoint(full, 3)
    assert _max_diff(last["arrays"], full3["arrays"]) == 0.0
    for attr in ("m_t", "v_t"):
        assert _max_diff(_arrays(_layer(last, "FedAdam")[attr]),
                         _arrays(_layer(full3, "FedAdam")[attr])) == 0.0, attr
    rounds = [r["round"] for r in last["history"] if r["site"] == "global"]
    assert rounds == [1, 2, 3]  # rounds 1-2 kept from the killed run, not re-run


@pytest.mark.slow
@pytest.mark.timeout(2400)  # three federations in a row on a busy machine
def test_adaptive_clipping_run_killed_after_round_2_keeps_its_clip_norm(tmp_path):
    """Server-side adaptive clipping around FedAdam: its noise is unseeded (OS entropy).

    The clip norm after round 2 depends on noisy counts, so it is compared with what
    the killed run saved, not with another run: the resumed round 3 clips with exactly
    that norm, adapts it again, and FedAdam's moments continue from the saved ones.
    """
    cfg = {**RUN_CONFIG, "central-dp": "server-adaptive", "central-dp-noise": 0.01,
           "central-dp-clip": 0.5}
    runs = tmp_path / "runs"
    killed = _killed_after_round_2(cfg, runs, "dp")
    saved = _checkpoint(killed, 2)
    wrapper = "DifferentialPrivacyServerSideAdaptiveClipping"
    clip2 = _layer(saved, wrapper)["clipping_norm"]["value"]
    used = {r["round"]: r["central-dp-clip-norm"] for r in saved["history"]
            if r["site"] == "global"}
    assert used[1] == 0.5 and clip2 not in (0.5, used[2])  # adapted after each round

    last = _checkpoint(_resume(cfg, runs, "dp"), 3)
    used3 = [r["central-dp-clip-norm"] for r in last["history"]
             if r["site"] == "global" and r["round"] == 3]
    assert used3 == [clip2]  # round 3 clipped with the restored norm, not 0.5
    clip3 = _layer(last, wrapper)["clipping_norm"]["value"]
    assert clip3 != clip2
    # |log(clip3 / clip2)| = clip_norm_lr * |noisy clipped fraction - 1/2|; the fraction
    # of 2 sites is in {0, 1/2, 1} plus noise of stddev 0.1/2: within [-1, 2] (20 sigma)
    assert abs(np.log(clip3 / clip2)) <= 0.2 * 1.5
    _fedadam_step(saved, last, "FedAdam")  # moments continued from the saved m_2, v_2
