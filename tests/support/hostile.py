"""The hostile-input corpus and its checker (generated here; nothing from ../shared/data).

:func:`make_hostile_corpus` writes single files, dataset folders and RLE strings that once
crashed, exhausted memory or gave silently wrong answers, each with its expected outcome.
:func:`run_corpus` runs every input through the readers (``load_image``/``read_mask``),
``info`` (``open_dataset(verify=True)``), ``masks`` and (optionally) ``predict``, and classifies
each outcome as

- ``fine``: OK with the right values;
- ``clear``: the expected project error, naming the file (and the expected content);
- ``unclear``: a project error that does not name the file or misses the expected content;
- ``traceback``: any other exception;
- ``memory``: MemoryError (the process runs under an address-space limit);
- ``silent``: a result with wrong values, or no error where one was due.

Run as a script from the checkout's root (``python -m tests.support.hostile OUT.json [--predict]``) under
``RLIMIT_AS``; the test module does that in a subprocess, and the same script measured the counts before the fixes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import sys
import traceback
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tests.support import badinput as B

# the engine under test: this checkout (run from its root), or another one to measure old code
if os.environ.get("HOSTILE_ENGINE_ROOT"):
    sys.path.insert(0, os.environ["HOSTILE_ENGINE_ROOT"])

Check = Callable[[Any], str | None]  # returns None when the value is right, else what is wrong


# ---------------------------------------------------------------------------------------------
# small helpers on datasets and the CLI (only APIs that existed before the fixes, so the same
# script measures the old code)


def case_ids(ds: Any) -> list[str]:
    return sorted(c.case_id for c in ds.cases)


def bad_paths(ds: Any, reasons: bool = False) -> list[str]:
    return [f"{b.path} {b.reason}" if reasons else str(b.path) for b in ds.bad_files]


def notes_text(ds: Any) -> str:
    return " | ".join(ds.notes)


class EC:
    """Corpus plumbing: pydicom's files, verified opening, the CLI in-process, output checks."""

    @staticmethod
    def pydicom_files() -> list[str]:
        from pydicom.data import get_testdata_files

        return sorted(get_testdata_files())

    @staticmethod
    def checked_dicom(p: str) -> Any:
        from engine.io import load_image

        return load_image(p), p

    @staticmethod
    def dicom_value_check(value: Any) -> str | None:
        (arr, meta), p = value
        if not np.isfinite(arr).all():
            return "non-finite values"
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            return f"values {arr.min()}..{arr.max()} outside [0, 1]"
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
        if "Rows" in ds and tuple(arr.shape[-2:]) != (int(ds.Rows), int(ds.Columns)):
            return f"shape {arr.shape} but the header says {ds.Rows}x{ds.Columns}"
        if str(getattr(ds, "PhotometricInterpretation", "")) == "PALETTE COLOR" and arr.shape[0] != 3:
            return "PALETTE COLOR read as grey indices"
        return None

    DICOM_EXPECT: Any = None

    @staticmethod
    def open_verified(path: Path, ws: Path) -> Any:
        from engine.datasets import open_dataset

        return open_dataset(path, workspace=ws, verify=True)

    @staticmethod
    def cli(argv: list[str]) -> int:
        from engine.__main__ import main

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return main(argv)

    @staticmethod
    def cli_out(argv: list[str]) -> tuple[int, str]:
        from engine.__main__ import main

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            rc = main(argv)
        return rc, buf.getvalue()

    @staticmethod
    def pydicom_folder(dest: Path) -> Path:
        """pydicom's bundled .dcm files copied into one folder (a SIIM-like, unlabelled dataset)."""
        dest.mkdir(parents=True, exist_ok=True)
        for p in EC.pydicom_files():
            if p.lower().endswith(".dcm"):
                shutil.copy(p, dest / Path(p).name)
        return dest

    @staticmethod
    def snapshot(folder: Path) -> list[str]:
        return [str(p) for p in Path(folder).rglob("*") if p.is_file()]

    @staticmethod
    def predict_check(out: Path, rle: Path | None, n: int) -> str | None:
        pngs = sorted(p.name for p in out.glob("*.png")) if out.is_dir() else []
        if len(pngs) != n:
            return f"{len(pngs)} mask files written, {n} expected: {pngs}"
        if rle is not None:
            import csv as _csv

            ids = [r[0] for r in list(_csv.reader(rle.open()))[1:]]
            if len(ids) != n or len(set(ids)) != n:
                return f"RLE rows {ids}: {n} distinct expected"
        return None


EC.DICOM_EXPECT = ("either", EC.dicom_value_check)


# ---------------------------------------------------------------------------------------------
# hand-made headers that claim huge images (files stay small)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(path: Path, h: int, w: int, colour_type: int = 2, rows: int = 64) -> Path:
    """A valid PNG header for an (h, w) RGB image with only ``rows`` rows of (zero) data."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + w * (3 if colour_type == 2 else 1))
    data = b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))
    return path


def tiff_claiming(path: Path, h: int, w: int) -> Path:
    """A classic little-endian deflate TIFF whose IFD claims (h, w) uint8 with one small strip."""
    strip = zlib.compress(b"\x00" * 4096)
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, len(strip))]
    ifd_off = 8
    data_off = ifd_off + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_off) + struct.pack("<H", len(entries)))
    for tag, typ, cnt, val in entries:
        if tag == 273:
            val = data_off
        out += struct.pack("<HHI", tag, typ, cnt) + (struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
    out += struct.pack("<I", 0) + strip
    path.write_bytes(bytes(out))
    return path


def dicom_claiming(path: Path, h: int, w: int) -> Path:
    """A deflated DICOM (tiny file) whose uint16 pixel data really is h × w zeros."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    p = B.dicom(path, np.zeros((2, 2), np.uint16))
    import pydicom

    ds = pydicom.dcmread(p)
    ds.Rows, ds.Columns = h, w
    ds.PixelData = bytes(h * w * 2)  # zeros: deflates to almost nothing (allocated once, here)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(p, enforce_file_format=True)
    del ds
    return p


