"""Review store (engine.store) on SQLite AND PostgreSQL: append-only audit log, undo,
decisions with base_event (stale ones refused), pair order, current-state tables, case states,
mask versions, users and roles, claims, settings, schema migrations and legacy import,
concurrent writer processes and a writer killed mid-write.

PostgreSQL runs on a throwaway server started by the ``pg_server`` fixture (skipped with a
message when the Debian binaries are absent)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from engine.errors import ClaimHeld, ConfigError, ConflictError, PermissionDenied, StaleDecision, StoreError
from engine.store import LOCAL_OPERATOR, SCHEMA_VERSION, ReviewStore, mask_digest
from engine.store.projection import clear_read_cache, rebuild_current
from engine.store.signin import SignInThrottled

REPO = Path(__file__).resolve().parents[2]
PW = "harbor-violet-piano-42"  # meets the default password policy (at least 12 characters, zxcvbn score >= 3)
PW2 = "quiet-lantern-meadow-7"


def mask(seed: int, shape: tuple[int, int] = (32, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) > 0.7).astype(np.uint8)


class FakeDataset:
    def load_mask(self, case_id: str) -> np.ndarray:
        return mask(0)


@pytest.fixture()
def store(store_url: str, tmp_path: Path) -> ReviewStore:
    s = ReviewStore(store_url, masks_dir=tmp_path / "masks", dataset=FakeDataset())
    yield s
    s.close()


def n_events(s: ReviewStore) -> int:
    return len(s.events())


# ----------------------------------------------------------------------------- decisions
def test_decisions_survive_reopen_and_keep_a_means_the_a_given(store_url: str, tmp_path: Path) -> None:
    with ReviewStore(store_url, masks_dir=tmp_path / "m") as s:
        assert s.schema_version == SCHEMA_VERSION
        e1 = s.record_decision("2_5", "2_13", "keep_a", "alice", "2_5 shows the nerve")
        s.record_group_decision(["7_1", "7_3", "7_2"], "needs_expert", "bob")
    with ReviewStore(store_url, masks_dir=tmp_path / "m") as s:  # a new connection sees the same state
        dec = s.decisions()
        pair = dec[("pair", ("2_13", "2_5"))]
        assert pair.decision == "keep_b"  # canonical: relative to the sorted ids
        assert (pair.a, pair.b, pair.given) == ("2_5", "2_13", "keep_a")  # as the reviewer gave it
        assert (pair.kept, pair.dropped) == (("2_5",), ("2_13",))
        assert pair.relative_to("2_5", "2_13") == "keep_a" and pair.relative_to("2_13", "2_5") == "keep_b"
        assert (pair.reviewer, pair.note, pair.event_id) == ("alice", "2_5 shows the nerve", e1)
        assert s.decision_for("2_5", "2_13") == pair == s.decision_for("2_13", "2_5")
        assert dec[("group", ("7_1", "7_2", "7_3"))].decision == "needs_expert"
        ev = s.events()
        assert [e.kind for e in ev] == ["decision", "decision"] and ev[0].ts < ev[1].ts
        assert s.integrity_check() == "ok"
        d = pair.to_dict()
        assert (d["a"], d["b"], d["decision"], d["kept"], d["dropped"], d["user"], d["event_id"]) == \
            ("2_5", "2_13", "keep_a", ["2_5"], ["2_13"], "alice", e1)


def test_second_reviewer_keep_b_reads_back_as_keep_b(store: ReviewStore) -> None:
    """The issue's bug: a reviewer's "keep B" on a pair shown as (9_1, 10_1) must not read back as keep A."""
    e = store.record_decision("9_1", "10_1", "keep_b", "reviewer2")  # "9_1" > "10_1" as strings
    d = store.decision_for("9_1", "10_1")
    assert d.relative_to("9_1", "10_1") == "keep_b" and d.given == "keep_b"
    assert (d.kept, d.dropped, d.event_id) == (("10_1",), ("9_1",), e)


def test_invalid_inputs_raise_project_errors(store: ReviewStore) -> None:
    with pytest.raises(ConfigError, match="keep_both"):
        store.record_decision("a", "b", "keep_maybe", "alice")
    with pytest.raises(ConfigError):
        store.record_group_decision(["a", "b"], "keep_a", "alice")  # keep_a is for pairs only
    with pytest.raises(StoreError):
        store.record_decision("a", "a", "keep_both", "alice")
    with pytest.raises(StoreError, match="reviewer"):
        store.record_decision("a", "b", "keep_both", "  ")
    with pytest.raises(ConfigError):
        store.set_case_state("a", "done", "alice")
    assert store.events() == []  # nothing half-written


def test_events_are_append_only_on_every_backend(store: ReviewStore) -> None:
    store.record_decision("a", "b", "keep_both", "alice")
    store.save_mask_version("a", mask(1), "alice")
    for sql in ("UPDATE events SET value = 'drop_both'", "DELETE FROM events", "DELETE FROM mask_versions",
                "UPDATE mask_versions SET author = 'mallory'"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.engine.begin() as c:
                c.exec_driver_sql(sql)
    if not store.is_sqlite:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.engine.begin() as c:
                c.exec_driver_sql("TRUNCATE events CASCADE")
    assert store.decisions()[("pair", ("a", "b"))].decision == "keep_both"
    assert store.latest_mask_version("a") == 1


def test_stale_decision_is_refused_naming_who_decided_what_and_when(store: ReviewStore) -> None:
    e1 = store.record_decision("p", "q", "keep_a", "alice")
    before = n_events(store)
    with pytest.raises(StaleDecision) as info:  # bob never saw alice's decision
        store.record_decision("p", "q", "keep_b", "bob")
    err = info.value
    assert (err.current_event, err.decided_by, err.decision_as_given, err.base_event) == (e1, "alice", "keep_a", None)
    assert err.decided_at == store.decision_for("p", "q").ts and err.exit_code == 3
    assert "alice" in str(err) and "keep_a" in str(err) and err.decided_at[:10] in str(err)
    with pytest.raises(StaleDecision):  # based on an event that is not the current decision
        store.record_decision("p", "q", "keep_b", "bob", base_event=e1 + 100)
    assert n_events(store) == before and store.decision_for("p", "q").event_id == e1  # nothing written
    e2 = store.record_decision("q", "p", "keep_a", "bob", base_event=e1)  # bob saw it: replaces it
    d = store.decision_for("p", "q")
    assert (d.event_id, d.reviewer, d.kept, d.dropped) == (e2, "bob", ("q",), ("p",))
    with pytest.raises(StaleDecision) as info:  # alice still looks at her own, now replaced, decision
        store.record_decision("p", "q", "union", "alice", base_event=e1)
    assert info.value.decided_by == "bob" and info.value.current_event == e2
    e3 = store.record_decision("p", "q", "union", "alice", force=True)
    assert store.decision_for("p", "q").event_id == e3
    assert store.events(since_id=e2)[0].payload["forced"] is True


def test_undo_targets_the_pair_given_and_undo_can_be_undone(store: ReviewStore) -> None:
    e1 = store.record_decision("a", "b", "keep_a", "alice")
    e2 = store.record_decision("a", "b", "union", "bob", base_event=e1)
    p2 = store.record_decision("c", "d", "drop_both", "bob")  # decided AFTER pair (a, b)
    u1 = store.undo_decision("b", "a", "bob", "wrong call")  # the pair on screen, not the last event
    assert store.decision_for("a", "b").event_id == e1  # back to alice's decision
    assert store.decision_for("c", "d").event_id == p2  # the other pair is untouched
    undo_event = store.events(since_id=p2)[0]
    assert (undo_event.kind, undo_event.ref, undo_event.payload["undone_kind"]) == ("undo", e2, "decision")
    with pytest.raises(StoreError, match="already undone"):
        store.undo(e2, "bob")
    with pytest.raises(StaleDecision):  # the reviewer saw e2, which is no longer current
        store.undo_decision("a", "b", "carol", base_event=e2)
    store.undo(e1, "alice")
    assert store.decision_for("a", "b") is None
    with pytest.raises(StoreError, match="no decision to undo"):
        store.undo_decision("a", "b", "alice")
    store.undo(u1, "carol", "bob was right after all")  # undo of an undo = redo
    assert store.decision_for("a", "b").decision == "union"
    assert len(store.events()) == 6  # nothing was ever removed
    with pytest.raises(StoreError, match="no event"):
        store.undo(999, "alice")


def test_current_tables_match_a_full_rebuild_from_the_log(store: ReviewStore) -> None:
    rng = np.random.default_rng(0)
    for i in range(120):
        a, b = f"c{rng.integers(8)}", f"c{rng.integers(8, 16)}"
        cur = store.decision_for(a, b)
        op = rng.integers(4)
        if op == 0 and cur is not None:
            store.undo_decision(a, b, "u")
        elif op == 1:
            store.set_case_state(a, ["accepted", "needs_fix"][i % 2], "u")
        elif op == 2 and store.case_states():
            store.undo(store.case_states()[sorted(store.case_states())[0]].event_id, "u")
        else:
            store.record_decision(a, b, ["keep_a", "keep_b", "union"][i % 3], "u",
                                  base_event=None if cur is None else cur.event_id)
        if i % 7 == 0:
            store.decisions()  # keep a cached copy that later reads refresh incrementally
    dec, states = store.decisions(), store.case_states()
    assert dec and states
    clear_read_cache()  # the incrementally refreshed copies equal a full read
    assert store.decisions() == dec and store.case_states() == states
    with store.engine.begin() as c:
        rebuild_current(c, store.dataset_key)
    assert store.decisions() == dec and store.case_states() == states
    undone = store.undone_ids()  # the tables hold the latest effective event per target
    latest: dict[tuple, int] = {}
    for e in store.events(kinds=["decision"]):
        if e.id not in undone:
            latest[(e.target_kind, e.members)] = e.id
    assert {k: d.event_id for k, d in dec.items()} == latest


def test_cached_reads_see_writes_from_other_processes(store_url: str, tmp_path: Path) -> None:
    s = ReviewStore(store_url, masks_dir=tmp_path / "m")
    s.record_decision("a", "b", "keep_a", "alice")
    first = s.decisions()
    assert s.decisions() == first and s.decisions() is not s.decisions()  # callers get their own dict
    code = ("import sys; sys.path.insert(0, %r); from engine.store import ReviewStore; "
            "s = ReviewStore(%r, masks_dir=%r); s.record_decision('c', 'd', 'drop_both', 'bob'); "
            "s.set_case_state('c', 'accepted', 'bob')") % (str(REPO), store_url, str(tmp_path / "m"))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert set(s.decisions()) == {("pair", ("a", "b")), ("pair", ("c", "d"))}
    assert s.case_states()["c"].state == "accepted"
    s.undo_decision("c", "d", "alice")
    assert set(s.decisions()) == {("pair", ("a", "b"))}
    s.close()


def test_bulk_decisions_are_all_or_nothing(store: ReviewStore) -> None:
    ids = store.record_decisions([("2_5", "2_1", "keep_a"), ("3_1", "3_2", "keep_b")], "bulk", "rule")
    assert len(ids) == 2 and ids[1] > ids[0]
    assert store.decision_for("2_1", "2_5").decision == "keep_b"  # canonical
    assert store.decision_for("2_1", "2_5").kept == ("2_5",)
    before = len(store.events())
    with pytest.raises(ConfigError):
        store.record_decisions([("4_1", "4_2", "keep_a"), ("5_1", "5_2", "not-a-decision")], "bulk")
    with pytest.raises(StaleDecision):  # 3_1/3_2 is decided already: the whole batch is refused
        store.record_decisions([("4_1", "4_2", "keep_a"), ("3_1", "3_2", "keep_a")], "bulk")
    assert len(store.events()) == before
    assert store.decision_for("4_1", "4_2") is None


def test_case_review_states(store: ReviewStore) -> None:
    assert store.case_state("x") == "unreviewed"
    e0 = store.set_case_state("x", "needs_fix", "alice", "nerve boundary off", base_event=0)
    with pytest.raises(StaleDecision, match="alice"):
        store.set_case_state("x", "accepted", "bob", base_event=0)  # bob saw no state
    e = store.set_case_state("x", "accepted", "bob", base_event=e0)
    assert store.case_state("x") == "accepted"
    store.undo(e, "bob")
    st = store.case_states()["x"]
    assert (st.state, st.reviewer, st.note) == ("needs_fix", "alice", "nerve boundary off")


# ----------------------------------------------------------------------------- mask versions
def test_mask_versions_conflict_revert_and_history(store: ReviewStore, store_url: str, tmp_path: Path) -> None:
    s = store
    m1, m2, m3 = mask(1), mask(2), mask(3)
    assert s.latest_mask_version("c") == 0
    assert s.save_mask_version("c", m1, "alice", "first fix", base_version=None) == 1
    assert s.case_state("c") == "corrected"
    assert s.save_mask_version("c", m2, "bob", base_version=1) == 2
    with pytest.raises(ConflictError) as info:  # alice still edits from version 1
        s.save_mask_version("c", m3, "alice", base_version=1)
    assert info.value.current_version == 2
    assert s.latest_mask_version("c") == 2
    assert np.array_equal(s.load_mask_version("c", 1), m1) and np.array_equal(s.load_mask_version("c", 2), m2)
    assert s.revert("c", 1, "carol", "bob's edit was wrong") == 3
    assert np.array_equal(s.load_mask_version("c", 3), m1)
    hist = s.mask_history("c")
    assert [h.version for h in hist] == [1, 2, 3] and hist[2].reverted_from == 1 and hist[0].base_version == 0
    assert hist[0].sha256 == hist[2].sha256 == mask_digest(m1)
    assert s.corrected_masks()["c"].version == 3
    assert s.revert("c", 0, "carol") == 4
    assert "c" not in s.corrected_masks()
    assert np.array_equal(s.load_mask_version("c", 4), mask(0))
    with pytest.raises(StoreError, match="no mask version 9"):
        s.load_mask_version("c", 9)
    referenced = {s.mask_file(h) for h in s.mask_history("c") if h.file}
    assert referenced == {tmp_path / "masks" / f"{mask_digest(m)}.png" for m in (m1, m2)}
    without = ReviewStore(store_url, masks_dir=tmp_path / "masks")
    with pytest.raises(StoreError, match="original"):
        without.load_mask_version("c", 0)
    from engine.io import write_mask_png

    write_mask_png(without.mask_file(hist[1]), mask(5))
    with pytest.raises(StoreError, match="hash"):
        without.load_mask_version("c", 2)
    without.close()


def test_datasets_sharing_a_store_are_kept_apart(store_url: str, tmp_path: Path) -> None:
    one = ReviewStore(store_url, masks_dir=tmp_path / "m", dataset_key="nerve-1")
    two = ReviewStore(store_url, masks_dir=tmp_path / "m", dataset_key="ptx-2")
    one.record_decision("a", "b", "keep_a", "alice")
    one.save_mask_version("a", mask(1), "alice")
    assert two.decisions() == {} and two.latest_mask_version("a") == 0 and two.events() == []
    assert two.save_mask_version("a", mask(2), "bob") == 1  # same case id, other dataset: its own history
    assert one.latest_mask_version("a") == 1 and len(one.decisions()) == 1
    one.close(), two.close()


# ----------------------------------------------------------------------------- users and roles
def test_open_mode_accepts_any_name_until_accounts_exist(store: ReviewStore) -> None:
    assert store.open_mode and not store.has_admin()
    store.record_decision("a", "b", "keep_a", "anyone")  # demo: no accounts, any author name
    store.add_user("root", "admin", PW)  # the first account needs no actor
    assert not store.open_mode and store.has_admin()
    before = n_events(store)
    with pytest.raises(PermissionDenied, match="unknown user") as info:
        store.record_decision("c", "d", "keep_a", "anyone")
    assert info.value.exit_code == 4 and n_events(store) == before
    with pytest.raises(PermissionDenied):
        store.add_user("eve", "admin", PW)  # no actor once accounts exist
    with pytest.raises(PermissionDenied):
        store.add_user("eve", "admin", PW, actor="nobody")


def test_roles_are_enforced_in_the_engine(store: ReviewStore, tmp_path: Path) -> None:
    store.add_user("root", "admin", PW)
    for name, role in (("vera", "viewer"), ("ann", "annotator"), ("rex", "reviewer")):
        store.add_user(name, role, PW, actor="root")
    before = n_events(store)
    with pytest.raises(PermissionDenied, match="viewer"):
        store.record_decision("a", "b", "keep_a", "vera")
    with pytest.raises(PermissionDenied):
        store.save_mask_version("c", mask(1), "vera")
    with pytest.raises(PermissionDenied, match="reviewer"):
        store.record_decision("a", "b", "keep_a", "ann")
    with pytest.raises(PermissionDenied):
        store.set_case_state("c", "accepted", "ann")
    assert n_events(store) == before
    assert store.save_mask_version("c", mask(1), "ann") == 1  # annotators save masks
    e = store.record_decision("a", "b", "keep_a", "rex")
    with pytest.raises(PermissionDenied):
        store.undo(e, "ann")
    with pytest.raises(PermissionDenied):
        store.set_data_roots([tmp_path], actor="rex")  # settings are admin-only
    with pytest.raises(PermissionDenied):
        store.add_user("x", "viewer", PW, actor="rex")
    store.disable_user("rex", actor="root")
    with pytest.raises(PermissionDenied, match="disabled"):
        store.record_decision("e", "f", "keep_a", "rex")
    store.set_role("ann", "reviewer", actor=LOCAL_OPERATOR)
    store.record_decision("e", "f", "keep_a", "ann")
    assert [u.to_dict() for u in store.users()] == [
        {"name": "ann", "role": "reviewer", "active": True}, {"name": "rex", "role": "reviewer", "active": False},
        {"name": "root", "role": "admin", "active": True}, {"name": "vera", "role": "viewer", "active": True}]
    with pytest.raises(StoreError, match="last active admin"):
        store.disable_user("root", actor="root")
    with pytest.raises(StoreError, match="exists"):
        store.add_user("ann", "viewer", PW, actor="root")
    with pytest.raises(ConfigError):
        store.add_user("../evil", "viewer", PW, actor="root")
    with pytest.raises(ConfigError):
        store.set_role("ann", "superuser", actor="root")
    log = store.admin_log()
    assert [r["action"] for r in log][:2] == ["user_add", "user_add"] and log[-1]["actor"].startswith("local:")


def test_authenticate_with_argon2_hashes(store: ReviewStore) -> None:
    store.add_user("root", "admin", "correct horse")
    with store.engine.connect() as c:
        h = c.exec_driver_sql("SELECT pw_hash FROM users").scalar()
    assert h.startswith("$argon2id$") and "correct horse" not in h
    assert store.authenticate("root", "correct horse").role == "admin"
    for name, pw in (("root", "wrong"), ("ghost", "correct horse")):
        with pytest.raises(PermissionDenied, match="wrong user name or password"):
            store.authenticate(name, pw)
    store.add_user("ann", "annotator", PW, actor="root")
    store.disable_user("ann", actor="root")
    with pytest.raises(PermissionDenied, match="disabled"):
        store.authenticate("ann", PW)
    store.set_password("root", PW2, actor="root")
    assert store.authenticate("root", PW2).name == "root"


def test_admin_settings_data_and_export_roots(store: ReviewStore, tmp_path: Path) -> None:
    store.add_user("root", "admin", PW)
    (tmp_path / "data").mkdir()
    (tmp_path / "exports").mkdir()
    assert store.data_roots() == [] and store.export_root() is None
    assert store.set_data_roots([tmp_path / "data"], actor="root") == [(tmp_path / "data").resolve()]
    store.set_export_roots([str(tmp_path / "exports")], actor="root")
    assert store.data_roots() == [(tmp_path / "data").resolve()]
    assert store.export_root() == (tmp_path / "exports").resolve()
    with pytest.raises(ConfigError, match="absolute"):
        store.set_data_roots(["relative/dir"], actor="root")
    with pytest.raises(ConfigError, match="not an existing folder"):
        store.set_data_roots([tmp_path / "missing"], actor="root")
    assert ReviewStore.path_under(tmp_path / "data" / "x" / "y.png", store.data_roots())
    assert not ReviewStore.path_under(tmp_path / "data" / ".." / "elsewhere", store.data_roots())


# ----------------------------------------------------------------------------- sign-in hygiene
class Clock:
    """An injectable clock for sign-in throttling (no real sleeping)."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _fail(s: ReviewStore, name: str, address: str | None = None, pw: str = "wrong-password-guess") -> None:
    """One refused sign-in with a wrong password (a SignInThrottled, refused before checking, propagates)."""
    try:
        s.authenticate(name, pw, address=address)
    except SignInThrottled:
        raise
    except PermissionDenied as exc:
        assert "wrong user name or password" in str(exc)
        return
    raise AssertionError(f"{name} signed in with a wrong password")


