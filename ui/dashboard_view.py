"""Streamlit glue of the Metrics dashboard page (pages/4_Metrics_dashboard.py).

Evaluation of a model on the current dataset (computed by :func:`engine.evaluation.evaluate`,
cached on disk) shown as: headline numbers under the stated empty-mask policy, per-class
table, per-image distribution, worst cases (thumbnails linking to the browser), the
post-processing sweep heat map, presence ROC/PR/confusion matrix, metrics sliced by DICOM
fields; and training runs: loss/Dice/lr curves and the per-epoch prediction animation.
Data preparation lives in :mod:`engine.dashboard`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import streamlit as st

from ui import state
from ui.widgets import fmt_num

if TYPE_CHECKING:
    import pandas as pd

    from engine.datasets import Dataset
    from engine.evaluation import EvalConfig, EvalResult
    from engine.inference import Predictor
    from engine.progress import ProgressFn

NONE_TEXT = "n/a"


def _fmt(v: Any, digits: int = 3) -> str:
    return fmt_num(v, digits)


# ----------------------------------------------------------------------------- evaluation controls

def run_evaluation(predictor: Predictor, ds: Dataset, config: EvalConfig, progress: ProgressFn | None = None,
                   use_cache: bool = True, case_ids: Sequence[str] | None = None) -> EvalResult:
    """:func:`engine.evaluation.evaluate` (cached on disk by the engine)."""
    from engine.evaluation import evaluate

    return evaluate(predictor, ds, config, case_ids=case_ids, progress=progress, use_cache=use_cache)


HELD_OUT = "Held-out cases only (not in the model's training split)"
ALL_CASES = "All labelled cases"
NO_GATE = "(no gate)"


def case_and_gate_controls(ds: Dataset, model: str) -> tuple[list[str] | None, str | None]:
    """Which cases (held out by default when the dataset is the model's own) and which presence-classifier
    gate (default: the card's). Returns ``(case ids or None = all labelled, gate name or None)``."""
    from engine.checkpoint import read_card, resolve_weights
    from engine.evaluation import training_cases
    from ui.loaders import classifier_names

    card = read_card(resolve_weights(model))
    train = training_cases(card, ds)
    labelled = [c.case_id for c in ds.cases if c.labelled]
    case_ids = None
    c = st.columns(2)
    if train:
        held = [cid for cid in labelled if cid not in train]
        choice = c[0].radio("Cases", [HELD_OUT, ALL_CASES], key=f"{state.Dashboard.CASES}_{model}",
                            help=f"{len(train & set(labelled))} of the {len(labelled)} labelled cases were in "
                                 f"{model}'s training split (its card); scoring them overstates the model")
        if choice == HELD_OUT:
            case_ids = held
            c[0].caption(f"{len(held)} held-out cases (the card's validation split).")
        else:
            c[0].caption(f"⚠️ includes {len(train & set(labelled))} training cases: not a held-out figure.")
    names = classifier_names()
    card_gate = card.gate.weights if card.gate else None
    options = [NO_GATE] + names + ([card_gate] if card_gate and card_gate not in names else [])
    gate = None
    if len(options) > 1:
        pick = c[1].selectbox("Presence classifier gate", options, index=options.index(card_gate) if card_gate else 0,
                              key=f"{state.Dashboard.GATE}_{model}",
                              help="two-stage pipeline: the evaluation then shows the "
                                   "gated and ungated figures side by side and the classifier's ROC/PR")
        gate = None if pick == NO_GATE else pick
    return case_ids, gate


def honesty_banner(summary: dict[str, Any]) -> None:
    """Say whether the figures include training cases of the model (every figure below inherits this)."""
    ov = summary.get("training_overlap") or {}
    n, total = int(ov.get("n_cases") or 0), int(summary.get("n_cases") or 0)
    if n:
        st.warning(f"**Includes {n} of {total} training cases of {summary.get('model')}** — every figure on this "
                 "evaluation is optimistic, not a held-out result. Evaluate the held-out cases for an honest figure.",
                 icon="⚠️")
    elif ov.get("basis") == "dataset is not the model's training data":
        st.caption(f"Held out by construction: {summary.get('model')} was trained on other data, so none of these "
                   "cases is one of its training cases (a *split* column below is the dataset's own train/test "
                   "folders, not the model's).")
    elif ov:
        st.success(f"Held-out: none of the {total} evaluated cases were in {summary.get('model')}'s training split.",
                   icon="✅")


def eval_controls(ds: Dataset) -> str | None:
    """Model/policy/TTA + (re)compute button and the picker of saved evaluations. Returns a folder."""
    from engine.metrics import EMPTY_POLICIES, EMPTY_POLICY_RULES
    from ui.caches import evaluations
    from ui.widgets import model_picker

    pending = st.session_state.pop(state.Dashboard.EVAL_PENDING, None)
    if pending:
        st.session_state[state.Dashboard.EVAL] = pending
    notice = st.session_state.pop(state.Dashboard.NOTICE, None)
    if notice:
        st.warning(notice, icon="⚠️")
    with st.expander("Evaluate a model on this dataset", expanded=not evaluations(ds)):
        c = st.columns([3, 2, 2, 2], vertical_alignment="bottom")
        with c[0]:
            model = model_picker("Model", key=state.Dashboard.MODEL)
        policy = c[1].radio("Empty-mask policy", list(EMPTY_POLICIES), key=state.Dashboard.POLICY, horizontal=True,
                            help="how an image with an empty ground truth AND an empty prediction is scored")
        tta = c[2].selectbox("Test-time augmentation", ["none", "flip", "flip4"], key=state.Dashboard.TTA)
        recompute = c[3].checkbox("Recompute (ignore the cache)", key=state.Dashboard.RECOMPUTE)
        st.caption(f"**{policy}**: {EMPTY_POLICY_RULES[policy]}.")
        case_ids, gate = (None, None)
        if model:
            case_ids, gate = case_and_gate_controls(ds, model)
        if model and st.button(f"Evaluate {model}", type="primary", key=state.Dashboard.EVALUATE):
            from engine.evaluation import EvalConfig
            from ui.loaders import load_predictor
            from ui.widgets import streamlit_progress

            n = len(case_ids) if case_ids is not None else sum(c.labelled for c in ds.cases)
            report, bar = streamlit_progress(f"Evaluating {model} on {n:,} cases")
            res = run_evaluation(load_predictor(model, gate=gate), ds, EvalConfig(empty_policy=policy, tta=tta),
                                 progress=report, use_cache=not recompute, case_ids=case_ids)
            bar.empty()
            st.session_state[state.Dashboard.EVAL_PENDING] = str(res.folder)
            st.rerun()
    evals = evaluations(ds)
    if not evals:
        st.info("No evaluation of a model on this dataset yet: choose a model above and press **Evaluate**.")
        return None
    folders = [e["folder"] for e in evals]
    labels = {e["folder"]: e["label"] for e in evals}
    if st.session_state.get(state.Dashboard.EVAL) not in folders:
        cur = state.current_model()
        st.session_state[state.Dashboard.EVAL] = next((e["folder"] for e in evals if e["model"] == cur), folders[0])
    return st.selectbox("Evaluation shown", folders, key=state.Dashboard.EVAL, format_func=lambda f: labels.get(f, f))


# ----------------------------------------------------------------------------- sections

def summary_section(summary: dict[str, Any]) -> None:
    from engine.dashboard import headline, per_class_table

    h = headline(summary)
    c = st.columns(6)
    c[0].metric("Mean Dice", _fmt(h["mean_dice"]), help="mean over images, then over foreground classes")
    c[1].metric("Mean IoU", _fmt(h["mean_iou"]))
    c[2].metric("Dice · GT non-empty", _fmt(h["dice_gt_nonempty"]), help=f"{h['n_gt_nonempty']} images")
    c[3].metric("Dice · GT empty", _fmt(h["dice_gt_empty"]), help=f"{h['n_gt_empty']} images")
    c[4].metric("Images", f"{h['n_cases']:,}", help=f"{h['n_gt_nonempty']} with a non-empty ground truth, "
                f"{h['n_gt_empty']} empty")
    c[5].metric("Failed", f"{h['n_failed']:,}")
    st.info(f"**Empty-mask policy: {h['policy']}** — {h['rule']}.", icon="📏")
    ung, gate = summary.get("ungated"), summary.get("gate")
    if gate and ung:
        st.subheader("Gate vs no gate (same cases)")
        g = st.columns(4)
        g[0].metric(f"Mean Dice with gate ({gate['weights']} ≥ {_fmt(gate['threshold'], 2)})", _fmt(h["mean_dice"]))
        g[1].metric("Mean Dice without gate", _fmt(ung.get("mean_dice")))
        ne = [v for v in (ung.get("dice_gt_empty") or {}).values() if v is not None]
        g[2].metric("Dice · GT empty without gate", _fmt(ne[0] if len(ne) == 1 else None),
                    help="the images a false-positive mask hurts most")
        g[3].metric("Masks emptied by the gate", f"{ung.get('n_gated', 0):,}")
        gated_d, ungated_d = h["mean_dice"], ung.get("mean_dice")
        if gated_d is not None and ungated_d is not None and gated_d < ungated_d:
            st.warning(f"**The gate lowers mean Dice here** ({_fmt(gated_d)} with it vs {_fmt(ungated_d)} without, "
                       f"{_fmt(gated_d - ungated_d)}): it empties masks the segmenter got right more often than it "
                       "removes false positives on empty images. Try a lower gate threshold, or no gate.",
                       icon=":material/trending_down:")
    st.subheader("Per class")
    table = per_class_table(summary)
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in table.columns[1:]
                                if not c.startswith(("images", "GT "))})
    if summary.get("failed"):
        with st.expander(f"{summary.get('n_failed')} case(s) could not be evaluated"):
            for f in summary["failed"]:
                st.write(f"- `{f.get('case_id')}`: {f.get('error')}")
    with st.expander("Settings and timing"):
        st.json({"model": summary.get("model"), "settings": summary.get("settings"),
                 "timing": summary.get("timing"), "dataset": summary.get("dataset")}, expanded=False)


