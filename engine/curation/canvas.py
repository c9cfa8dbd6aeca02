"""Canvas operations of the Mask editor: canvas strokes → label maps, zoom windows, Fabric.js
objects, polygons, and the canvas background.

Pure numpy/scipy/Pillow; no streamlit. The page draws on a canvas that shows a *window* of
the image (:class:`View`: a crop scaled to the canvas size, for zooming in on small
structures); everything drawn comes back either as the canvas's RGBA drawing layer
(:func:`apply_layer`) or as Fabric.js objects (:func:`rasterise_objects`, :func:`click_points`)
and is mapped back to full-resolution mask pixels here. Pixel operations (flood fill, holes,
diffs) are :mod:`engine.curation.masks`; the undo/redo stack and the save flow are
:mod:`engine.curation.session`.

Coordinate conventions (exact, tested):

- image pixel ``(row i, col j)`` covers ``[j, j+1) × [i, i+1)`` in image coordinates;
- a view with crop origin ``(y0, x0)``, crop size ``(h, w)`` and canvas size ``(H, W)`` maps
  image point ``(x, y)`` to canvas point ``((x - x0)·W/w, (y - y0)·H/h)``;
- a canvas layer becomes image pixels by sampling the canvas pixel under each image pixel's
  centre (nearest neighbour), so an image pixel is painted iff its centre is painted.

Class colours are :func:`engine.visualize.class_colour`; the eraser paints
:data:`ERASER_COLOUR`, which maps to background (0).

Example:
    >>> view = make_view((420, 580), zoom=4, center=(200, 300))     # doctest: +SKIP
    >>> res = st_canvas(..., width=view.canvas_w, height=view.canvas_h, return_image_data=True)  # doctest: +SKIP
    >>> new = apply_layer(mask, res.image_data, view, drawing_palette(ds.labels))  # doctest: +SKIP
    >>> stack.push(new)                                                  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from engine.errors import ConfigError, MaskError

#: Colour of eraser strokes on the canvas (not a class colour); pixels painted in it become 0.
ERASER_COLOUR: tuple[int, int, int] = (255, 0, 255)
#: Class id returned for eraser pixels by :func:`layer_to_labels`.
ERASE = 0
#: Marker for "not drawn" in label layers.
UNTOUCHED = -1
#: Default alpha above which a canvas pixel counts as drawn (anti-aliased stroke edges below it do not).
ALPHA_THRESHOLD = 127


# ----------------------------------------------------------------------------------- colours

def drawing_palette(labels: Mapping[int, str]) -> dict[int, tuple[int, int, int]]:
    """Drawing colour per class id (1..K-1) — the class colours, made unique.

    :func:`engine.visualize.class_colour` repeats after 10 classes and may coincide with the
    eraser colour; repeated colours are replaced by distinct generated ones so that every
    colour on the canvas maps back to exactly one class.

    Returns:
        ``{class_id: (r, g, b)}`` for every non-background class of ``labels``.
    """
    from engine.visualize import class_colour

    used = {ERASER_COLOUR, (0, 0, 0)}
    out: dict[int, tuple[int, int, int]] = {}
    for k in sorted(int(c) for c in labels if int(c) != 0):
        r, g, b = (int(v) for v in class_colour(k))
        col = (r, g, b)
        n = 0
        while col in used:
            n += 1  # golden-angle hues: far apart and deterministic
            col = _hsv_rgb((k * 0.618034 + n * 0.381966) % 1.0, 0.85, 0.95)
        used.add(col)
        out[k] = col
    return out


def _hsv_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def hex_colour(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` → ``#rrggbb``."""
    r, g, b = (int(v) for v in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


_RGB_RX = re.compile(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*([\d.]+)\s*)?\)")


