"""AppTest of the correction loop on the Conflict review page (tiny demo phantom, real engine calls):
the live ceiling follows the decisions, "Retrain with corrections" starts a real fine-tuning job that
keeps the parent's held-out cases, and "Show what moved" reports both yardsticks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.helpers import app_test, metrics, ok, point_app_at, tiny_demo_dir

REPO = Path(__file__).resolve().parents[2]
REVIEW = str(REPO / "pages" / "6_Conflict_review.py")
EDITOR = str(REPO / "pages" / "7_Mask_editor.py")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return tiny_demo_dir(tmp_path_factory, "loop_app_demo")


def _train_parent(data: Path, ws: Path) -> None:
    from engine.augment import AugmentConfig, Preprocess
    from engine.models import ModelSpec
    from engine.splits import SplitSpec
    from engine.training import TrainConfig, train

    train(TrainConfig(data=str(data), model=ModelSpec(arch="unet_classic", base_channels=4, encoder_depth=2),
                      preprocess=Preprocess(size=(32, 32)), augment=AugmentConfig(), epochs=1, batch_size=4, lr=3e-3,
                      device="cpu", split=SplitSpec(k=3), preview_count=0, name="loop-parent", export=True,
                      status_interval=0.0, scheduler="none", num_workers=0, out=str(ws / "runs" / "loop-parent")))


def _wait_job(run_dir: str, timeout: float = 300.0) -> dict:
    from engine.jobs import job_status

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        info = job_status(Path(run_dir), log_lines=40)
        if not info["active"]:
            return info
        time.sleep(0.5)
    raise TimeoutError(f"the retrain job in {run_dir} did not end within {timeout:.0f} s")


def test_review_page_live_ceiling_retrain_and_impact(demo, tmp_path, monkeypatch):
    from engine.checkpoint import read_card
    from engine.curation import live_ceiling
    from engine.datasets import open_dataset
    from engine.dedup import find_conflicts
    from engine.store import ReviewStore
    from engine.workspace import Workspace
    from ui import state

    ws = tmp_path / "ws"
    ws.mkdir()
    point_app_at(monkeypatch, demo, ws)
    _train_parent(demo / "nerve", ws)
    ds = open_dataset(demo / "nerve", workspace=Workspace(ws))
    report = find_conflicts(ds)
    with ReviewStore.for_dataset(ds) as store:
        for p in report.pairs:
            if p["category"] == "conflict":  # keep the labelled twin: the planted conflicts decided
                store.record_decision(p["a"], p["b"], "keep_a" if p["area_a"] else "keep_b", "ana")
        live = live_ceiling(ds, store, report)
    assert live["dataset"] > report.ceiling["dataset"]

    at = app_test(REVIEW, {state.Shared.DATASET: str(demo / "nerve")})
    ok(at.run())
    m = metrics(at)
    assert m["Label-noise ceiling now"] == f"{live['dataset']:.4f}"
    assert m["Ceiling at the search"] == f"{report.ceiling['dataset']:.4f}"
    assert m["Conflicts still open"] == "0"

    at.selectbox(key="loop_parent_review").set_value("loop-parent")
    at.number_input(key="loop_epochs_review").set_value(1)
    ok(at.button(key="loop_start_review").click().run())
    job = at.session_state[state.Loop.JOB]
    assert job["parent"] == "loop-parent" and job["n_decisions"] == len(
        [p for p in report.pairs if p["category"] == "conflict"])
    info = _wait_job(job["run_dir"])
    assert info["state"] == "finished", info.get("log")
    ok(at.run())
    assert any(job["name"] in s.value and "every model picker" in s.value for s in at.success)
    card = read_card(ws / "models" / job["name"])
    parent = read_card(ws / "models" / "loop-parent")
    assert card.training["lineage"]["parent_model"] == "loop-parent"
    assert not set(card.training["split"]["train_case_ids"]) & set(parent.training["split"]["val_case_ids"])

    assert at.selectbox(key="loop_before_review").value == "loop-parent"
    assert at.selectbox(key="loop_after_review").value == job["name"]
    ok(at.button(key="loop_impact_btn_review").click().run())
    rep = at.session_state[state.Loop.IMPACT]
    assert rep["models"]["after"]["name"] == job["name"] and rep["models"]["after"]["parent"] == "loop-parent"
    assert rep["cases"]["n"] == len(parent.training["split"]["val_case_ids"])
    m = metrics(at)
    assert m["Ceiling before"] == f"{report.ceiling['dataset']:.4f}" and m["Ceiling after"] == f"{live['dataset']:.4f}"
    tables = [df.value for df in at.dataframe if "yardstick" in df.value.columns]
    assert tables and list(tables[0]["yardstick"]) == ["Original ground truth", "Corrected ground truth"]
    assert any("Movers" in md.value for md in at.markdown)


def test_editor_queue_uses_saved_model_signals(demo, tmp_path, monkeypatch):
    from engine.curation.signals import save_signals
    from engine.datasets import open_dataset
    from engine.store import ReviewStore
    from engine.workspace import Workspace
    from ui import state
    from ui.editor_view import review_queue_for

    ws = tmp_path / "ws"
    ws.mkdir()
    point_app_at(monkeypatch, demo, ws)
    ds = open_dataset(demo / "nerve", workspace=Workspace(ws))
    cid = ds.cases[-1].case_id
    save_signals(ds, {"models": ["x", "y"], "disagreement": {cid: 0.9}, "uncertainty": {cid: 0.5}})
    with ReviewStore.for_dataset(ds) as store:
        q, _ = review_queue_for(ds, store)
    top = {c: why for c, _, why in q}
    assert top[cid] == ["models disagree 0.90", "flip-TTA uncertainty 0.50"]
    at = app_test(EDITOR, {state.Shared.DATASET: str(demo / "nerve")})
    ok(at.run())
    assert any("Model signals for the queue" in e.label for e in at.expander)


def test_editor_scores_the_queue_with_two_models(demo, tmp_path, monkeypatch):
    """The editor's "Score the queue" runs both models (evaluation + flip-TTA) and the queue shows why."""
    from engine.curation.signals import load_signals
    from engine.datasets import open_dataset
    from engine.workspace import Workspace
    from tests.support.helpers import save_tiny_unet
    from ui import state

    ws = tmp_path / "ws"
    ws.mkdir()
    point_app_at(monkeypatch, demo, ws)
    ds = open_dataset(demo / "nerve", workspace=Workspace(ws))
    img = ds.load_image_float(ds.cases[0].case_id)
    for i, name in enumerate(("sig-a", "sig-b")):
        save_tiny_unet(ws / "models" / name, seed=i, centre_on=img)
    at = app_test(EDITOR, {state.Shared.DATASET: str(demo / "nerve")})
    ok(at.run())
    at.multiselect(key=state.Loop.SIG_MODELS).set_value(["sig-a", "sig-b"])
    at.number_input(key=state.Loop.SIG_MAX).set_value(8)
    ok(at.button(key=state.Loop.SIG_BTN).click().run())
    sig = load_signals(ds)
    labelled = {c.case_id for c in ds.cases if c.labelled}
    assert sig["models"] == ["sig-a", "sig-b"] and set(sig["disagreement"]) == labelled
    assert len(sig["uncertainty"]) == 8 and all(0 <= v <= 1 for v in sig["uncertainty"].values())
    assert any(v > 0 for v in sig["disagreement"].values())
    assert any("case(s) with model disagreement" in c.value for c in at.caption)


