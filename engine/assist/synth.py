"""Synthetic objects for the click model's training (and for tests): a textured blob on a textured
background, sometimes with look-alike distractors, speckle and blur.

They teach what no real set here covers — "segment whatever was clicked", in any grey level,
contrast polarity, size and shape — and contain no patient data.

Example:
    >>> img, mask = synthetic_object(np.random.default_rng(0), 128)
    >>> img.shape, img.dtype, mask.dtype, bool(mask.any())
    ((128, 128), dtype('uint8'), dtype('bool'), True)
"""

from __future__ import annotations

import numpy as np


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """(size, size) float32 noise smoothed with a Gaussian of ``sigma`` px, scaled to unit standard deviation."""
    from scipy import ndimage as ndi

    small = max(4, int(size / max(sigma / 2.0, 1.0)))
    base = rng.standard_normal((small, small)).astype(np.float32)
    from engine.assist.prep import resize

    up = resize(base, (size, size))
    up = ndi.gaussian_filter(up, max(0.5, sigma * size / small / 4.0))
    return (up - up.mean()) / max(float(up.std()), 1e-6)


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random closed shape (bool (size, size)): a wobbly ellipse, rotated, somewhere in the frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    ay, ax = rng.uniform(0.05, 0.3, 2) * size
    th = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(th) + dy * np.sin(th)) / ax
    v = (-dx * np.sin(th) + dy * np.cos(th)) / ay
    r = np.sqrt(u * u + v * v)
    wobble = 0.25 * _smooth_noise(rng, size, size / rng.uniform(3, 10)) * rng.uniform(0.2, 1.0)
    return np.asarray(r < 1.0 + wobble)


def synthetic_object(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its object.

    Args:
        rng: random generator (same seed = same image).
        size: side of the square image.

    Returns:
        ``(image (size, size) uint8, mask (size, size) bool)``.
    """
    from scipy import ndimage as ndi

    mask = _blob(rng, size)
    tries = 0
    while mask.sum() < 0.002 * size * size and tries < 5:
        mask = _blob(rng, size)
        tries += 1
    bg = 0.5 + 0.12 * _smooth_noise(rng, size, rng.uniform(4, 40)) + 0.05 * _smooth_noise(rng, size, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bg += rng.uniform(-0.2, 0.2) * (yy - 0.5) + rng.uniform(-0.2, 0.2) * (xx - 0.5)
    contrast = rng.uniform(0.1, 0.45) * rng.choice([-1.0, 1.0])
    fg_tex = 0.08 * _smooth_noise(rng, size, rng.uniform(2, 20))
    img = np.where(mask, bg + contrast + fg_tex, bg)
    for _ in range(int(rng.integers(0, 4))):  # look-alikes that are not the object
        other = _blob(rng, size) & ~ndi.binary_dilation(mask, iterations=3)
        img = np.where(other, bg + contrast * rng.uniform(0.5, 1.2) + fg_tex, img)
    if rng.random() < 0.5:  # a rim (vessel wall, pleura)
        rim = ndi.binary_dilation(mask, iterations=int(rng.integers(1, 4))) & ~mask
        img = np.where(rim, img + rng.uniform(-0.25, 0.25), img)
    img = ndi.gaussian_filter(img, rng.uniform(0.3, 2.0))
    if rng.random() < 0.4:  # ultrasound-like speckle
        img = img * rng.gamma(4.0, 0.25, img.shape).astype(np.float32)
    img = img + rng.normal(0, rng.uniform(0.0, 0.06), img.shape)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), mask
