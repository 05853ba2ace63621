"""One ``flwr run``: its ``--run-config`` arguments, the CLI process, its outcome."""

from __future__ import annotations

import logging
import subprocess
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

from endofed.server.progress import progress_text
from endofed.shared.util.processes import stop_group
from endofed.simulations.flwr_cli import strip_ansi
from endofed.simulations.run_config import ConfigValue, format_run_config, write_config_toml

logger = logging.getLogger(__name__)
progress_log = logging.getLogger("endofed.progress")


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


def flower_app_dir(app_dir: Path) -> Path:
    """``app_dir`` resolved, once it is an app ``flwr run`` can run as it is.

    Raises FileNotFoundError without a ``pyproject.toml`` and ValueError if that file
    still holds ``[tool.flwr.federations]`` (``flwr run`` would comment it out,
    editing the file).
    """
    app_dir = Path(app_dir).expanduser().resolve()
    pyproject = app_dir / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(f"{pyproject}: no Flower app here")
    with pyproject.open("rb") as fh:
        data = tomllib.load(fh)
    if "federations" in data.get("tool", {}).get("flwr", {}):
        raise ValueError(
            f"{pyproject}: [tool.flwr.federations] is legacy in flwr 1.41 and `flwr run` "
            "would comment it out (editing the file); remove the section, "
            "LocalSimulationRuntime/LocalDeployment configure the federation themselves"
        )
    return app_dir


def run_config_args(config: Mapping[str, ConfigValue], toml_path: Path) -> list[str]:
    """``["--run-config", ...]`` for ``config`` (``[]`` if empty).

    Inline ``key=value`` pairs when flwr can parse them back, else ``config`` is
    written to ``toml_path`` and the file is passed.
    """
    if not config:
        return []
    try:
        return ["--run-config", format_run_config(config)]
    except ValueError:  # a value the inline syntax cannot carry
        return ["--run-config", str(write_config_toml(toml_path, config))]


def run_cli(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdout_path: Path,
    stderr_path: Path,
    timeout: float | None,
    on_line: Callable[[str], None] | None = None,
) -> int | None:
    """Run ``argv`` in its own session, output to the two files; its exit code.

    ``None`` if it did not exit within ``timeout`` seconds: its process group is
    then stopped (SIGTERM, SIGKILL after 5 s). With ``on_line`` every stdout line (the
    streamed ServerApp logs of ``flwr run --stream``) is also handed to it as it comes,
    ANSI colours removed, so a caller can show progress while the run goes on.
    """
    logger.info("starting: %s", " ".join(argv))
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        cli = subprocess.Popen(  # noqa: S603
            argv, env=dict(env), cwd=cwd, stdout=out if on_line is None else subprocess.PIPE,
            stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        reader = None
        if on_line is not None:
            reader = threading.Thread(target=_tee, args=(cli.stdout, out, on_line),
                                      name="flwr-run-stdout", daemon=True)
            reader.start()
        try:
            return cli.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if cli.poll() is None:
                stop_group(cli, grace=5.0, name=Path(argv[0]).name)
            if reader is not None:
                reader.join(timeout=10.0)


def _tee(pipe: IO[bytes], out: IO[str], on_line: Callable[[str], None]) -> None:
    """Copy ``pipe`` into ``out`` line by line, handing each line to ``on_line``."""
    for raw in iter(pipe.readline, b""):
        text = raw.decode("utf-8", errors="replace")
        out.write(text)
        out.flush()
        try:
            on_line(strip_ansi(text).rstrip("\n"))
        except Exception:  # a display problem must never stop the run
            logger.exception("progress display failed")
    pipe.close()


def log_progress(line: str) -> None:
    """``on_line`` that logs the ServerApp's per-round progress lines (logger
    ``endofed.progress``, INFO: on the terminal of ``endofed demo`` / ``simulate``)."""
    text = progress_text(line)
    if text is not None:
        progress_log.info("%s", text)
