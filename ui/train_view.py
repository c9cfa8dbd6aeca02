"""Streamlit glue of the Train page (pages/5_Train.py).

A form builds an :class:`engine.training.TrainConfig` (data, architecture, preprocessing, loss,
augmentation, optimisation, validation fold, device, model name); "Start training" hands it to
:func:`engine.jobs.start_training`, which runs ``python -m engine train`` in a separate process.
The page never trains itself and keeps nothing about runs in the session: the runs table and
the live panel (progress, loss/Dice curves, the latest validation preview, the evolution GIF,
the log) are read from the run folders on every refresh, so the page stays responsive while a
run goes on, survives reloads, and any browser tab sees the same runs. The live panel is an
``st.fragment`` that refreshes itself every :data:`REFRESH_SECONDS` while its run is active.

The form's values (:func:`form_values`) and their translation into a config (:func:`build_config`)
are kept apart so the translation is testable without a page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from ui import state
from ui.widgets import fmt_num

if TYPE_CHECKING:
    import pandas as pd

    from engine.datasets import Dataset
    from engine.training import TrainConfig

PAGE = "pages/5_Train.py"
DASHBOARD_PAGE = "pages/4_Metrics_dashboard.py"

TASKS = {"Segmentation model": "segment", "Presence classifier (gates a segmenter)": "classify"}
DEFAULT_CLASSIFIER = "cnn_small"
OTHER = "Another folder or manifest…"
REFRESH_SECONDS = 2.0
LOG_LINES = 40
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_ARCH = "unet_classic"
DEFAULT_ENCODER = "resnet18"

#: Augmentation switches shown beside the preset: label, the AugmentConfig fields they control,
#: and the probability used when the preset leaves all of them off.
AUG_TOGGLES: dict[str, tuple[str, tuple[str, ...], float]] = {
    "hflip": ("Horizontal flip", ("hflip",), 0.5),
    "vflip": ("Vertical flip", ("vflip",), 0.5),
    "affine": ("Shift / scale / rotate", ("shift_scale_rotate",), 0.5),
    "elastic": ("Elastic deformation", ("elastic",), 0.25),
    "intensity": ("Brightness / contrast / gamma", ("brightness_contrast", "gamma"), 0.5),
    "noise": ("Noise (speckle, Gaussian)", ("speckle", "gauss_noise"), 0.3),
}


def _fmt(v: Any, digits: int = 4) -> str:
    return fmt_num(v, digits)


# ----------------------------------------------------------------------------- data sources

def manifest_files(ds: Dataset) -> list[Path]:
    """Cleaned manifests exported by the Conflict review page (``<ds.workdir>/manifests/*.json``), newest first."""
    workdir = getattr(ds, "workdir", None)
    if not workdir:
        return []
    folder = Path(workdir) / "manifests"
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.json"), key=lambda p: (-p.stat().st_mtime, p.name))


def data_sources() -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Picker label → (path, dataset options): the current dataset, its cleaned manifests, the other
    demo datasets, and :data:`OTHER` (a typed path; path "")."""
    out: dict[str, tuple[str, dict[str, Any] | None]] = {}
    current = state.current_dataset_path()
    if current:
        out[f"Current dataset · {current}"] = (current, state.get(state.Shared.DATASET_OPTIONS) or None)
        try:
            from ui.loaders import load_dataset

            for m in manifest_files(load_dataset()):
                out[f"Cleaned manifest · {m.name}"] = (str(m), None)
        except Exception:  # noqa: BLE001 - an unreadable dataset just has no manifests to offer
            pass
    for label, p in state.demo_datasets().items():
        if p.is_dir() and str(p) != current:
            out[label] = (str(p), None)
    out[OTHER] = ("", None)
    return out


def _default_augment() -> str:
    """Preset matching the current dataset's modality (ultrasound speckle, X-ray contrast)."""
    try:
        from ui.loaders import load_dataset

        layout = load_dataset().layout if state.current_dataset_path() else ""
    except Exception:  # noqa: BLE001
        layout = ""
    return {"kaggle_uns": "ultrasound", "siim": "xray"}.get(layout, "light")


def default_name(data: str, arch: str) -> str:
    """``<data folder or manifest stem>-<arch>``, cut to a valid model name."""
    stem = Path(data).stem if data else "model"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{stem}-{arch}").strip("-._") or "model"
    return name[:80]


# ----------------------------------------------------------------------------- form → config

def augment_dict(preset: str, toggles: dict[str, bool]) -> dict[str, Any]:
    """The preset's :class:`~engine.augment.AugmentConfig` with the switches applied, as a dict."""
    from engine.augment import AugmentConfig

    aug = AugmentConfig.preset(preset).to_dict()
    for key, on in toggles.items():
        _, fields, default = AUG_TOGGLES[key]
        if not on:
            for f in fields:
                aug[f] = 0.0
        elif all(aug[f] == 0 for f in fields):
            for f in fields:
                aug[f] = default
    return aug


def build_config(v: dict[str, Any]) -> TrainConfig:
    """:class:`engine.training.TrainConfig` from the form values (:func:`form_values`).

    Raises:
        ConfigError: invalid values (the message says which and how to fix it).
    """
    from engine.augment import AugmentConfig, Preprocess
    from engine.models import ClassifierSpec, ModelSpec, is_custom
    from engine.splits import SplitSpec
    from engine.training import TrainConfig

    task = v.get("task", "segment")
    arch = v.get("arch") or DEFAULT_ARCH
    custom = is_custom(arch)
    spec = ModelSpec(arch=arch, encoder=None if custom else v.get("encoder"),
                     base_channels=int(v["base_channels"]) if custom and v.get("base_channels") else None,
                     presence_head=bool(v.get("presence_head")),
                     num_classes=2 if v["auto_classes"] else int(v["num_classes"]))
    extra: dict[str, Any] = {}
    if task == "classify":
        extra["classifier"] = ClassifierSpec(name=v.get("classifier") or DEFAULT_CLASSIFIER)
    return TrainConfig(
        task=task, positive_only=bool(v.get("positive_only")) and task == "segment", **extra,
        data=v["data"], dataset_options=v.get("dataset_options") or None, model=spec,
        auto_classes=bool(v["auto_classes"]),
        preprocess=Preprocess(size=(int(v["size"][0]), int(v["size"][1])), resize_policy=v["resize_policy"],
                              median_filter=int(v["median_filter"])),
        augment=AugmentConfig.from_dict(augment_dict(v["augment"], v.get("augment_toggles") or {})),
        loss=v["loss"], epochs=int(v["epochs"]), batch_size=int(v["batch_size"]), lr=float(v["lr"]),
        scheduler=v["scheduler"], early_stopping_patience=int(v["patience"]),
        split=SplitSpec(k=int(v["folds"]), val_fold=int(v["val_fold"]), seed=int(v["seed"])),
        seed=int(v["seed"]), amp=v["amp"], device=v["device"], name=v["name"], export=True,
        replace_model=bool(v.get("replace_model")),
        description=v.get("description") or f"Trained on the Train page from {Path(v['data']).name or v['data']}.",
    )


# ----------------------------------------------------------------------------- the form

def form_values() -> dict[str, Any]:
    """Draw the form and return its values (the input of :func:`build_config`)."""
    from engine.augment import AUGMENT_PRESETS, RESIZE_POLICIES, AugmentConfig
    from engine.losses import list_losses
    from engine.models import architecture_info, is_custom, list_encoders
    from engine.training import AMP_MODES, SCHEDULERS

    v: dict[str, Any] = {}
    st.markdown("**Data**")
    sources = data_sources()
    labels = list(sources)
    src = st.selectbox("Training data", labels, key=state.Train.SOURCE,
                       help="The current dataset (Home page), a cleaned manifest exported by the Conflict "
                            "review page, a demo dataset, or any folder / manifest on this machine.")
    path, opts = sources[src]
    if src == OTHER:
        path = st.text_input("Folder or manifest path", key=state.Train.PATH,
                             placeholder="/data/ultrasound-nerve-segmentation or …/manifests/clean-….json").strip()
        if path and not Path(path).expanduser().exists():
            st.warning(f"`{path}` does not exist on this machine.", icon=":material/warning:")
    v["data"], v["dataset_options"] = path, opts

    st.markdown("**Model**")
    task_label = st.radio("Task", list(TASKS), horizontal=True, key=state.Train.TASK,
                          help="a presence classifier answers 'is the structure in this image?' and gates a "
                               "segmenter (two-stage pipeline); train the segmenter on positive images only to match")
    v["task"] = TASKS[task_label]
    info = architecture_info()
    archs = list(info)
    c1, c2, c3 = st.columns([2, 2, 1])
    if v["task"] == "classify":
        from engine.models.classifier import CLASSIFIERS

        names = sorted(CLASSIFIERS)
        v["classifier"] = c1.selectbox("Classifier backbone", names, index=names.index(DEFAULT_CLASSIFIER),
                                       key=state.Train.CLASSIFIER, format_func=lambda n: n,
                                       help="all build offline with random weights")
        c2.caption(CLASSIFIERS[v["classifier"]])
        arch = v["classifier"]
        v["arch"], v["encoder"], v["base_channels"], v["presence_head"] = DEFAULT_ARCH, None, None, False
    else:
        arch = c1.selectbox("Architecture", archs, index=archs.index(DEFAULT_ARCH) if DEFAULT_ARCH in archs else 0,
                            key=state.Train.ARCH)
        v["arch"] = arch
    if v["task"] == "classify":
        pass
    elif is_custom(arch):
        v["encoder"] = None
        v["base_channels"] = c2.number_input("Base channels", 2, 256, 16, step=2, key=state.Train.BASE_CHANNELS,
                                             help="width of the first level; the paper's width is 64 "
                                                  "(32 for the dilated FCN)")
    else:
        encoders = list_encoders()
        v["encoder"] = c2.selectbox("Encoder", encoders, key=state.Train.ENCODER,
                                    index=encoders.index(DEFAULT_ENCODER) if DEFAULT_ENCODER in encoders else 0)
        v["base_channels"] = None
    if v["task"] == "segment":
        v["presence_head"] = c3.checkbox("Presence head", key=state.Train.PRESENCE,
                                         help="an image-level 'structure present' output (gates empty predictions)")
        v["positive_only"] = c3.checkbox("Positive images only", key=state.Train.POSITIVE_ONLY,
                                         help="train on images with a mask only (validation keeps all); pair the "
                                              "model with a presence-classifier gate, as the nerve case study does")
        st.caption(f"`{arch}`: {info.get(arch, '')}." + ("" if is_custom(arch) else
                   " The encoder starts from random weights: no pretrained weights are downloaded."))
    c1, c2 = st.columns(2)
    v["auto_classes"] = c1.checkbox("Classes from the dataset's labels (auto)", True, key=state.Train.AUTO_CLASSES)
    v["num_classes"] = None if v["auto_classes"] else c2.number_input(
        "Classes including background", 2, 64, 2, key=state.Train.CLASSES)

    st.markdown("**Preprocessing and augmentation**")
    c1, c2, c3, c4 = st.columns(4)
    h = c1.number_input("Input height", 16, 2048, 128, step=16, key=state.Train.HEIGHT)
    w = c2.number_input("Input width", 16, 2048, 128, step=16, key=state.Train.WIDTH)
    v["size"] = (int(h), int(w))
    v["resize_policy"] = c3.selectbox("Resize policy", list(RESIZE_POLICIES), key=state.Train.RESIZE,
                                      help="resize: stretch to the input size; letterbox: keep the aspect ratio "
                                           "and pad; pad: full resolution padded to a multiple of 32")
    v["median_filter"] = c4.selectbox("Median filter", [0, 3, 5, 7], key=state.Train.MEDIAN,
                                      format_func=lambda k: "off" if k == 0 else f"{k}×{k}",
                                      help="de-speckling before resizing (helps on ultrasound)")
    c1, c2 = st.columns([1, 3])
    presets = list(AUGMENT_PRESETS)
    dflt = _default_augment()
    preset = c1.selectbox("Augmentation preset", presets, index=presets.index(dflt), key=state.Train.AUGMENT)
    v["augment"] = preset
    base = AugmentConfig.preset(preset).to_dict()
    toggles: dict[str, bool] = {}
    with c2:
        cols = st.columns(3)
        for i, (key, (label, fields, _)) in enumerate(AUG_TOGGLES.items()):
            on = any(base[f] > 0 for f in fields)
            toggles[key] = cols[i % 3].checkbox(label, on, key=f"{state.Train.AUG}_{key}_{preset}")
    v["augment_toggles"] = toggles

    st.markdown("**Optimisation and validation**")
    losses = list_losses()
    c1, c2, c3, c4 = st.columns(4)
    v["loss"] = c1.selectbox("Loss", losses, index=losses.index("bce_dice") if "bce_dice" in losses else 0,
                             key=state.Train.LOSS)
    v["epochs"] = c2.number_input("Epochs", 1, 10_000, 20, key=state.Train.EPOCHS)
    v["batch_size"] = c3.number_input("Batch size", 1, 1024, 8, key=state.Train.BATCH)
    v["lr"] = c4.number_input("Learning rate", 1e-7, 1.0, 1e-3, format="%g", step=1e-4, key=state.Train.LR)
    c1, c2, c3, c4 = st.columns(4)
    scheds = list(SCHEDULERS)
    v["scheduler"] = c1.selectbox("LR schedule", scheds, key=state.Train.SCHEDULER,
                                  help="plateau: halve on a validation-Dice plateau; cosine; one-cycle; none")
    v["patience"] = c2.number_input("Early-stopping patience", 0, 1000, 10, key=state.Train.PATIENCE,
                                    help="stop after this many epochs without a better validation Dice (0 = off)")
    v["folds"] = c3.number_input("Folds", 2, 20, 5, key=state.Train.FOLDS,
                                 help="grouped by subject/patient, stratified by 'mask present'")
    v["val_fold"] = c4.number_input("Validation fold", 0, 19, 0, key=state.Train.VAL_FOLD, help="0 … folds − 1")
    c1, c2, c3, c4 = st.columns(4)
    dev = state.current_device()
    v["device"] = c1.selectbox("Device", list(DEVICES), index=DEVICES.index(dev) if dev in DEVICES else 0,
                               key=state.Train.DEVICE)
    amps = list(AMP_MODES)
    v["amp"] = c2.selectbox("Mixed precision (CUDA)", amps, index=amps.index("auto"), key=state.Train.AMP)
    v["seed"] = c3.number_input("Seed", 0, 2**31 - 1, 0, key=state.Train.SEED)
    suggested = default_name(v["data"], arch)
    v["name"] = c4.text_input("Model name", key=state.Train.NAME, placeholder=suggested).strip() or suggested
    return v


def _name_notes(name: str) -> bool:
    """Say whether the model name is taken; returns True when the run may start with it (a workspace
    model of that name is replaced only when the user ticks the box; a shipped model's never)."""
    from engine.training.loop import export_name_problem

    why = export_name_problem(name, False, state.workspace())
    if why is None:
        return True
    if why.startswith("a shipped"):
        st.error(f"A shipped model is already named **{name}**: a model trained under this name would be hidden "
                 "behind it. Choose another model name.", icon=":material/block:")
        return False
    st.warning(f"A model named **{name}** already exists in the workspace. Choose another model name, or replace "
               "it when this run ends.", icon=":material/warning:")
    return bool(st.checkbox(f"Replace the existing model {name}", key=state.Train.REPLACE))


def form_section(rows: list[dict[str, Any]]) -> None:
    """The "New training run" form: config JSON preview and the Start button (``rows``: :func:`_jobs`)."""
    from engine.jobs import start_training

    v = form_values()
    name_ok = _name_notes(v["name"])
    v["replace_model"] = name_ok and bool(st.session_state.get(state.Train.REPLACE))
    cfg = build_config(v)  # ConfigError → shown by the guard around the section
    active = [r for r in rows if r["active"]]
    if active:
        st.caption(f":material/info: {len(active)} run(s) in progress ({', '.join(r['run'] for r in active)}); "
                   "a new run shares the machine with them.")
    c1, c2 = st.columns([1, 3], vertical_alignment="center")
    start = c1.button("Start training", type="primary", key=state.Train.START, disabled=not v["data"] or not name_ok)
    show = c2.toggle("Show config JSON", key=state.Train.SHOW_JSON)
    if show:
        st.json(cfg.to_dict(), expanded=True)
    st.caption("The run is a separate process: it goes on when you leave this page or close the browser, and "
               "also when the app is stopped; cancel it here.")
    if start:
        with st.spinner("Checking the configuration and starting…"):
            job = start_training(cfg, state.workspace())
        st.session_state[state.Train.RUN_PENDING] = job.run_dir.name
        st.session_state[state.Train.NOTICE] = (f"Started **{job.run_dir.name}** (process {job.pid}). It runs in the "
                                        "background: you can leave this page and come back.")
        st.rerun()


# ----------------------------------------------------------------------------- runs

def _jobs() -> list[dict[str, Any]]:
    from engine.jobs import list_jobs

    return list_jobs(state.workspace())


def runs_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The runs as a DataFrame for ``st.dataframe``."""
    import pandas as pd

    return pd.DataFrame([{
        "run": r["run"], "model": r["name"], "state": r["state"],
        "epoch": f"{r['epoch']}/{r['epochs']}" if r["epochs"] else "–",
        "best": None if r["best_metric"] is None else round(float(r["best_metric"]), 4),
        "metric": r["metric"] or "", "device": r["device"] or "",
        "started": (r["started"] or "")[:19].replace("T", " "),
    } for r in rows])


def _charts(run_dir: Path) -> None:
    from engine.dashboard import load_history
    from ui.widgets import history_charts

    hist = load_history(run_dir)
    if hist.empty or len(hist.columns) <= 1:
        st.caption("The loss and Dice curves appear after the first epoch.")
        return
    history_charts(hist, ("loss", "metrics"), key=state.Train.CHART, height=320)


def _previews(run_dir: Path) -> None:
    from engine.dashboard import preview_frames

    prev = preview_frames(run_dir)
    if not prev["frames"] and not prev["gif"]:
        return
    c1, c2, _ = st.columns([2, 2, 1])
    if prev["frames"]:
        ep, path = prev["frames"][-1]
        c1.image(str(path), caption=f"Latest validation preview, epoch {ep} (image | ground truth | prediction)",
                 width="stretch")
    if prev["gif"]:
        c2.image(str(prev["gif"]), caption="Evolution over the epochs (evolution.gif)", width="stretch")


def _finished_notes(info: dict[str, Any]) -> None:
    from ui.nav import page_link

    name = info.get("exported_name")
    if name and info.get("task") == "classify":
        st.success(f"The presence classifier **{name}** now appears in the gate pickers (Predict, Metrics "
                   "dashboard) and as `--gate` on the command line.", icon=":material/inventory_2:")
        return
    if name:
        st.success(f"The model **{name}** now appears in the model picker (Home and every page).",
                   icon=":material/inventory_2:")
        c1, c2 = st.columns([1, 2], vertical_alignment="center")
        if state.current_model() == name:
            c1.caption(f"**{name}** is the current model.")
        elif c1.button(f"Use {name} as the current model", key=state.Train.USE_MODEL):
            from ui.loaders import refresh_weights

            refresh_weights()  # the model pickers see the just-exported model now
            state.put(state.Shared.MODEL, name)
            st.rerun(scope="app")
        with c2:
            page_link(DASHBOARD_PAGE, "Metrics dashboard: evaluate it, and this run's curves", ":material/monitoring:")


def panel_body(run_dir: str, was_active: bool) -> None:
    """The live panel of one run (run as a fragment; reruns the whole page when the run ends)."""
    from engine.jobs import cancel, job_status, tail_log

    run = Path(run_dir)
    info = job_status(run, log_lines=0)
    if was_active and not info["active"]:
        st.rerun(scope="app")  # the table, the form and the refresh timer catch up
    s = info["state"]
    m = st.columns(4)
    m[0].metric("State", s)
    m[1].metric("Epoch", f"{info['epoch']} / {info['epochs']}" if info["epochs"] else "–")
    metric = info["metric"] or "val_dice"
    m[2].metric(f"Best {metric}", _fmt(info["best_metric"]),
                help=f"at epoch {info['best_epoch']}" if info["best_epoch"] else None)
    m[3].metric("Train loss", _fmt(info["train_loss"]), help="running mean of the current epoch")
    spe = info["steps_per_epoch"]
    text = (f"epoch {info['epoch']}/{info['epochs']} · step {info['step']}/{spe}" if spe and info["epochs"]
            else "preparing") + (f" · {info['message']}" if info["message"] else "")
    st.progress(float(info["fraction"]), text=text)
    if s in ("failed", "died"):
        st.error(f"The run {s}: {info.get('error') or info['message']}", icon=":material/error:")
    elif s == "cancelled":
        st.warning(f"The run was cancelled: {info['message']}", icon=":material/stop_circle:")
    elif s == "finished":
        msg = info["message"] or "finished"
        st.success(msg[:1].upper() + msg[1:], icon=":material/check_circle:")
    if info["active"]:
        c1, c2, c3 = st.columns([1, 1, 3], vertical_alignment="center")
        if info["cancel_requested"]:
            c1.caption(":material/stop_circle: Cancel requested: stopping after the current step…")
        elif c1.button("Cancel run", key=state.Train.CANCEL, disabled=not _may_train(),
                       help=None if _may_train() else "cancelling a run needs the annotator role"):
            cancel(run, wait=False)  # the run stops after its current step; forced after a grace period
            c1.caption(":material/stop_circle: Cancel requested: stopping after the current step…")
        c2.button("Refresh", key=state.Train.REFRESH, help="the click itself refreshes the panel")
        c3.caption(f"Process {info['pid']} · device {info['device'] or 'not chosen yet'} · "
                   f"updated {(info['updated'] or '')[11:19]} UTC")
    _charts(run)
    _previews(run)
    if s in ("finished", "cancelled"):
        _finished_notes(info)
    with st.expander("Log (train.log, last lines)", expanded=s in ("failed", "died")):
        st.code(tail_log(run, LOG_LINES) or "(empty)", language="text")
    with st.expander("Run folder and configuration"):
        st.caption(f"`{run}`")
        cfg = run / "config.json"
        if cfg.is_file():
            from engine.fsutil import read_json

            st.json(read_json(cfg), expanded=False)


def runs_section(rows: list[dict[str, Any]]) -> None:
    """The runs table, the run picker and the live panel of the picked run (``rows``: :func:`_jobs`)."""
    root = state.workspace().root / "runs"
    if not rows:
        st.info(f"No training runs in `{root}` yet: start one above.")
        return
    st.dataframe(runs_table(rows), hide_index=True, width="stretch")
    names = [r["run"] for r in rows]
    by_name = {r["run"]: r for r in rows}
    pending = st.session_state.pop(state.Train.RUN_PENDING, None)
    if pending in by_name:
        st.session_state[state.Train.RUN] = pending
    elif st.session_state.get(state.Train.RUN) not in by_name:
        st.session_state[state.Train.RUN] = names[0]
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    run = c1.selectbox("Run", names, key=state.Train.RUN, help="newest first; the table above gives each run's state")
    active = by_name[run]["active"]
    auto = c2.toggle("Auto-refresh", True, key=state.Train.AUTO_REFRESH,
                     help=f"update the panel every {REFRESH_SECONDS:g} s while the run is active")
    st.subheader(run)
    fragment = st.fragment(panel_body, run_every=REFRESH_SECONDS if (active and auto) else None)
    fragment(by_name[run]["run_dir"], active)


# ----------------------------------------------------------------------------- page

def _may_train() -> bool:
    from ui import auth

    return auth.can("annotator")


def render_train() -> None:
    """The whole Train page body (call inside ``ui.widgets.guard``)."""
    from ui.widgets import guard

    notice = st.session_state.pop(state.Train.NOTICE, None)
    if notice:
        st.success(notice, icon=":material/rocket_launch:")
    from ui.loop_view import loop_link

    loop_link("Retraining on corrected labels? The Correction loop page fine-tunes with the same held-out cases "
              "and shows what moved")
    rows = _jobs()
    from ui import auth

    if not auth.can("annotator"):  # team mode: viewers look at runs but start nothing on the server
        auth.role_note("annotator", "Starting or cancelling a training run")
    else:
        with st.expander("New training run", expanded=not any(r["active"] for r in rows)), \
                guard("Training configuration"):
            form_section(rows)
    st.subheader("Runs")
    with guard("Training runs"):
        runs_section(rows)
