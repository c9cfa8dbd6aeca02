"""Database plumbing of the review store: engine creation for SQLite and PostgreSQL, write
transactions with retries, schema migrations, and safe creation of new SQLite files.

- **SQLite** (``sqlite:///path``): WAL journal, ``synchronous=FULL``, ``busy_timeout``; reads run in
  a deferred ``BEGIN``, writes in ``BEGIN IMMEDIATE`` (one writer at a time, readers never block).
  A new file is built beside the target under a temporary name and linked into place, so a
  half-created store never exists and an EMPTY (0-byte) file at the path is always an error.
- **PostgreSQL** (``postgresql://user@host/db``, driver psycopg 3): writes run at ``SERIALIZABLE``
  isolation and are retried on serialization failures, deadlocks and unique-key races, so two app
  servers writing to one database never apply a stale write.

This is the only module that knows which backend it talks to, and :class:`Transactor` is the one
transaction helper: every read and every write of the store (migrations included) runs through it.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, CursorResult, Engine

from engine.errors import StoreError
from engine.store.location import check_store_url

T = TypeVar("T")

_RETRY_PG = {"40001", "40P01", "23505", "55P03"}  # serialization, deadlock, unique race, lock not available


def normalize_url(url: str | Path) -> sa.engine.URL:
    """``sqlite:///…``, ``postgresql://…`` or a plain file path → a SQLAlchemy URL (psycopg 3 driver).

    Raises:
        ConfigError: a malformed location (:func:`engine.store.location.check_store_url`).
        StoreError: an unsupported scheme.
    """
    text = check_store_url(url)
    if "://" not in text:
        return sa.engine.make_url("sqlite:///" + str(Path(text).expanduser().resolve()))
    try:
        u = sa.engine.make_url(text)
    except sa_exc.ArgumentError as exc:
        raise StoreError(f"not a store URL: {text!r} ({exc})", hint="use sqlite:///PATH or postgresql://USER@HOST/DB") \
            from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        if u.database and u.database != ":memory:":
            u = u.set(database=str(Path(u.database).expanduser().resolve()))
        return u
    if backend in ("postgresql", "postgres"):
        return u.set(drivername="postgresql+psycopg")
    raise StoreError(f"unsupported store backend {backend!r} in {u.render_as_string(hide_password=True)}",
                     hint="use sqlite:///PATH (single user) or postgresql://USER@HOST/DB (team)")


def display_url(u: sa.engine.URL) -> str:
    """The URL with any password hidden (for messages and provenance)."""
    return u.render_as_string(hide_password=True).replace("postgresql+psycopg://", "postgresql://")


def is_retryable(exc: BaseException) -> bool:
    """True for transient write conflicts: SQLite busy/locked, PostgreSQL serialization/deadlock/unique races."""
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return "locked" in text or "busy" in text
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in _RETRY_PG


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, timeout: float) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see the "begin" listener)
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        deadline = time.monotonic() + timeout
        while True:  # switching to WAL needs a moment without other writers
            try:
                cur.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if not is_retryable(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02 + 0.05 * random.random())
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        cur.close()


def make_engine(u: sa.engine.URL, timeout: float) -> Engine:
    """A SQLAlchemy engine for the store (pragmas and transaction mode set per backend)."""
    if u.get_backend_name() == "sqlite":
        eng = sa.create_engine(u, connect_args={"timeout": timeout, "check_same_thread": False})

        @event.listens_for(eng, "connect")
        def _connect(dbapi_conn: Any, _rec: Any) -> None:
            _sqlite_pragmas(dbapi_conn, timeout)

        @event.listens_for(eng, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("segwb_write") else "BEGIN")

        return eng
    return sa.create_engine(u, pool_pre_ping=True, connect_args={"connect_timeout": int(max(1, timeout))})


def inserted_id(res: CursorResult[Any]) -> int:
    """The primary key of the row an INSERT added."""
    key = res.inserted_primary_key
    if key is None:
        raise StoreError("the review store returned no id for a new row", hint="report this")
    return int(key[0])


def is_sqlite(eng: Engine) -> bool:
    return eng.dialect.name == "sqlite"


def check_sqlite_file(path: Path) -> None:
    """Refuse a path that cannot be a store: an EMPTY file, a folder, or a file that is not SQLite.

    A missing file is fine (a new store is created by :func:`create_sqlite_store`).
    """
    if path.is_dir():
        raise StoreError("is a folder, not a review store file", path=path, hint="pass the .sqlite file inside it")
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        raise StoreError("is an empty (0-byte) file, not a review store", path=path,
                         hint="a crashed copy or a placeholder? move it away (a new store is then created) or "
                              "restore the real store from a backup")
    # Ask SQLite itself, never open()/close() the file: closing ANY descriptor of a database file drops
    # every POSIX lock this process holds on it, so other connections of the same process (other app
    # sessions) would write unlocked and corrupt the store ("database disk image is malformed").
    probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        probe.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        if "not a database" not in str(exc) and "encrypted" not in str(exc):
            raise StoreError(f"cannot read the review store ({exc})", path=path,
                             hint="check that the store is reachable and not damaged") from None
        raise StoreError("is not a review store (not an SQLite database)", path=path,
                         hint="check the path; move the file away to start a new store there") from None
    finally:
        probe.close()


def create_sqlite_store(path: Path, build: Callable[[Engine], None], timeout: float) -> None:
    """Create a new SQLite store atomically: build it under a temporary name, then hard-link it into place.

    If another process created the file meanwhile, its store is kept and ours discarded.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    eng = make_engine(sa.engine.make_url("sqlite:///" + str(tmp)), timeout)
    try:
        build(eng)
        with eng.connect() as c:  # fold the WAL into the main file before linking it
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        eng.dispose()
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # file systems without hard links: fall back to an exclusive rename
        if not path.exists():
            with contextlib.suppress(OSError):
                os.rename(tmp, path)
    finally:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(str(tmp) + suffix).unlink()