# ---------------------------------------------------------------------------------------------
# expected-value checks


def _img_ok(shape: tuple[int, ...] | None = None, lo: float = 0.0, hi: float = 1.0,
            extra: Callable[[np.ndarray], str | None] | None = None) -> Check:
    def check(x: Any) -> str | None:
        arr = x[0]
        if not np.isfinite(arr).all():
            return "non-finite values"
        if shape is not None and tuple(arr.shape) != shape:
            return f"shape {arr.shape} != {shape}"
        if arr.size and (arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6):
            return f"values {arr.min()}..{arr.max()} outside {lo}..{hi}"
        return extra(arr) if extra else None
    return check


def _mask_ok(expected: np.ndarray | None = None, classes: list[int] | None = None) -> Check:
    def check(x: Any) -> str | None:
        labels, info = x
        if expected is not None and not np.array_equal(labels, expected):
            return f"mask differs from the expected one (encoding {info.get('encoding')})"
        if classes is not None and sorted(int(v) for v in np.unique(labels)) != classes:
            return f"classes {sorted(int(v) for v in np.unique(labels))} != {classes}"
        return None
    return check


# ---------------------------------------------------------------------------------------------
# the corpus


def make_hostile_corpus(root: Path) -> dict[str, Any]:
    """Write the corpus under ``root``.

    Returns:
        ``{"images": [(label, path, expect)], "masks": [...], "rle": [(label, text, shape, conv)],
        "datasets": [(label, path, expect_fn)], "predict": {...}}`` where ``expect`` is a
        :data:`Check` for an OK result or ``("error", keyword)``.
    """
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    F = root / "files"
    F.mkdir(exist_ok=True)
    g = B.gradient(40, 48)
    images: list[tuple[str, Path, Any]] = []
    masks: list[tuple[str, Path, Any]] = []

    images.append(("png ok", B.png(F / "ok.png", g), _img_ok((1, 40, 48))))
    one = (B.disk_mask(40, 48, 10) > 0)
    Image.fromarray(one).convert("1").save(F / "onebit.png")
    images.append(("1-bit png", F / "onebit.png",
                   _img_ok((1, 40, 48), extra=lambda a: None if set(np.unique(a)) == {0.0, 1.0}
                           else f"1-bit values read as {sorted(set(np.unique(a).tolist()))[:4]}")))
    Image.fromarray(g).save(F / "still.gif")
    images.append(("gif", F / "still.gif", _img_ok(
        (3, 40, 48), extra=lambda a: None if np.allclose(a[0], g / 255.0, atol=1 / 255) and np.array_equal(a[0], a[2])
        else "grey GIF read with wrong values")))
    shutil.copy(F / "ok.png", F / "png_without_suffix")
    images.append(("suffix-less png", F / "png_without_suffix", _img_ok((1, 40, 48))))
    (F / "notes_without_suffix").write_text("just text\n")
    images.append(("suffix-less text", F / "notes_without_suffix", ("error", "")))
    images.append(("19000² RGB png (small file)", png_claiming(F / "huge.png", 19000, 19000), ("error", "limit")))
    images.append(("truncated png", B.truncate(B.png(F / "trunc.png", B.gradient(seed=3)), 0.4), ("error", "")))
    (F / "zero.png").write_bytes(b"")
    images.append(("zero-byte png", F / "zero.png", ("error", "")))
    nan = B.gradient(40, 48).astype(np.float32)
    nan.flat[:100] = np.nan
    B.tiff(F / "nan.tif", nan)
    images.append(("float tiff with 100 NaN", F / "nan.tif", _img_ok(
        (1, 40, 48), extra=lambda a: None if a.std() > 0.05 else "image lost its contrast")))
    B.tiff(F / "allnan.tif", np.full((8, 8), np.nan, np.float32))
    images.append(("float tiff all NaN", F / "allnan.tif", ("error", "NaN")))
    inf = B.gradient(40, 48).astype(np.float32)
    inf[0, 0] = np.inf
    B.tiff(F / "inf.tif", inf)
    images.append(("float tiff with +Inf", F / "inf.tif", _img_ok(
        (1, 40, 48), extra=lambda a: None if a.std() > 0.05 else "image lost its contrast")))
    images.append(("50000² deflate tiff (small file)", tiff_claiming(F / "huge.tif", 50000, 50000), ("error", "limit")))
    images.append(("truncated tiff", B.truncate(B.tiff(F / "trunc.tif", B.gradient(seed=4), compression="zlib"), 0.3),
                   ("error", "")))
    images.append(("half-truncated tiff header", B.truncate(B.tiff(F / "trunc2.tif", B.gradient(seed=5)), 0.004),
                   ("error", "")))
    images.append(("multi-page tiff", B.tiff(F / "stack.tif", np.stack([g, g])), ("error", "page")))
    images.append(("dicom ok", B.dicom(F / "ok.dcm", (g.astype(np.uint16) * 16)), _img_ok((1, 40, 48))))
    images.append(("dicom RescaleSlope 0", B.dicom(F / "slope0.dcm", g.astype(np.uint16), slope=0),
                   _img_ok((1, 40, 48), extra=lambda a: None if a.std() > 0.05 else "blank image")))
    pal = B.dicom(F / "palette.dcm", (g % 4).astype(np.uint8), photometric="PALETTE COLOR",
                  extra={"RedPaletteColorLookupTableDescriptor": [4, 0, 8],
                         "GreenPaletteColorLookupTableDescriptor": [4, 0, 8],
                         "BluePaletteColorLookupTableDescriptor": [4, 0, 8],
                         "RedPaletteColorLookupTableData": bytes([255, 0, 0, 40]),
                         "GreenPaletteColorLookupTableData": bytes([0, 255, 0, 40]),
                         "BluePaletteColorLookupTableData": bytes([0, 0, 255, 40])})
    want_rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [40, 40, 40]], np.float32)[g % 4] / 255.0

    def palette_right(a: np.ndarray) -> str | None:
        if a.shape[0] != 3:
            return f"palette image read with {a.shape[0]} channel(s) (grey indices)"
        return None if np.allclose(a.transpose(1, 2, 0), want_rgb, atol=0.01) else "palette colours wrong"
    images.append(("PALETTE COLOR dicom", pal, _img_ok((3, 40, 48), extra=palette_right)))
    half = B.dicom(F / "half.dcm", B.gradient(64, 64).astype(np.uint16))
    images.append(("half-truncated dicom", B.truncate(half, 0.5), ("error", "truncated")))
    images.append(("multi-frame dicom", B.dicom(F / "frames.dcm", np.stack([g, g]).astype(np.uint8), frames=2),
                   ("error", "frame")))
    images.append(("dicom without pixels", B.dicom(F / "nopix.dcm", None), ("error", "pixel")))
    (F / "report.dcm").write_text("a radiology report\n")
    images.append(("text named .dcm", F / "report.dcm", ("error", "DICOM")))
    images.append(("12000² deflated dicom (small file)", dicom_claiming(F / "huge.dcm", 12000, 12000),
                   ("error", "limit")))
    images.append(("16000² deflated dicom, inflating past the cap (small file)",
                   dicom_claiming(F / "huge2.dcm", 16000, 16000), ("error", "limit")))

    # masks
    d = B.disk_mask(40, 48, 10)
    masks.append(("mask {0,100}", B.png(F / "m100.png", (d > 0).astype(np.uint8) * 100),
                  _mask_ok((d > 0).astype(np.uint8))))
    three = (d > 0).astype(np.uint8) * 127
    three[:, :10] = 255
    masks.append(("mask {0,127,255}", B.png(F / "m3.png", three), _mask_ok(classes=[0, 127, 255])))
    lab39 = (np.arange(40 * 48).reshape(40, 48) // 50 % 39).astype(np.uint8)
    masks.append(("mask with 39 labels", B.png(F / "m39.png", lab39), _mask_ok(lab39)))
    aa = np.array(Image.fromarray(B.disk_mask(20, 24, 6)).resize((48, 40), Image.BILINEAR))
    masks.append(("anti-aliased mask", B.png(F / "maa.png", aa), _mask_ok((aa > 127).astype(np.uint8))))
    masks.append(("noise as a mask",
                  B.png(F / "mnoise.png", np.random.default_rng(0).integers(0, 256, (40, 48)).astype(np.uint8)),
                  ("error", "values")))
    gifm = Image.fromarray((d > 0).astype(np.uint8), mode="P")
    gifm.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    gifm.save(F / "mask.gif")
    masks.append(("gif mask", F / "mask.gif", _mask_ok((d > 0).astype(np.uint8))))
    fm = (d > 0).astype(np.float32)
    fm[0, 0] = np.nan
    masks.append(("float mask with NaN", B.tiff(F / "mnan.tif", fm), ("error", "NaN")))
    masks.append(("1-bit mask", F / "onebit.png", _mask_ok(one.astype(np.uint8))))

    rle = [("run value 99999999999999999999", "99999999999999999999 3", (8, 8), "kaggle"),
           ("non-ASCII digit", "1 ²", (8, 8), "kaggle"),
           ("int64 max length", "6 9223372036854775807", (8, 8), "kaggle"),
           ("int64 max length (siim)", "6 9223372036854775807", (8, 8), "siim"),
           ("huge siim offsets", " ".join(["4611686018427387903", "1"] * 4), (8, 8), "siim")]

    datasets = _make_datasets(root / "datasets")
    return {"images": images, "masks": masks, "rle": rle, "datasets": datasets,
            "predict": _make_predict_inputs(root / "predict")}


def _siim(root: Path, sops: list[str], csv_text: str | None, **kw: Any) -> Path:
    for i, sop in enumerate(sops):
        B.dicom(root / "dicom-images-train" / f"st{i}" / f"{i}.dcm" if kw.get("fixed_names") else
                root / "dicom-images-train" / f"st{i}" / f"{sop}.dcm", B.gradient(16, 16, seed=i), sop=sop)
    if csv_text is not None:
        (root / "train-rle.csv").write_text(csv_text)
    return root


def _make_datasets(D: Path) -> list[tuple[str, Path, Callable[[Any, dict], str | None]]]:
    """Dataset folders with a check ``(dataset, ctx) -> problem or None`` (ctx: outputs of masks)."""
    out: list[tuple[str, Path, Callable[[Any, dict], str | None]]] = []
    sops = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    _siim(D / "siim_pixels_header", sops, "ImageId,Pixels\n1.2.3.1,5 4\n1.2.3.2,-1\n1.2.3.3,-1\n")
    out.append(("SIIM CSV header ImageId,Pixels", D / "siim_pixels_header",
                lambda ds, ctx: None if sum(c.labelled for c in ds.cases) == 3 or "Pixels" in notes_text(ds)
                else "CSV ignored, every image unlabelled, no note"))
    _siim(D / "siim_empty_csv", sops, "")
    out.append(("empty SIIM CSV", D / "siim_empty_csv",
                lambda ds, ctx: None if ("empty" in notes_text(ds).lower()
                                         or any("train-rle.csv" in b for b in bad_paths(ds)))
                else "empty CSV ignored without a note"))
    _siim(D / "siim_bad_rows", sops + ["1.2.3.4"],
          "ImageId,EncodedPixels\n1.2.3.1,5 4\n1.2.3.2\n1.2.3.3,-3 4\n1.2.3.4,-1\n")
    out.append(("SIIM CSV with a short row and a negative offset", D / "siim_bad_rows",
                lambda ds, ctx: None if sum(c.labelled for c in ds.cases) == 2 and len(ds.bad_files) == 2
                else f"{sum(c.labelled for c in ds.cases)} labelled, {len(ds.bad_files)} bad (want 2 and 2)"))
    K = D / "kaggle_conflict"
    for f in (1, 2, 3):
        B.tiff(K / "train" / f"1_{f}.tif", B.gradient(8, 8, seed=f))
    (K / "train_masks.csv").write_text("subject,img,pixels\n1,1,1 3\n1,2,\n1,3,2 2\n1,3,5 2\n")
    out.append(("Kaggle CSV with a conflicting duplicate", K,
                lambda ds, ctx: None if sum(c.labelled for c in ds.cases) == 2 and len(ds.bad_files) == 1
                else f"{sum(c.labelled for c in ds.cases)} labelled, {len(ds.bad_files)} bad (want 2 and 1)"))
    K2 = D / "kaggle_overflow"
    for f in (1, 2):
        B.tiff(K2 / "train" / f"1_{f}.tif", B.gradient(8, 8, seed=f))
    (K2 / "train_masks.csv").write_text("subject,img,pixels\n1,1,6 9223372036854775807\n1,2,1 ²\n")
    out.append(("Kaggle CSV with overflowing and non-ASCII runs", K2,
                lambda ds, ctx: None if (len(ds.bad_files) == 2
                                         and not any(c.labelled and c.mask_area > 64 for c in ds.cases))
                else f"bad files {len(ds.bad_files)}, areas {[c.mask_area for c in ds.cases]}"))
    S = D / "siim_dup_sop"
    B.dicom(S / "a" / "x1.dcm", B.gradient(16, 16, seed=1), sop="1.2.3.7")
    B.dicom(S / "b" / "x2.dcm", B.gradient(16, 16, seed=2), sop="1.2.3.7")
    B.dicom(S / "c" / "1.2.3.8.dcm", B.gradient(16, 16, seed=3), sop="1.2.3.8")
    out.append(("duplicate SOPInstanceUID", S,
                lambda ds, ctx: None if case_ids(ds) == ["1.2.3.8"] and sum("x1.dcm" in b and "x2.dcm" in b
                                                                             for b in bad_paths(ds, reasons=True)) >= 1
                else f"cases {case_ids(ds)}, bad {bad_paths(ds, reasons=True)}"))
    T = D / "siim_traversal"
    for i, sop in enumerate(["../../../escaped", "/tmp/segwb-absolute-escape", "1.2.3.9"]):
        B.dicom(T / f"s{i}" / f"f{i}.dcm", B.gradient(16, 16, seed=i), sop=sop)
    (T / "train-rle.csv").write_text("ImageId,EncodedPixels\nf0,5 3\nf1,5 3\nf2,-1\n")
    out.append(("SOPInstanceUIDs with ../ and absolute paths (masks --out)", T,
                lambda ds, ctx: ctx.get("escape")))
    L = D / "paired_link"
    B.png(L / "images" / "a.png", B.gradient(16, 16))
    B.png(L / "masks" / "a.png", B.disk_mask(16, 16, 4))
    os.symlink("/", L / "images" / "root")
    out.append(("symlink to / inside a dataset", L,
                lambda ds, ctx: None if len(ds) == 1 and ds.scan_stats.get("n_files", 0) < 10
                else f"{len(ds)} cases, {ds.scan_stats.get('n_files')} files walked"))
    U = D / "unrelated"
    U.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        (U / f"doc{i}.txt").write_text("hello")
    (U / "slides.pptx").write_bytes(b"PK\x03\x04")
    B.png(U / "logo.png", B.gradient(16, 16))
    out.append(("folder of unrelated files", U,
                lambda ds, ctx: None if "not used" in notes_text(ds) or "ignored" in notes_text(ds)
                else "opens without a word about the ignored files"))
    M = D / "paired_grey100"
    for i in range(2):
        B.png(M / "images" / f"c{i}.png", B.gradient(16, 16, seed=i))
        B.png(M / "masks" / f"c{i}.png", (B.disk_mask(16, 16, 4 + i) > 0).astype(np.uint8) * 100)
    out.append(("paired masks {0,100}", M,
                lambda ds, ctx: None if all(c.mask_area > 0 for c in ds.cases) and len(ds) == 2
                else f"mask areas {[c.mask_area for c in ds.cases]}"))
    H = D / "paired_huge"
    B.png(H / "images" / "ok.png", B.gradient(16, 16))
    B.png(H / "masks" / "ok.png", B.disk_mask(16, 16, 4))
    png_claiming(H / "images" / "huge.png", 19000, 19000)
    out.append(("dataset with a 19000² png", H,
                lambda ds, ctx: None if case_ids(ds) == ["ok"] and any("huge.png" in b for b in bad_paths(ds))
                else f"cases {case_ids(ds)}, bad {bad_paths(ds)}"))
    out += _make_interop_datasets(D / "interop")
    return out


def _make_predict_inputs(P: Path) -> dict[str, Any]:
    from PIL import Image

    P.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([B.gradient(64, 64, seed=s) for s in range(3)], -1)
    Image.fromarray(rgb).save(P / "a.jpg")
    Image.fromarray(rgb).save(P / "a.png")
    Image.fromarray(rgb).save(P / "a.bmp")
    (P / "sub").mkdir(exist_ok=True)
    Image.fromarray(rgb[::-1]).save(P / "sub" / "a.png")
    return {"inputs": [P / "a.jpg", P / "a.png", P / "a.bmp", P / "sub" / "a.png"]}


# ---------------------------------------------------------------------------------------------
# running and classifying


def _classify_error(exc: BaseException, path: str | None, keyword: str | None) -> tuple[str, str]:
    from engine.errors import WorkbenchError

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError):
        return "memory", text
    if not isinstance(exc, WorkbenchError):
        return "traceback", text + "\n" + "".join(traceback.format_exception(exc)[-3:])
    if path and Path(path).name not in str(exc):
        return "unclear", text + " (does not name the file)"
    if keyword and keyword.lower() not in str(exc).lower():
        return "unclear", text + f" (expected it to mention {keyword!r})"
    bad_flags = [f for f in ("--frame", "--page") if f in str(exc)]
    if bad_flags:
        return "unclear", text + f" (names CLI flags that do not exist: {bad_flags})"
    return "clear", text


