"""Dataset layout adapters: Kaggle UNS, SIIM, paired folders. Each builds a case index.

A layout class has ``name``, ``detect(root, files) -> Detection | None`` and
``scan(root, files, options, cache, progress, verify) -> ScanResult``. Register new
layouts in :data:`engine.datasets.registry.LAYOUTS`.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.datasets.base import BadFile, Case, MaskSource
from engine.datasets.scan import ScanCache, Stamp, cached_map
from engine.errors import MaskError, WorkbenchError
from engine.io import IMAGE_SUFFIXES, image_size, is_dicom_file
from engine.progress import ProgressFn

IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "x", "inputs", "input", "scans", "volumes")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "annotations", "annotation", "gt", "groundtruth",
                  "ground_truth", "segmentations", "y", "targets")
DEFAULT_MASK_SUFFIXES = ("_mask", "_Annotation", "_annotation", "_label", "_labels", "_seg", "_gt", "_segmentation")
RASTER_MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class Detection:
    """A layout's claim on a folder: a score in (0, 1] and why."""

    layout: str
    score: float
    reason: str


@dataclass
class ScanResult:
    cases: list[Case]
    labels: dict[int, str]
    bad_files: list[BadFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    label_lut: list[int] | None = None
    #: files the layout recognised and looked at besides images and masks (e.g. an RLE CSV that
    #: mask files made unnecessary): not reported as "not used"
    used: list[str] = field(default_factory=list)


_INDEX_CACHES: dict[str, list[tuple[dict, dict]]] = {"folder": [], "suffix": []}


def _grouped(files: dict[Path, Stamp], kind: str, key: Any) -> dict[Any, list[Path]]:
    """``files`` grouped by ``key(path)``, memoised per ``kind`` for the last two listings
    (detection and scan share one listing)."""
    memo = _INDEX_CACHES[kind]
    for ref, index in memo:
        if ref is files:
            return index
    groups: dict[Any, list[Path]] = defaultdict(list)
    for p in files:
        groups[key(p)].append(p)
    memo.insert(0, (files, dict(groups)))
    del memo[2:]
    return memo[0][1]


def by_folder(files: dict[Path, Stamp]) -> dict[Path, list[Path]]:
    """Files grouped by parent folder (memoised: detection and scan share it)."""
    return _grouped(files, "folder", lambda p: p.parent)


def by_suffix(files: dict[Path, Stamp]) -> dict[str, list[Path]]:
    """Files grouped by lower-case suffix (``""`` for none; ``.gz`` for ``x.nii.gz``), memoised like
    :func:`by_folder`: each layout's detection looks at its own suffixes instead of every file."""
    return _grouped(files, "suffix", lambda p: p.suffix.lower())


def with_suffix(files: dict[Path, Stamp], *suffixes: str) -> list[Path]:
    """The files whose lower-case suffix is one of ``suffixes``, sorted."""
    index = by_suffix(files)
    return sorted(p for sfx in suffixes for p in index.get(sfx, ()))


def _in(files: dict[Path, Stamp], folder: Path) -> list[Path]:
    return by_folder(files).get(folder, [])


def split_records(records: Sequence[dict[str, Any]]) -> tuple[list[Case], list[BadFile]]:
    """Per-file index records (``{"case": ...}`` or ``{"bad": ...}``) as cases and bad files, in order."""
    return ([Case.from_dict(r["case"]) for r in records if "case" in r],
            [BadFile(**r["bad"]) for r in records if "bad" in r])


def _bad(path: Path | str, exc: BaseException | str) -> BadFile:
    return BadFile(str(path), str(exc))


def _mask_record(mask_path: Path, image_hw: tuple[int, int] | None, threshold: int) -> dict[str, Any]:
    """Read a mask file once: area, classes, encoding, colours (RGB), size check."""
    from engine.io import mask_summary
    from engine.io.raster import read_raster

    rec: dict[str, Any] = mask_summary(mask_path, threshold=threshold)
    if rec["encoding"] == "rgb":
        arr, _ = read_raster(mask_path)
        a = arr[..., :3].astype(np.uint32)
        packed = np.unique((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2])
        rec["colours"] = [int(c) for c in packed]
    if image_hw is not None and tuple(rec["hw"]) != tuple(image_hw):
        raise MaskError(f"mask is {rec['hw'][0]}x{rec['hw'][1]} but the image is {image_hw[0]}x{image_hw[1]}",
                        path=mask_path, hint="re-export the mask at the image's size, or fix the file pairing")
    return rec


def _verify_image(path: Path) -> tuple[int, int]:
    from engine.io import read_image

    arr, _ = read_image(path)
    return int(arr.shape[0]), int(arr.shape[1])


def _default_label_names(classes: Sequence[int], given: Any) -> dict[int, str]:
    names: dict[int, str] = {0: "background"}
    fg = [c for c in classes if c != 0]
    if isinstance(given, dict):
        names.update({int(k): str(v) for k, v in given.items()})
    elif isinstance(given, (list, tuple)) and given:
        names.update({i + 1: str(n) for i, n in enumerate(given)})
    for c in fg:
        names.setdefault(int(c), "foreground" if fg == [1] and not given else f"class_{c}")
    return dict(sorted(names.items()))


# ---------------------------------------------------------------------------------------------
# Kaggle Ultrasound Nerve Segmentation


class KaggleUNSLayout:
    """``train/{subject}_{frame}.tif`` + ``{subject}_{frame}_mask.tif`` (+ ``train_masks.csv``, ``test/{id}.tif``)."""

    name = "kaggle_uns"
    IMG_RE = re.compile(r"^(\d+)_(\d+)\.tiff?$", re.I)
    MASK_RE = re.compile(r"^(\d+)_(\d+)_mask\.tiff?$", re.I)
    TEST_RE = re.compile(r"^(\d+)\.tiff?$", re.I)

    @classmethod
    def _train_dir(cls, root: Path) -> Path:
        return root / "train" if (root / "train").is_dir() else root

    @classmethod
    def detect(cls, root: Path, files: dict[Path, Stamp]) -> Detection | None:
        train = cls._train_dir(root)
        imgs = [p for p in _in(files, train) if cls.IMG_RE.match(p.name)]
        masks = [p for p in _in(files, train) if cls.MASK_RE.match(p.name)]
        csv = cls._csv(root, files)
        if imgs and (masks or csv):
            return Detection(cls.name, 0.95, f"{len(imgs)} '{{subject}}_{{frame}}.tif' images with "
                             f"{len(masks)} '_mask.tif' files" + (f" and {csv.name}" if csv else ""))
        if imgs:
            return Detection(cls.name, 0.5, f"{len(imgs)} '{{subject}}_{{frame}}.tif' images, no masks")
        return None

    @staticmethod
    def _csv(root: Path, files: dict[Path, Stamp]) -> Path | None:
        from engine.rle import sniff_rle_csv

        for cand in (root / "train_masks.csv", root / "train" / "train_masks.csv"):
            if cand in files:
                return cand
        for p in with_suffix(files, ".csv"):
            if p.parent in (root, root / "train") and sniff_rle_csv(p) == "kaggle":
                return p
        return None

    @classmethod
    def scan(cls, root: Path, files: dict[Path, Stamp], options: dict[str, Any], cache: ScanCache,
             progress: ProgressFn | None, verify: bool) -> ScanResult:
        from engine.rle import check_kaggle_uns_csv_header, parse_runs, read_kaggle_uns_csv

        train = cls._train_dir(root)
        threshold = int(options.get("threshold", 127))
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        tests: dict[str, Path] = {}
        for p in _in(files, train):
            if m := cls.MASK_RE.match(p.name):
                masks[f"{int(m.group(1))}_{int(m.group(2))}"] = p
            elif m := cls.IMG_RE.match(p.name):
                images[f"{int(m.group(1))}_{int(m.group(2))}"] = p
        for p in _in(files, root / "test"):
            if m := cls.TEST_RE.match(p.name):
                tests[str(int(m.group(1)))] = p
        notes: list[str] = []
        bad: list[BadFile] = []
        csv_path = cls._csv(root, files)
        rle_rows: dict[str, str] = {}
        csv_bad_rows: dict[str, str] = {}
        if csv_path is not None and images.keys() <= masks.keys():
            # mask files take precedence over CSV rows: with one for every image, only the header is checked
            try:
                check_kaggle_uns_csv_header(csv_path)
                notes.append(f"{csv_path.name}: rows not read, every image has a mask file "
                             "(mask files take precedence)")
            except WorkbenchError as exc:
                bad.append(_bad(csv_path, exc))
        elif csv_path is not None:
            try:
                rle_rows, stats = read_kaggle_uns_csv(csv_path, strict=False)
                csv_bad_rows = stats.bad_rows
                notes.extend(stats.problems[:5])
                if len(stats.problems) > 5:
                    notes.append(f"{csv_path.name}: {len(stats.problems) - 5} more unusable rows")
                if stats.n_duplicates:
                    notes.append(f"{csv_path.name}: {stats.n_duplicates} duplicate rows ignored")
                missing = len(set(rle_rows) - set(images))
                if missing:
                    notes.append(f"{csv_path.name}: {missing} of {len(rle_rows)} rows have no image file (ignored)")
            except WorkbenchError as exc:
                bad.append(_bad(csv_path, exc))
        for cid in sorted(set(masks) - set(images)):
            bad.append(_bad(masks[cid], "mask without an image (expected " + f"{cid}.tif next to it)"))

        csv_stamp = files.get(csv_path) if csv_path else None
        jobs = [(cid, p, "train") for cid, p in images.items()] + [(f"test_{i}", p, "test") for i, p in tests.items()]

        def key_of(job: tuple[str, Path, str]) -> tuple[str, list[Stamp | None]]:
            cid, img, split = job
            mpath = masks.get(cid) if split == "train" else None
            listed = split == "train" and mpath is None and (cid in rle_rows or cid in csv_bad_rows)
            return str(img), [files[img], files.get(mpath) if mpath else None, csv_stamp if listed else None]

        def work(job: tuple[str, Path, str]) -> dict[str, Any]:
            cid, img, split = job
            mpath = masks.get(cid) if split == "train" else None
            rle = rle_rows.get(cid) if split == "train" and mpath is None else None
            row_error = csv_bad_rows.get(cid) if split == "train" and mpath is None else None
            try:
                if row_error:  # only this image's row is bad: the image is listed as bad, the rest indexed
                    raise WorkbenchError(row_error.rstrip(". "))
                hw = _verify_image(img) if verify else image_size(img)
                subject = cid.split("_")[0] if split == "train" else "test"
                meta: dict[str, Any] = {}
                if mpath is not None:
                    rec = _mask_record(mpath, hw, threshold)
                    src = MaskSource("file", str(mpath))
                    area, labelled = rec["area"], True
                    meta.update(mask_encoding=rec["encoding"], classes=rec["classes"])
                elif rle is not None:
                    _, lengths = parse_runs(rle, hw, "kaggle", where=f"{csv_path} (image {cid})")
                    src = MaskSource("rle", str(csv_path), (rle,) if rle else (), "kaggle")
                    area, labelled = int(lengths.sum()), True
                else:
                    src, area, labelled = MaskSource("none"), -1, False
                case = Case(cid, subject, str(img), src, labelled, area > 0, area, hw[0], hw[1], split, meta)
                value = {"case": case.to_dict()}
            except WorkbenchError as exc:
                bad_path = mpath if (mpath and "mask" in str(exc).lower() and str(img) not in str(exc)) else img
                value = {"bad": _bad(bad_path, exc).to_dict()}
            return value

        results = cached_map(cache, jobs, key_of, work, progress, "indexing Kaggle UNS images", verify)
        cases, bad_records = split_records(results)
        bad += bad_records
        return ScanResult(cases, {0: "background", 1: str(options.get("label_name", "nerve"))}, bad, notes,
                          {"threshold": threshold}, used=[str(csv_path)] if csv_path else [])


# ---------------------------------------------------------------------------------------------
# SIIM-ACR Pneumothorax


class SIIMLayout:
    """DICOM tree (nested ``<Study>/<Series>/<SOP>.dcm`` or flat) + a SIIM RLE CSV."""

    name = "siim"

    @staticmethod
    def _dicoms(files: dict[Path, Stamp]) -> list[Path]:
        return sorted(with_suffix(files, ".dcm", ".dicom")
                      + [p for p in by_suffix(files).get("", ()) if is_dicom_file(p)])

    @staticmethod
    def _csvs(root: Path, files: dict[Path, Stamp]) -> list[Path]:
        from engine.rle import sniff_rle_csv

        return [p for p in with_suffix(files, ".csv") if len(p.relative_to(root).parts) <= 2
                and sniff_rle_csv(p) == "siim"]

    @classmethod
    def detect(cls, root: Path, files: dict[Path, Stamp]) -> Detection | None:
        index = by_suffix(files)
        dcm = with_suffix(files, ".dcm", ".dicom")
        if not dcm:
            return None
        csvs = cls._csvs(root, files)
        others = sum(len(v) for sfx, v in index.items() if sfx in IMAGE_SUFFIXES and sfx not in (".dcm", ".dicom"))
        if not csvs and others > len(dcm):
            # a folder of PNG/TIFF images with a stray DICOM is not a SIIM dataset
            return Detection(cls.name, 0.1, f"{len(dcm)} DICOM file(s) among {others} other images, no SIIM RLE CSV")
        return Detection(cls.name, 0.9 if csvs else 0.7,
                         f"{len(dcm)} DICOM files" + (f" and RLE CSV(s) {', '.join(p.name for p in csvs)}" if csvs
                                                      else ", no SIIM RLE CSV (unlabelled)"))

    @classmethod
    def scan(cls, root: Path, files: dict[Path, Stamp], options: dict[str, Any], cache: ScanCache,
             progress: ProgressFn | None, verify: bool) -> ScanResult:
        from engine.io.dicom import read_header
        from engine.rle import decode_union, parse_runs, read_siim_csv

        notes: list[str] = []
        bad: list[BadFile] = []
        dicoms = cls._dicoms(files)
        csvs = [Path(options["rle_csv"])] if options.get("rle_csv") else cls._csvs(root, files)
        sop_ids = {p.stem for p in dicoms}
        best: tuple[int, Path | None, dict[str, list[str]]] = (-1, None, {})
        best_stats = None
        for csv in csvs:
            try:
                rows, stats = read_siim_csv(csv, strict=False)
            except WorkbenchError as exc:
                bad.append(_bad(csv, exc))
                continue
            matched = len(sop_ids & (set(rows) | set(stats.bad_rows)))
            if stats.n_duplicates:
                notes.append(f"{csv.name}: {stats.n_duplicates} exact duplicate rows ignored")
            if matched > best[0]:
                best = (matched, csv, rows)
                best_stats = stats
        matched, csv_path, rle_rows = best
        csv_bad_rows = best_stats.bad_rows if best_stats is not None else {}
        if best_stats is not None:
            assert csv_path is not None  # best_stats is set together with its CSV
            if best_stats.header_note:
                notes.append(best_stats.header_note)
            notes.extend(best_stats.problems[:5])
            if len(best_stats.problems) > 5:
                notes.append(f"{csv_path.name}: {len(best_stats.problems) - 5} more unusable rows")
        if not options.get("rle_csv"):
            ignored = [p for p in with_suffix(files, ".csv") if p not in csvs
                       and len(p.relative_to(root).parts) <= 2]
            for p in ignored[:5]:
                notes.append(f"{p.relative_to(root)} was not used: " + (
                    "it is empty" if files[p][0] == 0 else "it is not a SIIM RLE CSV (expected the header "
                    "'ImageId,EncodedPixels' or rows '<SOPInstanceUID>,<RLE or -1>')")
                    + "; images without rows are unlabelled")
        if csv_path is not None:
            notes.append(f"masks from {csv_path.name} ({matched} of {len(sop_ids)} DICOMs have rows)")
            others = [c.name for c in csvs if c != csv_path]
            if others:
                notes.append(f"other RLE CSVs not used: {', '.join(others)} (pass rle_csv= to choose)")
            no_image = len(set(rle_rows) - sop_ids)
            if no_image:
                notes.append(f"{csv_path.name}: {no_image} image ids have no DICOM file (ignored)")
        csv_stamp = files.get(csv_path) if csv_path else None

        def key_of(p: Path) -> tuple[str, list[Stamp | None]]:
            listed = p.stem in rle_rows or p.stem in csv_bad_rows
            return str(p), [files[p], csv_stamp if listed else None]

        def work(p: Path) -> dict[str, Any]:
            rles = rle_rows.get(p.stem)
            row_error = csv_bad_rows.get(p.stem)
            try:
                if row_error:  # only this image's row is bad
                    raise WorkbenchError(row_error.rstrip(". "))
                rec = read_header(p)
                if verify:
                    _verify_image(p)
                hw = (int(rec.get("rows") or 0), int(rec.get("columns") or 0))
                if hw[0] <= 0 or hw[1] <= 0:
                    raise WorkbenchError("DICOM header has no Rows/Columns", path=p,
                                         hint="it is probably not an image; remove it from the folder")
                from engine.io.limits import check_pixels

                check_pixels(p, hw[0], hw[1])  # header facts against the pixel limit (decoding checks frames too)
                cid = rec.get("sop_instance_uid") or p.stem
                rec.pop("path", None)
                parts = p.relative_to(root).parts
                split = "test" if parts and "test" in parts[0].lower() else "train"
                if rles is not None:
                    where = f"{csv_path} (ImageId {p.stem})"
                    if len(rles) > 1:
                        area = int(decode_union(rles, hw, "siim", where=where).sum())
                    else:
                        area = int(sum(parse_runs(r, hw, "siim", where=where)[1].sum() for r in rles))
                    src = MaskSource("rle", str(csv_path), tuple(rles), "siim")
                    labelled = True
                else:
                    src, area, labelled = MaskSource("none"), -1, False
                group = rec.get("patient_key") or cid
                case = Case(cid, group, str(p), src, labelled, area > 0, area, hw[0], hw[1], split, rec)
                value = {"case": case.to_dict()}
            except WorkbenchError as exc:
                value = {"bad": _bad(p, exc).to_dict()}
            return value

        results = cached_map(cache, dicoms, key_of, work, progress, "indexing DICOM files", verify)
        cases, bad_records = split_records(results)
        bad += bad_records
        cases = _drop_duplicate_ids(cases, bad, "SOPInstanceUID")
        return ScanResult(cases, {0: "background", 1: str(options.get("label_name", "pneumothorax"))}, bad, notes,
                          {"rle_csv": str(csv_path) if csv_path else None})


# ---------------------------------------------------------------------------------------------
# Paired folders


@dataclass
class _Pairing:
    image_dir: Path
    mask_dir: Path | None
    split: str
    suffix_mode: bool = False


class PairedLayout:
    """``images/`` + ``masks/`` with the same stem (also one level down, e.g. ``train/image`` +
    ``train/label``), or one folder where masks carry a suffix (``_mask``, ``_Annotation``, ``_label``...).
    A folder of images without masks is indexed as unlabelled."""

    name = "paired"

    @classmethod
    def _pairings(cls, root: Path, files: dict[Path, Stamp], suffixes: Sequence[str],
                  image_dir: str | None, mask_dir: str | None) -> list[_Pairing]:
        folders = by_folder(files)
        dirs = set(folders)
        out: list[_Pairing] = []
        if image_dir:
            idir = (root / image_dir)
            mdir = (root / mask_dir) if mask_dir else None
            return [_Pairing(idir, mdir, "")]
        for base in [root] + sorted({d.parent for d in dirs if d.parent != root and d.parent.parent == root}):
            children = {d.name.lower(): d for d in dirs if d.parent == base}
            img = next((children[n] for n in IMAGE_DIR_NAMES if n in children), None)
            if img is None:
                continue
            msk = next((children[n] for n in MASK_DIR_NAMES if n in children), None)
            out.append(_Pairing(img, msk, "" if base == root else base.name))
        if out:
            # sibling folders holding images directly (e.g. ISBI's test/) are unlabelled splits
            covered = {p.image_dir for p in out} | {p.mask_dir for p in out if p.mask_dir}
            for d in sorted(dirs):
                if (d.parent == root and d not in covered and d.name.lower() not in MASK_DIR_NAMES
                        and not any(c in covered for c in dirs if c.parent == d)
                        and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folders[d])):
                    out.append(_Pairing(d, None, d.name))
            return out
        # one folder with suffixed masks (at the root, or in each sub-folder holding images)
        for d in sorted(dirs):
            stems = {p.stem for p in folders[d] if p.suffix.lower() in IMAGE_SUFFIXES}
            if any(s.endswith(sfx) and s[: -len(sfx)] in stems for s in stems for sfx in suffixes):
                rel = d.relative_to(root)
                out.append(_Pairing(d, d, "" if d == root else str(rel.parts[0]), suffix_mode=True))
        if out:
            return out
        # images only
        for d in sorted(dirs):
            if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folders[d]):
                rel = d.relative_to(root)
                out.append(_Pairing(d, None, "" if d == root else str(rel.parts[0])))
        return out

    @classmethod
    def detect(cls, root: Path, files: dict[Path, Stamp]) -> Detection | None:
        pairings = cls._pairings(root, files, DEFAULT_MASK_SUFFIXES, None, None)
        if not pairings:
            return None
        labelled = [p for p in pairings if p.mask_dir is not None]
        n_img = sum(1 for pr in pairings for f in _in(files, pr.image_dir) if f.suffix.lower() in IMAGE_SUFFIXES)
        if labelled:
            kind = "suffixed masks" if labelled[0].suffix_mode else "image/mask folders"
            where = ", ".join(str(p.image_dir.relative_to(root)) + (
                "" if p.suffix_mode or p.mask_dir is None else " + " + str(p.mask_dir.relative_to(root)))
                for p in labelled[:4])
            return Detection(cls.name, 0.8 if not labelled[0].suffix_mode else 0.7,
                             f"{kind}: {where} ({n_img} files)")
        return Detection(cls.name, 0.2, f"{n_img} images without masks (unlabelled)")

    @classmethod
    def scan(cls, root: Path, files: dict[Path, Stamp], options: dict[str, Any], cache: ScanCache,
             progress: ProgressFn | None, verify: bool) -> ScanResult:
        suffixes = tuple(options.get("mask_suffixes") or DEFAULT_MASK_SUFFIXES)
        threshold = int(options.get("threshold", 127))
        pairings = cls._pairings(root, files, suffixes, options.get("image_dir"), options.get("mask_dir"))
        bad: list[BadFile] = []
        notes: list[str] = []
        jobs: list[tuple[Path, Path | None, str]] = []
        for pr in pairings:
            imgs = sorted(p for p in _in(files, pr.image_dir) if p.suffix.lower() in IMAGE_SUFFIXES)
            if pr.suffix_mode:
                by_stem = {p.stem: p for p in imgs}
                mask_stems = {}
                for s, p in by_stem.items():
                    for sfx in suffixes:
                        if s.endswith(sfx) and s[: -len(sfx)] in by_stem:
                            mask_stems[s[: -len(sfx)]] = p
                for s, p in by_stem.items():
                    if p in mask_stems.values():
                        continue
                    jobs.append((p, mask_stems.get(s), pr.split))
                continue
            masks: dict[str, Path] = {}
            if pr.mask_dir is not None:
                for p in _in(files, pr.mask_dir):
                    if p.suffix.lower() in RASTER_MASK_SUFFIXES + (".jpg", ".jpeg"):
                        stem = p.stem
                        for sfx in suffixes:
                            if stem.endswith(sfx):
                                stem = stem[: -len(sfx)]
                                break
                        masks[stem] = p
            img_stems = {p.stem for p in imgs}
            for p in imgs:
                jobs.append((p, masks.get(p.stem), pr.split))
            for stem in sorted(set(masks) - img_stems):
                bad.append(_bad(masks[stem], "mask without an image of the same name in "
                                f"{pr.image_dir.relative_to(root) if pr.image_dir != root else '.'}"))
            if pr.mask_dir is not None:
                unl = len(img_stems - set(masks))
                if unl:
                    notes.append(f"{unl} image(s) in {pr.image_dir.relative_to(root)} have no mask (unlabelled)")
        group_of = _group_ids([p.stem for p, _, _ in jobs], options.get("group_regex"))

        def key_of(job: tuple[Path, Path | None, str]) -> tuple[str, list[Stamp | None]]:
            img, mpath, _ = job
            return str(img), [files[img], files.get(mpath) if mpath else None]

        def work(job: tuple[Path, Path | None, str]) -> dict[str, Any]:
            img, mpath, split = job
            try:
                hw = _verify_image(img) if verify else image_size(img)
                cid = img.stem  # made unique across splits below
                meta: dict[str, Any] = {}
                if mpath is not None:
                    rec = _mask_record(mpath, hw, threshold)
                    meta.update(mask_encoding=rec["encoding"], classes=rec["classes"])
                    if "colours" in rec:
                        meta["colours"] = rec["colours"]
                    src, area, labelled = MaskSource("file", str(mpath)), rec["area"], True
                else:
                    src, area, labelled = MaskSource("none"), -1, False
                case = Case(cid, group_of[img.stem], str(img), src, labelled, area > 0, area, hw[0], hw[1], split, meta)
                value = {"case": case.to_dict()}
            except WorkbenchError as exc:
                msg = str(exc)
                value = {"bad": _bad(mpath if (mpath and ("mask" in msg.lower() or str(mpath) in msg)) else img,
                                     exc).to_dict()}
            return value

        results = cached_map(cache, jobs, key_of, work, progress, "indexing image/mask pairs", verify)
        cases, bad_records = split_records(results)
        stem_count = Counter(c.case_id for c in cases)
        for c in cases:  # the same stem in two splits (train/0.png, test/0.png) → "split/stem"
            if stem_count[c.case_id] > 1 and c.split:
                c.case_id = f"{c.split}/{c.case_id}"
                c.group_id = f"{c.split}/{c.group_id}"
        stem_count = Counter(c.case_id for c in cases)
        for c in cases:  # a.png and a.jpg side by side → "a.png", "a.jpg"
            if stem_count[c.case_id] > 1:
                c.case_id = f"{c.case_id}{Path(c.image_path).suffix.lower()}"
        bad += bad_records
        cases = _drop_duplicate_ids(cases, bad)
        out_options: dict[str, Any] = {"threshold": threshold}
        # RGB masks: one colour map for the whole dataset (black = background, others sorted)
        colours = sorted({c for case in cases for c in case.meta.get("colours", [])} - {0})
        if colours:
            out_options["colour_map"] = {f"{(c >> 16) & 255},{(c >> 8) & 255},{c & 255}": i + 1
                                         for i, c in enumerate(colours)}
            out_options["colour_map"]["0,0,0"] = 0
            for case in cases:
                cm = out_options["colour_map"]
                case.meta["classes"] = sorted({0} | {cm[f"{(c >> 16) & 255},{(c >> 8) & 255},{c & 255}"]
                                                     for c in case.meta.pop("colours", [])})
        classes = sorted({int(k) for c in cases for k in c.meta.get("classes", [])} | {0})
        lut = None
        if classes != list(range(len(classes))):
            lut_arr = np.zeros(256, np.uint8)
            for new, old in enumerate(classes):
                lut_arr[old] = new
            lut = lut_arr.tolist()
            notes.append(f"class ids {classes} remapped to consecutive 0..{len(classes) - 1}")
            classes = list(range(len(classes)))
        labels = _default_label_names(classes if len(classes) > 1 else [0, 1], options.get("label_names"))
        encodings = Counter(c.meta.get("mask_encoding") for c in cases if c.labelled)
        if encodings.get("antialiased"):
            notes.append(f"{encodings['antialiased']} anti-aliased mask(s) binarised at > {threshold}")
        if encodings.get("binary"):
            notes.append(f"{encodings['binary']} mask(s) hold 0 and one other value (not 1 or 255): read as binary")
        if encodings.get("labels_mapped"):
            notes.append(f"{encodings['labels_mapped']} 16-bit label mask(s) mapped to consecutive ids per mask")
        return ScanResult(cases, labels, bad, notes, out_options, lut)


