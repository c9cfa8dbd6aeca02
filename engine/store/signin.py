"""Sign-in hygiene of the review store: the password policy, sign-in throttling with lock-out, and the
client address behind a reverse proxy. Pure functions and records; the store applies them
(:mod:`engine.store.users`), the app passes the client address (``ui/auth.py``).

- **Password policy** (:func:`password_problem`): at least ``min_length`` characters (default 12),
  not containing the user name, and a zxcvbn strength score (0-4, the estimator Dropbox published,
  with its list of common passwords and words) of at least ``min_score`` (default 3). Applied
  whenever a password is SET; existing accounts keep their passwords.
- **Throttling** (:func:`throttle_wait`): failed sign-ins are counted per account name (existing or
  not, so nothing reveals which names exist) AND per client address, in the store (shared by every
  app server, kept across restarts). After ``free_failures`` failures of an account (default 2) each
  further attempt must wait ``base_delay * 2**k`` seconds (2, 4, 8, … at most ``max_delay``); at
  ``account_limit`` failures (default 10) the account is locked for ``lockout`` seconds (default 1 h)
  unless an admin unlocks it. An address gets the same from ``address_free_failures`` (10) up to
  ``address_limit`` (30). Failures older than ``window`` seconds (counted from the latest) are
  forgotten. A successful sign-in clears the account's count (not the address's).
- **Browser sessions** (team mode, :mod:`engine.store.sessions`): a session ends after
  ``session_idle`` seconds without a page interaction (default 30 min) and ``session_lifetime``
  seconds after sign-in whatever happens (default 12 h).

Example:
    >>> p = SignInPolicy()
    >>> throttle_wait(3, last_failed=100.0, now=101.0, free=p.free_failures, limit=p.account_limit, policy=p)
    (1.0, False)
    >>> password_problem("ana", "ana-2024", p) is not None
    True
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

from engine.errors import ConfigError, PermissionDenied

#: zxcvbn reads at most this many characters (it refuses longer input; the rest adds strength anyway)
_ZXCVBN_MAX = 72
MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True)
class SignInPolicy:
    """Password rules and sign-in throttling of a store (an admin setting, JSON in ``settings``).

    Times are seconds. ``min_score`` is zxcvbn's 0 (guessable) … 4 (very hard to guess).
    """

    min_length: int = 12
    min_score: int = 3
    free_failures: int = 2
    address_free_failures: int = 10
    base_delay: float = 2.0
    max_delay: float = 300.0
    account_limit: int = 10
    address_limit: int = 30
    window: float = 3600.0
    lockout: float = 3600.0
    session_idle: float = 1800.0
    session_lifetime: float = 43200.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"sign-in policy: {f.name} must be a number >= 0, got {v!r}",
                                  hint=f"the default is {f.default}")
        if self.min_score > 4:
            raise ConfigError(f"sign-in policy: min_score is 0-4, got {self.min_score}", hint="3 is the default")
        if self.session_idle < 60 or self.session_lifetime < self.session_idle:
            raise ConfigError("sign-in policy: session_idle must be at least 60 s and session_lifetime at least "
                              f"session_idle (got {self.session_idle} and {self.session_lifetime})",
                              hint="defaults: 1800 s idle, 43200 s (12 h) lifetime")
        if self.account_limit < 1 or self.address_limit < 1:
            raise ConfigError("sign-in policy: account_limit and address_limit must be at least 1",
                              hint="defaults: 10 per account, 30 per address")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SignInPolicy:
        """A policy from JSON; unknown keys are refused, missing ones take the defaults."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"sign-in policy: unknown setting(s) {', '.join(bad)}",
                              hint=f"valid: {', '.join(sorted(known))}")
        return cls(**d)


