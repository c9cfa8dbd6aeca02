"""Segmentation and presence (image-level) metrics, per image and aggregated.

Conventions
-----------
* Masks are integer label maps ``(H, W)`` (any integer dtype, or bool for binary) with
  background 0 and classes ``1..K-1``. ``K`` (``num_classes``) includes background, so a
  binary task has ``K = 2``. Float masks are rejected: threshold or argmax first.
* Confusion matrices follow scikit-learn: rows are ground truth, columns prediction,
  ``C[g, p]`` = number of pixels with ground truth ``g`` predicted as ``p``.
* Undefined ratios (0/0) are ``NaN``, never silently 0 or 1, except where the empty-mask
  policy below says otherwise. Aggregates skip NaN and report how many images counted.

Empty-mask policy (``EmptyPolicy``)
-----------------------------------
When, for one class, both the prediction and the ground truth are empty, overlap is 0/0.

* ``"kaggle"`` (default): the image is a perfect answer for that class: Dice = IoU =
  precision = recall = 1 and HD95 = ASSD = 0. This is the rule of the Kaggle "Ultrasound
  Nerve Segmentation" competition (mean Dice over images, empty-vs-empty scores 1).
* ``"exclude"``: the image says nothing about overlap for that class: Dice, IoU, precision,
  recall, HD95 and ASSD are NaN and the image is left out of those means.

In both policies specificity and pixel error stay defined (they count background pixels).
Cases where exactly one side is empty are not affected by the policy: Dice = IoU = 0,
HD95 = ASSD = NaN (no surface to measure to), recall = NaN when the ground truth is empty,
precision = NaN when the prediction is empty.

Example:
    >>> import numpy as np
    >>> gt = np.zeros((8, 8), np.uint8); gt[2:6, 2:6] = 1
    >>> pred = np.zeros((8, 8), np.uint8); pred[2:6, 2:4] = 1
    >>> round(dice(pred, gt), 4), round(iou(pred, gt), 4)
    (0.6667, 0.5)
    >>> image_metrics(pred, gt, surface=False)[1].recall
    0.5
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, NamedTuple, Sequence, get_args

import numpy as np
import numpy.typing as npt

from engine.errors import ConfigError, MaskError, unknown_name

if TYPE_CHECKING:  # pandas is imported lazily: only the accumulator tables need it
    import pandas as pd

__all__ = [
    "EmptyPolicy",
    "EMPTY_POLICIES",
    "EMPTY_POLICY_RULES",
    "ClassMetrics",
    "SurfaceDistances",
    "RandScores",
    "confusion_matrix_labels",
    "image_metrics",
    "dice",
    "dice_from_counts",
    "iou",
    "surface_distances",
    "hd95",
    "assd",
    "rand_scores",
    "rand_error",
    "rand_error_best_threshold",
    "warping_error",
    "presence_metrics",
    "roc_curve_points",
    "pr_curve_points",
    "MetricAccumulator",
]

EmptyPolicy = Literal["kaggle", "exclude"]
EMPTY_POLICIES: tuple[str, ...] = get_args(EmptyPolicy)
EMPTY_POLICY_RULES: dict[str, str] = {
    "kaggle": ("both prediction and ground truth empty for a class -> Dice = IoU = precision = "
               "recall = 1, HD95 = ASSD = 0 (Kaggle Ultrasound Nerve Segmentation rule); "
               "the image is counted"),
    "exclude": ("both prediction and ground truth empty for a class -> Dice, IoU, precision, "
                "recall, HD95, ASSD are NaN and the image is left out of those means"),
}

#: 4-connectivity (cross) structuring element: used for surfaces and connected components.
#: 4-connectivity (scipy's generate_binary_structure(2, 1)); scipy itself loads lazily so light callers
#: such as the conflict scan's scoring don't import it
_CROSS = np.array([[False, True, False], [True, True, True], [False, True, False]])

#: Per-class metric names, in the order of the columns of :meth:`MetricAccumulator.per_image`.
_METRIC_NAMES: tuple[str, ...] = (
    "dice", "iou", "precision", "recall", "specificity", "pixel_error", "hd95", "assd")
_COUNT_NAMES: tuple[str, ...] = ("tp", "fp", "fn", "tn")


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------

def _check_policy(policy: str) -> str:
    if policy not in EMPTY_POLICIES:
        raise unknown_name("empty policy", str(policy), EMPTY_POLICIES)
    return policy


def _as_mask(a: npt.ArrayLike, name: str) -> np.ndarray:
    """Validate one 2-D integer/bool mask; bool becomes uint8."""
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise MaskError(f"{name} must be a 2-D (H, W) label mask, got shape {arr.shape}",
                        hint="squeeze channel axes, or take argmax over the class axis of (K, H, W) "
                             "scores before computing metrics")
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise MaskError(f"{name} has dtype {arr.dtype}; masks must hold integer class ids",
                        hint="threshold probabilities (p > 0.5) or take argmax over classes, "
                             "then cast to uint8")
    return arr


def _check_pair(pred: npt.ArrayLike, gt: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = _as_mask(pred, "pred")
    g = _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise MaskError(f"prediction shape {p.shape} does not match ground-truth shape {g.shape}",
                        hint="resize the prediction to the ground-truth size with nearest-neighbour "
                             "interpolation (or predict at full resolution) before scoring")
    return p, g


def _check_labels(arr: np.ndarray, name: str, num_classes: int) -> None:
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise MaskError(f"{name} contains label {bad}, outside 0..{num_classes - 1} "
                        f"(num_classes={num_classes})",
                        hint="pass num_classes covering every label, or remap the mask to "
                             "consecutive class ids 0..K-1")


def _infer_num_classes(p: np.ndarray, g: np.ndarray) -> int:
    hi = max(int(p.max()) if p.size else 0, int(g.max()) if g.size else 0)
    return max(2, hi + 1)


def _check_binary(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 1):
        raise MaskError(f"{name} is not binary (values {int(arr.min())}..{int(arr.max())})",
                        hint="pass a bool or 0/1 mask, e.g. (mask == class_id); for multi-class "
                             "masks use image_metrics")
    return arr.astype(bool, copy=False)


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, float] | None:
    if spacing is None:
        return None
    try:
        sy, sx = (float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ConfigError(f"spacing must be a pair (sy, sx) of numbers, got {spacing!r}",
                          hint="pass e.g. spacing=(0.14, 0.14) (DICOM PixelSpacing is row, column)"
                          ) from None
    if not (math.isfinite(sy) and math.isfinite(sx) and sy > 0 and sx > 0):
        raise ConfigError(f"spacing must be positive and finite, got {spacing!r}",
                          hint="use the physical pixel size, e.g. (0.14, 0.14) mm, or None for pixels")
    return sy, sx


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num/den with NaN where den == 0 (no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: npt.ArrayLike) -> float:
    """Mean over the finite-or-inf (non-NaN) values; NaN when there are none (no warning)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# --------------------------------------------------------------------------------------
