"""Shared CLI helpers: progress bars, JSON output, dataset options from flags."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from engine.progress import ProgressFn

#: ``time.perf_counter()`` when the CLI helpers were first imported (just after interpreter start-up
#: and argument-parser set-up): commands report their own duration from here
STARTED = time.perf_counter()


@contextlib.contextmanager
def tqdm_progress(desc: str = "", disable: bool | None = None, delay: float = 0.5) -> Iterator[ProgressFn]:
    """A progress callback that drives one tqdm bar on stderr (re-labelled by messages).

    The bar (and the tqdm import) only appears once the work has run ``delay`` seconds and is
    not finished, so quick commands (a warm cache) print no bar and start faster.
    """
    state: dict[str, Any] = {"message": desc, "bar": None, "start": time.monotonic()}
    try:
        def report(done: int, total: int, message: str = "") -> None:
            bar = state["bar"]
            if bar is None:
                if disable or time.monotonic() - state["start"] < delay or (total and done >= total):
                    if message:
                        state["message"] = message
                    return
                from tqdm import tqdm

                # no monitor thread: a running thread would keep scans from forking worker
                # processes (engine.parallel.can_fork_workers); bars are refreshed by hand
                tqdm.monitor_interval = 0
                bar = state["bar"] = tqdm(total=0, desc=state["message"], file=sys.stderr, disable=disable,
                                          dynamic_ncols=True, leave=True, mininterval=0.2)
            if total and bar.total != total:
                bar.reset(total=total)
            if message and message != state["message"]:
                state["message"] = message
                bar.set_description(message)
            bar.n = done
            bar.refresh()
        yield report
    finally:
        if state["bar"] is not None:
            state["bar"].close()


def write_json(path: str | Path | None, data: Any) -> None:
    """Write ``data`` atomically to ``path`` ('-' or None prints nothing). Not fsynced: these are
    reports of a command, which a rerun recreates (atomic against crashes, not power loss)."""
    if path and str(path) != "-":
        from engine.fsutil import atomic_write_json

        atomic_write_json(path, data, durable=False)


def add_pixel_limit(p) -> None:
    """``--max-pixels N``: the pixel limit every image reader checks from the header (see engine.io.limits)."""
    from engine.io.limits import DEFAULT_MAX_PIXELS, ENV_VAR

    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help=f"refuse images whose header claims more than N pixel values (H×W×frames×channels) "
                   f"before decoding them (default: ${ENV_VAR} or {DEFAULT_MAX_PIXELS:,})")


def add_dataset_options(p) -> None:
    """Flags every dataset-reading command shares."""
    add_pixel_limit(p)
    p.add_argument("--layout", choices=["kaggle_uns", "siim", "paired", "coco", "dicom_seg", "nifti"],
                   help="force a layout (default: detect)")
    p.add_argument("--labels", help="comma-separated class names for ids 1..K-1, e.g. nerve,vessel")
    p.add_argument("--mask-threshold", type=int, default=None,
                   help="binarise anti-aliased grey masks at > T (default 127)")
    p.add_argument("--rle-csv", help="SIIM: which RLE CSV to use (default: the one matching most images)")
    p.add_argument("--mask-suffix", action="append", help="mask file suffix such as _mask (repeatable)")
    p.add_argument("--group-regex", help="regex whose first group is the subject/patient id in file stems")
    p.add_argument("--image-root", help="COCO / DICOM-SEG / NIfTI imports: a folder holding the images the "
                                        "annotations refer to (default: next to them)")


def dataset_options(args) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if getattr(args, "labels", None):
        opts["label_names"] = [s.strip() for s in args.labels.split(",") if s.strip()]
    if getattr(args, "mask_threshold", None) is not None:
        opts["threshold"] = args.mask_threshold
    if getattr(args, "rle_csv", None):
        opts["rle_csv"] = str(Path(args.rle_csv).resolve())
    if getattr(args, "mask_suffix", None):
        opts["mask_suffixes"] = args.mask_suffix
    if getattr(args, "group_regex", None):
        opts["group_regex"] = args.group_regex
    if getattr(args, "image_root", None):
        opts["image_root"] = str(Path(args.image_root).expanduser().resolve())
    return opts


def open_dataset_from_args(args, verify: bool = False, desc: str = "indexing"):
    """Open ``args.dataset`` with the shared flags and a progress bar."""
    from engine.datasets import open_dataset

    with tqdm_progress(desc) as progress:
        return open_dataset(args.dataset, getattr(args, "layout", None), options=dataset_options(args),
                            verify=verify, progress=progress)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))
