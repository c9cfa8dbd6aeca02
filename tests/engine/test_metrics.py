"""Tests for engine.metrics: hand-computed values, invariants (hypothesis), edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import cdist

from engine import metrics as M
from engine.errors import ConfigError, MaskError, WorkbenchError

HYP = settings(max_examples=60, deadline=None)


def square(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int, value: int = 1) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[r0:r1, c0:c1] = value
    return m


def binary_masks(max_side: int = 12):
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side)).flatmap(
        lambda hw: st.tuples(arrays(np.uint8, hw, elements=st.integers(0, 1)),
                             arrays(np.uint8, hw, elements=st.integers(0, 1))))


# ----------------------------------------------------------------------------- overlap

def test_two_squares_known_overlap():
    # gt 4x4 = 16 px; pred 4x4 shifted by 2 columns: overlap 4x2 = 8 px
    gt = square((10, 10), 2, 6, 2, 6)
    pred = square((10, 10), 2, 6, 4, 8)
    assert M.dice(pred, gt) == pytest.approx(2 * 8 / (16 + 16))
    assert M.iou(pred, gt) == pytest.approx(8 / 24)
    m = M.image_metrics(pred, gt, surface=False)[1]
    assert (m.tp, m.fp, m.fn, m.tn) == (8, 8, 8, 76)
    assert m.dice == pytest.approx(0.5)
    assert m.iou == pytest.approx(1 / 3)
    assert m.precision == pytest.approx(0.5)
    assert m.recall == pytest.approx(0.5)
    assert m.specificity == pytest.approx(76 / 84)
    assert m.pixel_error == pytest.approx(16 / 100)
    assert (m.gt_area, m.pred_area, m.gt_empty, m.pred_empty) == (16, 16, False, False)
    assert math.isnan(m.hd95) and math.isnan(m.assd)  # surface=False


def test_bool_and_int_inputs_agree():
    gt = square((6, 7), 1, 4, 1, 5)
    pred = square((6, 7), 2, 5, 2, 6)
    assert M.dice(pred.astype(bool), gt.astype(bool)) == M.dice(pred, gt.astype(np.int64))
    assert M.image_metrics(pred.astype(bool), gt, surface=False)[1].dice == M.dice(pred, gt)


@pytest.mark.parametrize("fn", [M.dice, M.iou])
def test_empty_empty_policies(fn):
    z = np.zeros((5, 5), np.uint8)
    assert fn(z, z, empty_policy="kaggle") == 1.0
    assert math.isnan(fn(z, z, empty_policy="exclude"))


def test_empty_empty_image_metrics_policies():
    z = np.zeros((5, 5), np.uint8)
    k = M.image_metrics(z, z, empty_policy="kaggle")[1]
    assert (k.dice, k.iou, k.precision, k.recall, k.hd95, k.assd) == (1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    assert k.specificity == 1.0 and k.pixel_error == 0.0
    assert k.gt_empty and k.pred_empty
    e = M.image_metrics(z, z, empty_policy="exclude")[1]
    for v in (e.dice, e.iou, e.precision, e.recall, e.hd95, e.assd):
        assert math.isnan(v)
    assert e.specificity == 1.0 and e.pixel_error == 0.0  # still defined


@pytest.mark.parametrize("policy", ["kaggle", "exclude"])
def test_one_side_empty(policy):
    z = np.zeros((6, 6), np.uint8)
    blob = square((6, 6), 1, 3, 1, 4)  # 6 px
    fp_only = M.image_metrics(blob, z, empty_policy=policy)[1]  # pred non-empty, gt empty
    assert fp_only.dice == 0.0 and fp_only.iou == 0.0 and fp_only.precision == 0.0
    assert math.isnan(fp_only.recall)  # no positives to recall
    assert math.isnan(fp_only.hd95) and math.isnan(fp_only.assd)
    assert fp_only.specificity == pytest.approx(30 / 36)
    assert fp_only.pixel_error == pytest.approx(6 / 36)
    miss = M.image_metrics(z, blob, empty_policy=policy)[1]  # pred empty, gt non-empty
    assert miss.dice == 0.0 and miss.recall == 0.0
    assert math.isnan(miss.precision)
    assert miss.specificity == 1.0
    assert M.dice(z, blob, empty_policy=policy) == 0.0


def test_multiclass_per_class_values_by_hand():
    gt = np.array([[1, 1, 2, 2],
                   [1, 1, 2, 2],
                   [0, 0, 0, 0],
                   [0, 0, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 2, 2],
                     [1, 0, 2, 0],
                     [0, 0, 2, 2],
                     [0, 0, 0, 1]], np.uint8)
    cm = M.confusion_matrix_labels(pred, gt, 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[5, 1, 2], [1, 3, 0], [1, 0, 3]]
    res = M.image_metrics(pred, gt, num_classes=3, surface=False)
    assert sorted(res) == [1, 2]
    c1, c2 = res[1], res[2]
    assert (c1.tp, c1.fp, c1.fn, c1.tn) == (3, 1, 1, 11)
    assert c1.dice == pytest.approx(0.75) and c1.iou == pytest.approx(0.6)
    assert c1.precision == pytest.approx(0.75) and c1.recall == pytest.approx(0.75)
    assert c1.specificity == pytest.approx(11 / 12) and c1.pixel_error == pytest.approx(2 / 16)
    assert (c2.tp, c2.fp, c2.fn, c2.tn) == (3, 2, 1, 10)
    assert c2.dice == pytest.approx(6 / 9) and c2.iou == pytest.approx(0.5)
    assert c2.precision == pytest.approx(3 / 5) and c2.recall == pytest.approx(3 / 4)
    assert c2.specificity == pytest.approx(10 / 12) and c2.pixel_error == pytest.approx(3 / 16)
    # per-class Dice equals binary Dice of the one-vs-rest masks
    assert c2.dice == pytest.approx(M.dice(pred == 2, gt == 2))


def test_num_classes_inferred_and_absent_class():
    gt = square((5, 5), 0, 2, 0, 2, value=1)
    res = M.image_metrics(gt, gt, num_classes=4, surface=False)
    assert sorted(res) == [1, 2, 3]
    assert res[3].gt_empty and res[3].dice == 1.0  # absent in both -> kaggle rule
    assert sorted(M.image_metrics(gt, gt, surface=False)) == [1]  # inferred K = 2


@pytest.mark.parametrize("k", [2, 4, 17])  # binary fast path, uint8 and uint16 bincount paths
def test_confusion_matrix_matches_sklearn(k):
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(3)
    pred = rng.integers(0, k, (13, 17))
    gt = rng.integers(0, k, (13, 17))
    ours = M.confusion_matrix_labels(pred, gt, k)
    ref = confusion_matrix(gt.ravel(), pred.ravel(), labels=list(range(k)))
    np.testing.assert_array_equal(ours, ref)
    assert ours.sum() == pred.size


@HYP
@given(binary_masks())
def test_dice_iou_invariants(pair):
    a, b = pair
    for policy in ("kaggle", "exclude"):
        d = M.dice(a, b, empty_policy=policy)
        if not a.any() and not b.any() and policy == "exclude":
            assert math.isnan(d)
            continue
        j = M.iou(a, b, empty_policy=policy)
        assert 0.0 <= d <= 1.0 and 0.0 <= j <= 1.0
        assert d == pytest.approx(M.dice(b, a, empty_policy=policy))  # symmetric
        assert d == pytest.approx(2 * j / (1 + j))
        assert j <= d + 1e-12
        m = M.image_metrics(a, b, num_classes=2, empty_policy=policy, surface=False)[1]
        assert m.dice == pytest.approx(d) and m.iou == pytest.approx(j)
        # counts partition the image
        assert m.tp + m.fp + m.fn + m.tn == a.size
    assert M.dice(a, a) == 1.0


# ----------------------------------------------------------------------------- surfaces

def _brute_surface(mask: np.ndarray) -> np.ndarray:
    pad = np.pad(mask.astype(bool), 1, constant_values=False)
    interior = (pad[1:-1, 1:-1] & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    return mask.astype(bool) & ~interior


def _brute_distances(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0)):
    pa = np.argwhere(_brute_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(_brute_surface(b)) * np.asarray(spacing)
    d = cdist(pa, pb)
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    hd = max(d_ab.max(), d_ba.max())
    h95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    asd = (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)
    return hd, h95, asd


def test_concentric_squares_offset_3px_analytic():
    # A: 100x100 square; B: 106x106 square with the same centre (3 px bigger on each side).
    # Every A-surface pixel is exactly 3 px from B's surface. On B's ring (420 px) all but
    # 5 pixels per corner are at 3 px; the corner pixels are at sqrt(18), sqrt(13) (x2),
    # sqrt(10) (x2). 20/420 < 5 % so both directed 95th percentiles are exactly 3.
    a = square((120, 120), 10, 110, 10, 110)
    b = square((120, 120), 7, 113, 7, 113)
    sd = M.surface_distances(a, b)
    corner = math.sqrt(18) + 2 * math.sqrt(13) + 2 * math.sqrt(10)
    n_a, n_b = 4 * 100 - 4, 4 * 106 - 4
    expected_assd = (n_a * 3 + (n_b - 20) * 3 + 4 * corner) / (n_a + n_b)
    assert sd.hd95 == pytest.approx(3.0)
    assert sd.hd == pytest.approx(math.sqrt(18))
    assert sd.assd == pytest.approx(expected_assd)
    assert M.hd95(a, b) == pytest.approx(3.0)
    assert M.assd(b, a) == pytest.approx(expected_assd)  # symmetric
    im = M.image_metrics(a, b)[1]
    assert im.hd95 == pytest.approx(3.0) and im.assd == pytest.approx(expected_assd)


def test_translated_square_hausdorff_is_shift():
    a = square((30, 30), 5, 15, 5, 15)
    b = np.roll(a, 3, axis=1)
    sd = M.surface_distances(a, b)
    assert sd.hd == pytest.approx(3.0)
    assert 0 < sd.assd < 3.0
    assert sd.hd95 <= 3.0 + 1e-9


def test_identical_masks_zero_distance():
    a = square((16, 16), 3, 9, 2, 12)
    assert M.surface_distances(a, a) == (0.0, 0.0, 0.0)


def test_spacing_scales_distances():
    a = square((120, 120), 10, 110, 10, 110)
    b = square((120, 120), 7, 113, 7, 113)
    px = M.surface_distances(a, b)
    mm = M.surface_distances(a, b, spacing=(0.5, 0.5))
    assert mm.hd95 == pytest.approx(px.hd95 * 0.5)
    assert mm.assd == pytest.approx(px.assd * 0.5)
    assert mm.hd == pytest.approx(px.hd * 0.5)
    # anisotropic: a pure horizontal shift of 3 columns at 2 mm per column -> 6 mm
    c = square((30, 30), 5, 15, 5, 15)
    sd = M.surface_distances(c, np.roll(c, 3, axis=1), spacing=(1.0, 2.0))
    assert sd.hd == pytest.approx(6.0)
    assert M.image_metrics(c, np.roll(c, 3, axis=1), spacing=(1.0, 2.0))[1].hd95 == pytest.approx(sd.hd95)


@HYP
@given(binary_masks(10), st.sampled_from([(1.0, 1.0), (0.5, 2.0), (3.0, 0.7)]))
def test_surface_distances_match_brute_force(pair, spacing):
    a, b = pair
    sd = M.surface_distances(a, b, spacing=spacing)
    if not a.any() and not b.any():
        assert sd == (0.0, 0.0, 0.0)
    elif not a.any() or not b.any():
        assert all(math.isnan(v) for v in sd)
    else:
        hd, h95, asd = _brute_distances(a, b, spacing)
        assert sd.hd == pytest.approx(hd)
        assert sd.hd95 == pytest.approx(h95)
        assert sd.assd == pytest.approx(asd)
        assert sd.hd95 <= sd.hd + 1e-9 and sd.assd <= sd.hd + 1e-9
        # symmetric
        rev = M.surface_distances(b, a, spacing=spacing)
        assert rev.hd95 == pytest.approx(sd.hd95) and rev.assd == pytest.approx(sd.assd)


def test_cropping_is_exact_for_objects_on_the_image_border():
    # objects touching the image edge: the edge pixels are surface (as with padding by zeros)
    a = square((20, 20), 0, 8, 0, 20)
    b = square((20, 20), 0, 11, 3, 20)
    hd, h95, asd = _brute_distances(a, b)
    sd = M.surface_distances(a, b)
    assert (sd.hd, sd.hd95, sd.assd) == pytest.approx((hd, h95, asd))


def test_surface_empty_rules():
    z = np.zeros((8, 8), bool)
    a = square((8, 8), 2, 5, 2, 5)
    assert M.surface_distances(z, z) == (0.0, 0.0, 0.0)
    assert all(math.isnan(v) for v in M.surface_distances(z, z, empty_policy="exclude"))
    assert all(math.isnan(v) for v in M.surface_distances(a, z))
    assert all(math.isnan(v) for v in M.surface_distances(z, a))


# ----------------------------------------------------------------------------- Rand error

def _brute_rand(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Pair counting over ordered pixel pairs (self-pairs included: the N^2 normalisation) of
    ground-truth-foreground pixels; proposal background pixels are singleton segments."""
    fg = gt.ravel() != 0
    gl = gt.ravel()[fg]
    pl = pred.ravel()[fg].astype(np.int64)
    pl = np.where(pl == 0, -(np.arange(pl.size) + 1), pl)
    same_g = gl[:, None] == gl[None, :]
    same_p = pl[:, None] == pl[None, :]
    both = np.sum(same_g & same_p)
    return both / same_g.sum(), both / same_p.sum()


