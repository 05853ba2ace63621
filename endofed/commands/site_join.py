"""``endofed site join``: check a hospital's data folder, then run its SuperNode and site runner.

The pre-flight check runs *before* anything connects to the coordinating center, so a
mistyped or empty ``--data-path`` fails in a second with a message naming the folder
(exit code 2) instead of surfacing rounds later as a failed ClientApp on the server.
On success it prints the site's effective settings (and where each came from: a
``site join`` flag, a ``-c`` node-config key, or the default), then supervises two
children from this environment:

* ``flower-supernode --isolation process`` with ``--node-config 'data-path="..."
  site-name="..." ...'`` (everything after ``--`` is passed to it verbatim, e.g. TLS
  options); its Runtime API listens on 127.0.0.1 only;
* the EndoFed site runner (``python -m endofed.client.runner``), which alone holds the
  secret that claims the SuperNode's tasks, runs only apps approved in the state dir
  (``endofed site approve``) and writes the audit trail (``endofed site log``).

Both stop together: on Ctrl-C / SIGTERM, or when either exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

EXIT_BAD_DATA = 2
DEFAULT_STATE_DIR = "~/.endofed/state"  # as endofed site approve / site log
RUNNER_SECRET = "site-runner.secret"


class PreflightError(Exception):
    """The site cannot join; the message names the path and the problem."""


def register_join(actions: argparse._SubParsersAction) -> None:
    """Add the ``join`` action to the ``endofed site`` parser."""
    join = actions.add_parser(
        "join",
        help="validate the data folder, then start this site's SuperNode and site runner",
        description="Validate the site's data folder (as `endofed site check` does) and, "
        "if it holds usable images, print the site's effective settings and start "
        "`flower-supernode --isolation process` connected to the coordinating center's "
        "SuperLink with this site's node config, plus the EndoFed site runner beside "
        "it: only apps approved with `endofed site approve` run, always as this "
        "installed EndoFed, and every message is recorded (`endofed site log`). Device, "
        "threads, workers, preprocessing and DP are the site's: the coordinator's run "
        f"config cannot change them. Exits with code {EXIT_BAD_DATA} without starting "
        "anything when the folder is missing or holds no usable image. Arguments after "
        "`--` go to flower-supernode.",
        epilog="example:\n  endofed site join --superlink fl.center.org:9092 --data-path "
        "/data/endo --site-name st-mary --state-dir /var/lib/endofed --threads 4 -- "
        "--root-certificates ca.pem",
    )
    join.add_argument("--superlink", required=True, metavar="HOST:PORT",
                      help="the SuperLink's Fleet API address (e.g. fl.center.org:9092)")
    join.add_argument("--data-path", required=True, type=Path, metavar="DIR",
                      help="this site's image folder (Kvasir-SEG, COCO JSON or manifest.csv)")
    join.add_argument("--site-name", required=True, metavar="NAME",
                      help="name under which the site's metrics are reported")
    join.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                      help="where the site keeps persistent state: privacy ledger, app "
                      f"approvals, audit trail (default: {DEFAULT_STATE_DIR})")
    compute = join.add_argument_group(
        "compute and preprocessing (this site's; the coordinator's run config cannot "
        "change them)")
    compute.add_argument("--device", default=None, metavar="NAME",
                         help="torch device: auto, cpu, cuda, cuda:N or mps (default: auto)")
    compute.add_argument("--threads", type=int, default=None, metavar="N",
                         help="torch threads for training (default: 0 = one per core)")
    compute.add_argument("--workers", type=int, default=None, metavar="N",
                         help="DataLoader worker processes (default: 0)")
    compute.add_argument("--preprocess", action=argparse.BooleanOptionalAction,
                         default=None,
                         help="run the preprocessing pipeline on this site's images "
                         "(default: off)")
    compute.add_argument("--preprocess-detector", default=None, metavar="NAME",
                         help="overlay detector of the preprocessing (default: classical)")
    compute.add_argument("--preprocess-cache-dir", type=Path, default=None, metavar="DIR",
                         help="where preprocessed images are cached (default: none)")
    compute.add_argument("-c", "--node-config", dest="node_overrides", action="append",
                         default=[], metavar="KEY=VALUE",
                         help="any other site-owned node-config key (e.g. -c amp=false, "
                         "-c preprocess-wavelet=false); one key per -c")
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
                      help="validate, print the settings and the site runner and "
                      "flower-supernode commands (the last line), do not run them")
    join.add_argument("--runtime-port", type=int, default=None, metavar="N",
                      help="port of the SuperNode's Runtime API on 127.0.0.1 (default: a "
                      "free port)")
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


#: ``site join`` flag (argparse dest) -> the node-config key it sets.
SETTING_FLAGS: dict[str, str] = {
    "dp_epsilon": "dp-epsilon", "dp_delta": "dp-delta", "dp_max_grad_norm": "dp-max-grad-norm",
    "dp_accountant": "dp-accountant", "device": "device", "threads": "threads",
    "workers": "workers", "preprocess": "preprocess",
    "preprocess_detector": "preprocess-detector",
    "preprocess_cache_dir": "preprocess-cache-dir",
}


def _literal(text: str) -> str | int | float | bool:
    low = text.strip().strip('"').lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(low)
        except ValueError:
            pass
    return text.strip().strip('"')


def site_node_config(args: argparse.Namespace) -> tuple[dict[str, str | float | int | bool],
                                                         set[str]]:
    """The SuperNode's node config from the flags, and the keys set by a flag.

    Raises:
        PreflightError: a ``-c`` item is malformed or not a site-owned key.
    """
    from endofed.client.site_settings import SITE_SETTING_KEYS

    node: dict[str, str | float | int | bool] = {
        "data-path": str(args.data_path.expanduser().resolve()),
        "site-name": args.site_name,
    }
    if args.state_dir is not None:
        node["state-dir"] = str(args.state_dir.expanduser().resolve())
    for item in getattr(args, "node_overrides", []) or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PreflightError(f"-c expects KEY=VALUE (e.g. -c amp=false), got {item!r}")
        if key not in SITE_SETTING_KEYS or key == "state-dir":
            raise PreflightError(
                f"-c {key}: not a site-owned setting; a site sets "
                + ", ".join(k for k in SITE_SETTING_KEYS if k != "state-dir"))
        node[key] = _literal(value)
    flags: set[str] = {"state-dir"} if args.state_dir is not None else set()
    for dest, key in SETTING_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            node[key] = str(Path(value).expanduser().resolve()) if isinstance(value, Path) \
                else value
            flags.add(key)
    return node, flags


def runner_state_dir(args: argparse.Namespace) -> Path:
    """The site runner's state dir (approvals, audit trail): ``--state-dir`` or default."""
    return Path(args.state_dir or DEFAULT_STATE_DIR).expanduser().resolve()


