"""The SuperNode's Runtime (ClientAppIo) API as the site runner uses it.

Claiming a task (``AcquireTask``, optionally HMAC-authenticated with the SuperNode's
``--superexec-auth-secret-file``) gives a one-task token; with it the runner pulls the
task's message, context, run and FAB, pushes one reply and finally the task's output
(status and context). While a task runs, a heartbeat keeps it alive on the SuperNode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from flwr.app import Context, Message
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

log = logging.getLogger(__name__)

_ACQUIRE_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})
# The SuperNode creates the task before it has fetched the message's objects from the
# SuperLink; Flower's defaults retry an object that is not there yet after 1, 2, 4...
# up to 10 s. The runner is waiting for nothing else, so it asks again sooner.
PULL_INITIAL_BACKOFF = 0.05
PULL_BACKOFF_CAP = 0.5


@dataclass(frozen=True)
class ClaimedTask:
    """A task this runner claimed: its id, run id and one-task token."""

    task_id: int
    run_id: int
    token: str


@dataclass
class TaskInput:
    """What the SuperNode holds for a task (nothing of the FAB is executed here)."""

    message: Message
    context: Context
    run: Run
    fab: Fab


class RuntimeConnection:
    """Claims ClientApp tasks from one SuperNode's Runtime API."""

    def __init__(self, address: str, *, insecure: bool = True,
                 root_certificates: bytes | None = None,
                 auth_secret: bytes | None = None) -> None:
        self.address = address
        self.insecure = insecure
        self.root_certificates = root_certificates
        interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if auth_secret:
            interceptors.append(SuperExecAuthHttpInterceptor(
                master_secret=auth_secret, protected_methods=_ACQUIRE_METHODS))
        self._client = RuntimeHttpClient.from_server_address(
            server_address=address, insecure=insecure, root_certificates=root_certificates,
            interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker(),
        )

    def close(self) -> None:
        self._client.close()

    def acquire(self) -> ClaimedTask | None:
        """Claim the oldest pending ClientApp task, if any (``None``: nothing to do).

        Raises:
            httpx.TransportError: the SuperNode's Runtime API is not reachable.
        """
        res = self._client.AcquireTask(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        if not res.HasField("task") or not res.token:
            return None
        return ClaimedTask(task_id=res.task.task_id, run_id=res.task.run_id,
                           token=res.token)

    def wait_ready(self, timeout: float, poll: float = 0.5) -> None:
        """Block until the Runtime API answers (the SuperNode may start after us)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._client.AcquireTask(AcquireTaskRequest())  # empty: claims nothing
                return
            except httpx.TransportError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the SuperNode's Runtime API at {self.address} did not answer "
                        f"within {timeout:.0f}s ({exc})"
                    ) from exc
                time.sleep(poll)

    @contextmanager
    def session(self, task: ClaimedTask) -> Iterator[TaskSession]:
        """A client authenticated with the task's token, with a running heartbeat."""
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.insecure,
            root_certificates=self.root_certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(task.token)],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        session = TaskSession(client, task)
        session.start_heartbeat()
        try:
            yield session
        finally:
            session.stop_heartbeat()
            client.close()


class TaskSession:
    """One claimed task: pull its input, push its reply and its final status."""

    def __init__(self, client: RuntimeHttpClient, task: ClaimedTask) -> None:
        self.client = client
        self.task = task
        self.lost = False  # the SuperNode no longer knows the task (expired)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"heartbeat-{task.task_id}")

    def start_heartbeat(self) -> None:
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        # Unlike Flower's HeartbeatSender, a rejected heartbeat does not signal SIGINT to
        # the whole (long-lived) process: the task is marked lost and the runner goes on.
        interval = HEARTBEAT_DEFAULT_INTERVAL * 0.5
        while not self._stop.wait(interval):
            try:
                ok = self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success
            except httpx.HTTPError as exc:
                log.debug("heartbeat of task %d failed: %s", self.task.task_id, exc)
                continue
            if not ok:
                log.warning("the SuperNode dropped task %d (heartbeat refused)",
                            self.task.task_id)
                self.lost = True
                return

    def pull_input(self) -> TaskInput:
        """The task's message, context, run and FAB (bytes only, never unpacked here).

        As Flower's ``run_clientapp.pull_task_input``, with a short retry for objects
        the SuperNode is still fetching.
        """
        res = self.client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id = res.task_id
        TaskIdentity.run_id = res.run.run_id
        TaskIdentity.node_id = res.context.node_id
        context = context_from_proto(res.context)
        run = run_from_proto(res.run)
        fab = fab_from_proto(res.fab)
        msgs = self.client.PullMessages(PullAppMessagesRequest())
        if not msgs.messages_list:
            raise RuntimeError("the SuperNode has no message for this task")
        node = Node(node_id=context.node_id)
        tree = msgs.message_object_trees[0]
        message = pull_and_inflate_object_from_tree(
            tree,
            make_pull_object_fn_protobuf(self.client.PullObject, node, context.run_id),
            make_confirm_message_received_fn_protobuf(
                self.client.ConfirmMessageReceived, node, context.run_id),
            return_type=Message,
            initial_backoff=PULL_INITIAL_BACKOFF, backoff_cap=PULL_BACKOFF_CAP,
        )
        message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower does
        return TaskInput(message=message, context=context, run=run, fab=fab)

    def push_reply(self, reply: Message, context: Context) -> None:
        push_message(self.client, reply, context)

    def finish(self, context: Context | None, *, ok: bool, details: str = "") -> None:
        """Push the task's final status (and the context whose state it updated)."""
        push_task_output(self.client, context,
                         SubStatus.COMPLETED if ok else SubStatus.FAILED, details)
