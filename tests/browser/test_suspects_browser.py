"""The label-error finder in a real browser: with a report for the nerve phantom, the Mask editor
explains the case on screen and "Show where the label disagrees" adds the disagreement map image.

The report is built in the test process with the engine's own ``honest_probabilities`` +
``find_suspects`` (the session's random :data:`MODEL_B` judges), written where the running app
reads it (the dataset's workspace folder), and removed afterwards so the other browser tests see
the workspace without it.
"""

from __future__ import annotations

import shutil

import pytest

from tests.browser.support import MODEL_B, app_text, assert_healthy, goto_page, image_captions, toggle, wait_idle

pytestmark = pytest.mark.browser


@pytest.fixture()
def report(browser_env):
    """The nerve phantom's label-error finder report (removed again after the test)."""
    from engine.curation.crossfit import honest_probabilities
    from engine.curation.suspects import find_suspects, suspects_folder
    from engine.datasets import open_dataset
    from engine.workspace import Workspace

    ds = open_dataset(browser_env.nerve, workspace=Workspace(browser_env.workspace))
    model = browser_env.workspace / "models" / MODEL_B
    rep = find_suspects(ds, honest_probabilities(ds, [str(model)], device="cpu"))
    try:
        yield rep
    finally:
        shutil.rmtree(suspects_folder(ds), ignore_errors=True)


def test_editor_shows_the_finders_verdict_and_its_map(page, report) -> None:
    top = report.cases[0]
    goto_page(page, "Mask editor", query=f"case={top.case_id}")
    assert_healthy(page)
    text = app_text(page)
    assert "Label-error finder:" in text and f"rank 1 of {len(report.cases)}" in text
    assert top.reasons[0][:40] in text
    before = [c for c in image_captions(page) if c.startswith("where the label disagrees")]
    assert not before
    assert toggle(page, "Show where the label disagrees") is True
    wait_idle(page)
    caps = [c for c in image_captions(page) if c.startswith("where the label disagrees")]
    assert caps and f"({top.type}, score {top.score:.2f})" in caps[0]
    assert "label has it, the model rejects it" in app_text(page)
    assert_healthy(page)
