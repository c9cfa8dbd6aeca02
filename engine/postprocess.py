"""Turn softmax probabilities into a label mask, and tune how.

Pipeline of :func:`postprocess` for ``probs`` float32 ``(K, H, W)`` (K includes background):

1. **Presence gate** (optional): when a presence-head probability is given and is below
   ``presence_threshold``, the output is empty. Without a presence value the gate is a no-op
   (the model has no presence head).
2. **Pixel assignment.** Among the *foreground* classes whose probability reaches their threshold
   (``p_k >= threshold_k``), the most probable one wins the pixel; otherwise the pixel is background.
   With one threshold for all classes this is "argmax over foreground classes, kept when
   ``p >= threshold``"; for K = 2 it is simply ``p_1 >= threshold``. (Taking the argmax over all K
   classes first would make any threshold below 1/K meaningless, which is why background does not
   compete here: the threshold *is* the background decision.)
3. **Triplet gate** (optional, replaces step 2's thresholds): the SIIM-ACR Pneumothorax 1st-place
   scheme by Aleksandr Aleksandrov ("sneddy", github.com/sneddy/pneumothorax-segmentation,
   ``MaskBinarizers.TripletMaskBinarization``): with ``(top_score_threshold, min_contour_area,
   bottom_score_threshold)``, a class's mask is emptied when fewer than ``min_contour_area`` pixels
   have ``p > top_score_threshold``; otherwise its pixels with ``p > bottom_score_threshold`` are
   kept (strict ``>`` as in the original). It acts as a built-in "is there anything?" classifier.
   For K > 2 each foreground class is gated on its own, and gated classes do not compete for pixels.
4. **Connected components, per class** (8-connectivity by default): drop components smaller than
   ``min_area`` pixels, then keep the ``keep_largest`` largest (ties: the one met first in raster
   order), then fill holes (only background pixels are filled, so a class nested inside another
   survives).

All steps are vectorised (``scipy.ndimage.label`` + ``np.bincount`` + look-up tables); a
1024×1024 binary map takes a few milliseconds per step.

:func:`tune_postprocess` grid-searches thresholds × min_area × (presence or triplet gates) for the
best mean Dice. It labels the connected components once per (image, threshold, gate pattern) and
records each component's size and its overlap with the ground truth; every ``min_area`` /
``keep_largest`` value is then scored from those per-component numbers alone, without rendering a
mask. Only ``fill_holes=True`` needs the exact (slower) path, which renders every setting.

Example:
    >>> import numpy as np
    >>> p1 = np.zeros((8, 8), np.float32); p1[2:5, 2:5] = 0.9
    >>> probs = np.stack([1 - p1, p1])
    >>> int(postprocess(probs, PostProcessConfig(threshold=0.5, min_area=4)).sum())
    9
    >>> int(postprocess(probs, PostProcessConfig(min_area=10)).sum())
    0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from engine.config import JsonConfig
from engine.errors import ConfigError, MaskError, unknown_name
from engine.progress import ProgressFn, as_progress

__all__ = [
    "EMPTY_POLICIES",
    "PostProcessConfig",
    "TripletGate",
    "TuneGrid",
    "TuneResult",
    "evaluate_postprocess",
    "fill_holes",
    "fill_label_holes",
    "keep_k_largest",
    "postprocess",
    "remove_small_components",
    "tune_postprocess",
]

#: How an (image, class) pair whose prediction and ground truth are both empty is scored:
#: "kaggle" = 1 (Kaggle UNS / SIIM convention), "zero" = 0, "skip" = left out of the mean;
#: "exclude" is accepted as the metrics module's name for "skip".
EMPTY_POLICIES = ("kaggle", "zero", "skip", "exclude")


def _check_unit(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}",
                          hint=f"set {name} to a number between 0 and 1")


@dataclass(frozen=True)
class TripletGate(JsonConfig):
    """SIIM-ACR Pneumothorax 1st-place triplet (sneddy): gate a mask on its confident pixel count.

    A class's mask is emptied when ``count(p > top_score_threshold) < min_contour_area``;
    otherwise pixels with ``p > bottom_score_threshold`` are kept. Defaults are the winner's
    stage-2 submission values at 1024×1024 (AREA_THRESHOLD 800, TOP 0.75, BOTTOM 0.4).
    ``min_contour_area`` is in pixels at the resolution the probabilities are post-processed at.

    Example:
        >>> TripletGate(top_score_threshold=0.8, min_contour_area=100, bottom_score_threshold=0.3)
        TripletGate(top_score_threshold=0.8, min_contour_area=100, bottom_score_threshold=0.3)
    """

    top_score_threshold: float = 0.75
    min_contour_area: int = 800
    bottom_score_threshold: float = 0.4

    def __post_init__(self) -> None:
        _check_unit("top_score_threshold", self.top_score_threshold)
        _check_unit("bottom_score_threshold", self.bottom_score_threshold)
        if int(self.min_contour_area) != self.min_contour_area or self.min_contour_area < 0:
            raise ConfigError(f"min_contour_area must be a whole number >= 0, got {self.min_contour_area!r}",
                              hint="give a pixel count such as 800")


@dataclass(frozen=True)
class PostProcessConfig(JsonConfig):
    """How probabilities become a label mask (stored in the model card as the default).

    Attributes:
        threshold: a foreground class wins a pixel when it is the most probable foreground class
            and ``p >= threshold`` (K = 2: ``p_1 >= threshold``).
        class_thresholds: optional per-class overrides ``{class_id: threshold}`` (ids 1..K-1).
        min_area: remove connected components smaller than this many pixels (per class, at the
            output resolution); 0 keeps all.
        keep_largest: keep only the k largest components per class; 0 keeps all.
        fill_holes: fill background holes enclosed by a class.
        presence_threshold: empty the output when the presence-head probability is below this.
        triplet: optional :class:`TripletGate`; when set its bottom threshold replaces
            ``threshold``/``class_thresholds``.
        connectivity: 1 = 4-connected, 2 = 8-connected components.

    Example:
        >>> cfg = PostProcessConfig(threshold=0.4, min_area=50, class_thresholds={2: 0.6})
        >>> PostProcessConfig.from_json(cfg.to_json()) == cfg
        True
    """

    threshold: float = 0.5
    min_area: int = 0
    keep_largest: int = 0
    fill_holes: bool = False
    presence_threshold: float | None = None
    triplet: TripletGate | None = None
    class_thresholds: dict[int, float] | None = None
    connectivity: int = 2

    def __post_init__(self) -> None:
        _check_unit("threshold", self.threshold)
        for name in ("min_area", "keep_largest"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, got {value!r}",
                                  hint=f"set {name} to 0 to switch it off")
        if self.presence_threshold is not None:
            _check_unit("presence_threshold", self.presence_threshold)
        if self.connectivity not in (1, 2):
            raise ConfigError(f"connectivity must be 1 or 2, got {self.connectivity!r}",
                              hint="use 1 for 4-connected or 2 for 8-connected components")
        if self.class_thresholds is not None:
            for k, v in self.class_thresholds.items():
                if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                    raise ConfigError(f"class_thresholds key {k!r} is not a foreground class id",
                                      hint="use class ids 1..K-1 as keys")
                _check_unit(f"class_thresholds[{k}]", v)

    def thresholds_for(self, n_classes: int) -> np.ndarray:
        """Per-foreground-class thresholds, float64 ``(K-1,)`` (class 1 first)."""
        if self.class_thresholds:
            bad = sorted(k for k in self.class_thresholds if k >= n_classes)
            if bad:
                raise ConfigError(f"class_thresholds names class(es) {bad} but the model has "
                                  f"{n_classes} classes (0..{n_classes - 1})",
                                  hint="remove thresholds for classes the model does not predict")
        out = np.full(n_classes - 1, float(self.threshold))
        for k, v in (self.class_thresholds or {}).items():
            out[k - 1] = float(v)
        return out


# --------------------------------------------------------------------------- binary helpers

def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2):
        raise ConfigError(f"connectivity must be 1 or 2, got {connectivity!r}",
                          hint="use 1 for 4-connected or 2 for 8-connected components")
    return ndimage.generate_binary_structure(2, connectivity)


def _filter_components(binary: np.ndarray, min_area: int, keep: int, connectivity: int) -> np.ndarray:
    """One labelling pass: drop components < ``min_area`` px, then keep the ``keep`` largest."""
    b = np.asarray(binary, dtype=bool)
    if min_area <= 1 and keep <= 0:
        return b.copy()
    lab, n = ndimage.label(b, structure=_structure(connectivity))
    if n == 0:
        return b.copy()
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    lut = sizes >= min_area
    lut[0] = False
    if 0 < keep < n:
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(-sizes[1:], kind="stable")] = np.arange(n)
        lut[1:] &= rank < keep
    return lut[lab]


def remove_small_components(binary: np.ndarray, min_area: int, connectivity: int = 2) -> np.ndarray:
    """Remove connected components with fewer than ``min_area`` pixels.

    Args:
        binary: bool/int ``(H, W)``; nonzero = foreground.
        min_area: components of ``min_area`` pixels or more are kept (0 or 1 keeps all).
        connectivity: 1 = 4-connected, 2 = 8-connected.

    Returns:
        bool ``(H, W)``.

    Example:
        >>> b = np.zeros((5, 5), bool); b[0, 0] = True; b[2:5, 2:5] = True
        >>> int(remove_small_components(b, 2).sum())
        9
    """
    return _filter_components(binary, int(min_area), 0, connectivity)


def keep_k_largest(binary: np.ndarray, k: int, connectivity: int = 2) -> np.ndarray:
    """Keep the ``k`` largest connected components (k = 0 keeps all); ties go to raster order.

    Args:
        binary: bool/int ``(H, W)``.
        k: number of components to keep.
        connectivity: 1 = 4-connected, 2 = 8-connected.

    Returns:
        bool ``(H, W)``.

    Example:
        >>> b = np.zeros((5, 5), bool); b[0, 0] = True; b[2:5, 2:5] = True
        >>> int(keep_k_largest(b, 1).sum())
        9
    """
    return _filter_components(binary, 0, int(k), connectivity)


def fill_holes(binary: np.ndarray) -> np.ndarray:
    """Fill background regions not 4-connected to the image border.

    Same result as ``scipy.ndimage.binary_fill_holes`` with its default structure, computed with
    one labelling of the background (several times faster on large masks).

    Args:
        binary: bool/int ``(H, W)``.

    Returns:
        bool ``(H, W)``.

    Example:
        >>> ring = np.ones((5, 5), bool); ring[2, 2] = False
        >>> bool(fill_holes(ring)[2, 2])
        True
    """
    b = np.asarray(binary, dtype=bool)
    if b.ndim != 2:
        raise MaskError(f"fill_holes expects a 2-D mask, got shape {b.shape}",
                        hint="pass one (H, W) mask at a time")
    bg_lab, n = ndimage.label(~b, structure=_structure(1))
    if n == 0:
        return b.copy()
    border = np.concatenate([bg_lab[0], bg_lab[-1], bg_lab[:, 0], bg_lab[:, -1]])
    hole = np.ones(n + 1, dtype=bool)
    hole[border] = False
    hole[0] = False
    return b | hole[bg_lab]


# --------------------------------------------------------------------------- post-processing

def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 3 or p.shape[0] < 2:
        raise MaskError(f"probabilities must have shape (K, H, W) with K >= 2, got {p.shape}",
                        hint="pass softmax output including the background channel; binary tasks use K = 2")
    if p.dtype != np.float32:
        p = p.astype(np.float32)
    return p


def _assign(p: np.ndarray, thresholds: np.ndarray, strict: bool,
            excluded: frozenset[int] = frozenset()) -> np.ndarray:
    """Label map uint8 ``(H, W)``: most probable foreground class among those passing thresholds."""
    n_fg = p.shape[0] - 1
    if n_fg == 1:
        if 1 in excluded:
            return np.zeros(p.shape[1:], np.uint8)
        t = np.float32(thresholds[0])
        return (p[1] > t if strict else p[1] >= t).astype(np.uint8)
    fg = p[1:]
    thr = thresholds.astype(np.float32)[:, None, None]
    ok = fg > thr if strict else fg >= thr
    for k in excluded:
        ok[k - 1] = False
    masked = np.where(ok, fg, np.float32(-1.0))
    best = masked.argmax(axis=0)
    labels = (best + 1).astype(np.uint8)
    labels[np.take_along_axis(masked, best[None], axis=0)[0] < 0] = 0
    return labels


def _triplet_excluded(p: np.ndarray, top: float, area: int) -> frozenset[int]:
    counts = np.count_nonzero(p[1:] > np.float32(top), axis=(1, 2))
    return frozenset(int(k) + 1 for k in np.flatnonzero(counts < area))


def _clean(labels: np.ndarray, n_classes: int, cfg: PostProcessConfig) -> np.ndarray:
    """Per-class component filtering and hole filling on a label map (in place when possible)."""
    if cfg.min_area <= 1 and cfg.keep_largest <= 0 and not cfg.fill_holes:
        return labels
    if n_classes == 2:
        b = _filter_components(labels == 1, cfg.min_area, cfg.keep_largest, cfg.connectivity)
        if cfg.fill_holes:
            b = fill_holes(b)
        return b.astype(np.uint8)
    out = np.zeros_like(labels)
    for k in np.flatnonzero(np.bincount(labels.ravel(), minlength=n_classes)[1:]) + 1:
        out[_filter_components(labels == k, cfg.min_area, cfg.keep_largest, cfg.connectivity)] = k
    return fill_label_holes(out, out=out) if cfg.fill_holes else out


def fill_label_holes(labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Per class (in id order): background enclosed by that class's regions gets that class.

    Args:
        labels: uint8 ``(H, W)`` label map.
        out: where to write (may be ``labels`` itself); default a copy of ``labels``.

    Returns:
        the filled uint8 ``(H, W)`` map; background touching the border or another class stays.
    """
    out = np.array(labels, np.uint8, copy=True) if out is None else out
    for k in np.flatnonzero(np.bincount(out.ravel())[1:]) + 1:
        out[fill_holes(out == k) & (out == 0)] = k
    return out


