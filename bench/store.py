"""Benchmark: review-store reads at 150k events and concurrent writers, on SQLite and PostgreSQL.

1. **Decision reads at N events** (default 150,000): the log is filled in bulk with decisions on
   ``--pairs`` pairs (re-decided many times, every 25th undone) and case-state events, and the
   current-state tables rebuilt from it (as a migration does); then the public
   reads are timed: ``decisions()`` (goal < 20 ms) uncached (right after a change) and unchanged
   (revision cache hit), a decision followed by the read that must show it, ``case_states()``,
   ``decision_for()``, and
   for comparison the old way of deriving the state by scanning the whole log
   (``events(kinds=["decision"])`` + ``undone_ids()``, what ``decisions()`` did before the
   current-state tables).
2. **Two writer processes** (``--writes`` decisions each), timed from a common start:
   - *distinct pairs*: each process decides its own new pairs → decisions/s in total;
   - *same pair*: both hammer one pair with ``base_event`` (read, decide; a stale refusal
     re-reads and retries) → accepted decisions/s, stale refusals, and a check that the
     accepted writes form one chain (no stale write applied, none lost).

SQLite: a file in a temp folder (WAL, synchronous=FULL). PostgreSQL: a throwaway local server
(tests/support/pgserver.py, fsync ON, default settings otherwise) — skipped with a note when the Debian
binaries are absent. Prints a table and saves ``bench/results/store.json``.

Usage:
    python bench/store.py                       # both backends, 150k events
    python bench/store.py --events 20000 --backends sqlite
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import median, save_result  # noqa: E402


def fill(store, n_events: int, n_pairs: int, progress: bool = True) -> dict:
    """Append ``n_events`` to the log in bulk (10,000 rows per statement): decisions spread over
    ``n_pairs`` pairs (each re-decided many times, in both pair orders), every 25th decision undone,
    and one case-state event per 10 decisions; then rebuild the current-state tables from the log
    (the state reads see is the same whichever way the events were written; the per-call write
    path is measured separately by the two-writer runs)."""
    import json

    import numpy as np
    import sqlalchemy as sa

    from engine.store import tables as S
    from engine.store.projection import rebuild_current
    from engine.store.records import _canonical_pair, _now

    rng = np.random.default_rng(0)
    choices = ["keep_a", "keep_b", "keep_both", "union", "not_duplicate", "drop_both"]
    n_dec = int(n_events / (1 + 1 / 25 + 1 / 10))
    t0 = time.perf_counter()
    key = store.dataset_key
    rows = []
    for k in range(n_dec):
        i = int(rng.integers(n_pairs))
        a, b = f"{i // 120 + 1}_{i % 120 + 1}", f"{i // 120 + 1}_{i % 120 + 2}"
        if k % 2:
            a, b = b, a
        given = choices[k % len(choices)]
        target, canon = _canonical_pair(a, b, given)
        rows.append({"ts": _now(), "author": f"r{k % 7}", "kind": "decision", "target_kind": "pair",
                     "target": target, "value": canon, "note": "", "ref": None, "dataset": key,
                     "payload": json.dumps({"a": a, "b": b, "given": given}, sort_keys=True)})
        if k % 10 == 0:
            rows.append({"ts": _now(), "author": f"r{k % 7}", "kind": "case_state", "target_kind": "case",
                         "target": a, "value": ["accepted", "needs_fix"][k % 2], "note": "", "ref": None,
                         "dataset": key, "payload": None})

    def insert(batch: list[dict]) -> None:
        store.tx.write(lambda c: c.execute(S.events.insert(), batch))

    for j in range(0, len(rows), 10_000):
        insert(rows[j:j + 10_000])
        if progress:
            print(f"\r  appended {j + len(rows[j:j + 10_000]):,} events", end="", file=sys.stderr, flush=True)
    ev = S.events
    ids = store.tx.read(lambda c: c.execute(sa.select(ev.c.id).where(ev.c.dataset == key, ev.c.kind == "decision")
                                            .order_by(ev.c.id)).scalars().all())
    undos = [{"ts": _now(), "author": "r0", "kind": "undo", "target_kind": "event", "target": str(e), "value": None,
              "note": "", "ref": int(e), "dataset": key, "payload": None} for e in ids[::25]]
    remaining = n_events - len(rows)
    undos = undos[:max(0, remaining)]
    for j in range(0, len(undos), 10_000):
        insert(undos[j:j + 10_000])
    fill_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    store.tx.write(lambda c: rebuild_current(c, key))
    n = store.tx.read(lambda c: c.execute(sa.select(sa.func.count()).select_from(ev)).scalar())
    if progress:
        print(file=sys.stderr)
    return {"events": int(n), "append_s": round(fill_s, 2), "rebuild_current_s": round(time.perf_counter() - t1, 2)}


def time_reads(store, repeats: int) -> dict:
    """Median times of the public reads; ``*_uncached_ms`` drop the revision cache before each call
    (the cost right after anyone wrote), ``*_ms`` are repeated reads with nothing changed."""
    from engine.store.projection import clear_read_cache

    def timed(fn, n=repeats, cold: bool = False) -> tuple[float, object]:
        out = fn()  # warm (connection pool)
        ts = []
        for _ in range(n):
            if cold:
                clear_read_cache()
            t = time.perf_counter()
            out = fn()
            ts.append(time.perf_counter() - t)
        return median(ts), out

    t_cold, dec = timed(store.decisions, cold=True)
    t_dec, _ = timed(store.decisions)
    t_states_cold, states = timed(store.case_states, cold=True)
    t_states, _ = timed(store.case_states)
    some = next(iter(dec.values()))
    t_one, _ = timed(lambda: store.decision_for(some.a, some.b))

    def write_then_read() -> None:  # a decision by someone, then the read that has to see it
        cur = store.decision_for("w_1", "w_2")
        store.record_decision("w_1", "w_2", "keep_a", "bench", base_event=None if cur is None else cur.event_id)
        store.decisions()

    t_wr, _ = timed(write_then_read, n=max(5, repeats // 3))

    def full_scan() -> int:  # the old derivation: whole log + all undos
        undone = store.undone_ids()
        return len([e for e in store.events(kinds=["decision"]) if e.id not in undone])

    t_scan, _ = timed(full_scan, n=max(3, repeats // 5))
    return {"decisions_uncached_ms": round(t_cold * 1e3, 2), "decisions_ms": round(t_dec * 1e3, 3),
            "n_decided_pairs": len(dec), "case_states_uncached_ms": round(t_states_cold * 1e3, 2),
            "case_states_ms": round(t_states * 1e3, 3), "n_case_states": len(states),
            "decision_for_ms": round(t_one * 1e3, 3), "decide_then_decisions_ms": round(t_wr * 1e3, 2),
            "full_log_scan_ms": round(t_scan * 1e3, 1), "repeats": repeats}


_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from engine.store import ReviewStore
    from engine.errors import StaleDecision
    url, who, n, mode, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    s = ReviewStore(url, timeout=120, masks_dir="/nonexistent-unused")
    s.decisions()  # connect before the start
    while time.time() < start_at:
        time.sleep(0.001)
    ok = stale = 0
    while ok < n:
        if mode == "distinct":
            s.record_decision(f"{{who}}_{{ok}}", f"{{who}}_{{ok}}b", "keep_a", who)
            ok += 1
            continue
        cur = s.decision_for("x_1", "x_2")
        try:
            s.record_decision("x_1", "x_2", ["keep_a", "keep_b", "union"][ok % 3], who,
                              base_event=None if cur is None else cur.event_id)
            ok += 1
        except StaleDecision:
            stale += 1
    print(f"{{ok}} {{stale}} {{time.time()}}", flush=True)
""").format(repo=str(REPO))


