"""``endofed app keygen|sign|hash``: a publisher signs a Flower app for the sites.

A publisher makes an ed25519 key once (``keygen``), gives sites the ``.pub`` file
(they run ``endofed site approvals trust-key``), and signs the app folder before every
``flwr run`` (``sign``): the signature file travels inside the FAB Flower builds, and
each site checks it before any of the app's code runs (:mod:`endofed.privacy.approvals`).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``app`` (``keygen``, ``sign``, ``hash``) to the ``endofed`` parser."""
    app = subparsers.add_parser(
        "app", help="publisher tools: make a signing key, sign a Flower app, show its hash",
        description="Publisher side of site app approval. Sites run only apps they "
        "approved by hash, or apps signed by a publisher key they trust.",
        epilog="example:\n  endofed app keygen ~/.endofed/publisher-key\n"
        "  endofed app sign ./my-app --key ~/.endofed/publisher-key",
    )
    actions = app.add_subparsers(dest="app_command", metavar="ACTION")
    keygen = actions.add_parser(
        "keygen", help="write a new ed25519 signing key (OUT) and its public key (OUT.pub)",
        description="Write a new ed25519 private key to OUT (PKCS#8 PEM, mode 0600, not "
        "encrypted: keep it offline) and its public key to OUT.pub (OpenSSH format), "
        "and print the key's fingerprint. Never overwrites a file.",
        epilog="example:\n  endofed app keygen ~/.endofed/publisher-key")
    keygen.add_argument("out", type=Path, metavar="OUT", help="the private key file to write")
    keygen.set_defaults(func=run_keygen)
    sign = actions.add_parser(
        "sign", help="sign a Flower app folder (writes APP_DIR/endofed-signature.toml)",
        description="Sign every file that Flower's FAB build takes from APP_DIR (same "
        "rules as `flwr build` / `flwr run`) with an ed25519 key, into "
        "APP_DIR/endofed-signature.toml, which the FAB then carries. Sign again after "
        "any change: a site refuses an app whose files differ from what was signed.",
        epilog="example:\n  endofed app sign ./my-app --key ~/.endofed/publisher-key")
    sign.add_argument("app_dir", type=Path, metavar="APP_DIR", help="the Flower app folder")
    sign.add_argument("--key", type=Path, required=True, metavar="FILE",
                      help="the ed25519 private key (from `endofed app keygen`, or an "
                      "unencrypted OpenSSH ed25519 key)")
    sign.set_defaults(func=run_sign)
    hsh = actions.add_parser(
        "hash", help="print the FAB hash a site sees for an app folder or .fab file",
        description="Print the sha256 of the FAB that `flwr build` / `flwr run` makes of "
        "APP_DIR (Flower's fab hash, what `endofed site approve` records), or of a .fab "
        "file.",
        epilog="example:\n  endofed app hash ./my-app")
    hsh.add_argument("path", type=Path, metavar="APP_DIR-or-FAB",
                     help="a Flower app folder or a .fab file")
    hsh.set_defaults(func=run_hash)
    app.set_defaults(func=lambda args: (app.print_help(), 2)[1])


def run_keygen(args: argparse.Namespace) -> int:
    from endofed.privacy.approvals import generate_keypair

    priv, pub, fp = generate_keypair(args.out.expanduser())
    print(f"private key: {priv} (keep it secret and offline)\npublic key:  {pub} "
          f"(give it to the sites)\nfingerprint: {fp}")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    import tomllib

    from endofed.privacy.approvals import sign_app_dir

    path = sign_app_dir(args.app_dir, args.key.expanduser())
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    print(f"signed {len(doc['manifest'])} files with {doc['key-fingerprint']}\n"
          f"  wrote {path}\n  FAB hash (what sites see): {fab_hash(args.app_dir)}")
    return 0


def fab_hash(path: Path) -> str:
    """sha256 hex of a .fab file, or of the FAB Flower builds from an app folder."""
    path = path.expanduser()
    if path.is_dir():
        from flwr.cli.build import build_fab_from_disk

        from endofed.privacy.approvals import ApprovalError

        try:
            return hashlib.sha256(build_fab_from_disk(path)).hexdigest()
        except ValueError as exc:
            raise ApprovalError(f"{path}: flwr cannot build this app ({exc})") from None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_hash(args: argparse.Namespace) -> int:
    print(fab_hash(args.path))
    return 0
