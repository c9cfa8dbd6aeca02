"""``rle encode`` / ``rle decode``: run-length encodings of the Kaggle UNS and SIIM competitions."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ConfigError, WorkbenchError


def register(sub) -> None:
    p = sub.add_parser("rle", help="encode a mask PNG as RLE, or decode RLE (string or CSV row) into a mask PNG")
    rs = p.add_subparsers(dest="rle_command", metavar="{encode,decode}")
    rs.required = True

    e = rs.add_parser("encode", help="print the RLE of a mask image (non-zero pixels, or one --class)")
    e.add_argument("mask", help="mask image (PNG/TIFF/BMP)")
    e.add_argument("--format", dest="convention", default="kaggle", choices=["kaggle", "siim"],
                   help="kaggle: 1-based absolute starts; siim: relative offsets, -1 for empty")
    e.add_argument("--class", dest="class_id", type=int, default=None, help="encode only this class id")
    e.set_defaults(func=cmd_encode)

    d = rs.add_parser("decode", help="decode RLE into a PNG mask (uint8 labels 0/1)")
    d.add_argument("--format", dest="convention", choices=["kaggle", "siim"],
                   help="RLE convention (with --csv: detected from the header when omitted)")
    d.add_argument("--size", required=True, help="image size HxW, e.g. 420x580 or 1024x1024")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--rle", help="the RLE string, e.g. '1 3 10 2'")
    src.add_argument("--csv", help="an RLE CSV (train_masks.csv or a SIIM CSV); pick the row with --id")
    d.add_argument("--id", dest="image_id", help="with --csv: image id ({subject}_{img} for Kaggle, ImageId for SIIM)")
    d.add_argument("--out", required=True, help="output PNG")
    d.set_defaults(func=cmd_decode)


def cmd_encode(args) -> int:
    from engine.io import read_mask
    from engine.rle import encode

    labels, _ = read_mask(args.mask)
    fg = labels == args.class_id if args.class_id is not None else labels != 0
    print(encode(fg.astype("uint8"), args.convention))
    return 0


def cmd_decode(args) -> int:
    from engine.datasets.convert import parse_size
    from engine.io import write_mask_png
    from engine.rle import decode, decode_union, read_kaggle_uns_csv, read_siim_csv, sniff_rle_csv

    shape = parse_size(args.size)
    convention = args.convention
    if args.rle is not None:
        if args.image_id:
            raise ConfigError("--id only applies with --csv", hint="drop --id, or pass --csv FILE")
        if convention is None:
            raise ConfigError("--format is required with --rle", hint="add --format kaggle or --format siim")
        mask = decode(args.rle, shape, convention, where="--rle")
    else:
        path = Path(args.csv)
        if not args.image_id:
            raise ConfigError("--csv needs --id", hint="pass the image id of the row to decode")
        if convention is None:
            convention = sniff_rle_csv(path)
            if convention is None:
                raise WorkbenchError("cannot tell whether this is a Kaggle UNS or a SIIM CSV", path=path,
                                     hint="pass --format kaggle or --format siim")
        if convention == "kaggle":
            rows, _ = read_kaggle_uns_csv(path)
            if args.image_id not in rows:
                raise WorkbenchError(f"image {args.image_id!r} has no row", path=path,
                                     hint="Kaggle ids are {subject}_{img}, e.g. 1_1")
            mask = decode(rows[args.image_id], shape, "kaggle", where=f"{path} (image {args.image_id})")
        else:
            srows, _ = read_siim_csv(path)
            if args.image_id not in srows:
                raise WorkbenchError(f"ImageId {args.image_id!r} has no row", path=path,
                                     hint="use an ImageId (SOPInstanceUID) from the CSV's first column")
            mask = decode_union(srows[args.image_id], shape, "siim", where=f"{path} (ImageId {args.image_id})")
    write_mask_png(args.out, mask)
    print(f"wrote {args.out}: {shape[0]}x{shape[1]}, {int(mask.sum())} foreground pixels")
    return 0
