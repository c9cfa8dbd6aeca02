"""pytest wiring of the real-browser suite: the ``browser`` marker, failure reports for the ``page``
fixture's screenshots, and the session fixtures of :mod:`tests.browser.support` (server, Chromium,
pages), where the helpers for page authors live too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import app_server, browser_context, browser_env, page, playwright_session

__all__ = ["app_server", "browser_context", "browser_env", "page", "playwright_session"]


# ------------------------------------------------------------------------------------ collection

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/browser with ``browser`` (before ``-m`` selection runs)."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Keep each phase's report on the item (``item.rep_call``) so the page fixture can save failures."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
