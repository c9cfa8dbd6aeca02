"""Image and mask readers behind one small interface, chosen by file suffix.

Every reader returns ``(array, meta)``:
- ``array``: the pixels, (H,W) or (H,W,C), in the file's own dtype (uint8/uint16/...),
  except DICOM, which returns display-ready float32 in [0, 1] after rescale slope/
  intercept, VOI LUT/windowing and MONOCHROME1 inversion (``raw=True`` gives the
  rescaled modality values instead).
- ``meta``: JSON-safe dict with at least ``format``, ``height``, ``width``, ``channels``,
  ``dtype`` and ``bit_depth``; DICOM adds the non-PHI header table (:mod:`engine.dicom_meta`).

Use :func:`to_chw_float` to get the data contract's float32 (C,H,W) in [0, 1], or
:func:`load_image` for both steps.

Example:
    >>> arr, meta = read_image("train/1_1.tif")                # doctest: +SKIP
    >>> x = to_chw_float(arr, meta); x.shape, x.dtype           # doctest: +SKIP
    ((1, 420, 580), dtype('float32'))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.errors import ReadError
from engine.io.kinds import IMAGE_SUFFIXES, is_dicom_file, is_image_file, reader_kind, sniff_kind
from engine.io.limits import DEFAULT_MAX_PIXELS, check_pixels, max_pixels, set_max_pixels

Reader = Callable[..., tuple[np.ndarray, dict[str, Any]]]


def read_image(path: str | Path, *, page: int | None = None, frame: int | None = None,
               raw: bool = False, window: tuple[float, float] | None = None,
               include_phi: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file with the reader chosen by its suffix.

    Args:
        path: PNG/JPEG/BMP, TIFF (8/16-bit) or DICOM file.
        page: TIFF page to read; multi-page TIFFs without it raise :class:`ReadError`.
        frame: DICOM frame to read; multi-frame DICOMs without it raise.
        raw: DICOM only: return modality values (after rescale) instead of windowed [0,1].
        window: DICOM only: ``(center, width)`` overriding the file's VOI window.
        include_phi: DICOM only: include patient-identifying tags in ``meta``.

    Returns:
        ``(array (H,W) or (H,W,C), meta dict)``.

    Raises:
        ReadError: missing/corrupt/unsupported file; message names the file and the fix.
    """
    path = path if isinstance(path, Path) else Path(path)
    if not path.exists():
        raise ReadError("file not found", path=path, hint="check the path and that the file was not moved")
    if path.is_dir():
        raise ReadError("is a folder, not an image file", path=path,
                        hint="pass an image file, or use a dataset command for folders")
    kind = reader_kind(path)
    if kind == "raster":
        from engine.io.raster import read_raster

        return read_raster(path)
    if kind == "tiff":
        from engine.io.raster import read_tiff

        return read_tiff(path, page=page)
    from engine.io.dicom import read_dicom

    return read_dicom(path, frame=frame, raw=raw, window=window, include_phi=include_phi)


def to_chw_float(arr: np.ndarray, meta: dict[str, Any] | None = None) -> np.ndarray:
    """Convert a reader's array to the data contract: float32 (C,H,W) in [0, 1].

    - uint8 → /255; uint16/int → divided by ``2**bit_depth - 1`` when ``meta['bit_depth']``
      is below the dtype's width (e.g. 12-bit in 16-bit), else min–max scaled;
      float → kept when already in [0,1], else min–max scaled.
    - (H,W) → (1,H,W); (H,W,3) → (3,H,W); RGBA drops alpha; LA keeps L.
    """
    meta = meta or {}
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] in (2, 4):
        a = a[..., :1] if a.shape[2] == 2 else a[..., :3]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ReadError(f"expected a 2-D image, got an array of shape {a.shape}",
                        path=meta.get("path"), hint="pass a single-page, single-frame image")
    if a.dtype == np.uint8:
        out = a.astype(np.float32) / 255.0
    elif a.dtype == bool:
        out = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        bits = int(meta.get("bit_depth") or 0)
        width = a.dtype.itemsize * 8
        if 0 < bits < width and a.min() >= 0:
            out = a.astype(np.float32) / float(2**bits - 1)
        else:
            out = _minmax(a)
    else:
        a = a.astype(np.float32, copy=False)
        if a.size and not np.isfinite(a).all():
            from engine.io.raster import finite_or_error

            a, _ = finite_or_error(a, meta.get("path"))
        out = a if (a.size == 0 or (a.min() >= 0.0 and a.max() <= 1.0)) else _minmax(a)
    out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
    if out.ndim == 2:
        return out[None]
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def load_image(path: str | Path, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`read_image` then :func:`to_chw_float`: float32 (C,H,W) in [0,1] and meta."""
    arr, meta = read_image(path, **kwargs)
    return to_chw_float(arr, meta), meta


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) read from the header only (no pixel decoding)."""
    path = path if isinstance(path, Path) else Path(path)
    if not path.exists():
        raise ReadError("file not found", path=path, hint="check the path and that the file was not moved")
    kind = reader_kind(path)
    if kind == "raster":
        from engine.io.raster import raster_size

        return raster_size(path)
    if kind == "tiff":
        from engine.io.raster import tiff_size

        return tiff_size(path)
    from engine.io.dicom import dicom_size

    return dicom_size(path)


from engine.io.masks import decode_mask_array, mask_summary, mask_to_rgb, read_mask, write_mask_png  # noqa: E402

__all__ = [
    "IMAGE_SUFFIXES", "read_image", "to_chw_float", "load_image", "image_size", "reader_kind",
    "is_image_file", "is_dicom_file", "sniff_kind", "DEFAULT_MAX_PIXELS", "check_pixels", "max_pixels",
    "set_max_pixels", "read_mask", "write_mask_png", "mask_to_rgb", "decode_mask_array", "mask_summary",
]
