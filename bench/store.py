"""Benchmark: review-store reads at 150k events and concurrent writers, on SQLite and PostgreSQL.

1. **Decision reads at N events** (default 150,000): the store is filled with decisions on
   ``--pairs`` pairs (re-decided many times, some undone) and case-state events; then the public
   reads are timed: ``decisions()`` (goal < 20 ms), ``case_states()``, ``decision_for()``, and
   for comparison the old way of deriving the state by scanning the whole log
   (``events(kinds=["decision"])`` + ``undone_ids()``, what ``decisions()`` did before the
   current-state tables).
2. **Two writer processes** (``--writes`` decisions each), timed from a common start:
   - *distinct pairs*: each process decides its own new pairs → decisions/s in total;
   - *same pair*: both hammer one pair with ``base_event`` (read, decide; a stale refusal
     re-reads and retries) → accepted decisions/s, stale refusals, and a check that the
     accepted writes form one chain (no stale write applied, none lost).

SQLite: a file in a temp folder (WAL, synchronous=FULL). PostgreSQL: a throwaway local server
(tests/pgserver.py, fsync ON, default settings otherwise) — skipped with a note when the Debian
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
sys.path.insert(0, str(REPO / "tests"))

from bench._common import median, save_result  # noqa: E402


def fill(store, n_events: int, n_pairs: int, progress: bool = True) -> dict:
    """Fill through the store's own write path, 2,000 events per transaction: decisions (each pair
    re-decided), every 25th decision undone, and a case-state event per 10 decisions."""
    import numpy as np

    rng = np.random.default_rng(0)
    choices = ["keep_a", "keep_b", "keep_both", "union", "not_duplicate", "drop_both"]
    written = 0
    t0 = time.perf_counter()
    batch = 2000
    while written < n_events:
        todo = min(batch, n_events - written)

        def run(conn, todo=todo) -> int:
            done = 0
            while done < todo:
                i = int(rng.integers(n_pairs))
                a, b = f"{i // 120 + 1}_{i % 120 + 1}", f"{i // 120 + 1}_{i % 120 + 2}"
                target = f"{min(a, b)}\t{max(a, b)}"
                eid = store._decide(conn, "bench", "pair", target, choices[done % len(choices)], "", None, True,
                                    {"a": a, "b": b, "given": choices[done % len(choices)]})
                done += 1
                if done % 25 == 0 and done < todo:
                    store._undo_in(conn, "bench", eid, "")
                    done += 1
                if done % 10 == 0 and done < todo:
                    sid = store._insert_event(conn, "bench", "case_state", "case", a, "accepted", "")
                    store._set_current(conn, "case_state", "case", a, sid)
                    done += 1
            return done

        written += store.tx.write(run)
        if progress:
            print(f"\r  filled {written:,}/{n_events:,} events", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return {"events": written, "fill_s": round(time.perf_counter() - t0, 2)}


def time_reads(store, repeats: int) -> dict:
    def timed(fn, n=repeats) -> tuple[float, object]:
        out = fn()  # warm (connection pool, caches)
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            out = fn()
            ts.append(time.perf_counter() - t)
        return median(ts), out

    t_dec, dec = timed(store.decisions)
    t_states, states = timed(store.case_states)
    some = next(iter(dec.values()))
    t_one, _ = timed(lambda: store.decision_for(some.a, some.b))

    def full_scan() -> int:  # the old derivation: whole log + all undos
        undone = store.undone_ids()
        return len([e for e in store.events(kinds=["decision"]) if e.id not in undone])

    t_scan, _ = timed(full_scan, n=max(3, repeats // 5))
    return {"decisions_ms": round(t_dec * 1e3, 2), "n_decided_pairs": len(dec),
            "case_states_ms": round(t_states * 1e3, 2), "n_case_states": len(states),
            "decision_for_ms": round(t_one * 1e3, 3), "full_log_scan_ms": round(t_scan * 1e3, 1),
            "repeats": repeats}


_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from engine.curation.store import ReviewStore
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
        from engine.curation.store import ReviewStore

        with ReviewStore(url, masks_dir="/nonexistent-unused") as s:
            chain = sorted((e for e in s.events(kinds=["decision"]) if e.target == "x_1\tx_2"), key=lambda e: e.id)
        linked = all(e.payload.get("base_event") == p.id for p, e in zip(chain, chain[1:]))
        res.update({"accepted_in_log": len(chain), "chain_intact": bool(linked and len(chain) == 2 * n)})
    return res


def run_backend(name: str, url_for, args, folder: Path) -> dict:
    from engine.curation.store import ReviewStore

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
            from pgserver import PostgresServer, Unavailable

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
              f"{rd['decisions_ms']} ms (goal < 20), case_states() {rd['case_states_ms']} ms, decision_for() "
              f"{rd['decision_for_ms']} ms, old full-log scan {rd['full_log_scan_ms']} ms")
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
