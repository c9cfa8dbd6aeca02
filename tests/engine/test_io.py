"""Image and mask readers: PNG/JPEG/BMP/TIFF, DICOM (rescale, VOI, MONOCHROME1, compression), masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import MaskError, MissingPluginError, ReadError
from engine.io import (
    decode_mask_array,
    image_size,
    load_image,
    read_image,
    read_mask,
    reader_kind,
    to_chw_float,
    write_mask_png,
)
from tests.support import badinput as B

# ---------------------------------------------------------------------------------------------
# raster formats


def test_png_modes(tmp_path: Path) -> None:
    g = B.gradient(20, 30)
    rgb = np.stack([g, 255 - g, g // 2], -1)
    arr, meta = read_image(B.png(tmp_path / "l.png", g))
    np.testing.assert_array_equal(arr, g)
    assert meta["channels"] == 1 and meta["bit_depth"] == 8 and (meta["height"], meta["width"]) == (20, 30)
    arr, meta = read_image(B.png(tmp_path / "rgb.png", rgb))
    np.testing.assert_array_equal(arr, rgb)
    assert meta["channels"] == 3
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 128, np.uint8)], -1)
    arr, meta = read_image(B.png(tmp_path / "rgba.png", rgba))
    assert arr.shape == (20, 30, 4)
    x = to_chw_float(arr, meta)
    assert x.shape == (3, 20, 30)  # alpha dropped
    np.testing.assert_allclose(x, rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    # palette PNG → RGB through the palette
    pal = Image.fromarray((g % 3).astype(np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 200, 0, 0, 0, 250, 0] + [0] * 759)
    pal.save(tmp_path / "p.png")
    arr, meta = read_image(tmp_path / "p.png")
    assert arr.shape == (20, 30, 3)
    np.testing.assert_array_equal(arr[g % 3 == 1], np.tile([200, 0, 0], ((g % 3 == 1).sum(), 1)))
    # 16-bit grey
    g16 = (g.astype(np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    arr, meta = read_image(tmp_path / "g16.png")
    assert arr.dtype == np.uint16 and meta["bit_depth"] == 16
    np.testing.assert_array_equal(arr, g16)
    # full-width 16-bit data has no known range: min-max scaled (documented in to_chw_float)
    expect = (g16 - g16.min()) / float(g16.max() - g16.min())
    np.testing.assert_allclose(to_chw_float(arr, meta)[0], expect, atol=1e-6)


def test_jpeg_and_bmp(tmp_path: Path) -> None:
    g = B.gradient(32, 24)
    Image.fromarray(g).save(tmp_path / "a.jpg", quality=95)
    arr, meta = read_image(tmp_path / "a.jpg")
    assert arr.shape == (32, 24) and meta["format"] == "jpg"
    assert np.abs(arr.astype(int) - g).mean() < 6  # lossy but close
    Image.fromarray(g).save(tmp_path / "a.bmp")
    arr, meta = read_image(tmp_path / "a.bmp")
    np.testing.assert_array_equal(arr, g)
    assert image_size(tmp_path / "a.bmp") == (32, 24)


def test_tiff_8_16_and_multipage(tmp_path: Path) -> None:
    g = B.gradient(40, 50)
    arr, meta = read_image(B.tiff(tmp_path / "a.tif", g, compression="lzw"))
    np.testing.assert_array_equal(arr, g)
    assert meta["bit_depth"] == 8
    g12 = (g.astype(np.uint16) * 16)
    arr, meta = read_image(B.tiff(tmp_path / "b.tiff", g12))
    assert arr.dtype == np.uint16 and meta["bit_depth"] == 16
    np.testing.assert_array_equal(arr, g12)
    stack = np.stack([g, 255 - g, g // 2])
    B.tiff(tmp_path / "s.tif", stack, photometric="minisblack")
    with pytest.raises(ReadError) as exc:
        read_image(tmp_path / "s.tif")
    assert "s.tif" in str(exc.value) and "multi-page" in str(exc.value) and "page" in exc.value.hint
    arr, meta = read_image(tmp_path / "s.tif", page=1)
    np.testing.assert_array_equal(arr, 255 - g)
    assert meta["n_pages"] == 3
    with pytest.raises(ReadError, match="page 5"):
        read_image(tmp_path / "s.tif", page=5)
    assert image_size(tmp_path / "a.tif") == (40, 50)


def test_tiff_size_from_header_matches_tifffile(tmp_path: Path) -> None:
    import tifffile

    from engine.io.raster import classic_tiff_info

    def _classic_tiff_size(p):
        info = classic_tiff_info(p)
        return None if info is None else (info["height"], info["width"])

    variants = {"u8": np.zeros((37, 53), np.uint8), "u16": np.zeros((37, 53), np.uint16),
                "rgb": np.zeros((37, 53, 3), np.uint8), "tall": np.zeros((70000, 3), np.uint8)}
    for name, arr in variants.items():
        for bo in "<>":
            for comp in (None, "zlib"):
                p = tmp_path / f"{name}{bo == '>'}{comp}.tif"
                tifffile.imwrite(p, arr, byteorder=bo, compression=comp)
                assert _classic_tiff_size(p) == arr.shape[:2]
                assert image_size(p) == arr.shape[:2]
    facts = classic_tiff_info(tmp_path / "rgbFalseNone.tif")
    assert facts == {"height": 37, "width": 53, "photometric": 2, "samples": 3, "bits": 0, "single_page": 1,
                     "compression": 1, "orientation": 1}
    assert classic_tiff_info(tmp_path / "u16TrueNone.tif")["bits"] == 16
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 37, 53), np.uint8), photometric="minisblack")
    facts = classic_tiff_info(stack)
    assert facts["single_page"] == 0 and facts["bits"] == 8 and facts["photometric"] == 1
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.zeros((3, 37, 53), np.uint8), photometric="rgb", planarconfig="separate")
    assert image_size(planar) == (37, 53)
    big = tmp_path / "big.tif"  # BigTIFF: not parsed by the fast path, tifffile answers
    tifffile.imwrite(big, np.zeros((37, 53), np.uint8), bigtiff=True)
    assert _classic_tiff_size(big) is None and image_size(big) == (37, 53)
    for junk in (b"II*\x00garbage" * 10, b"II*\x00\x08\x00\x00\x00\x00\x00", b"MM", b""):
        bad = tmp_path / "bad.tif"
        bad.write_bytes(junk)
        assert _classic_tiff_size(bad) is None
        with pytest.raises(ReadError, match="bad.tif"):
            image_size(bad)


def test_fast_tiff_path_gives_tifffiles_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8-bit grey lossless TIFFs are decoded by libtiff (imagecodecs): same pixels and meta as tifffile; every
    other kind still goes through tifffile; corrupt data is an error either way."""
    import tifffile

    from engine.io import raster

    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (61, 47), dtype=np.uint8)
    grey[10:20] = 7  # runs that LZW/PackBits compress
    calls: list[str] = []
    real = raster.read_plain_tiff

    def spy(path, **kw):
        out = real(path, **kw)
        calls.append("fast" if out is not None else "tifffile")
        return out

    monkeypatch.setattr(raster, "read_plain_tiff", spy)
    fast = {}
    for bo in "<>":
        for comp, pred in ((None, None), ("lzw", None), ("lzw", 2), ("zlib", None), ("adobe_deflate", None)):
            p = tmp_path / f"g{bo == '>'}{comp}{pred}.tif"
            tifffile.imwrite(p, grey, byteorder=bo, compression=comp, predictor=pred, photometric="minisblack")
            arr, meta = raster.read_tiff(p)
            assert calls.pop() == "fast", p.name
            np.testing.assert_array_equal(arr, grey)
            fast[p.name] = meta
    with tifffile.TiffFile(tmp_path / "gFalselzwNone.tif") as tf:
        np.testing.assert_array_equal(tf.asarray(), grey)
    monkeypatch.setattr(raster, "read_plain_tiff", lambda path, **kw: None)  # the tifffile path's meta
    for name, meta in fast.items():
        assert raster.read_tiff(tmp_path / name)[1] == meta
    monkeypatch.setattr(raster, "read_plain_tiff", spy)
    others = {"u16": (grey.astype(np.uint16) * 257, {}), "rgb": (np.stack([grey] * 3, -1), {}),
              "white": (grey, {"photometric": "miniswhite"})}
    for name, (arr, kw) in others.items():
        p = tmp_path / f"{name}.tif"
        tifffile.imwrite(p, arr, **kw)
        out, _ = raster.read_tiff(p)
        assert calls.pop() == "tifffile", name
        np.testing.assert_array_equal(out, 255 - grey if name == "white" else arr)
    # corrupt compressed data behind a valid header: a ReadError naming the file, never garbage pixels
    for comp in ("lzw", "zlib", "packbits"):
        good = tmp_path / f"ok_{comp}.tif"
        tifffile.imwrite(good, grey, compression=comp, photometric="minisblack")
        with tifffile.TiffFile(good) as tf:
            off, count = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
        data = bytearray(good.read_bytes())
        data[off: off + count // 2] = rng.integers(0, 256, count // 2, dtype=np.uint8).tobytes()
        bad = tmp_path / f"corrupt_{comp}.tif"
        bad.write_bytes(bytes(data))
        with pytest.raises(ReadError, match=f"corrupt_{comp}.tif"):
            raster.read_tiff(bad)
        with pytest.raises(ReadError, match=f"corrupt_{comp}.tif"):
            read_mask(bad)
        calls.clear()
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([grey, grey]), photometric="minisblack")
    with pytest.raises(ReadError, match="multi-page"):
        raster.read_tiff(stack)
    np.testing.assert_array_equal(raster.read_tiff(stack, page=1)[0], grey)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="unsupported file type") as exc:
        reader_kind(tmp_path / "x.gifx")
    assert "x.gifx" in str(exc.value)
    with pytest.raises(ReadError) as exc:
        read_image(tmp_path / "nothere.png")
    assert "nothere.png" in str(exc.value)


