"""Counts of the hostile-input corpus (tests/support/hostile.py): fine / clear error / unclear /
traceback / memory / silent wrong, for this checkout and optionally for older code.

Each run is a subprocess under a 3 GB address-space limit (``HOSTILE_AS_GB``), with ``--predict``
when ``weights/lung-cxr`` exists. ``--before REV`` also measures the engine of git revision REV
(exported with ``git archive`` into a temp folder; the corpus generator is this checkout's).

Run: ``python bench/badinput_corpus.py [--before 0d25e20]``. Prints the counts and writes
``bench/results/badinput_corpus.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, save_result  # noqa: E402


def measure(engine_root: Path | None, predict: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        out = Path(tmp) / "res.json"
        env = {**os.environ, "HOSTILE_AS_GB": os.environ.get("HOSTILE_AS_GB", "3"),
               "SEGWB_WORKSPACE": str(Path(tmp) / "ws")}
        env.pop("SEGWB_MAX_PIXELS", None)
        if engine_root is not None:
            env["HOSTILE_ENGINE_ROOT"] = str(engine_root)
        cmd = [sys.executable, "-m", "tests.support.hostile", str(out)] + (["--predict"] if predict else [])
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        res = json.loads(out.read_text())
    Path("/tmp/segwb-absolute-escape.png").unlink(missing_ok=True)  # what old code wrote outside --out
    order = ("fine", "clear", "unclear", "traceback", "memory", "silent")
    return {"n": res["n"], "counts": {k: res["counts"].get(k, 0) for k in order},
            "not_fine": [r for r in res["rows"] if r["outcome"] not in ("fine", "clear")]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="git revision whose engine to measure as well")
    args = ap.parse_args()
    predict = (REPO / "weights" / "lung-cxr" / "model.safetensors").exists()
    data = {"as_limit_gb": float(os.environ.get("HOSTILE_AS_GB", "3")), "predict": predict,
            "after": measure(None, predict)}
    if args.before:
        with tempfile.TemporaryDirectory(prefix="hostile-before-") as tmp:
            archive = subprocess.run(["git", "archive", args.before, "engine", "weights"], cwd=REPO, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            data["before"] = {"revision": args.before, **measure(Path(tmp), predict)}
    for k in ("before", "after"):
        if k in data:
            print(f"{k:7s} n={data[k]['n']}  " + "  ".join(f"{a}={b}" for a, b in data[k]["counts"].items()))
    print(save_result("badinput_corpus", data))


if __name__ == "__main__":
    main()
