"""engine.curation edit tools: canvas layers → masks, zoom windows (exact coordinate mapping), Fabric objects,
polygons, flood fill, diffs, the undo/redo stack, the edit session's save flow and the case queue."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from engine.curation import (
    DIFF_COLOURS,
    ERASER_COLOUR,
    UNTOUCHED,
    EditSession,
    EditStack,
    View,
    apply_layer,
    apply_objects,
    case_queue,
    click_points,
    diff_image,
    drawing_palette,
    fill_holes,
    flood_fill,
    hex_colour,
    layer_to_labels,
    make_view,
    mask_diff,
    nearest_class,
    next_case,
    parse_colour,
    paste_labels,
    path_polylines,
    polygon_mask,
    rasterise_objects,
    render_view,
    resample_to_crop,
    stroke_mask,
    version_history,
    version_mask,
    window_outline,
)
from engine.errors import ConfigError, MaskError
from engine.visualize import class_colour

LABELS3 = {0: "background", 1: "nerve", 2: "vessel"}


def rgba(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w, 4), np.uint8)


def paint(layer: np.ndarray, sel, rgb, alpha: int = 255) -> None:
    """Colour the pixels ``sel`` (a 2-D index or boolean mask) of an RGBA layer."""
    region = np.zeros(layer.shape[:2], bool)
    region[sel] = True
    layer[region, :3] = rgb
    layer[region, 3] = alpha


# ------------------------------------------------------------------------------------ colours

def test_palette_uses_class_colours_and_is_unique() -> None:
    pal = drawing_palette(LABELS3)
    assert pal == {1: class_colour(1), 2: class_colour(2)}
    many = drawing_palette({k: f"c{k}" for k in range(25)})
    assert sorted(many) == list(range(1, 25))
    cols = list(many.values())
    assert len(set(cols)) == len(cols)
    assert ERASER_COLOUR not in cols and (0, 0, 0) not in cols
    # first nine classes keep their overlay colours (class 8 is white, still unique)
    assert all(many[k] == class_colour(k) for k in range(1, 10))


def test_parse_colour_and_hex() -> None:
    assert parse_colour("#e69f00") == (230, 159, 0, 1.0)
    assert parse_colour("#fff") == (255, 255, 255, 1.0)
    assert parse_colour("rgba(1, 2, 3, 0.5)") == (1, 2, 3, 0.5)
    assert parse_colour("rgb(10,20,30)") == (10, 20, 30, 1.0)
    assert parse_colour("#11223380")[:3] == (17, 34, 51) and abs(parse_colour("#11223380")[3] - 128 / 255) < 1e-9
    assert parse_colour("") is None and parse_colour(None) is None and parse_colour("transparent") is None
    assert parse_colour("#zzzzzz") is None
    assert hex_colour((230, 159, 0)) == "#e69f00"
    assert parse_colour(hex_colour((1, 2, 254)))[:3] == (1, 2, 254)


def test_nearest_class() -> None:
    pal = drawing_palette(LABELS3)
    assert nearest_class(class_colour(2), pal) == 2
    assert nearest_class(tuple(v + 6 for v in class_colour(1)), pal) == 1
    assert nearest_class(ERASER_COLOUR, pal) == 0
    assert nearest_class((250, 5, 250), pal) == 0
    with pytest.raises(ConfigError):
        nearest_class((1, 2, 3), {}, eraser=False)


# ------------------------------------------------------------------------------------ layers

def test_layer_to_labels_classes_eraser_and_fringe() -> None:
    pal = drawing_palette(LABELS3)
    layer = rgba(6, 8)
    paint(layer, (slice(0, 2), slice(0, 3)), class_colour(1))
    paint(layer, (slice(2, 4), slice(0, 3)), class_colour(2))
    paint(layer, (slice(4, 6), slice(0, 3)), ERASER_COLOUR)
    # anti-aliased fringe: faint alpha, colour slightly off after un-premultiplying
    paint(layer, (slice(0, 6), 3), tuple(min(255, v + 9) for v in class_colour(1)), alpha=60)
    # a mixed edge colour between class 1 and 2 at full alpha goes to the nearer one
    mix = tuple(int(0.8 * a + 0.2 * b) for a, b in zip(class_colour(2), class_colour(1)))
    paint(layer, (0, 7), mix)
    out = layer_to_labels(layer, pal)
    assert out.dtype == np.int16 and out.shape == (6, 8)
    assert (out[0:2, 0:3] == 1).all() and (out[2:4, 0:3] == 2).all() and (out[4:6, 0:3] == 0).all()
    assert (out[:, 3] == UNTOUCHED).all()
    assert (out[:, 4:7] == UNTOUCHED).all()
    assert out[0, 7] == 2
    loose = layer_to_labels(layer, pal, alpha_threshold=0)
    assert (loose[:, 3] == 1).all()
    no_eraser = layer_to_labels(layer, pal, eraser=False)
    assert set(np.unique(no_eraser[4:6, 0:3])) <= {1, 2}  # magenta is then just the nearest class colour


def test_layer_to_labels_rejects_bad_shapes() -> None:
    with pytest.raises(MaskError):
        layer_to_labels(np.zeros((4, 4), np.uint8), drawing_palette(LABELS3))
    opaque = np.zeros((2, 2, 3), np.uint8)
    opaque[:] = class_colour(1)
    assert (layer_to_labels(opaque, drawing_palette(LABELS3)) == 1).all()


# ------------------------------------------------------------------------------------ views

def test_make_view_whole_image_and_zoom() -> None:
    v = make_view((420, 580), 1, max_canvas=(560, 720))
    assert (v.y0, v.x0, v.height, v.width) == (0, 0, 420, 580)
    assert v.canvas_w == 720 and v.canvas_h == round(420 * 720 / 580)
    assert v.zoom == 1
    z = make_view((420, 580), 4, center=(100, 560), max_canvas=(560, 720))
    assert (z.height, z.width) == (105, 145)
    assert z.y0 == round(100 - 105 / 2) and z.x0 == 580 - 145  # clamped at the right border
    assert make_view((420, 580), 4, center=(100, 300)).x0 == round(300 - 145 / 2)
    assert z.canvas_w <= 720 and z.canvas_h <= 560
    assert abs(z.scale_x - z.scale_y) < 0.02  # aspect kept
    assert z.zoom == pytest.approx(4, rel=0.01)
    corner = make_view((64, 64), 8, center=(0, 0))
    assert (corner.y0, corner.x0, corner.height, corner.width) == (0, 0, 8, 8)
    huge = make_view((10, 10), 1000)
    assert (huge.height, huge.width) == (1, 1)
    with pytest.raises(ConfigError):
        make_view((10, 10), 0.5)
    with pytest.raises(MaskError):
        make_view((0, 10), 1)


def test_view_coordinates_round_trip() -> None:
    v = make_view((420, 580), 3, center=(211, 97), max_canvas=(560, 720))
    for u, w in [(0.0, 0.0), (13.7, 250.2), (v.canvas_w - 0.01, v.canvas_h - 0.01)]:
        x, y = v.canvas_to_image(u, w)
        assert v.image_to_canvas(x, y) == pytest.approx((u, w))
    assert v.canvas_to_image(0, 0) == (v.x0, v.y0)
    assert v.canvas_to_image(v.canvas_w, v.canvas_h) == pytest.approx((v.x0 + v.width, v.y0 + v.height))
    assert v.canvas_to_pixel(-5, -5) == (v.y0, v.x0)
    assert v.canvas_to_pixel(1e6, 1e6) == (v.y0 + v.height - 1, v.x0 + v.width - 1)


def test_exact_example_mapping() -> None:
    """10x10 image, zoom 2 at the top-left: the canvas shows rows/cols 0-4 at 20 px each."""
    v = make_view((10, 10), 2, center=(0, 0), max_canvas=(100, 100))
    assert (v.y0, v.x0, v.height, v.width, v.canvas_h, v.canvas_w) == (0, 0, 5, 5, 100, 100)
    layer = rgba(100, 100)
    paint(layer, (slice(40, 60), slice(20, 40)), class_colour(1))   # canvas rows 40-59, cols 20-39
    out = apply_layer(np.zeros((10, 10), np.uint8), layer, v, drawing_palette(LABELS3))
    expect = np.zeros((10, 10), np.uint8)
    expect[2, 1] = 1
    assert np.array_equal(out, expect)
    assert v.canvas_to_pixel(30, 50) == (2, 1)
    # a stroke covering less than half of a pixel's footprint (not its centre) does not paint it
    layer2 = rgba(100, 100)
    paint(layer2, (slice(40, 49), slice(20, 29)), class_colour(1))
    assert apply_layer(np.zeros((10, 10), np.uint8), layer2, v, drawing_palette(LABELS3)).sum() == 0


@pytest.mark.parametrize("hw,zoom,center,maxc", [((420, 580), 1, None, (560, 720)),
                                                 ((420, 580), 4, (300, 120), (560, 720)),
                                                 ((64, 64), 1, None, (560, 720)),
                                                 ((37, 53), 3, (5, 50), (333, 401)),
                                                 ((256, 256), 16, (128, 3), (560, 720))])
def test_displayed_pixels_map_back_exactly(hw, zoom, center, maxc) -> None:
    """Painting the canvas footprint of any set of image pixels (as render_view displays them)
    gives back exactly that set — the canvas→mask mapping is exact at every zoom."""
    rng = np.random.default_rng(0)
    v = make_view(hw, zoom, center, maxc)
    assert v.scale_x >= 1 and v.scale_y >= 1
    want = np.zeros(hw, np.uint8)
    crop_sel = rng.random((v.height, v.width)) < 0.3
    classes = rng.integers(1, 3, (v.height, v.width))
    want[v.y0:v.y0 + v.height, v.x0:v.x0 + v.width][crop_sel] = classes[crop_sel]
    # what render_view shows at each canvas pixel
    rows, cols = v.display_indices()
    shown = want[v.y0:v.y0 + v.height, v.x0:v.x0 + v.width][rows[:, None], cols[None, :]]
    pal = drawing_palette(LABELS3)
    layer = rgba(v.canvas_h, v.canvas_w)
    for k in (1, 2):
        paint(layer, shown == k, pal[k])
    got = apply_layer(np.zeros(hw, np.uint8), layer, v, pal)
    assert np.array_equal(got, want)


def test_render_view_lines_up_with_the_mapping() -> None:
    img = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(1, 30, 40)
    mask = np.zeros((30, 40), np.uint8)
    mask[12, 17] = 1
    v = make_view((30, 40), 2, center=(12, 17), max_canvas=(300, 300))
    bg = render_view(img, mask, v, alpha=1.0, contour=False)
    assert bg.shape == (v.canvas_h, v.canvas_w, 3) and bg.dtype == np.uint8
    coloured = (bg == np.array(class_colour(1), np.uint8)).all(axis=2)
    assert coloured.any()
    layer = rgba(v.canvas_h, v.canvas_w)
    paint(layer, coloured, class_colour(1))
    assert np.array_equal(apply_layer(np.zeros_like(mask), layer, v, drawing_palette(LABELS3)), mask)
    # the footprint is where the mapping says: its centre maps to pixel (12, 17)
    r, c = np.nonzero(coloured)
    assert v.canvas_to_pixel(c.mean() + 0.5, r.mean() + 0.5) == (12, 17)
    whole = render_view(img, None, make_view((30, 40), 1, max_canvas=(30, 40)))
    assert whole.shape == (30, 40, 3)


def test_resample_handles_a_high_dpi_layer() -> None:
    v = make_view((10, 10), 2, center=(0, 0), max_canvas=(100, 100))
    layer = rgba(200, 200)  # device pixel ratio 2
    paint(layer, (slice(80, 120), slice(40, 80)), class_colour(1))
    out = apply_layer(np.zeros((10, 10), np.uint8), layer, v, drawing_palette(LABELS3))
    assert np.argwhere(out).tolist() == [[2, 1]]


def test_paste_keeps_pixels_outside_the_window_and_undrawn() -> None:
    mask = np.full((8, 8), 2, np.uint8)
    v = make_view((8, 8), 2, center=(6, 6), max_canvas=(8, 8))
    crop = np.full((v.height, v.width), UNTOUCHED, np.int16)
    crop[0, 0] = 0
    crop[1, 1] = 1
    out = paste_labels(mask, crop, v)
    assert out[v.y0, v.x0] == 0 and out[v.y0 + 1, v.x0 + 1] == 1
    assert (out != mask).sum() == 2 and mask.min() == 2  # input untouched
    with pytest.raises(MaskError):
        paste_labels(np.zeros((5, 5), np.uint8), crop, v)
    with pytest.raises(MaskError):
        paste_labels(mask, crop[:1], v)


def test_eraser_and_overlapping_strokes() -> None:
    pal = drawing_palette(LABELS3)
    v = make_view((6, 6), 1, max_canvas=(6, 6))
    mask = np.ones((6, 6), np.uint8)
    layer = rgba(6, 6)
    paint(layer, (slice(0, 6), slice(0, 3)), class_colour(2))
    paint(layer, (slice(0, 3), slice(0, 6)), ERASER_COLOUR)  # drawn later, on top
    out = apply_layer(mask, layer, v, pal)
    assert (out[0:3, :] == 0).all() and (out[3:, 0:3] == 2).all() and (out[3:, 3:] == 1).all()


# ------------------------------------------------------------------------------------ Fabric objects

def fabric_polygon(points, colour, sw=1.0, dx=0.0, dy=0.0):
    """A polygon as the canvas serialises it (Fabric v6, origin left/top, never moved unless dx/dy)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    return {"type": "Polygon", "version": "6.7.1", "originX": "left", "originY": "top",
            "left": min(xs) - sw / 2 + dx, "top": min(ys) - sw / 2 + dy, "width": w, "height": h,
            "fill": colour, "stroke": colour, "strokeWidth": sw, "scaleX": 1, "scaleY": 1, "angle": 0,
            "points": [{"x": x, "y": y} for x, y in points],
            "pathOffset": {"x": min(xs) + w / 2, "y": min(ys) + h / 2}}


