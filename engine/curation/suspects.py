"""The label-error finder: which ground-truth masks are wrong, how, and where.

:func:`find_suspects` is the one scoring function; ``python -m engine suspects`` and the pages
call it. It judges every labelled case with probabilities from a model that did not train on
it (:mod:`engine.curation.crossfit`: out-of-fold cross-fitting or a shipped model whose card
shows the case was held out) and returns a :class:`SuspectReport`, most suspicious first. Each
:class:`Suspect` carries a score (0..1), a type (:data:`SUSPECT_TYPES`), reasons in words (pixels,
and mm when the case knows its pixel spacing), the provenance of its probabilities, and a
per-pixel disagreement map (:func:`load_disagreement_map`).

**Evidence** (per case, :func:`case_evidence`; distances at a working resolution of at most
``SuspectConfig.max_side`` pixels a side, reported in the image's pixels):

- *Confident learning, per pixel*: class-wise thresholds ``t_k`` = mean probability of class k
  over the pixels labelled k (learned from the data, as confident learning does). A pixel is an
  issue when the probability of its given label is below that label's threshold while another
  class is above its own. Counted per class as "label says c, model confidently not" and
  "model confidently c, label not", relative to the structure's size; and once more weighted by
  the distance to the model's boundary (``min(d / band, 4)``, band = 3 % of the structure's
  equivalent radius, at least 2 px): a thin confident band along the boundary is the model's own
  imprecision, a region or a band several pixels deep is the label's.
- *Regions*: label components the model does not support (mean probability < ``support``) and
  confidently predicted components absent from the label.
- *Boundary*: signed distances between label and prediction boundaries
  (``scipy.ndimage.distance_transform_edt``), on the parts the region check left matched:
  median (signed: positive = the label's boundary lies outside the model's), mean absolute and
  sign consistency (an eroded or dilated label is off by the same sign all around).
- *Shift*: the translation that best aligns label and prediction (FFT correlation) and how much
  IoU it gains.
- *Empty*: an empty label where the model confidently finds a structure (relative to the class's
  typical size).
- *Overlap*: 1 - soft Dice (probability-weighted) and 1 - the worst class's hard Dice.
- *Fold-model disagreement* (std of the k fold models' probabilities over the structure) and the
  judging model's own uncertainty: a hard image, where every model wavers, from a wrong label on
  a clear image.
- *Class-relative* (:func:`class_relative`): how far a class's confident-learning and Dice
  evidence lies above the dataset's usual for that class (robust z against the given labels), so
  a class every model finds hard does not drown a clear error in an easy one.

**Calibration.** The evidence is combined by a logistic regression (:class:`Calibration`, one
weight per :data:`FEATURES` entry) fitted at run time on *planted corruptions of the dataset's own cases* (the data we
have; never held-out data of others): for every case (up to ``calibration_cases``), its label as
given is a negative and ``calibration_plants`` corrupted copies (:func:`plant`: eroded, dilated,
shifted, a component dropped, a spurious blob, emptied, swapped with another case's mask; seed
``calibration_seed``) are positives, all judged with the case's own honest probabilities. Given
labels that still look corrupted after a first fit (the top ``contamination`` fraction of the
negatives: likely real errors) are dropped and the model refitted. Magnitudes are drawn wide
(erosion/dilation 3–15 % of the structure's equivalent radius, shifts 5–30 %, blobs 3–40 % of
its area) so subtle errors are represented. The score is the model's
probability shifted to a prior of ``prior`` wrong labels. The fitted weights are kept in the
report (``calibration``) and cached per probability set, so they do not change when one mask is
corrected.

**Type** (:data:`SUSPECT_TYPES`) is the explanation that accounts for most of the disagreeing
area: ``empty`` (empty label, model sure), ``shifted`` (a translation fixes it), ``missing_region``
/ ``extra_region`` (whole components), ``boundary`` (same-sign offset all around, "off by N px"),
else ``mismatched`` (the label overlaps the model poorly and no single explanation covers it: it
does not fit the image, e.g. another case's mask; a small diffuse disagreement is ``boundary``).

**Cache.** Evidence and map are cached per (probability set digest, case, mask digest); the
calibration per probability set. A corrected mask re-scores that case only
(:attr:`SuspectReport.stats` ``n_computed``).

Example:
    >>> from engine.curation.crossfit import honest_probabilities
    >>> probs = honest_probabilities(ds, weights=["lung-cxr"], folds=5)       # doctest: +SKIP
    >>> rep = find_suspects(ds, probs)                                        # doctest: +SKIP
    >>> s = rep.cases[0]; s.case_id, s.type, round(s.score, 2), s.reasons[0]  # doctest: +SKIP
    ('MCUCXR_0042_0', 'boundary', 0.97, 'lung: label boundary 11 px inside the model's on 94 % of it')
    >>> load_disagreement_map(ds, s.case_id).shape                           # doctest: +SKIP
    (512, 512)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from engine.config import JsonConfig
from engine.errors import ConfigError, WorkbenchError
from engine.fsutil import atomic_path, atomic_write_json, read_json_dict, safe_child
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    from engine.curation.crossfit import CaseProbs
    from engine.datasets import Dataset

__all__ = ["SUSPECT_TYPES", "CORRUPTIONS", "FEATURES", "SuspectConfig", "Suspect", "SuspectReport", "Calibration",
           "ProbabilityLookup", "find_suspects", "case_evidence", "plant", "cl_thresholds", "load_latest_suspects",
           "load_disagreement_map", "suspects_folder", "fit_logistic"]

#: What a suspect can be (the ``type`` of a :class:`Suspect`).
SUSPECT_TYPES: tuple[str, ...] = ("missing_region", "extra_region", "boundary", "shifted", "empty", "mismatched")
#: Corruptions :func:`plant` makes (calibration; the bench plants its own).
CORRUPTIONS: tuple[str, ...] = ("eroded", "dilated", "shifted", "dropped", "blob", "emptied", "swapped")
#: The type each corruption should be found as.
CORRUPTION_TYPE: dict[str, str] = {"eroded": "boundary", "dilated": "boundary", "shifted": "shifted",
                                   "dropped": "missing_region", "blob": "extra_region", "emptied": "empty",
                                   "swapped": "mismatched"}
#: Evidence features combined by the calibrated model, in order.
FEATURES: tuple[str, ...] = ("cl", "cl_far", "soft_dice", "worst_dice", "region", "boundary_rel", "boundary_px",
                             "shift_gain", "empty", "fold_std", "uncertainty", "explained", "cl_z", "dice_z")
#: Features relative to the dataset's own spread of each class (filled by :func:`class_relative`).
CLASS_FEATURES: tuple[str, ...] = ("cl_z", "dice_z")
#: Bumped whenever the evidence changes (invalidates the caches).
EVIDENCE_VERSION = 3
REPORT_FORMAT = "segwb-suspects"
LATEST = "latest.json"


@dataclass(frozen=True)
class SuspectConfig(JsonConfig):
    """Settings of :func:`find_suspects`.

    Attributes:
        max_side: evidence is computed at most at this many pixels a side (reported in image pixels).
        support: a label component whose mean model probability is below this is "not supported".
        prior: assumed fraction of wrong labels; sets the scale of the score (not the order).
        calibration_cases: at most this many cases are used for calibration.
        calibration_plants: corrupted copies per calibration case.
        calibration_seed: seed of the planted corruptions.
        contamination: fraction of given labels dropped from the negatives after the first fit.
        l2: ridge penalty of the logistic regression (on standardised features).

    Example:
        >>> SuspectConfig.from_json(SuspectConfig(prior=0.2).to_json()).prior
        0.2
    """

    max_side: int = 512
    support: float = 0.3
    prior: float = 0.1
    calibration_cases: int = 400
    calibration_plants: int = 2
    calibration_seed: int = 20251
    contamination: float = 0.1
    l2: float = 0.05

    def __post_init__(self) -> None:
        if not 32 <= int(self.max_side) <= 4096:
            raise ConfigError(f"max_side must be in 32..4096, got {self.max_side!r}")
        if not 0.0 < float(self.prior) < 1.0:
            raise ConfigError(f"prior must be in (0, 1), got {self.prior!r}", hint="e.g. 0.1 (10 % wrong labels)")
        if not 0.0 <= float(self.contamination) < 0.5:
            raise ConfigError(f"contamination must be in [0, 0.5), got {self.contamination!r}")
        if int(self.calibration_plants) < 1 or int(self.calibration_cases) < 4:
            raise ConfigError("calibration needs at least 4 cases and 1 plant per case")

    @property
    def digest(self) -> str:
        return hashlib.sha1(f"{EVIDENCE_VERSION}:{self.to_json(indent=None)}".encode()).hexdigest()[:12]


class ProbabilityLookup(Protocol):
    """What :func:`find_suspects` needs from its probabilities (:class:`engine.curation.crossfit.ProbabilitySet`)."""

    digest: str

    @property
    def case_ids(self) -> list[str]: ...

    def case(self, case_id: str) -> CaseProbs: ...

    def describe(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------------ planting

def _eq_radius(area: float) -> float:
    return math.sqrt(max(float(area), 1.0) / math.pi)


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` translated by (dy, dx) pixels, zero fill (no wrap)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    if abs(dy) < h and abs(dx) < w:
        out[yd, xd] = mask[ys, xs]
    return out


def plant(mask: np.ndarray, kind: str, rng: np.random.Generator, other: np.ndarray | None = None,
          num_classes: int | None = None) -> np.ndarray | None:
    """A corrupted copy of a label map (for calibration); None when ``kind`` does not apply.

    Args:
        mask: uint8 (H,W) label map (0 = background).
        kind: one of :data:`CORRUPTIONS`.
        rng: random generator (magnitudes are drawn relative to the structure's size).
        other: another case's uint8 label map (``swapped``; resized to ``mask``'s shape).
        num_classes: K (``blob`` on an empty mask draws a class in 1..K-1; default 2).

    Returns:
        uint8 (H,W), or None (e.g. ``dropped`` on a mask with fewer than two components,
        ``eroded`` on an empty mask).

    Example:
        >>> m = np.zeros((40, 40), np.uint8); m[10:30, 10:30] = 1
        >>> int(plant(m, "eroded", np.random.default_rng(0)).sum()) < int(m.sum())
        True
    """
    from scipy import ndimage as ndi

    m = np.asarray(mask, dtype=np.uint8)
    fg = m > 0
    area = int(fg.sum())
    h, w = m.shape
    r_eq = _eq_radius(area)
    if kind in ("eroded", "dilated", "shifted", "dropped", "emptied") and area == 0:
        return None
    if kind == "eroded":
        r = max(1, int(round(rng.uniform(0.03, 0.15) * r_eq)))
        out = np.zeros_like(m)
        for c in np.unique(m[fg]):
            out[ndi.binary_erosion(m == c, _disk(r))] = c
        return out if out.sum() else None
    if kind == "dilated":
        r = max(1, int(round(rng.uniform(0.03, 0.15) * r_eq)))
        out = m.copy()
        for c in np.unique(m[fg]):
            grow = ndi.binary_dilation(m == c, _disk(r)) & (out == 0)
            out[grow] = c
        return out
    if kind == "shifted":
        d = max(2.0, rng.uniform(0.05, 0.3) * r_eq)
        a = rng.uniform(0, 2 * math.pi)
        return _shift(m, int(round(d * math.sin(a))), int(round(d * math.cos(a))))
    if kind == "dropped":
        comps = []
        for c in np.unique(m[fg]):
            lab, n = ndi.label(m == c, structure=np.ones((3, 3)))
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            comps += [(c, lab, i) for i in range(1, n + 1) if sizes[i] >= 0.05 * area]
        if len(comps) < 2:
            return None
        c, lab, i = comps[int(rng.integers(len(comps)))]
        out = m.copy()
        out[lab == i] = 0
        return out
    if kind == "blob":
        k = num_classes or 2
        classes = np.unique(m[fg]) if area else np.arange(1, k)
        c = int(rng.choice(classes))
        ref = (m == c).sum() if area else 0.02 * h * w
        a_blob = max(16.0, rng.uniform(0.03, 0.4) * ref)
        ry = math.sqrt(a_blob / math.pi) * rng.uniform(0.7, 1.4)
        rx = a_blob / math.pi / ry
        for _ in range(30):
            cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
            yy, xx = np.ogrid[:h, :w]
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            if not (blob & ndi.binary_dilation(fg, iterations=2)).any():
                out = m.copy()
                out[blob] = c
                return out
        return None
    if kind == "emptied":
        return np.zeros_like(m)
    if kind == "swapped":
        if other is None:
            return None
        o = np.asarray(other, dtype=np.uint8)
        if o.shape != m.shape:
            import cv2

            o = np.asarray(cv2.resize(o, (w, h), interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
        if np.array_equal(o > 0, fg):
            return None
        return o
    raise ConfigError(f"unknown corruption {kind!r}", hint=f"use one of {', '.join(CORRUPTIONS)}")


# ------------------------------------------------------------------------------------------ evidence

def _resize_for_work(label: np.ndarray, probs: np.ndarray, fold_std: np.ndarray | None,
                     max_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    h, w = label.shape
    s = min(1.0, float(max_side) / max(h, w))
    if s >= 1.0:
        return label, probs, fold_std, 1.0
    import cv2

    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    lab = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    p = np.stack([cv2.resize(ch, size, interpolation=cv2.INTER_AREA) for ch in probs]).astype(np.float32)
    fs = (np.stack([cv2.resize(ch, size, interpolation=cv2.INTER_AREA) for ch in fold_std]).astype(np.float32)
          if fold_std is not None else None)
    return lab, p, fs, s


def cl_thresholds(labels: Sequence[np.ndarray], probs: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Confident-learning thresholds: ``t_k`` = mean probability of class k over the pixels labelled k.

    Args:
        labels: uint8 (H,W) label maps.
        probs: float32 (K,H,W) probabilities of the same cases (any resolution matching its label).
        num_classes: K.

    Returns:
        float64 (K,); a class no pixel is labelled with gets 0.5.

    Example:
        >>> lab = np.array([[0, 1]], np.uint8); p = np.array([[[0.9, 0.2]], [[0.1, 0.8]]], np.float32)
        >>> cl_thresholds([lab], [p], 2).round(2).tolist()
        [0.9, 0.8]
    """
    sums = np.zeros(num_classes)
    counts = np.zeros(num_classes)
    for lab, p in zip(labels, probs):
        lab = np.asarray(lab)
        for k in range(num_classes):
            sel = lab == k
            n = int(sel.sum())
            if n:
                sums[k] += float(p[k][sel].sum())
                counts[k] += n
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.5)


