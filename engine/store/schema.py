"""Schema of the review store and its migrations.

Tables (schema version 2):

``meta(key TEXT PRIMARY KEY, value TEXT)``
    ``schema_version``, ``created``.

``events`` — the append-only audit log; the current state is derived from it.
    ``id INTEGER PRIMARY KEY AUTOINCREMENT``, ``ts`` (UTC ISO-8601, µs), ``author``,
    ``kind`` ∈ {``decision``, ``case_state``, ``undo``, ``mask_saved``},
    ``target_kind`` ∈ {``pair``, ``group``, ``case``, ``event``},
    ``target`` (sorted case ids joined by TAB for pairs/groups; a case id; an event id),
    ``value`` (decision or state name), ``note``, ``ref`` (undo: the undone event),
    ``payload`` (JSON extras). Triggers abort every UPDATE and DELETE.

``mask_versions`` — corrected masks, one row per saved version (also append-only).
    ``(case_id, version)`` primary key, version ≥ 1 (0 = the dataset's original mask),
    ``sha256`` + ``file`` (lossless PNG in ``masks/`` beside the store, named by content hash;
    both NULL for a revert to the original), ``height``, ``width``, ``area``, ``author``,
    ``note``, ``created``, ``base_version``, ``reverted_from``, ``event_id`` → events.

Migrations run in one ``BEGIN IMMEDIATE`` transaction each (SQLite DDL is transactional),
so a crash mid-migration leaves the previous version intact.
"""

from __future__ import annotations

SCHEMA_VERSION = 2

_APPEND_ONLY = """CREATE TRIGGER {table}_no_{op} BEFORE {OP} ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only: record a new event (e.g. an undo) instead'); END"""

MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            author TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('decision', 'case_state', 'undo', 'mask_saved')),
            target_kind TEXT NOT NULL CHECK (target_kind IN ('pair', 'group', 'case', 'event')),
            target TEXT NOT NULL,
            value TEXT,
            note TEXT NOT NULL DEFAULT '',
            ref INTEGER REFERENCES events(id),
            payload TEXT
        )""",
        "CREATE INDEX events_target ON events(target_kind, target)",
        "CREATE INDEX events_ref ON events(ref)",
        _APPEND_ONLY.format(table="events", op="update", OP="UPDATE"),
        _APPEND_ONLY.format(table="events", op="delete", OP="DELETE"),
    ],
    2: [
        """CREATE TABLE mask_versions (
            case_id TEXT NOT NULL,
            version INTEGER NOT NULL CHECK (version >= 1),
            sha256 TEXT,
            file TEXT,
            height INTEGER,
            width INTEGER,
            area INTEGER,
            author TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL,
            base_version INTEGER,
            reverted_from INTEGER,
            event_id INTEGER NOT NULL REFERENCES events(id),
            PRIMARY KEY (case_id, version)
        )""",
        _APPEND_ONLY.format(table="mask_versions", op="update", OP="UPDATE"),
        _APPEND_ONLY.format(table="mask_versions", op="delete", OP="DELETE"),
    ],
}

assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))
