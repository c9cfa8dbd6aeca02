"""Tests for engine.inference (Predictor) and its use of engine.postprocess.

Two kinds of tiny models (classic U-Net, base width 4, two levels), both saved with
``save_checkpoint`` and loaded with ``Predictor.from_weights``:

- a random one with non-trivial BatchNorm statistics, for plumbing (sizes, batching, TTA maths);
- a "blur U-Net": the real ``unet_classic`` with weights set so that it computes
  ``logit_1 - logit_0 = gain * (B⁴x - centre)`` with ``B`` the 3×3 binomial blur (zero padding)
  and the deep path switched off. Its output is smooth, exactly flip-equivariant and has a
  receptive-field radius of 4 px, and ``reference_p1`` computes it independently with SciPy,
  so TTA, tiling and post-processing can be checked against known answers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from engine.augment import Preprocess, preprocess_image
from engine.checkpoint import ModelCard, save_checkpoint
from engine.errors import CheckpointError, ConfigError, ReadError, WorkbenchError
from engine.inference import Prediction, Predictor, check_tta, finish_mask
from engine.models import ModelSpec, build_model
from engine.postprocess import PostProcessConfig
from engine.preprocess import select_device

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(arch="unet_classic", base_channels=4, encoder_depth=2)  # size divisor 4
BINOMIAL = np.array([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
LABELS = {0: "background", 1: "nerve"}
PAD4 = Preprocess(resize_policy="pad", pad_multiple=4)  # no resizing: model pixels = image pixels


# ------------------------------------------------------------------------------ helpers

def random_unet(seed: int = 0, spec: ModelSpec = SPEC) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model(spec)
    net.train()
    with torch.no_grad():  # non-default BatchNorm statistics
        for _ in range(2):
            net(torch.rand(2, spec.in_channels, 32, 32))
    return net.eval()


def blur_unet(gain: float, centre: float = 0.5, presence_logit: float | None = None) -> torch.nn.Module:
    """unet_classic computing logit_1 - logit_0 = gain * (B⁴x - centre) (see the module docstring)."""
    spec = SPEC if presence_logit is None else replace(SPEC, presence_head=True)
    net = build_model(spec)
    k = torch.tensor(BINOMIAL, dtype=torch.float32)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # identity in eval mode
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        inner = net.net
        inner.inc[0].weight[0, 0] = k  # conv-BN-ReLU ×2 on channel 0 (inputs >= 0: ReLU is a no-op)
        inner.inc[3].weight[0, 0] = k
        last = inner.ups[-1].conv  # its input is cat(skip, upsampled deep path): read the skip only
        last[0].weight[0, 0] = k
        last[3].weight[0, 0] = k
        inner.head.weight[1, 0, 0, 0] = gain
        inner.head.bias[1] = -gain * centre
        if presence_logit is not None:
            net.presence_head.linear.bias.fill_(presence_logit)
    return net.eval()


def reference_p1(img: np.ndarray, gain: float, centre: float = 0.5) -> np.ndarray:
    """What the blur U-Net's foreground probability should be, computed without torch."""
    y = np.asarray(img, np.float64)
    for _ in range(4):
        y = ndimage.convolve(y, BINOMIAL, mode="constant", cval=0.0)
    return 1.0 / (1.0 + np.exp(-gain * (y - centre)))


def save(folder: Path, net: torch.nn.Module, pre: Preprocess = PAD4, **card: Any) -> Path:
    return save_checkpoint(folder, net, ModelCard(name=folder.name, spec=net.spec, labels=LABELS,
                                                  preprocess=pre, **card))


