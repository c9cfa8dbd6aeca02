"""Tests for engine.augment: alignment under every transform, label safety, seeding, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.augment import (
    AUGMENT_PRESETS,
    AugmentConfig,
    Preprocess,
    adapt_channels,
    apply_transform,
    build_train_transform,
    median_despeckle,
    normalize_image,
    plan_geometry,
    preprocess_image,
    preprocess_pair,
    reseed_transform,
    restore_mask,
    restore_size,
    worker_seed,
)
from engine.errors import ConfigError, MaskError

GEOMETRIC = {
    "hflip": dict(hflip=1.0),
    "vflip": dict(vflip=1.0),
    "rotate90": dict(rotate90=1.0),
    "affine": dict(shift_scale_rotate=1.0, shift_limit=0.1, scale_limit=0.15, rotate_limit=30.0),
    "elastic": dict(elastic=1.0, elastic_alpha=300.0, elastic_sigma=10.0),
    "grid": dict(grid_distortion=1.0, grid_distort_limit=0.4),
    "optical": dict(optical_distortion=1.0, optical_distort_limit=0.3),
}
INTENSITY = {
    "brightness_contrast": dict(brightness_contrast=1.0, brightness_limit=0.3, contrast_limit=0.3),
    "gamma": dict(gamma=1.0, gamma_limit=(50.0, 70.0)),
    "gauss_noise": dict(gauss_noise=1.0),
    "speckle": dict(speckle=1.0),
}


def square_pair(size=64, r0=14, r1=34, c0=16, c1=44):
    """Image with a bright off-centre rectangle (on a faint gradient) and the matching mask."""
    img = np.tile(np.linspace(0.0, 0.2, size, dtype=np.float32), (size, 1))[None].copy()
    mask = np.zeros((size, size), np.uint8)
    img[0, r0:r1, c0:c1] = 0.9
    mask[r0:r1, c0:c1] = 1
    return img, mask


def iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / max((a | b).sum(), 1)


# --------------------------------------------------------------------------- augmentation

@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_geometric_transforms_keep_image_and_mask_aligned(name):
    img, mask = square_pair()
    t = build_train_transform(AugmentConfig(**GEOMETRIC[name]), seed=7)
    moved = False
    for _ in range(3):
        out_img, out_mask = apply_transform(t, img, mask)
        assert out_img.dtype == np.float32 and out_img.ndim == 3 and out_img.shape[0] == 1
        assert out_mask.dtype == np.uint8 and out_mask.shape == out_img.shape[1:]
        bright = out_img[0] > 0.55
        assert out_mask.sum() > 0.5 * mask.sum()
        assert iou(bright, out_mask) > 0.85, name
        moved |= not np.array_equal(out_mask, mask)
    assert moved, f"{name} never changed the mask"


def test_geometric_alignment_with_three_channels_and_reflect_border():
    img, mask = square_pair()
    rgb = np.concatenate([img, img * 0.5, 1 - img])
    aug = AugmentConfig(shift_scale_rotate=1.0, rotate_limit=40.0, elastic=1.0, border="reflect")
    out_img, out_mask = apply_transform(build_train_transform(aug, seed=1), rgb, mask)
    assert out_img.shape == (3, 64, 64)
    assert iou(out_img[0] > 0.55, out_mask) > 0.85
    assert iou(out_img[2] < 0.45, out_mask) > 0.85


@pytest.mark.parametrize("name", ["elastic", "grid", "optical", "affine"])
def test_distortions_never_invent_label_values(name):
    rng = np.random.default_rng(0)
    # 3-class mask: blocks of 0, 1, 2 side by side, so 0 touches 2 (linear interpolation would make 1s)
    mask3 = np.zeros((64, 64), np.uint8)
    mask3[:, 20:40] = 2
    mask3[10:30, 45:60] = 1
    gap = np.where(mask3 == 1, 0, mask3).astype(np.uint8)  # only {0, 2}
    img = rng.random((1, 64, 64), dtype=np.float32)
    t = build_train_transform(AugmentConfig(**GEOMETRIC[name]), seed=3)
    for _ in range(3):
        _, m3 = apply_transform(t, img, mask3)
        assert set(np.unique(m3)) <= {0, 1, 2}
        _, m2 = apply_transform(t, img, gap)
        assert set(np.unique(m2)) <= {0, 2}
        assert (m2 == 2).sum() > 0


def test_mask_dtype_is_preserved_and_checked():
    img, mask = square_pair()
    t = build_train_transform(AugmentConfig(hflip=1.0))
    _, m = apply_transform(t, img, mask.astype(np.int64))
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, mask[:, ::-1])
    with pytest.raises(MaskError):
        apply_transform(t, img, mask.astype(np.int64) * 300)
    with pytest.raises(MaskError):
        apply_transform(t, img, mask[:10])
    out, none = apply_transform(t, img)
    assert none is None and np.array_equal(out, img[:, :, ::-1])


@pytest.mark.parametrize("name", list(INTENSITY))
def test_intensity_transforms_leave_mask_identical(name):
    img, mask = square_pair()
    t = build_train_transform(AugmentConfig(**INTENSITY[name]), seed=11)
    out_img, out_mask = apply_transform(t, img, mask)
    np.testing.assert_array_equal(out_mask, mask)
    assert not np.allclose(out_img, img), f"{name} did nothing to the image"
    assert out_img.min() >= 0.0 and out_img.max() <= 1.0


def test_seed_determinism():
    img, mask = square_pair()
    aug = AugmentConfig.preset("ultrasound").replace(elastic=1.0, shift_scale_rotate=1.0)

    def run(seed, n=3):
        t = build_train_transform(aug, seed=seed)
        return [apply_transform(t, img, mask) for _ in range(n)]

    a, b, c = run(5), run(5), run(6)
    for (ia, ma), (ib, mb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    assert not all(np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(a, c))
    # reseeding replays the stream; per-worker seeds differ
    t = build_train_transform(aug, seed=5)
    first = apply_transform(t, img, mask)[0]
    reseed_transform(t, 5)
    np.testing.assert_array_equal(apply_transform(t, img, mask)[0], first)
    seeds = {worker_seed(0, w, e) for w in range(4) for e in range(3)}
    assert len(seeds) == 12 and worker_seed(0, 1, 2) == worker_seed(0, 1, 2)


def test_presets_and_config_round_trip():
    for name in AUGMENT_PRESETS:
        aug = AugmentConfig.preset(name)
        assert AugmentConfig.from_json(aug.to_json()) == aug
        img, mask = square_pair()
        out_img, out_mask = apply_transform(build_train_transform(aug, seed=0), img, mask)
        assert set(np.unique(out_mask)) <= {0, 1}
    assert AugmentConfig.preset("none").is_identity
    assert AugmentConfig.preset("xray").vflip == 0 and AugmentConfig.preset("ultrasound").vflip == 0
    assert AugmentConfig.preset("em").rotate90 > 0 and AugmentConfig.preset("em").elastic > 0
    with pytest.raises(ConfigError, match="ultrasound"):
        AugmentConfig.preset("mri")
    with pytest.raises(ConfigError):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ConfigError):
        AugmentConfig(border="wrap")


# --------------------------------------------------------------------------- preprocessing

def smooth_probs(h, w, k=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = ndimage.gaussian_filter(rng.normal(size=(k, h, w)), (0, 6, 6)) * 40
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


@pytest.mark.parametrize("policy,size,tol", [
    ("resize", (48, 64), 0.06),
    ("letterbox", (64, 64), 0.06),
    ("pad", (1, 1), 0.0),
])
def test_preprocess_restore_round_trip(policy, size, tol):
    pre = Preprocess(size=size, resize_policy=policy, in_channels=3)
    h, w = 70, 90
    probs = smooth_probs(h, w)
    # treat the probability maps as a 3-channel image: geometry is what is being tested
    x = preprocess_image(probs, pre)
    geo = plan_geometry((h, w), pre)
    assert x.shape == (3, *geo.out_hw)
    back = restore_size(x, (h, w), pre)
    assert back.shape == (3, h, w) and back.dtype == np.float32
    assert np.abs(back - probs).max() <= tol + 1e-6
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-5)
    if policy == "pad":
        assert geo.out_hw == (96, 96) and x.shape[1] % 32 == 0
        np.testing.assert_array_equal(back, probs)


def test_letterbox_geometry_and_mask_round_trip():
    pre = Preprocess(size=(64, 64), resize_policy="letterbox")
    geo = plan_geometry((40, 80), pre)
    assert geo.scaled_hw == (32, 64) and geo.pad == (16, 16, 0, 0)
    img = np.full((1, 40, 80), 0.5, np.float32)
    mask = np.zeros((40, 80), np.uint8)
    mask[10:30, 20:60] = 2
    x, m = preprocess_pair(img, mask, pre)
    assert x.shape == (1, 64, 64) and m.shape == (64, 64)
    assert (x[0, :16] == 0).all() and (x[0, 16:48] == 0.5).all()     # padding is 0, content centred
    assert set(np.unique(m)) == {0, 2}
    assert iou(restore_mask(m, (40, 80), pre), mask) > 0.95
    with pytest.raises(MaskError):
        restore_size(np.zeros((2, 32, 32), np.float32), (40, 80), pre)


def test_pad_policy_reflects_image_and_mask():
    pre = Preprocess(resize_policy="pad", pad_multiple=32)
    img = np.random.default_rng(0).random((1, 50, 33), dtype=np.float32)
    mask = (img[0] > 0.5).astype(np.uint8)
    x, m = preprocess_pair(img, mask, pre)
    geo = plan_geometry((50, 33), pre)
    assert x.shape == (1, 64, 64) and geo.pad == (7, 7, 15, 16)
    t, _, left, _ = geo.pad
    np.testing.assert_array_equal(x[0, t:t + 50, left:left + 33], img[0])
    np.testing.assert_array_equal(x[0, t - 1, left:left + 33], img[0, 1])     # mirrored border
    np.testing.assert_array_equal(m[t - 1, left:left + 33], mask[1])
    np.testing.assert_array_equal(restore_mask(m, (50, 33), pre), mask)


def test_resize_mask_is_nearest_and_aligned():
    img, mask = square_pair(size=100, r0=20, r1=60, c0=30, c1=70)
    x, m = preprocess_pair(img, mask, Preprocess(size=(50, 50)))
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    assert iou(x[0] > 0.55, m) > 0.95
    assert m.sum() == 400  # 40x40 square → 20x20, no half-pixel shift


def test_preprocess_config_json_round_trip_is_exact():
    pre = Preprocess(size=(420, 580), resize_policy="letterbox", median_filter=5, normalize="meanstd",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), in_channels=3, pad_multiple=16)
    back = Preprocess.from_json(pre.to_json())
    assert back == pre and isinstance(back.size, tuple) and isinstance(back.mean, tuple)
    assert back.to_json() == pre.to_json()
    assert Preprocess.from_dict({}) == Preprocess()
    for bad in (dict(resize_policy="crop"), dict(normalize="zscore"), dict(median_filter=4),
                dict(mean=(0.1, 0.2)), dict(std=(0.0,)), dict(size=(0, 10))):
        with pytest.raises(ConfigError):
            Preprocess(**bad)


def test_normalization_modes():
    x = np.stack([np.linspace(0.2, 0.6, 16, dtype=np.float32).reshape(4, 4),
                  np.full((4, 4), 0.3, np.float32)])
    mm = normalize_image(x, Preprocess(normalize="minmax", in_channels=2))
    assert mm[0].min() == 0 and mm[0].max() == pytest.approx(1.0) and (mm[1] == 0).all()
    ms = normalize_image(x, Preprocess(normalize="meanstd", mean=(0.4, 0.3), std=(0.2, 0.1), in_channels=2))
    np.testing.assert_allclose(ms[0], (x[0] - 0.4) / 0.2, rtol=1e-6)
    np.testing.assert_allclose(ms[1], 0, atol=1e-6)
    assert normalize_image(x, Preprocess(in_channels=2)) is not None
    np.testing.assert_array_equal(normalize_image(x, Preprocess(in_channels=2)), x)
    # preprocess_image(normalize=False) then normalize_image == preprocess_image
    pre = Preprocess(size=(8, 8), normalize="meanstd", mean=(0.1,), std=(0.5,), in_channels=2)
    np.testing.assert_allclose(normalize_image(preprocess_image(x, pre, normalize=False), pre),
                               preprocess_image(x, pre))


def test_adapt_channels():
    rgb = np.random.default_rng(0).random((3, 5, 6), dtype=np.float32)
    gray = adapt_channels(rgb, 1)
    np.testing.assert_allclose(gray[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], rtol=1e-6)
    rep = adapt_channels(gray, 3)
    assert rep.shape == (3, 5, 6) and all(np.array_equal(rep[i], gray[0]) for i in range(3))
    rgba = np.concatenate([rgb, np.ones((1, 5, 6), np.float32)])
    np.testing.assert_array_equal(adapt_channels(rgba, 3), rgb)
    np.testing.assert_allclose(adapt_channels(rgba, 1), gray)
    assert adapt_channels(rgb, 3) is rgb
    with pytest.raises(ConfigError):
        adapt_channels(np.zeros((5, 4, 4), np.float32), 3)
    pre = Preprocess(size=(5, 6), in_channels=1)
    np.testing.assert_allclose(preprocess_image(rgb, pre), gray, rtol=1e-6)


def test_median_despeckle():
    x = np.full((2, 20, 20), 0.5, np.float32)
    x[0, 5, 5] = 1.0          # salt
    x[1, 10, 10] = 0.0        # pepper
    x[0, 12:18, 12:18] = 0.9  # an edge that must survive
    for k in (3, 5, 7):
        y = median_despeckle(x, k)
        assert y.shape == x.shape and y.dtype == np.float32
        assert y[0, 5, 5] == 0.5 and y[1, 10, 10] == 0.5
        assert y[0, 15, 15] == pytest.approx(0.9)
    np.testing.assert_array_equal(median_despeckle(x, 5),
                                  ndimage.median_filter(x, size=(1, 5, 5), mode="nearest"))
    np.testing.assert_array_equal(median_despeckle(x, 0), x)
    with pytest.raises(ConfigError):
        median_despeckle(x, 4)
    pre = Preprocess(size=(20, 20), median_filter=3, in_channels=2)
    assert preprocess_image(x, pre)[0, 5, 5] == 0.5


def test_restore_size_many_classes_and_pipeline_end_to_end():
    # K = 6 exceeds OpenCV's 4-channel resize limit: restore_size must handle it
    probs = smooth_probs(30, 40, k=6, seed=2)
    pre = Preprocess(size=(24, 24), resize_policy="letterbox", in_channels=6)
    small = preprocess_image(probs, pre)
    back = restore_size(small, (30, 40), pre)
    assert back.shape == (6, 30, 40)
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-5)
    # training path: preprocess (no normalisation) → augment → normalise
    img, mask = square_pair(size=80, r0=20, r1=50, c0=20, c1=60)
    pre = Preprocess(size=(64, 64), normalize="meanstd", mean=(0.3,), std=(0.2,))
    x, m = preprocess_pair(img, mask, pre, normalize=False)
    x, m = apply_transform(build_train_transform(AugmentConfig.preset("light"), seed=0), x, m)
    x = normalize_image(x, pre)
    assert x.shape == (1, 64, 64) and m.shape == (64, 64)
    assert iou(x[0] > (0.55 - 0.3) / 0.2, m) > 0.85


# ----------------------------------------------------------------------- cross-site normalisation

def test_standardize_and_clahe_are_stored_and_applied_identically_in_training_and_inference() -> None:
    from engine.augment import clahe, normalize_image, preprocess_image

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(0.5, 0.05, (1, 96, 80)), 0, 1).astype(np.float32)
    img[:, 20:60, 10:40] += 0.2
    pre = Preprocess(size=(64, 64), normalize="standardize", clahe=2.0, clahe_tiles=4)
    assert Preprocess.from_json(pre.to_json()) == pre
    x = preprocess_image(img, pre)
    assert x.shape == (1, 64, 64)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3
    raw = preprocess_image(img, pre, normalize=False)  # what the training cache holds
    np.testing.assert_allclose(normalize_image(raw, pre), x, atol=1e-6)  # training path == inference path
    # standardisation removes a site's gain and offset (up to the quantisation of 8-bit-like data)
    site_b = np.clip(img * 0.6 + 0.1, 0, 1)
    std_only = Preprocess(size=(64, 64), normalize="standardize")
    np.testing.assert_allclose(preprocess_image(site_b, std_only), preprocess_image(img, std_only), atol=1e-4)
    # CLAHE stretches a low-contrast image and keeps [0, 1]
    low = (0.45 + 0.1 * img).astype(np.float32)
    eq = clahe(low, 2.0, 4)
    assert eq.min() >= 0 and eq.max() <= 1 and float(eq.std()) > 2 * float(low.std())
    with pytest.raises(ConfigError):
        Preprocess(clahe=-1)
    with pytest.raises(ConfigError):
        Preprocess(normalize="zscore")


def test_blur_augmentation_softens_edges_and_xray_strong_preset_uses_it() -> None:
    from engine.augment import AugmentConfig, apply_transform, build_train_transform

    img = np.zeros((1, 64, 64), np.float32)
    img[:, :, 32:] = 1.0
    mask = (img[0] > 0).astype(np.uint8)
    t = build_train_transform(AugmentConfig(blur=1.0, blur_sigma=(2.0, 2.0)), seed=0)
    out, m = apply_transform(t, img, mask)
    assert np.array_equal(m, mask)  # image-only transform
    assert 0.05 < float(out[0, 32, 31]) < 0.95  # the step edge is now a ramp
    strong = AugmentConfig.preset("xray-strong")
    assert strong.blur > 0 and strong.gamma_limit[0] < AugmentConfig.preset("xray").gamma_limit[0]
    with pytest.raises(ConfigError):
        AugmentConfig(blur=0.5, blur_sigma=(0.0, 1.0))
