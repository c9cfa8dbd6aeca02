"""Benchmark: indexing a Kaggle-sized dataset (open_dataset cold / warm / one file touched, `info`).

Uses the FULL nerve phantom (47 subjects x 120 frames = 5,640 images + 5,640 masks, the
size of the Kaggle Ultrasound Nerve Segmentation training set). It is generated once into
``<workspace>/bench/nerve-full`` (or ``--data DIR``) and reused afterwards.

Measured, each in a fresh temporary workspace unless stated:
- ``cold``: ``open_dataset`` with nothing cached (reads every TIFF header and mask);
- ``warm``: the same again (cache valid: stat calls + JSON only), median of ``--repeat`` runs;
- ``touch1``: after changing one image's mtime (exactly one cache miss expected);
- ``info_verify_cold`` / ``info_verify_warm``: ``python -m engine info`` in-process with full
  decoding of every image (the default of ``info``), cold and then cached.

Run: ``python bench/indexing.py [--data DIR] [--repeat 3]``. Prints a table and writes
``bench/results/indexing.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, median, save_result  # noqa: E402


def ensure_data(data: Path | None, subjects: int, frames: int) -> tuple[Path, dict]:
    """The nerve phantom to index; generated when missing. Returns (folder, generation info)."""
    from engine.phantoms import README_NAME, generate_nerve_phantom
    from engine.workspace import default_root

    folder = data or default_root() / "bench" / f"nerve-{subjects}x{frames}"
    n_expected = subjects * frames
    if (folder / README_NAME).exists() and len(list((folder / "train").glob("*_mask.tif"))) == n_expected:
        return folder, {"generated": False}
    if data is not None and folder.exists() and any(folder.iterdir()) and not (folder / README_NAME).exists():
        raise SystemExit(f"{folder} exists and is not a nerve phantom; pass an empty folder or a phantom")
    print(f"generating the {subjects}x{frames} nerve phantom in {folder} ...", flush=True)
    with Timer() as t:
        summary = generate_nerve_phantom(folder, subjects=subjects, frames=frames, seed=0)
    print(f"  done in {t.seconds:.1f} s", flush=True)
    return folder, {"generated": True, "generation_seconds": round(t.seconds, 2),
                    "n_with_mask": summary["n_with_mask"]}


def timed_open(folder: Path, ws: Path, verify: bool = False) -> dict:
    from engine.datasets import open_dataset

    with Timer() as t:
        ds = open_dataset(folder, workspace=ws, verify=verify)
    return {"seconds": round(t.seconds, 3), "cases": len(ds), "cache_hits": ds.scan_stats["cache_hits"],
            "cache_misses": ds.scan_stats["cache_misses"], "bad_files": len(ds.bad_files)}


def timed_info(folder: Path, ws: Path) -> dict:
    from engine.__main__ import main

    out = ws / "info.json"
    with Timer() as t, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["--workspace", str(ws), "info", str(folder), "--json", str(out)])
    s = json.loads(out.read_text())
    return {"seconds": round(t.seconds, 3), "exit_code": rc, "cases": s["n_cases"],
            "cache_hits": s["scan"]["cache_hits"], "cache_misses": s["scan"]["cache_misses"]}


def run(folder: Path, repeat: int) -> dict:
    from engine.datasets.scan import list_files

    files = list_files(folder)
    results: dict[str, dict] = {}
    ws_root = Path(tempfile.mkdtemp(prefix="segwb-bench-"))
    try:
        ws = ws_root / "a"
        results["cold"] = timed_open(folder, ws)
        warm = [timed_open(folder, ws) for _ in range(repeat)]
        results["warm"] = {**warm[-1], "seconds": round(median([w["seconds"] for w in warm]), 3),
                           "runs": [w["seconds"] for w in warm]}
        victim = sorted(p for p in files if p.suffix == ".tif" and not p.stem.endswith("_mask"))[len(files) // 4]
        st = victim.stat()
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        try:
            results["touch1"] = {**timed_open(folder, ws), "touched": victim.name}
        finally:
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        ws2 = ws_root / "b"
        results["info_verify_cold"] = timed_info(folder, ws2)
        results["info_verify_warm"] = timed_info(folder, ws2)
    finally:
        shutil.rmtree(ws_root, ignore_errors=True)
    return {"n_files": len(files), "bytes": sum(s for s, _ in files.values()), "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="a nerve phantom (generated there when missing)")
    p.add_argument("--subjects", type=int, default=47)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--repeat", type=int, default=3, help="warm runs (median reported)")
    p.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = p.parse_args(argv)
    folder, gen = ensure_data(args.data, args.subjects, args.frames)
    measured = run(folder, args.repeat)
    doc = {"dataset": {"path": str(folder), "layout": "kaggle_uns", "synthetic": True,
                       "subjects": args.subjects, "frames": args.frames,
                       "n_images": args.subjects * args.frames, "n_files": measured["n_files"],
                       "mb": round(measured["bytes"] / 1e6, 1), **gen},
           "results": measured["results"]}
    path = save_result("indexing", doc, args.out)
    print(f"\nindexing {doc['dataset']['n_images']} images ({measured['n_files']} files, "
          f"{doc['dataset']['mb']} MB) at {folder}")
    print(f"{'run':<18}{'seconds':>9}{'hits':>7}{'misses':>8}")
    for name, r in measured["results"].items():
        print(f"{name:<18}{r['seconds']:>9.3f}{r['cache_hits']:>7}{r['cache_misses']:>8}")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