def distribution_section(per_image: pd.DataFrame) -> None:
    import plotly.express as px

    from engine.dashboard import dice_by_truth

    metrics = ["dice"] + [c for c in per_image.columns if c.startswith(("dice_", "iou_", "hd95_"))]
    metric = st.selectbox("Metric", metrics, key=state.Dashboard.DIST_METRIC)
    d = dice_by_truth(per_image, metric)
    a, b = st.columns([3, 2])
    a.plotly_chart(px.histogram(d, x="value", color="truth", nbins=20, barmode="overlay",
                                title=f"Per-image {metric}", labels={"value": metric}), key=state.Dashboard.HIST)
    b.plotly_chart(px.box(d, x="truth", y="value", points="all", hover_data=["case_id"],
                          title=f"{metric} by ground truth", labels={"value": metric}), key=state.Dashboard.BOX)
    with st.expander("Per-image table"):
        st.dataframe(per_image, hide_index=True, width="stretch")


def _open_in_browser(case_id: str, model: str | None, folder: str) -> None:
    from ui.nav import request_case

    request_case(case_id, "Case details", model=model, eval_folder=folder)


def worst_section(ds: Dataset, res: EvalResult) -> None:
    from engine.dashboard import worst_cases
    from engine.errors import WorkbenchError
    from engine.thumbnails import thumbnail_paths
    from ui.nav import BROWSER_PAGE, page_link, short_id, switch_page

    c = st.columns([2, 2, 3], vertical_alignment="bottom")
    n = int(c[0].selectbox("Cases", [6, 12, 24], index=1, key=state.Dashboard.WORST_N))
    only_pos = c[1].checkbox("Only non-empty ground truth", key=state.Dashboard.WORST_POS)
    c[2].caption("Prediction filled in class colours, ground truth outlined in white.")
    worst = worst_cases(res.per_image, n, only_gt_nonempty=only_pos)
    if worst.empty:
        st.info("No case with a defined Dice.")
        return
    ids = [i for i in worst["case_id"].astype(str) if i in ds]
    paths = thumbnail_paths(ds, ids, 192, "both", res.folder)
    model = res.summary.get("model")
    recs = worst.set_index(worst["case_id"].astype(str))
    cols = st.columns(6)
    for k, (cid, p) in enumerate(zip(ids, paths)):
        if k and k % 6 == 0:
            cols = st.columns(6)
        with cols[k % 6]:
            d = recs.loc[cid, "dice"]
            cap = f"{short_id(cid)} · Dice {_fmt(d)} · GT {int(recs.loc[cid, 'gt_area']):,} px"
            if isinstance(p, WorkbenchError):
                st.warning(f"{cid}: {p.message}", icon="⚠️")
            else:
                st.image(str(p), caption=cap, width="stretch")
            if st.button("Open in browser", key=f"{state.Dashboard.OPEN}_{cid}", width="stretch"):
                _open_in_browser(cid, model, str(res.folder))
                switch_page(BROWSER_PAGE)
    page_link(BROWSER_PAGE, "Dataset browser (opens the last chosen case)", "🗂️")


