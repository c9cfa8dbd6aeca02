"""AppTest of the Admin page's roots rule: a filesystem root is refused with the reason until the
'allow' checkbox confirms it (real store with argon2 accounts in a tmp workspace; no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.store import ReviewStore, default_store_url
from tests.support.helpers import app_test, ok, team_workspace, tiny_demo_dir
from ui import state

REPO = Path(__file__).resolve().parents[2]
ADMIN = str(REPO / "pages" / "8_Admin.py")
ADA_PW = "harbor-violet-piano-42"


@pytest.fixture()
def team(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    demo = tiny_demo_dir(tmp_path_factory, "roots_demo")
    ws = tmp_path / "ws"
    return team_workspace(monkeypatch, demo, ws, {"ada": ("admin", ADA_PW)})


def test_admin_page_refuses_root_until_confirmed(team: Path) -> None:
    at = app_test(ADMIN).run()
    at.text_input(key=state.Auth.NAME).input("ada")
    at.text_input(key=state.Auth.PASSWORD).input(ADA_PW)
    at.button(key=state.Auth.SUBMIT).click()
    at = ok(at.run())
    at.text_area(key=state.Admin.EXPORT_ROOTS).input("/")
    at.button(key=state.Admin.SAVE_EXPORT_ROOTS).click()
    at = at.run()
    assert any("filesystem root" in e.value and "every file below" in e.value for e in at.error)
    with ReviewStore(default_store_url(team)) as s:
        assert s.export_roots() == []
    at.checkbox(key=state.Admin.EXPORT_ROOTS_BROAD).check()
    at.button(key=state.Admin.SAVE_EXPORT_ROOTS).click()
    at = ok(at.run())
    with ReviewStore(default_store_url(team)) as s:
        assert s.export_roots() == [Path("/")]
        assert s.admin_log()[-1]["actor"] == "ada"
