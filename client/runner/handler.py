"""Serve one message: gate the app bundle, run the site's own ClientApp, audit it.

The ClientApp run is ``endofed.client.app.app`` from the hospital's installed EndoFed
(imported once, when the runner starts), never code from the bundle. It gets the
message's context with the site-owned settings applied: the coordinator's run-config
values for compute and preprocessing are dropped
(:func:`endofed.client.site_settings.site_owned_run_config`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from endofed.client.runner.audit import audit_entry
from endofed.client.runner.connection import TaskInput
from endofed.client.runner.gate import AppGate
from endofed.client.runner.run_cache import RunCache
from endofed.client.site_settings import site_owned_run_config
from endofed.privacy.reply_policy import (
    APP_NOT_APPROVED,
    SITE_FAILED,
    refusal_reason,
    valid_site_name,
)

log = logging.getLogger(__name__)

ClientAppFn = Callable[[Message, Context], Message]


@dataclass
class Handled:
    """The outcome of one message: the reply, the context to store, the audit entry."""

    reply: Message
    context: Context
    entry: dict[str, Any]
    ok: bool


def _site_name(context: Context) -> str | None:
    name = context.node_config.get("site-name")
    return str(name) if valid_site_name(name) else None


def _error_reply(msg: Message, category: str, site: str | None) -> Message:
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                         reason=refusal_reason(category, site)), reply_to=msg)


class MessageHandler:
    """Turns one task's input into a reply, with the approval gate in front."""

    def __init__(self, gate: AppGate, cache: RunCache, app: ClientAppFn) -> None:
        self.gate = gate
        self.cache = cache
        self.app = app

    def handle(self, task: TaskInput) -> Handled:
        msg, context = task.message, task.context
        site = _site_name(context)
        decision = self.gate.check(task.fab)
        extra: dict[str, Any] = {"pid": os.getpid(), "site": site,
                                 "fab_id": task.run.fab_id, "fab_version": task.run.fab_version}
        if not decision.approved:
            log.warning("refusing run %s (%s message): app %s is not approved at this site "
                        "(%s); none of its code ran", msg.metadata.run_id,
                        msg.metadata.message_type, decision.app_hash[:16], decision.reason)
            reply = _error_reply(msg, APP_NOT_APPROVED, site)
            entry = audit_entry(msg, reply, app_hash=decision.app_hash, refused=True,
                                reason=decision.reason, extra=extra)
            return Handled(reply, context, entry, ok=True)

        self.cache.enter(int(msg.metadata.run_id))
        app_context = Context(
            run_id=context.run_id, node_id=context.node_id,
            node_config=dict(context.node_config), state=context.state,
            run_config=site_owned_run_config(context.run_config, context.node_config),
            series_id=getattr(context, "series_id", 0),
        )
        reason = f"approved ({decision.matched or decision.reason})"
        ok = True
        try:
            reply = self.app(msg, app_context)
        except Exception:  # the ClientApp's own mods turn errors into refusals already
            log.exception("the site's ClientApp failed on a %s message",
                          msg.metadata.message_type)
            reply = _error_reply(msg, SITE_FAILED, site)
            reason, ok = "the site's ClientApp raised (see the runner's log)", False
        context.state = app_context.state  # what the app kept goes back to the SuperNode
        extra.update(self.cache.stats(), threads=torch.get_num_threads())
        entry = audit_entry(msg, reply, app_hash=decision.app_hash, reason=reason,
                            extra=extra)
        return Handled(reply, context, entry, ok=ok)
