"""Tests for engine.splits: group integrity, stratification, determinism, fold files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import splits as S
from engine.errors import ConfigError, ReadError


def synthetic(n_groups: int = 47, seed: int = 0, lo: int = 20, hi: int = 60):
    """Subjects with 20..60 frames each and a subject-specific chance of a nerve mask."""
    rng = np.random.default_rng(seed)
    cases, groups, pos = [], [], []
    for g in range(n_groups):
        frac = rng.beta(2, 3)
        for f in range(int(rng.integers(lo, hi))):
            cases.append(f"{g}_{f}")
            groups.append(f"subject{g}")
            pos.append(bool(rng.random() < frac))
    return cases, groups, pos


def assert_groups_intact(folds: dict[str, int], cases, groups) -> None:
    fold_of_group: dict[str, int] = {}
    for c, g in zip(cases, groups):
        assert fold_of_group.setdefault(g, folds[c]) == folds[c], f"group {g} is in two folds"


@st.composite
def group_structures(draw):
    k = draw(st.integers(2, 6))
    n_groups = draw(st.integers(k, 20))
    sizes = draw(st.lists(st.integers(1, 8), min_size=n_groups, max_size=n_groups))
    mode = draw(st.sampled_from(["random", "per_group", "all_true", "all_false"]))
    cases, groups, pos = [], [], []
    for g, size in enumerate(sizes):
        group_pos = draw(st.booleans())
        for f in range(size):
            cases.append(f"c{g}-{f}")
            groups.append(f"g{g}")
            if mode == "random":
                pos.append(draw(st.booleans()))
            elif mode == "per_group":
                pos.append(group_pos)
            else:
                pos.append(mode == "all_true")
    order = draw(st.permutations(list(range(len(cases)))))
    cases = [cases[i] for i in order]
    groups = [groups[i] for i in order]
    pos = [pos[i] for i in order]
    seed = draw(st.integers(0, 2**31 - 1))
    stratify = draw(st.booleans())
    return cases, groups, pos, k, seed, stratify


@settings(max_examples=80, deadline=None)
@given(group_structures())
def test_no_group_in_two_folds_random_structures(data):
    cases, groups, pos, k, seed, stratify = data
    folds = S.grouped_kfold(cases, groups, pos, k=k, seed=seed, stratify=stratify)
    assert list(folds) == cases  # every case, in input order
    assert set(folds.values()) == set(range(k))  # all folds used, none empty
    assert_groups_intact(folds, cases, groups)
    val_fold = seed % k
    train, val = S.train_val_split(cases, groups, pos, val_fold=val_fold, k=k, seed=seed,
                                   stratify=stratify)
    assert val and train
    assert sorted(train + val) == sorted(cases)
    assert not {groups[cases.index(c)] for c in train} & {groups[cases.index(c)] for c in val}


def test_stratification_keeps_positive_fraction():
    cases, groups, pos = synthetic()
    overall = float(np.mean(pos))
    folds = S.grouped_kfold(cases, groups, pos, k=5, seed=0)
    summary = S.fold_summary(folds, groups, pos)
    fracs = np.array([row["positive_fraction"] for row in summary])
    assert np.all(np.abs(fracs - overall) < 0.05), (overall, fracs)
    assert sum(row["n_cases"] for row in summary) == len(cases)
    assert sum(row["n_groups"] for row in summary) == len(set(groups))
    # without stratification the same data drifts much further from the overall fraction
    plain = S.grouped_kfold(cases, groups, pos, k=5, seed=0, stratify=False)
    plain_fracs = np.array([r["positive_fraction"] for r in S.fold_summary(plain, groups, pos)])
    assert np.max(np.abs(plain_fracs - overall)) > np.max(np.abs(fracs - overall))
    assert_groups_intact(plain, cases, groups)


def test_deterministic_per_seed_and_order_independent():
    cases, groups, pos = synthetic(n_groups=20, lo=3, hi=10)
    a = S.grouped_kfold(cases, groups, pos, k=4, seed=11)
    b = S.grouped_kfold(cases, groups, pos, k=4, seed=11)
    assert a == b
    c = S.grouped_kfold(cases, groups, pos, k=4, seed=12)
    assert a != c  # a different seed gives a different assignment
    idx = list(range(len(cases)))
    random.Random(5).shuffle(idx)
    shuffled = S.grouped_kfold([cases[i] for i in idx], [groups[i] for i in idx],
                               [pos[i] for i in idx], k=4, seed=11)
    assert shuffled == a  # same mapping whatever the listing order
    assert list(shuffled) == [cases[i] for i in idx]


def test_train_val_split_is_the_val_fold():
    cases, groups, pos = synthetic(n_groups=10, lo=2, hi=6)
    folds = S.grouped_kfold(cases, groups, pos, k=5, seed=3)
    for v in range(5):
        train, val = S.train_val_split(cases, groups, pos, val_fold=v, k=5, seed=3)
        assert val == [c for c in cases if folds[c] == v]
        assert train == [c for c in cases if folds[c] != v]
    with pytest.raises(ConfigError, match="val_fold"):
        S.train_val_split(cases, groups, pos, val_fold=5, k=5)


def test_more_folds_than_groups_is_a_clear_error():
    cases = ["a1", "a2", "b1", "c1"]
    groups = ["a", "a", "b", "c"]
    with pytest.raises(ConfigError) as exc:
        S.grouped_kfold(cases, groups, [True, False, True, False], k=5)
    text = str(exc.value)
    assert "3 group(s)" in text and "k <= 3" in text
    with pytest.raises(ConfigError, match="k <= 1"):
        S.grouped_kfold(["a", "b"], ["g", "g"], [True, False], k=2)


@pytest.mark.parametrize("kwargs, match", [
    ({"case_ids": ["a", "b"], "group_ids": ["g"], "has_mask": [1, 0]}, "same length"),
    ({"case_ids": ["a", "a"], "group_ids": ["g", "h"], "has_mask": [1, 0]}, "duplicate"),
    ({"case_ids": [], "group_ids": [], "has_mask": []}, "no cases"),
    ({"case_ids": ["a", "b"], "group_ids": ["g", "h"], "has_mask": [2, 0]}, "has_mask"),
    ({"case_ids": ["a", "b"], "group_ids": ["g", "h"], "has_mask": [1, 0], "k": 1}, "k must be"),
])
def test_input_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        S.grouped_kfold(**kwargs)


def test_tiny_data_falls_back_to_group_kfold():
    # 5 groups, k = 5, 3 positives and 2 negatives: neither class has k members, so
    # StratifiedGroupKFold refuses; the split must still be valid and grouped.
    cases = [f"c{i}" for i in range(5)]
    folds = S.grouped_kfold(cases, cases, [1, 1, 1, 0, 0], k=5, seed=0)
    assert sorted(folds.values()) == [0, 1, 2, 3, 4]


def test_fill_empty_folds_moves_a_group():
    # groups 0,1,2 all in fold 0, fold 1 empty -> smallest group (1: one case) moves to fold 1
    group_codes = np.array([0, 0, 1, 2, 2, 2])
    fold_of = np.array([0, 0, 0, 0, 0, 0])
    out = S._fill_empty_folds(fold_of, group_codes, 2)
    assert out.tolist() == [0, 0, 1, 0, 0, 0]
    assert fold_of.tolist() == [0] * 6  # input untouched


def test_split_spec_roundtrip_and_validation():
    spec = S.SplitSpec(k=4, seed=9, val_fold=2, stratify=False)
    assert S.SplitSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError, match="val_fold"):
        S.SplitSpec(k=3, val_fold=3)
    with pytest.raises(ConfigError, match="k must"):
        S.SplitSpec(k=1)
    with pytest.raises(ConfigError, match="no option"):
        S.SplitSpec.from_dict({"folds": 5})


def test_save_load_roundtrip(tmp_path: Path):
    cases, groups, pos = synthetic(n_groups=8, lo=2, hi=5)
    spec = S.SplitSpec(k=4, seed=2, val_fold=1)
    folds = S.grouped_kfold(cases, groups, pos, k=spec.k, seed=spec.seed)
    path = tmp_path / "sub" / "folds.json"
    S.save_folds(path, folds, spec)
    assert [p.name for p in path.parent.iterdir()] == ["folds.json"]  # no temp files left
    raw = json.loads(path.read_text())
    assert raw["format"] == "segwb-folds" and raw["version"] == 1
    assert sum(raw["fold_sizes"]) == len(cases)
    loaded, spec2 = S.load_folds(path, case_ids=cases)
    assert loaded == folds and spec2 == spec
    loaded, _ = S.load_folds(path)  # no check requested
    assert loaded == folds


def test_load_folds_mismatched_cases(tmp_path: Path):
    path = tmp_path / "folds.json"
    S.save_folds(path, {"a": 0, "b": 1, "c": 0}, S.SplitSpec(k=2))
    with pytest.raises(ConfigError) as exc:
        S.load_folds(path, case_ids=["a", "b", "d", "e"])
    text = str(exc.value)
    assert str(path) in text
    assert "2 case(s) of the dataset have no fold" in text and "d, e" in text
    assert "1 case(s) in the folds are not in the dataset" in text and "regenerate" in text


def test_load_folds_bad_files(tmp_path: Path):
    p = tmp_path / "x.json"
    with pytest.raises(ReadError):
        S.load_folds(p)  # missing
    p.write_text("{not json")
    with pytest.raises(ReadError):
        S.load_folds(p)
    p.write_text(json.dumps({"a": 0}))
    with pytest.raises(ConfigError, match="not a folds file"):
        S.load_folds(p)
    p.write_text(json.dumps({"format": "segwb-folds", "version": 1, "spec": {"k": 2},
                             "folds": {"a": 2}}))
    with pytest.raises(ConfigError, match="outside 0..1"):
        S.load_folds(p)
    p.write_text(json.dumps({"format": "segwb-folds", "version": 99, "spec": {}, "folds": {}}))
    with pytest.raises(ConfigError, match="version"):
        S.load_folds(p)
    with pytest.raises(ConfigError, match="outside"):
        S.save_folds(tmp_path / "y.json", {"a": 3}, S.SplitSpec(k=2))
    assert not (tmp_path / "y.json").exists()


def test_fold_summary_by_hand():
    folds = {"a1": 0, "a2": 0, "b1": 1, "c1": 1, "c2": 1}
    groups = ["a", "a", "b", "c", "c"]
    pos = [True, False, True, True, False]
    rows = S.fold_summary(folds, groups, pos)
    assert rows == [
        {"fold": 0, "n_cases": 2, "n_groups": 1, "n_positive": 1, "positive_fraction": 0.5},
        {"fold": 1, "n_cases": 3, "n_groups": 2, "n_positive": 2, "positive_fraction": 2 / 3},
    ]
    by_id = S.fold_summary(folds, dict(zip(folds, groups)), dict(zip(folds, pos)))
    assert by_id == rows
    with pytest.raises(ConfigError, match="entries"):
        S.fold_summary(folds, groups[:2], pos)
    with pytest.raises(ConfigError, match="no entry"):
        S.fold_summary(folds, {"a1": "a"}, pos)
