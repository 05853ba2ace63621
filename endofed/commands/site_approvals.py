"""``endofed site approve`` and ``endofed site approvals``: which apps may run here.

A hospital approves a Flower app (FAB) by its content hash, or trusts a publisher's
ed25519 key for apps signed with ``endofed app sign``. Stored in
``STATE_DIR/approvals.json`` (:mod:`endofed.privacy.approvals`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "~/.endofed/state"


def state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir`` or the site commands' default, ``~/.endofed/state``."""
    value = getattr(args, "state_dir", None)
    return Path(value or DEFAULT_STATE_DIR).expanduser().resolve()


def _common(p: argparse.ArgumentParser, *, child: bool) -> None:
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if child else {"default": None}
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="the site's state-dir, as given to `endofed site join` "
                   f"(default: {DEFAULT_STATE_DIR})", **extra)
    p.add_argument("--json", action="store_true", help="print JSON instead of text",
                   **({"default": argparse.SUPPRESS} if child else {}))


def register_approvals(actions: argparse._SubParsersAction) -> None:
    """Add the ``approve`` and ``approvals`` actions to the ``endofed site`` parser."""
    approve = actions.add_parser(
        "approve",
        help="approve an app (FAB file or its sha256 hash) to run on this site's data",
        description="Approve one Flower app bundle by content hash: only an app whose FAB "
        "has exactly this sha256 (Flower's fab hash) runs here; one changed byte is a "
        "different app. Give the .fab file (`flwr build` makes it; its contents are "
        "listed so you can check what you approve) or the 64-digit hash.",
        epilog="example:\n  endofed site approve endofed.endofed-app.1-0-0.3f2a9c1e.fab "
        "--note 'reviewed by J. Doe, ticket 4711'",
    )
    approve.add_argument("fab", metavar="FAB-or-HASH",
                         help="a .fab file, or the FAB's sha256 hex hash")
    approve.add_argument("--note", default="", metavar="TEXT",
                         help="why / by whom it was approved (kept with the approval)")
    _common(approve, child=False)
    approve.set_defaults(func=run_approve)

    approvals = actions.add_parser(
        "approvals",
        help="list, revoke, or trust publisher keys for this site's approved apps",
        description="Show the apps approved at this site (by hash) and the publisher keys "
        "it trusts for signed apps; revoke either; trust a new publisher key. Without "
        "an action, lists.",
        epilog="example:\n  endofed site approvals list\n"
        "  endofed site approvals trust-key endofed-publisher.pub --name endofed-team\n"
        "  endofed site approvals revoke 3f2a9c1e0b7d",
    )
    _common(approvals, child=False)
    approvals.set_defaults(func=run_list, all=False)
    sub = approvals.add_subparsers(dest="approvals_command", metavar="ACTION")
    lst = sub.add_parser("list", help="list approvals",
                         description="List the active approvals (all with --all).",
                         epilog="example:\n  endofed site approvals list --all --json")
    lst.add_argument("--all", action="store_true", help="include revoked approvals")
    _common(lst, child=True)
    lst.set_defaults(func=run_list)
    revoke = sub.add_parser(
        "revoke", help="revoke an approved hash or a trusted publisher",
        description="Revoke an approval: a hash prefix (at least 12 hex digits) or a "
        "publisher name. A revoked hash stays refused even when the app is signed by a "
        "trusted publisher.",
        epilog="example:\n  endofed site approvals revoke endofed-team")
    revoke.add_argument("ident", metavar="ID",
                        help="hash prefix (>= 12 hex digits) or publisher name")
    _common(revoke, child=True)
    revoke.set_defaults(func=run_revoke)
    trust = sub.add_parser(
        "trust-key", help="trust a publisher's ed25519 public key for signed apps",
        description="Trust a publisher's ed25519 public key (PEM or OpenSSH, e.g. the .pub "
        "file `endofed app keygen` writes): every app it signs with `endofed app sign` "
        "runs here, unchanged, without a per-hash approval. Compare the printed "
        "fingerprint with the publisher's over a second channel.",
        epilog="example:\n  endofed site approvals trust-key endofed-publisher.pub "
        "--name endofed-team")
    trust.add_argument("key", metavar="FILE", type=Path, help="the publisher's public key")
    trust.add_argument("--name", required=True, metavar="NAME",
                       help="a name for this publisher (letters, digits, . _ -)")
    _common(trust, child=True)
    trust.set_defaults(func=run_trust)


def _store(args: argparse.Namespace):  # -> ApprovalStore
    from endofed.privacy.approvals import ApprovalStore

    return ApprovalStore(state_dir(args))


def fab_summary(content: bytes) -> dict[str, Any]:
    """Name, version, publisher and files of a FAB, read as data (nothing runs)."""
    import io
    import tomllib
    import zipfile

    from endofed.privacy.approvals import SIGNATURE_FILE, fab_manifest

    files = [line.split("\t")[0] for line in fab_manifest(content)]
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        signed = SIGNATURE_FILE in zf.namelist()
        try:
            cfg = tomllib.loads(zf.read("pyproject.toml").decode("utf-8"))
        except (KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            cfg = {}
    project = cfg.get("project", {})
    publisher = cfg.get("tool", {}).get("flwr", {}).get("app", {}).get("publisher")
    return {"name": project.get("name"), "version": project.get("version"),
            "publisher": publisher, "files": files, "signed": signed}


def run_approve(args: argparse.Namespace) -> int:
    from endofed.privacy.approvals import ApprovalError

    store = _store(args)
    path = Path(args.fab).expanduser()
    summary = None
    if path.is_file():
        summary = fab_summary(path.read_bytes()) if path.stat().st_size < 64 << 20 else None
        approval = store.approve_fab_file(path, note=args.note)
    elif re.fullmatch(r"[0-9a-fA-F]{64}", args.fab.strip()):
        approval = store.approve_hash(args.fab, note=args.note)
    else:
        raise ApprovalError(f"{args.fab}: neither a FAB file nor a 64-digit sha256 hash")
    if args.json:
        print(json.dumps({**approval.to_dict(), "app": summary, "store": str(store.path)},
                         indent=2))
        return 0
    print(f"approved app {approval.ident}")
    if summary:
        print(f"  {summary['publisher']}/{summary['name']} {summary['version']}, "
              f"{len(summary['files'])} files: {', '.join(summary['files'])}")
    if approval.note:
        print(f"  note: {approval.note}")
    print(f"  in {store.path}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = store.list(include_revoked=getattr(args, "all", False))
    if args.json:
        print(json.dumps({"store": str(store.path), "approvals": [r.to_dict() for r in rows]},
                         indent=2))
        return 0
    if not rows:
        print(f"no approvals in {store.path}: every app is refused "
              "(`endofed site approve FAB` approves one)")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Approvals ({store.path})")
    for col in ("kind", "id", "approved", "note / source", "revoked"):
        table.add_column(col, overflow="fold")
    for r in rows:
        ident = r.ident if r.kind == "hash" else f"{r.ident} {r.fingerprint}"
        table.add_row(r.kind, ident, r.approved_at, r.note or r.source, r.revoked_at or "-")
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    r = store.revoke(args.ident)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
    else:
        print(f"revoked {r.kind} {r.ident} in {store.path}")
    return 0


def run_trust(args: argparse.Namespace) -> int:
    store = _store(args)
    r = store.trust_publisher(args.key, name=args.name)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
    else:
        print(f"trusted publisher {r.ident}: {r.fingerprint}\n  in {store.path}\n"
              "  check this fingerprint with the publisher over a second channel")
    return 0
