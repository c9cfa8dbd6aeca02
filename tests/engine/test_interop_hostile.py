"""Validation rules of the exchange-format importers (COCO, NIfTI, DICOM-SEG), the NIfTI affine,
side-file confinement, and export failures (read-only, full disk, mount point, killed exports)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from engine.errors import LayoutError, MaskError, ReadError, WorkbenchError

M = np.zeros((16, 24), np.uint8)
M[2:7, 3:15] = 1
M[9:14, 5:9] = 2


def _nii(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


# ------------------------------------------------------------------------------------------ COCO


@pytest.mark.parametrize("poly,words", [
    ([3, 2, 12, float("nan"), 12, 10], "NaN"), ([3, 2, 12, float("inf"), 12, 10], "infinite"),
    ([3, 2, 1e7, 2, 12, 10], "outside"), ([3, 2, 12, 2, 12, 10, 3], "even number"), ([3, 2, 12, 2], "even number"),
    ([3, 2, "x", 2, 12, 10], "not a number")])
def test_coco_polygons_are_validated_before_rasterising(poly: list, words: str) -> None:
    from engine.interop.coco import annotation_mask

    with pytest.raises(MaskError, match=words) as err:
        annotation_mask({"segmentation": [poly]}, 16, 16, where="a.json image 1")
    assert "a.json image 1" in str(err.value) and err.value.hint


@pytest.mark.parametrize("counts,words", [([10, 20, 30], "sum to"), ([100.5, 155.5], "non-negative integer"),
                                          ([-4, 260], "non-negative integer"), ("~~~", "damaged"),
                                          ("0", "sum to"), ({"a": 1}, "not a list")])
def test_coco_rle_counts_must_cover_the_image_exactly(counts: object, words: str) -> None:
    from engine.interop.coco import annotation_mask

    with pytest.raises(MaskError, match=words):
        annotation_mask({"segmentation": {"size": [16, 16], "counts": counts}}, 16, 16, where="a.json")


def test_coco_compressed_rle_round_trip_and_python_decoder() -> None:
    from engine.interop.coco import annotation_mask, encode_class, rle_counts_from_string

    m = np.zeros((16, 24), bool)
    m[3:9, 2:20] = True
    rle = encode_class(m)
    assert sum(rle_counts_from_string(rle["counts"])) == 16 * 24
    assert np.array_equal(annotation_mask({"segmentation": rle}, 16, 24), m)
    runs = [0, 5, 16 * 24 - 5]
    assert annotation_mask({"segmentation": {"size": [16, 24], "counts": runs}}, 16, 24).sum() == 5


def test_coco_ids_categories_and_depth(tmp_path: Path) -> None:
    from engine.interop.coco import MAX_CATEGORIES, category_classes, image_label_map, int_field, read_coco

    with pytest.raises(LayoutError, match="not an integer"):
        int_field("1", "image id", "a.json")
    with pytest.raises(LayoutError, match="not an integer"):
        int_field(True, "image id", "a.json")
    with pytest.raises(LayoutError, match="at most 255"):
        category_classes({"categories": [{"id": i} for i in range(MAX_CATEGORIES + 1)]}, "a.json")
    with pytest.raises(LayoutError, match="listed twice"):
        category_classes({"categories": [{"id": 1}, {"id": 1}]}, "a.json")
    with pytest.raises(MaskError, match="unknown category_id"):
        image_label_map([{"category_id": "1", "segmentation": []}], 4, 4, {1: 1})
    deep = tmp_path / "deep.json"
    deep.write_text('{"images": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(LayoutError, match="nested too deeply") as err:
        read_coco(deep)
    assert "deep.json" in str(err.value)


# ------------------------------------------------------------------------------------------ NIfTI


def test_nifti_affine_rotated_and_flipped_import_like_the_canonical_one(tmp_path: Path) -> None:
    from engine.interop.nifti import read_nifti_mask, write_nifti_mask

    canon = read_nifti_mask(write_nifti_mask(tmp_path / "itk.nii.gz", M), M.shape)
    assert np.array_equal(canon, M)
    # identity (RAS): both in-plane axes run the other way
    ras = _nii(tmp_path / "ras.nii.gz", M[::-1, ::-1].T[:, :, None].copy(), np.eye(4))
    assert np.array_equal(read_nifti_mask(ras, M.shape), M)
    # stored (H,W,1): first axis = rows (posterior), second = columns (left)
    rot = np.array([[0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    hw = _nii(tmp_path / "hw.nii.gz", M[:, :, None].copy(), rot)
    assert np.array_equal(read_nifti_mask(hw, M.shape), M)
    # a square mask stored (H,W,1) with an affine that says so is not transposed
    sq = np.zeros((16, 16), np.uint8)
    sq[1:4, 2:14] = 1
    assert np.array_equal(read_nifti_mask(_nii(tmp_path / "sq.nii.gz", sq[:, :, None].copy(), rot), sq.shape), sq)
    # spacing does not matter, only axis directions
    scaled = _nii(tmp_path / "scaled.nii.gz", M.T[:, :, None].copy(), np.diag([-0.3, -0.7, 2.0, 1.0]))
    assert np.array_equal(read_nifti_mask(scaled, M.shape), M)


@pytest.mark.parametrize("matrix", [[[-1, 0.3, 0], [0, -1, 0], [0, 0, 1]],
                                    [[-np.cos(0.3), np.sin(0.3), 0], [-np.sin(0.3), -np.cos(0.3), 0], [0, 0, 1]]])
def test_nifti_oblique_or_sheared_affine_is_refused(tmp_path: Path, matrix: list) -> None:
    from engine.interop.nifti import read_nifti_mask

    aff = np.eye(4)
    aff[:3, :3] = matrix
    p = _nii(tmp_path / "obl.nii.gz", M.T[:, :, None].copy(), aff)
    with pytest.raises(MaskError, match="oblique") as err:
        read_nifti_mask(p, M.shape)
    assert "obl.nii.gz" in str(err.value) and err.value.hint


def test_nifti_rgb_vector_and_huge_headers_refused_before_decoding(tmp_path: Path) -> None:
    from engine.interop.nifti import read_nifti_mask

    rgb = np.zeros((24, 16, 1), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    with pytest.raises(MaskError, match="RGB"):
        read_nifti_mask(_nii(tmp_path / "rgb.nii.gz", rgb, np.eye(4)))
    vec = np.zeros((24, 16, 1, 1, 3), np.uint8)
    with pytest.raises(MaskError, match="vector"):
        read_nifti_mask(_nii(tmp_path / "vec.nii.gz", vec, np.eye(4)))
    from engine.io.limits import set_max_pixels

    set_max_pixels(100)
    try:
        with pytest.raises(ReadError, match="limit"):
            read_nifti_mask(_nii(tmp_path / "big.nii.gz", np.zeros((24, 16, 1), np.uint8), np.eye(4)))
    finally:
        set_max_pixels(None)


def test_nifti_binary_255_and_labels_json_keys(tmp_path: Path) -> None:
    from PIL import Image

    from engine.datasets import open_dataset
    from engine.interop.nifti import write_nifti_mask
    from engine.workspace import Workspace

    root = tmp_path / "d"
    root.mkdir()
    Image.fromarray(np.full((16, 24), 90, np.uint8)).save(root / "img.png")
    write_nifti_mask(root / "img.nii.gz", (M > 0).astype(np.uint8) * 255)
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"))
    assert np.array_equal(ds.load_mask("img"), (M > 0).astype(np.uint8)) and not ds.bad_files
    (root / "labels.json").write_text('{"-1": "background", "255": "nerve"}')
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws2"))
    assert any(b.path.endswith("labels.json") and "not a class id" in b.reason for b in ds.bad_files)
    assert np.array_equal(ds.load_mask("img"), (M > 0).astype(np.uint8))
    (root / "labels.json").write_text('{"0": "background", "255": "nerve"}')
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws3"))
    assert ds.labels == {0: "background", 1: "nerve"} and ds.load_mask("img").max() == 1


# ------------------------------------------------------------------------------------------ DICOM-SEG


def test_dicom_seg_segment_numbers_are_checked(tmp_path: Path) -> None:
    from engine.interop.dicom_seg import read_dicom_seg
    from tests.support.hostile import _seg_pair, _set_frame_segment

    m = np.zeros((16, 16), np.uint8)
    m[3:9, 4:12] = 1
    ok = read_dicom_seg(_seg_pair(tmp_path / "ok", m) / "seg" / "seg.dcm")
    assert np.array_equal(ok.label_map(ok.source_uids[0]), m)

    def zero(ds) -> None:
        ds.SegmentSequence[0].SegmentNumber = 0
    for name, edit, words in [("zero", zero, "SegmentNumber 0"),
                              ("undef", lambda ds: _set_frame_segment(ds, 7), "does not define"),
                              ("nonum", lambda ds: delattr(ds.SegmentSequence[0], "SegmentNumber"),
                               "no SegmentNumber")]:
        with pytest.raises(MaskError, match=words) as err:
            read_dicom_seg(_seg_pair(tmp_path / name, m, edit) / "seg" / "seg.dcm")
        assert "seg.dcm" in str(err.value) and err.value.hint


def test_dicom_seg_header_checked_before_decoding(tmp_path: Path) -> None:
    from engine.interop.dicom_seg import is_dicom_seg, read_dicom_seg
    from tests.support.hostile import _seg_pair

    def huge(ds) -> None:
        ds.Rows = ds.Columns = 12000
        ds.PixelData = bytes(12000 * 12000 // 8)
    p = _seg_pair(tmp_path / "h", np.ones((16, 16), np.uint8), huge, deflate=True) / "seg" / "seg.dcm"
    assert is_dicom_seg(p) and p.stat().st_size < 2_000_000
    with pytest.raises(ReadError, match="limit"):
        read_dicom_seg(p)


def test_dicom_seg_writer_drops_institution_from_contributing_equipment(tmp_path: Path) -> None:
    import pydicom

    from engine.interop.dicom_seg import write_dicom_seg
    from tests.support import badinput as B

    extra = {"PatientID": "p", "PatientName": "p", "PatientBirthDate": "", "PatientSex": "", "StudyDate": "20240101",
             "StudyTime": "120000", "AccessionNumber": "", "ReferringPhysicianName": "", "StudyID": "1",
             "SeriesNumber": 1, "InstanceNumber": 1, "Manufacturer": "ACME", "InstitutionName": "St Example",
             "StationName": "XR-7", "DeviceSerialNumber": "SN123"}
    src = B.dicom(tmp_path / "src.dcm", np.zeros((8, 8), np.uint16), sop="1.2.826.99.5", extra=extra)
    info = write_dicom_seg(src, np.eye(8, dtype=np.uint8), {0: "background", 1: "nerve"}, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(info["path"])
    assert "InstitutionName" not in seg
    for item in seg.get("ContributingEquipmentSequence", []):
        assert not {"InstitutionName", "StationName", "DeviceSerialNumber"} & set(item.dir())
    assert "St Example" not in Path(info["path"]).read_bytes().decode("latin-1")


# ------------------------------------------------------------------------------------------ confinement


def test_side_file_roots_outside_the_dataset_are_refused(tmp_path: Path) -> None:
    import json

    from engine.datasets import open_dataset
    from engine.workspace import Workspace
    from tests.support import badinput as B

    outside = tmp_path / "outside"
    B.png(outside / "secret.png", B.gradient(16, 16))
    d = tmp_path / "coco"
    d.mkdir()
    doc = {"info": {"segwb_image_root": str(outside)}, "images": [{"id": 1, "file_name": "secret.png"}],
           "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (d / "annotations.json").write_text(json.dumps(doc))
    (d / "export.json").write_text(json.dumps({"format": "segwb-corrected-export", "source": {"root": "/"}}))
    ds = open_dataset(d, workspace=Workspace(tmp_path / "ws"))
    assert len(ds) == 0
    assert any("segwb_image_root" in b.reason and "outside" in b.reason for b in ds.bad_files)
    assert any(b.path.endswith("export.json") and "outside" in b.reason for b in ds.bad_files)
    # the user's own choice (--image-root) is honoured
    ok = open_dataset(d, workspace=Workspace(tmp_path / "ws2"), options={"image_root": str(outside)})
    assert len(ok) == 1 and Path(ok.cases[0].image_path).parent == outside.resolve()


# ------------------------------------------------------------------------------------------ export failures


@pytest.fixture
def small_ds(tmp_path: Path):
    from engine.datasets import open_dataset
    from engine.workspace import Workspace
    from tests.support import badinput as B

    root = tmp_path / "data"
    for i in range(2):
        B.png(root / "images" / f"c{i}.png", B.gradient(16, 16, seed=i))
        B.png(root / "masks" / f"c{i}.png", (B.disk_mask(16, 16, 4) > 0).astype(np.uint8))
    return open_dataset(root, workspace=Workspace(tmp_path / "ws"))


@pytest.mark.parametrize("fmt", ["png", "coco", "nifti"])
@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "permission")])
def test_export_write_failures_are_clear(small_ds, tmp_path: Path, monkeypatch, fmt: str, code: int,
                                         words: str) -> None:
    import tempfile

    from engine.curation import export_dataset

    out = tmp_path / "exports" / "out"
    real = tempfile.mkdtemp

    def fail(*a, **kw):
        raise OSError(code, os.strerror(code), kw.get("dir"))
    monkeypatch.setattr(tempfile, "mkdtemp", fail)
    with pytest.raises(WorkbenchError, match=words) as err:
        export_dataset(small_ds, None, out, fmt)
    assert str(out) in str(err.value) and err.value.hint
    monkeypatch.setattr(tempfile, "mkdtemp", real)
    assert not out.exists()


def test_export_full_disk_midway_leaves_nothing(small_ds, tmp_path: Path, monkeypatch) -> None:
    import engine.fsutil as fsutil
    from engine.curation import export_dataset

    out = tmp_path / "out"

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(a[0]) if a else None)
    monkeypatch.setattr(fsutil, "install_dir", full)
    with pytest.raises(WorkbenchError, match="disk is full") as err:
        export_dataset(small_ds, None, out, "coco")
    assert str(out) in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_export_into_a_mount_point_is_clear(small_ds, tmp_path: Path, monkeypatch) -> None:
    from engine.curation import export_dataset

    out = tmp_path / "mnt"
    out.mkdir()
    real_rmdir = Path.rmdir

    def busy(self: Path) -> None:
        if self == out:
            raise OSError(errno.EBUSY, "Device or resource busy", str(self))
        real_rmdir(self)
    monkeypatch.setattr(Path, "rmdir", busy)
    with pytest.raises(WorkbenchError, match="mount point") as err:
        export_dataset(small_ds, None, out, "nifti")
    assert "subfolder" in str(err.value)


def test_leftovers_of_a_killed_export_are_cleaned_by_the_next(small_ds, tmp_path: Path) -> None:
    import subprocess
    import sys

    from engine.curation import export_dataset

    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    left = [tmp_path / f".out.tmp-{dead}-abc", tmp_path / f".out.staging-{dead}-def",
            tmp_path / f"..out.staging-{dead}-def.tmp-{dead}-ghi", tmp_path / f".out.tmp-{os.getpid()}-zzz"]
    for p in left:
        (p / "masks").mkdir(parents=True)
    info = export_dataset(small_ds, None, out, "coco")
    assert not any(p.exists() for p in left), [p.name for p in left if p.exists()]
    assert any("interrupted export" in n for n in info["notes"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("missing", [("PatientID",), ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                                                     "StudyDate", "StudyTime", "StudyID", "AccessionNumber")])
def test_dicom_seg_of_a_source_without_patient_attributes(tmp_path: Path, missing: tuple[str, ...]) -> None:
    """An (anonymised) source lacking Type 2 patient/study attributes still gets a valid SEG, with them empty."""
    import pydicom
    from pydicom.data import get_testdata_file

    from engine.interop.dicom_seg import write_dicom_seg

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for kw in missing:
        if kw in src:
            delattr(src, kw)
    src.save_as(tmp_path / "src.dcm")
    mask = np.zeros((int(src.Rows), int(src.Columns)), np.uint8)
    mask[10:20, 12:30] = 1
    info = write_dicom_seg(tmp_path / "src.dcm", mask, {0: "background", 1: "nerve"}, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(info["path"])
    assert seg.PatientID == "" and seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
