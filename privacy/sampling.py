"""Poisson sampling for DP-SGD, and randomness the coordinating center cannot reproduce.

The DP analysis of DP-SGD assumes every step draws each image independently with
probability ``q``. :func:`make_poisson_loader` is the one loader that does this in
EndoFed: Opacus' ``UniformWithReplacementSampler`` over a dataset whose items collate
to :class:`~endofed.shared.data.collate.Batch`, so an empty draw is a correctly shaped
empty batch (Opacus' own ``DPDataLoader`` returns a plain list for it).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader

from endofed.shared.data.collate import Batch
from endofed.shared.data.dataset import DetectionDataset, worker_init


def poisson_steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Logical steps per epoch ``k`` (so the sampling rate is ``1 / k``)."""
    if num_samples < 1:
        raise ValueError("DP training needs at least one training image")
    return max(1, round(num_samples / batch_size))


def poisson_sample_rate(steps_per_epoch: int) -> float:
    """``1 / k``, nudged down by one ulp if needed so ``int(1 / q) == k`` exactly.

    Opacus derives the epoch length as ``int(1 / q)`` and accounts with
    ``1 / len(loader)``; both then agree with ``k``.
    """
    q = 1.0 / steps_per_epoch
    while int(1.0 / q) < steps_per_epoch:
        q = math.nextafter(q, 0.0)
    return q


def make_poisson_loader(
    dataset: DetectionDataset | Sequence[Any],
    *,
    sample_rate: float,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    collate_fn: Callable[[Sequence[Any]], Batch] | None = None,
) -> DataLoader:
    """A Poisson-sampled loader of :class:`Batch`; empty draws give empty batches.

    ``steps`` defaults to ``int(1 / sample_rate)``; ``len(loader) == steps``, so Opacus'
    ``make_private(..., poisson_sampling=False)`` derives the same rate from it.
    ``collate_fn`` defaults to the dataset's own (``DetectionDataset.collate_fn()``).
    """
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    sampler = UniformWithReplacementSampler(
        num_samples=len(dataset), sample_rate=sample_rate, generator=generator, steps=steps
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn if collate_fn is not None else dataset.collate_fn(),
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=worker_init if num_workers > 0 else None,
    )


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from the operating system's entropy pool.

    DP noise and Poisson sampling must never be derived from the run config: the
    coordinating center sets ``seed``, and noise it can regenerate is noise it can
    subtract from the update. (Opacus' ``secure_mode``, ``dp-secure-rng``, goes further
    and draws every sample from a CSPRNG.)
    """
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(secrets.randbits(63))
    return gen


def expected_batch_size(num_samples: int, sample_rate: float) -> int:
    """What Opacus' DPOptimizer divides the noisy gradient sum by (``int(N q)``)."""
    return int(num_samples * sample_rate)


__all__ = [
    "expected_batch_size",
    "make_poisson_loader",
    "poisson_sample_rate",
    "poisson_steps_per_epoch",
    "secret_generator",
]