# Confusion matrix and per-class overlap
# --------------------------------------------------------------------------------------

def confusion_matrix_labels(pred: npt.ArrayLike, gt: npt.ArrayLike, num_classes: int) -> np.ndarray:
    """Pixel confusion matrix of two label masks.

    Args:
        pred, gt: integer (or bool) masks of the same shape ``(H, W)``, values in ``0..K-1``.
        num_classes: K, including background.

    Returns:
        ``(K, K)`` int64 array ``C`` with ``C[g, p]`` = pixels of ground-truth class ``g``
        predicted as ``p`` (rows = ground truth, as in scikit-learn). Computed with one
        ``np.bincount`` over ``gt * K + pred``.

    Example:
        >>> import numpy as np
        >>> confusion_matrix_labels(np.array([[0, 1]]), np.array([[1, 1]]), 2).tolist()
        [[0, 0], [1, 1]]
    """
    p, g = _check_pair(pred, gt)
    k = int(num_classes)
    if k < 2:
        raise ConfigError(f"num_classes must be >= 2 (background + at least one class), got {k}",
                          hint="binary tasks use num_classes=2")
    _check_labels(p, "pred", k)
    _check_labels(g, "gt", k)
    return _confusion(p, g, k)


def _confusion(p: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    """Labels already validated to lie in 0..k-1."""
    if k == 2:  # binary fast path: three popcounts instead of a bincount
        pb = p.astype(bool, copy=False)
        gb = g.astype(bool, copy=False)
        tp = np.count_nonzero(pb & gb)
        ps, gs = np.count_nonzero(pb), np.count_nonzero(gb)
        return np.array([[p.size - ps - gs + tp, ps - tp], [gs - tp, tp]], dtype=np.int64)
    # Smallest dtype that holds g*k+p keeps the temporary small (K*K <= 256 -> uint8).
    dt = np.uint8 if k * k <= 256 else (np.uint16 if k * k <= 65536 else np.int64)
    idx: np.ndarray = g.astype(dt)
    idx *= dt(k)
    idx += p.astype(dt, copy=False)
    return np.bincount(idx.ravel(), minlength=k * k).astype(np.int64).reshape(k, k)


def dice_from_counts(inter: npt.ArrayLike, pred_area: npt.ArrayLike, gt_area: npt.ArrayLike,
                     empty: float = 1.0) -> Any:
    """The engine's one Dice formula, ``2|P∩G| / (|P| + |G|)``, from pixel counts.

    Every Dice in the engine (per image and class here, model-vs-model in
    :mod:`engine.compare`, near-duplicate masks in :mod:`engine.dedup.scoring`, threshold sweeps
    in :mod:`engine.postprocess`) goes through this function.

    Args:
        inter: ``|P∩G|`` — scalar or array of any shape.
        pred_area, gt_area: ``|P|`` and ``|G|``, broadcastable with ``inter``.
        empty: the value where both are empty (1.0 = Kaggle rule, NaN = excluded, 0.0 = counted as miss).

    Returns:
        float64 array of the broadcast shape (a Python float when every input is a scalar).

    Example:
        >>> dice_from_counts(3, 4, 4), float(dice_from_counts(0, 0, 0, empty=float("nan")) != 0)
        (0.75, 1.0)
    """
    i = np.asarray(inter, dtype=np.float64)
    denom = np.asarray(pred_area, dtype=np.float64) + np.asarray(gt_area, dtype=np.float64)
    out = np.full(np.broadcast(i, denom).shape, float(empty), dtype=np.float64)
    np.divide(2.0 * i, denom, out=out, where=denom != 0)
    return float(out) if out.ndim == 0 else out


def _overlap_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray,
                         policy: str) -> dict[str, np.ndarray]:
    """Vectorised Dice/IoU/precision/recall/specificity/pixel error from per-class counts."""
    tp, fp, fn, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    both_empty = (tp + fn == 0) & (tp + fp == 0)
    out = {
        "dice": dice_from_counts(tp, tp + fp, tp + fn, np.nan),
        "iou": _safe_div(tp, tp + fp + fn),
        "precision": _safe_div(tp, tp + fp),
        "recall": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "pixel_error": _safe_div(fp + fn, n),
    }
    fill = 1.0 if policy == "kaggle" else np.nan
    for key in ("dice", "iou", "precision", "recall"):
        out[key] = np.where(both_empty, fill, out[key])
    return out


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one image.

    Areas and counts are pixels; ``hd95``/``assd`` are in pixels, or in the units of
    ``spacing`` when given, and NaN when surface distances were not requested.
    """

    class_id: int
    dice: float
    iou: float
    precision: float
    recall: float
    specificity: float
    pixel_error: float
    hd95: float
    assd: float
    gt_area: int
    pred_area: int
    gt_empty: bool
    pred_empty: bool
    tp: int
    fp: int
    fn: int
    tn: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (floats may be NaN)."""
        return asdict(self)


def image_metrics(pred: npt.ArrayLike, gt: npt.ArrayLike, *, num_classes: int | None = None,
                  empty_policy: EmptyPolicy = "kaggle", spacing: Sequence[float] | None = None,
                  surface: bool = True) -> dict[int, ClassMetrics]:
    """Per-class metrics of one image for foreground classes ``1..K-1``.

    Args:
        pred, gt: integer masks ``(H, W)`` (bool allowed for binary), labels ``0..K-1``.
        num_classes: K including background; None infers ``max(label) + 1`` (at least 2).
        empty_policy: how a class empty in both masks is scored (see module docstring).
        spacing: ``(sy, sx)`` physical pixel size (e.g. DICOM PixelSpacing in mm) for HD95/ASSD.
        surface: compute HD95 and ASSD (two distance transforms per class); False → NaN.

    Returns:
        ``{class_id: ClassMetrics}`` for every foreground class.

    Raises:
        MaskError: shapes differ, masks are not 2-D integer, or labels are out of range.

    Example:
        >>> import numpy as np
        >>> gt = np.zeros((6, 6), np.uint8); gt[1:4, 1:4] = 1; gt[4:, 4:] = 2
        >>> m = image_metrics(gt, gt, num_classes=3)
        >>> m[1].dice, m[2].iou, m[2].hd95
        (1.0, 1.0, 0.0)
    """
    policy = _check_policy(empty_policy)
    p, g = _check_pair(pred, gt)
    k = _infer_num_classes(p, g) if num_classes is None else int(num_classes)
    if k < 2:
        raise ConfigError(f"num_classes must be >= 2, got {k}", hint="binary tasks use num_classes=2")
    _check_labels(p, "pred", k)
    _check_labels(g, "gt", k)
    sp = _check_spacing(spacing)
    return _image_metrics_from(p, g, k, policy, sp, surface)[0]


