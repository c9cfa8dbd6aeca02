"""Exploratory tables of a case index and the dataset browser's filter, in plain pandas.

Everything here takes the DataFrame of :meth:`engine.datasets.Dataset.to_frame` (one row per
case: ``case_id``, ``group_id``, ``split``, ``labelled``, ``has_mask``, ``mask_area``, ``height``,
``width`` and, for DICOM datasets, the PHI-free header fields ``sex``, ``age_years``,
``age_flag``, ``age_raw``, ``view_position``, ...) and returns DataFrames/dicts that the app
plots and the tests check. Nothing is dropped silently: impossible ages (SIIM has a 413) are
counted and listed in their own bin, missing values get their own category.

Example:
    >>> df = open_dataset("demo_data/ptx").to_frame()                            # doctest: +SKIP
    >>> eda_report(df)["ages"]["impossible"][["case_id", "age_raw"]]              # doctest: +SKIP
    >>> keep = apply_filter(df, CaseFilter(mask=("with mask",), sexes=("F",)))    # doctest: +SKIP
    >>> df[keep].case_id.tolist()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from engine.config import JsonConfig
from engine.errors import ConfigError, unknown_name

if TYPE_CHECKING:
    import pandas as pd

    from engine.datasets.base import Case

__all__ = ["MASK_STATES", "MISSING", "CONFLICT_STATUSES", "CaseFilter", "apply_filter", "mask_state",
           "has_dicom_meta", "count_table", "age_histogram", "age_band", "impossible_ages", "mask_presence",
           "mask_area_table", "group_counts", "eda_report", "safe_case_info", "filter_options",
           "conflict_status_column", "natural_key"]

#: Ground-truth states of a case, as shown in the browser.
MASK_STATES: tuple[str, ...] = ("with mask", "empty", "unlabelled")
#: Label of missing values in count tables and filters.
MISSING = "(missing)"
#: DICOM-derived columns that make a dataset "have DICOM meta".
DICOM_COLUMNS: tuple[str, ...] = ("sex", "age_years", "view_position")
#: Conflict statuses, most severe first (see :func:`conflict_status_column`).
CONFLICT_STATUSES: tuple[str, ...] = ("conflict", "disagree", "agree", "agree_empty", "unlabelled", "no duplicate")


def _col(df: "pd.DataFrame", name: str) -> "pd.Series":
    import pandas as pd

    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def mask_state(df: "pd.DataFrame") -> "pd.Series":
    """Per case ``with mask`` / ``empty`` / ``unlabelled`` (:data:`MASK_STATES`)."""
    labelled = _col(df, "labelled").fillna(False).astype(bool).to_numpy()
    has = _col(df, "has_mask").fillna(False).astype(bool).to_numpy()
    import pandas as pd

    out = np.where(~labelled, "unlabelled", np.where(has, "with mask", "empty"))
    return pd.Series(out, index=df.index, dtype=object)


def has_dicom_meta(df: "pd.DataFrame") -> bool:
    """True when the frame carries DICOM header fields (sex, age, view position) for any case."""
    return any(c in df.columns and df[c].notna().any() for c in DICOM_COLUMNS)


def _labels(series: "pd.Series") -> "pd.Series":
    """Values as strings with missing/blank → :data:`MISSING`."""
    s = series.astype(object).where(series.notna(), MISSING).astype(str)
    return s.where(s.str.strip() != "", MISSING)


def count_table(df: "pd.DataFrame", column: str, order: Sequence[str] | None = None) -> "pd.DataFrame":
    """Counts of the values of ``column`` (missing values as :data:`MISSING`).

    Returns:
        DataFrame ``value, count, fraction`` sorted by ``order`` when given (values not in it
        follow, by count), else by count descending. Empty frame → no rows.
    """
    import pandas as pd

    if column not in df.columns or len(df) == 0:
        return pd.DataFrame({"value": pd.Series(dtype=str), "count": pd.Series(dtype=int),
                             "fraction": pd.Series(dtype=float)})
    vc = _labels(df[column]).value_counts()
    out = pd.DataFrame({"value": vc.index.astype(str), "count": vc.to_numpy().astype(int)})
    if order is not None:
        rank = {v: i for i, v in enumerate(order)}
        out["_r"] = [rank.get(v, len(rank)) for v in out["value"]]
        out = out.sort_values(["_r", "count"], ascending=[True, False], kind="stable").drop(columns="_r")
    out["fraction"] = out["count"] / max(1, len(df))
    return out.reset_index(drop=True)


def _age_columns(df: "pd.DataFrame") -> tuple["pd.Series", "pd.Series"]:
    import pandas as pd

    years = pd.to_numeric(_col(df, "age_years"), errors="coerce")
    flag = _col(df, "age_flag").astype(object)
    # a frame without flags: derive them from the numbers (0..120 plausible)
    derived = np.where(years.isna(), "missing", np.where((years >= 0) & (years <= 120), "ok", "impossible"))
    flag = flag.where(flag.notna(), pd.Series(derived, index=df.index)).astype(str)
    return years, flag


def age_histogram(df: "pd.DataFrame", bin_width: int = 10) -> "pd.DataFrame":
    """Age histogram with impossible and missing ages in their own bins (never dropped).

    Returns:
        DataFrame ``bin, count, kind, lo, hi``: one row per ``bin_width``-year bin from the youngest
        to the oldest plausible age (``kind`` ``ok``), then one row per distinct impossible raw age
        (``bin`` like ``"413 (impossible)"``, ``kind`` ``impossible``), then ``missing``/``unparsed``
        rows when there are any. Rows with count 0 inside the plausible range are kept so the axis
        is regular.
    """
    import pandas as pd

    if bin_width <= 0:
        raise ConfigError(f"bin_width must be positive, got {bin_width}", hint="e.g. 10 (years)")
    years, flag = _age_columns(df)
    rows: list[dict[str, Any]] = []
    ok = years[(flag == "ok") & years.notna()]
    if len(ok):
        lo0 = int(np.floor(ok.min() / bin_width) * bin_width)
        hi0 = int(np.floor(ok.max() / bin_width) * bin_width)
        bins = np.floor(ok / bin_width).astype(int) * bin_width
        counts = bins.value_counts()
        for lo in range(lo0, hi0 + 1, bin_width):
            rows.append({"bin": f"{lo}-{lo + bin_width - 1}", "count": int(counts.get(lo, 0)), "kind": "ok",
                         "lo": float(lo), "hi": float(lo + bin_width)})
    imp = impossible_ages(df)
    if len(imp):
        for raw, n in imp.groupby("age_raw", sort=False).size().items():
            yrs = imp.loc[imp["age_raw"] == raw, "age_years"].iloc[0]
            rows.append({"bin": f"{raw} (impossible)", "count": int(n), "kind": "impossible",
                         "lo": float(yrs) if pd.notna(yrs) else np.nan, "hi": np.nan})
    for kind in ("missing", "unparsed"):
        n = int((flag == kind).sum())
        if n and has_dicom_meta(df):
            rows.append({"bin": kind, "count": n, "kind": kind, "lo": np.nan, "hi": np.nan})
    return pd.DataFrame(rows, columns=["bin", "count", "kind", "lo", "hi"])


def impossible_ages(df: "pd.DataFrame") -> "pd.DataFrame":
    """Cases whose age was parsed but is outside 0–120 years: ``case_id, age_raw, age_years``."""
    years, flag = _age_columns(df)
    sel = flag == "impossible"
    raw = _col(df, "age_raw").astype(object)
    raw = raw.where(raw.notna(), years.map(lambda v: f"{v:g}" if v == v else MISSING))
    import pandas as pd

    return pd.DataFrame({"case_id": _col(df, "case_id")[sel].astype(str).to_numpy(),
                         "age_raw": raw[sel].astype(str).to_numpy(),
                         "age_years": years[sel].to_numpy()})


def age_band(df: "pd.DataFrame", width: int = 20) -> "pd.Series":
    """Age band label per case (``"40-59"``), ``"impossible"`` or :data:`MISSING`, for slicing metrics."""
    import pandas as pd

    years, flag = _age_columns(df)
    lo = (np.floor(years / width) * width)
    label = lo.map(lambda v: f"{int(v)}-{int(v) + width - 1}" if v == v else MISSING)
    out = label.where(flag == "ok", np.where(flag == "impossible", "impossible", MISSING))
    return pd.Series(out, index=df.index, dtype=object)


def mask_presence(df: "pd.DataFrame") -> dict[str, Any]:
    """Counts of :data:`MASK_STATES` and the positive fraction among labelled cases."""
    s = mask_state(df)
    counts = {k: int((s == k).sum()) for k in MASK_STATES}
    n_lab = counts["with mask"] + counts["empty"]
    return {"counts": counts, "n_labelled": n_lab,
            "positive_fraction": counts["with mask"] / n_lab if n_lab else float("nan")}


def mask_area_table(df: "pd.DataFrame") -> "pd.DataFrame":
    """Non-empty masks: ``case_id, group_id, mask_area, area_fraction`` (area / image pixels)."""
    import pandas as pd

    sel = (mask_state(df) == "with mask").to_numpy()
    sub = df.loc[sel]
    area = pd.to_numeric(sub["mask_area"], errors="coerce") if "mask_area" in sub else pd.Series(dtype=float)
    pix = (pd.to_numeric(_col(sub, "height"), errors="coerce") * pd.to_numeric(_col(sub, "width"), errors="coerce"))
    return pd.DataFrame({"case_id": _col(sub, "case_id").astype(str).to_numpy(),
                         "group_id": _col(sub, "group_id").astype(str).to_numpy(),
                         "mask_area": area.to_numpy(),
                         "area_fraction": (area / pix.where(pix > 0)).to_numpy()})


def group_counts(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per group (subject/patient): ``group_id, n_cases, with mask, empty, unlabelled``, largest first."""
    import pandas as pd

    if len(df) == 0:
        return pd.DataFrame(columns=["group_id", "n_cases", *MASK_STATES])
    s = mask_state(df).rename("state")
    tab = pd.crosstab(_col(df, "group_id").astype(str).rename("group_id"), s)
    for k in MASK_STATES:
        if k not in tab.columns:
            tab[k] = 0
    tab = tab[list(MASK_STATES)].astype(int)
    tab.insert(0, "n_cases", tab.sum(axis=1))
    tab.columns.name = None
    tab = tab.reset_index()
    return tab.sort_values(["n_cases", "group_id"], ascending=[False, True], kind="stable").reset_index(drop=True)


