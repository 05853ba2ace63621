"""``endofed certs --out DIR --sites a,b,c``: TLS certificates and SuperNode auth keys."""

from __future__ import annotations

import argparse
import logging

from endofed.commands._common import CommaList, add_out_flag, out_path

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
        description="Write DIR/ca.{crt,key}, DIR/superlink.{crt,key} (signed by the CA, "
        "valid for localhost, 127.0.0.1, ::1 and every --superlink-host) and "
        "DIR/supernodes/<site>/auth.{key,pub} (EC P-384, OpenSSH format, as "
        "flower-supernode --auth-supernode-private-key and flwr supernode register "
        "expect), plus DIR/manifest.json. Private keys get mode 0600. See "
        "docs/SECURITY.md for the deployment commands.",
        epilog="example:\n  endofed certs --out certs --sites hosp-a,hosp-b "
               "--superlink-host fl.example.org,10.0.0.5",
    )
    add_out_flag(p, help="output folder (required; the old positional OUT still works)")
    p.add_argument("--sites", type=_names, required=True, metavar="NAMES",
                   help="comma-separated site (hospital) names")  # fmt: skip
    p.add_argument(
        "--superlink-host", action=CommaList, default=[], metavar="HOST[,HOST...]",
        help="comma-separated DNS names or IP addresses the SuperLink is reached by, "
             "besides localhost (repeating the flag is deprecated)",
    )  # fmt: skip
    p.add_argument("--days", type=int, default=365, metavar="N",
                   help="certificate validity in days (default 365)")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from endofed.privacy.certs import generate_certificates

    try:
        bundle = generate_certificates(
            out_path(args), args.sites, superlink_hosts=args.superlink_host, days=args.days,
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
