"""``python -m engine <command>``: argument parsing only; the work is in the API modules.

Each module in :mod:`engine.cli` exposes ``register(subparsers)`` and adds its commands;
this file discovers them, so new commands need no edit here. Errors meant for users
(:class:`engine.errors.WorkbenchError`) print as one readable line and exit with the error's
``exit_code`` (2 by default; 3 = stale review decision or held claim, 4 = permission denied).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import engine.cli
from engine.errors import WorkbenchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine",
                                     description="Medical image segmentation workbench: data, models, review.")
    parser.add_argument("--workspace", help="folder for caches, review stores and runs "
                        "(default: $SEGWB_WORKSPACE or ~/.cache/segwb)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in sorted(m.name for m in pkgutil.iter_modules(engine.cli.__path__)):
        if mod.startswith("_") or mod == "common":
            continue
        module = importlib.import_module(f"engine.cli.{mod}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workspace:
        import os

        os.environ["SEGWB_WORKSPACE"] = args.workspace
    try:
        return int(args.func(args) or 0)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2) or 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
