"""Tests for engine.postprocess: every option on hand-made maps, tuning, JSON round trips."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.errors import ConfigError, MaskError
from engine.postprocess import (
    PostProcessConfig,
    TripletGate,
    TuneGrid,
    TuneResult,
    evaluate_postprocess,
    fill_holes,
    keep_k_largest,
    postprocess,
    remove_small_components,
    tune_postprocess,
)


def binary_probs(p1: np.ndarray) -> np.ndarray:
    p1 = p1.astype(np.float32)
    return np.stack([1 - p1, p1])


def square(shape, r0, r1, c0, c1, value=1.0):
    a = np.zeros(shape, np.float32)
    a[r0:r1, c0:c1] = value
    return a


# --------------------------------------------------------------------------- threshold / argmax

def test_binary_threshold_is_p1_at_least_threshold():
    p1 = np.array([[0.1, 0.29, 0.3, 0.31, 0.6, 0.95]], np.float32)
    out = postprocess(binary_probs(p1), PostProcessConfig(threshold=0.3))
    assert out.dtype == np.uint8 and out.shape == (1, 6)
    np.testing.assert_array_equal(out[0], [0, 0, 1, 1, 1, 1])
    out = postprocess(binary_probs(p1), PostProcessConfig(threshold=0.6))
    np.testing.assert_array_equal(out[0], [0, 0, 0, 0, 1, 1])


def test_multiclass_argmax_and_threshold():
    # columns: (bg, c1, c2)
    px = np.array([
        [0.2, 0.5, 0.3],   # c1 most probable fg, passes 0.4 -> 1
        [0.2, 0.3, 0.5],   # c2 -> 2
        [0.4, 0.35, 0.25], # bg is most probable overall, but c1 >= 0.3 -> 1 (threshold decides bg)
        [0.6, 0.2, 0.2],   # nothing passes -> 0
        [0.1, 0.45, 0.45], # tie between fg classes -> lower id
    ], np.float32)
    probs = px.T.reshape(3, 1, 5)
    out = postprocess(probs, PostProcessConfig(threshold=0.3))
    np.testing.assert_array_equal(out[0], [1, 2, 1, 0, 1])
    out = postprocess(probs, PostProcessConfig(threshold=0.5))
    np.testing.assert_array_equal(out[0], [1, 2, 0, 0, 0])


def test_per_class_thresholds():
    px = np.array([
        [0.2, 0.45, 0.35],  # c1 fails 0.5, c2 passes 0.3 -> 2
        [0.1, 0.55, 0.35],  # both pass; c1 more probable -> 1
        [0.7, 0.05, 0.25],  # none pass
    ], np.float32)
    probs = px.T.reshape(3, 1, 3)
    cfg = PostProcessConfig(threshold=0.5, class_thresholds={2: 0.3})
    np.testing.assert_array_equal(postprocess(probs, cfg)[0], [2, 1, 0])
    with pytest.raises(ConfigError, match="class"):
        postprocess(probs, PostProcessConfig(class_thresholds={5: 0.3}))


# --------------------------------------------------------------------------- components

def test_min_area_boundary():
    p1 = square((20, 20), 2, 5, 2, 5)           # 9 px
    p1 += square((20, 20), 10, 14, 10, 14)       # 16 px
    probs = binary_probs(p1)
    assert postprocess(probs, PostProcessConfig(min_area=9)).sum() == 25   # exactly 9 px is kept
    assert postprocess(probs, PostProcessConfig(min_area=10)).sum() == 16  # 9 px removed
    assert postprocess(probs, PostProcessConfig(min_area=16)).sum() == 16
    assert postprocess(probs, PostProcessConfig(min_area=17)).sum() == 0


def test_connectivity_diagonal_pixels():
    b = np.zeros((6, 6), bool)
    b[1, 1] = b[2, 2] = b[3, 3] = True        # diagonal chain of 3
    assert remove_small_components(b, 3, connectivity=2).sum() == 3
    assert remove_small_components(b, 3, connectivity=1).sum() == 0
    assert remove_small_components(b, 2, connectivity=1).sum() == 0
    assert remove_small_components(b, 1, connectivity=1).sum() == 3


def test_keep_k_largest():
    b = np.zeros((30, 30), bool)
    b[0:2, 0:2] = True      # 4
    b[5:10, 5:10] = True    # 25
    b[15:18, 15:18] = True  # 9
    b[25:29, 25:29] = True  # 16
    assert keep_k_largest(b, 1).sum() == 25
    two = keep_k_largest(b, 2)
    assert two.sum() == 41 and two[6, 6] and two[26, 26] and not two[16, 16]
    assert keep_k_largest(b, 0).sum() == b.sum()
    assert keep_k_largest(b, 10).sum() == b.sum()
    cfg = PostProcessConfig(keep_largest=2, min_area=20)   # min_area leaves one, keep 2 keeps it
    assert postprocess(binary_probs(b), cfg).sum() == 25


def test_keep_k_largest_ties_go_to_raster_order():
    b = np.zeros((10, 10), bool)
    b[6:8, 6:8] = True
    b[0:2, 0:2] = True
    out = keep_k_largest(b, 1)
    assert out[0, 0] and not out[6, 6]


def test_fill_holes_matches_scipy_and_fills():
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    open_ring = ring.copy()
    open_ring[2:4, 4] = False  # channel to the outside: 4-connected to the border, no hole
    assert fill_holes(ring)[4, 4]
    assert not fill_holes(open_ring)[4, 4]
    rng = np.random.default_rng(0)
    for _ in range(5):
        b = rng.random((40, 50)) < 0.55
        np.testing.assert_array_equal(fill_holes(b), ndimage.binary_fill_holes(b))
    probs = binary_probs(ring)
    assert postprocess(probs).sum() == 24
    assert postprocess(probs, PostProcessConfig(fill_holes=True)).sum() == 25


def test_fill_holes_keeps_nested_class():
    labels = np.zeros((11, 11), np.uint8)
    labels[1:10, 1:10] = 1
    labels[3:8, 3:8] = 0
    labels[5, 5] = 2   # class 2 island inside class 1's hole
    probs = np.zeros((3, 11, 11), np.float32)
    for k in range(3):
        probs[k] = labels == k
    out = postprocess(probs, PostProcessConfig(fill_holes=True))
    assert out[5, 5] == 2
    assert out[4, 4] == 1 and out[7, 7] == 1
    assert (out == 1).sum() == 81 - 1


def test_multiclass_min_area_per_class():
    probs = np.zeros((3, 12, 12), np.float32)
    probs[0] = 1
    probs[:, 0:2, 0:2] = np.array([0, 1, 0])[:, None, None]    # class 1, 4 px
    probs[:, 5:10, 5:10] = np.array([0, 0, 1])[:, None, None]  # class 2, 25 px
    probs[:, 0:1, 8:11] = np.array([0, 0, 1])[:, None, None]   # class 2, 3 px
    out = postprocess(probs, PostProcessConfig(min_area=4))
    assert (out == 1).sum() == 4 and (out == 2).sum() == 25
    out = postprocess(probs, PostProcessConfig(min_area=5))
    assert (out == 1).sum() == 0 and (out == 2).sum() == 25


# --------------------------------------------------------------------------- gates

def test_presence_gate():
    probs = binary_probs(square((8, 8), 2, 6, 2, 6, 0.9))
    cfg = PostProcessConfig(presence_threshold=0.5)
    assert postprocess(probs, cfg, presence=0.49).sum() == 0
    assert postprocess(probs, cfg, presence=0.5).sum() == 16
    assert postprocess(probs, cfg, presence=None).sum() == 16      # no presence head: no gate
    assert postprocess(probs, PostProcessConfig(), presence=0.0).sum() == 16  # gate off


def test_triplet_gate_classic_definition():
    # 10 confident pixels (0.9) surrounded by a 0.5 halo of 20 more; a faint 0.35 fringe elsewhere.
    p1 = np.zeros((10, 10), np.float32)
    p1[0:3, 0:10] = 0.5
    p1[1, 0:10] = 0.9
    p1[8, 0:4] = 0.35
    probs = binary_probs(p1)
    keep = PostProcessConfig(triplet=TripletGate(top_score_threshold=0.8, min_contour_area=10,
                                                 bottom_score_threshold=0.4))
    out = postprocess(probs, keep)
    assert out.sum() == 30 and out[0:3].all()            # kept at the bottom threshold
    empty = PostProcessConfig(triplet=TripletGate(0.8, 11, 0.4))
    assert postprocess(probs, empty).sum() == 0          # too few pixels above top -> emptied
    lower = PostProcessConfig(triplet=TripletGate(0.8, 10, 0.3))
    assert postprocess(probs, lower).sum() == 34         # bottom threshold decides the extent
    strict = PostProcessConfig(triplet=TripletGate(0.9, 1, 0.4))
    assert postprocess(probs, strict).sum() == 0         # "p > top" is strict, as in the original


def test_triplet_gate_multiclass_per_class():
    probs = np.zeros((3, 10, 10), np.float32)
    probs[0] = 1.0
    probs[:, 0:5, :] = np.array([0.1, 0.9, 0.0])[:, None, None]   # class 1: 50 confident px
    probs[:, 6:10, 0:2] = np.array([0.4, 0.0, 0.6])[:, None, None]  # class 2: 8 px at 0.6
    out = postprocess(probs, PostProcessConfig(triplet=TripletGate(0.8, 20, 0.5)))
    assert (out == 1).sum() == 50 and (out == 2).sum() == 0
    out = postprocess(probs, PostProcessConfig(triplet=TripletGate(0.55, 8, 0.5)))
    assert (out == 1).sum() == 50 and (out == 2).sum() == 8


def test_bad_inputs_raise_project_errors():
    with pytest.raises(MaskError):
        postprocess(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(MaskError):
        postprocess(np.zeros((4, 4), np.float32))
    with pytest.raises(ConfigError):
        PostProcessConfig(threshold=1.5)
    with pytest.raises(ConfigError):
        PostProcessConfig(min_area=-1)
    with pytest.raises(ConfigError):
        PostProcessConfig(connectivity=3)
    with pytest.raises(ConfigError, match="valid options"):
        PostProcessConfig.from_dict({"treshold": 0.5})


def test_float64_input_accepted():
    probs = binary_probs(square((6, 6), 1, 3, 1, 3, 0.8)).astype(np.float64)
    assert postprocess(probs).sum() == 4


# --------------------------------------------------------------------------- JSON

def test_json_round_trips():
    cfg = PostProcessConfig(threshold=0.35, min_area=120, keep_largest=2, fill_holes=True,
                            presence_threshold=0.6, triplet=TripletGate(0.8, 500, 0.3),
                            class_thresholds={1: 0.4, 3: 0.7}, connectivity=1)
    back = PostProcessConfig.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.triplet, TripletGate)
    assert set(back.class_thresholds) == {1, 3}
    assert PostProcessConfig.from_json(PostProcessConfig().to_json()) == PostProcessConfig()
    grid = TuneGrid(thresholds=(0.25, 0.5), min_areas=(0, 7), area_reference=4096, keep_largest=(0, 1))
    assert TuneGrid.from_json(grid.to_json()) == grid


# --------------------------------------------------------------------------- tuning

def _planted_set(n: int = 8, size: int = 48, seed: int = 0):
    """Objects at p = 0.7 (the truth) plus separated 2x2 speckle blobs at p = 0.9; half the images empty."""
    rng = np.random.default_rng(seed)
    probs, gts = [], []
    half = size // 2
    for i in range(n):
        p1 = np.full((size, size), 0.05, np.float32)
        gt = np.zeros((size, size), np.uint8)
        if i % 2 == 0:  # an object somewhere in the left half
            side = half - 10
            r, c = rng.integers(2, size - side - 2), rng.integers(2, 6)
            p1[r:r + side, c:c + side] = 0.7
            gt[r:r + side, c:c + side] = 1
        rows = rng.choice(np.arange(1, size - 2, 4), size=4, replace=False)
        for r in rows:  # 4-px false positives in the right half, at least 2 px apart
            c = int(rng.choice(np.arange(half + 2, size - 2, 4)))
            p1[r:r + 2, c:c + 2] = 0.9
        probs.append(binary_probs(p1))
        gts.append(gt)
    return probs, gts


def test_tune_finds_planted_min_area():
    probs, gts = _planted_set()
    grid = TuneGrid(thresholds=(0.5, 0.8), min_areas=(0, 3, 5, 400), triplet_top_thresholds=())
    seen = []
    res = tune_postprocess(probs, gts, grid=grid, progress=lambda d, t, m="": seen.append((d, t)))
    assert seen[-1] == (len(probs), len(probs))
    assert isinstance(res, TuneResult)
    # threshold 0.5 keeps the 0.7 objects; min_area 5 (not 3) removes the 4-px blobs; 400 removes objects too.
    assert res.best.threshold == 0.5 and res.best.min_area == 5
    assert res.best_score == pytest.approx(1.0)
    assert res.baseline_score < 0.9
    assert len(res.table) == 2 * 4
    row = {(r["threshold"], r["min_area"]): r["score"] for r in res.table}
    assert row[(0.5, 400)] == pytest.approx(0.5)     # objects removed: only empty images score
    assert row[(0.8, 0)] < row[(0.5, 5)]
    assert row[(0.5, 3)] == pytest.approx(res.baseline_score)


def test_tune_table_matches_exact_evaluation():
    """The fast component-statistics path scores every setting exactly as rendering would."""
    rng = np.random.default_rng(3)
    probs, gts = [], []
    for i in range(4):
        p = rng.random((3, 32, 32)).astype(np.float32)
        p = ndimage.gaussian_filter(p, (0, 1.5, 1.5))
        p /= p.sum(axis=0, keepdims=True)
        probs.append(p)
        gt = ndimage.gaussian_filter(rng.random((32, 32)), 2)
        gts.append(np.digitize(gt, np.quantile(gt, [0.6, 0.85])).astype(np.uint8) * (i != 1))
    presences = [0.9, 0.2, None, 0.55]
    grid = TuneGrid(thresholds=(0.3, 0.36, 0.42), min_areas=(0, 3, 12), keep_largest=(0, 2),
                    presence_thresholds=(0.5, 0.6), triplet_top_thresholds=(0.4, 0.5),
                    triplet_min_contour_areas=(5, 40))
    for policy in ("kaggle", "skip", "zero"):
        res = tune_postprocess(probs, gts, presences=presences, grid=grid, empty_policy=policy)
        assert len(res.table) > 50
        for row in res.table[::3]:
            trip = (TripletGate(row["triplet_top"], row["triplet_min_area"], row["threshold"])
                    if row["triplet_top"] is not None else None)
            cfg = PostProcessConfig(threshold=row["threshold"], min_area=row["min_area"],
                                    keep_largest=row["keep_largest"],
                                    presence_threshold=row["presence_threshold"], triplet=trip)
            exact = evaluate_postprocess(probs, gts, cfg, presences, policy)
            assert row["score"] == pytest.approx(exact, abs=1e-12), row
        assert res.best_score == max(r["score"] for r in res.table)


def test_tune_presence_gate_and_fill_holes_path():
    # image 0: real object, presence high; image 1: empty truth, spurious blob, presence low.
    p_obj = square((24, 24), 4, 16, 4, 16, 0.8)
    p_obj[9:11, 9:11] = 0.2  # a hole the fill_holes option repairs
    gt_obj = (square((24, 24), 4, 16, 4, 16) > 0).astype(np.uint8)
    p_fp = square((24, 24), 5, 15, 5, 15, 0.8)  # large: min_area cannot remove it
    probs = [binary_probs(p_obj), binary_probs(p_fp)]
    gts = [gt_obj, np.zeros((24, 24), np.uint8)]
    grid = TuneGrid(thresholds=(0.5,), min_areas=(0,), presence_thresholds=(0.5,),
                    triplet_top_thresholds=(), fill_holes=True)
    res = tune_postprocess(probs, gts, presences=[0.95, 0.1], grid=grid)
    assert res.best.presence_threshold == 0.5 and res.best.fill_holes
    assert res.best_score == pytest.approx(1.0)
    no_presence = [r for r in res.table if r["presence_threshold"] is None][0]
    assert no_presence["score"] == pytest.approx(0.5)   # image 1 scores 0 without the gate
    # without presence values, presence settings are not tried
    res2 = tune_postprocess(probs, gts, grid=grid)
    assert all(r["presence_threshold"] is None for r in res2.table)


def test_tune_area_reference_scaling_and_json():
    probs, gts = _planted_set(n=4, size=32)
    grid = TuneGrid(thresholds=(0.5,), min_areas=(0, 20, 80), area_reference=64 * 64,
                    triplet_top_thresholds=(0.8,), triplet_min_contour_areas=(400,))
    res = tune_postprocess(probs, gts, grid=grid)
    assert sorted({r["min_area"] for r in res.table}) == [0, 5, 20]       # scaled by 1/4
    assert {r["triplet_min_area"] for r in res.table} == {None, 100}
    back = TuneResult.from_json(res.to_json())
    assert back.best == res.best and back.table == res.table
    assert back.best_score == res.best_score


def test_tune_input_checks():
    probs, gts = _planted_set(n=2, size=16)
    with pytest.raises(MaskError):
        tune_postprocess(probs, gts[:1])
    with pytest.raises(MaskError):
        tune_postprocess(probs, [g[:8] for g in gts])
    with pytest.raises(MaskError):
        tune_postprocess(probs, [g + 2 for g in gts])
    with pytest.raises(ConfigError, match="kaggle"):
        tune_postprocess(probs, gts, empty_policy="nope")
    with pytest.raises(ConfigError):
        tune_postprocess([], [])