def _run_one(fn: Callable[[], Any], path: str | None, expect: Any) -> tuple[str, str]:
    either = isinstance(expect, tuple) and expect[0] == "either"
    try:
        value = fn()
    except BaseException as exc:  # noqa: BLE001 - classified
        if isinstance(exc, KeyboardInterrupt):
            raise
        keyword = expect[1] if isinstance(expect, tuple) and not either else None
        outcome, text = _classify_error(exc, path, keyword)
        if outcome == "clear" and not isinstance(expect, tuple):
            return "unclear", text + " (an error where a correct result was expected)"
        return outcome, text
    if either:
        expect = expect[1]
    elif isinstance(expect, tuple):
        return "silent", "no error where one was due"
    problem = expect(value)
    return ("silent", problem) if problem else ("fine", "")


def run_corpus(root: Path, predict: bool = False) -> dict[str, Any]:
    """Build the corpus under ``root`` and classify every outcome; returns counts and details."""
    from engine.io import load_image, read_mask
    from engine.rle import decode

    corpus = make_hostile_corpus(root)
    rows: list[dict[str, str]] = []

    def add(kind: str, label: str, outcome: str, text: str) -> None:
        rows.append({"channel": kind, "input": label, "outcome": outcome, "detail": text[:600]})

    Path("/tmp/segwb-absolute-escape.png").unlink(missing_ok=True)

    for label, path, expect in corpus["images"]:
        add("load_image", label, *_run_one(lambda p=path: load_image(p), str(path), expect))
    for label, path, expect in corpus["masks"]:
        add("read_mask", label, *_run_one(lambda p=path: read_mask(p), str(path), expect))
    for label, text, shape, conv in corpus["rle"]:
        add("rle.decode", label, *_run_one(lambda t=text, s=shape, c=conv: decode(t, s, c, where="t.csv row 2"),
                                           "t.csv", ("error", "row 2")))
    # pydicom's bundled files: a real-world corpus; OK must be a finite [0,1] image of the header's size
    for p in EC.pydicom_files():
        add("load_image (pydicom data)", Path(p).name, *_run_one(lambda p=p: EC.checked_dicom(p), p, EC.DICOM_EXPECT))
    # datasets: info (scan + verify) and masks
    ws = root / "ws"
    for label, path, check in corpus["datasets"]:
        ctx: dict[str, Any] = {}
        out_dir = root / "masks_out" / path.name

        def info_and_masks(path: Path = path, ctx: dict = ctx, out_dir: Path = out_dir) -> Any:
            ds = EC.open_verified(path, ws)
            EC.cli(["--workspace", str(ws), "info", str(path), "--json", str(root / f"{path.name}.json")])
            before = EC.snapshot(root.parent)
            EC.cli(["--workspace", str(ws), "masks", str(path), "--out", str(out_dir)])
            escaped = sorted(set(EC.snapshot(root.parent)) - set(before))
            escaped = [e for e in escaped if not e.startswith(str(out_dir)) and not e.startswith(str(ws))]
            if Path("/tmp/segwb-absolute-escape.png").exists():
                escaped.append("/tmp/segwb-absolute-escape.png")
            ctx["escape"] = f"masks wrote outside --out: {escaped}" if escaped else None
            return ds
        add("info+masks", label, *_run_one(info_and_masks, str(path), lambda ds, c=check, x=ctx: c(ds, x)))
    # pydicom's files as a dataset: every file is a case or a bad file with a reason, info and masks run
    pyd = EC.pydicom_folder(root / "pydicom_ds")
    n_pyd = len(list(pyd.glob("*.dcm")))

    def pyd_info() -> Any:
        ds = EC.open_verified(pyd, ws)
        EC.cli(["--workspace", str(ws), "info", str(pyd), "--layout", "siim"])
        return ds

    def pyd_check(ds: Any) -> str | None:
        accounted = {c.image_path for c in ds.cases} | {str(b.path) for b in ds.bad_files}
        if len(accounted) != n_pyd:
            return f"{n_pyd} files, {len(ds.cases)} cases + {len(ds.bad_files)} bad files"
        unclear = [b for b in ds.bad_files if Path(b.path).name not in b.reason and Path(b.path).name not in b.path]
        return f"bad-file reasons without a file name: {unclear[:2]}" if unclear else None
    add("info (pydicom data folder)", f"{n_pyd} files", *_run_one(pyd_info, None, pyd_check))
    if predict:
        out3 = root / "pred_pyd"

        def run_predict3() -> Any:
            return EC.cli_out(["predict", str(pyd), "--weights", "lung-cxr", "--out", str(out3)])

        def pred3_check(res: Any) -> str | None:
            rc, text = res
            written = len(list(out3.glob("*.png"))) if out3.is_dir() else 0
            failed = [ln for ln in text.splitlines() if ln.strip().startswith("failed:")]
            if written + len(failed) != n_pyd:
                return f"{written} written + {len(failed)} failed != {n_pyd} inputs"
            vague = [ln for ln in failed if ".dcm" not in ln]
            return f"failures without a file name: {vague[:2]}" if vague else None
        add("predict", f"pydicom data folder ({n_pyd} files)", *_run_one(run_predict3, None, pred3_check))
    if predict:
        inputs = corpus["predict"]["inputs"]
        out = root / "pred"
        rle = root / "pred.csv"

        def run_predict() -> Any:
            rc = EC.cli(["predict", *map(str, inputs), "--weights", "lung-cxr", "--out", str(out), "--rle", str(rle)])
            return rc
        add("predict", "a.jpg a.png a.bmp sub/a.png",
            *_run_one(run_predict, None, lambda rc: EC.predict_check(out, rle, 4)))
        big = [p for lab, p, _ in corpus["images"] if "19000" in lab or "NaN" in lab]
        out2 = root / "pred2"

        def run_predict2() -> Any:
            return EC.cli(["predict", *map(str, big), "--weights", "lung-cxr", "--out", str(out2)])
        add("predict", "huge png + NaN tiffs", *_run_one(run_predict2, None,
                                                         lambda rc: EC.predict_check(out2, None, 1)))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return {"counts": counts, "n": len(rows), "rows": rows}