def parse_colour(text: str | None) -> tuple[int, int, int, float] | None:
    """CSS colour (``#rgb``, ``#rrggbb``, ``#rrggbbaa``, ``rgb()``, ``rgba()``) → ``(r, g, b, alpha)``.

    Returns None for empty/transparent/unknown colours.
    """
    if not text or not isinstance(text, str):
        return None
    t = text.strip().lower()
    if t in ("", "transparent", "none"):
        return None
    if t.startswith("#"):
        h = t[1:]
        if len(h) in (3, 4):
            h = "".join(c * 2 for c in h)
        if len(h) not in (6, 8) or not all(c in "0123456789abcdef" for c in h):
            return None
        a = int(h[6:8], 16) / 255 if len(h) == 8 else 1.0
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), a
    m = _RGB_RX.fullmatch(t)
    if m:
        a = float(m.group(4)) if m.group(4) is not None else 1.0
        return int(float(m.group(1))), int(float(m.group(2))), int(float(m.group(3))), a
    named = {"black": (0, 0, 0), "white": (255, 255, 255), "red": (255, 0, 0), "green": (0, 128, 0),
             "blue": (0, 0, 255), "magenta": (255, 0, 255), "fuchsia": (255, 0, 255)}
    if t in named:
        return (*named[t], 1.0)
    return None


def _colour_table(palette: Mapping[int, Sequence[int]], eraser: bool) -> tuple[np.ndarray, np.ndarray]:
    ids = [int(k) for k in palette]
    cols = [tuple(int(v) for v in palette[k][:3]) for k in palette]
    if eraser:
        ids.append(ERASE)
        cols.append(ERASER_COLOUR)
    if not ids:
        raise ConfigError("no drawing colours", hint="pass the drawing palette of the label map (drawing_palette)")
    return np.asarray(ids, np.int16), np.asarray(cols, np.int32)


def nearest_class(rgb: Sequence[int], palette: Mapping[int, Sequence[int]], eraser: bool = True) -> int:
    """The class whose drawing colour is nearest to ``rgb`` (the eraser colour → 0)."""
    ids, cols = _colour_table(palette, eraser)
    d = ((cols - np.asarray(rgb[:3], np.int32)) ** 2).sum(axis=1)
    return int(ids[int(np.argmin(d))])


# ----------------------------------------------------------------------------------- layers

def layer_to_labels(rgba: np.ndarray, palette: Mapping[int, Sequence[int]], *,
                    alpha_threshold: int = ALPHA_THRESHOLD, eraser: bool = True) -> np.ndarray:
    """The canvas's RGBA drawing layer → class ids per canvas pixel.

    Args:
        rgba: uint8 (H,W,4) (``CanvasResult.image_data``); (H,W,3) is treated as opaque.
        palette: drawing colours ``{class_id: (r, g, b)}`` (:func:`drawing_palette`).
        alpha_threshold: pixels with alpha ``> alpha_threshold`` count as drawn (0 = any
            alpha; the default ignores the faint anti-aliased fringe of strokes).
        eraser: also recognise :data:`ERASER_COLOUR` (→ 0).

    Returns:
        int16 (H,W): the nearest palette class of every drawn pixel, :data:`UNTOUCHED` (-1)
        elsewhere.
    """
    a = np.asarray(rgba)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise MaskError(f"canvas layer must be (H,W,4) RGBA, got shape {a.shape}",
                        hint="pass CanvasResult.image_data (st_canvas(..., return_image_data=True))")
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    drawn = a[..., 3] > alpha_threshold if a.shape[2] == 4 else np.ones(a.shape[:2], bool)
    out = np.full(a.shape[:2], UNTOUCHED, np.int16)
    if not drawn.any():
        return out
    ids, cols = _colour_table(palette, eraser)
    px = a[..., :3][drawn].astype(np.int32)                         # (N,3)
    # few distinct colours in a drawing: classify the unique ones only
    packed = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
    uniq, inverse = np.unique(packed, return_inverse=True)
    urgb = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1)
    d = ((urgb[:, None, :] - cols[None, :, :]) ** 2).sum(axis=2)   # (U, P)
    out[drawn] = ids[np.argmin(d, axis=1)][inverse.ravel()]
    return out


# ----------------------------------------------------------------------------------- views

