"""Dataset layouts that import standard exchange formats: COCO JSON, DICOM-SEG, NIfTI label maps.

So work round-trips with CVAT, Label Studio, 3D Slicer and MONAI Label (and with this
workbench's own ``export-corrected --format``):

- ``coco``: a COCO JSON (polygons or RLE) next to its images. ``file_name`` is resolved against
  the JSON's folder, its ``images/`` subfolder, the dataset folder, the ``image_root`` option,
  and (for this workbench's exports, recognised by their ``export.json``) the source dataset and
  the JSON's ``info.segwb_image_root``; a name that points outside those folders is refused.

Side files never widen where images come from: ``export.json``'s ``source.root``, COCO's
``info.segwb_image_root`` and ``images.csv`` image paths must lie inside the dataset folder, the
user's ``image_root`` option or (team mode) the ``data_roots`` option; an outside one is a bad file
saying how to allow it, and is never walked. ``segwb_case_id`` / ``segwb_group_id`` keys
  keep case ids and patient groups; images without annotations are labelled empty.
- ``dicom_seg``: DICOM Segmentation objects next to their source DICOMs (or the source tree
  named by ``image_root`` / ``export.json``), paired by the referenced SOPInstanceUID. Images no
  SEG references are unlabelled; when several SEGs reference one image the newest (Content
  Date/Time) wins. Segment labels become the label map (segments with the same label share a
  class id across files).
- ``nifti``: ``.nii``/``.nii.gz`` label maps in the ``(W,H,1)`` convention of
  :mod:`engine.interop.nifti`, paired with images by an ``images.csv`` (this workbench's
  export) or by file stem; class names from ``labels.json`` when present.

Decoded masks are materialised once as lossless label PNGs in the dataset's workspace folder
(``imported-masks/``, keyed by the source file's stamp), so training and the editor read them
like any other mask; the exchange files themselves are only read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from engine.datasets.base import LABELS_CONVENTION, BadFile, Case, MaskSource
from engine.datasets.layouts import (
    DEFAULT_MASK_SUFFIXES,
    Detection,
    ScanResult,
    SIIMLayout,
    _bad,
    _default_label_names,
    _group_ids,
    _verify_image,
    split_records,
    with_suffix,
)
from engine.datasets.scan import ScanCache, Stamp, list_files
from engine.errors import LayoutError, MaskError, WorkbenchError
from engine.fsutil import file_stamp, safe_name
from engine.io import IMAGE_SUFFIXES, image_size
from engine.parallel import parallel_map
from engine.progress import ProgressFn

EXPORT_INFO = "export.json"
_SKIP_JSON = {"export.json", "manifest.json", "labels.json", "card.json", "planted_pairs.json"}


# ---------------------------------------------------------------------------------------------
# shared helpers


def _mask_dir(root: Path, cache: ScanCache, layout: str) -> Path:
    """Where decoded masks are materialised: the dataset's workspace folder (beside the index cache)."""
    if cache.path is not None:
        base = cache.path.parent
    else:
        from engine.workspace import Workspace

        base = Workspace().dataset_dir(root)
    return base / "imported-masks" / layout


