"""Inputs of interactive segmentation: image and mask checks, the 8-bit working image, views.

Every method works on one **working image**: (H,W) uint8 grey, made once per session by
:func:`working_image` from whatever the caller has — (H,W) or (H,W,3|4) arrays of any integer
dtype (uint8, uint16, int16 CT in HU, ...) or float. Its intensities are stretched between the
0.5th and 99.5th percentiles (so a CT's −1024 air and a 12-bit X-ray use the full 8-bit range),
colour becomes luminance. 8 bits are plenty for clicks at a working resolution of a few hundred
pixels and keep a session at one byte per pixel.

A **view** (:class:`View`) is the part of the image a click model looks at: the whole image, or a
zoom-in box around the current mask and the clicks (RITM's and FocalClick's "zoom-in"), which
gives small objects (a nerve of 40 px in a 600 px frame) many more model pixels.

Example:
    >>> g = working_image(np.arange(12, dtype=np.int16).reshape(3, 4) * 300 - 1024)
    >>> g.dtype, g.shape, int(g.min()), int(g.max())
    (dtype('uint8'), (3, 4), 0, 255)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import ConfigError, MaskError, ReadError

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def check_image(image: object) -> np.ndarray:
    """Return ``image`` as an ndarray after checking it is an (H,W) or (H,W,C) image (C = 1, 3, 4).

    Raises:
        ReadError: not an array, wrong rank or channel count, empty, non-finite values, or more
            pixels than the reader limit (:func:`engine.io.limits.max_pixels`).
    """
    from engine.io.limits import max_pixels

    if not isinstance(image, np.ndarray):
        raise ReadError(f"the image must be a numpy array, got {type(image).__name__}",
                        hint="read the file first (engine.io.read_image) and pass its array")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ReadError(f"the image must be (H,W) grey or (H,W,3) colour, got shape {image.shape}",
                        hint="pass one 2D slice (for a volume: volume[k]) or an RGB frame with channels last")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ReadError(f"the image is too small ({image.shape[0]}×{image.shape[1]})", hint="pass a real image")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ReadError(f"unsupported image dtype {image.dtype}",
                        hint="pass integer (uint8, uint16, int16) or float pixels")
    n = image.shape[0] * image.shape[1] * (image.shape[2] if image.ndim == 3 else 1)
    if n > max_pixels():
        raise ReadError(f"the image has {n:,} pixel values, over the limit of {max_pixels():,}",
                        hint="downscale it, or raise the limit (SEGWB_MAX_PIXELS / --max-pixels)")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ReadError("the image has NaN or infinite pixels", hint="replace them (np.nan_to_num) first")
    return image


def working_image(image: np.ndarray) -> np.ndarray:
    """The (H,W) uint8 grey working image of any supported image (see the module docstring).

    Args:
        image: (H,W) or (H,W,3|4) array, any integer or float dtype.

    Returns:
        (H,W) uint8, intensities stretched between the 0.5th and 99.5th percentiles.
    """
    image = check_image(image)
    if image.ndim == 3:
        rgb = image[:, :, :3].astype(np.float32)
        grey = rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114
    else:
        grey = image.astype(np.float32)
    step = max(1, int(np.sqrt(grey.size / 250_000)))  # percentiles from ≤ ~250k pixels: fast on big images
    lo, hi = np.percentile(grey[::step, ::step], [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi <= lo:  # flat (or almost) image: full range of what is there
        lo, hi = float(grey.min()), float(grey.max())
    if hi <= lo:
        return np.zeros(grey.shape, np.uint8)
    out = (grey - lo) * (255.0 / (hi - lo))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def check_mask(mask: object, shape: tuple[int, int], what: str = "mask") -> np.ndarray:
    """``mask`` as a (H,W) bool array of the image's ``shape`` (non-zero = object).

    Raises:
        MaskError: not an array, or not the image's size.
    """
    if not isinstance(mask, np.ndarray):
        raise MaskError(f"the {what} must be a numpy array, got {type(mask).__name__}",
                        hint="pass an (H,W) array of 0/1 (or a label map compared to a class id: labels == k)")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.shape != tuple(shape):
        raise MaskError(f"the {what} is {mask.shape} but the image is {tuple(shape)}",
                        hint="give a mask of the image's height and width (resize it with nearest neighbour)")
    return np.asarray(mask != 0, dtype=bool)


def check_point(row: object, col: object, shape: tuple[int, int]) -> tuple[int, int]:
    """``(row, col)`` as ints inside an image of ``shape``.

    Raises:
        ConfigError: not whole numbers, or outside the image.
    """
    try:
        r, c = int(row), int(col)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"click position ({row!r}, {col!r}) is not a pair of pixel indices",
                          hint="pass row and column as integers") from None
    if not (0 <= r < shape[0] and 0 <= c < shape[1]):
        raise ConfigError(f"click ({r}, {c}) is outside the {shape[0]}×{shape[1]} image",
                          hint="rows go 0..H-1 and columns 0..W-1 (canvas x is the column, y the row)")
    return r, c


@dataclass(frozen=True)
class View:
    """A box of the image, rows ``r0:r1`` and columns ``c0:c1`` (end exclusive)."""

    r0: int
    c0: int
    r1: int
    c1: int

    @property
    def height(self) -> int:
        return self.r1 - self.r0

    @property
    def width(self) -> int:
        return self.c1 - self.c0

    @staticmethod
    def full(shape: tuple[int, int]) -> "View":
        return View(0, 0, int(shape[0]), int(shape[1]))


def _span(centre: float, side: int, limit: int) -> tuple[int, int]:
    """``[a, a + side)`` centred on ``centre`` and shifted inside ``[0, limit)``."""
    side = min(side, limit)
    a = int(round(centre - side / 2.0))
    a = min(max(a, 0), limit - side)
    return a, a + side


def box_view(shape: tuple[int, int], r0: float, c0: float, r1: float, c1: float, expansion: float,
             min_side: int) -> View:
    """A square view around the box ``[r0, r1] × [c0, c1]`` (inclusive pixel bounds): side =
    ``max(box height, box width) × expansion``, at least ``min_side``, clamped inside the image
    (a side longer than the image's becomes the image's)."""
    h, w = int(shape[0]), int(shape[1])
    side = max(int(np.ceil(max(r1 - r0 + 1, c1 - c0 + 1) * expansion)), int(min_side), 2)
    ra, rb = _span((r0 + r1 + 1) / 2.0, side, h)
    ca, cb = _span((c0 + c1 + 1) / 2.0, side, w)
    return View(ra, ca, rb, cb)


def zoom_view(shape: tuple[int, int], mask: np.ndarray | None, points: list[tuple[int, int]], *,
              expansion: float = 1.4, min_side_frac: float = 0.2, min_side_px: int = 48) -> View:
    """The zoom-in view around ``mask`` and the clicked ``points``; the whole image when the mask is
    empty (the first click) or the zoomed box would cover most of it anyway.

    Args:
        shape: (H, W) of the image.
        mask: (H,W) bool current mask (or None).
        points: (row, col) of every click so far.
        expansion: side = bounding-box side × this (RITM: 1.4).
        min_side_frac, min_side_px: the side is at least ``max(min_side_px, min_side_frac × max(H, W))``.
    """
    h, w = int(shape[0]), int(shape[1])
    if mask is None or not mask.any():
        return View.full(shape)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    for r, c in points:
        r0, r1, c0, c1 = min(r0, r), max(r1, r), min(c0, c), max(c1, c)
    min_side = max(int(min_side_px), int(round(min_side_frac * max(h, w))))
    v = box_view(shape, r0, c0, r1, c1, expansion, min_side)
    if v.height * v.width >= 0.8 * h * w:
        return View.full(shape)
    return v


def disk_maps(points: list[tuple[float, float, bool]], size: tuple[int, int], radius: float) -> np.ndarray:
    """Click maps: (2,h,w) float32, channel 0 = disks of ``radius`` around positive clicks, 1 = negative.

    Args:
        points: ``(row, col, positive)`` in the map's own (sub-)pixel coordinates; points outside are skipped.
        size: (h, w) of the maps.
        radius: disk radius in map pixels (RITM's disk encoding).
    """
    h, w = size
    out = np.zeros((2, h, w), np.float32)
    r2 = radius * radius
    span = int(np.ceil(radius))
    for r, c, positive in points:
        if not (-radius <= r < h + radius and -radius <= c < w + radius):
            continue
        ra, rb = max(int(r) - span, 0), min(int(r) + span + 2, h)
        ca, cb = max(int(c) - span, 0), min(int(c) + span + 2, w)
        if ra >= rb or ca >= cb:
            continue
        yy, xx = np.mgrid[ra:rb, ca:cb]
        disk = (yy - r) ** 2 + (xx - c) ** 2 <= r2
        ch = out[0 if positive else 1, ra:rb, ca:cb]
        ch[disk] = 1.0
    return out


def resize(arr: np.ndarray, size: tuple[int, int], linear: bool = True) -> np.ndarray:
    """``arr`` (h,w) resized to ``size`` = (H, W) (area averaging when shrinking, else bilinear;
    nearest with ``linear=False``)."""
    import cv2

    hh, ww = int(size[0]), int(size[1])
    if arr.shape[:2] == (hh, ww):
        return arr
    if not linear:
        interp = cv2.INTER_NEAREST
    elif hh < arr.shape[0] and ww < arr.shape[1]:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR
    return cv2.resize(arr, (ww, hh), interpolation=interp)
