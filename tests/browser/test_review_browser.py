"""Conflict review in the running app: a decision survives a page reload, undo works in the
browser, keyboard shortcuts decide and move, and the page's screenshot shows a conflict pair.

Uses the session's server and Chromium from conftest.py (tiny demo phantoms, own workspace);
decisions are read back from the review store of that workspace.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.support import (
    alerts,
    assert_healthy,
    click_button,
    expect_rerun,
    goto_page,
    headings,
    image_captions,
    loaded_images,
    screenshot,
    set_multiselect,
    wait_idle,
    widget,
)

pytestmark = pytest.mark.browser

PAGE = "Conflict review"


def _store(env):
    from engine.datasets import open_dataset
    from engine.store import ReviewStore
    from engine.workspace import Workspace

    return ReviewStore.for_dataset(open_dataset(env.nerve, workspace=Workspace(env.workspace)))


def _open(page, env) -> None:
    """Open the page; run the duplicate search when this workspace has none yet."""
    goto_page(page, PAGE)
    if not _pair_heading(page):
        click_button(page, "Find near-duplicates")
    assert_healthy(page)
    assert _pair_heading(page), headings(page)


def _pair_heading(page) -> tuple[str, str, str] | None:
    """(a, b, category) from the pair's heading ``a ↔ b · category``."""
    for h in headings(page):
        m = re.match(r"^(\S+) ↔ (\S+) · (\w+)", h)
        if m:
            return m.group(1), m.group(2), m.group(3)
    return None


def _click(page, label: str, key: str) -> None:
    """Click the button showing ``label`` and its keyboard-shortcut hint ``key``."""
    btn = page.locator('[data-testid="stButton"] button:visible').filter(
        has_text=re.compile(rf"{re.escape(label)}\s*{re.escape(key)}\s*$"))  # (an icon's name may precede)
    assert btn.count() == 1, f"{btn.count()} buttons {label!r}"
    with expect_rerun(page):
        btn.first.click()


def _sign_in(page, name: str) -> None:
    box = widget(page, "stTextInput", "Reviewer").first.locator("input")
    box.fill(name)
    with expect_rerun(page):
        box.press("Enter")
    _until(page, lambda: box.input_value() == name, f"reviewer {name!r} entered")


def _until(page, cond, what: str, timeout: float = 120.0):
    """Poll ``cond()`` until it is truthy (a loaded machine may start a rerun late), then wait
    until the app is idle; returns the truthy value."""
    t0 = time.perf_counter()
    while True:
        try:
            got = cond()
        except Exception:  # noqa: BLE001 - elements replaced mid-rerun: try again
            got = None
        if got:
            wait_idle(page)
            return got
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.3)


def _decision(env, a: str, b: str):
    with _store(env) as s:
        d = s.decision_for(a, b)
        return None if d is None else (d.decision, d.reviewer)


def _success_with(page, *texts: str) -> bool:
    return any(all(t in x for t in texts) for x in alerts(page, "success"))


def test_decision_persists_across_reload_and_undo(page, browser_env) -> None:
    _open(page, browser_env)
    a, b, category = _pair_heading(page)
    assert category == "conflict"  # the most severe pair comes first
    caps = image_captions(page)
    assert any(c.startswith(f"A · {a}") for c in caps) and any(c.startswith(f"B · {b}") for c in caps), caps
    assert loaded_images(page) >= 3  # A, B, difference (+ neighbouring frames)
    _sign_in(page, "browser-tester")
    shot = screenshot(page, "conflict_review_pair")
    assert shot.stat().st_size > 10_000

    _click(page, "Keep both", "3")
    _until(page, lambda: _decision(browser_env, a, b) == ("keep_both", "browser-tester"), "decision stored")
    _until(page, lambda: _success_with(page, "Recorded Keep both"), "confirmation shown")
    assert_healthy(page)
    assert _pair_heading(page)[:2] != (a, b)  # advanced to the next undecided pair

    # a reload is a new browser session: the decision comes back from the store
    goto_page(page, PAGE)
    assert_healthy(page)
    assert _pair_heading(page)[:2] != (a, b)  # the queue starts at a pair still undecided
    set_multiselect(page, "Decision state", ["decided"])
    _until(page, lambda: _pair_heading(page)[:2] == (a, b), "the decided pair shown")
    assert _success_with(page, "Keep both", "browser-tester"), alerts(page, "success")

    # undo in the browser (a new event in the store)
    _sign_in(page, "browser-tester")
    _click(page, "Undo", "U")
    _until(page, lambda: _decision(browser_env, a, b) is None, "decision undone in the store")
    _until(page, lambda: _success_with(page, "Undid"), "undo confirmed on the page")
    assert_healthy(page)
    with _store(browser_env) as s:
        assert [e.author for e in s.events(kinds=["undo"])][-1] == "browser-tester"


def test_keyboard_shortcuts_decide_and_move(page, browser_env) -> None:
    _open(page, browser_env)
    _sign_in(page, "keyboard-tester")
    first = _pair_heading(page)[:2]
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # shortcuts skip text boxes
    with expect_rerun(page):
        page.keyboard.press("N")  # next pair
    second = _until(page, lambda: (h := _pair_heading(page)) and h[:2] != first and h[:2], "next pair (N)")
    with expect_rerun(page):
        page.keyboard.press("3")  # Keep both
    _until(page, lambda: _decision(browser_env, *second) == ("keep_both", "keyboard-tester"), "decision by key 3")
    assert_healthy(page)
    third = _until(page, lambda: (h := _pair_heading(page)) and h[:2] != second and h[:2], "auto-advance")
    assert third != first
    with expect_rerun(page):
        page.keyboard.press("P")  # back one pair in the queue
    _until(page, lambda: _pair_heading(page)[:2] == second, "previous pair (P)")
    assert _decision(browser_env, *first) is None and _decision(browser_env, *third) is None
    with _store(browser_env) as s:  # clean up for other tests sharing the workspace
        s.undo(s.decision_for(*second).event_id, "keyboard-tester")
