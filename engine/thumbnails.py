"""Disk-cached thumbnails of dataset cases, with ground-truth or prediction overlays.

A thumbnail is a small JPEG in ``<dataset workdir>/thumbs/<key>.jpg``. The key hashes
everything the picture depends on: the image file's path and stamp (size, mtime), the
mask source (its file stamp, or its RLE strings), the prediction file's stamp, the size,
the overlay kind and :data:`THUMB_VERSION`. A changed image or mask therefore gets a new
key (and a new thumbnail) without any explicit invalidation; a cache hit costs a few
``stat`` calls. :func:`thumbnail_paths` renders a page of missing thumbnails with a
thread pool (decoding and resizing release the GIL).

Rendering shrinks the image first and draws the overlay at thumbnail resolution (masks
resized nearest-neighbour), so a 1024² DICOM costs one decode and one resize.

Overlay kinds:
    ``none``: the image only. ``gt``: ground truth filled in class colours with outlines.
    ``pred``: the saved prediction (``pred_folder``, as written by
    :func:`engine.evaluation.evaluate`) in class colours. ``both``: the prediction filled and
    the ground truth as a white outline.

Example:
    >>> ds = open_dataset("demo_data/nerve")                                          # doctest: +SKIP
    >>> p = thumbnail_path(ds, ds.cases[0], size=192, overlay="gt")                   # doctest: +SKIP
    >>> p.suffix, p.parent.name                                                       # doctest: +SKIP
    ('.jpg', 'thumbs')
    >>> paths = thumbnail_paths(ds, ds.cases[:36], overlay="gt")                      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as _wait_futures
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from engine.errors import ConfigError, MaskError, WorkbenchError, unknown_name
from engine.fsutil import atomic_path, stamp_text
from engine.parallel import default_workers
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    from engine.datasets.base import Case, Dataset

__all__ = ["OVERLAYS", "THUMB_VERSION", "thumbnail_key", "thumbnail_path", "thumbnail_paths", "render_thumbnail",
           "thumbs_dir", "clear_thumbnails", "pred_mask_path", "prefetch_thumbnails"]

#: Overlay kinds accepted by :func:`thumbnail_path`.
OVERLAYS: tuple[str, ...] = ("none", "gt", "pred", "both")
#: Bump when the rendering changes, so old thumbnails are not reused.
THUMB_VERSION = 1
THUMB_DIR = "thumbs"
JPEG_QUALITY = 85
#: Outline colour of the ground truth in the ``both`` overlay.
GT_OUTLINE = (255, 255, 255)


def thumbs_dir(ds: Dataset) -> Path:
    """``<ds.workdir>/thumbs`` (for datasets without a workdir, e.g. manifests: a workspace folder)."""
    workdir = getattr(ds, "workdir", None)
    if workdir is None:
        from engine.workspace import Workspace

        workdir = Workspace().dataset_dir(getattr(ds, "manifest_path", None) or ds.root)
    return Path(workdir) / THUMB_DIR


def pred_mask_path(pred_folder: str | Path, case_id: str) -> Path:
    """The saved prediction of ``case_id`` in an evaluation folder (or its ``pred/`` subfolder)."""
    from engine.evaluation import prediction_path

    folder = Path(pred_folder)
    if folder.name == "pred":
        folder = folder.parent
    return prediction_path(folder, case_id)


def _check(size: int, overlay: str, pred_folder: str | Path | None) -> None:
    if overlay not in OVERLAYS:
        raise unknown_name("thumbnail overlay", overlay, OVERLAYS)
    if int(size) != size or not 16 <= int(size) <= 2048:
        raise ConfigError(f"thumbnail size must be a whole number of pixels in 16..2048, got {size!r}",
                          hint="e.g. size=192")
    if overlay in ("pred", "both") and pred_folder is None:
        raise ConfigError(f"overlay {overlay!r} needs pred_folder (an evaluation folder with saved predictions)",
                          hint="evaluate a model on the dataset first, or use overlay='gt'")


def thumbnail_key(ds: Dataset, case: str | Case, size: int = 192, overlay: str = "gt",
                  pred_folder: str | Path | None = None) -> str:
    """The cache key of a thumbnail (hex, 20 chars): changes whenever an input file changes.

    Args:
        ds: the :class:`engine.datasets.Dataset`.
        case: a case id or :class:`engine.datasets.Case`.
        size: longest side in pixels.
        overlay: one of :data:`OVERLAYS`.
        pred_folder: evaluation folder holding ``pred/<case_id>.png`` (for ``pred``/``both``).
    """
    _check(size, overlay, pred_folder)
    c = ds.case(case)
    h = hashlib.sha1()
    parts: list[str] = [f"v{THUMB_VERSION}", str(int(size)), overlay, c.image_path, stamp_text(c.image_path)]
    if overlay in ("gt", "both"):
        parts.append(json.dumps(c.mask.to_dict(), sort_keys=True))
        if c.mask.kind == "file":
            parts.append(stamp_text(c.mask.path))
        opts = getattr(ds, "options", {}) or {}
        parts.append(json.dumps({k: opts.get(k) for k in ("threshold", "colour_map")}, sort_keys=True, default=str))
        lut = getattr(ds, "label_lut", None)
        if lut is not None:
            parts.append(hashlib.sha1(np.asarray(lut, np.uint8).tobytes()).hexdigest())
    if overlay in ("pred", "both"):
        p = pred_mask_path(pred_folder, c.case_id)  # type: ignore[arg-type]
        parts += [str(p), stamp_text(p)]
    h.update("\0".join(parts).encode())
    return h.hexdigest()[:20]


def _shrink(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H,W,3) → longest side ``size`` (never enlarged), antialiased."""
    from engine.visualize import resize_rgb

    return resize_rgb(rgb, size, reducing_gap=2.0)