def test_to_chw_float_contract() -> None:
    a8 = np.array([[0, 255]], np.uint8)
    x = to_chw_float(a8)
    assert x.dtype == np.float32 and x.shape == (1, 1, 2) and x.tolist() == [[[0.0, 1.0]]]
    a12 = np.array([[0, 4095]], np.uint16)
    assert to_chw_float(a12, {"bit_depth": 12}).tolist() == [[[0.0, 1.0]]]
    a16 = np.array([[100, 300]], np.uint16)  # no bit depth → min-max
    assert to_chw_float(a16, {}).tolist() == [[[0.0, 1.0]]]
    f = np.array([[-5.0, 5.0]], np.float32)
    assert to_chw_float(f).tolist() == [[[0.0, 1.0]]]
    la = np.zeros((2, 3, 2), np.uint8)
    assert to_chw_float(la).shape == (1, 2, 3)
    with pytest.raises(ReadError):
        to_chw_float(np.zeros((2, 2, 2, 2), np.uint8))


# ---------------------------------------------------------------------------------------------
# DICOM


def test_dicom_rescale_and_window(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 2000, 4095]] * 2, np.uint16)
    p = B.dicom(tmp_path / "ct.dcm", stored, bits_stored=12, slope=2.0, intercept=-1024.0, window=(976.0, 2001.0))
    raw, meta = read_image(p, raw=True)
    np.testing.assert_allclose(raw[0], stored[0] * 2.0 - 1024.0)
    assert meta["rescale"] == [2.0, -1024.0] and meta["voi"] == "raw"
    out, meta = read_image(p)
    assert meta["voi"] == "window center/width" and meta["window"] == [976.0, 2001.0]
    # linear window (PS3.3 C.11.2.1.2): values below c-0.5-(w-1)/2 → 0, above → 1
    expected = np.clip((stored[0] * 2.0 - 1024.0 - (976.0 - 0.5)) / 2000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    assert out[0, 0] == 0.0 and out[0, 3] == 1.0 and 0 < out[0, 1] < 1
    # explicit window overrides the file's
    out2, meta2 = read_image(p, window=(1000.0, 8001.0))
    assert meta2["voi"] == "explicit window"
    expected2 = np.clip((stored[0] * 2.0 - 1024.0 - 999.5) / 8000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(out2[0], expected2, atol=1e-6)
    x, meta3 = load_image(p)
    assert x.shape == (1, 2, 4) and x.dtype == np.float32


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.array([[0, 1, 2, 3]], np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.add_new(0x00283006, "US", [0, 4000, 1000, 65535])  # LUTData, non-monotonic: only a LUT does this
    p = B.dicom(tmp_path / "lut.dcm", stored, bits_stored=16, extra={"VOILUTSequence": Sequence([item])})
    out, meta = read_image(p)
    assert meta["voi"] == "VOI LUT sequence"
    np.testing.assert_allclose(out[0], [0.0, 4000 / 65535, 1000 / 65535, 1.0], atol=1e-4)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    g = B.gradient(8, 8)
    a, _ = read_image(B.dicom(tmp_path / "m2.dcm", g))
    b, meta = read_image(B.dicom(tmp_path / "m1.dcm", 255 - g, photometric="MONOCHROME1"))
    assert meta["inverted"] is True and meta["photometric"] == "MONOCHROME1"
    np.testing.assert_allclose(a, b, atol=1e-6)  # same picture after inversion


@pytest.mark.parametrize("dtype,bits", [(np.uint8, 8), (np.uint16, 12), (np.uint16, 16), (np.int16, 16)])
def test_dicom_bit_depths(tmp_path: Path, dtype, bits: int) -> None:
    hi = 2 ** bits - 1 if np.dtype(dtype).kind == "u" else 2 ** (bits - 1) - 1
    lo = 0 if np.dtype(dtype).kind == "u" else -(2 ** (bits - 1))
    arr = np.array([[lo, (lo + hi) // 2, hi]], dtype)
    out, meta = read_image(B.dicom(tmp_path / f"b{bits}.dcm", arr, bits_stored=bits))
    assert meta["bit_depth"] == bits and meta["voi"] == "min-max"
    np.testing.assert_allclose(out[0], [0.0, ((lo + hi) // 2 - lo) / (hi - lo), 1.0], atol=1e-4)
    raw, _ = read_image(tmp_path / f"b{bits}.dcm", raw=True)
    np.testing.assert_array_equal(raw[0], arr[0].astype(np.float32))


def test_dicom_rle_lossless_decodes(tmp_path: Path) -> None:
    import pydicom
    from pydicom.uid import RLELossless

    g = B.gradient(16, 16)
    p = B.dicom(tmp_path / "plain.dcm", g)
    ds = pydicom.dcmread(p)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    out, meta = read_image(tmp_path / "rle.dcm")
    assert meta["transfer_syntax"] == RLELossless
    plain, _ = read_image(p)
    np.testing.assert_array_equal(out, plain)


def test_dicom_missing_plugin_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom
    from pydicom.pixels.decoders import JPEG2000LosslessDecoder
    from pydicom.uid import JPEG2000Lossless

    g = B.gradient(64, 64)
    ds = pydicom.dcmread(B.dicom(tmp_path / "plain.dcm", g))
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    out, _ = read_image(tmp_path / "j2k.dcm")  # decodes with the plugin present
    np.testing.assert_allclose(out * 255, (g - g.min()) / (g.max() - g.min()) * 255, atol=1e-3)
    monkeypatch.setattr(JPEG2000LosslessDecoder, "_available", {})  # as if no plugin were installed
    with pytest.raises(MissingPluginError) as exc:
        read_image(tmp_path / "j2k.dcm")
    assert "pylibjpeg-openjpeg" in str(exc.value) and "j2k.dcm" in str(exc.value)


def test_dicom_multiframe_needs_frame(tmp_path: Path) -> None:
    frames = np.stack([B.gradient(8, 8, seed=i) for i in range(3)])
    p = B.dicom(tmp_path / "mf.dcm", frames, frames=3)
    with pytest.raises(ReadError, match="multi-frame"):
        read_image(p)
    raw, meta = read_image(p, frame=2, raw=True)
    np.testing.assert_array_equal(raw, frames[2].astype(np.float32))
    assert meta["n_frames"] == 3
    with pytest.raises(ReadError, match="frame 3"):
        read_image(p, frame=3)


def test_dicom_errors_name_the_file(tmp_path: Path) -> None:
    nopix = B.dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(ReadError) as exc:
        read_image(nopix)
    assert "nopix.dcm" in str(exc.value) and "no pixel data" in str(exc.value)
    txt = tmp_path / "report.dcm"
    txt.write_text("not a dicom")
    with pytest.raises(ReadError) as exc:
        read_image(txt)
    assert "report.dcm" in str(exc.value) and "not a DICOM" in str(exc.value)


def test_siim_sample_dicoms_read(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels.decoders import JPEGBaseline8BitDecoder

    paths = sorted((shared_data / "siim-sample").rglob("*.dcm"))
    assert len(paths) == 5
    for p in paths:
        out, meta = read_image(p)
        assert out.shape == (1024, 1024) and out.dtype == np.float32
        assert 0.0 <= out.min() < out.max() <= 1.0
        assert meta["transfer_syntax"] == "1.2.840.10008.1.2.4.50"  # JPEG baseline via pylibjpeg
        assert meta["modality"] == "CR" and meta["photometric"] == "MONOCHROME2"
        assert "PatientName" not in meta and "PatientID" not in meta
    monkeypatch.setattr(JPEGBaseline8BitDecoder, "_available", {})
    with pytest.raises(MissingPluginError, match="pylibjpeg-libjpeg"):
        read_image(paths[0])


# ---------------------------------------------------------------------------------------------
# masks


def test_mask_encodings(tmp_path: Path) -> None:
    d255 = B.disk_mask(20, 20, 5)
    labels, info = read_mask(B.png(tmp_path / "m255.png", d255))
    assert info["encoding"] == "binary255" and info["classes"] == [0, 1]
    np.testing.assert_array_equal(labels, d255 // 255)
    labels, info = read_mask(B.png(tmp_path / "m01.png", d255 // 255))
    assert info["encoding"] == "binary01"
    np.testing.assert_array_equal(labels, d255 // 255)
    # anti-aliased by a resize: many grey levels → thresholded at > 127
    aa = np.array(Image.fromarray(d255).resize((40, 40), Image.BILINEAR))
    labels, info = read_mask(B.png(tmp_path / "aa.png", aa))
    assert info["encoding"] == "antialiased" and set(np.unique(labels)) == {0, 1}
    np.testing.assert_array_equal(labels, (aa > 127).astype(np.uint8))
    # label image 0/1/2
    lab = (B.disk_mask(20, 20, 5) // 255) + (B.disk_mask(20, 20, 2) // 255)
    labels, info = read_mask(B.png(tmp_path / "lab.png", lab))
    assert info["encoding"] == "labels" and info["classes"] == [0, 1, 2]
    # palette PNG keeps the indices
    pal = Image.fromarray(lab.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "pal.png")
    labels, info = read_mask(tmp_path / "pal.png")
    assert info["encoding"] == "palette"
    np.testing.assert_array_equal(labels, lab)
    # RGB colour mask → consecutive ids, black = background
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[lab == 1] = (255, 0, 0)
    rgb[lab == 2] = (0, 0, 255)
    labels, info = read_mask(B.png(tmp_path / "rgb.png", rgb))
    assert info["encoding"] == "rgb" and info["classes"] == [0, 1, 2]
    assert (labels[lab == 0] == 0).all() and len(np.unique(labels[lab == 1])) == 1
    assert labels[lab == 1][0] != labels[lab == 2][0]
    # RGB with equal channels = grey
    labels, info = read_mask(B.png(tmp_path / "grey3.png", np.stack([d255] * 3, -1)))
    assert info["encoding"] == "binary255"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_mask_values_and_classes_match_np_unique(dtype) -> None:
    from engine.io.masks import _unique_small

    rng = np.random.default_rng(3)
    cases = [np.zeros((7, 9)), np.full((7, 9), 255), np.full((7, 9), 3),
             rng.choice([0, 255], (30, 40)), rng.choice([0, 1], (30, 40)), rng.choice([2, 7], (30, 40)),
             rng.choice([0, 1, 2], (30, 40)), rng.integers(0, 32, (30, 40)), rng.integers(0, 250, (30, 40)),
             np.array([[0, 255, 254]]), np.zeros((0, 5))]
    for raw in cases:
        a = raw.astype(dtype)
        assert _unique_small(a) == [int(v) for v in np.unique(a)], a
        if a.size == 0:
            continue
        if len(np.unique(a)) > 128:  # noise: neither a label map nor a blurred two-level mask
            with pytest.raises(MaskError, match="distinct values"):
                decode_mask_array(a)
            continue
        labels, info = decode_mask_array(a)
        assert info["classes"] == [int(v) for v in np.unique(labels)], (a, info)
        assert labels.dtype == np.uint8 and labels.shape == a.shape
        assert not np.shares_memory(labels, a)  # the caller's array is never handed back


def test_mask_decoding_errors(tmp_path: Path) -> None:
    with pytest.raises(MaskError):
        decode_mask_array(np.array([[-1, 0]]))
    noisy = np.random.default_rng(0).integers(0, 255, (20, 20, 3)).astype(np.uint8)
    with pytest.raises(MaskError, match="colours"):
        read_mask(B.png(tmp_path / "noise.png", noisy))
    with pytest.raises(ReadError):
        read_mask(tmp_path / "missing.png")


def test_write_mask_png_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 5, (33, 17)).astype(np.uint8)
    p = write_mask_png(tmp_path / "sub" / "m.png", lab)
    back = np.array(Image.open(p))
    np.testing.assert_array_equal(back, lab)
    labels, info = read_mask(p)
    np.testing.assert_array_equal(labels, lab)
    write_mask_png(tmp_path / "b.png", lab > 2)  # bool accepted
    assert set(np.unique(np.array(Image.open(tmp_path / "b.png")))) == {0, 1}
    with pytest.raises(MaskError):
        write_mask_png(tmp_path / "m.jpg", lab)
    with pytest.raises(MaskError):
        write_mask_png(tmp_path / "f.png", lab.astype(np.float32))
    with pytest.raises(MaskError):
        write_mask_png(tmp_path / "big.png", np.full((2, 2), 300))
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


def test_two_valued_masks_small_value_is_a_class_id_large_is_binary() -> None:
    """{0, 2} is a label map holding only class 2 (e.g. usgra 'vessel' alone); {0, 100} a binary mask."""
    from engine.io.masks import decode_mask_array

    a = np.zeros((4, 5), np.uint8)
    a[1:3, 1:3] = 2
    labels, info = decode_mask_array(a)
    assert info["encoding"] == "labels" and labels.max() == 2 and info["classes"] == [0, 2]
    a[a == 2] = 100
    labels, info = decode_mask_array(a)
    assert info["encoding"] == "binary" and labels.max() == 1 and "100" in info["note"]


@pytest.mark.parametrize("values", [(0, 255), (0, 1), (0,), (255,), (1,), (0, 2), (0, 100), (1, 255), (0, 1, 2),
                                    (0, 7, 255)])
@pytest.mark.parametrize("compression", [None, "lzw", "deflate"])
def test_mask_summary_equals_read_mask(tmp_path: Path, values: tuple[int, ...], compression: str | None) -> None:
    """The index's fast mask summary (plain 8-bit TIFF: min/max and counts, no label map) gives what
    read_mask + a pixel count gives, for binary masks and every mask that falls back."""
    import tifffile

    from engine.io import mask_summary

    rng = np.random.default_rng(len(values))
    a = np.asarray(values, np.uint8)[rng.integers(0, len(values), (37, 53))]
    p = tmp_path / f"m{'-'.join(map(str, values))}.tif"
    tifffile.imwrite(p, a, compression=compression)
    labels, info = read_mask(p)
    want = {"area": int(np.count_nonzero(labels)), "classes": info["classes"], "encoding": info["encoding"],
            "hw": [37, 53]}
    assert mask_summary(p) == want
    png = B.png(tmp_path / "m.png", a)  # the fallback path (not a TIFF) agrees too
    assert mask_summary(png) == want


def test_mask_summary_checks_the_pixel_limit_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tifffile

    from engine.io import mask_summary

    p = tmp_path / "big.tif"
    tifffile.imwrite(p, np.zeros((64, 64), np.uint8), compression="lzw")
    monkeypatch.setenv("SEGWB_MAX_PIXELS", "1000")
    with pytest.raises(ReadError, match="pixel"):
        mask_summary(p)
