"""Sign-in, the signed-in user and the team-mode folder rules, for every page.

:func:`gate` runs from :func:`ui.widgets.page_setup`, so EVERY page is guarded:

- **Demo mode** (``make run``, :func:`engine.serving.serve_mode` ``demo``) with a store that has no
  accounts: nobody signs in; the app refuses to run when it listens beyond 127.0.0.1. The pages keep
  their local "your name" field (the single user's identity in the audit log).
- **Team mode** (``make serve``): the app runs behind the session gate (:mod:`ui.webgate`): the
  browser signs in on the gate's sign-in page and carries a signed HttpOnly session cookie, which
  this module reads (:func:`st.context.cookies`) and checks against the store on every run (an
  ended session shows a "signed out" page; a watcher notices within a minute). Sign out ends the
  session on the server (or all of the user's sessions), releasing claims when none is left.
- **Team mode without the gate** (``streamlit run app.py`` with ``SEGWB_MODE=team``, tests) — or any
  store that has accounts: refused unless it listens on 127.0.0.1; a browser that is not signed in
  sees only the sign-in form below and the sign-in lasts as long as the tab.

Either way local accounts are checked by the store (argon2,
  :meth:`ReviewStore.authenticate`), failed attempts throttled per account name AND per client
  address in the store, with growing delays and then a lock-out an admin lifts
  (:mod:`engine.store.signin`; the address: :func:`client_address`). An account an admin marked
  "must change password" sees only a new-password form until it sets one that meets the
  password policy. When ``.streamlit/secrets.toml`` has an ``[auth]``
  section, Streamlit's native OIDC sign-in (``st.login``) is offered too; the identity's email (or
  ``sub``) must be an account name (:func:`engine.serving.oidc_account`). Team mode refuses to run
  while the store has no active admin.

The signed-in user is the author of every write (:func:`author`); :func:`can` hides controls a role
cannot use, while the engine checks every write anyway (PermissionDenied).

Example:
    >>> from ui import auth
    >>> auth.can("reviewer")          # in a page, after page_setup            # doctest: +SKIP
    >>> auth.author()                 # "ana"                                   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from ui import state

if TYPE_CHECKING:
    from engine.errors import ClaimHeld
    from engine.store import Claim, ReviewStore

ROLE_RANK = {"viewer": 0, "annotator": 1, "reviewer": 2, "admin": 3}
_HIDE_NAV = "<style>[data-testid='stSidebarNav']{display:none}</style>"


@dataclass(frozen=True)
class Identity:
    """Who is using this browser session: ``name`` (None in demo mode until typed), ``role``,
    ``signed_in`` (an account), ``via`` (``password`` | ``oidc`` | ``demo``)."""

    name: str | None
    role: str
    signed_in: bool
    via: str


# ------------------------------------------------------------------------------------ store

@st.cache_resource(show_spinner=False)
def _store(url: str) -> ReviewStore:
    from engine.store import ReviewStore

    return ReviewStore(url)


def users_store() -> ReviewStore:
    """The store holding accounts and settings: ``$SEGWB_STORE_URL`` or the workspace store (cached)."""
    from engine.store import default_store_url

    return _store(default_store_url(state.workspace().root))


def client_address() -> str:
    """This browser's network address for sign-in throttling: Streamlit's ``st.context.ip_address``;
    behind reverse proxies, ``X-Forwarded-For`` is believed only when ``$SEGWB_TRUSTED_PROXIES`` says
    how many proxies (that set it) stand in front of the app. Connections from this machine are
    ``local``."""
    from engine.store.signin import client_address as _client_address
    from engine.store.signin import trusted_proxies

    trusted = trusted_proxies()
    try:
        peer = st.context.ip_address
        forwarded = st.context.headers.get("X-Forwarded-For") if trusted else None
    except Exception:  # noqa: BLE001 - no request context (AppTest)
        peer, forwarded = None, None
    return _client_address(peer, forwarded, trusted)


def team_mode() -> bool:
    from engine.serving import is_team_mode

    return is_team_mode()


def sign_in_required() -> bool:
    """True in team mode and whenever the store has accounts."""
    return team_mode() or users_store().has_users()


# ------------------------------------------------------------------------------------ OIDC

def oidc_providers() -> list[str] | None:
    """Providers configured for ``st.login`` in secrets.toml (``[""]``: the default ``[auth]``), or None."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - no secrets file
        return None
    if not auth:
        return None
    names = [k for k, v in dict(auth).items() if hasattr(v, "keys") and "client_id" in v]
    if "client_id" in auth:
        names.insert(0, "")
    return names or None


