"""Progress while a run streams, and the ClientApps' GPU share (issue 15).

The streaming test runs a real child process through :func:`run_cli` (the function
``flwr run`` goes through); the GPU share is a pure function, tested without a GPU.
"""

from __future__ import annotations

import logging
import sys

import pytest

from endofed.simulations.flwr_run import log_progress, run_cli
from endofed.simulations.resources import (
    client_gpu_share,
    cuda_device_count,
    describe_client_device,
)
from endofed.simulations.simulation_runtime import simulation_federation_config

CHILD = r"""
import sys, time
print("\x1b[92mINFO \x1b[0m:      Starting Flower Simulation", flush=True)
for r in (1, 2):
    print(f"12/02/2026 04:42:06:INFO:EndoFed round {r}/2: 3 sites trained | global mAP@0.5 0.{r}",
          flush=True)
    time.sleep(0.2)
print("12/02/2026 04:42:07:DEBUG:ServerApp finished running.", flush=True)
print("done", file=sys.stderr)
"""


def test_streamed_round_lines_reach_the_log_as_they_come(tmp_path, caplog) -> None:
    seen: list[str] = []
    out, err = tmp_path / "run.stdout.log", tmp_path / "run.stderr.log"

    def on_line(line: str) -> None:
        seen.append(line)
        log_progress(line)

    with caplog.at_level(logging.INFO, logger="endofed.progress"):
        code = run_cli([sys.executable, "-c", CHILD], env={}, cwd=tmp_path,
                       stdout_path=out, stderr_path=err, timeout=60, on_line=on_line)
    assert code == 0
    progress = [r.getMessage() for r in caplog.records if r.name == "endofed.progress"]
    assert progress == ["EndoFed round 1/2: 3 sites trained | global mAP@0.5 0.1",
                        "EndoFed round 2/2: 3 sites trained | global mAP@0.5 0.2"]
    assert seen[0] == "INFO :      Starting Flower Simulation"  # colours stripped
    text = out.read_text()  # the log file keeps every line as the CLI printed it
    assert "\x1b[92mINFO" in text and text.count("EndoFed round") == 2
    assert err.read_text() == "done\n"


def test_without_on_line_the_output_goes_only_to_the_file(tmp_path, caplog) -> None:
    out, err = tmp_path / "o.log", tmp_path / "e.log"
    with caplog.at_level(logging.INFO, logger="endofed.progress"):
        assert run_cli([sys.executable, "-c", CHILD], env={}, cwd=tmp_path, stdout_path=out,
                       stderr_path=err, timeout=60) == 0
    assert not [r for r in caplog.records if r.name == "endofed.progress"]
    assert out.read_text().count("EndoFed round") == 2


@pytest.mark.parametrize(("nodes", "devices", "share"), [
    (3, 0, None),      # CPU machine: flwr's default, nothing changes
    (1, 1, 1.0),       # one client, one GPU: all of it
    (3, 1, 1 / 3),     # three clients share one GPU
    (3, 2, 0.5),       # ceil(3 / 2) = 2 clients per GPU
    (4, 2, 0.5),
    (2, 4, 1.0),       # more GPUs than clients: one whole GPU each, never more
])
def test_automatic_gpu_share(nodes, devices, share) -> None:
    got = client_gpu_share(nodes, devices)
    assert got == (None if share is None else pytest.approx(share))
    if got:  # every client fits on the devices at once
        assert int(1 / got + 1e-9) * devices >= nodes


def test_explicit_gpu_share_is_checked() -> None:
    assert client_gpu_share(3, 0, 0) == 0.0
    assert client_gpu_share(3, 2, 0.25) == 0.25
    assert client_gpu_share(3, 2, 2) == 2.0
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        client_gpu_share(3, 0, 0.5)
    with pytest.raises(ValueError, match="whole number"):
        client_gpu_share(3, 4, 1.5)
    with pytest.raises(ValueError, match="more than the 1 CUDA"):
        client_gpu_share(3, 1, 2)
    with pytest.raises(ValueError, match=">= 0"):
        client_gpu_share(3, 1, -1)


def test_share_becomes_flowers_client_resources_key() -> None:
    cfg = simulation_federation_config(num_supernodes=3, num_cpus_per_client=1,
                                       num_gpus_per_client=client_gpu_share(3, 1),
                                       backend_num_gpus=1)
    assert cfg["client-resources-num-gpus"] == pytest.approx(1 / 3)
    assert cfg["init-args-num-gpus"] == 1
    cpu = simulation_federation_config(num_supernodes=3, num_cpus_per_client=1,
                                       num_gpus_per_client=client_gpu_share(3, 0))
    assert "client-resources-num-gpus" not in cpu and "init-args-num-gpus" not in cpu


def test_device_in_words() -> None:
    assert describe_client_device(None, 0) == "on CPU (no CUDA device)"
    assert describe_client_device(0.0, 2) == "on CPU (gpus-per-client = 0)"
    assert describe_client_device(0.5, 2) == "on CUDA (0.5 of a GPU each, 2 device(s))"
    assert cuda_device_count() >= 0