def supernode_argv(args: argparse.Namespace, runtime_port: int = 0,
                   secret: Path | None = None) -> list[str]:
    """The ``flower-supernode --isolation process`` command line for this site."""
    from endofed.simulations.flwr_cli import flwr_executable
    from endofed.simulations.run_config import format_run_config

    node_config, _ = site_node_config(args)
    argv = [str(flwr_executable("flower-supernode")), "--superlink", args.superlink,
            "--node-config", format_run_config(node_config)]
    if args.insecure:
        argv.append("--insecure")
    argv += ["--isolation", "process", "--host", "127.0.0.1",
             "--port", str(runtime_port or args.runtime_port or 9094)]
    if secret is not None:
        argv += ["--superexec-auth-secret-file", str(secret)]
    extra = list(args.supernode_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return argv + extra


def runner_argv(args: argparse.Namespace, runtime_port: int, secret: Path) -> list[str]:
    """The site runner's command line (the same Python as this command)."""
    return [sys.executable, "-m", "endofed.client.runner",
            "--runtime-api", f"127.0.0.1:{runtime_port}", "--insecure",
            "--state-dir", str(runner_state_dir(args)), "--auth-secret-file", str(secret)]


def _privacy_node_config(args: argparse.Namespace) -> dict[str, str | float]:
    out: dict[str, str | float] = {}
    for key in ("dp_epsilon", "dp_delta", "dp_max_grad_norm", "dp_accountant"):
        value = getattr(args, key, None)
        if value is not None:
            out[key.replace("_", "-")] = value
    return out


def _runner_secret(state: Path) -> Path:
    """A random secret (0600) only the SuperNode and this site's runner read."""
    path = state / RUNNER_SECRET
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    return path


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_join(args: argparse.Namespace) -> int:
    """Pre-flight check, print the settings, then supervise the SuperNode and the runner."""
    from endofed.client.site_settings import effective_settings, format_settings
    from endofed.shared.config import ConfigError

    try:
        n = preflight(args.data_path, args.site_name)
        node_config, flags = site_node_config(args)
        privacy = check_privacy(
            {**node_config, "data-path": str(args.data_path),
             **({"state-dir": str(args.state_dir)} if args.state_dir else {})}
        )
        settings = effective_settings(node_config, flags)
    except (PreflightError, ConfigError) as exc:
        print(f"error: {exc}; the SuperNode was not started "
              f"(run `endofed site check {args.data_path}` for details)", file=sys.stderr)
        return EXIT_BAD_DATA
    log.info("site %s: %d usable images in %s", args.site_name, n, args.data_path)
    if privacy:
        log.info("site %s: %s", args.site_name, privacy)
    print(f"site {args.site_name}: effective settings (the coordinator cannot change them)")
    print(format_settings(settings))
    state = runner_state_dir(args)
    port = args.runtime_port or (9094 if args.dry_run else _free_port())
    secret = state / RUNNER_SECRET if args.dry_run else _runner_secret(state)
    node_argv = supernode_argv(args, port, secret)
    site_runner = runner_argv(args, port, secret)
    if args.dry_run:
        print(shlex.join(site_runner))
        print(shlex.join(node_argv))
        return 0
    sys.stdout.flush()
    return supervise([("flower-supernode", node_argv), ("site-runner", site_runner)])


def supervise(commands: list[tuple[str, list[str]]], grace: float = 15.0) -> int:
    """Run ``commands`` as children until one exits or a signal arrives; stop them all.

    Returns the exit code of the child that ended first (0 after Ctrl-C / SIGTERM).
    """
    stopping: list[int] = []

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    code = 0
    try:
        for name, argv in commands:
            log.info("starting %s: %s", name, shlex.join(argv))
            # own process group: a terminal's Ctrl-C reaches us, and we stop them in order
            procs.append((name, subprocess.Popen(argv, start_new_session=True)))  # noqa: S603
        while not stopping:
            done = [(name, p) for name, p in procs if p.poll() is not None]
            if done:
                name, p = done[0]
                code = p.returncode
                log.warning("%s exited with code %d; stopping the others", name, code)
                break
            time.sleep(0.5)
        else:
            log.info("signal %d: stopping the site runner and the SuperNode", stopping[0])
    finally:
        for _name, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", name, grace)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return code