def fabric_path(points, colour, sw):
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    path = [["M", *points[0]]] + [["Q", *points[i], *points[i + 1]] for i in range(len(points) - 2)] + \
        [["L", *points[-1]]]
    return {"type": "Path", "originX": "left", "originY": "top", "left": min(xs) - sw / 2, "top": min(ys) - sw / 2,
            "width": w, "height": h, "fill": None, "stroke": colour, "strokeWidth": sw, "strokeLineCap": "round",
            "scaleX": 1, "scaleY": 1, "angle": 0, "path": path, "pathOffset": {"x": min(xs) + w / 2,
                                                                               "y": min(ys) + h / 2}}


def test_polygon_mask_pixel_centres() -> None:
    sq = polygon_mask([(0, 0), (4, 0), (4, 4), (0, 4)], (6, 6))
    assert sq.sum() == 16 and sq[:4, :4].all()
    tri = polygon_mask([(0, 0), (60, 0), (0, 60)], (64, 64))
    assert abs(int(tri.sum()) - 1800) <= 64  # area 1800, boundary pixels either way
    assert tri[0, 0] and not tri[40, 40]
    assert not polygon_mask([(0, 0), (3, 3)], (5, 5)).any()


def test_stroke_mask_round_brush() -> None:
    s = stroke_mask([(2.0, 5.5), (12.0, 5.5)], 3, (12, 16))
    rows = np.nonzero(s.any(axis=1))[0]
    assert rows.tolist() == [4, 5, 6]  # centres within 1.5 of y = 5.5
    assert np.nonzero(s[5])[0].tolist() == list(range(14))  # centres x 0.5 (= 2 - 1.5) … 13.5 (= 12 + 1.5)
    dot = stroke_mask([(5.0, 5.0)], 4, (10, 10))
    assert dot[5, 5] and dot[3, 4] and not dot[2, 2]
    assert not stroke_mask([], 3, (4, 4)).any()


