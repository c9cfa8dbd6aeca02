"""Shared widgets: page setup, error guard, pickers, legend, progress adapter."""

from __future__ import annotations

import contextlib
import traceback
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import streamlit as st

from ui import state

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from streamlit.delta_generator import DeltaGenerator

    from engine.checkpoint import ModelCard
    from engine.datasets import Dataset
    from engine.progress import ProgressFn


EDITOR_TITLE = "Mask editor"  # the one page that keeps a case claim while open


def page_setup(title: str, icon: str = "🩻", intro: str | None = None) -> None:
    """``set_page_config``, the sign-in gate (:func:`ui.auth.gate`: a browser that is not signed in
    sees only the sign-in form), the URL context (:mod:`ui.context`), title and a sidebar status
    block (user, dataset, model, device)."""
    from ui import auth, context

    st.set_page_config(page_title=f"{title} · Segmentation workbench", page_icon=icon, layout="wide")
    ident = auth.gate()
    context.restore()
    if title != EDITOR_TITLE:
        auth.release_claim()  # leaving the editor ends this session's claim on its case
    st.title(title)
    if intro:
        st.caption(intro)
    auth.identity_sidebar(ident)
    if state.current_dataset_path():
        context.publish(dataset=state.current_dataset_path())
    with st.sidebar:
        ds = state.current_dataset_path()
        st.markdown("**Dataset**  \n" + (f"`{_short(ds)}`" if ds else "_none — choose one on Home_"))
        model = state.current_model()
        if not model:  # nothing picked yet: the pickers default to the first available model
            from ui.loaders import model_names

            names = model_names()
            model = names[0] if names else None
        st.markdown("**Model**  \n" + (f"`{model}`" if model else "_none available_"))
        switched = state.get(state.Shared.MODEL_SWITCHED)
        if switched and switched[1] == model and switched[2] == str(ds):
            st.caption("matched to this dataset's classes" + (f" (was {switched[0]})" if switched[0] else ""))
        st.markdown(f"**Device**  \n`{device_label()}`")


def fmt_num(v: Any, digits: int = 4, keep_text: bool = False) -> str:
    """A number for a metric tile: ``digits`` decimals; ``"n/a"`` for None and NaN. A value that is
    not a number gives ``"n/a"``, or itself with ``keep_text``."""
    if v is None:
        return "n/a"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v) if keep_text else "n/a"
    return "n/a" if f != f else f"{f:.{digits}f}"


def _short(path: str, n: int = 42) -> str:
    return path if len(path) <= n else "…" + path[-(n - 1):]


@st.cache_resource(show_spinner=False)
def _device_label(pref: str) -> str:
    from engine.preprocess import select_device

    try:
        dev = select_device(pref)
    except Exception as exc:  # noqa: BLE001 - shown, not raised
        return f"{pref} (unavailable: {exc})"
    if dev.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return dev.type


def device_label() -> str:
    return _device_label(state.current_device())


@contextlib.contextmanager
def guard(what: str = "") -> Iterator[None]:
    """Show errors as readable messages instead of tracebacks.

    Project errors (bad file, bad folder, bad config) show their message, which names the
    file and the fix. Anything else shows a short message with details folded away.
    """
    from engine.errors import WorkbenchError

    try:
        yield
    except WorkbenchError as exc:
        st.error(f"{what + ': ' if what else ''}{exc}", icon="⚠️")
    except Exception as exc:  # noqa: BLE001 - last line of defence; st.stop/st.rerun are BaseExceptions
        st.error(f"{what + ': ' if what else ''}unexpected error ({type(exc).__name__}: {exc}). "
                 "Your saved work is not affected; please report this with the details below.", icon="⚠️")
        with st.expander("Details for a bug report"):
            st.code("".join(traceback.format_exception(exc))[-4000:], language="text")


def show_error(exc: BaseException) -> None:
    """Render one error like :func:`guard` does."""
    with guard():
        raise exc


def streamlit_progress(text: str = "Working…") -> tuple[ProgressFn, DeltaGenerator]:
    """An ``engine`` progress callback drawing an ``st.progress`` bar; returns (callback, bar)."""
    bar = st.progress(0.0, text=text)

    def report(done: int, total: int, message: str = "") -> None:
        frac = min(1.0, done / total) if total else 0.0
        bar.progress(frac, text=f"{message or text} ({done}/{total})" if total else (message or text))

    return report, bar


def legend(labels: dict[int, str], skip_background: bool = True) -> None:
    """Coloured chips naming each class."""
    from engine.visualize import class_colour

    chips = []
    for k in sorted(labels):
        if skip_background and k == 0:
            continue
        r, g, b = class_colour(k)
        chips.append(f"<span style='display:inline-block;margin-right:12px'><span style='display:inline-block;"
                     f"width:12px;height:12px;background:rgb({r},{g},{b});border:1px solid #555;"
                     f"vertical-align:middle;margin-right:4px'></span>{labels[k]}</span>")
    st.markdown(" ".join(chips), unsafe_allow_html=True)


