"""Streamlit glue of the Mask editor page (pages/7_Mask_editor.py).

Correct a case's mask by hand and save it as a new *version* in the dataset's review store
(:class:`engine.store.ReviewStore`; the dataset is never modified):

- **Canvas** (streamlit-drawable-canvas, imported lazily: it only works under ``streamlit
  run``): brush, eraser, polygon and fill tools per class, drawn over a zoomable window of
  the image with the current mask. Every applied stroke batch becomes a new entry of an
  undo/redo stack (:class:`engine.curation.EditStack`) in an :class:`engine.curation.EditSession`,
  kept per case in the session, so switching cases never loses unsaved work. Strokes → pixels:
  :mod:`engine.curation.canvas` and :mod:`engine.curation.masks`.
- **Without the canvas** (always available, also where the canvas cannot load): fill the
  region at a pixel, fill holes, empty the mask.
- **Save** creates version N+1 with author, time and note. The store checks the version the
  edit started from (:meth:`engine.curation.EditSession.save`): when someone saved meanwhile, the
  page says who and when and offers
  *view theirs*, *save mine on top* and *discard mine* — nothing is silently overwritten.
- **History** of versions with a diff against the previous one and **revert**; per-case
  **review state** buttons; a **queue** of cases needing review (suspicion score,
  :func:`engine.curation.case_queue`); **export** of the corrected dataset
  (:func:`engine.curation.export_corrected`).
- **Label-error finder** (:mod:`engine.curation.suspects`): :func:`finder_panel` runs
  :func:`engine.curation.crossfit.honest_probabilities` and
  :func:`engine.curation.suspects.find_suspects` exactly as ``python -m engine suspects`` does
  (cross-fitting as a background job with progress); the dataset's latest report then ranks the
  queue, filters it by suspect type (:func:`suspect_type_filter`), and explains the case on
  screen (:func:`suspect_info`) with its disagreement map (:func:`suspect_map_panel`,
  :func:`disagreement_rgb`; the Dataset browser shows the same).

Other pages open a case here by setting ``st.session_state[ui.state.Shared.BROWSER_CASE]``.
"""

from __future__ import annotations

import datetime as _dt
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from engine.curation import EditSession, version_mask
from ui import loop_view, state
from ui.loaders import case_image, dataset_key
from ui.timefmt import local_time

if TYPE_CHECKING:
    import pandas as pd

    from engine.curation.canvas import View
    from engine.curation.crossfit import CrossFitConfig
    from engine.curation.suspects import Suspect, SuspectReport
    from engine.datasets import Dataset
    from engine.evaluation import EvalResult
    from engine.store import ReviewStore

#: The review queue: ``(case id, score, reasons)``, most suspicious first (engine.curation.case_queue).
Queue = list[tuple[str, float, list[str]]]

PAGE = "pages/7_Mask_editor.py"

FLASH_SECONDS = 120.0

TOOLS = {"Brush": "freedraw", "Eraser": "freedraw", "Polygon": "polygon", "Fill": "point"}
TOOL_HELP = ("**Brush** paints the chosen class · **Eraser** paints background · **Polygon**: click the "
             "corners, then the first corner again to close and fill it · **Fill**: click inside a region to "
             "flood-fill it (the connected pixels of the same class) with the chosen class.")
ZOOMS = [1, 2, 4, 8, 16]
CANVAS_WIDTHS = [400, 500, 600, 800, 1000]
DEFAULT_CANVAS_W = 600
PREDICTION = "Model prediction"
#: Cross-fit fold choices of the label-error finder (0 = the chosen models only).
FINDER_FOLDS = [0, 2, 3, 4, 5, 10]
FINDER_REFRESH_SECONDS = 2.0
#: Colours of the disagreement map (:func:`disagreement_rgb`), alpha ∝ the map's value.
MAP_COLOURS: dict[str, tuple[int, int, int]] = {
    "label has it, the model rejects it": (255, 0, 255),
    "the model finds it, the label misses it": (255, 215, 0),
}


# ------------------------------------------------------------------------------------------ helpers

def _flash(kind: str, text: str) -> None:
    """A message about the last action, shown until the next edit or case change (at most
    FLASH_SECONDS): the canvas' remount right after an action causes an extra rerun."""
    case = st.session_state.get(state.Editor.CASE)
    st.session_state.setdefault(state.Editor.FLASH, []).append((kind, text, time.monotonic(), case))


def _clear_flash() -> None:
    st.session_state.pop(state.Editor.FLASH, None)


def _show_flash() -> None:
    now, case = time.monotonic(), st.session_state.get(state.Editor.CASE)
    keep = [f for f in st.session_state.get(state.Editor.FLASH, []) if now - f[2] < FLASH_SECONDS and f[3] == case]
    st.session_state[state.Editor.FLASH] = keep
    for kind, text, _, _ in keep:
        {"success": st.success, "warning": st.warning, "error": st.error}.get(kind, st.info)(text)


def author() -> str:
    """Who saves: the signed-in user (team mode), else the name typed in the sidebar (demo)."""
    from ui import auth

    return auth.author()


def session_for(ds: Dataset, store: ReviewStore, case_id: str) -> EditSession:
    """This browser session's editing state of ``case_id`` (created from the newest version)."""
    sessions: dict = st.session_state.setdefault(state.Editor.SESSIONS, {})
    key = (dataset_key(ds), case_id)
    sess = sessions.get(key)
    if sess is None:
        sess = EditSession.start(ds, store, case_id)
        sessions[key] = sess
    return sess


def replace_session(ds: Dataset, store: ReviewStore, sess: EditSession, mask: np.ndarray | None = None,
                    source: str | None = None) -> EditSession:
    """Restart editing the case (from the newest version, or ``mask``) and keep the new session."""
    new = sess.restart(ds, store, mask, source)
    st.session_state.setdefault(state.Editor.SESSIONS, {})[(dataset_key(ds), sess.case_id)] = new
    return new


# ------------------------------------------------------------------------------------------ case choice

def _evaluation_for_queue(ds: Dataset) -> tuple[EvalResult | None, str | None]:
    """The newest evaluation of the current model on ``ds`` (else of any model): (EvalResult, label)."""
    from ui.caches import cached_eval, evaluations

    evs = evaluations(ds)
    if not evs:
        return None, None
    model = state.current_model()
    pick = next((e for e in evs if e["model"] == model), evs[0])
    return cached_eval(pick["folder"]), pick.get("label") or Path(pick["folder"]).name


def review_queue_for(ds: Dataset, store: ReviewStore) -> tuple[Queue, dict[str, Any]]:
    """:func:`engine.curation.case_queue` from the latest conflicts report, evaluation, saved model
    signals and label-error finder report (whose score then replaces the evaluation's Dice and the
    flip-TTA uncertainty). ``info``: ``evaluation`` (label or None), ``conflicts`` (bool),
    ``suspects`` (the :class:`engine.curation.suspects.SuspectReport` or None)."""
    from engine.curation import case_queue
    from ui.caches import conflict_pairs

    ev, ev_label = _evaluation_for_queue(ds)
    pairs = conflict_pairs(ds)
    report = latest_suspects(ds)
    q = case_queue(ds, store, pairs, ev, suspects=report, **loop_view.queue_signals(ds))  # + saved model signals
    return q, {"evaluation": ev_label, "conflicts": pairs is not None, "suspects": report}


# ------------------------------------------------------------------------------------------ label-error finder

@st.cache_data(show_spinner=False, max_entries=4)
def _latest_suspects(path: str, stamp: tuple[int, int], _ds: Dataset) -> SuspectReport | None:
    from engine.curation.suspects import load_latest_suspects

    return load_latest_suspects(_ds)