def test_rand_identical_is_zero():
    gt = np.zeros((12, 12), np.uint8)
    gt[1:5, 1:5] = 1
    gt[7:11, 2:10] = 1
    assert M.rand_error(gt, gt) == 0.0
    inst = np.array([[1, 1, 0, 2], [3, 3, 0, 2]])
    assert M.rand_error(inst, inst, instances=True) == 0.0


def test_rand_hand_computed_split_merge_singletons():
    # split: one true segment of 4 px, proposal 2+2 -> split 1/2, merge 1, F 2/3
    s = M.rand_scores(np.array([[1, 1, 2, 2, 0]]), np.array([[1, 1, 1, 1, 0]]), instances=True)
    assert (s.split, s.merge) == pytest.approx((0.5, 1.0))
    assert s.rand_error == pytest.approx(1 / 3)
    # merge: two true segments of 2 px, one proposed segment (gt background ignored)
    s = M.rand_scores(np.array([[1, 1, 1, 1, 1]]), np.array([[1, 1, 0, 2, 2]]), instances=True)
    assert (s.split, s.merge) == pytest.approx((1.0, 0.5))
    assert s.rand_error == pytest.approx(1 / 3)
    # proposal background inside gt foreground = singletons: sum p^2 = 1/4 + 2/16 = 3/8
    s = M.rand_scores(np.array([[1, 1, 0, 0]]), np.array([[1, 1, 1, 1]]), instances=True)
    assert (s.split, s.merge) == pytest.approx((3 / 8, 1.0))
    assert s.rand_error == pytest.approx(5 / 11)


