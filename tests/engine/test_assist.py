"""Interactive click-to-segment (engine.assist): the session API, the classical methods, the click model's
save/load/predict path, the simulated-click protocol, and a tiny training fit.

Synthetic images in memory; the shipped click model is checked on one held-out Montgomery X-ray when
../shared/data is there (skipped otherwise). No test trains beyond a few steps of a tiny network.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from engine.assist import (
    CLASSICAL_ORDER,
    METHODS,
    Click,
    available_methods,
    iou,
    list_methods,
    next_click,
    noc,
    run_protocol,
    start_session,
)
from engine.assist.clicks import iou_after
from engine.errors import CheckpointError, ConfigError, MaskError, ReadError

REPO = Path(__file__).resolve().parents[2]
CLASSICAL = ("grabcut", "random_walker", "watershed")


def disk_image(h: int = 96, w: int = 112, r: int = 22, centre: tuple[int, int] = (48, 56),
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disk on a dark, mildly noisy background: (uint8 image, bool object)."""
    yy, xx = np.mgrid[0:h, 0:w]
    obj = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r
    rng = np.random.default_rng(seed)
    img = np.where(obj, 190.0, 50.0) + rng.normal(0, 6, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8), obj


def two_squares() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = np.full((80, 120), 40, np.uint8)
    a = np.zeros(img.shape, bool)
    b = np.zeros(img.shape, bool)
    a[20:50, 10:40] = True
    b[25:55, 75:105] = True
    img[a | b] = 200
    return img, a, b