def latest_suspects(ds: Dataset) -> SuspectReport | None:
    """The dataset's latest label-error finder report
    (:func:`engine.curation.suspects.load_latest_suspects`), re-read only when its file changed."""
    from engine.curation.suspects import LATEST, suspects_folder
    from engine.fsutil import file_stamp

    path = suspects_folder(ds) / LATEST
    try:
        stamp = file_stamp(path)
    except OSError:
        return None
    return _latest_suspects(str(path), stamp, ds)


def suspect_types_of(queue: Queue, report: SuspectReport | None) -> dict[str, str]:
    """``{case_id: suspect type}`` of the queue's cases the report judged."""
    if report is None:
        return {}
    types = {s.case_id: s.type for s in report.cases}
    return {c: types[c] for c, _, _ in queue if c in types}


def suspect_type_filter(queue: Queue, report: SuspectReport | None) -> Queue:
    """A multiselect of the suspect types (with the number of queued cases of each) restricting the
    queue ("Next case needing review" and the queue table) to those types; the queue unchanged
    without a report or a choice."""
    from engine.curation.suspects import SUSPECT_TYPES

    if report is None:
        return queue
    types = suspect_types_of(queue, report)
    counts: dict[str, int] = {t: 0 for t in SUSPECT_TYPES}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    chosen = st.multiselect("Only suspects of type", list(SUSPECT_TYPES), key=state.Editor.SUSPECT_TYPES,
                            format_func=lambda t: f"{t} ({counts.get(t, 0)})", placeholder="any type",
                            help="restricts the review queue and “Next case needing review” to the cases the "
                                 "label-error finder typed so (counts: cases still in the queue)")
    if not chosen:
        return queue
    return [q for q in queue if types.get(q[0]) in set(chosen)]


def _plain(text: str) -> str:
    """``text`` shown literally in Markdown (class or model names with ``_``, ``*``, ``$`` or ``~``)."""
    for ch in ("\\", "_", "*", "$", "~", "`"):
        text = text.replace(ch, "\\" + ch)
    return text


def _judged_label(ds: Dataset, case_id: str) -> np.ndarray | None:
    """The dataset's mask of ``case_id`` as :func:`find_suspects` reads it (None when unreadable)."""
    from engine.errors import WorkbenchError

    try:
        return np.minimum(ds.load_mask(case_id), max(ds.num_classes - 1, 1)).astype(np.uint8)
    except WorkbenchError:
        return None


def suspect_info(report: SuspectReport | None, case_id: str, on_screen: np.ndarray | None = None) -> Suspect | None:
    """The finder's verdict on ``case_id``: type, score, rank, provenance and reasons (a short block);
    says when the report did not judge the case or judged another version of its mask than
    ``on_screen`` (uint8 (H,W)). Returns the :class:`Suspect` (None: nothing shown or not judged)."""
    if report is None:
        return None
    s = report.get(case_id)
    if s is None:
        st.caption("Label-error finder: this case is not in the latest report (unlabelled, unreadable or added "
                   "since it ran).")
        return None
    st.markdown(f"**Label-error finder:** `{s.type}` · score **{s.score:.2f}** · rank {s.rank} of "
                f"{len(report.cases)}")
    st.markdown("\n".join(f"- {_plain(r)}" for r in s.reasons) if s.reasons else "- (no reason given)")
    st.caption(f"Judged by: {_plain(s.provenance)}" + ("" if s.honest else " — **not honest**: the model trained "
                                                       "on this case, so a wrong label may look right to it"))
    if on_screen is not None and s.mask_digest:
        from engine.curation.crossfit import mask_digest

        if mask_digest(np.asarray(on_screen, np.uint8)) != s.mask_digest:
            st.caption("The mask on screen is not the one the finder judged (edited or a newer version): run the "
                       "finder again to judge it.")
    return s


def disagreement_rgb(img: np.ndarray, label: np.ndarray | None, dmap: np.ndarray, max_alpha: float = 0.85
                     ) -> np.ndarray:
    """The disagreement map over the image: magenta where the label has something the model rejects
    (map > 0 on the label's foreground), yellow where the label misses something (map > 0 on its
    background), opacity proportional to the map's value; the label's outline on top.

    Args:
        img: image (C,H,W)/(H,W) float [0,1] or uint8.
        label: uint8 (H,W) label map the finder judged (None: every lit pixel counts as missed).
        dmap: uint8 (H,W) :func:`engine.curation.suspects.load_disagreement_map` (0 agrees .. 255).
        max_alpha: opacity at 255.

    Returns:
        uint8 (H,W,3).

    Example:
        >>> lab = np.zeros((5, 5), np.uint8); lab[1:4, 1:4] = 1
        >>> rgb = disagreement_rgb(np.zeros((5, 5)), lab, np.full((5, 5), 255, np.uint8))
        >>> rgb[2, 2].tolist(), rgb[0, 0].tolist()  # inside the label: magenta; outside: yellow
        ([217, 0, 217], [217, 183, 0])
    """
    from engine.visualize import overlay, to_rgb_uint8

    base = to_rgb_uint8(img)
    h, w = base.shape[:2]
    m = np.asarray(dmap, np.uint8)
    if m.shape != (h, w):
        from PIL import Image

        m = np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST), np.uint8)
    lab = None if label is None or np.asarray(label).shape != (h, w) else np.asarray(label)
    fg = lab > 0 if lab is not None else np.zeros((h, w), bool)
    colours = list(MAP_COLOURS.values())
    col = np.where(fg[..., None], np.array(colours[0], np.float32), np.array(colours[1], np.float32))
    a = (m.astype(np.float32) / 255.0 * float(np.clip(max_alpha, 0.0, 1.0)))[..., None]
    out = base.astype(np.float32) * (1.0 - a) + col * a
    rgb = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if lab is not None:
        rgb = overlay(rgb, lab, alpha=0.0, contour=True)  # where the label's boundary is
    return rgb


def suspect_map_panel(ds: Dataset, report: SuspectReport | None, case_id: str, img: np.ndarray, key: str) -> None:
    """The toggle "Show where the label disagrees" and, when on, the disagreement map of ``case_id``
    over its image (:func:`disagreement_rgb`) with its legend; nothing when the report lacks the case."""
    from engine.curation.suspects import load_disagreement_map
    from engine.errors import WorkbenchError
    from ui.widgets import colour_legend

    s = report.get(case_id) if report is not None else None
    if report is None or s is None:
        return
    if not st.toggle("Show where the label disagrees", key=key,
                     help="the label-error finder's per-pixel map: where a confident model that did not train on "
                          "this case rejects the label (magenta) or finds what it misses (yellow)"):
        return
    try:
        dmap = load_disagreement_map(report, case_id)
    except WorkbenchError as exc:
        st.warning(f"No disagreement map: {exc}", icon="⚠️")
        return
    lit = int(np.count_nonzero(dmap))
    st.image(disagreement_rgb(img, _judged_label(ds, case_id), dmap), width="stretch",
             caption=f"where the label disagrees ({s.type}, score {s.score:.2f}) · {lit:,} px lit")
    colour_legend(MAP_COLOURS)


def finder_crossfit_config(weights: list[str], folds: int, device: str) -> CrossFitConfig | None:
    """The cross-fit ``python -m engine suspects DATASET [--weights W ...] --folds K --device D`` uses with
    its other flags at their defaults (None for ``folds`` 0: the chosen models only): the first model's
    architecture, preprocessing, augmentation and epochs (:meth:`CrossFitConfig.from_card`), else the
    default small U-Net. Same config, same cached fold models as the command line."""
    from engine.curation.crossfit import CrossFitConfig

    if not folds:
        return None
    if int(folds) < 2:
        from engine.errors import ConfigError

        raise ConfigError(f"cross-fitting needs at least 2 folds, got {folds}", hint="choose 0 or 2 folds or more")
    if weights:
        from engine.checkpoint import read_card, resolve_weights

        card = read_card(resolve_weights(weights[0]))
        return CrossFitConfig.from_card(card, int(folds), epochs=None, size=None, seed=0, device=device)
    return CrossFitConfig(k=int(folds), seed=0, device=device)


