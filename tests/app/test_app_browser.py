"""AppTest of pages/3_Dataset_browser.py on the tiny demo phantoms (real engine calls, no mocks).

Counts are checked against the case index (``open_dataset(...).to_frame()``), metrics against the
engine computed directly (a tiny random U-Net whose foreground bias is centred so that it predicts
about half of each image: its Dice differs from case to case).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine.datasets import open_dataset
from engine.eda import conflict_status_column, count_table, natural_key
from engine.workspace import Workspace
from tests.support.helpers import app_test, charts, ok, point_app_at, save_tiny_unet, tiny_demo_dir
from ui import state

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "3_Dataset_browser.py")
MODEL = "browser-test-unet"


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_demo_dir(tmp_path_factory, "browser_demo")


@pytest.fixture(scope="session")
def ws(tmp_path_factory: pytest.TempPathFactory, demo: Path) -> Path:
    root = tmp_path_factory.mktemp("browser_ws")
    ds = open_dataset(demo / "nerve", workspace=Workspace(root))
    save_tiny_unet(root / "models" / MODEL, seed=0, centre_on=ds.load_image_float(ds.cases[0]))
    return root


@pytest.fixture()
def env(demo: Path, ws: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    point_app_at(monkeypatch, demo, ws)
    return {"demo": demo, "ws": ws, "nerve": demo / "nerve", "ptx": demo / "ptx"}


def app(dataset: Path, **session) -> AppTest:
    return app_test(PAGE, {state.Shared.DATASET: str(dataset), state.Shared.DEVICE: "cpu"}, **session)


def frame(path: Path, ws: Path) -> pd.DataFrame:
    return open_dataset(path, workspace=Workspace(ws)).to_frame()


def natural(ids) -> list[str]:
    """Kaggle ids ``{subject}_{frame}`` in the grid's order (subject, then frame, numerically)."""
    return sorted(ids, key=natural_key)


def thumb_ids(at: AppTest) -> list[str]:
    """Case ids from the grid's image captions (``<id> · ...``)."""
    return [cap.split(" · ")[0] for img in at.image for cap in img.captions]


def count_caption(at: AppTest) -> int:
    for c in at.caption:
        m = re.match(r"\*\*([\d,]+)\*\* of ([\d,]+) cases", c.value)
        if m:
            return int(m.group(1).replace(",", ""))
    raise AssertionError("no 'N of M cases' caption")


def ys(trace: dict) -> list:
    y = trace.get("y")
    if isinstance(y, dict) and "bdata" in y:
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=np.dtype(y["dtype"])).tolist()
    return list(y)


# ------------------------------------------------------------------------------------ tests

def test_grid_renders_thumbnails_and_paginates(env) -> None:
    df = frame(env["nerve"], env["ws"])
    order = natural(df["case_id"].tolist())
    at = ok(app(env["nerve"]).run())
    assert count_caption(at) == len(df) == 36
    assert thumb_ids(at) == order[:36]  # 36 per page by default, natural (subject, frame) order
    assert all(u for img in at.image for u in img.value)  # every thumbnail has a media URL
    # captions say empty / mask area from the index
    first = df.set_index("case_id").loc[order[0]]
    cap = at.image[0].captions[0]
    assert (f"{int(first['mask_area']):,} px" in cap) if first["has_mask"] else ("empty" in cap)

    at.selectbox(key=state.Browser.PER_PAGE).set_value(24)
    ok(at.run())
    assert thumb_ids(at) == order[:24]
    ok(at.button(key="browser_next").click().run())
    assert thumb_ids(at) == order[24:36]
    assert at.number_input(key="browser_page").value == 2
    assert at.button(key="browser_next").disabled and at.button(key="browser_last").disabled
    ok(at.button(key="browser_first").click().run())
    assert thumb_ids(at) == order[:24]
    at.number_input(key="browser_page").set_value(2)
    ok(at.run())
    assert thumb_ids(at) == order[24:]
    # thumbnails were written to the dataset's workspace cache
    ds = open_dataset(env["nerve"], workspace=Workspace(env["ws"]))
    assert len(list((ds.workdir / "thumbs").glob("*.jpg"))) >= 36


