"""``bench/lung_shift.py``: the simulated acquisition shifts (the cross-site *proxy*) on synthetic images.

The benchmark itself needs the Montgomery set and minutes of CPU; these tests check only that each
shift does what its name says, moves the mask only when it changes the geometry, and is deterministic.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("bench.lung_shift")


def _image() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:128, 0:160]
    img = ((xx + yy) / (127 + 159)).astype(np.float32)[None]  # ramp 0..1
    mask = np.zeros((128, 160), np.uint8)
    mask[30:90, 20:70] = 1
    return img, mask


def _shift(bench, name):
    return next(s for s in bench.SHIFTS if s.name == name)


def test_none_is_identity_up_to_8_bit_quantisation(bench) -> None:
    img, mask = _image()
    x, m = bench.apply_shift(_shift(bench, "none"), img, mask, seed=0)
    assert x.shape == img.shape and x.dtype == np.float32
    assert np.abs(x - img).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(np.unique(np.round(x * 255) - x * 255).round(4), [0.0])
    assert np.array_equal(m, mask)


def test_intensity_shifts_change_pixels_not_the_mask(bench) -> None:
    img, mask = _image()
    mid = float(img[0, 64, 80])
    for name, check in [("gamma-0.6", lambda v: v > mid + 0.05), ("gamma-1.6", lambda v: v < mid - 0.05),
                        ("exposure+0.15", lambda v: abs(v - (mid + 0.15)) < 0.01)]:
        x, m = bench.apply_shift(_shift(bench, name), img, mask, seed=0)
        assert check(float(x[0, 64, 80])), (name, float(x[0, 64, 80]), mid)
        assert np.array_equal(m, mask) and x.shape == img.shape
    x, _ = bench.apply_shift(_shift(bench, "contrast-0.6"), img, mask, seed=0)
    assert x.max() - x.min() == pytest.approx(0.6, abs=0.01)
    x, _ = bench.apply_shift(_shift(bench, "window-0.2-0.8"), img, mask, seed=0)
    assert (x == 0).sum() > 0 and (x == 1).sum() > 0  # clipped at both ends


def test_blur_and_lowres_remove_detail(bench) -> None:
    img = np.zeros((1, 512, 512), np.float32)  # pixel sizes in the shifts are for a 512-px image
    img[0, ::2, :] = 1.0  # 1-px stripes
    mask = np.zeros((512, 512), np.uint8)
    for name in ("blur-2px", "lowres-4x"):
        x, m = bench.apply_shift(_shift(bench, name), img, mask, seed=0)
        assert x[0, 20:490].std() < 0.1 * img[0, 20:490].std(), name
        assert np.array_equal(m, mask)
    small = np.zeros((1, 128, 128), np.float32)
    small[0, ::8, :] = 1.0
    kept = bench.apply_shift(_shift(bench, "blur-2px"), small, np.zeros((128, 128), np.uint8), seed=0)[0]
    assert kept[0, 20:100].std() > 0.5 * small[0, 20:100].std()  # sigma scales with the image: 0.5 px here


def test_noise_is_deterministic_per_seed(bench) -> None:
    img, mask = _image()
    s = _shift(bench, "noise-0.04")
    a, _ = bench.apply_shift(s, img, mask, seed=7)
    b, _ = bench.apply_shift(s, img, mask, seed=7)
    c, _ = bench.apply_shift(s, img, mask, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.03 < float(np.std(a - img)) < 0.05


def test_crop_and_pad_move_the_mask_with_the_image(bench) -> None:
    img, mask = _image()
    x, m = bench.apply_shift(_shift(bench, "crop-10pct"), img, mask, seed=0)
    assert x.shape == (1, 128 - 2 * 13, 160 - 2 * 16) and m.shape == x.shape[1:]
    assert m[30 - 13, 20 - 16] == 1 and m[30 - 13 - 1, 20 - 16] == 0
    x, m = bench.apply_shift(_shift(bench, "pad-12.5pct"), img, mask, seed=0)
    assert x.shape == (1, 128 + 2 * 16, 160 + 2 * 20) and m.shape == x.shape[1:]
    assert x[0, :16].max() == 0 and m.sum() == mask.sum() and m[30 + 16, 20 + 20] == 1
