"""The review store: decisions on near-duplicate pairs, per-case review states, mask versions,
users and roles, case claims and admin settings — one store for SQLite and PostgreSQL.

Where it lives (see :meth:`ReviewStore.for_dataset`):

- ``$SEGWB_STORE_URL`` when set (``sqlite:///PATH`` or ``postgresql://USER@HOST/DB``), else one
  SQLite file per workspace, ``<workspace>/segwb.sqlite``. Datasets share it, each under its own
  *dataset key* (the name of its workspace folder, e.g. ``nerve-1a2b3c4d``). Corrected masks are
  content-addressed PNGs in ``<workspace>/masks`` (or ``$SEGWB_MASKS_DIR``): with PostgreSQL,
  every app server must see the same workspace folder (a shared mount).
- A plain file path (``ReviewStore("x/review.sqlite")``, ``--store x/review.sqlite``) is a
  single-dataset file (dataset key ``''``), the layout of earlier versions; such per-dataset
  ``review.sqlite`` files in a dataset's workspace folder are imported into the workspace store
  the first time the dataset is opened (the old file is left untouched).

Guarantees:

- **Append-only audit log.** Every action is a row of ``events`` (who, when, what, note);
  UPDATE and DELETE on it fail on both backends. Undo is a new ``undo`` event referencing the
  undone one; undoing an undo redoes.
- **Current state in indexed tables.** ``current_decisions`` / ``current_case_states`` hold the
  effective event per pair/group/case, maintained in the same transaction as the log, so
  :meth:`ReviewStore.decisions` costs O(decided pairs), not O(events).
- **Optimistic concurrency.** A decision names the event it replaces (``base_event``): if the
  pair was decided meanwhile (or ``base_event`` is not its current decision), nothing is written
  and :class:`engine.errors.StaleDecision` says who decided what and when. Mask saves check
  ``base_version`` the same way (:class:`engine.errors.ConflictError`).
- **Users and roles.** viewer < annotator (saves mask versions, claims cases) < reviewer (decides
  pairs, sets review states, undoes) < admin (users, data roots, export roots). A store WITHOUT
  users is in *open single-user mode*: any author name is accepted (the demo, bound to
  127.0.0.1). Once one user exists, every write is checked here, in the engine: an unknown,
  disabled or under-privileged acting user raises :class:`engine.errors.PermissionDenied`.
- **Case claims** with a lease (:meth:`ReviewStore.claim`): who is editing a case now.
- **Transactions with retries** (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``SERIALIZABLE``) and
  atomic mask files (temp + rename, written before the row, so a crash leaves an orphan file only).

Example:
    >>> store = ReviewStore("/tmp/review.sqlite")                           # doctest: +SKIP
    >>> eid = store.record_decision("2_5", "2_13", "keep_a", "alice")       # doctest: +SKIP
    >>> d = store.decision_for("2_5", "2_13"); d.kept, d.dropped            # doctest: +SKIP
    (('2_5',), ('2_13',))
    >>> store.record_decision("2_5", "2_13", "keep_b", "bob", base_event=eid)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.curation.store import db as _db
from engine.curation.store import schema as S
from engine.errors import (ClaimHeld, ConfigError, ConflictError, MaskError, PermissionDenied, StaleDecision,
                           StoreError, unknown_name)

STORE_NAME = "review.sqlite"        # the legacy single-dataset file in a dataset's workspace folder
WORKSPACE_STORE_NAME = "segwb.sqlite"  # the default store: one per workspace
MASKS_DIR = "masks"
MASKS_DIR_ENV = "SEGWB_MASKS_DIR"
STORE_URL_ENV = _db.STORE_URL_ENV
SCHEMA_VERSION = S.SCHEMA_VERSION

#: Decisions on a near-duplicate pair; ``keep_a``/``keep_b`` refer to the pair AS GIVEN by the caller.
PAIR_DECISIONS: tuple[str, ...] = ("keep_a", "keep_b", "keep_both", "union", "both_empty", "drop_both",
                                   "not_duplicate", "needs_expert")
#: Decisions on a whole near-duplicate group (``keep_both`` = keep all, ``drop_both`` = drop all).
GROUP_DECISIONS: tuple[str, ...] = ("keep_both", "union", "both_empty", "drop_both", "not_duplicate",
                                    "needs_expert")
#: Per-case review states.
CASE_STATES: tuple[str, ...] = ("unreviewed", "accepted", "needs_fix", "corrected")
#: Roles, weakest first; each role may do everything the roles before it may.
ROLES: tuple[str, ...] = ("viewer", "annotator", "reviewer", "admin")
ROLE_RANK = {r: i for i, r in enumerate(ROLES)}
#: Default case-claim lease in seconds.
DEFAULT_CLAIM_TTL = 300.0

_UNDOABLE = ("decision", "case_state", "undo")
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_SWAP = {"keep_a": "keep_b", "keep_b": "keep_a"}


class _LocalOperator:
    """The person at this machine's shell (the CLI): may manage users without signing in.

    Whoever can run ``python -m engine`` against the store can already read and write its
    database directly, so the CLI needs no password; the UI never passes this object.
    """

    @property
    def name(self) -> str:
        try:
            return f"local:{getpass.getuser()}"
        except Exception:  # noqa: BLE001 - no login name in some containers
            return "local:operator"

    def __repr__(self) -> str:
        return "LOCAL_OPERATOR"


#: Pass as ``actor=`` for user/settings changes made from the local command line.
LOCAL_OPERATOR = _LocalOperator()


# ----------------------------------------------------------------------------------- records
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


def _kept_dropped(decision: str, a: str, b: str, members: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if decision == "keep_a":
        return (a,), (b,)
    if decision == "keep_b":
        return (b,), (a,)
    if decision == "drop_both":
        return (), tuple(members)
    return tuple(members), ()


@dataclass(frozen=True)
class Decision:
    """The current decision on a pair or group.

    ``decision`` is canonical: ``keep_a``/``keep_b`` relative to ``members`` (sorted ids). ``a``,
    ``b`` and ``given`` are the pair as the reviewer saw it and the decision relative to that
    order; ``kept``/``dropped`` are the case ids left in / taken out of a cleaned dataset
    (``needs_expert``, ``not_duplicate``, ``keep_both``, ``union`` and ``both_empty`` keep all).
    Use :meth:`relative_to` to read it for the pair as shown on screen.
    """

    target_kind: str
    members: tuple[str, ...]
    decision: str
    reviewer: str
    ts: str
    note: str
    event_id: int
    a: str = ""
    b: str = ""
    given: str = ""
    kept: tuple[str, ...] = field(default=())
    dropped: tuple[str, ...] = field(default=())

    def relative_to(self, a: str, b: str) -> str:
        """The decision with ``keep_a``/``keep_b`` meaning the ``a``/``b`` given here."""
        if self.target_kind != "pair":
            return self.decision
        return _SWAP.get(self.decision, self.decision) if str(a) > str(b) else self.decision

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``a``, ``b``, ``decision`` (relative to a/b), ``kept``, ``dropped``, ``user``, ``event_id``…"""
        return {"target_kind": self.target_kind, "members": list(self.members), "a": self.a, "b": self.b,
                "decision": self.given or self.decision, "canonical_decision": self.decision,
                "kept": list(self.kept), "dropped": list(self.dropped), "user": self.reviewer, "ts": self.ts,
                "note": self.note, "event_id": self.event_id}


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


@dataclass(frozen=True)
class User:
    """A local account (the password hash never leaves the store)."""

    name: str
    role: str
    active: bool
    created: str
    updated: str

    def can(self, role: str) -> bool:
        """True when this user is active and at least ``role``."""
        return self.active and ROLE_RANK[self.role] >= ROLE_RANK[role]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "active": self.active}


@dataclass(frozen=True)
class Claim:
    """A lease on a case: ``user`` is editing it until ``expires`` (UNIX seconds)."""

    case_id: str
    user: str
    claimed: float
    expires: float

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires

    @property
    def seconds_left(self) -> float:
        return max(0.0, self.expires - time.time())


# ----------------------------------------------------------------------------------- helpers
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


