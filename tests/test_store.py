"""Review store (engine.store): append-only audit log, undo, decisions, case states, mask versions,
schema versions and migrations, concurrent writers and a writer killed mid-write."""

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

from engine.errors import ConfigError, ConflictError, StoreError
from engine.store import SCHEMA_VERSION, ReviewStore, mask_digest

REPO = Path(__file__).resolve().parents[1]


def mask(seed: int, shape: tuple[int, int] = (32, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) > 0.7).astype(np.uint8)


@pytest.fixture()
def store(tmp_path: Path) -> ReviewStore:
    s = ReviewStore(tmp_path / "ws" / "review.sqlite")
    yield s
    s.close()


def test_decisions_survive_restart_and_pair_order_is_canonical(tmp_path: Path) -> None:
    path = tmp_path / "review.sqlite"
    with ReviewStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        e1 = s.record_decision("2_5", "2_13", "keep_a", "alice", "2_5 shows the nerve")
        s.record_group_decision(["7_1", "7_3", "7_2"], "needs_expert", "bob")
    with ReviewStore(path) as s:  # a new process/connection sees the same state
        dec = s.decisions()
        pair = dec[("pair", ("2_13", "2_5"))]
        assert pair.decision == "keep_b"  # keep_a referred to 2_5, the second id in sorted order
        assert (pair.reviewer, pair.note, pair.event_id) == ("alice", "2_5 shows the nerve", e1)
        assert s.decision_for("2_5", "2_13") == pair
        assert dec[("group", ("7_1", "7_2", "7_3"))].decision == "needs_expert"
        ev = s.events()
        assert [e.kind for e in ev] == ["decision", "decision"] and ev[0].ts < ev[1].ts
        assert s.integrity_check() == "ok"
        assert (tmp_path / "review.sqlite-wal").exists() or s._read("PRAGMA journal_mode")[0][0] == "wal"


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


def test_events_are_append_only(store: ReviewStore) -> None:
    store.record_decision("a", "b", "keep_both", "alice")
    raw = sqlite3.connect(store.path, isolation_level=None)  # autocommit: hold no lock after a failure
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE events SET value = 'drop_both'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM events")
        store.save_mask_version("a", mask(1), "alice")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM mask_versions")
    finally:
        raw.close()
    assert store.decisions()[("pair", ("a", "b"))].decision == "keep_both"


def test_undo_is_a_new_event_and_can_be_undone(store: ReviewStore) -> None:
    e1 = store.record_decision("a", "b", "keep_a", "alice")
    e2 = store.record_decision("a", "b", "union", "bob")
    assert store.decision_for("a", "b").decision == "union"
    u1 = store.undo(e2, "bob", "wrong pair")
    assert store.decision_for("a", "b").decision == "keep_a"  # back to the earlier decision
    undo_event = store.events(since_id=e2)[0]
    assert (undo_event.kind, undo_event.ref, undo_event.payload["undone_kind"]) == ("undo", e2, "decision")
    with pytest.raises(StoreError, match="already undone"):
        store.undo(e2, "bob")
    store.undo(e1, "alice")
    assert store.decision_for("a", "b") is None
    store.undo(u1, "carol", "bob was right after all")  # undo of an undo = redo
    assert store.decision_for("a", "b").decision == "union"
    assert len(store.events()) == 5  # nothing was ever removed
    with pytest.raises(StoreError, match="no event"):
        store.undo(999, "alice")


def test_bulk_decisions_are_all_or_nothing(store: ReviewStore) -> None:
    ids = store.record_decisions([("2_5", "2_1", "keep_a"), ("3_1", "3_2", "keep_b")], "bulk", "rule")
    assert len(ids) == 2 and ids[1] == ids[0] + 1
    # keep_a on the reversed pair ("2_5" > "2_1") is stored canonically as keep_b
    assert store.decision_for("2_1", "2_5").decision == "keep_b"
    before = len(store.events())
    with pytest.raises(ConfigError):
        store.record_decisions([("4_1", "4_2", "keep_a"), ("5_1", "5_2", "not-a-decision")], "bulk")
    assert len(store.events()) == before  # the valid first item was not recorded either
    assert store.decision_for("4_1", "4_2") is None


def test_case_review_states(store: ReviewStore) -> None:
    assert store.case_state("x") == "unreviewed"
    store.set_case_state("x", "needs_fix", "alice", "nerve boundary off")
    e = store.set_case_state("x", "accepted", "bob")
    assert store.case_state("x") == "accepted"
    store.undo(e, "bob")
    st = store.case_states()["x"]
    assert (st.state, st.reviewer, st.note) == ("needs_fix", "alice", "nerve boundary off")


