"""Vectorised SSIM on batches of image pairs, equal to scikit-image's default computation.

:func:`ssim_pairs` computes, for many pairs at once, exactly what
``skimage.metrics.structural_similarity(a, b, data_range=R)`` computes with its defaults:
a 7×7 uniform window (``gaussian_weights=False``, ``win_size=7``), ``K1 = 0.01``, ``K2 = 0.03``,
sample covariance (``use_sample_covariance=True``: variances scaled by NP/(NP−1), NP = 49),
``scipy.ndimage.uniform_filter`` with its default ``reflect`` borders, and the mean of the SSIM
map with a 3-pixel border cropped. Since the cropped interior only holds windows lying fully
inside the image, the filters are computed there only, as sums of shifted slices (no scipy import).
The per-image terms (local means μ and ⟨x²⟩) are computed once per image, the cross term ⟨xy⟩
once per pair, over all candidate pairs in vectorised batches. Computation is float64, as
scikit-image does for float64 input; the only differences are the order of additions (window
sums of shifted slices; C1/2 and C2/2 folded into per-image terms), ~1e-15;
``tests/engine/test_dedup.py`` checks equality to 1e-6.

Example:
    >>> rng = np.random.default_rng(0); imgs = rng.random((3, 64, 80))
    >>> s = ssim_pairs(imgs, np.array([0, 0]), np.array([1, 2]))
    >>> s.shape
    (2,)
"""

from __future__ import annotations

import numpy as np

WIN = 7
K1 = 0.01
K2 = 0.03


class _BoxValid:
    """7×7 means over the windows lying fully inside (B,H,W) float64 images: (B,H−6,W−6).

    These are exactly the values of ``uniform_filter(stack, size=(1, 7, 7))`` on the interior
    that SSIM's cropped mean reads (borders never enter it), as sums of 7 shifted slices along W,
    then along H (vectorised adds; numpy's cumsum is a scalar loop and 2-3× slower), in a buffer
    kept between calls (batches small enough to stay in cache)."""

    def __init__(self, batch: int, h: int, w: int):
        self.r = np.empty((batch, h, w - WIN + 1))

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        b, h, w = x.shape
        ow, oh = w - WIN + 1, h - WIN + 1
        r = self.r[:b]
        np.add(x[:, :, 0:ow], x[:, :, 1:ow + 1], out=r)
        for k in range(2, WIN):
            r += x[:, :, k:ow + k]
        np.add(r[:, 0:oh], r[:, 1:oh + 1], out=out)
        for k in range(2, WIN):
            out += r[:, k:oh + k]
        out *= 1.0 / (WIN * WIN)
        return out


