"""Grouped, stratified k-fold splits keyed on ``case_id`` and ``group_id``.

Every case belongs to a group (ultrasound subject, patient). Folds are built on groups, so
no group ever appears in two folds (frames of one subject in train and validation would
leak), and stratified on ``has_mask`` (does the case have a non-empty mask), so each fold
keeps roughly the dataset's positive fraction. This uses scikit-learn's
``StratifiedGroupKFold`` (``GroupKFold`` when ``stratify=False``) with ``shuffle=True`` and
the given seed.

Folds depend only on the set of ``(case_id, group_id, has_mask)`` triples and the seed, not
on the order the cases are listed in (scikit-learn keys groups by their sorted unique ids).

Example:
    >>> cases = [f"{s}_{f}" for s in range(6) for f in range(3)]
    >>> groups = [c.split("_")[0] for c in cases]
    >>> folds = grouped_kfold(cases, groups, [f == 0 for s in range(6) for f in range(3)], k=3)
    >>> sorted(set(folds.values()))
    [0, 1, 2]
    >>> train, val = train_val_split(cases, groups, [True] * 18, val_fold=0, k=3)
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from engine.config import JsonConfig
from engine.errors import ConfigError
from engine.fsutil import atomic_write_json, read_json

__all__ = [
    "SplitSpec",
    "grouped_kfold",
    "train_val_split",
    "save_folds",
    "load_folds",
    "check_folds",
    "fold_summary",
    "FOLDS_FORMAT",
]

#: ``format`` tag written into folds files, with :data:`FOLDS_VERSION`.
FOLDS_FORMAT = "segwb-folds"
FOLDS_VERSION = 1


@dataclass(frozen=True)
class SplitSpec(JsonConfig):
    """How folds were made: ``k`` folds, shuffle ``seed``, the validation fold, stratification.

    Example:
        >>> SplitSpec.from_json(SplitSpec(k=4, val_fold=3).to_json())
        SplitSpec(k=4, seed=0, val_fold=3, stratify=True)
    """

    k: int = 5
    seed: int = 0
    val_fold: int = 0
    stratify: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 2:
            raise ConfigError(f"k must be an integer >= 2, got {self.k!r}", hint="use e.g. k=5")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}",
                              hint="use e.g. seed=0")
        if not isinstance(self.val_fold, int) or not 0 <= self.val_fold < self.k:
            raise ConfigError(f"val_fold must be in 0..{self.k - 1} for k={self.k}, got {self.val_fold!r}",
                              hint=f"pick a fold index between 0 and {self.k - 1}")


def _validate(case_ids: Sequence[str], group_ids: Sequence[str],
              has_mask: Sequence[bool]) -> tuple[list[str], list[str], np.ndarray]:
    cases = [str(c) for c in case_ids]
    groups = [str(g) for g in group_ids]
    masks = list(has_mask)
    if not (len(cases) == len(groups) == len(masks)):
        raise ConfigError(f"case_ids, group_ids and has_mask must have the same length, got "
                          f"{len(cases)}, {len(groups)} and {len(masks)}",
                          hint="pass one group id and one has_mask flag per case")
    if not cases:
        raise ConfigError("no cases to split", hint="check that the dataset index is not empty")
    if len(set(cases)) != len(cases):
        dups = sorted(c for c, n in Counter(cases).items() if n > 1)
        raise ConfigError(f"{len(dups)} duplicate case id(s), e.g. {', '.join(dups[:3])}",
                          hint="case ids must be unique; deduplicate the case index first")
    y = np.asarray(masks)
    if y.dtype != bool:
        if not np.all(np.isin(y, (0, 1))):
            raise ConfigError("has_mask must hold booleans (or 0/1)",
                              hint="pass True when the case has a non-empty mask")
        y = y.astype(bool)
    return cases, groups, y


def grouped_kfold(case_ids: Sequence[str], group_ids: Sequence[str], has_mask: Sequence[bool],
                  k: int = 5, seed: int = 0, *, stratify: bool = True) -> dict[str, int]:
    """Assign every case to one of ``k`` folds, whole groups at a time.

    Args:
        case_ids: unique case ids, ``(N,)``.
        group_ids: the group (subject/patient) of each case, ``(N,)``.
        has_mask: whether each case has a non-empty mask, ``(N,)``; the stratification label.
        k: number of folds (>= 2, <= number of distinct groups).
        seed: shuffle seed; the same inputs and seed always give the same folds.
        stratify: balance the positive fraction across folds (``StratifiedGroupKFold``);
            False uses ``GroupKFold`` with shuffling (the shuffled groups are dealt into k
            parts of equal group count; positives are not balanced). When neither class has
            ``k`` cases (tiny data sets), stratification is impossible and ``GroupKFold`` is used.

    Returns:
        ``{case_id: fold}`` with folds ``0..k-1``, in the order of ``case_ids``; every fold
        holds at least one group.

    Raises:
        ConfigError: lengths differ, duplicate case ids, ``k < 2``, or fewer groups than ``k``.

    Example:
        >>> folds = grouped_kfold(["a1", "a2", "b1", "c1"], ["a", "a", "b", "c"],
        ...                       [True, False, True, False], k=3, seed=1)
        >>> folds["a1"] == folds["a2"]
        True
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    cases, groups, y = _validate(case_ids, group_ids, has_mask)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"k must be an integer >= 2, got {k!r}", hint="use e.g. k=5")
    k = int(k)
    n_groups = len(set(groups))
    if n_groups < k:
        raise ConfigError(f"cannot make {k} folds from {n_groups} group(s) "
                          f"({len(cases)} cases): each fold needs at least one whole group",
                          hint=f"use k <= {n_groups}" + (" (k >= 2 needs at least 2 groups, e.g. "
                                                          "more subjects/patients)" if n_groups < 2 else ""))
    _, group_codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    x = np.zeros((len(cases), 1))
    counts = np.bincount(y.astype(np.int64), minlength=2)
    use_strat = stratify and bool(np.any(counts >= k))
    if use_strat:
        splitter: Any = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    else:
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    fold_of = np.full(len(cases), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # "The least populated class in y has only n members": expected for rare positives.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for f, (_, test_idx) in enumerate(splitter.split(x, y.astype(np.int64), group_codes)):
            fold_of[test_idx] = f
    assert (fold_of >= 0).all(), "every case must land in a fold"
    fold_of = _fill_empty_folds(fold_of, group_codes, k)
    return {c: int(f) for c, f in zip(cases, fold_of)}


def _fill_empty_folds(fold_of: np.ndarray, group_codes: np.ndarray, k: int) -> np.ndarray:
    """Guarantee every fold has a group: move the smallest group of the fold with the most
    groups into each empty fold. scikit-learn's greedy assignment practically never leaves a
    fold empty when there are >= k groups, but a validation fold with no cases would break
    training, so this is enforced rather than assumed. Deterministic."""
    fold_of = fold_of.copy()
    for empty in range(k):
        if np.any(fold_of == empty):
            continue
        group_fold = {int(g): int(f) for g, f in zip(group_codes, fold_of)}
        groups_per_fold = np.bincount(np.array(list(group_fold.values())), minlength=k)
        donor = int(np.argmax(groups_per_fold))  # has >= 2 groups since n_groups >= k
        sizes = np.bincount(group_codes[fold_of == donor])
        candidates = [g for g, f in group_fold.items() if f == donor]
        smallest = min(candidates, key=lambda g: (sizes[g], g))
        fold_of[group_codes == smallest] = empty
    return fold_of


def train_val_split(case_ids: Sequence[str], group_ids: Sequence[str], has_mask: Sequence[bool],
                    val_fold: int = 0, k: int = 5, seed: int = 0, *,
                    stratify: bool = True) -> tuple[list[str], list[str]]:
    """Split cases into training and validation lists: fold ``val_fold`` of :func:`grouped_kfold`.

    Returns:
        ``(train_ids, val_ids)``, each in the order of ``case_ids``; no group is in both.

    Example:
        >>> tr, va = train_val_split(["a1", "b1", "c1"], ["a", "b", "c"], [1, 0, 1], k=3)
        >>> len(tr), len(va)
        (2, 1)
    """
    if isinstance(val_fold, bool) or not isinstance(val_fold, (int, np.integer)) or not 0 <= val_fold < k:
        raise ConfigError(f"val_fold must be in 0..{k - 1} for k={k}, got {val_fold!r}",
                          hint=f"pick a fold index between 0 and {k - 1}")
    folds = grouped_kfold(case_ids, group_ids, has_mask, k=k, seed=seed, stratify=stratify)
    train = [c for c, f in folds.items() if f != val_fold]
    val = [c for c, f in folds.items() if f == val_fold]
    return train, val


def check_folds(folds: Mapping[str, int], case_ids: Sequence[str] | set[str], *,
                path: str | Path | None = None) -> None:
    """Raise :class:`ConfigError` unless ``folds`` covers exactly ``case_ids``.

    The message counts the missing and unexpected ids and shows a few of each.
    """
    expected = {str(c) for c in case_ids}
    have = set(folds)
    missing = sorted(expected - have)
    extra = sorted(have - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} case(s) of the dataset have no fold (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} case(s) in the folds are not in the dataset "
                         f"(e.g. {', '.join(extra[:3])})")
        raise ConfigError("folds do not match the dataset: " + "; ".join(parts), path=path,
                          hint="the dataset changed since the folds were made: regenerate them "
                               "with grouped_kfold (same seed) and save them again")