def _shrink_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``hw``, keeping thin structures visible.

    Plain nearest sampling drops regions thinner than the step; a block max over each output
    pixel's footprint keeps them (class ids: the largest id in the block wins).
    """
    m = np.asarray(mask)
    H, W = m.shape
    h, w = hw
    if (H, W) == (h, w):
        return m.astype(np.uint8, copy=False)
    ys = (np.arange(h + 1) * H / h).astype(int)
    xs = (np.arange(w + 1) * W / w).astype(int)
    # max over row blocks, then column blocks (reduceat on the integer starts)
    rows = np.maximum.reduceat(m, ys[:-1], axis=0) if H >= h else m[np.minimum(ys[:-1], H - 1)]
    out = np.maximum.reduceat(rows, xs[:-1], axis=1) if W >= w else rows[:, np.minimum(xs[:-1], W - 1)]
    return out.astype(np.uint8, copy=False)


def _outline(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask) > 0
    e = np.zeros(m.shape, bool)
    e[1:, :] |= m[1:, :] != m[:-1, :]
    e[:-1, :] |= m[:-1, :] != m[1:, :]
    e[:, 1:] |= m[:, 1:] != m[:, :-1]
    e[:, :-1] |= m[:, :-1] != m[:, 1:]
    return e & m


def _read_pred(path: Path) -> np.ndarray:
    from engine.io import read_mask

    if not path.exists():
        raise MaskError("no saved prediction for this case", path=path,
                        hint="re-run the evaluation with save_predictions on, or pick overlay 'gt'")
    labels, _ = read_mask(path)
    return labels


def render_thumbnail(ds: Dataset, case: str | Case, size: int = 192, overlay: str = "gt",
                     pred_folder: str | Path | None = None, alpha: float = 0.45) -> np.ndarray:
    """Render one thumbnail (no caching): uint8 RGB (h,w,3), longest side ``size``.

    Unlabelled cases drawn with ``gt`` show the image alone.

    Raises:
        ReadError / MaskError: unreadable image, mask, or missing saved prediction.
    """
    from engine.visualize import overlay as draw_overlay
    from engine.visualize import to_rgb_uint8

    _check(size, overlay, pred_folder)
    c = ds.case(case)
    img = ds.load_image_float(c)
    rgb = _shrink(to_rgb_uint8(img), int(size))
    hw = rgb.shape[:2]
    gt = None
    if overlay in ("gt", "both") and c.labelled:
        gt = _shrink_mask(ds.load_mask(c), hw)
    pred = None
    if overlay in ("pred", "both"):
        full = _read_pred(pred_mask_path(pred_folder, c.case_id))  # type: ignore[arg-type]
        pred = _shrink_mask(full, hw)
    if overlay == "gt":
        return draw_overlay(rgb, gt, alpha=alpha) if gt is not None else rgb
    if overlay == "none":
        return rgb
    out = draw_overlay(rgb, pred, alpha=alpha)
    if overlay == "both" and gt is not None:
        out[_outline(gt)] = GT_OUTLINE
    return out


def _thumb_file(ds: Dataset, case: str | Case, size: int, overlay: str, pred_folder: str | Path | None) -> Path:
    """Where the case's thumbnail is cached (raises like :func:`thumbnail_key`)."""
    return thumbs_dir(ds) / f"{thumbnail_key(ds, case, size, overlay, pred_folder)}.jpg"


def thumbnail_path(ds: Dataset, case: str | Case, size: int = 192, overlay: str = "gt",
                   pred_folder: str | Path | None = None) -> Path:
    """Path of the case's cached thumbnail JPEG, rendering it first when missing.

    Args:
        ds: the dataset; the cache is ``<ds.workdir>/thumbs``.
        case: case id or :class:`~engine.datasets.Case`.
        size: longest side in pixels (16..2048).
        overlay: ``none`` | ``gt`` | ``pred`` | ``both``.
        pred_folder: evaluation folder (``pred/<case_id>.png`` inside) for ``pred``/``both``.

    Raises:
        ConfigError: bad size/overlay; ReadError/MaskError: the inputs cannot be read.

    Example:
        >>> thumbnail_path(ds, "2_7", 192, "gt").name                                   # doctest: +SKIP
        '3f0c...e1.jpg'
    """
    path = _thumb_file(ds, case, size, overlay, pred_folder)
    if path.exists():
        return path
    rgb = render_thumbnail(ds, case, size, overlay, pred_folder)
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return path


