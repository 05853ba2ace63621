"""Run a model over a loader and fill the additive metric accumulator."""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from endofed.shared.data.collate import Batch
from endofed.shared.model import unwrap


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    accumulator,
    *,
    device: torch.device,
    score_thresh: float = 0.05,
    progress: bool = False,
    desc: str = "evaluate",
):
    """Update ``accumulator`` (a ``shared.metrics.MetricAccumulator``) in place and return it.

    Latency is the wall time of forward + post-processing per image, measured per batch.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            n = len(batch)
            if n == 0:
                continue
            batch = batch.to(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            outputs = net(batch.images)
            post = net.postprocess(outputs, score_thresh=score_thresh)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed_ms = (time.perf_counter() - t0) * 1000.0
            accumulator.update(
                detections=[{k: v.cpu() for k, v in d.items()} for d in post.detections],
                targets=[{k: v.cpu() for k, v in t.items()} for t in batch.targets()],
                image_probs=post.image_probs.cpu(),
                image_labels=batch.image_labels.cpu(),
                mask_prob=post.mask_prob.cpu(),
                mask_true=batch.masks.cpu(),
                latency_ms=elapsed_ms,
            )
    finally:
        net.train(was_training)
    return accumulator