def _image_metrics_from(p: np.ndarray, g: np.ndarray, k: int, policy: str,
                        spacing: tuple[float, float] | None, surface: bool
                        ) -> tuple[dict[int, ClassMetrics], np.ndarray]:
    conf = _confusion(p, g, k)
    diag = np.diag(conf)
    tp = diag[1:]
    fn = conf.sum(axis=1)[1:] - tp
    fp = conf.sum(axis=0)[1:] - tp
    tn = conf.sum() - tp - fp - fn
    ov = _overlap_from_counts(tp, fp, fn, tn, policy)
    result: dict[int, ClassMetrics] = {}
    for i, c in enumerate(range(1, k)):
        gt_area = int(tp[i] + fn[i])
        pred_area = int(tp[i] + fp[i])
        hd, ad = float("nan"), float("nan")
        if surface:
            if gt_area == 0 and pred_area == 0:
                hd = ad = 0.0 if policy == "kaggle" else float("nan")
            elif gt_area > 0 and pred_area > 0:
                sd = _surface_distances(p == c, g == c, spacing)
                hd, ad = sd.hd95, sd.assd
        result[c] = ClassMetrics(
            class_id=c,
            dice=float(ov["dice"][i]), iou=float(ov["iou"][i]),
            precision=float(ov["precision"][i]), recall=float(ov["recall"][i]),
            specificity=float(ov["specificity"][i]), pixel_error=float(ov["pixel_error"][i]),
            hd95=hd, assd=ad, gt_area=gt_area, pred_area=pred_area,
            gt_empty=gt_area == 0, pred_empty=pred_area == 0,
            tp=int(tp[i]), fp=int(fp[i]), fn=int(fn[i]), tn=int(tn[i]),
        )
    return result, conf


def _binary_counts(pred: npt.ArrayLike, gt: npt.ArrayLike) -> tuple[int, int, int]:
    p, g = _check_pair(pred, gt)
    pb, gb = _check_binary(p, "pred"), _check_binary(g, "gt")
    return int(np.count_nonzero(pb & gb)), int(np.count_nonzero(pb)), int(np.count_nonzero(gb))


def dice(pred: npt.ArrayLike, gt: npt.ArrayLike, empty_policy: EmptyPolicy = "kaggle") -> float:
    """Dice coefficient ``2|P∩G| / (|P| + |G|)`` of two binary masks.

    Args:
        pred, gt: bool or 0/1 integer masks ``(H, W)`` of the same shape.
        empty_policy: both empty → 1.0 (``"kaggle"``) or NaN (``"exclude"``).

    Example:
        >>> import numpy as np
        >>> dice(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
        1.0
    """
    policy = _check_policy(empty_policy)
    inter, ps, gs = _binary_counts(pred, gt)
    return dice_from_counts(inter, ps, gs, 1.0 if policy == "kaggle" else float("nan"))


def iou(pred: npt.ArrayLike, gt: npt.ArrayLike, empty_policy: EmptyPolicy = "kaggle") -> float:
    """Intersection over union (Jaccard) ``|P∩G| / |P∪G|`` of two binary masks.

    Same inputs and empty rule as :func:`dice`; ``dice = 2·iou / (1 + iou)``.

    Example:
        >>> import numpy as np
        >>> a = np.array([[1, 1, 0, 0]]); b = np.array([[0, 1, 1, 0]])
        >>> round(iou(a, b), 4)
        0.3333
    """
    policy = _check_policy(empty_policy)
    inter, ps, gs = _binary_counts(pred, gt)
    union = ps + gs - inter
    if union == 0:
        return 1.0 if policy == "kaggle" else float("nan")
    return inter / union


# --------------------------------------------------------------------------------------
# Surface distances
# --------------------------------------------------------------------------------------

class SurfaceDistances(NamedTuple):
    """Symmetric surface distances between two binary masks (pixels or spacing units).

    Attributes:
        hd: Hausdorff distance, the largest surface-to-surface distance.
        hd95: max of the two directed 95th percentiles of surface distances.
        assd: average symmetric surface distance, pooled over both surfaces.
    """

    hd: float
    hd95: float
    assd: float


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels: foreground pixels with a 4-neighbour outside the mask or the image."""
    from scipy import ndimage

    eroded = ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)
    return mask & ~eroded


def _surface_distances(pm: np.ndarray, gm: np.ndarray,
                       spacing: tuple[float, float] | None) -> SurfaceDistances:
    """Both masks bool and non-empty. Works on the union's bounding box (+1 px) for speed."""
    union = pm | gm
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, union.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, union.shape[1])
    # The margin row/column is background, or the true image border (where binary_erosion's
    # border_value=0 gives the same answer as on the full image), so cropping is exact.
    ps = _surface(pm[r0:r1, c0:c1])
    gs = _surface(gm[r0:r1, c0:c1])
    from scipy import ndimage

    d_to_g = ndimage.distance_transform_edt(~gs, sampling=spacing)
    d_to_p = ndimage.distance_transform_edt(~ps, sampling=spacing)
    d_pg = d_to_g[ps]
    d_gp = d_to_p[gs]
    hd = float(max(d_pg.max(), d_gp.max()))
    h95 = float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
    ad = float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))
    return SurfaceDistances(hd, h95, ad)


