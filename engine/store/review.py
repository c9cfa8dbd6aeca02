"""The review store: decisions on near-duplicate pairs, per-case review state, mask versions.

One SQLite file per dataset (default ``dataset.workdir / "review.sqlite"``, with corrected masks
as PNGs in ``masks/`` beside it); the dataset itself is never modified.

- **Append-only audit log.** Every action is a row of ``events`` (who, when, what, note);
  triggers make UPDATE and DELETE on it fail. Undo is a new ``undo`` event that references the
  undone one; undoing an undo redoes. The current state (:meth:`ReviewStore.decisions`,
  :meth:`ReviewStore.case_states`) is derived from the log.
- **Mask versions.** :meth:`ReviewStore.save_mask_version` writes the PNG (lossless, named by
  the SHA-256 of the mask's shape and pixels, written atomically) and then inserts the row in
  a transaction that first checks ``base_version`` against the newest version: if someone
  saved in between, :class:`engine.errors.ConflictError` carries ``current_version``.
  Version 0 is the dataset's original mask; :meth:`ReviewStore.revert` adds a new version
  copying an old one (history is never rewritten).
- **Concurrency and crashes.** WAL journal, ``synchronous=FULL``, ``busy_timeout``, every write
  in ``BEGIN IMMEDIATE`` with retries: two processes writing at once both succeed, and a
  process killed mid-write leaves the last committed state (SQLite's journal guarantees it;
  an orphan PNG without a row is harmless).
- **Schema versions.** ``meta.schema_version``; older stores are migrated in a transaction on
  open; a store from a newer program raises :class:`engine.errors.StoreError`.

Example:
    >>> store = ReviewStore("/tmp/review.sqlite")                           # doctest: +SKIP
    >>> eid = store.record_decision("2_5", "2_13", "keep_both", "alice", "both empty")  # doctest: +SKIP
    >>> store.decisions()[("pair", ("2_13", "2_5"))].decision                 # doctest: +SKIP
    'keep_both'
    >>> v = store.save_mask_version("2_5", mask, "alice", base_version=None)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

from engine.errors import ConflictError, MaskError, StoreError, unknown_name
from engine.store.schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")

STORE_NAME = "review.sqlite"
MASKS_DIR = "masks"

#: Decisions on a near-duplicate pair (a < b by case id).
PAIR_DECISIONS: tuple[str, ...] = ("keep_a", "keep_b", "keep_both", "union", "both_empty", "drop_both",
                                   "not_duplicate", "needs_expert")
#: Decisions on a whole near-duplicate group (``keep_both`` = keep all, ``drop_both`` = drop all).
GROUP_DECISIONS: tuple[str, ...] = ("keep_both", "union", "both_empty", "drop_both", "not_duplicate",
                                    "needs_expert")
#: Per-case review states.
CASE_STATES: tuple[str, ...] = ("unreviewed", "accepted", "needs_fix", "corrected")

_UNDOABLE = ("decision", "case_state", "undo")


@dataclass(frozen=True)
class Event:
    """One row of the audit log."""

    id: int
    ts: str
    author: str
    kind: str
    target_kind: str
    target: str
    value: str | None
    note: str
    ref: int | None
    payload: dict[str, Any] | None

    @property
    def members(self) -> tuple[str, ...]:
        """Case ids of a pair/group target (sorted), or ``(case_id,)``."""
        return tuple(self.target.split("\t")) if self.target_kind in ("pair", "group") else (self.target,)


@dataclass(frozen=True)
class Decision:
    """The current decision on a pair or group (derived from the log)."""

    target_kind: str
    members: tuple[str, ...]
    decision: str
    reviewer: str
    ts: str
    note: str
    event_id: int


@dataclass(frozen=True)
class CaseState:
    """The current review state of a case."""

    case_id: str
    state: str
    reviewer: str
    ts: str
    note: str
    event_id: int


@dataclass(frozen=True)
class MaskVersion:
    """One saved mask version; ``file`` is None for a revert to the dataset's original (version 0)."""

    case_id: str
    version: int
    sha256: str | None
    file: str | None
    height: int | None
    width: int | None
    area: int | None
    author: str
    note: str
    created: str
    base_version: int | None
    reverted_from: int | None
    event_id: int

    @property
    def is_original(self) -> bool:
        return self.sha256 is None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def mask_digest(mask: np.ndarray) -> str:
    """SHA-256 of a uint8 (H,W) mask's shape and pixels (the content address of its PNG)."""
    m = np.ascontiguousarray(mask, np.uint8)
    h = hashlib.sha256(f"{m.shape[0]}x{m.shape[1]}:".encode())
    h.update(m.tobytes())
    return h.hexdigest()


