"""DP-SGD overhead: step time and peak memory, private vs non-private, per preset.

Each (preset, mode) runs in its own subprocess so peak RSS (``ru_maxrss``) or peak
CUDA memory is attributable to it. Modes:

* ``plain``: the shared :class:`~shared.engine.Trainer` with a normal optimiser;
* ``dp``: the same trainer with an Opacus ``GradSampleModule`` + ``DPOptimizer``;
* ``dp-bmm``: as ``dp`` with ``BatchMemoryManager`` capping the physical batch.

All modes iterate the same Poisson loader (same seed, so the same batch sizes) over
an in-memory synthetic data set of ``steps x batch-size`` images; time is per
logical step, measured after one warm-up epoch. Prints one JSON document.

Examples::

    python benchmarks/bench_dp.py --presets cpu,paper --image-size cpu=128,paper=300 \
        --batch-size 8 --steps 3 --max-physical-batch-size 2
    python benchmarks/bench_dp.py --presets lite0 --image-size 224 --finetune heads \
        --batch-size 16 --steps 4 --max-physical-batch-size 16 --threads 2
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _synthetic_items(n: int, image_size: int, max_boxes: int, seed: int) -> list[tuple]:
    import torch

    g = torch.Generator().manual_seed(seed)
    items = []
    s = image_size
    for _ in range(n):
        x0, y0 = torch.randint(0, s // 2, (2,), generator=g).tolist()
        w, h = torch.randint(s // 8, s // 2, (2,), generator=g).tolist()
        boxes = torch.zeros((max_boxes, 4))
        boxes[0] = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float32)
        labels = torch.zeros((max_boxes,), dtype=torch.int64)
        labels[0] = 1
        mask = torch.zeros((1, s, s))
        mask[:, y0:y0 + h, x0:x0 + w] = 1.0
        items.append((
            torch.randn((3, s, s), generator=g), mask, boxes, labels,
            torch.tensor(1), torch.tensor(1), torch.full((max_boxes,), -1),
        ))
    return items


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def worker(args: argparse.Namespace) -> dict:
    """Run one (preset, mode) measurement in this process."""
    sys.path.insert(0, str(REPO))
    import torch

    from endofed.privacy.sampling import (
        make_poisson_loader,
        poisson_sample_rate,
        poisson_steps_per_epoch,
    )
    from endofed.shared.config import TrainConfig
    from endofed.shared.data.collate import collate_detection
    from endofed.shared.engine import Trainer, build_optimizer, resolve_device
    from endofed.shared.model import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    max_boxes = 4
    args.image_size = int(args.image_size)
    model = build_model(preset=args.preset, num_classes=1, image_size=args.image_size)
    if args.finetune != "global":
        model.set_finetune(args.finetune)  # frozen parts carry no grad-sample hooks
    model = model.to(device)
    items = _synthetic_items(args.steps * args.batch_size, args.image_size, max_boxes, seed=1)
    rate = poisson_sample_rate(poisson_steps_per_epoch(len(items), args.batch_size))
    loader = make_poisson_loader(
        items, sample_rate=rate, generator=torch.Generator().manual_seed(2),
        collate_fn=functools.partial(collate_detection, image_size=args.image_size,
                                     max_boxes=max_boxes),
    )
    cfg = TrainConfig(amp=False, grad_clip=0.0, lr_schedule="constant")
    optimizer = build_optimizer(model, cfg)
    on_empty = None
    train_model: torch.nn.Module = model
    if args.mode.startswith("dp"):
        from opacus import PrivacyEngine
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        engine = PrivacyEngine(accountant="rdp")
        train_model, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=False,
        )
        train_model.forbid_grad_accumulation()
        dp_opt = optimizer

        def on_empty() -> None:
            dp_opt.zero_grad(set_to_none=True)
            for p in dp_opt.params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            dp_opt.step()

        if args.mode == "dp-bmm":
            with BatchMemoryManager(data_loader=loader, optimizer=dp_opt,
                                    max_physical_batch_size=args.max_physical_batch_size) as bmm:
                loader = bmm
    trainer = Trainer(train_model, cfg, device=device, optimizer=optimizer,
                      on_empty_batch=on_empty, progress=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = _peak_mb(device)
    trainer.train_epoch(loader)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    images = 0
    for _ in range(args.epochs):
        images += trainer.train_epoch(loader).images
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    logical_steps = args.epochs * args.steps
    return {
        "preset": args.preset,
        "mode": args.mode,
        "image_size": args.image_size,
        "finetune": args.finetune,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seconds_per_step": seconds / logical_steps,
        "images_per_second": images / seconds if seconds > 0 else 0.0,
        "peak_memory_mb": _peak_mb(device),
        "baseline_memory_mb": baseline,
        "training_memory_mb": _peak_mb(device) - baseline,
    }


def _image_sizes(spec: str) -> dict[str, int]:
    """``"128"`` -> {"": 128}; ``"cpu=128,paper=300"`` -> per preset."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in str(spec).split(",") if p.strip()):
        name, _, value = part.rpartition("=")
        out[name] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="cpu,paper")
    parser.add_argument("--modes", default="plain,dp,dp-bmm")
    parser.add_argument("--image-size", default="cpu=128,paper=300",
                        help="one size for all presets, or preset=size pairs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="logical steps per epoch")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs after warm-up")
    parser.add_argument("--max-physical-batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--finetune", default="global", choices=("global", "local", "heads"),
                        help="what trains: everything, all but the backbone body, or the "
                             "heads and mask decoder only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    sizes = _image_sizes(args.image_size)
    common = [f"--batch-size={args.batch_size}",
              f"--steps={args.steps}", f"--epochs={args.epochs}", f"--threads={args.threads}",
              f"--max-physical-batch-size={args.max_physical_batch_size}",
              f"--device={args.device}", f"--finetune={args.finetune}"]
    runs = []
    for preset in [p for p in args.presets.split(",") if p]:
        for mode in [m for m in args.modes.split(",") if m]:
            size = sizes.get(preset, sizes.get("", 128))
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", f"--preset={preset}", f"--mode={mode}",
                 f"--image-size={size}", *common], capture_output=True, text=True, cwd=REPO,
            )
            if proc.returncode != 0:
                runs.append({"preset": preset, "mode": mode, "image_size": size,
                             "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = {}
    for preset in {r["preset"] for r in runs}:
        by = {r["mode"]: r for r in runs if r["preset"] == preset and "error" not in r}
        if "plain" in by:
            base = by["plain"]["seconds_per_step"]
            summary[preset] = {
                f"{m}_over_plain_time": by[m]["seconds_per_step"] / base
                for m in by if m != "plain"
            }
            summary[preset]["goal_time_ratio"] = 1.5
    print(json.dumps({
        "benchmark": "dp_overhead",
        "config": {k: v for k, v in vars(args).items()
                   if k not in ("worker", "preset", "mode")},
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "runs": runs,
        "summary": summary,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