def test_path_polylines() -> None:
    lines = path_polylines([["M", 0, 0], ["L", 10, 0], ["Q", 10, 10, 20, 10], ["Z"], ["M", 5, 5], ["L", 6, 6]])
    assert len(lines) == 2
    assert lines[0][0] == (0, 0) and lines[0][1] == (10, 0) and lines[0][-2] == pytest.approx((20, 10))
    assert lines[0][-1] == (0, 0)
    assert lines[1] == [(5, 5), (6, 6)]


def test_rasterise_polygon_matches_polygon_mask_and_follows_moves() -> None:
    pal = drawing_palette(LABELS3)
    pts = [(10.0, 10.0), (50.0, 12.0), (40.0, 45.0), (12.0, 38.0)]
    out = rasterise_objects([fabric_polygon(pts, hex_colour(pal[2]))], (60, 70), pal)
    inside = polygon_mask(pts, (60, 70))
    assert (out[inside] == 2).all()
    extra = (out == 2) & ~inside
    assert extra.sum() <= 0.1 * inside.sum()  # only the 1-px stroke around it
    # moved with the edit toggle (left/top change, points stay): the same as drawing it there
    moved = rasterise_objects([fabric_polygon(pts, hex_colour(pal[2]), dx=7, dy=-3)], (60, 70), pal)
    there = rasterise_objects([fabric_polygon([(x + 7, y - 3) for x, y in pts], hex_colour(pal[2]))], (60, 70), pal)
    assert np.array_equal(moved, there) and not np.array_equal(moved, out)
    # scaled 2x about its top-left corner
    big = fabric_polygon(pts, hex_colour(pal[2]), sw=0)
    big.update(scaleX=2, scaleY=2)
    scaled = rasterise_objects([big], (120, 140), pal)
    ref = polygon_mask([(10 + 2 * (x - 10), 10 + 2 * (y - 10)) for x, y in pts], (120, 140))
    assert np.array_equal(scaled == 2, ref)


