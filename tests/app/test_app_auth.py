"""AppTests of the sign-in gate (every page), the Admin page and the team-mode folder rules
(real store with argon2 accounts in a tmp workspace; no mocks).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.errors import PermissionDenied
from engine.store import LOCAL_OPERATOR, ReviewStore, default_store_url
from engine.store.signin import SignInPolicy
from tests.support.helpers import app_test, ok, point_app_at, team_workspace, tiny_demo_dir
from ui import state

REPO = Path(__file__).resolve().parents[2]
# passwords that meet the default policy (12+ characters, hard to guess, not containing the name)
ADA_PW, VIC_PW, RITA_PW = "harbor-violet-piano-42", "quiet-lantern-meadow-7", "copper-fjord-tulip-19"
HOME = str(REPO / "app.py")
REVIEW = str(REPO / "pages" / "6_Conflict_review.py")
ADMIN = str(REPO / "pages" / "8_Admin.py")
PAGES = [HOME] + [str(p) for p in sorted((REPO / "pages").glob("*.py"))]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_demo_dir(tmp_path_factory, "auth_demo")


@pytest.fixture()
def team(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Team mode on a fresh workspace store with an admin (ada) and a viewer (vic)."""
    ws = tmp_path / "ws"
    return team_workspace(monkeypatch, demo, ws, {"ada": ("admin", ADA_PW), "vic": ("viewer", VIC_PW)})


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [t.value for t in at.title] + [e.value for e in at.error] + \
        [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def _sign_in(at, name: str, pw: str):
    at.text_input(key=state.Auth.NAME).input(name)
    at.text_input(key=state.Auth.PASSWORD).input(pw)
    at.button(key=state.Auth.SUBMIT).click()
    return at.run()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: Path(p).stem)
