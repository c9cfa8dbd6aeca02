"""engine.compare: Dice between models and against ground truth, per image and over a dataset.

Hand-made masks with Dice values worked out by hand; the dataset comparison reads fake
evaluation folders (predicted PNGs + per-image frames) exactly as ``evaluate`` writes them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.compare import (
    FOREGROUND,
    compare_masks,
    compare_models,
    covered_classes,
    disagreement_score,
    model_letters,
    pairwise_dice,
    read_prediction,
    select_cases,
    shared_classes,
)
from engine.datasets import Case, Dataset, MaskSource
from engine.errors import ConfigError, MaskError
from engine.evaluation import EvalResult, prediction_path
from engine.io import write_mask_png

H = W = 8


def rows(r0: int, r1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[r0:r1] = 1
    return m


def cols(c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[:, c0:c1] = 1
    return m


EMPTY = np.zeros((H, W), np.uint8)
FULL = np.ones((H, W), np.uint8)

# case -> (gt, A, B, C); Dice worked out by hand in the tests below
CASES = {
    "c1": (rows(0, 4), rows(0, 4), rows(0, 2), EMPTY),
    "c2": (EMPTY, EMPTY, EMPTY, EMPTY),
    "c3": (cols(0, 1), cols(0, 1), cols(0, 2), cols(0, 1)),
    "c4": (FULL, FULL, FULL, FULL),
}


def make_dataset(root: Path, gts: dict[str, np.ndarray], labels: dict[int, str] | None = None,
                 unlabelled: tuple[str, ...] = ()) -> Dataset:
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for cid, gt in gts.items():
        img = root / f"{cid}.png"
        img.write_bytes(b"")  # never read by compare_models
        mpath = write_mask_png(root / f"{cid}_mask.png", gt)
        cases.append(Case(cid, f"g{cid}", str(img), MaskSource("file", str(mpath)), True, bool(gt.any()),
                          int(np.count_nonzero(gt)), gt.shape[0], gt.shape[1]))
    for cid in unlabelled:
        cases.append(Case(cid, f"g{cid}", str(root / f"{cid}.png"), MaskSource("none"), False, False, -1, H, W))
    return Dataset(root, "paired", cases, labels or {0: "background", 1: "nerve"})


def make_eval(folder: Path, dataset: Dataset, preds: dict[str, np.ndarray],
              class_map: dict[str, str] | None = None) -> EvalResult:
    for cid, m in preds.items():
        write_mask_png(prediction_path(folder, cid), m)
    summary = {"dataset": str(dataset.root), "settings": {"class_map": class_map or {"nerve": "nerve"}}}
    return EvalResult(summary, pd.DataFrame({"case_id": list(preds)}), None, folder)


@pytest.fixture()
def three(tmp_path: Path):
    ds = make_dataset(tmp_path / "ds", {c: v[0] for c, v in CASES.items()})
    res = {name: make_eval(tmp_path / "evals" / name, ds, {c: v[i + 1] for c, v in CASES.items()})
           for i, name in enumerate(["unet", "cenet", "fcn"])}
    return ds, res


# -- per image ----------------------------------------------------------------------------------

def test_pairwise_dice_foreground_and_classes():
    a, b = rows(0, 4), rows(0, 2)
    assert pairwise_dice(a, b) == {FOREGROUND: pytest.approx(2 * 16 / 48)}
    assert pairwise_dice(EMPTY, EMPTY)[FOREGROUND] == 1.0
    assert math.isnan(pairwise_dice(EMPTY, EMPTY, empty_policy="exclude")[FOREGROUND])
    assert pairwise_dice(a, EMPTY)[FOREGROUND] == 0.0
    # two classes: foreground agrees fully, class scores do not
    x = np.array([[1, 2], [0, 0]], np.uint8)
    y = np.array([[1, 1], [0, 0]], np.uint8)
    d = pairwise_dice(x, y, {0: "bg", 1: "nerve", 2: "vessel"})
    assert d == {FOREGROUND: 1.0, "nerve": pytest.approx(2 / 3), "vessel": 0.0}


def test_pairwise_dice_different_class_sets_matches_by_name():
    # model A: 1 = nerve, 2 = vessel; model B: 1 = Vessel only
    a = np.array([[1, 2, 2, 0]], np.uint8)
    b = np.array([[0, 1, 0, 0]], np.uint8)
    d = pairwise_dice(a, b, {0: "background", 1: "nerve", 2: "vessel"}, {0: "background", 1: "Vessel"})
    assert d[FOREGROUND] == pytest.approx(2 * 1 / (3 + 1))
    assert d["vessel"] == pytest.approx(2 * 1 / (2 + 1))
    assert "nerve" not in d
    assert shared_classes({0: "bg", 1: "nerve", 2: "vessel"}, {0: "background", 1: "Vessel"}) == [("vessel", 2, 1)]
    assert shared_classes({0: "bg", 1: "lung"}, {0: "bg", 1: "nerve"}) == []


def test_pairwise_dice_rejects_bad_masks():
    with pytest.raises(MaskError, match="differ in size"):
        pairwise_dice(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(MaskError, match="integer class ids"):
        pairwise_dice(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8))
    with pytest.raises(MaskError, match="label map"):
        pairwise_dice(np.zeros((2, 4, 4), np.uint8), np.zeros((4, 4), np.uint8))


def test_compare_masks_three_models_with_gt():
    gt, a, b, c = CASES["c1"]
    cmp = compare_masks({"unet": a, "cenet": b, "fcn": c}, gt=gt)
    assert cmp.models == {"a": "unet", "b": "cenet", "c": "fcn"}
    assert cmp.dice_pairs["ab"][FOREGROUND] == pytest.approx(2 / 3)
    assert cmp.dice_pairs["ac"][FOREGROUND] == 0.0
    assert cmp.dice_pairs["bc"][FOREGROUND] == 0.0
    assert cmp.disagreement == pytest.approx(1 - (2 / 3) / 3)
    assert cmp.dice_gt["unet"][FOREGROUND] == 1.0
    assert cmp.dice_gt["cenet"][FOREGROUND] == pytest.approx(2 / 3)
    assert cmp.dice_gt["fcn"][FOREGROUND] == 0.0
    assert cmp.areas["unet"][FOREGROUND] == 32 and cmp.areas["cenet"][FOREGROUND] == 16
    assert cmp.areas["ground truth"][FOREGROUND] == 32
    pairs = cmp.pair_table()
    assert list(pairs["pair"]) == ["AB", "AC", "BC"]
    assert pairs.loc[0, "dice foreground"] == pytest.approx(2 / 3)
    models = cmp.model_table()
    assert list(models["model"]) == ["unet", "cenet", "fcn"]
    assert list(models["area foreground (px)"]) == [32, 16, 0]


def test_compare_masks_without_gt_and_errors():
    cmp = compare_masks({"x": EMPTY, "y": FULL})
    assert cmp.dice_gt == {} and "ground truth" not in cmp.areas
    assert cmp.disagreement == 1.0
    with pytest.raises(ConfigError, match="at least two"):
        compare_masks({"x": EMPTY})
    with pytest.raises(MaskError, match="differ in size"):
        compare_masks({"x": EMPTY, "y": np.zeros((3, 3), np.uint8)})


def test_model_letters_and_disagreement_score():
    assert model_letters(["m1", "m2"]) == {"a": "m1", "b": "m2"}
    with pytest.raises(ConfigError, match="twice"):
        model_letters(["m1", "m1"])
    assert disagreement_score([1.0, 0.5]) == pytest.approx(0.25)
    assert disagreement_score([float("nan"), 0.5]) == pytest.approx(0.5)
    assert math.isnan(disagreement_score([float("nan")]))


# -- over a dataset ------------------------------------------------------------------------------

def test_compare_models_exact_values_and_order(three):
    ds, res = three
    seen = []
    df = compare_models(ds, res, progress=lambda d, t, m="": seen.append((d, t)))
    assert seen[-1] == (4, 4) and len(seen) == 4
    assert list(df["case_id"]) == ["c1", "c3", "c2", "c4"]
    r = df.set_index("case_id")
    assert r.loc["c1", "dice_ab"] == pytest.approx(2 / 3)
    assert r.loc["c1", "dice_ac"] == 0.0 and r.loc["c1", "dice_bc"] == 0.0
    assert r.loc["c1", "disagreement"] == pytest.approx(1 - 2 / 9)
    assert r.loc["c3", "dice_ab"] == pytest.approx(2 / 3)
    assert r.loc["c3", "dice_ac"] == 1.0
    assert r.loc["c3", "dice_bc"] == pytest.approx(2 / 3)
    assert r.loc["c3", "disagreement"] == pytest.approx(1 - (4 / 3 + 1) / 3)
    assert r.loc["c2", "disagreement"] == 0.0 and r.loc["c2", "dice_gt_unet"] == 1.0  # both empty agree
    assert r.loc["c1", "dice_gt_unet"] == 1.0
    assert r.loc["c1", "dice_gt_cenet"] == pytest.approx(2 / 3)
    assert r.loc["c1", "dice_gt_fcn"] == 0.0
    assert r.loc["c3", "dice_gt_cenet"] == pytest.approx(2 * 8 / 24)
    assert list(r["gt_area"]) == [32, 8, 0, 64]
    assert r.loc["c1", "area_cenet"] == 16 and r.loc["c1", "area_fcn"] == 0
    assert (df["error"] == "").all()
    assert df.attrs["models"] == {"a": "unet", "b": "cenet", "c": "fcn"}
    assert df.attrs["pairs"]["dice_bc"] == "cenet vs fcn"
    assert list(df.columns[:6]) == ["case_id", "group_id", "disagreement", "dice_ab", "dice_ac", "dice_bc"]


def test_compare_models_two_models_subset_and_ties(three):
    ds, res = three
    df = compare_models(ds, {"unet": res["unet"], "fcn": res["fcn"]}, case_ids=["c4", "c2", "c1"])
    # c1: unet vs fcn = 0 → disagreement 1; c2 and c4 tie at 0 and at Dice vs GT 1 → by case id
    assert list(df["case_id"]) == ["c1", "c2", "c4"]
    assert "dice_ac" not in df.columns
    assert (df["disagreement"] == 1 - df["dice_ab"]).all()


def test_compare_models_tie_broken_by_lowest_dice_vs_gt(tmp_path: Path):
    gts = {"p": rows(0, 4), "q": rows(0, 4)}
    ds = make_dataset(tmp_path / "ds", gts)
    # both cases: A and B identical (disagreement 0); in q they are both wrong
    a = make_eval(tmp_path / "a", ds, {"p": rows(0, 4), "q": rows(4, 8)})
    b = make_eval(tmp_path / "b", ds, {"p": rows(0, 4), "q": rows(4, 8)})
    df = compare_models(ds, {"a": a, "b": b})
    assert list(df["case_id"]) == ["q", "p"]
    assert df.loc[0, "dice_gt_a"] == 0.0


def test_compare_models_missing_prediction_is_reported_and_last(three):
    ds, res = three
    prediction_path(res["cenet"].folder, "c1").unlink()
    df = compare_models(ds, res)
    assert df.iloc[-1]["case_id"] == "c1"
    assert "predicted mask not found" in df.iloc[-1]["error"]
    assert math.isnan(df.iloc[-1]["disagreement"])
    assert list(df["case_id"][:3]) == ["c3", "c2", "c4"]


def test_compare_models_multiclass_shared_classes(tmp_path: Path):
    labels = {0: "background", 1: "nerve", 2: "vessel"}
    gt = np.zeros((H, W), np.uint8)
    gt[0:2] = 1          # 16 nerve
    gt[4:6] = 2          # 16 vessel
    a = gt.copy()        # model A: perfect
    b = np.zeros((H, W), np.uint8)
    b[0:1] = 1           # model B covers nerve only: 8 px nerve
    ds = make_dataset(tmp_path / "ds", {"x": gt}, labels)
    ra = make_eval(tmp_path / "a", ds, {"x": a}, {"nerve": "nerve", "vessel": "vessel"})
    rb = make_eval(tmp_path / "b", ds, {"x": b}, {"nerve": "nerve"})
    df = compare_models(ds, {"full": ra, "nerve-only": rb})
    r = df.iloc[0]
    assert r["dice_ab"] == pytest.approx(2 * 8 / (32 + 8))
    assert r["dice_ab_nerve"] == pytest.approx(2 * 8 / (16 + 8))
    assert "dice_ab_vessel" not in df.columns          # not shared
    assert r["dice_gt_full_vessel"] == 1.0
    assert "dice_gt_nerve-only_vessel" not in df.columns
    assert r["dice_gt_nerve-only_nerve"] == pytest.approx(2 * 8 / 24)
    assert df.attrs["classes"] == {"ab": ["nerve"]}
    assert covered_classes({"settings": {"class_map": {"n": "nerve"}}}, labels) == {1: "nerve"}
    assert covered_classes({}, labels) == {1: "nerve", 2: "vessel"}


def test_compare_models_errors(three, tmp_path: Path):
    ds, res = three
    with pytest.raises(ConfigError, match="at least two"):
        compare_models(ds, {"unet": res["unet"]})
    other = make_dataset(tmp_path / "other", {"c1": EMPTY})
    with pytest.raises(ConfigError, match="not of"):
        compare_models(other, res)
    partial = make_eval(tmp_path / "partial", ds, {"c1": EMPTY})
    with pytest.raises(ConfigError, match="not scored by every model"):
        compare_models(ds, {"unet": res["unet"], "p": partial}, case_ids=["c1", "c2"])
    assert list(compare_models(ds, {"unet": res["unet"], "p": partial})["case_id"]) == ["c1"]
    no_folder = EvalResult({}, pd.DataFrame({"case_id": ["c1"]}), None, None)
    with pytest.raises(ConfigError, match="no folder"):
        compare_models(ds, {"unet": res["unet"], "x": no_folder})


def test_read_prediction(tmp_path: Path):
    m = np.array([[0, 1], [2, 0]], np.uint8)
    p = write_mask_png(tmp_path / "m.png", m)
    out = read_prediction(p)
    assert out.dtype == np.uint8 and (out == m).all()
    with pytest.raises(MaskError, match="not found"):
        read_prediction(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MaskError, match="cannot read"):
        read_prediction(tmp_path / "bad.png")


def test_select_cases(tmp_path: Path):
    gts = {f"k{i:02d}": EMPTY for i in range(20)}
    ds = make_dataset(tmp_path / "ds", gts, unlabelled=("u1",))
    labelled = [f"k{i:02d}" for i in range(20)]
    assert select_cases(ds, 5, "first") == labelled[:5]
    assert select_cases(ds, None) == labelled
    assert select_cases(ds, 5, "all") == labelled
    assert select_cases(ds, 50, "random") == labelled
    r1 = select_cases(ds, 6, "random", seed=3)
    assert r1 == select_cases(ds, 6, "random", seed=3)
    assert len(set(r1)) == 6 and set(r1) <= set(labelled)
    assert r1 == sorted(r1, key=labelled.index)      # dataset order
    assert len({tuple(select_cases(ds, 6, "random", seed=s)) for s in range(5)}) > 1
    with pytest.raises(ConfigError, match="unknown case selection"):
        select_cases(ds, 5, "best")