def test_rand_binary_split_and_merge():
    gt = square((10, 12), 2, 8, 2, 10)
    cut = gt.copy()
    cut[:, 6] = 0  # a 1-px gap splits the cell in two components
    s = M.rand_scores(cut, gt)
    assert s.merge == pytest.approx(1.0) and s.split < 1.0 and M.rand_error(cut, gt) > 0
    # merge: two true cells separated by a membrane line, proposal bridges it
    s2 = M.rand_scores(gt, cut)
    assert s2.split == pytest.approx(1.0) and s2.merge < 1.0 and s2.rand_error > 0
    # labels of a binary mask do not matter (any non-zero = foreground)
    assert M.rand_error(gt * 3, gt) == 0.0


@HYP
@given(st.tuples(st.integers(1, 6), st.integers(1, 6)).flatmap(
    lambda hw: st.tuples(arrays(np.int64, hw, elements=st.integers(0, 4)),
                         arrays(np.int64, hw, elements=st.integers(0, 4)),
                         st.permutations([1, 2, 3, 4]))))
def test_rand_matches_pair_counting_and_is_permutation_invariant(data):
    pred, gt, perm = data
    s = M.rand_scores(pred, gt, instances=True)
    if not gt.any():
        assert math.isnan(s.v_rand)
        return
    split, merge = _brute_rand(pred, gt)
    assert s.split == pytest.approx(split) and s.merge == pytest.approx(merge)
    assert 0.0 <= s.rand_error <= 1.0
    lut = np.array([0, *perm])
    assert M.rand_error(lut[pred], gt, instances=True) == pytest.approx(s.rand_error)
    assert M.rand_error(pred, lut[gt], instances=True) == pytest.approx(s.rand_error)