def test_rasterise_brush_eraser_rect_order() -> None:
    pal = drawing_palette(LABELS3)
    brush = fabric_path([(5.0, 20.0), (15.0, 20.0), (25.0, 20.0), (35.0, 20.0)], hex_colour(pal[1]), 6)
    eraser = fabric_path([(20.0, 5.0), (20.0, 15.0), (20.0, 25.0), (20.0, 35.0)], hex_colour(ERASER_COLOUR), 4)
    rect = {"type": "Rect", "left": 30, "top": 30, "width": 8, "height": 6, "fill": hex_colour(pal[2]),
            "stroke": None, "strokeWidth": 0, "originX": "left", "originY": "top"}
    out = rasterise_objects([brush, eraser, rect], (40, 40), pal)
    assert out[20, 8] == 1 and out[17, 8] == 1 and out[22, 8] == 1 and out[16, 8] == UNTOUCHED
    assert out[20, 20] == 0  # eraser drawn after the brush wins
    assert out[10, 20] == 0 and out[10, 23] == UNTOUCHED
    assert (out[30:36, 30:38] == 2).all() and out[36, 30] == UNTOUCHED
    # the brush's footprint is the round-capped stroke along its (straight) path
    direct = stroke_mask([(5, 20), (35, 20)], 6, (40, 40))
    assert np.array_equal(out >= 0, direct | stroke_mask([(20, 5), (20, 35)], 4, (40, 40)) | (out == 2))


