"""Near-duplicate detection (engine.dedup): SSIM equality with scikit-image, fingerprints and
their cache, candidate search, categories, severity, label-noise ceiling, leakage, manifests.

Synthetic data is made in tmp dirs; the nerve phantom (tiny scale) is generated once per session;
the real Kaggle sample is used only through the ``shared_data`` fixture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from engine.curation import build_manifest
from engine.datasets import open_dataset, read_manifest, write_manifest
from engine.dedup import (
    ConflictConfig,
    ConflictReport,
    categorize,
    compute_fingerprints,
    find_conflicts,
    group_ceiling,
    knn_pairs,
    load_latest_report,
    mask_dice,
    search_candidates,
    severity,
    ssim_pairs,
)
from engine.dedup.fingerprint import read_gray, resize_gray
from engine.dedup.scoring import CroppedMask, UnionFind
from engine.errors import ConfigError, ReadError
from engine.store import ReviewStore

# ---------------------------------------------------------------------------------------------
# helpers


def texture(rng: np.random.Generator, h: int = 128, w: int = 160) -> np.ndarray:
    """A random textured uint8 (h,w) image: blocky structure + fine noise (distinct per call)."""
    coarse = np.kron(rng.random((h // 8, w // 8)), np.ones((8, 8)))
    img = 0.15 + 0.5 * coarse + 0.3 * rng.random((h, w))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def twin(img: np.ndarray, rng: np.random.Generator, shift: int = 0) -> np.ndarray:
    """A near copy: ±1 grey-level noise plus a brightness shift."""
    out = img.astype(np.int16) + rng.integers(-1, 2, img.shape) + shift
    return np.clip(out, 0, 255).astype(np.uint8)


def blob(h: int = 128, w: int = 160, r0: int = 40, c0: int = 50, size: int = 30) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[r0:r0 + size, c0:c0 + size] = 1
    return m


def write_paired(root: Path, items: list[tuple[str, np.ndarray, np.ndarray | None]]) -> Path:
    """Paired layout: root/images/<id>.png and root/masks/<id>.png (mask 0/255)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for cid, img, mask in items:
        Image.fromarray(img).save(root / "images" / f"{cid}.png")
        if mask is not None:
            Image.fromarray((mask > 0).astype(np.uint8) * 255).save(root / "masks" / f"{cid}.png")
    return root


def sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=1.0))


@pytest.fixture(scope="session")
def nerve_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.phantoms import generate_nerve_phantom

    out = tmp_path_factory.mktemp("phantom") / "nerve"
    generate_nerve_phantom(out, subjects=3, frames=12, seed=0)
    return out


@pytest.fixture()
def mixed_dataset(tmp_path: Path) -> Path:
    """Two subjects; planted twins of every category plus distractors."""
    rng = np.random.default_rng(7)
    items: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    base = [texture(rng) for _ in range(4)]
    empty = np.zeros((128, 160), np.uint8)
    # s1: conflict (big nerve vs empty) and agree
    items += [("s1_1", base[0], blob(size=40)), ("s1_2", twin(base[0], rng), empty)]
    items += [("s1_3", base[1], blob(size=20)), ("s1_4", twin(base[1], rng), blob(size=20, r0=42))]
    # s2: disagree (masks overlap on 5 of 20 rows: Dice 0.25) and agree_empty
    items += [("s2_1", base[2], blob(size=20)), ("s2_2", twin(base[2], rng), blob(size=20, r0=55))]
    items += [("s2_3", base[3], empty), ("s2_4", twin(base[3], rng), empty)]
    # distractors
    items += [(f"s{1 + i % 2}_{10 + i}", texture(rng), empty) for i in range(6)]
    return write_paired(tmp_path / "mixed", items)


# ---------------------------------------------------------------------------------------------
# SSIM, resizing, reading


def test_ssim_pairs_equals_skimage_default() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.random((12, 64, 80))
    imgs[1] = np.clip(imgs[0] + rng.normal(0, 0.01, (64, 80)), 0, 1)
    imgs[2] = 0.5  # constant images: the C1/C2 constants dominate
    imgs[3] = 0.52
    imgs[4] = np.clip(imgs[0] + 0.05, 0, 1)  # brightness shift
    i, j = np.triu_indices(12, k=1)
    ours = ssim_pairs(imgs, i, j, batch=7, max_images=5)  # small batches/chunks exercise the chunking
    ref = np.array([sk_ssim(imgs[a], imgs[b]) for a, b in zip(i, j)])
    assert np.max(np.abs(ours - ref)) < 1e-6
    assert np.array_equal(ours, ssim_pairs(imgs, j, i))  # exactly symmetric
    # float32 input (as in the thumbnail cache) is computed in float64: equal to skimage on float64 copies
    f32 = imgs.astype(np.float32)
    ref32 = np.array([sk_ssim(f32[a], f32[b]) for a, b in zip(i, j)])
    assert np.max(np.abs(ssim_pairs(f32, i, j) - ref32)) < 1e-6


