"""Benchmark: the conflict scan as a whole ``python -m engine conflicts`` process, cold and warm.

Data: the full-size nerve phantom (47 subjects × 120 frames = 5,640 images of 420×580 + masks,
Kaggle UNS layout, 470 planted near-duplicate pairs): ``demo_data_full/nerve`` from
``make demo-full`` when present, else ``--data DIR``, else generated once into the workspace.

For each scope (``group``, ``global``), in a fresh temporary workspace:

1. **cold**: ``python -m engine --workspace WS conflicts DATA --scope S --json R`` as a
   subprocess with nothing cached (no index cache, no fingerprint/SSIM/mask caches). The OS page
   cache is warmed first by reading every file of the dataset once, so "cold" measures the
   program, not the disk (``--no-page-cache-warmup`` skips that).
2. **warm**: the same command again ``--warm-runs`` times (every cache valid); the median is
   reported.

Per run: wall seconds (from spawning to exit), CPU seconds of the process (user + sys, from
``wait4``), and the phases: ``startup`` (interpreter + argument parsing: wall − the command's own
clock), ``index`` (opening the dataset), ``fingerprints``, ``search``, ``ssim``, ``masks``,
``ceiling``, ``leakage`` (from the report) and ``other`` (imports inside the command, report
writing, printing). Checked: recall and precision on the planted pairs, the warm result equal
to the cold one.

Then the **exhaustive** comparison (the case study's method): all-pairs SSIM
(``skimage.metrics.structural_similarity``, default window, 64×80) on ``--subset`` images of the
first subjects, extrapolated to the full set, and the agreement of our pair set with it at the
threshold and at lower ones (where far more pairs qualify and the candidate search is stressed).

Targets (2 CPU cores): cold ≤ 8 s, warm ≤ 1 s, planted recall 1.0 and precision 1.0,
agreement with exhaustive SSIM ≥ 0.99. The machine is shared: the load average is recorded
before and after every run; compare figures only at similar load.

Writes ``bench/results/conflicts.json`` (the previous one goes to ``bench/results/history/``).

Usage:
    python bench/conflicts.py                                  # demo_data_full/nerve, both scopes
    python bench/conflicts.py --scopes group --warm-runs 5 --skip-exhaustive
    python bench/conflicts.py --data demo_data/nerve --subset 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, load_avg, median, save_result  # noqa: E402

PHASES = ("index", "fingerprints", "search", "ssim", "masks", "ceiling", "leakage")
TARGETS = {"cold_seconds": 8.0, "warm_seconds": 1.0, "planted_recall": 1.0, "planted_precision": 1.0,
           "agreement_with_exhaustive": 0.99}


def find_data(path: Path | None, subjects: int, frames: int, seed: int) -> Path:
    """The dataset to scan: ``path``, else ``demo_data_full/nerve``, else a generated phantom."""
    if path is not None:
        return path
    full = REPO / "demo_data_full" / "nerve"
    if (full / "planted_pairs.json").exists():
        return full
    from engine.phantoms import generate_nerve_phantom
    from engine.workspace import default_root

    out = default_root() / "bench" / f"nerve-phantom-{subjects}x{frames}-seed{seed}"
    if not (out / "planted_pairs.json").exists():
        print(f"generating the phantom into {out} (once; `make demo-full` makes demo_data_full/) ...", flush=True)
        t = time.perf_counter()
        generate_nerve_phantom(out, subjects=subjects, frames=frames, seed=seed)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def warm_page_cache(data: Path) -> dict:
    """Read every file under ``data`` once (so cold runs do not measure the disk)."""
    t = time.perf_counter()
    n = size = 0
    for root, _, files in os.walk(data):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb", buffering=0) as fh:
                    while chunk := fh.read(1 << 20):
                        size += len(chunk)
                n += 1
            except OSError:
                continue
    return {"files": n, "mib": round(size / 2**20, 1), "seconds": round(time.perf_counter() - t, 2)}


def planted_pairs(data: Path) -> dict[tuple[str, str], str]:
    """``{(a, b): kind}`` of the planted pairs (``a < b``); empty for real data."""
    path = data / "planted_pairs.json"
    if not path.exists():
        return {}
    from engine.phantoms import load_planted_pairs

    return {tuple(sorted((p["a"], p["b"]))): p["kind"] for p in load_planted_pairs(data)}


ENGINE_REPO = REPO  # whose engine runs (--repo: another checkout, for before/after comparisons)


def run_cli(data: Path, ws: Path, scope: str, report: Path, threshold: float) -> dict:
    """One ``python -m engine conflicts`` process: wall, CPU, exit code, phases."""
    cmd = [sys.executable, "-m", "engine", "--workspace", str(ws), "conflicts", str(data), "--scope", scope,
           "--ssim", str(threshold), "--json", str(report)]
    before = load_avg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ENGINE_REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    res = {"wall_seconds": round(wall, 3), "exit_code": proc.returncode, "load_before": before,
           "load_after": load_avg()}
    if proc.returncode != 0:
        res["stderr_tail"] = err.decode(errors="replace")[-2000:]
        return res
    rep = json.loads(report.read_text())
    t = rep["timing"]
    phases = {k: round(float(t.get(k, 0.0)), 3) for k in PHASES}
    if "command" not in t:
        res["phases_note"] = "this engine's report has no index/command times: 'other' includes start-up and index"
    command = float(t.get("command", wall))
    phases["startup"] = round(max(0.0, wall - command), 3)
    phases["other"] = round(max(0.0, command - float(t.get("index", 0.0)) - float(t.get("total", 0.0))), 3)
    res.update(phases=phases, report=rep, stdout_tail=out.decode(errors="replace")[-1500:])
    return res


def timed_cli(data: Path, ws: Path, scope: str, report: Path, threshold: float) -> dict:
    """:func:`run_cli` plus the process's CPU seconds (RUSAGE_CHILDREN grows by exactly this
    child, as the benchmark runs one at a time)."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = run_cli(data, ws, scope, report, threshold)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res.update(cpu_user_seconds=round(r1.ru_utime - r0.ru_utime, 3),
               cpu_sys_seconds=round(r1.ru_stime - r0.ru_stime, 3))
    return res