def eda_report(df: "pd.DataFrame", age_bin: int = 10) -> dict[str, Any]:
    """Everything the browser's EDA section plots.

    Returns:
        ``n_cases``, ``presence`` (:func:`mask_presence`), ``groups`` (:func:`group_counts`),
        ``areas`` (:func:`mask_area_table`), ``splits`` (:func:`count_table` of ``split``),
        ``dicom`` (bool) and, for DICOM datasets, ``sex``, ``view_position``, ``modality`` count
        tables and ``ages``: ``{"histogram", "impossible", "n_ok", "n_impossible", "n_missing"}``.
    """
    out: dict[str, Any] = {
        "n_cases": int(len(df)),
        "presence": mask_presence(df),
        "groups": group_counts(df),
        "areas": mask_area_table(df),
        "splits": count_table(df, "split"),
        "dicom": has_dicom_meta(df),
    }
    if out["dicom"]:
        out["sex"] = count_table(df, "sex", order=("M", "F", "O"))
        out["view_position"] = count_table(df, "view_position", order=("PA", "AP", "LL", "LATERAL"))
        out["modality"] = count_table(df, "modality")
        _, flag = _age_columns(df)
        out["ages"] = {"histogram": age_histogram(df, age_bin), "impossible": impossible_ages(df),
                       "n_ok": int((flag == "ok").sum()), "n_impossible": int((flag == "impossible").sum()),
                       "n_missing": int(flag.isin(["missing", "unparsed"]).sum())}
    return out


