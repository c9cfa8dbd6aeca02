"""The correction loop in the running app (issue 12, "done when"): on the demo phantom a reviewer
decides the planted conflicts (the live ceiling follows), presses "Retrain with corrections" (a real
1-epoch fine-tune of MODEL_A in the job system), and reads which fixes moved which metric.

Uses the session's server and Chromium from conftest.py. The decisions are undone at the end (other
tests of the session expect an undecided queue); the fine-tuned model stays in the workspace.
"""

from __future__ import annotations

import re

import pytest

from tests.browser.support import (
    MODEL_A,
    alerts,
    app_text,
    assert_healthy,
    click_button,
    expand,
    expect_rerun,
    goto_page,
    headings,
    metrics,
    screenshot,
    select_option,
    selected,
    set_number,
    wait_idle,
    wait_until,
    widget,
)

pytestmark = pytest.mark.browser

PAGE = "Conflict review"
SECTION = "Retrain with corrections"


def _ds(env):
    from engine.datasets import open_dataset
    from engine.workspace import Workspace

    return open_dataset(env.nerve, workspace=Workspace(env.workspace))


def _pair_heading(page):
    for h in headings(page):
        m = re.match(r"^(\S+) ↔ (\S+) · (\w+)", h)
        if m:
            return m.group(1), m.group(2), m.group(3)
    return None


def _decide(page, label: str, key: str) -> None:
    btn = page.locator('[data-testid="stButton"] button:visible').filter(
        has_text=re.compile(rf"{re.escape(label)}\s*{re.escape(key)}\s*$"))
    assert btn.count() == 1, f"{btn.count()} buttons {label!r}"
    with expect_rerun(page):
        btn.first.click()


def test_decide_retrain_and_read_what_moved(page, browser_env) -> None:
    from engine.checkpoint import read_card
    from engine.curation import live_ceiling
    from engine.dedup import load_latest_report
    from engine.phantoms import load_planted_pairs
    from engine.store import ReviewStore

    env = browser_env
    goto_page(page, PAGE)
    if not _pair_heading(page):
        click_button(page, "Find near-duplicates")
    assert_healthy(page)
    ds = _ds(env)
    planted = {tuple(sorted((p["a"], p["b"]))) for p in load_planted_pairs(env.nerve) if p["kind"] == "conflict"}
    held_out = set(read_card(env.workspace / "models" / MODEL_A).training["split"]["val_case_ids"])
    assert planted and held_out

    box = widget(page, "stTextInput", "Reviewer").first.locator("input")
    box.fill("loop-tester")
    with expect_rerun(page):
        box.press("Enter")
    ceilings = [metrics(page)["Label-noise ceiling now"]]

    decided = []
    for _ in range(len(planted)):  # conflicts are the most severe pairs: the queue shows them first
        a, b, cat = _pair_heading(page)
        assert cat == "conflict" and tuple(sorted((a, b))) in planted, (a, b, cat)
        if {a, b} & held_out:
            _decide(page, "Union of masks", "4")  # the held-out twin's ground truth changes: the yardstick moves
        elif ds.case(a).has_mask:
            _decide(page, "Keep A, drop B", "1")
        else:
            _decide(page, "Keep B, drop A", "2")
        decided.append((a, b))
        wait_until(lambda: _pair_heading(page) and _pair_heading(page)[:2] != (a, b), timeout=60)
        wait_idle(page)
        ceilings.append(metrics(page)["Label-noise ceiling now"])
    assert {tuple(sorted(p)) for p in decided} == planted
    assert len(set(ceilings)) == len(ceilings), ceilings  # the ceiling moved with every decision
    report = load_latest_report(ds)
    with ReviewStore.for_dataset(ds) as store:
        live = live_ceiling(ds, store, report)
    assert ceilings[-1] == f"{live['dataset']:.4f}"
    assert metrics(page)["Conflicts still open"] == "0"

    try:
        select_option(page, "Model to fine-tune", MODEL_A, scope=expand(page, SECTION))
        set_number(page, "Epochs", 1, scope=expand(page, SECTION))
        click_button(page, "Retrain with corrections", scope=expand(page, SECTION))
        assert_healthy(page)
        done = wait_until(lambda: [t for t in alerts(page, "success") if "every model picker" in t]
                          or [t for t in alerts(page, "error") if "Retraining" in t], timeout=420, interval=1.0)
        assert "every model picker" in done[0], done
        wait_idle(page)
        child = re.search(r"Retrained: (\S+) \(", done[0]).group(1)
        card = read_card(env.workspace / "models" / child)
        assert card.training["lineage"]["parent_model"] == MODEL_A
        assert card.training["lineage"]["n_decisions"] == len(planted)
        assert not set(card.training["split"]["train_case_ids"]) & held_out

        sec = expand(page, SECTION)
        assert selected(page, "Before", scope=sec) == MODEL_A and selected(page, "After", scope=sec) == child
        click_button(page, "Show what moved", scope=expand(page, SECTION))
        assert_healthy(page)
        wait_until(lambda: "Fixes among the held-out cases" in app_text(page), timeout=240)
        text = app_text(page)
        assert "Original ground truth" in text and "Corrected ground truth" in text
        m = metrics(page, scope=expand(page, SECTION))
        assert m["Ceiling before"] == f"{report.ceiling['dataset']:.4f}" and m["Ceiling after"] == ceilings[-1]
        union_pair = next(p for p in decided if set(p) & held_out)
        for cid in set(union_pair) & held_out:  # the fix on a held-out case is listed with what it did
            assert cid in text
        assert "union by loop-tester" in text
        screenshot(page, "conflict_review_retrain_impact")
    finally:
        with ReviewStore.for_dataset(ds) as store:  # leave the queue undecided for the other tests
            for a, b in decided:
                d = store.decision_for(a, b)
                if d is not None:
                    store.undo(d.event_id, "loop-tester")
