"""DICOM header table: age parsing, PHI exclusion everywhere, stable patient keys."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from engine.dicom_meta import PHI_KEYWORDS, SAFE_COLUMNS, header_record, parse_age, patient_key, strip_phi
from engine.errors import ReadError
from engine.io.dicom import header_table, read_header
from tests.support import badinput as B

PHI = {
    "PatientName": "DOE^JANE^QX7",
    "PatientID": "MRN-55501234",
    "PatientBirthDate": "19470317",
    "InstitutionName": "Saint Nowhere Infirmary",
    "ReferringPhysicianName": "HOUSE^GREGORY^ZZ",
    "AccessionNumber": "ACC9988776",
    "StudyDate": "20190704",
}
PHI_STRINGS = ["DOE^JANE", "QX7", "MRN-55501234", "19470317", "Saint Nowhere", "HOUSE^GREGORY", "ACC9988776",
               "20190704"]


@pytest.mark.parametrize("text,years,flag", [
    ("038Y", 38.0, "ok"), ("45", 45.0, "ok"), ("6M", 0.5, "ok"), ("2W", round(14 / 365.25, 3), "ok"),
    ("010D", round(10 / 365.25, 3), "ok"), (" 70y ", 70.0, "ok"), ("413", 413.0, "impossible"),
    ("200Y", 200.0, "impossible"), ("", None, "missing"), (None, None, "missing"), ("   ", None, "missing"),
    ("abc", None, "unparsed"), ("38 years", None, "unparsed"), ("-5", None, "unparsed"), ("12Q", None, "unparsed"),
])
def test_parse_age(text, years, flag) -> None:
    assert parse_age(text) == (years, flag)


def test_patient_key_is_stable_and_one_way() -> None:
    k = patient_key("MRN-55501234")
    assert k == patient_key("MRN-55501234") == patient_key("  MRN-55501234 ")
    assert k != patient_key("MRN-55501235")
    assert k.startswith("pt-") and "55501234" not in k
    assert patient_key("") is None and patient_key(None) is None


def _make_dicoms(folder: Path, n: int = 3) -> list[Path]:
    paths = []
    for i in range(n):
        sop = f"1.2.826.0.1.99.{i + 1}"
        paths.append(B.dicom(folder / "dicom-images-train" / f"s{i}" / f"r{i}" / f"{sop}.dcm",
                             B.gradient(16, 16, seed=i),
                             sop=sop, phi={**PHI, "PatientSex": "F" if i % 2 else "M",
                                           "PatientAge": ["038Y", "45", "413"][i % 3], "ViewPosition": "PA"}))
    return paths


def _assert_no_phi(text: str) -> None:
    for s in PHI_STRINGS:
        assert s not in text, f"PHI {s!r} leaked"


def test_header_record_excludes_phi_unless_asked(tmp_path: Path) -> None:
    (p, *_) = _make_dicoms(tmp_path, 1)
    ds = pydicom.dcmread(p, stop_before_pixels=True)
    rec = header_record(ds)
    assert set(rec) == set(SAFE_COLUMNS)
    assert rec["age_years"] == 38.0 and rec["age_flag"] == "ok" and rec["sex"] == "M"
    assert rec["patient_key"] == patient_key(PHI["PatientID"])
    _assert_no_phi(json.dumps(rec))
    full = header_record(ds, include_phi=True)
    assert full["PatientName"] == PHI["PatientName"] and full["InstitutionName"] == PHI["InstitutionName"]
    assert strip_phi(full) == rec
    assert set(PHI) <= set(PHI_KEYWORDS)
    r2 = read_header(p)
    assert r2["path"] == str(p) and "PatientID" not in r2


def test_header_table_and_bad_files(tmp_path: Path) -> None:
    paths = _make_dicoms(tmp_path)
    junk = tmp_path / "junk.dcm"
    junk.write_text("nope")
    seen = []
    df, bad = header_table(paths + [junk], progress=lambda d, t, m="": seen.append((d, t)))
    assert len(df) == 3 and list(df.columns[: len(SAFE_COLUMNS)]) == list(SAFE_COLUMNS)
    assert df["age_flag"].tolist() == ["ok", "ok", "impossible"]
    assert len(bad) == 1 and bad[0][0] == str(junk) and "junk.dcm" in bad[0][1]
    assert seen[-1] == (4, 4)
    _assert_no_phi(df.to_csv())
    df_phi, _ = header_table(paths, include_phi=True)
    assert df_phi["PatientID"].tolist() == [PHI["PatientID"]] * 3
    with pytest.raises(ReadError, match="junk.dcm"):
        read_header(junk)


def test_reader_meta_excludes_phi(tmp_path: Path) -> None:
    from engine.io import read_image

    (p, *_) = _make_dicoms(tmp_path, 1)
    _, meta = read_image(p)
    _assert_no_phi(json.dumps(meta))
    _, meta_phi = read_image(p, include_phi=True)
    assert meta_phi["PatientName"] == PHI["PatientName"]


def test_summary_info_json_and_cache_have_no_phi(tmp_path: Path) -> None:
    from engine.__main__ import main
    from engine.datasets import open_dataset

    data = tmp_path / "siim"
    _make_dicoms(data)
    ws = tmp_path / "ws"
    ds = open_dataset(data, workspace=ws)
    s = ds.summary()
    assert s["dicom"]["impossible_ages"] == ["413"] and s["dicom"]["sex"] == {"M": 2, "F": 1}
    assert len({c.group_id for c in ds.cases}) == 1  # one patient → one group, keyed without the ID
    _assert_no_phi(json.dumps(s))
    _assert_no_phi(ds.to_frame().to_csv())
    out = tmp_path / "info.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert main(["--workspace", str(ws), "info", str(data), "--json", str(out)]) == 0
    _assert_no_phi(out.read_text())
    _assert_no_phi(buf.getvalue())
    for cache in ws.rglob("*.json"):  # nothing PHI-bearing is written to the workspace either
        _assert_no_phi(cache.read_text())
    # the PHI is really in the files (the test would be vacuous otherwise)
    raw = b"".join(p.read_bytes() for p in data.rglob("*.dcm"))
    assert b"MRN-55501234" in raw and b"Saint Nowhere" in raw
    assert np.all([c.meta.get("modality") == "CR" for c in ds.cases])