def _key(*parts: Any) -> str:
    return hashlib.sha1("\0".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _write_png(path: Path, mask: np.ndarray) -> None:
    from engine.io import write_mask_png

    if mask.size and int(mask.max()) > 255:
        raise MaskError("more than 255 classes cannot be stored as a label PNG", path=path,
                        hint="merge classes; the workbench's masks are 8-bit")
    write_mask_png(path, mask.astype(np.uint8))


def _stamp(path: Path, files: dict[Path, Stamp]) -> Stamp | None:
    if path in files:
        return files[path]
    try:
        return file_stamp(path)
    except OSError:
        return None


def _export_source_root(root: Path) -> str | None:
    """The source dataset folder recorded by this workbench's ``export.json`` in ``root`` (None otherwise)."""
    p = root / EXPORT_INFO
    if not p.is_file():
        return None
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(info, dict) or info.get("format") != "segwb-corrected-export":
        return None
    source = info.get("source")
    src = source.get("root") if isinstance(source, dict) else None
    return src if isinstance(src, str) and src else None


def _allowed_roots(root: Path, options: dict[str, Any]) -> list[Path]:
    """Folders a side file may point into: the dataset folder, the ``image_root`` option (the user's
    own choice) and, in team mode, the ``data_roots`` option (the admin's data roots)."""
    roots = [root.resolve()]
    if options.get("image_root"):
        roots.append(Path(options["image_root"]).expanduser().resolve())
    for r in options.get("data_roots") or []:
        roots.append(Path(r).expanduser().resolve())
    return list(dict.fromkeys(roots))


def _confined(value: str, root: Path, options: dict[str, Any]) -> Path | None:
    """``value`` (relative to ``root`` when relative) resolved, if it lies in an allowed folder; else None."""
    try:
        cand = (root / Path(value).expanduser()).resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    return cand if any(_inside(cand, r) for r in _allowed_roots(root, options)) else None


def _outside_reason(what: str, value: str) -> str:
    return (f"{what} names the image folder {value!r}, which is outside this dataset folder, so its images are not "
            "used. Fix: copy the images into the folder (export with --copy-images), or, if you trust that "
            "folder, open the dataset with --image-root (the image_root option) set to it")


def _extra_roots(root: Path, options: dict[str, Any], bad: list[BadFile] | None = None) -> list[Path]:
    """Image folders beyond ``root``: the ``image_root`` option and, when confined to the allowed folders
    (:func:`_allowed_roots`), the source recorded in this workbench's ``export.json``. An outside source
    is never walked; it is reported in ``bad`` (unless the user gave ``image_root``, which supersedes it)."""
    roots: list[Path] = []
    if options.get("image_root"):
        roots.append(Path(options["image_root"]).expanduser().resolve())
    src = _export_source_root(root)
    if src is not None:
        ok = _confined(src, root, options)
        if ok is None:
            if bad is not None and not options.get("image_root"):  # the user's own image_root supersedes it
                bad.append(_bad(root / EXPORT_INFO, f"{root / EXPORT_INFO}: " + _outside_reason("source.root", src)))
        elif ok.is_dir():
            roots.append(ok)
    return [r for r in dict.fromkeys(roots) if r != root and not _inside(r, root.resolve())]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _cached_mask_ok(value: dict[str, Any]) -> bool:
    c = value.get("case")
    if not c:
        return True
    m = c.get("mask") or {}
    return m.get("kind") != "file" or Path(m.get("path", "")).exists()


# ---------------------------------------------------------------------------------------------
# COCO


class COCOLayout:
    """A COCO JSON (``images`` + ``annotations`` + ``categories``) next to its images."""

    name = "coco"

    @staticmethod
    def _jsons(root: Path, files: dict[Path, Stamp]) -> list[Path]:
        out = []
        for p in with_suffix(files, ".json"):
            if p.name in _SKIP_JSON or p.name.startswith("index-"):
                continue
            if len(p.relative_to(root).parts) > 2:
                continue
            try:
                with open(p, "rb") as fh:
                    head = fh.read(65536).decode("utf-8", errors="replace")
            except OSError:
                continue
            if '"images"' in head and ('"annotations"' in head or '"categories"' in head or '"file_name"' in head):
                out.append(p)
        return out

    @classmethod
    def detect(cls, root: Path, files: dict[Path, Stamp]) -> Detection | None:
        jsons = cls._jsons(root, files)
        if not jsons:
            return None
        return Detection(cls.name, 0.97, f"COCO JSON {', '.join(p.name for p in jsons[:3])}")

    @classmethod
    def scan(cls, root: Path, files: dict[Path, Stamp], options: dict[str, Any], cache: ScanCache,
             progress: ProgressFn | None, verify: bool) -> ScanResult:
        from engine.interop.coco import MAX_CATEGORIES, category_classes, int_field, read_coco

        jsons = [Path(options["coco_json"]).expanduser().resolve()] if options.get("coco_json") \
            else cls._jsons(root, files)
        bad: list[BadFile] = []
        notes: list[str] = []
        names: dict[str, int] = {}
        jobs: list[tuple[Path, dict[str, Any], list[dict[str, Any]], dict[int, int], str]] = []
        extra = _extra_roots(root, options, bad)
        for jp in jsons:
            try:
                doc = read_coco(jp)
                cat_local, cat_labels = category_classes(doc, jp)
                images, by_image, orphans = _coco_index(doc, jp)
            except WorkbenchError as exc:
                bad.append(_bad(jp, exc))
                continue
            new_names = [n for n in dict.fromkeys(cat_labels[c] for c in sorted(cat_labels) if c) if n not in names]
            if len(names) + len(new_names) > MAX_CATEGORIES:
                bad.append(_bad(jp, f"{jp}: its categories bring the dataset to {len(names) + len(new_names)} "
                                    f"classes; the label maps hold at most {MAX_CATEGORIES}. Fix: merge categories"))
                continue
            cat_to_class = {cid: names.setdefault(cat_labels[local], len(names) + 1)
                            for cid, local in cat_local.items()}
            for image_id, n in orphans.items():
                bad.append(_bad(jp, f"{jp}: {n} annotation(s) reference image_id {image_id}, which is not in "
                                    "'images'; they were not imported. Fix: add the image or remove the annotations"))
            doc_info = doc.get("info")
            info = doc_info if isinstance(doc_info, dict) else {}
            own = info.get("segwb_image_root")
            if isinstance(own, str) and own and _export_source_root(root) is not None:
                ok = _confined(own, root, options)  # this workbench's own export (export.json beside it)
                if ok is None:
                    if not options.get("image_root"):
                        bad.append(_bad(jp, f"{jp}: " + _outside_reason("info.segwb_image_root", own)))
                elif ok.is_dir() and ok not in extra:
                    extra.append(ok)
            split = jp.stem if len(jsons) > 1 else ""
            ids = Counter(img["id"] for img in images)
            for img in images:
                if ids[img["id"]] > 1:
                    bad.append(_bad(jp, f"{jp}: image id {img['id']} is used by {ids[img['id']]} images (this one: "
                                        f"{str(img.get('file_name', ''))!r}); none of them is imported, since their "
                                        "annotations cannot be told apart. Fix: give every image its own id"))
                    continue
                jobs.append((jp, img, by_image.get(img["id"], []), cat_to_class, split))
            notes.append(f"{jp.name}: {len(doc['images'])} images, {len(doc.get('annotations', []))} annotations, "
                         f"{len(cat_to_class)} categories")
        mask_dir = _mask_dir(root, cache, cls.name)

        def resolve(jp: Path, file_name: str) -> Path | None:
            for base in [jp.parent, jp.parent / "images", root, root / "images", *extra]:
                base = base.resolve()
                cand = (base / file_name).resolve()
                if _inside(cand, base) and cand.is_file():
                    return cand
            return None

        def work(job) -> dict[str, Any]:
            jp, img, anns, cat_to_class, split = job
            fname = str(img.get("file_name", ""))
            where = f"{jp.name} image {img.get('id')} ({fname})"
            path = resolve(jp, fname) if fname else None
            if path is None:
                return {"bad": _bad(jp, f"{where}: image file not found next to the JSON (or it points outside "
                                        "the dataset folder)").to_dict()}
            stamps = [_stamp(path, files), _stamp(jp, files)]
            key = f"{jp}#{img.get('id')}"
            hit = cache.get(key, stamps, need_verified=verify)
            if hit is not None and _cached_mask_ok(hit):
                return hit
            try:
                hw = _verify_image(path) if verify else image_size(path)
                h, w = (default if img.get(k) is None else int_field(img[k], f"{where}: {k}", jp, minimum=1)
                        for k, default in (("height", hw[0]), ("width", hw[1])))
                if (h, w) != tuple(hw):
                    raise MaskError(f"{where}: the JSON says {h}x{w} but the image is {hw[0]}x{hw[1]}",
                                    path=jp, hint="fix the image size in the JSON or pair the right image")
                from engine.interop.coco import image_label_map

                mask = image_label_map(anns, h, w, cat_to_class, where=where)
                cid = str(img.get("segwb_case_id") or Path(fname).stem)
                labelled = img.get("segwb_labelled", True) is not False
                meta: dict[str, Any] = {"coco_image_id": img.get("id"), "mask_origin": f"coco:{jp.name}",
                                        "classes": sorted(int(v) for v in np.unique(mask))}
                if labelled:
                    png = mask_dir / _key(jp, stamps[1]) / f"{safe_name(cid)}.png"
                    _write_png(png, mask)
                    src = MaskSource("file", str(png), convention=LABELS_CONVENTION)
                    area = int(np.count_nonzero(mask))
                else:
                    src, area = MaskSource("none"), -1
                group = str(img.get("segwb_group_id") or "")
                case = Case(cid, group, str(path), src, labelled, area > 0, area, hw[0], hw[1], split, meta)
                value = {"case": case.to_dict()}
            except WorkbenchError as exc:
                value = {"bad": _bad(jp, exc).to_dict()}
            cache.put(key, stamps, value, verified=verify)
            return value

        cases = _finish_cases(parallel_map(work, jobs, progress, "indexing COCO images"), bad, notes,
                              options.get("group_regex"))
        labels = {0: "background", **{i: n for n, i in names.items()}} if names else {0: "background", 1: "foreground"}
        return ScanResult(cases, labels, bad, notes, {})


def _coco_index(doc: dict[str, Any], jp: Path) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]],
                                                        dict[int, int]]:
    """Check a COCO document's ids and group its annotations by image.

    Returns:
        ``(images, {image id: annotations}, {missing image id: annotation count})``.

    Raises:
        LayoutError: an image or annotation that is not an object, or an id / category id that is not an
        integer (the whole file is refused: which image such an annotation belongs to is unknown).
    """
    from engine.interop.coco import int_field

    images: list[dict[str, Any]] = []
    for i, img in enumerate(doc["images"]):
        if not isinstance(img, dict):
            raise LayoutError(f"images[{i}] is not an object", path=jp, hint="fix or re-export the file")
        int_field(img.get("id"), f"images[{i}] id", jp)
        images.append(img)
    known = {img["id"] for img in images}
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    orphans: Counter[int] = Counter()
    for i, a in enumerate(doc.get("annotations", [])):
        if not isinstance(a, dict):
            raise LayoutError(f"annotations[{i}] is not an object", path=jp, hint="fix or re-export the file")
        image_id = int_field(a.get("image_id"), f"annotation {a.get('id', i)} image_id", jp)
        int_field(a.get("category_id"), f"annotation {a.get('id', i)} category_id", jp)
        if image_id in known:
            by_image[image_id].append(a)
        else:
            orphans[image_id] += 1
    return images, by_image, dict(orphans)