@dataclass
class Evidence:
    """What :func:`case_evidence` found for one label.

    Attributes:
        features: ``{name: value}`` for every name in :data:`FEATURES`.
        details: numbers the type and reasons are made of (JSON-safe).
        map: uint8 (h,w) disagreement map at the working resolution: 0 = the model agrees,
            1..255 = the label disagrees with a confident model (``255 × (1 − p(given label))``).
    """

    features: dict[str, float]
    details: dict[str, Any]
    map: np.ndarray


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    return lab, int(n)


def _boundary(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance to the mask's boundary: positive outside, negative inside (px)."""
    from scipy import ndimage as ndi

    if not mask.any():
        return np.full(mask.shape, 1e4, np.float32)
    if mask.all():
        return np.full(mask.shape, -1e4, np.float32)
    return (ndi.distance_transform_edt(~mask) - ndi.distance_transform_edt(mask)).astype(np.float32)


def _best_shift(lab_fg: np.ndarray, pred_fg: np.ndarray, limit: float) -> tuple[int, int]:
    """The translation (dy, dx) of ``lab_fg`` that overlaps ``pred_fg`` most, |d| <= ``limit`` (px)."""
    from scipy.signal import fftconvolve

    h, w = lab_fg.shape
    step = max(1, int(math.ceil(max(h, w) / 192)))
    a = lab_fg[::step, ::step].astype(np.float32)
    b = pred_fg[::step, ::step].astype(np.float32)
    corr = fftconvolve(b, a[::-1, ::-1], mode="full")
    hh, ww = a.shape
    oy, ox = hh - 1, ww - 1
    lim = max(1, int(limit / step))
    y0, y1 = max(0, oy - lim), min(corr.shape[0], oy + lim + 1)
    x0, x1 = max(0, ox - lim), min(corr.shape[1], ox + lim + 1)
    win = corr[y0:y1, x0:x1]
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    dy, dx = (iy + y0 - oy) * step, (ix + x0 - ox) * step
    if step > 1:  # refine at full resolution around the coarse optimum
        best, best_v = (dy, dx), -1
        for ry in range(-step + 1, step):
            for rx in range(-step + 1, step):
                v = int((_shift(lab_fg, dy + ry, dx + rx) & pred_fg).sum())
                if v > best_v:
                    best, best_v = (dy + ry, dx + rx), v
        dy, dx = best
    return int(dy), int(dx)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = int((a | b).sum())
    return 1.0 if u == 0 else int((a & b).sum()) / u


def case_evidence(label: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, typical_area: np.ndarray, *,
                  fold_std: np.ndarray | None = None, config: SuspectConfig | None = None) -> Evidence:
    """The evidence against one label (see the module doc).

    Args:
        label: uint8 (H,W) label map, classes 0..K-1.
        probs: float32 (K,H,W) honest probabilities of the case.
        thresholds: (K,) confident-learning thresholds (:func:`cl_thresholds`).
        typical_area: (K,) typical area of each class in *image* pixels (median non-empty label
            area), the yardstick for empty labels and small structures.
        fold_std: float32 (K,H,W) fold-model disagreement, or None.
        config: :class:`SuspectConfig`.

    Returns:
        :class:`Evidence` (map at the working resolution ``scale`` × the image size, see
        ``details["scale"]``).
    """
    cfg = config or SuspectConfig()
    label = np.asarray(label, dtype=np.uint8)
    probs = np.asarray(probs, dtype=np.float32)
    if label.shape != probs.shape[1:]:
        raise ConfigError(f"label {label.shape} and probabilities {probs.shape[1:]} differ in size",
                          hint="restore the probabilities to the image size first")
    H, W = label.shape
    lab, p, fstd, s = _resize_for_work(label, probs, fold_std, cfg.max_side)
    K = p.shape[0]
    t = np.asarray(thresholds, dtype=np.float32)
    typ = np.asarray(typical_area, dtype=np.float64) * s * s
    lab = np.minimum(lab, K - 1)
    arg = p.argmax(0)
    # --- confident learning, per pixel
    above = p >= t[:, None, None]
    kstar = np.where(above, p, -1.0).argmax(0)
    has = above.any(0)
    py = np.take_along_axis(p, lab[None].astype(np.int64), 0)[0]
    issue = has & (kstar != lab) & (py < t[lab])
    dmap = np.where(issue, np.clip(np.round(255.0 * (1.0 - py)), 1, 255), 0).astype(np.uint8)
    lab_fg, pred_fg = lab > 0, arg > 0
    classes: list[dict[str, Any]] = []
    ref_total = 0.0
    cl_total = 0.0
    cl_far_total = 0.0
    soft_num = soft_den = 0.0
    worst_dice = 1.0
    region_max = bnd_rel_max = bnd_px_max = 0.0
    fold_num = fold_den = unc_num = unc_den = 0.0
    expl_region = 0.0
    for c in range(1, K):
        L = lab == c
        Q = arg == c
        pc = p[c]
        aL, aQ = int(L.sum()), int(Q.sum())
        if aL == 0 and aQ == 0:
            continue
        ref = max(float(aL), float(aQ), 0.25 * float(typ[c]) if c < len(typ) else 0.0, 16.0)
        r_eq = _eq_radius(ref)
        cl_extra = int((issue & L).sum())
        cl_missing = int((issue & (kstar == c) & ~L).sum())
        # issue pixels far from the model's boundary weigh more: a thin band along it is the
        # model's own imprecision, a region or a band several pixels deep is the label's
        band = max(2.0, 0.03 * r_eq)
        mine = issue & (L | (kstar == c))
        cl_far_c = 0.0
        if mine.any():
            dist = np.abs(_signed_distance(Q))[mine] if Q.any() else np.full(int(mine.sum()), 4.0 * band)
            cl_far_c = float(np.minimum(dist / band, 4.0).sum())
            cl_far_total += cl_far_c
        inter = int((L & Q).sum())
        dice = 2.0 * inter / max(1, aL + aQ)
        worst_dice = min(worst_dice, dice)
        soft_num += 2.0 * float(pc[L].sum())
        soft_den += float(pc.sum()) + aL
        # --- regions
        min_comp = max(9.0, 0.02 * ref)
        comp_l, nl = _components(L)
        extra_area, extra_big = 0, None
        L2 = L.copy()
        if nl:
            sizes = np.bincount(comp_l.ravel(), minlength=nl + 1)
            sums = np.bincount(comp_l.ravel(), weights=pc.ravel(), minlength=nl + 1)
            for i in range(1, nl + 1):
                if sizes[i] >= min_comp and sums[i] / sizes[i] < cfg.support:
                    extra_area += int(sizes[i])
                    L2[comp_l == i] = False
                    if extra_big is None or sizes[i] > extra_big[0]:
                        extra_big = (int(sizes[i]), float(sums[i] / sizes[i]))
        comp_q, nq = _components(Q)
        missing_area, missing_big = 0, None
        Q2 = Q.copy()
        if nq:
            sizes = np.bincount(comp_q.ravel(), minlength=nq + 1)
            sums = np.bincount(comp_q.ravel(), weights=pc.ravel(), minlength=nq + 1)
            over = np.bincount(comp_q.ravel(), weights=L.ravel().astype(np.float64), minlength=nq + 1)
            for i in range(1, nq + 1):
                if sizes[i] >= min_comp and over[i] / sizes[i] < 0.1 and sums[i] / sizes[i] > 0.6:
                    missing_area += int(sizes[i])
                    Q2[comp_q == i] = False
                    if missing_big is None or sizes[i] > missing_big[0]:
                        missing_big = (int(sizes[i]), float(sums[i] / sizes[i]))
        region = (extra_area + missing_area) / ref
        region_max = max(region_max, region)
        # --- boundary offset on the matched parts
        med = mean_abs = cons = 0.0
        n_b = 0
        if L2.any() and Q2.any():
            d1 = _signed_distance(Q2)[_boundary(L2)]       # label boundary vs model: + = label outside
            d2 = -_signed_distance(L2)[_boundary(Q2)]      # model boundary vs label: + = label outside
            d = np.concatenate([d1, d2]).astype(np.float64)
            n_b = int(d.size)
            if d.size:
                med = float(np.median(d))
                mean_abs = float(np.abs(d).mean())
                big = d[np.abs(d) >= 1.0]
                cons = float(abs(np.sign(big).mean())) if big.size else 0.0
        bnd_rel = cons * abs(med) / r_eq
        bnd_rel_max = max(bnd_rel_max, bnd_rel)
        bnd_px_max = max(bnd_px_max, cons * abs(med) / s)
        union = L | Q
        if fstd is not None and union.any():
            fold_num += float(fstd[c][union].sum())
            fold_den += float(union.sum())
        if union.any():
            unc_num += float((1.0 - np.abs(2.0 * pc[union] - 1.0)).sum())
            unc_den += float(union.sum())
        xor = int((L ^ Q).sum())
        matched_xor = int((L2 ^ Q2).sum())
        expl_region = max(expl_region, (extra_area + missing_area) / max(1, xor))
        ref_total += ref
        cl_total += cl_extra + cl_missing
        classes.append({
            "class": c, "label_px": round(aL / s / s), "model_px": round(aQ / s / s), "dice": round(dice, 4),
            "cl_extra_px": round(cl_extra / s / s), "cl_missing_px": round(cl_missing / s / s),
            "cl_frac": round((cl_extra + cl_missing) / ref, 4), "cl_far_frac": round(cl_far_c / ref, 4),
            "extra_px": round(extra_area / s / s),
            "extra_support": None if extra_big is None else round(extra_big[1], 3),
            "missing_px": round(missing_area / s / s),
            "missing_conf": None if missing_big is None else round(missing_big[1], 3),
            "boundary_median_px": round(med / s, 2), "boundary_mean_abs_px": round(mean_abs / s, 2),
            "boundary_consistency": round(cons, 3), "boundary_points": n_b, "radius_px": round(r_eq / s, 2),
            "xor_px": round(xor / s / s), "matched_xor_px": round(matched_xor / s / s),
            "region_frac": round(region, 4), "boundary_rel": round(bnd_rel, 4)})
    # --- shift of the whole foreground
    shift = (0, 0)
    iou0 = iou1 = _iou(lab_fg, pred_fg)
    if lab_fg.any() and pred_fg.any():
        r_fg = _eq_radius(max(lab_fg.sum(), pred_fg.sum()))
        shift = _best_shift(lab_fg, pred_fg, limit=1.2 * r_fg)
        if shift != (0, 0):
            iou1 = _iou(_shift(lab_fg, *shift), pred_fg)
    gain = max(0.0, iou1 - iou0)
    # --- empty label, model sure
    empty = 0.0
    conf_px = 0
    conf_mean = 0.0
    if not lab_fg.any():
        conf = pred_fg & (p.max(0) >= 0.5)
        conf_px = int(conf.sum())
        if conf_px:
            cls = np.bincount(arg[conf].ravel(), minlength=K)
            c_main = int(np.argmax(cls[1:]) + 1) if K > 1 else 1
            yard = max(16.0, float(typ[c_main]) if c_main < len(typ) and typ[c_main] > 0 else 0.01 * lab.size)
            conf_mean = float(p.max(0)[conf].mean())
            empty = min(3.0, conf_px / yard) * conf_mean
    fold = fold_num / fold_den if fold_den else 0.0
    unc = unc_num / unc_den if unc_den else 0.0
    xor_fg = int((lab_fg ^ pred_fg).sum())
    expl_shift = ((xor_fg - int((_shift(lab_fg, *shift) ^ pred_fg).sum())) / max(1, xor_fg)) if shift != (0, 0) else 0.0
    if ref_total:
        cl_frac = cl_total / ref_total
        cl_far_frac = cl_far_total / ref_total
    else:  # label and model both empty in every class
        cl_frac = float(issue.sum()) / max(16.0, float(typ[1:].max()) if K > 1 else 16.0)
        cl_far_frac = 4.0 * cl_frac
    soft_dice = soft_num / soft_den if soft_den else 1.0
    features = {
        "cl": math.log1p(100.0 * cl_frac), "cl_far": math.log1p(100.0 * cl_far_frac),
        "soft_dice": 1.0 - soft_dice, "worst_dice": 1.0 - worst_dice,
        "region": math.log1p(100.0 * min(3.0, region_max)),
        "boundary_rel": min(1.0, bnd_rel_max), "boundary_px": math.log1p(bnd_px_max), "shift_gain": gain,
        "empty": empty, "fold_std": fold, "uncertainty": unc, "explained": max(expl_region, max(0.0, expl_shift)),
        "cl_z": 0.0, "dice_z": 0.0,  # need the dataset's spread: class_relative()
    }
    details = {"scale": s, "shape": [H, W], "classes": classes, "shift_px": [shift[0] / s, shift[1] / s],
               "iou": round(iou0, 4), "iou_shifted": round(iou1, 4), "shift_explains": round(max(0.0, expl_shift), 4),
               "label_empty": not bool(lab_fg.any()), "model_px": round(int(pred_fg.sum()) / s / s),
               "empty_conf_px": round(conf_px / s / s), "empty_conf_mean": round(conf_mean, 3),
               "fold_std": round(fold, 4), "uncertainty": round(unc, 4), "cl_px": round(int(issue.sum()) / s / s)}
    return Evidence({k: float(features[k]) for k in FEATURES}, details, dmap)


#: Per-class raw values the class-relative features compare with the dataset's spread.
_CLASS_RAW: dict[str, str] = {"cl_z": "cl_far_frac", "dice_z": "dice"}


def class_spread(details: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{feature: {class id: [median, spread]}}`` of the per-class raw values over a dataset's given
    labels (the details of :func:`case_evidence`); spread = interquartile range (floored)."""
    vals: dict[str, dict[str, list[float]]] = {f: {} for f in _CLASS_RAW}
    for d in details:
        for c in d.get("classes") or []:
            for f, raw in _CLASS_RAW.items():
                v = float(c[raw])
                vals[f].setdefault(str(c["class"]), []).append(1.0 - v if raw == "dice" else v)
    out: dict[str, dict[str, list[float]]] = {f: {} for f in _CLASS_RAW}
    for f, by in vals.items():
        for cls, xs in by.items():
            q25, q50, q75 = np.quantile(np.asarray(xs, float), [0.25, 0.5, 0.75])
            out[f][cls] = [float(q50), float(max(q75 - q25, 0.02 * abs(q50), 1e-3))]
    return out


def class_relative(features: Mapping[str, float], details: Mapping[str, Any],
                   spread: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, float]:
    """``features`` with :data:`CLASS_FEATURES` filled: for each class, how far its evidence lies above
    the dataset's usual for that class (robust z = (x − median) / IQR, as ``sign · log(1 + |z|)``),
    the most unusual class counting. A class every model finds hard (a small nerve) then does not
    drown a clear error in an easy class (a vessel)."""
    out = dict(features)
    for f, raw in _CLASS_RAW.items():
        best = 0.0
        for c in details.get("classes") or []:
            st = (spread.get(f) or {}).get(str(c["class"]))
            if not st:
                continue
            v = float(c[raw])
            x = 1.0 - v if raw == "dice" else v
            z = (x - float(st[0])) / float(st[1])
            best = max(best, math.copysign(math.log1p(abs(z)), z))
        out[f] = best
    return out


# ------------------------------------------------------------------------------------------ type and reasons

def _spacing(meta: Mapping[str, Any] | None) -> float | None:
    v = (meta or {}).get("pixel_spacing_mm")
    try:
        vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])] if v is not None else []
    except (TypeError, ValueError):
        return None
    vals = [x for x in vals if math.isfinite(x) and x > 0]
    return float(np.mean(vals)) if vals else None


def _px(v: float, spacing: float | None) -> str:
    text = f"{v:.0f} px" if abs(v) >= 10 else f"{v:.1f} px"
    return text + (f" ({abs(v) * spacing:.1f} mm)" if spacing else "")


def _area(v: float, spacing: float | None) -> str:
    return f"{v:,.0f} px" + (f" ({v * spacing * spacing / 100:.1f} cm²)" if spacing else "")


def classify(details: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """The suspect type (:data:`SUSPECT_TYPES`) of an evidence's details, and how much of the
    disagreeing area each explanation accounts for (``{type: 0..1}``)."""
    classes = list(details.get("classes") or [])
    if details.get("label_empty"):
        return "empty", {"empty": 1.0}
    xor = sum(c["xor_px"] for c in classes) or 1
    expl = {
        "missing_region": sum(c["missing_px"] for c in classes) / xor,
        "extra_region": sum(c["extra_px"] for c in classes) / xor,
        "boundary": sum(c["matched_xor_px"] * c["boundary_consistency"] for c in classes
                        if c["boundary_consistency"] >= 0.6) / xor,
        "shifted": float(details.get("shift_explains") or 0.0)
        if math.hypot(*details.get("shift_px", (0, 0))) >= 2 and details.get("iou_shifted", 0) >= 0.5 else 0.0,
    }
    best = max(expl, key=lambda k: expl[k])
    if expl[best] < 0.4:
        # no single explanation: a label that overlaps the model poorly does not fit the image; a
        # small diffuse disagreement is the boundary's
        return ("mismatched" if float(details.get("iou", 1.0)) < 0.8 else "boundary"), expl
    return best, expl


def _reasons(details: Mapping[str, Any], features: Mapping[str, float], typ: str, labels: Mapping[int, str],
             spacing: float | None, thresholds: np.ndarray) -> list[str]:
    out: list[str] = []
    classes = sorted(details.get("classes") or [], key=lambda c: -(c["xor_px"]))
    name = {int(k): str(v) for k, v in labels.items()}
    if details.get("label_empty"):
        if details.get("empty_conf_px"):
            out.append(f"label is empty but the model finds {_area(details['empty_conf_px'], spacing)} of structure "
                       f"(mean probability {details['empty_conf_mean']:.2f})")
        else:
            out.append("label is empty and the model agrees")
    if typ == "shifted" or features.get("shift_gain", 0) >= 0.05:
        dy, dx = details.get("shift_px", (0.0, 0.0))
        dist = math.hypot(dy, dx)
        if dist >= 1:
            out.append(f"label is shifted by {_px(dist, spacing)} (dy {dy:+.0f}, dx {dx:+.0f} px): moved back it "
                       f"overlaps the model with IoU {details['iou_shifted']:.2f} instead of {details['iou']:.2f}")
    for c in classes:
        cname = name.get(int(c["class"]), f"class {c['class']}")
        if c["missing_px"]:
            out.append(f"{cname}: the model finds a region of {_area(c['missing_px'], spacing)} the label misses "
                       f"(mean probability {c['missing_conf']:.2f})")
        if c["extra_px"]:
            out.append(f"{cname}: the label has a region of {_area(c['extra_px'], spacing)} the model does not "
                       f"support (mean probability {c['extra_support']:.2f})")
        med, cons = c["boundary_median_px"], c["boundary_consistency"]
        if abs(med) >= 1 and cons >= 0.5:
            where = "outside" if med > 0 else "inside"
            out.append(f"{cname}: label boundary lies {_px(abs(med), spacing)} {where} the model's on "
                       f"{100 * (0.5 + cons / 2):.0f} % of its length (boundary off by {abs(med):.0f} px)")
        if c["label_px"] and c["model_px"] and c["dice"] < 0.95:
            out.append(f"{cname}: label {c['label_px']:,} px vs model {c['model_px']:,} px, Dice {c['dice']:.2f}")
    if typ == "mismatched":
        out.append("the disagreement is not one shift, boundary offset or region: the mask may not belong to "
                   "this image")
    if details.get("cl_px"):
        ts = ", ".join(f"{name.get(k, k)} {float(t):.2f}" for k, t in enumerate(thresholds))
        out.append(f"{details['cl_px']:,} px where the model is confidently another class than the label "
                   f"(class thresholds learned from the data: {ts})")
    fs = details.get("fold_std")
    if fs:
        out.append(f"fold models {'disagree' if fs >= 0.1 else 'agree'} (mean std {fs:.2f}): "
                   f"{'a hard image' if fs >= 0.1 else 'a clear image for them'}")
    return out


# ------------------------------------------------------------------------------------------ calibration

def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 0.05, iters: int = 60) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (numpy only).

    Args:
        x: float64 (N,F) standardised features.
        y: (N,) 0/1 targets.
        l2: ridge penalty on the weights (not the intercept).

    Returns:
        ``(weights (F,), intercept)``.

    Example:
        >>> x = np.array([[-2.0], [-1.0], [1.0], [2.0]]); y = np.array([0, 0, 1, 1])
        >>> w, b = fit_logistic(x, y); bool(w[0] > 0)
        True
    """
    n, f = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    beta = np.zeros(f + 1)
    reg = np.full(f + 1, l2 * n)
    reg[-1] = 1e-6
    for _ in range(iters):
        z = np.clip(xb @ beta, -30, 30)
        pr = 1.0 / (1.0 + np.exp(-z))
        grad = xb.T @ (pr - y) + reg * beta
        hess = (xb * (pr * (1 - pr))[:, None]).T @ xb + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if float(np.abs(step).max()) < 1e-7:
            break
    return beta[:-1], float(beta[-1])


@dataclass
class Calibration:
    """The fitted combination of the evidence (see the module doc).

    Attributes:
        features: feature names (:data:`FEATURES`).
        mean, std: standardisation of each feature.
        weights, intercept: logistic regression on the standardised features.
        thresholds: the confident-learning thresholds per class.
        typical_area: median non-empty label area per class (image pixels).
        n_negative, n_positive, n_dropped: calibration examples (given labels, planted corruptions,
            given labels dropped as likely real errors).
        prior_shift: added to the logit so the score assumes ``prior`` wrong labels.
        seed: the planting seed; kinds: plants per corruption kind.
        type_accuracy: share of the plants of each kind typed as that kind.
        spread: per-class median and spread of the given labels' evidence (:func:`class_spread`).
    """

    features: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    intercept: float
    thresholds: np.ndarray
    typical_area: np.ndarray
    n_negative: int = 0
    n_positive: int = 0
    n_dropped: int = 0
    prior_shift: float = 0.0
    seed: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    type_accuracy: dict[str, float] = field(default_factory=dict)
    spread: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def logit(self, feats: Mapping[str, float]) -> float:
        x = np.array([float(feats.get(f, 0.0)) for f in self.features])
        z = (x - self.mean) / self.std
        return float(z @ self.weights + self.intercept + self.prior_shift)

    def score(self, feats: Mapping[str, float]) -> float:
        """Probability (0..1) that the label is wrong, at the configured prior."""
        return float(1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, self.logit(feats))))))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "weights": [float(w) for w in self.weights], "intercept": self.intercept,
                "thresholds": self.thresholds.tolist(), "typical_area": self.typical_area.tolist(),
                "n_negative": self.n_negative, "n_positive": self.n_positive, "n_dropped": self.n_dropped,
                "prior_shift": self.prior_shift, "seed": self.seed, "kinds": dict(self.kinds),
                "type_accuracy": dict(self.type_accuracy), "spread": self.spread,
                "how": "logistic regression on standardised evidence, fitted on planted corruptions of this "
                       "dataset's own cases (positives) vs their labels as given (negatives)"}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Calibration":
        return Calibration(tuple(d["features"]), np.asarray(d["mean"], float), np.asarray(d["std"], float),
                           np.asarray(d["weights"], float), float(d["intercept"]), np.asarray(d["thresholds"], float),
                           np.asarray(d["typical_area"], float), int(d.get("n_negative", 0)),
                           int(d.get("n_positive", 0)), int(d.get("n_dropped", 0)), float(d.get("prior_shift", 0.0)),
                           int(d.get("seed", 0)), dict(d.get("kinds") or {}), dict(d.get("type_accuracy") or {}),
                           {str(f): {str(c): [float(x) for x in v] for c, v in by.items()}
                            for f, by in (d.get("spread") or {}).items()})