# ----------------------------------------------------------------------------------- filtering

@dataclass(frozen=True)
class CaseFilter(JsonConfig):
    """What the dataset browser shows. Empty tuples / None mean "no restriction".

    Attributes:
        text: case-id substring (case-insensitive).
        groups: group ids (subjects/patients) to keep.
        mask: ground-truth states to keep (:data:`MASK_STATES`).
        splits: split names to keep (``""`` shows as :data:`MISSING`).
        sexes, views: DICOM sex / view position values to keep (:data:`MISSING` for none).
        age_range: ``(lo, hi)`` years, inclusive; plausible ages only unless ``age_impossible``/
            ``age_missing`` add those cases back.
        age_impossible, age_missing: with an ``age_range``, also keep impossible / missing ages.
        area_range: ``(lo, hi)`` mask pixels, inclusive; unlabelled cases fail it.
        dice_range: ``(lo, hi)`` of the ``dice_column``; cases without a value fail it.
        dice_column: the per-case metric column (default ``eval_dice``, joined from an evaluation).
        conflict: conflict statuses to keep (column ``conflict_status``).
        review: review states to keep (column ``review_state``).
    """

    text: str = ""
    groups: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    sexes: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    age_range: tuple[float, float] | None = None
    age_impossible: bool = False
    age_missing: bool = False
    area_range: tuple[float, float] | None = None
    dice_range: tuple[float, float] | None = None
    dice_column: str = "eval_dice"
    conflict: tuple[str, ...] = ()
    review: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for m in self.mask:
            if m not in MASK_STATES:
                raise unknown_name("mask state", m, MASK_STATES)
        for name in ("age_range", "area_range", "dice_range"):
            r = getattr(self, name)
            if r is not None and (len(r) != 2 or float(r[0]) > float(r[1])):
                raise ConfigError(f"{name} must be (low, high) with low <= high, got {r!r}")

    def active(self) -> list[str]:
        """Names of the restrictions in force (for the page's "n filters" caption)."""
        return [k for k, v in self.to_dict().items()
                if k not in ("dice_column", "age_impossible", "age_missing") and v not in ("", (), [], None)]