def run_finder(ds: Dataset, weights: list[str], crossfit: CrossFitConfig | None, device: str) -> SuspectReport:
    """Honest probabilities, then :func:`find_suspects`, called as ``python -m engine suspects`` calls them
    (no TTA, prior 0.1, caches on), with a progress bar each; the engine saves the report as the dataset's
    latest (what the queue, this page and the Dataset browser read)."""
    from engine.curation.crossfit import honest_probabilities
    from engine.curation.suspects import SuspectConfig, find_suspects
    from ui.widgets import streamlit_progress

    t0 = time.perf_counter()
    progress, bar = streamlit_progress("Predicting the labelled cases with the judging models…")
    probs = honest_probabilities(ds, list(weights), crossfit_config=crossfit, tta="none", device=device,
                                 use_cache=True, progress=progress)
    bar.empty()
    progress, bar = streamlit_progress("Judging the labels…")
    rep = find_suspects(ds, probs, SuspectConfig(prior=0.1), use_cache=True, progress=progress)
    bar.empty()
    stale = len(probs.crossfit.stale_masks) if probs.crossfit is not None else 0
    st.session_state[state.Editor.FINDER_RESULT] = {
        "dataset": dataset_key(ds), "n": len(rep.cases), "by_type": dict(rep.stats.get("by_type") or {}),
        "n_not_honest": int(rep.stats.get("n_not_honest") or 0), "n_computed": int(rep.stats.get("n_computed") or 0),
        "seconds": round(time.perf_counter() - t0, 1), "stale": stale,
        "judges": [str(x.get("name")) for x in probs.describe().get("sources") or []]}
    return rep


def _start_finder(ds: Dataset, weights: list[str], folds: int) -> None:
    """Judge now, or first start the cross-fit as a background job (judged when it finishes)."""
    from engine.curation.crossfit import crossfit_status, load_crossfit, start_crossfit_job

    device = state.current_device()
    cfg = finder_crossfit_config(weights, folds, device)
    st.session_state[state.Editor.FINDER_OPEN] = True
    st.session_state.pop(state.Editor.FINDER_RESULT, None)
    if cfg is not None and load_crossfit(ds, cfg) is None:
        status = crossfit_status(ds, cfg)
        if status.get("active"):  # already running (another session or tab): follow it
            run_dir = str(status.get("run_dir"))
        else:
            job = start_crossfit_job(str(state.current_dataset_path()), cfg,
                                     options=state.get(state.Shared.DATASET_OPTIONS) or {}, workspace=state.workspace())
            run_dir = str(job.run_dir)
        st.session_state[state.Editor.FINDER_JOB] = {"run_dir": run_dir, "dataset": dataset_key(ds),
                                                     "weights": list(weights), "config": cfg.to_dict(),
                                                     "what": cfg.describe(), "k": cfg.k, "pending": True}
        st.session_state[state.Editor.FINDER_JOB_ACTIVE] = True
        st.rerun()  # the button shows as busy and the job's progress appears
    run_finder(ds, weights, cfg, device)
    st.rerun()


def _finder_job_fragment(ds_key: str) -> None:
    """Progress and cancel of the cross-fit job (refreshes itself while it runs; reruns the page when it
    ends, which then judges the labels)."""
    from engine.jobs import cancel, job_status

    job = st.session_state.get(state.Editor.FINDER_JOB)
    if not job or job.get("dataset") != ds_key:
        return
    info = job_status(Path(job["run_dir"]), log_lines=0)
    was_active = bool(st.session_state.get(state.Editor.FINDER_JOB_ACTIVE))
    st.session_state[state.Editor.FINDER_JOB_ACTIVE] = info["active"]
    if was_active and not info["active"]:
        st.rerun(scope="app")
    fold = f"fold {info['epoch']}/{info['epochs']}" if info.get("epochs") else "starting"
    text = f"Cross-fitting {job['k']} fold models ({job['what']}): {fold}" + (
        f" · {info['message']}" if info.get("message") else "")
    st.progress(float(info.get("fraction") or 0.0), text=text)
    if info["active"]:
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        if info.get("cancel_requested"):
            c1.caption("Cancel requested…")
        elif c1.button("Cancel cross-fitting", key=state.Editor.FINDER_CANCEL):
            cancel(Path(job["run_dir"]), wait=False)
        c2.caption("Runs in the background (you can keep editing; finished folds are kept if it stops). The labels "
                   "are judged when the last fold model is trained.")


def _finder_job_status(ds: Dataset) -> dict[str, Any] | None:
    """:func:`engine.jobs.job_status` of this session's cross-fit job on ``ds`` (None: no such job)."""
    from engine.jobs import job_status

    job = st.session_state.get(state.Editor.FINDER_JOB)
    if not job or job.get("dataset") != dataset_key(ds):
        return None
    return job_status(Path(job["run_dir"]), log_lines=0)


def _finder_job(ds: Dataset, info: dict[str, Any] | None) -> None:
    """The cross-fit job of this dataset (``info``: its status): judge when it has finished, follow it
    while it runs, say why it stopped otherwise."""
    from engine.curation.crossfit import CrossFitConfig, load_crossfit
    from ui.widgets import guard

    job = st.session_state.get(state.Editor.FINDER_JOB)
    if info is None or not job:
        return
    cfg = CrossFitConfig.from_dict(job["config"])
    if job.get("pending") and not info["active"] and load_crossfit(ds, cfg) is not None:
        job["pending"] = False
        with guard("Finding label errors"):
            run_finder(ds, list(job["weights"]), cfg, state.current_device())
            st.rerun()
        return
    if info["active"]:
        st.fragment(_finder_job_fragment, run_every=FINDER_REFRESH_SECONDS)(dataset_key(ds))
    elif job.get("pending"):
        job["pending"] = False
        why = info.get("error") or info.get("message") or info["state"]
        st.error(f"Cross-fitting {info['state']}: {why}. Finished folds are kept: press *Find label errors* to go "
                 "on.", icon="⚠️")


