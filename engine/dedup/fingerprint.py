"""Per-image fingerprints for near-duplicate search, computed once and cached per dataset.

For every image the engine keeps three things, all derived from one decode of the file:

- ``thumb``: the grey-level image resized to the SSIM size (default 64×80), float32 in [0, 1].
  This is what SSIM is verified on. Resizing is PIL's ``BILINEAR`` filter (an anti-aliased
  triangle filter) written as matrix products (the vertical pass in blocks of its banded
  weights, into per-thread buffers: :class:`Resizer`), which matches PIL to ~1e-7 and costs
  ~0.16 ms per 420×580 image. Decoding runs in a thread pool (libtiff via imagecodecs and the
  products release the GIL), each worker decoding into reused buffers and computing the
  descriptors of its chunk of images.
- ``fp``: the thumb's local structure ``x − box7(x)`` (the image minus its 7×7 local mean, the
  same window SSIM uses), L2-normalised, randomly projected to ``fp_dim`` (default 256,
  fixed Gaussian matrix, seed 0; Johnson–Lindenstrauss keeps cosines to about ±0.06) and
  normalised again: float32 (D,), ``||fp|| = 1``. The cosine of two fingerprints approximates
  the variance-weighted mean of the local correlations that SSIM's structure term measures,
  so it ranks candidates the way SSIM will judge them. Subtracting local means makes it blind
  to brightness shifts, and normalising to contrast changes: candidate recall does not depend
  on either. (Why not a plain low-resolution thumb: frames of one ultrasound video share their
  coarse anatomy, so coarse thumbs correlate > 0.9 for thousands of non-duplicate pairs; the
  speckle-level structure separates twins, ~0.98–1.0, from other frames, mostly < 0.5.)
- ``phash``: a 64-bit DCT perceptual hash (8×8 low frequencies of a 32×32 thumb against their
  median), reported per pair as ``phash_distance`` (0 ≈ pixel-identical, >10 ≈ different).

Also kept per image: ``mean`` (thumb brightness) and ``texture`` (std of the local structure);
images with almost no texture are paired by brightness instead (see :mod:`engine.dedup.search`).

The cache lives in ``dataset.workdir / "dedup"``: a JSON index (the commit point, written
last) naming ``thumbs-<HxW>-<token>.npy`` (N,H,W) float32, memory-mapped on load so warm runs
never reread images nor the whole array, and ``fingerprints-<HxW>-<token>.npz`` (fp, mean,
texture, phash). Each row is keyed by the image path and validated by the file's
``(size, mtime_ns)``: only new or changed files are decoded again.

Example:
    >>> ds = open_dataset("../shared/data/kaggle-nerve-sample")             # doctest: +SKIP
    >>> fps = compute_fingerprints(ds, (64, 80))                             # doctest: +SKIP
    >>> fps.thumbs.shape, fps.fp.shape, fps.stats["misses"]                  # doctest: +SKIP
    ((23, 64, 80), (23, 256), 23)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np

from engine.errors import WorkbenchError
from engine.fsutil import atomic_path, atomic_write_json
from engine.parallel import default_workers, limit_blas
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    from engine.datasets.base import Dataset

CACHE_VERSION = 1
FAST_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------
# resizing


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Weights (n_out, n_in) float32 of PIL's anti-aliased ``BILINEAR`` resampling along one axis.

    ``R_h @ img @ R_w.T`` resizes an (H,W) image to (h,w) like
    ``Image.resize((w, h), Image.BILINEAR)`` on a float image (same support, same taps).
    """
    if n_in < 1 or n_out < 1:
        raise WorkbenchError(f"cannot resize {n_in} pixels to {n_out}", hint="use positive sizes")
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # triangle filter has support 1
    weights = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        x = np.arange(xmin, xmax, dtype=np.float64)
        w = np.maximum(0.0, 1.0 - np.abs((x - center + 0.5) / filterscale))
        total = w.sum()
        weights[i, xmin:xmax] = w / total if total > 0 else 0.0
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _row_bands(n_in: int, n_out: int, group: int = 4) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """:func:`resize_matrix` cut into blocks of ``group`` output rows, each with the contiguous
    input range its taps touch: ``(out0, out1, in0, in1, weights (out1-out0, in1-in0))``.

    The weight matrix is banded (each output pixel reads ~2·scale inputs), so multiplying the
    blocks costs ~1/8 of the dense product on a 420→64 resize, with identical weights."""
    r = resize_matrix(n_in, n_out)
    out = []
    for s in range(0, n_out, group):
        sub = r[s:s + group]
        nz = np.flatnonzero(sub.any(axis=0))
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 1)
        out.append((s, min(n_out, s + group), lo, hi, np.ascontiguousarray(sub[:, lo:hi])))
    return tuple(out)