def _in(series: "pd.Series", values: Sequence[str]) -> np.ndarray:
    return _labels(series).isin([str(v) for v in values]).to_numpy()


def apply_filter(df: "pd.DataFrame", f: CaseFilter) -> np.ndarray:
    """Boolean keep-mask (len(df),) of the cases passing every restriction of ``f`` (vectorised)."""
    import pandas as pd

    keep = np.ones(len(df), bool)
    if len(df) == 0:
        return keep
    if f.text:
        keep &= _col(df, "case_id").astype(str).str.contains(f.text.strip(), case=False, regex=False).to_numpy()
    if f.groups:
        keep &= _col(df, "group_id").astype(str).isin([str(g) for g in f.groups]).to_numpy()
    if f.mask:
        keep &= mask_state(df).isin(f.mask).to_numpy()
    if f.splits:
        keep &= _in(_col(df, "split"), f.splits)
    if f.sexes:
        keep &= _in(_col(df, "sex"), f.sexes)
    if f.views:
        keep &= _in(_col(df, "view_position"), f.views)
    if f.age_range is not None:
        years, flag = _age_columns(df)
        lo, hi = float(f.age_range[0]), float(f.age_range[1])
        ok = np.array(((flag == "ok") & (years >= lo) & (years <= hi)).to_numpy(), dtype=bool)
        if f.age_impossible:
            ok |= (flag == "impossible").to_numpy()
        if f.age_missing:
            ok |= flag.isin(["missing", "unparsed"]).to_numpy()
        keep &= ok
    if f.area_range is not None:
        area = pd.to_numeric(_col(df, "mask_area"), errors="coerce")
        lab = _col(df, "labelled").fillna(False).astype(bool)
        keep &= (lab & (area >= float(f.area_range[0])) & (area <= float(f.area_range[1]))).to_numpy()
    if f.dice_range is not None:
        d = pd.to_numeric(_col(df, f.dice_column), errors="coerce")
        keep &= ((d >= float(f.dice_range[0])) & (d <= float(f.dice_range[1]))).fillna(False).to_numpy()
    if f.conflict:
        keep &= _in(_col(df, "conflict_status"), f.conflict)
    if f.review:
        keep &= _in(_col(df, "review_state"), f.review)
    return keep