def test_every_page_shows_only_the_sign_in_form(team, page):
    at = app_test(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Sign in"]
    keys = {w.key for w in at.text_input}
    assert keys == {state.Auth.NAME, state.Auth.PASSWORD}
    assert not at.selectbox and not at.dataframe and not at.metric and not at.image


def test_wrong_password_refused_then_throttled_and_right_one_signs_in(team):
    with ReviewStore(default_store_url(team)) as s:  # long delays, so the test does not race the clock
        s.set_signin_policy(SignInPolicy(base_delay=600.0, max_delay=600.0), actor=LOCAL_OPERATOR)
    at = app_test(REVIEW).run()
    at = _sign_in(at, "ada", "wrong")
    assert any("wrong user name or password" in e.value for e in at.error)
    assert state.Auth.USER not in at.session_state
    for _ in range(2):  # two more failures: the third makes the name wait
        at = _sign_in(at, "ada", "wrong")
    at = _sign_in(at, "ada", ADA_PW)  # refused before the password is checked
    errs = [e.value for e in at.error]
    assert any(re.search(r"too many failed sign-ins for this user name: wait (599|600) s", e) for e in errs), errs
    assert state.Auth.USER not in at.session_state
    at = _sign_in(at, "vic", VIC_PW)  # another name is not throttled
    assert at.session_state[state.Auth.USER] == "vic"
    assert [t.value for t in at.title] == ["Conflict review"]
    assert "vic" in _texts(at) and "viewer" in _texts(at)


def test_team_mode_without_admin_refuses(demo, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    point_app_at(monkeypatch, demo, ws)
    monkeypatch.setenv("SEGWB_MODE", "team")
    at = app_test(HOME).run()
    assert any("needs an administrator account" in e.value and "users add NAME --role admin" in e.value
               for e in at.error), [e.value for e in at.error]
    assert not at.text_input


def test_demo_mode_has_no_sign_in(demo, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    point_app_at(monkeypatch, demo, ws)
    monkeypatch.delenv("SEGWB_MODE", raising=False)
    at = ok(app_test(ADMIN).run())
    assert [t.value for t in at.title] == ["Admin"]
    assert "single-user demo" in "\n".join(i.value for i in at.info)


def test_admin_page_manages_users_and_roots(team, demo):
    at = app_test(ADMIN).run()
    at = ok(_sign_in(at, "ada", ADA_PW))
    at.text_input(key=state.Admin.NEW_NAME).input("rita")
    at.selectbox(key=state.Admin.NEW_ROLE).select("reviewer")
    at.text_input(key=state.Admin.NEW_PASSWORD).input(RITA_PW)
    at.button(key=state.Admin.ADD).click()
    at = ok(at.run())
    with ReviewStore(default_store_url(team)) as s:
        u = s.user("rita")
        assert u is not None and u.role == "reviewer" and s.authenticate("rita", RITA_PW).name == "rita"
        assert s.admin_log()[-1]["actor"] == "ada"
    at.selectbox(key=state.Admin.USER).select("vic")
    at = ok(at.run())
    at.selectbox(key=f"{state.Admin.ROLE}_vic").select("annotator")
    at = ok(at.run())
    at.button(key=state.Admin.SET_ROLE).click()
    at = ok(at.run())
    at.button(key=state.Admin.TOGGLE).click()  # disable vic
    at = ok(at.run())
    with ReviewStore(default_store_url(team)) as s:
        assert s.user("vic").role == "annotator" and not s.user("vic").active
    at.text_area(key=state.Admin.DATA_ROOTS).input(str(demo))
    at.button(key=state.Admin.SAVE_DATA_ROOTS).click()
    at = ok(at.run())
    at.text_area(key=state.Admin.DATA_ROOTS).input("relative/path")
    at.button(key=state.Admin.SAVE_DATA_ROOTS).click()
    at = at.run()
    assert any("absolute" in e.value for e in at.error)
    with ReviewStore(default_store_url(team)) as s:
        assert s.data_roots() == [demo.resolve()]


def test_admin_page_refuses_non_admins(team):
    at = app_test(ADMIN).run()
    at = ok(_sign_in(at, "vic", VIC_PW))
    assert "needs the **admin** role" in _texts(at)
    assert not at.text_area and not at.dataframe


def test_dataset_outside_data_roots_refused_even_from_the_url(team, demo, tmp_path):
    with ReviewStore(default_store_url(team)) as s:
        s.set_data_roots([demo / "ptx"], actor=LOCAL_OPERATOR)
    nerve = demo / "nerve"
    link = tmp_path / "sneaky"
    link.symlink_to(nerve)  # a symlink under no root pointing at a folder under no root
    at = app_test(REVIEW)
    at.query_params["dataset"] = str(link)
    at = at.run()
    at = _sign_in(at, "ada", ADA_PW)
    errs = " ".join(e.value for e in at.error)
    assert "cannot be opened" in errs and "outside the data roots" in errs
    assert at.session_state[state.Shared.DATASET] if state.Shared.DATASET in at.session_state else True
    assert state.Shared.DATASET not in at.session_state or at.session_state[state.Shared.DATASET] != str(link)


def test_locked_account_is_unlocked_by_an_admin_who_then_forces_a_new_password(team):
    with ReviewStore(default_store_url(team)) as s:
        s.set_signin_policy(SignInPolicy(base_delay=0.0), actor=LOCAL_OPERATOR)
        for _ in range(10):  # lock vic out
            with pytest.raises(PermissionDenied, match="wrong"):
                s.authenticate("vic", "a-wrong-guess", address="203.0.113.9")
    at = app_test(HOME).run()
    at = _sign_in(at, "vic", VIC_PW)
    errs = " ".join(e.value for e in at.error)
    assert "locked until" in errs and "ask an admin to unlock" in errs and state.Auth.USER not in at.session_state
    at = ok(_sign_in(app_test(ADMIN).run(), "ada", ADA_PW))
    assert "Failed sign-ins" in [h.value for h in at.subheader]
    at.button(key=f"{state.Admin.UNLOCK}_account_vic").click()
    at = ok(at.run())
    at.selectbox(key=state.Admin.USER).select("vic")
    at = ok(at.run())
    at.button(key=state.Admin.MUST_CHANGE).click()
    at = ok(at.run())
    with ReviewStore(default_store_url(team)) as s:
        assert not [r for r in s.signin_failures() if r["key"] == "vic"] and s.password_change_required("vic")
        assert [(r["actor"], r["action"], r["target"]) for r in s.admin_log()[-2:]] == [
            ("ada", "signin_unlock", "vic"), ("ada", "user_require_password_change", "vic")]
    # vic signs in and sees nothing but the new-password form until the new password meets the policy
    at = _sign_in(app_test(REVIEW).run(), "vic", VIC_PW)
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Choose a new password"] and not at.selectbox and not at.dataframe
    for pw, pw2, why in (("vic-short", "vic-short", "too short"), (VIC_PW, VIC_PW, "same as the current"),
                         ("password123456", "password123456", "too easy to guess"),
                         ("amber-glacier-sparrow-5", "amber-glacier-sparrow-6", "differ")):
        at.text_input(key=state.Auth.NEW_PASSWORD).input(pw)
        at.text_input(key=state.Auth.NEW_PASSWORD2).input(pw2)
        at.button(key=state.Auth.CHANGE_SUBMIT).click()
        at = at.run()
        assert any(why in e.value for e in at.error), (why, [e.value for e in at.error])
        assert [t.value for t in at.title] == ["Choose a new password"]
    at.text_input(key=state.Auth.NEW_PASSWORD).input("amber-glacier-sparrow-5")
    at.text_input(key=state.Auth.NEW_PASSWORD2).input("amber-glacier-sparrow-5")
    at.button(key=state.Auth.CHANGE_SUBMIT).click()
    at = ok(at.run())
    assert [t.value for t in at.title] == ["Conflict review"]
    with ReviewStore(default_store_url(team)) as s:
        assert not s.password_change_required("vic") and s.authenticate("vic", "amber-glacier-sparrow-5").name == "vic"
        assert s.admin_log()[-1]["actor"] == "vic"


def test_team_mode_offers_no_demo_data(team, tmp_path, monkeypatch):
    empty = tmp_path / "no-demo"
    empty.mkdir()
    monkeypatch.setenv("SEGWB_DEMO_DATA", str(empty))  # demo data not generated: demo mode would offer it
    at = _sign_in(app_test(HOME).run(), "ada", ADA_PW)
    assert not at.exception, [e.value for e in at.exception]
    assert state.Home.GEN_DEMO not in {b.key for b in at.button}
    assert not any("demo data" in i.value for i in at.info)
    assert "generate the demo data" not in _texts(at)


def _admin_log_texts(at) -> str:
    parts = [_texts(at)] + [w.value for w in at.warning] + [c.value for c in at.code] + \
        [x.to_string() for x in (d.value for d in at.dataframe)]
    return "\n".join(str(p) for p in parts)


def test_admin_log_shows_odd_rows_as_short_text(team):
    import sqlite3

    from ui.timefmt import local_time

    db = Path(default_store_url(team).removeprefix("sqlite:///"))
    con = sqlite3.connect(db)
    with con:  # rows an old version or a hand edit may have left: not JSON, and a long nested detail
        con.execute("INSERT INTO admin_log (ts, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                    ("2026-12-07T20:04:05+00:00", "old", "odd", "x", "{not json"))
        con.execute("INSERT INTO admin_log (ts, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                    ("not a time", "old", "nested", "y", '{"a": {"b": [1, 2, {"c": "' + "z" * 2000 + '"}]}}'))
    con.close()
    at = ok(_sign_in(app_test(ADMIN).run(), "ada", ADA_PW))
    log = next(d.value for d in at.dataframe if "detail" in d.value.columns)
    assert log["action"].tolist()[:2] == ["nested", "odd"]                     # newest first
    assert log["detail"].iloc[1] == "{not json" and log["time"].iloc[1] == local_time("2026-12-07T20:04:05+00:00")
    assert log["detail"].iloc[0].startswith('{"a": {"b": [1, 2') and len(log["detail"].iloc[0]) <= 300
    assert log["time"].iloc[0] == "not a time"
    assert "Traceback" not in _admin_log_texts(at) and not at.code


def test_admin_log_that_cannot_be_read_is_a_short_message(team, monkeypatch):
    def broken(self):
        raise RuntimeError("boom in the log")

    monkeypatch.setattr(ReviewStore, "admin_log", broken)
    at = ok(_sign_in(app_test(ADMIN).run(), "ada", ADA_PW))
    assert any("The admin log cannot be shown (RuntimeError)" in w.value for w in at.warning)
    assert "Traceback" not in _admin_log_texts(at) and not at.code
    assert "Accounts" in [h.value for h in at.subheader]  # the rest of the page is there
