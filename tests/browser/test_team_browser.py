"""Team mode in real browsers and raw HTTP against a live ``make serve``: the session gate (sign-in page,
session cookie kept across reloads and tabs, media/uploads/metrics/WebSocket refused without a session,
media bound to the session that asked, upload caps, idle timeout, sign out here and everywhere with claims
released), two reviewers on one pair (a refused stale decision, then an override), undo on the pair shown,
a merge on a mask save conflict, and a reload restoring the view from the URL — on SQLite and on
PostgreSQL (a throwaway server from tests/support/pgserver.py; skipped with the reason when the binaries
are absent).

Each backend gets its own team-mode server started with ``make serve`` (its own workspace, accounts made
with the engine as ``python -m engine users add`` would, data roots = the demo folder, small upload caps)
and separate Chromium browser contexts (separate cookies and sessions = different people). What the
pages did is read back from the store.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import numpy as np
import pytest

from tests.browser.support import (
    _INIT_SCRIPT,
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    LOAD_TIMEOUT,
    VIEWPORT,
    alerts,
    expect_rerun,
    headings,
    screenshot,
    select_option,
    selected,
    start_server,
    wait_idle,
    widget,
)

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
USERS = {"ada": ("admin", "harbor-violet-piano-42"), "rita": ("reviewer", "quiet-lantern-meadow-7"),
         "rob": ("reviewer", "copper-fjord-tulip-19"), "vic": ("viewer", "amber-glacier-sparrow-5")}  # policy-compliant
CANVAS_W = 600


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def team(request, browser_env, tmp_path_factory):
    """A team-mode server on a fresh workspace whose store is SQLite or PostgreSQL."""
    from engine.datasets import open_dataset
    from engine.dedup import ConflictConfig, find_conflicts
    from engine.store import LOCAL_OPERATOR, ReviewStore, default_store_url
    from engine.workspace import Workspace

    backend = request.param
    root = tmp_path_factory.mktemp(f"team-{backend}")
    ws = root / "workspace"
    ws.mkdir()
    extra = {"SEGWB_MODE": "team", "SEGWB_UPLOAD_SESSION_MB": "2", "SEGWB_UPLOAD_TOTAL_MB": "3"}
    pg = None
    if backend == "postgresql":
        from tests.support.pgserver import PostgresServer, Unavailable

        try:
            pg = PostgresServer.start()
        except Unavailable as exc:
            pytest.skip(f"PostgreSQL: {exc}")
        url = pg.new_database()
        extra["SEGWB_STORE_URL"] = url
    else:
        url = default_store_url(ws)
    old = {k: os.environ.get(k) for k in ("SEGWB_WORKSPACE", "SEGWB_STORE_URL")}
    os.environ["SEGWB_WORKSPACE"] = str(ws)
    if pg is not None:
        os.environ["SEGWB_STORE_URL"] = url
    try:
        with ReviewStore(url, masks_dir=ws / "masks") as s:
            for name, (role, pw) in USERS.items():
                s.add_user(name, role, pw, actor=LOCAL_OPERATOR)
            s.set_data_roots([browser_env.demo], actor=LOCAL_OPERATOR)
        ds = open_dataset(browser_env.nerve, workspace=Workspace(ws))
        report = find_conflicts(ds, ConflictConfig())  # the search, as `python -m engine conflicts` would
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    server = start_server(ws, browser_env.demo, root / "streamlit.log", extra_env=extra, make_serve=True)
    from engine.curation import build_queue

    queue = build_queue(report.pairs, {})
    try:
        yield SimpleNamespace(backend=backend, url=server.url, store_url=url, ws=ws, ds=ds, nerve=browser_env.nerve,
                              queue=queue, server=server)
    finally:
        server.stop()
        if pg is not None:
            pg.stop()


@pytest.fixture(scope="module")
def chromium(team, playwright_session):
    browser = playwright_session.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture()
def person(chromium, team, request):
    """``person()`` → a new page in its own browser context (own cookies/session: another person);
    on failure each page's screenshot and the server log go to tests/artifacts/."""
    made = []

    def make():
        ctx = chromium.new_context(base_url=team.url, viewport=VIEWPORT, accept_downloads=False)
        ctx.add_init_script(_INIT_SCRIPT)
        ctx.set_default_timeout(60_000)
        ctx.set_default_navigation_timeout(LOAD_TIMEOUT * 1000)
        made.append(ctx)
        return ctx.new_page()

    yield make
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        for i, ctx in enumerate(made):
            for pg in ctx.pages:
                with contextlib.suppress(Exception):
                    screenshot(pg, f"{name}_{i}", ARTIFACTS)
        with contextlib.suppress(Exception):
            (ARTIFACTS / f"{name}.server.log").write_text(team.server.log_tail(20000))
    for ctx in made:
        ctx.close()