class Resizer:
    """Resize grey images (H,W) of one shape to (h,w) like :func:`resize_gray`, reusing its buffers.

    Vertical pass as banded block products into a (h,W) buffer, then one (h,W)@(W,w) product;
    the float32 copy of the input goes into a preallocated buffer (a fresh 1 MB array per image
    costs more in page faults than the arithmetic). Not thread-safe: one per thread.

    Example:
        >>> r = Resizer((420, 580), (64, 80))
        >>> r(np.zeros((420, 580), np.uint8)).shape
        (64, 80)
    """

    def __init__(self, in_shape: tuple[int, int], size: tuple[int, int]):
        hh, ww = int(in_shape[0]), int(in_shape[1])
        h, w = int(size[0]), int(size[1])
        self.in_shape = (hh, ww)
        self.rows = _row_bands(hh, h)
        self.rw_t = np.ascontiguousarray(resize_matrix(ww, w).T)  # (W, w)
        self.buf = np.empty((hh, ww), np.float32)
        self.mid = np.empty((h, ww), np.float32)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """(H,W) any real dtype → new float32 (h,w) array (values kept, not rescaled)."""
        np.copyto(self.buf, img, casting="unsafe")
        for s, e, lo, hi, wts in self.rows:
            np.matmul(wts, self.buf[lo:hi], out=self.mid[s:e])
        return self.mid @ self.rw_t


