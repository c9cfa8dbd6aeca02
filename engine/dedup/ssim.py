"""Vectorised SSIM on batches of image pairs, equal to scikit-image's default computation.

:func:`ssim_pairs` computes, for many pairs at once, exactly what
``skimage.metrics.structural_similarity(a, b, data_range=R)`` computes with its defaults:
a 7×7 uniform window (``gaussian_weights=False``, ``win_size=7``), ``K1 = 0.01``, ``K2 = 0.03``,
sample covariance (``use_sample_covariance=True``: variances scaled by NP/(NP−1), NP = 49),
``scipy.ndimage.uniform_filter`` with its default ``reflect`` borders, and the mean of the SSIM
map with a 3-pixel border cropped. The per-image terms (local means μ and ⟨x²⟩) are filtered
once per image, the cross term ⟨xy⟩ once per pair, and everything after the filters only on the
cropped interior. Computation is float64, as scikit-image does for float64 input; the only
difference is the order of a few additions (C1/2 and C2/2 are folded into per-image terms),
~1e-16; ``tests/test_dedup.py`` checks equality to 1e-6.

Example:
    >>> rng = np.random.default_rng(0); imgs = rng.random((3, 64, 80))
    >>> s = ssim_pairs(imgs, np.array([0, 0]), np.array([1, 2]))
    >>> s.shape
    (2,)
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

WIN = 7
K1 = 0.01
K2 = 0.03


def _filt(stack: np.ndarray) -> np.ndarray:
    """7×7 uniform filter over the last two axes of (B,H,W) (axis 0 untouched)."""
    return uniform_filter(stack, size=(1, WIN, WIN))


def ssim_pairs(images: np.ndarray, i: np.ndarray, j: np.ndarray, *, data_range: float = 1.0,
               batch: int = 64, max_images: int = 1024) -> np.ndarray:
    """Mean SSIM of ``images[i[p]]`` vs ``images[j[p]]`` for every pair p.

    Args:
        images: (N,H,W) array (float32/float64, may be a memory map), H, W ≥ 7.
        i, j: int (P,) row indices.
        data_range: value range of the images (1.0 for [0, 1] data).
        batch: pairs per vectorised step (memory ≈ batch × H × W × 8 B × ~8).
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
    pad = (WIN - 1) // 2
    crop = (slice(None), slice(pad, -pad), slice(pad, -pad))
    n_pairs = i.size
    pos = 0
    while pos < n_pairs:
        # a chunk of consecutive pairs touching at most max_images distinct images
        seen: set[int] = set()
        end = pos
        while end < n_pairs:
            a, b = int(lo_o[end]), int(hi_o[end])
            grow = (a not in seen) + (b not in seen)
            if grow and len(seen) + grow > max_images and end > pos:
                break
            seen.add(a)
            seen.add(b)
            end += 1
        uniq = np.fromiter(sorted(seen), np.int64, len(seen))
        x = np.asarray(images[uniq], dtype=np.float64)
        # per-image terms on the cropped interior (the only part that enters the mean):
        # mu = E_w[x], mu2h = mu² + C1/2, vh = cov_norm·(E_w[x²] − mu²) + C2/2
        mu = np.empty((len(uniq),) + x.shape[1:])
        vh = np.empty_like(mu)
        for s in range(0, len(uniq), batch):
            xs = x[s:s + batch]
            mu[s:s + batch] = _filt(xs)
            vh[s:s + batch] = _filt(xs * xs)
        mu = np.ascontiguousarray(mu[crop])
        vh = np.ascontiguousarray(vh[crop])
        mu_sq = mu * mu
        vh -= mu_sq
        vh *= cov_norm
        vh += c2 / 2
        mu2h = mu_sq
        mu2h += c1 / 2
        for s in range(pos, end, batch):
            e = min(end, s + batch)
            ia = np.searchsorted(uniq, lo_o[s:e])
            ib = np.searchsorted(uniq, hi_o[s:e])
            uxy = _filt(x[ia] * x[ib])[crop]
            p = mu[ia]
            p *= mu[ib]                       # ux·uy
            a2 = np.subtract(uxy, p)          # uxy − ux·uy
            a2 *= 2 * cov_norm
            a2 += c2                          # 2·vxy + C2
            p *= 2
            p += c1                           # 2·ux·uy + C1
            p *= a2                           # numerator
            den = mu2h[ia]
            den += mu2h[ib]                   # ux² + uy² + C1
            b2 = vh[ia]
            b2 += vh[ib]                      # vx + vy + C2
            den *= b2
            p /= den
            out[order[s:e]] = p.mean(axis=(1, 2), dtype=np.float64)
        pos = end
    return out


def ssim_matrix(images: np.ndarray, *, data_range: float = 1.0, batch: int = 256) -> np.ndarray:
    """All-pairs SSIM (N,N) float64 of a small stack (diagonal 1): for tests and small subsets."""
    n = images.shape[0]
    i, j = np.triu_indices(n, k=1)
    s = ssim_pairs(images, i, j, data_range=data_range, batch=batch)
    m = np.eye(n, dtype=np.float64)
    m[i, j] = s
    m[j, i] = s
    return m