def two_writers(url: str, n: int, mode: str, folder: Path) -> dict:
    script = folder / "writer.py"
    script.write_text(_WRITER)
    start_at = time.time() + 3.0  # both connected and waiting
    procs = [subprocess.Popen([sys.executable, str(script), url, who, str(n), mode, str(start_at)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("w1", "w2")]
    ends, stale = [], 0
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(err[-2000:])
        ok, st, end = out.split()
        stale += int(st)
        ends.append(float(end))
    wall = max(ends) - start_at
    res = {"mode": mode, "decisions": 2 * n, "wall_s": round(wall, 2), "decisions_per_s": round(2 * n / wall, 1),
           "stale_refusals": stale}
    if mode == "same_pair":
        from engine.store import ReviewStore

        with ReviewStore(url, masks_dir="/nonexistent-unused") as s:
            chain = sorted((e for e in s.events(kinds=["decision"]) if e.target == "x_1\tx_2"), key=lambda e: e.id)
        linked = all(e.payload.get("base_event") == p.id for p, e in zip(chain, chain[1:]))
        res.update({"accepted_in_log": len(chain), "chain_intact": bool(linked and len(chain) == 2 * n)})
    return res


def run_backend(name: str, url_for, args, folder: Path) -> dict:
    from engine.store import ReviewStore

    url = url_for("read")
    with ReviewStore(url, masks_dir=folder / "masks") as store:
        info = fill(store, args.events, args.pairs)
        info.update(time_reads(store, args.repeats))
    out = {"read": info}
    for mode in ("distinct", "same_pair"):
        out[mode] = two_writers(url_for(mode), args.writes, mode, folder)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--pairs", type=int, default=5_000, help="distinct pairs the events are spread over")
    ap.add_argument("--writes", type=int, default=300, help="decisions per writer process")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="segwb-bench-store-"))
    results: dict = {"events": args.events, "pairs": args.pairs, "writes_per_process": args.writes,
                     "loadavg_before": os.getloadavg()}
    try:
        if "sqlite" in args.backends:
            print("SQLite …", file=sys.stderr)
            results["sqlite"] = run_backend("sqlite", lambda tag: f"sqlite:///{folder}/{tag}.sqlite", args, folder)
        if "postgresql" in args.backends:
            from tests.support.pgserver import PostgresServer, Unavailable

            try:
                srv = PostgresServer.start(durable=True)
            except Unavailable as exc:
                results["postgresql"] = {"skipped": str(exc)}
            else:
                try:
                    print("PostgreSQL …", file=sys.stderr)
                    results["postgresql"] = run_backend("postgresql", lambda tag: srv.new_database(tag), args, folder)
                    results["postgresql"]["server"] = "throwaway local PostgreSQL " + srv.bindir.parts[-2] + \
                        " (fsync on, TCP 127.0.0.1)"
                finally:
                    srv.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results["loadavg_after"] = os.getloadavg()
    for be in ("sqlite", "postgresql"):
        r = results.get(be)
        if not r or "read" not in r:
            continue
        rd = r["read"]
        print(f"{be:<11} {rd['events']:,} events, {rd['n_decided_pairs']:,} decided pairs: decisions() "
              f"{rd['decisions_uncached_ms']} ms full read / {rd['decisions_ms']} ms unchanged (goal < 20); "
              f"decide + decisions() {rd['decide_then_decisions_ms']} ms; case_states() "
              f"{rd['case_states_uncached_ms']} / {rd['case_states_ms']} ms; "
              f"decision_for() {rd['decision_for_ms']} ms; "
              f"old full-log scan {rd['full_log_scan_ms']} ms")
        for mode in ("distinct", "same_pair"):
            w = r[mode]
            extra = f", {w['stale_refusals']} stale refusals, chain intact {w.get('chain_intact')}" \
                if mode == "same_pair" else ""
            print(f"{'':<11} 2 writers, {mode}: {w['decisions_per_s']} decisions/s ({w['decisions']} in "
                  f"{w['wall_s']} s{extra})")
    path = save_result("store", results)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
