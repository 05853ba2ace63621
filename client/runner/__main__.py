"""``python -m endofed.client.runner``: serve one SuperNode's tasks (see the package doc)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("endofed.client.runner")


def build_parser() -> argparse.ArgumentParser:
    """The runner's command line (``endofed site join`` composes it)."""
    parser = argparse.ArgumentParser(
        prog="python -m endofed.client.runner",
        description="Serve a SuperNode's ClientApp tasks (flower-supernode --isolation "
        "process): only approved app bundles, the site's own installed EndoFed, one "
        "audit-trail entry per message.",
        epilog="example: python -m endofed.client.runner --runtime-api 127.0.0.1:9094 "
        "--state-dir /var/lib/endofed --insecure",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runtime-api", required=True, metavar="HOST:PORT",
                        help="the SuperNode's Runtime (ClientAppIo) API address")
    parser.add_argument("--state-dir", required=True, type=Path, metavar="DIR",
                        help="the site's state: approvals.json and audit-trail.jsonl")
    parser.add_argument("--insecure", action="store_true",
                        help="plain HTTP to the Runtime API (loopback only)")
    parser.add_argument("--root-certificates", type=Path, default=None, metavar="FILE",
                        help="CA certificate of the Runtime API's TLS certificate")
    parser.add_argument("--auth-secret-file", type=Path, default=None, metavar="FILE",
                        help="the SuperNode's --superexec-auth-secret-file (only the "
                        "holder of the secret can claim tasks)")
    parser.add_argument("--poll", type=float, default=0.2, metavar="SECONDS",
                        help="pause between empty task claims")
    parser.add_argument("--idle-release", type=float, default=900.0, metavar="SECONDS",
                        help="release a run's warm state after this long without a message")
    parser.add_argument("--startup-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the SuperNode's Runtime API")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s site-runner %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Runtime API call
    from endofed.client.runner.connection import RuntimeConnection
    from endofed.client.runner.runner import SiteRunner

    secret = args.auth_secret_file.read_bytes() if args.auth_secret_file else None
    certs = args.root_certificates.read_bytes() if args.root_certificates else None
    conn = RuntimeConnection(args.runtime_api, insecure=args.insecure or certs is None,
                             root_certificates=certs, auth_secret=secret)
    runner = SiteRunner(conn, args.state_dir, poll=args.poll, idle_release=args.idle_release)
    runner.install_signal_handlers()  # after the (slow) imports: torch, the ClientApp
    try:
        conn.wait_ready(args.startup_timeout)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("serving %s (state in %s)", args.runtime_api, args.state_dir)
    served = runner.serve()
    log.info("stopped after %d message(s)", served)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
