"""A private Flower SuperLink on loopback: start, ``flwr run`` against it, stop.

:class:`PrivateSuperLink` is the base of the two orchestrators
(:class:`~endofed.simulations.simulation_runtime.LocalSimulationRuntime`,
:class:`~endofed.simulations.deployment.LocalDeployment`): a temporary
``FLWR_HOME`` whose ``config.toml`` holds a single connection to a SuperLink *we*
start on a free loopback port, the venv's own ``flwr`` CLI for ``flwr run``, and
process-tree cleanup on exit (:mod:`endofed.shared.util.processes`). Nothing touches
``~/.flwr`` or the machine-wide "local" SuperLink that ``flwr run .`` would start on
a fixed port.
"""

from __future__ import annotations

import atexit
import logging
import math
import shutil
import ssl
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from endofed.shared.util.processes import (
    MARKER_ENV,
    ManagedProcess,
    kill_remaining,
    marked_processes,
    spawn,
    stop_all,
)
from endofed.simulations.flwr_cli import (
    flwr_executable,
    parse_json_output,
    parse_run_id,
    strip_ansi,
)
from endofed.simulations.flwr_home import (
    CONNECTION_NAME,
    SuperLinkConnection,
    private_environment,
    write_flower_config,
)
from endofed.simulations.flwr_run import (
    CompletedRun,
    FlowerRunError,
    FlowerRunTimeout,
    flower_app_dir,
    log_progress,
    run_cli,
    run_config_args,
)
from endofed.simulations.loopback import LOOPBACK, find_free_port, wait_http_health
from endofed.simulations.run_config import ConfigValue

logger = logging.getLogger(__name__)


def _stop_quietly(ref: weakref.ReferenceType[PrivateSuperLink]) -> None:
    obj = ref()
    if obj is not None:
        obj.stop()


class PrivateSuperLink:
    """Temp ``FLWR_HOME``, a private SuperLink, the ``flwr`` CLI, cleanup.

    Subclasses say how the SuperLink starts (:meth:`_superlink_args`), what else
    starts with it (:meth:`_start`) and what ``flwr run`` needs besides the run
    config (:meth:`_extra_run_args`). Use it as a context manager: every process is
    stopped (with its descendants) on exit, and at interpreter exit at the latest.
    """

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
        self.app_dir = flower_app_dir(app_dir)
        self.cwd = Path(cwd).resolve() if cwd is not None else self.app_dir
        self.startup_timeout = startup_timeout
        self.keep_temp = keep_temp
        self.token = uuid.uuid4().hex
        self.temp_dir = Path(tempfile.mkdtemp(prefix="endofed-flwr-"))
        self.flwr_home = self.temp_dir / "flwr_home"
        self.log_dir = Path(log_dir).resolve() if log_dir is not None else self.temp_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**private_environment(self.flwr_home, env), MARKER_ENV: self.token}
        self.port: int | None = None
        self.superlink: ManagedProcess | None = None
        self.processes: list[ManagedProcess] = []
        self._runs = 0
        self._stopped = False
        atexit.register(_stop_quietly, weakref.ref(self))

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (Control, Fleet and Runtime HTTP APIs)."""
        if self.port is None:
            raise RuntimeError("SuperLink not started; use `with` or call start()")
        return f"{LOOPBACK}:{self.port}"

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
                wait_http_health(port, proc, self.startup_timeout, self._ssl_context())
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
            runs = parse_json_output(res.stdout).get("runs", [])
        except ValueError:
            logger.warning("could not parse `flwr ls` output: %s", res.stdout + res.stderr)
            return None
        for run in runs:
            if str(run.get("run-id")) == str(run_id):
                return str(run.get("status"))
        return None

    def _final_status(self, run_id: int, timeout: float) -> str | None:
        """Poll :meth:`run_status` until it is ``finished:...`` or ``timeout`` passed."""
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
        on_line: Callable[[str], None] | None = log_progress,
    ) -> CompletedRun:
        """``flwr run <app_dir> <private connection> [--stream] --run-config ...``.

        Waits for the run to finish (with ``stream=False`` by polling its status),
        at most ``timeout`` seconds; on timeout the run and the CLI are stopped and
        :class:`FlowerRunTimeout` is raised. ``check=True`` raises
        :class:`FlowerRunError` unless the run completed. While streaming, each line of
        the ServerApp's output goes to ``on_line`` (default: its per-round progress
        lines are logged, so the terminal is not silent; ``None``: only the log file).
        """
        if self.superlink is None or self._stopped:
            raise RuntimeError("runtime not started (use it as a context manager)")
        self._runs += 1
        stem = self.log_dir / f"run-{self._runs}"
        argv = [
            str(flwr_executable("flwr")), "run", str(self.app_dir), CONNECTION_NAME,
            *(["--stream"] if stream else []),
            *run_config_args(run_config or {}, stem.with_suffix(".toml")),
            *self._extra_run_args(),
        ]  # fmt: skip
        out_path, err_path = stem.with_suffix(".stdout.log"), stem.with_suffix(".stderr.log")
        start = time.monotonic()
        returncode = run_cli(argv, env=self.env, cwd=self.cwd, stdout_path=out_path,
                             stderr_path=err_path, timeout=timeout,
                             on_line=on_line if stream else None)
        stdout = strip_ansi(out_path.read_text(encoding="utf-8", errors="replace"))
        stderr = strip_ansi(err_path.read_text(encoding="utf-8", errors="replace"))
        run_id = parse_run_id(stdout, stderr)

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