def finder_panel(ds: Dataset, report: SuspectReport | None) -> None:
    """The label-error finder: models that judge, cross-fit folds, *Find label errors*, the job's progress
    and what the latest report holds."""
    from ui.widgets import guard, model_picker

    with st.expander("Label-error finder: which masks are wrong, how and where",
                     expanded=bool(st.session_state.get(state.Editor.FINDER_OPEN))):
        st.caption("Judges every labelled case with a model that did not train on it (a shipped model whose card "
                   "shows the case was held out, or k cross-fitted fold models), combines per-pixel, region, "
                   "boundary, shift and empty-mask evidence with a score calibrated on planted errors of this "
                   "dataset, and ranks the queue by it. Same result as `python -m engine suspects DATASET "
                   "--weights NAME [--folds K]`.")
        if report is not None:
            by_type = ", ".join(f"{t} {n}" for t, n in (report.stats.get("by_type") or {}).items() if n)
            judges = ", ".join(str(x.get("name")) for x in (report.probabilities.get("sources") or [])[:4])
            n_bad = int(report.stats.get("n_not_honest") or 0)
            st.caption(f"Latest report ({report.created or 'undated'}): {len(report.cases):,} case(s) judged"
                       + (f" by {judges}" if judges else "") + (f"; types: {by_type}" if by_type else "")
                       + (f"; {n_bad} judged by a model that trained on them (not honest)" if n_bad else "") + ".")
        c = st.columns([3, 2, 2], vertical_alignment="bottom")
        with c[0]:
            cur = state.current_model()
            models = model_picker("Models that judge the labels", key=state.Editor.FINDER_MODELS, multi=True,
                                  max_selections=3, dataset_labels=ds.labels, default=[cur] if cur else None)
        folds = c[1].selectbox("Cross-fit folds", FINDER_FOLDS, key=state.Editor.FINDER_FOLDS,
                               format_func=lambda k: "0 (the models as shipped)" if k == 0 else f"{k} folds",
                               help="0: each case is judged by the chosen models, honestly only where their card "
                                    "shows the case was held out. k: train k models of the first model's "
                                    "architecture (none chosen: a small U-Net) on grouped folds of this dataset, "
                                    "in the background; every case is then judged by the one that never saw it.")
        info = _finder_job_status(ds)
        busy = bool(info and info["active"])
        st.session_state[state.Editor.FINDER_JOB_ACTIVE] = busy
        allowed = _may("annotator")  # team mode: viewers look, they start no work on the server
        if c[2].button("Find label errors", key=state.Editor.FINDER_RUN, type="primary", icon=":material/troubleshoot:",
                       disabled=busy or not allowed or not (models or folds),
                       help="choose a model or some cross-fit folds" if not (models or folds) else None):
            with guard("Finding label errors"):
                _start_finder(ds, list(models or []), int(folds))
        if not allowed:
            from ui import auth

            auth.role_note("annotator", "Running the label-error finder")
        _finder_job(ds, info)
        res = st.session_state.get(state.Editor.FINDER_RESULT)
        if res and res.get("dataset") == dataset_key(ds):
            types = ", ".join(f"{t} {n}" for t, n in res["by_type"].items() if n)
            st.success(f"Judged {res['n']:,} labelled case(s) in {res['seconds']:.0f} s with "
                       f"{', '.join(res['judges']) or 'the chosen models'} ({res['n_computed']:,} computed, the rest "
                       f"from the cache); types: {types or 'none'}. The review queue now ranks by it."
                       + (f" {res['n_not_honest']} case(s) were judged by a model that trained on them."
                          if res["n_not_honest"] else "")
                       + (f" {res['stale']} mask(s) changed since the fold models trained." if res["stale"] else ""),
                       icon="✅")


def _apply_deep_link(ds: Dataset) -> None:
    from ui import context

    context.warn_unknown_case(ds)
    link = state.get(state.Shared.BROWSER_CASE)
    if link and link != st.session_state.get(state.Editor.LINK_CASE) and link in ds:
        st.session_state[state.Editor.CASE] = link
        st.session_state[state.Editor.LINK_CASE] = link


def _go(case_id: str) -> None:
    st.session_state[state.Editor.CASE] = case_id
    st.session_state[state.Editor.LINK_CASE] = case_id
    state.put(state.Shared.BROWSER_CASE, case_id)


def case_picker(ds: Dataset, store: ReviewStore, queue: Queue, queue_info: dict[str, Any]) -> str:
    from engine.curation import next_case

    ids = ds.case_ids
    if st.session_state.get(state.Editor.CASE) not in ids:
        st.session_state[state.Editor.CASE] = ids[0]
    cur = st.session_state[state.Editor.CASE]
    c = st.columns([3, 2], vertical_alignment="bottom")
    # plain ids as labels: labels that change (e.g. with the review state) would make Streamlit treat
    # the selectbox as a new widget and lose the choice
    c[0].selectbox(f"Case ({len(ids):,})", ids, key=state.Editor.CASE,
                   on_change=lambda: _go(st.session_state[state.Editor.CASE]))
    nxt = next_case(queue, cur)
    finder = queue_info.get("suspects") is not None
    c[1].button(f"Next case needing review ({len(queue)} in queue)", key=state.Editor.NEXT, icon=":material/skip_next:",
                disabled=nxt is None, on_click=_go, args=(nxt,), type="primary",
                help="most suspicious first: marked needs_fix, "
                     + ("the label-error finder's score" if finder else "low model Dice")
                     + ", conflicting near-duplicates; accepted and corrected cases are skipped")
    full: Queue = queue_info.get("all", queue)
    entry = next((q for q in full if q[0] == cur), None)
    if entry is not None:
        st.caption(f"Suspicion score **{entry[1]:.2f}**: " + "; ".join(entry[2]))
    if not queue and full:
        st.caption("No case of the chosen suspect type(s) is left in the queue: clear the type filter.")
    elif not queue and entry is None:
        if queue_info.get("evaluation") is None and not queue_info.get("conflicts") and not finder:
            st.caption("No review queue yet: run the label-error finder (below), evaluate a model (Dataset "
                       "browser or Metrics dashboard) or run the conflict search (Conflict review) to rank cases "
                       "by suspicion.")
        else:
            st.caption("The review queue is empty: every suspicious case is accepted or corrected.")
    state.put(state.Shared.BROWSER_CASE, st.session_state[state.Editor.CASE])
    st.session_state[state.Editor.LINK_CASE] = st.session_state[state.Editor.CASE]
    from ui import context

    context.publish(case=st.session_state[state.Editor.CASE])
    return st.session_state[state.Editor.CASE]


def author_input() -> str:
    """The author of saves (signed-in user; in the demo a typed name); "" when the role may not save."""
    from ui import auth

    if auth.signed_in():
        if not auth.can("annotator"):
            st.sidebar.caption("Viewers can look but not save: saving masks needs the annotator role.")
            return ""
        return author()
    if state.Editor.AUTHOR not in st.session_state:
        st.session_state[state.Editor.AUTHOR] = st.session_state.get(state.Shared.REVIEWER, "")
    who = st.sidebar.text_input("Your name", key=state.Editor.AUTHOR, placeholder="saved with every version and state",
                                help="recorded with each saved version, revert and review state")
    st.session_state[state.Shared.REVIEWER] = (who or "").strip()
    return author()


# ------------------------------------------------------------------------------------------ canvas

def canvas_component():
    """``st_canvas`` or the exception that prevented importing it (e.g. outside ``streamlit run``)."""
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception as exc:  # noqa: BLE001 - any import failure means: no canvas here
        return None, exc
    return st_canvas, None


def _class_options(ds: Dataset) -> list[int]:
    return [k for k in sorted(ds.labels) if k != 0] + [0]


def _class_label(ds: Dataset, k: int) -> str:
    return "background (erase)" if k == 0 else f"{k} · {ds.labels.get(k, str(k))}"