def test_filters_reduce_the_count(env) -> None:
    df = frame(env["nerve"], env["ws"])
    at = ok(app(env["nerve"]).run())
    at.multiselect(key="browser_f_mask").set_value(["with mask"])
    ok(at.run())
    pos = df[df["has_mask"]]
    assert count_caption(at) == len(pos) and sorted(thumb_ids(at)) == sorted(pos["case_id"])
    at.multiselect(key="browser_f_groups").set_value(["2"])
    ok(at.run())
    both = pos[pos["group_id"] == "2"]
    assert count_caption(at) == len(both) > 0 and sorted(thumb_ids(at)) == sorted(both["case_id"])
    at.multiselect(key="browser_f_mask").set_value(["empty"])
    ok(at.run())
    neg = df[(~df["has_mask"]) & (df["group_id"] == "2")]
    assert sorted(thumb_ids(at)) == sorted(neg["case_id"])
    # mask-area range (inclusive): only masks between the two middle areas
    at.multiselect(key="browser_f_mask").set_value([])
    at.multiselect(key="browser_f_groups").set_value([])
    areas = sorted(pos["mask_area"].tolist())
    lo, hi = areas[2], areas[-3]
    at.slider(key="browser_f_area").set_value((lo, hi))
    ok(at.run())
    want = df[(df["mask_area"] >= lo) & (df["mask_area"] <= hi)]
    assert sorted(thumb_ids(at)) == sorted(want["case_id"]) and 0 < len(want) < len(pos)
    # the id search
    at.slider(key="browser_f_area").set_value((int(df["mask_area"].min()), int(df["mask_area"].max())))
    at.text_input(key="browser_f_text").set_value("3_1")
    ok(at.run())
    assert sorted(thumb_ids(at)) == sorted(c for c in df["case_id"] if "3_1" in c)


def test_detail_view_shows_metrics_of_a_live_prediction(env) -> None:
    from engine.evaluation import class_mapping
    from engine.inference import Predictor
    from engine.metrics import image_metrics

    ds = open_dataset(env["nerve"], workspace=Workspace(env["ws"]))
    case = next(c for c in ds.cases if c.has_mask)
    at = ok(app(env["nerve"]).run())
    ok(at.button(key=f"browser_open_{case.case_id}").click().run())
    assert at.session_state[state.Shared.BROWSER_CASE] == case.case_id
    assert at.radio(key=state.Browser.VIEW).value == "Case details"
    caps = [c for img in at.image for c in img.captions]
    assert caps[0] == f"{case.case_id} · image" and caps[1] == f"ground truth · {case.mask_area:,} px"
    info = next(d.value for d in at.dataframe if "field" in d.value.columns)
    fields = dict(zip(info["field"], info["value"]))
    assert fields["case id"] == case.case_id and fields["group"] == case.group_id
    assert fields["mask source"] == case.mask.describe()

    at.selectbox(key=state.Browser.MODEL).set_value(MODEL)
    ok(at.run())
    pred = Predictor.from_weights(env["ws"] / "models" / MODEL, device="cpu")
    lut = class_mapping(pred.card.labels, ds.labels)
    mask = lut[pred.predict(ds.load_image_float(case)).mask]
    want = image_metrics(mask, ds.load_mask(case), num_classes=2)[1]
    assert 0.0 < want.dice < 1.0  # a case-specific, non-trivial number
    table = at.dataframe[0].value
    assert table["class"].tolist() == ["nerve"]
    assert table["Dice"].iloc[0] == pytest.approx(want.dice)
    assert table["IoU"].iloc[0] == pytest.approx(want.iou)
    assert table["predicted px"].iloc[0] == int(np.count_nonzero(mask))
    assert f"prediction · {int(np.count_nonzero(mask)):,} px" in [c for img in at.image for c in img.captions]
    # next case button moves through the (filtered) list in natural order
    order = natural(ds.case_ids)
    ok(at.button(key="browser_case_next").click().run())
    assert at.session_state[state.Shared.BROWSER_CASE] == order[order.index(case.case_id) + 1]