def test_rand_empty_gt_is_nan_and_best_threshold():
    z = np.zeros((4, 4), np.uint8)
    assert math.isnan(M.rand_error(square((4, 4), 0, 2, 0, 2), z))
    gt = square((10, 10), 2, 8, 2, 8)
    prob = np.where(gt == 1, 0.65, 0.3)
    prob[5, :] = 0.45  # a faint membrane line: thresholds >= 0.5 split the cell
    err, t = M.rand_error_best_threshold(prob, gt)
    assert err == pytest.approx(0.0) and t < 0.45
    err_hi, _ = M.rand_error_best_threshold(prob, gt, thresholds=[0.5])
    assert err_hi > 0
    assert all(math.isnan(v) for v in M.rand_error_best_threshold(prob, np.zeros_like(gt)))


# ----------------------------------------------------------------------------- presence

def test_presence_metrics_by_hand():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.6, 0.3, 0.7, 0.55, 0.2, 0.1, 0.4, 0.05]
    m = M.presence_metrics(y, s, threshold=0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 1, 4)
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["ppv"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["f1"] == pytest.approx(6 / 9)
    assert m["roc_auc"] == pytest.approx(20 / 24)  # 20 of 24 (pos, neg) pairs ordered
    assert m["average_precision"] == pytest.approx(0.25 * (1 + 1 + 3 / 4 + 4 / 7))
    assert m["auc_reason"] is None and m["notes"] == []
    assert (m["n"], m["n_positive"], m["n_negative"]) == (10, 4, 6)
    assert m["roc_curve"]["tpr"][-1] == 1.0 and m["roc_curve"]["fpr"][-1] == 1.0
    assert len(m["pr_curve"]["precision"]) == len(m["pr_curve"]["thresholds"]) + 1
    json.dumps({k: v for k, v in m.items() if k != "roc_curve"})  # JSON-ready
    # threshold is inclusive, and a higher threshold trades sensitivity for specificity
    assert M.presence_metrics([1], [0.5], threshold=0.5, curves=False)["tp"] == 1
    hi = M.presence_metrics(y, s, threshold=0.75, curves=False)
    assert hi["sensitivity"] < m["sensitivity"] and hi["specificity"] > m["specificity"]
    assert "roc_curve" not in hi


def test_presence_confusion_matches_sklearn():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.random(200)
    m = M.presence_metrics(y, s, threshold=0.3, curves=False)
    assert m["confusion_matrix"] == confusion_matrix(y, (s >= 0.3).astype(int), labels=[0, 1]).tolist()


@pytest.mark.parametrize("label", [0, 1])
def test_presence_single_class_is_graceful(label):
    y = [label] * 5
    m = M.presence_metrics(y, [0.1, 0.2, 0.6, 0.7, 0.9])
    assert math.isnan(m["roc_auc"])
    assert "only" in m["auc_reason"] and "both classes" in m["auc_reason"]
    assert m["roc_curve"] == {"fpr": [], "tpr": [], "thresholds": []}
    if label == 0:
        assert math.isnan(m["sensitivity"]) and math.isnan(m["average_precision"])
        assert m["pr_curve"]["precision"] == []
        assert any("sensitivity" in n for n in m["notes"])
    else:
        assert math.isnan(m["specificity"]) and m["average_precision"] == pytest.approx(1.0)


def test_presence_zero_division_nan():
    m = M.presence_metrics([1, 0, 1], [0.1, 0.2, 0.3], threshold=0.9)  # nothing predicted positive
    assert math.isnan(m["ppv"]) and m["npv"] == pytest.approx(1 / 3)
    assert any(n.startswith("ppv is NaN") for n in m["notes"])
    m = M.presence_metrics([1, 0], [0.8, 0.9], threshold=0.1)  # nothing predicted negative
    assert math.isnan(m["npv"])


def test_presence_input_errors():
    with pytest.raises(ConfigError, match="same length"):
        M.presence_metrics([0, 1], [0.5])
    with pytest.raises(ConfigError, match="0/1"):
        M.presence_metrics([0, 2], [0.5, 0.5])
    with pytest.raises(ConfigError, match="NaN"):
        M.presence_metrics([0, 1], [0.5, float("nan")])
    with pytest.raises(ConfigError, match="no images"):
        M.presence_metrics([], [])


# ----------------------------------------------------------------------------- errors

def test_shape_mismatch_names_shapes_and_fix():
    with pytest.raises(MaskError) as exc:
        M.image_metrics(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))
    text = str(exc.value)
    assert "(4, 5)" in text and "(5, 4)" in text and "Fix:" in text
    for fn in (M.dice, M.iou, M.surface_distances, M.rand_error):
        with pytest.raises(MaskError):
            fn(np.zeros((3, 3), np.uint8), np.zeros((3, 4), np.uint8))
    with pytest.raises(MaskError):
        M.confusion_matrix_labels(np.zeros((3, 3), np.uint8), np.zeros((2, 3), np.uint8), 2)


