"""The tables of the review store in their latest layout, declared once with SQLAlchemy Core so the
same declaration renders the right DDL on SQLite and PostgreSQL (``INTEGER PRIMARY KEY AUTOINCREMENT``
on SQLite, an identity column on PostgreSQL). :mod:`engine.store.schema` creates and migrates them.

Tables (schema version 5):

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
``users(name, role, pw_hash, active, created, updated, must_change)`` (``must_change``: an admin asked
    for a new password at the next sign-in); ``settings(key, value JSON, updated, author)``;
    ``admin_log`` (append-only: who changed which user or setting, when).
``signin_failures(kind, key, failures, first_failed, last_failed)`` — recent failed sign-ins per
    ``account`` (the lower-cased name, existing or not) and per client ``address`` (UNIX seconds),
    for throttling and lock-out (:mod:`engine.store.signin`); mutable, pruned as they expire.
``claims(dataset, case_id, user_name, claimed, expires)`` — case leases (mutable).
``web_sessions(id_hash, user_name, via, address, created, last_seen, expires, ended, end_reason)`` —
    signed-in browser sessions of team mode (schema 5; :mod:`engine.store.sessions`): the SHA-256 of
    the cookie's random token (the token itself is never stored), UNIX seconds; ``ended`` set at
    sign-out, expiry or revocation. Mutable, pruned a day after they end.
"""

from __future__ import annotations

import sqlalchemy as sa

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
    sa.Column("must_change", sa.Boolean, nullable=False, server_default=sa.false()),  # schema 4
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

signin_failures = sa.Table(  # schema 4: sign-in throttling per account name and per client address
    "signin_failures", metadata,
    sa.Column("kind", sa.Text, nullable=False),  # 'account' | 'address'
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("first_failed", sa.Float, nullable=False),
    sa.Column("last_failed", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("kind", "key"),
    sa.CheckConstraint("kind IN ('account', 'address')", name="signin_failures_kind"),
)

web_sessions = sa.Table(  # schema 5: signed-in browser sessions (team mode behind the session gate)
    "web_sessions", metadata,
    sa.Column("id_hash", sa.Text, primary_key=True),
    sa.Column("user_name", sa.Text, nullable=False),
    sa.Column("via", sa.Text, nullable=False),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.Column("ended", sa.Float),
    sa.Column("end_reason", sa.Text),
    sa.Index("web_sessions_user", "user_name"),
)
