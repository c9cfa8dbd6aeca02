"""Every page of the app (Home + every pages/*.py, discovered at collection) loads in a real browser
without an exception, a traceback or an error box; a full-page screenshot of each goes to
docs/screenshots/<page>.png (the README shows them).
"""

from __future__ import annotations

import pytest

from tests.browser.support import app_pages, assert_healthy, goto_page, headings, screenshot, slug

pytestmark = pytest.mark.browser

PAGES = app_pages()


def test_pages_discovered() -> None:
    """The four original pages are there (new ones are added to PAGES by themselves)."""
    names = [n for n, _ in PAGES]
    assert names[0] == "Home"
    for expected in ("Predict", "Compare models", "Dataset browser", "Metrics dashboard"):
        assert expected in names


@pytest.mark.parametrize("name,script", PAGES, ids=[slug(s) for _, s in PAGES])
def test_page_loads(page, name: str, script: str) -> None:
    goto_page(page, name)
    assert_healthy(page)
    # the page drew its title (page_setup) and the sidebar menu lists every page
    assert headings(page), f"{script}: no heading rendered"
    menu = [t.strip() for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]
    assert len(menu) == len(PAGES), f"sidebar menu {menu} does not list all {len(PAGES)} pages"
    assert menu[0].endswith("Home"), menu  # the first entry is Home, not the script's name "app"
    if name != "Home":
        assert name in menu
    screenshot(page, f"page_{slug(script)}")  # first render; workflow tests save the richer views
