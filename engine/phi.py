"""Patient data (PHI) handling: the install secret, patient keys, DICOM de-identification.

- **Install secret** (:func:`install_secret`): 32 random bytes in ``<workspace>/secret.key``,
  created once (atomically, permissions 0600) and never logged or exported. Deleting it changes
  every patient key and every de-identified UID this install produces.
- **Patient key** (:func:`patient_key`): ``pt-`` + HMAC-SHA256(secret, PatientID)[:16 hex]. Cases
  of one patient share a key (splits and duplicate detection group on it), but without the
  secret the key cannot be turned back into the ID by trying all MRNs, and two installs give
  different keys for the same patient.
- **De-identification** (:func:`deidentify_dataset`; :func:`engine.io.dicom.deidentify_dicom`
  writes a file's copy): DICOM PS3.15 Annex E *Basic Application
  Level Confidentiality Profile*, Table E.1-1 as implemented by the pinned ``dicom-anonymizer``
  package (KitwareMedical, table of the 2026c standard): D/Z/X/U actions on every listed
  attribute, private tags removed. UIDs (action U) are replaced consistently and reproducibly:
  ``2.25.<n>`` derived from the install secret and the original UID (:func:`deid_uid`), so the
  images of one study stay one study, re-exports give the same UIDs, and a DICOM-SEG built from
  the copy references the new UIDs. Patient Identity Removed = YES and the De-identification
  Method Code Sequence (DCM 113100) are set as PS3.15 E.1.1 requires. Pixel data are not
  changed: a file whose Burned In Annotation is not ``NO`` is refused (text burned into the
  pixels cannot be removed by header de-identification).

Example:
    >>> key = patient_key("1234567")                                   # doctest: +SKIP
    >>> deidentify_dataset(ds)          # a pydicom Dataset, in place        # doctest: +SKIP
    >>> str(ds.SOPInstanceUID).startswith("2.25.")                     # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError

if TYPE_CHECKING:
    import pydicom

SECRET_NAME = "secret.key"
SECRET_BYTES = 32
#: PS3.16 CID 7050 code of the profile applied by :func:`deidentify_dataset`.
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
DEID_METHOD = "PS3.15 Basic Profile (dicom-anonymizer 2.1.0, 2026c)"  # LO: at most 64 characters
#: Table E.1-1 edition used by dicom-anonymizer.
DEID_TABLE = "dicomfields_2026c"

_SECRETS: dict[Path, bytes] = {}
_LOCK = threading.Lock()


def secret_path(workspace_root: str | Path | None = None) -> Path:
    """``<workspace>/secret.key``; the default workspace is :func:`engine.workspace.default_root`
    (``$SEGWB_WORKSPACE``, else the checkout's ``.workspace``, else ``~/.cache/segwb``), the one the
    CLI, ``make`` and the app share (:func:`engine.install.resolve_settings`)."""
    from engine.workspace import Workspace

    return Workspace(workspace_root).root / SECRET_NAME


def install_secret(workspace_root: str | Path | None = None) -> bytes:
    """The install's secret (32 bytes), created on first use with permissions 0600.

    Creation is atomic and race-free: the secret is written to a private temp file and
    hard-linked into place, so two processes starting at once agree on one secret.

    Raises:
        ConfigError: the secret file cannot be created or read, or is not a secret.
    """
    path = secret_path(workspace_root)
    with _LOCK:
        if path in _SECRETS:
            return _SECRETS[path]
        from engine.fsutil import atomic_write_bytes

        if not path.exists():
            try:
                atomic_write_bytes(path, secrets.token_bytes(SECRET_BYTES), mode=0o600, exclusive=True)
            except FileExistsError:
                pass  # another process won the race: use its secret
            except OSError as exc:
                raise ConfigError(f"cannot create the install secret ({exc.strerror or exc})", path=path,
                                  hint="make the workspace writable or set SEGWB_WORKSPACE") from None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the install secret ({exc.strerror or exc})", path=path,
                              hint="check the file's owner and permissions (it should be 0600)") from None
        if len(data) < 16:
            raise ConfigError("the install secret is too short (damaged)", path=path,
                              hint="restore it from a backup; deleting it changes every patient key")
        _SECRETS[path] = data
        return data


def secret_id(workspace_root: str | Path | None = None) -> str:
    """A short, non-reversible fingerprint of the secret (for cache keys; reveals nothing)."""
    return hmac.new(install_secret(workspace_root), b"segwb:secret-id", hashlib.sha256).hexdigest()[:12]


def patient_key(patient_id: str | None, secret: bytes | None = None) -> str | None:
    """A stable key grouping cases by patient: ``pt-`` + 16 hex of HMAC-SHA256(secret, ID).

    Args:
        patient_id: the DICOM PatientID (whitespace-stripped); None/empty → None.
        secret: the key (default: :func:`install_secret` of the current workspace).
    """
    if patient_id is None or not str(patient_id).strip():
        return None
    key = install_secret() if secret is None else secret
    digest = hmac.new(key, b"patient:" + str(patient_id).strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return "pt-" + digest[:16]


def deid_uid(uid: str, secret: bytes | None = None) -> str:
    """The de-identified replacement of a DICOM UID, the same every time on this install:
    ``2.25.<UUID as integer>`` (PS3.5 B.2), the UUID being an RFC 9562 version-8 UUID made of
    HMAC-SHA256(install secret, uid). Without the secret it reveals nothing about ``uid``."""
    key = install_secret() if secret is None else secret
    b = bytearray(hmac.new(key, b"uid:" + str(uid).strip().encode("ascii", "replace"), hashlib.sha256).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x80  # version 8 (custom)
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122/9562 variant
    return f"2.25.{int.from_bytes(b, 'big')}"


class _DerivedUIDs(dict):
    """Stands in for dicom-anonymizer's module-level UID cache: every lookup is :func:`deid_uid`."""

    def __init__(self, secret: bytes):
        super().__init__()
        self.secret = secret

    def __contains__(self, key: object) -> bool:
        return True

    def get(self, key: Any, default: Any = None) -> str:  # noqa: D401
        return deid_uid(str(key), self.secret)


_DEID_LOCK = threading.Lock()


def deidentify_dataset(ds: pydicom.Dataset, secret: bytes | None = None) -> None:
    """De-identify a pydicom Dataset in place (PS3.15 basic profile, see the module docstring).

    Raises:
        ConfigError: the image has (or may have) burned-in annotation.
    """
    from dicomanonymizer import simpledicomanonymizer as sda
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        raise ConfigError("the image has burned-in annotation (text in the pixels), which header "
                          "de-identification cannot remove", hint="export without --copy-images")
    key = install_secret() if secret is None else secret
    with _DEID_LOCK:
        saved = sda.dictionary
        sda.dictionary = _DerivedUIDs(key)
        try:
            # the library prints a line for tags it cannot read; the engine never prints
            with contextlib.redirect_stdout(io.StringIO()):
                sda.anonymize_dataset(ds, None, True, lambda: sda.initialize_actions(DEID_TABLE))
        finally:
            sda.dictionary = saved
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])


