"""The view's context in the URL (``st.query_params``): dataset, case and pair — the page itself is
the URL path — so a reload, back/forward and a pasted link restore what was on screen.

- ``?dataset=/data/us/nerve`` — the dataset (folder or manifest). In team mode it must lie under
  a data root like any other folder (:func:`ui.auth.check_dataset_path`), else it is refused and
  dropped from the URL.
- ``&case=1_12`` — the case open in the Mask editor / Dataset browser (``state.Shared.BROWSER_CASE``).
- ``&pair=1_12~1_13`` — the pair on screen in Conflict review.

:func:`restore` (from ``page_setup``, after sign-in) adopts a value only when the URL changed
outside the app (a new session, a pasted link, back/forward): it remembers what it last wrote, so
a choice made on the page is never overridden by the URL's older value. :func:`publish` writes the
current values (the page calls it once it knows them). A case page calls :func:`warn_unknown_case` once
it has the dataset: a ``case=`` the dataset lacks is named in a warning instead of silently showing
another case.

Example:
    >>> from ui import context
    >>> context.publish(case="1_12")                                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from ui import state

if TYPE_CHECKING:
    from engine.datasets import Dataset

PARAMS = ("dataset", "case", "pair")
PAIR_SEP = "~"


def pair_param(a: str, b: str) -> str:
    return f"{a}{PAIR_SEP}{b}"


def parse_pair(text: str) -> tuple[str, str] | None:
    a, sep, b = str(text).rpartition(PAIR_SEP)
    return (a, b) if sep and a and b else None


def _synced() -> dict[str, str]:
    return st.session_state.setdefault(state.Shared.URL_SYNCED, {})


def restore() -> None:
    """Adopt URL values the app did not write itself (see module doc); refused datasets are dropped."""
    from engine.errors import WorkbenchError
    from engine.store.records import target_of
    from ui import auth

    synced = _synced()
    qp = st.query_params
    ds = qp.get("dataset")
    if ds is not None and ds != synced.get("dataset"):
        synced["dataset"] = ds
        try:
            auth.check_dataset_path(ds)
        except WorkbenchError as exc:
            st.error(f"The dataset in this link cannot be opened: {exc}", icon=":material/block:")
            del qp["dataset"]
            synced.pop("dataset", None)
        else:
            if ds != state.get(state.Shared.DATASET):
                state.put(state.Shared.DATASET_OPTIONS, {})
                state.put(state.Shared.DATASET, ds)
    case = qp.get("case")
    if case is not None and case != synced.get("case"):
        synced["case"] = case
        state.put(state.Shared.BROWSER_CASE, case)
        st.session_state[state.Shared.URL_CASE_CHECK] = case
    pair = qp.get("pair")
    if pair is not None and pair != synced.get("pair"):
        synced["pair"] = pair
        ab = parse_pair(pair)
        if ab is not None:
            state.put(state.Review.CURRENT, target_of(ab))  # the store's key of the pair
            # the pair wins over a case deep link of the same URL
            state.put(state.Review.LINK_CASE, state.get(state.Shared.BROWSER_CASE))
            st.session_state.pop(state.Review.JUMP, None)


def unknown_link_case(ds: Dataset) -> str | None:
    """The ``case=`` adopted from the URL when ``ds`` has no such case, else None; checked once."""
    case = st.session_state.pop(state.Shared.URL_CASE_CHECK, None)
    return None if case is None or case in ds else str(case)


def warn_unknown_case(ds: Dataset) -> None:
    """Say so when the link's ``case=`` is not a case of ``ds`` (the page shows another case, or none)."""
    case = unknown_link_case(ds)
    if case is not None:
        shown = case if len(case) <= 80 else case[:79] + "…"
        st.warning(f"The case in this link, `{shown.replace('`', chr(39))}`, is not in this dataset "
                   f"({len(ds.case_ids):,} cases), so it cannot be opened: check the link, or pick a case below.",
                   icon=":material/link_off:")


def publish(**values: str | None) -> None:
    """Write ``dataset=``/``case=``/``pair=`` into the URL (None removes the parameter)."""
    synced = _synced()
    qp = st.query_params
    for k, v in values.items():
        if k not in PARAMS:
            raise ValueError(f"unknown URL parameter {k!r}")
        if v is None:
            if k in qp:
                del qp[k]
            synced.pop(k, None)
        elif qp.get(k) != str(v):
            qp[k] = str(v)
            synced[k] = str(v)
        else:
            synced[k] = str(v)