def test_signin_delays_grow_then_lock_out_persisted_across_a_restart(store_url: str, tmp_path: Path) -> None:
    clock = Clock()
    s = ReviewStore(store_url, masks_dir=tmp_path / "m")
    s.clock = clock
    s.add_user("root", "admin", PW)
    _fail(s, "root")
    _fail(s, "root")  # two free failures
    waits = []
    for _ in range(8):  # failures 3..10: each must wait before the next attempt
        _fail(s, "Root ")  # the name is keyed case-insensitively
        with pytest.raises(SignInThrottled) as info:
            s.authenticate("root", PW)  # even the right password is not checked while waiting
        waits.append(info.value.retry_at - clock.t)
        if info.value.locked:
            break
        assert "wait" in str(info.value) and not info.value.locked
        clock.t = info.value.retry_at
    assert waits[:7] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]  # exponential from the 3rd failure
    assert info.value.locked and waits[-1] == 3600.0 and "ask an admin to unlock" in str(info.value)
    assert "locked until" in str(info.value)
    s.close()
    s2 = ReviewStore(store_url, masks_dir=tmp_path / "m")  # a restart keeps the count (it is in the store)
    s2.clock = clock
    clock.t += 1800
    with pytest.raises(SignInThrottled, match="locked"):
        s2.authenticate("root", PW)
    (row,) = s2.signin_failures(locked_only=True)
    assert (row["kind"], row["key"], row["failures"], row["locked"]) == ("account", "root", 10, True)
    for _ in range(10):  # an unknown name is throttled just the same (nothing tells which names exist)
        _fail(s2, "ghost")
        clock.t += 400
    with pytest.raises(SignInThrottled, match="locked"):
        s2.authenticate("ghost", PW)
    clock.t += 3600  # the lock-out ends by itself
    assert s2.authenticate("root", PW).name == "root"
    _fail(s2, "root")
    _fail(s2, "root")
    assert s2.authenticate("root", PW).name == "root"  # success cleared the count: no delay now
    assert not [r for r in s2.signin_failures() if r["key"] == "root"]
    s2.close()