def surface_distances(pred: npt.ArrayLike, gt: npt.ArrayLike, *,
                      spacing: Sequence[float] | None = None,
                      empty_policy: EmptyPolicy = "kaggle") -> SurfaceDistances:
    """Hausdorff, HD95 and ASSD between two binary masks.

    Definitions (symmetric, as in MONAI ``compute_hausdorff_distance(directed=False)`` and
    DeepMind's ``surface-distance``; ASSD as in Heimann et al., IEEE TMI 28(8), 2009):

    * surface ``S(M)`` = pixels of M with at least one 4-neighbour outside M; pixels on the
      image border count as surface (the border is where the visible object ends);
    * ``d(x, S)`` = Euclidean distance (``scipy.ndimage.distance_transform_edt`` with
      ``sampling=spacing``) from pixel centre x to the nearest pixel centre of S;
    * ``hd   = max(max_a d(a, S(G)), max_b d(b, S(P)))`` over ``a ∈ S(P)``, ``b ∈ S(G)``;
    * ``hd95 = max(P95_a d(a, S(G)), P95_b d(b, S(P)))`` (numpy linear percentile; MedPy
      instead takes the 95th percentile of the pooled distances);
    * ``assd = (Σ_a d(a, S(G)) + Σ_b d(b, S(P))) / (|S(P)| + |S(G)|)``.

    Empty masks: both empty → 0.0 for all three under ``"kaggle"`` (perfect agreement), NaN
    under ``"exclude"``; exactly one empty → NaN (there is no surface to measure to).

    Args:
        pred, gt: bool or 0/1 masks ``(H, W)``.
        spacing: ``(sy, sx)`` pixel size (row, column); None → pixel units.
        empty_policy: rule for two empty masks (see above).

    Example:
        >>> import numpy as np
        >>> a = np.zeros((20, 20), bool); a[5:10, 5:10] = True
        >>> b = np.roll(a, 3, axis=1)
        >>> surface_distances(a, b).hd
        3.0
    """
    policy = _check_policy(empty_policy)
    p, g = _check_pair(pred, gt)
    pb, gb = _check_binary(p, "pred"), _check_binary(g, "gt")
    sp = _check_spacing(spacing)
    p_any, g_any = bool(pb.any()), bool(gb.any())
    if not p_any and not g_any:
        v = 0.0 if policy == "kaggle" else float("nan")
        return SurfaceDistances(v, v, v)
    if not (p_any and g_any):
        nan = float("nan")
        return SurfaceDistances(nan, nan, nan)
    return _surface_distances(pb, gb, sp)


def hd95(pred: npt.ArrayLike, gt: npt.ArrayLike, *, spacing: Sequence[float] | None = None,
         empty_policy: EmptyPolicy = "kaggle") -> float:
    """95th-percentile symmetric Hausdorff distance; see :func:`surface_distances`."""
    return surface_distances(pred, gt, spacing=spacing, empty_policy=empty_policy).hd95


def assd(pred: npt.ArrayLike, gt: npt.ArrayLike, *, spacing: Sequence[float] | None = None,
         empty_policy: EmptyPolicy = "kaggle") -> float:
    """Average symmetric surface distance; see :func:`surface_distances`."""
    return surface_distances(pred, gt, spacing=spacing, empty_policy=empty_policy).assd


# --------------------------------------------------------------------------------------
# Rand error (ISBI 2012)
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandScores:
    """Foreground-restricted Rand scores (ISBI 2012 ``V_Rand``).

    Attributes:
        split: ``V_Rand_split = Σ p_ij² / Σ t_j²`` (1 = the proposal splits no true segment).
        merge: ``V_Rand_merge = Σ p_ij² / Σ s_i²`` (1 = the proposal merges no true segments).
        v_rand: harmonic mean of split and merge; NaN when the ground truth has no foreground.
    """

    split: float
    merge: float
    v_rand: float

    @property
    def rand_error(self) -> float:
        """``1 - v_rand``."""
        return 1.0 - self.v_rand


def _segments(mask: np.ndarray, instances: bool) -> np.ndarray:
    if instances:
        return mask
    from scipy import ndimage

    labels, _ = ndimage.label(mask != 0, structure=_CROSS)
    return labels


def rand_scores(pred: npt.ArrayLike, gt: npt.ArrayLike, *, instances: bool = False) -> RandScores:
    """Foreground-restricted Rand split/merge scores and ``V_Rand`` of the ISBI 2012 challenge.

    Implements the "Rand scoring" of Arganda-Carreras et al., "Crowdsourcing the creation of
    image segmentation algorithms for connectomics", Front. Neuroanat. 9:142 (2015), as coded
    in the challenge's evaluation script (Fiji Trainable Segmentation,
    ``RandError.foregroundRestrictedStatsN2`` / ``adaptedRandIndexStats3DN2``):

    1. Segments. With ``instances=False`` (binary cell-vs-membrane masks, any non-zero label is
       foreground) each mask is split into 4-connected components of its foreground
       (``scipy.ndimage.label``), as the script does; with ``instances=True`` the inputs are
       already instance maps (0 = background/boundary, other values = segment ids).
    2. Only pixels in the ground-truth foreground are scored (n of them); ground-truth
       background pixels are ignored wherever the proposal puts them.
    3. Contingency ``p_ij`` = fraction of those n pixels in true segment ``i`` and proposed
       segment ``j``; ``t_i = Σ_j p_ij`` (true sizes), ``s_j = Σ_i p_ij`` over ``j ≥ 1``.
       Ground-truth-foreground pixels that the proposal labels background (``j = 0``) are
       treated as singleton segments: each adds ``1/n²`` to ``Σ p_ij²`` and to ``Σ s_j²``.
    4. ``V_split = Σ p_ij² / Σ t_i²``, ``V_merge = Σ p_ij² / Σ s_j²``,
       ``V_Rand = 2·V_split·V_merge / (V_split + V_merge)``; Rand error = ``1 - V_Rand``.

    The challenge reports the *maximal* F-score over thresholds of a probability map; for
    that use :func:`rand_error_best_threshold`. Without ground-truth foreground the scores are
    NaN (undefined).

    Args:
        pred, gt: ``(H, W)`` integer or bool masks of the same shape.
        instances: treat inputs as pre-labelled instance maps instead of binary masks.

    Example:
        >>> import numpy as np
        >>> gt = np.array([[1, 1, 1, 1, 0]]); pred = np.array([[1, 1, 2, 2, 0]])
        >>> s = rand_scores(pred, gt, instances=True)
        >>> s.split, s.merge, round(s.rand_error, 4)
        (0.5, 1.0, 0.3333)
    """
    p, g = _check_pair(pred, gt)
    if (p.size and int(p.min()) < 0) or (g.size and int(g.min()) < 0):
        raise MaskError("Rand scoring needs non-negative labels (0 = background)",
                        hint="shift or relabel the instance map so background is 0")
    ps = _segments(p, instances).ravel()
    gs = _segments(g, instances).ravel()
    fg = gs != 0
    n = int(np.count_nonzero(fg))
    if n == 0:
        nan = float("nan")
        return RandScores(nan, nan, nan)
    gi = gs[fg].astype(np.int64)
    pj = ps[fg].astype(np.int64)
    # Sparse contingency table: unique (true, proposed) pairs and their counts.
    _, g_inv = np.unique(gi, return_inverse=True)
    p_vals, p_inv = np.unique(pj, return_inverse=True)
    n_p = p_vals.size
    pairs, counts = np.unique(g_inv.astype(np.int64) * n_p + p_inv, return_counts=True)
    pair_p = p_vals[pairs % n_p]
    counts = counts.astype(np.float64)
    on_bg = pair_p == 0
    n_singletons = float(counts[on_bg].sum())  # GT-foreground pixels labelled 0 by the proposal
    sum_p2 = float(np.sum((counts[~on_bg] / n) ** 2)) + n_singletons / n**2
    t = np.bincount(g_inv).astype(np.float64) / n
    sum_t2 = float(np.sum(t**2))
    s_counts = np.bincount(p_inv[pj != 0], minlength=n_p).astype(np.float64)
    sum_s2 = float(np.sum((s_counts / n) ** 2)) + n_singletons / n**2
    split = min(1.0, sum_p2 / sum_t2)  # ≤ 1 mathematically; clamp float rounding (1 + 2e-16)
    merge = min(1.0, sum_p2 / sum_s2)
    v_rand = 2.0 * split * merge / (split + merge)
    return RandScores(float(split), float(merge), float(v_rand))


