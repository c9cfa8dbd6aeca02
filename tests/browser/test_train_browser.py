"""Train page in the running app: a tiny training started from the browser runs in the background,
the live panel shows its progress bar and curves and reaches "finished" by itself (auto-refresh),
and the exported model is announced. Screenshot: docs/screenshots/train.png.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.browser.support import (
    alerts,
    app_text,
    assert_healthy,
    click_button,
    expand,
    expect_rerun,
    goto_page,
    metrics,
    screenshot,
    select_option,
    set_number,
    wait_idle,
    widget,
)

pytestmark = pytest.mark.browser

PAGE = "Train"
NAME = "browser-train"
RUN_LIMIT = 240.0  # seconds for the tiny run on busy cores


_STATE_JS = """() => {
  for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
    const label = m.querySelector('[data-testid="stMetricLabel"]');
    if (label && label.textContent.trim() === 'State')
      return (m.querySelector('[data-testid="stMetricValue"]') || {textContent: ''}).textContent.trim();
  }
  return '';
}"""


def _state(page) -> str:
    """The live panel's State metric, read in one step (the panel redraws itself every 2 s)."""
    return page.evaluate(_STATE_JS) or ""


def _kill_leftovers(workspace) -> None:
    from engine import jobs

    for r in jobs.list_jobs(workspace):
        if r["alive"] and r["name"] == NAME:
            try:
                os.killpg(int(r["pid"]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, TypeError, ValueError):
                pass


def test_train_tiny_model_from_the_browser(page, browser_env) -> None:
    from engine import jobs
    from engine.checkpoint import list_weights
    from engine.workspace import Workspace

    goto_page(page, PAGE)
    assert_healthy(page)
    form = expand(page, "New training run")
    try:
        set_number(page, "Epochs", 2, scope=form)
        set_number(page, "Input height", 64, scope=form)
        set_number(page, "Input width", 64, scope=form)
        set_number(page, "Base channels", 4, scope=form)
        set_number(page, "Folds", 3, scope=form)
        select_option(page, "Augmentation preset", "none", scope=form)
        field = widget(page, "stTextInput", "Model name", form).first.locator("input")
        field.fill(NAME)
        with expect_rerun(page):
            field.press("Enter")
        assert_healthy(page)
        click_button(page, "Start training")
        assert any("Started" in a for a in alerts(page, "success")), alerts(page)
        page.locator('[data-testid="stProgress"]').first.wait_for(state="visible", timeout=60_000)

        # the panel refreshes itself: no clicks from here until the run has finished
        seen: set[str] = set()
        curves_while_running = False
        t0 = time.monotonic()
        while time.monotonic() - t0 < RUN_LIMIT:
            s = _state(page)
            seen.add(s.split(" ")[-1] if s else "")
            charts = page.locator('[data-testid="stPlotlyChart"]:visible').count()
            if "running" in s and charts:
                curves_while_running = True
            if "finished" in s:
                break
            assert not any(x in s for x in ("failed", "died", "cancelled")), (s, app_text(page)[-2000:])
            page.wait_for_timeout(1000)
        else:
            raise AssertionError(f"the run did not finish in {RUN_LIMIT:.0f} s (states seen: {seen})")
        page.wait_for_timeout(1000)
        wait_idle(page)  # the full rerun triggered by the end of the run; then no more refreshes
        assert seen & {"starting", "running"}, seen
        assert_healthy(page)
        m = metrics(page)
        assert m["State"].endswith("finished") and m["Epoch"] == "2 / 2", m
        assert page.locator('[data-testid="stPlotlyChart"]:visible').count() >= 2
        assert any(NAME in a and "model picker" in a for a in alerts(page, "success")), alerts(page)
        runs = [r for r in jobs.list_jobs(browser_env.workspace) if r["name"] == NAME]
        assert runs and runs[0]["state"] == "finished" and runs[0]["epoch"] == 2
        assert NAME in {w["name"] for w in list_weights(Workspace(browser_env.workspace))}
        # the curve showed up during the run when an epoch ended before the last one (not guaranteed
        # on a busy machine: the two epochs may end between two refreshes)
        print(f"states seen {sorted(seen)}; curves while running: {curves_while_running}")
        screenshot(page, "train_run")
    finally:
        _kill_leftovers(browser_env.workspace)