def main() -> None:
    import resource
    import tempfile

    out = Path(sys.argv[1])
    limit_gb = float(os.environ.get("HOSTILE_AS_GB", "3"))
    base = 0
    if "--predict" in sys.argv:  # torch maps GBs of libraries: load it first, then allow limit_gb more
        import torch  # noqa: F401

        vm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmSize:")]
        base = int(vm[0].split()[1]) * 1024 if vm else 0
    cap = base + int(limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        res = run_corpus(Path(tmp) / "corpus", predict="--predict" in sys.argv)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["counts"]))



# ---------------------------------------------------------------------------------------------
# importers of exchange formats (COCO, NIfTI, DICOM-SEG): every case the tester found


def _has_bad(ds: Any, name: str, keyword: str) -> bool:
    """A bad-file entry that names ``name`` (path or reason) and mentions ``keyword`` (case-insensitive)."""
    return any(name in f"{b.path} {b.reason}" and keyword.lower() in b.reason.lower() for b in ds.bad_files)


def _expect_bad(name: str, keyword: str, cases: list[str] | None = None) -> Callable[[Any, dict], str | None]:
    def check(ds: Any, ctx: dict) -> str | None:
        if not _has_bad(ds, name, keyword):
            return f"no bad file naming {name} with {keyword!r}: {bad_paths(ds, reasons=True)[:3]}"
        if cases is not None and case_ids(ds) != sorted(cases):
            return f"cases {case_ids(ds)}, expected {sorted(cases)}"
        return None
    return check


