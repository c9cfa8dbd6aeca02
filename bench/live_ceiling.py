"""Benchmark: the live label-noise ceiling (no rescan) vs a full duplicate search of the corrected dataset.

On a synthetic ultrasound phantom (``--subjects`` × ``--frames`` images of 420×580 with planted
near-duplicate pairs; generated once into a cache folder unless ``--data`` is given):

1. ``find_conflicts`` once (the stored report the review page starts from);
2. the reviewer decides every conflict/disagree pair (keep / union / both empty, rotating) and
   corrects one mask; after EACH decision :func:`engine.curation.live_ceiling` is timed;
3. after the last decision the corrected dataset is written as a manifest and searched again
   with ``find_conflicts`` (warm caches where the images are the same), timed, and the two
   ceilings are compared (they must agree to 2e-6).

Prints a summary and writes ``bench/results/live_ceiling.json``.

Usage:
    python bench/live_ceiling.py                       # 8 subjects x 60 frames
    python bench/live_ceiling.py --data demo_data/nerve
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine_info, median, save_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from engine.curation import corrected_dataset, live_ceiling
    from engine.datasets import open_dataset, write_manifest
    from engine.dedup import ConflictConfig, find_conflicts
    from engine.phantoms import generate_nerve_phantom
    from engine.store import ReviewStore
    from engine.workspace import Workspace, default_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a Kaggle-UNS-layout folder (default: a cached phantom)")
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args(argv)

    data = args.data
    t_gen = None
    if data is None:
        data = default_root() / "bench" / f"nerve-phantom-{args.subjects}x{args.frames}-seed0"
        if not data.is_dir():
            t0 = time.perf_counter()
            generate_nerve_phantom(data, subjects=args.subjects, frames=args.frames, seed=0)
            t_gen = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    try:
        ws = Workspace(tmp / "ws")
        ds = open_dataset(data, workspace=ws)
        t0 = time.perf_counter()
        report = find_conflicts(ds)
        t_scan = time.perf_counter() - t0
        pairs = [p for p in report.pairs if p["category"] in ("conflict", "disagree")]
        store = ReviewStore.for_dataset(ds)
        choices = ("keep_a", "union", "both_empty", "keep_b")
        times = []
        ceilings = [report.ceiling["dataset"]]
        for i, p in enumerate(pairs):
            store.record_decision(p["a"], p["b"], choices[i % len(choices)], "bench")
            t0 = time.perf_counter()
            live = live_ceiling(ds, store, report)
            times.append(time.perf_counter() - t0)
            ceilings.append(live["dataset"])
        t0 = time.perf_counter()
        cds, dropped, info = corrected_dataset(ds, store, report)
        path = write_manifest(tmp / "corrected.json", ds, cds.cases, dropped, info)
        rescan = find_conflicts(open_dataset(path, workspace=ws), ConflictConfig.from_dict(report.config),
                                save_latest=False)
        t_rescan = time.perf_counter() - t0
        store.close()
        agree = abs(rescan.ceiling["dataset"] - ceilings[-1]) <= 2e-6
        result = {
            "data": str(data), "n_cases": len(ds), "n_pairs": len(report.pairs), "n_decisions": len(pairs),
            "generate_seconds": t_gen, "scan_seconds": round(t_scan, 3),
            "live_seconds_median": round(median(times), 4) if times else None,
            "live_seconds_max": round(max(times), 4) if times else None,
            "rescan_seconds": round(t_rescan, 3),
            "ceiling_before": report.ceiling["dataset"], "ceiling_live": ceilings[-1],
            "ceiling_rescan": rescan.ceiling["dataset"], "agree": agree, "ceilings": ceilings,
            "machine": machine_info(),
        }
        out = save_result("live_ceiling", result)
        print(f"{len(ds)} cases, {len(report.pairs)} pairs, {len(pairs)} decisions")
        print(f"first scan {t_scan:.2f} s; live ceiling per decision: median {result['live_seconds_median']} s, "
              f"max {result['live_seconds_max']} s; rescan of the corrected dataset {t_rescan:.2f} s")
        print(f"ceiling {report.ceiling['dataset']} -> live {ceilings[-1]} / rescan {rescan.ceiling['dataset']} "
              f"({'agree' if agree else 'DISAGREE'}); saved {out}")
        return 0 if agree else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
