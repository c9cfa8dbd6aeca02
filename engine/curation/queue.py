"""The review queue: what needs a reviewer next, as pairs (Conflict review) or as cases (Mask editor).

One module for both queues, pure logic (no Streamlit):

- the **pair queue** (:func:`build_queue`, :class:`ReviewItem`, filters, progress, the case
  study's bulk rule) behind the Conflict review page;
- the **case queue** (:func:`case_queue`, :func:`next_case`) behind the Mask editor: cases ranked
  by suspicion (marked *needs_fix*, the label-error finder's score — else low model Dice —, in a
  conflicting or disagreeing pair of the same conflicts report the pair queue shows).

The pair queue combines the pairs of a
:class:`engine.dedup.ConflictReport` with the current decisions of an
:class:`engine.store.ReviewStore` (always re-read from the store, never cached, so several
reviewers working at once see each other's decisions).

Review state of a pair (:data:`REVIEW_STATES`):

- ``undecided``: no current decision on the pair (nor on a near-duplicate group holding both).
- ``proposed``: decided by the bulk application of the case study's rule (note
  :data:`BULK_NOTE`) and not yet confirmed or overridden by a reviewer.
- ``decided``: a reviewer's decision (anything but ``needs_expert``).
- ``needs_expert``: a reviewer could not decide and asked for an expert.

**The case study's rule** ("drop the empty image of each conflicting pair") is offered as a
*proposal*: :func:`bulk_proposals` lists, for every undecided ``conflict`` pair, ``keep_a`` or
``keep_b`` (keep the annotated image, drop its empty twin); :func:`apply_proposals` records
them as ordinary, undoable decisions with the note :data:`BULK_NOTE`, so they show as
``proposed`` until a reviewer confirms (records a decision without that note) or overrides
them; :func:`undo_proposals` undoes every proposal still in force. Nothing is deleted: the
store is an append-only log and the dataset is never touched; only an exported manifest
(:func:`engine.curation.build_manifest`) leaves the dropped images out.

Example:
    >>> from engine.dedup import load_latest_report
    >>> from engine.store import ReviewStore
    >>> rep = load_latest_report(ds)                                          # doctest: +SKIP
    >>> with ReviewStore.for_dataset(ds) as store:                            # doctest: +SKIP
    ...     queue = build_queue(rep.pairs, store.decisions())
    ...     progress_counts(queue)["undecided"], queue[0].category
    (6, 'conflict')
"""

from __future__ import annotations

import datetime as _dt
import math
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from engine.eda import natural_key
from engine.progress import ProgressFn
from engine.store.records import CONFIRM_NOTE, DECISION_OPTIONS, PROPOSAL_NOTE, TARGET_SEP, pair_key, target_of

if TYPE_CHECKING:
    import pandas as pd

    from engine.curation.suspects import SuspectReport
    from engine.datasets import Case, Dataset
    from engine.dedup import ConflictReport
    from engine.evaluation import EvalResult
    from engine.store import Decision, ReviewStore

    #: ``ReviewStore.decisions()``: ``{(target kind, members): Decision}``.
    Decisions = Mapping[tuple[str, tuple[str, ...]], Decision]

#: Review states of a pair, in the order the page lists them.
REVIEW_STATES: tuple[str, ...] = ("undecided", "proposed", "decided", "needs_expert")
#: States the "next" navigation stops at after a decision (pairs still waiting for a reviewer).
OPEN_STATES: tuple[str, ...] = ("undecided", "proposed")
#: Note of decisions recorded by :func:`apply_proposals`.
BULK_NOTE = PROPOSAL_NOTE

#: Readable labels of the store's pair decisions (:data:`engine.store.records.DECISION_OPTIONS`).
DECISION_LABELS: dict[str, str] = {o.value: o.label for o in DECISION_OPTIONS}
#: What each decision does to a cleaned manifest (:func:`engine.curation.build_manifest`).
DECISION_HELP: dict[str, str] = {o.value: o.help for o in DECISION_OPTIONS}


def key_text(key: Sequence[str]) -> str:
    """A pair key as one string (``"a\\tb"``, the store's target of the pair), e.g. for session state."""
    return target_of((key[0], key[1]))