def test_one_password_over_many_names_is_throttled_per_address(store: ReviewStore) -> None:
    clock = Clock()
    store.clock = clock
    store.add_user("root", "admin", PW)
    attacker, colleague = "203.0.113.9", "198.51.100.4"
    for i in range(30):
        while True:
            try:
                _fail(store, f"user{i}", attacker, pw="Summer2024!")
                break
            except SignInThrottled as exc:
                assert exc.scope == "address" and not exc.locked
                clock.t = exc.retry_at
    with pytest.raises(SignInThrottled, match="network address") as info:
        store.authenticate("root", PW, address=attacker)
    assert info.value.locked and info.value.scope == "address"
    assert store.authenticate("root", PW, address=colleague).name == "root"  # other addresses are unaffected
    locked = store.signin_failures(locked_only=True)
    assert [(r["kind"], r["key"], r["failures"]) for r in locked] == [("address", attacker, 30)]


def test_unlock_by_an_admin_only_and_logged(store: ReviewStore) -> None:
    clock = Clock()
    store.clock = clock
    store.add_user("root", "admin", PW)
    store.add_user("ann", "annotator", PW, actor="root")
    for _ in range(10):
        _fail(store, "ann")
        clock.t += 1000
    with pytest.raises(SignInThrottled, match="locked"):
        store.authenticate("ann", PW)
    with pytest.raises(PermissionDenied, match="admin"):
        store.unlock_signin("ann", actor="ann")
    assert store.signin_failures(locked_only=True)
    assert store.unlock_signin("ANN", actor="root") is True
    assert store.authenticate("ann", PW).name == "ann"
    assert store.unlock_signin("ann", actor=LOCAL_OPERATOR) is False  # nothing left to lift
    log = [r for r in store.admin_log() if r["action"] == "signin_unlock"]
    assert [(r["actor"], r["target"], r["detail"]["failures"]) for r in log][0] == ("root", "ann", 10)
    assert log[-1]["actor"].startswith("local:")
    with pytest.raises(ConfigError, match="account"):
        store.unlock_signin("x", actor="root", kind="planet")


