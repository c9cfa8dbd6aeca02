"""Users, roles and sign-in of the review store, and the admin log of every account change.

Roles, weakest first: viewer < annotator (saves mask versions, claims cases) < reviewer (decides
pairs, sets review states, undoes) < admin (users, data roots, export roots). A store WITHOUT
users is in *open single-user mode*: any author name is accepted. Passwords are kept as argon2
hashes only; the last active admin can be neither demoted nor disabled. Who may act is checked
by :meth:`engine.store.base.StoreBase._acting` in the transaction of each write.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.errors import ConfigError, PermissionDenied, StoreError, unknown_name
from engine.store import tables as T
from engine.store.base import StoreBase
from engine.store.records import ROLES, Actor, User, _now

if TYPE_CHECKING:
    from argon2 import PasswordHasher

    from engine.store.records import StoredRow

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


def log_admin(conn: Connection, actor: str, action: str, target: str, detail: object = None) -> None:
    """Append one row to the admin log (who changed which user or setting, when)."""
    conn.execute(T.admin_log.insert().values(ts=_now(), actor=actor, action=action, target=target,
                                             detail=None if detail is None else json.dumps(detail, sort_keys=True)))


class UsersMixin(StoreBase):
    """Accounts, roles, passwords, sign-in and the admin log of :class:`engine.store.ReviewStore`."""

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

    @staticmethod
    def _check_password(password: object) -> str:
        if not isinstance(password, str) or not password.strip("\r\n"):
            raise ConfigError("a password is required", hint="pass one line on stdin or set SEGWB_PASSWORD")
        return password.strip("\r\n")

    def add_user(self, name: str, role: str, password: str, *, actor: Actor = None) -> User:
        """Create an account (argon2 hash). ``actor``: an admin, :data:`LOCAL_OPERATOR` (CLI), or None
        only while the store has no accounts at all (creating the first one).

        Raises:
            ConfigError: bad name/role/password. StoreError: the name exists. PermissionDenied: actor.
        """
        name = str(name).strip()
        if not _USER_NAME.match(name):
            raise ConfigError(f"invalid user name {name!r}", hint="use 1-64 letters, digits, . _ @ + - "
                                                                 "(starting with a letter or digit)")
        self._check_role(role)
        pw_hash = self._hasher().hash(self._check_password(password))

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
                                                 updated=now))
            log_admin(conn, who, "user_add", name, {"role": role})
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

    def set_password(self, name: str, password: str, *, actor: Actor) -> None:
        """Set a password: an admin for anyone, a user for themself (``actor == name``)."""
        pw_hash = self._hasher().hash(self._check_password(password))
        if isinstance(actor, str) and actor.strip() == name:
            def run(conn: Connection) -> None:
                self._acting(conn, name, "viewer")
                conn.execute(T.users.update().where(T.users.c.name == name).values(pw_hash=pw_hash, updated=_now()))
                log_admin(conn, name, "user_password", name)

            self.tx.write(run)
            return
        self._change_user(name, actor, "user_password", {"pw_hash": pw_hash}, None)

    def authenticate(self, name: str, password: str) -> User:
        """Check a sign-in; returns the user.

        Raises:
            PermissionDenied: unknown user, wrong password or disabled account (one message for the
                first two, so names cannot be probed).
        """
        from argon2 import exceptions as argon_exc

        u = T.users
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
        if not row.active:
            raise PermissionDenied(f"user {row.name!r} is disabled", hint="ask an admin to enable you")
        if ph.check_needs_rehash(row.pw_hash):
            new = ph.hash(str(password))
            self.tx.write(lambda c: c.execute(u.update().where(u.c.name == row.name).values(pw_hash=new)))
        return self._user_from_row(row)

    def check_role(self, name: str, role: str) -> str:
        """Raise :class:`PermissionDenied` unless ``name`` may act as ``role`` now (open mode: anyone)."""
        return self.tx.read(lambda c: self._acting(c, name, role))

    def admin_log(self) -> list[dict[str, Any]]:
        """User and settings changes, oldest first."""
        a = T.admin_log
        rows = self.tx.read(lambda c: c.execute(sa.select(a).order_by(a.c.id)).all())
        return [{"id": r.id, "ts": r.ts, "actor": r.actor, "action": r.action, "target": r.target,
                 "detail": json.loads(r.detail) if r.detail else None} for r in rows]
