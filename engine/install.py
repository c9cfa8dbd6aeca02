"""Where this install keeps its things: one resolution of the workspace, the review store, the
corrected-masks folder and the install secret, used alike by ``make``, the CLI and the app.

Each value is taken from the first of:

1. an explicit argument (the CLI's ``--workspace DIR`` / ``--store URL``),
2. the environment (``$SEGWB_WORKSPACE``, ``$SEGWB_STORE_URL``, ``$SEGWB_MASKS_DIR``),
3. the default: the workspace is ``<checkout>/.workspace`` when the engine runs from a checkout of
   this project (the folder holding ``app.py`` and ``engine/``), else ``~/.cache/segwb``
   (:func:`engine.workspace.resolve_root`); the store is ``<workspace>/segwb.sqlite``; masks go to
   ``<store folder>/masks`` for SQLite and ``<workspace>/masks`` for PostgreSQL; the secret is
   always ``<workspace>/secret.key``.

So ``python -m engine users add ada --role admin`` run in a checkout writes the store that
``make serve`` checks, and both use the same secret (the same patient keys). Store locations are
checked (:func:`engine.store.location.check_store_location`): only ``sqlite:///PATH``,
``postgresql://…`` and plain file paths, and a new SQLite store only in an existing folder or
inside the workspace. Light: the standard library only; nothing is created here.

Example:
    >>> s = resolve_settings(workspace="/tmp/ws")                       # doctest: +SKIP
    >>> s.store_url, s.secret_file                                        # doctest: +SKIP
    ('sqlite:////tmp/ws/segwb.sqlite', PosixPath('/tmp/ws/secret.key'))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InstallSettings:
    """The resolved locations (absolute paths) and where each came from.

    ``*_from`` is ``"argument"``, the environment variable's name (``"$SEGWB_WORKSPACE"``),
    ``"checkout"``, ``"home"`` or ``"default"``. ``note`` warns about an earlier workspace that
    the default no longer points at ('' when none).
    """

    workspace: Path
    workspace_from: str
    store_url: str
    store_from: str
    masks_dir: Path
    masks_from: str
    secret_file: Path
    note: str = ""

    @property
    def store_display(self) -> str:
        """The store URL with any password hidden."""
        from engine.store.location import display_store_url

        return display_store_url(self.store_url)

    def describe(self) -> str:
        """One line for logs and the CLI's stderr (no passwords, no secret)."""
        return (f"store {self.store_display} ({self.store_from}); workspace {self.workspace} "
                f"({self.workspace_from}); masks {self.masks_dir}; secret {self.secret_file}")

    def to_dict(self) -> dict[str, Any]:
        return {"workspace": str(self.workspace), "workspace_from": self.workspace_from,
                "store": self.store_display, "store_from": self.store_from, "masks_dir": str(self.masks_dir),
                "masks_from": self.masks_from, "secret_file": str(self.secret_file)}


def resolve_settings(workspace: str | Path | None = None, store: str | Path | None = None,
                     masks_dir: str | Path | None = None) -> InstallSettings:
    """Resolve the workspace, store URL, masks folder and secret file (see the module docstring).

    Args:
        workspace: explicit workspace folder (CLI ``--workspace``); None → environment/default.
        store: explicit store URL or file path (CLI ``--store``); None → ``$SEGWB_STORE_URL``/default.
        masks_dir: explicit masks folder; None → ``$SEGWB_MASKS_DIR``/default.

    Raises:
        ConfigError: a malformed store URL, or a new SQLite store in a folder that does not exist.
    """
    from engine.phi import SECRET_NAME
    from engine.store.location import (
        MASKS_DIR,
        MASKS_DIR_ENV,
        STORE_URL_ENV,
        WORKSPACE_STORE_NAME,
        check_store_location,
        default_store_url,
        sqlite_file,
    )
    from engine.workspace import WORKSPACE_ENV, home_root, resolve_root

    folder, ws_from = resolve_root(workspace)
    ws = folder.resolve()

    if store is not None and str(store).strip():
        url, store_from = check_store_location(store, ws), "argument"
    else:  # $SEGWB_STORE_URL (checked) or the workspace store: the one rule of default_store_url
        url = default_store_url(ws)
        store_from = f"${STORE_URL_ENV}" if os.environ.get(STORE_URL_ENV, "").strip() else "default"

    env_masks = os.environ.get(MASKS_DIR_ENV, "").strip()
    if masks_dir is not None and str(masks_dir).strip():
        masks, masks_from = Path(masks_dir).expanduser().resolve(), "argument"
    elif env_masks:
        masks, masks_from = Path(env_masks).expanduser().resolve(), f"${MASKS_DIR_ENV}"
    else:
        db_file = sqlite_file(url)
        masks = (db_file.resolve().parent if db_file is not None else ws) / MASKS_DIR
        masks_from = "default"

    note = ""
    old = home_root()
    if (ws_from == "checkout" and store_from == "default" and not (ws / WORKSPACE_STORE_NAME).exists()
            and (old / WORKSPACE_STORE_NAME).exists()):
        note = (f"an earlier store exists in {old} (the default outside a checkout); to keep using it and its "
                f"secret, pass --workspace {old} or set {WORKSPACE_ENV}={old}")
    return InstallSettings(workspace=ws, workspace_from=ws_from, store_url=url, store_from=store_from,
                           masks_dir=masks, masks_from=masks_from, secret_file=ws / SECRET_NAME, note=note)