def test_password_policy_on_every_password_set(store: ReviewStore) -> None:
    for bad, why in (("Xy7!", "too short"), ("password123456", "too easy to guess"),
                     ("root-harbor-violet-92", "contains the user name"), ("qwertyuiop1234", "too easy to guess")):
        with pytest.raises(ConfigError, match=why) as info:
            store.add_user("root", "admin", bad)
        assert "at least 12 characters" in str(info.value)  # says what to do
    assert store.users() == []
    store.add_user("root", "admin", PW)
    store.add_user("rita@hospital.test", "reviewer", PW, actor="root")
    with pytest.raises(ConfigError, match="contains the user name"):
        store.set_password("rita@hospital.test", "rita-quiet-lantern-7", actor="root")
    with pytest.raises(ConfigError, match="too short"):
        store.set_password("root", "a", actor="root")
    assert store.authenticate("root", PW).name == "root"  # nothing changed
    with store.engine.begin() as c:  # an account from before the policy keeps its (weak) password
        from argon2 import PasswordHasher

        c.execute(sa.text("UPDATE users SET pw_hash = :h WHERE name = 'rita@hospital.test'"),
                  {"h": PasswordHasher().hash("pw")})
    assert store.authenticate("rita@hospital.test", "pw").role == "reviewer"
    # the policy is an admin setting (written to the admin log); the default is the strict one
    from engine.store.signin import SignInPolicy

    assert store.signin_policy() == SignInPolicy() and SignInPolicy().min_length == 12
    with pytest.raises(PermissionDenied):
        store.set_signin_policy(SignInPolicy(min_length=8), actor="rita@hospital.test")
    store.set_signin_policy(SignInPolicy(min_length=30, account_limit=5), actor="root")
    assert store.signin_policy().account_limit == 5
    with pytest.raises(ConfigError, match="at least 30"):
        store.add_user("vera", "viewer", PW, actor="root")
    assert store.admin_log()[-1]["target"] == "signin_policy" and store.admin_log()[-1]["actor"] == "root"
    with pytest.raises(ConfigError, match="unknown"):
        SignInPolicy.from_dict({"min_lenght": 3})


