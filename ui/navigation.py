"""The app's navigation: Home (``ui/home_view.py``) as the first sidebar entry, then every
``pages/*.py`` in menu order with the title and URL Streamlit derives from the file name
(``7_Mask_editor.py`` → "Mask editor", ``/Mask_editor``), so links and ``st.switch_page("pages/…")``
work as before.

Example (``app.py``):
    >>> from ui.navigation import app_navigation
    >>> app_navigation().run()                                                  # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from streamlit.navigation.page import StreamlitPage

PAGES_DIR = Path(__file__).resolve().parents[1] / "pages"


def page_files() -> list[Path]:
    """``pages/*.py`` in menu order (the number prefix, then the name)."""
    def order(p: Path) -> tuple[float, str]:
        m = re.match(r"^(\d+)", p.stem)
        return (float(m.group(1)) if m else float("inf"), p.stem)

    return sorted((p for p in PAGES_DIR.glob("*.py") if not p.name.startswith("_")), key=order)


def app_navigation() -> StreamlitPage:
    """Register Home and the pages with ``st.navigation`` (sidebar); returns the page to run."""
    from ui.home_view import render_home

    home = st.Page(render_home, title="Home", icon="🏠", url_path="", default=True)
    return st.navigation([home] + [st.Page(str(p.relative_to(PAGES_DIR.parent))) for p in page_files()])