def _finish_cases(records: list[dict[str, Any]], bad: list[BadFile], notes: list[str],
                  group_regex: str | None) -> list[Case]:
    """The cases of per-image records (bad ones appended to ``bad``), with unique ids and a group
    for every case whose source named none (from ``group_regex`` or the id)."""
    cases, bad_records = split_records(records)
    bad += bad_records
    _unique_ids(cases, notes)
    missing = [c for c in cases if not c.group_id]
    if missing:
        groups = _group_ids([c.case_id for c in missing], group_regex)
        for c in missing:
            c.group_id = groups[c.case_id]
    return cases


def _unique_ids(cases: list[Case], notes: list[str]) -> None:
    count = Counter(c.case_id for c in cases)
    dup = {k for k, n in count.items() if n > 1}
    if not dup:
        return
    for c in cases:
        if c.case_id in dup:
            c.case_id = f"{c.split}/{c.case_id}" if c.split else f"{c.case_id}@{Path(c.image_path).parent.name}"
    count = Counter(c.case_id for c in cases)
    for c in cases:  # still clashing (same name, same folder): number them
        if count[c.case_id] > 1:
            c.case_id = f"{c.case_id}#{c.meta.get('coco_image_id', id(c))}"
    notes.append(f"{len(dup)} duplicate image name(s): their case ids were made unique")


