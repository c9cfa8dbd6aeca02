"""Dataset layouts that import standard exchange formats: COCO JSON, DICOM-SEG, NIfTI label maps.

So work round-trips with CVAT, Label Studio, 3D Slicer and MONAI Label (and with this
workbench's own ``export-corrected --format``):

- ``coco``: a COCO JSON (polygons or RLE) next to its images. ``file_name`` is resolved against
  the JSON's folder, its ``images/`` subfolder, the dataset folder, the ``image_root`` option,
  and (for this workbench's exports, recognised by their ``export.json``) the source dataset and
  the JSON's ``info.segwb_image_root``; a name
  that points outside those folders is refused. ``segwb_case_id`` / ``segwb_group_id`` keys
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
from engine.errors import MaskError, WorkbenchError
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


def _export_source_root(root: Path) -> Path | None:
    """The source dataset folder recorded by this workbench's ``export.json`` in ``root`` (None otherwise)."""
    p = root / EXPORT_INFO
    if not p.is_file():
        return None
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != "segwb-corrected-export":
        return None
    src = (info.get("source") or {}).get("root")
    return Path(src) if src and Path(src).is_dir() else None


def _extra_roots(root: Path, options: dict[str, Any]) -> list[Path]:
    roots: list[Path] = []
    if options.get("image_root"):
        roots.append(Path(options["image_root"]).expanduser().resolve())
    src = _export_source_root(root)
    if src is not None:
        roots.append(src.resolve())
    return [r for r in dict.fromkeys(roots) if r != root]


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
        from engine.interop.coco import read_coco

        jsons = [Path(options["coco_json"]).expanduser().resolve()] if options.get("coco_json") \
            else cls._jsons(root, files)
        bad: list[BadFile] = []
        notes: list[str] = []
        names: dict[str, int] = {}
        jobs: list[tuple[Path, dict[str, Any], list[dict[str, Any]], dict[int, int], str]] = []
        extra = _extra_roots(root, options)
        for jp in jsons:
            try:
                doc = read_coco(jp)
            except WorkbenchError as exc:
                bad.append(_bad(jp, exc))
                continue
            cat_to_class: dict[int, int] = {}
            for c in sorted((c for c in doc.get("categories", []) if isinstance(c, dict) and "id" in c),
                            key=lambda c: int(c["id"])):
                name = str(c.get("name") or f"class_{c['id']}")
                cat_to_class[int(c["id"])] = names.setdefault(name, len(names) + 1)
            by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
            for a in doc.get("annotations", []):
                if isinstance(a, dict):
                    by_image[a.get("image_id")].append(a)
            doc_info = doc.get("info")
            info = doc_info if isinstance(doc_info, dict) else {}
            own = info.get("segwb_image_root")
            if own and _export_source_root(root) is not None and Path(own).is_dir():
                extra.append(Path(own).resolve())  # this workbench's own export (export.json beside it)
            split = jp.stem if len(jsons) > 1 else ""
            for img in doc["images"]:
                if isinstance(img, dict):
                    jobs.append((jp, img, by_image.get(img.get("id"), []), cat_to_class, split))
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
                h, w = int(img.get("height") or hw[0]), int(img.get("width") or hw[1])
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

        all_files = dict(files)
        for extra in _extra_roots(root, options):
            all_files.update(list_files(extra))
        dicoms = SIIMLayout._dicoms(all_files)
        notes: list[str] = []
        bad: list[BadFile] = []

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
    from engine.io import read_mask

    tag = _key(sorted(lut.items()))
    out = png.with_name(f"{png.stem}-{tag}.png")
    if not out.exists():
        lm, _ = read_mask(png)
        table = np.zeros(256, np.uint8)
        for k, v in lut.items():
            table[k] = v
        _write_png(out, table[lm])
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
                    if not _inside(nii_path, root):
                        bad.append(_bad(listing, f"case {cid}: mask path {nii} points outside the folder"))
                        continue
                    img_path = Path(img) if Path(img).is_absolute() else (root / img).resolve()
                    if not Path(img_path).is_absolute() or (not Path(img).is_absolute()
                                                            and not _inside(img_path, root)):
                        bad.append(_bad(listing, f"case {cid}: image path {img} points outside the folder"))
                        continue
                    jobs.append((cid, Path(img_path), nii_path))
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
                given = {int(k): str(v) for k, v in json.loads(labels_file.read_text(encoding="utf-8")).items()}
            except (OSError, ValueError, AttributeError) as exc:
                bad.append(_bad(labels_file, f"cannot read the label names ({exc})"))
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
                png = mask_dir / _key(nii, stamps[1]) / f"{safe_name(cid)}.png"
                _write_png(png, mask)
                area = int(np.count_nonzero(mask))
                meta = {"mask_origin": f"nifti:{nii.name}", "classes": sorted(int(v) for v in np.unique(mask))}
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
        classes = sorted({int(k) for c in cases for k in c.meta.get("classes", [])} | {0} | set(given))
        lut = None
        if classes != list(range(len(classes))):
            # e.g. labels 0, 3, 7: stored ids map to consecutive class ids through the dataset's LUT
            table = np.zeros(256, np.uint8)
            for new, old in enumerate(classes):
                if old < 256:
                    table[old] = new
            lut = table.tolist()
            for c in cases:
                c.mask = MaskSource("file", c.mask.path)  # not "labels": the LUT applies when loading
            notes.append(f"class ids {classes} remapped to consecutive 0..{len(classes) - 1}")
            given = {new: given.get(old, f"class_{old}") for new, old in enumerate(classes) if new}
            classes = list(range(len(classes)))
        labels = _default_label_names(classes if len(classes) > 1 else [0, 1],
                                      {k: v for k, v in given.items() if k != 0} or options.get("label_names"))
        return ScanResult(cases, labels, bad, notes, {}, lut)


INTEROP_LAYOUTS: dict[str, Any] = {
    COCOLayout.name: COCOLayout,
    DicomSegLayout.name: DicomSegLayout,
    NiftiLayout.name: NiftiLayout,
}