def parse_key(text: str) -> tuple[str, str] | None:
    """Inverse of :func:`key_text` (None when ``text`` is not a pair key)."""
    parts = str(text or "").split(TARGET_SEP)
    return pair_key(parts[0], parts[1]) if len(parts) == 2 and all(parts) else None


@dataclass(frozen=True)
class ReviewItem:
    """One near-duplicate pair in the review queue.

    Attributes:
        pair: the report's pair dict (``a``, ``b``, ``ssim``, ``category``, ``mask_dice``,
            ``area_a``, ``area_b``, ``severity``, ``group``, ``subjects``, ...).
        decision: the current :class:`engine.store.Decision` on the pair (or on a group
            holding both cases; the most recent wins), None when undecided.
        state: one of :data:`REVIEW_STATES`.
        rank: 1-based position in the severity order of the whole queue.
    """

    pair: Mapping[str, Any]
    decision: Decision | None
    state: str
    rank: int

    @property
    def a(self) -> str:
        return str(self.pair["a"])

    @property
    def b(self) -> str:
        return str(self.pair["b"])

    @property
    def key(self) -> tuple[str, str]:
        return pair_key(self.a, self.b)

    @property
    def category(self) -> str:
        return str(self.pair.get("category", ""))

    @property
    def severity(self) -> float:
        return float(self.pair.get("severity") or 0.0)

    @property
    def subjects(self) -> tuple[str, ...]:
        subj = self.pair.get("subjects") or ()
        return tuple(dict.fromkeys(str(s) for s in subj))

    @property
    def decision_value(self) -> str | None:
        return None if self.decision is None else str(self.decision.decision)

    def row(self) -> dict[str, Any]:
        """A flat dict for a table of the queue."""
        p, d = self.pair, self.decision
        return {"rank": self.rank, "a": self.a, "b": self.b, "category": self.category,
                "severity": self.severity, "ssim": p.get("ssim"), "mask_dice": p.get("mask_dice"),
                "area_a": p.get("area_a"), "area_b": p.get("area_b"), "subjects": ", ".join(self.subjects),
                "group": p.get("group"), "state": self.state,
                "decision": None if d is None else d.decision, "reviewer": None if d is None else d.reviewer}