def rand_error(pred: npt.ArrayLike, gt: npt.ArrayLike, *, instances: bool = False) -> float:
    """ISBI 2012 Rand error ``1 - V_Rand`` for one pair of masks; see :func:`rand_scores`.

    Example:
        >>> import numpy as np
        >>> m = np.array([[1, 1, 0, 1]])
        >>> rand_error(m, m)
        0.0
    """
    return rand_scores(pred, gt, instances=instances).rand_error


_SIMPLE_LUT: np.ndarray | None = None


def _simple_lut() -> np.ndarray:
    """bool[256]: is a pixel with this 8-neighbourhood (bit i = neighbour i in row-major order, centre
    skipped) *simple* — flipping it changes neither the 8-connected foreground nor the 4-connected
    background topology (one 8-component of foreground neighbours 8-adjacent to it and one
    4-component of background neighbours 4-adjacent to it)."""
    global _SIMPLE_LUT
    if _SIMPLE_LUT is None:
        from scipy import ndimage

        lut = np.zeros(256, bool)
        pos = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
        four = {(0, 1), (1, 0), (1, 2), (2, 1)}
        for code in range(256):
            win = np.zeros((3, 3), bool)
            for bit, (y, x) in enumerate(pos):
                win[y, x] = bool(code >> bit & 1)
            fg_lab, _ = ndimage.label(win, structure=np.ones((3, 3), int))
            n_fg = len({fg_lab[y, x] for (y, x) in pos if win[y, x]})
            bg = ~win
            bg[1, 1] = False
            bg_lab, _ = ndimage.label(bg)
            n_bg = len({bg_lab[y, x] for (y, x) in four if bg[y, x]})
            lut[code] = n_fg == 1 and n_bg == 1
        _SIMPLE_LUT = lut
    return _SIMPLE_LUT


def warping_error(pred: npt.ArrayLike, gt: npt.ArrayLike, max_passes: int = 200) -> float:
    """The U-Net paper's (ISBI 2012, Jain et al. 2010) warping error for binary masks.

    ``pred`` is warped towards ``gt`` by flipping mismatching *simple* pixels (flips that change no
    topology: no object split, merged, created, deleted or hole made) until none is left; the
    error is the fraction of pixels still mismatching — only topological disagreements remain
    (splits, merges, missing or extra objects and holes), boundary placement costs nothing.
    Flips run in 9 interleaved phases (pixels 3 apart) so no two flipped pixels are neighbours.

    Args:
        pred, gt: bool/0-1 ``(H,W)`` masks.

    Returns:
        float in [0, 1]; 0 when the masks are topologically equivalent.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((9, 9), bool); a[2:7, 2:7] = True
        >>> b = np.zeros((9, 9), bool); b[3:6, 3:6] = True
        >>> warping_error(a, b)  # same topology: warps without error
        0.0
        >>> c = a.copy(); c[4, 4] = False   # a hole
        >>> warping_error(c, b) > 0
        True
    """
    p = np.asarray(pred).astype(bool).copy()
    g = np.asarray(gt).astype(bool)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(f"warping_error needs two masks of the same (H,W) shape, got {p.shape} and {g.shape}")
    lut = _simple_lut()
    h, w = p.shape
    for _ in range(max_passes):
        changed = False
        for oy in range(3):
            for ox in range(3):
                pad = np.pad(p, 1)
                code = np.zeros((h, w), np.int32)
                bit = 0
                for dy in range(3):
                    for dx in range(3):
                        if dy == 1 and dx == 1:
                            continue
                        code |= pad[dy:dy + h, dx:dx + w].astype(np.int32) << bit
                        bit += 1
                cand = (p != g) & lut[code]
                phase = np.zeros_like(cand)
                phase[oy::3, ox::3] = True
                cand &= phase
                if cand.any():
                    p[cand] = ~p[cand]
                    changed = True
        if not changed:
            break
    return float(np.count_nonzero(p != g)) / float(p.size)