@dataclass(frozen=True)
class View:
    """A window of the image shown on the canvas: crop ``[y0:y0+height, x0:x0+width]`` scaled
    to ``canvas_h × canvas_w`` canvas pixels (per-axis scales ``canvas/crop``)."""

    y0: int
    x0: int
    height: int
    width: int
    canvas_h: int
    canvas_w: int
    image_h: int
    image_w: int

    @property
    def scale_x(self) -> float:
        return self.canvas_w / self.width

    @property
    def scale_y(self) -> float:
        return self.canvas_h / self.height

    @property
    def scale(self) -> float:
        """Mean canvas pixels per image pixel (for brush sizes)."""
        return 0.5 * (self.scale_x + self.scale_y)

    @property
    def zoom(self) -> float:
        """How much smaller than the whole image the window is (1 = whole image)."""
        return max(self.image_h / self.height, self.image_w / self.width)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of the crop (end exclusive)."""
        return self.y0, self.x0, self.y0 + self.height, self.x0 + self.width

    def canvas_to_image(self, u: float, v: float) -> tuple[float, float]:
        """Canvas point ``(u, v)`` (x right, y down) → image point ``(x, y)``."""
        return self.x0 + u / self.scale_x, self.y0 + v / self.scale_y

    def image_to_canvas(self, x: float, y: float) -> tuple[float, float]:
        """Image point ``(x, y)`` → canvas point ``(u, v)``."""
        return (x - self.x0) * self.scale_x, (y - self.y0) * self.scale_y

    def canvas_to_pixel(self, u: float, v: float) -> tuple[int, int]:
        """The image pixel ``(row, col)`` under canvas point ``(u, v)``, clamped to the crop."""
        x, y = self.canvas_to_image(u, v)
        col = min(max(int(math.floor(x)), self.x0), self.x0 + self.width - 1)
        row = min(max(int(math.floor(y)), self.y0), self.y0 + self.height - 1)
        return row, col

    def crop(self, arr: np.ndarray) -> np.ndarray:
        """``arr[y0:y1, x0:x1]`` (works for (H,W) and (H,W,C); for (C,H,W) use the last two axes)."""
        y0, x0, y1, x1 = self.box
        return arr[y0:y1, x0:x1]

    def sample_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Canvas row/col under the centre of each crop row/col (nearest neighbour)."""
        rows = np.minimum(np.floor((np.arange(self.height) + 0.5) * self.scale_y).astype(np.int64), self.canvas_h - 1)
        cols = np.minimum(np.floor((np.arange(self.width) + 0.5) * self.scale_x).astype(np.int64), self.canvas_w - 1)
        return rows, cols

    def display_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Crop row/col shown at each canvas row/col (nearest neighbour; inverse of the above)."""
        rows = np.minimum(np.floor((np.arange(self.canvas_h) + 0.5) / self.scale_y).astype(np.int64), self.height - 1)
        cols = np.minimum(np.floor((np.arange(self.canvas_w) + 0.5) / self.scale_x).astype(np.int64), self.width - 1)
        return rows, cols

    def to_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in ("y0", "x0", "height", "width", "canvas_h", "canvas_w",
                                                   "image_h", "image_w")}


def make_view(image_hw: tuple[int, int], zoom: float = 1.0, center: tuple[float, float] | None = None,
              max_canvas: tuple[int, int] = (560, 720)) -> View:
    """The canvas window for a zoom factor and a centre.

    Args:
        image_hw: image ``(H, W)``.
        zoom: ≥ 1; the crop is ``round(H/zoom) × round(W/zoom)`` pixels (at least 1).
        center: ``(row, col)`` the window is centred on (clamped so the crop stays inside the
            image); None = the image centre.
        max_canvas: ``(max height, max width)`` of the canvas in screen pixels; the crop is
            scaled by one factor (aspect kept) to fit.

    Returns:
        the :class:`View`.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    if h < 1 or w < 1:
        raise MaskError(f"image size must be positive, got {h}x{w}", hint="load a valid image")
    z = float(zoom)
    if not math.isfinite(z) or z < 1:
        raise ConfigError(f"zoom must be ≥ 1, got {zoom}", hint="use 1 (whole image), 2, 4, 8 ...")
    ch, cw = max(1, min(h, int(round(h / z)))), max(1, min(w, int(round(w / z))))
    cy, cx = (h / 2, w / 2) if center is None else (float(center[0]), float(center[1]))
    y0 = int(round(cy - ch / 2))
    x0 = int(round(cx - cw / 2))
    y0 = min(max(y0, 0), h - ch)
    x0 = min(max(x0, 0), w - cw)
    s = min(max_canvas[0] / ch, max_canvas[1] / cw)
    return View(y0, x0, ch, cw, max(1, int(round(ch * s))), max(1, int(round(cw * s))), h, w)