# --- uploads ---------------------------------------------------------------------------------------

UPLOAD_DIR = "uploads"
DEFAULT_UPLOAD_TTL_HOURS = 24.0


def upload_ttl_hours() -> float:
    """Hours an uploaded file is kept: ``$SEGWB_UPLOAD_TTL_HOURS`` (default 24; 0 = delete at the
    next clean-up)."""
    text = os.environ.get("SEGWB_UPLOAD_TTL_HOURS", "").strip()
    if not text:
        return DEFAULT_UPLOAD_TTL_HOURS
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"SEGWB_UPLOAD_TTL_HOURS must be a number of hours, got {text!r}",
                          hint="e.g. SEGWB_UPLOAD_TTL_HOURS=24") from None
    if value < 0 or value != value:
        raise ConfigError(f"SEGWB_UPLOAD_TTL_HOURS must be >= 0, got {text!r}", hint="e.g. 24")
    return value


def uploads_root(workspace_root: str | Path | None = None) -> Path:
    """``<workspace>/uploads`` (created 0700)."""
    from engine.workspace import Workspace

    root = Workspace(workspace_root).root / UPLOAD_DIR
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    return root


def save_upload(name: str, data: bytes, workspace_root: str | Path | None = None) -> Path:
    """Store an uploaded file as ``<workspace>/uploads/<sha1[:16]>/<safe name>`` with permissions
    0600 (folder 0700), content-addressed so the same upload is stored once; expired uploads are
    removed first (:func:`cleanup_uploads`).

    Args:
        name: the name the browser sent (any text: only a sanitised last component is used).
        data: the file's bytes.
    """
    from engine.fsutil import atomic_write_bytes, safe_child, safe_filename

    root = uploads_root(workspace_root)
    cleanup_uploads(workspace_root)
    folder = root / hashlib.sha1(data).hexdigest()[:16]
    folder.mkdir(exist_ok=True)
    os.chmod(folder, 0o700)
    path = safe_child(folder, safe_filename(name))
    if path.exists():
        os.utime(path)  # used again: its time to live starts over
    else:
        try:
            atomic_write_bytes(path, data, mode=0o600, exclusive=True)
        except FileExistsError:
            pass
    return path


def cleanup_uploads(workspace_root: str | Path | None = None, ttl_hours: float | None = None,
                    now: float | None = None) -> int:
    """Delete uploads older than ``ttl_hours`` (default :func:`upload_ttl_hours`); returns how
    many files were removed. Empty upload folders are removed too."""
    import time

    from engine.workspace import Workspace

    root = Workspace(workspace_root).root / UPLOAD_DIR
    if not root.is_dir():
        return 0
    ttl = upload_ttl_hours() if ttl_hours is None else float(ttl_hours)
    limit = (time.time() if now is None else now) - ttl * 3600.0
    removed = 0
    for folder in list(root.iterdir()):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for f in list(folder.iterdir()):
            try:
                if f.lstat().st_mtime <= limit:
                    f.unlink()
                    removed += 1
            except OSError:
                continue
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass
    return removed