def smooth_image(h: int, w: int, seed: int = 0, border: int = 8) -> np.ndarray:
    """float32 (1,H,W) in [0,1]: smooth blobs, exactly 0 within ``border`` px of the edges
    (so zero padding and mirrored padding agree there)."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((h, w)), 3)
    img = (img - img.min()) / (img.max() - img.min())
    img[:border] = img[-border:] = 0
    img[:, :border] = img[:, -border:] = 0
    return img[None].astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def softmax_np(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=1).numpy()


# ------------------------------------------------------------------------------ from_weights, sizes

def test_from_weights_restores_the_original_size(tmp_path: Path) -> None:
    net = random_unet()
    folder = save(tmp_path / "rand", net, Preprocess(size=(32, 32)))
    pred = Predictor.from_weights(folder, device="cpu")
    assert pred.num_classes == 2 and not pred.has_presence and pred.device.type == "cpu"
    rng = np.random.default_rng(0)
    img = rng.random((1, 50, 70), dtype=np.float32)
    out = pred.predict(img)
    assert isinstance(out, Prediction) and out.presence is None
    assert out.mask.shape == (50, 70) and out.mask.dtype == np.uint8 and set(np.unique(out.mask)) <= {0, 1}
    assert out.probs.shape == (2, 50, 70) and out.probs.dtype == np.float32
    np.testing.assert_allclose(out.probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out.mask, (out.probs[1] >= 0.5).astype(np.uint8))  # card default threshold
    assert set(out.seconds) == {"preprocess", "model", "restore", "postprocess"}
    # the same numbers by hand: the card's preprocessing to 32×32, forward, softmax, then a
    # bilinear resize back to 50×70 with OpenCV
    x = torch.from_numpy(preprocess_image(img, Preprocess(size=(32, 32))))[None]
    with torch.no_grad():
        small = softmax_np(net(x)["mask"])[0]
    back = np.stack([cv2.resize(c, (70, 50), interpolation=cv2.INTER_LINEAR) for c in small])
    np.testing.assert_allclose(out.probs, back, atol=1e-5)
    # predictions depend on the image (not a constant map)
    other = pred.predict(rng.random((1, 50, 70), dtype=np.float32))
    assert np.abs(other.probs - out.probs).max() > 1e-3
    probs, presence = pred.predict_probs(img)
    np.testing.assert_allclose(probs, out.probs, atol=1e-6)
    assert presence is None


def test_blur_unet_matches_its_analytic_reference(tmp_path: Path) -> None:
    """Validates the test model itself (and the 'pad' policy path): no resizing, exact numbers."""
    pred = Predictor.from_weights(save(tmp_path / "blur", blur_unet(gain=8.0, centre=0.4)), device="cpu")
    img = smooth_image(50, 70)
    out = pred.predict(img)  # 50×70 → padded to 52×72 for the model → cropped back
    assert out.probs.shape == (2, 50, 70)
    np.testing.assert_allclose(out.probs[1], reference_p1(img[0], 8.0, 0.4), atol=1e-4)
    assert 0.05 < out.mask.mean() < 0.6  # a real mask, not empty or full


def test_batched_prediction_equals_one_by_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sizes = [(50, 70), (32, 32), (64, 48), (50, 70), (20, 30)]
    images = [rng.random((1, h, w), dtype=np.float32) for h, w in sizes]
    net = random_unet()
    for pre in (Preprocess(size=(32, 32)), PAD4):  # same model-input size / mixed sizes (grouped)
        folder = save(tmp_path / pre.resize_policy, net, pre)
        pred = Predictor.from_weights(folder, device="cpu", batch_size=2)
        calls: list[tuple[int, int]] = []

        def progress(done: int, total: int, message: str = "", calls: list = calls) -> None:
            calls.append((done, total))

        batched = pred.predict_many(images, progress=progress)
        assert calls[-1] == (5, 5) and len(calls) == 5
        single = [pred.predict(im) for im in images]
        for (h, w), b, s in zip(sizes, batched, single):
            assert b.mask.shape == (h, w) and b.probs.shape == (2, h, w)
            np.testing.assert_allclose(b.probs, s.probs, atol=1e-5)
            np.testing.assert_array_equal(b.mask, s.mask)
        # the order is kept: equal-size images 0 and 3 differ, and so do their results
        assert np.abs(batched[0].probs - batched[3].probs).max() > 1e-3


# ------------------------------------------------------------------------------ TTA

def test_flip_tta_is_the_average_of_flipped_predictions(tmp_path: Path) -> None:
    net = random_unet(seed=2)
    pred = Predictor.from_weights(save(tmp_path / "rand", net, Preprocess(size=(32, 32))), device="cpu")
    img = np.random.default_rng(3).random((1, 32, 32), dtype=np.float32)  # no resizing at 32×32
    x = torch.from_numpy(img)[None]
    def p(dims: tuple[int, ...]) -> np.ndarray:
        """softmax(net(flip(x))) flipped back; dims=() is the plain prediction."""
        with torch.no_grad():
            probs = torch.softmax(net(torch.flip(x, dims))["mask"], 1)
        return torch.flip(probs, dims).numpy()[0]

    plain, h, v, hv = p(()), p((3,)), p((2,)), p((2, 3))
    np.testing.assert_allclose(pred.predict(img).probs, plain, atol=1e-5)
    np.testing.assert_allclose(pred.predict(img, tta="flip").probs, (plain + h) / 2, atol=1e-5)
    np.testing.assert_allclose(pred.predict(img, tta="flip4").probs, (plain + h + v + hv) / 4, atol=1e-5)
    assert np.abs((plain + h) / 2 - plain).max() > 1e-3  # a random net is not flip-equivariant
    assert pred.tta == "none"  # per-call TTA does not change the predictor
    assert Predictor.from_weights(tmp_path / "rand", device="cpu", tta=True).tta == "flip"
    with pytest.raises(ConfigError, match="unknown TTA mode 'rot90'"):
        pred.predict(img, tta="rot90")


def test_tta_agrees_with_plain_inference_on_a_flip_equivariant_model(tmp_path: Path) -> None:
    pred = Predictor.from_weights(save(tmp_path / "blur", blur_unet(gain=8.0)), device="cpu")
    img = smooth_image(50, 70, seed=4, border=0)  # content up to the edges: flips matter there too
    img[0, 10:20, 5:40] = 1.0  # clearly asymmetric
    plain = pred.predict(img)
    for mode in ("flip", "flip4"):
        out = pred.predict(img, tta=mode)
        assert np.abs(out.probs - plain.probs).max() < 1e-4, mode
        assert dice(out.mask, plain.mask) >= 0.99
    # a TTA that forgot to flip the prediction back would be far off on this image
    wrong = (plain.probs + plain.probs[:, :, ::-1]) / 2
    assert np.abs(wrong - plain.probs).max() > 0.3


# ------------------------------------------------------------------------------ sliding window

def test_tiled_inference_matches_whole_image_inference(tmp_path: Path) -> None:
    folder = save(tmp_path / "blur", blur_unet(gain=4.0))
    whole = Predictor.from_weights(folder, device="cpu")
    tiled = Predictor.from_weights(folder, device="cpu", tile=(32, 32), tile_overlap=0.5, batch_size=4)
    assert whole.tile is None and tiled.tile == (32, 32)
    img = smooth_image(100, 130, seed=5)  # 100×130 → 100×132 for the model: many 32×32 tiles
    shapes: list[tuple[int, ...]] = []
    orig = tiled.forward_batch

    def spy(x, tta=None):
        shapes.append(tuple(x.shape))
        return orig(x, tta)

    tiled.forward_batch = spy  # type: ignore[method-assign]
    a, b = whole.predict(img), tiled.predict(img)
    assert sum(s[0] for s in shapes) > 4 and all(s[1:] == (1, 32, 32) for s in shapes)  # really tiled
    assert b.probs.shape == (2, 100, 130) and b.mask.shape == (100, 130)  # full original size
    assert np.abs(b.probs - a.probs).max() < 1e-2
    assert 0.1 < a.mask.mean() < 0.9 and dice(b.mask, a.mask) >= 0.99
    np.testing.assert_allclose(b.probs[1], reference_p1(img[0], 4.0), atol=1e-2)
    # tiles + TTA, and the batched path through tiles, agree too
    c = tiled.predict_many([img, img[:, :60, :90]], tta="flip")
    assert c[0].probs.shape == (2, 100, 130) and c[1].probs.shape == (2, 60, 90)
    assert np.abs(c[0].probs - a.probs).max() < 1e-2


def test_card_tile_is_the_default_and_small_images_are_not_tiled(tmp_path: Path) -> None:
    folder = save(tmp_path / "tiled", blur_unet(gain=4.0), tile=(32, 32))
    pred = Predictor.from_weights(folder, device="cpu")
    assert pred.tile == (32, 32)
    shapes: list[tuple[int, ...]] = []
    orig = pred.forward_batch
    pred.forward_batch = lambda x, tta=None: (shapes.append(tuple(x.shape)), orig(x, tta))[1]  # type: ignore
    out = pred.predict(smooth_image(24, 28, border=4))  # smaller than a tile: one plain pass
    assert shapes == [(1, 1, 24, 28)] and out.mask.shape == (24, 28)


def test_bad_tile_overlap_and_indivisible_card_size(tmp_path: Path) -> None:
    folder = save(tmp_path / "blur", blur_unet(gain=4.0))
    with pytest.raises(ConfigError, match=r"tile_overlap must be in \[0, 1\), got 1.0"):
        Predictor.from_weights(folder, device="cpu", tile=(32, 32), tile_overlap=1.0)
    bad = save(tmp_path / "bad", random_unet(), Preprocess(size=(30, 30)))  # the U-Net needs multiples of 4
    with pytest.raises(CheckpointError, match=r"preprocess size \(30, 30\) is not divisible by the model's 4") as info:
        Predictor.from_weights(bad, device="cpu")
    assert "card.json" in (info.value.hint or "")


# ------------------------------------------------------------------------------ channels

def test_rgb_and_rgba_inputs_are_converted_to_luminance(tmp_path: Path) -> None:
    pred = Predictor.from_weights(save(tmp_path / "rand", random_unet(), Preprocess(size=(32, 32))), device="cpu")
    rng = np.random.default_rng(6)
    rgb = rng.random((3, 40, 56), dtype=np.float32)
    luma = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
    ref = pred.predict(luma)
    out = pred.predict(rgb)
    np.testing.assert_allclose(out.probs, ref.probs, atol=1e-5)
    assert out.mask.shape == (40, 56)
    rgba = np.concatenate([rgb, rng.random((1, 40, 56), dtype=np.float32)])  # alpha is dropped
    np.testing.assert_allclose(pred.predict(rgba).probs, ref.probs, atol=1e-5)
    # luminance, not the first channel or the mean
    mean = pred.predict(rgb.mean(axis=0, keepdims=True))
    assert np.abs(mean.probs - ref.probs).max() > 1e-3
    # (H, W) is accepted as one channel
    np.testing.assert_allclose(pred.predict(luma[0]).probs, ref.probs, atol=1e-6)


def test_gray_input_to_an_rgb_model_is_repeated(tmp_path: Path) -> None:
    spec = replace(SPEC, in_channels=3)
    pred = Predictor.from_weights(save(tmp_path / "rgb", random_unet(spec=spec),
                                       Preprocess(size=(32, 32), in_channels=3)),
                                  device="cpu")
    g = np.random.default_rng(7).random((1, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(pred.predict(g).probs, pred.predict(np.repeat(g, 3, axis=0)).probs, atol=1e-6)


def test_volumes_and_unconvertible_channel_counts_are_clear_errors(tmp_path: Path) -> None:
    pred = Predictor.from_weights(save(tmp_path / "rand", random_unet(), Preprocess(size=(32, 32))), device="cpu")
    volume = np.zeros((20, 32, 32), np.float32)  # (D, H, W) reads as a 20-channel image
    with pytest.raises(ConfigError) as info:
        pred.predict(volume)
    assert info.value.message == "cannot adapt a 20-channel image to a 1-channel model"
    assert "convert the image first" in info.value.hint
    with pytest.raises(ReadError) as info:
        pred.predict(volume[None])  # (1, D, H, W)
    assert "expected an image (C,H,W) or (H,W), got shape (1, 20, 32, 32)" in info.value.message
    assert "load_image" in info.value.hint
    with pytest.raises(ConfigError, match="cannot adapt a 5-channel image"):
        pred.predict_many([np.zeros((1, 32, 32), np.float32), np.zeros((5, 32, 32), np.float32)])


def test_uint8_inputs_are_scaled_to_unit_range(tmp_path: Path) -> None:
    pred = Predictor.from_weights(save(tmp_path / "blur", blur_unet(gain=8.0, centre=0.4)), device="cpu")
    img = smooth_image(40, 52)
    u8 = np.round(img * 255).astype(np.uint8)
    ref = pred.predict(u8.astype(np.float32) / 255)
    assert ref.mask.any()
    for raw in (u8[0], u8):  # (H, W) and (1, H, W) integer arrays: /255, never 0..255 into the model
        out = pred.predict(raw)
        assert out.mask.shape == (40, 52)
        np.testing.assert_allclose(out.probs, ref.probs, atol=1e-5)
    rgb = np.repeat(u8, 3, axis=0)  # integer (C, H, W) RGB: gray again after luminance
    np.testing.assert_allclose(pred.predict(rgb).probs, ref.probs, atol=1e-4)


def test_uint8_hwc_rgb_prediction_has_the_image_size(tmp_path: Path) -> None:
    pred = Predictor.from_weights(save(tmp_path / "rand", random_unet(), Preprocess(size=(32, 32))), device="cpu")
    hwc = (np.random.default_rng(9).random((50, 70, 3)) * 255).astype(np.uint8)
    out = pred.predict(hwc)
    assert out.mask.shape == (50, 70) and out.probs.shape == (2, 50, 70)
    ref = pred.predict(np.moveaxis(hwc, -1, 0).astype(np.float32) / 255)
    np.testing.assert_allclose(out.probs, ref.probs, atol=1e-5)
    with pytest.raises(ReadError, match="3-D volume") as err:  # an integer volume is not read as channels
        pred.predict(np.zeros((20, 32, 40), np.uint8))
    assert "one slice" in (err.value.hint or "")


# ------------------------------------------------------------------------------ post-processing

def shapes_image() -> tuple[np.ndarray, dict[str, tuple[slice, slice]]]:
    """96×96: a 20×20 square, a 5×5 square and a 24×24 ring with an 8×8 hole."""
    img = np.zeros((96, 96), np.float32)
    where = {"big": np.s_[10:30, 10:30], "small": np.s_[10:15, 60:65], "ring": np.s_[50:74, 50:74],
             "hole": np.s_[58:66, 58:66]}
    img[where["big"]] = img[where["small"]] = img[where["ring"]] = 1.0
    img[where["hole"]] = 0.0
    return img[None], where


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab, n = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    return lab, np.bincount(lab.ravel(), minlength=n + 1)[1:]


def test_predictor_applies_card_postprocessing_and_per_call_overrides(tmp_path: Path) -> None:
    gain, centre = 20.0, 0.47  # no blur value sits exactly on the decision boundary
    folder = save(tmp_path / "blur", blur_unet(gain, centre), postprocess=PostProcessConfig(min_area=50))
    pred = Predictor.from_weights(folder, device="cpu")
    img, at = shapes_image()
    p1 = reference_p1(img[0], gain, centre)
    raw = p1 >= 0.5
    lab, sizes = components(raw)
    assert len(sizes) == 3 and 10 < sizes.min() < 50  # big square, small square, ring

    default = pred.predict(img)  # the card's min_area=50 removes the small square only
    expected = raw & np.isin(lab, np.flatnonzero(sizes >= 50) + 1)
    np.testing.assert_array_equal(default.mask, expected.astype(np.uint8))
    assert default.mask[at["small"]].sum() == 0 and default.mask[at["big"]][3:-3, 3:-3].all()
    assert default.mask[at["hole"]][2:-2, 2:-2].sum() == 0

    plain = pred.predict(img, post=PostProcessConfig())  # override: nothing removed
    np.testing.assert_array_equal(plain.mask, raw.astype(np.uint8))
    np.testing.assert_allclose(plain.probs, default.probs)  # post-processing never touches probs

    largest = pred.predict(img, post=PostProcessConfig(keep_largest=1)).mask  # the ring (512 px) beats 400 px
    _, sizes_l = components(largest)
    assert len(sizes_l) == 1 and largest[at["ring"]].any() and not largest[at["big"]].any()

    filled = pred.predict(img, post=PostProcessConfig(fill_holes=True)).mask
    np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(raw).astype(np.uint8))
    assert filled[at["hole"]].all() and filled.sum() > plain.mask.sum()

    strict = pred.predict(img, post=PostProcessConfig(threshold=0.9)).mask
    np.testing.assert_array_equal(strict, (p1 >= 0.9).astype(np.uint8))
    assert 0 < strict.sum() < plain.mask.sum()

    many = pred.predict_many([img, img], post=PostProcessConfig(keep_largest=1))
    assert all(np.array_equal(m.mask, largest) for m in many)


def test_presence_gate_uses_the_models_presence_probability(tmp_path: Path) -> None:
    gate = PostProcessConfig(presence_threshold=0.5)
    img, _ = shapes_image()
    low = Predictor.from_weights(save(tmp_path / "low", blur_unet(20.0, 0.47, presence_logit=-2.0), postprocess=gate),
                                 device="cpu")
    assert low.has_presence
    out = low.predict(img)
    assert out.presence == pytest.approx(1 / (1 + np.exp(2.0)), abs=1e-5)  # sigmoid(-2) ≈ 0.119
    assert out.probs[1].max() > 0.99 and out.mask.sum() == 0  # confident pixels, but gated out
    assert low.predict(img, tta="flip").presence == pytest.approx(out.presence, abs=1e-5)
    reopened = low.predict(img, post=PostProcessConfig(presence_threshold=0.1))
    expected = (reference_p1(img[0], 20.0, 0.47) >= 0.5).astype(np.uint8)
    np.testing.assert_array_equal(reopened.mask, expected)
    np.testing.assert_array_equal(low.predict(img, post=PostProcessConfig()).mask, expected)  # no gate

    high = Predictor.from_weights(save(tmp_path / "high", blur_unet(20.0, 0.47, presence_logit=2.0), postprocess=gate),
                                  device="cpu")
    out = high.predict(img)
    assert out.presence == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-5)
    np.testing.assert_array_equal(out.mask, expected)


def test_finish_mask_of_raw_probabilities_is_predicts_mask(tmp_path: Path) -> None:
    """Cached probabilities + finish_mask give exactly predict's mask, whatever the post-processing
    (the presence head's gate included); predict_raw runs no post-processing."""
    img, _ = shapes_image()
    for name, logit in (("low", -2.0), ("high", 2.0)):
        pred = Predictor.from_weights(save(tmp_path / name, blur_unet(20.0, 0.47, presence_logit=logit),
                                           postprocess=PostProcessConfig(presence_threshold=0.5)), device="cpu")
        raw = pred.predict_raw(img)
        assert raw.gate is None and not raw.gated and not raw.mask.any()
        assert raw.presence == pytest.approx(pred.predict(img).presence, abs=1e-6)
        for post in (pred.post_default, PostProcessConfig(presence_threshold=0.1), PostProcessConfig(threshold=0.9),
                     PostProcessConfig(min_area=40, keep_largest=1)):
            want = pred.predict(img, post=post).mask
            got = finish_mask(raw.probs, post, presence=raw.presence, gate=raw.gate,
                              gate_threshold=pred.gate_threshold)
            np.testing.assert_array_equal(got, want)
            assert got.dtype == np.uint8 and got.shape == img.shape[1:]
    assert check_tta("flip4") == "flip4"
    with pytest.raises(ConfigError, match="unknown TTA mode 'flip2'"):
        check_tta("flip2")


# ------------------------------------------------------------------------------ files

def test_predict_files_reads_images_and_reports_bad_files(tmp_path: Path) -> None:
    from engine.io import load_image

    pred = Predictor.from_weights(save(tmp_path / "rand", random_unet(), Preprocess(size=(32, 32))), device="cpu")
    rng = np.random.default_rng(8)
    good = []
    for i, (h, w) in enumerate([(40, 52), (33, 47)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random((h, w)) * 255).astype(np.uint8)).save(path)
        good.append(path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    results = list(pred.predict_files([good[0], bad, good[1]], num_workers=0))
    assert [p for p, _ in results] == [good[0], bad, good[1]]
    assert isinstance(results[1][1], WorkbenchError) and "broken.png" in str(results[1][1])
    for path, res in (results[0], results[2]):
        assert isinstance(res, Prediction)
        ref = pred.predict(load_image(path)[0])
        np.testing.assert_allclose(res.probs, ref.probs, atol=1e-5)
        np.testing.assert_array_equal(res.mask, ref.mask)


# ------------------------------------------------------------------------------ devices

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@no_gpu
def test_auto_device_is_cpu_without_cuda(tmp_path: Path) -> None:
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("Apple MPS available")
    assert select_device("auto") == torch.device("cpu") and select_device(None) == torch.device("cpu")
    pred = Predictor.from_weights(save(tmp_path / "rand", random_unet(), Preprocess(size=(32, 32))))
    assert pred.device.type == "cpu" and pred.amp is False and pred.channels_last is False
    assert next(pred.model.parameters()).device.type == "cpu"


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "CUDA"])
def test_explicit_cuda_without_cuda_is_a_clear_error(device: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        select_device(device)
    assert info.value.message == f"device {device!r} requested but CUDA is not available on this machine"
    assert info.value.hint == "use --device cpu or auto"
    folder = save(tmp_path / "rand", random_unet(), Preprocess(size=(32, 32)))
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Predictor.from_weights(folder, device=device)


def test_unknown_device_name() -> None:
    with pytest.raises(ConfigError) as info:
        select_device("gpu0")
    assert info.value.message == "unknown device 'gpu0'" and "cuda:N" in info.value.hint
    assert select_device("cpu") == torch.device("cpu")
