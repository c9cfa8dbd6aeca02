"""Cached loaders of review and evaluation data shared by several pages (Dataset browser, Metrics
dashboard, Mask editor, Conflict review).

Each cache is keyed on what makes its result change (a dataset's identity and the refresh
counter, a file's mtime), so a new evaluation, conflicts report or review decision shows on
the next rerun without a manual refresh. The loading itself is the engine's
(:mod:`engine.evaluation`, :mod:`engine.dashboard`, :mod:`engine.dedup`, :mod:`engine.store`).

Example:
    >>> from ui.caches import conflict_pairs, evaluations
    >>> pairs = conflict_pairs(ds)          # None when no conflicts report exists   # doctest: +SKIP
    >>> evs = evaluations(ds)               # newest first                           # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from ui import state

if TYPE_CHECKING:
    import pandas as pd

    from engine.datasets import Dataset
    from engine.evaluation import EvalResult


def _ds_key(ds: Dataset) -> tuple[str, str, int, str, int]:
    return (str(getattr(ds, "manifest_path", None) or ds.root), ds.layout, len(ds),
            json.dumps(ds.options, sort_keys=True, default=str), int(state.get(state.Shared.REFRESH, 0)))


@st.cache_data(show_spinner=False, max_entries=8)
def _frame(key: tuple, _ds: Dataset) -> pd.DataFrame:
    import numpy as np

    from engine.eda import natural_key

    df = _ds.to_frame()
    keys = [(natural_key(str(g)), natural_key(str(c))) for g, c in zip(df["group_id"].tolist(),
                                                                         df["case_id"].tolist())]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(len(keys))
    df["_order"] = rank
    return df


def case_frame(ds: Dataset) -> pd.DataFrame:
    """``ds.to_frame()`` plus a natural-order column ``_order``, cached per dataset path + refresh."""
    return _frame(_ds_key(ds), ds)


@st.cache_data(show_spinner=False, max_entries=16)
def _eval(folder: str, mtime: float) -> EvalResult | None:
    from engine.evaluation import load_eval

    return load_eval(folder)


def cached_eval(folder: str | None) -> EvalResult | None:
    """:func:`engine.evaluation.load_eval` cached on the folder and its summary's mtime (None if absent)."""
    if not folder:
        return None
    p = Path(folder) / "summary.json"
    if not p.is_file():
        return None
    return _eval(str(folder), p.stat().st_mtime)


@st.cache_data(show_spinner=False, max_entries=16)
def _evaluations(root: str, stamp: tuple, _ds: Dataset) -> list[dict[str, Any]]:
    from engine.dashboard import find_evaluations

    return find_evaluations(_ds)


def evaluations(ds: Dataset) -> list[dict[str, Any]]:
    """:func:`engine.dashboard.find_evaluations`, re-read only when an evaluation folder changes."""
    from engine.dashboard import evals_root

    root = evals_root(ds)
    stamp: tuple = ()
    if root.is_dir():
        stamp = tuple(sorted((f.name, _mtime(f / "summary.json")) for f in root.iterdir()))
    return _evaluations(str(root), stamp, ds)


def _mtime(p: Path | None) -> float:
    try:
        return p.stat().st_mtime if p is not None else 0.0
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=8)
def _conflict_pairs(path: str, mtime: float) -> list[dict[str, Any]]:
    from engine.dedup.conflicts import ConflictReport
    from engine.errors import ReadError

    try:
        return ConflictReport.load(path).pairs
    except ReadError:
        return []


def conflict_pairs(ds: Dataset) -> list[dict[str, Any]] | None:
    """Pairs of the latest conflicts report of ``ds`` (None when no report exists)."""
    from engine.dedup import latest_report_path

    path = latest_report_path(ds)
    if path is None or not path.is_file():
        return None
    return _conflict_pairs(str(path), _mtime(path))


def review_states(ds: Dataset) -> dict[str, str] | None:
    """Current review state per case from the review store (None when the dataset has no workspace or no
    state was set yet, so the browser shows no review filter)."""
    from engine.store import ReviewStore

    if getattr(ds, "workdir", None) is None:
        return None
    try:
        with ReviewStore.for_dataset(ds) as store:  # revision-checked: cheap when nothing changed
            return {cid: s.state for cid, s in store.case_states().items()} or None
    except Exception:  # noqa: BLE001 - a damaged store must not break browsing; the review page reports it
        return None