def store(team):
    from engine.store import ReviewStore

    return ReviewStore.for_dataset(team.ds, team.store_url, masks_dir=team.ws / "masks")


# ------------------------------------------------------------------------------------ helpers

def open_url(page, path: str, **params: str) -> None:
    """Open a link; lands on the app, or on the gate's sign-in page when this browser has no session."""
    q = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
    page.goto(path + (f"?{q}" if q else ""), wait_until="domcontentloaded", timeout=LOAD_TIMEOUT * 1000)
    page.wait_for_selector('[data-testid="stApp"], form[action$="/signin"]', timeout=LOAD_TIMEOUT * 1000)
    if not on_signin_page(page):
        wait_idle(page)


def on_signin_page(page) -> bool:
    return "/signin" in page.url and page.locator('form[action$="/signin"]').count() == 1


def sign_in(page, name: str, password: str | None = None) -> None:
    """Sign in on the gate's page (a browser that is already signed in is left as it is)."""
    if not on_signin_page(page):
        return
    page.fill("#user", name)
    page.fill("#password", password or USERS[name][1])
    page.click("form[action$='/signin'] button[type=submit]")
    page.wait_for_selector('[data-testid="stApp"], .msg.err',
                           timeout=LOAD_TIMEOUT * 1000)
    if not on_signin_page(page):
        wait_idle(page)


def until(page, cond, what: str, timeout: float = 120.0):
    t0 = time.perf_counter()
    while True:
        try:
            got = cond()
        except Exception:  # noqa: BLE001 - elements replaced mid-rerun
            got = None
        if got:
            wait_idle(page)
            return got
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.3)


def pair_heading(page) -> tuple[str, str] | None:
    for h in headings(page):
        m = re.match(r"^(\S+) ↔ (\S+) · (\w+)", h)
        if m:
            return m.group(1), m.group(2)
    return None


def click(page, label: str, exact_end: bool = False) -> None:
    """Click the one visible button whose text starts with ``label`` (a shortcut hint may follow)."""
    rx = re.compile(rf"{re.escape(label)}" + (r"\s*$" if exact_end else ""))
    btn = page.locator('[data-testid="stButton"] button:visible').filter(has_text=rx)
    assert btn.count() >= 1, f"no button {label!r}"
    with expect_rerun(page):
        btn.first.click()


def open_pair(page, team, a: str, b: str, who: str) -> None:
    open_url(page, "/Conflict_review", dataset=str(team.nerve), pair=f"{a}~{b}")
    sign_in(page, who)
    until(page, lambda: pair_heading(page) == (a, b), f"pair {a} ↔ {b} on screen for {who}")


def decision(team, a, b):
    with store(team) as s:
        d = s.decision_for(a, b)
        return None if d is None else (d.relative_to(a, b), d.reviewer)


# ------------------------------------------------------------------------------------ tests