def _expect_masks(want: dict[str, np.ndarray], allow_bad: bool = False) -> Callable[[Any, dict], str | None]:
    def check(ds: Any, ctx: dict) -> str | None:
        if case_ids(ds) != sorted(want):
            return f"cases {case_ids(ds)}, expected {sorted(want)}; bad {bad_paths(ds, reasons=True)[:3]}"
        if ds.bad_files and not allow_bad:
            return f"unexpected bad files {bad_paths(ds, reasons=True)[:3]}"
        for cid, m in want.items():
            got = ds.load_mask(cid)
            if not np.array_equal(got, m):
                return f"case {cid}: mask values {sorted(np.unique(got).tolist())} / {int(got.sum())} px, expected " \
                       f"{sorted(np.unique(m).tolist())} / {int(m.sum())} px"
        return None
    return check


def _coco(folder: Path, anns: list[dict[str, Any]], *, images: list[dict[str, Any]] | None = None,
          categories: list[dict[str, Any]] | None = None, raw: str | None = None, **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    B.png(folder / "a.png", B.gradient(16, 16, seed=1))
    B.png(folder / "b.png", B.gradient(16, 16, seed=2))
    doc = {"images": images if images is not None else [{"id": 1, "file_name": "a.png", "height": 16, "width": 16}],
           "annotations": anns,
           "categories": categories if categories is not None else [{"id": 1, "name": "nerve"}], **extra}
    (folder / "annotations.json").write_text(raw if raw is not None else json.dumps(doc))
    return folder


def _poly(*xy: float) -> dict[str, Any]:
    return {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [list(xy)], "iscrowd": 0}


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, dtype: Any = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data if dtype is None else data.astype(dtype),
                          np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine)
    nib.save(img, str(path))
    return path


