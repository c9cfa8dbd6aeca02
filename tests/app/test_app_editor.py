"""AppTest of pages/7_Mask_editor.py on the tiny demo phantoms with the real review store.

The drawing canvas is a custom component AppTest cannot drive (the real-browser suite draws on
it); here: the page without the canvas (graceful message), edits through the canvas-free tools,
save → history → diff → revert, review-state buttons, the save-conflict choice, the deep link,
the review queue, the model-prediction start and the export.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.datasets import open_dataset
from engine.store import ReviewStore
from engine.workspace import Workspace
from tests.support.helpers import app_test, ok, point_app_at, save_tiny_unet, tiny_demo_dir
from ui import state
from ui.editor_view import PREDICTION

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "7_Mask_editor.py")
MODEL = "editor-test-unet"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_demo_dir(tmp_path_factory, "editor_demo")


@pytest.fixture()
def env(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    ws = tmp_path / "ws"
    ws.mkdir()
    point_app_at(monkeypatch, demo, ws)
    return {"demo": demo, "ws": ws, "nerve": demo / "nerve"}


def dataset(env):
    return open_dataset(env["nerve"], workspace=Workspace(env["ws"]))


def app(env, case: str | None = None, who: str | None = "tester", **session) -> AppTest:
    base = {state.Shared.DATASET: str(env["nerve"]), state.Shared.DEVICE: "cpu"}
    if who:
        base[state.Shared.REVIEWER] = who
    if case:
        base[state.Shared.BROWSER_CASE] = case
    return app_test(PAGE, base, **session)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def session(at: AppTest, ds, case_id: str):
    return at.session_state[state.Editor.SESSIONS][(str(ds.root), case_id)]


def positive_case(ds) -> str:
    return next(c.case_id for c in ds.cases if c.has_mask)


# ------------------------------------------------------------------------------------ tests

def test_page_without_the_canvas_degrades_gracefully(env, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "streamlit_drawable_canvas", None)  # import now raises ImportError
    ds = dataset(env)
    cid = positive_case(ds)
    at = ok(app(env, cid).run())
    warn = texts(at.warning)
    assert "drawing canvas is not available" in warn and "streamlit run" in warn
    # everything else is there and real
    assert at.selectbox(key=state.Editor.CASE).value == cid
    assert at.button(key="editor_save").disabled  # nothing changed yet
    assert [b.key for b in at.button if b.key.startswith("editor_state_")] == [
        "editor_state_accepted", "editor_state_needs_fix", "editor_state_corrected", "editor_state_unreviewed"]
    hist = at.dataframe[0].value
    assert hist["version"].tolist() == [0] and hist["area (px)"].tolist() == [ds.case(cid).mask_area]
    caps = [c for img in at.image for c in img.captions]
    assert any(f"current mask · {ds.case(cid).mask_area:,} px" in c for c in caps)


def test_canvas_is_used_when_importable(env) -> None:
    ds = dataset(env)
    at = ok(app(env, positive_case(ds)).run())
    assert "drawing canvas is not available" not in texts(at.warning)
    assert any(c.value.startswith("Canvas 600×") for c in at.caption)


def test_edit_save_history_diff_revert_and_states(env) -> None:
    ds = dataset(env)
    cid = positive_case(ds)
    case = ds.case(cid)
    original = ds.load_mask(cid)
    at = ok(app(env, cid).run())

    # edit 1: empty the mask; undo/redo move along the stack
    ok(at.button(key="editor_empty").click().run())
    sess = session(at, ds, cid)
    assert sess.stack.current.sum() == 0 and sess.stack.can_undo
    ok(at.button(key="editor_undo").click().run())
    assert np.array_equal(session(at, ds, cid).stack.current, original)
    ok(at.button(key="editor_redo").click().run())
    assert session(at, ds, cid).stack.current.sum() == 0
    # edit 2: flood-fill a 3-row band? no: fill the (now empty) background at (x=5, y=7) with class 1
    at.number_input(key=f"editor_fill_x_{case.width}").set_value(5)
    at.number_input(key=f"editor_fill_y_{case.height}").set_value(7)
    ok(at.run())
    ok(at.button(key="editor_fill_at").click().run())
    assert (session(at, ds, cid).stack.current == 1).all()
    ok(at.button(key="editor_undo").click().run())  # back to the empty mask

    assert not at.button(key="editor_save").disabled
    at.text_input(key="editor_note_text").set_value("no nerve here")
    ok(at.run())
    ok(at.button(key="editor_save").click().run())
    assert "Saved version 1" in texts(at.success)
    with ReviewStore.for_dataset(ds) as store:
        hist = store.mask_history(cid)
        assert [(h.version, h.author, h.note, h.area) for h in hist] == [(1, "tester", "no nerve here", 0)]
        assert store.case_state(cid) == "corrected"
        assert store.load_mask_version(cid, 1).sum() == 0
    table = at.dataframe[0].value
    assert table["version"].tolist() == [0, 1] and table["author"].tolist() == ["dataset", "tester"]
    assert table["area (px)"].tolist() == [case.mask_area, 0] and table["note"].iloc[1] == "no nerve here"
    from ui.timefmt import local_time

    assert table["time"].iloc[1] == local_time(hist[0].created)  # the reader's zone, YYYY-MM-DD HH:MM
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", table["time"].iloc[1])
    assert at.text_input(key="editor_note_text").value == ""  # cleared for the next version
    # diff of version 1 against the original: everything removed
    diff_caps = [c for img in at.image for c in img.captions if c.startswith("version 0 → 1")]
    assert diff_caps == [f"version 0 → 1: +0 px added, −{case.mask_area:,} removed"]
    assert at.button(key="editor_save").disabled and "Review state: **corrected**" in texts(at.markdown)

    # revert to the original: version 2 copies version 0; the editor follows it
    assert at.selectbox(key="editor_revert_version").value == 0
    ok(at.button(key="editor_revert").click().run())
    with ReviewStore.for_dataset(ds) as store:
        mv = store.mask_version(cid, 2)
        assert mv.reverted_from == 0 and mv.is_original
        assert np.array_equal(store.load_mask_version(cid, 2), original)
    sess = session(at, ds, cid)
    assert sess.base_version == 2 and np.array_equal(sess.stack.current, original)
    assert at.dataframe[0].value["from"].tolist()[1:] == ["edit of 0", "revert to 0"]

    # review-state buttons
    ok(at.button(key="editor_state_accepted").click().run())
    assert "Review state: **accepted** — tester" in texts(at.markdown)
    assert at.button(key="editor_state_accepted").disabled
    ok(at.button(key="editor_state_needs_fix").click().run())
    with ReviewStore.for_dataset(ds) as store:
        assert store.case_state(cid) == "needs_fix"


def test_no_name_no_writes(env) -> None:
    ds = dataset(env)
    cid = positive_case(ds)
    at = ok(app(env, cid, who=None).run())
    ok(at.button(key="editor_empty").click().run())
    assert at.button(key="editor_save").disabled and at.button(key="editor_state_accepted").disabled
    assert "Enter your name in the sidebar to save." in texts(at.caption)
    at.text_input(key="editor_author").set_value("  carol ")
    ok(at.run())
    assert not at.button(key="editor_save").disabled
    ok(at.button(key="editor_save").click().run())
    with ReviewStore.for_dataset(ds) as store:
        assert store.mask_history(cid)[0].author == "carol"
    assert at.session_state[state.Shared.REVIEWER] == "carol"


def test_save_conflict_offers_the_choice(env) -> None:
    ds = dataset(env)
    cid = positive_case(ds)
    shape = (ds.case(cid).height, ds.case(cid).width)
    at = ok(app(env, cid).run())
    ok(at.button(key="editor_empty").click().run())   # my edit, based on version 0

    theirs = np.zeros(shape, np.uint8)
    theirs[10:40, 10:60] = 1
    with ReviewStore.for_dataset(ds) as store:         # someone else saves meanwhile
        assert store.save_mask_version(cid, theirs, "dora", "theirs", base_version=0) == 1
        created = store.mask_version(cid, 1).created
    ok(at.run())
    assert "Version 1 was saved by dora" in texts(at.info)  # told before saving
    ok(at.button(key="editor_save").click().run())
    warn = texts(at.warning)
    assert "Version 1 was saved by dora at " + created[:10] in warn and "while you were editing" in warn
    keys = {"editor_conflict_union", "editor_conflict_mine", "editor_conflict_discard"}
    assert keys <= {b.key for b in at.button}
    labels = {b.key: b.label for b in at.button if b.key in keys}  # full, honest labels
    assert labels["editor_conflict_mine"] == "Save mine as version 2, replacing dora's mask"
    assert labels["editor_conflict_union"].startswith("Save the union of both as version 2")
    assert labels["editor_conflict_discard"] == "Keep theirs (version 1) and discard my edits"
    with ReviewStore.for_dataset(ds) as store:
        assert store.latest_mask_version(cid) == 1  # nothing overwritten

    caps = [c for img in at.image for c in img.captions]  # their mask and the diff are shown at once
    assert any(c.startswith("theirs: version 1 by dora · 1,500 px") for c in caps)
    assert any(c.startswith("yours compared with theirs") for c in caps)

    ok(at.button(key="editor_conflict_mine").click().run())
    assert "Saved version 2, replacing version 1 by dora" in texts(at.success)
    with ReviewStore.for_dataset(ds) as store:
        v2 = store.mask_version(cid, 2)
        assert (v2.author, v2.base_version, v2.area) == ("tester", 1, 0)
        assert "replaces version 1 by dora" in v2.note
        assert np.array_equal(store.load_mask_version(cid, 1), theirs)  # theirs is kept in the history


def test_save_conflict_union_keeps_both(env) -> None:
    ds = dataset(env)
    cid = positive_case(ds)
    shape = (ds.case(cid).height, ds.case(cid).width)
    at = ok(app(env, cid).run())
    mine = np.zeros(shape, np.uint8)
    mine[50:60, 70:90] = 1
    session(at, ds, cid).stack.push(mine)  # my edit, based on version 0
    theirs = np.zeros(shape, np.uint8)
    theirs[10:40, 10:60] = 1
    with ReviewStore.for_dataset(ds) as store:
        store.save_mask_version(cid, theirs, "dora", "theirs", base_version=0)
    ok(at.run())
    ok(at.button(key="editor_save").click().run())
    ok(at.button(key="editor_conflict_union").click().run())
    assert "the union of your mask and version 1 by dora" in texts(at.success)
    with ReviewStore.for_dataset(ds) as store:
        v2 = store.mask_version(cid, 2)
        got = store.load_mask_version(cid, 2)
    assert v2.author == "tester" and v2.base_version == 1 and "union with version 1 by dora" in v2.note
    assert np.array_equal(got, np.maximum(mine, theirs))  # their blob AND mine
    assert int(np.count_nonzero(got)) == 1500 + 200


def test_conflict_discard_mine_and_silent_follow(env) -> None:
    ds = dataset(env)
    cid = positive_case(ds)
    shape = (ds.case(cid).height, ds.case(cid).width)
    at = ok(app(env, cid).run())
    ok(at.button(key="editor_empty").click().run())
    theirs = np.ones(shape, np.uint8)
    with ReviewStore.for_dataset(ds) as store:
        store.save_mask_version(cid, theirs, "dora", base_version=0)
    ok(at.button(key="editor_save").click().run())
    ok(at.button(key="editor_conflict_discard").click().run())
    sess = session(at, ds, cid)
    assert sess.base_version == 1 and sess.conflict is None and (sess.stack.current == 1).all()
    assert "discarded" in texts(at.info)
    with ReviewStore.for_dataset(ds) as store:
        assert store.latest_mask_version(cid) == 1
        store.save_mask_version(cid, np.zeros(shape, np.uint8), "erin", base_version=1)
    ok(at.run())  # no unsaved edits: the editor just follows the newer version
    sess = session(at, ds, cid)
    assert sess.base_version == 2 and sess.stack.current.sum() == 0
    assert "Version 2 was saved by erin" in texts(at.info)


def test_deep_link_and_review_queue(env) -> None:
    ds = dataset(env)
    ids = ds.case_ids
    with ReviewStore.for_dataset(ds) as store:
        store.set_case_state(ids[5], "needs_fix", "ann")
        store.set_case_state(ids[3], "needs_fix", "ann")
    at = ok(app(env, ids[7]).run())
    assert at.selectbox(key=state.Editor.CASE).value == ids[7]  # the browser's case is opened
    nxt = at.button(key="editor_next")
    assert nxt.label.startswith("Next case needing review (2 in queue)")
    first = sorted([ids[3], ids[5]], key=lambda s: [int(t) for t in s.split("_")])[0]
    ok(nxt.click().run())
    assert at.selectbox(key=state.Editor.CASE).value == first
    assert at.session_state[state.Shared.BROWSER_CASE] == first
    assert any("Suspicion score **2.00**: marked needs_fix by ann" in c.value for c in at.caption)
    ok(at.button(key="editor_state_accepted").click().run())     # reviewed: leaves the queue
    assert at.button(key="editor_next").label.startswith("Next case needing review (1 in queue)")
    ok(at.button(key="editor_next").click().run())
    other = ids[5] if first == ids[3] else ids[3]
    assert at.selectbox(key=state.Editor.CASE).value == other
    # the user's own choice is not overridden by the (unchanged) deep link
    at.selectbox(key=state.Editor.CASE).set_value(ids[0])
    ok(at.run())
    ok(at.run())
    assert at.selectbox(key=state.Editor.CASE).value == ids[0]


def test_unsaved_edits_survive_switching_cases(env) -> None:
    ds = dataset(env)
    a, b = ds.case_ids[0], ds.case_ids[1]
    at = ok(app(env, a).run())
    at.number_input(key=f"editor_fill_x_{ds.case(a).width}").set_value(0)
    ok(at.run())
    ok(at.button(key="editor_fill_at").click().run())
    at.selectbox(key=state.Editor.CASE).set_value(b)
    ok(at.run())
    assert at.selectbox(key=state.Editor.CASE).value == b and at.button(key="editor_save").disabled
    at.selectbox(key=state.Editor.CASE).set_value(a)
    ok(at.run())
    assert not at.button(key="editor_save").disabled and session(at, ds, a).stack.can_undo


def test_start_from_a_model_prediction(env) -> None:
    from engine.evaluation import class_mapping
    from engine.inference import Predictor

    save_tiny_unet(env["ws"] / "models" / MODEL, seed=0)
    ds = dataset(env)
    cid = positive_case(ds)
    at = ok(app(env, cid, **{state.Shared.MODEL: MODEL}).run())
    at.selectbox(key=state.Editor.SOURCE).set_value(PREDICTION)
    ok(at.run())
    assert at.selectbox(key="editor_model").value == MODEL
    ok(at.button(key="editor_load").click().run())
    pred = Predictor.from_weights(env["ws"] / "models" / MODEL, device="cpu")
    want = class_mapping(pred.card.labels, ds.labels)[pred.predict(ds.load_image_float(cid)).mask]
    sess = session(at, ds, cid)
    assert sess.source == f"{MODEL} (predicted now)" and sess.base_version == 0
    assert np.array_equal(sess.stack.current, want)
    assert f"Editing starts from {MODEL} (predicted now)" in texts(at.info)
    # saving it makes version 1 (base: the newest version when loaded)
    if not np.array_equal(want, ds.load_mask(cid)):
        ok(at.button(key="editor_save").click().run())
        with ReviewStore.for_dataset(ds) as store:
            assert np.array_equal(store.load_mask_version(cid, 1), want)


def test_export_from_the_page(env, tmp_path) -> None:
    ds = dataset(env)
    cid = positive_case(ds)
    with ReviewStore.for_dataset(ds) as store:
        store.save_mask_version(cid, np.zeros((ds.case(cid).height, ds.case(cid).width), np.uint8), "ann")
    at = ok(app(env, cid).run())
    assert str(env["ws"]) in at.text_input(key="editor_export_dir").value  # default: in the workspace
    out = tmp_path / "export"
    at.text_input(key="editor_export_dir").set_value(str(out))
    ok(at.run())
    ok(at.button(key="editor_export").click().run())
    msg = texts(at.success)
    n = sum(c.labelled for c in ds.cases)
    assert f"Exported {n:,} masks (1 corrected, 0 cases dropped by decisions)" in msg
    assert (out / "manifest.json").is_file() and (out / "train_masks.csv").is_file()
    assert open_dataset(out / "manifest.json").load_mask(cid).sum() == 0
    # into the dataset folder: refused with a readable message, nothing written
    at.text_input(key="editor_export_dir").set_value(str(env["nerve"] / "out"))
    ok(at.run())
    at.button(key="editor_export").click().run()
    assert "inside the dataset folder" in texts(at.error) and not (env["nerve"] / "out").exists()


def test_fill_holes_button_on_the_latest_version(env) -> None:
    ds = dataset(env)
    cid = ds.case_ids[0]
    c = ds.case(cid)
    ring = np.zeros((c.height, c.width), np.uint8)
    ring[20:60, 20:60] = 1
    ring[30:50, 30:50] = 0
    with ReviewStore.for_dataset(ds) as store:
        store.save_mask_version(cid, ring, "ann", "ring")
    at = ok(app(env, cid).run())
    sess = session(at, ds, cid)
    assert sess.base_version == 1 and np.array_equal(sess.stack.current, ring)  # opens the newest version
    ok(at.button(key="editor_fill_holes").click().run())
    cur = session(at, ds, cid).stack.current
    assert cur[30:50, 30:50].all() and int(cur.sum()) == 40 * 40
    assert at.button(key="editor_save").label == "Save as version 2"


def test_siim_dicom_dataset(env) -> None:
    """The chest X-ray phantom (DICOM, SOP-UID case ids): edit, save, and the export writes the SIIM CSV."""
    ds = open_dataset(env["demo"] / "ptx", workspace=Workspace(env["ws"]))
    cid = next(c.case_id for c in ds.cases if c.has_mask)
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state[state.Shared.DATASET] = str(env["demo"] / "ptx")
    at.session_state[state.Shared.REVIEWER] = "tester"
    at.session_state[state.Shared.BROWSER_CASE] = cid
    ok(at.run())
    assert at.selectbox(key=state.Editor.CASE).value == cid
    ok(at.button(key="editor_empty").click().run())
    ok(at.button(key="editor_save").click().run())
    with ReviewStore.for_dataset(ds) as store:
        assert store.latest_mask_version(cid) == 1 and store.load_mask_version(cid, 1).sum() == 0
    import pydicom

    hdr = pydicom.dcmread(ds.case(cid).image_path, stop_before_pixels=True)
    shown = "\n".join([texts(at.markdown), texts(at.caption), texts(at.info), texts(at.success),
                        texts(at.warning)] + [d.value.to_csv() for d in at.dataframe])
    for phi in (str(hdr.PatientName), str(hdr.PatientID)):
        assert phi and phi not in shown  # no PHI from the DICOM header on the page


def test_unknown_case_in_the_link_is_named(env) -> None:
    ds = dataset(env)
    at = app(env)
    at.query_params["case"] = "no_such_case"
    at = at.run()
    assert not at.exception and not at.error
    warns = [w.value for w in at.warning if "no_such_case" in w.value]
    assert len(warns) == 1 and "not in this dataset" in warns[0], [w.value for w in at.warning]
    assert at.selectbox(key=state.Editor.CASE).value in ds.case_ids  # a real case, and the warning says so
    ok(at.run())  # said once; the next run is quiet
    assert not [w for w in at.warning if "no_such_case" in w.value]
    # a known case from a link opens without a warning
    at2 = app(env)
    at2.query_params["case"] = ds.case_ids[2]
    at2 = ok(at2.run())
    assert at2.selectbox(key=state.Editor.CASE).value == ds.case_ids[2]
    assert not [w for w in at2.warning if "link" in w.value]


def test_local_time_uses_the_browser_zone_else_the_server_zone(monkeypatch) -> None:
    import time
    from types import SimpleNamespace

    from ui import timefmt

    utc = "2026-12-07T15:34:05.5+00:00"
    browser = SimpleNamespace(context=SimpleNamespace(timezone="Asia/Kolkata", timezone_offset=-330))
    monkeypatch.setattr(timefmt, "st", browser)
    assert timefmt.local_time(utc) == "2026-12-07 21:04"
    browser.context.timezone = None  # only the offset (minutes, as JavaScript's getTimezoneOffset)
    assert timefmt.local_time(utc) == "2026-12-07 21:04"
    browser.context.timezone_offset = None  # nothing from the browser: the server's zone
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert timefmt.local_time(utc) == "2026-12-08 00:34"
        assert timefmt.local_time("2026-12-07T15:34:05") == "2026-12-08 00:34"  # naive = UTC
        assert timefmt.local_time(None) == "" and timefmt.local_time("not a time") == "not a time"
    finally:
        monkeypatch.undo()  # TZ as it was, then tell the C library
        time.tzset()


# ------------------------------------------------------------------------------------ label-error finder

FINDER_MODEL = "finder-test-unet"


def _judge_model(ws: Path, ds) -> Path:
    """A tiny U-Net in ``ws``'s models whose foreground bias is centred on one image (varied verdicts)."""
    return save_tiny_unet(ws / "models" / FINDER_MODEL, seed=0, centre_on=ds.load_image_float(ds.case_ids[0]))