def _oidc_user() -> dict[str, Any] | None:
    try:
        if st.user.is_logged_in:
            return st.user.to_dict()
    except Exception:  # noqa: BLE001 - st.user unavailable (no auth configured)
        return None
    return None


# ------------------------------------------------------------------------------------ the gate

def _refuse(msg: str, hint: str = "") -> None:
    st.error(msg + (f"\n\n{hint}" if hint else ""), icon=":material/block:")
    st.stop()


def _served_beyond_loopback() -> bool:
    from engine.serving import is_loopback

    addr = st.get_option("server.address")
    try:
        served = bool(st.context.headers)  # AppTest has no HTTP request (and no listening socket)
    except Exception:  # noqa: BLE001
        served = False
    return (addr is not None and not is_loopback(addr)) or (addr is None and served)


def gated() -> bool:
    """True when this server runs behind the session gate (``make serve``: ``serve.py``)."""
    from ui.webgate import gate_active

    return gate_active()


def _check_bind_address() -> None:
    """Demo mode serves this machine only: refuse a non-loopback listening address."""
    if _served_beyond_loopback():
        addr = st.get_option("server.address")
        _refuse(f"The single-user demo serves this machine only, but this server listens on "
                f"`{addr or 'all interfaces'}` without sign-in, so it will not run.",
                "Start it with `make run` (127.0.0.1), or serve a team with `make serve` (sign-in required).")


def gate() -> Identity:
    """Guard the page: return the identity, or show only the sign-in form and stop the script.
    Runs once per script run (from ``page_setup``); :func:`identity` reads its result."""
    ident = _gate()
    st.session_state[state.Auth.IDENTITY] = ident
    return ident


def _gate() -> Identity:
    from engine.errors import PermissionDenied
    from engine.serving import ADD_ADMIN_HINT

    store = users_store()
    if not team_mode():
        _check_bind_address()
    if not sign_in_required():
        return Identity(str(state.get(state.Shared.REVIEWER, "") or "").strip() or None, "admin", False, "demo")
    if team_mode() and not store.has_admin():
        _refuse("Team mode needs an administrator account and the review store has none, so the app will not "
                "serve anything.", f"On the server: `python -m engine users add NAME --role admin` ({ADD_ADMIN_HINT}).")
    if gated():
        return _gated_identity(store)
    if team_mode() and _served_beyond_loopback():
        _refuse("Team mode serves other machines only behind the session gate (sign-in page, session cookies, "
                "images and uploads for signed-in sessions only), and this server was started without it.",
                "Start it with `make serve` (which runs `streamlit run serve.py`), not `streamlit run app.py`.")
    name = state.get(state.Auth.USER)
    if name:
        user = store.user(name)
        if user is not None and user.active:
            via = state.get(state.Auth.VIA, "password")
            if via == "password" and store.password_change_required(user.name):
                change_password_form(store, user.name)
                st.stop()
            return Identity(user.name, user.role, True, via)
        _forget()
        st.warning("Your account was disabled or removed: you are signed out.", icon=":material/logout:")
    claims = _oidc_user() if oidc_providers() else None
    if claims:
        from engine.serving import oidc_account

        try:
            user = oidc_account(store, claims)
        except PermissionDenied as exc:
            st.markdown(_HIDE_NAV, unsafe_allow_html=True)
            st.error(f"Signed in with the identity provider, but: {exc}", icon=":material/block:")
            if st.button("Sign out", key=state.Auth.SIGN_OUT):
                st.logout()
            st.stop()
        state.put(state.Auth.USER, user.name)
        state.put(state.Auth.VIA, "oidc")
        return Identity(user.name, user.role, True, "oidc")
    sign_in_form(store)
    st.stop()
    raise AssertionError("unreachable")  # st.stop raises