def _seg_pair(folder: Path, mask: np.ndarray, edit: Callable[[Any], None] | None = None,
              deflate: bool = False) -> Path:
    """A source DICOM and a DICOM-SEG of ``mask`` (class 1 = "nerve") in ``folder``, the SEG edited by ``edit``."""
    import pydicom

    from engine.interop.dicom_seg import write_dicom_seg

    src = B.dicom(folder / "img" / "1.2.826.99.1.dcm", B.gradient(*mask.shape, seed=3).astype(np.uint16),
                  sop="1.2.826.99.1", extra={"PatientID": "hostile", "PatientName": "hostile", "PatientBirthDate": "",
                                             "PatientSex": "", "StudyDate": "20240101", "StudyTime": "120000",
                                             "AccessionNumber": "", "ReferringPhysicianName": "", "StudyID": "1",
                                             "SeriesNumber": 1, "InstanceNumber": 1})
    seg_path = write_dicom_seg(src, mask, {0: "background", 1: "nerve"}, folder / "seg" / "seg.dcm")
    if edit is not None or deflate:
        seg_path = Path(seg_path["path"])
        ds = pydicom.dcmread(seg_path)
        if edit is not None:
            edit(ds)
        if deflate:
            from pydicom.uid import DeflatedExplicitVRLittleEndian

            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(seg_path, enforce_file_format=True)
    return folder