def ssim_pairs(images: np.ndarray, i: np.ndarray, j: np.ndarray, *, data_range: float = 1.0,
               batch: int = 32, max_images: int = 1024) -> np.ndarray:
    """Mean SSIM of ``images[i[p]]`` vs ``images[j[p]]`` for every pair p.

    All pairs are computed in vectorised batches: per-image local statistics (μ, ⟨x²⟩) once for
    every image involved, the cross term ⟨xy⟩ once per pair, all on the valid (cropped) interior
    only.

    Args:
        images: (N,H,W) array (float32/float64, may be a memory map), H, W ≥ 7.
        i, j: int (P,) row indices.
        data_range: value range of the images (1.0 for [0, 1] data).
        batch: pairs per vectorised step (small: the arrays of a step stay in the CPU cache).
        max_images: images whose local statistics are held at once (≈ 120 KB each at 64×80).

    Returns:
        float64 (P,); symmetric: ``ssim(a, b) == ssim(b, a)`` exactly (pairs are computed with
        the smaller index first).
    """
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    out = np.empty(i.size, np.float64)
    if i.size == 0:
        return out
    if images.shape[-1] < WIN or images.shape[-2] < WIN:
        raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} are smaller than the 7x7 SSIM window")
    lo, hi = np.minimum(i, j), np.maximum(i, j)  # canonical order → exact symmetry
    order = np.lexsort((hi, lo))  # pairs sharing images come together → each image filtered once
    lo_o, hi_o = lo[order], hi[order]
    np_ = WIN * WIN
    cov_norm = np_ / (np_ - 1.0)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    n_pairs = i.size
    pos = 0
    while pos < n_pairs:
        end = _chunk_end(lo_o, hi_o, pos, max_images)
        uniq = np.unique(np.concatenate([lo_o[pos:end], hi_o[pos:end]]))
        # images stay in their dtype (float32 thumbs: half the memory); each batch is widened to
        # float64 in a small buffer, where products of float32 values are exact
        x = np.asarray(images[uniq])
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        hh, ww = x.shape[1] - WIN + 1, x.shape[2] - WIN + 1
        box = _BoxValid(batch, x.shape[1], x.shape[2])
        wide = np.empty((batch,) + x.shape[1:])
        # per-image terms on the cropped interior (the only part that enters the mean):
        # mu = E_w[x], mu2h = mu² + C1/2, vh = cov_norm·(E_w[x²] − mu²) + C2/2
        mu = np.empty((len(uniq), hh, ww))
        vh = np.empty_like(mu)
        for s in range(0, len(uniq), batch):
            xs = wide[:len(x[s:s + batch])]
            np.copyto(xs, x[s:s + batch])
            box(xs, mu[s:s + batch])
            np.multiply(xs, xs, out=xs)
            box(xs, vh[s:s + batch])
        mu2h = mu * mu
        vh -= mu2h
        vh *= cov_norm
        vh += c2 / 2
        mu2h += c1 / 2
        uxy = np.empty((batch, hh, ww))
        for s in range(pos, end, batch):
            e = min(end, s + batch)
            ia = np.searchsorted(uniq, lo_o[s:e])
            ib = np.searchsorted(uniq, hi_o[s:e])
            prod = np.multiply(x[ia], x[ib], out=wide[:e - s], dtype=np.float64)
            u = box(prod, uxy[:e - s])
            p = mu[ia]
            p *= mu[ib]                       # ux·uy
            u -= p                            # uxy − ux·uy
            u *= 2 * cov_norm
            u += c2                           # 2·vxy + C2
            p *= 2
            p += c1                           # 2·ux·uy + C1
            p *= u                            # numerator
            den = mu2h[ia]
            den += mu2h[ib]                   # ux² + uy² + C1
            b2 = vh[ia]
            b2 += vh[ib]                      # vx + vy + C2
            den *= b2
            p /= den
            out[order[s:e]] = p.mean(axis=(1, 2), dtype=np.float64)
        pos = end
    return out


def ssim_pairs_threaded(images: np.ndarray, i: np.ndarray, j: np.ndarray, *, data_range: float = 1.0,
                        workers: int = 0) -> np.ndarray:
    """:func:`ssim_pairs` over ``workers`` threads (0 = one per usable core; never more): the pairs, ordered by
    their first image, are cut into one contiguous run per thread, so most images' local
    statistics are still computed once; numpy releases the GIL in the batch operations.
    Results are identical to :func:`ssim_pairs` (each pair's arithmetic does not depend on the
    batch it is in).

    Args:
        images: (N,H,W) array; i, j: int (P,) row indices.

    Returns:
        float64 (P,).
    """
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    from engine.parallel import usable_cores

    cores = usable_cores()
    workers = cores if workers <= 0 else min(workers, cores)
    workers = max(1, min(workers, i.size // 256))  # a few hundred pairs per thread at least
    if workers <= 1:
        return ssim_pairs(images, i, j, data_range=data_range)
    from concurrent.futures import ThreadPoolExecutor

    order = np.argsort(np.minimum(i, j), kind="stable")
    parts = np.array_split(order, workers)
    out = np.empty(i.size, np.float64)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part, res in zip(parts, pool.map(lambda p: ssim_pairs(images, i[p], j[p], data_range=data_range), parts)):
            out[part] = res
    return out


def _chunk_end(lo: np.ndarray, hi: np.ndarray, pos: int, max_images: int) -> int:
    """End of the run of consecutive pairs from ``pos`` that touches at most ``max_images``
    distinct images (at least one pair)."""
    n = lo.size
    if n - pos <= max_images // 2:  # cannot exceed the limit
        return n
    seen: set[int] = set()
    end = pos
    while end < n:
        a, b = int(lo[end]), int(hi[end])
        grow = (a not in seen) + (b not in seen)
        if grow and len(seen) + grow > max_images and end > pos:
            break
        seen.add(a)
        seen.add(b)
        end += 1
    return end


def ssim_matrix(images: np.ndarray, *, data_range: float = 1.0, batch: int = 256) -> np.ndarray:
    """All-pairs SSIM (N,N) float64 of a small stack (diagonal 1): for tests and small subsets."""
    n = images.shape[0]
    i, j = np.triu_indices(n, k=1)
    s = ssim_pairs(images, i, j, data_range=data_range, batch=batch)
    m = np.eye(n, dtype=np.float64)
    m[i, j] = s
    m[j, i] = s
    return m
