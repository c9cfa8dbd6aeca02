"""Standard exports (DICOM-SEG, COCO RLE, NIfTI) and their import back as dataset layouts.

Round trips on the demo phantoms (ptx: SIIM-like DICOMs; nerve: Kaggle-like TIFFs) and on a
multi-class paired folder: export → open the export as a dataset → identical masks, including a
reviewer's corrected version. The DICOM-SEG is checked with pydicom (referenced Study/Series/SOP
UIDs, segment labels and codes) and, when dicom3tools is installed, with dciodvfy (IOD validity).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from engine.curation.export import export_dataset
from engine.datasets import open_dataset
from engine.errors import ConfigError
from engine.store import ReviewStore
from engine.workspace import Workspace


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.phantoms import generate_demo

    root = tmp_path_factory.mktemp("interop_demo")
    generate_demo(root, scale="tiny")
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def box(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int, value: int = 1) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[y0:y1, x0:x1] = value
    return m


def expected_masks(ds, store) -> dict[str, np.ndarray]:
    """What an export must hold: the corrected version where there is one, else the original."""
    corrected = store.corrected_masks() if store is not None else {}
    out = {}
    for c in ds.cases:
        if not c.labelled:
            continue
        out[c.case_id] = (store.load_mask_version(c.case_id, corrected[c.case_id].version)
                          if c.case_id in corrected else ds.load_mask(c))
    return out


def assert_round_trip(src_ds, out: Path, want: dict[str, np.ndarray], layout: str, ws: Path) -> None:
    # an export without --copy-images points at its source dataset, outside the export folder: a side
    # file alone may not reach there, the user's image_root option (--image-root) may
    back = open_dataset(out, workspace=Workspace(ws), options={"image_root": str(src_ds.root)})
    assert back.layout == layout, back.layout
    assert not back.bad_files, back.bad_files
    assert back.labels == src_ds.labels
    assert sorted(c.case_id for c in back.cases if c.labelled) == sorted(want)
    for cid, mask in want.items():
        c2 = back.case(cid)
        got = back.load_mask(c2)
        assert got.dtype == np.uint8 and np.array_equal(got, mask), cid
        assert c2.group_id == src_ds.case(cid).group_id
        assert c2.has_mask == bool(mask.any()) and c2.mask_area == int(np.count_nonzero(mask))
        assert Path(c2.image_path).resolve() == Path(src_ds.case(cid).image_path).resolve() or \
            Path(c2.image_path).read_bytes() == Path(src_ds.case(cid).image_path).read_bytes()


# ------------------------------------------------------------------------------------------ DICOM-SEG


def test_dicom_seg_round_trip_with_a_correction(demo: Path, tmp_path: Path) -> None:
    ds = open_dataset(demo / "ptx", workspace=Workspace(tmp_path / "ws"))
    before = tree_hashes(ds.root)
    positive = next(c for c in ds.cases if c.has_mask)
    fixed = box((positive.height, positive.width), 5, 40, 10, 90)
    with ReviewStore.for_dataset(ds) as store:
        store.save_mask_version(positive.case_id, fixed, "alice", "tighter")
        info = export_dataset(ds, store, tmp_path / "seg-out", "dicom-seg", author="alice")
        want = expected_masks(ds, store)
    assert np.array_equal(want[positive.case_id], fixed)
    assert info["export_format"] == "dicom-seg" and info["n_written"] == len(want) == info["n_exported"]
    assert info["n_corrected"] == 1 and info["author"] == "alice" and info["skipped"] == []
    assert sorted(p.name for p in (tmp_path / "seg-out").iterdir()) == ["export.json", "seg"]
    assert before == tree_hashes(ds.root)
    # the export folder alone (SEGs only): export.json's source lies outside it, so it is reported, not walked
    alone = open_dataset(tmp_path / "seg-out", workspace=Workspace(tmp_path / "ws5"))
    assert len(alone) == 0 and any(b.path.endswith("export.json") and "--image-root" in b.reason
                                   for b in alone.bad_files)
    # with the source named by the user (--image-root) it finds its images
    assert_round_trip(ds, tmp_path / "seg-out", want, "dicom_seg", tmp_path / "ws2")
    # and a copy of the dataset with the SEGs dropped next to the DICOMs (no export.json)
    beside = tmp_path / "beside"
    shutil.copytree(ds.root, beside)
    shutil.copytree(tmp_path / "seg-out" / "seg", beside / "seg")
    back = open_dataset(beside, workspace=Workspace(tmp_path / "ws3"))
    assert back.layout == "dicom_seg" and not back.bad_files
    assert all(np.array_equal(back.load_mask(cid), m) for cid, m in want.items())
    # the dataset's own SIIM detection is unchanged
    assert open_dataset(ds.root, workspace=Workspace(tmp_path / "ws4")).layout == "siim"


def test_dicom_seg_references_and_segments_in_pydicom(demo: Path, tmp_path: Path) -> None:
    ds = open_dataset(demo / "ptx", workspace=Workspace(tmp_path / "ws"))
    info = export_dataset(ds, None, tmp_path / "out", "dicom-seg", author="Reviewer^Ann")
    case = next(c for c in ds.cases if c.has_mask)
    ref = info["segmentations"][case.case_id]
    seg = pydicom.dcmread(tmp_path / "out" / ref["file"])
    src = pydicom.dcmread(case.image_path, stop_before_pixels=True)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert seg.SOPInstanceUID == ref["sop_instance_uid"] and seg.SOPInstanceUID != src.SOPInstanceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    refs = seg.ReferencedSeriesSequence
    assert len(refs) == 1 and refs[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in refs[0].ReferencedInstanceSequence] == [src.SOPInstanceUID]
    frame = seg.PerFrameFunctionalGroupsSequence[0]
    assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert seg.SegmentationType == "BINARY" and seg.ContentCreatorName == "Reviewer^Ann"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [ds.labels[1]] == ["pneumothorax"]
    s1 = seg.SegmentSequence[0]
    assert s1.SegmentNumber == 1 and s1.SegmentAlgorithmType == "MANUAL"
    assert (s1.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            s1.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("36118008", "SCT")
    assert s1.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    # pixels: one 1-bit frame per segment, equal to the ground truth
    assert np.array_equal(seg.pixel_array.astype(bool), ds.load_mask(case).astype(bool))
    # the patient module is copied by design (same patient/study); optional patient-study data is not
    assert seg.PatientID == src.PatientID and "PatientAge" not in seg
    # same mask → same UID on a re-export (idempotent), into the same folder (our own export)
    info2 = export_dataset(ds, None, tmp_path / "out", "dicom-seg", author="Reviewer^Ann")
    assert info2["segmentations"][case.case_id]["sop_instance_uid"] == ref["sop_instance_uid"]


def test_dicom_seg_is_a_valid_iod(demo: Path, tmp_path: Path) -> None:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dicom3tools (dciodvfy) not installed; `make test` installs it")
    ds = open_dataset(demo / "ptx", workspace=Workspace(tmp_path / "ws"))
    info = export_dataset(ds, None, tmp_path / "out", "dicom-seg")
    for name in info["files"][:3]:
        res = subprocess.run([dciodvfy, str(tmp_path / "out" / name)], capture_output=True, text=True, timeout=60)
        report = res.stdout + res.stderr
        assert "Segmentation" in report
        errors = [ln for ln in report.splitlines() if ln.startswith("Error")]
        assert errors == [], report


def test_dicom_seg_multiclass_and_empty_masks(demo: Path, tmp_path: Path) -> None:
    from engine.interop.dicom_seg import read_dicom_seg, write_dicom_seg

    ds = open_dataset(demo / "ptx", workspace=Workspace(tmp_path / "ws"))
    c = ds.cases[0]
    shape = (c.height, c.width)
    m = box(shape, 3, 30, 3, 30, 1) + box(shape, 40, 60, 50, 90, 2)
    m[20:45, 20:55] = 2  # overlap region belongs to class 2
    labels = {0: "background", 1: "nerve", 2: "vessel"}
    r = write_dicom_seg(c.image_path, m, labels, tmp_path / "m.dcm", author="bob")
    seg = read_dicom_seg(tmp_path / "m.dcm")
    assert seg.segments == {1: "nerve", 2: "vessel"} == r["segments"]
    assert seg.source_uids == [c.case_id] and np.array_equal(seg.label_map(c.case_id), m)
    write_dicom_seg(c.image_path, np.zeros(shape, np.uint8), labels, tmp_path / "e.dcm")
    empty = read_dicom_seg(tmp_path / "e.dcm")
    assert len(empty.frames) == 2 and not empty.label_map(c.case_id).any()
    with pytest.raises(Exception, match="class ids \\[3\\]"):
        write_dicom_seg(c.image_path, m * 0 + 3, labels, tmp_path / "bad.dcm")
    assert not (tmp_path / "bad.dcm").exists()


def test_dicom_seg_refuses_a_dataset_without_dicoms(demo: Path, tmp_path: Path) -> None:
    ds = open_dataset(demo / "nerve", workspace=Workspace(tmp_path / "ws"))
    with pytest.raises(ConfigError, match="DICOM"):
        export_dataset(ds, None, tmp_path / "out", "dicom-seg")
    # nothing left behind: no OUT, no temporary folders
    assert [p.name for p in tmp_path.iterdir()] == ["ws"]


# ------------------------------------------------------------------------------------------ COCO


@pytest.mark.parametrize("name", ["nerve", "ptx"])
def test_coco_round_trip(demo: Path, tmp_path: Path, name: str) -> None:
    from pycocotools import mask as mask_utils

    ds = open_dataset(demo / name, workspace=Workspace(tmp_path / "ws"))
    case = next(c for c in ds.cases if c.has_mask)
    with ReviewStore.for_dataset(ds) as store:
        store.save_mask_version(case.case_id, box((case.height, case.width), 2, 22, 30, 70), "alice")
        info = export_dataset(ds, store, tmp_path / "coco", "coco", author="alice")
        want = expected_masks(ds, store)
    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert info["files"] == ["annotations.json"]
    assert doc["categories"] == [{"id": 1, "name": ds.labels[1], "supercategory": "segwb"}]
    assert len(doc["images"]) == len(want)
    assert len(doc["annotations"]) == sum(1 for m in want.values() if m.any())
    for img in doc["images"]:
        assert not Path(img["file_name"]).is_absolute() and ".." not in Path(img["file_name"]).parts
        assert (ds.root / img["file_name"]).is_file()
    by_id = {img["id"]: img for img in doc["images"]}
    for ann in doc["annotations"][:5]:
        cid = by_id[ann["image_id"]]["segwb_case_id"]
        seg = ann["segmentation"]
        assert isinstance(seg["counts"], str) and ann["iscrowd"] == 0
        dec = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
        assert np.array_equal(dec.astype(bool), want[cid] == ann["category_id"])
        assert ann["area"] == float(np.count_nonzero(want[cid]))
    assert_round_trip(ds, tmp_path / "coco", want, "coco", tmp_path / "ws2")


def _paired(root: Path, n: int = 3, size: int = 24) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray((rng.random((size, size + 8)) * 255).astype(np.uint8)).save(root / "images" / f"p{i}_1.png")
        m = np.zeros((size, size + 8), np.uint8)
        m[2:8, 2:8] = 1
        m[12:20, 10:18 + i] = 2
        if i == n - 1:
            m[:] = 0
        Image.fromarray(m).save(root / "masks" / f"p{i}_1.png")
    return root


@pytest.mark.parametrize("fmt,layout", [("coco", "coco"), ("nifti", "nifti")])
def test_multiclass_copy_images_round_trip(tmp_path: Path, fmt: str, layout: str) -> None:
    root = _paired(tmp_path / "data")
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"), options={"label_names": ["nerve", "vessel"]})
    assert ds.labels == {0: "background", 1: "nerve", 2: "vessel"}
    info = export_dataset(ds, None, tmp_path / "out", fmt, copy_images=True)
    want = expected_masks(ds, None)
    assert (tmp_path / "out" / "images" / "images" / "p0_1.png").is_file()
    # self-contained: still opens after the source is gone
    shutil.rmtree(root)
    moved = tmp_path / "moved"
    (tmp_path / "out").rename(moved)
    (moved / "export.json").unlink()
    back = open_dataset(moved, workspace=Workspace(tmp_path / "ws2"))
    assert back.layout == layout and not back.bad_files and back.labels == ds.labels
    for cid, m in want.items():
        assert np.array_equal(back.load_mask(cid), m), cid
        assert Path(back.case(cid).image_path).is_relative_to(moved)
    assert info["n_written"] == (1 if fmt == "coco" else 3 + 3)  # nifti: 3 masks + labels.json, .ctbl, images.csv


def test_foreign_coco_polygons_categories_and_unsafe_names(tmp_path: Path) -> None:
    """A CVAT/Label-Studio-like COCO: category ids 3 and 7, a polygon, an RLE with overlap, an
    image without annotations (labelled empty), and a file name escaping the folder (refused)."""
    from PIL import Image

    from engine.interop.coco import encode_class

    root = tmp_path / "cvat"
    (root / "images").mkdir(parents=True)
    for n in ("a", "b", "c"):
        Image.fromarray(np.full((20, 30), 128, np.uint8)).save(root / "images" / f"{n}.png")
    (tmp_path / "secret.png").write_bytes((root / "images" / "a.png").read_bytes())
    big = box((20, 30), 0, 10, 0, 20)
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                   {"id": 2, "file_name": "images/b.png", "height": 20, "width": 30},
                   {"id": 3, "file_name": "c.png", "height": 20, "width": 30},
                   {"id": 4, "file_name": "../secret.png", "height": 20, "width": 30}],
        "categories": [{"id": 7, "name": "vessel"}, {"id": 3, "name": "nerve"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": encode_class(big)},
            {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0,
             "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]},
            {"id": 3, "image_id": 2, "category_id": 7, "iscrowd": 0,
             "segmentation": [[10, 10, 20, 10, 20, 18, 10, 18]]},
        ],
    }
    (root / "instances.json").write_text(json.dumps(doc))
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"))
    assert ds.layout == "coco" and ds.labels == {0: "background", 1: "nerve", 2: "vessel"}
    assert sorted(ds.case_ids) == ["a", "b", "c"]
    assert len(ds.bad_files) == 1 and "secret.png" in ds.bad_files[0].reason
    a = ds.load_mask("a")
    assert set(np.unique(a)) == {0, 1, 2} and a[4, 4] == 2 and a[8, 15] == 1  # smaller polygon on top
    assert ds.load_mask("b").max() == 2 and not ds.load_mask("c").any() and ds.case("c").labelled


# ------------------------------------------------------------------------------------------ NIfTI


def test_nifti_round_trip_and_axis_convention(demo: Path, tmp_path: Path) -> None:
    import nibabel as nib

    ds = open_dataset(demo / "nerve", workspace=Workspace(tmp_path / "ws"))
    info = export_dataset(ds, None, tmp_path / "nii", "nifti")
    want = expected_masks(ds, None)
    case = next(c for c in ds.cases if c.has_mask)
    img = nib.load(tmp_path / "nii" / "labels" / f"{case.case_id}.nii.gz")
    data = np.asarray(img.dataobj)
    assert data.shape == (case.width, case.height, 1) and data.dtype == np.uint8
    m = want[case.case_id]
    ys, xs = np.nonzero(m)
    assert data[xs[0], ys[0], 0] == m[ys[0], xs[0]] == 1 and np.array_equal(data[:, :, 0].T, m)
    assert np.allclose(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert img.header.get_intent()[0] == "label"
    assert json.loads((tmp_path / "nii" / "labels.json").read_text()) == {"0": "background", "1": "nerve"}
    assert "1 nerve" in (tmp_path / "nii" / "labels.ctbl").read_text()
    assert info["n_written"] == len(want) + 3
    assert_round_trip(ds, tmp_path / "nii", want, "nifti", tmp_path / "ws2")


def test_nifti_masks_beside_images_by_stem(tmp_path: Path) -> None:
    from PIL import Image

    from engine.interop.nifti import write_nifti_mask

    root = tmp_path / "slicer"
    root.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 24), 100, np.uint8)).save(root / f"img{i}_1.png")
        write_nifti_mask(root / f"img{i}_1_seg.nii.gz", box((16, 24), 2, 9, 3, 20, 1 + i))
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"))
    assert ds.layout == "nifti" and sorted(ds.case_ids) == ["img0_1", "img1_1"]
    assert np.array_equal(ds.load_mask("img1_1"), box((16, 24), 2, 9, 3, 20, 2))
    # a mask stored (H,W) for a non-square image is reported, not silently transposed
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 24, 1), np.uint8), np.eye(4)), str(root / "img0_1_seg.nii.gz"))
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"))
    assert any("(W,H,1)" in b.reason for b in ds.bad_files)


# ------------------------------------------------------------------------------------------ safety + CLI


def test_out_folder_rules_and_atomic_replacement(demo: Path, tmp_path: Path) -> None:
    ds = open_dataset(demo / "ptx", workspace=Workspace(tmp_path / "ws"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_dataset(ds, None, foreign, "coco")
    (foreign / "export.json").write_text("{}")  # a file of that name alone does not make it ours
    with pytest.raises(ConfigError, match="not empty"):
        export_dataset(ds, None, foreign, "nifti")
    with pytest.raises(ConfigError, match="not empty"):
        export_dataset(ds, None, foreign, "png")
    assert sorted(p.name for p in foreign.iterdir()) == ["export.json", "notes.txt"]
    with pytest.raises(ConfigError, match="inside the dataset"):
        export_dataset(ds, None, ds.root / "exports", "coco")
    with pytest.raises(Exception, match="export format"):
        export_dataset(ds, None, tmp_path / "x", "jpeg")
    out = tmp_path / "out"
    export_dataset(ds, None, out, "nifti")
    assert (out / "labels").is_dir()
    export_dataset(ds, None, out, "coco")  # replaces our own earlier export as a whole
    assert sorted(p.name for p in out.iterdir()) == ["annotations.json", "export.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_export_corrected_format(demo: Path, tmp_path: Path, capsys) -> None:
    from engine.__main__ import main

    out = tmp_path / "seg"
    assert main(["export-corrected", str(demo / "ptx"), str(out), "--format", "dicom-seg", "--user", "carol",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["export_format"] == "dicom-seg" and info["author"] == "carol" and info["n_written"] > 0
    assert pydicom.dcmread(out / info["files"][0]).ContentCreatorName == "carol^"
    assert main(["export-corrected", str(demo / "nerve"), str(tmp_path / "c"), "--format", "coco"]) == 0
    assert "as coco" in capsys.readouterr().out
    assert main(["export-corrected", str(demo / "nerve"), str(tmp_path / "png")]) == 0  # default: png
    assert (tmp_path / "png" / "manifest.json").is_file() and (tmp_path / "png" / "train_masks.csv").is_file()


# ------------------------------------------------------------------------------------------ real data


def test_real_siim_sample_dicom_seg_and_coco_round_trip(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "siim-sample"
    if not root.is_dir():
        pytest.skip("siim-sample not present")
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"))
    want = expected_masks(ds, None)
    if not want:
        pytest.skip("no labelled cases in the SIIM sample")
    before = tree_hashes(root)
    info = export_dataset(ds, None, tmp_path / "seg", "dicom-seg", author="tester")
    assert info["n_written"] == len(want) and not info["skipped"]
    assert_round_trip(ds, tmp_path / "seg", want, "dicom_seg", tmp_path / "ws2")
    case = next(iter(want))
    seg = pydicom.dcmread(tmp_path / "seg" / info["segmentations"][case]["file"])
    src = pydicom.dcmread(ds.case(case).image_path, stop_before_pixels=True)
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    export_dataset(ds, None, tmp_path / "coco", "coco")
    assert_round_trip(ds, tmp_path / "coco", want, "coco", tmp_path / "ws3")
    assert before == tree_hashes(root)


# ------------------------------------------------------------------------------------------ bad input


def test_dicom_seg_import_newest_wins_and_bad_files(demo: Path, tmp_path: Path) -> None:
    from engine.interop.dicom_seg import write_dicom_seg

    ds = open_dataset(demo / "ptx", workspace=Workspace(tmp_path / "ws"))
    beside = tmp_path / "beside"
    shutil.copytree(ds.root, beside)
    info = export_dataset(ds, None, tmp_path / "out", "dicom-seg")
    shutil.copytree(tmp_path / "out" / "seg", beside / "seg")
    a, b = ds.cases[0], ds.cases[1]
    newer = box((a.height, a.width), 1, 9, 1, 9)
    write_dicom_seg(a.image_path, newer, ds.labels, beside / "seg" / "later.dcm", author="bob")
    for name, when in (("later.dcm", "20990101"), (Path(info["segmentations"][a.case_id]["file"]).name, "20000101")):
        d = pydicom.dcmread(beside / "seg" / name)
        d.ContentDate = when
        d.save_as(beside / "seg" / name)
    (beside / "seg" / "broken_seg.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    Path(b.image_path.replace(str(ds.root), str(beside))).unlink()  # b's SEG now points at nothing
    back = open_dataset(beside, workspace=Workspace(tmp_path / "ws2"))
    assert back.layout == "dicom_seg"
    assert np.array_equal(back.load_mask(a.case_id), newer)
    assert any("several SEGs" in n for n in back.notes)
    reasons = {Path(bf.path).name: bf.reason for bf in back.bad_files}
    assert "broken_seg.dcm" in reasons
    assert any(b.case_id in r and "not among the DICOMs" in r for r in reasons.values())
    assert b.case_id not in back and len(back) == len(ds) - 1


def test_coco_bad_json_and_wrong_sizes_are_listed_not_fatal(tmp_path: Path) -> None:
    from PIL import Image

    from engine.interop.coco import encode_class

    root = tmp_path / "c"
    root.mkdir()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "a.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "b.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12},
                      {"id": 2, "file_name": "b.png", "height": 11, "width": 12}],
           "categories": [{"id": 1, "name": "nerve"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                            "segmentation": encode_class(box((10, 12), 0, 5, 0, 5))},
                           {"id": 2, "image_id": 2, "category_id": 1,
                            "segmentation": encode_class(box((11, 12), 0, 5, 0, 5))}]}
    (root / "train.json").write_text(json.dumps(doc))
    (root / "val.json").write_text('{"images": [ {"id": 1, "file_name": "a.png"')  # truncated
    ds = open_dataset(root, workspace=Workspace(tmp_path / "ws"))
    assert ds.layout == "coco" and ds.case_ids == ["a"] and ds.case("a").split == "train"
    assert ds.load_mask("a").sum() == 25
    reasons = " | ".join(f"{Path(b.path).name}: {b.reason}" for b in ds.bad_files)
    assert "val.json: cannot read COCO JSON" in reasons and "11x12" in reasons


def test_exports_of_a_manifest_and_the_image_root_option(demo: Path, tmp_path: Path) -> None:
    """A manifest whose images lie outside its source folder (copied by a PNG export) still exports
    COCO with relative names that import back; a SEG folder without export.json finds its images
    through the ``image_root`` option (``--image-root``)."""
    from engine.curation import export_corrected

    ds = open_dataset(demo / "nerve", workspace=Workspace(tmp_path / "ws"))
    png = export_corrected(ds, None, tmp_path / "png", copy_images=True)
    man = open_dataset(png["manifest"], workspace=Workspace(tmp_path / "ws"))
    export_dataset(man, None, tmp_path / "coco", "coco")
    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert all(".." not in Path(i["file_name"]).parts for i in doc["images"])
    # the images stay where the manifest has them (outside the export): reported unless the user names them
    refused = open_dataset(tmp_path / "coco", workspace=Workspace(tmp_path / "ws2"))
    assert len(refused) == 0 and any("segwb_image_root" in b.reason for b in refused.bad_files)
    back = open_dataset(tmp_path / "coco", workspace=Workspace(tmp_path / "ws2"),
                        options={"image_root": doc["info"]["segwb_image_root"]})
    assert back.layout == "coco" and not back.bad_files and len(back) == len(man.labelled_cases())
    assert all(np.array_equal(back.load_mask(c.case_id), man.load_mask(c)) for c in man.labelled_cases()[:20])

    ptx = open_dataset(demo / "ptx", workspace=Workspace(tmp_path / "ws"))
    export_dataset(ptx, None, tmp_path / "seg", "dicom-seg")
    (tmp_path / "seg" / "export.json").unlink()
    alone = open_dataset(tmp_path / "seg", workspace=Workspace(tmp_path / "ws3"))
    assert alone.layout == "dicom_seg" and len(alone) == 0 and len(alone.bad_files) == len(ptx.labelled_cases())
    found = open_dataset(tmp_path / "seg", workspace=Workspace(tmp_path / "ws3"), options={"image_root": str(ptx.root)})
    assert not found.bad_files and sorted(found.case_ids) == sorted(ptx.case_ids)


def test_nifti_of_dicom_cases_carries_pixel_spacing(demo: Path, tmp_path: Path) -> None:
    import nibabel as nib

    ds = open_dataset(demo / "ptx", workspace=Workspace(tmp_path / "ws"))
    export_dataset(ds, None, tmp_path / "nii", "nifti")
    case = next(c for c in ds.cases if c.has_mask)
    sy, sx = case.meta["pixel_spacing_mm"]
    img = nib.load(tmp_path / "nii" / "labels" / f"{case.case_id}.nii.gz")
    assert np.allclose(img.affine, np.diag([-sx, -sy, 1.0, 1.0]), atol=1e-6)
    assert_round_trip(ds, tmp_path / "nii", expected_masks(ds, None), "nifti", tmp_path / "ws2")
