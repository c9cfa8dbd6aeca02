"""DICOM Segmentation (SEG) objects: write one per case with ``highdicom``, read them back with ``pydicom``.

Writing (:func:`write_dicom_seg`): one BINARY Segmentation object per case whose image is a
single-frame DICOM, derived from that source image, so a PACS-class viewer files it with its
study: the object references the source's StudyInstanceUID, SeriesInstanceUID and
SOPInstanceUID (Referenced Series Sequence and, per frame, the Derivation Image / Source Image
Sequence). One segment per foreground class of the label map (segment number = class id,
segment label = class name), each with a coded property category and type (SNOMED CT for the
classes this workbench knows, a private ``99SEGWB`` code otherwise) and algorithm type
``MANUAL`` (the export holds reviewed ground truth, not model output). Every segment gets a
frame, also when empty, so "no finding" survives the round trip.

Patient data: highdicom copies the Patient module (name, ID, birth date, sex) and the General
Study module (study date/time, accession number, referring physician, study ID) from the
source image, by design of the SEG IOD: the object belongs to the source's study and patient.
These exports are meant for the source's own PACS-class workflow; do not share them outside it
without de-identifying (``export-corrected --copy-images`` derives each SEG from a de-identified copy
of its source instead, so it references the new UIDs and carries no patient data). Optional
Patient Study attributes (age, size, weight) are removed.

Equipment: the SEG's own General Equipment module names this program (Manufacturer ``segwb``,
Manufacturer's Model Name, Software Versions, Device Serial Number ``segwb``); no Institution Name
is written. The Contributing Equipment Sequence holds two items: the source's acquisition
equipment reduced to Manufacturer, Manufacturer's Model Name and Software Versions (its Institution
Name/Address, Institutional Department, Station Name, Device Serial Number and operators are
removed: they identify the site), and highdicom as the converting software.

UIDs are derived deterministically (``2.25.…`` from the source UIDs, the mask content, the label
map and the content creator), so exporting the same mask twice gives the same SOPInstanceUID (a
PACS sees a re-send, not a second object) and a changed mask gives a new one; the SEG's series
UID is one per source series.

Reading (:func:`read_dicom_seg`) uses pydicom directly (BINARY, FRACTIONAL and LABELMAP
types), not ``highdicom.seg.segread``: highdicom 0.28 refuses to parse SEGs of projection
images without a Frame of Reference (its own output for a CR, which is valid: Slice Thickness
is only required with a Frame of Reference), and the workbench must read SEGs from other tools.

Example:
    >>> write_dicom_seg("img.dcm", mask, {0: "background", 1: "pneumothorax"}, "out/seg.dcm")  # doctest: +SKIP
    >>> seg = read_dicom_seg("out/seg.dcm")                                                     # doctest: +SKIP
    >>> seg.label_map(seg.source_uids[0]).shape, seg.segments                                   # doctest: +SKIP
    ((1024, 1024), {1: 'pneumothorax'})
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import MaskError, ReadError

if TYPE_CHECKING:
    import pydicom

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
SERIES_NUMBER = 900
CONTENT_LABEL = "SEGWB"
PRIVATE_SCHEME = "99SEGWB"

# (category code, scheme, meaning), (type code, scheme, meaning): SNOMED CT concepts of CID 7150/7151
_ANATOMY = ("91723000", "SCT", "Anatomical Structure")
_ALTERED = ("49755003", "SCT", "Morphologically Altered Structure")
_TISSUE = ("85756007", "SCT", "Tissue")
KNOWN_CODES: dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]] = {
    "pneumothorax": (_ALTERED, ("36118008", "SCT", "Pneumothorax")),
    "nerve": (_ANATOMY, ("3057000", "SCT", "Nerve")),
    "brachial plexus": (_ANATOMY, ("36582002", "SCT", "Brachial plexus")),
    "vessel": (_ANATOMY, ("59820001", "SCT", "Blood vessel")),
    "blood vessel": (_ANATOMY, ("59820001", "SCT", "Blood vessel")),
    "lung": (_ANATOMY, ("39607008", "SCT", "Lung")),
    "lungs": (_ANATOMY, ("39607008", "SCT", "Lung")),
    "left lung": (_ANATOMY, ("44029006", "SCT", "Left lung")),
    "right lung": (_ANATOMY, ("3341006", "SCT", "Right lung")),
}
# Patient Study module (optional in the SEG IOD): not needed to file the object, so not copied
_DROP = ("PatientAge", "PatientSize", "PatientWeight", "AdditionalPatientHistory", "Occupation",
         "MedicalAlerts", "Allergies", "SmokingStatus", "PregnancyStatus", "EthnicGroup")


# Contributing Equipment items (highdicom copies the source's acquisition equipment): where the source was
# acquired (institution, address, department, station) and the device's serial number are not copied
_EQUIPMENT_DROP = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
                   "StationName", "DeviceSerialNumber", "OperatorsName",
                   "OperatorIdentificationSequence")


def segment_codes(label: str) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """Coded (category, type) for a class name: SNOMED CT when known, else a private ``99SEGWB`` code.

    Returns:
        ``((code, scheme, meaning), (code, scheme, meaning))``.
    """
    key = " ".join(str(label).lower().replace("_", " ").split())
    if key in KNOWN_CODES:
        return KNOWN_CODES[key]
    code = "L" + hashlib.sha1(key.encode()).hexdigest()[:10].upper()  # SH: at most 16 characters
    return _TISSUE, (code, PRIVATE_SCHEME, str(label)[:64] or "unnamed")


def _uid(*parts: str) -> str:
    """A deterministic ``2.25.<128-bit integer>`` UID (the UUID-derived root) from ``parts``."""
    digest = hashlib.sha256("\0".join(["segwb", *parts]).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


#: Type 2 attributes of the Patient and General Study modules the SEG copies from its source; a source
#: (e.g. an anonymised one) that lacks them gets them empty, as Type 2 allows, instead of failing.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def write_dicom_seg(source_path: str | Path, mask: np.ndarray, labels: dict[int, str], out_path: str | Path, *,
                    author: str | None = None, description: str = "Reviewed ground truth (segwb export)",
                    software_version: str = "") -> dict[str, Any]:
    """Write a BINARY DICOM Segmentation of ``mask`` derived from the DICOM at ``source_path``, atomically.

    Args:
        source_path: the single-frame source DICOM the mask was drawn on.
        mask: integer label map (H,W), H = Rows, W = Columns of the source; 0 = background.
        labels: the dataset's label map ``{class id: name}`` (0 = background); one segment per
            foreground class, numbered by class id.
        out_path: destination ``.dcm`` file.
        author: the acting user, written as Content Creator's Name.
        description: Content Description (LO, 64 characters at most).
        software_version: Software Versions of the writing program.

    Returns:
        ``{"path", "sop_instance_uid", "series_instance_uid", "study_instance_uid",
        "referenced_sop_instance_uid", "referenced_series_instance_uid", "segments": {n: label}}``.

    Raises:
        ReadError: the source is not a readable DICOM; MaskError: the mask does not fit it,
        holds classes missing from the label map, or the source is multi-frame.
    """
    import highdicom as hd
    import pydicom
    from pydicom.errors import InvalidDicomError

    from engine.fsutil import atomic_path

    source_path = Path(source_path)
    try:
        src = pydicom.dcmread(source_path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise ReadError(f"cannot read the source DICOM ({exc})", path=source_path,
                        hint="a DICOM-SEG needs the readable source image it was drawn on") from None
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Rows", "Columns"):
        if kw not in src:
            raise ReadError(f"source DICOM has no {kw}", path=source_path,
                            hint="the DICOM-SEG must reference the source image; fix or skip this case")
    for kw in _TYPE2_COPIED:
        if kw not in src:  # Type 2 in the Patient / General Study modules: present, possibly empty
            setattr(src, kw, "")
    if int(src.get("NumberOfFrames", 1) or 1) > 1:
        raise MaskError("multi-frame source DICOMs are not exported as DICOM-SEG by this workbench",
                        path=source_path, hint="export this case as PNG, COCO or NIfTI")
    mask = np.asarray(mask)
    if mask.shape != (int(src.Rows), int(src.Columns)):
        raise MaskError(f"mask is {mask.shape} but the source DICOM is {src.Rows}x{src.Columns}",
                        path=source_path, hint="re-export the mask at the image's size")
    fg = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    if not fg:
        fg = {1: "foreground"}
    present = {int(v) for v in np.unique(mask)} - {0}
    unknown = sorted(present - set(fg))
    if unknown:
        raise MaskError(f"mask holds class ids {unknown} that the label map {fg} does not name",
                        path=source_path, hint="fix the label map (--labels) or the mask")
    if max(fg) > 65535:
        raise MaskError("too many classes for DICOM-SEG", path=source_path, hint="use at most 65535 classes")

    descriptions = []
    for num, name in sorted(fg.items()):
        (cc, cs, cm), (tc, ts, tm) = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=num, segment_label=name[:64],
            segmented_property_category=hd.sr.CodedConcept(cc, cs, cm),
            segmented_property_type=hd.sr.CodedConcept(tc, ts, tm),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL))
    # a label map (1,H,W) of segment numbers; segment numbers must be consecutive from 1 for highdicom
    nums = sorted(fg)
    if nums != list(range(1, len(nums) + 1)):
        raise MaskError(f"class ids {nums} are not consecutive from 1", path=source_path,
                        hint="the workbench's label maps use consecutive class ids; rescan the dataset")
    label_map = mask.astype(np.uint16 if max(nums) > 255 else np.uint8)[None]
    digest = hashlib.sha1(np.ascontiguousarray(label_map).tobytes()).hexdigest()
    series_uid = _uid("seg-series", str(src.SeriesInstanceUID))
    creator = (author or "").strip()[:63] or None
    if creator and "^" not in creator:
        creator += "^"  # PN: a one-component name is the family name (trailing caret makes that explicit)
    sop_uid = _uid("seg-instance", str(src.SOPInstanceUID), digest, repr(sorted(fg.items())), creator or "")
    with warnings.catch_warnings():
        # highdicom warns about one-component person names copied from the source (e.g. anonymised IDs)
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        seg = _build(hd, src, label_map, descriptions, series_uid, sop_uid, description, creator, software_version)
    for kw in _DROP:
        if kw in seg:
            delattr(seg, kw)
    for item in seg.get("ContributingEquipmentSequence", []) or []:
        for kw in _EQUIPMENT_DROP:
            if kw in item:
                delattr(item, kw)
    if "FrameOfReferenceUID" not in seg:
        # General Image module, Type 2C: required when there is no Image Orientation/Position (projection images)
        seg.PatientOrientation = src.get("PatientOrientation", "")
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return {"path": str(out_path), "sop_instance_uid": sop_uid, "series_instance_uid": series_uid,
            "study_instance_uid": str(src.StudyInstanceUID),
            "referenced_sop_instance_uid": str(src.SOPInstanceUID),
            "referenced_series_instance_uid": str(src.SeriesInstanceUID),
            "segments": {n: fg[n] for n in nums}}


def _build(hd: Any, src: pydicom.Dataset, label_map: np.ndarray, descriptions: list[Any], series_uid: str, sop_uid: str,
           description: str, creator: str | None, software_version: str) -> Any:
    return hd.seg.Segmentation(
        source_images=[src], pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid, series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=1,
        manufacturer="segwb", manufacturer_model_name="segmentation workbench",
        software_versions=software_version or _version(), device_serial_number="segwb",
        content_description=description[:64], content_creator_name=creator,
        content_label=CONTENT_LABEL, series_description="segwb reviewed segmentation",
        omit_empty_frames=False)


def _version() -> str:
    from engine import __version__

    return f"segwb {__version__}"


@dataclass
class DicomSeg:
    """A parsed DICOM Segmentation.

    Attributes:
        path: the file.
        sop_instance_uid, series_instance_uid, study_instance_uid: the SEG's own UIDs.
        segmentation_type: ``BINARY``, ``FRACTIONAL`` or ``LABELMAP``.
        segments: ``{segment number: segment label}``.
        referenced: ``{source SOPInstanceUID: source SeriesInstanceUID}``.
        frames: per frame ``(segment number, source SOPInstanceUID)``.
        rows, columns: frame size.
        content_datetime: ContentDate + ContentTime (for "newest wins"), ``""`` when absent.
    """

    path: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    segmentation_type: str
    segments: dict[int, str]
    referenced: dict[str, str]
    frames: list[tuple[int, str]]
    rows: int
    columns: int
    content_datetime: str = ""
    _pixels: np.ndarray | None = field(default=None, repr=False)
    _max_fraction: int = 1

    @property
    def source_uids(self) -> list[str]:
        """Referenced source SOPInstanceUIDs, in frame order (each once)."""
        return list(dict.fromkeys([s for _, s in self.frames] or list(self.referenced)))

    def label_map(self, source_uid: str) -> np.ndarray:
        """The mask on one source image as uint8/uint16 (rows, columns) of segment numbers.

        Overlapping segments: the higher segment number wins (BINARY/FRACTIONAL). FRACTIONAL
        frames are binarised at half the Maximum Fractional Value.
        """
        if source_uid not in self.source_uids:
            raise MaskError(f"the segmentation does not reference SOPInstanceUID {source_uid}", path=self.path,
                            hint="pair the SEG with the image it was drawn on")
        dtype = np.uint16 if max(self.segments, default=0) > 255 else np.uint8
        out = np.zeros((self.rows, self.columns), dtype)
        px = self._pixels
        assert px is not None
        for i in sorted(range(len(self.frames)), key=lambda j: self.frames[j][0]):
            num, src = self.frames[i]
            if src != source_uid:
                continue
            frame = px[i]
            if self.segmentation_type == "LABELMAP":
                out = frame.astype(dtype)
            elif self.segmentation_type == "FRACTIONAL":
                out[frame.astype(np.float32) > self._max_fraction / 2] = num
            else:
                out[frame > 0] = num
        return out


def is_dicom_seg(path: str | Path) -> bool:
    """True when ``path`` is a DICOM Segmentation Storage object (header peek, no pixels)."""
    import pydicom
    from pydicom.filereader import read_file_meta_info

    from engine.io.dicom import DEFLATED_TS

    try:
        meta = read_file_meta_info(path)
        if str(meta.get("TransferSyntaxUID", "")) == DEFLATED_TS:  # decide from the meta group, never inflate
            return str(meta.get("MediaStorageSOPClassUID", "")) == SEG_SOP_CLASS_UID
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a SEG
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID or str(ds.get("Modality", "")) == "SEG"


def read_dicom_seg(path: str | Path) -> DicomSeg:
    """Parse a DICOM Segmentation (frames decoded once, after the header passed the checks).

    Before any frame is decoded: Rows × Columns × NumberOfFrames is checked against the pixel limit
    (:func:`engine.io.limits.check_pixels`), BitsAllocated must be 1, 8 or 16, and a deflated
    dataset is inflated with a cap (:func:`engine.io.dicom.dcmread_capped`). Every SegmentSequence
    item needs a SegmentNumber ≥ 1 (unique); every frame must reference a defined segment; a
    LABELMAP may hold only defined segment numbers.

    Raises:
        ReadError: unreadable, not a Segmentation, over the pixel limit; MaskError: frames that name no
        source image, segment numbers that are 0, missing or undefined.
    """
    from pydicom.errors import InvalidDicomError

    from engine.io.dicom import dcmread_capped
    from engine.io.limits import check_pixels

    path = Path(path)
    try:
        ds = dcmread_capped(path)
    except ReadError:
        raise
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise ReadError(f"cannot read DICOM-SEG ({exc})", path=path, hint="re-export it or remove it") from None
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS_UID and str(ds.get("Modality", "")) != "SEG":
        raise ReadError("not a DICOM Segmentation (SOP class / Modality SEG)", path=path,
                        hint="only Segmentation Storage objects can be imported as masks")
    try:
        return _parse_seg(ds, path, check_pixels)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        raise ReadError(f"malformed DICOM-SEG header ({type(exc).__name__}: {exc})", path=path,
                        hint="re-export the SEG with a conforming tool, or remove it") from None


def _parse_seg(ds: Any, path: Path, check_pixels: Any) -> DicomSeg:
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    check_pixels(path, rows, cols, frames=n_frames)
    bits = int(ds.get("BitsAllocated") or 0)
    if bits not in (1, 8, 16):
        raise ReadError(f"BitsAllocated is {bits}; a Segmentation stores 1, 8 or 16 bits per pixel", path=path,
                        hint="re-export the SEG with a conforming tool")
    segments: dict[int, str] = {}
    for i, it in enumerate(ds.get("SegmentSequence", []) or [], start=1):
        if "SegmentNumber" not in it or it.SegmentNumber is None or it.SegmentNumber == "":
            raise MaskError(f"SegmentSequence item {i} has no SegmentNumber", path=path,
                            hint="every segment needs a number from 1; re-export the SEG")
        n_seg = int(it.SegmentNumber)
        if n_seg < 1:
            raise MaskError(f"SegmentSequence item {i} has SegmentNumber {n_seg}; segment numbers start at 1 "
                            "(0 is background)", path=path, hint="re-export the SEG with segments numbered from 1")
        if n_seg in segments:
            raise MaskError(f"SegmentNumber {n_seg} is defined twice in SegmentSequence", path=path,
                            hint="re-export the SEG with distinct segment numbers")
        segments[n_seg] = str(it.get("SegmentLabel", f"segment_{n_seg}"))
    referenced: dict[str, str] = {}
    for series in ds.get("ReferencedSeriesSequence", []):
        for inst in series.get("ReferencedInstanceSequence", []):
            referenced[str(inst.ReferencedSOPInstanceUID)] = str(series.get("SeriesInstanceUID", ""))
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames: list[tuple[int, str]] = []
    only_source = next(iter(referenced)) if len(referenced) == 1 else None
    for i in range(n_frames):
        item = per_frame[i] if i < len(per_frame) else None
        num = _segment_number(item)
        num = _segment_number(shared) if num is None else num
        if seg_type == "LABELMAP":
            num = num or 0
        elif num is None:
            if len(segments) == 1:
                num = next(iter(segments))
            else:
                raise MaskError(f"frame {i + 1} names no segment", path=path,
                                hint="the SEG lacks a Segment Identification Sequence; re-export it")
        elif num not in segments:
            raise MaskError(f"frame {i + 1} references segment {num}, which the SegmentSequence does not define "
                            f"(defined: {sorted(segments) or 'none'})", path=path,
                            hint="re-export the SEG; every frame must belong to a defined segment numbered from 1")
        src = _source_uid(item) or _source_uid(shared) or only_source
        if src is None:
            raise MaskError(f"frame {i + 1} names no source image", path=path,
                            hint="2D SEGs must reference their source image per frame (Derivation Image "
                                 "Sequence); volumetric SEGs are not supported here")
        frames.append((int(num or 0), src))
        referenced.setdefault(src, "")
    try:
        px = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad pixel data
        raise ReadError(f"cannot decode the segmentation frames ({type(exc).__name__}: {str(exc)[:200]})", path=path,
                        hint="re-export the SEG (uncompressed or RLE/JPEG-LS)") from None
    if px.size != n_frames * rows * cols:
        raise ReadError(f"pixel data holds {px.size} values, not {n_frames} frames of {rows}x{cols}", path=path,
                        hint="the SEG is truncated or its header is wrong; re-export it")
    px = px.reshape(n_frames, rows, cols)
    if seg_type == "LABELMAP":
        stray = sorted(set(int(v) for v in np.unique(px)) - set(segments) - {0})
        if stray:
            raise MaskError(f"the label map holds values {stray[:10]} that the SegmentSequence does not define",
                            path=path, hint="re-export the SEG with every segment described")
    content_dt = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
    return DicomSeg(str(path), str(ds.get("SOPInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
                    str(ds.get("StudyInstanceUID", "")), seg_type, dict(sorted(segments.items())), referenced,
                    frames, rows, cols, content_dt, px,
                    int(ds.get("MaximumFractionalValue", 1) or 1))


def _segment_number(item: pydicom.Dataset | None) -> int | None:
    if item is None:
        return None
    seq = item.get("SegmentIdentificationSequence")
    if seq and "ReferencedSegmentNumber" in seq[0]:
        return int(seq[0].ReferencedSegmentNumber)
    return None


def _source_uid(item: pydicom.Dataset | None) -> str | None:
    if item is None:
        return None
    for der in item.get("DerivationImageSequence", []) or []:
        for s in der.get("SourceImageSequence", []) or []:
            if "ReferencedSOPInstanceUID" in s:
                return str(s.ReferencedSOPInstanceUID)
    return None
