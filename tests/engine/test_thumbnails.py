"""Disk-cached thumbnails (engine.thumbnails) on a tiny hand-made Kaggle-UNS-layout folder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine import thumbnails
from engine.datasets import open_dataset
from engine.errors import ConfigError, WorkbenchError
from engine.io import write_mask_png
from engine.thumbnails import (
    _shrink_mask,
    clear_thumbnails,
    prefetch_thumbnails,
    render_thumbnail,
    thumbnail_key,
    thumbnail_path,
    thumbnail_paths,
    thumbs_dir,
)

H, W = 60, 80


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((H, W)) * 60 + 40).astype(np.uint8)
    img[:, : W // 2] += 60  # a visible left/right structure
    return img


def _mask(box: tuple[int, int, int, int] | None) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    if box:
        y0, y1, x0, x1 = box
        m[y0:y1, x0:x1] = 255
    return m


@pytest.fixture()
def kaggle(tmp_path: Path, workspace: Path) -> Path:
    """train/{s}_{f}.tif + _mask.tif for 2 subjects × 3 frames (2 with masks each), test/1.tif unlabelled."""
    root = tmp_path / "nerve"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for s in (1, 2):
        for f in (1, 2, 3):
            tifffile.imwrite(root / "train" / f"{s}_{f}.tif", _image(10 * s + f))
            box = (10, 30, 20, 50) if f < 3 else None
            tifffile.imwrite(root / "train" / f"{s}_{f}_mask.tif", _mask(box))
    tifffile.imwrite(root / "test" / "1.tif", _image(99))
    return root


def test_thumbnail_written_in_workdir_with_expected_size(kaggle: Path) -> None:
    ds = open_dataset(kaggle)
    p = thumbnail_path(ds, "1_1", size=40, overlay="gt")
    assert p.parent == ds.workdir / "thumbs" == thumbs_dir(ds)
    assert p.suffix == ".jpg" and p.is_file()
    with Image.open(p) as im:
        assert im.format == "JPEG"
        assert im.size == (40, 30)  # longest side 40, aspect 80:60 kept
    # never enlarged
    with Image.open(thumbnail_path(ds, "1_1", size=400, overlay="none")) as im:
        assert im.size == (W, H)


def test_cache_hit_avoids_regeneration(kaggle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.thumbnails as th

    ds = open_dataset(kaggle)
    calls: list[str] = []
    real = th.render_thumbnail

    def counting(ds_, case, *a, **k):
        calls.append(ds_.case(case).case_id)
        return real(ds_, case, *a, **k)

    monkeypatch.setattr(th, "render_thumbnail", counting)
    p1 = thumbnail_path(ds, "2_2", 64, "gt")
    mtime = p1.stat().st_mtime_ns
    p2 = thumbnail_path(ds, "2_2", 64, "gt")
    assert p1 == p2 and calls == ["2_2"]
    assert p2.stat().st_mtime_ns == mtime
    # a different size or overlay is a different thumbnail
    p3 = thumbnail_path(ds, "2_2", 32, "gt")
    p4 = thumbnail_path(ds, "2_2", 64, "none")
    assert len({p1, p3, p4}) == 3 and calls == ["2_2"] * 3


def test_changed_mask_gives_new_thumbnail(kaggle: Path) -> None:
    ds = open_dataset(kaggle)
    old_key = thumbnail_key(ds, "1_3", 64, "gt")
    old = thumbnail_path(ds, "1_3", 64, "gt")
    none_key = thumbnail_key(ds, "1_3", 64, "none")
    # the empty mask of 1_3 becomes a box
    mask_file = kaggle / "train" / "1_3_mask.tif"
    tifffile.imwrite(mask_file, _mask((0, 30, 0, 40)))
    st = mask_file.stat()
    os.utime(mask_file, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    ds2 = open_dataset(kaggle)
    assert ds2.case("1_3").has_mask
    new_key = thumbnail_key(ds2, "1_3", 64, "gt")
    assert new_key != old_key
    assert thumbnail_key(ds2, "1_3", 64, "none") == none_key  # the image did not change
    new = thumbnail_path(ds2, "1_3", 64, "gt")
    assert new != old and new.is_file() and old.is_file()
    a = np.asarray(Image.open(old)).astype(int)
    b = np.asarray(Image.open(new)).astype(int)
    # the top-left quarter (now masked) changed colour; the bottom-right did not
    assert np.abs(a[:20, :30] - b[:20, :30]).mean() > 10
    assert np.abs(a[-8:, -8:] - b[-8:, -8:]).mean() < 4


def test_changed_image_gives_new_thumbnail(kaggle: Path) -> None:
    ds = open_dataset(kaggle)
    k1 = thumbnail_key(ds, "2_1", 64, "none")
    f = kaggle / "train" / "2_1.tif"
    tifffile.imwrite(f, 255 - _image(21))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert thumbnail_key(open_dataset(kaggle), "2_1", 64, "none") != k1


def test_gt_overlay_colours_only_the_mask(kaggle: Path) -> None:
    ds = open_dataset(kaggle)
    plain = render_thumbnail(ds, "1_1", 80, "none").astype(int)
    gt = render_thumbnail(ds, "1_1", 80, "gt").astype(int)
    assert plain.shape == gt.shape == (H, W, 3)
    inside = (slice(12, 28), slice(22, 48))
    assert np.abs(plain[inside] - gt[inside]).sum(axis=2).min() > 0  # every inner pixel tinted
    outside = np.ones((H, W), bool)
    outside[9:31, 19:51] = False
    assert np.array_equal(plain[outside], gt[outside])
    # the grey image is grey; the overlay is coloured (R, G, B differ)
    assert np.all(plain[..., 0] == plain[..., 1])
    assert np.any(gt[inside][..., 0] != gt[inside][..., 2])


def test_unlabelled_case_gt_overlay_is_the_image(kaggle: Path) -> None:
    ds = open_dataset(kaggle)
    unl = [c.case_id for c in ds.cases if not c.labelled]
    assert len(unl) == 1
    assert np.array_equal(render_thumbnail(ds, unl[0], 64, "gt"), render_thumbnail(ds, unl[0], 64, "none"))


def test_prediction_overlays(kaggle: Path, tmp_path: Path) -> None:
    ds = open_dataset(kaggle)
    with pytest.raises(ConfigError, match="pred_folder"):
        thumbnail_path(ds, "1_1", 64, "pred")
    ev = tmp_path / "eval"
    pred = np.zeros((H, W), np.uint8)
    pred[40:55, 60:75] = 1
    write_mask_png(ev / "pred" / "1_1.png", pred)
    p = render_thumbnail(ds, "1_1", 80, "pred", ev).astype(int)
    plain = render_thumbnail(ds, "1_1", 80, "none").astype(int)
    assert np.abs(p[42:53, 62:73] - plain[42:53, 62:73]).sum() > 0
    assert np.array_equal(p[12:28, 22:48], plain[12:28, 22:48])  # the GT box is not drawn
    both = render_thumbnail(ds, "1_1", 80, "both", ev)
    assert tuple(both[10, 30]) == (255, 255, 255)  # GT outline (top edge of the box) in white
    # a prediction file that changes gives a new key; a missing one is reported per case
    k = thumbnail_key(ds, "1_1", 80, "pred", ev)
    out = thumbnail_paths(ds, ["1_1", "1_2"], 80, "pred", ev)
    assert isinstance(out[0], Path) and isinstance(out[1], WorkbenchError)
    assert "prediction" in str(out[1])
    pred[0:5, 0:5] = 1
    write_mask_png(ev / "pred" / "1_1.png", pred)
    f = ev / "pred" / "1_1.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert thumbnail_key(ds, "1_1", 80, "pred", ev) != k


def test_thumbnail_paths_parallel_order_and_cache(kaggle: Path) -> None:
    ds = open_dataset(kaggle)
    ids = sorted(ds.case_ids)
    rendered: list[str] = []
    threads: set[str] = set()
    lock = threading.Lock()

    def render(ds_, case, *a):
        with lock:
            rendered.append(case)
            threads.add(threading.current_thread().name)
        return thumbnail_path(ds_, case, *a)

    seen: list[tuple[int, int]] = []
    out = thumbnail_paths(ds, ids, 48, "gt", workers=4, render=render, progress=lambda d, t, m="": seen.append((d, t)))
    assert sorted(rendered) == ids
    assert all(isinstance(p, Path) and p.is_file() for p in out)
    assert [p.name for p in out] == [f"{thumbnail_key(ds, i, 48, 'gt')}.jpg" for i in ids]  # order kept
    assert seen[-1] == (len(ids), len(ids))
    assert any(t.startswith("thumb") for t in threads)
    rendered.clear()
    again = thumbnail_paths(ds, ids, 48, "gt", render=render)
    assert rendered == [] and again == out
    assert clear_thumbnails(ds) == len(ids)
    assert not list(thumbs_dir(ds).glob("*.jpg"))


def test_prefetch_fills_the_cache_in_the_background_without_drawing_twice(
        kaggle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = open_dataset(kaggle)
    ids = sorted(ds.case_ids)
    gate = threading.Event()
    calls: list[str] = []
    real = thumbnails.thumbnail_path

    def slow(ds_, case, *a):
        calls.append(str(case))
        gate.wait(10)
        return real(ds_, case, *a)

    monkeypatch.setattr(thumbnails, "thumbnail_path", slow)
    assert prefetch_thumbnails(ds, ids[:3], 48, "gt") == 3  # returns at once while drawing is blocked
    assert prefetch_thumbnails(ds, ids[:3], 48, "gt") == 0  # already in flight: not queued twice
    assert not list(thumbs_dir(ds).glob("*.jpg"))
    gate.set()
    drawn: list[str] = []
    out = thumbnail_paths(ds, ids[:3], 48, "gt", render=lambda *a: drawn.append(a[1]) or real(*a))
    assert drawn == [] and all(isinstance(p, Path) and p.is_file() for p in out)  # waited for the prefetch
    assert sorted(calls) == ids[:3]
    assert prefetch_thumbnails(ds, ids[:3], 48, "gt") == 0  # cached now
    (kaggle / "train" / "2_3.tif").write_bytes(b"II*\x00garbage")  # a bad file is silently skipped
    monkeypatch.setattr(thumbnails, "thumbnail_path", real)
    prefetch_thumbnails(ds, ["2_3"], 48, "none")
    assert isinstance(thumbnail_paths(ds, ["2_3"], 48, "none")[0], WorkbenchError)


def test_unreadable_image_does_not_fail_the_page(kaggle: Path) -> None:
    ds = open_dataset(kaggle)
    (kaggle / "train" / "2_3.tif").write_bytes(b"II*\x00garbage")
    out = thumbnail_paths(ds, ["2_2", "2_3"], 48, "none")
    assert isinstance(out[0], Path)
    assert isinstance(out[1], WorkbenchError) and "2_3.tif" in str(out[1])


def test_bad_arguments(kaggle: Path) -> None:
    ds = open_dataset(kaggle)
    with pytest.raises(ConfigError, match="both, gt, none, pred"):
        thumbnail_path(ds, "1_1", 64, "outline")
    with pytest.raises(ConfigError, match="size"):
        thumbnail_path(ds, "1_1", 4, "gt")
    with pytest.raises(WorkbenchError, match="no case"):
        thumbnail_path(ds, "9_9", 64, "gt")


def test_shrink_mask_keeps_thin_structures() -> None:
    m = np.zeros((400, 400), np.uint8)
    m[200, 50:350] = 1   # 1-px line: plain nearest sampling at 1/10 would usually miss it
    m[10:12, 10:12] = 2  # tiny blob of another class
    s = _shrink_mask(m, (40, 40))
    assert s.shape == (40, 40) and s.dtype == np.uint8
    assert s[20, 5:35].all() and set(np.unique(s)) == {0, 1, 2}
    assert s[1, 1] == 2
    assert (s > 0).sum() < 40  # still thin: one row plus the blob
