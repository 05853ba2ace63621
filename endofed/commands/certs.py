"""``endofed certs OUT --sites a,b,c``: TLS certificates and SuperNode auth keys."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _names(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--sites needs at least one site name")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``certs`` to the ``endofed`` parser."""
    p = subparsers.add_parser(
        "certs",
        help="create a CA, the SuperLink TLS certificate and one auth key pair per site",
        description="Write OUT/ca.{crt,key}, OUT/superlink.{crt,key} (signed by the CA, "
        "valid for localhost, 127.0.0.1, ::1 and every --superlink-host) and "
        "OUT/supernodes/<site>/auth.{key,pub} (EC P-384, OpenSSH format, as "
        "flower-supernode --auth-supernode-private-key and flwr supernode register "
        "expect), plus OUT/manifest.json. Private keys get mode 0600. See "
        "docs/SECURITY.md for the deployment commands.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="output folder")
    p.add_argument("--sites", type=_names, required=True,
                   help="comma-separated site (hospital) names")  # fmt: skip
    p.add_argument(
        "--superlink-host", action="append", default=[], metavar="HOST",
        help="DNS name or IP address the SuperLink is reached by (repeatable)",
    )  # fmt: skip
    p.add_argument("--days", type=int, default=365, help="certificate validity (default 365)")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.privacy.certs import generate_certificates

    try:
        bundle = generate_certificates(
            args.out, args.sites, superlink_hosts=args.superlink_host, days=args.days,
            force=args.force,
        )  # fmt: skip
    except FileExistsError as exc:
        raise SystemExit(f"endofed certs: {exc}") from None
    except ValueError as exc:
        raise SystemExit(f"endofed certs: {exc}") from None
    print(f"CA certificate:        {bundle.ca_cert}")
    print(f"SuperLink certificate: {bundle.server_cert} (key {bundle.server_key})")
    for keys in bundle.sites.values():
        print(f"site {keys.name}: {keys.private_key} / {keys.public_key}")
    print(f"manifest:              {bundle.manifest}")
    return 0