def test_sign_in_gate(person, team):
    page = person()
    open_url(page, "/Conflict_review", dataset=str(team.nerve))
    assert on_signin_page(page)  # the gate's page, not the app: no Streamlit, no image, no page list
    assert page.locator('[data-testid="stApp"]').count() == 0 and page.locator("img").count() == 0
    assert page.locator("h1").inner_text() == "Sign in"
    sign_in(page, "rita", "not-her-password")
    assert "wrong user name or password" in page.locator(".err").inner_text()
    assert on_signin_page(page)
    sign_in(page, "rita")
    until(page, lambda: pair_heading(page), "the review page after sign-in")
    assert "rita" in page.locator('[data-testid="stSidebar"]').inner_text()
    assert "dataset=" in page.url and "/signin" not in page.url  # the link's context survived the sign-in
    # no free-text reviewer field in team mode: the signed-in user is the author
    assert widget(page, "stTextInput", "Reviewer").count() == 0
    cookie = next(c for c in page.context.cookies() if c["name"] == "segwb_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie").find("segwb_session") == -1  # scripts cannot read it


def test_stale_decision_refused_then_override(person, team):
    a, b = team.queue[0].a, team.queue[0].b
    rita, rob = person(), person()
    open_pair(rita, team, a, b, "rita")
    open_pair(rob, team, a, b, "rob")   # both see the pair undecided
    click(rita, "Keep A, drop B")
    until(rita, lambda: decision(team, a, b) == ("keep_a", "rita"), "rita's decision stored")
    click(rob, "Keep B, drop A")          # rob still sees it undecided: refused, not applied
    msg = until(rob, lambda: [t for t in alerts(rob, "error") if "Not recorded" in t], "the refusal shown")[0]
    assert "rita" in msg and "Keep A, drop B" in msg, msg
    assert decision(team, a, b) == ("keep_a", "rita")  # nothing overwritten
    click(rob, "Override with my decision")
    until(rob, lambda: decision(team, a, b) == ("keep_b", "rob"), "rob's override stored")
    with store(team) as s:
        evs = s.events(kinds=["decision"])
    mine = [e for e in evs if set(e.target.split("\t")) == {a, b}]
    assert [e.author for e in mine] == ["rita", "rob"]  # the refused attempt wrote nothing
    with store(team) as s:  # clean up for the next tests
        s.undo_decision(a, b, "ada")


def test_undo_acts_on_the_pair_shown_and_reload_restores_it(person, team):
    p1, p2 = team.queue[1], team.queue[2]
    page = person()
    open_pair(page, team, p1.a, p1.b, "rita")
    click(page, "Keep both")
    until(page, lambda: decision(team, p1.a, p1.b) == ("keep_both", "rita"), "pair 1 decided")
    open_pair(page, team, p2.a, p2.b, "rita")  # a pasted link: reload + sign in restores the pair
    click(page, "Drop both")
    until(page, lambda: decision(team, p2.a, p2.b) == ("drop_both", "rita"), "pair 2 decided")
    # a reload of the link shows pair 2 again (the page auto-advanced after deciding: the URL follows)
    open_pair(page, team, p2.a, p2.b, "rita")
    assert f"pair={p2.a}~{p2.b}" in page.url.replace("%7E", "~")
    click(page, "Undo")
    until(page, lambda: decision(team, p2.a, p2.b) is None, "pair 2's decision undone")
    assert decision(team, p1.a, p1.b) == ("keep_both", "rita")  # pair 1 untouched
    # back/forward: deciding moved on (the URL followed with a new history entry); Back shows the pair again
    click(page, "Keep both")
    until(page, lambda: decision(team, p2.a, p2.b) == ("keep_both", "rita") and pair_heading(page) != (p2.a, p2.b),
          "decided and moved on")
    moved_to = pair_heading(page)
    page.go_back()
    until(page, lambda: pair_heading(page) == (p2.a, p2.b), "Back restores the pair")
    page.go_forward()
    until(page, lambda: pair_heading(page) == moved_to, "Forward restores the next pair")
    with store(team) as s:
        s.undo_decision(p1.a, p1.b, "ada")
        s.undo_decision(p2.a, p2.b, "ada")


