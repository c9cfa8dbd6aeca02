"""Cached loaders: datasets, predictors, model list, demo data generation.

``st.cache_resource`` keeps one Dataset/Predictor per key for the whole server, so pages
switch instantly; the engine's own disk caches make a cold open fast too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from ui import state

if TYPE_CHECKING:
    import numpy as np
    from streamlit.runtime.uploaded_file_manager import UploadedFile

    from engine.datasets import Dataset
    from engine.inference import Predictor
    from engine.progress import ProgressFn


@st.cache_resource(show_spinner=False, max_entries=6)
def _open_dataset(path: str, options_json: str, refresh: int) -> Dataset:
    from engine.datasets import open_dataset

    return open_dataset(path, options=json.loads(options_json) or None)


def load_dataset(path: str | None = None, options: dict[str, Any] | None = None) -> Dataset:
    """The (cached) case index of ``path`` (default: the current dataset). Raises WorkbenchError."""
    path = path or state.current_dataset_path()
    if not path:
        from engine.errors import LayoutError
        from ui.auth import team_mode

        raise LayoutError("no dataset chosen", hint="pick one on the home page" + (
            "" if team_mode() else " (or generate the demo data)"))
    from ui.auth import check_dataset_path

    check_dataset_path(path)  # team mode: only under the admin's data roots (symlinks resolved)
    opts = options if options is not None else state.get(state.Shared.DATASET_OPTIONS, {}) or {}
    ds = _open_dataset(str(path), json.dumps(opts, sort_keys=True), int(state.get(state.Shared.REFRESH, 0)))
    if str(path) == str(state.current_dataset_path()):
        match_model_to(ds, str(path))
    return ds


def match_model_to(ds: Dataset, key: str) -> str | None:
    """The first time a dataset is the current one, make the current model one whose classes match the
    dataset's (when the current model's do not and such a model exists), so every page defaults to a
    model made for these images; a model the user then picks is kept. Returns the model switched to.
    ``key``: the dataset as this session names it (its path)."""
    if state.get(state.Shared.MODEL_FOR) == key:
        return None
    state.put(state.Shared.MODEL_FOR, key)
    from engine.evaluation import classes_match

    table = {w["name"]: dict(enumerate(w.get("classes") or [])) for w in weights_table() if "error" not in w}
    cur = state.current_model()
    if not ds.labels or (cur in table and classes_match(table[cur], ds.labels)):
        return None
    best = next((n for n in ranked_model_names(ds.labels) if classes_match(table.get(n, {}), ds.labels)), None)
    if best is None:
        return None
    state.put(state.Shared.MODEL, best)
    st.session_state[state.Home.MODEL] = best  # Home's picker shows it too (its widget value would win)
    state.put(state.Shared.MODEL_SWITCHED, (cur, best, key))
    return best


def open_new_dataset(path: str, options: dict[str, Any] | None = None) -> Dataset:
    """:func:`load_dataset` for a folder the user just typed: refuses one with no usable images."""
    opened = load_dataset(path, options or {})
    if len(opened) == 0:
        from engine.errors import LayoutError

        raise LayoutError(f"no usable images found (layout {opened.layout}, "
                          f"{len(opened.bad_files)} unreadable file(s))", path=path,
                          hint="check the folder; `python -m engine info PATH` lists what was skipped")
    return opened


def dataset_key(ds: Dataset) -> str:
    """A dataset's identity for caches and widget keys: its manifest file, else its folder."""
    return str(getattr(ds, "manifest_path", None) or ds.root)


@st.cache_data(show_spinner=False, max_entries=8)
def _case_image(ds_key: str, case_id: str, stamp: tuple, _ds: Dataset) -> np.ndarray:
    return _ds.load_image_float(case_id)


def case_image(ds: Dataset, case_id: str) -> np.ndarray:
    """float32 (C,H,W) image of a case, cached per image file stamp (reruns don't re-read it)."""
    from engine.fsutil import file_stamp

    c = ds.case(case_id)
    try:
        stamp = file_stamp(Path(c.image_path))
    except OSError:
        stamp = (0, 0)
    return _case_image(dataset_key(ds), case_id, stamp, ds)


def predict_case(model: str, ds: Dataset, case_id: str) -> np.ndarray:
    """uint8 (H,W) prediction of one dataset case with ``model``, mapped to the dataset's class ids
    (cached in the session per model/card, case, image stamp and device; one kept)."""
    import numpy as np

    from engine.checkpoint import CARD_FILE, resolve_weights
    from engine.evaluation import class_mapping
    from engine.fsutil import file_stamp

    c = ds.case(case_id)
    card_mtime = (resolve_weights(model) / CARD_FILE).stat().st_mtime
    key = (model, card_mtime, case_id, file_stamp(Path(c.image_path)), state.current_device())
    cache: dict = st.session_state.setdefault(state.Browser.LIVE_PREDICTIONS, {})
    if key not in cache:
        pred = load_predictor(model)
        res = pred.predict(ds.load_image_float(c))
        lut = class_mapping(pred.card.labels, ds.labels)
        cache.clear()  # keep one: predictions are big
        cache[key] = np.asarray(lut[res.mask])
    return cache[key]


