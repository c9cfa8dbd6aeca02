"""Decisions on near-duplicate pairs and groups, per-case review states, undo, and the audit log they
are written to.

- **Optimistic concurrency.** A decision names the event it replaces (``base_event``): if the
  pair was decided meanwhile (or ``base_event`` is not its current decision), nothing is written
  and :class:`engine.errors.StaleDecision` says who decided what and when.
- **Undo** is a new ``undo`` event referencing the undone one; undoing an undo redoes.
- **Reads** come from the current-state tables (:mod:`engine.store.projection`), kept per
  (store, dataset) and refreshed with only the rows written since (O(changes)).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from engine.errors import StaleDecision, StoreError, unknown_name
from engine.store import projection as P
from engine.store import tables as T
from engine.store.base import StoreBase
from engine.store.records import (
    CASE_STATES,
    GROUP_DECISIONS,
    CaseState,
    Decision,
    Event,
    _canonical_pair,
    decision_from_current,
    event_from_row,
    members_of,
    target_of,
)

#: Event kinds an undo may cancel.
_UNDOABLE = ("decision", "case_state", "undo")

DecisionKey = tuple[str, tuple[str, ...]]  # (target_kind, sorted members)


class DecisionsMixin(StoreBase):
    """The audit log, decisions, undo and case review states of :class:`engine.store.ReviewStore`."""

    # -- events -----------------------------------------------------------------------------
    def events(self, *, target_kind: str | None = None, target: Sequence[str] | str | None = None,
               since_id: int = 0, kinds: Iterable[str] | None = None) -> list[Event]:
        """Audit-log events of this dataset in order (optionally for one target, or after ``since_id``)."""
        ev = T.events
        q = sa.select(ev).where(ev.c.dataset == self.dataset_key, ev.c.id > int(since_id))
        if target_kind is not None:
            q = q.where(ev.c.target_kind == target_kind)
        if target is not None:
            q = q.where(ev.c.target == (target if isinstance(target, str) else target_of(target)))
        if kinds is not None:
            q = q.where(ev.c.kind.in_(list(kinds)))
        return [event_from_row(r) for r in self.tx.read(lambda c: c.execute(q.order_by(ev.c.id)).all())]

    def undone_ids(self) -> set[int]:
        """Ids of events cancelled by an effective undo (undo of an undo re-enables)."""
        return self.tx.read(lambda c: P.all_undone(c, self.dataset_key))

    # -- current state ----------------------------------------------------------------------
    def _current_decision(self, conn: Connection, target_kind: str, target: str) -> Decision | None:
        cd = T.current_decisions
        r = conn.execute(sa.select(cd).where(cd.c.dataset == self.dataset_key, cd.c.target_kind == target_kind,
                                             cd.c.target == target, cd.c.event_id > 0)).first()
        return None if r is None else decision_from_current(r)

    def _stale(self, d: Decision, base_event: int | None, what: str) -> StaleDecision:
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
                base_event: int | None, force: bool, payload: Mapping[str, object]) -> int:
        cur = self._current_decision(conn, target_kind, target)
        if cur is not None and not force and (base_event is None or int(base_event) != cur.event_id):
            raise self._stale(cur, base_event, "decision")
        if cur is None and base_event is not None and not force:
            ev = T.events  # the decision it was based on was undone meanwhile: the writer has not seen that
            undone = conn.execute(sa.select(ev.c.id).where(ev.c.id == int(base_event), ev.c.dataset == self.dataset_key,
                                                           ev.c.target == target)).first()
            if undone is None:
                raise StaleDecision(f"event {base_event} is not a decision on this {target_kind}", path=self.path,
                                    base_event=base_event, members=members_of(target),
                                    hint="pass the event id of the current decision (or none if undecided)")
        if base_event is not None:
            payload = {**payload, "base_event": int(base_event)}
        if force:
            payload = {**payload, "forced": True}
        eid = self._insert_event(conn, who, "decision", target_kind, target, decision, note, payload=payload)
        P.set_current(conn, self.dataset_key, "decision", target_kind, target, eid)
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
        payload: dict[str, object] = {"a": str(a), "b": str(b), "given": decision}

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
        ids = {str(m) for m in members}
        if len(ids) < 2:
            raise StoreError("a group needs at least two different cases", hint="pass the group's members")
        target = target_of(ids)

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
        ev = T.events
        row = conn.execute(sa.select(ev.c.kind, ev.c.target_kind, ev.c.target, ev.c.ref).where(
            ev.c.id == event_id, ev.c.dataset == self.dataset_key)).first()
        if row is None:
            raise StoreError(f"no event {event_id} in the review store", path=self.path,
                             hint="pick an id from the audit log")
        if row.kind not in _UNDOABLE:
            raise StoreError(f"event {event_id} ({row.kind}) cannot be undone", path=self.path,
                             hint="mask versions are never rewritten: use revert() to go back to an older one")
        if event_id in P.undone_among(conn, [event_id]):
            raise StoreError(f"event {event_id} is already undone", path=self.path,
                             hint="undo the undo event to restore it")
        eid = self._insert_event(conn, who, "undo", "event", str(event_id), None, note, ref=event_id,
                                 payload={"undone_kind": row.kind, "undone_target_kind": row.target_kind,
                                          "undone_target": row.target})
        root = row  # follow undo chains down to the decision/case-state they finally affect
        while root.kind == "undo":
            root = conn.execute(sa.select(ev.c.kind, ev.c.target_kind, ev.c.target, ev.c.ref).where(
                ev.c.id == root.ref)).one()
        P.recompute(conn, self.dataset_key, root.kind, root.target_kind, root.target)
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

    def _cache_name(self) -> str:
        """This store's identity in the read cache (a re-created store is another store)."""
        return f"{self.url}#{self._identity}"

    def decisions(self) -> dict[DecisionKey, Decision]:
        """Current decisions: ``{(target_kind, sorted members): Decision}``.

        One indexed scan of ``current_decisions`` (O(decided targets), independent of the log length).
        The result is kept per (store, dataset) with the dataset's revision: while no one (any
        process, any server) has written, a read costs one primary-key lookup; after writes, only
        the rows written since are fetched (O(changes)).
        """
        cd = T.current_decisions
        cols = (cd.c.event_id, cd.c.target_kind, cd.c.target, cd.c.decision, cd.c.a, cd.c.b, cd.c.given, cd.c.author,
                cd.c.ts, cd.c.note)
        full = sa.select(*cols).where(cd.c.dataset == self.dataset_key, cd.c.event_id > 0).order_by(cd.c.event_id)

        def changes(conn: Connection, since: int) -> list[tuple[DecisionKey, Decision | None]]:
            q = sa.select(*cols).where(cd.c.dataset == self.dataset_key, cd.c.rev > since)
            return [(k, d if d.event_id > 0 else None) for k, d in self._build_decisions(conn, q).items()]

        return dict(P.cached_read(self.tx, self._cache_name(), self.dataset_key, "decisions",
                                  lambda c: self._build_decisions(c, full), changes))

    @staticmethod
    def _build_decisions(conn: Connection, q: Select) -> dict[DecisionKey, Decision]:
        rows = conn.execute(q).all()
        out = {}
        new = object.__new__
        kept: tuple[str, ...]
        dropped: tuple[str, ...]
        for eid, tk, target, decision, a, b, given, author, ts, note in rows:  # plain tuples: fast
            members = members_of(target)
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
        target = target_of((a, b))
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
            P.set_current(conn, self.dataset_key, "case_state", "case", case_id, eid)
            return eid

        return self.tx.write(run)

    def _current_state(self, conn: Connection, case_id: str) -> CaseState | None:
        cs = T.current_case_states
        r = conn.execute(sa.select(cs).where(cs.c.dataset == self.dataset_key, cs.c.case_id == case_id,
                                             cs.c.event_id > 0)).first()
        return None if r is None else CaseState(r.case_id, r.state, r.author, r.ts, r.note, int(r.event_id))

    def case_states(self) -> dict[str, CaseState]:
        """Current state of every case that has one (cases absent here are ``unreviewed``)."""
        cs = T.current_case_states
        cols = (cs.c.case_id, cs.c.state, cs.c.author, cs.c.ts, cs.c.note, cs.c.event_id)
        q = sa.select(*cols).where(cs.c.dataset == self.dataset_key, cs.c.event_id > 0).order_by(cs.c.event_id)

        def build(conn: Connection, query: Select) -> dict[str, CaseState]:
            return {r[0]: CaseState(r[0], r[1], r[2], r[3], r[4], int(r[5])) for r in conn.execute(query).all()}

        def changes(conn: Connection, since: int) -> list[tuple[str, CaseState | None]]:
            got = build(conn, sa.select(*cols).where(cs.c.dataset == self.dataset_key, cs.c.rev > since))
            return [(k, v if v.event_id > 0 else None) for k, v in got.items()]

        return dict(P.cached_read(self.tx, self._cache_name(), self.dataset_key, "case_states",
                                  lambda c: build(c, q), changes))

    def case_state(self, case_id: str) -> str:
        """The current review state of one case (``unreviewed`` when never set)."""
        st = self.tx.read(lambda c: self._current_state(c, str(case_id)))
        return st.state if st is not None else "unreviewed"
