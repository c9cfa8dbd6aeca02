"""``convert``: a dataset → paired folder of 8-bit images + PNG masks at a fixed size."""

from __future__ import annotations

from engine.cli.common import add_dataset_options, open_dataset_from_args, tqdm_progress, write_json


def register(sub) -> None:
    p = sub.add_parser("convert", help="write every case as OUT/images/<id>.png (+ OUT/masks/<id>.png) at a fixed "
                                       "size: a paired dataset (the pneumothorax study's DICOM → PNG 256² step)")
    p.add_argument("dataset", help="dataset folder or manifest JSON")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier conversion)")
    p.add_argument("--size", default="256", help="N (square) or HxW, e.g. 256 or 256x320 (default 256)")
    p.add_argument("--format", dest="image_format", default="png", choices=["png", "jpg"],
                   help="image file format (masks are always PNG)")
    p.add_argument("--json", dest="json_out", help="also write the summary as JSON to this file")
    add_dataset_options(p)
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from engine.datasets.convert import convert_dataset, parse_size

    size = parse_size(args.size)  # fail fast, before indexing
    ds = open_dataset_from_args(args)
    with tqdm_progress("converting") as progress:
        s = convert_dataset(ds, args.out, size, progress, image_format=args.image_format)
    write_json(args.json_out, s)
    print(f"wrote {s['n_images']} images and {s['n_masks']} masks ({s['n_with_mask']} non-empty) at "
          f"{s['size'][0]}x{s['size'][1]} to {s['out']}; {s['n_skipped']} case(s) skipped, "
          f"{len(ds.bad_files)} bad file(s) in the scan")
    for r in s["skipped"][:20]:
        print(f"  - skipped {r['case_id']}: {r['reason']}")
    if len(s["skipped"]) > 20:
        print(f"  ... and {len(s['skipped']) - 20} more (see --json)")
    return 0 if s["n_images"] or not s["n_cases"] else 1