def test_admin_forced_password_change(store: ReviewStore) -> None:
    store.add_user("root", "admin", PW)
    store.add_user("vic", "viewer", PW, actor="root")
    assert not store.password_change_required("vic")
    with pytest.raises(PermissionDenied):
        store.require_password_change("root", actor="vic")
    store.require_password_change("vic", actor="root")
    assert store.password_change_required("vic") and store.admin_log()[-1]["action"] == \
        "user_require_password_change"
    assert store.authenticate("vic", PW).name == "vic"  # sign-in works; the app then asks for a new password
    with pytest.raises(ConfigError, match="same as the current"):
        store.set_password("vic", PW, actor="vic")
    with pytest.raises(ConfigError, match="too short"):
        store.set_password("vic", "short", actor="vic")
    assert store.password_change_required("vic")
    store.set_password("vic", PW2, actor="vic")
    assert not store.password_change_required("vic") and store.authenticate("vic", PW2).name == "vic"
    assert store.admin_log()[-1]["actor"] == "vic"
    store.set_password("vic", PW, actor="root", must_change=True)  # a temporary password from an admin
    assert store.password_change_required("vic")
    store.require_password_change("vic", actor=LOCAL_OPERATOR, required=False)
    assert not store.password_change_required("vic")


def test_client_address_trusts_forwarded_for_only_when_configured() -> None:
    from engine.store.signin import client_address

    assert client_address(None, None) == "local"
    assert client_address("203.0.113.9", "1.2.3.4") == "203.0.113.9"  # no trust: the header is ignored
    assert client_address(None, "1.2.3.4, 203.0.113.9", trusted_proxies=0) == "local"
    assert client_address(None, "1.2.3.4, 203.0.113.9", trusted_proxies=1) == "203.0.113.9"  # spoofed entry left
    assert client_address(None, "203.0.113.9, 10.0.0.2", trusted_proxies=2) == "203.0.113.9"
    assert client_address("::ffff:198.51.100.4", None) == "198.51.100.4"
    assert client_address("2001:db8::1", None) == client_address("2001:db8::2", None) == "2001:db8::/64"


