"""DICOM reader (pydicom): rescale, VOI LUT/window, MONOCHROME1, compressed transfer syntaxes.

See :mod:`engine.io` for the ``(array, meta)`` contract. Compressed pixel data is decoded
through the pylibjpeg plugins; when the plugin for a transfer syntax is missing the
error names the package to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, cast

import numpy as np

from engine.dicom_meta import SAFE_COLUMNS, header_record
from engine.errors import ConfigError, MissingPluginError, ReadError
from engine.io.limits import check_pixels
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    import pydicom

# Transfer syntax UID → (name, pip package that decodes it)
_PLUGINS: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless SV1", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Near-lossless", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Lossless", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.201": ("HTJ2K Lossless", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.5": ("RLE Lossless", "pylibjpeg-rle"),
}


def open_dicom(path: Path, stop_before_pixels: bool = False) -> pydicom.FileDataset:
    """``pydicom.dcmread`` with the project's errors (ReadError naming the file and the fix)."""
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread_capped(path, stop_before_pixels=stop_before_pixels)
    except ReadError:
        raise
    except InvalidDicomError:
        raise ReadError("not a DICOM file (no DICM preamble or valid header)", path=path,
                        hint="remove it from the folder, or convert it to DICOM/PNG") from None
    except FileNotFoundError:
        raise ReadError("file not found", path=path, hint="check the path") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files: named ReadError
        raise ReadError(f"cannot read DICOM ({type(exc).__name__}: {exc})", path=path,
                        hint="the file may be truncated; re-export it") from None


DEFLATED_TS = "1.2.840.10008.1.2.1.99"


