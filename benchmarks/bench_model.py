"""Throughput/latency of the improved SSD presets vs torchvision's SSD detectors.

Prints one JSON object: per model, training images/s (forward + loss + backward +
Adam step, batch ``--batch``) and inference ms/image (batch 1, ``no_grad``), in both
fine-tuning modes (``global``: everything trains; ``local``: the backbone body is
frozen), with ratios to torchvision's ``ssdlite320_mobilenet_v3_large`` and
``ssd300_vgg16`` (random weights) measured in the same run, and (if onnxruntime is
present) ONNX vs eager latency for the first preset.

    python benchmarks/bench_model.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from endofed.shared.data.collate import Batch
from endofed.shared.model import build_model, export_onnx


def _batch(n: int, size: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    boxes = torch.zeros(n, 4, 4)
    labels = torch.zeros(n, 4, dtype=torch.int64)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        x0, y0 = (torch.rand(2, generator=g) * size * 0.5).tolist()
        w, h = (size * (0.15 + 0.3 * torch.rand(2, generator=g))).tolist()
        boxes[i, 0] = torch.tensor([x0, y0, x0 + w, y0 + h])
        labels[i, 0] = 1 + i % 2
        masks[i, :, int(y0) : int(y0 + h), int(x0) : int(x0 + w)] = 1
    return Batch(
        torch.randn(n, 3, size, size, generator=g), masks, boxes, labels,
        torch.ones(n, dtype=torch.int64), labels[:, 0].clone(), torch.full((n, 4), -1),
    ).to(device)


def _timeit(fn: Callable[[], None], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def bench_ours(
    preset: str, batch: int, iters: int, device: torch.device, finetune: str = "global"
) -> dict:
    model = build_model(preset=preset, num_classes=2, finetune=finetune).to(device)
    size = model.config.image_size
    data = _batch(batch, size, device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        loss = model.compute_loss(model(data.images), data).total.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step = _timeit(train_step, 1, iters)
    model.eval()
    one = data.images[:1]

    def infer() -> None:
        with torch.no_grad():
            model.postprocess(model(one))

    lat = _timeit(infer, 2, max(3, iters * 2))
    return {
        "image_size": size,
        "finetune": finetune,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "trainable_params_m": round(
            sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 3),
        "train_images_per_s": round(batch / step, 2),
        "infer_ms_per_image": round(lat * 1e3, 2),
        "_model": model,
    }


TORCHVISION_PEERS = {
    "torchvision_ssdlite320_mobilenet_v3_large": (
        torchvision.models.detection.ssdlite320_mobilenet_v3_large, 320),
    "torchvision_ssd300_vgg16": (torchvision.models.detection.ssd300_vgg16, 300),
}


def bench_torchvision(name: str, batch: int, iters: int, device: torch.device) -> dict:
    builder, size = TORCHVISION_PEERS[name]
    model = builder(weights=None, weights_backbone=None, num_classes=3).to(device)
    data = _batch(batch, size, device)
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in data.targets()]
    images = list(data.images)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step = _timeit(train_step, 1, iters)
    model.eval()

    def infer() -> None:
        with torch.no_grad():
            model(images[:1])

    lat = _timeit(infer, 2, max(3, iters * 2))
    return {
        "image_size": size,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "train_images_per_s": round(batch / step, 2),
        "infer_ms_per_image": round(lat * 1e3, 2),
    }


def bench_onnx(model: torch.nn.Module, iters: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    size = model.config.image_size
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model.cpu(), Path(tmp) / "m.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
        onnx_s = _timeit(lambda: sess.run(None, {"images": x}), 3, iters * 4)
    xt = torch.from_numpy(x)

    def eager() -> None:
        with torch.no_grad():
            model(xt)

    eager_s = _timeit(eager, 3, iters * 4)
    return {
        "onnx_ms_per_image": round(onnx_s * 1e3, 2),
        "eager_forward_ms_per_image": round(eager_s * 1e3, 2),
        "onnx_speedup": round(eager_s / onnx_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="lite0,cpu")
    ap.add_argument("--peers", default=",".join(TORCHVISION_PEERS),
                    help="torchvision detectors measured in the same run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    report: dict = {"threads": args.threads, "batch": args.batch, "device": str(device),
                    "torch": torch.__version__, "models": {}}
    peers = [p for p in args.peers.split(",") if p]
    for name in peers:
        report["models"][name] = bench_torchvision(name, args.batch, args.iters, device)
    for i, preset in enumerate(p for p in args.presets.split(",") if p):
        for finetune in ("global", "local"):
            res = bench_ours(preset, args.batch, args.iters, device, finetune)
            model = res.pop("_model")
            for name in peers:
                ref = report["models"][name]
                short = name.removeprefix("torchvision_")
                res[f"train_speed_vs_{short}"] = round(
                    res["train_images_per_s"] / ref["train_images_per_s"], 3)
                res[f"infer_latency_vs_{short}"] = round(
                    res["infer_ms_per_image"] / ref["infer_ms_per_image"], 3)
            if i == 0 and finetune == "global" and not args.no_onnx:
                res["onnx"] = bench_onnx(model, args.iters)
            report["models"][f"{preset}_{finetune}"] = res
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
