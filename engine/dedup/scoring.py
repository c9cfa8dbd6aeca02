"""Mask disagreement of near-duplicate pairs, review severity, duplicate groups, label-noise ceiling.

Categories of a verified pair (both images near-identical):

- ``conflict``: one mask is empty, the other is not (the case study's "contradictory pair").
- ``disagree``: both non-empty but their Dice is below ``disagree_dice`` (default 0.5: the two
  outlines overlap less than they differ, so at least one annotator marked a different
  structure or extent; above 0.5 the difference is mostly boundary placement).
- ``agree``: both non-empty, Dice ≥ ``disagree_dice``.
- ``agree_empty``: both empty.
- ``unlabelled``: at least one image has no ground truth (e.g. a test image twin of a training
  image: a leakage signal, not a label conflict).

Dice follows the Kaggle policy (both empty = 1, one empty = 0); multi-class masks use the mean
of per-class Dice over the classes present in either mask.

**Severity** (review-queue order, in [0, 1]):
``severity = (1 − dice) × (0.5 + 0.5·s) × (0.5 + 0.5·a)`` with
``s = clip((ssim − threshold) / (1 − threshold), 0, 1)`` (how far above the SSIM threshold: a
twin at 0.999 is surely the same frame) and ``a = clip(larger mask area fraction / median
non-empty area fraction of the dataset, 0, 1)`` (a full-size nerve missing hurts more than a
speck). Conflicts (dice 0) score 0.25–1, agreeing pairs near 0.

**Label-noise ceiling.** A model maps near-identical images to near-identical outputs, so
within a near-duplicate group it effectively predicts ONE mask M for every member. The best
any model can score on the group is ``max_M Σ_i Dice(M, G_i) / n``. We evaluate M over a
candidate set: every member's mask, the empty mask, the union, the intersection of the
non-empty masks, and the pixel-wise majority. This is exact for the common cases (a conflict
pair: 0.5; an agreeing pair: 1.0) and in general a lower estimate of the true optimum over all
masks (a better M outside the candidates could exist), i.e. an optimistic-but-achievable
upper bound on model performance on those cases. Unlabelled members are left out.

Example:
    >>> a = np.zeros((8, 8), np.uint8); a[2:5, 2:5] = 1
    >>> categorize(True, False, 0.0)
    'conflict'
    >>> group_ceiling([a, np.zeros_like(a)])[0:2]  # a conflict pair: one shared mask scores 0.5
    (0.5, 2)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from engine.metrics import dice_from_counts

CATEGORIES: tuple[str, ...] = ("conflict", "disagree", "agree", "agree_empty", "unlabelled")


def _bbox(fg: np.ndarray) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1) half-open bounding box of the True pixels of (H,W) bool, None if empty."""
    rows = np.flatnonzero(fg.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(fg[rows[0]:rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _union_box(boxes: Sequence[tuple[int, int, int, int] | None]) -> tuple[slice, slice] | None:
    real = [b for b in boxes if b is not None]
    if not real:
        return None
    return (slice(min(b[0] for b in real), max(b[1] for b in real)),
            slice(min(b[2] for b in real), max(b[3] for b in real)))


class CroppedMask:
    """A label map (H,W) stored as its foreground bounding box: ``shape``, ``box`` and ``crop``.

    Dice and ceilings only look inside the union of bounding boxes, so near-duplicate scoring
    never materialises full-size masks. ``box`` is None (and ``crop`` empty) for an empty mask.
    """

    __slots__ = ("shape", "box", "crop", "area")

    def __init__(self, shape: tuple[int, int], box: tuple[int, int, int, int] | None, crop: np.ndarray):
        self.shape = (int(shape[0]), int(shape[1]))
        self.box = box
        self.crop = np.asarray(crop, np.uint8)
        self.area = int(np.count_nonzero(self.crop))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "CroppedMask":
        m = np.asarray(mask)
        box = _bbox(m > 0)
        if box is None:
            return cls(m.shape, None, np.zeros((0, 0), np.uint8))
        return cls(m.shape, box, m[box[0]:box[1], box[2]:box[3]])

    def to_mask(self) -> np.ndarray:
        out = np.zeros(self.shape, np.uint8)
        if self.box is not None:
            out[self.box[0]:self.box[1], self.box[2]:self.box[3]] = self.crop
        return out

    def within(self, box: tuple[slice, slice]) -> np.ndarray:
        """This mask's pixels inside ``box`` (which must contain its bounding box)."""
        rs, cs = box
        out = np.zeros((rs.stop - rs.start, cs.stop - cs.start), np.uint8)
        if self.box is not None:
            out[self.box[0] - rs.start:self.box[1] - rs.start,
                self.box[2] - cs.start:self.box[3] - cs.start] = self.crop
        return out


def _as_cropped(m: Any, shape: tuple[int, ...] | None = None) -> CroppedMask:
    if isinstance(m, CroppedMask):
        if shape is not None and m.shape != tuple(shape):
            return CroppedMask.from_mask(resize_nearest(m.to_mask(), shape))
        return m
    a = np.asarray(m)
    if shape is not None and a.shape != tuple(shape):
        a = resize_nearest(a, shape)
    return CroppedMask.from_mask(a)


def mask_dice(a: Any, b: Any) -> float:
    """Dice of two label maps (H,W) or :class:`CroppedMask` (Kaggle policy; multi-class: mean of
    per-class Dice over the classes present in either). ``b`` is resized to ``a``'s shape if needed."""
    ca = _as_cropped(a)
    cb = _as_cropped(b, ca.shape)
    box = _union_box([ca.box, cb.box])
    if box is None:
        return 1.0
    if ca.area == 0 or cb.area == 0:
        return 0.0
    pa, pb = ca.within(box), cb.within(box)
    fa, fb = pa > 0, pb > 0
    if pa.max() <= 1 and pb.max() <= 1:
        return dice_from_counts(np.count_nonzero(fa & fb), ca.area, cb.area)
    classes = sorted((set(np.unique(pa)) | set(np.unique(pb))) - {0})
    scores = []
    for c in classes:
        ma, mb = pa == c, pb == c
        scores.append(dice_from_counts(np.count_nonzero(ma & mb), int(ma.sum()), int(mb.sum())))
    return float(np.mean(scores))


def resize_nearest(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (h,w) to ``shape`` (H,W)."""
    h, w = mask.shape
    rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(np.int64)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(np.int64)
    return np.asarray(mask)[rows[:, None], cols[None, :]]


def categorize(has_a: bool | None, has_b: bool | None, dice: float | None, disagree_dice: float = 0.5) -> str:
    """Category of a verified pair from mask presence (None = unlabelled) and Dice."""
    if has_a is None or has_b is None:
        return "unlabelled"
    if has_a != has_b:
        return "conflict"
    if not has_a:
        return "agree_empty"
    assert dice is not None
    return "disagree" if dice < disagree_dice else "agree"


def severity(category: str, dice: float | None, ssim: float, threshold: float, area_frac: float,
             ref_area_frac: float) -> float:
    """Review priority in [0, 1]; see the module docstring for the formula."""
    if category == "unlabelled" or dice is None:
        return 0.0
    s = float(np.clip((ssim - threshold) / max(1.0 - threshold, 1e-9), 0.0, 1.0))
    a = float(np.clip(area_frac / max(ref_area_frac, 1e-9), 0.0, 1.0))
    return float((1.0 - dice) * (0.5 + 0.5 * s) * (0.5 + 0.5 * a))


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.size = np.ones(n, np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = int(p[x])
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self, members: Sequence[int] | None = None) -> list[list[int]]:
        """Sets with ≥ 2 elements among ``members`` (default all), each sorted, ordered by first element."""
        out: dict[int, list[int]] = {}
        for x in (range(len(self.parent)) if members is None else members):
            out.setdefault(self.find(int(x)), []).append(int(x))
        return sorted((sorted(g) for g in out.values() if len(g) > 1), key=lambda g: g[0])


def _dice_matrix(cands: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Kaggle Dice of every candidate (c,P) bool against every truth (n,P) bool: (c,n) float64."""
    cf = cands.astype(np.float32)
    tf = truth.astype(np.float32)
    inter = (cf @ tf.T).astype(np.float64)  # exact integer counts (< 2**24 pixels per box)
    sc = cands.sum(axis=1, dtype=np.float64)[:, None]
    st = truth.sum(axis=1, dtype=np.float64)[None, :]
    return dice_from_counts(inter, sc, st)


def group_ceiling(masks: Sequence[Any], max_members: int = 64) -> tuple[float, int, str, list[float]]:
    """Best mean Dice one shared mask can reach on a near-duplicate group.

    Args:
        masks: the labelled members' label maps (H,W) or :class:`CroppedMask` (resized to the
            first one's shape if needed).
        max_members: members' own masks tried as candidates (the largest ones when more).

    Returns:
        ``(ceiling, n, best, per_member)``: mean Dice of the best candidate, members counted,
        the winning candidate's name (``member:<index>``, ``empty``, ``union``,
        ``intersection``, ``majority``) and its Dice per member.
    """
    n = len(masks)
    if n == 0:
        return 1.0, 0, "empty", []
    first = _as_cropped(masks[0])
    cms = [first] + [_as_cropped(m, first.shape) for m in masks[1:]]
    box = _union_box([m.box for m in cms])
    if box is None:
        return 1.0, n, "empty", [1.0] * n
    crop = np.stack([m.within(box) for m in cms])  # (n,h,w): every candidate mask lives in this box
    classes = [1] if crop.max() <= 1 else [int(c) for c in np.unique(crop) if c != 0]
    names: list[str] = []
    cands: list[np.ndarray] = []
    order = np.argsort([-int((m > 0).sum()) for m in crop], kind="stable")[:max_members]
    seen: set[bytes] = set()
    for idx in sorted(order.tolist()):
        key = crop[idx].tobytes()
        if key not in seen and crop[idx].any():  # empty members are the "empty" candidate
            seen.add(key)
            names.append(f"member:{idx}")
            cands.append(crop[idx])
    names.append("empty")
    cands.append(np.zeros_like(crop[0]))
    names.append("union")
    cands.append(crop.max(axis=0))
    nonempty = [m for m in crop if m.any()]
    inter = nonempty[0].copy()
    for m in nonempty[1:]:
        inter = np.where(inter == m, inter, 0)
    names.append("intersection")
    cands.append(inter)
    names.append("majority")
    cands.append(_majority(crop, classes))
    cand = np.stack(cands).reshape(len(cands), -1)
    truth = crop.reshape(n, -1)
    if len(classes) <= 1:
        d = _dice_matrix(cand > 0, truth > 0)
    else:
        d = np.zeros((len(cands), n))
        present = np.zeros((len(cands), n))
        for c in classes:
            dc = _dice_matrix(cand == c, truth == c)
            inc = ((cand == c).any(axis=1)[:, None] | (truth == c).any(axis=1)[None, :])
            d += np.where(inc, dc, 0.0)
            present += inc
        d = np.where(present > 0, d / np.maximum(present, 1), 1.0)
    totals = d.sum(axis=1)
    best = int(np.argmax(totals))
    return float(totals[best] / n), n, names[best], [float(x) for x in d[best]]


def _majority(crop: np.ndarray, classes: list[int]) -> np.ndarray:
    n = crop.shape[0]
    if len(classes) <= 1:
        c = classes[0] if classes else 1
        return np.where((crop > 0).sum(axis=0) * 2 > n, c, 0).astype(crop.dtype)
    votes = np.stack([(crop == c).sum(axis=0) for c in [0] + classes])
    winner = np.argmax(votes, axis=0)  # ties → background (index 0 first)
    return np.asarray([0] + classes, crop.dtype)[winner]