def rand_error_best_threshold(prob: npt.ArrayLike, gt: npt.ArrayLike,
                              thresholds: Sequence[float] | None = None) -> tuple[float, float]:
    """Challenge-style Rand error: ``1 -`` the maximal ``V_Rand`` over binarisation thresholds.

    Args:
        prob: float ``(H, W)`` foreground probability map in [0, 1].
        gt: ``(H, W)`` binary ground truth (non-zero = foreground).
        thresholds: cut-offs; a pixel is foreground when ``prob > t``. Default 0.0, 0.1, …, 0.9,
            the sweep of the challenge script's usage example (0 to 1 in steps of 0.1; t = 1
            would leave no foreground).

    Returns:
        ``(rand_error, best_threshold)``; ``(nan, nan)`` when the ground truth is empty.

    Example:
        >>> import numpy as np
        >>> gt = np.array([[1, 1, 0, 1]]); prob = np.array([[0.9, 0.8, 0.2, 0.7]])
        >>> rand_error_best_threshold(prob, gt)[0]
        0.0
    """
    pr = np.asarray(prob, dtype=np.float64)
    g = _as_mask(gt, "gt")
    if pr.shape != g.shape:
        raise MaskError(f"probability map shape {pr.shape} does not match ground-truth shape {g.shape}",
                        hint="resize the probability map to the ground-truth size first")
    ths = np.round(np.arange(0.0, 1.0, 0.1), 10) if thresholds is None else np.asarray(thresholds, float)
    best, best_t = float("nan"), float("nan")
    for t in ths:
        v = rand_scores((pr > t).astype(np.uint8), g).v_rand
        if not math.isnan(v) and (math.isnan(best) or v > best):
            best, best_t = v, float(t)
    return (1.0 - best, best_t) if not math.isnan(best) else (float("nan"), float("nan"))


# --------------------------------------------------------------------------------------
# Presence (image-level) metrics
# --------------------------------------------------------------------------------------

