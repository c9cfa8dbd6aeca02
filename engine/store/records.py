"""Records and vocabularies of the review store, each defined once.

- the **pair decisions** (:data:`DECISION_OPTIONS`: value, human label, what it does, keyboard
  shortcut), from which :data:`PAIR_DECISIONS` and :data:`GROUP_DECISIONS` here, the review
  queue's labels (:data:`engine.curation.DECISION_LABELS`) and the review page's shortcuts
  are all derived;
- the case review states (:data:`CASE_STATES`), the roles (:data:`ROLES`) and the claim lease;
- the **pair key**: a pair is stored under its two case ids sorted (:func:`pair_key`), as one
  text ``"lo\\thi"`` (:func:`target_of`); :func:`_canonical_pair` turns a decision on a pair as
  given into that key and the decision relative to it;
- the frozen records the store returns (:class:`Event`, :class:`Decision`, :class:`CaseState`,
  :class:`MaskVersion`, :class:`User`, :class:`Claim`) and the converters from stored rows;
- the content address of a mask (:func:`mask_digest`) and the mask check every save runs.

This module is light (numpy and the standard library only): the curation queue and the pages
import the vocabulary from here without loading the database layer.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, TypeAlias, Unpack

import numpy as np

from engine.errors import MaskError, StoreError, unknown_name

if TYPE_CHECKING:
    from sqlalchemy.engine import Row

    #: A row of the store's tables, of any width.
    StoredRow: TypeAlias = Row[Unpack[tuple[Any, ...]]]


# ----------------------------------------------------------------------------------- vocabularies
@dataclass(frozen=True)
class DecisionOption:
    """One decision a reviewer can record on a near-duplicate pair.

    Attributes:
        value: the stored value (``keep_a``/``keep_b`` refer to the pair AS GIVEN by the caller).
        label: the readable label (buttons, history, reports).
        help: what the decision does to a cleaned manifest.
        shortcut: the review page's keyboard shortcut, or None.
        on_groups: True when the decision also applies to a whole near-duplicate group
            (``keep_both`` = keep all, ``drop_both`` = drop all).
    """

    value: str
    label: str
    help: str
    shortcut: str | None = None
    on_groups: bool = True


#: The pair decisions, in the order the review page shows them.
DECISION_OPTIONS: tuple[DecisionOption, ...] = (
    DecisionOption("keep_a", "Keep A, drop B", "A's image and mask are right: B is left out of the cleaned manifest",
                   "1", on_groups=False),
    DecisionOption("keep_b", "Keep B, drop A", "B's image and mask are right: A is left out of the cleaned manifest",
                   "2", on_groups=False),
    DecisionOption("keep_both", "Keep both", "both stay as they are (e.g. the masks are both acceptable)", "3"),
    DecisionOption("union", "Union of masks", "both stay, each with the union of the two masks", "4"),
    DecisionOption("both_empty", "Both empty", "both stay, each with an empty mask (the structure is not there)", "5"),
    DecisionOption("drop_both", "Drop both", "both are left out (unusable or unresolvable)", "6"),
    DecisionOption("not_duplicate", "Not a duplicate",
                   "the images are different frames after all: both stay as they are", "7"),
    DecisionOption("needs_expert", "Needs expert", "no change yet: flag the pair for an expert", "8"),
)
#: Decisions on a near-duplicate pair; ``keep_a``/``keep_b`` refer to the pair AS GIVEN by the caller.
PAIR_DECISIONS: tuple[str, ...] = tuple(o.value for o in DECISION_OPTIONS)
#: Decisions on a whole near-duplicate group (``keep_both`` = keep all, ``drop_both`` = drop all).
GROUP_DECISIONS: tuple[str, ...] = tuple(o.value for o in DECISION_OPTIONS if o.on_groups)
#: Per-case review states.
CASE_STATES: tuple[str, ...] = ("unreviewed", "accepted", "needs_fix", "corrected")
#: Roles, weakest first; each role may do everything the roles before it may.
ROLES: tuple[str, ...] = ("viewer", "annotator", "reviewer", "admin")
ROLE_RANK: dict[str, int] = {r: i for i, r in enumerate(ROLES)}


def a_role(role: str) -> str:
    """``role`` with its indefinite article, for messages: ``"an annotator"``, ``"a viewer"``."""
    role = str(role)
    return f"{'an' if role[:1].lower() in 'aeiou' and role else 'a'} {role}"

#: Default case-claim lease in seconds.
DEFAULT_CLAIM_TTL = 300.0

_SWAP = {"keep_a": "keep_b", "keep_b": "keep_a"}


class LocalOperator:
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
LOCAL_OPERATOR = LocalOperator()

#: Who acts: a user name, :data:`LOCAL_OPERATOR` (the CLI; user and settings changes), or None (only
#: to create a store's first account; refused elsewhere).
Actor = str | LocalOperator | None


# ----------------------------------------------------------------------------------- the pair key
#: Separator of the case ids in a stored pair or group target.
TARGET_SEP = "\t"


def pair_key(a: object, b: object) -> tuple[str, str]:
    """The store's key of a pair: the two case ids sorted (``a <= b``)."""
    a, b = str(a), str(b)
    return (a, b) if a <= b else (b, a)


def target_of(members: Iterable[object]) -> str:
    """The stored target of a pair or group: its case ids sorted, joined by a tab (``"lo\\thi"``)."""
    return TARGET_SEP.join(sorted(str(m) for m in members))


