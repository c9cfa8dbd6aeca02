"""COCO segmentation JSON with compressed RLE masks (``pycocotools``), written and read back.

Writing (:func:`build_coco` + :func:`write_coco`): one JSON with ``images``, ``categories`` and
``annotations``. Category ids are the label map's class ids (1..K-1, background is not a
category); each annotation is the whole mask of one class on one image (semantic
segmentation: one annotation per (image, class) present), ``segmentation`` a compressed RLE
``{"size": [H, W], "counts": "<string>"}`` with ``area`` and ``bbox`` from pycocotools.
``iscrowd`` is 0 so trainers (detectron2, mmdetection) use the masks instead of ignoring them as
crowd regions; pycocotools reads RLE whatever ``iscrowd`` says. A labelled image with an empty
mask is listed with no annotations. File names are relative (to the JSON's folder when the
images were copied beside it, else to the dataset root, recorded as ``info.segwb_image_root``).
Images carry ``segwb_case_id`` / ``segwb_group_id`` so the workbench's case ids and patient
groups survive a round trip (other tools ignore extra keys).

Reading (:func:`image_label_map`): polygons, uncompressed and compressed RLE; categories mapped
to consecutive class ids in category-id order; overlapping annotations are painted largest
first, so smaller objects stay visible. Everything is validated before pycocotools' C code sees
it: ids and sizes are JSON integers, at most 255 categories, polygons hold an even number ≥ 6 of
finite coordinates within one image size of the image, RLE runs are non-negative integers that
sum to exactly H × W, and a JSON nested too deeply is refused.

Example:
    >>> doc = build_coco([("2_1", "train/2_1.tif", mask, "2")], {0: "background", 1: "nerve"})  # doctest: +SKIP
    >>> write_coco("out/annotations.json", doc)                                                   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from engine.errors import LayoutError, MaskError

COCO_NAME = "annotations.json"
#: the most categories one import holds (class ids 1..255 of an 8-bit label map)
MAX_CATEGORIES = 255


def encode_class(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a binary (H,W) mask: ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def build_coco(items: Iterable[tuple[str, str, np.ndarray, str]], labels: dict[int, str], *,
               description: str = "segwb corrected export", image_root: str | None = None) -> dict[str, Any]:
    """A COCO document from ``(case_id, file_name, label map (H,W), group_id)`` items.

    Args:
        items: per labelled case: its id, the relative image file name, the integer label map, its group.
        labels: ``{class id: name}`` (0 = background, not a category).
        description: ``info.description``.
        image_root: where relative file names start when the images were not copied (recorded
            in ``info.segwb_image_root``).
    """
    from pycocotools import mask as mask_utils

    categories = [{"id": int(k), "name": str(v), "supercategory": "segwb"}
                  for k, v in sorted(labels.items()) if int(k) != 0]
    known = {c["id"] for c in categories}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (case_id, file_name, mask, group_id) in enumerate(items, start=1):
        mask = np.asarray(mask)
        h, w = mask.shape
        images.append({"id": image_id, "file_name": file_name, "height": int(h), "width": int(w),
                       "segwb_case_id": case_id, "segwb_group_id": group_id})
        for cls in sorted(int(v) for v in np.unique(mask) if v != 0):
            if cls not in known:
                raise MaskError(f"case {case_id}: class id {cls} is not in the label map {labels}",
                                hint="fix the label map (--labels) or the mask")
            rle = encode_class(mask == cls)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls,
                                "segmentation": rle, "area": float(mask_utils.area(_bytes_rle(rle))),
                                "bbox": [float(x) for x in mask_utils.toBbox(_bytes_rle(rle))], "iscrowd": 0})
    info: dict[str, Any] = {"description": description, "version": "1.0", "year": _dt.date.today().year,
                            "contributor": "segwb",
                            "date_created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if image_root:
        info["segwb_image_root"] = image_root
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def _bytes_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def write_coco(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write a COCO document atomically (compact JSON)."""
    import json

    from engine.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps(doc, separators=(",", ":")))
    return Path(path)


def read_coco(path: str | Path) -> dict[str, Any]:
    """Load and check a COCO JSON (``images`` list required; ``annotations``/``categories`` optional).

    Raises:
        LayoutError: unreadable JSON, nested too deeply, or not a COCO document.
    """
    import json

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except RecursionError:
        raise LayoutError("JSON is nested too deeply to be a COCO file", path=path,
                          hint="a COCO file holds flat lists of images, annotations and categories; remove this "
                               "file or re-export it") from None
    except (OSError, ValueError) as exc:
        raise LayoutError(f"cannot read COCO JSON ({exc})", path=path, hint="fix or re-export the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise LayoutError("not a COCO JSON (no 'images' list)", path=path,
                          hint="a COCO file holds 'images', 'annotations' and 'categories'")
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            raise LayoutError(f"COCO '{key}' is not a list", path=path, hint="fix or re-export the file")
    return doc


