"""The long-lived site runner loop: claim a task, serve its message, push, audit, repeat."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import httpx

from endofed.client.runner.connection import RuntimeConnection
from endofed.client.runner.gate import AppGate
from endofed.client.runner.handler import ClientAppFn, MessageHandler
from endofed.client.runner.run_cache import RunCache

log = logging.getLogger(__name__)


def installed_client_app() -> ClientAppFn:
    """The hospital's own EndoFed ClientApp (imported from this environment)."""
    from endofed.client.app import app

    return lambda msg, ctx: app(message=msg, context=ctx)


class SiteRunner:
    """Serves one SuperNode's ClientApp tasks until stopped.

    ``state_dir`` holds the site's approvals and audit trail; ``poll`` is the pause
    between empty task claims.
    """

    def __init__(self, connection: RuntimeConnection, state_dir: Path, *,
                 app: ClientAppFn | None = None, poll: float = 0.2,
                 idle_release: float = 900.0) -> None:
        from endofed.privacy.audit_trail import AuditTrail

        self.connection = connection
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.trail = AuditTrail(self.state_dir / "audit-trail.jsonl")
        self.cache = RunCache(idle_release=idle_release)
        self.handler = MessageHandler(AppGate(self.state_dir), self.cache,
                                      app or installed_client_app())
        self.poll = poll
        self.served = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT finish the message in progress, then stop."""
        def _handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping after the current message", signum)
            self.stop()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    def serve(self, max_messages: int | None = None) -> int:
        """Serve tasks until :meth:`stop` (or ``max_messages``); returns messages served."""
        while not self._stop.is_set():
            try:
                task = self.connection.acquire()
            except httpx.TransportError as exc:
                log.warning("SuperNode Runtime API unreachable (%s); retrying", exc)
                self._stop.wait(2.0)
                continue
            if task is None:
                self.cache.tick()
                self._stop.wait(self.poll)
                continue
            self.serve_task(task)
            if max_messages is not None and self.served >= max_messages:
                break
        return self.served

    def serve_task(self, task) -> None:  # noqa: ANN001 - a ClaimedTask
        """Pull, gate, run, push and audit one claimed task."""
        t0 = time.perf_counter()
        with self.connection.session(task) as session:
            context = None
            try:
                inp = session.pull_input()
                context = inp.context
                handled = self.handler.handle(inp)
                context = handled.context
                session.push_reply(handled.reply, handled.context)
                handled.entry["seconds"] = round(time.perf_counter() - t0, 3)
                self.trail.append(handled.entry)
                session.finish(handled.context, ok=handled.ok)
                log.info("run %s: %s message -> %s in %.2fs", task.run_id,
                         inp.message.metadata.message_type, handled.entry["outcome"],
                         time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - one bad task must not end the site
                log.exception("task %d of run %s failed", task.task_id, task.run_id)
                try:
                    session.finish(context, ok=False, details=f"site runner: {type(exc).__name__}")
                except Exception:  # noqa: BLE001
                    log.exception("could not report the failure of task %d", task.task_id)
            finally:
                self.served += 1
