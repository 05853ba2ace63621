"""``endofed train`` resumes exactly: same weights as an uninterrupted run, history kept,
another setup refused with one line naming the checkpoint and ``--no-resume``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from endofed.cli import main
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.synthetic import write_sites
from endofed.shared.engine.trainer import ResumeError
from endofed.simulations.central import train_central

BASE = {
    "preset": "tiny", "image-size": 64, "batch-size": 4, "threads": 1, "amp": False,
    "val-fraction": 0.34, "seed": 3, "augment": True,
}
# A schedule that does not depend on the number of epochs, so the first two epochs of a
# 2-epoch run are those of a 3-epoch run (what a run killed after epoch 2 has done).
CONSTANT_LR = {"lr-schedule": "constant", "warmup-steps": 0}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_sites(root, sites=1, images_per_site=12, seed=0, size=64)
    return root / "site_1"


def _cfg(**kw) -> EndoFedConfig:
    return EndoFedConfig.from_mapping({**BASE, **CONSTANT_LR, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def _history(out: Path) -> list[dict]:
    return json.loads((out / "train_history.json").read_text())


def test_resumed_run_ends_with_the_uninterrupted_weights(site, tmp_path):
    full = tmp_path / "full"
    train_central(_cfg(**{"local-epochs": 3}), [site], full, progress=False)

    part = tmp_path / "part"
    train_central(_cfg(**{"local-epochs": 2}), [site], part, progress=False)  # "killed"
    # The first two epochs are the uninterrupted run's (a sanity check of the setup).
    assert [r["loss"] for r in _history(part)] == [r["loss"] for r in _history(full)[:2]]
    train_central(_cfg(**{"local-epochs": 3}), [site], part, progress=False)  # resumed

    _assert_same_weights(full / "checkpoints" / "last.pt", part / "checkpoints" / "last.pt")
    history = _history(part)
    assert [r["epoch"] for r in history] == [1, 2, 3]  # the earlier epochs are kept
    for mine, theirs in zip(history, _history(full), strict=True):
        assert mine["loss"] == theirs["loss"]
        assert mine["val_map50"] == theirs["val_map50"]


def test_resume_restores_the_shuffle_order(site, tmp_path):
    """Without the loader's generator state the resumed epoch would replay epoch 1's order."""
    out = tmp_path / "run"
    train_central(_cfg(**{"local-epochs": 1}), [site], out, progress=False)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    rng = state["rng"]
    assert isinstance(rng["loader"], torch.Tensor) and isinstance(rng["torch"], torch.Tensor)
    assert isinstance(rng["python"]["internal"], list) and len(rng["python"]["internal"]) == 625
    fresh = torch.Generator().manual_seed(BASE["seed"])
    assert not torch.equal(rng["loader"], fresh.get_state())  # the epoch advanced it


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"image-size": 96}, "image-size 64 (checkpoint) vs 96 (now)"),
        ({"preset": "cpu", "image-size": 64}, "preset 'tiny' (checkpoint) vs 'cpu' (now)"),
        ({"finetune": "local"}, "finetune 'global' (checkpoint) vs 'local' (now)"),
        ({"dp-epsilon": 8}, "dp-sgd 'off' (checkpoint)"),
    ],
)
def test_resume_with_another_setup_is_refused(site, tmp_path, change, named):
    out = tmp_path / "run"
    train_central(_cfg(**{"local-epochs": 1}), [site], out, progress=False)
    before = (out / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ResumeError) as info:
        train_central(_cfg(**{"local-epochs": 2, **change}), [site], out, progress=False)
    msg = str(info.value)
    assert named in msg and str(out / "checkpoints" / "last.pt") in msg
    assert "--no-resume" in msg and "\n" not in msg
    assert (out / "checkpoints" / "last.pt").read_bytes() == before  # nothing trained
    assert not (out / "privacy-ledger.json").exists()  # nothing charged


def test_cli_mismatch_and_truncated_checkpoint_are_one_line(site, tmp_path, capsys):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"

    def train(size: int, epochs: int, *extra: str) -> int:
        return main(["train", str(site), "--out", str(out), "--preset", "tiny",
                     "--image-size", str(size), "--epochs", str(epochs), "--threads", "1",
                     "--batch-size", "4", *extra])

    assert train(64, 1) == 0
    capsys.readouterr()
    assert train(96, 1) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(last) in err and "--no-resume" in err
    assert "image-size 64 (checkpoint) vs 96 (now)" in err

    last.write_bytes(last.read_bytes()[:100])  # a checkpoint cut short
    assert train(64, 2) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(last) in err and "--no-resume" in err
    assert "Traceback" not in err

    # --no-resume starts over despite the damaged checkpoint and the other size.
    assert train(96, 1, "--no-resume") == 0
    state = torch.load(last, weights_only=True)
    assert state["identity"]["image-size"] == 96 and state["epoch"] == 1


@pytest.mark.slow
def test_killed_process_resumes_to_the_uninterrupted_weights(site, tmp_path):
    """A real SIGKILL during epoch 3 (default cosine schedule), then the same command."""
    cmd = [sys.executable, "-m", "endofed.cli", "train", str(site), "--preset", "tiny",
           "--image-size", "64", "--epochs", "3", "--threads", "1", "--batch-size", "2",
           "-c", "seed=3", "-c", "val-fraction=0.34"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([*cmd, "--out", str(full)], check=True, env=env, capture_output=True)

    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    epochs = killed / "checkpoints" / "epochs.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(json.loads(epochs.read_text())) >= 2:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    state = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    if state["epoch"] != 2:
        pytest.skip(f"the kill came after epoch {state['epoch']}, not during epoch 3")
    subprocess.run([*cmd, "--out", str(killed)], check=True, env=env, capture_output=True)
    _assert_same_weights(full / "checkpoints" / "last.pt", killed / "checkpoints" / "last.pt")
    assert [r["epoch"] for r in _history(killed)] == [1, 2, 3]