def test_schema_4_migration_keeps_accounts(store_url: str, tmp_path: Path) -> None:
    from argon2 import PasswordHasher

    with ReviewStore(store_url, masks_dir=tmp_path / "m", schema_version=3) as s:
        with s.engine.begin() as c:  # an account as a version-3 program wrote it
            assert not sa.inspect(c).has_table("signin_failures")
            c.execute(sa.text("INSERT INTO users (name, role, pw_hash, active, created, updated) "
                              "VALUES ('root', 'admin', :h, :t, '2026-01-01', '2026-01-01')"),
                      {"h": PasswordHasher().hash(PW), "t": True})
    with ReviewStore(store_url, masks_dir=tmp_path / "m") as s:
        assert s.schema_version == SCHEMA_VERSION == 5
        assert s.authenticate("root", PW).role == "admin" and not s.password_change_required("root")
        s.require_password_change("root", actor="root")
        assert s.password_change_required("root")


# ----------------------------------------------------------------------------- claims
def test_case_claims_with_a_lease(store: ReviewStore) -> None:
    store.add_user("root", "admin", PW)
    for n, r in (("ann", "annotator"), ("bob", "annotator"), ("vera", "viewer")):
        store.add_user(n, r, PW, actor="root")
    c = store.claim("case1", "ann", ttl=60)
    assert (c.user, c.case_id) == ("ann", "case1") and 59 < c.seconds_left <= 60
    assert store.claim_for("case1").user == "ann"  # bob sees who is editing
    with pytest.raises(ClaimHeld, match="ann") as info:
        store.claim("case1", "bob")
    assert info.value.holder == "ann" and info.value.exit_code == 3
    with pytest.raises(ClaimHeld):
        store.release("case1", "bob")
    with pytest.raises(PermissionDenied):
        store.claim("case2", "vera")
    assert store.claim("case1", "ann", ttl=120).claimed == c.claimed  # renewal keeps the start
    assert store.release("case1", "ann") and store.claims() == {}
    store.claim("case3", "ann", ttl=0.3)
    time.sleep(0.5)
    assert store.claims() == {} and "case3" in store.claims(include_expired=True)  # expired = free
    assert store.claim("case3", "bob").user == "bob"
    assert store.release("case3", "root", force=True)


