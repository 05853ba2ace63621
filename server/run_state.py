"""What the coordinating center persists every round, and how a run resumes.

Layout of ``runs/<run-name>/``::

    checkpoints/round_003.pt   global trainable arrays + strategy state + history
    checkpoints/last.pt        copy of the newest round checkpoint (atomic replace)
    metrics.csv                one row per round and site ('global' = merged)
    rounds/round_003.json      full merged metrics of that round (ROC, confusion...)
    final_model.pt             full model checkpoint after the last round
    report.md + *.png          the run report
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

LAST = "last.pt"


@dataclass
class RunState:
    """Everything needed to continue a run after ``round`` finished rounds."""

    round: int
    arrays: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    strategy_state: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_run_state(run_dir: Path, state: RunState) -> Path:
    """Write the round checkpoint and atomically point ``last.pt`` at it."""
    ckdir = checkpoint_dir(run_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    payload = {
        "round": state.round,
        "arrays": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.arrays.items()},
        "history": state.history,
        "strategy_state": state.strategy_state,
        "run_config": state.run_config,
        "events": state.events,
    }
    path = ckdir / f"round_{state.round:03d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    tmp_last = ckdir / (LAST + ".tmp")
    shutil.copyfile(path, tmp_last)
    os.replace(tmp_last, ckdir / LAST)
    write_metrics_csv(run_dir, state.history)
    return path


def load_run_state(run_dir: Path) -> RunState | None:
    """The newest round checkpoint of ``run_dir``, or ``None`` for a fresh run."""
    path = checkpoint_dir(run_dir) / LAST
    if not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=False)
    return RunState(
        round=int(payload["round"]),
        arrays={k: v.numpy() for k, v in payload["arrays"].items()},
        history=list(payload.get("history", [])),
        strategy_state=dict(payload.get("strategy_state", {})),
        run_config=dict(payload.get("run_config", {})),
        events=list(payload.get("events", [])),
    )


def write_metrics_csv(run_dir: Path, history: list[dict[str, Any]]) -> Path:
    """``metrics.csv``: columns ``round``, ``site`` then one per metric key."""
    path = run_dir / "metrics.csv"
    df = pd.DataFrame(history)
    if not df.empty:
        lead = ["round", "site"]
        df = df[lead + [c for c in df.columns if c not in lead]]
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def write_round_metrics(run_dir: Path, server_round: int, metrics: dict[str, Any]) -> Path:
    """Full merged metrics of one round as JSON (arrays become lists)."""
    out = run_dir / "rounds" / f"round_{server_round:03d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, default=_json_default, indent=1))
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