def resample_to_crop(canvas_labels: np.ndarray, view: View) -> np.ndarray:
    """A per-canvas-pixel array (canvas_h, canvas_w[, C]) → per-crop-pixel (height, width[, C]).

    Nearest neighbour at image pixel centres; a canvas of another size than the view (e.g.
    a device-pixel-ratio 2 export) is first mapped by its own scale.
    """
    a = np.asarray(canvas_labels)
    if a.shape[:2] != (view.canvas_h, view.canvas_w):
        # scale indices from the view's canvas to the actual array size
        fy, fx = a.shape[0] / view.canvas_h, a.shape[1] / view.canvas_w
        rows = np.minimum(np.floor((np.arange(view.height) + 0.5) * view.scale_y * fy).astype(np.int64), a.shape[0] - 1)
        cols = np.minimum(np.floor((np.arange(view.width) + 0.5) * view.scale_x * fx).astype(np.int64), a.shape[1] - 1)
    else:
        rows, cols = view.sample_indices()
    return a[rows[:, None], cols[None, :]]


def paste_labels(mask: np.ndarray, crop_labels: np.ndarray, view: View) -> np.ndarray:
    """Copy of ``mask`` with the drawn pixels (``>= 0``) of ``crop_labels`` written into the view's crop."""
    m = np.array(mask, dtype=np.uint8, copy=True)
    if m.shape != (view.image_h, view.image_w):
        raise MaskError(f"mask is {m.shape} but the view is of a {view.image_h}x{view.image_w} image",
                        hint="build the view from the mask's shape")
    if crop_labels.shape != (view.height, view.width):
        raise MaskError(f"labels are {crop_labels.shape}, the view's crop is {(view.height, view.width)}",
                        hint="resample with resample_to_crop first")
    y0, x0, y1, x1 = view.box
    sub = m[y0:y1, x0:x1]
    drawn = crop_labels >= 0
    sub[drawn] = crop_labels[drawn].astype(np.uint8)
    return m


def apply_layer(mask: np.ndarray, rgba: np.ndarray, view: View, palette: Mapping[int, Sequence[int]], *,
                alpha_threshold: int = ALPHA_THRESHOLD, eraser: bool = True) -> np.ndarray:
    """Apply the canvas's drawing layer to a mask.

    Args:
        mask: uint8 (H,W) label map being edited (not modified).
        rgba: the canvas layer uint8 (canvas_h, canvas_w, 4) drawn over ``view``.
        view: the window the canvas showed.
        palette: drawing colours (:func:`drawing_palette`).

    Returns:
        a new uint8 (H,W) mask: pixels under strokes get the stroke's class (eraser → 0),
        others are unchanged.
    """
    labels = layer_to_labels(rgba, palette, alpha_threshold=alpha_threshold, eraser=eraser)
    return paste_labels(mask, resample_to_crop(labels, view), view)


# ----------------------------------------------------------------------------------- Fabric objects

_ORIGIN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


def _num(v: Any, default: float = 0.0) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


def _origin(v: Any) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    return _ORIGIN.get(str(v), 0.0)


