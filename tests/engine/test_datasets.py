"""Layout detection and case indexing: the five real sample folders, phantoms, cache, manifests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.datasets import detect_layout, open_dataset, read_manifest, write_manifest
from engine.datasets.base import MaskSource
from engine.errors import LayoutError, MaskError, WorkbenchError
from tests.support import badinput as B


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return B.tiny_demo(tmp_path_factory)


# ---------------------------------------------------------------------------------------------
# the real samples


def test_kaggle_sample(shared_data: Path, ws: Path) -> None:
    root = shared_data / "kaggle-nerve-sample"
    assert detect_layout(root)[0].layout == "kaggle_uns"
    ds = open_dataset(root, workspace=ws)
    assert ds.layout == "kaggle_uns" and len(ds) == 23 and not ds.bad_files
    assert ds.labels == {0: "background", 1: "nerve"}
    ids = set(ds.case_ids)
    assert {f"2_{i}" for i in range(1, 20)} | {"5_36", "7_13", "8_85", "9_92"} == ids
    assert {c.group_id for c in ds.cases} == {"2", "5", "7", "8", "9"}
    assert all(c.case_id.split("_")[0] == c.group_id for c in ds.cases)
    assert sum(c.has_mask for c in ds.cases) == 6
    c = ds.case("2_13")
    assert (c.height, c.width) == (420, 580) and c.mask.kind == "file"
    m = ds.load_mask(c)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert ds.load_image_float(c).shape == (1, 420, 580)
    assert any("train_masks.csv" in n for n in ds.notes)  # CSV rows without images are reported


def test_siim_sample(shared_data: Path, ws: Path) -> None:
    import pydicom

    root = shared_data / "siim-sample"
    ds = open_dataset(root, workspace=ws)
    assert ds.layout == "siim" and len(ds) == 5 and not ds.bad_files
    assert sum(c.has_mask for c in ds.cases) == 2 and all(c.labelled for c in ds.cases)
    for c in ds.cases:
        hdr = pydicom.dcmread(c.image_path, stop_before_pixels=True)
        assert c.case_id == hdr.SOPInstanceUID == Path(c.image_path).stem
        assert c.group_id == c.meta["patient_key"] and c.group_id.startswith("pt-")
        assert c.mask.kind == "rle" and c.mask.convention == "siim"
        m = ds.load_mask(c)
        assert m.shape == (1024, 1024) and int(m.sum()) == c.mask_area
    assert Path(ds.options["rle_csv"]).name == "train-rle-sample.csv"
    s = ds.summary()
    assert s["dicom"]["modality"] == {"CR": 5}


def test_montgomery_sample(shared_data: Path, ws: Path) -> None:
    ds = open_dataset(shared_data / "montgomery-lung", workspace=ws)
    assert ds.layout == "paired" and len(ds) == 138 and not ds.bad_files
    assert ds.labels == {0: "background", 1: "foreground"}
    assert all(c.labelled and c.has_mask for c in ds.cases)
    assert any("anti-aliased" in n and "138" in n for n in ds.notes)
    c = ds.case("MCUCXR_0001_0")
    assert c.group_id == "MCUCXR_0001" and c.meta["mask_encoding"] == "antialiased"
    m = ds.load_mask(c)
    assert set(np.unique(m)) == {0, 1} and int(m.sum()) == c.mask_area


def test_usgra_sample(shared_data: Path, ws: Path) -> None:
    ds = open_dataset(shared_data / "usgra-nerve-vessel", workspace=ws, options={"label_names": ["nerve", "vessel"]})
    assert ds.layout == "paired" and len(ds) == 204 and not ds.bad_files
    assert ds.labels == {0: "background", 1: "nerve", 2: "vessel"} and ds.num_classes == 3
    classes = set()
    for c in ds.cases:
        classes |= set(c.meta["classes"])
    assert classes == {0, 1, 2}
    c = next(c for c in ds.cases if set(c.meta["classes"]) == {0, 1, 2})
    assert set(np.unique(ds.load_mask(c))) == {0, 1, 2}
    sizes = {(c.height, c.width) for c in ds.cases}
    assert len(sizes) == 3


def test_isbi_sample(shared_data: Path, ws: Path) -> None:
    ds = open_dataset(shared_data / "isbi2012-em", workspace=ws)
    assert ds.layout == "paired" and len(ds) == 60
    train = [c for c in ds.cases if c.split == "train"]
    test = [c for c in ds.cases if c.split == "test"]
    assert len(train) == 30 and all(c.labelled for c in train)
    assert len(test) == 30 and not any(c.labelled for c in test)
    assert "train/0" in ds and "test/0" in ds  # the same stem in two splits stays unique
    with pytest.raises(MaskError):
        ds.load_mask("test/0")
    s = ds.summary()
    assert s["n_labelled"] == 30 and s["n_unlabelled"] == 30


# ---------------------------------------------------------------------------------------------
# phantoms


def test_phantoms_index(demo: Path, ws: Path) -> None:
    nerve = open_dataset(demo / "nerve", workspace=ws)
    assert nerve.layout == "kaggle_uns" and len(nerve) == 36
    # every image has a mask file: the CSV's header is checked, its rows are not needed (nor "unused")
    assert any(n.startswith("train_masks.csv: rows not read") for n in nerve.notes), nerve.notes
    assert not any("not used" in n and "train_masks.csv" in n for n in nerve.notes), nerve.notes
    assert nerve.case("2_7").group_id == "2"
    ptx = open_dataset(demo / "ptx", workspace=ws)
    assert ptx.layout == "siim" and len(ptx) == 8
    assert all(len(c.case_id.split(".")) > 5 for c in ptx.cases)


# ---------------------------------------------------------------------------------------------
# cache


def _paired(root: Path, n: int = 5) -> Path:
    for i in range(n):
        B.png(root / "images" / f"pt{i // 2}_{i}.png", B.gradient(32, 32, seed=i))
        B.png(root / "masks" / f"pt{i // 2}_{i}.png", B.disk_mask(32, 32, 3 + i))
    return root


def test_cache_hits_and_single_file_invalidation(tmp_path: Path) -> None:
    root = _paired(tmp_path / "data")
    ws = tmp_path / "ws"
    first = open_dataset(root, workspace=ws)
    assert first.scan_stats["cache_misses"] == 5 and first.scan_stats["cache_hits"] == 0
    assert {c.group_id for c in first.cases} == {"pt0", "pt1", "pt2"}
    second = open_dataset(root, workspace=ws)
    assert second.scan_stats["cache_hits"] == 5 and second.scan_stats["cache_misses"] == 0
    assert [c.to_dict() for c in second.cases] == [c.to_dict() for c in first.cases]
    # a touched file (same content, new mtime) is re-read, alone
    p = root / "images" / "pt1_2.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = open_dataset(root, workspace=ws)
    assert third.scan_stats["cache_misses"] == 1 and third.scan_stats["cache_hits"] == 4
    # a modified mask: only its case is re-read and the new content shows
    B.png(root / "masks" / "pt0_1.png", B.disk_mask(32, 32, 10))
    mp = root / "masks" / "pt0_1.png"
    os.utime(mp, ns=(mp.stat().st_atime_ns, mp.stat().st_mtime_ns + 7_000_000_000))
    fourth = open_dataset(root, workspace=ws)
    assert fourth.scan_stats["cache_misses"] == 1
    assert fourth.case("pt0_1").mask_area == int((B.disk_mask(32, 32, 10) > 0).sum())
    assert fourth.case("pt0_1").mask_area != first.case("pt0_1").mask_area
    # use_cache=False reads everything
    assert open_dataset(root, workspace=ws, use_cache=False).scan_stats["cache_misses"] == 5


def test_cache_kaggle_phantom_touch(demo: Path, tmp_path: Path) -> None:
    root = tmp_path / "nerve"
    shutil.copytree(demo / "nerve", root)
    ws = tmp_path / "ws"
    assert open_dataset(root, workspace=ws).scan_stats["cache_misses"] == 36
    assert open_dataset(root, workspace=ws).scan_stats["cache_hits"] == 36
    m = root / "train" / "3_4_mask.tif"
    os.utime(m, ns=(m.stat().st_atime_ns, m.stat().st_mtime_ns + 3_000_000_000))
    ds = open_dataset(root, workspace=ws)
    assert ds.scan_stats["cache_misses"] == 1 and ds.scan_stats["cache_hits"] == 35


@pytest.mark.parametrize("layout", ["nerve", "ptx", "paired"])
def test_forked_workers_index_like_threads(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           layout: str) -> None:
    """Large cold scans index in forked worker processes: the same cases, bad files and cache
    entries as the thread path (the records are computed there and cached here)."""
    import engine.parallel as parallel

    root = demo / layout
    if layout == "paired":  # with a bad file: its record comes back from a worker too
        root = _paired(tmp_path / "paired", 7)
        (root / "images" / "broken.png").write_bytes(b"not a png")
    threads = open_dataset(root, workspace=tmp_path / "ws-threads")
    used: list[int] = []
    real = parallel.fork_map

    def spy(fn, items, report, message):  # the fork path must really run
        out = real(fn, items, report, message)
        used.append(len(items) if out is not None else -1)
        return out

    monkeypatch.setattr(parallel, "PROCESS_MIN_ITEMS", 1)
    monkeypatch.setattr(parallel, "can_fork_workers", lambda: True)
    monkeypatch.setattr(parallel, "fork_map", spy)
    forked = open_dataset(root, workspace=tmp_path / "ws-forked")
    assert used and used[0] == forked.scan_stats["cache_misses"] > 0
    assert [c.to_dict() for c in forked.cases] == [c.to_dict() for c in threads.cases]
    assert forked.bad_files == threads.bad_files
    again = open_dataset(root, workspace=tmp_path / "ws-forked")  # what the workers computed was cached
    assert again.scan_stats["cache_hits"] == len(forked.cases) + len(forked.bad_files) and len(used) == 1


def test_cache_siim_csv_change_rereads_labelled(demo: Path, tmp_path: Path) -> None:
    root = tmp_path / "ptx"
    shutil.copytree(demo / "ptx", root)
    ws = tmp_path / "ws"
    open_dataset(root, workspace=ws)
    csv = root / "train-rle.csv"
    text = csv.read_bytes().decode("utf-8-sig").split("\r\n")
    first_id = text[1].split(",")[0]
    kept = [text[0]] + [line for line in text[1:] if line and not line.startswith(first_id)] + [f"{first_id}, 1 10", ""]
    csv.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(kept).encode())
    ds = open_dataset(root, workspace=ws)
    assert ds.scan_stats["cache_misses"] == 8  # every labelled case depends on the CSV
    assert ds.case(first_id).mask_area == 10


# ---------------------------------------------------------------------------------------------
# layouts and manifests


def test_manifest_round_trip(tmp_path: Path) -> None:
    root = _paired(tmp_path / "data")
    ds = open_dataset(root, workspace=tmp_path / "ws")
    kept = [c for c in ds.cases if c.case_id != "pt0_0"]
    kept[0] = type(kept[0]).from_dict({**kept[0].to_dict(), "mask": MaskSource("empty").to_dict(),
                                       "has_mask": False, "mask_area": 0})
    p = write_manifest(tmp_path / "clean.json", ds, kept, dropped=[("pt0_0", "conflict")], info={"policy": "test"})
    m = open_dataset(p)
    assert m.layout == "manifest" and m.case_ids == [c.case_id for c in kept]
    assert m.dropped == [("pt0_0", "conflict")] and m.manifest_info == {"policy": "test"}
    assert m.load_mask(kept[0].case_id).sum() == 0  # the corrected (empty) mask
    np.testing.assert_array_equal(m.load_mask("pt1_2"), ds.load_mask("pt1_2"))
    (root / "images" / "pt2_4.png").unlink()
    again = read_manifest(p)
    assert "pt2_4" not in again and any("pt2_4" in b.reason for b in again.bad_files)


def test_suffix_mode_paired(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for i, sfx in enumerate(["_mask", "_Annotation", "_mask"]):
        B.png(root / f"scan{i}.png", B.gradient(24, 24, seed=i))
        B.png(root / f"scan{i}{sfx}.png", B.disk_mask(24, 24, 4))
    B.png(root / "lonely.png", B.gradient(24, 24, seed=9))
    det = detect_layout(root)[0]
    assert det.layout == "paired" and "suffixed" in det.reason
    ds = open_dataset(root, workspace=tmp_path / "ws")
    assert set(ds.case_ids) == {"scan0", "scan1", "scan2", "lonely"}
    assert [ds.case(f"scan{i}").mask.path.endswith(f"scan{i}{s}.png")
            for i, s in enumerate(["_mask", "_Annotation", "_mask"])] == [True] * 3
    assert not ds.case("lonely").labelled and ds.case("scan1").has_mask


def test_rgb_masks_share_one_colour_map(tmp_path: Path) -> None:
    root = tmp_path / "rgb"
    red, blue = (200, 30, 30), (20, 40, 220)
    a = np.zeros((16, 16, 3), np.uint8)
    a[2:6, 2:6] = blue
    b = np.zeros((16, 16, 3), np.uint8)
    b[8:12, 8:12] = red
    b[2:4, 2:4] = blue
    for name, m in (("a", a), ("b", b)):
        B.png(root / "images" / f"{name}.png", B.gradient(16, 16))
        B.png(root / "masks" / f"{name}.png", m)
    ds = open_dataset(root, workspace=tmp_path / "ws")
    ma, mb = ds.load_mask("a"), ds.load_mask("b")
    blue_id = int(ma[3, 3])
    assert blue_id == int(mb[2, 2]) != 0  # blue is the same class in both files
    assert int(mb[9, 9]) not in (0, blue_id)
    assert ds.num_classes == 3 and set(ds.options["colour_map"].values()) == {0, 1, 2}


def test_unknown_layout_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LayoutError) as exc:
        open_dataset(tmp_path, workspace=tmp_path / "ws")
    text = str(exc.value)
    assert "no known dataset layout" in text and "Kaggle UNS" in text and "SIIM" in text and "paired" in text
    with pytest.raises(LayoutError, match="not found"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(WorkbenchError, match="dataset layout"):
        open_dataset(tmp_path, layout="nonsense")


def test_bad_corpus_scans_continue(tmp_path: Path) -> None:
    corpus = B.make_bad_corpus(tmp_path / "bad")
    for key in ("paired", "kaggle", "siim"):
        ds = open_dataset(corpus[key], workspace=tmp_path / "ws", verify=True)
        assert len(ds) == corpus["good"][key], (key, ds.case_ids)
        bad_names = {Path(b.path).name for b in ds.bad_files}
        assert bad_names == set(corpus["bad"][key]), key
        for b in ds.bad_files:
            assert corpus["bad"][key][Path(b.path).name] in b.reason


def test_a_stray_dicom_among_pngs_is_not_a_siim_dataset(tmp_path: Path) -> None:
    import shutil

    from PIL import Image

    from engine.datasets import detect_layout, open_dataset
    from engine.phantoms import generate_ptx_phantom

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(folder / f"img{i}.png")
    generate_ptx_phantom(tmp_path / "ptx", n_images=4, size=64)
    shutil.copy(next((tmp_path / "ptx").rglob("*.dcm")), folder / "stray.dcm")
    assert detect_layout(folder)[0].layout == "paired"
    ds = open_dataset(folder)
    assert ds.layout == "paired" and len(ds) == 5 and not any(c.labelled for c in ds.cases)


def test_case_dict_round_trip_covers_every_field() -> None:
    from dataclasses import fields

    from engine.datasets.base import Case

    meta = {"classes": [0, 1], "dicom": {"age": 38}}
    case = Case("1_2", "1", "/d/train/1_2.tif", MaskSource("rle", "/d/train_masks.csv", ("5 3",), "kaggle"),
                True, True, 3, 420, 580, "train", meta)
    d = case.to_dict()
    assert set(d) == {f.name for f in fields(Case)}  # a new field cannot be forgotten in the cache
    assert Case.from_dict(d) == case
    d["meta"]["dicom"]["age"] = 99  # the dict is a copy: the case is not changed through it
    assert case.meta["dicom"]["age"] == 38
