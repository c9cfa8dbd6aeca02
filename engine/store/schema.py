"""Schema versions of the review store and its ONE migration list, for SQLite and PostgreSQL alike.

:func:`migrate` brings a database up to a schema version in one transaction (PostgreSQL: one
migrator at a time across app servers). The steps create the tables of :mod:`engine.store.tables`;
the only backend-specific text is the append-only guard (a trigger body), declared once in
:func:`_append_only` with SQLAlchemy's ``DDL(...).execute_if(dialect=...)``.

Versions 1 and 2 are the historic per-dataset SQLite layout; step 3 adds the dataset key, the
current-state tables, users, settings and claims, and back-fills the current-state tables
(:func:`engine.store.projection.rebuild_current`). Step 4 adds sign-in throttling
(``signin_failures``) and ``users.must_change`` (an admin-forced password change). Step 5 adds the
signed-in browser sessions (``web_sessions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable

from engine.errors import StoreError
from engine.store import tables as T
from engine.store.db import Transactor
from engine.store.projection import rebuild_current
from engine.store.records import _now

SCHEMA_VERSION = 5

# --------------------------------------------------------------------------- migration helpers
def _append_only(conn: Connection, table: str) -> None:
    """Make ``table`` append-only: UPDATE and DELETE (and TRUNCATE on PostgreSQL) fail."""
    msg = f"{table} is append-only: record a new event (e.g. an undo) instead"
    for op in ("update", "delete"):
        sa.DDL(f"CREATE TRIGGER {table}_no_{op} BEFORE {op.upper()} ON {table} "
               f"BEGIN SELECT RAISE(ABORT, '{msg}'); END").execute_if(dialect="sqlite")(
            target=None, bind=conn)
    sa.DDL("CREATE OR REPLACE FUNCTION segwb_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
           "BEGIN RAISE EXCEPTION '%% is append-only: record a new event (e.g. an undo) instead', TG_TABLE_NAME; "
           "END $$").execute_if(dialect="postgresql")(target=None, bind=conn)
    sa.DDL(f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
           "FOR EACH ROW EXECUTE FUNCTION segwb_append_only()").execute_if(dialect="postgresql")(
        target=None, bind=conn)
    sa.DDL(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
           "FOR EACH STATEMENT EXECUTE FUNCTION segwb_append_only()").execute_if(dialect="postgresql")(
        target=None, bind=conn)


def _v1(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table("meta", md, sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text, nullable=False))
    ev = sa.Table(
        "events", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Text, nullable=False),
        sa.Column("author", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("target_kind", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("value", sa.Text),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("ref", sa.Integer, sa.ForeignKey("events.id")),
        sa.Column("payload", sa.Text),
        sa.CheckConstraint("kind IN ('decision', 'case_state', 'undo', 'mask_saved')", name="events_kind"),
        sa.CheckConstraint("target_kind IN ('pair', 'group', 'case', 'event')", name="events_target_kind"),
        sqlite_autoincrement=True,
    )
    sa.Index("events_target", ev.c.target_kind, ev.c.target)
    sa.Index("events_ref", ev.c.ref)
    md.create_all(conn, checkfirst=False)
    _append_only(conn, "events")


def _v2(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "mask_versions", md,
        sa.Column("case_id", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("sha256", sa.Text), sa.Column("file", sa.Text),
        sa.Column("height", sa.Integer), sa.Column("width", sa.Integer), sa.Column("area", sa.Integer),
        sa.Column("author", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("base_version", sa.Integer), sa.Column("reverted_from", sa.Integer),
        sa.Column("event_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("case_id", "version", name="mask_versions_v2_pkey"),
        sa.CheckConstraint("version >= 1", name="mask_versions_v2_version_positive"),
    )
    md.create_all(conn, checkfirst=False)
    _append_only(conn, "mask_versions")


def _v3(conn: Connection) -> None:
    # 1. the dataset key on events (old rows: '' = the file's own dataset)
    conn.execute(sa.text("ALTER TABLE events ADD COLUMN dataset TEXT NOT NULL DEFAULT ''"))
    ev = T.events
    conn.execute(CreateIndex(sa.Index("events_dataset_target", ev.c.dataset, ev.c.target_kind, ev.c.target)))
    conn.execute(CreateIndex(sa.Index("events_kind", ev.c.dataset, ev.c.kind)))
    # 2. mask_versions keyed by (dataset, case_id, version): rebuild (dropping a table drops its triggers)
    conn.execute(sa.text("ALTER TABLE mask_versions RENAME TO mask_versions_v2"))
    conn.execute(CreateTable(T.mask_versions))
    cols = [c.name for c in T.mask_versions.columns if c.name != "dataset"]
    conn.execute(sa.text(f"INSERT INTO mask_versions (dataset, {', '.join(cols)}) "
                         f"SELECT '', {', '.join(cols)} FROM mask_versions_v2"))
    conn.execute(sa.text("DROP TABLE mask_versions_v2"))
    _append_only(conn, "mask_versions")
    # 3. current-state tables, users (their version-3 layout), settings, admin log, claims
    users_v3 = sa.Table("users", sa.MetaData(), *(sa.Column(c.name, c.type, primary_key=c.primary_key,
                                                            nullable=c.nullable)
                                                  for c in T.users.columns if c.name != "must_change"))
    for t in (T.current_decisions, T.current_case_states, T.revisions, users_v3, T.settings, T.admin_log, T.claims):
        conn.execute(CreateTable(t))
        for ix in t.indexes:
            conn.execute(CreateIndex(ix))
    _append_only(conn, "admin_log")
    # 4. back-fill the current state from the log
    rebuild_current(conn, None)


def _v4(conn: Connection) -> None:
    # sign-in hygiene: throttling per account name and client address; admin-forced password change
    col = CreateColumn(T.users.c.must_change).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE users ADD COLUMN {col}"))
    conn.execute(CreateTable(T.signin_failures))


def _v5(conn: Connection) -> None:
    # browser sessions of team mode (a signed HttpOnly cookie names one; engine.store.sessions)
    conn.execute(CreateTable(T.web_sessions))
    for ix in T.web_sessions.indexes:
        conn.execute(CreateIndex(ix))


#: The one migration list: version → step (runs inside the migration transaction).
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1, 2: _v2, 3: _v3, 4: _v4, 5: _v5}

assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


# --------------------------------------------------------------------------- running the migrations
def stored_version(conn: Connection, path: Path | str) -> int:
    """The schema version a database holds (0: empty).

    Raises:
        StoreError: an ``events`` table without ``meta``: some other program's database.
    """
    insp = sa.inspect(conn)
    if not insp.has_table("meta"):
        if insp.has_table("events"):
            raise StoreError("has an events table but no meta table: not a review store", path=path,
                             hint="point --store / SEGWB_STORE_URL at a review store or an empty database")
        return 0
    got = conn.execute(sa.select(T.meta.c.value).where(T.meta.c.key == "schema_version")).scalar()
    return int(got) if got is not None else 0


def migrate(eng: Engine, target: int, *, timeout: float, path: Path | str) -> None:
    """Create or migrate the store behind ``eng`` up to schema version ``target``, in one transaction.

    ``path`` is what messages name (the file, or the URL without its password).

    Raises:
        StoreError: not a review store, or written by a newer program (left untouched).
    """
    tx = Transactor(eng, timeout, str(path))
    try:
        current = tx.read(lambda conn: stored_version(conn, path))
    except StoreError:
        raise
    except sa.exc.DatabaseError as exc:  # pragma: no cover - surfaced by Transactor normally
        raise StoreError(f"cannot open review store ({exc.orig})", path=path) from None
    if current > SCHEMA_VERSION:
        raise StoreError(f"review store has schema version {current}, newer than this program supports "
                         f"({SCHEMA_VERSION})", path=path,
                         hint="upgrade the workbench to open it (the store is left untouched)")
    if current >= target:
        return

    def run(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":  # one migrator at a time across app servers
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7310452)"))
        have = stored_version(conn, path)  # another process may have migrated meanwhile
        if have > SCHEMA_VERSION:
            raise StoreError(f"review store has schema version {have}, newer than this program supports",
                             path=path, hint="upgrade the workbench")
        for v in range(have + 1, target + 1):
            MIGRATIONS[v](conn)
            conn.execute(T.meta.delete().where(T.meta.c.key == "schema_version"))
            conn.execute(T.meta.insert().values(key="schema_version", value=str(v)))
        if conn.execute(sa.select(T.meta.c.key).where(T.meta.c.key == "created")).first() is None:
            conn.execute(T.meta.insert().values(key="created", value=_now()))

    # READ COMMITTED: after waiting for the migration lock, see what the previous holder committed
    tx.write(run, isolation="READ COMMITTED")


def schema_version(conn: Connection) -> int:
    """The schema version recorded in ``meta`` (0 when none)."""
    return int(conn.execute(sa.select(T.meta.c.value).where(T.meta.c.key == "schema_version")).scalar() or 0)
