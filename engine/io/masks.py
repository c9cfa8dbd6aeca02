"""Mask decoding (binary, anti-aliased, label, palette, RGB) and the lossless PNG mask writer.

All masks become ``uint8 (H,W)`` label maps: 0 = background, 1..K-1 = classes.

Decoding rules for single-channel masks (:func:`decode_mask_array`):
- values ⊆ {0, 255} → binary (255 → 1)            ``encoding = "binary255"``
- values ⊆ {0, 1}   → binary                       ``"binary01"``
- values {0, v}, v > 63 → binary (v → 1)         ``"binary"`` (with a ``note``); v ≤ 63 is a class id
- a blur of two levels (in-between values only on the boundary between the lowest and the
  highest level, as a resize leaves them) → ``> threshold`` (0/255) or the midpoint → 1
  ``"antialiased"``
- otherwise up to 128 distinct values ≤ 255 → a label map kept as-is ``"labels"``; ids need not
  be consecutive ({0, 127, 255} is three classes): the dataset maps them to 0..K-1 and notes it
- 16-bit label values above 255 → mapped to 0..K-1 here ``"labels_mapped"``
- anything else (a photo in the mask folder, > 128 levels that are no blur) → :class:`MaskError`
- JPEG masks (lossy) → ``> threshold`` → 1
Palette PNGs keep their palette indices (``"palette"``). RGB masks whose channels are
equal are treated as grayscale; true colour masks are mapped through a colour map
(``"rgb"``), built from the colours present when none is given.

Example:
    >>> m, info = read_mask("masks/0001.png")      # doctest: +SKIP
    >>> m.dtype, info["encoding"]                   # doctest: +SKIP
    (dtype('uint8'), 'palette')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import MaskError, ReadError

MAX_RGB_COLOURS = 16
#: Most distinct values a single-channel mask may hold and still be read as a label map.
#: in a two-valued mask {0, v}, v up to this is read as class id v (a label map holding one class,
#: e.g. only 'vessel' = 2); above it, as a binary mask's foreground grey (read as 1, with a note)
MAX_CLASS_ID_ALONE = 63
MAX_LABEL_VALUES = 128
#: A grey mask is "anti-aliased" when at least this share of its in-between pixels lies on an edge
#: (its 3×3 neighbourhood is not flat), as a resize leaves them; a label map's classes are regions.
_BLUR_SHARE = 0.95


def _is_two_level_blur(a: np.ndarray, lo: int, hi: int) -> bool:
    """True when ``a`` looks like a two-level mask (``lo``/``hi``) blurred by resizing: the two levels
    hold most pixels and the in-between values lie on edges (no flat in-between regions)."""
    from scipy import ndimage

    mid = (a > lo) & (a < hi)
    n_mid = int(np.count_nonzero(mid))
    n_lo, n_hi = int(np.count_nonzero(a == lo)), int(np.count_nonzero(a == hi))
    if n_mid == 0 or n_hi == 0 or n_lo == 0 or n_mid > n_lo + n_hi:
        return False
    edge = ndimage.maximum_filter(a, size=3, mode="nearest") != ndimage.minimum_filter(a, size=3, mode="nearest")
    return bool(np.count_nonzero(mid & edge) >= _BLUR_SHARE * n_mid)


#: Distinct, colour-blind-friendly class colours (RGB), index = class id.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167), (255, 255, 255), (120, 120, 120),
)


def decode_mask_array(arr: np.ndarray, *, threshold: int = 127,
                      colour_map: dict[tuple[int, int, int], int] | None = None,
                      path: str | Path | None = None, lossy: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Turn a raw mask array (H,W) or (H,W,C) into a uint8 label map (H,W).

    Returns:
        ``(labels uint8 (H,W), info)`` with ``info['encoding']`` and ``info['classes']``
        (sorted class ids present).
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] in (2, 4):
        a = a[..., : (1 if a.shape[2] == 2 else 3)]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 3:
        if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
            a = a[..., 0]
        else:
            return _decode_rgb(a, colour_map, path)
    if a.ndim != 2:
        raise MaskError(f"mask has unsupported shape {a.shape}", path=path,
                        hint="save masks as 2-D single-channel (or palette/RGB) images")
    if a.dtype == bool:
        labels, enc = a.astype(np.uint8), "binary01"
    else:
        if np.issubdtype(a.dtype, np.floating):
            if a.size and not np.isfinite(a).all():
                raise MaskError("float mask holds NaN or infinite values", path=path,
                                hint="masks hold class ids; re-export the mask as an 8-bit PNG")
            if a.size and a.max() <= 1.0:
                a = np.rint(a * 255.0)
            a = a.astype(np.int64)
        if a.size and a.min() < 0:
            raise MaskError("mask has negative values", path=path, hint="masks must hold class ids ≥ 0")
        if a.size and a.max() > 65535:
            raise MaskError(f"mask holds values up to {int(a.max())}", path=path,
                            hint="masks hold class ids 0..255 (or 0/255 for binary)")
        values = _unique_small(a)
        binary = _binary_encoding(values)
        if binary is not None:
            labels = (a > 0).astype(np.uint8) if binary[0] == "binary255" else a.astype(np.uint8)
            return labels, {"encoding": binary[0], "classes": binary[1]}
        if lossy:  # JPEG: compression noise everywhere, the levels cannot be told apart: threshold
            labels, enc = (a > threshold).astype(np.uint8), "antialiased"
        elif len(values) == 2 and values[0] == 0 and values[1] > MAX_CLASS_ID_ALONE:
            # {0, v} with a large v: a binary mask saved with another foreground grey ({0, 100});
            # a small v ({0, 2}) is a class id: a multi-class mask that holds one class only
            return (a > 0).astype(np.uint8), {"encoding": "binary", "classes": [0, 1],
                                              "note": f"binary mask with foreground value {values[1]} (read as 1)"}
        elif len(values) > 2 and _is_two_level_blur(a, values[0], values[-1]):
            lo, hi = values[0], values[-1]
            cut = threshold if (lo, hi) == (0, 255) else (lo + hi) / 2.0
            labels, enc = (a > cut).astype(np.uint8), "antialiased"
        elif len(values) <= MAX_LABEL_VALUES and max(values) <= 255:
            # a label map; ids need not be consecutive ({0,127,255} = 3 classes): the dataset maps
            # every id it finds to consecutive classes and says so (see Dataset.label_lut)
            info = {"encoding": "labels", "classes": values}
            if values != list(range(len(values))):
                info["note"] = (f"label values {values} are not consecutive; "
                                f"the dataset maps them to 0..{len(values) - 1}")
            return a.astype(np.uint8), info
        elif len(values) <= MAX_LABEL_VALUES:  # 16-bit ids above 255: map to consecutive ids here
            lut = {v: i for i, v in enumerate(values)}
            mapped = np.vectorize(lut.__getitem__, otypes=[np.uint8])(a) if a.size else a.astype(np.uint8)
            return mapped, {"encoding": "labels_mapped", "classes": list(range(len(values))),
                            "value_map": {str(v): i for v, i in lut.items()},
                            "note": f"16-bit label values {values[:8]}{'…' if len(values) > 8 else ''} mapped to "
                                    f"0..{len(values) - 1}"}
        else:
            raise MaskError(f"mask has {len(values)} distinct values (from {values[0]} to {values[-1]}) that are "
                            "neither a label map nor a two-level mask blurred by resizing", path=path,
                            hint="masks hold class ids (0, 1, 2...) or 0/255; is this an image in the mask "
                            "folder? Re-export the mask without smoothing")
    classes = [int(c) for c in _unique_small(labels)]
    return labels, {"encoding": enc, "classes": classes}


def _binary_encoding(values: list[int]) -> tuple[str, list[int]] | None:
    """``(encoding, classes)`` of a mask whose distinct values are ``values`` when it is binary
    (⊆ {0, 255}: ``binary255``; ⊆ {0, 1}: ``binary01``), else None."""
    if set(values) <= {0, 255}:
        return "binary255", [int(v > 0) for v in values]
    if set(values) <= {0, 1}:
        return "binary01", list(values)
    return None


def _unique_small(a: np.ndarray) -> list[int]:
    """Sorted distinct values of a non-negative integer array.

    Masks usually hold one or two values: min/max and two counts settle those (~30× faster than
    a histogram on a 420×580 mask); otherwise bincount (uint8/16) or np.unique.
    """
    if a.size == 0:
        return []
    lo, hi = a.min(), a.max()
    if lo == hi:
        return [int(lo)]
    if np.count_nonzero(a == lo) + np.count_nonzero(a == hi) == a.size:
        return [int(lo), int(hi)]
    if a.dtype in (np.uint8, np.uint16) or (np.issubdtype(a.dtype, np.integer) and hi < 65536):
        counts = np.bincount(a.ravel().astype(np.int64, copy=False))
        return [int(v) for v in np.flatnonzero(counts)]
    return [int(v) for v in np.unique(a)]


def _decode_rgb(a: np.ndarray, colour_map: dict[tuple[int, int, int], int] | None,
                path: str | Path | None) -> tuple[np.ndarray, dict[str, Any]]:
    a8 = a.astype(np.uint32)
    packed = (a8[..., 0] << 16) | (a8[..., 1] << 8) | a8[..., 2]
    colours, inverse = np.unique(packed.ravel(), return_inverse=True)
    if colour_map is None:
        if len(colours) > MAX_RGB_COLOURS:
            raise MaskError(f"RGB mask has {len(colours)} colours (anti-aliased or not a mask)", path=path,
                            hint="save masks without anti-aliasing, or pass a colour map (colour → class id)")
        ordered = sorted(int(c) for c in colours)
        if 0 in ordered:
            ordered.remove(0)
        colour_map = {_unpack(c): i + 1 for i, c in enumerate(ordered)}
        colour_map[(0, 0, 0)] = 0
    lut = np.zeros(len(colours), dtype=np.uint8)
    for i, c in enumerate(colours):
        rgb = _unpack(int(c))
        if rgb not in colour_map:
            raise MaskError(f"RGB mask colour {rgb} is not in the colour map", path=path,
                            hint=f"known colours: {sorted(colour_map)}; fix the mask or extend the map")
        lut[i] = colour_map[rgb]
    labels = lut[inverse].reshape(packed.shape)
    return labels, {"encoding": "rgb", "classes": [int(c) for c in _unique_small(labels)],
                    "colour_map": {f"{k[0]},{k[1]},{k[2]}": v for k, v in colour_map.items()}}


def _unpack(c: int) -> tuple[int, int, int]:
    return (c >> 16) & 255, (c >> 8) & 255, c & 255


def read_mask(path: str | Path, *, threshold: int = 127, page: int | None = None,
              colour_map: dict[tuple[int, int, int], int] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a mask file (PNG/BMP/TIFF; palette indices kept) into a uint8 label map (H,W).

    Raises:
        ReadError: unreadable file; MaskError: undecodable content.
    """
    from engine.io.kinds import reader_kind
    from engine.io.raster import read_raster, read_tiff

    path = path if isinstance(path, Path) else Path(path)
    if not path.exists():
        raise ReadError("mask file not found", path=path, hint="check the mask folder and file names")
    kind = reader_kind(path)
    if kind == "raster":
        if path.suffix.lower() in (".jpg", ".jpeg"):
            arr, meta = read_raster(path)
            labels, info = decode_mask_array(arr, threshold=threshold, colour_map=colour_map, path=path, lossy=True)
            info["warning"] = "JPEG masks are lossy; values were thresholded"
            return labels, {**info, "height": meta["height"], "width": meta["width"]}
        arr, meta = read_raster(path, keep_palette=True)
        if meta.get("mode") == "P":
            labels = arr.astype(np.uint8)
            classes = _unique_small(labels)
            return labels, {"encoding": "palette", "classes": classes,
                            "height": meta["height"], "width": meta["width"]}
    elif kind == "tiff":
        arr, meta = read_tiff(path, page=page, fix_nonfinite=False)
    else:
        raise ReadError("DICOM files are not supported as masks", path=path,
                        hint="export the mask as PNG, or provide an RLE CSV")
    labels, info = decode_mask_array(arr, threshold=threshold, colour_map=colour_map, path=path)
    info.update(height=int(labels.shape[0]), width=int(labels.shape[1]))
    return labels, info