# Objects exactly as streamlit-drawable-canvas 0.13 (Fabric 7.4) sent them from Chromium for a
# 200x100 canvas, with the drawn layer's statistics (alpha > 127) measured in the same session.
REAL_PATH = {"type": "Path", "version": "7.4.0", "originX": "center", "originY": "center", "left": 70,
             "top": 49.8281, "width": 100.02, "height": 0, "fill": None, "stroke": "#e69f00", "strokeWidth": 10,
             "strokeLineCap": "round", "strokeUniform": False, "scaleX": 1, "scaleY": 1, "angle": 0,
             "path": [["M", 19.99, 49.828125]] + [["Q", 20 + 5 * i, 49.828125, 22.5 + 5 * i, 49.828125]
                                                   for i in range(18)] +
                     [["Q", 110, 49.828125, 115, 49.828125], ["L", 120.01, 49.828125]]}
REAL_PATH_LAYER = {"count": 1078, "rows": (45, 54), "cols": (15, 124)}
REAL_POLYGON = {"type": "Polygon", "version": "7.4.0", "originX": "center", "originY": "center", "left": 100,
                "top": 49.8281, "width": 100, "height": 60, "fill": "#e69f00", "stroke": "#e69f00", "strokeWidth": 10,
                "strokeLineCap": "butt", "strokeLineJoin": "miter", "scaleX": 1, "scaleY": 1, "angle": 0,
                "points": [{"x": 50, "y": 19.828125}, {"x": 150, "y": 19.828125}, {"x": 150, "y": 79.828125},
                           {"x": 50, "y": 79.828125}]}
REAL_POLYGON_LAYER = {"count": 7700, "rows": (15, 84), "cols": (45, 154)}
REAL_POINT = {"type": "Circle", "version": "7.4.0", "originX": "left", "originY": "center", "left": 115,
              "top": 44.8281, "radius": 3, "width": 6, "height": 6, "fill": "#e69f00", "stroke": "#e69f00",
              "strokeWidth": 10, "scaleX": 1, "scaleY": 1, "angle": 0}  # clicked at (123, 45) - 0.17 px


@pytest.mark.parametrize("obj,layer,tol", [(REAL_PATH, REAL_PATH_LAYER, 0.03),
                                           (REAL_POLYGON, REAL_POLYGON_LAYER, 0.01)])
def test_real_canvas_objects_rasterise_like_the_browser_drew_them(obj, layer, tol) -> None:
    pal = drawing_palette(LABELS3)
    out = rasterise_objects([obj], (100, 200), pal)
    drawn = np.argwhere(out == 1)
    assert (out[out != UNTOUCHED] == 1).all()  # #e69f00 is class 1's colour
    assert (int(drawn[:, 0].min()), int(drawn[:, 0].max())) == layer["rows"]
    assert (int(drawn[:, 1].min()), int(drawn[:, 1].max())) == layer["cols"]
    assert abs(len(drawn) - layer["count"]) <= tol * layer["count"]  # round vs miter corners


def test_real_point_click() -> None:
    (u, v), = click_points([REAL_POINT])
    assert u == pytest.approx(123) and v == pytest.approx(44.83, abs=0.01)
    view = make_view((50, 100), 1, max_canvas=(100, 200))  # 2 canvas px per image px
    assert view.canvas_to_pixel(u, v) == (22, 61)


def test_apply_objects_maps_through_the_view() -> None:
    pal = drawing_palette(LABELS3)
    v = make_view((10, 10), 2, center=(0, 0), max_canvas=(100, 100))
    poly = fabric_polygon([(40.0, 40.0), (60.0, 40.0), (60.0, 60.0), (40.0, 60.0)], hex_colour(pal[1]), sw=0)
    out = apply_objects(np.zeros((10, 10), np.uint8), [poly], v, pal)
    assert np.argwhere(out).tolist() == [[2, 2]]


