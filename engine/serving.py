"""Two ways to serve the app, and the rules of team mode (pure Python; the UI is :mod:`ui.auth`).

- **Demo** (``make run``, default): one person on their own machine; the app is bound to
  127.0.0.1, nobody signs in, the review store may have no accounts (open single-user mode).
- **Team** (``make serve``, ``SEGWB_MODE=team``): all interfaces, sign-in required (local accounts
  checked with argon2 by the store, or the identity provider configured for Streamlit's
  ``st.login``), folders open only under admin-configured *data roots*, and exports/manifests
  are written only under the workspace or an admin-configured *export root*.

:func:`serve_check` is the preflight ``make serve`` runs (``python -m engine serve-check``): it
refuses team mode while the store has no active admin (sign-in throttling and the password policy live
in the store: :mod:`engine.store.signin`). :func:`check_data_path` / :func:`check_write_path` are the folder rules.

Example:
    >>> info = serve_check()                                  # doctest: +SKIP
    >>> check_data_path("/data/us/nerve", ["/data"])          # doctest: +SKIP
    PosixPath('/data/us/nerve')
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from engine.errors import ConfigError, PermissionDenied

if TYPE_CHECKING:
    from engine.store import ReviewStore, User

MODE_ENV = "SEGWB_MODE"
MODES = ("demo", "team")
#: How an OIDC sign-in for an identity with no account is handled: ``refuse`` (default) or ``viewer``
#: (the account is created with the viewer role on first sign-in, recorded in the admin log).
OIDC_UNKNOWN_ENV = "SEGWB_OIDC_UNKNOWN"
ADD_ADMIN_HINT = ("create one on the server: python -m engine users add NAME --role admin "
                  "(the password is read from stdin or $SEGWB_PASSWORD; run it in this checkout, or with the same "
                  "SEGWB_WORKSPACE / SEGWB_STORE_URL, so it writes this store)")


def serve_mode() -> str:
    """``demo`` or ``team`` from ``$SEGWB_MODE`` (default demo); an unknown value is an error."""
    mode = os.environ.get(MODE_ENV, "").strip().lower() or "demo"
    if mode not in MODES:
        raise ConfigError(f"{MODE_ENV}={mode!r} is not a serving mode", hint="use demo or team")
    return mode


def is_team_mode() -> bool:
    return serve_mode() == "team"


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for ``""``/``0.0.0.0``/``::`` (all interfaces)."""
    a = (address or "").strip().strip("[]")
    if a.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(a).is_loopback
    except ValueError:
        return False


def serve_check(store: ReviewStore | None = None, *, store_url: str | None = None) -> dict[str, Any]:
    """Preflight of team mode: the store must be reachable and hold at least one active admin.

    The store, workspace and secret are those of :func:`engine.install.resolve_settings`, the same
    resolution the CLI and the app use.

    Args:
        store: an open :class:`engine.store.ReviewStore` (default: open ``store_url``,
            ``$SEGWB_STORE_URL`` or the workspace store).

    Returns:
        ``{"store", "admins", "users", "data_roots", "export_roots", "workspace", "secret_file"}``.

    Raises:
        ConfigError: no active admin (the message says how to create one), or a malformed store URL.
    """
    from engine.install import resolve_settings
    from engine.store import ReviewStore

    cfg = resolve_settings(store=store_url)
    own = store is None
    if store is None:
        store = ReviewStore(cfg.store_url, masks_dir=cfg.masks_dir)
    try:
        users = store.users()
        admins = [u.name for u in users if u.role == "admin" and u.active]
        if not admins:
            raise ConfigError("team mode needs at least one active admin account and this store has none"
                              + (f" ({len(users)} account(s), none an active admin)" if users else ""),
                              path=store.path, hint=ADD_ADMIN_HINT)
        return {"store": str(store.path), "admins": admins, "users": len(users),
                "data_roots": [str(p) for p in store.data_roots()],
                "export_roots": [str(p) for p in store.export_roots()], "workspace": str(cfg.workspace),
                "secret_file": str(cfg.secret_file)}
    finally:
        if own:
            store.close()


