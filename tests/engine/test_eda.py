"""EDA tables and the browser filter (engine.eda) on hand-made case frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.datasets import Case, MaskSource
from engine.eda import (
    MISSING,
    CaseFilter,
    age_band,
    age_histogram,
    apply_filter,
    conflict_status_column,
    count_table,
    eda_report,
    filter_options,
    group_counts,
    has_dicom_meta,
    impossible_ages,
    mask_area_table,
    mask_presence,
    mask_state,
    safe_case_info,
)
from engine.errors import ConfigError


@pytest.fixture()
def dicom_frame() -> pd.DataFrame:
    """10 SIIM-like cases: ages incl. 413 (impossible) and one missing, sexes incl. one missing."""
    rows = [
        # case, group, labelled, has_mask, area, sex, age_years, age_flag, age_raw, view, split
        ("c0", "p1", True, True, 500, "M", 34.0, "ok", "034Y", "PA", "train"),
        ("c1", "p1", True, False, 0, "M", 35.0, "ok", "035Y", "AP", "train"),
        ("c2", "p2", True, True, 1500, "F", 413.0, "impossible", "413", "PA", "train"),
        ("c3", "p3", True, False, 0, "F", 61.0, "ok", "61", "PA", "train"),
        ("c4", "p3", True, True, 100, "F", 62.5, "ok", "062Y", "AP", "val"),
        ("c5", "p4", True, False, 0, None, None, "missing", None, "AP", "val"),
        ("c6", "p5", False, False, -1, "M", 8.0, "ok", "008Y", "PA", "test"),
        ("c7", "p5", False, False, -1, "F", 9.0, "ok", "009Y", "AP", "test"),
        ("c8", "p6", True, False, 0, "M", 79.0, "ok", "079Y", "PA", "train"),
        ("c9", "p6", True, True, 3000, "F", 80.0, "ok", "080Y", "PA", "train"),
    ]
    df = pd.DataFrame(rows, columns=["case_id", "group_id", "labelled", "has_mask", "mask_area", "sex", "age_years",
                                     "age_flag", "age_raw", "view_position", "split"])
    df["height"] = 100
    df["width"] = 100
    return df


@pytest.fixture()
def plain_frame() -> pd.DataFrame:
    """Kaggle-like frame without DICOM fields: subjects 1..3, frames 1..4."""
    rows = []
    for s in (1, 2, 3):
        for f in (1, 2, 3, 4):
            has = (s + f) % 2 == 0
            rows.append({"case_id": f"{s}_{f}", "group_id": str(s), "labelled": True, "has_mask": has,
                         "mask_area": 100 * s * f if has else 0, "height": 42, "width": 58, "split": "train"})
    return pd.DataFrame(rows)


def test_mask_state_and_presence(dicom_frame: pd.DataFrame) -> None:
    s = mask_state(dicom_frame)
    assert s.tolist() == ["with mask", "empty", "with mask", "empty", "with mask", "empty", "unlabelled",
                          "unlabelled", "empty", "with mask"]
    p = mask_presence(dicom_frame)
    assert p["counts"] == {"with mask": 4, "empty": 4, "unlabelled": 2}
    assert p["n_labelled"] == 8 and p["positive_fraction"] == pytest.approx(0.5)


def test_count_tables(dicom_frame: pd.DataFrame) -> None:
    sex = count_table(dicom_frame, "sex", order=("M", "F"))
    assert sex["value"].tolist() == ["M", "F", MISSING]
    assert sex["count"].tolist() == [4, 5, 1]
    assert sex["fraction"].sum() == pytest.approx(1.0)
    view = count_table(dicom_frame, "view_position")
    assert dict(zip(view["value"], view["count"])) == {"PA": 6, "AP": 4}
    assert count_table(dicom_frame, "no_such_column").empty


def test_impossible_ages_are_flagged_not_dropped(dicom_frame: pd.DataFrame) -> None:
    imp = impossible_ages(dicom_frame)
    assert imp["case_id"].tolist() == ["c2"] and imp["age_raw"].tolist() == ["413"]
    hist = age_histogram(dicom_frame, 10)
    ok = hist[hist["kind"] == "ok"]
    assert ok["bin"].tolist() == ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89"]
    assert ok["count"].tolist() == [2, 0, 0, 2, 0, 0, 2, 1, 1]
    bad = hist[hist["kind"] == "impossible"]
    assert bad["bin"].tolist() == ["413 (impossible)"] and bad["count"].tolist() == [1]
    assert hist[hist["kind"] == "missing"]["count"].tolist() == [1]
    assert hist["count"].sum() == len(dicom_frame)  # every case is somewhere
    rep = eda_report(dicom_frame)
    assert rep["dicom"] is True
    assert (rep["ages"]["n_ok"], rep["ages"]["n_impossible"], rep["ages"]["n_missing"]) == (8, 1, 1)


def test_ages_without_flags_are_derived(dicom_frame: pd.DataFrame) -> None:
    df = dicom_frame.drop(columns=["age_flag"])
    assert impossible_ages(df)["case_id"].tolist() == ["c2"]
    assert age_band(df, 20).tolist() == ["20-39", "20-39", "impossible", "60-79", "60-79", MISSING, "0-19",
                                         "0-19", "60-79", "80-99"]


def test_group_counts_and_areas(dicom_frame: pd.DataFrame, plain_frame: pd.DataFrame) -> None:
    g = group_counts(dicom_frame)
    assert g.columns.tolist() == ["group_id", "n_cases", "with mask", "empty", "unlabelled"]
    row = g.set_index("group_id").loc["p3"]
    assert (row["n_cases"], row["with mask"], row["empty"], row["unlabelled"]) == (2, 1, 1, 0)
    assert g.set_index("group_id").loc["p5", "unlabelled"] == 2
    assert g["n_cases"].sum() == 10 and g["n_cases"].is_monotonic_decreasing
    a = mask_area_table(dicom_frame)
    assert a["case_id"].tolist() == ["c0", "c2", "c4", "c9"]
    assert a["mask_area"].tolist() == [500, 1500, 100, 3000]
    assert a["area_fraction"].tolist() == pytest.approx([0.05, 0.15, 0.01, 0.3])
    pg = group_counts(plain_frame)
    assert pg.set_index("group_id")["with mask"].to_dict() == {"1": 2, "2": 2, "3": 2}


def test_plain_dataset_has_no_dicom_section(plain_frame: pd.DataFrame) -> None:
    assert not has_dicom_meta(plain_frame)
    rep = eda_report(plain_frame)
    assert rep["dicom"] is False and "sex" not in rep and "ages" not in rep
    assert rep["presence"]["counts"]["with mask"] == 6
    assert age_histogram(plain_frame).empty


def _ids(df: pd.DataFrame, f: CaseFilter) -> list[str]:
    return df.loc[apply_filter(df, f), "case_id"].tolist()


def test_filters_exact(dicom_frame: pd.DataFrame) -> None:
    df = dicom_frame
    assert _ids(df, CaseFilter()) == df["case_id"].tolist()
    assert _ids(df, CaseFilter(mask=("with mask",))) == ["c0", "c2", "c4", "c9"]
    assert _ids(df, CaseFilter(mask=("empty", "unlabelled"))) == ["c1", "c3", "c5", "c6", "c7", "c8"]
    assert _ids(df, CaseFilter(groups=("p1", "p6"))) == ["c0", "c1", "c8", "c9"]
    assert _ids(df, CaseFilter(sexes=("F",))) == ["c2", "c3", "c4", "c7", "c9"]
    assert _ids(df, CaseFilter(sexes=(MISSING,))) == ["c5"]
    assert _ids(df, CaseFilter(views=("AP",), mask=("with mask",))) == ["c4"]
    assert _ids(df, CaseFilter(splits=("val", "test"))) == ["c4", "c5", "c6", "c7"]
    assert _ids(df, CaseFilter(text="C1")) == ["c1"]
    # ages: plausible only, then with the impossible / missing ones added back
    assert _ids(df, CaseFilter(age_range=(30, 65))) == ["c0", "c1", "c3", "c4"]
    assert _ids(df, CaseFilter(age_range=(30, 65), age_impossible=True)) == ["c0", "c1", "c2", "c3", "c4"]
    assert _ids(df, CaseFilter(age_range=(30, 65), age_missing=True)) == ["c0", "c1", "c3", "c4", "c5"]
    # mask area: unlabelled (-1) fail, inclusive bounds
    assert _ids(df, CaseFilter(area_range=(0, 500))) == ["c0", "c1", "c3", "c4", "c5", "c8"]
    assert _ids(df, CaseFilter(area_range=(100, 1500))) == ["c0", "c2", "c4"]


def test_filter_on_metrics_and_review_columns(dicom_frame: pd.DataFrame) -> None:
    df = dicom_frame.copy()
    df["eval_dice"] = [0.9, 1.0, 0.1, np.nan, 0.5, 0.0, np.nan, np.nan, 1.0, 0.75]
    assert _ids(df, CaseFilter(dice_range=(0.0, 0.5))) == ["c2", "c4", "c5"]
    assert _ids(df, CaseFilter(dice_range=(0.75, 1.0))) == ["c0", "c1", "c8", "c9"]
    df["conflict_status"] = conflict_status_column(df["case_id"].tolist(), [
        {"a": "c0", "b": "c1", "category": "conflict"},
        {"a": "c1", "b": "c8", "category": "agree_empty"},
        {"a": "c8", "b": "c9", "category": "disagree"},
    ])
    assert df["conflict_status"].tolist()[:3] == ["conflict", "conflict", "no duplicate"]
    assert df.set_index("case_id").loc[["c8", "c9"], "conflict_status"].tolist() == ["disagree", "disagree"]
    assert _ids(df, CaseFilter(conflict=("conflict",))) == ["c0", "c1"]
    df["review_state"] = ["accepted"] + ["unreviewed"] * 9
    assert _ids(df, CaseFilter(review=("accepted",))) == ["c0"]
    # a frame without the column filters everything out rather than crashing
    assert _ids(dicom_frame, CaseFilter(conflict=("conflict",))) == []


def test_filter_validation_and_active() -> None:
    with pytest.raises(ConfigError, match="mask state"):
        CaseFilter(mask=("positive",))
    with pytest.raises(ConfigError, match="low <= high"):
        CaseFilter(area_range=(10, 5))
    f = CaseFilter(mask=("empty",), area_range=(0, 10))
    assert f.active() == ["mask", "area_range"]
    assert CaseFilter.from_json(f.to_json()) == f


def test_filter_options(dicom_frame: pd.DataFrame, plain_frame: pd.DataFrame) -> None:
    o = filter_options(dicom_frame)
    assert o["groups"] == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert o["sexes"] == ["F", "M", MISSING] and o["views"] == ["AP", "PA"]
    assert o["area"] == (0, 3000) and o["age"] == (8.0, 80.0)
    assert (o["n_age_impossible"], o["n_age_missing"]) == (1, 1)
    p = filter_options(plain_frame)
    assert p["groups"] == ["1", "2", "3"] and p["sexes"] == [] and p["age"] is None


def test_groups_sort_naturally() -> None:
    df = pd.DataFrame({"case_id": ["10_1", "2_1", "1_1"], "group_id": ["10", "2", "1"]})
    assert filter_options(df)["groups"] == ["1", "2", "10"]


def test_safe_case_info_excludes_phi() -> None:
    meta = {"sex": "F", "age_years": 41.0, "age_flag": "ok", "view_position": "PA", "patient_key": "pt-abc",
            "PatientName": "DOE^JANE", "PatientID": "12345", "patient_id": "12345", "institution_name": "Hosp",
            "mask_encoding": "binary255", "classes": [1]}
    c = Case("1.2.3", "pt-abc", "/x/1.2.3.dcm", MaskSource("rle", "/x/train-rle.csv", ("1 2",), "siim"), True, True,
             2, 64, 64, "train", meta)
    info = safe_case_info(c)
    assert info["sex"] == "F" and info["view_position"] == "PA" and info["patient_key"] == "pt-abc"
    assert info["mask_encoding"] == "binary255"
    for k in ("PatientName", "PatientID", "patient_id", "institution_name", "classes"):
        assert k not in info
    assert "DOE" not in repr(info) and "12345" not in repr(info)
    assert info["mask source"].startswith("siim RLE")
