"""Users, roles and sign-in of the review store, and the admin log of every account change.

Roles, weakest first: viewer < annotator (saves mask versions, claims cases) < reviewer (decides
pairs, sets review states, undoes) < admin (users, data roots, export roots). A store WITHOUT
users is in *open single-user mode*: any author name is accepted. Passwords are kept as argon2
hashes only; the last active admin can be neither demoted nor disabled. Who may act is checked
by :meth:`engine.store.base.StoreBase._acting` in the transaction of each write.

Sign-in hygiene (:mod:`engine.store.signin`): every password SET meets the store's
:class:`~engine.store.signin.SignInPolicy` (length, zxcvbn strength, not the user name); failed
sign-ins are counted per account name and per client address in the store (throttling with growing
delays, then a lock-out an admin can lift with :meth:`UsersMixin.unlock_signin`); an admin can
require a new password at the next sign-in (:meth:`UsersMixin.require_password_change`).
The clock of throttling is :attr:`UsersMixin.clock` (tests replace it on the instance).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.errors import ConfigError, PermissionDenied, StoreError, unknown_name
from engine.store import tables as T
from engine.store.base import StoreBase
from engine.store.records import ROLES, Actor, User, _now
from engine.store.signin import SignInPolicy, SignInThrottled, account_key, check_password, expired, throttle_wait

if TYPE_CHECKING:
    from argon2 import PasswordHasher

    from engine.store.records import StoredRow

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z")
POLICY_KEY = "signin_policy"  # the settings row holding the SignInPolicy (JSON)


def log_admin(conn: Connection, actor: str, action: str, target: str, detail: object = None) -> None:
    """Append one row to the admin log (who changed which user or setting, when)."""
    conn.execute(T.admin_log.insert().values(ts=_now(), actor=actor, action=action, target=target,
                                             detail=None if detail is None else json.dumps(detail, sort_keys=True)))


def _log_detail(text: str | None) -> Any:
    """An admin-log row's stored detail: parsed JSON, the raw text when it is not JSON, None when empty."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return str(text)