def test_evaluate_then_filter_by_dice_and_show_predictions(env) -> None:
    from engine.evaluation import load_eval

    at = ok(app(env["nerve"], **{state.Browser.MODEL: MODEL}).run())
    ok(at.button(key="browser_evaluate").click().run())
    folder = at.selectbox(key=state.Browser.EVAL).value
    res = load_eval(folder)
    assert res is not None and res.summary["model"] == MODEL
    per = res.per_image.set_index("case_id")
    lo, hi = 0.01, 1.0
    at.slider(key="browser_f_dice").set_value((lo, hi))
    ok(at.run())
    want = per[(per["dice"] >= lo) & (per["dice"] <= hi)].index
    assert 0 < len(want) < len(per)
    assert count_caption(at) == len(want) and sorted(thumb_ids(at)) == sorted(want)
    for img in at.image:
        cid, *_rest, dice_txt = img.captions[0].split(" · ")
        assert dice_txt == f"Dice {per.loc[cid, 'dice']:.2f}"
    at.selectbox(key="browser_overlay").set_value("Prediction + GT outline")
    ok(at.run())
    assert len(at.image) == len(want)
    # detail view uses the evaluation's saved mask: its Dice equals the evaluation's
    cid = sorted(want)[0]
    ok(at.button(key=f"browser_open_{cid}").click().run())
    assert at.dataframe[0].value["Dice"].iloc[0] == pytest.approx(per.loc[cid, "dice"])
    assert any("saved by the evaluation" in c.value for c in at.caption)


def test_request_from_another_page_opens_the_case(env) -> None:
    ds = open_dataset(env["nerve"], workspace=Workspace(env["ws"]))
    cid = ds.case_ids[5]
    request = {"case": cid, "view": "Case details", "model": None, "eval": None}
    at = app(env["nerve"], **{state.Shared.BROWSER_CASE: cid, state.Browser.REQUEST: request})
    ok(at.run())
    assert at.radio(key=state.Browser.VIEW).value == "Case details"
    assert at.selectbox(key="browser_case_select").value == cid
    assert at.image[0].captions[0] == f"{cid} · image"


def test_conflict_status_filter(env) -> None:
    from engine.dedup import find_conflicts

    ds = open_dataset(env["nerve"], workspace=Workspace(env["ws"]))
    rep = find_conflicts(ds)
    status = conflict_status_column(ds.case_ids, rep.pairs)
    want = sorted(c for c, s in zip(ds.case_ids, status) if s == "conflict")
    assert want  # the phantom plants conflicting pairs
    at = ok(app(env["nerve"]).run())
    at.multiselect(key="browser_f_conflict").set_value(["conflict"])
    ok(at.run())
    assert sorted(thumb_ids(at)) == want
    assert all("⚠ conflict" in img.captions[0] for img in at.image)


def test_review_state_filter(env) -> None:
    from engine.store import ReviewStore

    ds = open_dataset(env["nerve"], workspace=Workspace(env["ws"]))
    at = ok(app(env["nerve"]).run())
    assert "browser_f_review" not in [m.key for m in at.multiselect]  # no review store yet: no filter
    with ReviewStore.for_dataset(ds) as store:
        store.set_case_state("2_4", "needs_fix", "alice", "mask too small")
        store.set_case_state("3_2", "accepted", "bob")
    ok(at.run())
    at.multiselect(key="browser_f_review").set_value(["needs_fix"])
    ok(at.run())
    assert thumb_ids(at) == ["2_4"]
    at.multiselect(key="browser_f_review").set_value(["unreviewed"])
    ok(at.run())
    assert count_caption(at) == len(ds) - 2