def tool_controls(ds: Dataset, img_hw: tuple[int, int]) -> dict[str, Any]:
    """Tool, class, brush size, zoom, pan and canvas-size widgets → settings dict (with the :class:`View`)."""
    from engine.curation import make_view

    h, w = img_hw
    c = st.columns([3, 2, 2, 2])
    tool = c[0].radio("Tool", list(TOOLS), horizontal=True, key=state.Editor.TOOL, help=TOOL_HELP)
    opts = _class_options(ds)
    if st.session_state.get(state.Editor.CLASS) not in opts:
        st.session_state[state.Editor.CLASS] = opts[0]
    cls = c[1].selectbox("Class", opts, key=state.Editor.CLASS, format_func=lambda k: _class_label(ds, k),
                         disabled=tool == "Eraser")
    size = c[2].slider("Brush size (image pixels)", 1, max(2, min(80, max(h, w) // 4)), min(6, max(h, w) // 4),
                       key=f"{state.Editor.BRUSH}_{h}x{w}", disabled=tool not in ("Brush", "Eraser"))
    c[3].toggle("Auto-apply strokes", value=True, key=state.Editor.AUTO_APPLY,
                help="apply each stroke as soon as it is drawn (off: draw several, then press Apply)")
    z = st.columns([2, 3, 3, 2])
    zoom = z[0].select_slider("Zoom", ZOOMS, value=1, key=state.Editor.ZOOM, format_func=lambda v: f"{v}×",
                              help="magnify a window of the image for small structures; strokes map back to "
                                   "full-resolution pixels exactly")
    cx, cy = w // 2, h // 2
    if zoom > 1:
        cx = z[1].slider("Window centre x (column)", 0, w - 1, w // 2, key=f"{state.Editor.PAN_X}_{w}")
        cy = z[2].slider("Window centre y (row)", 0, h - 1, h // 2, key=f"{state.Editor.PAN_Y}_{h}")
    width = z[3].selectbox("Canvas width (px)", CANVAS_WIDTHS, index=CANVAS_WIDTHS.index(DEFAULT_CANVAS_W),
                           key=state.Editor.CANVAS_WIDTH, help="screen size of the drawing area")
    view = make_view((h, w), zoom, (cy + 0.5, cx + 0.5), (int(width * 0.8), int(width)))
    return {"tool": tool, "cls": 0 if tool == "Eraser" else int(cls), "size": int(size), "view": view,
            "auto": bool(st.session_state.get(state.Editor.AUTO_APPLY, True))}


def _object_sig(obj: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def sync_canvas(sess: EditSession, objects: list[dict[str, Any]], applied: list[tuple[str, bool]],
                settings: dict[str, Any], palette: dict) -> tuple[list[tuple[str, bool]], bool]:
    """Make the edit stack follow the canvas: each canvas object (stroke, polygon, fill click, in drawing
    order) is one edit. ``applied`` lists ``(object signature, pushed an edit)`` for what is already on
    the stack; objects the canvas no longer has or has changed (its own undo, reset or edit toggle)
    are undone, objects it has that are not applied yet are applied. The canvas is never remounted for
    this, so strokes drawn while the page reruns stay on it and arrive with its next update: no stroke
    is lost. Returns the new ``applied`` list and whether the mask changed."""
    from engine.curation import apply_objects, click_points, flood_fill

    sigs = [_object_sig(o) for o in objects]
    keep = 0
    while keep < min(len(sigs), len(applied)) and sigs[keep] == applied[keep][0]:
        keep += 1
    changed = False
    for _, pushed in reversed(applied[keep:]):
        if pushed:
            changed = sess.stack.undo() or changed
    out = list(applied[:keep])
    view = settings["view"]
    for obj, sig in zip(objects[keep:], sigs[keep:]):
        mask = sess.stack.current
        if str(obj.get("type", "")).lower() == "circle":  # a fill-tool click
            for u, v in click_points([obj]):
                r, c = view.canvas_to_pixel(u, v)
                mask = flood_fill(mask, r, c, settings["cls"])
        else:
            mask = apply_objects(mask, [obj], view, palette)
        pushed = sess.stack.push(mask)
        out.append((sig, pushed))
        changed = changed or pushed
    if changed:
        _clear_flash()
    return out, changed


def canvas_panel(ds: Dataset, sess: EditSession, img: np.ndarray, settings: dict[str, Any]) -> None:
    """The drawing canvas (or a message saying why there is none)."""
    from PIL import Image

    from engine.curation import ERASER_COLOUR, drawing_palette, hex_colour, render_view

    st_canvas, err = canvas_component()
    if st_canvas is None:
        st.warning("The drawing canvas is not available here "
                   f"({type(err).__name__}: {str(err)[:200]}). It needs the app running under "
                   "`streamlit run app.py` with `streamlit-drawable-canvas` installed. "
                   "The tools under **Edit without the canvas** still work.", icon="🖌️")
        return
    view = settings["view"]
    palette = drawing_palette(ds.labels)
    tool, cls = settings["tool"], settings["cls"]
    colour = ERASER_COLOUR if (tool == "Eraser" or cls == 0) else palette.get(cls, (255, 255, 255))
    mode = TOOLS[tool]
    stroke_width = max(1, int(round(settings["size"] * view.scale))) if tool in ("Brush", "Eraser") else 1
    key = f"editor_canvas_{zlib.crc32(f'{dataset_key(ds)}|{sess.case_id}'.encode()):08x}_{sess.nonce}_" + \
          "_".join(str(v) for v in view.to_dict().values())
    # the background is the mask when this canvas was mounted; strokes applied since stay on the canvas
    # as drawn objects (same colours), so the canvas never has to be remounted while someone draws
    cached = st.session_state.get(state.Editor.CANVAS_BG)
    if not cached or cached[0] != key:
        cached = (key, Image.fromarray(render_view(img, sess.stack.current, view)))
        st.session_state[state.Editor.CANVAS_BG] = cached
    result = st_canvas(fill_color=hex_colour(colour), stroke_width=stroke_width, stroke_color=hex_colour(colour),
                       background_image=cached[1], background_image_fit="stretch", update_streamlit=True,
                       height=view.canvas_h, width=view.canvas_w, drawing_mode=mode, point_display_radius=3,
                       key=key)
    objects = list((result.json_data or {}).get("objects") or [])
    seen = st.session_state.get(state.Editor.CANVAS_APPLIED)
    applied: list[tuple[str, bool]] = list(seen[1]) if seen and seen[0] == key else []
    pending = [_object_sig(o) for o in objects] != [a[0] for a in applied]
    c = st.columns([2, 3])
    apply_now = c[0].button("Apply strokes", key=state.Editor.APPLY, icon=":material/check:",
                            disabled=settings["auto"] or not pending,
                            help="with auto-apply off, strokes wait on the canvas until you apply them")
    if pending and (settings["auto"] or apply_now):
        applied, changed = sync_canvas(sess, objects, applied, settings, palette)
        st.session_state[state.Editor.CANVAS_APPLIED] = (key, applied)
        if changed:
            st.rerun()
    zoom_note = (f"window rows {view.y0}–{view.y0 + view.height - 1}, columns {view.x0}–{view.x0 + view.width - 1}"
                 f" at {view.scale:.2f} screen px per image px")
    c[1].caption(f"Canvas {view.canvas_w}×{view.canvas_h}: {zoom_note}.")


def _signed_in() -> bool:
    from ui import auth

    return auth.signed_in()


def _may(role: str) -> bool:
    from ui import auth

    return auth.can(role)


def claim_panel(ds: Dataset, store: ReviewStore, sess: EditSession) -> None:
    """Claim the case for this user while it is open here (who is editing it now), shown to everyone.

    Claimed on open and renewed on every rerun (and every minute while the page is open); released
    on save (until you edit again), on switching case, on leaving the editor and on sign-out."""
    from engine.errors import ClaimHeld
    from ui import auth

    released = st.session_state.get(state.Editor.RELEASED)
    if released is not None and (released != sess.case_id or sess.has_changes):
        st.session_state.pop(state.Editor.RELEASED, None)
        released = None
    if released == sess.case_id:
        other = store.claim_for(sess.case_id)
        if other is not None and other.user != author():
            st.warning(f"**{other.user} is editing this case now** (lease ends in {int(other.seconds_left)} s).",
                       icon=":material/edit_note:")
        return
    got = auth.claim_case(store, sess.case_id)
    if isinstance(got, ClaimHeld):
        st.warning(f"**{got.holder} is editing this case now** (lease ends in "
                   f"{max(0, int(got.expires - time.time()))} s). You can look and edit, but if they save first "
                   "your save will ask you to merge.", icon=":material/edit_note:")
    elif got is not None:
        st.caption(":material/lock: You are editing this case: others see that you hold it "
                   "(lease renewed while the editor is open).")
        _renew_claim(store.url.render_as_string(hide_password=False), store.dataset_key, sess.case_id, got.user)


@st.fragment(run_every=60)
def _renew_claim(url: str, ds_key: str, case_id: str, who: str) -> None:
    """Renew the lease every minute while the editor shows the case (the lease is 5 minutes)."""
    from engine.store import ReviewStore

    if tuple(state.get(state.Shared.CLAIMED) or ()) != (url, ds_key, case_id):
        return
    try:
        with ReviewStore(url, dataset_key=ds_key) as s:
            s.claim(case_id, who)
    except Exception:  # noqa: BLE001 - someone else took it after a lapse, or the store is away: shown next run
        pass


def history_buttons(sess: EditSession) -> None:
    def undo() -> None:
        _clear_flash()
        if sess.stack.undo():
            sess.nonce += 1

    def redo() -> None:
        _clear_flash()
        if sess.stack.redo():
            sess.nonce += 1

    def reset() -> None:
        _clear_flash()
        sess.stack.reset()
        sess.nonce += 1

    c = st.columns(3)
    c[0].button("Undo", key=state.Editor.UNDO, icon=":material/undo:", on_click=undo, disabled=not sess.stack.can_undo,
                width="stretch")
    c[1].button("Redo", key=state.Editor.REDO, icon=":material/redo:", on_click=redo, disabled=not sess.stack.can_redo,
                width="stretch")
    c[2].button("Start over", key=state.Editor.RESET, icon=":material/restart_alt:", on_click=reset,
                disabled=not sess.stack.dirty, width="stretch", help=f"back to {sess.source}")


def manual_tools(ds: Dataset, sess: EditSession, img_hw: tuple[int, int]) -> None:
    """Edits without the canvas: flood fill at a pixel, fill holes, empty the mask."""
    from engine.curation import fill_holes, flood_fill

    h, w = img_hw
    with st.expander("Edit without the canvas", expanded=False):
        c = st.columns([1, 1, 2])
        x = c[0].number_input("x (column)", 0, w - 1, w // 2, key=f"{state.Editor.FILL_X}_{w}")
        y = c[1].number_input("y (row)", 0, h - 1, h // 2, key=f"{state.Editor.FILL_Y}_{h}")
        eraser = st.session_state.get(state.Editor.TOOL) == "Eraser"
        cls = 0 if eraser else int(st.session_state.get(state.Editor.CLASS, 1) or 0)
        c[2].write("")
        if c[2].button(f"Fill region at (x, y) with {_class_label(ds, cls)}", key=state.Editor.FILL_AT):
            _clear_flash()
            if sess.stack.push(flood_fill(sess.stack.current, int(y), int(x), cls)):
                sess.nonce += 1
            st.rerun()
        d = st.columns(2)
        if d[0].button("Fill holes", key=state.Editor.FILL_HOLES, help="close holes inside every region, per class"):
            _clear_flash()
            if sess.stack.push(fill_holes(sess.stack.current)):
                sess.nonce += 1
            st.rerun()
        if d[1].button("Empty the mask", key=state.Editor.EMPTY, help="everything becomes background"):
            _clear_flash()
            if sess.stack.push(np.zeros(img_hw, np.uint8)):
                sess.nonce += 1
            st.rerun()


# ------------------------------------------------------------------------------------------ right column

def preview_panel(ds: Dataset, sess: EditSession, img: np.ndarray, view: View) -> None:
    from engine.curation import DIFF_COLOURS, diff_image, window_outline
    from engine.visualize import overlay
    from ui.widgets import colour_legend, legend

    cur = sess.stack.current
    rgb = overlay(img, cur)
    if view is not None and view.zoom > 1:
        rgb = window_outline(rgb, view)
    st.image(rgb, caption=f"current mask · {int(np.count_nonzero(cur)):,} px · from {sess.source}", width="stretch")
    legend(ds.labels)
    if sess.stack.dirty:
        d_rgb, counts = diff_image(sess.stack.start, cur, img)
        st.image(d_rgb, caption="your edits so far (vs the start)", width="stretch")
        colour_legend(DIFF_COLOURS, {k: v for k, v in counts.items() if k in DIFF_COLOURS and v})
    st.caption(f"{sess.stack.position} edit(s) applied · {sess.stack.n_redo} to redo")


def conflict_panel(ds: Dataset, store: ReviewStore, sess: EditSession, img: np.ndarray, who: str, note: str) -> None:
    """A save found a newer version by a colleague: show theirs, the diff, and three honest choices —
    keep theirs (drop my edits), save the union (both kept), or save mine replacing theirs."""
    from engine.curation import DIFF_COLOURS, diff_image, union_masks
    from engine.visualize import overlay
    from ui.widgets import colour_legend

    cf = sess.conflict
    assert cf is not None
    st.warning(f"**Version {cf['current']} was saved by {cf['author']} at {local_time(cf['created'])} while you were "
               f"editing** (you started from version {sess.base_version}). Nothing of yours is saved yet. Compare "
               "and choose:", icon="⚠️")
    theirs = version_mask(ds, store, sess.case_id, cf["current"])
    mine = sess.stack.current
    merged, clash = union_masks(theirs, mine)
    a, b = st.columns(2)
    a.image(overlay(img, theirs), caption=f"theirs: version {cf['current']} by {cf['author']} · "
            f"{int(np.count_nonzero(theirs)):,} px" + (f" · “{cf['note']}”" if cf.get("note") else ""),
            width="stretch")
    d_rgb, counts = diff_image(theirs, mine, img)
    b.image(d_rgb, caption="yours compared with theirs (added: only yours, removed: only theirs)", width="stretch")
    colour_legend(DIFF_COLOURS, {k: v for k, v in counts.items() if k in DIFF_COLOURS and v})
    n_new = cf["current"] + 1
    # full labels, one per row: never cut to "Vie… Sav… Disc…"
    union = st.button(f"Save the union of both as version {n_new} (keeps their and your regions)",
                      key=state.Editor.CONFLICT_UNION, icon=":material/join:", type="primary", disabled=not who,
                      width="stretch", help="every pixel either of you labelled stays labelled"
                      + (f"; {clash:,} px labelled with different classes take yours" if clash else ""))
    mine_btn = st.button(f"Save mine as version {n_new}, replacing {cf['author']}'s mask",
                         key=state.Editor.CONFLICT_MINE, icon=":material/save:", disabled=not who, width="stretch",
                         help=f"their regions that you do not have are removed from the current mask "
                              f"({counts.get('removed', 0):,} px); version {cf['current']} stays in the history")
    drop = st.button(f"Keep theirs (version {cf['current']}) and discard my edits", key=state.Editor.CONFLICT_DISCARD,
                     icon=":material/delete:", width="stretch")
    st.caption(f"Union: {int(np.count_nonzero(merged)):,} px labelled"
               + (f" ({clash:,} px where you chose different classes: yours kept)" if clash else "") + ".")
    if union or mine_btn:
        how = "union" if union else "mine"
        v = sess.resolve_conflict(ds, store, who, note, how)
        if v is not None:
            _after_save(sess, v, on_top_of=cf, how=how)
        st.rerun()
    if drop:
        replace_session(ds, store, sess)
        _flash("info", f"Your edits were discarded; now editing version {cf['current']} by {cf['author']}.")
        st.rerun()


def _after_save(sess: EditSession, version: int, on_top_of: dict | None = None, how: str = "") -> None:
    from ui import auth

    st.session_state[state.Editor.NOTE_CLEAR] = True
    auth.release_claim()  # saved: the case is free again until you edit it anew
    st.session_state[state.Editor.RELEASED] = sess.case_id
    extra = ""
    if on_top_of:
        extra = (f" — the union of your mask and version {on_top_of['current']} by {on_top_of['author']}"
                 if how == "union" else f", replacing version {on_top_of['current']} by {on_top_of['author']} "
                 "(still in the history)")
    _flash("success", f"Saved version {version}{extra}; the case is now marked corrected.")


def save_panel(ds: Dataset, store: ReviewStore, sess: EditSession, img: np.ndarray, who: str) -> None:
    if st.session_state.pop(state.Editor.NOTE_CLEAR, False):
        st.session_state[state.Editor.NOTE] = ""
    note = st.text_input("Note for this version", key=state.Editor.NOTE, placeholder="what you changed and why")
    latest = store.latest_mask_version(sess.case_id)
    if sess.conflict is None and latest != sess.base_version:
        mv = store.mask_version(sess.case_id, latest)
        if not sess.has_changes:
            # nothing of ours to lose: follow the newer version
            replace_session(ds, store, sess)
            _flash("info", f"Version {latest} was saved by {mv.author if mv else 'someone'} at "
                           f"{local_time(mv.created if mv else '')}; it is loaded now.")
            st.rerun()
        st.info(f"Version {latest} was saved by {mv.author if mv else 'someone'} at "
                f"{local_time(mv.created if mv else '')} since you started editing version {sess.base_version}. "
                "Saving will ask what to do.", icon="🔔")
    if sess.conflict is not None:
        conflict_panel(ds, store, sess, img, who, note)
        return
    changed = sess.has_changes
    if not who:
        st.caption("Saving needs the annotator role." if _signed_in() else "Enter your name in the sidebar to save.")
    if st.button(f"Save as version {sess.base_version + 1}", key=state.Editor.SAVE, icon=":material/save:",
                 type="primary", disabled=not (changed and who),
                 help="creates a new version (the original and older versions stay)"
                      if changed else "no changes from the version you started from"):
        v = sess.save(store, who, note.strip())
        if v is not None:
            _after_save(sess, v)
        st.rerun()


def state_panel(store: ReviewStore, case_id: str, who: str) -> None:
    from engine.store import CASE_STATES

    cs = store.case_states().get(case_id)
    cur = cs.state if cs else "unreviewed"
    st.markdown(f"Review state: **{cur}**" + (f" — {cs.reviewer}, {local_time(cs.ts)}" if cs else ""))
    labels = {"accepted": "Accept", "needs_fix": "Needs fix", "corrected": "Corrected", "unreviewed": "Unreviewed"}
    icons = {"accepted": ":material/check_circle:", "needs_fix": ":material/flag:",
             "corrected": ":material/edit:", "unreviewed": ":material/help:"}
    order = ["accepted", "needs_fix", "corrected", "unreviewed"]
    assert set(order) == set(CASE_STATES)
    rows = [st.columns(2), st.columns(2)]
    for i, s in enumerate(order):
        col = rows[i // 2][i % 2]
        if col.button(labels[s], key=f"{state.Editor.STATE}_{s}", icon=icons[s], disabled=not who or s == cur,
                      width="stretch"):
            store.set_case_state(case_id, s, who, "set on the mask editor")
            _flash("success", f"{case_id} marked {s}.")
            st.rerun()


# ------------------------------------------------------------------------------------------ history, source

def history_frame(ds: Dataset, store: ReviewStore, case_id: str) -> pd.DataFrame:
    """Versions of a case as a DataFrame (version 0 = the dataset's original)."""
    import pandas as pd

    from engine.curation import version_history

    return pd.DataFrame([{"version": r["version"], "author": r["author"], "time": local_time(r["created"]),
                          "note": r["note"], "area (px)": r["area"], "from": r["from"]}
                         for r in version_history(ds, store, case_id)])


@st.cache_data(show_spinner=False, max_entries=8)
def _version_diff(ds_key: str, store_path: str, case_id: str, v: int, stamps: tuple, _ds: Dataset, _store: ReviewStore,
                  _img: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    from engine.curation import diff_image

    return diff_image(version_mask(_ds, _store, case_id, v - 1), version_mask(_ds, _store, case_id, v), _img)


def version_diff(ds: Dataset, store: ReviewStore, case_id: str, v: int, img: np.ndarray
                 ) -> tuple[np.ndarray, dict[str, int]]:
    """Diff image (H,W,3) and pixel counts of version ``v - 1`` → ``v``, cached: saved versions never
    change, and the dataset's original (version 0) and the image are keyed by their file stamps."""
    from engine.fsutil import stamp_text

    c = ds.case(case_id)
    stamps = (stamp_text(c.image_path), stamp_text(c.mask.path))
    return _version_diff(dataset_key(ds), str(store.path), case_id, int(v), stamps, ds, store, img)


def history_panel(ds: Dataset, store: ReviewStore, sess: EditSession, img: np.ndarray, who: str) -> None:
    from engine.curation import DIFF_COLOURS
    from engine.errors import ConflictError
    from ui.widgets import colour_legend

    st.subheader("History")
    df = history_frame(ds, store, sess.case_id)
    latest = int(df["version"].max())
    st.dataframe(df, hide_index=True, width="stretch", key=state.Editor.HISTORY_TABLE,
                 column_config={"version": st.column_config.NumberColumn(format="%d")})
    if latest == 0:
        st.caption("No saved versions yet: only the dataset's original.")
        return
    versions = df["version"].tolist()[1:]
    if st.session_state.get(state.Editor.DIFF_VERSION) not in versions:
        st.session_state[state.Editor.DIFF_VERSION] = latest
    a, b = st.columns(2)
    with a:
        v = st.selectbox("Diff of version … against the one before", versions, key=state.Editor.DIFF_VERSION)
        rgb, counts = version_diff(ds, store, sess.case_id, v, img)
        st.image(rgb, caption=f"version {v - 1} → {v}: +{counts['added']:,} px added, −{counts['removed']:,} removed"
                 + (f", {counts['changed class']:,} changed class" if counts["changed class"] else ""),
                 width="stretch")
        colour_legend(DIFF_COLOURS, {k: counts[k] for k in DIFF_COLOURS})
    with b:
        targets = [x for x in [0] + versions if x != latest]
        if st.session_state.get(state.Editor.REVERT_VERSION) not in targets:
            st.session_state[state.Editor.REVERT_VERSION] = targets[-1]
        t = st.selectbox("Revert to version", targets, key=state.Editor.REVERT_VERSION,
                         help="adds a new version copying the chosen one; history is never rewritten")
        if st.button(f"Revert to version {t}", key=state.Editor.REVERT, icon=":material/history:", disabled=not who):
            try:
                nv = store.revert(sess.case_id, int(t), who, base_version=latest)
            except ConflictError as exc:
                _flash("warning", f"Not reverted: {exc}")
                st.rerun()
            if not sess.has_changes:
                replace_session(ds, store, sess, source=f"version {nv} (revert to {t})")
            _flash("success", f"Version {nv} restores version {t}.")
            st.rerun()
        if not who:
            st.caption("Enter your name in the sidebar to revert.")


def _prediction(ds: Dataset, model: str, case_id: str) -> tuple[np.ndarray, str]:
    """A model's mask for the case: its saved evaluation prediction when there is one, else predicted now."""
    from engine.io import read_mask
    from engine.thumbnails import pred_mask_path
    from ui.caches import evaluations
    from ui.loaders import predict_case

    for e in evaluations(ds):
        if e["model"] != model:
            continue
        p = pred_mask_path(e["folder"], case_id)
        if p.is_file():
            m, _ = read_mask(p)
            return m, f"{model} (saved evaluation {Path(e['folder']).name})"
    return np.asarray(predict_case(model, ds, case_id), np.uint8), f"{model} (predicted now)"


def source_panel(ds: Dataset, store: ReviewStore, sess: EditSession) -> None:
    """Restart editing from another version or from a model's prediction."""
    from ui.widgets import model_picker

    latest = store.latest_mask_version(sess.case_id)
    options = [f"version {v}" for v in range(latest, -1, -1)] + [PREDICTION]
    if st.session_state.get(state.Editor.SOURCE) not in options:
        st.session_state[state.Editor.SOURCE] = options[0]
    c = st.columns([2, 2, 2], vertical_alignment="bottom")
    src = c[0].selectbox("Start from", options, key=state.Editor.SOURCE,
                         format_func=lambda o: o + (" (latest)" if o == f"version {latest}" else "")
                         + (" (dataset original)" if o == "version 0" else ""))
    model = None
    if src == PREDICTION:
        with c[1]:
            model = model_picker("Model", key=state.Editor.MODEL)
    dirty = sess.has_changes or sess.stack.position > 0
    if c[2].button("Load into the editor", key=state.Editor.LOAD, icon=":material/download:",
                   disabled=src == PREDICTION and not model,
                   help="replaces the mask being edited" + (" — your unsaved edits are lost" if dirty else "")):
        if src == PREDICTION:
            with st.spinner(f"Predicting with {model}…"):
                mask, label = _prediction(ds, model, sess.case_id)
        else:
            v = int(src.split()[-1])
            mask, label = version_mask(ds, store, sess.case_id, v), f"version {v}"
        replace_session(ds, store, sess, mask, source=label)
        _clear_flash()
        _flash("info", f"Editing starts from {label}; saving creates version {latest + 1}.")
        st.rerun()
    if dirty:
        st.caption("Loading replaces your unsaved edits of this case.")


# ------------------------------------------------------------------------------------------ queue, export

def queue_panel(queue: Queue, info: dict[str, Any], claims: dict | None = None) -> None:
    """The review queue as a table (the suspect-type filter applied), with how its score is made."""
    import pandas as pd

    claims = claims or {}
    report = info.get("suspects")
    n_all = len(info.get("all", queue))
    title = f"Review queue ({len(queue)} cases" + (f" of {n_all}, filtered by suspect type)" if n_all != len(queue)
                                                   else ")")
    with st.expander(title, expanded=False):
        if report is not None:
            st.caption("Score = 2 if marked *needs fix* + the label-error finder's score (0–1; it replaces the model "
                       "Dice and flip-TTA terms) + 1 for a conflicting near-duplicate pair (0.5 for a disagreeing "
                       "one) + 0.75 × model disagreement. Accepted and corrected cases are left out. Finder report: "
                       f"{report.created or 'yes'} · conflicts report: {'yes' if info.get('conflicts') else 'none'}.")
        else:
            st.caption("Score = 2 if marked *needs fix* + (1 − model Dice) + 1 for a conflicting near-duplicate pair "
                       "(0.5 for a disagreeing one). Accepted and corrected cases are left out. "
                       f"Evaluation: {info.get('evaluation') or 'none'} · conflicts report: "
                       f"{'yes' if info.get('conflicts') else 'none'} · label-error finder: not run.")
        if queue:
            types = suspect_types_of(queue, report)
            df = pd.DataFrame([{"case": c, "score": s, **({"type": types.get(c, "")} if report is not None else {}),
                                "why": "; ".join(r), "being edited by": claims[c].user if c in claims else ""}
                               for c, s, r in queue[:200]])
            st.dataframe(df, hide_index=True, width="stretch", key=state.Editor.QUEUE_TABLE,
                         column_config={"score": st.column_config.NumberColumn(format="%.2f")})


def _default_export_dir(ds: Dataset) -> str:
    from ui.auth import default_export_root

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M")
    name = Path(str(ds.root)).name or "dataset"
    root = default_export_root() or state.workspace().root / "exports"
    return str(root / f"{name}-corrected-{stamp}")


def export_panel(ds: Dataset, store: ReviewStore) -> None:
    from engine.curation import export_corrected
    from ui.widgets import streamlit_progress

    with st.expander("Export the corrected dataset", expanded=False):
        st.caption("Writes every labelled case's current mask (the newest saved version, else the original) as a "
                   "PNG label mask, an RLE CSV in the dataset's own convention (Kaggle UNS `train_masks.csv`, SIIM "
                   "`train-rle.csv`), `images.csv` with the original image paths, and a `manifest.json` that "
                   "training and evaluation open like a dataset. The dataset folder is only read.")
        if state.Editor.EXPORT_DIR not in st.session_state:
            st.session_state[state.Editor.EXPORT_DIR] = _default_export_dir(ds)
        out = st.text_input("Export folder (new or empty, outside the dataset)", key=state.Editor.EXPORT_DIR).strip()
        c = st.columns(2)
        dec = c[0].checkbox("Apply conflict-review decisions (drops, unions, emptied masks)", value=True,
                            key=state.Editor.EXPORT_DECISIONS)
        copy = c[1].checkbox("Copy the images too", value=False, key=state.Editor.EXPORT_COPY,
                             help="DICOMs are de-identified (DICOM PS3.15 basic profile: names, IDs, dates, "
                                  "institution removed or replaced, UIDs replaced consistently, pixels unchanged) "
                                  "and their cases renamed to the new UIDs; other images are copied as they are")
        if st.button("Export", key=state.Editor.EXPORT, icon=":material/ios_share:", disabled=not out):
            from ui.auth import check_output_path

            check_output_path(out)  # team mode: only under the workspace or an export root
            report, bar = streamlit_progress("Exporting")
            info = export_corrected(ds, store, out, progress=report, apply_decisions=dec, copy_images=copy)
            bar.empty()
            st.session_state[state.Editor.EXPORT_RESULT] = info
        info = st.session_state.get(state.Editor.EXPORT_RESULT)
        if info:
            st.success(f"Exported {info['n_exported']:,} masks ({info['n_corrected']:,} corrected, "
                       f"{info['n_dropped']:,} cases dropped by decisions) to `{info['out_dir']}`. "
                       f"Train on `{info['manifest']}`.", icon="✅")
            rows = {k: info[k] for k in ("manifest", "masks_dir", "rle_csv", "images_list", "n_cases", "n_kept",
                                        "n_exported", "n_corrected", "n_unlabelled", "n_empty", "n_dropped")}
            st.json({**rows, "notes": info.get("notes", [])}, expanded=False)


# ------------------------------------------------------------------------------------------ page

def render_editor() -> None:
    """The whole Mask editor page body (call inside ``ui.widgets.guard``)."""
    from engine.store import ReviewStore
    from ui.widgets import dataset_required

    ds = dataset_required()
    if getattr(ds, "workdir", None) is None:
        st.info("This dataset was opened without a workspace folder, so corrections cannot be stored: "
                "open it from the Home page.", icon="ℹ️")
        return
    if not len(ds):
        st.info("This dataset has no cases to edit.", icon="ℹ️")
        return
    _show_flash()
    who = author_input()
    with ReviewStore.for_dataset(ds) as store:
        _apply_deep_link(ds)
        full, qinfo = review_queue_for(ds, store)
        report = qinfo.get("suspects")
        queue = suspect_type_filter(full, report)
        qinfo["all"] = full
        case_id = case_picker(ds, store, queue, qinfo)
        sess = session_for(ds, store, case_id)
        claim_panel(ds, store, sess)
        suspect_info(report, case_id, sess.stack.current)
        case = ds.case(case_id)
        img = case_image(ds, case_id)
        hw = (int(img.shape[-2]), int(img.shape[-1]))
        if sess.stack.shape != hw:
            st.error(f"The image is {hw[0]}x{hw[1]} but the mask is {sess.stack.shape[0]}x{sess.stack.shape[1]}.",
                     icon="⚠️")
            return
        if not case.labelled:
            st.caption("This case has no ground truth: editing starts from an empty mask (or load a model's "
                       "prediction below).")
        settings = tool_controls(ds, hw)
        left, right = st.columns([2, 1], gap="medium")
        with left:
            canvas_panel(ds, sess, img, settings)
            history_buttons(sess)
            manual_tools(ds, sess, hw)
        with right:
            preview_panel(ds, sess, img, settings["view"])
            suspect_map_panel(ds, report, case_id, img, state.Editor.SUSPECT_MAP)
            save_panel(ds, store, sess, img, who)
            st.divider()
            state_panel(store, case_id, who if _may("reviewer") else "")
        st.divider()
        with st.expander("Start from another version or a model's prediction", expanded=False):
            source_panel(ds, store, sess)
        history_panel(ds, store, sess, img, who)
        queue_panel(queue, qinfo, store.claims())
        export_panel(ds, store)
        finder_panel(ds, report)  # the label-error finder (ranks the queue)
        loop_view.signals_panel(ds)  # model signals for the queue
        loop_view.loop_link()
        loop_view.loop_section(ds, store, None, "editor")  # retrain with corrections, what moved