def _drop_duplicate_ids(cases: list[Case], bad: list[BadFile], what: str = "case id") -> list[Case]:
    """Cases whose id is shared by several files become bad files (each naming all of them);
    the rest of the dataset is kept. Which file an RLE row or a review decision belongs to is
    ambiguous for such ids, so none of them is used."""
    by_id: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        by_id[c.case_id].append(c)
    dup = {cid: cs for cid, cs in by_id.items() if len(cs) > 1}
    if not dup:
        return cases
    for cid, cs in dup.items():
        paths = [c.image_path for c in cs]
        for c in cs:
            others = ", ".join(p for p in paths if p != c.image_path)
            bad.append(BadFile(c.image_path, f"{c.image_path}: {what} {cid} is also used by {others}; "
                               f"none of these {len(cs)} files is used. Fix: keep one copy (delete or move "
                               "the duplicate) — a copy of the same DICOM, or a file with a forged UID"))
    return [c for c in cases if c.case_id not in dup]


def _group_ids(stems: Sequence[str], group_regex: str | None) -> dict[str, str]:
    """Group (subject/patient) ids from file stems.

    With ``group_regex`` the first capture group (or whole match) is the group. Otherwise:
    ``{subject}_{frame}`` → subject; ``<prefix>_<number>`` → prefix when that yields more
    than one group; else every image is its own group.
    """
    if group_regex:
        rx = re.compile(group_regex)
        out = {}
        for s in stems:
            m = rx.search(s)
            out[s] = (m.group(1) if m and m.groups() else m.group(0)) if m else s
        return out
    rx = re.compile(r"^(.*?)[_-]\d+$")
    cand = {s: (m.group(1) if (m := rx.match(s)) and m.group(1) else s) for s in stems}
    if len(set(cand.values())) > 1 or len(stems) <= 1:
        return cand
    return {s: s for s in stems}  # one shared prefix ("img_001", "img_002"): not a subject id


def group_counts(cases: Sequence[Case]) -> dict[str, int]:
    d: dict[str, int] = defaultdict(int)
    for c in cases:
        d[c.group_id] += 1
    return dict(d)
