"""Streamlit glue of the Conflict review page (pages/6_Conflict_review.py).

The queue of near-duplicate pairs found by :func:`engine.dedup.find_conflicts` (the latest
report of the dataset, ``<workdir>/conflicts.json``), most severe first, filterable by
category, subject and review state; for the current pair both images with their masks, the
difference image, SSIM / Dice / areas / severity and the neighbouring frames of the subject;
the review store's decisions as buttons (keyboard shortcuts 1–8, N/P to move, U to undo)
with auto-advance to the next pair still waiting for a reviewer; the case study's rule as a
bulk proposal; the label-noise ceiling and fold leakage; and the export of a cleaned manifest.

Decisions live only in the dataset's :class:`engine.store.ReviewStore` (in the workspace,
never in the dataset folder), which is re-read on every rerun: several reviewers can work at
once without losing decisions, and nothing about decisions is cached in the session.
Pure logic (ordering, filters, progress, proposals) is :mod:`engine.curation` (its review queue).

Other pages open a pair here by setting ``st.session_state[ui.state.Shared.BROWSER_CASE]`` to one of
its cases (the Dataset browser does): the queue then starts at the most severe pair holding it.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from engine.store.records import DECISION_OPTIONS
from ui import loop_view, state
from ui.loaders import case_image
from ui.timefmt import local_time
from ui.widgets import fmt_num

if TYPE_CHECKING:
    import numpy as np

    from engine.curation import QueueFilter, ReviewItem
    from engine.datasets import Dataset
    from engine.dedup import ConflictReport
    from engine.errors import StaleDecision
    from engine.store import Claim, Decision, MaskVersion, ReviewStore

    Decisions = dict[tuple[str, tuple[str, ...]], Decision]  # ReviewStore.decisions()

PAGE = "pages/6_Conflict_review.py"


DECISION_SHORTCUTS = {o.value: o.shortcut for o in DECISION_OPTIONS if o.shortcut}
SCOPE_LABELS = {"group": "within each subject (fast)", "global": "across the whole dataset (finds leakage)"}
STATE_LABELS = {"undecided": "undecided", "proposed": "proposed (bulk rule)", "decided": "decided",
                "needs_expert": "needs expert"}
POLICY_LABELS = {"none": "Decisions only",
                 "drop-empty": "Decisions + the case study's rule for conflict pairs still undecided"}
MAX_SIDE = 640
THUMB = 160


# ------------------------------------------------------------------------------ data

@st.cache_data(show_spinner=False, max_entries=4)
def _report_dict(path: str, mtime: float, size: int) -> dict[str, Any]:
    from engine.dedup import ConflictReport

    return ConflictReport.load(path).to_dict()


def latest_report(ds: Dataset) -> ConflictReport | None:
    """The latest :class:`~engine.dedup.ConflictReport` of ``ds`` (cached on the file's stamp), or None.

    Mirrors :func:`engine.dedup.load_latest_report` (a damaged file counts as none, with a warning).
    """
    from engine.dedup import ConflictReport, latest_report_path
    from engine.errors import ReadError

    path = latest_report_path(ds)
    if path is None or not path.is_file():
        return None
    try:
        stat = path.stat()
        return ConflictReport.from_dict(_report_dict(str(path), stat.st_mtime, stat.st_size), path)
    except ReadError as exc:
        st.warning(f"The saved duplicate search could not be read ({exc.message}); search again.", icon="⚠️")
        return None


def _notice(text: str) -> None:
    st.session_state[state.Review.NOTICE] = text


def show_notice() -> None:
    text = st.session_state.pop(state.Review.NOTICE, None)
    if text:
        st.success(text, icon=":material/check_circle:")


def _fmt(v: Any, digits: int = 4) -> str:
    return fmt_num(v, digits, keep_text=True)


# ------------------------------------------------------------------------------ search

def search_panel(ds: Dataset, report: ConflictReport | None) -> None:
    """Settings of the duplicate search and the button running :func:`engine.dedup.find_conflicts`."""
    from engine.dedup import ConflictConfig
    from engine.dedup.conflicts import SCOPES

    cfg = dict(report.config) if report is not None else ConflictConfig().to_dict()
    size = list(cfg.get("ssim_size") or (64, 80))
    defaults = {state.Review.SCOPE: cfg.get("scope", "group"),
                state.Review.THRESHOLD: float(cfg.get("ssim_threshold", 0.99)),
                state.Review.SSIM_H: int(size[0]), state.Review.SSIM_W: int(size[1])}
    for k, v in defaults.items():
        st.session_state.setdefault(k, v)
    if report is None:
        st.info("No near-duplicate search has been run on this dataset yet. Near-identical images "
                "(SSIM at or above the threshold on downscaled copies) are paired, and their masks compared: "
                "an annotated image whose twin has an empty mask is a **conflict**.", icon=":material/search:")
    with st.expander("Find near-duplicates" if report is None else "Search again (other settings)",
                     expanded=report is None):
        c = st.columns(4)
        scope = c[0].selectbox("Scope", list(SCOPES), format_func=lambda s: SCOPE_LABELS.get(s, s),
                               key=state.Review.SCOPE,
                               help="pairs only within one subject/patient, or anywhere in the dataset")
        thr = c[1].number_input("SSIM threshold", min_value=0.5, max_value=1.0, step=0.001, format="%.3f",
                                key=state.Review.THRESHOLD, help="images at least this similar are near-duplicates")
        h = c[2].number_input("SSIM height (px)", min_value=7, max_value=1024, step=1, key=state.Review.SSIM_H,
                              help="images are downscaled to this size for SSIM (the case study's trick)")
        w = c[3].number_input("SSIM width (px)", min_value=7, max_value=1024, step=1, key=state.Review.SSIM_W)
        if st.button("Find near-duplicates", type="primary", key=state.Review.SEARCH,
                     help="fingerprints are cached, so a repeat only re-verifies the candidates"):
            from ui.widgets import guard, streamlit_progress

            with guard("Finding near-duplicates"):
                from engine.dedup import find_conflicts

                config = ConflictConfig(scope=scope, ssim_threshold=float(thr), ssim_size=(int(h), int(w)))
                report_fn, bar = streamlit_progress(f"Finding near-duplicates among {len(ds):,} images")
                rep = find_conflicts(ds, config, progress=report_fn)
                bar.empty()
                st.session_state[state.Review.SEARCHED] = True
                cats = rep.stats.get("categories", {})
                _notice(f"Found {len(rep.pairs):,} near-duplicate pairs "
                        f"({cats.get('conflict', 0)} conflicts) in {rep.timing.get('total', 0):.1f} s.")
                st.session_state.pop(state.Review.CURRENT, None)
                st.session_state.pop(state.Review.EXPORT, None)
                st.rerun()


def summary_panel(report: ConflictReport, ds: Dataset) -> None:
    """Counts per category, settings and timing of the report."""
    from engine.dedup import CATEGORIES

    n_then = report.dataset.get("n_cases")
    if n_then is not None and int(n_then) != len(ds):
        st.warning(f"The dataset has changed since this search ({int(n_then):,} cases then, {len(ds):,} now): "
                   "search again to review the current images.", icon=":material/update:")

    cats = report.stats.get("categories", {})
    expanded = bool(st.session_state.pop(state.Review.SEARCHED, False))
    when = local_time(report.created) if report.created else "unknown time"
    with st.expander(f"Search summary · {len(report.pairs):,} pairs in {len(report.groups):,} groups · {when}",
                     expanded=expanded):
        cols = st.columns(len(CATEGORIES))
        for col, k in zip(cols, CATEGORIES):
            col.metric(k, f"{int(cats.get(k, 0)):,}")
        cfg = report.config
        st.caption(f"Scope **{cfg.get('scope')}**, SSIM ≥ **{cfg.get('ssim_threshold')}** at "
                   f"{'×'.join(str(v) for v in cfg.get('ssim_size', []))} px · "
                   f"{report.stats.get('n_images', 0):,} images fingerprinted "
                   f"({report.stats.get('cache_hits', 0):,} from cache) · "
                   f"{report.stats.get('n_candidates', 0):,} candidate pairs ({report.stats.get('backend')})")
        st.caption("Timing: " + " · ".join(f"{k} {float(v):.2f} s" for k, v in report.timing.items()))
        if report.bad_files:
            st.warning(f"{len(report.bad_files)} image(s) could not be read and were skipped.", icon="⚠️")
            st.dataframe(report.bad_files, hide_index=True, width="stretch")


# ------------------------------------------------------------------------------ queue controls

def _apply_deep_link(queue: list[ReviewItem]) -> None:
    """Start at the pair of a requested case (``state.Review.REQUEST_CASE``), or of ``BROWSER_CASE`` when
    that changed since it was last used; clears the filters so the pair is visible."""
    from engine.curation import key_text, pair_for_case

    browser_case = state.get(state.Shared.BROWSER_CASE)
    case = st.session_state.pop(state.Review.REQUEST_CASE, None)
    if case is None:
        if not browser_case or browser_case == st.session_state.get(state.Review.LINK_CASE):
            return
        case = browser_case
    st.session_state[state.Review.LINK_CASE] = browser_case
    key = pair_for_case(queue, str(case))
    if key is not None:
        st.session_state[state.Review.CURRENT] = key_text(key)
        for k in (state.Review.F_CATEGORY, state.Review.F_SUBJECT, state.Review.F_STATE):
            st.session_state.pop(k, None)


def filter_controls(queue: list[ReviewItem]) -> QueueFilter:
    """Sidebar filters → :class:`engine.curation.QueueFilter`; plus display options."""
    from engine.curation import REVIEW_STATES, QueueFilter, categories_of, subjects_of

    sb = st.sidebar
    sb.divider()
    sb.subheader("Queue filters")
    cats = categories_of(queue)
    categories = sb.multiselect("Category", list(cats), key=state.Review.F_CATEGORY,
                                format_func=lambda c: f"{c} ({cats.get(c, 0)})",
                                help="empty = all; conflict = one mask empty, the other not")
    subjects = subjects_of(queue)
    picked_subjects = sb.multiselect(f"Subject / patient · {len(subjects)}", subjects, key=state.Review.F_SUBJECT,
                                     help="pairs with an image of these groups") if len(subjects) > 1 else []
    states = sb.multiselect("Decision state", list(REVIEW_STATES), key=state.Review.F_STATE,
                            format_func=lambda s: STATE_LABELS.get(s, s))
    sb.subheader("Display")
    st.session_state.setdefault(state.Review.OPACITY, 0.4)
    st.session_state.setdefault(state.Review.SHOW_MASKS, True)
    st.session_state.setdefault(state.Review.RADIUS, 2)
    sb.toggle("Show masks", key=state.Review.SHOW_MASKS)
    sb.slider("Mask opacity", 0.0, 1.0, step=0.05, key=state.Review.OPACITY)
    sb.slider("Neighbouring frames (each side)", 0, 5, key=state.Review.RADIUS)
    return QueueFilter(tuple(categories), tuple(picked_subjects), tuple(states))


def reviewer_controls() -> tuple[str, str]:
    """Reviewer (the signed-in user; in the single-user demo a typed name remembered for the session)
    and an optional note for the next decision. Returns ``("", note)`` when the user may not decide."""
    from ui import auth

    if auth.signed_in():
        if st.session_state.pop(state.Review.NOTE_CLEAR, False):
            st.session_state[state.Review.NOTE] = ""
        ident = auth.identity()
        if not auth.can("reviewer"):
            auth.role_note("reviewer", "Deciding pairs")
            return "", ""
        note = st.text_input(f"Note (optional, saved with {ident.name}'s next decision)", key=state.Review.NOTE)
        return str(ident.name), (note or "").strip()
    if state.Review.REVIEWER not in st.session_state:  # the single-user demo: this machine's account name
        st.session_state[state.Review.REVIEWER] = st.session_state.get(state.Shared.REVIEWER, "") or _local_user()
    if st.session_state.pop(state.Review.NOTE_CLEAR, False):
        st.session_state[state.Review.NOTE] = ""
    c = st.columns([1, 2])
    who = c[0].text_input("Reviewer", key=state.Review.REVIEWER, placeholder="your name (saved with each decision)")
    note = c[1].text_input("Note (optional, saved with the next decision)", key=state.Review.NOTE)
    who = (who or "").strip()
    st.session_state[state.Shared.REVIEWER] = who
    return who, (note or "").strip()


def progress_panel(queue: list[ReviewItem], shown: list[ReviewItem], flt: QueueFilter,
                   decisions: Decisions) -> None:
    from engine.curation import orphan_decisions, progress_counts

    n = progress_counts(queue)
    st.progress(n["fraction_decided"],
                text=f"**{n['decided']:,} of {n['total']:,}** pairs decided · {n['proposed']:,} proposed by the "
                     f"bulk rule · {n['needs_expert']:,} need an expert · {n['undecided']:,} undecided")
    active = flt.active()
    st.caption(f"**{len(shown):,}** of {len(queue):,} pairs in the queue"
               + (f" · filtered by {', '.join(active)}" if active else "")
               + " · most severe first")
    orphans = orphan_decisions(decisions, queue)
    if orphans:
        st.caption(f"{len(orphans)} decision(s) in the store concern pairs that are not in this search's results "
                   "(another threshold or scope); exported manifests still apply them.")


def _go(key_text: str) -> None:
    st.session_state[state.Review.CURRENT] = key_text
    st.session_state[state.Review.JUMP] = key_text


def _jumped() -> None:
    value = str(st.session_state.get(state.Review.JUMP) or "")
    if "\t" in value:  # a pair key; anything else (a stale label echoed by the browser) is ignored
        st.session_state[state.Review.CURRENT] = value


def current_item(queue: list[ReviewItem], shown: list[ReviewItem]) -> ReviewItem | None:
    """The pair on screen: the session's current pair if it is in the filtered queue, else the
    most severe one still waiting for a reviewer."""
    from engine.curation import first_open, index_of, key_text, parse_key
    from ui import context

    key = parse_key(st.session_state.get(state.Review.CURRENT, ""))
    i = index_of(shown, key)
    if i is None:
        key = first_open(shown)
        i = index_of(shown, key)
        if key is not None:
            st.session_state[state.Review.CURRENT] = key_text(key)
    item = None if i is None else shown[i]
    context.publish(pair=None if item is None else context.pair_param(item.a, item.b))
    return item


def _label(it: ReviewItem) -> str:
    # Nothing here may change while the pair is on screen (its decision state does, when a colleague
    # decides): the browser identifies the chosen option by its label, and a label that changed
    # between runs came back as an unknown value that moved the page to another pair.
    return f"#{it.rank} · {it.a} ↔ {it.b} · {it.category} · severity {it.severity:.3f}"


def navigation(shown: list[ReviewItem], cur: ReviewItem) -> None:
    """Previous / pair picker / next / next undecided."""
    from engine.curation import index_of, key_text, next_open

    pos = index_of(shown, cur.key) or 0
    texts = [key_text(it.key) for it in shown]
    labels = {key_text(it.key): _label(it) for it in shown}
    cur_text = key_text(cur.key)
    if st.session_state.get(state.Review.JUMP) != cur_text:
        st.session_state[state.Review.JUMP] = cur_text
    nxt = next_open(shown, cur.key)
    c = st.columns([2, 6, 2, 4], vertical_alignment="bottom")
    c[0].button("Previous", icon=":material/chevron_left:", key=state.Review.PREV, disabled=pos == 0, shortcut="P",
                on_click=_go, args=(texts[max(0, pos - 1)],), help="previous pair in the queue (P)")
    c[1].selectbox(f"Pair {pos + 1} of {len(shown):,}", texts, key=state.Review.JUMP,
                   format_func=lambda t: labels.get(t, t), on_change=_jumped)
    c[2].button("Next", icon=":material/chevron_right:", key=state.Review.NEXT, disabled=pos >= len(shown) - 1,
                shortcut="N", on_click=_go, args=(texts[min(len(shown) - 1, pos + 1)],),
                help="next pair in the queue (N)")
    # handled here, not in a callback: the target must come from the store as it is now
    if c[3].button("Next undecided", icon=":material/skip_next:", key=state.Review.NEXT_OPEN, disabled=nxt is None,
                   shortcut="Shift+N", help="the next pair nobody has decided yet, or only the bulk rule (Shift+N)"):
        st.session_state[state.Review.CURRENT] = key_text(nxt or cur.key)
        st.rerun()


# ------------------------------------------------------------------------------ the pair

def _current_mask(ds: Dataset, store: ReviewStore, corrected: dict[str, MaskVersion], case_id: str
                  ) -> tuple[np.ndarray | None, str]:
    """(mask or None, description) — a corrected mask version from the store wins over the original."""
    import numpy as np

    case = ds.case(case_id)
    if case_id in corrected:
        mv = corrected[case_id]
        m = store.load_mask_version(case_id, mv.version)
        return m, f"corrected mask v{mv.version} · {int(np.count_nonzero(m)):,} px"
    if not case.labelled:
        return None, "no ground truth"
    m = ds.load_mask(case)
    n = int(np.count_nonzero(m))
    return m, (f"mask {n:,} px" if n else "empty mask")


def _local_user() -> str:
    """The account running the single-user demo (the default reviewer name; editable)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database entry (containers)
        return ""


def decision_panel(store: ReviewStore, queue: list[ReviewItem], shown: list[ReviewItem], cur: ReviewItem,
                   reviewer: str, note: str) -> None:
    """Current decision, undo/confirm, and the decision buttons (auto-advance after each)."""
    from engine.curation import BULK_NOTE, DECISION_HELP, DECISION_LABELS, key_text, next_open, pair_key
    from engine.errors import StaleDecision
    from engine.store import PAIR_DECISIONS
    from ui.widgets import guard

    d = cur.decision
    if d is None:
        st.info("No decision on this pair yet.", icon=":material/pending:")
    else:
        label = DECISION_LABELS.get(d.relative_to(cur.a, cur.b), d.decision)  # A/B as on screen
        where = "" if d.target_kind == "pair" else f" (on its near-duplicate group of {len(d.members)})"
        text = f"**{label}**{where} — {d.reviewer}, {local_time(d.ts)}" + \
               (f" · _{d.note}_" if d.note else "")
        if cur.state == "proposed":
            st.warning(f"Proposed by the case study's rule: {text}. Confirm it or choose another decision.",
                       icon=":material/rule:")
        elif cur.state == "needs_expert":
            st.warning(f"Current decision: {text}", icon=":material/help:")
        else:
            st.success(f"Current decision: {text}", icon=":material/check_circle:")
    if not reviewer and not _signed_in():
        st.caption("Enter your name as **Reviewer** above to record decisions.")
    # The decision ON SCREEN (rendered by the previous run, which the click comes from) — not the
    # store's current one, which this run already reads fresh: a new decision replaces exactly the
    # event the reviewer saw, or is refused as stale.
    fresh = d.event_id if d is not None and d.target_kind == "pair" else None
    seen = st.session_state.get(state.Review.SHOWN)
    base = seen[1] if seen and seen[0] == key_text(cur.key) else fresh
    stale_panel(store, cur, reviewer, note)

    def advance_after() -> tuple[str, str] | None:
        return next_open(shown, cur.key) or next_open(queue, cur.key)

    # U undoes this session's last decision wherever it was made (the page moved on after it); the pair
    # on screen keeps its own Undo button
    last = st.session_state.get(state.Review.LAST)
    last_elsewhere = False
    if last and pair_key(last[0], last[1]) != tuple(cur.key):
        now = store.decision_for(last[0], last[1])
        last_elsewhere = now is not None and now.event_id == last[2]
    c = st.columns([1, 1, 4])
    if c[0].button("Undo", icon=":material/undo:", key=state.Review.UNDO, disabled=d is None or not reviewer,
                   shortcut=None if last_elsewhere else "U",
                   help=f"cancel the current decision on THIS pair ({cur.a} ↔ {cur.b}; recorded as a new event"
                        + ("" if last_elsewhere else "; U") + ")"):
        with guard("Undoing"):
            try:
                if d.target_kind == "pair":  # the pair on screen, as shown: refused if it changed meanwhile
                    store.undo_decision(cur.a, cur.b, reviewer, note or "undo on the review page", base_event=base)
                else:
                    store.undo(d.event_id, reviewer, note or "undo on the review page")
            except StaleDecision as exc:
                _remember_stale(cur, exc, None, "undo")
                st.rerun()
            st.session_state[state.Review.NOTE_CLEAR] = True
            _notice(f"Undid **{DECISION_LABELS.get(d.relative_to(cur.a, cur.b), d.decision)}** on {cur.a} ↔ {cur.b}.")
            st.rerun()
    if cur.state == "proposed" and c[1].button("Confirm", icon=":material/check:", key=state.Review.CONFIRM,
                                               disabled=not reviewer, shortcut="Y",
                                               help="record the proposed decision as your own (Y)"):
        with guard("Recording the decision"):
            nxt = advance_after()
            try:
                store.record_decision(cur.a, cur.b, d.relative_to(cur.a, cur.b), reviewer,
                                      note if note and note != BULK_NOTE else "", base_event=base)
            except StaleDecision as exc:
                _remember_stale(cur, exc, d.relative_to(cur.a, cur.b), note)
                st.rerun()
            st.session_state[state.Review.CURRENT] = key_text(nxt or cur.key)
            st.session_state[state.Review.NOTE_CLEAR] = True
            _notice(f"Confirmed **{DECISION_LABELS.get(d.decision, d.decision)}** on {cur.a} ↔ {cur.b}.")
            st.rerun()

    if last_elsewhere and c[2].button(f"Undo my last decision: {last[3]} on {last[0]} ↔ {last[1]}",
                                      icon=":material/undo:", key=state.Review.UNDO_LAST, shortcut="U",
                                      help="go back to that pair and cancel the decision you just made there (U)"):
        with guard("Undoing"):
            try:
                store.undo_decision(last[0], last[1], reviewer, note or "undo on the review page", base_event=last[2])
            except StaleDecision as exc:
                st.session_state.pop(state.Review.LAST, None)
                st.error(f"Not undone: {exc}", icon=":material/block:")
                return
            st.session_state.pop(state.Review.LAST, None)
            st.session_state[state.Review.CURRENT] = key_text(pair_key(last[0], last[1]))
            st.session_state[state.Review.NOTE_CLEAR] = True
            _notice(f"Undid **{last[3]}** on {last[0]} ↔ {last[1]} (back on that pair).")
            st.rerun()
    current = d.relative_to(cur.a, cur.b) if d is not None and cur.state in ("decided", "needs_expert") else None
    rows = [PAIR_DECISIONS[:4], PAIR_DECISIONS[4:]]
    for row in rows:
        cols = st.columns(len(row))
        for col, dec in zip(cols, row):
            key = DECISION_SHORTCUTS.get(dec)
            if col.button(DECISION_LABELS.get(dec, dec), key=f"{state.Review.DECISION}_{dec}", disabled=not reviewer,
                          type="primary" if dec == current else "secondary", width="stretch", shortcut=key,
                          help=f"{DECISION_HELP.get(dec, '')} ({key})"):
                with guard("Recording the decision"):
                    nxt = advance_after()
                    try:
                        eid = store.record_decision(cur.a, cur.b, dec, reviewer, note, base_event=base)
                    except StaleDecision as exc:
                        _remember_stale(cur, exc, dec, note)
                        st.rerun()
                    st.session_state[state.Review.LAST] = (cur.a, cur.b, eid, DECISION_LABELS.get(dec, dec))
                    st.session_state[state.Review.CURRENT] = key_text(nxt or cur.key)
                    st.session_state[state.Review.NOTE_CLEAR] = True
                    _notice(f"Recorded **{DECISION_LABELS.get(dec, dec)}** on {cur.a} ↔ {cur.b}"
                            + (" — on to the next pair waiting for a decision." if nxt else
                               " — no pair is waiting for a decision any more."))
                    st.rerun()
    st.session_state[state.Review.SHOWN] = (key_text(cur.key), fresh)  # what this run shows


def _signed_in() -> bool:
    from ui import auth

    return auth.signed_in()


def _remember_stale(cur: ReviewItem, exc: StaleDecision, decision: str | None, note: str) -> None:
    """Keep a refused decision (someone decided the pair meanwhile) for :func:`stale_panel`."""
    st.session_state[state.Review.STALE] = {
        "pair": [cur.a, cur.b], "decision": decision, "note": note, "message": str(exc.message),
        "by": exc.decided_by, "at": exc.decided_at, "current_event": exc.current_event,
        "theirs": exc.decision_as_given or exc.decision}


def stale_panel(store: ReviewStore, cur: ReviewItem, reviewer: str, note: str) -> None:
    """A refused (stale) decision on this pair: who decided what, when; reload, or override (reviewer+)."""
    from engine.curation import DECISION_LABELS
    from engine.errors import StaleDecision
    from ui.widgets import guard

    sd = st.session_state.get(state.Review.STALE)
    if not sd:
        return
    if list(sd["pair"]) != [cur.a, cur.b]:
        st.session_state.pop(state.Review.STALE, None)
        return
    now = store.decision_for(cur.a, cur.b)
    theirs = DECISION_LABELS.get(now.relative_to(cur.a, cur.b), now.decision) if now is not None else "no decision"
    mine = DECISION_LABELS.get(sd["decision"], sd["decision"]) if sd["decision"] else "undo"
    when = local_time(sd.get("at")) or "an unknown time"
    st.error(f"**Not recorded — someone decided this pair while you were looking.** "
             f"{sd.get('by') or 'someone'} decided **{theirs}** at {when} (event {sd.get('current_event')}); "
             f"your **{mine}** was based on what you saw before, so nothing was written.",
             icon=":material/sync_problem:")
    c = st.columns([2, 3, 3])
    if c[0].button("Reload the pair", key=state.Review.RELOAD, icon=":material/refresh:",
                   help="drop your refused choice and show the current decision"):
        st.session_state.pop(state.Review.STALE, None)
        st.rerun()
    if sd["decision"] and c[1].button(f"Override with my decision ({mine})", key=state.Review.OVERRIDE,
                                      icon=":material/gavel:", disabled=not reviewer, type="primary",
                                      help="record your decision on top of theirs (a forced decision in the log; "
                                           "their decision stays in the history)"):
        with guard("Overriding"):
            try:
                store.record_decision(cur.a, cur.b, sd["decision"], reviewer,
                                      "; ".join(x for x in (sd.get("note") or note or "",
                                                            f"override of {sd.get('by')}'s decision "
                                                            f"(event {sd.get('current_event')})") if x), force=True)
            except StaleDecision as exc:  # only with force=False; kept for safety
                _remember_stale(cur, exc, sd["decision"], note)
            else:
                st.session_state.pop(state.Review.STALE, None)
                _notice(f"Recorded **{mine}** on {cur.a} ↔ {cur.b}, overriding {sd.get('by')}'s **{theirs}**.")
            st.rerun()
    c[2].caption("Override needs the reviewer role; both decisions stay in the pair's history.")


def pair_panel(ds: Dataset, store: ReviewStore, cur: ReviewItem) -> None:
    """Both images with their masks, the difference image, numbers, and neighbouring frames."""
    from engine.errors import WorkbenchError
    from engine.visualize import difference_image, overlay, resize_rgb

    p = cur.pair
    corrected = store.corrected_masks()
    alpha = float(st.session_state.get(state.Review.OPACITY, 0.4))
    show = bool(st.session_state.get(state.Review.SHOW_MASKS, True))
    c = st.columns(3)
    imgs = []
    for col, tag, cid in ((c[0], "A", cur.a), (c[1], "B", cur.b)):
        try:
            img = case_image(ds, cid)
        except WorkbenchError as exc:  # one unreadable image must not hide the rest of the review
            col.warning(f"{tag} · {cid}: {exc}", icon=":material/broken_image:")
            imgs.append(None)
            continue
        try:
            mask, desc = _current_mask(ds, store, corrected, cid)
        except WorkbenchError as exc:
            mask, desc = None, f"mask unreadable: {exc.message}"
        if mask is not None and mask.shape != img.shape[1:]:
            mask, desc = None, f"{desc} (not drawn: mask {mask.shape} ≠ image {img.shape[1:]})"
        imgs.append(img)
        rgb = overlay(img, mask if show else None, alpha=alpha)
        col.image(resize_rgb(rgb, MAX_SIDE), caption=f"{tag} · {cid} · {desc}", width="stretch")
    if any(i is None for i in imgs):
        c[2].info("No difference image: an image could not be read.")
    elif imgs[0].shape[1:] == imgs[1].shape[1:]:
        same = imgs[0].shape == imgs[1].shape
        diff = difference_image(imgs[0], imgs[1]) if same else difference_image(imgs[0].mean(0), imgs[1].mean(0))
        c[2].image(resize_rgb(diff, MAX_SIDE), caption="|A − B| (contrast-stretched: only noise for a true twin)",
                   width="stretch")
    else:
        c[2].info(f"The images differ in size ({imgs[0].shape[1:]} vs {imgs[1].shape[1:]}): no difference image.")
    from ui.widgets import legend

    legend(ds.labels)
    m = st.columns(6)
    m[0].metric("SSIM", _fmt(p.get("ssim"), 4), help="structural similarity of the downscaled images")
    m[1].metric("Mask Dice", _fmt(p.get("mask_dice"), 3), help="Kaggle policy: both empty = 1, one empty = 0")
    m[2].metric("Area A (px)", "n/a" if p.get("area_a") is None else f"{int(p['area_a']):,}")
    m[3].metric("Area B (px)", "n/a" if p.get("area_b") is None else f"{int(p['area_b']):,}")
    m[4].metric("Severity", _fmt(p.get("severity"), 3), help="review priority in [0, 1]: (1 − Dice) weighted by "
                "how sure the duplicate is and how large the mask is")
    m[5].metric("Category", cur.category)
    st.caption(f"Queue rank #{cur.rank} · near-duplicate group {p.get('group', '?')} · subject(s) "
               f"{', '.join(cur.subjects)} · fingerprint similarity {_fmt(p.get('fp_similarity'), 3)} · "
               f"perceptual-hash distance {p.get('phash_distance', 'n/a')}")
    neighbour_panel(ds, cur)


def neighbour_panel(ds: Dataset, cur: ReviewItem) -> None:
    """Thumbnails of the frames around A (and around B when it is elsewhere) in subject order."""
    from engine.curation import neighbours
    from engine.errors import WorkbenchError
    from engine.thumbnails import thumbnail_paths

    radius = int(st.session_state.get(state.Review.RADIUS, 2))
    if radius <= 0:
        return
    strips: list[tuple[str, list[str]]] = []
    for cid in (cur.a, cur.b):
        if cid in ds and not any(cid in ids for _, ids in strips):
            c = ds.case(cid)
            strips.append((c.group_id, neighbours(ds.cases, cid, c.group_id, radius)))
    for group, ids in strips:
        if len(ids) <= 1:
            st.caption(f"Subject **{group}** has no other images.")
            continue
        st.caption(f"Neighbouring frames of subject **{group}** (ground truth; frame order)")
        paths = thumbnail_paths(ds, ids, THUMB, "gt")
        cols = st.columns(2 * radius + 1)
        for col, cid, pth in zip(cols, ids, paths):
            tag = " ◀ A" if cid == cur.a else (" ◀ B" if cid == cur.b else "")
            c = ds.case(cid)
            state_txt = ("unlabelled" if not c.labelled else (f"{c.mask_area:,} px" if c.has_mask else "empty"))
            if isinstance(pth, WorkbenchError):
                col.warning(f"{cid}: {pth.message}", icon="⚠️")
            else:
                col.image(str(pth), caption=f"{cid}{tag} · {state_txt}", width="stretch")


def history_panel(store: ReviewStore, cur: ReviewItem) -> None:
    from engine.curation import pair_history

    rows = [{**r, "when": local_time(r.get("when"))} for r in pair_history(store, cur.a, cur.b)]
    with st.expander(f"History of this pair ({len(rows)} decision event{'s' if len(rows) != 1 else ''})"):
        if rows:
            st.dataframe(rows, hide_index=True, width="stretch",
                         column_order=["event", "when", "reviewer", "label", "note", "status"])
        else:
            st.caption("Nothing recorded yet.")
        st.caption("The store is an append-only log: undo adds an event, nothing is ever deleted.")


def links_panel(cur: ReviewItem) -> None:
    """Open A or B in the Dataset browser, or its mask in the Mask editor (when installed)."""
    from ui.nav import BROWSER_PAGE, EDITOR_PAGE, REPO, request_case, switch_page

    editor = (REPO / EDITOR_PAGE).is_file()
    c = st.columns(4 if editor else 2)
    for i, (tag, cid) in enumerate((("A", cur.a), ("B", cur.b))):
        k = 2 * i if editor else i
        if c[k].button(f"Open {tag} in browser", key=f"{state.Review.OPEN}_{tag}", icon=":material/open_in_new:",
                       help=f"show {cid} in the Dataset browser"):
            request_case(cid)
            st.session_state[state.Review.LINK_CASE] = cid  # coming back must not jump away from this pair
            switch_page(BROWSER_PAGE)
        if editor and c[k + 1].button(f"Edit {tag}'s mask", key=f"{state.Review.EDIT}_{tag}", icon=":material/edit:",
                                      help=f"correct the mask of {cid} in the Mask editor "
                                           "(a new version; the original stays)"):
            state.put(state.Shared.BROWSER_CASE, cid)
            st.session_state[state.Review.LINK_CASE] = cid
            switch_page(EDITOR_PAGE)


# ------------------------------------------------------------------------------ bulk, ceiling, export

def bulk_panel(store: ReviewStore, queue: list[ReviewItem], decisions: Decisions, reviewer: str) -> None:
    """The case study's rule as a bulk proposal (recorded as undoable decisions noted BULK_NOTE)."""
    from engine.curation import (
        BULK_NOTE,
        apply_proposals,
        bulk_proposals,
        confirm_proposals,
        proposals_in_force,
        undo_proposals,
    )
    from ui.widgets import guard, streamlit_progress

    props, n = bulk_proposals(queue)
    in_force = proposals_in_force(decisions)
    with st.expander(f"Case study's rule as a bulk proposal · {len(props)} conflict pair(s) it would decide"):
        st.markdown(
            "The case study dropped **the empty image of every conflicting pair** without looking. Here the "
            "rule is only a *proposal*: **Apply as proposal** records *Keep A* or *Keep B* (keep the annotated "
            f"image, leave its empty twin out) for each conflict pair nobody has decided yet, with the note "
            f"“{BULK_NOTE}”. Those pairs show as **proposed** in the queue until a reviewer confirms them (Y on "
            "the pair, or **Confirm all** below, recorded under the confirming reviewer's name) or overrides "
            "them; every proposal can be undone one by one (Undo on the pair) or all at once below. A proposal "
            "is never counted as a reviewer's decision: manifests, exports and the impact report keep them "
            "apart. Pairs a reviewer already decided are never touched, and the dataset itself never changes.")
        c = st.columns(4)
        c[0].metric("Conflict pairs", n["conflict_pairs"])
        c[1].metric("Would be proposed", n["undecided"], help="conflict pairs with no decision yet")
        c[2].metric("Proposals in force", len(in_force))
        c[3].metric("Decided by a reviewer", n["decided"])
        if n["unknown_areas"]:
            st.caption(f"{n['unknown_areas']} conflict pair(s) lack mask areas in the report and are skipped.")
        b = st.columns(3)
        if b[0].button(f"Apply as proposal ({len(props)} pairs)", key=state.Review.BULK_APPLY, type="primary",
                       disabled=not props or not reviewer):
            with guard("Recording the proposals"):
                report_fn, bar = streamlit_progress("Recording proposals")
                apply_proposals(store, props, reviewer, progress=report_fn)
                bar.empty()
                _notice(f"Recorded {len(props)} proposal(s) of the case study's rule; they show as *proposed*.")
                st.rerun()
        if b[1].button(f"Undo all proposals ({len(in_force)})", key=state.Review.BULK_UNDO, icon=":material/undo:",
                       disabled=not in_force or not reviewer):
            with guard("Undoing the proposals"):
                report_fn, bar = streamlit_progress("Undoing proposals")
                k = undo_proposals(store, reviewer, progress=report_fn)
                bar.empty()
                _notice(f"Undid {k} proposal(s) of the case study's rule.")
                st.rerun()
        if b[2].button(f"Confirm all proposals ({len(in_force)})", key=state.Review.BULK_CONFIRM,
                       icon=":material/done_all:", disabled=not in_force or not reviewer,
                       help=f"record every proposal still in force as your own decision ({reviewer or 'your name'})"):
            with guard("Confirming the proposals"):
                report_fn, bar = streamlit_progress("Confirming proposals")
                done, skipped = confirm_proposals(store, reviewer, progress=report_fn)
                bar.empty()
                left = f"; {skipped} pair(s) were decided by someone meanwhile and left alone." if skipped else "."
                _notice(f"Confirmed {done} proposal(s) as decisions by {reviewer}{left}")
                st.rerun()
        if not reviewer:
            st.caption("Enter your name as **Reviewer** to apply, confirm or undo proposals.")


def ceiling_panel(report: ConflictReport) -> None:
    """Label-noise ceiling and fold leakage of the report."""
    c = report.ceiling
    lk = report.leakage
    with st.expander("Label-noise ceiling and fold leakage", expanded=False):
        m = st.columns(4)
        m[0].metric("Dataset-wide ceiling", _fmt(c.get("dataset"), 4),
                    help="best mean Dice any model can reach on the labelled cases given these duplicates")
        m[1].metric("Ceiling on affected cases", _fmt(c.get("mean_affected"), 4))
        m[2].metric("Affected cases", f"{int(c.get('n_affected', 0) or 0):,}",
                    help=f"in {int(c.get('n_groups_affected', 0) or 0)} near-duplicate group(s)")
        m[3].metric("Groups split across folds", f"{int(lk.get('n_groups_split', 0) or 0):,}" if lk.get("available")
                    else "n/a", help="near-duplicate groups whose members land in different CV folds (leakage)")
        if c.get("dataset") is not None:
            st.caption(f"Label noise costs {100 * (1 - float(c['dataset'])):.2f} Dice points over "
                       f"{int(c.get('n_labelled', 0)):,} labelled cases. {c.get('definition', '')}")
        if lk.get("available"):
            st.caption(f"Leakage: {int(lk.get('n_groups_split', 0))} group(s), "
                       f"{int(lk.get('n_cases_in_split_groups', 0))} case(s) split across folds "
                       f"({lk.get('source', '')}). {lk.get('note', '')}")
            if lk.get("groups"):
                st.dataframe([{"members": ", ".join(g["members"]), "folds": ", ".join(map(str, g["folds"]))}
                              for g in lk["groups"]], hide_index=True, width="stretch")
        else:
            st.caption(f"Leakage not computed: {lk.get('reason', 'no folds')}.")


def export_panel(ds: Dataset, store: ReviewStore, report: ConflictReport) -> None:
    """Write a cleaned manifest (decisions applied) and offer it for download."""
    from engine.curation import (
        MANIFEST_POLICIES,
        build_manifest,
        default_manifest_path,
        export_summary,
        save_manifest,
        train_command,
    )
    from ui.widgets import guard

    last = st.session_state.get(state.Review.EXPORT)
    with st.expander("Export a cleaned manifest for training", expanded=bool(last)):
        st.caption("A manifest lists the cases to train on, with the reviewers' decisions applied (dropped cases "
                   "left out, union/empty masks substituted, corrected mask versions used). The dataset folder is "
                   "never modified.")
        policy = st.radio("Policy", list(MANIFEST_POLICIES), key=state.Review.POLICY, horizontal=True,
                          format_func=lambda p: POLICY_LABELS.get(p, p),
                          help="drop-empty applies the case study's rule at export time to conflict pairs without "
                               "any decision, recording nothing; explicit decisions always win")
        path_text = st.text_input("Manifest path", key=state.Review.MANIFEST_PATH,
                                  placeholder=f"default: {Path(ds.workdir) / 'manifests' / 'clean-<time>.json'}")
        if st.button("Write manifest", key=state.Review.EXPORT_BTN, type="primary", icon=":material/save:"):
            with guard("Writing the manifest"):
                path = Path(path_text.strip()).expanduser() if path_text.strip() else default_manifest_path(ds)
                if path.is_dir():
                    path = path / default_manifest_path(ds).name
                elif path.suffix.lower() != ".json":
                    path = path.with_suffix(".json")
                from ui.auth import check_output_path

                check_output_path(path)  # team mode: only under the workspace or an export root
                cases, dropped, info = build_manifest(ds, store, report, policy)
                # never replaces a file this program did not write: another name is chosen (and said)
                path, renamed = save_manifest(path, ds, cases, dropped, info, on_exists="rename")
                last = {"path": str(path.resolve()), "summary": export_summary(info), "policy": policy,
                        "renamed": renamed,
                        "dropped": [{"case_id": c, "reason": r} for c, r in dropped],
                        "written": _dt.datetime.now().strftime("%H:%M:%S")}
                st.session_state[state.Review.EXPORT] = last
        if last:
            s = last["summary"]
            st.success(f"Wrote `{last['path']}` at {last['written']} (policy **{last['policy']}**).",
                       icon=":material/save:")
            if last.get("renamed"):
                st.warning(last["renamed"], icon=":material/warning:")
            m = st.columns(5)
            m[0].metric("Kept", f"{s['kept']:,}")
            m[1].metric("Dropped", f"{s['dropped']:,}",
                        help=f"{s['dropped_by_decision']} by reviewers' decisions, {s['dropped_by_proposal']} by "
                             f"unconfirmed proposals, {s['dropped_by_policy']} by the policy")
            if s["unconfirmed_proposals"]:
                how = ("applied, and marked *proposal … not confirmed* in the manifest (policy drop-empty)."
                       if s["dropped_by_proposal"] else "left out (policy *Decisions only*). Confirm them in the "
                       "queue or in bulk above to make them decisions.")
                st.info(f"{s['unconfirmed_proposals']:,} proposal(s) of the case-study rule are not confirmed by "
                        f"anyone: {how}", icon=":material/pending:")
            m[2].metric("Union masks", f"{s['union_masks']:,}", help="cases given the union of their pair's masks")
            m[3].metric("Emptied masks", f"{s['emptied_masks']:,}")
            m[4].metric("Conflicts without decision", f"{s['conflicts_without_decision']:,}")
            if last["dropped"]:
                st.dataframe(last["dropped"], hide_index=True, width="stretch")
            p = Path(last["path"])
            if p.is_file():
                st.download_button("Download the manifest (JSON)", data=p.read_bytes(), file_name=p.name,
                                   mime="application/json", key=state.Review.DOWNLOAD, icon=":material/download:")
            st.caption("Train on it:")
            st.code(train_command(p), language="bash")


def claims_caption(claims: dict[str, Claim], cur: ReviewItem) -> None:
    """Who is editing A or B in the Mask editor right now (case claims with a lease)."""
    held = [(tag, cid, claims[cid]) for tag, cid in (("A", cur.a), ("B", cur.b)) if cid in claims]
    for tag, cid, cl in held:
        st.caption(f":material/edit_note: **{cl.user}** is editing {tag} ({cid}) in the Mask editor now "
                   f"(lease ends in {int(cl.seconds_left)} s).")


def queue_table(shown: list[ReviewItem], claims: dict[str, Claim] | None = None) -> None:
    import pandas as pd

    claims = claims or {}
    with st.expander(f"Queue table ({len(shown):,} pair{'' if len(shown) == 1 else 's'})"):
        rows = []
        for it in shown:
            r = it.row()
            r["being edited by"] = ", ".join(sorted({claims[c].user for c in (it.a, it.b) if c in claims}))
            rows.append(r)
        df = pd.DataFrame(rows)
        st.dataframe(df, hide_index=True, width="stretch", key=state.Review.QUEUE_TABLE,
                     column_config={c: st.column_config.NumberColumn(format="%.4f")
                                    for c in ("severity", "ssim", "mask_dice") if c in df.columns})


# ------------------------------------------------------------------------------ page

def render_review() -> None:
    """The whole Conflict review page body (call inside ``ui.widgets.guard``)."""
    from engine.curation import build_queue, filter_queue
    from engine.store import ReviewStore
    from ui import context
    from ui.widgets import dataset_required

    ds = dataset_required()
    context.warn_unknown_case(ds)
    if getattr(ds, "workdir", None) is None:
        st.info("This dataset was opened without a workspace folder, so review decisions cannot be stored: "
                "open it from the Home page.", icon=":material/info:")
        return
    show_notice()
    report = latest_report(ds)
    search_panel(ds, report)
    if report is None:
        return
    summary_panel(report, ds)
    with ReviewStore.for_dataset(ds) as store:
        decisions = store.decisions()
        queue = build_queue(report.pairs, decisions)
        if not queue:
            st.success("No near-duplicate pairs at this threshold: nothing to review.", icon=":material/done_all:")
            ceiling_panel(report)
            return
        _apply_deep_link(queue)
        flt = filter_controls(queue)
        shown = filter_queue(queue, flt)
        progress_panel(queue, shown, flt, decisions)
        loop_view.live_panel(ds, store, report)  # the live label-noise ceiling
        reviewer, note = reviewer_controls()
        cur = current_item(queue, shown)
        if cur is None:
            st.info("No pair matches the filters: clear a filter in the sidebar.", icon=":material/filter_alt_off:")
        else:
            navigation(shown, cur)
            st.subheader(f"{cur.a} ↔ {cur.b} · {cur.category}")
            claims = store.claims()
            claims_caption(claims, cur)
            decision_panel(store, queue, shown, cur, reviewer, note)
            pair_panel(ds, store, cur)
            history_panel(store, cur)
            links_panel(cur)
        st.divider()
        bulk_panel(store, queue, decisions, reviewer)
        ceiling_panel(report)
        export_panel(ds, store, report)
        loop_view.loop_link()
        loop_view.loop_section(ds, store, report, "review")  # retrain with corrections, what moved
        queue_table(shown, store.claims())
