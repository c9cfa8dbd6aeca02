"""Run every benchmark in ``bench/`` (``make bench``), one subprocess each, and print a summary.

Every ``bench/<name>.py`` except this file and the ``_``-prefixed helpers is a benchmark; new ones
are picked up without an edit here (they run with no arguments unless listed in :data:`KNOWN`).
Each benchmark saves its own JSON (``bench/results/<name>.json``; the previous result is kept in
``bench/results/history/``); this runner records, per benchmark, the exit code, wall seconds, the
load average before and after, and the result files it wrote, in ``bench/results/run_all.json``.

Options:
    --only a,b        run only these (names without ``.py``)
    --skip a,b        leave these out
    --skip-slow       leave out the slow ones (marked ``slow`` below: several minutes each)
    --quick           run each with its smoke-test arguments (few repeats; figures not for reporting)
    --list            list the benchmarks and exit
    --timeout S       stop a benchmark after S seconds (counted as failed)
    --data DIR        the full-size nerve phantom for the benchmarks that take one (default:
                      ``demo_data_full/nerve`` when present; they generate one otherwise)

Exit code: 0 when every benchmark that ran exited with 0, else 1.

Example:
    python bench/run_all.py --skip-slow
    python bench/run_all.py --only conflicts,indexing --quick
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, archive_previous, load_avg, save_result  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BenchInfo:
    """How to run one benchmark: slow or not, smoke-test arguments, how to pass the phantom."""

    slow: bool = False
    quick_args: tuple[str, ...] = ()
    data_args: tuple[str, ...] = ()  # "{data}" is replaced by the phantom folder
    results: tuple[str, ...] = field(default_factory=tuple)  # result files (default <name>.json)


KNOWN: dict[str, BenchInfo] = {
    "conflicts": BenchInfo(slow=False, quick_args=("--warm-runs", "1", "--scopes", "group", "--skip-exhaustive"),
                           data_args=("--data", "{data}")),
    "indexing": BenchInfo(slow=False, quick_args=("--repeat", "1"), data_args=("--data", "{data}")),
    "inference": BenchInfo(slow=True, quick_args=("--quick",)),
    "training": BenchInfo(slow=True, quick_args=("--steps", "2", "--rounds", "1", "--workers", "0")),
    "lung_shift": BenchInfo(slow=True, quick_args=("--shifts", "gamma-1.6,blur-4px")),
    "app_pages": BenchInfo(slow=True, quick_args=("--parts", "pages", "--runs", "1"),
                           data_args=("--full-data", "{data}")),
}


def discover() -> list[str]:
    """Benchmark names: ``bench/*.py`` except this runner and ``_``-prefixed helpers, sorted."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_") and p.stem != "run_all")


def _names(text: str | None) -> list[str]:
    return [s.strip().removesuffix(".py") for s in (text or "").split(",") if s.strip()]


def select(all_names: list[str], only: list[str], skip: list[str], skip_slow: bool) -> tuple[list[str], dict[str, str]]:
    """The benchmarks to run, in order, and why the others are left out."""
    unknown = [n for n in only + skip if n not in all_names]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)} (have: {', '.join(all_names)})")
    left_out: dict[str, str] = {}
    chosen = []
    for name in all_names:
        if only and name not in only:
            left_out[name] = "not in --only"
        elif name in skip:
            left_out[name] = "--skip"
        elif skip_slow and KNOWN.get(name, BenchInfo()).slow:
            left_out[name] = "slow (--skip-slow)"
        else:
            chosen.append(name)
    return chosen, left_out


def command(name: str, quick: bool, data: Path | None) -> list[str]:
    info = KNOWN.get(name, BenchInfo())
    cmd = [sys.executable, str(BENCH_DIR / f"{name}.py")]
    if data is not None:
        cmd += [a.replace("{data}", str(data)) for a in info.data_args]
    if quick:
        cmd += list(info.quick_args)
    return cmd


def _snapshot() -> dict[str, float]:
    return {str(p.relative_to(REPO)): p.stat().st_mtime for p in RESULTS.glob("*.json")} if RESULTS.exists() else {}


def run_one(name: str, quick: bool, data: Path | None, timeout: float | None) -> dict:
    """Run one benchmark as a subprocess (output streamed), return its record."""
    cmd = command(name, quick, data)
    info = KNOWN.get(name, BenchInfo())
    for res in info.results or (f"{name}.json",):
        archive_previous(RESULTS / res)  # the benchmark replaces it (save_result also does this)
    before = _snapshot()
    rec: dict = {"name": name, "command": [Path(cmd[0]).name] + cmd[1:], "load_before": load_avg()}
    print(f"\n=== {name}: {' '.join(rec['command'])}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, timeout=timeout)
        rec["exit_code"] = proc.returncode
    except subprocess.TimeoutExpired:
        rec["exit_code"] = None
        rec["error"] = f"timed out after {timeout} s"
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    rec["load_after"] = load_avg()
    after = _snapshot()
    rec["results"] = sorted(k for k, m in after.items() if before.get(k) != m)
    return rec


def headline(name: str, path: Path) -> str:
    """A one-line digest of a result file (known benchmarks), else ''."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    try:
        if name == "conflicts":
            parts = []
            for r in doc.get("runs", []):
                c = r["cold"]
                parts.append(f"{r['scope']}: cold {c['wall_seconds']:.1f} s, warm {r['warm_median_seconds']:.2f} s, "
                             f"recall {r['planted']['recall']}, precision {r['planted']['precision']}")
            return "; ".join(parts)
        if name == "indexing":
            r = doc["results"]
            return f"open_dataset cold {r['cold']['seconds']} s, warm {r['warm']['seconds']} s"
    except (KeyError, TypeError, IndexError):
        return ""
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:3]))
    ap.add_argument("--only", help="comma-separated benchmark names to run")
    ap.add_argument("--skip", help="comma-separated benchmark names to leave out")
    ap.add_argument("--skip-slow", action="store_true", help="leave out the slow benchmarks")
    ap.add_argument("--quick", action="store_true", help="smoke-test arguments (figures not for reporting)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    ap.add_argument("--data", type=Path, default=None, help="full-size nerve phantom (default demo_data_full/nerve)")
    args = ap.parse_args(argv)

    names = discover()
    if args.list:
        for n in names:
            info = KNOWN.get(n, BenchInfo())
            print(f"{n:<12} {'slow' if info.slow else '    '}  quick: {' '.join(info.quick_args) or '-'}")
        return 0
    data = args.data
    if data is None and (REPO / "demo_data_full" / "nerve" / "planted_pairs.json").exists():
        data = REPO / "demo_data_full" / "nerve"
    chosen, left_out = select(names, _names(args.only), _names(args.skip), args.skip_slow)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    load_start = load_avg()
    records = [run_one(n, args.quick, data.resolve() if data else None, args.timeout) for n in chosen]

    print("\n=== summary" + (" (--quick: smoke figures)" if args.quick else ""))
    print(f"{'benchmark':<12} {'status':<8} {'seconds':>8}  results")
    for rec in records:
        status = "ok" if rec["exit_code"] == 0 else (
            "timeout" if rec["exit_code"] is None else f"rc={rec['exit_code']}")
        print(f"{rec['name']:<12} {status:<8} {rec['seconds']:>8.1f}  {', '.join(rec['results']) or '-'}")
        for res in rec["results"]:
            line = headline(rec["name"], REPO / res)
            if line:
                print(f"{'':<31}{line}")
    for name, why in left_out.items():
        print(f"{name:<12} {'skipped':<8} {'':>8}  ({why})")
    load_end = load_avg()
    print(f"load average {load_start} → {load_end} ({os.cpu_count()} CPUs)")
    path = save_result("run_all", {"started": started, "quick": args.quick, "data": str(data) if data else None,
                                   "load_at_start": load_start, "load_at_end": load_end, "runs": records,
                                   "skipped": left_out})
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0 if all(r["exit_code"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
