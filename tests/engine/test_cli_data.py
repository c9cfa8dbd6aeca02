"""Data commands run in-process: ``info``, ``masks``, ``rle``, ``convert``, ``demo``; bad input never crashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.__main__ import main
from engine.datasets import open_dataset
from engine.errors import WorkbenchError
from tests.support import badinput as B

SHARED = {
    "kaggle-nerve-sample": ("kaggle_uns", 23, 6),
    "siim-sample": ("siim", 5, 2),
    "montgomery-lung": ("paired", 138, 138),
    "usgra-nerve-vessel": ("paired", 204, 204),
    "isbi2012-em": ("paired", 60, 30),
}
KEYS = {"layout", "n_cases", "n_with_mask", "n_empty", "n_groups", "bad_files"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return B.tiny_demo(tmp_path_factory)


def run(capsys, *args: str, ws: Path) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["--workspace", str(ws), *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---------------------------------------------------------------------------------------------
# info


@pytest.mark.parametrize("name", list(SHARED))
def test_info_on_shared_folders(name: str, shared_data: Path, tmp_path: Path, capsys) -> None:
    layout, n, n_mask = SHARED[name]
    out = tmp_path / "info.json"
    rc, text, _ = run(capsys, "info", shared_data / name, "--json", out, ws=tmp_path / "ws")
    assert rc == 0
    s = json.loads(out.read_text())
    assert KEYS <= set(s)
    assert (s["layout"], s["n_cases"], s["n_with_mask"], s["bad_files"]) == (layout, n, n_mask, [])
    assert s["n_empty"] == s["n_labelled"] - n_mask
    assert f"layout    {layout}" in text and f"cases     {n}" in text


def test_info_on_phantoms(demo: Path, tmp_path: Path, capsys) -> None:
    for sub, layout, n in (("nerve", "kaggle_uns", 36), ("ptx", "siim", 8)):
        out = tmp_path / f"{sub}.json"
        rc, text, _ = run(capsys, "info", demo / sub, "--json", out, ws=tmp_path / "ws")
        s = json.loads(out.read_text())
        assert rc == 0 and KEYS <= set(s) and s["layout"] == layout and s["n_cases"] == n
        assert s["n_groups"] == (3 if sub == "nerve" else len({c.group_id for c in open_dataset(
            demo / sub, workspace=tmp_path / "ws").cases}))
        assert s["scan"]["cache_misses"] + s["scan"]["cache_hits"] == n


# ---------------------------------------------------------------------------------------------
# bad input: direct API errors name the file; `info` lists the files and carries on


def test_bad_files_raise_named_workbench_errors(tmp_path: Path) -> None:
    from engine.datasets.base import MaskSource, load_mask_source
    from engine.io import read_image, read_mask
    from engine.rle import decode, read_kaggle_uns_csv, read_siim_csv

    c = B.make_bad_corpus(tmp_path)
    f = c["files"]
    calls = {
        "truncated_png": lambda: read_image(f["truncated_png"]),
        "truncated_tiff": lambda: read_image(f["truncated_tiff"]),
        "zero_byte": lambda: read_image(f["zero_byte"]),
        "multipage_tiff": lambda: read_image(f["multipage_tiff"]),
        "text_dcm": lambda: read_image(f["text_dcm"]),
        "dicom_no_pixels": lambda: read_image(f["dicom_no_pixels"]),
        "kaggle_truncated_tiff": lambda: read_image(f["kaggle_truncated_tiff"]),
        "kaggle_bad_csv": lambda: read_kaggle_uns_csv(f["kaggle_bad_csv"]),
        "siim_text_dcm": lambda: read_image(f["siim_text_dcm"]),
        "siim_no_pixels": lambda: read_image(f["siim_no_pixels"]),
        "size_mismatch": lambda: load_mask_source(MaskSource("file", str(f["size_mismatch"])), (64, 64),
                                                  case_id="sizemm"),
        "mask_without_image": lambda: read_mask(f["mask_without_image"].with_name("gone.png")),
    }
    for label, call in calls.items():
        with pytest.raises(WorkbenchError) as exc:
            call()
        name = f[label].name if label != "mask_without_image" else "gone.png"
        assert name in str(exc.value), (label, str(exc.value))
        assert exc.value.hint, label
    rows, _ = read_siim_csv(f["siim_csv"])
    with pytest.raises(WorkbenchError) as exc:
        decode(rows[c["bad_rle_sop"]][0], (32, 32), "siim", where=f"{f['siim_csv'].name} (ImageId {c['bad_rle_sop']})")
    assert "train-rle.csv" in str(exc.value) and c["bad_rle_sop"] in str(exc.value)


@pytest.mark.parametrize("key", ["paired", "kaggle", "siim"])
def test_info_lists_bad_files_and_indexes_good_ones(key: str, tmp_path: Path, capsys) -> None:
    c = B.make_bad_corpus(tmp_path / "bad")
    out = tmp_path / "info.json"
    rc, text, _ = run(capsys, "info", c[key], "--json", out, ws=tmp_path / "ws")
    assert rc == 0
    s = json.loads(out.read_text())
    assert s["n_cases"] == c["good"][key]
    listed = {Path(b["path"]).name for b in s["bad_files"]}
    assert listed == set(c["bad"][key])
    assert f"bad files {len(c['bad'][key])}" in text
    for name in c["bad"][key]:
        assert name in text


# ---------------------------------------------------------------------------------------------
# masks


@pytest.mark.parametrize("name,values", [("kaggle-nerve-sample", {0, 1}), ("siim-sample", {0, 1}),
                                         ("usgra-nerve-vessel", {0, 1, 2})])
def test_masks_command(name: str, values: set[int], shared_data: Path, tmp_path: Path, capsys) -> None:
    ws = tmp_path / "ws"
    rc, text, _ = run(capsys, "masks", shared_data / name, "--out", tmp_path / "m", ws=ws)
    assert rc == 0
    ds = open_dataset(shared_data / name, workspace=ws)
    written = sorted(tmp_path.joinpath("m").glob("*.png"))
    assert len(written) == len(ds.labelled_cases())
    seen: set[int] = set()
    step = max(1, len(ds) // 25)  # compare a spread of cases (all for the small samples)
    for c in ds.labelled_cases()[::step]:
        png = np.array(Image.open(tmp_path / "m" / f"{c.case_id}.png"))
        np.testing.assert_array_equal(png, ds.load_mask(c))
        seen |= set(np.unique(png).tolist())
    assert seen == values
    assert f"wrote {len(written)} masks" in text


# ---------------------------------------------------------------------------------------------
# rle


def test_rle_encode_decode(tmp_path: Path, capsys) -> None:
    ws = tmp_path / "ws"
    m = np.zeros((6, 5), np.uint8)
    m[1:3, 1] = 255
    m[0:2, 3] = 255
    B.png(tmp_path / "m.png", m)
    rc, out, _ = run(capsys, "rle", "encode", tmp_path / "m.png", "--format", "kaggle", ws=ws)
    assert rc == 0 and out.strip() == "8 2 19 2"
    rc, out, _ = run(capsys, "rle", "encode", tmp_path / "m.png", "--format", "siim", ws=ws)
    assert rc == 0 and out.strip() == "7 2 9 2"
    rc, _, _ = run(capsys, "rle", "decode", "--format", "siim", "--size", "6x5", "--rle", "7 2 9 2",
                   "--out", tmp_path / "d.png", ws=ws)
    assert rc == 0
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "d.png")), m // 255)
    # from CSV rows, Kaggle and SIIM (several rows for one image = union)
    (tmp_path / "train_masks.csv").write_text("subject,img,pixels\n4,2,8 2 19 2\n")
    rc, _, _ = run(capsys, "rle", "decode", "--size", "6x5", "--csv", tmp_path / "train_masks.csv", "--id", "4_2",
                   "--out", tmp_path / "k.png", ws=ws)
    assert rc == 0
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "k.png")), m // 255)
    (tmp_path / "s.csv").write_bytes("\ufeffImageId, EncodedPixels\r\n1.2.3, 7 2\r\n1.2.3, 18 2\r\n".encode())
    rc, _, _ = run(capsys, "rle", "decode", "--format", "siim", "--size", "6x5", "--csv", tmp_path / "s.csv",
                   "--id", "1.2.3", "--out", tmp_path / "s.png", ws=ws)
    assert rc == 0
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "s.png")), m // 255)
    # errors: exit code 2 with a readable message
    rc, _, err = run(capsys, "rle", "decode", "--format", "kaggle", "--size", "6x5", "--rle", "1 2 3",
                     "--out", tmp_path / "x.png", ws=ws)
    assert rc == 2 and "odd number" in err and "--rle" in err
    rc, _, err = run(capsys, "rle", "decode", "--size", "6x5", "--csv", tmp_path / "train_masks.csv", "--id", "9_9",
                     "--out", tmp_path / "x.png", ws=ws)
    assert rc == 2 and "9_9" in err and "train_masks.csv" in err
    rc, _, err = run(capsys, "rle", "decode", "--size", "6x5", "--rle", "1 2", "--out", tmp_path / "x.png", ws=ws)
    assert rc == 2 and "--format" in err
    rc, _, err = run(capsys, "rle", "decode", "--format", "kaggle", "--size", "axb", "--rle", "1 2",
                     "--out", tmp_path / "x.png", ws=ws)
    assert rc == 2 and "size" in err
    assert not (tmp_path / "x.png").exists()


def test_rle_decode_real_row(shared_data: Path, tmp_path: Path, capsys) -> None:
    import tifffile

    rc, _, _ = run(capsys, "rle", "decode", "--format", "kaggle", "--size", "420x580",
                   "--csv", shared_data / "kaggle-nerve-sample" / "train_masks.csv", "--id", "2_13",
                   "--out", tmp_path / "2_13.png", ws=tmp_path / "ws")
    assert rc == 0
    truth = tifffile.imread(shared_data / "kaggle-nerve-sample" / "train" / "2_13_mask.tif") // 255
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "2_13.png")), truth)


# ---------------------------------------------------------------------------------------------
# convert


def test_convert_siim_phantom(demo: Path, tmp_path: Path, capsys) -> None:
    ws = tmp_path / "ws"
    out = tmp_path / "png128"
    rc, text, _ = run(capsys, "convert", demo / "ptx", "--out", out, "--size", "128", "--json", tmp_path / "c.json",
                      ws=ws)
    assert rc == 0
    src = open_dataset(demo / "ptx", workspace=ws)
    conv = open_dataset(out, workspace=ws)
    assert conv.layout == "paired" and len(conv) == len(src) == 8
    assert sum(c.has_mask for c in conv.cases) == sum(c.has_mask for c in src.cases) == 2
    assert {(c.height, c.width) for c in conv.cases} == {(128, 128)}
    assert set(conv.case_ids) == set(src.case_ids)  # SOP UIDs are already safe file names
    import cv2

    for c in src.cases:
        m = conv.load_mask(c.case_id)
        expect = cv2.resize(src.load_mask(c), (128, 128), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(m, expect)
        img = np.array(Image.open(out / "images" / f"{c.case_id}.png"))
        assert img.dtype == np.uint8 and img.shape == (128, 128) and img.std() > 10
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["n_images"] == 8 and summary["n_skipped"] == 0
    # converting again into the same folder replaces the earlier conversion
    rc, _, _ = run(capsys, "convert", demo / "ptx", "--out", out, "--size", "64x96", ws=ws)
    assert rc == 0 and {(c.height, c.width) for c in open_dataset(out, workspace=ws).cases} == {(64, 96)}


def test_convert_safe_names_and_bad_cases(shared_data: Path, tmp_path: Path, capsys) -> None:
    from engine.datasets.convert import convert_dataset, safe_case_name

    ds = open_dataset(shared_data / "isbi2012-em", workspace=tmp_path / "ws")
    sub = ds.subset(["train/0", "train/1", "test/0"])
    s = convert_dataset(sub, tmp_path / "isbi", 32)
    assert s["n_images"] == 3 and s["n_masks"] == 2
    names = s["names"]
    assert names["train/0"] == safe_case_name("train/0") and "/" not in names["train/0"]
    assert len(set(names.values())) == 3
    conv = open_dataset(tmp_path / "isbi", workspace=tmp_path / "ws")
    assert len(conv) == 3 and len(conv.labelled_cases()) == 2
    # a folder with bad files: the bad cases are skipped and reported, the rest converted
    c = B.make_bad_corpus(tmp_path / "bad")
    bad_ds = open_dataset(c["paired"], workspace=tmp_path / "ws")  # no verify: truncated files get indexed
    s2 = convert_dataset(bad_ds, tmp_path / "badconv", 16)
    assert s2["n_images"] == 3 and {r["case_id"] for r in s2["skipped"]} == {"trunc_png", "trunc_tif", "stack"}
    assert all(r["reason"] for r in s2["skipped"])
    rc, _, err = run(capsys, "convert", c["paired"], "--out", c["paired"] / "images", ws=tmp_path / "ws")
    assert rc == 2 and "not empty" in err  # never writes into a foreign folder


def test_safe_case_name() -> None:
    from engine.datasets.convert import parse_size, safe_case_name

    assert safe_case_name("2_13") == "2_13"
    assert safe_case_name("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    a, b = safe_case_name("a/b"), safe_case_name("a b")
    assert a != b and a.startswith("a_b-") and b.startswith("a_b-")
    assert safe_case_name("a/b") == a  # stable
    assert not safe_case_name(".hidden").startswith(".")
    assert not safe_case_name("x_mask").endswith("_mask")
    assert parse_size("256") == (256, 256) and parse_size("256x320") == (256, 320) and parse_size(64) == (64, 64)
    with pytest.raises(WorkbenchError):
        parse_size("0")


# ---------------------------------------------------------------------------------------------
# demo


def test_demo_if_missing_is_a_no_op(tmp_path: Path, capsys) -> None:
    ws = tmp_path / "ws"
    out = tmp_path / "demo"
    rc, text, _ = run(capsys, "demo", "--out", out, "--scale", "tiny", "--if-missing", ws=ws)
    assert rc == 0 and "SYNTHETIC" in text
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rc, text, _ = run(capsys, "demo", "--out", out, "--scale", "tiny", "--if-missing", ws=ws)
    assert rc == 0 and "nothing to do" in text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    # an interrupted run (no completion marker) is redone
    from engine.phantoms import DEMO_MARKER

    (out / DEMO_MARKER).unlink()
    rc, text, _ = run(capsys, "demo", "--out", out, "--scale", "tiny", "--if-missing", ws=ws)
    assert rc == 0 and "nothing to do" not in text and (out / DEMO_MARKER).exists()
    assert open_dataset(out / "nerve", workspace=ws).layout == "kaggle_uns"
