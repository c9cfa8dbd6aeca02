"""The session gate of team mode: nothing patient-derived leaves the server without a signed-in session.

``make serve`` starts ``serve.py``, an ASGI :class:`streamlit.App` whose first middleware is
:class:`SessionGate` and whose extra routes are the sign-in and sign-out pages (:func:`routes`).
Every HTTP request and WebSocket connection passes the gate:

- **Public**: the sign-in/sign-out pages, ``/_stcore/health`` (load balancers), the favicon and,
  when OIDC is configured, Streamlit's ``/auth/*`` and ``/oauth2callback`` routes.
- **Everything else needs a live session**: a signed HttpOnly cookie (``segwb_session``, SameSite=Lax,
  Secure behind HTTPS) naming a session in the review store (:mod:`engine.store.sessions`). Without
  one, a page request is redirected to ``/signin?next=…``, the WebSocket is refused (HTTP 403) and
  anything else (media, uploads, metrics, static files) gets 401. So image bytes (``/media/…``,
  downloads), uploads and ``/_stcore/metrics`` need a session, and stop working the moment it ends.
- **Media** is served only to the session whose page emitted it: the Streamlit sessions (tabs) a
  page script binds to its web session (:func:`bind`, called by ``ui/auth.py``) must hold the file.
  Responses carry ``Cache-Control: private, no-store``.
- **Uploads** (``PUT /_stcore/upload_file/<streamlit session>/<id>``) must come from a tab bound to
  the caller's session, declare their length, and fit three caps, checked before the body is read:
  per file (``server.maxUploadSize``), per signed-in session (``$SEGWB_UPLOAD_SESSION_MB``, default
  500) and for the whole server (``$SEGWB_UPLOAD_TOTAL_MB``, default 2000) — counting what Streamlit
  holds in memory plus uploads in flight.

Sessions end after ``session_idle`` seconds without a page interaction (default 30 min), after
``session_lifetime`` (default 12 h), at sign-out (this browser; "sign out everywhere": all of the
user's sessions) or when an admin disables the account; the page notices within a minute
(``ui/auth.py``). Sign-in throttling and the password policy are the store's
(:mod:`engine.store.signin`).

Example (what ``serve.py`` does):
    >>> import streamlit as st                                                    # doctest: +SKIP
    >>> from starlette.middleware import Middleware                               # doctest: +SKIP
    >>> app = st.App("app.py", routes=routes(), middleware=[Middleware(SessionGate)])  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Awaitable, Callable
from urllib.parse import parse_qs, quote, urlsplit

from engine.store.sessions import COOKIE_NAME, WebSession, sign_token, verify_cookie

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute
    from starlette.types import Message, Receive, Scope, Send

    from engine.store import ReviewStore

CSRF_COOKIE = "segwb_csrf"
UPLOAD_SESSION_ENV = "SEGWB_UPLOAD_SESSION_MB"
UPLOAD_TOTAL_ENV = "SEGWB_UPLOAD_TOTAL_MB"
SECURE_COOKIE_ENV = "SEGWB_SECURE_COOKIES"
MB = 1024 * 1024
_FORM_LIMIT = 8192  # bytes of a sign-in form
_PUBLIC = {"/signin", "/signout", "/_stcore/health", "/favicon.png"}
_OIDC_PUBLIC = ("/auth/login", "/auth/logout", "/oauth2callback")
_MESSAGES = {
    "signed_out": "You are signed out.",
    "ended": "Your session ended (idle too long, past its maximum lifetime, or signed out elsewhere). "
             "Sign in again to continue.",
    "oidc": "The identity provider's account is not allowed here.",
}


# ------------------------------------------------------------------------------------ process state

@dataclass
class _GateState:
    """Process-wide state of the gate: whether it is serving, which Streamlit sessions (tabs) belong
    to which web session, and the upload bytes in flight."""

    active: bool = False
    bound: dict[str, str] = field(default_factory=dict)  # streamlit session id -> web session id_hash
    inflight: dict[str, int] = field(default_factory=dict)  # streamlit session id -> bytes being uploaded
    lock: threading.Lock = field(default_factory=threading.Lock)


GATE = _GateState()


def gate_active() -> bool:
    """True when this process serves the app behind :class:`SessionGate` (``make serve``)."""
    return GATE.active


def bind(streamlit_session: str, id_hash: str) -> None:
    """Record that the Streamlit session (a browser tab) runs for web session ``id_hash``."""
    with GATE.lock:
        GATE.bound[streamlit_session] = id_hash
        if len(GATE.bound) > 256:  # drop tabs Streamlit has closed
            rt = _runtime()
            if rt is not None:
                for sid in [s for s in GATE.bound if not rt.is_active_session(s)]:
                    GATE.bound.pop(sid, None)


def unbind_session(id_hash: str) -> None:
    """Forget every tab of web session ``id_hash`` (it ended)."""
    with GATE.lock:
        for sid in [s for s, h in GATE.bound.items() if h == id_hash]:
            GATE.bound.pop(sid, None)


def _tabs_of(id_hash: str) -> list[str]:
    with GATE.lock:
        return [s for s, h in GATE.bound.items() if h == id_hash]


def _runtime():  # noqa: ANN202 - streamlit.runtime.Runtime, imported lazily
    try:
        from streamlit.runtime import Runtime

        return Runtime.instance() if Runtime.exists() else None
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------ the store

_STORES: dict[str, ReviewStore] = {}


def gate_store() -> ReviewStore:
    """The store holding accounts and sessions (the same one ``ui/auth.py`` uses), cached per URL."""
    from engine.store import ReviewStore, default_store_url
    from engine.workspace import Workspace

    url = default_store_url(Workspace().root)
    with GATE.lock:
        if url not in _STORES:
            _STORES[url] = ReviewStore(url)
        return _STORES[url]


def token_from_cookie(value: str | None, store: ReviewStore) -> str | None:
    """The session token in a ``segwb_session`` cookie value whose signature is right, else None."""
    return verify_cookie(value, store.session_key()) if value else None


def _cookies(scope: Scope) -> dict[str, str]:
    raw = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie").decode("latin-1")
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is no cookie
        return {}
    return {k: m.value for k, m in jar.items()}


def _header(scope: Scope, name: bytes) -> str:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return ""


def _base() -> str:
    try:
        from streamlit import config

        b = str(config.get_option("server.baseUrlPath") or "").strip("/")
    except Exception:  # noqa: BLE001
        b = ""
    return f"/{b}" if b else ""


def _https(scope: Scope) -> bool:
    if os.environ.get(SECURE_COOKIE_ENV, "").strip() in ("1", "true", "yes"):
        return True
    if scope.get("scheme") in ("https", "wss"):
        return True
    from engine.store.signin import trusted_proxies

    return trusted_proxies() > 0 and _header(scope, b"x-forwarded-proto").split(",")[-1].strip().lower() == "https"


def _address(scope: Scope) -> str:
    from engine.store.signin import client_address as _client_address
    from engine.store.signin import trusted_proxies

    trusted = trusted_proxies()
    peer = (scope.get("client") or (None,))[0]
    return _client_address(peer, _header(scope, b"x-forwarded-for") or None if trusted else None, trusted)


def _cookie_header(name: str, value: str, scope: Scope, *, max_age: int | None = None, http_only: bool = True) -> str:
    parts = [f"{name}={value}", f"Path={_base() or '/'}", "SameSite=Lax"]
    if http_only:
        parts.append("HttpOnly")
    if _https(scope):
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def safe_next(value: str | None) -> str:
    """A same-site path to go to after signing in (anything else → the home page)."""
    v = (value or "").strip()
    base = _base() or ""
    if not v.startswith("/") or v.startswith("//") or "\\" in v or len(v) > 2000 or any(ord(c) < 32 for c in v):
        return base + "/"
    parts = urlsplit(v)
    if parts.scheme or parts.netloc:
        return base + "/"
    return v


# ------------------------------------------------------------------------------------ responses

_SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"x-frame-options", b"DENY"),
                     (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())] + _SECURITY_HEADERS + (extra or [])})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode("latin-1", "replace")), (b"content-length", b"0")]
                + _SECURITY_HEADERS + (extra or [])})
    await send({"type": "http.response.body", "body": b""})


def _page_like(path: str) -> bool:
    return not path.startswith(("/_stcore/", "/media/", "/static/", "/component/", "/app/static/"))


# ------------------------------------------------------------------------------------ the middleware

Handler = Callable[["Scope", "Receive", "Send"], Awaitable[None]]


class SessionGate:
    """ASGI middleware: refuses every request without a live session except the public routes (see
    the module docstring), binds media and uploads to the session that asked, caps uploads."""

    def __init__(self, app: Handler) -> None:
        self.app = app
        GATE.active = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        base = _base()
        path = scope.get("path", "/")
        rel = path[len(base):] if base and path.startswith(base) else path
        rel = rel or "/"
        if rel in _PUBLIC or (rel.startswith(_OIDC_PUBLIC) and _oidc_configured()):
            await self.app(scope, receive, send)
            return
        from starlette.concurrency import run_in_threadpool

        cookies = _cookies(scope)
        method = scope.get("method", "GET")
        touch = scope["type"] == "websocket" or (method == "GET" and _page_like(rel))
        sess = await run_in_threadpool(_lookup, cookies.get(COOKIE_NAME), touch)
        if sess is None and scope["type"] == "http" and method == "GET" and _page_like(rel) \
                and _oidc_configured() and _STREAMLIT_USER in cookies:
            await _oidc_handoff(scope, send)
            return
        if sess is None:
            await _refuse(scope, receive, send, rel, had_cookie=COOKIE_NAME in cookies)
            return
        if rel.startswith("/media/"):
            if not _media_allowed(rel[len("/media/"):], sess):
                await _plain(send, 404, "not found")
                return
            await self.app(scope, receive, _no_store(send))
            return
        if rel.startswith("/_stcore/upload_file/") and method == "PUT":
            await _upload(self.app, scope, receive, send, rel, sess)
            return
        await self.app(scope, receive, send)


def _lookup(cookie: str | None, touch: bool) -> WebSession | None:
    if not cookie:
        return None
    store = gate_store()
    token = token_from_cookie(cookie, store)
    return store.session(token, touch=touch) if token else None


async def _refuse(scope: Scope, receive: Receive, send: Send, rel: str, *, had_cookie: bool) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": "sign in first"})
        return
    if scope.get("method") in ("GET", "HEAD") and _page_like(rel):
        q = scope.get("query_string", b"").decode("latin-1")
        nxt = scope.get("path", "/") + (f"?{q}" if q else "")
        m = "&m=ended" if had_cookie else ""
        await _redirect(send, f"{_base()}/signin?next={quote(nxt, safe='')}{m}")
        return
    await _plain(send, 401, "Sign in first: this server serves patient data only to a signed-in session.")


def _no_store(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in (b"cache-control", b"etag")]
            message = {**message, "headers": headers + [(b"cache-control", b"private, no-store")]}
        await send(message)

    return wrapped


def _media_allowed(name: str, sess: WebSession) -> bool:
    """True when a tab of ``sess`` holds the media file ``name`` (``<file id>.<ext>``)."""
    file_id = name.rsplit("/", 1)[-1].split(".", 1)[0]
    rt = _runtime()
    if rt is None or not file_id:
        return False
    files = getattr(rt.media_file_mgr, "_files_by_session_and_coord", None)
    if not isinstance(files, dict):  # another Streamlit layout: a signed-in session is all we can check
        return True
    return any(file_id in set((files.get(sid) or {}).values()) for sid in _tabs_of(sess.id_hash))


# ------------------------------------------------------------------------------------ uploads

def upload_caps() -> tuple[int, int, int]:
    """``(per file, per signed-in session, whole server)`` upload caps in bytes."""
    try:
        from streamlit import config

        per_file = int(float(config.get_option("server.maxUploadSize")) * MB)
    except Exception:  # noqa: BLE001
        per_file = 200 * MB

    def env_mb(name: str, default: float) -> int:
        try:
            return int(float(os.environ.get(name, "") or default) * MB)
        except ValueError:
            return int(default * MB)

    return per_file, env_mb(UPLOAD_SESSION_ENV, 500), env_mb(UPLOAD_TOTAL_ENV, 2000)


def _held(sids: list[str] | None) -> int:
    """Bytes Streamlit holds in uploaded files (of ``sids``, or all) plus those in flight."""
    rt = _runtime()
    storage = getattr(getattr(rt, "uploaded_file_mgr", None), "file_storage", None) or {}
    total = 0
    with GATE.lock:
        for sid, files in list(storage.items()):
            if sids is None or sid in sids:
                total += sum(len(getattr(f, "data", b"")) for f in list(files.values()))
        total += sum(n for sid, n in GATE.inflight.items() if sids is None or sid in sids)
    return total


async def _upload(app: Handler, scope: Scope, receive: Receive, send: Send, rel: str, sess: WebSession) -> None:
    parts = rel.split("/")
    sid = parts[3] if len(parts) > 3 else ""
    tabs = _tabs_of(sess.id_hash)
    if sid not in tabs:
        await _plain(send, 403, "This upload does not belong to your session: reload the page and try again.")
        return
    try:
        length = int(_header(scope, b"content-length"))
    except ValueError:
        await _plain(send, 411, "Uploads must declare their length (Content-Length).")
        return
    per_file, per_session, total = upload_caps()
    if length > per_file:
        await _plain(send, 413, f"The file is larger than this server's upload cap ({per_file // MB} MB).")
        return
    if _held(tabs) + length > per_session:
        await _plain(send, 413, f"Your session already holds uploads near its cap ({per_session // MB} MB): "
                                "remove files you no longer need from the upload boxes, then try again.")
        return
    if _held(None) + length > total:
        await _plain(send, 503, "The server holds too many uploads right now: try again in a few minutes.")
        return
    with GATE.lock:
        GATE.inflight[sid] = GATE.inflight.get(sid, 0) + length
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        msg = await receive()
        if msg["type"] == "http.request":
            seen += len(msg.get("body", b""))
            if seen > length:
                raise _TooLong
        return msg

    try:
        await app(scope, counted, send)
    except _TooLong:
        await _plain(send, 413, "The upload is longer than it declared.")
    finally:
        with GATE.lock:
            left = GATE.inflight.get(sid, 0) - length
            if left > 0:
                GATE.inflight[sid] = left
            else:
                GATE.inflight.pop(sid, None)


class _TooLong(Exception):
    pass


# ------------------------------------------------------------------------------------ OIDC hand-off

_STREAMLIT_USER = "_streamlit_user"


def _oidc_configured() -> bool:
    try:
        import streamlit as st

        auth = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - no secrets file
        return False
    return bool(auth)


def _oidc_providers() -> list[str]:
    import streamlit as st

    try:
        auth = dict(st.secrets.get("auth") or {})
    except Exception:  # noqa: BLE001
        return []
    names = [k for k, v in auth.items() if hasattr(v, "keys") and "client_id" in v]
    return ([""] if "client_id" in auth else []) + names


async def _oidc_handoff(scope: Scope, send: Send) -> None:
    """A browser back from the identity provider (Streamlit's signed identity cookie, no session yet):
    map the identity to an account, open a session and set its cookie; or refuse."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request

    from engine.errors import PermissionDenied
    from engine.serving import oidc_account

    claims: dict[str, object] | None = None
    try:
        from streamlit.web.server.starlette.starlette_auth_routes import _get_cookie_value_from_request

        raw = _get_cookie_value_from_request(Request(scope), _STREAMLIT_USER)
        claims = json.loads(raw) if raw else None
    except Exception:  # noqa: BLE001 - unreadable or forged: treated as no identity
        claims = None
    if not claims or not claims.get("is_logged_in"):
        await _redirect(send, f"{_base()}/signin")
        return
    store = gate_store()
    try:
        user = await run_in_threadpool(oidc_account, store, claims)
    except PermissionDenied:  # forget the provider's identity here, say why on the sign-in page
        gone = [(b"set-cookie", _cookie_header(n, "", scope, max_age=0).encode("latin-1"))
                for n in (_STREAMLIT_USER, "_streamlit_user_tokens")]
        await _redirect(send, f"{_base()}/signin?m=oidc", gone)
        return
    token = await run_in_threadpool(store.open_session, user.name, via="oidc", address=_address(scope))
    cookie = _cookie_header(COOKIE_NAME, sign_token(token, store.session_key()), scope)
    q = scope.get("query_string", b"").decode("latin-1")
    await _redirect(send, safe_next(scope.get("path", "/") + (f"?{q}" if q else "")),
                    [(b"set-cookie", cookie.encode("latin-1"))])


# ------------------------------------------------------------------------------------ sign-in pages

_STYLE = """body{font-family:system-ui,sans-serif;background:#f2f5f7;color:#1f2933;margin:0}
main{max-width:24rem;margin:8vh auto;background:#fff;padding:2rem;border-radius:.5rem;box-shadow:0 1px 4px #0002}
h1{font-size:1.5rem;margin:0 0 .25rem}p.sub{color:#52606d;font-size:.9rem;margin:0 0 1.5rem}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}input{width:100%;box-sizing:border-box;padding:.5rem;
font-size:1rem;border:1px solid #9aa5b1;border-radius:.25rem}button,a.btn{margin-top:1.25rem;width:100%;
padding:.6rem;font-size:1rem;background:#0b6e99;color:#fff;border:0;border-radius:.25rem;cursor:pointer;
display:block;text-align:center;text-decoration:none;box-sizing:border-box}
.msg{padding:.6rem .75rem;border-radius:.25rem;margin-bottom:1rem}.err{background:#fde8e8;color:#8a1c1c}
.info{background:#e6f2f8;color:#0b4f6c}.or{text-align:center;color:#52606d;margin:1rem 0 0}"""


def _page(body: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>Sign in · Segmentation workbench</title><style>{_STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>")


def _signin_html(csrf: str, nxt: str, *, error: str = "", info: str = "", name: str = "") -> str:
    msg = (f"<div class='msg err' role=alert>{html.escape(error)}</div>" if error else
           f"<div class='msg info' role=status>{html.escape(info)}</div>" if info else "")
    oidc = ""
    providers = _oidc_providers() if _oidc_configured() else []
    if providers:
        try:
            from streamlit.auth_util import encode_provider_token

            links = "".join(
                f"<a class=btn href='{_base()}/auth/login?provider={quote(encode_provider_token(p or 'default'))}'>"
                f"{html.escape(f'Sign in with {p}' if p else 'Sign in with the identity provider')}</a>"
                for p in providers)
            oidc = links + "<p class=or>or with a local account:</p>"
        except Exception:  # noqa: BLE001 - authlib missing: local accounts only
            oidc = ""
    return _page(
        "<h1>Sign in</h1><p class=sub>Segmentation workbench · team mode: every decision and mask version is "
        f"recorded under your name.</p>{msg}{oidc}"
        f"<form method=post action='{_base()}/signin'>"
        f"<input type=hidden name=csrf value='{html.escape(csrf)}'>"
        f"<input type=hidden name=next value='{html.escape(nxt)}'>"
        f"<label for=user>User name</label><input id=user name=user autocomplete=username required "
        f"value='{html.escape(name)}' autofocus>"
        "<label for=password>Password</label><input id=password name=password type=password "
        "autocomplete=current-password required>"
        "<button type=submit>Sign in</button></form>")


def _html_response(body: str, status: int, scope: Scope, csrf: str, *, clear_session: bool = False) -> Response:
    from starlette.responses import HTMLResponse

    resp = HTMLResponse(body, status_code=status)
    for k, v in _SECURITY_HEADERS:
        resp.headers[k.decode()] = v.decode()
    resp.headers["content-security-policy"] = ("default-src 'none'; style-src 'unsafe-inline'; "
                                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    resp.headers.append("set-cookie", _cookie_header(CSRF_COOKIE, csrf, scope, max_age=3600))
    if clear_session:
        resp.headers.append("set-cookie", _cookie_header(COOKIE_NAME, "", scope, max_age=0))
    return resp


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    if not origin:
        return True  # old clients; the CSRF token still has to match
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


async def _signin(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import RedirectResponse

    from engine.errors import PermissionDenied
    from engine.store.signin import SignInThrottled

    scope = request.scope
    store = gate_store()
    csrf = request.cookies.get(CSRF_COOKIE) or ""
    if len(csrf) != 43:
        csrf = secrets.token_urlsafe(32)
    current = await run_in_threadpool(_lookup, request.cookies.get(COOKIE_NAME), False)
    if request.method == "GET":
        nxt = safe_next(request.query_params.get("next"))
        if current is not None:
            return RedirectResponse(nxt, status_code=303)
        info = _MESSAGES.get(request.query_params.get("m", ""), "")
        return _html_response(_signin_html(csrf, nxt, info=info), 200, scope, csrf,
                              clear_session=COOKIE_NAME in request.cookies)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _FORM_LIMIT:
            return _html_response(_signin_html(csrf, safe_next(None), error="The form is too large."), 413,
                                  scope, csrf)
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=8).items()}
    nxt = safe_next(form.get("next"))
    name = (form.get("user") or "").strip()[:256]
    sent = form.get("csrf") or ""
    if not _same_origin(request) or not sent or not secrets.compare_digest(sent, request.cookies.get(CSRF_COOKIE, "")):
        return _html_response(_signin_html(csrf, nxt, name=name, error="The sign-in form expired: sign in again."),
                              403, scope, csrf)
    try:
        user = await run_in_threadpool(store.authenticate, name, form.get("password") or "",
                                       address=_address(scope))
    except SignInThrottled as exc:
        hint = exc.hint or ""
        return _html_response(_signin_html(csrf, nxt, name=name, error=f"Not signed in: {exc.message}. "
                                           f"{hint[:1].upper()}{hint[1:]}."), 429, scope, csrf)
    except PermissionDenied as exc:
        return _html_response(_signin_html(csrf, nxt, name=name, error=f"Not signed in: {exc.message}."),
                              401, scope, csrf)
    if current is not None:  # signing in again in a browser that had a session: end the old one
        old = token_from_cookie(request.cookies.get(COOKIE_NAME), store)
        if old:
            await run_in_threadpool(store.end_session, old, reason="signed in again")
    token = await run_in_threadpool(store.open_session, user.name, via="password", address=_address(scope))
    resp = RedirectResponse(nxt, status_code=303)
    resp.headers["cache-control"] = "no-store"
    resp.headers.append("set-cookie", _cookie_header(COOKIE_NAME, sign_token(token, store.session_key()), scope))
    return resp


async def _signout(request: Request) -> Response:
    """POST: end this browser's session (``everywhere=1``: all of the user's sessions) and clear the cookie."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import RedirectResponse

    store = gate_store()
    token = token_from_cookie(request.cookies.get(COOKIE_NAME), store)
    if request.method == "POST" and token and _same_origin(request):
        sess = await run_in_threadpool(store.session, token, touch=False)
        if sess is not None:
            everywhere = request.query_params.get("everywhere") == "1"
            if everywhere:
                await run_in_threadpool(store.end_user_sessions, sess.user_name, actor=sess.user_name)
            else:
                await run_in_threadpool(store.end_session, token)
            unbind_session(sess.id_hash)
    resp = RedirectResponse(f"{_base()}/signin?m=signed_out", status_code=303)
    resp.headers["cache-control"] = "no-store"
    resp.headers.append("set-cookie", _cookie_header(COOKIE_NAME, "", request.scope, max_age=0))
    return resp


def routes() -> list[BaseRoute]:
    """The sign-in (GET form, POST credentials) and sign-out (POST) routes."""
    from starlette.routing import Route

    b = _base()
    return [Route(f"{b}/signin", _signin, methods=["GET", "POST"]),
            Route(f"{b}/signout", _signout, methods=["GET", "POST"])]