def test_reload_restores_dataset_page_and_case(person, team):
    case = team.ds.case_ids[3]
    page = person()
    open_url(page, "/Mask_editor", dataset=str(team.nerve), case=case)
    sign_in(page, "rob")
    label = f"Case ({len(team.ds)})"
    until(page, lambda: selected(page, label) == case, "the case from the link")
    other = team.ds.case_ids[5]
    select_option(page, label, other)  # the URL follows the choice...
    until(page, lambda: f"case={other}" in page.url, "the URL updated")
    page.reload(wait_until="domcontentloaded")  # ...so a reload restores it, still signed in
    page.wait_for_selector('[data-testid="stApp"]', timeout=LOAD_TIMEOUT * 1000)
    wait_idle(page)
    assert not on_signin_page(page)
    until(page, lambda: selected(page, label) == other, "the case restored after a reload")
    assert "case=" in page.url and "dataset=" in page.url
    tab = page.context.new_page()  # a new tab (ctrl-click on a link) is signed in too
    open_url(tab, "/Mask_editor", dataset=str(team.nerve), case=case)
    assert not on_signin_page(tab)
    until(tab, lambda: selected(tab, label) == case, "the link opened signed in in a new tab")
    assert "rob" in tab.locator('[data-testid="stSidebar"]').inner_text()


def test_dataset_outside_data_roots_refused(person, team, tmp_path):
    page = person()
    open_url(page, "/Mask_editor", dataset=str(tmp_path))
    sign_in(page, "rob")
    errs = until(page, lambda: [t for t in alerts(page, "error") if "outside the data roots" in t], "refusal")
    assert errs


def _canvas_box(page):
    c = page.locator("canvas.upper-canvas").first
    c.wait_for(state="visible", timeout=120_000)
    return c.bounding_box()


def _stroke(page, y_frac: float) -> None:
    bb = _canvas_box(page)
    y = bb["height"] * y_frac
    with expect_rerun(page):
        page.mouse.move(bb["x"] + 0.2 * bb["width"], bb["y"] + y)
        page.mouse.down()
        page.mouse.move(bb["x"] + 0.8 * bb["width"], bb["y"] + y, steps=8)
        page.mouse.up()
    wait_idle(page)


def test_merge_on_a_save_conflict(person, team):
    case = next(c.case_id for c in team.ds.cases if c.has_mask)
    rita, rob = person(), person()
    for p, who in ((rita, "rita"), (rob, "rob")):
        open_url(p, "/Mask_editor", dataset=str(team.nerve), case=case)
        sign_in(p, who)
        _canvas_box(p)
    # rob sees that rita holds the case (claims)
    until(rob, lambda: [t for t in alerts(rob, "warning") if "rita is editing this case now" in t]
          or [t for t in alerts(rita, "warning") if "rob is editing this case now" in t], "the claim shown")
    _stroke(rita, 0.15)
    until(rita, lambda: rita.get_by_role("button", name=re.compile("Save as version 1")).is_enabled(), "rita's edit")
    with expect_rerun(rita):
        rita.get_by_role("button", name=re.compile("Save as version 1")).click()
    with store(team) as s:
        until(rita, lambda: s.latest_mask_version(case) == 1, "rita's version 1")
        v1 = s.load_mask_version(case, 1)
    _stroke(rob, 0.85)
    until(rob, lambda: rob.get_by_role("button", name=re.compile("Save as version 1")).is_enabled(), "rob's edit")
    with expect_rerun(rob):
        rob.get_by_role("button", name=re.compile("Save as version 1")).click()
    until(rob, lambda: [t for t in alerts(rob, "warning") if "saved by rita" in t], "the conflict shown")
    labels = [t.strip() for t in rob.locator('[data-testid="stButton"] button:visible').all_inner_texts()]
    assert any("Save mine as version 2, replacing rita's mask" in t for t in labels), labels
    assert any("Keep theirs (version 1) and discard my edits" in t for t in labels), labels
    click(rob, "Save the union of both as version 2")
    with store(team) as s:
        until(rob, lambda: s.latest_mask_version(case) == 2, "the union saved")
        mv = s.mask_version(case, 2)
        v2 = s.load_mask_version(case, 2)
        v0 = team.ds.load_mask(team.ds.case(case))
    assert mv.author == "rob" and "union with version 1 by rita" in mv.note
    assert np.all(v2[v1 > 0] > 0)  # everything rita labelled is still there
    assert np.count_nonzero(v2) > np.count_nonzero(v1) and np.count_nonzero(v1) > np.count_nonzero(v0)