def save_folds(path: str | Path, folds: Mapping[str, int], spec: SplitSpec) -> None:
    """Write folds and the spec that made them to a JSON file, atomically.

    File layout: ``{"format": "segwb-folds", "version": 1, "spec": {...}, "fold_sizes": [...],
    "folds": {case_id: fold}}``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "folds.json"
        >>> save_folds(p, {"a": 0, "b": 1}, SplitSpec(k=2))
        >>> load_folds(p)[0]
        {'a': 0, 'b': 1}
    """
    clean = _check_fold_values(folds, spec.k, path)
    sizes = (np.bincount(np.array(list(clean.values()), dtype=np.int64), minlength=spec.k).tolist() if clean
             else [0] * spec.k)
    atomic_write_json(path, {"format": FOLDS_FORMAT, "version": FOLDS_VERSION, "spec": spec.to_dict(),
                             "fold_sizes": sizes, "folds": clean})


def _check_fold_values(folds: Mapping[str, Any], k: int, path: str | Path | None) -> dict[str, int]:
    clean: dict[str, int] = {}
    for case, f in folds.items():
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or not 0 <= int(f) < k:
            raise ConfigError(f"case '{case}' has fold {f!r}, outside 0..{k - 1} (k={k})", path=path,
                              hint="regenerate the folds with grouped_kfold using the same k")
        clean[str(case)] = int(f)
    return clean


