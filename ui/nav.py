"""Navigation between the app's pages: page paths, links that degrade gracefully, and requests
that open a case on another page.

Example:
    >>> from ui.nav import BROWSER_PAGE, request_case, switch_page
    >>> request_case("1_1", view="Case details")                 # doctest: +SKIP
    >>> switch_page(BROWSER_PAGE)                                # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import state

REPO = Path(__file__).resolve().parents[1]
BROWSER_PAGE = "pages/3_Dataset_browser.py"
CONFLICT_PAGE = "pages/6_Conflict_review.py"
EDITOR_PAGE = "pages/7_Mask_editor.py"


def request_case(case_id: str, view: str = "Case details", model: str | None = None,
                 eval_folder: str | None = None) -> None:
    """Ask the browser (next time it runs) to open ``case_id`` in ``view`` with a model/evaluation."""
    state.put(state.Shared.BROWSER_CASE, case_id)
    st.session_state[state.Browser.REQUEST] = {"case": case_id, "view": view, "model": model, "eval": eval_folder}


def short_id(case_id: str, n: int = 24) -> str:
    """Long ids (DICOM UIDs) shortened to their distinctive tail for captions."""
    return case_id if len(case_id) <= n else "…" + case_id[-(n - 1):]


def page_link(page: str, label: str, icon: str | None = None) -> bool:
    """``st.page_link`` to a page of this app when its file exists (else nothing); True when drawn.

    When the page cannot be linked (a page script run on its own, as in AppTest, knows no other
    pages) the label is shown as text with a hint to use the menu.
    """
    from streamlit.errors import StreamlitAPIException

    if not (REPO / page).is_file():
        return False
    try:
        st.page_link(page, label=label, icon=icon)
    except StreamlitAPIException:
        st.caption(f"{icon or ''} {label}: open *{Path(page).stem.split('_', 1)[-1].replace('_', ' ')}* "
                   "from the menu")
    return True


def switch_page(page: str) -> None:
    """``st.switch_page`` that degrades to a hint when the page is unknown to the running app."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.switch_page(page)
    except StreamlitAPIException:
        st.info(f"Open *{Path(page).stem.split('_', 1)[-1].replace('_', ' ')}* from the menu to see the case.")
