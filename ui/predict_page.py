"""Predict page: widgets and layout (the page file only sets up and guards)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from ui import predict_view as pv
from ui import state
from ui.loaders import classifier_names, load_dataset, load_predictor
from ui.widgets import domain_warning, guard, legend, model_picker

if TYPE_CHECKING:
    from engine.checkpoint import ModelCard
    from engine.inference import Predictor
    from engine.postprocess import PostProcessConfig


RLE_CAPTIONS = {
    "kaggle": "Kaggle UNS: 1-based `start length` pairs, column-major, empty = blank",
    "siim": "SIIM-ACR: first offset 0-based, later offsets relative to the previous run's end, empty = -1",
}


def controls(card: ModelCard, presence: float | None) -> PostProcessConfig:
    """Post-processing controls (keyed per model, so each model starts from its card's defaults);
    ``presence``: the presence-head threshold chosen with the gate (:func:`gate_controls`)."""
    post = card.postprocess
    m = card.name
    c1, c2, c3, c4 = st.columns(4)
    use_triplet = True
    if post.triplet is not None:
        use_triplet = c4.toggle("Card's triplet gate", value=True, key=f"{state.Predict.TRIPLET}_{m}",
                                help="SIIM 1st-place gate from the model card; replaces the threshold")
    threshold = c1.slider("Threshold", 0.01, 0.99, float(post.threshold), 0.01, key=f"{state.Predict.THRESHOLD}_{m}",
                          disabled=post.triplet is not None and use_triplet,
                          help="a class wins a pixel when its probability reaches this")
    min_area = c2.number_input("Minimum area (px)", 0, 1_000_000, int(post.min_area), step=10,
                               key=f"{state.Predict.MIN_AREA}_{m}", help="drop connected regions smaller than this")
    keep = c3.number_input("Keep largest k regions (0 = all)", 0, 100, int(post.keep_largest),
                           key=f"{state.Predict.KEEP_LARGEST}_{m}")
    fill = c3.checkbox("Fill holes", value=bool(post.fill_holes), key=f"{state.Predict.FILL_HOLES}_{m}")
    return pv.post_config(post, threshold, min_area, keep, fill, presence, use_triplet)


def demo_buttons() -> None:
    """'Try a demo image' buttons fed by the current dataset."""
    path = state.current_dataset_path()
    if not path:
        st.caption("No dataset chosen: pick one on **Home** to get demo images.")
        return
    try:
        ds = load_dataset()
    except Exception as exc:  # noqa: BLE001 - demo images are optional
        st.caption(f"Demo images unavailable: {exc}")
        return
    cases = pv.demo_cases(ds, 3)
    if not cases:
        return
    demo = st.session_state.setdefault(state.Predict.DEMO_INPUTS, [])
    cols = st.columns(len(cases) + 2)
    for i, case in enumerate(cases):
        tag = "with mask" if case.has_mask else ("empty mask" if case.labelled else "unlabelled")
        short = case.case_id if len(case.case_id) <= 16 else "…" + case.case_id[-8:]
        if cols[i].button(f"Try demo image {short} ({tag})", key=f"{state.Predict.DEMO}_{i}", help=case.case_id):
            item = {"dataset": str(ds.root), "case_id": case.case_id}
            if item not in demo:
                demo.append(item)
            st.session_state[state.Predict.SELECTED] = case.case_id
    if cols[len(cases)].button("Try all three", key=state.Predict.DEMO_ALL):
        for case in cases:
            item = {"dataset": str(ds.root), "case_id": case.case_id}
            if item not in demo:
                demo.append(item)
    if demo and cols[len(cases) + 1].button("Clear demo images", key=state.Predict.DEMO_CLEAR):
        demo.clear()


def demo_inputs() -> list[pv.InputImage]:
    out = []
    for item in st.session_state.get(state.Predict.DEMO_INPUTS, []):
        try:
            ds = load_dataset(item["dataset"], options=None)
            out.append(pv.dataset_input(ds, ds.case(item["case_id"])))
        except Exception as exc:  # noqa: BLE001 - a moved dataset just drops its demo images
            st.warning(f"Demo image {item['case_id']} is no longer available: {exc}")
    return out


def batch_section(items: list[pv.PredictedImage], card: ModelCard) -> None:
    labels = card.labels
    st.dataframe(pv.summary_frame(items, labels), hide_index=True, width="stretch")
    kaggle = [(pv.image_ids(it.inp.name, it.meta)["kaggle"], it.mask) for it in items]
    siim = [(pv.image_ids(it.inp.name, it.meta)["siim"], it.mask) for it in items]
    masks = [(it.inp.name, it.mask) for it in items]
    c1, c2, c3 = st.columns(3)
    c1.download_button("All: Kaggle UNS RLE CSV", lambda: pv.rle_csv_bytes(kaggle, "kaggle"),
                       "predictions_kaggle_uns.csv", "text/csv", key=state.Predict.CSV_KAGGLE, on_click="ignore",
                       help="img,pixels — 1-based 'start length' pairs, column-major (foreground = any class)")
    c2.download_button("All: SIIM RLE CSV", lambda: pv.rle_csv_bytes(siim, "siim"),
                       "predictions_siim.csv", "text/csv", key=state.Predict.CSV_SIIM, on_click="ignore",
                       help="ImageId,EncodedPixels — relative offsets, -1 when empty "
                            "(ImageId = SOPInstanceUID for DICOM)")
    c3.download_button("All: masks (ZIP of PNG)", lambda: pv.masks_zip_bytes(masks), "masks.zip",
                       "application/zip", key=state.Predict.ZIP, on_click="ignore")


GATE_NONE = "(no gate)"
GATE_HEAD = "the model's presence head"


def gate_controls(model: str, card: ModelCard) -> tuple[Predictor, float | None, float | None]:
    """The one presence-gate control: none, the model's own presence head, or a presence classifier
    (default: what the card names), with its threshold. Returns ``(predictor, classifier gate
    threshold or None, presence-head threshold or None)``."""
    names = classifier_names()
    card_gate = card.gate.weights if card.gate else None
    head = bool(card.spec.presence_head)
    post = card.postprocess
    if not names and not card_gate and not head:
        return load_predictor(model, gate=None), None, None
    options = ([GATE_NONE] + ([GATE_HEAD] if head else []) + names
               + ([card_gate] if card_gate and card_gate not in names else []))
    default = card_gate or (GATE_HEAD if head and post.presence_threshold else GATE_NONE)
    c1, c2 = st.columns([2, 3])
    choice = c1.selectbox("Presence gate", options, index=options.index(default), key=f"{state.Predict.GATE}_{model}",
                          help="decides whether the structure is in the image at all; below the threshold the "
                               "mask is emptied — with the segmenter's own presence head, or a separate presence "
                               "classifier (two-stage pipeline)")
    off = 0.0 if head else None  # one gate at a time: another choice turns the presence head off
    if choice == GATE_NONE:
        return load_predictor(model, gate=None), None, off
    if choice == GATE_HEAD:
        t = c2.slider("Gate threshold (P(present) below this → empty mask)", 0.0, 1.0,
                      float(post.presence_threshold or 0.5), 0.01, key=f"{state.Predict.PRESENCE_THRESHOLD}_{model}")
        return load_predictor(model, gate=None), None, t
    predictor = load_predictor(model, gate=choice)
    t = c2.slider("Gate threshold (P(present) below this → empty mask)", 0.0, 1.0,
                  float(predictor.gate_threshold), 0.01, key=f"{state.Predict.GATE_THRESHOLD}_{model}_{choice}")
    return predictor, t, off


def detail(item: pv.PredictedImage, card: ModelCard, predictor: Predictor) -> None:
    from engine.inference import gate_rejects

    labels = card.labels
    fg = {k: v for k, v in labels.items() if k != 0}
    stem = item.inp.name.rsplit(".", 1)[0]
    c1, c2, c3 = st.columns([2, 1, 2])
    alpha = c1.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key=state.Predict.ALPHA)
    contour = c2.toggle("Outline", value=True, key=state.Predict.CONTOUR)
    heat_cls = c3.selectbox("Heat-map class", list(fg), format_func=lambda k: fg[k], key=state.Predict.HEAT_CLS) \
        if len(fg) > 1 else next(iter(fg))
    hidden = pv.class_toggles(labels, "predict")
    legend({k: v for k, v in labels.items() if k not in hidden})
    gt, gt_labels = pv.ground_truth(item.inp)
    domain_warning(card, item.img, item.meta, gt_labels)
    show_gt = gt is not None and st.toggle("Show ground truth", value=False, key=state.Predict.SHOW_GT)
    panels = st.columns(3 if show_gt else 2)
    with panels[0]:
        pv.show_image(pv.overlay_rgb(item.img, item.mask, alpha, hidden, contour), f"{item.inp.name}: prediction")
    with panels[1]:
        from engine.visualize import heatmap

        pv.show_image(heatmap(item.res.probs[heat_cls], item.img), f"probability of {fg[heat_cls]}")
    if show_gt:
        with panels[2]:
            pv.show_image(pv.overlay_rgb(item.img, gt, alpha, (), contour), "ground truth")
    h, w = item.mask.shape
    areas = pv.class_areas(item.mask, labels)
    mcols = st.columns(len(areas) + 3 + (gt is not None))
    for col, (name, px) in zip(mcols, areas.items()):
        col.metric(f"{name} area", f"{px:,} px", f"{100 * px / (h * w):.2f} % of the image",
                   delta_color="off", delta_arrow="off")
    i = len(areas)
    if item.res.gate is not None:
        mcols[i].metric("Presence probability (classifier)", f"{item.res.gate:.3f}",
                        "gated: mask emptied"
                        if not item.mask.any() and gate_rejects(item.res.gate, item.gate_threshold)
                        else "passed the gate", delta_color="off", delta_arrow="off",
                        help=f"P(present) from the gating classifier {predictor.gate.card.name}")
    else:
        mcols[i].metric("Presence probability", f"{item.res.presence:.3f}" if item.res.presence is not None else "—",
                        help=None if predictor.has_presence else "this model has no presence head")
    mcols[i + 1].metric("Model time", pv.fmt_seconds(item.res.model_s),
                        help="network forward pass (incl. TTA) when the model ran")
    mcols[i + 2].metric("Total time", pv.fmt_seconds(item.total_s),
                        "cached probabilities" if item.res.cached else "model ran now",
                        delta_color="off", delta_arrow="off",
                        help="decode + prediction + post-processing on this run")
    if gt is not None:
        from engine.compare import pairwise_dice

        d = pairwise_dice(item.mask, gt)["foreground"]
        mcols[i + 3].metric("Dice vs ground truth", f"{d:.3f}", help="foreground; two empty masks count as 1")
    d1, d2, d3, d4 = st.columns(4)
    # The mask PNG and the RLE texts are small: computed in this run (not deferred), so a click right
    # after the threshold moved serves this run's file instead of a deferred one the rerun dropped.
    rles = pv.rle_strings(item.mask)
    d1.download_button("Mask PNG", pv.mask_png_bytes(item.mask), f"{stem}_mask.png", "image/png",
                       key=state.Predict.DL_MASK, on_click="ignore",
                       help="8-bit palette PNG: pixel value = class id, shown in class colours")
    d2.download_button("Overlay PNG", lambda: pv.overlay_png_bytes(item.img, item.mask, alpha, hidden, contour),
                       f"{stem}_overlay.png", "image/png", key=state.Predict.DL_OVERLAY, on_click="ignore")
    d3.download_button("RLE (Kaggle UNS)", rles["kaggle"], f"{stem}_rle_kaggle.txt",
                       "text/plain", key=state.Predict.DL_RLE_KAGGLE, on_click="ignore")
    d4.download_button("RLE (SIIM)", rles["siim"], f"{stem}_rle_siim.txt",
                       "text/plain", key=state.Predict.DL_RLE_SIIM, on_click="ignore")
    # Lazy expanders (on_change="rerun"): their content is computed and drawn only while open, so a
    # new upload is not held up by code blocks and tables nobody has asked to see.
    rle_box = st.expander("Run-length encodings (foreground = any class)", key=state.Predict.RLE_OPEN,
                          on_change="rerun")
    if rle_box.open:
        rle = pv.rle_strings(item.mask)
        with rle_box:
            for conv, about in RLE_CAPTIONS.items():
                shown, more = pv.rle_preview(rle[conv])
                st.caption(about + (f" · first {len(shown.split()) // 2:,} runs shown, {more:,} more in the "
                                    "download" if more else ""))
                st.code(shown or "(empty)", language="text")
    if pv.is_dicom(item.meta):
        meta_box = st.expander("DICOM metadata (patient-identifying fields hidden)", key=state.Predict.META_OPEN,
                               on_change="rerun")
        if meta_box.open:
            with meta_box:
                st.dataframe(pv.safe_meta_rows(item.meta), hide_index=True, width="stretch")
    else:
        rows = pv.safe_meta_rows(item.meta)
        st.caption(" · ".join(f"{r['field']}: {r['value']}" for r in rows))


def main() -> None:
    c1, c2, c3 = st.columns([2, 2, 3])
    ds_labels = None
    if state.current_dataset_path():
        try:
            ds_labels = dict(load_dataset().labels)
        except Exception:  # noqa: BLE001 - the demo buttons report dataset problems
            ds_labels = None
    with c1:
        model = model_picker("Model", key=state.Predict.MODEL, dataset_labels=ds_labels)
    if not model:
        return
    base_card = load_predictor(model, gate=None).card
    from engine.inference import TTA_MODES

    with c2:
        tta = st.radio("Test-time augmentation", TTA_MODES, horizontal=True, key=state.Predict.TTA,
                       help="flip: average with the mirrored image; flip4: also vertical and both (4× slower)")
    with c3:
        st.caption(f"**{base_card.name}** · classes: {', '.join(base_card.foreground.values())}"
                   + (" · presence head" if base_card.spec.presence_head else "")
                   + (" · trained on synthetic data" if base_card.synthetic else ""))
        if base_card.description:
            st.caption(base_card.description[:300])
    uploads = st.file_uploader("Images (TIFF, DICOM, PNG, JPEG) — one or many", type=pv.UPLOAD_TYPES,
                               accept_multiple_files=True, key=state.Predict.UPLOAD)
    demo_buttons()
    with st.expander("Threshold, post-processing and presence gate", icon=":material/tune:"):
        predictor, gate_threshold, presence = gate_controls(model, base_card)
        card = predictor.card
        post = controls(card, presence)
    inputs = pv.unique_inputs(pv.upload_inputs(uploads) + demo_inputs())
    if not inputs:
        st.info("Upload images above, or press **Try demo image** to segment an image of the current dataset.")
        return
    if len(inputs) > pv.MAX_BATCH:
        st.warning(f"{len(inputs)} images: only the first {pv.MAX_BATCH} are processed here; use "
                   "`python -m engine predict` for large batches.")
        inputs = inputs[: pv.MAX_BATCH]
    bar = st.progress(0.0, text="Predicting…") if len(inputs) > 1 else None
    items, errors = pv.run_batch(predictor, inputs, tta, post,
                                 progress=(lambda d, t, m: bar.progress(d / t, text=m)) if bar else None,
                                 gate_threshold=gate_threshold)
    if bar:
        bar.empty()
    for e in errors:
        st.error(e, icon="⚠️")
    if not items:
        return
    names = [it.inp.name for it in items]
    if len(items) > 1:
        st.subheader(f"{len(items)} images")
        batch_section(items, card)
        from engine.visualize import fit_square
        from ui.nav import short_id

        with guard("Gallery"):
            thumbs = [fit_square(pv.overlay_rgb(it.img, it.mask, 0.45), 150) for it in items[:24]]
            st.image(thumbs, caption=[short_id(n) for n in names[:24]], width=150)
    request = st.session_state.pop(state.Predict.SELECTED, None)
    if request in names:
        st.session_state[state.Predict.PICK] = request
    elif st.session_state.get(state.Predict.PICK) not in names:
        st.session_state[state.Predict.PICK] = names[0]
    pick = st.selectbox("Image", names, key=state.Predict.PICK) if len(items) > 1 else names[0]
    st.subheader(pick)
    detail(items[names.index(pick)], card, predictor)


def render() -> None:
    """Draw the page (called inside the page's error guard)."""
    main()
