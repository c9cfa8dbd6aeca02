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
    """:func:`engine.curation.case_queue` from the latest conflicts report and evaluation."""
    from engine.curation import case_queue
    from ui.caches import conflict_pairs

    ev, ev_label = _evaluation_for_queue(ds)
    pairs = conflict_pairs(ds)
    q = case_queue(ds, store, pairs, ev, **loop_view.queue_signals(ds))  # + the saved model signals
    return q, {"evaluation": ev_label, "conflicts": pairs is not None}


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
    c[1].button(f"Next case needing review ({len(queue)} in queue)", key=state.Editor.NEXT, icon=":material/skip_next:",
                disabled=nxt is None, on_click=_go, args=(nxt,), type="primary",
                help="most suspicious first: marked needs_fix, low model Dice, conflicting near-duplicates; "
                     "accepted and corrected cases are skipped")
    entry = next((q for q in queue if q[0] == cur), None)
    if entry is not None:
        st.caption(f"Suspicion score **{entry[1]:.2f}**: " + "; ".join(entry[2]))
    elif not queue:
        if queue_info.get("evaluation") is None and not queue_info.get("conflicts"):
            st.caption("No review queue yet: evaluate a model (Dataset browser or Metrics dashboard) or run the "
                       "conflict search (Conflict review) to rank cases by suspicion.")
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
    import pandas as pd

    claims = claims or {}
    with st.expander(f"Review queue ({len(queue)} cases)", expanded=False):
        st.caption("Score = 2 if marked *needs fix* + (1 − model Dice) + 1 for a conflicting near-duplicate pair "
                   "(0.5 for a disagreeing one). Accepted and corrected cases are left out. "
                   f"Evaluation: {info.get('evaluation') or 'none'} · conflicts report: "
                   f"{'yes' if info.get('conflicts') else 'none'}.")
        if queue:
            df = pd.DataFrame([{"case": c, "score": s, "why": "; ".join(r),
                                "being edited by": claims[c].user if c in claims else ""} for c, s, r in queue[:200]])
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
        queue, qinfo = review_queue_for(ds, store)
        case_id = case_picker(ds, store, queue, qinfo)
        sess = session_for(ds, store, case_id)
        claim_panel(ds, store, sess)
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
            save_panel(ds, store, sess, img, who)
            st.divider()
            state_panel(store, case_id, who if _may("reviewer") else "")
        st.divider()
        with st.expander("Start from another version or a model's prediction", expanded=False):
            source_panel(ds, store, sess)
        history_panel(ds, store, sess, img, who)
        queue_panel(queue, qinfo, store.claims())
        export_panel(ds, store)
        loop_view.signals_panel(ds)  # model signals for the queue
        loop_view.loop_link()
        loop_view.loop_section(ds, store, None, "editor")  # retrain with corrections, what moved
