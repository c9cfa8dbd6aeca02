"""Rendering helpers for people: overlays, heat maps, disagreement maps, thumbnails, PNG bytes.

Pure numpy/Pillow (no streamlit), shared by the app, the CLI and training previews. All
functions return uint8 RGB arrays (H,W,3) unless stated.

Example:
    >>> rgb = overlay(img, mask, alpha=0.4)           # doctest: +SKIP
    >>> png = png_bytes(rgb)                           # doctest: +SKIP
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from engine.io.masks import CLASS_COLOURS

#: Colours of :func:`disagreement_map` categories for (ground truth, model A, model B).
DISAGREEMENT_COLOURS: dict[str, tuple[int, int, int]] = {
    "all agree (foreground)": (255, 255, 255),
    "missed by A and B": (230, 25, 75),
    "ground truth + A only": (255, 160, 60),
    "ground truth + B only": (60, 180, 255),
    "A only (false positive)": (255, 225, 25),
    "B only (false positive)": (145, 30, 180),
    "A and B, not ground truth": (0, 200, 120),
}

# (gt, a, b) bit pattern -> category name
_DIS_CODES = {
    (1, 1, 1): "all agree (foreground)",
    (1, 0, 0): "missed by A and B",
    (1, 1, 0): "ground truth + A only",
    (1, 0, 1): "ground truth + B only",
    (0, 1, 0): "A only (false positive)",
    (0, 0, 1): "B only (false positive)",
    (0, 1, 1): "A and B, not ground truth",
}

_INFERNO = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
                     (245, 125, 21), (250, 193, 39), (252, 255, 164)], dtype=np.float32)


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Image (C,H,W) / (H,W) / (H,W,C) float [0,1] or uint8 → uint8 (H,W,3)."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    elif a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] in (1, 3) and a.shape[0] < a.shape[2]:
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        f = a.astype(np.float32)
        if f.size and (f.min() < 0 or f.max() > 1):
            lo, hi = float(f.min()), float(f.max())
            f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
        a = np.clip(np.rint(f * 255), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a)


def class_colour(class_id: int) -> tuple[int, int, int]:
    return CLASS_COLOURS[class_id % len(CLASS_COLOURS)]


def overlay(img: np.ndarray, mask: np.ndarray | None, alpha: float = 0.45, contour: bool = True,
            colours: Sequence[tuple[int, int, int]] = CLASS_COLOURS, hidden: Sequence[int] = ()) -> np.ndarray:
    """Image with each class filled in its colour at ``alpha`` (and outlined when ``contour``).

    Args:
        img: image (C,H,W)/(H,W) float [0,1] or uint8.
        mask: uint8 (H,W) label map (None = just the image).
        alpha: fill opacity in [0, 1].
        contour: draw a fully opaque 1-px outline of every region.
        hidden: class ids not to draw.
    """
    base = to_rgb_uint8(img).astype(np.float32)
    if mask is None:
        return base.astype(np.uint8)
    m = np.asarray(mask)
    if m.shape != base.shape[:2]:
        raise ValueError(f"mask {m.shape} and image {base.shape[:2]} differ in size")
    lut = np.array([colours[i % len(colours)] for i in range(256)], np.float32)
    show = m > 0
    for h in hidden:
        show &= m != h
    col = lut[m]
    a = float(np.clip(alpha, 0.0, 1.0))
    out = base.copy()
    out[show] = (1 - a) * base[show] + a * col[show]
    if contour:
        edge = _edges(m) & show
        out[edge] = col[edge]
    return np.clip(out, 0, 255).astype(np.uint8)


def _edges(m: np.ndarray) -> np.ndarray:
    e = np.zeros(m.shape, bool)
    e[1:, :] |= m[1:, :] != m[:-1, :]
    e[:-1, :] |= m[:-1, :] != m[1:, :]
    e[:, 1:] |= m[:, 1:] != m[:, :-1]
    e[:, :-1] |= m[:, :-1] != m[:, 1:]
    return e


def colormap(values: np.ndarray) -> np.ndarray:
    """float (H,W) in [0,1] → uint8 (H,W,3) with an inferno-like colour map."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0, 1) * (len(_INFERNO) - 1)
    i = np.floor(v).astype(int)
    j = np.minimum(i + 1, len(_INFERNO) - 1)
    f = (v - i)[..., None]
    return np.rint(_INFERNO[i] * (1 - f) + _INFERNO[j] * f).astype(np.uint8)