def _fit_calibration(neg: list[dict[str, float]], pos: list[dict[str, float]], thresholds: np.ndarray,
                     typical: np.ndarray, cfg: SuspectConfig, kinds: dict[str, int],
                     type_acc: dict[str, float], spread: dict[str, dict[str, list[float]]]) -> Calibration:
    feats = FEATURES
    xn = np.array([[f[k] for k in feats] for f in neg], float)
    xp = np.array([[f[k] for k in feats] for f in pos], float)
    x = np.vstack([xn, xp])
    mean = x.mean(0)
    std = x.std(0)
    std[std < 1e-9] = 1.0
    y = np.r_[np.zeros(len(xn)), np.ones(len(xp))]
    w, b = fit_logistic((x - mean) / std, y, cfg.l2)
    dropped = 0
    if cfg.contamination > 0 and len(xn) >= 10:
        zn = ((xn - mean) / std) @ w + b
        cut = np.quantile(zn, 1.0 - cfg.contamination)
        keep = zn < cut
        dropped = int((~keep).sum())
        if keep.sum() >= 4:
            x2 = np.vstack([xn[keep], xp])
            y2 = np.r_[np.zeros(int(keep.sum())), np.ones(len(xp))]
            w, b = fit_logistic((x2 - mean) / std, y2, cfg.l2)
    n_neg, n_pos = len(xn) - dropped, len(xp)
    shift = math.log(cfg.prior / (1 - cfg.prior)) - math.log(max(n_pos, 1) / max(n_neg, 1))
    return Calibration(feats, mean, std, w, b, np.asarray(thresholds, float), np.asarray(typical, float),
                       n_neg, n_pos, dropped, shift, cfg.calibration_seed, kinds, type_acc, spread)