def _resolve(path: str | Path) -> Path:
    return Path(str(path)).expanduser().resolve()


def path_under(path: str | Path, roots: Iterable[str | Path]) -> bool:
    """True when ``path`` (resolved: symlinks followed, ``..`` removed) lies inside one of ``roots``."""
    p = _resolve(path)
    for r in roots:
        rr = _resolve(r)
        if p == rr or rr in p.parents:
            return True
    return False


def check_data_path(path: str | Path, roots: Iterable[str | Path]) -> Path:
    """The resolved dataset path if it lies under a data root; else :class:`PermissionDenied`.

    Used in team mode for every folder or manifest a browser asks to open (typed, picked from the
    recent list, or pasted in a URL). A symlink pointing out of a root is refused.
    """
    root_list = [str(r) for r in roots]
    if not root_list:
        raise PermissionDenied("no data roots are configured, so no folder can be opened in team mode",
                               path=path, hint="an admin sets them on the Admin page or with "
                                               "python -m engine settings --data-roots DIR ...")
    if not path_under(path, root_list):
        raise PermissionDenied("this folder is outside the data roots an admin allowed for team mode "
                               f"({', '.join(root_list)})", path=path,
                               hint="open a dataset under a data root, or ask an admin to add one")
    return _resolve(path)


def check_write_path(path: str | Path, workspace: str | Path, export_roots: Iterable[str | Path]) -> Path:
    """The resolved output path if it lies under the workspace or an export root; else PermissionDenied."""
    allowed = [str(workspace)] + [str(r) for r in export_roots]
    if not path_under(path, allowed):
        raise PermissionDenied("in team mode exports and manifests are written only under the workspace or an "
                               f"admin-configured export root ({', '.join(allowed)})", path=path,
                               hint="leave the default path, or ask an admin to add an export root")
    return _resolve(path)


def oidc_account(store: ReviewStore, claims: dict[str, Any], *, unknown: str | None = None) -> User:
    """The store account an OIDC identity signs in as.

    The account name is the identity's ``email`` (when the provider says it is verified, or does
    not say), else its ``sub``. Unknown identities are refused (``unknown='refuse'``, default from
    ``$SEGWB_OIDC_UNKNOWN``) or given a new *viewer* account (``unknown='viewer'``) with an unusable
    random password (they sign in through the provider only). Disabled accounts are refused.

    Returns:
        the :class:`engine.store.User`.

    Raises:
        PermissionDenied: no usable identity, unknown (refuse policy) or disabled account.
    """
    import secrets

    from engine.store import LOCAL_OPERATOR

    policy = (unknown or os.environ.get(OIDC_UNKNOWN_ENV, "") or "refuse").strip().lower()
    if policy not in ("refuse", "viewer"):
        raise ConfigError(f"{OIDC_UNKNOWN_ENV}={policy!r} is not a policy", hint="use refuse or viewer")
    email = str(claims.get("email") or "").strip()
    if email and claims.get("email_verified") is False:
        email = ""
    name = email or str(claims.get("sub") or "").strip()
    if not name:
        raise PermissionDenied("the identity provider sent neither an email nor a subject id",
                               hint="configure the provider to release the email claim (scope 'openid email')")
    user = store.user(name)
    if user is None:
        if policy != "viewer":
            raise PermissionDenied(f"{name} signed in with the identity provider but has no account here",
                                   hint=f"ask an admin to add it: python -m engine users add {name} --role ROLE")
        password = secrets.token_urlsafe(32)
        while name.lower() in password.lower():  # the policy refuses a password holding the name
            password = secrets.token_urlsafe(32)
        user = store.add_user(name, "viewer", password, actor=LOCAL_OPERATOR)
    if not user.active:
        raise PermissionDenied(f"user {name!r} is disabled", hint="ask an admin to enable you")
    return user
