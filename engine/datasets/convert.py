"""Convert any dataset into a paired PNG folder at a fixed size (the pneumothorax study's preprocessing).

Every case's image (DICOM/TIFF/PNG/...) is windowed/normalised by its reader, scaled to
8 bits and resized to ``size`` → ``OUT/images/<name>.png``; its ground truth (file or RLE)
is resized with nearest-neighbour → ``OUT/masks/<name>.png`` (uint8 class ids) for labelled
cases. ``OUT`` is then a valid ``paired`` dataset (:func:`engine.datasets.open_dataset`).
``OUT/convert.json`` records the source, the label map and the case-id → file-name table;
``OUT/cases.csv`` is the same table for spreadsheets.

File names: a case id that is already a safe file name is used as-is; otherwise unsafe
characters (``/``, spaces, ...) become ``_`` and a short hash of the original id is
appended, so different ids never collide (:func:`safe_case_name`).

Example:
    >>> from engine.datasets import open_dataset
    >>> ds = open_dataset("demo_data/ptx")                                     # doctest: +SKIP
    >>> info = convert_dataset(ds, Path("ptx256"), (256, 256))                  # doctest: +SKIP
    >>> open_dataset("ptx256").layout, info["n_images"]                         # doctest: +SKIP
    ('paired', 40)
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.datasets.layouts import DEFAULT_MASK_SUFFIXES
from engine.errors import ConfigError, WorkbenchError
from engine.progress import ProgressFn

if TYPE_CHECKING:
    from engine.datasets.base import Case, Dataset

CONVERT_MARKER = "convert.json"


def safe_case_name(case_id: str) -> str:
    """A file-name stem for ``case_id``: :func:`engine.fsutil.safe_name`, plus a hash when it ends with a mask suffix.

    Safe = letters, digits, ``.``, ``_``, ``-``, not starting with a dot, at most 150 chars,
    and not ending with a mask suffix (``_mask``...) that the paired layout would strip.

    Example:
        >>> safe_case_name("2_13"), safe_case_name("train/0")
        ('2_13', 'train_0-44c6f7d3')
    """
    from engine.fsutil import safe_name

    cid = str(case_id)
    name = safe_name(cid)
    if name.endswith(DEFAULT_MASK_SUFFIXES):  # the paired layout would read it as a mask
        name = f"{name}-{hashlib.sha1(cid.encode('utf-8')).hexdigest()[:8]}"
    return name


def parse_size(value: str | int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``256`` → (256, 256); ``"256x320"`` (height x width) → (256, 320).

    Raises:
        ConfigError: not a positive size.
    """
    if isinstance(value, (tuple, list)):
        h, w = int(value[0]), int(value[1])
    elif isinstance(value, int):
        h = w = value
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×,]\s*(\d+))?\s*", str(value))
        if not m:
            raise ConfigError(f"invalid size {value!r}", hint="use N (square) or HxW, e.g. 256 or 256x320")
        h = int(m.group(1))
        w = int(m.group(2)) if m.group(2) else h
    if not (1 <= h <= 16384 and 1 <= w <= 16384):
        raise ConfigError(f"invalid size {h}x{w}", hint="use sizes between 1 and 16384 pixels")
    return h, w


def to_uint8_image(x: np.ndarray) -> np.ndarray:
    """float32 (C,H,W) in [0,1] → uint8 (H,W) (grey, also for RGB with equal channels) or (H,W,3)."""
    x = np.asarray(x, np.float32)
    if x.shape[0] == 3 and not (np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])):
        img = x.transpose(1, 2, 0)
    else:
        img = x[0]
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 (H,W[,3]) to ``size`` (height, width): area averaging down, bilinear up."""
    import cv2

    h, w = size
    if img.shape[:2] == (h, w):
        return img
    shrink = h < img.shape[0] and w < img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label map (H,W) to ``size`` with nearest neighbour (class ids are preserved)."""
    import cv2

    h, w = size
    if mask.shape == (h, w):
        return mask.astype(np.uint8, copy=False)
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)


