"""Shared store flags of the CLI: ``--store URL`` (or ``$SEGWB_STORE_URL``) on every command that
touches the review store. A URL (``sqlite:///…``, ``postgresql://…``) is a shared store keyed by
dataset; a plain file path is a single-dataset store file (the layout of earlier versions).

Where the store, the workspace and the secret are is decided once, by
:func:`engine.install.resolve_settings` (the same resolution ``make serve`` and the app use)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.datasets.base import Dataset
    from engine.store import ReviewStore

STORE_HELP = ("review store: sqlite:///PATH or postgresql://USER@HOST/DB (default: $SEGWB_STORE_URL, else "
              "<workspace>/segwb.sqlite); a plain file path is a single-dataset store file")


def add_store_option(p) -> None:
    p.add_argument("--store", metavar="URL", help=STORE_HELP)


def open_store(args, ds: Dataset | None = None, *, must_exist: bool = False, announce: bool = False) -> ReviewStore:
    """The store named by ``--store`` / ``$SEGWB_STORE_URL`` / the workspace default (for ``ds`` if given).

    ``announce``: say on stderr which store, workspace and secret file this command uses (one line,
    no passwords) and warn when an earlier workspace is no longer the default.
    """
    from engine.errors import StoreError
    from engine.install import resolve_settings
    from engine.store import ReviewStore

    url = getattr(args, "store", None)
    if url and must_exist and "://" not in str(url) and not Path(url).exists():
        raise StoreError("review store not found", path=url, hint="check the path, or omit --store")
    cfg = resolve_settings(workspace=getattr(args, "workspace", None), store=url)
    if announce:
        print(f"segwb: {cfg.describe()}", file=sys.stderr)
        if cfg.note:
            print(f"note: {cfg.note}", file=sys.stderr)
    if ds is not None:
        return ReviewStore.for_dataset(ds, url)
    return ReviewStore(cfg.store_url, masks_dir=cfg.masks_dir)