def mask_summary(path: str | Path, *, threshold: int = 127) -> dict[str, Any]:
    """What a dataset index needs of a mask file: ``area`` (foreground pixels), ``classes``,
    ``encoding`` and ``hw`` = [H, W], equal to :func:`read_mask` followed by a pixel count.

    A binary mask in a plain 8-bit TIFF (the Kaggle UNS masks) is summarised from its decoded
    pixels (its distinct values and a count), without building the label map (one file read, no
    copies); anything else goes through :func:`decode_mask_array` / :func:`read_mask`.

    Raises:
        ReadError: unreadable file or over the pixel limit; MaskError: undecodable content.
    """
    path = path if isinstance(path, Path) else Path(path)
    a = None
    if path.suffix.lower() in (".tif", ".tiff"):
        from engine.io.raster import read_plain_tiff

        a = read_plain_tiff(path, check_limit=True)
    if a is not None:
        binary = _binary_encoding(_unique_small(a))
        if binary is not None:  # the label map would be a > 0: its area is the nonzero count
            return {"area": int(np.count_nonzero(a)), "classes": binary[1], "encoding": binary[0],
                    "hw": [int(a.shape[0]), int(a.shape[1])]}
        labels, info = decode_mask_array(a, threshold=threshold, path=path)
    else:
        labels, info = read_mask(path, threshold=threshold)
    return {"area": int(np.count_nonzero(labels)), "classes": info["classes"], "encoding": info["encoding"],
            "hw": [int(labels.shape[0]), int(labels.shape[1])]}


