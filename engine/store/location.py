"""Where a review store lives: the store URL, the masks folder and each dataset's key in a shared store.

- ``$SEGWB_STORE_URL`` when set (``sqlite:///PATH`` or ``postgresql://USER@HOST/DB``), else one
  SQLite file per workspace, ``<workspace>/segwb.sqlite`` (:func:`default_store_url`).
- Datasets share it, each under its own *dataset key* (:func:`dataset_key`: the name of its
  workspace folder, e.g. ``nerve-1a2b3c4d``).
- Corrected masks are content-addressed PNGs in ``<workspace>/masks`` (or ``$SEGWB_MASKS_DIR``).
- ``review.sqlite`` in a dataset's workspace folder is the legacy single-dataset file of earlier
  versions (imported by :mod:`engine.store.legacy`).
- :func:`check_store_url` accepts only ``sqlite:///PATH``, ``postgresql://…`` and plain file paths
  (every store open goes through it); :func:`check_store_location` refuses a SQLite store whose
  folder does not exist, unless it lies inside the workspace (stores are never created in
  surprising places).

Light (the standard library only), like :mod:`engine.store.records`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from engine.datasets.base import Dataset

STORE_NAME = "review.sqlite"        # the legacy single-dataset file in a dataset's workspace folder
WORKSPACE_STORE_NAME = "segwb.sqlite"  # the default store: one per workspace
MASKS_DIR = "masks"
MASKS_DIR_ENV = "SEGWB_MASKS_DIR"
#: Environment variable naming the store URL (``sqlite:///…`` or ``postgresql://…``).
STORE_URL_ENV = "SEGWB_STORE_URL"
#: What :func:`check_store_url` accepts, for messages.
STORE_URL_FORMS = ("sqlite:///ABSOLUTE/PATH.sqlite, sqlite:///RELATIVE/PATH.sqlite, postgresql://USER@HOST/DB "
                   "or a plain file path (write a relative path that contains ':' as ./NAME)")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
_SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")
_PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class StoreURLError(ConfigError, StoreError):
    """A store location the workbench refuses: a malformed URL, or a new SQLite store outside an existing
    folder and the workspace (a :class:`ConfigError`, and a :class:`StoreError` for callers that catch a
    store that cannot be opened)."""


def check_store_url(url: str | Path) -> str:
    """The store location as text if its form is one the workbench accepts, else :class:`ConfigError`.

    Accepted: ``sqlite:///PATH`` (absolute ``sqlite:////abs/x.sqlite`` or relative ``sqlite:///x.sqlite``),
    ``sqlite:///:memory:``, ``postgresql://USER@HOST/DB`` (also ``postgres://``) and plain file paths.
    Refused: anything that looks like a URL but is not one of these (``sqlite:/x``, ``sqlite://host/x``,
    ``mysql://…``, an empty value): such a text would otherwise become an oddly named folder.
    """
    if isinstance(url, Path):
        return str(url)
    text = str(url).strip()
    if not text:
        raise StoreURLError("the review store location is empty", hint=f"use {STORE_URL_FORMS}")
    m = _SCHEME.match(text)
    if m is None:
        return text  # a plain file path
    scheme = m.group(1).lower()
    shown = display_store_url(text)
    if not text[m.end():].startswith("//"):
        raise StoreURLError(f"malformed review store URL {shown!r}", hint=f"use {STORE_URL_FORMS}")
    if scheme in _SQLITE_SCHEMES:
        rest = text[m.end() + 2:]
        if not rest.startswith("/") or len(rest) < 2:
            raise StoreURLError(f"malformed SQLite store URL {shown!r}: the path must follow three slashes",
                                hint=f"use {STORE_URL_FORMS}")
        return text
    if scheme in _PG_SCHEMES:
        if not text[m.end() + 2:].strip("/"):
            raise StoreURLError(f"malformed PostgreSQL store URL {shown!r}: no server or database",
                                hint=f"use {STORE_URL_FORMS}")
        return text
    raise StoreURLError(f"unsupported review store URL scheme {scheme!r} in {shown!r}", hint=f"use {STORE_URL_FORMS}")


def display_store_url(url: str | Path) -> str:
    """The store location with any password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/@:]*):[^/@]*@", r"\1:***@", str(url))


def sqlite_file(url: str | Path) -> Path | None:
    """The SQLite file a valid store location names (absolute; symlinks not resolved), or None for
    PostgreSQL and ``:memory:``."""
    text = check_store_url(url)
    m = _SCHEME.match(text)
    if m is None:
        return Path(os.path.abspath(Path(text).expanduser()))
    if m.group(1).lower() not in _SQLITE_SCHEMES:
        return None
    path = text[m.end() + 3:].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(os.path.abspath(Path(path).expanduser()))


def check_store_location(url: str | Path, workspace_root: str | Path | None = None) -> str:
    """``url`` checked by :func:`check_store_url`, and for SQLite: the store file exists, or its folder
    does, or it lies inside the workspace (the product's own folder, created on demand). A store is
    never created (with its folders) anywhere else.

    Raises:
        StoreURLError: a malformed URL, or a new SQLite store in a folder that does not exist.
    """
    text = check_store_url(url)
    path = sqlite_file(text)
    if path is None or path.exists() or path.parent.is_dir():
        return text
    if workspace_root is None:
        from engine.workspace import default_root

        workspace_root = default_root()
    ws = Path(workspace_root).expanduser().resolve()
    target = path.parent.resolve()
    if target == ws or ws in target.parents:
        return text
    raise StoreURLError(f"the folder of the review store does not exist (a store is created only in an existing "
                        f"folder or inside the workspace {ws})", path=path.parent,
                        hint=f"create the folder first (mkdir -p {path.parent}), fix the path, or leave the store at "
                             "its default <workspace>/segwb.sqlite")


def dataset_key(ds: Dataset) -> str:
    """The key a dataset's rows carry in a shared store: the name of its workspace folder."""
    workdir = getattr(ds, "workdir", None)
    if workdir is not None:
        return Path(workdir).name
    from engine.workspace import Workspace

    return Workspace().dataset_dir(getattr(ds, "root"), create=False).name


def default_store_url(workspace_root: str | Path | None = None) -> str:
    """``$SEGWB_STORE_URL`` (checked by :func:`check_store_location`), else ``sqlite:///<workspace>/segwb.sqlite``."""
    if workspace_root is None:
        from engine.workspace import default_root

        workspace_root = default_root()
    env = os.environ.get(STORE_URL_ENV, "").strip()
    if env:
        try:
            return check_store_location(env, workspace_root)
        except ConfigError as exc:
            raise type(exc)(f"{STORE_URL_ENV}: {exc.message}", path=exc.path, hint=exc.hint) from None
    return "sqlite:///" + str(Path(workspace_root).expanduser().resolve() / WORKSPACE_STORE_NAME)
