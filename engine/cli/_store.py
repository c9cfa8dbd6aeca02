"""Shared store flags of the CLI: ``--store URL`` (or ``$SEGWB_STORE_URL``) on every command that
touches the review store. A URL (``sqlite:///…``, ``postgresql://…``) is a shared store keyed by
dataset; a plain file path is a single-dataset store file (the layout of earlier versions)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.datasets.base import Dataset
    from engine.store import ReviewStore

STORE_HELP = ("review store: sqlite:///PATH or postgresql://USER@HOST/DB (default: $SEGWB_STORE_URL, else "
              "<workspace>/segwb.sqlite); a plain file path is a single-dataset store file")


def add_store_option(p) -> None:
    p.add_argument("--store", metavar="URL", help=STORE_HELP)


def open_store(args, ds: Dataset | None = None, *, must_exist: bool = False) -> ReviewStore:
    """The store named by ``--store`` / ``$SEGWB_STORE_URL`` / the workspace default (for ``ds`` if given)."""
    from engine.errors import StoreError
    from engine.store import ReviewStore, default_store_url

    url = getattr(args, "store", None)
    if url and must_exist and "://" not in str(url) and not Path(url).exists():
        raise StoreError("review store not found", path=url, hint="check the path, or omit --store")
    if ds is not None:
        return ReviewStore.for_dataset(ds, url)
    return ReviewStore(url or default_store_url())