# ------------------------------------------------------------------------------------ the session gate (raw HTTP)

MB = 1024 * 1024


def http(team, method: str, path: str, *, cookies: dict[str, str] | None = None,
         headers: dict[str, str] | None = None, body: bytes | None = None,
         declare: int | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw request to the live server. ``declare``: send only the headers with this Content-Length
    (no body), as a client that wants the server to accept a big upload would."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(team.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    h = dict(headers or {})
    if cookies:
        h["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    try:
        if declare is not None:
            conn.putrequest(method, path)
            for k, v in {**h, "Content-Length": str(declare)}.items():
                conn.putheader(k, v)
            conn.endheaders()
        else:
            conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def cookies_of(page) -> dict[str, str]:
    return {c["name"]: c["value"] for c in page.context.cookies()}


def media_src(page) -> str:
    img = page.locator('[data-testid="stImage"] img[src*="/media/"]').first
    img.wait_for(timeout=120_000)
    return urlsplit_path(img.get_attribute("src"))


def urlsplit_path(src: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(src).path


def test_nothing_without_a_session(team):
    status, h, _ = http(team, "GET", "/Mask_editor?case=1")
    assert status == 303 and h["location"] == "/signin?next=%2FMask_editor%3Fcase%3D1"
    for path in ("/_stcore/metrics", "/media/0f1e2d3c4b5a69788796a5b4c3d2e1f0.png", "/_stcore/host-config"):
        status, _, body = http(team, "GET", path)
        assert status == 401 and b"Sign in first" in body, (path, status)
    # a 150 MB upload is refused from its headers: the body is never read, nothing is held
    status, _, _ = http(team, "PUT", "/_stcore/upload_file/abc/def", declare=150 * MB,
                        headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 401
    # the app's WebSocket is refused before it opens
    status, _, _ = http(team, "GET", "/_stcore/stream", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert status == 403
    # a forged or unknown cookie is no session either (and the sign-in page says the session ended)
    status, h, _ = http(team, "GET", "/", cookies={"segwb_session": "forged.c2lnbmF0dXJl"})
    assert status == 303 and "m=ended" in h["location"]
    assert http(team, "GET", "/_stcore/health")[0] == 200  # public, for load balancers
    # the sign-in form refuses a post without its CSRF token (another site posting credentials)
    status, _, _ = http(team, "POST", "/signin", body=b"user=rita&password=x",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403


def test_media_only_for_the_session_that_asked_and_sign_out_ends_it(person, team):
    case = team.ds.case_ids[2]
    rita, rob = person(), person()
    open_url(rita, "/Mask_editor", dataset=str(team.nerve), case=case)
    sign_in(rita, "rita")
    src = media_src(rita)
    status, h, body = http(team, "GET", src, cookies=cookies_of(rita))
    assert status == 200 and (body[:4] == b"\x89PNG" or body[:2] == b"\xff\xd8"), (status, body[:8])
    assert "no-store" in h.get("cache-control", "")
    assert http(team, "GET", src)[0] == 401  # no cookie
    open_url(rob, "/")
    sign_in(rob, "rob")
    assert http(team, "GET", src, cookies=cookies_of(rob))[0] == 404  # signed in, but not his page's image
    with store(team) as s:
        until(rita, lambda: (s.claim_for(case) or SimpleNamespace(user="")).user == "rita", "rita's claim")
    saved = cookies_of(rita)
    with expect_rerun(rita):
        rita.get_by_role("button", name="Sign out", exact=True).click()
    until(rita, lambda: "Signed out" in headings(rita), "the signed-out page")
    assert http(team, "GET", src, cookies=saved)[0] == 401  # the old cookie is dead on the server
    with store(team) as s:
        assert s.claim_for(case) is None  # rita's last session ended: her claim is released
    rita.reload(wait_until="domcontentloaded")
    rita.wait_for_selector('form[action$="/signin"]', timeout=LOAD_TIMEOUT * 1000)


def _upload_target(page, tmp_path, name: str) -> str:
    """Upload a small PNG through the Predict page; returns the upload URL path (it names this tab's
    Streamlit session)."""
    from PIL import Image

    from tests.browser.support import upload

    f = tmp_path / f"{name}.png"
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(f)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url) if r.method == "PUT" and "/upload_file/" in r.url else None)
    upload(page, f, label="Images (TIFF, DICOM, PNG, JPEG) — one or many")
    until(page, lambda: urls, "the browser's upload")
    return urlsplit_path(urls[0])


def _put(team, page, url_path: str, size: int, file_id: str) -> int:
    sid = url_path.split("/")[3]
    boundary = "segwbtestboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"UploadedFile\"; filename=\"x.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
    c = cookies_of(page)
    return http(team, "PUT", f"/_stcore/upload_file/{sid}/{file_id}", cookies=c, body=body,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                         "X-Xsrftoken": c.get("_streamlit_xsrf", "")})[0]


def test_uploads_bound_to_the_session_and_capped(person, team, tmp_path):
    rita, rob = person(), person()
    for p, who in ((rita, "rita"), (rob, "rob")):
        open_url(p, "/Predict")
        sign_in(p, who)
    r_url, b_url = _upload_target(rita, tmp_path, "r"), _upload_target(rob, tmp_path, "b")
    assert _put(team, rob, r_url, 1000, "f0") == 403  # signed in, but not his tab
    assert _put(team, rita, r_url, int(1.5 * MB), "f1") in (200, 204)  # within her 2 MB
    status, _, _ = http(team, "PUT", r_url.rsplit("/", 1)[0] + "/f2", cookies=cookies_of(rita), declare=int(1.5 * MB))
    assert status == 413  # her session would hold 3 MB: refused from the headers
    assert _put(team, rob, b_url, int(1.2 * MB), "f3") in (200, 204)  # the server holds 2.7 MB
    status, _, _ = http(team, "PUT", b_url.rsplit("/", 1)[0] + "/f4", cookies=cookies_of(rob), declare=int(0.5 * MB))
    assert status == 503  # rob is within his cap, but the server's 3 MB total would be exceeded


def test_idle_timeout_and_sign_out_everywhere(person, team):
    from engine.store import tables as T

    laptop, phone = person(), person()
    for p in (laptop, phone):
        open_url(p, "/")
        sign_in(p, "vic")
    with store(team) as s:  # 31 minutes without a page interaction (the default idle limit is 30)
        with s.engine.begin() as c:
            c.execute(T.web_sessions.update().where(T.web_sessions.c.user_name == "vic",
                                                    T.web_sessions.c.ended.is_(None))
                      .values(last_seen=T.web_sessions.c.last_seen - 31 * 60))
    if team.backend == "sqlite":  # the open tab notices by itself within a minute (once: it waits)
        until(phone, lambda: "Signed out" in headings(phone), "the idle tab signed out", timeout=90)
    laptop.reload(wait_until="domcontentloaded")
    laptop.wait_for_selector('form[action$="/signin"]', timeout=LOAD_TIMEOUT * 1000)
    assert "session ended" in laptop.locator(".info").inner_text()
    # sign out everywhere: two fresh sessions, one button
    for p in (laptop, phone):
        open_url(p, "/")
        sign_in(p, "vic")
    with expect_rerun(laptop):
        laptop.get_by_role("button", name="Sign out everywhere").click()
    until(laptop, lambda: "Signed out" in headings(laptop), "signed out here")
    phone.reload(wait_until="domcontentloaded")
    phone.wait_for_selector('form[action$="/signin"]', timeout=LOAD_TIMEOUT * 1000)
    with store(team) as s:
        assert s.sessions("vic") == []
        ended = s.sessions("vic", include_ended=True)
        assert {e.end_reason for e in ended} >= {"signed out everywhere"}
