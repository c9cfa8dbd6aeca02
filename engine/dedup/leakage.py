"""Leakage report: near-duplicate groups whose members land in different cross-validation folds.

If two near-identical images sit in the training and the validation fold, validation scores
are inflated. With the default subject-grouped folds (:func:`engine.splits.grouped_kfold`,
k = 5, seed 0) duplicates *within* a subject can never leak, so leaks come from
cross-subject duplicates (found with ``scope="global"``) or from user-supplied folds.

Example:
    >>> r = leakage_report(["a", "b", "c"], ["s1", "s2", "s2"], [True, False, True],
    ...                    [["a", "b"]], folds={"a": 0, "b": 1, "c": 1})
    >>> r["n_groups_split"], r["groups"][0]["folds"]
    (1, [0, 1])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from engine.errors import ConfigError, ReadError


def load_folds_file(path: str | Path, case_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Folds from a JSON file: a ``segwb-folds`` file (:func:`engine.splits.save_folds`) or a
    plain ``{case_id: fold}`` object."""
    from engine.fsutil import read_json

    data = read_json(path)
    if isinstance(data, dict) and data.get("format") == "segwb-folds":
        from engine.splits import load_folds

        return load_folds(path)[0]
    if isinstance(data, dict) and "folds" in data and isinstance(data["folds"], dict):
        data = data["folds"]
    if not isinstance(data, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        raise ReadError("not a folds file: expected {case_id: fold number}", path=path,
                        hint="write folds with engine.splits.save_folds, or as a JSON object of integers")
    return {str(k): int(v) for k, v in data.items()}


def leakage_report(case_ids: Sequence[str], group_ids: Sequence[str], has_mask: Sequence[bool],
                   dup_groups: Sequence[Sequence[str]], *, folds: Mapping[str, int] | None = None,
                   k: int = 5, seed: int = 0, source: str | None = None) -> dict[str, Any]:
    """Which near-duplicate groups span more than one fold.

    Args:
        case_ids, group_ids, has_mask: the cases that are split (usually the labelled ones).
        dup_groups: near-duplicate groups (lists of case ids).
        folds: ``{case_id: fold}``; None = :func:`engine.splits.grouped_kfold` (k, seed).
        source: how ``folds`` were made, for the report.

    Returns:
        ``{"available", "source", "k", "n_groups_split", "n_cases_in_split_groups",
        "groups": [{"members", "folds", "fold_of"}], "note"}``; ``available`` is False (with a
        ``reason``) when no folds can be made (e.g. fewer subjects than k).
    """
    if folds is None:
        try:
            from engine.splits import grouped_kfold
        except ImportError:  # pragma: no cover - engine.splits ships with the engine
            return {"available": False, "reason": "engine.splits is not available", "n_groups_split": 0,
                    "n_cases_in_split_groups": 0, "groups": []}
        try:
            folds = grouped_kfold(list(case_ids), list(group_ids), [bool(h) for h in has_mask], k=k, seed=seed)
        except ConfigError as exc:
            return {"available": False, "reason": str(exc), "n_groups_split": 0, "n_cases_in_split_groups": 0,
                    "groups": []}
        source = source or f"engine.splits.grouped_kfold(k={k}, seed={seed}) over subject groups"
    out_groups: list[dict[str, Any]] = []
    for members in dup_groups:
        fold_of = {c: int(folds[c]) for c in members if c in folds}
        spanned = sorted(set(fold_of.values()))
        if len(spanned) > 1:
            out_groups.append({"members": list(members), "folds": spanned, "fold_of": fold_of})
    n_folds = len(set(folds.values())) if folds else 0
    return {
        "available": True,
        "source": source or "user folds",
        "k": n_folds,
        "n_groups_split": len(out_groups),
        "n_cases_in_split_groups": sum(len(g["fold_of"]) for g in out_groups),
        "groups": out_groups,
        "note": ("duplicates inside one subject cannot leak across subject-grouped folds; run with "
                 "scope=global to find cross-subject duplicates"),
    }
