"""The open review store that every concern of :class:`engine.store.ReviewStore` builds on.

:class:`StoreBase` opens (or creates and migrates) the database, knows where the store and its
mask files live, and owns the two things every write goes through: the permission gate
(:meth:`StoreBase._acting`: who may act, checked in the same transaction as the write) and the
append-only audit log (:meth:`StoreBase._insert_event`). Every read and write runs in one
transaction of :attr:`StoreBase.tx` (:class:`engine.store.db.Transactor`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Self

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.errors import PermissionDenied
from engine.store import db as _db
from engine.store import schema
from engine.store import tables as T
from engine.store.location import MASKS_DIR, MASKS_DIR_ENV
from engine.store.records import ROLE_RANK, Actor, LocalOperator, _author, _now, a_role

if TYPE_CHECKING:
    from engine.datasets.base import Dataset


class StoreBase:
    """Connection, location and the write gate of a review store: the arguments, options and errors
    of :class:`engine.store.ReviewStore` (the façade built on this class) are documented there."""

    url: sa.engine.URL
    is_sqlite: bool
    dataset: Dataset | None
    dataset_key: str
    timeout: float
    path: Path | str  # the SQLite file, or the URL without its password
    folder: Path
    masks_dir: Path
    engine: sa.Engine
    tx: _db.Transactor

    def __init__(self, path: str | Path, *, dataset: Dataset | None = None, masks_dir: str | Path | None = None,
                 timeout: float = 30.0, schema_version: int | None = None, dataset_key: str = ""):
        self.url = _db.normalize_url(path)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.dataset = dataset
        self.dataset_key = str(dataset_key or "")
        self.timeout = float(timeout)
        target = schema.SCHEMA_VERSION if schema_version is None else int(schema_version)
        if self.is_sqlite and self.url.database and self.url.database != ":memory:":
            self.path = Path(self.url.database)
            self.folder = self.path.parent
            _db.check_sqlite_file(self.path)
            if not self.path.exists():
                _db.create_sqlite_store(self.path, lambda eng: self._migrate_engine(eng, target), self.timeout)
            default_masks = self.folder / MASKS_DIR
        else:
            self.path = _db.display_url(self.url)
            from engine.workspace import default_root

            self.folder = default_root().resolve()
            default_masks = self.folder / MASKS_DIR
        env_masks = os.environ.get(MASKS_DIR_ENV, "").strip()
        self.masks_dir = Path(masks_dir or env_masks or default_masks).expanduser().resolve()
        self.engine = _db.make_engine(self.url, self.timeout)
        self.tx = _db.Transactor(self.engine, self.timeout, str(self.path))
        try:
            self._migrate_engine(self.engine, target)
            self._identity: str = self.tx.read(lambda c: c.execute(
                sa.select(T.meta.c.value).where(T.meta.c.key == "created")).scalar()) or ""
        except BaseException:
            self.engine.dispose()
            raise

    # -- plumbing ---------------------------------------------------------------------------
    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        key = f", dataset_key={self.dataset_key!r}" if self.dataset_key else ""
        return f"ReviewStore({str(self.path)!r}{key})"

    def _migrate_engine(self, eng: sa.Engine, target: int) -> None:
        schema.migrate(eng, target, timeout=self.timeout, path=self.path)

    @property
    def schema_version(self) -> int:
        """The store's schema version."""
        return self.tx.read(schema.schema_version)

    def integrity_check(self) -> str:
        """``'ok'`` when healthy (SQLite: ``PRAGMA integrity_check``; PostgreSQL: the server answers)."""
        if self.is_sqlite:
            return str(self.tx.read(lambda c: c.exec_driver_sql("PRAGMA integrity_check").scalar()))
        return "ok" if self.tx.read(lambda c: c.execute(sa.text("SELECT 1")).scalar()) == 1 else "error"

    # -- what every write goes through ------------------------------------------------------
    def _acting(self, conn: Connection, name: Actor, need: str) -> str:
        """The acting user's name if they may act as ``need``; open single-user mode accepts any name."""
        if isinstance(name, LocalOperator):
            return name.name
        who = _author(name)
        n_users = conn.execute(sa.select(sa.func.count()).select_from(T.users)).scalar()
        if not n_users:
            return who
        row = conn.execute(sa.select(T.users.c.role, T.users.c.active).where(T.users.c.name == who)).first()
        if row is None:
            raise PermissionDenied(f"unknown user {who!r}: this store has accounts, so every write needs a "
                                   "signed-in user", path=self.path, hint="sign in, or ask an admin to add you "
                                   "(python -m engine users add NAME --role ROLE)")
        if not row.active:
            raise PermissionDenied(f"user {who!r} is disabled", path=self.path, hint="ask an admin to enable you")
        if ROLE_RANK.get(row.role, -1) < ROLE_RANK[need]:
            raise PermissionDenied(f"user {who!r} is {a_role(row.role)}; this needs the {need} role or higher",
                                   path=self.path, hint=f"ask an admin: python -m engine users set-role {who} "
                                                        f"--role {need}")
        return who

    def _insert_event(self, conn: Connection, author: str, kind: str, target_kind: str, target: str,
                      value: str | None, note: str, ref: int | None = None,
                      payload: Mapping[str, object] | None = None) -> int:
        """Append one row to this dataset's audit log; returns its id."""
        res = conn.execute(T.events.insert().values(
            ts=_now(), author=author, kind=kind, target_kind=target_kind, target=target, value=value,
            note=note or "", ref=ref, payload=json.dumps(payload, sort_keys=True) if payload else None,
            dataset=self.dataset_key))
        return _db.inserted_id(res)