@pytest.fixture(scope="module")
def finder_ws(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace in which the nerve phantom has a label-error finder report (judged by the tiny model,
    through the engine's own honest_probabilities + find_suspects)."""
    from engine.curation.crossfit import honest_probabilities
    from engine.curation.suspects import find_suspects

    ws = tmp_path_factory.mktemp("finder_ws")
    ds = open_dataset(demo / "nerve", workspace=Workspace(ws))
    model = _judge_model(ws, ds)
    find_suspects(ds, honest_probabilities(ds, [str(model)], device="cpu"))
    return ws


@pytest.fixture()
def fenv(demo: Path, finder_ws: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    point_app_at(monkeypatch, demo, finder_ws)
    return {"demo": demo, "ws": finder_ws, "nerve": demo / "nerve"}


def _report(env):
    from engine.curation.suspects import load_latest_suspects

    rep = load_latest_suspects(dataset(env))
    assert rep is not None and rep.cases
    return rep


def _queue_table(at: AppTest):
    return next(d.value for d in at.dataframe if "why" in d.value.columns)


def test_find_label_errors_from_the_page_agrees_with_the_cli(env, tmp_path, capsys) -> None:
    import json

    from engine.__main__ import main
    from engine.curation.suspects import load_latest_suspects

    ds = dataset(env)
    _judge_model(env["ws"], ds)
    at = ok(app(env, ds.case_ids[0], **{state.Shared.MODEL: FINDER_MODEL}).run())
    assert any(e.label.startswith("Label-error finder") for e in at.expander)
    assert at.multiselect(key=state.Editor.FINDER_MODELS).value == [FINDER_MODEL]
    assert at.selectbox(key=state.Editor.FINDER_FOLDS).value == 0  # the shipped model only: no cross-fit
    assert load_latest_suspects(ds) is None
    ok(at.button(key=state.Editor.FINDER_RUN).click().run())
    n = sum(c.labelled for c in ds.cases)
    assert f"Judged {n} labelled case(s)" in texts(at.success) and FINDER_MODEL in texts(at.success)
    rep = load_latest_suspects(ds)
    assert rep is not None and len(rep.cases) == n
    top = rep.cases[0]
    # the queue is ranked by the report now
    assert any(c.value.startswith("Latest report (") for c in at.caption)
    at.selectbox(key=state.Editor.CASE).set_value(rep.cases[-1].case_id)  # the last: "next" wraps to the top
    ok(at.run())
    ok(at.button(key="editor_next").click().run())
    assert at.selectbox(key=state.Editor.CASE).value == top.case_id
    # `python -m engine suspects` on the same dataset and model gives the same ranking and scores
    out = tmp_path / "suspects.json"
    assert main(["suspects", str(env["nerve"]), "--weights", FINDER_MODEL, "--json", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    capsys.readouterr()
    cli = json.loads(out.read_text())["cases"]
    assert [(c["case_id"], c["score"], c["type"]) for c in cli] == [
        (s.case_id, round(s.score, 6), s.type) for s in rep.cases]


def test_finder_cross_fit_config_is_the_clis(env) -> None:
    from types import SimpleNamespace

    from engine.cli.suspects import _crossfit_config
    from ui.editor_view import finder_crossfit_config

    model = _judge_model(env["ws"], dataset(env))
    for weights, k in (([str(model)], 3), ([], 2), ([str(model)], 0)):
        args = SimpleNamespace(config=None, folds=k or None, arch=None, base_channels=None, weights=weights,
                               epochs=None, size=None, seed=0, device="cpu")
        assert finder_crossfit_config(weights, k, "cpu") == _crossfit_config(args, None)


def test_queue_follows_the_report_and_filters_by_suspect_type(fenv) -> None:
    rep = _report(fenv)
    judged = [s for s in rep.cases if s.score > 0]
    at = ok(app(fenv, rep.cases[-1].case_id).run())
    assert at.button(key="editor_next").label.startswith(f"Next case needing review ({len(judged)} in queue)")
    table = _queue_table(at)
    assert table["case"].tolist() == [s.case_id for s in judged][:200]  # the report's order
    assert table["type"].tolist() == [s.type for s in judged][:200]
    first = judged[0]
    assert table["why"].iloc[0] == f"{first.type}: {first.reasons[0]}"
    assert not table["why"].str.contains("flip-TTA|model Dice").any()
    ok(at.button(key="editor_next").click().run())
    assert at.selectbox(key=state.Editor.CASE).value == first.case_id
    cap = next(c.value for c in at.caption if c.value.startswith("Suspicion score"))
    assert cap == f"Suspicion score **{first.score:.2f}**: {first.type}: {first.reasons[0]}"

    # filter by one type: the count in its label, the queue and "next" restricted to it
    by_type: dict[str, list[str]] = {}
    for s in judged:
        by_type.setdefault(s.type, []).append(s.case_id)
    kind = min(by_type, key=lambda t: len(by_type[t]))  # the rarer type
    ms = at.multiselect(key=state.Editor.SUSPECT_TYPES)
    assert f"{kind} ({len(by_type[kind])})" in ms.options
    ok(ms.set_value([kind]).run())
    assert at.button(key="editor_next").label.startswith(f"Next case needing review ({len(by_type[kind])} in queue)")
    table = _queue_table(at)
    assert set(table["type"]) == {kind} and table["case"].tolist() == by_type[kind][:200]
    assert any(e.label.startswith(f"Review queue ({len(by_type[kind])} cases of {len(judged)}") for e in at.expander)
    ok(at.button(key="editor_next").click().run())
    want = by_type[kind][0] if first.case_id != by_type[kind][0] else by_type[kind][1 % len(by_type[kind])]
    assert at.selectbox(key=state.Editor.CASE).value == want


def test_case_block_and_the_disagreement_map(fenv) -> None:
    rep = _report(fenv)
    s = rep.cases[0]
    at = ok(app(fenv, s.case_id).run())
    md = texts(at.markdown)
    assert f"**Label-error finder:** `{s.type}` · score **{s.score:.2f}** · rank 1 of {len(rep.cases)}" in md
    assert f"- {s.reasons[0]}" in md
    assert any(c.value.startswith(f"Judged by: {s.provenance}") for c in at.caption)
    n_images = len(at.image)
    toggle = at.toggle(key=state.Editor.SUSPECT_MAP)
    assert toggle.value is False and toggle.label == "Show where the label disagrees"
    ok(toggle.set_value(True).run())
    assert len(at.image) == n_images + 1
    caps = [c for img in at.image for c in img.captions if c.startswith("where the label disagrees")]
    assert caps and caps[0].startswith(f"where the label disagrees ({s.type}, score {s.score:.2f})")
    assert "label has it, the model rejects it" in md + texts(at.markdown)
    # an edit on screen: the block says the report judged another mask
    ok(at.button(key="editor_empty").click().run())
    assert any("not the one the finder judged" in c.value for c in at.caption)


def test_disagreement_colours() -> None:
    from ui.editor_view import MAP_COLOURS, disagreement_rgb

    img = np.zeros((1, 6, 6), np.float32)
    label = np.zeros((6, 6), np.uint8)
    label[:3] = 1
    dmap = np.zeros((6, 6), np.uint8)
    dmap[1, 1] = 255  # on the label: it has something the model rejects
    dmap[4, 4] = 255  # off the label: it misses something
    dmap[5, 5] = 51   # faint: low opacity
    rgb = disagreement_rgb(img, label, dmap, max_alpha=1.0)
    rejects, misses = MAP_COLOURS.values()
    assert tuple(rgb[1, 1]) == rejects and tuple(rgb[4, 4]) == misses
    assert tuple(rgb[5, 5]) == tuple(round(0.2 * c) for c in misses)
    assert tuple(rgb[4, 0]) == (0, 0, 0)  # agreement stays the image


def test_cross_fitting_runs_as_a_background_job_then_judges(env) -> None:
    """k folds: the fold models train in a background process with progress; when it ends the page judges
    every case with the fold model that never saw it."""
    import time

    from engine.curation.crossfit import crossfit_status
    from engine.curation.suspects import load_latest_suspects
    from ui.editor_view import finder_crossfit_config

    ds = dataset(env)
    save_tiny_unet(env["ws"] / "models" / FINDER_MODEL, seed=0,  # cross-fit its architecture for one epoch
                   training={"config": {"epochs": 1, "augment": "none", "batch_size": 8}})
    at = ok(app(env, ds.case_ids[0], **{state.Shared.MODEL: FINDER_MODEL}).run())
    at.selectbox(key=state.Editor.FINDER_FOLDS).set_value(2)
    ok(at.run())
    ok(at.button(key=state.Editor.FINDER_RUN).click().run())
    job = at.session_state[state.Editor.FINDER_JOB]
    assert job["k"] == 2 and job["pending"] and "1 epochs" in job["what"]
    assert at.button(key=state.Editor.FINDER_RUN).disabled  # one job at a time
    bars = [p for p in at.get("progress") if "Cross-fitting 2 fold models" in p.proto.text]
    assert bars, [p.proto.text for p in at.get("progress")]
    cfg = finder_crossfit_config([FINDER_MODEL], 2, "cpu")
    deadline = time.monotonic() + 240
    while crossfit_status(ds, cfg)["active"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert crossfit_status(ds, cfg)["state"] == "finished"
    ok(at.run())  # the page sees the finished job and judges
    assert "Judged 36 labelled case(s)" in texts(at.success) and "cross-fit fold" in texts(at.success)
    rep = load_latest_suspects(ds)
    assert rep is not None and all("out-of-fold: k=2 cross-fit of unet_classic" in s.provenance for s in rep.cases)
    assert not at.button(key=state.Editor.FINDER_RUN).disabled and not at.session_state[state.Editor.FINDER_JOB][
        "pending"]