def _is_conversion(out: Path) -> bool:
    """True when ``out/convert.json`` is the summary an earlier :func:`convert_dataset` wrote."""
    import json

    try:
        data = json.loads((out / CONVERT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"source_layout", "names", "n_images"} <= set(data)


def _prepare_out(out: Path) -> None:
    """Refuse an output that is a file, or a non-empty folder an earlier conversion did not make."""
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir():
            raise WorkbenchError("output exists and is not a folder", path=out, hint="choose another --out")
        if any(out.iterdir()) and not _is_conversion(out):
            raise WorkbenchError("output folder is not empty and was not made by `convert`", path=out,
                                 hint="choose a new or empty folder; existing data is never overwritten")


def convert_dataset(ds: Dataset, out: str | Path, size: str | int | tuple[int, int] = 256,
                    progress: ProgressFn | None = None, *, image_format: str = "png") -> dict[str, Any]:
    """Write ``ds`` as a paired folder of 8-bit images and PNG masks at ``size``.

    Args:
        ds: an opened :class:`engine.datasets.Dataset`.
        out: output folder (new, empty, or an earlier conversion, which is replaced).
        size: ``N``, ``"HxW"`` or ``(H, W)``.
        progress: ``(done, total, message)`` callback.
        image_format: ``png`` (lossless) or ``jpg`` (quality 95) for the images; masks are PNG.

    Returns:
        summary: ``n_cases``, ``n_images``, ``n_masks``, ``n_skipped``, ``skipped`` (case id, path,
        reason), ``size``, ``out``, ``labels``, ``names`` (case id → file stem).

    Bad cases (unreadable image or mask) are skipped and reported, never fatal. The folder is built
    beside ``out`` and renamed into place; a non-empty ``out`` not made by ``convert`` is refused.
    """
    if image_format not in ("png", "jpg"):
        raise ConfigError(f"unknown image format {image_format!r}", hint="use png or jpg")
    hw = parse_size(size)
    from engine.fsutil import cleanup_staging, install_dir, staging_dir

    out = Path(out).expanduser().resolve()
    cleanup_staging(out)
    _prepare_out(out)
    # built beside OUT and renamed into place: an earlier conversion stays whole until the new one is
    final, out = out, staging_dir(out)
    (out / "images").mkdir()
    (out / "masks").mkdir()
    try:
        summary = _convert_into(ds, final, out, hw, image_format, progress)
        install_dir(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return summary


def _convert_into(ds: Dataset, final: Path, out: Path, hw: tuple[int, int], image_format: str,
                  progress: Any) -> dict[str, Any]:
    from PIL import Image

    from engine.fsutil import atomic_path, atomic_write_json, atomic_write_text
    from engine.io import to_chw_float, write_mask_png
    from engine.parallel import parallel_map

    names: dict[str, str] = {}
    for c in ds.cases:
        name = safe_case_name(c.case_id)
        if name in names.values():  # two ids sanitise alike (only possible without a hash suffix)
            name = f"{name}-{hashlib.sha1(c.case_id.encode()).hexdigest()[:6]}"
        names[c.case_id] = name

    def work(case: Case) -> dict[str, Any]:
        name = names[case.case_id]
        try:
            arr, meta = ds.load_image(case)
            img = resize_image(to_uint8_image(to_chw_float(arr, meta)), hw)
            mask = resize_mask(ds.load_mask(case), hw) if case.labelled else None
        except WorkbenchError as exc:
            return {"case_id": case.case_id, "path": case.image_path, "reason": str(exc)}
        img_path = out / "images" / f"{name}.{image_format}"
        with atomic_path(img_path) as tmp:
            if image_format == "png":
                Image.fromarray(img).save(tmp, format="PNG", compress_level=6)
            else:
                Image.fromarray(img).save(tmp, format="JPEG", quality=95)
        rec = {"case_id": case.case_id, "file": img_path.name, "group_id": case.group_id, "split": case.split,
               "labelled": case.labelled, "has_mask": bool(mask is not None and mask.any())}
        if mask is not None:
            write_mask_png(out / "masks" / f"{name}.png", mask)
        return rec

    results = parallel_map(work, list(ds.cases), progress, f"converting to {hw[0]}x{hw[1]}")
    done = [r for r in results if "file" in r]
    skipped = [r for r in results if "file" not in r]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "file", "group_id", "split", "labelled", "has_mask"])
    for r in done:
        w.writerow([r["case_id"], r["file"], r["group_id"], r["split"], int(r["labelled"]), int(r["has_mask"])])
    atomic_write_text(out / "cases.csv", buf.getvalue())
    summary = {
        "out": str(final), "source": str(ds.root), "source_layout": ds.layout, "size": list(hw),
        "image_format": image_format, "labels": {str(k): v for k, v in ds.labels.items()},
        "n_cases": len(ds.cases), "n_images": len(done), "n_masks": sum(r["labelled"] for r in done),
        "n_with_mask": sum(r["has_mask"] for r in done), "n_skipped": len(skipped), "skipped": skipped,
        "names": {r["case_id"]: Path(r["file"]).stem for r in done},
    }
    atomic_write_json(out / CONVERT_MARKER, summary)
    return summary