@pytest.fixture()
def no_click_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the shipped click model unfindable (as on a checkout without weights)."""
    import engine.assist.model as model

    monkeypatch.setattr(model, "DEFAULT_WEIGHTS", "no-such-click-model")
    monkeypatch.setattr(model, "search_dirs", lambda: [])
    model.clear_cache()
    yield
    model.clear_cache()


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    """A random-initialised tiny click model saved as a weights folder (model.safetensors + click.json)."""
    import torch

    from engine.assist.model import ClickCard, ClickViewConfig, save_click_model
    from engine.assist.net import ClickNet
    from engine.assist.spec import ClickNetSpec

    torch.manual_seed(0)
    spec = ClickNetSpec(widths=(8, 8, 16), fine_channels=4)
    net = ClickNet(spec).eval()
    return save_click_model(tmp_path / "tiny-click", net,
                            ClickCard(name="tiny-click", spec=spec, view=ClickViewConfig(size=64, min_side_px=16)))


# ----------------------------------------------------------------------------------------------- protocol

def test_protocol_clicks_the_centre_of_the_largest_error_and_signs_it() -> None:
    gt = np.zeros((40, 40), bool)
    gt[5:26, 5:26] = True                      # 21×21 object, fully missed → false negative, centre (15, 15)
    pred = np.zeros_like(gt)
    pred[30:35, 30:35] = True                  # a 5×5 false positive, centre (32, 32)
    assert next_click(gt, pred) == Click(15, 15, True)
    fixed = gt | pred                          # object found, false positive left
    assert next_click(gt, fixed) == Click(32, 32, False)
    # the image border is boundary: an error touching it has its centre one half-size inside
    edge = np.zeros((20, 20), bool)
    edge[0:7, 0:20] = True
    c = next_click(edge, np.zeros_like(edge))
    assert c is not None and c.positive and c.row == 3
    # a pixel already clicked is not clicked again; an exact mask needs no click
    again = next_click(gt, pred, [Click(15, 15, True)])
    assert again is not None and (again.row, again.col) != (15, 15) and again.positive
    assert next_click(gt, gt.copy()) is None
    # equal depth of FN and FP: the false positive side wins (as in the reference implementation)
    tie_gt = np.zeros((20, 40), bool)
    tie_gt[5:10, 5:10] = True
    tie_pred = np.zeros_like(tie_gt)
    tie_pred[5:10, 25:30] = True
    assert next_click(tie_gt, tie_pred) == Click(7, 27, False)
    with pytest.raises(MaskError):
        next_click(gt, np.zeros((3, 3), bool))


def test_noc_iou_and_protocol_driver() -> None:
    assert noc([0.5, 0.86, 0.91], 0.85) == 2 and noc([0.5, 0.86, 0.91], 0.90) == 3
    assert noc([0.5, 0.6], 0.9) == 20 and noc([], 0.9) == 20
    assert iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert iou(np.eye(3), np.ones((3, 3))) == pytest.approx(1 / 3)
    gt = np.zeros((30, 30), bool)
    gt[5:20, 5:20] = True
    seen: list[Click] = []

    def oracle(c: Click) -> np.ndarray:        # a perfect method: one click gives the object
        seen.append(c)
        return gt.copy()

    assert run_protocol(gt, oracle) == [1.0] and seen == [Click(12, 12, True)]
    grow = [np.zeros_like(gt)]

    def half(c: Click) -> np.ndarray:          # each positive click adds five more rows of the object
        grow[0] = grow[0] | (gt & (np.arange(30)[:, None] < 5 + 5 * (len(seen) + 1)))
        seen.append(c)
        return grow[0]

    seen.clear()
    ious = run_protocol(gt, half, max_clicks=20)
    assert ious == sorted(ious) and ious[-1] == 1.0 and len(ious) == 3
    assert iou_after(ious, 5) == 1.0 and iou_after(ious, 1) == pytest.approx(1 / 3)
    seen.clear()
    grow[0] = np.zeros_like(gt)
    assert len(run_protocol(gt, half, stop_at=0.5, min_clicks=1)) == 2


# ----------------------------------------------------------------------------------------------- session API

@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "rgb"])
def test_any_integer_image_gives_boolean_masks_of_its_size(dtype: str) -> None:
    img, obj = disk_image()
    if dtype == "uint16":
        arr: np.ndarray = img.astype(np.uint16) * 257 + 1000
    elif dtype == "int16":
        arr = img.astype(np.int16) * 8 - 1024          # CT-like Hounsfield units
    elif dtype == "rgb":
        arr = np.stack([img, img // 2, img], axis=2)
    else:
        arr = img
    s = start_session(arr, method="watershed")
    m = s.click(48, 56, True)
    assert m.shape == img.shape and m.dtype == bool
    assert iou(m, obj) > 0.9
    assert s.method == "watershed" and s.clicks == 1 and s.points == (Click(48, 56, True),)


@pytest.mark.parametrize("method", CLASSICAL)
def test_a_positive_click_covers_an_obvious_object(method: str) -> None:
    img, obj = disk_image()
    s = start_session(img, method=method)
    assert not s.mask.any()
    m = s.click(48, 56, True)
    assert iou(m, obj) > 0.85, (method, iou(m, obj))


@pytest.mark.parametrize("method", CLASSICAL)
def test_a_negative_click_removes_a_region_and_undo_restores(method: str) -> None:
    img, a, b = two_squares()
    img[b] = 120                               # a second, different structure wrongly in the mask
    s = start_session(img, method=method, mask=a | b)
    kept = s.click(35, 25, True)
    assert kept[a].mean() > 0.9 and kept[b].mean() > 0.8, method
    after = s.click(40, 90, False)
    assert after[b].mean() < 0.2 and after[a].mean() > 0.8, (method, after[b].mean(), after[a].mean())
    assert s.clicks == 2
    assert np.array_equal(s.undo(), kept) and s.clicks == 1
    assert np.array_equal(s.undo(), a | b) and s.clicks == 0
    assert np.array_equal(s.undo(), a | b)     # nothing left to undo: the start mask
    fresh = start_session(img, method=method)  # from empty: positive on one square, negative on the other
    fresh.click(35, 25, True)
    m = fresh.click(40, 90, False)
    assert m[a].mean() > 0.8 and m[b].mean() < 0.2, method


def test_box_prompt_keeps_the_object_and_nothing_outside_the_box() -> None:
    img, obj = disk_image()
    for method in ("grabcut", "watershed"):
        s = start_session(img, method=method)
        m = s.box(20, 28, 76, 84)
        assert m.shape == img.shape and m.dtype == bool
        assert iou(m, obj) > 0.8, (method, iou(m, obj))
        outside = np.ones(img.shape, bool)
        outside[20:77, 28:85] = False
        assert not m[outside].any()
        assert s.clicks == 0 and s.current_box == (20, 28, 76, 84) and s.note()["box"]
        s.undo()
        assert s.current_box is None and not s.mask.any()
    s = start_session(img, method="grabcut")
    assert s.box(76, 84, 20, 28).any()        # corners in any order
    with pytest.raises(ConfigError):
        s.box(10, 10, 10, 40)                  # no height


@pytest.mark.parametrize("method", CLASSICAL)
def test_a_starting_mask_is_respected(method: str) -> None:
    img, a, b = two_squares()
    s = start_session(img, method=method, mask=a.astype(np.uint8) * 255)
    assert np.array_equal(s.mask, a) and s.started_from == "mask" and s.clicks == 0
    m = s.click(40, 90, True)                  # add the second square: the first one stays
    assert m[a].mean() > 0.9 and m[b].mean() > 0.8, method
    assert np.array_equal(s.undo(), a)
    assert np.array_equal(s.reset(), a) and np.array_equal(s.start_mask, a)


def test_methods_are_listed_and_none_falls_back_without_weights(no_click_model: None) -> None:
    infos = {m.name: m for m in list_methods()}
    assert tuple(infos) == METHODS
    assert not infos["click_model"].available and "click" in infos["click_model"].reason
    assert all(infos[m].available for m in CLASSICAL)
    assert available_methods() == list(CLASSICAL_ORDER)
    img, obj = disk_image()
    s = start_session(img)                     # method=None
    assert s.method == CLASSICAL_ORDER[0]
    assert iou(s.click(48, 56, True), obj) > 0.85
    with pytest.raises(CheckpointError) as err:
        start_session(img, method="click_model")
    assert "reproduce.sh click-seg" in str(err.value) and "grabcut" in str(err.value)


def test_bad_inputs_raise_errors_that_say_what_to_do() -> None:
    img, obj = disk_image()
    with pytest.raises(ReadError):
        start_session(np.zeros((2, 3, 4, 5), np.uint8), method="watershed")
    with pytest.raises(ReadError):
        start_session([[1, 2], [3, 4]], method="watershed")  # type: ignore[arg-type]
    with pytest.raises(ReadError):
        start_session(np.full((8, 8), np.nan), method="watershed")
    with pytest.raises(MaskError) as merr:
        start_session(img, method="watershed", mask=np.zeros((5, 5), bool))
    assert "Fix:" in str(merr.value)
    with pytest.raises(ConfigError) as cerr:
        start_session(img, method="magic_wand")
    assert "grabcut" in str(cerr.value) and "watershed" in str(cerr.value)
    s = start_session(img, method="watershed")
    with pytest.raises(ConfigError):
        s.click(500, 5, True)
    flat = start_session(np.zeros((16, 16), np.int16), method="grabcut")
    assert flat.click(8, 8, True).shape == (16, 16)   # a flat image still answers (nothing to separate)


def test_session_is_cheap_to_keep_and_records_a_note() -> None:
    img, _ = disk_image(512, 512, r=100, centre=(256, 256))
    s = start_session(img, method="watershed")
    for r, c, p in ((256, 256, True), (10, 10, False), (256, 300, True)):
        s.click(r, c, p)
    size = len(pickle.dumps(s))
    assert size < 512 * 512 + 4 * (512 * 512 // 8) + 4096, size   # image byte-per-pixel + packed masks
    copy = pickle.loads(pickle.dumps(s))
    assert np.array_equal(copy.mask, s.mask) and copy.clicks == 3
    note = s.note()
    assert note == {"tool": "assist", "method": "watershed", "clicks": 3, "positive_clicks": 2,
                    "negative_clicks": 1, "box": False, "started_from": "empty"}
    json.dumps(note)
    assert s.last_seconds >= 0.0


# ----------------------------------------------------------------------------------------------- click model

def test_click_model_save_load_predict_round_trip(tiny_model: Path) -> None:
    from engine.assist.model import ClickCard, clear_cache, load_click_model

    card = ClickCard.read(tiny_model)
    assert card.spec.widths == (8, 8, 16) and card.tensors_sha256 and card.n_parameters > 0
    clear_cache()
    img, obj = disk_image()
    for arr in (img, img.astype(np.uint16) * 100, np.stack([img] * 3, axis=2)):
        s = start_session(arr, method="click_model", weights=tiny_model)
        m = s.click(48, 56, True)
        assert m.shape == img.shape and m.dtype == bool and s.method == "click_model"
        s.click(5, 5, False)
        assert s.clicks == 2 and s.note()["weights"] == str(tiny_model)
        b = s.box(20, 28, 76, 84)
        assert not b[:20].any() and not b[77:].any()
    assert load_click_model(tiny_model) is load_click_model(tiny_model)  # one network per process
    # a starting mask outside the zoomed view is never touched by a click
    start = np.zeros(img.shape, bool)
    start[2:6, 2:6] = True
    start[40:56, 48:64] = True
    s = start_session(img, method="click_model", weights=tiny_model, mask=start)
    assert np.array_equal(s.mask, start)
    m = s.click(48, 56, True)
    view = load_click_model(tiny_model).view_for(img.shape, [Click(48, 56, True)], start)
    outside = np.ones(img.shape, bool)
    outside[view.r0:view.r1, view.c0:view.c1] = False
    assert np.array_equal(m[outside], start[outside])
    assert np.array_equal(s.undo(), start)


def test_click_model_refuses_damaged_weights(tiny_model: Path, tmp_path: Path) -> None:
    from engine.assist.model import clear_cache, load_click_model

    clear_cache()
    data = bytearray((tiny_model / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tiny_model / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash"):
        load_click_model(tiny_model)
    card = json.loads((tiny_model / "click.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "click.json").write_text(json.dumps({**card, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a segwb click-model card"):
        load_click_model(tmp_path / "other")


def test_tiny_training_fit_lowers_the_loss() -> None:
    import torch

    from engine.assist.model import ClickViewConfig
    from engine.assist.net import ClickNet
    from engine.assist.spec import ClickNetSpec
    from engine.assist.train import ClickTrainConfig, _Pools, train_step

    torch.manual_seed(0)
    cfg = ClickTrainConfig(steps=20, batch_size=4, lr=5e-3, mix=(0.0, 0.0, 1.0), max_iters=0, p_correct=0.0,
                           spec=ClickNetSpec(widths=(8, 16, 16), fine_channels=4),
                           view=ClickViewConfig(size=64, min_side_px=16))
    net = ClickNet(cfg.spec)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    losses = [train_step(net, opt, _Pools(), np.random.default_rng(1), cfg)["loss"] for _ in range(20)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_synthetic_training_run_writes_a_loadable_weights_folder(tmp_path: Path) -> None:
    from engine.assist.model import ClickCard, ClickViewConfig, clear_cache
    from engine.assist.spec import ClickNetSpec
    from engine.assist.train import ClickTrainConfig, train_click_model

    cfg = ClickTrainConfig(out=str(tmp_path / "run"), steps=2, batch_size=2, mix=(0.0, 0.0, 1.0), max_iters=1,
                           spec=ClickNetSpec(widths=(8, 8, 16), fine_channels=4),
                           view=ClickViewConfig(size=64, min_side_px=16), threads=1)
    seen: list[int] = []
    out = train_click_model(cfg, lambda done, total, msg="": seen.append(done))
    card = ClickCard.read(out)
    assert card.training["steps_run"] == 2 and card.training["end_state"] == "finished" and seen[-1] == 2
    assert (out / "log.jsonl").read_text().strip()
    clear_cache()
    img, _ = disk_image()
    assert start_session(img, method="click_model", weights=out).click(48, 56, True).shape == img.shape


# ----------------------------------------------------------------------------------------------- shipped model

SHIPPED = REPO / "weights" / "click-seg"


@pytest.mark.skipif(not (SHIPPED / "click.json").is_file(), reason="click-seg weights not shipped in this checkout")
def test_shipped_click_model_card_size_license_and_split() -> None:
    from engine.assist.model import ClickCard

    card = ClickCard.read(SHIPPED)
    assert sorted(p.name for p in SHIPPED.iterdir()) == ["click.json", "model.safetensors"]
    assert (SHIPPED / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    assert "CC-BY 4.0" in card.license["license"] and "Montgomery" in card.license["attribution"]
    assert card.training["command"] == "weights/reproduce.sh click-seg"
    assert "click-seg)" in (REPO / "weights" / "reproduce.sh").read_text()
    split = card.training["split"]
    assert set(split) == {"montgomery", "usgra"}
    for part in split.values():
        assert part["val_case_ids"] and not set(part["val_case_ids"]) & set(part["train_case_ids"])
    text = (SHIPPED / "click.json").read_text()
    assert "/work/" not in text and "/home/" not in text
    assert "click-seg" in (REPO / "weights" / "README.md").read_text()


@pytest.mark.skipif(not (SHIPPED / "click.json").is_file(), reason="click-seg weights not shipped in this checkout")
def test_shipped_click_model_segments_a_held_out_lung_in_a_few_clicks(shared_data: Path) -> None:
    from engine.assist.data import load_split

    sp = load_split("montgomery", shared_data)
    case = sp.held_out[0]
    image, _ = sp.dataset.load_image(case)
    gt = sp.dataset.load_mask(case) == 1
    s = start_session(np.asarray(image))
    assert s.method == "click_model"
    ious = run_protocol(gt, lambda c: s.click(c.row, c.col, c.positive), max_clicks=3)
    assert max(ious) > 0.85, ious