def summarize_run(res: dict) -> dict:
    """A run without the full report (kept small in the results JSON)."""
    rep = res.get("report") or {}
    stats = rep.get("stats", {})
    return {k: v for k, v in res.items() if k not in ("report", "stdout_tail")} | {
        "n_candidates": stats.get("n_candidates"), "n_verified": stats.get("n_verified"),
        "cache_hits": stats.get("cache_hits"), "ssim_cached": stats.get("ssim_cached"),
        "masks_cached": stats.get("masks_cached")}


def run_scope(data: Path, scope: str, threshold: float, warm_runs: int) -> dict:
    ws = Path(tempfile.mkdtemp(prefix="segwb-bench-conflicts-"))
    try:
        cold = timed_cli(data, ws, scope, ws / "cold.json", threshold)
        if cold["exit_code"] != 0:
            return {"scope": scope, "cold": summarize_run(cold), "error": "the cold run failed"}
        warm = [timed_cli(data, ws, scope, ws / f"warm{k}.json", threshold) for k in range(max(1, warm_runs))]
        rep = cold["report"]
        truth = planted_pairs(data)
        found = {(p["a"], p["b"]): p["category"] for p in rep["pairs"]}
        hit = len(set(found) & set(truth))
        planted = {"n_found": len(found), "n_planted": len(truth), "n_planted_found": hit,
                   "recall": hit / len(truth) if truth else None,
                   "precision": hit / len(found) if found else (1.0 if not truth else 0.0),
                   "category_matches_kind": sum(found.get(k) == v for k, v in truth.items())}
        cold_pairs = [(p["a"], p["b"], p["ssim"]) for p in rep["pairs"]]
        same = all(w["exit_code"] == 0 and [(p["a"], p["b"], p["ssim"]) for p in w["report"]["pairs"]] == cold_pairs
                   for w in warm)
        ok_warm = [w for w in warm if w["exit_code"] == 0]
        warm_med = median([w["wall_seconds"] for w in ok_warm]) if ok_warm else None
        return {
            "scope": scope, "cold": summarize_run(cold), "warm_runs": [summarize_run(w) for w in warm],
            "warm_median_seconds": None if warm_med is None else round(warm_med, 3),
            "warm_median_cpu_seconds": round(median([w["cpu_user_seconds"] + w["cpu_sys_seconds"] for w in ok_warm]), 3)
            if ok_warm else None,
            "planted": planted, "same_result_warm": same, "categories": rep["stats"]["categories"],
            "ceiling": {k: rep["ceiling"].get(k) for k in ("n_affected", "mean_affected", "dataset", "n_labelled")},
            "leakage_groups_split": rep["leakage"].get("n_groups_split"), "backend": rep["stats"]["backend"],
            "candidate_floor": rep["stats"].get("candidate_floor"),
        }
    finally:
        shutil.rmtree(ws, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the case study's exhaustive all-pairs SSIM on a subset (in-process)


def pick_subset(ds, n: int) -> list[str]:
    def key(c):
        parts = c.case_id.split("_")
        return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (0, 0)

    return [c.case_id for c in sorted(ds.cases, key=key)[:n]]


def run_exhaustive(data: Path, n_subset: int, thresholds: list[float], size: tuple[int, int]) -> dict:
    from skimage.metrics import structural_similarity

    from engine.datasets import open_dataset
    from engine.dedup import ConflictConfig, find_conflicts
    from engine.dedup.fingerprint import image_thumb
    from engine.parallel import limit_blas

    ws = Path(tempfile.mkdtemp(prefix="segwb-bench-ex-"))
    try:
        ds = open_dataset(data, workspace=ws)
        ids = pick_subset(ds, n_subset)
        sub = ds.subset(ids)
        n = len(ids)
        subjects = sorted({ds.case(c).group_id for c in ids}, key=lambda g: (len(g), g))
        t0 = time.perf_counter()
        with limit_blas(1):
            thumbs = np.stack([image_thumb(ds.case(c).image_path, size) for c in ids]).astype(np.float64)
        t_read = time.perf_counter() - t0
        iu, ju = np.triu_indices(n, k=1)
        s_ex = np.empty(iu.size)
        t0 = time.perf_counter()
        for k, (a, b) in enumerate(zip(iu.tolist(), ju.tolist())):
            s_ex[k] = structural_similarity(thumbs[a], thumbs[b], data_range=1.0)
        t_pairs = time.perf_counter() - t0
        n_full = len(ds)
        extrap = t_read * n_full / n + t_pairs * (n_full * (n_full - 1) / 2) / iu.size
        groups = np.array([ds.case(c).group_id for c in ids])
        same = groups[iu] == groups[ju]
        pos = {c: k for k, c in enumerate(ids)}
        agreement = []
        for thr in thresholds:
            for scope in ("global", "group"):
                rep = find_conflicts(sub, ConflictConfig(scope=scope, ssim_threshold=thr, use_cache=False),
                                     save_latest=False)
                ours = {(p["a"], p["b"]) for p in rep.pairs}
                mask = s_ex >= thr if scope == "global" else (s_ex >= thr) & same
                ex = {tuple(sorted((ids[a], ids[b]))) for a, b in zip(iu[mask], ju[mask])}
                union = ours | ex
                lookup = {(int(a), int(b)): float(s) for a, b, s in zip(iu, ju, s_ex)}
                diffs = [abs(p["ssim"] - lookup[tuple(sorted((pos[p["a"]], pos[p["b"]])))]) for p in rep.pairs]
                agreement.append({
                    "threshold": thr, "scope": scope, "n_exhaustive": len(ex), "n_ours": len(ours),
                    "n_both": len(ours & ex), "missed_by_ours": len(ex - ours), "extra_in_ours": len(ours - ex),
                    "agreement": (len(ours & ex) / len(union)) if union else 1.0,
                    "recall_vs_exhaustive": (len(ours & ex) / len(ex)) if ex else 1.0,
                    "n_candidates": rep.stats["n_candidates"],
                    "max_abs_ssim_difference": max(diffs) if diffs else None,
                })
        return {"n_subset": n, "subjects": subjects, "n_pairs": int(iu.size), "read_seconds": round(t_read, 3),
                "pairs_seconds": round(t_pairs, 3), "ms_per_pair": round(1000 * t_pairs / iu.size, 4),
                "n_full": n_full, "extrapolated_full_seconds": round(extrap, 1),
                "extrapolated_full_hours": round(extrap / 3600, 2), "agreement": agreement}
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def _fmt_phases(ph: dict) -> str:
    keys = ("startup", "index", "fingerprints", "search", "ssim", "masks", "ceiling", "other")
    return ", ".join(f"{k} {ph.get(k, 0):.2f}" for k in keys)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="Kaggle-UNS-layout folder (default: demo_data_full/nerve or a "
                    "generated phantom)")
    ap.add_argument("--subjects", type=int, default=47)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scopes", default="group,global")
    ap.add_argument("--warm-runs", type=int, default=3, help="warm runs per scope (median reported)")
    ap.add_argument("--ssim", type=float, default=0.99)
    ap.add_argument("--subset", type=int, default=400, help="images for the exhaustive comparison")
    ap.add_argument("--extra-thresholds", default="0.9,0.8", help="also compare at these thresholds")
    ap.add_argument("--skip-exhaustive", action="store_true", help="skip the exhaustive-SSIM comparison (slow)")
    ap.add_argument("--no-page-cache-warmup", action="store_true", help="do not read the files before the cold runs")
    ap.add_argument("--repo", type=Path, default=None,
                    help="run the engine of another checkout (e.g. an export of an older commit), for "
                         "before/after figures; its report may lack the index/command phases")
    ap.add_argument("--out", type=Path, default=RESULTS / "conflicts.json")
    args = ap.parse_args(argv)
    global ENGINE_REPO
    if args.repo is not None:
        ENGINE_REPO = args.repo.resolve()

    data = find_data(args.data, args.subjects, args.frames, args.seed).resolve()
    result: dict = {"data": str(data), "ssim_threshold": args.ssim, "targets": TARGETS,
                    "engine_repo": str(ENGINE_REPO),
                    "load_at_start": load_avg(),
                    "method": "whole `python -m engine conflicts` processes (subprocess), cold = empty workspace "
                              "(no index/fingerprint/SSIM/mask caches), warm = the same command again"}
    if not args.no_page_cache_warmup:
        result["page_cache_warmup"] = warm_page_cache(data)
        result["page_cache"] = "warm (every file read once before the cold runs)"
    else:
        result["page_cache"] = "as found (not warmed)"
    result["runs"] = []
    for scope in [s.strip() for s in args.scopes.split(",") if s.strip()]:
        print(f"scope={scope}: cold, then {args.warm_runs} warm ...", flush=True)
        r = run_scope(data, scope, args.ssim, args.warm_runs)
        result["runs"].append(r)
        c = r["cold"]
        if "error" in r:
            print(f"  FAILED: {c.get('stderr_tail', '')}", flush=True)
            continue
        print(f"  cold {c['wall_seconds']:.2f} s wall, CPU {c['cpu_user_seconds'] + c['cpu_sys_seconds']:.1f} s "
              f"(load {c['load_before']} → {c['load_after']})\n    phases: {_fmt_phases(c['phases'])}", flush=True)
        w = r["warm_runs"][len(r["warm_runs"]) // 2]
        runs = ", ".join(f"{x['wall_seconds']:.2f}" for x in r["warm_runs"])
        print(f"  warm median {r['warm_median_seconds']:.2f} s wall (runs {runs}), "
              f"CPU {r['warm_median_cpu_seconds']:.2f} s"
              f"\n    phases (one run): {_fmt_phases(w.get('phases', {}))}", flush=True)
        pl = r["planted"]
        print(f"  {c['n_candidates']} candidate pairs, {c['n_verified']} verified; "
              f"planted pairs: recall {pl['recall']}, "
              f"precision {pl['precision']} ({pl['n_planted_found']}/{pl['n_planted']}, {pl['n_found']} found); "
              f"warm result identical: {r['same_result_warm']}", flush=True)
    if not args.skip_exhaustive:
        thresholds = [args.ssim] + [float(t) for t in args.extra_thresholds.split(",") if t.strip()]
        print(f"exhaustive all-pairs SSIM on {args.subset} images ...", flush=True)
        ex = run_exhaustive(data, args.subset, thresholds, (64, 80))
        result["exhaustive"] = ex
        print(f"  {ex['n_pairs']} pairs in {ex['pairs_seconds']:.1f} s ({ex['ms_per_pair']} ms/pair) + reading "
              f"{ex['read_seconds']:.1f} s → full set ({ex['n_full']} images) "
              f"≈ {ex['extrapolated_full_seconds']:.0f} s "
              f"({ex['extrapolated_full_hours']} h)", flush=True)
        for a in ex["agreement"]:
            print(f"  agreement @ {a['threshold']} ({a['scope']}): {a['agreement']:.4f} "
                  f"(exhaustive {a['n_exhaustive']}, ours {a['n_ours']}, missed {a['missed_by_ours']}, "
                  f"extra {a['extra_in_ours']}, max |ΔSSIM| {a['max_abs_ssim_difference']})", flush=True)
    result["load_at_end"] = load_avg()
    path = save_result("conflicts", result, path=args.out)
    print(f"wrote {path} (load {result['load_at_start']} → {result['load_at_end']})")
    failed = any("error" in r for r in result["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