def test_mask_versions_conflict_revert_and_history(tmp_path: Path) -> None:
    class FakeDataset:
        def load_mask(self, case_id: str) -> np.ndarray:
            return mask(0)

    s = ReviewStore(tmp_path / "review.sqlite", dataset=FakeDataset())
    m1, m2, m3 = mask(1), mask(2), mask(3)
    assert s.latest_mask_version("c") == 0
    assert s.save_mask_version("c", m1, "alice", "first fix", base_version=None) == 1
    assert s.case_state("c") == "corrected"
    assert s.save_mask_version("c", m2, "bob", base_version=1) == 2
    with pytest.raises(ConflictError) as info:  # alice still edits from version 1: someone saved meanwhile
        s.save_mask_version("c", m3, "alice", base_version=1)
    assert info.value.current_version == 2
    assert s.latest_mask_version("c") == 2  # the failed save left nothing behind
    assert np.array_equal(s.load_mask_version("c", 1), m1) and np.array_equal(s.load_mask_version("c", 2), m2)
    assert s.load_mask_version("c", 1).dtype == np.uint8
    assert s.revert("c", 1, "carol", "bob's edit was wrong") == 3
    assert np.array_equal(s.load_mask_version("c", 3), m1)
    hist = s.mask_history("c")
    assert [h.version for h in hist] == [1, 2, 3] and hist[2].reverted_from == 1 and hist[0].base_version == 0
    assert hist[0].sha256 == hist[2].sha256 == mask_digest(m1)  # same content, same PNG file
    assert s.corrected_masks()["c"].version == 3
    assert s.revert("c", 0, "carol") == 4  # back to the dataset's original
    assert "c" not in s.corrected_masks()
    assert np.array_equal(s.load_mask_version("c", 4), mask(0))
    with pytest.raises(StoreError, match="no mask version 9"):
        s.load_mask_version("c", 9)
    with pytest.raises(StoreError, match="no mask version 7"):
        s.revert("c", 7, "carol")
    referenced = {s.mask_file(h) for h in s.mask_history("c") if h.file}
    assert referenced == {tmp_path / "masks" / f"{mask_digest(m)}.png" for m in (m1, m2)}  # content-addressed
    # (the refused save of m3 may leave an unreferenced PNG: harmless, never read)
    from engine.io import read_mask

    assert np.array_equal(read_mask(s.mask_file(hist[1]))[0], m2)  # lossless PNG on disk
    s.close()
    without = ReviewStore(tmp_path / "review.sqlite")
    with pytest.raises(StoreError, match="original"):
        without.load_mask_version("c", 0)
    # a PNG changed behind the store's back is detected
    path = without.mask_file(hist[1])
    from engine.io import write_mask_png

    write_mask_png(path, mask(5))
    with pytest.raises(StoreError, match="hash"):
        without.load_mask_version("c", 2)
    without.close()


def test_newer_schema_is_refused_and_old_schema_is_migrated(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    with ReviewStore(old, schema_version=1) as s:
        assert s.schema_version == 1
        s.record_decision("a", "b", "keep_both", "alice")
        tables = {r[0] for r in s._read("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "mask_versions" not in tables
    with ReviewStore(old) as s:  # migrated on open, data kept
        assert s.schema_version == SCHEMA_VERSION
        assert s.decision_for("a", "b").decision == "keep_both"
        assert s.save_mask_version("a", mask(1), "alice") == 1
    raw = sqlite3.connect(old, isolation_level=None)
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(StoreError, match="upgrade"):
        ReviewStore(old)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a review store"):
        ReviewStore(junk)


_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    from engine.store import ReviewStore
    path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = ReviewStore(path, timeout=60)
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


def _spawn(tmp_path: Path, path: Path, who: str, n: int) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    return subprocess.Popen([sys.executable, str(script), str(path), who, str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "review.sqlite"
    ReviewStore(path).close()
    n = 30
    procs = [_spawn(tmp_path, path, who, n) for who in ("p1", "p2")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    with ReviewStore(path) as s:
        decisions = s.events(kinds=["decision"])
        assert len(decisions) == 2 * n
        assert {e.author for e in decisions} == {"p1", "p2"}
        assert len({e.id for e in s.events()}) == len(s.events())
        assert s.integrity_check() == "ok"
        assert len(s.corrected_masks()) == 2 * len(range(0, n, 3))


def test_writer_killed_mid_write_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = tmp_path / "review.sqlite"
    ReviewStore(path).close()
    proc = _spawn(tmp_path, path, "k", -1)  # writes forever
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
        for line in committed:  # everything reported as committed is there
            parts = line.split()
            assert int(parts[1]) in ids
            if "mask" in parts:
                case, version = parts[3], int(parts[4])
                mv = s.mask_version(case, version)
                assert mv is not None and s.mask_file(mv).exists()
                assert s.load_mask_version(case, version).shape == (20, 30)
        for case, mv in s.corrected_masks().items():  # every row has its PNG
            assert s.mask_file(mv).exists()
        # the store keeps working after the crash
        s.record_decision("after", "crash", "keep_both", "alice")
