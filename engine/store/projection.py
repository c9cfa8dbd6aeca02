"""The projection of the audit log onto the current state, and the read cache built on it.

``current_decisions`` / ``current_case_states`` hold a copy of the effective event per pair, group
or case, kept in the same transaction as the log (:func:`set_current`, :func:`recompute`) or
rebuilt from it (:func:`rebuild_current`: migrations, legacy imports). Every change bumps the
dataset's revision (:func:`bump`); each current row carries the revision that wrote it, and a
target left with nothing in force stays as a tombstone row (``event_id = 0``), so a reader holding
revision R fetches only the rows with ``rev > R`` (:func:`cached_read`).

Undo is an event too: an ``undo`` cancels the event it references, an undo of an undo restores it
(:func:`undone_among`, :func:`all_undone` follow those chains).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.store import tables as T
from engine.store.db import Transactor
from engine.store.records import decision_from_event

if TYPE_CHECKING:
    from engine.store.records import StoredRow

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


# ----------------------------------------------------------------------------------- undo chains
def undone_among(conn: Connection, ids: Iterable[int]) -> set[int]:
    """Which of ``ids`` are cancelled by an effective undo (following undo-of-undo chains)."""
    ev = T.events
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


def all_undone(conn: Connection, dataset: str | None) -> set[int]:
    """Ids of every event cancelled by an effective undo (one dataset, or all)."""
    ev = T.events
    q = sa.select(ev.c.id, ev.c.ref).where(ev.c.kind == "undo")
    if dataset is not None:
        q = q.where(ev.c.dataset == dataset)
    undone: set[int] = set()
    for eid, ref in sorted(conn.execute(q), reverse=True):
        if eid not in undone and ref is not None:
            undone.add(int(ref))
    return undone


# ----------------------------------------------------------------------------------- current rows
def current_row(r: StoredRow, rev: int) -> dict[str, Any]:
    """The ``current_decisions`` / ``current_case_states`` values for an events row."""
    if r.kind == "decision":
        d = decision_from_event(r)
        return {"dataset": r.dataset, "target_kind": r.target_kind, "target": r.target, "event_id": int(r.id),
                "decision": d.decision, "a": d.a, "b": d.b, "given": d.given, "author": r.author, "ts": r.ts,
                "note": r.note or "", "rev": rev}
    return {"dataset": r.dataset, "case_id": r.target, "event_id": int(r.id), "state": str(r.value),
            "author": r.author, "ts": r.ts, "note": r.note or "", "rev": rev}


def bump(conn: Connection, dataset: str) -> int:
    """Advance the dataset's revision (same transaction as the state change it announces); returns it."""
    r = T.revisions
    if conn.execute(r.update().where(r.c.dataset == dataset).values(rev=r.c.rev + 1)).rowcount == 0:
        conn.execute(r.insert().values(dataset=dataset, rev=1, reset=0))
    return int(conn.execute(sa.select(r.c.rev).where(r.c.dataset == dataset)).scalar_one())


def revision(conn: Connection, dataset: str) -> tuple[int, int]:
    """The dataset's ``(revision, reset)``: caches older than ``reset`` must re-read everything."""
    r = T.revisions
    row = conn.execute(sa.select(r.c.rev, r.c.reset).where(r.c.dataset == dataset)).first()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def set_current(conn: Connection, dataset: str, kind: str, target_kind: str, target: str,
                event_id: int | None) -> None:
    """Point a target's current row at ``event_id`` (None: nothing in force — kept as a tombstone
    row with ``event_id = 0`` so incremental readers learn about it)."""
    rev = bump(conn, dataset)
    where: tuple[sa.ColumnElement[bool], ...]
    if kind == "decision":
        t = T.current_decisions
        where = (t.c.dataset == dataset, t.c.target_kind == target_kind, t.c.target == target)
        tomb = {"dataset": dataset, "target_kind": target_kind, "target": target, "event_id": 0,
                "decision": "", "a": "", "b": "", "given": "", "author": "", "ts": "", "note": "", "rev": rev}
    else:
        t = T.current_case_states
        where = (t.c.dataset == dataset, t.c.case_id == target)
        tomb = {"dataset": dataset, "case_id": target, "event_id": 0, "state": "", "author": "",
                "ts": "", "note": "", "rev": rev}
    conn.execute(t.delete().where(*where))
    if event_id is not None:
        row = conn.execute(sa.select(T.events).where(T.events.c.id == int(event_id))).one()
        conn.execute(t.insert().values(**current_row(row, rev)))
    else:
        conn.execute(t.insert().values(**tomb))


def recompute(conn: Connection, dataset: str, kind: str, target_kind: str, target: str) -> None:
    """Point a target's current row at its newest event not undone (after an undo or a redo)."""
    ev = T.events
    ids = [int(i) for i in conn.execute(sa.select(ev.c.id).where(
        ev.c.dataset == dataset, ev.c.kind == kind, ev.c.target_kind == target_kind,
        ev.c.target == target)).scalars()]
    undone = undone_among(conn, ids)
    live = [i for i in ids if i not in undone]
    set_current(conn, dataset, kind, target_kind, target, max(live) if live else None)


def rebuild_current(conn: Connection, dataset: str | None) -> None:
    """Recompute ``current_decisions`` and ``current_case_states`` from the log (one dataset, or all)."""
    ev, cd, cs = T.events, T.current_decisions, T.current_case_states
    undone = all_undone(conn, dataset)
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
        touched |= set(conn.execute(sa.select(T.revisions.c.dataset)).scalars())
    revs = {}
    for ds in touched:  # every cache of these datasets must re-read everything
        revs[ds] = bump(conn, ds)
        conn.execute(T.revisions.update().where(T.revisions.c.dataset == ds).values(reset=revs[ds]))
    ids = sorted(latest.values())
    for i in range(0, len(ids), 5000):
        rows = conn.execute(sa.select(ev).where(ev.c.id.in_(ids[i:i + 5000]))).all()
        dec = [current_row(r, revs[r.dataset]) for r in rows if r.kind == "decision"]
        st = [current_row(r, revs[r.dataset]) for r in rows if r.kind == "case_state"]
        if dec:
            conn.execute(cd.insert(), dec)
        if st:
            conn.execute(cs.insert(), st)


# ----------------------------------------------------------------------------------- the read cache
#: Last read per (store, dataset, what): (revision, value); refreshed with only the rows written since.
_READ_CACHE: dict[tuple[str, str, str], tuple[int, Any]] = {}
_READ_CACHE_LOCK = threading.Lock()


def clear_read_cache() -> None:
    """Forget cached reads (benchmarks of the uncached path; tests)."""
    with _READ_CACHE_LOCK:
        _READ_CACHE.clear()


def cached_read(tx: Transactor, store: str, dataset: str, what: str, full: Callable[[Connection], dict[K, V]],
                changes: Callable[[Connection, int], Iterable[tuple[K, V | None]]]) -> dict[K, V]:
    """A dict read in one snapshot, kept per (``store``, ``dataset``, ``what``): unchanged revision →
    the kept dict; moved → the kept dict updated with ``changes(conn, since_rev)`` (rows written
    since: O(changes), None removes a key); no usable copy → ``full(conn)``. Returns the kept dict
    (callers copy it). ``store`` names the store's identity (a re-created store is another store)."""
    key = (store, dataset, what)

    def run(conn: Connection) -> dict[K, V]:
        rev, reset = revision(conn, dataset)
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

    return tx.read(run)