class SignInThrottled(PermissionDenied):
    """Sign-in refused before the password was checked: too many recent failures for this account name
    or this client address. ``retry_at`` (UNIX seconds) says when to try again; ``locked``: a lock-out
    (an admin can lift it) rather than a short delay; ``scope``: ``account`` or ``address``."""

    def __init__(self, retry_at: float, now: float, *, locked: bool, scope: str):
        self.retry_at, self.locked, self.scope = float(retry_at), bool(locked), scope
        whose = "for this user name" if scope == "account" else "from your network address"
        if locked:
            when = datetime.fromtimestamp(retry_at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            msg = f"too many failed sign-ins {whose}: sign-in is locked until {when}"
            how = "users unlock NAME" if scope == "account" else "users unlock ADDRESS --address"
            hint = f"try again then, or ask an admin to unlock it (Admin page, or: python -m engine {how})"
        else:
            msg = f"too many failed sign-ins {whose}: wait {max(1, round(retry_at - now))} s and try again"
            hint = "check the user name and password; an admin can reset a password"
        super().__init__(msg, hint=hint)


def throttle_wait(failures: int, *, last_failed: float, now: float, free: int, limit: int,
                  policy: SignInPolicy) -> tuple[float, bool]:
    """``(seconds to wait, locked)`` after ``failures`` recent failures, the latest at ``last_failed``.

    No wait up to ``free`` failures; then ``base_delay * 2**(failures - free - 1)`` (at most
    ``max_delay``); from ``limit`` failures a lock-out of ``lockout`` seconds.
    """
    if failures >= limit:
        return max(0.0, last_failed + policy.lockout - now), True
    if failures <= free:
        return 0.0, False
    delay = min(policy.max_delay, policy.base_delay * 2.0 ** (failures - free - 1))
    return max(0.0, last_failed + delay - now), False


def expired(failures: int, *, last_failed: float, now: float, limit: int, policy: SignInPolicy) -> bool:
    """True when a failure count no longer matters (quiet for ``window`` s, or its lock-out is over)."""
    if failures >= limit:
        return now >= last_failed + policy.lockout
    return now - last_failed > policy.window


def account_key(name: object) -> str:
    """The throttling key of an account name (case-insensitive, trimmed; unknown names count too)."""
    return str(name or "").strip().lower()[:256]


def password_problem(name: str, password: str, policy: SignInPolicy) -> str | None:
    """Why ``password`` is refused for user ``name`` (a sentence saying what to do), or None when it is fine."""
    if len(password) < policy.min_length:
        return (f"the password is too short ({len(password)} characters): use at least {policy.min_length}, "
                "e.g. three or four unrelated words")
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password is longer than {MAX_PASSWORD_LENGTH} characters: use a shorter one"
    low = password.lower()
    parts = {str(name or "").strip().lower()} | {p for p in str(name or "").lower().replace("@", ".").split(".")}
    if any(len(p) >= 3 and p in low for p in parts):
        return "the password contains the user name: choose one that does not"
    if policy.min_score <= 0:
        return None
    from zxcvbn import zxcvbn

    res = zxcvbn(password[:_ZXCVBN_MAX], user_inputs=[p for p in parts if p])
    if int(res["score"]) >= policy.min_score:
        return None
    fb = res.get("feedback") or {}
    why = " ".join(s for s in [fb.get("warning") or ""] + list(fb.get("suggestions") or []) if s)
    return ("the password is too easy to guess" + (f" ({why.rstrip('.')})" if why else "") +
            ": use a longer one of unrelated words, or a password manager's random one")


def check_password(name: str, password: object, policy: SignInPolicy) -> str:
    """The password (one line, CR/LF stripped) if it meets the policy.

    Raises:
        ConfigError: missing, or refused by the policy (the message says what to do).
    """
    if not isinstance(password, str) or not password.strip("\r\n"):
        raise ConfigError("a password is required", hint="pass one line on stdin or set SEGWB_PASSWORD")
    pw = password.strip("\r\n")
    problem = password_problem(name, pw, policy)
    if problem:
        raise ConfigError(f"password not accepted: {problem}",
                          hint=f"at least {policy.min_length} characters, not containing the user name, and not a "
                               "common or guessable password")
    return pw


#: the environment variable naming how many reverse proxies in front of the app to trust
TRUSTED_PROXIES_ENV = "SEGWB_TRUSTED_PROXIES"


def trusted_proxies() -> int:
    """How many reverse proxies in front of the app set ``X-Forwarded-For`` (``$SEGWB_TRUSTED_PROXIES``;
    0 — believe only the connection's address — when unset or not a number)."""
    import os

    try:
        return max(0, int(os.environ.get(TRUSTED_PROXIES_ENV, "0") or 0))
    except ValueError:
        return 0
LOCAL_ADDRESS = "local"


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: int = 0) -> str:
    """The client address that sign-in throttling keys on.

    ``peer``: the connection's address (Streamlit gives None for this machine). ``forwarded_for``:
    the ``X-Forwarded-For`` header, used ONLY when ``trusted_proxies`` > 0 (the number of reverse
    proxies in front of the app, each appending the address it saw): the address that many entries
    from the right is the client (entries further left are whatever the client claimed). Without
    trust, every client of a proxy on this machine shares the address ``local``.
    """
    addr = (peer or "").strip()
    if trusted_proxies > 0 and forwarded_for:
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        if hops:
            addr = hops[max(0, len(hops) - int(trusted_proxies))]
    if not addr:
        return LOCAL_ADDRESS
    try:
        ip = ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        return addr[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif not ip.is_loopback:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))  # one IPv6 client owns a whole /64
    return LOCAL_ADDRESS if ip.is_loopback else str(ip)
