"""``endofed dashboard RUNS_DIR``: the local web dashboard (runs, case viewer, site page)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="web dashboard: runs and their rounds, sites, events, report; case viewer; "
             "site page",
        description="Serve a local web app over RUNS_DIR (read-only: it never writes to a "
        "run directory): every study/run with its status, one run's round progress live, "
        "metric curves, per-site table (replied/declined/refused/failed, examples, "
        "epsilon spent vs target), events, the report and the final model; a case viewer "
        "(a run's model on an uploaded JPEG, PNG or DICOM image, kept in memory only); "
        "with --site, a hospital's approvals, privacy ledger and audit trail. Offline: no "
        "CDN. Bound to anything but loopback it requires an access token.",
        epilog="example:\n  endofed dashboard runs --port 8050\n"
               "  endofed dashboard --site ~/.endofed/state --host 0.0.0.0 --token S3CRET",
    )
    p.add_argument("runs_dir", nargs="?", type=Path, default=None, metavar="RUNS_DIR",
                   help="folder holding run directories (runs/<run-name>/, searched up to "
                        "4 levels deep); optional with --site")
    p.add_argument("--host", default="127.0.0.1", metavar="HOST",
                   help="address to bind; anything but loopback needs a token")
    p.add_argument("--port", type=_port, default=8050, metavar="N", help="TCP port")
    p.add_argument("--token", default=None, metavar="TOKEN",
                   help="access token every request must carry (Authorization: Bearer, "
                        "?token= once, then a cookie); off loopback one is generated and "
                        "printed when not given")
    p.add_argument("--site", type=Path, default=None, metavar="DIR",
                   help="a SuperNode's state dir: show its approvals, privacy ledger and "
                        "audit trail")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="device of the case viewer's models: cpu, cuda, cuda:1, auto")
    p.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {value}")
    return value


def _folder(path: Path, what: str) -> Path:
    path = path.expanduser()
    if not path.is_dir():
        raise FileNotFoundError(2, f"{what} not found or not a folder", str(path))
    return path.resolve()


def run(args: argparse.Namespace) -> int:
    from endofed.server.dashboard.security import is_loopback, new_token
    from endofed.shared.config import ConfigError

    if args.runs_dir is None and args.site is None:
        raise ConfigError("give RUNS_DIR, --site DIR or both")
    runs_dir = _folder(args.runs_dir, "runs folder") if args.runs_dir is not None else None
    site_dir = _folder(args.site, "site state dir") if args.site is not None else None
    token, generated = args.token, False
    if token is not None and not token.strip():
        raise ConfigError("--token must not be empty")
    if token is None and not is_loopback(args.host):
        token, generated = new_token(), True

    import uvicorn

    from endofed.server.dashboard import create_app
    from endofed.shared.engine import resolve_device

    app = create_app(runs_dir, site_dir=site_dir, token=token,
                     device=resolve_device(args.device))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    start = "/" if runs_dir is not None else "/site"
    query = f"?token={token}" if generated else ""  # a generated token, printed once
    print(f"EndoFed dashboard on http://{shown}:{args.port}{start}{query} "
          f"(runs: {runs_dir or '-'}, site: {site_dir or '-'}); Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