def dcmread_capped(path: str | Path, *, stop_before_pixels: bool = False) -> pydicom.FileDataset:
    """``pydicom.dcmread``, except that a Deflated Explicit VR Little Endian dataset is inflated in
    bounded chunks (:func:`engine.io.limits.inflate_capped`): a 0.5 MB file that inflates to gigabytes
    raises :class:`ReadError` naming the file instead of exhausting memory. pydicom's own errors pass through.
    """
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_dataset, read_preamble

    from engine.io.limits import inflate_capped

    with open(path, "rb") as fh:
        preamble = read_preamble(fh, False)
        file_meta = _read_file_meta_info(fh)
        if str(file_meta.get("TransferSyntaxUID", "")) != DEFLATED_TS:
            fh.seek(0)
            return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
        command_set = _read_command_set_elements(fh)
        raw = fh.read()
    buffer = DicomBytesIO(inflate_capped(raw, path))
    buffer.name = str(path)

    def stop(tag: Any, vr: str | None, length: int) -> bool:
        return stop_before_pixels and tag in _PIXEL_TAGS

    dataset = read_dataset(cast(BinaryIO, buffer), False, True, stop_when=stop if stop_before_pixels else None)
    if command_set:
        dataset.update(command_set)
    ds = pydicom.FileDataset(str(path), dataset, preamble, file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


def _decoder_available(ts: str) -> bool:
    """True when pydicom has a working decoder plugin for transfer syntax ``ts``."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(ts).is_available)
    except Exception:  # noqa: BLE001 - unknown/unsupported syntax: no decoder
        return False


def _decode(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure: the missing plugin, or a named ReadError
        if ts in _PLUGINS:
            name, package = _PLUGINS[ts]
            if not _decoder_available(ts):
                raise MissingPluginError(
                    f"pixel data uses {name} compression (transfer syntax {ts}) and no installed decoder handles it",
                    path=path, hint=f"pip install {package} (and pylibjpeg)") from None
            raise ReadError(f"{name} pixel data could not be decoded although a decoder is installed: the "
                            f"compressed data is damaged or truncated ({type(exc).__name__}: {str(exc)[:200]})",
                            path=path, hint="re-export or re-download the file") from None
        raise ReadError(f"cannot decode DICOM pixel data ({type(exc).__name__}: {str(exc)[:200]})", path=path,
                        hint="the pixel data may be truncated or corrupt; re-export the file") from None


def _check_header_size(ds: pydicom.Dataset, path: Path) -> None:
    """Rows × Columns × NumberOfFrames × SamplesPerPixel against the pixel limit, before decoding."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise ReadError("DICOM pixel data has no valid Rows/Columns/NumberOfFrames in its header", path=path,
                        hint="the header is damaged; re-export the file") from None
    check_pixels(path, rows, cols, frames=frames, channels=spp)


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def read_dicom(path: Path, *, frame: int | None = None, raw: bool = False,
               window: tuple[float, float] | None = None,
               include_phi: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM image.

    Steps: decode → select frame → modality LUT (rescale slope/intercept) → unless ``raw``:
    VOI (explicit ``window``, else the file's VOI LUT sequence or window center/width,
    else the data's min–max) → MONOCHROME1 inversion → float32 [0, 1].

    Returns:
        ``(array (H,W) float32 [0,1] or (H,W,3) for colour, meta)``; with ``raw=True``
        the rescaled values (e.g. Hounsfield units) as float32.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut


    path = Path(path)
    ds = open_dicom(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "Rows" in ds and "Columns" in ds:  # an image header whose pixel data is gone: cut off
            raise ReadError(f"DICOM header describes a {ds.Rows}x{ds.Columns} image but the file ends before its "
                            f"pixel data ({path.stat().st_size} bytes): the file is truncated", path=path,
                            hint="re-export or re-download the file")
        raise ReadError("DICOM has no pixel data and no image size: it is not an image (a report, structured "
                        "report or presentation state)", path=path, hint="remove it from the image folder")
    _check_header_size(ds, path)
    arr = _decode(ds, path)
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if n_frames > 1:
        if frame is None:
            raise ReadError(f"multi-frame DICOM ({n_frames} frames); the workbench reads single-frame images",
                            path=path, hint="export the frame you need as its own file, or read it from Python "
                            "with engine.io.read_image(path, frame=N)")
        if not 0 <= frame < n_frames:
            raise ReadError(f"frame {frame} does not exist (the file has {n_frames})", path=path,
                            hint=f"use a frame between 0 and {n_frames - 1}")
        arr = arr[frame]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    meta: dict[str, Any] = header_record(ds, include_phi=include_phi)
    meta.update({"format": "dicom", "path": str(path), "n_frames": n_frames})
    warnings_: list[str] = []
    if photometric == "PALETTE COLOR":  # indices → RGB through the file's palette
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:  # noqa: BLE001 - missing/damaged LUT descriptors
            raise ReadError(f"PALETTE COLOR DICOM whose colour palette cannot be applied ({type(exc).__name__}: "
                            f"{str(exc)[:150]})", path=path, hint="re-export the image as RGB or MONOCHROME2") from None
        lut_bits = 16 if rgb.dtype.itemsize > 1 else 8
        if lut_bits == 16 and rgb.size and rgb.max() < 256:
            lut_bits = 8  # 16-bit LUT entries holding 8-bit values
        out = rgb.astype(np.float32) / float(2**lut_bits - 1)
        meta.update(height=int(out.shape[0]), width=int(out.shape[1]), channels=3, dtype="float32",
                    bit_depth=lut_bits, voi="palette colour LUT")
        return np.clip(out, 0.0, 1.0).astype(np.float32), meta
    if spp > 1:  # colour: pydicom already converted YBR → RGB
        out = arr.astype(np.float32)
        hi = float(2 ** int(getattr(ds, "BitsStored", 8)) - 1)
        out = out if raw else np.clip(out / hi, 0.0, 1.0)
        meta.update(height=int(out.shape[0]), width=int(out.shape[1]), channels=3,
                    dtype="float32", bit_depth=int(getattr(ds, "BitsStored", 8)))
        return out.astype(np.float32), meta

    slope = _first(getattr(ds, "RescaleSlope", None))
    if "RescaleSlope" in ds and (slope is None or slope == 0 or not np.isfinite(slope)):
        # a zero (or unreadable) slope maps every pixel to the intercept: a blank image. DICOM requires
        # a non-zero slope, so the value is invalid; read the stored values with slope 1 and say so.
        warnings_.append(f"RescaleSlope {ds.RescaleSlope!r} is invalid (must be non-zero); slope 1 was used")
        ds.RescaleSlope = 1
    values = apply_modality_lut(arr, ds).astype(np.float32)
    meta["rescale"] = [_first(getattr(ds, "RescaleSlope", 1)) or 1.0, _first(getattr(ds, "RescaleIntercept", 0)) or 0.0]
    if warnings_:
        meta["warnings"] = warnings_
    if not np.isfinite(values).all():
        from engine.io.raster import finite_or_error

        values, more = finite_or_error(values, path)
        meta["warnings"] = warnings_ + more
    if raw:
        meta.update(height=int(values.shape[0]), width=int(values.shape[1]), channels=1,
                    dtype="float32", bit_depth=int(getattr(ds, "BitsStored", 16)), voi="raw")
        return values, meta

    center = width = None
    if window is not None:
        center, width = float(window[0]), float(window[1])
        voi = "explicit window"
    elif "VOILUTSequence" in ds:
        lut_out = apply_voi_lut(np.rint(values).astype(np.int64), ds).astype(np.float32)  # LUT inputs are integers
        lo, hi = float(lut_out.min()), float(lut_out.max())
        out = (lut_out - lo) / (hi - lo) if hi > lo else np.zeros_like(lut_out)
        voi = "VOI LUT sequence"
    else:
        center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
        voi = "window center/width" if center is not None and width else "min-max"
    if voi in ("explicit window", "window center/width"):
        assert center is not None and width is not None
        width = max(float(width), 1.0)
        # DICOM PS3.3 C.11.2.1.2 linear window
        out = ((values - (center - 0.5)) / (width - 1.0) + 0.5) if width > 1 else (values > center).astype(np.float32)
        meta["window"] = [center, width]
    elif voi == "min-max":
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    meta.update(height=int(out.shape[0]), width=int(out.shape[1]), channels=1, dtype="float32",
                bit_depth=int(getattr(ds, "BitsStored", 8) or 8), voi=voi, inverted=photometric == "MONOCHROME1")
    return out, meta


def dicom_size(path: Path) -> tuple[int, int]:
    """(Rows, Columns) from the header; :class:`ReadError` when over the pixel limit."""
    ds = open_dicom(Path(path), stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise ReadError("DICOM header has no Rows/Columns", path=path,
                        hint="it is probably not an image; remove it from the image folder")
    _check_header_size(ds, Path(path))
    return int(ds.Rows), int(ds.Columns)


def read_header(path: str | Path, include_phi: bool = False) -> dict[str, Any]:
    """Read one DICOM file's header (no pixels) into a :func:`engine.dicom_meta.header_record` row.

    Raises:
        ReadError: not a DICOM file or unreadable header.
    """
    path = Path(path)
    ds = open_dicom(path, stop_before_pixels=True)
    rec = header_record(ds, include_phi=include_phi)
    rec["path"] = str(path)
    return rec


def header_table(paths: Iterable[str | Path], include_phi: bool = False,
                 progress: ProgressFn | None = None):
    """Header table of many DICOMs as a pandas DataFrame, plus the files that failed.

    Returns:
        ``(DataFrame with SAFE_COLUMNS (+ path, + PHI if asked), list of (path, reason))``.
        A bad file never stops the scan.
    """
    import pandas as pd

    report = as_progress(progress)
    paths = list(paths)
    rows, bad = [], []
    for i, p in enumerate(paths):
        try:
            rows.append(read_header(p, include_phi=include_phi))
        except ReadError as exc:
            bad.append((str(p), str(exc)))
        report(i + 1, len(paths), "reading DICOM headers")
    cols = list(SAFE_COLUMNS) + ["path"]
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df.columns:
            df[c] = None
    extra = [c for c in df.columns if c not in cols]
    return df[cols + extra], bad


def deidentify_dicom(src: str | Path, dest_dir: str | Path, secret: bytes | None = None) -> dict[str, Any]:
    """Write a de-identified copy of the DICOM ``src`` into ``dest_dir`` as ``<new SOPInstanceUID>.dcm``.

    The original file is only read. Pixel data are copied byte for byte.

    Returns:
        ``{"path": Path, "sop_instance_uid": new UID, "original_sop_instance_uid": old UID}``.

    Raises:
        ReadError: not a readable DICOM. ConfigError: burned-in annotation (see :func:`engine.phi.deidentify_dataset`).
    """
    from engine.fsutil import atomic_path, safe_child
    from engine.phi import deid_uid, deidentify_dataset

    src = Path(src)
    ds = open_dicom(src)
    old = str(ds.get("SOPInstanceUID", "") or "")
    try:
        deidentify_dataset(ds, secret)
    except ConfigError as exc:
        raise ConfigError(str(exc.args[0]) if exc.args else str(exc), path=src,
                          hint="export without --copy-images (the export then lists the original paths)") from None
    except (ValueError, NotImplementedError, KeyError, TypeError) as exc:
        raise ReadError(f"cannot de-identify this DICOM ({exc})", path=src,
                        hint="export without --copy-images, or fix the file's header") from None
    new = str(ds.get("SOPInstanceUID", "") or "") or deid_uid(old or str(src), secret)
    dest = safe_child(Path(dest_dir), new, ".dcm")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return {"path": dest, "sop_instance_uid": new, "original_sop_instance_uid": old or None}
