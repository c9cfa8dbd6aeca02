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

Reading (:func:`coco_label_maps`): polygons, uncompressed and compressed RLE; categories mapped
to consecutive class ids in category-id order; overlapping annotations are painted largest
first, so smaller objects stay visible.

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
        LayoutError: unreadable JSON or not a COCO document.
    """
    import json

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise LayoutError(f"cannot read COCO JSON ({exc})", path=path, hint="fix or re-export the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise LayoutError("not a COCO JSON (no 'images' list)", path=path,
                          hint="a COCO file holds 'images', 'annotations' and 'categories'")
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            raise LayoutError(f"COCO '{key}' is not a list", path=path, hint="fix or re-export the file")
    return doc


def category_classes(doc: dict[str, Any]) -> tuple[dict[int, int], dict[int, str]]:
    """``({category id: class id}, {class id: name})``: categories in id order → 1..K-1."""
    cats = sorted((int(c["id"]), str(c.get("name", f"class_{c['id']}"))) for c in doc.get("categories", [])
                  if isinstance(c, dict) and "id" in c)
    cat_to_class = {cid: i + 1 for i, (cid, _) in enumerate(cats)}
    labels = {0: "background", **{i + 1: name for i, (_, name) in enumerate(cats)}}
    return cat_to_class, labels


def annotation_mask(ann: dict[str, Any], h: int, w: int, where: str = "") -> np.ndarray:
    """Decode one annotation's ``segmentation`` (polygons, RLE or compressed RLE) as bool (H,W)."""
    from pycocotools import mask as mask_utils

    segm = ann.get("segmentation")
    try:
        if isinstance(segm, list):
            if not segm:
                return np.zeros((h, w), bool)
            rles = mask_utils.frPyObjects([p for p in segm if len(p) >= 6], h, w)
            rle = mask_utils.merge(rles) if rles else None
            return mask_utils.decode(rle).astype(bool) if rle is not None else np.zeros((h, w), bool)
        if isinstance(segm, dict):
            size = [int(x) for x in segm.get("size", [])]
            if size != [h, w]:
                raise MaskError(f"{where}: RLE size {size} differs from the image's {[h, w]}",
                                hint="re-export the annotation at the image's size")
            rle = segm if not isinstance(segm.get("counts"), list) else mask_utils.frPyObjects(segm, h, w)
            if isinstance(rle.get("counts"), str):
                rle = _bytes_rle(rle)
            return mask_utils.decode(rle).astype(bool)
    except MaskError:
        raise
    except Exception as exc:  # noqa: BLE001 - pycocotools raises bare errors for bad input
        raise MaskError(f"{where}: undecodable segmentation ({exc})", hint="fix or remove this annotation") from None
    raise MaskError(f"{where}: segmentation is neither polygons nor RLE", hint="fix or remove this annotation")


def image_label_map(anns: list[dict[str, Any]], h: int, w: int, cat_to_class: dict[int, int],
                    where: str = "") -> np.ndarray:
    """One image's annotations painted into a uint8 (H,W) label map (largest first, smaller on top)."""
    out = np.zeros((h, w), np.uint8)
    decoded = []
    for ann in anns:
        cat = int(ann.get("category_id", -1))
        if cat not in cat_to_class:
            raise MaskError(f"{where}: annotation {ann.get('id')} has unknown category_id {cat}",
                            hint="add the category to 'categories' or remove the annotation")
        m = annotation_mask(ann, h, w, where=f"{where}, annotation {ann.get('id')}")
        decoded.append((int(m.sum()), cat_to_class[cat], m))
    for _, cls, m in sorted(decoded, key=lambda t: -t[0]):
        out[m] = cls
    return out
