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
  casually); pass ``copy_images=True`` for a self-contained folder (``images/`` mirrors the
  dataset's relative paths).
- ``manifest.json`` — a :mod:`engine.datasets.manifest` whose cases point at the original
  images and the exported masks: ``open_dataset(out_dir / "manifest.json")`` is what training
  and evaluation take. Dropped cases are listed with their reasons.
- ``export.json`` — counts and provenance (store, decisions, versions per case).

Nothing is written inside the dataset folder (refused), and the dataset's files are only read.

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
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from engine.datasets.base import LABELS_CONVENTION
from engine.errors import ConfigError
from engine.fsutil import safe_name
from engine.progress import ProgressFn, as_progress

EXPORT_FORMAT = "segwb-corrected-export"
EXPORT_VERSION = 1
INFO_NAME = "export.json"
MANIFEST_NAME = "manifest.json"
IMAGES_LIST = "images.csv"
CSV_NAMES = {"kaggle_uns": "train_masks.csv", "siim": "train-rle.csv"}


def _check_out_dir(ds: Any, out: Path, overwrite: bool) -> None:
    root = Path(ds.root).expanduser().resolve()
    if out == root or root in out.parents:
        raise ConfigError("the export folder is inside the dataset folder", path=out,
                          hint="pick a folder outside the dataset (the original files must stay untouched)")
    mp = getattr(ds, "manifest_path", None)
    if mp is not None and Path(mp).resolve().parent == out:
        raise ConfigError("the export folder is the folder of the manifest being exported", path=out,
                          hint="pick a new, empty folder")
    if out.exists():
        if not out.is_dir():
            raise ConfigError("the export path is a file", path=out, hint="pick a folder")
        items = any(out.iterdir())
        if items and not (out / INFO_NAME).is_file():
            raise ConfigError("the export folder is not empty (and holds no earlier export)", path=out,
                              hint="pick an empty or new folder")
        if items and not overwrite:
            raise ConfigError("the export folder holds an earlier export", path=out,
                              hint="pick a new folder, or allow replacing the earlier export")


def export_corrected(ds: Any, store: Any, out_dir: str | Path, progress: ProgressFn | None = None, *,
                     apply_decisions: bool = True, copy_images: bool = False,
                     overwrite: bool = True) -> dict[str, Any]:
    """Write the corrected dataset (current masks) into ``out_dir`` without touching the dataset.

    Args:
        ds: the :class:`engine.datasets.Dataset` that was reviewed.
        store: its :class:`engine.store.ReviewStore` (None: export the original masks).
        out_dir: a new or empty folder outside the dataset, or an earlier export's folder.
        progress: ``(done, total, message)`` callback.
        apply_decisions: also apply conflict-review decisions (drops, unions, emptied masks)
            like :func:`engine.curation.build_manifest`; False = corrected mask versions only.
        copy_images: copy the images into ``out_dir/images`` (default: list their paths).
        overwrite: allow replacing an earlier export in ``out_dir``.

    Returns:
        the export info (also written to ``export.json``): ``out_dir``, ``manifest``,
        ``masks_dir``, ``rle_csv`` (or None), ``images_list``, counts ``n_cases``,
        ``n_exported`` (masks written), ``n_corrected``, ``n_unlabelled``, ``n_dropped``,
        ``n_empty``, ``versions`` ``{case_id: version}`` of the corrected cases, ``notes``.

    Raises:
        ConfigError: ``out_dir`` is inside the dataset, or holds something else.
    """
    from engine.datasets import Dataset, MaskSource, load_mask_source, write_manifest
    from engine.fsutil import atomic_write_json, atomic_write_text
    from engine.io import write_mask_png

    report = as_progress(progress)
    out = Path(out_dir).expanduser().resolve()
    _check_out_dir(ds, out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    masks_dir = out / "masks"
    if masks_dir.exists():  # an earlier export: start clean so removed cases do not linger
        shutil.rmtree(masks_dir)
    masks_dir.mkdir(parents=True)
    notes: list[str] = []

    corrected = store.corrected_masks() if store is not None else {}
    if apply_decisions and store is not None:
        from engine.curation.manifest import build_manifest

        cases, dropped, decision_info = build_manifest(ds, store, None, "none")
    else:
        cases, dropped, decision_info = [], [], {}
        for c in ds.cases:
            mv = corrected.get(c.case_id)
            if mv is not None:
                path = store.mask_file(mv)
                c = dataclasses.replace(c, mask=MaskSource("file", str(path), convention=LABELS_CONVENTION),
                                        labelled=True,
                                        has_mask=bool(mv.area), mask_area=int(mv.area or 0),
                                        meta={**c.meta, "mask_origin": "review:corrected"})
            cases.append(c)

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
        image_path = c.image_path
        if copy_images:
            image_path = str(_copy_image(ds, c.image_path, out / "images"))
        images_rows.append(f"{_csv_field(c.case_id)},{_csv_field(image_path)}")
        if not c.labelled or c.mask.kind == "none":
            n_unlabelled += 1
            out_cases.append(dataclasses.replace(c, image_path=image_path))
            continue
        from_store = (c.mask.kind == "file" and store_root is not None and c.mask.path is not None
                      and store_root in Path(c.mask.path).resolve().parents)
        mask = load_mask_source(c.mask, (c.height, c.width), case_id=c.case_id,
                                options=None if from_store else ds.options,
                                label_lut=None if from_store else ds.label_lut, image_path=c.image_path)
        mask = np.ascontiguousarray(mask, np.uint8)
        path = masks_dir / f"{safe_name(c.case_id)}.png"
        write_mask_png(path, mask)
        area = int(np.count_nonzero(mask))
        n_empty += area == 0
        max_class = max(max_class, int(mask.max()) if mask.size else 0)
        items.append((c.case_id, mask))
        meta = dict(c.meta)
        meta.setdefault("mask_origin", "original")
        out_cases.append(dataclasses.replace(c, image_path=image_path,
                                             mask=MaskSource("file", str(path), convention=LABELS_CONVENTION),
                                             labelled=True, has_mask=area > 0, mask_area=area, meta=meta))
        report(i + 1, total, "Exporting masks")

    layout = str(getattr(ds, "layout", ""))
    rle_csv: Path | None = None
    if layout in CSV_NAMES:
        if max_class > 1 or ds.num_classes > 2:
            notes.append("no RLE CSV: RLE holds binary masks and this dataset has several classes")
        else:
            from engine.rle import write_kaggle_uns_train_csv, write_siim_csv

            rle_csv = out / CSV_NAMES[layout]
            if layout == "kaggle_uns":
                write_kaggle_uns_train_csv(rle_csv, ((cid, m > 0) for cid, m in items))
            else:
                write_siim_csv(rle_csv, ((cid, m > 0) for cid, m in items))
    else:
        notes.append(f"no RLE CSV for the {layout} layout: the masks/ PNGs are the ground truth")
    atomic_write_text(out / IMAGES_LIST, "\n".join(images_rows) + "\n")

    # the exported PNGs hold consecutive class ids: the manifest must not re-map or re-colour them
    options = {k: v for k, v in (ds.options or {}).items() if k not in ("colour_map", "label_lut")}
    clean = Dataset(ds.root, ds.layout, [], ds.labels, options=options, label_lut=None, workdir=None)
    versions = {cid: int(mv.version) for cid, mv in sorted(corrected.items())}
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
    write_manifest(out / MANIFEST_NAME, clean, out_cases, dropped,
                   {"export": {k: info[k] for k in ("created", "store", "apply_decisions", "n_exported",
                                                    "n_corrected", "n_dropped")}, **decision_info})
    atomic_write_json(out / INFO_NAME, info, indent=1)
    report(total, total, "Export written")
    return info


def _csv_field(text: str) -> str:
    t = str(text)
    return '"' + t.replace('"', '""') + '"' if any(ch in t for ch in ',"\n') else t


def _copy_image(ds: Any, image_path: str, dest_root: Path) -> Path:
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