def write_mask_png(path: str | Path, mask: np.ndarray, palette: bool = False, *, mode: int | None = None) -> Path:
    """Write a label map as a lossless 8-bit PNG (pixel value = class id), atomically.

    Args:
        path: destination ``.png`` path (folders are created).
        mask: integer or bool array (H,W) with values in 0..255.
        palette: write a palette PNG whose indices are the class ids and whose colours are
            :data:`CLASS_COLOURS` (class 1 orange, 2 sky blue...), so the file keeps its values
            for programs and is visible in any image viewer (a grey 0/1 PNG looks black);
            False = 8-bit grayscale.
        mode: file permissions (e.g. ``0o600`` for the review store's corrected masks); default
            ``0o666 & ~umask`` (see :func:`engine.fsutil.atomic_path`).
    """
    from PIL import Image

    from engine.fsutil import atomic_path

    path = path if isinstance(path, Path) else Path(path)
    if path.suffix.lower() != ".png":
        raise MaskError("masks are stored as PNG only", path=path, hint="use a .png file name")
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskError(f"mask must be 2-D (H,W), got shape {m.shape}", path=path, hint="pass a label map")
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if not np.issubdtype(m.dtype, np.integer):
        raise MaskError(f"mask must hold integer class ids, got {m.dtype}", path=path,
                        hint="threshold probabilities into labels first")
    if m.size and (m.min() < 0 or m.max() > 255):
        raise MaskError("mask values must be in 0..255", path=path, hint="use at most 255 classes")
    with atomic_path(path, mode=mode) as tmp:
        im = Image.fromarray(m.astype(np.uint8), mode="L")
        if palette:
            im = Image.frombytes("P", im.size, im.tobytes())  # indices = class ids, unchanged
            im.putpalette([v for i in range(256) for v in CLASS_COLOURS[i % len(CLASS_COLOURS)]])
        im.save(tmp, format="PNG", optimize=False, compress_level=6)
    return path


def mask_to_rgb(mask: np.ndarray, colours: tuple[tuple[int, int, int], ...] = CLASS_COLOURS) -> np.ndarray:
    """Colour a label map (H,W) into uint8 RGB (H,W,3) with one colour per class id."""
    lut = np.array([colours[i % len(colours)] for i in range(256)], dtype=np.uint8)
    return lut[np.asarray(mask, dtype=np.uint8)]
