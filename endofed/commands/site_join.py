"""``endofed site join``: check a hospital's data folder, then run its Flower SuperNode.

The pre-flight check runs *before* anything connects to the coordinating center, so a
mistyped or empty ``--data-path`` fails in a second with a message naming the folder
(exit code 2) instead of surfacing rounds later as a failed ClientApp on the server.
On success the process is replaced (``exec``) by ``flower-supernode`` from this
environment with ``--node-config 'data-path="..." site-name="..." [state-dir="..."]'``;
everything after ``--`` is passed to ``flower-supernode`` verbatim (e.g. TLS options).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_BAD_DATA = 2


class PreflightError(Exception):
    """The site cannot join; the message names the path and the problem."""


def register_join(actions: argparse._SubParsersAction) -> None:
    """Add the ``join`` action to the ``endofed site`` parser."""
    join = actions.add_parser(
        "join",
        help="validate the data folder, then start this site's Flower SuperNode",
        description="Validate the site's data folder (as `endofed site check` does) and, "
        "if it holds usable images, start `flower-supernode` connected to the "
        "coordinating center's SuperLink with this site's node config. Exits with "
        f"code {EXIT_BAD_DATA} without starting anything when the folder is missing or "
        "holds no usable image. Arguments after `--` go to flower-supernode.",
    )
    join.add_argument("--superlink", required=True, metavar="HOST:PORT",
                      help="the SuperLink's Fleet API address (e.g. fl.center.org:9092)")
    join.add_argument("--data-path", required=True, type=Path, metavar="DIR",
                      help="this site's image folder (Kvasir-SEG, COCO JSON or manifest.csv)")
    join.add_argument("--site-name", required=True, metavar="NAME",
                      help="name under which the site's metrics are reported")
    join.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                      help="where the site keeps persistent state (privacy ledger)")
    dp = join.add_argument_group(
        "differential privacy (this site's own budget; the coordinator cannot loosen it)")
    dp.add_argument("--dp-epsilon", type=float, default=None, metavar="EPS",
                    help="this site's lifetime epsilon; enables DP-SGD at the site")
    dp.add_argument("--dp-delta", type=float, default=None, metavar="DELTA",
                    help="this site's delta (default 1e-5)")
    dp.add_argument("--dp-max-grad-norm", type=float, default=None, metavar="C",
                    help="per-sample clipping norm (default 1.0)")
    dp.add_argument("--dp-accountant", choices=("prv", "rdp"), default=None,
                    help="privacy accountant (default prv)")
    join.add_argument("--insecure", action="store_true",
                      help="connect without TLS (testing on a trusted network only)")
    join.add_argument("--dry-run", action="store_true",
                      help="validate and print the flower-supernode command, do not run it")
    join.add_argument("supernode_args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                      help="extra flower-supernode arguments")
    join.set_defaults(func=run_join)


def preflight(data_path: Path, site_name: str) -> int:
    """Validate the site folder; return its number of usable images.

    Raises:
        PreflightError: the folder is missing, not a folder, or has no usable image.
    """
    from endofed.shared.data.site import SiteDataError, scan_site

    if not site_name.strip():
        raise PreflightError("--site-name must not be empty")
    if not data_path.exists():
        raise PreflightError(f"data-path {data_path} does not exist")
    if not data_path.is_dir():
        raise PreflightError(f"data-path {data_path} is not a directory")
    if not os.access(data_path, os.R_OK | os.X_OK):
        raise PreflightError(f"data-path {data_path} is not readable by this user")
    try:
        index = scan_site(data_path)
    except SiteDataError as exc:
        raise PreflightError(f"data-path {data_path} is not usable: {exc}") from exc
    if not index.records:
        raise PreflightError(f"data-path {data_path} holds no usable image")
    if index.report.problems:
        log.warning("%s: %d files will be skipped (see `endofed site check %s`)",
                    data_path, len(index.report.problems), data_path)
    return len(index.records)


def check_privacy(node_config: dict[str, str | float]) -> str | None:
    """Validate the site's own settings; describe its privacy budget (None if no DP).

    Raises:
        PreflightError: a setting is invalid (the message names the key).
    """
    from endofed.privacy.ledger import LedgerError, ledger_path
    from endofed.privacy.ledger_summary import read_ledger_summary
    from endofed.shared.config import ConfigError, EndoFedConfig

    try:
        cfg = EndoFedConfig.from_flower({}, node_config)
    except ConfigError as exc:
        raise PreflightError(str(exc)) from exc
    pc = cfg.privacy
    if not pc.enabled:
        return None
    path = ledger_path(cfg, str(node_config["site-name"]))
    try:
        ledger = read_ledger_summary(path)
    except FileNotFoundError:
        return f"DP-SGD on: epsilon {pc.epsilon:g}, delta {pc.delta:g}; new ledger {path}"
    except LedgerError as exc:
        raise PreflightError(str(exc)) from exc
    spent = ledger["epsilon_spent"]
    text = (f"DP-SGD on: epsilon {pc.epsilon:g}, delta {pc.delta:g}; spent {spent:.4g} "
            f"over {len(ledger['runs'])} studies (ledger {path})")
    if pc.epsilon - spent < pc.min_study_budget * pc.epsilon:
        text += "; the budget is used up: this site will decline new studies"
    return text


def supernode_argv(args: argparse.Namespace) -> list[str]:
    """The ``flower-supernode`` command line for this site."""
    from endofed.simulations.flwr_cli import flwr_executable
    from endofed.simulations.run_config import format_run_config

    node_config: dict[str, str | float] = {
        "data-path": str(args.data_path.expanduser().resolve()),
        "site-name": args.site_name,
    }
    if args.state_dir is not None:
        node_config["state-dir"] = str(args.state_dir.expanduser().resolve())
    node_config.update(_privacy_node_config(args))
    argv = [str(flwr_executable("flower-supernode")), "--superlink", args.superlink,
            "--node-config", format_run_config(node_config)]
    if args.insecure:
        argv.append("--insecure")
    extra = list(args.supernode_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return argv + extra


def _privacy_node_config(args: argparse.Namespace) -> dict[str, str | float]:
    out: dict[str, str | float] = {}
    for key in ("dp_epsilon", "dp_delta", "dp_max_grad_norm", "dp_accountant"):
        value = getattr(args, key, None)
        if value is not None:
            out[key.replace("_", "-")] = value
    return out


def run_join(args: argparse.Namespace) -> int:
    """Pre-flight check, then exec ``flower-supernode`` (never returns on success)."""
    try:
        n = preflight(args.data_path, args.site_name)
        privacy = check_privacy(
            {"site-name": args.site_name, "data-path": str(args.data_path),
             **({"state-dir": str(args.state_dir)} if args.state_dir else {}),
             **_privacy_node_config(args)}
        )
    except PreflightError as exc:
        print(f"error: {exc}; the SuperNode was not started "
              f"(run `endofed site check {args.data_path}` for details)", file=sys.stderr)
        return EXIT_BAD_DATA
    argv = supernode_argv(args)
    log.info("site %s: %d usable images in %s", args.site_name, n, args.data_path)
    if privacy:
        log.info("site %s: %s", args.site_name, privacy)
    if args.dry_run:
        print(shlex.join(argv))
        return 0
    log.info("starting: %s", shlex.join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # noqa: S606 - replaces this process by the SuperNode
    return 0  # pragma: no cover