def heatmap(prob: np.ndarray, img: np.ndarray | None = None, alpha: float = 0.6) -> np.ndarray:
    """Probability map (H,W) as a colour heat map, blended over ``img`` when given."""
    hm = colormap(prob).astype(np.float32)
    if img is None:
        return hm.astype(np.uint8)
    base = to_rgb_uint8(img).astype(np.float32)
    return np.clip((1 - alpha) * base + alpha * hm, 0, 255).astype(np.uint8)


def disagreement_map(gt: np.ndarray | None, a: np.ndarray, b: np.ndarray, img: np.ndarray | None = None,
                     alpha: float = 0.75) -> tuple[np.ndarray, dict[str, int]]:
    """Colour each pixel by which of ground truth, model A, model B call it foreground.

    Args:
        gt: ground-truth label map (H,W) or None (then only A vs B: GT treated as absent).
        a, b: predicted label maps (H,W); any non-zero class counts as foreground.
        img: optional background image.

    Returns:
        ``(uint8 RGB (H,W,3), {category: pixel count})`` with categories from :data:`DISAGREEMENT_COLOURS`.
    """
    A, B = np.asarray(a) > 0, np.asarray(b) > 0
    G = np.asarray(gt) > 0 if gt is not None else np.zeros_like(A)
    base = to_rgb_uint8(img).astype(np.float32) * 0.5 if img is not None else np.zeros(A.shape + (3,), np.float32)
    out = base.copy()
    counts: dict[str, int] = {}
    for (g, x, y), name in _DIS_CODES.items():
        if gt is None and g:
            continue
        sel = (G == bool(g)) & (A == bool(x)) & (B == bool(y))
        n = int(sel.sum())
        if n:
            counts[name] = n
            col = np.array(DISAGREEMENT_COLOURS[name], np.float32)
            out[sel] = (1 - alpha) * base[sel] + alpha * col
    return np.clip(out, 0, 255).astype(np.uint8), counts


def difference_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| of two same-size images, contrast-stretched, as RGB (H,W,3)."""
    fa = to_rgb_uint8(a).astype(np.int16)
    fb = to_rgb_uint8(b).astype(np.int16)
    if fa.shape != fb.shape:
        raise ValueError(f"images differ in size: {fa.shape[:2]} vs {fb.shape[:2]}")
    d = np.abs(fa - fb).max(axis=2).astype(np.float32)
    hi = float(np.percentile(d, 99.5)) if d.size else 0.0
    return colormap(d / hi if hi > 0 else d)


def resize_rgb(rgb: np.ndarray, max_side: int, reducing_gap: float | None = None) -> np.ndarray:
    """Shrink (never enlarge) a uint8 (H,W,3) image so its longer side is ``max_side`` (bilinear;
    ``reducing_gap`` as in Pillow's ``Image.resize``: antialiased, faster reduction)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return rgb
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=reducing_gap))


def fit_square(rgb: np.ndarray, side: int, bg: int = 0) -> np.ndarray:
    """Letterbox an RGB image onto a ``side``×``side`` canvas (aspect kept, never a 0-px edge).

    Gallery thumbnails use it so extreme shapes (a 20×3000 strip) still give a valid, uniform tile.
    """
    from PIL import Image

    h, w = rgb.shape[:2]
    s = side / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = np.asarray(Image.fromarray(to_rgb_uint8(rgb)).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.full((side, side, 3), bg, np.uint8)
    y, x = (side - nh) // 2, (side - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode uint8 (H,W,3)/(H,W) as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int = 85) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb)).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_grid(images: Sequence[np.ndarray], ncols: int, pad: int = 4, bg: int = 255) -> np.ndarray:
    """Tile same-height RGB images into one grid image."""
    if not images:
        return np.zeros((1, 1, 3), np.uint8)
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    nrows = -(-len(images) // ncols)
    out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), bg, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + im.shape[0], x:x + im.shape[1]] = to_rgb_uint8(im)
    return out