def test_click_points_of_the_point_tool() -> None:
    r, sw = 3, 1
    x, y = 123.0, 45.0
    circle = {"type": "Circle", "left": x - (r + sw / 2), "top": y, "originX": "left", "originY": "center",
              "radius": r, "strokeWidth": sw, "stroke": "#e69f00", "fill": "#e69f00", "scaleX": 1, "scaleY": 1}
    centred = {"type": "circle", "left": 10, "top": 20, "originX": "center", "originY": "center", "radius": 5,
               "strokeWidth": 2, "stroke": "#000"}
    assert click_points([circle, {"type": "Path"}, centred]) == [pytest.approx((x, y)), pytest.approx((10, 20))]
    assert click_points([]) == []


# ------------------------------------------------------------------------------------ operations

def test_flood_fill_region_hole_and_connectivity() -> None:
    m = np.zeros((9, 9), np.uint8)
    m[1:8, 1:8] = 1
    m[3:6, 3:6] = 0  # a hole
    out = flood_fill(m, 4, 4, 1)
    assert (out[1:8, 1:8] == 1).all() and out.sum() == 49 and m.sum() == 40  # input untouched
    outside = flood_fill(m, 0, 0, 2)
    assert (outside == 2).sum() == 81 - 49 and (outside[3:6, 3:6] == 0).all()
    erased = flood_fill(m, 1, 1, 0)
    assert erased.sum() == 0
    same = flood_fill(m, 1, 1, 1)
    assert np.array_equal(same, m)
    diag = np.zeros((4, 4), np.uint8)
    diag[0, 0] = diag[1, 1] = 1
    assert flood_fill(diag, 0, 0, 2).tolist()[1][1] == 1  # 4-connectivity: no leak across the diagonal
    assert flood_fill(diag, 0, 0, 2, connectivity=8)[1, 1] == 2
    with pytest.raises(MaskError):
        flood_fill(m, 9, 0, 1)
    with pytest.raises(ConfigError):
        flood_fill(m, 0, 0, 1, connectivity=6)


def test_fill_holes_per_class() -> None:
    m = np.zeros((12, 12), np.uint8)
    m[1:6, 1:6] = 1
    m[3, 3] = 0                      # a hole in class 1
    m[6:11, 6:11] = 2
    m[8, 8] = 0                      # a hole in class 2
    m[0, 11] = 0
    out = fill_holes(m)
    assert out[3, 3] == 1 and out[8, 8] == 2
    assert (out != m).sum() == 2 and m[3, 3] == 0  # nothing else; input untouched
    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 2               # enclosed by class 1 but not background: stays 2
    assert np.array_equal(fill_holes(ring), ring)
    assert fill_holes(np.zeros((3, 3), np.uint8)).sum() == 0


def test_mask_diff_and_diff_image() -> None:
    old = np.zeros((5, 6), np.uint8)
    new = np.zeros((5, 6), np.uint8)
    old[0, 0:3] = 1       # 3 removed … except (0,2) which stays
    new[0, 2] = 1
    new[4, 0:4] = 1       # 4 added
    old[2, 2] = 1
    new[2, 2] = 2         # 1 changed class
    c = mask_diff(old, new)
    assert c == {"added": 4, "removed": 2, "changed class": 1, "unchanged foreground": 1, "area old": 4,
                 "area new": 6}
    rgb, counts = diff_image(old, new, alpha=1.0)
    assert counts == c
    assert tuple(rgb[4, 0]) == DIFF_COLOURS["added"] and tuple(rgb[0, 0]) == DIFF_COLOURS["removed"]
    assert tuple(rgb[2, 2]) == DIFF_COLOURS["changed class"] and tuple(rgb[3, 5]) == (0, 0, 0)
    img = np.full((1, 5, 6), 0.5, np.float32)
    rgb2, _ = diff_image(old, new, img)
    assert rgb2.shape == (5, 6, 3) and tuple(rgb2[3, 5]) != (0, 0, 0)
    with pytest.raises(MaskError):
        mask_diff(old, new[:2])


