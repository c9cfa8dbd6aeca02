"""Synthetic demo data: layouts, determinism, planted near-duplicates (SSIM), SIIM quirks, PHI."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from engine import phantoms
from engine.datasets import detect_layout, open_dataset
from engine.dedup.ssim import ssim_matrix
from tests.support import badinput as B


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return B.tiny_demo(tmp_path_factory)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != phantoms.DEMO_MARKER}


def _read_tif(p: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(p)


def test_tiny_is_deterministic(demo: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    phantoms.generate_demo(again, "tiny", seed=0)
    h1, h2 = _hashes(demo), _hashes(again)
    assert len(h1) == 3 * 12 * 2 + 3 + 8 + 2  # TIFFs + csv/json/readme + DICOMs + csv/readme
    assert h1 == h2
    other = phantoms.generate_nerve_phantom(tmp_path / "seed1", subjects=1, frames=4, seed=1)
    assert other["n_images"] == 4
    assert _hashes(tmp_path / "seed1")["train/1_1.tif"] != h1["nerve/train/1_1.tif"]


def test_layouts_detected_and_indexed(demo: Path, tmp_path: Path) -> None:
    assert detect_layout(demo / "nerve")[0].layout == "kaggle_uns"
    assert detect_layout(demo / "ptx")[0].layout == "siim"
    nerve = open_dataset(demo / "nerve", workspace=tmp_path / "ws")
    cfg = phantoms.SCALES["tiny"]
    assert len(nerve) == cfg["subjects"] * cfg["frames"] and not nerve.bad_files
    assert {c.group_id for c in nerve.cases} == {"1", "2", "3"}
    frac = sum(c.has_mask for c in nerve.cases) / len(nerve)
    assert 0.4 <= frac <= 0.6, frac
    ptx = open_dataset(demo / "ptx", workspace=tmp_path / "ws")
    assert len(ptx) == cfg["n_images"] and not ptx.bad_files
    assert sum(c.has_mask for c in ptx.cases) == max(2, round(0.25 * cfg["n_images"]))
    assert all(c.labelled for c in ptx.cases)
    assert len({c.group_id for c in ptx.cases}) < len(ptx)  # some patients have two studies


def test_nerve_files_match_kaggle_conventions(demo: Path) -> None:
    import tifffile

    from engine.rle import decode, read_kaggle_uns_csv

    root = demo / "nerve"
    rows, stats = read_kaggle_uns_csv(root / "train_masks.csv")
    assert (root / "train_masks.csv").read_text().startswith("subject,img,pixels\n")
    assert len(rows) == 36 and stats.n_duplicates == 0
    for cid in ("1_1", "2_5", "3_12"):
        with tifffile.TiffFile(root / "train" / f"{cid}.tif") as tf:
            page = tf.pages[0]
            assert page.compression == tifffile.COMPRESSION.LZW and page.shape == (420, 580)
            assert page.dtype == np.uint8
    n_nonempty = 0
    for cid, rle in rows.items():
        m = _read_tif(root / "train" / f"{cid}_mask.tif")
        assert m.shape == (420, 580) and set(np.unique(m)) <= {0, 255}
        np.testing.assert_array_equal(decode(rle, (420, 580), "kaggle"), m // 255)
        n_nonempty += bool(m.any())
    assert 0.4 <= n_nonempty / 36 <= 0.6
    text = (root / phantoms.README_NAME).read_text()
    assert "SYNTHETIC" in text and "NOT FROM ANY PATIENT" in text
    img = _read_tif(root / "train" / "1_1.tif")
    assert 60 < img.mean() < 170 and img.std() > 20  # a textured picture, not a flat field


def test_planted_pairs_kinds_and_masks(demo: Path) -> None:
    root = demo / "nerve"
    doc = json.loads((root / phantoms.PAIRS_NAME).read_text())
    assert doc["synthetic"] is True and doc["ssim_size"] == [64, 80]
    pairs = phantoms.load_planted_pairs(root)
    assert pairs == doc["pairs"]
    assert {p["kind"] for p in pairs} == set(phantoms.PAIR_KINDS)
    assert sum(p["kind"] == "conflict" for p in pairs) == 3  # one per tiny subject
    ids = [c for p in pairs for c in (p["a"], p["b"])]
    assert len(ids) == len(set(ids))  # every frame is in at most one pair
    for p in pairs:
        assert p["a"].split("_")[0] == p["b"].split("_")[0]  # same subject
        ma = _read_tif(root / "train" / f"{p['a']}_mask.tif") > 0
        mb = _read_tif(root / "train" / f"{p['b']}_mask.tif") > 0
        assert (p["a_has_mask"], p["b_has_mask"]) == (ma.any(), mb.any())
        if p["kind"] == "conflict":
            assert ma.any() != mb.any()
        elif p["kind"] == "agree":
            assert ma.any() and np.array_equal(ma, mb)
        elif p["kind"] == "agree_empty":
            assert not ma.any() and not mb.any()
        else:
            dice = 2 * (ma & mb).sum() / (ma.sum() + mb.sum())
            assert ma.any() and mb.any() and dice < 0.5
        ia = _read_tif(root / "train" / f"{p['a']}.tif").astype(int)
        ib = _read_tif(root / "train" / f"{p['b']}.tif").astype(int)
        diff = ib - ia
        assert 0 < np.abs(diff).max() <= 6 and abs(np.median(diff)) <= 3  # noise ±2 + a small shift


def test_planted_pairs_ssim_property(demo: Path) -> None:
    """At 64×80 (skimage SSIM, window 7, data_range 1): planted ≥ 0.995, every other pair < 0.97."""
    import cv2
    from skimage.metrics import structural_similarity

    root = demo / "nerve"
    ids = sorted(p.stem for p in (root / "train").glob("*.tif") if not p.stem.endswith("_mask"))
    thumbs = {c: cv2.resize(_read_tif(root / "train" / f"{c}.tif"), (80, 64), interpolation=cv2.INTER_AREA)
              .astype(np.float64) / 255.0 for c in ids}
    planted = {frozenset((p["a"], p["b"])) for p in phantoms.load_planted_pairs(root)}
    lo_planted, hi_same, hi_cross = 1.0, -1.0, -1.0
    for a, b in itertools.combinations(ids, 2):
        s = structural_similarity(thumbs[a], thumbs[b], data_range=1.0)
        if frozenset((a, b)) in planted:
            lo_planted = min(lo_planted, s)
        elif a.split("_")[0] == b.split("_")[0]:
            hi_same = max(hi_same, s)
        else:
            hi_cross = max(hi_cross, s)
    assert lo_planted >= 0.995
    assert hi_same < 0.97 and hi_cross < 0.97
    # exactly the planted pairs survive a 0.99 threshold; the engine's fast SSIM agrees with skimage
    S = ssim_matrix(np.stack([thumbs[c] for c in ids]))
    found = {frozenset((ids[i], ids[j])) for i, j in zip(*np.nonzero(np.triu(S, 1) >= 0.99))}
    assert found == planted
    assert S[0, 1] == pytest.approx(structural_similarity(thumbs[ids[0]], thumbs[ids[1]], data_range=1.0), abs=1e-9)
    report = phantoms.verify_planted_pairs(root)
    assert report["ok"] and report["min_planted"] == pytest.approx(lo_planted, abs=1e-9)


def test_ptx_csv_quirks(demo: Path) -> None:
    from engine.rle import read_siim_csv

    raw = (demo / "ptx" / "train-rle.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfImageId, EncodedPixels\r\n")
    lines = raw[3:].decode().split("\r\n")[1:-1]
    assert all(line.count(",") == 1 for line in lines) and b"\n" not in raw.replace(b"\r\n", b"")
    values = [line.split(",", 1)[1] for line in lines]
    assert all(v.startswith(" ") for v in values)
    assert " -1" in values
    assert len(lines) > len(set(lines))  # exact duplicate rows
    rows, stats = read_siim_csv(demo / "ptx" / "train-rle.csv")
    assert stats.n_duplicates == len(lines) - len(set(lines))
    assert max(len(v) for v in rows.values()) >= 2  # several regions for one image
    assert len(rows) == phantoms.SCALES["tiny"]["n_images"]


def test_ptx_dicoms_variants_and_phi(demo: Path, tmp_path: Path) -> None:
    import pydicom

    from engine.__main__ import main
    from engine.io import read_image

    paths = sorted((demo / "ptx" / "dicom-images-train").rglob("*.dcm"))
    assert all(len(p.relative_to(demo / "ptx" / "dicom-images-train").parts) == 3 for p in paths)
    seen_ts, photometric, bits, ages = set(), set(), set(), set()
    for p in paths:
        ds = pydicom.dcmread(p)
        assert p.stem == ds.SOPInstanceUID and p.parent.name == ds.SeriesInstanceUID
        assert p.parent.parent.name == ds.StudyInstanceUID
        assert ds.Modality == "CR" and ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP")
        assert str(ds.PatientName).startswith("SYNTHETIC^PHANTOM^")
        assert ds.InstitutionName == "Synthetic General Hospital" and ds.PatientID and ds.PatientBirthDate
        seen_ts.add(str(ds.file_meta.TransferSyntaxUID))
        photometric.add(ds.PhotometricInterpretation)
        bits.add(int(ds.BitsStored))
        ages.add(str(ds.PatientAge))
        img, meta = read_image(p)
        assert img.shape == (256, 256) and img.dtype == np.float32
        # anatomy the right way round whatever the encoding: spine brighter than the lung fields
        spine = img[80:130, 124:132].mean()
        lungs = img[90:120, 60:80].mean() + img[90:120, 176:196].mean()
        assert spine > lungs / 2 + 0.1, (p.name, meta.get("photometric"), spine, lungs)
    assert {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"} <= seen_ts
    if phantoms._j2k_available():
        assert "1.2.840.10008.1.2.4.90" in seen_ts
    assert photometric == {"MONOCHROME1", "MONOCHROME2"} and bits == {8, 12}
    assert "413" in ages and any(a.endswith("Y") for a in ages) and any(a.isdigit() and a != "413" for a in ages)
    # PHI is in the files but never in `info --json`
    out = tmp_path / "info.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["--workspace", str(tmp_path / "ws"), "info", str(demo / "ptx"), "--json", str(out)]) == 0
    text = out.read_text()
    for s in ("SYNTHETIC^PHANTOM", "Synthetic General Hospital", "SYNTHETIC^REFERRER", "PHX", "SYNACC"):
        assert s not in text
        assert any(s.encode() in p.read_bytes() for p in paths)
    summary = json.loads(text)
    assert summary["dicom"]["impossible_ages"] == ["413"]


def test_staging_never_clobbers_foreign_folders(tmp_path: Path) -> None:
    from engine.errors import WorkbenchError

    (tmp_path / "user" / "keep.txt").parent.mkdir()
    (tmp_path / "user" / "keep.txt").write_text("precious")
    with pytest.raises(WorkbenchError, match="not a phantom"):
        phantoms.generate_nerve_phantom(tmp_path / "user", subjects=1, frames=4)
    assert (tmp_path / "user" / "keep.txt").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    with pytest.raises(Exception):
        phantoms.generate_demo(tmp_path / "d", "huge")
    assert not phantoms.demo_is_complete(tmp_path / "d")
