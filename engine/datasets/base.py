"""The case index: one record per image, whatever the dataset's layout.

A :class:`Dataset` is a list of :class:`Case` records plus a label map, the files that
could not be used (``bad_files``) and notes. Layout adapters (:mod:`engine.datasets.layouts`)
build it; :func:`engine.datasets.open_dataset` detects the layout and caches the index.

Example:
    >>> ds = open_dataset("../shared/data/kaggle-nerve-sample")      # doctest: +SKIP
    >>> c = ds.cases[0]; c.case_id, c.group_id, c.has_mask           # doctest: +SKIP
    ('2_1', '2', False)
    >>> ds.load_mask(c).shape, ds.load_image_float(c).shape          # doctest: +SKIP
    ((420, 580), (1, 420, 580))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, cast

import numpy as np

from engine.errors import MaskError, WorkbenchError

MaskKind = Literal["file", "rle", "empty", "none"]

#: ``MaskSource.convention`` of mask PNGs written by this program (already consecutive class ids).
LABELS_CONVENTION = "labels"


@dataclass(frozen=True)
class MaskSource:
    """Where a case's ground-truth mask comes from.

    - ``file``: a mask image at ``path``. With ``convention="labels"`` the PNG already holds the
      dataset's consecutive class ids (masks written by this program: corrections, unions,
      exports), so the layout's colour map and class-id remapping are NOT applied again.
    - ``rle``: RLE strings ``rle`` (union of rows) in ``convention``, read from the CSV ``path``.
    - ``empty``: known to be empty (e.g. a review decision).
    - ``none``: no ground truth (unlabelled / test image).
    """

    kind: MaskKind = "none"
    path: str | None = None
    rle: tuple[str, ...] = ()
    convention: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.path:
            d["path"] = self.path
        if self.rle:
            d["rle"] = list(self.rle)
        if self.convention:
            d["convention"] = self.convention
        return d

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> "MaskSource":
        d = d or {}
        return MaskSource(kind=d.get("kind", "none"), path=d.get("path"), rle=tuple(d.get("rle", ())),
                          convention=d.get("convention"))

    def describe(self) -> str:
        """Short human-readable description, e.g. ``file masks/0001.png`` or ``rle (2 rows)``."""
        if self.kind == "file":
            return f"file {self.path}"
        if self.kind == "rle":
            return f"{self.convention} RLE, {len(self.rle)} row(s) from {Path(self.path or '').name}"
        return self.kind


@dataclass
class Case:
    """One image of a dataset.

    Attributes:
        case_id: stable id (Kaggle UNS ``{subject}_{frame}``, SIIM SOPInstanceUID, else image stem).
        group_id: subject/patient; splits and duplicate detection key on it.
        image_path: absolute path of the image file.
        mask: where the ground truth comes from.
        labelled: whether ground truth exists (False for test/unlabelled images).
        has_mask: ground truth is non-empty.
        mask_area: foreground pixels of the ground truth (-1 when unlabelled).
        height, width: image size in pixels.
        split: ``train``/``test``/... when the layout says so, else ``""``.
        meta: JSON-safe extras (DICOM table fields, mask encoding, classes present, ...).
    """

    case_id: str
    group_id: str
    image_path: str
    mask: MaskSource
    labelled: bool
    has_mask: bool
    mask_area: int
    height: int
    width: int
    split: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict recursed into every field and was ~10 % of a cold index
        return {"case_id": self.case_id, "group_id": self.group_id, "image_path": self.image_path,
                "mask": self.mask.to_dict(), "labelled": self.labelled, "has_mask": self.has_mask,
                "mask_area": self.mask_area, "height": self.height, "width": self.width, "split": self.split,
                "meta": copy.deepcopy(self.meta) if self.meta else {}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Case":
        d = dict(d)
        d["mask"] = MaskSource.from_dict(d.get("mask"))
        return Case(**d)


@dataclass(frozen=True)
class BadFile:
    """A file a scan could not use, why, and what to do."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class Dataset:
    """A case index with loaders.

    Args:
        root: dataset folder.
        layout: layout name (``kaggle_uns``, ``siim``, ``paired``, ``manifest``).
        cases: the case records.
        labels: label map ``{class id: name}`` including 0 = background.
        bad_files: files skipped by the scan, with reasons.
        notes: human-readable remarks from the scan (e.g. CSV rows without images).
        options: layout options used (threshold, colour map, ...).
        label_lut: optional remap of stored class ids to consecutive ids (uint8[256]).
    """

    # Set only on some datasets (read them with getattr and a default): a folder scan records its
    # timings, a dataset opened from a manifest its file, info block and dropped cases.
    scan_stats: dict[str, Any]
    manifest_path: Path
    manifest_info: dict[str, Any]
    dropped: list[tuple[str, str]]

    def __init__(self, root: str | Path, layout: str, cases: Sequence[Case], labels: dict[int, str],
                 bad_files: Sequence[BadFile] = (), notes: Sequence[str] = (),
                 options: dict[str, Any] | None = None, label_lut: Sequence[int] | np.ndarray | None = None,
                 workdir: Path | None = None):
        self.root = Path(root)
        self.layout = layout
        self.cases = list(cases)
        self.labels = {int(k): str(v) for k, v in labels.items()}
        self.bad_files = list(bad_files)
        self.notes = list(notes)
        self.options = dict(options or {})
        self.label_lut = np.asarray(label_lut, np.uint8) if label_lut is not None else None
        self.workdir = workdir
        self._by_id = {c.case_id: c for c in self.cases}
        if len(self._by_id) != len(self.cases):
            dup = _first_duplicate([c.case_id for c in self.cases])
            raise WorkbenchError(f"duplicate case id {dup!r} in {self.root}",
                                 hint="case ids must be unique; rename one of the files")

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._by_id

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    @property
    def num_classes(self) -> int:
        """K including background."""
        return max(self.labels) + 1 if self.labels else 2

    def case(self, case: str | Case) -> Case:
        """Look up a case by id (a :class:`Case` is returned as-is)."""
        if isinstance(case, Case):
            return case
        try:
            return self._by_id[case]
        except KeyError:
            raise WorkbenchError(f"no case {case!r} in dataset {self.root}",
                                 hint="check the case id (see `python -m engine info`)") from None

    def labelled_cases(self) -> list[Case]:
        return [c for c in self.cases if c.labelled]

    def subset(self, case_ids: Sequence[str]) -> "Dataset":
        """A dataset restricted to ``case_ids`` (order kept as given)."""
        return Dataset(self.root, self.layout, [self.case(i) for i in case_ids], self.labels, self.bad_files,
                       self.notes, self.options, self.label_lut, self.workdir)

    # -- loading --------------------------------------------------------------------------
    def load_image(self, case: str | Case, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """The reader's ``(array, meta)`` for a case (see :func:`engine.io.read_image`)."""
        from engine.io import read_image

        return read_image(self.case(case).image_path, **kwargs)

    def load_image_float(self, case: str | Case, **kwargs: Any) -> np.ndarray:
        """Image as float32 (C,H,W) in [0,1]."""
        from engine.io import to_chw_float

        arr, meta = self.load_image(case, **kwargs)
        return to_chw_float(arr, meta)

    def load_mask(self, case: str | Case) -> np.ndarray:
        """Ground truth as uint8 (H,W) label map with consecutive class ids.

        Raises:
            MaskError: the case has no ground truth, or mask and image sizes differ.
        """
        c = self.case(case)
        return load_mask_source(c.mask, (c.height, c.width), case_id=c.case_id,
                                options=self.options, label_lut=self.label_lut, image_path=c.image_path)

    # -- reporting ------------------------------------------------------------------------
    def to_frame(self):
        """pandas DataFrame, one row per case (meta fields flattened with their own names)."""
        import pandas as pd

        rows = []
        for c in self.cases:
            row = {"case_id": c.case_id, "group_id": c.group_id, "split": c.split, "labelled": c.labelled,
                   "has_mask": c.has_mask, "mask_area": c.mask_area, "height": c.height, "width": c.width,
                   "image_path": c.image_path, "mask_kind": c.mask.kind}
            for k, v in c.meta.items():
                if k not in row and not isinstance(v, (dict, list)):
                    row[k] = v
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """Counts for ``engine info``: layout, cases, masks, groups, sizes, bad files, notes."""
        from collections import Counter

        labelled = [c for c in self.cases if c.labelled]
        sizes = Counter(f"{c.height}x{c.width}" for c in self.cases)
        out: dict[str, Any] = {
            "root": str(self.root),
            "layout": self.layout,
            "n_cases": len(self.cases),
            "n_labelled": len(labelled),
            "n_unlabelled": len(self.cases) - len(labelled),
            "n_with_mask": sum(c.has_mask for c in labelled),
            "n_empty": sum(not c.has_mask for c in labelled),
            "empty_fraction": (sum(not c.has_mask for c in labelled) / len(labelled)) if labelled else None,
            "n_groups": len({c.group_id for c in self.cases}),
            "splits": dict(Counter(c.split or "(none)" for c in self.cases)),
            "labels": {str(k): v for k, v in self.labels.items()},
            "size_histogram": dict(sizes.most_common()),
            "bad_files": [b.to_dict() for b in self.bad_files],
            "notes": list(self.notes),
        }
        if labelled:
            areas = np.array([c.mask_area for c in labelled if c.has_mask], dtype=np.int64)
            if areas.size:
                out["mask_area"] = {"min": int(areas.min()), "median": float(np.median(areas)),
                                    "max": int(areas.max()), "mean": float(areas.mean())}
        dicom = [c.meta for c in self.cases if c.meta.get("modality") is not None or "age_flag" in c.meta]
        if dicom:
            out["dicom"] = dicom_summary(dicom)
        return out

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, layout={self.layout!r}, n_cases={len(self.cases)})"