# ------------------------------------------------------------------------------------------ report

@dataclass
class Suspect:
    """One case of the report.

    Attributes:
        case_id: the case.
        score: 0..1 confidence that the label is wrong (calibrated, see the module doc).
        type: one of :data:`SUSPECT_TYPES`.
        reasons: sentences, the most telling first.
        provenance: which model judged it (``out-of-fold: ...``, ``shipped model ..., case not in its
            training set``, or ``... not honest``).
        honest: False when every model that judged it trained on it.
        evidence: the features (:data:`FEATURES`).
        explained: share of the disagreeing area each type explains.
        map_file: the disagreement map (``.npz``; :func:`load_disagreement_map`).
        mask_digest: the mask version judged.
        rank: 1-based position in the report.
    """

    case_id: str
    score: float
    type: str
    reasons: list[str]
    provenance: str
    honest: bool
    evidence: dict[str, float]
    explained: dict[str, float]
    map_file: str | None
    mask_digest: str
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "score": round(self.score, 6), "type": self.type, "reasons": self.reasons,
                "provenance": self.provenance, "honest": self.honest, "rank": self.rank,
                "evidence": {k: round(v, 6) for k, v in self.evidence.items()},
                "explained": {k: round(v, 4) for k, v in self.explained.items()},
                "map_file": self.map_file, "mask_digest": self.mask_digest}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Suspect":
        return Suspect(str(d["case_id"]), float(d["score"]), str(d["type"]), list(d.get("reasons") or []),
                       str(d.get("provenance") or ""), bool(d.get("honest", True)), dict(d.get("evidence") or {}),
                       dict(d.get("explained") or {}), d.get("map_file"), str(d.get("mask_digest") or ""),
                       int(d.get("rank") or 0))


