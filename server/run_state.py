"""What the coordinating center persists every round, and how a run resumes.

Layout of ``runs/<run-name>/``::

    checkpoints/round_003.pt   global trainable arrays + strategy state + history
    checkpoints/last.pt        copy of the newest round checkpoint (atomic replace)
    metrics.csv                one row per round and site ('global' = merged)
    rounds/round_003.json      full merged metrics of that round (ROC, confusion...)
    final_model.pt             full model checkpoint after the last round, with that
                               round's image-level operating point (extra)
    model_best.pt              the round with the best federated validation map50 so
                               far (ties: the earlier round), with its operating point
    report.md + *.png          the run report

A round checkpoint holds tensors, strings, numbers, lists and dicts only (numpy
arrays become tensors), so it loads with ``torch.load(weights_only=True)``: reading
a checkpoint never runs code from it. Every file is written through a unique temporary
file and renamed (:mod:`endofed.shared.util.atomic`), so a server killed mid-write
leaves the previous version.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from endofed.shared.model.weights import UnreadableFileError, load_torch_file
from endofed.shared.util.atomic import atomic_save, atomic_write_json

log = logging.getLogger(__name__)

LAST = "last.pt"
FINAL_MODEL = "final_model.pt"
BEST_MODEL = "model_best.pt"


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
        "round": int(state.round),
        "arrays": {k: _tensor(v) for k, v in state.arrays.items()},
        "history": to_checkpoint(state.history),
        "strategy_state": to_checkpoint(state.strategy_state),
        "run_config": to_checkpoint(state.run_config),
        "events": to_checkpoint(state.events),
    }
    path = ckdir / f"round_{state.round:03d}.pt"
    atomic_save(path, lambda tmp: torch.save(payload, tmp))
    atomic_save(ckdir / LAST, lambda tmp: shutil.copyfile(path, tmp))
    write_metrics_csv(run_dir, state.history)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A round checkpoint's payload with tensors back as numpy arrays (no code runs).

    Checkpoints written before tensors-only (numpy arrays pickled inside) load with
    numpy's array reconstruction allowed, still under ``weights_only=True``. A file that
    is damaged, not a round checkpoint or holds anything else (a pickle that would run
    code) raises :class:`~endofed.shared.model.weights.UnreadableFileError` naming it.
    """
    what = "server run state"
    try:
        payload = load_torch_file(path, what=what)
    except UnreadableFileError:
        payload = load_torch_file(path, what=what, safe_globals=_LEGACY_NUMPY_GLOBALS)
    if not isinstance(payload, dict):
        raise UnreadableFileError(f"{what} {path}: not a checkpoint (a {type(payload).__name__})")
    return from_checkpoint(payload)


def load_run_state(run_dir: Path) -> RunState | None:
    """The newest round checkpoint of ``run_dir``, or ``None`` for a fresh run."""
    path = checkpoint_dir(run_dir) / LAST
    if not path.exists():
        return None
    payload = load_checkpoint(path)
    if "round" not in payload or "arrays" not in payload:
        raise UnreadableFileError(
            f"server run state {path}: not a round checkpoint (no round / arrays); restore "
            "it from checkpoints/round_NNN.pt or start the run under a new run-name"
        )
    return RunState(
        round=int(payload["round"]),
        arrays=dict(payload["arrays"]),
        history=list(payload.get("history", [])),
        strategy_state=dict(payload.get("strategy_state", {})),
        run_config=dict(payload.get("run_config", {})),
        events=list(payload.get("events", [])),
    )


def _tensor(value: np.ndarray) -> torch.Tensor:
    # a copy: Flower's arrays may be read-only views, torch wants writable memory
    return torch.from_numpy(np.array(value, copy=True, order="C"))


def to_checkpoint(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers.

    Only dicts (string keys), lists, strings, numbers, booleans and ``None`` remain:
    what ``torch.load(weights_only=True)`` accepts.
    """
    if isinstance(obj, np.ndarray):
        return _tensor(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor | str | bool | int | float) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_checkpoint(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_checkpoint(v) for v in obj]
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def from_checkpoint(obj: Any) -> Any:
    """Inverse of :func:`to_checkpoint`: tensors back to numpy arrays."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: from_checkpoint(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_checkpoint(v) for v in obj]
    return obj


_LEGACY_NUMPY_GLOBALS = [
    np._core.multiarray._reconstruct, np._core.multiarray.scalar, np.ndarray, np.dtype,
    *(type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16,
                                  np.int32, np.int64, np.uint8, np.bool_)),
]


def write_metrics_csv(run_dir: Path, history: list[dict[str, Any]]) -> Path:
    """``metrics.csv``: columns ``round``, ``site`` then one per metric key."""
    path = run_dir / "metrics.csv"
    df = pd.DataFrame(history)
    if not df.empty:
        lead = ["round", "site"]
        df = df[lead + [c for c in df.columns if c not in lead]]
    return atomic_save(path, lambda tmp: df.to_csv(tmp, index=False))


def write_round_metrics(run_dir: Path, server_round: int, metrics: dict[str, Any]) -> Path:
    """Full merged metrics of one round as JSON (arrays become lists)."""
    out = run_dir / "rounds" / f"round_{server_round:03d}.json"
    return atomic_write_json(out, metrics, indent=1, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