def _set_frame_segment(ds: Any, number: int) -> None:
    """Point the first frame's Segment Identification (per-frame, else shared) at segment ``number``."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if groups and "SegmentIdentificationSequence" in groups[0]:
            groups[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber = number
            return
    raise AssertionError("no Segment Identification Sequence in the SEG")


def _make_interop_datasets(D: Path) -> list[tuple[str, Path, Callable[[Any, dict], str | None]]]:
    """COCO, NIfTI and DICOM-SEG folders with their expected outcomes (fine with the right mask values, or
    a bad-file entry naming the file and the reason)."""
    out: list[tuple[str, Path, Callable[[Any, dict], str | None]]] = []
    J = "annotations.json"
    box = np.zeros((16, 16), np.uint8)
    box[2:10, 3:12] = 1  # the polygon (3,2)-(12,2)-(12,10)-(3,10) rasterised by pycocotools
    from pycocotools import mask as mu

    def poly_mask(*xy: float) -> np.ndarray:
        return mu.decode(mu.merge(mu.frPyObjects([list(xy)], 16, 16))).astype(np.uint8)

    square = (3, 2, 12, 2, 12, 10, 3, 10)
    out.append(("COCO valid polygon", _coco(D / "coco_ok", [_poly(*square)]),
                _expect_masks({"a": poly_mask(*square)})))
    for label, value, key in (("NaN", float("nan"), "NaN"), ("+Infinity", float("inf"), "infinite"),
                              ("-1e9", -1e9, "outside"), ("1e9", 1e9, "outside"), ("1e7", 1e7, "outside")):
        name = "coco_poly_" + "".join(ch for ch in label if ch.isalnum())
        out.append((f"COCO polygon with a {label} coordinate", _coco(D / name, [_poly(3, 2, 12, value, 12, 10)]),
                    _expect_bad(J, key, [])))
    out.append(("COCO 7-number polygon", _coco(D / "coco_poly7", [_poly(3, 2, 12, 2, 12, 10, 3)]),
                _expect_bad(J, "even number", [])))
    short = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"size": [16, 16], "counts": [10, 20, 30]}}
    out.append(("COCO RLE counts that do not fill the image", _coco(D / "coco_rle_short", [short]),
                _expect_bad(J, "sum to", [])))
    fl = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"size": [16, 16], "counts": [100.5, 155.5]}}
    out.append(("COCO RLE float counts", _coco(D / "coco_rle_float", [fl]), _expect_bad(J, "non-negative integer", [])))
    comp = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"size": [16, 16], "counts": "~~~~"}}
    out.append(("COCO compressed RLE with bad characters", _coco(D / "coco_rle_chars", [comp]),
                _expect_bad(J, "RLE", [])))
    full = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"size": [16, 16], "counts": [34, 9, 213]}}
    want_full = np.zeros(256, np.uint8)
    want_full[34:43] = 1
    out.append(("COCO RLE counts summing to H×W", _coco(D / "coco_rle_ok", [full]),
                _expect_masks({"a": want_full.reshape(16, 16, order="F")})))
    dup_imgs = [{"id": 1, "file_name": "a.png", "height": 16, "width": 16},
                {"id": 1, "file_name": "b.png", "height": 16, "width": 16},
                {"id": 3, "file_name": "c.png", "height": 16, "width": 16}]
    dd = _coco(D / "coco_dup_ids", [_poly(*square)], images=dup_imgs)
    B.png(dd / "c.png", B.gradient(16, 16, seed=4))
    out.append(("COCO duplicate image ids", dd, _expect_bad(J, "used by 2 images", ["c"])))
    out.append(("COCO string image_id", _coco(D / "coco_str_image_id", [{**_poly(*square), "image_id": "1"}]),
                _expect_bad(J, "not an integer", [])))
    out.append(("COCO string category id", _coco(D / "coco_str_cat", [_poly(*square)],
                                                 categories=[{"id": "1", "name": "nerve"}]),
                _expect_bad(J, "not an integer", [])))

    def missing_check(ds: Any, ctx: dict) -> str | None:
        return _expect_bad(J, "image_id 99", ["a"])(ds, ctx) or _expect_masks({"a": poly_mask(*square)}, True)(ds, ctx)
    out.append(("COCO annotation of a missing image", _coco(D / "coco_missing_img",
                                                            [_poly(*square), {**_poly(*square), "id": 2,
                                                                              "image_id": 99}]), missing_check))
    out.append(("COCO height 'abc'", _coco(D / "coco_height_abc", [_poly(*square)],
                                           images=[{"id": 1, "file_name": "a.png", "height": "abc", "width": 16}]),
                _expect_bad(J, "not an integer", [])))
    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 301)]
    out.append(("COCO with 300 categories", _coco(D / "coco_300_cats", [_poly(*square)], categories=cats),
                _expect_bad(J, "at most 255", [])))
    deep = '{"images": [], "annotations": [], "categories": [], "x": ' + "[" * 200000 + "]" * 200000 + "}"
    out.append(("COCO JSON nested 200000 deep", _coco(D / "coco_deep", [], raw=deep),
                _expect_bad(J, "nested too deeply", [])))
    outside = D / "outside_images"
    B.png(outside / "secret.png", B.gradient(16, 16, seed=9))
    esc = _coco(D / "coco_root_escape", [], images=[{"id": 1, "file_name": "secret.png", "height": 16, "width": 16}],
                info={"segwb_image_root": str(outside)})
    (esc / "export.json").write_text(json.dumps({"format": "segwb-corrected-export", "source": {"root": "/"}}))
    out.append(("COCO info.segwb_image_root outside the folder", esc, _expect_bad(J, "outside this dataset", [])))

    # NIfTI: (W,H,1) arrays; the image is 16x24 (H x W) unless said otherwise
    m = np.zeros((16, 24), np.uint8)
    m[2:7, 3:15] = 1
    m[9:14, 5:9] = 1

    def nifti_folder(name: str, data: np.ndarray, affine: np.ndarray | None = None, dtype: Any = None,
                     hw: tuple[int, int] = (16, 24), labels: dict[str, str] | None = None) -> Path:
        f = D / name
        B.png(f / "img.png", B.gradient(*hw, seed=5))
        _nifti(f / "img.nii.gz", data, affine, dtype)
        if labels is not None:
            (f / "labels.json").write_text(json.dumps(labels))
        return f

    out.append(("NIfTI ITK convention", nifti_folder("nii_ok", m.T[:, :, None]), _expect_masks({"img": m})))
    out.append(("NIfTI binary {0,255}", nifti_folder("nii_255", (m * 255).T[:, :, None]), _expect_masks({"img": m})))
    out.append(("NIfTI labels.json with a negative key",
                nifti_folder("nii_neg_key", m.T[:, :, None], labels={"-1": "background", "0": "x", "1": "nerve"}),
                _expect_bad("labels.json", "not a class id", ["img"])))
    out.append(("NIfTI identity (RAS) affine", nifti_folder("nii_ras", m[::-1, ::-1].T[:, :, None], np.eye(4)),
                _expect_masks({"img": m})))
    rot = np.array([[0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)  # axis 0 = rows, axis 1 = columns
    sq = np.zeros((16, 16), np.uint8)
    sq[1:5, 2:14] = 1
    sq[8:15, 3:6] = 1
    out.append(("NIfTI square (H,W,1) with an affine that says so",
                nifti_folder("nii_square_hw", sq[:, :, None], rot, hw=(16, 16)), _expect_masks({"img": sq})))
    shear = np.eye(4)
    shear[:3, :3] = [[-1, 0.3, 0], [0, -1, 0], [0, 0, 1]]
    out.append(("NIfTI sheared affine", nifti_folder("nii_shear", m.T[:, :, None], shear),
                _expect_bad("img.nii.gz", "oblique", [])))
    rgb = np.zeros((24, 16, 1), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    out.append(("NIfTI RGB24", nifti_folder("nii_rgb", rgb), _expect_bad("img.nii.gz", "RGB", [])))
    big = D / "nii_huge"
    B.png(big / "img.png", B.gradient(16, 24, seed=5))
    _nifti(big / "img.nii.gz", np.zeros((4, 4, 1), np.uint8))
    import gzip

    raw = bytearray(gzip.decompress((big / "img.nii.gz").read_bytes()))
    struct.pack_into("<hhh", raw, 42, 30000, 30000, 1)  # dim[1..3] in the header
    (big / "img.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    out.append(("NIfTI header claiming 30000x30000 (small file)", big, _expect_bad("img.nii.gz", "30000", [])))
    csvf = D / "nii_csv_escape"
    _nifti(csvf / "labels" / "x.nii.gz", m.T[:, :, None])
    (csvf / "images.csv").write_text(f"case_id,group_id,image_path,mask_path\nx,g,{outside / 'secret.png'},"
                                     "labels/x.nii.gz\n")
    out.append(("NIfTI images.csv naming an absolute path outside", csvf,
                _expect_bad("images.csv", "outside this dataset", [])))

    # DICOM-SEG
    sm = np.zeros((16, 16), np.uint8)
    sm[3:9, 4:12] = 1
    out.append(("DICOM-SEG valid", _seg_pair(D / "seg_ok", sm), _expect_masks({"1.2.826.99.1": sm})))

    def seg_zero(ds: Any) -> None:
        ds.SegmentSequence[0].SegmentNumber = 0
        _set_frame_segment(ds, 0)
    out.append(("DICOM-SEG segment number 0", _seg_pair(D / "seg_zero", sm, seg_zero),
                _expect_bad("seg.dcm", "SegmentNumber 0", ["1.2.826.99.1"])))

    def seg_undefined(ds: Any) -> None:
        _set_frame_segment(ds, 5)
    out.append(("DICOM-SEG frame of an undefined segment", _seg_pair(D / "seg_undefined", sm, seg_undefined),
                _expect_bad("seg.dcm", "does not define", ["1.2.826.99.1"])))

    def seg_nonumber(ds: Any) -> None:
        del ds.SegmentSequence[0].SegmentNumber
    out.append(("DICOM-SEG segment without SegmentNumber", _seg_pair(D / "seg_nonumber", sm, seg_nonumber),
                _expect_bad("seg.dcm", "no SegmentNumber", ["1.2.826.99.1"])))

    def seg_huge(ds: Any) -> None:
        ds.Rows = ds.Columns = 20000
        ds.PixelData = bytes(20000 * 20000 // 8)
    out.append(("DICOM-SEG deflated, 20000² (small file)", _seg_pair(D / "seg_huge", sm, seg_huge, deflate=True),
                _expect_bad("seg.dcm", "limit", ["1.2.826.99.1"])))
    walk = _seg_pair(D / "seg_root_escape", sm)
    (walk / "img" / "1.2.826.99.1.dcm").unlink()
    (walk / "export.json").write_text(json.dumps({"format": "segwb-corrected-export", "source": {"root": "/"}}))

    def walk_check(ds: Any, ctx: dict) -> str | None:
        if ds.scan_stats.get("n_files", 0) > 10:
            return f"{ds.scan_stats.get('n_files')} files walked"
        return _expect_bad("export.json", "outside this dataset", [])(ds, ctx)
    out.append(("DICOM-SEG export.json with source.root '/'", walk, walk_check))
    return out


if __name__ == "__main__":
    main()
