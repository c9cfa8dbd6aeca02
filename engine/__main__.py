"""``python -m engine <command>``: argument parsing only; the work is in the API modules.

Each module in :mod:`engine.cli` exposes ``register(subparsers)`` and adds its commands;
this file discovers them, so new commands need no edit here. To start fast, a command is first
looked up in the module of the same name (``conflicts`` → ``engine/cli/conflicts.py``) and only
that module is imported; ``--help`` and other commands import them all. Errors meant for users
(:class:`engine.errors.WorkbenchError`) print as one readable line and exit with the error's
``exit_code`` (2 by default; 3 = stale review decision or held claim, 4 = permission denied).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from engine.errors import WorkbenchError


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``command``, only the CLI module that registers it (fast start).

    A command ``foo-bar`` is looked for first in ``engine/cli/foo_bar.py``; when that module
    does not exist or does not register it (``manifest`` lives in ``conflicts.py``), or when no
    command is given (``--help``), every module is imported, as before.
    """
    if command:
        parser, sub = _new_parser()
        if _register_one(sub, command):
            return parser
    import pkgutil

    import engine.cli

    parser, sub = _new_parser()
    for mod in sorted(m.name for m in pkgutil.iter_modules(engine.cli.__path__)):
        if mod.startswith("_") or mod == "common":
            continue
        module = importlib.import_module(f"engine.cli.{mod}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _new_parser() -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(prog="python -m engine",
                                     description="Medical image segmentation workbench: data, models, review.")
    parser.add_argument("--workspace", help="folder for caches, the review store, the install secret and runs "
                        "(default: $SEGWB_WORKSPACE, else .workspace/ in this checkout, else ~/.cache/segwb)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    return parser, sub


def _register_one(sub: Any, command: str) -> bool:
    """Register ``engine.cli.<command>``'s commands; True if that defines ``command``."""
    name = command.replace("-", "_")
    if not name.isidentifier() or name.startswith("_") or name == "common":
        return False
    try:
        module = importlib.import_module(f"engine.cli.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"engine.cli.{name}":
            raise
        return False
    if not hasattr(module, "register"):
        return False
    module.register(sub)
    return command in sub.choices


def _command_of(argv: list[str]) -> str | None:
    """The command word of ``argv`` (the first argument not an option or an option's value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workspace":
            skip = True
            continue
        if arg.startswith("-"):
            if arg in ("-h", "--help"):
                return None
            continue
        return arg
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if args.workspace:
        import os

        os.environ["SEGWB_WORKSPACE"] = args.workspace
    try:
        if getattr(args, "max_pixels", None) is not None:
            import os

            from engine.io.limits import ENV_VAR, set_max_pixels

            set_max_pixels(args.max_pixels)
            os.environ[ENV_VAR] = str(args.max_pixels)  # worker/training subprocesses inherit it
        return int(args.func(args) or 0)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2) or 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
