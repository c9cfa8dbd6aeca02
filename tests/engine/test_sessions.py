"""Browser sessions of the review store (team mode's cookie): signing, idle timeout, lifetime, sign-out
here and everywhere, disabled accounts, claims released with the last session — on SQLite and
PostgreSQL (the ``store_url`` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError, PermissionDenied
from engine.store import LOCAL_OPERATOR, ReviewStore
from engine.store.sessions import TOUCH_EVERY, sign_token, token_hash, verify_cookie
from engine.store.signin import SignInPolicy

PW = "harbor-violet-piano-42"


class Clock:
    def __init__(self, t: float = 1_900_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def store(store_url: str, tmp_path: Path):
    s = ReviewStore(store_url, masks_dir=tmp_path / "masks", dataset_key="ds1")
    s.clock = Clock()
    for name, role in (("ana", "admin"), ("bo", "annotator"), ("cy", "reviewer")):
        s.add_user(name, role, PW, actor=LOCAL_OPERATOR)
    yield s
    s.close()


def test_cookie_signature_detects_tampering(store: ReviewStore) -> None:
    key = store.session_key()
    assert store.session_key() == key and len(key) == 32  # made once, kept in the store
    token = store.open_session("ana", via="password", address="10.0.0.7")
    value = sign_token(token, key)
    assert verify_cookie(value, key) == token
    for bad in (value[:-1] + ("A" if value[-1] != "A" else "B"), token, f"{token}.", "", "x" * 500,
                f"{token[:-1]}Z.{value.split('.')[1]}", value + ".x"):
        assert verify_cookie(bad, key) is None, bad
    assert verify_cookie(value, b"another key" * 3) is None
    assert store.session(token_hash(token)) is None  # the stored hash is not a token


def test_idle_timeout_touch_and_lifetime(store: ReviewStore) -> None:
    clock = store.clock
    token = store.open_session("bo", via="password")
    policy = store.signin_policy()
    clock.t += policy.session_idle - 1
    s = store.session(token)  # activity just before the idle limit pushes it back
    assert s is not None and s.last_seen == clock.t
    clock.t += policy.session_idle - 1
    assert store.session(token, touch=False) is not None  # a check that is not activity...
    clock.t += 2
    assert store.session(token, touch=False) is None  # ...does not extend it: idle → ended
    ended = store.sessions("bo", include_ended=True)[0]
    assert ended.ended == clock.t and "idle" in (ended.end_reason or "")
    assert store.session(token) is None  # and stays ended

    token = store.open_session("bo", via="password")
    start = clock.t
    while clock.t < start + policy.session_lifetime - policy.session_idle:  # busy all day...
        clock.t += policy.session_idle / 2
        assert store.session(token) is not None
    clock.t = start + policy.session_lifetime
    s = store.sessions("bo")[0]
    assert store.session(token) is None  # ...still ends at the absolute lifetime
    assert "lifetime" in (store.sessions("bo", include_ended=True)[0].end_reason or "") and s.expires == clock.t


def test_touch_is_rate_limited(store: ReviewStore) -> None:
    token = store.open_session("bo", via="password")
    t0 = store.clock.t
    store.clock.t += TOUCH_EVERY / 2
    assert store.session(token).last_seen == t0  # not written again so soon
    store.clock.t += TOUCH_EVERY
    assert store.session(token).last_seen == store.clock.t


def test_sign_out_here_and_everywhere_and_claims(store: ReviewStore) -> None:
    phone = store.open_session("bo", via="password", address="10.0.0.8")
    laptop = store.open_session("bo", via="password", address="10.0.0.9")
    store.claim("c1", "bo")
    assert store.end_session(phone) and not store.end_session(phone)  # ended once
    assert store.session(phone) is None and store.session(laptop) is not None
    assert store.claim_for("c1") is not None  # bo is still signed in on the laptop: the claim stays
    store.end_session(laptop)
    assert store.claim_for("c1") is None  # the last session ended: claims released

    a, b = (store.open_session("bo", via="password") for _ in range(2))
    other = store.open_session("cy", via="password")
    store.claim("c2", "bo")
    assert store.end_user_sessions("bo", actor="bo") == 2
    assert store.session(a) is None and store.session(b) is None and store.session(other) is not None
    assert store.claim_for("c2") is None
    with pytest.raises(PermissionDenied):  # only an admin ends someone else's sessions
        store.end_user_sessions("cy", actor="bo")
    assert store.end_user_sessions("cy", actor="ana") == 1
    assert any(r["action"] == "end-sessions" for r in store.admin_log())


def test_disabled_or_unknown_users_get_no_session(store: ReviewStore) -> None:
    token = store.open_session("bo", via="password")
    store.claim("c3", "bo")
    store.disable_user("bo", actor="ana")
    assert store.session(token) is None and store.claim_for("c3") is None
    assert "disabled" in (store.sessions("bo", include_ended=True)[0].end_reason or "")
    with pytest.raises(PermissionDenied):
        store.open_session("bo", via="password")
    with pytest.raises(PermissionDenied):
        store.open_session("nobody", via="password")


def test_sweep_ends_expired_sessions_and_releases_claims(store: ReviewStore) -> None:
    store.open_session("bo", via="password")
    store.claim("c4", "bo")
    store.clock.t += store.signin_policy().session_idle + 1
    store.open_session("cy", via="password")  # any sign-in sweeps
    assert store.sessions("bo") == [] and store.claim_for("c4") is None


def test_session_policy_is_validated() -> None:
    assert SignInPolicy.from_dict({"session_idle": 600}).session_idle == 600
    for bad in ({"session_idle": 10}, {"session_idle": 7200, "session_lifetime": 3600}):
        with pytest.raises(ConfigError):
            SignInPolicy.from_dict(bad)