def test_bad_masks_raise_mask_error():
    with pytest.raises(MaskError, match="dtype"):
        M.image_metrics(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8))
    with pytest.raises(MaskError, match="2-D"):
        M.image_metrics(np.zeros((1, 3, 3), np.uint8), np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(MaskError, match="label 3"):
        M.image_metrics(np.full((3, 3), 3, np.uint8), np.zeros((3, 3), np.uint8), num_classes=3)
    with pytest.raises(MaskError, match="label -1"):
        M.confusion_matrix_labels(np.full((2, 2), -1), np.zeros((2, 2), int), 2)
    with pytest.raises(MaskError, match="not binary"):
        M.dice(np.full((2, 2), 2, np.uint8), np.zeros((2, 2), np.uint8))


def test_bad_options_raise_config_error():
    z = np.zeros((3, 3), np.uint8)
    with pytest.raises(ConfigError, match="empty policy") as exc:
        M.dice(z, z, empty_policy="ignore")  # type: ignore[arg-type]
    assert "exclude" in str(exc.value) and "kaggle" in str(exc.value)
    with pytest.raises(ConfigError, match="spacing"):
        M.image_metrics(z, z, spacing=(0.0, 1.0))
    with pytest.raises(ConfigError, match="spacing"):
        M.surface_distances(z, z, spacing=(1.0,))
    with pytest.raises(ConfigError):
        M.confusion_matrix_labels(z, z, 1)
    assert issubclass(MaskError, WorkbenchError)


# ----------------------------------------------------------------------------- accumulator

def _four_binary_images():
    shape = (4, 4)
    full = square(shape, 1, 3, 1, 3)  # 4 px
    half = square(shape, 1, 3, 1, 2)  # 2 px inside full
    z = np.zeros(shape, np.uint8)
    one = z.copy()
    one[0, 0] = 1
    return [("a", full, full),   # dice 1
            ("b", z, z),         # both empty
            ("c", half, full),   # dice 2*2/(2+4) = 2/3
            ("d", one, z)]       # false positive on an empty image: dice 0


def test_accumulator_summary_kaggle_by_hand():
    acc = M.MetricAccumulator(2, {0: "background", 1: "nerve"}, empty_policy="kaggle")
    for cid, p, g in _four_binary_images():
        acc.add(cid, p, g)
    s = acc.summary()
    assert s["empty_policy"] == "kaggle" and "Kaggle" in s["empty_policy_rule"]
    assert s["n_images"] == 4 and len(acc) == 4
    c = s["classes"]["nerve"]
    assert c["class_id"] == 1
    assert c["n_counted"] == 4 and c["n_images"] == 4
    assert (c["n_gt_empty"], c["n_gt_nonempty"], c["n_both_empty"]) == (2, 2, 1)
    assert c["dice"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    assert c["iou"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert c["dice_gt_empty"] == pytest.approx(0.5) and c["n_counted_gt_empty"] == 2
    assert c["dice_gt_nonempty"] == pytest.approx((1 + 2 / 3) / 2)
    # pooled: tp = 4 + 2, fp = 1, fn = 2
    assert c["dice_global"] == pytest.approx(12 / 15)
    assert c["iou_global"] == pytest.approx(6 / 9)
    assert c["recall"] == pytest.approx((1 + 1 + 0.5) / 3)  # image d: recall undefined
    assert c["n_counted_by_metric"]["recall"] == 3
    assert c["n_counted_by_metric"]["hd95"] == 0 and math.isnan(c["hd95"])  # surface off
    assert s["mean_foreground"]["dice"] == pytest.approx(c["dice"])
    assert s["pixel_error"] == pytest.approx((0 + 0 + 2 / 16 + 1 / 16) / 4)
    assert math.isnan(s["rand_error"])


def test_accumulator_summary_exclude_by_hand():
    acc = M.MetricAccumulator(2, empty_policy="exclude")
    for cid, p, g in _four_binary_images():
        acc.add(cid, p, g)
    s = acc.summary()
    c = s["classes"]["class_1"]
    assert s["empty_policy"] == "exclude"
    assert c["n_counted"] == 3
    assert c["dice"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert c["dice_gt_empty"] == 0.0 and c["n_counted_gt_empty"] == 1
    assert c["dice_gt_nonempty"] == pytest.approx((1 + 2 / 3) / 2)


def test_accumulator_per_image_table_matches_image_metrics():
    rng = np.random.default_rng(7)
    label_map = {0: "background", 1: "left", 2: "right"}
    acc = M.MetricAccumulator(label_map=label_map, surface=True, rand=True)
    pairs = {}
    for i in range(5):
        gt = rng.integers(0, 3, (12, 12)).astype(np.uint8)
        pred = np.where(rng.random((12, 12)) < 0.8, gt, rng.integers(0, 3, (12, 12))).astype(np.uint8)
        pairs[f"case{i}"] = (pred, gt)
        acc.add(f"case{i}", pred, gt)
    df = acc.per_image()
    assert len(df) == 5 * 2
    assert list(df.columns[:3]) == ["case_id", "class_id", "class_name"]
    assert set(df["class_name"]) == {"left", "right"}
    for row in df.itertuples():
        ref = M.image_metrics(*pairs[row.case_id], num_classes=3)[row.class_id]
        for name in ("dice", "iou", "precision", "recall", "specificity", "pixel_error", "hd95", "assd"):
            assert getattr(row, name) == pytest.approx(getattr(ref, name), nan_ok=True)
        assert (row.gt_area, row.pred_area, row.gt_empty) == (ref.gt_area, ref.pred_area, ref.gt_empty)
    s = acc.summary()
    for name in ("left", "right"):
        assert s["classes"][name]["dice"] == pytest.approx(df[df.class_name == name]["dice"].mean())
        assert s["classes"][name]["hd95"] == pytest.approx(df[df.class_name == name]["hd95"].mean())
    assert s["mean_foreground"]["dice"] == pytest.approx(
        (s["classes"]["left"]["dice"] + s["classes"]["right"]["dice"]) / 2)
    assert s["mean_foreground"]["n_classes"] == 2
    cases = acc.per_case()
    assert list(cases["case_id"]) == [f"case{i}" for i in range(5)]
    for row in cases.itertuples():
        pred, gt = pairs[row.case_id]
        assert row.pixel_error == pytest.approx(np.mean(pred != gt))
        assert row.rand_error == pytest.approx(M.rand_error(pred, gt))
    assert s["rand_error"] == pytest.approx(cases["rand_error"].mean())
    json.dumps(s)  # summary is JSON-serialisable (NaN allowed by json.dumps)


def test_accumulator_spacing_override_and_errors():
    a = square((120, 120), 10, 110, 10, 110)
    b = square((120, 120), 7, 113, 7, 113)
    acc = M.MetricAccumulator(2, surface=True, spacing=(2.0, 2.0))
    assert acc.add("x", a, b)[1].hd95 == pytest.approx(6.0)
    assert acc.add("y", a, b, spacing=(0.5, 0.5))[1].hd95 == pytest.approx(1.5)
    assert acc.summary()["classes"]["class_1"]["hd95"] == pytest.approx(3.75)
    with pytest.raises(ConfigError, match="already added"):
        acc.add("x", a, b)
    with pytest.raises(MaskError, match="case 'z'"):
        acc.add("z", a * 2, b)
    assert len(acc) == 2  # failed adds store nothing
    with pytest.raises(ConfigError):
        M.MetricAccumulator(3, {0: "bg", 1: "a"})
    with pytest.raises(ConfigError):
        M.MetricAccumulator(None, {0: "bg", 2: "a"})
    with pytest.raises(ConfigError):
        M.MetricAccumulator(2, empty_policy="nope")  # type: ignore[arg-type]


def test_empty_accumulator_summary():
    acc = M.MetricAccumulator(2)
    s = acc.summary()
    assert s["n_images"] == 0 and s["classes"]["class_1"]["n_counted"] == 0
    assert math.isnan(s["classes"]["class_1"]["dice"]) and math.isnan(s["mean_foreground"]["dice"])
    assert acc.per_image().empty and acc.per_case().empty


def test_paired_bootstrap_ci_of_a_difference() -> None:
    from engine.metrics import paired_bootstrap_ci

    before = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert paired_bootstrap_ci(before, [b + 0.1 for b in before]) == pytest.approx((0.1, 0.1))  # every case +0.1
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.05, 200)
    lo, hi = paired_bootstrap_ci(before * 40, [b + n for b, n in zip(before * 40, noise)])
    assert lo < noise.mean() < hi and lo < 0 < hi  # pure noise: the interval holds 0
    lo, hi = paired_bootstrap_ci(before * 40, [b + 0.02 + n for b, n in zip(before * 40, noise)])
    assert 0 < lo < 0.02 + noise.mean() < hi  # a real gain of 0.02 over that noise: clear of 0
    assert paired_bootstrap_ci([0.5, None, 0.7], [0.6, 0.9, None]) is None  # one complete pair only
    assert paired_bootstrap_ci(before, before, seed=1) == (0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([0.1], [0.1, 0.2])
