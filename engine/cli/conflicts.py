"""Near-duplicate commands: ``conflicts`` (find conflicting pairs) and ``manifest`` (apply review).

Argument parsing only; the work is in :mod:`engine.dedup` and :mod:`engine.store`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from engine.cli._store import add_store_option, open_store
from engine.cli.common import STARTED, add_dataset_options, open_dataset_from_args, tqdm_progress, write_json


def _size(text: str) -> tuple[int, int]:
    import argparse

    try:
        h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x80, got {text!r}") from None
    return h, w


def register(sub) -> None:
    p = sub.add_parser("conflicts", help="find near-duplicate images with contradictory masks "
                       "(fingerprints + candidate search + SSIM), with label-noise ceiling and fold leakage")
    p.add_argument("dataset", help="dataset folder or manifest JSON")
    p.add_argument("--json", dest="json_out", help="write the full report (pairs, groups, ceiling, leakage, timing)")
    p.add_argument("--scope", choices=["group", "global"], default="group",
                   help="compare images within one subject/patient (group, default) or across the dataset (global)")
    p.add_argument("--ssim", type=float, default=0.99, help="SSIM threshold for near-duplicates (default 0.99)")
    p.add_argument("--ssim-size", type=_size, default=(64, 80), metavar="HxW",
                   help="size images are resized to for SSIM (default 64x80)")
    p.add_argument("--candidate-k", type=int, default=8, help="candidate neighbours per image (default 8)")
    p.add_argument("--candidate-floor", type=float, default=None,
                   help="minimum fingerprint similarity of a candidate (default: SSIM threshold - 0.3)")
    p.add_argument("--disagree-dice", type=float, default=0.5,
                   help="both masks non-empty and Dice below this → 'disagree' (default 0.5)")
    p.add_argument("--ann", choices=["auto", "exact", "faiss", "hnswlib"], default="auto",
                   help="nearest-neighbour backend (faiss-cpu / hnswlib are optional installs)")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not update the fingerprint caches")
    p.add_argument("--folds", help="folds JSON for the leakage report ({case_id: fold} or a segwb-folds file); "
                   "default: subject-grouped k-fold")
    p.add_argument("--k", dest="folds_k", type=int, default=5, help="folds of the default split (default 5)")
    p.add_argument("--seed", dest="folds_seed", type=int, default=0, help="seed of the default split (default 0)")
    p.add_argument("--top", type=int, default=10, help="pairs listed in the printed summary (default 10)")
    add_dataset_options(p)
    p.set_defaults(func=cmd_conflicts)

    p = sub.add_parser("manifest", help="write a cleaned manifest: apply review decisions (and optionally "
                       "the drop-empty rule) without touching the dataset")
    p.add_argument("dataset", help="dataset folder or manifest JSON")
    p.add_argument("--out", required=True, help="output manifest .json (an existing file is replaced only "
                   "when it is a manifest this program wrote; anything else is refused)")
    p.add_argument("--policy", choices=["none", "drop-empty"], default="none",
                   help="none: decisions only; drop-empty: also propose dropping the empty image of every "
                        "conflicting pair (explicit decisions override it)")
    add_store_option(p)
    p.add_argument("--conflicts", help="conflicts report JSON (default: the latest one of the dataset)")
    add_dataset_options(p)
    p.set_defaults(func=cmd_manifest)


def cmd_conflicts(args) -> int:
    from engine.dedup import ConflictConfig, find_conflicts, load_folds_file

    cfg = ConflictConfig(scope=args.scope, ssim_threshold=args.ssim, ssim_size=tuple(args.ssim_size),
                         candidate_k=args.candidate_k, candidate_floor=args.candidate_floor,
                         disagree_dice=args.disagree_dice, use_cache=not args.no_cache, ann=args.ann,
                         folds_k=args.folds_k, folds_seed=args.folds_seed)
    t_index = time.perf_counter()
    ds = open_dataset_from_args(args)
    t_index = time.perf_counter() - t_index
    folds = load_folds_file(args.folds, ds.case_ids) if args.folds else None
    with tqdm_progress("finding near-duplicates") as progress:
        report = find_conflicts(ds, cfg, progress, folds=folds, folds_source=args.folds)
    # whole-command phases: the index, and everything since the CLI started (imports included)
    report.timing["index"] = round(t_index, 4)
    report.timing["command"] = round(time.perf_counter() - STARTED, 4)
    write_json(args.json_out, report.to_dict())
    lines = [f"dataset     {ds.root} ({ds.layout}, {len(ds)} cases)"] + report.summary_lines()
    if report.pairs:
        lines.append(f"most severe pairs (of {len(report.pairs)}):")
        for p in report.pairs[: max(0, args.top)]:
            dice = "-" if p["mask_dice"] is None else f"{p['mask_dice']:.2f}"
            lines.append(f"  {p['a']:>12} {p['b']:>12}  ssim {p['ssim']:.4f}  {p['category']:<11} dice {dice:>4}  "
                         f"areas {p['area_a']}/{p['area_b']}  severity {p['severity']:.3f}")
    if args.json_out:
        lines.append(f"report      {args.json_out}")
    if ds.workdir is not None:
        lines.append(f"latest      {Path(ds.workdir) / 'conflicts.json'} (read by the review page)")
    print("\n".join(lines))
    return 0


def cmd_manifest(args) -> int:
    from engine.curation import build_manifest, save_manifest
    from engine.dedup import ConflictReport, find_conflicts, load_latest_report

    ds = open_dataset_from_args(args)
    store = open_store(args, ds, must_exist=True) if (args.store or ds.workdir is not None
                                                      or os.environ.get("SEGWB_STORE_URL")) else None
    conflicts = None
    if args.conflicts:
        conflicts = ConflictReport.load(args.conflicts)
    else:
        conflicts = load_latest_report(ds)
        if conflicts is None and args.policy == "drop-empty":
            print("no conflicts report for this dataset yet: computing one with the default options")
            with tqdm_progress("finding near-duplicates") as progress:
                conflicts = find_conflicts(ds, progress=progress)
    try:
        cases, dropped, info = build_manifest(ds, store, conflicts, args.policy)
    finally:
        if store is not None:
            store.close()
    out, note = save_manifest(args.out, ds, cases, dropped, info, on_exists="refuse")
    print(f"wrote {out}: {info['n_kept']} of {info['n_input']} cases kept, {info['n_dropped']} dropped "
          f"({info['dropped_by']['decision']} by review decisions, {info['dropped_by']['policy']} by policy "
          f"{info['policy']}), mask changes {info['mask_overrides'] or 'none'}")
    print(f"conflicting pairs {info['n_conflict_pairs']}, "
          f"without a review decision {info['n_conflicts_without_decision']}"
          + (f"; drop-empty proposals applied {info['n_policy_proposals_applied']}, overridden by decisions "
             f"{info['n_policy_proposals_overridden']}" if args.policy == "drop-empty" else ""))
    return 0
