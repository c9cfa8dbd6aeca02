"""Compare models page (pages/2_Compare_models.py) with AppTest: two tiny models, tiny phantoms.

Numbers on the page are checked against the engine computed independently (predictions,
disagreement-map pixel counts, the dataset comparison table).
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support.helpers import clear_streamlit_caches, save_tiny_unet

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "2_Compare_models.py")
MODELS = ["cmp-a", "cmp-b"]


def _tiny_model(ws: Path, name: str, seed: int, threshold: float) -> None:
    """A random tiny U-Net whose card threshold sits inside its probability range (non-trivial masks)."""
    from engine.postprocess import PostProcessConfig

    save_tiny_unet(ws / "models" / name, seed=seed, postprocess=PostProcessConfig(threshold=threshold))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from engine.datasets import open_dataset
    from engine.inference import Predictor
    from engine.phantoms import generate_demo

    root = tmp_path_factory.mktemp("compare_app")
    mp = pytest.MonkeyPatch()
    ws, demo = root / "ws", root / "demo"
    mp.setenv("SEGWB_WORKSPACE", str(ws))
    mp.setenv("SEGWB_DEMO_DATA", str(demo))
    generate_demo(demo, scale="tiny")
    ds = open_dataset(demo / "nerve")
    img = ds.load_image_float(ds.cases[0])
    for i, name in enumerate(MODELS):
        _tiny_model(ws, name, seed=i, threshold=0.5)
        probs = Predictor.from_weights(name, device="cpu").predict(img).probs[1]
        _tiny_model(ws, name, seed=i, threshold=round(float(np.median(probs)), 3))  # same weights, mid threshold
    clear_streamlit_caches()
    yield SimpleNamespace(root=root, ws=ws, nerve=demo / "nerve")
    clear_streamlit_caches()
    mp.undo()


def page(env, n: int | None = None):
    from streamlit.testing.v1 import AppTest

    from ui import state

    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state[state.Shared.MODEL] = MODELS[0]
    at.session_state[state.Shared.DATASET] = str(env.nerve)
    at.session_state["compare_models"] = list(MODELS)
    if n is not None:
        at.session_state["compare_n"] = n
    return at


def predicted(name: str, img: np.ndarray) -> np.ndarray:
    from engine.inference import Predictor

    return Predictor.from_weights(name, device="cpu").predict(img).mask


def test_one_image_side_by_side(env):
    from engine.compare import pairwise_dice
    from engine.datasets import open_dataset
    from engine.visualize import disagreement_map

    at = page(env)
    at.run()
    assert not at.exception and not at.error
    ds = open_dataset(env.nerve)
    cid = at.selectbox(key="compare_case_select").value
    case = ds.case(cid)
    assert case.has_mask                                     # defaults to a case with a mask
    img, gt = ds.load_image_float(case), ds.load_mask(case)
    a, b = (predicted(n, img) for n in MODELS)
    tab = at.tabs[0]
    assert len(tab.get("image")) >= 4                        # GT, A, B, disagreement map
    m = {x.label: x.value for x in tab.metric}
    assert m["Dice A vs B (foreground)"] == f"{pairwise_dice(a, b)['foreground']:.3f}"
    _, counts = disagreement_map(gt, a, b)
    legend = " ".join(str(x.value) for x in tab.markdown)
    assert counts
    for name, n in counts.items():
        assert f"{name} ({n:,} px)" in legend
    models = tab.dataframe[1].value
    assert list(models["model"]) == MODELS
    assert models.loc[0, "dice vs GT foreground"] == pytest.approx(pairwise_dice(a, gt)["foreground"])
    assert models.loc[1, "area foreground (px)"] == int(np.count_nonzero(b))

    other = next(c.case_id for c in ds.cases if c.case_id != cid)
    at.selectbox(key="compare_case_select").set_value(other).run()
    assert not at.exception
    from ui import state

    assert at.session_state[state.Compare.CASE] == other


def test_one_image_upload_without_ground_truth(env):
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(0).integers(0, 255, (64, 96), dtype=np.uint8))
    at = page(env)
    at.run()
    at.radio(key="compare_src").set_value("Upload").run()
    assert any("Upload an image" in i.value for i in at.info)
    at.file_uploader(key="compare_upload").set_value(("u.tif", buf.getvalue(), "image/tiff")).run()
    assert not at.exception and not at.error
    tab = at.tabs[0]
    assert len(tab.get("image")) >= 3                        # A, B, disagreement map; no ground truth
    captions = [im.caption for e in tab.get("image") for im in e.proto.imgs]
    assert any("no ground truth" in c for c in captions)
    assert not any(c == "Ground truth" for c in captions)
    assert "dice vs GT foreground" not in tab.dataframe[1].value.columns


def test_dataset_table_sorted_and_opens_cases(env):
    from engine.compare import compare_models
    from engine.datasets import open_dataset
    from engine.evaluation import list_evals, load_eval
    from ui import state

    at = page(env, n=8)
    at.run()
    assert not at.exception
    assert any("Compare on these cases" in i.value for i in at.tabs[1].info)
    at.button(key="compare_go").click().run()
    assert not at.exception and not at.error
    tab = at.tabs[1]
    table = tab.dataframe[0].value
    assert len(table) == 8
    assert {"case_id", "disagreement", "dice_ab", f"dice_gt_{MODELS[0]}", f"dice_gt_{MODELS[1]}",
            "gt_area"} <= set(table.columns)
    assert list(table["disagreement"]) == sorted(table["disagreement"], reverse=True)
    assert table["disagreement"].nunique() > 1 and 0 < table["dice_ab"].min() < 1   # non-trivial masks
    # the same table from the engine, computed here from the cached evaluations
    ds = open_dataset(env.nerve)
    evals = {e["model"]: load_eval(e["folder"]) for e in list_evals(ds)}
    assert set(evals) == set(MODELS)
    expected = compare_models(ds, {n: evals[n] for n in MODELS}, case_ids=[c.case_id for c in ds.labelled_cases()][:8])
    assert list(table["case_id"]) == list(expected["case_id"])
    assert np.allclose(table["dice_ab"], expected["dice_ab"])
    assert np.allclose(table[f"dice_gt_{MODELS[1]}"], expected[f"dice_gt_{MODELS[1]}"])
    m = {x.label: x.value for x in tab.metric}
    assert m["Mean Dice AB"] == f"{expected['dice_ab'].mean():.3f}"
    n_dis = int((expected["disagreement"] > 0.5).sum())
    assert m["Cases with disagreement > 0.5"] == f"{n_dis} / 8"
    # first row opens by default; a table row selection and the selectbox open others
    assert at.subheader[-1].value == f"Case {table.iloc[0]['case_id']}"
    at.session_state["compare_table"] = {"selection": {"rows": [3], "columns": [], "cells": []}}
    at.run()
    assert at.subheader[-1].value == f"Case {table.iloc[3]['case_id']}"
    assert at.session_state[state.Compare.CASE] == table.iloc[3]["case_id"]
    at.selectbox(key="compare_open_case").set_value(table.iloc[5]["case_id"]).run()
    assert at.subheader[-1].value == f"Case {table.iloc[5]['case_id']}"
    assert not at.exception and not at.error
    # a new session finds the cached evaluations: the table shows without pressing the button
    at2 = page(env, n=8)
    at2.run()
    assert not at2.exception
    assert len(at2.tabs[1].dataframe[0].value) == 8
