"""The session gate as an ASGI middleware, driven directly (no server): what passes without a session,
what a valid cookie opens, where a sign-in may send the browser, and the OIDC hand-off from
Streamlit's signed identity cookie to a store session. The live-server behaviour (media binding,
upload caps, idle tabs, sign-out everywhere) is in tests/browser/test_team_browser.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine.store import LOCAL_OPERATOR, ReviewStore, default_store_url
from engine.store.sessions import COOKIE_NAME, sign_token
from ui import webgate

PW = "harbor-violet-piano-42"


@pytest.fixture(autouse=True)
def _gate_off_afterwards():
    """Building a SessionGate marks the process as gated; other tests (AppTest pages) must not see that."""
    yield
    webgate.GATE.active = False
    webgate.GATE.bound.clear()


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEGWB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("SEGWB_STORE_URL", raising=False)
    s = ReviewStore(default_store_url(tmp_path))
    s.add_user("ana", "admin", PW, actor=LOCAL_OPERATOR)
    s.add_user("oscar@example.org", "reviewer", PW, actor=LOCAL_OPERATOR)
    yield s
    s.close()
    webgate._STORES.clear()


def call(path: str, *, cookie: str = "", method: str = "GET", kind: str = "http") -> tuple[list[dict], list[str]]:
    """Run one request through the gate in front of an app that answers 200 'app'; returns the messages
    sent and the paths the inner app saw."""
    seen: list[str] = []

    async def inner(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    gate = webgate.SessionGate(inner)
    p, _, q = path.partition("?")
    scope = {"type": kind, "path": p, "query_string": q.encode(), "method": method, "scheme": "http",
             "headers": [(b"cookie", cookie.encode())] if cookie else [], "client": ("10.0.0.5", 5000)}
    sent: list[dict] = []

    async def receive():
        return {"type": "websocket.connect"} if kind == "websocket" else {"type": "http.request", "body": b""}

    async def send(msg):
        sent.append(msg)

    asyncio.run(gate(scope, receive, send))
    return sent, seen


def status(sent: list[dict]) -> int:
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def header(sent: list[dict], name: bytes) -> str:
    start = next(m for m in sent if m["type"] == "http.response.start")
    return next((v.decode() for k, v in start["headers"] if k == name), "")


def test_without_a_session_only_the_public_routes_pass(store: ReviewStore) -> None:
    for public in ("/signin", "/_stcore/health", "/favicon.png"):
        assert call(public)[1] == [public]
    sent, seen = call("/Mask_editor?case=2_5")
    assert not seen and status(sent) == 303
    assert header(sent, b"location") == "/signin?next=%2FMask_editor%3Fcase%3D2_5"
    for path in ("/media/abc.png", "/_stcore/metrics", "/static/js/main.js", "/_stcore/upload_file/s/f"):
        sent, seen = call(path, method="PUT" if "upload" in path else "GET")
        assert not seen and status(sent) == 401, path
    sent, seen = call("/_stcore/stream", kind="websocket")
    assert not seen and sent == [{"type": "websocket.close", "code": 1008, "reason": "sign in first"}]
    assert call("/auth/login?provider=x")[1] == []  # OIDC routes are public only when OIDC is configured


def test_a_signed_cookie_of_a_live_session_opens_the_app(store: ReviewStore) -> None:
    token = store.open_session("ana", via="password")
    good = f"{COOKIE_NAME}={sign_token(token, store.session_key())}"
    assert call("/", cookie=good)[1] == ["/"]
    assert call("/_stcore/metrics", cookie=good)[1] == ["/_stcore/metrics"]
    assert call("/_stcore/stream", cookie=good, kind="websocket")[1] == ["/_stcore/stream"]
    sent, seen = call("/media/abc.png", cookie=good)  # signed in, but no tab of this session holds it
    assert not seen and status(sent) == 404
    for bad in (f"{COOKIE_NAME}={token}", f"{COOKIE_NAME}={sign_token(token, b'k' * 32)}", "other=1",
                f"{COOKIE_NAME}=\x00\x01;;=="):
        sent, seen = call("/", cookie=bad)
        assert not seen and status(sent) == 303, bad
    store.end_session(token)
    sent, seen = call("/", cookie=good)
    assert not seen and "m=ended" in header(sent, b"location")


@pytest.mark.parametrize("value,expected", [
    ("/Mask_editor?case=1", "/Mask_editor?case=1"), ("//evil.example/x", "/"), ("https://evil.example/", "/"),
    ("/\\evil.example", "/"), ("javascript:alert(1)", "/"), ("", "/"), (None, "/"), ("/a\r\nSet-Cookie: x=1", "/"),
    ("/" + "a" * 3000, "/")])
def test_sign_in_redirects_stay_on_this_site(value: str | None, expected: str) -> None:
    assert webgate.safe_next(value) == expected


def test_oidc_identity_becomes_a_store_session(store: ReviewStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit import config
    from streamlit.web.server.starlette.starlette_app_utils import create_signed_value

    secret = "s" * 40
    monkeypatch.setattr(webgate, "_oidc_configured", lambda: True)
    config.set_option("server.cookieSecret", secret)
    try:
        def identity(email: str) -> str:
            v = json.dumps({"email": email, "is_logged_in": True, "provider": "default"})
            return "_streamlit_user=" + create_signed_value(secret, "_streamlit_user", v).decode()

        sent, seen = call("/Dataset_browser", cookie=identity("oscar@example.org"))
        assert not seen and status(sent) == 303 and header(sent, b"location") == "/Dataset_browser"
        cookie = header(sent, b"set-cookie")
        assert cookie.startswith(f"{COOKIE_NAME}=") and "HttpOnly" in cookie
        (live,) = store.sessions("oscar@example.org")
        assert live.via == "oidc"
        sent, seen = call("/", cookie=identity("mallory@example.org"))  # no such account: refused
        assert not seen and "m=oidc" in header(sent, b"location") and store.sessions("mallory@example.org") == []
        forged = "_streamlit_user=" + json.dumps({"email": "ana", "is_logged_in": True})
        sent, seen = call("/", cookie=forged)  # not signed by Streamlit: no session for ana
        assert not seen and store.sessions("ana") == []
    finally:
        config.set_option("server.cookieSecret", None)
