"""Schema of the review store and its ONE migration list, for SQLite and PostgreSQL alike.

Every table is declared with SQLAlchemy Core, so the same step renders the right DDL on both
backends (``INTEGER PRIMARY KEY AUTOINCREMENT`` on SQLite, an identity column on PostgreSQL).
The only backend-specific text is the append-only guard (a trigger body), declared once in
:func:`_append_only` with SQLAlchemy's ``DDL(...).execute_if(dialect=...)``.

Tables (schema version 3):

``meta(key, value)``
    ``schema_version``, ``created``, ``imported:<dataset>`` (legacy per-dataset stores imported).
``events`` — the append-only audit log (UPDATE, DELETE and, on PostgreSQL, TRUNCATE fail).
    ``id`` (increasing), ``ts`` (UTC ISO-8601, µs), ``author``, ``kind`` ∈ {decision, case_state,
    undo, mask_saved}, ``target_kind`` ∈ {pair, group, case, event}, ``target`` (sorted case ids
    joined by TAB; a case id; an event id), ``value``, ``note``, ``ref`` (undo: the undone event),
    ``payload`` (JSON), ``dataset`` (the dataset key; ``''`` in a single-dataset file).
``mask_versions`` — saved masks (append-only): ``(dataset, case_id, version)`` key, ``sha256`` +
    ``file`` (content-addressed PNG in the shared masks folder; NULL = revert to the original),
    ``height``, ``width``, ``area``, ``author``, ``note``, ``created``, ``base_version``,
    ``reverted_from``, ``event_id``.
``current_decisions(dataset, target_kind, target, event_id, decision, a, b, given, author, ts, note)``
    and ``current_case_states(dataset, case_id, event_id, state, author, ts, note)`` — a copy of the
    effective event per target, maintained in the same transaction as the log (reads are one
    indexed single-table scan, O(targets), not O(events)).
``revisions(dataset, rev, reset)`` — a counter bumped in every transaction that changes a dataset's
    current state; each current-state row carries the revision that wrote it (an undone-to-nothing
    target stays as a tombstone with ``event_id = 0``), so a reader holding the result of revision R
    fetches only the rows with ``rev > R`` (a full re-read when R < ``reset``, set by rebuilds).
``users(name, role, pw_hash, active, created, updated)``; ``settings(key, value JSON, updated,
    author)``; ``admin_log`` (append-only: who changed which user or setting, when).
``claims(dataset, case_id, user_name, claimed, expires)`` — case leases (mutable).

Versions 1 and 2 are the historic per-dataset SQLite layout; step 3 adds the dataset key, the
current-state tables, users, settings and claims, and back-fills the current-state tables.
"""

from __future__ import annotations

from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 3

# --------------------------------------------------------------------------- runtime tables (latest)
metadata = sa.MetaData()

meta = sa.Table("meta", metadata, sa.Column("key", sa.String, primary_key=True),
                sa.Column("value", sa.Text, nullable=False))

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("target_kind", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("value", sa.Text),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("ref", sa.Integer),
    sa.Column("payload", sa.Text),
    sa.Column("dataset", sa.Text, nullable=False, server_default=""),
    sqlite_autoincrement=True,
)

mask_versions = sa.Table(
    "mask_versions", metadata,
    sa.Column("dataset", sa.Text, nullable=False, server_default=""),
    sa.Column("case_id", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("sha256", sa.Text),
    sa.Column("file", sa.Text),
    sa.Column("height", sa.Integer),
    sa.Column("width", sa.Integer),
    sa.Column("area", sa.Integer),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("created", sa.Text, nullable=False),
    sa.Column("base_version", sa.Integer),
    sa.Column("reverted_from", sa.Integer),
    sa.Column("event_id", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("dataset", "case_id", "version"),
    sa.CheckConstraint("version >= 1", name="mask_versions_version_positive"),
)

current_decisions = sa.Table(  # a copy of the effective decision event per target (one-table reads)
    "current_decisions", metadata,
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("target_kind", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("event_id", sa.Integer, nullable=False),
    sa.Column("decision", sa.Text, nullable=False),  # canonical (relative to the sorted ids)
    sa.Column("a", sa.Text, nullable=False),  # the pair as the reviewer gave it
    sa.Column("b", sa.Text, nullable=False),
    sa.Column("given", sa.Text, nullable=False),  # the decision relative to a, b
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("rev", sa.Integer, nullable=False),  # dataset revision that wrote the row (incremental reads)
    sa.PrimaryKeyConstraint("dataset", "target_kind", "target"),
    sa.Index("current_decisions_rev", "dataset", "rev"),
)

current_case_states = sa.Table(
    "current_case_states", metadata,
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("case_id", sa.Text, nullable=False),
    sa.Column("event_id", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("rev", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("dataset", "case_id"),
    sa.Index("current_case_states_rev", "dataset", "rev"),
)

revisions = sa.Table(  # bumped in every transaction that changes a dataset's current state (read caches)
    "revisions", metadata,
    sa.Column("dataset", sa.Text, primary_key=True),
    sa.Column("rev", sa.Integer, nullable=False),
    sa.Column("reset", sa.Integer, nullable=False, server_default="0"),  # caches older than this re-read all
)

users = sa.Table(
    "users", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("pw_hash", sa.Text),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created", sa.Text, nullable=False),
    sa.Column("updated", sa.Text, nullable=False),
)

settings = sa.Table(
    "settings", metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated", sa.Text, nullable=False),
    sa.Column("author", sa.Text, nullable=False),
)

admin_log = sa.Table(
    "admin_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("detail", sa.Text),
    sqlite_autoincrement=True,
)

claims = sa.Table(
    "claims", metadata,
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("case_id", sa.Text, nullable=False),
    sa.Column("user_name", sa.Text, nullable=False),
    sa.Column("claimed", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("dataset", "case_id"),
)


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
    from sqlalchemy.schema import CreateIndex, CreateTable

    # 1. the dataset key on events (old rows: '' = the file's own dataset)
    conn.execute(sa.text("ALTER TABLE events ADD COLUMN dataset TEXT NOT NULL DEFAULT ''"))
    conn.execute(CreateIndex(sa.Index("events_dataset_target", events.c.dataset, events.c.target_kind,
                                      events.c.target)))
    conn.execute(CreateIndex(sa.Index("events_kind", events.c.dataset, events.c.kind)))
    # 2. mask_versions keyed by (dataset, case_id, version): rebuild (dropping a table drops its triggers)
    conn.execute(sa.text("ALTER TABLE mask_versions RENAME TO mask_versions_v2"))
    conn.execute(CreateTable(mask_versions))
    cols = [c.name for c in mask_versions.columns if c.name != "dataset"]
    conn.execute(sa.text(f"INSERT INTO mask_versions (dataset, {', '.join(cols)}) "
                         f"SELECT '', {', '.join(cols)} FROM mask_versions_v2"))
    conn.execute(sa.text("DROP TABLE mask_versions_v2"))
    _append_only(conn, "mask_versions")
    # 3. current-state tables, users, settings, admin log, claims
    for t in (current_decisions, current_case_states, revisions, users, settings, admin_log, claims):
        conn.execute(CreateTable(t))
        for ix in t.indexes:
            conn.execute(CreateIndex(ix))
    _append_only(conn, "admin_log")
    # 4. back-fill the current state from the log
    from engine.curation.store.review import rebuild_current

    rebuild_current(conn, None)


#: The one migration list: version → step (runs inside the migration transaction).
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1, 2: _v2, 3: _v3}

assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))
