"""PHI handling (engine.phi): the install secret and HMAC patient keys, PS3.15 de-identification of
copied DICOMs (with consistent UID remapping, also in DICOM-SEG exports), uploads (0600, expiry), and
no patient identifier in the CLI's JSON outputs or exports. The tiny SIIM phantom's DICOMs carry
fake PHI (PatientName SYNTHETIC^PHANTOM^NNN, PatientID, birth date, "Synthetic General Hospital",
a referring physician)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from engine import phi
from engine.datasets import open_dataset
from engine.errors import ConfigError
from engine.io.dicom import deidentify_dicom
from engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
PHI_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName",
              "AccessionNumber", "StudyDate", "PatientAge", "PatientSex")


@pytest.fixture(scope="module")
def ptx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.phantoms import generate_demo

    root = tmp_path_factory.mktemp("phi_demo")
    generate_demo(root, scale="tiny")
    return root / "ptx"


def _originals(root: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(root.rglob("*.dcm"))]


def _phi_strings(dss: list[pydicom.Dataset]) -> set[str]:
    """Every identifying value in the originals (names, IDs, dates, institution, UIDs)."""
    out: set[str] = set()
    for d in dss:
        for kw in PHI_FIELDS:
            v = str(d.get(kw, "") or "").strip()
            if len(v) >= 4:
                out.add(v)
        out |= {str(d.SOPInstanceUID), str(d.StudyInstanceUID), str(d.SeriesInstanceUID)}
    return out


def _all_bytes(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


# ----------------------------------------------------------------------------------- secret, keys

def test_secret_created_once_private_and_stable(tmp_path: Path) -> None:
    s1 = phi.install_secret(tmp_path / "ws1")
    path = tmp_path / "ws1" / phi.SECRET_NAME
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600 and len(s1) == phi.SECRET_BYTES
    phi._SECRETS.clear()  # a new process reads the same file
    assert phi.install_secret(tmp_path / "ws1") == s1 == path.read_bytes()
    assert phi.install_secret(tmp_path / "ws2") != s1  # another install, another secret


def test_secret_race_two_processes_agree(tmp_path: Path) -> None:
    code = ("import sys; from engine.phi import install_secret; "
            "sys.stdout.write(install_secret(sys.argv[1]).hex())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "ws")], cwd=REPO, stdout=subprocess.PIPE)
             for _ in range(4)]
    outs = {p.communicate(timeout=120)[0].decode() for p in procs}
    assert len(outs) == 1 and (tmp_path / "ws" / phi.SECRET_NAME).read_bytes().hex() in outs


def test_patient_key_is_keyed_hmac(tmp_path: Path) -> None:
    a, b = phi.install_secret(tmp_path / "a"), phi.install_secret(tmp_path / "b")
    mrn = "1234567"
    k = phi.patient_key(mrn, a)
    assert k == phi.patient_key(" 1234567 ", a) and k.startswith("pt-") and len(k) == 19  # stable
    assert phi.patient_key(mrn, b) != k  # differs across installs
    assert phi.patient_key("1234568", a) != k and phi.patient_key("", a) is None
    # the old unsalted scheme (and plain hashes) no longer give the key: trying every 7-digit MRN
    # against an unkeyed hash (what recovered an MRN in 6 s before) finds nothing
    unsalted = {"pt-" + hashlib.sha1(mrn.encode()).hexdigest()[:12],
                "pt-" + hashlib.sha256(mrn.encode()).hexdigest()[:16]}
    assert k not in unsalted
    assert k == "pt-" + __import__("hmac").new(a, b"patient:" + mrn.encode(), "sha256").hexdigest()[:16]


def test_header_records_use_the_workspace_secret(ptx: Path, workspace: Path) -> None:
    from engine.io.dicom import read_header

    f = sorted(ptx.rglob("*.dcm"))[0]
    pid = str(pydicom.dcmread(f, stop_before_pixels=True).PatientID)
    rec = read_header(f)
    assert rec["patient_key"] == phi.patient_key(pid, (workspace / phi.SECRET_NAME).read_bytes())
    assert "PatientID" not in rec and pid not in json.dumps(rec)


# ----------------------------------------------------------------------------------- de-identification

def test_copy_images_deidentifies_consistently(ptx: Path, tmp_path: Path, workspace: Path) -> None:
    from engine.curation import export_corrected

    ds = open_dataset(ptx, workspace=Workspace(workspace))
    originals = {str(d.SOPInstanceUID): d for d in _originals(ptx)}
    secrets_ = _phi_strings(list(originals.values()))
    info = export_corrected(ds, None, tmp_path / "exp", copy_images=True)
    assert info["deidentified"] == len(ds.cases) == len(originals)
    copies = {str(d.SOPInstanceUID): d
              for d in (pydicom.dcmread(p) for p in (tmp_path / "exp" / "images").glob("*.dcm"))}
    assert len(copies) == len(originals)
    studies: dict[str, set[str]] = {}
    for old_uid, o in originals.items():
        new_uid = phi.deid_uid(old_uid)
        c = copies[new_uid]  # renamed consistently: new SOP UID = the derived one
        for kw in PHI_FIELDS:
            if kw in c and str(o.get(kw, "")).strip():
                assert str(c.get(kw)) != str(o.get(kw)), kw  # replaced or emptied
        assert "PatientAge" not in c and "ReferringPhysicianName" not in c or not str(c.ReferringPhysicianName)
        assert c.PatientIdentityRemoved == "YES" and c.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert c.PixelData == o.PixelData  # pixels untouched
        assert c.StudyInstanceUID == phi.deid_uid(str(o.StudyInstanceUID)) != o.StudyInstanceUID
        assert c.file_meta.MediaStorageSOPInstanceUID == new_uid and c.SOPClassUID == o.SOPClassUID
        studies.setdefault(str(o.StudyInstanceUID), set()).add(str(c.StudyInstanceUID))
    assert all(len(v) == 1 for v in studies.values())  # one study stays one study
    # nothing in the export folder (DICOMs, CSVs, manifest, export.json) carries an original value
    blob = _all_bytes(tmp_path / "exp")
    leaked = [s for s in secrets_ if s.encode() in blob]
    assert not leaked, leaked[:3]
    # the export opens, and its cases are the de-identified ones with the same masks
    exp = open_dataset(tmp_path / "exp" / "manifest.json", workspace=Workspace(workspace))
    assert set(exp.case_ids) == set(copies) and not exp.bad_files
    for c in ds.labelled_cases()[:3]:
        assert np.array_equal(exp.load_mask(phi.deid_uid(c.case_id)), ds.load_mask(c))
    # re-export: same UIDs (derived from the install secret), export replaced in place
    info2 = export_corrected(ds, None, tmp_path / "exp", copy_images=True)
    assert {p.name for p in (tmp_path / "exp" / "images").glob("*.dcm")} == {f"{u}.dcm" for u in copies}
    assert info2["n_exported"] == info["n_exported"]


def test_dicom_seg_references_the_copies_when_images_are_copied(ptx: Path, tmp_path: Path, workspace: Path) -> None:
    from engine.curation.export import export_dataset
    from engine.interop.dicom_seg import read_dicom_seg

    ds = open_dataset(ptx, workspace=Workspace(workspace))
    originals = _originals(ptx)
    secrets_ = _phi_strings(originals)
    info = export_dataset(ds, None, tmp_path / "seg", "dicom-seg", copy_images=True, author="alice")
    assert info["n_written"] > 0
    out = tmp_path / "seg"
    for cid, ref in info["segmentations"].items():
        image = pydicom.dcmread(out / ref["image"])
        assert ref["referenced_sop_instance_uid"] == str(image.SOPInstanceUID) == cid
        seg = read_dicom_seg(out / ref["file"])
        assert str(image.SOPInstanceUID) in seg.source_uids
        raw = pydicom.dcmread(out / ref["file"])
        assert raw.StudyInstanceUID == image.StudyInstanceUID and str(raw.get("PatientName", "")) == ""
    leaked = [s for s in secrets_ if s.encode() in _all_bytes(out)]
    assert not leaked, leaked[:3]
    # without --copy-images the SEGs reference the originals (for the source's own PACS)
    plain = export_dataset(ds, None, tmp_path / "seg-plain", "dicom-seg")
    orig_uids = {str(d.SOPInstanceUID) for d in originals}
    assert {r["referenced_sop_instance_uid"] for r in plain["segmentations"].values()} <= orig_uids


def test_burned_in_annotation_is_refused(ptx: Path, tmp_path: Path, workspace: Path) -> None:
    f = sorted(ptx.rglob("*.dcm"))[0]
    d = pydicom.dcmread(f)
    d.BurnedInAnnotation = "YES"
    bad = tmp_path / "burned.dcm"
    d.save_as(bad)
    with pytest.raises(ConfigError, match="burned-in"):
        deidentify_dicom(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------------- outputs without PHI

def test_cli_json_and_exports_carry_no_patient_identifiers(ptx: Path, tmp_path: Path, workspace: Path) -> None:
    from engine.__main__ import main
    from engine.curation import export_corrected

    originals = _originals(ptx)
    names = {str(d.PatientName) for d in originals} | {str(d.PatientID) for d in originals} \
        | {str(d.PatientBirthDate) for d in originals} | {str(d.InstitutionName) for d in originals} \
        | {str(d.ReferringPhysicianName) for d in originals}
    names = {n for n in names if len(n) >= 4}
    assert main(["info", str(ptx), "--json", str(tmp_path / "info.json")]) == 0
    text = (tmp_path / "info.json").read_text()
    assert not [n for n in names if n in text]
    assert "PatientName" not in text and "PatientBirthDate" not in text
    # an export without --copy-images lists original paths but no header PHI
    export_corrected(open_dataset(ptx, workspace=Workspace(workspace)), None, tmp_path / "exp")
    blob = b"\n".join(p.read_bytes() for p in (tmp_path / "exp").rglob("*") if p.is_file())
    assert not [n for n in names if n.encode() in blob]
    # the install secret never appears in any output
    secret = (workspace / phi.SECRET_NAME).read_bytes()
    assert secret.hex().encode() not in blob and secret not in blob and secret.hex() not in text


# ----------------------------------------------------------------------------------- uploads

def test_uploads_private_and_expire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    p = phi.save_upload("../../scan.dcm", b"DICM fake", ws)
    assert p.parent.parent == ws / "uploads" and p.name == "scan.dcm" and p.read_bytes() == b"DICM fake"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((ws / "uploads").stat().st_mode) == 0o700
    assert phi.save_upload("../../scan.dcm", b"DICM fake", ws) == p  # content-addressed
    old = time.time() - 25 * 3600
    os.utime(p, (old, old))
    q = phi.save_upload("other.png", b"png", ws)  # each upload cleans expired ones (default 24 h)
    assert not p.exists() and not p.parent.exists() and q.exists()
    monkeypatch.setenv("SEGWB_UPLOAD_TTL_HOURS", "2")
    os.utime(q, (time.time() - 3 * 3600,) * 2)
    assert phi.cleanup_uploads(ws) == 1 and not q.exists()
    monkeypatch.setenv("SEGWB_UPLOAD_TTL_HOURS", "soon")
    with pytest.raises(ConfigError, match="SEGWB_UPLOAD_TTL_HOURS"):
        phi.upload_ttl_hours()


def test_app_start_cleans_expired_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ui import state

    ws = tmp_path / "ws"
    p = phi.save_upload("scan.dcm", b"DICM", ws)
    os.utime(p, (time.time() - 30 * 3600,) * 2)
    monkeypatch.setenv("SEGWB_WORKSPACE", str(ws))
    state._UPLOADS_CLEANED.pop(ws.resolve(), None)
    assert state.workspace().root == ws.resolve() and not p.exists()  # first use in the process


def test_real_siim_dicoms_deidentify_with_identical_pixels(shared_data: Path, tmp_path: Path, workspace: Path) -> None:
    """The five real SIIM sample DICOMs (already anonymised by the competition, but with names, IDs,
    ages and UIDs in place) come out with the profile applied and byte-identical pixel data."""
    files = sorted((shared_data / "siim-sample").rglob("*.dcm"))
    if not files:
        pytest.skip("no SIIM sample DICOMs")
    for f in files:
        o = pydicom.dcmread(f)
        r = deidentify_dicom(f, tmp_path / "out")
        c = pydicom.dcmread(r["path"])
        assert c.PixelData == o.PixelData and c.SOPInstanceUID == phi.deid_uid(str(o.SOPInstanceUID))
        assert r["path"].name == f"{c.SOPInstanceUID}.dcm"
        for kw in ("PatientName", "PatientID", "PatientAge", "PatientBirthDate"):
            if str(o.get(kw, "") or "").strip():
                assert str(c.get(kw, "") or "") != str(o.get(kw)), kw
        assert c.PatientIdentityRemoved == "YES"
        arr_o, arr_c = o.pixel_array, c.pixel_array
        assert np.array_equal(arr_o, arr_c)