def _check_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskError(f"mask must be 2-D (H,W), got shape {m.shape}", hint="pass one label map")
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if not np.issubdtype(m.dtype, np.integer):
        raise MaskError(f"mask must hold integer class ids, got {m.dtype}", hint="threshold probabilities first")
    if m.size and (m.min() < 0 or m.max() > 255):
        raise MaskError("mask values must be in 0..255", hint="use at most 255 classes")
    return m.astype(np.uint8)


def _is_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _canonical_pair(a: str, b: str, decision: str) -> tuple[str, str]:
    """Validate a pair decision; return the stored target ``"a\tb"`` (smaller id first) and the
    decision with ``keep_a``/``keep_b`` swapped when the ids were swapped."""
    if decision not in PAIR_DECISIONS:
        raise unknown_name("pair decision", decision, PAIR_DECISIONS)
    a, b = str(a), str(b)
    if a == b:
        raise StoreError(f"a pair needs two different cases, got {a!r} twice", hint="pick the twin image")
    if a > b:
        a, b = b, a
        decision = {"keep_a": "keep_b", "keep_b": "keep_a"}.get(decision, decision)
    return f"{a}\t{b}", decision


class ReviewStore:
    """Review decisions, case states and mask versions in one SQLite file.

    Args:
        path: the ``.sqlite`` file (created with its folder when missing).
        dataset: optional :class:`engine.datasets.Dataset`, used to load version 0 (the original).
        masks_dir: where mask PNGs go (default ``<store folder>/masks``).
        timeout: seconds to wait for another writer before giving up.
        schema_version: create/migrate only up to this version (tests of migrations); default latest.

    Raises:
        StoreError: not a SQLite file, or written by a newer program (upgrade the workbench).
    """

    def __init__(self, path: str | Path, *, dataset: Any = None, masks_dir: str | Path | None = None,
                 timeout: float = 30.0, schema_version: int | None = None):
        self.path = Path(path).expanduser().resolve()
        self.folder = self.path.parent
        self.masks_dir = Path(masks_dir).resolve() if masks_dir else self.folder / MASKS_DIR
        self.dataset = dataset
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._retry(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone())
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(SCHEMA_VERSION if schema_version is None else int(schema_version))
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                self._conn.close()
            raise StoreError(f"cannot open review store ({exc})", path=self.path,
                             hint="the file is not a review store or is damaged; move it away to start a new one, "
                                  "or restore a backup") from None

    # -- plumbing ---------------------------------------------------------------------------
    @classmethod
    def for_dataset(cls, ds: Any, path: str | Path | None = None, **kwargs: Any) -> "ReviewStore":
        """Open the store of a dataset: ``path`` or ``ds.workdir / "review.sqlite"``."""
        if path is None:
            workdir = getattr(ds, "workdir", None)
            if workdir is None:
                raise StoreError("the dataset has no workspace folder for a review store",
                                 hint="pass a store path (CLI: --store FILE)")
            path = Path(workdir) / STORE_NAME
        return cls(path, dataset=ds, **kwargs)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "ReviewStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReviewStore({str(self.path)!r})"

    def _retry(self, fn: Callable[[], T]) -> T:
        """Call ``fn``, retrying on SQLITE_BUSY/locked until ``timeout`` seconds have passed in all.

        SQLite's busy handler already waits inside each call; the retries cover the cases where
        it returns BUSY at once (e.g. a read transaction that must upgrade to a write in WAL mode).
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)

    def _transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in ``BEGIN IMMEDIATE … COMMIT`` (retried while another writer holds the lock)."""

        def attempt() -> T:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._conn)
                    self._conn.execute("COMMIT")
                    return out
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise

        try:
            return self._retry(attempt)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise StoreError(f"the review store stayed locked by another writer for {self.timeout:.0f}s",
                                 path=self.path, hint="try again; close other programs writing to it") from None
            raise

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._retry(lambda: self._conn.execute(sql, args).fetchall())

    def _migrate(self, target: int) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StoreError(f"review store has schema version {current}, newer than this program supports "
                             f"({SCHEMA_VERSION})", path=self.path,
                             hint="upgrade the workbench to open it (the store is left untouched)")
        if current >= target:
            return

        def run(conn: sqlite3.Connection) -> None:
            have = self._version_in(conn)  # another process may have migrated meanwhile
            if have > SCHEMA_VERSION:
                raise StoreError(f"review store has schema version {have}, newer than this program supports",
                                 path=self.path, hint="upgrade the workbench")
            for v in range(have + 1, target + 1):
                for stmt in MIGRATIONS[v]:
                    conn.execute(stmt)
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(v),))
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created', ?)", (_now(),))

        self._transact(run)

    @staticmethod
    def _version_in(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if row is None:
            return 0
        got = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(got[0]) if got else 0

    @property
    def schema_version(self) -> int:
        """The store's schema version (0 for a new, empty file)."""
        with self._lock:
            return self._retry(lambda: self._version_in(self._conn))

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``'ok'`` when healthy)."""
        return str(self._read("PRAGMA integrity_check")[0][0])

    # -- events -----------------------------------------------------------------------------
    @staticmethod
    def _insert_event(conn: sqlite3.Connection, author: str, kind: str, target_kind: str, target: str,
                      value: str | None, note: str, ref: int | None = None,
                      payload: dict[str, Any] | None = None) -> int:
        cur = conn.execute(
            "INSERT INTO events(ts, author, kind, target_kind, target, value, note, ref, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (_now(), author, kind, target_kind, target, value, note or "", ref,
             json.dumps(payload, sort_keys=True) if payload else None))
        return int(cur.lastrowid)

    @staticmethod
    def _row_event(row: tuple) -> Event:
        return Event(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], row[7] or "",
                     None if row[8] is None else int(row[8]), json.loads(row[9]) if row[9] else None)

    def events(self, *, target_kind: str | None = None, target: Sequence[str] | str | None = None,
               since_id: int = 0, kinds: Iterable[str] | None = None) -> list[Event]:
        """Audit-log events in order (optionally for one target, or after ``since_id``)."""
        sql = "SELECT id, ts, author, kind, target_kind, target, value, note, ref, payload FROM events WHERE id > ?"
        args: list[Any] = [int(since_id)]
        if target_kind is not None:
            sql += " AND target_kind = ?"
            args.append(target_kind)
        if target is not None:
            sql += " AND target = ?"
            args.append(target if isinstance(target, str) else "\t".join(sorted(target)))
        if kinds is not None:
            ks = list(kinds)
            sql += f" AND kind IN ({','.join('?' * len(ks))})"
            args += ks
        return [self._row_event(r) for r in self._read(sql + " ORDER BY id", args)]

    def undone_ids(self) -> set[int]:
        """Ids of events cancelled by an effective undo (undo of an undo re-enables)."""
        undos = self._read("SELECT id, ref FROM events WHERE kind = 'undo' ORDER BY id DESC")
        undone: set[int] = set()
        for eid, ref in undos:
            if eid not in undone and ref is not None:
                undone.add(int(ref))
        return undone

    @staticmethod
    def _author(name: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise StoreError("a reviewer/author name is required", hint="pass who made the change")
        return name.strip()

    # -- decisions --------------------------------------------------------------------------
    def record_decision(self, a: str, b: str, decision: str, reviewer: str, note: str = "") -> int:
        """Record a decision on the pair (a, b); returns the event id.

        ``keep_a``/``keep_b`` refer to the arguments as given; the pair is stored with the
        smaller case id first (``keep_a`` ↔ ``keep_b`` swapped when ``a > b``).
        """
        target, decision = _canonical_pair(a, b, decision)
        who = self._author(reviewer)
        return self._transact(lambda c: self._insert_event(c, who, "decision", "pair", target, decision, note))

    def record_decisions(self, items: Sequence[tuple[str, str, str]], reviewer: str, note: str = "") -> list[int]:
        """Record several pair decisions ``(a, b, decision)`` in ONE transaction: all or nothing.

        Used for bulk proposals (e.g. the case study's drop-the-empty-image rule), so a crash
        mid-way never leaves half of them recorded. Returns the event ids in order.
        """
        rows = [_canonical_pair(a, b, decision) for a, b, decision in items]
        who = self._author(reviewer)
        return self._transact(lambda c: [self._insert_event(c, who, "decision", "pair", t, d, note) for t, d in rows])

    def record_group_decision(self, members: Sequence[str], decision: str, reviewer: str, note: str = "") -> int:
        """Record a decision on a near-duplicate group (≥ 2 distinct case ids); returns the event id."""
        if decision not in GROUP_DECISIONS:
            raise unknown_name("group decision", decision, GROUP_DECISIONS)
        ids = sorted({str(m) for m in members})
        if len(ids) < 2:
            raise StoreError("a group needs at least two different cases", hint="pass the group's members")
        who = self._author(reviewer)
        target = "\t".join(ids)
        return self._transact(lambda c: self._insert_event(c, who, "decision", "group", target, decision, note))

    def undo(self, event_id: int, reviewer: str, note: str = "") -> int:
        """Cancel a decision, case-state or undo event by appending an ``undo`` event; returns its id."""
        who = self._author(reviewer)

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT kind, target_kind, target FROM events WHERE id = ?", (int(event_id),)).fetchone()
            if row is None:
                raise StoreError(f"no event {event_id} in the review store", path=self.path,
                                 hint="pick an id from the audit log")
            if row[0] not in _UNDOABLE:
                raise StoreError(f"event {event_id} ({row[0]}) cannot be undone", path=self.path,
                                 hint="mask versions are never rewritten: use revert() to go back to an older one")
            undos = conn.execute("SELECT id, ref FROM events WHERE kind = 'undo' ORDER BY id DESC").fetchall()
            undone: set[int] = set()
            for eid, ref in undos:
                if eid not in undone and ref is not None:
                    undone.add(int(ref))
            if int(event_id) in undone:
                raise StoreError(f"event {event_id} is already undone", path=self.path,
                                 hint="undo the undo event to restore it")
            return self._insert_event(conn, who, "undo", "event", str(int(event_id)), None, note, ref=int(event_id),
                                      payload={"undone_kind": row[0], "undone_target_kind": row[1],
                                               "undone_target": row[2]})

        return self._transact(run)

    def decisions(self) -> dict[tuple[str, tuple[str, ...]], Decision]:
        """Current decisions: ``{(target_kind, sorted members): Decision}`` (latest effective event)."""
        undone = self.undone_ids()
        out: dict[tuple[str, tuple[str, ...]], Decision] = {}
        for e in self.events(kinds=["decision"]):
            if e.id in undone:
                continue
            key = (e.target_kind, e.members)
            out[key] = Decision(e.target_kind, e.members, str(e.value), e.author, e.ts, e.note, e.id)
        return out

    def decision_for(self, a: str, b: str) -> Decision | None:
        """The current decision on the pair (a, b) (``keep_a``/``keep_b`` relative to a < b)."""
        return self.decisions().get(("pair", tuple(sorted((str(a), str(b))))))

    # -- case review state ------------------------------------------------------------------
    def set_case_state(self, case_id: str, state: str, reviewer: str, note: str = "") -> int:
        """Record a case's review state (``unreviewed``, ``accepted``, ``needs_fix``, ``corrected``)."""
        if state not in CASE_STATES:
            raise unknown_name("case review state", state, CASE_STATES)
        who = self._author(reviewer)
        return self._transact(lambda c: self._insert_event(c, who, "case_state", "case", str(case_id), state, note))

    def case_states(self) -> dict[str, CaseState]:
        """Current state of every case that has one (cases absent here are ``unreviewed``)."""
        undone = self.undone_ids()
        out: dict[str, CaseState] = {}
        for e in self.events(kinds=["case_state"]):
            if e.id not in undone:
                out[e.target] = CaseState(e.target, str(e.value), e.author, e.ts, e.note, e.id)
        return out

    def case_state(self, case_id: str) -> str:
        """The current review state of one case (``unreviewed`` when never set)."""
        st = self.case_states().get(str(case_id))
        return st.state if st else "unreviewed"

    # -- mask versions ----------------------------------------------------------------------
    def _mask_path(self, sha: str) -> Path:
        return self.masks_dir / f"{sha}.png"

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.folder))
        except ValueError:
            return str(path)

    def write_mask_file(self, mask: np.ndarray) -> tuple[str, Path]:
        """Write a mask as a content-addressed lossless PNG (atomic, idempotent): ``(sha256, path)``."""
        from engine.io import write_mask_png

        m = _check_mask(mask)
        sha = mask_digest(m)
        path = self._mask_path(sha)
        if not path.exists():
            write_mask_png(path, m)
        return sha, path

    @staticmethod
    def _latest_in(conn: sqlite3.Connection, case_id: str) -> int:
        row = conn.execute("SELECT MAX(version) FROM mask_versions WHERE case_id = ?", (case_id,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def save_mask_version(self, case_id: str, mask: np.ndarray, author: str, note: str = "",
                          base_version: int | None = None, *, mark_corrected: bool = True) -> int:
        """Save a corrected mask as the case's next version; returns the new version number.

        Args:
            case_id: the case.
            mask: uint8/bool/int (H,W) label map.
            author: who drew it. note: why.
            base_version: the version the edit started from (None or 0 = the dataset's original).
            mark_corrected: also set the case's review state to ``corrected`` (same transaction).

        Raises:
            ConflictError: ``base_version`` is not the newest version (someone saved in
                between); ``err.current_version`` is the newest.
        """
        who = self._author(author)
        m = _check_mask(mask)
        sha, path = self.write_mask_file(m)  # before the transaction: a crash leaves an orphan file only
        base = int(base_version or 0)
        case_id = str(case_id)
        area = int(np.count_nonzero(m))

        def run(conn: sqlite3.Connection) -> int:
            latest = self._latest_in(conn, case_id)
            if base != latest:
                raise ConflictError(f"case {case_id}: your edit started from version {base} but version {latest} "
                                    f"was saved meanwhile", current_version=latest, path=self.path,
                                    hint=f"reload version {latest}, redo or merge your change, and save again")
            version = latest + 1
            eid = self._insert_event(conn, who, "mask_saved", "case", case_id, str(version), note,
                                     payload={"version": version, "sha256": sha, "base_version": base})
            conn.execute("INSERT INTO mask_versions(case_id, version, sha256, file, height, width, area, author, note, "
                         "created, base_version, reverted_from, event_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (case_id, version, sha, self._rel(path), int(m.shape[0]), int(m.shape[1]), area, who,
                          note or "", _now(), base, None, eid))
            if mark_corrected:
                self._insert_event(conn, who, "case_state", "case", case_id, "corrected",
                                   f"mask version {version} saved")
            return version

        return self._transact(run)

    @staticmethod
    def _row_version(row: tuple) -> MaskVersion:
        return MaskVersion(row[0], int(row[1]), row[2], row[3], row[4], row[5], row[6], row[7], row[8] or "", row[9],
                           row[10], row[11], int(row[12]))

    _VCOLS = ("case_id, version, sha256, file, height, width, area, author, note, created, base_version, "
              "reverted_from, event_id")

    def mask_history(self, case_id: str) -> list[MaskVersion]:
        """Saved versions of a case, oldest first (empty: only the original, version 0)."""
        rows = self._read(f"SELECT {self._VCOLS} FROM mask_versions WHERE case_id = ? ORDER BY version",
                          (str(case_id),))
        return [self._row_version(r) for r in rows]

    def latest_mask_version(self, case_id: str) -> int:
        """Newest version number of a case (0 = the original, never edited)."""
        with self._lock:
            return self._retry(lambda: self._latest_in(self._conn, str(case_id)))

    def mask_version(self, case_id: str, version: int) -> MaskVersion | None:
        rows = self._read(f"SELECT {self._VCOLS} FROM mask_versions WHERE case_id = ? AND version = ?",
                          (str(case_id), int(version)))
        return self._row_version(rows[0]) if rows else None

    def mask_file(self, mv: MaskVersion) -> Path | None:
        """Absolute path of a version's PNG (None for the original)."""
        if mv.file is None:
            return None
        p = Path(mv.file)
        return p if p.is_absolute() else self.folder / p

    def load_mask_version(self, case_id: str, version: int) -> np.ndarray:
        """A version's mask, uint8 (H,W). Version 0 (or a revert to it) needs ``dataset``.

        Raises:
            StoreError: no such version, the PNG is missing or does not match its hash, or
                version 0 was asked for without a dataset.
        """
        from engine.io import read_mask

        case_id = str(case_id)
        mv = None if int(version) == 0 else self.mask_version(case_id, version)
        if int(version) != 0 and mv is None:
            latest = self.latest_mask_version(case_id)
            raise StoreError(f"case {case_id} has no mask version {version} (newest is {latest})", path=self.path,
                             hint="pick a version from mask_history()")
        if mv is None or mv.is_original:
            if self.dataset is None:
                raise StoreError(f"version 0 of case {case_id} is the dataset's original mask", path=self.path,
                                 hint="open the store with dataset=... (ReviewStore.for_dataset) or use "
                                      "Dataset.load_mask")
            return self.dataset.load_mask(case_id)
        path = self.mask_file(mv)
        assert path is not None
        try:
            m, _ = read_mask(path)
        except Exception as exc:  # noqa: BLE001 - report as a store problem
            raise StoreError(f"mask version {version} of case {case_id} cannot be read ({exc})", path=path,
                             hint="the masks/ folder beside the store is incomplete; restore it from a backup") from None
        if mask_digest(m) != mv.sha256:
            raise StoreError(f"mask version {version} of case {case_id} does not match its recorded hash", path=path,
                             hint="the PNG was modified outside the workbench; restore it from a backup")
        return m

    def revert(self, case_id: str, version: int, author: str, note: str = "",
               base_version: int | None = None) -> int:
        """Add a new version that copies ``version`` (0 = the dataset's original); returns it.

        ``base_version`` (optional) is checked like in :meth:`save_mask_version`.
        """
        who = self._author(author)
        case_id = str(case_id)
        version = int(version)

        def run(conn: sqlite3.Connection) -> int:
            latest = self._latest_in(conn, case_id)
            if base_version is not None and int(base_version) != latest:
                raise ConflictError(f"case {case_id}: version {latest} was saved after version {base_version}",
                                    current_version=latest, path=self.path,
                                    hint=f"reload version {latest} before reverting")
            if version == 0:
                sha, file, h, w, area = None, None, None, None, None
            else:
                row = conn.execute("SELECT sha256, file, height, width, area FROM mask_versions "
                                   "WHERE case_id = ? AND version = ?", (case_id, version)).fetchone()
                if row is None:
                    raise StoreError(f"case {case_id} has no mask version {version} (newest is {latest})",
                                     path=self.path, hint="pick a version from mask_history()")
                sha, file, h, w, area = row
            new = latest + 1
            eid = self._insert_event(conn, who, "mask_saved", "case", case_id, str(new), note or f"revert to {version}",
                                     payload={"version": new, "sha256": sha, "base_version": latest,
                                              "reverted_from": version})
            conn.execute("INSERT INTO mask_versions(case_id, version, sha256, file, height, width, area, author, note, "
                         "created, base_version, reverted_from, event_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (case_id, new, sha, file, h, w, area, who, note or f"revert to version {version}", _now(),
                          latest, version, eid))
            return new

        return self._transact(run)

    def corrected_masks(self) -> dict[str, MaskVersion]:
        """Cases whose newest version is a corrected mask (not a revert to the original)."""
        rows = self._read(f"SELECT {self._VCOLS} FROM mask_versions m WHERE version = "
                          "(SELECT MAX(version) FROM mask_versions WHERE case_id = m.case_id)")
        out = {}
        for r in rows:
            mv = self._row_version(r)
            if not mv.is_original:
                out[mv.case_id] = mv
        return out

    def summary(self) -> dict[str, Any]:
        """Counts for reports: events, current decisions by value, case states, corrected masks."""
        from collections import Counter

        dec = self.decisions()
        states = self.case_states()
        n_events = int(self._read("SELECT COUNT(*) FROM events")[0][0])
        return {"path": str(self.path), "schema_version": self.schema_version, "n_events": n_events,
                "decisions": dict(Counter(d.decision for d in dec.values())),
                "case_states": dict(Counter(s.state for s in states.values())),
                "n_corrected_masks": len(self.corrected_masks())}
