"""Streamlit glue of the Admin page (pages/8_Admin.py): accounts, data roots, export roots.

Every change goes through :class:`engine.store.ReviewStore` with the signed-in user as the
acting admin, so the store checks the role again and writes the admin log. In the single-user demo
(no accounts) the page explains how team mode starts instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import streamlit as st

from ui import auth, state
from ui.timefmt import local_time

if TYPE_CHECKING:
    from engine.store import ReviewStore
    from ui.auth import Identity

ROLES = ("viewer", "annotator", "reviewer", "admin")


def _roots_text(paths: Iterable[str | Path]) -> str:
    return "\n".join(str(p) for p in paths)


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip()]


def render_admin() -> None:
    """The whole Admin page body (call inside ``ui.widgets.guard``)."""
    from engine.errors import WorkbenchError

    ident = auth.identity()
    store = auth.users_store()
    if not ident.signed_in:
        st.info("This is the single-user demo (no accounts, this machine only). Team mode starts with an admin "
                "account: `python -m engine users add NAME --role admin`, then `make serve`. Accounts, data roots "
                "and export roots are managed here once you are signed in as an admin.", icon=":material/info:")
        return
    if not auth.can("admin"):
        auth.role_note("admin", "Managing accounts and folders")
        return
    flash = st.session_state.pop(state.Admin.FLASH, None)
    if flash:
        st.success(flash, icon=":material/check_circle:")

    def done(text: str) -> None:
        st.session_state[state.Admin.FLASH] = text
        st.rerun()

    st.subheader("Accounts")
    users = store.users()
    st.dataframe([{"name": u.name, "role": u.role, "active": u.active,
                   "must change password": store.password_change_required(u.name), "created": local_time(u.created),
                   "updated": local_time(u.updated)} for u in users], hide_index=True, width="stretch")
    policy = store.signin_policy()
    st.caption(f"Passwords: at least {policy.min_length} characters, not containing the user name, and hard to guess "
               f"(strength score ≥ {policy.min_score} of 4). Change: `python -m engine users policy`.")
    with st.form(state.Admin.ADD_FORM, clear_on_submit=True):
        c = st.columns([3, 2, 3])
        name = c[0].text_input("New user name", key=state.Admin.NEW_NAME,
                               help="letters, digits, . _ @ + - ; for sign-in through the identity provider "
                                    "use the person's email address")
        role = c[1].selectbox("Role", ROLES, index=1, key=state.Admin.NEW_ROLE)
        pw = c[2].text_input("Initial password", type="password", key=state.Admin.NEW_PASSWORD)
        if st.form_submit_button("Add user", key=state.Admin.ADD, icon=":material/person_add:"):
            try:
                u = store.add_user(name, role, pw, actor=ident.name)
            except WorkbenchError as exc:
                st.error(f"Not added: {exc}", icon="⚠️")
            else:
                done(f"Added {u.role} {u.name}.")
    if users:
        names = [u.name for u in users]
        pick = st.selectbox("Change an account", names, key=state.Admin.USER)
        u = next(x for x in users if x.name == pick)
        c = st.columns([2, 2, 2, 3, 2], vertical_alignment="bottom")
        new_role = c[0].selectbox("Role", ROLES, index=ROLES.index(u.role), key=f"{state.Admin.ROLE}_{pick}")
        if c[1].button("Set role", key=state.Admin.SET_ROLE, disabled=new_role == u.role):
            with _report():
                store.set_role(pick, new_role, actor=ident.name)
                done(f"{pick} is now {new_role}.")
        label = "Disable" if u.active else "Enable"
        if c[2].button(label, key=state.Admin.TOGGLE, disabled=pick == ident.name,
                       help="you cannot disable yourself" if pick == ident.name else "disabled accounts cannot sign "
                       "in; their history stays"):
            with _report():
                (store.disable_user if u.active else store.enable_user)(pick, actor=ident.name)
                done(f"{pick} {'disabled' if u.active else 'enabled'}.")
        new_pw = c[3].text_input("New password", type="password", key=f"{state.Admin.RESET_PASSWORD}_{pick}")
        if c[4].button("Reset password", key=state.Admin.RESET, disabled=not new_pw):
            with _report():
                must = bool(st.session_state.get(f"{state.Admin.RESET_MUST_CHANGE}_{pick}", True))
                store.set_password(pick, new_pw, actor=ident.name, must_change=must)
                done(f"Password of {pick} reset" + (" (a new one is required at the next sign-in)." if must else "."))
        c = st.columns([5, 4], vertical_alignment="bottom")
        c[0].checkbox("With a reset: ask for a new password at the next sign-in", value=True,
                      key=f"{state.Admin.RESET_MUST_CHANGE}_{pick}")
        required = store.password_change_required(pick)
        if c[1].button("Cancel the password change" if required else "Require a new password",
                       key=state.Admin.MUST_CHANGE, icon=":material/password:",
                       help="at the next sign-in the user must set a new password before using the app"):
            with _report():
                store.require_password_change(pick, actor=ident.name, required=not required)
                done(f"{pick} " + ("no longer needs a new password." if required else
                                   "must set a new password at the next sign-in."))
    _locks(store, ident, done)
    _sessions(store, ident, done)

    _roots_form("Data roots", "In team mode datasets open only from these folders (absolute paths, one per line; "
                "symlinks are resolved, so a link pointing outside a root is refused).",
                store.data_roots, store.set_data_roots, state.Admin.DATA_ROOTS, state.Admin.SAVE_DATA_ROOTS, ident,
                done, state.Admin.DATA_ROOTS_BROAD)
    _roots_form("Export roots", "Exports and manifests are written under the workspace or these folders (the first "
                "is the default target of exports).",
                store.export_roots, store.set_export_roots, state.Admin.EXPORT_ROOTS, state.Admin.SAVE_EXPORT_ROOTS,
                ident, done, state.Admin.EXPORT_ROOTS_BROAD)
    with st.expander("Admin log"):
        _admin_log(store)


LOG_DETAIL_CHARS = 300


def _detail_text(detail: object) -> str:
    """An admin-log detail as one short line of text (JSON for dicts and lists)."""
    import json

    if detail is None or detail == "":
        return ""
    if isinstance(detail, str):
        text = detail
    else:
        try:
            text = json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = repr(detail)
    text = " ".join(text.split())
    return text if len(text) <= LOG_DETAIL_CHARS else text[:LOG_DETAIL_CHARS - 1] + "…"


def log_rows(entries: Iterable[dict]) -> list[dict[str, str]]:
    """Admin-log entries (newest first, at most 500) as table rows of plain text: a row that cannot be
    shown says so in its detail instead of failing the table."""
    rows = []
    for e in list(entries)[::-1][:500]:
        try:
            rows.append({"id": str(e.get("id", "")), "time": local_time(e.get("ts")),
                         "actor": str(e.get("actor") or ""), "action": str(e.get("action") or ""),
                         "target": str(e.get("target") or ""),
                         "detail": _detail_text(e.get("detail"))})
        except Exception as exc:  # noqa: BLE001 - one bad row must not hide the log
            rows.append({"id": "", "time": "", "actor": "", "action": "", "target": "",
                         "detail": f"(this entry cannot be shown: {type(exc).__name__})"})
    return rows


def _admin_log(store: ReviewStore) -> None:
    """The admin log as a table of short texts; if it cannot be read, a one-line message (no traceback)."""
    try:
        rows = log_rows(store.admin_log())
    except Exception as exc:  # noqa: BLE001 - the rest of the Admin page stays usable
        st.warning(f"The admin log cannot be shown ({type(exc).__name__}); the accounts and roots above are "
                   "not affected.", icon=":material/warning:")
        return
    if not rows:
        st.caption("Nothing logged yet.")
        return
    st.dataframe(rows, hide_index=True, width="stretch")


def _locks(store: ReviewStore, ident: Identity, done: Callable[[str], None]) -> None:
    """Failed sign-ins per account name and client address, with a button to lift each delay or lock-out."""
    def t(x: float) -> str:
        return local_time(x, "%Y-%m-%d %H:%M:%S")

    st.subheader("Failed sign-ins")
    rows = store.signin_failures()
    policy = store.signin_policy()
    st.caption(f"Counted per user name (existing or not) and per client address. Growing delays from failure "
               f"{policy.free_failures + 1} of a name; a lock-out of {policy.lockout / 60:.0f} min after "
               f"{policy.account_limit} failures of a name or {policy.address_limit} from one address. Unlocking "
               "clears the count (also: `python -m engine users unlock NAME`).")
    if not rows:
        st.caption("No recent failed sign-ins.")
        return
    st.dataframe([{"kind": r["kind"], "name or address": r["key"], "failures": r["failures"],
                   "first": t(r["first_failed"]), "last": t(r["last_failed"]),
                   "status": (f"locked until {t(r['retry_at'])}" if r["locked"] else
                              f"waiting until {t(r['retry_at'])}" if r["waiting"] else "counting")}
                  for r in rows], hide_index=True, width="stretch")
    for r in rows:
        if not (r["locked"] or r["waiting"]):
            continue
        label = f"Unlock {r['kind']} {r['key']}"
        if st.button(label, key=f"{state.Admin.UNLOCK}_{r['kind']}_{r['key']}", icon=":material/lock_open:"):
            with _report():
                store.unlock_signin(r["key"], actor=ident.name, kind=r["kind"])
                done(f"Unlocked {r['kind']} {r['key']}.")


def _sessions(store: ReviewStore, ident: Identity, done: Callable[[str], None]) -> None:
    """Signed-in browser sessions (team mode behind the session gate), with a button per user that ends
    all of that user's sessions."""
    def t(x: float) -> str:
        return local_time(x, "%Y-%m-%d %H:%M:%S")

    st.subheader("Signed-in sessions")
    policy = store.signin_policy()
    st.caption(f"Sessions end after {policy.session_idle / 60:.0f} min without a page interaction and "
               f"{policy.session_lifetime / 3600:.1f} h after sign-in (`python -m engine users policy "
               "--session-idle SECONDS --session-lifetime SECONDS`). Ending a user's sessions signs them out "
               "in every browser and releases their case claims.")
    rows = store.sessions()
    if not rows:
        st.caption("No live sessions (the single-user demo and `streamlit run app.py` keep none).")
        return
    st.dataframe([{"user": r.user_name, "via": r.via, "address": r.address, "signed in": t(r.created),
                   "last active": t(r.last_seen), "ends at the latest": t(r.expires)} for r in rows],
                 hide_index=True, width="stretch")
    for name in sorted({r.user_name for r in rows}):
        if st.button(f"End {name}'s sessions", key=f"{state.Admin.END_SESSIONS}_{name}", icon=":material/logout:"):
            with _report():
                n = store.end_user_sessions(name, actor=ident.name)
                done(f"Ended {n} session(s) of {name}.")