# ---------------------------------------------------------------------------------------------
# DICOM-SEG


class DicomSegLayout:
    """DICOM Segmentation objects next to their source DICOMs, paired by referenced SOPInstanceUID."""

    name = "dicom_seg"

    @staticmethod
    def _likely_segs(dicoms: list[Path]) -> list[Path]:
        named = [p for p in dicoms if "seg" in p.name.lower() or any("seg" in q.lower() for q in p.parts[-3:-1])]
        if named:
            return named[:64]
        step = max(1, len(dicoms) // 32)
        return dicoms[::step][:32]

    @classmethod
    def detect(cls, root: Path, files: dict[Path, Stamp]) -> Detection | None:
        from engine.interop.dicom_seg import is_dicom_seg

        dicoms = with_suffix(files, ".dcm", ".dicom")
        if not dicoms:
            return None
        found = [p for p in cls._likely_segs(dicoms) if is_dicom_seg(p)]
        if not found:
            return None
        return Detection(cls.name, 0.98, f"DICOM Segmentation object(s) among {len(dicoms)} DICOM files "
                                         f"(e.g. {found[0].name})")

    @classmethod
    def scan(cls, root: Path, files: dict[Path, Stamp], options: dict[str, Any], cache: ScanCache,
             progress: ProgressFn | None, verify: bool) -> ScanResult:
        from engine.interop.dicom_seg import is_dicom_seg, read_dicom_seg
        from engine.io.dicom import read_header

        notes: list[str] = []
        bad: list[BadFile] = []
        all_files = dict(files)
        for extra in _extra_roots(root, options, bad):
            all_files.update(list_files(extra))
        dicoms = SIIMLayout._dicoms(all_files)

        def classify(p: Path) -> dict[str, Any]:
            stamps = [all_files[p]]
            hit = cache.get(f"kind:{p}", stamps)
            if hit is not None:
                return hit
            value = {"path": str(p), "seg": is_dicom_seg(p)}
            cache.put(f"kind:{p}", stamps, value)
            return value

        kinds = parallel_map(classify, dicoms, progress, "finding DICOM-SEG objects")
        seg_paths = [Path(k["path"]) for k in kinds if k["seg"]]
        image_paths = [Path(k["path"]) for k in kinds if not k["seg"]]
        mask_dir = _mask_dir(root, cache, cls.name)

        def parse(p: Path) -> dict[str, Any]:
            stamps = [all_files[p]]
            hit = cache.get(f"seg:{p}", stamps, need_verified=False)
            if hit is not None and all(Path(s["png"]).exists() for s in hit.get("sources", {}).values()):
                return hit
            try:
                seg = read_dicom_seg(p)
                sources = {}
                folder = mask_dir / _key(p, stamps[0])
                for uid in seg.source_uids:
                    lm = seg.label_map(uid)
                    png = folder / f"{safe_name(uid)}.png"
                    _write_png(png, lm)
                    sources[uid] = {"png": str(png), "classes": sorted(int(v) for v in np.unique(lm))}
                value = {"path": str(p), "segments": {str(k): v for k, v in seg.segments.items()},
                         "sources": sources, "content_datetime": seg.content_datetime,
                         "hw": [seg.rows, seg.columns], "sop": seg.sop_instance_uid}
            except WorkbenchError as exc:
                value = {"bad": _bad(p, exc).to_dict()}
            cache.put(f"seg:{p}", stamps, value)
            return value

        parsed = parallel_map(parse, seg_paths, progress, "reading DICOM-SEG objects")
        segs = [s for s in parsed if "bad" not in s]
        bad += [BadFile(**s["bad"]) for s in parsed if "bad" in s]
        # one label map for all SEGs: segments with the same label share a class id
        names: dict[str, int] = {}
        for s in sorted(segs, key=lambda s: s["path"]):
            for num, label in sorted(s["segments"].items(), key=lambda kv: int(kv[0])):
                names.setdefault(label, len(names) + 1)
        by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in segs:
            for uid in s["sources"]:
                by_source[uid].append(s)
        several = sum(1 for v in by_source.values() if len(v) > 1)
        if several:
            notes.append(f"{several} image(s) are referenced by several SEGs: the newest (Content Date/Time) is used")

        def header(p: Path) -> dict[str, Any]:
            stamps = [all_files[p]]
            hit = cache.get(f"hdr:{p}", stamps, need_verified=verify)
            if hit is not None:
                return hit
            try:
                rec = read_header(p)
                if int(rec.get("rows") or 0) <= 0 or int(rec.get("columns") or 0) <= 0:
                    raise WorkbenchError("DICOM header has no Rows/Columns", path=p,
                                         hint="it is probably not an image; remove it from the folder")
                if verify:
                    _verify_image(p)
                rec.pop("path", None)
                value = {"path": str(p), "rec": rec}
            except WorkbenchError as exc:
                value = {"bad": _bad(p, exc).to_dict()}
            cache.put(f"hdr:{p}", stamps, value, verified=verify)
            return value

        headers = parallel_map(header, image_paths, progress, "indexing DICOM images")
        bad += [BadFile(**h["bad"]) for h in headers if "bad" in h]
        cases: list[Case] = []
        seen_uids: set[str] = set()
        for h in headers:
            if "bad" in h:
                continue
            p, rec = Path(h["path"]), h["rec"]
            hw = (int(rec.get("rows") or 0), int(rec.get("columns") or 0))
            uid = str(rec.get("sop_instance_uid") or p.stem)
            if uid in seen_uids:
                bad.append(_bad(p, f"a second DICOM with SOPInstanceUID {uid} (ignored)"))
                continue
            seen_uids.add(uid)
            src, area, labelled = MaskSource("none"), -1, False
            meta = dict(rec)
            cands = by_source.get(uid, [])
            if cands:
                s = max(cands, key=lambda s: (s["content_datetime"], s["path"]))
                if tuple(s["hw"]) != hw:
                    bad.append(_bad(s["path"], f"SEG is {s['hw'][0]}x{s['hw'][1]} but its source {p.name} is "
                                               f"{hw[0]}x{hw[1]}"))
                else:
                    png = Path(s["sources"][uid]["png"])
                    lut = {int(k): names[v] for k, v in s["segments"].items()}
                    if any(k != v for k, v in lut.items()):
                        png = _remapped(png, lut)
                    from engine.io import read_mask

                    lm, _ = read_mask(png)
                    area = int(np.count_nonzero(lm))
                    src, labelled = MaskSource("file", str(png), convention=LABELS_CONVENTION), True
                    meta.update(mask_origin=f"dicom-seg:{Path(s['path']).name}", seg_sop_instance_uid=s["sop"],
                                classes=sorted(int(v) for v in np.unique(lm)))
            group = rec.get("patient_key") or uid
            parts = p.parts
            split = "test" if any("test" in q.lower() for q in parts[-4:-1]) else "train"
            cases.append(Case(uid, str(group), str(p), src, labelled, area > 0, area, hw[0], hw[1], split, meta))
        for s in segs:
            for uid in s["sources"]:
                if uid not in seen_uids:
                    bad.append(_bad(s["path"], f"references SOPInstanceUID {uid}, which is not among the DICOMs "
                                               "here: put the SEG next to its source images (or pass image_root)"))
        notes.append(f"{len(segs)} DICOM-SEG object(s) label {sum(c.labelled for c in cases)} of "
                     f"{len(cases)} images")
        labels = {0: "background", **{i: n for n, i in names.items()}} if names else {0: "background", 1: "foreground"}
        return ScanResult(cases, labels, bad, notes, {})


def _remapped(png: Path, lut: dict[int, int]) -> Path:
    """A copy of a materialised mask with segment numbers mapped to the dataset's class ids."""
    from PIL import Image

    from engine.io import read_mask

    tag = _key(sorted(lut.items()))
    out = png.with_name(f"{png.stem}-{tag}.png")
    if not out.exists():
        with Image.open(png) as im:
            lm = np.asarray(im)  # the materialised label PNG's exact values (no mask-reading heuristics)
        if lm.ndim != 2:
            lm, _ = read_mask(png)
        table = np.zeros(256, np.uint8)
        for k, v in lut.items():
            table[k] = v
        _write_png(out, table[lm.astype(np.uint8)])
    return out


# ---------------------------------------------------------------------------------------------
# NIfTI


class NiftiLayout:
    """``.nii``/``.nii.gz`` label maps paired with images (``images.csv`` or the same file stem)."""

    name = "nifti"

    @staticmethod
    def _niftis(files: dict[Path, Stamp]) -> dict[Path, str]:
        from engine.interop.nifti import nifti_stem

        return {p: s for p in with_suffix(files, ".nii", ".gz") if (s := nifti_stem(p)) is not None}

    @classmethod
    def _pairs_by_stem(cls, root: Path, files: dict[Path, Stamp]) -> list[tuple[str, Path, Path]]:
        niftis = cls._niftis(files)
        images: dict[str, list[Path]] = defaultdict(list)
        for p in files:
            if p.suffix.lower() in IMAGE_SUFFIXES and p not in niftis:
                images[p.stem].append(p)
        out = []
        for nii, stem in niftis.items():
            key = stem
            if key not in images:
                for sfx in DEFAULT_MASK_SUFFIXES:
                    if stem.endswith(sfx) and stem[: -len(sfx)] in images:
                        key = stem[: -len(sfx)]
                        break
            cands = images.get(key, [])
            if cands:
                # prefer an image in the same folder, then the shortest path
                img = min(cands, key=lambda p: (p.parent != nii.parent, len(p.parts), str(p)))
                out.append((key, img, nii))
        return out

    @classmethod
    def detect(cls, root: Path, files: dict[Path, Stamp]) -> Detection | None:
        niftis = cls._niftis(files)
        if not niftis:
            return None
        if (root / "images.csv") in files and any(len(p.relative_to(root).parts) <= 2 for p in niftis):
            return Detection(cls.name, 0.96, f"{len(niftis)} NIfTI label maps listed in images.csv")
        pairs = cls._pairs_by_stem(root, files)
        if pairs:
            return Detection(cls.name, 0.96, f"{len(pairs)} NIfTI label maps paired with images by name")
        return None

    @classmethod
    def scan(cls, root: Path, files: dict[Path, Stamp], options: dict[str, Any], cache: ScanCache,
             progress: ProgressFn | None, verify: bool) -> ScanResult:
        from engine.interop.nifti import LABELS_JSON, read_nifti_mask

        notes: list[str] = []
        bad: list[BadFile] = []
        groups: dict[str, str] = {}
        jobs: list[tuple[str, Path, Path]] = []
        listing = root / "images.csv"
        if listing in files:
            try:
                text = listing.read_text(encoding="utf-8-sig")
                for row in csv.DictReader(io.StringIO(text)):
                    cid, img, nii = row.get("case_id"), row.get("image_path"), row.get("mask_path")
                    if not (cid and img and nii):
                        continue
                    nii_path = (root / nii).resolve()
                    if not _inside(nii_path, root.resolve()):
                        bad.append(_bad(listing, f"{listing}: case {cid}: mask path {nii} points outside the folder. "
                                                 "Fix: keep the masks inside the dataset folder"))
                        continue
                    img_path = _confined(img, root, options)
                    if img_path is None:
                        bad.append(_bad(listing, f"{listing}: case {cid}: " + _outside_reason("image_path", img)))
                        continue
                    jobs.append((cid, img_path, nii_path))
                    if row.get("group_id"):
                        groups[cid] = row["group_id"]
            except (OSError, ValueError, csv.Error) as exc:
                bad.append(_bad(listing, f"cannot read images.csv ({exc})"))
        else:
            jobs = cls._pairs_by_stem(root, files)
        labels_file = next((p for p in (root / LABELS_JSON, *(n.parent / LABELS_JSON for _, _, n in jobs[:1]))
                            if p.is_file()), None)
        given: dict[int, str] = {}
        if labels_file is not None:
            try:
                given = _label_names(labels_file)
            except WorkbenchError as exc:
                bad.append(_bad(labels_file, exc))
        mask_dir = _mask_dir(root, cache, cls.name)

        def work(job: tuple[str, Path, Path]) -> dict[str, Any]:
            cid, img, nii = job
            stamps = [_stamp(img, files), _stamp(nii, files)]
            key = f"{nii}"
            hit = cache.get(key, stamps, need_verified=verify)
            if hit is not None and _cached_mask_ok(hit):
                return hit
            try:
                if stamps[0] is None:
                    raise WorkbenchError(f"case {cid}: image {img} not found", path=nii,
                                         hint="put the images next to the masks or fix images.csv")
                hw = _verify_image(img) if verify else image_size(img)
                mask = read_nifti_mask(nii, hw)
                # stored values → their index among the file's values (0 always first): a consecutive label PNG
                values = sorted({int(v) for v in np.unique(mask)} | {0})
                if len(values) > 256:
                    raise MaskError(f"NIfTI mask holds {len(values) - 1} classes; at most 255 are supported", path=nii,
                                    hint="merge classes; the workbench's masks are 8-bit")
                png = mask_dir / _key(nii, stamps[1]) / f"{safe_name(cid)}.png"
                _write_png(png, np.searchsorted(np.asarray(values), mask).astype(np.uint8))
                area = int(np.count_nonzero(mask))
                meta = {"mask_origin": f"nifti:{nii.name}", "classes": sorted(int(v) for v in np.unique(mask)),
                        "nifti_values": values}
                case = Case(cid, groups.get(cid, ""), str(img),
                            MaskSource("file", str(png), convention=LABELS_CONVENTION),
                            True, area > 0, area, hw[0], hw[1], "", meta)
                value = {"case": case.to_dict()}
            except WorkbenchError as exc:
                value = {"bad": _bad(nii, exc).to_dict()}
            cache.put(key, stamps, value, verified=verify)
            return value

        cases = _finish_cases(parallel_map(work, jobs, progress, "indexing NIfTI label maps"), bad, notes,
                              options.get("group_regex"))
        stored = sorted({int(k) for c in cases for k in c.meta.get("nifti_values", [0])} | {0} | set(given))
        if len(stored) > 256:
            for c in cases:
                bad.append(BadFile(c.image_path, f"{c.meta.get('mask_origin')}: the label maps hold {len(stored) - 1} "
                                                 "class ids in all; at most 255 are supported. Fix: merge classes"))
            cases = []
            stored = [0]
        new_id = {old: new for new, old in enumerate(stored)}
        for c in cases:
            values = [int(v) for v in c.meta.get("nifti_values", [0])]
            ids = [new_id[v] for v in values]
            c.meta["classes"] = sorted(new_id[int(v)] for v in c.meta.get("classes", values) if int(v) in new_id)
            if ids != list(range(len(ids))):
                assert c.mask.path is not None
                c.mask = MaskSource("file", str(_remapped(Path(c.mask.path), dict(enumerate(ids)))),
                                    convention=LABELS_CONVENTION)
        if stored != list(range(len(stored))):
            # e.g. labels 0, 3, 7 or a binary {0, 255}: stored ids become consecutive class ids 0..K-1
            notes.append(f"class ids {stored} remapped to consecutive 0..{len(stored) - 1}")
        names = {new_id[k]: v for k, v in given.items() if k != 0 and k in new_id}
        if given:
            names = {new: given.get(old, f"class_{old}") for new, old in enumerate(stored) if new}
        classes = list(range(len(stored)))
        labels = _default_label_names(classes if len(classes) > 1 else [0, 1], names or options.get("label_names"))
        return ScanResult(cases, labels, bad, notes, {}, None)


def _label_names(path: Path) -> dict[int, str]:
    """``labels.json``: ``{"class id": "name"}`` with non-negative integer keys (0 = background).

    Raises:
        ConfigError: unreadable, not an object, or a key that is not a non-negative integer.
    """
    from engine.errors import ConfigError

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ConfigError("labels JSON is nested too deeply", path=path, hint='write {"0": "background", '
                          '"1": "name", ...}') from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the label names ({exc})", path=path, hint="fix the JSON") from None
    if not isinstance(raw, dict):
        raise ConfigError("labels JSON is not an object of class id → name", path=path,
                          hint='write {"0": "background", "1": "name", ...}')
    out: dict[int, str] = {}
    for k, v in raw.items():
        text = str(k).strip()
        if not text.isdigit() or int(text) > 65535:
            raise ConfigError(f"label key {k!r} is not a class id 0..65535 (0 = background)", path=path,
                              hint='use the label values of the masks as keys: {"0": "background", "1": "name"}')
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise ConfigError(f"label {k!r} has a name of type {type(v).__name__}", path=path,
                              hint="names are text")
        out[int(text)] = str(v)
    return out


INTEROP_LAYOUTS: dict[str, Any] = {
    COCOLayout.name: COCOLayout,
    DicomSegLayout.name: DicomSegLayout,
    NiftiLayout.name: NiftiLayout,
}
