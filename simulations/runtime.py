"""Run Flower apps for real, on private processes that are always cleaned up.

Two orchestrators share one design: a temporary ``FLWR_HOME`` whose ``config.toml``
holds a single connection to a SuperLink *we* start on a free loopback port, the
venv's own ``flwr`` CLI for ``flwr run``, and process-tree cleanup on exit (see
:mod:`endofed.shared.util.processes`). Nothing touches ``~/.flwr`` or the machine-wide
"local" SuperLink that ``flwr run .`` would start on a fixed port.

- :class:`LocalSimulationRuntime`: ``flower-superlink --simulation`` (Ray
  simulation runtime) with N virtual SuperNodes.
- :class:`LocalDeployment`: ``flower-superlink`` + one ``flower-supernode`` process
  per site, each with its own ``--node-config``.

Example::

    with LocalSimulationRuntime(app_dir, num_supernodes=3, num_cpus_per_client=1) as rt:
        result = rt.run({"num-server-rounds": 2}, timeout=300).check()
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from endofed.shared.util.processes import (
    MARKER_ENV,
    ManagedProcess,
    kill_remaining,
    marked_processes,
    spawn,
    stop_all,
)
from endofed.simulations.flwr_home import (
    ConfigValue,
    SuperLinkConnection,
    flwr_executable,
    format_run_config,
    write_config_toml,
    write_flower_config,
)

__all__ = [
    "CompletedRun",
    "FlowerRunError",
    "FlowerRunTimeout",
    "LocalDeployment",
    "LocalSimulationRuntime",
    "find_free_port",
    "format_federation_config",
]

logger = logging.getLogger(__name__)

CONNECTION_NAME = "endofed-private"
_RUN_ID_RE = re.compile(r"Successfully started run (\d+)")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
# Ray must not join a cluster named by the caller's environment.
_SCRUBBED_ENV = ("RAY_ADDRESS", "FLWR_HOME")


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class FlowerRunError(RuntimeError):
    """A Flower process or run failed; the message names the log to read."""


class FlowerRunTimeout(FlowerRunError):
    """A run did not finish within its timeout (it was stopped)."""


@dataclass(frozen=True)
class CompletedRun:
    """Outcome of one ``flwr run``.

    ``returncode`` is the ``flwr`` CLI's exit code; ``status`` is the SuperLink's
    final run status (e.g. ``"finished:completed"``, ``"finished:failed"``) when it
    could be queried. ``stdout`` holds the streamed ServerApp logs.
    """

    argv: list[str]
    returncode: int
    run_id: int | None
    status: str | None
    stdout: str
    stderr: str
    stdout_path: Path
    stderr_path: Path
    duration_s: float

    @property
    def ok(self) -> bool:
        """CLI exited 0 and the run (if its status is known) completed."""
        return self.returncode == 0 and (self.status is None or self.status.endswith(":completed"))

    def check(self) -> Self:
        """Return ``self`` if :attr:`ok`, else raise :class:`FlowerRunError`."""
        if not self.ok:
            tail = "\n".join((self.stdout + "\n" + self.stderr).strip().splitlines()[-30:])
            raise FlowerRunError(
                f"flwr run failed (exit code {self.returncode}, run {self.run_id}, "
                f"status {self.status}); logs: {self.stdout_path}, {self.stderr_path}\n{tail}"
            )
        return self


def format_federation_config(config: Mapping[str, ConfigValue]) -> str:
    """Format simulation settings for ``flwr run --federation-config``.

    Keys are the ``SimulationConfig`` fields of flwr 1.41 with ``-`` for ``_``:
    ``num-supernodes``, ``client-resources-num-cpus`` (int), ``client-resources-num-
    gpus`` (float), ``backend``, ``verbose``, ``init-args-num-cpus``,
    ``init-args-num-gpus``, ``init-args-logging-level``, ``init-args-log-to-driver``.
    """
    return format_run_config(config)


def _strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def _parse_json_output(text: str) -> Any:
    """Parse the JSON document printed by a ``flwr ... --format json`` command."""
    text = _strip_ansi(text)
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON object in flwr output: {text[:300]!r}")
    return json.loads(text[start : text.rfind("}") + 1])


def _stop_quietly(ref: weakref.ReferenceType[_FlowerProcesses]) -> None:
    obj = ref()
    if obj is not None:
        obj.stop()


class _FlowerProcesses:
    """Temp ``FLWR_HOME``, a private SuperLink, the ``flwr`` CLI, cleanup."""

    superlink_name = "superlink"

    def __init__(
        self,
        app_dir: Path,
        *,
        env: Mapping[str, str] | None,
        log_dir: Path | None,
        cwd: Path | None,
        startup_timeout: float,
        keep_temp: bool,
    ) -> None:
        self.app_dir = Path(app_dir).expanduser().resolve()
        if not (self.app_dir / "pyproject.toml").is_file():
            raise FileNotFoundError(f"{self.app_dir / 'pyproject.toml'}: no Flower app here")
        _refuse_legacy_federations(self.app_dir / "pyproject.toml")
        self.cwd = Path(cwd).resolve() if cwd is not None else self.app_dir
        self.startup_timeout = startup_timeout
        self.keep_temp = keep_temp
        self.token = uuid.uuid4().hex
        self.temp_dir = Path(tempfile.mkdtemp(prefix="endofed-flwr-"))
        self.flwr_home = self.temp_dir / "flwr_home"
        self.log_dir = Path(log_dir).resolve() if log_dir is not None else self.temp_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = self._build_env(env)
        self.port: int | None = None
        self.superlink: ManagedProcess | None = None
        self.processes: list[ManagedProcess] = []
        self._runs = 0
        self._stopped = False
        atexit.register(_stop_quietly, weakref.ref(self))

    # -- environment -------------------------------------------------------------
    def _build_env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(extra or {})
        # flower-superlink starts flower-superexec (and Ray its workers) by name: make
        # this venv's scripts win even when the venv is not activated (`make test`).
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(
            os.pathsep) if p and p != bin_dir]])
        env.update(
            {
                "FLWR_HOME": str(self.flwr_home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_TELEMETRY_ENABLED": "0",
                "PYTHONUNBUFFERED": "1",
                MARKER_ENV: self.token,
            }
        )
        return env

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (Control, Fleet and Runtime HTTP APIs)."""
        if self.port is None:
            raise RuntimeError("SuperLink not started; use `with` or call start()")
        return f"127.0.0.1:{self.port}"

    # -- SuperLink -----------------------------------------------------------------
    def _superlink_args(self, port: int) -> list[str]:
        raise NotImplementedError

    def _connection(self) -> SuperLinkConnection:
        """The ``flwr`` CLI's connection to our SuperLink (plain HTTP unless overridden)."""
        return SuperLinkConnection(CONNECTION_NAME, self.address, insecure=True)

    def _ssl_context(self) -> ssl.SSLContext | None:
        """Client TLS context trusting the SuperLink's CA (``None``: plain HTTP)."""
        return None

    def _start_superlink(self, attempts: int = 3) -> None:
        last_error: Exception | None = None
        for attempt in range(1, attempts + 1):
            port = find_free_port()
            proc = spawn(
                self.superlink_name,
                [str(flwr_executable("flower-superlink")), *self._superlink_args(port)],
                env=self.env,
                token=self.token,
                log_path=self.log_dir / f"{self.superlink_name}.log",
                cwd=self.cwd,
            )
            self.processes.append(proc)
            try:
                _wait_http_health(port, proc, self.startup_timeout, self._ssl_context())
            except FlowerRunError as exc:  # e.g. port taken in the meantime
                last_error = exc
                logger.warning("SuperLink start attempt %d failed: %s", attempt, exc)
                proc.stop(grace=5.0)
                self.processes.remove(proc)
                continue
            self.port, self.superlink = port, proc
            write_flower_config(self.flwr_home, self._connection())
            logger.info("private SuperLink ready on %s (logs: %s)", self.address, proc.log_path)
            return
        raise FlowerRunError(f"could not start flower-superlink: {last_error}")

    # -- flwr CLI --------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``flwr ARGS`` against the private FLWR_HOME and return its output."""
        argv = [str(flwr_executable("flwr")), *args]
        try:
            return subprocess.run(  # noqa: S603
                argv,
                env=self.env,
                cwd=self.cwd,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise FlowerRunError(f"`{' '.join(argv)}` timed out after {timeout:.0f}s") from exc

    def run_status(self, run_id: int) -> str | None:
        """The SuperLink's status string for ``run_id`` (``None`` if unknown)."""
        res = self.flwr("ls", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json")
        try:
            runs = _parse_json_output(res.stdout).get("runs", [])
        except ValueError:
            logger.warning("could not parse `flwr ls` output: %s", res.stdout + res.stderr)
            return None
        for run in runs:
            if str(run.get("run-id")) == str(run_id):
                return str(run.get("status"))
        return None

    def _final_status(self, run_id: int, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        status = self.run_status(run_id)
        while status is not None and not status.startswith("finished"):
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)
            status = self.run_status(run_id)
        return status

    def _extra_run_args(self) -> list[str]:
        return []

    def run(
        self,
        run_config: Mapping[str, ConfigValue] | None = None,
        *,
        stream: bool = True,
        timeout: float | None = None,
        check: bool = False,
    ) -> CompletedRun:
        """``flwr run <app_dir> <private connection> [--stream] --run-config ...``.

        Waits for the run to finish (with ``stream=False`` by polling its status),
        at most ``timeout`` seconds; on timeout the run and the CLI are stopped and
        :class:`FlowerRunTimeout` is raised. ``check=True`` raises
        :class:`FlowerRunError` unless the run completed.
        """
        if self.superlink is None or self._stopped:
            raise RuntimeError("runtime not started (use it as a context manager)")
        self._runs += 1
        stem = self.log_dir / f"run-{self._runs}"
        argv = [str(flwr_executable("flwr")), "run", str(self.app_dir), CONNECTION_NAME]
        if stream:
            argv.append("--stream")
        if run_config:
            try:
                argv += ["--run-config", format_run_config(run_config)]
            except ValueError:  # value the inline syntax cannot carry
                toml_path = write_config_toml(stem.with_suffix(".toml"), run_config)
                argv += ["--run-config", str(toml_path)]
        argv += self._extra_run_args()
        out_path, err_path = stem.with_suffix(".stdout.log"), stem.with_suffix(".stderr.log")
        logger.info("starting: %s", " ".join(argv))
        start = time.monotonic()
        with out_path.open("w") as out, err_path.open("w") as err:
            cli = subprocess.Popen(  # noqa: S603
                argv, env=self.env, cwd=self.cwd, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                returncode = cli.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                if cli.poll() is None:
                    _kill_group(cli)
        stdout = _strip_ansi(out_path.read_text(encoding="utf-8", errors="replace"))
        stderr = _strip_ansi(err_path.read_text(encoding="utf-8", errors="replace"))
        match = _RUN_ID_RE.search(stdout) or _RUN_ID_RE.search(stderr)
        run_id = int(match.group(1)) if match else None

        status: str | None = None
        if returncode is not None and run_id is not None:
            remaining = None if timeout is None else timeout - (time.monotonic() - start)
            if stream:  # stream ended with the run; status settles within seconds
                status = self._final_status(run_id, timeout=15.0)
            else:
                status = self._final_status(
                    run_id, timeout=math.inf if remaining is None else remaining
                )
            if not stream and status is None:
                raise FlowerRunError(
                    f"run {run_id} was submitted but its status cannot be read "
                    f"(`flwr ls`); see {self.log_dir}"
                )
            if not stream and not status.startswith("finished"):
                returncode = None  # did not finish in time
        if returncode is None:
            if run_id is not None:
                stop = self.flwr("stop", str(run_id), CONNECTION_NAME, timeout=60.0)
                logger.info("stopped run %s: %s", run_id, stop.stdout.strip())
            raise FlowerRunTimeout(
                f"run {run_id} of {self.app_dir} did not finish within {timeout}s and was "
                f"stopped; logs: {out_path}, {self.superlink.log_path if self.superlink else ''}"
            )
        result = CompletedRun(
            argv=argv, returncode=returncode, run_id=run_id, status=status, stdout=stdout,
            stderr=stderr, stdout_path=out_path, stderr_path=err_path,
            duration_s=time.monotonic() - start,
        )  # fmt: skip
        logger.info(
            "run %s finished: exit %d, status %s, %.1fs", run_id, returncode, status,
            result.duration_s,
        )  # fmt: skip
        return result.check() if check else result

    # -- lifecycle -------------------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the processes and wait until they are ready (all stopped on failure)."""
        if self._stopped:
            raise RuntimeError("this runtime was stopped; create a new one")
        if self.superlink is not None:
            return self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process we started (and their descendants); remove temp dirs."""
        if self._stopped:
            return
        self._stopped = True
        stop_all(self.processes, self.token)
        # Ray may still be forking workers while it dies: sweep until nothing is left.
        for _ in range(5):
            leftovers = marked_processes(self.token)
            if not leftovers:
                break
            logger.info("killing processes that outlived shutdown: %s", sorted(leftovers))
            kill_remaining(leftovers, grace=1.0)
            time.sleep(0.2)
        else:
            logger.error("processes %s could not be stopped", sorted(marked_processes(self.token)))
        if not self.keep_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def alive_processes(self) -> dict[int, int]:
        """Live pids (to start times) that carry this runtime's marker."""
        return marked_processes(self.token)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalSimulationRuntime(_FlowerProcesses):
    """A private ``flower-superlink --simulation`` running ``num_supernodes`` virtual nodes.

    Virtual node ``i`` gets node config ``partition-id=i``, ``num-partitions=N`` (the
    simulation runtime sets exactly these two keys; other per-site settings must come
    from the run config). Resources follow flwr 1.41's ``SimulationConfig``:
    ``num_cpus_per_client`` is Ray's per-ClientApp CPU reservation, so at most
    ``backend_num_cpus / num_cpus_per_client`` ClientApps run at once. flwr only
    accepts whole CPUs; a fraction (e.g. ``0.5``) is realised by advertising
    ``ceil(cpus / fraction)`` logical CPUs to Ray and reserving one per ClientApp.

    Args:
        app_dir: directory with the app's ``pyproject.toml``.
        num_supernodes: number of virtual SuperNodes.
        num_cpus_per_client: CPUs reserved per ClientApp (flwr default: 2).
        num_gpus_per_client: GPU fraction per ClientApp (default 0).
        backend_num_cpus: CPUs Ray may use (default: all, ``os.cpu_count()``).
        backend_num_gpus: GPUs Ray may use.
        backend_logging_level: Ray's logging level (flwr default ``"WARNING"``).
        verbose: verbose simulation-runtime logs.
        env: extra environment for all processes.
        log_dir: where process and run logs go (default: a temp dir removed on exit).
        cwd: working directory of all processes, hence of the ServerApp and
            ClientApps (default: ``app_dir``).
    """

    def __init__(
        self,
        app_dir: Path,
        *,
        num_supernodes: int,
        num_cpus_per_client: float | None = None,
        num_gpus_per_client: float | None = None,
        backend_num_cpus: int | None = None,
        backend_num_gpus: int | None = None,
        backend_logging_level: str | None = None,
        verbose: bool | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        cwd: Path | None = None,
        startup_timeout: float = 60.0,
        keep_temp: bool = False,
    ) -> None:
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
        self.federation_config = simulation_federation_config(
            num_supernodes=num_supernodes,
            num_cpus_per_client=num_cpus_per_client,
            num_gpus_per_client=num_gpus_per_client,
            backend_num_cpus=backend_num_cpus,
            backend_num_gpus=backend_num_gpus,
            backend_logging_level=backend_logging_level,
            verbose=verbose,
        )
        self.num_supernodes = num_supernodes
        super().__init__(
            app_dir, env=env, log_dir=log_dir, cwd=cwd, startup_timeout=startup_timeout,
            keep_temp=keep_temp,
        )  # fmt: skip

    def _superlink_args(self, port: int) -> list[str]:
        return [
            "--insecure", "--simulation", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip

    def _extra_run_args(self) -> list[str]:
        return ["--federation-config", format_federation_config(self.federation_config)]

    def _start(self) -> None:
        self._start_superlink()


def simulation_federation_config(
    *,
    num_supernodes: int,
    num_cpus_per_client: float | None = None,
    num_gpus_per_client: float | None = None,
    backend_num_cpus: int | None = None,
    backend_num_gpus: int | None = None,
    backend_logging_level: str | None = None,
    verbose: bool | None = None,
) -> dict[str, ConfigValue]:
    """flwr 1.41 ``--federation-config`` keys for a Ray simulation (None = flwr default)."""
    cfg: dict[str, ConfigValue] = {"num-supernodes": int(num_supernodes)}
    if num_cpus_per_client is not None:
        if num_cpus_per_client <= 0:
            raise ValueError(f"num_cpus_per_client must be > 0, got {num_cpus_per_client}")
        if float(num_cpus_per_client).is_integer():
            cfg["client-resources-num-cpus"] = int(num_cpus_per_client)
        else:  # flwr's field is an int: scale Ray's logical CPUs instead
            cpus = backend_num_cpus or os.cpu_count() or 1
            backend_num_cpus = max(1, math.ceil(cpus / num_cpus_per_client - 1e-9))
            cfg["client-resources-num-cpus"] = 1
    if num_gpus_per_client is not None:
        cfg["client-resources-num-gpus"] = float(num_gpus_per_client)
    if backend_num_cpus is not None:
        cfg["init-args-num-cpus"] = int(backend_num_cpus)
    if backend_num_gpus is not None:
        cfg["init-args-num-gpus"] = int(backend_num_gpus)
    if backend_logging_level is not None:
        cfg["init-args-logging-level"] = backend_logging_level
    if verbose is not None:
        cfg["verbose"] = bool(verbose)
    return cfg


@dataclass
class _Site:
    node_config: dict[str, ConfigValue]
    port: int
    proc: ManagedProcess | None = None
    restarts: int = field(default=0)
    # SuperNode authentication: (private key, public key); the public key is
    # registered with the SuperLink unless ``register`` is False.
    auth_key: tuple[Path, Path] | None = None
    register: bool = True
    trust_ca: bool = True  # False: start without --root-certificates (system CAs)
    node_id: int | None = None


def _existing_file(path: Path | str, what: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"{what} {resolved}: no such file")
    return resolved


class LocalDeployment(_FlowerProcesses):
    """A SuperLink plus one ``flower-supernode`` per site, all on loopback.

    Each site's dict becomes that SuperNode's ``--node-config`` (e.g.
    ``{"data-path": "/data/a", "site-name": "a", "partition-id": 0}``).

    TLS (``insecure=False``): the SuperLink gets ``--ssl-ca-certfile``,
    ``--ssl-certfile`` and ``--ssl-keyfile``; SuperNodes, the ``flwr`` CLI connection
    in the private ``FLWR_HOME`` and the readiness check trust ``root_certificates``
    (default: ``ssl_ca_certfile``). The certificate must name ``127.0.0.1`` (see
    :func:`privacy.certs.generate_certificates`).

    SuperNode authentication (``enable_supernode_auth=True``, needs TLS): the
    SuperLink runs with ``--enable-supernode-auth``; ``auth_keys[i]`` = (private key,
    public key) of site ``i`` in OpenSSH format; each public key is registered with
    ``flwr supernode register`` before the SuperNodes start, and SuperNode ``i`` gets
    ``--auth-supernode-private-key``. A SuperNode whose key is not registered is
    refused by the SuperLink (and exits).
    """

    def __init__(
        self,
        app_dir: Path,
        *,
        sites: Sequence[Mapping[str, ConfigValue]],
        insecure: bool = True,
        root_certificates: Path | None = None,
        ssl_certfile: Path | None = None,
        ssl_keyfile: Path | None = None,
        ssl_ca_certfile: Path | None = None,
        enable_supernode_auth: bool = False,
        auth_keys: Sequence[tuple[Path, Path]] | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        cwd: Path | None = None,
        startup_timeout: float = 60.0,
        keep_temp: bool = False,
    ) -> None:
        if not sites:
            raise ValueError("LocalDeployment needs at least one site")
        self.insecure = insecure
        self.enable_supernode_auth = enable_supernode_auth
        self.ssl_certfile: Path | None = None
        self.ssl_keyfile: Path | None = None
        self.ssl_ca_certfile: Path | None = None
        self.root_certificates: Path | None = None
        tls = {"root_certificates": root_certificates, "ssl_certfile": ssl_certfile,
               "ssl_keyfile": ssl_keyfile, "ssl_ca_certfile": ssl_ca_certfile}  # fmt: skip
        if insecure:
            conflicting = [k for k, v in tls.items() if v is not None]
            if enable_supernode_auth:
                conflicting.append("enable_supernode_auth")
            if conflicting:
                raise ValueError(
                    f"insecure=True conflicts with {conflicting}; pass insecure=False for TLS"
                )
        else:
            files = {k: v for k, v in tls.items() if v is not None}
            missing = [k for k in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certfile")
                       if k not in files]  # fmt: skip
            if missing:
                raise ValueError(f"TLS (insecure=False) needs {missing}")
            files.setdefault("root_certificates", files["ssl_ca_certfile"])
            checked = {k: _existing_file(v, k) for k, v in files.items()}
            self.ssl_certfile = checked["ssl_certfile"]
            self.ssl_keyfile = checked["ssl_keyfile"]
            self.ssl_ca_certfile = checked["ssl_ca_certfile"]
            self.root_certificates = checked["root_certificates"]
        if enable_supernode_auth:
            if auth_keys is None or len(auth_keys) != len(sites):
                raise ValueError(
                    f"enable_supernode_auth needs one (private, public) key pair per site: "
                    f"{len(sites)} site(s), {0 if auth_keys is None else len(auth_keys)} pair(s)"
                )
        elif auth_keys is not None:
            raise ValueError("auth_keys given but enable_supernode_auth is False")
        self.sites = [_Site(dict(s), port=0) for s in sites]
        for i, site in enumerate(self.sites):
            format_run_config(site.node_config)  # validate early
            if auth_keys is not None:
                private, public = auth_keys[i]
                site.auth_key = (
                    _existing_file(private, f"site {i} private key"),
                    _existing_file(public, f"site {i} public key"),
                )
        super().__init__(
            app_dir, env=env, log_dir=log_dir, cwd=cwd, startup_timeout=startup_timeout,
            keep_temp=keep_temp,
        )  # fmt: skip

    # -- TLS -------------------------------------------------------------------------
    def _connection(self) -> SuperLinkConnection:
        if self.insecure:
            return super()._connection()
        return SuperLinkConnection(
            CONNECTION_NAME, self.address, insecure=False,
            root_certificates=self.root_certificates,
        )  # fmt: skip

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.insecure:
            return None
        return ssl.create_default_context(cafile=str(self.root_certificates))

    def _superlink_args(self, port: int) -> list[str]:
        if self.insecure:
            security = ["--insecure"]
        else:
            security = [
                "--ssl-ca-certfile", str(self.ssl_ca_certfile),
                "--ssl-certfile", str(self.ssl_certfile),
                "--ssl-keyfile", str(self.ssl_keyfile),
            ]  # fmt: skip
            if self.enable_supernode_auth:
                security.append("--enable-supernode-auth")
        return [
            *security, "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip

    # -- SuperNodes ------------------------------------------------------------------
    def register_supernode(self, public_key: Path, name: str | None = None) -> int:
        """``flwr supernode register PUBLIC_KEY``: allow a key; returns the node id."""
        args = ["supernode", "register", str(public_key), CONNECTION_NAME, "--format", "json"]
        if name:
            args[4:4] = ["--name", name]
        res = self.flwr(*args)
        try:
            node_id = _parse_json_output(res.stdout).get("node-id")
        except ValueError:
            node_id = None
        if res.returncode != 0 or node_id is None:
            raise FlowerRunError(
                f"could not register SuperNode key {public_key} (exit {res.returncode}): "
                f"{_strip_ansi(res.stdout + res.stderr).strip()[-500:]}"
            )
        logger.info("registered SuperNode key %s as node %s", public_key, node_id)
        return int(node_id)

    def _register_site(self, site: _Site) -> None:
        if site.auth_key is None or not site.register or site.node_id is not None:
            return
        name = site.node_config.get("site-name")
        site.node_id = self.register_supernode(
            site.auth_key[1], name=str(name) if isinstance(name, str) and name else None
        )

    def _start_supernode(self, i: int) -> None:
        site = self.sites[i]
        site.port = find_free_port()
        if self.insecure:
            security = ["--insecure"]
        elif site.trust_ca:
            security = ["--root-certificates", str(self.root_certificates)]
        else:
            security = []  # HTTPS against the system's CA store only
        if site.auth_key is not None:
            security += ["--auth-supernode-private-key", str(site.auth_key[0])]
        argv = [
            str(flwr_executable("flower-supernode")),
            *security,
            "--superlink", self.address,
            "--host", "127.0.0.1",
            "--port", str(site.port),
            "--node-config", format_run_config(site.node_config),
        ]  # fmt: skip
        suffix = f".{site.restarts}" if site.restarts else ""
        site.proc = spawn(
            f"supernode-{i}",
            argv,
            env=self.env,
            token=self.token,
            log_path=self.log_dir / f"supernode-{i}{suffix}.log",
            cwd=self.cwd,
        )
        self.processes.append(site.proc)

    def add_supernode(
        self,
        node_config: Mapping[str, ConfigValue],
        *,
        auth_key: tuple[Path, Path] | None = None,
        register: bool = True,
        trust_ca: bool = True,
        wait: bool = True,
    ) -> int:
        """Start one more SuperNode (e.g. a site joining late); returns its index.

        ``register=False`` starts it with ``auth_key`` but without registering the
        public key; ``trust_ca=False`` starts it without ``--root-certificates``.
        Both exist to check that the SuperLink refuses such nodes: with ``wait=False``
        nothing waits for the node to come online.
        """
        if self.superlink is None or self._stopped:
            raise RuntimeError("deployment not started (use it as a context manager)")
        format_run_config(node_config)
        site = _Site(dict(node_config), port=0, register=register, trust_ca=trust_ca)
        if auth_key is not None:
            site.auth_key = (
                _existing_file(auth_key[0], "private key"),
                _existing_file(auth_key[1], "public key"),
            )
        self.sites.append(site)
        i = len(self.sites) - 1
        self._register_site(site)
        before = len(self.online_nodes()) if wait else 0
        self._start_supernode(i)
        if wait:
            self.wait_for_nodes(count=before + 1)
        return i

    def supernode_process(self, i: int) -> ManagedProcess | None:
        """The running process of SuperNode ``i`` (``None`` if stopped)."""
        return self.sites[i].proc

    def online_nodes(self) -> list[dict[str, Any]]:
        """SuperNodes the SuperLink reports as ``online`` (``flwr supernode list``)."""
        res = self.flwr("supernode", "list", CONNECTION_NAME, "--format", "json")
        try:
            nodes = _parse_json_output(res.stdout).get("nodes", [])
        except ValueError:
            logger.debug("unparsable `flwr supernode list` output: %s", res.stdout + res.stderr)
            return []
        return [n for n in nodes if n.get("status") == "online"]

    def wait_for_nodes(self, count: int | None = None, timeout: float | None = None) -> None:
        """Block until ``count`` (default: all running) SuperNodes are online."""
        count = count if count is not None else sum(s.proc is not None for s in self.sites)
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        online: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for i, site in enumerate(self.sites):
                if site.proc is not None and not site.proc.running():
                    raise FlowerRunError(
                        f"supernode-{i} exited with code {site.proc.popen.returncode}; "
                        f"see {site.proc.log_path}:\n{site.proc.log_tail()}"
                    )
            online = self.online_nodes()
            if len(online) >= count:
                return
            time.sleep(0.5)
        raise FlowerRunError(
            f"only {len(online)} of {count} SuperNodes came online within "
            f"{timeout or self.startup_timeout:.0f}s; logs in {self.log_dir}"
        )

    def _start(self) -> None:
        self._start_superlink()
        for site in self.sites:
            self._register_site(site)
        for i in range(len(self.sites)):
            self._start_supernode(i)
        self.wait_for_nodes()

    def kill_supernode(self, i: int) -> None:
        """Stop SuperNode ``i`` (its whole process tree)."""
        site = self.sites[i]
        if site.proc is None:
            return
        site.proc.stop(grace=5.0)
        site.proc = None

    def restart_supernode(self, i: int, *, wait: bool = True) -> None:
        """(Re)start SuperNode ``i`` with its node config; wait until it is online."""
        self.kill_supernode(i)
        self.sites[i].restarts += 1
        before = len(self.online_nodes()) if wait else 0
        self._start_supernode(i)
        if wait:
            self.wait_for_nodes(count=before + 1)


def _kill_group(popen: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM/SIGKILL a process started with ``start_new_session=True``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(popen.pid, sig)
        except ProcessLookupError:
            break
        try:
            popen.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


def _wait_http_health(
    port: int, proc: ManagedProcess, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> None:
    """Poll ``http(s)://127.0.0.1:port/health`` until ``proc`` itself answers 2xx.

    With ``ssl_context`` the check goes over HTTPS and verifies the SuperLink's
    certificate (so a certificate without the loopback SAN fails here, early).
    """
    scheme = "https" if ssl_context is not None else "http"
    url = f"{scheme}://127.0.0.1:{port}/health"
    bound_marker = f"running on {scheme}://127.0.0.1:{port} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise FlowerRunError(
                f"{proc.name} exited with code {proc.popen.returncode} before becoming "
                f"ready; see {proc.log_path}:\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(  # noqa: S310
                url, timeout=1.0, context=ssl_context
            ) as response:
                healthy = 200 <= response.status < 300
        except (urllib.error.URLError, OSError):
            healthy = False
        # The answer must come from *our* process (the free port may have been taken
        # by another SuperLink in between): it logs the address it bound.
        if healthy and bound_marker in proc.log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise FlowerRunError(
        f"{proc.name} did not answer {url} within {timeout:.0f}s; see {proc.log_path}"
    )


def _refuse_legacy_federations(pyproject: Path) -> None:
    """``flwr run`` rewrites pyproject.toml files that still hold [tool.flwr.federations]."""
    with pyproject.open("rb") as fh:
        data = tomllib.load(fh)
    if "federations" in data.get("tool", {}).get("flwr", {}):
        raise ValueError(
            f"{pyproject}: [tool.flwr.federations] is legacy in flwr 1.41 and `flwr run` "
            "would comment it out (editing the file); remove the section, "
            "LocalSimulationRuntime/LocalDeployment configure the federation themselves"
        )
