"""Dataset commands: ``info`` and ``masks``."""

from __future__ import annotations

from pathlib import Path

from engine.cli.common import add_dataset_options, open_dataset_from_args, tqdm_progress, write_json


def register(sub) -> None:
    p = sub.add_parser("info",
                       help="detect a dataset's layout and summarise it (counts, groups, sizes, DICOM, bad files)")
    p.add_argument("dataset", help="dataset folder or manifest JSON")
    p.add_argument("--json", dest="json_out", help="also write the summary as JSON to this file")
    p.add_argument("--no-verify", action="store_true", help="skip decoding every image (faster, misses corrupt images)")
    add_dataset_options(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("masks", help="write every case's ground-truth mask as OUT/<case_id>.png "
                                     "(uint8 labels; ids made file-name safe)")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="output folder")
    add_dataset_options(p)
    p.set_defaults(func=cmd_masks)


def cmd_info(args) -> int:
    ds = open_dataset_from_args(args, verify=not args.no_verify)
    s = ds.summary()
    s["scan"] = getattr(ds, "scan_stats", {})
    write_json(args.json_out, s)
    lines = [
        f"dataset   {s['root']}",
        f"layout    {s['layout']}",
        f"cases     {s['n_cases']} ({s['n_labelled']} labelled, {s['n_unlabelled']} unlabelled)",
        f"masks     {s['n_with_mask']} non-empty, {s['n_empty']} empty"
        + (f" ({100 * s['empty_fraction']:.1f} % empty)" if s["empty_fraction"] is not None else ""),
        f"groups    {s['n_groups']}",
        f"splits    {', '.join(f'{k}: {v}' for k, v in s['splits'].items())}",
        f"labels    {', '.join(f'{k}={v}' for k, v in s['labels'].items())}",
        "sizes     " + ", ".join(f"{k} ×{v}" for k, v in list(s["size_histogram"].items())[:6]),
    ]
    if "mask_area" in s:
        a = s["mask_area"]
        lines.append(f"mask area min {a['min']}, median {a['median']:.0f}, max {a['max']} px")
    if "dicom" in s:
        d = s["dicom"]
        lines.append(f"DICOM     sex {d['sex']}, view {d['view_position']}, modality {d['modality']}")
        lines.append(f"          age flags {d['age_flags']}"
                     + (f", impossible ages {d['impossible_ages']}" if d["impossible_ages"] else ""))
    for n in s["notes"]:
        lines.append(f"note      {n}")
    lines.append(f"bad files {len(s['bad_files'])}")
    for b in s["bad_files"][:50]:
        lines.append(f"  - {b['reason']}" if b["path"] in b["reason"] else f"  - {b['path']}: {b['reason']}")
    if len(s["bad_files"]) > 50:
        lines.append(f"  ... and {len(s['bad_files']) - 50} more (see --json)")
    print("\n".join(lines))
    return 0


def cmd_masks(args) -> int:
    from engine.errors import WorkbenchError
    from engine.fsutil import safe_child
    from engine.io import write_mask_png

    ds = open_dataset_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = ds.labelled_cases()
    failed: list[str] = []
    with tqdm_progress("writing masks") as progress:
        for i, c in enumerate(cases):
            try:
                # case ids come from files (a SIIM id is the DICOM's SOPInstanceUID): never a raw path
                write_mask_png(safe_child(out, c.case_id, ".png"), ds.load_mask(c))
            except WorkbenchError as exc:
                failed.append(str(exc))
            progress(i + 1, len(cases), "writing masks")
    print(f"wrote {len(cases) - len(failed)} masks to {out} "
          f"({len(ds) - len(cases)} unlabelled cases skipped, {len(failed)} failed, "
          f"{len(ds.bad_files)} bad files in the scan)")
    for f in failed[:20]:
        print(f"  - {f}")
    return 1 if failed else 0