def session_token(store: ReviewStore) -> str | None:
    """This browser's session token (from the gate's signed cookie), or None."""
    from engine.store.sessions import COOKIE_NAME
    from ui.webgate import token_from_cookie

    try:
        value = st.context.cookies.get(COOKIE_NAME)
    except Exception:  # noqa: BLE001 - no request context
        value = None
    return token_from_cookie(value, store)


def _streamlit_session_id() -> str | None:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def _gated_identity(store: ReviewStore) -> Identity:
    """The identity of a page behind the gate: the live session its cookie names (this run counts as
    activity), or the signed-out page."""
    from ui.webgate import bind

    token = session_token(store)
    sess = store.session(token, touch=True) if token else None
    if sess is None:
        release_claim()
        _forget()
        signed_out_page()
        st.stop()
        raise AssertionError("unreachable")
    sid = _streamlit_session_id()
    if sid:
        bind(sid, sess.id_hash)
    user = store.user(sess.user_name)
    if user is None:  # removed between the two reads; the next run ends the session
        signed_out_page()
        st.stop()
        raise AssertionError("unreachable")
    state.put(state.Auth.USER, user.name)
    state.put(state.Auth.VIA, sess.via)
    if sess.via == "password" and store.password_change_required(user.name):
        change_password_form(store, user.name)
        st.stop()
    return Identity(user.name, user.role, True, sess.via)


def signed_out_page() -> None:
    """What an open tab shows once its session ended (signed out here or elsewhere, idle, expired)."""
    st.markdown(_HIDE_NAV, unsafe_allow_html=True)
    st.title("Signed out")
    st.info("Your session has ended: you signed out, signed out everywhere, were idle too long, reached the "
            "session's maximum lifetime, or an admin ended it. Nothing was lost: every saved decision and mask "
            "is in the store.", icon=":material/logout:")
    st.link_button("Sign in again", "/signin?m=ended", type="primary", icon=":material/login:")