def int_field(value: Any, what: str, path: str | Path | None, *, minimum: int | None = None) -> int:
    """``value`` as an int when it is a JSON integer (not a bool, string or float), else :class:`LayoutError`.

    Example:
        >>> int_field(3, "image id", "a.json")
        3
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayoutError(f"{what} is {value!r}, not an integer", path=path,
                          hint="COCO ids, sizes and category ids are JSON integers; fix or re-export the file")
    if minimum is not None and value < minimum:
        raise LayoutError(f"{what} is {value}, below {minimum}", path=path, hint="fix or re-export the file")
    return value


def category_classes(doc: dict[str, Any], path: str | Path | None = None) -> tuple[dict[int, int], dict[int, str]]:
    """``({category id: class id}, {class id: name})``: categories in id order → 1..K-1.

    Raises:
        LayoutError: a category that is not an object, an id that is not an integer, a duplicate id, or
        more than :data:`MAX_CATEGORIES` categories (the label maps are 8-bit).
    """
    cats: list[tuple[int, str]] = []
    for i, c in enumerate(doc.get("categories", [])):
        if not isinstance(c, dict) or "id" not in c:
            raise LayoutError(f"category {i + 1} is not an object with an 'id'", path=path,
                              hint="each category is {\"id\": integer, \"name\": text}")
        cats.append((int_field(c["id"], f"category {i + 1} id", path), str(c.get("name") or f"class_{c['id']}")))
    ids = [cid for cid, _ in cats]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})
        raise LayoutError(f"category id(s) {dup[:10]} are listed twice", path=path,
                          hint="give every category its own id")
    if len(cats) > MAX_CATEGORIES:
        raise LayoutError(f"{len(cats)} categories; the workbench's label maps hold at most {MAX_CATEGORIES} classes",
                          path=path, hint="merge categories or split the file")
    cats.sort()
    cat_to_class = {cid: i + 1 for i, (cid, _) in enumerate(cats)}
    labels = {0: "background", **{i + 1: name for i, (_, name) in enumerate(cats)}}
    return cat_to_class, labels


def rle_counts_from_string(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``, in Python, so
    that bad strings are caught before the C decoder sees them).

    Raises:
        ValueError: a character outside the alphabet or a truncated number.

    Example:
        >>> rle_counts_from_string("04L4")
        [0, 4, 28, 4]
    """
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("the counts string ends inside a number")
            c = ord(counts[p]) - 48
            if c < 0 or c > 63:
                raise ValueError(f"character {counts[p]!r} is not a compressed-RLE digit")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if k > 13:
                raise ValueError("a run length is too long")
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def check_rle_counts(counts: list[int], h: int, w: int, where: str) -> None:
    """Run lengths must be non-negative integers that sum to exactly ``h × w``.

    Raises:
        MaskError: naming ``where``.
    """
    bad = next((c for c in counts if isinstance(c, bool) or not isinstance(c, int) or c < 0), None)
    if bad is not None:
        raise MaskError(f"{where}: RLE count {bad!r} is not a non-negative integer",
                        hint="RLE counts are whole run lengths; fix or re-export the annotation")
    total = sum(counts)
    if total != h * w:
        raise MaskError(f"{where}: RLE counts sum to {total:,} but the image has {h}x{w} = {h * w:,} pixels",
                        hint="the runs must cover the image exactly; re-export the annotation at the image's size")