def test_eda_charts_for_the_siim_phantom(env) -> None:
    df = frame(env["ptx"], env["ws"])
    at = ok(app(env["ptx"], **{state.Browser.VIEW: "EDA"}).run())
    figs = charts(at)
    assert {"Sex (DICOM)", "View position (DICOM)", "Ground truth"} <= set(figs)
    age_title = next(t for t in figs if t.startswith("Age (DICOM)"))
    sex = count_table(df, "sex", order=("M", "F", "O"))
    assert figs["Sex (DICOM)"]["data"][0]["x"] == sex["value"].tolist()
    assert ys(figs["Sex (DICOM)"]["data"][0]) == sex["count"].tolist()
    view = count_table(df, "view_position", order=("PA", "AP", "LL", "LATERAL"))
    assert ys(figs["View position (DICOM)"]["data"][0]) == view["count"].tolist()
    # impossible ages are a separate, named trace (not dropped) and listed in a table
    n_imp = int((df["age_flag"] == "impossible").sum())
    assert n_imp >= 1 and f"{n_imp} impossible" in age_title
    traces = {t["name"]: t for t in figs[age_title]["data"]}
    assert sum(ys(traces["impossible"])) == n_imp
    assert sum(ys(traces["plausible age"])) == int((df["age_flag"] == "ok").sum())
    raw = df.loc[df["age_flag"] == "impossible", "age_raw"].astype(str).tolist()
    assert any(f"{r} (impossible)" in traces["impossible"]["x"] for r in raw)
    assert any("impossible age" in w.value for w in at.warning)
    assert sorted(at.dataframe[0].value["age_raw"].astype(str)) == sorted(raw)
    # sidebar has the DICOM filters; choosing one sex reduces the EDA to those cases
    sex_values = at.multiselect(key="browser_f_sex").options
    assert set(sex_values) == set(sex["value"])
    at.multiselect(key="browser_f_sex").set_value(["F"])
    ok(at.run())
    assert count_caption(at) == int((df["sex"] == "F").sum())
    assert ys(charts(at)["Sex (DICOM)"]["data"][0]) == [int((df["sex"] == "F").sum())]


def test_no_dataset_gives_a_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEGWB_DEMO_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("SEGWB_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception and not at.error
    assert any("No dataset chosen" in i.value for i in at.info)


# ------------------------------------------------------------------------------------ label-error finder

@pytest.fixture(scope="module")
def finder_ws(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace of its own in which the nerve phantom has a label-error finder report (a tiny model
    judges; the engine's honest_probabilities + find_suspects, as `python -m engine suspects` runs them)."""
    from engine.curation.crossfit import honest_probabilities
    from engine.curation.suspects import find_suspects

    root = tmp_path_factory.mktemp("browser_finder_ws")
    ds = open_dataset(demo / "nerve", workspace=Workspace(root))
    model = save_tiny_unet(root / "models" / "finder-unet", seed=0, centre_on=ds.load_image_float(ds.cases[0]))
    find_suspects(ds, honest_probabilities(ds, [str(model)], device="cpu"))
    return root


def test_suspects_filter_sort_and_explain_cases(demo: Path, finder_ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.curation.suspects import load_latest_suspects

    point_app_at(monkeypatch, demo, finder_ws)
    rep = load_latest_suspects(open_dataset(demo / "nerve", workspace=Workspace(finder_ws)))
    assert rep is not None and len(rep.cases) == 36
    at = ok(app(demo / "nerve").run())
    by_type: dict[str, list[str]] = {}
    for s in rep.cases:
        by_type.setdefault(s.type, []).append(s.case_id)
    kind = min(by_type, key=lambda t: len(by_type[t]))
    ms = at.multiselect(key=state.Browser.F_SUSPECT)
    assert f"{kind} ({len(by_type[kind])})" in ms.options
    ok(ms.set_value([kind]).run())
    assert count_caption(at) == len(by_type[kind]) and sorted(thumb_ids(at)) == sorted(by_type[kind])
    assert all(f"⚑ {kind} " in img.captions[0] for img in at.image)
    assert any("filters: suspect type" in c.value for c in at.caption)
    # sorted by the finder's score, most suspicious first: the report's order
    ok(at.multiselect(key=state.Browser.F_SUSPECT).set_value([]).run())
    at.selectbox(key=state.Browser.SORT).set_value("suspect score (label-error finder)")
    at.toggle(key=state.Browser.DESC).set_value(True)
    ok(at.run())
    assert thumb_ids(at) == [s.case_id for s in rep.cases]
    # the detail view of the top suspect: type, score, reasons, and the map over the image on request
    top = rep.cases[0]
    ok(at.button(key=f"browser_open_{top.case_id}").click().run())
    md = "\n".join(m.value for m in at.markdown)
    assert f"**Label-error finder:** `{top.type}` · score **{top.score:.2f}** · rank 1 of 36" in md
    assert f"- {top.reasons[0]}" in md
    assert any(c.value.startswith(f"Judged by: {top.provenance}") for c in at.caption)
    n_images = len(at.image)
    ok(at.toggle(key=state.Browser.SUSPECT_MAP).set_value(True).run())
    assert len(at.image) == n_images + 1
    caps = [c for img in at.image for c in img.captions]
    assert any(c.startswith(f"where the label disagrees ({top.type}, score {top.score:.2f})") for c in caps)