def resize_gray(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a grey image (H,W) (any real dtype, values kept) to ``size`` = (h,w): float32 (h,w)."""
    a = np.asarray(img)
    return _resizer(a.shape, size)(a)


_LOCAL = threading.local()


def _resizer(shape: tuple[int, ...], size: tuple[int, int]) -> Resizer:
    """This thread's :class:`Resizer` for ``shape`` → ``size`` (a few kept per thread)."""
    cache = getattr(_LOCAL, "resizers", None)
    if cache is None:
        cache = _LOCAL.resizers = {}
    key = (int(shape[0]), int(shape[1]), int(size[0]), int(size[1]))
    r = cache.get(key)
    if r is None:
        if len(cache) >= 4:
            cache.clear()
        r = cache[key] = Resizer((key[0], key[1]), (key[2], key[3]))
    return r


def resize_stack(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a stack (N,H,W) float32 to (N,h,w) with :func:`resize_matrix` weights."""
    n, hh, ww = stack.shape
    rh = resize_matrix(hh, int(size[0]))
    rw = resize_matrix(ww, int(size[1]))
    tmp = stack.reshape(n * hh, ww).astype(np.float32, copy=False) @ rw.T  # (N*H, w)
    tmp = tmp.reshape(n, hh, -1)
    return np.matmul(rh, tmp).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# reading


def read_gray(path: str | Path) -> np.ndarray:
    """Decode an image file as grey levels: (H,W) uint8 (fast path) or float32 in [0, 1].

    8-bit grey/RGB PNG, JPEG, BMP and single-page TIFF are decoded with Pillow (fastest here);
    anything else (16-bit, DICOM, palette, multi-page, inverted TIFF) goes through
    :func:`engine.io.read_image` + :func:`engine.io.to_chw_float`, channels averaged.
    uint8 results are grey values 0..255 (divide by 255 for [0, 1]).

    Raises:
        ReadError: the file cannot be decoded (the caller records it as a bad file).
    """
    path = Path(path)
    if path.suffix.lower() in FAST_SUFFIXES:
        arr = _read_fast(path)
        if arr is not None:
            return arr
    from engine.io import read_image, to_chw_float

    arr, meta = read_image(path)
    return to_chw_float(arr, meta).mean(axis=0, dtype=np.float32)


def _read_fast(path: Path) -> np.ndarray | None:
    if path.suffix.lower() in (".tif", ".tiff"):
        a = _read_plain_tiff_scratch(path)  # 8-bit grey lossless: the engine's fast path
        if a is not None:
            return a.copy()
    try:
        from PIL import Image, TiffImagePlugin

        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) != 1:
                return None
            if im.format == "TIFF" and cast(TiffImagePlugin.TiffImageFile, im).tag_v2.get(262, 1) not in (1, 2):
                return None  # not BlackIsZero / RGB
            if im.mode == "L":
                im.load()
                return np.asarray(im)
            if im.mode in ("RGB", "RGBA"):
                im.load()
                a = np.asarray(im)[..., :3].astype(np.float32)
                return a.mean(axis=2) * np.float32(1 / 255.0)
    except Exception:  # noqa: BLE001 - let the full reader produce the proper error
        return None
    return None


#: larger files go through the normal readers (the scratch buffer is kept per thread)
_SCRATCH_MAX = 32 << 20


def _read_plain_tiff_scratch(path: Path) -> np.ndarray | None:
    """:func:`engine.io.raster.read_plain_tiff` decoding into this thread's reusable buffers.

    Returns a uint8 (H,W) view of a per-thread buffer (valid until this thread's next call),
    or None when the file is not a plain TIFF or cannot be decoded (the caller falls back to
    the full reader, which produces the proper error); :class:`ReadError` when its header is over
    the pixel limit (nothing decoded). Reading into a kept ``bytearray`` and
    decoding into a kept array saves ~20 % per 420×580 image over fresh allocations."""
    from engine.io.limits import check_pixels
    from engine.io.raster import plain_tiff_info

    try:
        with open(path, "rb", buffering=0) as fh:  # one open and one read; the header parsed from memory
            n = os.fstat(fh.fileno()).st_size
            if n > _SCRATCH_MAX:
                return None
            raw = getattr(_LOCAL, "raw", None)
            if raw is None or len(raw) < n:
                raw = _LOCAL.raw = bytearray(max(n, 1 << 18))
            got = fh.readinto(raw)
        info = plain_tiff_info(path, memoryview(raw)[:got])
    except OSError:
        return None
    if info is None:
        return None
    check_pixels(path, info["height"], info["width"])  # before anything is decoded (ReadError)
    shape = (info["height"], info["width"])
    try:
        import imagecodecs

        out = getattr(_LOCAL, "pixels", None)
        if out is None or out.shape != shape:
            out = _LOCAL.pixels = np.empty(shape, np.uint8)
        # any buffer works (a view avoids copying); the stub lists only bytes-like types
        a = imagecodecs.tiff_decode(cast(bytes, memoryview(raw)[:got]), out=out)
    except Exception:  # noqa: BLE001 - corrupt data or no codec: the full reader reports it properly
        return None
    return a if a.dtype == np.uint8 and a.shape == shape else None


def image_thumb(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Grey thumbnail of one image file: float32 (h,w) in [0, 1] (PIL-bilinear resize)."""
    path = Path(path)
    g = _read_plain_tiff_scratch(path) if path.suffix.lower() in (".tif", ".tiff") else None
    if g is None:
        g = read_gray(path)
    t = _resizer(g.shape, size)(g)
    if g.dtype == np.uint8:
        t *= np.float32(1 / 255.0)
    return np.clip(t, 0.0, 1.0, out=t)


def array_thumb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Grey thumbnail of an in-memory image: float32 (C,H,W)/(H,W) in [0,1] → float32 (h,w)."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(axis=0)
    return np.clip(resize_gray(a, size), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# descriptors


@functools.lru_cache(maxsize=8)
def projection_matrix(n_in: int, n_out: int, seed: int = 0) -> np.ndarray:
    """Fixed Gaussian random projection (n_in, n_out) float32, scaled by 1/sqrt(n_out)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_in, n_out)) / np.sqrt(n_out)).astype(np.float32)


def box_mean(x: np.ndarray, win: int = 7, valid: bool = False) -> np.ndarray:
    """``win``×``win`` local means over the last two axes of (N,h,w), in float64: float64.

    ``valid=False`` gives ``scipy.ndimage.uniform_filter(x, size=(1, win, win))`` (its
    default ``reflect`` borders = numpy's ``symmetric`` padding), shape (N,h,w);
    ``valid=True`` only the windows lying fully inside, (N, h−win+1, w−win+1) (what SSIM's
    cropped mean uses). Sums of ``win`` shifted slices along each axis; equal to scipy up to
    float64 rounding (~1e-15), without importing scipy.
    """
    a = np.asarray(x, np.float64)
    if not valid:
        lo = win // 2
        a = np.pad(a, ((0, 0), (lo, win - 1 - lo), (lo, win - 1 - lo)), mode="symmetric")
    n, h, w = a.shape
    oh, ow = h - win + 1, w - win + 1
    r = a[:, :, 0:ow].copy()
    for k in range(1, win):
        r += a[:, :, k:ow + k]
    out = r[:, 0:oh].copy()
    for k in range(1, win):
        out += r[:, k:oh + k]
    out *= 1.0 / (win * win)
    return out


def local_structure(thumbs: np.ndarray, win: int = 7) -> np.ndarray:
    """``x − uniform_filter(x, win)`` per image of a stack (N,h,w): float32 (N,h,w)."""
    x = np.asarray(thumbs, np.float32)
    return (x - box_mean(x, win)).astype(np.float32)


def fingerprint_from_thumbs(thumbs: np.ndarray, fp_dim: int = 256, *, batch: int = 512
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Descriptors of a stack of thumbs (N,h,w) float32 in [0, 1].

    Args:
        thumbs: (N,h,w) SSIM-size thumbs.
        fp_dim: projected dimension D; 0 keeps the full h·w local-structure vector.

    Returns:
        ``(fp (N,D) float32 unit-norm (zero rows for textureless images),
        mean (N,) float32 thumb brightness, texture (N,) float32 std of the local structure)``.
    """
    n, h, w = thumbs.shape
    d = h * w if not fp_dim or fp_dim >= h * w else int(fp_dim)
    proj = projection_matrix(h * w, d) if d < h * w else None
    fp = np.zeros((n, d), np.float32)
    mean = np.empty(n, np.float32)
    texture = np.empty(n, np.float32)
    for s in range(0, n, batch):
        t = np.asarray(thumbs[s:s + batch], np.float32)
        hp = local_structure(t).reshape(len(t), -1)
        mean[s:s + len(t)] = t.reshape(len(t), -1).mean(axis=1)
        norms = np.linalg.norm(hp, axis=1)
        texture[s:s + len(t)] = norms / np.sqrt(h * w)
        ok = norms > 1e-9
        hp[ok] /= norms[ok, None]
        hp[~ok] = 0.0
        v = hp @ proj if proj is not None else hp
        vn = np.linalg.norm(v, axis=1)
        good = vn > 1e-9
        v[good] /= vn[good, None]
        v[~good] = 0.0
        fp[s:s + len(t)] = v
    return fp, mean, texture


def phash64(thumbs: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hashes of thumbs (N,h,w): uint64 (N,)."""
    small = resize_stack(thumbs, (32, 32)).astype(np.float64)
    d = _dct_rows(32, 8)  # the 8 lowest orthonormal DCT-II basis rows (8, 32)
    coeffs = np.matmul(np.matmul(d, small), d.T).reshape(len(thumbs), 64)
    ac = np.sort(coeffs[:, 1:], axis=1)  # DC excluded from the median of the 63 others (odd: middle one)
    med = ac[:, 31:32]
    bits = (coeffs > med).astype(np.uint64)
    weights = (np.uint64(1) << np.arange(64, dtype=np.uint64))
    return (bits * weights).sum(axis=1, dtype=np.uint64)


@functools.lru_cache(maxsize=4)
def _dct_rows(n: int, k: int) -> np.ndarray:
    """First ``k`` rows of the orthonormal DCT-II matrix of size ``n`` (``scipy.fft.dct(...,
    norm="ortho")`` as a matrix): float64 (k, n)."""
    j = np.arange(n)
    m = np.cos(np.pi * (2 * j[None, :] + 1) * np.arange(k)[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def hamming64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between uint64 arrays (broadcast): int (…)."""
    x = np.atleast_1d(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))
    bits = np.unpackbits(np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8), axis=-1)
    out = bits.sum(axis=-1).astype(np.int64)
    return out.reshape(np.broadcast(np.asarray(a), np.asarray(b)).shape)


# --------------------------------------------------------------------------------------------
# dataset fingerprints with a cache


@dataclass
class Fingerprints:
    """Fingerprints of a dataset's cases, row ``i`` ↔ ``case_ids[i]``.

    Attributes:
        case_ids: cases whose image could be read, (N,).
        thumbs: float32 (N,h,w) in [0,1] (often a read-only memory map).
        fp: float32 (N,D) unit-norm local-structure descriptors (zero rows for textureless images).
        mean: float32 (N,) thumb brightness; texture: float32 (N,) std of the local structure.
        phash: uint64 (N,) perceptual hashes.
        keys: uint64 (N,) identity of each image file version (for caches keyed on files).
        bad: ``(case_id, reason)`` of images that could not be read.
        stats: cache hits/misses, seconds reading, whether the cache was written.
    """

    case_ids: list[str]
    thumbs: np.ndarray
    fp: np.ndarray
    mean: np.ndarray
    texture: np.ndarray
    phash: np.ndarray
    bad: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    keys: np.ndarray | None = None  # uint64 (N,) identity of each file version (path, size, mtime)
    folder: Path | None = None  # the cache folder, when caching
    cache_keys: np.ndarray | None = None  # identities of every row in the cache (⊇ keys)

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.case_ids)}


_ARRAYS = ("fp", "mean", "texture", "phash")


def _cache_dir(ds: Dataset) -> Path | None:
    workdir = getattr(ds, "workdir", None)
    if workdir is None:
        return None
    return Path(workdir) / "dedup"


def _size_tag(size: tuple[int, int]) -> str:
    return f"{int(size[0])}x{int(size[1])}"


def _load_cache(folder: Path, size: tuple[int, int], fp_dim: int) -> dict[str, Any] | None:
    index_path = folder / f"fingerprints-{_size_tag(size)}.json"
    try:
        meta = json.loads(index_path.read_text(encoding="utf-8"))
        if meta.get("version") != CACHE_VERSION or meta.get("fp_dim") != fp_dim:
            return None
        thumbs = np.load(folder / meta["thumbs"], mmap_mode="r")
        with np.load(folder / meta["arrays"]) as z:
            arrays = {k: z[k] for k in _ARRAYS}
        if thumbs.shape[1:] != tuple(size) or len(thumbs) != len(meta["entries"]):
            return None
        return {"meta": meta, "thumbs": thumbs, **arrays}
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None  # missing or corrupt: recomputed


def compute_fingerprints(ds: Dataset, size: tuple[int, int] = (64, 80), fp_dim: int = 256, *,
                         case_ids: Sequence[str] | None = None, use_cache: bool = True, workers: int = 0,
                         progress: ProgressFn | None = None) -> Fingerprints:
    """Fingerprints of every case of ``ds`` (or of ``case_ids``), reusing the per-dataset cache.

    Args:
        ds: an :class:`engine.datasets.Dataset` (``cases``, ``workdir``).
        size: SSIM thumb size (h, w), at least 7×7.
        fp_dim: descriptor dimension after random projection (0 = no projection).
        case_ids: restrict to these cases (default: all).
        use_cache: read and update ``ds.workdir/dedup`` (no cache when ``ds.workdir`` is None).
        workers: decoding threads (0 = :func:`default_workers`).
        progress: ``(done, total, message)`` callback.

    Returns:
        :class:`Fingerprints` (unreadable images listed in ``bad``, not raised). The cache keeps
        the rows of images outside ``case_ids`` (or outside a subset dataset), so running on a
        subset does not evict the rest.

    Example:
        >>> fps = compute_fingerprints(ds)                    # doctest: +SKIP
        >>> fps.stats["misses"], fps.thumbs.dtype             # doctest: +SKIP
        (5640, dtype('float32'))
    """
    size = (int(size[0]), int(size[1]))
    fp_dim = int(fp_dim)
    if min(size) < 7:
        raise WorkbenchError(f"SSIM size {size[0]}x{size[1]} is smaller than the 7×7 SSIM window",
                             hint="use at least 7x7, e.g. 64x80")
    report = as_progress(progress)
    cases = ds.cases if case_ids is None else [ds.case(c) for c in case_ids]
    folder = _cache_dir(ds) if use_cache else None
    cached = _load_cache(folder, size, fp_dim) if folder is not None else None
    old_rows: dict[str, tuple[int, list[int]]] = {}
    if cached is not None:
        for key, (row, stamp) in cached["meta"]["entries"].items():
            old_rows[key] = (int(row), stamp)

    n = len(cases)
    stamps: list[list[int] | None] = []
    for c in cases:
        try:
            st = os.stat(c.image_path)
            stamps.append([int(st.st_size), int(st.st_mtime_ns)])
        except OSError:
            stamps.append(None)
    src_rows = np.full(n, -1, np.int64)
    for i, (c, stamp_now) in enumerate(zip(cases, stamps)):
        hit = old_rows.get(c.image_path)
        if hit is not None and stamp_now is not None and hit[1] == stamp_now:
            src_rows[i] = hit[0]
    todo = [i for i in range(n) if src_rows[i] < 0]

    t0 = time.perf_counter()
    new_thumbs: dict[int, int] = {}  # case index → row of the freshly computed arrays
    bad: list[tuple[str, str]] = []
    d = size[0] * size[1] if not fp_dim or fp_dim >= size[0] * size[1] else fp_dim
    if todo:
        # new rows: thumbs and descriptors computed by the workers, chunk by chunk (decoding,
        # resizing and the descriptor products all release the GIL, so both cores stay busy)
        from engine.parallel import PROCESS_MIN_ITEMS, can_fork_workers, fork_map, shared_empty

        # large cold runs: forked workers write into shared arrays (no GIL to share; ~2 cores)
        forking = len(todo) >= PROCESS_MIN_ITEMS and can_fork_workers()
        alloc = shared_empty if forking else np.zeros
        stack_new = alloc((len(todo), *size), np.float32)
        fp_new = alloc((len(todo), d), np.float32)
        mean_new = alloc((len(todo),), np.float32)
        tex_new = alloc((len(todo),), np.float32)
        ph_new = alloc((len(todo),), np.uint64)

        def work(k: int) -> tuple[int, str]:
            i = todo[k]
            try:
                stack_new[k] = image_thumb(cases[i].image_path, size)
                return k, ""
            except WorkbenchError as exc:
                return k, str(exc)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop a scan
                return k, f"{cases[i].image_path}: cannot read ({type(exc).__name__}: {exc})"

        def chunk(bounds: tuple[int, int]) -> list[tuple[int, str]]:
            results = [work(k) for k in range(*bounds)]
            ok = np.array([k for k, err in results if not err], np.int64)
            if ok.size:
                t = stack_new[ok]
                fp_new[ok], mean_new[ok], tex_new[ok] = fingerprint_from_thumbs(t, fp_dim)
                ph_new[ok] = phash64(t)
            return results

        # tasks of a few dozen images: one future per image costs ~40 µs of scheduling each
        n_workers = workers or default_workers()
        step = max(8, min(64, len(todo) // (8 * n_workers) or 8))
        tasks = [(s, min(len(todo), s + step)) for s in range(0, len(todo), step)]
        message = "reading images for fingerprints"

        def task_progress(done: int, total: int, msg: str) -> None:
            report(min(len(todo), done * step), len(todo), msg)

        with limit_blas():
            parts = fork_map(chunk, tasks, task_progress, message, 1) if forking else None
            if parts is None:  # threads: decoding, resizing and the descriptor products release the GIL
                parts = []
                with ThreadPoolExecutor(max_workers=n_workers) as pool:
                    for results in pool.map(chunk, tasks):
                        parts.append(results)
                        task_progress(len(parts), len(tasks), message)
        for results in parts:
            for k, err in results:
                if err:
                    bad.append((cases[todo[k]].case_id, err))
                else:
                    new_thumbs[todo[k]] = k  # row in the *_new arrays
    read_seconds = time.perf_counter() - t0

    keep = [i for i in range(n) if src_rows[i] >= 0 or i in new_thumbs]
    ids = [cases[i].case_id for i in keep]
    reuse = [i for i in keep if src_rows[i] >= 0]
    identical = (cached is not None and not new_thumbs and len(keep) == len(cached["thumbs"])
                 and bool(np.array_equal(src_rows[keep], np.arange(len(keep)))))
    t1 = time.perf_counter()
    if identical:
        assert cached is not None
        thumbs = cached["thumbs"]
        fp, mean, texture, ph = (cached[k] for k in _ARRAYS)
    elif todo and len(new_thumbs) == len(keep) == len(todo):  # everything new and readable: use the arrays as they are
        thumbs, fp, mean, texture, ph = stack_new, fp_new, mean_new, tex_new, ph_new
    else:
        thumbs = np.empty((len(keep), *size), np.float32)
        fp = np.empty((len(keep), d), np.float32)
        mean = np.empty(len(keep), np.float32)
        texture = np.empty(len(keep), np.float32)
        ph = np.empty(len(keep), np.uint64)
        pos = {i: r for r, i in enumerate(keep)}
        if reuse and cached is not None:
            dst = np.array([pos[i] for i in reuse])
            src = src_rows[reuse]
            order = np.argsort(src)  # sequential reads from the memory map
            thumbs[dst[order]] = cached["thumbs"][src[order]]
            for name, arr in zip(_ARRAYS, (fp, mean, texture, ph)):
                arr[dst] = cached[name][src]
        fresh = [i for i in keep if i in new_thumbs]
        if fresh:
            dst = np.array([pos[i] for i in fresh])
            rows = np.array([new_thumbs[i] for i in fresh], np.int64)
            thumbs[dst] = stack_new[rows]
            fp[dst], mean[dst], texture[dst], ph[dst] = fp_new[rows], mean_new[rows], tex_new[rows], ph_new[rows]
    from engine.dedup.maskcache import image_key

    keys = np.array([image_key(cases[i].image_path, stamps[i]) for i in keep], np.uint64)
    wrote = False
    cache_keys = keys
    if folder is not None and not identical:
        entries = {cases[i].image_path: [r, stamps[i]] for r, i in enumerate(keep)}
        arrays = {"fp": fp, "mean": mean, "texture": texture, "phash": ph}
        out_thumbs = thumbs
        # rows of other images (e.g. this was a subset of the dataset) stay in the cache
        extra = [] if cached is None else sorted(
            (row, path, stamp) for path, (row, stamp) in old_rows.items() if path not in entries)
        if extra:
            assert cached is not None  # extra rows only come from a cache
            rows = np.array([e[0] for e in extra])
            for k, (_, path, stamp) in enumerate(extra):
                entries[path] = [len(keep) + k, stamp]
            out_thumbs = np.concatenate([thumbs, cached["thumbs"][rows]])
            arrays = {name: np.concatenate([arr, cached[name][rows]]) for name, arr in arrays.items()}
            cache_keys = np.concatenate([keys, np.array([image_key(p, st) for _, p, st in extra], np.uint64)])
        wrote = _save_cache(folder, size, fp_dim, entries, out_thumbs, arrays)
    elif identical:
        cache_keys = keys
    stats = {"hits": len(reuse), "misses": len(todo), "bad": len(bad), "read_seconds": round(read_seconds, 4),
             "descriptor_seconds": round(time.perf_counter() - t1, 4),
             "cache": str(folder) if folder is not None else None, "cache_written": wrote,
             "cache_rows": int(len(cache_keys))}
    return Fingerprints(ids, thumbs, fp, mean, texture, ph, bad, stats, keys, folder, cache_keys)


def _save_cache(folder: Path, size: tuple[int, int], fp_dim: int, entries: dict[str, Any],
                thumbs: np.ndarray, arrays: dict[str, np.ndarray]) -> bool:
    """Write arrays under fresh names, then the JSON index (the commit point), then drop old files."""
    tag = _size_tag(size)
    token = secrets.token_hex(4)
    thumbs_name = f"thumbs-{tag}-{token}.npy"
    arrays_name = f"fingerprints-{tag}-{token}.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / thumbs_name) as tmp:
            np.save(tmp, np.ascontiguousarray(thumbs, np.float32))
        with atomic_path(folder / arrays_name) as tmp:
            with open(tmp, "wb") as fh:
                # cast: numpy's stub would also match **arrays against savez's allow_pickle: bool
                np.savez(fh, **cast(dict[str, Any], arrays))
        atomic_write_json(folder / f"fingerprints-{tag}.json",
                          {"version": CACHE_VERSION, "size": list(size), "fp_dim": fp_dim,
                           "thumbs": thumbs_name, "arrays": arrays_name, "entries": entries}, indent=None)
    except OSError:
        return False  # a read-only workspace only costs speed
    for old in list(folder.glob(f"thumbs-{tag}-*.npy")) + list(folder.glob(f"fingerprints-{tag}-*.npz")):
        if old.name not in (thumbs_name, arrays_name):
            with contextlib.suppress(OSError):
                old.unlink()
    return True