# ----------------------------------------------------------------------------- files, schema, legacy
def test_empty_or_foreign_file_is_an_error_not_a_new_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(StoreError, match="empty"):
        ReviewStore(empty)
    assert empty.stat().st_size == 0  # left untouched
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a review store"):
        ReviewStore(junk)
    other = tmp_path / "other.sqlite"
    raw = sqlite3.connect(other)
    raw.execute("CREATE TABLE events (x)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="not a review store"):
        ReviewStore(other)
    with pytest.raises(StoreError, match="folder"):
        ReviewStore(tmp_path)
    with pytest.raises(StoreError, match="unsupported"):
        ReviewStore("mysql://x@localhost/db")


def test_newer_schema_is_refused_and_old_schema_is_migrated(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    with ReviewStore(old, schema_version=1) as s:
        assert s.schema_version == 1
        with s.engine.begin() as c:  # a version-1 store as earlier programs wrote it
            c.exec_driver_sql("INSERT INTO events(ts, author, kind, target_kind, target, value, note) VALUES "
                              "('2026-01-01T00:00:00+00:00', 'alice', 'decision', 'pair', 'a\tb', 'keep_both', '')")
            assert not sa.inspect(c).has_table("mask_versions")
    with ReviewStore(old) as s:  # migrated on open, data kept, current tables back-filled
        assert s.schema_version == SCHEMA_VERSION
        assert s.decision_for("a", "b").decision == "keep_both"
        assert s.save_mask_version("a", mask(1), "alice") == 1
    raw = sqlite3.connect(old, isolation_level=None)
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(StoreError, match="upgrade"):
        ReviewStore(old)


def test_legacy_per_dataset_store_is_imported_once(tmp_path: Path) -> None:
    workdir = tmp_path / "ws" / "datasets" / "nerve-0123abcd"
    workdir.mkdir(parents=True)

    class DS(FakeDataset):
        root = tmp_path / "nerve"

    DS.workdir = workdir
    with ReviewStore(workdir / "review.sqlite", schema_version=2) as old:  # the old layout, in place
        with old.engine.begin() as c:
            c.exec_driver_sql("INSERT INTO events(ts, author, kind, target_kind, target, value, note) VALUES "
                              "('2026-01-01T00:00:00+00:00', 'alice', 'decision', 'pair', '1_1\t1_2', 'keep_b', '')")
            c.exec_driver_sql("INSERT INTO events(ts, author, kind, target_kind, target, value, note) VALUES "
                              "('2026-01-01T00:00:01+00:00', 'bob', 'decision', 'pair', '2_1\t2_2', 'drop_both', '')")
            c.exec_driver_sql("INSERT INTO events(ts, author, kind, target_kind, target, note, ref) VALUES "
                              "('2026-01-01T00:00:02+00:00', 'bob', 'undo', 'event', '2', '', 2)")
        sha, path = old.write_mask_file(mask(4))
        with old.engine.begin() as c:
            c.exec_driver_sql("INSERT INTO events(ts, author, kind, target_kind, target, value, note) VALUES "
                              "('2026-01-01T00:00:03+00:00', 'ann', 'mask_saved', 'case', '1_1', '1', '')")
            c.exec_driver_sql("INSERT INTO mask_versions(case_id, version, sha256, file, height, width, area, author, "
                              f"note, created, base_version, event_id) VALUES ('1_1', 1, '{sha}', 'masks/{path.name}', "
                              "32, 40, 1, 'ann', '', '2026-01-01', 0, 4)")
    with ReviewStore.for_dataset(DS()) as s:
        assert s.path == tmp_path / "ws" / "segwb.sqlite" and s.dataset_key == "nerve-0123abcd"
        assert s.masks_dir == tmp_path / "ws" / "masks"
        assert set(s.decisions()) == {("pair", ("1_1", "1_2"))}  # the undone decision stays undone
        assert s.decision_for("1_1", "1_2").kept == ("1_2",)
        assert np.array_equal(s.load_mask_version("1_1", 1), mask(4))
        n = len(s.events())
        assert n == 4
    with ReviewStore.for_dataset(DS()) as s:  # imported once only
        assert len(s.events()) == n
    assert (workdir / "review.sqlite").is_file()  # the old file is left in place


# ----------------------------------------------------------------------------- vocabulary and layout
def test_the_pair_decisions_and_the_pair_key_are_defined_once() -> None:
    """The store's vocabulary feeds the queue's labels and help; the queue's pair key is the store's."""
    from engine.curation import DECISION_HELP, DECISION_LABELS, key_text, parse_key
    from engine.curation import pair_key as queue_pair_key
    from engine.store.records import (
        DECISION_OPTIONS,
        GROUP_DECISIONS,
        PAIR_DECISIONS,
        _canonical_pair,
        pair_key,
        target_of,
    )

    assert list(DECISION_LABELS) == list(DECISION_HELP) == list(PAIR_DECISIONS) == [o.value for o in DECISION_OPTIONS]
    assert GROUP_DECISIONS == tuple(d for d in PAIR_DECISIONS if d not in ("keep_a", "keep_b"))
    shortcuts = [o.shortcut for o in DECISION_OPTIONS if o.shortcut]
    assert len(shortcuts) == len(set(shortcuts)) == len(PAIR_DECISIONS)
    assert queue_pair_key is pair_key and pair_key("2_5", "2_13") == ("2_13", "2_5")  # text order
    assert target_of(("b", "a")) == key_text(("b", "a")) == "a\tb" and parse_key("b\ta") == ("a", "b")
    assert _canonical_pair("b", "a", "keep_a") == ("a\tb", "keep_b")
    assert _canonical_pair("a", "b", "union") == ("a\tb", "union")


def _store_imports() -> dict[str, set[str]]:
    """engine.store's modules → the engine modules each imports, anywhere (function bodies included)."""
    import ast

    folder = REPO / "engine" / "store"
    mods = {f"engine.store.{p.stem}" if p.stem != "__init__" else "engine.store": p for p in folder.glob("*.py")}
    out: dict[str, set[str]] = {}
    for mod, path in mods.items():
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                subs = {f"{node.module}.{a.name}" for a in node.names}
                names |= (subs & set(mods)) or {node.module}
        out[mod] = {n for n in names if n.startswith("engine.")}
    return out


def test_the_store_sits_below_curation_without_import_cycles() -> None:
    graph = _store_imports()
    bad = sorted(f"{m} -> {n}" for m, ns in graph.items() for n in ns if n.startswith("engine.curation"))
    assert not bad, "engine.store must not import engine.curation: " + ", ".join(bad)
    inner = {m: {n for n in ns if n in graph and n != m} for m, ns in graph.items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, "import cycle: " + " -> ".join(path[path.index(m):] + [m])
        if m not in done:
            for n in sorted(inner[m]):
                visit(n, path + [m])
            done.add(m)

    for m in sorted(inner):
        visit(m, [])
    code = "import sys, engine.store, engine.store.records; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr  # the vocabulary is a light import


# ----------------------------------------------------------------------------- processes
_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    from engine.store import ReviewStore
    url, who, n, masks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    s = ReviewStore(url, timeout=60, masks_dir=masks)
    print("ready", flush=True)
    i = 0
    while n < 0 or i < n:
        eid = s.record_decision(f"{{who}}_{{i}}", f"{{who}}_{{i + 1}}", "keep_both", who)
        line = f"event {{eid}}"
        if i % 3 == 0:
            m = (np.arange(20 * 30).reshape(20, 30) % (i + 2) == 0).astype(np.uint8)
            v = s.save_mask_version(f"{{who}}_{{i}}", m, who)
            line += f" mask {{who}}_{{i}} {{v}}"
        print(line, flush=True)
        i += 1
""").format(repo=str(REPO))

_SAME_PAIR = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from engine.store import ReviewStore
    from engine.errors import StaleDecision
    url, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = ReviewStore(url, timeout=60, masks_dir="/nonexistent-unused")
    ok = stale = 0
    decisions = ["keep_a", "keep_b", "union", "keep_both"]
    while ok < n:
        cur = s.decision_for("x_1", "x_2")
        try:
            eid = s.record_decision("x_1", "x_2", decisions[ok % 4], who,
                                    base_event=None if cur is None else cur.event_id)
            print(f"ok {{eid}} {{None if cur is None else cur.event_id}}", flush=True)
            ok += 1
        except StaleDecision:
            stale += 1
    print(f"stale {{stale}}", flush=True)
""").format(repo=str(REPO))


def _spawn(tmp_path: Path, script: str, *args: str) -> subprocess.Popen:
    path = tmp_path / f"script{abs(hash(script)) % 10**8}.py"
    path.write_text(script)
    return subprocess.Popen([sys.executable, str(path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_processes_writing_at_once_lose_nothing(store_url: str, tmp_path: Path) -> None:
    ReviewStore(store_url, masks_dir=tmp_path / "m").close()
    n = 30
    procs = [_spawn(tmp_path, _WRITER, store_url, who, str(n), str(tmp_path / "m")) for who in ("p1", "p2")]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    with ReviewStore(store_url, masks_dir=tmp_path / "m") as s:
        decisions = s.events(kinds=["decision"])
        assert len(decisions) == 2 * n
        assert {e.author for e in decisions} == {"p1", "p2"}
        assert len(s.decisions()) == 2 * n
        assert s.integrity_check() == "ok"
        assert len(s.corrected_masks()) == 2 * len(range(0, n, 3))


def test_two_processes_deciding_the_same_pair_never_apply_a_stale_write(store_url: str, tmp_path: Path) -> None:
    """Two reviewers (OS processes) hammer ONE pair, each decision based on the one it read: every
    accepted write replaced exactly the decision its writer saw (a linear chain), none is lost."""
    ReviewStore(store_url, masks_dir=tmp_path / "m").close()
    n = 40
    procs = [_spawn(tmp_path, _SAME_PAIR, store_url, who, str(n)) for who in ("r1", "r2")]
    outs = [p.communicate(timeout=240) for p in procs]
    reported: list[tuple[int, int | None]] = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        for line in out.splitlines():
            if line.startswith("ok "):
                _, eid, base = line.split()
                reported.append((int(eid), None if base == "None" else int(base)))
    assert len(reported) == 2 * n
    with ReviewStore(store_url, masks_dir=tmp_path / "m") as s:
        events = s.events(kinds=["decision"])
        assert sorted(e.id for e in events) == sorted(eid for eid, _ in reported)  # nothing lost, nothing extra
        chain = sorted(events, key=lambda e: e.id)
        assert chain[0].payload.get("base_event") is None
        for prev, e in zip(chain, chain[1:]):  # each write was based on the decision right before it
            assert e.payload["base_event"] == prev.id
        assert s.decision_for("x_1", "x_2").event_id == chain[-1].id


def test_writer_killed_mid_write_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = tmp_path / "review.sqlite"
    ReviewStore(path).close()
    proc = _spawn(tmp_path, _WRITER, str(path), "k", "-1", str(tmp_path / "masks"))  # writes forever
    committed: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while len(committed) < 25 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("event"):
            committed.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)  # possibly in the middle of a transaction
    proc.wait(timeout=30)
    assert len(committed) >= 25, proc.stderr.read() if proc.stderr else ""
    with ReviewStore(path) as s:
        assert s.integrity_check() == "ok"
        ids = {e.id for e in s.events()}
        for line in committed:
            parts = line.split()
            assert int(parts[1]) in ids
            if "mask" in parts:
                case, version = parts[3], int(parts[4])
                mv = s.mask_version(case, version)
                assert mv is not None and s.mask_file(mv).exists()
                assert s.load_mask_version(case, version).shape == (20, 30)
        for case, mv in s.corrected_masks().items():
            assert s.mask_file(mv).exists()
        s.record_decision("after", "crash", "keep_both", "alice")


def test_two_processes_creating_a_new_store_at_once_share_it(store_url: str, tmp_path: Path) -> None:
    """Two app servers starting on a brand-new store (file or database) at the same moment."""
    procs = [_spawn(tmp_path, _WRITER, store_url, who, "3", str(tmp_path / "m")) for who in ("n1", "n2")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with ReviewStore(store_url, masks_dir=tmp_path / "m") as s:
        assert len(s.events(kinds=["decision"])) == 6 and s.schema_version == SCHEMA_VERSION
        if s.is_sqlite:
            assert not [p for p in s.path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary files left


# ----------------------------------------------------------------------------- small team-mode fixes
def test_role_messages_use_the_right_article(tmp_path: Path) -> None:
    from engine.store.records import a_role

    assert [a_role(r) for r in ("viewer", "annotator", "reviewer", "admin")] == [
        "a viewer", "an annotator", "a reviewer", "an admin"]
    with ReviewStore(tmp_path / "s.sqlite", masks_dir=tmp_path / "m") as s:
        s.add_user("root", "admin", PW)
        s.add_user("ann", "annotator", PW, actor="root")
        with pytest.raises(PermissionDenied, match="is an annotator; this needs the reviewer role") as info:
            s.record_decision("a", "b", "keep_a", "ann")
        assert " a annotator" not in str(info.value)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_corrected_masks_are_private_like_uploads(tmp_path: Path) -> None:
    """Mask PNGs 0600 and a masks folder the store creates 0700, whatever the umask (as engine.phi's uploads)."""
    old = os.umask(0o022)
    try:
        masks = tmp_path / "deep" / "masks"
        with ReviewStore(tmp_path / "s.sqlite", masks_dir=masks) as s:
            assert s.save_mask_version("c", mask(1), "alice") == 1
            assert s.save_mask_version("c", mask(2), "alice", base_version=1) == 2
            files = sorted(masks.glob("*.png"))
            assert len(files) == 2
            assert {f.stat().st_mode & 0o777 for f in files} == {0o600}
            assert masks.stat().st_mode & 0o777 == 0o700
            assert np.array_equal(s.load_mask_version("c", 2), mask(2))
        shared = tmp_path / "shared"  # a folder the admin made keeps its permissions; the files are still 0600
        shared.mkdir(mode=0o750)
        os.chmod(shared, 0o750)
        with ReviewStore(tmp_path / "t.sqlite", masks_dir=shared) as s:
            s.save_mask_version("c", mask(3), "alice")
        assert shared.stat().st_mode & 0o777 == 0o750
        assert {f.stat().st_mode & 0o777 for f in shared.glob("*.png")} == {0o600}
    finally:
        os.umask(old)


def test_admin_log_keeps_a_detail_that_is_not_json(tmp_path: Path) -> None:
    with ReviewStore(tmp_path / "s.sqlite", masks_dir=tmp_path / "m") as s:
        s.add_user("root", "admin", PW)
    con = sqlite3.connect(tmp_path / "s.sqlite")
    with con:
        con.execute("INSERT INTO admin_log (ts, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                    ("2026-01-02T03:04:05+00:00", "someone", "odd", "x", "{not json"))
    con.close()
    with ReviewStore(tmp_path / "s.sqlite", masks_dir=tmp_path / "m") as s:
        log = s.admin_log()
    assert log and log[-1]["detail"] == "{not json"