def thumbnail_paths(ds: Dataset, cases: Sequence[str | Case], size: int = 192, overlay: str = "gt",
                    pred_folder: str | Path | None = None, *, workers: int | None = None,
                    progress: ProgressFn | None = None,
                    render: Callable[..., Path] | None = None) -> list[Path | WorkbenchError]:
    """Thumbnails of many cases (a page of the browser), cached ones first, missing ones in parallel.

    Args:
        cases: case ids or :class:`~engine.datasets.Case` objects (order kept).
        workers: threads rendering missing thumbnails (default :func:`engine.parallel.default_workers`).
        progress: ``(done, total, message)`` over the thumbnails that had to be rendered.
        render: the per-case function (default :func:`thumbnail_path`; tests may wrap it).

    Returns:
        One entry per case: the JPEG path, or the :class:`WorkbenchError` explaining why that case
        has no thumbnail (unreadable file, missing prediction). A bad file never fails the page.
    """
    _check(size, overlay, pred_folder)
    render = render or thumbnail_path
    report = as_progress(progress)
    out: list[Path | WorkbenchError | None] = [None] * len(cases)
    keys: dict[int, Path] = {}  # missing thumbnails: case index → cache file
    for i, c in enumerate(cases):
        try:
            p = _thumb_file(ds, c, size, overlay, pred_folder)
        except WorkbenchError as exc:
            out[i] = exc
            continue
        if p.exists():
            out[i] = p
        else:
            keys[i] = p
    todo = list(keys)
    if todo:  # thumbnails a background prefetch is drawing right now: wait for them, don't draw twice
        with _PREFETCH_LOCK:
            running = [f for f in (_PREFETCH.get(k) for k in keys.values()) if f is not None]
        if running:
            _wait_futures(running, timeout=60)
            for i, k in keys.items():
                if k.exists():
                    out[i] = k
            todo = [i for i in todo if out[i] is None]
    if todo:
        done = [0]

        def one(i: int) -> Path | WorkbenchError:
            try:
                return render(ds, cases[i], size, overlay, pred_folder)
            except WorkbenchError as exc:
                return exc
            except (OSError, ValueError) as exc:  # a damaged file the readers did not classify
                return WorkbenchError(f"cannot draw a thumbnail ({type(exc).__name__}: {exc})",
                                      path=ds.case(cases[i]).image_path, hint="check the file")
            finally:
                done[0] += 1
                report(done[0], len(todo), "drawing thumbnails")

        n = min(len(todo), workers or default_workers())
        if n <= 1:
            results = [one(i) for i in todo]
        else:
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix="thumb") as pool:
                results = list(pool.map(one, todo))
        for i, r in zip(todo, results):
            out[i] = r
    return out  # type: ignore[return-value]


_PREFETCH_LOCK = threading.RLock()
_PREFETCH: dict[Path, Future] = {}
_PREFETCH_POOL: ThreadPoolExecutor | None = None


def prefetch_thumbnails(ds: Dataset, cases: Sequence[str | Case], size: int = 192, overlay: str = "gt",
                        pred_folder: str | Path | None = None) -> int:
    """Start drawing the missing thumbnails of ``cases`` in background threads and return at once.

    The browser calls it with the next page so that "next page" is served from the disk cache. The
    threads only read the dataset and write the cache (atomically); errors are left for the page that
    shows the case (:func:`thumbnail_paths` reports them). :func:`thumbnail_paths` waits for a
    thumbnail being prefetched instead of drawing it twice.

    Returns:
        How many thumbnails were queued.
    """
    global _PREFETCH_POOL
    _check(size, overlay, pred_folder)
    queued = 0
    with _PREFETCH_LOCK:
        if _PREFETCH_POOL is None:
            _PREFETCH_POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                                thread_name_prefix="thumb-prefetch")
        for c in cases:
            try:
                path = _thumb_file(ds, c, size, overlay, pred_folder)
            except WorkbenchError:
                continue
            if path in _PREFETCH or path.exists():
                continue
            fut = _PREFETCH_POOL.submit(_prefetch_one, ds, c, size, overlay, pred_folder)
            _PREFETCH[path] = fut
            fut.add_done_callback(_forget_when_done(path))
            queued += 1
    return queued


def _prefetch_one(ds: Dataset, case: str | Case, size: int, overlay: str, pred_folder: str | Path | None) -> None:
    try:
        thumbnail_path(ds, case, size, overlay, pred_folder)
    except (WorkbenchError, OSError, ValueError):
        pass  # reported by thumbnail_paths when the case is shown


def _forget(path: Path) -> None:
    with _PREFETCH_LOCK:
        _PREFETCH.pop(path, None)


def _forget_when_done(path: Path) -> Callable[[Future], None]:
    """A future's done-callback that forgets ``path`` (bound now, not when the loop variable moves on)."""
    return lambda _f: _forget(path)


def clear_thumbnails(ds: Dataset) -> int:
    """Delete every cached thumbnail of ``ds``; returns how many files were removed."""
    folder = thumbs_dir(ds)
    n = 0
    if folder.is_dir():
        for p in folder.glob("*.jpg"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n