def filter_options(df: "pd.DataFrame") -> dict[str, Any]:
    """Choices and ranges for the filter widgets: groups, splits, sexes, views, age/area bounds."""
    import pandas as pd

    def values(col: str) -> list[str]:
        if col not in df.columns:
            return []
        return sorted(set(_labels(df[col]).tolist()), key=lambda v: (v == MISSING, v))

    groups = sorted(set(_col(df, "group_id").astype(str)), key=natural_key)
    area = pd.to_numeric(_col(df, "mask_area"), errors="coerce")
    area = area[_col(df, "labelled").fillna(False).astype(bool)]
    years, flag = _age_columns(df)
    ok_years = years[flag == "ok"]
    return {
        "groups": groups,
        "splits": values("split"),
        "sexes": values("sex") if "sex" in df.columns and df["sex"].notna().any() else [],
        "views": values("view_position") if "view_position" in df.columns and df["view_position"].notna().any() else [],
        "area": (int(area.min()), int(area.max())) if len(area.dropna()) else None,
        "age": (float(np.floor(ok_years.min())), float(np.ceil(ok_years.max()))) if len(ok_years) else None,
        "n_age_impossible": int((flag == "impossible").sum()),
        "n_age_missing": int(flag.isin(["missing", "unparsed"]).sum()) if has_dicom_meta(df) else 0,
    }


_DIGITS = re.compile(r"(\d+)")


def natural_key(s: str) -> tuple:
    """Sort key putting ``2_10`` after ``2_9`` (digit runs compare as numbers).

    >>> sorted(["2_10", "2_9", "10_1"], key=natural_key)
    ['2_9', '2_10', '10_1']
    """
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in _DIGITS.split(str(s)) if t != "")


# ----------------------------------------------------------------------------------- extras

def conflict_status_column(case_ids: Sequence[str], pairs: Sequence[dict[str, Any]]) -> list[str]:
    """Per case the most severe category of the near-duplicate pairs it belongs to.

    Args:
        case_ids: the dataset's case ids.
        pairs: ``ConflictReport.pairs`` (dicts with ``a``, ``b``, ``category``).

    Returns:
        One of :data:`CONFLICT_STATUSES` per case (``no duplicate`` when in no pair).
    """
    rank = {c: i for i, c in enumerate(CONFLICT_STATUSES)}
    best: dict[str, str] = {}
    for p in pairs:
        cat = str(p.get("category", "unlabelled"))
        for cid in (p.get("a"), p.get("b")):
            if cid is None:
                continue
            cur = best.get(str(cid))
            if cur is None or rank.get(cat, len(rank)) < rank.get(cur, len(rank)):
                best[str(cid)] = cat
    return [best.get(str(c), "no duplicate") for c in case_ids]


def safe_case_info(case: Case) -> dict[str, Any]:
    """What the browser's detail view may show about a case: ids, size, mask source, PHI-free meta.

    DICOM fields are limited to :data:`engine.dicom_meta.SAFE_COLUMNS`; other meta keys are kept
    unless they are PHI keywords (:data:`engine.dicom_meta.PHI_KEYWORDS`) or nested values.
    """
    from engine.dicom_meta import PHI_KEYWORDS, SAFE_COLUMNS

    info: dict[str, Any] = {
        "case id": case.case_id, "group": case.group_id, "split": case.split or MISSING,
        "size (H×W)": f"{case.height}×{case.width}", "labelled": bool(case.labelled),
        "has mask": bool(case.has_mask), "mask area (px)": int(case.mask_area) if case.labelled else None,
        "mask source": case.mask.describe(), "image file": case.image_path,
    }
    phi = {k.lower() for k in PHI_KEYWORDS}
    meta = dict(case.meta or {})
    for k in SAFE_COLUMNS:
        if k in meta and meta[k] is not None:
            info[k] = meta[k]
    for k, v in meta.items():
        if k in info or k in SAFE_COLUMNS or k.lower() in phi or k.lower().replace("_", "") in phi:
            continue
        if isinstance(v, (dict, list, tuple)) or v is None:
            continue
        info[k] = v
    return info
