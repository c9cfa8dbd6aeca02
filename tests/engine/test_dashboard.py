"""Dashboard data preparation (engine.dashboard) on hand-made evaluation tables and run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from engine.dashboard import (
    dice_by_truth,
    find_evaluations,
    headline,
    history_series,
    join_meta,
    list_runs,
    load_history,
    per_class_table,
    preview_frames,
    run_card,
    slice_columns,
    slice_metrics,
    sweep_gates,
    sweep_matrix,
    worst_cases,
)
from engine.errors import ConfigError, ReadError


@pytest.fixture()
def per_image() -> pd.DataFrame:
    return pd.DataFrame({
        "case_id": ["a", "b", "c", "d", "e", "f"],
        "gt_area": [100, 0, 400, 50, 0, 400],
        "gt_present": [True, False, True, True, False, True],
        "pred_present": [True, True, False, True, False, True],
        "dice": [0.8, 0.0, 0.0, 0.5, np.nan, 0.9],
    })


@pytest.fixture()
def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "case_id": ["a", "b", "c", "d", "e", "f", "z"],
        "group_id": ["1", "1", "2", "2", "3", "3", "4"],
        "sex": ["M", "F", "F", None, "M", "F", "M"],
        "age_years": [30.0, 45.0, 413.0, 70.0, None, 22.0, 50.0],
        "age_flag": ["ok", "ok", "impossible", "ok", "missing", "ok", "ok"],
        "view_position": ["PA", "AP", "PA", "PA", "AP", "AP", "PA"],
        "split": ["train"] * 7,
    })


def test_headline_and_per_class() -> None:
    summary = {"mean_dice": 0.7, "mean_iou": 0.6, "empty_policy": "exclude", "empty_policy_rule": "rule text",
               "n_cases": 10, "n_failed": 1, "dice_gt_empty": {"nerve": 0.2, "vessel": None},
               "dice_gt_nonempty": {"nerve": 0.8, "vessel": 0.6}, "n_gt_empty": {"nerve": 4, "vessel": 4},
               "n_gt_nonempty": {"nerve": 6, "vessel": 6},
               "metrics": {"surface": False, "classes": {
                   "nerve": {"dice": 0.8, "iou": 0.7, "precision": 0.9, "n_counted": 10, "hd95": 3.0},
                   "vessel": {"dice": 0.6, "iou": 0.5, "precision": None, "n_counted": 8}}}}
    h = headline(summary)
    assert (h["mean_dice"], h["policy"], h["rule"], h["n_failed"]) == (0.7, "exclude", "rule text", 1)
    assert h["dice_gt_nonempty"] == pytest.approx(0.7)
    assert h["dice_gt_empty"] == pytest.approx(0.2)  # None (NaN) is skipped, not counted as 0
    assert (h["n_gt_empty"], h["n_gt_nonempty"]) == (4, 6)
    t = per_class_table(summary)
    assert t["class"].tolist() == ["nerve", "vessel"]
    assert t["Dice"].tolist() == [0.8, 0.6] and math.isnan(t["precision"].iloc[1])
    assert "HD95" not in t.columns  # surface distances were not computed
    assert headline({})["n_cases"] == 0 and math.isnan(headline({})["mean_dice"])


def test_worst_cases(per_image: pd.DataFrame) -> None:
    w = worst_cases(per_image, 3)
    assert w["case_id"].tolist() == ["c", "b", "d"]  # ties at 0: larger GT area first; NaN never "worst"
    assert worst_cases(per_image, 10, only_gt_nonempty=True)["case_id"].tolist() == ["c", "d", "a", "f"]
    with pytest.raises(ConfigError, match="no column"):
        worst_cases(per_image, 3, metric="dice_lung")


def test_dice_by_truth(per_image: pd.DataFrame) -> None:
    d = dice_by_truth(per_image)
    assert d["truth"].tolist() == ["GT non-empty", "GT empty", "GT non-empty", "GT non-empty", "GT empty",
                                   "GT non-empty"]
    assert d["value"].iloc[0] == 0.8


def test_join_and_slices(per_image: pd.DataFrame, frame: pd.DataFrame) -> None:
    j = join_meta(per_image, frame)
    assert len(j) == len(per_image) and "z" not in set(j["case_id"])
    assert j.set_index("case_id").loc["c", "age_band"] == "impossible"
    assert set(slice_columns(j)) == {"sex", "age_band", "view_position", "split", "group_id"}
    s = slice_metrics(j, "sex").set_index("sex")
    assert s.index.tolist() == ["(missing)", "F", "M"]
    assert s.loc["F", "n"] == 3 and s.loc["F", "mean"] == pytest.approx(0.3)  # b 0.0, c 0.0, f 0.9
    assert s.loc["M", "n"] == 2 and s.loc["M", "mean"] == pytest.approx(0.8)  # e is NaN: not averaged
    assert s.loc["F", "n_gt_nonempty"] == 2 and s.loc["F", "detected"] == pytest.approx(0.5)  # c missed, f found
    assert s.loc["F", "mean (GT empty)"] == 0.0
    assert s.loc["(missing)", "n"] == 1
    v = slice_metrics(j, "view_position").set_index("view_position")
    assert v.loc["PA", "n"] == 3 and v.loc["PA", "mean"] == pytest.approx((0.8 + 0.0 + 0.5) / 3)
    with pytest.raises(ConfigError, match="cannot slice"):
        slice_metrics(j, "manufacturer")


def _sweep() -> pd.DataFrame:
    rows = []
    for t in (0.3, 0.5, 0.7):
        for a in (0, 10, 100):
            rows.append({"threshold": t, "min_area": a, "keep_largest": 0, "presence_threshold": None,
                         "triplet_top": None, "triplet_min_area": None, "score": round(t + a / 1000, 3)})
            rows.append({"threshold": t, "min_area": a, "keep_largest": 0, "presence_threshold": 0.4,
                         "triplet_top": None, "triplet_min_area": None, "score": 0.95 if (t, a) == (0.3, 10) else 0.1})
            if t <= 0.6:
                rows.append({"threshold": t, "min_area": a, "keep_largest": 0, "presence_threshold": None,
                             "triplet_top": 0.6, "triplet_min_area": 200, "score": 0.2})
    return pd.DataFrame(rows)


def test_sweep_matrix() -> None:
    sw = _sweep()
    assert sweep_gates(sw) == ["no gate", "presence ≥ 0.4", "triplet top 0.6, area 200"]
    m = sweep_matrix(sw, "no gate", baseline=(0.5, 0))
    assert m["matrix"].index.tolist() == [0.3, 0.5, 0.7] and m["matrix"].columns.tolist() == [0, 10, 100]
    assert m["matrix"].loc[0.5, 10] == pytest.approx(0.51)
    assert (m["best"]["threshold"], m["best"]["min_area"], m["best"]["score"]) == (0.7, 100, pytest.approx(0.8))
    assert m["best"]["overall"]["gate"] == "presence ≥ 0.4" and m["best"]["overall"]["score"] == 0.95
    assert m["baseline"] == {"threshold": 0.5, "min_area": 0, "score": 0.5}
    t = sweep_matrix(sw, "triplet top 0.6, area 200")
    assert t["matrix"].index.tolist() == [0.3, 0.5]  # triplet top 0.6 < threshold 0.7 is not a setting
    assert sweep_matrix(sw, "no gate", baseline=(0.45, 0))["baseline"] is None
    with pytest.raises(ConfigError, match="gate"):
        sweep_matrix(sw, "presence ≥ 0.9")
    with pytest.raises(ConfigError, match="no post-processing sweep"):
        sweep_matrix(sw.iloc[0:0])


def test_find_evaluations(tmp_path: Path) -> None:
    ds = SimpleNamespace(workdir=tmp_path, root=tmp_path)
    assert find_evaluations(ds) == []
    for i, (model, tta) in enumerate([("m1", "none"), ("m2", "flip")]):
        f = tmp_path / "evals" / f"{model}-key{i}"
        f.mkdir(parents=True)
        (f / "summary.json").write_text(json.dumps({"model": model, "mean_dice": 0.5 + i / 10, "n_cases": 7,
                                                    "empty_policy": "kaggle", "settings": {"tta": tta}}))
        (f / "per_image.csv").write_text("case_id,dice\n")
    (tmp_path / "evals" / "junk").mkdir()
    (tmp_path / "evals" / "bad").mkdir()
    (tmp_path / "evals" / "bad" / "summary.json").write_text("{not json")
    found = find_evaluations(ds)
    assert sorted(e["model"] for e in found) == ["m1", "m2"]
    e2 = next(e for e in found if e["model"] == "m2")
    assert e2["tta"] == "flip" and e2["mean_dice"] == 0.6 and not e2["sweep"] and "Dice 0.600" in e2["label"]


def _write_run(root: Path, name: str, history: list[dict] | None, csv: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if history is not None:
        (d / "history.json").write_text(json.dumps(history))
    if csv is not None:
        (d / "history.csv").write_text(csv)
    return d


def test_runs_and_history(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    hist = [{"epoch": e, "train_loss": 1 / e, "val_loss": 2 / e, "val_dice": 0.1 * e, "dice_nerve": 0.1 * e,
             "lr": 1e-3, "best": True, "presence_auc": None} for e in (2, 1, 3)]
    a = _write_run(runs, "a-1", hist)
    (a / "status.json").write_text(json.dumps({"state": "finished"}))
    b = _write_run(runs, "b-2", None, csv="train_loss,val_dice,lr\n0.9,0.2,0.01\n0.5,0.4,0.005\n")
    (runs / "empty-folder").mkdir()
    listed = {r["name"]: r for r in list_runs(runs)}
    assert set(listed) == {"a-1", "b-2"}
    assert listed["a-1"]["state"] == "finished" and listed["a-1"]["epochs"] == 3
    assert listed["b-2"]["state"] == "unknown" and listed["b-2"]["epochs"] == 2
    h = load_history(a)
    assert h["epoch"].tolist() == [1, 2, 3] and h["val_dice"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    s = history_series(h)
    assert s == {"loss": ["train_loss", "val_loss"], "metrics": ["val_dice", "dice_nerve"], "lr": ["lr"]}
    hb = load_history(b)
    assert hb["epoch"].tolist() == [1, 2] and hb["lr"].tolist() == [0.01, 0.005]
    assert list_runs(tmp_path / "nothing") == []
    (a / "history.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ReadError, match="per-epoch records"):
        load_history(a)


def test_preview_frames_and_card(tmp_path: Path) -> None:
    d = tmp_path / "run"
    (d / "preview").mkdir(parents=True)
    for e in (10, 2, 1):
        (d / "preview" / f"epoch_{e:03d}.png").write_bytes(b"png")
    (d / "preview" / "notes.png").write_bytes(b"x")
    p = preview_frames(d)
    assert [e for e, _ in p["frames"]] == [1, 2, 10] and p["gif"] is None
    (d / "preview" / "evolution.gif").write_bytes(b"gif")
    assert preview_frames(d)["gif"] == d / "preview" / "evolution.gif"
    assert run_card(d) is None
    (d / "last").mkdir()
    (d / "last" / "card.json").write_text(json.dumps({"name": "m", "training": {"epochs": 3}}))
    assert run_card(d)["training"] == {"epochs": 3}
