"""Test helpers: a bad-input corpus generator and a once-per-session tiny phantom.

Imported by the test modules as ``from tests.support import badinput as B`` (``tests`` is a package;
pytest puts the checkout's root on ``sys.path``). Nothing here touches ../shared/data.

:func:`make_bad_corpus` writes three small dataset folders, each with good cases and broken
files the scanners must list as bad files and skip:

- ``paired/``: ``images/`` + ``masks/`` with a truncated PNG, a truncated TIFF, a zero-byte
  PNG, a multi-page TIFF, a text file named ``.dcm``, a DICOM without pixel data, a mask
  whose size differs from its image and a mask without an image.
- ``kaggle/``: ``train/{s}_{f}.tif`` with masks, a truncated TIFF and a ``train_masks.csv``
  with the wrong header.
- ``siim/``: DICOMs (one without pixel data, one text file) and a SIIM CSV in which one
  image's RLE is malformed (odd number of values).

:func:`make_hostile_corpus` (in :mod:`tests.support.hostile`, re-exported here) adds every kind of hostile input:
headers claiming huge images, NaN/Inf floats, 1-bit, GIF and suffix-less files, DICOM slope 0 /
PALETTE COLOR / truncation / multi-frame, grey, label and noise masks, overflowing RLE, bad CSV
rows and headers, duplicate SOPInstanceUIDs, path-traversal ids, symlinks out of the root,
unrelated files and colliding predict inputs, each with its expected outcome.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

_lock = threading.Lock()
_PHANTOM_CACHE: dict[str, Path] = {}


def tiny_demo(tmp_path_factory: Any, seed: int = 0) -> Path:
    """Generate the ``tiny`` demo (``DIR/nerve`` + ``DIR/ptx``) once per test session; return DIR."""
    from engine.phantoms import generate_demo

    key = f"tiny-{seed}"
    with _lock:
        if key not in _PHANTOM_CACHE:
            root = tmp_path_factory.mktemp(f"phantom-{key}")
            generate_demo(root, "tiny", seed=seed)
            _PHANTOM_CACHE[key] = root
        return _PHANTOM_CACHE[key]


# ---------------------------------------------------------------------------------------------
# small writers


def png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def tiff(path: Path, arr: np.ndarray, **kw: Any) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, **kw)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def gradient(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 3 + y * 2 + rng.integers(0, 20, (h, w))) % 256).astype(np.uint8)


def disk_mask(h: int = 64, w: int = 64, r: int = 12, value: int = 255) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (((y - h // 2) ** 2 + (x - w // 2) ** 2 <= r * r) * value).astype(np.uint8)


def dicom(path: Path, arr: np.ndarray | None, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
          slope: float | None = None, intercept: float | None = None, window: tuple[float, float] | None = None,
          sop: str | None = None, frames: int = 1, phi: dict[str, str] | None = None,
          extra: dict[str, Any] | None = None) -> Path:
    """Write a small uncompressed DICOM (``arr`` None → no pixel data at all)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop = sop or generate_uid(entropy_srcs=[str(path)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(path), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path), "series"])
    ds.Modality = "CR"
    for k, v in {**(phi or {}), **(extra or {})}.items():
        if k == "PatientAge":  # real files hold "45" and "413": store as found, unvalidated
            from pydicom import config
            from pydicom.dataelem import DataElement

            ds.add(DataElement(0x00101010, "AS", v, validation_mode=config.IGNORE))
        else:
            setattr(ds, k, v)
    if arr is not None:
        a = np.asarray(arr)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.Rows, ds.Columns = a.shape[-2:]
        ds.BitsAllocated = a.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if a.dtype.kind == "i" else 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if slope is not None:
            ds.RescaleSlope = str(slope)
        if intercept is not None:
            ds.RescaleIntercept = str(intercept)
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
        ds.PixelData = a.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------
# the corpus