def pixel_limit_note() -> str:
    """One line on the pixel limit images are checked against before decoding (and how to change it)."""
    from engine.io.limits import ENV_VAR, max_pixels

    return (f"Images whose header claims more than {max_pixels():,} pixel values are refused before decoding "
            f"(setting: environment variable `{ENV_VAR}`, e.g. `make run {ENV_VAR}=200000000`).")


def refresh_datasets() -> None:
    """Force the next :func:`load_dataset` to rescan (the disk cache keeps it cheap)."""
    state.put(state.Shared.REFRESH, int(state.get(state.Shared.REFRESH, 0)) + 1)


@st.cache_resource(show_spinner=False, max_entries=6)
def _predictor(name: str, device: str, mtime: float, gate: str | None = "card",
               gate_threshold: float | None = None) -> Predictor:
    from engine.inference import Predictor

    return Predictor.from_weights(name, device=device, gate=gate, gate_threshold=gate_threshold)


def load_predictor(name: str, device: str | None = None, gate: str | None = "card") -> Predictor:
    """A cached :class:`engine.inference.Predictor` (reloaded when its card changes).

    ``gate``: ``"card"`` = the presence classifier the card names, None = no gate, or a classifier name."""
    from engine.checkpoint import CARD_FILE, resolve_weights

    folder = resolve_weights(name)
    mtime = (folder / CARD_FILE).stat().st_mtime
    return _predictor(str(folder), device or state.current_device(), mtime, gate)


@st.cache_data(show_spinner=False, ttl=10)
def _classifier_table(workspace_root: str) -> list[dict[str, Any]]:
    from engine.checkpoint import list_weights
    from engine.workspace import Workspace

    return list_weights(Workspace(workspace_root), kind="classify")


def classifier_names() -> list[str]:
    """Presence classifiers (gates for the two-stage pipeline) in the search path."""
    return [w["name"] for w in _classifier_table(str(state.workspace().root)) if "error" not in w]


def ranked_model_names(dataset_labels: dict[int, str] | None) -> list[str]:
    """Model names, those whose classes match ``dataset_labels`` first (engine.evaluation.rank_models_for)."""
    from engine.evaluation import rank_models_for

    return rank_models_for(weights_table(), dataset_labels)


@st.cache_data(show_spinner=False, ttl=10)
def _weights_table(workspace_root: str) -> list[dict[str, Any]]:
    from engine.checkpoint import list_weights
    from engine.workspace import Workspace

    return list_weights(Workspace(workspace_root))


def weights_table(include_weak: bool | None = None) -> list[dict[str, Any]]:
    """``engine.checkpoint.list_weights()`` for the current workspace, refreshed every 10 s
    (models exported by the Train page appear without a restart). Models trained here whose run failed
    or whose validation Dice is useless (``weak``) are left out unless ``include_weak`` (default: the
    Home page's "show them" toggle)."""
    table = _weights_table(str(state.workspace().root))
    if include_weak is None:
        include_weak = bool(state.get(state.Shared.SHOW_WEAK_MODELS, False))
    return table if include_weak else [w for w in table if not w.get("weak")]


def refresh_weights() -> None:
    """Make the model pickers see a just-exported model now (they re-list every 10 s anyway)."""
    _weights_table.clear()


def model_names(with_errors: bool = False) -> list[str]:
    return [w["name"] for w in weights_table() if with_errors or "error" not in w]


def demo_ready() -> bool:
    root = state.demo_root()
    return (root / "nerve").is_dir() and (root / "ptx").is_dir()


def generate_demo(progress: ProgressFn | None = None) -> Path:
    """Generate the demo phantoms into :func:`ui.state.demo_root` (default scale)."""
    from engine.phantoms import generate_demo as gen

    root = state.demo_root()
    gen(root, scale="default", progress=progress)
    return root


def save_upload(uploaded: UploadedFile) -> Path:
    """Store an ``st.file_uploader`` file under the workspace and return its path: content-addressed,
    a sanitised name, permissions 0600, deleted after ``$SEGWB_UPLOAD_TTL_HOURS`` (default 24 h;
    expired uploads are removed on each upload) — see :func:`engine.phi.save_upload`."""
    from engine.phi import save_upload as _save

    return _save(str(uploaded.name), uploaded.getvalue(), state.workspace().root)
