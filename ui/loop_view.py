"""Streamlit glue of the correction loop: live ceiling, retrain with corrections, what moved.

Used by the Conflict review and Mask editor pages through small hooks:

- :func:`live_panel` — the label-noise ceiling of the latest duplicate search *after* the
  decisions and corrections made so far (:func:`engine.curation.live_ceiling`, no rescan), next
  to the review progress; it changes with every decision.
- :func:`loop_section` — one expander: the corrected dataset as it stands (decisions, corrected
  masks, dropped cases), **Retrain with corrections** (fine-tunes the chosen model on it with the
  same held-out cases, as a background job of :mod:`engine.jobs` with progress and cancel; the
  new model appears in every model picker), and **What moved** (:func:`engine.impact.impact_report`
  of two models on the held-out cases, on the original and on the corrected ground truth).
- :func:`signals_panel` / :func:`queue_signals` — model-vs-model disagreement and flip-TTA
  uncertainty for the Mask editor's case queue (kept in the dataset's workspace).

Nothing here imports torch at module level; engine modules are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from ui import state
from ui.widgets import fmt_num

if TYPE_CHECKING:
    from engine.datasets import Dataset
    from engine.dedup import ConflictReport
    from engine.store import ReviewStore

REFRESH_SECONDS = 2.0


def _fmt(v: Any, digits: int = 4) -> str:
    return fmt_num(v, digits, keep_text=True)


# ------------------------------------------------------------------------------------------ live ceiling

@st.cache_data(show_spinner=False, max_entries=16)
def _live(ds_key: str, report_key: str, review_key: str, _ds: Dataset, _store: ReviewStore,
          _report: ConflictReport) -> dict[str, Any]:
    from engine.curation import live_ceiling

    return live_ceiling(_ds, _store, _report)


def review_state_key(store: ReviewStore) -> str:
    """Changes whenever a decision or a corrected mask version is added, superseded or undone."""
    import hashlib

    dec = sorted(int(d.event_id) for d in store.decisions().values())
    masks = sorted((str(c), int(mv.version)) for c, mv in store.corrected_masks().items())
    return hashlib.sha1(repr((dec, masks)).encode()).hexdigest()


def live_panel(ds: Dataset, store: ReviewStore, report: ConflictReport | None) -> dict[str, Any] | None:
    """Ceiling now vs at the search, unresolved conflicts: recomputed from the store whenever the
    review changed (cached per review state, so moving through the queue costs nothing)."""
    from ui.loaders import dataset_key

    if report is None or not report.pairs:
        return None
    report_key = f"{getattr(report, 'path', '')}|{report.created}|{len(report.pairs)}"
    live = _live(f"{dataset_key(ds)}|{ds.workdir}", report_key, review_state_key(store), ds, store, report)
    m = st.columns(4)
    before = live.get("before")
    now = live.get("dataset")
    delta = None if before is None or now is None else now - before
    m[0].metric("Label-noise ceiling now", _fmt(now), delta=None if delta is None else f"{delta:+.4f}",
                help="best mean Dice any model can reach on the corrected dataset's labelled cases, "
                     "updated with every decision (no rescan)")
    m[1].metric("Ceiling at the search", _fmt(before))
    m[2].metric("Cases affected now", f"{int(live['n_affected']):,}",
                help=f"in {int(live['n_groups_affected'])} near-duplicate group(s) whose ceiling is below 1")
    m[3].metric("Conflicts still open", f"{int(live['unresolved_pairs'].get('conflict', 0)):,}",
                help="conflict pairs with no decision and no corrected mask")
    return live


# ------------------------------------------------------------------------------------------ retrain + impact

def _models_with_split(ds: Dataset) -> list[str]:
    """Model names whose classes match ``ds``, those with a recorded held-out split first."""
    from engine.checkpoint import read_card
    from ui.loaders import ranked_model_names, weights_table

    names = ranked_model_names(ds.labels)
    folders = {w["name"]: w.get("folder") for w in weights_table() if "error" not in w}
    with_split = []
    for n in names:
        try:
            card = read_card(folders[n]) if folders.get(n) else None
        except Exception:  # noqa: BLE001 - a broken card is listed by the pickers with its error
            card = None
        split = ((getattr(card, "training", None) or {}).get("split") or {}) if card is not None else {}
        if split.get("val_case_ids"):
            with_split.append(n)
    return with_split + [n for n in names if n not in with_split]


def _corrected_summary(ds: Dataset, store: ReviewStore) -> None:
    decisions = store.decisions()
    corrected = store.corrected_masks()
    drops = {c for d in decisions.values() for c in (getattr(d, "dropped", ()) or ())}
    st.caption(f"Corrected dataset now: **{len(decisions):,}** decision(s), **{len(corrected):,}** corrected "
               f"mask(s), **{len(drops):,}** case(s) dropped, of {len(ds):,} cases. Retraining builds its manifest "
               "(decisions + latest mask versions) into the workspace and fine-tunes the chosen model on it; the "
               "model's held-out cases stay held out.")


def _start(ds: Dataset, store: ReviewStore, report: ConflictReport | None, parent: str, epochs: int) -> None:
    from engine.retrain import start_retrain

    job, plan = start_retrain(ds, store, parent, report, epochs=int(epochs), workspace=state.workspace())
    st.session_state[state.Loop.JOB] = {"run_dir": str(job.run_dir), "name": plan.config.name, "parent": parent,
                                 "dataset": str(ds.root), "digest": plan.manifest.digest[:12],
                                 "n_decisions": plan.manifest.n_decisions,
                                 "n_mask_versions": plan.manifest.n_mask_versions}
    st.session_state[state.Loop.OPEN] = True


def job_panel(job: dict[str, Any], where: str) -> None:
    """Progress, cancel and outcome of the retrain job (refreshes itself while it runs)."""
    from engine.jobs import cancel, job_status

    info = job_status(Path(job["run_dir"]), log_lines=0)
    s = info["state"]
    spe = info["steps_per_epoch"]
    text = (f"{job['name']}: epoch {info['epoch']}/{info['epochs']} · step {info['step']}/{spe}"
            if spe and info["epochs"] else f"{job['name']}: preparing")
    text += f" · {info['message']}" if info["message"] else ""
    st.progress(float(info["fraction"]), text=text)
    if info["active"]:
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        if info["cancel_requested"]:
            c1.caption("Cancel requested…")
        elif c1.button("Cancel retraining", key=f"{state.Loop.CANCEL}_{where}"):
            cancel(Path(job["run_dir"]), wait=False)
        c2.caption(f"Fine-tuning **{job['parent']}** on the corrected dataset (manifest {job['digest']}: "
                   f"{job['n_decisions']} decision(s), {job['n_mask_versions']} corrected mask(s)).")
    elif s == "finished":
        from ui.loaders import refresh_weights

        refresh_weights()
        st.success(f"Retrained: **{job['name']}** (best {info['metric'] or 'val_dice'} "
                   f"{_fmt(info['best_metric'])}) is now in every model picker.", icon=":material/check_circle:")
    elif s == "cancelled":
        st.warning(f"Retraining was cancelled: {info['message']}", icon=":material/stop_circle:")
    else:
        st.error(f"Retraining {s}: {info.get('error') or info['message']}", icon=":material/error:")


def _job_fragment(where: str) -> None:
    job = st.session_state.get(state.Loop.JOB)
    if not job:
        return
    was_active = bool(st.session_state.get(f"{state.Loop.JOB_ACTIVE}_{where}"))
    from engine.jobs import job_status

    active = job_status(Path(job["run_dir"]), log_lines=0)["active"]
    st.session_state[f"{state.Loop.JOB_ACTIVE}_{where}"] = active
    if was_active and not active:
        st.rerun(scope="app")
    job_panel(job, where)


def movers_grid(ds: Dataset, rows: list[dict[str, Any]], limit: int = 12, ncols: int = 6) -> None:
    """Thumbnails (image with its ground truth) of the biggest movers, captioned with the change."""
    from engine.errors import WorkbenchError
    from engine.thumbnails import thumbnail_path
    from ui.nav import short_id

    cols = st.columns(ncols)
    for i, r in enumerate(rows[:limit]):
        with cols[i % ncols]:
            try:
                path = thumbnail_path(ds, r["case_id"], 192, "gt")
            except WorkbenchError as exc:
                st.caption(f"{short_id(r['case_id'])}: no thumbnail ({exc.message})")
                continue
            review = "; ".join(r["touched"]) or ("GT changed" if r["gt_changed"] else "")
            st.image(str(path), width="stretch",
                     caption=f"{short_id(r['case_id'])} · Δ {r['delta_corrected']:+.3f}" + (f" · {review}" if review
                                                                                             else ""))


def impact_view(rep: dict[str, Any], ds: Dataset | None = None) -> None:
    """The impact report: both yardsticks, the yardstick shift, the ceiling and the movers (with
    thumbnails when ``ds`` is given)."""
    import pandas as pd

    a, b = rep["models"]["before"]["name"], rep["models"]["after"]["name"]
    st.markdown(f"**What moved: {b} vs {a}** on {rep['cases']['n']} held-out case(s) "
                f"({rep['cases']['source']}; {rep['cases']['n_dropped_by_review']} dropped by the review).")
    rows = []
    notes = []
    for y, label in (("original", "Original ground truth"), ("corrected", "Corrected ground truth")):
        part = rep["yardsticks"][y]
        ci = part["delta"].get("mean_dice_ci95")
        rows.append({"yardstick": label, f"Dice {a}": part["before"]["mean_dice"],
                     f"Dice {b}": part["after"]["mean_dice"], "Δ Dice": part["delta"]["mean_dice"],
                     "Δ Dice 95 % CI": f"{ci[0]:+.4f} … {ci[1]:+.4f}" if ci else "n/a",
                     "Δ IoU": part["delta"]["mean_iou"], "cases": part["after"]["n_cases"]})
        if ci and part["delta"].get("within_noise"):
            notes.append(f"on the {y} ground truth the change is **within noise** (its 95 % interval includes 0)")
        elif ci:
            notes.append(f"on the {y} ground truth the change is larger than the case-to-case noise")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    if notes:
        st.caption("Intervals: paired bootstrap over the held-out cases (2,000 resamples). " + "; ".join(notes) + ".")
    sh = rep["yardstick_shift"]
    m = st.columns(4)
    m[0].metric("Model change (corrected GT)", _fmt(rep["yardsticks"]["corrected"]["delta"]["mean_dice"]),
                help="the model got better or worse: after − before, scored on the corrected labels")
    m[1].metric(f"Yardstick change ({a})", _fmt(sh["before"]),
                help="the same predictions scored on corrected − original labels: the yardstick moved")
    m[2].metric("Ceiling before", _fmt(rep["ceiling"].get("before")))
    m[3].metric("Ceiling after", _fmt(rep["ceiling"].get("after")))
    fixed = [r for r in rep["per_case"] if r["touched"] or r["gt_changed"] or r["dropped"]]
    st.markdown(f"**Fixes among the held-out cases**: {len(fixed)} corrected or decided case(s) and what each "
                "did to the metric.")
    if fixed:
        st.dataframe(pd.DataFrame([{
            "case": r["case_id"], "fix": "; ".join(r["touched"]) or "ground truth changed",
            f"Dice {a} (orig GT)": r["dice_before_original"], f"Dice {b} (orig GT)": r["dice_after_original"],
            f"Dice {a} (corr. GT)": r["dice_before_corrected"], f"Dice {b} (corr. GT)": r["dice_after_corrected"],
            "GT changed": r["gt_changed"], "dropped": r["dropped"]} for r in fixed]),
            hide_index=True, width="stretch")
    movers = set(rep["movers"])
    per = [r for r in rep["per_case"] if r["case_id"] in movers]
    per.sort(key=lambda r: -r["moved"])
    st.markdown(f"**Movers** (|ΔDice| ≥ {rep['mover_threshold']}): {len(movers)}, of which "
                f"**{len(rep['touched_movers'])}** corrected or decided.")
    if per and ds is not None:
        movers_grid(ds, per)
    if per:
        st.dataframe(pd.DataFrame([{
            "case": r["case_id"], "Δ original": r["delta_original"], "Δ corrected": r["delta_corrected"],
            "GT changed": r["gt_changed"], "dropped": r["dropped"],
            "review": "; ".join(r["touched"])} for r in per]), hide_index=True, width="stretch")
    else:
        st.caption("No held-out case moved by the threshold.")


def _impact(ds: Dataset, store: ReviewStore, report: ConflictReport | None, before: str, after: str) -> None:
    from engine.impact import impact_report
    from ui.widgets import streamlit_progress

    progress, bar = streamlit_progress("Predicting the held-out cases with both models…")
    rep = impact_report(ds, before, after, store, report, device=state.current_device(),
                        workspace=state.workspace(), progress=progress)
    bar.empty()
    st.session_state[state.Loop.IMPACT] = rep
    st.session_state[state.Loop.OPEN] = True


def loop_section(ds: Dataset, store: ReviewStore, report: ConflictReport | None, where: str = "review",
                 expander: bool = True) -> None:
    """Retrain with corrections + What moved (one expander, or the page body with ``expander=False``;
    ``where`` keeps widget keys apart)."""
    from ui.widgets import guard

    job = st.session_state.get(state.Loop.JOB)
    if job and st.session_state.get(state.Loop.REFRESHED_FOR) != job["run_dir"] and not _active(job):
        from ui.loaders import refresh_weights

        refresh_weights()  # the retrained model was just exported: list it in the pickers now, once
        st.session_state[state.Loop.REFRESHED_FOR] = job["run_dir"]
    box = (st.expander("Retrain with corrections · what moved", expanded=bool(st.session_state.get(state.Loop.OPEN)))
           if expander else st.container())
    with box:
        _corrected_summary(ds, store)
        names = _models_with_split(ds)
        if not names:
            st.info("No model for this dataset's classes yet: train one on the Train page first.")
            return
        c1, c2, c3 = st.columns([3, 1, 2], vertical_alignment="bottom")
        parent = c1.selectbox("Model to fine-tune", names, key=f"{state.Loop.PARENT}_{where}", on_change=_keep_open,
                              help="fine-tuned from its weights with its own training settings and held-out cases")
        epochs = c2.number_input("Epochs", min_value=1, max_value=200, value=2, step=1,
                                 key=f"{state.Loop.EPOCHS}_{where}", on_change=_keep_open)
        busy = bool(job) and _active(job)
        if c3.button("Retrain with corrections", key=f"{state.Loop.START}_{where}", type="primary", disabled=busy,
                     icon=":material/model_training:"):
            with guard("Starting the retraining"):
                _start(ds, store, report, parent, int(epochs))
                job = st.session_state.get(state.Loop.JOB)
        if job and job.get("dataset") == str(ds.root):
            st.fragment(_job_fragment, run_every=REFRESH_SECONDS if _active(job) else None)(where)
        st.divider()
        st.markdown("**What moved** — before/after on the same held-out cases, on the old and the corrected labels")
        child = job.get("name") if job and job.get("dataset") == str(ds.root) else None
        marker = f"{state.Loop.DEFAULTS_FOR}_{where}"
        if child in names and job.get("parent") in names and st.session_state.get(marker) != job["run_dir"]:
            # the retrained model just appeared: compare it with its parent by default (once)
            st.session_state[f"{state.Loop.BEFORE}_{where}"] = job["parent"]
            st.session_state[f"{state.Loop.AFTER}_{where}"] = child
            st.session_state[marker] = job["run_dir"]
        c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="bottom")
        dflt_b = names.index(job["parent"]) if job and job.get("parent") in names else 0
        before = c1.selectbox("Before", names, index=dflt_b, key=f"{state.Loop.BEFORE}_{where}", on_change=_keep_open)
        after_names = [n for n in names if n != before] or names
        dflt_a = after_names.index(child) if child in after_names else 0
        after = c2.selectbox("After", after_names, index=dflt_a, key=f"{state.Loop.AFTER}_{where}",
                             on_change=_keep_open)
        if c3.button("Show what moved", key=f"{state.Loop.IMPACT_BTN}_{where}", icon=":material/compare_arrows:"):
            with guard("Computing the impact report"):
                _impact(ds, store, report, before, after)
        rep = st.session_state.get(state.Loop.IMPACT)
        if rep and rep.get("dataset") == str(ds.root):
            impact_view(rep, ds)


def _keep_open() -> None:
    st.session_state[state.Loop.OPEN] = True


def _active(job: dict[str, Any]) -> bool:
    from engine.jobs import job_status

    try:
        return bool(job_status(Path(job["run_dir"]), log_lines=0)["active"])
    except Exception:  # noqa: BLE001 - a vanished run folder is simply not active
        return False


# ------------------------------------------------------------------------------------------ queue signals

def queue_signals(ds: Dataset) -> dict[str, Any]:
    """``{"disagreement": {...}, "uncertainty": {...}}`` saved for ``ds`` (for :func:`case_queue`)."""
    from engine.curation.signals import load_signals

    sig = load_signals(ds)
    return {"disagreement": sig.get("disagreement") or None, "uncertainty": sig.get("uncertainty") or None}


def signals_panel(ds: Dataset) -> None:
    """Compute model-vs-model disagreement and flip-TTA uncertainty for the case queue."""
    from engine.curation.signals import load_signals
    from ui.widgets import guard, model_picker

    sig = load_signals(ds)
    with st.expander("Model signals for the queue (disagreement, uncertainty)", expanded=False):
        if sig:
            st.caption(f"In use: {len(sig.get('disagreement') or {}):,} case(s) with model disagreement "
                       f"({', '.join(sig.get('models', []))}), {len(sig.get('uncertainty') or {}):,} with flip-TTA "
                       "uncertainty.")
        models = model_picker("Models (2–3 for disagreement; the first also gives uncertainty)",
                              key=state.Loop.SIG_MODELS, multi=True, max_selections=3, dataset_labels=ds.labels)
        n_max = st.number_input("Cases scored for uncertainty (most suspicious first)", min_value=1,
                                max_value=max(1, len(ds)), value=min(len(ds), 200), key=state.Loop.SIG_MAX)
        if st.button("Score the queue with these models", key=state.Loop.SIG_BTN, disabled=not models):
            with guard("Scoring the queue"):
                _compute_signals(ds, list(models), int(n_max))
                st.rerun()


def _compute_signals(ds: Dataset, models: list[str], n_max: int) -> None:
    from engine.curation.signals import model_disagreement, save_signals, tta_uncertainty
    from engine.evaluation import EvalConfig, evaluate
    from ui.loaders import load_predictor
    from ui.widgets import streamlit_progress

    labelled = [c.case_id for c in ds.cases if c.labelled]
    out: dict[str, Any] = {"models": models}
    progress, bar = streamlit_progress("Scoring…")
    if len(models) >= 2 and labelled:
        res = {m: evaluate(load_predictor(m, gate=None), ds, EvalConfig(sweep=False), case_ids=labelled,
                           progress=progress) for m in models}
        out["disagreement"] = model_disagreement(ds, res)
    pred = load_predictor(models[0], gate=None)
    ids = [c.case_id for c in ds.cases][:n_max]
    out["uncertainty"] = tta_uncertainty(pred, ds, ids, progress=progress)
    bar.empty()
    save_signals(ds, out)


LOOP_PAGE = "pages/9_Correction_loop.py"


def loop_link(label: str = "Correction loop: retrain with the corrections, see what moved") -> None:
    """A link to the Correction loop page (from Train, Conflict review and the Mask editor)."""
    from ui.nav import page_link

    page_link(LOOP_PAGE, label, icon=":material/autorenew:")


def render_loop_page() -> None:
    """The Correction loop page: the corrected dataset as it stands, the live label-noise ceiling,
    Retrain with corrections and What moved, for the current dataset."""
    from engine.store import ReviewStore
    from ui.loaders import load_dataset
    from ui.nav import page_link
    from ui.review_view import latest_report

    if not state.current_dataset_path():
        st.info("Choose a dataset on Home first: the loop retrains a model on that dataset's corrections.",
                icon=":material/dataset:")
        return
    ds = load_dataset()
    if not ds.workdir:
        st.info("This dataset was opened without a workspace folder, so there are no stored decisions or "
                "corrections to retrain on.", icon=":material/info:")
        return
    st.markdown("**1. Correct** — decide conflicting pairs on *Conflict review* and fix masks in the *Mask "
                "editor*. **2. Retrain** — fine-tune a model on the corrected dataset with the same held-out "
                "cases. **3. What moved** — compare the two models on those held-out cases, on the original and "
                "on the corrected ground truth.")
    c = st.columns(2)
    with c[0]:
        page_link("pages/6_Conflict_review.py", "Conflict review", icon=":material/balance:")
    with c[1]:
        page_link("pages/7_Mask_editor.py", "Mask editor", icon=":material/edit:")
    report = latest_report(ds)
    with ReviewStore.for_dataset(ds) as store:
        live_panel(ds, store, report)
        loop_section(ds, store, report, "page", expander=False)