def postprocess(probs: np.ndarray, cfg: PostProcessConfig | None = None,
                presence: float | None = None) -> np.ndarray:
    """Label mask from softmax probabilities.

    Args:
        probs: float32 ``(K, H, W)`` softmax probabilities, K >= 2 including background.
        cfg: post-processing options (default: threshold 0.5, nothing else).
        presence: optional probability from a presence (classification) head.

    Returns:
        uint8 ``(H, W)`` with values in 0..K-1.

    Example:
        >>> p1 = np.full((4, 4), 0.3, np.float32)
        >>> probs = np.stack([1 - p1, p1])
        >>> int(postprocess(probs, PostProcessConfig(threshold=0.25)).sum())
        16
        >>> int(postprocess(probs, PostProcessConfig(threshold=0.25, presence_threshold=0.5), presence=0.1).sum())
        0
    """
    cfg = cfg or PostProcessConfig()
    p = _check_probs(probs)
    n_classes = p.shape[0]
    if n_classes > 256:
        raise MaskError(f"{n_classes} classes do not fit a uint8 mask", hint="use at most 256 classes")
    if cfg.presence_threshold is not None and presence is not None and presence < cfg.presence_threshold:
        return np.zeros(p.shape[1:], np.uint8)
    if cfg.triplet is not None:
        tg = cfg.triplet
        excluded = _triplet_excluded(p, tg.top_score_threshold, tg.min_contour_area)
        labels = _assign(p, np.full(n_classes - 1, tg.bottom_score_threshold), True, excluded)
    else:
        labels = _assign(p, cfg.thresholds_for(n_classes), False)
    return _clean(labels, n_classes, cfg)