def sweep_section(res: EvalResult) -> None:
    import numpy as np
    import plotly.graph_objects as go

    from engine.dashboard import sweep_gates, sweep_matrix

    if res.sweep is None or len(res.sweep) == 0:
        st.info("This evaluation has no post-processing sweep (it was run with the sweep off).")
        return
    gates = sweep_gates(res.sweep)
    gate = st.selectbox("Gate", gates, key=state.Dashboard.SWEEP_GATE,
                        help="no gate: threshold + minimum area only; presence: drop images whose presence "
                             "probability is below the value; triplet: keep a mask only if its top probability "
                             "and area pass")
    post = ((res.summary.get("settings") or {}).get("post")) or {}
    base = (float(post.get("threshold", 0.5)), int(post.get("min_area", 0)))
    sm = sweep_matrix(res.sweep, gate, baseline=base)
    mat = sm["matrix"]
    z = mat.to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(z=z, x=[str(c) for c in mat.columns], y=[f"{t:g}" for t in mat.index],
                               colorscale="Viridis", colorbar={"title": "mean Dice"},
                               text=np.vectorize(lambda v: _fmt(v))(z), texttemplate="%{text}",
                               hovertemplate="threshold %{y}, min area %{x}: %{z:.4f}<extra></extra>"))
    b = sm["best"]
    fig.add_scatter(x=[str(b["min_area"])], y=[f"{b['threshold']:g}"], mode="markers", name="best",
                    marker={"symbol": "star", "size": 18, "color": "red", "line": {"color": "white", "width": 1}})
    if sm["baseline"] is not None:
        bl = sm["baseline"]
        fig.add_scatter(x=[str(bl["min_area"])], y=[f"{bl['threshold']:g}"], mode="markers", name="current setting",
                        marker={"symbol": "circle-open", "size": 20, "color": "white", "line": {"width": 3}})
    fig.update_layout(title=f"Mean Dice over threshold × minimum area ({gate})", xaxis_title="minimum area (px)",
                      yaxis_title="probability threshold", legend={"orientation": "h", "y": -0.2},
                      xaxis={"type": "category"}, yaxis={"type": "category"})
    st.plotly_chart(fig, key=state.Dashboard.SWEEP)
    sb = res.summary.get("sweep_best") or {}
    c = st.columns(3)
    c[0].metric("Best in this grid", _fmt(b["score"]), help=f"threshold {b['threshold']:g}, min area {b['min_area']}")
    if sm["baseline"] is not None:
        c[1].metric("Current setting", _fmt(sm["baseline"]["score"]),
                    help=f"threshold {base[0]:g}, min area {base[1]}")
    if sb:
        c[2].metric("Best overall", _fmt(sb.get("score")), delta=(
            f"{float(sb['score']) - float(sb['baseline']):+.4f} vs default" if sb.get("baseline") is not None
            and sb.get("score") is not None else None))
        st.caption(f"Sweep on {sb.get('n_images')} images (a bounded, evenly spaced subset); best overall: "
                   f"**{_describe_post(sb.get('config') or {})}**. Apply it with `python -m engine tune-post` "
                   "or in the model card.")


