"""Benchmark of the site preprocessing (paper 2.1.2); prints one JSON object.

    python benchmarks/bench_preprocess.py --kvasir ../shared/data/kvasir-seg \
        --normal ../shared/data/normal-frames --limit 300

* throughput on ONE core (OpenCV/numpy/torch threads = 1): the full pipeline and the
  denoising stage alone, next to a naive baseline in the same run (cv2.medianBlur, then
  per channel pywt.wavedec2 / scipy median of the detail bands / waverec2 / wavedec2 /
  pywt.threshold band by band / waverec2, pywt's default ``symmetric`` mode);
* lesion preservation on Kvasir-SEG: per image share of mask pixels kept by the crop;
* overlay removal: near-black pixels, pixels outside the detected field of view and
  detected text area, before vs after;
* denoising quality on normal frames with Gaussian + salt-and-pepper noise: PSNR/SSIM
  of the paper pipeline, median only, wavelet only and cv2.fastNlMeansDenoisingColored.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from endofed.shared.data.sample import Sample, SampleMeta  # noqa: E402
from endofed.shared.preprocessing import (  # noqa: E402
    ClassicalDetector,
    PreprocessConfig,
    denoise,
    denoise_reference,
    preprocess_sample,
)


def _read_rgb(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _load_kvasir(root: Path, limit: int) -> list[Sample]:
    samples = []
    for p in sorted((root / "images").glob("*.jpg"))[:limit]:
        img = _read_rgb(p)
        m = cv2.imread(str(root / "masks" / p.name), cv2.IMREAD_GRAYSCALE)
        if img is None or m is None or m.shape != img.shape[:2]:
            continue
        mask = m > 127
        samples.append(
            Sample(img, mask, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                   SampleMeta(source=str(p)))
        )
    return samples


def _noisy(img: np.ndarray, rng: np.random.Generator, sigma: float, sp: float) -> np.ndarray:
    x = img.astype(np.float64) + rng.normal(0, sigma, img.shape)
    u = rng.random(img.shape[:2])
    x[u < sp / 2] = 0
    x[u > 1 - sp / 2] = 255
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {
        "min": float(a.min()),
        "p1": float(np.percentile(a, 1)),
        "median": float(np.median(a)),
        "mean": float(a.mean()),
    }


def bench_kvasir(samples: list[Sample], config: PreprocessConfig, repeats: int) -> dict:
    det = ClassicalDetector(config)
    no_denoise = PreprocessConfig(**{**config.to_dict(), "median": False, "wavelet": False})
    naive_cfg = PreprocessConfig(**{**config.to_dict(), "wavelet_mode": "symmetric"})

    # 1) detection + crop (+ inpaint), no denoising
    t = time.perf_counter()
    cropped, infos = [], []
    for s in samples:
        out, info = preprocess_sample(s, no_denoise, detector=det)
        cropped.append(out)
        infos.append(info)
    t_crop = time.perf_counter() - t

    def timed(fn) -> float:
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for c in cropped:
                fn(c.image)
            best = min(best, time.perf_counter() - t0)
        return best

    t_fast = timed(lambda im: denoise(im, config))
    t_naive = timed(lambda im: denoise_reference(im, naive_cfg))
    t_literal_same = timed(lambda im: denoise_reference(im, config))
    # full pipeline in one call, as used at the site
    t0 = time.perf_counter()
    for s in samples:
        preprocess_sample(s, config, detector=det)
    t_full = time.perf_counter() - t0
    n = len(samples)
    throughput = {
        "images": n,
        "mean_pixels": float(np.mean([s.height * s.width for s in samples])),
        "full_pipeline_img_s": n / t_full,
        "full_pipeline_naive_denoise_img_s": n / (t_crop + t_naive),
        "full_speedup_vs_naive": (t_crop + t_naive) / t_full,
        "detect_crop_inpaint_img_s": n / t_crop,
        "denoise_fast_img_s": n / t_fast,
        "denoise_naive_img_s": n / t_naive,
        "denoise_speedup_vs_naive": t_naive / t_fast,
        "denoise_literal_same_mode_img_s": n / t_literal_same,
        "denoise_speedup_vs_literal_same_mode": t_literal_same / t_fast,
    }

    # 2) lesion preservation
    kept = [i.mask_kept_share for i in infos]
    # 3) overlay removal: near-black share, outside-FOV share and text area, before/after
    nb_before, nb_after, out_before, out_after, tx_before, tx_after = [], [], [], [], [], []
    for s, c in zip(samples, cropped):
        nb_before.append(float((s.image.max(axis=2) < config.dark_threshold).mean()))
        nb_after.append(float((c.image.max(axis=2) < config.dark_threshold).mean()))
        d0, d1 = det(s.image), det(c.image)
        out_before.append(1.0 - float(d0.content.mean()))
        out_after.append(1.0 - float(d1.content.mean()))
        tx_before.append(float(d0.text.mean()))
        tx_after.append(float(d1.text.mean()))
    return {
        "throughput_one_core": throughput,
        "lesion_preservation": {
            **_pct(kept),
            "images_below_95pct": int(sum(k < 0.95 for k in kept)),
            "images_below_99_9pct": int(sum(k < 0.999 for k in kept)),
            "goal_median_ge_0_999": bool(np.median(kept) >= 0.999),
            "goal_none_below_0_95": bool(min(kept) >= 0.95),
        },
        "overlay_removal": {
            "near_black_share_before": float(np.mean(nb_before)),
            "near_black_share_after": float(np.mean(nb_after)),
            "outside_fov_share_before": float(np.mean(out_before)),
            "outside_fov_share_after": float(np.mean(out_after)),
            "detected_text_area_share_before": float(np.mean(tx_before)),
            "detected_text_area_share_after": float(np.mean(tx_after)),
            "kept_area_share_mean": float(
                np.mean([c.height * c.width / (s.height * s.width)
                         for s, c in zip(samples, cropped)])
            ),
        },
    }


def bench_denoise_quality(
    images: list[np.ndarray], config: PreprocessConfig, sigma: float, sp: float
) -> dict:
    rng = np.random.default_rng(0)
    methods = {
        "noisy_input": lambda x: x,
        "paper_median_sym4": lambda x: denoise(x, config),
        "median_only": lambda x: cv2.medianBlur(x, config.median_size),
        "wavelet_only": lambda x: denoise(
            x, PreprocessConfig(**{**config.to_dict(), "median": False})
        ),
        "fastNlMeansDenoisingColored": lambda x: cv2.cvtColor(
            cv2.fastNlMeansDenoisingColored(
                cv2.cvtColor(x, cv2.COLOR_RGB2BGR), None, 10, 10, 7, 21
            ),
            cv2.COLOR_BGR2RGB,
        ),
    }
    scores: dict[str, dict[str, list[float]]] = {k: {"psnr": [], "ssim": [], "s": []}
                                                  for k in methods}
    for img in images:
        noisy = _noisy(img, rng, sigma, sp)
        for name, fn in methods.items():
            t = time.perf_counter()
            out = fn(noisy)
            scores[name]["s"].append(time.perf_counter() - t)
            scores[name]["psnr"].append(peak_signal_noise_ratio(img, out, data_range=255))
            scores[name]["ssim"].append(
                structural_similarity(img, out, channel_axis=2, data_range=255)
            )
    return {
        "noise": {"gaussian_sigma": sigma, "salt_pepper_fraction": sp, "images": len(images)},
        **{
            k: {"psnr": float(np.mean(v["psnr"])), "ssim": float(np.mean(v["ssim"])),
                "ms_per_image": 1e3 * float(np.mean(v["s"]))}
            for k, v in scores.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvasir", type=Path, required=True, help="Kvasir-SEG folder")
    ap.add_argument("--normal", type=Path, required=True, help="normal-frames folder")
    ap.add_argument("--limit", type=int, default=200, help="images per data set")
    ap.add_argument("--repeats", type=int, default=1, help="denoise timing repeats (best)")
    ap.add_argument("--sigma", type=float, default=15.0, help="Gaussian noise sigma (0-255)")
    ap.add_argument("--salt-pepper", type=float, default=0.02, help="impulse noise fraction")
    args = ap.parse_args(argv)

    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    config = PreprocessConfig()
    samples = _load_kvasir(args.kvasir, args.limit)
    if not samples:
        raise SystemExit(f"{args.kvasir}: no images/*.jpg with masks found")
    normal_paths = sorted((args.normal / "images").glob("*.jpg"))[: args.limit]
    normal = [im for im in (_read_rgb(p) for p in normal_paths) if im is not None]
    result = {
        "command": " ".join(["python", "benchmarks/bench_preprocess.py", *(argv or sys.argv[1:])]),
        "config": config.to_dict(),
        "kvasir": bench_kvasir(samples, config, args.repeats),
        "denoise_quality_normal_frames": bench_denoise_quality(
            normal, config, args.sigma, args.salt_pepper
        ),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
