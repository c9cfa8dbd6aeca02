"""Tests for engine.losses: every loss, U-Net weight maps (hand-made cases), cache, presence weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import engine.losses as L
from engine.errors import ConfigError, MaskError
from engine.losses import (
    WeightMapCache,
    build_loss,
    class_weight_map,
    combined_loss,
    inverse_frequency_class_weights,
    list_losses,
    presence_pos_weight,
    unet_weight_map,
)

SEG_LOSSES = ["dice", "bce", "ce", "bce_dice", "focal", "tversky", "mse", "border_ce"]


def _target(k: int, n: int = 2, size: int = 16) -> torch.Tensor:
    t = torch.zeros(n, size, size, dtype=torch.long)
    t[:, 3:9, 4:10] = 1
    if k > 2:
        t[:, 10:14, 10:14] = 2
    return t


def _logits_for(target: torch.Tensor, k: int, margin: float = 12.0) -> torch.Tensor:
    """Confident logits predicting ``target`` exactly."""
    return F.one_hot(target, k).permute(0, 3, 1, 2).float() * margin


def test_registry_names_and_unknown_name() -> None:
    assert set(SEG_LOSSES) == set(list_losses())
    with pytest.raises(ConfigError) as err:
        build_loss("dcie")
    assert "dice" in str(err.value) and "border_ce" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_loss("dice", smoth=1.0)
    assert "smooth" in str(err.value)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", SEG_LOSSES)
def test_perfect_prediction_beats_a_wrong_one(name: str, k: int) -> None:
    loss = build_loss(name)
    target = _target(k)
    perfect = loss(_logits_for(target, k), target)
    wrong = loss(_logits_for((target + 1) % k, k), target)
    assert float(perfect) < 0.02
    assert float(wrong) > 10 * float(perfect) and float(wrong) > 0.2


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_gradients_flow(name: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    loss = build_loss(name)(logits, _target(3))
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert float(logits.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_empty_target_gives_no_nan(name: str) -> None:
    empty = torch.zeros(2, 16, 16, dtype=torch.long)
    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    value = build_loss(name)(logits, empty)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert float(build_loss(name)(_logits_for(empty, 2), empty)) < 0.02


def test_dice_hand_value() -> None:
    # p = 0.5 everywhere; 2 of 4 pixels foreground: TP = 1, |P| = 2, |G| = 2 -> (2+1)/(4+1)
    target = torch.tensor([[[1, 1], [0, 0]]])
    assert float(build_loss("dice")(torch.zeros(1, 2, 2, 2), target)) == pytest.approx(1 - 3 / 5)
    # with background: class 0 gives the same 3/5
    assert float(build_loss("dice", include_background=True)(torch.zeros(1, 2, 2, 2), target)) == pytest.approx(0.4)
    assert float(build_loss("dice", smooth=0.0)(torch.zeros(1, 2, 2, 2), target)) == pytest.approx(0.5)


def test_mse_hand_value() -> None:
    target = torch.tensor([[[1, 0], [0, 0]]])
    assert float(build_loss("mse")(torch.zeros(1, 2, 2, 2), target)) == pytest.approx(0.25)


def test_bce_equals_binary_cross_entropy_for_two_classes() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    expected = F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], target.float())
    torch.testing.assert_close(build_loss("bce")(logits, target), expected)


def test_tversky_with_equal_alpha_beta_is_dice_and_focal_gamma0_is_ce() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    torch.testing.assert_close(build_loss("tversky", alpha=0.5, beta=0.5, smooth=0.0)(logits, target),
                               build_loss("dice", smooth=0.0)(logits, target))
    torch.testing.assert_close(build_loss("focal", gamma=0.0)(logits, target), F.cross_entropy(logits, target))
    # focal down-weights easy pixels: never above CE
    assert float(build_loss("focal")(logits, target)) < float(F.cross_entropy(logits, target))


def test_tversky_penalises_misses_more_than_false_alarms() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :4] = 1
    miss = target.clone()
    miss[0, :2] = 0  # 16 foreground pixels missed
    extra = target.clone()
    extra[0, 4:6] = 1  # 16 background pixels called foreground
    loss = build_loss("tversky")  # alpha 0.3 on FP, beta 0.7 on FN
    assert float(loss(_logits_for(miss, 2), target)) > float(loss(_logits_for(extra, 2), target))


def test_class_weights_change_cross_entropy() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[1, 0], [0, 0]]])
    plain = build_loss("bce")(logits, target)
    weighted = build_loss("bce", class_weights=[1.0, 3.0])(logits, target)
    torch.testing.assert_close(plain, weighted)  # uniform logits: weighted mean is the same log 2
    logits[0, 1, 0, 0] = 2.0  # the one foreground pixel is now better predicted
    assert float(build_loss("bce", class_weights=[1.0, 3.0])(logits, target)) < float(build_loss("bce")(logits, target))
    with pytest.raises(ConfigError, match="one weight per class"):
        build_loss("bce", class_weights=[1.0, 2.0, 3.0])(logits, target)


def test_bad_targets_raise_mask_errors() -> None:
    logits = torch.zeros(2, 2, 8, 8)
    with pytest.raises(MaskError, match="class id 2"):
        build_loss("dice")(logits, torch.full((2, 8, 8), 2))
    with pytest.raises(MaskError, match="shape"):
        build_loss("bce")(logits, torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(MaskError, match="integer"):
        build_loss("bce")(logits, torch.zeros(2, 8, 8))
    with pytest.raises(MaskError, match="weight_map"):
        build_loss("border_ce")(logits, torch.zeros(2, 8, 8, dtype=torch.long), torch.ones(2, 4, 4))


def test_border_ce_uses_the_weight_map() -> None:
    torch.manual_seed(3)
    logits = torch.randn(2, 2, 16, 16)
    target = _target(2)
    loss = build_loss("border_ce")
    assert loss.uses_weight_map and not build_loss("bce").uses_weight_map
    torch.testing.assert_close(loss(logits, target, torch.ones(2, 16, 16)), F.cross_entropy(logits, target))
    wmap = torch.rand(2, 16, 16) * 5
    expected = (F.cross_entropy(logits, target, reduction="none") * wmap).mean()
    torch.testing.assert_close(loss(logits, target, wmap), expected)
    # without a map it computes U-Net maps from the target
    maps = torch.from_numpy(np.stack([unet_weight_map(t.numpy()) for t in target]))
    torch.testing.assert_close(loss(logits, target), loss(logits, target, maps))


# ------------------------------------------------------------------------------ U-Net weight map


def _two_squares(size: int = 40) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[10:13, 10:13] = 1  # square A, columns 10..12
    m[10:13, 20:23] = 1  # square B, columns 20..22 -> 7 background columns between (13..19)
    return m


def test_weight_map_midpoint_matches_hand_computation() -> None:
    m = _two_squares()
    w0, sigma = 10.0, 5.0
    w = unet_weight_map(m, w0=w0, sigma=sigma, class_weights=None)
    # midpoint (11, 16): 4 px to A's right edge (col 12), 4 px to B's left edge (col 20)
    assert w[11, 16] == pytest.approx(1.0 + w0 * math.exp(-(4 + 4) ** 2 / (2 * sigma ** 2)), rel=1e-5)
    # (11, 14): 2 px to A, 6 px to B -> same sum
    assert w[11, 14] == pytest.approx(1.0 + w0 * math.exp(-64 / 50), rel=1e-5)
    # (15, 16): diagonal distances to the corners (12, 12) and (12, 20): 5 and 5
    assert w[15, 16] == pytest.approx(1.0 + w0 * math.exp(-(5 + 5) ** 2 / 50), rel=1e-5)
    # far corner: both objects ~30+ px away -> only the class weight
    assert w[39, 39] == pytest.approx(1.0, abs=1e-6)
    # object pixels get no border term (applied to background only)
    assert w[11, 11] == pytest.approx(1.0)

    # balanced class weights: w_c = n / (2 * n_c)
    wb = unet_weight_map(m, w0=w0, sigma=sigma)
    n, n_fg = m.size, 18
    w_bg, w_fg = n / (2 * (n - n_fg)), n / (2 * n_fg)
    assert wb[11, 16] == pytest.approx(w_bg + w0 * math.exp(-64 / 50), rel=1e-5)
    assert wb[39, 39] == pytest.approx(w_bg, rel=1e-5)
    assert wb[11, 11] == pytest.approx(w_fg, rel=1e-5)
    assert wb.dtype == np.float32 and wb.shape == m.shape


def test_weight_map_uses_the_second_nearest_object_not_the_farthest() -> None:
    m = _two_squares(60)
    m[50:53, 50:53] = 1  # a third object far away
    w = unet_weight_map(m, class_weights=None)
    assert w[11, 16] == pytest.approx(1.0 + 10 * math.exp(-64 / 50), rel=1e-5)


def test_single_object_or_empty_mask_has_no_border_term() -> None:
    m = np.zeros((30, 30), np.int64)
    m[5:10, 5:10] = 1
    np.testing.assert_array_equal(unet_weight_map(m), class_weight_map(m))
    np.testing.assert_array_equal(unet_weight_map(m, class_weights=None), np.ones((30, 30), np.float32))
    np.testing.assert_array_equal(unet_weight_map(np.zeros((8, 8), np.uint8)), np.ones((8, 8), np.float32))


def test_windowed_distances_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    m = (ndimage.gaussian_filter(rng.random((80, 96)), 2) > 0.53).astype(np.uint8)
    m[70:75, 5:9] = 2  # a second class
    labels, n = L.label_objects(m)
    assert n >= 4
    dists = np.sort(np.stack([ndimage.distance_transform_edt(labels != i) for i in range(1, n + 1)]), axis=0)
    brute = 10 * np.exp(-(dists[0] + dists[1]) ** 2 / (2 * 5.0 ** 2))
    brute[m != 0] = 0
    got = unet_weight_map(m, class_weights=None) - 1.0
    np.testing.assert_allclose(got, brute, atol=2e-6)


def test_weight_map_rejects_bad_masks() -> None:
    with pytest.raises(MaskError):
        unet_weight_map(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(MaskError):
        unet_weight_map(np.zeros((4, 4), np.float32))


# ----------------------------------------------------------------------------------- cache


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = L.unet_weight_map

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "unet_weight_map", counting)
    return calls


def test_cache_computes_once_per_mask(counted: list[int]) -> None:
    cache = WeightMapCache()
    m = _two_squares()
    first = cache.get(m)
    again = cache.get(m.astype(np.int64))  # same content, other dtype: same entry
    assert len(counted) == 1
    assert again is first
    np.testing.assert_array_equal(first, unet_weight_map(m))
    with pytest.raises(ValueError):
        first[0, 0] = 5.0  # read-only: callers cannot corrupt the cache
    other = m.copy()
    other[30, 30] = 1
    cache.get(other)
    assert len(counted) == 2 and cache.stats["hits"] == 1
    stack = cache.batch(np.stack([m, other]))
    assert stack.shape == (2, 40, 40) and len(counted) == 2


def test_cache_key_depends_on_parameters(counted: list[int]) -> None:
    m = _two_squares()
    a = WeightMapCache(w0=10).get(m)
    b = WeightMapCache(w0=5).get(m)
    assert len(counted) == 2 and not np.array_equal(a, b)


def test_cache_is_memory_bounded_lru(counted: list[int]) -> None:
    one_map = 40 * 40 * 4
    cache = WeightMapCache(max_bytes=one_map)
    a, b = _two_squares(), _two_squares()
    b[0, 0] = 1
    cache.get(a)
    cache.get(b)
    assert len(cache) == 1 and cache.nbytes <= one_map
    cache.get(b)
    assert len(counted) == 2  # b was kept
    cache.get(a)
    assert len(counted) == 3  # a was evicted and recomputed


def test_cache_on_disk_survives_a_new_instance(tmp_path, counted: list[int]) -> None:
    m = _two_squares()
    first = WeightMapCache(folder=tmp_path).get(m)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and not list(tmp_path.glob(".*tmp*"))
    fresh = WeightMapCache(folder=tmp_path)
    np.testing.assert_array_equal(fresh.get(m), first)
    assert len(counted) == 1 and fresh.stats["disk_hits"] == 1
    files[0].write_bytes(b"garbage")  # a corrupt file is recomputed and rewritten
    np.testing.assert_array_equal(WeightMapCache(folder=tmp_path).get(m), first)
    assert len(counted) == 2
    np.testing.assert_array_equal(np.load(files[0]), first)


# ---------------------------------------------------------------------------- class balancing


def test_presence_pos_weight_numbers() -> None:
    assert presence_pos_weight([1, 0, 0, 0]) == 3.0
    assert presence_pos_weight([True, True, False]) == 0.5
    assert presence_pos_weight(np.array([0] * 78 + [1] * 22)) == pytest.approx(78 / 22)
    assert presence_pos_weight([0, 0]) == 1.0 and presence_pos_weight([1]) == 1.0 and presence_pos_weight([]) == 1.0


def test_inverse_frequency_class_weights() -> None:
    w = inverse_frequency_class_weights([80, 20])
    assert w.dtype == torch.float32 and w.tolist() == pytest.approx([0.625, 2.5])
    counts = np.array([900, 60, 40, 0])
    w = inverse_frequency_class_weights(counts)
    assert float(w[3]) == 0.0
    assert float((w.double() * torch.tensor(counts)).sum() / counts.sum()) == pytest.approx(1.0)
    assert float(w[2]) / float(w[1]) == pytest.approx(60 / 40)
    assert inverse_frequency_class_weights([0, 0]).tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------------ combined loss


def test_combined_loss_adds_weighted_presence_bce() -> None:
    torch.manual_seed(4)
    mask_logits = torch.randn(3, 2, 8, 8, requires_grad=True)
    presence = torch.randn(3, 1, requires_grad=True)
    mask = torch.zeros(3, 8, 8, dtype=torch.long)
    mask[1, 2:4, 2:4] = 1
    crit = combined_loss("dice", presence_weight=0.5, pos_weight=2.0)
    parts = crit({"mask": mask_logits, "presence": presence}, mask)
    seg = build_loss("dice")(mask_logits, mask)
    pres = F.binary_cross_entropy_with_logits(presence.squeeze(1), torch.tensor([0.0, 1.0, 0.0]),
                                              pos_weight=torch.tensor([2.0]))
    torch.testing.assert_close(parts["loss"], seg + 0.5 * pres)
    torch.testing.assert_close(parts["presence"], pres.detach())
    parts["loss"].backward()
    assert presence.grad is not None and mask_logits.grad is not None
    # explicit labels override the ones derived from the mask
    explicit = crit({"mask": mask_logits, "presence": presence}, mask, present=torch.ones(3))["presence"]
    assert not torch.allclose(explicit, pres.detach())


def test_combined_loss_without_presence_head() -> None:
    logits = torch.randn(2, 2, 8, 8)
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    with pytest.raises(ConfigError, match="presence head"):
        combined_loss("bce", presence_weight=1.0)({"mask": logits}, mask)
    parts = combined_loss("bce", presence_weight=0.0)({"mask": logits}, mask)
    assert set(parts) == {"loss", "seg"}
    assert combined_loss("border_ce").uses_weight_map
    with pytest.raises(ConfigError):
        combined_loss("bce", pos_weight=-1.0)
