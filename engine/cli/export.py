"""``export-corrected``: write a reviewed dataset's current masks (PNG + RLE CSV + manifest) elsewhere."""

from __future__ import annotations

from engine.cli._store import add_store_option, open_store
from engine.cli.common import add_dataset_options, open_dataset_from_args, print_json, tqdm_progress


def register(sub) -> None:
    p = sub.add_parser("export-corrected",
                       help="export the corrected dataset (latest mask versions, review decisions applied) "
                            "as PNG masks + an RLE CSV in the dataset's convention + a manifest; originals untouched")
    p.add_argument("dataset", help="the reviewed dataset folder")
    p.add_argument("out", help="a new or empty folder outside the dataset (or an earlier export)")
    add_store_option(p)
    p.add_argument("--no-decisions", action="store_true",
                   help="only corrected mask versions; ignore conflict-review decisions (drops, unions)")
    p.add_argument("--copy-images", action="store_true", help="copy the images too (default: list their paths)")
    p.add_argument("--json", action="store_true", help="print the export summary as JSON")
    add_dataset_options(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from engine.curation import export_corrected

    ds = open_dataset_from_args(args)
    store = open_store(args, ds, must_exist=True)
    try:
        with tqdm_progress("exporting") as progress:
            info = export_corrected(ds, store, args.out, progress=progress, apply_decisions=not args.no_decisions,
                                    copy_images=args.copy_images)
    finally:
        store.close()
    if args.json:
        print_json(info)
        return 0
    print(f"exported {info['n_exported']} masks ({info['n_corrected']} corrected, {info['n_dropped']} dropped) "
          f"to {info['out_dir']}\n  manifest: {info['manifest']}"
          + (f"\n  RLE CSV:  {info['rle_csv']}" if info.get("rle_csv") else "")
          + f"\n  train on it: python -m engine train --data {info['manifest']} --name <model-name>")
    for n in info.get("notes", []):
        print(f"  note: {n}")
    return 0
