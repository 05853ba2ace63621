"""``endofed site check|join|ledger``: a hospital's data folder, joining, privacy budget."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

LAYOUT_CHOICES = ("auto", "kvasir", "coco", "manifest", "dicom", "video")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``site`` (with its ``check`` action) to the ``endofed`` parser."""
    site = subparsers.add_parser(
        "site", help="inspect a site's data folder, join a federation",
        description="A hospital's side of EndoFed: check its data folder, join a "
        "federation, read its privacy budget. 'endofed site ACTION --help' explains each.",
        epilog="example:\n  endofed site check data/site_a\n  endofed site ledger "
               "--site-name hosp-a",
    )
    actions = site.add_subparsers(dest="site_command", metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="scan and validate a site folder",
        description="Scan a site folder (Kvasir-SEG style, COCO JSON, manifest.csv or DICOM "
        "+ masks/), "
        "validate every image, mask and box, and summarise what is usable. Paths stay "
        "inside DIR unless DIR/endofed-site.toml lists allowed-roots. Exits non-zero "
        "only when nothing is usable.",
        epilog="example:\n  endofed site check data/site_a --layout kvasir",
    )
    check.add_argument("dir", metavar="DIR", help="the site's data folder")
    check.add_argument("--json", action="store_true", help="print JSON instead of tables")
    check.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto",
                       help="folder layout (default: detect)")
    check.set_defaults(func=run_check)
    from endofed.commands.site_approvals import register_approvals
    from endofed.commands.site_join import register_join
    from endofed.commands.site_ledger import register_ledger
    from endofed.commands.site_log import register_log

    register_join(actions)
    register_ledger(actions)
    register_approvals(actions)
    register_log(actions)
    site.set_defaults(func=lambda args: (site.print_help(), 2)[1])


def run_check(args: argparse.Namespace) -> int:
    from endofed.shared.data.site import SiteDataError, scan_site, summarize

    try:
        summary = summarize(scan_site(args.dir, layout=args.layout))
    except SiteDataError as exc:
        if args.json:
            print(json.dumps({"root": str(args.dir), "images": 0, "usable": 0,
                              "error": str(exc)}, indent=2))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_tables(summary)
    return 0 if summary["usable"] > 0 else 1


def _print_tables(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    overview = Table(title=f"Site {s['root']} ({s['layout']} layout)", show_header=False)
    overview.add_column("", style="bold")
    overview.add_column("", justify="right")
    h, w = s["sizes"]["height"], s["sizes"]["width"]
    for key, value in (
        ("images found", s["images"]),
        ("usable", s["usable"]),
        ("problems", len(s["problems"])),
        ("too large (header over the pixel cap)", s["oversized"]),
        ("boxes", s["boxes"]),
        ("images without lesions", s["images_without_lesions"]),
        ("images with masks", s["images_with_masks"]),
        ("patient / lesion groups", s["groups"]),
        ("height min / median / max", f"{h['min']} / {h['median']:g} / {h['max']}"),
        ("width min / median / max", f"{w['min']} / {w['median']:g} / {w['max']}"),
    ):
        overview.add_row(key, str(value))
    console.print(overview)

    classes = Table(title="Classes")
    classes.add_column("class")
    classes.add_column("boxes", justify="right")
    classes.add_column("images (largest box)", justify="right")
    for name, count in s["image_labels"].items():
        classes.add_row(name, str(s["classes"].get(name, 0)), str(count))
    console.print(classes)

    for title, counts in (("Morphology (boxes)", s["morphology"]), ("Splits", s["splits"])):
        if counts:
            t = Table(title=title)
            t.add_column("value")
            t.add_column("count", justify="right")
            for k, v in counts.items():
                t.add_row(k, str(v))
            console.print(t)

    if s["problems"]:
        # one unwrapped line per problem: easy to grep and to copy a path from
        console.print(f"[bold red]Problems ({len(s['problems'])} skipped):[/]")
        for p in s["problems"]:
            console.print(f"  {p['path']}: {p['reason']}", soft_wrap=True, markup=False,
                          highlight=False)