def dicom_summary(metas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts of sex, view, modality, body part, age flags and an age histogram (10-year bins)."""
    from collections import Counter

    ages = [m["age_years"] for m in metas if m.get("age_years") is not None and m.get("age_flag") == "ok"]
    hist = Counter(int(a // 10) * 10 for a in ages)
    return {
        "n": len(metas),
        "sex": dict(Counter(str(m.get("sex")) for m in metas)),
        "view_position": dict(Counter(str(m.get("view_position")) for m in metas)),
        "modality": dict(Counter(str(m.get("modality")) for m in metas)),
        "body_part": dict(Counter(str(m.get("body_part")) for m in metas)),
        "age_flags": dict(Counter(str(m.get("age_flag")) for m in metas)),
        "impossible_ages": sorted({m.get("age_raw") for m in metas if m.get("age_flag") == "impossible"}),
        "age_histogram": {f"{k}-{k + 9}": v for k, v in sorted(hist.items())},
    }


def load_mask_source(src: MaskSource, shape: tuple[int, int], *, case_id: str = "",
                     options: dict[str, Any] | None = None, label_lut: np.ndarray | None = None,
                     image_path: str | None = None) -> np.ndarray:
    """Materialise a :class:`MaskSource` as a uint8 (H,W) label map of size ``shape``."""
    from engine.io import read_mask
    from engine.rle import Convention, decode_union

    options = options or {}
    if src.kind == "none":
        raise MaskError(f"case {case_id} has no ground-truth mask", path=image_path,
                        hint="pick a labelled case, or add a mask for it")
    if src.kind == "empty":
        return np.zeros(shape, np.uint8)
    if src.kind == "rle":
        where = f"{src.path} (case {case_id})" if src.path else f"case {case_id}"
        # decoding validates the convention (unknown names raise ConfigError)
        return decode_union(src.rle, shape, cast(Convention, src.convention or "kaggle"), where=where)
    if src.kind == "file":
        assert src.path is not None
        ours = src.convention == LABELS_CONVENTION
        cmap = None if ours else options.get("colour_map")
        # keys are "r,g,b" strings (as the layouts write them)
        colour_map = cast(dict[tuple[int, int, int], int],
                          {tuple(int(x) for x in k.split(",")): int(v) for k, v in cmap.items()}) if cmap else None
        labels, _ = read_mask(src.path, threshold=int(options.get("threshold", 127)), colour_map=colour_map)
        if labels.shape != tuple(shape):
            raise MaskError(f"mask is {labels.shape[0]}x{labels.shape[1]} but its image "
                            f"{Path(image_path).name if image_path else ''} is {shape[0]}x{shape[1]}",
                            path=src.path, hint="re-export the mask at the image's size, or fix the pairing")
        if label_lut is not None and not ours:
            labels = label_lut[labels]
        return labels
    raise MaskError(f"unknown mask source kind {src.kind!r} for case {case_id}",
                    hint="the index cache may be from another version; delete it and rescan")


def _first_duplicate(items: Sequence[str]) -> str:
    seen: set[str] = set()
    for i in items:
        if i in seen:
            return i
        seen.add(i)
    return ""
