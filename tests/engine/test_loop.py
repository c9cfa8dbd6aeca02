"""Closing the loop: live label-noise ceiling, the smarter case queue, retraining on corrections with
the parent's split, and the impact report on both yardsticks (issue 12, parts 1-3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.helpers import make_dataset

# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture()
def paired(tmp_path):
    from engine.datasets import open_dataset
    from engine.store import ReviewStore
    from engine.workspace import Workspace

    root = make_dataset(tmp_path / "data", n_subjects=4, frames=4)
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"))
    store = ReviewStore.for_dataset(ds)
    yield ds, store
    store.close()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from engine.phantoms import generate_demo

    root = tmp_path_factory.mktemp("loop-demo")
    generate_demo(root, scale="tiny")
    return root / "nerve"


def _train_parent(data: Path, ws, name: str = "parent", epochs: int = 1):
    from engine.augment import AugmentConfig, Preprocess
    from engine.models import ModelSpec
    from engine.splits import SplitSpec
    from engine.training import TrainConfig, train

    cfg = TrainConfig(data=str(data), model=ModelSpec(arch="unet_classic", base_channels=4, encoder_depth=2),
                      preprocess=Preprocess(size=(32, 32)), augment=AugmentConfig(), epochs=epochs, batch_size=4,
                      lr=3e-3, device="cpu", split=SplitSpec(k=3), preview_count=0, name=name, export=True,
                      status_interval=0.0, scheduler="none", num_workers=0, out=str(ws.root / "runs" / name))
    return train(cfg)


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory):
    """The tiny nerve phantom with a workspace, a trained parent model and a conflicts report."""
    import os

    from engine.datasets import open_dataset
    from engine.dedup import find_conflicts
    from engine.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("loop-ws"))
    old = os.environ.get("SEGWB_WORKSPACE")
    os.environ["SEGWB_WORKSPACE"] = str(ws.root)
    try:
        res = _train_parent(phantom, ws)
        ds = open_dataset(phantom, workspace=ws)
        report = find_conflicts(ds)
        yield ds, ws, report, res
    finally:
        if old is None:
            os.environ.pop("SEGWB_WORKSPACE", None)
        else:
            os.environ["SEGWB_WORKSPACE"] = old


# ------------------------------------------------------------------------------------------ impact (hand-built)

def _disk(ds, cid):
    return (ds.load_mask(cid) > 0).astype(np.uint8)


def test_impact_known_deltas_on_both_yardsticks(paired):
    """X: label corrected to empty (before right on the old GT, after right on the new GT); Y: dropped by a
    decision; Z: decided, GT unchanged, after improves from a half mask; W: empty both ways."""
    from engine.impact import impact_markdown, impact_report

    ds, store = paired
    X, Y, Z, W = "s0_1", "s0_2", "s1_1", "s1_2"
    assert all(ds.case(c).has_mask for c in (X, Y, Z)) and not ds.case(W).has_mask
    store.save_mask_version(X, np.zeros_like(ds.load_mask(X)), "ana", "no nerve here")
    store.record_decision(Z, Y, "keep_a", "ana")  # drops Y
    gz = _disk(ds, Z)
    half = gz.copy()
    rows = np.flatnonzero(half.any(axis=1))
    half[rows[len(rows) // 2]:] = 0
    dz = 2 * half.sum() / (half.sum() + gz.sum())
    empty = np.zeros_like(gz)
    before = {X: _disk(ds, X), Y: _disk(ds, Y), Z: half, W: empty}
    after = {X: empty, Y: _disk(ds, Y), Z: gz, W: empty}
    rep = impact_report(ds, "A", "B", store, None, cases=[X, Y, Z, W], predictions={"before": before, "after": after})

    rows_by = {r["case_id"]: r for r in rep["per_case"]}
    x, y, z, w = (rows_by[c] for c in (X, Y, Z, W))
    assert (x["dice_before_original"], x["dice_after_original"], x["delta_original"]) == (1.0, 0.0, -1.0)
    assert (x["dice_before_corrected"], x["dice_after_corrected"], x["delta_corrected"]) == (0.0, 1.0, 1.0)
    assert x["gt_changed"] and not x["dropped"] and any("mask v1 by ana" in t for t in x["touched"])
    assert y["dropped"] and y["dice_before_corrected"] is None and y["delta_original"] == 0.0
    assert z["dice_before_original"] == pytest.approx(dz, abs=1e-6) and z["dice_after_original"] == 1.0
    assert z["delta_corrected"] == pytest.approx(1 - dz, abs=1e-6) and not z["gt_changed"]
    assert any(t.startswith("keep_a by ana") for t in z["touched"])
    assert (w["dice_before_original"], w["dice_after_corrected"]) == (1.0, 1.0) and not w["touched"]

    org, cor = rep["yardsticks"]["original"], rep["yardsticks"]["corrected"]
    assert org["before"]["n_cases"] == 4 and cor["before"]["n_cases"] == 3
    assert org["before"]["mean_dice"] == pytest.approx((1 + 1 + dz + 1) / 4, abs=1e-6)
    assert org["after"]["mean_dice"] == pytest.approx(3 / 4, abs=1e-6)
    assert cor["before"]["mean_dice"] == pytest.approx((0 + dz + 1) / 3, abs=1e-6)
    assert cor["after"]["mean_dice"] == pytest.approx(1.0, abs=1e-6)
    assert cor["delta"]["mean_dice"] == pytest.approx(1 - (dz + 1) / 3, abs=1e-6)
    # the yardstick moved: the same predictions on the same cases, old vs corrected ground truth
    assert rep["yardstick_shift"]["before"] == pytest.approx(-1 / 3, abs=1e-6)
    assert rep["yardstick_shift"]["after"] == pytest.approx(1 / 3, abs=1e-6)
    assert rep["movers"] == [X, Z] and rep["touched_movers"] == [X, Z]
    assert rep["cases"]["n_dropped_by_review"] == 1 and rep["review"]["n_mask_versions"] == 1
    text = impact_markdown(rep)
    assert "corrected GT" in text and X in text and "yardstick change" in text


def test_impact_without_review_both_yardsticks_agree(paired):
    from engine.impact import impact_report

    ds, store = paired
    ids = ["s2_1", "s2_2", "s2_3"]
    preds = {c: _disk(ds, c) for c in ids}
    rep = impact_report(ds, "A", "B", None, None, cases=ids, predictions={"before": preds, "after": preds})
    assert rep["yardsticks"]["original"] == rep["yardsticks"]["corrected"]
    assert rep["yardstick_shift"] == {"before": 0.0, "after": 0.0} and rep["movers"] == []


# ------------------------------------------------------------------------------------------ live ceiling

def test_live_ceiling_equals_a_rescan_after_each_decision(phantom, tmp_path):
    from engine.curation import corrected_dataset, live_ceiling
    from engine.datasets import open_dataset, write_manifest
    from engine.dedup import find_conflicts
    from engine.dedup.conflicts import ConflictConfig
    from engine.store import ReviewStore
    from engine.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    ds = open_dataset(phantom, workspace=ws)
    report = find_conflicts(ds)
    assert report.ceiling["dataset"] < 1.0
    live0 = live_ceiling(ds, ReviewStore.for_dataset(ds), report)
    assert live0["dataset"] == report.ceiling["dataset"] and live0["n_groups_rescored"] == 0

    conflicts = [p for p in report.pairs if p["category"] == "conflict"]
    disagree = [p for p in report.pairs if p["category"] == "disagree"]
    assert len(conflicts) >= 3 and disagree
    store = ReviewStore.for_dataset(ds)

    def fix_mask(p):  # a corrected mask version: the empty twin gets its partner's mask
        a, b = p["a"], p["b"]
        empty, full = (a, b) if not ds.case(a).has_mask else (b, a)
        store.save_mask_version(empty, ds.load_mask(full), "ana", "copied")

    steps = [lambda: store.record_decision(conflicts[0]["a"], conflicts[0]["b"], "keep_a", "ana"),
             lambda: store.record_decision(conflicts[1]["a"], conflicts[1]["b"], "union", "ana"),
             lambda: fix_mask(conflicts[2]),
             lambda: store.record_decision(disagree[0]["a"], disagree[0]["b"], "both_empty", "ana"),
             lambda: store.undo_decision(conflicts[0]["a"], conflicts[0]["b"], "ana")]
    seen = {report.ceiling["dataset"]}
    for i, step in enumerate(steps):
        step()
        live = live_ceiling(ds, store, report)
        cds, dropped, info = corrected_dataset(ds, store, report)
        path = write_manifest(tmp_path / f"m{i}.json", ds, cds.cases, dropped, info)
        rescan = find_conflicts(open_dataset(path, workspace=ws), ConflictConfig.from_dict(report.config),
                                save_latest=False).ceiling
        assert live["dataset"] == pytest.approx(rescan["dataset"], abs=2e-6), i
        assert live["n_affected"] == rescan["n_affected"] and live["n_labelled"] == rescan["n_labelled"], i
        assert live["n_groups_affected"] == rescan["n_groups_affected"], i
        seen.add(live["dataset"])
    assert len(seen) >= 4  # it really moved with the decisions
    store.close()


# ------------------------------------------------------------------------------------------ queue signals

def test_case_queue_ranks_model_disagreement_and_uncertainty(paired):
    from engine.curation import QUEUE_WEIGHTS, case_queue

    ds, store = paired
    q = case_queue(ds, store, None, {"s0_0": 0.9}, disagreement={"s1_0": 0.8, "s2_0": 0.1},
                   uncertainty={"s2_0": 0.6, "nope": 1.0})
    by = {cid: (score, why) for cid, score, why in q}
    assert set(by) == {"s1_0", "s2_0", "s0_0"}
    assert by["s1_0"][0] == pytest.approx(QUEUE_WEIGHTS["models"] * 0.8)
    assert by["s2_0"][0] == pytest.approx(QUEUE_WEIGHTS["models"] * 0.1 + QUEUE_WEIGHTS["uncertainty"] * 0.6)
    assert by["s2_0"][1] == ["models disagree 0.10", "flip-TTA uncertainty 0.60"]
    assert [c for c, _, _ in q][0] == "s1_0"
    store.set_case_state("s1_0", "accepted", "ana")
    assert "s1_0" not in {c for c, _, _ in case_queue(ds, store, disagreement={"s1_0": 0.8})}


def test_flip_views_uncertainty():
    from engine.curation.signals import flip_views_uncertainty

    sure = np.zeros((4, 8, 8), np.float32)
    sure[:, 2:5, 2:5] = 1.0
    assert flip_views_uncertainty(sure) == 0.0
    assert flip_views_uncertainty(np.zeros((4, 8, 8))) == 0.0
    torn = sure.copy()
    torn[1:3] = 0.0  # two of four views see nothing: std 0.5 on the region → 1.0
    assert flip_views_uncertainty(torn) == pytest.approx(1.0)


def test_model_disagreement_from_two_evaluations(paired, tmp_path):
    from types import SimpleNamespace

    import pandas as pd

    from engine.curation import model_disagreement
    from engine.evaluation import prediction_path
    from engine.io import write_mask_png

    ds, _ = paired
    ids = ["s0_1", "s0_2"]
    res = {}
    for name, flip in (("m1", False), ("m2", True)):
        folder = tmp_path / name
        for cid in ids:
            m = _disk(ds, cid)
            write_mask_png(prediction_path(folder, cid), (np.zeros_like(m) if flip and cid == "s0_2" else m))
        res[name] = SimpleNamespace(folder=folder, per_image=pd.DataFrame({"case_id": ids}),
                                    summary={"dataset": str(ds.root)})
    d = model_disagreement(ds, res)
    assert d == {"s0_1": 0.0, "s0_2": 1.0}


# ------------------------------------------------------------------------------------ retrain + impact, real models

@pytest.mark.slow
def test_finetune_keeps_the_split_and_records_lineage(trained):
    import torch
    from safetensors.torch import load_file

    from engine.checkpoint import read_card
    from engine.retrain import plan_retrain
    from engine.store import ReviewStore
    from engine.training import train

    ds, ws, report, parent_res = trained
    parent = read_card(ws.root / "models" / "parent")
    val = set(parent.training["split"]["val_case_ids"])
    store = ReviewStore.for_dataset(ds)
    conflicts = [p for p in report.pairs if p["category"] == "conflict"]
    # drop one held-out and one training case, correct one mask
    held = next(p for p in conflicts if p["a"] in val or p["b"] in val)
    store.record_decision(held["a"], held["b"], "drop_both", "ana")
    other = next(p for p in conflicts if p is not held)
    store.record_decision(other["a"], other["b"], "union", "ana")
    cid = next(c.case_id for c in ds.cases if c.has_mask and c.case_id not in val)
    store.save_mask_version(cid, np.zeros_like(ds.load_mask(cid)), "ana", "wrong")
    plan = plan_retrain(ds, store, "parent", report, epochs=1, workspace=ws, lr=1e-12, weight_decay=0.0)
    assert plan.config.init_weights and plan.config.folds_file
    res = train(plan.config)
    card = read_card(res.exported)
    split = card.training["split"]
    dropped = {held["a"], held["b"]}
    assert not set(split["train_case_ids"]) & val  # held-out cases never trained on
    assert set(split["val_case_ids"]) >= (val - dropped)
    assert not dropped & (set(split["val_case_ids"]) | set(split["train_case_ids"]))
    lin = card.training["lineage"]
    assert lin["parent_model"] == "parent" and lin["parent_sha256"] == parent.tensors_sha256
    assert lin["n_decisions"] == 2 and lin["n_mask_versions"] == 1 and lin["decisions"] == {"drop_both": 1, "union": 1}
    assert lin["manifest_digest"] == plan.manifest.digest and Path(lin["manifest"]).is_file()
    # initialised from the parent: with a learning rate of 1e-12 the convolutions stay the parent's
    a = load_file(str(ws.root / "models" / "parent" / "model.safetensors"))
    b = load_file(str(Path(res.exported) / "model.safetensors"))
    convs = [k for k, v in a.items() if v.ndim == 4]
    assert convs and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in convs)
    # the same review state → the same manifest file; the model is listed by the pickers
    from engine.checkpoint import list_weights
    from engine.retrain import corrected_manifest

    assert corrected_manifest(ds, store, report).path == plan.manifest.path
    assert card.name in [w["name"] for w in list_weights(ws)]
    store.close()


@pytest.mark.slow
def test_impact_cli_on_real_models(trained, tmp_path, capsys):
    from engine.__main__ import main
    from engine.checkpoint import read_card

    ds, ws, report, _ = trained
    parent = read_card(ws.root / "models" / "parent")
    children = [p.name for p in (ws.root / "models").iterdir() if p.name.startswith("parent-ft")]
    after = children[0] if children else "parent"
    out = tmp_path / "impact.json"
    rc = main(["impact", str(ds.root), "--before", "parent", "--after", after, "--json", str(out),
               "--device", "cpu"])
    assert rc == 0
    rep = json.loads(out.read_text())
    val = [c for c in parent.training["split"]["val_case_ids"]]
    assert rep["cases"]["ids"] == val and rep["yardsticks"]["original"]["before"]["n_cases"] == len(val)
    assert rep["ceiling"]["before"] == report.ceiling["dataset"]
    assert "held-out case(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_tta_uncertainty_on_a_real_model(trained):
    from engine.curation import tta_uncertainty
    from engine.inference import Predictor

    ds, ws, _, _ = trained
    pred = Predictor.from_weights(ws.root / "models" / "parent", device="cpu", gate=None)
    ids = [c.case_id for c in ds.cases[:6]]
    unc = tta_uncertainty(pred, ds, ids)
    assert set(unc) == set(ids) and all(0.0 <= v <= 1.0 for v in unc.values())


@pytest.mark.slow
def test_retrain_cli_foreground(trained, capsys):
    from engine.__main__ import main
    from engine.checkpoint import read_card

    ds, ws, _, _ = trained
    rc = main(["retrain", str(ds.root), "--from", "parent", "--epochs", "1", "--name", "parent-cli-ft", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == "finished" and out["name"] == "parent-cli-ft"
    card = read_card(out["exported"])
    assert card.training["lineage"]["parent_model"] == "parent" and card.training["init_weights"]


@pytest.mark.slow
def test_retrain_job_runs_in_the_job_system_and_cancels(trained):
    import time

    from engine.jobs import cancel, job_status, list_jobs
    from engine.retrain import start_retrain
    from engine.store import ReviewStore

    ds, ws, report, _ = trained
    with ReviewStore.for_dataset(ds) as store:
        job, plan = start_retrain(ds, store, "parent", report, epochs=500, workspace=ws, name="parent-cancelled")
    assert any(j["run_dir"] == str(job.run_dir) for j in list_jobs(ws))
    t0 = time.monotonic()
    while job_status(job.run_dir)["state"] != "running" or not job_status(job.run_dir)["step"]:
        assert time.monotonic() - t0 < 240, job_status(job.run_dir, log_lines=30)
        assert job_status(job.run_dir)["state"] in ("starting", "running"), job_status(job.run_dir, log_lines=30)
        time.sleep(0.3)
    info = cancel(job.run_dir, grace=60)
    assert info["state"] == "cancelled"
    assert job_status(job.run_dir)["epoch"] < 500  # stopped long before the planned epochs
