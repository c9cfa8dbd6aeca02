"""Compare models page: widgets and layout (the page file only sets up and guards)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import streamlit as st

from ui import predict_view as pv
from ui import state
from ui.loaders import load_dataset, load_predictor
from ui.widgets import domain_warning, guard, model_picker, streamlit_progress

if TYPE_CHECKING:
    import pandas as pd

    from engine.datasets import Dataset
    from engine.evaluation import EvalResult


def current_dataset() -> Dataset | None:
    if not state.current_dataset_path():
        st.info("No dataset chosen yet. Pick one on the **Home** page (the demo phantoms work out of the box).")
        return None
    with guard("Opening the dataset"):
        return load_dataset()
    return None


def case_picker(ds: Dataset, key: str) -> str:
    """Select a case; the choice is shared with the dataset table through session state."""
    ids = ds.case_ids
    cur = st.session_state.get(state.Compare.CASE)
    if cur in ids:
        st.session_state[key] = cur
    elif st.session_state.get(key) not in ids:
        st.session_state[key] = next((c.case_id for c in ds.cases if c.has_mask), ids[0])

    def changed():
        st.session_state[state.Compare.CASE] = st.session_state[key]

    return st.selectbox("Case", ids, key=key, on_change=changed)


def one_image(names: Sequence[str]) -> None:
    from engine.inference import TTA_MODES, finish_mask

    c1, c2 = st.columns(2)
    src = c1.radio("Image from", ["Current dataset", "Upload"], horizontal=True, key=state.Compare.SRC)
    tta = c2.radio("Test-time augmentation", TTA_MODES, horizontal=True, key=state.Compare.TTA)
    gt = gt_labels = None
    if src == "Current dataset":
        ds = current_dataset()
        if ds is None:
            return
        if not ds.cases:
            st.info("The current dataset has no images.")
            return
        case_id = case_picker(ds, state.Compare.CASE_SELECT)
        inp = pv.dataset_input(ds, ds.case(case_id))
        gt, gt_labels = pv.ground_truth(inp)
    else:
        up = st.file_uploader("Image (TIFF, DICOM, PNG, JPEG)", type=pv.UPLOAD_TYPES, key=state.Compare.UPLOAD)
        if up is None:
            st.info("Upload an image to compare the models on it.")
            return
        inp = pv.upload_inputs([up])[0]
    try:
        img, meta = pv.decode_image(inp)
    except Exception as exc:  # noqa: BLE001 - shown with the file's name
        st.error(pv.error_text(exc, inp.name), icon="⚠️")
        return
    masks, labels = {}, {}
    ds_labels = dict(load_dataset().labels) if src == "Current dataset" else None
    with st.spinner("Predicting…"):
        for name in names:
            pred = load_predictor(name)
            domain_warning(pred.card, img, meta, ds_labels)
            res = pv.predict_probs(pred, inp, img, tta)
            masks[name] = finish_mask(res.probs, pred.post_default, presence=res.presence, gate=res.gate,
                                      gate_threshold=pred.gate_threshold)
            if res.gate is not None:
                st.caption(f"**{name}**: gated by {pred.gate.card.name}, P(present) = {res.gate:.3f} "
                           f"(threshold {pred.gate_threshold:.2f})")
            labels[name] = pred.card.labels
    st.caption("Each model uses its card's default post-processing (and its card's presence-classifier gate, "
               "if it names one).")
    pv.render_side_by_side(img, masks, labels, gt, gt_labels, key=state.Compare.ONE_IMAGE_VIEW)


def over_dataset(names: Sequence[str]) -> None:
    from engine.compare import select_cases
    from engine.inference import TTA_MODES

    ds = current_dataset()
    if ds is None:
        return
    n_lab = sum(c.labelled for c in ds.cases)
    if n_lab == 0:
        st.info("The current dataset has no ground truth; compare models on single images instead.")
        return
    modes = {"First N cases": "first", "Random sample of N": "random", "All labelled cases": "all"}
    c1, c2, c3, c4 = st.columns([2, 1, 1, 2])
    mode = modes[c1.radio("Cases", list(modes), key=state.Compare.MODE)]
    limit = int(c2.number_input("N", 1, max(1, n_lab), min(50, n_lab), key=state.Compare.N, disabled=mode == "all"))
    seed = int(c3.number_input("Seed", 0, 10_000, 0, key=state.Compare.SEED, disabled=mode != "random"))
    tta = c4.radio("Test-time augmentation", TTA_MODES, horizontal=True, key=state.Compare.DS_TTA)
    case_ids = select_cases(ds, limit, mode, seed)
    st.caption(f"Comparing **{len(case_ids)} of {n_lab}** labelled cases"
               + ("" if len(case_ids) == n_lab else " (a cap keeps big datasets quick; statistics describe "
                  "this subset only)")
               + ". Predictions are cached on disk per model and reused from the Metrics dashboard when "
                 "an evaluation covers these cases.")
    settings = {"dataset": str(ds.root), "models": list(names), "cases": case_ids, "tta": tta}
    if st.button("Compare on these cases", type="primary", key=state.Compare.GO):
        st.session_state[state.Compare.RUN] = settings
    if st.session_state.get(state.Compare.RUN) != settings:
        cached = all(pv.find_evaluation(ds, load_predictor(n).card, case_ids, tta) is not None for n in names)
        if not cached:
            st.info("Press **Compare on these cases** to predict them with every model (progress shown).")
            return
    report, bar = streamlit_progress("Evaluating models")
    results = pv.evaluate_models(ds, names, case_ids, tta, progress=report)
    bar.progress(1.0, text="Comparing masks")
    df = pv.comparison_table(ds, results, case_ids)
    bar.empty()
    table(df, ds, results)


def table(df: pd.DataFrame, ds: Dataset, results: dict[str, EvalResult]) -> None:
    from engine.compare import read_prediction
    from engine.evaluation import prediction_path

    letters = df.attrs["models"]
    pairs = df.attrs["pairs"]
    ok = df[df["error"] == ""]
    cols = st.columns(len(pairs) + len(letters) + 1)
    for col, (c, label) in zip(cols, pairs.items()):
        col.metric(f"Mean Dice {c[5:].upper()}", f"{ok[c].mean():.3f}", help=label)
    for col, (letter, name) in zip(cols[len(pairs):], letters.items()):
        col.metric(f"{letter.upper()} vs ground truth", f"{ok[f'dice_gt_{name}'].mean():.3f}", help=name)
    cols[-1].metric("Cases with disagreement > 0.5", f"{int((ok['disagreement'] > 0.5).sum())} / {len(ok)}")
    st.caption("Models: " + " · ".join(f"**{k.upper()}** = {v}" for k, v in letters.items())
               + ". Disagreement = 1 − mean inter-model Dice (foreground); two empty masks agree (Dice 1).")
    bad = df[df["error"] != ""]
    if len(bad):
        with st.expander(f"{len(bad)} case(s) could not be compared"):
            st.dataframe(bad[["case_id", "error"]], hide_index=True, width="stretch")
    show = ok.drop(columns=["error"])
    fmt = {c: st.column_config.NumberColumn(format="%.3f") for c in show.columns
           if c.startswith("dice") or c == "disagreement"}
    event = st.dataframe(show, hide_index=True, width="stretch", height=320, column_config=fmt,
                         on_select="rerun", selection_mode="single-row", key=state.Compare.TABLE)
    rows = list(event.selection.rows) if event is not None else []
    last = st.session_state.get(state.Compare.TABLE_LAST)
    if rows and rows != last and rows[0] < len(show):
        st.session_state[state.Compare.CASE] = str(show.iloc[rows[0]]["case_id"])
    st.session_state[state.Compare.TABLE_LAST] = rows
    ids = [str(c) for c in show["case_id"]]
    if not ids:
        return
    cur = st.session_state.get(state.Compare.CASE)
    st.session_state[state.Compare.OPEN_CASE] = cur if cur in ids else ids[0]

    def changed():
        st.session_state[state.Compare.CASE] = st.session_state[state.Compare.OPEN_CASE]

    cid = st.selectbox("Open case (or click a row)", ids, key=state.Compare.OPEN_CASE, on_change=changed)
    st.session_state[state.Compare.CASE] = cid
    st.subheader(f"Case {cid}")
    inp = pv.dataset_input(ds, ds.case(cid))
    img, _ = pv.decode_image(inp)
    gt, gt_labels = pv.ground_truth(inp)
    masks = {n: read_prediction(prediction_path(results[n].folder, cid)) for n in letters.values()}
    pv.render_side_by_side(img, masks, {n: ds.labels for n in masks}, gt, gt_labels,
                           key=state.Compare.DATASET_CASE_VIEW)


def _dataset_labels() -> dict[int, str] | None:
    """The current dataset's label map, or None (no dataset / it cannot be opened)."""
    if not state.current_dataset_path():
        return None
    try:
        return dict(load_dataset().labels)
    except Exception:  # noqa: BLE001 - the tabs report dataset problems themselves
        return None


