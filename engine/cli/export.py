"""``export-corrected``: write a reviewed dataset's current masks elsewhere, as PNG (+ RLE CSV + manifest),
DICOM-SEG, COCO or NIfTI (``--format``; see :func:`engine.curation.export_dataset`)."""

from __future__ import annotations

from engine.cli._store import add_store_option, open_store
from engine.cli.common import add_dataset_options, open_dataset_from_args, print_json, tqdm_progress


def register(sub) -> None:
    p = sub.add_parser("export-corrected",
                       help="export the corrected dataset (latest mask versions, review decisions applied) "
                            "as PNG masks + an RLE CSV in the dataset's convention + a manifest; originals untouched")
    p.add_argument("dataset", help="the reviewed dataset folder")
    p.add_argument("out", help="a new or empty folder outside the dataset (or an earlier export of this program, "
                               "replaced whole; any other non-empty folder is refused)")
    add_store_option(p)
    p.add_argument("--no-decisions", action="store_true",
                   help="only corrected mask versions; ignore conflict-review decisions (drops, unions)")
    p.add_argument("--copy-images", action="store_true",
                   help="copy the images too (default: list their paths); DICOMs are de-identified (DICOM PS3.15 "
                        "Basic Application Level Confidentiality Profile, UIDs replaced consistently, pixel data "
                        "unchanged; burned-in annotation refused) and their cases renamed to the new UIDs")
    p.add_argument("--format", dest="fmt", choices=["png", "dicom-seg", "coco", "nifti"], default="png",
                   help="png (default): label PNGs + RLE CSV + manifest; dicom-seg: one DICOM Segmentation per "
                        "DICOM case; coco: one COCO JSON with RLE masks; nifti: one .nii.gz label map per case")
    p.add_argument("--user", default=None,
                   help="acting user recorded in export.json and as the DICOM-SEG content creator "
                        "(default: login name)")
    p.add_argument("--json", action="store_true", help="print the export summary as JSON")
    add_dataset_options(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    import getpass

    from engine.curation.export import export_dataset

    ds = open_dataset_from_args(args)
    store = open_store(args, ds, must_exist=True)
    try:
        user = args.user or getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        user = None
    try:
        with tqdm_progress("exporting") as progress:
            info = export_dataset(ds, store, args.out, args.fmt, progress=progress,
                                  apply_decisions=not args.no_decisions, copy_images=args.copy_images, author=user)
    finally:
        store.close()
    if args.json:
        print_json(info)
        return 0
    if args.fmt != "png":
        print(f"exported {info['n_written']} file(s) as {args.fmt} ({info['n_corrected']} corrected cases, "
              f"{info['n_dropped']} dropped, {len(info['skipped'])} skipped) to {info['out_dir']}")
        for s in info["skipped"][:10]:
            print(f"  skipped {s['case_id']}: {s['reason']}")
        if len(info["skipped"]) > 10:
            print(f"  ... {len(info['skipped']) - 10} more skipped (see export.json)")
        for n in info.get("notes", []):
            print(f"  note: {n}")
        return 0
    print(f"exported {info['n_exported']} masks ({info['n_corrected']} corrected, {info['n_dropped']} dropped) "
          f"to {info['out_dir']}\n  manifest: {info['manifest']}"
          + (f"\n  RLE CSV:  {info['rle_csv']}" if info.get("rle_csv") else "")
          + f"\n  train on it: python -m engine train --data {info['manifest']} --name <model-name>")
    for n in info.get("notes", []):
        print(f"  note: {n}")
    return 0
