"""The ``endofed`` command: one registry of subcommands, each defined next to its code.

Every subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func``. Modules are imported lazily so ``endofed --help`` stays fast.

Errors: a mistake the user can fix (bad config, a missing or unreadable file, an unusable
site folder, a refused privacy budget, Ctrl-C) is printed as one line
``endofed COMMAND: message`` on stderr with exit code 2 (:data:`EXIT_USER_ERROR`); any
other failure as one line naming the exception, with exit code 1. The traceback is
shown only with ``--debug`` (before or after the command name); ``-v`` turns on debug
logging.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any

from endofed.commands._common import HelpFormatter
from endofed.shared.config import ConfigError

#: Exit code of a mistake the user can fix (argparse uses it for bad flags too).
EXIT_USER_ERROR = 2
#: Exit code of any other failure (a bug, a crashed federation).
EXIT_FAILURE = 1

# name -> module that defines ``register(subparsers)``
COMMANDS: dict[str, str] = {
    "synth": "endofed.commands.synth",
    "site": "endofed.commands.site",
    "preprocess": "endofed.commands.preprocess",
    "train": "endofed.commands.train",
    "evaluate": "endofed.commands.evaluate",
    "predict": "endofed.commands.predict",
    "export": "endofed.commands.export",
    "report": "endofed.commands.report",
    "simulate": "endofed.commands.simulate",
    "certs": "endofed.commands.certs",
    "privacy-audit": "endofed.commands.audit",
    "demo": "endofed.commands.demo",
    "overlay-detector": "endofed.commands.overlay",
    "dashboard": "endofed.commands.dashboard",
    "app": "endofed.commands.app",
}

#: Old command name -> new name: still accepted for one release, with a deprecation line.
DEPRECATED_COMMANDS: dict[str, str] = {
    "audit": "privacy-audit",  # it is a membership-inference privacy audit
    "overlay": "overlay-detector",  # the overlay-noise detector, not a predict overlay
}

#: Exceptions (besides :class:`ConfigError`, ``OSError`` and ``KeyboardInterrupt``) that
#: mean "the user can fix this", by qualified name: matching by name keeps torch and the
#: data stack out of ``endofed --help``. ``tests/config/test_cli_errors.py`` checks that
#: every name still resolves. A new user-facing error: subclass ConfigError, or add it.
USER_ERRORS: frozenset[str] = frozenset({
    "endofed.shared.data.layouts._base.SiteDataError",
    "endofed.shared.data.layouts._base.ImageReadError",
    "endofed.shared.data.partition.PartitionError",
    "endofed.shared.data.labels.ClassMismatchError",
    "endofed.client.site.SiteConfigError",
    "endofed.privacy.accounting.PrivacyBudgetError",
    "endofed.privacy.ledger.LedgerError",
    "endofed.simulations.experiment_spec.ExperimentError",
    "endofed.shared.model.weights.UnreadableFileError",
    "endofed.shared.data.layouts._base.UnreadableFileError",
    "endofed.shared.engine.trainer.ResumeError",
    "endofed.privacy.approvals.ApprovalError",
    "endofed.privacy.audit_trail.AuditTrailError",
})


def _add_global_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v`` and ``--debug``; on subcommands they only override when given."""
    extra = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging", **extra)
    parser.add_argument("--debug", action="store_true",
                        help="debug logging and the full traceback of an error", **extra)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (commands and their actions, e.g. ``site check``)."""
    out = []
    for action in parser._actions:  # argparse keeps subparsers only there
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases: once
                out += [child, *_subparsers(child)]
    return out


def _installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def version_text() -> str:
    """``endofed X`` and, on a second line, the torch and Flower versions (read from the
    installed metadata: nothing is imported)."""
    return (f"endofed {_installed('endofed')}\n"
            f"torch {_installed('torch')}, flwr {_installed('flwr')}, Python "
            f"{sys.version.split()[0]}")


def build_parser() -> argparse.ArgumentParser:
    """The ``endofed`` parser with every registered command (their help shares
    :class:`HelpFormatter`: defaults shown, epilog examples kept as written)."""
    parser = argparse.ArgumentParser(
        prog="endofed",
        description="Federated lesion detection for endoscopic images.",
        epilog="example:\n  endofed demo --out runs/demo\n  endofed train site_a site_b "
               "--out runs/central\n\n'endofed COMMAND --help' explains each command.",
        formatter_class=HelpFormatter,
    )
    _add_global_flags(parser, top=True)
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the EndoFed, torch and Flower versions and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # command not built yet
                continue
            raise
        mod.register(sub)
    for child in _subparsers(parser):
        _add_global_flags(child, top=False)
        if child.formatter_class in (argparse.HelpFormatter,
                                     argparse.RawDescriptionHelpFormatter):
            child.formatter_class = HelpFormatter
    return parser


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a mistake the user can fix (exit code 2, no traceback)."""
    if isinstance(exc, ConfigError | OSError | KeyboardInterrupt):
        return True
    return any(f"{c.__module__}.{c.__qualname__}" in USER_ERRORS for c in type(exc).__mro__)


def describe_error(exc: BaseException) -> tuple[int, str]:
    """``(exit code, one line)`` for an error that reached the command line."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_USER_ERROR, "interrupted"
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or type(exc).__name__
        return EXIT_USER_ERROR, f"{exc.filename}: {what}"
    text = " ".join(str(exc).split("\n", 1)[0].split()) or type(exc).__name__
    if is_user_error(exc):
        return EXIT_USER_ERROR, text
    return EXIT_FAILURE, f"{type(exc).__name__}: {text} (--debug shows the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose or args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    if args.command in DEPRECATED_COMMANDS:
        new = DEPRECATED_COMMANDS[args.command]
        print(f"endofed: deprecated: 'endofed {args.command}' is now 'endofed {new}'; "
              "the old name goes away in the next release", file=sys.stderr)
        args.command = new
    prefix = f"endofed {args.command}"
    previous = _terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a command's own one-line refusal
            message = exc.code
            print(message if message.startswith("endofed") else f"{prefix}: {message}",
                  file=sys.stderr)
            exc.code = EXIT_USER_ERROR  # str(exc) keeps the message
        raise
    except (Exception, KeyboardInterrupt) as exc:
        code, line = describe_error(exc)
        if args.debug:
            traceback.print_exc()
        print(f"{prefix}: {line}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _terminate_as_interrupt() -> Any:
    """SIGTERM (a service manager, ``kill``) unwinds like Ctrl-C, so a command's cleanup
    runs: ``simulate`` stops its private SuperLink instead of leaving it orphaned.
    Returns the previous handler (``None`` off the main thread, where none is set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


if __name__ == "__main__":
    sys.exit(main())