def _roots_form(title: str, caption: str, current: Callable[[], list[Path]],
                save: Callable[..., list[Path]], area_key: str, button_key: str, ident: Identity,
                done: Callable[[str], None], broad_key: str) -> None:
    """One folder-list setting: its current folders in a text area (one per line), a checkbox that
    confirms a whole-disk or home-folder root (the engine refuses those otherwise) and a save button
    that stores them as ``ident`` (``save(paths, actor=..., confirm_broad=...)`` returns what was stored)."""
    st.subheader(title)
    st.caption(caption)
    text = st.text_area(title, value=_roots_text(current()), key=area_key)
    broad = st.checkbox("Allow a filesystem root (/) or a home folder", key=broad_key,
                        help="refused unless ticked: every file below such a folder could be opened or written "
                             "in team mode")
    if st.button(f"Save {title[0].lower()}{title[1:]}", key=button_key, icon=":material/save:"):
        with _report():
            got = save(_lines(text), actor=ident.name, confirm_broad=broad)
            done(f"{title}: {', '.join(map(str, got)) or 'none'}.")


class _report:
    """Show a project error from an admin action as a message (the page keeps running)."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        from engine.errors import WorkbenchError

        if isinstance(exc, WorkbenchError):
            st.error(str(exc), icon="⚠️")
            return True
        return False
