"""Streamlit glue of the Dataset browser page (pages/3_Dataset_browser.py).

Filters (vectorised over the cached ``ds.to_frame()``), a paginated grid of disk-cached
thumbnails (:mod:`engine.thumbnails`), a case detail view (image, ground truth, prediction,
per-image metrics, PHI-free case info) and EDA charts (:mod:`engine.eda`).

Other pages open a case here by setting ``st.session_state[ui.state.Shared.BROWSER_CASE]`` and, to
also choose the view/model/evaluation, calling :func:`ui.nav.request_case` before ``st.switch_page``.
The cached loaders shared with other pages are :mod:`ui.caches`; page links are :mod:`ui.nav`.

Review hooks: :func:`review_columns` adds ``conflict_status`` (from the latest
:func:`engine.dedup.load_latest_report`), ``review_state`` (from the dataset's
:class:`engine.store.ReviewStore`, read only when the store file exists) and ``suspect_type`` /
``suspect_score`` (the latest label-error finder report,
:func:`engine.curation.suspects.load_latest_suspects`) to the case table;
:func:`review_filters` and :func:`suspect_filter` draw their filters. Extend those functions for
more review data. The detail view explains a suspect case and shows its disagreement map.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from ui import state
from ui.caches import cached_eval, case_frame, conflict_pairs, evaluations, review_states
from ui.nav import CONFLICT_PAGE, EDITOR_PAGE, page_link, short_id

if TYPE_CHECKING:
    import pandas as pd
    from streamlit.delta_generator import DeltaGenerator

    from engine.datasets import Dataset
    from engine.eda import CaseFilter


VIEWS = ("Thumbnails", "Case details", "EDA")
NO_MODEL = "(none)"
NCOLS = 6
THUMB_SIZE = 192
STATE_COLOURS = {"with mask": "#f58518", "empty": "#4c78a8", "unlabelled": "#bab0ac"}
OVERLAY_LABELS = {"Ground truth": "gt", "Prediction": "pred", "Prediction + GT outline": "both", "Image only": "none"}


# ------------------------------------------------------------------------------- review hook

def review_columns(ds: Dataset, df: pd.DataFrame) -> pd.DataFrame:
    """HOOK for review data: add ``conflict_status`` and ``review_state`` columns when available.

    - ``conflict_status``: the most severe near-duplicate category of each case in the latest
      conflicts report (``<workdir>/conflicts.json``), ``no duplicate`` when in no pair.
    - ``review_state``: ``unreviewed`` / ``accepted`` / ``needs_fix`` / ``corrected`` from the
      review store (``<workdir>/review.sqlite``), only when the store exists.
    """
    from engine.eda import conflict_status_column

    pairs = conflict_pairs(ds)
    if pairs is not None:
        df["conflict_status"] = conflict_status_column(df["case_id"].astype(str).tolist(), pairs)
    states = review_states(ds)
    if states is not None:
        df["review_state"] = df["case_id"].astype(str).map(states).fillna("unreviewed")
    from ui.editor_view import latest_suspects

    rep = latest_suspects(ds)
    if rep is not None:
        ids = df["case_id"].astype(str)
        df["suspect_type"] = ids.map({s.case_id: s.type for s in rep.cases})
        df["suspect_score"] = ids.map({s.case_id: float(s.score) for s in rep.cases})
    return df


def suspect_filter(df: pd.DataFrame, where: DeltaGenerator) -> tuple[str, ...]:
    """HOOK: the suspect-type filter (label-error finder; counts of the dataset's cases in the labels),
    only when the case table has ``suspect_type``. Returns the chosen types (empty: any)."""
    if "suspect_type" not in df.columns:
        return ()
    from engine.curation.suspects import SUSPECT_TYPES

    counts = df["suspect_type"].value_counts().to_dict()
    return tuple(where.multiselect("Suspect type (label-error finder)", list(SUSPECT_TYPES),
                                   key=state.Browser.F_SUSPECT, format_func=lambda t: f"{t} ({counts.get(t, 0)})",
                                   help="how the latest label-error finder report says the case's mask is wrong"))


def review_filters(df: pd.DataFrame, where: DeltaGenerator) -> dict[str, tuple[str, ...]]:
    """HOOK: filter widgets for the review columns (conflict status, review state) that exist."""
    from engine.eda import CONFLICT_STATUSES

    out: dict[str, tuple[str, ...]] = {}
    if "conflict_status" in df.columns:
        present = [s for s in CONFLICT_STATUSES if (df["conflict_status"] == s).any()]
        out["conflict"] = tuple(where.multiselect("Conflict status", present, key=state.Browser.F_CONFLICT,
                                                  help="from the latest duplicate/conflict search"))
    if "review_state" in df.columns:
        from engine.store import CASE_STATES

        out["review"] = tuple(where.multiselect("Review state", list(CASE_STATES), key=state.Browser.F_REVIEW))
    return out


# ------------------------------------------------------------------------------- requests

def _apply_request() -> None:
    req = st.session_state.pop(state.Browser.REQUEST, None)
    if not req:
        return
    if req.get("view") in VIEWS:
        st.session_state[state.Browser.VIEW] = req["view"]
    if req.get("model"):
        st.session_state[state.Browser.MODEL] = req["model"]
    if req.get("eval"):
        st.session_state[state.Browser.EVAL] = req["eval"]


def _open_case(case_id: str) -> None:
    state.put(state.Shared.BROWSER_CASE, case_id)
    st.session_state[state.Browser.VIEW] = "Case details"


# ------------------------------------------------------------------------------- controls

def model_controls(ds: Dataset) -> tuple[str | None, str | None]:
    """Model picker + evaluation chooser/trigger. Returns (model name or None, eval folder or None)."""
    from ui.loaders import model_names

    names = model_names()
    options = [NO_MODEL] + names
    if st.session_state.get(state.Browser.MODEL) not in options:
        st.session_state.pop(state.Browser.MODEL, None)
    c1, c2, c3 = st.columns([2, 3, 2])
    model = c1.selectbox("Model (prediction overlays, Dice filter)", options, key=state.Browser.MODEL,
                         help="uses the model's saved evaluation on this dataset when there is one")
    if model == NO_MODEL:
        return None, None
    evals = [e for e in evaluations(ds) if e["model"] == model]
    folders = [e["folder"] for e in evals]
    if st.session_state.get(state.Browser.EVAL) not in folders:
        st.session_state.pop(state.Browser.EVAL, None)
    folder = None
    if evals:
        labels = {e["folder"]: e["label"] for e in evals}
        folder = c2.selectbox("Evaluation", folders, format_func=lambda f: labels.get(f, Path(f).name),
                              key=state.Browser.EVAL)
    else:
        c2.info(f"No saved evaluation of **{model}** on this dataset: the detail view predicts live; "
                "evaluate to get thumbnails of predictions and a Dice filter.")
    c3.write("")
    if c3.button(f"Evaluate {model} on this dataset", key=state.Browser.EVALUATE,
                 help="predicts every labelled case (cached on disk: a repeat is instant)"):
        from engine.evaluation import EvalConfig, evaluate
        from ui.loaders import load_predictor
        from ui.widgets import streamlit_progress

        report, bar = streamlit_progress(f"Evaluating {model}")
        res = evaluate(load_predictor(model), ds, EvalConfig(), progress=report)
        bar.empty()
        st.session_state[state.Browser.REQUEST] = {"eval": str(res.folder)}
        st.rerun()
    return model, folder


def filter_controls(df: pd.DataFrame, has_eval: bool) -> CaseFilter:
    """Sidebar filter widgets → :class:`engine.eda.CaseFilter`."""
    from engine.eda import MASK_STATES, CaseFilter, filter_options

    opts = filter_options(df)
    sb = st.sidebar
    sb.divider()
    sb.subheader("Filters")
    kw: dict[str, Any] = {}
    kw["text"] = sb.text_input("Case id contains", key=state.Browser.F_TEXT).strip()
    kw["mask"] = tuple(sb.multiselect("Ground truth", list(MASK_STATES), key=state.Browser.F_MASK))
    if len(opts["groups"]) > 1:
        kw["groups"] = tuple(sb.multiselect(f"Group (subject / patient) · {len(opts['groups'])}", opts["groups"],
                                            key=state.Browser.F_GROUPS))
    if len(opts["splits"]) > 1:
        kw["splits"] = tuple(sb.multiselect("Split", opts["splits"], key=state.Browser.F_SPLIT))
    if opts["sexes"]:
        kw["sexes"] = tuple(sb.multiselect("Sex (DICOM)", opts["sexes"], key=state.Browser.F_SEX))
    if opts["views"]:
        kw["views"] = tuple(sb.multiselect("View position (DICOM)", opts["views"], key=state.Browser.F_VIEW))
    if opts["age"] is not None:
        lo, hi = opts["age"]
        if hi > lo:
            rng = sb.slider("Age (years, DICOM)", lo, hi, (lo, hi), step=1.0, key=state.Browser.F_AGE)
            n_imp, n_mis = opts["n_age_impossible"], opts["n_age_missing"]
            with_imp = sb.checkbox(f"also impossible ages ({n_imp})", value=True, key=state.Browser.F_AGE_IMP) \
                if n_imp else True
            with_mis = sb.checkbox(f"also missing ages ({n_mis})", value=True, key=state.Browser.F_AGE_MIS) \
                if n_mis else True
            if tuple(rng) != (lo, hi) or not with_imp or not with_mis:
                kw.update(age_range=(float(rng[0]), float(rng[1])), age_impossible=with_imp, age_missing=with_mis)
    if opts["area"] is not None and opts["area"][1] > opts["area"][0]:
        lo, hi = opts["area"]
        rng = sb.slider("Mask area (pixels)", lo, hi, (lo, hi), key=state.Browser.F_AREA)
        if tuple(rng) != (lo, hi):
            kw["area_range"] = (float(rng[0]), float(rng[1]))
    if has_eval and "eval_dice" in df.columns:
        rng = sb.slider("Dice of the model (evaluation)", 0.0, 1.0, (0.0, 1.0), step=0.01, key=state.Browser.F_DICE)
        if tuple(rng) != (0.0, 1.0):
            kw["dice_range"] = (float(rng[0]), float(rng[1]))
    kw.update(review_filters(df, sb))
    return CaseFilter(**kw)


def pagination(n_items: int, per_page: int) -> tuple[int, int, int]:
    """First/prev/next/last buttons + page number; returns (page (1-based), start, stop)."""
    n_pages = max(1, -(-n_items // per_page))
    cur = int(st.session_state.get(state.Browser.PAGE, 1) or 1)
    if cur > n_pages or cur < 1:
        st.session_state[state.Browser.PAGE] = min(max(cur, 1), n_pages)

    def go(to: int) -> None:
        st.session_state[state.Browser.PAGE] = min(max(1, to), n_pages)

    page_now = int(st.session_state.get(state.Browser.PAGE, 1))
    c = st.columns([1, 1, 2, 1, 1, 4], vertical_alignment="bottom")
    c[0].button("First", icon=":material/first_page:", key=state.Browser.FIRST, on_click=go, args=(1,),
                disabled=page_now <= 1)
    c[1].button("Prev", icon=":material/chevron_left:", key=state.Browser.PREV, on_click=go, args=(page_now - 1,),
                disabled=page_now <= 1)
    page = int(c[2].number_input(f"Page (of {n_pages})", 1, n_pages, step=1, key=state.Browser.PAGE))
    c[3].button("Next", icon=":material/chevron_right:", key=state.Browser.NEXT, on_click=go, args=(page_now + 1,),
                disabled=page_now >= n_pages)
    c[4].button("Last", icon=":material/last_page:", key=state.Browser.LAST, on_click=go, args=(n_pages,),
                disabled=page_now >= n_pages)
    start = (page - 1) * per_page
    stop = min(n_items, start + per_page)
    c[5].caption(f"cases {start + 1 if n_items else 0}–{stop} of {n_items:,}")
    return page, start, stop


# ------------------------------------------------------------------------------- views

def thumbnail_grid(ds: Dataset, page_df: pd.DataFrame, overlay: str, eval_folder: str | None, ncols: int = NCOLS,
                   next_ids: list[str] | None = None) -> None:
    """The page's thumbnails (rendered in parallel when missing) with an Open button under each;
    ``next_ids`` (the next page) are then drawn into the disk cache in the background."""
    from engine.errors import WorkbenchError
    from engine.thumbnails import prefetch_thumbnails, thumbnail_paths

    ids = page_df["case_id"].astype(str).tolist()
    if not ids:
        st.info("No case matches the filters.")
        return
    with st.spinner("Drawing thumbnails…"):
        pred = eval_folder if overlay in ("pred", "both") else None
        paths = thumbnail_paths(ds, ids, THUMB_SIZE, overlay, pred)
    rows = page_df.to_dict("records")
    for r0 in range(0, len(ids), ncols):
        cols = st.columns(ncols)
        for j, i in enumerate(range(r0, min(r0 + ncols, len(ids)))):
            rec, p = rows[i], paths[i]
            with cols[j]:
                cap = _caption(rec)
                if isinstance(p, WorkbenchError):
                    st.warning(f"{ids[i]}: {p.message}", icon="⚠️")
                else:
                    st.image(str(p), caption=cap, width="stretch")
                st.button("Open", key=f"{state.Browser.OPEN}_{ids[i]}", on_click=_open_case, args=(ids[i],),
                          width="stretch")
    if next_ids:  # after this page is drawn: the next page's thumbnails go to the disk cache meanwhile
        prefetch_thumbnails(ds, next_ids, THUMB_SIZE, overlay, pred)


def _caption(rec: dict[str, Any]) -> str:
    parts = [short_id(str(rec["case_id"]))]
    if not rec.get("labelled", True):
        parts.append("unlabelled")
    elif rec.get("has_mask"):
        parts.append(f"{int(rec.get('mask_area', 0)):,} px")
    else:
        parts.append("empty")
    d = rec.get("eval_dice")
    if d is not None and d == d:
        parts.append(f"Dice {d:.2f}")
    if rec.get("conflict_status") in ("conflict", "disagree"):
        parts.append(f"⚠ {rec['conflict_status']}")
    typ, score = rec.get("suspect_type"), rec.get("suspect_score")
    if isinstance(typ, str) and score is not None and score == score:
        parts.append(f"⚑ {typ} {float(score):.2f}")
    return " · ".join(parts)


def detail_view(ds: Dataset, df: pd.DataFrame, filtered_ids: list[str], model: str | None,
                eval_folder: str | None) -> None:
    """One case: image, ground truth, prediction, per-image metrics, case info, review links."""
    import numpy as np
    import pandas as pd

    from engine.eda import safe_case_info
    from engine.metrics import EMPTY_POLICIES, image_metrics
    from engine.thumbnails import pred_mask_path
    from engine.visualize import overlay
    from ui.widgets import legend

    cur = state.get(state.Shared.BROWSER_CASE)
    if cur not in ds:
        cur = filtered_ids[0] if filtered_ids else None
    if cur is None:
        st.info("No case to show: the filters match nothing. Clear a filter in the sidebar.")
        return
    options = list(filtered_ids)
    if cur not in options:
        options = [cur] + options
    if st.session_state.get(state.Browser.CASE_SELECT) != cur:
        st.session_state[state.Browser.CASE_SELECT] = cur
    pos = options.index(cur)

    def pick(cid: str) -> None:
        state.put(state.Shared.BROWSER_CASE, cid)
        st.session_state[state.Browser.CASE_SELECT] = cid

    def picked() -> None:
        state.put(state.Shared.BROWSER_CASE, st.session_state[state.Browser.CASE_SELECT])

    c = st.columns([1, 4, 1], vertical_alignment="bottom")
    c[0].button("Previous", icon=":material/chevron_left:", key=state.Browser.CASE_PREV, disabled=pos == 0,
                on_click=pick, args=(options[max(0, pos - 1)],))
    c[1].selectbox(f"Case ({len(filtered_ids):,} match the filters)", options, key=state.Browser.CASE_SELECT,
                   on_change=picked)
    c[2].button("Next", icon=":material/chevron_right:", key=state.Browser.CASE_NEXT, disabled=pos >= len(options) - 1,
                on_click=pick, args=(options[min(len(options) - 1, pos + 1)],))
    state.put(state.Shared.BROWSER_CASE, cur)
    case = ds.case(cur)

    img = ds.load_image_float(case)
    gt = ds.load_mask(case) if case.labelled else None
    pred, pred_src = None, ""
    if model:
        saved = pred_mask_path(eval_folder, cur) if eval_folder else None
        if saved is not None and saved.is_file():
            from engine.io import read_mask

            pred, _ = read_mask(saved)
            pred_src = f"saved by the evaluation `{Path(eval_folder).name}`"
        else:
            with st.spinner(f"Predicting with {model}…"):
                from ui.loaders import predict_case

                pred = predict_case(model, ds, cur)
            pred_src = f"predicted live by `{model}` (its default post-processing)"
    cols = st.columns(3 if model else 2)
    cols[0].image(overlay(img, None), caption=f"{cur} · image", width="stretch")
    if gt is not None:
        cols[1].image(overlay(img, gt), caption=f"ground truth · {int(np.count_nonzero(gt)):,} px", width="stretch")
    else:
        cols[1].info("No ground truth (unlabelled case).")
    if model and pred is not None:
        cols[2].image(overlay(img, pred), caption=f"prediction · {int(np.count_nonzero(pred)):,} px",
                      width="stretch")
        cols[2].caption(pred_src)
    legend(ds.labels)
    _suspect_detail(ds, cur, img, gt)

    left, right = st.columns([3, 2], gap="large")
    with left:
        st.subheader("Per-image metrics")
        if pred is None:
            st.caption("Choose a model above to compare a prediction with the ground truth.")
        elif gt is None:
            st.caption("No ground truth, so no metrics.")
        else:
            policy = st.radio("Empty-mask policy", list(EMPTY_POLICIES), horizontal=True, key=state.Browser.POLICY,
                              help="how a class empty in both prediction and ground truth is scored")
            spacing = case.meta.get("pixel_spacing_mm")
            spacing = tuple(spacing) if isinstance(spacing, (list, tuple)) and len(spacing) == 2 else None
            m = image_metrics(pred, gt, num_classes=ds.num_classes, empty_policy=policy, spacing=spacing)
            unit = "mm" if spacing else "px"
            table = pd.DataFrame([{"class": ds.labels.get(k, str(k)), "Dice": v.dice, "IoU": v.iou,
                                   "precision": v.precision, "recall": v.recall, f"HD95 ({unit})": v.hd95,
                                   f"ASSD ({unit})": v.assd, "GT px": v.gt_area, "predicted px": v.pred_area}
                                  for k, v in m.items()])
            st.dataframe(table, hide_index=True, width="stretch",
                         column_config={k: st.column_config.NumberColumn(format="%.3f")
                                        for k in ("Dice", "IoU", "precision", "recall")})
            from engine.metrics import EMPTY_POLICY_RULES

            st.caption(f"Policy **{policy}**: {EMPTY_POLICY_RULES[policy]}. NaN = undefined "
                       "(e.g. HD95 when one side is empty).")
    with right:
        st.subheader("Case")
        info = safe_case_info(case)
        row = df[df["case_id"].astype(str) == cur]
        for col in ("conflict_status", "review_state"):
            if col in row.columns and len(row):
                info[col.replace("_", " ")] = row[col].iat[0]
        st.dataframe(pd.DataFrame({"field": list(info), "value": [str(v) for v in info.values()]}),
                     hide_index=True, width="stretch", height=min(800, 35 * (len(info) + 1) + 3))
        _case_pairs(ds, cur)
        _review_links()


def _suspect_detail(ds: Dataset, case_id: str, img: Any, gt: Any) -> None:
    """The latest label-error finder report on the case: type, score, reasons, provenance, and the
    "Show where the label disagrees" toggle with its map over the image (nothing without a report)."""
    from ui.editor_view import latest_suspects, suspect_info, suspect_map_panel

    rep = latest_suspects(ds)
    if rep is None:
        return
    import numpy as np

    judged = None if gt is None else np.minimum(gt, max(ds.num_classes - 1, 1)).astype(np.uint8)
    a, b = st.columns([3, 2], gap="large")
    with a:
        suspect_info(rep, case_id, judged)
    with b:
        suspect_map_panel(ds, rep, case_id, img, state.Browser.SUSPECT_MAP)


def _case_pairs(ds: Dataset, case_id: str) -> None:
    pairs = conflict_pairs(ds)
    if not pairs:
        return
    import pandas as pd

    mine = [p for p in pairs if case_id in (p.get("a"), p.get("b"))]
    if mine:
        st.caption("Near-duplicates of this case (latest conflict search)")
        st.dataframe(pd.DataFrame([{"other case": p["b"] if p["a"] == case_id else p["a"],
                                    "category": p.get("category"), "SSIM": p.get("ssim"),
                                    "mask Dice": p.get("mask_dice")} for p in mine]),
                     hide_index=True, width="stretch")


def _review_links() -> None:
    shown = False
    for page, label, icon in ((CONFLICT_PAGE, "Review conflicts of this case", "⚖️"),
                              (EDITOR_PAGE, "Edit this case's mask", "✏️")):
        shown = page_link(page, label, icon) or shown
    if not shown:
        st.caption("Conflict review and mask editing pages are not installed.")


# ------------------------------------------------------------------------------- EDA

def eda_view(df: pd.DataFrame, filtered: pd.DataFrame) -> None:
    """EDA charts (plotly) of the filtered cases (or all of them)."""
    import plotly.express as px
    import plotly.graph_objects as go

    from engine.eda import eda_report

    use_all = st.toggle("All cases (ignore the filters)", value=False, key=state.Browser.EDA_ALL)
    data = df if use_all else filtered
    rep = eda_report(data)
    st.caption(f"{rep['n_cases']:,} cases" + ("" if use_all else " matching the filters"))
    pres = rep["presence"]
    c = st.columns(4)
    c[0].metric("Cases", f"{rep['n_cases']:,}")
    c[1].metric("With mask", f"{pres['counts']['with mask']:,}")
    c[2].metric("Empty", f"{pres['counts']['empty']:,}")
    frac = pres["positive_fraction"]
    c[3].metric("Positive fraction", f"{frac:.1%}" if frac == frac else "n/a",
                help="cases with a non-empty mask among labelled cases")

    if rep["dicom"]:
        a, b = st.columns(2)
        a.plotly_chart(px.bar(rep["sex"], x="value", y="count", text="count", title="Sex (DICOM)",
                              labels={"value": "sex"}), key=state.Browser.EDA_SEX)
        b.plotly_chart(px.bar(rep["view_position"], x="value", y="count", text="count",
                              title="View position (DICOM)", labels={"value": "view position"}),
                       key=state.Browser.EDA_VIEW)
        ages = rep["ages"]
        hist = ages["histogram"]
        colours = {"ok": "#4c78a8", "impossible": "#e45756", "missing": "#9d9d9d", "unparsed": "#9d9d9d"}
        fig = go.Figure()
        for kind, sub in hist.groupby("kind", sort=False):
            fig.add_bar(x=sub["bin"], y=sub["count"], name={"ok": "plausible age"}.get(kind, kind),
                        marker_color=colours.get(kind, "#9d9d9d"), text=sub["count"])
        fig.update_layout(title=f"Age (DICOM) · {ages['n_impossible']} impossible, {ages['n_missing']} missing",
                          xaxis_title="age (years)", yaxis_title="cases", barmode="group",
                          xaxis={"type": "category"})
        for _, r in hist[hist["kind"] == "impossible"].iterrows():
            fig.add_annotation(x=r["bin"], y=r["count"], text="impossible age: kept, not dropped",
                               showarrow=True, arrowhead=2, ay=-40)
        st.plotly_chart(fig, key=state.Browser.EDA_AGE)
        if ages["n_impossible"]:
            st.warning(f"{ages['n_impossible']} case(s) have an impossible age (outside 0–120 years), "
                       "shown in red above and listed here:", icon="⚠️")
            st.dataframe(ages["impossible"], hide_index=True, width="stretch")

    a, b = st.columns(2)
    pc = {k: v for k, v in pres["counts"].items() if v}
    a.plotly_chart(px.pie(names=list(pc), values=list(pc.values()), title="Ground truth", color=list(pc),
                          color_discrete_map=STATE_COLOURS), key=state.Browser.EDA_PRESENCE)
    areas = rep["areas"]
    if len(areas):
        b.plotly_chart(px.histogram(areas, x="mask_area", nbins=40, title="Mask area (non-empty masks)",
                                    labels={"mask_area": "mask area (pixels)"}), key=state.Browser.EDA_AREA)
    else:
        b.info("No non-empty masks among these cases.")
    groups = rep["groups"]
    if len(groups) > 1:
        long = groups.melt(id_vars=["group_id"], value_vars=["with mask", "empty", "unlabelled"],
                           var_name="ground truth", value_name="cases")
        long = long[long["cases"] > 0]
        fig = px.bar(long, x="group_id", y="cases", color="ground truth", title="Cases per group (subject / patient)",
                     category_orders={"group_id": groups["group_id"].tolist()}, color_discrete_map=STATE_COLOURS,
                     labels={"group_id": "group"})
        fig.update_xaxes(type="category")
        st.plotly_chart(fig, key=state.Browser.EDA_GROUPS)
    if len(rep["splits"]) > 1:
        st.plotly_chart(px.bar(rep["splits"], x="value", y="count", title="Split"), key=state.Browser.EDA_SPLIT)


# ------------------------------------------------------------------------------- page

def render_browser() -> None:
    """The whole Dataset browser page body (call inside ``ui.widgets.guard``)."""
    from engine.eda import apply_filter
    from ui.widgets import dataset_required

    _apply_request()
    ds = dataset_required()
    from ui import context

    context.warn_unknown_case(ds)
    model, eval_folder = model_controls(ds)
    df = case_frame(ds)
    ev = cached_eval(eval_folder) if eval_folder else None
    if ev is not None:
        per = ev.per_image[["case_id", "dice", "pred_area"]].rename(
            columns={"dice": "eval_dice", "pred_area": "eval_pred_area"})
        per["case_id"] = per["case_id"].astype(str)
        df = df.merge(per, on="case_id", how="left")
    df = review_columns(ds, df)
    f = filter_controls(df, ev is not None)
    keep = apply_filter(df, f)
    active = f.active()
    types = suspect_filter(df, st.sidebar)
    if types:
        keep = keep & df["suspect_type"].isin(types).to_numpy()
        active = [*active, "suspect_type"]
    filtered = df[keep]
    st.caption(f"**{int(keep.sum()):,}** of {len(df):,} cases"
               + (f" · filters: {', '.join(a.replace('_', ' ') for a in active)}" if active else ""))

    view = st.radio("View", VIEWS, horizontal=True, key=state.Browser.VIEW, label_visibility="collapsed")
    if view == "Thumbnails":
        c = st.columns([2, 2, 2, 3])
        ov_labels = [k for k, v in OVERLAY_LABELS.items() if ev is not None or v not in ("pred", "both")]
        if st.session_state.get(state.Browser.OVERLAY) not in ov_labels:
            st.session_state.pop(state.Browser.OVERLAY, None)
        ov = OVERLAY_LABELS[c[0].selectbox("Overlay", ov_labels, key=state.Browser.OVERLAY)]
        sorts = {"case id": "_order", "mask area": "mask_area"}
        if "eval_dice" in filtered.columns:
            sorts["Dice (evaluation)"] = "eval_dice"
        if "suspect_score" in filtered.columns:
            sorts["suspect score (label-error finder)"] = "suspect_score"
        sort = c[1].selectbox("Sort by", list(sorts), key=state.Browser.SORT)
        desc = c[2].toggle("Descending", key=state.Browser.DESC)
        per_page = int(c[3].selectbox("Thumbnails per page", [24, 36, 48, 96], index=1, key=state.Browser.PER_PAGE))
        ordered = filtered.sort_values([sorts[sort], "_order"], ascending=[not desc, True],
                                       na_position="last", kind="stable")
        _, start, stop = pagination(len(ordered), per_page)
        thumbnail_grid(ds, ordered.iloc[start:stop], ov, eval_folder,
                       next_ids=ordered["case_id"].iloc[stop:stop + per_page].astype(str).tolist())
        from ui.widgets import legend

        legend(ds.labels)
    elif view == "Case details":
        ids = filtered.sort_values("_order", kind="stable")["case_id"].astype(str).tolist()
        detail_view(ds, df, ids, model, eval_folder)
    else:
        eda_view(df, filtered)
