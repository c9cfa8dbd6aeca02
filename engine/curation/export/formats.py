"""Export the corrected dataset in a standard format: PNG (the workbench's own), DICOM-SEG, COCO or NIfTI.

:func:`export_dataset` is the one entry point (CLI ``export-corrected --format`` and the editor's
export button). ``png`` is :func:`engine.curation.export.png.export_corrected` unchanged. The other formats
take the same masks, chosen the same way (latest mask versions from the review store, review
decisions applied: drops, unions, emptied masks), by running that export into a private
staging folder, then write the format:

- ``dicom-seg``: ``seg/<case>.dcm``, one DICOM Segmentation per labelled case whose image is a
  DICOM (:mod:`engine.interop.dicom_seg`); other cases are skipped and listed with the reason.
  Without ``copy_images`` each SEG references the original DICOM (and copies its patient module,
  as the SEG IOD requires: for the source's own PACS); with it, ``images/`` holds de-identified
  copies and each SEG is derived from its copy, so the SEG references the new UIDs.
- ``coco``: ``annotations.json`` (:mod:`engine.interop.coco`), images copied to ``images/``
  with ``copy_images``.
- ``nifti``: ``labels/<case>.nii.gz`` + ``labels.json`` + ``labels.ctbl`` + ``images.csv``
  (:mod:`engine.interop.nifti`).

Every format writes ``export.json`` (counts, provenance, the acting user, skipped cases). The
result is built in a hidden temporary folder beside ``out_dir`` and renamed into place, so a
failed export leaves nothing half-written; ``out_dir`` must be new, empty, or an earlier export
of this program (never a folder the program did not create), and outside the dataset.
Unlabelled cases have no ground truth and are never exported in the standard formats.

Example:
    >>> with ReviewStore.for_dataset(ds) as store:                                          # doctest: +SKIP
    ...     info = export_dataset(ds, store, "/tmp/ptx-seg", "dicom-seg", author="alice")
    >>> info["n_written"], info["files"][:1]                                                # doctest: +SKIP
    (10, ['seg/1.2.826....dcm'])
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from engine.curation.export import png
from engine.errors import ConfigError, WorkbenchError, unknown_name
from engine.progress import ProgressFn, as_progress

if TYPE_CHECKING:
    from engine.datasets import Case, Dataset
    from engine.store import ReviewStore

FORMATS: tuple[str, ...] = ("png", "dicom-seg", "coco", "nifti")
#: one line per format, for pickers and help texts
FORMAT_HELP: dict[str, str] = {
    "png": "label PNGs + RLE CSV in the dataset's convention + a manifest training opens (the workbench's own)",
    "dicom-seg": "one DICOM Segmentation per case whose image is a DICOM, referencing it (PACS, OHIF, Slicer)",
    "coco": "one COCO JSON with RLE masks, category id = class id (CVAT, Label Studio, detectron2)",
    "nifti": "one .nii.gz label map per case + labels.json (3D Slicer, MONAI Label, ITK)",
}
SEG_DIR = "seg"
NIFTI_DIR = "labels"


def export_dataset(ds: Dataset, store: ReviewStore | None, out_dir: str | Path, fmt: str = "png",
                   progress: ProgressFn | None = None,
                   *, apply_decisions: bool = True, copy_images: bool = False, overwrite: bool = True,
                   author: str | None = None) -> dict[str, Any]:
    """Export the corrected dataset's current masks in ``fmt`` into ``out_dir`` (originals untouched).

    Args:
        ds: the reviewed :class:`engine.datasets.Dataset`.
        store: its :class:`engine.store.ReviewStore` (None: the original masks).
        out_dir: a new or empty folder outside the dataset, or an earlier export's folder.
        fmt: ``png`` (default), ``dicom-seg``, ``coco`` or ``nifti``.
        progress: ``(done, total, message)`` callback.
        apply_decisions: apply conflict-review decisions (drops, unions, emptied masks).
        copy_images: copy the images into ``out_dir/images``, DICOMs de-identified (PS3.15 basic
            profile, :mod:`engine.phi`) and their cases renamed to the new SOPInstanceUIDs; DICOM-SEGs
            are then derived from (and reference) the de-identified copies.
        overwrite: allow replacing an earlier export in ``out_dir``.
        author: the acting user (recorded in ``export.json``; DICOM-SEG Content Creator's Name).

    Returns:
        the export info (also in ``out_dir/export.json``). Standard formats: ``export_format``,
        ``out_dir``, ``files`` (relative paths written), ``n_written``, ``skipped``
        (``[{case_id, reason}]``), the counts of the PNG export (``n_cases``, ``n_exported``,
        ``n_corrected``, ``n_dropped``, ...), ``notes``; plus ``annotations`` (coco) or
        ``labels_json`` (nifti).

    Raises:
        ConfigError: unknown format; ``out_dir`` inside the dataset, or a folder this program did not create.
        WorkbenchError: the folder cannot be written (read-only file system or mount point, full disk,
            no permission), naming the folder and what to do; nothing was changed in it.
    """
    if fmt not in FORMATS:
        raise unknown_name("export format", fmt, FORMATS)
    if fmt == "png":
        info = png.export_corrected(ds, store, out_dir, progress, apply_decisions=apply_decisions,
                                    copy_images=copy_images, overwrite=overwrite)
        if author:
            info["author"] = author
        return info
    from engine.fsutil import write_errors

    report = as_progress(progress)
    out = Path(out_dir).expanduser().resolve()
    with write_errors(out):
        info = _export_standard(ds, store, out, fmt, report, apply_decisions=apply_decisions,
                                copy_images=copy_images, overwrite=overwrite, author=author)
    report(1, 1, "Export written")
    return info


def _export_standard(ds: Dataset, store: ReviewStore | None, out: Path, fmt: str, report: ProgressFn, *,
                     apply_decisions: bool, copy_images: bool, overwrite: bool, author: str | None) -> dict[str, Any]:
    """Build a standard-format export of ``ds`` beside ``out`` and rename it into place."""
    from engine.fsutil import cleanup_staging, install_dir, staging_dir

    cleaned = cleanup_staging(out)
    png._check_out_dir(ds, out, overwrite)
    tmp = staging_dir(out, "tmp")
    staging = staging_dir(out, "staging")
    try:
        def stage_progress(done: int, total: int, message: str = "") -> None:
            report(done, 2 * max(total, 1), f"Selecting masks: {message}")

        # with copy_images the staging export de-identifies the DICOMs (and renames their cases to the
        # new UIDs); the writers below then copy those files, so nothing identifying reaches ``out``
        base = png.export_corrected(ds, store, staging, stage_progress, apply_decisions=apply_decisions,
                                    copy_images=copy_images, overwrite=True)
        doc = json.loads((staging / png.MANIFEST_NAME).read_text(encoding="utf-8"))
        from engine.datasets import Case

        cases = [Case.from_dict(d) for d in doc.get("cases", [])]
        labels = {int(k): str(v) for k, v in doc.get("labels", {}).items()} or dict(ds.labels)
        writer = _WRITERS[fmt]
        staged_images = staging / "images"

        def copy_staged(_ds: Dataset, image_path: str, dest_root: Path) -> Path:
            src = Path(image_path)
            dest = dest_root / src.relative_to(staged_images)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            return dest

        extra, files, skipped, notes = writer(ds, cases, labels, tmp, report, copy_images=copy_images,
                                              author=author, copy_image=copy_staged)
        info = _info(fmt, base, out, files, skipped, cleaned + notes, author, extra)
        from engine.fsutil import atomic_write_json

        atomic_write_json(tmp / png.INFO_NAME, info, indent=1)
        install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _info(fmt: str, base: dict[str, Any], out: Path, files: list[str], skipped: list[dict[str, str]],
          notes: list[str], author: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    keep = ("format", "version", "source", "store", "apply_decisions", "decisions", "n_cases", "n_kept",
            "n_exported", "n_corrected", "n_mask_overrides", "n_unlabelled", "n_empty", "n_dropped", "dropped",
            "versions")
    info = {k: base.get(k) for k in keep}
    info.update({
        "export_format": fmt,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "author": author,
        "out_dir": str(out),
        "files": files,
        "n_written": len(files),
        "skipped": skipped,
        "notes": [n for n in base.get("notes", []) if "RLE CSV" not in n] + notes,
        **extra,
    })
    return info


def _labelled(cases: list[Case], skipped: list[dict[str, str]]) -> list[Case]:
    out = []
    for c in cases:
        if not c.labelled or c.mask.kind == "none":
            skipped.append({"case_id": c.case_id, "reason": "unlabelled (no ground truth to export)"})
        else:
            out.append(c)
    return out


def _mask(c: Case) -> np.ndarray:
    from engine.datasets import load_mask_source

    return load_mask_source(c.mask, (c.height, c.width), case_id=c.case_id, image_path=c.image_path)


def _image_root(ds: Dataset, cases: list[Case]) -> Path:
    """The dataset folder, or the images' common folder when some images lie outside it (manifests)."""
    root = Path(ds.root).expanduser().resolve()
    paths = [Path(c.image_path).resolve() for c in cases]
    if all(root in p.parents for p in paths):
        return root
    return Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else root


def _rel_image(image_root: Path, ds: Dataset, c: Case, dest: Path, copy_images: bool,
               copy_image: Callable[..., Path]) -> str:
    """The image's path relative to the export folder (copied) or to ``image_root``, POSIX-style."""
    if copy_images:
        p = copy_image(ds, c.image_path, dest / "images")
        return p.relative_to(dest).as_posix()
    return Path(c.image_path).resolve().relative_to(image_root).as_posix()


def _write_dicom_seg(ds: Dataset, cases: list[Case], labels: dict[int, str], dest: Path, report: ProgressFn, *,
                     copy_images: bool, author: str | None, copy_image: Callable[..., Path]):
    from engine.fsutil import safe_name
    from engine.interop.dicom_seg import write_dicom_seg
    from engine.io import reader_kind

    files: list[str] = []
    skipped: list[dict[str, str]] = []
    notes: list[str] = []
    todo = _labelled(cases, skipped)
    (dest / SEG_DIR).mkdir()
    refs: dict[str, dict[str, str]] = {}
    for i, c in enumerate(todo):
        try:
            is_dicom = reader_kind(c.image_path) == "dicom"
        except WorkbenchError:
            is_dicom = False
        if not is_dicom:
            skipped.append({"case_id": c.case_id, "reason": "image is not a DICOM (DICOM-SEG needs a DICOM source)"})
            continue
        name = f"{SEG_DIR}/{safe_name(c.case_id)}.dcm"
        try:
            r = write_dicom_seg(c.image_path, _mask(c), labels, dest / name, author=author)
        except WorkbenchError as exc:
            skipped.append({"case_id": c.case_id, "reason": str(exc)})
            continue
        files.append(name)
        refs[c.case_id] = {"file": name, "sop_instance_uid": r["sop_instance_uid"],
                           "referenced_sop_instance_uid": r["referenced_sop_instance_uid"]}
        if copy_images:  # the de-identified source the SEG was derived from and references
            refs[c.case_id]["image"] = copy_image(ds, c.image_path, dest / "images").relative_to(dest).as_posix()
        report(len(todo) + i + 1, 2 * len(todo), "Writing DICOM-SEG")
    n_not_dicom = sum(1 for s in skipped if s["reason"].startswith("image is not a DICOM"))
    if todo and n_not_dicom == len(todo):
        raise ConfigError("no labelled case of this dataset has a DICOM image: DICOM-SEG needs DICOM sources",
                          path=ds.root, hint="export it with --format nifti, coco or png instead")
    if n_not_dicom:
        notes.append(f"{n_not_dicom} case(s) skipped: their images are not DICOM files; export them as "
                     "png, coco or nifti instead")
    if copy_images:
        notes.append("images/ holds the de-identified source DICOMs (PS3.15 basic profile); each SEG was derived "
                     "from its de-identified copy, so it references the new UIDs and carries no patient data")
    else:
        notes.append("each SEG references the original source DICOM by UID and copies its patient and study "
                     "modules (required by the DICOM Segmentation IOD): keep these files inside the source's own "
                     "PACS workflow, or export with --copy-images for a de-identified set")
    return {"segmentations": refs}, files, skipped, notes


def _write_coco(ds: Dataset, cases: list[Case], labels: dict[int, str], dest: Path, report: ProgressFn, *,
                copy_images: bool, author: str | None, copy_image: Callable[..., Path]):
    from engine.interop.coco import COCO_NAME, build_coco, write_coco

    skipped: list[dict[str, str]] = []
    todo = _labelled(cases, skipped)

    image_root = _image_root(ds, todo)

    def items():
        for i, c in enumerate(todo):
            yield c.case_id, _rel_image(image_root, ds, c, dest, copy_images, copy_image), _mask(c), c.group_id
            report(len(todo) + i + 1, 2 * len(todo), "Writing COCO")

    doc = build_coco(items(), labels, image_root=None if copy_images else str(image_root))
    write_coco(dest / COCO_NAME, doc)
    notes = [f"{len(doc['images'])} images, {len(doc['annotations'])} annotations (one per class present), "
             f"{len(doc['categories'])} categories"]
    if not copy_images:
        notes.append("file names are relative to the dataset folder (info.segwb_image_root); put the JSON "
                     "there or pass --copy-images for a self-contained folder")
    return {"annotations": COCO_NAME}, [COCO_NAME], skipped, notes


def _write_nifti(ds: Dataset, cases: list[Case], labels: dict[int, str], dest: Path, report: ProgressFn, *,
                 copy_images: bool, author: str | None, copy_image: Callable[..., Path]):
    from engine.fsutil import atomic_write_json, atomic_write_text, safe_name
    from engine.interop.nifti import COLOUR_TABLE, LABELS_JSON, colour_table, write_nifti_mask

    skipped: list[dict[str, str]] = []
    todo = _labelled(cases, skipped)
    files: list[str] = []
    rows = ["case_id,group_id,image_path,mask_path"]
    _csv_field = png._csv_field  # the PNG export's CSV quoting

    for i, c in enumerate(todo):
        name = f"{NIFTI_DIR}/{safe_name(c.case_id)}.nii.gz"
        spacing = c.meta.get("pixel_spacing_mm") if isinstance(c.meta, dict) else None
        spacing = spacing if isinstance(spacing, (list, tuple)) and len(spacing) == 2 else None
        write_nifti_mask(dest / name, _mask(c), spacing)
        files.append(name)
        image = (_rel_image(dest, ds, c, dest, copy_images, copy_image) if copy_images
                 else str(Path(c.image_path).resolve()))
        rows.append(",".join(_csv_field(x) for x in (c.case_id, c.group_id, image, name)))
        report(len(todo) + i + 1, 2 * len(todo), "Writing NIfTI")
    atomic_write_json(dest / LABELS_JSON, {str(k): v for k, v in sorted(labels.items())}, indent=1)
    atomic_write_text(dest / COLOUR_TABLE, colour_table(labels))
    atomic_write_text(dest / "images.csv", "\n".join(rows) + "\n")
    files += [LABELS_JSON, COLOUR_TABLE, "images.csv"]
    notes = ["NIfTI masks are (W,H,1) with affine diag(-sx,-sy,1): Slicer's axial view shows them the right "
             "way round; labels.json and labels.ctbl (Slicer colour table) name the class ids"]
    return {"labels_json": LABELS_JSON}, files, skipped, notes


_WRITERS = {"dicom-seg": _write_dicom_seg, "coco": _write_coco, "nifti": _write_nifti}