def check_polygon(poly: Any, h: int, w: int, where: str) -> list[float]:
    """A polygon must be a list of an even number ≥ 6 of finite numbers lying within one image size
    of the image (``-max(h, w) ≤ x ≤ w + max(h, w)``, same for y), so no huge polygon is rasterised.

    Returns:
        the coordinates as floats ``[x1, y1, x2, y2, ...]``.

    Raises:
        MaskError: naming ``where``.
    """
    if not isinstance(poly, list):
        raise MaskError(f"{where}: polygon is {type(poly).__name__}, not a list of coordinates",
                        hint="a polygon is [x1, y1, x2, y2, x3, y3, ...]")
    if len(poly) < 6 or len(poly) % 2:
        raise MaskError(f"{where}: polygon has {len(poly)} numbers; it needs an even number, at least 6 "
                        "(three x, y points)", hint="fix or remove this annotation")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in poly):
        raise MaskError(f"{where}: polygon holds a value that is not a number", hint="fix or remove this annotation")
    arr = np.asarray(poly, float)
    if not np.all(np.isfinite(arr)):
        raise MaskError(f"{where}: polygon holds a NaN or infinite coordinate", hint="fix or remove this annotation")
    m = float(max(h, w))
    xs, ys = arr[0::2], arr[1::2]
    if xs.min() < -m or xs.max() > w + m or ys.min() < -m or ys.max() > h + m:
        raise MaskError(f"{where}: polygon coordinates x {xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g} "
                        f"lie far outside the {w}x{h} image", hint="the annotation belongs to another image or "
                        "is damaged; fix or remove it")
    return arr.tolist()


def annotation_mask(ann: dict[str, Any], h: int, w: int, where: str = "") -> np.ndarray:
    """Decode one annotation's ``segmentation`` (polygons, RLE or compressed RLE) as bool (H,W).

    Everything is validated first (:func:`check_polygon`, :func:`check_rle_counts`): the C decoder only
    sees finite polygons near the image and runs that cover it exactly.

    Raises:
        MaskError: naming ``where``.
    """
    from pycocotools import mask as mask_utils

    segm = ann.get("segmentation")
    if isinstance(segm, list):
        polys = [check_polygon(p, h, w, f"{where}, polygon {k + 1}") for k, p in enumerate(segm)]
        if not polys:
            return np.zeros((h, w), bool)
        try:
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
            return mask_utils.decode(rle).astype(bool)
        except Exception as exc:  # noqa: BLE001 - pycocotools raises bare errors for bad input
            raise MaskError(f"{where}: undecodable polygon ({exc})", hint="fix or remove this annotation") from None
    if isinstance(segm, dict):
        size = segm.get("size")
        if not isinstance(size, list) or len(size) != 2 or any(isinstance(x, bool) or not isinstance(x, int)
                                                               for x in size):
            raise MaskError(f"{where}: RLE size {size!r} is not [height, width] in integers",
                            hint="re-export the annotation")
        if list(size) != [h, w]:
            raise MaskError(f"{where}: RLE size {size} differs from the image's {[h, w]}",
                            hint="re-export the annotation at the image's size")
        counts = segm.get("counts")
        if isinstance(counts, list):
            check_rle_counts(counts, h, w, where)
            try:
                rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
            except Exception as exc:  # noqa: BLE001
                raise MaskError(f"{where}: undecodable RLE ({exc})", hint="fix or remove this annotation") from None
        elif isinstance(counts, str):
            try:
                runs = rle_counts_from_string(counts)
            except ValueError as exc:
                raise MaskError(f"{where}: damaged compressed RLE ({exc})",
                                hint="fix or remove this annotation") from None
            check_rle_counts(runs, h, w, where)
            rle = {"size": [h, w], "counts": counts.encode("ascii")}
        else:
            raise MaskError(f"{where}: RLE counts are {type(counts).__name__}, not a list or a string",
                            hint="fix or remove this annotation")
        return mask_utils.decode(rle).astype(bool)
    raise MaskError(f"{where}: segmentation is neither polygons nor RLE", hint="fix or remove this annotation")


def image_label_map(anns: list[dict[str, Any]], h: int, w: int, cat_to_class: dict[int, int],
                    where: str = "") -> np.ndarray:
    """One image's annotations painted into a uint8 (H,W) label map (largest first, smaller on top).

    Raises:
        MaskError: an unknown or non-integer category id, a class id beyond 255, a bad segmentation.
    """
    out = np.zeros((h, w), np.uint8)
    decoded = []
    for ann in anns:
        cat = ann.get("category_id")
        if isinstance(cat, bool) or not isinstance(cat, int) or cat not in cat_to_class:
            raise MaskError(f"{where}: annotation {ann.get('id')} has unknown category_id {cat!r}",
                            hint="add the category to 'categories' or remove the annotation")
        cls = cat_to_class[cat]
        if not 0 < cls <= 255:
            raise MaskError(f"{where}: class id {cls} does not fit an 8-bit label map",
                            hint=f"use at most {MAX_CATEGORIES} categories")
        m = annotation_mask(ann, h, w, where=f"{where}, annotation {ann.get('id')}")
        decoded.append((int(m.sum()), cls, m))
    for _, cls, m in sorted(decoded, key=lambda t: -t[0]):
        out[m] = cls
    return out
