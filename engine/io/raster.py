"""PNG/JPEG/BMP (Pillow) and TIFF (tifffile) readers. See :mod:`engine.io` for the contract."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import MissingPluginError, ReadError
from engine.io.limits import check_pixels

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
                bands = 3 if im.mode == "P" and not keep_palette else len(im.getbands())
                check_pixels(path, im.size[1], im.size[0], channels=bands)  # header facts, before decoding
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
    except ReadError:
        raise
    except FileNotFoundError:
        raise ReadError("file not found", path=path, hint="check the path") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data: named ReadError
        raise ReadError(f"cannot decode image ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    if arr.dtype == bool:  # 1-bit image: black/white, stored as 0/255 so 8-bit scaling gives {0, 1}
        arr = arr.astype(np.uint8) * np.uint8(255)
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
    """(height, width) from the header; :class:`ReadError` when over the pixel limit."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            w, h = im.size
            bands = 3 if im.mode == "P" else len(im.getbands())
        check_pixels(path, h, w, channels=bands)
    except ReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - the decoder's error types vary: named ReadError
        raise ReadError(f"cannot read image header ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    return int(h), int(w)


def read_tiff(path: Path, page: int | None = None, fix_nonfinite: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an 8/16-bit (or float) TIFF. Multi-page files need an explicit ``page`` (else ReadError).

    Float pixels that are NaN/±Inf go through :func:`finite_or_error` unless ``fix_nonfinite`` is
    False (masks: the mask decoder refuses them instead)."""
    if not page:
        arr = read_plain_tiff(path, check_limit=True)
        if arr is not None:
            return arr, {"format": "tiff", "path": str(path), "height": int(arr.shape[0]), "width": int(arr.shape[1]),
                         "channels": 1, "dtype": "uint8", "bit_depth": 8, "n_pages": 1}
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            n_pages = len(tf.pages)
            if n_pages == 0:
                raise ReadError(f"TIFF is truncated or damaged: no readable image directory in its "
                                f"{Path(path).stat().st_size} bytes", path=path, hint=_REEXPORT)
            if n_pages > 1 and page is None:
                raise ReadError(f"multi-page TIFF ({n_pages} pages); the workbench reads single-page images",
                                path=path, hint="split the stack into one file per page (e.g. tifffile or "
                                "ImageJ), or read one page from Python with engine.io.read_image(path, page=N)")
            index = page or 0
            if not 0 <= index < n_pages:
                raise ReadError(f"page {index} does not exist (the file has {n_pages})", path=path,
                                hint=f"use a page between 0 and {n_pages - 1}")
            p = tf.pages[index]
            shape = tuple(int(v) for v in getattr(p, "shape", ()) or ())
            if len(shape) < 2:
                raise ReadError(f"TIFF page {index} has no image size (shape {shape})", path=path, hint=_REEXPORT)
            planar = len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4)
            hw = shape[1:3] if planar else shape[:2]
            check_pixels(path, hw[0], hw[1], channels=int(np.prod(shape)) // max(1, hw[0] * hw[1]))
            arr = p.asarray()
            bits = int(getattr(p, "bitspersample", arr.dtype.itemsize * 8))
            photometric = getattr(p, "photometric", None)
    except ReadError:
        raise
    except FileNotFoundError:
        raise ReadError("file not found", path=path, hint="check the path") from None
    except ValueError as exc:
        if "imagecodecs" in str(exc):
            raise MissingPluginError(f"TIFF compression needs a codec that is not installed ({exc})",
                                     path=path, hint="pip install imagecodecs") from None
        raise ReadError(f"cannot decode TIFF ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    except Exception as exc:  # noqa: BLE001 - the decoder's error types vary: named ReadError
        raise ReadError(f"cannot decode TIFF ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):  # planar RGB
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3):
        raise ReadError(f"unsupported TIFF array shape {arr.shape}", path=path,
                        hint="save as a single 2-D grayscale or RGB image")
    if arr.dtype == bool:  # 1-bit TIFF: 0/255 as for PNG
        arr = arr.astype(np.uint8) * np.uint8(255)
    warnings_: list[str] = []
    if np.issubdtype(arr.dtype, np.floating) and fix_nonfinite:
        arr, warnings_ = finite_or_error(arr, path)
    if photometric is not None and int(photometric) == 0:  # MINISWHITE (str() of the enum is "0" on 3.11)
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
    if warnings_:
        meta["warnings"] = warnings_
    return arr, meta


def finite_or_error(arr: np.ndarray, path: str | Path | None) -> tuple[np.ndarray, list[str]]:
    """A float image with NaN/±Inf made explicit: all non-finite → :class:`ReadError`; some →
    NaN and -Inf set to the smallest finite value, +Inf to the largest, and a warning saying how
    many (instead of min–max scaling turning the whole image into NaN).

    Returns:
        ``(array, warnings)`` with the same shape and dtype.
    """
    finite = np.isfinite(arr)
    if finite.all():
        return arr, []
    n_bad = int(arr.size - np.count_nonzero(finite))
    if not finite.any():
        raise ReadError(f"float image holds no finite values (all {n_bad} pixels are NaN or infinite)", path=path,
                        hint="re-export the image; NaN usually marks missing data")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    out = np.where(np.isnan(arr) | np.isneginf(arr), lo, arr)
    out = np.where(np.isposinf(out), hi, out).astype(arr.dtype, copy=False)
    return out, [f"{n_bad} NaN/infinite pixel(s) replaced by the finite minimum/maximum ({lo:g}/{hi:g})"]


def classic_tiff_info(path: Path, data: bytes | memoryview | None = None) -> dict[str, int] | None:
    """Basic facts of a classic TIFF's first page from its first IFD, with three small reads
    (or from ``data``, the file's bytes when the caller has read them already):
    ``height``, ``width``, ``photometric``, ``samples``, ``bits`` (0 when per-sample values differ
    or the tag is missing) and ``single_page`` (1 when no second IFD follows).

    Returns None for BigTIFF or anything unusual; callers then fall back to tifffile (~10× slower
    per file), which also produces the proper error for broken files.
    """
    if data is not None:  # bytes or a memoryview of them
        return _ifd_info(lambda offset, n: bytes(data[offset:offset + n]))
    try:
        with open(path, "rb") as f:
            return _ifd_info(lambda offset, n: (f.seek(offset), f.read(n))[1])
    except OSError:
        return None


def _ifd_info(read: Any) -> dict[str, int] | None:
    """:func:`classic_tiff_info` over ``read(offset, n) -> bytes``."""
    import struct

    head = read(0, 8)
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        return None
    e = "<" if head[:2] == b"II" else ">"
    version, offset = struct.unpack(e + "HI", head[2:8])
    if version != 42 or offset < 8:
        return None
    raw = read(offset, 2)
    if len(raw) < 2:
        return None
    (n,) = struct.unpack(e + "H", raw)
    entries = read(offset + 2, 12 * n + 4)
    if n == 0 or len(entries) < 12 * n + 4:
        return None
    found: dict[int, int] = {}
    for k in range(n):
        tag, typ, count, value = struct.unpack(e + "HHI4s", entries[12 * k: 12 * k + 12])
        if tag in (256, 257, 258, 259, 262, 274, 277) and count == 1:
            if typ == 3:  # SHORT
                found[tag] = struct.unpack(e + "H", value[:2])[0]
            elif typ == 4:  # LONG
                found[tag] = struct.unpack(e + "I", value)[0]
    if found.get(256, 0) <= 0 or found.get(257, 0) <= 0:
        return None
    (next_ifd,) = struct.unpack(e + "I", entries[12 * n: 12 * n + 4])
    return {"height": int(found[257]), "width": int(found[256]), "photometric": int(found.get(262, -1)),
            "samples": int(found.get(277, 1)), "bits": int(found.get(258, 0)), "single_page": int(next_ifd == 0),
            "compression": int(found.get(259, 1)), "orientation": int(found.get(274, 1))}


#: TIFF compressions whose decoding is lossless and whose corrupt data libtiff reports as an error,
#: so this path and tifffile agree on every file: none, LZW, Adobe deflate, deflate. (PackBits is left
#: to tifffile: libtiff only warns about corrupt PackBits runs.)
_PLAIN_TIFF_COMPRESSIONS = (1, 5, 8, 32946)
#: files up to this size are read whole before their header is parsed (one read instead of four)
_READ_WHOLE_MAX = 8 << 20


def plain_tiff_info(path: str | Path, data: bytes | memoryview | None = None) -> dict[str, int] | None:
    """:func:`classic_tiff_info` of a file that :func:`read_plain_tiff` can decode (single page,
    8-bit, one channel, BlackIsZero, lossless compression, normal orientation), else None."""
    info = classic_tiff_info(path if isinstance(path, Path) else Path(path), data)
    if info is None or not (info["single_page"] and info["samples"] == 1 and info["bits"] == 8
                            and info["photometric"] == 1 and info["compression"] in _PLAIN_TIFF_COMPRESSIONS
                            and info["orientation"] == 1):
        return None
    return info


def read_plain_tiff(path: str | Path, *, check_limit: bool = False) -> np.ndarray | None:
    """Pixels of a single-page, 8-bit, one-channel BlackIsZero TIFF with a lossless compression,
    decoded by libtiff through ``imagecodecs.tiff_decode`` (no Python-level tag parsing, the GIL
    released while decoding: ~8× faster than tifffile on a 420×580 mask and parallel in threads).
    Returns None for any other file or on any decoding problem; the caller then uses tifffile,
    which produces the proper error. (OpenCV was tried first: it returns garbage pixels for corrupt
    LZW/deflate strips instead of failing.) The file is opened and read once.

    ``check_limit``: raise :class:`ReadError` when the header's size is over the pixel limit
    (before decoding anything)."""
    path = path if isinstance(path, Path) else Path(path)
    try:  # small files (every mask, most images) in one read; a big one's header first
        with open(path, "rb") as fh:
            data = fh.read() if os.fstat(fh.fileno()).st_size <= _READ_WHOLE_MAX else None
    except OSError:
        return None
    info = plain_tiff_info(path, data)
    if info is None:
        return None
    if check_limit:
        check_pixels(path, info["height"], info["width"])
    try:
        if data is None:
            data = path.read_bytes()
        import imagecodecs

        a = imagecodecs.tiff_decode(data)
    except Exception:  # noqa: BLE001 - corrupt data or no codec: tifffile reports it properly
        return None
    return a if a.dtype == np.uint8 and a.shape == (info["height"], info["width"]) else None


def tiff_size(path: Path) -> tuple[int, int]:
    """(height, width) of the first page from the header; :class:`ReadError` when over the pixel limit."""
    info = classic_tiff_info(path)
    if info is not None:
        check_pixels(path, info["height"], info["width"], channels=info["samples"])
        return info["height"], info["width"]
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            if len(tf.pages) == 0:
                raise ReadError("TIFF is truncated or damaged: no readable image directory", path=path, hint=_REEXPORT)
            shape = tf.pages[0].shape
    except ReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - the decoder's error types vary: named ReadError
        raise ReadError(f"cannot read TIFF header ({type(exc).__name__}: {exc})", path=path, hint=_REEXPORT) from None
    if len(shape) < 2:
        raise ReadError(f"TIFF first page has no image size (shape {shape})", path=path, hint=_REEXPORT)
    if len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
        h, w = int(shape[1]), int(shape[2])
    else:
        h, w = int(shape[0]), int(shape[1])
    check_pixels(path, h, w, channels=int(np.prod(shape)) // max(1, h * w))
    return h, w