@dataclass
class SuspectReport:
    """The finder's answer for a dataset.

    Attributes:
        cases: every judged labelled case, most suspicious first (ties: case id).
        dataset: the dataset's root (or manifest).
        probabilities: :meth:`ProbabilitySet.describe` (models, folds, digest, timings).
        calibration: :meth:`Calibration.to_dict`.
        config: the :class:`SuspectConfig` as a dict.
        stats: ``n_cases``, ``n_computed`` (evidence computed this run), ``n_cached``, ``n_not_honest``,
            ``by_type``, ``seconds`` (``evidence``, ``calibration``, ``total``).
        skipped: ``[(case_id, why)]`` of labelled cases that could not be judged.
        created: ISO-8601 UTC.
    """

    cases: list[Suspect]
    dataset: str
    probabilities: dict[str, Any]
    calibration: dict[str, Any]
    config: dict[str, Any]
    stats: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"format", "cases": [{"case_id", "score", "type", "reasons", "provenance", ...}], ...}``."""
        return {"format": REPORT_FORMAT, "version": 1, "created": self.created, "dataset": self.dataset,
                "cases": [s.to_dict() for s in self.cases], "stats": self.stats,
                "skipped": [{"case_id": c, "reason": r} for c, r in self.skipped],
                "probabilities": self.probabilities, "calibration": self.calibration, "config": self.config}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "SuspectReport":
        return SuspectReport([Suspect.from_dict(c) for c in d.get("cases") or []], str(d.get("dataset") or ""),
                             dict(d.get("probabilities") or {}), dict(d.get("calibration") or {}),
                             dict(d.get("config") or {}), dict(d.get("stats") or {}),
                             [(str(s["case_id"]), str(s.get("reason", ""))) for s in d.get("skipped") or []],
                             str(d.get("created") or ""))

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict(), durable=False)
        return Path(path)

    @staticmethod
    def load(path: str | Path) -> "SuspectReport":
        from engine.errors import ReadError
        from engine.fsutil import read_json

        d = read_json(path)
        if not isinstance(d, dict) or d.get("format") != REPORT_FORMAT:
            raise ReadError("not a suspects report", path=path, hint="write one with `python -m engine suspects`")
        return SuspectReport.from_dict(d)

    def get(self, case_id: str) -> Suspect | None:
        return next((s for s in self.cases if s.case_id == case_id), None)

    def by_type(self, types: Sequence[str] | None = None) -> list[Suspect]:
        """The suspects whose type is in ``types`` (all when None), in report order."""
        return list(self.cases) if not types else [s for s in self.cases if s.type in set(types)]

    def disagreement_map(self, case_id: str) -> np.ndarray:
        """uint8 (H,W) disagreement map of ``case_id`` at the image size (see :func:`load_disagreement_map`)."""
        s = self.get(case_id)
        if s is None or not s.map_file:
            raise WorkbenchError(f"no disagreement map for case {case_id!r} in this report",
                                 hint="run the label-error finder on the dataset again")
        return _read_map(Path(s.map_file))


def suspects_folder(dataset: Dataset) -> Path:
    """``<dataset workspace>/suspects`` (probability caches, evidence caches, maps, latest report)."""
    from engine.curation.crossfit import _workdir

    return _workdir(dataset) / "suspects"


def _write_map(path: Path, dmap: np.ndarray, shape: Sequence[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=False) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, map=np.asarray(dmap, np.uint8), shape=np.asarray(shape, np.int64))


def _read_map(path: Path) -> np.ndarray:
    from engine.errors import ReadError

    try:
        with np.load(path, allow_pickle=False) as z:
            m = np.asarray(z["map"], np.uint8)
            h, w = (int(v) for v in z["shape"])
    except (OSError, ValueError, KeyError) as exc:
        raise ReadError(f"cannot read the disagreement map ({exc})", path=path,
                        hint="run the label-error finder again") from None
    if m.shape != (h, w):
        import cv2

        m = np.asarray(cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
    return m


def load_latest_suspects(dataset: Dataset) -> SuspectReport | None:
    """The last report :func:`find_suspects` saved for ``dataset`` (None when there is none)."""
    path = suspects_folder(dataset) / LATEST
    if not path.is_file():
        return None
    try:
        return SuspectReport.load(path)
    except WorkbenchError:
        return None


def load_disagreement_map(dataset: Dataset | SuspectReport, case_id: str) -> np.ndarray:
    """uint8 (H,W) map of where the label of ``case_id`` disagrees with a confident model, at the
    image size: 0 = agrees; 1..255 = ``255 × (1 − p(given label))``. Where the label is foreground
    the label has something the model rejects; where it is background the label misses something.

    Args:
        dataset: the dataset (its latest report is used) or a :class:`SuspectReport`.
        case_id: the case.

    Raises:
        WorkbenchError: no report, or the case is not in it.
    """
    rep = dataset if isinstance(dataset, SuspectReport) else load_latest_suspects(dataset)
    if rep is None:
        raise WorkbenchError("the label-error finder has not run on this dataset",
                             hint="run `python -m engine suspects DATASET --weights NAME` or the page's finder")
    return rep.disagreement_map(case_id)


# ------------------------------------------------------------------------------------------ the function

def _median_areas(masks: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    out = np.zeros(k)
    for c in range(1, k):
        areas = [int((m == c).sum()) for m in masks.values()]
        nz = [a for a in areas if a > 0]
        out[c] = float(np.median(nz)) if nz else 0.0
    return out


def find_suspects(dataset: Dataset, probabilities: ProbabilityLookup, config: SuspectConfig | None = None, *,
                  case_ids: Sequence[str] | None = None, use_cache: bool = True, save: bool = True,
                  progress: ProgressFn | None = None) -> SuspectReport:
    """Rank every labelled case by how likely its mask is wrong, with type, reasons and a map.

    Args:
        dataset: the dataset (masks as they are now: corrections applied when the dataset is
            :func:`engine.curation.corrected_dataset`).
        probabilities: honest probabilities (:func:`engine.curation.crossfit.honest_probabilities`).
        config: :class:`SuspectConfig`.
        case_ids: judge only these (default: every labelled case with probabilities).
        use_cache: reuse cached evidence, maps and calibration.
        save: keep the report as the dataset's latest (what the pages read).
        progress: ``(done, total, message)``.

    Returns:
        :class:`SuspectReport`, most suspicious first.

    Raises:
        ConfigError: no labelled case with probabilities.

    Example:
        >>> rep = find_suspects(ds, honest_probabilities(ds, folds=5))      # doctest: +SKIP
        >>> [(s.case_id, s.type) for s in rep.cases[:3]]                     # doctest: +SKIP
    """
    cfg = config or SuspectConfig()
    report = as_progress(progress)
    t_start = time.perf_counter()
    ids = [str(c) for c in (case_ids if case_ids is not None else probabilities.case_ids)]
    if not ids:
        raise ConfigError("no labelled case to judge", path=dataset.root,
                          hint="check that the dataset has masks and the models predicted its cases")
    K = dataset.num_classes
    folder = suspects_folder(dataset)
    key = f"{probabilities.digest}-{cfg.digest}"
    ev_dir = folder / "evidence" / key
    masks: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    for cid in ids:
        try:
            masks[cid] = np.minimum(dataset.load_mask(cid), K - 1)
        except WorkbenchError as exc:
            skipped.append((cid, str(exc)))
    ids = [c for c in ids if c in masks]
    from engine.curation.crossfit import mask_digest

    digests = {cid: mask_digest(m) for cid, m in masks.items()}
    cal_path = folder / "calibration" / f"{key}.json"
    cal: Calibration | None = None
    if use_cache and cal_path.is_file():
        try:
            cal = Calibration.from_dict(read_json_dict(cal_path))
        except (KeyError, TypeError, ValueError):
            cal = None
    cached: dict[str, dict[str, Any]] = {}
    if use_cache:
        for cid in ids:
            d = read_json_dict(safe_child(ev_dir, cid, f"-{digests[cid]}.json"))
            if d.get("version") == EVIDENCE_VERSION and set(FEATURES) <= set(d.get("features") or {}):
                cached[cid] = d
    need = [c for c in ids if c not in cached]
    t_cal = 0.0
    n_calib = 0
    if cal is None:
        t0 = time.perf_counter()
        cal = _calibrate(dataset, probabilities, ids, masks, cfg, report)
        n_calib = cal.n_positive
        t_cal = time.perf_counter() - t0
        if use_cache:
            atomic_write_json(cal_path, cal.to_dict(), durable=False)
    t0 = time.perf_counter()
    for i, cid in enumerate(need):
        report(i, len(need), f"judging {cid}")
        cp = probabilities.case(cid)
        ev = case_evidence(masks[cid], cp.probs, cal.thresholds, cal.typical_area, fold_std=cp.fold_std, config=cfg)
        map_path = safe_child(ev_dir, cid, f"-{digests[cid]}.npz")
        _write_map(map_path, ev.map, masks[cid].shape)
        d = {"version": EVIDENCE_VERSION, "features": ev.features, "details": ev.details,
             "provenance": cp.provenance, "honest": cp.honest, "map_file": str(map_path)}
        if use_cache:
            atomic_write_json(safe_child(ev_dir, cid, f"-{digests[cid]}.json"), d, durable=False)
        cached[cid] = d
    t_ev = time.perf_counter() - t0
    suspects: list[Suspect] = []
    for cid in ids:
        d = cached[cid]
        typ, expl = classify(d["details"])
        case = dataset.case(cid)
        reasons = _reasons(d["details"], d["features"], typ, dataset.labels, _spacing(case.meta), cal.thresholds)
        prov = str(d.get("provenance") or "")
        honest = bool(d.get("honest", True))
        if not honest:
            reasons.append("judged by a model that trained on this case: a wrong label may look right to it")
        feats = class_relative(d["features"], d["details"], cal.spread)
        suspects.append(Suspect(cid, cal.score(feats), typ, reasons, prov, honest,
                                {k: float(v) for k, v in feats.items()}, expl, d.get("map_file"), digests[cid]))
    from engine.eda import natural_key

    suspects.sort(key=lambda s: (-s.score, natural_key(s.case_id)))
    for r, s in enumerate(suspects, start=1):
        s.rank = r
    by_type: dict[str, int] = {t: 0 for t in SUSPECT_TYPES}
    for s in suspects:
        by_type[s.type] += 1
    stats = {"n_cases": len(suspects), "n_computed": len(need), "n_cached": len(ids) - len(need),
             "n_calibration_plants": n_calib, "n_not_honest": sum(not s.honest for s in suspects),
             "by_type": by_type,
             "seconds": {"evidence": round(t_ev, 3), "calibration": round(t_cal, 3),
                         "total": round(time.perf_counter() - t_start, 3)}}
    root = str(getattr(dataset, "manifest_path", None) or dataset.root)
    rep = SuspectReport(suspects, root, probabilities.describe(), cal.to_dict(), cfg.to_dict(), stats, skipped,
                        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if save:
        rep.save(folder / LATEST)
    report(len(need), len(need), "judged")
    return rep


def _calibrate(dataset: Dataset, probabilities: ProbabilityLookup, ids: Sequence[str],
               masks: Mapping[str, np.ndarray], cfg: SuspectConfig, report: ProgressFn) -> Calibration:
    """Fit the :class:`Calibration` on planted corruptions of the dataset's own cases (module doc)."""
    K = dataset.num_classes
    rng = np.random.default_rng(cfg.calibration_seed)
    pool = list(ids)
    if len(pool) > cfg.calibration_cases:
        pool = sorted(rng.choice(pool, size=cfg.calibration_cases, replace=False).tolist())
    honest_pool = []
    cache: dict[str, CaseProbs] = {}
    for i, cid in enumerate(pool):
        report(i, 2 * len(pool), f"calibrating: reading {cid}")
        cp = probabilities.case(cid)
        cache[cid] = cp
        if cp.honest:
            honest_pool.append(cid)
    use = honest_pool if len(honest_pool) >= 4 else list(pool)
    # confident-learning thresholds and class sizes from the given labels
    small_l, small_p = [], []
    for cid in use:
        lab, p, _, _ = _resize_for_work(masks[cid], cache[cid].probs, None, 128)
        small_l.append(lab)
        small_p.append(p)
    thresholds = cl_thresholds(small_l, small_p, K)
    typical = _median_areas({c: masks[c] for c in use}, K)
    negs: list[Evidence] = []
    plants: list[tuple[str, Evidence]] = []
    order = list(CORRUPTIONS)
    j = int(rng.integers(len(order)))
    for i, cid in enumerate(use):
        report(len(pool) + i, len(pool) + len(use), f"calibrating: planting errors in {cid}")
        cp = cache[cid]
        negs.append(case_evidence(masks[cid], cp.probs, thresholds, typical, fold_std=cp.fold_std, config=cfg))
        made = 0
        for _ in range(4 * cfg.calibration_plants):
            if made >= cfg.calibration_plants:
                break
            kind = order[j % len(order)]
            j += 1
            other = masks[use[int(rng.integers(len(use)))]] if kind == "swapped" else None
            bad = plant(masks[cid], kind, rng, other=other, num_classes=K)
            if bad is None:
                continue
            plants.append((kind, case_evidence(bad, cp.probs, thresholds, typical, fold_std=cp.fold_std,
                                               config=cfg)))
            made += 1
    spread = class_spread([e.details for e in negs])
    neg = [class_relative(e.features, e.details, spread) for e in negs]
    pos = [class_relative(e.features, e.details, spread) for _, e in plants]
    kinds: dict[str, int] = {}
    hits: dict[str, list[bool]] = {}
    for kind, e in plants:
        kinds[kind] = kinds.get(kind, 0) + 1
        hits.setdefault(kind, []).append(classify(e.details)[0] == CORRUPTION_TYPE[kind])
    if not pos or not neg:
        raise ConfigError("cannot calibrate the label-error finder: no corruption could be planted",
                          hint="the dataset needs labelled cases with non-empty masks")
    acc = {k: round(float(np.mean(v)), 4) for k, v in hits.items()}
    return _fit_calibration(neg, pos, thresholds, typical, cfg, kinds, acc, spread)

