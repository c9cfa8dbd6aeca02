"""Clicks: the record of one click, the standard simulated-click protocol, and NoC scoring.

The protocol is the one every interactive-segmentation paper reports NoC with (Xu et al. 2016,
"Deep Interactive Object Selection"; the reference code of RITM, Sofiiuk et al. 2022,
``isegm/inference/clicker.py``): given the ground truth and the current mask,

1. the error regions are the false negatives ``gt & ~mask`` and the false positives ``~gt & mask``;
2. each is distance-transformed (Euclidean, the image border counts as boundary: the masks are
   padded by one background pixel), pixels already clicked are excluded;
3. the next click goes to the error pixel farthest from its region's boundary — the centre of the
   "largest" error region in the sense of its largest inscribed disk — and is **positive when that
   pixel is a false negative** (ties between FN and FP go to the FP side, as in RITM; ties within
   one side go to the first pixel in row-major order).

NoC@t is the number of clicks until IoU ≥ t, or :data:`MAX_CLICKS` (20) when it is never reached.

Example:
    >>> gt = np.zeros((9, 9), bool); gt[2:7, 2:7] = True
    >>> next_click(gt, np.zeros_like(gt))
    Click(row=4, col=4, positive=True)
    >>> noc([0.5, 0.86, 0.91], 0.85), noc([0.5, 0.86, 0.91], 0.95)
    (2, 20)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

MAX_CLICKS = 20
"""Clicks a protocol run may use; NoC is this value when the target IoU is never reached."""


@dataclass(frozen=True)
class Click:
    """One click at pixel ``(row, col)``; ``positive`` = "this belongs to the object"."""

    row: int
    col: int
    positive: bool = True


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H,W) boolean masks; 1.0 when both are empty."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else float(np.count_nonzero(a & b)) / union


def _distance(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each ``region`` pixel to the nearest non-region pixel, the border
    counting as non-region (float32 (H,W); 0 outside the region)."""
    import cv2

    padded = np.pad(region.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def next_click(gt: np.ndarray, mask: np.ndarray, clicked: Sequence[Click] = ()) -> Click | None:
    """The next simulated click (see the module docstring), or None when the mask equals ``gt``.

    Args:
        gt: (H,W) bool ground truth.
        mask: (H,W) bool current mask.
        clicked: clicks already made; their pixels are not chosen again.

    Returns:
        :class:`Click` with ``positive=True`` for a false-negative region, else ``False``.
    """
    gt = np.asarray(gt, bool)
    mask = np.asarray(mask, bool)
    if gt.shape != mask.shape or gt.ndim != 2:
        from engine.errors import MaskError

        raise MaskError(f"ground truth {gt.shape} and mask {mask.shape} must be the same (H,W) shape",
                        hint="resize the mask to the image before simulating clicks")
    fn_dt = _distance(gt & ~mask)
    fp_dt = _distance(~gt & mask)
    for c in clicked:
        if 0 <= c.row < gt.shape[0] and 0 <= c.col < gt.shape[1]:
            fn_dt[c.row, c.col] = 0.0
            fp_dt[c.row, c.col] = 0.0
    fn_max = float(fn_dt.max()) if fn_dt.size else 0.0
    fp_max = float(fp_dt.max()) if fp_dt.size else 0.0
    if max(fn_max, fp_max) <= 0.0:
        return None
    positive = fn_max > fp_max
    dt, best = (fn_dt, fn_max) if positive else (fp_dt, fp_max)
    flat = int(np.flatnonzero(dt == best)[0])
    return Click(row=flat // gt.shape[1], col=flat % gt.shape[1], positive=positive)


def noc(ious: Sequence[float], threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """Number of clicks until ``ious[k-1] >= threshold`` (``ious[k-1]`` = IoU after click k), else ``max_clicks``."""
    for k, value in enumerate(ious[:max_clicks], start=1):
        if value >= threshold:
            return k
    return max_clicks


def run_protocol(gt: np.ndarray, click: Callable[[Click], np.ndarray], *, max_clicks: int = MAX_CLICKS,
                 start: np.ndarray | None = None, stop_at: float | None = None, min_clicks: int = 0) -> list[float]:
    """Drive an interactive method with simulated clicks and return the IoU after each click.

    Args:
        gt: (H,W) bool ground truth.
        click: applies one click and returns the (H,W) bool mask after it (e.g. ``session.click``
            wrapped as ``lambda c: s.click(c.row, c.col, c.positive)``).
        max_clicks: clicks at most (20 = the NoC convention).
        start: the mask before the first click (None = empty).
        stop_at: stop early once IoU ≥ this and at least ``min_clicks`` clicks were made (saves time
            when only NoC up to this threshold and IoU after ``min_clicks`` clicks are needed).
        min_clicks: see ``stop_at``.

    Returns:
        IoUs, one per click made (fewer than ``max_clicks`` when stopped early or when the mask
        became exactly the ground truth: the last IoU then holds for the remaining clicks).
    """
    gt = np.asarray(gt, bool)
    mask = np.zeros_like(gt) if start is None else np.asarray(start, bool)
    done: list[Click] = []
    ious: list[float] = []
    for _ in range(max_clicks):
        c = next_click(gt, mask, done)
        if c is None:
            break
        done.append(c)
        mask = np.asarray(click(c), bool)
        ious.append(iou(mask, gt))
        if stop_at is not None and ious[-1] >= stop_at and len(ious) >= min_clicks:
            break
    return ious


def iou_after(ious: Sequence[float], k: int) -> float | None:
    """IoU after ``k`` clicks from a :func:`run_protocol` result (the last value when the run stopped
    earlier because the target was reached or the mask was exact; None for an empty run)."""
    if not ious:
        return None
    return float(ious[min(k, len(ious)) - 1])
