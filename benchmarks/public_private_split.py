"""Cut data folders into a *public* and a *private* part for DP benchmarks (prints JSON).

    python benchmarks/public_private_split.py --out runs/pp --public-fraction 0.25 \\
        ../shared/data/kvasir-seg ../shared/data/normal-frames

Writes ``OUT/public/<name>`` and ``OUT/private/<name>`` for every input folder: copies
of its images (and masks), with its ``manifest.csv`` and ``*bboxes*.json`` cut to the
rows of that side, so each part is a site folder of the same layout. The cut is the
grouped, label-stratified split that EndoFed uses for train/val
(:func:`endofed.shared.data.split.split_records`), so images of one patient or lesion
stay on one side where the data says which belong together.

Why: De et al. 2022 and Tramer and Boneh 2021 warm-start DP training on *public* data.
Kvasir-SEG is public, so a consortium can warm up the new layers on it without privacy
and spend its budget only on its own hospitals' images. In a benchmark the public part
must not overlap the private hospitals, or the DP figures would be flattered. The copies
are derivatives of the data: keep ``OUT`` outside the repository (``runs/`` is ignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from endofed.shared.data.site import scan_site
from endofed.shared.data.split import split_records


def _copy_side(src: Path, dst: Path, image_paths: set[Path], mask_paths: set[Path]) -> None:
    for path in sorted(image_paths | mask_paths):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    stems = {p.stem for p in image_paths}
    for boxes in src.glob("*bboxes*.json"):
        table = json.loads(boxes.read_text())
        (dst / boxes.name).write_text(
            json.dumps({k: v for k, v in table.items() if k in stems})
        )
    manifest = src / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = [r for r in reader if (src / r["image"]).resolve() in image_paths]
            fields = reader.fieldnames or []
        with (dst / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="site folders to cut")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--public-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 0 < args.public_fraction < 1:
        ap.error(f"--public-fraction must be in (0, 1), got {args.public_fraction}")
    if (args.out / "public").exists() or (args.out / "private").exists():
        ap.error(f"{args.out} already holds a split; choose another --out")

    summary: dict[str, dict[str, int]] = {}
    for folder in args.folders:
        src = folder.resolve()
        records = scan_site(src).records
        sides = split_records(
            records, (1 - args.public_fraction, args.public_fraction), args.seed,
            honour_manifest=False,
        )
        for side, name in (("train", "private"), ("val", "public")):
            chosen = sides[side]
            images = {r.image_path.resolve() for r in chosen}
            masks = {r.mask_path.resolve() for r in chosen if r.mask_path is not None}
            _copy_side(src, args.out / name / src.name, images, masks)
            summary.setdefault(src.name, {})[name] = len(chosen)
    print(json.dumps({"out": str(args.out), "seed": args.seed,
                      "public_fraction": args.public_fraction, "images": summary},
                     indent=2))


if __name__ == "__main__":
    main()