# --------------------------------------------------------------------------- scoring

def _check_policy(empty_policy: str) -> None:
    if empty_policy not in EMPTY_POLICIES:
        raise unknown_name("empty policy", empty_policy, EMPTY_POLICIES)


def _dice(inter: np.ndarray, psum: np.ndarray, gsum: np.ndarray, policy: str) -> np.ndarray:
    """Dice per entry; both-empty entries scored per ``policy`` (NaN for "skip")."""
    from engine.metrics import dice_from_counts

    empty_value = {"kaggle": 1.0, "zero": 0.0, "skip": np.nan, "exclude": np.nan}[policy]
    return np.asarray(dice_from_counts(inter, psum, gsum, empty_value))


def _aggregate(dice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``dice (..., N, C)`` → (score ``(...)``, per-class ``(..., C)``): mean over images, then classes.

    NaN entries ("skip" policy) are left out; a class with no scorable image is left out of the class
    mean; when nothing at all is scorable (no foreground anywhere, none predicted) the score is 1.
    """
    valid = ~np.isnan(dice)
    n_valid = valid.sum(axis=-2)
    per_class = np.where(n_valid > 0, np.where(valid, dice, 0).sum(axis=-2) / np.maximum(n_valid, 1), np.nan)
    has = ~np.isnan(per_class)
    n_cls = has.sum(axis=-1)
    score = np.where(n_cls > 0, np.where(has, per_class, 0).sum(axis=-1) / np.maximum(n_cls, 1), 1.0)
    return score, per_class


def _check_inputs(probs_list: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                  presences: Sequence[float | None] | None) -> int:
    if len(probs_list) == 0:
        raise ConfigError("no probability maps to score", hint="pass at least one (K, H, W) array")
    if len(gts) != len(probs_list):
        raise MaskError(f"{len(probs_list)} probability maps but {len(gts)} ground-truth masks",
                        hint="pass one ground-truth mask per probability map, in the same order")
    if presences is not None and len(presences) != len(probs_list):
        raise ConfigError(f"{len(probs_list)} probability maps but {len(presences)} presence values",
                          hint="pass one presence value (or None) per image")
    n_classes = None
    for i, (p, g) in enumerate(zip(probs_list, gts)):
        shape = np.shape(p)
        if len(shape) != 3 or shape[0] < 2:
            raise MaskError(f"probability map {i} has shape {shape}, expected (K, H, W) with K >= 2",
                            hint="pass softmax output including the background channel")
        if n_classes is None:
            n_classes = shape[0]
        elif shape[0] != n_classes:
            raise MaskError(f"probability map {i} has {shape[0]} classes, map 0 has {n_classes}",
                            hint="score maps from one model at a time")
        if np.shape(g) != shape[1:]:
            raise MaskError(f"ground truth {i} has shape {np.shape(g)}, probabilities are {shape[1:]}",
                            hint="restore probabilities to the mask's size before scoring")
        gmax = int(np.max(g)) if np.size(g) else 0
        if gmax >= n_classes or (np.size(g) and int(np.min(g)) < 0):
            raise MaskError(f"ground truth {i} has label {gmax} but the model predicts {n_classes} classes",
                            hint="check the label map matches the model's classes")
    assert n_classes is not None
    return n_classes


def _gt_sums(gt: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(gt).ravel().astype(np.int64), minlength=n_classes)[1:n_classes].astype(np.float64)


def _overlap(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred_sums = np.bincount(pred.ravel(), minlength=n_classes)[1:n_classes].astype(np.float64)
    same = pred.ravel()[pred.ravel() == np.asarray(gt).ravel()]
    inter = np.bincount(same, minlength=n_classes)[1:n_classes].astype(np.float64)
    return inter, pred_sums


def evaluate_postprocess(probs_list: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                         cfg: PostProcessConfig | None = None,
                         presences: Sequence[float | None] | None = None,
                         empty_policy: str = "kaggle") -> float:
    """Mean Dice over foreground classes of :func:`postprocess` outputs against ground truth.

    Dice is computed per (image, class); both-empty pairs follow ``empty_policy``; the score is the
    mean over images per class, then the mean over classes.

    Args:
        probs_list: N float32 ``(K, H, W)`` maps.
        gts: N integer ``(H, W)`` masks with values 0..K-1.
        cfg: post-processing to apply (default config when None).
        presences: optional N presence-head probabilities (None entries allowed).
        empty_policy: one of :data:`EMPTY_POLICIES`.

    Example:
        >>> p1 = np.zeros((4, 4), np.float32); p1[:2] = 0.9
        >>> gt = (p1 > 0.5).astype(np.uint8)
        >>> evaluate_postprocess([np.stack([1 - p1, p1])], [gt])
        1.0
    """
    _check_policy(empty_policy)
    n_classes = _check_inputs(probs_list, gts, presences)
    cfg = cfg or PostProcessConfig()
    n = len(probs_list)
    inter = np.zeros((n, n_classes - 1))
    psum = np.zeros_like(inter)
    gsum = np.zeros_like(inter)
    for i, (p, g) in enumerate(zip(probs_list, gts)):
        pred = postprocess(p, cfg, None if presences is None else presences[i])
        inter[i], psum[i] = _overlap(pred, g, n_classes)
        gsum[i] = _gt_sums(g, n_classes)
    score, _ = _aggregate(_dice(inter, psum, gsum, empty_policy))
    return float(score)


# --------------------------------------------------------------------------- tuning

@dataclass(frozen=True)
class TuneGrid(JsonConfig):
    """Search space for :func:`tune_postprocess`.

    Every combination of ``thresholds × keep_largest × min_areas`` is tried with no gate, with each
    presence threshold (only when presence values are given), and with each triplet
    ``(top, area, bottom = threshold)`` for ``top >= threshold``.

    Areas (``min_areas``, ``triplet_min_contour_areas``) are absolute pixel counts at the resolution
    of the probability maps, unless ``area_reference`` is set: then they are stated for an image of
    ``area_reference`` pixels (e.g. 1024*1024 for SIIM) and are rescaled to the median image area of
    the tuning set, ``round(a * median_area / area_reference)``, before searching; the table and the
    best config report the rescaled (absolute) values. Defaults: thresholds 0.30..0.70 in 0.05
    steps, min_area (0, 10, 50, 100, 250, 500, 1000) px, triplet tops (0.6, 0.75, 0.9) with areas
    (50, 200, 800) px; 9 × 7 × (1 + 9 triplets [+ 5 presence]) settings, scored from component
    statistics (fast) unless ``fill_holes`` is True (every setting rendered; slow on big sets).

    Example:
        >>> g = TuneGrid(thresholds=(0.4, 0.5), min_areas=(0, 100), area_reference=1024 * 1024)
        >>> g.scaled_areas((0, 100), 512 * 512)
        (0, 25)
    """

    thresholds: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
    min_areas: tuple[int, ...] = (0, 10, 50, 100, 250, 500, 1000)
    keep_largest: tuple[int, ...] = (0,)
    fill_holes: bool = False
    presence_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    triplet_top_thresholds: tuple[float, ...] = (0.6, 0.75, 0.9)
    triplet_min_contour_areas: tuple[int, ...] = (50, 200, 800)
    area_reference: int | None = None
    connectivity: int = 2

    def __post_init__(self) -> None:
        if not self.thresholds or not self.min_areas or not self.keep_largest:
            raise ConfigError("thresholds, min_areas and keep_largest need at least one value each",
                              hint="use (0,) for min_areas/keep_largest to switch them off")
        for t in (*self.thresholds, *self.presence_thresholds, *self.triplet_top_thresholds):
            _check_unit("grid threshold", t)
        for a in (*self.min_areas, *self.keep_largest, *self.triplet_min_contour_areas):
            if int(a) != a or a < 0:
                raise ConfigError(f"grid areas and counts must be whole numbers >= 0, got {a!r}")
        if self.area_reference is not None and self.area_reference <= 0:
            raise ConfigError("area_reference must be a positive pixel count",
                              hint="e.g. 1048576 for 1024x1024, or None for absolute areas")
        if self.connectivity not in (1, 2):
            raise ConfigError(f"connectivity must be 1 or 2, got {self.connectivity!r}")

    def scaled_areas(self, areas: Sequence[int], image_area: float) -> tuple[int, ...]:
        """Areas rescaled from ``area_reference`` to ``image_area`` pixels (unchanged when absolute).

        Duplicates produced by rounding are dropped; order is kept.
        """
        if self.area_reference is None:
            out = [int(a) for a in areas]
        else:
            out = [int(round(a * image_area / self.area_reference)) for a in areas]
        return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class TuneResult(JsonConfig):
    """Outcome of :func:`tune_postprocess`.

    Attributes:
        best: the best setting found (ties: the first in table order, i.e. no gate before gates,
            then the grid's threshold order, then smaller keep_largest/min_area).
        best_score: its mean Dice.
        baseline_score: mean Dice of the default :class:`PostProcessConfig` (threshold 0.5 only).
        table: one dict per tried setting: threshold, min_area, keep_largest, presence_threshold,
            triplet_top, triplet_min_area, score, dice_<k> per foreground class k.
        n_images: number of images scored.
        empty_policy: how both-empty pairs were scored.
    """

    best: PostProcessConfig = field(default_factory=PostProcessConfig)
    best_score: float = 0.0
    baseline_score: float = 0.0
    table: list[dict[str, Any]] = field(default_factory=list)
    n_images: int = 0
    empty_policy: str = "kaggle"


def _component_stats(labels: np.ndarray, gt: np.ndarray, n_classes: int,
                     structure: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per foreground class: (component sizes, component ∩ gt sizes), components in label order."""
    out = []
    for k in range(1, n_classes):
        b = labels == k
        lab, n = ndimage.label(b, structure=structure)
        if n == 0:
            out.append((np.zeros(0), np.zeros(0)))
            continue
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
        inter = np.bincount(lab[gt == k], minlength=n + 1)[1:].astype(np.float64)
        out.append((sizes, inter))
    return out


def _reduce_stats(stats: list[tuple[np.ndarray, np.ndarray]], keeps: Sequence[int],
                  min_areas: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Prediction sums and intersections ``(len(keeps) * len(min_areas), C)`` for every filter setting.

    Equivalent to :func:`_filter_components` (drop < min_area, keep the k largest with raster-order
    tie-breaking) but computed from per-component numbers.
    """
    n_set = len(keeps) * len(min_areas)
    psum = np.zeros((n_set, len(stats)))
    inter = np.zeros_like(psum)
    m = np.asarray(min_areas, dtype=np.float64)[None, :, None]
    kk = np.asarray(keeps, dtype=np.int64)[:, None, None]
    for c, (sizes, inters) in enumerate(stats):
        n = sizes.size
        if n == 0:
            continue
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(-sizes, kind="stable")] = np.arange(n)
        keep = (sizes[None, None, :] >= m) & ((kk <= 0) | (rank[None, None, :] < kk))
        psum[:, c] = (keep * sizes).sum(axis=-1).reshape(-1)
        inter[:, c] = (keep * inters).sum(axis=-1).reshape(-1)
    return psum, inter


def tune_postprocess(probs_list: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                     presences: Sequence[float | None] | None = None, grid: TuneGrid | None = None,
                     empty_policy: str = "kaggle", progress: ProgressFn | None = None) -> TuneResult:
    """Grid-search post-processing settings for the best mean Dice on a validation set.

    Efficiency: for each image and threshold (and, for triplets, each distinct set of gated-out
    classes) the connected components are labelled once; each component's size and ground-truth
    overlap are kept, and every ``min_area``/``keep_largest`` setting is scored from those numbers
    (no re-labelling, no mask rendering). Presence gates only switch whole images off. With
    ``grid.fill_holes`` every setting is rendered with :func:`postprocess` instead (exact but slow).

    Args:
        probs_list: N float32 ``(K, H, W)`` softmax maps (all with the same K).
        gts: N integer ``(H, W)`` ground-truth masks, same sizes as the maps.
        presences: optional N presence-head probabilities (None entries never gate).
        grid: the search space (default :class:`TuneGrid`).
        empty_policy: one of :data:`EMPTY_POLICIES` ("kaggle": both empty = 1).
        progress: called as ``progress(done, N, message)`` once per image.

    Returns:
        :class:`TuneResult` with the best config, its score, the default config's score and the table.

    Example:
        >>> p1 = np.zeros((16, 16), np.float32); p1[4:10, 4:10] = 0.9; p1[0, 15] = 0.9
        >>> gt = np.zeros((16, 16), np.uint8); gt[4:10, 4:10] = 1
        >>> res = tune_postprocess([np.stack([1 - p1, p1])], [gt], grid=TuneGrid(min_areas=(0, 5)))
        >>> res.best.min_area, res.best_score > res.baseline_score
        (5, True)
    """
    _check_policy(empty_policy)
    n_classes = _check_inputs(probs_list, gts, presences)
    grid = grid or TuneGrid()
    report = as_progress(progress)
    n_img, n_fg = len(probs_list), n_classes - 1
    median_area = float(np.median([np.shape(p)[1] * np.shape(p)[2] for p in probs_list]))
    min_areas = grid.scaled_areas(grid.min_areas, median_area)
    trip_areas = grid.scaled_areas(grid.triplet_min_contour_areas, median_area)
    keeps = tuple(dict.fromkeys(int(k) for k in grid.keep_largest))
    thresholds = tuple(dict.fromkeys(float(t) for t in grid.thresholds))
    use_presence = presences is not None and any(v is not None for v in presences)

    # Gates: ("none", None) | ("presence", p) | ("triplet", (top, area)).
    gates: list[tuple[str, Any]] = [("none", None)]
    if use_presence:
        gates += [("presence", float(p)) for p in dict.fromkeys(grid.presence_thresholds)]
    gates += [("triplet", (float(top), int(a)))
              for top in dict.fromkeys(grid.triplet_top_thresholds) for a in trip_areas]

    # Row layout: gate → threshold → keep → min_area; blocks of len(keeps)*len(min_areas) rows.
    block = len(keeps) * len(min_areas)
    configs: list[PostProcessConfig] = []
    blocks: list[tuple[int, int, int]] = []  # (gate index, threshold index, first row)
    for gi, (kind, value) in enumerate(gates):
        for ti, t in enumerate(thresholds):
            if kind == "triplet" and value[0] < t:
                continue
            blocks.append((gi, ti, len(configs)))
            for k in keeps:
                for m in min_areas:
                    configs.append(PostProcessConfig(
                        threshold=t, min_area=m, keep_largest=k, fill_holes=grid.fill_holes,
                        presence_threshold=value if kind == "presence" else None,
                        triplet=TripletGate(value[0], value[1], t) if kind == "triplet" else None,
                        connectivity=grid.connectivity))
    n_set = len(configs)
    inter = np.zeros((n_set, n_img, n_fg))
    psum = np.zeros_like(inter)
    gsum = np.zeros((n_img, n_fg))
    structure = _structure(grid.connectivity)
    thr_arrays = {t: np.full(n_fg, t) for t in thresholds}

    for i, (probs, gt) in enumerate(zip(probs_list, gts)):
        p = _check_probs(probs)
        g = np.asarray(gt)
        gsum[i] = _gt_sums(g, n_classes)
        presence = None if presences is None else presences[i]
        if grid.fill_holes:
            for s, cfg in enumerate(configs):
                inter[s, i], psum[s, i] = _overlap(postprocess(p, cfg, presence), g, n_classes)
            report(i + 1, n_img, "scoring post-processing settings")
            continue
        cache: dict[tuple[float, bool, frozenset[int]], tuple[np.ndarray, np.ndarray]] = {}
        excl_cache: dict[tuple[float, int], frozenset[int]] = {}

        ties: dict[float, bool] = {}

        def reduced(t: float, strict: bool, excluded: frozenset[int]) -> tuple[np.ndarray, np.ndarray]:
            if strict:
                if t not in ties:
                    ties[t] = bool(np.any(p[1:] == np.float32(t)))
                strict = ties[t]  # "> t" and ">= t" agree when no probability equals t exactly
            key = (t, strict, excluded)
            if key not in cache:
                if len(excluded) == n_fg:
                    cache[key] = (np.zeros((block, n_fg)), np.zeros((block, n_fg)))
                else:
                    labels = _assign(p, thr_arrays[t], strict, excluded)
                    cache[key] = _reduce_stats(_component_stats(labels, g, n_classes, structure), keeps, min_areas)
            return cache[key]

        for gi, ti, row in blocks:
            kind, value = gates[gi]
            t = thresholds[ti]
            sl = slice(row, row + block)
            if kind == "presence" and presence is not None and presence < value:
                continue  # whole image gated off: zeros already in place
            if kind == "triplet":
                top, area = value
                if (top, area) not in excl_cache:
                    excl_cache[(top, area)] = _triplet_excluded(p, top, area)
                psum[sl, i], inter[sl, i] = reduced(t, True, excl_cache[(top, area)])
            else:
                psum[sl, i], inter[sl, i] = reduced(t, False, frozenset())
        report(i + 1, n_img, "scoring post-processing settings")

    scores, per_class = _aggregate(_dice(inter, psum, gsum[None], empty_policy))
    best_idx = int(np.argmax(np.where(np.isnan(scores), -np.inf, scores)))
    table = []
    for s, cfg in enumerate(configs):
        entry: dict[str, Any] = {
            "threshold": cfg.threshold, "min_area": cfg.min_area, "keep_largest": cfg.keep_largest,
            "presence_threshold": cfg.presence_threshold,
            "triplet_top": cfg.triplet.top_score_threshold if cfg.triplet else None,
            "triplet_min_area": cfg.triplet.min_contour_area if cfg.triplet else None,
            "score": float(scores[s]),
        }
        for c in range(n_fg):
            v = per_class[s, c]
            entry[f"dice_{c + 1}"] = None if math.isnan(v) else float(v)
        table.append(entry)
    baseline = evaluate_postprocess(probs_list, gts, PostProcessConfig(connectivity=grid.connectivity),
                                    presences, empty_policy)
    return TuneResult(best=configs[best_idx], best_score=float(scores[best_idx]), baseline_score=baseline,
                      table=table, n_images=n_img, empty_policy=empty_policy)