def _object_transform(obj: Mapping[str, Any], width: float, height: float):
    """Function mapping object-local points (relative to the object's centre) to canvas points.

    Fabric's ``left``/``top`` are the position of the ``originX``/``originY`` point of the
    object's bounding box, which includes the stroke (``width·scaleX + strokeWidth``). The
    canvas of streamlit-drawable-canvas 0.13 runs Fabric 7 (origin ``center`` for paths and
    polygons, ``pathOffset`` not serialised); Fabric 6-style ``left``/``top`` origins work too.
    """
    sx, sy = _num(obj.get("scaleX"), 1.0), _num(obj.get("scaleY"), 1.0)
    sw = _num(obj.get("strokeWidth"), 0.0)  # Fabric counts it in the box even without a stroke colour
    uniform = bool(obj.get("strokeUniform"))
    bw = width * sx + (sw if uniform else sw * sx)
    bh = height * sy + (sw if uniform else sw * sy)
    ang = math.radians(_num(obj.get("angle"), 0.0))
    ca, sa = math.cos(ang), math.sin(ang)
    ox, oy = _origin(obj.get("originX", "left")), _origin(obj.get("originY", "top"))
    # the origin point sits at (left, top); the centre is offset from it by the rotated vector
    dx, dy = (0.5 - ox) * bw, (0.5 - oy) * bh
    cx = _num(obj.get("left")) + dx * ca - dy * sa
    cy = _num(obj.get("top")) + dx * sa + dy * ca
    fx, fy = (-1.0 if obj.get("flipX") else 1.0), (-1.0 if obj.get("flipY") else 1.0)

    def apply(px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = px * sx * fx, py * sy * fy
        return cx + x * ca - y * sa, cy + x * sa + y * ca

    return apply


def _quad(p0: tuple[float, float], c: tuple[float, float], p1: tuple[float, float], n: int = 8):
    t = np.linspace(0, 1, n + 1)[1:]
    x = (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * c[0] + t ** 2 * p1[0]
    y = (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * c[1] + t ** 2 * p1[1]
    return list(zip(x.tolist(), y.tolist()))


def _cubic(p0, c1, c2, p1, n: int = 10):
    t = np.linspace(0, 1, n + 1)[1:]
    x = (1 - t) ** 3 * p0[0] + 3 * (1 - t) ** 2 * t * c1[0] + 3 * (1 - t) * t ** 2 * c2[0] + t ** 3 * p1[0]
    y = (1 - t) ** 3 * p0[1] + 3 * (1 - t) ** 2 * t * c1[1] + 3 * (1 - t) * t ** 2 * c2[1] + t ** 3 * p1[1]
    return list(zip(x.tolist(), y.tolist()))


def path_polylines(path: Sequence[Sequence[Any]]) -> list[list[tuple[float, float]]]:
    """Fabric/SVG path commands (``M``, ``L``, ``Q``, ``C``, ``Z``; absolute) → polylines."""
    lines: list[list[tuple[float, float]]] = []
    cur: list[tuple[float, float]] = []
    start = pos = (0.0, 0.0)
    for seg in path or ():
        if not seg:
            continue
        cmd, args = str(seg[0]), [_num(v) for v in seg[1:]]
        if cmd == "M" and len(args) >= 2:
            if len(cur) > 0:
                lines.append(cur)
            pos = start = (args[0], args[1])
            cur = [pos]
        elif cmd == "L" and len(args) >= 2:
            pos = (args[0], args[1])
            cur.append(pos)
        elif cmd == "Q" and len(args) >= 4:
            cur.extend(_quad(pos, (args[0], args[1]), (args[2], args[3])))
            pos = (args[2], args[3])
        elif cmd == "C" and len(args) >= 6:
            cur.extend(_cubic(pos, (args[0], args[1]), (args[2], args[3]), (args[4], args[5])))
            pos = (args[4], args[5])
        elif cmd in ("Z", "z"):
            cur.append(start)
            pos = start
    if cur:
        lines.append(cur)
    return lines


def polygon_mask(points: Sequence[tuple[float, float]], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside a polygon (canvas/image coordinates ``(x, y)``).

    Args:
        points: vertices ``[(x, y), ...]`` in pixel-edge coordinates (pixel ``(i, j)`` spans
            ``[j, j+1) × [i, i+1)``), at least 3.
        shape: output ``(H, W)``.

    Returns:
        bool (H,W).
    """
    from skimage.draw import polygon as _fill

    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), bool)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return out
    # pixel (i, j) has its centre at (j + 0.5, i + 0.5): shift so skimage's integer grid = centres
    rr, cc = _fill(pts[:, 1] - 0.5, pts[:, 0] - 0.5, shape=(h, w))
    out[rr, cc] = True
    return out


def stroke_mask(polyline: Sequence[tuple[float, float]], width: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels within ``width/2`` of a polyline (a round-capped brush stroke), bool (H,W).

    Exact distance test at pixel centres, restricted to the stroke's bounding box.
    """
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), bool)
    if not polyline:
        return out
    r = max(float(width) / 2.0, 0.5)
    p = np.asarray(polyline, np.float64)
    x0 = max(int(math.floor(p[:, 0].min() - r)), 0)
    x1 = min(int(math.ceil(p[:, 0].max() + r)) + 1, w)
    y0 = max(int(math.floor(p[:, 1].min() - r)), 0)
    y1 = min(int(math.ceil(p[:, 1].max() + r)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1]
    cx, cy = xx + 0.5, yy + 0.5
    best = np.full(cx.shape, np.inf)
    segs = list(zip(p[:-1], p[1:])) if len(p) > 1 else [(p[0], p[0])]
    for a, b in segs:
        d = b - a
        ll = float(d @ d)
        if ll == 0:
            dist = (cx - a[0]) ** 2 + (cy - a[1]) ** 2
        else:
            t = np.clip(((cx - a[0]) * d[0] + (cy - a[1]) * d[1]) / ll, 0, 1)
            dist = (cx - a[0] - t * d[0]) ** 2 + (cy - a[1] - t * d[1]) ** 2
        np.minimum(best, dist, out=best)
    out[y0:y1, x0:x1] = best <= r * r
    return out


def _object_class(obj: Mapping[str, Any], key: str, palette: Mapping[int, Sequence[int]], eraser: bool) -> int | None:
    c = parse_colour(obj.get(key))
    if c is None or c[3] <= 0:
        return None
    return nearest_class(c[:3], palette, eraser)


def rasterise_objects(objects: Iterable[Mapping[str, Any]], canvas_hw: tuple[int, int],
                      palette: Mapping[int, Sequence[int]], *, eraser: bool = True) -> np.ndarray:
    """Fabric.js objects (``CanvasResult.json_data["objects"]``) → class ids per canvas pixel.

    The fallback when the canvas sent no image data. Handles ``path`` (free-drawn brush and
    eraser strokes, with their stroke width), ``polygon``/``polyline``, ``rect``, ``line``
    and ``circle`` objects other than fill-tool clicks (see :func:`click_points`); later
    objects paint over earlier ones, like on the canvas.

    Returns:
        int16 (canvas_h, canvas_w) with :data:`UNTOUCHED` where nothing was drawn.
    """
    h, w = int(canvas_hw[0]), int(canvas_hw[1])
    out = np.full((h, w), UNTOUCHED, np.int16)
    for obj in objects or ():
        kind = str(obj.get("type", "")).lower()
        sw = _num(obj.get("strokeWidth"), 0.0)
        fill_cls = _object_class(obj, "fill", palette, eraser)
        stroke_cls = _object_class(obj, "stroke", palette, eraser)
        if kind == "path":
            lines = [ln for ln in path_polylines(obj.get("path") or []) if ln]
            if not lines:
                continue
            # Fabric 7 does not serialise pathOffset: it is the centre of the path's bounding box
            allpts = np.asarray([p for ln in lines for p in ln], np.float64)
            off = obj.get("pathOffset") or {}
            ox = _num(off.get("x"), float((allpts[:, 0].min() + allpts[:, 0].max()) / 2))
            oy = _num(off.get("y"), float((allpts[:, 1].min() + allpts[:, 1].max()) / 2))
            tf = _object_transform(obj, _num(obj.get("width")), _num(obj.get("height")))
            for line in lines:
                arr = np.asarray(line, np.float64)
                x, y = tf(arr[:, 0] - ox, arr[:, 1] - oy)
                pts = list(zip(x.tolist(), y.tolist()))
                if stroke_cls is not None and sw > 0:
                    out[stroke_mask(pts, sw * _num(obj.get("scaleX"), 1.0), (h, w))] = stroke_cls
        elif kind in ("polygon", "polyline"):
            pts_local = obj.get("points") or []
            if not pts_local:
                continue
            arr = np.asarray([(_num(p.get("x")), _num(p.get("y"))) for p in pts_local], np.float64)
            off = obj.get("pathOffset") or {}
            ox = _num(off.get("x"), float((arr[:, 0].min() + arr[:, 0].max()) / 2))
            oy = _num(off.get("y"), float((arr[:, 1].min() + arr[:, 1].max()) / 2))
            tf = _object_transform(obj, _num(obj.get("width")), _num(obj.get("height")))
            x, y = tf(arr[:, 0] - ox, arr[:, 1] - oy)
            pts = list(zip(x.tolist(), y.tolist()))
            if kind == "polygon" and fill_cls is not None and len(pts) >= 3:
                out[polygon_mask(pts, (h, w))] = fill_cls
            if stroke_cls is not None and sw > 0:
                ring = pts + [pts[0]] if kind == "polygon" else pts
                out[stroke_mask(ring, sw, (h, w))] = stroke_cls
        elif kind == "rect":
            ww, hh = _num(obj.get("width")), _num(obj.get("height"))
            tf = _object_transform(obj, ww, hh)
            x, y = tf(np.array([-ww / 2, ww / 2, ww / 2, -ww / 2]), np.array([-hh / 2, -hh / 2, hh / 2, hh / 2]))
            pts = list(zip(x.tolist(), y.tolist()))
            if fill_cls is not None:
                out[polygon_mask(pts, (h, w))] = fill_cls
            if stroke_cls is not None and sw > 0:
                out[stroke_mask(pts + [pts[0]], sw, (h, w))] = stroke_cls
        elif kind == "line":
            x1, y1, x2, y2 = (_num(obj.get(k)) for k in ("x1", "y1", "x2", "y2"))
            ww, hh = abs(x2 - x1), abs(y2 - y1)
            tf = _object_transform(obj, ww, hh)
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            x, y = tf(np.array([x1 - mx, x2 - mx]), np.array([y1 - my, y2 - my]))
            if stroke_cls is not None and sw > 0:
                out[stroke_mask(list(zip(x.tolist(), y.tolist())), sw, (h, w))] = stroke_cls
    return out


def apply_objects(mask: np.ndarray, objects: Iterable[Mapping[str, Any]], view: View,
                  palette: Mapping[int, Sequence[int]], *, eraser: bool = True) -> np.ndarray:
    """Like :func:`apply_layer`, from Fabric objects instead of the rendered layer."""
    labels = rasterise_objects(objects, (view.canvas_h, view.canvas_w), palette, eraser=eraser)
    return paste_labels(mask, resample_to_crop(labels, view), view)


def click_points(objects: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """Canvas centres ``(u, v)`` of the fill-tool clicks (``drawing_mode="point"`` circles), in order."""
    pts = []
    for obj in objects or ():
        if str(obj.get("type", "")).lower() != "circle":
            continue
        r = _num(obj.get("radius"))
        tf = _object_transform(obj, 2 * r, 2 * r)
        x, y = tf(np.zeros(1), np.zeros(1))
        pts.append((float(x[0]), float(y[0])))
    return pts


# ----------------------------------------------------------------------------------- rendering

def render_view(img: np.ndarray, mask: np.ndarray | None, view: View, alpha: float = 0.4,
                contour: bool = True) -> np.ndarray:
    """The canvas background: the view's crop of the image with the mask overlaid, scaled
    (nearest neighbour) to exactly ``canvas_h × canvas_w`` so it lines up with the strokes.

    Returns:
        uint8 RGB (canvas_h, canvas_w, 3).
    """
    from engine.visualize import overlay, to_rgb_uint8

    rgb = to_rgb_uint8(img)
    y0, x0, y1, x1 = view.box
    crop_img = rgb[y0:y1, x0:x1]
    crop = overlay(crop_img, None if mask is None else np.asarray(mask)[y0:y1, x0:x1], alpha=alpha, contour=contour)
    rows, cols = view.display_indices()
    return np.ascontiguousarray(crop[rows[:, None], cols[None, :]])


def window_outline(img_rgb: np.ndarray, view: View, colour: tuple[int, int, int] = (255, 255, 0),
                   thickness: int = 2) -> np.ndarray:
    """Copy of an RGB image (H,W,3) with the view's crop outlined (the navigator thumbnail)."""
    out = np.array(img_rgb, copy=True)
    y0, x0, y1, x1 = view.box
    t = max(1, int(thickness))
    out[y0:min(y0 + t, y1), x0:x1] = colour
    out[max(y1 - t, y0):y1, x0:x1] = colour
    out[y0:y1, x0:min(x0 + t, x1)] = colour
    out[y0:y1, max(x1 - t, x0):x1] = colour
    return out
