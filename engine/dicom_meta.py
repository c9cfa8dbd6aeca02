"""DICOM header table without PHI.

:func:`header_record` turns one dataset's header into a flat, JSON-safe dict of the
fields an EDA needs (age, sex, modality, view position, body part, manufacturer,
pixel spacing, photometric interpretation, size, bit depth). Patient name, ID, birth
date, institution, physicians, dates and free-text descriptions are **never** included
unless the caller passes ``include_phi=True``; the patient ID is replaced by a keyed one-way
hash (``patient_key``: HMAC-SHA256 with the install secret, :mod:`engine.phi`) so cases can
still be grouped by patient, but the key cannot be reversed by trying every MRN.

Example:
    >>> rec = header_record(pydicom.dcmread(path, stop_before_pixels=True))   # doctest: +SKIP
    >>> rec["age_years"], rec["age_flag"], "PatientName" in rec                # doctest: +SKIP
    (69.0, 'ok', False)
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pydicom

MAX_PLAUSIBLE_AGE = 120.0

#: Attributes that identify a person or a place; only exported with ``include_phi=True``.
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
    "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "AccessionNumber", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime",
    "SeriesTime", "AcquisitionTime", "ContentTime", "StudyID", "StationName", "DeviceSerialNumber",
    "StudyDescription", "SeriesDescription", "RequestingPhysician", "MilitaryRank", "EthnicGroup",
    "PatientComments", "AdditionalPatientHistory",
)

#: Columns of the safe table, in display order.
SAFE_COLUMNS: tuple[str, ...] = (
    "patient_key", "age_years", "age_raw", "age_flag", "sex", "modality", "view_position",
    "body_part", "manufacturer", "model", "pixel_spacing_mm", "photometric", "rows", "columns",
    "bits_stored", "transfer_syntax", "sop_instance_uid", "study_uid", "series_uid",
)

_AGE_RE = re.compile(r"^\s*(\d{1,4})\s*([DWMYdwmy])?\s*$")


def parse_age(value: Any) -> tuple[float | None, str]:
    """Parse a DICOM age (``038Y``, ``6M``, ``45``) into years and a flag.

    Returns:
        ``(years or None, flag)`` with flag ``ok``, ``impossible`` (parsed but outside
        0–120 years, e.g. SIIM's 413), ``missing`` or ``unparsed``.

    Example:
        >>> parse_age("038Y"), parse_age("413"), parse_age("6M")
        ((38.0, 'ok'), (413.0, 'impossible'), (0.5, 'ok'))
    """
    if value is None:
        return None, "missing"
    text = str(value).strip()
    if not text:
        return None, "missing"
    m = _AGE_RE.match(text)
    if not m:
        return None, "unparsed"
    n = float(m.group(1))
    unit = (m.group(2) or "Y").upper()
    years = {"Y": n, "M": n / 12.0, "W": n * 7.0 / 365.25, "D": n / 365.25}[unit]
    years = round(years, 3)
    return years, ("ok" if 0.0 <= years <= MAX_PLAUSIBLE_AGE else "impossible")


def patient_key(patient_id: str | None) -> str | None:
    """A keyed one-way, stable key for grouping by patient without exposing the ID
    (:func:`engine.phi.patient_key`: HMAC-SHA256 with the install secret)."""
    from engine.phi import patient_key as _key

    return _key(patient_id)


def _get(ds: pydicom.Dataset, keyword: str) -> Any:
    value = ds.get(keyword, None)
    if value is None:
        return None
    value = getattr(value, "value", value) if hasattr(value, "VR") else value
    return value


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def header_record(ds: pydicom.Dataset, include_phi: bool = False) -> dict[str, Any]:
    """Flat, JSON-safe header table row for one pydicom Dataset (PHI excluded by default).

    Args:
        ds: a ``pydicom.Dataset`` (header only is enough).
        include_phi: also add the :data:`PHI_KEYWORDS` present in the header, as strings.
    """
    age_raw = _str(_get(ds, "PatientAge"))
    age_years, age_flag = parse_age(age_raw)
    sex = _str(_get(ds, "PatientSex"))
    sex = sex.upper()[:1] if sex else None
    if sex not in (None, "M", "F", "O"):
        sex = "O"
    spacing = _get(ds, "PixelSpacing") or _get(ds, "ImagerPixelSpacing")
    try:
        spacing = [float(spacing[0]), float(spacing[1])] if spacing is not None else None
    except (TypeError, ValueError, IndexError):
        spacing = None
    file_meta = getattr(ds, "file_meta", None)
    ts = _str(getattr(file_meta, "TransferSyntaxUID", None)) if file_meta is not None else None

    def _int(keyword: str) -> int | None:
        v = _get(ds, keyword)
        try:
            return int(v) if v is not None else None
        except (TypeError, ValueError):
            return None

    view = _str(_get(ds, "ViewPosition"))
    rec: dict[str, Any] = {
        "patient_key": patient_key(_str(_get(ds, "PatientID"))),
        "age_years": age_years,
        "age_raw": age_raw,
        "age_flag": age_flag,
        "sex": sex,
        "modality": _str(_get(ds, "Modality")),
        "view_position": view.upper() if view else None,
        "body_part": _str(_get(ds, "BodyPartExamined")),
        "manufacturer": _str(_get(ds, "Manufacturer")),
        "model": _str(_get(ds, "ManufacturerModelName")),
        "pixel_spacing_mm": spacing,
        "photometric": _str(_get(ds, "PhotometricInterpretation")),
        "rows": _int("Rows"),
        "columns": _int("Columns"),
        "bits_stored": _int("BitsStored"),
        "transfer_syntax": ts,
        "sop_instance_uid": _str(_get(ds, "SOPInstanceUID")),
        "study_uid": _str(_get(ds, "StudyInstanceUID")),
        "series_uid": _str(_get(ds, "SeriesInstanceUID")),
    }
    if include_phi:
        for kw in PHI_KEYWORDS:
            v = _get(ds, kw)
            if v is not None and str(v).strip():
                rec[kw] = str(v)
    return rec


def strip_phi(meta: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``meta`` without any PHI keyword (use before logging or exporting)."""
    return {k: v for k, v in meta.items() if k not in PHI_KEYWORDS}
