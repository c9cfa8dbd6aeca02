"""Signed-in browser sessions of team mode: what a session cookie names, how long it lives, how it ends.

A session is opened after a successful sign-in (:meth:`SessionsMixin.open_session`) and named by a
random 256-bit token that only the browser holds, in a signed HttpOnly cookie
(:func:`sign_token` / :func:`verify_cookie`, HMAC-SHA256 with a key kept in the store so every app
server of one store accepts it). The store keeps only the token's SHA-256, so a copy of the
database cannot be turned into cookies.

A session ends (``ended`` set, with a reason) when its user signs out (:meth:`end_session`), signs
out everywhere or is disabled (:meth:`end_user_sessions`), after ``session_idle`` seconds without a
page interaction, or ``session_lifetime`` seconds after sign-in (:class:`engine.store.signin.SignInPolicy`).
When a user's last live session ends, their case claims are released.

Example:
    >>> token = store.open_session("ana", via="password", address="10.0.0.7")      # doctest: +SKIP
    >>> store.session(token).user_name                                               # doctest: +SKIP
    'ana'
    >>> store.end_session(token, reason="signed out")                                # doctest: +SKIP
    True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, replace
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.errors import PermissionDenied
from engine.store import tables as T
from engine.store.records import Actor, User, _now
from engine.store.signin import SignInPolicy
from engine.store.users import UsersMixin, log_admin

#: The cookie that names a session (its value: ``<token>.<signature>``).
COOKIE_NAME = "segwb_session"
#: A session's last-seen time is written at most this often (seconds): page interactions are frequent.
TOUCH_EVERY = 15.0
#: Ended sessions are deleted this long after they end (seconds).
KEEP_ENDED = 86400.0
_KEY_SETTING = "session_signing_key"


@dataclass(frozen=True)
class WebSession:
    """One signed-in browser session: ``id_hash`` (SHA-256 of the token, hex), the user, how they
    signed in (``password`` | ``oidc``), the client address at sign-in and UNIX times."""

    id_hash: str
    user_name: str
    via: str
    address: str
    created: float
    last_seen: float
    expires: float
    ended: float | None = None
    end_reason: str | None = None

    @property
    def live(self) -> bool:
        return self.ended is None


def token_hash(token: str) -> str:
    """The stored name of a session token (SHA-256, hex)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def sign_token(token: str, key: bytes) -> str:
    """The cookie value for ``token``: ``token.signature`` (HMAC-SHA256 with ``key``, URL-safe base64)."""
    sig = hmac.new(key, token.encode("ascii"), hashlib.sha256).digest()
    return f"{token}.{base64.urlsafe_b64encode(sig).decode('ascii').rstrip('=')}"


def verify_cookie(value: str | None, key: bytes) -> str | None:
    """The token of a cookie value whose signature is right, else None (never raises)."""
    if not value or len(value) > 200 or value.count(".") != 1:
        return None
    token, _ = value.split(".", 1)
    try:
        expected = sign_token(token, key)
    except (UnicodeEncodeError, ValueError):
        return None
    return token if hmac.compare_digest(expected, value) else None


def _row(r: object) -> WebSession:
    return WebSession(**{c.name: getattr(r, c.name) for c in T.web_sessions.columns})


