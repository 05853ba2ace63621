"""Device and thread selection: explicit, never hard-coded."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {spec!r} was requested but CUDA is not available here; "
            "use device='auto' or 'cpu'"
        )
    return device


def configure_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads (0 = one per available core); returns the count."""
    if threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        log.debug("torch threads set to %d", threads)
    return threads