class Transactor:
    """Runs read and write transactions on an engine, retrying transient conflicts until ``timeout``."""

    def __init__(self, eng: Engine, timeout: float, where: str):
        self.engine = eng
        self.timeout = float(timeout)
        self.where = where
        self.sqlite = is_sqlite(eng)

    def _run(self, fn: Callable[[Connection], T], write: bool, isolation: str | None = None) -> T:
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            try:
                with self.engine.connect() as conn:
                    opts: dict[str, Any] = {"segwb_write": write}
                    if not self.sqlite:  # reads: one snapshot; writes: serializable (stale writes abort)
                        opts["isolation_level"] = isolation or ("SERIALIZABLE" if write else "REPEATABLE READ")
                    conn = conn.execution_options(**opts)
                    with conn.begin():
                        return fn(conn)
            except (sa_exc.OperationalError, sa_exc.IntegrityError, sa_exc.DBAPIError) as exc:
                if not is_retryable(exc):
                    if isinstance(exc, sa_exc.IntegrityError):
                        raise StoreError(f"the review store refused a write ({exc.orig})", path=self.where,
                                         hint="report this; the store was left unchanged") from None
                    raise StoreError(f"review store error ({getattr(exc, 'orig', exc)})", path=self.where,
                                     hint="check that the store is reachable and not damaged") from None
                if time.monotonic() >= deadline:
                    raise StoreError(f"the review store stayed busy with other writers for {self.timeout:.0f}s",
                                     path=self.where, hint="try again; close other programs writing to it") from None
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.3)

    def write(self, fn: Callable[[Connection], T], isolation: str | None = None) -> T:
        """Run ``fn(conn)`` in one write transaction (all or nothing), retried on transient conflicts.

        ``isolation`` overrides PostgreSQL's SERIALIZABLE (migrations use READ COMMITTED so that,
        after waiting for the migration lock, they see what the previous holder committed).
        """
        return self._run(fn, True, isolation)

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in one read transaction (a consistent snapshot)."""
        return self._run(fn, False)