def members_of(target: str) -> tuple[str, ...]:
    """Inverse of :func:`target_of`: the sorted case ids of a stored pair or group target."""
    return tuple(target.split(TARGET_SEP))


def swap_sides(decision: str) -> str:
    """The same decision for the pair in the other order (``keep_a`` ↔ ``keep_b``; others unchanged)."""
    return _SWAP.get(decision, decision)


def _canonical_pair(a: str, b: str, decision: str) -> tuple[str, str]:
    """Validate a pair decision; return the stored target ``"lo\\thi"`` and the decision relative
    to that sorted order (``keep_a``/``keep_b`` swapped when the caller gave the larger id first)."""
    if decision not in PAIR_DECISIONS:
        raise unknown_name("pair decision", decision, PAIR_DECISIONS)
    a, b = str(a), str(b)
    if a == b:
        raise StoreError(f"a pair needs two different cases, got {a!r} twice", hint="pick the twin image")
    return target_of((a, b)), swap_sides(decision) if a > b else decision


def kept_dropped(decision: str, a: str, b: str, members: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The case ids a decision (relative to ``a``, ``b``) keeps in and takes out of a cleaned dataset."""
    if decision == "keep_a":
        return (a,), (b,)
    if decision == "keep_b":
        return (b,), (a,)
    if decision == "drop_both":
        return (), tuple(members)
    return tuple(members), ()


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
        return members_of(self.target) if self.target_kind in ("pair", "group") else (self.target,)


#: The note of a rule's proposals recorded in bulk (the case study's "drop the empty twin"): such a
#: decision is a *proposal* (:attr:`Decision.is_proposal`) until a person confirms or overrides it.
PROPOSAL_NOTE = "bulk: case-study rule"
#: The note of a decision that confirms a proposal (the same decision, now a person's).
CONFIRM_NOTE = "confirmed the case-study rule's proposal"


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

    @property
    def is_proposal(self) -> bool:
        """True for a rule's proposal recorded in bulk (note :data:`PROPOSAL_NOTE`) that no person has
        confirmed yet: not a reviewer's decision, though it is in force until confirmed or overridden."""
        return (self.note or "").strip() == PROPOSAL_NOTE

    def relative_to(self, a: str, b: str) -> str:
        """The decision with ``keep_a``/``keep_b`` meaning the ``a``/``b`` given here."""
        if self.target_kind != "pair":
            return self.decision
        return swap_sides(self.decision) if str(a) > str(b) else self.decision

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``a``, ``b``, ``decision`` (relative to a/b), ``kept``, ``dropped``, ``user``, ``event_id``…"""
        return {"target_kind": self.target_kind, "members": list(self.members), "a": self.a, "b": self.b,
                "decision": self.given or self.decision, "canonical_decision": self.decision,
                "kept": list(self.kept), "dropped": list(self.dropped), "user": self.reviewer, "ts": self.ts,
                "note": self.note, "event_id": self.event_id, "proposal": self.is_proposal}


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


# ----------------------------------------------------------------------------------- rows → records
def event_from_row(r: StoredRow) -> Event:
    """An :class:`Event` from an ``events`` row."""
    return Event(int(r.id), r.ts, r.author, r.kind, r.target_kind, r.target, r.value, r.note or "",
                 None if r.ref is None else int(r.ref), json.loads(r.payload) if r.payload else None)


def decision_from_event(r: StoredRow) -> Decision:
    """A Decision from an events row (``target_kind``, ``target``, ``value``, ``payload``...)."""
    members = members_of(r.target)
    payload = json.loads(r.payload) if r.payload else {}
    canon = str(r.value)
    if r.target_kind == "pair":
        a, b = str(payload.get("a", members[0])), str(payload.get("b", members[1]))
        if {a, b} != set(members):
            a, b = members
        given = swap_sides(canon) if a > b else canon
        kept, dropped = kept_dropped(given, a, b, members)
    else:
        a, b, given = members[0], members[-1], canon
        kept, dropped = kept_dropped(canon, a, b, members)
    return Decision(r.target_kind, members, canon, r.author, r.ts, r.note or "", int(r.id), a, b, given, kept, dropped)


def decision_from_current(r: StoredRow) -> Decision:
    """A Decision from a ``current_decisions`` row (no JSON to parse)."""
    members = members_of(r.target)
    a, b, given = r.a, r.b, r.given
    kept, dropped = kept_dropped(given, a, b, members)
    return Decision(r.target_kind, members, r.decision, r.author, r.ts, r.note, int(r.event_id), a, b, given,
                    kept, dropped)


# ----------------------------------------------------------------------------------- helpers
def _now() -> str:
    """Now, UTC, ISO-8601 with microseconds (the timestamp of every stored row)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _author(name: object) -> str:
    """A non-empty author name, stripped."""
    if not isinstance(name, str) or not name.strip():
        raise StoreError("a reviewer/author name is required", hint="pass who made the change")
    return name.strip()


def mask_digest(mask: np.ndarray) -> str:
    """SHA-256 of a uint8 (H,W) mask's shape and pixels (the content address of its PNG)."""
    m = np.ascontiguousarray(mask, np.uint8)
    h = hashlib.sha256(f"{m.shape[0]}x{m.shape[1]}:".encode())
    h.update(m.tobytes())
    return h.hexdigest()


def _check_mask(mask: np.ndarray) -> np.ndarray:
    """A label map as uint8 (H,W); refuses other shapes, non-integer values and values over 255."""
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
