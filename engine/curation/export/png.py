"""Export the corrected dataset: current masks as PNGs, an RLE CSV, a manifest — originals untouched.

:func:`export_corrected` writes, into a new folder outside the dataset:

- ``masks/<case>.png`` — every labelled case's *current* mask as a lossless 8-bit label PNG
  (pixel value = class id): the newest saved version from the review store when the case was
  corrected (mask editor), else the dataset's original ground truth. With ``apply_decisions``
  (default) the conflict-review decisions are applied too, exactly as
  :func:`engine.curation.build_manifest` does: cases a reviewer dropped are left out, ``union``
  and ``both_empty`` decisions change masks, and when a case has several mask changes the
  most recent reviewer action wins.
- an RLE CSV in the dataset's own convention: Kaggle UNS → ``train_masks.csv``
  (``subject,img,pixels``, column-major 1-based runs); SIIM → ``train-rle.csv``
  (``ImageId,EncodedPixels``, one row per connected region, ``-1`` for empty); paired folders
  and manifests → none (their masks are files). RLE is binary: multi-class masks get no CSV.
- ``images.csv`` — ``case_id,image_path`` with the *original* image paths. Images are not
  copied by default (datasets are large and DICOMs carry headers that must not be duplicated
  casually); pass ``copy_images=True`` for a self-contained folder: non-DICOM images keep the
  dataset's relative paths under ``images/``; DICOMs are de-identified (:mod:`engine.phi`, DICOM
  PS3.15 basic profile) into ``images/<new SOPInstanceUID>.dcm`` and their cases renamed to that UID.
- ``manifest.json`` — a :mod:`engine.datasets.manifest` whose cases point at the original
  images and the exported masks: ``open_dataset(out_dir / "manifest.json")`` is what training
  and evaluation take. Dropped cases are listed with their reasons.
- ``export.json`` — counts and provenance (store, decisions, versions per case).

Nothing is written inside the dataset folder (refused), and the dataset's files are only read. The
export is built in a hidden folder beside ``out_dir`` and renamed into place (:func:`engine.fsutil.install_dir`):
a crash leaves the previous export whole; a non-empty folder without this program's ``export.json``
is refused, never deleted.

Example:
    >>> with ReviewStore.for_dataset(ds) as store:                                  # doctest: +SKIP
    ...     info = export_corrected(ds, store, "/tmp/nerve-corrected")
    >>> info["n_corrected"], info["manifest"]                                       # doctest: +SKIP
    (3, '/tmp/nerve-corrected/manifest.json')
    >>> open_dataset(info["manifest"])                                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.datasets.base import LABELS_CONVENTION
from engine.errors import ConfigError
from engine.fsutil import safe_name
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    from engine.datasets import Case, Dataset
    from engine.store import ReviewStore

EXPORT_FORMAT = "segwb-corrected-export"
EXPORT_VERSION = 1
INFO_NAME = "export.json"
MANIFEST_NAME = "manifest.json"
IMAGES_LIST = "images.csv"
CSV_NAMES = {"kaggle_uns": "train_masks.csv", "siim": "train-rle.csv"}


def is_our_export(folder: str | Path) -> bool:
    """True when ``folder`` holds an ``export.json`` written by this program (its marker)."""
    try:
        info = json.loads((Path(folder) / INFO_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == EXPORT_FORMAT


def _check_out_dir(ds: Dataset, out: Path, overwrite: bool) -> None:
    """Refuse an export folder inside the dataset, a file, or a non-empty folder this program did not
    write (identified by its ``export.json`` marker); an earlier export is replaced only with ``overwrite``."""
    root = Path(ds.root).expanduser().resolve()
    if out == root or root in out.parents:
        raise ConfigError("the export folder is inside the dataset folder", path=out,
                          hint="pick a folder outside the dataset (the original files must stay untouched)")
    mp = getattr(ds, "manifest_path", None)
    if mp is not None and Path(mp).resolve().parent == out:
        raise ConfigError("the export folder is the folder of the manifest being exported", path=out,
                          hint="pick a new, empty folder")
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir():
            raise ConfigError("the export path exists and is not a folder", path=out, hint="pick a new folder")
        items = any(out.iterdir())
        if items and not is_our_export(out):
            raise ConfigError("the export folder is not empty and holds no earlier export of this program; "
                              "nothing was written", path=out,
                              hint="pick an empty or new folder (a folder this program did not create is "
                                   "never replaced)")
        if items and not overwrite:
            raise ConfigError("the export folder holds an earlier export", path=out,
                              hint="pick a new folder, or allow replacing the earlier export")


def export_corrected(ds: Dataset, store: ReviewStore | None, out_dir: str | Path, progress: ProgressFn | None = None, *,
                     apply_decisions: bool = True, copy_images: bool = False,
                     overwrite: bool = True) -> dict[str, Any]:
    """Write the corrected dataset (current masks) into ``out_dir`` without touching the dataset.

    The export is built in a hidden folder beside ``out_dir`` and renamed into place when complete:
    an interrupted export leaves the previous one intact (never a manifest pointing at missing
    masks), and its leftovers are cleaned up by the next export to the same folder. A non-empty
    ``out_dir`` that is not an earlier export of this program is refused, never deleted.

    Args:
        ds: the :class:`engine.datasets.Dataset` that was reviewed.
        store: its :class:`engine.store.ReviewStore` (None: export the original masks).
        out_dir: a new or empty folder outside the dataset, or an earlier export's folder.
        progress: ``(done, total, message)`` callback.
        apply_decisions: also apply conflict-review decisions (drops, unions, emptied masks)
            like :func:`engine.curation.build_manifest`; False = corrected mask versions only.
        copy_images: copy the images into ``out_dir/images`` (default: list their paths). DICOMs
            are de-identified (:func:`engine.io.dicom.deidentify_dicom`, PS3.15 basic profile) and
            their cases renamed to the new SOPInstanceUID everywhere in the export (mask names,
            CSVs, manifest, ``export.json``), so nothing in the folder carries an original UID.
        overwrite: allow replacing an earlier export in ``out_dir``.

    Returns:
        the export info (also written to ``export.json``): ``out_dir``, ``manifest``,
        ``masks_dir``, ``rle_csv`` (or None), ``images_list``, counts ``n_cases``,
        ``n_exported`` (masks written), ``n_corrected``, ``n_unlabelled``, ``n_dropped``,
        ``n_empty``, ``versions`` ``{case_id: version}`` of the corrected cases,
        ``deidentified`` (number of DICOMs de-identified), ``notes``.

    Raises:
        ConfigError: ``out_dir`` is inside the dataset, or holds something else; a DICOM with
            burned-in annotation with ``copy_images``.
        WorkbenchError: the folder cannot be written (read-only file system or mount point, full disk,
            no permission), naming the folder and what to do; nothing was changed in it.
    """
    from engine.fsutil import cleanup_staging, install_dir, staging_dir, write_errors

    out = Path(out_dir).expanduser().resolve()
    with write_errors(out):
        notes = cleanup_staging(out)
        _check_out_dir(ds, out, overwrite)
        tmp = staging_dir(out)
        try:
            info = _build_export(ds, store, out, tmp, as_progress(progress), apply_decisions, copy_images, notes)
            install_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return info


def _build_export(ds: Dataset, store: ReviewStore | None, out: Path, tmp: Path, report: ProgressFn,
                  apply_decisions: bool,
                  copy_images: bool, notes: list[str]) -> dict[str, Any]:
    """Write the export's files into ``tmp``; every path recorded inside them names ``out``."""
    from engine.datasets import Dataset, MaskSource, load_mask_source, write_manifest
    from engine.fsutil import atomic_write_json, atomic_write_text
    from engine.io import write_mask_png

    masks_dir = out / "masks"
    (tmp / "masks").mkdir(parents=True)

    corrected = store.corrected_masks() if store is not None else {}
    if apply_decisions and store is not None:
        from engine.curation.cleaning import build_manifest

        cases, dropped, decision_info = build_manifest(ds, store, None, "none")
    else:
        cases, dropped, decision_info = [], [], {}
        for c in ds.cases:
            mv = corrected.get(c.case_id)
            if mv is not None:
                assert store is not None  # corrected masks only come from a store
                path = store.mask_file(mv)
                c = dataclasses.replace(c, mask=MaskSource("file", str(path), convention=LABELS_CONVENTION),
                                        labelled=True,
                                        has_mask=bool(mv.area), mask_area=int(mv.area or 0),
                                        meta={**c.meta, "mask_origin": "review:corrected"})
            cases.append(c)

    deid = _Deidentifier(ds) if copy_images else None
    total = len(cases)
    report(0, total, "Exporting masks")
    out_cases = []
    items: list[tuple[str, np.ndarray]] = []
    images_rows = ["case_id,image_path"]
    n_unlabelled = n_empty = 0
    max_class = 0
    # masks from the review store are already consecutive class ids: never re-map them
    store_root = Path(store.masks_dir).resolve() if store is not None else None
    for i, c in enumerate(cases):
        src_image = c.image_path
        image_path = c.image_path
        case_id, group_id, meta = c.case_id, c.group_id, dict(c.meta)
        if deid is not None:
            copied = deid.copy(c, tmp / "images")
            image_path = str(out / copied.relative_to(tmp))
            case_id, group_id, meta = deid.case_fields(c)
        images_rows.append(f"{_csv_field(case_id)},{_csv_field(image_path)}")
        if not c.labelled or c.mask.kind == "none":
            n_unlabelled += 1
            out_cases.append(dataclasses.replace(c, case_id=case_id, group_id=group_id, image_path=image_path,
                                                 meta=meta))
            continue
        from_store = (c.mask.kind == "file" and store_root is not None and c.mask.path is not None
                      and store_root in Path(c.mask.path).resolve().parents)
        mask = load_mask_source(c.mask, (c.height, c.width), case_id=c.case_id,
                                options=None if from_store else ds.options,
                                label_lut=None if from_store else ds.label_lut, image_path=src_image)
        mask = np.ascontiguousarray(mask, np.uint8)
        name = f"{safe_name(case_id)}.png"
        write_mask_png(tmp / "masks" / name, mask)
        area = int(np.count_nonzero(mask))
        n_empty += area == 0
        max_class = max(max_class, int(mask.max()) if mask.size else 0)
        items.append((case_id, mask))
        meta.setdefault("mask_origin", "original")
        out_cases.append(dataclasses.replace(c, case_id=case_id, group_id=group_id, image_path=image_path,
                                             mask=MaskSource("file", str(masks_dir / name),
                                                             convention=LABELS_CONVENTION),
                                             labelled=True, has_mask=area > 0, mask_area=area, meta=meta))
        report(i + 1, total, "Exporting masks")

    versions = {cid: int(mv.version) for cid, mv in sorted(corrected.items())}
    if deid is not None:
        new_ids = [deid.case_id(cid) for cid, _ in dropped]  # map every dropped id before rewriting texts
        dropped = [(new, deid.text(why)) for new, (_, why) in zip(new_ids, dropped)]
        versions = {deid.case_id(cid): v for cid, v in versions.items()}
        notes.extend(deid.notes())

    layout = str(getattr(ds, "layout", ""))
    rle_csv: Path | None = None
    if layout in CSV_NAMES:
        if max_class > 1 or ds.num_classes > 2:
            notes.append("no RLE CSV: RLE holds binary masks and this dataset has several classes")
        else:
            from engine.rle import write_kaggle_uns_train_csv, write_siim_csv

            rle_csv = out / CSV_NAMES[layout]
            if layout == "kaggle_uns":
                write_kaggle_uns_train_csv(tmp / rle_csv.name, ((cid, m > 0) for cid, m in items))
            else:
                write_siim_csv(tmp / rle_csv.name, ((cid, m > 0) for cid, m in items))
    else:
        notes.append(f"no RLE CSV for the {layout} layout: the masks/ PNGs are the ground truth")
    atomic_write_text(tmp / IMAGES_LIST, "\n".join(images_rows) + "\n")

    # the exported PNGs hold consecutive class ids: the manifest must not re-map or re-colour them
    options = {k: v for k, v in (ds.options or {}).items() if k not in ("colour_map", "label_lut")}
    clean = Dataset(ds.root, ds.layout, [], ds.labels, options=options, label_lut=None, workdir=None)
    info: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"root": str(ds.root), "layout": ds.layout,
                   "manifest": str(getattr(ds, "manifest_path", "") or "") or None},
        "store": str(store.path) if store is not None else None,
        "apply_decisions": bool(apply_decisions and store is not None),
        "decisions": decision_info,
        "out_dir": str(out),
        "manifest": str(out / MANIFEST_NAME),
        "masks_dir": str(masks_dir),
        "rle_csv": str(rle_csv) if rle_csv else None,
        "images_list": str(out / IMAGES_LIST),
        "images_copied": bool(copy_images),
        "deidentified": deid.n_deidentified if deid is not None else 0,
        "n_cases": len(ds.cases),
        "n_kept": len(out_cases),
        "n_exported": len(items),
        "n_corrected": sum(1 for c in out_cases if c.meta.get("mask_origin") == "review:corrected"),
        "n_mask_overrides": sum(1 for c in out_cases if str(c.meta.get("mask_origin", "")).startswith("review:")),
        "n_unlabelled": n_unlabelled,
        "n_empty": n_empty,
        "n_dropped": len(dropped),
        "dropped": [{"case_id": cid, "reason": why} for cid, why in dropped],
        "versions": versions,
        "notes": notes,
    }
    write_manifest(tmp / MANIFEST_NAME, clean, out_cases, dropped,
                   {"export": {k: info[k] for k in ("created", "store", "apply_decisions", "n_exported",
                                                    "n_corrected", "n_dropped", "deidentified")}, **decision_info})
    atomic_write_json(tmp / INFO_NAME, info, indent=1)
    report(total, total, "Export written")
    return info