def test_threaded_ssim_equals_one_thread_exactly() -> None:
    """The conflict scan's SSIM over several threads gives bit-identical values, in the caller's order."""
    from engine.dedup.ssim import ssim_pairs_threaded

    rng = np.random.default_rng(3)
    imgs = rng.random((300, 20, 24)).astype(np.float32)
    i, j = rng.integers(0, 300, 1500), rng.integers(0, 300, 1500)
    one = ssim_pairs(imgs, i, j)
    assert np.array_equal(ssim_pairs_threaded(imgs, i, j, workers=3), one)
    assert np.array_equal(ssim_pairs_threaded(imgs, i[:10], j[:10], workers=4), one[:10])  # too few to split


def test_resize_matches_pil_bilinear() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((420, 580)).astype(np.float32)
    ref = np.asarray(Image.fromarray(img).resize((80, 64), Image.BILINEAR))
    assert np.max(np.abs(resize_gray(img, (64, 80)) - ref)) < 1e-5
    small = rng.random((30, 40)).astype(np.float32)  # upscaling works too
    ref_up = np.asarray(Image.fromarray(small).resize((80, 64), Image.BILINEAR))
    assert np.max(np.abs(resize_gray(small, (64, 80)) - ref_up)) < 1e-5


def test_read_gray_fast_path_equals_engine_reader(tmp_path: Path) -> None:
    import tifffile

    from engine.io import read_image, to_chw_float

    rng = np.random.default_rng(2)
    grey = texture(rng)
    rgb = np.stack([texture(rng) for _ in range(3)], axis=-1)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    tifffile.imwrite(tmp_path / "t.tif", grey, compression="lzw", photometric="minisblack")
    tifffile.imwrite(tmp_path / "w.tif", grey, photometric="miniswhite")  # inverted: must use the engine reader
    for name in ("g.png", "c.png", "t.tif", "w.tif"):
        arr, meta = read_image(tmp_path / name)
        ref = to_chw_float(arr, meta).mean(axis=0)
        got = read_gray(tmp_path / name)
        got = got.astype(np.float32) / 255.0 if got.dtype == np.uint8 else got
        assert got.shape == ref.shape
        assert np.max(np.abs(got - ref)) < 1e-5, name
    # corrupt LZW data behind a valid header is an error (a bad file in a scan), not a garbage thumbnail
    data = bytearray((tmp_path / "t.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "t.tif") as tf:
        off, count = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
    data[off: off + count // 2] = rng.integers(0, 256, count // 2, dtype=np.uint8).tobytes()
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    with pytest.raises(ReadError, match="bad.tif"):
        read_gray(tmp_path / "bad.tif")


# ---------------------------------------------------------------------------------------------
# fingerprints and search


def test_fingerprint_ignores_brightness_and_separates_images(mixed_dataset: Path, workspace: Path) -> None:
    from engine.dedup.fingerprint import array_thumb, fingerprint_from_thumbs

    rng = np.random.default_rng(3)
    img = texture(rng).astype(np.float32) / 255 * 0.7
    other = texture(rng).astype(np.float32) / 255 * 0.7
    thumbs = np.stack([array_thumb(x, (64, 80)) for x in (img, img + 0.25, img * 1.3, other)])
    fp, mean, tex = fingerprint_from_thumbs(thumbs)
    assert np.allclose(np.linalg.norm(fp, axis=1), 1.0, atol=1e-5)
    sims = fp @ fp.T
    assert sims[0, 1] > 0.999 and sims[0, 2] > 0.999  # brightness shift / contrast change: same descriptor
    assert sims[0, 3] < 0.5
    assert mean[1] > mean[0] + 0.2


def test_knn_pairs_equals_brute_force() -> None:
    rng = np.random.default_rng(4)
    v = rng.normal(size=(300, 16)).astype(np.float32)
    v[1::3] = v[0::3] + 0.3 * rng.normal(size=v[1::3].shape)  # many close pairs
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    k, floor = 3, 0.5
    i, j, s, backend = knn_pairs(v, k, floor, backend="exact", block_mb=0.01)  # tiny blocks: many blocks
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    want = set()
    for r in range(len(v)):
        top = np.argsort(-sim[r], kind="stable")[:k]
        want |= {(min(r, c), max(r, c)) for c in top if sim[r, c] >= floor}
    got = set(zip(i.tolist(), j.tolist()))
    assert got == want and backend == "exact"
    assert all(a < b for a, b in got)
    assert np.allclose(s, sim[i, j], atol=1e-5)


@pytest.mark.parametrize("backend", ["faiss", "hnswlib"])
def test_optional_ann_backends_find_the_close_pairs(backend: str) -> None:
    pytest.importorskip(backend)
    rng = np.random.default_rng(5)
    v = rng.normal(size=(400, 32)).astype(np.float32)
    v[200:] = v[:200] + 0.05 * rng.normal(size=(200, 32))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    i, j, _, used = knn_pairs(v, 4, 0.9, backend=backend)
    assert used == backend
    assert {(a, a + 200) for a in range(200)} <= set(zip(i.tolist(), j.tolist()))


def test_unknown_backend_and_missing_backend_errors() -> None:
    v = np.eye(4, dtype=np.float32)
    with pytest.raises(ConfigError, match="exact"):
        knn_pairs(v, 2, 0.5, backend="annoy")
    for name in ("faiss", "hnswlib"):
        try:
            __import__(name)
        except ImportError:
            with pytest.raises(ConfigError, match="pip install"):
                knn_pairs(v, 2, 0.5, backend=name)


def test_textureless_images_are_paired_by_brightness() -> None:
    fp = np.zeros((4, 8), np.float32)  # no structure at all
    texture_ = np.zeros(4, np.float32)
    mean = np.array([0.5, 0.9, 0.51, 0.1], np.float32)
    cand = search_candidates(fp, [np.arange(4)], k=1, floor=0.5, texture=texture_, mean=mean)
    pairs = set(zip(cand.i.tolist(), cand.j.tolist()))
    assert (0, 2) in pairs and cand.n_flat == 4
    imgs = np.stack([np.full((64, 80), m) for m in mean])
    assert sk_ssim(imgs[0], imgs[2]) > 0.99  # SSIM agrees they are duplicates


def test_forked_fingerprint_workers_equal_threads(mixed_dataset: Path, workspace: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Large cold runs decode in forked workers writing into shared memory: the same thumbs,
    descriptors as the thread path, to the bit."""
    import engine.parallel as parallel

    ds = open_dataset(mixed_dataset)
    threads = compute_fingerprints(ds, use_cache=False)
    calls: list[int] = []
    real = parallel.fork_map
    monkeypatch.setattr(parallel, "PROCESS_MIN_ITEMS", 1)
    monkeypatch.setattr(parallel, "can_fork_workers", lambda: True)
    monkeypatch.setattr(parallel, "fork_map", lambda *a, **k: calls.append(1) or real(*a, **k))
    forked = compute_fingerprints(ds, use_cache=False)
    assert calls == [1] and forked.case_ids == threads.case_ids and forked.bad == threads.bad
    for name in ("thumbs", "fp", "mean", "texture", "phash"):
        assert np.array_equal(np.asarray(getattr(forked, name)), np.asarray(getattr(threads, name))), name


def test_forked_mask_workers_give_the_same_report(mixed_dataset: Path, workspace: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold scan reads the masks of verified pairs in forked workers: same pairs, categories,
    groups and ceiling as with threads, and the mask cache filled from the workers' entries."""
    import engine.dedup.conflicts as C
    import engine.parallel as parallel

    ds = open_dataset(mixed_dataset)
    threads = find_conflicts(ds, ConflictConfig(use_cache=False))
    used: list[int] = []
    real = parallel.fork_map
    monkeypatch.setattr(C, "MASK_PROCESS_MIN", 1)
    monkeypatch.setattr(parallel, "can_fork_workers", lambda: True)
    monkeypatch.setattr(parallel, "fork_map",
                        lambda fn, items, *a, **k: used.append(len(items)) or real(fn, items, *a, **k))
    forked = find_conflicts(ds, ConflictConfig())
    assert used, "the fork path did not run"
    assert forked.pairs == threads.pairs and forked.groups == threads.groups and forked.ceiling == threads.ceiling
    again = find_conflicts(ds, ConflictConfig())  # every mask now comes from the cache the workers filled
    assert again.stats["masks_cached"] == len({m for p in forked.pairs for m in (p["a"], p["b"])})


def test_fingerprint_cache_reuses_and_recomputes_only_changed_files(mixed_dataset: Path, workspace: Path) -> None:
    ds = open_dataset(mixed_dataset)
    n = len(ds)
    first = compute_fingerprints(ds)
    assert first.stats["misses"] == n and first.stats["cache_written"]
    again = compute_fingerprints(ds)
    assert again.stats["hits"] == n and again.stats["misses"] == 0 and not again.stats["cache_written"]
    assert np.array_equal(np.asarray(again.thumbs), np.asarray(first.thumbs))
    assert isinstance(again.thumbs, np.memmap)  # warm runs memory-map the thumbnails
    # change one image: only it is decoded again, and its thumb changes
    target = mixed_dataset / "images" / "s1_10.png"
    Image.fromarray(255 - np.asarray(Image.open(target))).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = compute_fingerprints(ds)
    assert third.stats["misses"] == 1 and third.stats["hits"] == n - 1
    row = third.case_ids.index("s1_10")
    assert not np.allclose(np.asarray(third.thumbs[row]), np.asarray(first.thumbs[row]))
    others = [r for r in range(n) if r != row]
    assert np.array_equal(np.asarray(third.thumbs)[others], np.asarray(first.thumbs)[others])


def test_candidate_search_is_cached_until_an_image_changes(mixed_dataset: Path, workspace: Path) -> None:
    ds = open_dataset(mixed_dataset)
    for scope in ("global", "group"):
        cfg = ConflictConfig(scope=scope)
        first = find_conflicts(ds, cfg)
        again = find_conflicts(ds, cfg)
        assert not first.stats["candidates_cached"] and again.stats["candidates_cached"]
        assert again.stats["n_candidates"] == first.stats["n_candidates"]
        assert [(p["a"], p["b"], p["ssim"]) for p in again.pairs] == [(p["a"], p["b"], p["ssim"]) for p in first.pairs]
        other = find_conflicts(ds, ConflictConfig(scope=scope, candidate_k=2))  # other options: searched again
        assert not other.stats["candidates_cached"]
    # an image's content changes: its fingerprint changes, so the search runs again and sees it
    target = mixed_dataset / "images" / "s1_2.png"
    Image.fromarray(255 - np.asarray(Image.open(target))).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = find_conflicts(open_dataset(mixed_dataset), ConflictConfig(scope="group"))
    assert not changed.stats["candidates_cached"]
    assert ("s1_1", "s1_2") not in {(p["a"], p["b"]) for p in changed.pairs}
    # without the cache nothing is read or written
    assert not find_conflicts(ds, ConflictConfig(use_cache=False)).stats["candidates_cached"]


# ---------------------------------------------------------------------------------------------
# categories, severity, ceiling


def test_categories_dice_and_severity_formula() -> None:
    a = blob(size=20)
    assert mask_dice(a, a) == 1.0
    assert mask_dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # Kaggle: both empty = 1
    assert mask_dice(a, np.zeros_like(a)) == 0.0
    half = blob(size=20, r0=50)  # overlaps 10 of 20 rows
    assert mask_dice(a, half) == pytest.approx(0.5)
    assert mask_dice(CroppedMask.from_mask(a), half) == pytest.approx(0.5)
    assert categorize(True, False, 0.0) == "conflict"
    assert categorize(False, True, 0.0) == "conflict"
    assert categorize(True, True, 0.3) == "disagree"
    assert categorize(True, True, 0.8) == "agree"
    assert categorize(False, False, 1.0) == "agree_empty"
    assert categorize(None, True, None) == "unlabelled"
    big_sure = severity("conflict", 0.0, 0.999, 0.99, 0.05, 0.02)
    small_borderline = severity("conflict", 0.0, 0.99, 0.99, 0.002, 0.02)
    agree = severity("agree", 0.9, 0.999, 0.99, 0.05, 0.02)
    assert big_sure == pytest.approx(1.0 * (0.5 + 0.5 * 0.9) * 1.0)
    assert small_borderline == pytest.approx(0.5 * (0.5 + 0.5 * 0.1))
    assert big_sure > small_borderline > agree > severity("agree_empty", 1.0, 1.0, 0.99, 0.0, 0.02) == 0.0


def test_group_ceiling_on_hand_made_groups() -> None:
    a = blob(size=20)
    e = np.zeros_like(a)
    assert group_ceiling([a, e])[:3] == (0.5, 2, "member:0")  # conflict pair: 1 + 0 either way
    assert group_ceiling([a, a])[0] == 1.0
    assert group_ceiling([e, e])[:3] == (1.0, 2, "empty")
    c, n, best, per = group_ceiling([a, a, e])
    assert (c, n) == (pytest.approx(2 / 3), 3) and per == [1.0, 1.0, 0.0]
    c, _, best, _ = group_ceiling([e, e, a])  # majority empty: predicting empty wins
    assert c == pytest.approx(2 / 3) and best == "empty"
    left = np.zeros((40, 40), np.uint8)
    left[10:30, 0:10] = 1
    right = np.zeros((40, 40), np.uint8)
    right[10:30, 10:20] = 1  # disjoint, equal size: the union (Dice 2/3 with each) beats either mask
    c, _, best, _ = group_ceiling([left, right])
    assert best == "union" and c == pytest.approx(2 / 3)
    # half overlap (Dice 0.5): either mask gives (1 + 0.5)/2 = 0.75, the union (600 px) 800/1000 = 0.8
    c, _, best, per = group_ceiling([a, blob(size=20, r0=50)])
    assert best == "union" and c == pytest.approx(0.8) and per == [pytest.approx(0.8)] * 2


def test_union_find_groups() -> None:
    uf = UnionFind(6)
    uf.union(0, 1)
    uf.union(3, 4)
    uf.union(1, 2)
    assert uf.groups() == [[0, 1, 2], [3, 4]]


# ---------------------------------------------------------------------------------------------
# end to end


def test_find_conflicts_on_hand_made_dataset(mixed_dataset: Path, workspace: Path) -> None:
    ds = open_dataset(mixed_dataset)
    rep = find_conflicts(ds, ConflictConfig())
    got = {(p["a"], p["b"]): p for p in rep.pairs}
    assert set(got) == {("s1_1", "s1_2"), ("s1_3", "s1_4"), ("s2_1", "s2_2"), ("s2_3", "s2_4")}
    assert got[("s1_1", "s1_2")]["category"] == "conflict"
    assert got[("s1_3", "s1_4")]["category"] == "agree"
    assert got[("s2_1", "s2_2")]["category"] == "disagree"
    assert got[("s2_3", "s2_4")]["category"] == "agree_empty"
    c = got[("s1_1", "s1_2")]
    assert (c["area_a"], c["area_b"], c["mask_dice"], c["area_ratio"]) == (1600, 0, 0.0, 0.0)
    assert got[("s1_3", "s1_4")]["mask_dice"] == pytest.approx(2 * 18 / 40)
    assert rep.pairs[0]["a"] == "s1_1"  # the conflict with the big mask is reviewed first
    thumbs = compute_fingerprints(ds)
    idx = thumbs.index()
    for p in rep.pairs:  # verified SSIM is scikit-image's
        assert p["ssim"] == pytest.approx(sk_ssim(thumbs.thumbs[idx[p["a"]]], thumbs.thumbs[idx[p["b"]]]), abs=1e-6)
        assert p["ssim"] >= 0.99 and p["a"] < p["b"]
    assert got[("s2_1", "s2_2")]["mask_dice"] == pytest.approx(0.25)
    # ceiling: the conflict pair 0.5 each; the disagreeing pair is best served by the union
    # (700 px: Dice 800/1100 = 8/11 with each 400-px mask); the agreeing pair too (440 px:
    # 800/840 = 20/21): boundary noise also costs a model. 14 labelled cases, 6 affected.
    assert rep.ceiling["n_affected"] == 6 and rep.ceiling["n_labelled"] == 14
    assert rep.ceiling["mean_affected"] == pytest.approx((1 + 16 / 11 + 40 / 21) / 6, abs=1e-6)
    assert rep.ceiling["dataset"] == pytest.approx((8 + 1 + 16 / 11 + 40 / 21) / 14, abs=1e-6)
    dis = next(g for g in rep.groups if g["members"] == ["s2_1", "s2_2"])
    assert dis["best_mask"] == "union" and dis["ceiling"] == pytest.approx(8 / 11, abs=1e-6)
    assert len(rep.groups) == 4 and rep.groups[0]["members"] == ["s1_1", "s1_2"]
    assert rep.leakage["n_groups_split"] == 0
    assert set(rep.timing) >= {"fingerprints", "search", "ssim", "masks", "ceiling", "leakage", "total"}
    # saved for the review page, and loadable
    latest = load_latest_report(ds)
    assert latest is not None and latest.pair_index().keys() == got.keys()
    assert ConflictReport.from_dict(rep.to_dict()).pairs == rep.pairs


def test_brightness_shifted_copy_is_found(tmp_path: Path, workspace: Path) -> None:
    rng = np.random.default_rng(11)
    img = (texture(rng).astype(np.float32) * 0.8).astype(np.uint8)
    shifted = twin(img, rng, shift=6)
    far = twin(img, rng, shift=90)  # big shift: SSIM drops, but it must still be a candidate
    items = [("s1_1", img, None), ("s1_2", shifted, None), ("s1_3", far, None)]
    items += [(f"s1_{4 + i}", texture(rng), None) for i in range(5)]
    ds = open_dataset(write_paired(tmp_path / "shift", items))
    fps = compute_fingerprints(ds)
    idx = fps.index()
    assert sk_ssim(fps.thumbs[idx["s1_1"]], fps.thumbs[idx["s1_2"]]) >= 0.99  # the premise of the test
    rep = find_conflicts(ds, ConflictConfig(scope="global"))  # one prefix: each image is its own group
    assert ("s1_1", "s1_2") in rep.pair_index()
    assert rep.pair_index()[("s1_1", "s1_2")]["category"] == "unlabelled"
    cand = search_candidates(fps.fp, [np.arange(len(fps.case_ids))], k=2, floor=0.69)
    pairs = {(fps.case_ids[a], fps.case_ids[b]) for a, b in zip(cand.i, cand.j)}
    assert {tuple(sorted(("s1_1", "s1_3"))), tuple(sorted(("s1_2", "s1_3")))} <= pairs


def test_planted_phantom_pairs_found_and_nothing_else(nerve_tiny: Path, workspace: Path) -> None:
    from engine.phantoms import load_planted_pairs

    planted = {tuple(sorted((p["a"], p["b"]))): p["kind"] for p in load_planted_pairs(nerve_tiny)}
    ds = open_dataset(nerve_tiny)
    for scope in ("group", "global"):
        rep = find_conflicts(ds, ConflictConfig(scope=scope))
        found = {(p["a"], p["b"]): p["category"] for p in rep.pairs}
        assert found == planted, scope  # every planted pair, the right category, nothing else
        assert all(p["a"] != p["b"] and p["a"] < p["b"] for p in rep.pairs)
        n_bad = sum(k in ("conflict", "disagree") for k in planted.values())
        assert rep.ceiling["n_affected"] == 2 * n_bad
    # every other pair of the phantom really is below the threshold (exhaustive check)
    fps = compute_fingerprints(ds)
    n = len(fps.case_ids)
    i, j = np.triu_indices(n, k=1)
    s = ssim_pairs(fps.thumbs, i, j)
    above = {tuple(sorted((fps.case_ids[a], fps.case_ids[b]))) for a, b in zip(i[s >= 0.99], j[s >= 0.99])}
    assert above == set(planted)


def test_kaggle_sample_near_duplicates_2_5_and_2_13(shared_data: Path, workspace: Path) -> None:
    ds = open_dataset(shared_data / "kaggle-nerve-sample")
    loose = find_conflicts(ds, ConflictConfig(ssim_threshold=0.95))
    pairs = loose.pair_index()
    assert ("2_13", "2_5") in pairs  # ids ordered as strings: "2_13" < "2_5"
    p = pairs[("2_13", "2_5")]
    assert 0.95 <= p["ssim"] < 0.99 and p["category"] == "agree_empty"
    assert any(g["members"] == ["2_13", "2_5"] for g in loose.groups)
    strict = find_conflicts(ds, ConflictConfig())
    assert ("2_13", "2_5") not in strict.pair_index()


def test_leakage_with_user_folds_and_global_scope(tmp_path: Path, workspace: Path) -> None:
    rng = np.random.default_rng(21)
    base = [texture(rng) for _ in range(6)]
    items = []
    for s in range(6):  # six subjects; subject 0 and 3 share a frame (a cross-subject duplicate)
        items.append((f"s{s}_1", base[s], blob() if s % 2 else np.zeros((128, 160), np.uint8)))
        items.append((f"s{s}_2", texture(rng), np.zeros((128, 160), np.uint8)))
    items.append(("s3_3", twin(base[0], rng), np.zeros((128, 160), np.uint8)))
    ds = open_dataset(write_paired(tmp_path / "leak", items))
    by_group = find_conflicts(ds, ConflictConfig(scope="group"))
    assert by_group.pairs == [] and by_group.leakage["n_groups_split"] == 0
    rep = find_conflicts(ds, ConflictConfig(scope="global", folds_k=3))
    assert [(p["a"], p["b"]) for p in rep.pairs] == [("s0_1", "s3_3")]
    assert rep.pairs[0]["subjects"] == ["s0", "s3"]
    folds = {c.case_id: (0 if c.group_id in ("s0", "s1") else 1) for c in ds.cases}
    user = find_conflicts(ds, ConflictConfig(scope="global"), folds=folds, folds_source="my folds")
    assert user.leakage["n_groups_split"] == 1
    assert user.leakage["groups"][0]["folds"] == [0, 1] and user.leakage["source"] == "my folds"
    # grouped k-fold: split iff the two subjects landed in different folds
    from engine.splits import grouped_kfold

    lab = [c for c in ds.cases if c.labelled]
    f = grouped_kfold([c.case_id for c in lab], [c.group_id for c in lab], [c.has_mask for c in lab], k=3, seed=0)
    assert rep.leakage["n_groups_split"] == int(f["s0_1"] != f["s3_3"])


def test_config_validation_and_round_trip() -> None:
    cfg = ConflictConfig(scope="global", ssim_threshold=0.95, ssim_size=(32, 40))
    assert ConflictConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="group"):
        ConflictConfig(scope="subject")
    with pytest.raises(ConfigError):
        ConflictConfig(ssim_size=(5, 5))
    with pytest.raises(ConfigError):
        ConflictConfig(ann="annoy")
    with pytest.raises(ReadError):
        ConflictReport.from_dict({"pairs": []})


# ---------------------------------------------------------------------------------------------
# cleaned manifests


def test_manifest_policies_and_decisions(mixed_dataset: Path, workspace: Path, tmp_path: Path) -> None:
    ds = open_dataset(mixed_dataset)
    rep = find_conflicts(ds, ConflictConfig())
    # no store, policy none: everything kept unchanged
    cases, dropped, info = build_manifest(ds, None, rep, "none")
    assert len(cases) == len(ds) and dropped == [] and info["n_conflicts_without_decision"] == 1
    # drop-empty: the empty twin of the conflict goes
    cases, dropped, info = build_manifest(ds, None, rep, "drop-empty")
    assert [d[0] for d in dropped] == ["s1_2"] and "policy drop-empty" in dropped[0][1]
    assert info["dropped_by"] == {"decision": 0, "proposal": 0, "policy": 1}
    with pytest.raises(ConfigError):
        build_manifest(ds, None, rep, "drop-all")

    store = ReviewStore.for_dataset(ds)
    store.record_decision("s1_1", "s1_2", "keep_both", "alice", "the nerve is visible in both")
    cases, dropped, info = build_manifest(ds, store, rep, "drop-empty")  # explicit decision overrides
    assert dropped == [] and info["n_policy_proposals_overridden"] == 1
    store.record_decision("s2_2", "s2_1", "keep_a", "bob")  # keep_a refers to s2_2 as given: drop s2_1
    store.record_decision("s1_3", "s1_4", "union", "bob")
    store.record_decision("s2_3", "s2_4", "drop_both", "bob")
    cases, dropped, info = build_manifest(ds, store, rep, "none")
    assert {d[0] for d in dropped} == {"s2_1", "s2_3", "s2_4"}
    by_id = {c.case_id: c for c in cases}
    u3, u4 = by_id["s1_3"], by_id["s1_4"]
    assert u3.mask.kind == "file" and u3.mask.path == u4.mask.path
    union = np.maximum(ds.load_mask("s1_3"), ds.load_mask("s1_4"))
    assert u3.mask_area == int(union.sum()) and u3.meta["mask_origin"] == "review:union"
    # a corrected mask version overrides the case's source; both_empty after it wins (latest action)
    fix = blob(size=12)
    store.save_mask_version("s1_2", fix, "carol", "nerve was missed")
    cases, dropped, info = build_manifest(ds, store, rep, "drop-empty")
    by_id = {c.case_id: c for c in cases}
    assert "s1_2" in by_id and by_id["s1_2"].mask_area == 144 and info["mask_overrides"]["corrected"] == 1
    store.record_decision("s1_1", "s1_2", "both_empty", "alice", force=True)
    cases, _, info = build_manifest(ds, store, rep, "none")
    by_id = {c.case_id: c for c in cases}
    assert by_id["s1_1"].mask.kind == "empty" and by_id["s1_2"].mask.kind == "empty"
    # the manifest round-trips through open_dataset and masks load from the new sources
    out = write_manifest(tmp_path / "clean.json", ds, cases, dropped, info)
    clean = open_dataset(out)
    assert len(clean) == len(cases) and clean.layout == "manifest"
    assert np.array_equal(clean.load_mask("s1_3"), union)
    assert not clean.load_mask("s1_1").any()
    store.close()
    assert json.loads(out.read_text())["info"]["policy"] == "none"


def test_manifest_drop_empty_without_report_raises(mixed_dataset: Path, workspace: Path) -> None:
    ds = open_dataset(mixed_dataset)  # fresh workspace: no conflicts report yet
    with pytest.raises(ConfigError, match="conflicts"):
        build_manifest(ds, None, None, "drop-empty")


def test_read_manifest_dataset_can_be_searched_again(mixed_dataset: Path, workspace: Path, tmp_path: Path) -> None:
    ds = open_dataset(mixed_dataset)
    rep = find_conflicts(ds, ConflictConfig())
    cases, dropped, info = build_manifest(ds, None, rep, "drop-empty")
    clean = read_manifest(write_manifest(tmp_path / "m.json", ds, cases, dropped, info))
    clean.workdir = None  # a manifest opened directly has no workspace folder: no caching
    again = find_conflicts(clean, ConflictConfig())
    assert all(p["category"] != "conflict" for p in again.pairs)
    assert again.ceiling["n_affected"] == 4  # the disagreeing and the agreeing pair are left
    assert {(p["a"], p["b"]) for p in again.pairs} == {("s1_3", "s1_4"), ("s2_1", "s2_2"), ("s2_3", "s2_4")}


def test_unreadable_image_is_reported_and_the_rest_still_works(tmp_path: Path, workspace: Path) -> None:
    rng = np.random.default_rng(31)
    img = texture(rng)
    items = [("s1_1", img, blob()), ("s1_2", twin(img, rng), np.zeros((128, 160), np.uint8)),
             ("s1_3", texture(rng), None), ("s2_1", texture(rng), None), ("s2_2", texture(rng), None)]
    root = write_paired(tmp_path / "bad", items)
    good = (root / "images" / "s1_3.png").read_bytes()
    (root / "images" / "s1_3.png").write_bytes(good[: len(good) // 3])  # valid header, truncated pixel data
    ds = open_dataset(root)
    rep = find_conflicts(ds, ConflictConfig())
    assert [b["case_id"] for b in rep.bad_files] == ["s1_3"] and "s1_3.png" in rep.bad_files[0]["reason"]
    assert [(p["a"], p["b"], p["category"]) for p in rep.pairs] == [("s1_1", "s1_2", "conflict")]
    assert rep.stats["n_images"] == len(ds) - 1


def test_tiny_datasets_have_nothing_to_compare(tmp_path: Path, workspace: Path) -> None:
    rng = np.random.default_rng(41)
    ds = open_dataset(write_paired(tmp_path / "one", [("a_1", texture(rng), blob())]))
    for scope in ("group", "global"):
        rep = find_conflicts(ds, ConflictConfig(scope=scope))
        assert rep.pairs == [] and rep.groups == [] and rep.ceiling["dataset"] == 1.0
        assert rep.ceiling["n_affected"] == 0 and rep.stats["n_candidates"] == 0


def test_running_on_a_subset_keeps_the_rest_of_the_cache(mixed_dataset: Path, workspace: Path) -> None:
    ds = open_dataset(mixed_dataset)
    full = compute_fingerprints(ds)
    part = ["s1_1", "s1_2", "s2_3"]
    sub = compute_fingerprints(ds.subset(part))
    assert sub.case_ids == part and sub.stats["misses"] == 0 and sub.stats["cache_rows"] == len(ds)
    again = compute_fingerprints(ds)
    assert again.stats["misses"] == 0  # nothing evicted
    idx = full.index()
    assert np.array_equal(np.asarray(sub.thumbs), np.asarray(full.thumbs)[[idx[c] for c in part]])
    assert np.array_equal(np.asarray(again.thumbs), np.asarray(full.thumbs))


def test_multiclass_dice_and_ceiling() -> None:
    a = np.zeros((20, 20), np.uint8)
    a[2:6, 2:6] = 1  # nerve
    a[10:14, 10:14] = 2  # vessel
    b = a.copy()
    b[10:14, 10:14] = 1  # the vessel labelled as nerve
    # class 1: |A1|=16, |B1|=32, overlap 16 → 2/3; class 2: only in a → 0; mean 1/3
    assert mask_dice(a, b) == pytest.approx((2 * 16 / 48 + 0.0) / 2)
    assert mask_dice(a, a) == 1.0
    c, n, best, per = group_ceiling([a, a, b])
    assert best == "member:0" and n == 3 and c == pytest.approx((1 + 1 + 1 / 3) / 3)


def test_corrected_masks_are_not_remapped_twice_in_a_manifest(tmp_path: Path, workspace: Path) -> None:
    """A paired dataset storing class ids {0, 2, 5} is remapped to {0, 1, 2} by the index; a
    correction saved in the store already uses {0, 1, 2} and must come back unchanged."""
    from PIL import Image

    from engine.curation import build_manifest
    from engine.datasets import open_dataset, write_manifest
    from engine.store import ReviewStore

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((16, 16), 100, np.uint8)).save(root / "images" / f"{name}.png")
        m = np.zeros((16, 16), np.uint8)
        m[2:6, 2:6], m[8:12, 8:12] = 2, 5
        Image.fromarray(m, mode="L").save(root / "masks" / f"{name}.png")
    ds = open_dataset(root)
    assert sorted(np.unique(ds.load_mask("a")).tolist()) == [0, 1, 2]
    corrected = np.zeros((16, 16), np.uint8)
    corrected[0:3, 0:3], corrected[10:14, 1:5] = 2, 1
    store = ReviewStore.for_dataset(ds)
    store.save_mask_version("a", corrected, "tester", "fix")
    cases, dropped, info = build_manifest(ds, store, None, "none")
    out = write_manifest(tmp_path / "clean.json", ds, cases, dropped, info)
    clean = open_dataset(out)
    assert np.array_equal(clean.load_mask("a"), corrected)
    assert np.array_equal(clean.load_mask("b"), ds.load_mask("b"))  # originals still remapped once