def sign_in_form(store: ReviewStore) -> None:
    """The only thing a browser that is not signed in sees."""
    from engine.errors import PermissionDenied

    st.markdown(_HIDE_NAV, unsafe_allow_html=True)
    st.title("Sign in")
    st.caption("Segmentation workbench · team mode: every decision and mask version is recorded under your name.")
    providers = oidc_providers()
    if providers:
        for p in providers:
            label = f"Sign in with {p}" if p else "Sign in with the identity provider"
            if st.button(label, key=f"{state.Auth.OIDC}_{p or 'default'}", type="primary",
                         icon=":material/login:"):
                if p:
                    st.login(p)
                else:
                    st.login()
        st.caption("or with a local account:")
    with st.form(state.Auth.FORM):
        name = st.text_input("User name", key=state.Auth.NAME, autocomplete="username")
        pw = st.text_input("Password", type="password", key=state.Auth.PASSWORD, autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary", key=state.Auth.SUBMIT)
    if not submitted:
        return
    name = (name or "").strip()
    from engine.store.signin import SignInThrottled

    try:
        user = store.authenticate(name, pw or "", address=client_address())
    except SignInThrottled as exc:
        hint = exc.hint or ""
        st.error(f"Not signed in: {exc.message}.\n\n{hint[:1].upper()}{hint[1:]}.", icon=":material/timer:")
        return
    except PermissionDenied as exc:
        st.error(f"Not signed in: {exc.message}.", icon=":material/block:")
        return
    state.put(state.Auth.USER, user.name)
    state.put(state.Auth.VIA, "password")
    st.session_state.pop(state.Auth.PASSWORD, None)
    st.rerun()


def change_password_form(store: ReviewStore, name: str) -> None:
    """The only thing a signed-in user whom an admin asked for a new password sees, until they set one."""
    from engine.errors import WorkbenchError

    st.markdown(_HIDE_NAV, unsafe_allow_html=True)
    st.title("Choose a new password")
    policy = store.signin_policy()
    st.info(f"An administrator asked you ({name}) to set a new password before using the workbench. Use at least "
            f"{policy.min_length} characters that do not contain your user name and are hard to guess (e.g. four "
            "unrelated words, or a password manager's random one).", icon=":material/password:")
    with st.form(state.Auth.CHANGE_FORM):
        pw = st.text_input("New password", type="password", key=state.Auth.NEW_PASSWORD, autocomplete="new-password")
        pw2 = st.text_input("Repeat the new password", type="password", key=state.Auth.NEW_PASSWORD2,
                            autocomplete="new-password")
        submitted = st.form_submit_button("Set password", type="primary", key=state.Auth.CHANGE_SUBMIT)
    st.button("Sign out", key=state.Auth.SIGN_OUT, icon=":material/logout:", on_click=sign_out)
    if not submitted:
        return
    if (pw or "") != (pw2 or ""):
        st.error("The two passwords differ: type the same new password twice.", icon=":material/block:")
        return
    try:
        store.set_password(name, pw or "", actor=name)
    except WorkbenchError as exc:
        st.error(f"Password not changed: {exc}", icon=":material/block:")
        return
    for k in (state.Auth.NEW_PASSWORD, state.Auth.NEW_PASSWORD2):
        st.session_state.pop(k, None)
    st.rerun()


def _forget() -> None:
    for k in (state.Auth.USER, state.Auth.VIA, state.Auth.IDENTITY, state.Shared.REVIEWER):
        st.session_state.pop(k, None)


def sign_out(everywhere: bool = False) -> None:
    """Release this session's claim and forget the user. Behind the gate: end the session on the server
    (``everywhere``: every session of the user, in every browser), which also releases the user's
    claims once no session is left. Without the gate: end the OIDC session too."""
    via = state.get(state.Auth.VIA)
    name = state.get(state.Auth.USER)
    release_claim()
    if gated():
        from engine.store.sessions import token_hash
        from ui.webgate import unbind_session

        store = users_store()
        token = session_token(store)
        if token:
            if everywhere and name:
                store.end_user_sessions(str(name), actor=str(name))
            else:
                store.end_session(token)
            unbind_session(token_hash(token))
        _forget()
        return
    _forget()
    if via == "oidc":
        st.logout()


def identity_sidebar(ident: Identity) -> None:
    """Who is signed in, their role, and the sign-out button (sidebar)."""
    if not ident.signed_in:
        st.sidebar.caption("Single-user demo on this machine (127.0.0.1): no sign-in.")
        return
    st.sidebar.markdown(f"**Signed in**  \n{ident.name} · *{ident.role}*")
    st.sidebar.button("Sign out", key=state.Auth.SIGN_OUT, icon=":material/logout:", on_click=sign_out)
    if gated():
        st.sidebar.button("Sign out everywhere", key=state.Auth.SIGN_OUT_ALL, icon=":material/devices:",
                          on_click=sign_out, kwargs={"everywhere": True},
                          help="End your sessions in every browser and device")
        with st.sidebar:
            _session_watch()


@st.fragment(run_every=60)
def _session_watch() -> None:
    """Every minute, without counting as activity: has this tab's session ended (idle, lifetime,
    signed out elsewhere, account disabled)? Then rerun the page, which shows the signed-out page."""
    store = users_store()
    token = session_token(store)
    if token is None or store.session(token, touch=False) is None:
        st.rerun(scope="app")


# ------------------------------------------------------------------------------------ who may do what

def identity() -> Identity:
    """The current identity (set by :func:`gate` at the top of this run)."""
    got = st.session_state.get(state.Auth.IDENTITY)
    return got if isinstance(got, Identity) else gate()


def author() -> str:
    """The name written into the audit log: the signed-in user; in demo mode the typed local name."""
    ident = identity()
    if ident.signed_in:
        return str(ident.name)
    return str(state.get(state.Shared.REVIEWER, "") or "").strip()


def signed_in() -> bool:
    return identity().signed_in


def can(role: str) -> bool:
    """True when the current user's role is at least ``role`` (demo mode: always)."""
    return ROLE_RANK.get(identity().role, -1) >= ROLE_RANK[role]


def role_note(role: str, what: str) -> None:
    """A caption saying which role ``what`` needs (shown where a control is hidden or disabled)."""
    ident = identity()
    st.caption(f"{what} needs the **{role}** role; you are signed in as {ident.name} (*{ident.role}*). "
               "An admin can change your role.")


# ------------------------------------------------------------------------------------ folders

def check_dataset_path(path: str | Path) -> None:
    """Team mode: refuse a dataset folder/manifest outside the admin's data roots (PermissionDenied)."""
    if not team_mode():
        return
    from engine.serving import check_data_path

    check_data_path(path, users_store().data_roots())


def dataset_allowed(path: str | Path) -> bool:
    try:
        check_dataset_path(path)
    except Exception:  # noqa: BLE001
        return False
    return True


def check_output_path(path: str | Path) -> None:
    """Team mode: exports and manifests need the reviewer role and a path under the workspace or an
    export root (PermissionDenied otherwise)."""
    if not team_mode():
        return
    from engine.errors import PermissionDenied
    from engine.serving import check_write_path

    if not can("reviewer"):
        from engine.store.records import a_role

        ident = identity()
        raise PermissionDenied(f"{ident.name} is {a_role(ident.role)}; writing exports and manifests needs the "
                               "reviewer role or higher", hint="ask an admin to change your role")

    check_write_path(path, state.workspace().root, users_store().export_roots())


def default_export_root() -> Path | None:
    """The admin's first export root in team mode (None: the workspace)."""
    if not team_mode():
        return None
    return users_store().export_root()


# ------------------------------------------------------------------------------------ case claims

def claim_case(store: ReviewStore, case_id: str) -> Claim | ClaimHeld | None:
    """Claim ``case_id`` for this user (renews the lease; releases this session's previous claim).

    Returns the :class:`Claim`, or the :class:`engine.errors.ClaimHeld` error when someone else holds
    it (shown by the caller), or None when this user may not edit (viewer) or has no name yet.
    """
    from engine.errors import ClaimHeld, PermissionDenied

    who = author()
    if not who or not can("annotator"):
        return None
    key = (store.url.render_as_string(hide_password=False), store.dataset_key, str(case_id))
    prev = state.get(state.Shared.CLAIMED)
    if prev and tuple(prev) != key:
        release_claim(store)
    try:
        cl = store.claim(case_id, who)
    except ClaimHeld as exc:
        return exc
    except PermissionDenied:
        return None
    state.put(state.Shared.CLAIMED, key)
    return cl


def release_claim(store: ReviewStore | None = None) -> None:
    """Release the claim this session holds (on leaving the editor, switching case, saving, signing out)."""
    prev = state.get(state.Shared.CLAIMED)
    if not prev:
        return
    st.session_state.pop(state.Shared.CLAIMED, None)
    url, ds_key, case_id = prev
    who = author()
    if not who:
        return
    try:
        if store is not None and store.url.render_as_string(hide_password=False) == url \
                and store.dataset_key == ds_key:
            store.release(case_id, who)
            return
        from engine.store import ReviewStore

        with ReviewStore(url, dataset_key=ds_key) as s:
            s.release(case_id, who)
    except Exception:  # noqa: BLE001 - the lease ends by itself anyway
        pass
