"""Where a review store lives: the store URL, the masks folder and each dataset's key in a shared store.

- ``$SEGWB_STORE_URL`` when set (``sqlite:///PATH`` or ``postgresql://USER@HOST/DB``), else one
  SQLite file per workspace, ``<workspace>/segwb.sqlite`` (:func:`default_store_url`).
- Datasets share it, each under its own *dataset key* (:func:`dataset_key`: the name of its
  workspace folder, e.g. ``nerve-1a2b3c4d``).
- Corrected masks are content-addressed PNGs in ``<workspace>/masks`` (or ``$SEGWB_MASKS_DIR``).
- ``review.sqlite`` in a dataset's workspace folder is the legacy single-dataset file of earlier
  versions (imported by :mod:`engine.store.legacy`).

Light (the standard library only), like :mod:`engine.store.records`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.datasets.base import Dataset

STORE_NAME = "review.sqlite"        # the legacy single-dataset file in a dataset's workspace folder
WORKSPACE_STORE_NAME = "segwb.sqlite"  # the default store: one per workspace
MASKS_DIR = "masks"
MASKS_DIR_ENV = "SEGWB_MASKS_DIR"
#: Environment variable naming the store URL (``sqlite:///…`` or ``postgresql://…``).
STORE_URL_ENV = "SEGWB_STORE_URL"


def dataset_key(ds: Dataset) -> str:
    """The key a dataset's rows carry in a shared store: the name of its workspace folder."""
    workdir = getattr(ds, "workdir", None)
    if workdir is not None:
        return Path(workdir).name
    from engine.workspace import Workspace

    return Workspace().dataset_dir(getattr(ds, "root"), create=False).name


def default_store_url(workspace_root: str | Path | None = None) -> str:
    """``$SEGWB_STORE_URL``, else ``sqlite:///<workspace>/segwb.sqlite``."""
    env = os.environ.get(STORE_URL_ENV, "").strip()
    if env:
        return env
    if workspace_root is None:
        from engine.workspace import default_root

        workspace_root = default_root()
    return "sqlite:///" + str(Path(workspace_root).expanduser().resolve() / WORKSPACE_STORE_NAME)
