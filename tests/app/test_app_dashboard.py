"""AppTest of pages/4_Metrics_dashboard.py: a tiny model in a tmp workspace, real evaluations on the
tiny phantoms (engine.evaluation.evaluate), a hand-written training run folder.

Shown numbers are compared with the evaluation's summary / the engine's own tables.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.dashboard import headline, join_meta, slice_metrics, sweep_matrix, worst_cases
from engine.datasets import open_dataset
from engine.evaluation import EvalConfig, evaluate
from engine.workspace import Workspace
from tests.support.helpers import app_test, charts, metrics, ok, point_app_at, save_tiny_unet, tiny_demo_dir
from ui import state

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "4_Metrics_dashboard.py")
MODEL = "dash-test-unet"
MODEL_PTX = "dash-test-ptx"  # classes are matched by name: a "nerve" model is not scored on pneumothorax
CFG = EvalConfig(sweep_max_images=24, device="cpu")


# ------------------------------------------------------------------------------------ fixtures

def make_model(ws_root: Path, name: str, ds, label: str = "nerve") -> Path:
    """A tiny classic U-Net in ``<ws>/models/<name>``; foreground bias centred on a sample image
    (so it predicts about half of each image and its scores differ from case to case)."""
    return save_tiny_unet(ws_root / "models" / name, seed=1, label=label, centre_on=ds.load_image_float(ds.cases[0]))


def write_run(runs: Path, name: str = "tiny-run-20250101-120000", epochs: int = 4) -> tuple[Path, list[dict]]:
    """A run folder as engine.training writes it: history.json/csv, status.json, preview frames + GIF."""
    from engine.training.runlog import RunLog, render_preview, write_evolution_gif

    run = runs / name
    hist = [{"epoch": e, "train_loss": round(1.0 / e, 4), "val_loss": round(1.3 / e, 4), "val_dice": 0.2 * e,
             "val_iou": 0.15 * e, "dice_nerve": 0.2 * e, "lr": 1e-3 * 0.5 ** (e - 1), "seconds": 1.0,
             "best": True, "n_val": 4} for e in range(1, epochs + 1)]
    log = RunLog(run, epochs=epochs, steps_per_epoch=3)
    log.write_history(hist)
    log.update(force=True, state="finished", epoch=epochs)
    rng = np.random.default_rng(0)
    for e in range(1, epochs + 1):
        img = rng.random((1, 32, 32)).astype(np.float32)
        gt = np.zeros((32, 32), np.uint8)
        gt[8:24, 8:24] = 1
        pr = np.zeros_like(gt)
        pr[8:8 + 4 * e, 8:24] = 1
        render_preview([(img, gt, pr)], run / "preview" / f"epoch_{e:03d}.png", title=f"epoch {e}")
    write_evolution_gif(run / "preview")
    return run, hist


@pytest.fixture(scope="session")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from engine.inference import Predictor

    demo = tiny_demo_dir(tmp_path_factory, "dash_demo")
    ws = tmp_path_factory.mktemp("dash_ws")
    nerve = open_dataset(demo / "nerve", workspace=Workspace(ws))
    folder = make_model(ws, MODEL, nerve)
    pred = Predictor.from_weights(folder, device="cpu")
    res = evaluate(pred, nerve, CFG)
    ptx = open_dataset(demo / "ptx", workspace=Workspace(ws))
    pred_ptx = Predictor.from_weights(make_model(ws, MODEL_PTX, ptx, "pneumothorax"), device="cpu")
    res_ptx = evaluate(pred_ptx, ptx, CFG)
    run, hist = write_run(ws / "runs")
    return {"demo": demo, "ws": ws, "nerve": nerve, "ptx": ptx, "res": res, "res_ptx": res_ptx,
            "run": run, "hist": hist, "model_dir": folder}


@pytest.fixture()
def env(setup: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    point_app_at(monkeypatch, setup["demo"], setup["ws"])
    return setup


def app(dataset: Path, script: str = PAGE, **session) -> AppTest:
    return app_test(script, {state.Shared.DATASET: str(dataset), state.Shared.DEVICE: "cpu",
                             state.Shared.MODEL: MODEL}, **session)


def arr(v) -> np.ndarray:
    """A plotly array from the figure JSON (plain list or base64 typed array)."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if isinstance(shape, str):
            shape = [int(x) for x in shape.split(",")]
        return a.reshape(shape) if shape else a
    return np.asarray(v, dtype=float)


