"""``demo``: generate the synthetic demo datasets (nerve ultrasound + chest X-ray phantoms)."""

from __future__ import annotations

from pathlib import Path

from engine.cli.common import print_json, tqdm_progress


def register(sub) -> None:
    p = sub.add_parser("demo",
                       help="generate synthetic demo data: DIR/nerve (Kaggle UNS layout) and DIR/ptx (SIIM layout)")
    p.add_argument("--out", required=True, help="output folder (DIR/nerve and DIR/ptx are created)")
    p.add_argument("--scale", default="default", choices=["tiny", "default", "train", "full"],
                   help="tiny: seconds (tests); default: 8x40 frames + 40 DICOMs; train: 10x40 frames + 200 DICOMs "
                        "(the demo models' training data, with --seed 1); full: 47x120 frames (Kaggle size)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed = byte-identical files)")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing when DIR already holds a complete demo of this scale and seed")
    p.add_argument("--json", action="store_true", help="print the generation summary as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from engine.phantoms import demo_is_complete, generate_demo

    out = Path(args.out)
    if args.if_missing and demo_is_complete(out, args.scale, args.seed):
        print(f"demo data already complete in {out} (scale {args.scale}, seed {args.seed}); nothing to do")
        return 0
    with tqdm_progress(f"generating {args.scale} demo data") as progress:
        summary = generate_demo(out, args.scale, args.seed, progress=progress)
    if args.json:
        print_json({k: v for k, v in summary.items() if k not in ("nerve", "ptx")}
                   | {"nerve": {k: v for k, v in summary["nerve"].items() if k != "pairs"},
                      "ptx": {k: v for k, v in summary["ptx"].items() if k not in ("variants", "positives")}})
        return 0
    n, x = summary["nerve"], summary["ptx"]
    kinds = ", ".join(f"{k} {v}" for k, v in n["pair_kinds"].items())
    print(f"SYNTHETIC demo data written to {out} (scale {args.scale}, seed {args.seed})\n"
          f"  nerve: {n['n_images']} frames ({n['subjects']} subjects x {n['frames']}), "
          f"{n['n_with_mask']} with a nerve mask; planted pairs: {kinds}  [{n['seconds']} s]\n"
          f"  ptx:   {x['n_images']} DICOMs {x['size']}x{x['size']}, {x['n_positive']} with pneumothorax, "
          f"{x['n_rows']} CSV rows ({x['n_duplicate_rows']} duplicates)  [{x['seconds']} s]")
    return 0