def test_correction_loop_page_shows_the_loop_and_movers_with_thumbnails(demo, tmp_path, monkeypatch):
    from engine.datasets import open_dataset
    from engine.dedup import find_conflicts
    from engine.store import ReviewStore
    from engine.workspace import Workspace
    from ui import state

    ws = tmp_path / "ws"
    ws.mkdir()
    point_app_at(monkeypatch, demo, ws)
    _train_parent(demo / "nerve", ws)
    ds = open_dataset(demo / "nerve", workspace=Workspace(ws))
    find_conflicts(ds)
    ids = [c.case_id for c in ds.cases if c.labelled][:3]
    with ReviewStore.for_dataset(ds) as store:
        store.set_case_state(ids[0], "needs_fix", "ana")
    at = app_test(str(REPO / "pages" / "9_Correction_loop.py"), {state.Shared.DATASET: str(demo / "nerve"),
                                                                 state.Shared.SHOW_WEAK_MODELS: True})
    ok(at.run())
    assert "Label-noise ceiling now" in metrics(at)
    assert "loop-parent" in at.selectbox(key="loop_parent_page").options
    assert not at.expander  # the page body, not the expander the review page shows

    def row(cid: str, delta: float) -> dict:
        return {"case_id": cid, "touched": ["needs_fix by ana"] if cid == ids[0] else [], "gt_changed": False,
                "dropped": False, "moved": abs(delta), "delta_original": delta, "delta_corrected": delta,
                "dice_before_original": 0.5, "dice_after_original": 0.5 + delta, "dice_before_corrected": 0.5,
                "dice_after_corrected": 0.5 + delta}

    part = {"before": {"mean_dice": 0.5, "n_cases": 3}, "after": {"mean_dice": 0.6, "n_cases": 3},
            "delta": {"mean_dice": 0.1, "mean_iou": 0.1}}
    at.session_state[state.Loop.IMPACT] = {  # a report as engine.impact.impact_report shapes it
        "dataset": str(ds.root), "models": {"before": {"name": "loop-parent"}, "after": {"name": "child"}},
        "cases": {"n": 3, "source": "held-out", "n_dropped_by_review": 0},
        "yardsticks": {"original": part, "corrected": part}, "yardstick_shift": {"before": 0.0},
        "ceiling": {"before": 0.9, "after": 0.95}, "mover_threshold": 0.05, "movers": ids,
        "touched_movers": ids[:1], "per_case": [row(c, d) for c, d in zip(ids, (0.3, -0.2, 0.1))]}
    ok(at.run())
    caps = [im.caption for e in at.get("image") for im in e.proto.imgs]
    assert any(c.startswith(ids[0]) and "+0.300" in c and "needs_fix by ana" in c for c in caps), caps
    assert any(c.startswith(ids[1]) and "-0.200" in c for c in caps), caps