def f3(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


# ------------------------------------------------------------------------------------ tests

def test_summary_numbers_equal_the_evaluation(env) -> None:
    at = ok(app(env["nerve"].root).run())
    s = env["res"].summary
    assert at.selectbox(key=state.Dashboard.EVAL).value == str(env["res"].folder)
    h = headline(s)
    m = metrics(at)
    assert m["Mean Dice"] == f3(s["mean_dice"]) and m["Mean IoU"] == f3(s["mean_iou"])
    assert m["Dice · GT non-empty"] == f3(s["dice_gt_nonempty"]["nerve"]) == f3(h["dice_gt_nonempty"])
    assert m["Dice · GT empty"] == f3(s["dice_gt_empty"]["nerve"])
    assert m["Images"] == str(s["n_cases"]) == str(len(env["nerve"]))
    assert 0.0 < s["mean_dice"] < 1.0
    assert any(s["empty_policy_rule"] in i.value and "kaggle" in i.value for i in at.info)
    table = at.dataframe[0].value
    assert table["class"].tolist() == ["nerve"]
    assert table["Dice"].iloc[0] == pytest.approx(s["per_class"]["nerve"])
    assert table["IoU"].iloc[0] == pytest.approx(s["per_class_iou"]["nerve"])
    # per-image distribution: histogram + box over every case
    figs = charts(at)
    assert "Per-image dice" in figs and "dice by ground truth" in figs
    n_hist = sum(len(arr(t["x"])) for t in figs["Per-image dice"]["data"])
    assert n_hist == env["res"].per_image["dice"].notna().sum()


def test_sweep_heatmap_and_presence_charts(env) -> None:
    res = env["res"]
    at = ok(app(env["nerve"].root).run())
    figs = charts(at)
    title = next(t for t in figs if t.startswith("Mean Dice over threshold × minimum area (no gate)"))
    heat, star, *rest = figs[title]["data"]
    want = sweep_matrix(res.sweep, "no gate")
    np.testing.assert_allclose(arr(heat["z"]), want["matrix"].to_numpy(dtype=float))
    assert star["name"] == "best" and star["x"] == [str(want["best"]["min_area"])]
    assert star["y"] == [f"{want['best']['threshold']:g}"]
    assert rest and rest[0]["name"] == "current setting"  # the model's own setting (0.5, 0) is marked
    assert metrics(at)["Best in this grid"] == f3(want["best"]["score"])
    # presence: ROC/PR from the summary's point lists, confusion matrix and the four ratios
    p = res.summary["presence"]
    roc = next(v for t, v in figs.items() if t.startswith("ROC"))
    np.testing.assert_allclose(arr(roc["data"][0]["x"]), p["roc_curve"]["fpr"])
    np.testing.assert_allclose(arr(roc["data"][0]["y"]), p["roc_curve"]["tpr"])
    pr = next(v for t, v in figs.items() if t.startswith("Precision"))
    np.testing.assert_allclose(arr(pr["data"][0]["x"]), p["pr_curve"]["recall"])
    cm = figs["Confusion matrix (images)"]["data"][0]
    assert arr(cm["z"]).astype(int).tolist() == p["confusion_matrix"]
    m = metrics(at)
    for label, key in (("Sensitivity", "sensitivity"), ("Specificity", "specificity"), ("PPV", "ppv"),
                       ("NPV", "npv"), ("ROC AUC", "roc_auc")):
        assert m[label] == f3(p[key])
    # another gate variant of the sweep
    gates = at.selectbox(key="dash_sweep_gate").options
    assert gates[0] == "no gate" and len(gates) > 1
    at.selectbox(key="dash_sweep_gate").set_value(gates[1])
    ok(at.run())
    assert any(t.endswith(f"({gates[1]})") for t in charts(at))


def test_worst_cases_gallery_links_to_the_browser(env) -> None:
    res = env["res"]
    at = ok(app(env["nerve"].root).run())
    want = worst_cases(res.per_image, 12)["case_id"].astype(str).tolist()
    shown = [c.split(" · ")[0] for img in at.image for c in img.captions if "Dice" in c]
    assert shown == want
    first = want[0]
    assert any(f"Dice {res.per_image.set_index('case_id').loc[first, 'dice']:.3f}" in c
               for img in at.image for c in img.captions)
    at.checkbox(key="dash_worst_pos").check()
    ok(at.run())
    pos = worst_cases(res.per_image, 12, only_gt_nonempty=True)["case_id"].astype(str).tolist()
    assert [c.split(" · ")[0] for img in at.image for c in img.captions if "Dice" in c] == pos
    ok(at.button(key=f"dash_open_{pos[0]}").click().run())
    assert at.session_state[state.Shared.BROWSER_CASE] == pos[0]
    assert at.session_state[state.Browser.REQUEST] == {"case": pos[0], "view": "Case details", "model": MODEL,
                                             "eval": str(res.folder)}


def test_worst_case_opens_in_the_browser_from_the_app(env) -> None:
    """Through app.py (a real multipage run): the button switches to the browser's detail view."""
    res = env["res"]
    at = app(env["nerve"].root, script=str(REPO / "app.py"))
    at.switch_page("pages/4_Metrics_dashboard.py")
    ok(at.run())
    assert any(pl.proto.page.endswith("Dataset_browser") for pl in at.get("page_link"))
    ok(at.checkbox(key="dash_worst_pos").check().run())
    cid = worst_cases(res.per_image, 12, only_gt_nonempty=True)["case_id"].astype(str).iloc[0]
    ok(at.button(key=f"dash_open_{cid}").click().run())
    assert [t.value for t in at.title] == ["Dataset browser"]
    caps = [c for img in at.image for c in img.captions]
    assert caps[0] == f"{cid} · image"
    pred_area = int(res.per_image.set_index("case_id").loc[cid, "pred_area"])
    assert f"prediction · {pred_area:,} px" in caps
    assert at.dataframe[0].value["Dice"].iloc[0] == pytest.approx(res.per_image.set_index("case_id").loc[cid, "dice"])


def test_evaluate_button_with_the_exclude_policy(env) -> None:
    from engine.evaluation import load_eval

    at = ok(app(env["nerve"].root).run())
    at.selectbox(key="dash_model").set_value(MODEL)
    at.radio(key="dash_policy").set_value("exclude")
    ok(at.run())
    ok(at.button(key="dash_evaluate").click().run())
    folder = at.selectbox(key=state.Dashboard.EVAL).value
    assert folder != str(env["res"].folder) and len(at.selectbox(key=state.Dashboard.EVAL).options) >= 2
    res = load_eval(folder)
    s = res.summary
    assert s["empty_policy"] == "exclude" and s["model"] == MODEL
    # under "exclude" both-empty images are left out of the mean: check against the per-image table
    per = res.per_image
    both_empty = (~per["gt_present"]) & (~per["pred_present"])
    assert per.loc[both_empty, "dice"].isna().all()
    assert s["mean_dice"] == pytest.approx(per["dice"].mean(skipna=True))
    m = metrics(at)
    assert m["Mean Dice"] == f3(s["mean_dice"]) and m["Dice · GT empty"] == f3(s["dice_gt_empty"]["nerve"])
    assert any(s["empty_policy_rule"] in i.value and "exclude" in i.value for i in at.info)


def test_slices_by_dicom_sex_and_view(env) -> None:
    res = env["res_ptx"]
    at = ok(app(env["ptx"].root, **{state.Shared.MODEL: MODEL_PTX}).run())
    assert at.selectbox(key=state.Dashboard.EVAL).value == str(res.folder)
    by = at.selectbox(key="dash_slice_by")
    assert {"DICOM sex", "age band", "view position"} <= set(by.options)  # shown labels
    joined = join_meta(res.per_image, env["ptx"].to_frame())
    for key in ("sex", "view_position", "age_band"):
        at.selectbox(key="dash_slice_by").set_value(key)
        ok(at.run())
        want = slice_metrics(joined, key)
        got = next(d.value for d in at.dataframe if key in d.value.columns)
        assert got[key].tolist() == want[key].tolist()
        assert got["n"].tolist() == want["n"].tolist()
        np.testing.assert_allclose(got["mean"].to_numpy(float), want["mean"].to_numpy(float))
    assert "impossible" in want["age_band"].tolist()  # the 413-year-old is its own band, not dropped


def test_training_curves_and_preview_animation(env) -> None:
    hist = env["hist"]
    at = ok(app(env["nerve"].root).run())
    assert at.selectbox(key="dash_run").value == env["run"].name
    figs = charts(at)
    loss = {t["name"]: arr(t["y"]) for t in figs["Loss"]["data"]}
    np.testing.assert_allclose(loss["train_loss"], [h["train_loss"] for h in hist])
    np.testing.assert_allclose(loss["val_loss"], [h["val_loss"] for h in hist])
    val = {t["name"]: arr(t["y"]) for t in figs["Validation metrics"]["data"]}
    np.testing.assert_allclose(val["val_dice"], [h["val_dice"] for h in hist])
    lr = {t["name"]: arr(t["y"]) for t in figs["Learning rate"]["data"]}
    np.testing.assert_allclose(lr["lr"], [h["lr"] for h in hist])
    caps = [c for img in at.image for c in img.captions]
    assert any(c.startswith("evolution.gif") for c in caps)
    assert f"epoch {len(hist)}" in caps
    at.select_slider(key="dash_epoch").set_value(2)
    ok(at.run())
    assert "epoch 2" in [c for img in at.image for c in img.captions]


def test_no_evaluation_and_no_runs_yet(env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGWB_WORKSPACE", str(tmp_path / "fresh_ws"))
    at = ok(app(env["nerve"].root).run())
    assert any("No evaluation of a model on this dataset yet" in i.value for i in at.info)
    assert any("No training runs" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_own_training_data_defaults_to_held_out_and_a_training_figure_is_labelled(env) -> None:
    """A model whose card says it was trained on this dataset: the dashboard evaluates the held-out
    cases by default (banner: held-out), and an evaluation over all cases is labelled as including
    training cases, in the picker and above every figure."""
    from engine.evaluation import load_eval

    ds = env["nerve"]
    labelled = [c.case_id for c in ds.cases if c.labelled]
    val = labelled[: max(2, len(labelled) // 4)]
    name = "dash-own-data"
    save_tiny_unet(env["ws"] / "models" / name, seed=2, training={"data": str(ds.root), "split": {"val_case_ids": val}})
    from tests.support.helpers import clear_streamlit_caches

    clear_streamlit_caches()
    at = ok(app(ds.root).run())
    at.selectbox(key="dash_model").set_value(name)
    ok(at.run())
    assert at.radio(key=f"dash_cases_{name}").value.startswith("Held-out")
    ok(at.button(key="dash_evaluate").click().run())
    s = load_eval(at.selectbox(key=state.Dashboard.EVAL).value).summary
    assert s["model"] == name and s["n_cases"] == len(val) and s["training_overlap"]["n_cases"] == 0
    assert any("Held-out" in x.value for x in at.success)
    at.radio(key=f"dash_cases_{name}").set_value("All labelled cases")
    ok(at.run())
    ok(at.button(key="dash_evaluate").click().run())
    sel = at.selectbox(key=state.Dashboard.EVAL)
    s = load_eval(sel.value).summary
    n_train = len(labelled) - len(val)
    assert s["n_cases"] == len(labelled) and s["training_overlap"]["n_cases"] == n_train
    assert any(f"Includes {n_train} of {len(labelled)} training cases" in e.value for e in at.warning)
    assert f"INCLUDES {n_train} TRAINING CASES" in sel.format_func(sel.value)
