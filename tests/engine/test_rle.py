"""RLE codecs (Kaggle UNS absolute 1-based, SIIM relative), CSV readers and submission writers."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.errors import CSVFormatError, RLEError, WorkbenchError
from engine.rle import (
    convert,
    decode,
    decode_union,
    encode,
    parse_runs,
    read_kaggle_uns_csv,
    read_siim_csv,
    runs_from_mask,
    sniff_rle_csv,
    write_kaggle_uns_submission,
    write_kaggle_uns_train_csv,
    write_siim_csv,
    write_siim_submission,
)

masks = st.tuples(st.integers(1, 14), st.integers(1, 14)).flatmap(
    lambda hw: arrays(np.uint8, hw, elements=st.integers(0, 1)))


# ---------------------------------------------------------------------------------------------
# properties


@settings(max_examples=150, deadline=None)
@given(masks, st.sampled_from(["kaggle", "siim"]))
def test_encode_decode_round_trip(mask: np.ndarray, convention: str) -> None:
    text = encode(mask, convention)
    out = decode(text, mask.shape, convention)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)
    if not mask.any():
        assert text == ("" if convention == "kaggle" else "-1")


@settings(max_examples=100, deadline=None)
@given(masks)
def test_convert_between_conventions(mask: np.ndarray) -> None:
    k, s = encode(mask, "kaggle"), encode(mask, "siim")
    assert convert(k, mask.shape, "kaggle", "siim") == s
    assert convert(s, mask.shape, "siim", "kaggle") == k


@settings(max_examples=100, deadline=None)
@given(masks)
def test_kaggle_runs_are_column_major_1_based(mask: np.ndarray) -> None:
    """Independent reference: walk the pixels column by column, 1-based."""
    flat = mask.ravel(order="F")
    ref, i = [], 0
    while i < len(flat):
        if flat[i]:
            j = i
            while j < len(flat) and flat[j]:
                j += 1
            ref += [i + 1, j - i]
            i = j
        else:
            i += 1
    assert encode(mask, "kaggle") == " ".join(map(str, ref))
    starts, lengths = runs_from_mask(mask)
    assert int(lengths.sum()) == int(mask.sum())


def test_siim_offsets_are_relative() -> None:
    m = np.zeros((5, 4), np.uint8)
    m[1:3, 0] = 1   # pixels 1,2 (0-based, column-major)
    m[0:2, 2] = 1   # pixels 10,11
    assert encode(m, "kaggle") == "2 2 11 2"
    assert encode(m, "siim") == "1 2 7 2"  # second run starts 7 after the end (3) of the first
    np.testing.assert_array_equal(decode("1 2 7 2", m.shape, "siim"), m)


def test_decode_value_and_empty_forms() -> None:
    assert decode(None, (3, 3)).sum() == 0
    assert decode(float("nan"), (3, 3)).sum() == 0
    assert decode(" -1", (3, 3), "siim").sum() == 0
    assert set(np.unique(decode("1 4", (3, 3), value=255))) == {0, 255}


# ---------------------------------------------------------------------------------------------
# malformed RLE: the message names the row (``where``)


@pytest.mark.parametrize("rle,convention,fragment", [
    ("1 3 10", "kaggle", "odd number"),
    ("5 -2", "kaggle", "length -2"),
    ("0 3", "kaggle", "starts at 0"),
    ("-3 2", "siim", "negative offset"),
    ("1 5 3 2", "kaggle", "overlaps"),
    ("10 2 1 2", "kaggle", "overlaps"),
    ("8 5", "kaggle", "beyond"),
    ("1 2 x 3", "kaggle", "non-integer"),
    ("1.5 2", "siim", "non-integer"),
])
def test_malformed_rle_names_the_row(rle: str, convention: str, fragment: str) -> None:
    where = "train_masks.csv row 17"
    with pytest.raises(RLEError) as exc:
        decode(rle, (3, 3), convention, where=where)
    assert where in str(exc.value)
    assert fragment in str(exc.value)
    assert isinstance(exc.value, WorkbenchError) and exc.value.hint


def test_parse_runs_returns_absolute_zero_based() -> None:
    starts, lengths = parse_runs("3 2 4 1", (4, 4), "siim")
    assert starts.tolist() == [3, 9] and lengths.tolist() == [2, 1]


def test_encode_rejects_3d() -> None:
    with pytest.raises(RLEError):
        encode(np.zeros((2, 2, 2), np.uint8))


# ---------------------------------------------------------------------------------------------
# real Kaggle sample: CSV rows == _mask.tif files, pixel for pixel


def test_kaggle_csv_matches_mask_tiffs(shared_data: Path) -> None:
    import tifffile

    folder = shared_data / "kaggle-nerve-sample"
    rows, stats = read_kaggle_uns_csv(folder / "train_masks.csv")
    assert stats.header == ["subject", "img", "pixels"]
    assert len(rows) == 5635
    masks = sorted((folder / "train").glob("*_mask.tif"))
    assert len(masks) == 23
    n_nonempty = 0
    for p in masks:
        cid = p.name[: -len("_mask.tif")]
        tif = tifffile.imread(p)
        assert set(np.unique(tif)) <= {0, 255}
        truth = (tif > 0).astype(np.uint8)
        decoded = decode(rows[cid], truth.shape, "kaggle", where=f"train_masks.csv ({cid})")
        np.testing.assert_array_equal(decoded, truth, err_msg=cid)
        assert encode(truth, "kaggle") == rows[cid].strip()
        n_nonempty += bool(truth.any())
    assert n_nonempty == 6


def test_siim_sample_csvs(shared_data: Path) -> None:
    folder = shared_data / "siim-sample"
    raw = (folder / "train-rle-sample.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    rows, stats = read_siim_csv(folder / "train-rle-sample.csv")
    assert stats.header == []  # no header line in this file
    assert len(rows) == 5
    positives = {k: v for k, v in rows.items() if v}
    assert len(positives) == 2 and sum(not v for v in rows.values()) == 3
    dicoms = {p.stem for p in (folder / "dicom-images-train").rglob("*.dcm")}
    assert set(rows) == dicoms
    for image_id, rles in positives.items():
        m = decode_union(rles, (1024, 1024), "siim", where=image_id)
        assert m.sum() == sum(int(parse_runs(r, (1024, 1024), "siim")[1].sum()) for r in rles) > 0
        # re-encoding each single-region row gives the row back
        if len(rles) == 1:
            assert encode(m, "siim") == rles[0]
    sub, sstats = read_siim_csv(folder / "train-rle-subset.csv")
    assert sstats.n_rows == 1500 and sstats.header == ["ImageId", "EncodedPixels"]
    assert sniff_rle_csv(folder / "train-rle-subset.csv") == "siim"
    assert sniff_rle_csv(folder / "train-rle-sample.csv") == "siim"
    assert sniff_rle_csv(shared_data / "kaggle-nerve-sample" / "train_masks.csv") == "kaggle"


# ---------------------------------------------------------------------------------------------
# CSV quirks


def _siim_text(lines: list[str], bom: bool = True, crlf: bool = True) -> bytes:
    nl = "\r\n" if crlf else "\n"
    return (("\ufeff" if bom else "") + nl.join(lines) + nl).encode("utf-8")


def test_siim_csv_quirks(tmp_path: Path) -> None:
    m1 = np.zeros((8, 8), np.uint8)
    m1[1:3, 1:3] = 1
    m2 = np.zeros((8, 8), np.uint8)
    m2[5:7, 5:8] = 1
    lines = ["ImageId, EncodedPixels", f"a, {encode(m1, 'siim')}", f"a, {encode(m2, 'siim')}",
             f"a, {encode(m2, 'siim')}", "b, -1", "b, -1", "c,-1"]
    p = tmp_path / "x.csv"
    p.write_bytes(_siim_text(lines))
    rows, stats = read_siim_csv(p)
    assert stats.header == ["ImageId", "EncodedPixels"]
    assert stats.n_rows == 6 and stats.n_duplicates == 2
    assert rows["b"] == [] and rows["c"] == [] and len(rows["a"]) == 2
    np.testing.assert_array_equal(decode_union(rows["a"], (8, 8), "siim"), m1 | m2)
    # no header, no BOM, LF
    p2 = tmp_path / "y.csv"
    p2.write_bytes(_siim_text(lines[1:], bom=False, crlf=False))
    rows2, stats2 = read_siim_csv(p2)
    assert rows2 == rows and stats2.header == []
    assert sniff_rle_csv(p) == "siim"


def test_siim_csv_bad_rows_name_the_row(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_bytes(_siim_text(["ImageId,EncodedPixels", "a, 1 2", "b, 12 abc"]))
    with pytest.raises(CSVFormatError) as exc:
        read_siim_csv(p)
    assert "row 3" in str(exc.value) and "bad.csv" in str(exc.value)
    p.write_bytes(_siim_text(["Image,Mask", "a,1 2"]))
    with pytest.raises(CSVFormatError, match="header"):
        read_siim_csv(p)


def test_kaggle_csv_quirks(tmp_path: Path) -> None:
    p = tmp_path / "train_masks.csv"
    p.write_bytes(_siim_text(["subject,img,pixels", "1,1,5 3", "1,2,", "1,2,", "01,3,1 1"]))
    rows, stats = read_kaggle_uns_csv(p)
    assert rows == {"1_1": "5 3", "1_2": "", "1_3": "1 1"}
    assert stats.n_duplicates == 1
    p.write_text("subject,img,pixels\n1,1,5 3\n1,1,6 3\n")
    with pytest.raises(CSVFormatError, match="row 3"):
        read_kaggle_uns_csv(p)
    p.write_text("subject,img\n1,1\n")
    with pytest.raises(CSVFormatError, match="header"):
        read_kaggle_uns_csv(p)
    p.write_text("subject,img,pixels\nx,1,\n")
    with pytest.raises(CSVFormatError, match="row 2"):
        read_kaggle_uns_csv(p)


def test_kaggle_dataset_with_malformed_csv_row(tmp_path: Path) -> None:
    """A malformed RLE row becomes a bad file whose reason names the CSV and the image."""
    import tifffile

    from engine.datasets import open_dataset

    (tmp_path / "train").mkdir()
    for f in (1, 2):
        tifffile.imwrite(tmp_path / "train" / f"3_{f}.tif", np.zeros((6, 5), np.uint8))
    (tmp_path / "train_masks.csv").write_text("subject,img,pixels\n3,1,2 4\n3,2,1 2 3\n")
    ds = open_dataset(tmp_path, workspace=tmp_path / "ws")
    assert ds.layout == "kaggle_uns" and ds.case_ids == ["3_1"]
    assert ds.load_mask("3_1").sum() == 4
    (bad,) = ds.bad_files
    assert "train_masks.csv" in bad.reason and "3_2" in bad.reason and "odd" in bad.reason


# ---------------------------------------------------------------------------------------------
# writers


def _random_masks(n: int, shape: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = np.zeros(shape, np.uint8)
        if i % 3:
            for _ in range(i % 3):
                y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
                m[y:y + 3, x:x + 4] = 1
        out.append(m)
    return out


def test_kaggle_writers_round_trip(tmp_path: Path) -> None:
    ms = _random_masks(7, (20, 16))
    sub = write_kaggle_uns_submission(tmp_path / "sub.csv", [(i + 1, m) for i, m in enumerate(ms)])
    rows = list(csv.reader(io.StringIO(sub.read_text())))
    assert rows[0] == ["img", "pixels"] and len(rows) == 8
    for (img, pixels), m in zip(rows[1:], ms):
        np.testing.assert_array_equal(decode(pixels, m.shape, "kaggle"), m)
    train = write_kaggle_uns_train_csv(tmp_path / "train_masks.csv", [(f"5_{i + 1}", m) for i, m in enumerate(ms)])
    back, _ = read_kaggle_uns_csv(train)
    for i, m in enumerate(ms):
        np.testing.assert_array_equal(decode(back[f"5_{i + 1}"], m.shape, "kaggle"), m)


def test_siim_writers_round_trip(tmp_path: Path) -> None:
    ms = _random_masks(6, (24, 24), seed=3)
    ids = [f"1.2.{i}" for i in range(6)]
    p = write_siim_csv(tmp_path / "train.csv", zip(ids, ms))
    rows, stats = read_siim_csv(p)
    from scipy import ndimage

    for i, m in zip(ids, ms):
        n_regions = ndimage.label(m, structure=np.ones((3, 3)))[1]
        assert len(rows[i]) == n_regions  # one row per region
        np.testing.assert_array_equal(decode_union(rows[i], m.shape, "siim"), m)
    p2 = write_siim_submission(tmp_path / "sub.csv", zip(ids, ms))
    rows2, stats2 = read_siim_csv(p2)
    assert stats2.n_rows == len(ids)  # one row per image
    for i, m in zip(ids, ms):
        assert len(rows2[i]) == (1 if m.any() else 0)
        np.testing.assert_array_equal(decode_union(rows2[i], m.shape, "siim"), m)