def colour_legend(items: dict[str, tuple[int, int, int]], counts: dict[str, int] | None = None) -> None:
    """Legend for arbitrary named colours (e.g. the disagreement map)."""
    chips = []
    for name, (r, g, b) in items.items():
        if counts is not None and name not in counts:
            continue
        n = f" ({counts[name]:,} px)" if counts and name in counts else ""
        chips.append(f"<div><span style='display:inline-block;width:12px;height:12px;background:rgb({r},{g},{b});"
                     f"border:1px solid #555;vertical-align:middle;margin-right:6px'></span>{name}{n}</div>")
    st.markdown("".join(chips), unsafe_allow_html=True)


def model_picker(label: str = "Model", key: str = "model_picker", multi: bool = False,
                 default: Sequence[str] | None = None, max_selections: int | None = None,
                 dataset_labels: dict[int, str] | None = None) -> str | list[str] | None:
    """Select one (or several) weights by name; shows nothing but a hint when there are none.

    With ``dataset_labels`` the models whose classes match the dataset come first and are the
    default (a nerve model is never paired with a pneumothorax model by default)."""
    from engine.evaluation import classes_match
    from ui.loaders import ranked_model_names, weights_table

    names = ranked_model_names(dataset_labels)
    if not names:
        st.info("No model weights found. Ship them in `weights/` or train one on the Train page.")
        return [] if multi else None
    matching = names
    if dataset_labels:
        classes = {w["name"]: dict(enumerate(w.get("classes") or [])) for w in weights_table() if "error" not in w}
        matching = [n for n in names if classes_match(classes.get(n, {}), dataset_labels)]
    if multi:
        dflt = [n for n in (default or []) if n in names] or (matching or names)[: min(2, len(matching or names))]
        return st.multiselect(label, names, default=dflt, key=key, max_selections=max_selections)
    cur = state.current_model()
    if cur not in names or (dataset_labels and matching and cur not in matching):
        cur = (matching or names)[0]
    return st.selectbox(label, names, index=names.index(cur), key=key)


def dataset_required() -> Dataset:
    """Load the current dataset or stop the page with a helpful message."""
    from engine.errors import WorkbenchError
    from ui.loaders import load_dataset

    if not state.current_dataset_path():
        st.info("No dataset chosen yet. Pick one on the **Home** page (the demo phantoms work out of the box).")
        st.stop()
    try:
        return load_dataset()
    except WorkbenchError as exc:
        st.error(str(exc), icon="⚠️")
        st.stop()


def history_charts(hist: pd.DataFrame, panels: Sequence[str] = ("loss", "metrics", "lr"), key: str = "hist",
                   height: int | None = None) -> None:
    """Training curves from a run's history DataFrame (``engine.dashboard.load_history``), one panel each.

    Args:
        hist: history table with an ``epoch`` column.
        panels: which of ``loss``, ``metrics`` (validation metrics), ``lr`` (log scale) to draw.
        key: widget-key prefix (unique per page).
        height: chart height in pixels (None = Streamlit's default).
    """
    import plotly.express as px

    from engine.dashboard import history_series

    titles = {"loss": "Loss", "metrics": "Validation metrics", "lr": "Learning rate"}
    series = history_series(hist)
    for col, panel in zip(st.columns(len(panels)), panels):
        ys = series[panel]
        if not ys:
            col.caption(f"{titles[panel]}: not recorded")
            continue
        long = hist.melt(id_vars=["epoch"], value_vars=ys, var_name="series", value_name="value").dropna()
        fig = px.line(long, x="epoch", y="value", color="series", markers=True, title=titles[panel])
        if height:
            fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
        if len(hist) <= 30:
            fig.update_xaxes(dtick=1)
        if panel == "lr":
            fig.update_yaxes(type="log", exponentformat="e")
        col.plotly_chart(fig, key=f"{key}_{panel}")


def domain_warning(card: ModelCard, img: np.ndarray, meta: dict[str, Any] | None = None,
                   dataset_labels: dict[int, str] | None = None) -> bool:
    """Warn when an input is unlike the model's training data (the card's fingerprint,
    :func:`engine.domain_profile.check_input`) or the dataset's classes do not match the model's.
    Returns True when a warning was shown."""
    from engine.domain_profile import check_input
    from engine.evaluation import classes_match

    shown = False
    if dataset_labels and not classes_match(card.labels, dataset_labels):
        st.warning(f"**{card.name}** segments {', '.join(card.foreground.values())}, but this dataset's classes are "
                   f"{', '.join(v for k, v in sorted(dataset_labels.items()) if k)}: the model was not made for "
                   "these images.", icon="⚠️")
        shown = True
    res = check_input(getattr(card, "fingerprint", None), img, meta)
    if res["far"]:
        st.warning(f"This image is unlike **{card.name}**'s training images — treat the result with care: "
                   + "; ".join(res["reasons"]) + ".", icon="⚠️")
        shown = True
    return shown