def main() -> None:
    from engine.evaluation import rank_models_for
    from ui.loaders import weights_table

    labels = _dataset_labels()
    table_ = weights_table()
    ranked = rank_models_for(table_, labels)
    classes = {w["name"]: dict(enumerate(w.get("classes") or [])) for w in table_ if "error" not in w}
    from engine.evaluation import classes_match

    matching = [n for n in ranked if not labels or classes_match(classes.get(n, {}), labels)]
    cur = state.current_model()
    default = ([cur] if cur in matching else []) + [n for n in matching if n != cur]
    names = model_picker("Models (two or three)", key=state.Compare.MODELS, multi=True,
                         default=default[:2] or ranked[:1], max_selections=3, dataset_labels=labels)
    if labels and len(matching) < 2:
        st.caption(f"Only {len(matching)} model(s) segment this dataset's classes "
                   f"({', '.join(v for k, v in sorted(labels.items()) if k)}); others are listed after them.")
    if not names:
        return
    if len(names) < 2:
        st.info("Pick at least two models to compare.")
        return
    tab1, tab2 = st.tabs(["One image", "Over the dataset"])
    with tab1:
        with guard("Comparing on one image"):
            one_image(names)
    with tab2:
        with guard("Comparing over the dataset"):
            over_dataset(names)


def render() -> None:
    """Draw the page (called inside the page's error guard)."""
    main()