def _canonical_pair(a: str, b: str, decision: str) -> tuple[str, str]:
    """Validate a pair decision; return the stored target ``"lo\\thi"`` and the decision relative
    to that sorted order (``keep_a``/``keep_b`` swapped when the caller gave the larger id first)."""
    if decision not in PAIR_DECISIONS:
        raise unknown_name("pair decision", decision, PAIR_DECISIONS)
    a, b = str(a), str(b)
    if a == b:
        raise StoreError(f"a pair needs two different cases, got {a!r} twice", hint="pick the twin image")
    if a > b:
        a, b = b, a
        decision = _SWAP.get(decision, decision)
    return f"{a}\t{b}", decision


def _author(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise StoreError("a reviewer/author name is required", hint="pass who made the change")
    return name.strip()


def _event_from_row(r: Any) -> Event:
    return Event(int(r.id), r.ts, r.author, r.kind, r.target_kind, r.target, r.value, r.note or "",
                 None if r.ref is None else int(r.ref), json.loads(r.payload) if r.payload else None)


def _decision_from_row(r: Any) -> Decision:
    """A Decision from an events row (``target_kind``, ``target``, ``value``, ``payload``...)."""
    members = tuple(r.target.split("\t"))
    payload = json.loads(r.payload) if r.payload else {}
    canon = str(r.value)
    if r.target_kind == "pair":
        a, b = str(payload.get("a", members[0])), str(payload.get("b", members[1]))
        if {a, b} != set(members):
            a, b = members
        given = _SWAP.get(canon, canon) if a > b else canon
        kept, dropped = _kept_dropped(given, a, b, members)
    else:
        a, b, given = members[0], members[-1], canon
        kept, dropped = _kept_dropped(canon, a, b, members)
    return Decision(r.target_kind, members, canon, r.author, r.ts, r.note or "", int(r.id), a, b, given, kept, dropped)


def _decision_from_current(r: Any) -> Decision:
    """A Decision from a ``current_decisions`` row (no JSON to parse)."""
    members = tuple(r.target.split("\t"))
    a, b, given = r.a, r.b, r.given
    kept, dropped = _kept_dropped(given, a, b, members)
    return Decision(r.target_kind, members, r.decision, r.author, r.ts, r.note, int(r.event_id), a, b, given,
                    kept, dropped)


def _undone_among(conn: Connection, ids: Iterable[int]) -> set[int]:
    """Which of ``ids`` are cancelled by an effective undo (following undo-of-undo chains)."""
    ev = S.events
    frontier = {int(i) for i in ids}
    wanted = set(frontier)
    undos: dict[int, int] = {}
    while frontier:
        rows = conn.execute(sa.select(ev.c.id, ev.c.ref).where(ev.c.kind == "undo", ev.c.ref.in_(sorted(frontier))))
        frontier = set()
        for eid, ref in rows:
            if eid not in undos:
                undos[int(eid)] = int(ref)
                frontier.add(int(eid))
    undone: set[int] = set()
    for eid in sorted(undos, reverse=True):
        if eid not in undone:
            undone.add(undos[eid])
    return undone & wanted


def _all_undone(conn: Connection, dataset: str | None) -> set[int]:
    ev = S.events
    q = sa.select(ev.c.id, ev.c.ref).where(ev.c.kind == "undo")
    if dataset is not None:
        q = q.where(ev.c.dataset == dataset)
    undone: set[int] = set()
    for eid, ref in sorted(conn.execute(q), reverse=True):
        if eid not in undone and ref is not None:
            undone.add(int(ref))
    return undone


def _current_row(r: Any, rev: int) -> dict[str, Any]:
    """The ``current_decisions`` / ``current_case_states`` values for an events row."""
    if r.kind == "decision":
        d = _decision_from_row(r)
        return {"dataset": r.dataset, "target_kind": r.target_kind, "target": r.target, "event_id": int(r.id),
                "decision": d.decision, "a": d.a, "b": d.b, "given": d.given, "author": r.author, "ts": r.ts,
                "note": r.note or "", "rev": rev}
    return {"dataset": r.dataset, "case_id": r.target, "event_id": int(r.id), "state": str(r.value),
            "author": r.author, "ts": r.ts, "note": r.note or "", "rev": rev}


def _bump(conn: Connection, dataset: str) -> int:
    """Advance the dataset's revision (same transaction as the state change it announces); returns it."""
    r = S.revisions
    if conn.execute(r.update().where(r.c.dataset == dataset).values(rev=r.c.rev + 1)).rowcount == 0:
        conn.execute(r.insert().values(dataset=dataset, rev=1, reset=0))
    return int(conn.execute(sa.select(r.c.rev).where(r.c.dataset == dataset)).scalar())


def _revision(conn: Connection, dataset: str) -> tuple[int, int]:
    r = S.revisions
    row = conn.execute(sa.select(r.c.rev, r.c.reset).where(r.c.dataset == dataset)).first()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


#: Last read per (store, dataset, what): (revision, value); refreshed with only the rows written since.
_READ_CACHE: dict[tuple[str, str, str], tuple[int, Any]] = {}
_READ_CACHE_LOCK = threading.Lock()


def clear_read_cache() -> None:
    """Forget cached reads (benchmarks of the uncached path; tests)."""
    with _READ_CACHE_LOCK:
        _READ_CACHE.clear()


def rebuild_current(conn: Connection, dataset: str | None) -> None:
    """Recompute ``current_decisions`` and ``current_case_states`` from the log (one dataset, or all)."""
    ev, cd, cs = S.events, S.current_decisions, S.current_case_states
    undone = _all_undone(conn, dataset)
    q = sa.select(ev.c.id, ev.c.dataset, ev.c.kind, ev.c.target_kind, ev.c.target).where(
        ev.c.kind.in_(("decision", "case_state"))).order_by(ev.c.id)
    if dataset is not None:
        q = q.where(ev.c.dataset == dataset)
    latest: dict[tuple[str, str, str, str], int] = {}
    for eid, ds, kind, tk, target in conn.execute(q):
        if eid not in undone:
            latest[(ds, kind, tk, target)] = int(eid)
    for t in (cd, cs):
        conn.execute(t.delete() if dataset is None else t.delete().where(t.c.dataset == dataset))
    touched = {k[0] for k in latest} | ({dataset} if dataset is not None else set())
    if dataset is None:
        touched |= set(conn.execute(sa.select(S.revisions.c.dataset)).scalars())
    revs = {}
    for ds in touched:  # every cache of these datasets must re-read everything
        revs[ds] = _bump(conn, ds)
        conn.execute(S.revisions.update().where(S.revisions.c.dataset == ds).values(reset=revs[ds]))
    ids = sorted(latest.values())
    for i in range(0, len(ids), 5000):
        rows = conn.execute(sa.select(ev).where(ev.c.id.in_(ids[i:i + 5000]))).all()
        dec = [_current_row(r, revs[r.dataset]) for r in rows if r.kind == "decision"]
        st = [_current_row(r, revs[r.dataset]) for r in rows if r.kind == "case_state"]
        if dec:
            conn.execute(cd.insert(), dec)
        if st:
            conn.execute(cs.insert(), st)


def dataset_key(ds: Any) -> str:
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


# ----------------------------------------------------------------------------------- the store
class ReviewStore:
    """Review decisions, case states, mask versions, users, claims and settings in one store.

    Args:
        path: a store URL (``sqlite:///PATH``, ``postgresql://USER@HOST/DB``) or a plain SQLite
            file path (created with its folder when missing; an EMPTY or non-SQLite file is refused).
        dataset: optional :class:`engine.datasets.Dataset`, used to load version 0 (the original).
        masks_dir: where mask PNGs go (default ``$SEGWB_MASKS_DIR``, else ``<store folder>/masks``
            for SQLite, ``<workspace>/masks`` for PostgreSQL).
        timeout: seconds to keep retrying when other writers hold the store.
        schema_version: create/migrate only up to this version (tests of migrations); default latest.
        dataset_key: which dataset's rows this object reads and writes (``''``: a single-dataset file).

    Raises:
        StoreError: not a store, an empty file, unreachable, or written by a newer program.
    """

    def __init__(self, path: str | Path, *, dataset: Any = None, masks_dir: str | Path | None = None,
                 timeout: float = 30.0, schema_version: int | None = None, dataset_key: str = ""):
        self.url = _db.normalize_url(path)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.dataset = dataset
        self.dataset_key = str(dataset_key or "")
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        target = SCHEMA_VERSION if schema_version is None else int(schema_version)
        if self.is_sqlite and self.url.database and self.url.database != ":memory:":
            self.path: Any = Path(self.url.database)
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
            self._identity = self.tx.read(lambda c: c.execute(
                sa.select(S.meta.c.value).where(S.meta.c.key == "created")).scalar()) or ""
        except BaseException:
            self.engine.dispose()
            raise

    # -- plumbing ---------------------------------------------------------------------------
    @classmethod
    def for_dataset(cls, ds: Any, path: str | Path | None = None, **kwargs: Any) -> "ReviewStore":
        """Open the store holding a dataset's reviews.

        ``path`` None: ``$SEGWB_STORE_URL`` or the workspace store ``<workspace>/segwb.sqlite``,
        keyed by the dataset (a legacy ``<workdir>/review.sqlite`` is imported on first open).
        ``path`` a URL (``sqlite:///…``, ``postgresql://…``): that shared store, keyed by the dataset.
        ``path`` a plain file path: a single-dataset file (dataset key ``''``).
        """
        workdir = getattr(ds, "workdir", None)
        if path is not None and "://" not in str(path):
            return cls(path, dataset=ds, **kwargs)
        if path is None:
            if workdir is None and not os.environ.get(STORE_URL_ENV, "").strip():
                raise StoreError("the dataset has no workspace folder for a review store",
                                 hint="pass a store (CLI: --store URL) or set SEGWB_STORE_URL")
            root = Path(workdir).parent.parent if workdir is not None else None
            path = default_store_url(root)
            if "masks_dir" not in kwargs and not os.environ.get(MASKS_DIR_ENV) and root is not None:
                kwargs["masks_dir"] = root / MASKS_DIR
        kwargs.setdefault("dataset_key", dataset_key(ds))
        store = cls(path, dataset=ds, **kwargs)
        if workdir is not None:
            legacy = Path(workdir) / STORE_NAME
            if legacy.is_file() and legacy.resolve() != (store.path if store.is_sqlite else None):
                try:
                    store.import_legacy(legacy)
                except BaseException:
                    store.close()
                    raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "ReviewStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        key = f", dataset_key={self.dataset_key!r}" if self.dataset_key else ""
        return f"ReviewStore({str(self.path)!r}{key})"

    def _migrate_engine(self, eng: sa.Engine, target: int) -> None:
        tx = _db.Transactor(eng, self.timeout, str(getattr(self, "path", self.url)))

        def version(conn: Connection) -> int:
            insp = sa.inspect(conn)
            if not insp.has_table("meta"):
                if insp.has_table("events"):
                    raise StoreError("has an events table but no meta table: not a review store", path=self.path,
                                     hint="point --store / SEGWB_STORE_URL at a review store or an empty database")
                return 0
            got = conn.execute(sa.select(S.meta.c.value).where(S.meta.c.key == "schema_version")).scalar()
            return int(got) if got is not None else 0

        try:
            current = tx.read(version)
        except StoreError:
            raise
        except sa.exc.DatabaseError as exc:  # pragma: no cover - surfaced by Transactor normally
            raise StoreError(f"cannot open review store ({exc.orig})", path=self.path) from None
        if current > SCHEMA_VERSION:
            raise StoreError(f"review store has schema version {current}, newer than this program supports "
                             f"({SCHEMA_VERSION})", path=self.path,
                             hint="upgrade the workbench to open it (the store is left untouched)")
        if current >= target:
            return

        def run(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":  # one migrator at a time across app servers
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7310452)"))
            have = version(conn)  # another process may have migrated meanwhile
            if have > SCHEMA_VERSION:
                raise StoreError(f"review store has schema version {have}, newer than this program supports",
                                 path=self.path, hint="upgrade the workbench")
            for v in range(have + 1, target + 1):
                S.MIGRATIONS[v](conn)
                conn.execute(S.meta.delete().where(S.meta.c.key == "schema_version"))
                conn.execute(S.meta.insert().values(key="schema_version", value=str(v)))
            if conn.execute(sa.select(S.meta.c.key).where(S.meta.c.key == "created")).first() is None:
                conn.execute(S.meta.insert().values(key="created", value=_now()))

        tx.write(run, isolation="READ COMMITTED")

    @property
    def schema_version(self) -> int:
        """The store's schema version."""
        return int(self.tx.read(lambda c: c.execute(
            sa.select(S.meta.c.value).where(S.meta.c.key == "schema_version")).scalar() or 0))

    def integrity_check(self) -> str:
        """``'ok'`` when healthy (SQLite: ``PRAGMA integrity_check``; PostgreSQL: the server answers)."""
        if self.is_sqlite:
            return str(self.tx.read(lambda c: c.exec_driver_sql("PRAGMA integrity_check").scalar()))
        return "ok" if self.tx.read(lambda c: c.execute(sa.text("SELECT 1")).scalar()) == 1 else "error"

    # -- identity ---------------------------------------------------------------------------
    def _acting(self, conn: Connection, name: Any, need: str) -> str:
        """The acting user's name if they may act as ``need``; open single-user mode accepts any name."""
        if isinstance(name, _LocalOperator):
            return name.name
        who = _author(name)
        n_users = conn.execute(sa.select(sa.func.count()).select_from(S.users)).scalar()
        if not n_users:
            return who
        row = conn.execute(sa.select(S.users.c.role, S.users.c.active).where(S.users.c.name == who)).first()
        if row is None:
            raise PermissionDenied(f"unknown user {who!r}: this store has accounts, so every write needs a "
                                   "signed-in user", path=self.path, hint="sign in, or ask an admin to add you "
                                   "(python -m engine users add NAME --role ROLE)")
        if not row.active:
            raise PermissionDenied(f"user {who!r} is disabled", path=self.path, hint="ask an admin to enable you")
        if ROLE_RANK.get(row.role, -1) < ROLE_RANK[need]:
            raise PermissionDenied(f"user {who!r} is a {row.role}; this needs the {need} role or higher",
                                   path=self.path, hint=f"ask an admin: python -m engine users set-role {who} "
                                                        f"--role {need}")
        return who

    def _admin_log(self, conn: Connection, actor: str, action: str, target: str, detail: Any = None) -> None:
        conn.execute(S.admin_log.insert().values(ts=_now(), actor=actor, action=action, target=target,
                                                 detail=None if detail is None else json.dumps(detail, sort_keys=True)))

    @staticmethod
    def _hasher():
        from argon2 import PasswordHasher

        return PasswordHasher()

    @staticmethod
    def _user_from_row(r: Any) -> User:
        return User(r.name, r.role, bool(r.active), r.created, r.updated)

    def users(self) -> list[User]:
        """All accounts, by name."""
        u = S.users
        rows = self.tx.read(lambda c: c.execute(sa.select(u.c.name, u.c.role, u.c.active, u.c.created, u.c.updated)
                                                .order_by(u.c.name)).all())
        return [self._user_from_row(r) for r in rows]

    list_users = users

    def user(self, name: str) -> User | None:
        """One account, or None."""
        return next((u for u in self.users() if u.name == name), None)

    def has_users(self) -> bool:
        """False in open single-user mode (no accounts: any author name is accepted)."""
        return bool(self.tx.read(lambda c: c.execute(sa.select(sa.func.count()).select_from(S.users)).scalar()))

    @property
    def open_mode(self) -> bool:
        """True when the store has no accounts (single-user demo mode)."""
        return not self.has_users()

    def has_admin(self) -> bool:
        """True when at least one ACTIVE admin exists (team mode can start)."""
        u = S.users
        return bool(self.tx.read(lambda c: c.execute(sa.select(sa.func.count()).select_from(u).where(
            u.c.role == "admin", u.c.active.is_(True))).scalar()))

    def _check_role(self, role: str) -> str:
        if role not in ROLES:
            raise unknown_name("role", role, ROLES)
        return role

    @staticmethod
    def _check_password(password: Any) -> str:
        if not isinstance(password, str) or not password.strip("\r\n"):
            raise ConfigError("a password is required", hint="pass one line on stdin or set SEGWB_PASSWORD")
        return password.strip("\r\n")

    def add_user(self, name: str, role: str, password: str, *, actor: Any = None) -> User:
        """Create an account (argon2 hash). ``actor``: an admin, :data:`LOCAL_OPERATOR` (CLI), or None
        only while the store has no accounts at all (creating the first one).

        Raises:
            ConfigError: bad name/role/password. StoreError: the name exists. PermissionDenied: actor.
        """
        name = str(name).strip()
        if not _USER_NAME.match(name):
            raise ConfigError(f"invalid user name {name!r}", hint="use 1-64 letters, digits, . _ @ + - "
                                                                 "(starting with a letter or digit)")
        self._check_role(role)
        pw_hash = self._hasher().hash(self._check_password(password))

        def run(conn: Connection) -> User:
            n = conn.execute(sa.select(sa.func.count()).select_from(S.users)).scalar()
            if actor is None:
                if n:
                    raise PermissionDenied("adding a user needs an acting admin once accounts exist",
                                           path=self.path, hint="sign in as an admin (or use the CLI on the server)")
                who = "first-user"
            else:
                who = self._acting(conn, actor, "admin")
            if conn.execute(sa.select(S.users.c.name).where(S.users.c.name == name)).first() is not None:
                raise StoreError(f"user {name!r} already exists", path=self.path,
                                 hint="pick another name, or use set-role / enable")
            now = _now()
            conn.execute(S.users.insert().values(name=name, role=role, pw_hash=pw_hash, active=True, created=now,
                                                 updated=now))
            self._admin_log(conn, who, "user_add", name, {"role": role})
            return User(name, role, True, now, now)

        return self.tx.write(run)

    def _change_user(self, name: str, actor: Any, action: str, values: dict[str, Any], detail: Any) -> User:
        def run(conn: Connection) -> User:
            who = self._acting(conn, actor, "admin")
            u = S.users
            row = conn.execute(sa.select(u).where(u.c.name == name)).first()
            if row is None:
                raise StoreError(f"no user {name!r}", path=self.path, hint="see python -m engine users list")
            new_role = values.get("role", row.role)
            new_active = values.get("active", bool(row.active))
            if row.role == "admin" and row.active and (new_role != "admin" or not new_active):
                n_admins = conn.execute(sa.select(sa.func.count()).select_from(u).where(
                    u.c.role == "admin", u.c.active.is_(True))).scalar()
                if n_admins <= 1:
                    raise StoreError(f"{name!r} is the last active admin", path=self.path,
                                     hint="make another user admin first")
            now = _now()
            conn.execute(u.update().where(u.c.name == name).values(updated=now, **values))
            self._admin_log(conn, who, action, name, detail)
            return User(name, new_role, new_active, row.created, now)

        return self.tx.write(run)

    def set_role(self, name: str, role: str, *, actor: Any) -> User:
        """Change a user's role (admin only; the last active admin cannot be demoted)."""
        return self._change_user(name, actor, "user_set_role", {"role": self._check_role(role)}, {"role": role})

    def disable_user(self, name: str, *, actor: Any) -> User:
        """Disable an account (kept for the audit log; its writes and sign-ins are refused)."""
        return self._change_user(name, actor, "user_disable", {"active": False}, None)

    def enable_user(self, name: str, *, actor: Any) -> User:
        """Re-enable a disabled account."""
        return self._change_user(name, actor, "user_enable", {"active": True}, None)

    def set_password(self, name: str, password: str, *, actor: Any) -> None:
        """Set a password: an admin for anyone, a user for themself (``actor == name``)."""
        pw_hash = self._hasher().hash(self._check_password(password))
        if isinstance(actor, str) and actor.strip() == name:
            def run(conn: Connection) -> None:
                self._acting(conn, name, "viewer")
                conn.execute(S.users.update().where(S.users.c.name == name).values(pw_hash=pw_hash, updated=_now()))
                self._admin_log(conn, name, "user_password", name)

            self.tx.write(run)
            return
        self._change_user(name, actor, "user_password", {"pw_hash": pw_hash}, None)

    def authenticate(self, name: str, password: str) -> User:
        """Check a sign-in; returns the user.

        Raises:
            PermissionDenied: unknown user, wrong password or disabled account (one message for the
                first two, so names cannot be probed).
        """
        from argon2 import exceptions as argon_exc

        u = S.users
        row = self.tx.read(lambda c: c.execute(sa.select(u).where(u.c.name == str(name).strip())).first())
        bad = PermissionDenied("wrong user name or password", hint="check both; an admin can reset a password")
        if row is None or not row.pw_hash:
            self._hasher().hash("timing-equaliser")  # same cost as a real check
            raise bad
        ph = self._hasher()
        try:
            ph.verify(row.pw_hash, str(password))
        except (argon_exc.VerifyMismatchError, argon_exc.VerificationError, argon_exc.InvalidHashError):
            raise bad from None
        if not row.active:
            raise PermissionDenied(f"user {row.name!r} is disabled", hint="ask an admin to enable you")
        if ph.check_needs_rehash(row.pw_hash):
            new = ph.hash(str(password))
            self.tx.write(lambda c: c.execute(u.update().where(u.c.name == row.name).values(pw_hash=new)))
        return self._user_from_row(row)

    def check_role(self, name: str, role: str) -> str:
        """Raise :class:`PermissionDenied` unless ``name`` may act as ``role`` now (open mode: anyone)."""
        return self.tx.read(lambda c: self._acting(c, name, role))

    def admin_log(self) -> list[dict[str, Any]]:
        """User and settings changes, oldest first."""
        a = S.admin_log
        rows = self.tx.read(lambda c: c.execute(sa.select(a).order_by(a.c.id)).all())
        return [{"id": r.id, "ts": r.ts, "actor": r.actor, "action": r.action, "target": r.target,
                 "detail": json.loads(r.detail) if r.detail else None} for r in rows]

    # -- settings (admin) -------------------------------------------------------------------
    def _get_setting(self, key: str, default: Any) -> Any:
        s = S.settings
        got = self.tx.read(lambda c: c.execute(sa.select(s.c.value).where(s.c.key == key)).scalar())
        return default if got is None else json.loads(got)

    def _set_setting(self, key: str, value: Any, actor: Any) -> None:
        def run(conn: Connection) -> None:
            who = self._acting(conn, actor, "admin")
            s = S.settings
            conn.execute(s.delete().where(s.c.key == key))
            conn.execute(s.insert().values(key=key, value=json.dumps(value), updated=_now(), author=who))
            self._admin_log(conn, who, "setting", key, value)

        self.tx.write(run)

    @staticmethod
    def _folders(folders: Iterable[str | Path], what: str) -> list[str]:
        out: list[str] = []
        for f in folders:
            p = Path(str(f)).expanduser()
            if not p.is_absolute():
                raise ConfigError(f"{what} must be an absolute folder path, got {str(f)!r}",
                                  hint="give the full path, e.g. /data/ultrasound")
            if not p.is_dir():
                raise ConfigError(f"{what} is not an existing folder", path=p, hint="create it or fix the path")
            r = str(p.resolve())
            if r not in out:
                out.append(r)
        return out

    def data_roots(self) -> list[Path]:
        """Folders under which team mode may open datasets (empty: none configured)."""
        return [Path(p) for p in self._get_setting("data_roots", [])]

    def set_data_roots(self, folders: Iterable[str | Path], *, actor: Any) -> list[Path]:
        """Replace the data roots (admin only; existing absolute folders)."""
        roots = self._folders(folders, "a data root")
        self._set_setting("data_roots", roots, actor)
        return [Path(p) for p in roots]

    def export_roots(self) -> list[Path]:
        """Folders where team mode may write exports and manifests (besides the workspace)."""
        return [Path(p) for p in self._get_setting("export_roots", [])]

    def export_root(self) -> Path | None:
        """The first export root (the default target of exports), or None."""
        roots = self.export_roots()
        return roots[0] if roots else None

    def set_export_roots(self, folders: Iterable[str | Path], *, actor: Any) -> list[Path]:
        """Replace the export roots (admin only; existing absolute folders)."""
        roots = self._folders(folders, "an export root")
        self._set_setting("export_roots", roots, actor)
        return [Path(p) for p in roots]

    @staticmethod
    def path_under(path: str | Path, roots: Iterable[str | Path]) -> bool:
        """True when ``path`` (resolved, symlinks followed) lies inside one of ``roots``."""
        p = Path(path).expanduser().resolve()
        return any(p == Path(r).resolve() or Path(r).resolve() in p.parents for r in roots)

    # -- events -----------------------------------------------------------------------------
    def _insert_event(self, conn: Connection, author: str, kind: str, target_kind: str, target: str,
                      value: str | None, note: str, ref: int | None = None,
                      payload: dict[str, Any] | None = None) -> int:
        res = conn.execute(S.events.insert().values(
            ts=_now(), author=author, kind=kind, target_kind=target_kind, target=target, value=value,
            note=note or "", ref=ref, payload=json.dumps(payload, sort_keys=True) if payload else None,
            dataset=self.dataset_key))
        return int(res.inserted_primary_key[0])

    def events(self, *, target_kind: str | None = None, target: Sequence[str] | str | None = None,
               since_id: int = 0, kinds: Iterable[str] | None = None) -> list[Event]:
        """Audit-log events of this dataset in order (optionally for one target, or after ``since_id``)."""
        ev = S.events
        q = sa.select(ev).where(ev.c.dataset == self.dataset_key, ev.c.id > int(since_id))
        if target_kind is not None:
            q = q.where(ev.c.target_kind == target_kind)
        if target is not None:
            q = q.where(ev.c.target == (target if isinstance(target, str) else "\t".join(sorted(target))))
        if kinds is not None:
            q = q.where(ev.c.kind.in_(list(kinds)))
        return [_event_from_row(r) for r in self.tx.read(lambda c: c.execute(q.order_by(ev.c.id)).all())]

    def undone_ids(self) -> set[int]:
        """Ids of events cancelled by an effective undo (undo of an undo re-enables)."""
        return self.tx.read(lambda c: _all_undone(c, self.dataset_key))

    # -- current-state maintenance ----------------------------------------------------------
    def _current_decision(self, conn: Connection, target_kind: str, target: str) -> "Decision | None":
        cd = S.current_decisions
        r = conn.execute(sa.select(cd).where(cd.c.dataset == self.dataset_key, cd.c.target_kind == target_kind,
                                             cd.c.target == target, cd.c.event_id > 0)).first()
        return None if r is None else _decision_from_current(r)

    def _set_current(self, conn: Connection, kind: str, target_kind: str, target: str, event_id: int | None) -> None:
        """Point a target's current row at ``event_id`` (None: nothing in force — kept as a tombstone
        row with ``event_id = 0`` so incremental readers learn about it)."""
        rev = _bump(conn, self.dataset_key)
        if kind == "decision":
            t = S.current_decisions
            where = (t.c.dataset == self.dataset_key, t.c.target_kind == target_kind, t.c.target == target)
            tomb = {"dataset": self.dataset_key, "target_kind": target_kind, "target": target, "event_id": 0,
                    "decision": "", "a": "", "b": "", "given": "", "author": "", "ts": "", "note": "", "rev": rev}
        else:
            t = S.current_case_states
            where = (t.c.dataset == self.dataset_key, t.c.case_id == target)
            tomb = {"dataset": self.dataset_key, "case_id": target, "event_id": 0, "state": "", "author": "",
                    "ts": "", "note": "", "rev": rev}
        conn.execute(t.delete().where(*where))
        if event_id is not None:
            row = conn.execute(sa.select(S.events).where(S.events.c.id == int(event_id))).one()
            conn.execute(t.insert().values(**_current_row(row, rev)))
        else:
            conn.execute(t.insert().values(**tomb))

    def _cached_read(self, what: str, full: Any, changes: Any) -> Any:
        """A dict read in one snapshot, kept per (store, dataset): unchanged revision → the kept dict;
        moved → the kept dict updated with ``changes(conn, since_rev)`` (rows written since: O(changes));
        no usable copy → ``full(conn)``. Returns the kept dict (callers copy it)."""
        key = (f"{self.url}#{self._identity}", self.dataset_key, what)  # a re-created store is another store

        def run(conn: Connection) -> Any:
            rev, reset = _revision(conn, self.dataset_key)
            with _READ_CACHE_LOCK:
                hit = _READ_CACHE.get(key)
            if hit is not None and hit[0] == rev:
                return hit[1]
            if hit is not None and reset <= hit[0] < rev:
                value = dict(hit[1])
                for k, v in changes(conn, hit[0]):
                    if v is None:
                        value.pop(k, None)
                    else:
                        value[k] = v
            else:
                value = full(conn)
            with _READ_CACHE_LOCK:
                _READ_CACHE[key] = (rev, value)
            return value

        return self.tx.read(run)

    def _recompute(self, conn: Connection, kind: str, target_kind: str, target: str) -> None:
        ev = S.events
        ids = [int(i) for i in conn.execute(sa.select(ev.c.id).where(
            ev.c.dataset == self.dataset_key, ev.c.kind == kind, ev.c.target_kind == target_kind,
            ev.c.target == target)).scalars()]
        undone = _undone_among(conn, ids)
        live = [i for i in ids if i not in undone]
        self._set_current(conn, kind, target_kind, target, max(live) if live else None)

    def _stale(self, d: "Decision", base_event: int | None, what: str) -> StaleDecision:
        where = f"pair ({d.a}, {d.b})" if d.target_kind == "pair" else f"group of {len(d.members)}"
        seen = "without having seen a decision" if base_event is None else f"based on event {base_event}"
        return StaleDecision(
            f"{where} was already decided: {d.given} (keep {', '.join(d.kept) or 'none'}"
            f"{'; drop ' + ', '.join(d.dropped) if d.dropped else ''}) by {d.reviewer} at "
            f"{d.ts.replace('T', ' ')[:19]} UTC "
            f"(event {d.event_id}); your {what} was made {seen}, so nothing was written",
            target_kind=d.target_kind, members=d.members, current_event=d.event_id, decision=d.decision,
            decision_as_given=d.given, decided_by=d.reviewer, decided_at=d.ts, base_event=base_event,
            current_version=d.event_id, path=self.path,
            hint=f"look at the current decision, then decide again with base_event={d.event_id} "
                 f"(CLI: --base-event {d.event_id}) or force it")

    def _decide(self, conn: Connection, who: str, target_kind: str, target: str, decision: str, note: str,
                base_event: int | None, force: bool, payload: dict[str, Any]) -> int:
        cur = self._current_decision(conn, target_kind, target)
        if cur is not None and not force and (base_event is None or int(base_event) != cur.event_id):
            raise self._stale(cur, base_event, "decision")
        if cur is None and base_event is not None and not force:
            ev = S.events  # the decision it was based on was undone meanwhile: the writer has not seen that
            undone = conn.execute(sa.select(ev.c.id).where(ev.c.id == int(base_event), ev.c.dataset == self.dataset_key,
                                                           ev.c.target == target)).first()
            if undone is None:
                raise StaleDecision(f"event {base_event} is not a decision on this {target_kind}", path=self.path,
                                    base_event=base_event, members=tuple(target.split("\t")),
                                    hint="pass the event id of the current decision (or none if undecided)")
        if base_event is not None:
            payload = {**payload, "base_event": int(base_event)}
        if force:
            payload = {**payload, "forced": True}
        eid = self._insert_event(conn, who, "decision", target_kind, target, decision, note, payload=payload)
        self._set_current(conn, "decision", target_kind, target, eid)
        return eid

    # -- decisions --------------------------------------------------------------------------
    def record_decision(self, a: str, b: str, decision: str, reviewer: str, note: str = "", *,
                        base_event: int | None = None, force: bool = False) -> int:
        """Record a decision on the pair (a, b); returns the event id.

        ``keep_a``/``keep_b`` refer to ``a``/``b`` AS GIVEN (read back through ``Decision.given``,
        ``kept``, ``dropped`` or ``Decision.relative_to(a, b)``). ``base_event`` is the current
        decision the reviewer saw (None: they saw the pair undecided).

        Raises:
            StaleDecision: the pair's current decision is not ``base_event`` (and not ``force``);
                nothing is written. PermissionDenied: ``reviewer`` may not decide.
        """
        target, canon = _canonical_pair(a, b, decision)
        payload = {"a": str(a), "b": str(b), "given": decision}

        def run(conn: Connection) -> int:
            who = self._acting(conn, reviewer, "reviewer")
            return self._decide(conn, who, "pair", target, canon, note, base_event, force, payload)

        return self.tx.write(run)

    def record_decisions(self, items: Sequence[tuple[str, str, str]], reviewer: str, note: str = "", *,
                         force: bool = False) -> list[int]:
        """Record several pair decisions ``(a, b, decision)`` in ONE transaction: all or nothing.

        Each pair must be undecided (else :class:`StaleDecision` and nothing is written) unless
        ``force``. Used for bulk proposals. Returns the event ids in order.
        """
        rows = [(_canonical_pair(a, b, d), {"a": str(a), "b": str(b), "given": d}) for a, b, d in items]

        def run(conn: Connection) -> list[int]:
            who = self._acting(conn, reviewer, "reviewer")
            return [self._decide(conn, who, "pair", t, d, note, None, force, p) for (t, d), p in rows]

        return self.tx.write(run)

    def record_group_decision(self, members: Sequence[str], decision: str, reviewer: str, note: str = "", *,
                              base_event: int | None = None, force: bool = False) -> int:
        """Record a decision on a near-duplicate group (≥ 2 distinct case ids); returns the event id."""
        if decision not in GROUP_DECISIONS:
            raise unknown_name("group decision", decision, GROUP_DECISIONS)
        ids = sorted({str(m) for m in members})
        if len(ids) < 2:
            raise StoreError("a group needs at least two different cases", hint="pass the group's members")
        target = "\t".join(ids)

        def run(conn: Connection) -> int:
            who = self._acting(conn, reviewer, "reviewer")
            return self._decide(conn, who, "group", target, decision, note, base_event, force, {})

        return self.tx.write(run)

    def undo(self, event_id: int, reviewer: str, note: str = "") -> int:
        """Cancel a decision, case-state or undo event by appending an ``undo`` event; returns its id."""
        def run(conn: Connection) -> int:
            who = self._acting(conn, reviewer, "reviewer")
            return self._undo_in(conn, who, int(event_id), note)

        return self.tx.write(run)

    def _undo_in(self, conn: Connection, who: str, event_id: int, note: str) -> int:
        ev = S.events
        row = conn.execute(sa.select(ev.c.kind, ev.c.target_kind, ev.c.target, ev.c.ref).where(
            ev.c.id == event_id, ev.c.dataset == self.dataset_key)).first()
        if row is None:
            raise StoreError(f"no event {event_id} in the review store", path=self.path,
                             hint="pick an id from the audit log")
        if row.kind not in _UNDOABLE:
            raise StoreError(f"event {event_id} ({row.kind}) cannot be undone", path=self.path,
                             hint="mask versions are never rewritten: use revert() to go back to an older one")
        if event_id in _undone_among(conn, [event_id]):
            raise StoreError(f"event {event_id} is already undone", path=self.path,
                             hint="undo the undo event to restore it")
        eid = self._insert_event(conn, who, "undo", "event", str(event_id), None, note, ref=event_id,
                                 payload={"undone_kind": row.kind, "undone_target_kind": row.target_kind,
                                          "undone_target": row.target})
        root = row  # follow undo chains down to the decision/case-state they finally affect
        while root.kind == "undo":
            root = conn.execute(sa.select(ev.c.kind, ev.c.target_kind, ev.c.target, ev.c.ref).where(
                ev.c.id == root.ref)).first()
        self._recompute(conn, root.kind, root.target_kind, root.target)
        return eid

    def undo_decision(self, a: str, b: str, reviewer: str, note: str = "", *,
                      base_event: int | None = None) -> int:
        """Undo the CURRENT decision on the pair (a, b) — the pair on screen; returns the undo event id.

        ``base_event`` (optional): the decision the reviewer saw; if another decision replaced it
        meanwhile, :class:`StaleDecision` is raised and nothing is written.
        """
        target, _ = _canonical_pair(a, b, "keep_both")

        def run(conn: Connection) -> int:
            who = self._acting(conn, reviewer, "reviewer")
            cur = self._current_decision(conn, "pair", target)
            if cur is None:
                raise StoreError(f"pair ({a}, {b}) has no decision to undo", path=self.path,
                                 hint="someone may have undone it already; reload")
            if base_event is not None and int(base_event) != cur.event_id:
                raise self._stale(cur, base_event, "undo")
            return self._undo_in(conn, who, cur.event_id, note)

        return self.tx.write(run)

    def decisions(self) -> dict[tuple[str, tuple[str, ...]], Decision]:
        """Current decisions: ``{(target_kind, sorted members): Decision}``.

        One indexed scan of ``current_decisions`` (O(decided targets), independent of the log length).
        The result is kept per (store, dataset) with the dataset's revision: while no one (any
        process, any server) has written, a read costs one primary-key lookup; after writes, only
        the rows written since are fetched (O(changes)).
        """
        cd = S.current_decisions
        cols = (cd.c.event_id, cd.c.target_kind, cd.c.target, cd.c.decision, cd.c.a, cd.c.b, cd.c.given, cd.c.author,
                cd.c.ts, cd.c.note)
        full = sa.select(*cols).where(cd.c.dataset == self.dataset_key, cd.c.event_id > 0).order_by(cd.c.event_id)

        def changes(conn: Connection, since: int) -> list:
            q = sa.select(*cols).where(cd.c.dataset == self.dataset_key, cd.c.rev > since)
            return [(k, d if d.event_id > 0 else None) for k, d in self._build_decisions(conn, q).items()]

        return dict(self._cached_read("decisions", lambda c: self._build_decisions(c, full), changes))

    @staticmethod
    def _build_decisions(conn: Connection, q: Any) -> dict[tuple[str, tuple[str, ...]], Decision]:
        rows = conn.execute(q).all()
        out = {}
        new = object.__new__
        for eid, tk, target, decision, a, b, given, author, ts, note in rows:  # plain tuples: fast
            members = tuple(target.split("\t"))
            if given == "keep_a":
                kept, dropped = (a,), (b,)
            elif given == "keep_b":
                kept, dropped = (b,), (a,)
            elif given == "drop_both":
                kept, dropped = (), members
            else:
                kept, dropped = members, ()
            d = new(Decision)  # frozen-dataclass __init__ costs ~3x more; same fields, same object
            d.__dict__.update(target_kind=tk, members=members, decision=decision, reviewer=author, ts=ts, note=note,
                              event_id=eid, a=a, b=b, given=given, kept=kept, dropped=dropped)
            out[(tk, members)] = d
        return out

    def decision_for(self, a: str, b: str) -> Decision | None:
        """The current decision on the pair (a, b) (``decision`` relative to a < b; see ``relative_to``)."""
        target = "\t".join(sorted((str(a), str(b))))
        return self.tx.read(lambda c: self._current_decision(c, "pair", target))

    # -- case review state ------------------------------------------------------------------
    def set_case_state(self, case_id: str, state: str, reviewer: str, note: str = "", *,
                       base_event: int | None = None) -> int:
        """Record a case's review state (``unreviewed``, ``accepted``, ``needs_fix``, ``corrected``).

        ``base_event`` (optional, 0 = "no state yet"): refuse with :class:`StaleDecision` when the
        case's current state event differs (someone changed it meanwhile).
        """
        if state not in CASE_STATES:
            raise unknown_name("case review state", state, CASE_STATES)
        case_id = str(case_id)

        def run(conn: Connection) -> int:
            who = self._acting(conn, reviewer, "reviewer")
            if base_event is not None:
                cur = self._current_state(conn, case_id)
                if int(base_event or 0) != (cur.event_id if cur is not None else 0):
                    raise StaleDecision(
                        f"case {case_id}'s review state was changed meanwhile"
                        + (f" to {cur.state} by {cur.reviewer} at {cur.ts[:19]} UTC" if cur is not None else ""),
                        target_kind="case", members=(case_id,), current_event=None if cur is None else cur.event_id,
                        decision=None if cur is None else cur.state, decided_by=None if cur is None else cur.reviewer,
                        decided_at=None if cur is None else cur.ts, base_event=base_event, path=self.path,
                        hint="reload the case and set the state again")
            eid = self._insert_event(conn, who, "case_state", "case", case_id, state, note)
            self._set_current(conn, "case_state", "case", case_id, eid)
            return eid

        return self.tx.write(run)

    def _current_state(self, conn: Connection, case_id: str) -> CaseState | None:
        cs = S.current_case_states
        r = conn.execute(sa.select(cs).where(cs.c.dataset == self.dataset_key, cs.c.case_id == case_id,
                                             cs.c.event_id > 0)).first()
        return None if r is None else CaseState(r.case_id, r.state, r.author, r.ts, r.note, int(r.event_id))

    def case_states(self) -> dict[str, CaseState]:
        """Current state of every case that has one (cases absent here are ``unreviewed``)."""
        cs = S.current_case_states
        q = sa.select(cs.c.case_id, cs.c.state, cs.c.author, cs.c.ts, cs.c.note, cs.c.event_id).where(
            cs.c.dataset == self.dataset_key, cs.c.event_id > 0).order_by(cs.c.event_id)
        def build(conn: Connection, query: Any) -> dict[str, CaseState]:
            return {r[0]: CaseState(r[0], r[1], r[2], r[3], r[4], int(r[5])) for r in conn.execute(query).all()}

        def changes(conn: Connection, since: int) -> list:
            got = build(conn, sa.select(cs.c.case_id, cs.c.state, cs.c.author, cs.c.ts, cs.c.note, cs.c.event_id)
                        .where(cs.c.dataset == self.dataset_key, cs.c.rev > since))
            return [(k, v if v.event_id > 0 else None) for k, v in got.items()]

        return dict(self._cached_read("case_states", lambda c: build(c, q), changes))

    def case_state(self, case_id: str) -> str:
        """The current review state of one case (``unreviewed`` when never set)."""
        st = self.tx.read(lambda c: self._current_state(c, str(case_id)))
        return st.state if st is not None else "unreviewed"

    # -- claims -----------------------------------------------------------------------------
    def claim(self, case_id: str, user: str, ttl: float = DEFAULT_CLAIM_TTL) -> Claim:
        """Claim a case for editing for ``ttl`` seconds (renews your own claim).

        Raises:
            ClaimHeld: someone else holds an unexpired claim (``err.holder``, ``err.expires``).
            PermissionDenied: ``user`` may not edit (needs annotator or higher).
        """
        case_id, ttl = str(case_id), float(ttl)
        if ttl <= 0:
            raise ConfigError(f"claim lease must be positive, got {ttl}", hint="pass seconds, e.g. 300")

        def run(conn: Connection) -> Claim:
            who = self._acting(conn, user, "annotator")
            cl = S.claims
            row = conn.execute(sa.select(cl).where(cl.c.dataset == self.dataset_key, cl.c.case_id == case_id)).first()
            now = time.time()
            if row is not None and row.user_name != who and row.expires > now:
                raise self._held(case_id, row)
            claimed = row.claimed if row is not None and row.user_name == who and row.expires > now else now
            conn.execute(cl.delete().where(cl.c.dataset == self.dataset_key, cl.c.case_id == case_id))
            conn.execute(cl.insert().values(dataset=self.dataset_key, case_id=case_id, user_name=who, claimed=claimed,
                                            expires=now + ttl))
            return Claim(case_id, who, claimed, now + ttl)

        return self.tx.write(run)

    def _held(self, case_id: str, row: Any) -> ClaimHeld:
        left = max(0, int(row.expires - time.time()))
        return ClaimHeld(f"case {case_id} is being edited by {row.user_name} (claimed "
                         f"{_dt.datetime.fromtimestamp(row.claimed, _dt.timezone.utc).strftime('%H:%M:%S')} UTC, "
                         f"lease ends in {left} s)", case_id=case_id, holder=row.user_name, expires=row.expires,
                         path=self.path, hint="wait for them to finish or ask them to release it")

    def release(self, case_id: str, user: str, *, force: bool = False) -> bool:
        """Release your claim on a case (an admin may ``force`` someone else's); True if one was removed."""
        case_id = str(case_id)

        def run(conn: Connection) -> bool:
            who = self._acting(conn, user, "admin" if force else "viewer")
            cl = S.claims
            row = conn.execute(sa.select(cl).where(cl.c.dataset == self.dataset_key, cl.c.case_id == case_id)).first()
            if row is None:
                return False
            if row.user_name != who and not force:
                if row.expires > time.time():
                    raise self._held(case_id, row)
                return False
            conn.execute(cl.delete().where(cl.c.dataset == self.dataset_key, cl.c.case_id == case_id))
            return True

        return self.tx.write(run)

    def claims(self, *, include_expired: bool = False) -> dict[str, Claim]:
        """Current claims of this dataset ``{case_id: Claim}`` (expired leases are free and omitted)."""
        cl = S.claims
        rows = self.tx.read(lambda c: c.execute(sa.select(cl).where(cl.c.dataset == self.dataset_key)).all())
        now = time.time()
        return {r.case_id: Claim(r.case_id, r.user_name, float(r.claimed), float(r.expires))
                for r in rows if include_expired or r.expires > now}

    def claim_for(self, case_id: str) -> Claim | None:
        """The unexpired claim on a case, or None."""
        return self.claims().get(str(case_id))

    # -- mask versions ----------------------------------------------------------------------
    def _mask_path(self, sha: str) -> Path:
        return self.masks_dir / f"{sha}.png"

    def write_mask_file(self, mask: np.ndarray) -> tuple[str, Path]:
        """Write a mask as a content-addressed lossless PNG (atomic, idempotent): ``(sha256, path)``."""
        from engine.io import write_mask_png

        m = _check_mask(mask)
        sha = mask_digest(m)
        path = self._mask_path(sha)
        if not path.exists():
            write_mask_png(path, m)
        return sha, path

    def _latest_in(self, conn: Connection, case_id: str) -> int:
        mv = S.mask_versions
        got = conn.execute(sa.select(sa.func.max(mv.c.version)).where(
            mv.c.dataset == self.dataset_key, mv.c.case_id == case_id)).scalar()
        return int(got) if got is not None else 0

    def _insert_version(self, conn: Connection, **values: Any) -> None:
        conn.execute(S.mask_versions.insert().values(dataset=self.dataset_key, created=_now(), **values))

    def save_mask_version(self, case_id: str, mask: np.ndarray, author: str, note: str = "",
                          base_version: int | None = None, *, mark_corrected: bool = True) -> int:
        """Save a corrected mask as the case's next version; returns the new version number.

        Args:
            case_id: the case.
            mask: uint8/bool/int (H,W) label map.
            author: who drew it (annotator or higher). note: why.
            base_version: the version the edit started from (None or 0 = the dataset's original).
            mark_corrected: also set the case's review state to ``corrected`` (same transaction).

        Raises:
            ConflictError: ``base_version`` is not the newest version (someone saved in
                between); ``err.current_version`` is the newest.
            PermissionDenied: ``author`` may not save masks.
        """
        m = _check_mask(mask)
        sha, path = self.write_mask_file(m)  # before the transaction: a crash leaves an orphan file only
        base = int(base_version or 0)
        case_id = str(case_id)
        area = int(np.count_nonzero(m))

        def run(conn: Connection) -> int:
            who = self._acting(conn, author, "annotator")
            latest = self._latest_in(conn, case_id)
            if base != latest:
                raise ConflictError(f"case {case_id}: your edit started from version {base} but version {latest} "
                                    f"was saved meanwhile", current_version=latest, path=self.path,
                                    hint=f"reload version {latest}, redo or merge your change, and save again")
            version = latest + 1
            eid = self._insert_event(conn, who, "mask_saved", "case", case_id, str(version), note,
                                     payload={"version": version, "sha256": sha, "base_version": base})
            self._insert_version(conn, case_id=case_id, version=version, sha256=sha, file=f"{MASKS_DIR}/{path.name}",
                                 height=int(m.shape[0]), width=int(m.shape[1]), area=area, author=who,
                                 note=note or "", base_version=base, reverted_from=None, event_id=eid)
            if mark_corrected:
                sid = self._insert_event(conn, who, "case_state", "case", case_id, "corrected",
                                         f"mask version {version} saved")
                self._set_current(conn, "case_state", "case", case_id, sid)
            return version

        return self.tx.write(run)

    @staticmethod
    def _row_version(r: Any) -> MaskVersion:
        return MaskVersion(r.case_id, int(r.version), r.sha256, r.file, r.height, r.width, r.area, r.author,
                           r.note or "", r.created, r.base_version, r.reverted_from, int(r.event_id))

    def _versions(self, *where: Any) -> list[MaskVersion]:
        mv = S.mask_versions
        q = sa.select(mv).where(mv.c.dataset == self.dataset_key, *where).order_by(mv.c.case_id, mv.c.version)
        return [self._row_version(r) for r in self.tx.read(lambda c: c.execute(q).all())]

    def mask_history(self, case_id: str) -> list[MaskVersion]:
        """Saved versions of a case, oldest first (empty: only the original, version 0)."""
        return self._versions(S.mask_versions.c.case_id == str(case_id))

    def latest_mask_version(self, case_id: str) -> int:
        """Newest version number of a case (0 = the original, never edited)."""
        return self.tx.read(lambda c: self._latest_in(c, str(case_id)))

    def mask_version(self, case_id: str, version: int) -> MaskVersion | None:
        mv = S.mask_versions
        got = self._versions(mv.c.case_id == str(case_id), mv.c.version == int(version))
        return got[0] if got else None

    def mask_file(self, mv: MaskVersion) -> Path | None:
        """Absolute path of a version's PNG (None for the original)."""
        if mv.file is None:
            return None
        p = Path(mv.file)
        return p if p.is_absolute() else self.masks_dir / p.name

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
                             hint="the masks folder of the store is incomplete; restore it from a backup") from None
        if mask_digest(m) != mv.sha256:
            raise StoreError(f"mask version {version} of case {case_id} does not match its recorded hash", path=path,
                             hint="the PNG was modified outside the workbench; restore it from a backup")
        return m

    def revert(self, case_id: str, version: int, author: str, note: str = "",
               base_version: int | None = None) -> int:
        """Add a new version that copies ``version`` (0 = the dataset's original); returns it.

        ``base_version`` (optional) is checked like in :meth:`save_mask_version`.
        """
        case_id = str(case_id)
        version = int(version)

        def run(conn: Connection) -> int:
            who = self._acting(conn, author, "annotator")
            latest = self._latest_in(conn, case_id)
            if base_version is not None and int(base_version) != latest:
                raise ConflictError(f"case {case_id}: version {latest} was saved after version {base_version}",
                                    current_version=latest, path=self.path,
                                    hint=f"reload version {latest} before reverting")
            if version == 0:
                sha, file, h, w, area = None, None, None, None, None
            else:
                mv = S.mask_versions
                row = conn.execute(sa.select(mv.c.sha256, mv.c.file, mv.c.height, mv.c.width, mv.c.area).where(
                    mv.c.dataset == self.dataset_key, mv.c.case_id == case_id, mv.c.version == version)).first()
                if row is None:
                    raise StoreError(f"case {case_id} has no mask version {version} (newest is {latest})",
                                     path=self.path, hint="pick a version from mask_history()")
                sha, file, h, w, area = row
            new = latest + 1
            eid = self._insert_event(conn, who, "mask_saved", "case", case_id, str(new), note or f"revert to {version}",
                                     payload={"version": new, "sha256": sha, "base_version": latest,
                                              "reverted_from": version})
            self._insert_version(conn, case_id=case_id, version=new, sha256=sha, file=file, height=h, width=w,
                                 area=area, author=who, note=note or f"revert to version {version}",
                                 base_version=latest, reverted_from=version, event_id=eid)
            return new

        return self.tx.write(run)

    def corrected_masks(self) -> dict[str, MaskVersion]:
        """Cases whose newest version is a corrected mask (not a revert to the original)."""
        mv = S.mask_versions
        newest = sa.select(mv.c.case_id, sa.func.max(mv.c.version).label("v")).where(
            mv.c.dataset == self.dataset_key).group_by(mv.c.case_id).subquery()
        q = sa.select(mv).join(newest, sa.and_(mv.c.case_id == newest.c.case_id, mv.c.version == newest.c.v)).where(
            mv.c.dataset == self.dataset_key)
        rows = self.tx.read(lambda c: c.execute(q).all())
        return {r.case_id: self._row_version(r) for r in rows if r.sha256 is not None}

    def summary(self) -> dict[str, Any]:
        """Counts for reports: events, current decisions by value, case states, corrected masks."""
        from collections import Counter

        dec = self.decisions()
        states = self.case_states()
        ev = S.events
        n_events = int(self.tx.read(lambda c: c.execute(sa.select(sa.func.count()).select_from(ev).where(
            ev.c.dataset == self.dataset_key)).scalar()))
        return {"path": str(self.path), "dataset_key": self.dataset_key, "schema_version": self.schema_version,
                "n_events": n_events, "decisions": dict(Counter(d.decision for d in dec.values())),
                "case_states": dict(Counter(s.state for s in states.values())),
                "n_corrected_masks": len(self.corrected_masks())}

    # -- legacy import ----------------------------------------------------------------------
    def import_legacy(self, legacy: str | Path) -> int:
        """Import a per-dataset ``review.sqlite`` (schema 1-3, key ``''``) into this dataset; returns events
        imported (0 if it was imported before). Mask PNGs are copied into :attr:`masks_dir`; the old file
        is only read. Runs in one transaction: a crash imports nothing."""
        import shutil

        legacy = Path(legacy).resolve()
        _db.check_sqlite_file(legacy)
        key = f"imported:{self.dataset_key}"
        if self.tx.read(lambda c: c.execute(sa.select(S.meta.c.value).where(S.meta.c.key == key)).scalar()):
            return 0
        try:
            src = sqlite3.connect(f"file:{legacy}?mode=ro", uri=True)
            try:
                cols = {r[1] for r in src.execute("PRAGMA table_info(events)")}
                where = " WHERE dataset = ''" if "dataset" in cols else ""
                events = src.execute("SELECT id, ts, author, kind, target_kind, target, value, note, ref, payload "
                                     f"FROM events{where} ORDER BY id").fetchall()
                has_mv = src.execute("SELECT 1 FROM sqlite_master WHERE name='mask_versions'").fetchone()
                mvs = src.execute("SELECT case_id, version, sha256, file, height, width, area, author, note, created, "
                                  f"base_version, reverted_from, event_id FROM mask_versions{where} "
                                  "ORDER BY case_id, version").fetchall() if has_mv else []
            finally:
                src.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read the old review store ({exc})", path=legacy,
                             hint="move the damaged file away; its decisions cannot be imported") from None
        self.masks_dir.mkdir(parents=True, exist_ok=True)
        for r in mvs:
            if r[3]:
                f = Path(r[3])
                srcf = f if f.is_absolute() else legacy.parent / f
                dst = self._mask_path(r[2])
                if srcf.is_file() and not dst.exists():
                    tmp = dst.with_name(dst.name + ".importing")
                    shutil.copyfile(srcf, tmp)
                    os.replace(tmp, dst)

        def run(conn: Connection) -> int:
            if conn.execute(sa.select(S.meta.c.value).where(S.meta.c.key == key)).scalar():
                return 0
            ids: dict[int, int] = {}
            for r in events:
                res = conn.execute(S.events.insert().values(
                    ts=r[1], author=r[2], kind=r[3], target_kind=r[4], target=str(ids.get(int(r[5]), r[5]))
                    if r[3] == "undo" and str(r[5]).isdigit() else r[5], value=r[6], note=r[7] or "",
                    ref=None if r[8] is None else ids.get(int(r[8])), payload=r[9], dataset=self.dataset_key))
                ids[int(r[0])] = int(res.inserted_primary_key[0])
            for r in mvs:
                conn.execute(S.mask_versions.insert().values(
                    dataset=self.dataset_key, case_id=r[0], version=r[1], sha256=r[2],
                    file=None if r[3] is None else f"{MASKS_DIR}/{Path(r[3]).name}", height=r[4], width=r[5],
                    area=r[6], author=r[7], note=r[8] or "", created=r[9], base_version=r[10],
                    reverted_from=r[11], event_id=ids.get(int(r[12]), 0)))
            rebuild_current(conn, self.dataset_key)
            conn.execute(S.meta.insert().values(key=key, value=json.dumps({"from": str(legacy), "at": _now(),
                                                                           "events": len(events)})))
            return len(events)

        return self.tx.write(run)
