"""Random-number state of a training process, as plain data a resume state can hold.

A resumed run must draw exactly what the uninterrupted run would have drawn: the
shuffle order (the loader's ``torch.Generator``), augmentation (torch's global
generator; numpy and Python ``random`` for anything that uses them) and dropout. The
state is stored as tensors, ints, floats and lists only, so the resume state loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The process's generators (and ``generator``, e.g. a DataLoader's) as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": [int(v) for v in internal],
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "loader": generator.get_state() if generator is not None else None,
    }
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` saved (``generator`` from its ``loader`` entry)."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    n = state["numpy"]
    np.random.set_state((
        n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
        float(n["cached_gaussian"]),
    ))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"]), p["gauss_next"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in cuda])
    if generator is not None and state.get("loader") is not None:
        generator.set_state(state["loader"].to(torch.uint8))


def derived_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from ``seed`` and ``keys`` (e.g. site name, round), stable across machines."""
    blob = repr((int(seed), *keys)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def seed_process(seed: int) -> None:
    """Seed torch's global generator (CPU and CUDA), numpy's and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