def make_bad_corpus(root: Path) -> dict[str, Any]:
    """Write the bad-input corpus under ``root``; return the folders and the bad/good file names.

    Returns:
        ``{"paired": Path, "kaggle": Path, "siim": Path, "bad": {folder: {name: reason keyword}},
        "good": {folder: n_good_cases}, "files": {label: Path}}``.
    """
    files: dict[str, Path] = {}
    # -- paired folder ----------------------------------------------------------------------
    P = root / "paired"
    for i in range(3):
        png(P / "images" / f"good{i}.png", gradient(seed=i))
        png(P / "masks" / f"good{i}.png", disk_mask(r=8 + i))
    files["truncated_png"] = truncate(png(P / "images" / "trunc_png.png", gradient(seed=7)), 0.4)
    png(P / "masks" / "trunc_png.png", disk_mask())
    files["truncated_tiff"] = truncate(tiff(P / "images" / "trunc_tif.tif", gradient(seed=8)), 0.3)
    files["zero_byte"] = P / "images" / "zero.png"
    files["zero_byte"].write_bytes(b"")
    files["multipage_tiff"] = tiff(P / "images" / "stack.tif", np.stack([gradient(seed=9), gradient(seed=10)]))
    files["text_dcm"] = P / "images" / "notes.dcm"
    files["text_dcm"].write_text("this is a radiology report, not an image\n")
    files["dicom_no_pixels"] = dicom(P / "images" / "nopix.dcm", None)
    png(P / "images" / "sizemm.png", gradient(seed=11))
    files["size_mismatch"] = png(P / "masks" / "sizemm.png", disk_mask(48, 40, 8))
    files["mask_without_image"] = png(P / "masks" / "orphan.png", disk_mask())
    # -- Kaggle UNS folder ----------------------------------------------------------------------
    K = root / "kaggle"
    for f in (1, 2):
        tiff(K / "train" / f"1_{f}.tif", gradient(42, 58, seed=f))
        tiff(K / "train" / f"1_{f}_mask.tif", disk_mask(42, 58, 6 * f))
    files["kaggle_truncated_tiff"] = truncate(tiff(K / "train" / "1_3.tif", gradient(42, 58, seed=3),
                                                   compression="zlib"), 0.5)
    tiff(K / "train" / "1_3_mask.tif", disk_mask(42, 58, 5))
    files["kaggle_bad_csv"] = K / "train_masks.csv"
    files["kaggle_bad_csv"].write_text("subj,image,rle\n1,1,10 5\n")
    # -- SIIM folder ----------------------------------------------------------------------------
    S = root / "siim"
    good_sops = []
    for i in range(2):
        sop = f"1.2.3.4.{i + 1}"
        dicom(S / "dicom-images-train" / f"st{i}" / f"se{i}" / f"{sop}.dcm", gradient(32, 32, seed=20 + i), sop=sop)
        good_sops.append(sop)
    bad_rle_sop = "1.2.3.4.9"
    files["siim_bad_rle_dcm"] = dicom(S / "dicom-images-train" / "st9" / "se9" / f"{bad_rle_sop}.dcm",
                                      gradient(32, 32, seed=29), sop=bad_rle_sop)
    files["siim_no_pixels"] = dicom(S / "dicom-images-train" / "st8" / "se8" / "1.2.3.4.8.dcm", None, sop="1.2.3.4.8")
    files["siim_text_dcm"] = S / "dicom-images-train" / "st7" / "se7" / "1.2.3.4.7.dcm"
    files["siim_text_dcm"].parent.mkdir(parents=True, exist_ok=True)
    files["siim_text_dcm"].write_text("not a dicom")
    files["siim_csv"] = S / "train-rle.csv"
    files["siim_csv"].write_bytes(("\ufeffImageId, EncodedPixels\r\n"
                                   f"{good_sops[0]}, 100 20 12 20\r\n{good_sops[1]}, -1\r\n"
                                   f"{bad_rle_sop}, 100 20 12\r\n").encode("utf-8"))
    bad = {
        "paired": {"trunc_png.png": "decode", "trunc_tif.tif": "TIFF", "zero.png": "", "stack.tif": "multi-page",
                   "notes.dcm": "DICOM", "nopix.dcm": "", "sizemm.png": "mask", "orphan.png": "without an image"},
        "kaggle": {"1_3.tif": "TIFF", "train_masks.csv": "header"},
        "siim": {f"{bad_rle_sop}.dcm": "odd", "1.2.3.4.8.dcm": "", "1.2.3.4.7.dcm": "DICOM"},
    }
    return {"paired": P, "kaggle": K, "siim": S, "bad": bad, "good": {"paired": 3, "kaggle": 2, "siim": 2},
            "files": files, "bad_rle_sop": bad_rle_sop, "good_sops": good_sops}


def make_hostile_corpus(root: Path) -> dict[str, Any]:
    """The hostile-input corpus with expected outcomes; see :func:`tests.support.hostile.make_hostile_corpus`."""
    from tests.support import hostile

    return hostile.make_hostile_corpus(root)