#: header fields of a case's ``meta`` that are DICOM UIDs (remapped in de-identified exports)
_UID_META = ("sop_instance_uid", "study_uid", "series_uid")
#: header fields the basic profile removes or empties (PatientAge X, PatientSex Z): dropped from the
#: meta of de-identified cases, so the manifest does not say what the DICOMs no longer do
_PROFILE_REMOVED_META = ("age_years", "age_raw", "age_flag", "sex", "path")


class _Deidentifier:
    """Copies a dataset's images for a self-contained export, de-identifying DICOMs.

    A DICOM case is renamed to its de-identified SOPInstanceUID (:func:`engine.phi.deid_uid` of
    the original, so dropped cases and decision texts can be renamed the same way without
    copying), and its UID header fields are remapped; non-DICOM images are copied unchanged
    under their relative path and keep their case ids.
    """

    def __init__(self, ds: Dataset):
        from engine.phi import install_secret

        self.ds = ds
        self.secret = install_secret()
        self.ids: dict[str, str] = {}
        self.n_deidentified = 0
        self.n_plain = 0
        self._pattern: tuple[int, Any, dict[str, str]] | None = None

    def _is_dicom(self, c: Case) -> bool:
        from engine.errors import WorkbenchError
        from engine.io import reader_kind

        try:
            return reader_kind(c.image_path) == "dicom"
        except WorkbenchError:
            return False

    def _sop(self, c: Case) -> str | None:
        uid = c.meta.get("sop_instance_uid") if isinstance(c.meta, dict) else None
        if uid:
            return str(uid)
        if not self._is_dicom(c):
            return None
        from engine.io.dicom import read_header

        return read_header(c.image_path).get("sop_instance_uid")

    def copy(self, c: Case, dest_root: Path) -> Path:
        """Copy (DICOM: de-identify) the case's image under ``dest_root``; returns the new path."""
        if self._is_dicom(c):
            from engine.io.dicom import deidentify_dicom

            r = deidentify_dicom(c.image_path, dest_root, self.secret)
            self.ids[c.case_id] = r["sop_instance_uid"]
            self.n_deidentified += 1
            return r["path"]
        self.n_plain += 1
        return _copy_image(self.ds, c.image_path, dest_root)

    def case_id(self, cid: str) -> str:
        """The exported id of case ``cid`` (DICOM: its de-identified SOPInstanceUID)."""
        if cid not in self.ids:
            try:
                c = self.ds.case(cid)
            except Exception:  # noqa: BLE001 - an id not in the dataset: keep it
                c = None
            sop = self._sop(c) if c is not None else None
            if sop:
                from engine.phi import deid_uid

                self.ids[cid] = deid_uid(sop, self.secret)
            else:
                self.ids[cid] = cid
        return self.ids[cid]

    def case_fields(self, c: Case) -> tuple[str, str, dict[str, Any]]:
        """``(case_id, group_id, meta)`` of a copied case, with original UIDs replaced."""
        from engine.phi import deid_uid

        cid = self.case_id(c.case_id)
        meta = dict(c.meta)
        if cid != c.case_id:
            for k in _UID_META:
                if meta.get(k):
                    meta[k] = deid_uid(str(meta[k]), self.secret)
            for k in _PROFILE_REMOVED_META:
                meta.pop(k, None)
        group = c.group_id
        if cid != c.case_id and (group == c.case_id or group in {str(c.meta[k]) for k in _UID_META if c.meta.get(k)}):
            group = deid_uid(str(group), self.secret)  # a group named by a UID (no PatientID)
        return cid, group, meta

    def text(self, text: str) -> str:
        """``text`` with every original case id it mentions replaced by the exported id."""
        if self._pattern is None or self._pattern[0] != len(self.ids):
            changed = {old: new for old, new in self.ids.items() if old != new}
            rx = re.compile("|".join(re.escape(k) for k in sorted(changed, key=len, reverse=True))) if changed else None
            self._pattern = (len(self.ids), rx, changed)
        _, rx, changed = self._pattern
        return rx.sub(lambda m: changed[m.group(0)], text) if rx is not None and text else text

    def notes(self) -> list[str]:
        out = []
        if self.n_deidentified:
            out.append(f"{self.n_deidentified} DICOM image(s) de-identified (DICOM PS3.15 Basic Application Level "
                       "Confidentiality Profile; UIDs replaced consistently, pixel data unchanged); their cases "
                       "are named by the new SOPInstanceUID")
        if self.n_plain:
            out.append(f"{self.n_plain} non-DICOM image(s) copied unchanged")
        return out


def _csv_field(text: str) -> str:
    t = str(text)
    return '"' + t.replace('"', '""') + '"' if any(ch in t for ch in ',"\n') else t


def _copy_image(ds: Dataset, image_path: str, dest_root: Path) -> Path:
    src = Path(image_path)
    root = Path(ds.root).expanduser().resolve()
    try:
        rel = src.resolve().relative_to(root)
    except ValueError:
        rel = Path(src.name)
    dest = dest_root / rel
    if not dest.exists() or dest.stat().st_size != src.stat().st_size:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    return dest
