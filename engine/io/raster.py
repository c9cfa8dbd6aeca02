"""PNG/JPEG/BMP (Pillow) and TIFF (tifffile) readers. See :mod:`engine.io` for the contract."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import MissingPluginError, ReadError

_REEXPORT = "re-export or re-download the file, or remove it from the folder"


def _pil():
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = 400_000_000  # large but bounded; whole-slide images are out of scope
    return Image


def read_raster(path: Path, keep_palette: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Read PNG/JPEG/BMP. Returns (H,W) or (H,W,C) uint8/uint16 and meta.

    Palette images are converted to RGB unless ``keep_palette`` (masks keep indices).
    """
    Image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                n_frames = getattr(im, "n_frames", 1)
                palette = im.getpalette() if mode == "P" else None
                if mode == "P" and not keep_palette:
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif mode in ("I;16", "I;16B", "I;16L"):
                    arr = np.array(im, dtype=np.uint16)
                elif mode == "I":
                    arr = np.array(im)
                    arr = arr.astype(np.uint16) if arr.min() >= 0 and arr.max() < 65536 else arr
                elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif mode == "F":
                    pass
                if mode not in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.array(im)
    except FileNotFoundError:
        raise ReadError("file not found", path=path, hint="check the path") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ReadError(f"cannot decode image ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    meta: dict[str, Any] = {
        "format": path.suffix.lower().lstrip(".").replace("jpeg", "jpg"),
        "path": str(path),
        "mode": mode,
        "height": int(arr.shape[0]),
        "width": int(arr.shape[1]),
        "channels": int(arr.shape[2]) if arr.ndim == 3 else 1,
        "dtype": str(arr.dtype),
        "bit_depth": 16 if arr.dtype == np.uint16 else (1 if mode == "1" else 8),
    }
    if n_frames > 1:
        meta["n_frames"] = int(n_frames)
    if palette is not None and keep_palette:
        meta["palette"] = palette[: 3 * 256]
    return arr, meta


def raster_size(path: Path) -> tuple[int, int]:
    Image = _pil()
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as exc:
        raise ReadError(f"cannot read image header ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    return int(h), int(w)


def read_tiff(path: Path, page: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an 8/16-bit TIFF. Multi-page files need an explicit ``page`` (else ReadError)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            n_pages = len(tf.pages)
            if n_pages == 0:
                raise ReadError("TIFF has no pages", path=path, hint=_REEXPORT)
            if n_pages > 1 and page is None:
                raise ReadError(f"multi-page TIFF ({n_pages} pages)", path=path,
                                hint="pass page=N (CLI: --page N) to read one page, or split the stack into files")
            index = page or 0
            if not 0 <= index < n_pages:
                raise ReadError(f"page {index} does not exist (the file has {n_pages})", path=path,
                                hint=f"use a page between 0 and {n_pages - 1}")
            p = tf.pages[index]
            arr = p.asarray()
            bits = int(getattr(p, "bitspersample", arr.dtype.itemsize * 8))
            photometric = str(getattr(p, "photometric", ""))
    except ReadError:
        raise
    except FileNotFoundError:
        raise ReadError("file not found", path=path, hint="check the path") from None
    except ValueError as exc:
        if "imagecodecs" in str(exc):
            raise MissingPluginError(f"TIFF compression needs a codec that is not installed ({exc})",
                                     path=path, hint="pip install imagecodecs") from None
        raise ReadError(f"cannot decode TIFF ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    except Exception as exc:
        raise ReadError(f"cannot decode TIFF ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):  # planar RGB
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3):
        raise ReadError(f"unsupported TIFF array shape {arr.shape}", path=path,
                        hint="save as a single 2-D grayscale or RGB image")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if "MINISWHITE" in photometric.upper():
        arr = (np.iinfo(arr.dtype).max - arr) if np.issubdtype(arr.dtype, np.integer) else arr.max() - arr
    meta: dict[str, Any] = {
        "format": "tiff",
        "path": str(path),
        "height": int(arr.shape[0]),
        "width": int(arr.shape[1]),
        "channels": int(arr.shape[2]) if arr.ndim == 3 else 1,
        "dtype": str(arr.dtype),
        "bit_depth": bits,
        "n_pages": n_pages,
    }
    return arr, meta


def tiff_size(path: Path) -> tuple[int, int]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            shape = tf.pages[0].shape
    except Exception as exc:
        raise ReadError(f"cannot read TIFF header ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    if len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])
