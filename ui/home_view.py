"""The Home page: chooses the dataset and model every other page uses and offers the built-in demo
data on first run (demo mode). Rendered by ``app.py``'s navigation (:mod:`ui.navigation`) as the
first sidebar entry, "Home"."""

from __future__ import annotations

import streamlit as st

from ui import state
from ui.auth import dataset_allowed, team_mode
from ui.loaders import (
    demo_ready,
    generate_demo,
    load_dataset,
    open_new_dataset,
    pixel_limit_note,
    refresh_datasets,
    weights_table,
)
from ui.widgets import guard, page_setup, streamlit_progress


def render_home() -> None:
    """The whole Home page (a page of :func:`ui.navigation.app_navigation`)."""
    page_setup("Medical image segmentation workbench", intro=(
        "Demo segmentation models, browse datasets, find and resolve contradictory ground truth, "
        "correct masks by hand and compare models side by side — for ultrasound nerve images, "
        "chest X-ray DICOMs and lung X-rays."))

    left, right = st.columns([3, 2], gap="large")

    with left:
        st.subheader("Dataset")
        if not demo_ready() and not team_mode():  # team mode: an admin provides the data, no demo offer
            st.info("The built-in demo data (synthetic ultrasound and chest X-ray phantoms) is not generated yet.")
            if st.button("Generate demo data", type="primary", key=state.Home.GEN_DEMO):
                with guard("Generating the demo data"):
                    report, bar = streamlit_progress("Generating phantoms")
                    generate_demo(progress=report)
                    bar.empty()
                    refresh_datasets()
                    st.rerun()
        choices: dict[str, str] = {label: str(p) for label, p in state.demo_datasets().items() if p.is_dir()}
        for p in state.recent_datasets():
            if p not in choices.values():
                choices[f"Recent: {p}"] = p
        if team_mode():  # only folders under the admin's data roots
            choices = {k: v for k, v in choices.items() if dataset_allowed(v)}
            st.caption("Team mode: folders open only under the data roots an admin set (Admin page).")
        choices["Another folder or manifest…"] = ""
        current = state.current_dataset_path()
        labels = list(choices)
        index = next((i for i, lab in enumerate(labels) if choices[lab] == current), 0)

        def _on_pick() -> None:  # runs before the rerun, so the sidebar shows the new dataset at once
            chosen = choices.get(st.session_state[state.Home.DATASET_CHOICE], "")
            if chosen:
                state.put(state.Shared.DATASET_OPTIONS, {})
                state.put(state.Shared.DATASET, chosen)

        picked = st.selectbox("Open", labels, index=index, key=state.Home.DATASET_CHOICE, on_change=_on_pick)
        path = choices[picked]
        if not path:
            path = st.text_input("Folder or manifest path on this machine", key=state.Home.DATASET_PATH,
                                 placeholder="/data/ultrasound-nerve-segmentation").strip()
            st.caption("Layouts detected automatically: Kaggle UNS (`train/*_mask.tif`, `train_masks.csv`), "
                       "SIIM (DICOM tree + RLE CSV), paired folders (`images/` + `masks/`, or `_mask` suffixes), "
                       "cleaned manifests (`.json`).")
            label_names = st.text_input("Class names (optional, comma-separated, ids 1..K-1)", key=state.Home.LABELS)
            if path and st.button("Open folder", key=state.Home.OPEN):
                opts = {"label_names": [s.strip() for s in label_names.split(",") if s.strip()]} if label_names else {}
                with guard("Opening the folder"):
                    with st.spinner("Indexing…"):
                        open_new_dataset(path, opts)  # validate before adopting it as the current dataset
                    state.put(state.Shared.DATASET_OPTIONS, opts)
                    state.put(state.Shared.DATASET, path)
                    state.remember_dataset(path)
                    st.rerun()
        elif path != current:  # first visit: adopt the default choice
            state.put(state.Shared.DATASET_OPTIONS, {})
            state.put(state.Shared.DATASET, path)

        if state.current_dataset_path():
            with guard("Opening the dataset"):
                with st.spinner("Indexing…"):
                    ds = load_dataset()
                s = ds.summary()
                c1, c2, c3, c4 = st.columns(4)
                c1.metric("Cases", f"{s['n_cases']:,}")
                c2.metric("With mask", f"{s['n_with_mask']:,}")
                c3.metric("Empty masks", f"{s['n_empty']:,}",
                          help="labelled cases whose ground truth is empty")
                c4.metric("Groups", f"{s['n_groups']:,}", help="subjects / patients")
                st.caption(f"Layout **{s['layout']}** · classes: "
                           + ", ".join(f"{k} = {v}" for k, v in s["labels"].items())
                           + (" · **synthetic demo data**" if "demo_data" in str(ds.root) else ""))
                if s["bad_files"]:
                    with st.expander(f"{len(s['bad_files'])} file(s) could not be used"):
                        st.caption(pixel_limit_note())
                        for b in s["bad_files"][:200]:
                            st.write(f"- `{b['path']}`: {b['reason']}")
                for n in s["notes"]:
                    st.caption(f"ℹ️ {n}")
                if st.button("Rescan folder", key=state.Home.RESCAN):
                    refresh_datasets()
                    st.rerun()

    with right:
        st.subheader("Model")
        with guard("Listing models"):
            if state.Home.SHOW_WEAK in st.session_state:  # the toggle below, before the pickers read it
                state.put(state.Shared.SHOW_WEAK_MODELS, bool(st.session_state[state.Home.SHOW_WEAK]))
            table = weights_table()
            good = [w for w in table if "error" not in w]
            if not good:
                st.info("No weights found in `weights/` or the workspace. Train one on the **Train** page.")
            else:
                names = [w["name"] for w in good]
                cur = state.current_model()
                name = st.selectbox("Default model for all pages", names,
                                    index=names.index(cur) if cur in names else 0, key=state.Home.MODEL,
                                    on_change=lambda: state.put(state.Shared.MODEL, st.session_state[state.Home.MODEL]))
                state.put(state.Shared.MODEL, name)
                w = next(x for x in good if x["name"] == name)
                st.markdown(f"**{w['name']}** · {w['arch']}{' / ' + w['encoder'] if w.get('encoder') else ''} · "
                            f"{w['size_mb']} MB · {w['origin']}"
                            + (" · synthetic training data" if w.get("synthetic") else ""))
                if w.get("description"):
                    st.write(w["description"])
                head = " · presence head" if w.get("presence_head") else ""
                st.write("Classes: " + ", ".join(w["classes"][1:]) + head)
                m = w.get("metrics") or {}
                if m:
                    with st.expander("Model card metrics"):
                        st.json(m, expanded=False)
            weak = [w for w in weights_table(include_weak=True) if w.get("weak") and "error" not in w]
            if weak:
                shown = st.toggle(f"Show {len(weak)} failed or weak model(s) in the model pickers",
                                  value=bool(state.get(state.Shared.SHOW_WEAK_MODELS, False)),
                                  key=state.Home.SHOW_WEAK,
                                  help="Models trained here whose run failed or was cancelled, or whose validation "
                                       "Dice is useless: " + "; ".join(f"{w['name']}: {w['weak']}" for w in weak))
                state.put(state.Shared.SHOW_WEAK_MODELS, shown)
            bad = [w for w in table if "error" in w]
            for w in bad:
                st.warning(f"{w['name']}: {w['error']}")
        st.subheader("Device")
        dev = st.selectbox("Run models on", ["auto", "cpu", "cuda", "mps"],
                           index=["auto", "cpu", "cuda", "mps"].index(state.current_device()), key=state.Home.DEVICE,
                           on_change=lambda: state.put(state.Shared.DEVICE, st.session_state[state.Home.DEVICE]))
        state.put(state.Shared.DEVICE, dev)
        from ui.widgets import device_label

        st.caption(f"In use: `{device_label()}`")

    st.divider()
    st.markdown(
        "**Pages** — *Predict*: upload images and segment them · *Compare models*: side by side with a "
        "disagreement map · *Dataset browser*: filter, thumbnails, details, EDA · *Metrics dashboard*: "
        "evaluation of a model on a dataset · *Train*: train a model in the background · *Conflict review*: "
        "resolve contradictory masks on near-duplicate images · *Mask editor*: correct masks, with versions.")