def test_window_outline() -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    v = make_view((20, 30), 2, center=(10, 15))
    out = window_outline(rgb, v, thickness=1)
    y0, x0, y1, x1 = v.box
    assert tuple(out[y0, x0]) == (255, 255, 0) and tuple(out[y1 - 1, x1 - 1]) == (255, 255, 0)
    assert tuple(out[(y0 + y1) // 2, (x0 + x1) // 2]) == (0, 0, 0) and rgb.sum() == 0


# ------------------------------------------------------------------------------------ undo/redo

def test_edit_stack_undo_redo_branch_and_limit() -> None:
    a = np.zeros((4, 4), np.uint8)
    b, c, d = a.copy(), a.copy(), a.copy()
    b[0, 0] = 1
    c[1, 1] = 2
    d[2, 2] = 1
    s = EditStack(a, limit=3)
    assert not s.can_undo and not s.can_redo and not s.dirty
    assert s.push(a) is False
    assert s.push(b) and s.push(c)
    assert np.array_equal(s.current, c) and s.dirty and s.position == 2
    assert s.undo() and np.array_equal(s.current, b)
    assert s.undo() and np.array_equal(s.current, a) and not s.dirty
    assert not s.undo()
    assert s.redo() and np.array_equal(s.current, b) and s.n_redo == 1
    assert s.push(d)  # drops the redo branch (c)
    assert not s.can_redo and np.array_equal(s.current, d)
    s.push(c)
    s.push(b)  # over the limit of 3: the oldest entries go
    assert s.position == 2 and s.undo() and s.undo() and not s.can_undo
    assert np.array_equal(s.start, a)
    s.reset()
    assert np.array_equal(s.current, a) and not s.can_undo
    s.reset(d)
    assert np.array_equal(s.start, d) and not s.dirty
    cur = s.current
    cur[:] = 9  # copies: mutating does not change the history
    assert s.current.max() == 1
    with pytest.raises(MaskError):
        s.push(np.zeros((3, 3), np.uint8))
    with pytest.raises(MaskError):
        EditStack(np.zeros((2, 2, 2), np.uint8))


def test_edit_stack_is_compact() -> None:
    big = np.zeros((1024, 1024), np.uint8)
    big[100:300, 200:500] = 1
    s = EditStack(big)
    for i in range(5):
        m = big.copy()
        m[i, :] = 2
        s.push(m)
    assert sum(len(x) for x in s._items) < 1024 * 1024 // 20


# ------------------------------------------------------------------------------------ edit session

def test_edit_session_save_refuses_a_stale_base_and_saves_on_top_when_asked(tmp_path) -> None:
    from engine.store import ReviewStore

    orig = np.zeros((6, 8), np.uint8)
    orig[1:3, 1:3] = 1
    case = SimpleNamespace(case_id="c1", labelled=True, height=6, width=8, mask_area=4)
    ds = SimpleNamespace(case=lambda cid: case, load_mask=lambda c: orig.copy())
    with ReviewStore(tmp_path / "review.sqlite") as store:
        ana = EditSession.start(ds, store, "c1")
        bob = EditSession.start(ds, store, "c1")
        assert ana.base_version == 0 and "dataset original" in ana.source and not ana.has_changes
        np.testing.assert_array_equal(ana.stack.current, orig)
        mine = orig.copy()
        mine[4, 4] = 1
        ana.stack.push(mine)
        assert ana.has_changes
        nonce = ana.nonce
        assert ana.save(store, "ana", "a dot") == 1
        assert (ana.base_version, ana.conflict, ana.stack.can_undo, ana.has_changes) == (1, None, False, False)
        assert ana.nonce == nonce + 1 and ana.source == "version 1 (saved by you)"
        np.testing.assert_array_equal(version_mask(ds, store, "c1", 1), mine)
        np.testing.assert_array_equal(version_mask(ds, store, "c1", 0), orig)

        theirs = orig.copy()
        theirs[0, 7] = 1
        bob.stack.push(theirs)
        assert bob.save(store, "bob", "a corner") is None          # ana saved meanwhile: refused
        assert store.latest_mask_version("c1") == 1                  # nothing written
        assert bob.conflict is not None and bob.base_version == 0 and bob.has_changes
        assert (bob.conflict["current"], bob.conflict["author"], bob.conflict["note"]) == (1, "ana", "a dot")
        assert bob.conflict["created"]
        assert bob.save(store, "bob", "a corner", on_top=True) == 2  # bob saw it and chose to save on top
        assert bob.conflict is None and bob.base_version == 2
        np.testing.assert_array_equal(version_mask(ds, store, "c1", 2), theirs)

        again = ana.restart(ds, store)                               # follows the newest version
        assert again.base_version == 2 and again.nonce == ana.nonce + 1 and again.case_id == "c1"
        np.testing.assert_array_equal(again.stack.current, theirs)
        picked = ana.restart(ds, store, orig, source="version 0")
        assert picked.base_version == 2 and picked.source == "version 0" and picked.has_changes
        hist = version_history(ds, store, "c1")
        assert [(h["version"], h["author"], h["area"], h["from"]) for h in hist] == [
            (0, "dataset", 4, None), (1, "ana", 5, "edit of 0"), (2, "bob", 5, "edit of 1")]
        assert hist[0]["created"] == "" and hist[2]["note"] == "a corner" and hist[2]["created"]

    blank = SimpleNamespace(case_id="u", labelled=False, height=3, width=4)
    ds2 = SimpleNamespace(case=lambda cid: blank, load_mask=lambda c: pytest.fail("unlabelled: no mask file"))
    with ReviewStore(tmp_path / "review2.sqlite") as store:
        s = EditSession.start(ds2, store, "u")
        assert s.stack.shape == (3, 4) and not s.stack.current.any()


# ------------------------------------------------------------------------------------ case queue

def test_case_queue_order_reasons_and_exclusions(tmp_path) -> None:
    import pandas as pd

    from engine.store import ReviewStore

    ids = ["a", "b", "c", "d", "e", "f", "g", "h", "x_10", "x_9"]
    ds = SimpleNamespace(cases=[SimpleNamespace(case_id=i) for i in ids])
    with ReviewStore(tmp_path / "review.sqlite") as store:
        store.set_case_state("a", "needs_fix", "ann")
        store.set_case_state("c", "accepted", "bob")
        store.set_case_state("e", "corrected", "bob")
        store.set_case_state("h", "accepted", "bob")
        store.set_case_state("h", "unreviewed", "bob")  # back in play
        report = SimpleNamespace(pairs=[
            {"a": "b", "b": "c", "category": "conflict", "ssim": 0.995},
            {"a": "d", "b": "e", "category": "disagree", "ssim": 0.991},
            {"a": "b", "b": "d", "category": "disagree", "ssim": 0.99},   # b already has a conflict
            {"a": "f", "b": "g", "category": "agree", "ssim": 0.999},     # agreeing pairs are fine
            {"a": "zz", "b": "a", "category": "conflict", "ssim": 0.99},  # zz is not in the dataset
        ])
        ev = pd.DataFrame({"case_id": ["a", "b", "c", "d", "f", "g", "x_10", "x_9"],
                           "dice": [0.5, 0.2, 0.0, 1.0, 0.9, float("nan"), 0.75, 0.75]})
        q = case_queue(ds, store, report, SimpleNamespace(per_image=ev))
        # a: needs_fix 2 + (1-0.5) + conflict with zz 1 ; b: conflict 1 + 0.8 ; d: disagree 0.5 + 0
        # x_9 / x_10: 0.25 (natural order) ; f: 0.1 ; c, e excluded ; g, h no signal
        assert [c for c, _, _ in q] == ["a", "b", "d", "x_9", "x_10", "f"]
        scores = {c: s for c, s, _ in q}
        assert scores["a"] == pytest.approx(3.5) and scores["b"] == pytest.approx(1.8)
        assert scores["d"] == pytest.approx(0.5) and scores["f"] == pytest.approx(0.1)
        reasons = dict((c, r) for c, _, r in q)
        assert any("needs_fix by ann" in r for r in reasons["a"])
        assert any("model Dice 0.50" in r for r in reasons["a"])
        assert any(r.startswith("conflict pair with c") for r in reasons["b"])
        assert not any("disagree" in r for r in reasons["b"])  # only the worst pair counts
        assert reasons["d"] == ["disagree pair with e (SSIM 0.991)"]
        full = case_queue(ds, store, report.pairs, {"f": 0.9}, include_unscored=True)
        assert [c for c, _, _ in full] == ["a", "b", "d", "f", "g", "h", "x_9", "x_10"]
        assert [s for c, s, _ in full][-4:] == [0, 0, 0, 0]
        heavy = case_queue(ds, store, report, ev, weights={"model": 10.0})
        assert heavy[0][0] == "b"  # 1 + 10 * 0.8 beats 2 + 10 * 0.5 + 1
    assert case_queue(ds) == []
    # without a store nothing is excluded: c (Dice 0) leads
    assert [c for c, _, _ in case_queue(ds, None, None, ev)] == ["c", "b", "a", "x_9", "x_10", "f"]


def test_next_case() -> None:
    q = [("a", 3.0, []), ("b", 2.0, []), ("c", 1.0, [])]
    assert next_case(q, None) == "a"
    assert next_case(q, "zz") == "a"
    assert next_case(q, "a") == "b"
    assert next_case(q, "c") == "a"  # wraps around
    assert next_case([("a", 1.0, [])], "a") is None
    assert next_case([], "a") is None


def test_view_dataclass_helpers() -> None:
    v = View(2, 3, 4, 5, 40, 50, 10, 10)
    assert v.box == (2, 3, 6, 8) and v.scale == 10
    assert v.crop(np.arange(100).reshape(10, 10)).shape == (4, 5)
    assert v.to_dict()["canvas_w"] == 50
    r, c = v.sample_indices()
    assert r.tolist() == [5, 15, 25, 35] and c.tolist() == [5, 15, 25, 35, 45]
    dr, dc = v.display_indices()
    assert dr[0] == 0 and dr[-1] == 3 and dc[-1] == 4 and len(dr) == 40
    crop = resample_to_crop(np.arange(40 * 50).reshape(40, 50), v)
    assert crop.shape == (4, 5) and crop[0, 0] == 5 * 50 + 5