def _check_presence(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    yt = np.asarray(y_true)
    ys = np.asarray(y_score, dtype=np.float64)
    if yt.ndim != 1 or ys.ndim != 1 or yt.shape != ys.shape:
        raise ConfigError(f"y_true and y_score must be 1-D and the same length, got shapes "
                          f"{yt.shape} and {ys.shape}",
                          hint="pass one label (0/1) and one score per image")
    if yt.size == 0:
        raise ConfigError("no images to score", hint="pass at least one (label, score) pair")
    if yt.dtype == bool:
        yt = yt.astype(np.int64)
    if not np.all(np.isin(yt, (0, 1))):
        raise ConfigError(f"y_true must hold only 0/1 (or bool), got values {np.unique(yt)[:5].tolist()}",
                          hint="use 1 = mask present (positive), 0 = empty")
    if not np.all(np.isfinite(ys)):
        raise ConfigError("y_score contains NaN or infinite values",
                          hint="check the classifier output; scores must be finite probabilities")
    return yt.astype(np.int64), ys


def roc_curve_points(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> dict[str, list[float]]:
    """ROC curve points for plotting: ``{"fpr", "tpr", "thresholds"}`` lists.

    Empty lists when ``y_true`` has a single class (the curve is undefined). The first
    threshold is ``inf`` (scikit-learn's "predict nothing positive" point).

    Example:
        >>> roc_curve_points([0, 1], [0.2, 0.9])["tpr"]
        [0.0, 1.0, 1.0]
    """
    from sklearn.metrics import roc_curve

    yt, ys = _check_presence(y_true, y_score)
    if np.unique(yt).size < 2:
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, th = roc_curve(yt, ys)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": th.tolist()}


def pr_curve_points(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> dict[str, list[float]]:
    """Precision–recall curve points: ``{"precision", "recall", "thresholds"}`` lists.

    Empty lists when ``y_true`` has no positive (recall is undefined). As in scikit-learn,
    precision/recall have one more entry than thresholds (the final (1, 0) point).

    Example:
        >>> pr_curve_points([0, 1], [0.2, 0.9])["precision"]
        [0.5, 1.0, 1.0]
    """
    from sklearn.metrics import precision_recall_curve

    yt, ys = _check_presence(y_true, y_score)
    if not yt.any():
        return {"precision": [], "recall": [], "thresholds": []}
    prec, rec, th = precision_recall_curve(yt, ys)
    return {"precision": prec.tolist(), "recall": rec.tolist(), "thresholds": th.tolist()}


def presence_metrics(y_true: npt.ArrayLike, y_score: npt.ArrayLike, threshold: float = 0.5, *,
                     curves: bool = True) -> dict[str, Any]:
    """Image-level "is there a mask?" metrics of a classifier (or of segmentation areas > 0).

    An image is called positive when ``y_score >= threshold``.

    Returns a JSON-ready dict:

    * ``n``, ``n_positive``, ``n_negative``, ``threshold``, ``tp``, ``fp``, ``tn``, ``fn``;
    * ``confusion_matrix``: ``[[tn, fp], [fn, tp]]`` (rows = truth, as scikit-learn);
    * ``sensitivity`` = tp/(tp+fn), ``specificity`` = tn/(tn+fp), ``ppv`` = tp/(tp+fp),
      ``npv`` = tn/(tn+fn), ``accuracy``, ``f1``: NaN when the denominator is 0, with a line
      in ``notes`` saying why;
    * ``roc_auc`` (scikit-learn ``roc_auc_score``) and ``average_precision``
      (``average_precision_score``): NaN when undefined, with ``auc_reason`` explaining
      (``None`` when defined). ROC AUC needs both classes; AP needs at least one positive;
    * ``roc_curve``/``pr_curve`` point lists (see :func:`roc_curve_points`) when ``curves``.

    Args:
        y_true: ``(N,)`` 0/1 or bool, 1 = mask present.
        y_score: ``(N,)`` float probability (or any monotone score) of presence.
        threshold: decision cut-off for the thresholded metrics.
        curves: include the plotting point lists.

    Example:
        >>> m = presence_metrics([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6])
        >>> m["sensitivity"], m["specificity"], m["confusion_matrix"]
        (0.5, 0.5, [[1, 1], [1, 1]])
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    yt, ys = _check_presence(y_true, y_score)
    thr = float(threshold)
    yp = (ys >= thr).astype(np.int64)
    tp = int(np.sum((yp == 1) & (yt == 1)))
    fp = int(np.sum((yp == 1) & (yt == 0)))
    tn = int(np.sum((yp == 0) & (yt == 0)))
    fn = int(np.sum((yp == 0) & (yt == 1)))
    n_pos, n_neg = tp + fn, tn + fp
    notes: list[str] = []

    def ratio(num: int, den: int, name: str, why: str) -> float:
        if den == 0:
            notes.append(f"{name} is NaN: {why}")
            return float("nan")
        return num / den

    out: dict[str, Any] = {
        "n": int(yt.size), "n_positive": n_pos, "n_negative": n_neg, "threshold": thr,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "sensitivity": ratio(tp, tp + fn, "sensitivity", "no positive images"),
        "specificity": ratio(tn, tn + fp, "specificity", "no negative images"),
        "ppv": ratio(tp, tp + fp, "ppv", "no image predicted positive"),
        "npv": ratio(tn, tn + fn, "npv", "no image predicted negative"),
        "accuracy": (tp + tn) / yt.size,
        "f1": ratio(2 * tp, 2 * tp + fp + fn, "f1", "no positives and none predicted"),
    }
    if n_pos and n_neg:
        out["roc_auc"] = float(roc_auc_score(yt, ys))
        out["auc_reason"] = None
    else:
        only = "positive" if n_pos else "negative"
        out["roc_auc"] = float("nan")
        out["auc_reason"] = (f"y_true has only {only} images ({yt.size} of {yt.size}); "
                             "ROC AUC needs both classes")
    if n_pos:
        out["average_precision"] = float(average_precision_score(yt, ys))
    else:
        out["average_precision"] = float("nan")
        notes.append("average_precision is NaN: no positive images")
    out["notes"] = notes
    if curves:
        out["roc_curve"] = roc_curve_points(yt, ys)
        out["pr_curve"] = pr_curve_points(yt, ys)
    return out


# --------------------------------------------------------------------------------------
# Aggregation over a dataset
# --------------------------------------------------------------------------------------

class MetricAccumulator:
    """Collects per-image, per-class metrics over a dataset and summarises them.

    Cheap per image: one ``bincount`` confusion matrix; surface distances and Rand error only
    when asked (``surface=True`` / ``rand=True``).

    Args:
        num_classes: K including background. None → ``len(label_map)``, or 2 (binary) without one.
        label_map: ``{class_id: name}`` including 0 = background; default ``class_<i>``.
        empty_policy: ``"kaggle"`` or ``"exclude"`` (see module docstring).
        spacing: default ``(sy, sx)`` pixel size for HD95/ASSD (per-image override in ``add``).
        surface: compute HD95/ASSD per image and class.
        rand: compute the ISBI Rand error per image (binary foreground = any non-zero class).

    Example:
        >>> import numpy as np
        >>> acc = MetricAccumulator(2, {0: "background", 1: "nerve"})
        >>> _ = acc.add("1_1", np.ones((4, 4), np.uint8), np.ones((4, 4), np.uint8))
        >>> _ = acc.add("1_2", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
        >>> acc.summary()["classes"]["nerve"]["dice"]
        1.0
    """

    def __init__(self, num_classes: int | None = None, label_map: Mapping[int, str] | None = None, *,
                 empty_policy: EmptyPolicy = "kaggle", spacing: Sequence[float] | None = None,
                 surface: bool = False, rand: bool = False):
        self.empty_policy: str = _check_policy(empty_policy)
        if label_map is not None:
            keys = sorted(int(k) for k in label_map)
            if keys != list(range(len(keys))) or len(keys) < 2:
                raise ConfigError(f"label map keys must be 0..K-1 with K >= 2, got {keys}",
                                  hint='use e.g. {0: "background", 1: "nerve"}')
            if num_classes is not None and int(num_classes) != len(keys):
                raise ConfigError(f"num_classes={num_classes} but the label map has {len(keys)} "
                                  "classes", hint="pass one of them, or make them agree")
            num_classes = len(keys)
        if num_classes is None:
            num_classes = 2
        if int(num_classes) < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}",
                              hint="binary tasks use num_classes=2")
        self.num_classes = int(num_classes)
        self.label_map: dict[int, str] = (
            {int(k): str(v) for k, v in label_map.items()} if label_map is not None
            else {i: ("background" if i == 0 else f"class_{i}") for i in range(self.num_classes)})
        names = [self.label_map[c] for c in range(1, self.num_classes)]
        if len(set(names)) != len(names):
            raise ConfigError(f"class names must be unique, got {names}", hint="rename the classes")
        self.spacing = _check_spacing(spacing)
        self.surface = bool(surface)
        self.rand = bool(rand)
        self._case_ids: list[str] = []
        self._seen: set[str] = set()
        # One float row per image: K-1 classes × (metrics + counts), then image-level columns.
        self._rows: list[np.ndarray] = []
        self._image_rows: list[tuple[float, float]] = []  # (pixel_error over all classes, rand_error)

    def __len__(self) -> int:
        return len(self._case_ids)

    def add(self, case_id: str, pred: npt.ArrayLike, gt: npt.ArrayLike, *,
            spacing: Sequence[float] | None = None) -> dict[int, ClassMetrics]:
        """Score one image and store the result.

        Args:
            case_id: unique id of the image (a repeat raises :class:`ConfigError`).
            pred, gt: integer masks ``(H, W)`` with labels ``0..K-1``.
            spacing: this image's ``(sy, sx)``, overriding the accumulator default.

        Returns:
            The image's ``{class_id: ClassMetrics}``.
        """
        cid = str(case_id)
        if cid in self._seen:
            raise ConfigError(f"case '{cid}' was already added",
                              hint="give every image a unique case_id; a repeat would be counted twice")
        p, g = _check_pair(pred, gt)
        k = self.num_classes
        try:
            _check_labels(p, "pred", k)
            _check_labels(g, "gt", k)
        except MaskError as exc:
            raise MaskError(f"case '{cid}': {exc.message}", hint=exc.hint) from None
        sp = _check_spacing(spacing) if spacing is not None else self.spacing
        per_class, conf = _image_metrics_from(p, g, k, self.empty_policy, sp, self.surface)
        row = np.array([[getattr(per_class[c], f) for f in (*_METRIC_NAMES, *_COUNT_NAMES)]
                        for c in range(1, k)], dtype=np.float64)
        total = conf.sum()
        pix_err = float(1.0 - np.trace(conf) / total) if total else float("nan")
        rerr = rand_error(p, g) if self.rand else float("nan")
        self._case_ids.append(cid)
        self._seen.add(cid)
        self._rows.append(row)
        self._image_rows.append((pix_err, rerr))
        return per_class

    def _stack(self) -> np.ndarray:
        width = len(_METRIC_NAMES) + len(_COUNT_NAMES)
        if not self._rows:
            return np.zeros((0, self.num_classes - 1, width))
        return np.stack(self._rows)

    def per_image(self) -> pd.DataFrame:
        """One row per image × foreground class.

        Columns: ``case_id, class_id, class_name, dice, iou, precision, recall, specificity,
        pixel_error, hd95, assd, gt_area, pred_area, gt_empty, pred_empty, tp, fp, fn, tn``.
        """
        import pandas as pd

        data = self._stack()
        n, kc = data.shape[0], self.num_classes - 1
        flat = data.reshape(n * kc, data.shape[2])
        cols: dict[str, Any] = {
            "case_id": np.repeat(np.array(self._case_ids, dtype=object), kc),
            "class_id": np.tile(np.arange(1, kc + 1), n),
            "class_name": np.tile(np.array([self.label_map[c] for c in range(1, kc + 1)], dtype=object), n),
        }
        for j, name in enumerate(_METRIC_NAMES):
            cols[name] = flat[:, j]
        counts = flat[:, len(_METRIC_NAMES):].astype(np.int64)
        tp, fp, fn, tn = counts.T
        cols["gt_area"] = tp + fn
        cols["pred_area"] = tp + fp
        cols["gt_empty"] = (tp + fn) == 0
        cols["pred_empty"] = (tp + fp) == 0
        cols.update(tp=tp, fp=fp, fn=fn, tn=tn)
        return pd.DataFrame(cols)

    def per_case(self) -> pd.DataFrame:
        """One row per image: ``case_id``, ``pixel_error`` (all classes), ``rand_error``
        (NaN unless ``rand=True``), ``dice_mean_fg`` (mean Dice over the foreground classes
        that are counted under the empty policy)."""
        import pandas as pd

        data = self._stack()
        dice_fg = np.array([_nanmean(r[:, 0]) for r in data], dtype=np.float64)
        img = np.array(self._image_rows, dtype=np.float64).reshape(-1, 2)
        return pd.DataFrame({"case_id": list(self._case_ids), "pixel_error": img[:, 0],
                             "rand_error": img[:, 1], "dice_mean_fg": dice_fg})

    def summary(self) -> dict[str, Any]:
        """Dataset summary (JSON-ready; NaN marks "nothing counted").

        Keys: ``empty_policy``, ``empty_policy_rule``, ``n_images``, ``surface``, ``spacing``,
        ``classes`` (per class name: ``class_id``, ``n_images``, ``n_counted`` (images whose
        Dice counts), ``n_counted_by_metric``, ``n_gt_empty``, ``n_gt_nonempty``,
        ``n_both_empty``, the mean of every metric over counted images, ``dice_gt_empty`` /
        ``dice_gt_nonempty`` with their ``n_counted_gt_empty`` / ``n_counted_gt_nonempty``,
        and ``dice_global`` / ``iou_global`` pooled over all pixels), ``mean_foreground`` (the
        unweighted mean of the class means over foreground classes, per metric),
        ``pixel_error`` (mean over images, all classes), ``rand_error`` (mean, NaN unless
        ``rand=True``).
        """
        data = self._stack()
        n_img = data.shape[0]
        classes: dict[str, Any] = {}
        for ci, c in enumerate(range(1, self.num_classes)):
            m = data[:, ci, :]
            tp, fp, fn = (m[:, len(_METRIC_NAMES) + j] for j in range(3))
            gt_empty = (tp + fn) == 0
            pred_empty = (tp + fp) == 0
            dice_col = m[:, 0]
            entry: dict[str, Any] = {
                "class_id": c,
                "n_images": int(n_img),
                "n_counted": int(np.count_nonzero(~np.isnan(dice_col))),
                "n_counted_by_metric": {name: int(np.count_nonzero(~np.isnan(m[:, j])))
                                        for j, name in enumerate(_METRIC_NAMES)},
                "n_gt_empty": int(gt_empty.sum()),
                "n_gt_nonempty": int((~gt_empty).sum()),
                "n_both_empty": int((gt_empty & pred_empty).sum()),
            }
            for j, name in enumerate(_METRIC_NAMES):
                entry[name] = _nanmean(m[:, j])
            entry["dice_gt_empty"] = _nanmean(dice_col[gt_empty])
            entry["dice_gt_nonempty"] = _nanmean(dice_col[~gt_empty])
            entry["n_counted_gt_empty"] = int(np.count_nonzero(~np.isnan(dice_col[gt_empty])))
            entry["n_counted_gt_nonempty"] = int(np.count_nonzero(~np.isnan(dice_col[~gt_empty])))
            stp, sfp, sfn = float(tp.sum()), float(fp.sum()), float(fn.sum())
            entry["dice_global"] = 2 * stp / (2 * stp + sfp + sfn) if (2 * stp + sfp + sfn) else float("nan")
            entry["iou_global"] = stp / (stp + sfp + sfn) if (stp + sfp + sfn) else float("nan")
            classes[self.label_map[c]] = entry
        mean_fg = {name: _nanmean([classes[k][name] for k in classes]) for name in _METRIC_NAMES}
        mean_fg["n_classes"] = len(classes)
        img = np.array(self._image_rows, dtype=np.float64).reshape(-1, 2)
        return {
            "empty_policy": self.empty_policy,
            "empty_policy_rule": EMPTY_POLICY_RULES[self.empty_policy],
            "n_images": int(n_img),
            "surface": self.surface,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "classes": classes,
            "mean_foreground": mean_fg,
            "pixel_error": _nanmean(img[:, 0]),
            "rand_error": _nanmean(img[:, 1]),
        }


def paired_bootstrap_ci(before: Sequence[float | None], after: Sequence[float | None], *, n_boot: int = 2000,
                        level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile confidence interval of ``mean(after) − mean(before)`` by resampling cases with
    replacement (a paired bootstrap: a case keeps both of its scores). Pairs with a missing score
    are left out.

    Args:
        before, after: per-case scores (e.g. Dice), aligned (length N).
        n_boot: bootstrap resamples. level: coverage (0.95 → the 2.5 % and 97.5 % percentiles).
        seed: the resampling seed (the interval is reproducible).

    Returns:
        ``(low, high)``, or None with fewer than 2 complete pairs.

    Example:
        >>> lo, hi = paired_bootstrap_ci([0.8, 0.7, 0.9, 0.6], [0.85, 0.72, 0.93, 0.61])
        >>> lo > 0
        True
    """
    if len(before) != len(after):
        raise ValueError(f"paired scores differ in length ({len(before)} vs {len(after)})")
    pairs = np.array([(float(a), float(b)) for a, b in zip(before, after)
                      if a is not None and b is not None and np.isfinite(a) and np.isfinite(b)], np.float64)
    if len(pairs) < 2:
        return None
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    diff = pairs[:, 1] - pairs[:, 0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(int(n_boot), len(diff)))
    means = diff[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)