class UsersMixin(StoreBase):
    """Accounts, roles, passwords, sign-in and the admin log of :class:`engine.store.ReviewStore`."""

    #: UNIX seconds for sign-in throttling; replace on the instance to test delays without sleeping
    clock: Callable[[], float] = time.time

    @staticmethod
    def _hasher() -> PasswordHasher:
        from argon2 import PasswordHasher

        return PasswordHasher()

    @staticmethod
    def _user_from_row(r: StoredRow) -> User:
        return User(r.name, r.role, bool(r.active), r.created, r.updated)

    def users(self) -> list[User]:
        """All accounts, by name."""
        u = T.users
        rows = self.tx.read(lambda c: c.execute(sa.select(u.c.name, u.c.role, u.c.active, u.c.created, u.c.updated)
                                                .order_by(u.c.name)).all())
        return [self._user_from_row(r) for r in rows]

    list_users = users

    def user(self, name: str) -> User | None:
        """One account, or None."""
        return next((u for u in self.users() if u.name == name), None)

    def has_users(self) -> bool:
        """False in open single-user mode (no accounts: any author name is accepted)."""
        return bool(self.tx.read(lambda c: c.execute(sa.select(sa.func.count()).select_from(T.users)).scalar()))

    @property
    def open_mode(self) -> bool:
        """True when the store has no accounts (single-user demo mode)."""
        return not self.has_users()

    def has_admin(self) -> bool:
        """True when at least one ACTIVE admin exists (team mode can start)."""
        u = T.users
        return bool(self.tx.read(lambda c: c.execute(sa.select(sa.func.count()).select_from(u).where(
            u.c.role == "admin", u.c.active.is_(True))).scalar()))

    def _check_role(self, role: str) -> str:
        if role not in ROLES:
            raise unknown_name("role", role, ROLES)
        return role

    # -- password policy --------------------------------------------------------------------
    def signin_policy(self) -> SignInPolicy:
        """The store's password rules and throttling limits (defaults until an admin changes them)."""
        s = T.settings
        got = self.tx.read(lambda c: c.execute(sa.select(s.c.value).where(s.c.key == POLICY_KEY)).scalar())
        return SignInPolicy.from_dict(json.loads(got) if got else None)

    def set_signin_policy(self, policy: SignInPolicy, *, actor: Actor) -> SignInPolicy:
        """Replace the password rules and throttling limits (admin only; written to the admin log)."""
        value = json.dumps(SignInPolicy.from_dict(policy.to_dict()).to_dict(), sort_keys=True)

        def run(conn: Connection) -> None:
            who = self._acting(conn, actor, "admin")
            s = T.settings
            conn.execute(s.delete().where(s.c.key == POLICY_KEY))
            conn.execute(s.insert().values(key=POLICY_KEY, value=value, updated=_now(), author=who))
            log_admin(conn, who, "setting", POLICY_KEY, policy.to_dict())

        self.tx.write(run)
        return policy

    def check_new_password(self, name: str, password: object) -> str:
        """The password if the store's policy accepts it for ``name``.

        Raises:
            ConfigError: refused (too short, guessable, contains the name); the message says what to do.
        """
        return check_password(str(name).strip(), password, self.signin_policy())

    def add_user(self, name: str, role: str, password: str, *, actor: Actor = None,
                 must_change: bool = False) -> User:
        """Create an account (argon2 hash). ``actor``: an admin, :data:`LOCAL_OPERATOR` (CLI), or None
        only while the store has no accounts at all (creating the first one). The password must meet
        :meth:`signin_policy`; ``must_change``: ask for a new one at the first sign-in.

        Raises:
            ConfigError: bad name/role/password. StoreError: the name exists. PermissionDenied: actor.
        """
        name = str(name).strip()
        if not _USER_NAME.match(name):
            raise ConfigError(f"invalid user name {name!r}", hint="use 1-64 letters, digits, . _ @ + - "
                                                                 "(starting with a letter or digit)")
        self._check_role(role)
        pw_hash = self._hasher().hash(self.check_new_password(name, password))

        def run(conn: Connection) -> User:
            n = conn.execute(sa.select(sa.func.count()).select_from(T.users)).scalar()
            if actor is None:
                if n:
                    raise PermissionDenied("adding a user needs an acting admin once accounts exist",
                                           path=self.path, hint="sign in as an admin (or use the CLI on the server)")
                who = "first-user"
            else:
                who = self._acting(conn, actor, "admin")
            if conn.execute(sa.select(T.users.c.name).where(T.users.c.name == name)).first() is not None:
                raise StoreError(f"user {name!r} already exists", path=self.path,
                                 hint="pick another name, or use set-role / enable")
            now = _now()
            conn.execute(T.users.insert().values(name=name, role=role, pw_hash=pw_hash, active=True, created=now,
                                                 updated=now, must_change=bool(must_change)))
            log_admin(conn, who, "user_add", name, {"role": role, **({"must_change": True} if must_change else {})})
            return User(name, role, True, now, now)

        return self.tx.write(run)

    def _change_user(self, name: str, actor: Actor, action: str, values: dict[str, Any], detail: object) -> User:
        def run(conn: Connection) -> User:
            who = self._acting(conn, actor, "admin")
            u = T.users
            row = conn.execute(sa.select(u).where(u.c.name == name)).first()
            if row is None:
                raise StoreError(f"no user {name!r}", path=self.path, hint="see python -m engine users list")
            new_role = values.get("role", row.role)
            new_active = values.get("active", bool(row.active))
            if row.role == "admin" and row.active and (new_role != "admin" or not new_active):
                n_admins = conn.execute(sa.select(sa.func.count()).select_from(u).where(
                    u.c.role == "admin", u.c.active.is_(True))).scalar_one()
                if n_admins <= 1:
                    raise StoreError(f"{name!r} is the last active admin", path=self.path,
                                     hint="make another user admin first")
            now = _now()
            conn.execute(u.update().where(u.c.name == name).values(updated=now, **values))
            log_admin(conn, who, action, name, detail)
            return User(name, new_role, new_active, row.created, now)

        return self.tx.write(run)

    def set_role(self, name: str, role: str, *, actor: Actor) -> User:
        """Change a user's role (admin only; the last active admin cannot be demoted)."""
        return self._change_user(name, actor, "user_set_role", {"role": self._check_role(role)}, {"role": role})

    def disable_user(self, name: str, *, actor: Actor) -> User:
        """Disable an account (kept for the audit log; its writes and sign-ins are refused)."""
        return self._change_user(name, actor, "user_disable", {"active": False}, None)

    def enable_user(self, name: str, *, actor: Actor) -> User:
        """Re-enable a disabled account."""
        return self._change_user(name, actor, "user_enable", {"active": True}, None)

    def set_password(self, name: str, password: str, *, actor: Actor, must_change: bool | None = None) -> None:
        """Set a password (it must meet :meth:`signin_policy`): an admin for anyone, a user for themself
        (``actor == name``; this also fulfils a required change, and the new password must differ
        from the current one). ``must_change`` (admin): also require or waive a change at the next
        sign-in (None: leave as is).

        Raises:
            ConfigError: the policy refuses the password. PermissionDenied: actor. StoreError: no such user.
        """
        from argon2 import exceptions as argon_exc

        pw = self.check_new_password(name, password)
        ph = self._hasher()
        pw_hash = ph.hash(pw)
        if isinstance(actor, str) and actor.strip() == name:
            u = T.users

            def run(conn: Connection) -> None:
                self._acting(conn, name, "viewer")
                old = conn.execute(sa.select(u.c.pw_hash).where(u.c.name == name)).scalar()
                try:
                    same = old is not None and ph.verify(str(old), pw)
                except (argon_exc.VerifyMismatchError, argon_exc.VerificationError, argon_exc.InvalidHashError):
                    same = False
                if same:
                    raise ConfigError("the new password is the same as the current one", hint="choose a new one")
                conn.execute(u.update().where(u.c.name == name).values(pw_hash=pw_hash, must_change=False,
                                                                       updated=_now()))
                log_admin(conn, name, "user_password", name)

            self.tx.write(run)
            return
        values: dict[str, Any] = {"pw_hash": pw_hash}
        if must_change is not None:
            values["must_change"] = bool(must_change)
        self._change_user(name, actor, "user_password", values,
                          None if must_change is None else {"must_change": bool(must_change)})

    def require_password_change(self, name: str, *, actor: Actor, required: bool = True) -> User:
        """Ask ``name`` for a new password at the next sign-in (``required=False``: take that back).
        Admin only; written to the admin log. The user cannot use the app until they set one."""
        return self._change_user(name, actor, "user_require_password_change" if required else
                                 "user_waive_password_change", {"must_change": bool(required)}, None)

    def password_change_required(self, name: str) -> bool:
        """True when an admin asked ``name`` to set a new password before using the app."""
        u = T.users
        return bool(self.tx.read(lambda c: c.execute(sa.select(u.c.must_change).where(u.c.name == name)).scalar()))

    def authenticate(self, name: str, password: str, *, address: str | None = None) -> User:
        """Check a sign-in; returns the user. ``address``: the client's network address
        (:func:`engine.store.signin.client_address`), throttled besides the account name.

        Each attempt counts as a failure of the name and the address until the password is verified
        (so parallel guesses cannot slip past a delay); success clears the name's count.

        Raises:
            SignInThrottled: too many recent failures for the name or the address (a delay, or a
                lock-out an admin can lift); the password was not checked. The same for any name,
                existing or not.
            PermissionDenied: unknown user, wrong password or disabled account (one message for the
                first two, so names cannot be probed).
        """
        from argon2 import exceptions as argon_exc

        u = T.users
        policy = self.signin_policy()
        keys = [("account", account_key(name))] + ([("address", str(address)[:64])] if address else [])
        now = float(self.clock())
        self.tx.write(lambda c: self._count_attempt(c, keys, now, policy))
        row = self.tx.read(lambda c: c.execute(sa.select(u).where(u.c.name == str(name).strip())).first())
        bad = PermissionDenied("wrong user name or password", hint="check both; an admin can reset a password")
        if row is None or not row.pw_hash:
            self._hasher().hash("timing-equaliser")  # same cost as a real check
            raise bad
        ph = self._hasher()
        try:
            ph.verify(row.pw_hash, str(password))
        except (argon_exc.VerifyMismatchError, argon_exc.VerificationError, argon_exc.InvalidHashError):
            raise bad from None
        self.tx.write(lambda c: self._attempt_succeeded(c, keys))
        if not row.active:
            raise PermissionDenied(f"user {row.name!r} is disabled", hint="ask an admin to enable you")
        if ph.check_needs_rehash(row.pw_hash):
            new = ph.hash(str(password))
            self.tx.write(lambda c: c.execute(u.update().where(u.c.name == row.name).values(pw_hash=new)))
        return self._user_from_row(row)

    # -- throttling ---------------------------------------------------------------------------
    @staticmethod
    def _limits(kind: str, policy: SignInPolicy) -> tuple[int, int]:
        if kind == "account":
            return policy.free_failures, policy.account_limit
        return policy.address_free_failures, policy.address_limit

    def _count_attempt(self, conn: Connection, keys: list[tuple[str, str]], now: float,
                       policy: SignInPolicy) -> None:
        """Refuse the attempt when a key must wait (SignInThrottled), else count it as a failure of each key."""
        sf = T.signin_failures
        horizon = now - max(policy.window, policy.lockout) - 1.0
        conn.execute(sf.delete().where(sf.c.last_failed < horizon))  # forget what no longer matters
        worst: SignInThrottled | None = None
        counts: dict[tuple[str, str], int] = {}
        for kind, key in keys:
            r = conn.execute(sa.select(sf).where(sf.c.kind == kind, sf.c.key == key)).first()
            free, limit = self._limits(kind, policy)
            if r is not None and expired(r.failures, last_failed=r.last_failed, now=now, limit=limit, policy=policy):
                conn.execute(sf.delete().where(sf.c.kind == kind, sf.c.key == key))
                r = None
            counts[(kind, key)] = 0 if r is None else int(r.failures)
            if r is None:
                continue
            wait, locked = throttle_wait(r.failures, last_failed=r.last_failed, now=now, free=free, limit=limit,
                                         policy=policy)
            if wait > 0 and (worst is None or (locked, now + wait) > (worst.locked, worst.retry_at)):
                worst = SignInThrottled(now + wait, now, locked=locked, scope=kind)
        if worst is not None:
            raise worst
        for (kind, key), n in counts.items():
            if n:
                conn.execute(sf.update().where(sf.c.kind == kind, sf.c.key == key).values(failures=n + 1,
                                                                                          last_failed=now))
            else:
                conn.execute(sf.insert().values(kind=kind, key=key, failures=1, first_failed=now, last_failed=now))

    @staticmethod
    def _attempt_succeeded(conn: Connection, keys: list[tuple[str, str]]) -> None:
        """The password was right: clear the account's count; take this attempt off the address's count."""
        sf = T.signin_failures
        for kind, key in keys:
            where = (sf.c.kind == kind) & (sf.c.key == key)
            if kind == "account":
                conn.execute(sf.delete().where(where))
            else:
                conn.execute(sf.update().where(where, sf.c.failures > 0).values(failures=sf.c.failures - 1))
                conn.execute(sf.delete().where(where, sf.c.failures <= 0))

    def signin_failures(self, *, locked_only: bool = False) -> list[dict[str, Any]]:
        """Recent failed sign-ins per account name and client address, for the Admin page:
        ``kind`` (account | address), ``key``, ``failures``, ``first_failed`` / ``last_failed`` /
        ``retry_at`` (UNIX seconds), ``locked`` (a lock-out), ``waiting`` (a delay or lock now)."""
        policy = self.signin_policy()
        now = float(self.clock())
        sf = T.signin_failures
        rows = self.tx.read(lambda c: c.execute(sa.select(sf).order_by(sf.c.kind, sf.c.key)).all())
        out: list[dict[str, Any]] = []
        for r in rows:
            free, limit = self._limits(r.kind, policy)
            if expired(r.failures, last_failed=r.last_failed, now=now, limit=limit, policy=policy):
                continue
            wait, locked = throttle_wait(r.failures, last_failed=r.last_failed, now=now, free=free, limit=limit,
                                         policy=policy)
            if locked_only and not locked:
                continue
            out.append({"kind": r.kind, "key": r.key, "failures": int(r.failures), "first_failed": r.first_failed,
                        "last_failed": r.last_failed, "retry_at": now + wait, "locked": locked, "waiting": wait > 0})
        return out

    def unlock_signin(self, key: str, *, actor: Actor, kind: str = "account") -> bool:
        """Lift the throttling or lock-out of an account name (``kind="account"``) or a client address
        (``kind="address"``): its failure count is cleared. Admin only; written to the admin log.
        Returns False when nothing was recorded for it."""
        if kind not in ("account", "address"):
            raise unknown_name("kind", kind, ("account", "address"))
        k = account_key(key) if kind == "account" else str(key).strip()

        def run(conn: Connection) -> bool:
            who = self._acting(conn, actor, "admin")
            sf = T.signin_failures
            n = conn.execute(sa.select(sf.c.failures).where(sf.c.kind == kind, sf.c.key == k)).scalar()
            conn.execute(sf.delete().where(sf.c.kind == kind, sf.c.key == k))
            log_admin(conn, who, "signin_unlock", k, {"kind": kind, "failures": int(n or 0)})
            return n is not None

        return self.tx.write(run)

    def check_role(self, name: str, role: str) -> str:
        """Raise :class:`PermissionDenied` unless ``name`` may act as ``role`` now (open mode: anyone)."""
        return self.tx.read(lambda c: self._acting(c, name, role))

    def admin_log(self) -> list[dict[str, Any]]:
        """User and settings changes, oldest first (a detail that is not JSON comes back as its text)."""
        a = T.admin_log
        rows = self.tx.read(lambda c: c.execute(sa.select(a).order_by(a.c.id)).all())
        return [{"id": r.id, "ts": r.ts, "actor": r.actor, "action": r.action, "target": r.target,
                 "detail": _log_detail(r.detail)} for r in rows]
