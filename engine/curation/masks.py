"""Mask operations of the editor: paint-bucket fill, hole filling and version diffs.

Pure numpy/scipy; every function takes uint8 (H,W) label maps (background 0) and returns new
arrays, never modifying its input.

Example:
    >>> m = np.zeros((4, 4), np.uint8); m[1:3, 1:3] = 1
    >>> int(flood_fill(m, 0, 0, 2).sum()), mask_diff(m, fill_holes(m))["added"]
    (28, 0)
"""

from __future__ import annotations

import numpy as np

from engine.errors import ConfigError, MaskError

#: Colours of :func:`diff_image`.
DIFF_COLOURS: dict[str, tuple[int, int, int]] = {
    "added": (40, 200, 60),
    "removed": (230, 40, 40),
    "changed class": (250, 210, 30),
}

def flood_fill(mask: np.ndarray, row: int, col: int, value: int, connectivity: int = 4) -> np.ndarray:
    """Paint-bucket fill: the connected region of equal label containing ``(row, col)`` gets ``value``.

    Args:
        mask: uint8 (H,W) label map (not modified).
        row, col: the clicked pixel.
        value: class id to paint (0 = erase the region).
        connectivity: 4 (default; a region does not leak through diagonal gaps) or 8.

    Returns:
        a new uint8 (H,W) mask.

    Raises:
        MaskError: the pixel is outside the mask.
    """
    from scipy import ndimage

    m = np.asarray(mask)
    r, c = int(row), int(col)
    if not (0 <= r < m.shape[0] and 0 <= c < m.shape[1]):
        raise MaskError(f"fill point ({r}, {c}) is outside the {m.shape[0]}x{m.shape[1]} mask",
                        hint="click inside the image")
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}", hint="use 4 or 8")
    out = np.array(m, dtype=np.uint8, copy=True)
    if int(out[r, c]) == int(value):
        return out
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    lab, _ = ndimage.label(out == out[r, c], structure=structure)
    out[lab == lab[r, c]] = np.uint8(value)
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes inside each class's regions (background enclosed by that class) get that class.

    Args:
        mask: uint8 (H,W) label map (not modified).

    Returns:
        a new uint8 (H,W) mask; background touching the border or another class stays.
    """
    from engine.postprocess import fill_label_holes

    return fill_label_holes(mask)


def mask_diff(old: np.ndarray, new: np.ndarray) -> dict[str, int]:
    """Pixel counts of what changed from ``old`` to ``new`` (same shape).

    Returns:
        ``added`` (background → class), ``removed`` (class → background), ``changed class``
        (class → another class), ``unchanged foreground``, ``area old``, ``area new``.
    """
    a, b = np.asarray(old), np.asarray(new)
    if a.shape != b.shape:
        raise MaskError(f"masks differ in size: {a.shape} vs {b.shape}", hint="compare versions of one case")
    fa, fb = a > 0, b > 0
    return {"added": int(np.count_nonzero(~fa & fb)), "removed": int(np.count_nonzero(fa & ~fb)),
            "changed class": int(np.count_nonzero(fa & fb & (a != b))),
            "unchanged foreground": int(np.count_nonzero(fa & fb & (a == b))),
            "area old": int(np.count_nonzero(fa)), "area new": int(np.count_nonzero(fb))}


def diff_image(old: np.ndarray, new: np.ndarray, img: np.ndarray | None = None,
               alpha: float = 0.8) -> tuple[np.ndarray, dict[str, int]]:
    """Colour what changed: added pixels green, removed red, class changes yellow.

    Args:
        old, new: uint8 (H,W) label maps.
        img: optional image (C,H,W)/(H,W) shown dimmed underneath; unchanged foreground is
            drawn light grey.

    Returns:
        ``(uint8 RGB (H,W,3), counts)`` with counts from :func:`mask_diff`.
    """
    from engine.visualize import to_rgb_uint8

    counts = mask_diff(old, new)
    a, b = np.asarray(old), np.asarray(new)
    base = (to_rgb_uint8(img).astype(np.float32) * 0.5 if img is not None
            else np.zeros(a.shape + (3,), np.float32))
    if base.shape[:2] != a.shape:
        raise MaskError(f"image {base.shape[:2]} and masks {a.shape} differ in size", hint="use the case's image")
    out = base.copy()
    fa, fb = a > 0, b > 0
    same = fa & fb & (a == b)
    out[same] = 0.5 * base[same] + 0.5 * np.array((200, 200, 200), np.float32)
    for name, sel in (("added", ~fa & fb), ("removed", fa & ~fb), ("changed class", fa & fb & (a != b))):
        col = np.array(DIFF_COLOURS[name], np.float32)
        out[sel] = (1 - alpha) * base[sel] + alpha * col
    return np.clip(out, 0, 255).astype(np.uint8), counts


def union_masks(theirs: np.ndarray, mine: np.ndarray) -> tuple[np.ndarray, int]:
    """Merge two label maps so that nothing either person labelled is lost.

    Every pixel labelled (non-zero) in either mask stays labelled. Where BOTH labelled a pixel with
    DIFFERENT classes, ``mine`` wins (the merge is made by the person saving it, who sees the diff);
    those pixels are counted.

    Args:
        theirs, mine: integer label maps (H,W) of the same shape.

    Returns:
        (uint8 (H,W) merged mask, number of pixels where the two disagreed on the class).

    Example:
        >>> a = np.array([[1, 0], [0, 0]]); b = np.array([[0, 2], [0, 0]])
        >>> union_masks(a, b)[0].tolist(), union_masks(a, b)[1]
        ([[1, 2], [0, 0]], 0)
    """
    t, m = np.asarray(theirs), np.asarray(mine)
    if t.shape != m.shape or t.ndim != 2:
        raise MaskError(f"cannot merge masks of shapes {t.shape} and {m.shape}", hint="merge masks of one case")
    merged = np.where(m > 0, m, t).astype(np.uint8)
    clash = int(np.count_nonzero((t > 0) & (m > 0) & (t != m)))
    return merged, clash