def load_folds(path: str | Path, case_ids: Sequence[str] | set[str] | None = None
               ) -> tuple[dict[str, int], SplitSpec]:
    """Read a folds file written by :func:`save_folds`.

    Args:
        path: the JSON file.
        case_ids: when given, the folds must cover exactly these case ids (see
            :func:`check_folds`); a mismatch means the dataset changed.

    Returns:
        ``(folds, spec)``.

    Raises:
        ReadError: missing file or invalid JSON.
        ConfigError: not a folds file, bad spec, fold index out of range, or case mismatch.
    """
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FOLDS_FORMAT:
        raise ConfigError("not a folds file (missing \"format\": \"segwb-folds\")", path=path,
                          hint="pass a file written by save_folds")
    version = data.get("version")
    if not isinstance(version, int) or version > FOLDS_VERSION:
        raise ConfigError(f"folds file version {version!r} is not supported (this engine reads up to "
                          f"{FOLDS_VERSION})", path=path, hint="update the workbench or regenerate the folds")
    try:
        spec = SplitSpec.from_dict(data.get("spec"))
    except ConfigError as exc:
        raise ConfigError(f"bad split spec: {exc.message}", path=path, hint=exc.hint) from None
    raw = data.get("folds")
    if not isinstance(raw, dict):
        raise ConfigError("folds file has no \"folds\" object", path=path,
                          hint="pass a file written by save_folds")
    folds = _check_fold_values(raw, spec.k, path)
    if case_ids is not None:
        check_folds(folds, case_ids, path=path)
    return folds, spec


def fold_summary(folds: Mapping[str, int], group_ids: Mapping[str, str] | Sequence[str],
                 has_mask: Mapping[str, bool] | Sequence[bool]) -> list[dict[str, Any]]:
    """Per-fold counts for reports.

    Args:
        folds: ``{case_id: fold}``.
        group_ids, has_mask: either mappings keyed by case id, or sequences in the order of
            ``folds`` (the order :func:`grouped_kfold` returns: that of its ``case_ids``).

    Returns:
        One dict per fold ``0..max fold``: ``fold``, ``n_cases``, ``n_groups``, ``n_positive``,
        ``positive_fraction`` (NaN for an empty fold).

    Example:
        >>> fold_summary({"a": 0, "b": 1}, ["g1", "g2"], [True, False])[0]["positive_fraction"]
        1.0
    """
    cases = list(folds)
    groups = _aligned(group_ids, cases, "group_ids")
    pos = _aligned(has_mask, cases, "has_mask")
    k = (max(folds.values()) + 1) if folds else 0
    out: list[dict[str, Any]] = []
    for f in range(k):
        members = [i for i, c in enumerate(cases) if folds[c] == f]
        n_pos = int(sum(bool(pos[i]) for i in members))
        out.append({
            "fold": f,
            "n_cases": len(members),
            "n_groups": len({groups[i] for i in members}),
            "n_positive": n_pos,
            "positive_fraction": n_pos / len(members) if members else float("nan"),
        })
    return out


def _aligned(values: Mapping[str, Any] | Sequence[Any], cases: list[str], name: str) -> list[Any]:
    if isinstance(values, Mapping):
        missing = [c for c in cases if c not in values]
        if missing:
            raise ConfigError(f"{name} has no entry for {len(missing)} case(s), e.g. {', '.join(missing[:3])}",
                              hint=f"give {name} an entry for every case in the folds")
        return [values[c] for c in cases]
    seq = list(values)
    if len(seq) != len(cases):
        raise ConfigError(f"{name} has {len(seq)} entries but the folds have {len(cases)} cases",
                          hint=f"pass {name} in the order of the folds, or as a mapping by case id")
    return seq
