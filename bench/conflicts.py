"""Benchmark: near-duplicate / label-conflict search vs the case study's exhaustive SSIM.

Runs, in one process, on the full-size synthetic ultrasound set (47 subjects × 120 frames =
5,640 images of 420×580, planted near-duplicate pairs known; generated once into a cache folder
unless ``--data`` is given):

1. **ours, cold**: fresh workspace → ``open_dataset`` (index) + ``find_conflicts`` (every image
   read and fingerprinted, candidates searched, SSIM on candidates, masks scored).
2. **ours, warm**: same workspace again (fingerprints, verified-pair SSIM and masks cached), and a
   "warm, fingerprints only" run with the pair/mask caches deleted.
3. recall and precision on the planted pairs, for ``scope=group`` and ``scope=global``.
4. **case study**: all-pairs SSIM (``skimage.metrics.structural_similarity``, default window,
   64×80) on a subset of ``--subset`` images from the first subjects, timed (images read and
   resized + all pairs) and extrapolated as O(n) reading + O(n²) pairs to the full set; then the
   agreement between the two methods on that subset (same verified pair set at the threshold;
   also at lower thresholds, where far more pairs qualify and the candidate search is stressed).

Prints a summary and writes ``bench/results/conflicts.json``. Targets (2 CPU cores): cold ≤ 15 s,
warm ≤ 2 s, 100 % of planted pairs, ≥ 99 % agreement with exhaustive SSIM on the subset.

Usage:
    python bench/conflicts.py                      # generates the phantom on first use (~5 min)
    python bench/conflicts.py --data demo_data/nerve --subset 200
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.datasets import open_dataset  # noqa: E402
from engine.dedup import ConflictConfig, find_conflicts  # noqa: E402
from engine.dedup.fingerprint import image_thumb, limit_blas  # noqa: E402
from engine.workspace import default_root  # noqa: E402


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def ensure_data(path: Path | None, subjects: int, frames: int, seed: int) -> Path:
    from engine.phantoms import generate_nerve_phantom

    if path is not None:
        return path
    out = default_root() / "bench" / f"nerve-phantom-{subjects}x{frames}-seed{seed}"
    if not (out / "planted_pairs.json").exists():
        print(f"generating the phantom into {out} (once) ...", flush=True)
        t = time.perf_counter()
        generate_nerve_phantom(out, subjects=subjects, frames=frames, seed=seed)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def planted_pairs(data: Path) -> set[tuple[str, str]]:
    from engine.phantoms import load_planted_pairs

    try:
        return {tuple(sorted((p["a"], p["b"]))) for p in load_planted_pairs(data)}
    except Exception:  # noqa: BLE001 - real data has no planted pairs
        return set()


def recall_precision(found: set[tuple[str, str]], truth: set[tuple[str, str]]) -> dict[str, float | int | None]:
    hit = len(found & truth)
    return {"n_found": len(found), "n_planted": len(truth), "n_planted_found": hit,
            "recall": hit / len(truth) if truth else None,
            "precision": hit / len(found) if found else (1.0 if not truth else 0.0)}


def run_ours(data: Path, scope: str, threshold: float) -> dict:
    ws = Path(tempfile.mkdtemp(prefix="segwb-bench-"))
    try:
        cfg = ConflictConfig(scope=scope, ssim_threshold=threshold)
        truth = planted_pairs(data)
        out: dict = {"scope": scope, "load_before": load_avg()}
        t0, c0 = time.perf_counter(), time.process_time()
        ds = open_dataset(data, workspace=ws)
        t_index, c_index = time.perf_counter() - t0, time.process_time() - c0
        t1, c1 = time.perf_counter(), time.process_time()
        rep = find_conflicts(ds, cfg)
        t_cold, c_cold = time.perf_counter() - t1, time.process_time() - c1
        out["cold"] = {"index_seconds": round(t_index, 3), "conflicts_seconds": round(t_cold, 3),
                       "total_seconds": round(t_index + t_cold, 3), "index_cpu_seconds": round(c_index, 3),
                       "conflicts_cpu_seconds": round(c_cold, 3), "timing": rep.timing,
                       "n_candidates": rep.stats["n_candidates"], "n_verified": rep.stats["n_verified"]}
        # warm: reopen (index cached) and rerun
        t0 = time.perf_counter()
        ds = open_dataset(data, workspace=ws)
        t_index_w = time.perf_counter() - t0
        t1, c1 = time.perf_counter(), time.process_time()
        rep_w = find_conflicts(ds, cfg)
        t_warm, c_warm = time.perf_counter() - t1, time.process_time() - c1
        out["warm"] = {"index_seconds": round(t_index_w, 3), "conflicts_seconds": round(t_warm, 3),
                       "conflicts_cpu_seconds": round(c_warm, 3),
                       "total_seconds": round(t_index_w + t_warm, 3), "timing": rep_w.timing,
                       "ssim_cached": rep_w.stats.get("ssim_cached"), "masks_cached": rep_w.stats.get("masks_cached")}
        # warm with only the fingerprint cache (pair SSIM and masks recomputed)
        dedup = Path(ds.workdir) / "dedup"
        for name in list(dedup.glob("ssim-pairs-*.npz")) + list(dedup.glob("masks-rle.json")):
            name.unlink()
        t1, c1 = time.perf_counter(), time.process_time()
        rep_f = find_conflicts(ds, cfg)
        out["warm_fingerprints_only"] = {"conflicts_seconds": round(time.perf_counter() - t1, 3),
                                         "conflicts_cpu_seconds": round(time.process_time() - c1, 3),
                                         "timing": rep_f.timing}
        found = {(p["a"], p["b"]) for p in rep.pairs}
        out["planted"] = recall_precision(found, truth)
        kinds = {}
        if truth:
            from engine.phantoms import load_planted_pairs

            want = {tuple(sorted((p["a"], p["b"]))): p["kind"] for p in load_planted_pairs(data)}
            got = {(p["a"], p["b"]): p["category"] for p in rep.pairs}
            kinds = {"category_matches_kind": sum(got.get(k) == v for k, v in want.items()), "n": len(want)}
        out["categories"] = rep.stats["categories"]
        out["category_check"] = kinds
        out["ceiling"] = {k: rep.ceiling[k] for k in ("n_affected", "mean_affected", "dataset", "n_labelled")}
        out["leakage_groups_split"] = rep.leakage.get("n_groups_split")
        out["same_result_warm"] = [(p["a"], p["b"], p["ssim"]) for p in rep.pairs] == \
                                  [(p["a"], p["b"], p["ssim"]) for p in rep_w.pairs]
        out["backend"] = rep.stats["backend"]
        out["candidate_floor"] = rep.stats.get("candidate_floor")
        out["load_after"] = load_avg()
        return out
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def pick_subset(ds, n: int) -> list[str]:
    def key(c):
        parts = c.case_id.split("_")
        return tuple(int(p) if p.isdigit() else 0 for p in parts) if all(p.isdigit() for p in parts) else (0, 0)

    cases = sorted(ds.cases, key=key)
    return [c.case_id for c in cases[:n]]


def run_exhaustive(data: Path, n_subset: int, thresholds: list[float], size: tuple[int, int]) -> dict:
    from skimage.metrics import structural_similarity

    ws = Path(tempfile.mkdtemp(prefix="segwb-bench-ex-"))
    try:
        ds = open_dataset(data, workspace=ws)
        ids = pick_subset(ds, n_subset)
        sub = ds.subset(ids)
        n = len(ids)
        subjects = sorted({ds.case(c).group_id for c in ids}, key=lambda g: (len(g), g))
        # the case study's method: read + downscale every image, then SSIM on every pair
        t0 = time.perf_counter()
        with limit_blas(1):  # the resize's small matrix products: one BLAS thread (as in our pipeline)
            thumbs = np.stack([image_thumb(ds.case(c).image_path, size) for c in ids]).astype(np.float64)
        t_read = time.perf_counter() - t0
        iu, ju = np.triu_indices(n, k=1)
        s_ex = np.empty(iu.size)
        t0 = time.perf_counter()
        for k, (a, b) in enumerate(zip(iu.tolist(), ju.tolist())):
            s_ex[k] = structural_similarity(thumbs[a], thumbs[b], data_range=1.0)
        t_pairs = time.perf_counter() - t0
        n_full = len(ds)
        pairs_full = n_full * (n_full - 1) / 2
        extrap = t_read * n_full / n + t_pairs * pairs_full / iu.size
        groups = np.array([ds.case(c).group_id for c in ids])
        same = groups[iu] == groups[ju]
        agreement = []
        ours_seconds = {}
        for thr in thresholds:
            for scope in ("global", "group"):
                t0 = time.perf_counter()
                rep = find_conflicts(sub, ConflictConfig(scope=scope, ssim_threshold=thr, use_cache=False),
                                     save_latest=False)
                ours_seconds[f"{scope}@{thr}"] = round(time.perf_counter() - t0, 3)
                ours = {(p["a"], p["b"]) for p in rep.pairs}
                mask = s_ex >= thr if scope == "global" else (s_ex >= thr) & same
                ex = {tuple(sorted((ids[a], ids[b]))) for a, b in zip(iu[mask], ju[mask])}
                union = ours | ex
                agreement.append({
                    "threshold": thr, "scope": scope, "n_exhaustive": len(ex), "n_ours": len(ours),
                    "n_both": len(ours & ex), "missed_by_ours": len(ex - ours), "extra_in_ours": len(ours - ex),
                    "agreement": (len(ours & ex) / len(union)) if union else 1.0,
                    "recall_vs_exhaustive": (len(ours & ex) / len(ex)) if ex else 1.0,
                    "n_candidates": rep.stats["n_candidates"],
                    "max_abs_ssim_difference": _ssim_diff(rep, s_ex, ids, iu, ju),
                })
        return {"n_subset": n, "subjects": subjects, "n_pairs": int(iu.size), "read_seconds": round(t_read, 3),
                "pairs_seconds": round(t_pairs, 3), "ms_per_pair": round(1000 * t_pairs / iu.size, 4),
                "n_full": n_full, "extrapolated_full_seconds": round(extrap, 1),
                "extrapolated_full_hours": round(extrap / 3600, 2), "agreement": agreement,
                "ours_seconds_on_subset": ours_seconds}
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def _ssim_diff(rep, s_ex: np.ndarray, ids: list[str], iu: np.ndarray, ju: np.ndarray) -> float | None:
    pos = {c: k for k, c in enumerate(ids)}
    lookup = {(min(pos[ids[a]], pos[ids[b]]), max(pos[ids[a]], pos[ids[b]])): s for a, b, s in zip(iu, ju, s_ex)}
    diffs = [abs(p["ssim"] - lookup[(min(pos[p["a"]], pos[p["b"]]), max(pos[p["a"]], pos[p["b"]]))])
             for p in rep.pairs]
    return float(max(diffs)) if diffs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="Kaggle-UNS-layout folder (default: generated phantom)")
    ap.add_argument("--subjects", type=int, default=47)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=400, help="images for the exhaustive comparison")
    ap.add_argument("--ssim", type=float, default=0.99)
    ap.add_argument("--extra-thresholds", default="0.9,0.8", help="also compare at these thresholds")
    ap.add_argument("--scopes", default="group,global")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "conflicts.json")
    args = ap.parse_args(argv)

    data = ensure_data(args.data, args.subjects, args.frames, args.seed)
    result: dict = {"benchmark": "near-duplicate conflicts", "data": str(data), "ssim_threshold": args.ssim,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform(), "load_at_start": load_avg()},
                    "targets": {"cold_seconds": 15, "warm_seconds": 2, "planted_recall": 1.0,
                                "agreement_with_exhaustive": 0.99}}
    result["runs"] = []
    for scope in [s.strip() for s in args.scopes.split(",") if s.strip()]:
        print(f"ours, scope={scope} ...", flush=True)
        r = run_ours(data, scope, args.ssim)
        result["runs"].append(r)
        print(f"  cold {r['cold']['total_seconds']:.2f} s (index {r['cold']['index_seconds']:.2f} + conflicts "
              f"{r['cold']['conflicts_seconds']:.2f}; CPU {r['cold']['index_cpu_seconds']:.1f} + "
              f"{r['cold']['conflicts_cpu_seconds']:.1f} s; {r['cold']['n_candidates']} candidates), warm "
              f"{r['warm']['conflicts_seconds']:.2f} s (+ index {r['warm']['index_seconds']:.2f}), warm with "
              f"fingerprints only {r['warm_fingerprints_only']['conflicts_seconds']:.2f} s", flush=True)
        pl = r["planted"]
        print(f"  planted pairs: recall {pl['recall']}, precision {pl['precision']} "
              f"({pl['n_planted_found']}/{pl['n_planted']}, {pl['n_found']} found); load {r['load_before']} → "
              f"{r['load_after']}", flush=True)
    thresholds = [args.ssim] + [float(t) for t in args.extra_thresholds.split(",") if t.strip()]
    print(f"exhaustive all-pairs SSIM on {args.subset} images ...", flush=True)
    ex = run_exhaustive(data, args.subset, thresholds, (64, 80))
    result["exhaustive"] = ex
    print(f"  {ex['n_pairs']} pairs in {ex['pairs_seconds']:.1f} s ({ex['ms_per_pair']} ms/pair) + reading "
          f"{ex['read_seconds']:.1f} s → full set ({ex['n_full']} images) ≈ {ex['extrapolated_full_seconds']:.0f} s "
          f"({ex['extrapolated_full_hours']} h)", flush=True)
    for a in ex["agreement"]:
        print(f"  agreement @ {a['threshold']} ({a['scope']}): {a['agreement']:.4f} "
              f"(exhaustive {a['n_exhaustive']}, ours {a['n_ours']}, missed {a['missed_by_ours']}, "
              f"extra {a['extra_in_ours']}, max |ΔSSIM| {a['max_abs_ssim_difference']})", flush=True)
    result["machine"]["load_at_end"] = load_avg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from engine.fsutil import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
