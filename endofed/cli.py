"""The ``endofed`` command: one registry of subcommands, each defined next to its code.

Every subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func``. Modules are imported lazily so ``endofed --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from endofed.shared.config import ConfigError

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
    "audit": "endofed.commands.audit",
    "demo": "endofed.commands.demo",
    "overlay": "endofed.commands.overlay",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="endofed",
        description="Federated lesion detection for endoscopic images.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # command not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        if args.verbose:
            raise
        # A setting the user can fix: one line naming the key, no traceback.
        print(f"endofed {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