def severity_order(pairs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pairs most severe first (ties: higher SSIM, then case ids) — the engine's own order."""
    return sorted(pairs, key=lambda p: (-float(p.get("severity") or 0.0), -float(p.get("ssim") or 0.0),
                                        str(p["a"]), str(p["b"])))


def _group_index(decisions: Decisions) -> dict[str, list[Decision]]:
    out: dict[str, list[Decision]] = {}
    for (kind, members), d in decisions.items():
        if kind == "group":
            for m in members:
                out.setdefault(str(m), []).append(d)
    return out


def current_decision(decisions: Decisions, a: str, b: str,
                     _groups: Mapping[str, list[Decision]] | None = None) -> Decision | None:
    """The decision in force on the pair (a, b): its own, or a group decision holding both
    cases; the most recent (highest event id) when there are several. None when undecided."""
    key = pair_key(a, b)
    found = [d for d in [decisions.get(("pair", key))] if d is not None]
    groups = _group_index(decisions) if _groups is None else _groups
    found += [d for d in groups.get(key[0], []) if key[1] in d.members]
    return max(found, key=lambda d: d.event_id) if found else None


def decision_state(decision: Decision | None) -> str:
    """Review state (:data:`REVIEW_STATES`) of a pair given its current decision (or None)."""
    if decision is None:
        return "undecided"
    if decision.decision == "needs_expert":
        return "needs_expert"
    if decision.is_proposal:
        return "proposed"
    return "decided"


def build_queue(pairs: Iterable[Mapping[str, Any]],
                decisions: Decisions) -> list[ReviewItem]:
    """All pairs, most severe first, each with its current decision and review state.

    Args:
        pairs: ``ConflictReport.pairs``.
        decisions: ``ReviewStore.decisions()`` (re-read on every call of the page).
    """
    groups = _group_index(decisions)
    out = []
    for rank, p in enumerate(severity_order(pairs), start=1):
        d = current_decision(decisions, p["a"], p["b"], groups)
        out.append(ReviewItem(p, d, decision_state(d), rank))
    return out


@dataclass(frozen=True)
class QueueFilter:
    """Which pairs the queue shows; an empty tuple means "any".

    Attributes:
        categories: pair categories (``conflict``, ``disagree``, ``agree``, ``agree_empty``, ``unlabelled``).
        subjects: group ids (subjects/patients); a pair matches when either image belongs to one.
        states: review states (:data:`REVIEW_STATES`).
    """

    categories: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    states: tuple[str, ...] = ()

    def matches(self, item: ReviewItem) -> bool:
        if self.categories and item.category not in self.categories:
            return False
        if self.subjects and not set(item.subjects) & set(self.subjects):
            return False
        if self.states and item.state not in self.states:
            return False
        return True

    def active(self) -> list[str]:
        return [n for n in ("categories", "subjects", "states") if getattr(self, n)]


def filter_queue(queue: Sequence[ReviewItem], flt: QueueFilter | None) -> list[ReviewItem]:
    """The items of ``queue`` matching ``flt`` (order kept)."""
    return list(queue) if flt is None else [it for it in queue if flt.matches(it)]


def subjects_of(queue: Iterable[ReviewItem]) -> list[str]:
    """Every subject/group id appearing in the queue, naturally sorted."""
    return sorted({s for it in queue for s in it.subjects}, key=natural_key)


def categories_of(queue: Iterable[ReviewItem]) -> dict[str, int]:
    """``{category: number of pairs}`` in the engine's category order."""
    from engine.dedup.scoring import CATEGORIES

    n = Counter(it.category for it in queue)
    return {c: n[c] for c in (*CATEGORIES, *sorted(set(n) - set(CATEGORIES))) if n.get(c)}


def orphan_decisions(decisions: Decisions, queue: Sequence[ReviewItem]) -> list[Decision]:
    """Current pair decisions on pairs absent from the queue (e.g. found by an earlier search
    with another threshold); :func:`engine.curation.build_manifest` still applies them."""
    present = {it.key for it in queue}
    return [d for (kind, members), d in decisions.items() if kind == "pair" and tuple(members) not in present]


def progress_counts(queue: Sequence[ReviewItem]) -> dict[str, Any]:
    """Counts per review state plus ``total`` and ``fraction_decided`` (decided / total)."""
    n = Counter(it.state for it in queue)
    total = len(queue)
    out: dict[str, Any] = {s: int(n.get(s, 0)) for s in REVIEW_STATES}
    out["total"] = total
    out["fraction_decided"] = out["decided"] / total if total else 0.0
    return out


def index_of(queue: Sequence[ReviewItem], key: Sequence[str] | None) -> int | None:
    """Position of the pair ``key`` in ``queue`` (None when absent)."""
    if key is None:
        return None
    k = pair_key(key[0], key[1])
    for i, it in enumerate(queue):
        if it.key == k:
            return i
    return None


def next_open(queue: Sequence[ReviewItem], key: Sequence[str] | None,
              states: Sequence[str] = OPEN_STATES) -> tuple[str, str] | None:
    """The next pair after ``key`` (wrapping around, ``key`` itself excluded) whose state is
    in ``states``; from the start when ``key`` is not in the queue. None when there is none."""
    n = len(queue)
    if n == 0:
        return None
    i = index_of(queue, key)
    start = 0 if i is None else i + 1
    for step in range(n):
        it = queue[(start + step) % n]
        if (i is None or it.key != queue[i].key) and it.state in states:
            return it.key
    return None


def first_open(queue: Sequence[ReviewItem], states: Sequence[str] = OPEN_STATES) -> tuple[str, str] | None:
    """The most severe pair still waiting for a reviewer, else the first pair (None: empty queue)."""
    for it in queue:
        if it.state in states:
            return it.key
    return queue[0].key if queue else None


def pair_for_case(queue: Sequence[ReviewItem], case_id: str | None) -> tuple[str, str] | None:
    """The most severe pair containing ``case_id`` (None when the case is in no pair)."""
    if not case_id:
        return None
    for it in queue:
        if case_id in (it.a, it.b):
            return it.key
    return None


# ------------------------------------------------------------------------------ neighbours

def frame_order(cases: Iterable[Case], group_id: str) -> list[str]:
    """Case ids of one group (subject), in frame order.

    Kaggle UNS ids are ``{subject}_{frame}``, so the natural sort of the ids is the frame order;
    other layouts fall back to the natural order of their ids.
    """
    return sorted((c.case_id for c in cases if c.group_id == group_id), key=natural_key)


def neighbours(cases: Iterable[Case], case_id: str, group_id: str, radius: int = 2) -> list[str]:
    """``case_id`` and up to ``radius`` frames either side of it in its subject (frame order).

    >>> from types import SimpleNamespace as C
    >>> cs = [C(case_id=f"1_{i}", group_id="1") for i in (1, 2, 10, 3, 4)] + [C(case_id="2_3", group_id="2")]
    >>> neighbours(cs, "1_3", "1", 1)
    ['1_2', '1_3', '1_4']
    """
    order = frame_order(cases, group_id)
    if case_id not in order:
        return [case_id]
    i = order.index(case_id)
    r = max(0, int(radius))
    return order[max(0, i - r): i + r + 1]


# ------------------------------------------------------------------------------ bulk rule

@dataclass(frozen=True)
class Proposal:
    """The case study's rule applied to one conflict pair: keep the annotated image, drop the empty one."""

    a: str
    b: str
    decision: str  # keep_a | keep_b (relative to a < b)
    drop: str      # the empty image
    keep: str      # its annotated twin


def bulk_proposals(queue: Iterable[ReviewItem]) -> tuple[list[Proposal], dict[str, int]]:
    """Proposals of the case study's rule for the conflict pairs that have no decision yet.

    Returns:
        ``(proposals, counts)`` with counts ``conflict_pairs`` (all), ``undecided`` (get a
        proposal), ``proposed`` (already carry one), ``decided`` (a reviewer decided, incl.
        needs_expert: left alone) and ``unknown_areas`` (no mask areas in the report: skipped).
    """
    props: list[Proposal] = []
    counts: Counter[str] = Counter()
    for it in queue:
        if it.category != "conflict":
            continue
        counts["conflict_pairs"] += 1
        if it.state != "undecided":
            counts["proposed" if it.state == "proposed" else "decided"] += 1
            continue
        area_a, area_b = it.pair.get("area_a"), it.pair.get("area_b")
        if area_a is None or area_b is None or (area_a == 0) == (area_b == 0):
            counts["unknown_areas"] += 1
            continue
        drop, keep = (it.a, it.b) if area_a == 0 else (it.b, it.a)  # areas follow the report's a/b
        a, b = it.key
        props.append(Proposal(a, b, "keep_a" if keep == a else "keep_b", drop=drop, keep=keep))
        counts["undecided"] += 1
    keys = ("conflict_pairs", "undecided", "proposed", "decided", "unknown_areas")
    return props, {k: int(counts.get(k, 0)) for k in keys}


def apply_proposals(store: ReviewStore, proposals: Sequence[Proposal], reviewer: str,
                    progress: ProgressFn | None = None) -> list[int]:
    """Record every proposal as an ordinary decision noted :data:`BULK_NOTE`, in one transaction
    (all or nothing: a crash records none of them); returns the event ids."""
    if progress:
        progress(0, len(proposals), "recording proposals")
    ids = store.record_decisions([(p.a, p.b, p.decision) for p in proposals], reviewer, BULK_NOTE)
    if progress:
        progress(len(proposals), len(proposals), "recording proposals")
    return ids


def proposals_in_force(decisions: Decisions) -> list[Decision]:
    """Current decisions that are bulk proposals (not yet confirmed or overridden)."""
    return sorted((d for d in decisions.values() if decision_state(d) == "proposed"), key=lambda d: d.event_id)


def confirm_proposals(store: ReviewStore, reviewer: str,
                      progress: ProgressFn | None = None) -> tuple[int, int]:
    """Confirm every proposal still in force as ``reviewer``'s own decision (the same decision, noted
    :data:`CONFIRM_NOTE`, each checked against the proposal it confirms, so a pair someone decided
    meanwhile is left alone); returns ``(confirmed, skipped)``."""
    from engine.errors import StaleDecision

    todo = proposals_in_force(store.decisions())
    done = skipped = 0
    for i, d in enumerate(todo):
        try:
            if d.target_kind == "pair":
                store.record_decision(d.members[0], d.members[1], d.decision, reviewer, CONFIRM_NOTE,
                                      base_event=d.event_id)
            else:
                store.record_group_decision(d.members, d.decision, reviewer, CONFIRM_NOTE, base_event=d.event_id)
            done += 1
        except StaleDecision:
            skipped += 1
        if progress:
            progress(i + 1, len(todo), "confirming proposals")
    return done, skipped


def undo_proposals(store: ReviewStore, reviewer: str, progress: ProgressFn | None = None) -> int:
    """Undo every bulk proposal still in force (each undo is a new event); returns how many."""
    todo = proposals_in_force(store.decisions())
    for i, d in enumerate(todo):
        store.undo(d.event_id, reviewer, "undo bulk proposal")
        if progress:
            progress(i + 1, len(todo), "undoing proposals")
    return len(todo)


# ------------------------------------------------------------------------------ history

def pair_history(store: ReviewStore, a: str, b: str) -> list[dict[str, Any]]:
    """The decisions ever recorded on the pair, oldest first, each marked ``in force``,
    ``superseded`` (a later decision replaced it) or ``undone``."""
    key = pair_key(a, b)
    undone = store.undone_ids()
    evs = store.events(target_kind="pair", target=key, kinds=["decision"])
    live = [e.id for e in evs if e.id not in undone]
    current = live[-1] if live else None
    return [{"event": e.id, "when": e.ts, "reviewer": e.author, "decision": e.value,
             "label": DECISION_LABELS.get(str(e.value), str(e.value)), "note": e.note,
             "status": "undone" if e.id in undone else ("in force" if e.id == current else "superseded")}
            for e in evs]


# ------------------------------------------------------------------------------ export

def default_manifest_path(ds: Dataset, now: _dt.datetime | None = None) -> Path:
    """``<ds.workdir>/manifests/clean-<UTC timestamp>.json``."""
    from engine.errors import ConfigError

    workdir = getattr(ds, "workdir", None)
    if workdir is None:
        raise ConfigError("the dataset has no workspace folder", hint="type a path for the manifest")
    t = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return Path(workdir) / "manifests" / f"clean-{t}.json"


def train_command(manifest: str | Path, name: str | None = None) -> str:
    """The shell command training a model on a cleaned manifest."""
    path = Path(manifest)
    return (f"python -m engine train --data {shlex.quote(str(path))} "
            f"--name {shlex.quote(name or path.stem)}")


def export_summary(info: Mapping[str, Any]) -> dict[str, int]:
    """Headline numbers of :func:`engine.curation.build_manifest`'s ``info``."""
    by = info.get("dropped_by") or {}
    ov = info.get("mask_overrides") or {}
    return {"kept": int(info.get("n_kept", 0)), "dropped": int(info.get("n_dropped", 0)),
            "dropped_by_decision": int(by.get("decision", 0)), "dropped_by_policy": int(by.get("policy", 0)),
            "dropped_by_proposal": int(by.get("proposal", 0)),
            "unconfirmed_proposals": int(info.get("n_unconfirmed_proposals", 0)),
            "union_masks": int(ov.get("union", 0)), "emptied_masks": int(ov.get("both_empty", 0)),
            "corrected_masks": int(ov.get("corrected", 0)),
            "conflicts_without_decision": int(info.get("n_conflicts_without_decision", 0))}


# ----------------------------------------------------------------------------------- case queue

#: Weights of the suspicion score in :func:`case_queue`. ``suspect`` (the label-error finder's
#: calibrated score) replaces ``model`` and ``uncertainty`` whenever a finder report is given.
QUEUE_WEIGHTS: dict[str, float] = {"needs_fix": 2.0, "conflict": 1.0, "disagree": 0.5, "model": 1.0,
                                     "models": 0.75, "uncertainty": 0.75, "suspect": 1.0}

#: What :func:`case_queue` takes as ``suspects``: a :class:`engine.curation.suspects.SuspectReport`
#: or ``{case_id: (score 0..1, type, first reason)}``.
SuspectScores = Mapping[str, tuple[float, str, str]]


def case_queue(ds: Dataset | Iterable[str], store: ReviewStore | None = None,
               report: ConflictReport | Sequence[Mapping[str, Any]] | None = None,
               eval_result: EvalResult | pd.DataFrame | Mapping[str, float | None] | None = None, *,
               weights: Mapping[str, float] | None = None,
               include_unscored: bool = False, disagreement: Mapping[str, float] | None = None,
               uncertainty: Mapping[str, float] | None = None,
               suspects: SuspectReport | SuspectScores | None = None) -> list[tuple[str, float, list[str]]]:
    """Cases that most need a reviewer's look, most suspicious first.

    Score = ``needs_fix`` weight if a reviewer marked the case *needs_fix*
    + ``conflict`` if the case is in a near-duplicate pair with contradictory masks (one
    empty), or ``disagree`` if only in a pair whose masks disagree (latest conflicts report)
    + ``models`` × model-vs-model disagreement (1 − mean pairwise Dice of several models'
    predictions, :mod:`engine.curation.signals`)
    + with a label-error finder report (``suspects``): ``suspect`` × its score (0..1, the
    calibrated probability that the label is wrong, judged by a model that did not train on
    the case; :func:`engine.curation.suspects.find_suspects`), reason ``"<type>: <first reason>"``;
    + without one: ``model`` × (1 − Dice of the model's prediction vs the ground truth, from an
    evaluation) + ``uncertainty`` × the model's flip-TTA uncertainty (in [0, 1]).
    The finder's score supersedes those two: an evaluation's Dice comes from a model that may
    have trained on the case, and the flip-TTA uncertainty marks hard images rather than wrong
    labels (it ranks label errors about as well as chance), so they are not added on top of it.
    Cases already ``accepted`` or ``corrected`` are left out.

    Args:
        ds: the :class:`engine.datasets.Dataset` (only its case ids are used).
        store: a :class:`engine.store.ReviewStore` (or None: no review states).
        report: a :class:`engine.dedup.ConflictReport`, its ``pairs`` list, or None.
        eval_result: an :class:`engine.evaluation.EvalResult`, a per-image DataFrame with
            ``case_id`` and ``dice``, a ``{case_id: dice}`` dict, or None.
        weights: override :data:`QUEUE_WEIGHTS` entries.
        include_unscored: also list unreviewed cases with score 0 (after the others).
        disagreement: ``{case_id: 1 − mean pairwise Dice}`` of several models
            (:func:`engine.curation.signals.model_disagreement`), or None.
        uncertainty: ``{case_id: flip-TTA uncertainty}`` (:func:`engine.curation.signals.tta_uncertainty`),
            or None (ignored when ``suspects`` is given).
        suspects: the label-error finder's :class:`engine.curation.suspects.SuspectReport`
            (:func:`engine.curation.suspects.load_latest_suspects`) or ``{case_id: (score, type,
            first reason)}``; when given (even empty), ``eval_result`` and ``uncertainty`` are not scored.

    Returns:
        ``[(case_id, score, reasons)]`` sorted by score (descending), then case id (natural order).

    Example:
        >>> q = case_queue(ds, store, load_latest_report(ds), load_eval(folder))   # doctest: +SKIP
        >>> q[0]                                                                      # doctest: +SKIP
        ('2_13', 1.93, ['conflict pair with 2_5 (SSIM 0.995)', 'model Dice 0.07'])
        >>> q = case_queue(ds, store, suspects=load_latest_suspects(ds))             # doctest: +SKIP
        >>> q[0]                                                                      # doctest: +SKIP
        ('2_7', 0.97, ['boundary: nerve: label boundary lies 9 px inside the model's on 94 % of its length'])
    """
    w = {**QUEUE_WEIGHTS, **(dict(weights) if weights else {})}
    ids = [c.case_id for c in ds.cases] if hasattr(ds, "cases") else [str(c) for c in ds]
    known = set(ids)
    scores: dict[str, float] = {cid: 0.0 for cid in ids}
    reasons: dict[str, list[str]] = {cid: [] for cid in ids}

    states = store.case_states() if store is not None else {}
    done = {cid for cid, s in states.items() if getattr(s, "state", s) in ("accepted", "corrected")}
    for cid, s in states.items():
        if cid in known and getattr(s, "state", s) == "needs_fix":
            scores[cid] += w["needs_fix"]
            who = getattr(s, "reviewer", "")
            reasons[cid].append("marked needs_fix" + (f" by {who}" if who else ""))

    finder = suspect_scores(suspects)
    if finder is not None:
        for cid, (score, typ, why) in finder.items():
            if cid in known and math.isfinite(score) and score > 0:
                scores[cid] += w["suspect"] * min(score, 1.0)
                reasons[cid].append(f"{typ}: {why}" if why else typ)
    else:
        for cid, dice in _dice_by_case(eval_result).items():
            if cid in known and dice is not None and math.isfinite(dice):
                bad = min(max(1.0 - float(dice), 0.0), 1.0)
                if bad > 0:
                    scores[cid] += w["model"] * bad
                    reasons[cid].append(f"model Dice {float(dice):.2f}")

    model_signals = [("models", disagreement, "models disagree {:.2f}")]
    if finder is None:
        model_signals.append(("uncertainty", uncertainty, "flip-TTA uncertainty {:.2f}"))
    for signal, values, text in model_signals:
        for cid, v in (values or {}).items():
            cid = str(cid)
            if cid in known and v is not None and math.isfinite(float(v)) and float(v) > 0:
                v = min(max(float(v), 0.0), 1.0)
                scores[cid] += w[signal] * v
                reasons[cid].append(text.format(v))

    pairs = getattr(report, "pairs", report) or []
    best: dict[str, tuple[int, str]] = {}
    for p in pairs:
        cat = p.get("category")
        if cat not in ("conflict", "disagree"):
            continue
        rank = 2 if cat == "conflict" else 1
        a, b = str(p.get("a")), str(p.get("b"))
        ssim = p.get("ssim")
        for me, other in ((a, b), (b, a)):
            if me not in known:
                continue
            text = f"{cat} pair with {other}" + (f" (SSIM {float(ssim):.3f})" if ssim is not None else "")
            if me not in best or best[me][0] < rank:
                best[me] = (rank, text)
    for cid, (rank, text) in best.items():
        scores[cid] += w["conflict"] if rank == 2 else w["disagree"]
        reasons[cid].append(text)

    out = [(cid, round(scores[cid], 6), reasons[cid]) for cid in ids
           if cid not in done and (scores[cid] > 0 or include_unscored)]
    out.sort(key=lambda t: (-t[1], natural_key(t[0])))
    return out


def suspect_scores(suspects: SuspectReport | SuspectScores | None) -> dict[str, tuple[float, str, str]] | None:
    """``{case_id: (score, type, first reason)}`` of a label-error finder report or such a mapping
    (None when ``suspects`` is None); a case without reasons gets ``""``."""
    if suspects is None:
        return None
    if not isinstance(suspects, Mapping):  # a SuspectReport
        return {str(s.case_id): (float(s.score), str(s.type), str(s.reasons[0]) if s.reasons else "")
                for s in suspects.cases}
    out: dict[str, tuple[float, str, str]] = {}
    for cid, value in suspects.items():
        parts: list[Any] = [*value, "", ""]
        out[str(cid)] = (float(parts[0]), str(parts[1]), str(parts[2] or ""))
    return out


def _dice_by_case(eval_result: EvalResult | pd.DataFrame | Mapping[str, float | None] | None
                  ) -> dict[str, float | None]:
    if eval_result is None:
        return {}
    if isinstance(eval_result, Mapping):
        return {str(k): (None if v is None else float(v)) for k, v in eval_result.items()}
    df: Any = getattr(eval_result, "per_image", eval_result)
    if df is None or not hasattr(df, "columns") or "case_id" not in df.columns or "dice" not in df.columns:
        return {}
    out: dict[str, float | None] = {}
    for cid, d in zip(df["case_id"].astype(str).tolist(), df["dice"].tolist()):
        try:
            out[cid] = float(d)
        except (TypeError, ValueError):
            out[cid] = None
    return out


def next_case(queue: Sequence[tuple[str, float, list[str]]], current: str | None) -> str | None:
    """The case after ``current`` in the queue (the first one when ``current`` is not in it)."""
    ids = [q[0] for q in queue]
    if not ids:
        return None
    if current in ids:
        i = ids.index(current)
        rest = ids[i + 1:] + ids[:i]
        return rest[0] if rest else None
    return ids[0]