def _describe_post(cfg: dict[str, Any]) -> str:
    """One line for a post-processing config dict (threshold, min area, gates)."""
    parts = [f"threshold {cfg.get('threshold')}", f"min area {cfg.get('min_area')} px"]
    if cfg.get("keep_largest"):
        parts.append(f"keep {cfg['keep_largest']} largest")
    if cfg.get("presence_threshold") is not None:
        parts.append(f"presence ≥ {cfg['presence_threshold']}")
    trip = cfg.get("triplet")
    if trip:
        parts.append("triplet gate " + ", ".join(f"{k} {v}" for k, v in trip.items()))
    if cfg.get("fill_holes"):
        parts.append("fill holes")
    return ", ".join(parts)


def presence_section(summary: dict[str, Any]) -> None:
    import plotly.graph_objects as go

    p = summary.get("presence") or {}
    if not p:
        st.info("No presence metrics in this evaluation.")
        return
    st.caption(f"Image-level \"structure present?\" from the **{p.get('score', 'score')}**, positive when "
               f"≥ {p.get('threshold')}. {p.get('n_positive')} positive / {p.get('n_negative')} negative images.")
    c = st.columns(6)
    for col, (name, key) in zip(c, [("Sensitivity", "sensitivity"), ("Specificity", "specificity"),
                                    ("PPV", "ppv"), ("NPV", "npv"), ("ROC AUC", "roc_auc"),
                                    ("Average precision", "average_precision")]):
        col.metric(name, _fmt(p.get(key)))
    for note in p.get("notes") or []:
        st.caption(f"ℹ️ {note}")
    if p.get("auc_reason"):
        st.caption(f"ℹ️ {p['auc_reason']}")
    a, b, c2 = st.columns(3)
    roc = p.get("roc_curve") or {}
    if roc.get("fpr"):
        fig = go.Figure(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name="ROC"))
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "grey"}, name="chance")
        fig.update_layout(title=f"ROC (AUC {_fmt(p.get('roc_auc'))})", xaxis_title="false positive rate",
                          yaxis_title="true positive rate", showlegend=False)
        a.plotly_chart(fig, key=state.Dashboard.ROC)
    else:
        a.info("ROC curve undefined (needs positive and negative images).")
    pr = p.get("pr_curve") or {}
    if pr.get("recall"):
        fig = go.Figure(go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", name="PR"))
        fig.update_layout(title=f"Precision–recall (AP {_fmt(p.get('average_precision'))})", xaxis_title="recall",
                          yaxis_title="precision", showlegend=False)
        b.plotly_chart(fig, key=state.Dashboard.PR)
    else:
        b.info("PR curve undefined (needs positive images).")
    cm = p.get("confusion_matrix")
    if cm:
        fig = go.Figure(go.Heatmap(z=cm, x=["predicted empty", "predicted present"], y=["GT empty", "GT present"],
                                   text=cm, texttemplate="%{text}", colorscale="Blues", showscale=False))
        fig.update_layout(title="Confusion matrix (images)", yaxis={"autorange": "reversed"})
        c2.plotly_chart(fig, key=state.Dashboard.CM)


def slices_section(ds: Dataset, per_image: pd.DataFrame) -> None:
    import plotly.express as px

    from engine.dashboard import join_meta, slice_columns, slice_metrics
    from ui.caches import case_frame

    joined = join_meta(per_image, case_frame(ds))
    cols = slice_columns(joined)
    if not cols:
        st.info("Nothing to slice by (no DICOM sex/age/view, split or groups).")
        return
    c = st.columns(2)
    by = c[0].selectbox("Slice by", list(cols), format_func=cols.get, key=state.Dashboard.SLICE_BY)
    metrics = ["dice"] + [m for m in per_image.columns if m.startswith(("dice_", "iou_"))]
    metric = c[1].selectbox("Metric", metrics, key=state.Dashboard.SLICE_METRIC)
    table = slice_metrics(joined, by, metric)
    fig = px.bar(table, x=by, y="mean", text="n", title=f"Mean {metric} by {cols[by]} (bar label = images)",
                 labels={"mean": f"mean {metric}"})
    fig.update_xaxes(type="category")
    st.plotly_chart(fig, key=state.Dashboard.SLICE)
    st.dataframe(table, hide_index=True, width="stretch")


# ----------------------------------------------------------------------------- training runs

def training_section() -> None:

    from engine.dashboard import list_runs, load_history, preview_frames, run_card
    from ui.widgets import history_charts

    root = state.workspace().root / "runs"
    runs = list_runs(root)
    if not runs:
        st.info(f"No training runs in `{root}` yet. Train a model on the **Train** page (or "
                "`python -m engine train ...`).")
        return
    names = [r["name"] for r in runs]
    info = {r["name"]: r for r in runs}
    name = st.selectbox("Run", names, key=state.Dashboard.RUN,
                        format_func=lambda n: f"{n} · {info[n]['state']} · {info[n]['epochs'] or 0} epochs")
    run_dir = Path(info[name]["path"])
    hist = load_history(run_dir)
    if hist.empty or len(hist.columns) <= 1:
        st.info("This run has no finished epoch yet.")
    else:
        history_charts(hist, ("loss", "metrics", "lr"), key=state.Dashboard.HIST)
        if "best" in hist.columns and hist["best"].astype(bool).any():
            best = hist[hist["best"].astype(bool)].iloc[-1]
            st.caption(f"Best epoch {int(best['epoch'])}" + (f": val Dice {_fmt(best.get('val_dice'))}"
                                                           if "val_dice" in hist.columns else ""))
        with st.expander("History table"):
            st.dataframe(hist, hide_index=True, width="stretch")
    prev = preview_frames(run_dir)
    if prev["frames"] or prev["gif"]:
        st.subheader("Predictions epoch by epoch")
        g, s = st.columns(2)
        if prev["gif"]:
            g.image(str(prev["gif"]), caption="evolution.gif (image | ground truth | prediction)", width="stretch")
        frames = prev["frames"]
        if frames:
            epochs = [e for e, _ in frames]
            with s:
                ep = st.select_slider("Epoch", epochs, value=epochs[-1], key=state.Dashboard.EPOCH) if len(epochs) > 1 \
                    else epochs[0]
                st.image(str(dict(frames)[ep]), caption=f"epoch {ep}", width="stretch")
    card = run_card(run_dir)
    if card:
        with st.expander("Model card of the run (training info and metrics)"):
            st.json({k: card.get(k) for k in ("name", "training", "metrics", "description")}, expanded=False)


# ----------------------------------------------------------------------------- page

def render_dashboard() -> None:
    """The whole Metrics dashboard page body (call inside ``ui.widgets.guard``)."""
    from ui.caches import cached_eval
    from ui.widgets import dataset_required, guard

    ds = dataset_required()
    ev_tab, train_tab = st.tabs(["Evaluation", "Training runs"])
    with ev_tab:
        folder = eval_controls(ds)
        res = cached_eval(folder) if folder else None
        if folder and res is None:
            st.warning("That evaluation folder is incomplete or from another version; evaluate again.")
        if res is not None:
            honesty_banner(res.summary)
            t = st.tabs(["Summary", "Per image", "Worst cases", "Post-processing sweep", "Presence", "Slices"])
            with t[0], guard("Summary"):
                summary_section(res.summary)
            with t[1], guard("Per-image distribution"):
                distribution_section(res.per_image)
            with t[2], guard("Worst cases"):
                worst_section(ds, res)
            with t[3], guard("Sweep"):
                sweep_section(res)
            with t[4], guard("Presence"):
                presence_section(res.summary)
            with t[5], guard("Slices"):
                slices_section(ds, res.per_image)
    with train_tab, guard("Training runs"):
        training_section()