class SessionsMixin(UsersMixin):
    """Browser sessions of :class:`engine.store.ReviewStore` (see the module docstring); the clock
    is :attr:`UsersMixin.clock`."""

    # -- the signing key --------------------------------------------------------------------
    def session_key(self) -> bytes:
        """The cookie signing key of this store (created at first use, shared by every app server)."""
        s = T.settings
        got = self.tx.read(lambda c: c.execute(sa.select(s.c.value).where(s.c.key == _KEY_SETTING)).scalar())
        if got is not None:
            return base64.b64decode(json.loads(got))

        def run(conn: Connection) -> bytes:
            again = conn.execute(sa.select(s.c.value).where(s.c.key == _KEY_SETTING)).scalar()
            if again is not None:  # another server made it meanwhile
                return base64.b64decode(json.loads(again))
            key = secrets.token_bytes(32)
            conn.execute(s.insert().values(key=_KEY_SETTING, value=json.dumps(base64.b64encode(key).decode()),
                                           updated=_now(), author="(server)"))
            return key

        return self.tx.write(run)

    def disable_user(self, name: str, *, actor: Actor) -> User:
        """Disable ``name`` (see :meth:`UsersMixin.disable_user`) and end their sessions at once."""
        user = super().disable_user(name, actor=actor)
        self._end(lambda conn: [r.id_hash for r in conn.execute(sa.select(T.web_sessions.c.id_hash).where(
            T.web_sessions.c.user_name == name, T.web_sessions.c.ended.is_(None))).all()],
            "signed out: the account was disabled", float(self.clock()))
        return user

    # -- opening and reading ----------------------------------------------------------------
    def open_session(self, name: str, *, via: str, address: str | None = None) -> str:
        """Open a session for the active user ``name`` (already authenticated by the caller); returns
        the token to put in the cookie (:func:`sign_token`). Also ends expired sessions.

        Raises:
            PermissionDenied: unknown or disabled user.
        """
        policy = self.signin_policy()
        now = float(self.clock())
        token = secrets.token_urlsafe(32)
        w = T.web_sessions

        def run(conn: Connection) -> None:
            row = conn.execute(sa.select(T.users.c.active).where(T.users.c.name == name)).first()
            if row is None or not row.active:
                raise PermissionDenied(f"user {name!r} is unknown or disabled: no session opened", path=self.path,
                                       hint="ask an admin to add or enable the account")
            conn.execute(w.insert().values(id_hash=token_hash(token), user_name=name, via=str(via)[:16],
                                           address=str(address or "")[:64], created=now, last_seen=now,
                                           expires=now + policy.session_lifetime, ended=None, end_reason=None))
            self._sweep(conn, now, policy)

        self.tx.write(run)
        return token

    def session(self, token: str | None, *, touch: bool = True) -> WebSession | None:
        """The live session named by ``token``, or None (unknown, ended, idle too long, past its
        lifetime, or its user disabled or removed — then it is ended here, with the reason).

        ``touch``: count this as activity (a page interaction), pushing the idle timeout back; checks
        that are not the user's doing (image requests, the periodic sign-out check) pass False.
        """
        if not token:
            return None
        h = token_hash(token)
        w = T.web_sessions
        now = float(self.clock())
        r = self.tx.read(lambda c: c.execute(
            sa.select(w, T.users.c.active).select_from(w.outerjoin(T.users, T.users.c.name == w.c.user_name))
            .where(w.c.id_hash == h)).first())
        if r is None or r.ended is not None:
            return None
        policy = self.signin_policy()
        why = ("signed out: the account was disabled or removed" if not r.active else
               "signed out after the session's maximum lifetime" if now >= r.expires else
               "signed out after being idle" if now - r.last_seen >= policy.session_idle else "")
        if why:
            self._end(lambda conn: [h], why, now)
            return None
        if touch and now - r.last_seen >= TOUCH_EVERY:
            self.tx.write(lambda c: c.execute(w.update().where(w.c.id_hash == h, w.c.ended.is_(None))
                                              .values(last_seen=now)))
            return replace(_row(r), last_seen=now)
        return _row(r)

    def sessions(self, name: str | None = None, *, include_ended: bool = False) -> list[WebSession]:
        """Sessions (of ``name``, or everyone's), newest first; live ones only unless ``include_ended``.
        Sessions past their idle time or lifetime count as live until the next check ends them."""
        w = T.web_sessions
        q = sa.select(w).order_by(w.c.created.desc())
        if name is not None:
            q = q.where(w.c.user_name == name)
        if not include_ended:
            q = q.where(w.c.ended.is_(None))
        return [_row(r) for r in self.tx.read(lambda c: c.execute(q).all())]

    # -- ending -----------------------------------------------------------------------------
    def end_session(self, token: str, *, reason: str = "signed out") -> bool:
        """End the session named by ``token`` (sign-out); True if it was live."""
        h = token_hash(token)
        return bool(self._end(lambda conn: [h], reason, float(self.clock())))

    def end_user_sessions(self, name: str, *, actor: Actor, reason: str = "signed out everywhere") -> int:
        """End every live session of ``name`` ("sign out everywhere"; an admin may do it for anyone,
        and disabling a user does it); returns how many ended."""
        w = T.web_sessions

        def ids(conn: Connection) -> list[str]:
            who = self._acting(conn, actor, "viewer")
            if who != name:
                self._acting(conn, actor, "admin")
                log_admin(conn, who, "end-sessions", name, None)
            return [r.id_hash for r in conn.execute(sa.select(w.c.id_hash).where(w.c.user_name == name,
                                                                                  w.c.ended.is_(None))).all()]

        return self._end(ids, reason, float(self.clock()))

    def sweep_sessions(self) -> int:
        """End sessions past their idle time or lifetime (releasing claims of users left with none);
        returns how many ended."""
        policy = self.signin_policy()
        now = float(self.clock())
        return int(self.tx.write(lambda conn: self._sweep(conn, now, policy)))

    def _sweep(self, conn: Connection, now: float, policy: SignInPolicy) -> int:
        w = T.web_sessions
        conn.execute(w.delete().where(w.c.ended.is_not(None), w.c.ended < now - KEEP_ENDED))
        stale = conn.execute(sa.select(w.c.id_hash, w.c.user_name).where(
            w.c.ended.is_(None), sa.or_(w.c.expires <= now, w.c.last_seen <= now - policy.session_idle))).all()
        if not stale:
            return 0
        conn.execute(w.update().where(w.c.id_hash.in_([r.id_hash for r in stale]))
                     .values(ended=now, end_reason="expired"))
        self._release_if_gone(conn, {r.user_name for r in stale})
        return len(stale)

    def _end(self, which: Callable[[Connection], list[str]], reason: str, now: float) -> int:
        w = T.web_sessions

        def run(conn: Connection) -> int:
            ids = which(conn)
            if not ids:
                return 0
            users = {r.user_name for r in conn.execute(sa.select(w.c.user_name).where(
                w.c.id_hash.in_(ids), w.c.ended.is_(None))).all()}
            n = conn.execute(w.update().where(w.c.id_hash.in_(ids), w.c.ended.is_(None))
                             .values(ended=now, end_reason=reason[:120])).rowcount
            self._release_if_gone(conn, users)
            return int(n or 0)

        return int(self.tx.write(run))

    @staticmethod
    def _release_if_gone(conn: Connection, users: set[str]) -> None:
        """Release every case claim (all datasets) of those ``users`` who have no live session left."""
        w = T.web_sessions
        for u in users:
            live = conn.execute(sa.select(sa.func.count()).select_from(w).where(
                w.c.user_name == u, w.c.ended.is_(None))).scalar()
            if not live:
                conn.execute(T.claims.delete().where(T.claims.c.user_name == u))
